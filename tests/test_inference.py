import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_modeling_semask_mask2former import tiny_config as mask2former_config
from test_modeling_semask_swin import tiny_config
from transformers import SegformerImageProcessor

from hf_semseg import (
    KeepRatioImageProcessor,
    SeMaskMask2FormerForSemanticSegmentation,
    SeMaskMask2FormerImageProcessor,
    SeMaskSwinForSemanticSegmentation,
)
from hf_semseg.inference import (
    TEST_SCALES,
    logits_to_size,
    multi_scale_flip_probabilities,
    processor_at_scale,
    segmentation_scores,
    sliding_window_logits,
    whole_image_logits,
    window_origins,
)
from hf_semseg.models.image_processing_utils_semask_mask2former import get_resize_shortest_edge_output_size

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
    assert window_origins(1, 1, 1).tolist() == [0]  # sizes of 1 are positive
    assert window_origins(4, 1, 1).tolist() == [0, 1, 2, 3]


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


@pytest.mark.parametrize(
    "batch, crop, stride, window_batch_size",
    [
        (2, (24, 24), (16, 16), 1),
        (2, (24, 24), (16, 16), 5),
        (1, (16, 32), (8, 24), 8),  # windows of other height and width
        (1, (24, 24), (24, 24), 8),  # a stride equal to the crop tiles the image: allowed (only a larger one is not)
    ],
    ids=["one window a batch", "five windows a batch", "non-square", "tiling"],
)
def test_sliding_window_equals_the_mmseg_loop(model, batch, crop, stride, window_batch_size):
    image = torch.randn(batch, 3, 40, 52, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = sliding_window_logits(model, image, crop, stride, window_batch_size=window_batch_size)
        reference = mmseg_slide_reference(model, image, crop, stride)
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
    # flipping is the default, as mmseg's --aug-test, and so are its ADE20K ratios
    torch.testing.assert_close(multi_scale_flip_probabilities(model, image, scales=(0.5, 1.25)), ours, atol=0, rtol=0)
    torch.testing.assert_close(
        multi_scale_flip_probabilities(model, image),
        multi_scale_flip_probabilities(model, image, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True),
        atol=0,
        rtol=0,
    )


class PaddingStub(torch.nn.Module):
    """A model that pads its input to multiples of 8 (zeros, right and bottom, as SeMask-Mask2Former does) and returns
    its first channel as stride-1 logits over the padded image, with the padding marked 1000."""

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"size_divisibility": 8, "num_labels": 1})()

    def padded_input_size(self, input_size):
        return tuple(side + -side % 8 for side in input_size)

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
    assert torch.allclose(logits_to_size(quarter, (6, 5), (12, 10), (8, 8)), expected)
    assert torch.equal(logits_to_size(image, (6, 5), (6, 5)), image)  # nothing to crop or resize


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


# --- the papers' protocol from an image: segmentation_scores ------------------------------------------------------


def test_processor_at_scale_scales_the_test_size_as_the_originals():
    keep_ratio = KeepRatioImageProcessor(size={"longest_edge": 2048, "shortest_edge": 512})
    # mmseg MultiScaleFlipAug: img_scale (2048, 512) x ratio, each bound truncated
    scaled = [processor_at_scale(keep_ratio, scale).size for scale in TEST_SCALES]
    assert [(size.longest_edge, size.shortest_edge) for size in scaled] == [
        (1024, 256), (1536, 384), (2048, 512), (2560, 640), (3072, 768), (3584, 896),
    ]  # fmt: skip
    assert keep_ratio.size.longest_edge == 2048  # a copy is scaled
    fixed = processor_at_scale(KeepRatioImageProcessor(size={"height": 100, "width": 150}), 0.75).size
    assert (fixed.height, fixed.width) == (75, 112)
    # detectron2 TEST.AUG of the released SeMask-Mask2Former configs: MIN_SIZES 320..1120 under MAX_SIZE 4480 (640
    # models), 256..896 under 3584 (512 models)
    for test_size, min_sizes, max_size in (
        ((640, 2560), [320, 480, 640, 800, 960, 1120], 4480),
        ((512, 2048), [256, 384, 512, 640, 768, 896], 3584),
    ):
        d2 = SeMaskMask2FormerImageProcessor(size={"shortest_edge": test_size[0], "longest_edge": test_size[1]})
        scaled = [processor_at_scale(d2, scale).size for scale in TEST_SCALES]
        assert [size.shortest_edge for size in scaled] == min_sizes
        assert {size.longest_edge for size in scaled} == {max_size}
    with pytest.raises(ValueError, match="SegformerImageProcessor is not an hf-semseg image processor"):
        processor_at_scale(SegformerImageProcessor(), 0.5)


@pytest.fixture(scope="module")
def test_image():
    return np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)


def record_input_sizes(model):
    sizes = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(tuple(kwargs["pixel_values"].shape[-2:])), with_kwargs=True
    )
    return sizes, hook


def test_segmentation_scores_follow_mmseg_aug_test_with_the_pipeline_at_every_scale(model, test_image):
    """ms+flip as mmseg: the processor (keep-ratio resize, then ResizeToMultiple(16)) at every ratio; logits resized
    to the input, then to the image; softmax averaged over 12 passes. The sizes by hand: a 45x70 image under
    (64 x r, 32 x r), rounded up to multiples of 16."""
    processor = KeepRatioImageProcessor(size={"longest_edge": 64, "shortest_edge": 32}, size_divisor=16)
    sizes, hook = record_input_sizes(model)
    try:
        ours = segmentation_scores(model, processor, test_image, scales=(0.5, 0.75, 1.75), flip=True)
    finally:
        hook.remove()
    # 0.5: factor min(32/70, 16/45) -> 16x25 -> 16x32; 0.75: 24x37 -> 32x48; 1.75: 56x87 -> 64x96
    assert sizes == [(16, 32), (16, 32), (32, 48), (32, 48), (64, 96), (64, 96)]
    expected = 0
    for scale in (0.5, 0.75, 1.75):
        bounds = {"longest_edge": int(64 * scale), "shortest_edge": int(32 * scale)}
        pixel_values = processor(test_image, size=bounds, return_tensors="pt")["pixel_values"]
        for flip in (False, True):
            inputs = pixel_values.flip(-1) if flip else pixel_values
            with torch.no_grad():
                logits = model(pixel_values=inputs).logits
            logits = F.interpolate(logits, size=inputs.shape[-2:], mode="bilinear")
            logits = F.interpolate(logits, size=(45, 70), mode="bilinear")
            expected = expected + (logits.flip(-1) if flip else logits).softmax(1)[0] / 6
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    # single scale: softmax of the logits resized twice, as mmseg's whole inference with rescale
    single = segmentation_scores(model, processor, test_image)
    pixel_values = processor(test_image, return_tensors="pt")["pixel_values"]
    logits = F.interpolate(whole_image_logits(model, pixel_values), size=(45, 70), mode="bilinear")
    torch.testing.assert_close(single, logits.softmax(1)[0], atol=1e-6, rtol=0)
    # sliding windows: a crop size alone slides with a stride of the crop (windows that tile the image)
    windows = sliding_window_logits(model, pixel_values, (16, 16), (16, 16))
    torch.testing.assert_close(
        segmentation_scores(model, processor, test_image, crop_size=(16, 16)),
        F.interpolate(windows, size=(45, 70), mode="bilinear").softmax(1)[0],
        atol=1e-6,
        rtol=0,
    )


def test_segmentation_scores_crop_a_fixed_pad_size_to_the_resized_image(model, test_image):
    """A processor that pads every image to a fixed 64 x 64: the 45 x 70 image, resized to 32 x 50, lies in its
    top-left corner; only those logits are resized to the image (the padding is not stretched over it)."""
    processor = KeepRatioImageProcessor(
        size={"longest_edge": 64, "shortest_edge": 32}, pad_size={"height": 64, "width": 64}
    )
    assert processor.get_unpadded_size(45, 70) == (32, 50)
    pixel_values = processor(test_image, return_tensors="pt")["pixel_values"]
    assert tuple(pixel_values.shape[-2:]) == (64, 64)
    logits = whole_image_logits(model, pixel_values)[..., :32, :50]
    expected = F.interpolate(logits, size=(45, 70), mode="bilinear").softmax(1)[0]
    torch.testing.assert_close(segmentation_scores(model, processor, test_image), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        segmentation_scores(model, processor, test_image, scales=(1.0, 1.0)), expected, atol=1e-6, rtol=0
    )


def test_flipped_pass_of_a_portrait_image_mirrors_only_its_region_of_a_fixed_pad_size(model, test_image):
    """A 70 x 45 (portrait) image resized to 50 x 32 in the top-left corner of a fixed 64 x 64 padding: the flipped
    pass mirrors those 50 rows of 32 columns, the padding right and bottom stays; both passes' logits cropped to the
    region, resized to the image, softmax averaged. (The landscape cases cannot tell the region's rows from its
    columns: mirroring padding rows of zeros changes nothing.)"""
    portrait = np.ascontiguousarray(test_image.transpose(1, 0, 2))
    processor = KeepRatioImageProcessor(
        size={"longest_edge": 64, "shortest_edge": 32}, pad_size={"height": 64, "width": 64}
    )
    assert processor.get_unpadded_size(70, 45) == (50, 32)
    pixel_values = processor(portrait, return_tensors="pt")["pixel_values"]
    mirrored = pixel_values.clone()
    mirrored[..., :50, :32] = pixel_values[..., :50, :32].flip(-1)
    expected = 0
    for inputs, flipped in ((pixel_values, False), (mirrored, True)):
        logits = F.interpolate(whole_image_logits(model, inputs)[..., :50, :32], size=(70, 45), mode="bilinear")
        expected = expected + (logits.flip(-1) if flipped else logits).softmax(1)[0] / 2
    torch.testing.assert_close(segmentation_scores(model, processor, portrait, flip=True), expected, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def mask2former():
    torch.manual_seed(0)
    return SeMaskMask2FormerForSemanticSegmentation(mask2former_config()).eval()


def test_segmentation_scores_of_mask2former_are_detectron2s_test_time_augmentation(mask2former, test_image):
    """detectron2: its test loader's image (the original resized to the test size 32 under 128, uint8, by PIL), each
    scale's shortest edge 32 x r under one longest edge (128 x 1.75) resized from that image (DatasetMapperTTA: two
    resizes; at 1.75 its 32 x 50 gives 56 x 88 where the original 45 x 70 would give 56 x 87), the resized image
    flipped (the processor's padding stays right and bottom); each pass's semantic inference at the padded input (mask
    logits upsampled before the sigmoid), cropped, resized to the original image; the raw scores averaged (not their
    softmax). The PIL processor: PIL's resize, as detectron2's."""
    from hf_semseg import SeMaskMask2FormerImageProcessorPil

    processor = SeMaskMask2FormerImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 128})
    ours = segmentation_scores(mask2former, processor, test_image, scales=(0.5, 1.75), flip=True)
    loader_size = get_resize_shortest_edge_output_size(45, 70, 32, 128)
    assert loader_size == (32, 50)
    loader_image = np.asarray(Image.fromarray(test_image).resize(loader_size[::-1], Image.BILINEAR))
    expected = 0
    for scale, expected_size in ((0.5, (16, 25)), (1.75, (56, 88))):
        bounds = {"shortest_edge": int(32 * scale), "longest_edge": 224}
        pixel_values = processor(loader_image, size=bounds, return_tensors="pt")["pixel_values"]
        resized = get_resize_shortest_edge_output_size(*loader_size, bounds["shortest_edge"], 224)
        assert resized == expected_size
        assert pixel_values.shape[-2:] == tuple(-(-side // 32) * 32 for side in resized)  # padded to 32
        for flip in (False, True):
            inputs = pixel_values.clone()
            if flip:
                inputs[..., : resized[0], : resized[1]] = pixel_values[..., : resized[0], : resized[1]].flip(-1)
            with torch.no_grad():
                outputs = mask2former(pixel_values=inputs)
            scores = processor.post_process_semantic_segmentation(
                outputs, target_sizes=[(45, 70)], image_sizes=[resized], return_segmentation_scores=True
            )[0]["segmentation_scores"]
            expected = expected + (scores.flip(-1) if flip else scores) / 4
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    processor = SeMaskMask2FormerImageProcessor(size={"shortest_edge": 32, "longest_edge": 128})
    # one pass is the processor's own (exact) post-processing, not the stride-4 scores' resize
    with torch.no_grad():
        outputs = mask2former(**processor(test_image, return_tensors="pt"))
    exact = processor.post_process_semantic_segmentation(outputs, [(45, 70)], return_segmentation_scores=True)[0]
    torch.testing.assert_close(segmentation_scores(mask2former, processor, test_image), exact["segmentation_scores"])
    # the pixel-values function averages the same kind of scores
    pixel_values = processor(test_image, return_tensors="pt")["pixel_values"]
    single = multi_scale_flip_probabilities(mask2former, pixel_values, scales=(1.0,), flip=False)
    torch.testing.assert_close(single, whole_image_logits(mask2former, pixel_values))


@pytest.mark.parametrize("do_pad", [True, False])
def test_mask_scores_of_a_processor_without_a_multiple_crop_the_models_own_padding(mask2former, do_pad):
    """A processor with ``size_divisibility`` 0 gives the model an image 1-3 px short of its multiple of 32 on each
    side (62 x 126): the model pads to 64 x 128 itself, and its stride-4 maps (16 x 32) would also be those of an
    unpadded 62 x 126. The scores are the mask logits upsampled to the model's 64 x 128, its padding cropped (before,
    62 x 126 read as the padded size: the padding stretched over the image, 4.6 off on a tiny model)."""
    generator = torch.Generator().manual_seed(8)
    image = Image.fromarray(torch.randint(0, 256, (124, 252, 3), generator=generator, dtype=torch.uint8).numpy())
    processor = SeMaskMask2FormerImageProcessor(
        size={"shortest_edge": 62, "longest_edge": 400}, size_divisibility=0, do_pad=do_pad
    )
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape[-2:] == (62, 126)
    with torch.no_grad():
        outputs = mask2former(pixel_values=pixel_values)
    masks = outputs.masks_queries_logits
    assert masks.shape[-2:] == (16, 32)
    masks = F.interpolate(masks, size=(64, 128), mode="bilinear", align_corners=False)
    probabilities = outputs.class_queries_logits.softmax(-1)[..., :-1]
    expected = torch.einsum("bqk,bqhw->bkhw", probabilities, masks.sigmoid())[..., :62, :126]
    expected = F.interpolate(expected, size=(124, 252), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(segmentation_scores(mask2former, processor, image), expected, atol=1e-5, rtol=0)


def test_mask_scores_of_a_processor_padding_to_a_finer_multiple_than_the_model_are_the_models_own():
    """A VW-Mask2Former pads to multiples of 64 (at least 128); behind a processor padding to 32, an image resized
    to 120 x 160 reaches it as 128 x 160 and it pads to 128 x 192. ``segmentation_scores`` gives the scores of a
    processor padding to 64 (the post-processing refused the maps before); the processor's own post-processing names
    the multiple to use."""
    from hf_semseg import VWMask2FormerForSemanticSegmentation

    from model_suite import tiny_vw_mask2former_config

    torch.manual_seed(0)
    model = VWMask2FormerForSemanticSegmentation(tiny_vw_mask2former_config()).eval()
    generator = torch.Generator().manual_seed(9)
    image = Image.fromarray(torch.randint(0, 256, (128, 171, 3), generator=generator, dtype=torch.uint8).numpy())
    size = {"shortest_edge": 120, "longest_edge": 640}
    finer = SeMaskMask2FormerImageProcessor(size=size, size_divisibility=32)
    model_multiple = SeMaskMask2FormerImageProcessor(size=size, size_divisibility=64)
    expected = segmentation_scores(model, model_multiple, image)
    assert expected.shape == (4, 128, 171) and expected.std() > 1e-3
    torch.testing.assert_close(segmentation_scores(model, finer, image), expected, atol=1e-6, rtol=0)
    pixel_values = finer(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape[-2:] == (128, 160)
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values)
    with pytest.raises(ValueError, match=r"the model pads its input to multiples of 64, these settings to multiples "):
        finer.post_process_semantic_segmentation(outputs, target_sizes=[(128, 171)])


def test_segmentation_scores_refuse_what_has_no_protocol(model, mask2former, test_image):
    processor = SeMaskMask2FormerImageProcessor(size={"shortest_edge": 32, "longest_edge": 128})
    with pytest.raises(ValueError, match="classifies masks .* sliding windows"):
        segmentation_scores(mask2former, processor, test_image, crop_size=(16, 16))
    with pytest.raises(ValueError, match="classifies masks: .* not from a SegformerImageProcessor"):
        segmentation_scores(mask2former, SegformerImageProcessor(), test_image)
    keep_ratio = KeepRatioImageProcessor(size={"longest_edge": 64, "shortest_edge": 32})
    with pytest.raises(ValueError, match="stride \\(8, 8\\) without crop_size"):
        segmentation_scores(model, keep_ratio, test_image, stride=(8, 8))
    with pytest.raises(ValueError, match="image must be a PIL image or an .* got list"):
        segmentation_scores(model, keep_ratio, [[1, 2]])
    # channels first or last, PIL or array: the same image size
    first = segmentation_scores(model, keep_ratio, torch.from_numpy(test_image).permute(2, 0, 1))
    assert first.shape == segmentation_scores(model, keep_ratio, Image.fromarray(test_image)).shape == (4, 45, 70)


def test_every_mask_classification_family_is_averaged_as_detectron2():
    """MaskFormer's configs keep ``num_queries`` in their DETR ``decoder_config``: SeMask- and VW-MaskFormer were
    taken for per-pixel models (softmax averaged, sliding windows accepted)."""
    from types import SimpleNamespace

    import hf_semseg
    from hf_semseg.inference import classifies_masks

    for name in ("SeMaskMask2FormerConfig", "SeMaskMaskFormerConfig", "VWMask2FormerConfig", "VWMaskFormerConfig"):
        assert classifies_masks(SimpleNamespace(config=getattr(hf_semseg, name)())), name
    for name in ("SeMaskSwinConfig", "PaleConfig", "VWFormerConfig"):
        assert not classifies_masks(SimpleNamespace(config=getattr(hf_semseg, name)())), name


def test_segmentation_scores_of_a_bfloat16_model(model, test_image):
    """The inputs it makes itself follow the model's dtype (a float32 input was refused, with advice to cast an input
    the caller never sees); the scores are float32 and near the float32 model's."""
    import copy

    processor = KeepRatioImageProcessor(size={"longest_edge": 64, "shortest_edge": 32})
    bfloat16 = copy.deepcopy(model).to(torch.bfloat16)
    scores = segmentation_scores(bfloat16, processor, test_image, scales=(0.5, 1.0), flip=True)
    reference = segmentation_scores(model, processor, test_image, scales=(0.5, 1.0), flip=True)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, reference, atol=0.05, rtol=0)


def test_the_image_size_is_read_as_the_processor_reads_the_layout(model):
    """transformers' get_image_size took a grayscale image 3 rows high for 3 channels (scores of shape (K, W, 1),
    silently) and stopped at RGBA arrays with its own error; the processors read both."""
    processor = KeepRatioImageProcessor(size={"longest_edge": 64, "shortest_edge": 32})
    grey = np.random.default_rng(0).integers(0, 256, (3, 50), dtype=np.uint8)
    scores = segmentation_scores(model, processor, grey)
    assert scores.shape[1:] == (3, 50)
    torch.testing.assert_close(scores, segmentation_scores(model, processor, Image.fromarray(grey)))
    rgba = np.random.default_rng(1).integers(0, 256, (45, 70, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque: the RGB image
    assert segmentation_scores(model, processor, rgba).shape[1:] == (45, 70)
    torch.testing.assert_close(
        segmentation_scores(model, processor, torch.from_numpy(rgba).permute(2, 0, 1)),
        segmentation_scores(model, processor, rgba[..., :3]),
    )
    ambiguous = np.random.default_rng(2).integers(0, 256, (4, 30, 3), dtype=np.uint8)  # 4 rows of RGB
    scores = segmentation_scores(model, processor, ambiguous, input_data_format="channels_last")
    assert scores.shape[1:] == (4, 30)
    # 3 rows of RGB, which the processor alone would take for channels first: the stated layout reaches it
    three_rows = np.random.default_rng(3).integers(0, 256, (3, 30, 3), dtype=np.uint8)
    torch.testing.assert_close(
        segmentation_scores(model, processor, three_rows, input_data_format="channels_last"),
        segmentation_scores(model, processor, Image.fromarray(three_rows)),
    )


def test_the_stated_layout_reaches_detectron2s_test_loader_image(mask2former):
    """Several scales of a detectron2-style processor resize the image its test loader gives (``tta_source_image``):
    3 rows of RGB stated channels last must reach that first resize too, not be taken for channels first there."""
    processor = SeMaskMask2FormerImageProcessor(size={"shortest_edge": 32, "longest_edge": 128})
    three_rows = np.random.default_rng(3).integers(0, 256, (3, 30, 3), dtype=np.uint8)
    scores = segmentation_scores(
        mask2former, processor, three_rows, scales=(0.5, 1.0), input_data_format="channels_last"
    )
    assert scores.shape[1:] == (3, 30)
    torch.testing.assert_close(
        scores, segmentation_scores(mask2former, processor, Image.fromarray(three_rows), scales=(0.5, 1.0))
    )


@pytest.mark.parametrize("model_class", ["VWMaskFormerForSemanticSegmentation", "VWMask2FormerForSemanticSegmentation"])
def test_vw_logits_are_cropped_at_the_models_own_padding(model_class):
    """The VW segmenters pad each side to a multiple of ``size_divisibility`` and to at least 128; the logits of a
    64 x 96 input cover 128 x 128. Only the multiple (64 x 128) was cropped: the padding was stretched over the image
    (up to 1.6 apart, 23% of the pixels of another class)."""
    import hf_semseg
    from hf_semseg.inference import model_padded_size

    from model_suite import tiny_vw_mask2former_config, tiny_vw_maskformer_config

    make_config = tiny_vw_maskformer_config if "MaskFormer" in model_class else tiny_vw_mask2former_config
    config = make_config()
    config.size_divisibility = 64
    torch.manual_seed(0)
    model = getattr(hf_semseg, model_class)(config).eval()
    with torch.no_grad():  # away from the near-constant start, so that the classes vary over the image
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1 or name.endswith("bias"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    assert model_padded_size(model, (64, 96)) == (128, 128)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
        expected = F.interpolate(logits, size=(128, 128), mode="bilinear", align_corners=False)[..., :64, :96]
        assert torch.allclose(whole_image_logits(model, pixel_values), expected, atol=1e-6)
        # the 64 x 128 crop of the multiple alone is far from it
        stretched = F.interpolate(logits, size=(64, 128), mode="bilinear", align_corners=False)[..., :64, :96]
        assert (stretched - expected).abs().max() > 0.1
