"""VW-MaskFormer: transformers' MaskFormer modules with the varying-window-attention pixel decoder of VWFormer.

Papers: Yan, Wu, Zhang, "Multi-Scale Representations by Varying Window Attention for Semantic Segmentation", ICLR
2024 (arXiv 2404.16573; the VW-MaskFormer results); Cheng, Schwing, Kirillov, "Per-Pixel Classification is Not All
You Need for Semantic Segmentation", NeurIPS 2021 (MaskFormer). Original code: yan-hao-tian/VW, ``MaskFormer/``
(``MaskFormer`` meta-architecture, ``MaskFormerHead`` with ``VWTransformerPixelDecoder`` and
``TransformerPredictor``, ``SetCriterion`` / ``HungarianMatcher``).

Structure:
- transformers' ``SwinBackbone`` (the original's D2 Swin; its four normalised stage outputs);
- :class:`~.modeling_vw_pixel_decoder.VWTransformerPixelDecoder`: the VW block on the four maps -> the mask features
  at stride 4 (attention heads and short-cut from the config);
- transformers' ``MaskFormerTransformerModule``: a DETR decoder (no encoder, learnable query positions, sine
  positions, no padding mask) reading the backbone's stride-32 map through a 1x1 projection (TRANSFORMER_IN_FEATURE
  res5: the class logits do not depend on the VW decoder at all). Every decoder layer's output, through the decoder's
  final LayerNorm, gives one prediction: the last layer's is the final one, the earlier ones the auxiliary ones;
- a class head (``class_predictor``) and a 3-layer mask-embedding MLP (``mask_embedder``); mask logits are the dot
  products of the mask embeddings with the mask features.

``logits`` are the original's semantic-inference scores at mask resolution (stride 4 of the padded input). The loss
is MaskFormer's set loss (cross-entropy 1, focal 20, dice 1; SeMask-MaskFormer's criterion without its semantic
term).

Portable module: imports only torch, transformers and sibling modules.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.models.maskformer.modeling_maskformer import (
    MaskformerMLPPredictionHead,
    MaskFormerPreTrainedModel,
    MaskFormerTransformerModule,
)
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple
from transformers.utils.output_capturing import maybe_install_capturing_hooks

from .configuration_utils_segmentation import validate_labels
from .configuration_vw_maskformer import VWMaskFormerConfig
from .modeling_semask_mask2former import SemanticMaskClassificationMixin
from .modeling_semask_maskformer import DETRMaskPredictionMixin, SeMaskMaskFormerLoss
from .modeling_utils_segmentation import (
    SegmentationModelDefaults,
    check_pixel_values,
    eager_attention,
    list_for_pipeline,
    resolve_output_flags,
    select_hidden_states,
)
from .modeling_vw_pixel_decoder import (
    VWBlock,
    VWSegmenterMixin,
    VWTransformerPixelDecoder,
    init_vw_weights,
    pad_for_vw,
)
from .modeling_vwformer import backbone_channels, build_backbone


@dataclass
class VWMaskFormerModelOutput(ModelOutput):
    """Output of :class:`VWMaskFormerModel` (shapes for the padded input of ``H x W``, multiples of 64, at least 128).

    Args:
        encoder_last_hidden_state: last backbone feature map, ``(B, 8C, H/32, W/32)``.
        pixel_decoder_last_hidden_state: the mask features, ``(B, 256, H/4, W/4)``.
        transformer_decoder_last_hidden_state: final query states (through the decoder LayerNorm), ``(B, Q, D)``.
        transformer_decoder_intermediate_states: the query states of every prediction, each decoder layer's output
            through the decoder LayerNorm, first layer first, ``(B, Q, D)`` each.
        hidden_states: the four backbone feature maps (on request).
        transformer_decoder_hidden_states: the query states entering the first layer (zeros) and each layer's output
            before the LayerNorm, ``(B, Q, D)`` each (on request).
        attentions / cross_attentions: the decoder's self- and cross-attention probabilities (on request).
    """

    encoder_last_hidden_state: torch.FloatTensor | None = None
    pixel_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_intermediate_states: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class VWMaskFormerSemanticSegmenterOutput(ModelOutput):
    """Output of :class:`VWMaskFormerForSemanticSegmentation` (shapes for the padded input of ``H x W``).

    Args:
        loss: with ``labels``: the MaskFormer losses of the final and (``use_auxiliary_loss``) every earlier
            prediction (cross-entropy 1, focal 20, dice 1, as released).
        logits: semantic scores ``(B, K, H/4, W/4)``: ``sum_q softmax(class_q)[k] * sigmoid(mask_q)`` without the
            no-object class.
        class_queries_logits: final class logits per query, ``(B, Q, K + 1)`` (last = no object).
        masks_queries_logits: final mask logits per query, ``(B, Q, H/4, W/4)``.
        auxiliary_logits: the earlier predictions, ``[{"class_queries_logits", "masks_queries_logits"}, ...]``, the
            first decoder layer's first (on request: ``output_auxiliary_logits``).
        hidden_states / transformer_decoder_hidden_states / attentions / cross_attentions: see
            :class:`VWMaskFormerModelOutput` (on request).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    class_queries_logits: torch.FloatTensor | None = None
    masks_queries_logits: torch.FloatTensor | None = None
    auxiliary_logits: list[dict[str, torch.FloatTensor]] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


class VWMaskFormerPixelLevelModule(nn.Module):
    """Swin backbone (``encoder``) and the VW pixel decoder (``decoder``); the names of ``MaskFormerPixelLevelModule``."""

    def __init__(self, config: VWMaskFormerConfig):
        super().__init__()
        self.encoder = build_backbone(config.backbone_config)
        self.decoder = VWTransformerPixelDecoder(config, feature_channels=backbone_channels(self.encoder))


class VWMaskFormerPreTrainedModel(SegmentationModelDefaults, MaskFormerPreTrainedModel):
    config: VWMaskFormerConfig
    base_model_prefix = "model"
    _no_split_modules = ["SwinStage", "MaskFormerDetrDecoderLayer", "VWBlock"]

    @torch.no_grad()
    def _init_weights(self, module):
        """transformers' MaskFormer init for the DETR decoder and the heads (the backbone and the DETR decoder are
        sub-models with their own init), the original's for the VW block (:func:`init_vw_weights`), and the no-object
        weighting of the loss."""
        if isinstance(module, SeMaskMaskFormerLoss):
            empty_weight = torch.ones(module.num_labels + 1)
            empty_weight[-1] = module.no_object_weight
            init.copy_(module.empty_weight, empty_weight)
        elif isinstance(module, VWBlock):
            init_vw_weights(module)
        else:
            super()._init_weights(module)


class VWMaskFormerModel(VWMaskFormerPreTrainedModel):
    """Backbone, VW pixel decoder and DETR decoder (without the class and mask heads): the mask features and the
    query states of every decoder prediction."""

    def __init__(self, config: VWMaskFormerConfig):
        config.force_original_decoder()
        super().__init__(config)
        self.pixel_level_module = VWMaskFormerPixelLevelModule(config)
        self.transformer_module = MaskFormerTransformerModule(
            in_features=self.pixel_level_module.encoder.channels[-1], config=config
        )
        self.post_init()
        # the DETR decoder records its layers' outputs through hooks that transformers installs on the first call
        # otherwise, a graph break under torch.compile (its backbones install them in post_init the same way)
        maybe_install_capturing_hooks(self.transformer_module.decoder)

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> VWMaskFormerModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalised images; zero-padded here on the right and bottom to multiples of `config.size_divisibility`,
            each side to at least 128.
        """
        check_pixel_values(
            pixel_values,
            self.config.backbone_config.num_channels,
            num_channels_name="config.backbone_config.num_channels",
            model=self,
        )
        output_hidden_states, output_attentions = resolve_output_flags(self.config, kwargs)
        pixel_values = pad_for_vw(pixel_values, self.config.size_divisibility)
        feature_maps = self.pixel_level_module.encoder(pixel_values, return_dict=True).feature_maps  # strides 4-32
        mask_features = self.pixel_level_module.decoder(feature_maps).mask_features
        # the original reads res5 with sine positions and no padding mask (padded pixels are attended to)
        decoder = self.transformer_module.decoder
        with eager_attention(decoder.config, output_attentions):
            transformer_output = self.transformer_module(
                feature_maps[-1], output_hidden_states=True, output_attentions=output_attentions, return_dict=True
            )
        # the decoder records the states entering the first layer, then every layer's output (before the LayerNorm);
        # each layer's output through the LayerNorm is one prediction's query states (B, Q, D)
        layer_outputs = transformer_output.hidden_states[-len(decoder.layers) :]
        intermediate_states = tuple(decoder.layernorm(states) for states in layer_outputs[:-1])
        intermediate_states += (transformer_output.last_hidden_state,)
        return VWMaskFormerModelOutput(
            encoder_last_hidden_state=feature_maps[-1],
            pixel_decoder_last_hidden_state=mask_features,
            transformer_decoder_last_hidden_state=transformer_output.last_hidden_state,
            transformer_decoder_intermediate_states=intermediate_states,
            hidden_states=(
                select_hidden_states(feature_maps, kwargs.get("output_hidden_states")) if output_hidden_states else None
            ),
            transformer_decoder_hidden_states=transformer_output.hidden_states if output_hidden_states else None,
            attentions=transformer_output.attentions if output_attentions else None,
            cross_attentions=transformer_output.cross_attentions if output_attentions else None,
        )


class VWMaskFormerForSemanticSegmentation(
    DETRMaskPredictionMixin, VWSegmenterMixin, SemanticMaskClassificationMixin, VWMaskFormerPreTrainedModel
):
    """VW-MaskFormer for semantic segmentation (the released VW-MaskFormer models).

    ``logits`` are the semantic scores at stride 4 of the padded input; the query-level outputs
    (``class_queries_logits``, ``masks_queries_logits``, ``auxiliary_logits``) stay available. With ``labels`` (a
    semantic label map, 255 = ignore) the per-class target masks are built here and MaskFormer's set loss is returned.
    """

    family_name = "VW-MaskFormer"
    attentions_need_eager = True  # the DETR decoder's attentions

    def __init__(self, config: VWMaskFormerConfig):
        super().__init__(config)
        # again: from_pretrained sets an id2label / num_labels override after the config validated itself
        validate_labels(config)
        self.model = VWMaskFormerModel(config)
        hidden_size = config.decoder_config.hidden_size
        self.class_predictor = nn.Linear(hidden_size, config.num_labels + 1)
        self.mask_embedder = MaskformerMLPPredictionHead(hidden_size, hidden_size, config.mask_feature_size)
        self.criterion = SeMaskMaskFormerLoss(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_auxiliary_logits: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VWMaskFormerSemanticSegmenterOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalised images (zero-padded here to multiples of `config.size_divisibility`, at least 128).
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Semantic label maps of the input size, values in `[0, num_labels)` or `config.loss_ignore_index` (255).
        output_auxiliary_logits (`bool`, *optional*):
            Return the class and mask logits of the earlier decoder layers' predictions.
        """
        return self.segment(VWMaskFormerSemanticSegmenterOutput, pixel_values, labels, output_auxiliary_logits, kwargs)


list_for_pipeline("semantic-segmentation", VWMaskFormerForSemanticSegmentation)


__all__ = [
    "VWMaskFormerForSemanticSegmentation",
    "VWMaskFormerModel",
    "VWMaskFormerModelOutput",
    "VWMaskFormerPreTrainedModel",
    "VWMaskFormerSemanticSegmenterOutput",
]
