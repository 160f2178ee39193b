"""Configuration of VW-MaskFormer: transformers' MaskFormer modules (Cheng, Schwing, Kirillov, "Per-Pixel
Classification is Not All You Need for Semantic Segmentation", NeurIPS 2021) with the varying-window-attention pixel
decoder of VWFormer (Yan et al., "Multi-Scale Representations by Varying Window Attention for Semantic
Segmentation", ICLR 2024), as in the ``MaskFormer`` folder of yan-hao-tian/VW.

Portable module: it imports only transformers, huggingface_hub and sibling modules and is copied next to saved
weights, so a saved model loads with ``trust_remote_code=True`` without hf_semseg installed.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.maskformer.configuration_maskformer import MaskFormerConfig

from .configuration_semask_maskformer import SEMASK_MASKFORMER_DECODER, OriginalDETRDecoderMixin
from .configuration_utils_segmentation import (
    IGNORE_INDEX,
    AnyPrecisionConfigMixin,
    refuse_sdn_neck,
    use_four_backbone_stages,
)
from .configuration_vw_mask2former import (
    VW_FEATURE_SIZE,
    VW_SIZE_MULTIPLE,
    VW_SWIN_TINY,
    swin_backbone_config_dict,
    validate_vw_d2_config,
)


#: the transformer decoder of the released VW-MaskFormer models: the same as SeMask MaskFormer's (``MODEL.MASK_FORMER``
#: of the MaskFormer code: HIDDEN_DIM 256, NHEADS 8, DIM_FEEDFORWARD 2048, DEC_LAYERS 6, NUM_OBJECT_QUERIES 100, DROPOUT
#: 0.1, ENC_LAYERS 0, PRE_NORM False; :data:`SEMASK_MASKFORMER_DECODER`)
VW_MASKFORMER_DECODER = SEMASK_MASKFORMER_DECODER


@strict
class VWMaskFormerConfig(AnyPrecisionConfigMixin, OriginalDETRDecoderMixin, MaskFormerConfig):
    r"""Configuration of :class:`VWMaskFormerForSemanticSegmentation`: the fields of
    :class:`~transformers.MaskFormerConfig` (DETR transformer decoder in ``decoder_config``, the MaskFormer losses:
    cross-entropy 1, focal mask 20, dice 1, no-object 0.1) plus the VW pixel decoder's settings.

    ``backbone_config`` is a transformers ``SwinConfig`` (``SwinBackbone``, the four stages). Default: the Swin-T of
    the released VW-MaskFormer-Ti. ``decoder_config`` is a DETR config (``d_model`` = HIDDEN_DIM, ``decoder_layers``
    = DEC_LAYERS, each layer giving one prediction, ``decoder_attention_heads`` = NHEADS, ``decoder_ffn_dim``,
    ``num_queries``, the dropouts); a dict is completed with the released values (:data:`VW_MASKFORMER_DECODER`), and
    ``auxiliary_loss`` is always False. The decoder reads the backbone's stride-32 map (TRANSFORMER_IN_FEATURE res5).

    Args:
        vw_num_heads: attention heads of the VW block (``MODEL.SEM_SEG_HEAD.NHEADS``: 16 for the released T, S and L
            models, 8 for B). Not in the weights.
        vw_use_short_cut: add the fused stride-8 map to each attention branch (``MODEL.SEM_SEG_HEAD.SHORT_CUT``: on
            for the released T model, off for S, B and L). Not in the weights.
        mask_feature_size: must be 256 (the VW decoder's hard-coded mask-feature width; MASK_DIM).
        use_auxiliary_loss: also apply the set loss to every decoder layer's prediction but the last
            (DEEP_SUPERVISION, True as released).
        size_divisibility: the model zero-pads its input on the right and bottom to a multiple of this and each side
            to at least 128 (the VW block's 8 x 8 windows need it). A positive multiple of 64; 64 is the value of every
            command of the original README (``MODEL.MASK_FORMER.SIZE_DIVISIBILITY 64``; its config files say 32).
        loss_ignore_index: label value ignored by the losses (255), also the value label maps are padded with.
        pre_norm: the original's PRE_NORM; only False (post-norm decoder layers, as released and as transformers'
            DETR decoder) is supported. Recorded so that a converted config says what it was converted from.
        (``fpn_feature_size`` is not used: the VW decoder has no FPN.)
    """

    model_type = "vw_maskformer"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="swin", init_kwargs=dict(VW_SWIN_TINY)),
        "decoder_config": SubConfigSpec(
            config_class=AutoConfig, model_type="detr", init_kwargs=dict(VW_MASKFORMER_DECODER)
        ),
    }
    backbones_supported = ["swin"]

    vw_num_heads: int = 16
    vw_use_short_cut: bool = True
    use_auxiliary_loss: bool = True
    size_divisibility: int = VW_SIZE_MULTIPLE
    loss_ignore_index: int = IGNORE_INDEX
    pre_norm: bool = False

    def __post_init__(self, **kwargs):
        self.backbone_config = swin_backbone_config_dict(self.backbone_config)
        self.complete_decoder_config()
        super().__post_init__(**kwargs)
        use_four_backbone_stages(self.backbone_config)
        self.force_original_decoder()

    def validate_architecture(self):
        super().validate_architecture()
        refuse_sdn_neck(self)
        name = type(self).__name__
        validate_vw_d2_config(self)
        if self.mask_feature_size != VW_FEATURE_SIZE:
            raise ValueError(
                f"{name}.mask_feature_size = {self.mask_feature_size}; the VW pixel decoder hard-codes "
                f"{VW_FEATURE_SIZE} mask-feature channels"
            )
        if self.vw_num_heads < 1 or 512 % self.vw_num_heads:
            raise ValueError(f"{name}.vw_num_heads = {self.vw_num_heads} must divide the VW block's 512 channels")
        self.validate_detr_decoder()


AutoConfig.register(VWMaskFormerConfig.model_type, VWMaskFormerConfig, exist_ok=True)

__all__ = ["VW_MASKFORMER_DECODER", "VWMaskFormerConfig"]
