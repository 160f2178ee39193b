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
The measurement code is shared with the other scripts in ``harness.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
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
GEMM = "gemm_2048"
GEMM_SIZE = 2048
#: MACs per sampled value: 4 for the bilinear interpolation, 1 for the modulation mask / attention weight
SAMPLING_MACS = 5
COLUMNS = (
    harness.Column("model", "model", "<", 28),
    harness.Column("fp32 ms", "median_ms", ">", 8, 0),
    harness.Column("x stock", "ratio_to_stock", ">", 7, 3),
    harness.Column("bf16 ms", "bf16_median_ms", ">", 8, 0),
    harness.Column("GMACs", "gmacs", ">", 7, 1),
    harness.Column("counted", "gmacs_flop_counter", ">", 8, 1),
    harness.Column("params M", "params_m", ">", 9, 2),
    harness.Column("peak MB", "peak_mem_mb", ">", 8, 0),
    harness.Column("FA share", "feature_align_share", ">", 8, 3),
    harness.Column("DCN krnl", "deform_conv2d_kernel_share", ">", 8, 3),
    harness.Column("GFLOP/s", "achieved_gflops", ">", 8, 1),
    harness.Column("of GEMM", "fraction_of_gemm", ">", 7, 3),
)


# ----------------------------------------------------------------------------------------------------------------
# Decoders and inputs
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


def make_features(size: int, seed: int) -> tuple[torch.Tensor, ...]:
    """The four seeded SeMask Swin-L feature maps of one ``size`` x ``size`` image."""
    generator = harness.seeded_generator(seed)
    return tuple(
        torch.randn(1, channels, size // stride, size // stride, generator=generator)
        for channels, stride in zip(FEATURE_CHANNELS, FEATURE_STRIDES)
    )


def deformable_modules():
    """``(FeatureAlign, ModulatedDeformableConv2d, multi-scale deformable attention)`` classes."""
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    )

    from hf_semseg.models.modeling_fapn import FeatureAlign, ModulatedDeformableConv2d

    return FeatureAlign, ModulatedDeformableConv2d, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention


# ----------------------------------------------------------------------------------------------------------------
# Counting: FlopCounterMode plus the deformable sampling it does not see
# ----------------------------------------------------------------------------------------------------------------


def count_macs(model: torch.nn.Module, features) -> dict:
    """GMACs of one forward: ``FlopCounterMode``'s count and the analytic counts of the deformable convolutions
    (matrix product and sampling) and of the deformable attention's sampling, from the shapes of the actual calls."""
    _, deformable_conv, deformable_attention = deformable_modules()
    counts = {"dcn_gemm": 0, "dcn_sampling": 0, "msda_sampling": 0}

    def on_deformable_conv(module, args, output):
        hidden_states = args[0]
        batch, in_channels = hidden_states.shape[:2]
        out_channels, _, kernel_h, kernel_w = module.weight.shape
        pixels = batch * output.shape[-2] * output.shape[-1]
        counts["dcn_gemm"] += pixels * out_channels * in_channels * kernel_h * kernel_w
        counts["dcn_sampling"] += pixels * in_channels * kernel_h * kernel_w * SAMPLING_MACS

    def on_deformable_attention(module, args, kwargs, output):
        hidden_states = args[0] if args else kwargs["hidden_states"]
        batch, queries = hidden_states.shape[:2]
        samples = batch * queries * module.n_heads * module.n_levels * module.n_points
        counts["msda_sampling"] += samples * (module.d_model // module.n_heads) * SAMPLING_MACS

    handles = []
    for module in model.modules():
        if isinstance(module, deformable_conv):
            handles.append(module.register_forward_hook(on_deformable_conv))
        elif isinstance(module, deformable_attention):
            handles.append(module.register_forward_hook(on_deformable_attention, with_kwargs=True))
    try:
        counted = harness.count_gmacs(model, features)
    finally:
        for handle in handles:
            handle.remove()
    analytic = {f"gmacs_{key}": value / 1e9 for key, value in counts.items()}
    return {"gmacs": counted + sum(analytic.values()), "gmacs_flop_counter": counted, **analytic}


# ----------------------------------------------------------------------------------------------------------------
# Latency: round-robin decoders plus a GEMM step; hook timing of the deformable-convolution path
# ----------------------------------------------------------------------------------------------------------------


class ModuleTimer:
    """Forward hooks that add up the seconds spent in every ``FeatureAlign`` and ``ModulatedDeformableConv2d`` of a
    decoder during one call; ``calls`` holds one ``{"feature_align": s, "deformable_conv": s}`` per decoder call."""

    def __init__(self, model: torch.nn.Module):
        feature_align, deformable_conv, _ = deformable_modules()
        self.calls: list[dict[str, float]] = []
        self.current = {"feature_align": 0.0, "deformable_conv": 0.0}
        self.handles = []
        for module in model.modules():
            key = "feature_align" if isinstance(module, feature_align) else None
            key = "deformable_conv" if isinstance(module, deformable_conv) else key
            if key is not None:
                self.handles.append(module.register_forward_pre_hook(self._start))
                self.handles.append(module.register_forward_hook(self._stopper(key)))
        self.starts: dict[int, float] = {}

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
            self.current = {"feature_align": 0.0, "deformable_conv": 0.0}
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
    """Round-robin latency of ``models`` and one GEMM under ``dtype`` (autocast for the half types); with ``hooks``
    also the per-round FeatureAlign / ModulatedDeformableConv2d seconds of the FaPN decoders."""
    autocast, _ = harness.device_helpers(torch.device("cpu"), dtype)
    steps, timers = {}, {}
    for name, model in models.items():
        step = harness.forward_step(model, features, autocast)
        timer = ModuleTimer(model) if hooks else None
        if timer is not None and timer.active:
            timers[name] = timer
            step = timer.wrap(step)
        elif timer is not None:
            timer.remove()
        steps[name] = step
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
            for key in ("feature_align", "deformable_conv")
        }
        shares[name]["feature_align_s"] = [call["feature_align"] for call in calls]
        shares[name]["deformable_conv_s"] = [call["deformable_conv"] for call in calls]
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
    ``torchvision::deform_conv2d`` and ``aten::grid_sampler_2d``, and the ``top`` operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        model(features)
        wall = time.perf_counter() - start
    events = profiler.events()
    kernels = {
        name: inclusive_seconds(events, name) for name in ("torchvision::deform_conv2d", "aten::grid_sampler_2d")
    }
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
    model = build_decoder(name)
    return harness.first_forward_peak_memory(model, make_features(args.size, args.seed), torch.device("cpu"))


def memory_in_subprocess(args, name: str) -> dict:
    """``measure_memory`` in a fresh process of this script."""
    command = harness.script_command(
        __file__, "--memory-worker", name, "--size", args.size, "--seed", args.seed, "--threads", args.threads
    )
    return harness.run_worker_command(command, args.threads)


# ----------------------------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------------------------


def ratios_of(rows: dict[str, dict], fp32_times: dict[str, list[float]]) -> dict:
    """FaPN / stock and MSFaPN / stock of latency (fp32, bf16: ratios of the medians), GMACs, parameters and peak
    memory; ``latency_paired``: the median over the fp32 rounds of the ratio within each round (the two calls of a
    round are seconds apart, so a load change between rounds cancels out); ``latency_min``: the ratio of the fastest
    fp32 rounds (the least disturbed by other processes)."""
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
        for key in ("median_s", "bf16_median_s", "gmacs", "params_m", "peak_mem_mb"):
            if top.get(key) is not None and bottom.get(key):
                entry[key.replace("median_s", "latency")] = top[key] / bottom[key]
        ratios[f"{numerator}/{denominator}"] = entry
    return ratios


def run_benchmark(args) -> dict:
    """All measurements of one run: the report's ``results`` (one row per decoder), ``gemm`` and ``ratios``."""
    features = make_features(args.size, args.seed)
    print("building decoders ...", file=sys.stderr, flush=True)
    models = {}
    for name in args.models:
        torch.manual_seed(args.seed)
        models[name] = build_decoder(name)
    rows = {name: {"model": name, "variant": VARIANTS[name], "size": args.size} for name in args.models}
    for name, model in models.items():
        rows[name]["params_m"] = harness.count_params(model) / 1e6
        rows[name]["feature_align_params_m"] = (
            sum(harness.count_params(m) for m in model.modules() if isinstance(m, deformable_modules()[0])) / 1e6
        )
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
        if name in fp32["shares"]:
            share = fp32["shares"][name]
            row["feature_align_share"] = share["feature_align"]
            row["deformable_conv_share"] = share["deformable_conv"]
            row["feature_align_s"] = share["feature_align_s"]
            row["deformable_conv_s"] = share["deformable_conv_s"]

    if args.bf16_repeats > 0:
        print(f"bf16 autocast latency: 1 + {args.bf16_repeats} rounds ...", file=sys.stderr, flush=True)
        bf16 = time_decoders(models, features, torch.bfloat16, 1, args.bf16_repeats, hooks=False)
        gemm["bf16_times_s"] = bf16["times_s"][GEMM]
        gemm["bf16_gflops_median"] = gemm_gflops(harness.median(gemm["bf16_times_s"]))
        for name in models:
            rows[name]["bf16_times_s"] = bf16["times_s"][name]
            rows[name]["bf16_median_s"] = harness.median(bf16["times_s"][name])
            rows[name]["bf16_median_ms"] = 1e3 * rows[name]["bf16_median_s"]

    if not args.skip_profile:
        print("torch.profiler pass ...", file=sys.stderr, flush=True)
        for name, model in models.items():
            profiled = profile_forward(model, features)
            rows[name]["profile"] = profiled
            rows[name]["deform_conv2d_kernel_share"] = profiled["kernel_shares"]["torchvision::deform_conv2d"] or None
            rows[name]["grid_sampler_share"] = profiled["kernel_shares"]["aten::grid_sampler_2d"] or None

    del models
    print("peak memory, one fresh process per decoder ...", file=sys.stderr, flush=True)
    for name in args.models:
        rows[name].update(memory_in_subprocess(args, name))

    if STOCK in rows:
        for row in rows.values():
            row["ratio_to_stock"] = row["median_s"] / rows[STOCK]["median_s"]
    return {"results": list(rows.values()), "gemm": gemm, "ratios": ratios_of(rows, fp32["times_s"])}


def print_run(report: dict) -> None:
    print(harness.format_table(report["results"], COLUMNS))
    gemm = report["gemm"]
    line = f"\n{GEMM_SIZE}^2 fp32 GEMM (a step of the same rounds): {gemm['fp32_gflops_median']:.1f} GFLOP/s median"
    line += f", {gemm['fp32_gflops_max']:.1f} max"
    if "bf16_gflops_median" in gemm:
        line += f"; bf16 GEMM: {gemm['bf16_gflops_median']:.1f} GFLOP/s median"
    print(line)
    for pair, ratio in report["ratios"].items():
        print(pair + ": " + ", ".join(f"{key} {value:.3f}x" for key, value in ratio.items()))


# ----------------------------------------------------------------------------------------------------------------
# Combining runs
# ----------------------------------------------------------------------------------------------------------------


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
            "models": {
                name: {key: row.get(key) for key in (
                    "median_ms", "bf16_median_ms", "peak_mem_mb", "feature_align_share", "deformable_conv_share",
                    "deform_conv2d_kernel_share", "grid_sampler_share", "achieved_gflops", "fraction_of_gemm",
                    "fraction_of_gemm_max",
                )}
                for name, row in rows.items()
            },
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
    static = {
        row["model"]: {key: row.get(key) for key in (
            "variant", "params_m", "feature_align_params_m", "gmacs", "gmacs_flop_counter", "gmacs_dcn_gemm",
            "gmacs_dcn_sampling", "gmacs_msda_sampling",
        )}
        for row in runs[0]["results"]
    }  # fmt: skip
    return {
        "environment": runs[0]["environment"],
        "settings": runs[0]["settings"],
        "counts": static,
        "runs": per_run,
        "medians_over_runs": medians,
    }


def print_combined(combined: dict) -> None:
    for index, run in enumerate(combined["runs"], start=1):
        ratios = ", ".join(
            f"{pair.split('/')[0]} {entry['latency']:.3f}x (paired {entry['latency_paired']:.3f}x, "
            f"fastest rounds {entry['latency_min']:.3f}x)"
            for pair, entry in run["ratios"].items()
        )
        print(f"run {index} ({run['file']}): {ratios}")
    medians = combined["medians_over_runs"]
    print("median over runs: " + ", ".join(
        f"{pair.split('/')[0]} {entry['latency']:.3f}x (paired {entry['latency_paired']:.3f}x, "
        f"fastest rounds {entry['latency_min']:.3f}x)"
        for pair, entry in medians["ratios"].items()
    ))  # fmt: skip


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
    parser.add_argument("--combine", type=Path, nargs="+", help="combine these run reports into --output")
    parser.add_argument("--output", type=Path, default=None, help="JSON report (default results/semask_fapn_cpu.json)")
    parser.add_argument("--memory-worker", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device, args.dtype, args.batch_size = "cpu", "float32", 1
    if args.output is None:
        args.output = harness.default_output("semask_fapn", "cpu", "_combined" if args.combine else "")
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
    details = f"{args.size}x{args.size} SeMask-L features", f"warmup {args.warmup}", f"repeats {args.repeats}"
    print(harness.describe_run(env, *details), flush=True)
    start = time.perf_counter()
    report = run_benchmark(args)
    print()
    print_run(report)
    settings = {key: getattr(args, key) for key in ("models", "size", "warmup", "repeats", "bf16_repeats", "seed")}
    settings["feature_shapes"] = [
        [1, c, args.size // s, args.size // s] for c, s in zip(FEATURE_CHANNELS, FEATURE_STRIDES)
    ]
    settings["group_norm"] = "SeMaskMask2FormerGroupNorm in all decoders (group_norms_for_single_values)"
    report = {"environment": env, "settings": settings, **report, "wall_s": time.perf_counter() - start}
    harness.write_report(args.output, report)
    print(f"\nwrote {args.output} ({report['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
