"""Pale Transformer: a hierarchical vision Transformer whose self-attention runs inside pale-shaped regions.

Paper: Wu, Wu, Tan, Guo, "Pale Transformer: A General Vision Transformer Backbone with Pale-Shaped Attention",
AAAI 2022, arXiv 2112.14000. No official code or weights were ever released: this is a first implementation from
the paper, and every Pale model is randomly initialised or trained by its user.

Structure (paper Sec. 3):
- four stages (strides 4/8/16/32), each an overlapping conv embedding (7x7/4 stem, 3x3/2 between stages) followed
  by Pale blocks: ``x + CPE(x)``, ``x + DropPath(PS-Attention(LN(x)))``, ``x + DropPath(MLP(LN(x)))``;
- Pale-Shaped self-Attention (PS-Attention, Sec. 3.2): separable-conv Q/K/V (depth-wise 3x3, BatchNorm,
  point-wise linear, as in CvT); the channels are split in two halves: the row half attends within groups of ``s``
  interlaced rows (rows ``i, i + H/s, i + 2H/s, ...``), the column half within groups of ``s`` interlaced columns;
  the outputs are concatenated and projected. Grouping is a reshape; sizes that ``s`` does not divide are padded, and
  the padded keys masked or (SDPA, not traced) each group attended over its real rows only.

Portable module: imports only torch, transformers and its sibling configuration module.
"""

import functools
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.models.swin.modeling_swin import SwinDropPath
from transformers.models.upernet.modeling_upernet import UperNetHead
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple

from .configuration_pale import PaleConfig
from .configuration_utils_segmentation import validate_labels
from .modeling_linear import (
    PLAIN_LINEAR_TYPES,
    HoldsInferenceWeights,
    InferenceWeights,
    OneDNNLinear,
    PackedInferenceConvolution,
    PackedInferenceLinear,
    fold_batch_norm,
    gelu_post_op_pays,
    inference_product_dtype,
    onednn_inference_linear,
    packed_convolution_dtype,
    packs_inference_weights,
    set_inference_weights,
    traced,
)
from .modeling_sdn import sdn_neck
from .modeling_utils_segmentation import (
    SegmentationModelDefaults,
    TransformerMLP,
    attention_function,
    batch_norm_statistics_updated_once,
    check_backbone_stages,
    check_pixel_values,
    decode_with_auxiliary_head,
    eager_attention,
    fcn_auxiliary_head,
    init_conv_kaiming,
    init_norm_and_linear,
    list_for_pipeline,
    reshape_copy,
    resolve_output_flags,
    segmentation_loss,
    select_hidden_states,
)


@dataclass
class PaleModelOutput(ModelOutput):
    """Output of :class:`PaleModel`.

    Args:
        last_hidden_state: output of the last stage, ``(B, C_3, H/32, W/32)``.
        pooler_output: the last stage averaged over space (then LayerNorm-ed when ``final_norm``), ``(B, C_3)``.
        hidden_states: (on request) ``len(depths) + 1`` maps ``(B, C, H, W)``, the convention of transformers'
            hierarchical models (``SwinModel``, ``ConvNextModel``): the embedding output (stage 1's conv embedding,
            after its LayerNorm, ``(B, C_0, H/4, W/4)``), then the output of every stage (its conv embedding, which
            downsamples, comes first in the stage, so a stage's output is that of its last block). Not normalised.
        attentions: attention probabilities, two per block: its row branch then its column branch (eager attention
            only, on request).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple | None = None


@dataclass
class PaleSemanticSegmenterOutput(ModelOutput):
    """Output of :class:`PaleForSemanticSegmentation`.

    Args:
        loss: cross-entropy of ``logits`` plus ``auxiliary_loss_weight`` x that of ``auxiliary_logits``, both upsampled
            to the label size (when ``labels`` are given).
        logits: UperNet class scores at 1/4 of the input size, ``(B, num_labels, H/4, W/4)``.
        auxiliary_logits: the FCN auxiliary head's scores at 1/16 of the input size (when the head is used).
        hidden_states: the backbone's hidden states (on request): the embedding output and the four stage outputs,
            not normalised (:class:`PaleBackbone`), as transformers' UperNet returns its backbone's.
        attentions: attention probabilities (eager attention only, on request).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    auxiliary_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple | None = None


# ----------------------------------------------------------------------------------------------------------------
# Pale grouping (pure reshapes)
# ----------------------------------------------------------------------------------------------------------------


def pale_group_rows(hidden_states: torch.Tensor, pale_size: int) -> torch.Tensor:
    """``(B, H, W, c)`` with ``H = s * N`` -> ``(B * N, s * W, c)``: group ``i`` holds the interlaced rows
    ``i, i + N, ..., i + (s - 1) N`` (all columns), row-major."""
    batch_size, height, width, channels = hidden_states.shape
    groups = height // pale_size
    # row h = a * N + i  ->  (B, s [a], N [i], W, c) -> (B, N, s, W, c)
    grouped = hidden_states.view(batch_size, pale_size, groups, width, channels).transpose(1, 2)
    return reshape_copy(grouped, batch_size * groups, pale_size * width, channels)


def pale_ungroup_rows(grouped: torch.Tensor, pale_size: int, batch_size: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pale_group_rows`: ``(B * N, s * W, c)`` -> ``(B, s * N, W, c)``."""
    channels = grouped.shape[-1]
    groups = grouped.shape[0] // batch_size
    # (B, N, s, W, c) -> (B, s, N, W, c)
    hidden_states = grouped.view(batch_size, groups, pale_size, width, channels).transpose(1, 2)
    return reshape_copy(hidden_states, batch_size, pale_size * groups, width, channels)


def pale_group_kinds(length: int, pale_size: int) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    """The ``N = ceil(L / s)`` interlaced groups of an axis of ``length`` ``L`` (``s`` clamped to it) and their kinds
    ``(first, last, rows)``: with ``L = q N + r``, groups ``i < r`` hold ``q + 1`` real lines, the others ``q``."""
    pale_size = min(pale_size, length)
    groups = -(-length // pale_size)
    rows, longer = divmod(length, groups)
    return groups, tuple(kind for kind in ((0, longer, rows + 1), (longer, groups, rows)) if kind[1] > kind[0])


def pale_group_index(
    batch_size: int, height: int, width: int, chunks: int, first_chunk: int, heads: int, transposed: bool,
    groups: int, first: int, last: int, rows: int, device: torch.device,
) -> torch.Tensor:  # fmt: skip
    """The rows that groups ``first <= i < last`` of one branch attend, of a ``(B, H, W, chunks * d)`` map viewed as
    ``(B H W chunks, d)`` rows (one row: one head's ``d`` channels of one token), flat in the attention call's order
    ``(B, n, heads, a, W')``: group ``i`` holds the lines ``i + a N`` (``a < rows``) of the grouping axis, each with
    all ``W'`` tokens of the other axis, and the branch's heads are chunks ``first_chunk ...``. The row branch groups
    the map's rows; the column branch (``transposed``) its columns."""
    other = height if transposed else width
    line = torch.arange(first, last, device=device).view(1, -1, 1, 1, 1) + groups * torch.arange(
        rows, device=device
    ).view(1, 1, 1, -1, 1)  # (1, n, 1, a, 1): i + a N
    along = torch.arange(other, device=device).view(1, 1, 1, 1, -1)  # (1, 1, 1, 1, W')
    row, column = (along, line) if transposed else (line, along)
    batch = torch.arange(batch_size, device=device).view(-1, 1, 1, 1, 1)
    head = torch.arange(first_chunk, first_chunk + heads, device=device).view(1, 1, -1, 1, 1)
    return (((batch * height + row) * width + column) * chunks + head).flatten()


@dataclass(frozen=True)
class PaleGatherPlan:
    """How :meth:`PaleShapedAttention.attend_real_rows` attends the pale groups of a map over their real rows.

    Args:
        calls: one ``(index, pairs, length)`` per attention call: the map rows (:func:`pale_group_index`) gathered
            into its ``(pairs, heads, length, d)`` operands, one kind of group of one branch, or of both branches
            (square maps: their row and column groups have the same sizes).
        inverse: the map's row ``r`` is row ``inverse[r]`` of the calls' outputs, in the calls' order.
    """

    calls: tuple[tuple[torch.Tensor, int, int], ...]
    inverse: torch.Tensor


@functools.lru_cache(maxsize=32)
def pale_gather_plan(
    batch_size: int, height: int, width: int, chunks: int, heads: int, pale_size: int, branches: tuple[bool, ...],
    together: bool, device: torch.device,
) -> PaleGatherPlan:  # fmt: skip
    """The :class:`PaleGatherPlan` of a ``(B, H, W, chunks * d)`` map whose ``branches`` (``False``: the row branch,
    ``True``: the column branch) hold ``heads`` chunks each, in that order; ``together``: every kind of group in one
    call for all branches, where their groups have the same sizes (a square map). Cached (the blocks of a stage share
    a plan; its tensors are only read); made outside inference mode, so that a plan made there serves autograd too."""
    with torch.inference_mode(False), torch.no_grad():
        lengths = {transposed: width if transposed else height for transposed in branches}
        together = together and len(set(lengths.values())) == 1
        calls = []
        for branch_set in (branches,) if together else tuple((branch,) for branch in branches):
            groups, kinds = pale_group_kinds(lengths[branch_set[0]], pale_size)
            for first, last, rows in kinds:
                index = torch.cat([
                    pale_group_index(
                        batch_size, height, width, chunks, branches.index(transposed) * heads, heads, transposed,
                        groups, first, last, rows, device,
                    )
                    for transposed in branch_set
                ])  # fmt: skip
                other = height if branch_set[0] else width
                calls.append((index, len(branch_set) * batch_size * (last - first), rows * other))
        gathered = torch.cat([index for index, _, _ in calls])
        inverse = torch.empty_like(gathered)
        inverse[gathered] = torch.arange(gathered.numel(), device=device)
    return PaleGatherPlan(tuple(calls), inverse)


def eval_batch_norm(hidden_states: torch.Tensor, norm: nn.BatchNorm2d) -> torch.Tensor:
    """``norm(hidden_states)`` in eval mode as one kernel call: the running statistics, or the batch's where the
    norm keeps none (as ``nn.BatchNorm2d`` in eval mode), without updating anything."""
    return F.batch_norm(
        hidden_states, norm.running_mean, norm.running_var, norm.weight, norm.bias,
        norm.running_mean is None, 0.0, norm.eps,
    )  # fmt: skip


def padded_key_mask(keys: torch.Tensor, padded_height: int, pale_size: int) -> torch.Tensor:
    """Additive ``(B * N, 1, 1, s * W)`` mask that hides the keys of the rows a zero-padding of ``(B, H, W, c)``
    ``keys`` to ``padded_height = s N`` rows adds (row ``a * N + i >= H``): a map of zeros padded with the dtype's
    lowest value, grouped as the keys (:func:`pale_group_rows`)."""
    batch_size, height, width, _ = keys.shape
    real = torch.zeros((batch_size, height, width, 1), device=keys.device, dtype=keys.dtype)
    padded = F.pad(real, (0, 0, 0, 0, 0, padded_height - height), value=torch.finfo(keys.dtype).min)
    grouped = pale_group_rows(padded, pale_size)  # (B * N, s * W, 1)
    return grouped.view(grouped.shape[0], 1, 1, grouped.shape[1])


# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------


class PalePatchEmbeddings(HoldsInferenceWeights, nn.Module):
    """Overlapping conv embedding ``Conv2d(k, stride, padding k // 2)`` (+ LayerNorm); channels-last output."""

    def __init__(self, config: PaleConfig, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.projection = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(out_channels, eps=config.layer_norm_eps) if config.embed_norm else nn.Identity()
        #: set by :meth:`PalePreTrainedModel.optimize_for_inference` (None: off; its preparations
        #: :class:`PackedInferenceConvolution`); not a parameter or a buffer
        self.inference_weights: InferenceWeights | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, H', W', C)``."""
        projection = self.projection
        dtype = self.packed_projection_dtype(hidden_states)
        if dtype is None:
            projected = projection(hidden_states)
        else:
            weight, bias = projection.weight, projection.bias
            packed = self.inference_weights.prepared(
                dtype,
                (weight, bias),
                lambda: PackedInferenceConvolution(
                    weight, bias, projection.groups, dtype, stride=projection.stride, padding=projection.padding
                ),
            )
            projected = packed(hidden_states.to(dtype))
        return self.norm(projected.permute(0, 2, 3, 1))

    def packed_projection_dtype(self, hidden_states: torch.Tensor) -> torch.dtype | None:
        """The product dtype in which the convolution runs with its weight prepared once (optimised for inference:
        :meth:`PalePreTrainedModel.optimize_for_inference`), or None where it runs as the module (see
        :func:`packed_convolution_dtype`). The same kernel as the module's on the same operands (bit for bit in our
        checks, float32 and bfloat16 autocast), without casting and reordering the weight in every call (Pale-T's
        last embedding at 224 x 224 in float32: 3.3 against 0.5 ms)."""
        if self.inference_weights is None:
            return None
        return packed_convolution_dtype(hidden_states, self.projection)


class PaleSeparableProjection(nn.Module):
    """CvT-style separable projection: depth-wise 3x3 conv -> BatchNorm -> point-wise Linear."""

    def __init__(self, config: PaleConfig, dim: int):
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=config.qkv_depthwise_bias)
        self.norm = nn.BatchNorm2d(dim)
        self.pointwise = OneDNNLinear(dim, dim, bias=config.qkv_bias)

    def forward(self, channels_first: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, H, W, C)``."""
        return self.pointwise(self.norm(self.depthwise(channels_first)).permute(0, 2, 3, 1))

    def inference_forward(self, channels_first: torch.Tensor, product_dtype: torch.dtype | None) -> torch.Tensor:
        """:meth:`forward` in eval mode as direct kernel calls (:meth:`PaleBlock.inference_forward`): the same
        convolution, the BatchNorm's eval-mode normalisation and the dense layer as oneDNN's product in
        ``product_dtype`` (:func:`onednn_inference_linear`)."""
        depthwise = self.depthwise
        normed = eval_batch_norm(depthwise._conv_forward(channels_first, depthwise.weight, depthwise.bias), self.norm)
        pointwise = self.pointwise
        return onednn_inference_linear(normed.permute(0, 2, 3, 1), pointwise.weight, pointwise.bias, product_dtype)


class PaleAttentionOutput(nn.Module):
    def __init__(self, config: PaleConfig, dim: int):
        super().__init__()
        self.dense = OneDNNLinear(dim, dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))


class PaleShapedAttention(nn.Module):
    """Pale-Shaped self-Attention (paper Sec. 3.2, Eq. 3-5) through transformers' attention interface.

    The row half of the channels (``heads / 2`` heads) attends within groups of ``s`` interlaced rows, the column half
    within groups of ``s`` interlaced columns; each token thus sees ``s * W + s * H - s * s`` tokens spread over the
    whole image. ``s`` is clamped to the map size (traced graphs pad a shorter map to ``s`` rows: the same groups); a
    size that ``s`` does not divide is zero-padded at the bottom / right and the padded keys are masked (eager
    attention, traced graphs) or left out (:meth:`attend_real_rows`), so the result does not depend on the padding.
    """

    def __init__(self, config: PaleConfig, dim: int, num_heads: int, pale_size: int):
        super().__init__()
        self.config = config
        self.pale_size = pale_size
        self.heads_per_branch = max(num_heads // 2, 1)
        self.head_dim = dim // 2 // self.heads_per_branch
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.query = PaleSeparableProjection(config, dim)
        self.key = PaleSeparableProjection(config, dim)
        self.value = PaleSeparableProjection(config, dim)
        self.output = PaleAttentionOutput(config, dim)

    def attend_rows(self, query, key, value):
        """Row-branch attention on ``(B, H, W, c)`` maps; returns ``(B, H, W, c)`` and the probabilities (eager
        attention only). Outside tracing and eager attention: :meth:`attend_real_rows`."""
        if self.gathers_real_rows():
            return self.attend_real_rows(query, key, value, branches=(False,), together=False), None
        batch_size, height, width, channels = query.shape
        # traced (torch.compile / torch.export) the map is always padded and masked (maybe by 0 rows): a comparison of
        # sizes would fix its outcome for the traced size in the graph. Nor is s clamped there: a map of H < s rows
        # padded to s is one group of its H real rows, as the clamp makes it, and a symbolic min would enter every
        # size after it (Pale-T's torch.export: 38-48 s with it and the earlier grouping, 27-32 s now, on 2 cores)
        compiling = torch.compiler.is_compiling()
        pale_size = self.pale_size if compiling else min(self.pale_size, height)
        padded_height = (height + pale_size - 1) // pale_size * pale_size  # positive operands: ONNX's division
        attention_interface = attention_function(self.config, query, key, value)
        padded = compiling or padded_height != height
        mask = None
        if padded:
            mask = padded_key_mask(key, padded_height, pale_size)
            padding = (0, 0, 0, 0, 0, padded_height - height)
            query, key, value = (F.pad(t, padding) for t in (query, key, value))

        def heads(t):  # (B*N, s*W, c) -> (B*N, heads, s*W, d)
            grouped = pale_group_rows(t, pale_size)
            heads = grouped.view(grouped.shape[0], grouped.shape[1], self.heads_per_branch, self.head_dim)
            return heads.transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        dropout = self.attention_dropout if self.training else 0.0
        attended, weights = attention_interface(self, query, key, value, mask, dropout=dropout, scaling=self.scaling)
        attended = attended.flatten(2)  # (B*N, s*W, heads, d) -> (B*N, s*W, c)
        # (B*N, s*W, c) -> (B, Hp, W, c) -> crop
        attended = pale_ungroup_rows(attended, pale_size, batch_size, width)
        return attended.narrow(1, 0, height), weights  # narrow: exactly `height` rows when traced, not a min

    def gathers_real_rows(self) -> bool:
        """Whether the branches run as :meth:`attend_real_rows`: not traced (a traced graph pads and masks: it must
        not fix the outcome of size comparisons), and an attention implementation without attention weights (eager
        attention returns ``(B*N, heads, s*W, s*W)`` maps in the padded, masked layout)."""
        return not traced() and self.config._attn_implementation not in (None, "eager")

    def attend_real_rows(self, query, key, value, branches: tuple[bool, ...], together: bool) -> torch.Tensor:
        """The ``branches`` of projected ``(B, H, W, C)`` maps (``False``: the row branch, ``True``: the column
        branch, each on the next ``heads * d`` channels), each pale group over its real rows only; returns
        ``(B, H, W, C)``.

        With ``N = ceil(H / s)`` groups and ``H = q N + r`` (``0 <= r < N``), group ``i`` holds the map rows
        ``i + a N`` below ``H``: ``q + 1`` of them for ``i < r``, ``q`` for the others (the rows a zero-padding to
        ``N s`` would add are padding keys whose probabilities are exactly 0, and padding queries that are cropped).
        Each kind of group is attended in ONE call (the groups are the batch), for both branches where ``together``
        and the map is square, over its real tokens: no mask and fewer scores than the padded groups (Pale-T at 512:
        7% fewer in stage 1, 16% in stages 2 and 3).

        The maps are viewed as rows of one head's ``d`` channels of one token; each call's queries, keys and values
        are gathered from them with one ``index_select`` each (:func:`pale_gather_plan`, cached per shape), and the
        output is put back in the map's layout with one more: no padding, no grouping copies, no concatenation of
        the branches, and 5 kernel calls per kind instead of ~16 strided copies."""
        batch_size, height, width, channels = query.shape
        heads, head_dim = self.heads_per_branch, self.head_dim
        if channels != len(branches) * heads * head_dim:  # every row of the map in exactly one call
            raise ValueError(
                f"PaleShapedAttention: maps of {channels} channels for {len(branches)} branch(es) of {heads} head(s) of "
                f"{head_dim} channels; expected {len(branches) * heads * head_dim}"
            )
        plan = pale_gather_plan(
            batch_size, height, width, channels // head_dim, heads, self.pale_size, branches, together, query.device
        )
        # (B, H, W, chunks * d) -> (B H W chunks, d): a view of a contiguous map
        operands = [hidden_states.reshape(-1, head_dim) for hidden_states in (query, key, value)]
        attention_interface = attention_function(self.config, query, key, value)
        dropout = self.attention_dropout if self.training else 0.0
        outputs = []
        for index, pairs, length in plan.calls:
            # (pairs heads length, d) rows -> (pairs, heads, length, d)
            grouped = [torch.index_select(rows, 0, index).view(pairs, heads, length, head_dim) for rows in operands]
            attended, _ = attention_interface(self, *grouped, None, dropout=dropout, scaling=self.scaling)
            # (pairs, length, heads, d) -> the call's rows (pairs heads length, d), in index's order: a view where
            # the heads lead in memory (cpu_bfloat16_attention's output), a copy otherwise
            outputs.append(attended.transpose(1, 2).reshape(-1, head_dim))
        attended_rows = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        return torch.index_select(attended_rows, 0, plan.inverse).view(query.shape)

    def attends_branches_together(self, height: int, width: int) -> bool:
        """Whether :meth:`attend_pales` attends both branches in the same calls of :meth:`attend_real_rows`: a
        square map (the row and the column groups have the same sizes), where it gathers real rows."""
        return height == width and self.gathers_real_rows()

    def attend_pales(self, query, key, value):
        """Both branches on projected ``(B, H, W, C)`` maps: the row branch on the first half of the channels, the
        column branch (the row branch on the transposed map) on the second. Returns ``(B, H, W, C)`` (row half, then
        column half) and the ``(row, column)`` attention probabilities (eager attention only)."""
        if self.gathers_real_rows():
            together = self.attends_branches_together(query.shape[1], query.shape[2])
            return self.attend_real_rows(query, key, value, (False, True), together), (None, None)
        half = query.shape[-1] // 2
        rows, row_weights = self.attend_rows(*(t[..., :half] for t in (query, key, value)))
        columns, column_weights = self.attend_rows(*(t[..., half:].transpose(1, 2) for t in (query, key, value)))
        return torch.cat([rows, columns.transpose(1, 2)], dim=-1), (row_weights, column_weights)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """``(B, H, W, C)`` -> ``(B, H, W, C)`` and ``(row, column)`` attention probabilities (eager only)."""
        channels_first = hidden_states.permute(0, 3, 1, 2)
        query, key, value = self.query(channels_first), self.key(channels_first), self.value(channels_first)
        attended, weights = self.attend_pales(query, key, value)
        return self.output(attended), weights


class PaleBlock(HoldsInferenceWeights, GradientCheckpointingLayer):
    """``x + CPE(x)`` (depth-wise conv position encoding, Chu et al. 2021), then pre-norm PS-Attention and MLP."""

    def __init__(self, config: PaleConfig, dim: int, num_heads: int, pale_size: int, drop_path_rate: float):
        super().__init__()
        kernel = config.cpe_kernel_size
        self.cpe = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.layernorm_before = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = PaleShapedAttention(config, dim, num_heads, pale_size)
        self.drop_path = SwinDropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.layernorm_after = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = TransformerMLP(config, dim)
        #: set by :meth:`PalePreTrainedModel.optimize_for_inference` (None: off; its setting ``fold_batch_norm``, its
        #: preparations :class:`PreparedPaleBlock`); not a parameter or a buffer
        self.inference_weights: InferenceWeights | None = None

    @batch_norm_statistics_updated_once
    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        if self.runs_inference_forward(hidden_states):
            return self.inference_forward(hidden_states), (None, None)
        hidden_states = hidden_states + self.cpe(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        attended, attentions = self.attention(self.layernorm_before(hidden_states))
        hidden_states = hidden_states + self.drop_path(attended)
        hidden_states = hidden_states + self.drop_path(self.mlp(hidden_states, norm=self.layernorm_after))
        return hidden_states, attentions

    def runs_inference_forward(self, hidden_states: torch.Tensor) -> bool:
        """Whether :meth:`forward` runs as :meth:`inference_forward`: only where nothing attached to the block's
        submodules could tell them apart, as PyTorch's ``nn.TransformerEncoderLayer`` takes its fast path. Gradients
        off (``torch.no_grad`` / ``torch.inference_mode``), every submodule in eval mode, of the block's own types (a
        replaced dense layer, e.g. an any-precision one, a PEFT adapter or a parametrisation, keeps its own forward)
        and without hooks of its own (:func:`calls_hooks`; global hooks, torch's module trackers, observe the path
        that runs), an attention implementation without attention weights, not traced (compiled and exported graphs
        record the modules' forwards), and a non-empty input."""
        if torch.is_grad_enabled() or traced() or hidden_states.numel() == 0:
            return False
        if self.attention.config._attn_implementation in (None, "eager"):
            return False
        if self.training:
            return False
        activation = self._modules["mlp"]._modules.get("activation")
        # a walk over the submodules without named_modules' names and memo, through the modules' own dicts (no
        # nn.Module.__getattr__): this runs in every block's forward
        pending = list(self._modules.values())
        for module in pending:  # grows as it goes: breadth first
            if module is None:
                continue
            if module.training or module._forward_hooks or module._forward_pre_hooks:  # calls_hooks without grad
                return False
            if type(module) not in INFERENCE_FORWARD_TYPES and module is not activation:
                return False
            pending.extend(module._modules.values())
        return True

    def inference_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` at inference (see :meth:`runs_inference_forward`) as direct kernel calls: the same
        kernels on the same operands in the same order, so the same values bit for bit, without the ~25 submodule
        calls and the per-layer dispatch checks of every block. Pale-T has 22 blocks; at 224 x 224 on 2 CPU threads
        its forward takes 0.93-0.95 of the module forward's (benchmarks/README.md, ``--module-forward-twin``). The
        dense layers' product dtype (:func:`inference_product_dtype`) is decided once for the block: all its
        operands share a device, a dtype and the autocast state."""
        attention, mlp = self.attention, self.mlp
        product_dtype = inference_product_dtype(hidden_states, attention.output.dense.weight)
        if self.inference_weights is not None and packs_inference_weights(product_dtype):
            return self.optimized_inference_forward(hidden_states, self.prepared_weights(product_dtype))
        # x + CPE(x): (B, H, W, C) -> channels-first view -> (B, H, W, C)
        channels_first = hidden_states.permute(0, 3, 1, 2)
        position = self.cpe._conv_forward(channels_first, self.cpe.weight, self.cpe.bias)
        hidden_states = hidden_states + position.permute(0, 2, 3, 1)
        norm = self.layernorm_before
        normed = F.layer_norm(hidden_states, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        channels_first = normed.permute(0, 3, 1, 2)
        query, key, value = (
            projection.inference_forward(channels_first, product_dtype)
            for projection in (attention.query, attention.key, attention.value)
        )
        attended, _ = attention.attend_pales(query, key, value)
        dense = attention.output.dense
        hidden_states = hidden_states + onednn_inference_linear(attended, dense.weight, dense.bias, product_dtype)
        norm = self.layernorm_after
        normed = F.layer_norm(hidden_states, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        expanded = onednn_inference_linear(normed, mlp.fc1.weight, mlp.fc1.bias, product_dtype)
        # the exact GELU in place on fc1's fresh output, as TransformerMLP at inference
        expanded = torch.ops.aten.gelu_(expanded) if mlp.exact_gelu else mlp.activation(expanded)
        return hidden_states + onednn_inference_linear(expanded, mlp.fc2.weight, mlp.fc2.bias, product_dtype)

    def prepared_weights(self, dtype: torch.dtype) -> "PreparedPaleBlock":
        """This block's weights prepared in ``dtype`` (made again where a weight changed since)."""
        fold, exact_gelu = self.inference_weights.settings["fold_batch_norm"], self.mlp.exact_gelu
        sources = (*pale_block_weights(self), fold, exact_gelu)
        return self.inference_weights.prepared(dtype, sources, lambda: PreparedPaleBlock(self, dtype, fold, exact_gelu))

    def optimized_inference_forward(self, hidden_states: torch.Tensor, weights: "PreparedPaleBlock") -> torch.Tensor:
        """:meth:`inference_forward` of a block optimised for inference (:meth:`PalePreTrainedModel.
        optimize_for_inference`), with the weights prepared once in the product dtype (``weights``): cast, packed for
        oneDNN, the BatchNorms folded into the q/k/v depth-wise convolutions (where asked), and the normalised map cast
        once for the three convolutions (autocast casts it for each).

        The exact GELU runs as ``fc1``'s post-op on CPUs where that is the faster (:func:`gelu_post_op_pays`; in
        place on the product elsewhere), and where the residual stream is in the product dtype (float32; bfloat16
        weights without autocast) the three residual additions run as post-ops of the CPE convolution, the
        attention's output layer and ``fc2``: in float32 the same values as the separate kernels (bit for bit in our
        checks): up to 4 kernel calls and passes over a map fewer per block. Pale-T's forward with the post-ops
        against without, in one process on an Intel Xeon with AVX-512 (medians of three runs, benchmarks/README.md):
        float32 0.98x at 512 x 512, no measurable change at 224; bfloat16 autocast (the GELU only) 0.94x at 512, 1.01x
        at 224."""
        dtype = weights.dtype
        adds_in_products = hidden_states.dtype == dtype
        # x + CPE(x): (B, H, W, C) -> channels-first view -> (B, H, W, C)
        channels_first = hidden_states.permute(0, 3, 1, 2)
        if adds_in_products:
            hidden_states = weights.position_encoding(channels_first, residual=channels_first).permute(0, 2, 3, 1)
        else:
            position = weights.position_encoding(channels_first.to(dtype))
            hidden_states = hidden_states + position.permute(0, 2, 3, 1)
        norm = self.layernorm_before
        normed = F.layer_norm(hidden_states, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        channels_first = normed.permute(0, 3, 1, 2).to(dtype)
        query, key, value = (projection(channels_first) for projection in weights.projections)
        attended, _ = self.attention.attend_pales(query, key, value)
        if adds_in_products:
            hidden_states = weights.output(attended, residual=hidden_states)
        else:
            hidden_states = hidden_states + weights.output(attended)
        norm = self.layernorm_after
        normed = F.layer_norm(hidden_states, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        expanded = weights.fc1(normed)  # with the exact GELU as its post-op where that pays (gelu_post_op_pays)
        if not weights.fc1.exact_gelu:  # the GELU in place on fc1's fresh output, as inference_forward
            expanded = torch.ops.aten.gelu_(expanded) if self.mlp.exact_gelu else self.mlp.activation(expanded)
        if adds_in_products:
            return weights.fc2(expanded, residual=hidden_states)
        return hidden_states + weights.fc2(expanded)


class PreparedSeparableProjection:
    """:class:`PaleSeparableProjection` prepared for inference: the depth-wise convolution (with the BatchNorm folded
    in, or the BatchNorm kept as ``norm``) and the point-wise dense layer, packed."""

    def __init__(self, projection: PaleSeparableProjection, dtype: torch.dtype, fold_norm: bool):
        depthwise, norm = projection.depthwise, projection.norm
        weight, bias = depthwise.weight, depthwise.bias
        self.norm = None if fold_norm else norm
        if fold_norm:
            weight, bias = fold_batch_norm(weight, bias, norm)
        self.depthwise = PackedInferenceConvolution(weight, bias, depthwise.groups, dtype)
        self.pointwise = PackedInferenceLinear(projection.pointwise.weight, projection.pointwise.bias, dtype)

    def __call__(self, channels_first: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in the product dtype -> ``(B, H, W, C)``."""
        projected = self.depthwise(channels_first)
        if self.norm is not None:
            projected = eval_batch_norm(projected, self.norm)
        return self.pointwise(projected.permute(0, 2, 3, 1))


def pale_block_weights(block: "PaleBlock") -> tuple:
    """Every tensor and setting a :class:`PreparedPaleBlock` is made from, in a fixed order (None where a layer
    has no bias). Read from the modules' own parameter, buffer and submodule dicts rather than as attributes: this
    runs in every inference forward of an optimised block, and each ``nn.Module.__getattr__`` is a Python call."""
    modules = block._modules
    attention, mlp = modules["attention"]._modules, modules["mlp"]._modules
    cpe = modules["cpe"]._parameters
    weights = [cpe["weight"], cpe["bias"]]
    for name in ("query", "key", "value"):
        projection = attention[name]._modules
        depthwise, norm, pointwise = projection["depthwise"]._parameters, projection["norm"], projection["pointwise"]
        norm_parameters, norm_buffers = norm._parameters, norm._buffers
        weights += [depthwise["weight"], depthwise["bias"], norm_parameters["weight"], norm_parameters["bias"]]
        # a train-mode forward updates the running statistics in its kernel without bumping their version counters;
        # num_batches_tracked's count is bumped (else the folded statistics stayed those of before)
        weights += [norm_buffers["running_mean"], norm_buffers["running_var"], norm_buffers["num_batches_tracked"]]
        weights += [norm.eps]
        weights += [pointwise._parameters["weight"], pointwise._parameters["bias"]]
    for dense in (attention["output"]._modules["dense"], mlp["fc1"], mlp["fc2"]):
        weights += [dense._parameters["weight"], dense._parameters["bias"]]
    return tuple(weights)


class PreparedPaleBlock:
    """A :class:`PaleBlock`'s weights prepared for :meth:`PaleBlock.optimized_inference_forward` in one product
    ``dtype``: the CPE and q/k/v depth-wise convolutions (the BatchNorms folded in where ``fold_batch_norm``) and the
    dense layers, cast and packed for oneDNN; ``fc1`` with the exact GELU as its post-op where ``exact_gelu`` and
    the CPU runs that faster (:func:`gelu_post_op_pays`)."""

    def __init__(self, block: "PaleBlock", dtype: torch.dtype, fold_batch_norm: bool, exact_gelu: bool):
        self.dtype = dtype
        cpe = block.cpe
        self.position_encoding = PackedInferenceConvolution(cpe.weight, cpe.bias, cpe.groups, dtype)
        attention, mlp = block.attention, block.mlp
        self.projections = tuple(
            # eval mode without running statistics normalises with the batch's: that BatchNorm stays
            PreparedSeparableProjection(projection, dtype, fold_batch_norm and projection.norm.running_mean is not None)
            for projection in (attention.query, attention.key, attention.value)
        )
        self.output, self.fc2 = (
            PackedInferenceLinear(dense.weight, dense.bias, dtype) for dense in (attention.output.dense, mlp.fc2)
        )
        post_op = exact_gelu and gelu_post_op_pays()
        self.fc1 = PackedInferenceLinear(mlp.fc1.weight, mlp.fc1.bias, dtype, exact_gelu=post_op)


#: the module types :meth:`PaleBlock.inference_forward` computes itself (exact types: a subclass has its own forward)
INFERENCE_FORWARD_TYPES = frozenset(
    {
        PaleShapedAttention,
        PaleSeparableProjection,
        PaleAttentionOutput,
        TransformerMLP,
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.LayerNorm,
        nn.Dropout,
        nn.Identity,
        SwinDropPath,
        *PLAIN_LINEAR_TYPES,
    }
)


class PaleStage(nn.Module):
    def __init__(self, config: PaleConfig, stage_index: int, drop_path_rates: list[float]):
        super().__init__()
        dim = config.hidden_sizes[stage_index]
        in_channels = config.num_channels if stage_index == 0 else config.hidden_sizes[stage_index - 1]
        self.patch_embed = PalePatchEmbeddings(
            config, in_channels, dim, config.patch_sizes[stage_index], config.patch_strides[stage_index]
        )
        self.layers = nn.ModuleList(
            PaleBlock(config, dim, config.num_heads[stage_index], config.pale_sizes[stage_index], rate)
            for rate in drop_path_rates
        )

    def forward(self, channels_first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """``(B, C_in, H, W)`` -> the conv embedding's output as a ``(B, C, H', W')`` view, the stage output
        ``(B, H', W', C)`` and the attentions. The blocks are fed that view permuted back to channels-last (the same
        memory and values), so the returned embedding is the tensor the output is computed from (``retain_grad`` on
        it gets a gradient, as on transformers' first hidden state)."""
        embedding_output = self.patch_embed(channels_first).permute(0, 3, 1, 2)
        hidden_states = embedding_output.permute(0, 2, 3, 1)
        attentions = ()
        for layer in self.layers:
            hidden_states, (row_attentions, column_attentions) = layer(hidden_states)
            attentions += (row_attentions, column_attentions)  # one tensor per attention, as transformers' models
        return embedding_output, hidden_states, attentions


class PaleEncoder(nn.Module):
    def __init__(self, config: PaleConfig):
        super().__init__()
        total = sum(config.depths)
        # Python floats: models are built on the meta device
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList(
            PaleStage(config, i, rates[sum(config.depths[:i]) : sum(config.depths[: i + 1])])
            for i in range(len(config.depths))
        )

    def forward(self, pixel_values: torch.Tensor) -> tuple[tuple, tuple]:
        """-> (hidden states: stage 1's embedding output, then every stage's output, ``(B, C_i, H_i, W_i)`` views
        of channels-last memory; attentions)."""
        hidden_states = pixel_values
        all_hidden_states, attentions = (), ()
        for stage in self.stages:
            embedding_output, channels_last, stage_attentions = stage(hidden_states)
            if not all_hidden_states:
                all_hidden_states = (embedding_output,)
            hidden_states = channels_last.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W) view
            all_hidden_states += (hidden_states,)
            attentions += stage_attentions
        return all_hidden_states, attentions


# ----------------------------------------------------------------------------------------------------------------
# Pretrained-model plumbing
# ----------------------------------------------------------------------------------------------------------------


class PalePreTrainedModel(SegmentationModelDefaults, PreTrainedModel):
    config: PaleConfig
    base_model_prefix = "pale"
    _no_split_modules = ["PaleBlock"]

    def get_input_embeddings(self) -> nn.Module:
        """The first stage's patch embedding, the module that turns pixels into tokens (Swin's ``patch_embeddings``)."""
        return next(module for module in self.modules() if isinstance(module, PalePatchEmbeddings))

    @torch.no_grad()
    def _init_weights(self, module):
        """Truncated-normal(0.02) Linears with zero bias, LayerNorm/BatchNorm 1/0, convs kaiming (fan-out)."""
        init_norm_and_linear(module, self.config.initializer_range)
        if isinstance(module, nn.Conv2d):
            init_conv_kaiming(module)

    def optimize_for_inference(self, fold_batch_norm: bool = True):
        """Prepares the blocks' and the conv embeddings' weights (and, as on every family, the other dense layers')
        once for CPU inference, as ``torch.jit.optimize_for_inference`` or mmcv's ``fuse_conv_bn`` do for deployment;
        returns the model (changed in place).

        Where a block runs its inference forward (:meth:`PaleBlock.runs_inference_forward`) with a oneDNN product
        (:func:`inference_product_dtype`: the CPU, float32 or bfloat16 / bfloat16 autocast), its convolutions and
        dense layers use copies of their weights cast to that dtype and packed in oneDNN's layout, made on the first
        such forward (per dtype) instead of in every forward; with ``fold_batch_norm`` each eval-mode BatchNorm of
        the q/k/v projections is folded into its depth-wise convolution. The conv embeddings do the same with their
        convolution (:meth:`PalePatchEmbeddings.packed_projection_dtype`: the same values, bit for bit in our
        checks). Measured for Pale-T in benchmarks/README.md (``benchmark_pale.py --optimized-twin``).

        * Values: those of the model up to rounding. Folding changes the rounding (float32: about 1e-6 relative;
          bfloat16 autocast: the folded weights are rounded to bfloat16 instead of the convolution's output); without
          it the products are the same kernels' (bit for bit in our checks, not promised).
        * Nothing else changes: parameters, buffers, ``state_dict`` and ``save_pretrained`` are the model's own, and
          training, gradients, hooks, tracing, export and other devices take the paths they take without it.
        * Changed weights (an optimiser step, ``load_state_dict``, ``.to()``) are noticed by their version counters
          and memory, and their copies made again; a change made through ``.data`` in place is not (call this
          method again after one).
        * Memory: one extra copy of the blocks' and the embeddings' weights per dtype used (Pale-T: 85 MB in
          float32, 42 MB in bfloat16). :meth:`clear_inference_optimization` frees them and turns this off.
        """
        # every dense layer, as on every family: the heads', and the blocks' own where a block runs module by module
        super().optimize_for_inference()
        set_inference_weights(self, PaleBlock, fold_batch_norm=fold_batch_norm)
        set_inference_weights(self, PalePatchEmbeddings)
        return self

    def clear_inference_optimization(self):
        """Undoes :meth:`optimize_for_inference`: drops the prepared weights; returns the model."""
        super().clear_inference_optimization()
        set_inference_weights(self, (PaleBlock, PalePatchEmbeddings), enabled=False)
        return self


class PaleModel(PalePreTrainedModel):
    """The bare Pale Transformer encoder with a pooled (and LayerNorm-ed) last stage."""

    def __init__(self, config: PaleConfig):
        super().__init__(config)
        self.encoder = PaleEncoder(config)
        self.layernorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.final_norm else nn.Identity()
        )
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> PaleModelOutput:
        output_hidden_states, output_attentions = resolve_output_flags(self.config, kwargs)
        with eager_attention(self.config, output_attentions):
            hidden_states, attentions = self.encoder(pixel_values)
        output = PaleModelOutput(
            last_hidden_state=hidden_states[-1],
            pooler_output=self.layernorm(hidden_states[-1].mean(dim=(2, 3))),
            hidden_states=select_hidden_states(hidden_states, kwargs.get("output_hidden_states"))
            if output_hidden_states
            else None,
            attentions=attentions if output_attentions else None,
        )
        return output


class PaleForImageClassification(PalePreTrainedModel):
    """Pale Transformer with global average pooling, LayerNorm and a linear classifier (paper Sec. 4.1)."""

    def __init__(self, config: PaleConfig):
        super().__init__(config)
        self.pale = PaleModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput:
        # the attention's BatchNorms in the last stage normalise the stride-32 map
        check_pixel_values(
            pixel_values, self.config.num_channels, labels, label_maps=False, model=self, batch_norm_stride=32
        )
        outputs = self.pale(pixel_values, **kwargs, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = self.compute_loss(logits, labels)
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of ``config.problem_type``, as transformers' image classifiers: ``"regression"`` (also when it is
        unset and there is one label) is the mean squared error; ``"multi_label_classification"`` the binary
        cross-entropy of ``(B, num_labels)`` targets; otherwise cross-entropy with class ids (any integer dtype,
        shape ``(B,)`` or ``(B, 1)``; -100 is ignored) or with soft targets (floating ``(B, num_labels)``: mixup,
        cutmix or label smoothing done outside). Anything else is a ``ValueError`` naming the shape and dtype."""
        problem_type = self.config.problem_type or ("regression" if logits.shape[-1] == 1 else None)
        if problem_type in ("regression", "multi_label_classification"):
            expected = (logits.shape[0],) if logits.shape[-1] == 1 and problem_type == "regression" else logits.shape
            if labels.dtype == torch.bool or labels.is_complex() or labels.numel() != logits.numel():
                raise ValueError(
                    f"labels of shape {tuple(labels.shape)} and dtype {labels.dtype} for {problem_type}: expected "
                    f"{tuple(expected)} or {tuple(logits.shape)} numbers"
                )
            labels = labels.reshape(logits.shape).to(logits.dtype)
            if problem_type == "regression":
                return F.mse_loss(logits, labels)
            return F.binary_cross_entropy_with_logits(logits, labels)
        batch_size, num_labels = logits.shape
        if labels.dtype == torch.bool or labels.is_complex() or labels.ndim == 0 or labels.shape[0] != batch_size:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} and dtype {labels.dtype} for {batch_size} images: expected "
                f"class ids ({batch_size},) or ({batch_size}, 1) of an integer dtype, or soft targets "
                f"({batch_size}, {num_labels}) of a floating dtype"
            )
        if not labels.is_floating_point():
            if labels.ndim == 2 and labels.shape[1] == 1:
                labels = labels[:, 0]
            if labels.ndim != 1:
                raise ValueError(
                    f"labels of shape {tuple(labels.shape)}: class ids must be ({batch_size},) or ({batch_size}, 1)"
                )
            labels = labels.long()
            bad = labels[(labels != -100) & ((labels < 0) | (labels >= num_labels))]
            if bad.numel():
                raise ValueError(
                    f"labels hold class ids {bad.unique()[:10].tolist()} outside [0, {num_labels}) (and -100, ignored)"
                )
            return F.cross_entropy(logits, labels)
        if tuple(labels.shape) != (batch_size, num_labels):
            raise ValueError(
                f"soft-target labels of shape {tuple(labels.shape)}: expected ({batch_size}, {num_labels}) (one "
                "probability per class); class ids must be an integer tensor"
            )
        return torch.sum(-labels * F.log_softmax(logits, dim=-1), dim=-1).mean()


class PaleBackbone(BackboneMixin, PalePreTrainedModel):
    """Pale Transformer as a transformers backbone: LayerNorm-ed ``feature_maps`` (strides 4/8/16/32) of the
    ``out_features`` stages (one LayerNorm per selected stage, as transformers' ``SwinBackbone``); ``hidden_states``
    one map per ``stage_names`` entry, not normalised (:class:`PaleModelOutput`)."""

    def __init__(self, config: PaleConfig):
        super().__init__(config)
        self.num_features = [config.embed_dim] + list(config.hidden_sizes)
        self.encoder = PaleEncoder(config)
        self.hidden_states_norms = nn.ModuleDict(
            {
                stage: nn.LayerNorm(channels, eps=config.layer_norm_eps)
                for stage, channels in zip(self.out_features, self.channels)
            }
        )
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BackboneOutput:
        output_hidden_states, output_attentions = resolve_output_flags(self.config, kwargs)
        with eager_attention(self.config, output_attentions):
            hidden_states, attentions = self.encoder(pixel_values)
        feature_maps = ()
        for stage, hidden_state in zip(self.stage_names, hidden_states):
            if stage in self.out_features:
                # LayerNorm over channels of the channels-last memory, returned as a (B, C, H, W) view
                normed = self.hidden_states_norms[stage](hidden_state.permute(0, 2, 3, 1))
                feature_maps += (normed.permute(0, 3, 1, 2),)
        output = BackboneOutput(
            feature_maps=feature_maps,
            hidden_states=select_hidden_states(hidden_states, kwargs.get("output_hidden_states"))
            if output_hidden_states
            else None,
            attentions=attentions if output_attentions else None,
        )
        return output


class PaleForSemanticSegmentation(PalePreTrainedModel):
    """Pale Transformer + UperNet (Xiao et al. 2018) with the FCN auxiliary head on stage 3 (weight 0.4), the
    Swin/CSWin ADE20K recipe the paper follows. ``logits`` at 1/4 of the input size, like the other families."""

    def __init__(self, config: PaleConfig):
        super().__init__(config)
        validate_labels(config, per_pixel_softmax="PaleForSemanticSegmentation")
        self.backbone = PaleBackbone(config)
        check_backbone_stages("PaleForSemanticSegmentation", self.backbone.out_features, len(config.depths))
        # the fields transformers' UperNetHead reads
        head_config = SimpleNamespace(
            pool_scales=config.pool_scales, hidden_size=config.decoder_hidden_size, num_labels=config.num_labels
        )
        self.neck = sdn_neck(config, self.backbone.channels)  # None unless config.use_sdn_neck
        self.decode_head = UperNetHead(head_config, in_channels=self.backbone.channels)
        self.auxiliary_head = fcn_auxiliary_head(config, self.backbone.channels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> PaleSemanticSegmenterOutput:
        # BatchNorm normalises the pyramid pooling's globally pooled map (pool scale 1), else the stride-32 map
        batch_norm_stride = 0 if 1 in self.config.pool_scales else 32
        check_pixel_values(
            pixel_values, self.config.num_channels, labels, model=self, batch_norm_stride=batch_norm_stride
        )
        output_hidden_states, output_attentions = resolve_output_flags(self.config, kwargs)
        backbone_output = self.backbone(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=kwargs.get("output_hidden_states") or output_hidden_states,
            return_dict=True,
        )
        features = backbone_output.feature_maps
        logits, auxiliary_logits, loss = decode_with_auxiliary_head(self, features, labels)
        output = PaleSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            auxiliary_logits=auxiliary_logits,
            hidden_states=backbone_output.hidden_states,
            attentions=backbone_output.attentions,
        )
        return output

    def compute_loss(self, logits, auxiliary_logits, labels) -> torch.Tensor:
        """Cross-entropy (mean over the labelled pixels) of the upsampled logits + weight x that of the auxiliary."""
        return segmentation_loss(self.config, logits, labels, auxiliary_logits)


list_for_pipeline("image-classification", PaleForImageClassification)
list_for_pipeline("semantic-segmentation", PaleForSemanticSegmentation)


__all__ = [
    "PaleBackbone",
    "PaleForImageClassification",
    "PaleForSemanticSegmentation",
    "PaleModel",
    "PaleModelOutput",
    "PalePreTrainedModel",
    "PaleSemanticSegmenterOutput",
]
