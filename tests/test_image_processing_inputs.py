"""Inputs a new user passes to the image processors, and what each one now gives.

Every test runs on both backends (torchvision and PIL/NumPy) and on both processor families (keep-ratio:
`KeepRatioImageProcessor(+Pil)`; detectron2: `SeMaskMask2FormerImageProcessor(+Pil)`), since they share the input
handling of ``image_processing_utils_segmentation.py``. Expected pixel values are computed by hand: 8-bit values
``v`` become ``(v / 255 - mean) / std``.
"""

import json
import logging
import re
import sys

import numpy as np
import PIL
import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoImageProcessor
from transformers.image_utils import PILImageResampling
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.processing_utils import ImagesKwargs

import hf_semseg  # noqa: F401  (registers the processors with AutoImageProcessor)
from hf_semseg.models.image_processing_keep_ratio import KeepRatioImageProcessor
from hf_semseg.models.image_processing_pil_keep_ratio import KeepRatioImageProcessorPil
from hf_semseg.models.image_processing_pil_semask_mask2former import SeMaskMask2FormerImageProcessorPil
from hf_semseg.models.image_processing_semask_mask2former import SeMaskMask2FormerImageProcessor
from hf_semseg.models.image_processing_utils_segmentation import (
    ALREADY_RESCALED_WARNING,
    get_keep_ratio_output_size,
    logits_cover,
    round_side,
    sixteen_to_eight_bits,
)
from hf_semseg.models.image_processing_utils_semask_mask2former import get_resize_shortest_edge_output_size


MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
ONE_LEVEL = 1 / 255 / 0.224 + 1e-5  # one 8-bit intensity level after normalisation (largest over the channels)
PILLOW_VERSION = tuple(int(part) for part in PIL.__version__.split(".")[:2])

PROCESSORS = [
    KeepRatioImageProcessor,
    KeepRatioImageProcessorPil,
    SeMaskMask2FormerImageProcessor,
    SeMaskMask2FormerImageProcessorPil,
]
IDS = ["keep_ratio-torchvision", "keep_ratio-pil", "mask2former-torchvision", "mask2former-pil"]
FAMILIES = {
    KeepRatioImageProcessor: (KeepRatioImageProcessor, KeepRatioImageProcessorPil),
    KeepRatioImageProcessorPil: (KeepRatioImageProcessor, KeepRatioImageProcessorPil),
    SeMaskMask2FormerImageProcessor: (SeMaskMask2FormerImageProcessor, SeMaskMask2FormerImageProcessorPil),
    SeMaskMask2FormerImageProcessorPil: (SeMaskMask2FormerImageProcessor, SeMaskMask2FormerImageProcessorPil),
}


@pytest.fixture(params=PROCESSORS, ids=IDS)
def processor_class(request):
    return request.param


@pytest.fixture
def warnings_of(caplog):
    """Warnings logged by our modules (which propagate) and by transformers (whose root logger does not), as text."""
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(caplog.handler)
    transformers.utils.logging.warning_once.cache_clear()  # `warning_once` remembers what it said in other tests
    caplog.set_level(logging.WARNING)
    yield lambda: [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    transformers_logger.removeHandler(caplog.handler)


def pixels(processor, image, **kwargs) -> np.ndarray:
    """``pixel_values`` of one image, the padding (Mask2Former pads to a multiple of 32) cropped, as float64 CHW."""
    kwargs.setdefault("do_resize", False)
    out = processor(image, return_tensors="pt", **kwargs).pixel_values
    if kwargs["do_resize"]:
        height, width = processor.get_output_size(*_height_width(image), size=kwargs.get("size"))
    else:
        height, width = _height_width(image)
    return out[0, :, :height, :width].double().numpy()


def _height_width(image) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.height, image.width
    return tuple(image.shape[:2])  # the tests pass unambiguous channels-last arrays or 2D arrays here


def normalised(rgb_hwc_uint8: np.ndarray) -> np.ndarray:
    """What an 8-bit RGB image becomes with the default rescale (1/255) and ImageNet normalisation, CHW."""
    values = rgb_hwc_uint8.astype(np.float64) / 255.0
    return ((values - MEAN) / STD).transpose(2, 0, 1)


def to_16_bits(image_uint8: np.ndarray, rng) -> np.ndarray:
    """The 16-bit image whose 8-bit version (rounded) is ``image_uint8``: ``v * 257`` plus up to half a level."""
    noise = rng.integers(-128, 128, image_uint8.shape)
    return np.clip(image_uint8.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)


# ------------------------------------------------------------------------------------------------------------------
# 1. 16-bit images are scaled by their own range; other integer ranges are refused
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_uint16_image_is_scaled_by_65535_not_255(processor_class, container):
    rng = np.random.default_rng(0)
    image8 = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    image16 = to_16_bits(image8, rng)
    image16 = torch.from_numpy(image16) if container == "torch" else image16
    processor = processor_class()
    np.testing.assert_allclose(pixels(processor, image16), normalised(image8), atol=1e-5)
    # the first pixel by hand: v / 65535 normalised, to within 8-bit rounding
    v = np.asarray(image16[0, 0], dtype=np.float64)
    np.testing.assert_allclose(pixels(processor, image16)[:, 0, 0], (v / 65535 - MEAN) / STD, atol=0.5 * ONE_LEVEL)


@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_every_16_bit_value_is_reduced_to_the_nearest_8_bit_value(container):
    """``round(v * 255 / 65535)`` = ``round(v / 257)`` for all 65536 values (no ties: 257 is odd), in integers."""
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    reduced = sixteen_to_eight_bits(torch.from_numpy(values.astype(np.int32)) if container == "torch" else values)
    expected = np.round(np.arange(65536) / 257).reshape(256, 256)
    np.testing.assert_array_equal(np.asarray(reduced).astype(np.int64), expected)
    assert np.asarray(reduced).dtype == np.uint8


def test_a_flipped_array_view_is_the_same_image_as_its_copy(processor_class):
    """OpenCV's BGR -> RGB idiom ``image[..., ::-1]`` (and any flip) is a numpy view with a negative stride, which
    ``torch.from_numpy`` refuses; the processors take it as its contiguous copy."""
    bgr = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    processor = processor_class()
    for view in (bgr[..., ::-1], bgr[::-1], bgr[:, ::-2]):
        assert any(stride < 0 for stride in view.strides)
        np.testing.assert_array_equal(pixels(processor, view), pixels(processor, view.copy()))


def test_uint16_image_after_resize_matches_the_8_bit_image(processor_class):
    """Resized (Mask2Former: antialiased when shrinking, as detectron2 resizes uint8 images): the same numbers."""
    rng = np.random.default_rng(1)
    image8 = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    size = {"shortest_edge": 20, "longest_edge": 40}
    processor = processor_class(size=size)
    expected = pixels(processor, image8, do_resize=True)
    assert expected.shape[1:] == processor.get_output_size(50, 70)
    np.testing.assert_array_equal(pixels(processor, to_16_bits(image8, rng), do_resize=True), expected)


def test_16_bit_grayscale_png_and_pil_image(processor_class, tmp_path):
    """A 16-bit PNG opens as PIL mode "I;16" (Pillow 10.3 and newer; "I", 32-bit integers, before); as a PIL image
    and as a path it gives the 8-bit image's numbers."""
    rng = np.random.default_rng(2)
    gray8 = rng.integers(0, 256, (5, 9), dtype=np.uint8)
    gray16 = to_16_bits(gray8, rng)
    Image.fromarray(gray16).save(tmp_path / "depth16.png")
    opened = Image.open(tmp_path / "depth16.png")
    assert opened.mode == ("I;16" if PILLOW_VERSION >= (10, 3) else "I")
    expected = normalised(np.repeat(gray8[..., None], 3, axis=-1))
    processor = processor_class()
    np.testing.assert_allclose(pixels(processor, opened), expected, atol=1e-5)
    from_path = processor(str(tmp_path / "depth16.png"), do_resize=False, return_tensors="pt").pixel_values
    np.testing.assert_allclose(from_path[0, :, :5, :9].double().numpy(), expected, atol=1e-5)
    # e.g. 30000 / 65535 = 0.4578 (0.4588 after 8-bit rounding), not 30000 / 255 clipped to 1
    single = Image.fromarray(np.full((2, 2), 30000, np.uint16))
    np.testing.assert_allclose(pixels(processor, single)[:, 0, 0], (117 / 255 - MEAN) / STD, atol=1e-5)


def test_uint16_with_a_16_bit_rescale_factor_is_refused(processor_class):
    """The 16-bit image is reduced to 8 bits first, so a `rescale_factor` of 1/65535 would silently be wrong."""
    image = np.full((6, 7, 3), 40000, np.uint16)
    with pytest.raises(ValueError, match=r"Image 0 is a 16-bit image \(uint16\).*rescale_factor.*1/255"):
        processor_class()(image, rescale_factor=1 / 65535)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.int16])
def test_other_integer_dtypes_beyond_8_bit_values_are_refused(processor_class, dtype):
    image = np.zeros((6, 7, 3), dtype)
    image[0, 0] = 300
    with pytest.raises(ValueError, match=rf"Image 0 has dtype {np.dtype(dtype).name} with values in \[0, 300\]"):
        processor_class()(image)
    negative = np.full((6, 7, 3), -1, dtype)
    with pytest.raises(ValueError, match=rf"Image 1 has dtype {np.dtype(dtype).name} with values in \[-1, -1\]"):
        processor_class()([np.zeros((6, 7, 3), np.uint8), negative])


def test_other_integer_dtypes_with_8_bit_values_are_8_bit(processor_class):
    rng = np.random.default_rng(3)
    image8 = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    image8[0, 0], image8[0, 1] = 0, 255  # both ends of the range are 8-bit values
    image = image8.astype(np.int16)
    image[0, 0, 0] = 256
    with pytest.raises(ValueError, match=r"Image 0 has dtype int16 with values in \[0, 256\]"):
        processor_class()(image)
    processor = processor_class()
    for image in (image8.astype(np.int32), torch.from_numpy(image8.astype(np.int64))):
        np.testing.assert_allclose(pixels(processor, image), normalised(image8), atol=1e-5)


def test_pil_32_bit_integer_image_beyond_8_bits_is_refused(processor_class):
    image = Image.fromarray(np.full((4, 5), 4000, np.int32))
    assert image.mode == "I"
    with pytest.raises(ValueError, match=r"Image 0 is a PIL image in mode 'I' .*values in \[4000, 4000\]"):
        processor_class()(image)
    for low, high in ((-1, 0), (0, 256)):
        with pytest.raises(ValueError, match=rf"mode 'I' .*values in \[{low}, {high}\]"):
            processor_class()(Image.fromarray(np.array([[low, high]], np.int32)))
    # 0 and 255 are 8-bit values: the image of mode 'L'
    eight_bit = np.array([[0, 255, 17], [255, 0, 4]], np.int32)
    as_l = pixels(processor_class(), Image.fromarray(eight_bit.astype(np.uint8)))
    np.testing.assert_array_equal(pixels(processor_class(), Image.fromarray(eight_bit)), as_l)


# ------------------------------------------------------------------------------------------------------------------
# 2. Float images already in [0, 1]: transformers' warning; do_rescale=False gives the right values
# ------------------------------------------------------------------------------------------------------------------


def test_float_image_in_0_1_warns_like_transformers(processor_class, warnings_of):
    image = np.full((6, 7, 3), 0.5, np.float32)
    image[0, 0] = (0.2, 0.4, 1.0)
    processor = processor_class()

    rescaled_twice = pixels(processor, image)
    assert warnings_of() == [ALREADY_RESCALED_WARNING]
    assert "pass `do_rescale=False`" in ALREADY_RESCALED_WARNING
    # like transformers, the warning does not change the numbers: the values are still divided by 255
    np.testing.assert_allclose(rescaled_twice[:, 0, 0], (np.array([0.2, 0.4, 1.0]) / 255 - MEAN) / STD, atol=1e-5)

    right = pixels(processor, image, do_rescale=False)
    np.testing.assert_allclose(right[:, 0, 0], (np.array([0.2, 0.4, 1.0]) - MEAN) / STD, atol=1e-5)
    np.testing.assert_allclose(right[:, 1, 1], (0.5 - MEAN) / STD, atol=1e-5)
    assert warnings_of() == [ALREADY_RESCALED_WARNING]  # no second warning with do_rescale=False


def test_float_image_in_0_255_and_uint8_do_not_warn(processor_class, warnings_of):
    processor = processor_class()
    image = np.full((6, 7, 3), 128.0, np.float32)
    np.testing.assert_allclose(pixels(processor, image)[:, 0, 0], (128 / 255 - MEAN) / STD, atol=1e-5)
    pixels(processor, np.zeros((6, 7, 3), np.uint8))
    pixels(processor, Image.new("RGB", (7, 6), (1, 0, 1)))  # a PIL image is 8-bit: never "already rescaled"
    pixels(processor, np.full((6, 7, 3), 1.5, np.float32))  # above 1: not in [0, 1]
    assert warnings_of() == []


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (0.0, 0.0), (1.0, 1.0)])
def test_the_ends_of_0_1_are_in_it(processor_class, warnings_of, low, high):
    image = np.full((6, 7, 3), low, np.float32)
    image[0, 0] = high
    pixels(processor_class(), image)
    assert warnings_of() == [ALREADY_RESCALED_WARNING]


def test_non_finite_float_image_is_refused(processor_class):
    image = np.full((6, 7, 3), 10.0, np.float32)
    image[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="Image 1 has non-finite values"):
        processor_class()([np.zeros((6, 7, 3), np.float32) + 3, image])
    for value, shown in ((np.inf, r"\[10.0, inf\]"), (-np.inf, r"\[-inf, 10.0\]")):  # finite at the other end
        image[1, 2, 0] = value
        with pytest.raises(ValueError, match=rf"Image 0 has non-finite values \(NaN or infinity; range {shown}\)"):
            processor_class()(image)


# ------------------------------------------------------------------------------------------------------------------
# 3. Ambiguous channel layouts
# ------------------------------------------------------------------------------------------------------------------


def _three_by_forty_channels_last() -> np.ndarray:
    image = np.zeros((3, 40, 3), np.uint8)  # 3 rows, 40 columns, RGB: red 255, green 51, blue a ramp
    image[..., 0] = 255
    image[..., 1] = 51
    image[..., 2] = np.arange(40, dtype=np.uint8)[None, :] * 5
    return image


@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_input_data_format_resolves_an_ambiguous_layout(processor_class, container, warnings_of):
    image = _three_by_forty_channels_last()
    data = torch.from_numpy(image) if container == "torch" else image
    out = processor_class()(data, input_data_format="channels_last", do_resize=False, return_tensors="pt")
    values = out.pixel_values[0, :, :3, :40].double().numpy()
    np.testing.assert_allclose(values, normalised(image), atol=1e-5)
    assert values[2, 0, 39] == pytest.approx((195 / 255 - 0.406) / 0.225, abs=1e-5)
    assert warnings_of() == []  # stated: nothing guessed, nothing said

    # channels first stated for the same array: 3 channels of 40 x 3 pixels, silently too
    first = processor_class()(data, input_data_format="channels_first", do_resize=False, return_tensors="pt")
    np.testing.assert_allclose(
        first.pixel_values[0, 0, :40, :3].double().numpy()[0], (image[0, 0] / 255 - 0.485) / 0.229, atol=1e-5
    )
    assert warnings_of() == []


def test_ambiguous_layout_is_guessed_with_one_warning_naming_the_image(processor_class, warnings_of):
    image = _three_by_forty_channels_last()
    out = processor_class()([np.zeros((20, 30, 3), np.uint8), image], do_resize=False, do_pad=False)
    # transformers' rule: channels first, i.e. 3 channels of 40 x 3 pixels
    assert tuple(out.pixel_values[1].shape) == (3, 40, 3)
    np.testing.assert_allclose(np.asarray(out.pixel_values[1])[0, 0], (image[0, 0] / 255 - 0.485) / 0.229, atol=1e-5)
    messages = warnings_of()
    assert len(messages) == 1, messages  # ours only, not transformers' (which the PIL backend printed twice)
    assert "Image 1 has shape (3, 40, 3)" in messages[0]
    assert "channels first" in messages[0] and 'input_data_format="channels_last"' in messages[0]
    assert "i.e. 3 channel(s) of 40 x 3 pixels" in messages[0]


def test_unambiguous_layouts_stay_silent(processor_class, warnings_of):
    processor = processor_class()
    for image in (np.zeros((5, 40, 3), np.uint8), np.zeros((3, 40, 5), np.uint8), np.zeros((7, 9), np.uint8)):
        processor(image, do_resize=False)
    assert warnings_of() == []


@pytest.mark.parametrize("shape", [(20, 30, 2), (2, 20, 30)], ids=["channels last", "channels first"])
def test_a_two_channel_array_is_named_as_grayscale_and_alpha_either_way(processor_class, shape):
    with pytest.raises(ValueError, match=r"2-channel \(grayscale \+ alpha\) arrays are not supported"):
        processor_class()(np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match=r"could not find a channel dimension") as error:
        processor_class()(np.zeros((20, 30, 5), np.uint8))
    assert "2-channel" not in str(error.value)


def test_bad_input_data_format_is_named(processor_class):
    with pytest.raises(ValueError, match="`input_data_format` must be 'channels_first' or 'channels_last', got 'hwc'"):
        processor_class()(np.zeros((6, 7, 3), np.uint8), input_data_format="hwc")
    with pytest.raises(ValueError, match=r"Image 0 has shape \(6, 7, 3\) and input_data_format='channels_first'"):
        processor_class()(np.zeros((6, 7, 3), np.uint8), input_data_format="channels_first")


# ------------------------------------------------------------------------------------------------------------------
# 4. Paths: missing, corrupt, truncated
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_path", [False, True], ids=["str", "Path"])
def test_missing_image_file_is_named(processor_class, tmp_path, as_path):
    missing = tmp_path / "no_such_image.png"
    source = missing if as_path else str(missing)
    with pytest.raises(FileNotFoundError, match=r"Image 0: no such image file: '.*no_such_image\.png'"):
        processor_class()(source)
    with pytest.raises(FileNotFoundError, match=r"Image 1: no such image file: 'cat\.jpg'"):
        processor_class()([np.zeros((6, 7, 3), np.uint8), "cat.jpg"])


def test_existing_image_file_as_str_or_path(processor_class, tmp_path):
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "image.png")
    processor = processor_class()
    for source in (str(tmp_path / "image.png"), tmp_path / "image.png"):
        out = processor(source, do_resize=False, return_tensors="pt").pixel_values
        np.testing.assert_allclose(out[0, :, :6, :8].double().numpy(), normalised(image), atol=1e-5)


@pytest.mark.parametrize(
    "source, fetched",
    [
        ("https://example.org/cat.png", True),
        ("http://example.org/cat.png", True),
        ("data:image/png;base64,iVBORw0KGgo=", True),
        ("iVBORw0KGgoAAAANSUhE", True),  # 20 base64 characters: transformers' loader decodes it
        ("iVBORw0KGgoAAAAN", True),  # 16: the shortest string taken for base64
        ("iVBORw0KGgoAAAA", False),  # 15: a missing file's name
        ("cat.png", False),
    ],
)
def test_url_and_base64_strings_go_to_transformers_loader_and_other_strings_are_missing_files(
    processor_class, monkeypatch, source, fetched
):
    """A string that is no file is fetched as transformers' ``load_image`` does (a URL, a data URL, a base64 text of
    16 characters or more); any other string is a missing file, named as one. The loader is mocked (no network)."""
    image = np.full((6, 8, 3), 7, np.uint8)
    calls = []

    def fetch_images(self, text):
        calls.append(text)
        return Image.fromarray(image)

    monkeypatch.setattr(processor_class, "fetch_images", fetch_images)
    processor = processor_class(do_resize=False, do_rescale=False, do_normalize=False)
    if fetched:
        out = processor(source, return_tensors="pt").pixel_values
        assert calls == [source]
        assert out[0, :, :6, :8].unique().tolist() == [7.0]
    else:
        with pytest.raises(FileNotFoundError, match=rf"Image 0: no such image file: '{source}'"):
            processor(source)
        assert calls == []


def test_a_fetch_that_fails_names_the_source_and_the_error(processor_class, monkeypatch):
    def fetch_images(self, text):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(processor_class, "fetch_images", fetch_images)
    with pytest.raises(
        ValueError,
        match=r"Image 0: could not load the image 'https://example\.org/cat\.png': it is not an existing file, and "
        r"reading it as a URL or base64-encoded image failed with ConnectionError: no route to host",
    ):
        processor_class()("https://example.org/cat.png")
    long_url = "https://example.org/" + "a" * 60 + ".png"  # 84 characters: the first 77 shown, then "..."
    with pytest.raises(ValueError, match=rf"could not load the image '{re.escape(long_url[:77])}\.\.\.': it is not"):
        processor_class()(long_url)
    exactly_80 = "https://example.org/" + "a" * 56 + ".png"
    with pytest.raises(ValueError, match=rf"could not load the image '{re.escape(exactly_80)}': it is not"):
        processor_class()(exactly_80)
    one_more = exactly_80[:-4] + "a.png"  # 81 characters
    with pytest.raises(ValueError, match=rf"could not load the image '{re.escape(one_more[:77])}\.\.\.': it is not"):
        processor_class()(one_more)


@pytest.mark.parametrize("damage", ["corrupt", "truncated_png", "truncated_jpeg"])
def test_unreadable_image_file_is_named(processor_class, tmp_path, damage):
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    path = tmp_path / f"{damage}.{'jpg' if damage.endswith('jpeg') else 'png'}"
    if damage == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    else:
        image.save(path, format="JPEG" if damage.endswith("jpeg") else "PNG")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"Image 0: could not read the image file '.*{path.name}'"):
        processor_class()(str(path))


# ------------------------------------------------------------------------------------------------------------------
# 5. Very elongated images: every side at least 1 pixel, int(x + 0.5) rounding
# ------------------------------------------------------------------------------------------------------------------


def test_size_rules_keep_one_pixel_and_round_half_up():
    assert round_side(0.064) == 1 and round_side(0.5) == 1 and round_side(2.5) == 3 and round_side(2.49) == 2
    assert get_keep_ratio_output_size(10000, 10, 64, 32) == (64, 1)  # 10 * 0.0064 = 0.064 -> 1, not 0
    assert get_keep_ratio_output_size(10, 10000, 64, 32) == (1, 64)
    assert get_resize_shortest_edge_output_size(10000, 10, 32, 64) == (64, 1)
    assert get_keep_ratio_output_size(100, 1000, 2048, 512) == (205, 2048)  # 204.8 -> 205 (transformers: 204)


def test_very_elongated_image_is_resized_to_at_least_one_pixel(processor_class):
    size = {"longest_edge": 64, "shortest_edge": 32}
    processor = processor_class(size=size)
    assert processor.get_output_size(10000, 10) == (64, 1)
    image = np.full((10000, 10, 3), 124, np.uint8)
    labels = np.full((10000, 10), 7, np.uint8)
    out = processor(image, segmentation_maps=labels, return_tensors="pt")
    np.testing.assert_allclose(
        out.pixel_values[0, :, :64, 0].numpy(), np.repeat(((124 / 255 - MEAN) / STD)[:, None], 64, 1), atol=1e-5
    )
    assert out.labels[0, :64, 0].tolist() == [7] * 64
    padded_width = out.pixel_values.shape[-1]
    assert padded_width == (1 if processor_class in FAMILIES[KeepRatioImageProcessor] else 32)


def test_docstrings_state_the_rounding(processor_class):
    doc = processor_class.__doc__ if "Pil" not in processor_class.__name__ else FAMILIES[processor_class][0].__doc__
    assert "int(x + 0.5)" in doc or "int(h * f + 0.5)" in doc
    assert "at least 1 pixel" in doc


# ------------------------------------------------------------------------------------------------------------------
# 6. Segmentation maps that do not fit their images
# ------------------------------------------------------------------------------------------------------------------


def test_segmentation_map_with_swapped_height_and_width_is_refused(processor_class):
    images = [np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30, 3), np.uint8)]
    maps = [np.zeros((20, 30), np.uint8), np.zeros((30, 20), np.uint8)]
    with pytest.raises(
        ValueError,
        match=r"Segmentation map 1 has size \(30, 20\).*image 1 has size \(20, 30\) \(height and width swapped\?\)",
    ):
        processor_class()(images, segmentation_maps=maps)
    # a PIL map is (width, height) in PIL's terms: a 30 x 20 PIL map fits a 20 x 30 array
    ok = processor_class()(images[0], segmentation_maps=Image.new("L", (30, 20), 3), do_resize=False)
    assert np.asarray(ok.labels[0])[:20, :30].tolist() == [[3] * 30] * 20
    with pytest.raises(ValueError, match=r"Segmentation map 0 has size \(21, 30\).*image 0 has size \(20, 30\);"):
        processor_class()(images[0], segmentation_maps=np.zeros((21, 30), np.uint8))


def test_label_batch_of_another_length_is_refused(processor_class):
    images = np.zeros((2, 20, 30, 3), np.uint8)  # a 4D batch of 2
    with pytest.raises(ValueError, match="Got 2 images but 1 segmentation maps"):
        processor_class()(images, segmentation_maps=[np.zeros((20, 30), np.uint8)])
    with pytest.raises(ValueError, match="Got 2 images but 3 segmentation maps"):
        processor_class()(images, segmentation_maps=np.zeros((3, 20, 30), np.uint8))


# ------------------------------------------------------------------------------------------------------------------
# 7. Save / reload: to_dict() unchanged whatever backend loads it; valid_kwargs where transformers looks for it
# ------------------------------------------------------------------------------------------------------------------


def test_to_dict_survives_save_and_reload_with_either_backend(processor_class, tmp_path):
    processor = processor_class(image_mean=[0.5, 0.4, 0.3], do_reduce_labels=True)
    # before any save: no remote code to name (and its repr, which reads to_dict, works)
    assert "auto_map" not in processor.to_dict() and "image_mean" in repr(processor)
    processor.save_pretrained(tmp_path)
    saved = processor.to_dict()
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["auto_map"] == saved["auto_map"]
    for loader in FAMILIES[processor_class]:
        assert loader.from_pretrained(tmp_path).to_dict() == saved, loader.__name__
    for backend in ("torchvision", "pil"):
        loaded = AutoImageProcessor.from_pretrained(tmp_path, backend=backend)
        assert type(loaded) in FAMILIES[processor_class]
        assert loaded.to_dict() == saved, backend


def test_valid_kwargs_class_lives_in_the_processor_module(processor_class):
    """transformers' `test_valid_kwargs_set`: the module of each processor holds `<Name without Pil>Kwargs`, and it
    is the processor's `valid_kwargs`."""
    module = sys.modules[processor_class.__module__]
    expected = vars(module).get(f"{processor_class.__name__.removesuffix('Pil')}Kwargs", ImagesKwargs)
    assert processor_class().valid_kwargs is expected
    assert {"do_reduce_labels", "size_divisor"} <= set(expected.__annotations__)


# ------------------------------------------------------------------------------------------------------------------
# 8. Settings that used to give silently wrong pixel values, a misleading error or a division by zero
# ------------------------------------------------------------------------------------------------------------------

WRONG_SETTINGS = {
    "rescale_factor 0": ({"rescale_factor": 0.0}, ["`rescale_factor`", "0.0", "positive"]),
    "rescale_factor negative": ({"rescale_factor": -1 / 255}, ["`rescale_factor`", "-0.0039", "positive"]),
    "image_std with a 0": ({"image_std": [0.229, 0.0, 0.225]}, ["`image_std`", "0.229, 0.0, 0.225", "positive"]),
    "image_std negative": ({"image_std": -0.2}, ["`image_std`", "-0.2", "positive standard deviation"]),
    "image_mean nan": ({"image_mean": [float("nan"), 0.5, 0.5]}, ["`image_mean`", "nan", "finite"]),
    "rescale_factor inf": ({"rescale_factor": float("inf")}, ["`rescale_factor`", "got inf", "finite and positive"]),
    "pad_size longest_edge": (
        {"pad_size": {"longest_edge": 128}},
        ["`pad_size`", "{'height', 'width'}", "{'longest_edge': 128}"],
    ),
    "do_center_crop": (
        {"do_center_crop": True, "crop_size": {"height": 16, "width": 16}},
        ["do_center_crop=True", "do not crop"],
    ),
    "pad_size height 0": ({"pad_size": {"height": 0, "width": 64}}, ["`pad_size['height']`", "positive", "got 0"]),
    "size shortest_edge 0": ({"size": {"shortest_edge": 0}}, ["`size['shortest_edge']`", "positive", "got 0"]),
    "size height negative": ({"size": {"height": -3, "width": 4}}, ["`size['height']`", "positive", "got -3"]),
}


@pytest.mark.parametrize("case", list(WRONG_SETTINGS))
def test_wrong_setting_is_refused_at_construction_and_per_call(processor_class, case):
    """A std of 0 gave infinite pixel values, a rescale factor of 0 a constant image (PIL) or a ZeroDivisionError
    (torchvision), a negative one a sign-flipped image, a crop was silently not done: refused, naming the setting."""
    settings, parts = WRONG_SETTINGS[case]
    image = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(ValueError) as at_construction:
        processor_class(**settings)
    with pytest.raises(ValueError) as per_call:
        processor_class()(image, **settings)
    for error in (at_construction, per_call):
        for part in parts:
            assert part in str(error.value), (part, str(error.value))


@pytest.mark.parametrize("processor_class", PROCESSORS[2:], ids=IDS[2:])
def test_negative_size_divisibility_is_refused(processor_class):
    """Was transformers' 'Padding dimensions are negative ... pad_size' error at the first call (about `pad_size`,
    which the user never set)."""
    with pytest.raises(ValueError, match=r"`size_divisibility` must be a whole number >= 0 .* got -32"):
        processor_class(size_divisibility=-32)
    with pytest.raises(ValueError, match=r"`size_divisibility` must be a whole number >= 0 .* got -32"):
        processor_class()(np.zeros((20, 30, 3), np.uint8), size_divisibility=-32)
    assert processor_class(size_divisibility=0)(np.zeros((20, 30, 3), np.uint8)).pixel_values[0].shape[-2:] == (
        640,
        960,
    )


@pytest.mark.parametrize("processor_class", PROCESSORS[:2], ids=IDS[:2])
@pytest.mark.parametrize("size_divisor", [0, -4])
def test_size_divisor_below_one_is_refused_at_construction(processor_class, size_divisor):
    """`size_divisor` is in `validated_at_construction` but was only checked at the first call."""
    message = rf"`size_divisor` must be a positive integer or None, got {size_divisor}\."
    with pytest.raises(ValueError, match=message):
        processor_class(size_divisor=size_divisor)
    with pytest.raises(ValueError, match=message):
        processor_class()(np.zeros((20, 30, 3), np.uint8), size_divisor=size_divisor)
    assert processor_class(size_divisor=32).size_divisor == 32
    # 1 is positive: every size is a multiple of it (45 x 70 under (64, 32): 32 x 50, as without a divisor)
    processor = processor_class(size={"longest_edge": 64, "shortest_edge": 32}, size_divisor=1)
    assert tuple(processor(np.zeros((45, 70, 3), np.uint8), return_tensors="pt").pixel_values.shape) == (1, 3, 32, 50)


def test_pad_size_with_height_and_width_still_pads(processor_class):
    out = processor_class(pad_size={"height": 64, "width": 80})(np.zeros((20, 30, 3), np.uint8), do_resize=False)
    assert np.asarray(out.pixel_values[0]).shape == (3, 64, 80)
    # sizes of 1 are positive sizes
    one = processor_class(size={"height": 1, "width": 1}, pad_size={"height": 1, "width": 1})
    assert np.asarray(one(np.zeros((20, 30, 3), np.uint8)).pixel_values[0]).shape == (3, 1, 1)
    assert processor_class(size={"shortest_edge": 1}).get_output_size(20, 30)[0] == 1


@pytest.mark.parametrize("pad_size", [(64, 16), (16, 64)], ids=["narrower", "lower"])
def test_a_pad_size_smaller_on_one_side_than_the_image_is_refused(processor_class, pad_size):
    """Padding cannot crop: a pad size below the (resized) image on either side alone is refused, naming both."""
    processor = processor_class(pad_size={"height": pad_size[0], "width": pad_size[1]})
    with pytest.raises(ValueError, match=rf"`pad_size`=\({pad_size[0]}, {pad_size[1]}\) is smaller than .* \(20, 30\)"):
        processor(np.zeros((20, 30, 3), np.uint8), do_resize=False)


def test_one_value_mean_and_std_apply_to_every_channel_in_both_backends(processor_class):
    """The torchvision backend broadcast a one-value `image_mean`/`image_std`; the PIL backend failed inside
    transformers ("mean must have 3 elements"). Both now give what a float mean/std gives."""
    image = np.random.default_rng(11).integers(0, 256, (12, 14, 3), dtype=np.uint8)
    one_value = pixels(processor_class(image_mean=[0.5], image_std=[0.25]), image)
    expected = (image.astype(np.float64) / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(one_value, expected.transpose(2, 0, 1), atol=1e-5)
    np.testing.assert_allclose(pixels(processor_class(image_mean=0.5, image_std=0.25), image), one_value, atol=1e-6)
    with pytest.raises(ValueError, match=r"Image 0 has 3 channel\(s\) but `image_mean` has 2 values"):
        processor_class(image_mean=[0.5, 0.4])(image)
    with pytest.raises(ValueError, match=r"Image 0 has 3 channel\(s\) but `image_std` has 4 values"):
        processor_class(image_std=[0.2, 0.2, 0.2, 0.2])(image)


# ------------------------------------------------------------------------------------------------------------------
# 9. Empty batches, float label maps, a single (H, W, 1) map, RGBA files
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "images",
    [np.zeros((0, 20, 20, 3), np.uint8), torch.zeros(0, 3, 20, 20, dtype=torch.uint8)],
    ids=["numpy", "torch"],
)
def test_empty_image_batch_is_refused(processor_class, images):
    """An empty 4D batch gave `pixel_values` of shape (0,) without a word (an empty list was refused)."""
    shape = tuple(images.shape)
    with pytest.raises(
        ValueError, match=rf"`images` is an empty batch \(shape {re.escape(str(shape))}\); pass at least one image\."
    ):
        processor_class()(images, return_tensors="pt")
    with pytest.raises(ValueError, match=r"`images` is a list of empty lists; pass at least one image\."):
        processor_class()([[]])


def test_empty_segmentation_map_batch_is_refused(processor_class):
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(
        ValueError,
        match=r"`segmentation_maps` is an empty batch \(shape \(0, 20, 20\)\); pass at least one segmentation map\.",
    ):
        processor_class()(image, segmentation_maps=np.zeros((0, 20, 20), np.uint8))
    with pytest.raises(ValueError, match=r"`segmentation_maps` is an empty batch \(shape \(0, 20, 20\)\)"):
        processor_class()(image, segmentation_maps=torch.zeros(0, 20, 20))


@pytest.mark.parametrize("container", ["numpy", "torch"])
@pytest.mark.parametrize("value, shown", [(1.7, "1.7"), (float("nan"), "nan"), (float("inf"), "inf"), (-0.5, "-0.5")])
def test_float_label_map_with_non_integer_values_is_refused(processor_class, container, value, shown):
    """1.7 was truncated to label 1 and NaN became -2**63, silently."""
    image = np.zeros((6, 8, 3), np.uint8)
    label = np.full((6, 8), 2.0, np.float32)
    label[3, 5] = value
    label = torch.from_numpy(label) if container == "torch" else label
    with pytest.raises(
        ValueError,
        match=rf"Segmentation map 1 has the value {shown} at \(row 3, column 5\) \((torch\.)?float32\); expected "
        r"integer class indices \(a float map may only hold whole numbers such as 3\.0\)\.",
    ):
        processor_class()([image, image], segmentation_maps=[np.ones((6, 8), np.float32), label], do_resize=False)


def test_float_label_map_values_from_2_to_the_62_are_refused(processor_class):
    """int64 holds them, but 2**62 is the documented bound (far beyond any class index; 2**63 overflows int64)."""
    seg_map = np.zeros((6, 7), np.float64)
    seg_map[1, 2] = 2.0**62
    with pytest.raises(
        ValueError,
        match=r"Segmentation map 0 has the value 4.611686e\+18 at \(row 1, column 2\) \(float64\); expected class "
        r"indices below 2\*\*62 in magnitude\.$",
    ):
        processor_class()(np.zeros((6, 7, 3), np.uint8), segmentation_maps=seg_map)
    seg_map[1, 2] = -(2.0**62)
    with pytest.raises(
        ValueError,
        match=r"has the value -4.611686e\+18 at \(row 1, column 2\) \(float64\); expected class indices below",
    ):
        processor_class()(np.zeros((6, 7, 3), np.uint8), segmentation_maps=seg_map)


def test_float_label_map_with_whole_numbers_is_still_accepted(processor_class):
    labels = np.array([[3.0, 0.0], [255.0, 7.0]], np.float64)
    out = processor_class()(np.zeros((2, 2, 3), np.uint8), segmentation_maps=labels, do_resize=False)
    assert np.asarray(out.labels[0])[:2, :2].tolist() == [[3, 0], [255, 7]]


def test_a_singleton_channel_of_a_label_map_is_dropped_first_or_last_and_a_one_row_map_is_a_map(processor_class):
    image = np.zeros((6, 5, 3), np.uint8)
    labels = np.arange(30).reshape(6, 5)
    processor = processor_class(do_resize=False, do_pad=False)
    for seg_map in (labels, labels[None], labels[..., None], torch.from_numpy(labels)[None]):
        out = processor([image], segmentation_maps=[seg_map], return_tensors="pt").labels
        assert out[0].tolist() == labels.tolist(), tuple(seg_map.shape)
    one_row = processor([Image.new("RGB", (5, 1))], segmentation_maps=[np.array([[1, 2, 3, 4, 5]])])
    assert np.asarray(one_row.labels[0]).tolist() == [[1, 2, 3, 4, 5]]


@pytest.mark.parametrize(
    "logits_size, input_size, covers",
    [
        ((1, 1), (16, 16), True),  # strides 9 ... 16 (a side of 1 bounds the stride from below only)
        ((1, 4), (8, 32), True),  # strides 7 ... 10
        ((4, 4), (16, 16), True),  # strides 4 and 5
        ((5, 5), (16, 16), True),  # stride 3: 16 / 3 = 5.3, rounded down
        ((4, 8), (16, 16), False),  # another aspect ratio: no stride gives both
        ((8, 8), (16, 20), False),  # the 16 side allows stride 2 only, and 20 / 2 = 10: an input 4 pixels wider
        ((2, 8), (4, 32), False),  # a side of 2 bounds the stride from above too: 2 ... 3 against 4
        ((16, 16), (68, 68), False),  # strides 5 ... 4: 68 / 4 = 17 rows, 68 / 5 = 13.6
        ((16, 16), (60, 60), False),  # strides 4 ... 3: 60 / 4 = 15, 60 / 3 = 20
    ],
)
def test_logits_cover_an_input_at_one_whole_stride(logits_size, input_size, covers):
    """Hand-computed: side ``h`` of an input side ``H`` allows the strides ``H // (h + 1) + 1`` ...
    ``(H - 1) // (h - 1)``."""
    assert logits_cover(logits_size, input_size) is covers


@pytest.mark.parametrize("channels", [1, 3])
def test_single_channels_last_label_map_array_error_says_how_it_was_read(processor_class, channels):
    """A single (H, W, 1) map array is a batch of H maps: the error said only "Got 1 images but 37 segmentation
    maps"."""
    image = np.zeros((37, 53, 3), np.uint8)
    with pytest.raises(
        ValueError,
        match=rf"Got 1 images but 37 segmentation maps; pass one map per image\. `segmentation_maps` is one ndarray "
        rf"of shape \(37, 53, {channels}\), read as a batch of 37 maps of size \(53, {channels}\): pass a single "
        r"map as an \(H, W\) array, or as a list of \(H, W\), \(1, H, W\) or \(H, W, 1\) arrays",
    ):
        processor_class()(image, segmentation_maps=np.zeros((37, 53, channels), np.uint8))
    # as the message says: in a list, an (H, W, 1) map is one map
    out = processor_class()(image, segmentation_maps=[np.full((37, 53, 1), 4, np.uint8)], do_resize=False)
    assert np.asarray(out.labels[0])[:37, :53].tolist() == [[4] * 53] * 37


def test_palette_file_with_a_transparent_colour_is_composited_on_white_like_the_pil_image(processor_class, tmp_path):
    """A palette PNG whose colour 1 is transparent (``info["transparency"]``, no alpha band): as a path, as a PIL
    image and as the RGBA array, the transparent pixels are white."""
    palette = Image.new("P", (8, 6), 0)
    palette.putpalette([200, 40, 0, 10, 20, 30] + [0] * 762)
    palette.paste(1, (0, 0, 4, 6))  # left half: colour 1, transparent
    palette.save(tmp_path / "palette.png", transparency=1)
    opened = Image.open(tmp_path / "palette.png")
    assert opened.mode == "P" and "A" not in opened.getbands() and opened.info.get("transparency") == 1
    processor = processor_class(do_rescale=False, do_normalize=False, do_resize=False)
    from_path, from_pil, from_array = (
        processor(image, return_tensors="pt").pixel_values[0, :, :6, :8].numpy()
        for image in (str(tmp_path / "palette.png"), opened, np.array(opened.convert("RGBA")))
    )
    np.testing.assert_array_equal(from_path, from_pil)
    np.testing.assert_array_equal(from_path, from_array)
    assert from_path[:, 0, 0].tolist() == [255.0, 255.0, 255.0]  # transparent: white, not (10, 20, 30)
    assert from_path[:, 0, 5].tolist() == [200.0, 40.0, 0.0]


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_float_rgba_in_0_1_is_composited_on_white_and_beyond_it_is_refused(processor_class, layout):
    """Hand-computed: opaque pixels keep their colour, a transparent one is white, (0.4, 0, 0.6) at alpha 0.5 over
    white is (0.7, 0.5, 0.8); 0 and 1 themselves are in range. Values beyond [0, 1] cannot be composited: refused."""
    rgba = np.zeros((6, 7, 4), np.float32)
    rgba[..., 0], rgba[..., 1], rgba[..., 3] = 0.2, 1.0, 1.0
    rgba[0, 0, 3] = 0.0
    rgba[0, 1] = (0.4, 0.0, 0.6, 0.5)

    def laid_out(array):
        return np.ascontiguousarray(array.transpose(2, 0, 1)) if layout == "channels_first" else array

    processor = processor_class(do_resize=False, do_rescale=False, do_normalize=False)
    out = processor(laid_out(rgba), return_tensors="pt").pixel_values[0]
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.0, 1.0, 1.0]))
    torch.testing.assert_close(out[:, 0, 1], torch.tensor([0.7, 0.5, 0.8]))
    torch.testing.assert_close(out[:, 1, 1], torch.tensor([0.2, 1.0, 0.0]))
    for value, shown in ((1.5, r"\[0.0, 1.5\]"), (-0.25, r"\[-0.25, 1.0\]")):
        bad = rgba.copy()
        bad[2, 2, 0] = value
        with pytest.raises(ValueError, match=rf"Image 0 is a float RGBA image with values in {shown}; float RGBA"):
            processor(laid_out(bad))


def test_rgba_file_is_composited_on_white_like_the_pil_image(processor_class, tmp_path):
    """Given as a path, an RGBA image had its alpha dropped (`convert("RGB")`, both backends); given as a PIL image
    or array it was composited on white. Now all three agree."""
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 3] = 200, 40, 0  # transparent
    rgba[:, 4:, 3] = 255  # right half opaque
    rgba[0, 0, 3] = 128  # half transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    processor = processor_class(do_rescale=False, do_normalize=False, do_resize=False)
    from_path, from_pil, from_array = (
        processor(image, return_tensors="pt").pixel_values[0, :, :6, :8].numpy()
        for image in (str(tmp_path / "rgba.png"), Image.open(tmp_path / "rgba.png"), rgba)
    )
    np.testing.assert_array_equal(from_path, from_pil)
    np.testing.assert_array_equal(from_path, from_array)
    assert from_path[:, 1, 1].tolist() == [255.0, 255.0, 255.0]  # transparent: white, not (200, 40, 0)
    assert from_path[:, 1, 5].tolist() == [200.0, 40.0, 0.0]
    assert from_path[:, 0, 0].tolist() == [227.0, 147.0, 127.0]  # 128/255 of the colour over white, rounded


# ------------------------------------------------------------------------------------------------------------------
# 10. SeMask-Mask2Former: uint8 images resized as detectron2 does with PIL
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("processor_class", PROCESSORS[2:], ids=IDS[2:])
@pytest.mark.parametrize("size", [(40, 54), (97, 131), (150, 210), (6, 9), (64, 700)])
def test_mask2former_nearest_is_pil_nearest_on_uint8_images(processor_class, size):
    """detectron2 resizes uint8 images with PIL, whose NEAREST samples pixel centres; the torchvision backend took
    the floor pixel (up to 255 levels off, 14% of the values). (6, 9) and (64, 700) are sizes where torch's
    float32 "nearest-exact" picks other pixels than PIL."""
    image = np.random.default_rng(12).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    height, width = size
    processor = processor_class(resample=PILImageResampling.NEAREST, do_rescale=False, do_normalize=False)
    out = processor(image, size={"height": height, "width": width}, return_tensors="pt").pixel_values
    expected = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(out[0, :, :height, :width].numpy(), expected.transpose(2, 0, 1))


def test_mask2former_torchvision_refuses_bicubic_on_uint8_images():
    """torchvision's bicubic is up to 24 levels from PIL's, with which detectron2 (and the PIL backend) resize uint8
    images: refused, naming the PIL backend. Float images (detectron2's float path: plain bicubic) still work."""
    processor = SeMaskMask2FormerImageProcessor(resample=PILImageResampling.BICUBIC)
    with pytest.raises(
        ValueError,
        match=r"resample=BICUBIC with integer \(uint8\) images: .*up to 24 intensity levels.*SeMaskMask2FormerImageProcessorPil",
    ):
        processor(np.zeros((20, 30, 3), np.uint8))
    image = np.random.default_rng(13).uniform(0, 255, (20, 30, 3)).astype(np.float32)
    kwargs = {"do_rescale": False, "do_normalize": False, "return_tensors": "pt"}
    tv = processor(image, **kwargs).pixel_values
    pil = SeMaskMask2FormerImageProcessorPil(resample=PILImageResampling.BICUBIC)(image, **kwargs).pixel_values
    torch.testing.assert_close(tv, pil, atol=1e-3, rtol=0)
    uint8 = np.random.default_rng(13).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    height, width = SeMaskMask2FormerImageProcessorPil().get_output_size(20, 30)
    pil = SeMaskMask2FormerImageProcessorPil(resample=PILImageResampling.BICUBIC)(uint8, **kwargs).pixel_values
    expected = np.asarray(Image.fromarray(uint8).resize((width, height), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(pil[0, :, :height, :width].numpy(), expected.transpose(2, 0, 1))


# ------------------------------------------------------------------------------------------------------------------
# 11. post_process_semantic_segmentation: arguments named before torch sees them
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target_sizes, shown",
    [(5, "int 5"), (((8, 8) for _ in range(2)), "generator <generator")],
    ids=["int", "generator"],
)
def test_post_process_target_sizes_of_the_wrong_type_are_named(processor_class, target_sizes, shown):
    """Was "TypeError: object of type 'int' has no len()"."""
    outputs = SemanticSegmenterOutput(logits=torch.randn(2, 4, 16, 16))
    with pytest.raises(
        TypeError,
        match=rf"target_sizes must be a list of 2 \(height, width\) pairs or a \(2, 2\) tensor, one per image; got "
        rf"{shown}",
    ):
        processor_class().post_process_semantic_segmentation(outputs, target_sizes=target_sizes)


def test_post_process_logits_without_classes_or_of_integers_are_named(processor_class):
    """0 classes reached torch's argmax (IndexError) or interpolate (RuntimeError); integer logits its interpolate
    (NotImplementedError for 'Long')."""
    processor = processor_class()
    with pytest.raises(ValueError, match=r"logits have shape \(1, 0, 8, 8\): num_labels is 0; expected at least one"):
        processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=torch.randn(1, 0, 8, 8)))
    with pytest.raises(TypeError, match=r"logits must be floating-point scores, got torch\.int64"):
        processor.post_process_semantic_segmentation(
            SemanticSegmenterOutput(logits=torch.ones(1, 4, 8, 8, dtype=torch.long)), target_sizes=[(20, 30)]
        )


def test_post_process_tuple_output_is_named(processor_class):
    """A `return_dict=False` tuple gave "AttributeError: 'tuple' object has no attribute 'logits'" (keep-ratio)."""
    message = (
        r"outputs \(tuple\) have no logits; pass the model's output object"
        if processor_class in FAMILIES[KeepRatioImageProcessor]
        else r"outputs have neither class_queries_logits/masks_queries_logits nor logits"
    )
    with pytest.raises(ValueError, match=message):
        processor_class().post_process_semantic_segmentation((torch.randn(1, 4, 8, 8),))


@pytest.mark.parametrize("processor_class", PROCESSORS[2:], ids=IDS[2:])
def test_mask2former_post_process_class_logits_without_a_class_are_named(processor_class):
    outputs = {"class_queries_logits": torch.randn(1, 5, 1), "masks_queries_logits": torch.randn(1, 5, 8, 8)}
    with pytest.raises(ValueError, match=r"class_queries_logits have shape \(1, 5, 1\) \(torch\.float32\); expected"):
        processor_class().post_process_semantic_segmentation(outputs)
    outputs = {"class_queries_logits": torch.randn(1, 0, 3), "masks_queries_logits": torch.randn(1, 0, 8, 8)}
    with pytest.raises(ValueError, match=r"masks_queries_logits have shape \(1, 0, 8, 8\): num_queries is 0"):
        processor_class().post_process_semantic_segmentation(outputs)


@pytest.mark.parametrize("processor_class", [KeepRatioImageProcessor, SeMaskMask2FormerImageProcessor])
@pytest.mark.parametrize(
    "logits, expected",
    [
        (
            np.zeros((1, 4, 8, 8), np.float32),
            r"got ndarray; convert NumPy scores \(ONNX Runtime's outputs\) with torch",
        ),
        ([torch.zeros(4, 8, 8)], "got list$"),
    ],
    ids=["numpy", "list"],
)
def test_post_processing_scores_that_are_not_a_tensor_are_named(processor_class, logits, expected):
    """ONNX Runtime's NumPy logits ended in "'numpy.ndarray' object has no attribute 'is_floating_point'"."""
    with pytest.raises(TypeError, match=r"^logits must be a torch tensor of shape \(batch_size, num_labels, height, "
                       rf"width\), {expected}"):  # fmt: skip
        processor_class().post_process_semantic_segmentation({"logits": logits}, target_sizes=[(20, 30)])
