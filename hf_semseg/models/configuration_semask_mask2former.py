"""Configuration of SeMask Mask2Former: transformers' Mask2Former (Cheng et al., "Masked-attention Mask Transformer for
Universal Image Segmentation", CVPR 2022) over a SeMask-Swin backbone (Jain et al., "SeMask: Semantically Masked
Transformers for Semantic Segmentation", arXiv 2112.12782), as in the ``SeMask-Mask2Former`` folder of
Picsart-AI-Research/SeMask-Segmentation.

Portable module: it imports only transformers and sibling modules and is copied next to saved weights, so a saved
model loads with ``trust_remote_code=True`` without hf_semseg installed.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.mask2former.configuration_mask2former import Mask2FormerConfig

from .configuration_semask_swin import SeMaskSwinConfig
from .configuration_utils_segmentation import (
    NON_NEGATIVE,
    AnyPrecisionConfigMixin,
    refuse_sdn_neck,
    use_four_backbone_stages,
    validate_mask2former_values,
    validate_values,
)


def semask_mask2former_semantic_attention_types(num_labels: int, num_stages: int = 4) -> list[str]:
    """The SeMask-Mask2Former code's rule for the semantic attention of each stage: with exactly 150 classes (ADE20K)
    the last stage attends globally and the others inside windows; with any other number of classes (Cityscapes)
    every stage is windowed. (The SeMask-FPN code uses a different rule for the same backbone.)"""
    if num_labels == 150:
        return ["window"] * (num_stages - 1) + ["global"]
    return ["window"] * num_stages


def semask_fapn_semantic_attention_types(num_stages: int = 4) -> list[str]:
    """The rule of the SeMask-FAPN copy of the backbone (the FaPN and MSFaPN models): the first two stages attend
    inside windows and the others globally, for every number of classes."""
    return ["window"] * 2 + ["global"] * (num_stages - 2)


#: the pixel decoders of the released SeMask Mask2Former models: Mask2Former's multi-scale deformable-attention
#: decoder, SeMask's FaPN (FPN with feature alignment) and MSFaPN (the deformable-attention decoder with feature
#: alignment in its stride-4 level)
PIXEL_DECODER_TYPES = ("msdeformattn", "fapn", "msfapn")


def default_semantic_attention_types(pixel_decoder_type: str, num_labels: int, num_stages: int = 4) -> list[str]:
    """The per-stage semantic attention of the original code that a pixel decoder came with (the keys of a checkpoint
    are the same either way, so this is a config value: the converter and the variants set it)."""
    if pixel_decoder_type in ("fapn", "msfapn"):
        return semask_fapn_semantic_attention_types(num_stages)
    return semask_mask2former_semantic_attention_types(num_labels, num_stages)


# The backbone of the released checkpoints: SeMask Swin-L, ImageNet-22k 384 pre-training (window 12).
SEMASK_SWIN_LARGE = {
    "embed_dim": 192,
    "depths": [2, 2, 18, 2],
    "num_heads": [6, 12, 24, 48],
    "window_size": 12,
    "semantic_window_size": 12,
    "image_size": 384,
    "drop_path_rate": 0.3,
}


def semask_backbone_config(backbone_config, semantic_attention_rule):
    """The ``backbone_config`` of a SeMask detectron2 model as ``__post_init__`` receives it: None is the released
    SeMask Swin-L; a dict gets the SeMask-Swin ``model_type`` and, without ``semantic_attention_types``, the rule of
    the code copy (``semantic_attention_rule(num_stages)``); a config object is returned as it is."""
    if backbone_config is None:
        backbone_config = dict(SEMASK_SWIN_LARGE)
    if isinstance(backbone_config, dict):
        backbone_config = dict(backbone_config)
        backbone_config.setdefault("model_type", SeMaskSwinConfig.model_type)
        if backbone_config.get("semantic_attention_types") is None:
            num_stages = len(backbone_config.get("depths", SEMASK_SWIN_LARGE["depths"]))
            backbone_config["semantic_attention_types"] = semantic_attention_rule(num_stages)
    return backbone_config


def sync_backbone_labels(config) -> None:
    """Gives a SeMask model's backbone (its semantic layers) the classes of ``config``: they are trained on the same
    labels."""
    if config.backbone_config.id2label != config.id2label:
        config.backbone_config.id2label = dict(config.id2label)
        config.backbone_config.label2id = {label: index for index, label in config.id2label.items()}


@strict
class SeMaskMask2FormerConfig(AnyPrecisionConfigMixin, Mask2FormerConfig):
    r"""Configuration of :class:`SeMaskMask2FormerForSemanticSegmentation`: every field of
    :class:`~transformers.Mask2FormerConfig` (pixel decoder, masked-attention decoder and the Mask2Former losses; the
    defaults are those of the released SeMask-L Mask2Former models) plus the SeMask parts.

    The SeMask-Swin backbone is ``backbone_config`` (a :class:`SeMaskSwinConfig`). Its semantic layers predict the same
    ``num_labels`` classes as the decoder, so its labels are kept equal to this config's. When ``backbone_config`` is
    not given, the released SeMask Swin-L is used; a backbone config without ``semantic_attention_types`` gets the
    rule of the code its pixel decoder came with (:func:`default_semantic_attention_types`: the Mask2Former code's
    rule for ``"msdeformattn"``, the SeMask-FAPN code's W W G G for ``"fapn"`` and ``"msfapn"``). The model takes the backbone's four
    stages: a backbone config that leaves ``out_features`` unset (transformers' rule: the last stage only) is given
    the four.

    Args:
        pixel_decoder_type: ``"msdeformattn"`` (Mask2Former's multi-scale deformable-attention pixel decoder, the
            SeMask-L Mask2Former model), ``"fapn"`` (SeMask's FaPN: an FPN whose levels are aligned by modulated
            deformable convolution) or ``"msfapn"`` (the deformable-attention decoder with that alignment in its
            stride-4 level); see ``modeling_fapn.py``.
        semantic_loss_weight: weight of the cross-entropy of the parameter-free semantic head on the backbone's
            semantic priors (``CATE_WEIGHT`` = 0.4; final decoder layer only).
        size_divisibility: the model zero-pads its input on the right and bottom to a multiple of this (32, as the
            original meta-architecture does); 0 disables the padding.
        (all other fields: see :class:`~transformers.Mask2FormerConfig`; ``decoder_layers`` counts the prediction on
        the learnable queries, so 10 means 9 masked-attention layers, as ``DEC_LAYERS`` of the original.)
    """

    model_type = "semask_mask2former"
    # ``loss_ignore_index``, the name every family uses, answers for transformers' ``ignore_value`` field
    attribute_map = {**Mask2FormerConfig.attribute_map, "loss_ignore_index": "ignore_value"}
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=SeMaskSwinConfig)}
    backbones_supported = ["semask_swin"]

    pixel_decoder_type: str = "msdeformattn"
    semantic_loss_weight: float | int = 0.4
    size_divisibility: int = 32

    def __post_init__(self, **kwargs):
        num_labels = self._num_labels_from(kwargs)
        self.backbone_config = semask_backbone_config(
            self.backbone_config,
            lambda num_stages: default_semantic_attention_types(self.pixel_decoder_type, num_labels, num_stages),
        )
        super().__post_init__(**kwargs)
        use_four_backbone_stages(self.backbone_config)
        self.sync_backbone_labels()

    def __setattr__(self, key, value):
        super().__setattr__(key, value)
        if key == "backbone_config" and getattr(self, "_post_init_done", False):
            use_four_backbone_stages(value)  # a backbone config assigned after construction too

    def _num_labels_from(self, kwargs: dict) -> int:
        """The number of classes before ``PreTrainedConfig.__post_init__`` has resolved it."""
        if self.id2label is not None:
            return len(self.id2label)
        return int(kwargs.get("num_labels", 2))

    def sync_backbone_labels(self) -> None:
        """Gives the backbone's semantic layers this config's classes (:func:`sync_backbone_labels`)."""
        sync_backbone_labels(self)

    def validate_architecture(self):
        super().validate_architecture()
        refuse_sdn_neck(self)
        backbone_type = getattr(self.backbone_config, "model_type", None)
        if backbone_type != SeMaskSwinConfig.model_type:  # duck-typed: remote code loads its own copy of the class
            raise ValueError(
                f"SeMaskMask2FormerConfig.backbone_config must be a SeMask-Swin config (model_type "
                f"{SeMaskSwinConfig.model_type!r}), got {type(self.backbone_config).__name__} ({backbone_type!r})"
            )
        if len(self.backbone_config.depths) != 4 or any(n == 0 for n in self.backbone_config.num_semantic_blocks):
            raise ValueError(
                "SeMask Mask2Former needs a four-stage SeMask-Swin backbone with a semantic layer in every stage "
                f"(depths={self.backbone_config.depths}, num_semantic_blocks={self.backbone_config.num_semantic_blocks})"
            )
        backbone = self.backbone_config
        if list(backbone.out_features) != backbone.stage_names[1:]:
            raise ValueError(
                f"SeMaskMask2FormerConfig.backbone_config.out_features = {backbone.out_features}; the pixel decoder "
                f"takes the four stages {backbone.stage_names[1:]}"
            )
        if self.pixel_decoder_type not in PIXEL_DECODER_TYPES:
            raise ValueError(
                f"pixel_decoder_type = {self.pixel_decoder_type!r}; expected one of {', '.join(PIXEL_DECODER_TYPES)}"
            )
        validate_mask2former_values(self)
        validate_values(self, ("semantic_loss_weight",), NON_NEGATIVE)
        strides = [backbone.patch_size * 2**stage for stage in range(4)]
        if list(self.feature_strides) != strides:
            raise ValueError(
                f"SeMaskMask2FormerConfig.feature_strides = {self.feature_strides}; expected the backbone's strides "
                f"{strides} (patch_size {backbone.patch_size}, then 2x per stage)"
            )
        if self.common_stride not in strides[:2]:
            raise ValueError(
                f"SeMaskMask2FormerConfig.common_stride = {self.common_stride}; expected {strides[0]} (mask features "
                f"at the stride-{strides[0]} level, as released) or {strides[1]} (no FPN level)"
            )
        for name in ("feature_size", "mask_feature_size"):
            if getattr(self, name) % 32:
                raise ValueError(f"{name} = {getattr(self, name)} must be a multiple of 32 (GroupNorm with 32 groups)")
        if self.hidden_dim % self.num_attention_heads or self.feature_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_dim ({self.hidden_dim}) and feature_size ({self.feature_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.decoder_layers < 1:
            raise ValueError(f"decoder_layers = {self.decoder_layers}; it counts the query prediction, so it is >= 1")
        if self.size_divisibility < 0:
            raise ValueError(f"size_divisibility = {self.size_divisibility} must be >= 0")


AutoConfig.register(SeMaskMask2FormerConfig.model_type, SeMaskMask2FormerConfig, exist_ok=True)

__all__ = [
    "SeMaskMask2FormerConfig",
    "PIXEL_DECODER_TYPES",
    "default_semantic_attention_types",
    "semask_backbone_config",
    "sync_backbone_labels",
    "semask_fapn_semantic_attention_types",
    "semask_mask2former_semantic_attention_types",
]
