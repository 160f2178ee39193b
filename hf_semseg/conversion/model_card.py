"""Fills the model card templates of ``model_cards/`` for converted checkpoints."""

import json
from pathlib import Path
from string import Template

from ..variants import get_variant, list_variants


_DATASET_IDS = {
    150: ("ADE20K", "scene_parse_150"),
    19: ("Cityscapes", "cityscapes"),
    171: ("COCO-Stuff-10k", "coco_stuff"),
}
_DATASET_KEYS = {150: "ade20k", 19: "cityscapes", 171: "coco-stuff-10k"}
_SIZE_NAMES = {(96, 6): "tiny", (96, 18): "small", (128, 18): "base", (192, 18): "large"}


def matching_semask_variant(config) -> str | None:
    """The registered SeMask-FPN variant with the same architecture as ``config``, if any."""
    size = _SIZE_NAMES.get((config.embed_dim, config.depths[2]))
    dataset = _DATASET_KEYS.get(config.num_labels)
    name = f"semask-fpn-{size}-{dataset}"
    return name if size and dataset and name in list_variants("semask_swin") else None


def write_model_card(template_path: Path, output_dir: Path, model, checkpoint_name: str) -> Path:
    """Renders ``template_path`` (``$placeholders``) for a converted ``model`` into ``output_dir/README.md``
    (call it after the image processor was saved there: the card quotes its test size)."""
    config = model.config
    dataset, dataset_id = _DATASET_IDS.get(config.num_labels, (f"{config.num_labels} classes", "custom"))
    variant_name = matching_semask_variant(config)
    if variant_name:
        reported = get_variant(variant_name).reported
        reported_row = (
            f"{reported['mIoU']} mIoU single-scale, {reported['mIoU_ms_flip']} mIoU multi-scale + flip "
            f"({variant_name})."
        )
    else:
        reported_row = "no published result matches this architecture."
    processor_config = Path(output_dir) / "preprocessor_config.json"
    size_text, reduce_note = "the configured size", ""
    if processor_config.is_file():
        processor = json.loads(processor_config.read_text())
        size = processor.get("size", {})
        size_text = f"{size.get('longest_edge')} x {size.get('shortest_edge')}"
        if processor.get("do_reduce_labels"):
            reduce_note = "; labels reduced (0 = ignore, class i+1 -> i)"
    fields = {
        "model_name": variant_name or Path(checkpoint_name).stem,
        "dataset": dataset,
        "dataset_id": dataset_id,
        "checkpoint_name": checkpoint_name,
        "embed_dim": config.embed_dim,
        "depths": ", ".join(map(str, config.depths)),
        "num_heads": ", ".join(map(str, config.num_heads)),
        "window_size": config.window_size,
        "semantic_attention_types": ", ".join(config.semantic_attention_types),
        "semantic_window_size": config.semantic_window_size,
        "num_labels": config.num_labels,
        "decoder_hidden_size": config.decoder_hidden_size,
        "parameters": f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M",
        "test_scale": size_text,
        "reduce_labels_note": reduce_note,
        "ohem_note": f" with OHEM (hardest {config.ohem_min_kept} pixels per image)" if config.use_ohem else "",
        "reported_row": reported_row,
        "repo_id": f"<user>/{variant_name or Path(checkpoint_name).stem}",
    }
    text = Template(Path(template_path).read_text()).substitute(fields)
    card = Path(output_dir) / "README.md"
    card.write_text(text)
    return card


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
        "hidden_sizes": ", ".join(map(str, config.hidden_sizes)),
        "depths": ", ".join(map(str, config.depths)),
        "num_heads": ", ".join(map(str, config.num_heads)),
        "pale_sizes": ", ".join(map(str, config.pale_sizes)),
        "parameters": f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M",
        "repo_id": repo_id or f"<user>/{name}",
    }
    card = Path(output_dir) / "README.md"
    card.write_text(Template(Path(template_path).read_text()).substitute(fields))
    return card


def write_vwformer_model_card(
    template_path: Path, output_dir: Path, model, checkpoint_name: str, variant: str | None = None
) -> Path:
    """Renders the VWFormer card (``model_cards/vwformer.md``) for a converted ``model`` into
    ``output_dir/README.md`` (after the image processor was saved there: the card quotes its test size)."""
    config = model.config
    backbone_config = config.backbone_config
    dataset, dataset_id = _DATASET_IDS.get(config.num_labels, (f"{config.num_labels} classes", "custom"))
    if variant in list_variants("vwformer"):
        reported = get_variant(variant).reported
        reported_row = (
            f"{reported['mIoU']} mIoU single-scale, {reported['mIoU_ms_flip']} mIoU multi-scale + flip ({variant})."
        )
    else:
        reported_row = "no published result is known for this checkpoint (pass --variant for a released one)."
    processor_config = Path(output_dir) / "preprocessor_config.json"
    size_text, divisor_note, reduce_note = "the configured size", "", ""
    if processor_config.is_file():
        processor = json.loads(processor_config.read_text())
        size = processor.get("size", {})
        size_text = f"{size.get('longest_edge')} x {size.get('shortest_edge')}"
        if processor.get("size_divisor"):
            divisor_note = f", then resized up to a multiple of {processor['size_divisor']}"
        if processor.get("do_reduce_labels"):
            reduce_note = "; labels reduced (0 = ignore, class i+1 -> i)"
    backbone_descriptions = {
        "swin": lambda c: f"Swin, embed dim {c.embed_dim}, depths {c.depths}, window {c.window_size}",
        "convnext": lambda c: f"ConvNeXt, widths {c.hidden_sizes}, depths {c.depths}",
        "segformer": lambda c: f"MiT, widths {c.hidden_sizes}, depths {c.depths}",
    }
    describe = backbone_descriptions.get(backbone_config.model_type, lambda c: c.model_type)
    fields = {
        "model_name": variant or Path(checkpoint_name).stem,
        "checkpoint_name": checkpoint_name,
        "dataset": dataset,
        "dataset_id": dataset_id,
        "backbone": describe(backbone_config),
        "backbone_class": type(model.backbone).__name__,
        "head_type": config.head_type,
        "head_description": "non-local attention, global pooling branch, linear projections"
        if config.head_type == "vw"
        else "multi-head attention, conv projections, no pooling branch",
        "hidden_size": config.hidden_size,
        "num_heads": config.num_attention_heads,
        "short_cut": "on" if config.use_short_cut else "off",
        "num_labels": config.num_labels,
        "parameters": f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M",
        "test_scale": size_text,
        "divisor_note": divisor_note,
        "reduce_labels_note": reduce_note,
        "reported_row": reported_row,
        "repo_id": f"<user>/{variant or Path(checkpoint_name).stem}",
    }
    card = Path(output_dir) / "README.md"
    card.write_text(Template(Path(template_path).read_text()).substitute(fields))
    return card


def write_semask_mask2former_model_card(template_path: Path, output_dir: Path, model, checkpoint_name: str) -> Path:
    """Renders the SeMask Mask2Former card (``model_cards/semask_mask2former.md``) for a converted ``model`` into
    ``output_dir/README.md`` (after the image processor was saved there: the card quotes its test size)."""
    config = model.config
    backbone = config.backbone_config
    dataset, dataset_id = _DATASET_IDS.get(config.num_labels, (f"{config.num_labels} classes", "custom"))
    dataset_key = _DATASET_KEYS.get(config.num_labels)
    variant_name = f"semask-mask2former-large-{dataset_key}"
    is_release = backbone.embed_dim == 192 and variant_name in list_variants("semask_mask2former")
    if is_release:
        reported = get_variant(variant_name).reported
        reported_row = f"{reported['mIoU']} mIoU single-scale, {reported['mIoU_ms_flip']} mIoU multi-scale + flip ({variant_name})."
    else:
        variant_name = None
        reported_row = "no published result matches this architecture."
    processor_config = Path(output_dir) / "preprocessor_config.json"
    size_text, reduce_note = "the configured size", ""
    if processor_config.is_file():
        processor = json.loads(processor_config.read_text())
        size = processor.get("size", {})
        size_text = f"shortest edge {size.get('shortest_edge')}, longest at most {size.get('longest_edge')}"
        if processor.get("do_reduce_labels"):
            reduce_note = "; labels reduced (0 = ignore, class i+1 -> i)"
    name = variant_name or Path(checkpoint_name).stem
    fields = {
        "model_name": name,
        "dataset": dataset,
        "dataset_id": dataset_id,
        "checkpoint_name": checkpoint_name,
        "embed_dim": backbone.embed_dim,
        "depths": ", ".join(map(str, backbone.depths)),
        "num_heads": ", ".join(map(str, backbone.num_heads)),
        "window_size": backbone.window_size,
        "semantic_attention_types": ", ".join(backbone.semantic_attention_types),
        "semantic_window_size": backbone.semantic_window_size,
        "num_labels": config.num_labels,
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers - 1,
        "num_queries": config.num_queries,
        "hidden_dim": config.hidden_dim,
        "parameters": f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M",
        "test_scale": size_text,
        "reduce_labels_note": reduce_note,
        "reported_row": reported_row,
        "repo_id": f"<user>/{name}",
    }
    card = Path(output_dir) / "README.md"
    card.write_text(Template(Path(template_path).read_text()).substitute(fields))
    return card
