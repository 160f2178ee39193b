"""Image processor for SeMask Mask2Former (PIL/NumPy backend).

Same pipeline as ``SeMaskMask2FormerImageProcessor`` without torchvision: uint8 images are resized with PIL itself,
as detectron2's ``ResizeTransform`` does (so the numbers are those of the original exactly), float images by plain
bilinear interpolation with torch. The flow is that of `KeepRatioImageProcessorPil`.

Portable remote code: only torch, numpy, PIL, transformers and sibling modules are imported (never torchvision).
"""

import numpy as np
from transformers.image_utils import SizeDict

from .image_processing_pil_keep_ratio import KeepRatioImageProcessorPil
from .image_processing_utils_semask_mask2former import (  # the kwargs class: this module's `valid_kwargs`
    SeMaskMask2FormerImageProcessingMixin,
    SeMaskMask2FormerImageProcessorKwargs,
)


class SeMaskMask2FormerImageProcessorPil(SeMaskMask2FormerImageProcessingMixin, KeepRatioImageProcessorPil):
    r"""
    Image processor for SeMask Mask2Former semantic segmentation (PIL/NumPy backend; does not need torchvision). It takes
    the same arguments, has the same defaults and gives the same numbers as `SeMaskMask2FormerImageProcessor` (see its
    docstring), up to one intensity level wherever a uint8 image is resized (enlarged or shrunk; torchvision's filter
    there, PIL's here, which is the original's): detectron2's `ResizeShortestEdge` (uint8 images
    resized by PIL, exactly as the original), ImageNet normalisation, zero padding to a multiple of 32.
    """

    saved_backends = {"pil": "image_processing_pil_semask_mask2former.SeMaskMask2FormerImageProcessorPil"}

    def _resize_images(self, images: np.ndarray, output_size: tuple[int, int], resample, is_integer: bool):
        if not is_integer:
            return super()._resize_images(images, output_size, resample, is_integer)
        # integer images: the PIL backend's own resize, i.e. PIL's filter on the uint8 image, as detectron2 does
        size = SizeDict(height=output_size[0], width=output_size[1])
        images = np.clip(images, 0, 255).astype(np.uint8)
        return np.stack([self.resize(image, size, resample=resample) for image in images]).astype(np.float32)


__all__ = ["SeMaskMask2FormerImageProcessorPil", "SeMaskMask2FormerImageProcessorKwargs"]
