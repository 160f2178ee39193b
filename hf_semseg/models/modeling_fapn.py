"""FaPN pixel decoders of SeMask's headline Mask2Former models: feature alignment by modulated deformable convolution.

Papers: Huang, Lu, Cheng, He, "FaPN: Feature-aligned Pyramid Network for Dense Image Prediction", ICCV
2021 (Sec. 3.1, feature alignment module); Jain et al., "SeMask: Semantically Masked Transformers for Semantic
Segmentation", arXiv 2112.12782 (the SeMask-L FaPN / MSFaPN Mask2Former results). Original code:
Picsart-AI-Research/SeMask-Segmentation, ``SeMask-FAPN/SeMask-Mask2Former/mask2former/modeling/pixel_decoder/``
(``fapn.py``: ``PixelFANDecoder``; ``msdeformattn_fapn.py``: ``MSDeformAttnPixelFANDecoder``) and the DCNv2 ``DCN``
module of ``SeMask-FAPN/DCNv2``.

- :class:`ModulatedDeformableConv2d`: DCNv2 with the offsets and masks predicted from a separate guide map. The
  kernel is ``torchvision.ops.deform_conv2d``, whose offset layout (per deformable group, ``(dy, dx)`` interleaved per
  kernel tap) and border rule are those of the original CUDA/CPU kernels (bit-identical in float32); at CPU
  inference the same function runs as :func:`modulated_deformable_conv_by_sampling` (``grid_sample`` per tap and a
  dense product: 3.8x faster than torchvision's CPU kernel on a 256-channel 160 x 160 map, 2 threads).
- :class:`FeatureAlign`: ``ReLU(DCN(feat_s; offsets from GN(conv1x1([feat_l, 2 feat_s])))) + feat_l``. The
  GroupNorm of the offset branch is the one of the level's output convolution (one module under two names in the
  original), so it is passed in, not owned: the pair stays tied.
- :class:`SeMaskFaPNPixelDecoder` ("FaPN"): an FPN with nearest upsampling in which every lateral level is aligned. As
  in SeMask's code (and unlike upstream FaPN) the coarser level is added to the lateral features first and the sum is
  aligned against the lateral features.
- :class:`SeMaskMSFaPNPixelDecoder` ("MSFaPN"): transformers' ``Mask2FormerPixelDecoder`` (multi-scale deformable
  attention on strides 8-32, its encoder as ``modeling_deformable_attention.use_cpu_deformable_encoder`` makes it)
  with a :class:`FeatureAlign` in each of its FPN levels (stride 4).

Both return ``Mask2FormerPixelDecoderOutput`` and plug into SeMask-Mask2Former (``config.pixel_decoder_type``).

Portable module: imports only torch, torchvision, transformers and sibling modules.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d
from transformers import initialization as init
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderOutput,
)

from .modeling_deformable_attention import DeformableEncoderPixelDecoder
from .modeling_linear import needs_gradient, traced


#: deformable groups of every FeatureAlign of the original (hard-coded there)
FEATURE_ALIGN_DEFORMABLE_GROUPS = 8
#: kernel size of the deformable convolution (3x3, padding 1)
FEATURE_ALIGN_KERNEL_SIZE = 3


def modulated_deformable_conv_by_sampling(
    hidden_states: torch.Tensor, offsets: torch.Tensor, masks: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d(hidden_states, offsets, weight, bias, padding=k // 2, mask=masks)`` (stride 1,
    dilation 1, one weight group) as one bilinear ``grid_sample`` per kernel tap and a dense product per tap.

    Why: torchvision's CPU kernel samples element by element on barely more than one thread (1.2-1.6 s for a
    256-channel 160 x 160 map, 8 deformable groups, 2 threads, of which the product is 0.35 s); ``grid_sample`` is
    vectorised and threaded (0.32 s for the whole convolution). Tap ``t`` of deformable group ``g`` samples the
    group's channels at ``(y - k // 2 + t // k + dy, x - k // 2 + t % k + dx)`` with the DCNv2 border rule (a
    neighbour outside the map counts 0, which is ``grid_sample``'s ``padding_mode="zeros"``), scales them by the
    tap's mask and adds ``W[:, :, t // k, t % k]`` times them to the output. The sampling points are passed in
    ``grid_sample``'s normalised coordinates (``align_corners=False``: ``(2 p + 1) / size - 1``), the tap's grid
    point computed in float64 and the offset added scaled by ``2 / size``. Equal to torchvision's kernel within
    1e-13 in float64; in float32 both differ from the float64 result by about 2e-5 on that map (their coordinate
    rounding). Memory: one ``(B, C, H, W)`` map of samples at a time.

    ``hidden_states`` ``(B, C, H, W)``, ``offsets`` ``(B, 2 G K, H, W)``, ``masks`` ``(B, G K, H, W)``, ``weight``
    ``(C_out, C, k, k)``, ``bias`` ``(C_out,)``, ``K = k * k``; all of one floating dtype."""
    batch_size, channels, height, width = hidden_states.shape
    kernel = weight.shape[-1]
    taps = kernel * kernel
    groups = masks.shape[1] // taps
    pixels = height * width
    dtype = hidden_states.dtype
    # the taps' grid points in normalised coordinates: (K, W) columns and (K, H) rows
    tap = torch.arange(taps, dtype=torch.float64, device=hidden_states.device)
    tap_rows, tap_columns = tap // kernel - kernel // 2, tap % kernel - kernel // 2
    columns = torch.arange(width, dtype=torch.float64, device=hidden_states.device)
    rows = torch.arange(height, dtype=torch.float64, device=hidden_states.device)
    base_x = ((2 * (columns[None, :] + tap_columns[:, None]) + 1) / width - 1).to(dtype)
    base_y = ((2 * (rows[None, :] + tap_rows[:, None]) + 1) / height - 1).to(dtype)
    # offsets (B, G * K * 2, H, W) -> (B, G, K, (dy, dx), H, W); grid (B, G, K, H, W, (x, y))
    offsets = offsets.reshape(batch_size, groups, taps, 2, height, width)
    grid = hidden_states.new_empty(batch_size, groups, taps, height, width, 2)
    torch.add(base_x[:, None, :], offsets[:, :, :, 1], alpha=2 / width, out=grid[..., 0])
    torch.add(base_y[:, :, None], offsets[:, :, :, 0], alpha=2 / height, out=grid[..., 1])
    grid = grid.view(batch_size * groups, taps, height, width, 2)
    # (B, C, H, W) -> (B * G, C / G, H, W): each deformable group samples its own channels
    grouped = hidden_states.reshape(batch_size * groups, channels // groups, height, width)
    masks = masks.reshape(batch_size, groups, 1, taps, pixels)
    tap_weights = weight.permute(2, 3, 0, 1).reshape(taps, weight.shape[0], channels)  # (K, C_out, C)
    output = bias.view(1, -1, 1).expand(batch_size, -1, pixels).contiguous()  # (B, C_out, H * W)
    for index in range(taps):
        sampled = F.grid_sample(grouped, grid[:, index], mode="bilinear", padding_mode="zeros", align_corners=False)
        # (B * G, C / G, H, W) -> (B, G, C / G, H * W), scaled by the tap's mask
        sampled = sampled.view(batch_size, groups, -1, pixels).mul_(masks[:, :, :, index])
        for image in range(batch_size):
            output[image].addmm_(tap_weights[index], sampled[image].view(channels, pixels))
    return output.view(batch_size, -1, height, width)


def samples_deformable_conv(*tensors: torch.Tensor) -> bool:
    """Whether :class:`ModulatedDeformableConv2d` runs as :func:`modulated_deformable_conv_by_sampling`: eager CPU
    inference (nothing traced, so exported graphs keep ``deform_conv2d`` and its ONNX ``DeformConv``; no operand
    needs a gradient, so training keeps torchvision's backward, which stores no samples)."""
    if traced() or needs_gradient(*tensors):
        return False
    return all(tensor.device.type == "cpu" for tensor in tensors)


class ModulatedDeformableConv2d(nn.Module):
    """Modulated deformable convolution (DCNv2; Zhu, Hu, Lin, Dai, "Deformable ConvNets v2", CVPR 2019) whose offsets
    and modulation masks come from a separate guide map, as the original ``DCN(extra_offset_mask=True)``.

    ``offset_mask`` is a ``kernel x kernel`` convolution of the guide to ``3 * groups * kernel**2`` channels, split in
    three equal chunks ``o1, o2, m``: the offsets are ``cat(o1, o2)`` (channel ``g * 2K + 2t`` is the row offset and
    ``g * 2K + 2t + 1`` the column offset of tap ``t`` of deformable group ``g``, ``K = kernel**2``; the original's
    comment calls them "x, y", but its kernel reads them as ``(dy, dx)``) and the masks ``sigmoid(m)`` (channel
    ``g * K + t``). The convolution runs in float32 with autocast off and the result is cast back to the input's
    dtype (the original casts every operand to float32; its offset predictor ran in the autocast dtype).
    """

    def __init__(
        self, channels: int, kernel_size: int = FEATURE_ALIGN_KERNEL_SIZE, groups: int = FEATURE_ALIGN_DEFORMABLE_GROUPS
    ):
        super().__init__()
        if channels % groups:
            raise ValueError(f"channels ({channels}) must be divisible by the {groups} deformable groups")
        self.kernel_size = kernel_size
        self.padding = kernel_size // 2
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels))
        self.offset_mask = nn.Conv2d(
            channels, 3 * groups * kernel_size * kernel_size, kernel_size, padding=self.padding, bias=True
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original ``DCN`` initialisation: weights uniform in ``+-1 / sqrt(C * k * k)``, zero bias, and an
        all-zero offset/mask predictor (zero offsets, masks 0.5)."""
        bound = 1.0 / math.sqrt(self.weight.shape[1] * self.kernel_size**2)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)

    @property
    def compute_dtype(self) -> torch.dtype:
        """float32, or float64 for float64 weights (never a half type)."""
        return torch.promote_types(self.weight.dtype, torch.float32)

    def offsets_and_masks(self, guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, h, w)`` guide -> offsets ``(B, 2 * groups * K, h, w)`` and masks ``(B, groups * K, h, w)``."""
        dtype = self.compute_dtype
        predicted = F.conv2d(
            guide.to(dtype), self.offset_mask.weight.to(dtype), self.offset_mask.bias.to(dtype), padding=self.padding
        )
        offsets_first, offsets_second, mask_logits = predicted.chunk(3, dim=1)
        return torch.cat([offsets_first, offsets_second], dim=1), mask_logits.sigmoid()

    def forward(self, hidden_states: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` features resampled at the offsets predicted from the ``(B, C, h, w)`` guide. In float32
        (float64 for float64 weights); under autocast the float32 result is returned (as the original's), otherwise it is cast to the input dtype."""
        device_type = hidden_states.device.type
        under_autocast = torch.is_autocast_enabled(device_type)
        with torch.autocast(device_type=device_type, enabled=False):
            offsets, masks = self.offsets_and_masks(guide)
            dtype = self.compute_dtype
            operands = (hidden_states.to(dtype), offsets, masks, self.weight.to(dtype), self.bias.to(dtype))
            if samples_deformable_conv(*operands):
                output = modulated_deformable_conv_by_sampling(*operands)
            else:
                features, offsets, masks, weight, bias = operands
                output = deform_conv2d(features, offsets, weight, bias, padding=self.padding, mask=masks)
        return output if under_autocast else output.to(hidden_states.dtype)


class FeatureAlign(nn.Module):
    """SeMask's FaPN feature alignment (original ``FeatureAlign``, without feature selection).

    ``feat_l`` ``(B, C, h, w)`` are the lateral (fine) features, ``feat_s`` the features to align (in SeMask's
    decoders, already the sum of the lateral features and the upsampled coarser level, so of the same size; a smaller
    map would be resized bilinearly first). The offsets are predicted from ``offset_norm(conv1x1([feat_l, 2 *
    feat_s]))`` (the factor 2 is the original's), ``feat_s`` is resampled by :class:`ModulatedDeformableConv2d` and
    ``ReLU(...) + feat_l`` returned.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.offset_projection = nn.Conv2d(2 * channels, channels, kernel_size=1, bias=False)
        self.deformable_conv = ModulatedDeformableConv2d(channels)

    def forward(self, feat_l: torch.Tensor, feat_s: torch.Tensor, offset_norm: nn.Module) -> torch.Tensor:
        if feat_s.shape[-2:] != feat_l.shape[-2:]:
            feat_s = F.interpolate(feat_s, size=feat_l.shape[-2:], mode="bilinear", align_corners=False)
        offset_features = offset_norm(self.offset_projection(torch.cat([feat_l, 2 * feat_s], dim=1)))
        aligned = F.relu(self.deformable_conv(feat_s, offset_features))
        return aligned + feat_l


def init_feature_align(module: FeatureAlign) -> None:
    """The original initialisation: the offset projection ``c2_xavier_fill`` (Kaiming-uniform with ``a = 1``), the
    deformable weights uniform in ``+-1 / sqrt(C * k * k)`` with zero bias, and an all-zero offset/mask predictor (so
    a new FeatureAlign starts with zero offsets and masks 0.5)."""
    init.kaiming_uniform_(module.offset_projection.weight, a=1)
    deformable = module.deformable_conv
    fan_in = deformable.weight.shape[1] * deformable.kernel_size**2
    init.uniform_(deformable.weight, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
    init.zeros_(deformable.bias)
    init.zeros_(deformable.offset_mask.weight)
    init.zeros_(deformable.offset_mask.bias)


def conv_norm(in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> nn.Sequential:
    """detectron2's ``Conv2d(bias=False, norm=GN(32))`` [+ ReLU] as ``nn.Sequential(conv, GroupNorm[, ReLU])`` (the
    layout of transformers' Mask2Former pixel decoder)."""
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.GroupNorm(32, out_channels),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SeMaskFaPNPixelDecoder(nn.Module):
    """SeMask's FaPN pixel decoder (original ``PixelFANDecoder``) for backbone features at strides 4, 8, 16, 32.

    ``layer_4`` (3x3 conv, GN, ReLU) on the stride-32 map starts the pyramid; then for the stride-16, 8 and 4 levels
    ``k = 3, 2, 1``: ``feat_l = adapter_k(x)`` (1x1 conv, GN), ``feat_s = feat_l + nearest_up(previous)``,
    ``layer_k(align_k(feat_l, feat_s))`` (3x3 conv, GN, ReLU; the GN is also ``align_k``'s offset norm). The first
    three levels (strides 32, 16, 8) feed the masked-attention decoder; a 3x3 convolution of the stride-4 level gives
    the mask features. The original's ``TRANSFORMER_ENC_LAYERS`` is not used by this decoder.
    """

    def __init__(self, config, feature_channels: list[int]):
        super().__init__()
        feature_size = config.feature_size
        self.num_levels = len(feature_channels)
        self.num_multi_scale_levels = 3  # what the masked-attention decoder reads
        self.add_module(f"layer_{self.num_levels}", conv_norm(feature_channels[-1], feature_size, 3, relu=True))
        for level, in_channels in enumerate(feature_channels[:-1], start=1):
            self.add_module(f"adapter_{level}", conv_norm(in_channels, feature_size, 1, relu=False))
            self.add_module(f"align_{level}", FeatureAlign(feature_size))
            self.add_module(f"layer_{level}", conv_norm(feature_size, feature_size, 3, relu=True))
        self.mask_projection = nn.Conv2d(feature_size, config.mask_feature_size, kernel_size=3, padding=1)

    def forward(self, features: tuple[torch.Tensor, ...], **kwargs) -> Mask2FormerPixelDecoderOutput:
        hidden_states = getattr(self, f"layer_{self.num_levels}")(features[-1])
        levels = [hidden_states]
        for level in range(self.num_levels - 1, 0, -1):  # strides 16, 8, 4
            lateral = getattr(self, f"adapter_{level}")(features[level - 1])
            summed = lateral + F.interpolate(hidden_states, size=lateral.shape[-2:], mode="nearest")
            output_conv = getattr(self, f"layer_{level}")
            hidden_states = output_conv(getattr(self, f"align_{level}")(lateral, summed, offset_norm=output_conv[1]))
            levels.append(hidden_states)
        return Mask2FormerPixelDecoderOutput(
            mask_features=self.mask_projection(hidden_states),
            multi_scale_features=tuple(levels[: self.num_multi_scale_levels]),
        )


class SeMaskMSFaPNPixelDecoder(DeformableEncoderPixelDecoder):
    """SeMask's MSFaPN pixel decoder (original ``MSDeformAttnPixelFANDecoder``): transformers' Mask2Former pixel
    decoder, whose FPN levels (stride 4) align ``adapter_k(x) + bilinear_up(coarser level)`` against the lateral
    features with ``align_k`` before ``layer_k``. Same parameter names as ``Mask2FormerPixelDecoder`` plus ``align_k``.
    """

    def __init__(self, config, feature_channels: list[int]):
        super().__init__(config, feature_channels=feature_channels)
        for level in range(1, self.num_fpn_levels + 1):
            self.add_module(f"align_{level}", FeatureAlign(config.feature_size))
        self.feature_aligns = [getattr(self, f"align_{level}") for level in range(1, self.num_fpn_levels + 1)][::-1]

    def fuse_fpn_level(self, index: int, lateral: torch.Tensor, summed: torch.Tensor, output_conv) -> torch.Tensor:
        """``layer_k(align_k(lateral, summed))``: the sum aligned against the lateral features first."""
        return output_conv(self.feature_aligns[index](lateral, summed, offset_norm=output_conv[1]))


__all__ = [
    "ModulatedDeformableConv2d",
    "FeatureAlign",
    "SeMaskFaPNPixelDecoder",
    "SeMaskMSFaPNPixelDecoder",
    "init_feature_align",
]
