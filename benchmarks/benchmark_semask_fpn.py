"""Latency and peak-memory benchmark of SeMask-T FPN against Swin-T peers from transformers.

What is measured, for every (model, mode, batch size):

* ``forward``: one inference step, ``model.eval()`` under ``torch.no_grad()``.
* ``train``: one forward + backward step in ``model.train()``. The loss is ``model(pixel_values, labels=labels).loss``
  for the segmentation models and ``sum(f.float().mean() for f in feature_maps)`` for the backbones. Gradients are
  dropped (``zero_grad(set_to_none=True)``) at the start of every step; there is no optimizer.

Each figure is the median seconds per iteration over ``--repeats`` timed iterations after ``--warmup`` untimed ones,
the matching images/s, and the peak memory increase over the memory held right after the model and its inputs were
built (so it counts activations, gradients and workspace, not the weights). The latency of all models of one
(mode, batch size) is measured round-robin in one fresh subprocess of this script (hidden ``--latency-worker`` mode),
the peak memory of each model on the first step of a fresh subprocess of its own (hidden ``--worker`` mode), which
isolates the figure: on CPU it is the resident-set high-water mark (``VmHWM`` in ``/proc/self/status``, reset through
``/proc/self/clear_refs`` when the kernel allows it), on CUDA ``torch.cuda.max_memory_allocated``. The models are
interleaved per batch size (all models at batch 1, then all at batch 8), so a drift in machine load hits them alike.
The measurement code is shared with the other scripts in ``harness.py``; this script holds the models and ratios.

Models (random initialisation, nothing downloaded):

* ``semask_fpn_tiny``: ``SeMaskSwinForSemanticSegmentation``, the SeMask-T FPN ADE20K configuration.
* ``semask_backbone_tiny``: its ``SeMaskSwinBackbone`` alone (Swin-T plus the semantic layers).
* ``hf_swin_tiny_backbone``: transformers' ``SwinBackbone``, Swin-T.
* ``hf_upernet_swin_tiny``: transformers' ``UperNetForSemanticSegmentation`` on Swin-T (hidden 512, auxiliary head).
* ``semask_fpn_tiny_whole_batch_loss``: ``semask_fpn_tiny`` training as before the package's training-memory work
  (:func:`use_training_memory_path_before_issue_17`: the whole batch's logits of both heads at label size, 1.3 GB each
  for 8 images of 512 x 512 with 150 classes, the MLPs' GELU outputs, the LayerNorms' outputs and the attention
  probabilities kept, the head's ReLU out of place); the
  reference of the training-memory figure (not among the default models).
* ``semask_fpn_tiny_optimized`` / ``semask_backbone_tiny_optimized``: the same models after
  ``model.optimize_for_inference()`` (the dense layers' weights cast and packed for oneDNN once; the same values),
  the CPU deployment path; not among the default models nor in ``run_cuda.py`` (on CUDA they are the models
  themselves).

Why the ratios matter: the HF Swin-T backbone is the reference cost of the shared Swin-T trunk. SeMask-T FPN /
Swin-T (target <= 1.40, issue 17; 1.55 before) bounds what the semantic layers, the Semantic-FPN head and the semantic decoder may add on
top of it; SeMask backbone / Swin-T (target <= 1.05; 1.1 before) isolates the semantic layers and catches a slow re-implementation
of the shared Swin blocks; SeMask-T FPN / UperNet-Swin-T compares against the segmentation model users would
otherwise pick from transformers.

With a batch of one, BatchNorm cannot normalise UperNet's 1x1 pyramid-pooling map in training mode, so train-mode
measurements at batch size 1 keep every BatchNorm layer in eval mode (for all models; recorded as
``batchnorm_frozen``).

Run from the repository root: ``HF_HUB_OFFLINE=1 python benchmarks/benchmark_semask_fpn.py`` (see benchmarks/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py sits next to this script

import harness  # noqa: E402


NUM_LABELS = 150
MODELS = (
    "semask_fpn_tiny",
    "semask_backbone_tiny",
    "hf_swin_tiny_backbone",
    "hf_upernet_swin_tiny",
    "semask_fpn_tiny_whole_batch_loss",
)
#: the models after ``optimize_for_inference()``: ``<model>_optimized``
OPTIMIZED_TWINS = ("semask_fpn_tiny_optimized", "semask_backbone_tiny_optimized")
SEGMENTATION_MODELS = (
    "semask_fpn_tiny",
    "hf_upernet_swin_tiny",
    "semask_fpn_tiny_whole_batch_loss",
    "semask_fpn_tiny_optimized",
)
# (numerator, denominator, target upper bound or None)
RATIOS = (
    ("semask_fpn_tiny", "hf_swin_tiny_backbone", 1.40),
    ("semask_backbone_tiny", "hf_swin_tiny_backbone", 1.05),
    ("semask_fpn_tiny", "hf_upernet_swin_tiny", None),
    # the loss one image at a time (the package) against the whole batch's logits at label size (before); computed
    # when both run (--models ... semask_fpn_tiny_whole_batch_loss)
    ("semask_fpn_tiny", "semask_fpn_tiny_whole_batch_loss", None),
    # optimised for inference (--models ... semask_fpn_tiny_optimized semask_backbone_tiny_optimized)
    ("semask_fpn_tiny_optimized", "hf_swin_tiny_backbone", 1.40),
    ("semask_backbone_tiny_optimized", "hf_swin_tiny_backbone", 1.05),
)


def semask_tiny_config():
    """The released SeMask-T FPN ADE20K architecture (150 classes, semantic attention W W G G)."""
    import hf_semseg

    return hf_semseg.variant_config("semask-fpn-tiny-ade20k")


def whole_batch_loss(model, logits, semantic_logits, labels):
    """SeMask-FPN's loss as the package computed it before the loss went one image at a time: both heads' logits of
    the whole batch resized to the labels, then one cross-entropy each, averaged as the config says (over all pixels
    or the labelled ones; the released configs have no OHEM). The reference of ``semask_fpn_tiny_whole_batch_loss``."""
    import torch.nn.functional as F

    config = model.config
    if config.use_ohem:
        raise ValueError("whole_batch_loss has no OHEM (the released SeMask-T FPN config has none)")

    def cross_entropy(head_logits):
        upsampled = F.interpolate(head_logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        losses = F.cross_entropy(upsampled, labels, ignore_index=config.loss_ignore_index, reduction="none")
        if config.loss_mean_over_all_pixels:
            return losses.mean()
        return losses.sum() / (labels != config.loss_ignore_index).sum().clamp(min=1)

    return cross_entropy(logits) + model.config.semantic_loss_weight * cross_entropy(semantic_logits)


class PlainLayerNorm(torch.nn.LayerNorm):
    """An ``nn.LayerNorm`` that is not exactly one: ``layer_norm_linear`` runs it and the next layer as they are."""


def use_training_memory_path_before_issue_17(model) -> None:
    """``model`` trains as the package did before its training-memory work (issue 17): the whole batch's loss
    (:func:`whole_batch_loss`), the MLPs' GELU output kept for the backward pass (autograd's GELU and ``fc2``, not
    ``GeluLinearFunction``), every LayerNorm's output kept (``PlainLayerNorm``: not ``LayerNormLinearFunction``), the
    window attention through the attention interface (SDPA's math path keeps the probabilities; not
    ``WindowAttentionFunction``) and the decode head's ReLU out of place. The same values and gradients."""
    import torch.nn as nn

    from hf_semseg.models.modeling_semask_swin import SeMaskSwinWindowAttention
    from hf_semseg.models.modeling_utils_segmentation import TransformerMLP

    model.compute_loss = lambda logits, semantic_logits, labels: whole_batch_loss(
        model, logits, semantic_logits, labels
    )
    for module in model.modules():
        if isinstance(module, TransformerMLP):
            module.exact_gelu = False  # the plain path (ACT2FN's exact GELU all the same)
        elif isinstance(module, nn.ReLU):
            module.inplace = False
        elif type(module) is nn.LayerNorm:
            module.__class__ = PlainLayerNorm
        elif isinstance(module, SeMaskSwinWindowAttention):
            module.recomputes_probabilities = lambda query: False


def build_model(name: str):
    """Randomly initialised model ``name`` (one of ``MODELS`` or ``OPTIMIZED_TWINS``)."""
    if name in OPTIMIZED_TWINS:
        return build_model(name.removesuffix("_optimized")).optimize_for_inference()
    if name in ("semask_fpn_tiny", "semask_fpn_tiny_whole_batch_loss"):
        from hf_semseg import SeMaskSwinForSemanticSegmentation

        model = SeMaskSwinForSemanticSegmentation(semask_tiny_config())
        if name == "semask_fpn_tiny_whole_batch_loss":
            use_training_memory_path_before_issue_17(model)
        return model
    if name == "semask_backbone_tiny":
        from hf_semseg import SeMaskSwinBackbone

        return SeMaskSwinBackbone(semask_tiny_config())
    if name == "hf_swin_tiny_backbone":
        from transformers import SwinBackbone

        return SwinBackbone(harness.swin_config(harness.SWIN_TINY))
    if name == "hf_upernet_swin_tiny":
        from transformers import UperNetConfig, UperNetForSemanticSegmentation

        config = UperNetConfig(backbone_config=harness.swin_config(harness.SWIN_TINY), num_labels=NUM_LABELS)
        return UperNetForSemanticSegmentation(config)
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def make_inputs(args, device):
    """Seeded ``randn`` pixels and labels, random integers in ``[0, NUM_LABELS)``."""
    generator = harness.seeded_generator(args.seed)
    pixel_values = harness.random_pixel_values(args.batch_size, args.size, generator)
    labels = torch.randint(0, NUM_LABELS, (args.batch_size, args.size, args.size), generator=generator)
    return pixel_values.to(device), labels.to(device)


def make_loss(model, name: str, pixel_values, labels):
    """The training loss: the segmentation models' own loss, the mean of the feature maps for the backbones."""
    if name in SEGMENTATION_MODELS:
        return lambda: model(pixel_values, labels=labels).loss
    return lambda: sum(feature_map.float().mean() for feature_map in model(pixel_values).feature_maps)


def prepare(args, name: str, device, inputs, autocast) -> harness.PreparedModel:
    """Model ``name`` in ``args.mode`` with its step. Training with a batch of one keeps BatchNorm in eval mode."""
    pixel_values, labels = inputs
    model = build_model(name).to(device)
    harness.set_mode(model, args.mode)
    if args.mode == "forward":
        return harness.PreparedModel(model, harness.forward_step(model, pixel_values, autocast))
    batchnorm_frozen = args.batch_size == 1 and harness.freeze_batchnorm(model)
    step = harness.train_step(model, make_loss(model, name, pixel_values, labels), autocast)
    return harness.PreparedModel(model, step, batchnorm_frozen)


BENCHMARK = harness.StepBenchmark(script=__file__, make_inputs=make_inputs, prepare=prepare)


def parse_args(argv=None):
    """The options of benchmarks/README.md, with the ``--quick`` overrides and the default output applied."""
    parser = harness.step_benchmark_parser(
        __doc__.split("\n\n")[0],
        (*MODELS, *OPTIMIZED_TWINS),
        batch_sizes=[1, 8],
        size=512,
        output_help="JSON report (default benchmarks/results/semask_fpn_<device>.json)",
        quick_help="smoke run: size 128, batch 1, 1 repeat, no warmup",
        default_models=MODELS[:4],
    )
    return harness.parse_step_benchmark_args(parser, argv, "semask_fpn")


def main(argv=None) -> None:
    harness.step_benchmark_main(parse_args(argv), BENCHMARK, RATIOS, memory_ratio=True)


if __name__ == "__main__":
    main()
