"""Latency and peak-memory benchmark of SeMask-L Mask2Former against transformers' Mask2Former with a Swin-L backbone.

Both models have the same size: Swin-L (embed 192, depths 2-2-18-2, window 12) feeding the same Mask2Former head
(6-layer deformable-attention pixel decoder, 9 masked-attention layers, 100 queries, 150 classes); SeMask adds one
Semantic Layer per stage (the ADE20K release: last stage global) and the parameter-free semantic head. The ratio
SeMask-L Mask2Former / Mask2Former-Swin-L is what the semantic layers cost in this port.

What is measured, for every (model, mode, batch size), at ``--size`` (640, the ADE20K test and crop size):

* ``forward``: one inference step, ``model.eval()`` under ``torch.no_grad()``, returning the query predictions.
* ``train``: one forward + backward step in ``model.train()`` with a random semantic label map: for SeMask the full
  loss of the model (``labels=``); for transformers' model ``mask_labels``/``class_labels`` built from the same map
  (its loss needs scipy; without scipy the train row reports that error).

Latency is measured round-robin in one process (each round runs every model once, so load changes hit all models
alike), peak memory in a fresh process per model (the helpers of ``benchmark_semask_fpn.py``: CPU ``VmHWM`` after a
``clear_refs`` reset, CUDA ``max_memory_allocated``), both reported as increases over the memory held after the model
and inputs were built.

Models (random initialisation, nothing downloaded):

* ``semask_mask2former_large``: ``SeMaskMask2FormerForSemanticSegmentation``, the released ADE20K architecture.
* ``hf_mask2former_swin_large``: transformers' ``Mask2FormerForUniversalSegmentation`` on ``SwinBackbone`` Swin-L
  (without scipy, whose matcher it needs, its forward is built from ``Mask2FormerModel`` plus the same class head -
  the same computation without the criterion).

``--quick`` is a smoke run with tiny versions of both models (size 128, batch 1, one repeat).

Run from the repository root: ``HF_HUB_OFFLINE=1 python benchmarks/benchmark_semask_mask2former.py``
(``--device cuda --dtype bfloat16`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark_semask_fpn as common  # noqa: E402  (shared measurement helpers)


REPO_ROOT = common.REPO_ROOT
RESULT_MARKER = common.RESULT_MARKER
NUM_LABELS = 150
MODELS = ("semask_mask2former_large", "hf_mask2former_swin_large")
MODES = ("forward", "train")
RATIOS = (("semask_mask2former_large", "hf_mask2former_swin_large", None),)

SWIN = {
    # (embed_dim, depths, heads, window) and the Mask2Former head (feature/hidden size, encoder/decoder layers,
    # queries, heads, decoder FFN)
    "large": ((192, [2, 2, 18, 2], [6, 12, 24, 48], 12), (256, 6, 10, 100, 8, 2048)),
    "tiny": ((32, [2, 2, 2, 2], [1, 2, 4, 8], 7), (32, 1, 3, 10, 4, 64)),
}


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def head_kwargs(size: str) -> dict:
    feature, encoder_layers, decoder_layers, queries, heads, ffn = SWIN[size][1]
    return dict(
        feature_size=feature,
        mask_feature_size=feature,
        hidden_dim=feature,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        num_queries=queries,
        num_attention_heads=heads,
        dim_feedforward=ffn,
        num_labels=NUM_LABELS,
    )


def build_model(name: str, size: str):
    """Randomly initialised model ``name`` (one of ``MODELS``) at ``size`` ("large" or "tiny")."""
    import torch

    (embed_dim, depths, heads, window), _ = SWIN[size]
    if name == "semask_mask2former_large":
        import hf_semseg

        if size == "large":
            return hf_semseg.SeMaskMask2FormerForSemanticSegmentation(
                hf_semseg.variant_config("semask-mask2former-large-ade20k")
            )
        backbone = hf_semseg.SeMaskSwinConfig(
            embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=window, semantic_window_size=window
        )
        return hf_semseg.SeMaskMask2FormerForSemanticSegmentation(
            hf_semseg.SeMaskMask2FormerConfig(backbone_config=backbone, **head_kwargs(size))
        )
    if name == "hf_mask2former_swin_large":
        from transformers import Mask2FormerConfig, SwinConfig
        from transformers.models.mask2former import modeling_mask2former

        backbone = SwinConfig(
            embed_dim=embed_dim,
            depths=depths,
            num_heads=heads,
            window_size=window,
            drop_path_rate=0.3,
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        config = Mask2FormerConfig(backbone_config=backbone, **head_kwargs(size))
        try:
            return modeling_mask2former.Mask2FormerForUniversalSegmentation(config)
        except ImportError:  # scipy missing: same forward computation, no criterion

            class Mask2FormerWithoutCriterion(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.model = modeling_mask2former.Mask2FormerModel(config)
                    self.class_predictor = torch.nn.Linear(config.hidden_dim, config.num_labels + 1)

                def forward(self, pixel_values, mask_labels=None, class_labels=None):
                    if mask_labels is not None:
                        raise ImportError("transformers' Mask2Former loss needs scipy, which is not installed")
                    output = self.model(pixel_values, output_hidden_states=True)
                    states = output.transformer_decoder_intermediate_states[-1].transpose(0, 1)
                    return self.class_predictor(states), output.masks_queries_logits[-1]

            return Mask2FormerWithoutCriterion()
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def make_inputs(batch_size: int, size: int, seed: int, device):
    import torch

    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator)
    # a label map made of 16 blocks of random classes, so both models see a handful of target masks
    blocks = torch.randint(0, NUM_LABELS, (batch_size, 4, 4), generator=generator)
    labels = blocks.repeat_interleave(size // 4, dim=1).repeat_interleave(size // 4, dim=2)
    return pixel_values.to(device), labels.to(device)


def make_step(model, name: str, mode: str, pixel_values, labels, autocast):
    """The function timed once per iteration."""
    import torch

    from hf_semseg.models.modeling_semask_mask2former import semantic_map_to_mask_targets

    def forward_step():
        with torch.no_grad(), autocast():
            model(pixel_values)

    if name == "semask_mask2former_large":

        def loss():
            return model(pixel_values, labels=labels).loss

    else:
        class_labels, mask_labels = semantic_map_to_mask_targets(labels, ignore_index=255)

        def loss():
            return model(pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss

    def train_step():
        model.zero_grad(set_to_none=True)
        with autocast():
            value = loss()
        value.backward()

    return forward_step if mode == "forward" else train_step


# ----------------------------------------------------------------------------------------------------------------
# Workers (one JSON line back)
# ----------------------------------------------------------------------------------------------------------------


def run_worker(args) -> dict:
    """Peak memory and parameter count of one model for one (mode, batch size) in a process of its own."""
    import torch

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    (name,) = args.models
    model = build_model(name, args.model_size).to(device)
    pixel_values, labels = make_inputs(args.batch_size, args.size, args.seed, device)
    model.train() if args.mode == "train" else model.eval()
    autocast, synchronize = common.device_helpers(device, dtype)
    step = make_step(model, name, args.mode, pixel_values, labels, autocast)
    memory = common.PeakMemory(device)
    memory.start()
    times = common.time_iterations(step, args.warmup, args.repeats, synchronize)
    return {
        "memory_run_s": times,
        "params_m": sum(parameter.numel() for parameter in model.parameters()) / 1e6,
        "batchnorm_frozen": False,
        **memory.stop(),
    }


def run_latency_worker(args) -> dict:
    """Latency of every model of ``args.models`` for one (mode, batch size), round-robin in ONE process."""
    import torch

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    pixel_values, labels = make_inputs(args.batch_size, args.size, args.seed, device)
    autocast, synchronize = common.device_helpers(device, dtype)
    steps = {}
    for name in args.models:
        torch.manual_seed(args.seed)
        model = build_model(name, args.model_size).to(device)
        model.train() if args.mode == "train" else model.eval()
        steps[name] = make_step(model, name, args.mode, pixel_values, labels, autocast)
    errors = {}
    for _ in range(max(args.warmup, 1)):  # one untimed round at least: it also finds the models that cannot run
        for name, step in list(steps.items()):
            try:
                step()
            except ImportError as error:
                errors[name] = str(error)
                del steps[name]
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            synchronize()
            start = time.perf_counter()
            step()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return {"times": times, "errors": errors}


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def worker_command(args, models: list[str], mode: str, batch_size: int, latency: bool) -> list[str]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--latency-worker" if latency else "--worker",
        "--models", *models, "--mode", mode, "--batch-size", str(batch_size),
        "--size", str(args.size), "--device", args.device, "--dtype", args.dtype,
        "--threads", str(args.threads), "--seed", str(args.seed), "--model-size", args.model_size,
    ]  # fmt: skip
    counts = (args.warmup, args.repeats) if latency else (0, 1)
    return command + ["--warmup", str(counts[0]), "--repeats", str(counts[1])]


def run_subprocess(args, models: list[str], mode: str, batch_size: int, latency: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    process = subprocess.run(
        worker_command(args, models, mode, batch_size, latency), capture_output=True, text=True, env=env
    )
    for line in reversed(process.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    return {"error": (process.stderr.strip().splitlines() or [f"exit status {process.returncode}"])[-1]}


def run_all(args) -> list[dict]:
    results = []
    for batch_size in args.batch_sizes:
        for mode in args.modes:
            print(f"{mode} batch={batch_size}: latency, round-robin ...", end=" ", file=sys.stderr, flush=True)
            latency = run_subprocess(args, args.models, mode, batch_size, latency=True)
            print(latency.get("error", "done"), file=sys.stderr, flush=True)
            for model in args.models:
                base = {"model": model, "mode": mode, "batch_size": batch_size, "size": args.size}
                error = latency.get("error") or latency.get("errors", {}).get(model)
                if error:
                    results.append({**base, "error": error})
                    continue
                memory = run_subprocess(args, [model], mode, batch_size, latency=False)
                if "error" in memory:
                    results.append({**base, "error": memory["error"]})
                    continue
                times = latency["times"][model]
                median_s = statistics.median(times)
                results.append({
                    **memory, **base, "median_s": median_s, "images_per_s": batch_size / median_s, "times_s": times,
                })  # fmt: skip
    return results


def compute_ratios(results: list[dict]) -> list[dict]:
    """Latency and peak-memory ratios SeMask / transformers' Mask2Former per (mode, batch size)."""
    by_key = {(r["model"], r["mode"], r["batch_size"]): r for r in results if "error" not in r}
    ratios = []
    for mode, batch_size in sorted({(mode, batch) for _, mode, batch in by_key}, key=lambda key: (key[1], key[0])):
        for numerator, denominator, target in RATIOS:
            if (numerator, mode, batch_size) in by_key and (denominator, mode, batch_size) in by_key:
                top, bottom = by_key[numerator, mode, batch_size], by_key[denominator, mode, batch_size]
                value = top["median_s"] / bottom["median_s"]
                ratios.append({
                    "numerator": numerator, "denominator": denominator, "mode": mode, "batch_size": batch_size,
                    "ratio": value, "memory_ratio": top["peak_mem_mb"] / max(bottom["peak_mem_mb"], 1e-9),
                    "target_max": target, "meets_target": None,
                })  # fmt: skip
    return ratios


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to measure")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="forward and/or train")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    parser.add_argument("--size", type=int, default=640, help="square input side in pixels")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="half types run under torch.autocast")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every worker")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations before timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations (the median is reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON report (default benchmarks/results/semask_mask2former_<device>.json)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny models, size 128, batch 1, 1 repeat")
    parser.add_argument("--model-size", choices=tuple(SWIN), default="large", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--latency-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch_sizes, args.repeats, args.warmup, args.model_size = 128, [1], 1, 0, "tiny"
    if args.output is None:
        suffix = "_quick" if args.quick else ""
        args.output = (
            REPO_ROOT / "benchmarks" / "results" / f"semask_mask2former_{args.device.replace(':', '')}{suffix}.json"
        )
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker or args.latency_worker:
        result = run_latency_worker(args) if args.latency_worker else run_worker(args)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return
    env = common.environment(args)
    print(f"torch {env['torch']}, transformers {env['transformers']}, {args.device} {args.dtype}, "
          f"{args.threads} threads, {env['cpu_model']}, size {args.size}, models {args.model_size}, "
          f"warmup {args.warmup}, repeats {args.repeats}", flush=True)  # fmt: skip
    results = run_all(args)
    ratios = compute_ratios(results)
    print()
    print(common.format_results_table(results))
    print()
    print("SeMask-L Mask2Former / Mask2Former-Swin-L:")
    for r in ratios:
        print(f"  [{r['mode']}, batch {r['batch_size']}] latency {r['ratio']:.3f}, peak memory {r['memory_ratio']:.3f}")
    if not ratios:
        print("  (no ratio: a model was not measured or failed)")
    if args.quick:
        print("(--quick is a smoke run with tiny models: its figures mean nothing)")
    common.write_report(args.output, args, env, results, ratios)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
