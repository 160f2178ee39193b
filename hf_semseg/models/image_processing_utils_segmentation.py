"""Backend-independent pieces shared by the SeMask image processors.

This module is imported (with a single-dot relative import) by both ``image_processing_semask_swin.py`` (torchvision
backend) and ``image_processing_pil_semask_swin.py`` (PIL/NumPy backend). It is copied next to saved weights for
``trust_remote_code`` loading, so it may only depend on torch, numpy, PIL and transformers. It must never import
torchvision: the PIL backend has to work where torchvision is not installed.

What lives here:

* the keep-ratio output-size rule of mmcv's ``imrescale`` (used by the SeMask-FPN mmseg 0.11 test pipeline),
* input flattening/validation with messages that name the offending sample,
* RGB conversion for arrays, label reduction, the resampling-mode mapping,
* ``SeMaskImageProcessingMixin``: the defaults, ``preprocess(images, segmentation_maps=...)`` orchestration and
  ``post_process_semantic_segmentation``; the two backends only implement the tensor/array specific hooks.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_transforms import convert_to_rgb
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs

from .configuration_utils_segmentation import IGNORE_INDEX


# Channel counts an input image may have before RGB conversion.
_VALID_INPUT_CHANNELS = (1, 3, 4)

# PIL resampling filters we can reproduce without antialiasing (like cv2 INTER_NEAREST / INTER_LINEAR / INTER_CUBIC).
_TORCH_MODE_FOR_PIL_RESAMPLE = {
    int(PILImageResampling.NEAREST): "nearest",
    int(PILImageResampling.BILINEAR): "bilinear",
    int(PILImageResampling.BICUBIC): "bicubic",
}


class SeMaskImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Whether to reduce every label of the segmentation maps by one and map the background label 0 to 255 (the
        ignore index), as done for ADE20K whose label 0 means "other". A label of 255 stays 255.
    """

    do_reduce_labels: bool
    size_divisor: int | None


# --------------------------------------------------------------------------------------------------------------------
# Output size
# --------------------------------------------------------------------------------------------------------------------


def _scale_size(height: int, width: int, scale_factor: float) -> tuple[int, int]:
    """Scale ``(height, width)`` and round half up, like mmcv's ``_scale_size``."""
    return int(height * float(scale_factor) + 0.5), int(width * float(scale_factor) + 0.5)


def get_keep_ratio_output_size(height: int, width: int, longest_edge: int, shortest_edge: int) -> tuple[int, int]:
    """Output ``(height, width)`` of mmcv ``imrescale(img, scale=(longest_edge, shortest_edge))``.

    The image is scaled by ``min(long_bound / max(h, w), short_bound / min(h, w))`` so that its long side is at most
    the long bound and its short side at most the short bound (one of them is reached exactly, up to rounding), keeping
    the aspect ratio. Like mmcv, the larger of the two bounds is the long bound whatever order they are given in.
    """
    long_bound = max(longest_edge, shortest_edge)
    short_bound = min(longest_edge, shortest_edge)
    scale_factor = min(long_bound / max(height, width), short_bound / min(height, width))
    return _scale_size(height, width, scale_factor)


def round_up_to_multiple(size: tuple[int, int], divisor: int | None) -> tuple[int, int]:
    """``(height, width)`` with each side rounded up to a multiple of ``divisor`` (mmseg's ``ResizeToMultiple``,
    mmcv ``imresize_to_multiple``); unchanged when ``divisor`` is None."""
    if divisor is None:
        return tuple(size)
    if not isinstance(divisor, (int, np.integer)) or divisor < 1:
        raise ValueError(f"`size_divisor` must be a positive integer or None, got {divisor!r}.")
    return tuple(-(-int(side) // divisor) * divisor for side in size)


def validate_size(size: SizeDict | dict | None) -> None:
    """Raise a `ValueError` unless ``size`` is one of the size dicts the SeMask processors understand."""
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


def get_output_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
    """Resized ``(height, width)`` of an image of ``(height, width)`` for the given ``size`` dict.

    * ``{"longest_edge": L, "shortest_edge": S}``: keep-ratio resize of mmcv ``imrescale(img, (L, S))``.
    * ``{"shortest_edge": S}``: keep ratio, short side scaled to ``S`` (mmcv ``imrescale`` with a float factor).
    * ``{"longest_edge": L}``: keep ratio, long side scaled to ``L``.
    * ``{"height": H, "width": W}``: plain resize to ``(H, W)``.
    """
    validate_size(size)
    if size.height is not None and size.width is not None:
        return int(size.height), int(size.width)
    if size.longest_edge is not None and size.shortest_edge is not None:
        return get_keep_ratio_output_size(height, width, int(size.longest_edge), int(size.shortest_edge))
    if size.shortest_edge is not None:
        return _scale_size(height, width, int(size.shortest_edge) / min(height, width))
    return _scale_size(height, width, int(size.longest_edge) / max(height, width))


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


def interpolate_without_antialias(array: torch.Tensor, output_size: tuple[int, int], mode: str) -> torch.Tensor:
    """``F.interpolate`` on a ``(N, C, H, W)`` float tensor, ``align_corners=False`` and no antialiasing."""
    align_corners = False if mode in ("bilinear", "bicubic") else None
    return F.interpolate(array, size=tuple(output_size), mode=mode, align_corners=align_corners, antialias=False)


def resize_array_with_torch(
    array: np.ndarray, output_size: tuple[int, int], mode: str, round_to_uint8_range: bool
) -> np.ndarray:
    """Resize a ``(C, H, W)`` NumPy array with torch (no antialiasing); returns a float32 array.

    When ``round_to_uint8_range`` is set (integer input images), the result is rounded to the nearest integer and
    clamped to ``[0, 255]``, as when a uint8 image is resized by OpenCV.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    if tuple(tensor.shape[-2:]) != tuple(output_size):
        tensor = interpolate_without_antialias(tensor, output_size, mode)
    if round_to_uint8_range:
        tensor = tensor.round_().clamp_(0, 255)
    return tensor[0].numpy()


def resize_label_map_with_torch(label_map: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a ``(H, W)`` int64 label map (OpenCV ``INTER_NEAREST`` = torch ``"nearest"``)."""
    if tuple(label_map.shape[-2:]) == tuple(output_size):
        return label_map
    tensor = torch.from_numpy(np.ascontiguousarray(label_map, dtype=np.float64))[None, None]
    tensor = F.interpolate(tensor, size=tuple(output_size), mode="nearest")
    return tensor[0, 0].numpy().astype(np.int64)


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------


def _is_array_like(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor))


def _describe(value: Any) -> str:
    if isinstance(value, PIL.Image.Image):
        return f"PIL image (mode {value.mode!r}, size {value.size})"
    if _is_array_like(value):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    return repr(type(value))


def flatten_images(images: Any) -> list:
    """Flatten ``images`` into a list of single images (PIL images or 2D/3D arrays/tensors).

    Accepted: one PIL image, one ``(H, W)`` / ``(H, W, C)`` / ``(C, H, W)`` array or tensor, a 4D batch of those, or a
    list/tuple (optionally nested once) of single images.
    """
    if isinstance(images, PIL.Image.Image):
        return [images]
    if _is_array_like(images):
        if images.ndim in (2, 3):
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(
            f"`images` has {images.ndim} dimensions (shape {tuple(images.shape)}); expected a single image with 2 "
            "(H, W) or 3 ((H, W, C) or (C, H, W)) dimensions, or a batch with 4 dimensions."
        )
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("`images` is an empty list; pass at least one image.")
        flat = []
        for item in images:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        for index, image in enumerate(flat):
            if isinstance(image, PIL.Image.Image):
                continue
            if not _is_array_like(image):
                raise ValueError(
                    f"Image {index} is a {_describe(image)}; expected a PIL image, a numpy array or a torch tensor."
                )
            if image.ndim not in (2, 3):
                raise ValueError(
                    f"Image {index} has {image.ndim} dimensions (shape {tuple(image.shape)}); expected 2 (H, W) or 3 "
                    "((H, W, C) or (C, H, W)) dimensions."
                )
        return flat
    raise ValueError(
        f"`images` is a {_describe(images)}; expected a PIL image, a numpy array, a torch tensor or a list of them."
    )


def flatten_segmentation_maps(segmentation_maps: Any) -> list:
    """Flatten ``segmentation_maps`` into a list of single maps (PIL images or ``(H, W)`` arrays/tensors).

    Accepted: one PIL image, one ``(H, W)`` array/tensor, a ``(B, H, W)`` batch, or a list/tuple (optionally nested
    once) of PIL images, ``(H, W)`` arrays or ``(1, H, W)`` / ``(H, W, 1)`` arrays.
    """
    if isinstance(segmentation_maps, PIL.Image.Image):
        return [segmentation_maps]
    if _is_array_like(segmentation_maps):
        if segmentation_maps.ndim == 2:
            return [segmentation_maps]
        if segmentation_maps.ndim == 3:
            return list(segmentation_maps)
        raise ValueError(
            f"`segmentation_maps` has {segmentation_maps.ndim} dimensions (shape {tuple(segmentation_maps.shape)}); "
            "expected a single (H, W) map or a (B, H, W) batch."
        )
    if isinstance(segmentation_maps, (list, tuple)):
        flat = []
        for item in segmentation_maps:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        for index, seg_map in enumerate(flat):
            if not (isinstance(seg_map, PIL.Image.Image) or _is_array_like(seg_map)):
                raise ValueError(
                    f"Segmentation map {index} is a {_describe(seg_map)}; expected a PIL image, a numpy array or a "
                    "torch tensor."
                )
        return flat
    raise ValueError(
        f"`segmentation_maps` is a {_describe(segmentation_maps)}; expected a PIL image, a numpy array, a torch "
        "tensor or a list of them."
    )


def pil_image_to_numpy(image: PIL.Image.Image, do_convert_rgb: bool) -> np.ndarray:
    """PIL image -> ``(H, W, C)`` or ``(H, W)`` array. With ``do_convert_rgb``, modes such as L, LA, P, RGBA and CMYK
    are converted to RGB (transparency composited onto white, as everywhere in transformers)."""
    if do_convert_rgb:
        return convert_to_rgb(image, return_numpy=True)
    return np.array(image)


def get_channel_axis(shape: Sequence[int], input_data_format: Any, index: int) -> int:
    """Channel axis (0 or 2) of a 3D image of ``shape``, validated to hold 1, 3 or 4 channels."""
    if input_data_format is not None:
        channel_format = ChannelDimension(input_data_format)
        axis = 0 if channel_format == ChannelDimension.FIRST else 2
        if shape[axis] not in _VALID_INPUT_CHANNELS:
            raise ValueError(
                f"Image {index} has shape {tuple(shape)} and input_data_format={channel_format.value!r}, i.e. "
                f"{shape[axis]} channels; expected 1 (grayscale), 3 (RGB) or 4 (RGBA) channels."
            )
        return axis
    if shape[0] in _VALID_INPUT_CHANNELS:
        return 0
    if shape[2] in _VALID_INPUT_CHANNELS:
        return 2
    two_channel_hint = (
        " 2-channel (grayscale + alpha) arrays are not supported: pass a PIL image in mode 'LA' or drop the alpha "
        "channel."
        if 2 in (shape[0], shape[2])
        else ""
    )
    raise ValueError(
        f"Image {index} has shape {tuple(shape)}: could not find a channel dimension of size 1 (grayscale), 3 (RGB) "
        f"or 4 (RGBA) first or last.{two_channel_hint}"
    )


def image_to_rgb(image: torch.Tensor, index: int) -> torch.Tensor:
    """Convert a ``(C, H, W)`` tensor with 1, 3 or 4 channels to 3 channels (alpha composited onto white); both
    backends use it (the PIL backend on ``torch.from_numpy`` views)."""
    num_channels = image.shape[0]
    if num_channels == 3:
        return image
    if num_channels == 1:
        return image.expand(3, -1, -1)
    if num_channels == 4:
        is_float = image.is_floating_point()
        if is_float and (image.min() < 0.0 or image.max() > 1.0):
            raise ValueError(
                f"Image {index} is a float RGBA image with values in [{image.min().item()}, {image.max().item()}]; "
                "float RGBA images must be in [0, 1] to composite the alpha channel."
            )
        white = 1.0 if is_float else 255.0
        alpha = image[3:4].to(torch.float32) / white
        composite = image[:3].to(torch.float32) * alpha + (1.0 - alpha) * white
        return composite.to(image.dtype) if is_float else composite.round().to(image.dtype)
    raise ValueError(f"Image {index} has {num_channels} channels; expected 1, 3 or 4.")


def check_image_dtype(dtype: Any, index: int) -> None:
    """Reject boolean and complex images."""
    name = str(dtype)
    if name in ("bool", "torch.bool") or "complex" in name:
        raise ValueError(f"Image {index} has dtype {name}; expected uint8 (0-255) or floating point values.")


def squeeze_segmentation_map(seg_map: Any, index: int) -> Any:
    """Return a ``(H, W)`` view of an array/tensor map, accepting a singleton channel first or last."""
    if seg_map.ndim == 3 and seg_map.shape[0] == 1:
        seg_map = seg_map[0]
    elif seg_map.ndim == 3 and seg_map.shape[-1] == 1:
        seg_map = seg_map[..., 0]
    if seg_map.ndim != 2:
        raise ValueError(
            f"Segmentation map {index} has shape {tuple(seg_map.shape)}; expected a single-channel (H, W) map of "
            "class indices."
        )
    return seg_map


def pil_segmentation_map_to_numpy(seg_map: PIL.Image.Image, index: int) -> np.ndarray:
    array = np.array(seg_map)
    if array.ndim != 2:
        raise ValueError(
            f"Segmentation map {index} is a PIL image in mode {seg_map.mode!r} with shape {array.shape}; expected a "
            "single-channel map of class indices (mode 'L', 'P', 'I' or 'I;16')."
        )
    return array


def reduce_labels(labels: Any) -> Any:
    """ADE20K-style label reduction on an int64 array/tensor: ``0 -> 255``, ``255 -> 255``, other ``l -> l - 1``."""
    reduced = labels - 1
    reduced[(labels == 0) | (labels == IGNORE_INDEX)] = IGNORE_INDEX
    return reduced


def check_segmentation_maps_match(image_sizes: list, map_sizes: list) -> None:
    """Every segmentation map must have the height and width of its image (before resizing)."""
    if len(image_sizes) != len(map_sizes):
        raise ValueError(
            f"Got {len(image_sizes)} images but {len(map_sizes)} segmentation maps; pass one map per image."
        )
    for index, (image_size, map_size) in enumerate(zip(image_sizes, map_sizes)):
        if tuple(image_size) != tuple(map_size):
            raise ValueError(
                f"Segmentation map {index} has size {tuple(map_size)} (height, width) but image {index} has size "
                f"{tuple(image_size)}; each segmentation map must have the same height and width as its image."
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


def get_pad_size(sizes: list, pad_size: SizeDict | None) -> tuple[int, int]:
    """Size every image of the batch is padded to: ``pad_size`` if given, otherwise the largest height/width."""
    max_height = max(int(size[0]) for size in sizes)
    max_width = max(int(size[1]) for size in sizes)
    if pad_size is None or pad_size.height is None or pad_size.width is None:
        if pad_size is not None and (pad_size.height is not None or pad_size.width is not None):
            raise ValueError(f"`pad_size` must have both 'height' and 'width', got {dict(pad_size)}.")
        return max_height, max_width
    if pad_size.height < max_height or pad_size.width < max_width:
        raise ValueError(
            f"`pad_size`=({pad_size.height}, {pad_size.width}) is smaller than the largest (resized) image of the "
            f"batch ({max_height}, {max_width})."
        )
    return int(pad_size.height), int(pad_size.width)


# --------------------------------------------------------------------------------------------------------------------
# Shared processor behaviour
# --------------------------------------------------------------------------------------------------------------------


class SeMaskImageProcessingMixin:
    """Defaults, orchestration and post-processing shared by `KeepRatioImageProcessor` and `KeepRatioImageProcessorPil`.

    Backends implement ``_prepare_semask_image(image, index, do_convert_rgb, input_data_format, device)`` (one input
    -> channels-first array/tensor with 3 channels), ``_prepare_semask_segmentation_map(seg_map, index, device)``
    (one map -> ``(H, W)`` int64 array/tensor) and ``_preprocess(images, segmentation_maps, ...)`` (resize, rescale,
    normalize, reduce labels, pad -> `BatchFeature`).
    """

    valid_kwargs = SeMaskImageProcessorKwargs
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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.do_resize:
            validate_size(self.size)
            self._interpolation_mode(self.resample)  # fail early on an unsupported filter

    #: ``{backend: "module.Class"}`` written as this processor's ``auto_map`` entry when it is saved for remote code:
    #: the torchvision classes name both backends (their module imports the PIL twin, so ``save_pretrained`` copies
    #: both modules), the PIL classes only themselves (their module never imports torchvision)
    saved_backends: dict[str, str] = {}

    def to_dict(self) -> dict[str, Any]:
        """The processor's settings. Saved for remote code, ``auto_map`` names every saved backend, so that
        ``AutoImageProcessor.from_pretrained(dir, trust_remote_code=True)`` picks the torchvision class where
        torchvision is installed and the PIL class where it is not."""
        output = super().to_dict()
        auto_class, auto_map = getattr(self, "_auto_class", None), output.get("auto_map")
        if auto_class is not None and isinstance(auto_map, dict) and self.saved_backends:
            output["auto_map"] = {**auto_map, auto_class: dict(self.saved_backends)}
        return output

    def preprocess(self, images, segmentation_maps=None, **kwargs) -> BatchFeature:
        r"""
        Preprocess an image or a batch of images (and optionally their segmentation maps).

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                Images with values in 0-255 (uint8) or floats; channels first or last; grayscale, RGB or RGBA.
            segmentation_maps (same types, *optional*):
                Single-channel maps of class indices, one per image, of the same height and width as the image.
            **kwargs:
                Any processor attribute (`do_resize`, `size`, `do_reduce_labels`, `do_pad`, `return_tensors`, ...)
                to override for this call.

        Returns:
            `BatchFeature` with `pixel_values` (and `labels` when `segmentation_maps` is given); stacked into
            `(B, 3, H, W)` float32 / `(B, H, W)` int64 tensors with `return_tensors="pt"`, lists otherwise.
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

    def get_output_size(self, height: int, width: int, size: dict | SizeDict | None = None) -> tuple[int, int]:
        """Resized ``(height, width)`` that `preprocess` produces (before padding) for an image of this size."""
        size = self.size if size is None else size
        size = size if isinstance(size, SizeDict) else SizeDict(**dict(size))
        return round_up_to_multiple(get_output_size(int(height), int(width), size), self.size_divisor)

    def _load_image_paths(self, images):
        """Load the images given as paths/URLs (strings); leave everything else to the input validation."""
        if isinstance(images, str):
            return self.fetch_images(images)
        if isinstance(images, (list, tuple)):
            return [self._load_image_paths(image) for image in images]
        return images

    def _preprocess_image_like_inputs(
        self,
        images,
        segmentation_maps=None,
        do_convert_rgb: bool = True,
        input_data_format=None,
        device=None,
        **kwargs,
    ) -> BatchFeature:
        if kwargs.get("do_resize"):
            validate_size(kwargs.get("size"))
            self._interpolation_mode(kwargs.get("resample"))
        images = [
            self._prepare_semask_image(image, index, do_convert_rgb, input_data_format, device)
            for index, image in enumerate(flatten_images(self._load_image_paths(images)))
        ]
        if kwargs.get("do_normalize"):
            channels = [image.shape[0] for image in images]
            check_channels_for_normalize(channels, kwargs["image_mean"], kwargs["image_std"])

        labels = None
        if segmentation_maps is not None:
            labels = [
                self._prepare_semask_segmentation_map(seg_map, index, device)
                for index, seg_map in enumerate(flatten_segmentation_maps(segmentation_maps))
            ]
            check_segmentation_maps_match(
                [tuple(image.shape[-2:]) for image in images], [tuple(label.shape[-2:]) for label in labels]
            )
        return self._preprocess(images, segmentation_maps=labels, **kwargs)

    def post_process_semantic_segmentation(
        self, outputs, target_sizes: list[tuple] | None = None, return_segmentation_scores: bool = False
    ):
        """
        Turn the logits of `SeMaskSwinForSemanticSegmentation` into per-pixel class indices.

        Args:
            outputs: model output with a `logits` field of shape `(batch_size, num_labels, height, width)`.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`, *optional*):
                Final `(height, width)` of each prediction, usually the original image sizes. Each image's logits are
                resized bilinearly (`align_corners=False`, as in mmseg) before the argmax. If unset, the argmax is
                taken at the logits resolution.
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                Return `SemanticSegmentationPostProcessorOutput`s (`segmentation` and the resized
                `segmentation_scores`) instead of bare maps.

        Returns:
            `list[torch.Tensor]`: one int64 `(height, width)` map per image (or the output objects described above).

        Note: when images of different sizes were padded into one batch, the logits also cover the padding; crop each
        image's logits to its unpadded region (see `get_output_size`) before resizing, or process such images one at
        a time as the original test pipeline does.
        """
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if target_sizes is not None:
            if len(logits) != len(target_sizes):
                raise ValueError(
                    f"Got {len(target_sizes)} target sizes for a batch of {len(logits)} logits; pass one (height, "
                    "width) per image."
                )
            if isinstance(target_sizes, torch.Tensor):
                target_sizes = target_sizes.tolist()
            results = []
            for index in range(len(logits)):
                height, width = (int(value) for value in target_sizes[index])
                scores = F.interpolate(logits[index][None], size=(height, width), mode="bilinear", align_corners=False)[
                    0
                ]
                results.append((scores.argmax(dim=0), scores))
        else:
            segmentation = logits.argmax(dim=1)
            results = [(segmentation[index], logits[index]) for index in range(len(logits))]

        if not return_segmentation_scores:
            return [segmentation for segmentation, _ in results]
        return [
            SemanticSegmentationPostProcessorOutput(data={"segmentation": segmentation, "segmentation_scores": scores})
            for segmentation, scores in results
        ]
