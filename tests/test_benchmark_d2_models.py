"""``benchmarks/benchmark_d2_models.py``, the whole detectron2-style models against transformers' Mask2Former (and
MaskFormer) with the same backbone:

* the pair ratios and their allowances (the GMACs ratio, the VW numerator in the original's layer order), on hand
  numbers;
* ``--combine``: the per-run ratios, their medians and the verdict on the median, on hand numbers;
* a ``--smoke`` run of three Swin-B models end to end: a row per model with fp32 and bf16 timings, the VW model's
  original-order count above its own, ratios that are the ratios of the rows' medians.

The CUDA path of every model (and the GMAC counting of the SeMask FaPN models) runs in
``tests/test_benchmark_cuda_script.py``'s smoke run.
"""

import json
import os
import subprocess
import sys

import pytest
from test_benchmark_cuda_script import load_benchmark_module

from conftest import REPO_ROOT


d2_models = load_benchmark_module("benchmark_d2_models")
SCRIPT = REPO_ROOT / "benchmarks" / "benchmark_d2_models.py"


def test_every_pair_names_measured_models_of_one_group():
    for numerator, denominator, kind in d2_models.PAIRS:
        group = next(name for name, models in d2_models.GROUPS.items() if denominator in models)
        assert numerator in d2_models.GROUPS[group], (numerator, denominator)
        assert denominator == f"hf_{kind}_swin_{group}"
    assert set(d2_models.FAMILY) == set(d2_models.MODELS)


def test_pair_ratios_and_allowances_on_hand_numbers():
    rows = [
        {"model": "vw_maskformer_swin_base", "gmacs": 30.0, "gmacs_original_order": 40.0,
         "float32_median_s": 2.0, "bfloat16_median_s": 1.5},
        {"model": "hf_mask2former_swin_base", "gmacs": 50.0, "float32_median_s": 4.0, "bfloat16_median_s": 1.8},
        {"model": "hf_maskformer_swin_base", "gmacs": 32.0, "float32_median_s": 1.9},
    ]  # fmt: skip
    ratios = d2_models.pair_ratios(rows)
    # only the pairs whose two models were measured
    assert [(r["numerator"], r["denominator"], r["kind"]) for r in ratios] == [
        ("vw_maskformer_swin_base", "hf_mask2former_swin_base", "mask2former"),
        ("vw_maskformer_swin_base", "hf_maskformer_swin_base", "maskformer"),
    ]
    against_mask2former, against_maskformer = ratios
    assert against_mask2former["allowed_latency_ratio"] == pytest.approx(40 / 50)  # the original order's MACs
    assert against_mask2former["gmacs_ratio"] == pytest.approx(30 / 50)
    assert against_mask2former["float32_ratio"] == pytest.approx(0.5)
    assert against_mask2former["float32_meets"] is True
    assert against_mask2former["bfloat16_ratio"] == pytest.approx(1.5 / 1.8)
    assert against_mask2former["bfloat16_meets"] is False  # 0.833 > 0.8
    assert against_maskformer["allowed_latency_ratio"] == pytest.approx(40 / 32)
    assert against_maskformer["float32_ratio"] == pytest.approx(2.0 / 1.9)
    assert against_maskformer["float32_meets"] is True
    assert "bfloat16_ratio" not in against_maskformer  # the peer has no bf16 figure


def test_combine_takes_the_median_of_the_runs_and_judges_it(tmp_path):
    def report(float32_ratio, bfloat16_ratio=None):
        entry = {"numerator": "semask_maskformer_large", "denominator": "hf_maskformer_swin_large",
                 "kind": "maskformer", "allowed_latency_ratio": 1.01, "float32_ratio": float32_ratio}  # fmt: skip
        if bfloat16_ratio is not None:
            entry["bfloat16_ratio"] = bfloat16_ratio
        return {"environment": {"date": "d"}, "ratios": [entry]}

    paths = []
    for index, ratios in enumerate([(1.05, 0.90), (0.95, 1.20), (1.00, None)]):
        paths.append(tmp_path / f"run{index}.json")
        paths[-1].write_text(json.dumps(report(*ratios)))
    (entry,) = d2_models.combine(paths)["ratios"]
    assert entry["float32_ratios"] == [1.05, 0.95, 1.00]
    assert entry["float32_median_ratio"] == 1.00
    assert entry["float32_meets"] is True  # the median 1.00 <= 1.01, though one run was above
    assert entry["bfloat16_ratios"] == [0.90, 1.20]  # the run without bf16 is left out
    assert entry["bfloat16_median_ratio"] == pytest.approx(1.05)
    assert entry["bfloat16_meets"] is False


def test_smoke_run_of_three_models(tmp_path):
    output = tmp_path / "d2_models.json"
    models = ["hf_mask2former_swin_base", "hf_maskformer_swin_base", "vw_maskformer_swin_base"]
    command = [sys.executable, str(SCRIPT), "--smoke", "--groups", "base", "--models", *models, "--output", str(output)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    rows = {row["model"]: row for row in report["results"]}
    assert sorted(rows) == sorted(models)
    for row in rows.values():
        assert row["size"] == d2_models.SMOKE_SIZE
        for dtype in d2_models.DTYPES:
            assert len(row[f"{dtype}_times_s"]) == 1
            assert row[f"{dtype}_median_s"] == row[f"{dtype}_times_s"][0] > 0
            assert row[f"{dtype}_achieved_gflops"] == pytest.approx(2 * row["gmacs"] / row[f"{dtype}_median_s"])
    vw = rows["vw_maskformer_swin_base"]
    assert vw["gmacs_original_order"] > vw["gmacs"] > 0  # the VW block's inference rewrites save MACs
    assert "gmacs_original_order" not in rows["hf_maskformer_swin_base"]
    assert len(report["ratios"]) == 2
    for entry in report["ratios"]:
        top, bottom = rows[entry["numerator"]], rows[entry["denominator"]]
        assert entry["allowed_latency_ratio"] == pytest.approx(top["gmacs_original_order"] / bottom["gmacs"])
        for dtype in d2_models.DTYPES:
            assert entry[f"{dtype}_ratio"] == pytest.approx(top[f"{dtype}_median_s"] / bottom[f"{dtype}_median_s"])
        assert f"{entry['numerator']} / {entry['denominator']} [{entry['kind']}]" in result.stdout
    assert report["settings"]["smoke"] is True
    assert [matmul["dtype"] for matmul in report["matmul"]] == list(d2_models.DTYPES)
    assert {matmul["size"] for matmul in report["matmul"]} == {d2_models.SMOKE_GEMM_SIZE}
    assert f"{d2_models.SMOKE_GEMM_SIZE}^2 float32 matmul (base)" in result.stdout
