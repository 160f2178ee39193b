"""Latency and peak-memory benchmark of SeMask-T FPN against Swin-T peers from transformers.

What is measured, for every (model, mode, batch size):

* ``forward``: one inference step, ``model.eval()`` under ``torch.no_grad()``.
* ``train``: one forward + backward step in ``model.train()``. The loss is ``model(pixel_values, labels=labels).loss``
  for the segmentation models and ``sum(f.float().mean() for f in feature_maps)`` for the backbones. Gradients are
  dropped (``zero_grad(set_to_none=True)``) at the start of every step; there is no optimizer.

Each figure is the median seconds per iteration over ``--repeats`` timed iterations after ``--warmup`` untimed ones,
the matching images/s, and the peak memory increase over the memory held right after the model and its inputs were
built (so it counts activations, gradients and workspace, not the weights). Every measurement runs in a fresh
subprocess of this script (hidden ``--worker`` mode, one JSON line back), which isolates the peak-memory figure: on
CPU it is the resident-set high-water mark (``VmHWM`` in ``/proc/self/status``, reset through
``/proc/self/clear_refs`` when the kernel allows it), on CUDA ``torch.cuda.max_memory_allocated``. The models are
interleaved per batch size (all models at batch 1, then all at batch 8), so a drift in machine load hits them alike.

Models (random initialisation, nothing downloaded):

* ``semask_fpn_tiny``: ``SeMaskSwinForSemanticSegmentation``, the SeMask-T FPN ADE20K configuration.
* ``semask_backbone_tiny``: its ``SeMaskSwinBackbone`` alone (Swin-T plus the semantic layers).
* ``hf_swin_tiny_backbone``: transformers' ``SwinBackbone``, Swin-T.
* ``hf_upernet_swin_tiny``: transformers' ``UperNetForSemanticSegmentation`` on Swin-T (hidden 512, auxiliary head).

Why the ratios matter: the HF Swin-T backbone is the reference cost of the shared Swin-T trunk. SeMask-T FPN /
Swin-T (target <= 1.55) bounds what the semantic layers, the Semantic-FPN head and the semantic decoder may add on
top of it; SeMask backbone / Swin-T (target <= 1.1) isolates the semantic layers and catches a slow re-implementation
of the shared Swin blocks; SeMask-T FPN / UperNet-Swin-T compares against the segmentation model users would
otherwise pick from transformers.

With a batch of one, BatchNorm cannot normalise UperNet's 1x1 pyramid-pooling map in training mode, so train-mode
measurements at batch size 1 keep every BatchNorm layer in eval mode (for all models; recorded as
``batchnorm_frozen``).

Run from the repository root: ``HF_HUB_OFFLINE=1 python benchmarks/benchmark_semask_fpn.py`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT_MARKER = "BENCHMARK_RESULT "
NUM_LABELS = 150
MODELS = ("semask_fpn_tiny", "semask_backbone_tiny", "hf_swin_tiny_backbone", "hf_upernet_swin_tiny")
SEGMENTATION_MODELS = ("semask_fpn_tiny", "hf_upernet_swin_tiny")
MODES = ("forward", "train")
# (numerator, denominator, target upper bound or None)
RATIOS = (
    ("semask_fpn_tiny", "hf_swin_tiny_backbone", 1.55),
    ("semask_backbone_tiny", "hf_swin_tiny_backbone", 1.1),
    ("semask_fpn_tiny", "hf_upernet_swin_tiny", None),
)


# ----------------------------------------------------------------------------------------------------------------
# Model construction
# ----------------------------------------------------------------------------------------------------------------


def swin_tiny_config():
    from transformers import SwinConfig

    return SwinConfig(
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def semask_tiny_config():
    """The released SeMask-T FPN ADE20K architecture (150 classes, semantic attention W W G G)."""
    import hf_semseg

    return hf_semseg.variant_config("semask-fpn-tiny-ade20k")


def build_model(name: str):
    """Randomly initialised model ``name`` (one of ``MODELS``)."""
    if name == "semask_fpn_tiny":
        from hf_semseg import SeMaskSwinForSemanticSegmentation

        return SeMaskSwinForSemanticSegmentation(semask_tiny_config())
    if name == "semask_backbone_tiny":
        from hf_semseg import SeMaskSwinBackbone

        return SeMaskSwinBackbone(semask_tiny_config())
    if name == "hf_swin_tiny_backbone":
        from transformers import SwinBackbone

        return SwinBackbone(swin_tiny_config())
    if name == "hf_upernet_swin_tiny":
        from transformers import UperNetConfig, UperNetForSemanticSegmentation

        return UperNetForSemanticSegmentation(UperNetConfig(backbone_config=swin_tiny_config(), num_labels=NUM_LABELS))
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


# ----------------------------------------------------------------------------------------------------------------
# Worker: one (model, mode, batch size) measurement in this process
# ----------------------------------------------------------------------------------------------------------------


def read_proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def reset_rss_high_water_mark() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` value 5). Returns whether the kernel allowed it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory increase over the memory held when ``start`` is called: CPU RSS or CUDA allocated bytes."""

    def __init__(self, device):
        self.device = device

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.method = "torch.cuda.max_memory_allocated"
        else:
            self.baseline_mb = read_proc_status_kb("VmRSS") / 1024
            hwm_reset = reset_rss_high_water_mark()
            self.method = "VmHWM after clear_refs reset" if hwm_reset else "VmHWM (not reset) minus baseline VmRSS"

    def stop(self) -> dict:
        if self.device.type == "cuda":
            import torch

            peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak_mb = read_proc_status_kb("VmHWM") / 1024
        return {
            "peak_mem_mb": max(peak_mb - self.baseline_mb, 0.0),
            "peak_mem_abs_mb": peak_mb,
            "baseline_mem_mb": self.baseline_mb,
            "mem_method": self.method,
        }


def make_inputs(batch_size: int, size: int, seed: int, device):
    import torch

    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator)
    labels = torch.randint(0, NUM_LABELS, (batch_size, size, size), generator=generator)
    return pixel_values.to(device), labels.to(device)


def make_step(model, name: str, mode: str, pixel_values, labels, autocast):
    """The function timed once per iteration."""
    import torch

    def forward_step():
        with torch.no_grad(), autocast():
            model(pixel_values)

    def train_step():
        model.zero_grad(set_to_none=True)
        with autocast():
            if name in SEGMENTATION_MODELS:
                loss = model(pixel_values, labels=labels).loss
            else:
                loss = sum(feature_map.float().mean() for feature_map in model(pixel_values).feature_maps)
        loss.backward()

    return forward_step if mode == "forward" else train_step


def set_mode(model, mode: str, batch_size: int) -> bool:
    """Put ``model`` in eval or train mode. Returns whether BatchNorm layers were kept in eval mode (training with a
    batch of one, where a 1x1 map cannot be batch-normalised)."""
    import torch

    if mode == "forward":
        model.eval()
        return False
    model.train()
    if batch_size > 1:
        return False
    batchnorms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    for module in batchnorms:
        module.eval()
    return bool(batchnorms)


def time_iterations(step, warmup: int, repeats: int, synchronize) -> list[float]:
    for _ in range(warmup):
        step()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    return times


def device_helpers(device, dtype):
    """``(autocast, synchronize)`` for a device: autocast is a no-op in float32, synchronize a no-op on CPU."""
    import torch

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return autocast, synchronize


def run_worker(args) -> dict:
    """Peak memory and parameter count of one model for one (mode, batch size): a warm-up and one measured step in
    a process of its own, so that nothing else's allocations count."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)

    (name,) = args.models
    model = build_model(name).to(device)
    pixel_values, labels = make_inputs(args.batch_size, args.size, args.seed, device)
    batchnorm_frozen = set_mode(model, args.mode, args.batch_size)

    autocast, synchronize = device_helpers(device, dtype)

    step = make_step(model, name, args.mode, pixel_values, labels, autocast)
    memory = PeakMemory(device)
    memory.start()
    times = time_iterations(step, args.warmup, args.repeats, synchronize)
    return {
        "memory_run_s": times,
        "params_m": sum(parameter.numel() for parameter in model.parameters()) / 1e6,
        "batchnorm_frozen": batchnorm_frozen,
        **memory.stop(),
    }


def run_latency_worker(args) -> dict:
    """Latency of every model of ``args.models`` for one (mode, batch size), measured in ONE process round-robin:
    each round runs every model once, so load changes on a shared machine hit all models alike (a run of one model
    after another drifted by +-15% here). Returns ``{model: [seconds per timed round]}``."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    pixel_values, labels = make_inputs(args.batch_size, args.size, args.seed, device)

    autocast, synchronize = device_helpers(device, dtype)

    steps = {}
    for name in args.models:
        torch.manual_seed(args.seed)
        model = build_model(name).to(device)
        set_mode(model, args.mode, args.batch_size)
        steps[name] = make_step(model, name, args.mode, pixel_values, labels, autocast)
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            synchronize()
            start = time.perf_counter()
            step()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return times


# ----------------------------------------------------------------------------------------------------------------
# Driver: a latency subprocess per (mode, batch), a memory subprocess per model, table, ratios, JSON
# ----------------------------------------------------------------------------------------------------------------


def worker_command(args, models: list[str], mode: str, batch_size: int, latency: bool) -> list[str]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--latency-worker" if latency else "--worker",
        "--models", *models, "--mode", mode, "--batch-size", str(batch_size),
        "--size", str(args.size), "--device", args.device, "--dtype", args.dtype,
        "--threads", str(args.threads), "--seed", str(args.seed),
    ]  # fmt: skip
    # memory workers measure the first iteration of a fresh process (once memory was freed the allocator keeps it,
    # so a warmed-up process under-reports what a step needs); latency workers run the requested counts
    counts = (args.warmup, args.repeats) if latency else (0, 1)
    return command + ["--warmup", str(counts[0]), "--repeats", str(counts[1])]


def run_subprocess(args, models: list[str], mode: str, batch_size: int, latency: bool) -> dict:
    """Run a worker in a fresh subprocess and return its JSON, or ``{"error": ...}``."""
    return run_worker_command(worker_command(args, models, mode, batch_size, latency), args.threads)


def run_worker_command(command: list[str], threads: int) -> dict:
    """Run a benchmark worker command in a fresh process; its last ``RESULT_MARKER`` line as JSON, or
    ``{"error": <last stderr line>}``. Every benchmark script measures peak memory this way."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    process = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in reversed(process.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    return {"error": (process.stderr.strip().splitlines() or [f"exit status {process.returncode}"])[-1]}


def run_all(args) -> list[dict]:
    """Per batch size and mode: the interleaved latency run of all models, then one memory run per model."""
    results = []
    for batch_size in args.batch_sizes:
        for mode in args.modes:
            print(f"{mode} batch={batch_size}: latency of {len(args.models)} models, round-robin ...", end=" ",
                  file=sys.stderr, flush=True)  # fmt: skip
            latency = run_subprocess(args, args.models, mode, batch_size, latency=True)
            print(latency.get("error", "done"), file=sys.stderr, flush=True)
            for model in args.models:
                base = {"model": model, "mode": mode, "batch_size": batch_size, "size": args.size}
                memory = run_subprocess(args, [model], mode, batch_size, latency=False)
                error = latency.get("error") or memory.get("error")
                if error:
                    results.append({**base, "error": error})
                    continue
                times = latency[model]
                median_s = statistics.median(times)
                results.append({
                    **memory, **base, "median_s": median_s, "images_per_s": batch_size / median_s, "times_s": times,
                })  # fmt: skip
    return results


def compute_ratios(results: list[dict]) -> list[dict]:
    """Median-latency ratios of ``RATIOS`` for every (mode, batch size) where both models succeeded."""
    latency = {(r["model"], r["mode"], r["batch_size"]): r["median_s"] for r in results if "error" not in r}
    ratios = []
    for mode, batch_size in sorted({(mode, batch) for _, mode, batch in latency}, key=lambda key: (key[1], key[0])):
        for numerator, denominator, target in RATIOS:
            if (numerator, mode, batch_size) in latency and (denominator, mode, batch_size) in latency:
                value = latency[numerator, mode, batch_size] / latency[denominator, mode, batch_size]
                ratios.append({
                    "numerator": numerator, "denominator": denominator, "mode": mode, "batch_size": batch_size,
                    "ratio": value, "target_max": target, "meets_target": None if target is None else value <= target,
                })  # fmt: skip
    return ratios


def format_results_table(results: list[dict]) -> str:
    header = f"{'model':<24} {'mode':<8} {'batch':>5} {'s/iter':>9} {'img/s':>8} {'peak MB':>9} {'params M':>9}  note"
    lines = [header, "-" * len(header)]
    for r in results:
        prefix = f"{r['model']:<24} {r['mode']:<8} {r['batch_size']:>5}"
        if "error" in r:
            lines.append(f"{prefix}  ERROR: {r['error']}")
            continue
        note = "BN frozen" if r["batchnorm_frozen"] else ""
        lines.append(
            f"{prefix} {r['median_s']:>9.4f} {r['images_per_s']:>8.2f} {r['peak_mem_mb']:>9.1f} {r['params_m']:>9.2f}"
            f"  {note}"
        )
    return "\n".join(lines)


def format_ratios(ratios: list[dict]) -> str:
    lines = []
    for r in ratios:
        line = f"{r['numerator']} / {r['denominator']} [{r['mode']}, batch {r['batch_size']}]: {r['ratio']:.3f}"
        if r["target_max"] is not None:
            line += f"  (target <= {r['target_max']}: {'ok' if r['meets_target'] else 'MISSED'})"
        lines.append(line)
    return "\n".join(lines) if lines else "(no ratio: a needed model was not measured or failed)"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(args) -> dict:
    import torch
    import transformers

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": args.threads,
        "device": args.device,
        "dtype": args.dtype,
        "git_revision": git_revision(),
    }
    if args.device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(args.device))
        info["cuda_version"] = torch.version.cuda
    return info


def write_report(path: Path, args, env: dict, results: list[dict], ratios: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        key: getattr(args, key)
        for key in ("models", "modes", "batch_sizes", "size", "warmup", "repeats", "seed", "quick")
    }
    report = {"environment": env, "settings": settings, "results": results, "ratios": ratios}
    path.write_text(json.dumps(report, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to measure")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="forward and/or train")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--size", type=int, default=512, help="square input side in pixels")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="half types run under torch.autocast")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every worker")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations before timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations (the median is reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON report (default benchmarks/results/semask_fpn_<device>.json)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: size 128, batch 1, 1 repeat, no warmup")
    # hidden worker mode: one measurement, printed as one JSON line
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--latency-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch_sizes, args.repeats, args.warmup = 128, [1], 1, 0
    if args.output is None:
        device_tag = args.device.replace(":", "")
        args.output = REPO_ROOT / "benchmarks" / "results" / f"semask_fpn_{device_tag}.json"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker or args.latency_worker:
        result = run_latency_worker(args) if args.latency_worker else run_worker(args)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return
    env = environment(args)
    print(f"torch {env['torch']}, transformers {env['transformers']}, {args.device} {args.dtype}, "
          f"{args.threads} threads, {env['cpu_model']}, size {args.size}, "
          f"warmup {args.warmup}, repeats {args.repeats}", flush=True)  # fmt: skip
    results = run_all(args)
    ratios = compute_ratios(results)
    print()
    print(format_results_table(results))
    print()
    print("Latency ratios (median s/iter):")
    print(format_ratios(ratios))
    if args.quick:
        print("(--quick is a smoke run: tiny input, no warmup, one repeat; its latencies and verdicts mean nothing)")
    write_report(args.output, args, env, results, ratios)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
