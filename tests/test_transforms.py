import numpy as np
import pytest
import torch
from PIL import Image

from hf_semseg.transforms import (
    SegmentationTrainTransform,
    hsv_to_rgb,
    keep_ratio_size,
    pad_to_crop,
    photometric_distortion,
    random_crop_origin,
    rgb_to_hsv,
)


def test_keep_ratio_size_is_mmcv_imrescale():
    assert keep_ratio_size(512, 683, 2048, 512) == (512, 683)
    assert keep_ratio_size(375, 500, 2048, 512) == (512, 683)
    assert keep_ratio_size(375, 500, 1024, 256) == (256, 341)


def test_hsv_round_trip_and_known_colours():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(image)), image, atol=1e-3)
    red_green_blue = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.float32)
    np.testing.assert_allclose(rgb_to_hsv(red_green_blue)[0, :, 0], [0, 120, 240])


def test_crop_avoids_a_dominant_class_when_it_can():
    label = np.zeros((100, 100), dtype=np.int64)
    label[:, 80:] = 1  # a crop of 40 has class 1 above 25% only when it starts beyond column 50 (16% of origins)

    def balanced_crops(cat_max_ratio):
        rng = np.random.default_rng(1)
        origins = [random_crop_origin(label, (40, 40), cat_max_ratio, rng) for _ in range(60)]
        return sum((label[top : top + 40, left : left + 40] == 1).mean() > 0.25 for top, left in origins)

    # redrawing up to 10 times finds a balanced crop ~83% of the time; a single draw ~16% of the time
    assert balanced_crops(0.75) > 40
    assert balanced_crops(1.0) < 20


def test_pipeline_output_sizes_padding_and_labels():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (30, 40))
    transform = SegmentationTrainTransform(scale=(40, 30), crop_size=(48, 48), ratio_range=(1.0, 1.0), flip_prob=0.0)
    out_image, out_label = transform(image, label, np.random.default_rng(3))
    assert out_image.shape == (30, 40, 3) and out_label.shape == (30, 40)  # padded after the normalisation
    np.testing.assert_array_equal(out_label, label)  # no resize at ratio 1, no flip
    pixel_values, padded_label = pad_to_crop(torch.ones(3, 30, 40), torch.from_numpy(label), (48, 48))
    assert pixel_values.shape == (3, 48, 48) and padded_label.shape == (48, 48)
    assert (pixel_values[:, 30:] == 0).all() and (pixel_values[:, :, 40:] == 0).all()
    assert (pixel_values[:, :30, :40] == 1).all()
    assert (padded_label[30:] == 255).all() and (padded_label[:, 40:] == 255).all()
    with pytest.raises(ValueError, match=r"a sample of 30x40 does not fit the crop size \(16, 16\)"):
        pad_to_crop(torch.ones(3, 30, 40), torch.from_numpy(label), (16, 16))
    flipped = SegmentationTrainTransform(
        scale=(40, 30), crop_size=(30, 40), ratio_range=(1.0, 1.0), flip_prob=1.0, photometric=False
    )(image, label, np.random.default_rng(3))
    np.testing.assert_array_equal(flipped[0], image[:, ::-1])
    np.testing.assert_array_equal(flipped[1], label[:, ::-1])
    with pytest.raises(ValueError, match="differ"):
        transform(image, label[:10], rng)


def test_photometric_distortion_is_seeded_and_bounded():
    image = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    first = photometric_distortion(image, np.random.default_rng(7))
    assert first.dtype == np.uint8 and first.shape == image.shape
    np.testing.assert_array_equal(first, photometric_distortion(image, np.random.default_rng(7)))
    assert any(not np.array_equal(photometric_distortion(image, np.random.default_rng(s)), image) for s in range(5))


def test_bilinear_resize_samples_as_torch_interpolate():
    import torch
    import torch.nn.functional as F

    from hf_semseg.transforms import bilinear_resize

    rng = np.random.default_rng(5)
    for size in ((17, 23), (64, 90), (120, 41)):  # down, up, mixed
        image = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None].double()
        exact = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
        resized = bilinear_resize(image, size)
        assert resized.shape == (*size, 3) and resized.dtype == np.uint8
        assert np.abs(resized - exact).max() <= 0.5 + 1e-4, size  # the same sampling, rounded


def test_augmentation_is_the_same_in_a_data_loader_worker():
    """Workers run torch with one thread; torch's bilinear kernel then rounds some pixels differently than with two
    (measured: one grey level in 1 of 2 batches here), which the NumPy resize avoids."""
    import torch
    from torch.utils.data import DataLoader

    from hf_semseg.training import load_splits, make_transform, pad_collate

    train, _ = load_splits(None, max_train_samples=8, max_eval_samples=1)
    transform = make_transform("image", "label", 4, False, SegmentationTrainTransform((112, 80), (64, 64)), seed=7)
    transform.set_epoch(1)
    train.set_transform(transform)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        in_process = list(DataLoader(train, batch_size=4, collate_fn=pad_collate))
    finally:
        torch.set_num_threads(threads)
    in_workers = list(DataLoader(train, batch_size=4, collate_fn=pad_collate, num_workers=2))
    for first, second in zip(in_process, in_workers, strict=True):
        assert torch.equal(first["pixel_values"], second["pixel_values"])
        assert torch.equal(first["labels"], second["labels"])


# ----- bad settings and inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"crop_size": (0, 16)}, r"crop_size must be two positive integers \(height, width\), got \(0, 16\)"),
        ({"crop_size": 16}, r"crop_size must be two positive integers \(height, width\), got 16"),
        (
            {"crop_size": (16.0, 16.0)},
            r"crop_size must be two positive integers \(height, width\), got \(16\.0, 16\.0\)",
        ),
        ({"scale": (0, 0)}, r"scale must be two positive numbers \(long, short\), got \(0, 0\)"),
        (
            {"ratio_range": (2.0, 0.5)},
            r"ratio_range must be \(low, high\) with 0 < low <= high < inf, got \(2\.0, 0\.5\)",
        ),
        (
            {"ratio_range": (0.5, float("inf"))},
            r"ratio_range must be \(low, high\) with 0 < low <= high < inf, got \(0\.5, inf\)",
        ),
        (
            {"ratio_range": (-1.0, -0.5)},
            r"ratio_range must be two positive numbers \(low, high\), got \(-1\.0, -0\.5\)",
        ),
        ({"flip_prob": 2}, r"flip_prob must be a probability in \[0, 1\], got 2"),
    ],
    ids=["crop 0", "crop int", "crop float", "scale 0", "ratio reversed", "ratio infinite", "ratio negative", "flip 2"],
)
def test_settings_are_checked_when_the_transform_is_made(settings, message):
    """Before, at the first sample or never: a crop of 0 rows gave empty samples, an int crop was "not subscriptable",
    a zero scale or a negative ratio resized every image to nothing (a sample of padding only), a reversed ratio
    range was NumPy's "high - low < 0", a flip probability of 2 flipped every image."""
    with pytest.raises(ValueError, match=message):
        SegmentationTrainTransform(**{"scale": (40, 30), "crop_size": (16, 16), **settings})


IMAGE = np.random.default_rng(6).integers(0, 256, (30, 40, 3), dtype=np.uint8)
LABEL = np.random.default_rng(6).integers(0, 3, (30, 40))


@pytest.mark.parametrize(
    "image, label, error, message",
    [
        (IMAGE[..., 0], LABEL, ValueError, r"image must be an \(H, W, 3\) RGB array, got shape \(30, 40\)$"),
        (IMAGE.transpose(2, 0, 1), LABEL, ValueError, r"image must be an \(H, W, 3\) RGB .*got shape \(3, 30, 40\)$"),
        (np.pad(IMAGE, ((0, 0), (0, 0), (0, 1))), LABEL, ValueError, r"got shape \(30, 40, 4\)$"),
        (IMAGE / 255, LABEL, TypeError, r"image must be uint8 \(RGB values in \[0, 255\]\), got float64$"),
        (IMAGE.astype(np.uint16), LABEL, TypeError, r"image must be uint8 .*, got uint16$"),
        (IMAGE, LABEL > 0, TypeError, r"label must be integer class ids, got bool$"),
        (IMAGE, LABEL + 0.5, TypeError, r"label must be integer class ids, got float64$"),
        (
            IMAGE,
            LABEL[..., None],
            ValueError,
            r"label must be an \(H, W\) array of class ids, got shape \(30, 40, 1\)$",
        ),
        (IMAGE[:0], LABEL[:0], ValueError, r"image and label have size \(0, 40\): each side needs at least 1 pixel$"),
        (
            Image.fromarray(IMAGE),
            LABEL,
            TypeError,
            r"image must be a NumPy array \(np.asarray\(image\)\), got Image$",
        ),
    ],
    ids=["grey", "CHW", "RGBA", "float", "uint16", "bool label", "float label", "HW1 label", "empty", "PIL"],
)
def test_images_and_labels_that_are_not_rgb_bytes_and_class_ids_are_refused(image, label, error, message):
    """Silent before: a grey image came out as a 16x16x40 sample, an RGBA one kept its alpha channel unless the hue
    or saturation was drawn, a [0, 1] float image stayed float or was rounded to 0/1 (black) by the resize, a
    boolean label was padded with True (ignore -> class 1), a float label kept its fractions; an empty image divided
    by zero in the resize, a PIL image had no ``shape``."""
    transform = SegmentationTrainTransform(scale=(40, 30), crop_size=(48, 48), ratio_range=(1.0, 1.0))
    with pytest.raises(error, match=message):
        transform(image, label, np.random.default_rng(0))


@pytest.mark.parametrize("rng", [None, 0, np.random.RandomState(0)], ids=["None", "seed", "RandomState"])
def test_the_generator_must_be_a_numpy_generator(rng):
    """None or a seed had no ``uniform``; a legacy ``RandomState`` failed at the crop (no ``integers``)."""
    transform = SegmentationTrainTransform(scale=(40, 30), crop_size=(16, 16))
    with pytest.raises(
        TypeError, match=r"rng must be a numpy.random.Generator \(np.random.default_rng\(seed\)\), got "
    ):
        transform(IMAGE, LABEL, rng)


def test_the_random_scale_is_truncated_before_the_keep_ratio_resize_as_mmseg():
    """mmseg's ``Resize.random_sample_ratio`` bounds the resize by ``int(scale * ratio)``; the float bounds gave 70%
    of random sizes one pixel more (600 x 253 at ratio 0.52479...: 637 x 269 for mmseg's 636 x 268)."""
    ratio = 0.5247914532927936
    image, label = np.zeros((600, 253, 3), np.uint8), np.zeros((600, 253), np.int64)
    transform = SegmentationTrainTransform(
        scale=(2048, 512), crop_size=(700, 300), ratio_range=(ratio, ratio), flip_prob=0.0, photometric=False
    )
    _, out_label = transform(image, label, np.random.default_rng(0))
    labelled = np.argwhere(out_label != 255)
    assert tuple(labelled.max(0) + 1) == keep_ratio_size(600, 253, 1074, 268) == (636, 268)


def test_a_crop_that_stays_unbalanced_is_the_eleventh_draw_as_mmseg():
    """mmseg's ``RandomCrop`` checks a crop and draws again up to 10 times, keeping the 11th draw unchecked; the
    10th draw, which had failed the check, was kept."""
    label = np.zeros((100, 100), dtype=np.int64)  # one class everywhere: no crop passes
    top, left = random_crop_origin(label, (40, 40), 0.75, np.random.default_rng(3))
    replay = np.random.default_rng(3)
    draws = [(int(replay.integers(0, 61)), int(replay.integers(0, 61))) for _ in range(11)]
    assert (top, left) == draws[-1] != draws[-2]
    assert random_crop_origin(label, (40, 40), 1.0, np.random.default_rng(3)) == draws[0]  # no check: one draw


class ScriptedDraws:
    """A stand-in for the generator that answers each draw from a script of ``(draw, value)`` pairs, in order, a draw
    written as its call (``"integers(2)"``: a coin), and checks the calls against the script."""

    def __init__(self, *script):
        self.script = list(script)

    def _next(self, call):
        assert self.script, f"an unscripted draw {call}"
        expected, value = self.script.pop(0)
        assert call == expected, f"drew {call}, the script expected {expected}"
        return value

    def integers(self, *args):
        return self._next(f"integers({', '.join(map(repr, args))})")

    def uniform(self, *args):
        return self._next(f"uniform({', '.join(map(repr, args))})")


# mmseg PhotoMetricDistortion's decisions, in our draw order: brightness coin (and delta in [-32, 32)), contrast-first
# coin, the contrast coin (and factor in [0.5, 1.5)) when first, the saturation and hue coins, the saturation factor
# ([0.5, 1.5)) and the hue shift (-18..18 on OpenCV's 0-180 scale), the contrast coin (and factor) when last
COIN = "integers(2)"
BRIGHTNESS, FACTOR, HUE = "uniform(-32, 32)", "uniform(0.5, 1.5)", "integers(-18, 19)"
NO_CHANGE = [(COIN, 0)] * 5


@pytest.mark.parametrize(
    "script, pixel, expected",
    [
        # brightness +10 only
        ([(COIN, 1), (BRIGHTNESS, 10.0), *NO_CHANGE[1:]], (200, 100, 50), (210, 110, 60)),
        # brightness clips at 255 and at 0 before the contrast x0.5 / x1.5 applied last (127.5 rounds to even)
        ([(COIN, 1), (BRIGHTNESS, 30.0), *NO_CHANGE[1:4], (COIN, 1), (FACTOR, 0.5)], (240, 100, 50), (128, 65, 40)),
        ([(COIN, 1), (BRIGHTNESS, -30.0), *NO_CHANGE[1:4], (COIN, 1), (FACTOR, 1.5)], (20, 100, 50), (0, 105, 30)),
        # contrast x0.5, applied last (contrast-first coin 0)
        ([*NO_CHANGE[:4], (COIN, 1), (FACTOR, 0.5)], (200, 100, 50), (100, 50, 25)),
        # contrast x1.5, applied first (contrast-first coin 1): once, before the colour steps
        ([(COIN, 0), (COIN, 1), (COIN, 1), (FACTOR, 1.5), (COIN, 0), (COIN, 0)], (100, 60, 20), (150, 90, 30)),
        # saturation x0.5 only: (200, 100, 100) has s = 0.5, v = 200; s = 0.25 gives chroma 50
        ([(COIN, 0), (COIN, 0), (COIN, 1), (COIN, 0), (FACTOR, 0.5), (COIN, 0)], (200, 100, 100), (200, 150, 150)),
        # contrast x1.5 first clips at 255 before the saturation x0.6: (255, 150, 150) has s = 105 / 255, chroma 63
        (
            [(COIN, 0), (COIN, 1), (COIN, 1), (FACTOR, 1.5), (COIN, 1), (COIN, 0), (FACTOR, 0.6)],
            (200, 100, 100),
            (255, 192, 192),
        ),
        # saturation x1.5 clips at 1: (200, 125, 50) has s = 0.75, hue 30; s = 1 gives chroma 200, middle channel 100
        ([(COIN, 0), (COIN, 0), (COIN, 1), (COIN, 0), (FACTOR, 1.5), (COIN, 0)], (200, 125, 50), (200, 100, 0)),
        # hue +120 degrees only (a shift of 60 on OpenCV's 0-180 scale): red becomes green
        ([(COIN, 0), (COIN, 0), (COIN, 0), (COIN, 1), (HUE, 60), (COIN, 0)], (255, 0, 0), (0, 255, 0)),
    ],
    ids=[
        "brightness",
        "clipped-high",
        "clipped-low",
        "contrast-last",
        "contrast-first",
        "saturation",
        "contrast-clipped",
        "saturation-clipped",
        "hue",
    ],
)
def test_photometric_distortion_applies_each_drawn_step_once(script, pixel, expected):
    """Each step the draws switch on changes the pixel as mmseg's PhotoMetricDistortion does (hand-computed values),
    the others leave it alone; every draw of the script is used."""
    image = np.array([[pixel]], dtype=np.uint8)
    draws = ScriptedDraws(*script)
    np.testing.assert_array_equal(photometric_distortion(image, draws)[0, 0], expected)
    assert draws.script == []


@pytest.mark.parametrize("size", [(513, 256), (512, 257), (600, 100), (100, 300)])
def test_a_sample_larger_than_the_crop_on_either_side_is_refused(size):
    """One side beyond the crop size is enough: padding by a negative amount would have cut it silently."""
    with pytest.raises(ValueError, match=rf"a sample of {size[0]}x{size[1]} does not fit the crop size \(512, 256\)"):
        pad_to_crop(torch.zeros(3, *size), torch.zeros(size, dtype=torch.long), (512, 256))


def test_a_sample_is_padded_on_the_bottom_and_right_to_a_crop_of_other_sides():
    pixel_values, label = pad_to_crop(torch.ones(3, 2, 3), torch.zeros(2, 3, dtype=torch.long), (4, 5))
    expected_label = torch.full((4, 5), 255)
    expected_label[:2, :3] = 0
    torch.testing.assert_close(label, expected_label)
    torch.testing.assert_close(pixel_values, (expected_label == 0).float().expand(3, 4, 5))


def test_the_scale_times_the_ratio_bounds_both_sides():
    """At ratio 0.5, ``scale=(2048, 512)`` bounds a 100 x 1000 image by (1024, 256): the long side binds (102 x 1024);
    the short side alone would give 256 x 2560."""
    transform = SegmentationTrainTransform(
        crop_size=(300, 3000), ratio_range=(0.5, 0.5), flip_prob=0.0, photometric=False
    )
    _, label = transform(np.zeros((100, 1000, 3), np.uint8), np.zeros((100, 1000), np.int64), np.random.default_rng(0))
    assert label.shape == keep_ratio_size(100, 1000, 1024, 256) == (102, 1024)


def test_the_defaults_are_mmsegs_ade20k_training_pipeline():
    """mmseg's ADE20K 512 x 512 pipeline: Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0)),
    RandomCrop(crop_size=(512, 512), cat_max_ratio=0.75), RandomFlip(prob=0.5), PhotoMetricDistortion."""
    transform = SegmentationTrainTransform()
    assert (transform.scale, transform.crop_size, transform.ratio_range) == ((2048, 512), (512, 512), (0.5, 2.0))
    assert (transform.cat_max_ratio, transform.flip_prob, transform.photometric) == (0.75, 0.5, True)


def test_a_crop_whose_largest_class_is_exactly_the_ratio_is_drawn_again():
    """mmseg keeps a crop when its largest class covers *less than* ``cat_max_ratio``: in a tiling of 2 x 2 blocks
    with three pixels of one class every 2 x 2 crop covers exactly 0.75, so all 10 checks fail and the 11th draw is
    kept, as with a single class."""
    label = np.tile(np.array([[1, 1], [1, 2]]), (4, 4))
    top, left = random_crop_origin(label, (2, 2), 0.75, np.random.default_rng(5))
    replay = np.random.default_rng(5)
    draws = [(int(replay.integers(0, 7)), int(replay.integers(0, 7))) for _ in range(11)]
    assert (top, left) == draws[-1]
    assert random_crop_origin(label, (2, 2), 0.76, np.random.default_rng(5)) == draws[0]  # 0.75 < 0.76: the first
