import numpy as np
import pytest

from hf_semseg.transforms import (
    SegmentationTrainTransform,
    hsv_to_rgb,
    keep_ratio_size,
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
    assert out_image.shape == (48, 48, 3) and out_label.shape == (48, 48)
    assert (out_image[30:] == 0).all() and (out_label[30:] == 255).all() and (out_label[:, 40:] == 255).all()
    np.testing.assert_array_equal(out_label[:30, :40], label)  # no resize at ratio 1, no flip
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
