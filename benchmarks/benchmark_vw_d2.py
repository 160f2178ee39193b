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
The measurement code is shared with the other scripts in ``harness.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

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
GEMM = "gemm_2048"
GEMM_SIZE = 2048
IN_AUTOCAST = "@autocast"  # suffix of the bf16 steps that run a deformable decoder fully under autocast
#: MACs per sampled value of the deformable attention: 4 for the bilinear interpolation, 1 for the attention weight
SAMPLING_MACS = 5
#: the CPU kernel of scaled_dot_product_attention, which FlopCounterMode has no formula for
SDPA_CPU_KERNEL = "aten::_scaled_dot_product_flash_attention_for_cpu"
#: the module kinds that forward hooks time (their classes: ``timed_classes``)
TIMED = ("msda_encoder", "vw_block", "vw_attention")
FULL_MODELS = ("hf_mask2former_swin_base", "vw_mask2former_swin_base", "vw_deformattn_mask2former_swin_base")
FULL_RATIOS = (
    ("vw_mask2former_swin_base", "hf_mask2former_swin_base"),
    ("vw_deformattn_mask2former_swin_base", "hf_mask2former_swin_base"),
)
COLUMNS = (
    harness.Column("model", "model", "<", 28),
    harness.Column("fp32 ms", "median_ms", ">", 8, 0),
    harness.Column("x peer", "ratio_to_peer", ">", 7, 3),
    harness.Column("bf16 ms", "bf16_median_ms", ">", 8, 0),
    harness.Column("in AC ms", "bf16_in_autocast_median_ms", ">", 8, 0),
    harness.Column("GMACs", "gmacs", ">", 7, 1),
    harness.Column("counted", "gmacs_flop_counter", ">", 8, 1),
    harness.Column("params M", "params_m", ">", 9, 2),
    harness.Column("peak MB", "peak_mem_mb", ">", 8, 0),
    harness.Column("enc shr", "msda_encoder_share", ">", 7, 3),
    harness.Column("VW shr", "vw_block_share", ">", 7, 3),
    harness.Column("attn shr", "vw_attention_share", ">", 8, 3),
    harness.Column("GFLOP/s", "achieved_gflops", ">", 8, 1),
    harness.Column("of GEMM", "fraction_of_gemm", ">", 7, 3),
)


# ----------------------------------------------------------------------------------------------------------------
# Configurations, decoders and inputs
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


def make_features(size: int, seed: int) -> tuple[torch.Tensor, ...]:
    """The four seeded Swin-B feature maps of one ``size`` x ``size`` image."""
    generator = harness.seeded_generator(seed)
    return tuple(
        torch.randn(1, channels, size // stride, size // stride, generator=generator)
        for channels, stride in zip(FEATURE_CHANNELS, FEATURE_STRIDES)
    )


def deformable_attention_class():
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    )

    return Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention


def timed_classes() -> dict[str, type]:
    """The module classes timed by hooks: ``TIMED`` key -> class."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoderEncoderOnly

    from hf_semseg.models.modeling_vw_pixel_decoder import VWBlock, VWWindowAttention

    return {"msda_encoder": Mask2FormerPixelDecoderEncoderOnly, "vw_block": VWBlock, "vw_attention": VWWindowAttention}


# ----------------------------------------------------------------------------------------------------------------
# Counting: FlopCounterMode (with a formula for the CPU SDPA kernel) plus the deformable sampling it does not see
# ----------------------------------------------------------------------------------------------------------------


def sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's SDPA formula (the two matrix products) for the CPU kernel, which has none registered."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_macs(model: torch.nn.Module, inputs) -> dict:
    """GMACs of one ``model(inputs)``: ``FlopCounterMode``'s count (with the CPU SDPA formula; its SDPA part as
    ``gmacs_sdpa``) and the analytic count of the deformable attention's sampling, from the shapes of the actual
    calls."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = {"msda_sampling": 0}

    def on_deformable_attention(module, args, kwargs, output):
        hidden_states = args[0] if args else kwargs["hidden_states"]
        batch, queries = hidden_states.shape[:2]
        samples = batch * queries * module.n_heads * module.n_levels * module.n_points
        counts["msda_sampling"] += samples * (module.d_model // module.n_heads) * SAMPLING_MACS

    handles = [
        module.register_forward_hook(on_deformable_attention, with_kwargs=True)
        for module in model.modules()
        if isinstance(module, deformable_attention_class())
    ]
    sdpa_kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = FlopCounterMode(display=False, custom_mapping={sdpa_kernel: sdpa_cpu_flops})
    try:
        with torch.no_grad(), counter:
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    by_op = counter.get_flop_counts()["Global"]
    counted = counter.get_total_flops() / 2 / 1e9
    sampling = counts["msda_sampling"] / 1e9
    return {
        "gmacs": counted + sampling,
        "gmacs_flop_counter": counted,
        "gmacs_sdpa": sum(flops for op, flops in by_op.items() if "scaled_dot_product" in str(op)) / 2 / 1e9,
        "gmacs_msda_sampling": sampling,
    }


# ----------------------------------------------------------------------------------------------------------------
# Latency: round-robin decoders plus a GEMM step; hook timing of the encoder, the VW block and its attention
# ----------------------------------------------------------------------------------------------------------------


class ModuleTimer:
    """Forward hooks that add up the seconds spent in the ``TIMED`` modules of a decoder (outermost calls of each
    kind) during one call; ``calls`` holds one ``{key: seconds}`` per decoder call."""

    def __init__(self, model: torch.nn.Module):
        self.calls: list[dict[str, float]] = []
        self.current = dict.fromkeys(TIMED, 0.0)
        self.starts: dict[int, float] = {}
        self.keys: set[str] = set()
        self.handles = []
        for key, cls in timed_classes().items():
            for module in model.modules():
                if isinstance(module, cls):
                    self.keys.add(key)
                    self.handles.append(module.register_forward_pre_hook(self._start))
                    self.handles.append(module.register_forward_hook(self._stopper(key)))

    @property
    def active(self) -> bool:
        return bool(self.handles)

    def _start(self, module, args):
        self.starts[id(module)] = time.perf_counter()

    def _stopper(self, key: str):
        def stop(module, args, output):
            self.current[key] += time.perf_counter() - self.starts.pop(id(module))

        return stop

    def wrap(self, step: harness.Step) -> harness.Step:
        """``step`` that records the module seconds of each of its calls in ``calls``."""

        def timed_step():
            self.current = dict.fromkeys(TIMED, 0.0)
            step()
            self.calls.append(self.current)

        return timed_step

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def gemm_step(dtype: torch.dtype) -> harness.Step:
    """One ``GEMM_SIZE`` square matmul in ``dtype`` into a preallocated output."""
    generator = harness.seeded_generator(1)
    a, b = (torch.randn(GEMM_SIZE, GEMM_SIZE, generator=generator).to(dtype) for _ in range(2))
    out = torch.empty(GEMM_SIZE, GEMM_SIZE, dtype=dtype)
    return lambda: torch.mm(a, b, out=out)


def load_average() -> float | None:
    """The 1-minute load average of the machine (``/proc/loadavg``): other processes competing for the cores."""
    try:
        with open("/proc/loadavg") as loadavg:
            return float(loadavg.read().split()[0])
    except OSError:
        return None


def gemm_gflops(seconds: float) -> float:
    return 2 * GEMM_SIZE**3 / seconds / 1e9


def time_decoders(models, features, dtype: torch.dtype, warmup: int, repeats: int, hooks: bool) -> dict:
    """Round-robin latency of ``models`` and one GEMM under ``dtype``. In bf16 the deformable decoders run outside
    autocast (as in the models), and a second step of each runs fully under autocast (``name + IN_AUTOCAST``). With
    ``hooks`` also the per-round seconds of the ``TIMED`` modules."""
    autocast, _ = harness.device_helpers(torch.device("cpu"), dtype)
    steps, timers = {}, {}
    for name, model in models.items():
        outside = dtype != torch.float32 and name in DEFORMABLE
        step = harness.forward_step(model, features, contextlib.nullcontext if outside else autocast)
        timer = ModuleTimer(model) if hooks else None
        if timer is not None and timer.active:
            timers[name] = timer
            step = timer.wrap(step)
        steps[name] = step
        if outside:
            steps[name + IN_AUTOCAST] = harness.forward_step(model, features, autocast)
    steps[GEMM] = gemm_step(dtype)
    try:
        times, _ = harness.time_round_robin(steps, warmup, repeats)
    finally:
        for timer in timers.values():
            timer.remove()
    shares = {}
    for name, timer in timers.items():
        calls = timer.calls[-repeats:]  # the timed rounds
        shares[name] = {
            key: harness.median([call[key] / seconds for call, seconds in zip(calls, times[name])])
            for key in sorted(timer.keys)
        }
        shares[name].update({f"{key}_s": [call[key] for call in calls] for key in sorted(timer.keys)})
    return {"times_s": times, "shares": shares}


# ----------------------------------------------------------------------------------------------------------------
# torch.profiler: the kernels of one forward
# ----------------------------------------------------------------------------------------------------------------


def inclusive_seconds(events, name: str) -> float:
    """Seconds inside operator ``name``, not counting calls nested in a call of the same name."""
    total = 0.0
    for event in events:
        if event.name != name:
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name != name:
            parent = parent.cpu_parent
        if parent is None:
            total += event.cpu_time_total / 1e6
    return total


def profile_forward(model: torch.nn.Module, features, top: int = 8) -> dict:
    """One fp32 forward under ``torch.profiler``: its wall seconds, the inclusive seconds (and shares) of
    ``aten::grid_sampler_2d`` and the CPU SDPA kernel, and the ``top`` operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        model(features)
        wall = time.perf_counter() - start
    events = profiler.events()
    kernels = {name: inclusive_seconds(events, name) for name in ("aten::grid_sampler_2d", SDPA_CPU_KERNEL)}
    averages = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    return {
        "profiled_forward_s": wall,
        "kernels_s": kernels,
        "kernel_shares": {name: seconds / wall for name, seconds in kernels.items()},
        "top_self_time": [
            {"op": event.key, "self_s": event.self_cpu_time_total / 1e6, "calls": event.count}
            for event in averages[:top]
        ],
    }


# ----------------------------------------------------------------------------------------------------------------
# Peak memory in a fresh process
# ----------------------------------------------------------------------------------------------------------------


def measure_memory(args, name: str) -> dict:
    """Peak memory of the first forward of decoder ``name`` in this (fresh) process."""
    torch.manual_seed(args.seed)
    model = build_decoder(name)
    return harness.first_forward_peak_memory(model, make_features(args.size, args.seed), torch.device("cpu"))


def memory_in_subprocess(args, name: str) -> dict:
    """``measure_memory`` in a fresh process of this script."""
    command = harness.script_command(
        __file__, "--memory-worker", name, "--size", args.size, "--seed", args.seed, "--threads", args.threads
    )
    return harness.run_worker_command(command, args.threads)


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


# ----------------------------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------------------------


def ratios_of(rows: dict[str, dict], fp32_times: dict[str, list[float]]) -> dict:
    """VW decoder / peer of latency (fp32, bf16 as in the models, bf16 fully in autocast: ratios of the medians),
    GMACs, parameters and peak memory; ``latency_paired``: the median over the fp32 rounds of the ratio within each
    round; ``latency_min``: the ratio of the fastest fp32 rounds (the least disturbed by other processes); and the
    differences in GMACs, GFLOPs (2 x MACs) and parameters."""
    ratios = {}
    for numerator, denominator in RATIOS:
        if numerator not in rows or denominator not in rows:
            continue
        top, bottom = rows[numerator], rows[denominator]
        entry = {
            "latency_paired": harness.median(
                [a / b for a, b in zip(fp32_times[numerator], fp32_times[denominator], strict=True)]
            ),
            "latency_min": min(fp32_times[numerator]) / min(fp32_times[denominator]),
        }
        for key in ("median_s", "bf16_median_s", "bf16_in_autocast_median_s", "gmacs", "params_m", "peak_mem_mb"):
            # the non-deformable decoders have no separate in-autocast figure: their bf16 one is in autocast
            top_value = top.get(key, top.get("bf16_median_s") if "in_autocast" in key else None)
            bottom_value = bottom.get(key, bottom.get("bf16_median_s") if "in_autocast" in key else None)
            if top_value is not None and bottom_value:
                entry[key.replace("median_s", "latency")] = top_value / bottom_value
        entry["gmacs_difference"] = top["gmacs"] - bottom["gmacs"]
        entry["gflops_difference"] = 2 * entry["gmacs_difference"]
        entry["params_m_difference"] = top["params_m"] - bottom["params_m"]
        ratios[f"{numerator}/{denominator}"] = entry
    return ratios


def run_benchmark(args) -> dict:
    """All measurements of one run: the report's ``results`` (one row per decoder), ``gemm``, ``ratios`` and
    ``full_models``."""
    features = make_features(args.size, args.seed)
    print("building decoders ...", file=sys.stderr, flush=True)
    models = {}
    for name in args.models:
        torch.manual_seed(args.seed)
        models[name] = build_decoder(name)
    rows = {name: {"model": name, "released": RELEASED[name], "size": args.size} for name in args.models}
    for name, model in models.items():
        rows[name]["class"] = type(model).__name__
        rows[name]["params_m"] = harness.count_params(model) / 1e6
    print("counting GMACs ...", file=sys.stderr, flush=True)
    for name, model in models.items():
        rows[name].update(count_macs(model, features))

    print(f"fp32 latency: {args.warmup} + {args.repeats} round-robin rounds ...", file=sys.stderr, flush=True)
    load_before = load_average()
    fp32 = time_decoders(models, features, torch.float32, args.warmup, args.repeats, hooks=True)
    gemm = {"size": GEMM_SIZE, "fp32_times_s": fp32["times_s"][GEMM]}
    gemm["load_average_1min_before_after_fp32"] = [load_before, load_average()]
    gemm["fp32_gflops_median"] = gemm_gflops(harness.median(gemm["fp32_times_s"]))
    gemm["fp32_gflops_max"] = gemm_gflops(min(gemm["fp32_times_s"]))
    for name in models:
        row = rows[name]
        row["times_s"] = fp32["times_s"][name]
        row["median_s"] = harness.median(row["times_s"])
        row["median_ms"] = 1e3 * row["median_s"]
        row["achieved_gflops"] = 2 * row["gmacs"] / row["median_s"]
        row["fraction_of_gemm"] = row["achieved_gflops"] / gemm["fp32_gflops_median"]
        row["fraction_of_gemm_max"] = row["achieved_gflops"] / gemm["fp32_gflops_max"]
        for key, value in fp32["shares"].get(name, {}).items():
            row[key if key.endswith("_s") else f"{key}_share"] = value

    if args.bf16_repeats > 0:
        print(f"bf16 autocast latency: 1 + {args.bf16_repeats} rounds ...", file=sys.stderr, flush=True)
        bf16 = time_decoders(models, features, torch.bfloat16, 1, args.bf16_repeats, hooks=False)
        gemm["bf16_times_s"] = bf16["times_s"][GEMM]
        gemm["bf16_gflops_median"] = gemm_gflops(harness.median(gemm["bf16_times_s"]))
        for name in models:
            row = rows[name]
            row["bf16_outside_autocast"] = name in DEFORMABLE
            row["bf16_times_s"] = bf16["times_s"][name]
            row["bf16_median_s"] = harness.median(row["bf16_times_s"])
            row["bf16_median_ms"] = 1e3 * row["bf16_median_s"]
            if name + IN_AUTOCAST in bf16["times_s"]:
                row["bf16_in_autocast_times_s"] = bf16["times_s"][name + IN_AUTOCAST]
                row["bf16_in_autocast_median_s"] = harness.median(row["bf16_in_autocast_times_s"])
                row["bf16_in_autocast_median_ms"] = 1e3 * row["bf16_in_autocast_median_s"]

    if not args.skip_profile:
        print("torch.profiler pass ...", file=sys.stderr, flush=True)
        for name, model in models.items():
            profiled = profile_forward(model, features)
            rows[name]["profile"] = profiled
            rows[name]["grid_sampler_share"] = profiled["kernel_shares"]["aten::grid_sampler_2d"] or None
            rows[name]["sdpa_kernel_share"] = profiled["kernel_shares"][SDPA_CPU_KERNEL] or None

    del models
    print("peak memory, one fresh process per decoder ...", file=sys.stderr, flush=True)
    for name in args.models:
        rows[name].update(memory_in_subprocess(args, name))

    for name, row in rows.items():
        if PEER[name] in rows:
            row["ratio_to_peer"] = row["median_s"] / rows[PEER[name]]["median_s"]
    report = {"results": list(rows.values()), "gemm": gemm, "ratios": ratios_of(rows, fp32["times_s"])}
    if not args.skip_full_models:
        print("whole models: GMACs of one forward ...", file=sys.stderr, flush=True)
        report["full_models"] = count_full_models(args)
    return report


def print_run(report: dict) -> None:
    print(harness.format_table(report["results"], COLUMNS))
    print("(in AC ms: the deformable decoders fully under bf16 autocast; their bf16 ms runs outside it, in fp32)")
    gemm = report["gemm"]
    line = f"\n{GEMM_SIZE}^2 fp32 GEMM (a step of the same rounds): {gemm['fp32_gflops_median']:.1f} GFLOP/s median"
    line += f", {gemm['fp32_gflops_max']:.1f} max"
    if "bf16_gflops_median" in gemm:
        line += f"; bf16 GEMM: {gemm['bf16_gflops_median']:.1f} GFLOP/s median"
    load = gemm["load_average_1min_before_after_fp32"]
    print(line + f"; load average before/after the fp32 rounds: {load[0]} / {load[1]}")
    for pair, ratio in report["ratios"].items():
        print(pair + ": " + ", ".join(f"{key} {value:.3f}" for key, value in ratio.items()))
    if "full_models" in report:
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


# ----------------------------------------------------------------------------------------------------------------
# Combining runs
# ----------------------------------------------------------------------------------------------------------------

RUN_FIGURES = (
    "median_ms", "bf16_median_ms", "bf16_in_autocast_median_ms", "peak_mem_mb", "msda_encoder_share",
    "vw_block_share", "vw_attention_share", "grid_sampler_share", "sdpa_kernel_share", "achieved_gflops",
    "fraction_of_gemm", "fraction_of_gemm_max", "ratio_to_peer",
)  # fmt: skip
STATIC_FIGURES = (
    "released", "class", "params_m", "gmacs", "gmacs_flop_counter", "gmacs_sdpa", "gmacs_msda_sampling",
)  # fmt: skip


def combine(paths: list[Path]) -> dict:
    """Per-run ratios and figures of the reports at ``paths`` and their medians over the runs."""
    runs = [json.loads(path.read_text()) for path in paths]
    per_run = []
    for path, run in zip(paths, runs):
        rows = {row["model"]: row for row in run["results"]}
        per_run.append({
            "file": str(path),
            "date": run["environment"]["date"],
            "ratios": run["ratios"],
            "gemm_fp32_gflops": run["gemm"]["fp32_gflops_median"],
            "gemm_fp32_gflops_max": run["gemm"]["fp32_gflops_max"],
            "load_average_1min_before_after_fp32": run["gemm"].get("load_average_1min_before_after_fp32"),
            "gemm_bf16_gflops": run["gemm"].get("bf16_gflops_median"),
            "models": {name: {key: row.get(key) for key in RUN_FIGURES} for name, row in rows.items()},
        })  # fmt: skip

    def median_of(values):
        values = [value for value in values if value is not None]
        return statistics.median(values) if values else None

    medians = {
        "ratios": {
            pair: {key: median_of([run["ratios"].get(pair, {}).get(key) for run in per_run]) for key in entry}
            for pair, entry in per_run[0]["ratios"].items()
        },
        **{
            key: median_of([run[key] for run in per_run])
            for key in ("gemm_fp32_gflops", "gemm_fp32_gflops_max", "gemm_bf16_gflops")
        },
        "models": {
            name: {key: median_of([run["models"][name][key] for run in per_run]) for key in figures}
            for name, figures in per_run[0]["models"].items()
        },
    }
    # the counts do not change between runs: those of the first
    static = {row["model"]: {key: row.get(key) for key in STATIC_FIGURES} for row in runs[0]["results"]}
    combined = {
        "environment": runs[0]["environment"],
        "settings": runs[0]["settings"],
        "counts": static,
        "runs": per_run,
        "medians_over_runs": medians,
    }
    full_models = next((run["full_models"] for run in runs if "full_models" in run), None)
    if full_models is not None:
        combined["full_models"] = full_models
    return combined


def print_combined(combined: dict) -> None:
    def describe(ratios: dict) -> str:
        return ", ".join(
            f"{pair.split('/')[0]} {entry['latency']:.3f}x (paired {entry['latency_paired']:.3f}x, "
            f"fastest rounds {entry['latency_min']:.3f}x)"
            for pair, entry in ratios.items()
        )

    for index, run in enumerate(combined["runs"], start=1):
        print(f"run {index} ({run['file']}): {describe(run['ratios'])}")
    print("median over runs: " + describe(combined["medians_over_runs"]["ratios"]))


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    """The options; the device is always the CPU, the batch one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="decoders to measure")
    parser.add_argument("--size", type=int, default=640, help="square input side in pixels (features at 1/4-1/32)")
    harness.add_timing_options(parser, warmup=1, repeats=5)
    parser.add_argument("--bf16-repeats", type=int, default=2, help="timed bf16 autocast rounds (0: skip)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--skip-profile", action="store_true", help="no torch.profiler pass")
    parser.add_argument("--skip-full-models", action="store_true", help="no whole-model GMAC counts")
    parser.add_argument("--combine", type=Path, nargs="+", help="combine these run reports into --output")
    parser.add_argument("--output", type=Path, default=None, help="JSON report (default results/vw_d2_cpu.json)")
    parser.add_argument("--memory-worker", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size % 64:
        parser.error("--size must be a multiple of 64 (the VW block's 8 x 8 windows of the stride-8 map)")
    args.device, args.dtype, args.batch_size = "cpu", "float32", 1
    if args.output is None:
        args.output = harness.default_output("vw_d2", "cpu", "_combined" if args.combine else "")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.combine:
        combined = combine(args.combine)
        print_combined(combined)
        harness.write_report(args.output, combined)
        print(f"\nwrote {args.output}")
        return
    harness.set_threads(args.threads)
    if args.memory_worker:
        harness.emit_result(measure_memory(args, args.memory_worker))
        return
    env = harness.environment(args.device, args.dtype, args.threads)
    details = f"{args.size}x{args.size} Swin-B features", f"warmup {args.warmup}", f"repeats {args.repeats}"
    print(harness.describe_run(env, *details), flush=True)
    start = time.perf_counter()
    report = run_benchmark(args)
    print()
    print_run(report)
    settings = {key: getattr(args, key) for key in ("models", "size", "warmup", "repeats", "bf16_repeats", "seed")}
    settings["feature_shapes"] = [
        [1, c, args.size // s, args.size // s] for c, s in zip(FEATURE_CHANNELS, FEATURE_STRIDES)
    ]
    settings["swin_base"] = SWIN_BASE
    settings["bf16_outside_autocast"] = list(DEFORMABLE)
    settings["macs"] = "FLOPs / 2; FlopCounterMode with torch's SDPA formula for the CPU SDPA kernel"
    settings["registry_check"] = registry_check()
    report = {"environment": env, "settings": settings, **report, "wall_s": time.perf_counter() - start}
    harness.write_report(args.output, report)
    print(f"\nwrote {args.output} ({report['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
