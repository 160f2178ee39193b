"""SeMask MaskFormer: transformers' MaskFormer modules over a SeMask-Swin backbone, with SeMask's semantic head and loss.

Papers: Jain, Singh, Orlov, Huang, Li, Walton, Shi, "SeMask: Semantically Masked Transformers for Semantic
Segmentation", arXiv 2112.12782 (Sec. 3; the MaskFormer variant); Cheng, Schwing, Kirillov, "Per-Pixel
Classification is Not All You Need for Semantic Segmentation", NeurIPS 2021 (MaskFormer). Original code:
Picsart-AI-Research/SeMask-Segmentation (``SeMask-MaskFormer/``: ``SeMaskMaskFormer``, ``BranchMaskFormerHead``,
``BasePixelDecoder``, ``TransformerPredictor``, ``SeMaskSetCriterion``, ``HungarianMatcher``).

Structure:
- ``SeMaskSwinBackbone``: Swin stages each closed by a Semantic Layer; returns the four normalised feature maps
  (strides 4-32) and the per-stage semantic priors (class logits);
- transformers' ``MaskFormerPixelDecoder`` (the original ``BasePixelDecoder``: an FPN with nearest upsampling, then a
  3x3 conv giving the mask features at stride 4);
- transformers' ``MaskFormerTransformerModule``: a DETR decoder (no encoder, learnable query positions, sine
  positions, no padding mask) reading the stride-32 backbone map through a 1x1 projection. Every decoder layer's
  output, through the decoder's final LayerNorm, gives one prediction: the last layer's is the final one, the earlier
  ones are the auxiliary predictions (there is no prediction on the bare queries, unlike Mask2Former);
- a class head (``class_predictor``) and a 3-layer mask-embedding MLP (``mask_embedder``) on those states; mask logits
  are the dot products of the mask embeddings with the mask features;
- the parameter-free semantic head of SeMask on the priors, used by the training loss only.

``logits`` are the original's semantic-inference scores at mask resolution (stride 4 of the padded input): for every
class, the sum over the queries of softmax(class logits) without the no-object column times sigmoid(mask logits).
The SeMask Mask2Former image processor turns the query logits into label maps at the image size exactly as the
original (same detectron2 test pipeline).

Portable module: imports only torch, transformers and sibling modules.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.models.maskformer.modeling_maskformer import (
    MaskformerMLPPredictionHead,
    MaskFormerPixelDecoder,
    MaskFormerPreTrainedModel,
    MaskFormerTransformerModule,
    dice_loss,
    pair_wise_dice_loss,
    pair_wise_sigmoid_focal_loss,
    sigmoid_focal_loss,
)
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple
from transformers.utils.output_capturing import maybe_install_capturing_hooks

from .configuration_semask_maskformer import SeMaskMaskFormerConfig
from .configuration_utils_segmentation import validate_labels
from .modeling_semask_mask2former import (
    SemanticMaskClassificationMixin,
    SeMaskMask2FormerLoss,
    group_norms_for_single_values,
    min_cost_assignment,
    pad_to_size_divisibility,
)
from .modeling_semask_swin import SeMaskSwinBackbone
from .modeling_utils_segmentation import (
    SegmentationModelDefaults,
    check_pixel_values,
    eager_attention,
    list_for_pipeline,
    resolve_output_flags,
    select_hidden_states,
)


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SeMaskMaskFormerModelOutput(ModelOutput):
    """Output of :class:`SeMaskMaskFormerModel` (shapes for a padded input of ``H x W``, multiples of 32).

    Args:
        encoder_last_hidden_state: last backbone feature map, ``(B, 8C, H/32, W/32)``.
        semantic_priors: the backbone's semantic priors (pre-softmax class logits) of the four stages,
            ``(B, K, H/4 * 2**-i, W/4 * 2**-i)``.
        pixel_decoder_last_hidden_state: the mask features, ``(B, mask_feature_size, H/4, W/4)``.
        transformer_decoder_last_hidden_state: final query states (through the decoder LayerNorm), ``(B, Q, D)``.
        transformer_decoder_intermediate_states: the query states of every prediction, each decoder layer's output
            through the decoder LayerNorm, first layer first, ``(B, Q, D)`` each (the last one is
            ``transformer_decoder_last_hidden_state``).
        hidden_states: the four backbone feature maps (on request).
        pixel_decoder_hidden_states: the FPN maps, strides 16, 8, 4 (on request).
        transformer_decoder_hidden_states: the query states entering the first layer (zeros) and each layer's output
            before the LayerNorm, ``(B, Q, D)`` each (on request).
        attentions / cross_attentions: the decoder's self- and cross-attention probabilities (on request).
    """

    encoder_last_hidden_state: torch.FloatTensor | None = None
    semantic_priors: tuple[torch.FloatTensor, ...] | None = None
    pixel_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_intermediate_states: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SeMaskMaskFormerSemanticSegmenterOutput(ModelOutput):
    """Output of :class:`SeMaskMaskFormerForSemanticSegmentation` (shapes for a padded input of ``H x W``).

    Args:
        loss: with ``labels``: the MaskFormer losses of the final and (``use_auxiliary_loss``) every earlier
            prediction (cross-entropy 1, focal 20, dice 1) plus 0.4 x the semantic head's cross-entropy.
        logits: semantic scores ``(B, K, H/4, W/4)``: ``sum_q softmax(class_q)[k] * sigmoid(mask_q)`` without the
            no-object class (probability-like, not normalised over the classes).
        class_queries_logits: final class logits per query, ``(B, Q, K + 1)`` (last = no object).
        masks_queries_logits: final mask logits per query, ``(B, Q, H/4, W/4)``.
        semantic_logits: the parameter-free semantic head on the priors at stride 4, ``(B, K, H/4, W/4)`` (the
            original upsamples it 4x, ``align_corners=True``, for its loss: ``upsample_semantic_logits``).
        auxiliary_logits: the earlier predictions, ``[{"class_queries_logits", "masks_queries_logits"}, ...]``,
            the first decoder layer's first (on request: ``output_auxiliary_logits``).
        hidden_states / semantic_priors / pixel_decoder_hidden_states / transformer_decoder_hidden_states /
        attentions / cross_attentions: see :class:`SeMaskMaskFormerModelOutput` (on request).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    class_queries_logits: torch.FloatTensor | None = None
    masks_queries_logits: torch.FloatTensor | None = None
    semantic_logits: torch.FloatTensor | None = None
    auxiliary_logits: list[dict[str, torch.FloatTensor]] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    semantic_priors: tuple[torch.FloatTensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------------------


class SeMaskMaskFormerLoss(nn.Module):
    """The original ``SeMaskSetCriterion`` with the MaskFormer ``HungarianMatcher``: MaskFormer's set loss plus
    SeMask's semantic loss.

    For every prediction (the final one and, with ``use_auxiliary_loss``, each earlier decoder layer's) the queries
    are matched one-to-one to the target masks by the Hungarian method on ``mask_weight * focal + class_weight *
    -p(class) + dice_weight * dice``, the mask costs at the mask logits' resolution (targets downsampled with nearest
    neighbours). Then ``loss_ce`` (cross-entropy over the queries, no-object weight ``no_object_weight``),
    ``loss_mask`` (sigmoid focal loss, alpha 0.25, gamma 2) and ``loss_dice`` of the matched mask logits upsampled
    bilinearly to the targets' size (the padded input), both normalised by the number of target masks. ``loss_cate``
    is the cross-entropy (ignore index) of the upsampled semantic head against the semantic label map, for the final
    prediction only (the original computes a zero ``loss_cate_{i}`` for the others). Returned weighted, keys
    ``loss_ce, loss_mask, loss_dice, loss_cate`` and ``loss_{ce,mask,dice}_{i}`` for the earlier predictions
    (``i = 0`` is the first decoder layer). Deterministic: no point sampling.
    """

    def __init__(self, config: SeMaskMaskFormerConfig):
        super().__init__()
        self.num_labels = config.num_labels
        self.no_object_weight = config.no_object_weight
        self.ignore_index = config.loss_ignore_index
        self.weight_dict = {
            "loss_ce": config.cross_entropy_weight,
            "loss_mask": config.mask_weight,
            "loss_dice": config.dice_weight,
            "loss_cate": getattr(config, "semantic_loss_weight", 0.0),  # configs without a semantic head
        }
        empty_weight = torch.ones(config.num_labels + 1)
        empty_weight[-1] = config.no_object_weight
        # not persistent: the config's value, also where from_pretrained overrides it (a saved copy won before)
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    # the same computations as SeMask-Mask2Former's criterion (they read num_labels, empty_weight and ignore_index):
    # the weighted class cross-entropy, the semantic head's cross-entropy and the (all-reduced) target mask count
    loss_labels = SeMaskMask2FormerLoss.loss_labels
    loss_semantic = SeMaskMask2FormerLoss.loss_semantic
    num_target_masks = SeMaskMask2FormerLoss.num_target_masks

    @torch.no_grad()
    def match(
        self,
        class_queries_logits: torch.Tensor,
        masks_queries_logits: torch.Tensor,
        class_labels: list[torch.Tensor],
        mask_labels: list[torch.Tensor],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Hungarian matching per image -> ``[(query indices, target indices), ...]`` (the original
        ``HungarianMatcher.memory_efficient_forward``)."""
        indices = []
        for class_logits, mask_logits, classes, masks in zip(
            class_queries_logits, masks_queries_logits, class_labels, mask_labels
        ):
            if len(classes) == 0:
                empty = torch.zeros(0, dtype=torch.long)
                indices.append((empty, empty))
                continue
            cost_class = -class_logits.float().softmax(-1)[:, classes]  # (Q, N)
            # the targets (N, H, W) at the padded input size, downsampled to the mask logits' (h, w) -> (N, h * w)
            target = F.interpolate(masks[:, None].float(), size=mask_logits.shape[-2:], mode="nearest")
            target = target[:, 0].flatten(1)
            predicted = mask_logits.float().flatten(1)  # (Q, h, w) -> (Q, h * w)
            cost = (
                self.weight_dict["loss_mask"] * pair_wise_sigmoid_focal_loss(predicted, target)
                + self.weight_dict["loss_ce"] * cost_class
                + self.weight_dict["loss_dice"] * pair_wise_dice_loss(predicted, target)
            )
            cost = torch.nan_to_num(cost, nan=1e10, posinf=1e10, neginf=-1e10)
            query_index, target_index = min_cost_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(query_index, dtype=torch.long), torch.as_tensor(target_index)))
        return indices

    def loss_masks(
        self, masks_queries_logits: torch.Tensor, mask_labels: list[torch.Tensor], indices: list, num_masks: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sigmoid focal loss and dice loss between every matched query's mask logits, upsampled bilinearly
        (``align_corners=False``) to the target size, and its target mask."""
        query_masks = torch.cat(
            [logits[query_index] for logits, (query_index, _) in zip(masks_queries_logits, indices)]
        )  # (R, h, w)
        target_masks = torch.cat([masks[target_index] for masks, (_, target_index) in zip(mask_labels, indices)])
        if len(query_masks) == 0:  # no target in the batch
            zero = masks_queries_logits.sum() * 0.0
            return zero, zero
        # (R, h, w) -> (R, 1, H, W) -> (R, H * W)
        query_masks = F.interpolate(
            query_masks[:, None].float(), size=target_masks.shape[-2:], mode="bilinear", align_corners=False
        )
        query_masks = query_masks[:, 0].flatten(1)
        target_masks = target_masks.flatten(1).to(query_masks)
        return sigmoid_focal_loss(query_masks, target_masks, num_masks), dice_loss(query_masks, target_masks, num_masks)

    def forward(
        self,
        class_queries_logits: tuple[torch.Tensor, ...],
        masks_queries_logits: tuple[torch.Tensor, ...],
        semantic_logits: torch.Tensor,
        class_labels: list[torch.Tensor],
        mask_labels: list[torch.Tensor],
        semantic_labels: torch.Tensor,
        use_auxiliary_loss: bool = True,
    ) -> dict[str, torch.Tensor]:
        """``class_queries_logits`` / ``masks_queries_logits``: every prediction, the final one last (only the final
        one is read without ``use_auxiliary_loss``); targets at the padded input size: ``class_labels[i]``
        ``(N_i,)``, ``mask_labels[i]`` ``(N_i, H, W)``, ``semantic_labels`` ``(B, H, W)``. Returns the weighted
        losses."""
        num_masks = self.num_target_masks(class_labels, semantic_labels.device)
        predictions = list(zip(class_queries_logits, masks_queries_logits))
        if not use_auxiliary_loss:
            predictions = predictions[-1:]
        final_index = len(predictions) - 1
        losses = {}
        for index, (class_logits, mask_logits) in enumerate(predictions):
            indices = self.match(class_logits, mask_logits, class_labels, mask_labels)
            loss_mask, loss_dice = self.loss_masks(mask_logits, mask_labels, indices, num_masks)
            suffix = "" if index == final_index else f"_{index}"
            losses[f"loss_ce{suffix}"] = self.weight_dict["loss_ce"] * self.loss_labels(
                class_logits, class_labels, indices
            )
            losses[f"loss_mask{suffix}"] = self.weight_dict["loss_mask"] * loss_mask
            losses[f"loss_dice{suffix}"] = self.weight_dict["loss_dice"] * loss_dice
        if semantic_logits is not None:  # None: no semantic head (VW models), no loss_cate
            losses["loss_cate"] = self.weight_dict["loss_cate"] * self.loss_semantic(semantic_logits, semantic_labels)
        return losses


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def fpn_group_norms_for_single_values(module: nn.Module) -> None:
    """The GroupNorms of ``module`` (the FPN pixel decoder) as SeMask-Mask2Former's ``group_norms_for_single_values``
    makes them: they also normalise groups of a single value, which the FPN stem meets with 32 channels (one per
    group) on the 1x1 stride-32 map of one image of at most 32 x 32 px. transformers' ``MaskFormerFPNConvLayer``
    runs its modules from a plain list kept next to the registered ones, so that list is rebuilt as well."""
    group_norms_for_single_values(module)
    for submodule in module.modules():
        layers = getattr(submodule, "layers", None)
        if isinstance(layers, list):  # MaskFormerFPNConvLayer: modules registered as "0", "1", "2"
            submodule.layers = [submodule.get_submodule(str(index)) for index in range(len(layers))]


class SeMaskMaskFormerPixelLevelModule(nn.Module):
    """SeMask-Swin backbone (``encoder``) and MaskFormer's FPN pixel decoder (``decoder``); the same names as
    ``MaskFormerPixelLevelModule``."""

    def __init__(self, config: SeMaskMaskFormerConfig):
        super().__init__()
        self.encoder = SeMaskSwinBackbone(config.backbone_config)
        channels = self.encoder.channels  # strides 4, 8, 16, 32
        self.decoder = MaskFormerPixelDecoder(
            in_features=channels[-1],
            lateral_widths=channels[:-1],
            feature_size=config.fpn_feature_size,
            mask_feature_size=config.mask_feature_size,
        )
        fpn_group_norms_for_single_values(self.decoder)


class SeMaskMaskFormerPreTrainedModel(SegmentationModelDefaults, MaskFormerPreTrainedModel):
    config: SeMaskMaskFormerConfig
    base_model_prefix = "model"
    _no_split_modules = ["SeMaskSwinStage", "MaskFormerDetrDecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        """transformers' MaskFormer init for the head (the backbone and the DETR decoder are sub-models with their own
        init), and the no-object weighting of the loss."""
        if isinstance(module, SeMaskMaskFormerLoss):
            empty_weight = torch.ones(module.num_labels + 1)
            empty_weight[-1] = module.no_object_weight
            init.copy_(module.empty_weight, empty_weight)
        else:
            super()._init_weights(module)


class SeMaskMaskFormerModel(SeMaskMaskFormerPreTrainedModel):
    """Backbone, FPN pixel decoder and DETR decoder (without the class and mask heads): the mask features, the query
    states of every decoder prediction, and the backbone's semantic priors."""

    def __init__(self, config: SeMaskMaskFormerConfig):
        config.sync_backbone_labels()
        config.force_original_decoder()
        super().__init__(config)
        self.pixel_level_module = SeMaskMaskFormerPixelLevelModule(config)
        self.transformer_module = MaskFormerTransformerModule(
            in_features=self.pixel_level_module.encoder.channels[-1], config=config
        )
        self.post_init()
        # the DETR decoder records its layers' outputs through hooks that transformers installs on the first call
        # otherwise, a graph break under torch.compile (its backbones install them in post_init the same way)
        maybe_install_capturing_hooks(self.transformer_module.decoder)

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> SeMaskMaskFormerModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalised images; zero-padded here on the right and bottom to multiples of `config.size_divisibility`.
        """
        check_pixel_values(
            pixel_values,
            self.config.backbone_config.num_channels,
            num_channels_name="config.backbone_config.num_channels",
            model=self,
        )
        output_hidden_states, output_attentions = resolve_output_flags(self.config, kwargs)
        pixel_values = pad_to_size_divisibility(pixel_values, self.config.size_divisibility)
        backbone_output = self.pixel_level_module.encoder(pixel_values, return_dict=True)
        feature_maps = backbone_output.feature_maps  # strides 4, 8, 16, 32
        decoder_output = self.pixel_level_module.decoder(
            list(feature_maps), output_hidden_states=output_hidden_states, return_dict=True
        )
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
        output = SeMaskMaskFormerModelOutput(
            encoder_last_hidden_state=feature_maps[-1],
            semantic_priors=backbone_output.semantic_priors,
            pixel_decoder_last_hidden_state=decoder_output.last_hidden_state,
            transformer_decoder_last_hidden_state=transformer_output.last_hidden_state,
            transformer_decoder_intermediate_states=intermediate_states,
            hidden_states=select_hidden_states(feature_maps, kwargs.get("output_hidden_states"))
            if output_hidden_states
            else None,
            pixel_decoder_hidden_states=decoder_output.hidden_states if output_hidden_states else None,
            transformer_decoder_hidden_states=transformer_output.hidden_states if output_hidden_states else None,
            attentions=transformer_output.attentions if output_attentions else None,
            cross_attentions=transformer_output.cross_attentions if output_attentions else None,
        )
        return output


class DETRMaskPredictionMixin:
    """MaskFormer's predictions (SeMask's and VW's MaskFormer heads): a class head (``class_predictor``) and a mask
    embedding MLP (``mask_embedder``) on each DETR decoder prediction's query states; the mask logits are the mask
    embeddings dotted with the mask features. Used with :class:`SemanticMaskClassificationMixin`."""

    def predict(
        self, states: tuple[torch.Tensor, ...], mask_features: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Class and mask logits of each prediction's query states ``(B, Q, D)``: ``(B, Q, K + 1)`` and
        ``(B, Q, h, w)``, the mask embeddings ``(B, Q, C)`` dotted with the mask features ``(B, C, h, w)``."""
        class_logits = tuple(self.class_predictor(query_states) for query_states in states)
        mask_logits = tuple(
            torch.einsum("bqc,bchw->bqhw", self.mask_embedder(query_states), mask_features) for query_states in states
        )
        return class_logits, mask_logits

    def predictions(
        self, model_output: ModelOutput, labels: torch.Tensor | None, output_auxiliary_logits: bool
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The class and mask logits of the final prediction, and of the earlier decoder layers' ones (first layer
        first) when they are returned or their loss is computed."""
        states = model_output.transformer_decoder_intermediate_states
        needs_earlier = output_auxiliary_logits or (labels is not None and self.config.use_auxiliary_loss)
        if not needs_earlier:  # the final prediction only
            states = states[-1:]
        return self.predict(states, model_output.pixel_decoder_last_hidden_state)


class SeMaskMaskFormerForSemanticSegmentation(
    DETRMaskPredictionMixin, SemanticMaskClassificationMixin, SeMaskMaskFormerPreTrainedModel
):
    """SeMask MaskFormer for semantic segmentation (the released SeMask-L MaskFormer).

    ``logits`` are the semantic scores at stride 4 of the padded input (see ``semantic_scores``); the query-level
    outputs (``class_queries_logits``, ``masks_queries_logits``, ``auxiliary_logits``) stay available. With ``labels``
    (a semantic label map, 255 = ignore) the per-class target masks are built here and the full training loss of the
    original is returned (:class:`SeMaskMaskFormerLoss`).
    """

    family_name = "SeMask MaskFormer"
    attentions_need_eager = True  # the DETR decoder's attentions

    def __init__(self, config: SeMaskMaskFormerConfig):
        super().__init__(config)
        # again: from_pretrained sets an id2label / num_labels override after the config validated itself
        validate_labels(config)
        self.model = SeMaskMaskFormerModel(config)
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
        output_semantic_priors: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SeMaskMaskFormerSemanticSegmenterOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalised images (zero-padded here to multiples of `config.size_divisibility`).
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Semantic label maps of the input size, values in `[0, num_labels)` or `config.loss_ignore_index` (255).
        output_auxiliary_logits (`bool`, *optional*):
            Return the class and mask logits of the earlier decoder layers' predictions.
        output_semantic_priors (`bool`, *optional*):
            Return the backbone's semantic priors.
        """
        return self.segment(
            SeMaskMaskFormerSemanticSegmenterOutput,
            pixel_values,
            labels,
            output_auxiliary_logits,
            kwargs,
            output_semantic_priors,
        )


list_for_pipeline("semantic-segmentation", SeMaskMaskFormerForSemanticSegmentation)


__all__ = [
    "DETRMaskPredictionMixin",
    "SeMaskMaskFormerPreTrainedModel",
    "SeMaskMaskFormerModel",
    "SeMaskMaskFormerForSemanticSegmentation",
    "SeMaskMaskFormerModelOutput",
    "SeMaskMaskFormerSemanticSegmenterOutput",
    "SeMaskMaskFormerLoss",
]
