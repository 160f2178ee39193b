"""Any-precision weights on the demo data (issue: vertical-layered weights and once QAT): post-training slicing of the
float model against once QAT over {8, 4, 2}, at the main job's scale.

    python benchmarks/any_precision_demo.py [--seeds 0 1 2] [--output benchmarks/results/any_precision_demo.json]

1. Trains the main job (``examples/run_semantic_segmentation.py``, the demo recipe: demo SeMask-Swin FPN, 6 epochs of
   64 generated images) in float, and again with ``--weight_bits 8 4 2`` (once QAT), same seed, same steps, one
   process each, for each seed (0 and 1 by default: mean and standard deviation over them).
2. Evaluates on the validation split (``examples/evaluate_semantic_segmentation.py``): the float model; the float model
   post-training sliced (8-bit codes by rounding, then the top b bits) and the once-QAT model at 8, 6, 4, 3, 2 bits
   (and 1, the sign alone, beyond the trained widths).
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
EVALUATED_WIDTHS = (8, 6, 4, 3, 2, 1)
TRAINED_WIDTHS = (8, 4, 2)


def train(output_dir: Path, seed: int, extra: list[str], reuse: bool = False) -> dict:
    if not (reuse and (output_dir / "all_results.json").is_file()):
        train_run(output_dir, seed, extra)
    results = json.loads((output_dir / "all_results.json").read_text())
    return {key: results[key] for key in ("train_runtime", "train_steps", "train_loss", "eval_mean_iou")}


def train_run(output_dir: Path, seed: int, extra: list[str]) -> None:
    command = [
        sys.executable, str(ROOT / "examples" / "run_semantic_segmentation.py"),
        "--output_dir", str(output_dir), "--seed", str(seed), "--num_predictions", "0", *extra,
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


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


def run_seed(args, seed: int, evaluator) -> dict:
    """Trains the float and the once-QAT model of one seed and evaluates both (and the sliced float model)."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    import hf_semseg  # noqa: F401

    work = args.work_dir / f"seed-{seed}"
    float_dir, qat_dir, sliced_dir = (work / name for name in ("float", "once-qat-8-4-2", "float-sliced"))
    runs = {
        "float": train(float_dir, seed, [], args.reuse),
        "once_qat": train(qat_dir, seed, ["--weight_bits", *map(str, TRAINED_WIDTHS)], args.reuse),
    }
    # the post-training form of the float model, saved as a codes folder (one call: to_any_precision)
    sliced = AutoModelForSemanticSegmentation.from_pretrained(float_dir).to_any_precision(list(EVALUATED_WIDTHS))
    sliced.save_pretrained(sliced_dir)
    AutoImageProcessor.from_pretrained(float_dir).save_pretrained(sliced_dir)

    miou = {"float": evaluate(evaluator, float_dir, None), "post_training_sliced": {}, "once_qat": {}}
    for bits in EVALUATED_WIDTHS:
        miou["post_training_sliced"][bits] = evaluate(evaluator, sliced_dir, bits)
        miou["once_qat"][bits] = evaluate(evaluator, qat_dir, bits)
    agreement = {"post_training_sliced": agreement_with_8_bits(sliced_dir), "once_qat": agreement_with_8_bits(qat_dir)}
    sizes = {name: (folder / "model.safetensors").stat().st_size for name, folder in
             (("float", float_dir), ("post_training_sliced", sliced_dir), ("once_qat", qat_dir))}  # fmt: skip
    per_step = {name: run["train_runtime"] / run["train_steps"] for name, run in runs.items()}
    return {
        "runs": runs,
        "mean_iou": miou,
        "agreement_with_8_bits": agreement,
        "checkpoint_bytes": sizes,
        "train_seconds_per_step": per_step,
        "train_time_ratio_once_qat_to_float": per_step["once_qat"] / per_step["float"],
        "float_dir": float_dir,
    }


def agreement_with_8_bits(folder: Path) -> dict:
    """Per width, on the validation images: the relative L2 distance of the logits from the same model's 8-bit logits
    and the fraction of pixels whose predicted class is the 8-bit model's (a finer measure than mIoU, which on the
    demo data moves only by a few boundary pixels)."""
    import numpy as np
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    from hf_semseg.training import load_segmentation_dataset

    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    validation = load_segmentation_dataset(None)["validation"]
    pixels = torch.cat(
        [processor(np.array(sample["image"]), return_tensors="pt")["pixel_values"] for sample in validation]
    )
    with torch.no_grad():
        reference = model.set_weight_bits(8)(pixels).logits
        rows = {}
        for bits in EVALUATED_WIDTHS[1:]:
            logits = model.set_weight_bits(bits)(pixels).logits
            rows[bits] = {
                "relative_logit_distance": ((logits - reference).norm() / reference.norm()).item(),
                "pixels_agreeing": (logits.argmax(1) == reference.argmax(1)).float().mean().item(),
            }
    return rows


def step_time_ratio(repeats: int = 5) -> dict:
    """Seconds per train step (forward + backward, batch 8 of 160x160 crops, the demo model) of float training and of
    once QAT over the trained widths, measured round-robin in one process (median of ``repeats``): less exposed to
    a shared machine's load than the two training runs' wall times."""
    import time

    from hf_semseg.demo_data import demo_model_config
    from hf_semseg.models.modeling_semask_swin import SeMaskSwinForSemanticSegmentation
    from hf_semseg.training import prepare_once_qat

    torch.manual_seed(0)
    float_model = SeMaskSwinForSemanticSegmentation(demo_model_config()).train()
    qat_model = SeMaskSwinForSemanticSegmentation(demo_model_config()).train()
    plan = prepare_once_qat(qat_model, list(TRAINED_WIDTHS))
    inputs = {"pixel_values": torch.randn(8, 3, 160, 160), "labels": torch.randint(0, 4, (8, 160, 160))}
    steps = {
        "float": lambda: float_model(**inputs).loss.backward(),
        "once_qat": lambda: plan.loss(qat_model, qat_model, inputs)[0].backward(),
        "one_width_of_the_qat_model": lambda: qat_model(**inputs).loss.backward(),
    }
    times = {name: [] for name in steps}
    for _ in range(repeats + 1):  # the first round warms up
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    medians = {name: sorted(values[1:])[repeats // 2] for name, values in times.items()}
    return {
        "seconds_per_step": medians,
        "once_qat_to_float": medians["once_qat"] / medians["float"],
        "one_width_to_float": medians["one_width_of_the_qat_model"] / medians["float"],
    }


def mean_std(values: list[float]) -> dict:
    tensor = torch.tensor(values, dtype=torch.float64)
    return {"mean": tensor.mean().item(), "std": tensor.std().item() if len(values) > 1 else 0.0}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--reuse", action="store_true", help="keep the trained folders of an earlier run in work_dir")
    parser.add_argument("--work_dir", type=Path, default=ROOT / "outputs" / "any-precision-demo")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "any_precision_demo.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    evaluator = load_evaluator()
    per_seed = {seed: run_seed(args, seed, evaluator) for seed in args.seeds}
    first = per_seed[args.seeds[0]]
    summary = {"float": mean_std([r["mean_iou"]["float"] for r in per_seed.values()])}
    for name in ("post_training_sliced", "once_qat"):
        summary[name] = {
            bits: mean_std([r["mean_iou"][name][bits] for r in per_seed.values()]) for bits in EVALUATED_WIDTHS
        }
    agreement = {
        name: {
            bits: {
                key: mean_std([r["agreement_with_8_bits"][name][bits][key] for r in per_seed.values()])
                for key in ("relative_logit_distance", "pixels_agreeing")
            }
            for bits in EVALUATED_WIDTHS[1:]
        }
        for name in ("post_training_sliced", "once_qat")
    }
    sizes = first["checkpoint_bytes"]
    ratios = sorted(r["train_time_ratio_once_qat_to_float"] for r in per_seed.values())
    report = {
        "seeds": args.seeds,
        "recipe": "main job (demo SeMask-Swin FPN, demo data, 6 epochs of 64 images, batch 8, 2 CPU threads)",
        "trained_widths": list(TRAINED_WIDTHS),
        "mean_iou": summary,
        "agreement_with_8_bits": agreement,
        "per_seed": {seed: {k: v for k, v in r.items() if k != "float_dir"} for seed, r in per_seed.items()},
        "checkpoint_bytes": sizes,
        "checkpoint_ratio_to_float": {name: size / sizes["float"] for name, size in sizes.items()},
        "train_time_ratio_once_qat_to_float_of_the_runs_median": ratios[len(ratios) // 2],
        "train_step_time": step_time_ratio(),
        "weight_relative_rmse": weight_errors(first["float_dir"]),
        "torch": torch.__version__,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")

    def cell(value: dict) -> str:
        return f"{value['mean']:.3f} ± {value['std']:.3f}"

    print(f"\nmIoU over seeds {args.seeds} (mean ± std); float model {cell(summary['float'])}")
    print("| weights | " + " | ".join(f"{b} bits" for b in EVALUATED_WIDTHS) + " |")
    print("|---|" + "---:|" * len(EVALUATED_WIDTHS))
    for name in ("post_training_sliced", "once_qat"):
        print(f"| {name} | " + " | ".join(cell(summary[name][b]) for b in EVALUATED_WIDTHS) + " |")
    print("relative logit distance from the same model's 8 bits / pixels agreeing with it:")
    for name in ("post_training_sliced", "once_qat"):
        print(
            f"| {name} | "
            + " | ".join(
                f"{agreement[name][b]['relative_logit_distance']['mean']:.3f} / "
                f"{agreement[name][b]['pixels_agreeing']['mean']:.4f}"
                for b in EVALUATED_WIDTHS[1:]
            )
            + " |"
        )
    print("checkpoint size vs float:", {k: round(v, 3) for k, v in report["checkpoint_ratio_to_float"].items()})
    step_time = report["train_step_time"]
    print(
        f"training time per step, once QAT / float: {step_time['once_qat_to_float']:.2f} (one width "
        f"{step_time['one_width_to_float']:.2f}); of the whole runs: "
        f"{report['train_time_ratio_once_qat_to_float_of_the_runs_median']:.2f}"
    )
    for bits, row in report["weight_relative_rmse"].items():
        print(f"  {bits} bits: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
    return report


if __name__ == "__main__":
    main()
