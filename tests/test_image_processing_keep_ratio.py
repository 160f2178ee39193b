"""Tests of the SeMask image processors (torchvision and PIL/NumPy backends).

The expected numbers are computed by hand or with `torch.nn.functional.interpolate` in the test, following the
SeMask-FPN mmseg 0.11 test pipeline: mmcv `imrescale` keep-ratio resize (bilinear, no antialiasing) of the uint8
image, then ImageNet normalisation.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hf_semseg.models.image_processing_keep_ratio import KeepRatioImageProcessor
from hf_semseg.models.image_processing_pil_keep_ratio import KeepRatioImageProcessorPil
from hf_semseg.models.image_processing_utils_segmentation import check_post_process_sizes, get_keep_ratio_output_size


MODULE_DIR = Path(__file__).resolve().parents[1] / "hf_semseg" / "models"
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
ONE_LEVEL = 1 / 255 / 0.224 + 1e-5  # one intensity level after normalisation (largest over the three channels)

BACKENDS = [KeepRatioImageProcessor, KeepRatioImageProcessorPil]


@pytest.fixture(params=BACKENDS, ids=["torchvision", "pil"])
def processor_class(request):
    return request.param


def reference_pixel_values(image_hwc: np.ndarray, output_size: tuple[int, int], antialias: bool = False) -> np.ndarray:
    """What mmseg feeds the model: bilinear (align_corners=False) resize of the uint8 image, rounded, normalised."""
    tensor = torch.from_numpy(image_hwc).permute(2, 0, 1)[None].to(torch.float32)
    resized = F.interpolate(tensor, size=output_size, mode="bilinear", align_corners=False, antialias=antialias)
    resized = resized.round().clamp(0, 255)[0].numpy().astype(np.float64)
    return (resized / 255.0 - MEAN[:, None, None]) / STD[:, None, None]


# ------------------------------------------------------------------------------------------------------------------
# Resize rule (mmcv imrescale)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "input_size, bounds, expected",
    [
        ((512, 683), (2048, 512), (512, 683)),  # already at the short bound: scale 1
        ((375, 500), (2048, 512), (512, 683)),  # f = 512/375; 500 * f = 682.67 -> 683
        ((1024, 2048), (2048, 1024), (1024, 2048)),  # Cityscapes: unchanged
        ((1000, 3000), (2048, 512), (512, 1536)),  # f = min(2048/3000, 512/1000) = 0.512
        ((100, 1000), (2048, 512), (205, 2048)),  # long bound wins: f = 2.048, 100 * f = 204.8 -> 205
        ((375, 500), (2560, 640), (640, 853)),  # 640 models: f = 640/375, 500 * f = 853.3 -> 853
        ((2000, 1500), (2048, 1024), (1365, 1024)),  # portrait: f = 1024/1500, 2000 * f = 1365.3 -> 1365
    ],
)
def test_keep_ratio_output_size(input_size, bounds, expected):
    assert get_keep_ratio_output_size(*input_size, *bounds) == expected
    # mmcv takes the larger bound as the long one whatever the order
    assert get_keep_ratio_output_size(*input_size, bounds[1], bounds[0]) == expected


@pytest.mark.parametrize(
    "input_size, expected", [((375, 500), (512, 683)), ((60, 40), (768, 512)), ((40, 2000), (41, 2048))]
)
def test_processed_shape_follows_keep_ratio_rule(processor_class, input_size, expected):
    processor = processor_class()
    assert processor.get_output_size(*input_size) == expected
    image = np.zeros((*input_size, 3), dtype=np.uint8)
    pixel_values = processor(image, return_tensors="pt").pixel_values
    assert tuple(pixel_values.shape) == (1, 3, *expected)
    assert pixel_values.dtype == torch.float32


@pytest.mark.parametrize(
    "size, expected",
    [
        ({"shortest_edge": 512}, (512, 683)),  # f = 512/375; 500 * f = 682.67 -> 683
        ({"longest_edge": 512}, (384, 512)),  # f = 512/500; 375 * f = 384
        ({"shortest_edge": 100}, (100, 133)),  # f = 100/375 shrinks; 500 * f = 133.3 -> 133
    ],
)
def test_one_edge_sizes_scale_that_edge_keeping_the_ratio(processor_class, size, expected):
    """``{"shortest_edge": S}`` alone scales the short side to S, ``{"longest_edge": L}`` alone the long side to L,
    whatever the other side becomes (mmcv ``imrescale`` with a float factor; rounded half up)."""
    processor = processor_class(size=size)
    assert processor.get_output_size(375, 500) == expected
    if "shortest_edge" in size:  # an int size is a shortest edge, as transformers' keep-ratio processors read it
        assert dict(processor_class(size=size["shortest_edge"]).size) == size
    assert processor.get_output_size(500, 375) == expected[::-1]
    image = np.zeros((375, 500, 3), dtype=np.uint8)
    assert tuple(processor(image, return_tensors="pt").pixel_values.shape) == (1, 3, *expected)


def test_fixed_size_and_no_resize(processor_class):
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    fixed = processor_class(size={"height": 64, "width": 48})(image, return_tensors="pt").pixel_values
    assert tuple(fixed.shape) == (1, 3, 64, 48)
    np.testing.assert_allclose(fixed[0].numpy(), reference_pixel_values(image, (64, 48)), atol=ONE_LEVEL)

    unresized = processor_class()(image, do_resize=False, return_tensors="pt").pixel_values
    assert tuple(unresized.shape) == (1, 3, 30, 50)
    expected = (image.transpose(2, 0, 1) / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
    np.testing.assert_allclose(unresized[0].numpy(), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Pixel values
# ------------------------------------------------------------------------------------------------------------------


def test_constant_image_normalisation(processor_class):
    pixel_values = processor_class()(np.full((40, 60, 3), 124, np.uint8), return_tensors="pt").pixel_values
    assert tuple(pixel_values.shape) == (1, 3, 512, 768)
    for channel in range(3):
        expected = (124 / 255 - MEAN[channel]) / STD[channel]
        torch.testing.assert_close(
            pixel_values[0, channel], torch.full((512, 768), expected, dtype=torch.float32), atol=1e-6, rtol=0
        )
    # channel 0 equals the originals' (124 - 123.675) / 58.395
    assert abs(pixel_values[0, 0, 0, 0].item() - (124 - 123.675) / 58.395) < 1e-6


@pytest.mark.parametrize("input_size", [(97, 131), (700, 1100)], ids=["upscale", "downscale"])
def test_backends_agree_with_interpolate_reference(input_size):
    image = np.random.default_rng(1).integers(0, 256, (*input_size, 3), dtype=np.uint8)
    size = {"longest_edge": 400, "shortest_edge": 300}
    output_size = get_keep_ratio_output_size(*input_size, 400, 300)
    reference = reference_pixel_values(image, output_size)

    torchvision_values = KeepRatioImageProcessor(size=size)(image, return_tensors="pt").pixel_values[0].numpy()
    pil_values = KeepRatioImageProcessorPil(size=size)(image, return_tensors="pt").pixel_values[0].numpy()
    assert torchvision_values.shape == pil_values.shape == reference.shape == (3, *output_size)
    assert np.abs(torchvision_values - pil_values).max() <= ONE_LEVEL
    assert np.abs(torchvision_values - reference).max() <= ONE_LEVEL
    assert np.abs(pil_values - reference).max() <= ONE_LEVEL
    # the resized intensities are exactly those of the float32 reference (only the normalisation rounding differs)
    assert np.abs(pil_values - reference).max() < 1e-5
    assert np.abs(torchvision_values - reference).max() < 1e-5

    if output_size[0] < input_size[0]:
        # an antialiased resize would be measurably different: the processors really do not antialias
        antialiased = reference_pixel_values(image, output_size, antialias=True)
        assert np.abs(antialiased - reference).max() > 10 * ONE_LEVEL


def test_input_types_give_same_result(processor_class):
    image = np.random.default_rng(2).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    processor = processor_class(size={"longest_edge": 100, "shortest_edge": 66})
    from_numpy = processor(image, return_tensors="pt").pixel_values
    from_pil = processor(Image.fromarray(image), return_tensors="pt").pixel_values
    from_chw_tensor = processor(torch.from_numpy(image).permute(2, 0, 1), return_tensors="pt").pixel_values
    torch.testing.assert_close(from_pil, from_numpy, atol=0, rtol=0)
    torch.testing.assert_close(from_chw_tensor, from_numpy, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------------------------
# RGB conversion
# ------------------------------------------------------------------------------------------------------------------


def test_grayscale_inputs_become_rgb(processor_class):
    processor = processor_class(do_resize=False)
    gray = np.random.default_rng(3).integers(0, 256, (20, 30), dtype=np.uint8)
    expected = np.stack([(gray / 255.0 - MEAN[c]) / STD[c] for c in range(3)])
    for image in (gray, gray[..., None], gray[None], Image.fromarray(gray, mode="L"), torch.from_numpy(gray)):
        pixel_values = processor(image, return_tensors="pt").pixel_values
        assert tuple(pixel_values.shape) == (1, 3, 20, 30)
        np.testing.assert_allclose(pixel_values[0].numpy(), expected, atol=1e-5)


def test_alpha_and_palette_inputs_become_rgb(processor_class):
    processor = processor_class(do_resize=False)
    rgb = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    expected = processor(rgb, return_tensors="pt").pixel_values

    opaque = np.concatenate([rgb, np.full((20, 30, 1), 255, np.uint8)], axis=-1)
    for image in (opaque, Image.fromarray(opaque, mode="RGBA"), Image.fromarray(rgb).convert("P")):
        pixel_values = processor(image, return_tensors="pt").pixel_values
        assert tuple(pixel_values.shape) == (1, 3, 20, 30)
        if not isinstance(image, Image.Image) or image.mode == "RGBA":
            torch.testing.assert_close(pixel_values, expected, atol=1e-6, rtol=0)

    # transparency is composited onto white: 124 at alpha 124 -> round(124 * a + 255 * (1 - a)) = 191
    half = np.full((8, 8, 4), 124, np.uint8)
    composited = (191 / 255 - MEAN) / STD
    for image in (half, Image.fromarray(half, mode="RGBA")):
        pixel_values = processor(image, return_tensors="pt").pixel_values
        np.testing.assert_allclose(pixel_values[0, :, 0, 0].numpy(), composited, atol=1e-5)

    gray_alpha = Image.fromarray(np.full((8, 8, 2), 255, np.uint8), mode="LA")
    pixel_values = processor(gray_alpha, return_tensors="pt").pixel_values
    np.testing.assert_allclose(pixel_values[0, :, 0, 0].numpy(), (1 - MEAN) / STD, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Segmentation maps
# ------------------------------------------------------------------------------------------------------------------


def test_reduce_labels(processor_class):
    seg = np.array([[0, 1, 2, 150], [255, 0, 7, 1]], dtype=np.uint8)
    image = np.zeros((2, 4, 3), np.uint8)
    processor = processor_class(do_resize=False)

    reduced = processor(image, segmentation_maps=seg, do_reduce_labels=True, return_tensors="pt").labels
    assert reduced.dtype == torch.int64
    assert reduced.tolist() == [[[255, 0, 1, 149], [255, 255, 6, 0]]]

    plain = processor(image, segmentation_maps=seg, return_tensors="pt").labels
    assert plain.dtype == torch.int64
    assert plain.tolist() == [seg.tolist()]

    # the attribute set at construction is used by default
    reduced_default = processor_class(do_resize=False, do_reduce_labels=True)(
        image, segmentation_maps=Image.fromarray(seg), return_tensors="pt"
    ).labels
    assert torch.equal(reduced_default, reduced)


def test_segmentation_map_nearest_resize(processor_class):
    rng = np.random.default_rng(5)
    seg = rng.choice(np.array([3, 17, 255], dtype=np.uint8), size=(30, 45))
    image = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)
    inputs = processor_class()(image, segmentation_maps=seg, return_tensors="pt")
    assert tuple(inputs.labels.shape) == (1, *inputs.pixel_values.shape[-2:]) == (1, 512, 768)
    assert inputs.labels.dtype == torch.int64
    assert set(inputs.labels.unique().tolist()) == {3, 17, 255}
    # OpenCV INTER_NEAREST == torch "nearest" (floor of dst * in / out)
    expected = F.interpolate(torch.from_numpy(seg)[None, None].float(), size=(512, 768), mode="nearest")[0, 0]
    assert torch.equal(inputs.labels[0], expected.long())


def test_mismatched_segmentation_map_raises(processor_class):
    images = [np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30, 3), np.uint8)]
    maps = [np.zeros((20, 30), np.uint8), np.zeros((21, 30), np.uint8)]
    with pytest.raises(ValueError, match=r"Segmentation map 1 has size \(21, 30\).*image 1 has size \(20, 30\)"):
        processor_class()(images, segmentation_maps=maps)
    with pytest.raises(ValueError, match="2 images but 1 segmentation maps"):
        processor_class()(images, segmentation_maps=maps[:1])


# ------------------------------------------------------------------------------------------------------------------
# Batching and padding
# ------------------------------------------------------------------------------------------------------------------


def test_different_sizes_are_padded(processor_class):
    rng = np.random.default_rng(6)
    wide, tall = rng.integers(0, 256, (40, 60, 3), np.uint8), rng.integers(0, 256, (60, 40, 3), np.uint8)
    seg_wide, seg_tall = rng.integers(0, 5, (40, 60), np.uint8), rng.integers(0, 5, (60, 40), np.uint8)
    processor = processor_class(size={"longest_edge": 120, "shortest_edge": 80})
    batch = processor([wide, tall], segmentation_maps=[seg_wide, seg_tall], return_tensors="pt")
    # wide -> (80, 120), tall -> (120, 80): both padded (bottom / right) to (120, 120)
    assert tuple(batch.pixel_values.shape) == (2, 3, 120, 120)
    assert tuple(batch.labels.shape) == (2, 120, 120)

    for index, (image, seg, (height, width)) in enumerate([(wide, seg_wide, (80, 120)), (tall, seg_tall, (120, 80))]):
        alone = processor(image, segmentation_maps=seg, return_tensors="pt")
        assert tuple(alone.pixel_values.shape) == (1, 3, height, width)
        valid = batch.pixel_values[index, :, :height, :width]
        torch.testing.assert_close(valid, alone.pixel_values[0], atol=0, rtol=0)
        assert torch.equal(batch.labels[index, :height, :width], alone.labels[0])
        padding = torch.ones(120, 120, dtype=torch.bool)
        padding[:height, :width] = False
        assert torch.all(batch.pixel_values[index][:, padding] == 0)
        assert torch.all(batch.labels[index][padding] == 255)

    with pytest.raises(ValueError, match="do_pad"):
        processor([wide, tall], do_pad=False, return_tensors="pt")
    unpadded = processor([wide, tall], do_pad=False)
    assert [tuple(p.shape) for p in unpadded.pixel_values] == [(3, 80, 120), (3, 120, 80)]
    fixed = processor([wide, tall], pad_size={"height": 128, "width": 128}, return_tensors="pt")
    assert tuple(fixed.pixel_values.shape) == (2, 3, 128, 128)


def test_grouped_batch_gives_the_same_numbers(processor_class):
    """Images of one shape are resized and normalised as one batch with `disable_grouping=False` (the default on
    GPU); the numbers are those of one image at a time."""
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, shape, np.uint8) for shape in [(40, 60, 3), (60, 40, 3), (40, 60, 3)]]
    images.append(rng.random((40, 60, 3)).astype(np.float32))
    maps = [rng.integers(0, 5, image.shape[:2], np.uint8) for image in images]
    processor = processor_class(size={"longest_edge": 120, "shortest_edge": 80}, size_divisor=32)
    grouped = processor(images, segmentation_maps=maps, disable_grouping=False, return_tensors="pt")
    alone = processor(images, segmentation_maps=maps, disable_grouping=True, return_tensors="pt")
    assert tuple(grouped.pixel_values.shape) == (4, 3, 128, 128)
    assert torch.equal(grouped.pixel_values, alone.pixel_values) and torch.equal(grouped.labels, alone.labels)


# ------------------------------------------------------------------------------------------------------------------
# Post-processing
# ------------------------------------------------------------------------------------------------------------------


class _Outputs:
    def __init__(self, logits):
        self.logits = logits


def test_post_process_semantic_segmentation(processor_class):
    # one class per cell of a 2x2 grid, strongly dominant
    logits = torch.zeros(1, 4, 2, 2)
    for cls, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        logits[0, cls, row, col] = 10.0
    processor = processor_class()

    (native,) = processor.post_process_semantic_segmentation(_Outputs(logits))
    assert native.dtype == torch.int64
    assert native.tolist() == [[0, 1], [2, 3]]

    (resized,) = processor.post_process_semantic_segmentation(_Outputs(logits), target_sizes=[(4, 4)])
    assert resized.dtype == torch.int64
    assert resized.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]

    batch_logits = torch.randn(2, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    # logits of two images that were not padded (each covers its whole image): image_sizes say so
    unpadded = {"image_sizes": [(8, 8), (8, 8)]}
    maps = processor.post_process_semantic_segmentation(
        _Outputs(batch_logits), target_sizes=[(13, 21), (8, 8)], **unpadded
    )
    assert [tuple(m.shape) for m in maps] == [(13, 21), (8, 8)]
    assert torch.equal(maps[1], batch_logits[1].argmax(0))
    expected = F.interpolate(batch_logits[:1], size=(13, 21), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(maps[0], expected)

    with_scores = processor.post_process_semantic_segmentation(
        _Outputs(batch_logits),
        target_sizes=torch.tensor([[13, 21], [8, 8]]),
        return_segmentation_scores=True,
        **unpadded,
    )
    assert tuple(with_scores[0].segmentation_scores.shape) == (5, 13, 21)
    assert torch.equal(with_scores[0].segmentation, maps[0])

    with pytest.raises(ValueError, match="Got 1 target_sizes for a batch of 2"):
        processor.post_process_semantic_segmentation(_Outputs(batch_logits), target_sizes=[(4, 4)])


def _pixel_logits(pixel_values: torch.Tensor) -> _Outputs:
    """A stand-in model: the first two channels as per-pixel logits (stride 1: the padding crops exactly)."""
    return _Outputs(pixel_values[:, :2].clone())


def _mixed_images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 30), (20, 50))]


def test_one_image_of_a_padded_batch_post_processed_alone_is_refused_unless_the_batch_size_is_given(processor_class):
    """Images of 384x512 and 384x506 resize to 256x341 and 256x337 in a batch padded to 256x341: the second image's
    stride-4 logits (64x86), post-processed alone, cover 4 columns more than its own 256x337 (84.25 at stride 4,
    which a non-whole stride of 3.93 explained): the padding was stretched over the image (6.6% of the pixels of
    another class with a colour stub). Refused at every whole stride; with the batch's ``pad_size`` exact."""
    processor = processor_class(size={"shortest_edge": 256, "longest_edge": 512})
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (384, width, 3), dtype=np.uint8) for width in (512, 506)]
    batch = processor(images, return_tensors="pt").pixel_values
    assert tuple(batch.shape[-2:]) == (256, 341)
    logits = F.avg_pool2d(batch[:, :2], 4, ceil_mode=True)  # a stride-4 stand-in model
    assert tuple(logits.shape[-2:]) == (64, 86)
    with pytest.raises(
        ValueError,
        match=r"logits of 64x86 do not match the 256x337 pixel values of image 0 that preprocessing with "
        r"do_resize=True, size=\{'shortest_edge': 256, 'longest_edge': 512\}, size_divisor=None, do_pad=True, "
        r"pad_size=None makes",
    ):
        processor.post_process_semantic_segmentation(_Outputs(logits[1:]), target_sizes=[(384, 506)])
    pad_size = {"height": 256, "width": 341}
    (alone,) = processor.post_process_semantic_segmentation(
        _Outputs(logits[1:]), target_sizes=[(384, 506)], pad_size=pad_size
    )
    whole = processor.post_process_semantic_segmentation(_Outputs(logits), target_sizes=[(384, 512), (384, 506)])
    assert torch.equal(alone, whole[1])


def test_post_processing_takes_the_calls_pad_size_and_size(processor_class):
    """A `pad_size` or `size` given to the call placed the images elsewhere than this processor's own settings say:
    post-processing cropped (or, unpadded, stretched) at the settings' places, 52% of a single image's pixels of
    another class. It takes the call's settings now, and refuses logits of another input instead of guessing."""
    processor = processor_class(size={"longest_edge": 64, "shortest_edge": 32})
    images = _mixed_images()
    sizes = [image.shape[:2] for image in images]
    alone = [
        processor.post_process_semantic_segmentation(
            _pixel_logits(processor(image, return_tensors="pt").pixel_values), target_sizes=[size]
        )[0]
        for image, size in zip(images, sizes)
    ]
    pad_size = {"height": 64, "width": 64}
    padded = processor(images[0], pad_size=pad_size, return_tensors="pt").pixel_values
    with pytest.raises(ValueError, match=r"logits of 64x64 do not match the 43x32 pixel values of image 0 .* pad_size"):
        processor.post_process_semantic_segmentation(_pixel_logits(padded), target_sizes=sizes[:1])
    (single,) = processor.post_process_semantic_segmentation(
        _pixel_logits(padded), target_sizes=sizes[:1], pad_size=pad_size
    )
    assert torch.equal(single, alone[0])
    batch = processor(images, pad_size=pad_size, return_tensors="pt").pixel_values
    maps = processor.post_process_semantic_segmentation(_pixel_logits(batch), target_sizes=sizes, pad_size=pad_size)
    assert all(torch.equal(got, expected) for got, expected in zip(maps, alone, strict=True))

    # a `size` of another aspect in a padded batch: the derived crop is refused, the call's size followed
    size = {"height": 48, "width": 48}
    batch = processor(images, size=size, return_tensors="pt").pixel_values  # fixed 48 x 48: nothing padded
    with pytest.raises(ValueError, match=r"logits of 48x48 do not match the 43x64 pixel values of image 0"):
        processor.post_process_semantic_segmentation(_pixel_logits(batch), target_sizes=sizes)
    maps = processor.post_process_semantic_segmentation(_pixel_logits(batch), target_sizes=sizes, size=size)
    for image_map, image, target in zip(maps, batch, sizes):
        logits = _pixel_logits(image[None]).logits  # at the 48 x 48 input: straight to the target
        expected = F.interpolate(logits, size=target, mode="bilinear", align_corners=False)[0].argmax(0)
        assert torch.equal(image_map, expected)
    with pytest.raises(TypeError, match=r"unexpected settings \['do_normalize'\]; it takes .*'pad_size'"):
        processor.post_process_semantic_segmentation(_pixel_logits(batch), target_sizes=sizes, do_normalize=False)
    with pytest.raises(ValueError, match="pad_size"):
        processor.post_process_semantic_segmentation(_pixel_logits(batch), target_sizes=sizes, pad_size={"height": 0})


def test_post_processing_resizes_through_the_input_size_as_mmseg(processor_class):
    """mmseg resizes the logits to the model's input (``encode_decode``), crops the padding, then resizes to the
    original size (``rescale=True``); an unpadded image's logits went straight to the target (0.14% of the pixels of
    another class), so one image gave different maps alone and in a padded batch."""
    processor = processor_class(size={"longest_edge": 90, "shortest_edge": 64})
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    pixel_values = processor(image, return_tensors="pt").pixel_values  # 64 x 90
    outputs = _Outputs(torch.randn(1, 3, 16, 23, generator=torch.Generator().manual_seed(0)))
    (scores,) = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(50, 70)], return_segmentation_scores=True
    )
    expected = F.interpolate(outputs.logits, size=tuple(pixel_values.shape[-2:]), mode="bilinear", align_corners=False)
    expected = F.interpolate(expected, size=(50, 70), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(scores.segmentation_scores, expected, atol=1e-6)
    direct = F.interpolate(outputs.logits, size=(50, 70), mode="bilinear", align_corners=False)[0]
    assert (direct - expected).abs().max() > 1e-2
    # scores already at the target size are taken as they are
    (same,) = processor.post_process_semantic_segmentation(
        _Outputs(expected[None]), target_sizes=[(50, 70)], return_segmentation_scores=True
    )
    assert torch.equal(same.segmentation_scores, expected)


#: (target_sizes for a batch of 2, the error's pattern): each named before it reaches an interpolation
BAD_TARGET_SIZES = [
    ([(0, 70), (8, 8)], r"target_sizes\[0\] is \(0, 70\); expected a \(height, width\) pair of whole numbers >= 1"),
    ([(8, 8), (-1, 70)], r"target_sizes\[1\] is \(-1, 70\)"),
    ([(45, 70, 3), (8, 8)], r"target_sizes\[0\] is \(45, 70, 3\)"),
    ([45, 70], r"target_sizes\[0\] is 45;"),
    ([(4.5, 8), (8, 8)], r"target_sizes\[0\] is \(4.5, 8\)"),
    ([(True, 8), (8, 8)], r"target_sizes\[0\] is \(True, 8\)"),
    ([("8", 8), (8, 8)], r"target_sizes\[0\] is \('8', 8\)"),
    (torch.tensor([45, 70]), r"target_sizes is a tensor of shape \(2,\); expected \(2, 2\)"),
]


@pytest.mark.parametrize("target_sizes, message", BAD_TARGET_SIZES)
def test_post_processing_names_a_malformed_target_size(processor_class, target_sizes, message):
    logits = torch.zeros(2, 5, 8, 8)
    with pytest.raises(ValueError, match=message):
        processor_class().post_process_semantic_segmentation(_Outputs(logits), target_sizes=target_sizes)


def test_post_processing_takes_whole_number_sizes_of_any_type_and_refuses_logits_without_a_batch_axis(
    processor_class,
):
    # at stride 64 of the 512 x 827 batch these two images are padded to (a square map would be another input's)
    logits = torch.randn(2, 5, 8, 13, generator=torch.Generator().manual_seed(0))
    processor = processor_class()
    reference = processor.post_process_semantic_segmentation(_Outputs(logits), target_sizes=[(13, 21), (8, 8)])
    for sizes in ([(13.0, 21.0), [8, 8]], np.array([[13, 21], [8, 8]]), [torch.tensor([13, 21]), (8, 8)]):
        maps = processor.post_process_semantic_segmentation(_Outputs(logits), target_sizes=sizes)
        assert all(torch.equal(a, b) for a, b in zip(maps, reference, strict=True))
    with pytest.raises(ValueError, match=r"logits have shape \(5, 8, 13\); expected \(batch_size, num_labels"):
        processor.post_process_semantic_segmentation(_Outputs(logits[0]))
    # a side of 1 is a size (>= 1): a one-row or one-column image
    assert check_post_process_sizes([(1, 21), (8.0, 1)], 2, "target_sizes") == [(1, 21), (8, 1)]


# ------------------------------------------------------------------------------------------------------------------
# Serialisation
# ------------------------------------------------------------------------------------------------------------------


def test_defaults(processor_class):
    processor = processor_class()
    assert dict(processor.size) == {"longest_edge": 2048, "shortest_edge": 512}
    assert processor.do_resize and processor.do_rescale and processor.do_normalize and processor.do_convert_rgb
    assert processor.do_pad and not processor.do_reduce_labels
    assert tuple(processor.image_mean) == (0.485, 0.456, 0.406)
    assert tuple(processor.image_std) == (0.229, 0.224, 0.225)
    assert abs(processor.rescale_factor - 1 / 255) < 1e-12


def test_save_and_load_round_trip(processor_class, tmp_path):
    processor = processor_class(
        size={"longest_edge": 2560, "shortest_edge": 640},
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.25, 0.3],
        do_reduce_labels=True,
    )
    processor.save_pretrained(tmp_path)
    config = (tmp_path / "preprocessor_config.json").read_text()
    assert '"image_processor_type": "KeepRatioImageProcessor"' in config

    for loader in BACKENDS:
        loaded = loader.from_pretrained(tmp_path)
        assert type(loaded) is loader
        assert dict(loaded.size) == {"longest_edge": 2560, "shortest_edge": 640}
        assert tuple(loaded.image_mean) == (0.5, 0.4, 0.3)
        assert tuple(loaded.image_std) == (0.2, 0.25, 0.3)
        assert loaded.do_reduce_labels is True
        image = np.zeros((300, 400, 3), np.uint8)
        assert tuple(loaded(image, return_tensors="pt").pixel_values.shape) == (1, 3, 640, 853)

    # to_dict / from_dict keep the same configuration
    again = processor_class.from_dict(processor.to_dict())
    assert again.to_dict() == processor.to_dict()


# ------------------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_input, message",
    [
        (np.zeros((20, 30, 2), np.uint8), r"Image 0 has shape \(20, 30, 2\).*2-channel"),
        (np.zeros((20, 30, 5), np.uint8), r"Image 0 has shape \(20, 30, 5\).*1 \(grayscale\), 3 \(RGB\) or 4"),
        (
            np.zeros((1, 2, 20, 30, 3), np.uint8),
            r"`images` has 5 dimensions \(shape \(1, 2, 20, 30, 3\)\); expected a single image with 2 \(H, W\) or "
            r"3 \(\(H, W, C\) or \(C, H, W\)\) dimensions, or a batch with 4 dimensions\.",
        ),
        ([np.zeros((20, 30, 3), np.uint8), np.zeros((1, 20, 30, 3), np.uint8)], r"Image 1 has 4 dimensions"),
        ([np.zeros((20, 30, 3), np.uint8), 3.0], r"Image 1 is a"),
        (np.zeros((20, 30, 3), bool), r"Image 0 has dtype bool"),
        (np.zeros((20, 0, 3), np.uint8), r"Image 0 has shape \(20, 0, 3\); it has no pixels"),
        (Image.new("RGB", (0, 5)), r"Image 0 is a PIL image of size \(0, 5\) \(width, height\); it has no pixels"),
        (Image.new("RGB", (5, 0)), r"Image 0 is a PIL image of size \(5, 0\) \(width, height\); it has no pixels"),
    ],
)
def test_bad_inputs_raise_clear_errors(processor_class, bad_input, message):
    with pytest.raises(ValueError, match=message):
        processor_class()(bad_input)


@pytest.mark.parametrize("resample", ["bicubic", "torchvision enum", int(Image.Resampling.BICUBIC)])
def test_resample_names_and_enums_are_the_pil_filter(processor_class, resample):
    """A mode name, torchvision's enum or PIL's integer resample the same as ``PILImageResampling.BICUBIC``."""
    if resample == "torchvision enum":
        from torchvision.transforms import InterpolationMode

        resample = InterpolationMode.BICUBIC
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    expected = processor_class(resample=Image.Resampling.BICUBIC)(image, return_tensors="pt").pixel_values
    bilinear = processor_class()(image, return_tensors="pt").pixel_values
    ours = processor_class(resample=resample)(image, return_tensors="pt").pixel_values
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)
    assert not torch.equal(ours, bilinear)


def test_nearest_and_bicubic_image_resizes_by_hand(processor_class):
    """NEAREST repeats pixels (OpenCV INTER_NEAREST, floor of ``dst * in / out``); BICUBIC of a uint8 step overshoots
    (torch's and OpenCV's A = -0.75) and is clamped to 0-255 as OpenCV saturates uint8."""
    raw = {"do_rescale": False, "do_normalize": False, "return_tensors": "pt"}
    image = np.array([[10, 20, 30], [40, 50, 60]], np.uint8)[..., None].repeat(3, -1)
    nearest = processor_class(size={"height": 4, "width": 6}, resample=Image.Resampling.NEAREST)(image, **raw)
    expected = [[10, 10, 20, 20, 30, 30]] * 2 + [[40, 40, 50, 50, 60, 60]] * 2
    assert nearest.pixel_values[0].tolist() == [expected] * 3

    step = np.zeros((2, 4, 3), np.uint8)
    step[:, 2:] = 255
    unclamped = F.interpolate(torch.from_numpy(step[..., 0]).float()[None, None], size=(2, 8), mode="bicubic")
    assert unclamped.min() < -26 and unclamped.max() > 281  # the overshoot the clamp removes
    bicubic = processor_class(size={"height": 2, "width": 8}, resample=Image.Resampling.BICUBIC)(step, **raw)
    assert bicubic.pixel_values[0].tolist() == [[[0, 0, 0, 58, 197, 255, 255, 255]] * 2] * 3


def test_bad_options_raise_clear_errors(processor_class):
    with pytest.raises(ValueError, match="support `size` dicts"):
        processor_class(size={"max_height": 100, "max_width": 100})
    with pytest.raises(ValueError, match="Unsupported `resample`"):
        processor_class(resample=Image.Resampling.LANCZOS)
    from torchvision.transforms import InterpolationMode

    for name in ("area", "lanczos", InterpolationMode.LANCZOS):  # names and enums of modes without an equivalent
        with pytest.raises(ValueError, match=r"Unsupported `resample`=.*support PILImageResampling\.NEAREST"):
            processor_class(resample=name)
    with pytest.raises(ValueError, match="1 channel"):
        processor_class()(np.zeros((20, 30), np.uint8), do_convert_rgb=False)
    with pytest.raises(ValueError, match=r"Segmentation map 0 .*mode 'RGB'"):
        processor_class()(np.zeros((4, 4, 3), np.uint8), segmentation_maps=Image.new("RGB", (4, 4)))


# ------------------------------------------------------------------------------------------------------------------
# Portability (remote code)
# ------------------------------------------------------------------------------------------------------------------


def _load_as_remote_code(package_name: str, module_name: str):
    """Load a processor module as trust_remote_code would: from its file, inside a package holding its siblings."""
    package = types.ModuleType(package_name)
    package.__path__ = [str(MODULE_DIR)]
    sys.modules[package_name] = package
    spec = importlib.util.spec_from_file_location(f"{package_name}.{module_name}", MODULE_DIR / f"{module_name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_pil_backend_module_works_with_torchvision_blocked(monkeypatch):
    # `import torchvision` (or any submodule) now raises ImportError, as if it were not installed
    for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    for name in [name for name in sys.modules if name.startswith("semask_remote_code")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        with pytest.raises(ImportError):  # sanity check: the block works on the torchvision backend
            _load_as_remote_code("semask_remote_code_tv", "image_processing_keep_ratio")
        module = _load_as_remote_code("semask_remote_code", "image_processing_pil_keep_ratio")
        processor = module.KeepRatioImageProcessorPil()
        out = processor(
            np.full((40, 60, 3), 124, np.uint8), segmentation_maps=np.ones((40, 60), np.uint8), return_tensors="pt"
        )
        assert tuple(out.pixel_values.shape) == (1, 3, 512, 768)
        assert abs(out.pixel_values[0, 0, 0, 0].item() - (124 / 255 - 0.485) / 0.229) < 1e-6
        assert out.labels.unique().tolist() == [1]
    finally:
        for name in [name for name in sys.modules if name.startswith("semask_remote_code")]:
            del sys.modules[name]


@pytest.mark.skipif(not os.environ.get("RUN_SLOW"), reason="starts a fresh interpreter (~15 s); set RUN_SLOW=1")
def test_pil_backend_works_without_torchvision_in_fresh_interpreter():
    script = textwrap.dedent(
        f"""
        import importlib.util, sys, types
        sys.modules["torchvision"] = None  # import torchvision now raises ImportError
        folder = {str(MODULE_DIR)!r}
        package = types.ModuleType("semask_remote_code")
        package.__path__ = [folder]
        sys.modules["semask_remote_code"] = package
        name = "semask_remote_code.image_processing_pil_keep_ratio"
        spec = importlib.util.spec_from_file_location(name, folder + "/image_processing_pil_keep_ratio.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        import numpy as np
        processor = module.KeepRatioImageProcessorPil()
        out = processor(np.full((40, 60, 3), 124, np.uint8), segmentation_maps=np.ones((40, 60), np.uint8),
                        return_tensors="pt")
        assert tuple(out.pixel_values.shape) == (1, 3, 512, 768), out.pixel_values.shape
        assert abs(out.pixel_values[0, 0, 0, 0].item() - ((124 / 255) - 0.485) / 0.229) < 1e-6
        assert out.labels.unique().tolist() == [1]
        loaded = [m for m, v in sys.modules.items() if m.startswith("torchvision") and v is not None]
        assert not loaded, loaded
        print("OK")
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


def test_saved_processor_names_both_backends_and_loads_without_torchvision(tmp_path):
    """auto_map names both classes; where torchvision is missing, backend="pil" loads the PIL twin remotely."""
    import json
    import subprocess
    import sys

    import hf_semseg

    hf_semseg.KeepRatioImageProcessor(size={"height": 32, "width": 48}).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["auto_map"]["AutoImageProcessor"] == {
        "torchvision": "image_processing_keep_ratio.KeepRatioImageProcessor",
        "pil": "image_processing_pil_keep_ratio.KeepRatioImageProcessorPil",
    }
    assert (tmp_path / "image_processing_pil_keep_ratio.py").is_file()
    script = f"""
import sys
sys.modules["torchvision"] = None
sys.modules["hf_semseg"] = None
import numpy as np
from transformers import AutoImageProcessor
processor = AutoImageProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True, backend="pil")
out = processor(np.full((10, 20, 3), 124, dtype=np.uint8), return_tensors="pt")
print(type(processor).__name__, tuple(out["pixel_values"].shape), round(float(out["pixel_values"][0, 0, 0, 0]), 5))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = round((124 / 255 - 0.485) / 0.229, 5)
    assert result.stdout.split() == ["KeepRatioImageProcessorPil", "(1,", "3,", "32,", "48)", str(expected)]


def test_post_processing_crops_each_image_out_of_a_padded_batch(processor_class):
    """Images of different sizes are padded into one batch; the post-processing used to stretch the padded logits
    over each image. With per-pixel logits (a stand-in model: two classes from the first two channels), the batch's
    maps equal those of each image processed alone, where nothing is padded."""
    processor = processor_class(size={"longest_edge": 64, "shortest_edge": 32})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((20, 50), (40, 30))]
    original_sizes = [image.shape[:2] for image in images]

    def segment(pixel_values, sizes, **kwargs):
        return processor.post_process_semantic_segmentation(
            _Outputs(pixel_values[:, :2]), target_sizes=sizes, return_segmentation_scores=True, **kwargs
        )

    batch = processor(images, return_tensors="pt").pixel_values
    assert tuple(batch.shape[-2:]) == (43, 64)  # (26, 64) and (43, 32): padded to the largest of each side
    alone = [segment(processor(image, return_tensors="pt").pixel_values, [size])[0] for image, size in
             zip(images, original_sizes)]  # fmt: skip
    batched = segment(batch, original_sizes)
    for single, together in zip(alone, batched):
        torch.testing.assert_close(together.segmentation_scores, single.segmentation_scores, rtol=0, atol=1e-6)
        assert torch.equal(together.segmentation, single.segmentation)
    # the sizes after resizing may also be given; pad_size pads a single image too
    explicit = segment(batch, original_sizes, image_sizes=[(26, 64), (43, 32)])
    assert all(torch.equal(a.segmentation, b.segmentation) for a, b in zip(explicit, batched))
    processor.pad_size = {"height": 64, "width": 64}
    padded = processor(images[1], return_tensors="pt").pixel_values
    assert tuple(padded.shape[-2:]) == (64, 64)
    (single,) = segment(padded, original_sizes[1:])
    assert torch.equal(single.segmentation, alone[1].segmentation)
