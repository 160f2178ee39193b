#!/usr/bin/env python
"""Where a GPU forward's time goes: kernel launches (host) or kernels (device), for Pale-T, SeMask-T and their peers.

    python benchmarks/cuda_launch_profile.py --output_dir "$OUT"          # on a GPU (bf16 autocast)
    python benchmarks/cuda_launch_profile.py --device cpu --size 224 --batch 1 --repeats 2   # a CPU check of the path

``run_cuda.py`` measured Pale-T at 5.3x Swin-T's time per image on an H200 (224, batch 32) for 0.94x its MACs, at
about 1/40 of the bf16 peak: a forward that small is bound by launching kernels, not by running them. For each
model of ``benchmark_pale.py`` and ``benchmark_semask_fpn.py``'s backbones (random weights), in eval mode under
``torch.no_grad()`` and autocast, this script measures:

* ``eager_ms``: the median of ``--repeats`` forwards, the device synchronized after each;
* ``host_ms``: the median time until the forward returns, without synchronizing (the device synchronized before):
  the Python and dispatch time of launching its kernels; when it is close to ``eager_ms`` the device waits on it;
* ``graph_ms``: the median replay of a CUDA graph of the same forward (CUDA only): the kernels without launch costs,
  the floor that ``torch.compile(mode="reduce-overhead")`` or a captured graph can reach;
* ``kernels``: the device kernels of one forward (``torch.profiler``; CUDA only), and ``top_kernels``, the ones that
  take the most device time.

Writes ``cuda_launch_profile_<device>.json`` to ``--output_dir`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py and the benchmark scripts sit next to this one

import benchmark_pale  # noqa: E402
import benchmark_semask_fpn  # noqa: E402
import harness  # noqa: E402
import run_cuda  # noqa: E402


#: the backbones of benchmark_semask_fpn.py that this script profiles, ours then the peer
SEMASK_BACKBONES = ("semask_backbone_tiny", "hf_swin_tiny_backbone")
#: (model, builder, the (size, batch) shapes of run_cuda.py's benchmark of it)
MODELS = (
    *((name, benchmark_pale.build_model, run_cuda.CUDA_SHAPES["pale"]) for name in benchmark_pale.MODELS),
    *((name, benchmark_semask_fpn.build_model, run_cuda.CUDA_SHAPES["semask_fpn"]) for name in SEMASK_BACKBONES),
)
#: (ours, peer) pairs whose ratios are reported
PAIRS = (tuple(benchmark_pale.MODELS), SEMASK_BACKBONES)
TOP_KERNELS = 8


def host_and_eager_ms(forward, synchronize, repeats: int) -> tuple[float, float]:
    """Median milliseconds until ``forward`` returns (launch time) and until the device has finished it."""
    host, eager = [], []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        forward()
        host.append(time.perf_counter() - start)
        synchronize()
        eager.append(time.perf_counter() - start)
    return 1e3 * harness.median(host), 1e3 * harness.median(eager)


def graph_ms(forward, repeats: int) -> float:
    """Median milliseconds of a CUDA graph replay of ``forward`` (captured after warm-up on a side stream)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * harness.median(times)


def kernel_profile(forward) -> dict:
    """The device kernels of one ``forward``: their number and the ``TOP_KERNELS`` with the most device time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
    return summarise_kernels([event for event in prof.events() if event.device_type == DeviceType.CUDA])


def summarise_kernels(kernels) -> dict:
    """``kernels`` (profiler events with ``name`` and ``device_time_total`` in microseconds): their number, their
    device milliseconds and the ``TOP_KERNELS`` names (first 90 characters) with the most device time."""
    totals: dict[str, list[float]] = {}
    for event in kernels:
        entry = totals.setdefault(event.name[:90], [0, 0.0])
        entry[0] += 1
        entry[1] += event.device_time_total / 1e3
    top = sorted(totals.items(), key=lambda item: -item[1][1])[:TOP_KERNELS]
    return {
        "kernels": len(kernels),
        "kernel_ms": sum(event.device_time_total for event in kernels) / 1e3,
        "top_kernels": [{"name": name, "calls": calls, "ms": ms} for name, (calls, ms) in top],
    }


def measure(args, name: str, build, size: int, batch: int, device, autocast, synchronize) -> dict:
    torch.manual_seed(args.seed)
    model = build(name).to(device).eval()
    pixel_values = harness.random_pixel_values(batch, size, harness.seeded_generator(args.seed)).to(device)

    def forward():
        with torch.no_grad(), autocast():
            return model(pixel_values)

    for _ in range(args.warmup):
        forward()
    host, eager = host_and_eager_ms(forward, synchronize, args.repeats)
    row = {"model": name, "size": size, "batch_size": batch, "eager_ms": eager, "host_ms": host}
    if device.type == "cuda":
        for field, run in (("graph", lambda: {"graph_ms": graph_ms(forward, args.repeats)}),
                           ("profile", lambda: kernel_profile(forward))):  # fmt: skip
            try:
                row.update(run())
            except Exception as error:  # noqa: BLE001 - recorded in the report, the run goes on
                row[f"{field}_error"] = run_cuda.error_message(error)
        if row.get("kernels"):
            row["host_us_per_kernel"] = 1e3 * host / row["kernels"]
    return row


def ratios(rows: list[dict]) -> list[dict]:
    """Ours / peer of every measured field, per pair and shape."""
    by_key = {(row["model"], row["size"], row["batch_size"]): row for row in rows}
    result = []
    for ours, peer in PAIRS:
        for (model, size, batch), top in by_key.items():
            bottom = by_key.get((peer, size, batch))
            if model != ours or bottom is None:
                continue
            fields = [field for field in ("eager_ms", "host_ms", "graph_ms", "kernels") if field in top]
            result.append(
                {"numerator": ours, "denominator": peer, "size": size, "batch_size": batch}
                | {field: top[field] / bottom[field] for field in fields}
            )
    return result


COLUMNS = (
    harness.Column("model", "model", "<", 22),
    harness.Column("size", "size", ">", 4),
    harness.Column("batch", "batch_size", ">", 5),
    harness.Column("eager ms", "eager_ms", ">", 9, 1),
    harness.Column("host ms", "host_ms", ">", 8, 1),
    harness.Column("graph ms", "graph_ms", ">", 9, 1),
    harness.Column("kernels", "kernels", ">", 8, 0),
    harness.Column("us/kernel", "host_us_per_kernel", ">", 9, 1),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=harness.DTYPES, default="bfloat16", help="autocast dtype (fp32 weights)")
    parser.add_argument("--size", type=int, default=None, help="one input size instead of run_cuda.py's shapes")
    parser.add_argument("--batch", type=int, default=None, help="with --size: the batch")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", "--output-dir", default=str(harness.RESULTS_DIR))
    args = parser.parse_args(argv)
    device, dtype = harness.device_and_dtype(args.device, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("cuda_launch_profile.py: CUDA is required for --device cuda (use --device cpu to check the path)")
        return 1
    autocast, synchronize = harness.device_helpers(device, dtype)
    rows = []
    for name, build, shapes in MODELS:
        for size, batch in [(args.size, args.batch or 1)] if args.size else shapes:
            print(f"{name} {size}x{size} batch {batch} ...", file=sys.stderr, flush=True)
            rows.append(measure(args, name, build, size, batch, device, autocast, synchronize))
    report = {
        "script": "benchmarks/cuda_launch_profile.py",
        "environment": harness.environment(args.device, args.dtype, torch.get_num_threads()),
        "settings": {"warmup": args.warmup, "repeats": args.repeats, "seed": args.seed},
        "results": rows,
        "ratios": ratios(rows),
    }
    output = Path(args.output_dir) / f"cuda_launch_profile_{device.type}.json"
    harness.write_report(output, report)
    print(harness.format_table(rows, COLUMNS))
    for ratio in report["ratios"]:
        fields = ", ".join(f"{key} {value:.2f}x" for key, value in ratio.items() if isinstance(value, float))
        print(f"{ratio['numerator']} / {ratio['denominator']} [{ratio['size']}, batch {ratio['batch_size']}]: {fields}")
    for row in rows:
        for kernel in row.get("top_kernels", [])[:4]:
            print(f"  {row['model']} {row['size']}: {kernel['ms']:.2f} ms in {kernel['calls']} x {kernel['name']}")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
