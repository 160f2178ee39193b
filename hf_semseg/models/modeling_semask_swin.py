"""SeMask-Swin: a Swin Transformer whose every stage ends in a Semantic Layer, and its Semantic-FPN segmentation model.

Paper: Jain, Singh, Orlov, Huang, Li, Walton, Shi, "SeMask: Semantically Masked Transformers for Semantic
Segmentation", arXiv 2112.12782. Original code: Picsart-AI-Research/SeMask-Segmentation (``SeMask-FPN/``).

Structure (paper Sec. 3, Fig. 3):
- Swin encoder stages (W-MSA / SW-MSA blocks with relative position bias, patch merging between stages);
- after the blocks of each stage, a *Semantic Layer*: LayerNorm, then Semantic Attention, whose query projection
  produces per-token class logits (the stage's *semantic prior*) and whose gated output (``gamma``) replaces the
  stage's tokens;
- the Semantic-FPN decode head (Kirillov et al., panoptic FPN semantic branch) on the four normalised stage outputs,
  plus the parameter-free "semantic decoder" that sums the upsampled priors (supervised with weight 0.4).

Portable module: imports only torch, transformers and its sibling configuration module.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import PreTrainedModel
from transformers.models.swin.modeling_swin import SwinDropPath
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple

from .configuration_semask_swin import SeMaskSwinConfig, absolute_embedding_grid
from .configuration_utils_segmentation import validate_labels
from .modeling_linear import (
    HoldsInferenceWeights,
    InferenceWeights,
    OneDNNLinear,
    PackedInferenceConvolution,
    fold_batch_norm,
    onednn_linear,
    packed_convolution_dtype,
    set_inference_weights,
)
from .modeling_sdn import sdn_neck
from .modeling_utils_segmentation import (
    SegmentationModelDefaults,
    TransformerMLP,
    attention_function,
    check_backbone_stages,
    check_pixel_values,
    check_segmentation_labels,
    convolve_and_normalize,
    eager_attention,
    folded_output_projection,
    folded_query_projection,
    folds_attention_projections,
    init_conv_kaiming,
    init_norm_and_linear,
    layer_norm_linear,
    list_for_pipeline,
    pixel_cross_entropy,
    pixel_label_probability,
    recomputes_layer_norm,
    reshape_copy,
    resize_to,
    resolve_output_flags,
    select_hidden_states,
    upsampled_cross_entropy,
)


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SeMaskSwinModelOutput(ModelOutput):
    """Output of :class:`SeMaskSwinModel`.

    Args:
        last_hidden_state: normalised output of the last stage, ``(B, C_3, H/32, W/32)``.
        pooler_output: ``last_hidden_state`` averaged over space, ``(B, C_3)``.
        hidden_states: (on request) ``len(depths) + 1`` maps ``(B, C, H, W)``, transformers' ``SwinModel``
            convention (its ``reshaped_hidden_states``): the embedding output (the patch embedding, after its
            LayerNorm, ``(B, C_0, H/4, W/4)``), then the output of every stage after its patch merging (the next
            stage's input; the last stage has none). Not normalised by the stage LayerNorms (``last_hidden_state``
            is).
        semantic_priors: the semantic prior (pre-softmax class logits) of every stage, ``(B, K, H_i, W_i)``.
        attentions: window attention probabilities of every Swin block (eager attention only, on request).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    semantic_priors: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SeMaskSwinBackboneOutput(ModelOutput):
    """Output of :class:`SeMaskSwinBackbone`: ``BackboneOutput`` plus the semantic priors.

    Args:
        feature_maps: the ``out_features`` stages' outputs through their LayerNorms (original ``norm0..3``),
            ``(B, C_i, H_i, W_i)`` (``stem``: the embedding output, normalised by the patch embedding).
        semantic_priors: semantic priors of the same stages, ``(B, K, H_i, W_i)`` (None for ``stem``).
        hidden_states: (on request) one map per ``stage_names`` entry, transformers' ``SwinBackbone`` convention:
            the embedding output, then the output of every stage before its patch merging, not normalised.
        attentions: window attention probabilities (eager attention only, on request).
    """

    feature_maps: tuple[torch.FloatTensor, ...] | None = None
    semantic_priors: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SeMaskSemanticSegmenterOutput(ModelOutput):
    """Output of :class:`SeMaskSwinForSemanticSegmentation`.

    Args:
        loss: cross-entropy of ``logits`` plus ``semantic_loss_weight`` x cross-entropy of ``semantic_logits``, both
            upsampled to the label size (when ``labels`` are given).
        logits: Semantic-FPN class scores at 1/4 of the input size, ``(B, num_labels, ceil(H/4), ceil(W/4))``.
        semantic_logits: the semantic decoder's output (upsampled sum of the priors), same shape as ``logits``.
        hidden_states: the backbone's hidden states (on request): the embedding output and the four stage outputs,
            not normalised (:class:`SeMaskSwinBackboneOutput`), as transformers' UperNet returns its backbone's.
        semantic_priors: the backbone's four semantic priors (on request).
        attentions: window attention probabilities (eager attention only, on request).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    semantic_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    semantic_priors: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------------
# Tensor gymnastics (channels-last maps throughout the encoder)
# ----------------------------------------------------------------------------------------------------------------


def pad_to_multiple(hidden_states: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pads a ``(B, H, W, C)`` map on the right and bottom so that H and W are multiples of ``multiple``."""
    height, width = hidden_states.shape[1:3]
    # the integer ceil minus the size (not (m - h % m) % m): traced by torch.export, each side stays a short symbolic
    # expression through the stages (and positive operands only: ONNX's integer division truncates)
    pad_bottom = (height + multiple - 1) // multiple * multiple - height
    pad_right = (width + multiple - 1) // multiple * multiple - width
    # traced (torch.compile / torch.export) it always pads, maybe by 0: a branch on the size would fix it in the graph
    if torch.compiler.is_compiling() or pad_bottom or pad_right:
        hidden_states = F.pad(hidden_states, (0, 0, 0, pad_right, 0, pad_bottom))
    return hidden_states


def crop(hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The top-left ``height x width`` of a padded ``(B, H, W, C)`` map. ``narrow`` rather than slicing: traced by
    torch.export, the size is then exactly ``height``, where a slice's is ``min(H, height)``."""
    return hidden_states.narrow(1, 0, height).narrow(2, 0, width)


def window_partition(hidden_states: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(B, H, W, C)`` with H, W multiples of ``window_size`` -> ``(B, num_windows, window_size**2, C)``.

    Windows are numbered row-major over the grid of windows, tokens row-major inside a window.
    """
    batch_size, height, width, channels = hidden_states.shape
    # (B, H/w, w, W/w, w, C) -> (B, H/w, W/w, w, w, C)
    windows = hidden_states.view(
        batch_size, height // window_size, window_size, width // window_size, window_size, channels
    ).transpose(2, 3)
    num_windows = (height // window_size) * (width // window_size)
    return reshape_copy(windows, batch_size, num_windows, window_size * window_size, channels)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B, num_windows, window_size**2, C)`` -> ``(B, H, W, C)``."""
    batch_size, channels = windows.shape[0], windows.shape[-1]
    # (B, H/w, W/w, w, w, C) -> (B, H/w, w, W/w, w, C)
    hidden_states = windows.view(
        batch_size, height // window_size, width // window_size, window_size, window_size, channels
    ).transpose(2, 3)
    return reshape_copy(hidden_states, batch_size, height, width, channels)


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the ``((2w-1)**2, heads)`` relative position bias table for every (query, key) pair of a window,
    flattened to ``(w**4,)`` (Swin, Liu et al. 2021, Sec. 3.2)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")).flatten(
        1
    )  # (2, w*w)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)  # (w*w, w*w, 2)
    return (relative[..., 0] * (2 * window_size - 1) + relative[..., 1]).flatten()


def shifted_window_mask(
    padded_height: int, padded_width: int, window_size: int, shift_size: int, device: torch.device
) -> torch.Tensor:
    """Additive mask of the shifted-window attention, ``(num_windows, w*w, w*w)``: -100 between tokens that came
    from different regions of the cyclically shifted map, 0 otherwise (the value the original Swin code uses)."""

    def region_ids(length: int) -> torch.Tensor:
        # regions of the shifted axis: [0, L-w), [L-w, L-s), [L-s, L)
        positions = torch.arange(length, device=device)
        return (positions >= length - window_size).long() + (positions >= length - shift_size).long()

    region = region_ids(padded_height)[:, None] * 3 + region_ids(padded_width)[None, :]  # (Hp, Wp)
    region_windows = window_partition(region[None, :, :, None], window_size)[0, ..., 0]  # (num_windows, w*w)
    different_region = region_windows[:, :, None] != region_windows[:, None, :]
    return different_region.float() * -100.0


# ----------------------------------------------------------------------------------------------------------------
# Encoder modules
# ----------------------------------------------------------------------------------------------------------------


class SeMaskSwinPatchEmbeddings(nn.Module):
    """Non-overlapping ``patch_size`` conv patchify + LayerNorm (``use_patch_norm``). The image is zero-padded
    right/bottom to a multiple of the patch size first (as the original does). With ``use_absolute_embeddings`` a
    learned position embedding of the pre-training patch grid is resized bicubically to this input's grid and added
    after the norm (the original's ``ape``). Returns channels-last ``(B, H/4, W/4, C)``."""

    def __init__(self, config: SeMaskSwinConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.projection = nn.Conv2d(
            config.num_channels, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.norm = (
            nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps) if config.use_patch_norm else nn.Identity()
        )
        self.position_embeddings = None
        if config.use_absolute_embeddings:
            self.position_embeddings = nn.Parameter(torch.zeros(1, config.embed_dim, *absolute_embedding_grid(config)))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        pad_bottom = (height + self.patch_size - 1) // self.patch_size * self.patch_size - height  # pad_to_multiple
        pad_right = (width + self.patch_size - 1) // self.patch_size * self.patch_size - width
        if torch.compiler.is_compiling() or pad_bottom or pad_right:  # see pad_to_multiple
            pixel_values = F.pad(pixel_values, (0, pad_right, 0, pad_bottom))
        embeddings = self.norm(self.projection(pixel_values).permute(0, 2, 3, 1))  # (B, C, h, w) -> (B, h, w, C)
        if self.position_embeddings is not None:
            # resized even to its own grid, as the original does (bicubic at scale 1 returns the same values)
            position = F.interpolate(self.position_embeddings, size=embeddings.shape[1:3], mode="bicubic")
            embeddings = embeddings + position.permute(0, 2, 3, 1)
        return embeddings


def window_attention_mask(
    bias: torch.Tensor, shift_mask: torch.Tensor | None, windows: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The additive mask of ``windows`` = B x nW windows in ``dtype`` (the bias's by default): the relative position
    bias ``(heads, N, N)``, plus the shift mask ``(nW, N, N)`` of a shifted block, repeated per image (image-major like
    the windows): ``(1, heads, N, N)`` or ``(B*nW, heads, N, N)``.

    The two are cast before they are added, so the one full-size tensor is made in ``dtype`` (in bf16, the same values
    where the shift mask is 0; -100 + bias rounded differently where it masks, a weight of e^-100 either way), and a
    single image's mask is not repeated: at 512 x 512 the first stage's mask is 361 x 3 x 49 x 49, 10 MB in float32,
    and each fresh tensor of that size costs its page faults on every forward."""
    dtype = bias.dtype if dtype is None else dtype
    bias = bias.to(dtype)
    if shift_mask is None:
        return bias.unsqueeze(0)
    mask = shift_mask.to(dtype).unsqueeze(1) + bias.unsqueeze(0)  # (nW, heads, N, N)
    images = windows // shift_mask.shape[0]
    return mask if images == 1 else mask.repeat(images, 1, 1, 1)


class WindowAttentionFunction(torch.autograd.Function):
    """``softmax(q k^T scaling + bias [+ shift mask]) v`` over windows that keeps q, k and v for the backward pass
    and recomputes the probabilities there.

    With a bias that needs a gradient (the relative position bias), PyTorch's SDPA runs its math path on the CPU,
    which keeps copies of the scaled queries, the transposed keys and the values and the probabilities
    ``(B*nW, heads, N, N)``: N/d maps more than q, k and v (1.5 for Swin's 49-token windows of 32 channels). Here the
    forward pass runs the fused kernel (the bias does not need a gradient inside it) and keeps q, k and v, views of
    the fused projection; the backward pass recomputes the probabilities (one more ``q k^T`` product per window) and
    takes the softmax's gradient, which is also the bias's (summed over windows). The same values and gradients up to
    float rounding. ``query``/``key``/``value``: ``(B*nW, heads, N, d)``; ``bias``: ``(heads, N, N)``;
    ``shift_mask``: ``(nW, N, N)`` or None. Returns ``(B*nW, heads, N, d)``."""

    @staticmethod
    def forward(ctx, query, key, value, bias, shift_mask, scaling: float):
        ctx.save_for_backward(query, key, value, bias, shift_mask)
        ctx.scaling = scaling
        mask = window_attention_mask(bias, shift_mask, query.shape[0])
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        query, key, value, bias, shift_mask = ctx.saved_tensors
        heads, tokens = query.shape[1:3]
        scores = torch.matmul(query, key.transpose(-2, -1)).mul_(ctx.scaling).add_(bias)  # (B*nW, heads, N, N)
        if shift_mask is not None:
            # (B*nW, heads, N, N) -> (B, nW, heads, N, N): the shift mask broadcasts over the images
            scores.view(-1, shift_mask.shape[0], heads, tokens, tokens).add_(shift_mask.unsqueeze(1).to(bias.dtype))
        probs = torch.softmax(scores, dim=-1)
        del scores
        grad_value = torch.matmul(probs.transpose(-2, -1), grad_output)
        grad_probs = torch.matmul(grad_output, value.transpose(-2, -1))
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        del probs, grad_probs
        grad_query = torch.matmul(grad_scores, key).mul_(ctx.scaling)
        grad_key = torch.matmul(grad_scores.transpose(-2, -1), query).mul_(ctx.scaling)
        grad_bias = grad_scores.sum(0) if ctx.needs_input_grad[3] else None
        return grad_query, grad_key, grad_value, grad_bias, None, None


class SeMaskSwinWindowAttention(nn.Module):
    """(Shifted) window multi-head self-attention with relative position bias (Swin, Sec. 3.2), run through
    transformers' attention interface (SDPA by default; the bias and the shift mask are an additive mask). In a
    float32 training step with SDPA and no attention dropout it runs as :class:`WindowAttentionFunction` (the same
    values and gradients, the probabilities recomputed in the backward pass instead of kept; also in float64)."""

    def __init__(self, config: SeMaskSwinConfig, dim: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = config.window_size
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False

        self.qkv = OneDNNLinear(dim, dim * 3, bias=config.qkv_bias)
        self.proj = OneDNNLinear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * self.window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size), persistent=False)

    def recomputes_probabilities(self, query: torch.Tensor) -> bool:
        """Whether this forward runs as :class:`WindowAttentionFunction`: a float32/64 step that builds a graph (not
        under autocast), with SDPA (the other implementations return or need the probabilities) and no attention
        dropout."""
        return (
            torch.is_grad_enabled()
            and self.config._attn_implementation == "sdpa"
            and (self.attention_dropout == 0.0 or not self.training)
            and query.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled(query.device.type)
        )

    def relative_position_bias(self) -> torch.Tensor:
        tokens = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index]  # (N*N, heads)
        return bias.view(tokens, tokens, self.num_heads).permute(2, 0, 1)  # (heads, N, N)

    def forward(
        self, windows: torch.Tensor, shift_mask: torch.Tensor | None = None, projected: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``windows``: ``(B, num_windows, N, C)``, or with ``projected`` their qkv projection ``(B, num_windows, N,
        3C)`` (the block's training path); ``shift_mask``: ``(num_windows, N, N)`` or None. Returns ``(B,
        num_windows, N, C)`` and the attention probabilities ``(B*num_windows, heads, N, N)`` (eager attention only,
        else None)."""
        qkv = windows if projected else self.qkv(windows)
        batch_size, num_windows, tokens = qkv.shape[:3]
        channels = self.num_heads * self.head_dim
        # (B, nW, N, 3C) -> (3, B, nW, heads, N, d)
        qkv = qkv.view(batch_size, num_windows, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)
        bias = self.relative_position_bias()
        # Windows go to the batch axis, so q/k/v stay views of the fused projection: (B*nW, heads, N, d). The bias is
        # shared by all windows and broadcasts; the shift mask differs per window and is repeated per image (cheaper
        # than putting the windows on the head axis, which copies q, k, v and the output: 1.7x slower at batch 8).
        attention_shape = (batch_size * num_windows, self.num_heads, tokens, self.head_dim)
        query, key, value = (tensor.reshape(attention_shape) for tensor in (query, key, value))
        if self.recomputes_probabilities(query):
            attn_output = WindowAttentionFunction.apply(query, key, value, bias, shift_mask, self.scaling)
            # (B*nW, heads, N, d) -> (B*nW, N, heads, d) -> (B, nW, N, C)
            attn_output = attn_output.transpose(1, 2).reshape(batch_size, num_windows, tokens, channels)
            return self.proj(attn_output), None
        mask = window_attention_mask(bias, shift_mask, batch_size * num_windows, query.dtype)

        # the configured implementation; SDPA at CPU inference in bf16 as two bf16 products around an in-place
        # softmax (torch's CPU SDPA kernel is no faster in bf16 than in fp32: 361 x 3 windows of 49 tokens at 512,
        # 9.5-11.4 against 6.4-6.8 ms)
        attention_interface: Callable = attention_function(self.config, query, key, value)
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
        )
        # (B*nW, N, heads, d) -> (B, nW, N, C)
        attn_output = attn_output.reshape(batch_size, num_windows, tokens, channels)
        return self.proj(attn_output), attn_weights


class SeMaskSwinBlock(GradientCheckpointingLayer):
    """Swin Transformer block: ``x + DropPath(W-MSA(LN(x)))`` then ``x + DropPath(MLP(LN(x)))``. Odd blocks of a stage
    shift the windows by ``window_size // 2``. The normalised map is zero-padded to a multiple of the window. In
    training both LayerNorms run with the next linear layer (the qkv projection, ``fc1``) as
    :func:`layer_norm_linear`, their outputs recomputed in the backward pass."""

    def __init__(self, config: SeMaskSwinConfig, dim: int, num_heads: int, shift_size: int, drop_path_rate: float):
        super().__init__()
        self.window_size = config.window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = SeMaskSwinWindowAttention(config, dim, num_heads)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = SwinDropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = TransformerMLP(config, dim)

    def real_token_windows(
        self, height: int, width: int, padded_height: int, padded_width: int, device: torch.device
    ) -> torch.Tensor:
        """Which tokens of the (shifted) windows of a map padded from ``height x width`` are the map's: ``(1, nW,
        N, 1)`` booleans, False at the pad tokens."""
        real = torch.zeros(1, padded_height, padded_width, 1, dtype=torch.bool, device=device)
        real[:, :height, :width] = True
        if self.shift_size:
            real = torch.roll(real, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        return window_partition(real, self.window_size)

    def forward(
        self, hidden_states: torch.Tensor, shift_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``hidden_states``: ``(B, H, W, C)``; ``shift_mask`` from :func:`shifted_window_mask` (used by shifted
        blocks only)."""
        height, width = hidden_states.shape[1:3]
        shortcut = hidden_states
        # training: the LayerNorm runs with the qkv projection on the windows (layer_norm_linear, the LayerNorm's
        # output recomputed in the backward pass), after the zero padding of the un-normalised map
        projected = recomputes_layer_norm(self.norm1, self.attn.qkv, hidden_states)
        if not projected:
            hidden_states = self.norm1(hidden_states)
        hidden_states = pad_to_multiple(hidden_states, self.window_size)
        padded_height, padded_width = hidden_states.shape[1:3]
        if self.shift_size:
            hidden_states = torch.roll(hidden_states, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = window_partition(hidden_states, self.window_size)
        if projected:
            windows = layer_norm_linear(self.norm1, self.attn.qkv, windows)  # (B, nW, N, C) -> (B, nW, N, 3C)
            if (padded_height, padded_width) != (height, width):
                # the pad tokens' projection is the qkv bias, as for the zeros the original pads its normalised map
                # with (not the projection of LayerNorm(0))
                real = self.real_token_windows(height, width, padded_height, padded_width, windows.device)
                bias = self.attn.qkv.bias if self.attn.qkv.bias is not None else windows.new_zeros(())
                windows = torch.where(real, windows, bias)
        windows, attn_weights = self.attn(windows, shift_mask if self.shift_size else None, projected)
        hidden_states = window_reverse(self.proj_dropout(windows), self.window_size, padded_height, padded_width)
        if self.shift_size:
            hidden_states = torch.roll(hidden_states, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        hidden_states = shortcut + self.drop_path(crop(hidden_states, height, width))
        hidden_states = hidden_states + self.drop_path(self.mlp(hidden_states, norm=self.norm2))
        return hidden_states, attn_weights


class SeMaskSwinSemanticAttention(nn.Module):
    """Semantic Attention (paper Sec. 3.2, original ``SemanticAttention``), single head, on tokens ``y`` (N x C):

    ``prior = y Wq + bq`` (N x K class logits, the semantic prior), ``A = softmax(prior (y Wk + bk)^T)`` (single head,
    no scaling, no position bias), ``y' = y + gamma * Dropout(Linear_out(A Linear_v(y)))``. ``gamma`` starts at 0, so a
    fresh model is a plain Swin.
    Original names: ``mlp_cls_q`` / ``mlp_cls_k`` / ``mlp_v`` / ``mlp_res``.
    """

    def __init__(self, config: SeMaskSwinConfig, dim: int):
        super().__init__()
        self.class_query_proj = OneDNNLinear(dim, config.num_labels)
        self.class_key_proj = OneDNNLinear(dim, config.num_labels)
        self.value_proj = OneDNNLinear(dim, dim)
        self.out_proj = OneDNNLinear(dim, dim)
        self.dropout = nn.Dropout(config.semantic_dropout_prob)
        self.gamma = nn.Parameter(torch.zeros(1))

    def folded_projections(self, tokens: torch.Tensor) -> tuple[bool, bool]:
        """Which pairs of projections an inference forward on ``tokens`` folds (:func:`folds_attention_projections`):
        ``(query/key, value/output)``. The query/key pair when ``C < K``: the scores become C-channel products of the
        tokens themselves (:func:`folded_query_projection`) instead of K-channel ones, and the ``C x C`` queries are
        cheaper than the ``C x K`` keys. The value/output pair when there are more tokens than channels: one ``C x C``
        projection of the tokens less (:func:`folded_output_projection`) for a ``C^3`` weight product (always while
        compiling, where the token count is symbolic). At 512 x 512 the SeMask-T semantic layers take 2.61 instead of
        3.18 GMACs (the first stage's 0.75 instead of 1.05)."""
        layers = (self.class_query_proj, self.class_key_proj, self.value_proj, self.out_proj)
        if not folds_attention_projections(*layers):
            return False, False
        channels = self.value_proj.in_features
        many_tokens = torch.compiler.is_compiling() or tokens.shape[0] * tokens.shape[1] > channels
        return channels < self.class_query_proj.out_features, many_tokens

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``tokens``: ``(B', N, C)`` -> prior ``(B', N, K)``, updated tokens ``(B', N, C)`` (in the tokens' dtype:
        under autocast the update is added in float32 and rounded, like the blocks' residual sums), attention ``(B',
        N, N)``.

        Plain matmuls rather than the attention interface: queries/keys have K channels but values C, a single head
        and no scaling, for which PyTorch's SDPA has no fused CPU kernel (its fallback was 1.6x slower here; and with
        the folded C-channel queries its fused kernel was 1.1-3x slower than these matmuls), and flash/flex kernels do
        not apply."""
        prior = self.class_query_proj(tokens)
        fold_query, fold_output = self.folded_projections(tokens)
        if fold_query:
            query_weight, query_bias = folded_query_projection(self.class_query_proj, self.class_key_proj)
            scores = onednn_linear(tokens, query_weight, query_bias) @ tokens.transpose(1, 2)  # (B', N, N)
        else:
            scores = prior @ self.class_key_proj(tokens).transpose(1, 2)
        attn_weights = torch.softmax(scores, dim=-1)
        if fold_output:
            output_weight, output_bias = folded_output_projection(self.value_proj, self.out_proj)
            update = onednn_linear(attn_weights @ tokens, output_weight, output_bias)
        else:
            update = self.out_proj(attn_weights @ self.value_proj(tokens))
        updated = torch.addcmul(tokens, self.gamma, self.dropout(update))  # tokens + gamma * update
        return prior, updated.to(tokens.dtype), attn_weights


class SeMaskSwinSemanticLayer(nn.Module):
    """Semantic Layer closing each stage (original ``SWSeMaskBlock`` / ``SeMaskBlock``): LayerNorm, then the
    Semantic Attention modules, either inside non-overlapping windows (``"window"``: the normalised map is zero-padded
    to a multiple of the window and the pad tokens take part as keys, as in the original) or over the whole map
    (``"global"``). There is no residual from the un-normalised input: the output replaces the stage's tokens."""

    def __init__(self, config: SeMaskSwinConfig, dim: int, num_blocks: int, attention_type: str):
        super().__init__()
        self.window_size = config.semantic_window_size
        self.windowed = attention_type == "window"
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attentions = nn.ModuleList(SeMaskSwinSemanticAttention(config, dim) for _ in range(num_blocks))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """``(B, H, W, C)`` -> prior ``(B, H, W, K)``, tokens ``(B, H, W, C)``, attention probabilities."""
        batch_size, height, width, channels = hidden_states.shape
        tokens = self.norm(hidden_states)
        if self.windowed:
            tokens = pad_to_multiple(tokens, self.window_size)
            padded_height, padded_width = tokens.shape[1:3]
            # (B, nW, w*w, C) -> (B*nW, w*w, C)
            tokens = window_partition(tokens, self.window_size).flatten(0, 1)
        else:
            tokens = tokens.reshape(batch_size, 1, height * width, channels).flatten(0, 1)
        attentions = ()
        for attention in self.attentions:
            prior, tokens, attn_weights = attention(tokens)
            attentions += (attn_weights,)
        if self.windowed:
            tokens = window_reverse(
                tokens.unflatten(0, (batch_size, -1)), self.window_size, padded_height, padded_width
            )
            prior = window_reverse(prior.unflatten(0, (batch_size, -1)), self.window_size, padded_height, padded_width)
            tokens, prior = crop(tokens, height, width), crop(prior, height, width)
        else:
            tokens = tokens.view(batch_size, height, width, channels)
            prior = prior.view(batch_size, height, width, -1)
        return prior, tokens, attentions


class SeMaskSwinPatchMerging(nn.Module):
    """2x2 patch merging: zero-pad to even size, concatenate the four sub-grids in Swin's order
    ``[(0,0), (1,0), (0,1), (1,1)]`` (row offset first), LayerNorm(4C), Linear(4C -> 2C, no bias)."""

    def __init__(self, config: SeMaskSwinConfig, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=config.layer_norm_eps)
        self.reduction = OneDNNLinear(4 * dim, 2 * dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = pad_to_multiple(hidden_states, 2)
        batch_size, height, width, channels = hidden_states.shape
        # (B, H/2, 2 [row offset], W/2, 2 [col offset], C) -> (B, H/2, W/2, col offset, row offset, C)
        hidden_states = hidden_states.view(batch_size, height // 2, 2, width // 2, 2, channels).permute(
            0, 1, 3, 4, 2, 5
        )
        hidden_states = hidden_states.reshape(batch_size, height // 2, width // 2, 4 * channels)
        return layer_norm_linear(self.norm, self.reduction, hidden_states)


class SeMaskSwinStage(nn.Module):
    """One encoder stage: Swin blocks, the Semantic Layer, then patch merging (all but the last stage)."""

    def __init__(self, config: SeMaskSwinConfig, stage_index: int, drop_path_rates: list[float]):
        super().__init__()
        dim = config.embed_dim * 2**stage_index
        self.window_size = config.window_size
        self.shift_size = config.window_size // 2
        self.blocks = nn.ModuleList(
            SeMaskSwinBlock(
                config,
                dim,
                config.num_heads[stage_index],
                shift_size=0 if block_index % 2 == 0 else self.shift_size,
                drop_path_rate=drop_path_rates[block_index],
            )
            for block_index in range(config.depths[stage_index])
        )
        num_semantic_blocks = config.num_semantic_blocks[stage_index]
        self.semantic_layer = (
            SeMaskSwinSemanticLayer(config, dim, num_semantic_blocks, config.semantic_attention_types[stage_index])
            if num_semantic_blocks > 0
            else None
        )
        is_last = stage_index == len(config.depths) - 1
        self.downsample = None if is_last else SeMaskSwinPatchMerging(config, dim)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, tuple]:
        """``(B, H, W, C)`` -> stage output ``(B, H, W, C)``, prior ``(B, H, W, K)``, next stage input, attentions."""
        height, width = hidden_states.shape[1:3]
        shift_mask = None
        if any(block.shift_size for block in self.blocks):
            # integer ceil (no float division: exact, and symbolic under torch.export)
            padded_height = (height + self.window_size - 1) // self.window_size * self.window_size
            padded_width = (width + self.window_size - 1) // self.window_size * self.window_size
            shift_mask = shifted_window_mask(
                padded_height, padded_width, self.window_size, self.shift_size, hidden_states.device
            )
        attentions = ()
        for block in self.blocks:
            hidden_states, attn_weights = block(hidden_states, shift_mask)
            attentions += (attn_weights,)
        prior = None
        if self.semantic_layer is not None:
            prior, hidden_states, semantic_attentions = self.semantic_layer(hidden_states)
            attentions += semantic_attentions
        next_input = hidden_states if self.downsample is None else self.downsample(hidden_states)
        return hidden_states, prior, next_input, attentions


class SeMaskSwinEncoder(nn.Module):
    """The four stages and the LayerNorm applied to each stage output (original ``norm0..3``)."""

    def __init__(self, config: SeMaskSwinConfig):
        super().__init__()
        total_blocks = sum(config.depths)
        # stochastic depth rates as Python floats (no tensor ops: models are built on the meta device)
        rates = [config.drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]
        self.stages = nn.ModuleList()
        for stage_index, depth in enumerate(config.depths):
            start = sum(config.depths[:stage_index])
            self.stages.append(SeMaskSwinStage(config, stage_index, rates[start : start + depth]))
        self.norms = nn.ModuleList(
            nn.LayerNorm(config.embed_dim * 2**i, eps=config.layer_norm_eps) for i in range(len(config.depths))
        )

    def forward(self, embeddings: torch.Tensor) -> tuple[tuple, tuple, tuple, tuple]:
        """``(B, H/4, W/4, C)`` -> (stage outputs before the patch merging ``(B, H_i, W_i, C_i)``, stage outputs after
        it (the next stage's input; the last stage's own output), priors ``(B, K, H_i, W_i)``, attentions). The maps
        are channels-last and not normalised (:meth:`normalised_map`)."""
        hidden_states = embeddings
        stage_outputs, merged_outputs, priors, attentions = (), (), (), ()
        for stage in self.stages:
            stage_output, prior, hidden_states, stage_attentions = stage(hidden_states)
            stage_outputs += (stage_output,)
            merged_outputs += (hidden_states,)
            priors += (None if prior is None else prior.permute(0, 3, 1, 2),)
            attentions += stage_attentions
        return stage_outputs, merged_outputs, priors, attentions

    def normalised_map(self, index: int, stage_output: torch.Tensor) -> torch.Tensor:
        """Stage ``index``'s output ``(B, H, W, C)`` through its LayerNorm, as a ``(B, C, H, W)`` view: the map stays
        channels-last in memory, which the decode heads' convolutions run faster on, and no copy is made."""
        return self.norms[index](stage_output).permute(0, 3, 1, 2)


def embed_and_encode(
    embeddings: SeMaskSwinPatchEmbeddings, encoder: SeMaskSwinEncoder, pixel_values: torch.Tensor
) -> tuple[torch.Tensor, tuple, tuple, tuple, tuple]:
    """The patch embedding and the encoder. Returns the embedding output as a ``(B, C, H/4, W/4)`` view (the first
    hidden state) and the encoder's outputs (:meth:`SeMaskSwinEncoder.forward`). The encoder is fed that view
    permuted back to channels-last (the same memory and values), so the returned map is the tensor the outputs are
    computed from (``retain_grad`` on it gets a gradient, as on transformers' first hidden state)."""
    embedding_output = embeddings(pixel_values).permute(0, 3, 1, 2)
    return (embedding_output, *encoder(embedding_output.permute(0, 2, 3, 1)))


# ----------------------------------------------------------------------------------------------------------------
# Pretrained-model plumbing
# ----------------------------------------------------------------------------------------------------------------


class SeMaskSwinPreTrainedModel(SegmentationModelDefaults, PreTrainedModel):
    config: SeMaskSwinConfig
    base_model_prefix = "semask_swin"
    _no_split_modules = ["SeMaskSwinStage"]

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding, the module that turns pixels into tokens (Swin's ``patch_embeddings``)."""
        return next(module for module in self.modules() if isinstance(module, SeMaskSwinPatchEmbeddings))

    @torch.no_grad()
    def _init_weights(self, module):
        """The original init: trunc-normal(0.02) Linears with zero bias (this also overrides the semantic attention's
        own kaiming init, as the original backbone init does), relative position bias tables trunc-normal(0.02),
        LayerNorm 1/0, gamma 0, the patch embedding PyTorch's conv default (kaiming-uniform weight, bias uniform in
        +-1/sqrt(fan-in): the original's backbone init leaves convolutions alone; a zero bias made the tokens of
        zero-padded crop areas zero vectors, whose LayerNorm has no variance, and gradients of 1e9 on the first
        steps of a model trained from scratch), decode-head convs kaiming (fan-out, ReLU) with BN 1/0, classifier normal(0.01). Non-persistent buffers are
        rebuilt here."""
        std = self.config.initializer_range
        init_norm_and_linear(module, std)
        if isinstance(module, SeMaskSwinWindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=std)
            init.copy_(module.relative_position_index, relative_position_index(module.window_size))
        elif isinstance(module, SeMaskSwinSemanticAttention):
            init.zeros_(module.gamma)
        elif isinstance(module, SeMaskFPNConvModule):
            init_conv_kaiming(module.conv)
        elif isinstance(module, SeMaskFPNHead):
            init.normal_(module.classifier.weight, std=0.01)
            init.zeros_(module.classifier.bias)
        elif isinstance(module, SeMaskSwinPatchEmbeddings):
            init.kaiming_uniform_(module.projection.weight, a=math.sqrt(5))
            fan_in = module.projection.weight[0].numel()
            init.uniform_(module.projection.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
            if module.position_embeddings is not None:
                init.trunc_normal_(module.position_embeddings, std=std)

    def optimize_for_inference(self):
        """Prepares the dense layers (as on every family) and the Semantic-FPN head's conv modules once for CPU
        inference; returns the model (changed in place). Each conv module of the head runs as one oneDNN
        convolution with its BatchNorm folded into the weight and its ReLU as the convolution's post-op, the weight
        cast and packed once per product dtype (:meth:`SeMaskFPNConvModule.packed_dtype`): no pass over the map for
        the norm or the ReLU, no weight cast and reorder per call. The values move by the rounding of the folded
        weights; changed weights and statistics are prepared again, as the dense layers'. Costs a copy of the head's
        convolution weights per dtype (SeMask-T: 20 MB in float32, 10 MB in bfloat16) until
        :meth:`clear_inference_optimization`."""
        super().optimize_for_inference()
        set_inference_weights(self, SeMaskFPNConvModule)
        return self

    def clear_inference_optimization(self):
        """Undoes :meth:`optimize_for_inference`: drops the prepared weights; returns the model."""
        super().clear_inference_optimization()
        set_inference_weights(self, SeMaskFPNConvModule, enabled=False)
        return self


class SeMaskSwinModel(SeMaskSwinPreTrainedModel):
    """The bare SeMask-Swin encoder (the original ``SeMaskSwinTransformer``): patch embedding, four stages each
    closed by a Semantic Layer, and a LayerNorm on each stage output (the model uses the last one, for
    ``last_hidden_state``; :class:`SeMaskSwinBackbone` those of its ``out_features``)."""

    def __init__(self, config: SeMaskSwinConfig):
        super().__init__(config)
        self.embeddings = SeMaskSwinPatchEmbeddings(config)
        self.encoder = SeMaskSwinEncoder(config)
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> SeMaskSwinModelOutput:
        output_hidden_states, output_attentions = resolve_output_flags(self.config, kwargs)
        with eager_attention(self.config, output_attentions):
            embedding_output, stage_outputs, merged_outputs, priors, attentions = embed_and_encode(
                self.embeddings, self.encoder, pixel_values
            )
        last_hidden_state = self.encoder.normalised_map(len(stage_outputs) - 1, stage_outputs[-1])
        hidden_states = None
        if output_hidden_states:
            # SwinModel's: the embedding output, then every stage's output after its patch merging
            hidden_states = (embedding_output, *(merged.permute(0, 3, 1, 2) for merged in merged_outputs))
            hidden_states = select_hidden_states(hidden_states, kwargs.get("output_hidden_states"))
        output = SeMaskSwinModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=last_hidden_state.mean(dim=(2, 3)),
            hidden_states=hidden_states,
            semantic_priors=priors,
            attentions=attentions if output_attentions else None,
        )
        return output


class SeMaskSwinBackbone(BackboneMixin, SeMaskSwinPreTrainedModel):
    """SeMask-Swin as a transformers backbone: ``feature_maps`` (strides 4/8/16/32) of the ``out_features`` stages
    plus their ``semantic_priors``; ``hidden_states`` as transformers' ``SwinBackbone`` (one per ``stage_names``
    entry: the embedding output, then each stage's output before its patch merging). Module names equal
    :class:`SeMaskSwinModel`'s."""

    def __init__(self, config: SeMaskSwinConfig):
        super().__init__(config)
        self.num_features = [config.embed_dim] + [config.embed_dim * 2**i for i in range(len(config.depths))]
        self.embeddings = SeMaskSwinPatchEmbeddings(config)
        self.encoder = SeMaskSwinEncoder(config)
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> SeMaskSwinBackboneOutput:
        output_hidden_states, output_attentions = resolve_output_flags(self.config, kwargs)
        with eager_attention(self.config, output_attentions):
            embedding_output, stage_outputs, _, priors, attentions = embed_and_encode(
                self.embeddings, self.encoder, pixel_values
            )
        feature_maps, selected_priors = (), ()
        for name in self.out_features:
            # stage_names[0] is the stem (the embedding output, already normalised): stage i is encoder output i - 1
            index = self.stage_names.index(name)
            if index == 0:
                feature_maps += (embedding_output,)
                selected_priors += (None,)
            else:
                feature_maps += (self.encoder.normalised_map(index - 1, stage_outputs[index - 1]),)
                selected_priors += (priors[index - 1],)
        hidden_states = None
        if output_hidden_states:
            # SwinBackbone's: the embedding output, then every stage's output before its patch merging
            hidden_states = (embedding_output, *(stage_output.permute(0, 3, 1, 2) for stage_output in stage_outputs))
            hidden_states = select_hidden_states(hidden_states, kwargs.get("output_hidden_states"))
        output = SeMaskSwinBackboneOutput(
            feature_maps=feature_maps,
            semantic_priors=selected_priors,
            hidden_states=hidden_states,
            attentions=attentions if output_attentions else None,
        )
        return output


# ----------------------------------------------------------------------------------------------------------------
# Semantic-FPN decode head and the semantic decoder
# ----------------------------------------------------------------------------------------------------------------


class SeMaskFPNConvModule(HoldsInferenceWeights, nn.Module):
    """3x3 conv (no bias) -> BatchNorm -> ReLU (mmcv ``ConvModule``; SyncBN in the original multi-GPU training)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(out_channels)
        # in place, as mmcv's: BatchNorm's backward reads its input, not its output, so training keeps one map of
        # the two
        self.activation = nn.ReLU(inplace=True)
        #: set by :meth:`SeMaskSwinPreTrainedModel.optimize_for_inference` (None: off; its preparations
        #: :class:`PackedInferenceConvolution`); not a parameter or a buffer
        self.inference_weights: InferenceWeights | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = self.packed_dtype(hidden_states)
        if dtype is None:
            return self.activation(convolve_and_normalize(self.conv, self.batch_norm, hidden_states))
        conv, norm = self.conv, self.batch_norm
        # num_batches_tracked: a train-mode forward updates the running statistics without bumping their versions
        statistics = (norm.running_mean, norm.running_var, norm.num_batches_tracked)
        sources = (conv.weight, conv.bias, norm.weight, norm.bias, *statistics, norm.eps)
        packed = self.inference_weights.prepared(
            dtype,
            sources,
            lambda: PackedInferenceConvolution(
                *fold_batch_norm(conv.weight, conv.bias, norm),
                conv.groups,
                dtype,
                stride=conv.stride,
                padding=conv.padding,
                activation="relu",
            ),
        )
        return packed(hidden_states.to(dtype))

    def packed_dtype(self, hidden_states: torch.Tensor) -> torch.dtype | None:
        """The product dtype in which the module runs as one convolution prepared once (optimised for inference:
        :meth:`SeMaskSwinPreTrainedModel.optimize_for_inference`): the BatchNorm folded into the weight and bias,
        both cast and packed for oneDNN, the ReLU its post-op; or None where it runs module by module. Prepared: an
        eval-mode ``nn.BatchNorm2d`` with running statistics, an ``nn.ReLU``, and what
        :func:`packed_convolution_dtype` asks of the convolution and of the hooks. The values move by the rounding
        of the folded weights (float32: about 1e-7 relative; under bfloat16 autocast the folded weights are rounded
        to bfloat16, where the module rounds the convolution's output before normalising it)."""
        norm = self.batch_norm
        if self.inference_weights is None or type(norm) is not nn.BatchNorm2d or type(self.activation) is not nn.ReLU:
            return None
        if norm.training or norm.running_mean is None:
            return None
        return packed_convolution_dtype(hidden_states, self.conv, norm, self.activation)


def upsample2x(hidden_states: torch.Tensor) -> torch.Tensor:
    """``nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)``."""
    return F.interpolate(hidden_states, scale_factor=2.0, mode="bilinear", align_corners=False)


def upsample2x_by_transposed_convolution(hidden_states: torch.Tensor) -> torch.Tensor:
    """:func:`upsample2x` as a depth-wise transposed convolution (for traced graphs, see :func:`semantic_decoder`).

    With ``align_corners=False``, output pixel ``2i`` along a side is ``0.25 x[i-1] + 0.75 x[i]`` and ``2i+1`` is
    ``0.75 x[i] + 0.25 x[i+1]``, the border pixel repeated outside the map. So: replicate-pad by one pixel, a stride-2
    transposed convolution with the separable kernel ``[1, 3, 3, 1] / 4`` per axis (padding 1: ``2n + 4`` pixels from
    ``n + 2``), and the two outer pixels of every side cropped. Computed in the input's dtype (also under autocast,
    as the resizing it stands for). ``(B, C, h, w)`` -> ``(B, C, 2h, 2w)``."""
    channels, height, width = hidden_states.shape[1:]
    with torch.autocast(device_type=hidden_states.device.type, enabled=False):
        taps = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=hidden_states.dtype, device=hidden_states.device)
        # (4,) x (4,) -> (C, 1, 4, 4): one kernel per channel
        kernel = (taps[:, None] * taps[None, :]).expand(channels, 1, 4, 4)
        padded = hidden_states
        for dim, length in ((2, height), (3, width)):
            # the border pixels repeated (F.pad's "replicate" mode, whose traced backward fails on channels-last
            # maps in torch 2.14: its fake kernel gives other strides than the kernel)
            first, last = padded.narrow(dim, 0, 1), padded.narrow(dim, length - 1, 1)
            padded = torch.cat([first, padded, last], dim=dim)
        upsampled = F.conv_transpose2d(padded, kernel, stride=2, padding=1, groups=channels)
    return upsampled.narrow(2, 2, 2 * height).narrow(3, 2, 2 * width)


class SeMaskFPNScaleHead(nn.Module):
    """Scale head of Semantic FPN for a stride-``4 * 2**level`` map: ``max(1, level)`` times [conv module, then a 2x
    bilinear upsampling when ``level > 0``]. Original keys ``scale_heads.{level}.{2k}`` are ``convs.{k}`` here."""

    def __init__(self, in_channels: int, channels: int, level: int):
        super().__init__()
        self.upsample = level > 0
        self.convs = nn.ModuleList(
            SeMaskFPNConvModule(in_channels if k == 0 else channels, channels) for k in range(max(1, level))
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            hidden_states = conv(hidden_states)
            if self.upsample:
                hidden_states = upsample2x(hidden_states)
        return hidden_states


class SeMaskFPNHead(nn.Module):
    """Semantic-FPN decode head (Kirillov et al., "Panoptic Feature Pyramid Networks", 2019; original
    ``BranchFPNHead``): each level's scale head brings its map to stride 4, the maps are summed, then Dropout2d and a
    1x1 classifier (original ``conv_seg``)."""

    def __init__(self, config: SeMaskSwinConfig, in_channels: list[int]):
        super().__init__()
        self.scale_heads = nn.ModuleList(
            SeMaskFPNScaleHead(channels, config.decoder_hidden_size, level)
            for level, channels in enumerate(in_channels)
        )
        self.dropout = nn.Dropout2d(config.classifier_dropout_prob)
        self.classifier = nn.Conv2d(config.decoder_hidden_size, config.num_labels, kernel_size=1)

    def forward(self, feature_maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        fused = self.scale_heads[0](feature_maps[0])
        for scale_head, feature_map in zip(self.scale_heads[1:], feature_maps[1:]):
            # not in place: the first map is a ReLU's output, which its backward pass reads
            fused = fused + resize_to(scale_head(feature_map), fused.shape[-2:])
        return self.classifier(self.dropout(fused))


def semantic_decoder(priors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The parameter-free "lightweight semantic decoder" (paper Sec. 3.3): the prior of level ``i`` is upsampled 2x
    (bilinear) ``i`` times, resized to the stride-4 prior's size and all four are summed -> ``(B, K, H/4, W/4)``.

    Traced (torch.compile, torch.export), each 2x step is :func:`upsample2x_by_transposed_convolution`, the same
    values up to float rounding: inductor fuses a chain of bilinear resizings into one kernel that recomputes every
    earlier step for each output pixel (64 reads per pixel of the level-3 prior), with scalar gathers from the
    channels-last priors. For SeMask-T FPN at 512x512 that one kernel took 116 of a compiled forward's 743 ms on 2
    CPU threads (eager: 583 ms); a convolution's output is materialised."""
    upsample = upsample2x_by_transposed_convolution if torch.compiler.is_compiling() else upsample2x
    semantic_logits = priors[0]
    for level, prior in enumerate(priors[1:], start=1):
        for _ in range(level):
            prior = upsample(prior)
        semantic_logits = semantic_logits + resize_to(prior, semantic_logits.shape[-2:])
    return semantic_logits


def ohem_pixel_weights(
    scores: torch.Tensor, labels: torch.Tensor, ignore_index: int, min_kept: int, threshold: float | None = None
) -> torch.Tensor:
    """mmseg's ``OHEMPixelSampler``: weight 1 for the hard valid pixels, 0 elsewhere. ``threshold`` None: ``scores``
    are the pixels' cross-entropy at label size (:func:`pixel_cross_entropy`), and the ``min_kept * B`` highest are
    kept. Else ``scores`` are the predicted probabilities of the pixels' labels (:func:`pixel_label_probability`),
    and the pixels below the larger of ``threshold`` and the ``min_kept * B``-th lowest probability (the highest,
    with fewer valid pixels) are kept. ``scores`` and ``labels`` ``(B, H, W)``."""
    with torch.no_grad():
        valid = labels != ignore_index
        valid_scores = scores[valid]
        valid_weights = torch.zeros_like(valid_scores)
        if threshold is None:
            keep = min(min_kept * labels.shape[0], valid_scores.numel())
            valid_weights[valid_scores.topk(keep).indices] = 1.0
        elif valid_scores.numel():
            kth_lowest = valid_scores.sort().values[min(min_kept * labels.shape[0], valid_scores.numel() - 1)]
            valid_weights[valid_scores < torch.clamp(kth_lowest, min=threshold)] = 1.0
        weights = torch.zeros_like(scores)
        weights[valid] = valid_weights
    return weights


class SeMaskSwinForSemanticSegmentation(SeMaskSwinPreTrainedModel):
    """SeMask-Swin + Semantic-FPN (the released SeMask-FPN models). ``logits`` at 1/4 of the input size; with
    ``labels`` ``(B, H, W)`` (255 = ignore) the loss is CE(logits) [+ OHEM] + ``semantic_loss_weight`` x
    CE(semantic_logits), both bilinearly upsampled to the label size."""

    def __init__(self, config: SeMaskSwinConfig):
        super().__init__(config)
        validate_labels(config, per_pixel_softmax="SeMaskSwinForSemanticSegmentation")
        self.backbone = SeMaskSwinBackbone(config)
        # the Semantic-FPN head and its semantic decoder take four stages, each with its semantic layer (before: a
        # model built from a default config, whose out_features is the last stage only, failed in its first forward)
        check_backbone_stages("SeMaskSwinForSemanticSegmentation", self.backbone.out_features, 4)
        if not all(config.num_semantic_blocks):
            raise ValueError(
                f"SeMaskSwinForSemanticSegmentation: SeMaskSwinConfig.num_semantic_blocks = "
                f"{config.num_semantic_blocks}; expected at least one semantic block in every stage (the semantic "
                "decoder reads every stage's semantic prior)"
            )
        self.neck = sdn_neck(config, self.backbone.channels)  # None unless config.use_sdn_neck
        self.decode_head = SeMaskFPNHead(config, in_channels=self.backbone.channels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_semantic_priors: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SeMaskSemanticSegmenterOutput:
        # the Semantic-FPN head's last BatchNorms normalise the stride-32 map
        check_pixel_values(pixel_values, self.config.num_channels, labels, model=self, batch_norm_stride=32)
        output_hidden_states, output_attentions = resolve_output_flags(self.config, kwargs)
        backbone_output = self.backbone(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=kwargs.get("output_hidden_states") or output_hidden_states,
            return_dict=True,
        )
        # four stages with semantic priors: checked when the model was built
        feature_maps, priors = backbone_output.feature_maps, backbone_output.semantic_priors
        if self.neck is not None:
            feature_maps = self.neck(feature_maps)
        logits = self.decode_head(feature_maps)
        semantic_logits = semantic_decoder(priors)

        loss = None
        if labels is not None:
            loss = self.compute_loss(logits, semantic_logits, labels)

        output = SeMaskSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            semantic_logits=semantic_logits,
            hidden_states=backbone_output.hidden_states,
            semantic_priors=priors if output_semantic_priors else None,
            attentions=backbone_output.attentions,
        )
        return output

    def compute_loss(self, logits: torch.Tensor, semantic_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CE(logits) [with OHEM] + ``semantic_loss_weight`` x CE(semantic_logits), both upsampled to the labels."""
        ignore_index = self.config.loss_ignore_index
        labels = check_segmentation_labels(labels, self.config.num_labels, ignore_index)
        pixel_weights = None
        if self.config.use_ohem:
            threshold = self.config.ohem_threshold
            scores = (pixel_cross_entropy if threshold is None else pixel_label_probability)(
                logits, labels, ignore_index
            )
            pixel_weights = ohem_pixel_weights(scores, labels, ignore_index, self.config.ohem_min_kept, threshold)
        mean_all = self.config.loss_mean_over_all_pixels
        loss = upsampled_cross_entropy(logits, labels, ignore_index, mean_all, pixel_weights)
        semantic_loss = upsampled_cross_entropy(semantic_logits, labels, ignore_index, mean_all)
        return loss + self.config.semantic_loss_weight * semantic_loss


list_for_pipeline("semantic-segmentation", SeMaskSwinForSemanticSegmentation)


__all__ = [
    "SeMaskSwinPreTrainedModel",
    "SeMaskSwinModel",
    "SeMaskSwinBackbone",
    "SeMaskSwinForSemanticSegmentation",
    "SeMaskSwinModelOutput",
    "SeMaskSwinBackboneOutput",
    "SeMaskSemanticSegmenterOutput",
]
