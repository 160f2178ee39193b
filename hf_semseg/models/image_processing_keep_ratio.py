"""Image processor for SeMask-FPN (torchvision backend, the default one).

Reproduces the test pipeline of the original SeMask-FPN code (mmseg 0.11): keep-ratio resize as mmcv
``imrescale(img, (2048, 512))`` with bilinear interpolation and no antialiasing (OpenCV ``INTER_LINEAR``), ImageNet
mean/std normalisation on RGB. The PIL/NumPy twin is ``KeepRatioImageProcessorPil`` in
``image_processing_pil_semask_swin.py``; both share ``image_processing_utils_semask_swin.py``.

Portable remote code: only torch, torchvision, numpy, PIL, transformers and sibling modules are imported.
"""

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as tvF
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import ChannelDimension

from .image_processing_pil_keep_ratio import KeepRatioImageProcessorPil  # noqa: F401  (saved with this module)
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
    round_up_to_multiple,
    squeeze_segmentation_map,
    torch_interpolation_mode,
)


_TORCHVISION_MODES = {
    "nearest": tvF.InterpolationMode.NEAREST,
    "bilinear": tvF.InterpolationMode.BILINEAR,
    "bicubic": tvF.InterpolationMode.BICUBIC,
}


class KeepRatioImageProcessor(SeMaskImageProcessingMixin, TorchvisionBackend):
    r"""
    Image processor for SeMask-FPN semantic segmentation (torchvision backend; see `KeepRatioImageProcessorPil` for the
    PIL/NumPy backend, which gives the same numbers up to one intensity level).

    Pipeline (the original mmseg 0.11 test pipeline): convert to RGB, keep-ratio resize, rescale by 1/255, normalise
    with the ImageNet mean/std; segmentation maps are optionally label-reduced, nearest-resized to the image size and
    returned as int64 `labels` in which 255 means "ignore".

    Args:
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Convert grayscale (1 channel / mode "L"), RGBA/LA/P... inputs to RGB (transparency composited on white).
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize the images (and segmentation maps).
        size (`dict[str, int]`, *optional*, defaults to `{"longest_edge": 2048, "shortest_edge": 512}`):
            `{"longest_edge": L, "shortest_edge": S}` is mmcv `imrescale(img, (L, S))`: the image is scaled by
            `min(L / max(h, w), S / min(h, w))` and the new size is `(int(h * f + 0.5), int(w * f + 0.5))`. Use
            2048/512 for the ADE20K and COCO-Stuff 512 models, 2560/640 for the 640 models and 2048/1024 for
            Cityscapes. `{"height": H, "width": W}` resizes to a fixed size; `{"shortest_edge": S}` or
            `{"longest_edge": L}` alone scale that side to the given length.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BILINEAR`):
            Interpolation for images: BILINEAR (default), NEAREST or BICUBIC, always without antialiasing like OpenCV.
            Integer (uint8) images are resized in the 0-255 range and rounded/clamped to integers, as mmseg resizes
            the uint8 image; float images are resized as they are. Segmentation maps always use nearest.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Multiply the pixel values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            The rescale factor.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Normalise with `image_mean` and `image_std`.
        image_mean (`list[float]`, *optional*, defaults to `(0.485, 0.456, 0.406)`):
            Mean per channel (the originals' 123.675/116.28/103.53 on 0-255).
        image_std (`list[float]`, *optional*, defaults to `(0.229, 0.224, 0.225)`):
            Standard deviation per channel (the originals' 58.395/57.12/57.375 on 0-255).
        do_reduce_labels (`bool`, *optional*, defaults to `False`):
            Map label 0 to 255 (ignore) and reduce the other labels by 1 (255 stays 255), e.g. for ADE20K maps.
        size_divisor (`int`, *optional*):
            After the resize, resize again (bilinear for images, nearest for maps) so that both sides are rounded up
            to a multiple of it: mmseg's `ResizeToMultiple`, the second step of the VWFormer ADE20K test pipeline
            (`size_divisor=64`). Applied only with `do_resize`.
        do_pad (`bool`, *optional*, defaults to `True`):
            Images of different sizes in one batch are padded on the right and bottom to the largest height and width
            of the batch (or to `pad_size`), pixel values with 0 (after normalisation) and labels with 255, so that
            they can be batched. A batch of same-size images is not changed.
        pad_size (`dict[str, int]`, *optional*):
            Fixed `{"height": H, "width": W}` to pad to instead of the batch maximum.

    Call with `segmentation_maps=` to also get `labels`; use `return_tensors="pt"` to get `pixel_values` as a
    `(B, 3, H, W)` float32 tensor and `labels` as a `(B, H, W)` int64 tensor. Use
    `post_process_semantic_segmentation(outputs, target_sizes=[(h, w), ...])` to get class-index maps at the original
    image sizes.
    """

    saved_backends = {
        "torchvision": "image_processing_keep_ratio.KeepRatioImageProcessor",
        "pil": "image_processing_pil_keep_ratio.KeepRatioImageProcessorPil",
    }

    def _interpolation_mode(self, resample) -> "tvF.InterpolationMode":
        return _TORCHVISION_MODES[torch_interpolation_mode(resample)]

    def _prepare_semask_image(self, image, index, do_convert_rgb, input_data_format, device) -> torch.Tensor:
        if isinstance(image, PIL.Image.Image):
            image = pil_image_to_numpy(image, do_convert_rgb)
            input_data_format = ChannelDimension.LAST
        check_image_dtype(image.dtype, index)
        if isinstance(image, np.ndarray):
            if image.dtype.kind == "u" and image.dtype != np.uint8:
                image = image.astype(np.int64)  # uint16/32/64 have little support in torch
            tensor = torch.from_numpy(np.ascontiguousarray(image))
        else:
            tensor = image.detach()

        if tensor.ndim == 2:
            tensor = tensor[None]
        elif get_channel_axis(tuple(tensor.shape), input_data_format, index) == 2:
            tensor = tensor.permute(2, 0, 1)
        if device is not None:
            tensor = tensor.to(device)
        if do_convert_rgb:
            tensor = image_to_rgb(tensor, index)
        return tensor.contiguous()

    def _prepare_semask_segmentation_map(self, seg_map, index, device) -> torch.Tensor:
        if isinstance(seg_map, PIL.Image.Image):
            seg_map = pil_segmentation_map_to_numpy(seg_map, index)
        if isinstance(seg_map, np.ndarray):
            seg_map = torch.from_numpy(np.asarray(seg_map).astype(np.int64))
        tensor = squeeze_segmentation_map(seg_map.detach(), index).to(torch.int64)
        if device is not None:
            tensor = tensor.to(device)
        return tensor

    def _preprocess(
        self,
        images: list[torch.Tensor],
        segmentation_maps: list[torch.Tensor] | None = None,
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

        # Batch the images that share input size, output size, integer-ness and device.
        groups: dict[tuple, list[int]] = {}
        for index, image in enumerate(images):
            key = (input_sizes[index], output_sizes[index], image.is_floating_point(), str(image.device))
            groups.setdefault(key, []).append(index)
        pixel_values: list = [None] * len(images)
        for (_, _, is_float, _), indices in groups.items():
            stacked = torch.stack([images[index].to(torch.float32) for index in indices])
            for step_size in [step[indices[0]] for step in steps]:
                if tuple(stacked.shape[-2:]) != step_size:
                    stacked = tvF.resize(stacked, list(step_size), interpolation=mode, antialias=False)
                    if not is_float:  # like resizing the uint8 image
                        stacked = stacked.round_().clamp_(0, 255)
            stacked = self.rescale_and_normalize(
                stacked, do_rescale, rescale_factor, do_normalize, image_mean, image_std
            )
            for position, index in enumerate(indices):
                pixel_values[index] = stacked[position]

        labels = None
        if segmentation_maps is not None:
            labels = []
            for index, label in enumerate(segmentation_maps):
                if do_reduce_labels:
                    label = reduce_labels(label)
                for step in steps:
                    if tuple(label.shape) != step[index]:
                        label = tvF.resize(
                            label[None, None].to(torch.float64),
                            list(step[index]),
                            interpolation=tvF.InterpolationMode.NEAREST,
                        )[0, 0].to(torch.int64)
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
    def _pad_right_bottom(tensor: torch.Tensor, height: int, width: int, value) -> torch.Tensor:
        pad_bottom, pad_right = height - tensor.shape[-2], width - tensor.shape[-1]
        if pad_bottom == 0 and pad_right == 0:
            return tensor
        return F.pad(tensor, (0, pad_right, 0, pad_bottom), mode="constant", value=value)


__all__ = ["KeepRatioImageProcessor"]
