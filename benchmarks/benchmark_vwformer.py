#!/usr/bin/env python
"""The VWFormer head versus transformers' UperNet head (hidden 512) on the same Swin-B features at 640x640, and the
two whole models: GMACs, parameters, forward latency and peak memory, in one run.

    python benchmarks/benchmark_vwformer.py [--size 640] [--repeats 10] [--threads 2] [--skip-whole-models]

* Heads: ``VWFormerHead`` of the released Swin-B ADE20K model (C = 512, 1 head, short-cut, 150 classes) and
  transformers' ``UperNetHead`` (hidden 512, pool scales 1/2/3/6, 150 classes) on one fixed set of random Swin-B
  feature maps (128/256/512/1024 channels at strides 4/8/16/32).
* Whole models: ``VWFormerForSemanticSegmentation`` (variant ``vwformer-swin-base-ade20k``) versus
  ``UperNetForSemanticSegmentation`` with the same Swin-B backbone (no auxiliary head).
* GMACs: ``torch.utils.flop_counter.FlopCounterMode`` on one forward (MACs = FLOPs / 2; reshapes not counted).
* Latency: all models of a group live in ONE process and are timed round-robin (median over ``--repeats`` rounds).
* Peak memory: the increase of the resident set during one forward, in a fresh subprocess per model.

Target (issue 3): our head at most 0.25x the UperNet head's latency in the same run, with the original's GMACs
(53.2; the original head measured 0.30x here with the original code).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from benchmark_semask_fpn import RESULT_MARKER, PeakMemory, environment, run_worker_command


HEADS = ("vwformer_head", "upernet_head")
WHOLE_MODELS = ("vwformer_swin_base", "upernet_swin_base")
TARGET_RATIO = 0.25
SWIN_B_CHANNELS = (128, 256, 512, 1024)


def swin_base_config():
    from transformers import SwinConfig

    return SwinConfig(
        embed_dim=128,
        depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32],
        window_size=12,
        image_size=384,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def build_model(name: str) -> torch.nn.Module:
    import hf_semseg

    if name == "vwformer_head":
        from hf_semseg.models.modeling_vwformer import VWFormerHead

        return VWFormerHead(hf_semseg.variant_config("vwformer-swin-base-ade20k"), list(SWIN_B_CHANNELS))
    if name == "upernet_head":
        from types import SimpleNamespace

        from transformers.models.upernet.modeling_upernet import UperNetHead

        config = SimpleNamespace(pool_scales=[1, 2, 3, 6], hidden_size=512, num_labels=150)
        return UperNetHead(config, in_channels=list(SWIN_B_CHANNELS))
    if name == "vwformer_swin_base":
        return hf_semseg.VWFormerForSemanticSegmentation(hf_semseg.variant_config("vwformer-swin-base-ade20k"))
    if name == "upernet_swin_base":
        from transformers import UperNetConfig, UperNetForSemanticSegmentation

        config = UperNetConfig(
            backbone_config=swin_base_config(), hidden_size=512, num_labels=150, use_auxiliary_head=False
        )
        return UperNetForSemanticSegmentation(config)
    raise ValueError(f"unknown model {name!r}")


def make_input(name: str, size: int):
    """Swin-B feature maps for the heads, an image for the whole models (fixed seeds: the same for every model)."""
    generator = torch.Generator().manual_seed(0)
    if name in HEADS:
        return tuple(
            torch.randn(1, channels, size // stride, size // stride, generator=generator)
            for channels, stride in zip(SWIN_B_CHANNELS, (4, 8, 16, 32))
        )
    return torch.randn(1, 3, size, size, generator=generator)


def count_gmacs(model, inputs) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(inputs)
    return counter.get_total_flops() / 2 / 1e9


def measure_group(args, names) -> dict:
    models = {name: build_model(name).eval() for name in names}
    inputs = {name: make_input(name, args.size) for name in names}
    gmacs = {name: count_gmacs(models[name], inputs[name]) for name in names}
    times = {name: [] for name in names}
    with torch.no_grad():
        for _ in range(args.warmup):
            for name in names:
                models[name](inputs[name])
        for _ in range(args.repeats):
            for name in names:
                start = time.perf_counter()
                models[name](inputs[name])
                times[name].append(time.perf_counter() - start)
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    return {"gmacs": gmacs, "times_s": times, "params": params}


def measure_memory(args, name: str) -> dict:
    model = build_model(name).eval()
    inputs = make_input(name, args.size)
    with torch.no_grad():
        memory = PeakMemory(torch.device("cpu"))
        memory.start()
        model(inputs)
        return memory.stop()


def memory_in_subprocess(args, name: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", name, "--size", str(args.size)]
    command += ["--threads", str(args.threads)]
    return run_worker_command(command, args.threads)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-whole-models", action="store_true")
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).resolve().parent / "results" / "vwformer_cpu.json"
    )
    parser.add_argument("--memory-worker", choices=HEADS + WHOLE_MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device, args.dtype, args.batch_size = "cpu", "float32", 1
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(RESULT_MARKER + json.dumps(measure_memory(args, args.memory_worker)), flush=True)
        return
    env = environment(args)
    print(f"torch {env['torch']}, transformers {env['transformers']}, cpu, {args.threads} threads, "
          f"{env['cpu_model']}, {args.size}x{args.size}, warmup {args.warmup}, repeats {args.repeats}")  # fmt: skip
    groups = [HEADS] if args.skip_whole_models else [HEADS, WHOLE_MODELS]
    rows, ratios = [], {}
    for names in groups:
        measured = measure_group(args, names)
        for name in names:
            median_s = statistics.median(measured["times_s"][name])
            rows.append({
                "model": name, "size": args.size, "median_s": median_s, "gmacs": measured["gmacs"][name],
                "params_M": measured["params"][name] / 1e6, "times_s": measured["times_s"][name],
                **memory_in_subprocess(args, name),
            })  # fmt: skip
        ours, peer = rows[-2], rows[-1]
        ratios[f"{ours['model']}/{peer['model']}"] = {
            "latency": ours["median_s"] / peer["median_s"],
            "gmacs": ours["gmacs"] / peer["gmacs"],
        }

    print(f"\n{'model':<20} {'GMACs':>8} {'params M':>9} {'s/iter':>8} {'peak MB':>8}")
    for r in rows:
        peak = f"{r['peak_mem_mb']:8.1f}" if "peak_mem_mb" in r else "   error"
        print(f"{r['model']:<20} {r['gmacs']:>8.1f} {r['params_M']:>9.2f} {r['median_s']:>8.3f} {peak}")
    print()
    for pair, ratio in ratios.items():
        print(f"{pair}: latency {ratio['latency']:.3f}x, GMACs {ratio['gmacs']:.3f}x")
    head_ratio = ratios["vwformer_head/upernet_head"]["latency"]
    verdict = "ok" if head_ratio <= TARGET_RATIO else "MISSED"
    print(f"head latency ratio {head_ratio:.3f} (target <= {TARGET_RATIO}: {verdict})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {"environment": env, "results": rows, "ratios": ratios, "target_head_ratio": TARGET_RATIO}
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
