"""Configuration of VWFormer (Yan et al., "Multi-Scale Representations by Varying Window Attention for Semantic
Segmentation", ICLR 2024, arXiv 2404.16573): the varying-window-attention decode head over a hierarchical backbone.

Portable module: it imports only transformers and huggingface_hub, plus the configurations of this package's own
backbones (SeMask-Swin, Pale) so that a saved ``backbone_config`` of those types can be read back. Inside the package
they come from their family folders; in a folder saved by ``save_pretrained`` (``trust_remote_code``) from the copies
saved next to this file.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_pale import PaleConfig  # noqa: F401  (registers the "pale" backbone type)
from .configuration_semask_swin import SeMaskSwinConfig  # noqa: F401  (registers "semask_swin")
from .configuration_utils_segmentation import (
    IGNORE_INDEX,
    NON_NEGATIVE,
    POSITIVE,
    RATE,
    AnyPrecisionConfigMixin,
    use_four_backbone_stages,
    validate_labels,
    validate_sdn_options,
    validate_values,
)


#: the two decode heads of the original code (``mmseg/models/decode_heads/vw_head.py``)
VWFORMER_HEAD_TYPES = ("vw", "vw_city")


@strict
class VWFormerConfig(AnyPrecisionConfigMixin, PreTrainedConfig):
    r"""Configuration of :class:`VWFormerForSemanticSegmentation`: a backbone (any model giving four feature maps
    at strides 4/8/16/32) and the VWFormer decode head.

    Args:
        backbone_config: configuration of the backbone. transformers' ``SwinConfig``, ``ConvNextConfig`` (their
            backbones, with ``out_features`` set to the four stages) and ``SegformerConfig`` (MiT encoder, its four
            hidden states), or this package's ``SeMaskSwinConfig`` / ``PaleConfig``. A backbone config whose
            ``out_features`` were left unset (transformers' rule: the last stage only) is given the four stages
            (:func:`use_four_backbone_stages`). Any other transformers backbone config is built with
            ``AutoBackbone``. Defaults to the Swin-B of the released ADE20K model.
        head_type: ``"vw"``, the ``VWHead`` of the ADE20K models (per-pixel linear projections, non-local attention
            whose output goes through a BatchNorm, a global image-pooling branch, bilinear upsampling of the deep
            features), or ``"vw_city"``, the ``VWCityHead`` of the Cityscapes models and of the released ConvNeXt-S
            ADE20K model (1x1 conv + BN + ReLU projections, multi-head attention with an output bias, no pooling
            branch, nearest upsampling of the deep features).
        decoder_hidden_size: channels ``C`` of the head (512 in every released model; ``hidden_size`` in configs
            saved before hf-semseg 0.2, still read).
        num_attention_heads: heads of the varying window attention (1 for ``vw``, 16 for ``vw_city`` models).
        use_short_cut: add the fused 1/8 map to each attention branch (``short_cut``; Swin-B, ConvNeXt ``vw``
            models: on; Swin-L and ``vw_city`` models: off).
        enlarging_ratios: context window side relative to the query window, one attention branch each (2, 4, 8).
        num_windows_per_side: the 1/8 map is split into this many query windows along each side (8, fixed in the
            original code).
        low_level_channels: channels of the projected 1/4 map fused before the classifier (48).
        classifier_dropout_prob: ``Dropout2d`` before the classifier (0.1; formerly ``classifier_dropout``).
        batch_norm_eps: epsilon of the head's BatchNorms.
        use_auxiliary_head: add transformers' UperNet FCN auxiliary head on stage 3 (no released model has one).
        auxiliary_loss_weight / auxiliary_channels / auxiliary_num_convs / auxiliary_concat_input: that head.
        loss_ignore_index: label ignored by the loss (``IGNORE_INDEX``, 255).
        loss_mean_over_all_pixels: average the cross-entropy over all pixels, ignored ones counting as zero, as mmseg
            0.30 does by default (``avg_non_ignore=False``); ``False`` averages over the labelled pixels only.
        initializer_range: std of the truncated-normal init of the head's Linear projections.
        use_sdn_neck / sdn_lambda / sdn_similarity / sdn_groups / sdn_width: the SDN-style neck between the backbone
            and the decode head, off by default (:func:`validate_sdn_options` describes the options).
    """

    model_type = "vwformer"
    # names of earlier versions of this config, still read and written through to the current ones
    attribute_map = {"hidden_size": "decoder_hidden_size", "classifier_dropout": "classifier_dropout_prob"}
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="swin",
            init_kwargs={
                "embed_dim": 128,
                "depths": [2, 2, 18, 2],
                "num_heads": [4, 8, 16, 32],
                "window_size": 12,
                "image_size": 384,
                "drop_path_rate": 0.3,
                "out_features": ["stage1", "stage2", "stage3", "stage4"],
            },
        ),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    head_type: str = "vw"
    decoder_hidden_size: int = 512
    num_attention_heads: int = 1
    use_short_cut: bool = True
    enlarging_ratios: list[int] | tuple[int, ...] = (2, 4, 8)
    num_windows_per_side: int = 8
    low_level_channels: int = 48
    classifier_dropout_prob: float | int = 0.1
    batch_norm_eps: float = 1e-5
    use_auxiliary_head: bool = False
    auxiliary_loss_weight: float | int = 0.4
    auxiliary_channels: int = 256
    auxiliary_num_convs: int = 1
    auxiliary_concat_input: bool = False
    loss_ignore_index: int = IGNORE_INDEX
    loss_mean_over_all_pixels: bool = True
    initializer_range: float = 0.02
    use_sdn_neck: bool = False
    sdn_lambda: float | int = 1.0
    sdn_similarity: str = "per_channel"
    sdn_groups: str | int = "depthwise"
    sdn_width: int | None = None

    def __post_init__(self, **kwargs):
        self.enlarging_ratios = list(self.enlarging_ratios)
        super().__post_init__(**kwargs)
        use_four_backbone_stages(self.backbone_config)

    def __setattr__(self, key, value):
        super().__setattr__(key, value)
        if key == "backbone_config" and getattr(self, "_post_init_done", False):
            use_four_backbone_stages(value)  # a backbone config assigned after construction too

    def validate_architecture(self):
        validate_sdn_options(self)
        if self.head_type not in VWFORMER_HEAD_TYPES:
            raise ValueError(f"VWFormerConfig.head_type must be one of {VWFORMER_HEAD_TYPES}, got {self.head_type!r}")
        validate_labels(self, per_pixel_softmax="VWFormerForSemanticSegmentation")
        sizes = ("decoder_hidden_size", "num_attention_heads", "num_windows_per_side", "low_level_channels")
        validate_values(self, (*sizes, "auxiliary_channels", "batch_norm_eps"), POSITIVE)
        validate_values(self, ("classifier_dropout_prob",), RATE)
        validate_values(self, ("auxiliary_loss_weight", "auxiliary_num_convs", "initializer_range"), NON_NEGATIVE)
        if self.decoder_hidden_size % self.num_attention_heads:
            raise ValueError(
                f"VWFormerConfig.decoder_hidden_size={self.decoder_hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        for ratio in self.enlarging_ratios:
            if ratio < 2 or ratio % 2 or self.decoder_hidden_size % (ratio * ratio):
                raise ValueError(
                    f"VWFormerConfig.enlarging_ratios: {ratio} must be an even number >= 2 whose square divides "
                    f"decoder_hidden_size={self.decoder_hidden_size} (the context embedding has decoder_hidden_size / ratio**2 channels)"
                )
            if ratio > self.num_windows_per_side:
                raise ValueError(
                    f"VWFormerConfig.enlarging_ratios: {ratio} is larger than num_windows_per_side="
                    f"{self.num_windows_per_side} (a context window would be larger than the map)"
                )
        backbone = self.backbone_config
        out_features = getattr(backbone, "out_features", None)
        stage_names = list(getattr(backbone, "stage_names", None) or [])
        if getattr(backbone, "model_type", None) == "segformer":
            if backbone.num_encoder_blocks != 4:
                raise ValueError(
                    f"VWFormer needs the four MiT stages (strides 4/8/16/32); backbone_config.num_encoder_blocks is "
                    f"{backbone.num_encoder_blocks}"
                )
        elif out_features is not None:
            # a backbone with stage names: its four stages after the stem (another number of stages has other
            # strides); without them, four maps
            if stage_names:
                wrong = len(stage_names) != 5 or list(out_features) != stage_names[1:]
            else:
                wrong = len(out_features) != 4
            if wrong:
                if len(stage_names) == 5:
                    expected = f", expected {stage_names[1:]}"
                elif stage_names:
                    expected = f" of a backbone with {len(stage_names) - 1} stages {stage_names[1:]}; expected four"
                else:
                    expected = ""
                raise ValueError(
                    f"VWFormer needs the four backbone stages (strides 4/8/16/32); backbone_config.out_features is "
                    f"{out_features}{expected}"
                )


AutoConfig.register(VWFormerConfig.model_type, VWFormerConfig, exist_ok=True)

__all__ = ["VWFormerConfig", "VWFORMER_HEAD_TYPES"]
