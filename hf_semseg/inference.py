"""Inference the way the papers evaluate: whole image, sliding window, multi-scale + flip.

:func:`segmentation_scores` is the papers' protocol from an image: the model's own image processor at every test
scale (mmseg's ``MultiScaleFlipAug``, detectron2's ``TEST.AUG``), each pass's scores taken to the image's own size the
way the family's original does, and the passes averaged as it does. The other functions take an hf-semseg (or transformers) segmentation model whose output has ``logits`` at any stride, and
normalised ``pixel_values`` ``(B, 3, H, W)``; they return scores at the input resolution ``(B, K, H, W)``.
mmsegmentation's ``mode='whole'`` / ``mode='slide'`` and ``--aug-test`` are the reference. A model that pads its input
(the detectron2-style models: to multiples of ``config.size_divisibility``, VW's to at least 128 a side;
:func:`model_padded_size`) returns logits over the padded image: :func:`logits_to_size` crops the padding before
resizing, as detectron2's ``sem_seg_postprocess`` does.

Inputs are checked before any forward or resize, each error naming the argument, the value and what is expected:
``pixel_values`` a finite floating-point ``(B, C, H, W)`` tensor with at least one image of at least 1x1 pixel, on
the model's device; sizes, windows and scale ratios positive.
"""

import copy
import math
import numbers
import operator

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_utils import ChannelDimension

from .models.image_processing_utils_segmentation import resolve_channel_format


def _positive_pair(name: str, value) -> tuple[int, int]:
    """``value`` as two positive Python integers ``(height, width)`` (ints, NumPy integers, ``torch.Size``); anything
    else is a ``ValueError`` naming ``name`` and the value."""
    try:
        sides = tuple(value)
        if len(sides) == 2 and not any(isinstance(side, bool) for side in sides):
            pair = (operator.index(sides[0]), operator.index(sides[1]))
            if min(pair) >= 1:
                return pair
    except TypeError:  # not a sequence, or sides that are not integers (16.0)
        pass
    raise ValueError(f"{name} must be two positive integers (height, width), got {value!r}")


def _check_pixel_values(pixel_values, model=None) -> None:
    """What every function here takes: a finite floating-point ``(B, C, H, W)`` tensor, ``B, H, W >= 1``, on the
    device of ``model``'s weights. Checked before any window is cut or any input resized: torch's own errors
    (an empty ``torch.cat``, a reshape of 0 elements, ``upsample_bilinear2d`` not implemented for 'Long') named none
    of it, and NaN pixels gave NaN scores without a word."""
    if not torch.is_tensor(pixel_values):
        raise TypeError(f"pixel_values must be a torch.Tensor (B, C, H, W), got {type(pixel_values).__name__}")
    if pixel_values.dim() != 4:
        hint = " (a single image needs a batch axis: pixel_values[None])" if pixel_values.dim() == 3 else ""
        raise ValueError(
            f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}{hint}"
        )
    batch_size, _, height, width = pixel_values.shape
    if batch_size == 0 or height == 0 or width == 0:
        raise ValueError(
            f"pixel_values has shape {tuple(pixel_values.shape)}: pass at least one image of at least 1x1 pixel"
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values must be floating-point (normalised images, as the image processor makes them), got "
            f"{pixel_values.dtype}"
        )
    device = getattr(model, "device", None)
    # a model dispatched by accelerate (device_map) moves its inputs itself
    if isinstance(device, torch.device) and not getattr(model, "hf_device_map", None) and device != pixel_values.device:
        raise ValueError(
            f"pixel_values is on {pixel_values.device} but the model's weights are on {device}: move the input "
            "(pixel_values.to(model.device)) or the model"
        )
    # one reduction: NaN or inf make the sum non-finite; the elementwise test (several times a sum's cost on the CPU)
    # only confirms it, so a sum of finite values that overflowed float32 is no error
    if not torch.isfinite(pixel_values.sum(dtype=torch.float32)) and not torch.isfinite(pixel_values).all():
        raise ValueError("pixel_values holds NaN or infinite values: the scores would be NaN")


def logits_to_size(logits: torch.Tensor, input_size, size, padded_size=None) -> torch.Tensor:
    """``logits`` of a model input of ``input_size`` ``(H, W)``, bilinearly resized to ``size``. With ``padded_size``
    (the size the model padded that input to on the right and bottom, :func:`model_padded_size`) the logits cover
    the padded image: they are upsampled to the padded size, the padding is cropped, and only then resized.
    ``logits`` must be floating-point ``(B, K, h, w)`` and the sizes two positive integers, ``padded_size`` at least
    ``input_size`` (a ``ValueError`` / ``TypeError`` naming them; torch's ``interpolate`` named neither)."""
    if not torch.is_tensor(logits) or logits.dim() != 4:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise ValueError(f"logits must be a (batch, num_labels, height, width) tensor, got {shape}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating-point scores, got {logits.dtype}")
    height, width = _positive_pair("input_size", input_size)
    size = _positive_pair("size", size)
    if padded_size is not None:
        padded = _positive_pair("padded_size", padded_size)
        if padded[0] < height or padded[1] < width:
            raise ValueError(f"padded_size {padded} is smaller than the input_size {(height, width)} it pads")
        if padded != (height, width):
            logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)[..., :height, :width]
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def crop_processor_padding(scores: torch.Tensor, processor, image_size) -> torch.Tensor:
    """``scores`` over the pixel values an image processor made from an image of ``image_size`` ``(H, W)``, cropped
    to the resized image when the processor pads its output (SeMask-Mask2Former's pads to ``size_divisibility``, as
    detectron2; any hf-semseg processor to a fixed ``pad_size``), so that resizing them back to the image does not
    stretch the padding over it. The region is the processor's own (``get_unpadded_size``), the one its
    ``post_process_semantic_segmentation`` crops. ``image_size`` must be two positive integers (an image's
    ``(H, W, 3)`` shape is refused, not read as a size), and ``scores`` must cover that region (a ``ValueError``:
    scores at another resolution would be cropped at the wrong place)."""
    get_unpadded_size = getattr(processor, "get_unpadded_size", None)
    if get_unpadded_size is None:  # not one of this package's processors: nothing known to crop
        return scores
    region = get_unpadded_size(*_positive_pair("image_size", image_size))
    if region is None:  # the processor does not pad this image: nothing to crop
        return scores
    height, width = region
    if scores.shape[-2] < height or scores.shape[-1] < width:
        raise ValueError(
            f"scores have shape {tuple(scores.shape)} but the image lies in the top-left {height}x{width} pixels of "
            f"the processor's pixel values of a {image_size[0]}x{image_size[1]} image: pass scores at the pixel "
            "values' resolution (e.g. whole_image_logits' output)"
        )
    return scores[..., :height, :width]


def classifies_masks(model) -> bool:
    """Mask2Former / MaskFormer-style models: a config with ``num_queries`` (Mask2Former's) or a ``decoder_config``
    with it (MaskFormer's DETR decoder). Their ``logits`` are detectron2's semantic-inference scores (class
    probabilities times mask sigmoids), averaged as they are over test-time passes, not per-pixel logits."""
    config = getattr(model, "config", None)
    decoder_config = getattr(config, "decoder_config", None)
    if isinstance(decoder_config, dict):
        decoder_queries = decoder_config.get("num_queries")
    else:
        decoder_queries = getattr(decoder_config, "num_queries", None)
    return getattr(config, "num_queries", None) is not None or decoder_queries is not None


def model_padded_size(model, input_size) -> tuple[int, int]:
    """The ``(height, width)`` a model pads an input of ``input_size`` to before its backbone: the model's own
    ``padded_input_size`` (the detectron2-style models: each side to a multiple of ``config.size_divisibility``, VW's
    to at least 128), the input size itself for a model that does not pad."""
    input_size = _positive_pair("input_size", input_size)
    padded_input_size = getattr(model, "padded_input_size", None)
    if padded_input_size is None:
        return input_size
    return tuple(int(side) for side in padded_input_size(input_size))


def _upsampled_logits(model, pixel_values: torch.Tensor, size) -> torch.Tensor:
    logits = model(pixel_values=pixel_values).logits
    input_size = pixel_values.shape[-2:]
    return logits_to_size(logits, input_size, size, model_padded_size(model, input_size))


@torch.no_grad()
def whole_image_logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """One forward of the whole image, logits bilinearly resized to the input size (mmseg ``mode='whole'``)."""
    _check_pixel_values(pixel_values, model)
    return _upsampled_logits(model, pixel_values, pixel_values.shape[-2:])


def window_origins(length: int, crop: int, stride: int) -> torch.Tensor:
    """Start offsets of mmseg's sliding windows along one axis: every ``stride``, the last window moved back so that it
    ends at the border; a single window when the image is smaller than the crop. All three must be positive (a
    ``ValueError``; a stride of 0 divided by zero, a crop of 0 gave empty windows)."""
    if min(length, crop, stride) < 1:
        raise ValueError(f"length, crop and stride must be positive, got length={length}, crop={crop}, stride={stride}")
    count = max(length - crop + stride - 1, 0) // stride + 1
    starts = torch.arange(count) * stride
    return (torch.minimum(starts + crop, torch.tensor(length)) - crop).clamp(min=0)


def _window_settings(crop_size, stride, window_batch_size) -> tuple[tuple[int, int], tuple[int, int]]:
    """``crop_size`` and ``stride`` as pairs of positive integers, a stride no larger than the crop (mmseg's
    ``slide_inference`` divides by a count of 0 where windows leave pixels uncovered) and a positive integer
    ``window_batch_size``; else a ``ValueError`` naming the argument."""
    crop_size, stride = _positive_pair("crop_size", crop_size), _positive_pair("stride", stride)
    if stride[0] > crop_size[0] or stride[1] > crop_size[1]:
        raise ValueError(
            f"stride {stride} is larger than crop_size {crop_size}: the windows would leave pixels "
            "uncovered; use a stride <= the crop size"
        )
    size = window_batch_size
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"window_batch_size must be a positive integer, got {window_batch_size!r}")
    return crop_size, stride


@torch.no_grad()
def sliding_window_logits(
    model, pixel_values: torch.Tensor, crop_size: tuple[int, int], stride: tuple[int, int], window_batch_size: int = 8
) -> torch.Tensor:
    """mmseg ``mode='slide'``: logits of overlapping ``crop_size`` windows every ``stride`` pixels, each resized to
    its crop and averaged where windows overlap. Windows of all images are cut with one gather and run
    ``window_batch_size`` at a time. A stride of 0 or one larger than the crop (windows that leave pixels uncovered,
    which mmseg refuses too) is a ``ValueError``."""
    crop_size, stride = _window_settings(crop_size, stride, window_batch_size)
    _check_pixel_values(pixel_values, model)
    return _sliding_window_logits(model, pixel_values, crop_size, stride, window_batch_size)


def _sliding_window_logits(model, pixel_values, crop_size, stride, window_batch_size) -> torch.Tensor:
    batch_size, channels, height, width = pixel_values.shape
    crop_height, crop_width = min(crop_size[0], height), min(crop_size[1], width)
    rows = window_origins(height, crop_height, stride[0])[:, None] + torch.arange(crop_height)  # (nH, h)
    cols = window_origins(width, crop_width, stride[1])[:, None] + torch.arange(crop_width)  # (nW, w)
    # every (row window, column window) pair: (n, h, 1) and (n, 1, w) index grids, n = nH * nW
    row_index = rows[:, None, :, None].expand(-1, cols.shape[0], -1, -1).reshape(-1, crop_height, 1)
    col_index = cols[None, :, None, :].expand(rows.shape[0], -1, -1, -1).reshape(-1, 1, crop_width)
    # (B, C, n, h, w) -> (B * n, C, h, w)
    windows = pixel_values[:, :, row_index.to(pixel_values.device), col_index.to(pixel_values.device)]
    windows = windows.permute(0, 2, 1, 3, 4).reshape(-1, channels, crop_height, crop_width)
    window_logits = torch.cat(
        [
            _upsampled_logits(model, windows[start : start + window_batch_size], (crop_height, crop_width))
            for start in range(0, windows.shape[0], window_batch_size)
        ]
    )
    num_labels = window_logits.shape[1]
    # scatter-add every window's logits into its place: flat pixel index of each window pixel
    flat_index = (row_index * width + col_index).reshape(-1).to(pixel_values.device)  # (n * h * w,)
    window_logits = window_logits.view(batch_size, -1, num_labels, crop_height * crop_width)  # (B, n, K, h*w)
    values = window_logits.permute(0, 2, 1, 3).reshape(batch_size, num_labels, -1)  # (B, K, n*h*w)
    summed = values.new_zeros(batch_size, num_labels, height * width).index_add_(2, flat_index, values)
    counts = torch.bincount(flat_index, minlength=height * width).to(summed.dtype)
    return (summed / counts).view(batch_size, num_labels, height, width)


@torch.no_grad()
def multi_scale_flip_probabilities(
    model,
    pixel_values: torch.Tensor,
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
    flip: bool = True,
    crop_size: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    window_batch_size: int = 8,
) -> torch.Tensor:
    """Multi-scale + flip on pixel values: for each scale ratio (and its horizontal flip), resize the pixel values,
    run whole-image (or, with ``crop_size``/``stride``, sliding-window) inference, resize the logits back to the input
    size and average the softmax probabilities of all passes (mmseg ``--aug-test``); a Mask2Former-style model's
    semantic scores are averaged as they are, as detectron2's test-time augmentation averages them, but they are its
    combined stride-4 ``logits`` resized (an approximation: detectron2 upsamples the mask logits before the sigmoid,
    as :func:`segmentation_scores` does). Returns ``(B, K, H, W)``.

    The originals resize the image itself at every scale and run their whole test pipeline there (VWFormer's
    ``ResizeToMultiple(64)`` at each scale; detectron2's shortest-edge sizes): :func:`segmentation_scores` does
    that from an image and the model's processor and is the one that reproduces the papers' ms+flip figures.

    ``scales`` must be a non-empty sequence of positive finite ratios, each leaving the input at least 1x1 pixel
    (mmseg's ``img_ratios``); a ``stride`` needs a ``crop_size`` (without one every pass is whole-image: the stride
    was ignored). Checked before the first forward."""
    _check_pixel_values(pixel_values, model)
    size = pixel_values.shape[-2:]
    scaled_sizes = []
    for scale in _check_scales(scales):
        scaled_sizes.append((int(size[0] * scale + 0.5), int(size[1] * scale + 0.5)))
        if min(scaled_sizes[-1]) < 1:
            raise ValueError(
                f"scale {scale} resizes the {size[0]}x{size[1]} input to {scaled_sizes[-1][0]}x{scaled_sizes[-1][1]} "
                "pixels: each scale must leave at least 1x1 pixel"
            )
    if crop_size is None and stride is not None:
        raise ValueError(
            f"stride {stride!r} without crop_size: the stride of sliding-window inference needs its crop_size (without "
            "one every pass is whole-image)"
        )
    if crop_size is not None:
        crop_size, stride = _window_settings(crop_size, crop_size if stride is None else stride, window_batch_size)
    mask_classification = classifies_masks(model)
    total, passes = None, 0
    for scaled_size in scaled_sizes:
        scaled = F.interpolate(pixel_values, size=scaled_size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            inputs = scaled.flip(-1) if flipped else scaled
            if crop_size is None:
                logits = _upsampled_logits(model, inputs, inputs.shape[-2:])
            else:
                logits = _sliding_window_logits(model, inputs, crop_size, stride, window_batch_size)
            logits = logits.flip(-1) if flipped else logits
            scores = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            scores = scores if mask_classification else scores.softmax(dim=1)
            total = scores if total is None else total + scores
            passes += 1
    return total / passes


#: mmseg's ``--aug-test`` ratios (``img_ratios``) behind every ms+flip figure of the papers; the detectron2 configs'
#: ``TEST.AUG.MIN_SIZES`` are the test size times these ratios (256-896 for 512 models, 320-1120 for 640 ones).
TEST_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _check_scales(scales) -> tuple[float, ...]:
    if isinstance(scales, (str, bytes)) or not hasattr(scales, "__len__") or len(scales) == 0:
        raise ValueError(
            f"scales must be a non-empty sequence of positive ratios (e.g. (0.5, 1.0, 1.5)), got {scales!r}"
        )
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < scale < math.inf:
            raise ValueError(f"scales must be positive finite ratios, got {scale!r} in {tuple(scales)}")
    return tuple(float(scale) for scale in scales)


def processor_at_scale(processor, scale: float, scales=TEST_SCALES):
    """A copy of an hf-semseg image processor that resizes to its test size times ``scale``, as the originals' test-time
    augmentation does.

    * mmseg's ``MultiScaleFlipAug`` (SeMask-FPN, VWFormer, Pale): every bound of the size scaled and truncated,
      ``int(bound * scale)`` (``img_scale`` (2048, 512) at 0.75 is (1536, 384)); the rest of the pipeline (VWFormer's
      ``ResizeToMultiple``, the processor's ``size_divisor``) runs at every scale.
    * detectron2's ``TEST.AUG`` (the processors with ``multi_scale_longest_edge = "largest scale"``): the shortest
      edge ``int(shortest_edge * scale)``, the longest edge one bound for every scale, ``int(longest_edge *
      max(scales))`` (the released configs: ``MIN_SIZES`` the test size times the ratios, ``MAX_SIZE`` its longest
      edge times 1.75: 256-896 under 3584 = 2048 x 1.75 for 512 px ADE20K models, 320-1120 under 4480 for 640 px
      ones; Cityscapes' config says 4096 where this gives 3584, the same sizes for its 2:1 images). detectron2 resizes
      each scale from the image its test loader already resized (:func:`tta_source_image`, which
      :func:`segmentation_scores` passes these processors).
    """
    size = getattr(processor, "size", None)
    if size is None or not hasattr(processor, "get_unpadded_size"):
        raise ValueError(
            f"{type(processor).__name__} is not an hf-semseg image processor with a test size: multi-scale "
            "inference resizes the image with the model's own processor at every scale"
        )
    scale = _check_scales((scale,))[0]
    fixed_longest_edge = getattr(processor, "multi_scale_longest_edge", None) == "largest scale"
    longest_edge_factor = max(_check_scales(scales)) if fixed_longest_edge else scale
    scaled = {}
    for name in ("height", "width", "shortest_edge", "longest_edge"):
        bound = getattr(size, name, None)
        if bound is not None:
            factor = longest_edge_factor if name == "longest_edge" else scale
            scaled[name] = max(int(bound * factor), 1)
    scaled_processor = copy.deepcopy(processor)
    scaled_processor.size = type(size)(**scaled)
    return scaled_processor


def _image_size_of(image, input_data_format=None) -> tuple[int, int]:
    """``(height, width)`` of an image the processors take: PIL, or a NumPy array / torch tensor, grayscale
    ``(H, W)`` or with 1, 3 or 4 channels first or last, the channel axis found as the processors find it
    (:func:`~hf_semseg.models.image_processing_utils_segmentation.resolve_channel_format`; ``input_data_format``
    states it). transformers' ``get_image_size`` took a 3-row grayscale image for 3 channels and knew no RGBA."""
    if isinstance(image, PIL.Image.Image):
        width, height = image.size
        return int(height), int(width)
    if not hasattr(image, "shape") or len(image.shape) not in (2, 3):
        shape = f" of shape {tuple(image.shape)}" if hasattr(image, "shape") else ""
        raise ValueError(
            f"image must be a PIL image or an (H, W), (H, W, C) or (C, H, W) array, got {type(image).__name__}{shape}"
        )
    shape = tuple(int(side) for side in image.shape)
    if len(shape) == 2:
        return shape
    channels_first = resolve_channel_format(shape, 0, input_data_format) == ChannelDimension.FIRST
    return shape[1:] if channels_first else shape[:2]


def _model_padding_settings(model, processor, input_size: tuple[int, int]) -> dict:
    """The settings that tell a mask-classification processor's post-processing the padded input the model took,
    where the model padded its input further than the processor did: a processor that pads to no multiple of 4
    (``size_divisibility`` 0) would read stride-4 maps covering up to 3 rows or columns of the model's padding as the
    model's own rounding and stretch that padding over the image; one that pads to a finer multiple than the model's
    (32 for a VW segmenter's 64) would refuse the maps. With the model's multiple the post-processing upsamples to the
    model's padded input and crops its padding."""
    if model_padded_size(model, input_size) == tuple(input_size):
        return {}
    settings = {"size_divisibility": int(getattr(model.config, "size_divisibility", 0) or 0)}
    if not getattr(processor, "do_pad", True):  # one image: its own size, then the model's multiple
        settings.update(do_pad=True, pad_size=None)
    return settings


def _pass_scores(model, processor, pixel_values, image_size, unpadded_size, window) -> torch.Tensor:
    """One test-time pass: ``(K, H, W)`` scores at ``image_size`` of the image in the top-left ``unpadded_size`` of
    ``pixel_values``.

    Per-pixel models, as mmseg: the logits resized to the pixel values' size (``encode_decode``; sliding windows
    with ``window``), the processor's padding cropped, then resized to the image (``rescale=True``); logits, not
    probabilities. Mask2Former-style models, as detectron2: the processor's own post-processing (mask logits
    upsampled to the padded input, semantic inference there, the padding cropped, resized to the image)."""
    if window is not None:
        logits = _sliding_window_logits(model, pixel_values, *window)
    else:
        outputs = model(pixel_values=pixel_values)
        if classifies_masks(model):
            return processor.post_process_semantic_segmentation(
                outputs,
                target_sizes=[image_size],
                image_sizes=[unpadded_size],
                return_segmentation_scores=True,
                **_model_padding_settings(model, processor, tuple(pixel_values.shape[-2:])),
            )[0]["segmentation_scores"]
        input_size = pixel_values.shape[-2:]
        logits = logits_to_size(outputs.logits, input_size, input_size, model_padded_size(model, input_size))
    logits = logits[..., : unpadded_size[0], : unpadded_size[1]]
    return logits_to_size(logits, unpadded_size, image_size)[0]


def tta_source_image(processor, image, layout: dict | None = None) -> np.ndarray:
    """``image`` as detectron2's test loader hands it to its test-time augmentation (``DatasetMapperTTA``): resized
    to the processor's own test size (``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``) and rounded to uint8,
    neither normalised nor padded; ``(H, W, 3)`` uint8. Each scale is resized from it (two resizes, and sizes computed
    from its size: a pixel apart from those computed from the original's at some scales)."""
    resized = processor(
        image, do_rescale=False, do_normalize=False, do_pad=False, return_tensors="pt", **(layout or {})
    )["pixel_values"][0]
    # (3, H, W) float values of the uint8 scale -> (H, W, 3) uint8, as PIL's resize of a uint8 image gives
    return resized.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


@torch.no_grad()
def segmentation_scores(
    model,
    processor,
    image,
    scales=(1.0,),
    flip: bool = False,
    crop_size: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    window_batch_size: int = 8,
    input_data_format=None,
) -> torch.Tensor:
    """Class scores ``(K, H, W)`` of one ``image`` (PIL, or an array: ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``;
    ``input_data_format`` states where the channels are, as for the processors) at its own size, as the papers'
    evaluation computes them; their argmax is the prediction.

    Every pass runs the model's image processor on the image at one scale (:func:`processor_at_scale`; ``scales``
    ``(1.0,)`` is the processor as it is, :data:`TEST_SCALES` the papers' ms+flip) and, with ``flip``, again on its
    mirror image (the resized image flipped, the scores flipped back; a processor's padding stays right and bottom).
    Whole-image passes, or sliding windows with ``crop_size`` / ``stride`` (mmseg ``mode='slide'``; per-pixel models
    only). A model in bfloat16 gets its inputs in bfloat16 (as transformers' pipeline casts them) and the scores are
    float32. The passes are averaged as the originals average them: softmax probabilities of per-pixel models (mmseg's
    ``aug_test``), the raw semantic scores of Mask2Former-style models (detectron2's ``SemanticSegmentorWithTTA``).
    Several scales of a detectron2-style processor resize the image its test loader gives
    (:func:`tta_source_image`), as detectron2's ``DatasetMapperTTA`` does, not the original.
    """
    image_size = _image_size_of(image, input_data_format)
    layout = {} if input_data_format is None else {"input_data_format": input_data_format}
    scales = _check_scales(scales)
    if crop_size is None and stride is not None:
        raise ValueError(f"stride {stride!r} without crop_size: sliding-window inference needs its crop_size")
    window = None
    if crop_size is not None:
        if classifies_masks(model):
            raise ValueError(
                f"{type(model).__name__} classifies masks (detectron2's Mask2Former / MaskFormer): its originals "
                "evaluate whole images; sliding windows (crop_size / stride) are for per-pixel models"
            )
        crop_size, stride = _window_settings(crop_size, crop_size if stride is None else stride, window_batch_size)
        window = (crop_size, stride, window_batch_size)
    mask_classification = classifies_masks(model)
    if mask_classification and not hasattr(processor, "get_unpadded_size"):
        raise ValueError(
            f"{type(model).__name__} classifies masks: its scores come from its own hf-semseg image processor's "
            f"post-processing (detectron2's semantic inference), not from a {type(processor).__name__}"
        )
    device, dtype = getattr(model, "device", None), getattr(model, "dtype", None)
    # detectron2's test-time augmentation resizes every scale from the image its test loader already resized
    source, source_size, source_layout = image, image_size, layout
    if scales != (1.0,) and getattr(processor, "multi_scale_longest_edge", None) == "largest scale":
        source = tta_source_image(processor, image, layout)
        source_size, source_layout = source.shape[:2], {"input_data_format": "channels_last"}
    total, passes = None, 0
    for scale in scales:
        scaled_processor = processor if scales == (1.0,) else processor_at_scale(processor, scale, scales)
        pixel_values = scaled_processor(source, return_tensors="pt", **source_layout)["pixel_values"]
        if isinstance(device, torch.device):
            pixel_values = pixel_values.to(device)
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point:  # a bfloat16 model, as the pipeline casts
            pixel_values = pixel_values.to(dtype)
        _check_pixel_values(pixel_values, model)
        region = (
            scaled_processor.get_unpadded_size(*source_size) if hasattr(scaled_processor, "get_unpadded_size") else None
        )
        unpadded_size = tuple(region) if region is not None else tuple(pixel_values.shape[-2:])
        image_region = (..., slice(0, unpadded_size[0]), slice(0, unpadded_size[1]))
        for flipped in (False, True) if flip else (False,):
            inputs = pixel_values
            if flipped:  # the image mirrored, the processor's padding (right and bottom) left where it is
                inputs = pixel_values.clone()
                inputs[image_region] = pixel_values[image_region].flip(-1)
            scores = _pass_scores(model, scaled_processor, inputs, image_size, unpadded_size, window).float()
            scores = scores.flip(-1) if flipped else scores
            scores = scores if mask_classification else scores.softmax(dim=0)
            total = scores if total is None else total + scores
            passes += 1
    return total / passes
