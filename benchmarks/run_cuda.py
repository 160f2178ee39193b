#!/usr/bin/env python
"""Every benchmark of this folder on one CUDA device in bf16 autocast, in one unattended run.

    python benchmarks/run_cuda.py                                    # the GPU run (CUDA required)
    python benchmarks/run_cuda.py --device cpu --smoke --output_dir /tmp/smoke   # tiny end-to-end check on the CPU

For every model and peer of the seven benchmark scripts (``benchmark_semask_fpn.py``, ``benchmark_pale.py``,
``benchmark_vwformer.py``, ``benchmark_semask_mask2former.py``, ``benchmark_semask_fapn.py``,
``benchmark_vw_d2.py``, ``benchmark_d2_models.py``), built with the scripts' own builders (random weights, nothing downloaded), and for each
input shape of its benchmark, two measurements:

* ``forward``: ``model.eval()``, ``torch.no_grad()``, under autocast (``harness.forward_step``);
* ``train``: ``model.train()``, forward + backward of the script's loss (the segmentation models' own loss from
  random labels; for backbones, heads and pixel decoders the sum of the means of their output tensors, as
  ``benchmark_semask_fpn.py`` trains its backbones), no optimizer (``harness.train_step``).

Each row has images/s (batch over the median seconds of the timed iterations, the device synchronized after each),
the peak memory (CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the start of the timed
iterations; ``peak_mem_abs_mb`` absolute, ``peak_mem_mb`` over what the weights and inputs held), the forward GMACs
per image (the harness's ``FlopCounterMode`` counting with the analytic counts the scripts add for deformable
sampling), the MACs per image of the timed step itself (``step_gmacs``: forward + backward for ``train``, counted on
its first call), the achieved TFLOP/s (2 x ``step_gmacs`` x images/s) and its fraction of the device's bf16 peak,
measured in the same process by a large square bf16 matmul (``harness.matmul_tflops``, median). Ratios ours / peer
are the scripts' pairs: seconds per image (the scripts' median-latency ratio), peak memory and GMACs.

Each model is measured alone (built, counted, warmed up, timed, deleted), so its memory figure is its own. A model
that fails (out of memory, an operator missing on the device) gets an ``error`` in its rows and the run goes on; one
whose step needs a missing optional package (transformers' Mask2Former loss needs scipy) gets ``skipped``. Each
benchmark has a time cap: the number of timed iterations of a measurement (between ``--min-repeats`` and
``--max-repeats``) is planned from its warm-up time and the benchmark's remaining time. On CUDA every benchmark runs
in a subprocess of its own (``--isolate``, the default there) with a hard timeout, so that a crash or a hang costs
only that benchmark; its rows are written after every model, so a crash keeps what was measured.

Reports: ``benchmarks/results/<benchmark>_cuda.json`` (``--output_dir`` elsewhere; ``_smoke`` is appended to the
stem with ``--smoke``). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py and the benchmark scripts sit next to this one

import benchmark_d2_models  # noqa: E402
import benchmark_pale  # noqa: E402
import benchmark_semask_fapn  # noqa: E402
import benchmark_semask_fpn  # noqa: E402
import benchmark_semask_mask2former  # noqa: E402
import benchmark_vw_d2  # noqa: E402
import benchmark_vwformer  # noqa: E402
import harness  # noqa: E402


BENCHMARKS = ("semask_fpn", "pale", "vwformer", "semask_mask2former", "semask_fapn", "vw_d2", "d2_models")
#: seconds each benchmark may take on CUDA (builds, counting, warm-up and timing), before ``--cap-scale``
CAPS_S = {
    "semask_fpn": 60,
    "pale": 35,
    "vwformer": 60,
    "semask_mask2former": 90,
    "semask_fapn": 40,
    "vw_d2": 60,
    "d2_models": 130,  # 75 s measured 10 of its 11 models on an H200 (2026-12-04); with 127.5 s all 11 took 100 s
}
SMOKE_CAP_S = 600
#: the (size, batch) shapes of each benchmark on CUDA; ``--smoke`` uses SMOKE_SHAPES, else SMOKE_SHAPE
CUDA_SHAPES = {
    "semask_fpn": [(512, 8)],
    "pale": [(224, 32), (512, 8)],
    "vwformer": [(640, 8)],
    "semask_mask2former": [(640, 4)],
    "semask_fapn": [(640, 8)],
    "vw_d2": [(640, 8)],
    "d2_models": [(640, 4)],
}
#: the smoke run's shape, batch 1 (train steps then keep BatchNorm in eval mode); larger where a model needs it: the
#: VW decoders take a stride-8 map of at least 16 x 16 (8 x 8 windows), hence 128, and transformers' SwinModel a
#: stride-32 map of at least its 7 x 7 window, hence 224 for Pale; the whole detectron2-style models take the VW
#: models' smallest input, 128
SMOKE_SHAPE = (64, 1)
SMOKE_SHAPES = {"pale": [(224, 1)], "vw_d2": [(128, 1)], "d2_models": [(benchmark_d2_models.SMOKE_SIZE, 1)]}
NUM_LABELS = 150
#: the suffix of a decoder that its model runs outside autocast, measured fully under autocast
IN_AUTOCAST = harness.IN_AUTOCAST
#: exit status and line when CUDA is required but absent
NO_CUDA_MESSAGE = "run_cuda.py: CUDA is required (no CUDA device is available); use --device cpu --smoke to check it"


# ----------------------------------------------------------------------------------------------------------------
# What is measured: the models of each benchmark, their inputs and losses
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One model of a benchmark: ``build()`` it (random weights), ``make_inputs(batch, size, device)`` returns
    ``(model input, labels or None)``, ``loss(model, x, labels)`` the train step's loss function, ``count(model, x)``
    the ``gmacs*`` fields of one forward of the batch; ``variants`` the rows measured from it, as ``(row name, under
    autocast)``; ``modes`` which steps."""

    name: str
    build: Callable[[], torch.nn.Module]
    make_inputs: Callable[[int, int, torch.device], tuple[Any, Any]]
    loss: Callable[[torch.nn.Module, Any, Any], Callable[[], torch.Tensor]]
    count: Callable[[torch.nn.Module, Any], dict]
    variants: tuple[tuple[str, bool], ...]
    modes: tuple[str, ...] = harness.MODES


@dataclass
class Spec:
    """One benchmark: its script, shapes ``(size, batch)``, models, ratio pairs ``(ours, peer, target or None)``."""

    name: str
    script: str
    shapes: list[tuple[int, int]]
    cases: list[Case]
    ratios: list[tuple[str, str, float | None]]

    def expected_rows(self) -> list[tuple[str, str, int, int]]:
        """``(row name, mode, size, batch)`` of every row, in the order they are measured."""
        return [
            (row, mode, size, batch)
            for case in self.cases
            for size, batch in self.shapes
            for row, _ in case.variants
            for mode in case.modes
        ]


def output_tensors(output) -> list[torch.Tensor]:
    """The floating-point tensors of a model output (a tensor, ``ModelOutput``, tuple, list or dict), recursively."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):  # ModelOutput is an OrderedDict of its non-None fields
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [tensor for item in output for tensor in output_tensors(item)]
    return []


def outputs_mean_loss(model, x, labels) -> Callable[[], torch.Tensor]:
    """The loss of models without one of their own: the sum of the fp32 means of their output tensors that need a
    gradient (``benchmark_semask_fpn.py``'s backbone loss, for any output structure)."""

    def loss():
        tensors = [tensor for tensor in output_tensors(model(x)) if tensor.requires_grad]
        if not tensors:
            raise RuntimeError(f"{type(model).__name__} returned no output that needs a gradient")
        return sum(tensor.float().mean() for tensor in tensors)

    return loss


def labels_loss(model, x, labels) -> Callable[[], torch.Tensor]:
    """The segmentation models' own loss: ``model(pixel_values, labels=labels).loss``."""
    return lambda: model(x, labels=labels).loss


def generic_count(model, x) -> dict:
    """GMACs of one forward as the harness counts them (``harness.flop_counter``, MACs = FLOPs / 2: with torch's
    SDPA formula for the CPU SDPA kernel) and the analytic count of the multi-scale deformable attention's sampling
    (0 in models without it)."""
    return harness.count_macs_with_analytic(model, x, [harness.deformable_attention_sampling()])


def pixel_inputs(seed: int, labelled: bool = True):
    """``make_inputs`` of seeded ``randn`` images and random labels in ``[0, NUM_LABELS)``."""

    def make(batch: int, size: int, device):
        generator = harness.seeded_generator(seed)
        pixel_values = harness.random_pixel_values(batch, size, generator).to(device)
        if not labelled:
            return pixel_values, None
        return pixel_values, torch.randint(0, NUM_LABELS, (batch, size, size), generator=generator).to(device)

    return make


def script_inputs(make_script_inputs, seed: int):
    """``make_inputs`` from a script's ``make_inputs(args, device)`` (``args`` with ``batch_size``, ``size``,
    ``seed``), which returns ``(pixel_values, labels)``."""

    def make(batch: int, size: int, device):
        return make_script_inputs(types.SimpleNamespace(batch_size=batch, size=size, seed=seed), device)

    return make


def feature_inputs(seed: int, channels, strides):
    """``make_inputs`` of seeded ``randn`` backbone feature maps of a batch (``harness.feature_maps`` for a batch)."""

    def make(batch: int, size: int, device):
        generator = harness.seeded_generator(seed)
        features = tuple(
            torch.randn(batch, c, size // s, size // s, generator=generator).to(device)
            for c, s in zip(channels, strides, strict=True)
        )
        return features, None

    return make


def _builder(function, *args) -> Callable[[], torch.nn.Module]:
    return lambda: function(*args)


def make_spec(name: str, smoke: bool, seed: int, dtype: torch.dtype) -> Spec:
    """The ``Spec`` of benchmark ``name``: the scripts' models (built by their builders), pairs and targets."""
    shapes = SMOKE_SHAPES.get(name, [SMOKE_SHAPE]) if smoke else CUDA_SHAPES[name]
    plain = lambda row: ((row, True),)  # noqa: E731 - one row per model, under autocast
    if name == "semask_fpn":
        script = benchmark_semask_fpn
        make = script_inputs(script.make_inputs, seed)

        def fpn_loss(row):
            return lambda model, x, labels: script.make_loss(model, row, x, labels)

        cases = [
            Case(
                row,
                _builder(script.build_model, row),
                make,
                fpn_loss(row),
                generic_count,
                plain(row),
                ("train",) if row == "semask_fpn_tiny_whole_batch_loss" else harness.MODES,
            )
            for row in script.MODELS
        ]
        ratios = list(script.RATIOS)
    elif name == "pale":
        script = benchmark_pale
        make = pixel_inputs(seed, labelled=False)
        cases = [
            Case(row, _builder(script.build_model, row), make, outputs_mean_loss, generic_count, plain(row))
            for row in script.MODELS
        ]
        ratios = [(*script.MODELS, script.TARGET_RATIO)]
    elif name == "vwformer":
        script = benchmark_vwformer
        heads = feature_inputs(seed, script.SWIN_B_CHANNELS, (4, 8, 16, 32))
        cases = [
            Case(row, _builder(script.build_model, row), heads, outputs_mean_loss, generic_count, plain(row))
            for row in script.HEADS
        ] + [
            Case(row, _builder(script.build_model, row), pixel_inputs(seed), labels_loss, generic_count, plain(row))
            for row in script.WHOLE_MODELS
        ]
        ratios = [(*script.HEADS, script.TARGET_RATIO), (*script.WHOLE_MODELS, None)]
    elif name == "semask_mask2former":
        script = benchmark_semask_mask2former
        model_size = "tiny" if smoke else "large"
        make = script_inputs(script.make_inputs, seed)

        def m2f_loss(row):
            return lambda model, x, labels: script.make_loss(model, row, x, labels)

        cases = [
            Case(row, _builder(script.build_model, row, model_size), make, m2f_loss(row), generic_count, plain(row))
            for row in script.MODELS
        ]
        ratios = list(script.RATIOS)
    elif name in ("semask_fapn", "vw_d2"):
        script = benchmark_semask_fapn if name == "semask_fapn" else benchmark_vw_d2
        bench = script.BENCHMARK
        make = feature_inputs(seed, bench.feature_channels, bench.feature_strides)
        outside = bench.outside_autocast if dtype != torch.float32 else ()
        cases = []
        for row in bench.models:
            # as in their models, the decoders of ``outside_autocast`` run in fp32; they are also measured fully
            # under autocast (``<name>@autocast``), as the script does
            variants = ((row, False), (row + IN_AUTOCAST, True)) if row in outside else plain(row)
            cases.append(Case(row, _builder(bench.build, row), make, outputs_mean_loss, bench.count_macs, variants))
        ratios = [(ours, peer, None) for ours, peer in bench.pairs]
        ratios += [
            (ours + IN_AUTOCAST if ours in outside else ours, peer + IN_AUTOCAST, None)
            for ours, peer in bench.pairs
            if peer in outside
        ]
    elif name == "d2_models":
        script = benchmark_d2_models
        make = pixel_inputs(seed, labelled=False)
        cases = [
            Case(row, _builder(script.build_model, row, smoke), make, outputs_mean_loss, script.count_macs, plain(row))
            for row in script.MODELS
        ]
        ratios = [(ours, peer, None) for ours, peer, _ in script.PAIRS]
    else:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {BENCHMARKS}")
    return Spec(name, f"benchmarks/{Path(script.__file__).name}", shapes, cases, ratios)


# ----------------------------------------------------------------------------------------------------------------
# Measuring one benchmark
# ----------------------------------------------------------------------------------------------------------------


class Clock:
    """The time cap of one benchmark: the seconds left, shared out over the measurements still to come."""

    def __init__(self, cap_s: float, measurements: int):
        self.deadline = time.perf_counter() + cap_s
        self.left = measurements

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def slot(self) -> float:
        """The seconds of the next measurement (its share of what is left); counts it as started."""
        slot = self.remaining() / max(self.left, 1)
        self.left -= 1
        return slot


def plan_repeats(args: argparse.Namespace, seconds_per_step: float | None, budget_s: float) -> int:
    """Timed iterations that fit ``budget_s`` at ``seconds_per_step``, within ``[--min-repeats, --max-repeats]``."""
    if seconds_per_step is None or seconds_per_step <= 0:
        return args.min_repeats
    return int(min(max(budget_s // seconds_per_step, args.min_repeats), args.max_repeats))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def error_message(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 400 characters)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:400]}" if lines else type(error).__name__


def failure_fields(error: BaseException) -> dict:
    """``{"skipped": message}`` when the step needs a package that is not installed (ImportError), else
    ``{"error": message}``."""
    return {"skipped" if isinstance(error, ImportError) else "error": error_message(error)}


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(args, case: Case, model, x, labels, batch: int, mode: str, use_autocast: bool, ctx, slot_s: float) -> dict:
    """One row: ``mode`` of ``model`` on ``x`` (``labels``): step MACs (train: on the first call, which is also a
    warm-up), ``--warmup`` untimed steps, then the planned timed steps between ``PeakMemory.start`` and ``stop``."""
    start = time.perf_counter()
    autocast = ctx.autocast if use_autocast else ctx.no_autocast
    harness.set_mode(model, mode)
    fields = {"batchnorm_frozen": False}
    if mode == "forward":
        step = harness.forward_step(model, x, autocast)
    else:
        fields["batchnorm_frozen"] = batch == 1 and harness.freeze_batchnorm(model)
        step = harness.train_step(model, case.loss(model, x, labels), autocast)
        fields["step_gmacs"] = harness.count_step_gmacs(step) / batch
    warm = harness.time_iterations(step, 0, args.warmup, ctx.synchronize)
    repeats = plan_repeats(args, warm[-1] if warm else None, slot_s - (time.perf_counter() - start))
    model.zero_grad(set_to_none=True)  # the baseline holds the weights and inputs, not the last step's gradients
    times, memory = harness.peak_memory_during(
        lambda: harness.time_iterations(step, 0, repeats, ctx.synchronize), ctx.device
    )
    model.zero_grad(set_to_none=True)
    median_s = harness.median(times)
    return {
        **fields, **memory, "median_s": median_s, "median_ms": 1e3 * median_s, "images_per_s": batch / median_s,
        "times_s": times, "warmup_s": warm, "repeats": repeats, "measure_s": time.perf_counter() - start,
    }  # fmt: skip


def add_throughput(row: dict, peak_tflops: float | None) -> None:
    """``achieved_tflops`` = 2 x ``step_gmacs`` x images/s / 1e3 (GMACs per image) and its ``fraction_of_peak``;
    ``forward_macs_tflops`` = 2 x ``gmacs`` x images/s / 1e3, the forward MACs only (the same in forward rows; in
    train rows it leaves the backward out)."""
    if "images_per_s" not in row or row.get("step_gmacs") is None:
        return
    row["achieved_tflops"] = 2 * row["step_gmacs"] * row["images_per_s"] / 1e3
    if row.get("gmacs"):
        row["forward_macs_tflops"] = 2 * row["gmacs"] * row["images_per_s"] / 1e3
        if row["mode"] == "train":  # about 3 (the backward about twice the forward): a check of the train count
            row["step_over_forward_macs"] = row["step_gmacs"] / row["gmacs"]
    if peak_tflops:
        row["fraction_of_peak"] = row["achieved_tflops"] / peak_tflops


def first_image(x):
    """The first image of a batch: of a tensor, or of each tensor of a tuple (feature maps)."""
    return x[:1] if isinstance(x, torch.Tensor) else type(x)(tensor[:1] for tensor in x)


def count_per_image(case: Case, model, x) -> dict:
    """``case.count`` on the first image of ``x``, in eval mode (``gmacs*`` per image, ``count_s``), or
    ``count_error``: the rows are measured without GMACs then."""
    start = time.perf_counter()
    try:
        model.eval()
        counts = case.count(model, first_image(x))
    except Exception as error:  # noqa: BLE001 - recorded in the report, the run goes on
        counts = {"count_error": error_message(error)}
    return {**counts, "count_s": time.perf_counter() - start}


def measure_case(args, spec: Spec, case: Case, ctx, clock: Clock, rows: list[dict]) -> None:
    """The rows of one model: built once, then per shape counted and measured in each variant and mode."""
    bases = [
        {"benchmark": spec.name, "model": row, "mode": mode, "size": size, "batch_size": batch,
         "autocast": use_autocast and ctx.dtype != torch.float32}
        for size, batch in spec.shapes for row, use_autocast in case.variants for mode in case.modes
    ]  # fmt: skip
    if clock.remaining() <= 0:
        rows += [
            {**base, "error": f"not run: the benchmark's time cap of {args.cap:.0f} s was reached"} for base in bases
        ]
        clock.left -= len(bases)
        return
    progress(f"[{spec.name}] {case.name}: building ...")
    model, build = None, {}
    try:
        start = time.perf_counter()
        torch.manual_seed(args.seed)
        model = case.build().to(ctx.device)
        build = {"params_m": harness.count_params(model) / 1e6, "build_s": time.perf_counter() - start}
    except Exception as error:  # noqa: BLE001 - recorded in the report, the run goes on
        rows += [{**base, "error": "build: " + error_message(error)} for base in bases]
        clock.left -= len(bases)
    if "params_m" not in build:
        del model
        free_memory(ctx.device)
        return
    for size, batch in spec.shapes:
        shape_bases = [base for base in bases if (base["size"], base["batch_size"]) == (size, batch)]
        x = labels = None
        try:
            x, labels = case.make_inputs(batch, size, ctx.device)
        except Exception as error:  # noqa: BLE001 - recorded in the report, the run goes on
            rows += [{**base, "error": "inputs: " + error_message(error)} for base in shape_bases]
            clock.left -= len(shape_bases)
        if x is None:
            free_memory(ctx.device)
            continue
        counts = count_per_image(case, model, x)
        for base in shape_bases:
            use_autocast = dict(case.variants)[base["model"]]
            slot = clock.slot()
            label = f"[{spec.name}] {base['model']} {base['mode']} {size}x{size} batch {batch}"
            row = {**base, **build, **counts}
            if slot <= 0:
                row["error"] = f"not run: the benchmark's time cap of {args.cap:.0f} s was reached"
            else:
                progress(f"{label} ...")
                try:
                    row.update(measure(args, case, model, x, labels, batch, base["mode"], use_autocast, ctx, slot))
                except Exception as error:  # noqa: BLE001 - out of memory, missing operator, ...: recorded
                    row.update(failure_fields(error))
                if "median_s" not in row:  # after the except block, which held the failed step's tensors
                    model.zero_grad(set_to_none=True)
                    free_memory(ctx.device)
            if "median_s" in row and base["mode"] == "forward":
                row["step_gmacs"] = row.get("gmacs")
            rows.append(row)
        del x, labels
    del model
    free_memory(ctx.device)


def compute_ratios(rows: list[dict], specs: list[tuple[str, str, float | None]]) -> list[dict]:
    """Per pair and (mode, size, batch) where both rows were measured: ``ratio``, ours / peer seconds per image (the
    scripts' median-latency ratio), and the ratios of peak memory, GMACs and achieved TFLOP/s; the target verdict."""
    measured = {(r["model"], r["mode"], r["size"], r["batch_size"]): r for r in rows if "median_s" in r}
    keys = sorted({key[1:] for key in measured}, key=lambda key: (key[1], key[2], key[0]))
    ratios = []
    for mode, size, batch in keys:
        for ours, peer, target in specs:
            top, bottom = measured.get((ours, mode, size, batch)), measured.get((peer, mode, size, batch))
            if top is None or bottom is None:
                continue
            ratio = (top["median_s"] / top["batch_size"]) / (bottom["median_s"] / bottom["batch_size"])
            ratios.append({
                "numerator": ours, "denominator": peer, "mode": mode, "size": size, "batch_size": batch,
                "ratio": ratio,
                "memory_ratio": top["peak_mem_mb"] / bottom["peak_mem_mb"] if bottom["peak_mem_mb"] >= 1 else None,
                "gmacs_ratio": top["gmacs"] / bottom["gmacs"] if top.get("gmacs") and bottom.get("gmacs") else None,
                "tflops_ratio": top["achieved_tflops"] / bottom["achieved_tflops"]
                if top.get("achieved_tflops") and bottom.get("achieved_tflops") else None,
                "target_max": target, "meets_target": harness.meets_target(ratio, target),
            })  # fmt: skip
    return ratios


def measure_peak(args, ctx) -> dict:
    """The bf16 matmul peak (``harness.matmul_tflops``): samples and their median."""
    samples = harness.matmul_tflops(ctx.device, torch.bfloat16, args.peak_size, samples=args.peak_samples)
    return {"tflops_samples": samples, "median_tflops": harness.median(samples)}


def run_benchmark(args, name: str, output: Path) -> dict:
    """All rows of benchmark ``name`` in this process; the report is rewritten after every model."""
    start = time.perf_counter()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    autocast, synchronize = harness.device_helpers(device, dtype)
    ctx = types.SimpleNamespace(
        device=device, dtype=dtype, autocast=autocast, no_autocast=harness.device_helpers(device, torch.float32)[0],
        synchronize=synchronize,
    )  # fmt: skip
    spec = make_spec(name, args.smoke, args.seed, dtype)
    clock = Clock(args.cap, len(spec.expected_rows()))  # the cap counts from here, the peak matmul included
    report = {
        "benchmark": name,
        "script": spec.script,
        "environment": run_environment(args),
        "settings": run_settings(args, spec),
        "peak_matmul": {"size": args.peak_size, "dtype": "bfloat16"},
        "results": [],
        "ratios": [],
        "complete": False,
    }
    progress(f"[{name}] bf16 matmul peak, {args.peak_size}^3 ...")
    try:
        report["peak_matmul"]["start"] = measure_peak(args, ctx)
    except Exception as error:  # noqa: BLE001
        report["peak_matmul"]["error"] = error_message(error)
    peak = report["peak_matmul"].get("start", {}).get("median_tflops")
    report["peak_matmul"]["median_tflops"] = peak
    rows = report["results"]
    for case in spec.cases:
        measure_case(args, spec, case, ctx, clock, rows)
        for row in rows:
            add_throughput(row, peak)
        report["wall_s"] = time.perf_counter() - start
        harness.write_report(output, report)
    try:
        report["peak_matmul"]["end"] = measure_peak(args, ctx)
    except Exception as error:  # noqa: BLE001
        report["peak_matmul"]["end_error"] = error_message(error)
    report["ratios"] = compute_ratios(rows, spec.ratios)
    report["complete"] = True
    report["wall_s"] = time.perf_counter() - start
    harness.write_report(output, report)
    return report


def run_environment(args) -> dict:
    """``harness.environment`` with the CUDA math settings that change kernels."""
    env = harness.environment(args.device, args.dtype, torch.get_num_threads())
    env["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    if args.device.startswith("cuda"):
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return env


def run_settings(args, spec: Spec) -> dict:
    return {
        "shapes": [{"size": size, "batch_size": batch} for size, batch in spec.shapes],
        "models": [row for case in spec.cases for row, _ in case.variants],
        "ratios": [list(pair) for pair in spec.ratios],
        "dtype": args.dtype,
        "autocast": "torch.autocast with fp32 weights" if args.dtype != "float32" else "none",
        "warmup": args.warmup,
        "min_repeats": args.min_repeats,
        "max_repeats": args.max_repeats,
        "time_cap_s": args.cap,
        "seed": args.seed,
        "smoke": args.smoke,
        "isolated_process": args.worker_benchmark is not None,
    }


# ----------------------------------------------------------------------------------------------------------------
# The driver: every benchmark, in this process or in one subprocess each
# ----------------------------------------------------------------------------------------------------------------


def output_path(args, name: str) -> Path:
    device = args.device.split(":")[0]
    return Path(args.output_dir) / f"{name}_{device}{'_smoke' if args.smoke else ''}.json"


def worker_command(args, name: str, cap: float) -> list[str]:
    """This script as the worker of benchmark ``name`` with the driver's options."""
    return harness.script_command(
        __file__, "--worker-benchmark", name, "--device", args.device, "--dtype", args.dtype,
        "--output_dir", args.output_dir, "--cap", cap, "--warmup", args.warmup, "--min-repeats", args.min_repeats,
        "--max-repeats", args.max_repeats, "--peak-size", args.peak_size, "--peak-samples", args.peak_samples,
        "--seed", args.seed, *(["--smoke"] if args.smoke else []),
        *(["--threads", args.threads] if args.threads else []),
    )  # fmt: skip


def complete_report(args, name: str, output: Path, failure: str) -> dict:
    """The report of a benchmark whose worker failed: what it wrote, with ``failure`` as the error of every row it
    did not write, and the ratios of the rows it did."""
    try:
        report = json.loads(output.read_text())
    except (OSError, ValueError):
        report = {"benchmark": name, "environment": run_environment(args), "results": []}
    spec = make_spec(name, args.smoke, args.seed, getattr(torch, args.dtype))
    done = {(r["model"], r["mode"], r["size"], r["batch_size"]) for r in report["results"]}
    for row, mode, size, batch in spec.expected_rows():
        if (row, mode, size, batch) not in done:
            report["results"].append(
                {"benchmark": name, "model": row, "mode": mode, "size": size, "batch_size": batch, "error": failure}
            )
    report["ratios"] = compute_ratios(report["results"], spec.ratios)
    report["worker_error"] = failure
    harness.write_report(output, report)
    return report


def run_isolated(args, name: str, output: Path, cap: float) -> dict:
    """Benchmark ``name`` in a fresh process of this script, killed after ``cap`` + ``--worker-slack`` seconds."""
    output.unlink(missing_ok=True)
    command = worker_command(args, name, cap)
    try:
        process = subprocess.run(command, timeout=cap + args.worker_slack)
        failure = None if process.returncode == 0 else f"worker exited with status {process.returncode}"
    except subprocess.TimeoutExpired:
        failure = f"worker killed after {cap + args.worker_slack:.0f} s"
    if failure is None:
        try:
            return json.loads(output.read_text())
        except (OSError, ValueError) as error:
            failure = f"worker wrote no report: {error_message(error)}"
    return complete_report(args, name, output, failure)


COLUMNS = (
    harness.Column("model", "model", "<", 34),
    harness.Column("mode", "mode", "<", 7),
    harness.Column("size", "size", ">", 4),
    harness.Column("batch", "batch_size", ">", 5),
    harness.Column("ms/iter", "median_ms", ">", 8, 1),
    harness.Column("img/s", "images_per_s", ">", 8, 1),
    harness.Column("peak MB", "peak_mem_abs_mb", ">", 8, 0),
    harness.Column("+MB", "peak_mem_mb", ">", 8, 0),
    harness.Column("GMACs", "gmacs", ">", 7, 1),
    harness.Column("step GM", "step_gmacs", ">", 7, 1),
    harness.Column("TFLOP/s", "achieved_tflops", ">", 7, 2),
    harness.Column("of peak", "fraction_of_peak", ">", 7, 3),
    harness.Column(
        " note",
        lambda row: (
            (" fp32" if row.get("autocast") is False else "")
            + (" BN frozen" if row.get("batchnorm_frozen") else "")
            + (f" SKIPPED: {row['skipped']}" if "skipped" in row else "")
        ),
        "<",
        0,
    ),
)


def format_ratios(report: dict) -> list[str]:
    """One line per ratio of a benchmark's report: time per image, peak memory, GMACs, the target verdict."""
    lines = []
    for r in report.get("ratios", []):
        line = f"{r['numerator']} / {r['denominator']} [{r['mode']}, {r['size']}, batch {r['batch_size']}]: "
        line += f"time/image {r['ratio']:.3f}x"
        if r.get("memory_ratio") is not None:
            line += f", peak memory {r['memory_ratio']:.3f}x"
        if r.get("gmacs_ratio"):
            line += f", GMACs {r['gmacs_ratio']:.3f}x"
        if r["target_max"] is not None:
            line += f"  ({harness.verdict(r['ratio'], r['target_max'])})"
        lines.append(line)
    return lines


def format_report(report: dict) -> str:
    """The table of a benchmark's rows, its matmul peak and its ratios."""
    peak = report.get("peak_matmul", {})
    lines = [f"== {report['benchmark']} ({report.get('script', '')}) =="]
    if peak.get("median_tflops"):
        end = peak.get("end", {}).get("median_tflops")
        lines.append(
            f"bf16 matmul peak {peak['size']}^3: {peak['median_tflops']:.3g} TFLOP/s"
            + (f" (at the end: {end:.3g})" if end else "")
        )
    lines.append(harness.format_table(report["results"], COLUMNS))
    lines += format_ratios(report)
    if report.get("worker_error"):
        lines.append(f"worker failure: {report['worker_error']}")
    return "\n".join(lines)


def format_summary(reports: list[dict]) -> str:
    """Every benchmark's ratios and its failed or skipped rows, after all the tables."""
    lines = ["== summary: ours / peer =="]
    for report in reports:
        failed = [row for row in report["results"] if "error" in row or "skipped" in row]
        lines += [f"{report['benchmark']}: {line}" for line in format_ratios(report)]
        lines += [
            f"{report['benchmark']}: {row['model']} {row['mode']}: "
            + (f"ERROR {row['error']}" if "error" in row else f"skipped: {row['skipped']}")
            for row in failed
        ]
        uncounted = {row["model"]: row["count_error"] for row in report["results"] if "count_error" in row}
        lines += [f"{report['benchmark']}: {model}: GMACs not counted: {error}" for model, error in uncounted.items()]
    return "\n".join(lines)


def cuda_available() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.cuda.is_available()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda[:N] (the benchmark), or cpu (only with --smoke)")
    parser.add_argument("--dtype", choices=harness.DTYPES, default="bfloat16", help="autocast dtype (fp32 weights)")
    parser.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--smoke", action="store_true", help=f"tiny run: {SMOKE_SHAPE[0]}x{SMOKE_SHAPE[0]} (Pale 224, VW-D2 and the D2 models {benchmark_d2_models.SMOKE_SIZE}), "
                        f"batch {SMOKE_SHAPE[1]}, no warm-up, 1 repeat, tiny Mask2Formers, 128^3 matmul")  # fmt: skip
    parser.add_argument("--output_dir", "--output-dir", default=None, help="folder of the reports "
                        "(default benchmarks/results)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2; --smoke 0)")
    parser.add_argument("--min-repeats", type=int, default=None, help="fewest timed steps (default 3; --smoke 1)")
    parser.add_argument("--max-repeats", type=int, default=None, help="most timed steps (default 20; --smoke 1)")
    parser.add_argument("--cap-scale", type=float, default=1.0, help="multiplies every benchmark's time cap")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run: a benchmark that "
                        "would start with less than 30 s left is not run")  # fmt: skip
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="one subprocess per benchmark (default: on for CUDA, off for the CPU)")  # fmt: skip
    parser.add_argument("--worker-slack", type=float, default=60.0, help="seconds a worker may run past its cap "
                        "(imports, CUDA start-up) before it is killed")  # fmt: skip
    parser.add_argument("--peak-size", type=int, default=None, help="side of the bf16 peak matmul (default 8192)")
    parser.add_argument("--peak-samples", type=int, default=7, help="timings of the peak matmul (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on the CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--worker-benchmark", choices=BENCHMARKS, help=argparse.SUPPRESS)
    parser.add_argument("--cap", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = (0, 1, 1, 128) if args.smoke else (2, 3, 20, 8192)
    for key, default in zip(("warmup", "min_repeats", "max_repeats", "peak_size"), defaults, strict=True):
        if getattr(args, key) is None:
            setattr(args, key, default)
    args.max_repeats = max(args.max_repeats, args.min_repeats)
    if args.threads is None and args.device == "cpu":
        args.threads = 1  # the smoke run checks that everything runs; one thread is the fastest on a busy machine
    if args.isolate is None:
        args.isolate = args.device.startswith("cuda")
    if args.output_dir is None:
        args.output_dir = str(harness.RESULTS_DIR)
    if args.device == "cpu" and not args.smoke:
        parser.error("the CPU runs only the --smoke check (the benchmark scripts themselves measure the CPU)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not cuda_available():
        print(NO_CUDA_MESSAGE)
        return 1
    if args.threads:
        harness.set_threads(args.threads)
    # what the imports made lives as long as the process: out of the collector's way, each gc.collect (one per
    # measurement, in PeakMemory.start) takes milliseconds instead of half a second; nothing built later is frozen
    gc.freeze()
    if args.worker_benchmark:
        if args.cap is None:
            args.cap = (SMOKE_CAP_S if args.smoke else CAPS_S[args.worker_benchmark]) * args.cap_scale
        run_benchmark(args, args.worker_benchmark, output_path(args, args.worker_benchmark))
        return 0
    start = time.perf_counter()
    mode = "a subprocess per benchmark" if args.isolate else "one process"
    progress(f"run_cuda.py: {', '.join(args.benchmarks)} on {args.device} ({args.dtype} autocast), {mode}")
    reports = []
    for name in args.benchmarks:
        output = output_path(args, name)
        left = args.budget - (time.perf_counter() - start)
        if left < 30:
            report = complete_report(args, name, output, f"not run: the run's budget of {args.budget:.0f} s was spent")
        else:
            # the smoke run's figures mean nothing: its caps only stop a hang
            args.cap = SMOKE_CAP_S * args.cap_scale if args.smoke else min(CAPS_S[name] * args.cap_scale, left - 15)
            if args.isolate:
                report = run_isolated(args, name, output, args.cap)
            else:
                report = run_benchmark(args, name, output)
        reports.append(report)
        print(format_report(report) + "\n", flush=True)
        progress(f"wrote {output} ({time.perf_counter() - start:.0f} s so far)")
    print(format_summary(reports) + "\n")
    print(
        f"run_cuda.py: {len(reports)} benchmarks in {time.perf_counter() - start:.0f} s; reports in {args.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
