"""Image processor for SeMask Mask2Former (torchvision backend, the default one).

Reproduces the detectron2 test path of the original SeMask-Mask2Former code (see
``image_processing_utils_semask_mask2former.py``): ``ResizeShortestEdge`` resize (PIL-like antialiased filter for
uint8 images), ImageNet mean/std normalisation on RGB, zero padding to a multiple of 32, and post-processing at the
padded size with the padding cropped. The flow is that of `KeepRatioImageProcessor`; the PIL/NumPy twin is
``SeMaskMask2FormerImageProcessorPil``.

Portable remote code: only torch, torchvision, numpy, PIL, transformers and sibling modules are imported.
"""

import torch

from .image_processing_keep_ratio import KeepRatioImageProcessor
from .image_processing_pil_semask_mask2former import SeMaskMask2FormerImageProcessorPil  # noqa: F401  (saved with this module)
from .image_processing_utils_segmentation import pil_nearest_indices, torch_interpolation_mode
from .image_processing_utils_semask_mask2former import (  # the kwargs class: this module's `valid_kwargs`
    SeMaskMask2FormerImageProcessingMixin,
    SeMaskMask2FormerImageProcessorKwargs,
)


class SeMaskMask2FormerImageProcessor(SeMaskMask2FormerImageProcessingMixin, KeepRatioImageProcessor):
    r"""
    Image processor for SeMask Mask2Former semantic segmentation (torchvision backend; `SeMaskMask2FormerImageProcessorPil`
    is the PIL/NumPy twin). Input handling (RGB conversion, accepted types, label reduction, error messages) is that of
    `KeepRatioImageProcessor`; the differences are those of the original detectron2 pipeline:

    Args:
        size (`dict[str, int]`, *optional*, defaults to `{"shortest_edge": 640, "longest_edge": 2560}`):
            `{"shortest_edge": S, "longest_edge": L}` is detectron2's `ResizeShortestEdge(S, max_size=L)`: the short
            side becomes `S` unless the long side would exceed `L`, sizes rounded with `int(x + 0.5)` as detectron2
            does (not truncated as in transformers' own processors) and at least 1 pixel. Use 640/2560
            for the ADE20K model and 1024/2048 for Cityscapes. `{"height": H, "width": W}` resizes to a fixed size.
        resample (`PILImageResampling`, *optional*, defaults to `BILINEAR`):
            Interpolation. uint8 images are resized like PIL's filters (BILINEAR: antialiased when shrinking, up to
            one level from PIL; NEAREST: PIL's pixel-centre sampling exactly), as detectron2 resizes uint8 images
            with PIL; float images by plain interpolation (detectron2's float path, floor nearest). BICUBIC is
            refused for uint8 images: torchvision's filter differs from PIL's by up to 24 levels (the PIL backend,
            `SeMaskMask2FormerImageProcessorPil`, resizes them with PIL itself).
        size_divisibility (`int`, *optional*, defaults to 32):
            Zero padding (after normalisation) on the right and bottom to a multiple of this of the batch's largest
            image; label maps are padded with 255. No stretching. The model sees the padding as context: an
            image's map in a batch with larger images differs from its map alone (detectron2 tests one at a time).
        do_reduce_labels (`bool`, *optional*, defaults to `False`):
            Map label 0 to 255 and reduce the others by 1 (ADE20K annotation files, as the original's preparation
            script does).
        (other arguments: see `KeepRatioImageProcessor`.)

    `post_process_semantic_segmentation(outputs, target_sizes=[(h, w), ...])` gives label maps at the original image
    sizes exactly as the original's `semantic_inference` + `sem_seg_postprocess`.
    """

    saved_backends = {
        "torchvision": "image_processing_semask_mask2former.SeMaskMask2FormerImageProcessor",
        "pil": "image_processing_pil_semask_mask2former.SeMaskMask2FormerImageProcessorPil",
    }
    antialias_integer_images = True  # detectron2 resizes uint8 images with PIL

    def _resize_images(self, images: torch.Tensor, output_size: tuple[int, int], resample, is_integer: bool):
        mode = torch_interpolation_mode(resample)
        if is_integer and mode == "bicubic":
            raise ValueError(
                "resample=BICUBIC with integer (uint8) images: detectron2 resizes them with PIL's bicubic filter, "
                "which the torchvision backend does not reproduce (up to 24 intensity levels off). Use "
                '`SeMaskMask2FormerImageProcessorPil` (AutoImageProcessor\'s `backend="pil"`), resample=BILINEAR or '
                "NEAREST, or float images (resized by plain bicubic interpolation, as detectron2 resizes them)."
            )
        if is_integer and mode == "nearest":
            # PIL's NEAREST samples pixel centres; torchvision's NEAREST (floor) is detectron2's float path only
            rows = torch.from_numpy(pil_nearest_indices(images.shape[-2], output_size[0])).to(images.device)
            columns = torch.from_numpy(pil_nearest_indices(images.shape[-1], output_size[1])).to(images.device)
            return images[..., rows[:, None], columns]
        return super()._resize_images(images, output_size, resample, is_integer)


__all__ = ["SeMaskMask2FormerImageProcessor", "SeMaskMask2FormerImageProcessorKwargs"]
