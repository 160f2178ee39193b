"""Fills the model card templates of ``model_cards/`` (``$placeholders``).

:func:`converted_card_fields` gives the fields every converted checkpoint's card has (dataset, reported numbers,
test pre-processing, parameters ...); each family adds the fields of its architecture. The dataset, the released
variant and its reported numbers come from the registry (:mod:`hf_semseg.variants`) through the
:class:`~.common.Conversion`.
"""

import re
from pathlib import Path
from string import Template

from ..models.configuration_utils_segmentation import IGNORE_INDEX
from ..variants import get_dataset, get_variant


def render_card(template_path: Path, output_dir: Path, fields: dict) -> Path:
    """Renders ``template_path`` with ``fields`` into ``output_dir/README.md``; a placeholder without a field is an
    error naming it."""
    card = Path(output_dir) / "README.md"
    card.write_text(Template(Path(template_path).read_text()).substitute(fields))
    return card


def _joined(values) -> str:
    return ", ".join(map(str, values))


def _parameters(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"


def _dashed(values) -> str:
    return "-".join(map(str, values))


def _slug(name: str) -> str:
    """A Hub repository name for the model name ``name``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def model_name(conversion, architecture: str) -> str:
    """The name a converted checkpoint's card is titled with: the registered variant it is, else ``architecture``
    (the family's description of the converted architecture) with the class count - never the file's name."""
    if conversion.variant is not None:
        return conversion.variant
    return f"{architecture}, {conversion.num_labels} classes"


def converted_card_fields(conversion, processor, architecture: str | None = None) -> dict:
    """The fields of every converted checkpoint's card: names (:func:`model_name`; ``architecture`` describes the
    converted architecture, for a checkpoint that is no registered variant), dataset, reported numbers (of the
    released variant, when the checkpoint is one), label reduction, parameters and the ignore index. The class count
    is written once: in the dataset row for a variant, in the title otherwise."""
    from .common import conversion_dataset, describe_pipeline

    model = conversion.model
    dataset_key, _ = conversion_dataset(conversion)
    if dataset_key is not None:
        dataset, dataset_id = get_dataset(dataset_key).name, get_dataset(dataset_key).hub_id
    else:
        dataset, dataset_id = "unknown", "custom"
    dataset_row = f"{dataset}, {model.config.num_labels} classes" if conversion.variant is not None else dataset
    if conversion.variant is not None:
        reported = get_variant(conversion.variant).reported
        reported_row = (
            f"{reported['mIoU']} mIoU single-scale, {reported['mIoU_ms_flip']} mIoU multi-scale + flip "
            f"({conversion.variant})."
        )
    else:
        reported_row = "no published result matches this architecture."
    name = model_name(conversion, architecture or model.config.model_type)
    return {
        "model_name": name,
        "checkpoint_name": conversion.path.name,
        "dataset": dataset,
        "dataset_row": dataset_row,
        "dataset_id": dataset_id,
        "num_labels": model.config.num_labels,
        "parameters": _parameters(model),
        "reduce_labels_note": "; labels reduced (0 = ignore, class i+1 -> i)" if processor.do_reduce_labels else "",
        "ignore_index": IGNORE_INDEX,
        "reported_row": reported_row,
        "repo_id": f"<user>/{_slug(name)}",
        "settings_provenance": _settings_provenance(conversion, describe_pipeline(conversion)),
    }


def _settings_provenance(conversion, pipeline: str) -> str:
    """The card's account of the values the weights do not hold: where each came from (the run's config file, the
    checkpoint's config text or a released variant with exactly these weights), and the test pre-processing's."""
    settings = conversion.settings.describe() if conversion.settings is not None else "every value is in the weights"
    return f"Values the weights do not hold: {settings}. The {pipeline[0].lower()}{pipeline[1:]}."


def _keep_ratio_scale(processor) -> str:
    size = dict(processor.size)
    return f"{size.get('longest_edge')} x {size.get('shortest_edge')}"


def semask_fpn_card_fields(conversion, processor) -> dict:
    """The fields of ``model_cards/semask_fpn.md``."""
    config = conversion.model.config
    architecture = f"SeMask-Swin (embed {config.embed_dim}, depths {_dashed(config.depths)}) Semantic-FPN"
    return {
        **converted_card_fields(conversion, processor, architecture),
        "embed_dim": config.embed_dim,
        "depths": _joined(config.depths),
        "num_heads": _joined(config.num_heads),
        "window_size": config.window_size,
        "semantic_attention_types": _joined(config.semantic_attention_types),
        "semantic_window_size": config.semantic_window_size,
        "decoder_hidden_size": config.decoder_hidden_size,
        "test_scale": _keep_ratio_scale(processor),
        "ohem_note": f" with OHEM (hardest {config.ohem_min_kept} pixels per image)" if config.use_ohem else "",
    }


_BACKBONE_NAMES = {
    "swin": lambda c: f"Swin (embed {c.embed_dim}, depths {_dashed(c.depths)})",
    "convnext": lambda c: f"ConvNeXt (widths {_dashed(c.hidden_sizes)}, depths {_dashed(c.depths)})",
    "segformer": lambda c: f"MiT (widths {_dashed(c.hidden_sizes)}, depths {_dashed(c.depths)})",
}

_BACKBONE_DESCRIPTIONS = {
    "swin": lambda c: f"Swin, embed dim {c.embed_dim}, depths {c.depths}, window {c.window_size}",
    "convnext": lambda c: f"ConvNeXt, widths {c.hidden_sizes}, depths {c.depths}",
    "segformer": lambda c: f"MiT, widths {c.hidden_sizes}, depths {c.depths}",
}


def vwformer_card_fields(conversion, processor) -> dict:
    """The fields of ``model_cards/vwformer.md``."""
    model = conversion.model
    config = model.config
    backbone_config = config.backbone_config
    describe = _BACKBONE_DESCRIPTIONS.get(backbone_config.model_type, lambda c: c.model_type)
    divisor = getattr(processor, "size_divisor", None)
    backbone_name = _BACKBONE_NAMES.get(backbone_config.model_type, lambda c: c.model_type)(backbone_config)
    architecture = f"{backbone_name} VWFormer ({config.head_type} head)"
    return {
        **converted_card_fields(conversion, processor, architecture),
        "backbone": describe(backbone_config),
        "backbone_class": type(model.backbone).__name__,
        "head_type": config.head_type,
        "head_description": "non-local attention, global pooling branch, linear projections"
        if config.head_type == "vw"
        else "multi-head attention, conv projections, no pooling branch",
        "decoder_hidden_size": config.decoder_hidden_size,
        "num_heads": config.num_attention_heads,
        "short_cut": "on" if config.use_short_cut else "off",
        "test_scale": _keep_ratio_scale(processor),
        "divisor_note": f", then resized up to a multiple of {divisor}" if divisor else "",
    }


def semask_mask2former_card_fields(conversion, processor) -> dict:
    """The fields of ``model_cards/semask_mask2former.md``."""
    config = conversion.model.config
    backbone = config.backbone_config
    size = dict(processor.size)
    architecture = f"SeMask-Swin (embed {backbone.embed_dim}, depths {_dashed(backbone.depths)}) Mask2Former"
    return {
        **converted_card_fields(conversion, processor, architecture),
        "embed_dim": backbone.embed_dim,
        "depths": _joined(backbone.depths),
        "num_heads": _joined(backbone.num_heads),
        "window_size": backbone.window_size,
        "semantic_attention_types": _joined(backbone.semantic_attention_types),
        "semantic_window_size": backbone.semantic_window_size,
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers - 1,
        "num_queries": config.num_queries,
        "hidden_dim": config.hidden_dim,
        "test_scale": f"shortest edge {size.get('shortest_edge')}, longest at most {size.get('longest_edge')}",
    }


def write_pale_model_card(template_path: Path, output_dir: Path, model, repo_id: str | None = None) -> Path:
    """Renders the Pale card (``model_cards/pale.md``) for ``model`` into ``output_dir/README.md``. Pale has no
    released weights, so the card describes a model the user initialised or trained."""
    config = model.config
    task = type(model).__name__
    name = repo_id.split("/")[-1] if repo_id else f"pale-{config.embed_dim}"
    fields = {
        "model_name": name,
        "architecture": task,
        "pipeline_tag": "image-classification" if "Classification" in task else "image-segmentation",
        "weights_note": "The weights in this repository were trained (or initialised) by its owner; see below for how.",
        "hidden_sizes": _joined(config.hidden_sizes),
        "depths": _joined(config.depths),
        "num_heads": _joined(config.num_heads),
        "pale_sizes": _joined(config.pale_sizes),
        "parameters": _parameters(model),
        "repo_id": repo_id or f"<user>/{name}",
    }
    return render_card(template_path, output_dir, fields)
