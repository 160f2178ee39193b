"""Configuration of VW-Mask2Former: transformers' Mask2Former (Cheng et al., "Masked-attention Mask Transformer for
Universal Image Segmentation", CVPR 2022) with the varying-window-attention pixel decoder of VWFormer (Yan et al.,
"Multi-Scale Representations by Varying Window Attention for Semantic Segmentation", ICLR 2024), as in the
``Mask2Former`` folder of yan-hao-tian/VW.

Portable module: it imports only transformers, huggingface_hub and sibling modules and is copied next to saved
weights, so a saved model loads with ``trust_remote_code=True`` without hf_semseg installed.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.mask2former.configuration_mask2former import Mask2FormerConfig

from .configuration_utils_segmentation import (
    AnyPrecisionConfigMixin,
    refuse_sdn_neck,
    use_four_backbone_stages,
    validate_mask2former_values,
)


#: the pixel decoders of the released VW-Mask2Former models: ``"vw"`` (the repository's ``BasePixelDecoder``, the VW
#: block on the backbone plus 1x1 projections for the multi-scale features) and ``"vw_deformable"``
#: (``VWDeformAttnPixelDecoder``: Mask2Former's deformable-attention encoder, the VW block on its outputs)
VW_PIXEL_DECODER_TYPES = ("vw", "vw_deformable")

#: the mask features and the multi-scale features of the VW pixel decoders have this many channels, hard-coded in
#: the original (``MASK_DIM`` and ``CONVS_DIM`` must equal it)
VW_FEATURE_SIZE = 256
#: the VW block needs padded input sides that are multiples of this
VW_SIZE_MULTIPLE = 64

#: the Swin-T backbone of the released VW-Mask2Former-Ti (ImageNet-1k, window 7), four stages
VW_SWIN_TINY = {
    "embed_dim": 96,
    "depths": [2, 2, 6, 2],
    "num_heads": [3, 6, 12, 24],
    "window_size": 7,
    "image_size": 224,
    "drop_path_rate": 0.3,
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}


def swin_backbone_config_dict(backbone_config):
    """A ``backbone_config`` dict without a model type is a Swin's (the backbone of every VW detectron2 model)."""
    if isinstance(backbone_config, dict):
        backbone_config = dict(backbone_config)
        backbone_config.setdefault("model_type", "swin")
    return backbone_config


def validate_vw_d2_config(config) -> None:
    """What the configs of VW-MaskFormer and VW-Mask2Former check alike: a four-stage Swin backbone with its four
    stages out, and a padding multiple the VW block runs on."""
    name = type(config).__name__
    backbone = config.backbone_config
    if getattr(backbone, "model_type", None) != "swin":  # duck-typed: remote code loads its own config classes
        raise ValueError(
            f"{name}.backbone_config must be a Swin config (model_type 'swin'), got {type(backbone).__name__} "
            f"({getattr(backbone, 'model_type', None)!r})"
        )
    if len(backbone.depths) != 4 or list(backbone.out_features) != backbone.stage_names[1:]:
        raise ValueError(
            f"{name} needs the four stages of a four-stage Swin (depths={backbone.depths}, "
            f"out_features={backbone.out_features}; expected four depths and out_features "
            f"{[f'stage{index}' for index in range(1, 5)]})"
        )
    if config.size_divisibility <= 0 or config.size_divisibility % VW_SIZE_MULTIPLE:
        raise ValueError(
            f"{name}.size_divisibility = {config.size_divisibility} must be a positive multiple of "
            f"{VW_SIZE_MULTIPLE} (the VW block splits the stride-8 map into 8 x 8 windows)"
        )


@strict
class VWMask2FormerConfig(AnyPrecisionConfigMixin, Mask2FormerConfig):
    r"""Configuration of :class:`VWMask2FormerForSemanticSegmentation`: every field of
    :class:`~transformers.Mask2FormerConfig` (the masked-attention decoder, the deformable encoder of the
    ``"vw_deformable"`` decoder and the Mask2Former losses: class 2, mask 5, dice 5, no-object 0.1, as released) plus
    the VW parts.

    ``backbone_config`` is a transformers ``SwinConfig`` (``SwinBackbone``, the four stages; a Swin config whose
    ``out_features`` were left unset is given the four). Default: the Swin-T of the released VW-Mask2Former-Ti.

    Args:
        pixel_decoder_type: ``"vw"`` (the plain VW pixel decoder, original ``BasePixelDecoder``) or
            ``"vw_deformable"`` (original ``VWDeformAttnPixelDecoder``: ``encoder_layers`` deformable-attention layers
            with ``num_attention_heads`` heads and FFN ``encoder_feedforward_dim`` (1024), then the VW block).
        size_divisibility: the model zero-pads its input on the right and bottom to a multiple of this, and each side
            to at least 128 (the VW block's 8 x 8 windows need it; see ``modeling_vw_pixel_decoder.py``). Must be a
            positive multiple of 64. 64 is the value of every train and eval command of the original README
            (``MODEL.MASK_FORMER.SIZE_DIVISIBILITY 64``); its config files say 32, with which the original fails on
            sizes that are not multiples of 64.
        feature_size / mask_feature_size: must be 256 (hard-coded widths of the VW decoders).
        (all other fields: see :class:`~transformers.Mask2FormerConfig`; ``decoder_layers`` counts the prediction on
        the learnable queries, so 10 means 9 masked-attention layers, as ``DEC_LAYERS`` of the original.)

    The VW block's attention heads (16), widths (512, 48) and window grid (8 x 8) are hard-coded in the original and
    are not config fields.
    """

    model_type = "vw_mask2former"
    # ``loss_ignore_index``, the name every family uses, answers for transformers' ``ignore_value`` field
    attribute_map = {**Mask2FormerConfig.attribute_map, "loss_ignore_index": "ignore_value"}
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="swin", init_kwargs=dict(VW_SWIN_TINY)),
    }
    backbones_supported = ["swin"]

    pixel_decoder_type: str = "vw"
    size_divisibility: int = VW_SIZE_MULTIPLE

    def __post_init__(self, **kwargs):
        self.backbone_config = swin_backbone_config_dict(self.backbone_config)
        super().__post_init__(**kwargs)
        use_four_backbone_stages(self.backbone_config)

    def __setattr__(self, key, value):
        super().__setattr__(key, value)
        if key == "backbone_config" and getattr(self, "_post_init_done", False):
            use_four_backbone_stages(value)  # a backbone config assigned after construction too

    def validate_architecture(self):
        super().validate_architecture()
        refuse_sdn_neck(self)
        name = type(self).__name__
        validate_vw_d2_config(self)
        validate_mask2former_values(self)
        if self.pixel_decoder_type not in VW_PIXEL_DECODER_TYPES:
            raise ValueError(
                f"{name}.pixel_decoder_type = {self.pixel_decoder_type!r}; expected one of "
                f"{', '.join(VW_PIXEL_DECODER_TYPES)}"
            )
        for field in ("feature_size", "mask_feature_size"):
            if getattr(self, field) != VW_FEATURE_SIZE:
                raise ValueError(
                    f"{name}.{field} = {getattr(self, field)}; the VW pixel decoders hard-code {VW_FEATURE_SIZE} "
                    "channels for the mask and multi-scale features"
                )
        if self.hidden_dim % self.num_attention_heads or self.feature_size % self.num_attention_heads:
            raise ValueError(
                f"{name}: hidden_dim ({self.hidden_dim}) and feature_size ({self.feature_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.decoder_layers < 1:
            raise ValueError(f"{name}.decoder_layers = {self.decoder_layers}; it counts the query prediction, so >= 1")


AutoConfig.register(VWMask2FormerConfig.model_type, VWMask2FormerConfig, exist_ok=True)

__all__ = [
    "VW_PIXEL_DECODER_TYPES",
    "VW_SWIN_TINY",
    "VWMask2FormerConfig",
    "swin_backbone_config_dict",
    "validate_vw_d2_config",
]
