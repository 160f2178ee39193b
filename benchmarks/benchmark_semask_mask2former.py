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
alike), peak memory in a fresh process per model (``harness.py``, shared with the other scripts: CPU ``VmHWM`` after a
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
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py sits next to this script

import harness  # noqa: E402


NUM_LABELS = 150
MODELS = ("semask_mask2former_large", "hf_mask2former_swin_large")
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
    """Mask2Former head options of ``size`` ("large" or "tiny"), shared by both models."""
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


def build_semask(size: str):
    """SeMask-L Mask2Former (the released ADE20K architecture), or its tiny smoke-run version."""
    import hf_semseg

    if size == "large":
        return hf_semseg.SeMaskMask2FormerForSemanticSegmentation(
            hf_semseg.variant_config("semask-mask2former-large-ade20k")
        )
    embed_dim, depths, heads, window = SWIN[size][0]
    backbone = hf_semseg.SeMaskSwinConfig(
        embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=window, semantic_window_size=window
    )
    return hf_semseg.SeMaskMask2FormerForSemanticSegmentation(
        hf_semseg.SeMaskMask2FormerConfig(backbone_config=backbone, **head_kwargs(size))
    )


def build_hf_mask2former(size: str):
    """transformers' Mask2Former on Swin-L (or the tiny smoke-run size); without scipy, whose matcher its criterion
    needs, ``Mask2FormerModel`` plus the same class head: the same forward computation without the criterion."""
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former import modeling_mask2former

    embed_dim, depths, heads, window = SWIN[size][0]
    architecture = {"embed_dim": embed_dim, "depths": depths, "num_heads": heads, "window_size": window}
    backbone = harness.swin_config(architecture, drop_path_rate=0.3)
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


def build_model(name: str, size: str):
    """Randomly initialised model ``name`` (one of ``MODELS``) at ``size`` ("large" or "tiny")."""
    if name == "semask_mask2former_large":
        return build_semask(size)
    if name == "hf_mask2former_swin_large":
        return build_hf_mask2former(size)
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def make_inputs(args, device):
    """Seeded ``randn`` pixels and a label map made of 16 blocks of random classes, so both models see a handful of
    target masks."""
    generator = harness.seeded_generator(args.seed)
    pixel_values = harness.random_pixel_values(args.batch_size, args.size, generator)
    blocks = torch.randint(0, NUM_LABELS, (args.batch_size, 4, 4), generator=generator)
    labels = blocks.repeat_interleave(args.size // 4, dim=1).repeat_interleave(args.size // 4, dim=2)
    return pixel_values.to(device), labels.to(device)


def make_loss(model, name: str, pixel_values, labels):
    """The training loss: SeMask's own loss from ``labels``; for transformers' model ``mask_labels`` and
    ``class_labels`` built from the same map."""
    if name == "semask_mask2former_large":
        return lambda: model(pixel_values, labels=labels).loss
    from hf_semseg.models.modeling_semask_mask2former import semantic_map_to_mask_targets

    class_labels, mask_labels = semantic_map_to_mask_targets(labels, ignore_index=255)
    return lambda: model(pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss


def prepare(args, name: str, device, inputs, autocast) -> harness.PreparedModel:
    """Model ``name`` at ``args.model_size`` in ``args.mode`` with its step."""
    pixel_values, labels = inputs
    model = build_model(name, args.model_size).to(device)
    harness.set_mode(model, args.mode)
    if args.mode == "forward":
        return harness.PreparedModel(model, harness.forward_step(model, pixel_values, autocast))
    return harness.PreparedModel(
        model, harness.train_step(model, make_loss(model, name, pixel_values, labels), autocast)
    )


def worker_options(args) -> list[str]:
    """The workers build the models at the driver's ``--model-size``."""
    return ["--model-size", args.model_size]


# transformers' train step raises ImportError without scipy: that model is dropped from the latency run, after one
# untimed round at least (it finds such models)
BENCHMARK = harness.StepBenchmark(
    script=__file__,
    make_inputs=make_inputs,
    prepare=prepare,
    worker_options=worker_options,
    skipped_errors=(ImportError,),
    min_warmup=1,
)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    """The options, with the ``--quick`` overrides (tiny models) and the default output applied."""
    parser = harness.step_benchmark_parser(
        __doc__.split("\n\n")[0],
        MODELS,
        batch_sizes=[1],
        size=640,
        output_help="JSON report (default benchmarks/results/semask_mask2former_<device>.json)",
        quick_help="smoke run: tiny models, size 128, batch 1, 1 repeat",
    )
    parser.add_argument("--model-size", choices=tuple(SWIN), default="large", help=argparse.SUPPRESS)
    args = harness.parse_step_benchmark_args(parser, argv, "semask_mask2former", quick_suffix="_quick")
    if args.quick:
        args.model_size = "tiny"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    harness.step_benchmark_main(args, BENCHMARK, RATIOS, memory_ratio=True, details=[f"models {args.model_size}"])


if __name__ == "__main__":
    main()
