#!/usr/bin/env python
"""Pale-T versus transformers' Swin-T (similar FLOPs): GMACs, forward latency and peak memory, in one run.

    python benchmarks/benchmark_pale.py [--sizes 224 512] [--batch-size 1] [--repeats 10] [--threads 2]

* GMACs: counted with ``torch.utils.flop_counter.FlopCounterMode`` on one forward (matmuls, convolutions and
  attention; MACs = FLOPs / 2).
* Latency: both models live in ONE process and are timed round-robin (one forward of each per round, ``--repeats``
  rounds after ``--warmup``), so that load changes on a shared machine hit them alike; the median is reported.
* Peak memory: the increase of the resident set (CPU) or of allocated memory (CUDA) during one forward, measured in
  a fresh subprocess per model (helpers shared with ``benchmark_semask_fpn.py``).

Both models are the bare encoders with pooling (``PaleModel``, ``SwinModel``), randomly initialised: Pale has no
released weights. Target (issue 4): Pale-T at most 1.3x Swin-T's latency at both sizes.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from benchmark_semask_fpn import RESULT_MARKER, PeakMemory, environment, run_worker_command


MODELS = ("pale_tiny", "hf_swin_tiny")
TARGET_RATIO = 1.3


def build_model(name: str):
    if name == "pale_tiny":
        import hf_semseg

        return hf_semseg.PaleModel(hf_semseg.variant_config("pale-tiny"))
    if name == "hf_swin_tiny":
        from transformers import SwinConfig, SwinModel

        return SwinModel(SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7))
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def count_gmacs(model, pixel_values) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(pixel_values)
    return counter.get_total_flops() / 2 / 1e9


def measure_latency(args, size: int) -> dict:
    """GMACs and round-robin forward latencies of every model at one input size."""
    models = {name: build_model(name).eval().to(args.device) for name in MODELS}
    pixel_values = torch.randn(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    pixel_values = pixel_values.to(args.device)
    gmacs = {name: count_gmacs(model, pixel_values[:1]) for name, model in models.items()}
    times = {name: [] for name in models}
    synchronize = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        for _ in range(args.warmup):
            for model in models.values():
                model(pixel_values)
        for _ in range(args.repeats):
            for name, model in models.items():
                synchronize()
                start = time.perf_counter()
                model(pixel_values)
                synchronize()
                times[name].append(time.perf_counter() - start)
    return {"gmacs_per_image": gmacs, "times_s": times}


def measure_memory(args, name: str, size: int) -> dict:
    """Peak memory of the first forward of one model in this (fresh) process: once memory was freed, the allocator
    keeps it, so a warmed-up process under-reports what a forward needs."""
    model = build_model(name).eval().to(args.device)
    pixel_values = torch.randn(args.batch_size, 3, size, size).to(args.device)
    with torch.no_grad():
        memory = PeakMemory(torch.device(args.device))
        memory.start()
        model(pixel_values)
        return memory.stop()


def memory_in_subprocess(args, name: str, size: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", name, "--sizes", str(size)]
    command += ["--batch-size", str(args.batch_size), "--threads", str(args.threads), "--device", args.device]
    return run_worker_command(command, args.threads)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--memory-worker", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = "float32"
    if args.output is None:
        args.output = Path(__file__).resolve().parent / "results" / f"pale_{args.device.replace(':', '')}.json"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(RESULT_MARKER + json.dumps(measure_memory(args, args.memory_worker, args.sizes[0])), flush=True)
        return
    env = environment(args)
    print(f"torch {env['torch']}, transformers {env['transformers']}, {args.device}, {args.threads} threads, "
          f"{env['cpu_model']}, batch {args.batch_size}, warmup {args.warmup}, repeats {args.repeats}")  # fmt: skip
    rows, ratios = [], []
    for size in args.sizes:
        latency = measure_latency(args, size)
        for name in MODELS:
            median_s = statistics.median(latency["times_s"][name])
            rows.append({
                "model": name, "size": size, "batch_size": args.batch_size, "median_s": median_s,
                "images_per_s": args.batch_size / median_s, "gmacs_per_image": latency["gmacs_per_image"][name],
                "times_s": latency["times_s"][name], **memory_in_subprocess(args, name, size),
            })  # fmt: skip
        pale, swin = rows[-2], rows[-1]
        ratio = pale["median_s"] / swin["median_s"]
        ratios.append(
            {"size": size, "pale_over_swin": ratio, "target_max": TARGET_RATIO, "meets": ratio <= TARGET_RATIO}
        )

    print(f"\n{'model':<14} {'size':>5} {'GMACs':>7} {'s/iter':>8} {'img/s':>7} {'peak MB':>8}")
    for r in rows:
        peak = f"{r['peak_mem_mb']:8.1f}" if "peak_mem_mb" in r else "   error"
        print(
            f"{r['model']:<14} {r['size']:>5} {r['gmacs_per_image']:>7.2f} {r['median_s']:>8.4f} "
            f"{r['images_per_s']:>7.2f} {peak}"
        )
    print()
    for r in ratios:
        verdict = "ok" if r["meets"] else "MISSED"
        print(
            f"Pale-T / Swin-T latency at {r['size']}: {r['pale_over_swin']:.3f} (target <= {TARGET_RATIO}: {verdict})"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"environment": env, "results": rows, "ratios": ratios}, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
