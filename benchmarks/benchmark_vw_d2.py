#!/usr/bin/env python
"""The VW pixel decoders of VW-MaskFormer and VW-Mask2Former versus transformers' stock MaskFormer and Mask2Former
pixel decoders on Swin-B features at 640x640: latency, GMACs, parameters, peak memory and achieved GFLOP/s, in one run.

    python benchmarks/benchmark_vw_d2.py [--repeats 5] [--bf16-repeats 2] [--threads 2] [--output PATH]
    python benchmarks/benchmark_vw_d2.py --combine RUN.json [RUN.json ...] --output COMBINED.json

* Decoders (``--models``), each built from the configuration of the released Swin-B ADE20K model of its family and
  put in eval mode, with the weights of its family's own initialisation (``_init_weights`` of the family's
  ``PreTrainedModel``, run by a minimal shell model's ``post_init`` on every module):

  - ``hf_maskformer_pixel_decoder``: transformers' ``MaskFormerPixelDecoder`` (FPN, feature size 256, mask feature
    size 256), as in stock MaskFormer Swin-B; ``MaskFormerPreTrainedModel`` init. The peer of VW-MaskFormer.
  - ``vw_maskformer_decoder``: ``VWTransformerPixelDecoder`` with the released VW-MaskFormer-B settings (VW attention
    heads 8, no short-cut); ``VWMaskFormerPreTrainedModel`` init.
  - ``hf_mask2former_pixel_decoder``: transformers' ``Mask2FormerPixelDecoder`` (6 multi-scale deformable-attention
    encoder layers, FFN 1024, 8 heads, 4 points, 3 levels, feature and mask feature size 256);
    ``Mask2FormerPreTrainedModel`` init. The peer of both VW-Mask2Former decoders.
  - ``vw_mask2former_decoder``: ``VWBasePixelDecoder`` (``pixel_decoder_type="vw"``: 16 heads, no short-cut, image
    pooling, 1x1 projections for the multi-scale features); ``VWMask2FormerPreTrainedModel`` init.
  - ``vw_deformattn_decoder``: ``VWDeformAttnPixelDecoder`` (``pixel_decoder_type="vw_deformable"``: the stock
    deformable-attention encoder, then the VW block on its outputs); ``VWMask2FormerPreTrainedModel`` init.

  The configurations are built here (``VWMaskFormerConfig``, ``VWMask2FormerConfig``, ``MaskFormerConfig``,
  ``Mask2FormerConfig`` with a Swin-B backbone config: embed_dim 128, depths 2-2-18-2, heads 4-8-16-32, window 12,
  image 384), not read from the variant registry; the report's settings record whether they equal the registered
  variants where there are any (``registry_check``). The VW attention runs through SDPA, as in the models (their
  ``PreTrainedModel`` selects it).
* Inputs: the four Swin-B feature maps of one 640x640 image, seeded ``randn`` of shapes (1, 128, 160, 160),
  (1, 256, 80, 80), (1, 512, 40, 40), (1, 1024, 20, 20), the same tensors for every decoder.
* Latency: all decoders live in ONE process and are timed round-robin (``harness.time_round_robin``: each round runs
  every decoder once, after ``--warmup`` untimed rounds), ``torch.no_grad()``, fp32, ``--threads`` threads; the
  median over ``--repeats`` rounds. Ratios (VW-MaskFormer / MaskFormer, VW-Mask2Former / Mask2Former, VW-deformable /
  Mask2Former) are the ratios of the medians, with two checks: (``paired``) the median over the rounds of the ratio
  within each round, (``min``) the ratio of the fastest rounds; the load average before and after is recorded. A
  2048x2048 fp32 matmul is one more step of the same rounds: the machine's GEMM throughput under the same load,
  against which each decoder's achieved GFLOP/s (2 x the GMACs below over its median latency) is put. Forward hooks
  time the deformable-attention encoder (``Mask2FormerPixelDecoderEncoderOnly``), the VW block (``VWBlock``) and its
  attention branches (``VWWindowAttention``) in every timed round; per round, their time over the decoder's, median
  over the rounds.
* bf16: the same rounds under ``torch.autocast("cpu", torch.bfloat16)`` (``--bf16-repeats`` rounds, 0 skips them; a
  bf16 GEMM is the extra step). As inside the models, the two decoders with deformable attention run OUTSIDE
  autocast, in fp32 (VW-Mask2Former disables autocast around its deformable decoder, as the original detectron2
  code's ``@autocast(enabled=False)`` does; transformers' own Mask2Former model does not, so the same rounds also
  time both deformable decoders fully under autocast, reported as ``bf16_in_autocast``).
* GMACs: ``torch.utils.flop_counter.FlopCounterMode`` on one forward (MACs = FLOPs / 2; it counts convolutions and
  matrix products). torch does not register a formula for the CPU SDPA kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu``): the script gives it torch's own SDPA formula (the two
  matrix products), so the VW attention is counted (``gmacs_sdpa``, a part of ``gmacs_flop_counter``). The bilinear
  sampling of the multi-scale deformable attention (``grid_sample`` plus its weighted sum) is not seen and is counted
  analytically from the shapes of the actual calls (forward hooks): ``queries*heads*levels*points*head_dim*5`` (4
  bilinear MACs and 1 attention-weight MAC per sampled value). Not counted anywhere: normalisations, activations,
  softmax, additions, interpolations, position embeddings, the sampling-location arithmetic and the VW block's
  padding and window reshuffling. The difference of each VW decoder to its peer is reported in GMACs and GFLOPs
  (FLOPs = 2 x MACs).
* Whole models (``--skip-full-models`` skips them): the GMACs and parameters of one 640x640 forward of transformers'
  ``Mask2FormerModel`` with the same Swin-B and of ``VWMask2FormerModel`` with each VW decoder (backbone, pixel
  decoder, masked-attention decoder with 100 queries and the mask logits of its 10 predictions), counted the same
  way, once. The class heads (the same ``Linear(256, 151)`` per prediction on both sides, 0.04 GMACs) are left out,
  and so are the stock model's loss (``Mask2FormerForUniversalSegmentation`` builds it, and it needs scipy) and the
  VW model's semantic scores (an ``einsum`` that transformers leaves to its post-processing).
* Peak memory: in a fresh process per decoder, the increase of the resident set (``VmHWM`` after a ``clear_refs``
  reset) during its first fp32 forward over what the process held after building the decoder and its inputs
  (``harness.first_forward_peak_memory``): activations and workspace, not the weights.
* One extra fp32 forward per decoder under ``torch.profiler`` gives the inclusive times of ``aten::grid_sampler_2d``
  and of the CPU SDPA kernel, and the top operators by self time.

``--combine`` reads the reports of several runs and writes their per-run ratios and the medians over the runs.
The measurement code is in ``harness.py``: this script supplies its decoders, inputs, hooked modules, profiled
kernels, GMAC counting, ratio pairs and the whole-model counts (``harness.DecoderBenchmark``), as
``benchmark_semask_fapn.py`` does.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from unittest import mock

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py sits next to this script

import harness  # noqa: E402


HF_MASKFORMER = "hf_maskformer_pixel_decoder"
VW_MASKFORMER = "vw_maskformer_decoder"
HF_MASK2FORMER = "hf_mask2former_pixel_decoder"
VW_MASK2FORMER = "vw_mask2former_decoder"
VW_DEFORMATTN = "vw_deformattn_decoder"
MODELS = (HF_MASKFORMER, VW_MASKFORMER, HF_MASK2FORMER, VW_MASK2FORMER, VW_DEFORMATTN)
#: (VW decoder, its stock peer)
RATIOS = ((VW_MASKFORMER, HF_MASKFORMER), (VW_MASK2FORMER, HF_MASK2FORMER), (VW_DEFORMATTN, HF_MASK2FORMER))
PEER = {**{vw: peer for vw, peer in RATIOS}, HF_MASKFORMER: HF_MASKFORMER, HF_MASK2FORMER: HF_MASK2FORMER}
#: the decoders with multi-scale deformable attention: outside autocast in the bf16 rounds, as in the models
DEFORMABLE = (HF_MASK2FORMER, VW_DEFORMATTN)
#: the released model each decoder is configured after
RELEASED = {
    HF_MASKFORMER: "MaskFormer Swin-B ADE20K (transformers MaskFormerConfig: FPN 256, mask features 256)",
    VW_MASKFORMER: "vw_maskformer-b_ade20k (VW heads 8, no short-cut)",
    HF_MASK2FORMER: "Mask2Former Swin-B ADE20K (transformers Mask2FormerConfig: 6 encoder layers, FFN 1024, 8 heads)",
    VW_MASK2FORMER: "vw_mask2former-b_ade20k (pixel_decoder_type 'vw': VW heads 16, no short-cut)",
    VW_DEFORMATTN: "vw_deformattn-mask2former-b_ade20k (pixel_decoder_type 'vw_deformable': VW heads 16)",
}
#: Swin-B of the released Swin-B models (ImageNet-22k, 384 pre-training, window 12), its four stages
SWIN_BASE = {
    "image_size": 384,
    "embed_dim": 128,
    "depths": [2, 2, 18, 2],
    "num_heads": [4, 8, 16, 32],
    "window_size": 12,
    "drop_path_rate": 0.3,
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}
FEATURE_CHANNELS = (128, 256, 512, 1024)
FEATURE_STRIDES = (4, 8, 16, 32)
NUM_LABELS = 150  # ADE20K
#: the CPU kernel of scaled_dot_product_attention, which FlopCounterMode has no formula for
SDPA_CPU_KERNEL = "aten::_scaled_dot_product_flash_attention_for_cpu"
FULL_MODELS = ("hf_mask2former_swin_base", "vw_mask2former_swin_base", "vw_deformattn_mask2former_swin_base")
FULL_RATIOS = (
    ("vw_mask2former_swin_base", "hf_mask2former_swin_base"),
    ("vw_deformattn_mask2former_swin_base", "hf_mask2former_swin_base"),
)
#: the table's columns of this script's own figures (``harness.decoder_columns``)
COLUMNS = (
    harness.Column("enc shr", "msda_encoder_share", ">", 7, 3),
    harness.Column("VW shr", "vw_block_share", ">", 7, 3),
    harness.Column("attn shr", "vw_attention_share", ">", 8, 3),
)
#: the operators whose inclusive time the profiler pass records: row field -> operator
PROFILED_KERNELS = {"grid_sampler_share": "aten::grid_sampler_2d", "sdpa_kernel_share": SDPA_CPU_KERNEL}
#: the row figures ``--combine`` gathers per run, and those it takes from the first run (the counts)
RUN_FIGURES = (
    "median_ms", "bf16_median_ms", "bf16_in_autocast_median_ms", "peak_mem_mb", "msda_encoder_share",
    "vw_block_share", "vw_attention_share", "grid_sampler_share", "sdpa_kernel_share", "achieved_gflops",
    "fraction_of_gemm", "fraction_of_gemm_max", "ratio_to_peer",
)  # fmt: skip
STATIC_FIGURES = (
    "released", "class", "params_m", "gmacs", "gmacs_flop_counter", "gmacs_sdpa", "gmacs_msda_sampling",
    "gmacs_original_order",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Configurations and decoders
# ----------------------------------------------------------------------------------------------------------------


def swin_base_config():
    """transformers' ``SwinConfig`` of the released models' Swin-B (four stages)."""
    from transformers import SwinConfig

    return SwinConfig(**SWIN_BASE)


def model_config(name: str):
    """The configuration of the released Swin-B model of decoder ``name``'s family."""
    from transformers import Mask2FormerConfig, MaskFormerConfig

    from hf_semseg.models.configuration_vw_mask2former import VWMask2FormerConfig
    from hf_semseg.models.configuration_vw_maskformer import VWMaskFormerConfig

    if name == HF_MASKFORMER:
        return MaskFormerConfig(
            backbone_config=swin_base_config(), fpn_feature_size=256, mask_feature_size=256, num_labels=NUM_LABELS
        )
    if name == VW_MASKFORMER:
        return VWMaskFormerConfig(
            backbone_config=swin_base_config(), vw_num_heads=8, vw_use_short_cut=False, num_labels=NUM_LABELS
        )
    if name == HF_MASK2FORMER:
        return Mask2FormerConfig(
            backbone_config=swin_base_config(),
            feature_size=256,
            mask_feature_size=256,
            encoder_layers=6,
            encoder_feedforward_dim=1024,
            num_attention_heads=8,
            num_labels=NUM_LABELS,
        )
    decoder_type = {VW_MASK2FORMER: "vw", VW_DEFORMATTN: "vw_deformable"}[name]
    return VWMask2FormerConfig(
        backbone_config=swin_base_config(), pixel_decoder_type=decoder_type, num_labels=NUM_LABELS
    )


def pretrained_base(name: str):
    """The ``PreTrainedModel`` class whose ``_init_weights`` initialises decoder ``name``."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerPreTrainedModel
    from transformers.models.maskformer.modeling_maskformer import MaskFormerPreTrainedModel

    from hf_semseg.models.modeling_vw_mask2former import VWMask2FormerPreTrainedModel
    from hf_semseg.models.modeling_vw_maskformer import VWMaskFormerPreTrainedModel

    return {
        HF_MASKFORMER: MaskFormerPreTrainedModel,
        VW_MASKFORMER: VWMaskFormerPreTrainedModel,
        HF_MASK2FORMER: Mask2FormerPreTrainedModel,
        VW_MASK2FORMER: VWMask2FormerPreTrainedModel,
        VW_DEFORMATTN: VWMask2FormerPreTrainedModel,
    }[name]


def make_decoder(name: str, config) -> torch.nn.Module:
    """Decoder ``name`` of ``config`` on the Swin-B channels, as its model builds it (uninitialised)."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder
    from transformers.models.maskformer.modeling_maskformer import MaskFormerPixelDecoder

    from hf_semseg.models.modeling_vw_pixel_decoder import VW_MASK2FORMER_PIXEL_DECODERS, VWTransformerPixelDecoder

    channels = list(FEATURE_CHANNELS)
    if name == HF_MASKFORMER:  # as MaskFormerPixelLevelModule
        return MaskFormerPixelDecoder(
            in_features=channels[-1],
            feature_size=config.fpn_feature_size,
            mask_feature_size=config.mask_feature_size,
            lateral_widths=channels[:-1],
        )
    if name == VW_MASKFORMER:
        return VWTransformerPixelDecoder(config, feature_channels=channels)
    if name == HF_MASK2FORMER:
        return Mask2FormerPixelDecoder(config, feature_channels=channels)
    return VW_MASK2FORMER_PIXEL_DECODERS[config.pixel_decoder_type](config, feature_channels=channels)


def build_decoder(name: str) -> torch.nn.Module:
    """Decoder ``name`` in eval mode with its family's initialisation: a minimal shell of the family's
    ``PreTrainedModel`` holds it and runs ``post_init`` (without it ``level_embed`` and the deformable weights are
    uninitialised memory). The shell is defined here, outside transformers, which makes transformers treat it as
    custom code and skip the modules without parameters of their own (the deformable attention's offset grid, the
    VW attention); it runs the family's rules on every module instead, as for a model of transformers' package."""
    config = model_config(name)

    class DecoderShell(pretrained_base(name)):
        def __init__(self, config):
            super().__init__(config)
            self.decoder = make_decoder(name, config)
            self.post_init()

        def _initialize_weights(self, module, is_custom_code=False):
            super()._initialize_weights(module, is_custom_code=False)

    return DecoderShell(config).decoder.eval()


#: the registry variants these configurations should equal (checked when registered; the script does not need them)
REGISTRY_VARIANTS = {
    VW_MASKFORMER: "vw-maskformer-swin-base-ade20k",
    VW_MASK2FORMER: "vw-mask2former-swin-base-ade20k",
    VW_DEFORMATTN: "vw-mask2former-deformattn-swin-base-ade20k",
}
#: config fields left out of the registry check (labels and bookkeeping)
UNCHECKED_FIELDS = {"architectures", "id2label", "label2id", "_name_or_path", "transformers_version", "dtype"}


def registry_check() -> dict[str, str]:
    """For each VW decoder, whether the configuration written out here equals that of its variant in the registry
    (``hf_semseg.variants``), field by field: ``"matches ..."``, ``"differs from ...: fields"`` or ``"... not
    registered"``."""
    import hf_semseg.variants as variants

    def differing(mine: dict, theirs: dict, prefix: str = "") -> list[str]:
        fields = []
        for key in sorted(set(mine) | set(theirs)):
            if key in UNCHECKED_FIELDS:
                continue
            a, b = mine.get(key), theirs.get(key)
            if isinstance(a, dict) and isinstance(b, dict):
                fields += differing(a, b, f"{prefix}{key}.")
            elif a != b:
                fields.append(prefix + key)
        return fields

    checks = {}
    for name, variant in REGISTRY_VARIANTS.items():
        try:
            theirs = variants.variant_config(variant).to_dict()
        except KeyError:
            checks[name] = f"{variant} not registered"
            continue
        fields = differing(model_config(name).to_dict(), theirs)
        checks[name] = f"differs from {variant}: {', '.join(fields)}" if fields else f"matches {variant}"
    return checks


def timed_classes() -> dict[str, type]:
    """The module classes timed by forward hooks (key -> class): the deformable-attention encoder, the VW block and
    its attention branches."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoderEncoderOnly

    from hf_semseg.models.modeling_vw_pixel_decoder import VWBlock, VWWindowAttention

    return {"msda_encoder": Mask2FormerPixelDecoderEncoderOnly, "vw_block": VWBlock, "vw_attention": VWWindowAttention}


def describe(name: str, model: torch.nn.Module) -> dict:
    """The row fields of decoder ``name``: the released model it is configured after and its class."""
    return {"released": RELEASED[name], "class": type(model).__name__}


# ----------------------------------------------------------------------------------------------------------------
# Counting: FlopCounterMode (with a formula for the CPU SDPA kernel) plus the deformable sampling it does not see
# ----------------------------------------------------------------------------------------------------------------


def count_macs(model: torch.nn.Module, inputs) -> dict:
    """GMACs of one ``model(inputs)``: ``harness.flop_counter``'s count (with the CPU SDPA formula; its SDPA part as
    ``gmacs_sdpa``) and the analytic count of the deformable attention's sampling, from the shapes of the actual
    calls. For a decoder with the VW block also ``gmacs_original_order``: the same count of a forward in the
    original's layer order (:func:`original_layer_order`), the VW block's cost by design, which issue 17's
    allowance (the peer's latency plus the extra GMACs' share) is taken from."""
    from hf_semseg.models.modeling_vw_pixel_decoder import VWBlock

    def count():
        return harness.count_macs_with_analytic(
            model, inputs, [harness.deformable_attention_sampling()], counted_parts={"sdpa": "scaled_dot_product"}
        )

    counts = count()
    if any(isinstance(module, VWBlock) for module in model.modules()):
        with original_layer_order():
            counts["gmacs_original_order"] = count()["gmacs"]
    return counts


@contextlib.contextmanager
def original_layer_order():
    """The VW block without its inference rewrites while the context is open: the fusions convolve the resized,
    concatenated maps, and the attention branches project their outputs before the fusion (the original's order)."""
    from hf_semseg.models import modeling_vwformer
    from hf_semseg.models.modeling_vw_pixel_decoder import VWBlock

    with (
        mock.patch.object(modeling_vwformer, "convolution_splits_over_inputs", lambda conv: False),
        mock.patch.object(VWBlock, "folds_output_projections", lambda self: False),
    ):
        yield


def peer_differences(top: dict, bottom: dict) -> dict:
    """A VW decoder's differences to its peer in GMACs, GFLOPs (2 x MACs) and parameters, and issue 17's allowance:
    the latency ratio its GMACs in the original's layer order over the peer's allow."""
    gmacs = top["gmacs"] - bottom["gmacs"]
    return {
        "gmacs_difference": gmacs,
        "gflops_difference": 2 * gmacs,
        "params_m_difference": top["params_m"] - bottom["params_m"],
        # issue 17's allowance: no slower than the peer plus the extra GMACs' share, by design (original layer order)
        "allowed_latency_ratio": top.get("gmacs_original_order", top["gmacs"]) / bottom["gmacs"],
    }


# ----------------------------------------------------------------------------------------------------------------
# Whole models: GMACs and parameters of one forward
# ----------------------------------------------------------------------------------------------------------------


def build_full_model(name: str) -> torch.nn.Module:
    """Whole model ``name`` (one of ``FULL_MODELS``) without its class head and loss, with its own initialisation,
    in eval mode: transformers' ``Mask2FormerModel`` or ``VWMask2FormerModel`` (backbone, pixel decoder and
    masked-attention decoder with the mask logits of every prediction). The class heads (one ``Linear(256, 151)``
    per prediction, the same on both sides) and the stock model's loss (which needs scipy) are left out."""
    from transformers import Mask2FormerModel

    from hf_semseg.models.modeling_vw_mask2former import VWMask2FormerModel

    if name == "hf_mask2former_swin_base":
        return Mask2FormerModel(model_config(HF_MASK2FORMER)).eval()
    decoder = VW_MASK2FORMER if name == "vw_mask2former_swin_base" else VW_DEFORMATTN
    return VWMask2FormerModel(model_config(decoder)).eval()


def count_full_models(args) -> dict:
    """GMACs and parameters of one ``size`` x ``size`` forward of each whole model, and the differences of the VW
    models to the stock one. A model that fails gets an ``error`` and no difference."""
    generator = harness.seeded_generator(args.seed)
    pixel_values = harness.random_pixel_values(1, args.size, generator)
    rows = {}
    for name in FULL_MODELS:
        print(f"  {name} ...", file=sys.stderr, flush=True)
        row = rows[name] = {"model": name}
        try:
            torch.manual_seed(args.seed)
            model = build_full_model(name)
            row["class"] = type(model).__name__
            row["params_m"] = harness.count_params(model) / 1e6
            row.update(count_macs(model, pixel_values))
            del model
        except Exception as error:  # noqa: BLE001 - recorded in the report, the run goes on
            row["error"] = f"{type(error).__name__}: {error}"
    differences = {}
    for numerator, denominator in FULL_RATIOS:
        top, bottom = rows[numerator], rows[denominator]
        if "gmacs" not in top or "gmacs" not in bottom:
            continue
        difference = top["gmacs"] - bottom["gmacs"]
        differences[f"{numerator}-{denominator}"] = {
            "gmacs": difference,
            "gflops": 2 * difference,
            "params_m": top["params_m"] - bottom["params_m"],
            "gmacs_ratio": top["gmacs"] / bottom["gmacs"],
        }
    return {"size": args.size, "results": list(rows.values()), "differences": differences}


def add_full_models(args, report: dict) -> None:
    """The report's ``full_models`` section, unless ``--skip-full-models``."""
    if not args.skip_full_models:
        print("whole models: GMACs of one forward ...", file=sys.stderr, flush=True)
        report["full_models"] = count_full_models(args)


def print_full_models(report: dict) -> None:
    """The whole models' GMACs and parameters, and the differences of the VW models to the stock one."""
    if "full_models" not in report:
        return
    full = report["full_models"]
    print(f"\nwhole models at {full['size']}x{full['size']} (GMACs = counted + analytic sampling):")
    for row in full["results"]:
        if "error" in row:
            print(f"  {row['model']:<38} ERROR: {row['error']}")
            continue
        print(
            f"  {row['model']:<38} {row['gmacs']:8.1f} GMACs ({row['gmacs_flop_counter']:.1f} + "
            f"{row['gmacs_msda_sampling']:.2f}), {row['params_m']:.2f}M params"
        )
    for pair, entry in full["differences"].items():
        print(
            f"  {pair}: {entry['gmacs']:+.2f} GMACs = {entry['gflops']:+.2f} GFLOPs (FLOPs = 2 x MACs), "
            f"{entry['params_m']:+.2f}M params"
        )


def add_options(parser) -> None:
    """``--skip-full-models``."""
    parser.add_argument("--skip-full-models", action="store_true", help="no whole-model GMAC counts")


def check_args(args) -> str | None:
    """The VW block's 8 x 8 windows of the stride-8 map need a size that is a multiple of 64."""
    if args.size % 64:
        return "--size must be a multiple of 64 (the VW block's 8 x 8 windows of the stride-8 map)"
    return None


def settings() -> dict:
    """The report's settings of this script: the Swin-B, the decoders outside autocast, the MAC counting, and
    whether the configurations equal the registered variants."""
    return {
        "swin_base": SWIN_BASE,
        "bf16_outside_autocast": list(DEFORMABLE),
        "macs": "FLOPs / 2; FlopCounterMode with torch's SDPA formula for the CPU SDPA kernel",
        "registry_check": registry_check(),
    }


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


BENCHMARK = harness.DecoderBenchmark(
    script=__file__,
    models=MODELS,
    output_stem="vw_d2",
    inputs_label="Swin-B features",
    feature_channels=FEATURE_CHANNELS,
    feature_strides=FEATURE_STRIDES,
    build=build_decoder,
    describe=describe,
    count_macs=count_macs,
    timed_classes=timed_classes,
    profiled_kernels=PROFILED_KERNELS,
    pairs=RATIOS,
    peers=PEER,
    peer_column="ratio_to_peer",
    columns=COLUMNS,
    run_figures=RUN_FIGURES,
    static_figures=STATIC_FIGURES,
    pair_extras=peer_differences,
    outside_autocast=DEFORMABLE,
    table_note="(in AC ms: the deformable decoders fully under bf16 autocast; their bf16 ms runs outside it, in fp32)",
    print_extra=print_full_models,
    settings=settings,
    extend_report=add_full_models,
    combined_sections=("full_models",),
    add_options=add_options,
    check_args=check_args,
)


def main(argv=None) -> None:
    harness.decoder_benchmark_main(BENCHMARK, __doc__, argv)


if __name__ == "__main__":
    main()
