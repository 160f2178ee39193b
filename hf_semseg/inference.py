"""Inference the way the papers evaluate: whole image, sliding window, multi-scale + flip.

All functions take an hf-semseg (or transformers) segmentation model whose output has ``logits`` at any stride, and
normalised ``pixel_values`` ``(B, 3, H, W)``; they return scores at the input resolution ``(B, K, H, W)``.
mmsegmentation's ``mode='whole'`` / ``mode='slide'`` and ``--aug-test`` are the reference. A model that pads its input
to a multiple of ``config.size_divisibility`` (SeMask-Mask2Former, as detectron2) returns logits over the padded
image: :func:`logits_to_size` crops the padding before resizing, as detectron2's ``sem_seg_postprocess`` does.
"""

import torch
import torch.nn.functional as F


def logits_to_size(logits: torch.Tensor, input_size, size, size_divisibility: int = 0) -> torch.Tensor:
    """``logits`` of a model input of ``input_size`` ``(H, W)``, bilinearly resized to ``size``. With
    ``size_divisibility`` > 0 the model padded its input on the right and bottom to multiples of it and the logits
    cover that padded image: they are upsampled to the padded size, the padding is cropped, and only then resized."""
    height, width = (int(side) for side in input_size)
    if size_divisibility and size_divisibility > 0:
        padded = (height + -height % size_divisibility, width + -width % size_divisibility)
        if padded != (height, width):
            logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)[..., :height, :width]
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def crop_processor_padding(scores: torch.Tensor, processor, image_size) -> torch.Tensor:
    """``scores`` over the pixel values an image processor made from an image of ``image_size`` ``(H, W)``, cropped
    to the resized image when the processor pads its output (SeMask-Mask2Former's pads to ``size_divisibility``, as
    detectron2), so that resizing them back to the image does not stretch the padding over it."""
    if not getattr(processor, "size_divisibility", 0):
        return scores
    height, width = processor.get_output_size(*image_size) if processor.do_resize else tuple(image_size)
    return scores[..., :height, :width]


def model_size_divisibility(model) -> int:
    """The multiple a model pads its input to (``config.size_divisibility``; 0 for models that do not pad)."""
    return int(getattr(getattr(model, "config", None), "size_divisibility", 0) or 0)


def _upsampled_logits(model, pixel_values: torch.Tensor, size) -> torch.Tensor:
    logits = model(pixel_values=pixel_values).logits
    return logits_to_size(logits, pixel_values.shape[-2:], size, model_size_divisibility(model))


@torch.no_grad()
def whole_image_logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """One forward of the whole image, logits bilinearly resized to the input size (mmseg ``mode='whole'``)."""
    return _upsampled_logits(model, pixel_values, pixel_values.shape[-2:])


def window_origins(length: int, crop: int, stride: int) -> torch.Tensor:
    """Start offsets of mmseg's sliding windows along one axis: every ``stride``, the last window moved back so that it
    ends at the border; a single window when the image is smaller than the crop."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    starts = torch.arange(count) * stride
    return (torch.minimum(starts + crop, torch.tensor(length)) - crop).clamp(min=0)


@torch.no_grad()
def sliding_window_logits(
    model, pixel_values: torch.Tensor, crop_size: tuple[int, int], stride: tuple[int, int], window_batch_size: int = 8
) -> torch.Tensor:
    """mmseg ``mode='slide'``: logits of overlapping ``crop_size`` windows every ``stride`` pixels, each resized to
    its crop and averaged where windows overlap. Windows of all images are cut with one gather and run
    ``window_batch_size`` at a time. A stride of 0 or one larger than the crop (windows that leave pixels uncovered,
    which mmseg refuses too) is a ``ValueError``."""
    for name, value in (("crop_size", crop_size), ("stride", stride)):
        if len(value) != 2 or any(isinstance(side, bool) or not isinstance(side, int) or side < 1 for side in value):
            raise ValueError(f"{name} must be two positive integers (height, width), got {value!r}")
    if stride[0] > crop_size[0] or stride[1] > crop_size[1]:
        raise ValueError(
            f"stride {tuple(stride)} is larger than crop_size {tuple(crop_size)}: the windows would leave pixels "
            "uncovered; use a stride <= the crop size"
        )
    if window_batch_size < 1:
        raise ValueError(f"window_batch_size must be >= 1, got {window_batch_size}")
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
    """mmseg ``--aug-test``: for each scale ratio (and its horizontal flip), resize the input, run whole-image (or,
    with ``crop_size``/``stride``, sliding-window) inference, resize the logits back to the input size and average the
    softmax probabilities of all passes. Returns ``(B, K, H, W)`` probabilities."""
    size = pixel_values.shape[-2:]
    total, passes = None, 0
    for scale in scales:
        scaled_size = (int(size[0] * scale + 0.5), int(size[1] * scale + 0.5))
        scaled = F.interpolate(pixel_values, size=scaled_size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            inputs = scaled.flip(-1) if flipped else scaled
            if crop_size is None:
                logits = whole_image_logits(model, inputs)
            else:
                logits = sliding_window_logits(model, inputs, crop_size, stride or crop_size, window_batch_size)
            logits = logits.flip(-1) if flipped else logits
            probabilities = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(dim=1)
            total = probabilities if total is None else total + probabilities
            passes += 1
    return total / passes
