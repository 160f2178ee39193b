import pytest
import torch
import torch.nn.functional as F
from test_modeling_semask_swin import tiny_config

from hf_semseg import SeMaskSwinForSemanticSegmentation
from hf_semseg.inference import (
    logits_to_size,
    multi_scale_flip_probabilities,
    sliding_window_logits,
    whole_image_logits,
    window_origins,
)

from model_suite import open_semantic_gates


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = SeMaskSwinForSemanticSegmentation(tiny_config()).eval()
    open_semantic_gates(model)
    return model


def test_window_origins_follow_mmseg():
    assert window_origins(10, 4, 3).tolist() == [0, 3, 6]
    assert window_origins(11, 4, 3).tolist() == [0, 3, 6, 7]  # the last window ends at the border
    assert window_origins(3, 3, 3).tolist() == [0]


def mmseg_slide_reference(model, image, crop, stride):
    """mmseg's ``slide_inference`` loop (a reference: loops allowed)."""
    batch, _, height, width = image.shape
    num_labels = model.config.num_labels
    crop_h, crop_w = crop
    h_grids = max(height - crop_h + stride[0] - 1, 0) // stride[0] + 1
    w_grids = max(width - crop_w + stride[1] - 1, 0) // stride[1] + 1
    preds = image.new_zeros(batch, num_labels, height, width)
    count = image.new_zeros(batch, 1, height, width)
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride[0], w_idx * stride[1]
            y2, x2 = min(y1 + crop_h, height), min(x1 + crop_w, width)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            crop_image = image[:, :, y1:y2, x1:x2]
            logits = F.interpolate(model(crop_image).logits, size=crop_image.shape[-2:], mode="bilinear")
            preds += F.pad(logits, (x1, width - x2, y1, height - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


@pytest.mark.parametrize("window_batch_size", [1, 5])
def test_sliding_window_equals_the_mmseg_loop(model, window_batch_size):
    image = torch.randn(2, 3, 40, 52, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = sliding_window_logits(model, image, (24, 24), (16, 16), window_batch_size=window_batch_size)
        reference = mmseg_slide_reference(model, image, (24, 24), (16, 16))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_sliding_window_larger_than_the_image_is_whole_inference(model):
    image = torch.randn(1, 3, 30, 26)
    torch.testing.assert_close(
        sliding_window_logits(model, image, (64, 64), (32, 32)), whole_image_logits(model, image), atol=1e-5, rtol=0
    )


def test_multi_scale_flip_averages_softmax_over_passes(model):
    image = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(4))
    single = multi_scale_flip_probabilities(model, image, scales=(1.0,), flip=False)
    torch.testing.assert_close(single, whole_image_logits(model, image).softmax(1))
    ours = multi_scale_flip_probabilities(model, image, scales=(0.5, 1.25), flip=True)
    expected = 0
    for scale in (0.5, 1.25):
        scaled = F.interpolate(image, size=(int(32 * scale + 0.5), int(48 * scale + 0.5)), mode="bilinear")
        for flip in (False, True):
            logits = whole_image_logits(model, scaled.flip(-1) if flip else scaled)
            logits = logits.flip(-1) if flip else logits
            expected = expected + F.interpolate(logits, size=(32, 48), mode="bilinear").softmax(1) / 4
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.sum(1), torch.ones(1, 32, 48))


class PaddingStub(torch.nn.Module):
    """A model that pads its input to multiples of 8 (zeros, right and bottom, as SeMask-Mask2Former does) and returns
    its first channel as stride-1 logits over the padded image, with the padding marked 1000."""

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"size_divisibility": 8, "num_labels": 1})()

    def forward(self, pixel_values):
        height, width = pixel_values.shape[-2:]
        padded = F.pad(pixel_values[:, :1], (0, -width % 8, 0, -height % 8), value=1000.0)
        return type("Output", (), {"logits": padded})()


def test_logits_over_a_padded_input_are_cropped_before_resizing():
    """SeMask-Mask2Former's logits cover its padded input: stretching them over the image mixed the padding in."""
    image = torch.arange(2 * 3 * 6 * 5, dtype=torch.float32).view(2, 3, 6, 5)
    logits = whole_image_logits(PaddingStub(), image)
    assert torch.equal(logits, image[:, :1])  # exactly the image's own positions, no padding
    windows = sliding_window_logits(PaddingStub(), image, (4, 4), (2, 2))
    assert torch.equal(windows, image[:, :1])
    # at stride 4 over the padded 8x8 input, cropped to the 6x5 image before resizing to (12, 10)
    quarter = F.avg_pool2d(F.pad(image[:, :1], (0, 3, 0, 2)), 4)
    expected = F.interpolate(
        F.interpolate(quarter, size=(8, 8), mode="bilinear", align_corners=False)[..., :6, :5],
        size=(12, 10),
        mode="bilinear",
        align_corners=False,
    )
    assert torch.allclose(logits_to_size(quarter, (6, 5), (12, 10), 8), expected)
    assert torch.equal(logits_to_size(image, (6, 5), (6, 5), 0), image)  # nothing to crop or resize


@pytest.mark.parametrize(
    "crop, stride, message",
    [
        ((4, 4), (5, 2), r"stride \(5, 2\) is larger than crop_size \(4, 4\)"),
        ((4, 4), (0, 2), r"stride must be two positive integers \(height, width\), got \(0, 2\)"),
        ((0, 4), (1, 1), r"crop_size must be two positive integers"),
    ],
)
def test_windows_that_cannot_cover_the_image_are_refused(model, crop, stride, message):
    with pytest.raises(ValueError, match=message):
        sliding_window_logits(model, torch.zeros(1, 3, 8, 8), crop, stride)


def test_scores_over_a_padding_processor_output_are_cropped_to_the_image():
    """SeMask-Mask2Former's processor pads its output to a multiple of 32: the evaluation stretched the padding over
    the image when resizing the scores back."""
    import numpy as np

    from hf_semseg import KeepRatioImageProcessor, SeMaskMask2FormerImageProcessor
    from hf_semseg.inference import crop_processor_padding

    processor = SeMaskMask2FormerImageProcessor(size={"shortest_edge": 40, "longest_edge": 100})
    pixel_values = processor(np.zeros((30, 50, 3), np.uint8), return_tensors="pt")["pixel_values"]
    assert tuple(pixel_values.shape[-2:]) == (64, 96)  # 40 x 67 resized, padded to 64 x 96
    scores = torch.arange(64 * 96, dtype=torch.float32).view(1, 1, 64, 96)
    assert torch.equal(crop_processor_padding(scores, processor, (30, 50)), scores[..., :40, :67])
    keep_ratio = KeepRatioImageProcessor()  # resizes without padding: nothing to crop
    assert crop_processor_padding(scores, keep_ratio, (30, 50)) is scores
