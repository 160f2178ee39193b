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
        "normalisation": _normalisation(processor),
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


def _normalisation(processor) -> str:
    """The test pre-processing's normalisation as the card states it: "ImageNet mean/std" where the processor has
    those, its own mean and std (0-1 scale) otherwise: a conversion whose config normalises otherwise saves those."""
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    if not getattr(processor, "do_normalize", True):
        return "no normalisation"
    mean, std = [float(value) for value in processor.image_mean], [float(value) for value in processor.image_std]
    if mean == [float(value) for value in IMAGENET_DEFAULT_MEAN] and std == [
        float(value) for value in IMAGENET_DEFAULT_STD
    ]:
        return "ImageNet mean/std"
    return f"mean {_rounded(mean)} / std {_rounded(std)} (0-1 scale)"


def _rounded(values: list[float]) -> str:
    return "(" + ", ".join(f"{value:.4g}" for value in values) + ")"


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


FAPN_CITATION = """@inproceedings{huang2021fapn,
  title     = {FaPN: Feature-aligned Pyramid Network for Dense Image Prediction},
  author    = {Huang, Shihua and Lu, Zhichao and Cheng, Ran and He, Cheng},
  booktitle = {ICCV},
  year      = {2021}
}"""
MASKFORMER_CITATION = """@inproceedings{cheng2021maskformer,
  title     = {Per-Pixel Classification is Not All You Need for Semantic Segmentation},
  author    = {Cheng, Bowen and Schwing, Alexander G. and Kirillov, Alexander},
  booktitle = {NeurIPS},
  year      = {2021}
}"""
MASK2FORMER_HOSTED = (
    "Here the encoder feeds Mask2Former (Cheng et al., *Masked-attention Mask Transformer for Universal Image "
    "Segmentation*, CVPR 2022): {pixel_decoder} and a masked-attention transformer decoder whose queries each predict "
    "a class and a mask; the transformer decoder{shared} transformers' own `Mask2Former` modules."
)
#: per SeMask Mask2Former pixel decoder: (name, card tag, description, pixel decoder row, citation)
SEMASK_MASK2FORMER_HEADS = {
    "msdeformattn": (
        "Mask2Former",
        "mask2former",
        MASK2FORMER_HOSTED.format(
            pixel_decoder="a multi-scale deformable-attention pixel decoder", shared=" and the pixel decoder are"
        ),
        "multi-scale deformable attention, {encoder_layers} encoder layers",
        "",  # the card always cites Mask2Former
    ),
    "fapn": (
        "Mask2Former-FaPN",
        "fapn",
        MASK2FORMER_HOSTED.format(
            pixel_decoder="SeMask's FaPN pixel decoder (Huang et al., ICCV 2021: an FPN whose every level is aligned by "
            "a modulated deformable convolution predicted from the lateral and upsampled features)",
            shared=" is",
        ),
        "FaPN: FPN with feature alignment (modulated deformable convolution, 8 groups) at strides 4, 8 and 16",
        FAPN_CITATION,
    ),
    "msfapn": (
        "Mask2Former-MSFaPN",
        "fapn",
        MASK2FORMER_HOSTED.format(
            pixel_decoder="SeMask's MSFaPN pixel decoder (Mask2Former's deformable-attention decoder whose stride-4 "
            "level is aligned by FaPN's modulated deformable convolution)",
            shared=" and the deformable-attention encoder are",
        ),
        "MSFaPN: multi-scale deformable attention, {encoder_layers} encoder layers, feature alignment at stride 4",
        FAPN_CITATION,
    ),
}


def semask_maskformer_head_fields(config) -> dict:
    """The head part of the card of a SeMask MaskFormer (FPN pixel decoder, DETR decoder on the stride-32 map)."""
    decoder = config.decoder_config
    return {
        "head_name": "MaskFormer",
        "head_tag": "maskformer",
        "head_host": "MaskFormer",
        "head_description": (
            "Here the encoder feeds MaskFormer (Cheng et al., *Per-Pixel Classification is Not All You Need for "
            "Semantic Segmentation*, NeurIPS 2021): an FPN pixel decoder gives the mask features and a DETR "
            "transformer decoder on the stride-32 features turns learnable queries into a class and a mask each; "
            "both are transformers' own `MaskFormer` modules."
        ),
        "head_citation": MASKFORMER_CITATION,
        "original_folder": "SeMask-MaskFormer",
        "pixel_decoder_row": f"FPN, {config.fpn_feature_size} channels",
        "transformer_decoder_row": f"{decoder.decoder_layers} DETR decoder layers on the stride-32 features, "
        f"{decoder.num_queries} queries, hidden size {decoder.d_model}, {decoder.decoder_attention_heads} heads",
        "training_loss_row": f"MaskFormer (class {config.cross_entropy_weight}, focal mask {config.mask_weight}, dice "
        f"{config.dice_weight}, no-object {config.no_object_weight:g}, {decoder.decoder_layers} predictions)",
    }


def semask_d2_card_fields(conversion, processor) -> dict:
    """The fields of ``model_cards/semask_d2.md``: every SeMask detectron2 model (MaskFormer, and Mask2Former with
    its deformable-attention, FaPN or MSFaPN pixel decoder)."""
    config = conversion.model.config
    backbone = config.backbone_config
    size = dict(processor.size)
    if config.model_type == "semask_maskformer":
        head = semask_maskformer_head_fields(config)
    else:
        name, tag, description, pixel_decoder_row, citation = SEMASK_MASK2FORMER_HEADS[config.pixel_decoder_type]
        head = {
            "head_name": name,
            "head_tag": tag,
            "head_host": "Mask2Former",
            "head_description": description,
            "head_citation": citation,
            "original_folder": "SeMask-FAPN" if config.pixel_decoder_type != "msdeformattn" else "SeMask-Mask2Former",
            "pixel_decoder_row": pixel_decoder_row.format(encoder_layers=config.encoder_layers),
            "transformer_decoder_row": f"{config.decoder_layers - 1} masked-attention layers, {config.num_queries} "
            f"queries, hidden size {config.hidden_dim}, {config.num_attention_heads} heads",
            "training_loss_row": f"Mask2Former (class {config.class_weight}, mask {config.mask_weight}, dice "
            f"{config.dice_weight}, no-object {config.no_object_weight:g}, {config.train_num_points} points, "
            f"{config.decoder_layers} predictions)",
            "encoder_layers": config.encoder_layers,
            "decoder_layers": config.decoder_layers - 1,
            "num_queries": config.num_queries,
        }
    architecture = f"SeMask-Swin (embed {backbone.embed_dim}, depths {_dashed(backbone.depths)}) {head['head_name']}"
    return {
        **converted_card_fields(conversion, processor, architecture),
        **head,
        "embed_dim": backbone.embed_dim,
        "depths": _joined(backbone.depths),
        "num_heads": _joined(backbone.num_heads),
        "window_size": backbone.window_size,
        "semantic_attention_types": _joined(backbone.semantic_attention_types),
        "semantic_window_size": backbone.semantic_window_size,
        "semantic_loss_weight": config.semantic_loss_weight,
        "size_divisibility": config.size_divisibility,
        "test_scale": f"shortest edge {size.get('shortest_edge')}, longest at most {size.get('longest_edge')}",
    }


#: per VW detectron2 head (``vw_maskformer``, or VW-Mask2Former's ``pixel_decoder_type``): name, card tag, host and
#: what the hosted model is
VW_D2_HEADS = {
    "vw_maskformer": (
        "VW-MaskFormer",
        "maskformer",
        "MaskFormer",
        "Here VW is the pixel decoder of MaskFormer (Cheng et al., *Per-Pixel Classification is Not All You Need for "
        "Semantic Segmentation*, NeurIPS 2021): it turns the backbone's stride-8/16/32 maps into the mask features, "
        "while a DETR transformer decoder on the stride-32 map turns learnable queries into a class and a mask each; "
        "the decoder is transformers' own `MaskFormer` module.",
    ),
    "vw": (
        "VW-Mask2Former",
        "mask2former",
        "Mask2Former",
        "Here VW is the pixel decoder of Mask2Former (Cheng et al., *Masked-attention Mask Transformer for Universal "
        "Image Segmentation*, CVPR 2022): it makes the mask features, 1x1 projections of the backbone's stride-8/16/32 "
        "maps the multi-scale features, and a masked-attention transformer decoder turns learnable queries into a "
        "class and a mask each; the decoder is transformers' own `Mask2Former` module.",
    ),
    "vw_deformable": (
        "VW-Mask2Former (deformable attention)",
        "mask2former",
        "Mask2Former",
        "Here VW is the pixel decoder of Mask2Former (Cheng et al., *Masked-attention Mask Transformer for Universal "
        "Image Segmentation*, CVPR 2022) after Mask2Former's multi-scale deformable-attention encoder: the encoder "
        "refines the stride-8/16/32 maps (the multi-scale features), the VW block turns its outputs into the mask "
        "features, and a masked-attention transformer decoder turns learnable queries into a class and a mask each; "
        "the encoder and the decoder are transformers' own `Mask2Former` modules.",
    ),
}


def vw_d2_card_fields(conversion, processor) -> dict:
    """The fields of ``model_cards/vwformer_d2.md``: every VW detectron2 model (VW-MaskFormer, VW-Mask2Former with the
    plain or the deformable-attention VW pixel decoder)."""
    config = conversion.model.config
    backbone = config.backbone_config
    size = dict(processor.size)
    if config.model_type == "vw_maskformer":
        head = "vw_maskformer"
        decoder = config.decoder_config
        pixel_decoder_row = (
            f"VW on strides 8-32 ({config.vw_num_heads} heads, short-cut {'on' if config.vw_use_short_cut else 'off'}, "
            "image pooling), low-level fusion at stride 4"
        )
        transformer_decoder_row = (
            f"{decoder.decoder_layers} DETR decoder layers on the stride-32 features, {decoder.num_queries} queries, "
            f"hidden size {decoder.d_model}, {decoder.decoder_attention_heads} heads"
        )
        training_loss_row = (
            f"MaskFormer (class {config.cross_entropy_weight}, focal mask {config.mask_weight}, dice "
            f"{config.dice_weight}, no-object {config.no_object_weight:g}, {decoder.decoder_layers} predictions)"
        )
    else:
        head = config.pixel_decoder_type
        if head == "vw_deformable":
            pixel_decoder_row = (
                f"{config.encoder_layers} deformable-attention encoder layers ({config.num_attention_heads} heads) on "
                "strides 8-32, then VW on their outputs (16 heads, no short-cut, no image pooling), low-level fusion "
                "at stride 4"
            )
        else:
            pixel_decoder_row = (
                "VW on strides 8-32 (16 heads, no short-cut, image pooling), low-level fusion at stride 4; 1x1 "
                "projections of strides 8-32 as the multi-scale features"
            )
        transformer_decoder_row = (
            f"{config.decoder_layers - 1} masked-attention layers, {config.num_queries} queries, hidden size "
            f"{config.hidden_dim}, {config.num_attention_heads} heads"
        )
        training_loss_row = (
            f"Mask2Former (class {config.class_weight}, mask {config.mask_weight}, dice {config.dice_weight}, "
            f"no-object {config.no_object_weight:g}, {config.train_num_points} points, {config.decoder_layers} "
            "predictions)"
        )
    name, tag, host, description = VW_D2_HEADS[head]
    architecture = f"Swin (embed {backbone.embed_dim}, depths {_dashed(backbone.depths)}) {name}"
    return {
        **converted_card_fields(conversion, processor, architecture),
        "head_name": name,
        "head_tag": tag,
        "head_host": host,
        "head_description": description,
        "original_folder": "MaskFormer" if head == "vw_maskformer" else "Mask2Former",
        "pixel_decoder_row": pixel_decoder_row,
        "transformer_decoder_row": transformer_decoder_row,
        "training_loss_row": training_loss_row,
        "embed_dim": backbone.embed_dim,
        "depths": _joined(backbone.depths),
        "num_heads": _joined(backbone.num_heads),
        "window_size": backbone.window_size,
        "size_divisibility": config.size_divisibility,
        "test_scale": f"shortest edge {size.get('shortest_edge')}, longest at most {size.get('longest_edge')}",
    }


#: the Pale card's paragraph on the SDN-style neck (segmentation models: the neck sits before the decode head)
PALE_NECK_NOTE = """
Finetuning with sharper boundaries: `from_pretrained(..., use_sdn_neck=True)` adds an SDN-style neck (unofficial
reconstruction; no official code exists) of Tan et al., "Semantic Diffusion Network for Semantic Segmentation"
(NeurIPS 2022) between the backbone and the decode head. It is not part of this checkpoint: it starts as the
identity (the outputs are unchanged until it is trained) and learns during finetuning.
"""


def write_pale_model_card(template_path: Path, output_dir: Path, model, repo_id: str | None = None) -> Path:
    """Renders the Pale card (``model_cards/pale.md``) for ``model`` into ``output_dir/README.md``. Pale has no
    released weights, so the card describes a model the user initialised or trained."""
    config = model.config
    task = type(model).__name__
    name = repo_id.split("/")[-1] if repo_id else f"pale-{config.embed_dim}"
    classifies = "Classification" in task
    fields = {
        "model_name": name,
        "architecture": task,
        "pipeline_tag": "image-classification" if classifies else "image-segmentation",
        "auto_class": "AutoModelForImageClassification" if classifies else "AutoModelForSemanticSegmentation",
        "neck_note": "" if classifies else PALE_NECK_NOTE,
        "weights_note": "The weights in this repository were trained (or initialised) by its owner.",
        "hidden_sizes": _joined(config.hidden_sizes),
        "depths": _joined(config.depths),
        "num_heads": _joined(config.num_heads),
        "pale_sizes": _joined(config.pale_sizes),
        "parameters": _parameters(model),
        "repo_id": repo_id or f"<user>/{name}",
    }
    return render_card(template_path, output_dir, fields)
