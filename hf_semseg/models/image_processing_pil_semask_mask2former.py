"""Image processor for SeMask Mask2Former (PIL/NumPy backend).

Same pipeline as ``SeMaskMask2FormerImageProcessor`` without torchvision: uint8 images are resized with PIL itself,
as detectron2's ``ResizeTransform`` does (so the numbers are those of the original exactly), float images by plain
bilinear interpolation with torch.

Portable remote code: only torch, numpy, PIL, transformers and sibling modules are imported (never torchvision).
"""

import numpy as np
import PIL.Image
from transformers.image_processing_base import BatchFeature

from .image_processing_pil_keep_ratio import KeepRatioImageProcessorPil
from .image_processing_utils_segmentation import (
    IGNORE_INDEX,
    check_stackable,
    reduce_labels,
    resize_array_with_torch,
    resize_label_map_with_torch,
)
from .image_processing_utils_semask_mask2former import (
    SeMaskMask2FormerImageProcessingMixin,
    check_no_size_divisor,
    get_output_size,
    get_padded_size,
)


_PIL_FILTERS = {
    "nearest": PIL.Image.Resampling.NEAREST,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
}


def resize_uint8_with_pil(image: np.ndarray, output_size: tuple[int, int], mode: str) -> np.ndarray:
    """Resizes a ``(C, H, W)`` image with values in 0-255 as a uint8 PIL image (RGB for 3 channels, else channel by
    channel), exactly as detectron2's ``ResizeTransform`` treats uint8 images. Returns float32 ``(C, h, w)``."""
    height, width = output_size
    image = np.clip(image, 0, 255).astype(np.uint8)
    if image.shape[0] == 3:
        resized = PIL.Image.fromarray(np.moveaxis(image, 0, 2)).resize((width, height), _PIL_FILTERS[mode])
        return np.moveaxis(np.asarray(resized), 2, 0).astype(np.float32)
    channels = [
        np.asarray(PIL.Image.fromarray(channel).resize((width, height), _PIL_FILTERS[mode])) for channel in image
    ]
    return np.stack(channels).astype(np.float32)


class SeMaskMask2FormerImageProcessorPil(SeMaskMask2FormerImageProcessingMixin, KeepRatioImageProcessorPil):
    r"""
    Image processor for SeMask Mask2Former semantic segmentation (PIL/NumPy backend; does not need torchvision). It takes
    the same arguments, has the same defaults and gives the same numbers (up to one intensity level for shrunk uint8
    images) as `SeMaskMask2FormerImageProcessor` (see its docstring): detectron2's `ResizeShortestEdge` (uint8 images
    resized by PIL, exactly as the original), ImageNet normalisation, zero padding to a multiple of 32.
    """

    saved_backends = {"pil": "image_processing_pil_semask_mask2former.SeMaskMask2FormerImageProcessorPil"}

    def _preprocess(
        self,
        images: list[np.ndarray],
        segmentation_maps: list[np.ndarray] | None = None,
        do_resize: bool = True,
        size=None,
        resample=None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean=None,
        image_std=None,
        do_reduce_labels: bool = False,
        do_pad: bool = True,
        pad_size=None,
        size_divisibility: int | None = None,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        size_divisibility = self.size_divisibility if size_divisibility is None else size_divisibility
        check_no_size_divisor(kwargs.get("size_divisor"))
        input_sizes = [tuple(image.shape[-2:]) for image in images]
        output_sizes = [get_output_size(h, w, size) if do_resize else (h, w) for h, w in input_sizes]
        mode = self._interpolation_mode(resample) if do_resize else None
        check_stackable(output_sizes, do_pad, return_tensors)

        pixel_values = []
        for image, input_size, output_size in zip(images, input_sizes, output_sizes):
            if output_size != input_size:
                if np.issubdtype(image.dtype, np.floating):
                    image = resize_array_with_torch(image, output_size, mode, round_to_uint8_range=False)
                else:
                    image = resize_uint8_with_pil(image, output_size, mode)
            image = image.astype(np.float32)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            pixel_values.append(image.astype(np.float32, copy=False))

        labels = None
        if segmentation_maps is not None:
            labels = []
            for label, output_size in zip(segmentation_maps, output_sizes):
                if do_reduce_labels:
                    label = reduce_labels(label)
                labels.append(resize_label_map_with_torch(label, output_size))

        if do_pad and pixel_values:
            pad_height, pad_width = get_padded_size(output_sizes, size_divisibility, pad_size)
            pixel_values = [self._pad_right_bottom(image, pad_height, pad_width, 0.0) for image in pixel_values]
            if labels is not None:
                labels = [self._pad_right_bottom(label, pad_height, pad_width, IGNORE_INDEX) for label in labels]

        data = {"pixel_values": pixel_values}
        if labels is not None:
            data["labels"] = labels
        return BatchFeature(data=data, tensor_type=return_tensors)


__all__ = ["SeMaskMask2FormerImageProcessorPil"]
