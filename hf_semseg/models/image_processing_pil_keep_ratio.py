"""Keep-ratio image processor of SeMask-FPN, VWFormer and Pale (PIL/NumPy backend).

Same pipeline and numbers as ``KeepRatioImageProcessor`` (torchvision backend) but works without torchvision: images
are NumPy arrays, resized with ``torch.nn.functional.interpolate`` (no antialiasing, like OpenCV ``INTER_LINEAR`` in
the original mmseg pipeline) rather than PIL's antialiasing resize. The flow is ``SegmentationImageProcessingMixin``'s.

Portable remote code: only torch, numpy, PIL, transformers and sibling modules are imported (never torchvision).
"""

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import ChannelDimension
from transformers.utils import logging

from .image_processing_utils_segmentation import (
    SegmentationImageProcessingMixin,
    SegmentationImageProcessorKwargs,
    torch_interpolation_mode,
)


logger = logging.get_logger(__name__)


class KeepRatioImageProcessorKwargs(SegmentationImageProcessorKwargs, total=False):
    r"""
    Keyword arguments of `KeepRatioImageProcessor` and `KeepRatioImageProcessorPil`: those of
    `SegmentationImageProcessorKwargs` (`do_reduce_labels`, `size_divisor`). The torchvision module imports this class,
    so that each processor's module holds its `valid_kwargs` class under the name transformers expects.
    """


class KeepRatioImageProcessorPil(SegmentationImageProcessingMixin, PilBackend):
    r"""
    Image processor for SeMask-FPN, VWFormer and Pale semantic segmentation (PIL/NumPy backend; does not need
    torchvision). It takes the same arguments, has the same defaults and gives the same numbers (up to one intensity
    level) as `KeepRatioImageProcessor` (see its docstring for every argument): the original mmseg test pipeline, i.e.
    convert to RGB, keep-ratio resize (mmcv `imrescale`, no antialiasing), rescale by 1/255, normalise with the
    ImageNet mean/std; segmentation maps optionally label-reduced, nearest-resized and returned as int64 `labels`
    with 255 = ignore.
    """

    valid_kwargs = KeepRatioImageProcessorKwargs
    saved_backends = {"pil": "image_processing_pil_keep_ratio.KeepRatioImageProcessorPil"}

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs) -> np.ndarray:
        # The base calls `.numpy()` on tensors (which fails on GPU, bfloat16 and autograd tensors), and converts an
        # (H, W) array to RGB before it adds the channel axis, which it then cannot infer.
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu()
            image = (image.float() if image.dtype == torch.bfloat16 else image).numpy()
        if isinstance(image, np.ndarray) and image.ndim == 2:
            image, input_data_format = image[None], ChannelDimension.FIRST
        return super().process_image(image, do_convert_rgb, input_data_format, **kwargs)

    def rescale_and_normalize(self, images, do_rescale, rescale_factor, do_normalize, image_mean, image_std):
        """The torchvision backend's step on a ``(N, C, H, W)`` batch, with this backend's `rescale` and `normalize`. A
        one-value `image_mean` / `image_std` applies to every channel, as in the torchvision backend (transformers'
        `normalize` takes a float for that, and refused a list of one value)."""
        image_mean, image_std = (
            values[0] if isinstance(values, (list, tuple)) and len(values) == 1 else values
            for values in (image_mean, image_std)
        )
        processed = []
        for image in images:
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            processed.append(image)
        return np.stack(processed).astype(np.float32, copy=False)

    def _stack(self, images: list[np.ndarray]) -> np.ndarray:
        return np.stack(images).astype(np.float32)

    def _resize_images(self, images: np.ndarray, output_size: tuple[int, int], resample, is_integer: bool):
        # torch's interpolate (no antialiasing, like OpenCV), not PIL's filters, which antialias when shrinking
        mode = torch_interpolation_mode(resample)
        align_corners = False if mode in ("bilinear", "bicubic") else None
        resized = F.interpolate(
            torch.from_numpy(images), size=tuple(output_size), mode=mode, align_corners=align_corners
        )
        return (resized.round_().clamp_(0, 255) if is_integer else resized).numpy()


# `valid_kwargs` of the deprecated name, under the name transformers looks up for it
SeMaskImageProcessorKwargs = KeepRatioImageProcessorKwargs


class SeMaskImageProcessorPil(KeepRatioImageProcessorPil):
    """Deprecated: the former name of `KeepRatioImageProcessorPil`, kept so that folders saved under that name load."""

    def __init__(self, **kwargs):
        logger.warning_once("`SeMaskImageProcessorPil` is deprecated; use `KeepRatioImageProcessorPil`.")
        super().__init__(**kwargs)


__all__ = ["KeepRatioImageProcessorKwargs", "KeepRatioImageProcessorPil", "SeMaskImageProcessorPil"]
