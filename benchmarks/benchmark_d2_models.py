#!/usr/bin/env python
"""The detectron2-style families as whole models against transformers' Mask2Former with the same backbone (issue
17's rule for them), and against transformers' MaskFormer where the family is a MaskFormer: GMACs, forward latency
in fp32 and under bf16 autocast, achieved GFLOP/s, in one run.

    python benchmarks/benchmark_d2_models.py [--groups base large] [--repeats 3] [--bf16-repeats 3] [--output PATH]
    python benchmarks/benchmark_d2_models.py --combine RUN.json [RUN.json ...] --output COMBINED.json

* Models: the ``*Model`` class of each family (backbone, pixel decoder, transformer decoder with the mask logits of
  its predictions), built from the configuration of its released ADE20K model, random weights of its own
  initialisation, eval mode. The class heads and the losses are left out on both sides (a ``Linear(256, 151)`` per
  prediction, the same everywhere; transformers' losses need scipy).

  - group ``base`` (Swin-B: embed 128, depths 2-2-18-2, window 12; the configurations of ``benchmark_vw_d2.py``):
    ``hf_mask2former_swin_base`` (transformers' ``Mask2FormerModel``, the peer), ``hf_maskformer_swin_base``
    (``MaskFormerModel``, FPN 256), ``vw_maskformer_swin_base`` (``VWMaskFormerModel``), ``vw_mask2former_swin_base``
    and ``vw_deformattn_mask2former_swin_base`` (``VWMask2FormerModel``, ``pixel_decoder_type`` ``vw`` and
    ``vw_deformable``);
  - group ``large`` (Swin-L: embed 192, depths 2-2-18-2, window 12; SeMask adds its semantic layers):
    ``hf_mask2former_swin_large`` (the peer, with the SeMask-L Mask2Former head of
    ``benchmark_semask_mask2former.py``), ``hf_maskformer_swin_large``, the ``SeMaskMask2FormerModel`` of the
    released ``semask-mask2former-{,fapn-,msfapn-}large-ade20k`` variants and the ``SeMaskMaskFormerModel`` of
    ``semask-maskformer-large-ade20k``.

* Pairs: every family over transformers' Mask2Former of its group (``kind`` ``mask2former``: issue 17's rule, "no
  slower than transformers' Mask2Former with the same backbone plus their extra GMACs' share"), and each MaskFormer
  family over transformers' MaskFormer of its group (``kind`` ``maskformer``: the same rule against the stock model
  of its own architecture). The allowance is the GMACs ratio of the pair (``allowed_latency_ratio``); for the VW
  families the numerator counts the original's layer order (``benchmark_vw_d2.original_layer_order``), the VW
  block's cost by design, as ``benchmark_vw_d2.py`` does.
* Latency: each group's models live in ONE process and are timed round-robin (``harness.time_round_robin``, one
  forward of each per round after ``--warmup`` rounds) with a 2048x2048 matmul as one more step of every round,
  under ``torch.no_grad()``: ``--repeats`` rounds in fp32, then ``--bf16-repeats`` rounds under
  ``torch.autocast("cpu", torch.bfloat16)`` (a bf16 matmul as the extra step). Each model runs as it runs for a user:
  VW-Mask2Former's and SeMask's deformable decoders turn autocast off around themselves where their originals do;
  transformers' Mask2Former does not. The ratios are those of the medians.
* GMACs: ``harness.count_macs_with_analytic`` on one fp32 forward (``FlopCounterMode``, MACs = FLOPs / 2, with the
  CPU SDPA formula), plus the analytic counts of what it does not see: the deformable attention's sampling and
  FaPN's modulated deformable convolutions (``benchmark_semask_fapn.deformable_conv_analytic``).
* Achieved GFLOP/s: 2 x GMACs / median latency, and its fraction of the matmul's median GFLOP/s in the same rounds.

``--smoke`` runs the same code on tiny backbones (Swin embed 32, depths 2-2-2-2, window 4) at 128x128 with one
round each and a 256x256 matmul (a bf16 2048x2048 one takes a minute on a CPU without oneDNN's bf16 kernels): a
check that everything runs, its figures mean nothing. ``--combine`` reads the reports of several runs
and writes each pair's per-run ratios and their medians.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py sits next to this script

import harness  # noqa: E402


GROUPS = {
    "base": (
        "hf_mask2former_swin_base",
        "hf_maskformer_swin_base",
        "vw_maskformer_swin_base",
        "vw_mask2former_swin_base",
        "vw_deformattn_mask2former_swin_base",
    ),
    "large": (
        "hf_mask2former_swin_large",
        "hf_maskformer_swin_large",
        "semask_mask2former_large",
        "semask_mask2former_fapn_large",
        "semask_mask2former_msfapn_large",
        "semask_maskformer_large",
    ),
}
MODELS = tuple(name for names in GROUPS.values() for name in names)
#: each model's family: the ``*Model`` class it is built with
FAMILY = {
    "hf_mask2former_swin_base": "hf_mask2former",
    "hf_maskformer_swin_base": "hf_maskformer",
    "vw_maskformer_swin_base": "vw_maskformer",
    "vw_mask2former_swin_base": "vw_mask2former",
    "vw_deformattn_mask2former_swin_base": "vw_mask2former",
    "hf_mask2former_swin_large": "hf_mask2former",
    "hf_maskformer_swin_large": "hf_maskformer",
    "semask_mask2former_large": "semask_mask2former",
    "semask_mask2former_fapn_large": "semask_mask2former",
    "semask_mask2former_msfapn_large": "semask_mask2former",
    "semask_maskformer_large": "semask_maskformer",
}
#: (numerator, denominator, kind): issue 17's pairs (kind "mask2former") and the MaskFormer families against
#: transformers' MaskFormer (kind "maskformer")
PAIRS = (
    ("vw_maskformer_swin_base", "hf_mask2former_swin_base", "mask2former"),
    ("vw_mask2former_swin_base", "hf_mask2former_swin_base", "mask2former"),
    ("vw_deformattn_mask2former_swin_base", "hf_mask2former_swin_base", "mask2former"),
    ("semask_mask2former_large", "hf_mask2former_swin_large", "mask2former"),
    ("semask_mask2former_fapn_large", "hf_mask2former_swin_large", "mask2former"),
    ("semask_mask2former_msfapn_large", "hf_mask2former_swin_large", "mask2former"),
    ("semask_maskformer_large", "hf_mask2former_swin_large", "mask2former"),
    ("vw_maskformer_swin_base", "hf_maskformer_swin_base", "maskformer"),
    ("semask_maskformer_large", "hf_maskformer_swin_large", "maskformer"),
)
#: the released SeMask variants of the SeMask models
SEMASK_VARIANTS = {
    "semask_mask2former_large": "semask-mask2former-large-ade20k",
    "semask_mask2former_fapn_large": "semask-mask2former-fapn-large-ade20k",
    "semask_mask2former_msfapn_large": "semask-mask2former-msfapn-large-ade20k",
    "semask_maskformer_large": "semask-maskformer-large-ade20k",
}
#: the backbone of ``--smoke`` (every group)
SWIN_SMOKE = {"embed_dim": 32, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8], "window_size": 4}
SMOKE_SIZE = 128
#: side of the matmul step of ``--smoke`` rounds
SMOKE_GEMM_SIZE = 256
NUM_LABELS = 150
DTYPES = ("float32", "bfloat16")

COLUMNS = (
    harness.Column("model", "model", "<", 38),
    harness.Column("GMACs", "gmacs", ">", 8, 1),
    harness.Column("params M", "params_m", ">", 9, 2),
    harness.Column("fp32 s", "float32_median_s", ">", 8, 3),
    harness.Column("GFLOP/s", "float32_achieved_gflops", ">", 8, 1),
    harness.Column("of mm", "float32_fraction_of_matmul", ">", 6, 2),
    harness.Column("bf16 s", "bfloat16_median_s", ">", 8, 3),
    harness.Column("GFLOP/s", "bfloat16_achieved_gflops", ">", 8, 1),
    harness.Column("of mm", "bfloat16_fraction_of_matmul", ">", 6, 2),
)


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def swin_large_architecture() -> dict:
    """The Swin-L of SeMask-L Mask2Former (``benchmark_semask_mask2former.SWIN``): embed 192, depths 2-2-18-2, heads
    6-12-24-48, window 12."""
    import benchmark_semask_mask2former as semask_m2f

    embed_dim, depths, heads, window = semask_m2f.SWIN["large"][0]
    return {"embed_dim": embed_dim, "depths": depths, "num_heads": heads, "window_size": window}


def set_swin_architecture(backbone_config, architecture: dict) -> None:
    """Set a Swin(-like) backbone config's architecture fields (SeMask's semantic window follows the window)."""
    for field, value in architecture.items():
        setattr(backbone_config, field, value)
    backbone_config.num_layers = len(architecture["depths"])
    backbone_config.hidden_size = architecture["embed_dim"] * 2 ** (len(architecture["depths"]) - 1)
    if hasattr(backbone_config, "semantic_window_size"):
        backbone_config.semantic_window_size = architecture["window_size"]


def model_config(name: str, smoke: bool = False):
    """The configuration of model ``name`` (its released ADE20K model's; with ``smoke``, on the tiny backbone)."""
    import benchmark_semask_mask2former as semask_m2f
    import benchmark_vw_d2 as vw_d2
    from transformers import Mask2FormerConfig, MaskFormerConfig

    import hf_semseg

    if name in SEMASK_VARIANTS:
        config = hf_semseg.variant_config(SEMASK_VARIANTS[name])
    elif name.endswith("_swin_base"):
        decoder = {
            "hf_mask2former_swin_base": vw_d2.HF_MASK2FORMER,
            "hf_maskformer_swin_base": vw_d2.HF_MASKFORMER,
            "vw_maskformer_swin_base": vw_d2.VW_MASKFORMER,
            "vw_mask2former_swin_base": vw_d2.VW_MASK2FORMER,
            "vw_deformattn_mask2former_swin_base": vw_d2.VW_DEFORMATTN,
        }[name]
        config = vw_d2.model_config(decoder)
    elif name == "hf_mask2former_swin_large":
        backbone = harness.swin_config(swin_large_architecture())
        config = Mask2FormerConfig(backbone_config=backbone, **semask_m2f.head_kwargs("large"))
    elif name == "hf_maskformer_swin_large":
        backbone = harness.swin_config(swin_large_architecture())
        config = MaskFormerConfig(
            backbone_config=backbone, fpn_feature_size=256, mask_feature_size=256, num_labels=NUM_LABELS
        )
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    if smoke:
        set_swin_architecture(config.backbone_config, SWIN_SMOKE)
    return config


def build_model(name: str, smoke: bool = False) -> torch.nn.Module:
    """Model ``name`` (its family's ``*Model`` class) with its own random initialisation, in eval mode."""
    from transformers import Mask2FormerModel, MaskFormerModel

    from hf_semseg.models.modeling_semask_mask2former import SeMaskMask2FormerModel
    from hf_semseg.models.modeling_semask_maskformer import SeMaskMaskFormerModel
    from hf_semseg.models.modeling_vw_mask2former import VWMask2FormerModel
    from hf_semseg.models.modeling_vw_maskformer import VWMaskFormerModel

    model_class = {
        "hf_mask2former": Mask2FormerModel,
        "hf_maskformer": MaskFormerModel,
        "vw_maskformer": VWMaskFormerModel,
        "vw_mask2former": VWMask2FormerModel,
        "semask_mask2former": SeMaskMask2FormerModel,
        "semask_maskformer": SeMaskMaskFormerModel,
    }[FAMILY[name]]
    return model_class(model_config(name, smoke)).eval()


def count_macs(model: torch.nn.Module, pixel_values: torch.Tensor) -> dict:
    """GMACs of one forward: ``FlopCounterMode``'s count plus the analytic counts of the deformable attention's
    sampling and FaPN's deformable convolutions; for a model with the VW block also ``gmacs_original_order``, the
    same count of a forward in the original's layer order."""
    import benchmark_semask_fapn as semask_fapn
    import benchmark_vw_d2 as vw_d2

    from hf_semseg.models.modeling_vw_pixel_decoder import VWBlock

    def count():
        analytic = [harness.deformable_attention_sampling(), semask_fapn.deformable_conv_analytic()]
        return harness.count_macs_with_analytic(model, pixel_values, analytic)

    counts = count()
    if any(isinstance(module, VWBlock) for module in model.modules()):
        with vw_d2.original_layer_order():
            counts["gmacs_original_order"] = count()["gmacs"]
    return counts


# ----------------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------------


def measure_group(args, names: list[str]) -> tuple[list[dict], list[dict]]:
    """The rows of ``names`` (one group: built, counted, timed in fp32 then bf16) and the matmuls of the rounds."""
    size = SMOKE_SIZE if args.smoke else args.size
    gemm_size = SMOKE_GEMM_SIZE if args.smoke else harness.GEMM_SIZE
    pixel_values = harness.random_pixel_values(1, size, harness.seeded_generator(args.seed))
    models, rows = {}, {}
    for name in names:
        print(f"  {name}: building, counting ...", file=sys.stderr, flush=True)
        torch.manual_seed(args.seed)
        models[name] = build_model(name, args.smoke)
        rows[name] = {
            "model": name,
            "class": type(models[name]).__name__,
            "size": size,
            "params_m": harness.count_params(models[name]) / 1e6,
            **count_macs(models[name], pixel_values),
        }
    matmuls = []
    for dtype_name, repeats in (("float32", args.repeats), ("bfloat16", args.bf16_repeats)):
        if repeats <= 0:
            continue
        print(f"  {dtype_name}: {repeats} rounds ...", file=sys.stderr, flush=True)
        dtype = getattr(torch, dtype_name)
        autocast, _ = harness.device_helpers(torch.device("cpu"), dtype)
        load_before = harness.load_average()
        rounds = harness.forward_round_robin_with_matmul(
            models, dict.fromkeys(models, pixel_values), args.warmup, repeats, autocast=autocast, matmul_dtype=dtype,
            matmul_size=gemm_size, region=harness.autocast_region(torch.device("cpu"), dtype, args.autocast_scope),
        )  # fmt: skip
        matmul_gflops = harness.gemm_gflops(gemm_size, harness.median(rounds.matmul_times))
        matmuls.append({
            "dtype": dtype_name, "size": gemm_size, "times_s": rounds.matmul_times,
            "gflops_median": matmul_gflops, "load_before": load_before, "load_after": harness.load_average(),
        })  # fmt: skip
        for name, times in rounds.times.items():
            median_s = harness.median(times)
            gflops = 2 * rows[name]["gmacs"] / median_s
            rows[name].update({
                f"{dtype_name}_times_s": times, f"{dtype_name}_median_s": median_s,
                f"{dtype_name}_achieved_gflops": gflops, f"{dtype_name}_fraction_of_matmul": gflops / matmul_gflops,
            })  # fmt: skip
    return list(rows.values()), matmuls


def pair_ratios(rows: list[dict]) -> list[dict]:
    """Every pair of ``PAIRS`` whose models were measured: the latency ratio per dtype, the allowance (GMACs ratio,
    the numerator in the original's layer order) and whether the ratio stays within it."""
    by_name = {row["model"]: row for row in rows}
    ratios = []
    for numerator, denominator, kind in PAIRS:
        if numerator not in by_name or denominator not in by_name:
            continue
        top, bottom = by_name[numerator], by_name[denominator]
        allowance = top.get("gmacs_original_order", top["gmacs"]) / bottom["gmacs"]
        entry = {
            "numerator": numerator, "denominator": denominator, "kind": kind,
            "gmacs_ratio": top["gmacs"] / bottom["gmacs"], "allowed_latency_ratio": allowance,
        }  # fmt: skip
        for dtype_name in DTYPES:
            key = f"{dtype_name}_median_s"
            if key in top and key in bottom:
                ratio = top[key] / bottom[key]
                entry[f"{dtype_name}_ratio"] = ratio
                entry[f"{dtype_name}_meets"] = ratio <= allowance
        ratios.append(entry)
    return ratios


def combine(paths: list[Path]) -> dict:
    """The per-run ratios of several reports and their medians, pair by pair (the pairs of the first report)."""
    reports = [json.loads(Path(path).read_text()) for path in paths]
    pairs = []
    for entry in reports[0]["ratios"]:
        key = (entry["numerator"], entry["denominator"])
        runs = [next(r for r in report["ratios"] if (r["numerator"], r["denominator"]) == key) for report in reports]
        combined = {name: entry[name] for name in ("numerator", "denominator", "kind", "allowed_latency_ratio")}
        for dtype_name in DTYPES:
            values = [run[f"{dtype_name}_ratio"] for run in runs if f"{dtype_name}_ratio" in run]
            if values:
                median = harness.median(values)
                combined[f"{dtype_name}_ratios"] = values
                combined[f"{dtype_name}_median_ratio"] = median
                combined[f"{dtype_name}_meets"] = median <= entry["allowed_latency_ratio"]
        pairs.append(combined)
    return {"runs": [str(path) for path in paths], "environments": [r["environment"] for r in reports], "ratios": pairs}


def print_ratios(ratios: list[dict], median: bool = False) -> None:
    """One line per pair: the latency ratios per dtype against the allowance."""
    for entry in ratios:
        parts = []
        for dtype_name in DTYPES:
            key = f"{dtype_name}_median_ratio" if median else f"{dtype_name}_ratio"
            if key in entry:
                verdict = "ok" if entry[f"{dtype_name}_meets"] else "MISSED"
                parts.append(f"{dtype_name} {entry[key]:.3f} ({verdict})")
        print(
            f"{entry['numerator']} / {entry['denominator']} [{entry['kind']}]: {', '.join(parts)}; "
            f"allowed {entry['allowed_latency_ratio']:.3f}"
        )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", nargs="+", choices=tuple(GROUPS), default=list(GROUPS))
    parser.add_argument("--models", nargs="+", choices=MODELS, help="only these models (of the chosen groups)")
    parser.add_argument("--size", type=int, default=640, help="square input side in pixels")
    harness.add_timing_options(parser, warmup=1, repeats=3)
    parser.add_argument("--bf16-repeats", type=int, default=3, help="bf16 autocast rounds (0: none)")
    harness.add_autocast_scope_option(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny backbones at 128x128, one round each")
    parser.add_argument("--combine", nargs="+", type=Path, help="combine these run reports into --output")
    parser.add_argument("--output", type=Path, default=None, help="JSON report (default results/d2_models_cpu.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.warmup, args.repeats, args.bf16_repeats = 0, 1, min(args.bf16_repeats, 1)
    if args.output is None:
        args.output = harness.default_output("d2_models", "cpu", "_combined" if args.combine else "")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.combine:
        report = combine(args.combine)
        print_ratios(report["ratios"], median=True)
        harness.write_report(args.output, report)
        print(f"\nwrote {args.output}")
        return
    harness.set_threads(args.threads)
    env = harness.environment("cpu", "float32+bfloat16", args.threads, args.autocast_scope)
    print(harness.describe_run(env, f"warmup {args.warmup}", f"repeats {args.repeats} / {args.bf16_repeats} (bf16)"))
    rows, matmuls = [], []
    for group in args.groups:
        names = [name for name in GROUPS[group] if args.models is None or name in args.models]
        if names:
            print(f"group {group} ...", file=sys.stderr, flush=True)
            group_rows, group_matmuls = measure_group(args, names)
            rows += group_rows
            matmuls += [{**matmul, "group": group} for matmul in group_matmuls]
    ratios = pair_ratios(rows)
    print()
    print(harness.format_table(rows, COLUMNS))
    print()
    for matmul in matmuls:
        print(f"{matmul['size']}^2 {matmul['dtype']} matmul ({matmul['group']}): {matmul['gflops_median']:.1f} GFLOP/s")
    print_ratios(ratios)
    settings = {"size": SMOKE_SIZE if args.smoke else args.size, "smoke": args.smoke, "seed": args.seed}
    report = {"environment": env, "settings": settings, "results": rows, "ratios": ratios, "matmul": matmuls}
    harness.write_report(args.output, report)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
