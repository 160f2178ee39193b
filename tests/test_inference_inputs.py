"""Inputs a user of transformers or mmsegmentation plausibly passes to :mod:`hf_semseg.inference` (and to
:func:`hf_semseg.hub.check_hub_access`, which the scripts call before any work), and what each one now gives: an
error naming the argument, its value and what is expected, raised before any forward or resize. Before, each of
them reached torch (an empty ``torch.cat``, a reshape of 0 elements, ``upsample_bilinear2d`` not implemented for
'Long', a device mismatch inside the first layer), Python (a division by zero, ``len()`` of an int) or gave a silent
result (NaN scores, a stride ignored, a repository id refused only at the upload)."""

import math

import numpy as np
import pytest
import torch
from test_modeling_semask_swin import tiny_config

from hf_semseg import SeMaskSwinForSemanticSegmentation
from hf_semseg.inference import (
    crop_processor_padding,
    logits_to_size,
    multi_scale_flip_probabilities,
    sliding_window_logits,
    whole_image_logits,
    window_origins,
)


class CountingStub(torch.nn.Module):
    """Logits of 2 classes at stride 2 (the image's first channel and its negation), counting the forwards: every
    check here must refuse before the first one."""

    def __init__(self):
        super().__init__()
        self.forwards = 0

    def forward(self, pixel_values):
        self.forwards += 1
        first = torch.nn.functional.avg_pool2d(pixel_values[:, :1], 2, ceil_mode=True)
        return type("Output", (), {"logits": torch.cat([first, -first], 1)})()


def whole(model, pixel_values):
    return whole_image_logits(model, pixel_values)


def sliding(model, pixel_values):
    return sliding_window_logits(model, pixel_values, (4, 4), (2, 2))


def multi_scale(model, pixel_values):
    return multi_scale_flip_probabilities(model, pixel_values, scales=(0.5, 1.0))


INFERENCES = pytest.mark.parametrize("inference", [whole, sliding, multi_scale], ids=["whole", "slide", "aug"])


@INFERENCES
def test_pixel_values_of_another_rank_are_named(inference):
    """A single image without its batch axis: the sliding window unpacked 3 sides into 4 ("not enough values to
    unpack"), the multi-scale resize was torch's "same number of spatial dimensions"."""
    model = CountingStub()
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, channels, height, width\), got shape "):
        inference(model, torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"got shape \(3, 8, 8\) \(a single image needs a batch axis"):
        inference(model, torch.zeros(3, 8, 8))
    with pytest.raises(TypeError, match="pixel_values must be a torch.Tensor .*, got ndarray"):
        inference(model, np.zeros((1, 3, 8, 8), np.float32))
    assert model.forwards == 0


@INFERENCES
@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (1, 3, 0, 8), (1, 3, 8, 0)])
def test_empty_batches_and_images_are_named(inference, shape):
    """The sliding window's torch.cat of no windows ("expected a non-empty list of Tensors") or its reshape of 0
    elements; the multi-scale pass's interpolation to 0 pixels."""
    model = CountingStub()
    with pytest.raises(ValueError, match=rf"pixel_values has shape \({', '.join(map(str, shape))}\): pass at least"):
        inference(model, torch.zeros(shape))
    assert model.forwards == 0


@INFERENCES
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_pixel_values_are_refused(inference, dtype):
    """Unnormalised 8-bit images: bilinear interpolation is not implemented for them in torch, and a model without
    hf-semseg's input checks ran on them."""
    model = CountingStub()
    with pytest.raises(TypeError, match=rf"pixel_values must be floating-point .*, got {dtype}"):
        inference(model, torch.zeros(1, 3, 8, 8, dtype=dtype))
    assert model.forwards == 0


@INFERENCES
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_pixel_values_are_refused(inference, value):
    """NaN (or infinite) pixels gave NaN scores without a word, whose argmax is a class."""
    model = CountingStub()
    pixel_values = torch.zeros(1, 3, 8, 8)
    pixel_values[0, 1, 2, 3] = value
    with pytest.raises(ValueError, match="pixel_values holds NaN or infinite values"):
        inference(model, pixel_values)
    assert model.forwards == 0
    inference(model, torch.full((1, 3, 8, 8), 3e37))  # finite, though their float32 sum is not


@INFERENCES
def test_a_model_on_another_device_is_named(inference):
    """Weights on one device, pixel values (an image processor's output) on another: torch's error came from the
    first layer ("Tensor on device meta is not on the expected device cpu!"). The meta device stands for a GPU."""
    torch.manual_seed(0)
    model = SeMaskSwinForSemanticSegmentation(tiny_config()).eval().to("meta")
    with pytest.raises(ValueError, match=r"pixel_values is on cpu but the model's weights are on meta: move the"):
        inference(model, torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize(
    "crop, stride, window_batch_size, message",
    [
        (16, (8, 8), 8, r"crop_size must be two positive integers \(height, width\), got 16"),
        ((16, 16), None, 8, r"stride must be two positive integers \(height, width\), got None"),
        ((16, 16), (8, 8), 2.5, r"window_batch_size must be a positive integer, got 2\.5"),
        ((16, 16), (8, 8), 0, r"window_batch_size must be a positive integer, got 0"),
        ((8, 16), (12, 4), 8, r"stride \(12, 4\) is larger than crop_size \(8, 16\): the windows would leave"),
        ((16, 8), (4, 12), 8, r"stride \(4, 12\) is larger than crop_size \(16, 8\): the windows would leave"),
    ],
    ids=["int crop", "no stride", "float batch", "zero batch", "tall stride", "wide stride"],
)
def test_window_settings_that_are_not_pairs_are_named(crop, stride, window_batch_size, message):
    """``len()`` of an int, of None, and ``range()`` of a float were Python's errors, naming no argument."""
    model = CountingStub()
    with pytest.raises(ValueError, match=message):
        sliding_window_logits(model, torch.zeros(1, 3, 8, 8), crop, stride, window_batch_size)
    assert model.forwards == 0


def test_numpy_integer_windows_are_windows():
    """Window sizes read from NumPy (``np.int64``) were refused as not integers."""
    image = torch.randn(1, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        sliding_window_logits(CountingStub(), image, (np.int64(6), np.int64(6)), (np.int64(4), np.int64(4))),
        sliding_window_logits(CountingStub(), image, (6, 6), (4, 4)),
    )


@pytest.mark.parametrize(
    "scales, message",
    [
        ((), r"scales must be a non-empty sequence of positive ratios \(e\.g\. \(0\.5, 1\.0, 1\.5\)\), got \(\)"),
        (1.0, r"scales must be a non-empty sequence of positive ratios .*, got 1\.0"),
        ((1.0, 0), r"scales must be positive finite ratios, got 0 in \(1\.0, 0\)"),
        ((1.0, -0.5), r"scales must be positive finite ratios, got -0\.5 in \(1\.0, -0\.5\)"),
        ((1.0, math.nan), r"scales must be positive finite ratios, got nan in \(1\.0, nan\)"),
        ((1.0, math.inf), r"scales must be positive finite ratios, got inf in \(1\.0, inf\)"),
        ((1.0, 0.05), r"scale 0\.05 resizes the 8x8 input to 0x0 pixels: each scale must leave at least 1x1 pixel"),
    ],
    ids=["empty", "number", "zero", "negative", "nan", "infinite", "too small"],
)
def test_scales_are_checked_before_the_first_pass(scales, message):
    """No scales divided None by 0 passes (a TypeError); a zero, negative or too small ratio was torch's "Input and
    output sizes should be greater than 0" after the passes of the scales before it; NaN was Python's "cannot
    convert float NaN to integer"."""
    model = CountingStub()
    with pytest.raises(ValueError, match=message):
        multi_scale_flip_probabilities(model, torch.zeros(1, 3, 8, 8), scales=scales)
    assert model.forwards == 0


def test_a_stride_without_a_crop_size_is_refused():
    """The stride was ignored: every pass ran whole-image inference, silently."""
    model = CountingStub()
    with pytest.raises(ValueError, match=r"stride \(4, 4\) without crop_size: the stride of sliding-window inference"):
        multi_scale_flip_probabilities(model, torch.zeros(1, 3, 8, 8), scales=(1.0,), stride=(4, 4))
    with pytest.raises(ValueError, match=r"stride \(8, 8\) is larger than crop_size \(4, 4\)"):
        multi_scale_flip_probabilities(model, torch.zeros(1, 3, 8, 8), crop_size=(4, 4), stride=(8, 8))
    assert model.forwards == 0


@pytest.mark.parametrize(
    "logits, input_size, size, error, message",
    [
        (torch.zeros(1, 2, 4, 4), (8, 8), (0, 8), ValueError, r"size must be two positive integers .*, got \(0, 8\)"),
        (torch.zeros(1, 2, 4, 4), (8, 8), 8, ValueError, r"size must be two positive integers .*, got 8"),
        (torch.zeros(1, 2, 4, 4), (8, 8), (1, 8, 8), ValueError, r"size must be two .*, got \(1, 8, 8\)"),
        (torch.zeros(1, 2, 4, 4), (0, 8), (8, 8), ValueError, r"input_size must be two .*, got \(0, 8\)"),
        (torch.zeros(2, 4, 4), (8, 8), (8, 8), ValueError, r"logits must be a \(batch, num_labels, height, width\)"),
        (torch.zeros(1, 2, 4, 4, dtype=torch.long), (8, 8), (8, 8), TypeError, "logits must be floating-point"),
    ],
    ids=["size 0", "size int", "size 3-D", "input_size 0", "logits 3-D", "logits long"],
)
def test_logits_to_size_names_its_arguments(logits, input_size, size, error, message):
    """torch's interpolate refused these in its own words ("Input and output sizes should be greater than 0", "same
    number of spatial dimensions", not implemented for 'Long'); an input of 0 rows was resized silently."""
    with pytest.raises(error, match=message):
        logits_to_size(logits, input_size, size, padded_size=(8, 8))


@pytest.mark.parametrize("image_size", [(30, 50, 3), (-3, 50), 30])
def test_crop_processor_padding_refuses_what_is_not_an_image_size(image_size):
    """An image's ``(H, W, 3)`` shape was unpacked into the processor's ``get_output_size`` (a TypeError there), a
    negative height cropped the scores to 40x1 silently."""
    from hf_semseg import SeMaskMask2FormerImageProcessor

    processor = SeMaskMask2FormerImageProcessor(size={"shortest_edge": 40, "longest_edge": 100})
    with pytest.raises(ValueError, match=r"image_size must be two positive integers \(height, width\), got "):
        crop_processor_padding(torch.zeros(1, 1, 64, 96), processor, image_size)


def test_crop_processor_padding_crops_a_keep_ratio_processors_pad_size_as_its_post_processing_does():
    """A keep-ratio processor with a fixed `pad_size` pads every image, but only processors with `size_divisibility`
    were cropped: the padding's scores were stretched over the image (wrong metrics in evaluate_semantic_segmentation).
    The region is now the processor's own, the one its post_process_semantic_segmentation crops."""
    from hf_semseg import KeepRatioImageProcessor

    processor = KeepRatioImageProcessor(
        size={"longest_edge": 64, "shortest_edge": 32}, pad_size={"height": 64, "width": 64}
    )
    pixel_values = processor(np.zeros((20, 50, 3), np.uint8), return_tensors="pt")["pixel_values"]
    assert tuple(pixel_values.shape[-2:]) == (64, 64) and processor.get_output_size(20, 50) == (26, 64)
    scores = torch.zeros(1, 2, 64, 64)
    scores[:, 1, 26:] = 1.0  # class 1 only in the padding rows
    cropped = crop_processor_padding(scores, processor, (20, 50))
    assert torch.equal(cropped, scores[..., :26, :])
    resized = torch.nn.functional.interpolate(cropped, size=(20, 50), mode="bilinear", align_corners=False)
    assert resized.argmax(1).unique().tolist() == [0]
    post_processed = processor.post_process_semantic_segmentation(
        type("Output", (), {"logits": scores})(), target_sizes=[(20, 50)], return_segmentation_scores=True
    )[0]
    torch.testing.assert_close(post_processed["segmentation_scores"], resized[0])
    # without padding (do_pad=False) the pixel values are the resized image: nothing to crop
    assert (
        crop_processor_padding(
            scores, KeepRatioImageProcessor(do_pad=False, pad_size={"height": 64, "width": 64}), (20, 50)
        )
        is scores
    )


def test_crop_processor_padding_refuses_scores_smaller_than_the_image_region():
    """Scores at another resolution (e.g. the model's stride-4 logits) were cropped at pixel-value coordinates."""
    from hf_semseg import SeMaskMask2FormerImageProcessor

    processor = SeMaskMask2FormerImageProcessor(size={"shortest_edge": 40, "longest_edge": 100})
    with pytest.raises(
        ValueError,
        match=r"scores have shape \(1, 2, 16, 24\) but the image lies in the top-left 40x67 pixels of the "
        r"processor's pixel values of a 30x50 image: pass scores at the pixel values' resolution",
    ):
        crop_processor_padding(torch.zeros(1, 2, 16, 24), processor, (30, 50))
    # short on one side only is enough (the region is 40 x 67)
    for shape in ((1, 2, 39, 80), (1, 2, 48, 66)):
        with pytest.raises(ValueError, match=rf"scores have shape \(1, 2, {shape[2]}, {shape[3]}\) but the image lies"):
            crop_processor_padding(torch.zeros(shape), processor, (30, 50))
    assert crop_processor_padding(torch.zeros(1, 2, 40, 67), processor, (30, 50)).shape == (1, 2, 40, 67)
    # a 1 x 1 image is an image size (shortest edge 40: 40 x 40)
    assert crop_processor_padding(torch.zeros(1, 2, 64, 64), processor, (1, 1)).shape == (1, 2, 40, 40)


@pytest.mark.parametrize(
    "length, crop, stride", [(10, 4, 0), (10, 0, 2), (0, 4, 2)], ids=["stride 0", "crop 0", "length 0"]
)
def test_window_origins_need_positive_sizes(length, crop, stride):
    """A stride of 0 divided by zero; a crop of 0 gave six empty windows."""
    with pytest.raises(ValueError, match=rf"length={length}, crop={crop}, stride={stride}"):
        window_origins(length, crop, stride)


# ----- the Hub ----------------------------------------------------------------------------------------------------


def test_logits_to_size_refuses_a_padded_size_below_the_input():
    with pytest.raises(ValueError, match=r"padded_size \(8, 4\) is smaller than the input_size \(8, 8\)"):
        logits_to_size(torch.zeros(1, 2, 4, 4), (8, 8), (8, 8), padded_size=(8, 4))
