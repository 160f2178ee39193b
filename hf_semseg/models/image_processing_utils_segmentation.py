"""What every semantic-segmentation image processor of this folder shares, whatever its backend.

``SegmentationImageProcessingMixin`` sits in front of transformers' ``TorchvisionBackend`` / ``PilBackend`` and holds
the whole preprocessing flow once: per-sample input checks, then the base's ``process_image`` (type conversion, RGB
conversion, channel inference, channels first), then the size rule, the resize steps, rescale/normalise, label
reduction, nearest-resized labels, padding with the base's ``pad`` and the ``BatchFeature``. A backend only provides
the primitives ``_stack`` (images to one float32 batch) and ``_resize_images``; a model family only its size rule
(``_resize_steps``) and padded size (``_get_pad_size``).

The defaults are those of the mmseg test pipeline of SeMask-FPN, VWFormer and Pale: mmcv ``imrescale`` keep-ratio
resize without antialiasing, optional ``ResizeToMultiple`` (``size_divisor``), ImageNet normalisation, padding on the
right and bottom with 0 (pixels) and 255 (labels).

Portable module: imported with single-dot imports by both backends and saved next to them, so it imports only
torch, numpy, PIL and transformers - never torchvision (the PIL backend must work where it is not installed).
"""

import os
import re
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging

from .configuration_utils_segmentation import IGNORE_INDEX


logger = logging.get_logger(__name__)

# Channel counts an input image may have before RGB conversion.
_VALID_INPUT_CHANNELS = (1, 3, 4)

# PIL modes of 16-bit grayscale images (16-bit PNGs open as "I;16"; Pillow before 10 opened them as "I")
_SIXTEEN_BIT_PIL_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# transformers' message (e.g. `VivitImageProcessor`, `Emu3ImageProcessor`) when `do_rescale=True` meets images whose
# values are already in [0, 1]; like transformers we warn and still rescale
ALREADY_RESCALED_WARNING = (
    "The float images given already have pixel values in [0, 1] and are rescaled by the rescale factor again; if they "
    "are already rescaled, pass `do_rescale=False`."
)

# PIL resampling filters we can reproduce without antialiasing (like cv2 INTER_NEAREST / INTER_LINEAR / INTER_CUBIC).
_TORCH_MODE_FOR_PIL_RESAMPLE = {
    int(PILImageResampling.NEAREST): "nearest",
    int(PILImageResampling.BILINEAR): "bilinear",
    int(PILImageResampling.BICUBIC): "bicubic",
}


class SegmentationImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Whether to reduce every label of the segmentation maps by one and map the background label 0 to 255 (the
        ignore index), as done for ADE20K whose label 0 means "other". A label of 255 stays 255.
    size_divisor (`int`, *optional*, defaults to `self.size_divisor`):
        After the resize, resize again so that both sides are rounded up to a multiple of it (mmseg's
        `ResizeToMultiple`).
    """

    do_reduce_labels: bool
    size_divisor: int | None


# --------------------------------------------------------------------------------------------------------------------
# Output size
# --------------------------------------------------------------------------------------------------------------------


def round_side(length: float) -> int:
    """One side of a resized image: rounded half up with ``int(x + 0.5)`` as mmcv (``_scale_size``) and detectron2
    (``ResizeShortestEdge``) do - not truncated with ``int(x)`` as transformers' own ``get_resize_output_image_size``
    does - and at least 1 pixel, so that a very elongated image never gets a side of 0 (mmcv would fail there)."""
    return max(1, int(length + 0.5))


def _scale_size(height: int, width: int, scale_factor: float) -> tuple[int, int]:
    """Scale ``(height, width)`` and round half up (at least 1 pixel), like mmcv's ``_scale_size``."""
    return round_side(height * float(scale_factor)), round_side(width * float(scale_factor))


def get_keep_ratio_output_size(height: int, width: int, longest_edge: int, shortest_edge: int) -> tuple[int, int]:
    """Output ``(height, width)`` of mmcv ``imrescale(img, scale=(longest_edge, shortest_edge))``.

    The image is scaled by ``min(long_bound / max(h, w), short_bound / min(h, w))`` so that its long side is at most
    the long bound and its short side at most the short bound (one of them is reached exactly, up to rounding), keeping
    the aspect ratio. Like mmcv, the larger of the two bounds is the long bound whatever order they are given in.
    Each side is rounded with ``int(x + 0.5)`` (mmcv's rounding, not transformers' truncation) and kept at least 1
    pixel: a 10000 x 10 image with bounds (64, 32) becomes 64 x 1.
    """
    long_bound = max(longest_edge, shortest_edge)
    short_bound = min(longest_edge, shortest_edge)
    scale_factor = min(long_bound / max(height, width), short_bound / min(height, width))
    return _scale_size(height, width, scale_factor)


def validate_size_divisor(divisor: Any) -> None:
    """Raise a `ValueError` unless ``divisor`` (``size_divisor``) is None or a positive integer."""
    if divisor is not None and (isinstance(divisor, bool) or not isinstance(divisor, (int, np.integer)) or divisor < 1):
        raise ValueError(f"`size_divisor` must be a positive integer or None, got {divisor!r}.")


def validate_pad_size(pad_size: SizeDict | dict | None) -> None:
    """Raise a `ValueError` unless ``pad_size`` is None or ``{"height": H, "width": W}`` with positive integers (any
    other dict was silently ignored: nothing was padded to it)."""
    if pad_size is None:
        return
    values = {key: value for key, value in dict(pad_size).items() if value is not None}
    if set(values) != {"height", "width"}:
        raise ValueError(
            f"`pad_size` must be a dict with the keys {{'height', 'width'}} (the size to pad to), got {dict(pad_size)}."
        )
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"`pad_size['{key}']` must be a positive integer, got {value!r}.")


def round_up_to_multiple(size: tuple[int, int], divisor: int | None) -> tuple[int, int]:
    """``(height, width)`` with each side rounded up to a multiple of ``divisor`` (mmseg's ``ResizeToMultiple``,
    mmcv ``imresize_to_multiple``); unchanged when ``divisor`` is None."""
    if divisor is None:
        return tuple(size)
    validate_size_divisor(divisor)
    return tuple(-(-int(side) // divisor) * divisor for side in size)


def validate_size(size: SizeDict | dict | None) -> None:
    """Raise a `ValueError` unless ``size`` is one of the size dicts these processors understand."""
    if size is None:
        raise ValueError("`size` must be set when `do_resize=True`.")
    values = {key: value for key, value in dict(size).items() if value is not None}
    keys = set(values)
    allowed = ({"longest_edge", "shortest_edge"}, {"shortest_edge"}, {"longest_edge"}, {"height", "width"})
    if keys not in allowed:
        raise ValueError(
            "SeMask image processors support `size` dicts with keys {'longest_edge', 'shortest_edge'} (keep-ratio "
            "resize, mmcv `imrescale`), {'shortest_edge'}, {'longest_edge'} or {'height', 'width'} (plain resize); "
            f"got {dict(size)}."
        )
    for key, value in values.items():
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"`size['{key}']` must be a positive integer, got {value!r}.")


#: the settings `validate_rescale_and_normalize` checks
RESCALE_AND_NORMALIZE_SETTINGS = ("do_rescale", "rescale_factor", "do_normalize", "image_std", "image_mean")


def validate_rescale_and_normalize(
    do_rescale=None, rescale_factor=None, do_normalize=None, image_std=None, image_mean=None
):
    """Raise a `ValueError` on a rescale factor or mean/std that would silently give wrong pixel values: a
    ``rescale_factor`` <= 0 or infinite (all-constant, sign-flipped or infinite images), a std that is not positive
    (infinite or sign-flipped values) and a mean or std that is not finite."""
    if do_rescale and rescale_factor is not None and not 0 < rescale_factor < float("inf"):
        raise ValueError(f"`rescale_factor` must be finite and positive (e.g. 1/255), got {rescale_factor!r}.")
    if not do_normalize:
        return
    for name, values in (("image_mean", image_mean), ("image_std", image_std)):
        if values is None:
            continue
        entries = list(values) if isinstance(values, (list, tuple)) else [values]
        if not all(np.isfinite(float(value)) for value in entries) or (
            name == "image_std" and not all(value > 0 for value in entries)
        ):
            expected = "a positive standard deviation per channel" if name == "image_std" else "finite values"
            raise ValueError(f"`{name}` must hold {expected}, got {values!r}.")


def get_output_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
    """Resized ``(height, width)`` of an image of ``(height, width)`` for the given ``size`` dict.

    * ``{"longest_edge": L, "shortest_edge": S}``: keep-ratio resize of mmcv ``imrescale(img, (L, S))``.
    * ``{"shortest_edge": S}``: keep ratio, short side scaled to ``S`` (mmcv ``imrescale`` with a float factor).
    * ``{"longest_edge": L}``: keep ratio, long side scaled to ``L``.
    * ``{"height": H, "width": W}``: plain resize to ``(H, W)``.

    Keep-ratio sizes are rounded with ``int(x + 0.5)`` like mmcv (a documented deviation from transformers, whose
    resize helpers truncate) and are at least 1 pixel (see `round_side`).
    """
    validate_size(size)
    if size.height is not None and size.width is not None:
        return int(size.height), int(size.width)
    if size.longest_edge is not None and size.shortest_edge is not None:
        return get_keep_ratio_output_size(height, width, int(size.longest_edge), int(size.shortest_edge))
    if size.shortest_edge is not None:
        return _scale_size(height, width, int(size.shortest_edge) / min(height, width))
    return _scale_size(height, width, int(size.longest_edge) / max(height, width))


def get_pad_size(sizes: list, pad_size: SizeDict | None, size_divisibility: int | None = None) -> SizeDict:
    """Size every image of the batch is padded to: ``pad_size`` if given, otherwise the largest height and width,
    rounded up to a multiple of ``size_divisibility`` when it is set (detectron2's ``ImageList.from_tensors``)."""
    max_height = max(int(size[0]) for size in sizes)
    max_width = max(int(size[1]) for size in sizes)
    if pad_size is not None and pad_size.height is not None and pad_size.width is not None:
        if pad_size.height < max_height or pad_size.width < max_width:
            raise ValueError(
                f"`pad_size`=({pad_size.height}, {pad_size.width}) is smaller than the largest (resized) image of the "
                f"batch ({max_height}, {max_width})."
            )
        return SizeDict(height=int(pad_size.height), width=int(pad_size.width))
    if size_divisibility:
        max_height += -max_height % size_divisibility
        max_width += -max_width % size_divisibility
    return SizeDict(height=max_height, width=max_width)


def torch_interpolation_mode(resample: Any) -> str:
    """Map a `PILImageResampling` (or its int value) to the `torch.nn.functional.interpolate` mode."""
    # Also accept mode names and enums whose value is a mode name (e.g. torchvision's InterpolationMode).
    name = resample if isinstance(resample, str) else getattr(resample, "value", None)
    if isinstance(name, str) and name in ("nearest", "bilinear", "bicubic"):
        return name
    try:
        return _TORCH_MODE_FOR_PIL_RESAMPLE[int(resample)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"Unsupported `resample`={resample!r}: SeMask image processors resize without antialiasing (like OpenCV) "
            "and support PILImageResampling.NEAREST, BILINEAR (default) and BICUBIC."
        ) from None


def pil_nearest_indices(input_length: int, output_length: int) -> np.ndarray:
    """Source index of every output pixel of PIL's ``NEAREST`` resize along one axis of ``input_length`` pixels: the
    pixel centre ``(i + 0.5) * input_length / output_length``, summed step by step in float64 and truncated as Pillow
    does it, so that the result is PIL's exactly (torch's ``"nearest-exact"``, in float32, picks another pixel for
    about one size pair in six)."""
    step = input_length / output_length
    centres = np.cumsum(np.concatenate([[step * 0.5], np.full(output_length - 1, step)]))
    return np.minimum(centres.astype(np.int64), input_length - 1)


def resize_label_map(label_map: Any, output_size: tuple[int, int]) -> Any:
    """Nearest-neighbour resize of a ``(1, H, W)`` int64 map, tensor or array (OpenCV ``INTER_NEAREST`` is torch's
    ``"nearest"``, not transformers' default ``NEAREST_EXACT``)."""
    if tuple(label_map.shape[-2:]) == tuple(output_size):
        return label_map
    tensor = torch.as_tensor(label_map)[None].to(torch.float64)
    resized = F.interpolate(tensor, size=tuple(output_size), mode="nearest")[0].to(torch.int64)
    return resized.numpy() if isinstance(label_map, np.ndarray) else resized


def reduce_labels(labels: Any) -> Any:
    """ADE20K-style label reduction on an int64 array/tensor: ``0 -> 255``, ``255 -> 255``, other ``l -> l - 1``."""
    reduced = labels - 1
    reduced[(labels == 0) | (labels == IGNORE_INDEX)] = IGNORE_INDEX
    return reduced


def is_floating_point(image: Any) -> bool:
    return image.is_floating_point() if isinstance(image, torch.Tensor) else np.issubdtype(image.dtype, np.floating)


def group_same_shapes(images: list, disable_grouping: bool | None) -> list[list[int]]:
    """Indices of the images that are resized and normalised as one batch (same shape, dtype and device). As in
    transformers' ``group_images_by_shape``, grouping is off for CPU images unless ``disable_grouping=False``."""
    groups: dict[Any, list[int]] = {}
    for index, image in enumerate(images):
        device = str(getattr(image, "device", "cpu"))
        alone = device == "cpu" if disable_grouping is None else disable_grouping
        groups.setdefault(index if alone else (tuple(image.shape), str(image.dtype), device), []).append(index)
    return list(groups.values())


# --------------------------------------------------------------------------------------------------------------------
# Input checks: run on every sample before the base's `process_image`, so that errors name the sample
# --------------------------------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, PIL.Image.Image):
        return f"PIL image (mode {value.mode!r}, size {value.size})"
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    return repr(type(value))


def _flatten(
    inputs: Any, name: str, item: str, single_ndims: tuple[int, ...], shapes: str, types: tuple, kinds: str
) -> list:
    """Flatten one input, a batch array/tensor (``single_ndims[-1] + 1`` dimensions) or a (once nested) list."""
    if isinstance(inputs, types) and not isinstance(inputs, (np.ndarray, torch.Tensor)):
        return [inputs]
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        if inputs.ndim in single_ndims:
            return [inputs]
        if inputs.ndim == single_ndims[-1] + 1:
            if len(inputs) == 0:
                raise ValueError(f"`{name}` is an empty batch (shape {tuple(inputs.shape)}); pass at least one {item}.")
            return list(inputs)
        raise ValueError(
            f"`{name}` has {inputs.ndim} dimensions (shape {tuple(inputs.shape)}); expected a single {item} with "
            f"{shapes} dimensions, or a batch with {single_ndims[-1] + 1} dimensions."
        )
    if not isinstance(inputs, (list, tuple)):
        raise ValueError(f"`{name}` is a {_describe(inputs)}; expected {kinds} or a list of them.")
    if len(inputs) == 0:
        raise ValueError(f"`{name}` is an empty list; pass at least one {item}.")
    flat = [value for entry in inputs for value in (entry if isinstance(entry, (list, tuple)) else [entry])]
    if not flat:
        raise ValueError(f"`{name}` is a list of empty lists; pass at least one {item}.")
    for index, value in enumerate(flat):
        if not isinstance(value, types):
            raise ValueError(f"{item.capitalize()} {index} is a {_describe(value)}; expected {kinds}.")
    return flat


def flatten_images(images: Any) -> list:
    """Flatten ``images`` into a list of single images (PIL images, paths/URLs, or 2D/3D arrays/tensors).

    Accepted: one PIL image, one path (``str`` or ``os.PathLike``), URL or base64 string, one ``(H, W)`` /
    ``(H, W, C)`` / ``(C, H, W)`` array or tensor, a 4D batch of those, or a list/tuple (optionally nested once) of
    single images. (transformers' ``make_flat_list_of_images`` takes one number of dimensions for the whole batch, so
    no ``(H, W)`` grayscale array next to RGB ones, and does not name the sample.)
    """
    types = (PIL.Image.Image, str, os.PathLike, np.ndarray, torch.Tensor)
    kinds = "a PIL image, a numpy array, a torch tensor, or the path or URL of an image file"
    flat = _flatten(images, "images", "image", (2, 3), "2 (H, W) or 3 ((H, W, C) or (C, H, W))", types, kinds)
    for index, image in enumerate(flat):
        if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim not in (2, 3):
            raise ValueError(
                f"Image {index} has {image.ndim} dimensions (shape {tuple(image.shape)}); expected 2 (H, W) or 3 "
                "((H, W, C) or (C, H, W)) dimensions."
            )
    return flat


def flatten_segmentation_maps(segmentation_maps: Any) -> list:
    """Flatten ``segmentation_maps`` into a list of single maps: one PIL image, one ``(H, W)`` array/tensor, a
    ``(B, H, W)`` batch, or a list/tuple (optionally nested once) of PIL images, ``(H, W)``, ``(1, H, W)`` or
    ``(H, W, 1)`` arrays."""
    types = (PIL.Image.Image, np.ndarray, torch.Tensor)
    kinds = "a PIL image, a numpy array or a torch tensor"
    return _flatten(segmentation_maps, "segmentation_maps", "segmentation map", (2,), "2 (H, W)", types, kinds)


def _value_range(image: Any) -> tuple:
    """``(min, max)`` of an array or tensor as Python numbers (integer tensors widened first: torch has no min/max for
    its unsigned 16/32/64-bit types)."""
    if isinstance(image, torch.Tensor):
        values = image.detach()
        if not values.is_floating_point():
            values = values.to(torch.int64)
        return values.min().item(), values.max().item()
    return image.min().item(), image.max().item()


def sixteen_to_eight_bits(image: Any) -> Any:
    """A 16-bit (uint16) array or tensor as uint8: ``round(v * 255 / 65535)`` (round half up), so that a 16-bit image
    made from an 8-bit one (``v * 257``) gives back exactly the 8-bit values."""
    if isinstance(image, torch.Tensor):
        wide = image.detach().to(torch.int64)
        return torch.div(wide * 510 + 65535, 131070, rounding_mode="floor").to(torch.uint8)
    return ((image.astype(np.int64) * 510 + 65535) // 131070).astype(np.uint8)


def resolve_channel_format(shape: tuple, index: int, input_data_format: Any = None) -> ChannelDimension:
    """Channel axis of a 3D image of ``shape``: where ``input_data_format`` says, otherwise transformers' rule
    (``infer_channel_dimension_format`` with 1, 3 or 4 channels, as its backends call it): the dimension of 1, 3 or 4
    first or last; channels first when both are, with a warning naming the image and how to state the layout."""
    if input_data_format is not None:
        try:
            channel_format = ChannelDimension(input_data_format)
        except ValueError:
            raise ValueError(
                f"`input_data_format` must be 'channels_first' or 'channels_last', got {input_data_format!r}."
            ) from None
        if channel_format not in (ChannelDimension.FIRST, ChannelDimension.LAST):
            raise ValueError(
                f"`input_data_format` must be 'channels_first' or 'channels_last', got {input_data_format!r}."
            )
        axis = 0 if channel_format == ChannelDimension.FIRST else 2
        if shape[axis] not in _VALID_INPUT_CHANNELS:
            raise ValueError(
                f"Image {index} has shape {shape} and input_data_format={channel_format.value!r}, i.e. "
                f"{shape[axis]} channels; expected 1 (grayscale), 3 (RGB) or 4 (RGBA) channels."
            )
        return channel_format
    first, last = shape[0] in _VALID_INPUT_CHANNELS, shape[2] in _VALID_INPUT_CHANNELS
    if first and last:
        logger.warning(
            f"Image {index} has shape {shape}: its channel dimension is ambiguous (the first and the last dimension "
            f"could both be channels). Assuming channels first as transformers does, i.e. {shape[0]} channel(s) of "
            f'{shape[1]} x {shape[2]} pixels; pass `input_data_format="channels_last"` (or "channels_first") to '
            "state the layout."
        )
        return ChannelDimension.FIRST
    if first or last:
        return ChannelDimension.FIRST if first else ChannelDimension.LAST
    hint = (
        " 2-channel (grayscale + alpha) arrays are not supported: pass a PIL image in mode 'LA' or drop the alpha "
        "channel."
        if 2 in (shape[0], shape[2])
        else ""
    )
    raise ValueError(
        f"Image {index} has shape {shape}: could not find a channel dimension of size 1 (grayscale), 3 (RGB) or 4 "
        f"(RGBA) first or last.{hint}"
    )


def is_sixteen_bit_pil_image(image: PIL.Image.Image) -> bool:
    """A 16-bit grayscale PIL image: modes ``I;16*``, or mode ``I`` read from a PNG (Pillow before 10)."""
    return image.mode in _SIXTEEN_BIT_PIL_MODES or (image.mode == "I" and getattr(image, "format", None) == "PNG")


def _prepare_pil_image(image: PIL.Image.Image, index: int) -> Any:
    """PIL images whose values PIL's RGB conversion would clip to 0-255: 16-bit grayscale (modes ``I;16*``, and mode
    ``I`` read from a PNG) to 8 bits, 32-bit integers (mode ``I``) when they hold 8-bit values, 32-bit floats (mode
    ``F``) as float arrays (then checked as any float array)."""
    if image.width == 0 or image.height == 0:
        raise ValueError(f"Image {index} is a PIL image of size {image.size} (width, height); it has no pixels.")
    if is_sixteen_bit_pil_image(image):
        return PIL.Image.fromarray(sixteen_to_eight_bits(np.asarray(image).astype(np.uint16)))
    if image.mode == "I":
        array = np.asarray(image)
        low, high = _value_range(array)
        if low < 0 or high > 255:
            raise ValueError(
                f"Image {index} is a PIL image in mode 'I' (32-bit integers) with values in [{low}, {high}]; expected "
                "8-bit values (0-255), or a 16-bit image in mode 'I;16' (0-65535). Convert it to mode 'L' or 'I;16', "
                "or pass a float array with `rescale_factor` set for its range."
            )
        return PIL.Image.fromarray(array.astype(np.uint8))
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    return image


def prepare_image(
    image: Any, index: int, input_data_format: Any = None, do_convert_rgb: bool = True, rescale_factor: Any = None
) -> tuple[Any, ChannelDimension | None, bool]:
    """Check one image and bring its values to what the pipeline expects; run on every sample before the base's
    ``process_image`` so that every error names the sample.

    Returns ``(image, channel_format, already_rescaled)``:

    * ``image``: PIL images as they are (16-bit and 32-bit modes: see `_prepare_pil_image`); uint8 and float arrays as
      they are (tensors detached, numpy views with negative strides copied); uint16 arrays/tensors reduced to 8 bits
      (``round(v * 255 / 65535)``) and other integer dtypes cast to uint8 when their values are in 0-255. Other
      integer values, bool, complex, empty or non-finite images raise a `ValueError`.
    * ``channel_format``: the channel axis of a 3D array (`resolve_channel_format`), passed on to ``process_image``
      so that the base does not guess again; None for PIL images and 2D arrays.
    * ``already_rescaled``: a float image with all values in [0, 1] (transformers' ``is_scaled_image``, for float
      images only).

    ``rescale_factor`` is the one the image will be rescaled with (None: no rescaling); it must be the 8-bit 1/255
    for a 16-bit image, since the image is reduced to 8 bits first.
    """
    if isinstance(image, PIL.Image.Image):
        image = _prepare_pil_image(image, index)
        if isinstance(image, PIL.Image.Image):
            return image, None, False
    shape = tuple(image.shape)
    if 0 in shape:
        raise ValueError(f"Image {index} has shape {shape}; it has no pixels.")
    dtype = str(image.dtype).replace("torch.", "")
    if dtype == "bool" or "complex" in dtype:
        raise ValueError(
            f"Image {index} has dtype {dtype}; expected uint8 (0-255), uint16 (0-65535) or floating point values."
        )
    channel_format = resolve_channel_format(shape, index, input_data_format) if len(shape) == 3 else None
    if isinstance(image, torch.Tensor):
        image = image.detach()
    elif any(stride < 0 for stride in image.strides):
        # a flipped view, e.g. OpenCV's BGR -> RGB `image[..., ::-1]`: torch.from_numpy refuses negative strides
        image = np.ascontiguousarray(image)
    low, high = (0, 255) if dtype == "uint8" else _value_range(image)  # uint8: nothing to check, skip the pass

    already_rescaled = False
    if is_floating_point(image):
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(
                f"Image {index} has non-finite values (NaN or infinity; range [{low}, {high}]); expected finite "
                "pixel values."
            )
        already_rescaled = 0 <= low and high <= 1
    elif dtype == "uint16":
        if rescale_factor is not None and not np.isclose(float(rescale_factor), 1 / 255, rtol=1e-6, atol=0):
            raise ValueError(
                f"Image {index} is a 16-bit image (uint16); it is reduced to 8 bits (v * 255 / 65535) and then "
                f"rescaled with `rescale_factor`, which must then be 1/255, got {rescale_factor!r}. Leave "
                "`rescale_factor` at 1/255, or convert the image to float yourself and set `rescale_factor` for its "
                "range."
            )
        image = sixteen_to_eight_bits(image)
    elif dtype != "uint8":
        if low < 0 or high > 255:
            raise ValueError(
                f"Image {index} has dtype {dtype} with values in [{low}, {high}]; integer images must be uint8 "
                "(0-255), uint16 (0-65535, 16-bit) or hold 8-bit values (0-255). Convert it to uint8, to uint16 if "
                "it holds 16-bit values, or to float with `rescale_factor` set for its range."
            )
        image = image.to(torch.uint8) if isinstance(image, torch.Tensor) else image.astype(np.uint8)

    if do_convert_rgb and channel_format is not None:
        channels = shape[0] if channel_format == ChannelDimension.FIRST else shape[2]
        if channels == 4 and is_floating_point(image) and (low < 0 or high > 1):
            raise ValueError(
                f"Image {index} is a float RGBA image with values in [{low}, {high}]; float RGBA images must be in "
                "[0, 1] to composite the alpha channel."
            )
    return image, channel_format, already_rescaled


_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")


def _is_url_or_base64(source: str) -> bool:
    """Whether a string that is not an existing file can still be an image source for transformers' loaders."""
    if source.startswith(("http://", "https://", "data:image/")):
        return True
    return len(source) >= 16 and _BASE64.fullmatch(source) is not None


def has_transparency(image: PIL.Image.Image) -> bool:
    """Whether a PIL image has an alpha channel or a transparent colour (as transformers' ``convert_to_rgb`` tells)."""
    return "A" in image.getbands() or image.info.get("transparency") is not None


def load_image_file(path: str) -> PIL.Image.Image:
    """An image file as a PIL image, as transformers' ``load_image`` reads it (EXIF orientation applied, RGB), except
    that 16-bit grayscale images stay 16-bit (``load_image`` would clip them to 255 when converting to RGB) and that
    transparency is composited on white, as ``do_convert_rgb`` does for the same image given as a PIL image or an
    array (``load_image``'s ``convert("RGB")`` dropped the alpha channel)."""
    image = PIL.Image.open(path)
    image.load()  # decode now, so that a truncated or corrupt file fails here
    if image.mode == "I" and image.format == "PNG":  # a 16-bit PNG as Pillow < 10 opens it
        image = PIL.Image.fromarray(np.asarray(image).astype(np.uint16))
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_PIL_MODES:
        return image
    if has_transparency(image):
        white = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def check_segmentation_map(seg_map: Any, index: int) -> Any:
    """One map as an ``(H, W)`` int64 array/tensor (a singleton channel first or last is dropped)."""
    if isinstance(seg_map, PIL.Image.Image):
        array = np.array(seg_map)
        if array.ndim != 2:
            raise ValueError(
                f"Segmentation map {index} is a PIL image in mode {seg_map.mode!r} with shape {array.shape}; expected "
                "a single-channel map of class indices (mode 'L', 'P', 'I' or 'I;16')."
            )
        seg_map = array
    if seg_map.ndim == 3 and seg_map.shape[0] == 1:
        seg_map = seg_map[0]
    elif seg_map.ndim == 3 and seg_map.shape[-1] == 1:
        seg_map = seg_map[..., 0]
    if seg_map.ndim != 2:
        raise ValueError(
            f"Segmentation map {index} has shape {tuple(seg_map.shape)}; expected a single-channel (H, W) map of "
            "class indices."
        )
    if is_floating_point(seg_map):
        # the cast to int64 truncated 1.7 to 1 and turned NaN into -2**63: only whole numbers are class indices
        values = seg_map.detach().cpu().double().numpy() if isinstance(seg_map, torch.Tensor) else seg_map
        bad = ~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) >= 2**62)
        if bad.any():
            row, column = (int(position) for position in np.argwhere(bad)[0])
            value = float(values[row, column])
            expected = (
                "expected class indices below 2**62 in magnitude"
                if value.is_integer()  # whole and finite: refused for its size only
                else "expected integer class indices (a float map may only hold whole numbers such as 3.0)"
            )
            raise ValueError(
                f"Segmentation map {index} has the value {value:.8g} at (row {row}, column {column}) "
                f"({seg_map.dtype}); {expected}."
            )
    # int64 from the start, so that label reduction cannot wrap around
    if isinstance(seg_map, torch.Tensor):
        return seg_map.detach().to(torch.int64)
    return np.array(seg_map, dtype=np.int64)


def check_segmentation_maps_match(image_sizes: list, map_sizes: list, segmentation_maps: Any = None) -> None:
    """Every segmentation map must have the height and width of its image (before resizing). ``segmentation_maps``,
    the argument as given, only words the error: a single ``(H, W, 1)`` array is read as a batch of ``H`` maps."""
    if len(image_sizes) != len(map_sizes):
        hint = ""
        if isinstance(segmentation_maps, (np.ndarray, torch.Tensor)) and segmentation_maps.ndim == 3:
            shape = tuple(segmentation_maps.shape)
            hint = (
                f" `segmentation_maps` is one {type(segmentation_maps).__name__} of shape {shape}, read as a batch "
                f"of {shape[0]} maps of size {shape[1:]}: pass a single map as an (H, W) array, or as a list of "
                "(H, W), (1, H, W) or (H, W, 1) arrays, one per image, and a batch as a (batch_size, H, W) array."
            )
        raise ValueError(
            f"Got {len(image_sizes)} images but {len(map_sizes)} segmentation maps; pass one map per image.{hint}"
        )
    for index, (image_size, map_size) in enumerate(zip(image_sizes, map_sizes)):
        image_size, map_size = tuple(int(v) for v in image_size), tuple(int(v) for v in map_size)
        if image_size != map_size:
            hint = " (height and width swapped?)" if map_size == image_size[::-1] else ""
            raise ValueError(
                f"Segmentation map {index} has size {map_size} (height, width) but image {index} has size "
                f"{image_size}{hint}; each segmentation map must have the same height and width as its image."
            )


def check_channels_for_normalize(num_channels: list, image_mean: Any, image_std: Any) -> None:
    """Fail clearly when per-channel mean/std do not fit an image (e.g. grayscale with ``do_convert_rgb=False``)."""
    for values, name in ((image_mean, "image_mean"), (image_std, "image_std")):
        if isinstance(values, (list, tuple)) and len(values) > 1:
            for index, channels in enumerate(num_channels):
                if channels != len(values):
                    raise ValueError(
                        f"Image {index} has {channels} channel(s) but `{name}` has {len(values)} values; use "
                        "`do_convert_rgb=True` to convert grayscale/RGBA inputs to RGB."
                    )


def check_stackable(sizes: list, do_pad: bool, return_tensors: Any) -> None:
    """Without padding, images of different (resized) sizes cannot be returned as one tensor."""
    if return_tensors is not None and not do_pad and len(set(map(tuple, sizes))) > 1:
        raise ValueError(
            f"The processed images have different sizes {sorted(set(map(tuple, sizes)))} and `do_pad=False`, so they "
            f"cannot be stacked into one tensor for return_tensors={return_tensors!r}. Use `do_pad=True`, a fixed "
            "`size={'height': ..., 'width': ...}`, or `return_tensors=None`."
        )


# --------------------------------------------------------------------------------------------------------------------
# The processor skeleton
# --------------------------------------------------------------------------------------------------------------------


def check_scores_tensor(scores: Any, name: str, shape: str) -> None:
    """A ``TypeError`` naming ``scores`` unless they are a torch tensor (NumPy arrays, e.g. ONNX Runtime's outputs,
    and lists failed with an ``AttributeError`` deep inside the post-processing)."""
    if not isinstance(scores, torch.Tensor):
        hint = (
            "; convert NumPy scores (ONNX Runtime's outputs) with torch.from_numpy" if hasattr(scores, "shape") else ""
        )
        raise TypeError(f"{name} must be a torch tensor of shape {shape}, got {type(scores).__name__}{hint}")


def check_post_process_scores(scores: Any, name: str, channels: str) -> None:
    """The ``(batch_size, channels, height, width)`` scores a post-processing call reads (``logits`` or
    ``masks_queries_logits``): floating-point, at least one channel; else an error naming them, before torch's
    interpolate ("not implemented for 'Long'") or argmax (a reduction over 0 classes) sees them."""
    check_scores_tensor(scores, name, f"(batch_size, {channels}, height, width)")
    if scores.ndim != 4:
        raise ValueError(f"{name} have shape {tuple(scores.shape)}; expected (batch_size, {channels}, height, width)")
    if not scores.is_floating_point():
        raise TypeError(f"{name} must be floating-point scores, got {scores.dtype}")
    if scores.shape[1] == 0:
        raise ValueError(f"{name} have shape {tuple(scores.shape)}: {channels} is 0; expected at least one")


def check_post_process_sizes(sizes: Any, batch_size: int, name: str) -> list[tuple[int, int]] | None:
    """``sizes``, the ``target_sizes`` or ``image_sizes`` of a post-processing call (a list of ``(height, width)``
    pairs or a ``(batch_size, 2)`` tensor), as one pair of ints per image, each side at least 1 pixel; a malformed
    entry is a ``ValueError`` naming it (``name[i]``) before it reaches an interpolation. None stays None."""
    if sizes is None:
        return None
    if isinstance(sizes, torch.Tensor):
        if sizes.ndim != 2 or sizes.shape[1] != 2:
            raise ValueError(
                f"{name} is a tensor of shape {tuple(sizes.shape)}; expected ({batch_size}, 2): one (height, width) "
                "per image"
            )
        sizes = sizes.tolist()
    if not isinstance(sizes, (list, tuple, np.ndarray)):
        raise TypeError(
            f"{name} must be a list of {batch_size} (height, width) pairs or a ({batch_size}, 2) tensor, one per "
            f"image; got {type(sizes).__name__} {sizes!r}"
        )
    if len(sizes) != batch_size:
        raise ValueError(f"Got {len(sizes)} {name} for a batch of {batch_size}; pass one (height, width) per image.")
    checked = []
    for index, size in enumerate(sizes):
        if isinstance(size, (torch.Tensor, np.ndarray)):
            size = size.tolist()
        pair = tuple(size) if isinstance(size, (tuple, list)) else None
        if (
            pair is None
            or len(pair) != 2
            or not all(isinstance(side, (int, float, np.number)) and not isinstance(side, bool) for side in pair)
            or not all(float(side).is_integer() and side >= 1 for side in pair)
        ):
            raise ValueError(f"{name}[{index}] is {size!r}; expected a (height, width) pair of whole numbers >= 1")
        checked.append((int(pair[0]), int(pair[1])))
    return checked


def logits_cover(logits_size, input_size) -> bool:
    """Whether logits of ``logits_size`` ``(h, w)`` can be a model's output over an input of ``input_size``
    ``(H, W)``: one whole output stride ``s`` for both sides, each side ``H / s`` rounded down or up (a model's
    strided layers round one way or the other), so a map of another aspect ratio (another input's), or of an input a
    few pixels larger (one image of a padded batch post-processed alone), is told apart from any model's output.
    A side ``h`` allows the whole strides with ``h - 1 < H / s < h + 1``: from ``H // (h + 1) + 1`` to
    ``(H - 1) // (h - 1)`` (no bound above for ``h <= 1``)."""
    lowest, highest = 1, max(input_size)
    for side, input_side in zip(logits_size, input_size):
        lowest = max(lowest, input_side // (side + 1) + 1)
        if side > 1:
            highest = min(highest, (input_side - 1) // (side - 1))
    return lowest <= highest


def check_logits_match_input(logits: torch.Tensor, input_sizes: list, settings: str) -> None:
    """Refuse logits that cannot come from the model inputs the post-processing ``settings`` (described) give
    (``input_sizes``, one ``(height, width)`` per image: the padded batch's, or the resized image's): the images
    were processed with other settings (a `size` or `pad_size` given to the call), and cropping at the settings'
    places would be wrong."""
    logits_size = tuple(logits.shape[-2:])
    for index, input_size in enumerate(input_sizes):
        if not logits_cover(logits_size, input_size):
            raise ValueError(
                f"logits of {logits_size[0]}x{logits_size[1]} do not match the {input_size[0]}x{input_size[1]} "
                f"pixel values of image {index} that preprocessing with {settings} makes (at no one output "
                "stride): pass post_process_semantic_segmentation the settings the images were processed with "
                "(e.g. `size=...`, `pad_size=...`)"
            )


class SegmentationImageProcessingMixin:
    """Defaults, the preprocessing flow and post-processing shared by every processor of this folder (placed before
    ``TorchvisionBackend`` / ``PilBackend`` in the bases).

    Backends implement ``_stack(images) -> float32 (N, C, H, W) batch`` and ``_resize_images(batch, output_size,
    resample, is_integer)``; ``process_image``, ``convert_to_rgb``, ``rescale_and_normalize`` and ``pad`` are the
    backends' own (adapted where noted). Model families override ``_resize_steps`` (size rule) and ``_get_pad_size``.
    """

    valid_kwargs = SegmentationImageProcessorKwargs
    model_input_names = ["pixel_values"]

    do_convert_rgb = True
    do_resize = True
    size = {"longest_edge": 2048, "shortest_edge": 512}
    default_to_square = False
    resample = PILImageResampling.BILINEAR
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    do_reduce_labels = False
    size_divisor = None
    do_pad = True
    pad_size = None
    do_center_crop = None
    crop_size = None

    #: ``{backend: "module.Class"}`` written as this processor's ``auto_map`` entry when it is saved for remote code:
    #: the torchvision classes name both backends (their module imports the PIL twin, so ``save_pretrained`` copies
    #: both modules), the PIL classes only themselves (their module never imports torchvision)
    saved_backends: dict[str, str] = {}

    #: the settings `__init__` checks (with `_validate_preprocess_kwargs`), so that a wrong one fails at construction
    validated_at_construction = (
        "do_resize",
        "size",
        "resample",
        "size_divisor",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
        "do_center_crop",
        "pad_size",
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # fail at construction, not at the first call, on a setting the pipeline cannot reproduce
        names = self.validated_at_construction
        self._validate_preprocess_kwargs(**{name: getattr(self, name, None) for name in names})

    def _validate_preprocess_kwargs(
        self, do_resize=None, size=None, resample=None, do_center_crop=None, size_divisor=None, pad_size=None, **kwargs
    ):
        if do_resize:
            validate_size(size)
            torch_interpolation_mode(resample)
        validate_size_divisor(size_divisor)
        validate_pad_size(pad_size)
        if do_center_crop:
            # transformers' processors center-crop after the resize; the original pipelines never crop, and these
            # processors do not implement it: refuse it rather than silently ignoring it
            raise ValueError(
                f"do_center_crop={do_center_crop!r}: these processors do not crop (the original test pipelines do "
                "not); use `size={'height': ..., 'width': ...}` for a fixed size."
            )
        validate_rescale_and_normalize(**{key: kwargs.get(key) for key in RESCALE_AND_NORMALIZE_SETTINGS})
        super()._validate_preprocess_kwargs(
            do_resize=do_resize, size=size, resample=resample, size_divisor=size_divisor, pad_size=pad_size, **kwargs
        )

    def to_dict(self) -> dict[str, Any]:
        """The processor's settings. Saved for remote code, ``auto_map`` names every saved backend, so that
        ``AutoImageProcessor.from_pretrained(dir, trust_remote_code=True)`` picks the torchvision class where
        torchvision is installed and the PIL class where it is not.

        Only the entry ``save_pretrained`` has just written for this class (transformers' ``custom_object_save`` sets
        ``auto_map[auto_class] = "module.Class"``) is widened to ``saved_backends``; an ``auto_map`` read from a saved
        folder is kept as it is, so that a processor loaded with either backend gives the ``to_dict()`` of the one
        that was saved."""
        output = super().to_dict()
        auto_class, auto_map = getattr(self, "_auto_class", None), output.get("auto_map")
        if auto_class is not None and isinstance(auto_map, dict) and self.saved_backends:
            written_by_save = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
            if auto_map.get(auto_class) == written_by_save:
                output["auto_map"] = {**auto_map, auto_class: dict(self.saved_backends)}
        return output

    def preprocess(self, images, segmentation_maps=None, **kwargs) -> BatchFeature:
        r"""
        Preprocess an image or a batch of images (and optionally their segmentation maps).

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, a path (`str` / `os.PathLike`) or URL, or a list of them):
                Grayscale, RGB or RGBA images. Values: uint8 (0-255); 16-bit images (uint16 arrays/tensors, PIL
                mode "I;16", 16-bit PNG files) are reduced to 8 bits, `round(v * 255 / 65535)`, and then processed
                exactly as 8-bit images (as the original pipelines read them); other integer dtypes only with values
                in 0-255; floats on the scale `rescale_factor` expects (0-255 by default: float images already in
                [0, 1] need `do_rescale=False`, and a warning says so, as in transformers). Arrays may be channels
                first or last: when both the first and the last dimension could be channels (e.g. `(3, 40, 3)`),
                `input_data_format` decides, otherwise channels first is assumed with a warning, as transformers
                does.
            segmentation_maps (same types but paths, *optional*):
                Single-channel maps of class indices, one per image, of the same height and width as the image.
            **kwargs:
                Any processor attribute (`do_resize`, `size`, `do_reduce_labels`, `do_pad`, `return_tensors`, ...)
                to override for this call, and `input_data_format` (`"channels_first"` / `"channels_last"`) for
                array inputs.

        Returns:
            `BatchFeature` with `pixel_values` (and `labels` when `segmentation_maps` is given); stacked into
            `(B, 3, H, W)` float32 / `(B, H, W)` int64 tensors with `return_tensors="pt"`, lists otherwise.
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

    def get_output_size(self, height: int, width: int, size: dict | SizeDict | None = None) -> tuple[int, int]:
        """Resized ``(height, width)`` that `preprocess` produces (before padding) for an image of this size."""
        size = self.size if size is None else size
        size = size if isinstance(size, SizeDict) else SizeDict(**dict(size))
        return self._resize_steps([(int(height), int(width))], size, size_divisor=self.size_divisor)[-1][0]

    def _resize_steps(self, input_sizes: list, size: SizeDict, size_divisor: int | None = None, **kwargs) -> list:
        """Output size of every image after each resize step: the keep-ratio resize, then (with ``size_divisor``) the
        resize up to a multiple, as mmseg's test pipeline does them."""
        steps = [[get_output_size(height, width, size) for height, width in input_sizes]]
        if size_divisor is not None:
            steps.append([round_up_to_multiple(output_size, size_divisor) for output_size in steps[0]])
        return steps

    def _get_pad_size(self, output_sizes: list, pad_size: SizeDict | None, **kwargs) -> SizeDict:
        return get_pad_size(output_sizes, pad_size)

    def _read_image_file(self, path: str) -> Any:
        """One image file, decoded by this backend (PIL here, see `load_image_file`; torchvision in the torchvision
        backend)."""
        return load_image_file(path)

    def _load_image(self, source: Any, index: int) -> Any:
        """Image ``index`` given as a path (``str`` / ``os.PathLike``), URL or base64 string. A missing file raises
        `FileNotFoundError` and a file that cannot be decoded `ValueError`, both naming the file, before any decoder
        of torchvision or PIL sees it."""
        text = os.fspath(source)
        if os.path.isfile(text):
            try:
                return self._read_image_file(text)
            except Exception as error:
                raise ValueError(
                    f"Image {index}: could not read the image file {text!r} (corrupt, truncated or not an image?): "
                    f"{type(error).__name__}: {error}"
                ) from error
        if os.path.isdir(text):
            raise ValueError(f"Image {index} is the path {text!r}, which is a directory; expected an image file.")
        if isinstance(source, os.PathLike) or not _is_url_or_base64(text):
            raise FileNotFoundError(
                f"Image {index}: no such image file: {text!r} (absolute path {os.path.abspath(text)!r})."
            )
        shown = text if len(text) <= 80 else text[:77] + "..."
        try:
            return self.fetch_images(text)
        except Exception as error:
            raise ValueError(
                f"Image {index}: could not load the image {shown!r}: it is not an existing file, and reading it as a "
                f"URL or base64-encoded image failed with {type(error).__name__}: {error}"
            ) from error

    def _preprocess_image_like_inputs(
        self, images, segmentation_maps=None, do_convert_rgb=True, input_data_format=None, device=None, **kwargs
    ) -> BatchFeature:
        # Our flattening and per-sample checks, then the base's `process_image` on each sample (see `flatten_images`).
        rescale_factor = kwargs.get("rescale_factor") if kwargs.get("do_rescale") else None
        prepared, already_rescaled = [], []
        for index, image in enumerate(flatten_images(images)):
            channel_format = input_data_format
            if isinstance(image, (str, os.PathLike)):
                image = self._load_image(image, index)
                # a decoded file is channels first (torchvision) or a PIL image: never ambiguous
                channel_format = ChannelDimension.FIRST if isinstance(image, (np.ndarray, torch.Tensor)) else None
            image, channel_format, rescaled = prepare_image(
                image, index, channel_format, do_convert_rgb, rescale_factor
            )
            prepared.append((image, channel_format))
            if rescaled:
                already_rescaled.append(index)
        if already_rescaled and kwargs.get("do_rescale"):
            logger.warning_once(ALREADY_RESCALED_WARNING)
        images = [
            self.process_image(image, do_convert_rgb, channel_format, device=device)
            for image, channel_format in prepared
        ]
        if kwargs.get("do_normalize"):
            check_channels_for_normalize(
                [image.shape[0] for image in images], kwargs["image_mean"], kwargs["image_std"]
            )

        labels = None
        if segmentation_maps is not None:
            labels = [
                self.process_image(
                    check_segmentation_map(seg_map, index), input_data_format=ChannelDimension.FIRST, device=device
                )
                for index, seg_map in enumerate(flatten_segmentation_maps(segmentation_maps))
            ]
            check_segmentation_maps_match(
                [image.shape[-2:] for image in images], [label.shape[-2:] for label in labels], segmentation_maps
            )
        return self._preprocess(images, segmentation_maps=labels, **kwargs)

    def _preprocess(
        self,
        images: list,
        segmentation_maps: list | None = None,
        do_resize: bool = True,
        size: SizeDict | None = None,
        resample=None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean=None,
        image_std=None,
        do_reduce_labels: bool = False,
        do_pad: bool = True,
        pad_size: SizeDict | None = None,
        disable_grouping: bool | None = None,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        """Resize, rescale and normalise channels-first images; reduce, resize and pad their ``(1, H, W)`` int64
        label maps; pad both to one size. Integer images are resized as uint8 images are (rounded to 0-255)."""
        input_sizes = [tuple(image.shape[-2:]) for image in images]
        steps = self._resize_steps(input_sizes, size, **kwargs) if do_resize else []
        output_sizes = steps[-1] if steps else input_sizes
        check_stackable(output_sizes, do_pad, return_tensors)

        pixel_values = [None] * len(images)
        for indices in group_same_shapes(images, disable_grouping):
            is_integer = not is_floating_point(images[indices[0]])
            batch = self._stack([images[index] for index in indices])
            for step in steps:
                if tuple(batch.shape[-2:]) != step[indices[0]]:
                    batch = self._resize_images(batch, step[indices[0]], resample, is_integer)
            batch = self.rescale_and_normalize(batch, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            for position, index in enumerate(indices):
                pixel_values[index] = batch[position]

        labels = segmentation_maps
        if labels is not None:
            labels = [reduce_labels(label) if do_reduce_labels else label for label in labels]
            for step in steps:
                labels = [resize_label_map(label, output_size) for label, output_size in zip(labels, step)]

        if do_pad and pixel_values:
            pad_size = self._get_pad_size(output_sizes, pad_size, **kwargs)
            pixel_values = self.pad(pixel_values, pad_size=pad_size, fill_value=0.0, disable_grouping=True)
            if labels is not None:
                labels = self.pad(labels, pad_size=pad_size, fill_value=IGNORE_INDEX, disable_grouping=True)

        data = {"pixel_values": pixel_values}
        if labels is not None:
            data["labels"] = [label[0] for label in labels]
        return BatchFeature(data=data, tensor_type=return_tensors)

    #: the preprocessing settings that decide where an image lies in its pixel values (the resized size, the
    #: padding); post-processing takes the same overrides as the call that made the pixel values
    layout_settings = ("do_resize", "size", "size_divisor", "do_pad", "pad_size")

    def _layout(self, overrides: dict) -> dict:
        """This processor's :attr:`layout_settings`, with ``overrides`` (the ones a `preprocess` call was given) in
        their place; anything else is a `TypeError` naming it, a wrong value the `ValueError` `preprocess` raises."""
        unknown = sorted(set(overrides) - set(self.layout_settings))
        if unknown:
            raise TypeError(
                f"post_process_semantic_segmentation() got unexpected settings {unknown}; it takes the preprocessing "
                f"settings that place an image in its pixel values: {list(self.layout_settings)}"
            )
        layout = {name: getattr(self, name, None) for name in self.layout_settings}
        layout.update({name: value for name, value in overrides.items() if value is not None})
        self._validate_preprocess_kwargs(resample=self.resample, **layout)
        for name in ("size", "pad_size"):
            if layout[name] is not None and not isinstance(layout[name], SizeDict):
                layout[name] = SizeDict(**dict(layout[name]))
        return layout

    @staticmethod
    def _layout_description(layout: dict) -> str:
        """``layout``'s settings for a message, sizes as plain dicts of their set keys."""
        described = []
        for name, value in layout.items():
            if isinstance(value, SizeDict):
                value = {key: getattr(value, key) for key in ("height", "width", "shortest_edge", "longest_edge")}
                value = {key: side for key, side in value.items() if side is not None}
            described.append(f"{name}={value!r}")
        return ", ".join(described)

    def _image_sizes_for(self, target_sizes: list | None, image_sizes: list | None, layout: dict | None = None):
        """The unpadded (resized) size of every image: given, or derived from the original sizes (``target_sizes``)
        with the resize rule of ``layout`` (:meth:`_layout`; this processor's settings by default; both sizes checked
        by :func:`check_post_process_sizes`)."""
        if image_sizes is not None or target_sizes is None:
            return image_sizes
        layout = self._layout({}) if layout is None else layout
        if not layout["do_resize"]:
            return target_sizes
        return [
            self._resize_steps([(int(height), int(width))], layout["size"], size_divisor=layout.get("size_divisor"))[
                -1
            ][0]
            for height, width in target_sizes
        ]

    def _padded_size(self, image_sizes: list, layout: dict | None = None) -> tuple[int, int] | None:
        """The ``(height, width)`` `preprocess` pads a batch of images of these (resized) sizes to with the settings
        of ``layout`` (:meth:`_layout`; `do_pad`, `pad_size`, a model family's `size_divisibility`); None when it
        leaves them as they are (no padding, or every image has that size already)."""
        layout = self._layout({}) if layout is None else layout
        if not layout["do_pad"]:
            return None
        pad = self._get_pad_size(image_sizes, layout["pad_size"], size_divisibility=layout.get("size_divisibility"))
        if all(tuple(size) == (pad.height, pad.width) for size in image_sizes):
            return None
        return (pad.height, pad.width)

    def get_unpadded_size(self, height: int, width: int) -> tuple[int, int] | None:
        """Where an image of ``(height, width)`` lies in the pixel values `preprocess` makes of it alone: its
        resized ``(height, width)`` at the top left when they are padded, None when they are not (then they are
        the resized image). Post-processing crops the same region."""
        image_sizes = self._image_sizes_for([(int(height), int(width))], None)
        return image_sizes[0] if self._padded_size(image_sizes) is not None else None

    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes: list[tuple] | None = None,
        image_sizes: list[tuple] | None = None,
        return_segmentation_scores: bool = False,
        **preprocess_settings,
    ):
        """
        Turn the logits of a semantic-segmentation model into per-pixel class indices, as mmseg's test: the logits
        resized (bilinear, `align_corners=False`) to the model's input size, the padding cropped, then resized to
        the original size (`encode_decode`, then `rescale=True`).

        Args:
            outputs: model output with a `logits` field of shape `(batch_size, num_labels, height, width)`.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`, *optional*):
                Final `(height, width)` of each prediction, usually the original image sizes. If unset, the argmax is
                taken at the logits resolution.
            image_sizes (`list[tuple[int, int]]`, *optional*):
                The size of each image after resizing and before padding. By default derived from `target_sizes`
                with the resize rule (exact when `target_sizes` are the original sizes). Where the images of the
                batch were padded (to the largest of them, or to `pad_size`), each image's logits are resized to
                the padded input size and cropped to the image before the resize to its target size.
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                Return `SemanticSegmentationPostProcessorOutput`s (`segmentation` and the resized
                `segmentation_scores`) instead of bare maps.
            **preprocess_settings:
                The settings the images were processed with where the call overrode this processor's own (`size`,
                `do_resize`, `size_divisor`, `do_pad`, `pad_size`): they decide where each image lies in the
                pixel values. Logits that do not match the input size those settings give (at the stride of any
                model here) are refused instead of being cropped at the wrong place.

        Returns:
            `list[torch.Tensor]`: one int64 `(height, width)` map per image (or the output objects described above).
        """
        logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
        if logits is None:
            raise ValueError(
                f"outputs ({type(outputs).__name__}) have no logits; pass the model's output object (a tuple from "
                "return_dict=False has no field names)"
            )
        check_post_process_scores(logits, "logits", "num_labels")
        layout = self._layout(preprocess_settings)
        target_sizes = check_post_process_sizes(target_sizes, len(logits), "target_sizes")
        image_sizes = check_post_process_sizes(image_sizes, len(logits), "image_sizes")
        image_sizes = self._image_sizes_for(target_sizes, image_sizes, layout)
        input_sizes = None
        if image_sizes is not None:
            padded_size = self._padded_size(image_sizes, layout)
            input_sizes = [padded_size or tuple(size) for size in image_sizes]
            if (
                padded_size is None
                and target_sizes is not None
                and all(tuple(logits.shape[-2:]) == tuple(size) for size in target_sizes)
            ):
                input_sizes = None  # scores already at the target size (nothing padded, nothing to crop)
            else:
                check_logits_match_input(logits, input_sizes, self._layout_description(layout))
        results = []
        for index in range(len(logits)):
            scores = logits[index]
            if input_sizes is not None:  # (C, H, W) at the model's (padded) input, cropped to the image's region
                height, width = image_sizes[index]
                if tuple(scores.shape[-2:]) != input_sizes[index]:
                    scores = F.interpolate(scores[None], size=input_sizes[index], mode="bilinear", align_corners=False)[
                        0
                    ]
                scores = scores[:, :height, :width]
            if target_sizes is not None and tuple(scores.shape[-2:]) != tuple(target_sizes[index]):
                scores = F.interpolate(scores[None], size=target_sizes[index], mode="bilinear", align_corners=False)[0]
            results.append((scores.argmax(dim=0), scores))

        if not return_segmentation_scores:
            return [segmentation for segmentation, _ in results]
        return [
            SemanticSegmentationPostProcessorOutput(data={"segmentation": segmentation, "segmentation_scores": scores})
            for segmentation, scores in results
        ]
