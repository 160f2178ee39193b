"""Image processor for SeMask-FPN (PIL/NumPy backend).

Same pipeline and numbers as ``KeepRatioImageProcessor`` (torchvision backend) but works without torchvision: images
are handled as NumPy arrays; the resize is done with ``torch.nn.functional.interpolate`` (no antialiasing, like
OpenCV ``INTER_LINEAR`` in the original mmseg pipeline) rather than PIL's antialiasing resize.

Portable remote code: only torch, numpy, PIL, transformers and sibling modules are imported (never torchvision).
"""

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import ChannelDimension

from .image_processing_utils_segmentation import (
    IGNORE_INDEX,
    SeMaskImageProcessingMixin,
    check_image_dtype,
    check_stackable,
    get_channel_axis,
    get_output_size,
    get_pad_size,
    image_to_rgb,
    pil_image_to_numpy,
    pil_segmentation_map_to_numpy,
    reduce_labels,
    resize_array_with_torch,
    resize_label_map_with_torch,
    round_up_to_multiple,
    squeeze_segmentation_map,
    torch_interpolation_mode,
)


class KeepRatioImageProcessorPil(SeMaskImageProcessingMixin, PilBackend):
    r"""
    Image processor for SeMask-FPN semantic segmentation (PIL/NumPy backend; does not need torchvision). It takes the
    same arguments, has the same defaults and gives the same numbers (up to one intensity level) as
    `KeepRatioImageProcessor` (see its docstring for every argument): the original mmseg 0.11 test pipeline, i.e.
    convert to RGB, keep-ratio resize (mmcv `imrescale`, no antialiasing), rescale by 1/255, normalise with the
    ImageNet mean/std; segmentation maps optionally label-reduced, nearest-resized and returned as int64 `labels`
    with 255 = ignore.
    """

    saved_backends = {"pil": "image_processing_pil_keep_ratio.KeepRatioImageProcessorPil"}

    def _interpolation_mode(self, resample) -> str:
        return torch_interpolation_mode(resample)

    def _prepare_semask_image(self, image, index, do_convert_rgb, input_data_format, device) -> np.ndarray:
        if isinstance(image, PIL.Image.Image):
            image = pil_image_to_numpy(image, do_convert_rgb)
            input_data_format = ChannelDimension.LAST
        elif isinstance(image, torch.Tensor):
            check_image_dtype(image.dtype, index)
            image = image.detach().cpu()
            image = (image.float() if image.dtype == torch.bfloat16 else image).numpy()
        check_image_dtype(image.dtype, index)

        if image.ndim == 2:
            image = image[None]
        elif get_channel_axis(image.shape, input_data_format, index) == 2:
            image = np.moveaxis(image, 2, 0)
        if do_convert_rgb:
            image = image_to_rgb(torch.from_numpy(np.ascontiguousarray(image)), index).numpy()
        return image

    def _prepare_semask_segmentation_map(self, seg_map, index, device) -> np.ndarray:
        if isinstance(seg_map, PIL.Image.Image):
            seg_map = pil_segmentation_map_to_numpy(seg_map, index)
        elif isinstance(seg_map, torch.Tensor):
            seg_map = seg_map.detach().cpu().numpy()
        return np.array(squeeze_segmentation_map(seg_map, index), dtype=np.int64)

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
        size_divisor: int | None = None,
        do_pad: bool = True,
        pad_size=None,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        input_sizes = [tuple(image.shape[-2:]) for image in images]
        # resize steps: the keep-ratio resize, then (size_divisor) the resize up to a multiple, as mmseg does both
        steps = [[get_output_size(h, w, size) if do_resize else (h, w) for h, w in input_sizes]]
        if do_resize and size_divisor is not None:
            steps.append([round_up_to_multiple(output_size, size_divisor) for output_size in steps[0]])
        output_sizes = steps[-1]
        mode = self._interpolation_mode(resample) if do_resize else None
        check_stackable(output_sizes, do_pad, return_tensors)

        pixel_values = []
        for index, image in enumerate(images):
            is_float = np.issubdtype(image.dtype, np.floating)
            for step in steps:
                if step[index] != tuple(image.shape[-2:]):
                    image = resize_array_with_torch(image, step[index], mode, round_to_uint8_range=not is_float)
            image = image.astype(np.float32, copy=False)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            pixel_values.append(image.astype(np.float32, copy=False))

        labels = None
        if segmentation_maps is not None:
            labels = []
            for index, label in enumerate(segmentation_maps):
                if do_reduce_labels:
                    label = reduce_labels(label)
                for step in steps:
                    label = resize_label_map_with_torch(label, step[index])
                labels.append(label)

        if do_pad and len(pixel_values) > 0:
            pad_height, pad_width = get_pad_size(output_sizes, pad_size)
            pixel_values = [self._pad_right_bottom(image, pad_height, pad_width, 0.0) for image in pixel_values]
            if labels is not None:
                labels = [self._pad_right_bottom(label, pad_height, pad_width, IGNORE_INDEX) for label in labels]

        data = {"pixel_values": pixel_values}
        if labels is not None:
            data["labels"] = labels
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _pad_right_bottom(array: np.ndarray, height: int, width: int, value) -> np.ndarray:
        pad_bottom, pad_right = height - array.shape[-2], width - array.shape[-1]
        if pad_bottom == 0 and pad_right == 0:
            return array
        pad_width = [(0, 0)] * (array.ndim - 2) + [(0, pad_bottom), (0, pad_right)]
        return np.pad(array, pad_width, mode="constant", constant_values=value)


__all__ = ["KeepRatioImageProcessorPil"]
