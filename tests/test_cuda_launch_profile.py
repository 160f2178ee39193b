"""``benchmarks/cuda_launch_profile.py`` (launch time against kernel time on a GPU), checked on the CPU: its CPU
path writes a report with every model and pair, the ratios and kernel summaries are the hand-computed values, and
``--device cuda`` without CUDA refuses in one line with exit status 1 and writes nothing."""

import json
import os
import subprocess
import sys
import types

import pytest
import torch
from test_benchmark_cuda_script import load_benchmark_module

from conftest import REPO_ROOT


SCRIPT = REPO_ROOT / "benchmarks" / "cuda_launch_profile.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def profile_module():
    return load_benchmark_module("cuda_launch_profile")


def test_cpu_run_writes_every_model_and_pair(tmp_path):
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "224", "--batch", "1", "--warmup", "0"]
    command += ["--repeats", "1", "--output_dir", str(tmp_path)]
    process = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads((tmp_path / "cuda_launch_profile_cpu.json").read_text())
    rows = {row["model"]: row for row in report["results"]}
    assert set(rows) == {"pale_tiny", "hf_swin_tiny", "semask_backbone_tiny", "hf_swin_tiny_backbone"}
    for row in rows.values():
        assert (row["size"], row["batch_size"]) == (224, 1)
        # on the CPU a forward returns when it is done: launch time and time are one measurement
        assert 0 < row["host_ms"] <= row["eager_ms"]
        assert "graph_ms" not in row and "kernels" not in row  # CUDA only
    ratios = {(r["numerator"], r["denominator"]): r for r in report["ratios"]}
    assert set(ratios) == {("pale_tiny", "hf_swin_tiny"), ("semask_backbone_tiny", "hf_swin_tiny_backbone")}
    pale = ratios["pale_tiny", "hf_swin_tiny"]
    assert pale["eager_ms"] == pytest.approx(rows["pale_tiny"]["eager_ms"] / rows["hf_swin_tiny"]["eager_ms"])
    assert "pale_tiny / hf_swin_tiny [224, batch 1]: eager_ms" in process.stdout


def test_ratios_are_ours_over_peer_per_shape(profile_module):
    rows = [
        {"model": "pale_tiny", "size": 224, "batch_size": 32, "eager_ms": 30.0, "host_ms": 29.0, "graph_ms": 7.5,
         "kernels": 1400},
        {"model": "hf_swin_tiny", "size": 224, "batch_size": 32, "eager_ms": 15.0, "host_ms": 14.5, "graph_ms": 6.0,
         "kernels": 700},
        {"model": "pale_tiny", "size": 512, "batch_size": 8, "eager_ms": 50.0, "host_ms": 49.0},
        {"model": "semask_backbone_tiny", "size": 512, "batch_size": 8, "eager_ms": 33.0, "host_ms": 33.0},
    ]  # fmt: skip
    ratios = profile_module.ratios(rows)
    # Pale at 512 and SeMask have no peer row at their shape: no ratio
    assert ratios == [
        {"numerator": "pale_tiny", "denominator": "hf_swin_tiny", "size": 224, "batch_size": 32,
         "eager_ms": 2.0, "host_ms": 2.0, "graph_ms": 1.25, "kernels": 2.0},
    ]  # fmt: skip


def test_kernel_summary_counts_and_ranks_by_device_time(profile_module):
    event = lambda name, us: types.SimpleNamespace(name=name, device_time_total=us)  # noqa: E731
    kernels = [event("copy", 10.0), event("gemm", 300.0), event("copy", 15.0), event("layer_norm", 40.0)]
    summary = profile_module.summarise_kernels(kernels)
    assert summary["kernels"] == 4
    assert summary["kernel_ms"] == pytest.approx(0.365)
    assert summary["top_kernels"] == [
        {"name": "gemm", "calls": 1, "ms": pytest.approx(0.3)},
        {"name": "layer_norm", "calls": 1, "ms": pytest.approx(0.04)},
        {"name": "copy", "calls": 2, "ms": pytest.approx(0.025)},
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda(tmp_path):
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--output_dir", str(tmp_path)], env=ENV, capture_output=True, text=True
    )
    assert process.returncode == 1
    assert process.stdout.strip().splitlines() == [
        "cuda_launch_profile.py: CUDA is required for --device cuda (use --device cpu to check the path)"
    ]
    assert list(tmp_path.iterdir()) == []
