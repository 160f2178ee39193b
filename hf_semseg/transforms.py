"""The mmsegmentation (0.x) training augmentation, on NumPy arrays: random keep-ratio resize, random crop with
``cat_max_ratio``, horizontal flip and photometric distortion; then, after the normalisation, padding to the crop size
(pixel values 0, labels 255: :func:`pad_to_crop`), as mmseg's ``Normalize`` -> ``Pad``.

Every random draw comes from the ``numpy.random.Generator`` passed in, so a seeded pipeline is reproducible. Images
are ``(H, W, 3)`` uint8 RGB arrays, labels ``(H, W)`` integer arrays with 255 = ignore.
"""

import numbers
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .models.configuration_utils_segmentation import IGNORE_INDEX

# mmcv ``imrescale`` output size: one rule for the processors and the training pipeline
from .models.image_processing_utils_segmentation import get_keep_ratio_output_size as keep_ratio_size


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear (no antialias, rounded to uint8) image resize and nearest label resize."""
    if image.shape[:2] == tuple(size):
        return image, label
    image = bilinear_resize(image, size)
    label_tensor = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))[None, None].float()
    label = F.interpolate(label_tensor, size=size, mode="nearest")[0, 0].long().numpy()
    return image, label


def _bilinear_taps(out_length: int, in_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source pixels and weights of ``align_corners=False`` bilinear sampling along one axis."""
    source = np.maximum((np.arange(out_length, dtype=np.float64) + 0.5) * (in_length / out_length) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), in_length - 1)
    return low, np.minimum(low + 1, in_length - 1), source - low


def bilinear_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, C)`` uint8 -> ``size`` with the sampling of ``F.interpolate(mode="bilinear", align_corners=False,
    antialias=False)``, in float32 NumPy, rounded. Torch's CPU kernel rounds differently with the number of threads
    (a data loader worker, or ``torchrun``'s ``OMP_NUM_THREADS=1``, gives some pixels one grey level apart); NumPy's
    element-wise arithmetic does not, so an augmented sample is the same in every process."""
    rows, row_below, row_weight = _bilinear_taps(size[0], image.shape[0])
    cols, col_right, col_weight = _bilinear_taps(size[1], image.shape[1])
    row_weight = row_weight.astype(np.float32)[:, None, None]
    col_weight = col_weight.astype(np.float32)[None, :, None]
    vertical = image[rows].astype(np.float32) * (1 - row_weight) + image[row_below].astype(np.float32) * row_weight
    resized = vertical[:, cols] * (1 - col_weight) + vertical[:, col_right] * col_weight
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def random_crop_origin(label: np.ndarray, crop: tuple[int, int], cat_max_ratio: float, rng) -> tuple[int, int]:
    """mmseg ``RandomCrop``: a random crop, checked up to 10 times: kept once its most frequent class covers less
    than ``cat_max_ratio`` of its labelled pixels (and it holds more than one class), else drawn again; the last
    draw (the 11th) is kept unchecked."""
    height, width = label.shape
    max_top, max_left = max(height - crop[0], 0), max(width - crop[1], 0)

    def draw() -> tuple[int, int]:
        return int(rng.integers(0, max_top + 1)), int(rng.integers(0, max_left + 1))

    top, left = draw()
    for _ in range(10 if cat_max_ratio < 1.0 else 0):
        window = label[top : top + crop[0], left : left + crop[1]]
        _, counts = np.unique(window[window != IGNORE_INDEX], return_counts=True)
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
        top, left = draw()
    return top, left


def photometric_distortion(image: np.ndarray, rng) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion``: each with probability 0.5, brightness +-32, contrast x[0.5, 1.5] (before or
    after the colour changes, at random), saturation x[0.5, 1.5] and hue +-18 (OpenCV's 0-180 hue scale)."""
    image = image.astype(np.float32)
    if rng.integers(2):
        image = np.clip(image + rng.uniform(-32, 32), 0, 255)
    contrast_first = bool(rng.integers(2))

    def contrast(values):
        return np.clip(values * rng.uniform(0.5, 1.5), 0, 255) if rng.integers(2) else values

    if contrast_first:
        image = contrast(image)
    saturate, shift_hue = bool(rng.integers(2)), bool(rng.integers(2))
    if saturate or shift_hue:
        hsv = rgb_to_hsv(image)
        if saturate:
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 1)
        if shift_hue:
            hsv[..., 0] = (hsv[..., 0] + rng.integers(-18, 19) * 2.0) % 360.0
        image = hsv_to_rgb(hsv)
    if not contrast_first:
        image = contrast(image)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` RGB in [0, 255] -> HSV with hue in degrees [0, 360), saturation and value in [0, 1] / [0, 255]."""
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    value = image.max(-1)
    delta = value - image.min(-1)
    saturation = np.where(value > 0, delta / np.maximum(value, 1e-12), 0.0)
    safe = np.maximum(delta, 1e-12)
    hue = np.where(
        value == red,
        (green - blue) / safe % 6,
        np.where(value == green, (blue - red) / safe + 2, (red - green) / safe + 4),
    )
    hue = np.where(delta > 0, hue * 60.0, 0.0)
    return np.stack([hue, saturation, value], -1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    hue, saturation, value = hsv[..., 0] / 60.0, hsv[..., 1], hsv[..., 2]
    chroma = value * saturation
    second = chroma * (1 - np.abs(hue % 2 - 1))  # the middle channel of the hue's sector
    sector = np.floor(hue).astype(int) % 6
    conditions = [sector == index for index in range(6)]
    red = np.select(conditions, [chroma, second, 0, 0, second, chroma])
    green = np.select(conditions, [second, chroma, chroma, second, 0, 0])
    blue = np.select(conditions, [0, 0, second, chroma, chroma, second])
    return np.stack([red, green, blue], -1) + (value - chroma)[..., None]


def _check_pair(name: str, value, kind, what: str) -> tuple:
    """``value`` as two positive numbers of ``kind``, else a ``ValueError`` naming ``name`` and the value."""
    try:
        sides = tuple(value)
    except TypeError:  # a single number
        sides = ()
    if len(sides) != 2 or not all(isinstance(v, kind) and not isinstance(v, bool) and v > 0 for v in sides):
        raise ValueError(f"{name} must be two {what}, got {value!r}")
    return sides


@dataclass
class SegmentationTrainTransform:
    """The original training pipeline up to the normalisation: ``Resize(scale, ratio_range)`` ->
    ``RandomCrop(crop, cat_max_ratio)`` -> ``RandomFlip(0.5)`` -> ``PhotoMetricDistortion``. The crop is at most
    ``crop_size``; mmseg pads it to that size after ``Normalize`` (pixel values 0, the mean colour; labels 255):
    :func:`pad_to_crop` on the normalised sample (padding the uint8 image with 0 made the padding black, -2.1).

    Args:
        scale: keep-ratio scale ``(long, short)`` before the random ratio, e.g. ``(2048, 512)``.
        crop_size: ``(height, width)`` of the training crop.
        ratio_range: the random resize ratio is uniform in this range (mmseg ``ratio_range=(0.5, 2.0)``).
        cat_max_ratio: a crop is redrawn (up to 10 times) while one class covers this share of it (1 disables).
        flip_prob: probability of a horizontal flip.
        photometric: apply the photometric distortion.

    The settings are checked when the transform is made (mmseg asserts a positive ``RandomCrop`` size, a
    ``RandomFlip`` probability in [0, 1] and ``min_ratio <= max_ratio`` in ``Resize``; positive scales and ratios are
    ours: a zero one resized every image to nothing, a sample of padding only), and each call's ``image``
    (``(H, W, 3)`` uint8, at least 1x1), ``label`` (``(H, W)`` integers) and ``rng`` (a ``numpy.random.Generator``)
    before the first draw: a ``ValueError`` / ``TypeError`` naming the value.
    """

    scale: tuple[int, int] = (2048, 512)
    crop_size: tuple[int, int] = (512, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True

    def __post_init__(self):
        _check_pair("scale", self.scale, numbers.Real, "positive numbers (long, short)")
        _check_pair("crop_size", self.crop_size, numbers.Integral, "positive integers (height, width)")
        low, high = _check_pair("ratio_range", self.ratio_range, numbers.Real, "positive numbers (low, high)")
        if not low <= high < float("inf"):
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high < inf, got {self.ratio_range!r}")
        if not isinstance(self.flip_prob, numbers.Real) or not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob must be a probability in [0, 1], got {self.flip_prob!r}")

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
            )
        for name, value in (("image", image), ("label", label)):
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{name} must be a NumPy array (np.asarray({name})), got {type(value).__name__}")
        if image.ndim != 3 or image.shape[2] != 3:
            # a grey (H, W) image came out as garbage (16x16x40 from 30x40); an alpha channel was dropped only when
            # the hue or saturation was drawn, so the samples of one batch differed in channels
            raise ValueError(f"image must be an (H, W, 3) RGB array, got shape {image.shape}")
        if image.dtype != np.uint8:
            # the resize and the distortion clip to [0, 255] and round to uint8: a [0, 1] float image came out black
            raise TypeError(f"image must be uint8 (RGB values in [0, 255]), got {image.dtype}")
        if label.ndim != 2:
            raise ValueError(f"label must be an (H, W) array of class ids, got shape {label.shape}")
        if label.dtype == bool or not np.issubdtype(label.dtype, np.integer):
            # a boolean label was padded with True (ignore 255 -> class 1); a float one kept its fractions
            raise TypeError(f"label must be integer class ids, got {label.dtype}")
        if image.shape[:2] != label.shape:
            raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
        if 0 in label.shape:
            raise ValueError(f"image and label have size {label.shape}: each side needs at least 1 pixel")
        ratio = rng.uniform(*self.ratio_range)
        # mmseg's Resize.random_sample_ratio: the scale times the ratio, truncated, bounds the keep-ratio resize
        size = keep_ratio_size(*image.shape[:2], int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        image, label = resize_pair(image, label, size)
        top, left = random_crop_origin(label, self.crop_size, self.cat_max_ratio, rng)
        image = image[top : top + self.crop_size[0], left : left + self.crop_size[1]]
        label = label[top : top + self.crop_size[0], left : left + self.crop_size[1]]
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            image = photometric_distortion(image, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)


def pad_to_crop(pixel_values: torch.Tensor, label: torch.Tensor, crop_size) -> tuple[torch.Tensor, torch.Tensor]:
    """mmseg's ``Pad(size=crop_size, pad_val=0, seg_pad_val=255)`` after ``Normalize``: normalised ``(3, h, w)``
    pixel values padded with 0 and the ``(h, w)`` label with the ignore index on the bottom and right to
    ``crop_size`` ``(height, width)`` (a sample larger than it is a ``ValueError``)."""
    height, width = pixel_values.shape[-2:]
    if height > crop_size[0] or width > crop_size[1]:
        raise ValueError(f"a sample of {height}x{width} does not fit the crop size {tuple(crop_size)}")
    padding = (0, crop_size[1] - width, 0, crop_size[0] - height)
    return F.pad(pixel_values, padding, value=0.0), F.pad(label, padding, value=IGNORE_INDEX)
