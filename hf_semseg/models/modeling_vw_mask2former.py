"""VW-Mask2Former: transformers' Mask2Former with the varying-window-attention pixel decoders of VWFormer.

Papers: Yan, Wu, Zhang, "Multi-Scale Representations by Varying Window Attention for Semantic Segmentation", ICLR
2024 (arXiv 2404.16573; the VW-Mask2Former results); Cheng, Misra, Schwing, Kirillov, Girdhar, "Masked-attention Mask
Transformer for Universal Image Segmentation", CVPR 2022. Original code: yan-hao-tian/VW, ``Mask2Former/``
(``MaskFormer`` meta-architecture, ``BasePixelDecoder`` / ``VWDeformAttnPixelDecoder`` in
``modeling/pixel_decoder/fpn.py``, ``MultiScaleMaskedTransformerDecoder``, ``SetCriterion``).

Structure:
- transformers' ``SwinBackbone`` (the original's D2 Swin; its four normalised stage outputs);
- a VW pixel decoder (``modeling_vw_pixel_decoder.py``; ``config.pixel_decoder_type``): the mask features at stride
  4 from the VW block, and the multi-scale features (strides 32, 16, 8) from 1x1 projections of the backbone
  (``"vw"``) or from Mask2Former's deformable-attention encoder (``"vw_deformable"``, which the VW block reads too);
- transformers' ``Mask2FormerTransformerModule`` (masked-attention decoder, learnable queries) and a class head on
  every prediction's query states - the same module names as ``Mask2FormerForUniversalSegmentation``.

``logits`` are the original's semantic-inference scores at mask resolution: for every class, the sum over the
queries of softmax(class logits) without the no-object column times sigmoid(mask logits). The SeMask Mask2Former
image processor turns the query logits into label maps at the image size exactly as the original (the same
detectron2 inference). The loss is Mask2Former's set loss (SeMask-Mask2Former's criterion without its semantic term).

Portable module: imports only torch, transformers and sibling modules.
"""

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple, logging

from .configuration_utils_segmentation import validate_labels
from .configuration_vw_mask2former import VWMask2FormerConfig
from .modeling_semask_mask2former import SemanticMaskClassificationMixin, SeMaskMask2FormerLoss
from .modeling_utils_segmentation import (
    SegmentationModelDefaults,
    check_pixel_values,
    list_for_pipeline,
    resolve_output_flags,
    select_hidden_states,
)
from .modeling_vw_pixel_decoder import (
    VW_MASK2FORMER_PIXEL_DECODERS,
    VWBasePixelDecoder,
    VWBlock,
    VWDeformAttnPixelDecoder,
    VWSegmenterMixin,
    init_vw_weights,
    pad_for_vw,
)
from .modeling_vwformer import backbone_channels, build_backbone


logger = logging.get_logger(__name__)


@dataclass
class VWMask2FormerModelOutput(ModelOutput):
    """Output of :class:`VWMask2FormerModel` (shapes for the padded input of ``H x W``, multiples of 64, at least
    128).

    Args:
        encoder_last_hidden_state: last backbone feature map, ``(B, 8C, H/32, W/32)``.
        pixel_decoder_last_hidden_state: the mask features, ``(B, 256, H/4, W/4)``.
        transformer_decoder_last_hidden_state: final query states (before the decoder LayerNorm), ``(B, Q, D)``.
        transformer_decoder_intermediate_states: LayerNorm-ed query states of every prediction, ``(Q, B, D)`` each:
            the learnable queries first, then one per masked-attention layer.
        masks_queries_logits: mask logits of every prediction (same order), ``(B, Q, H/4, W/4)`` each.
        hidden_states: the four backbone feature maps (on request).
        pixel_decoder_hidden_states: the multi-scale features fed to the decoder, strides 32, 16, 8 (on request).
        transformer_decoder_hidden_states: query states entering each layer and the final ones (on request).
        attentions: masked-attention decoder attention probabilities (on request).
    """

    encoder_last_hidden_state: torch.FloatTensor | None = None
    pixel_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_intermediate_states: tuple[torch.FloatTensor, ...] | None = None
    masks_queries_logits: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class VWMask2FormerSemanticSegmenterOutput(ModelOutput):
    """Output of :class:`VWMask2FormerForSemanticSegmentation` (shapes for the padded input of ``H x W``).

    Args:
        loss: with ``labels``: the Mask2Former losses of the final and (``use_auxiliary_loss``) every earlier
            prediction (class 2.0, mask 5.0, dice 5.0, as released).
        logits: semantic scores ``(B, K, H/4, W/4)``: ``sum_q softmax(class_q)[k] * sigmoid(mask_q)`` without the
            no-object class (probability-like, not normalised over the classes).
        class_queries_logits: final class logits per query, ``(B, Q, K + 1)`` (last = no object).
        masks_queries_logits: final mask logits per query, ``(B, Q, H/4, W/4)``.
        auxiliary_logits: the earlier predictions, ``[{"class_queries_logits", "masks_queries_logits"}, ...]``, the
            learnable queries' first (on request: ``output_auxiliary_logits``).
        hidden_states / pixel_decoder_hidden_states / transformer_decoder_hidden_states / attentions: see
            :class:`VWMask2FormerModelOutput` (on request).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    class_queries_logits: torch.FloatTensor | None = None
    masks_queries_logits: torch.FloatTensor | None = None
    auxiliary_logits: list[dict[str, torch.FloatTensor]] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class VWMask2FormerPixelLevelModule(nn.Module):
    """Swin backbone (``encoder``) and the VW pixel decoder of ``config.pixel_decoder_type`` (``decoder``); the same
    names as ``Mask2FormerPixelLevelModule``. As in the original, the deformable decoder runs outside autocast."""

    def __init__(self, config: VWMask2FormerConfig):
        super().__init__()
        self.encoder = build_backbone(config.backbone_config)
        self.decoder = VW_MASK2FORMER_PIXEL_DECODERS[config.pixel_decoder_type](
            config, feature_channels=backbone_channels(self.encoder)
        )
        self.decoder_outside_autocast = config.pixel_decoder_type == "vw_deformable"


class VWMask2FormerPreTrainedModel(SegmentationModelDefaults, Mask2FormerPreTrainedModel):
    config: VWMask2FormerConfig
    base_model_prefix = "model"
    _no_split_modules = ["SwinStage", "Mask2FormerMaskedAttentionDecoderLayer", "VWBlock"]

    @torch.no_grad()
    def _init_weights(self, module):
        """transformers' Mask2Former init for the masked-attention decoder and the deformable encoder (the Swin
        backbone is a sub-model with its own init), the original's for the VW modules (:func:`init_vw_weights`) and
        the deformable decoder's input projections (Xavier-uniform, zero bias), and the no-object weighting."""
        if isinstance(module, SeMaskMask2FormerLoss):
            empty_weight = torch.ones(module.num_labels + 1)
            empty_weight[-1] = module.no_object_weight
            init.copy_(module.empty_weight, empty_weight)
        elif isinstance(module, (VWBlock, VWBasePixelDecoder)):
            init_vw_weights(module)
        elif isinstance(module, VWDeformAttnPixelDecoder):
            super()._init_weights(module)  # the level embeddings
            for projection in module.input_projections:
                init.xavier_uniform_(projection[0].weight, gain=1.0)
                init.zeros_(projection[0].bias)
        else:
            super()._init_weights(module)

    def _activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ):
        """Activation checkpointing, always non-reentrant: transformers' Mask2Former decoder layers take tensors as
        keyword arguments, which reentrant checkpointing does not detach (see SeMask-Mask2Former). The gradients are
        the same."""
        kwargs = dict(activation_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant"):
            logger.warning("VW-Mask2Former uses non-reentrant activation checkpointing (use_reentrant=False)")
        kwargs["use_reentrant"] = False
        super()._activation_checkpointing_enable(kwargs, every_n_layers, offload)


class VWMask2FormerModel(VWMask2FormerPreTrainedModel):
    """Backbone, VW pixel decoder and masked-attention decoder (without the class head): the mask features, the
    multi-scale features, the query states and mask logits of every decoder prediction."""

    def __init__(self, config: VWMask2FormerConfig):
        super().__init__(config)
        self.pixel_level_module = VWMask2FormerPixelLevelModule(config)
        self.transformer_module = Mask2FormerTransformerModule(in_features=config.feature_size, config=config)
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> VWMask2FormerModelOutput:
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
        # the returned attentions are the masked-attention decoder's, which has a single (eager) implementation
        output_hidden_states, output_attentions = resolve_output_flags(self.config, kwargs, attentions_need_eager=False)
        pixel_values = pad_for_vw(pixel_values, self.config.size_divisibility)
        feature_maps = self.pixel_level_module.encoder(pixel_values, return_dict=True).feature_maps  # strides 4-32
        pixel_level_module = self.pixel_level_module
        decoder_context = nullcontext()
        if pixel_level_module.decoder_outside_autocast:  # the original's @autocast(enabled=False), in float32
            decoder_context = torch.autocast(device_type=pixel_values.device.type, enabled=False)
            decoder_dtype = pixel_level_module.decoder.level_embed.dtype
            feature_maps = tuple(feature_map.to(decoder_dtype) for feature_map in feature_maps)
        with decoder_context:
            decoder_output = pixel_level_module.decoder(feature_maps)
        transformer_output = self.transformer_module(
            multi_scale_features=decoder_output.multi_scale_features,  # strides 32, 16, 8
            mask_features=decoder_output.mask_features,  # stride 4
            output_hidden_states=True,
            output_attentions=output_attentions,
        )
        return VWMask2FormerModelOutput(
            encoder_last_hidden_state=feature_maps[-1],
            pixel_decoder_last_hidden_state=decoder_output.mask_features,
            transformer_decoder_last_hidden_state=transformer_output.last_hidden_state,
            transformer_decoder_intermediate_states=transformer_output.intermediate_hidden_states,
            masks_queries_logits=transformer_output.masks_queries_logits,
            hidden_states=(
                select_hidden_states(feature_maps, kwargs.get("output_hidden_states")) if output_hidden_states else None
            ),
            pixel_decoder_hidden_states=decoder_output.multi_scale_features if output_hidden_states else None,
            transformer_decoder_hidden_states=transformer_output.hidden_states if output_hidden_states else None,
            attentions=transformer_output.attentions if output_attentions else None,
        )


class VWMask2FormerForSemanticSegmentation(
    VWSegmenterMixin, SemanticMaskClassificationMixin, VWMask2FormerPreTrainedModel
):
    """VW-Mask2Former for semantic segmentation (the released VW-Mask2Former and VW-Mask2Former with deformable
    attention models).

    ``logits`` are the semantic scores at stride 4 of the padded input (see ``semantic_scores``); the query-level
    outputs (``class_queries_logits``, ``masks_queries_logits``, ``auxiliary_logits``) stay available. With ``labels``
    (a semantic label map, 255 = ignore) the per-class target masks are built here and Mask2Former's set loss is
    returned (SeMask-Mask2Former's criterion, which is Mask2Former's, without its semantic term).
    """

    family_name = "VW-Mask2Former"

    def __init__(self, config: VWMask2FormerConfig):
        super().__init__(config)
        # again: from_pretrained sets an id2label / num_labels override after the config validated itself
        validate_labels(config)
        self.model = VWMask2FormerModel(config)
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
        self.criterion = SeMaskMask2FormerLoss(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_auxiliary_logits: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VWMask2FormerSemanticSegmenterOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalised images (zero-padded here to multiples of `config.size_divisibility`, at least 128).
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Semantic label maps of the input size, values in `[0, num_labels)` or `config.loss_ignore_index` (255).
        output_auxiliary_logits (`bool`, *optional*):
            Return the class and mask logits of the earlier decoder predictions.
        """
        return self.segment(VWMask2FormerSemanticSegmenterOutput, pixel_values, labels, output_auxiliary_logits, kwargs)


list_for_pipeline("semantic-segmentation", VWMask2FormerForSemanticSegmentation)


__all__ = [
    "VWMask2FormerForSemanticSegmentation",
    "VWMask2FormerModel",
    "VWMask2FormerModelOutput",
    "VWMask2FormerPreTrainedModel",
    "VWMask2FormerSemanticSegmenterOutput",
]
