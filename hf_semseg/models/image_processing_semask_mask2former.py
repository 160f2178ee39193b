"""Image processor for SeMask Mask2Former (torchvision backend, the default one).

Reproduces the detectron2 test path of the original SeMask-Mask2Former code (see
``image_processing_utils_semask_mask2former.py``): ``ResizeShortestEdge`` resize (PIL-like bilinear filter for uint8
images), ImageNet mean/std normalisation on RGB, zero padding to a multiple of 32, and post-processing at the padded
size with the padding cropped. The PIL/NumPy twin is ``SeMaskMask2FormerImageProcessorPil``.

Portable remote code: only torch, torchvision, numpy, PIL, transformers and sibling modules are imported.
"""

import torch
from torchvision.transforms.v2 import functional as tvF
from transformers.image_processing_base import BatchFeature

from .image_processing_keep_ratio import KeepRatioImageProcessor
from .image_processing_pil_semask_mask2former import SeMaskMask2FormerImageProcessorPil  # noqa: F401  (saved with this module)
from .image_processing_utils_segmentation import IGNORE_INDEX, check_stackable, reduce_labels
from .image_processing_utils_semask_mask2former import (
    SeMaskMask2FormerImageProcessingMixin,
    check_no_size_divisor,
    get_output_size,
    get_padded_size,
)


class SeMaskMask2FormerImageProcessor(SeMaskMask2FormerImageProcessingMixin, KeepRatioImageProcessor):
    r"""
    Image processor for SeMask Mask2Former semantic segmentation (torchvision backend; `SeMaskMask2FormerImageProcessorPil`
    is the PIL/NumPy twin). Input handling (RGB conversion, accepted types, label reduction, error messages) is that of
    `KeepRatioImageProcessor`; the differences are those of the original detectron2 pipeline:

    Args:
        size (`dict[str, int]`, *optional*, defaults to `{"shortest_edge": 640, "longest_edge": 2560}`):
            `{"shortest_edge": S, "longest_edge": L}` is detectron2's `ResizeShortestEdge(S, max_size=L)`: the short
            side becomes `S` unless the long side would exceed `L`, sizes rounded with `int(x + 0.5)`. Use 640/2560
            for the ADE20K model and 1024/2048 for Cityscapes. `{"height": H, "width": W}` resizes to a fixed size.
        resample (`PILImageResampling`, *optional*, defaults to `BILINEAR`):
            Interpolation. uint8 images are resized like PIL's filters (antialiased when shrinking) and rounded, as
            detectron2 resizes uint8 images with PIL; float images by plain interpolation (detectron2's float path).
        size_divisibility (`int`, *optional*, defaults to 32):
            Zero padding (after normalisation) on the right and bottom to a multiple of this of the batch's largest
            image; label maps are padded with 255. No stretching.
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
            is_float = image.is_floating_point()
            image = image.to(torch.float32)[None]
            if output_size != input_size:
                # uint8: PIL's filter (antialiased when shrinking); float: plain interpolation, both like detectron2
                antialias = not is_float and mode != tvF.InterpolationMode.NEAREST
                image = tvF.resize(image, list(output_size), interpolation=mode, antialias=antialias)
                if not is_float:
                    image = image.round_().clamp_(0, 255)
            image = self.rescale_and_normalize(image, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            pixel_values.append(image[0])

        labels = None
        if segmentation_maps is not None:
            labels = []
            for label, output_size in zip(segmentation_maps, output_sizes):
                if do_reduce_labels:
                    label = reduce_labels(label)
                if tuple(label.shape) != output_size:
                    label = tvF.resize(
                        label[None, None].to(torch.float64),
                        list(output_size),
                        interpolation=tvF.InterpolationMode.NEAREST,
                    )[0, 0].to(torch.int64)
                labels.append(label)

        if do_pad and pixel_values:
            pad_height, pad_width = get_padded_size(output_sizes, size_divisibility, pad_size)
            pixel_values = [self._pad_right_bottom(image, pad_height, pad_width, 0.0) for image in pixel_values]
            if labels is not None:
                labels = [self._pad_right_bottom(label, pad_height, pad_width, IGNORE_INDEX) for label in labels]

        data = {"pixel_values": pixel_values}
        if labels is not None:
            data["labels"] = labels
        return BatchFeature(data=data, tensor_type=return_tensors)


__all__ = ["SeMaskMask2FormerImageProcessor"]
