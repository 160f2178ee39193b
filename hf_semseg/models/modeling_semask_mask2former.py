"""SeMask Mask2Former: transformers' Mask2Former over a SeMask-Swin backbone, with SeMask's semantic head and loss.

Papers: Jain, Singh, Orlov, Huang, Li, Walton, Shi, "SeMask: Semantically Masked Transformers for Semantic
Segmentation", arXiv 2112.12782 (Sec. 3; the Mask2Former variant of Table 1); Cheng, Misra, Schwing, Kirillov,
Girdhar, "Masked-attention Mask Transformer for Universal Image Segmentation", CVPR 2022. Original code:
Picsart-AI-Research/SeMask-Segmentation (``SeMask-Mask2Former/``: ``SeMaskMaskFormer``, ``BranchMaskFormerHead``,
``SemanticHead``, ``SeMaskSetCriterion``).

Structure:
- ``SeMaskSwinBackbone``: Swin stages each closed by a Semantic Layer; returns the four normalised feature maps
  (strides 4-32) and the per-stage semantic priors (class logits);
- transformers' ``Mask2FormerPixelDecoder`` (multi-scale deformable-attention encoder on strides 8-32 plus one FPN
  level at stride 4; its forward as ``DeformableEncoderPixelDecoder``'s, traceable at any size) and
  ``Mask2FormerTransformerModule`` (masked-attention decoder, learnable queries) - the same
  modules and parameter names as ``Mask2FormerForUniversalSegmentation``;
- a class head on every decoder layer's queries;
- the parameter-free semantic head of SeMask on the priors, used by the training loss only.

``logits`` are the original's semantic-inference scores at mask resolution: for every class, the sum over the queries
of softmax(class logits) without the no-object column times sigmoid(mask logits). The image processor of this
family turns them (or, exactly as the original, the query logits) into label maps at the image size.

Portable module: imports only torch, transformers and sibling modules (``modeling_semask_swin`` is the SeMask-Swin
modeling module; see that file in this folder).
"""

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
    dice_loss,
    pair_wise_dice_loss,
    pair_wise_sigmoid_cross_entropy_loss,
    sample_point,
    sigmoid_cross_entropy_loss,
)
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple, logging

from .configuration_semask_mask2former import SeMaskMask2FormerConfig
from .configuration_utils_segmentation import validate_labels
from .modeling_deformable_attention import DeformableEncoderPixelDecoder
from .modeling_fapn import FeatureAlign, SeMaskFaPNPixelDecoder, SeMaskMSFaPNPixelDecoder, init_feature_align
from .modeling_linear import replace_modules
from .modeling_semask_swin import SeMaskSwinBackbone
from .modeling_utils_segmentation import (
    SegmentationModelDefaults,
    check_pixel_values,
    check_segmentation_labels,
    list_for_pipeline,
    resolve_output_flags,
    select_hidden_states,
    upsampled_cross_entropy,
)


logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SeMaskMask2FormerModelOutput(ModelOutput):
    """Output of :class:`SeMaskMask2FormerModel` (shapes for a padded input of ``H x W``, multiples of 32).

    Args:
        encoder_last_hidden_state: last backbone feature map, ``(B, 8C, H/32, W/32)``.
        semantic_priors: the backbone's semantic priors (pre-softmax class logits) of the four stages,
            ``(B, K, H/4 * 2**-i, W/4 * 2**-i)``.
        pixel_decoder_last_hidden_state: the mask features, ``(B, mask_feature_size, H/4, W/4)``.
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
    semantic_priors: tuple[torch.FloatTensor, ...] | None = None
    pixel_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_intermediate_states: tuple[torch.FloatTensor, ...] | None = None
    masks_queries_logits: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SeMaskMask2FormerSemanticSegmenterOutput(ModelOutput):
    """Output of :class:`SeMaskMask2FormerForSemanticSegmentation` (shapes for a padded input of ``H x W``).

    Args:
        loss: with ``labels``: the Mask2Former losses of the final and (``use_auxiliary_loss``) every earlier
            prediction (class 2.0, mask 5.0, dice 5.0) plus 0.4 x the semantic head's cross-entropy.
        logits: semantic scores ``(B, K, H/4, W/4)``: ``sum_q softmax(class_q)[k] * sigmoid(mask_q)`` without the
            no-object class (probability-like, not normalised over the classes).
        class_queries_logits: final class logits per query, ``(B, Q, K + 1)`` (last = no object).
        masks_queries_logits: final mask logits per query, ``(B, Q, H/4, W/4)``.
        semantic_logits: the parameter-free semantic head on the priors at stride 4, ``(B, K, H/4, W/4)`` (the
            original upsamples it 4x, ``align_corners=True``, for its loss: :func:`upsample_semantic_logits`).
        auxiliary_logits: the earlier predictions, ``[{"class_queries_logits", "masks_queries_logits"}, ...]``,
            the learnable queries' first (on request: ``output_auxiliary_logits``).
        hidden_states / semantic_priors / pixel_decoder_hidden_states / transformer_decoder_hidden_states /
        attentions: see :class:`SeMaskMask2FormerModelOutput` (on request).
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


# ----------------------------------------------------------------------------------------------------------------
# Functional pieces
# ----------------------------------------------------------------------------------------------------------------


def pad_to_size_divisibility(pixel_values: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pads ``(B, C, H, W)`` on the right and bottom to multiples of ``divisor`` (detectron2's
    ``ImageList.from_tensors``); the identity for ``divisor`` 0 or sizes that already are multiples."""
    if divisor <= 0:
        return pixel_values
    height, width = pixel_values.shape[-2:]
    # positive operands only (ONNX's integer division truncates); traced (torch.compile / torch.export) it always
    # pads, maybe by 0: a branch on the size would fix its outcome for the traced size in the graph
    pad_bottom = (height + divisor - 1) // divisor * divisor - height
    pad_right = (width + divisor - 1) // divisor * divisor - width
    if torch.compiler.is_compiling() or pad_bottom or pad_right:
        pixel_values = F.pad(pixel_values, (0, pad_right, 0, pad_bottom))
    return pixel_values


def semantic_head(priors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """SeMask's parameter-free semantic head of the Mask2Former variant (original ``SemanticHead``): the prior of
    level ``i`` is upsampled 2x ``i`` times (bilinear, ``align_corners=True``), resized to the stride-4 prior's size
    (same mode) and the four are summed -> ``(B, K, H/4, W/4)``."""
    semantic_logits = priors[0]
    for level, prior in enumerate(priors[1:], start=1):
        for _ in range(level):
            prior = F.interpolate(prior, scale_factor=2.0, mode="bilinear", align_corners=True)
        if prior.shape[-2:] != semantic_logits.shape[-2:]:
            prior = F.interpolate(prior, size=semantic_logits.shape[-2:], mode="bilinear", align_corners=True)
        semantic_logits = semantic_logits + prior
    return semantic_logits


def upsample_semantic_logits(semantic_logits: torch.Tensor) -> torch.Tensor:
    """The original semantic head's last step: 4x bilinear upsampling (``align_corners=True``) to the padded input
    size, ``(B, K, H/4, W/4)`` -> ``(B, K, H, W)``."""
    height, width = semantic_logits.shape[-2:]
    return F.interpolate(semantic_logits, size=(4 * height, 4 * width), mode="bilinear", align_corners=True)


def semantic_scores(class_queries_logits: torch.Tensor, masks_queries_logits: torch.Tensor) -> torch.Tensor:
    """Mask2Former's semantic inference: ``(B, Q, K+1)`` class logits and ``(B, Q, h, w)`` mask logits ->
    ``(B, K, h, w)`` = ``sum_q softmax(class_q)[:K] * sigmoid(mask_q)``."""
    class_probabilities = class_queries_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("bqk,bqhw->bkhw", class_probabilities, masks_queries_logits.sigmoid())


def min_cost_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment of the rows and columns of a finite ``(n, m)`` cost matrix (as many pairs
    as the smaller side), like ``scipy.optimize.linear_sum_assignment``: returns ``(rows, columns)`` sorted by row.

    Shortest augmenting paths with dual potentials (the Hungarian method in Jonker-Volgenant form): each row is
    added by a Dijkstra-like search over the columns, vectorised over the columns. Used when scipy is absent."""
    cost = np.asarray(cost, dtype=np.float64)
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:
        cost = cost.T
    num_rows, num_cols = cost.shape
    # index 0 is a virtual column; row_of[j] = 1-based row matched to column j (0 = free)
    row_potential = np.zeros(num_rows + 1)
    col_potential = np.zeros(num_cols + 1)
    row_of = np.zeros(num_cols + 1, dtype=np.int64)
    previous_col = np.zeros(num_cols + 1, dtype=np.int64)
    for row in range(1, num_rows + 1):
        row_of[0] = row
        current_col = 0
        min_slack = np.full(num_cols + 1, np.inf)
        visited = np.zeros(num_cols + 1, dtype=bool)
        while True:
            visited[current_col] = True
            current_row = row_of[current_col]
            slack = cost[current_row - 1] - row_potential[current_row] - col_potential[1:]
            better = ~visited[1:] & (slack < min_slack[1:])
            min_slack[1:][better] = slack[better]
            previous_col[1:][better] = current_col
            candidates = np.where(visited[1:], np.inf, min_slack[1:])
            next_col = int(np.argmin(candidates)) + 1
            delta = candidates[next_col - 1]
            row_potential[row_of[visited]] += delta
            col_potential[visited] -= delta
            min_slack[~visited] -= delta
            current_col = next_col
            if row_of[current_col] == 0:
                break
        while current_col:  # flip the augmenting path
            previous = previous_col[current_col]
            row_of[current_col] = row_of[previous]
            current_col = previous
    cols = np.nonzero(row_of[1:])[0]
    rows = row_of[1:][cols] - 1
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows)
    return rows[order], cols[order]


def semantic_map_to_mask_targets(
    labels: torch.Tensor, ignore_index: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per image, the classes present in a ``(B, H, W)`` label map (ignore excluded, ascending) and their binary masks
    ``(N_i, H, W)`` - what the original's ``MaskFormerSemanticDatasetMapper`` builds from a semantic map."""
    class_labels, mask_labels = [], []
    for label_map in labels:
        classes = label_map.unique()
        classes = classes[classes != ignore_index]
        class_labels.append(classes)
        mask_labels.append((label_map[None] == classes[:, None, None]).float())
    return class_labels, mask_labels


# ----------------------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------------------


#: the seed of the points the loss samples in eval mode (a fixed draw: the same loss for the same inputs)
EVAL_POINT_SEED = 0


class SeMaskMask2FormerLoss(nn.Module):
    """The original ``SeMaskSetCriterion``: Mask2Former's set loss plus SeMask's semantic loss.

    For every prediction (the final one and, with ``use_auxiliary_loss``, each earlier one) the queries are matched
    one-to-one to the target masks (Hungarian matching on ``class_weight * -p(class) + mask_weight * BCE + dice_weight
    * dice``, the mask costs on ``train_num_points`` uniformly random points), then
    ``loss_ce`` (cross-entropy over the queries, no-object weight ``no_object_weight``), ``loss_mask`` (BCE) and
    ``loss_dice`` on points sampled by uncertainty (oversampling ``oversample_ratio``, ``importance_sample_ratio``
    of them the most uncertain), each normalised by the number of target masks. ``loss_cate`` is the cross-entropy
    (ignore index) of the upsampled semantic head against the semantic label map, for the final prediction only.
    Returned weighted, keys ``loss_ce, loss_mask, loss_dice, loss_cate`` and ``loss_ce_{i}, ...`` for the earlier
    predictions (``i = 0`` is the learnable queries). In eval mode the random points are drawn from a generator seeded
    with :data:`EVAL_POINT_SEED` on every call, so an evaluation loss is the same for the same inputs (training draws
    from the global RNG, as the original).
    """

    def __init__(self, config: SeMaskMask2FormerConfig):
        super().__init__()
        self.num_labels = config.num_labels
        self.no_object_weight = config.no_object_weight
        self.ignore_index = config.loss_ignore_index
        self.num_points = config.train_num_points
        self.oversample_ratio = config.oversample_ratio
        self.importance_sample_ratio = config.importance_sample_ratio
        self.weight_dict = {
            "loss_ce": config.class_weight,
            "loss_mask": config.mask_weight,
            "loss_dice": config.dice_weight,
            "loss_cate": getattr(config, "semantic_loss_weight", 0.0),  # configs without a semantic head
        }
        empty_weight = torch.ones(config.num_labels + 1)
        empty_weight[-1] = config.no_object_weight
        # not persistent: the config's value, also where from_pretrained overrides it (a saved copy won before)
        self.register_buffer("empty_weight", empty_weight, persistent=False)
        self._points_generator = None  # set for the duration of an eval-mode forward

    @contextmanager
    def seeded_points_in_eval(self, device: torch.device) -> Iterator[None]:
        """In eval mode, the random points drawn inside come from a generator seeded with :data:`EVAL_POINT_SEED`."""
        if not self.training:
            self._points_generator = torch.Generator(device).manual_seed(EVAL_POINT_SEED)
        try:
            yield
        finally:
            self._points_generator = None

    def random_points(self, *shape: int, device: torch.device) -> torch.Tensor:
        """Uniform points in ``[0, 1]`` of ``shape``: from the eval generator when one is set, else the global RNG."""
        generator = self._points_generator
        if generator is not None and generator.device != torch.device(device):
            generator = None
        return torch.rand(*shape, device=device, generator=generator)

    @torch.no_grad()
    def match(
        self,
        class_queries_logits: torch.Tensor,
        masks_queries_logits: torch.Tensor,
        class_labels: list[torch.Tensor],
        mask_labels: list[torch.Tensor],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Hungarian matching per image -> ``[(query indices, target indices), ...]`` (original
        ``HungarianMatcher``)."""
        indices = []
        for class_logits, mask_logits, classes, masks in zip(
            class_queries_logits, masks_queries_logits, class_labels, mask_labels
        ):
            if len(classes) == 0:
                empty = torch.zeros(0, dtype=torch.long)
                indices.append((empty, empty))
                continue
            cost_class = -class_logits.float().softmax(-1)[:, classes]  # (Q, N)
            points = self.random_points(1, self.num_points, 2, device=mask_logits.device)
            # (Q, 1, h, w) / (N, 1, H, W) sampled at the same points -> (Q, P) / (N, P)
            predicted = sample_point(
                mask_logits[:, None].float(), points.expand(len(mask_logits), -1, -1), align_corners=False
            )[:, 0]
            target = sample_point(masks[:, None].to(predicted), points.expand(len(masks), -1, -1), align_corners=False)[
                :, 0
            ]
            cost = (
                self.weight_dict["loss_mask"] * pair_wise_sigmoid_cross_entropy_loss(predicted, target)
                + self.weight_dict["loss_ce"] * cost_class
                + self.weight_dict["loss_dice"] * pair_wise_dice_loss(predicted, target)
            )
            cost = torch.nan_to_num(cost, nan=1e10, posinf=1e10, neginf=-1e10)
            query_index, target_index = min_cost_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(query_index, dtype=torch.long), torch.as_tensor(target_index)))
        return indices

    def loss_labels(
        self, class_queries_logits: torch.Tensor, class_labels: list[torch.Tensor], indices: list
    ) -> torch.Tensor:
        """Weighted cross-entropy of every query's class logits; unmatched queries target the no-object class."""
        batch_size, num_queries = class_queries_logits.shape[:2]
        target_classes = torch.full(
            (batch_size, num_queries), self.num_labels, dtype=torch.long, device=class_queries_logits.device
        )
        for image, (query_index, target_index) in enumerate(indices):
            target_classes[image, query_index.to(target_classes.device)] = class_labels[image][target_index]
        # in float32 whatever the model dtype (a bf16 model casts this buffer too), as the original criterion does
        return F.cross_entropy(class_queries_logits.float().transpose(1, 2), target_classes, self.empty_weight.float())

    def sample_points_by_uncertainty(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """``(R, 1, h, w)`` mask logits -> ``(R, train_num_points, 2)`` coordinates in [0, 1]: of
        ``oversample_ratio * num_points`` random points the ``importance_sample_ratio * num_points`` with the logit
        closest to 0, then uniformly random points (PointRend's ``get_uncertain_point_coords_with_randomness``)."""
        num_masks = mask_logits.shape[0]
        num_sampled = int(self.num_points * self.oversample_ratio)
        num_uncertain = int(self.importance_sample_ratio * self.num_points)
        candidates = self.random_points(num_masks, num_sampled, 2, device=mask_logits.device)
        uncertainty = -sample_point(mask_logits, candidates, align_corners=False).abs()[:, 0]  # (R, num_sampled)
        chosen = uncertainty.topk(num_uncertain, dim=1).indices
        points = torch.gather(candidates, 1, chosen[..., None].expand(-1, -1, 2))
        num_random = self.num_points - num_uncertain
        if num_random > 0:
            random_points = self.random_points(num_masks, num_random, 2, device=mask_logits.device)
            points = torch.cat([points, random_points], dim=1)
        return points

    def loss_masks(
        self, masks_queries_logits: torch.Tensor, mask_labels: list[torch.Tensor], indices: list, num_masks: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Point-sampled BCE and dice between every matched query's mask logits and its target mask."""
        query_masks = torch.cat(
            [logits[query_index] for logits, (query_index, _) in zip(masks_queries_logits, indices)]
        )  # (R, h, w)
        target_masks = torch.cat([masks[target_index] for masks, (_, target_index) in zip(mask_labels, indices)])
        if len(query_masks) == 0:  # no target in the batch
            zero = masks_queries_logits.sum() * 0.0
            return zero, zero
        query_masks, target_masks = query_masks[:, None].float(), target_masks[:, None].to(query_masks.dtype)
        with torch.no_grad():
            points = self.sample_points_by_uncertainty(query_masks)
            point_labels = sample_point(target_masks.float(), points, align_corners=False)[:, 0]
        point_logits = sample_point(query_masks, points, align_corners=False)[:, 0]
        return (
            sigmoid_cross_entropy_loss(point_logits, point_labels, num_masks),
            dice_loss(point_logits, point_labels, num_masks),
        )

    def loss_semantic(self, semantic_logits: torch.Tensor, semantic_labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (mean over the non-ignored pixels) of the semantic head upsampled to the label size."""
        # one image at a time (upsampled_cross_entropy): never the whole batch's logits at label size; 0 when no
        # pixel is labelled
        return upsampled_cross_entropy(
            semantic_logits.float(),
            semantic_labels,
            self.ignore_index,
            resize=lambda logits, size: upsample_semantic_logits(logits),
        )

    def num_target_masks(self, class_labels: list[torch.Tensor], device: torch.device) -> float | torch.Tensor:
        """Number of target masks per process (averaged over a distributed run, as a 0-dim tensor), at least 1."""
        count = float(sum(len(classes) for classes in class_labels))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            count = torch.tensor(count, device=device)
            torch.distributed.all_reduce(count)
            # kept a tensor (no .item()): no host sync, and no graph break under torch.compile
            return (count / torch.distributed.get_world_size()).clamp(min=1.0)
        return max(count, 1.0)

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
        """``class_queries_logits`` / ``masks_queries_logits``: every prediction, the final one last; targets at the
        padded input size: ``class_labels[i]`` ``(N_i,)``, ``mask_labels[i]`` ``(N_i, H, W)``, ``semantic_labels``
        ``(B, H, W)``. Returns the weighted losses."""
        with self.seeded_points_in_eval(semantic_labels.device):
            num_masks = self.num_target_masks(class_labels, semantic_labels.device)
            predictions = list(zip(class_queries_logits, masks_queries_logits))
            final_index = len(predictions) - 1
            if not use_auxiliary_loss:
                predictions = predictions[-1:]
                final_index = 0
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
                losses["loss_cate"] = self.weight_dict["loss_cate"] * self.loss_semantic(
                    semantic_logits, semantic_labels
                )
            return losses


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


class SeMaskMask2FormerGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that also normalises groups of a single value.

    torch's ``group_norm`` refuses an input whose batch size x channels per group x pixels is 1 ("Expected more than
    1 value per channel when training", in eval mode too: group statistics are per sample, and the guard is the one
    of BatchNorm). The pixel decoder meets that with one channel per group (``feature_size`` 32, 32 groups) on the
    1x1 stride-32 map of one image of at most 32 x 32 px (padded). A group of one value has that value as its mean
    and variance 0, so the result is defined: the bias, as torch computes it for each image of a larger batch. That
    case is computed here with the same formula; every other input goes to ``nn.GroupNorm``. Same parameters and
    names, so checkpoints load unchanged."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, channels = hidden_states.shape[:2]
        if batch_size * (channels // self.num_groups) * hidden_states[0, 0].numel() != 1:
            return super().forward(hidden_states)
        grouped = hidden_states.reshape(batch_size, self.num_groups, -1)
        mean = grouped.mean(dim=-1, keepdim=True)
        variance = grouped.var(dim=-1, unbiased=False, keepdim=True)
        normalised = ((grouped - mean) * torch.rsqrt(variance + self.eps)).reshape(hidden_states.shape)
        if not self.affine:
            return normalised
        shape = (1, channels) + (1,) * (hidden_states.ndim - 2)
        return normalised * self.weight.view(shape) + self.bias.view(shape)


def group_norms_for_single_values(module: nn.Module) -> None:
    """Replaces every ``nn.GroupNorm`` inside ``module`` with a :class:`SeMaskMask2FormerGroupNorm` of the same
    settings (before the weights are initialised or loaded)."""
    replace_modules(
        module,
        nn.GroupNorm,
        lambda child: SeMaskMask2FormerGroupNorm(
            child.num_groups, child.num_channels, eps=child.eps, affine=child.affine
        ),
    )


PIXEL_DECODERS = {
    "msdeformattn": DeformableEncoderPixelDecoder,
    "fapn": SeMaskFaPNPixelDecoder,
    "msfapn": SeMaskMSFaPNPixelDecoder,
}


class SeMaskMask2FormerPixelLevelModule(nn.Module):
    """SeMask-Swin backbone (``encoder``) and the pixel decoder of ``config.pixel_decoder_type`` (``decoder``):
    Mask2Former's multi-scale deformable-attention decoder, or SeMask's FaPN / MSFaPN (``modeling_fapn.py``); the
    same names as ``Mask2FormerPixelLevelModule``. The decoder's GroupNorms are :class:`SeMaskMask2FormerGroupNorm`,
    so that any input size works."""

    def __init__(self, config: SeMaskMask2FormerConfig):
        super().__init__()
        self.encoder = SeMaskSwinBackbone(config.backbone_config)
        self.decoder = PIXEL_DECODERS[config.pixel_decoder_type](config, feature_channels=self.encoder.channels)
        group_norms_for_single_values(self.decoder)
        self.decoder_outside_autocast = config.pixel_decoder_type != "fapn"


class SeMaskMask2FormerPreTrainedModel(SegmentationModelDefaults, Mask2FormerPreTrainedModel):
    config: SeMaskMask2FormerConfig
    base_model_prefix = "model"
    _no_split_modules = ["SeMaskSwinStage", "Mask2FormerMaskedAttentionDecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        """transformers' Mask2Former init for the head (the backbone is a sub-model with its own SeMask-Swin init),
        and the no-object weighting of the loss."""
        if isinstance(module, SeMaskMask2FormerLoss):
            empty_weight = torch.ones(module.num_labels + 1)
            empty_weight[-1] = module.no_object_weight
            init.copy_(module.empty_weight, empty_weight)
        elif isinstance(module, FeatureAlign):
            init_feature_align(module)
        elif isinstance(module, SeMaskFaPNPixelDecoder):
            # detectron2's c2_xavier_fill of every FaPN convolution (Kaiming-uniform, a = 1, zero bias)
            for child in module.children():
                convolutions = (
                    [child] if isinstance(child, nn.Conv2d) else [child[0]] if isinstance(child, nn.Sequential) else []
                )
                for convolution in convolutions:
                    init.kaiming_uniform_(convolution.weight, a=1)
                    if convolution.bias is not None:
                        init.zeros_(convolution.bias)
        else:
            super()._init_weights(module)

    def _activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ):
        """Activation checkpointing (``activation_checkpointing_enable`` and the deprecated
        ``gradient_checkpointing_enable`` both end here), always non-reentrant: transformers' Mask2Former decoder
        layers take tensors as keyword arguments, which reentrant checkpointing does not detach, so its backward would
        run through the decoder's graph twice. ``use_reentrant=True`` is replaced (with a warning); the gradients are
        the same."""
        kwargs = dict(activation_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant"):
            logger.warning(
                "SeMask-Mask2Former uses non-reentrant activation checkpointing (use_reentrant=False): the Mask2Former "
                "decoder layers cannot be checkpointed reentrantly; the gradients are the same"
            )
        kwargs["use_reentrant"] = False
        super()._activation_checkpointing_enable(kwargs, every_n_layers, offload)


class SeMaskMask2FormerModel(SeMaskMask2FormerPreTrainedModel):
    """Backbone, pixel decoder and masked-attention decoder (without the class head): the query states and mask
    logits of every decoder prediction, and the backbone's semantic priors."""

    def __init__(self, config: SeMaskMask2FormerConfig):
        config.sync_backbone_labels()
        super().__init__(config)
        self.pixel_level_module = SeMaskMask2FormerPixelLevelModule(config)
        self.transformer_module = Mask2FormerTransformerModule(in_features=config.feature_size, config=config)
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> SeMaskMask2FormerModelOutput:
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
        # the returned attentions are the masked-attention decoder's, which has a single (eager) implementation
        output_hidden_states, output_attentions = resolve_output_flags(self.config, kwargs, attentions_need_eager=False)
        pixel_values = pad_to_size_divisibility(pixel_values, self.config.size_divisibility)
        backbone_output = self.pixel_level_module.encoder(pixel_values, return_dict=True)
        feature_maps = backbone_output.feature_maps  # strides 4, 8, 16, 32
        # as the originals, the deformable-attention pixel decoders run outside autocast, in their weights' dtype
        # (FaPN runs under it; its feature alignment computes in float32 either way)
        pixel_level_module = self.pixel_level_module
        decoder_context = nullcontext()
        if pixel_level_module.decoder_outside_autocast:
            decoder_context = torch.autocast(device_type=pixel_values.device.type, enabled=False)
            decoder_dtype = pixel_level_module.decoder.mask_projection.weight.dtype
            feature_maps = tuple(feature_map.to(decoder_dtype) for feature_map in feature_maps)
        with decoder_context:
            decoder_output = pixel_level_module.decoder(feature_maps, output_hidden_states=False, return_dict=True)
        transformer_output = self.transformer_module(
            multi_scale_features=decoder_output.multi_scale_features,  # strides 32, 16, 8
            mask_features=decoder_output.mask_features,  # stride 4
            output_hidden_states=True,
            output_attentions=output_attentions,
        )
        output = SeMaskMask2FormerModelOutput(
            encoder_last_hidden_state=feature_maps[-1],
            semantic_priors=backbone_output.semantic_priors,
            pixel_decoder_last_hidden_state=decoder_output.mask_features,
            transformer_decoder_last_hidden_state=transformer_output.last_hidden_state,
            transformer_decoder_intermediate_states=transformer_output.intermediate_hidden_states,
            masks_queries_logits=transformer_output.masks_queries_logits,
            hidden_states=select_hidden_states(feature_maps, kwargs.get("output_hidden_states"))
            if output_hidden_states
            else None,
            pixel_decoder_hidden_states=decoder_output.multi_scale_features if output_hidden_states else None,
            transformer_decoder_hidden_states=transformer_output.hidden_states if output_hidden_states else None,
            attentions=transformer_output.attentions if output_attentions else None,
        )
        return output


#: the fields of a mask-classification model's output that its segmenter passes on unchanged (when it has them)
MODEL_OUTPUT_PASSED_ON = (
    "hidden_states",
    "pixel_decoder_hidden_states",
    "transformer_decoder_hidden_states",
    "attentions",
    "cross_attentions",
)


class SemanticMaskClassificationMixin:
    """What the mask-classification segmenters share (SeMask's and VWFormer's MaskFormer and Mask2Former heads): the
    checks and label padding before the forward pass, the set loss (plus the semantic loss of a SeMask backbone), and
    the output built from the class and mask logits of every prediction. The model has ``model`` (returning the
    backbone maps, the decoder's query states and, for SeMask, the semantic priors), ``config``
    (``size_divisibility``, ``num_labels``, ``loss_ignore_index``, ``use_auxiliary_loss``,
    ``output_auxiliary_logits``) and ``criterion`` (:class:`SeMaskMask2FormerLoss` or the MaskFormer loss)."""

    #: the model's name in messages
    family_name = "SeMask-Mask2Former"
    #: the loss's no-object weighting is built from the config (``no_object_weight``), not loaded: folders saved
    #: before it was a non-persistent buffer hold it
    _keys_to_ignore_on_load_unexpected = [r"criterion\.empty_weight"]
    #: whether the backbone is SeMask's: semantic priors, a semantic head and its loss term
    has_semantic_head = True
    #: the returned attentions come from layers with a single (eager) implementation (see ``resolve_output_flags``)
    attentions_need_eager = False

    def padded_input_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """The size the model pads an input of ``input_size`` to: each side to the next multiple of
        ``config.size_divisibility``, as detectron2's ``ImageList``."""
        divisor = max(self.config.size_divisibility, 1)
        return tuple(side + -side % divisor for side in input_size)

    def run_model(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None,
        output_auxiliary_logits: bool | None,
        kwargs: dict,
    ) -> tuple[ModelOutput, torch.Tensor | None, bool]:
        """Checks the inputs (before any module runs), pads the labels like the input and runs ``self.model``:
        ``(model output, padded labels or None, output_auxiliary_logits resolved from the config)``."""
        check_pixel_values(
            pixel_values,
            self.config.backbone_config.num_channels,
            labels,
            num_channels_name="config.backbone_config.num_channels",
            model=self,
        )
        output_hidden_states, output_attentions = resolve_output_flags(
            self.config, kwargs, attentions_need_eager=self.attentions_need_eager
        )
        if output_auxiliary_logits is None:
            output_auxiliary_logits = bool(self.config.output_auxiliary_logits)
        if labels is not None:  # checked before the forward pass
            labels = self.prepare_labels(labels, pixel_values.shape[-2:])
        model_output = self.model(
            pixel_values,
            # a list of indices (transformers' layer selection) goes on to the model, which selects
            output_hidden_states=kwargs.get("output_hidden_states") or output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        return model_output, labels, output_auxiliary_logits

    def predictions(
        self, model_output: ModelOutput, labels: torch.Tensor | None, output_auxiliary_logits: bool
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The class and mask logits of every prediction of the masked-attention decoder (Mask2Former), the final one
        last: the class head on each prediction's query states ``(Q, B, D) -> (B, Q, K + 1)``, the decoder's mask
        logits ``(B, Q, h, w)``."""
        class_queries_logits = tuple(
            self.class_predictor(states.transpose(0, 1))
            for states in model_output.transformer_decoder_intermediate_states
        )
        return class_queries_logits, model_output.masks_queries_logits

    def segment(
        self,
        output_class: type[ModelOutput],
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None,
        output_auxiliary_logits: bool | None,
        kwargs: dict,
        output_semantic_priors: bool | None = None,
    ) -> ModelOutput:
        """The segmenter's forward pass: :meth:`run_model`, :meth:`predictions`, then :meth:`segmentation_output`."""
        model_output, labels, output_auxiliary_logits = self.run_model(
            pixel_values, labels, output_auxiliary_logits, kwargs
        )
        class_queries_logits, masks_queries_logits = self.predictions(model_output, labels, output_auxiliary_logits)
        return self.segmentation_output(
            output_class,
            model_output,
            class_queries_logits,
            masks_queries_logits,
            labels,
            pixel_values.shape[-2:],
            output_auxiliary_logits,
            output_semantic_priors,
        )

    def prepare_labels(self, labels: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """Checks a ``(B, H, W)`` label map and pads it with the ignore index to the padded size of an input of
        ``input_size`` (a map that is already padded is returned unchanged). The map must have the input's size or
        its padded size: a smaller one would be padded over image pixels and supervise them with the wrong labels, a
        larger one (or one of another shape) would supervise the model's zero padding with classes, or the image
        with the labels of other pixels."""
        ignore_index = self.config.loss_ignore_index
        labels = check_segmentation_labels(labels, self.config.num_labels, ignore_index)
        size, input_size = tuple(labels.shape[-2:]), tuple(input_size)
        padded_size = tuple(self.padded_input_size(input_size))
        if size not in (input_size, padded_size):
            raise ValueError(
                f"labels of size {size} for an input of {input_size}: {self.family_name} pads the labels with the "
                f"ignore index like the input, so they must have the input's size {input_size} or its padded size "
                f"{padded_size}"
            )
        height, width = size
        return F.pad(labels, (0, padded_size[1] - width, 0, padded_size[0] - height), value=ignore_index)

    # the set loss runs eagerly under torch.compile / torch.export: its targets (the classes present in each label
    # map) have data-dependent sizes and the Hungarian matching runs on the host, so no graph can hold it. Disabling
    # it here makes that the training step's one graph break, instead of a break (and a recompilation for every new
    # target count) at each of them
    @torch.compiler.disable
    def compute_losses(
        self,
        class_queries_logits: tuple[torch.Tensor, ...],
        masks_queries_logits: tuple[torch.Tensor, ...],
        semantic_logits: torch.Tensor | None,
        labels: torch.Tensor,
        input_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """The weighted losses of the model's criterion (keys ``loss_ce``, ``loss_mask``, ``loss_dice``,
        ``loss_cate`` - with ``semantic_logits`` only - and ``loss_{ce,mask,dice}_{i}`` for the earlier predictions)
        of every prediction given, the final one last, for a semantic label map ``(B, H, W)`` at the input size
        ``input_size`` (of ``pixel_values`` before the model's padding; the map is padded with the ignore index like
        the input)."""
        semantic_labels = self.prepare_labels(labels, input_size)  # idempotent
        if tuple(semantic_labels.shape[-2:]) != tuple(4 * s for s in masks_queries_logits[-1].shape[-2:]):
            raise ValueError(
                f"labels padded to {tuple(semantic_labels.shape[-2:])} do not match the masks of the padded input "
                f"({tuple(masks_queries_logits[-1].shape[-2:])} at stride 4); use a size_divisibility that is a "
                "multiple of 32"
            )
        class_labels, mask_labels = semantic_map_to_mask_targets(semantic_labels, self.config.loss_ignore_index)
        return self.criterion(
            class_queries_logits,
            masks_queries_logits,
            semantic_logits,
            class_labels,
            mask_labels,
            semantic_labels,
            use_auxiliary_loss=self.config.use_auxiliary_loss,
        )

    def segmentation_output(
        self,
        output_class: type[ModelOutput],
        model_output: ModelOutput,
        class_queries_logits: tuple[torch.Tensor, ...],
        masks_queries_logits: tuple[torch.Tensor, ...],
        labels: torch.Tensor | None,
        input_size: tuple[int, int],
        output_auxiliary_logits: bool,
        output_semantic_priors: bool | None = None,
        **fields,
    ) -> ModelOutput:
        """``output_class`` from the class and mask logits of the predictions (the final one last): the semantic
        scores of the final one as ``logits``, the semantic head on the backbone's priors (SeMask), the loss with
        ``labels``, the earlier predictions as ``auxiliary_logits`` on request, and the model output's hidden states;
        ``fields`` are further fields of ``output_class``."""
        for name in MODEL_OUTPUT_PASSED_ON:
            if name in output_class.__dataclass_fields__:
                fields.setdefault(name, getattr(model_output, name))
        semantic_logits = None
        if self.has_semantic_head:
            semantic_logits = semantic_head(model_output.semantic_priors)
            fields["semantic_logits"] = semantic_logits
            fields["semantic_priors"] = model_output.semantic_priors if output_semantic_priors else None
        loss = None
        if labels is not None:
            losses = self.compute_losses(
                class_queries_logits, masks_queries_logits, semantic_logits, labels, input_size=input_size
            )
            loss = sum(losses.values())
        auxiliary_logits = None
        if output_auxiliary_logits:
            auxiliary_logits = [
                {"class_queries_logits": class_logits, "masks_queries_logits": mask_logits}
                for class_logits, mask_logits in zip(class_queries_logits[:-1], masks_queries_logits[:-1])
            ]
        return output_class(
            loss=loss,
            logits=semantic_scores(class_queries_logits[-1], masks_queries_logits[-1]),
            class_queries_logits=class_queries_logits[-1],
            masks_queries_logits=masks_queries_logits[-1],
            auxiliary_logits=auxiliary_logits,
            **fields,
        )


class SeMaskMask2FormerForSemanticSegmentation(SemanticMaskClassificationMixin, SeMaskMask2FormerPreTrainedModel):
    """SeMask Mask2Former for semantic segmentation (the released SeMask-L Mask2Former models).

    ``logits`` are the semantic scores at stride 4 of the padded input (see :func:`semantic_scores`); the query-level
    outputs (``class_queries_logits``, ``masks_queries_logits``, ``auxiliary_logits``) stay available. With ``labels``
    (a semantic label map, 255 = ignore) the per-class target masks are built here and the full training loss of the
    original is returned (:class:`SeMaskMask2FormerLoss`).
    """

    def __init__(self, config: SeMaskMask2FormerConfig):
        super().__init__(config)
        # again: from_pretrained sets an id2label / num_labels override after the config validated itself
        validate_labels(config)
        self.model = SeMaskMask2FormerModel(config)
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
        self.criterion = SeMaskMask2FormerLoss(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_auxiliary_logits: bool | None = None,
        output_semantic_priors: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SeMaskMask2FormerSemanticSegmenterOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalised images (zero-padded here to multiples of `config.size_divisibility`).
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Semantic label maps of the input size, values in `[0, num_labels)` or `config.loss_ignore_index` (255).
        output_auxiliary_logits (`bool`, *optional*):
            Return the class and mask logits of the earlier decoder predictions.
        output_semantic_priors (`bool`, *optional*):
            Return the backbone's semantic priors.
        """
        return self.segment(
            SeMaskMask2FormerSemanticSegmenterOutput,
            pixel_values,
            labels,
            output_auxiliary_logits,
            kwargs,
            output_semantic_priors,
        )


list_for_pipeline("semantic-segmentation", SeMaskMask2FormerForSemanticSegmentation)


__all__ = [
    "SemanticMaskClassificationMixin",
    "SeMaskMask2FormerPreTrainedModel",
    "SeMaskMask2FormerModel",
    "SeMaskMask2FormerForSemanticSegmentation",
    "SeMaskMask2FormerModelOutput",
    "SeMaskMask2FormerSemanticSegmenterOutput",
    "SeMaskMask2FormerLoss",
]
