#!/usr/bin/env python
"""Pale-T versus transformers' Swin-T (similar FLOPs): GMACs, forward latency, achieved GFLOP/s and peak memory, in
one run.

    python benchmarks/benchmark_pale.py [--sizes 224 512] [--batch-size 1] [--repeats 10] [--threads 2]
        [--device cpu] [--dtype float32|bfloat16]

* GMACs: counted per image with ``harness.count_gmacs`` (``torch.utils.flop_counter.FlopCounterMode`` on one fp32
  forward, plus the CPU's fused attention kernel; matmuls, convolutions and attention; MACs = FLOPs / 2).
* Latency: both models live in ONE process and are timed round-robin (one forward of each per round, ``--repeats``
  rounds after ``--warmup``), so that load changes on a shared machine hit them alike; the median is reported. With
  ``--dtype bfloat16`` (or ``float16``) the forwards run under ``torch.autocast`` with fp32 weights.
* Achieved GFLOP/s: 2 x GMACs per image x batch size / median latency. On the CPU, a ``harness.GEMM_SIZE`` square
  matmul in the run's dtype (fp32, or bf16 for a bf16 run) is one more step of the same rounds: its median GFLOP/s is
  the machine's matmul throughput under the same load, and each model's GFLOP/s is also reported as a fraction of it
  (``of matmul``). The matmul is left out on CUDA (``run_cuda.py`` measures the GPU's peak).
* Attention split: in the same rounds each model's attention functions are timed (``timed_attention``: Pale's
  SDPA or its bf16 matmul stand-in, Swin's SDPA; the scores, softmax and weighted sums with their copies). Reported:
  per row ``attention_share`` (median over the rounds of the attention seconds over the forward's) and
  ``attention_s``; per size ``pale_attention_over_swin``, Pale-T's attention alone over Swin-T's whole forward (at
  1.0 or more Pale-T cannot reach Swin-T's latency whatever the rest costs), and ``pale_rest_over_swin_rest``,
  everything outside the attention functions over each other.
* Peak memory: the increase of the resident set (CPU) or of allocated memory (CUDA) during one forward (under the
  same autocast), measured in a fresh subprocess per model (``harness.py``, shared with the other scripts).

Both models are the bare encoders with pooling (``PaleModel``, ``SwinModel``), randomly initialised: Pale has no
released weights. Target (issue 17, tightened from issue 4's 1.3x): Pale-T at most 1.0x Swin-T's latency at both
sizes.

``--module-forward-twin`` adds a third model to the same rounds, ``pale_tiny_module_forward``: Pale-T with the same
weights computed the way 60429f3 sped up, every block module by module and each branch of its attention in calls of
its own (``use_module_forward``), the same values; the report gives Pale-T over it per size (``pale_over_module_forward``).

``--optimized-twin`` adds ``pale_tiny_optimized``: Pale-T with the same weights after
``model.optimize_for_inference()`` (the blocks' weights cast and packed for oneDNN once, the q/k/v BatchNorms folded
into their depth-wise convolutions; the same values up to rounding). The report gives it over Swin-T
(``optimized_over_swin``, with its own verdict against the target) and over Pale-T as loaded
(``optimized_over_pale``); its peak memory includes the prepared copies of the weights.
"""

import argparse
import contextlib
import sys
from pathlib import Path
from unittest import mock

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py sits next to this script

import harness  # noqa: E402


MODELS = ("pale_tiny", "hf_swin_tiny")
MODULE_FORWARD_TWIN = "pale_tiny_module_forward"
OPTIMIZED_TWIN = "pale_tiny_optimized"
TWINS = (MODULE_FORWARD_TWIN, OPTIMIZED_TWIN)
PALE_MODELS = ("pale_tiny", *TWINS)
TARGET_RATIO = 1.0
COLUMNS = (
    harness.Column("model", "model", "<", 22),
    harness.Column("size", "size", ">", 5),
    harness.Column("GMACs", "gmacs_per_image", ">", 7, 2),
    harness.Column("s/iter", "median_s", ">", 8, 4),
    harness.Column("img/s", "images_per_s", ">", 7, 2),
    harness.Column("peak MB", "peak_mem_mb", ">", 8, 1),
    harness.Column("GFLOP/s", "achieved_gflops", ">", 8, 1),
    harness.Column("of matmul", "fraction_of_matmul", ">", 9, 3),
    harness.Column("attention", "attention_share", ">", 9, 3),
    harness.Column("compile s", "compile_s", ">", 9, 1),
)


def build_model(name: str):
    """Randomly initialised encoder ``name`` (one of ``MODELS`` or ``TWINS``, seeded: the twins have Pale-T's
    weights)."""
    if name in PALE_MODELS:
        import hf_semseg

        torch.manual_seed(0)
        model = hf_semseg.PaleModel(hf_semseg.variant_config("pale-tiny"))
        if name == MODULE_FORWARD_TWIN:
            use_module_forward(model)
        elif name == OPTIMIZED_TWIN:
            model.optimize_for_inference()
        return model
    if name == "hf_swin_tiny":
        from transformers import SwinModel

        return SwinModel(harness.swin_config(harness.SWIN_TINY, out_features=None))
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def use_module_forward(model) -> None:
    """Pale ``model`` computed the way 60429f3 sped up: every block module by module (``PaleBlock.inference_forward``
    off) and the row and column branches in calls of their own (``attends_branches_together`` off), set on the
    instances. (Each branch's grouping is the current one, ``attend_real_rows``.)"""
    from hf_semseg.models.modeling_pale import PaleBlock, PaleShapedAttention

    for module in model.modules():
        if isinstance(module, PaleBlock):
            module.runs_inference_forward = lambda hidden_states: False
        elif isinstance(module, PaleShapedAttention):
            module.attends_branches_together = lambda height, width: False


def model_names(args) -> tuple[str, ...]:
    """The models of the run: ``MODELS``, and the twins asked for."""
    asked = (args.module_forward_twin, args.optimized_twin)
    return (*MODELS, *(twin for twin, wanted in zip(TWINS, asked) if wanted))


def make_pixel_values(args, size: int) -> torch.Tensor:
    """The seeded input batch at ``size``, on ``args.device``."""
    return harness.random_pixel_values(args.batch_size, size, harness.seeded_generator(0)).to(args.device)


@contextlib.contextmanager
def timed_attention(timers: dict[str, harness.AttentionTimer]):
    """Each model's attention functions timed by its ``timers`` entry, at the place it looks them up: Pale's
    ``modeling_pale.attention_function`` (the SDPA function, or the bf16 matmul attention that stands in for it at CPU
    inference), Swin's ``ALL_ATTENTION_FUNCTIONS.get_interface``."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from hf_semseg.models import modeling_pale

    pale_lookup, swin_lookup = modeling_pale.attention_function, ALL_ATTENTION_FUNCTIONS.get_interface
    pale_timers = [timer for name, timer in timers.items() if name in PALE_MODELS]

    def pale_function(*args):
        # the Pale models share the lookup: the timer of the one whose forward is running
        timer = next((timer for timer in pale_timers if timer.active), pale_timers[0])
        return timer.timed(pale_lookup(*args))

    def swin_function(*args, **kwargs):
        return timers["hf_swin_tiny"].timed(swin_lookup(*args, **kwargs))

    with (
        mock.patch.object(modeling_pale, "attention_function", pale_function),
        mock.patch.object(ALL_ATTENTION_FUNCTIONS, "get_interface", swin_function),
    ):
        yield


def measure_latency(args, size: int) -> dict:
    """GMACs per image and round-robin forward latencies (in ``args.dtype``) of every model at one input size, with
    the seconds of the square matmul timed in the same rounds (``None`` on CUDA) and the seconds each eager forward
    spent in its attention functions (``timed_attention``)."""
    names = model_names(args)
    models = {name: build_model(name).eval().to(args.device) for name in names}
    pixel_values = make_pixel_values(args, size)
    gmacs = {name: harness.count_gmacs(model, pixel_values[:1]) for name, model in models.items()}
    device, dtype = harness.device_and_dtype(args.device, args.dtype)
    autocast, synchronize = harness.device_helpers(device, dtype)
    region = harness.autocast_region(device, dtype, args.autocast_scope)
    inputs = dict.fromkeys(models, pixel_values)
    timers = {name: harness.AttentionTimer() for name in names}
    with timed_attention(timers):
        rounds = harness.forward_round_robin_with_matmul(
            models, inputs, args.warmup, args.repeats, synchronize, autocast, None if device.type == "cuda" else dtype,
            compile_models=args.compile, eager_forwards={name: timers[name].wrap(models[name]) for name in names},
            region=region,
        )  # fmt: skip
    return {
        "gmacs_per_image": gmacs, "times_s": rounds.times, "matmul_times_s": rounds.matmul_times,
        "compile_s": rounds.compile_s,
        "attention": {name: timers[name].fields(rounds.times[name]) for name in names},
    }  # fmt: skip


def measure_memory(args, name: str, size: int) -> dict:
    """Peak memory of the first forward (under the run's autocast) of one model in this (fresh) process: once memory
    was freed, the allocator keeps it, so a warmed-up process under-reports what a forward needs."""
    model = build_model(name).eval().to(args.device)
    autocast, _ = harness.device_helpers(*harness.device_and_dtype(args.device, args.dtype))
    with autocast():
        return harness.first_forward_peak_memory(model, make_pixel_values(args, size), torch.device(args.device))


def memory_in_subprocess(args, name: str, size: int) -> dict:
    """``measure_memory`` in a fresh process of this script."""
    command = harness.script_command(
        __file__, "--memory-worker", name, "--sizes", size,
        "--batch-size", args.batch_size, "--threads", args.threads, "--device", args.device, "--dtype", args.dtype,
    )  # fmt: skip
    return harness.run_worker_command(command, args.threads)


def measure_size(args, size: int) -> tuple[list[dict], dict, dict | None]:
    """The result rows of both models at one size, the Pale-T / Swin-T latency ratio, and the matmul of the same
    rounds (``size``, ``dtype``, ``input_size``, ``times_s``, ``gflops_median``; ``None`` on CUDA)."""
    latency = measure_latency(args, size)
    matmul = None
    if latency["matmul_times_s"] is not None:
        matmul = {
            "size": harness.GEMM_SIZE, "dtype": args.dtype, "input_size": size, "times_s": latency["matmul_times_s"],
            "gflops_median": harness.gemm_gflops(harness.GEMM_SIZE, harness.median(latency["matmul_times_s"])),
        }  # fmt: skip
    rows = {}
    twins = [harness.compiled_name(name) for name in MODELS] if args.compile else []
    for name in [*model_names(args), *twins]:
        median_s = harness.median(latency["times_s"][name])
        gmacs = latency["gmacs_per_image"][name.removesuffix(harness.COMPILED)]
        # a compiled twin: latency only (its first call in a fresh process would be its compilation)
        extra = {"compile_s": latency["compile_s"][name]} if name in twins else memory_in_subprocess(args, name, size)
        row = {
            "model": name, "size": size, "batch_size": args.batch_size, "median_s": median_s,
            "images_per_s": args.batch_size / median_s, "gmacs_per_image": gmacs,
            "times_s": latency["times_s"][name], **extra,
            "gmacs": gmacs, "achieved_gflops": 2 * gmacs * args.batch_size / median_s,
            **latency["attention"].get(name, {}),
        }  # fmt: skip
        if matmul is not None:
            row["matmul_gflops"] = matmul["gflops_median"]
            row["matmul_dtype"] = matmul["dtype"]
            row["fraction_of_matmul"] = row["achieved_gflops"] / matmul["gflops_median"]
        rows[name] = row
    ratio = rows["pale_tiny"]["median_s"] / rows["hf_swin_tiny"]["median_s"]
    ratios = {"size": size, "pale_over_swin": ratio, "target_max": TARGET_RATIO, "meets": ratio <= TARGET_RATIO}
    ratios.update(attention_split(rows["pale_tiny"], rows["hf_swin_tiny"]))
    if MODULE_FORWARD_TWIN in rows:
        ratios["pale_over_module_forward"] = rows["pale_tiny"]["median_s"] / rows[MODULE_FORWARD_TWIN]["median_s"]
        ratios["module_forward_over_swin"] = rows[MODULE_FORWARD_TWIN]["median_s"] / rows["hf_swin_tiny"]["median_s"]
    if OPTIMIZED_TWIN in rows:
        optimized = rows[OPTIMIZED_TWIN]["median_s"]
        ratios["optimized_over_swin"] = optimized / rows["hf_swin_tiny"]["median_s"]
        ratios["optimized_meets"] = ratios["optimized_over_swin"] <= TARGET_RATIO
        ratios["optimized_over_pale"] = optimized / rows["pale_tiny"]["median_s"]
    if args.compile:
        compiled = {name: rows[name]["median_s"] for name in twins}
        ratios["compiled_pale_over_compiled_swin"] = compiled["pale_tiny@compiled"] / compiled["hf_swin_tiny@compiled"]
        ratios["compiled_over_eager"] = {
            name: rows[harness.compiled_name(name)]["median_s"] / rows[name]["median_s"] for name in MODELS
        }
    return list(rows.values()), ratios, matmul


def attention_split(pale: dict, swin: dict) -> dict:
    """The latency ratio split at the attention functions, from the medians over the rounds: Pale-T's attention alone
    over Swin-T's whole forward (``pale_attention_over_swin``; Pale-T cannot be faster than Swin-T where it is 1.0
    or more), and the rest of the forwards, everything outside the attention functions, over each other
    (``pale_rest_over_swin_rest``)."""
    pale_attention, swin_attention = harness.median(pale["attention_s"]), harness.median(swin["attention_s"])
    return {
        "pale_attention_over_swin": pale_attention / swin["median_s"],
        "pale_rest_over_swin_rest": (pale["median_s"] - pale_attention) / (swin["median_s"] - swin_attention),
    }


def parse_args(argv=None):
    """The options: sizes, batch, timing, ``--device`` and ``--dtype`` (half types run under ``torch.autocast``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 512], help="square input sides in pixels")
    parser.add_argument("--batch-size", type=int, default=1)
    harness.add_timing_options(parser, warmup=2, repeats=10)
    harness.add_device_options(parser)
    parser.add_argument(
        "--compile", action="store_true", help="also time both models compiled with torch.compile (latency only)"
    )
    parser.add_argument(
        "--module-forward-twin",
        action="store_true",
        help=f"also time {MODULE_FORWARD_TWIN}: Pale-T module by module, each branch in calls of its own",
    )
    parser.add_argument(
        "--optimized-twin",
        action="store_true",
        help=f"also time {OPTIMIZED_TWIN}: Pale-T after model.optimize_for_inference()",
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON report (default results/pale_<device>.json)")
    parser.add_argument("--memory-worker", choices=(*MODELS, *TWINS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = harness.default_output("pale", args.device)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    harness.set_threads(args.threads)
    if args.memory_worker:
        harness.emit_result(measure_memory(args, args.memory_worker, args.sizes[0]))
        return
    env = harness.environment(args.device, args.dtype, args.threads, args.autocast_scope)
    details = f"batch {args.batch_size}", f"warmup {args.warmup}", f"repeats {args.repeats}"
    print(harness.describe_run(env, *details))
    rows, ratios, matmuls = [], [], []
    for size in args.sizes:
        size_rows, ratio, matmul = measure_size(args, size)
        rows += size_rows
        ratios.append(ratio)
        if matmul is not None:
            matmuls.append(matmul)

    print()
    print(harness.format_table(rows, COLUMNS))
    print()
    if matmuls:
        figures = ", ".join(f"{m['gflops_median']:.1f} (size {m['input_size']})" for m in matmuls)
        print(f"{harness.GEMM_SIZE}^2 {args.dtype} matmul in the same rounds, median GFLOP/s: {figures}")
    else:
        print("matmul: not measured on CUDA")
    for r in ratios:
        print(
            f"Pale-T / Swin-T latency at {r['size']}: {r['pale_over_swin']:.3f} ({harness.verdict(r['pale_over_swin'], TARGET_RATIO)})"
        )
        print(
            f"  Pale-T's attention functions alone / Swin-T's forward: {r['pale_attention_over_swin']:.3f}; the rest "
            f"of the forwards: {r['pale_rest_over_swin_rest']:.3f}"
        )
        if "pale_over_module_forward" in r:
            print(
                f"  Pale-T / its module forward (branches apart): {r['pale_over_module_forward']:.3f}; the module "
                f"forward / Swin-T: {r['module_forward_over_swin']:.3f}"
            )
        if "optimized_over_swin" in r:
            verdict = harness.verdict(r["optimized_over_swin"], TARGET_RATIO)
            print(
                f"  optimized for inference: / Swin-T {r['optimized_over_swin']:.3f} ({verdict}); / Pale-T as loaded "
                f"{r['optimized_over_pale']:.3f}"
            )
        if "compiled_over_eager" in r:
            own = ", ".join(f"{name} {value:.3f}" for name, value in r["compiled_over_eager"].items())
            print(f"  compiled: Pale-T / Swin-T {r['compiled_pale_over_compiled_swin']:.3f}; compiled / eager: {own}")
    harness.write_report(args.output, {"environment": env, "results": rows, "ratios": ratios, "matmul": matmuls})
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
