"""The VW pixel decoders of VW-MaskFormer and VW-Mask2Former (Yan et al., "Multi-Scale Representations by Varying
Window Attention for Semantic Segmentation", ICLR 2024, arXiv 2404.16573; original code yan-hao-tian/VW, folders
``MaskFormer/`` and ``Mask2Former/``).

The original detectron2 heads put the varying-window-attention block of VWFormer inside MaskFormer and Mask2Former
as their pixel decoder. The block is written once here (:class:`VWBlock`) and shared by the three decoders of the
released models:

- :class:`VWTransformerPixelDecoder` (VW-MaskFormer, original ``VWTransformerPixelDecoder``): the block on the
  backbone's four maps, with an image-pooling branch; its attention heads and short-cut come from the config. The
  DETR decoder of MaskFormer reads the backbone's stride-32 map itself, so this decoder returns the mask features only.
- :class:`VWBasePixelDecoder` (VW-Mask2Former, the repository's ``BasePixelDecoder``, which there IS the VW decoder):
  the same block (16 heads, no short-cut, image pooling) plus three 1x1 conv + GroupNorm + ReLU projections of the
  backbone's stride-8/16/32 maps, the multi-scale features of the masked-attention decoder.
- :class:`VWDeformAttnPixelDecoder` (VW-Mask2Former with deformable attention, original
  ``VWDeformAttnPixelDecoder``): transformers' ``Mask2FormerPixelDecoder`` encoder part (input projections, level
  embeddings, multi-scale deformable-attention encoder, as ``modeling_deformable_attention.use_cpu_deformable_encoder``
  makes it; the encoder outputs are the multi-scale features) and the VW block on the encoder outputs (no image
  pooling).

What the original hard-codes, and this module therefore too: 512 channels inside the block, 48 for the projected
stride-4 map, 256 for the mask features and the multi-scale features, the 8 x 8 window grid, the enlarging ratios
2, 4, 8, GroupNorm with 32 groups. The block's ONE ``GroupNorm(32, 512)`` (the original passes one module object to
the projections, the fusion, the short path, the image pooling and the final fusion, so a state dict lists the one
tensor under six or seven names) is a single module here, :attr:`VWBlock.output_norm`, used at each of those places.

The context embedding, copy-shift padding, window partition and space-to-depth folding are those of the mmseg VWFormer
head (:mod:`modeling_vwformer`), whose functions and attention module are reused: the detectron2 heads compute the
same thing with ``nn.MultiheadAttention`` (``batch_first=True``), a context conv WITH a bias (detectron2's ``Conv2d``
default) and nearest upsampling of the stride-16/32 projections.

Inputs: the block needs the stride-8 map to split into exactly 8 x 8 windows of at least 2 x 2 pixels, that is an
input whose padded sides are multiples of 64 and at least 128 (the original raises otherwise; its README commands all
pass ``MODEL.MASK_FORMER.SIZE_DIVISIBILITY 64``). The models pad every input to that (:func:`vw_padded_size`; zeros on
the right and bottom, as detectron2's ``ImageList``), so any size runs and a size the original runs on gives its
result.

Portable module: imports only torch, transformers and sibling modules.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderOutput,
)

from .modeling_deformable_attention import DeformableEncoderPixelDecoder
from .modeling_linear import OneDNNLinear, calls_hooks
from .modeling_utils_segmentation import folds_attention_projections
from .modeling_vwformer import (
    VWFormerConvModule,
    VWFormerVaryingWindowAttention,
    WindowTokenMap,
    convolution_splits_over_inputs,
    convolve_concatenation,
    window_partition,
)


#: channels inside the VW block (hard-coded in the original)
VW_CHANNELS = 512
#: channels of the projected stride-4 map fused last (hard-coded)
VW_LOW_LEVEL_CHANNELS = 48
#: channels of the mask features and of the multi-scale features (hard-coded; MASK_DIM / CONVS_DIM must equal it)
VW_FEATURE_CHANNELS = 256
#: the enlarging ratios R of the three varying-window attention branches
VW_ENLARGING_RATIOS = (2, 4, 8)
#: the stride-8 map is split into this many query windows per side
VW_NUM_WINDOWS = 8
#: groups of every GroupNorm of the decoders
VW_NORM_GROUPS = 32
#: attention heads of the VW block of both VW-Mask2Former decoders (hard-coded there; VW-MaskFormer reads NHEADS)
VW_MASK2FORMER_HEADS = 16
#: padded input sides are multiples of this (8 windows of the stride-8 map) ...
VW_INPUT_MULTIPLE = 64
#: ... and at least this (windows of one pixel make the original's context unfold produce 9 windows per side)
VW_MIN_INPUT_SIDE = 128


# --------------------------------------------------------------------------------------------------------------------
# Input padding
# --------------------------------------------------------------------------------------------------------------------


def vw_padded_side(side: int, size_divisibility: int) -> int:
    """The padded length of an input side: the next multiple of ``size_divisibility`` (detectron2's ``ImageList``),
    raised to the smallest multiple that is at least :data:`VW_MIN_INPUT_SIDE`. A side the original runs on (a
    multiple of 64, at least 128, with ``size_divisibility`` 64) is left as it is."""
    divisor = max(size_divisibility, 1)
    padded = (side + divisor - 1) // divisor * divisor  # positive operands only: ONNX's integer division truncates
    # sym_max: the plain max of two ints, and no branch on the size when traced by torch.compile / torch.export
    return torch.sym_max(padded, (VW_MIN_INPUT_SIDE + divisor - 1) // divisor * divisor)


def vw_padded_size(height: int, width: int, size_divisibility: int) -> tuple[int, int]:
    """``(padded height, padded width)`` of an input of ``height x width`` (:func:`vw_padded_side`)."""
    return vw_padded_side(height, size_divisibility), vw_padded_side(width, size_divisibility)


def pad_for_vw(pixel_values: torch.Tensor, size_divisibility: int) -> torch.Tensor:
    """Zero-pads ``(B, C, H, W)`` on the right and bottom to :func:`vw_padded_size` (the identity when the size
    already is)."""
    height, width = pixel_values.shape[-2:]
    padded_height, padded_width = vw_padded_size(height, width, size_divisibility)
    # traced it always pads, maybe by 0 (a branch on the size would fix its outcome for the traced size)
    if torch.compiler.is_compiling() or (padded_height, padded_width) != (height, width):
        pixel_values = F.pad(pixel_values, (0, padded_width - width, 0, padded_height - height))
    return pixel_values


class VWSegmenterMixin:
    """What the VW segmenters (VW-MaskFormer, VW-Mask2Former) tell ``SemanticMaskClassificationMixin``: a plain Swin
    backbone (no semantic head) and the padding of :func:`pad_for_vw`, which the labels follow."""

    has_semantic_head = False

    def padded_input_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """The size the model pads an input of ``input_size`` to (:func:`vw_padded_size`: multiples of
        ``config.size_divisibility``, each side at least 128)."""
        return vw_padded_size(*input_size, self.config.size_divisibility)


# --------------------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------------------


class VWSharedNormConv(nn.Module):
    """detectron2's ``Conv2d(kernel 1, bias=False, norm=output_norm, activation=relu)`` whose GroupNorm is the block's
    shared one: the norm is passed to :meth:`forward`, not owned, so that the block keeps one module (one tensor).

    ``on_single_pixel``: the convolution of the image-pooling branch, whose input is one pixel per image. For a batch
    of one that is a matrix-vector product, and the CPU kernel of it sums in an order that depends on the weight's
    memory alignment, which differs between a model built here and one loaded from a safetensors file (the last bits
    of the result would change with where the weights were loaded from). It therefore runs on a fresh (allocator-
    aligned) copy of the weight: the same result for the same weights, at the cost of copying one 512 x 512 matrix."""

    def __init__(self, in_channels: int, out_channels: int = VW_CHANNELS, on_single_pixel: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.on_single_pixel = on_single_pixel

    def forward(self, hidden_states: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        if self.on_single_pixel:
            hidden_states = F.conv2d(hidden_states, self.conv.weight.clone())
        else:
            hidden_states = self.conv(hidden_states)
        return F.relu(norm(hidden_states), inplace=True)


class VWConvGroupNorm(nn.Module):
    """detectron2's ``Conv2d(kernel 1, bias=False, norm=GN(32, C), activation=relu)`` with its own GroupNorm (the
    low-level fusion, the plain decoder's multi-scale projections)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.norm = nn.GroupNorm(VW_NORM_GROUPS, out_channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(hidden_states)), inplace=True)


class VWSharedNormFusion(VWSharedNormConv):
    """:class:`VWSharedNormConv` on a channel concatenation of maps of different sizes (``linear_fuse``, ``fuse``):
    the parts are passed as they are and :func:`convolve_concatenation` convolves each at its own size."""

    def forward(self, parts: list[torch.Tensor], resizes: list[str | None], size, norm: nn.Module) -> torch.Tensor:
        return F.relu(norm(convolve_concatenation(self.conv, parts, resizes, size)), inplace=True)


class VWLowLevelFusion(VWConvGroupNorm):
    """The low-level fusion (original ``low_level_fuse``): :class:`VWConvGroupNorm` on the concatenation of the
    multi-scale map upsampled bilinearly to the stride-4 size and the projected stride-4 map, each convolved at its
    own size (:func:`convolve_concatenation`: the multi-scale map's share at stride 8, then upsampled)."""

    def forward(self, multi_scale: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        size = low_level.shape[-2:]
        parts, resizes = [multi_scale, low_level], ["bilinear", None]
        return F.relu(self.norm(convolve_concatenation(self.conv, parts, resizes, size)), inplace=True)


class VWContextEmbedding(VWFormerConvModule):
    """The pre-scaling ``R x R`` context convolution (original ``ds[j]`` / ``ds_0[j]``): ``C -> C / R**2``, stride 1,
    no padding (the caller zero-pads), WITH a bias (detectron2's ``Conv2d`` default), BatchNorm, ReLU."""

    def __init__(self, channels: int, ratio: int):
        super().__init__(channels, channels // (ratio * ratio), kernel_size=ratio)
        self.conv = nn.Conv2d(channels, channels // (ratio * ratio), kernel_size=ratio, bias=True)


class VWWindowAttention(VWFormerVaryingWindowAttention):
    """One varying-window-attention branch of the detectron2 heads (original ``attn[j]`` / ``attn_0[j]``, an
    ``nn.MultiheadAttention(512, heads, batch_first=True)``): the mmseg head's ``vw_city`` attention, whose forward is
    reused (pre-scaling on the zero-padded map, copy-shift padding, windows, space-to-depth, attention), with the
    detectron2 context convolution (:class:`VWContextEmbedding`). ``query/key/value_proj`` are the thirds of
    ``in_proj`` (rows q, k, v), ``output_proj`` is ``out_proj``; no output norm."""

    def __init__(self, config, ratio: int, num_heads: int, channels: int = VW_CHANNELS):
        # the parent's __init__ reads a VWFormerConfig; the attributes its forward uses are set here instead
        GradientCheckpointingLayer.__init__(self)
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} attention heads")
        self.ratio = ratio
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.num_windows = VW_NUM_WINDOWS
        self.config = config  # read for the attention implementation only
        self.context_embedding = VWContextEmbedding(channels, ratio)
        self.query_proj = OneDNNLinear(channels, channels)
        self.key_proj = OneDNNLinear(channels, channels)
        self.value_proj = OneDNNLinear(channels, channels)
        self.output_proj = OneDNNLinear(channels, channels)
        self.output_norm = None


class VWBlock(nn.Module):
    """The VW block of the detectron2 heads: stride-8/16/32 maps ``c2, c3, c4`` projected to 512 channels (1x1 conv,
    the shared GroupNorm, ReLU), ``c3``/``c4`` brought to the stride-8 size by nearest upsampling and fused (original
    ``linear_fuse``); a short path, an optional image-pooling branch (global mean, 1x1 conv, shared GroupNorm on the
    1x1 map, ReLU, broadcast) and one varying-window attention per enlarging ratio (plus the fused map with
    ``use_short_cut``), concatenated in that order and fused (original ``cat`` / ``cat_0``); the result upsampled
    bilinearly to the stride-4 size, concatenated with the 48-channel projection of ``c1`` (1x1 conv, BatchNorm, ReLU;
    original ``linear_c1``) and fused into the 256-channel mask features (1x1 conv, GroupNorm(32, 256), ReLU;
    original ``low_level_fuse``).

    ``in_channels``: channels of ``c1, c2, c3, c4``. ``output_norm`` is the one GroupNorm(32, 512) of the block.
    """

    def __init__(self, config, in_channels: list[int], num_heads: int, use_short_cut: bool, use_image_pool: bool):
        super().__init__()
        self.use_short_cut = use_short_cut
        self.output_norm = nn.GroupNorm(VW_NORM_GROUPS, VW_CHANNELS)
        self.linear_c4 = VWSharedNormConv(in_channels[3])
        self.linear_c3 = VWSharedNormConv(in_channels[2])
        self.linear_c2 = VWSharedNormConv(in_channels[1])
        self.linear_fuse = VWSharedNormFusion(3 * VW_CHANNELS)
        self.short_path = VWSharedNormConv(VW_CHANNELS)
        self.image_pool = VWSharedNormConv(VW_CHANNELS, on_single_pixel=True) if use_image_pool else None
        self.attentions = nn.ModuleList(VWWindowAttention(config, ratio, num_heads) for ratio in VW_ENLARGING_RATIOS)
        num_branches = 1 + int(use_image_pool) + len(VW_ENLARGING_RATIOS)
        self.fuse = VWSharedNormFusion(num_branches * VW_CHANNELS)
        self.linear_c1 = VWFormerConvModule(in_channels[0], VW_LOW_LEVEL_CHANNELS)
        self.low_level_fuse = VWLowLevelFusion(VW_CHANNELS + VW_LOW_LEVEL_CHANNELS, VW_FEATURE_CHANNELS)

    def fused_map(self, c2: torch.Tensor, c3: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        """The fused stride-8 map ``(B, 512, h, w)`` (original ``_c``)."""
        norm = self.output_norm
        parts = [self.linear_c4(c4, norm), self.linear_c3(c3, norm), self.linear_c2(c2, norm)]
        return self.linear_fuse(parts, ["nearest", "nearest", None], c2.shape[-2:], norm)

    def multi_scale(self, fused: torch.Tensor) -> torch.Tensor:
        """Short path, image pooling, the attention branches, fused: ``(B, 512, h, w)``."""
        height, width = fused.shape[-2:]
        grid = VW_NUM_WINDOWS
        # (the padded input guarantees it; not checked when traced, where the sizes are symbolic)
        if not torch.compiler.is_compiling() and (height % grid or width % grid or min(height, width) < 2 * grid):
            raise ValueError(
                f"the VW block needs a stride-8 map whose sides are multiples of {grid} and at least {2 * grid} (an "
                f"input padded to multiples of {VW_INPUT_MULTIPLE}, at least {VW_MIN_INPUT_SIDE}); got "
                f"{height}x{width} (the models pad their input to that)"
            )
        norm = self.output_norm
        branches, resizes = [self.short_path(fused, norm)], [None]
        if self.image_pool is not None:
            branches.append(self.image_pool(fused.mean(dim=(2, 3), keepdim=True), norm))  # (B, 512, 1, 1)
            resizes.append("broadcast")
        query_tokens = window_partition(fused.permute(0, 2, 3, 1), grid)
        folds_output_projections = self.folds_output_projections()
        for attention in self.attentions:
            if folds_output_projections:
                attended, weight, bias, _ = attention(fused, query_tokens, project_output=False)
                if weight is None:
                    weight, bias = attention.output_proj.weight, attention.output_proj.bias
                branches.append(WindowTokenMap(attended, weight, bias, grid, fused if self.use_short_cut else None))
            else:
                output = attention(fused, query_tokens)
                branches.append(output + fused if self.use_short_cut else output)
            resizes.append(None)
        return self.fuse(branches, resizes, (height, width), norm)

    def folds_output_projections(self) -> bool:
        """Whether the attention branches' output projections fold into the fusion after them (each is a dense layer
        followed by the fusion's 1x1 kernel slice, nothing between: one dense layer ``K Wo``, and one token-order sum
        of the branches, 5.0 GMACs fewer at 640x640; a short-cut is a term of its own): at inference with plain
        layers (:func:`folds_attention_projections`, :func:`convolution_splits_over_inputs`), and no hooks on the
        attention branches (folded, a branch's call returns its tokens before the output projection, not its map)."""
        if calls_hooks(*self.attentions):
            return False
        projections = [attention.output_proj for attention in self.attentions]
        return folds_attention_projections(*projections) and convolution_splits_over_inputs(self.fuse.conv)

    def forward(self, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        """Maps at strides 4, 8, 16, 32 -> the mask features ``(B, 256, H/4, W/4)``."""
        multi_scale = self.multi_scale(self.fused_map(c2, c3, c4))
        return self.low_level_fuse(multi_scale, self.linear_c1(c1))


class VWTransformerPixelDecoder(nn.Module):
    """VW-MaskFormer's pixel decoder (original ``VWTransformerPixelDecoder``): the VW block (``vw``) on the backbone's
    four maps, with image pooling; attention heads ``config.vw_num_heads`` (NHEADS) and short-cut
    ``config.vw_use_short_cut`` (SHORT_CUT). Returns the mask features (no multi-scale features: MaskFormer's DETR
    decoder reads the backbone's stride-32 map)."""

    def __init__(self, config, feature_channels: list[int]):
        super().__init__()
        self.vw = VWBlock(
            config,
            feature_channels,
            num_heads=config.vw_num_heads,
            use_short_cut=config.vw_use_short_cut,
            use_image_pool=True,
        )

    def forward(self, features: tuple[torch.Tensor, ...], **kwargs) -> Mask2FormerPixelDecoderOutput:
        return Mask2FormerPixelDecoderOutput(mask_features=self.vw(*features[:4]), multi_scale_features=None)


class VWBasePixelDecoder(nn.Module):
    """VW-Mask2Former's plain pixel decoder (the repository's rewritten ``BasePixelDecoder``): the VW block (``vw``,
    16 heads, no short-cut, image pooling) for the mask features, and ``projections`` (original ``proj``: 1x1 conv,
    GroupNorm(32, 256), ReLU of the backbone's stride-8, 16, 32 maps), which give the multi-scale features of the
    masked-attention decoder, strides 32, 16, 8."""

    def __init__(self, config, feature_channels: list[int]):
        super().__init__()
        self.vw = VWBlock(
            config, feature_channels, num_heads=VW_MASK2FORMER_HEADS, use_short_cut=False, use_image_pool=True
        )
        self.projections = nn.ModuleList(
            VWConvGroupNorm(channels, VW_FEATURE_CHANNELS) for channels in feature_channels[1:4]
        )

    def forward(self, features: tuple[torch.Tensor, ...], **kwargs) -> Mask2FormerPixelDecoderOutput:
        c1, c2, c3, c4 = features[:4]
        multi_scale_features = (self.projections[2](c4), self.projections[1](c3), self.projections[0](c2))
        return Mask2FormerPixelDecoderOutput(
            mask_features=self.vw(c1, c2, c3, c4), multi_scale_features=multi_scale_features
        )


class VWDeformAttnPixelDecoder(DeformableEncoderPixelDecoder):
    """VW-Mask2Former's deformable pixel decoder (original ``VWDeformAttnPixelDecoder``): transformers'
    ``Mask2FormerPixelDecoder`` without its stride-4 FPN level and mask projection (the VW checkpoints have neither):
    ``input_projections`` (1x1 conv with bias, GroupNorm), ``level_embed`` and the multi-scale deformable-attention
    ``encoder`` (``config.encoder_layers`` layers, ``config.num_attention_heads`` heads, FFN
    ``config.encoder_feedforward_dim`` = 1024) on the backbone's stride-8/16/32 maps; their outputs are the
    multi-scale features (strides 32, 16, 8) AND the inputs ``c4, c3, c2`` of the VW block (``vw``, 16 heads, no
    short-cut, no image pooling), whose ``c1`` is the backbone's stride-4 map."""

    def __init__(self, config, feature_channels: list[int]):
        super().__init__(config, feature_channels=feature_channels)
        del self.mask_projection
        for level in range(1, self.num_fpn_levels + 1):
            delattr(self, f"adapter_{level}")
            delattr(self, f"layer_{level}")
        self.lateral_convolutions, self.output_convolutions = [], []
        encoder_channels = [config.feature_size] * 3
        self.vw = VWBlock(
            config,
            [feature_channels[0], *encoder_channels],
            num_heads=VW_MASK2FORMER_HEADS,
            use_short_cut=False,
            use_image_pool=False,
        )

    def forward(self, features: tuple[torch.Tensor, ...], **kwargs) -> Mask2FormerPixelDecoderOutput:
        levels = self.encode(features)  # strides 32, 16, 8
        mask_features = self.vw(features[0], levels[2], levels[1], levels[0])
        return Mask2FormerPixelDecoderOutput(mask_features=mask_features, multi_scale_features=tuple(levels))


#: the VW-Mask2Former pixel decoder of each ``config.pixel_decoder_type``
VW_MASK2FORMER_PIXEL_DECODERS = {"vw": VWBasePixelDecoder, "vw_deformable": VWDeformAttnPixelDecoder}


# --------------------------------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------------------------------


def _init_conv_default(conv: nn.Conv2d) -> None:
    """PyTorch's default ``nn.Conv2d`` init (Kaiming-uniform, ``a = sqrt(5)``; bias uniform in ``+-1/sqrt(fan_in)``):
    what detectron2's ``Conv2d`` keeps when the original applies no init of its own (the VW layers)."""
    init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
    if conv.bias is not None:
        fan_in = conv.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init.uniform_(conv.bias, -bound, bound)


def _init_norm(norm: nn.Module) -> None:
    init.ones_(norm.weight)
    init.zeros_(norm.bias)
    if getattr(norm, "running_mean", None) is not None:
        init.zeros_(norm.running_mean)
        init.ones_(norm.running_var)
        init.zeros_(norm.num_batches_tracked)


def init_vw_weights(module: nn.Module) -> None:
    """The original initialisation of the VW modules inside ``module`` (a :class:`VWBlock` or a VW pixel decoder; the
    deformable encoder is left to Mask2Former's init): convolutions PyTorch's default (the original applies none),
    norms 1 / 0 with fresh running statistics, and each attention as ``nn.MultiheadAttention`` initialises itself
    (``in_proj`` Xavier-uniform over the stacked q, k, v rows, zero ``in_proj`` and ``out_proj`` biases, ``out_proj``
    weight PyTorch's default)."""
    for name, submodule in module.named_modules():
        if name.startswith(("encoder", "input_projections")):
            continue
        if isinstance(submodule, nn.Conv2d):
            _init_conv_default(submodule)
        elif isinstance(submodule, (nn.GroupNorm, nn.BatchNorm2d)):
            _init_norm(submodule)
        elif isinstance(submodule, VWWindowAttention):
            channels = submodule.query_proj.in_features
            bound = math.sqrt(6.0 / (channels + 3 * channels))  # Xavier-uniform of the (3C, C) in_proj
            for projection in (submodule.query_proj, submodule.key_proj, submodule.value_proj):
                init.uniform_(projection.weight, -bound, bound)
                init.zeros_(projection.bias)
            init.kaiming_uniform_(submodule.output_proj.weight, a=math.sqrt(5))
            init.zeros_(submodule.output_proj.bias)


__all__ = [
    "VWSegmenterMixin",
    "VW_MASK2FORMER_PIXEL_DECODERS",
    "VWBasePixelDecoder",
    "VWBlock",
    "VWDeformAttnPixelDecoder",
    "VWTransformerPixelDecoder",
    "VWWindowAttention",
    "init_vw_weights",
    "pad_for_vw",
    "vw_padded_size",
]
