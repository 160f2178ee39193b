"""Keep-ratio image processor of SeMask-FPN, VWFormer and Pale (torchvision backend, the default one).

Reproduces the mmseg test pipeline of these models: keep-ratio resize as mmcv ``imrescale(img, (2048, 512))`` with
bilinear interpolation and no antialiasing (OpenCV ``INTER_LINEAR``), optional ``ResizeToMultiple`` (``size_divisor``),
ImageNet mean/std normalisation on RGB. The flow is ``SegmentationImageProcessingMixin``'s
(``image_processing_utils_segmentation.py``); this module only adds the torchvision primitives. The PIL/NumPy twin is
``KeepRatioImageProcessorPil`` in ``image_processing_pil_keep_ratio.py``.

Portable remote code: only torch, torchvision, numpy, PIL, transformers and sibling modules are imported.
"""

import PIL.Image
import torch
from torchvision.transforms.v2 import functional as tvF
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import SizeDict
from transformers.utils import logging

from .image_processing_pil_keep_ratio import (  # the PIL twin is saved with this module
    KeepRatioImageProcessorKwargs,
    KeepRatioImageProcessorPil,  # noqa: F401
    SeMaskImageProcessorKwargs,
)
from .image_processing_utils_segmentation import (
    SegmentationImageProcessingMixin,
    has_transparency,
    load_image_file,
    torch_interpolation_mode,
)


logger = logging.get_logger(__name__)

_TORCHVISION_MODES = {
    "nearest": tvF.InterpolationMode.NEAREST,
    "bilinear": tvF.InterpolationMode.BILINEAR,
    "bicubic": tvF.InterpolationMode.BICUBIC,
}


class KeepRatioImageProcessor(SegmentationImageProcessingMixin, TorchvisionBackend):
    r"""
    Image processor for SeMask-FPN, VWFormer and Pale semantic segmentation (torchvision backend; see
    `KeepRatioImageProcessorPil` for the PIL/NumPy backend, which gives the same numbers up to one intensity level).

    Pipeline (the original mmseg test pipeline): convert to RGB, keep-ratio resize, rescale by 1/255, normalise with
    the ImageNet mean/std; segmentation maps are optionally label-reduced, nearest-resized to the image size and
    returned as int64 `labels` in which 255 means "ignore".

    Args:
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Convert grayscale (1 channel / mode "L"), RGBA/LA/P... inputs to RGB (transparency composited on white).
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize the images (and segmentation maps).
        size (`dict[str, int]`, *optional*, defaults to `{"longest_edge": 2048, "shortest_edge": 512}`):
            `{"longest_edge": L, "shortest_edge": S}` is mmcv `imrescale(img, (L, S))`: the image is scaled by
            `min(L / max(h, w), S / min(h, w))` and the new size is `(int(h * f + 0.5), int(w * f + 0.5))` - mmcv's
            rounding, not the truncation of transformers' own processors - with each side at least 1 pixel. Use
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
            they can be batched. A batch of same-size images is not changed. The model sees the padding as
            context: an image's map in such a batch differs near the padded border from its map alone (mmseg tests
            one image at a time).
        pad_size (`dict[str, int]`, *optional*):
            Fixed `{"height": H, "width": W}` to pad to instead of the batch maximum.

    Call with `segmentation_maps=` to also get `labels`; use `return_tensors="pt"` to get `pixel_values` as a
    `(B, 3, H, W)` float32 tensor and `labels` as a `(B, H, W)` int64 tensor. Use
    `post_process_semantic_segmentation(outputs, target_sizes=[(h, w), ...])` to get class-index maps at the original
    image sizes (each image of a padded batch is cropped out before its resize).
    """

    valid_kwargs = KeepRatioImageProcessorKwargs
    saved_backends = {
        "torchvision": "image_processing_keep_ratio.KeepRatioImageProcessor",
        "pil": "image_processing_pil_keep_ratio.KeepRatioImageProcessorPil",
    }
    #: antialias when shrinking integer images (like PIL); the mmseg pipeline resizes with OpenCV, which does not
    antialias_integer_images = False

    def convert_to_rgb(self, image: torch.Tensor, input_data_format=None) -> torch.Tensor:
        # The base composites RGBA images in [0, 1] and converts back with `tvF.to_dtype`, which truncates: one level
        # below PIL's `alpha_composite` and the PIL backend, which round. Integer RGBA images are composited here.
        if image.ndim == 3 and image.shape[0] == 4 and not image.is_floating_point():
            alpha = image[3:4] / 255.0
            return (image[:3] * alpha + (1.0 - alpha) * 255.0).round().to(image.dtype)
        return super().convert_to_rgb(image, input_data_format=input_data_format)

    def _read_image_file(self, path: str) -> torch.Tensor | PIL.Image.Image:
        # decoded as transformers' torchvision backend decodes files: a (C, H, W) tensor, uint16 for 16-bit PNGs;
        # its decoder drops an alpha channel, so a file with transparency is read as the PIL backend reads it
        # (composited on white, as `do_convert_rgb` does for the same image given as a PIL image or an array)
        try:
            with PIL.Image.open(path) as header:  # reads the header only
                transparent = has_transparency(header)
        except Exception:  # a file PIL cannot open: left to the torchvision decoder (and its error)
            transparent = False
        return load_image_file(path) if transparent else self.fetch_images(path)

    def _stack(self, images: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([image.to(torch.float32) for image in images])

    def _resize_images(self, images: torch.Tensor, output_size: tuple[int, int], resample, is_integer: bool):
        # the torchvision mode is passed explicitly: the base maps PIL's NEAREST to NEAREST_EXACT, OpenCV's is NEAREST
        mode = _TORCHVISION_MODES[torch_interpolation_mode(resample)]
        antialias = self.antialias_integer_images and is_integer and mode != tvF.InterpolationMode.NEAREST
        if antialias and output_size[1] == 1:
            # torch's antialiased interpolation gives every row one value when the output is one pixel wide (a torch
            # bug: a 4000 x 2 image became one flat colour); the same separable filter on the transposed image, one
            # pixel high, is right (within a level of PIL's)
            size = SizeDict(height=1, width=output_size[0])
            images = self.resize(images.transpose(-1, -2), size, resample=mode, antialias=True).transpose(-1, -2)
        else:
            size = SizeDict(height=output_size[0], width=output_size[1])
            images = self.resize(images, size, resample=mode, antialias=antialias)
        return images.round_().clamp_(0, 255) if is_integer else images


class SeMaskImageProcessor(KeepRatioImageProcessor):
    """Deprecated: the former name of `KeepRatioImageProcessor`, kept so that folders saved under that name load."""

    def __init__(self, **kwargs):
        logger.warning_once("`SeMaskImageProcessor` is deprecated; use `KeepRatioImageProcessor`.")
        super().__init__(**kwargs)


__all__ = [
    "KeepRatioImageProcessor",
    "KeepRatioImageProcessorKwargs",
    "SeMaskImageProcessor",
    "SeMaskImageProcessorKwargs",
]
