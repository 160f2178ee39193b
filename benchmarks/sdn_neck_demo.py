#!/usr/bin/env python
"""The SDN-style neck (unofficial reconstruction; no official code exists) measured on the demo data at the main
job's scale: the README's Trainer run (demo recipe, 6 epochs of 64 generated images, 224 x 160) of SeMask-FPN and of
VWFormer (over a Swin of the demo SeMask-Swin's size), each with and without ``use_sdn_neck``, for 3 seeds; mIoU,
Boundary IoU and trimap mIoU of the validation split, and what the neck adds: parameters, GMACs and CPU latency of
one 224 x 160 image.

    python benchmarks/sdn_neck_demo.py [--seeds 0 1 2] [--families semask-fpn vwformer] [--parallel 2]

Runs are independent processes with one torch thread each (``--parallel`` at a time). What this measures is our
reconstruction on a toy dataset, not the paper's claims. Results: ``benchmarks/results/sdn_neck_demo.json``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
TRAINER_SCRIPT = ROOT / "examples" / "run_semantic_segmentation.py"
METRICS = ("eval_mean_iou", "eval_mean_boundary_iou", "eval_trimap_mean_iou")
FAMILIES = ("semask-fpn", "vwformer")


def vwformer_demo_config():
    """VWFormer over a Swin of the demo SeMask-Swin's size (embed 32, depths 2-2-2-2), decoder width 64."""
    from transformers import SwinConfig

    from hf_semseg.demo_data import DEMO_CLASSES
    from hf_semseg.models.configuration_vwformer import VWFormerConfig

    id2label = dict(enumerate(DEMO_CLASSES))
    backbone = SwinConfig(
        embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], out_features=["stage1", "stage2", "stage3", "stage4"]
    )
    return VWFormerConfig(
        backbone_config=backbone,
        decoder_hidden_size=64,
        num_attention_heads=2,
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )


def model_for(family: str, use_sdn_neck: bool, seed: int = 0):
    from hf_semseg.demo_data import demo_model_config
    from hf_semseg.models.modeling_semask_swin import SeMaskSwinForSemanticSegmentation
    from hf_semseg.models.modeling_vwformer import VWFormerForSemanticSegmentation

    torch.manual_seed(seed)
    if family == "semask-fpn":
        config = demo_model_config()
        config.use_sdn_neck = use_sdn_neck
        return SeMaskSwinForSemanticSegmentation(config)
    config = vwformer_demo_config()
    config.use_sdn_neck = use_sdn_neck
    return VWFormerForSemanticSegmentation(config)


def train(family: str, use_sdn_neck: bool, seed: int, work: Path) -> dict:
    output_dir = work / f"{family}-{'neck' if use_sdn_neck else 'plain'}-{seed}"
    command = [
        sys.executable, str(TRAINER_SCRIPT), "--output_dir", str(output_dir), "--seed", str(seed),
        "--num_predictions", "0", "--config_overrides", json.dumps({"use_sdn_neck": use_sdn_neck}),
    ]  # fmt: skip
    if family == "vwformer":  # the Trainer script builds SeMask-FPN by default; VWFormer starts from a saved init
        command += ["--model_name_or_path", str(work / f"vwformer-init-{seed}")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{output_dir.name} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    return {"seconds": round(time.perf_counter() - start, 1), **{key: metrics[key] for key in METRICS}}


def cost(family: str, use_sdn_neck: bool, repeats: int = 20) -> dict:
    """Parameters, GMACs (the harness's flop counter / 2: torch's, plus the oneDNN matmul and convolution kernels the
    dense layers run at CPU inference, which torch's table does not know) and median latency of one 224 x 160 image,
    2 threads."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py sits next to this script
    import harness

    torch.set_num_threads(2)
    model = model_for(family, use_sdn_neck).eval()
    pixel_values = torch.randn(1, 3, 160, 224)
    gmacs = harness.count_gmacs(model, pixel_values)
    times = []
    with torch.no_grad():
        for _ in range(3):
            model(pixel_values)
        for _ in range(repeats):
            start = time.perf_counter()
            model(pixel_values)
            times.append(time.perf_counter() - start)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "gmacs": gmacs,
        "latency_ms": 1000 * statistics.median(times),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "sdn_neck_demo.json")
    args = parser.parse_args(argv)
    runs = [(family, neck, seed) for family in args.families for neck in (False, True) for seed in args.seeds]
    with tempfile.TemporaryDirectory() as work, ThreadPoolExecutor(args.parallel) as pool:
        for family in args.families:  # the VWFormer initial weights, before the runs that read them
            for seed in args.seeds:
                if family == "vwformer":
                    model_for("vwformer", False, seed).save_pretrained(Path(work) / f"vwformer-init-{seed}")
        results = list(pool.map(lambda run: train(*run, Path(work)), runs))
    report = {"runs": [], "summary": {}}
    for (family, neck, seed), result in zip(runs, results):
        report["runs"].append({"family": family, "use_sdn_neck": neck, "seed": seed, **result})
    for family in args.families:
        for neck in (False, True):
            rows = [r for r in report["runs"] if r["family"] == family and r["use_sdn_neck"] == neck]
            summary = {key: statistics.mean(r[key] for r in rows) for key in METRICS}
            summary.update({f"{key}_stdev": statistics.pstdev(r[key] for r in rows) for key in METRICS})
            summary.update(cost(family, neck))
            report["summary"][f"{family}{' + SDN neck' if neck else ''}"] = summary
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print("| model | mIoU | Boundary IoU | trimap mIoU | parameters | GMACs | latency (ms) |")
    print("|---|---|---|---|---|---|---|")
    for name, s in report["summary"].items():
        print(
            f"| {name} | {s['eval_mean_iou']:.3f} ± {s['eval_mean_iou_stdev']:.3f} "
            f"| {s['eval_mean_boundary_iou']:.3f} ± {s['eval_mean_boundary_iou_stdev']:.3f} "
            f"| {s['eval_trimap_mean_iou']:.3f} ± {s['eval_trimap_mean_iou_stdev']:.3f} "
            f"| {s['parameters'] / 1e6:.2f}M | {s['gmacs']:.2f} | {s['latency_ms']:.1f} |"
        )
    return report


if __name__ == "__main__":
    main()
