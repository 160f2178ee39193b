"""Any-precision weights on the demo data (issue: vertical-layered weights and once QAT): post-training slicing of the
float model against once QAT over {8, 4, 2}, at the main job's scale.

    python benchmarks/any_precision_demo.py [--seed 42] [--output benchmarks/results/any_precision_demo.json]

1. Trains the main job (``examples/run_semantic_segmentation.py``, the demo recipe: demo SeMask-Swin FPN, 6 epochs of
   64 generated images) in float, and again with ``--weight_bits 8 4 2`` (once QAT), same seed, same steps, one
   process each.
2. Evaluates on the validation split (``examples/evaluate_semantic_segmentation.py``): the float model; the float model
   post-training sliced (8-bit codes by rounding, then the top b bits) and the once-QAT model at 8, 6, 4, 3, 2 bits.
3. Reports the checkpoint size per form, training time per step relative to float training, and the weight error of
   the mid-rise top-bit widths against a dedicated round-to-nearest quantiser per width (relative RMS over every
   quantised weight of the trained float model).

These are toy-data figures of our reconstruction (no code of the paper exists), not the paper's.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
EVALUATED_WIDTHS = (8, 6, 4, 3, 2)
TRAINED_WIDTHS = (8, 4, 2)


def train(output_dir: Path, seed: int, extra: list[str]) -> dict:
    command = [
        sys.executable, str(ROOT / "examples" / "run_semantic_segmentation.py"),
        "--output_dir", str(output_dir), "--seed", str(seed), "--num_predictions", "0", *extra,
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    results = json.loads((output_dir / "all_results.json").read_text())
    return {key: results[key] for key in ("train_runtime", "train_steps", "train_loss", "eval_mean_iou")}


def load_evaluator():
    spec = importlib.util.spec_from_file_location(
        "evaluate_example", ROOT / "examples" / "evaluate_semantic_segmentation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate(evaluator, folder: Path, bits: int | None) -> float:
    argv = ["--model", str(folder)] + ([] if bits is None else ["--weight_bits", str(bits)])
    return evaluator.main(argv)["mean_iou"]


def rounding_quantizer(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """A dedicated b-bit quantiser: symmetric, per output channel, round to nearest, scale max|w| / (2^(b-1) - 1)."""
    levels = 2 ** (bits - 1) - 1
    scale = weight.flatten(1).abs().amax(1).reshape(-1, *([1] * (weight.dim() - 1))) / levels
    return torch.round(weight / scale).clamp(-levels - 1, levels) * scale


def weight_errors(float_folder: Path) -> dict:
    from transformers import AutoModelForSemanticSegmentation

    import hf_semseg  # noqa: F401
    from hf_semseg.models.modeling_any_precision import dequantize_weight, quantize_weight

    # the float master form keeps the trained float weights as they are
    model = AutoModelForSemanticSegmentation.from_pretrained(float_folder)
    names = {name for name, _ in model.to_any_precision([8], trainable=True).vertical_layers()}
    weights = [module.weight.detach() for name, module in model.named_modules() if name in names]
    norm = torch.cat([w.flatten() for w in weights]).pow(2).mean().sqrt()
    rows = {}
    for bits in range(1, 9):
        vertical = torch.cat([(dequantize_weight(*quantize_weight(w), bits) - w).flatten() for w in weights])
        row = {"vertical_mid_rise": (vertical.pow(2).mean().sqrt() / norm).item()}
        if bits >= 2:
            rounding = torch.cat([(rounding_quantizer(w, bits) - w).flatten() for w in weights])
            row["dedicated_rounding"] = (rounding.pow(2).mean().sqrt() / norm).item()
        rows[bits] = row
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work_dir", type=Path, default=ROOT / "outputs" / "any-precision-demo")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "any_precision_demo.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    float_dir, qat_dir, sliced_dir = (args.work_dir / name for name in ("float", "once-qat-8-4-2", "float-sliced"))
    runs = {
        "float": train(float_dir, args.seed, []),
        "once_qat": train(qat_dir, args.seed, ["--weight_bits", *map(str, TRAINED_WIDTHS)]),
    }

    from transformers import AutoModelForSemanticSegmentation

    import hf_semseg  # noqa: F401

    # the post-training form of the float model, saved as a codes folder (one call: to_any_precision)
    sliced = AutoModelForSemanticSegmentation.from_pretrained(float_dir).to_any_precision(list(EVALUATED_WIDTHS))
    sliced.save_pretrained(sliced_dir)

    evaluator = load_evaluator()
    miou = {"float": evaluate(evaluator, float_dir, None), "post_training_sliced": {}, "once_qat": {}}
    for bits in EVALUATED_WIDTHS:
        miou["post_training_sliced"][bits] = evaluate(evaluator, sliced_dir, bits)
        miou["once_qat"][bits] = evaluate(evaluator, qat_dir, bits)

    sizes = {name: (folder / "model.safetensors").stat().st_size for name, folder in
             (("float", float_dir), ("post_training_sliced", sliced_dir), ("once_qat", qat_dir))}  # fmt: skip
    per_step = {name: run["train_runtime"] / run["train_steps"] for name, run in runs.items()}
    report = {
        "seed": args.seed,
        "recipe": "main job (demo SeMask-Swin FPN, demo data, 6 epochs of 64 images, batch 8, 2 CPU threads)",
        "trained_widths": list(TRAINED_WIDTHS),
        "runs": runs,
        "mean_iou": miou,
        "checkpoint_bytes": sizes,
        "checkpoint_ratio_to_float": {name: size / sizes["float"] for name, size in sizes.items()},
        "train_seconds_per_step": per_step,
        "train_time_ratio_once_qat_to_float": per_step["once_qat"] / per_step["float"],
        "weight_relative_rmse": weight_errors(float_dir),
        "torch": torch.__version__,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\nfloat mIoU {miou['float']:.3f}")
    print("| weights | " + " | ".join(f"{b} bits" for b in EVALUATED_WIDTHS) + " |")
    print("|---|" + "---:|" * len(EVALUATED_WIDTHS))
    for name in ("post_training_sliced", "once_qat"):
        print(f"| {name} | " + " | ".join(f"{miou[name][b]:.3f}" for b in EVALUATED_WIDTHS) + " |")
    print("checkpoint size vs float:", {k: round(v, 3) for k, v in report["checkpoint_ratio_to_float"].items()})
    print(f"training time per step, once QAT / float: {report['train_time_ratio_once_qat_to_float']:.2f}")
    for bits, row in report["weight_relative_rmse"].items():
        print(f"  {bits} bits: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
    return report


if __name__ == "__main__":
    main()
