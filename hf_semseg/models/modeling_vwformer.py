"""VWFormer (Yan et al., "Multi-Scale Representations by Varying Window Attention for Semantic Segmentation",
ICLR 2024, arXiv 2404.16573): a decode head that learns multi-scale representations with varying window attention
(VWA) over any hierarchical backbone.

The head follows the original code (yan-hao-tian/VW, ``mmsegmentation-custom/mmseg/models/decode_heads/vw_head.py``,
classes ``VWHead`` and ``VWCityHead``) module for module, so converted checkpoints give the original's outputs:

1. multi-layer aggregation: the stride 8/16/32 maps are projected to ``C`` channels, brought to stride 8 and fused;
2. multi-scale representations (paper Sec. 3.2-3.3): a 1x1 short path, a global pooling branch (``vw`` head only) and
   one VWA branch per enlarging ratio ``R`` (2, 4, 8). The fused map is split into an 8x8 grid of ``P x P`` query
   windows; each query window attends to an ``RP x RP`` context window centred on it. The context is first embedded by
   a densely overlapping ``R x R`` convolution that divides the channels by ``R**2`` (pre-scaling, "DOPE"), padded by
   copying the content next to the border (copy-shift padding, "CSP"), cut into windows and folded space-to-depth
   into ``P x P`` tokens of ``C`` channels, so every branch costs what plain ``P x P`` window attention costs;
3. low-level enhancement: the fused result is upsampled to stride 4 and fused with a 48-channel projection of the
   stride-4 map before the classifier. ``logits`` are at 1/4 of the input size.

Window partition, context windows and space-to-depth are reshapes and strided views (no loop over windows);
attention goes through ``ALL_ATTENTION_FUNCTIONS`` (SDPA by default). Unlike the original, which raises unless the
input height and width are multiples of 64, any size works: see :meth:`VWFormerMultiScaleBlock.forward`.

Portable remote code: imports torch, transformers and this package's SeMask-Swin and Pale backbones (from their family
folders inside the package, from the copies saved next to this file otherwise).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoBackbone, ConvNextBackbone, SegformerModel, SwinBackbone
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple

from .configuration_utils_segmentation import validate_labels
from .configuration_vwformer import VWFormerConfig
from .modeling_linear import OneDNNLinear, calls_hooks, onednn_linear
from .modeling_pale import PaleBackbone
from .modeling_sdn import sdn_neck
from .modeling_semask_swin import SeMaskSwinBackbone
from .modeling_utils_segmentation import (
    SegmentationModelDefaults,
    attention_function,
    batch_norm_scale_and_shift,
    batch_norm_statistics_updated_once,
    check_batch_norm_batch,
    check_pixel_values,
    convolve_and_normalize,
    decode_with_auxiliary_head,
    fcn_auxiliary_head,
    folded_output_projection,
    folded_query_projection,
    folds_attention_projections,
    folds_into_previous_layer,
    init_conv_kaiming,
    init_norm_and_linear,
    list_for_pipeline,
    reshape_copy,
    resolve_output_flags,
    segmentation_loss,
    select_hidden_states,
)


@dataclass
class VWFormerSemanticSegmenterOutput(ModelOutput):
    r"""Output of :class:`VWFormerForSemanticSegmentation`.

    Args:
        loss: cross-entropy of ``logits`` upsampled to the label size (+ ``auxiliary_loss_weight`` x that of
            ``auxiliary_logits``), when ``labels`` are given.
        logits: class scores at 1/4 of the input size, ``(B, num_labels, H/4, W/4)``.
        auxiliary_logits: scores of the FCN auxiliary head at 1/16 of the input size, when the model has one.
        hidden_states: the backbone's hidden states, when ``output_hidden_states=True`` (as UperNet: for a backbone
            model its embedding output and stage outputs; for the MiT encoder its four stage outputs).
        attentions: the backbone's attention probabilities, when ``output_attentions=True`` (as UperNet; None for a
            backbone without them, e.g. ConvNeXt).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    auxiliary_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# --------------------------------------------------------------------------------------------------------------------
# Tensor gymnastics
# --------------------------------------------------------------------------------------------------------------------


def window_partition(channels_last: torch.Tensor, num_windows: int) -> torch.Tensor:
    """``(B, nh*ph, nw*pw, C)`` -> ``(B*nh*nw, ph*pw, C)``: windows in row-major order, batch outermost."""
    batch_size, height, width, channels = channels_last.shape
    window_height, window_width = height // num_windows, width // num_windows
    # (B, nh, ph, nw, pw, C) -> (B, nh, nw, ph, pw, C)
    windows = channels_last.view(batch_size, num_windows, window_height, num_windows, window_width, channels)
    windows = windows.permute(0, 1, 3, 2, 4, 5)
    return reshape_copy(windows, batch_size * num_windows * num_windows, window_height * window_width, channels)


def window_reverse(windows: torch.Tensor, num_windows: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B*nh*nw, ph*pw, C)`` -> ``(B, nh*ph, nw*pw, C)``."""
    channels = windows.shape[-1]
    window_height, window_width = height // num_windows, width // num_windows
    batch_size = windows.shape[0] // (num_windows * num_windows)
    # (B, nh, nw, ph, pw, C) -> (B, nh, ph, nw, pw, C)
    windows = windows.view(batch_size, num_windows, num_windows, window_height, window_width, channels)
    return reshape_copy(windows.permute(0, 1, 3, 2, 4, 5), batch_size, height, width, channels)


def copy_shift_pad(context: torch.Tensor, ratio: int, window_height: int, window_width: int) -> torch.Tensor:
    """Copy-shift padding (CSP, paper Sec. 3.3) of a ``(B, c, h, w)`` map, width first, then height.

    Each side grows by ``R*P - (R+1)*P // 2`` columns (rows), copied from the map's own content next to that border
    (the columns ``[(R+1)P//2, RP)`` on the left, the mirror range on the right): no zeros enter the context windows.
    The integer arithmetic is the original's, which matters for odd ``P``.
    """
    # narrow with non-negative starts (the slices [start:end] and [-end:-start]): traced by torch.export the sizes
    # stay exact and ONNX gets no negative symbolic bounds
    width_start, width_end = (ratio + 1) * window_width // 2, ratio * window_width
    width = context.shape[3]
    context = torch.cat(
        [
            context.narrow(3, width_start, width_end - width_start),
            context,
            context.narrow(3, width - width_end, width_end - width_start),
        ],
        dim=3,
    )
    height_start, height_end = (ratio + 1) * window_height // 2, ratio * window_height
    height = context.shape[2]
    return torch.cat(
        [
            context.narrow(2, height_start, height_end - height_start),
            context,
            context.narrow(2, height - height_end, height_end - height_start),
        ],
        dim=2,
    )


def context_windows(padded: torch.Tensor, ratio: int, num_windows: int, window_height: int, window_width: int):
    """Cut the copy-shift-padded ``(B, c, H', W')`` map into the ``RP x RP`` context window of every query window and
    fold each window space-to-depth into ``P x P`` tokens of ``R*R*c`` channels.

    Window ``(i, j)`` starts at ``(i*ph, j*pw)``, as ``F.unfold(kernel=(R*ph, R*pw), stride=(ph, pw))`` in the original
    (of which only the first ``num_windows`` per side exist there). Context pixel ``(y*R + rh, x*R + rw)`` of a window
    becomes token ``(y, x)``, channel ``(rh*R + rw)*c + k`` (einops ``b c (ph rh) (pw rw) -> b (rh rw c) ph pw``).

    Returns ``(B*nh*nw, ph*pw, R*R*c)``.
    """
    batch_size, channels = padded.shape[:2]
    if torch.compiler.is_compiling():
        # traced (torch.compile / torch.export): the first nh x nw windows gathered by index, rows i*ph + [0, R*ph)
        # and columns j*pw + [0, R*pw), since the exported unfold fixes its window count at the traced size:
        # (B, c, nh*R*ph, nw*R*pw) -> (B, c, nh, ph, rh, nw, pw, rw) -> (B, nh, nw, ph, pw, rh, rw, c)
        device = padded.device
        windows_index = torch.arange(num_windows, device=device)[:, None]
        rows = (windows_index * window_height + torch.arange(ratio * window_height, device=device)).flatten()
        columns = (windows_index * window_width + torch.arange(ratio * window_width, device=device)).flatten()
        windows = padded.index_select(2, rows).index_select(3, columns)
        windows = windows.reshape(
            batch_size, channels, num_windows, window_height, ratio, num_windows, window_width, ratio
        ).permute(0, 2, 5, 3, 6, 4, 7, 1)
    else:
        # eager: strided views, no copy before the final one (4-9x faster than the gather on the CPU):
        # (B, c, nh', nw', R*ph, R*pw), the first nh x nw windows -> (B, c, nh, nw, ph, rh, pw, rw)
        # -> (B, nh, nw, ph, pw, rh, rw, c)
        windows = padded.unfold(2, ratio * window_height, window_height).unfold(3, ratio * window_width, window_width)
        windows = windows[:, :, :num_windows, :num_windows]
        windows = windows.reshape(
            batch_size, channels, num_windows, num_windows, window_height, ratio, window_width, ratio
        ).permute(0, 2, 3, 4, 6, 5, 7, 1)
    return reshape_copy(
        windows, batch_size * num_windows * num_windows, window_height * window_width, ratio * ratio * channels
    )


def convolution_splits_over_inputs(conv: nn.Module) -> bool:
    """Whether the convolution of a channel concatenation may run as the sum of each part's convolution with its slice
    of the kernel: a plain 1x1 ``nn.Conv2d`` without bias (not a quantised or adapted layer with a forward of its
    own) and without hooks (:func:`calls_hooks`: split, it is never called)."""
    return type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.bias is None and not calls_hooks(conv)


@dataclass
class WindowTokenMap:
    """A ``(B, C, h, w)`` map given as the window tokens a dense layer makes it from, plus an optional map:
    ``window_reverse(tokens W^T + b) + residual`` (an attention branch before its output projection, with its
    short-cut), a part of :func:`convolve_concatenation`."""

    tokens: torch.Tensor  # (B*nh*nw, ph*pw, C_in)
    weight: torch.Tensor  # (C, C_in)
    bias: torch.Tensor | None
    num_windows: int
    residual: torch.Tensor | None = None  # (B, C, h, w)

    def as_map(self, size: tuple[int, int]) -> torch.Tensor:
        """The ``(B, C, h, w)`` map itself."""
        tokens = onednn_linear(self.tokens, self.weight, self.bias)
        output = window_reverse(tokens, self.num_windows, *size).permute(0, 3, 1, 2)
        return output if self.residual is None else output + self.residual


def convolve_concatenation(
    conv: nn.Module, parts: list[torch.Tensor | WindowTokenMap], resizes: list[str | None], size: tuple[int, int]
) -> torch.Tensor:
    """``conv`` (a 1x1 convolution) of the channel concatenation of ``parts``, each first brought to ``size`` as its
    entry of ``resizes`` says: ``None`` (already that size), ``"nearest"`` or ``"bilinear"`` (``align_corners=False``)
    resizing, or ``"broadcast"`` (a ``(B, c, 1, 1)`` map, the same at every pixel). A part may also be a
    :class:`WindowTokenMap` at ``size`` (entry ``None``): its kernel slice then folds into its dense layer, one
    dense layer of its tokens (the slices of all such parts summed in token order, put into map order once), and
    convolves its residual (once per residual map, with the sum of the slices of the parts that share it).

    Where :func:`convolution_splits_over_inputs`, it runs as the sum of each part's convolution with its slice of
    the kernel, resized after it: a 1x1 convolution mixes channels and a resizing mixes pixels of one channel, both
    linear, so they commute. Each part is thus convolved at its own size (a broadcast part on its single pixel, a
    per-image term), and neither the resized maps nor their concatenation is made: the original's
    resize-concatenate-convolve up to float rounding. The sum is accumulated in place in a fresh map (neither a
    convolution nor a resizing keeps its output for the backward pass). Any other layer gets the concatenation
    itself. The resizings are the caller's to state, not decided by comparing sizes, so that a traced graph holds no
    comparison of symbolic sizes.
    """
    if not convolution_splits_over_inputs(conv):
        maps = [part.as_map(size) if isinstance(part, WindowTokenMap) else part for part in parts]
        return conv(torch.cat([resize_map(part, how, size) for part, how in zip(maps, resizes)], dim=1))
    channels = [part.weight.shape[0] if isinstance(part, WindowTokenMap) else part.shape[1] for part in parts]
    kernels = conv.weight.split(channels, dim=1)
    terms = []
    windows = None  # the window-token parts' share, summed over them in token order
    # [a residual map, the sum of its parts' kernel slices]: one convolution per map, found by identity (a scan,
    # not id(): torch 2.12's torch.compile breaks its graph on id() of a tensor)
    residuals = []
    narrow_parts = []  # (part, kernel): added into the sum in place (accumulates_in_place)
    for part, kernel, how in zip(parts, kernels, resizes):
        if isinstance(part, WindowTokenMap):
            # the kernel slice after the part's dense layer: one dense layer, (kernel W, kernel b)
            share = onednn_linear(part.tokens, *dense_after_dense(kernel.flatten(1), part))
            windows = share if windows is None else windows.add_(share)
            num_windows = part.num_windows
            if part.residual is not None:
                for entry in residuals:
                    if entry[0] is part.residual:
                        entry[1] = entry[1] + kernel
                        break
                else:
                    residuals.append([part.residual, kernel])
        elif accumulates_in_place(part, kernel, how):
            narrow_parts.append((part, kernel))
        else:
            terms.append((F.conv2d(part, kernel), how))
    terms += [(F.conv2d(residual, kernel), None) for residual, kernel in residuals]
    if windows is None and not terms:  # narrow parts only: the first one's convolution is the map to add into
        terms.append((F.conv2d(*narrow_parts.pop(0)), None))
    if windows is not None:
        # (B*nh*nw, ph*pw, C_out) -> (B, C_out, h, w), channels-last view
        terms.insert(0, (window_reverse(windows, num_windows, *size).permute(0, 3, 1, 2), None))
    # the per-image terms last: they are added to the full-size sum by broadcasting
    terms.sort(key=lambda term: term[1] == "broadcast")
    total = resize_map(*terms[0], size)
    if terms[0][1] == "broadcast":  # broadcast parts only: a map of its own to add into
        total = total.contiguous()
    for term, how in terms[1:]:
        total = total.add_(term if how == "broadcast" else resize_map(term, how, size))
    for part, kernel in narrow_parts:
        if not (total.is_contiguous(memory_format=torch.channels_last) and total.dtype == part.dtype):
            total = total.add_(F.conv2d(part, kernel))
            continue
        # the sum's pixels as rows (B*h*w, C_out), a view: += part's pixels (B*h*w, c) @ kernel^T, in place (out=,
        # which FlopCounterMode counts as it counts addmm)
        rows = total.permute(0, 2, 3, 1).reshape(-1, total.shape[1])
        part_rows = part.permute(0, 2, 3, 1).reshape(-1, part.shape[1])
        torch.addmm(rows, part_rows, kernel.flatten(1).t().to(rows.dtype), out=rows)
    return total


def accumulates_in_place(part: torch.Tensor, kernel: torch.Tensor, how: str | None) -> bool:
    """Whether :func:`convolve_concatenation` adds ``part``'s convolution into the sum in place, as a matrix product
    into the sum's pixels (where the sum is a channels-last map): at inference (no gradient to keep: ``out=``
    products have none), for a full-size part with at most a quarter of the output channels. Its product is cheap
    and bound by memory, and the convolution's fresh output map, the size of the whole sum, costs more than the
    product: VW's projected stride-4 map, 48 -> 256 channels at 160 x 160, with the GroupNorm after it took 10.6
    against 19.5 ms in float32 and 6.0 against 20.9 ms in bfloat16."""
    needs_gradient = torch.is_grad_enabled() and (part.requires_grad or kernel.requires_grad)
    return how is None and not needs_gradient and 4 * part.shape[1] <= kernel.shape[0]


def dense_after_dense(kernel: torch.Tensor, part: WindowTokenMap) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of ``kernel`` (``(C_out, C)``, no bias) applied after ``part``'s dense layer: ``(kernel W,
    kernel b)``, one weight product, in the weights' dtype also under autocast."""
    with torch.autocast(device_type=kernel.device.type, enabled=False):
        return kernel @ part.weight, None if part.bias is None else kernel @ part.bias


def resize_map(hidden_states: torch.Tensor, how: str | None, size: tuple[int, int]) -> torch.Tensor:
    """``(B, c, h, w)`` brought to ``size`` as :func:`convolve_concatenation`'s ``resizes`` entry ``how`` says."""
    if how is None:
        return hidden_states
    if how == "broadcast":
        return hidden_states.expand(-1, -1, *size)
    return F.interpolate(hidden_states, size=size, mode=how, align_corners=False if how == "bilinear" else None)


# --------------------------------------------------------------------------------------------------------------------
# Head modules
# --------------------------------------------------------------------------------------------------------------------


class VWFormerConvModule(nn.Module):
    """Conv (no bias) -> BatchNorm -> optional ReLU: mmcv's ``ConvModule`` with a norm, as the original uses it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, eps: float = 1e-5, relu=True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, bias=False)
        self.batch_norm = nn.BatchNorm2d(out_channels, eps=eps)
        # in place, as mmcv's ConvModule: the norm's (or convolution's) output is needed by no backward pass
        self.activation = nn.ReLU(inplace=True) if relu else nn.Identity()

    def folds_batch_norm(self) -> bool:
        """Whether the BatchNorm is folded into the kernel slices of :meth:`input_kernels` (as
        :func:`convolve_and_normalize` folds it; those run only where the convolution has no hooks)."""
        return folds_into_previous_layer(self.batch_norm) and type(self.conv) is nn.Conv2d

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(convolve_and_normalize(self.conv, self.batch_norm, hidden_states))

    def normalize(self, convolved: torch.Tensor) -> torch.Tensor:
        """The BatchNorm and activation after a sum of convolutions by :meth:`input_kernels` (the norm's scale
        already in them where it folds; the convolution has no bias where it :meth:`splits_over_inputs`)."""
        if self.folds_batch_norm():
            shift = batch_norm_scale_and_shift(self.batch_norm)[1]
            return self.activation(convolved.add_(shift[:, None, None]))  # a fresh sum: added in place
        return self.activation(self.batch_norm(convolved))

    def splits_over_inputs(self) -> bool:
        """Whether the convolution of a channel concatenation may run as the sum of each part's convolution with its
        slice of the kernel (:meth:`input_kernels`; :func:`convolution_splits_over_inputs`), and this module is then
        not called (:meth:`normalize` finishes it): not where it has hooks of its own."""
        return convolution_splits_over_inputs(self.conv) and not calls_hooks(self)

    def input_kernels(self, channels: list[int]) -> tuple[torch.Tensor, ...]:
        """The kernel's slices ``(C_out, c_i, 1, 1)`` over concatenated inputs of ``channels`` channels (scaled by
        the BatchNorm where it folds); :meth:`normalize` finishes their sum."""
        kernel = self.conv.weight
        if self.folds_batch_norm():
            kernel = kernel * batch_norm_scale_and_shift(self.batch_norm)[0][:, None, None, None]
        return kernel.split(channels, dim=1)


class VWFormerLinearEmbedding(nn.Module):
    """Per-pixel ``nn.Linear`` of a ``(B, C_in, H, W)`` map (SegFormer's ``MLP``, the ``vw`` head's projections).
    Returns ``(B, C_out, H, W)`` in channels-last memory."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = OneDNNLinear(in_channels, out_channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class VWFormerVaryingWindowAttention(GradientCheckpointingLayer):
    """One varying-window-attention branch with enlarging ratio ``R`` (paper Sec. 3.2-3.3).

    ``context_embedding`` is the pre-scaling ``R x R`` conv (stride 1, ``C -> C / R**2``, BN, ReLU; original ``ds.j``)
    on the zero-padded map. Queries come from the ``P x P`` query window, keys and values from the space-to-depth
    folded ``RP x RP`` context window; heads split the channels contiguously; scale ``(C / heads) ** -0.5``.

    * ``vw`` head (an mmcv ``NonLocal2d``, original ``attn.j``): ``query/key/value_proj`` are its ``theta/phi/g`` 1x1
      convs, ``output_proj`` is ``conv_out`` (no bias) followed by ``output_norm`` (BatchNorm).
    * ``vw_city`` head (``nn.MultiheadAttention``): the projections are the thirds of ``in_proj`` and ``out_proj``
      (with bias); no norm.
    """

    def __init__(self, config: VWFormerConfig, ratio: int):
        super().__init__()
        channels = config.decoder_hidden_size
        self.ratio = ratio
        self.num_heads = config.num_attention_heads
        self.head_dim = channels // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.num_windows = config.num_windows_per_side
        self.config = config
        self.context_embedding = VWFormerConvModule(
            channels, channels // (ratio * ratio), kernel_size=ratio, eps=config.batch_norm_eps
        )
        self.query_proj = OneDNNLinear(channels, channels)
        self.key_proj = OneDNNLinear(channels, channels)
        self.value_proj = OneDNNLinear(channels, channels)
        is_city_head = config.head_type == "vw_city"
        self.output_proj = OneDNNLinear(channels, channels, bias=is_city_head)
        self.output_norm = None if is_city_head else nn.BatchNorm2d(channels, eps=config.batch_norm_eps)

    def context_tokens(self, fused: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B*nh*nw, ph*pw, C)``: pre-scaling, copy-shift padding, windows, space-to-depth."""
        ratio = self.ratio
        window_height, window_width = fused.shape[2] // self.num_windows, fused.shape[3] // self.num_windows
        # zero padding (R/2 - 1 before, R/2 after) keeps the size through the R x R conv: (B, C/R^2, h, w)
        context = self.context_embedding(F.pad(fused, (ratio // 2 - 1, ratio // 2, ratio // 2 - 1, ratio // 2)))
        context = copy_shift_pad(context, ratio, window_height, window_width)
        return context_windows(context, ratio, self.num_windows, window_height, window_width)

    def folds_projections(self) -> bool:
        """Whether the forward runs with :meth:`folded_projections`: a single head and
        :func:`folds_attention_projections` (inference, plain dense layers)."""
        layers = (self.query_proj, self.key_proj, self.value_proj, self.output_proj)
        return self.num_heads == 1 and folds_attention_projections(*layers)

    def folded_projections(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """The single-head attention with two dense layers instead of four: ``(query weight, query bias, output
        weight, output bias)`` (:func:`folded_query_projection`, :func:`folded_output_projection`): two projections
        of ``B*h*w`` tokens less (3.1 GMACs per branch of the Swin-B ADE20K head at 640x640) for two ``C x C``
        weight products (0.13 GMACs each)."""
        return (
            *folded_query_projection(self.query_proj, self.key_proj),
            *folded_output_projection(self.value_proj, self.output_proj),
        )

    def attend(
        self, fused: torch.Tensor, query_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, nn.Module | None]:
        """The branch up to its output projection: the attended tokens ``(B*nh*nw, ph*pw, C)``, the ``(weight,
        bias)`` of the dense layer that follows them (``(None, None)``: ``output_proj`` itself) and the norm after
        that (``None``: none, or folded into the weight). Arguments as :meth:`forward`'s."""
        channels = fused.shape[1]
        context = self.context_tokens(fused)
        num_windows, num_tokens = query_tokens.shape[:2]
        head_shape = (num_windows, -1, self.num_heads, self.head_dim)
        output_weight = output_bias = None
        output_norm = self.output_norm
        if self.folds_projections():
            query_weight, query_bias, output_weight, output_bias = self.folded_projections()
            if output_norm is not None and folds_into_previous_layer(output_norm):
                # the norm's per-channel scale and shift folded into the output projection
                scale, output_bias = batch_norm_scale_and_shift(output_norm, output_bias)
                output_weight = scale[:, None] * output_weight
                output_norm = None
            # (B*nh*nw, tokens, C) -> (B*nh*nw, 1, tokens, C)
            query = onednn_linear(query_tokens, query_weight, query_bias).unsqueeze(1)
            key = value = context.unsqueeze(1)
        else:
            # (B*nh*nw, tokens, C) -> (B*nh*nw, heads, tokens, head_dim)
            query = self.query_proj(query_tokens).view(head_shape).transpose(1, 2)
            key = self.key_proj(context).view(head_shape).transpose(1, 2)
            value = self.value_proj(context).view(head_shape).transpose(1, 2)

        attention_interface = attention_function(self.config, query, key, value)
        attended, _ = attention_interface(self, query, key, value, None, dropout=0.0, scaling=self.scaling)
        # attention functions return (B*nh*nw, tokens, heads, head_dim)
        return attended.reshape(num_windows, num_tokens, channels), output_weight, output_bias, output_norm

    @batch_norm_statistics_updated_once
    def forward(self, fused: torch.Tensor, query_tokens: torch.Tensor, project_output: bool = True):
        """``fused``: ``(B, C, h, w)``, ``h`` and ``w`` multiples of the window grid; ``query_tokens``: the same map as
        ``(B*nh*nw, ph*pw, C)`` windows. Returns the branch output as a ``(B, C, h, w)`` map; with
        ``project_output=False`` what :meth:`attend` returns (for a caller that folds the output projection into what
        follows it)."""
        height, width = fused.shape[-2:]
        attended, output_weight, output_bias, output_norm = self.attend(fused, query_tokens)
        if not project_output:
            return attended, output_weight, output_bias, output_norm
        if output_weight is None:
            attended = self.output_proj(attended)
        else:
            attended = onednn_linear(attended, output_weight, output_bias)
        output = window_reverse(attended, self.num_windows, height, width).permute(0, 3, 1, 2)
        if output_norm is not None:
            output = output_norm(output)
        return output


class VWFormerMultiScaleBlock(nn.Module):
    """Multi-scale representations of the fused stride-8 map (original ``vwformer``): short path, global pooling
    (``vw`` head), one VWA branch per enlarging ratio (+ the map itself with ``use_short_cut``), fused by a 1x1
    ConvModule (original ``cat``)."""

    def __init__(self, config: VWFormerConfig):
        super().__init__()
        channels = config.decoder_hidden_size
        eps = config.batch_norm_eps
        self.num_windows = config.num_windows_per_side
        self.use_short_cut = config.use_short_cut
        self.short_path = VWFormerConvModule(channels, channels, eps=eps)
        self.image_pool = VWFormerConvModule(channels, channels, eps=eps) if config.head_type == "vw" else None
        self.attentions = nn.ModuleList(
            VWFormerVaryingWindowAttention(config, ratio) for ratio in config.enlarging_ratios
        )
        num_branches = 1 + (self.image_pool is not None) + len(self.attentions)
        self.fuse = VWFormerConvModule(num_branches * channels, channels, eps=eps)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, C, h', w')``.

        The window grid is ``num_windows x num_windows`` whatever the size. The original requires ``h`` and ``w`` to
        be multiples of it (input sizes multiples of 64); then ``h' = h``, ``w' = w`` and the result is the
        original's. Otherwise the map is first resized bilinearly up to the next multiple (as the original test
        pipeline resizes images up to a multiple of 64) and the result keeps that size: the head upsamples it to the
        stride-4 size next anyway.
        """
        height, width = fused.shape[-2:]
        grid = self.num_windows
        # positive operands only (ONNX's integer division truncates); traced it always resizes (the identity at the
        # same size): a comparison of sizes would fix its outcome for the traced size in the graph
        padded_height, padded_width = (height + grid - 1) // grid * grid, (width + grid - 1) // grid * grid
        if torch.compiler.is_compiling() or (padded_height, padded_width) != (height, width):
            fused = F.interpolate(fused, size=(padded_height, padded_width), mode="bilinear", align_corners=False)

        branches = [self.short_path(fused)]  # the maps, in the original's order of the concatenation
        pooled = None
        if self.image_pool is not None:
            # global average -> 1x1 ConvModule: (B, C, 1, 1), broadcast over the map (bilinear resizing of a 1x1 map
            # is a broadcast)
            pooled = self.image_pool(fused.mean(dim=(2, 3), keepdim=True))
        query_tokens = window_partition(fused.permute(0, 2, 3, 1), grid)
        for attention in self.attentions:
            output = attention(fused, query_tokens)
            branches.append(output + fused if self.use_short_cut else output)
        if pooled is None:
            return self.fuse(torch.cat(branches, dim=1))
        if not self.fuse.splits_over_inputs():
            branches.insert(1, pooled.expand(-1, -1, padded_height, padded_width))
            return self.fuse(torch.cat(branches, dim=1))
        # the 1x1 fusion of the constant pooled branch is a per-image (B, C, 1, 1) term added to that of the other
        # branches: the original's result without the broadcast map (one fifth of the fusion's GMACs)
        channels = fused.shape[1]
        short_kernel, pooled_kernel, *attention_kernels = self.fuse.input_kernels([channels] * (len(branches) + 1))
        kernel = torch.cat([short_kernel, *attention_kernels], dim=1)
        return self.fuse.normalize(F.conv2d(torch.cat(branches, dim=1), kernel).add_(F.conv2d(pooled, pooled_kernel)))


class VWFormerHead(nn.Module):
    """The VWFormer decode head (original ``VWHead`` / ``VWCityHead``): multi-layer aggregation, multi-scale
    representations, low-level enhancement, classifier. Returns logits at the stride of the first feature map."""

    def __init__(self, config: VWFormerConfig, in_channels: list[int]):
        super().__init__()
        channels = config.decoder_hidden_size
        eps = config.batch_norm_eps
        self.is_city_head = config.head_type == "vw_city"
        if self.is_city_head:

            def projection(in_dim, out_dim):
                return VWFormerConvModule(in_dim, out_dim, eps=eps)
        else:
            projection = VWFormerLinearEmbedding
        self.linear_c4 = projection(in_channels[3], channels)
        self.linear_c3 = projection(in_channels[2], channels)
        self.linear_c2 = projection(in_channels[1], channels)
        self.linear_c1 = projection(in_channels[0], config.low_level_channels)
        self.linear_fuse = VWFormerConvModule(3 * channels, channels, eps=eps)
        self.multi_scale = VWFormerMultiScaleBlock(config)
        self.low_level_fuse = VWFormerConvModule(channels + config.low_level_channels, channels, eps=eps)
        self.dropout = nn.Dropout2d(config.classifier_dropout_prob)
        self.classifier = nn.Conv2d(channels, config.num_labels, kernel_size=1)

    def forward(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        c1, c2, c3, c4 = features[:4]
        stride8_size = c2.shape[-2:]
        # vw: bilinear (mmseg `resize`, align_corners=False); vw_city: nearest
        upsample = dict(mode="nearest") if self.is_city_head else dict(mode="bilinear", align_corners=False)
        deep, middle, shallow = self.linear_c4(c4), self.linear_c3(c3), self.linear_c2(c2)
        if self.linear_fuse.splits_over_inputs():
            # A 1x1 convolution and a resizing commute (one mixes channels, the other pixels of each channel, both
            # linear): each map is convolved by its slice of the kernel at its own size, then resized, and the three
            # summed, the original's resize-concatenate-convolve with 2.8 of its 53.2 GMACs fewer at 640x640
            deep_kernel, middle_kernel, shallow_kernel = self.linear_fuse.input_kernels([deep.shape[1]] * 3)
            # summed in place into the fresh resized maps (neither resizing nor convolution keeps its output for
            # the backward pass)
            fused = F.interpolate(F.conv2d(deep, deep_kernel), size=stride8_size, **upsample)
            fused.add_(F.interpolate(F.conv2d(middle, middle_kernel), size=stride8_size, **upsample))
            fused.add_(F.conv2d(shallow, shallow_kernel))
            fused = self.linear_fuse.normalize(fused)  # (B, C, h, w)
        else:
            deep = F.interpolate(deep, size=stride8_size, **upsample)
            middle = F.interpolate(middle, size=stride8_size, **upsample)
            fused = self.linear_fuse(torch.cat([deep, middle, shallow], dim=1))  # (B, C, h, w)

        multi_scale = self.multi_scale(fused)
        low_level = self.linear_c1(c1)  # (B, 48, H/4, W/4)
        if self.low_level_fuse.splits_over_inputs():
            # as above: the multi-scale map's share of the fusion at stride 8, then upsampled (5.0 GMACs fewer)
            multi_scale_kernel, low_level_kernel = self.low_level_fuse.input_kernels(
                [multi_scale.shape[1], low_level.shape[1]]
            )
            upsampled = F.interpolate(
                F.conv2d(multi_scale, multi_scale_kernel), size=c1.shape[-2:], mode="bilinear", align_corners=False
            )
            hidden_states = self.low_level_fuse.normalize(upsampled.add_(F.conv2d(low_level, low_level_kernel)))
        else:
            upsampled = F.interpolate(multi_scale, size=c1.shape[-2:], mode="bilinear", align_corners=False)
            hidden_states = self.low_level_fuse(torch.cat([upsampled, low_level], dim=1))
        return self.classifier(self.dropout(hidden_states))


# --------------------------------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------------------------------


#: backbone classes built directly, by ``backbone_config.model_type`` (others go through ``AutoBackbone``)
_BACKBONE_CLASSES = {
    "swin": SwinBackbone,
    "convnext": ConvNextBackbone,
    "segformer": SegformerModel,
    "semask_swin": SeMaskSwinBackbone,
    "pale": PaleBackbone,
}


def build_backbone(backbone_config) -> nn.Module:
    """The backbone for ``backbone_config``: built from its class directly (remote code cannot rely on what
    ``AutoBackbone`` knows in this process), falling back to ``AutoBackbone`` for other transformers backbones."""
    backbone_class = _BACKBONE_CLASSES.get(backbone_config.model_type)
    if backbone_class is None:
        return AutoBackbone.from_config(backbone_config)
    backbone = backbone_class(backbone_config)
    if backbone_config.model_type == "segformer":
        # transformers' SegformerModel builds every LayerNorm with PyTorch's eps (1e-5) whatever the config's
        # layer_norm_eps says; the original MiT (mmseg MixVisionTransformer) normalises with its norm_cfg's, 1e-6 in
        # every release, which SegformerConfig's layer_norm_eps defaults to (logits moved by up to 6e-5 otherwise)
        for module in backbone.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = backbone_config.layer_norm_eps
    if backbone_config.model_type == "swin":
        # SwinBackbone keeps SwinModel's final LayerNorm but never uses it: drop it, so that every parameter is
        # trained (DDP needs no `find_unused_parameters`) and the parameter count is the original model's
        backbone.swin.layernorm = nn.Identity()
    return backbone


def backbone_feature_lengths(backbone_config, side: int) -> list[int] | None:
    """Along one axis, the lengths of the four feature maps (strides 4/8/16/32) the backbone of ``backbone_config``
    makes from an input of ``side`` pixels; ``None`` for a backbone not known here (:func:`backbone_feature_sides`).
    Integer arithmetic on ``side`` only, with ``torch.sym_max`` for the clamp, so that a traced ``side`` stays
    symbolic: no guard on it in a torch.export program, no branch fixed for the traced size in an ONNX graph."""
    model_type = backbone_config.model_type
    if model_type == "convnext":
        lengths = [side // backbone_config.patch_size]
        for _ in range(1, backbone_config.num_stages):
            lengths.append(lengths[-1] // 2)
        return lengths
    if model_type == "segformer":
        lengths, length = [], side
        for kernel, stride in zip(backbone_config.patch_sizes, backbone_config.strides):
            length = torch.sym_max((length + 2 * (kernel // 2) - kernel) // stride + 1, 0)
            lengths.append(length)
        return lengths
    if model_type in ("swin", "semask_swin", "pale"):
        return [(side + 4 * 2**level - 1) // (4 * 2**level) for level in range(4)]
    return None


def backbone_feature_sides(backbone_config, side: int) -> tuple[list[int] | None, bool]:
    """Along one axis, the lengths of the four feature maps (strides 4/8/16/32) the backbone of ``backbone_config``
    makes from an input of ``side`` pixels (:func:`backbone_feature_lengths`), and whether it runs on that side at
    all.

    * ConvNeXt: a ``patch_size`` stem of that stride and 2x2 stride-2 downsamplings, all unpadded, so remainders are
      dropped and the stride-32 map needs at least 32 px (transformers' ``ConvNextBackbone`` fails below that);
    * MiT (SegFormer): overlapping padded patch embeddings (any size) and, in each stage with ``sr_ratio`` R > 1, an
      unpadded R x R stride-R reduction of the keys, which needs a map of at least R (29 px for the released MiT);
    * Swin, SeMask-Swin and Pale pad every map to what they need: any side runs, the maps are ``ceil(side / s)``.

    Other backbones (through ``AutoBackbone``) are not known here: ``(None, True)``.
    """
    lengths = backbone_feature_lengths(backbone_config, side)
    if lengths is None:
        return None, True
    if backbone_config.model_type == "segformer":
        ratios = backbone_config.sr_ratios
        return lengths, all(length >= max(ratio, 1) for length, ratio in zip(lengths, ratios))
    return lengths, lengths[-1] >= 1


def minimum_backbone_side(backbone_config) -> int:
    """The smallest input side (pixels) on which the backbone runs: 1 unless :func:`backbone_feature_sides` says
    otherwise (32 for ConvNeXt)."""
    side = 1
    while not backbone_feature_sides(backbone_config, side)[1]:
        side += 1
    return side


def backbone_channels(backbone: nn.Module) -> list[int]:
    """Channels of the four feature maps (strides 4/8/16/32)."""
    if backbone.config.model_type == "segformer":
        return list(backbone.config.hidden_sizes)
    channels = list(backbone.channels)
    if len(channels) != 4:
        raise ValueError(
            f"VWFormer needs four backbone feature maps (strides 4/8/16/32); the {type(backbone).__name__} returns "
            f"{len(channels)} (out_features={backbone.config.out_features})"
        )
    return channels


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


class VWFormerPreTrainedModel(SegmentationModelDefaults, PreTrainedModel):
    config: VWFormerConfig
    base_model_prefix = "vwformer"
    _no_split_modules = []

    @torch.no_grad()
    def _init_weights(self, module):
        """The original initialisation of the head: convs kaiming-normal (fan-out, ReLU) as mmcv's ConvModule,
        Linear truncated-normal with zero bias (the attention's query projection normal(0.01)), the attention output
        BatchNorm of the ``vw`` head zero (mmcv ``NonLocal2d`` ``zero_init``: a fresh branch adds nothing), the
        classifier normal(0.01)."""
        if isinstance(module, VWFormerVaryingWindowAttention):
            init.normal_(module.query_proj.weight, std=0.01)
            if module.output_norm is not None:
                init.zeros_(module.output_norm.weight)
            return
        if isinstance(module, VWFormerHead):
            init.normal_(module.classifier.weight, std=0.01)
            init.zeros_(module.classifier.bias)
            return
        if isinstance(module, (nn.Linear, nn.BatchNorm2d)):
            init_norm_and_linear(module, self.config.initializer_range)
        elif isinstance(module, nn.Conv2d):
            init_conv_kaiming(module)


class VWFormerForSemanticSegmentation(VWFormerPreTrainedModel):
    """A backbone + the VWFormer decode head (+ optionally transformers' UperNet FCN auxiliary head on stage 3).

    ``logits`` are at 1/4 of the input size (the backbone's stride-4 map: ``ceil(H / 4)``, or ``H // 4`` for
    ConvNeXt, whose stem drops the remainder); with ``labels`` (``(B, H, W)``, 255 = ignore) the loss is the
    cross-entropy of the logits upsampled bilinearly to the label size, as in mmseg.

    Any input size works: an input side too small for the backbone (below 32 px for ConvNeXt, or the side MiT's key
    reduction needs) is zero-padded on the right / bottom to the smallest side the backbone runs on, and the logits
    (and auxiliary logits) are cropped back to the part that covers the input, at least 1 px (``hidden_states`` stay
    those of the padded input). Every size the backbone runs on is left as it is, so the result there is the
    original's.
    """

    def __init__(self, config: VWFormerConfig):
        super().__init__(config)
        # again: from_pretrained sets an id2label / num_labels override after the config validated itself
        validate_labels(config, per_pixel_softmax="VWFormerForSemanticSegmentation")
        self.backbone = build_backbone(config.backbone_config)
        # the smallest side the backbone runs on (1: any), read in every forward: searched once here
        self.minimum_input_side = minimum_backbone_side(config.backbone_config)
        in_channels = backbone_channels(self.backbone)
        self.neck = sdn_neck(config, in_channels)  # None unless config.use_sdn_neck
        self.decode_head = VWFormerHead(config, in_channels)
        self.auxiliary_head = fcn_auxiliary_head(config, in_channels)
        self.post_init()

    def backbone_features(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """The four feature maps (strides 4/8/16/32) of the backbone, NCHW, the backbone's own ``hidden_states``
        when ``output_hidden_states`` (for a backbone model, as UperNet returns them; for the MiT encoder, which
        has no backbone class, its four stage outputs), and its ``attentions`` when ``output_attentions`` (None for
        a backbone without attention probabilities, e.g. ConvNeXt)."""
        flags = {"output_attentions": True} if output_attentions else {}
        if self.backbone.config.model_type == "segformer":  # the MiT encoder: its hidden states are the stages
            output = self.backbone(pixel_values, output_hidden_states=True, return_dict=True, **flags)
            stages = tuple(output.hidden_states)
            return stages, stages if output_hidden_states else None, getattr(output, "attentions", None)
        output = self.backbone(pixel_values, output_hidden_states=output_hidden_states, return_dict=True, **flags)
        hidden_states = output.hidden_states if output_hidden_states else None
        return tuple(output.feature_maps), hidden_states, getattr(output, "attentions", None) if flags else None

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VWFormerSemanticSegmenterOutput:
        backbone_config = self.config.backbone_config
        check_pixel_values(
            pixel_values,
            backbone_config.num_channels,
            labels,
            num_channels_name="config.backbone_config.num_channels",
            model=self,
        )
        # the backbone runs eager attention for a call that returns attentions (its own config's switch)
        output_hidden_states, output_attentions = resolve_output_flags(self.config, kwargs, attentions_need_eager=False)
        height, width = pixel_values.shape[-2:]
        input_height, input_width = self.backbone_input_size(height, width)
        self.check_single_image_training(pixel_values.shape[0], height, width)
        # traced, a backbone with a minimum side pads (maybe by 0) and crops at every size: no branch on the size
        pads = self.minimum_input_side > 1 and (
            torch.compiler.is_compiling() or (input_height, input_width) != (height, width)
        )
        if pads:
            pixel_values = F.pad(pixel_values, (0, input_width - width, 0, input_height - height))
        features, hidden_states, attentions = self.backbone_features(
            pixel_values, output_hidden_states, output_attentions
        )
        logits, auxiliary_logits, _ = decode_with_auxiliary_head(self, features, None)
        if pads:
            logits = self.crop_to_input(logits, 0, height, width)
            if auxiliary_logits is not None:
                auxiliary_logits = self.crop_to_input(auxiliary_logits, 2, height, width)
        loss = None if labels is None else self.compute_loss(logits, auxiliary_logits, labels)
        output = VWFormerSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            auxiliary_logits=auxiliary_logits,
            hidden_states=select_hidden_states(hidden_states, kwargs.get("output_hidden_states"))
            if output_hidden_states
            else None,
            attentions=attentions,
        )
        return output

    def backbone_input_size(self, height: int, width: int) -> tuple[int, int]:
        """The input size the backbone gets for an input of ``height x width``: each side below the backbone's
        minimum (:func:`minimum_backbone_side`) raised to it, every other side unchanged (``torch.sym_max``: no
        branch on a traced side; the backbone runs on every side from its minimum on)."""
        return torch.sym_max(height, self.minimum_input_side), torch.sym_max(width, self.minimum_input_side)

    def crop_to_input(self, scores: torch.Tensor, level: int, height: int, width: int) -> torch.Tensor:
        """Scores of a padded input at the stride of backbone level ``level`` cropped to an input of
        ``height x width``: the size the backbone's map of that level has for that input (at least 1)."""
        backbone_config = self.config.backbone_config
        crop_height = torch.sym_max(backbone_feature_lengths(backbone_config, height)[level], 1)
        crop_width = torch.sym_max(backbone_feature_lengths(backbone_config, width)[level], 1)
        return scores[..., :crop_height, :crop_width]

    def check_single_image_training(self, batch_size: int, height: int, width: int) -> None:
        """A batch of one ``height x width`` image in training mode is refused where a BatchNorm would normalise a
        single value per channel (:func:`check_batch_norm_batch`): in the ``vw`` head's image pooling always, in the
        ``vw_city`` head's stride-32 projection (and the Pale backbone's stride-32 BatchNorms) when the stride-32 map
        of the (padded) input is 1x1."""
        if not self.training or batch_size != 1:  # the mode first: no size compared in eval mode (torch.export)
            return
        if self.decode_head.multi_scale.image_pool is not None:
            check_batch_norm_batch(self, batch_size, (1, 1), 0, (height, width))
            return
        backbone_config = self.config.backbone_config
        input_height, input_width = self.backbone_input_size(height, width)
        height_sides, _ = backbone_feature_sides(backbone_config, input_height)
        width_sides, _ = backbone_feature_sides(backbone_config, input_width)
        if height_sides is None or width_sides is None:
            return
        side = self.minimum_input_side
        while backbone_feature_sides(backbone_config, side)[0][3] < 2:
            side += 1
        check_batch_norm_batch(
            self, batch_size, (height_sides[3], width_sides[3]), 32, (height, width), minimum_side=side
        )

    def compute_loss(self, logits, auxiliary_logits, labels) -> torch.Tensor:
        """Cross-entropy of the logits upsampled to the labels' size (mmseg 0.30 ``CrossEntropyLoss``), + weight x
        that of the auxiliary logits. Labels outside ``[0, num_labels)`` other than the ignore index are an error."""
        return segmentation_loss(
            self.config, logits, labels, auxiliary_logits, mean_over_all_pixels=self.config.loss_mean_over_all_pixels
        )


list_for_pipeline("semantic-segmentation", VWFormerForSemanticSegmentation)


__all__ = [
    "VWFormerForSemanticSegmentation",
    "VWFormerHead",
    "VWFormerPreTrainedModel",
    "VWFormerSemanticSegmenterOutput",
    "VWFormerVaryingWindowAttention",
]
