"""Configuration of SeMask MaskFormer: transformers' MaskFormer modules (Cheng, Schwing, Kirillov, "Per-Pixel
Classification is Not All You Need for Semantic Segmentation", NeurIPS 2021) over a SeMask-Swin backbone (Jain et al.,
"SeMask: Semantically Masked Transformers for Semantic Segmentation", arXiv 2112.12782), as in the
``SeMask-MaskFormer`` folder of Picsart-AI-Research/SeMask-Segmentation.

Portable module: it imports only transformers and sibling modules and is copied next to saved weights, so a saved
model loads with ``trust_remote_code=True`` without hf_semseg installed.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.maskformer.configuration_maskformer import MaskFormerConfig
from transformers.utils import logging

from .configuration_semask_mask2former import semask_backbone_config, sync_backbone_labels
from .configuration_semask_swin import SeMaskSwinConfig
from .configuration_utils_segmentation import (
    IGNORE_INDEX,
    NON_NEGATIVE,
    POSITIVE,
    RATE,
    AnyPrecisionConfigMixin,
    refuse_sdn_neck,
    use_four_backbone_stages,
    validate_labels,
    validate_values,
)


logger = logging.get_logger(__name__)


def semask_maskformer_semantic_attention_types(num_stages: int = 4) -> list[str]:
    """The SeMask-MaskFormer code's semantic attention per stage: the last stage attends globally, every other one
    inside windows, whatever the number of classes (the Mask2Former copy of the same backbone makes it depend on the
    class count, the FPN copy on the width and the class count)."""
    return ["window"] * (num_stages - 1) + ["global"]


#: the transformer decoder of the released SeMask-L MaskFormer (``MODEL.MASK_FORMER``: HIDDEN_DIM 256, NHEADS 8,
#: DIM_FEEDFORWARD 2048, DEC_LAYERS 6, NUM_OBJECT_QUERIES 100, DROPOUT 0.1, ENC_LAYERS 0, PRE_NORM False), in the
#: field names of transformers' DETR config. The original DETR layers apply DROPOUT inside both attentions and between
#: the two FFN linears too, hence the attention and activation dropouts. ``auxiliary_loss`` must stay False (see
#: :meth:`SeMaskMaskFormerConfig.force_original_decoder`).
SEMASK_MASKFORMER_DECODER = {
    "d_model": 256,
    "decoder_layers": 6,
    "decoder_attention_heads": 8,
    "decoder_ffn_dim": 2048,
    "num_queries": 100,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
    "encoder_layers": 0,
    "auxiliary_loss": False,
}


class OriginalDETRDecoderMixin:
    """What the configs of the MaskFormer heads (SeMask's and VW's) share about their DETR decoder
    (``decoder_config``): a partial dict gets the released values (``released_decoder``), ``auxiliary_loss`` stays
    False, the decoder's head and layer counts are the config's, and the decoder's sizes are checked."""

    #: the released decoder's values a partial ``decoder_config`` dict is completed with
    released_decoder = SEMASK_MASKFORMER_DECODER

    def complete_decoder_config(self) -> None:
        """A ``decoder_config`` dict gets the released values where it does not set them (not DETR's defaults)."""
        if isinstance(self.decoder_config, dict):
            self.decoder_config = {**self.released_decoder, **self.decoder_config}

    def __setattr__(self, key, value):
        super().__setattr__(key, value)
        if getattr(self, "_post_init_done", False):  # sub-configs assigned after construction too
            if key == "backbone_config":
                use_four_backbone_stages(value)
            elif key == "decoder_config" and not isinstance(value, dict):
                self.force_original_decoder()

    def force_original_decoder(self) -> None:
        """Sets ``decoder_config.auxiliary_loss`` to False and gives the config the decoder's head and layer counts.

        With ``auxiliary_loss`` True transformers' DETR decoder feeds each layer's LayerNorm-ed output into the next
        layer, which the original (DETR's ``return_intermediate``, which only records the normalised states) does not:
        every prediction after the first would differ from the original's. The model takes the per-layer outputs
        itself and normalises them, so the flag is not needed for the auxiliary predictions."""
        decoder_config = self.decoder_config
        if getattr(decoder_config, "auxiliary_loss", False):
            logger.warning(
                f"{type(self).__name__}: decoder_config.auxiliary_loss is set to False (with True the DETR decoder "
                "would feed normalised states to the next layer, unlike the original); use_auxiliary_loss controls "
                "the auxiliary losses"
            )
            decoder_config.auxiliary_loss = False
        # MaskFormerConfig reads these from the DETR encoder fields, which this model does not use
        self.num_attention_heads = decoder_config.decoder_attention_heads
        self.num_hidden_layers = decoder_config.decoder_layers

    def validate_detr_decoder(self) -> None:
        """Refuses decoder sizes the DETR decoder cannot run and pre-norm layers (transformers' are post-norm), and
        labels and MaskFormer loss weights the model cannot use."""
        name = type(self).__name__
        decoder = self.decoder_config
        validate_labels(self)
        weights = ("cross_entropy_weight", "mask_weight", "dice_weight", "no_object_weight")
        validate_values(self, weights, NON_NEGATIVE)
        prefix = f"{name}.decoder_config"
        validate_values(decoder, ("d_model", "decoder_attention_heads", "decoder_ffn_dim"), POSITIVE, prefix)
        validate_values(decoder, ("dropout", "attention_dropout", "activation_dropout"), RATE, prefix)
        if decoder.d_model % decoder.decoder_attention_heads:
            raise ValueError(
                f"{name}.decoder_config.d_model ({decoder.d_model}) must be divisible by "
                f"decoder_config.decoder_attention_heads ({decoder.decoder_attention_heads})"
            )
        if decoder.decoder_layers < 1:
            raise ValueError(f"{name}.decoder_config.decoder_layers = {decoder.decoder_layers} must be >= 1")
        if decoder.num_queries < 1:
            raise ValueError(f"{name}.decoder_config.num_queries = {decoder.num_queries} must be >= 1")
        if self.pre_norm:
            raise ValueError(
                f"{name}.pre_norm = True is not supported: transformers' DETR decoder layers are post-norm (the "
                "released models are post-norm too)"
            )


@strict
class SeMaskMaskFormerConfig(AnyPrecisionConfigMixin, OriginalDETRDecoderMixin, MaskFormerConfig):
    r"""Configuration of :class:`SeMaskMaskFormerForSemanticSegmentation`: every field of
    :class:`~transformers.MaskFormerConfig` (FPN pixel decoder, DETR transformer decoder in ``decoder_config`` and
    the MaskFormer losses; the defaults are those of the released SeMask-L MaskFormer) plus the SeMask parts.

    The SeMask-Swin backbone is ``backbone_config`` (a :class:`SeMaskSwinConfig`). Its semantic layers predict the same
    ``num_labels`` classes as the decoder, so its labels are kept equal to this config's. When ``backbone_config`` is
    not given (or given as a dict without ``semantic_attention_types``), the released SeMask Swin-L is used with the
    MaskFormer code's semantic attention (:func:`semask_maskformer_semantic_attention_types`: windowed, windowed,
    windowed, global for every class count). The model takes the backbone's four stages.

    ``decoder_config`` is a DETR config (``model_type`` ``"detr"``) read by transformers' ``MaskFormerDetrDecoder``:
    ``d_model`` (HIDDEN_DIM), ``decoder_layers`` (DEC_LAYERS: that many layers, each giving one prediction),
    ``decoder_attention_heads`` (NHEADS), ``decoder_ffn_dim``, ``num_queries``, the dropouts. A dict is completed with
    the released values (:data:`SEMASK_MASKFORMER_DECODER`). Its ``auxiliary_loss`` is always False. The decoder is
    post-norm (PRE_NORM False, as released; transformers' DETR decoder has no pre-norm form).

    Args:
        fpn_feature_size: channels of the FPN pixel decoder (CONVS_DIM; GroupNorm with 32 groups).
        mask_feature_size: channels of the mask features and of the query mask embeddings (MASK_DIM).
        use_auxiliary_loss: also apply the set loss to every decoder layer's prediction but the last
            (DEEP_SUPERVISION, True as released).
        cross_entropy_weight / mask_weight / dice_weight / no_object_weight: the MaskFormer loss weights (1, 20
            (focal), 1, 0.1 as released); the Hungarian matching uses the same weights as costs.
        semantic_loss_weight: weight of the cross-entropy of the parameter-free semantic head on the backbone's
            semantic priors (``CATE_WEIGHT`` = 0.4; final prediction only).
        size_divisibility: the model zero-pads its input on the right and bottom to a multiple of this (32, as the
            original meta-architecture does); 0 disables the padding.
        loss_ignore_index: label value ignored by the losses (255), also the value label maps are padded with.
        pre_norm: the original's PRE_NORM; only False (post-norm decoder layers, as released and as transformers'
            DETR decoder) is supported. Recorded so that a converted config says what it was converted from.
        (all other fields: see :class:`~transformers.MaskFormerConfig`.)
    """

    model_type = "semask_maskformer"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=SeMaskSwinConfig),
        "decoder_config": SubConfigSpec(
            config_class=AutoConfig, model_type="detr", init_kwargs=dict(SEMASK_MASKFORMER_DECODER)
        ),
    }
    backbones_supported = ["semask_swin"]

    use_auxiliary_loss: bool = True
    pre_norm: bool = False
    semantic_loss_weight: float | int = 0.4
    size_divisibility: int = 32
    loss_ignore_index: int = IGNORE_INDEX

    def __post_init__(self, **kwargs):
        self.backbone_config = semask_backbone_config(self.backbone_config, semask_maskformer_semantic_attention_types)
        self.complete_decoder_config()
        super().__post_init__(**kwargs)
        use_four_backbone_stages(self.backbone_config)
        self.force_original_decoder()
        self.sync_backbone_labels()

    def sync_backbone_labels(self) -> None:
        """Gives the backbone's semantic layers this config's classes (:func:`sync_backbone_labels`)."""
        sync_backbone_labels(self)

    def validate_architecture(self):
        super().validate_architecture()
        refuse_sdn_neck(self)
        name = type(self).__name__
        backbone_type = getattr(self.backbone_config, "model_type", None)
        if backbone_type != SeMaskSwinConfig.model_type:  # duck-typed: remote code loads its own copy of the class
            raise ValueError(
                f"{name}.backbone_config must be a SeMask-Swin config (model_type {SeMaskSwinConfig.model_type!r}), "
                f"got {type(self.backbone_config).__name__} ({backbone_type!r})"
            )
        backbone = self.backbone_config
        if len(backbone.depths) != 4 or any(n == 0 for n in backbone.num_semantic_blocks):
            raise ValueError(
                "SeMask MaskFormer needs a four-stage SeMask-Swin backbone with a semantic layer in every stage "
                f"(depths={backbone.depths}, num_semantic_blocks={backbone.num_semantic_blocks})"
            )
        validate_values(self, ("semantic_loss_weight",), NON_NEGATIVE)
        if list(backbone.out_features) != backbone.stage_names[1:]:
            raise ValueError(
                f"{name}.backbone_config.out_features = {backbone.out_features}: the pixel decoder takes the four "
                "stages (stage1 ... stage4)"
            )
        if self.fpn_feature_size <= 0 or self.fpn_feature_size % 32:
            raise ValueError(
                f"{name}.fpn_feature_size = {self.fpn_feature_size} must be a positive multiple of 32 (GroupNorm with "
                "32 groups)"
            )
        if self.mask_feature_size <= 0:
            raise ValueError(f"{name}.mask_feature_size = {self.mask_feature_size} must be positive")
        if self.size_divisibility < 0:
            raise ValueError(f"{name}.size_divisibility = {self.size_divisibility} must be >= 0")
        self.validate_detr_decoder()


AutoConfig.register(SeMaskMaskFormerConfig.model_type, SeMaskMaskFormerConfig, exist_ok=True)

__all__ = [
    "OriginalDETRDecoderMixin",
    "SEMASK_MASKFORMER_DECODER",
    "SeMaskMaskFormerConfig",
    "semask_maskformer_semantic_attention_types",
]
