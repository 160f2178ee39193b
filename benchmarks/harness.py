"""The measurement harness shared by the benchmark scripts of this folder.

Every script measures our models against named peers from transformers in the same run, and uses these pieces:

* **Set-up**: ``HF_HUB_OFFLINE=1`` (set on import, before transformers is imported), the torch thread count, seeded
  inputs, the Swin-T configuration of the peers, and ``(autocast, synchronize)`` helpers for a device and dtype.
* **Timing**: ``time_iterations`` (warm-up, then timed iterations of one step) and ``time_round_robin`` (every round
  runs each model once, so load changes on a shared machine hit all models alike); the median is reported.
* **Peak memory**: ``PeakMemory`` / ``peak_memory_during``, the increase over what the process held when the
  measurement started. CPU: the resident-set high-water mark ``VmHWM``, reset through ``/proc/self/clear_refs``
  when the kernel allows it; CUDA: ``torch.cuda.max_memory_allocated``. It is taken in a fresh worker subprocess,
  on its first step: once memory was freed the allocator keeps it, so a warmed-up process under-reports it.
* **Worker subprocesses**: a script runs itself in a hidden worker mode (``script_command``); the worker prints
  one ``RESULT_MARKER`` JSON line (``emit_result``), which ``run_worker_command`` reads back.
* **Counting**: GMACs with ``torch.utils.flop_counter`` (MACs = FLOPs / 2) and parameter counts.
* **Reporting**: ratios, the environment (CPU model, threads, versions, git revision), tables and the JSON report.
* **Forward/train benchmarks** (``StepBenchmark``, ``run_step_benchmark``): the latency of all models of one
  (mode, batch size) round-robin in one worker, then the peak memory of each model in a worker of its own.

Importing it: the scripts run as ``python benchmarks/benchmark_x.py`` from the repository root, where Python puts
``benchmarks/`` first on ``sys.path``. Each script also inserts its own folder into ``sys.path`` before
``import harness``, so that it imports the same way when it is loaded from elsewhere (``runpy``, a test).
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch


# before anything imports transformers: the models are built from configurations, nothing is downloaded
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RESULT_MARKER = "BENCHMARK_RESULT "
DTYPES = ("float32", "bfloat16", "float16")
MODES = ("forward", "train")
FOUR_STAGES = ["stage1", "stage2", "stage3", "stage4"]
SWIN_TINY = {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": 7}

Step = Callable[[], Any]


# ----------------------------------------------------------------------------------------------------------------
# Set-up: threads, seeded inputs, model configurations, device helpers
# ----------------------------------------------------------------------------------------------------------------


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads in this process (``torch.set_num_threads``)."""
    torch.set_num_threads(threads)


def worker_env(threads: int) -> dict[str, str]:
    """This process's environment with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set to ``threads``, for a worker."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: inputs drawn from it are the same for every model and process."""
    return torch.Generator().manual_seed(seed)


def random_pixel_values(batch_size: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``randn`` images of shape ``(batch_size, 3, size, size)`` drawn from ``generator``."""
    return torch.randn(batch_size, 3, size, size, generator=generator)


def swin_config(architecture: Mapping[str, Any], out_features: list[str] | None = FOUR_STAGES, **overrides):
    """transformers' ``SwinConfig`` of ``architecture`` (e.g. ``SWIN_TINY``), returning ``out_features`` when used as
    a backbone (``None`` for a plain ``SwinModel``)."""
    from transformers import SwinConfig

    return SwinConfig(**architecture, out_features=None if out_features is None else list(out_features), **overrides)


def no_synchronize() -> None:
    """The ``synchronize`` of a CPU device: nothing to wait for."""


def device_and_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """``torch.device`` and ``torch.dtype`` of the command-line names ``device`` and ``dtype``."""
    return torch.device(device), getattr(torch, dtype)


def device_helpers(device: torch.device, dtype: torch.dtype) -> tuple[Callable[[], Any], Step]:
    """``(autocast, synchronize)`` for a device: autocast is a no-op in float32, synchronize a no-op on CPU."""

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return autocast, synchronize


def set_mode(model: torch.nn.Module, mode: str) -> None:
    """``model.eval()`` for ``"forward"``, ``model.train()`` for ``"train"``."""
    if mode == "forward":
        model.eval()
    else:
        model.train()


def freeze_batchnorm(model: torch.nn.Module) -> bool:
    """Put every BatchNorm layer of ``model`` in eval mode (training with a batch of one, where a 1x1 map cannot be
    batch-normalised). Returns whether there was any."""
    batchnorms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    for module in batchnorms:
        module.eval()
    return bool(batchnorms)


def forward_step(model: torch.nn.Module, inputs, autocast: Callable[[], Any]) -> Step:
    """The timed inference step: ``model(inputs)`` under ``torch.no_grad()`` and ``autocast``."""

    def step():
        with torch.no_grad(), autocast():
            model(inputs)

    return step


def train_step(model: torch.nn.Module, loss: Callable[[], torch.Tensor], autocast: Callable[[], Any]) -> Step:
    """The timed training step: drop the gradients, ``loss()`` under ``autocast``, backward; no optimizer."""

    def step():
        model.zero_grad(set_to_none=True)
        with autocast():
            value = loss()
        value.backward()

    return step


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


def time_iterations(step: Step, warmup: int, repeats: int, synchronize: Step = no_synchronize) -> list[float]:
    """Seconds of each of ``repeats`` timed calls of ``step``, after ``warmup`` untimed ones."""
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


def time_round_robin(
    steps: Mapping[str, Step],
    warmup: int,
    repeats: int,
    synchronize: Step = no_synchronize,
    skipped_errors: tuple[type[BaseException], ...] = (),
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Time several steps in ONE process, round-robin: each round runs every step once, so load changes on a shared
    machine hit all of them alike (one model after another drifted by +-15% on a shared machine).

    ``warmup`` untimed rounds, then ``repeats`` timed ones, the device synchronized around each timed call. A step
    raising one of ``skipped_errors`` during the warm-up is dropped. Returns ``({name: [seconds per timed round]},
    {name: error message of a dropped step})``.
    """
    steps = dict(steps)
    errors = {}
    for _ in range(warmup):
        for name, step in list(steps.items()):
            try:
                step()
            except skipped_errors as error:
                errors[name] = str(error)
                del steps[name]
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            synchronize()
            start = time.perf_counter()
            step()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return times, errors


def forward_round_robin(
    models: Mapping[str, torch.nn.Module],
    inputs: Mapping[str, Any],
    warmup: int,
    repeats: int,
    synchronize: Step = no_synchronize,
) -> dict[str, list[float]]:
    """``time_round_robin`` of ``models[name](inputs[name])`` under ``torch.no_grad()``: seconds per timed round."""
    steps = {name: _call(model, inputs[name]) for name, model in models.items()}
    with torch.no_grad():
        times, _ = time_round_robin(steps, warmup, repeats, synchronize)
    return times


def _call(model: torch.nn.Module, inputs) -> Step:
    """``model(inputs)`` as a step."""
    return lambda: model(inputs)


def median(times: Sequence[float]) -> float:
    """Median of ``times`` (the reported latency)."""
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------------------------


def read_proc_status_kb(field: str) -> int:
    """A kB figure of ``/proc/self/status``, e.g. ``VmRSS`` or ``VmHWM``."""
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

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        """Record the baseline and reset the high-water mark."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.method = "torch.cuda.max_memory_allocated"
        else:
            self.baseline_mb = read_proc_status_kb("VmRSS") / 1024
            hwm_reset = reset_rss_high_water_mark()
            self.method = "VmHWM after clear_refs reset" if hwm_reset else "VmHWM (not reset) minus baseline VmRSS"

    def stop(self) -> dict:
        """The result fields: ``peak_mem_mb`` (the increase), ``peak_mem_abs_mb``, ``baseline_mem_mb``,
        ``mem_method``."""
        if self.device.type == "cuda":
            peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak_mb = read_proc_status_kb("VmHWM") / 1024
        return {
            "peak_mem_mb": max(peak_mb - self.baseline_mb, 0.0),
            "peak_mem_abs_mb": peak_mb,
            "baseline_mem_mb": self.baseline_mb,
            "mem_method": self.method,
        }


def peak_memory_during(run: Callable[[], Any], device: torch.device) -> tuple[Any, dict]:
    """Call ``run()`` between ``PeakMemory.start`` and ``stop``; returns ``(what run returned, memory fields)``."""
    memory = PeakMemory(device)
    memory.start()
    result = run()
    return result, memory.stop()


def first_forward_peak_memory(model: torch.nn.Module, inputs, device: torch.device) -> dict:
    """Peak memory fields of one ``model(inputs)`` under ``torch.no_grad()``: call it in a fresh worker process."""
    with torch.no_grad():
        _, memory = peak_memory_during(lambda: model(inputs), device)
    return memory


# ----------------------------------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------------------------------


def count_gmacs(model: torch.nn.Module, inputs) -> float:
    """GMACs of one ``model(inputs)`` under ``torch.no_grad()``, from ``FlopCounterMode`` (MACs = FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(inputs)
    return counter.get_total_flops() / 2 / 1e9


def count_params(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(parameter.numel() for parameter in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Worker subprocesses
# ----------------------------------------------------------------------------------------------------------------


def script_command(script: str | Path, *options: Any) -> list[str]:
    """The command that runs ``script`` with this Python and ``options`` (each converted with ``str``)."""
    return [sys.executable, str(Path(script).resolve()), *map(str, options)]


def emit_result(result: dict) -> None:
    """Print a worker's result as one ``RESULT_MARKER`` JSON line (what ``run_worker_command`` reads back)."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


def run_worker_command(command: list[str], threads: int) -> dict:
    """Run a benchmark worker command in a fresh process with ``threads`` OpenMP/MKL threads; its last
    ``RESULT_MARKER`` line as JSON, or ``{"error": <last stderr line>}``."""
    process = subprocess.run(command, capture_output=True, text=True, env=worker_env(threads))
    for line in reversed(process.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    return {"error": (process.stderr.strip().splitlines() or [f"exit status {process.returncode}"])[-1]}


# ----------------------------------------------------------------------------------------------------------------
# Ratios
# ----------------------------------------------------------------------------------------------------------------


def meets_target(value: float, target: float | None) -> bool | None:
    """Whether ``value <= target``; ``None`` without a target."""
    return None if target is None else value <= target


def verdict(value: float, target: float) -> str:
    """``"target <= T: ok"`` or ``"target <= T: MISSED"``."""
    return f"target <= {target}: {'ok' if value <= target else 'MISSED'}"


def compute_ratios(
    results: Iterable[dict], specs: Iterable[tuple[str, str, float | None]], memory_ratio: bool = False
) -> list[dict]:
    """Median-latency ratios of ``specs`` (numerator, denominator, target upper bound or None) for every
    (mode, batch size) where both models succeeded, ordered by batch size then mode. With ``memory_ratio`` each
    entry also has the ratio of the peak memory increases."""
    by_key = {(r["model"], r["mode"], r["batch_size"]): r for r in results if "error" not in r}
    ratios = []
    for mode, batch_size in sorted({(mode, batch) for _, mode, batch in by_key}, key=lambda key: (key[1], key[0])):
        for numerator, denominator, target in specs:
            top, bottom = by_key.get((numerator, mode, batch_size)), by_key.get((denominator, mode, batch_size))
            if top is None or bottom is None:
                continue
            entry = {"numerator": numerator, "denominator": denominator, "mode": mode, "batch_size": batch_size}
            entry["ratio"] = top["median_s"] / bottom["median_s"]
            if memory_ratio:
                entry["memory_ratio"] = top["peak_mem_mb"] / max(bottom["peak_mem_mb"], 1e-9)
            entry["target_max"] = target
            entry["meets_target"] = meets_target(entry["ratio"], target)
            ratios.append(entry)
    return ratios


def format_ratios(ratios: Iterable[dict]) -> str:
    """One line per ``compute_ratios`` entry, with the memory ratio and the target verdict where there are any."""
    lines = []
    for r in ratios:
        line = f"{r['numerator']} / {r['denominator']} [{r['mode']}, batch {r['batch_size']}]: {r['ratio']:.3f}"
        if "memory_ratio" in r:
            line += f", peak memory {r['memory_ratio']:.3f}"
        if r["target_max"] is not None:
            line += f"  ({verdict(r['ratio'], r['target_max'])})"
        lines.append(line)
    return "\n".join(lines) if lines else "(no ratio: a needed model was not measured or failed)"


# ----------------------------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str | None:
    """``HEAD`` of this checkout, with ``-dirty`` if the tree has changes; ``None`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(device: str, dtype: str, threads: int) -> dict:
    """The ``environment`` of a report: date, versions, platform, CPU, threads, device, dtype, git revision, and
    the CUDA device on GPU."""
    import transformers

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "device": device,
        "dtype": dtype,
        "git_revision": git_revision(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda_version"] = torch.version.cuda
    return info


def describe_run(env: dict, *details: str) -> str:
    """The first line a script prints: versions, device, dtype, threads, CPU, then ``details``."""
    parts = [
        f"torch {env['torch']}",
        f"transformers {env['transformers']}",
        f"{env['device']} {env['dtype']}",
        f"{env['threads']} threads",
        env["cpu_model"],
    ]
    return ", ".join([*parts, *details])


# ----------------------------------------------------------------------------------------------------------------
# Tables and the JSON report
# ----------------------------------------------------------------------------------------------------------------


class Column(NamedTuple):
    """A table column: ``header``, the row key (or a function of the row), alignment, width, float precision."""

    header: str
    value: str | Callable[[dict], Any]
    align: str = ">"
    width: int = 8
    precision: int | None = None


def _cell(column: Column, row: dict) -> str:
    """One cell: the value formatted to the column, ``-`` where the row has none."""
    value = column.value(row) if callable(column.value) else row.get(column.value)
    if value is None:
        return f"{'-':{column.align}{column.width}}"
    precision = "" if column.precision is None else f".{column.precision}f"
    return f"{value:{column.align}{column.width}{precision}}"


def format_table(rows: Iterable[dict], columns: Sequence[Column]) -> str:
    """A plain-text table of ``rows``; a row's ``error`` is appended after its cells."""
    header = " ".join(f"{column.header:{column.align}{column.width}}" for column in columns).rstrip()
    lines = [header, "-" * len(header)]
    for row in rows:
        line = " ".join(_cell(column, row) for column in columns).rstrip()
        if "error" in row:
            line += f"  ERROR: {row['error']}"
        lines.append(line)
    return "\n".join(lines)


def write_report(path: Path, report: dict) -> None:
    """Write ``report`` as indented JSON to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def default_output(stem: str, device: str, suffix: str = "") -> Path:
    """``benchmarks/results/<stem>_<device without ':'><suffix>.json``."""
    return RESULTS_DIR / f"{stem}_{device.replace(':', '')}{suffix}.json"


# ----------------------------------------------------------------------------------------------------------------
# Command-line options
# ----------------------------------------------------------------------------------------------------------------


def add_timing_options(parser: argparse.ArgumentParser, warmup: int, repeats: int, threads: int = 2) -> None:
    """``--warmup``, ``--repeats`` and ``--threads`` with these defaults."""
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed iterations before timing")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed iterations (the median is reported)")
    parser.add_argument(
        "--threads", type=int, default=threads, help="torch.set_num_threads, also OMP/MKL threads of every worker"
    )


def add_device_options(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """``--device`` and, with ``dtype``, ``--dtype`` (half types run under ``torch.autocast``)."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    if dtype:
        parser.add_argument("--dtype", choices=DTYPES, default="float32", help="half types run under torch.autocast")


# ----------------------------------------------------------------------------------------------------------------
# Forward/train benchmarks: latency round-robin in one worker, peak memory in a worker per model
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedModel:
    """A model built for one worker, the step timed once per iteration, and whether BatchNorm was frozen."""

    model: torch.nn.Module
    step: Step
    batchnorm_frozen: bool = False


def no_worker_options(args: argparse.Namespace) -> list[str]:
    """No script-specific options for the workers."""
    return []


@dataclass(frozen=True)
class StepBenchmark:
    """What a forward/train benchmark script supplies; the harness does the rest.

    * ``script``: the script's path; its workers are fresh processes of it (hidden ``--worker``/``--latency-worker``).
    * ``make_inputs(args, device)``: the seeded inputs, shared by every model of a worker.
    * ``prepare(args, name, device, inputs, autocast)``: model ``name`` built (after ``torch.manual_seed(args.seed)``),
      moved to ``device`` and put in ``args.mode``, with its step, as a ``PreparedModel``.
    * ``worker_options(args)``: extra command-line options the workers need.
    * ``skipped_errors``: errors that drop a model from the latency run instead of failing it; ``min_warmup``:
      untimed rounds run at least (one finds the models that raise them).
    """

    script: str
    make_inputs: Callable[[argparse.Namespace, torch.device], Any]
    prepare: Callable[..., PreparedModel]
    worker_options: Callable[[argparse.Namespace], list[str]] = no_worker_options
    skipped_errors: tuple[type[BaseException], ...] = ()
    min_warmup: int = 0


def step_benchmark_parser(
    description: str, models: Sequence[str], batch_sizes: list[int], size: int, output_help: str, quick_help: str
) -> argparse.ArgumentParser:
    """The options of a forward/train benchmark (see benchmarks/README.md) and its hidden worker options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", nargs="+", choices=models, default=list(models), help="models to measure")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="forward and/or train")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=batch_sizes)
    parser.add_argument("--size", type=int, default=size, help="square input side in pixels")
    add_device_options(parser)
    add_timing_options(parser, warmup=1, repeats=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--output", type=Path, default=None, help=output_help)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    # hidden worker mode: one measurement, printed as one JSON line
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--latency-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    return parser


QUICK_SIZE = 128


def parse_step_benchmark_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, output_stem: str, quick_suffix: str = ""
) -> argparse.Namespace:
    """Parse ``argv``; ``--quick`` sets size 128, batch 1, 1 repeat and no warmup; the default output is
    ``benchmarks/results/<output_stem>_<device><quick_suffix if --quick>.json``."""
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch_sizes, args.repeats, args.warmup = QUICK_SIZE, [1], 1, 0
    if args.output is None:
        args.output = default_output(output_stem, args.device, quick_suffix if args.quick else "")
    return args


def _worker_setup(args: argparse.Namespace, bench: StepBenchmark):
    """Threads, device, ``(autocast, synchronize)`` and inputs of a worker."""
    set_threads(args.threads)
    device, dtype = device_and_dtype(args.device, args.dtype)
    autocast, synchronize = device_helpers(device, dtype)
    return device, autocast, synchronize, bench.make_inputs(args, device)


def _prepare(args: argparse.Namespace, bench: StepBenchmark, name: str, device, inputs, autocast) -> PreparedModel:
    """``bench.prepare`` with the weights seeded by ``args.seed``."""
    torch.manual_seed(args.seed)
    return bench.prepare(args, name, device, inputs, autocast)


def run_memory_worker(args: argparse.Namespace, bench: StepBenchmark) -> dict:
    """Peak memory and parameter count of the one model of ``args.models`` for one (mode, batch size), in a process
    of its own so that nothing else's allocations count: ``args.warmup`` and ``args.repeats`` steps (0 and 1 from
    the driver) between ``PeakMemory.start`` and ``stop``."""
    device, autocast, synchronize, inputs = _worker_setup(args, bench)
    (name,) = args.models
    prepared = _prepare(args, bench, name, device, inputs, autocast)
    times, memory = peak_memory_during(
        lambda: time_iterations(prepared.step, args.warmup, args.repeats, synchronize), device
    )
    return {
        "memory_run_s": times,
        "params_m": count_params(prepared.model) / 1e6,
        "batchnorm_frozen": prepared.batchnorm_frozen,
        **memory,
    }


def run_latency_worker(args: argparse.Namespace, bench: StepBenchmark) -> dict:
    """Latency of every model of ``args.models`` for one (mode, batch size), round-robin in ONE process:
    ``{"times": {model: [seconds per timed round]}, "errors": {model: message}}``."""
    device, autocast, synchronize, inputs = _worker_setup(args, bench)
    steps = {name: _prepare(args, bench, name, device, inputs, autocast).step for name in args.models}
    warmup = max(args.warmup, bench.min_warmup)
    times, errors = time_round_robin(steps, warmup, args.repeats, synchronize, bench.skipped_errors)
    return {"times": times, "errors": errors}


def serve_worker(args: argparse.Namespace, bench: StepBenchmark) -> bool:
    """In a hidden worker mode, run its measurement and print the result line. Returns whether it was a worker."""
    if not (args.worker or args.latency_worker):
        return False
    emit_result(run_latency_worker(args, bench) if args.latency_worker else run_memory_worker(args, bench))
    return True


def step_worker_command(
    args: argparse.Namespace, bench: StepBenchmark, models: list[str], mode: str, batch_size: int, latency: bool
) -> list[str]:
    """The worker command of one measurement. Memory workers measure the first iteration of a fresh process (once
    memory was freed the allocator keeps it, so a warmed-up process under-reports what a step needs); latency
    workers run the requested counts."""
    warmup, repeats = (args.warmup, args.repeats) if latency else (0, 1)
    return script_command(
        bench.script, "--latency-worker" if latency else "--worker",
        "--models", *models, "--mode", mode, "--batch-size", batch_size,
        "--size", args.size, "--device", args.device, "--dtype", args.dtype,
        "--threads", args.threads, "--seed", args.seed, *bench.worker_options(args),
        "--warmup", warmup, "--repeats", repeats,
    )  # fmt: skip


def run_step_benchmark(args: argparse.Namespace, bench: StepBenchmark) -> list[dict]:
    """Per batch size and mode: the round-robin latency worker of all models, then one memory worker per model.
    One result row per (model, mode, batch size), or a row with the ``error`` that stopped it."""
    results = []
    for batch_size in args.batch_sizes:
        for mode in args.modes:
            print(f"{mode} batch={batch_size}: latency of {len(args.models)} models, round-robin ...", end=" ",
                  file=sys.stderr, flush=True)  # fmt: skip
            command = step_worker_command(args, bench, args.models, mode, batch_size, latency=True)
            latency = run_worker_command(command, args.threads)
            print(latency.get("error", "done"), file=sys.stderr, flush=True)
            for model in args.models:
                base = {"model": model, "mode": mode, "batch_size": batch_size, "size": args.size}
                error = latency.get("error") or latency.get("errors", {}).get(model)
                if not error:
                    command = step_worker_command(args, bench, [model], mode, batch_size, latency=False)
                    memory = run_worker_command(command, args.threads)
                    error = memory.get("error")
                if error:
                    results.append({**base, "error": error})
                    continue
                times = latency["times"][model]
                median_s = median(times)
                results.append({
                    **memory, **base, "median_s": median_s, "images_per_s": batch_size / median_s, "times_s": times,
                })  # fmt: skip
    return results


STEP_RESULT_COLUMNS = (
    Column("model", "model", "<", 24),
    Column("mode", "mode", "<", 8),
    Column("batch", "batch_size", ">", 5),
    Column("s/iter", "median_s", ">", 9, 4),
    Column("img/s", "images_per_s", ">", 8, 2),
    Column("peak MB", "peak_mem_mb", ">", 9, 1),
    Column("params M", "params_m", ">", 9, 2),
    Column(" note", lambda row: " BN frozen" if row.get("batchnorm_frozen") else "", "<", 0),
)


def step_report(env: dict, args: argparse.Namespace, results: list[dict], ratios: list[dict]) -> dict:
    """The JSON report of a forward/train benchmark: ``environment``, ``settings``, ``results``, ``ratios``."""
    settings = {
        key: getattr(args, key)
        for key in ("models", "modes", "batch_sizes", "size", "warmup", "repeats", "seed", "quick")
    }
    return {"environment": env, "settings": settings, "results": results, "ratios": ratios}


def step_benchmark_main(
    args: argparse.Namespace,
    bench: StepBenchmark,
    ratio_specs: Iterable[tuple[str, str, float | None]],
    memory_ratio: bool = False,
    details: Sequence[str] = (),
) -> None:
    """The ``main`` of a forward/train benchmark: a worker's one measurement, or the whole run (all workers), the
    table, the ratios of ``ratio_specs`` (``compute_ratios``) and the JSON report. ``details`` go into the first
    line printed."""
    if serve_worker(args, bench):
        return
    env = environment(args.device, args.dtype, args.threads)
    print(
        describe_run(env, f"size {args.size}", *details, f"warmup {args.warmup}", f"repeats {args.repeats}"), flush=True
    )
    results = run_step_benchmark(args, bench)
    ratios = compute_ratios(results, ratio_specs, memory_ratio)
    print()
    print(format_table(results, STEP_RESULT_COLUMNS))
    print()
    print("Latency ratios (median s/iter):")
    print(format_ratios(ratios))
    if args.quick:
        print("(--quick is a smoke run: tiny input, no warmup, one repeat; its figures and verdicts mean nothing)")
    write_report(args.output, step_report(env, args, results, ratios))
    print(f"\nwrote {args.output}")
