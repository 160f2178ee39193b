"""The measurement harness shared by the benchmark scripts of this folder.

Every script measures our models against named peers from transformers in the same run, and uses these pieces:

* **Set-up**: ``HF_HUB_OFFLINE=1`` (set on import, before transformers is imported), the torch thread count, seeded
  inputs, the Swin-T configuration of the peers, and ``(autocast, synchronize)`` helpers for a device and dtype.
* **Timing**: ``time_iterations`` (warm-up, then timed iterations of one step) and ``time_round_robin`` (every round
  runs each model once, so load changes on a shared machine hit all models alike); the median is reported.
  ``forward_round_robin_with_matmul`` adds a square matmul (``gemm_step``) to the models' forward rounds.
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
* **Pixel-decoder benchmarks** (``DecoderBenchmark``, ``decoder_benchmark_main``): decoders on seeded backbone
  feature maps in one process, timed round-robin in fp32 and bf16 autocast with a square GEMM as one more step of the
  same rounds (the machine's throughput under the same load), forward hooks timing chosen modules
  (``ModuleTimer``), GMACs with analytic counts of what ``FlopCounterMode`` does not see (``AnalyticMacs``, e.g. the
  deformable attention's sampling), a ``torch.profiler`` pass, peak memory in a fresh process per decoder, ratios of
  decoder pairs, and ``--combine`` of several runs' reports.

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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F


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
#: suffix of a model's twin compiled with ``torch.compile`` (``--compile``), timed in the same rounds as the model
COMPILED = "@compiled"


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


#: where a half-dtype run's autocast regions begin and end (``--autocast-scope``)
AUTOCAST_SCOPES = ("forward", "run")


def autocast_region(device: torch.device, dtype: torch.dtype, scope: str) -> Callable[[], Any]:
    """The context a run enters around all its rounds (``time_round_robin``'s ``region``) for an autocast ``scope``:

    * ``"forward"`` (the default): nothing. Each timed forward enters and leaves its own ``torch.autocast`` region
      (``device_helpers``), and leaving it empties autocast's cache of cast weights: every forward casts the float32
      weights that autocast casts again, as every call does where each call is its own region (transformers'
      ``Trainer`` enters one per evaluation step).
    * ``"run"``: one ``torch.autocast`` region around all the rounds, inside which each forward's own region nests,
      so autocast casts a weight once and reuses the cast until the run ends, as a loop inside one ``with
      torch.autocast(...)`` does. Only what autocast itself casts is cached (leaf float32 tensors that require a
      gradient, such as parameters, passed to the operators it casts: ``F.linear``, the convolutions); a weight a
      model casts itself (``.to()``) is cast in every forward either way.

    In float32 both scopes are the same: nothing runs under autocast."""
    if scope not in AUTOCAST_SCOPES:
        raise ValueError(f"autocast scope {scope!r}; expected one of {AUTOCAST_SCOPES}")
    if scope == "forward" or dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def add_autocast_scope_option(parser: argparse.ArgumentParser) -> None:
    """``--autocast-scope`` (:func:`autocast_region`)."""
    parser.add_argument(
        "--autocast-scope",
        choices=AUTOCAST_SCOPES,
        default="forward",
        help="half dtypes: one autocast region per forward (autocast re-casts the weights in each), or one around "
        "all the rounds (the casts kept across forwards)",
    )


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


def forward_step(model: Callable, inputs, autocast: Callable[[], Any]) -> Step:
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


def balanced_orders(count: int) -> list[list[int]]:
    """Orders of ``count`` steps for successive rounds in which every step comes right after every other step
    equally often (a Williams design): ``count`` orders for an even ``count``, each ordered pair adjacent once;
    those and their reversals for an odd one, each pair adjacent twice. Row ``i`` is ``(a_j + i) mod count`` with
    ``a = 0, 1, count - 1, 2, count - 2, ...``."""
    if count < 2:
        return [list(range(count))]
    sequence = [0]
    for k in range(1, count):
        sequence.append((k + 1) // 2 if k % 2 else count - k // 2)
    orders = [[(step + row) % count for step in sequence] for row in range(count)]
    return orders if count % 2 == 0 else orders + [order[::-1] for order in orders]


def time_round_robin(
    steps: Mapping[str, Step],
    warmup: int,
    repeats: int,
    synchronize: Step = no_synchronize,
    skipped_errors: tuple[type[BaseException], ...] = (),
    region: Callable[[], Any] = contextlib.nullcontext,
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Time several steps in ONE process, round-robin: each round runs every step once, so load changes on a shared
    machine hit all of them alike (one model after another drifted by +-15% on a shared machine). ``region``: a
    context entered once around all the rounds, warm-up and timed (:func:`autocast_region`).

    The timed rounds take their orders in turn from :func:`balanced_orders`, so that no step is always timed right
    after the same one: a step leaves the caches, the allocator and the processor in a state of its own (right after
    the 2048^2 float32 matmul of the CPU scripts, Swin-T at 224 took 61.5 against 58.5 ms after Pale-T, and Pale-T
    75.5 against 73.1 ms after Pale-T optimised, on the Xeon of benchmarks/README.md), and in one fixed order that
    cost fell on the same model in every round. ``warmup`` untimed rounds in the steps' order, then ``repeats`` timed
    ones, the device synchronized around each timed call. A step raising one of ``skipped_errors`` during the
    warm-up is dropped. Returns ``({name: [seconds per timed round]}, {name: error message of a dropped step})``,
    the times in round order.
    """
    steps = dict(steps)
    errors = {}
    with region():
        for _ in range(warmup):
            for name, step in list(steps.items()):
                try:
                    step()
                except skipped_errors as error:
                    errors[name] = str(error)
                    del steps[name]
        times = {name: [] for name in steps}
        names = list(steps)
        orders = balanced_orders(len(names))
        for repeat in range(repeats):
            for position in orders[repeat % len(orders)]:
                name, step = names[position], steps[names[position]]
                synchronize()
                start = time.perf_counter()
                step()
                synchronize()
                times[name].append(time.perf_counter() - start)
    return times, errors


def compiled_name(name: str) -> str:
    """The name of ``name``'s twin compiled with ``torch.compile``."""
    return name + COMPILED


def first_call_seconds(step: Step, synchronize: Step = no_synchronize) -> float:
    """Seconds of one call of ``step``: for a compiled step its first call, which traces and compiles it (the
    backward graph too, for a training step)."""
    synchronize()
    start = time.perf_counter()
    step()
    synchronize()
    return time.perf_counter() - start


def compiled_ratio_specs(
    models: Iterable[str], specs: Iterable[tuple[str, str, float | None]]
) -> list[tuple[str, str, float | None]]:
    """The ratios a ``--compile`` run adds: each model compiled / eager, and every ratio of ``specs`` between the
    compiled twins (without a target: the targets are the eager ones). ``compute_ratios`` skips those of models that
    were not run."""
    own = [(compiled_name(name), name, None) for name in models]
    return own + [(compiled_name(top), compiled_name(bottom), None) for top, bottom, _ in specs]


class ForwardRounds(NamedTuple):
    """What ``forward_round_robin_with_matmul`` measured: ``times`` ``{model: [seconds per timed round]}``,
    ``matmul_times`` (seconds of the matmul per timed round, or None) and ``compile_s`` ``{compiled twin: seconds of
    its first call}`` (empty without ``compile_models``)."""

    times: dict[str, list[float]]
    matmul_times: list[float] | None
    compile_s: dict[str, float]


def forward_round_robin_with_matmul(
    models: Mapping[str, torch.nn.Module],
    inputs: Mapping[str, Any],
    warmup: int,
    repeats: int,
    synchronize: Step = no_synchronize,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    matmul_dtype: torch.dtype | None = torch.float32,
    matmul_size: int | None = None,
    compile_models: bool = False,
    eager_forwards: Mapping[str, Callable] | None = None,
    region: Callable[[], Any] = contextlib.nullcontext,
) -> ForwardRounds:
    """``time_round_robin`` of ``models[name](inputs[name])`` under ``torch.no_grad()`` and ``autocast``
    (``forward_step``), with one ``matmul_size`` (default ``GEMM_SIZE``) square matmul in ``matmul_dtype`` as one more
    step of every round (``gemm_step``, named ``gemm_name(size)``): the machine's matmul throughput under the same
    load. The matmul runs on the CPU; ``matmul_dtype=None`` leaves it out (on CUDA).

    With ``compile_models`` every model also runs as ``torch.compile(model)`` (the same weights), named
    ``compiled_name(name)``, in the same rounds; its first call, which compiles it, is timed on its own before the
    warm-up. ``eager_forwards``: what the eager step of a model calls instead of the model itself (a wrapper that
    records something per forward, such as ``AttentionTimer.wrap(model)``); the compiled twins compile the models.
    ``region``: entered around all the rounds (:func:`autocast_region`; the compiled twins' first calls run outside
    it)."""
    size = GEMM_SIZE if matmul_size is None else matmul_size
    forwards = {**models, **(eager_forwards or {})}
    steps = {name: forward_step(forwards[name], inputs[name], autocast) for name in models}
    compile_s = {}
    if compile_models:
        for name, model in models.items():
            step = forward_step(torch.compile(model), inputs[name], autocast)
            compile_s[compiled_name(name)] = first_call_seconds(step, synchronize)
            steps[compiled_name(name)] = step
    if matmul_dtype is not None:
        steps[gemm_name(size)] = gemm_step(size, matmul_dtype)
    times, _ = time_round_robin(steps, warmup, repeats, synchronize, region=region)
    matmul_times = times.pop(gemm_name(size)) if matmul_dtype is not None else None
    return ForwardRounds(times, matmul_times, compile_s)


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


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_output, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_output, query, key, value)


def _onednn_weight_shape(args: tuple, default_count: int, binary_count: int):
    """The weight's shape among the arguments after the input of a oneDNN pointwise operator, which FlopCounterMode
    gives as shapes and by packet (every overload calls one formula): ``.default`` (weight, bias, ...: the weight
    first) or ``.binary`` (other, weight, bias, ...: the added map first, in a post-op that counts no products); the
    overloads are told apart by their number of arguments (``default_count`` / ``binary_count`` after the input)."""
    if len(args) == default_count:
        return args[0]
    if len(args) == binary_count:
        return args[1]
    raise ValueError(
        f"a oneDNN pointwise operator with {len(args) + 1} arguments; expected "
        f"{default_count + 1} (.default) or {binary_count + 1} (.binary)"
    )


def _onednn_linear_flops(inputs_shape, *args, out_shape=None, **kwargs) -> int:
    # (..., C_in) tokens times the (C_out, C_in) weight, 2 FLOPs per multiply-add; mkldnn::_linear_pointwise.default:
    # (X, W, B, attr, scalars, algorithm), .binary: (X, other, W, B, attr)
    weight_shape = _onednn_weight_shape(args, 5, 4)
    return 2 * inputs_shape.numel() * weight_shape[0]


def _onednn_convolution_flops(inputs_shape, *args, out_shape=None, **kwargs) -> int:
    # each output element: C_in / groups x kh x kw multiply-adds (the weight's trailing sizes), 2 FLOPs each;
    # mkldnn::_convolution_pointwise.default: (X, W, B, padding, stride, dilation, groups, attr, scalars, algorithm),
    # .binary: (X, other, W, B, padding, stride, dilation, groups, binary_attr, alpha, unary_attr, scalars, algorithm)
    weight_shape = _onednn_weight_shape(args, 9, 12)
    return 2 * out_shape.numel() * weight_shape[1:].numel()


def flop_counter(custom_mapping: Mapping | None = None):
    """``FlopCounterMode`` that also counts the CPU's fused attention kernel (torch's own table has the CUDA kernels
    only, so SDPA on the CPU counted as zero FLOPs) and oneDNN's matmul primitive and convolution with packed weights,
    which the package's dense layers run at inference on the CPU (``hf_semseg/models/modeling_linear.py``) and Pale's
    blocks optimised for inference (``PalePreTrainedModel.optimize_for_inference``); torch's table does not know
    them either. ``custom_mapping``: formulas of further operators."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    }
    if torch.backends.mkldnn.is_available():
        mapping[torch.ops.mkldnn._linear_pointwise] = _onednn_linear_flops
        mapping[torch.ops.mkldnn._convolution_pointwise] = _onednn_convolution_flops
    return FlopCounterMode(display=False, custom_mapping={**mapping, **(custom_mapping or {})})


def count_gmacs(model: torch.nn.Module, inputs) -> float:
    """GMACs of one ``model(inputs)`` under ``torch.no_grad()``, from :func:`flop_counter` (MACs = FLOPs / 2)."""
    counter = flop_counter()
    with torch.no_grad(), counter:
        model(inputs)
    return counter.get_total_flops() / 2 / 1e9


def count_params(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(parameter.numel() for parameter in model.parameters())


def count_step_gmacs(step: Step) -> float:
    """GMACs of one call of ``step`` (forward, or forward + backward for a ``train_step``), from ``FlopCounterMode``
    (MACs = FLOPs / 2); the call runs for real, so it also serves as a warm-up iteration."""
    counter = flop_counter()
    with counter:
        step()
    return counter.get_total_flops() / 2 / 1e9


def matmul_tflops(
    device: torch.device, dtype: torch.dtype, size: int, samples: int = 7, inner: int = 10, warmup: int = 3
) -> list[float]:
    """The device's dense matmul throughput: TFLOP/s of ``samples`` timings of ``inner`` back-to-back ``size``
    square matmuls in ``dtype`` (``2 * size**3`` FLOPs each), after ``warmup`` untimed ones, the device synchronized
    before and after each timing. Its median is the peak that achieved throughputs are compared with."""
    _, synchronize = device_helpers(device, dtype)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    synchronize()
    throughputs = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        synchronize()
        throughputs.append(2 * size**3 * inner / (time.perf_counter() - start) / 1e12)
    del a, b, out
    return throughputs


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
            if memory_ratio and "peak_mem_mb" in top and "peak_mem_mb" in bottom:
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


def environment(device: str, dtype: str, threads: int, autocast_scope: str | None = None) -> dict:
    """The ``environment`` of a report: date, versions, platform, CPU, threads, device, dtype, git revision, the
    ``autocast_scope`` where the script has one (:func:`autocast_region`), and the CUDA device on GPU."""
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
    if autocast_scope is not None:
        info["autocast_scope"] = autocast_scope
    if device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda_version"] = torch.version.cuda
    return info


def describe_run(env: dict, *details: str) -> str:
    """The first line a script prints: versions, device, dtype (with the autocast scope where it is not one region
    per forward), threads, CPU, then ``details``."""
    scope = env.get("autocast_scope")
    parts = [
        f"torch {env['torch']}",
        f"transformers {env['transformers']}",
        f"{env['device']} {env['dtype']}" + (f" (autocast scope: {scope})" if scope not in (None, "forward") else ""),
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
        add_autocast_scope_option(parser)


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
    description: str,
    models: Sequence[str],
    batch_sizes: list[int],
    size: int,
    output_help: str,
    quick_help: str,
    default_models: Sequence[str] | None = None,
) -> argparse.ArgumentParser:
    """The options of a forward/train benchmark (see benchmarks/README.md) and its hidden worker options;
    ``--models`` defaults to ``default_models`` (all ``models`` when None)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--models", nargs="+", choices=models, default=list(default_models or models), help="models to measure"
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="forward and/or train")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=batch_sizes)
    parser.add_argument("--size", type=int, default=size, help="square input side in pixels")
    add_device_options(parser)
    add_timing_options(parser, warmup=1, repeats=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--output", type=Path, default=None, help=output_help)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--compile",
        action="store_true",
        help=f"also time every model compiled with torch.compile ('<model>{COMPILED}', the same rounds; latency only)",
    )
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
    """Latency of every model of ``args.models`` for one (mode, batch size), round-robin in ONE process, with a
    square matmul in the run's dtype as one more step of every round (the machine's own peak, measured under the same
    load), and each step's GMACs (one counted call, run before the warm-up): ``{"times": {model: [seconds per timed
    round]}, "gmacs": {model: GMACs}, "gemm": {"size", "dtype", "times_s"}, "errors": {model: message}, "compile_s":
    {compiled twin: seconds of its first call}}``. The GEMM is skipped on CUDA (``benchmarks/run_cuda.py`` measures
    the device's peak). With ``--compile`` every model has a twin ``compiled_name(model)`` in the same rounds."""
    device, autocast, synchronize, inputs = _worker_setup(args, bench)
    steps, gmacs, errors, compile_s = {}, {}, {}, {}
    for name in args.models:
        step = _prepare(args, bench, name, device, inputs, autocast).step
        try:
            gmacs[name] = count_step_gmacs(step)
        except bench.skipped_errors as error:
            errors[name] = str(error)
            continue
        steps[name] = step
        if args.compile:
            # a second instance with the same weights, its forward compiled (nn.Module.compile: the step's closures
            # call the module); the first call compiles the forward, and the backward for a training step
            twin = _prepare(args, bench, name, device, inputs, autocast)
            twin.model.compile()
            try:
                compile_s[compiled_name(name)] = first_call_seconds(twin.step, synchronize)
            except Exception as error:  # a compiler failure drops the twin, not the run  # noqa: BLE001
                errors[compiled_name(name)] = f"torch.compile failed: {type(error).__name__}: {error}".splitlines()[0]
                continue
            steps[compiled_name(name)] = twin.step
            gmacs[compiled_name(name)] = gmacs[name]
    gemm = None
    _, dtype = device_and_dtype(args.device, args.dtype)
    if device.type == "cpu":
        gemm = {"size": GEMM_SIZE, "dtype": args.dtype, "times_s": []}
        steps[gemm_name(GEMM_SIZE)] = gemm_step(GEMM_SIZE, dtype)
    # the counted call was each model's first warm-up iteration (the GEMM needs none)
    warmup = max(args.warmup - 1, bench.min_warmup)
    region = autocast_region(device, dtype, args.autocast_scope)
    times, round_errors = time_round_robin(steps, warmup, args.repeats, synchronize, bench.skipped_errors, region)
    errors.update(round_errors)
    if gemm is not None:
        gemm["times_s"] = times.pop(gemm_name(GEMM_SIZE))
    return {"times": times, "gmacs": gmacs, "gemm": gemm, "errors": errors, "compile_s": compile_s}


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
        "--size", args.size, "--device", args.device, "--dtype", args.dtype, "--autocast-scope", args.autocast_scope,
        "--threads", args.threads, "--seed", args.seed, *bench.worker_options(args),
        "--warmup", warmup, "--repeats", repeats, *(["--compile"] if latency and args.compile else []),
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
            gemm = latency.get("gemm")
            gemm_gflops_median = gemm_gflops(gemm["size"], median(gemm["times_s"])) if gemm else None
            if gemm:
                print(f"{mode} batch={batch_size}: {gemm['size']}^2 {gemm['dtype']} matmul in the same rounds: "
                      f"{gemm_gflops_median:.1f} GFLOP/s (median)", file=sys.stderr, flush=True)  # fmt: skip
            twins = [compiled_name(model) for model in args.models] if args.compile else []
            for model in [*args.models, *twins]:
                base = {"model": model, "mode": mode, "batch_size": batch_size, "size": args.size}
                error = latency.get("error") or latency.get("errors", {}).get(model)
                memory = {}
                if model in twins:
                    # latency only: a compiled model's first step in a fresh process is its compilation
                    error = error or latency.get("errors", {}).get(model.removesuffix(COMPILED))
                    if model in latency.get("compile_s", {}):
                        memory = {"compile_s": latency["compile_s"][model]}
                elif not error:
                    command = step_worker_command(args, bench, [model], mode, batch_size, latency=False)
                    memory = run_worker_command(command, args.threads)
                    error = memory.get("error")
                if error:
                    results.append({**base, "error": error})
                    continue
                times = latency["times"][model]
                median_s = median(times)
                row = {**memory, **base, "median_s": median_s, "images_per_s": batch_size / median_s, "times_s": times}
                if model in latency.get("gmacs", {}):
                    row["gmacs"] = latency["gmacs"][model]
                    row["achieved_gflops"] = 2 * row["gmacs"] / median_s
                    if gemm:
                        row["matmul_gflops"] = gemm_gflops_median
                        row["matmul_dtype"] = gemm["dtype"]
                        row["fraction_of_matmul"] = row["achieved_gflops"] / gemm_gflops_median
                results.append(row)
    return results


STEP_RESULT_COLUMNS = (
    Column("model", "model", "<", 32),
    Column("mode", "mode", "<", 8),
    Column("batch", "batch_size", ">", 5),
    Column("s/iter", "median_s", ">", 9, 4),
    Column("img/s", "images_per_s", ">", 8, 2),
    Column("peak MB", "peak_mem_mb", ">", 9, 1),
    Column("params M", "params_m", ">", 9, 2),
    Column("GMACs", "gmacs", ">", 8, 1),
    Column("GFLOP/s", "achieved_gflops", ">", 8, 1),
    Column("of matmul", "fraction_of_matmul", ">", 9, 3),
    Column("compile s", "compile_s", ">", 9, 1),
    Column(" note", lambda row: " BN frozen" if row.get("batchnorm_frozen") else "", "<", 0),
)


def step_report(env: dict, args: argparse.Namespace, results: list[dict], ratios: list[dict]) -> dict:
    """The JSON report of a forward/train benchmark: ``environment``, ``settings``, ``results``, ``ratios``."""
    settings = {
        key: getattr(args, key)
        for key in ("models", "modes", "batch_sizes", "size", "warmup", "repeats", "seed", "quick", "compile")
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
    env = environment(args.device, args.dtype, args.threads, args.autocast_scope)
    print(
        describe_run(env, f"size {args.size}", *details, f"warmup {args.warmup}", f"repeats {args.repeats}"), flush=True
    )
    results = run_step_benchmark(args, bench)
    ratio_specs = list(ratio_specs)
    if args.compile:
        ratio_specs += compiled_ratio_specs(args.models, ratio_specs)
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


# ----------------------------------------------------------------------------------------------------------------
# Decoder benchmarks: pixel decoders on seeded feature maps, timed round-robin in one process with a GEMM step
# ----------------------------------------------------------------------------------------------------------------

#: MACs per value that a deformable operator samples: 4 for the bilinear interpolation, 1 for the modulation mask
#: (deformable convolution) or the attention weight (multi-scale deformable attention)
SAMPLING_MACS = 5
#: side of the square fp32/bf16 matmul that is one more step of the decoders' rounds
GEMM_SIZE = 2048
#: suffix of the bf16 step that runs a decoder of ``DecoderBenchmark.outside_autocast`` fully under autocast
IN_AUTOCAST = "@autocast"
#: the row figures whose numerator / denominator ratios a decoder benchmark reports
DECODER_RATIO_KEYS = ("median_s", "bf16_median_s", "gmacs", "params_m", "peak_mem_mb")
#: the settings of a decoder benchmark's report taken from its options
DECODER_SETTINGS = ("models", "size", "warmup", "repeats", "bf16_repeats", "seed")


def feature_maps(size: int, seed: int, channels: Sequence[int], strides: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Seeded ``randn`` backbone feature maps of one ``size`` x ``size`` image: ``(1, c, size // s, size // s)`` for
    each channel count ``c`` and stride ``s``."""
    generator = seeded_generator(seed)
    return tuple(
        torch.randn(1, c, size // s, size // s, generator=generator) for c, s in zip(channels, strides, strict=True)
    )


def feature_shapes(size: int, channels: Sequence[int], strides: Sequence[int]) -> list[list[int]]:
    """The shapes of ``feature_maps``."""
    return [[1, c, size // s, size // s] for c, s in zip(channels, strides, strict=True)]


def load_average() -> float | None:
    """The 1-minute load average of the machine (``/proc/loadavg``): other processes competing for the cores."""
    try:
        with open("/proc/loadavg") as loadavg:
            return float(loadavg.read().split()[0])
    except OSError:
        return None


def gemm_name(size: int) -> str:
    """The name of the GEMM step among the decoders' steps and times: ``gemm_<size>``."""
    return f"gemm_{size}"


def gemm_step(size: int, dtype: torch.dtype) -> Step:
    """One ``size`` square matmul in ``dtype`` on seeded operands, through the fastest dense kernel PyTorch has on the
    CPU: ``torch.mm`` into a preallocated output in a half type (oneDNN's kernel), and in float32, where oneDNN is
    available, the product as a oneDNN 1x1 convolution of a channels-last map, as the models' dense layers run
    (``hf_semseg/models/modeling_linear.py``). ``torch.mm`` in float32 calls MKL's sgemm, which runs its AVX2 code on
    AMD processors: about half of oneDNN's throughput on the AMD EPYC we benchmark on."""
    generator = seeded_generator(1)
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
    if dtype == torch.float32 and torch.backends.mkldnn.is_available():
        # a @ b = conv2d(a's rows as a (1, size, size, 1) channels-last map, b^T as (size, size, 1, 1) kernels)
        rows = a.reshape(1, size, 1, size).permute(0, 3, 1, 2)
        kernels = b.t().contiguous()[:, :, None, None]
        return lambda: F.conv2d(rows, kernels)
    out = torch.empty(size, size, dtype=dtype)
    return lambda: torch.mm(a, b, out=out)


def gemm_gflops(size: int, seconds: float) -> float:
    """GFLOP/s of one ``size`` square matmul (``2 * size**3`` FLOPs) that took ``seconds``."""
    return 2 * size**3 / seconds / 1e9


class AttentionTimer:
    """The seconds a model spends inside its attention functions (transformers' attention-interface callables: the
    scores, the softmax and the weighted sum, with the copies they make), per forward.

    ``timed(function)`` returns ``function`` timed into the current forward; ``wrap(model)`` a callable that runs one
    forward of ``model`` and records its attention seconds in ``calls`` (one float per forward). The scripts patch the
    place where each model looks its attention function up so that it gets ``timed(...)`` of it. Forward hooks cannot
    do this: the attention function is not a module."""

    def __init__(self):
        self.current = 0.0
        self.calls: list[float] = []
        self.active = False  # inside a forward of ``wrap``: the scripts route a shared lookup to the active timer

    def timed(self, function: Callable) -> Callable:
        def timed_function(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.current += time.perf_counter() - start

        return timed_function

    def wrap(self, model: Callable) -> Callable:
        def timed_forward(*args, **kwargs):
            self.current = 0.0
            self.active = True
            try:
                output = model(*args, **kwargs)
            finally:
                self.active = False
            self.calls.append(self.current)
            return output

        return timed_forward

    def fields(self, times: Sequence[float]) -> dict:
        """Row fields of the last ``len(times)`` forwards, which took ``times`` (the timed rounds):
        ``attention_share``, the median over the rounds of the attention seconds over the forward's, and
        ``attention_s``, the attention seconds per round."""
        if len(self.calls) < len(times):
            raise ValueError(f"{len(self.calls)} forwards recorded for {len(times)} timed rounds")
        calls = self.calls[len(self.calls) - len(times) :]
        shares = [attention / seconds for attention, seconds in zip(calls, times, strict=True)]
        return {"attention_share": median(shares), "attention_s": calls}


class ModuleTimer:
    """Forward hooks that add up the seconds spent in the modules of ``classes`` (key -> module class) during each
    call of a model; a call nested in one of the same key counts once (the outermost). ``keys``: those with a module
    in the model, in the order of ``classes``; ``calls`` holds one ``{key: seconds}`` per call of a ``wrap``-ped
    step."""

    def __init__(self, model: torch.nn.Module, classes: Mapping[str, type]):
        modules = list(model.modules())
        self.keys = [key for key, cls in classes.items() if any(isinstance(module, cls) for module in modules)]
        self.calls: list[dict[str, float]] = []
        self.current = dict.fromkeys(self.keys, 0.0)
        self.depth = dict.fromkeys(self.keys, 0)
        self.starts: dict[str, float] = {}
        self.handles = []
        for key in self.keys:
            for module in modules:
                if isinstance(module, classes[key]):
                    self.handles.append(module.register_forward_pre_hook(self._starter(key)))
                    self.handles.append(module.register_forward_hook(self._stopper(key)))

    def _starter(self, key: str):
        def start(module, args):
            if self.depth[key] == 0:
                self.starts[key] = time.perf_counter()
            self.depth[key] += 1

        return start

    def _stopper(self, key: str):
        def stop(module, args, output):
            self.depth[key] -= 1
            if self.depth[key] == 0:
                self.current[key] += time.perf_counter() - self.starts[key]

        return stop

    def wrap(self, step: Step) -> Step:
        """``step`` that records the module seconds of each of its calls in ``calls``."""

        def timed_step():
            self.current = dict.fromkeys(self.keys, 0.0)
            self.depth = dict.fromkeys(self.keys, 0)
            step()
            self.calls.append(self.current)

        return timed_step

    def fields(self, times: Sequence[float]) -> dict:
        """Row fields of the last ``len(times)`` calls, whose step took ``times`` (the timed rounds): per key,
        ``<key>_share``, the median over the rounds of its seconds over the step's, then per key ``<key>_s``, its
        seconds per round."""
        calls = self.calls[len(self.calls) - len(times) :]
        shares = {
            f"{key}_share": median([call[key] / seconds for call, seconds in zip(calls, times, strict=True)])
            for key in self.keys
        }
        return {**shares, **{f"{key}_s": [call[key] for call in calls] for key in self.keys}}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def time_decoder_rounds(
    models: Mapping[str, torch.nn.Module],
    inputs,
    dtype: torch.dtype,
    warmup: int,
    repeats: int,
    timed_classes: Mapping[str, type] | None = None,
    outside_autocast: Collection[str] = (),
    gemm_size: int = GEMM_SIZE,
) -> tuple[dict[str, list[float]], dict[str, dict]]:
    """Round-robin latency (``time_round_robin``) on the CPU of ``model(inputs)`` for every model, under
    ``torch.no_grad()`` and, for a half ``dtype``, ``torch.autocast``, and of one ``gemm_size`` square matmul in
    ``dtype`` (step ``gemm_name(gemm_size)``): the machine's GEMM throughput under the same load. In a half dtype the
    models of ``outside_autocast`` run outside autocast (in fp32), and a second step of each, ``name + IN_AUTOCAST``,
    runs fully under it. With ``timed_classes``, a ``ModuleTimer`` of them on every model that has any. Returns
    ``({step: [seconds per timed round]}, {model: ModuleTimer.fields})``."""
    autocast, _ = device_helpers(torch.device("cpu"), dtype)
    steps, timers = {}, {}
    for name, model in models.items():
        outside = dtype != torch.float32 and name in outside_autocast
        step = forward_step(model, inputs, contextlib.nullcontext if outside else autocast)
        timer = ModuleTimer(model, timed_classes) if timed_classes else None
        if timer is not None and timer.keys:
            timers[name] = timer
            step = timer.wrap(step)
        steps[name] = step
        if outside:
            steps[name + IN_AUTOCAST] = forward_step(model, inputs, autocast)
    steps[gemm_name(gemm_size)] = gemm_step(gemm_size, dtype)
    try:
        times, _ = time_round_robin(steps, warmup, repeats)
    finally:
        for timer in timers.values():
            timer.remove()
    return times, {name: timer.fields(times[name]) for name, timer in timers.items()}


def inclusive_seconds(events, name: str) -> float:
    """Seconds inside operator ``name`` among profiler ``events``, not counting calls nested in a call of the same
    name."""
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


def profile_forward(model: torch.nn.Module, inputs, kernels: Sequence[str], top: int = 8) -> dict:
    """One ``model(inputs)`` under ``torch.no_grad()`` and ``torch.profiler`` (CPU): its wall seconds, the inclusive
    seconds (and shares of the wall time) of the operators ``kernels``, and the ``top`` operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        model(inputs)
        wall = time.perf_counter() - start
    events = profiler.events()
    kernel_seconds = {name: inclusive_seconds(events, name) for name in kernels}
    averages = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    return {
        "profiled_forward_s": wall,
        "kernels_s": kernel_seconds,
        "kernel_shares": {name: seconds / wall for name, seconds in kernel_seconds.items()},
        "top_self_time": [
            {"op": event.key, "self_s": event.self_cpu_time_total / 1e6, "calls": event.count}
            for event in averages[:top]
        ],
    }


class AnalyticMacs(NamedTuple):
    """MACs that ``FlopCounterMode`` does not see, counted by a forward hook on every module of ``module_class``:
    ``count(module, args, kwargs, output)`` returns ``{key: MACs}`` of one call, for ``keys``."""

    module_class: type
    keys: tuple[str, ...]
    count: Callable[..., Mapping[str, int]]


def _deformable_attention_sampling_macs(module, args, kwargs, output) -> dict[str, int]:
    """``queries*heads*levels*points*head_dim*SAMPLING_MACS`` of one multi-scale deformable attention call."""
    hidden_states = args[0] if args else kwargs["hidden_states"]
    batch, queries = hidden_states.shape[:2]
    samples = batch * queries * module.n_heads * module.n_levels * module.n_points
    return {"msda_sampling": samples * (module.d_model // module.n_heads) * SAMPLING_MACS}


def deformable_attention_sampling() -> AnalyticMacs:
    """The bilinear sampling of transformers' multi-scale deformable attention (``grid_sample`` plus its weighted
    sum), ``msda_sampling``: ``queries*heads*levels*points*head_dim*SAMPLING_MACS`` per call."""
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    )

    return AnalyticMacs(
        Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
        ("msda_sampling",),
        _deformable_attention_sampling_macs,
    )


def count_macs_with_analytic(
    model: torch.nn.Module,
    inputs,
    analytic: Sequence[AnalyticMacs],
    custom_mapping: Mapping | None = None,
    counted_parts: Mapping[str, str] | None = None,
) -> dict:
    """GMACs of one ``model(inputs)`` under ``torch.no_grad()``: ``gmacs_flop_counter``, the count of
    :func:`flop_counter` (MACs = FLOPs / 2; ``custom_mapping``: formulas of further operators); per
    ``counted_parts`` entry ``part: substring``, ``gmacs_<part>``, the part of that count from the operators whose
    name contains the substring; per key of ``analytic``, ``gmacs_<key>``, counted from the shapes of the actual
    calls (0 when no such module ran); ``gmacs``, the count plus the analytic MACs."""
    counts = {key: 0 for entry in analytic for key in entry.keys}

    def hook_of(count):
        def hook(module, args, kwargs, output):
            for key, macs in count(module, args, kwargs, output).items():
                counts[key] += macs

        return hook

    handles = []
    for module in model.modules():
        entry = next((entry for entry in analytic if isinstance(module, entry.module_class)), None)
        if entry is not None:
            handles.append(module.register_forward_hook(hook_of(entry.count), with_kwargs=True))
    counter = flop_counter(custom_mapping)
    try:
        with torch.no_grad(), counter:
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    counted = counter.get_total_flops() / 2 / 1e9
    by_op = counter.get_flop_counts()["Global"]
    parts = {
        f"gmacs_{part}": sum(flops for op, flops in by_op.items() if substring in str(op)) / 2 / 1e9
        for part, substring in (counted_parts or {}).items()
    }
    sampled = {f"gmacs_{key}": value / 1e9 for key, value in counts.items()}
    return {"gmacs": counted + sum(sampled.values()), "gmacs_flop_counter": counted, **parts, **sampled}


def no_settings() -> dict:
    """No script-specific settings."""
    return {}


@dataclass(frozen=True)
class DecoderBenchmark:
    """What a pixel-decoder benchmark script (``benchmark_semask_fapn.py``, ``benchmark_vw_d2.py``) supplies; the
    harness does the rest (``decoder_benchmark_main``): build the decoders, count, time fp32 and bf16 round-robin
    with a GEMM step, profile, measure the peak memory in fresh processes, compare, report, combine runs.

    * ``script``: the script's path; its memory workers are fresh processes of it (hidden ``--memory-worker``).
    * ``models``: the decoder names (``--models``); ``output_stem``: the default report is
      ``results/<output_stem>_cpu.json`` (``_cpu_combined`` with ``--combine``).
    * ``inputs_label``, ``feature_channels``, ``feature_strides``: the backbone feature maps of one image
      (``feature_maps``), the same for every decoder, and their name in the first line printed.
    * ``build(name)``: the decoder in eval mode (called after ``torch.manual_seed(args.seed)``);
      ``describe(name, model)``: its row's own fields (besides model, size and ``params_m``).
    * ``count_macs(model, inputs)``: the ``gmacs*`` fields of one forward (``count_macs_with_analytic``).
    * ``timed_classes()``: ``{key: module class}`` that forward hooks time in the fp32 rounds (``ModuleTimer``).
    * ``profiled_kernels``: ``{row field: operator}``, the operator's inclusive-time share in the profiled forward.
    * ``pairs``: the (numerator, denominator) decoders of ``ratios``; ``pair_extras(top, bottom)``: more fields of a
      pair's entry. ``peers``: ``{decoder: peer}`` of the row column ``peer_column`` (median over the peer's).
    * ``outside_autocast``: decoders that run outside autocast in the bf16 rounds, as in their models (each is also
      timed fully under autocast: ``bf16_in_autocast_*`` fields and ratios); ``gemm_size``: the GEMM step's side.
    * ``columns``: the table's columns of the script's own figures (after peak memory; ``decoder_columns``);
      ``table_note``: a line under the table; ``print_extra(report)``: more printed output.
    * ``settings()``: more settings of the report; ``extend_report(args, report)``: more sections of it.
    * ``run_figures``, ``static_figures``: the row figures ``--combine`` gathers per run (with their medians over the
      runs) and from the first run only (counts); ``combined_sections``: report sections it copies from the first
      run that has them.
    * ``add_options(parser)``: more command-line options; ``check_args(args)``: an error message for bad options, or
      ``None``.
    """

    script: str
    models: tuple[str, ...]
    output_stem: str
    inputs_label: str
    feature_channels: tuple[int, ...]
    feature_strides: tuple[int, ...]
    build: Callable[[str], torch.nn.Module]
    describe: Callable[[str, torch.nn.Module], dict]
    count_macs: Callable[[torch.nn.Module, Any], dict]
    timed_classes: Callable[[], Mapping[str, type]]
    profiled_kernels: Mapping[str, str]
    pairs: tuple[tuple[str, str], ...]
    peers: Mapping[str, str]
    peer_column: str
    columns: tuple[Column, ...]
    run_figures: tuple[str, ...]
    static_figures: tuple[str, ...]
    pair_extras: Callable[[dict, dict], dict] | None = None
    outside_autocast: tuple[str, ...] = ()
    gemm_size: int = GEMM_SIZE
    table_note: str | None = None
    print_extra: Callable[[dict], None] | None = None
    settings: Callable[[], dict] = no_settings
    extend_report: Callable[[argparse.Namespace, dict], None] | None = None
    combined_sections: tuple[str, ...] = ()
    add_options: Callable[[argparse.ArgumentParser], None] | None = None
    check_args: Callable[[argparse.Namespace], str | None] | None = None


def decoder_inputs(args: argparse.Namespace, bench: DecoderBenchmark) -> tuple[torch.Tensor, ...]:
    """The seeded feature maps of ``args.size`` and ``args.seed``."""
    return feature_maps(args.size, args.seed, bench.feature_channels, bench.feature_strides)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _latency_fields(times: list[float], prefix: str = "") -> dict:
    """``<prefix>times_s``, ``<prefix>median_s`` and ``<prefix>median_ms`` of the timed rounds ``times``."""
    median_s = median(times)
    return {f"{prefix}times_s": times, f"{prefix}median_s": median_s, f"{prefix}median_ms": 1e3 * median_s}


def measure_decoder_latency(
    rows: dict[str, dict],
    models: Mapping[str, torch.nn.Module],
    inputs,
    args: argparse.Namespace,
    bench: DecoderBenchmark,
) -> tuple[dict[str, list[float]], dict]:
    """The fp32 rounds (``args.warmup`` + ``args.repeats``, with the module timers and the load average before and
    after), then the bf16 autocast rounds (1 + ``args.bf16_repeats``, none if 0), each with the GEMM step. Adds the
    latency, achieved GFLOP/s (2 x GMACs over the median) and its fraction of the GEMM's (median; fastest round),
    and the module shares to ``rows``. Returns ``(fp32 times per step, the report's gemm section)``."""
    gemm_key, size = gemm_name(bench.gemm_size), bench.gemm_size
    _progress(f"fp32 latency: {args.warmup} + {args.repeats} round-robin rounds ...")
    load_before = load_average()
    times, module_fields = time_decoder_rounds(
        models, inputs, torch.float32, args.warmup, args.repeats, bench.timed_classes(), gemm_size=size
    )
    gemm = {"size": size, "fp32_times_s": times[gemm_key]}
    gemm["load_average_1min_before_after_fp32"] = [load_before, load_average()]
    gemm["fp32_gflops_median"] = gemm_gflops(size, median(gemm["fp32_times_s"]))
    gemm["fp32_gflops_max"] = gemm_gflops(size, min(gemm["fp32_times_s"]))
    for name in models:
        row = rows[name]
        row.update(_latency_fields(times[name]))
        row["achieved_gflops"] = 2 * row["gmacs"] / row["median_s"]
        row["fraction_of_gemm"] = row["achieved_gflops"] / gemm["fp32_gflops_median"]
        row["fraction_of_gemm_max"] = row["achieved_gflops"] / gemm["fp32_gflops_max"]
        row.update(module_fields.get(name, {}))

    if args.bf16_repeats > 0:
        _progress(f"bf16 autocast latency: 1 + {args.bf16_repeats} rounds ...")
        bf16, _ = time_decoder_rounds(
            models, inputs, torch.bfloat16, 1, args.bf16_repeats, None, bench.outside_autocast, size
        )
        gemm["bf16_times_s"] = bf16[gemm_key]
        gemm["bf16_gflops_median"] = gemm_gflops(size, median(gemm["bf16_times_s"]))
        for name in models:
            row = rows[name]
            if bench.outside_autocast:
                row["bf16_outside_autocast"] = name in bench.outside_autocast
            row.update(_latency_fields(bf16[name], "bf16_"))
            if name + IN_AUTOCAST in bf16:
                row.update(_latency_fields(bf16[name + IN_AUTOCAST], "bf16_in_autocast_"))
    return times, gemm


def _ratio_figure(row: dict, key: str):
    """Figure ``key`` of ``row``; a decoder without a separate in-autocast bf16 figure ran in autocast: its bf16 one."""
    if key == "bf16_in_autocast_median_s" and key not in row:
        return row.get("bf16_median_s")
    return row.get(key)


def decoder_ratios(rows: dict[str, dict], fp32_times: Mapping[str, list[float]], bench: DecoderBenchmark) -> dict:
    """Per pair ``numerator/denominator`` of ``bench.pairs`` with both measured: ``latency_paired``, the median over
    the fp32 rounds of the ratio within each round (the two calls of a round are seconds apart, so a load change
    between rounds cancels out); ``latency_min``, the ratio of the fastest fp32 rounds (the least disturbed by other
    processes); the ratios of the medians (fp32 ``latency``, ``bf16_latency`` and, with ``outside_autocast``,
    ``bf16_in_autocast_latency``), of the GMACs, parameters and peak memory; then ``bench.pair_extras``."""
    keys = list(DECODER_RATIO_KEYS)
    if bench.outside_autocast:
        keys.insert(keys.index("bf16_median_s") + 1, "bf16_in_autocast_median_s")
    ratios = {}
    for numerator, denominator in bench.pairs:
        if numerator not in rows or denominator not in rows:
            continue
        top, bottom = rows[numerator], rows[denominator]
        entry = {
            "latency_paired": median(
                [a / b for a, b in zip(fp32_times[numerator], fp32_times[denominator], strict=True)]
            ),
            "latency_min": min(fp32_times[numerator]) / min(fp32_times[denominator]),
        }
        for key in keys:
            top_value, bottom_value = _ratio_figure(top, key), _ratio_figure(bottom, key)
            if top_value is not None and bottom_value:
                entry[key.replace("median_s", "latency")] = top_value / bottom_value
        if bench.pair_extras is not None:
            entry.update(bench.pair_extras(top, bottom))
        ratios[f"{numerator}/{denominator}"] = entry
    return ratios


def decoder_memory_command(args: argparse.Namespace, bench: DecoderBenchmark, name: str) -> list[str]:
    """The command of the memory worker of decoder ``name``: a fresh process of the script."""
    return script_command(
        bench.script, "--memory-worker", name, "--size", args.size, "--seed", args.seed, "--threads", args.threads
    )


def measure_decoder_memory(args: argparse.Namespace, bench: DecoderBenchmark, name: str) -> dict:
    """The memory worker: peak memory of the first forward of decoder ``name`` in this (fresh) process."""
    torch.manual_seed(args.seed)
    model = bench.build(name)
    return first_forward_peak_memory(model, decoder_inputs(args, bench), torch.device("cpu"))


def run_decoder_benchmark(args: argparse.Namespace, bench: DecoderBenchmark) -> dict:
    """All measurements of one run: the report's ``results`` (one row per decoder), ``gemm`` and ``ratios``, then
    what ``bench.extend_report`` adds."""
    inputs = decoder_inputs(args, bench)
    _progress("building decoders ...")
    models = {}
    for name in args.models:
        torch.manual_seed(args.seed)
        models[name] = bench.build(name)
    rows = {
        name: {"model": name, "size": args.size, "params_m": count_params(model) / 1e6, **bench.describe(name, model)}
        for name, model in models.items()
    }
    _progress("counting GMACs ...")
    for name, model in models.items():
        rows[name].update(bench.count_macs(model, inputs))
    fp32_times, gemm = measure_decoder_latency(rows, models, inputs, args, bench)

    if not args.skip_profile:
        _progress("torch.profiler pass ...")
        for name, model in models.items():
            profiled = profile_forward(model, inputs, list(bench.profiled_kernels.values()))
            rows[name]["profile"] = profiled
            for field, kernel in bench.profiled_kernels.items():
                rows[name][field] = profiled["kernel_shares"][kernel] or None

    del models
    _progress("peak memory, one fresh process per decoder ...")
    for name in args.models:
        rows[name].update(run_worker_command(decoder_memory_command(args, bench, name), args.threads))

    for name, row in rows.items():
        if bench.peers.get(name) in rows:
            row[bench.peer_column] = row["median_s"] / rows[bench.peers[name]]["median_s"]
    report = {"results": list(rows.values()), "gemm": gemm, "ratios": decoder_ratios(rows, fp32_times, bench)}
    if bench.extend_report is not None:
        bench.extend_report(args, report)
    return report


def format_gemm(gemm: dict) -> str:
    """The GEMM step's throughput (fp32 median and max, bf16 median) and the load average around the fp32 rounds."""
    line = f"{gemm['size']}^2 fp32 GEMM (a step of the same rounds): {gemm['fp32_gflops_median']:.1f} GFLOP/s median"
    line += f", {gemm['fp32_gflops_max']:.1f} max"
    if "bf16_gflops_median" in gemm:
        line += f"; bf16 GEMM: {gemm['bf16_gflops_median']:.1f} GFLOP/s median"
    load = gemm.get("load_average_1min_before_after_fp32")
    if load is not None:
        line += f"; load average before/after the fp32 rounds: {load[0]} / {load[1]}"
    return line


def decoder_columns(bench: DecoderBenchmark) -> tuple[Column, ...]:
    """The printed table's columns: decoder, fp32 latency and its ratio to the peer (``x <peer column without
    ratio_to_>``), bf16 latency (and fully under autocast, with ``outside_autocast``), GMACs (all; counted by
    ``FlopCounterMode``), parameters, peak memory, ``bench.columns``, achieved GFLOP/s and its fraction of the GEMM's."""
    in_autocast = (Column("in AC ms", "bf16_in_autocast_median_ms", ">", 8, 0),) if bench.outside_autocast else ()
    return (
        Column("model", "model", "<", 28),
        Column("fp32 ms", "median_ms", ">", 8, 0),
        Column(f"x {bench.peer_column.removeprefix('ratio_to_')}", bench.peer_column, ">", 7, 3),
        Column("bf16 ms", "bf16_median_ms", ">", 8, 0),
        *in_autocast,
        Column("GMACs", "gmacs", ">", 7, 1),
        Column("counted", "gmacs_flop_counter", ">", 8, 1),
        Column("params M", "params_m", ">", 9, 2),
        Column("peak MB", "peak_mem_mb", ">", 8, 0),
        *bench.columns,
        Column("GFLOP/s", "achieved_gflops", ">", 8, 1),
        Column("of GEMM", "fraction_of_gemm", ">", 7, 3),
    )


def print_decoder_run(report: dict, bench: DecoderBenchmark) -> None:
    """The table, the GEMM line, one line of ratios (``x``) and differences per pair, then ``bench.print_extra``."""
    print(format_table(report["results"], decoder_columns(bench)))
    if bench.table_note:
        print(bench.table_note)
    print("\n" + format_gemm(report["gemm"]))
    for pair, ratio in report["ratios"].items():
        figures = (f"{key} {value:.3f}{'' if 'difference' in key else 'x'}" for key, value in ratio.items())
        print(pair + ": " + ", ".join(figures))
    if bench.print_extra is not None:
        bench.print_extra(report)


def _median_of(values: Iterable) -> float | None:
    """Median of the values that are not ``None``; ``None`` if there are none."""
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def combine_decoder_runs(paths: Sequence[Path], bench: DecoderBenchmark) -> dict:
    """Per-run ratios and figures (``bench.run_figures``) of the reports at ``paths`` and their medians over the
    runs; the counts (``bench.static_figures``) of the first run, which do not change between runs."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    per_run = []
    for path, run in zip(paths, runs, strict=True):
        rows = {row["model"]: row for row in run["results"]}
        per_run.append({
            "file": str(path),
            "date": run["environment"]["date"],
            "ratios": run["ratios"],
            "gemm_fp32_gflops": run["gemm"]["fp32_gflops_median"],
            "gemm_fp32_gflops_max": run["gemm"]["fp32_gflops_max"],
            "load_average_1min_before_after_fp32": run["gemm"].get("load_average_1min_before_after_fp32"),
            "gemm_bf16_gflops": run["gemm"].get("bf16_gflops_median"),
            "models": {name: {key: row.get(key) for key in bench.run_figures} for name, row in rows.items()},
        })  # fmt: skip
    medians = {
        "ratios": {
            pair: {key: _median_of(run["ratios"].get(pair, {}).get(key) for run in per_run) for key in entry}
            for pair, entry in per_run[0]["ratios"].items()
        },
        **{
            key: _median_of(run[key] for run in per_run)
            for key in ("gemm_fp32_gflops", "gemm_fp32_gflops_max", "gemm_bf16_gflops")
        },
        "models": {
            name: {key: _median_of(run["models"][name][key] for run in per_run) for key in figures}
            for name, figures in per_run[0]["models"].items()
        },
    }
    combined = {
        "environment": runs[0]["environment"],
        "settings": runs[0]["settings"],
        "counts": {row["model"]: {key: row.get(key) for key in bench.static_figures} for row in runs[0]["results"]},
        "runs": per_run,
        "medians_over_runs": medians,
    }
    for section in bench.combined_sections:
        found = next((run[section] for run in runs if section in run), None)
        if found is not None:
            combined[section] = found
    return combined


def print_combined(combined: dict) -> None:
    """The latency ratios of each run and their medians over the runs."""

    def describe(ratios: dict) -> str:
        return ", ".join(
            f"{pair.split('/')[0]} {entry['latency']:.3f}x (paired {entry['latency_paired']:.3f}x, "
            f"fastest rounds {entry['latency_min']:.3f}x)"
            for pair, entry in ratios.items()
        )

    for index, run in enumerate(combined["runs"], start=1):
        print(f"run {index} ({run['file']}): {describe(run['ratios'])}")
    print("median over runs: " + describe(combined["medians_over_runs"]["ratios"]))


def parse_decoder_args(bench: DecoderBenchmark, description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with the options of a decoder benchmark (see benchmarks/README.md), ``bench.add_options`` and
    the hidden ``--memory-worker``; the device is always the CPU, the dtype fp32 (bf16 runs under autocast), the
    batch one."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--models", nargs="+", choices=bench.models, default=list(bench.models), help="decoders to measure"
    )
    parser.add_argument("--size", type=int, default=640, help="square input side in pixels (features at 1/4-1/32)")
    add_timing_options(parser, warmup=1, repeats=5)
    parser.add_argument("--bf16-repeats", type=int, default=2, help="timed bf16 autocast rounds (0: skip)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--skip-profile", action="store_true", help="no torch.profiler pass")
    if bench.add_options is not None:
        bench.add_options(parser)
    parser.add_argument("--combine", type=Path, nargs="+", help="combine these run reports into --output")
    parser.add_argument(
        "--output", type=Path, default=None, help=f"JSON report (default results/{bench.output_stem}_cpu.json)"
    )
    parser.add_argument("--memory-worker", choices=bench.models, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    error = None if bench.check_args is None else bench.check_args(args)
    if error:
        parser.error(error)
    args.device, args.dtype, args.batch_size = "cpu", "float32", 1
    if args.output is None:
        args.output = default_output(bench.output_stem, "cpu", "_combined" if args.combine else "")
    return args


def decoder_benchmark_main(bench: DecoderBenchmark, doc: str, argv: Sequence[str] | None = None) -> None:
    """The ``main`` of a decoder benchmark whose docstring is ``doc`` (its first paragraph describes the command):
    ``--combine``, a memory worker's one measurement, or the whole run, its printout and its JSON report
    (``environment``, ``settings``, ``results``, ``gemm``, ``ratios``, what ``bench.extend_report`` adds,
    ``wall_s``)."""
    args = parse_decoder_args(bench, doc.split("\n\n")[0], argv)
    if args.combine:
        combined = combine_decoder_runs(args.combine, bench)
        print_combined(combined)
        write_report(args.output, combined)
        print(f"\nwrote {args.output}")
        return
    set_threads(args.threads)
    if args.memory_worker:
        emit_result(measure_decoder_memory(args, bench, args.memory_worker))
        return
    env = environment(args.device, args.dtype, args.threads)
    details = f"{args.size}x{args.size} {bench.inputs_label}", f"warmup {args.warmup}", f"repeats {args.repeats}"
    print(describe_run(env, *details), flush=True)
    start = time.perf_counter()
    report = run_decoder_benchmark(args, bench)
    print()
    print_decoder_run(report, bench)
    settings = {key: getattr(args, key) for key in DECODER_SETTINGS}
    settings["feature_shapes"] = feature_shapes(args.size, bench.feature_channels, bench.feature_strides)
    settings.update(bench.settings())
    report = {"environment": env, "settings": settings, **report, "wall_s": time.perf_counter() - start}
    write_report(args.output, report)
    print(f"\nwrote {args.output} ({report['wall_s']:.0f} s)")
