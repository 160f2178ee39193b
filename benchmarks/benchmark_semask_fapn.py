#!/usr/bin/env python
"""SeMask's FaPN and MSFaPN pixel decoders versus transformers' Mask2Former pixel decoder on SeMask-L features at
640x640: latency, GMACs, parameters, peak memory and the share of the deformable-convolution path, in one run.

    python benchmarks/benchmark_semask_fapn.py [--repeats 5] [--bf16-repeats 2] [--threads 2] [--output PATH]
    python benchmarks/benchmark_semask_fapn.py --combine RUN.json [RUN.json ...] --output COMBINED.json

* Decoders (``--models``), each built as ``cls(config, feature_channels=[192, 384, 768, 1536])`` from the released
  configuration (feature and mask feature size 256, 6 encoder layers with FFN 1024, 8 heads) and put in eval mode:
  ``hf_mask2former_pixel_decoder`` (transformers' ``Mask2FormerPixelDecoder``, config of
  ``semask-mask2former-large-ade20k``), ``semask_fapn_decoder`` (``SeMaskFaPNPixelDecoder``,
  ``semask-mask2former-fapn-large-ade20k``) and ``semask_msfapn_decoder`` (``SeMaskMSFaPNPixelDecoder``,
  ``semask-mask2former-msfapn-large-ade20k``). As inside SeMask-Mask2Former, every decoder's GroupNorms are replaced
  by ``SeMaskMask2FormerGroupNorm`` (``group_norms_for_single_values``; the same computation at these sizes), and the
  weights get the model's own initialisation (``SeMaskMask2FormerPreTrainedModel._init_weights``: Mask2Former's rules,
  detectron2's ``c2_xavier_fill`` for the FaPN convolutions, the original FeatureAlign init, whose offset predictor
  starts at zero).
* Inputs: the four SeMask Swin-L feature maps of one 640x640 image, seeded ``randn`` of shapes (1, 192, 160, 160),
  (1, 384, 80, 80), (1, 768, 40, 40), (1, 1536, 20, 20), the same tensors for every decoder.
* Latency: all decoders live in ONE process and are timed round-robin (``harness.time_round_robin``: each round runs
  every decoder once, after ``--warmup`` untimed rounds), ``torch.no_grad()``, fp32, ``--threads`` threads; the
  median over ``--repeats`` rounds. The ratios to the stock decoder are the ratios of the medians, and two checks:
  (``paired``) the median over the rounds of the ratio within each round, (``min``) the ratio of the fastest rounds,
  the least disturbed by other processes; the load average before and after is recorded. A 2048x2048 fp32 matmul
  is one more step of the same rounds: the machine's GEMM throughput under the same load, against which each
  decoder's achieved GFLOP/s (2 x the GMACs below over its median latency) is put (its median; the fastest round
  too). Then the same again under
  ``torch.autocast("cpu", torch.bfloat16)`` (``--bf16-repeats`` rounds, 0 skips it; a bf16 GEMM is its extra step).
  The decoders are autocast on their own here; inside SeMask-Mask2Former only FaPN runs under autocast (the
  deformable-attention decoders are run outside it), and the deformable convolution always computes in fp32.
* Deformable-convolution share: forward hooks time every ``FeatureAlign`` and ``ModulatedDeformableConv2d`` call
  during the timed fp32 rounds; per round, their time over the decoder's forward, median over the rounds. One extra
  forward under ``torch.profiler`` gives the kernels: ``torchvision::deform_conv2d`` and ``aten::grid_sampler_2d``
  (inclusive times) and the top operators by self time.
* GMACs: ``torch.utils.flop_counter.FlopCounterMode`` on one forward (MACs = FLOPs / 2; it counts convolutions and
  matrix products). It does not see ``torchvision::deform_conv2d`` nor the bilinear sampling of the multi-scale
  deformable attention (``grid_sample`` plus its weighted sum), which are counted analytically from the shapes of the
  actual calls (forward hooks): the deformable convolution ``H*W*C_out*C_in*9`` MACs for its matrix product plus
  ``H*W*C_in*9*5`` for the sampling (4 bilinear MACs and 1 modulation-mask MAC per sampled value); the deformable
  attention ``queries*heads*levels*points*head_dim*5`` (4 bilinear MACs and 1 attention-weight MAC per sampled
  value). Not counted anywhere: normalisations, activations, softmax, additions, interpolations (nearest/bilinear
  upsampling), position embeddings and the computation of the sampling locations.
* Peak memory: in a fresh process per decoder, the increase of the resident set (``VmHWM`` after a ``clear_refs``
  reset) during its first forward over what the process held after building the decoder and its inputs
  (``harness.first_forward_peak_memory``): activations and workspace, not the weights.

``--combine`` reads the reports of several runs and writes their per-run ratios and the medians over the runs.
The measurement code is in ``harness.py``: this script supplies its decoders, inputs, hooked modules, profiled
kernels, analytic counts and ratio pairs (``harness.DecoderBenchmark``), as ``benchmark_vw_d2.py`` does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py sits next to this script

import harness  # noqa: E402


STOCK = "hf_mask2former_pixel_decoder"
FAPN = "semask_fapn_decoder"
MSFAPN = "semask_msfapn_decoder"
MODELS = (STOCK, FAPN, MSFAPN)
VARIANTS = {
    STOCK: "semask-mask2former-large-ade20k",
    FAPN: "semask-mask2former-fapn-large-ade20k",
    MSFAPN: "semask-mask2former-msfapn-large-ade20k",
}
RATIOS = ((FAPN, STOCK), (MSFAPN, STOCK))
#: SeMask Swin-L's four stages: channels and strides
FEATURE_CHANNELS = (192, 384, 768, 1536)
FEATURE_STRIDES = (4, 8, 16, 32)
#: the table's columns of this script's own figures (``harness.decoder_columns``)
COLUMNS = (
    harness.Column("FA share", "feature_align_share", ">", 8, 3),
    harness.Column("DCN krnl", "deform_conv2d_kernel_share", ">", 8, 3),
)
#: the operators whose inclusive time the profiler pass records: row field -> operator
PROFILED_KERNELS = {
    "deform_conv2d_kernel_share": "torchvision::deform_conv2d",
    "grid_sampler_share": "aten::grid_sampler_2d",
}
#: the row figures ``--combine`` gathers per run, and those it takes from the first run (the counts)
RUN_FIGURES = (
    "median_ms", "bf16_median_ms", "peak_mem_mb", "feature_align_share", "deformable_conv_share",
    "deform_conv2d_kernel_share", "grid_sampler_share", "achieved_gflops", "fraction_of_gemm", "fraction_of_gemm_max",
)  # fmt: skip
STATIC_FIGURES = (
    "variant", "params_m", "feature_align_params_m", "gmacs", "gmacs_flop_counter", "gmacs_dcn_gemm",
    "gmacs_dcn_sampling", "gmacs_msda_sampling",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Decoders
# ----------------------------------------------------------------------------------------------------------------


def decoder_class(name: str):
    """The pixel decoder class of ``name`` (one of ``MODELS``)."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder

    from hf_semseg.models.modeling_fapn import SeMaskFaPNPixelDecoder, SeMaskMSFaPNPixelDecoder

    return {STOCK: Mask2FormerPixelDecoder, FAPN: SeMaskFaPNPixelDecoder, MSFAPN: SeMaskMSFaPNPixelDecoder}[name]


def build_decoder(name: str) -> torch.nn.Module:
    """Decoder ``name`` in eval mode: ``cls(config, feature_channels=FEATURE_CHANNELS)`` of its released config, with
    SeMask-Mask2Former's GroupNorms and its weight initialisation (a minimal pre-trained-model shell runs
    ``post_init`` over the decoder; without it ``level_embed`` and the deformable weights are uninitialised memory)."""
    import hf_semseg
    from hf_semseg.models.modeling_semask_mask2former import (
        SeMaskMask2FormerPreTrainedModel,
        group_norms_for_single_values,
    )

    class DecoderShell(SeMaskMask2FormerPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.decoder = decoder_class(name)(config, feature_channels=list(FEATURE_CHANNELS))
            group_norms_for_single_values(self.decoder)
            self.post_init()

    return DecoderShell(hf_semseg.variant_config(VARIANTS[name])).decoder.eval()


def timed_classes() -> dict[str, type]:
    """The module classes timed by hooks: ``FeatureAlign`` (which holds a ``ModulatedDeformableConv2d``) and
    ``ModulatedDeformableConv2d``."""
    from hf_semseg.models.modeling_fapn import FeatureAlign, ModulatedDeformableConv2d

    return {"feature_align": FeatureAlign, "deformable_conv": ModulatedDeformableConv2d}


def describe(name: str, model: torch.nn.Module) -> dict:
    """The row fields of decoder ``name``: its variant and the parameters of its ``FeatureAlign`` modules."""
    feature_align = timed_classes()["feature_align"]
    modules = [module for module in model.modules() if isinstance(module, feature_align)]
    return {"variant": VARIANTS[name], "feature_align_params_m": sum(map(harness.count_params, modules)) / 1e6}


# ----------------------------------------------------------------------------------------------------------------
# Counting: FlopCounterMode plus the deformable sampling it does not see
# ----------------------------------------------------------------------------------------------------------------


def deformable_conv_macs(module, args, kwargs, output) -> dict[str, int]:
    """MACs of one ``ModulatedDeformableConv2d`` call: ``dcn_gemm``, its matrix product, ``H*W*C_out*C_in*k*k``;
    ``dcn_sampling``, ``H*W*C_in*k*k*SAMPLING_MACS`` (4 bilinear MACs and 1 modulation-mask MAC per sampled value)."""
    batch, in_channels = args[0].shape[:2]
    out_channels, _, kernel_h, kernel_w = module.weight.shape
    pixels = batch * output.shape[-2] * output.shape[-1]
    return {
        "dcn_gemm": pixels * out_channels * in_channels * kernel_h * kernel_w,
        "dcn_sampling": pixels * in_channels * kernel_h * kernel_w * harness.SAMPLING_MACS,
    }


def deformable_conv_analytic() -> harness.AnalyticMacs:
    """The analytic count of every ``ModulatedDeformableConv2d`` call (:func:`deformable_conv_macs`)."""
    return harness.AnalyticMacs(timed_classes()["deformable_conv"], ("dcn_gemm", "dcn_sampling"), deformable_conv_macs)


def count_macs(model: torch.nn.Module, features) -> dict:
    """GMACs of one forward: ``FlopCounterMode``'s count and the analytic counts of the deformable convolutions
    (matrix product and sampling) and of the deformable attention's sampling, from the shapes of the actual calls."""
    analytic = [deformable_conv_analytic(), harness.deformable_attention_sampling()]
    return harness.count_macs_with_analytic(model, features, analytic)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


BENCHMARK = harness.DecoderBenchmark(
    script=__file__,
    models=MODELS,
    output_stem="semask_fapn",
    inputs_label="SeMask-L features",
    feature_channels=FEATURE_CHANNELS,
    feature_strides=FEATURE_STRIDES,
    build=build_decoder,
    describe=describe,
    count_macs=count_macs,
    timed_classes=timed_classes,
    profiled_kernels=PROFILED_KERNELS,
    pairs=RATIOS,
    peers=dict.fromkeys(MODELS, STOCK),
    peer_column="ratio_to_stock",
    columns=COLUMNS,
    run_figures=RUN_FIGURES,
    static_figures=STATIC_FIGURES,
    settings=lambda: {"group_norm": "SeMaskMask2FormerGroupNorm in all decoders (group_norms_for_single_values)"},
)


def main(argv=None) -> None:
    harness.decoder_benchmark_main(BENCHMARK, __doc__, argv)


if __name__ == "__main__":
    main()
