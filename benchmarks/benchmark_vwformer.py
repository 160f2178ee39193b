#!/usr/bin/env python
"""The VWFormer head versus transformers' UperNet head (hidden 512) on the same Swin-B features at 640x640, and the
two whole models: GMACs, parameters, forward latency, achieved GFLOP/s and peak memory, in one run.

    python benchmarks/benchmark_vwformer.py [--size 640] [--repeats 10] [--threads 2] [--skip-whole-models]
        [--dtype float32|bfloat16]

* Heads: ``VWFormerHead`` of the released Swin-B ADE20K model (C = 512, 1 head, short-cut, 150 classes) and
  transformers' ``UperNetHead`` (hidden 512, pool scales 1/2/3/6, 150 classes) on one fixed set of random Swin-B
  feature maps (128/256/512/1024 channels at strides 4/8/16/32).
* Whole models: ``VWFormerForSemanticSegmentation`` (variant ``vwformer-swin-base-ade20k``) versus
  ``UperNetForSemanticSegmentation`` with the same Swin-B backbone (no auxiliary head).
* GMACs: ``harness.count_gmacs`` (``torch.utils.flop_counter.FlopCounterMode`` on one fp32 forward, plus the CPU's
  fused attention kernel; MACs = FLOPs / 2; reshapes not counted).
* Latency: all models of a group live in ONE process and are timed round-robin (median over ``--repeats`` rounds).
  With ``--dtype bfloat16`` the forwards run under ``torch.autocast`` with fp32 weights. The device is the CPU.
* Achieved GFLOP/s: 2 x GMACs / median latency (batch 1). A ``harness.GEMM_SIZE`` square matmul in the run's dtype
  (fp32, or bf16 for a bf16 run) is one more step of each group's rounds: its median GFLOP/s is the machine's matmul
  throughput under the same load, and each model's GFLOP/s is also reported as a fraction of it (``of matmul``).
* Peak memory: the increase of the resident set during one forward (under the same autocast), in a fresh subprocess
  per model.

The measurement code is shared with the other scripts in ``harness.py``.

Target (issue 17, tightened from issue 3's 0.25x): our head at most 0.20x the UperNet head's latency in the same run.
Our head computes the original's function with 34.4 GMACs at 640x640 (the original's layer order: 53.2; the
original head measured 0.30x here with the original code): see ``VWFormerHead``.
"""

import argparse
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py sits next to this script

import harness  # noqa: E402


HEADS = ("vwformer_head", "upernet_head")
WHOLE_MODELS = ("vwformer_swin_base", "upernet_swin_base")
TARGET_RATIO = 0.20
SWIN_B_CHANNELS = (128, 256, 512, 1024)
SWIN_BASE = {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], "window_size": 12}
COLUMNS = (
    harness.Column("model", "model", "<", 28),
    harness.Column("GMACs", "gmacs", ">", 8, 1),
    harness.Column("params M", "params_M", ">", 9, 2),
    harness.Column("s/iter", "median_s", ">", 8, 3),
    harness.Column("peak MB", "peak_mem_mb", ">", 8, 1),
    harness.Column("GFLOP/s", "achieved_gflops", ">", 8, 1),
    harness.Column("of matmul", "fraction_of_matmul", ">", 9, 3),
    harness.Column("compile s", "compile_s", ">", 9, 1),
)


def build_model(name: str) -> torch.nn.Module:
    """Randomly initialised head or whole model ``name`` (one of ``HEADS + WHOLE_MODELS``)."""
    import hf_semseg

    if name == "vwformer_head":
        from hf_semseg.models.modeling_vwformer import VWFormerHead

        return VWFormerHead(hf_semseg.variant_config("vwformer-swin-base-ade20k"), list(SWIN_B_CHANNELS))
    if name == "upernet_head":
        from types import SimpleNamespace

        from transformers.models.upernet.modeling_upernet import UperNetHead

        config = SimpleNamespace(pool_scales=[1, 2, 3, 6], hidden_size=512, num_labels=150)
        return UperNetHead(config, in_channels=list(SWIN_B_CHANNELS))
    if name == "vwformer_swin_base":
        return hf_semseg.VWFormerForSemanticSegmentation(hf_semseg.variant_config("vwformer-swin-base-ade20k"))
    if name == "upernet_swin_base":
        from transformers import UperNetConfig, UperNetForSemanticSegmentation

        backbone = harness.swin_config(SWIN_BASE, image_size=384)
        config = UperNetConfig(backbone_config=backbone, hidden_size=512, num_labels=150, use_auxiliary_head=False)
        return UperNetForSemanticSegmentation(config)
    raise ValueError(f"unknown model {name!r}")


def make_input(name: str, size: int):
    """Swin-B feature maps for the heads, an image for the whole models (fixed seeds: the same for every model)."""
    generator = harness.seeded_generator(0)
    if name in HEADS:
        return tuple(
            torch.randn(1, channels, size // stride, size // stride, generator=generator)
            for channels, stride in zip(SWIN_B_CHANNELS, (4, 8, 16, 32))
        )
    return harness.random_pixel_values(1, size, generator)


def measure_group(args, names) -> dict:
    """GMACs, round-robin forward latencies (in ``args.dtype``) and parameter counts of the models ``names``, all in
    this process, with the seconds of the square matmul timed in the same rounds."""
    models = {name: build_model(name).eval() for name in names}
    inputs = {name: make_input(name, args.size) for name in names}
    gmacs = {name: harness.count_gmacs(models[name], inputs[name]) for name in names}
    device, dtype = harness.device_and_dtype(args.device, args.dtype)
    autocast, synchronize = harness.device_helpers(device, dtype)
    rounds = harness.forward_round_robin_with_matmul(
        models, inputs, args.warmup, args.repeats, synchronize, autocast, dtype, compile_models=args.compile,
        region=harness.autocast_region(device, dtype, args.autocast_scope),
    )  # fmt: skip
    params = {name: harness.count_params(model) for name, model in models.items()}
    return {
        "gmacs": gmacs, "times_s": rounds.times, "params": params, "matmul_times_s": rounds.matmul_times,
        "compile_s": rounds.compile_s,
    }  # fmt: skip


def measure_memory(args, name: str) -> dict:
    """Peak memory of the first forward (under the run's autocast) of one model in this (fresh) process."""
    model = build_model(name).eval()
    autocast, _ = harness.device_helpers(*harness.device_and_dtype(args.device, args.dtype))
    with autocast():
        return harness.first_forward_peak_memory(model, make_input(name, args.size), torch.device("cpu"))


def memory_in_subprocess(args, name: str) -> dict:
    """``measure_memory`` in a fresh process of this script."""
    command = harness.script_command(
        __file__, "--memory-worker", name, "--size", args.size, "--threads", args.threads, "--dtype", args.dtype
    )
    return harness.run_worker_command(command, args.threads)


def measure_pair(args, names) -> tuple[list[dict], dict, dict]:
    """The result rows of one group (ours, then the peer), their latency and GMACs ratios, and the matmul of the
    same rounds (``size``, ``dtype``, ``group``, ``times_s``, ``gflops_median``)."""
    measured = measure_group(args, names)
    matmul = {
        "size": harness.GEMM_SIZE, "dtype": args.dtype, "group": f"{names[0]}/{names[1]}",
        "times_s": measured["matmul_times_s"],
        "gflops_median": harness.gemm_gflops(harness.GEMM_SIZE, harness.median(measured["matmul_times_s"])),
    }  # fmt: skip
    rows = {}
    twins = [harness.compiled_name(name) for name in names] if args.compile else []
    for name in [*names, *twins]:
        median_s = harness.median(measured["times_s"][name])
        model = name.removesuffix(harness.COMPILED)
        gmacs = measured["gmacs"][model]
        achieved = 2 * gmacs * args.batch_size / median_s
        # a compiled twin: latency only (its first call in a fresh process would be its compilation)
        extra = {"compile_s": measured["compile_s"][name]} if name in twins else memory_in_subprocess(args, name)
        rows[name] = {
            "model": name, "size": args.size, "median_s": median_s, "gmacs": gmacs,
            "params_M": measured["params"][model] / 1e6, "times_s": measured["times_s"][name], **extra,
            "achieved_gflops": achieved, "matmul_gflops": matmul["gflops_median"], "matmul_dtype": matmul["dtype"],
            "fraction_of_matmul": achieved / matmul["gflops_median"],
        }  # fmt: skip
    ours, peer = (rows[name]["median_s"] for name in names)
    ratio = {"latency": ours / peer, "gmacs": rows[names[0]]["gmacs"] / rows[names[1]]["gmacs"]}
    if args.compile:
        ours_compiled, peer_compiled = (rows[name]["median_s"] for name in twins)
        ratio["compiled_latency"] = ours_compiled / peer_compiled
        ratio["compiled_over_eager"] = {
            name: rows[harness.compiled_name(name)]["median_s"] / rows[name]["median_s"] for name in names
        }
    return list(rows.values()), ratio, matmul


def parse_args(argv=None):
    """The options; the device is always the CPU, the batch one; ``--dtype bfloat16`` runs under ``torch.autocast``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=640, help="square input side in pixels")
    harness.add_timing_options(parser, warmup=2, repeats=10)
    parser.add_argument("--skip-whole-models", action="store_true", help="measure the heads only")
    parser.add_argument(
        "--compile", action="store_true", help="also time every model compiled with torch.compile (latency only)"
    )
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="bfloat16 runs under torch.autocast"
    )
    harness.add_autocast_scope_option(parser)
    parser.add_argument("--output", type=Path, default=harness.default_output("vwformer", "cpu"), help="JSON report")
    parser.add_argument("--memory-worker", choices=HEADS + WHOLE_MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device, args.batch_size = "cpu", 1
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    harness.set_threads(args.threads)
    if args.memory_worker:
        harness.emit_result(measure_memory(args, args.memory_worker))
        return
    env = harness.environment(args.device, args.dtype, args.threads, args.autocast_scope)
    details = f"{args.size}x{args.size}", f"warmup {args.warmup}", f"repeats {args.repeats}"
    print(harness.describe_run(env, *details))
    rows, ratios, matmuls = [], {}, []
    for names in [HEADS] if args.skip_whole_models else [HEADS, WHOLE_MODELS]:
        group_rows, ratios[f"{names[0]}/{names[1]}"], matmul = measure_pair(args, names)
        rows += group_rows
        matmuls.append(matmul)

    print()
    print(harness.format_table(rows, COLUMNS))
    print()
    figures = ", ".join(f"{m['gflops_median']:.1f} ({m['group']})" for m in matmuls)
    print(f"{harness.GEMM_SIZE}^2 {args.dtype} matmul in the same rounds, median GFLOP/s: {figures}")
    for pair, ratio in ratios.items():
        print(f"{pair}: latency {ratio['latency']:.3f}x, GMACs {ratio['gmacs']:.3f}x")
        if "compiled_over_eager" in ratio:
            own = ", ".join(f"{name} {value:.3f}" for name, value in ratio["compiled_over_eager"].items())
            print(f"  compiled: latency {ratio['compiled_latency']:.3f}x; compiled / eager: {own}")
    head_ratio = ratios["vwformer_head/upernet_head"]["latency"]
    print(f"head latency ratio {head_ratio:.3f} ({harness.verdict(head_ratio, TARGET_RATIO)})")
    report = {
        "environment": env, "results": rows, "ratios": ratios, "target_head_ratio": TARGET_RATIO, "matmul": matmuls,
    }  # fmt: skip
    harness.write_report(args.output, report)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
