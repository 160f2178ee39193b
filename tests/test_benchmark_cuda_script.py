"""``benchmarks/run_cuda.py``, the one-command CUDA run of every benchmark, checked on the CPU:

* ``--device cpu --smoke`` runs every benchmark end to end (tiny inputs, one timed step) and writes one report per
  benchmark with a row per model and mode of the benchmark scripts, numeric figures and no error;
* a benchmark in a subprocess of its own (``--isolate``, the default on CUDA) writes the same report, and the driver
  completes the report of a worker that died with an error row for every row it did not write;
* without CUDA the plain command refuses in one line, with exit status 1, and writes nothing.

The CUDA run itself needs a GPU; these tests check everything around it.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from model_suite import ONEDNN_BFLOAT16


BENCHMARKS_DIR = REPO_ROOT / "benchmarks"
SCRIPT = BENCHMARKS_DIR / "run_cuda.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
NUMERIC_FIELDS = (
    "median_s", "images_per_s", "peak_mem_mb", "peak_mem_abs_mb", "params_m", "gmacs", "step_gmacs",
    "achieved_tflops", "fraction_of_peak",
)  # fmt: skip
#: the smoke runs' autocast dtype: bfloat16, as on CUDA, where oneDNN has bfloat16 kernels for this CPU; float32
#: elsewhere (there the bfloat16 products take torch's reference kernels: the whole smoke run took 508 s in bfloat16
#: against 80 s in float32 on an AVX2 AMD EPYC, the suite's longest test)
SMOKE_DTYPE = "bfloat16" if ONEDNN_BFLOAT16 else "float32"
POSITIVE_FIELDS = ("median_s", "images_per_s", "params_m", "gmacs", "step_gmacs", "achieved_tflops")


def load_benchmark_module(name: str):
    """A script of benchmarks/ imported as a module (it puts its folder on ``sys.path`` for ``harness``)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def expected_rows(dtype: str = SMOKE_DTYPE) -> dict[str, set[tuple[str, str]]]:
    """Per benchmark, the ``(model, mode)`` rows: every model of its script, forward and train (the whole-batch-loss
    reference of SeMask-FPN trains only), and VW-D2's deformable decoders also fully under autocast (not in float32,
    where nothing runs under autocast)."""
    fpn = load_benchmark_module("benchmark_semask_fpn")
    pale = load_benchmark_module("benchmark_pale")
    vwformer = load_benchmark_module("benchmark_vwformer")
    mask2former = load_benchmark_module("benchmark_semask_mask2former")
    fapn = load_benchmark_module("benchmark_semask_fapn")
    vw_d2 = load_benchmark_module("benchmark_vw_d2")
    d2_models = load_benchmark_module("benchmark_d2_models")
    models = {
        "semask_fpn": list(fpn.MODELS),
        "pale": list(pale.MODELS),
        "vwformer": [*vwformer.HEADS, *vwformer.WHOLE_MODELS],
        "semask_mask2former": list(mask2former.MODELS),
        "semask_fapn": list(fapn.MODELS),
        "vw_d2": [*vw_d2.MODELS, *(name + "@autocast" for name in vw_d2.DEFORMABLE if dtype != "float32")],
        "d2_models": list(d2_models.MODELS),
    }
    return {
        benchmark: {
            (model, mode)
            for model in names
            for mode in ("forward", "train")
            if not (model == "semask_fpn_tiny_whole_batch_loss" and mode == "forward")
        }
        for benchmark, names in models.items()
    }


def run(*args: str, env=ENV, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT
    )


def may_be_skipped(benchmark: str, row: dict) -> bool:
    """transformers' Mask2Former loss needs scipy: its train row is skipped (not an error) where scipy is missing."""
    scipy_missing = importlib.util.find_spec("scipy") is None
    return (
        scipy_missing
        and benchmark == "semask_mask2former"
        and row["model"] == "hf_mask2former_swin_large"
        and row["mode"] == "train"
    )


def check_report(path, benchmark: str, rows: set[tuple[str, str]]) -> dict:
    """The report at ``path`` has exactly the ``rows``, each measured (numeric figures) or legitimately skipped, no
    error, a measured matmul peak and at least one ratio."""
    assert path.is_file(), f"no report {path.name}"
    report = json.loads(path.read_text())
    assert report["benchmark"] == benchmark
    assert report["complete"] is True
    assert report["environment"]["device"] == "cpu"
    found = [(row["model"], row["mode"]) for row in report["results"]]
    assert sorted(found) == sorted(rows), f"{benchmark}: rows {sorted(found)}"
    for row in report["results"]:
        label = f"{benchmark} {row['model']} {row['mode']}"
        assert "error" not in row, f"{label}: {row['error']}"
        assert "count_error" not in row, f"{label}: {row['count_error']}"
        if "skipped" in row:
            assert may_be_skipped(benchmark, row), f"{label} skipped: {row['skipped']}"
            continue
        for field in NUMERIC_FIELDS:
            value = row.get(field)
            assert isinstance(value, (int, float)) and math.isfinite(value), f"{label}: {field} = {value!r}"
            assert value >= 0, f"{label}: {field} = {value}"
        for field in POSITIVE_FIELDS:
            assert row[field] > 0, f"{label}: {field} = {row[field]}"
        assert row["repeats"] == len(row["times_s"]) == 1
        assert row["batch_size"] >= 1 and row["size"] >= 64
    assert report["peak_matmul"]["median_tflops"] > 0
    assert report["ratios"], f"{benchmark}: no ratio"
    for ratio in report["ratios"]:
        assert math.isfinite(ratio["ratio"]) and ratio["ratio"] > 0
    return report


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One ``--device cpu --smoke`` run of every benchmark, in one process."""
    output_dir = tmp_path_factory.mktemp("run_cuda_smoke")
    result = run("--device", "cpu", "--smoke", "--dtype", SMOKE_DTYPE, "--output_dir", str(output_dir))
    return result, output_dir


def test_smoke_run_writes_every_report(smoke_run):
    result, output_dir = smoke_run
    assert result.returncode == 0, result.stderr[-3000:]
    rows = expected_rows()
    assert sorted(path.name for path in output_dir.iterdir()) == sorted(f"{name}_cpu_smoke.json" for name in rows)
    for benchmark, benchmark_rows in rows.items():
        report = check_report(output_dir / f"{benchmark}_cpu_smoke.json", benchmark, benchmark_rows)
        assert report["settings"]["smoke"] is True and report["settings"]["isolated_process"] is False
        assert f"== {benchmark} " in result.stdout  # the printed table


def test_smoke_run_keeps_the_deformable_decoders_outside_autocast(smoke_run):
    """VW-D2's deformable decoders run in fp32 as in their models, and once more fully under autocast (a float32
    run: nothing under autocast)."""
    _, output_dir = smoke_run
    report = json.loads((output_dir / "vw_d2_cpu_smoke.json").read_text())
    autocast = {(row["model"], row["mode"]): row["autocast"] for row in report["results"]}
    if SMOKE_DTYPE == "float32":
        assert autocast and not any(autocast.values()), autocast
        return
    assert autocast[("hf_mask2former_pixel_decoder", "forward")] is False
    assert autocast[("hf_mask2former_pixel_decoder@autocast", "forward")] is True
    assert autocast[("vw_mask2former_decoder", "train")] is True
    pairs = {(ratio["numerator"], ratio["denominator"]) for ratio in report["ratios"]}
    assert ("vw_deformattn_decoder@autocast", "hf_mask2former_pixel_decoder@autocast") in pairs


def test_isolated_worker_writes_the_report(tmp_path):
    result = run(
        "--device", "cpu", "--smoke", "--dtype", SMOKE_DTYPE, "--isolate", "--benchmarks", "pale",
        "--output_dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = check_report(tmp_path / "pale_cpu_smoke.json", "pale", expected_rows()["pale"])
    assert report["settings"]["isolated_process"] is True


def test_a_dead_worker_leaves_error_rows(tmp_path):
    """What a worker wrote before it died stays; every row it did not write gets the failure as its error."""
    run_cuda = load_benchmark_module("run_cuda")
    args = run_cuda.parse_args(["--device", "cpu", "--smoke", "--output_dir", str(tmp_path)])
    output = run_cuda.output_path(args, "pale")
    measured = {
        "benchmark": "pale", "model": "pale_tiny", "mode": "forward", "size": 224, "batch_size": 1, "median_s": 0.5,
        "peak_mem_mb": 10.0, "gmacs": 4.0,
    }  # fmt: skip
    output.write_text(json.dumps({"benchmark": "pale", "results": [measured]}))
    report = run_cuda.complete_report(args, "pale", output, "worker exited with status -9")
    rows = {(row["model"], row["mode"]): row for row in report["results"]}
    assert set(rows) == expected_rows()["pale"]
    assert "error" not in rows[("pale_tiny", "forward")]
    assert all(
        row["error"] == "worker exited with status -9" for key, row in rows.items() if key != ("pale_tiny", "forward")
    )
    assert report["worker_error"] == "worker exited with status -9"
    assert json.loads(output.read_text()) == report


def test_refuses_without_cuda(tmp_path):
    """The plain command is the GPU run: without CUDA, one line and exit status 1, nothing written."""
    result = run("--output_dir", str(tmp_path), env={**ENV, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "CUDA is required" in lines[0], lines
    assert not any(tmp_path.iterdir())
