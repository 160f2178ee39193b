"""Backend-independent pieces of the SeMask Mask2Former image processors: size rule, padded size, post-processing.

The preprocessing flow is that of the keep-ratio processors (``image_processing_utils_segmentation.py``); these pieces
reproduce the detectron2 test path of the original SeMask-Mask2Former code, which differs from the SeMask-FPN
(mmseg) one and from transformers' ``Mask2FormerImageProcessor``:

* resize: detectron2 ``ResizeShortestEdge(short, max_size)`` (shortest edge 640 and longest at most 2560 for the
  ADE20K model, 1024 / 2048 for Cityscapes), sizes rounded with ``int(x + 0.5)`` (at least 1 pixel); uint8 images
  are resized like PIL's bilinear filter (antialiased when shrinking), float images by plain bilinear interpolation;
* padding: zero padding on the right and bottom (after normalisation) to a multiple of 32 (``size_divisibility``) of the
  largest image of the batch - no stretching; label maps are padded with 255;
* post-processing: mask logits upsampled to the padded size, semantic inference there, the padding cropped, then a
  bilinear resize to the target size (``sem_seg_postprocess``).

Portable remote code: only torch, numpy, PIL, transformers and sibling modules are imported (never torchvision).
"""

import torch
import torch.nn.functional as F
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_utils import SizeDict

from .image_processing_utils_segmentation import (
    SegmentationImageProcessingMixin,
    SegmentationImageProcessorKwargs,
    check_post_process_scores,
    check_post_process_sizes,
    check_scores_tensor,
    get_pad_size,
    round_side,
    validate_size,
)
from .image_processing_utils_segmentation import get_output_size as get_keep_ratio_processor_output_size


class SeMaskMask2FormerImageProcessorKwargs(SegmentationImageProcessorKwargs, total=False):
    r"""
    size_divisibility (`int`, *optional*, defaults to `self.size_divisibility`):
        Images are zero-padded on the right and bottom to a multiple of this (of the batch's largest size); 0 pads
        only to the batch's largest size.
    """

    size_divisibility: int


def get_resize_shortest_edge_output_size(height: int, width: int, shortest_edge: int, longest_edge: int | None):
    """Output ``(height, width)`` of detectron2's ``ResizeShortestEdge`` test transform: the short side is scaled to
    ``shortest_edge``; if the long side then exceeds ``longest_edge``, both are scaled down so it fits; each side is
    rounded with ``int(x + 0.5)`` as detectron2 does (transformers' own resize helpers truncate instead) and kept at
    least 1 pixel (see `round_side`): a 10000 x 10 image with (32, 64) becomes 64 x 1."""
    scale = shortest_edge / min(height, width)
    if height < width:
        new_height, new_width = shortest_edge, scale * width
    else:
        new_height, new_width = scale * height, shortest_edge
    if longest_edge is not None and max(new_height, new_width) > longest_edge:
        scale = longest_edge / max(new_height, new_width)
        new_height, new_width = new_height * scale, new_width * scale
    return round_side(new_height), round_side(new_width)


def get_output_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
    """Resized ``(height, width)``: ``{"shortest_edge", "longest_edge"}`` or ``{"shortest_edge"}`` is detectron2's
    ``ResizeShortestEdge``; ``{"longest_edge"}`` and ``{"height", "width"}`` resize as the keep-ratio processors."""
    validate_size(size)
    if size.shortest_edge is not None:
        longest = int(size.longest_edge) if size.longest_edge is not None else None
        return get_resize_shortest_edge_output_size(height, width, int(size.shortest_edge), longest)
    return get_keep_ratio_processor_output_size(height, width, size)


#: the largest side a model here pads a small input up to (the VW segmenters' minimum input side, 128): a batch
#: padded to less than that may be padded further by the model
LARGEST_MINIMUM_MODEL_SIDE = 128


class SeMaskMask2FormerImageProcessingMixin:
    """Defaults, size rule, padded size and post-processing of `SeMaskMask2FormerImageProcessor` and
    `SeMaskMask2FormerImageProcessorPil`. They sit in front of the keep-ratio processors in the MRO and reuse their
    input handling and preprocessing flow (``SegmentationImageProcessingMixin._preprocess``)."""

    valid_kwargs = SeMaskMask2FormerImageProcessorKwargs
    size = {"shortest_edge": 640, "longest_edge": 2560}
    size_divisibility = 32
    #: detectron2's test-time augmentation (``TEST.AUG``) resizes the shortest edge to each of ``MIN_SIZES`` under one
    #: ``MAX_SIZE``: the longest edge of the largest scale (hf_semseg.inference.processor_at_scale)
    multi_scale_longest_edge = "largest scale"
    validated_at_construction = (*SegmentationImageProcessingMixin.validated_at_construction, "size_divisibility")
    layout_settings = ("do_resize", "size", "do_pad", "pad_size", "size_divisibility")

    def _validate_preprocess_kwargs(self, size_divisor=None, size_divisibility=None, **kwargs):
        if size_divisibility is not None and (
            isinstance(size_divisibility, bool) or not isinstance(size_divisibility, int) or size_divisibility < 0
        ):
            raise ValueError(
                f"`size_divisibility` must be a whole number >= 0 (0: pad to the batch's largest size only), got "
                f"{size_divisibility!r}."
            )
        # the keep-ratio processors' `size_divisor` resizes up to a multiple (stretching), which the original
        # Mask2Former pipeline never does; refuse it rather than silently ignoring it
        if size_divisor:
            raise ValueError(
                f"size_divisor={size_divisor!r} (resize up to a multiple) is not part of the SeMask Mask2Former "
                "pipeline; it zero-pads to a multiple instead: use `size_divisibility`."
            )
        super()._validate_preprocess_kwargs(**kwargs)

    def _resize_steps(self, input_sizes: list, size: SizeDict, **kwargs) -> list:
        """One resize step: detectron2's ``ResizeShortestEdge`` (see `get_output_size`)."""
        return [[get_output_size(height, width, size) for height, width in input_sizes]]

    def _get_pad_size(self, output_sizes: list, pad_size: SizeDict | None, size_divisibility=None, **kwargs):
        return get_pad_size(output_sizes, pad_size, size_divisibility)

    def _padded_input_size(self, stride4: torch.Tensor, image_sizes: list | None, layout: dict) -> tuple[int, int]:
        """The size of the padded batch the model took, to which the original upsamples the mask logits
        (detectron2's ``images.tensor``): 4 x the stride-4 maps where the padding multiple is a multiple of 4 (32
        in every release); otherwise (``size_divisibility`` 0: the batch's largest image, unpadded) the largest of
        ``image_sizes`` rounded up to the multiple (the preprocessing's :func:`get_pad_size`), when its stride-4 maps
        are these (else 4 x them, as before: a model that pads further itself).

        With ``image_sizes`` (from the settings of ``layout``), the batch those settings pad must be the model's
        input: the same size, or smaller where a model pads further (VW's segmenters: each side to the smallest
        multiple of at least :data:`LARGEST_MINIMUM_MODEL_SIDE`); other sizes mean the images were processed with other settings and
        are refused (a `ValueError`), since the crop would be at the wrong place."""
        mask_size = (4 * stride4.shape[-2], 4 * stride4.shape[-1])
        divisor = layout["size_divisibility"] or 0
        if image_sizes is None:
            return mask_size
        pad_size = layout["pad_size"] if layout["do_pad"] else None
        padded = get_pad_size(image_sizes, pad_size, divisor if layout["do_pad"] else 0)
        padded = (padded.height, padded.width)
        if divisor and divisor % 4 == 0:
            minimum_side = -(-LARGEST_MINIMUM_MODEL_SIDE // divisor) * divisor  # the minimum, as a multiple
            explained = all(
                side == model_side or side < model_side == minimum_side for side, model_side in zip(padded, mask_size)
            )
            if not explained:
                # a model that pads to a coarser multiple than these settings (a VW segmenter's 64 behind 32)
                model_multiple = divisor
                while all(side % (2 * model_multiple) == 0 for side in mask_size):
                    model_multiple *= 2
                coarser = model_multiple > divisor and all(
                    model_side == -(-side // model_multiple) * model_multiple or model_side == minimum_side
                    for side, model_side in zip(padded, mask_size)
                )
                advice = (
                    f"the model pads its input to multiples of {model_multiple}, these settings to multiples of "
                    f"{divisor}: process and post-process the images with size_divisibility={model_multiple} (the "
                    "model's config.size_divisibility)"
                    if coarser
                    else "pass post_process_semantic_segmentation the settings the images were processed with (e.g. "
                    "`size=...`, `pad_size=...`), or their `image_sizes`"
                )
                raise ValueError(
                    f"the stride-4 maps of {stride4.shape[-2]}x{stride4.shape[-1]} cover a {mask_size[0]}x"
                    f"{mask_size[1]} input, but preprocessing with "
                    f"{self._layout_description(layout)} pads images of {[tuple(size) for size in image_sizes]} to "
                    f"{padded[0]}x{padded[1]}: {advice}"
                )
            return mask_size
        if (-(-padded[0] // 4), -(-padded[1] // 4)) != tuple(stride4.shape[-2:]):
            return mask_size
        return padded

    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes: list[tuple] | None = None,
        image_sizes: list[tuple] | None = None,
        return_segmentation_scores: bool = False,
        **preprocess_settings,
    ):
        """
        Turn the output of `SeMaskMask2FormerForSemanticSegmentation` into per-pixel class indices, as the original:
        mask logits upsampled (bilinear) to the padded input size, semantic inference there (per class, the sum over
        queries of softmax(class) without no-object times sigmoid(mask)), the padding cropped, then a bilinear resize
        to the target size.

        Args:
            outputs: model output with `class_queries_logits` and `masks_queries_logits` (the exact path), or only
                `logits` (semantic scores at stride 4, then upsampled instead of the mask logits - an approximation).
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`, *optional*):
                Final `(height, width)` of each prediction, normally the original image sizes.
            image_sizes (`list[tuple[int, int]]`, *optional*):
                The size of each image after resizing and before padding. By default derived from `target_sizes`
                with this processor's resize rule (exact when `target_sizes` are the original sizes); without either,
                nothing is cropped.
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                Return `SemanticSegmentationPostProcessorOutput`s with `segmentation` and the class scores
                `segmentation_scores` `(num_labels, height, width)` (the original's `sem_seg`).
            **preprocess_settings:
                The settings the images were processed with where the call overrode this processor's own (`size`,
                `do_resize`, `do_pad`, `pad_size`, `size_divisibility`): they decide each image's region in the
                padded batch. A batch those settings would not pad to the model's input size is refused. Settings
                that pad to no multiple of 4 (``size_divisibility`` 0) cannot tell padding the model added itself
                from its own rounding: pass the model's (``size_divisibility=model.config.size_divisibility``), as
                ``hf_semseg.inference.segmentation_scores`` does.

        Returns:
            `list[torch.Tensor]`: one int64 `(height, width)` map per image (or the output objects described above).
        """
        get = outputs.get if isinstance(outputs, dict) else lambda name: getattr(outputs, name, None)
        class_logits, mask_logits, logits = get("class_queries_logits"), get("masks_queries_logits"), get("logits")
        stride4 = mask_logits if mask_logits is not None and class_logits is not None else logits
        if stride4 is None:
            raise ValueError("outputs have neither class_queries_logits/masks_queries_logits nor logits")
        name, channels = ("masks_queries_logits", "num_queries") if stride4 is mask_logits else ("logits", "num_labels")
        check_post_process_scores(stride4, name, channels)
        if stride4 is mask_logits:
            check_scores_tensor(class_logits, "class_queries_logits", "(batch_size, num_queries, num_labels + 1)")
            if class_logits.ndim != 3 or not class_logits.is_floating_point() or class_logits.shape[-1] < 2:
                raise ValueError(
                    f"class_queries_logits have shape {tuple(class_logits.shape)} ({class_logits.dtype}); expected "
                    "floating-point (batch_size, num_queries, num_labels + 1) with at least one class besides "
                    "no-object"
                )
        batch_size = len(stride4)
        target_sizes = check_post_process_sizes(target_sizes, batch_size, "target_sizes")
        image_sizes = check_post_process_sizes(image_sizes, batch_size, "image_sizes")
        layout = self._layout(preprocess_settings)
        image_sizes = self._image_sizes_for(target_sizes, image_sizes, layout)
        padded_size = self._padded_input_size(stride4, image_sizes, layout)

        results = []
        for index in range(batch_size):
            if stride4 is mask_logits:
                masks = F.interpolate(mask_logits[index][None], size=padded_size, mode="bilinear", align_corners=False)
                probabilities = class_logits[index].softmax(dim=-1)[..., :-1]
                scores = torch.einsum("qk,qhw->khw", probabilities, masks[0].sigmoid())
            else:
                scores = F.interpolate(logits[index][None], size=padded_size, mode="bilinear", align_corners=False)[0]
            if image_sizes is not None:
                height, width = image_sizes[index]
                if height > padded_size[0] or width > padded_size[1]:
                    raise ValueError(
                        f"image size {(height, width)} of image {index} exceeds the padded input {padded_size}; pass "
                        "the unpadded sizes as `image_sizes`"
                    )
                scores = scores[:, :height, :width]
            if target_sizes is not None:
                scores = F.interpolate(scores[None], size=target_sizes[index], mode="bilinear", align_corners=False)[0]
            results.append((scores.argmax(dim=0), scores))

        if not return_segmentation_scores:
            return [segmentation for segmentation, _ in results]
        return [
            SemanticSegmentationPostProcessorOutput(data={"segmentation": segmentation, "segmentation_scores": scores})
            for segmentation, scores in results
        ]
