"""SeMask's FaPN pieces (``hf_semseg/models/modeling_fapn.py``) against hand computations: the modulated deformable
convolution against a direct per-tap bilinear sampling (torchvision's kernel and, at CPU inference, the sampling
form), the feature alignment formula, the tied GroupNorm, float32 under autocast, and the per-copy semantic attention
rule."""

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from torchvision.ops import deform_conv2d

from hf_semseg import SeMaskMask2FormerConfig, SeMaskMask2FormerForSemanticSegmentation
from hf_semseg.models import modeling_fapn
from hf_semseg.models.modeling_fapn import (
    FeatureAlign,
    ModulatedDeformableConv2d,
    SeMaskFaPNPixelDecoder,
    SeMaskMSFaPNPixelDecoder,
    modulated_deformable_conv_by_sampling,
)

from model_suite import tiny_mask2former_kwargs, tiny_semask_swin_kwargs


def tiny_config(pixel_decoder_type: str) -> SeMaskMask2FormerConfig:
    return SeMaskMask2FormerConfig(
        **tiny_mask2former_kwargs(pixel_decoder_type=pixel_decoder_type, backbone_config=tiny_semask_swin_kwargs())
    )


def bilinear_sample(image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``image`` ``(C, H, W)`` sampled at fractional ``(rows, cols)`` ``(h, w)`` -> ``(C, h, w)``: bilinear over the
    four neighbours, a neighbour outside the map counting 0, and 0 where the point is not inside ``(-1, H) x (-1,
    W)`` (the DCNv2 kernels' border rule)."""
    height, width = image.shape[-2:]
    top, left = rows.floor(), cols.floor()
    result = torch.zeros(image.shape[0], *rows.shape, dtype=image.dtype)
    for row_offset in (0, 1):
        for col_offset in (0, 1):
            row, col = top + row_offset, left + col_offset
            weight = (1 - (rows - row).abs()) * (1 - (cols - col).abs())
            inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
            values = image[:, row.clamp(0, height - 1).long(), col.clamp(0, width - 1).long()]
            result += values * (weight * inside)
    valid = (rows > -1) & (rows < height) & (cols > -1) & (cols < width)
    return result * valid


def direct_modulated_deformable_conv(x, offsets, masks, weight, bias, groups):
    """DCNv2 (stride 1, padding k // 2) written out tap by tap: offset channel ``g * 2K + 2t`` is the row offset and
    ``g * 2K + 2t + 1`` the column offset of tap ``t`` of deformable group ``g``; mask channel ``g * K + t``."""
    batch, channels, height, width = x.shape
    kernel = weight.shape[-1]
    taps = kernel * kernel
    output = bias.view(1, -1, 1, 1).expand(batch, -1, height, width).clone()
    rows, cols = torch.meshgrid(torch.arange(height, dtype=x.dtype), torch.arange(width, dtype=x.dtype), indexing="ij")
    group_channels = channels // groups
    for b in range(batch):
        for g in range(groups):
            block = x[b, g * group_channels : (g + 1) * group_channels]
            for t in range(taps):
                i, j = divmod(t, kernel)
                dy = offsets[b, g * 2 * taps + 2 * t]
                dx = offsets[b, g * 2 * taps + 2 * t + 1]
                sampled = bilinear_sample(block, rows - kernel // 2 + i + dy, cols - kernel // 2 + j + dx)
                sampled = sampled * masks[b, g * taps + t]
                tap_weight = weight[:, g * group_channels : (g + 1) * group_channels, i, j]
                output[b] += torch.einsum("oc,chw->ohw", tap_weight, sampled)
    return output


def test_modulated_deformable_conv_equals_a_direct_per_tap_bilinear_computation():
    torch.manual_seed(0)
    module = ModulatedDeformableConv2d(16, groups=8).double()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.5)  # offsets of a few pixels: samples outside the map and on its border too
    x, guide = torch.randn(2, 16, 6, 7, dtype=torch.float64), torch.randn(2, 16, 6, 7, dtype=torch.float64)
    offsets, masks = module.offsets_and_masks(guide)
    # the predictor's three chunks: offsets = cat(first, second), masks = sigmoid(third)
    raw = F.conv2d(guide, module.offset_mask.weight, module.offset_mask.bias, padding=1)
    torch.testing.assert_close(offsets, raw[:, :144], rtol=0, atol=0)
    torch.testing.assert_close(masks, raw[:, 144:].sigmoid(), rtol=0, atol=0)
    assert offsets.abs().max() > 2 and (offsets.abs() < 1e-3).sum() < offsets.numel()
    expected = direct_modulated_deformable_conv(x, offsets, masks, module.weight, module.bias, groups=8)
    output = module(x, guide)
    assert (output - expected).abs().max() < 1e-10


@pytest.mark.parametrize(
    ("shape", "groups", "kernel"),
    [((2, 16, 6, 7), 8, 3), ((1, 8, 1, 5), 2, 3), ((1, 6, 4, 1), 3, 3), ((2, 4, 5, 5), 1, 1), ((1, 4, 6, 6), 2, 5)],
)
def test_deformable_conv_by_sampling_equals_torchvision_in_float64(shape, groups, kernel):
    """Offsets of a few pixels (samples outside the map, across its border and on it), maps of one row or one
    column, one to eight deformable groups, 1x1 to 5x5 kernels."""
    torch.manual_seed(5)
    batch, channels, height, width = shape
    taps = kernel * kernel
    x = torch.randn(shape, dtype=torch.float64)
    offsets = 2.5 * torch.randn(batch, 2 * groups * taps, height, width, dtype=torch.float64)
    offsets[:, :4] = offsets[:, :4].round()  # some samples exactly on pixels, on the border and one past it
    masks = torch.rand(batch, groups * taps, height, width, dtype=torch.float64)
    weight = torch.randn(5, channels, kernel, kernel, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    expected = deform_conv2d(x, offsets, weight, bias, padding=kernel // 2, mask=masks)
    output = modulated_deformable_conv_by_sampling(x, offsets, masks, weight, bias)
    assert output.shape == expected.shape
    assert (output - expected).abs().max() < 1e-12

    # operands that are crops of wider maps (not contiguous) and channels-last: the same values
    def cropped(t):
        return F.pad(t, (0, 3)).contiguous(memory_format=torch.channels_last)[..., :width]

    operands = [cropped(t) for t in (x, offsets, masks)]
    assert not operands[1].is_contiguous()
    assert (modulated_deformable_conv_by_sampling(*operands, weight, bias) - expected).abs().max() < 1e-12


def test_deformable_conv_by_sampling_in_float32_is_as_close_to_float64_as_torchvision():
    torch.manual_seed(6)
    x = torch.randn(1, 32, 40, 40, dtype=torch.float64)
    offsets = 3 * torch.randn(1, 144, 40, 40, dtype=torch.float64)
    masks = torch.rand(1, 72, 40, 40, dtype=torch.float64)
    weight, bias = 0.1 * torch.randn(32, 32, 3, 3, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    exact = deform_conv2d(x, offsets, weight, bias, padding=1, mask=masks)
    operands = [t.float() for t in (x, offsets, masks, weight, bias)]
    torchvision_error = (deform_conv2d(*operands[:2], *operands[3:], padding=1, mask=operands[2]) - exact).abs().max()
    sampling_error = (modulated_deformable_conv_by_sampling(*operands) - exact).abs().max()
    assert sampling_error < max(3 * torchvision_error, 1e-5)


def test_cpu_inference_runs_the_sampling_form_and_training_torchvision():
    torch.manual_seed(7)
    module = ModulatedDeformableConv2d(16, groups=8).double()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.5)
    x, guide = torch.randn(1, 16, 6, 7, dtype=torch.float64), torch.randn(1, 16, 6, 7, dtype=torch.float64)
    offsets, masks = module.offsets_and_masks(guide)
    expected = direct_modulated_deformable_conv(x, offsets, masks, module.weight, module.bias, groups=8)
    refused = mock.Mock(side_effect=AssertionError("torchvision's kernel ran"))
    with torch.no_grad(), mock.patch.object(modeling_fapn, "deform_conv2d", refused):
        inference = module(x, guide)
    assert (inference - expected).abs().max() < 1e-10
    sampling = mock.Mock(side_effect=AssertionError("the sampling form ran"))
    with mock.patch.object(modeling_fapn, "modulated_deformable_conv_by_sampling", sampling):
        training = module(x, guide)  # the weights need gradients: torchvision's kernel and its backward
        training.sum().backward()
    assert (training - expected).abs().max() < 1e-10
    assert module.weight.grad is not None and module.offset_mask.weight.grad.abs().max() > 0


def test_offsets_are_read_row_first():
    """A pure row offset of +1 px on every tap: output row r, tap row i reads input row r + i (a plain convolution
    whose padding moved from the top to the bottom). Read as a column offset it would shift the columns instead."""
    torch.manual_seed(1)
    module = ModulatedDeformableConv2d(8, groups=8).double()
    with torch.no_grad():
        module.weight.normal_()
        module.bias.zero_()
        module.offset_mask.weight.zero_()
        bias = torch.zeros(216, dtype=torch.float64)
        bias[0:144:2] = 1.0  # every (dy) channel: one row down in the sampling grid
        bias[144:] = 20.0  # masks sigmoid(20) ~ 1
        module.offset_mask.bias.copy_(bias)
    x = torch.randn(1, 8, 9, 9, dtype=torch.float64)
    output = module(x, torch.zeros_like(x))
    shifted = F.pad(x, (1, 1, 0, 2))  # (left, right, top, bottom)
    expected = F.conv2d(shifted, module.weight) * torch.sigmoid(torch.tensor(20.0, dtype=torch.float64))
    assert (output - expected).abs().max() < 1e-10


def test_feature_align_formula_and_its_tied_group_norm():
    torch.manual_seed(2)
    align = FeatureAlign(32)
    norm = torch.nn.GroupNorm(32, 32)
    with torch.no_grad():
        for parameter in [*align.parameters(), *norm.parameters()]:
            parameter.normal_(0, 0.2)
    lateral, summed = torch.randn(1, 32, 5, 6), torch.randn(1, 32, 5, 6)
    offset_features = norm(F.conv2d(torch.cat([lateral, 2 * summed], dim=1), align.offset_projection.weight))
    expected = F.relu(align.deformable_conv(summed, offset_features)) + lateral
    torch.testing.assert_close(align(lateral, summed, offset_norm=norm), expected, rtol=0, atol=0)
    # the offset branch has no GroupNorm of its own: the level's output-conv norm is the one (one tensor, one key)
    assert not any("norm" in name for name, _ in align.named_parameters())
    decoder = SeMaskFaPNPixelDecoder(tiny_config("fapn"), [16, 32, 64, 128])
    assert {name for name, _ in decoder.named_parameters() if name.startswith("align_1.")} == {
        "align_1.offset_projection.weight",
        "align_1.deformable_conv.weight",
        "align_1.deformable_conv.bias",
        "align_1.deformable_conv.offset_mask.weight",
        "align_1.deformable_conv.offset_mask.bias",
    }


def test_deformable_conv_computes_in_float32_under_autocast_and_in_the_weights_dtype_otherwise():
    torch.manual_seed(3)
    module = ModulatedDeformableConv2d(16)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.1)
    x, guide = torch.randn(1, 16, 5, 5), torch.randn(1, 16, 5, 5)
    reference = module(x, guide)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = module(x.bfloat16(), guide.bfloat16())
    assert under_autocast.dtype == torch.float32  # the original's float32 DCN output
    torch.testing.assert_close(under_autocast, module(x.bfloat16().float(), guide.bfloat16().float()))
    assert (under_autocast - reference).abs().max() < 0.1  # only the bf16 rounding of the inputs differs
    in_bfloat16 = module.to(torch.bfloat16)(x.bfloat16(), guide.bfloat16())
    assert in_bfloat16.dtype == torch.bfloat16


@pytest.mark.parametrize("pixel_decoder_type", ["fapn", "msfapn"])
def test_a_bfloat16_model_and_an_autocast_forward_run(pixel_decoder_type):
    model = SeMaskMask2FormerForSemanticSegmentation(tiny_config(pixel_decoder_type)).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(pixel_values).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_logits = model(pixel_values).logits
        bfloat16_logits = model.to(torch.bfloat16)(pixel_values.bfloat16()).logits
    assert bfloat16_logits.dtype == torch.bfloat16
    assert (autocast_logits.float() - reference).abs().max() < 0.1
    assert (bfloat16_logits.float() - reference).abs().max() < 0.1


@pytest.mark.parametrize("num_labels", [150, 19, 5])
def test_fapn_copies_attend_window_window_global_global_for_every_class_count(num_labels):
    """The SeMask-FAPN copy of the backbone hard-codes W W G G; the Mask2Former copy's rule depends on the classes."""
    for pixel_decoder_type in ("fapn", "msfapn"):
        config = SeMaskMask2FormerConfig(pixel_decoder_type=pixel_decoder_type, num_labels=num_labels)
        assert config.backbone_config.semantic_attention_types == ["window", "window", "global", "global"]
    mask2former = SeMaskMask2FormerConfig(num_labels=num_labels).backbone_config.semantic_attention_types
    assert mask2former == ["window"] * 3 + (["global"] if num_labels == 150 else ["window"])


def test_pixel_decoder_types_build_their_decoders_and_a_bad_one_is_named():
    for pixel_decoder_type, decoder_class in (("fapn", SeMaskFaPNPixelDecoder), ("msfapn", SeMaskMSFaPNPixelDecoder)):
        model = SeMaskMask2FormerForSemanticSegmentation(tiny_config(pixel_decoder_type))
        assert type(model.model.pixel_level_module.decoder) is decoder_class
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="pixel_decoder_type = 'fpn'"):
        SeMaskMask2FormerConfig(pixel_decoder_type="fpn")


def test_feature_channels_must_split_into_the_eight_deformable_groups():
    with pytest.raises(ValueError, match=r"channels \(12\) must be divisible by the 8 deformable groups"):
        ModulatedDeformableConv2d(12)
