"""Streaming semantic-segmentation metrics (offline: ``evaluate.load("mean_iou")`` needs the Hub).

:class:`MeanIoU` accumulates a ``num_labels x num_labels`` confusion matrix on torch, batch by batch, so an
evaluation never holds the logits of a whole split; ``compute()`` returns the keys and numbers of evaluate's
``mean_iou`` for the same inputs. :class:`BoundaryIoU` (Boundary IoU per class, Cheng et al. 2021) and
:class:`TrimapMeanIoU` (mIoU in a band around the reference boundaries, Kohli et al. 2009) stream the same way, on
``(batch, H, W)`` maps. In a distributed run the counts are summed across processes.
"""

import math
import numbers
import warnings

import numpy as np
import torch

from .models.configuration_utils_segmentation import IGNORE_INDEX


class MeanIoU:
    """mIoU / mean accuracy / overall accuracy from a streaming confusion matrix.

    Args:
        num_labels: number of classes; predictions and labels are class ids in ``[0, num_labels)``.
        ignore_index: label value excluded from every statistic (255 in mmsegmentation and hf-semseg).

    ``update(predictions, references)`` takes integer maps of equal shape (tensors or arrays, any batch layout; float
    or boolean maps are a ``TypeError``, never truncated to class ids);
    labels outside ``[0, num_labels)`` other than ``ignore_index`` raise a ``ValueError`` naming them, and
    predictions outside that range count as wrong (they never match a label), as in evaluate's ``mean_iou``.
    ``compute()`` before any labelled pixel was counted (no update, or only ``ignore_index`` references) returns
    NaN statistics (0 / 0), as evaluate's ``mean_iou`` does, with a ``UserWarning`` saying why.
    """

    def __init__(self, num_labels: int, ignore_index: int = IGNORE_INDEX):
        self.num_labels = _check_settings(num_labels, ignore_index)
        self.ignore_index = ignore_index
        # confusion[label, prediction]; missed[label]: pixels of that label predicted as no class at all
        self.confusion = torch.zeros(self.num_labels, self.num_labels, dtype=torch.int64)
        self.missed = torch.zeros(self.num_labels, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()
        self.missed.zero_()

    @torch.no_grad()
    def update(self, predictions, references) -> None:
        predictions, references = _integer_maps(predictions, references)
        predictions = predictions.reshape(-1).long()
        references = references.reshape(-1).long()
        valid = _check_references(references, self.num_labels, self.ignore_index)
        predictions, references = predictions[valid], references[valid]
        in_range = (predictions >= 0) & (predictions < self.num_labels)
        # a prediction outside the classes is a miss: it counts in the label's area, not in any intersection
        missed = references[~in_range]
        counts = torch.bincount(
            references[in_range] * self.num_labels + predictions[in_range], minlength=self.num_labels**2
        )
        confusion = counts.view(self.num_labels, self.num_labels).to(self.confusion.device)
        self.confusion += confusion
        self.missed += torch.bincount(missed, minlength=self.num_labels).to(self.missed.device)

    def gather(self) -> None:
        """Sums the confusion matrices of all processes (call once, before ``compute``, in a distributed run)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for tensor in (self.confusion, self.missed):
                torch.distributed.all_reduce(tensor)

    def compute(self) -> dict:
        """``mean_iou``, ``mean_accuracy``, ``overall_accuracy`` (floats) and ``per_category_iou``,
        ``per_category_accuracy`` (arrays, NaN for classes absent from labels and predictions), as evaluate's."""
        if self.confusion.sum() + self.missed.sum() == 0:
            warnings.warn(_NOTHING_COUNTED.format(name="MeanIoU", ignore_index=self.ignore_index), stacklevel=2)
        confusion = self.confusion.double()
        missed = self.missed.double()
        intersection = confusion.diag()
        area_label = confusion.sum(dim=1) + missed
        area_prediction = confusion.sum(dim=0)
        union = area_label + area_prediction - intersection
        iou = (intersection / union).numpy()
        accuracy = (intersection / area_label).numpy()
        with np.errstate(invalid="ignore"):
            return {
                "mean_iou": float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan"),
                "mean_accuracy": float(np.nanmean(accuracy)) if not np.isnan(accuracy).all() else float("nan"),
                "overall_accuracy": float(intersection.sum() / area_label.sum()),
                "per_category_iou": iou,
                "per_category_accuracy": accuracy,
            }


_NOTHING_COUNTED = (
    "{name}.compute(): no labelled pixel has been counted (no update() yet, or every reference pixel was "
    "ignore_index={ignore_index}): every statistic is NaN"
)


def _check_settings(num_labels, ignore_index) -> int:
    """``num_labels`` a positive integer (returned as ``int``) and ``ignore_index`` an integer, else a
    ``ValueError`` / ``TypeError`` naming them (``torch.zeros`` refused ``2.5`` or ``True`` in its own words;
    ``ignore_index=None`` reached ``torch.where`` in the boundary metrics)."""
    if isinstance(num_labels, bool) or not isinstance(num_labels, numbers.Integral) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer (the number of classes), got {num_labels!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(
            f"ignore_index must be an integer label value (255 in mmsegmentation and hf-semseg; a value no label "
            f"has ignores nothing), got {ignore_index!r}"
        )
    return int(num_labels)


def _as_tensor(name: str, values) -> torch.Tensor:
    """``values`` (a tensor, an array or nested lists) as a tensor; a list of maps of different sizes is refused."""
    if torch.is_tensor(values):
        return values
    try:
        return torch.as_tensor(np.asarray(values))
    except ValueError as error:  # NumPy: "inhomogeneous shape", a list of maps of different sizes
        raise ValueError(
            f"{name} must be one array of class ids (a map, or a batch of maps of one size), got a "
            f"{type(values).__name__} of maps of different shapes: update one image at a time"
        ) from error


def _integer_maps(predictions, references) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps as tensors of one shape; float, boolean or complex maps (not class ids) are refused, and so are
    lists of maps of different sizes (evaluate's layout; NumPy's own error named neither argument)."""
    predictions, references = _as_tensor("predictions", predictions), _as_tensor("references", references)
    for name, values in (("predictions", predictions), ("references", references)):
        if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
            raise TypeError(
                f"{name} must be integer class ids, got {values.dtype} (take the argmax over the class dimension "
                "of the logits first)"
            )
    if predictions.shape != references.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and references {tuple(references.shape)} differ in shape"
        )
    return predictions, references


def _label_maps(predictions, references) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps as ``(B, H, W)`` integer tensors (an ``(H, W)`` map is one image); float, boolean or complex maps and
    maps of other ranks or of different shapes are refused."""
    predictions, references = _integer_maps(predictions, references)
    if predictions.dim() not in (2, 3):
        raise ValueError(f"label maps must be (H, W) or (batch, H, W), got shape {tuple(predictions.shape)}")
    if predictions.dim() == 2:
        predictions, references = predictions[None], references[None]
    return predictions.long(), references.to(predictions.device).long()


def _check_references(references: torch.Tensor, num_labels: int, ignore_index: int) -> torch.Tensor:
    """The mask of the labelled pixels; labels outside ``[0, num_labels)`` other than ``ignore_index`` are refused."""
    valid = references != ignore_index
    out_of_range = valid & ((references < 0) | (references >= num_labels))
    if out_of_range.any():
        bad = references[out_of_range].unique()[:10].tolist()
        raise ValueError(f"references contain labels {bad} outside [0, {num_labels}) and {ignore_index}")
    return valid


def _sliding_max(values: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """``result[i] = max(values[i : i + size])`` along ``dim`` (which shrinks by ``size - 1``), with about
    ``log2(size)`` elementwise maxima: windows of doubling lengths, then two overlapping windows."""
    span = 1  # values[i] holds the maximum over [i, i + span)
    while 2 * span <= size:
        length = values.shape[dim] - span
        values = torch.maximum(values.narrow(dim, 0, length), values.narrow(dim, span, length))
        span *= 2
    rest = size - span
    if rest:
        length = values.shape[dim] - rest
        values = torch.maximum(values.narrow(dim, 0, length), values.narrow(dim, rest, length))
    return values


def _square_max(values: torch.Tensor, radius: int, padding: int = 0) -> torch.Tensor:
    """Maximum of ``(B, H, W)`` float ``values`` over the ``(2 radius + 1)``-square around each pixel (a square window
    is separable: a row pass, then a column pass), after adding ``padding`` pixels of ``-inf`` on every side."""
    if padding:
        values = torch.nn.functional.pad(values, (padding,) * 4, value=-float("inf"))
    size = 2 * radius + 1
    return _sliding_max(_sliding_max(values, size, -1), size, -2)


def inner_boundaries(label_maps: torch.Tensor, distance: int) -> torch.Tensor:
    """For ``(B, H, W)`` integer maps, the pixels within chessboard ``distance`` of a pixel with another value or of
    the outside of the image: for every value ``c``, ``(label_maps == c) & result`` is the inner boundary of the mask
    of ``c``, i.e. the mask minus its erosion by ``distance`` iterations of a 3x3 square on the mask padded with
    zeros (``cv2.erode`` in the Boundary IoU reference code), for all values at once.

    A pixel is on the boundary of its own value exactly when the ``(2 distance + 1)``-square around it, with the
    outside of the image counted as a distinct value, is not constant, i.e. when its maximum and minimum differ.
    """
    if distance < 1:
        raise ValueError(f"distance must be at least 1, got {distance}")
    # values below 2**24 are exact in float32; the maps of the metrics below hold at most num_labels + 1 values
    values = label_maps.float()
    outside = values.min() - 1  # a value no pixel has: the outside of the image differs from every mask
    padded = torch.nn.functional.pad(values, (distance,) * 4, value=float(outside))
    return _square_max(padded, distance) != -_square_max(-padded, distance)


def boundary_distance(height: int, width: int, dilation_ratio: float) -> int:
    """Width ``d`` of the boundary band of Boundary IoU: ``max(1, round(dilation_ratio * image diagonal))`` with
    Python's ``round`` (halves to even), as the reference code's ``mask_to_boundary``."""
    return max(1, int(round(dilation_ratio * (height**2 + width**2) ** 0.5)))


class BoundaryIoU:
    """Boundary IoU (Cheng, Girshick, Dollár, Berg, Kirillov, "Boundary IoU: Improving Object-Centric Image
    Segmentation Evaluation", CVPR 2021) per class over a dataset, streamed.

    Args:
        num_labels: number of classes; predictions and labels are class ids in ``[0, num_labels)``.
        dilation_ratio: the band width as a fraction of the image diagonal (0.02 in the paper).
        ignore_index: label value excluded from every count (255 in mmsegmentation and hf-semseg).

    What is computed, for each image of each ``update`` and each class ``c``:

    - ``G`` and ``P``: the masks of ``c`` in the reference and the prediction;
    - ``d = max(1, round(dilation_ratio * sqrt(H**2 + W**2)))`` for the image's height ``H`` and width ``W``, as the
      paper's reference implementation;
    - ``G_d``, ``P_d``: the inner boundaries, the pixels of the mask within chessboard distance ``d`` of a pixel
      outside the mask or outside the image, i.e. the mask minus its erosion by ``d`` iterations of a 3x3 square with
      the image padded with non-mask pixels (the reference implementation: zero padding, ``cv2.erode`` with a 3x3
      kernel, ``d`` iterations). These are the paper's ``G_d ∩ G`` and ``P_d ∩ P``;
    - ``intersection[c] += |G_d ∩ P_d|`` and ``union[c] += |G_d ∪ P_d|``, both counted over the pixels whose reference
      is not ``ignore_index`` (ours: the paper does not treat unlabelled pixels). Ignored pixels belong to no
      reference mask, so the edge of an ignored region is a reference contour; predictions there still shape the
      predicted masks (and their contours), only the counts skip those pixels.

    ``compute()`` returns ``per_category_boundary_iou = intersection / union`` (NaN for a class with an empty union:
    absent from the references and the predictions on labelled pixels) and ``mean_boundary_iou``, its mean over the
    other classes; before any labelled pixel was counted they are NaN, with a ``UserWarning`` (every labelled pixel's
    class has a non-empty inner boundary, so the unions are all 0 exactly then). Accumulating intersections and unions over the
    dataset per class, rather than averaging per image, is ours, the same reduction as :class:`MeanIoU` (the paper
    defines Boundary IoU for one pair of masks and uses it for instance and panoptic segmentation).

    ``update(predictions, references)`` takes integer maps of equal shape, ``(H, W)`` or ``(batch, H, W)`` (tensors
    or arrays; sizes may differ from one call to the next); float or boolean maps are a ``TypeError``; labels outside
    ``[0, num_labels)`` other than ``ignore_index`` raise a ``ValueError`` naming them; predictions outside that range
    belong to no class (they only bound the predicted masks).
    """

    def __init__(self, num_labels: int, dilation_ratio: float = 0.02, ignore_index: int = IGNORE_INDEX):
        self.num_labels = _check_settings(num_labels, ignore_index)
        ratio = dilation_ratio  # not a number, negative, infinite or NaN (which fails every comparison)
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 <= ratio < math.inf:
            raise ValueError(f"dilation_ratio must be a non-negative finite number, got {dilation_ratio!r}")
        self.dilation_ratio = dilation_ratio
        self.ignore_index = ignore_index
        self.intersection = torch.zeros(self.num_labels, dtype=torch.int64)
        self.union = torch.zeros(self.num_labels, dtype=torch.int64)

    def reset(self) -> None:
        self.intersection.zero_()
        self.union.zero_()

    @torch.no_grad()
    def update(self, predictions, references) -> None:
        predictions, references = _label_maps(predictions, references)
        valid = _check_references(references, self.num_labels, self.ignore_index)
        if predictions.numel() == 0:
            return
        distance = boundary_distance(predictions.shape[1], predictions.shape[2], self.dilation_ratio)
        # every value outside the classes (ignore_index in the references, anything else in the predictions) becomes
        # num_labels: they only matter as "not this class"
        no_class = self.num_labels
        references = torch.where(valid, references, no_class)
        predictions = torch.where((predictions >= 0) & (predictions < self.num_labels), predictions, no_class)
        reference_boundary = inner_boundaries(references, distance) & valid  # valid: references != no_class
        prediction_boundary = inner_boundaries(predictions, distance) & valid & (predictions != no_class)
        both = reference_boundary & prediction_boundary & (references == predictions)
        bins = self.num_labels
        intersection = torch.bincount(references[both], minlength=bins)
        area_reference = torch.bincount(references[reference_boundary], minlength=bins)
        area_prediction = torch.bincount(predictions[prediction_boundary], minlength=bins)
        self.intersection += intersection.to(self.intersection.device)
        self.union += (area_reference + area_prediction - intersection).to(self.union.device)

    def gather(self) -> None:
        """Sums the counts of all processes (call once, before ``compute``, in a distributed run)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for tensor in (self.intersection, self.union):
                torch.distributed.all_reduce(tensor)

    def compute(self) -> dict:
        """``mean_boundary_iou`` (float) and ``per_category_boundary_iou`` (array, NaN for absent classes)."""
        if self.union.sum() == 0:
            warnings.warn(_NOTHING_COUNTED.format(name="BoundaryIoU", ignore_index=self.ignore_index), stacklevel=2)
        iou = (self.intersection.double() / self.union.double()).numpy()
        with np.errstate(invalid="ignore"):
            return {
                "mean_boundary_iou": float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan"),
                "per_category_boundary_iou": iou,
            }


class TrimapMeanIoU:
    """mIoU within a band (trimap) around the reference boundaries, streamed: the trimap evaluation of Kohli, Ladický,
    Torr, "Robust Higher Order Potentials for Enforcing Label Consistency", IJCV 2009 (CVPR 2008), also used by Chen
    et al., "Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015 (DeepLab).

    Args:
        num_labels: number of classes; predictions and labels are class ids in ``[0, num_labels)``.
        trimap_width: half-width of the band in pixels (see below); 5 by default (ours: the papers plot the IoU
            against the band width and fix none).
        ignore_index: label value excluded from every statistic (255 in mmsegmentation and hf-semseg).

    What is computed, for each image (the choices below are ours; the papers describe the band only in words):

    - boundary pixels: labelled pixels (reference not ``ignore_index``) whose 3x3 neighbourhood inside the image holds
      a labelled pixel of another class; both sides of a class change are boundary pixels, while the edges of ignored
      regions and of the image are not (datasets that draw a void band along object edges, as PASCAL VOC, therefore
      get no boundary where the void band is wider than one pixel; DeepLab's trimap is built around those void pixels
      instead);
    - the band: the pixels within chessboard distance ``trimap_width`` of a boundary pixel (``trimap_width=0``: the
      boundary pixels only);
    - the band pixels go into a :class:`MeanIoU` (the same confusion matrix, ignored pixels and out-of-range
      predictions as there), whose ``mean_iou`` and ``per_category_iou`` are returned by ``compute()`` as
      ``trimap_mean_iou`` and ``per_category_trimap_iou``.

    ``update(predictions, references)`` takes integer maps of equal shape, ``(H, W)`` or ``(batch, H, W)`` (tensors
    or arrays; sizes may differ from one call to the next); float or boolean maps are a ``TypeError``; labels outside
    ``[0, num_labels)`` other than ``ignore_index`` raise a ``ValueError`` naming them.
    """

    def __init__(self, num_labels: int, trimap_width: int = 5, ignore_index: int = IGNORE_INDEX):
        if isinstance(trimap_width, bool) or not isinstance(trimap_width, numbers.Integral) or trimap_width < 0:
            raise ValueError(f"trimap_width must be a non-negative integer (pixels), got {trimap_width!r}")
        self.trimap_width = trimap_width
        self.band = MeanIoU(num_labels, ignore_index=ignore_index)
        self.num_labels = self.band.num_labels
        self.ignore_index = ignore_index

    def reset(self) -> None:
        self.band.reset()

    @torch.no_grad()
    def update(self, predictions, references) -> None:
        predictions, references = _label_maps(predictions, references)
        valid = _check_references(references, self.num_labels, self.ignore_index)
        if predictions.numel() == 0:
            return
        # a labelled pixel is on a boundary when the 3x3 maximum or minimum of the labelled pixels around it differs
        # from its label; ignored pixels and the outside of the image (-inf padding) take part in neither
        values = references.float()
        highest = _square_max(torch.where(valid, values, -1.0), 1, padding=1)
        lowest = -_square_max(torch.where(valid, -values, -float(self.num_labels)), 1, padding=1)
        boundary = valid & ((highest != values) | (lowest != values))
        width = self.trimap_width
        band = _square_max(boundary.float(), width, padding=width) > 0 if width else boundary
        self.band.update(predictions[band], references[band])

    def gather(self) -> None:
        """Sums the confusion matrices of all processes (call once, before ``compute``, in a distributed run)."""
        self.band.gather()

    def compute(self) -> dict:
        """``trimap_mean_iou`` (float) and ``per_category_trimap_iou`` (array, NaN for classes absent from the band;
        all NaN when the band is empty, e.g. images of one class: no warning)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = self.band.compute()
        return {"trimap_mean_iou": result["mean_iou"], "per_category_trimap_iou": result["per_category_iou"]}


class SegmentationMetrics:
    """:class:`MeanIoU`, :class:`BoundaryIoU` and :class:`TrimapMeanIoU` of the same predictions, as the evaluation
    script and the training scripts' evaluations report them.

    ``update(predictions, references)`` updates the three; ``reduce(function)`` replaces every counting tensor of the
    three by ``function(tensor)`` (e.g. accelerate's ``reduce(..., "sum")``; :meth:`gather` sums with
    ``torch.distributed``); ``compute()`` merges their results: ``mean_iou``, ``mean_accuracy``,
    ``overall_accuracy``, ``mean_boundary_iou``, ``trimap_mean_iou`` and the per-category arrays.
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int = IGNORE_INDEX,
        dilation_ratio: float = 0.02,
        trimap_width: int = 5,
    ):
        self.mean_iou = MeanIoU(num_labels, ignore_index)
        self.boundary_iou = BoundaryIoU(num_labels, dilation_ratio, ignore_index)
        self.trimap_mean_iou = TrimapMeanIoU(num_labels, trimap_width, ignore_index)
        self.num_labels, self.ignore_index = self.mean_iou.num_labels, ignore_index

    def _counts(self) -> list[tuple[object, str]]:
        band = self.trimap_mean_iou.band
        return [
            (self.mean_iou, "confusion"),
            (self.mean_iou, "missed"),
            (self.boundary_iou, "intersection"),
            (self.boundary_iou, "union"),
            (band, "confusion"),
            (band, "missed"),
        ]

    def update(self, predictions, references) -> None:
        # the boundary metrics' checks (rank, dtypes, shapes) first: MeanIoU takes any rank, and counted a (B, 1, H, W)
        # batch before BoundaryIoU refused it, leaving the three metrics out of step
        predictions, references = _label_maps(predictions, references)
        for metric in (self.mean_iou, self.boundary_iou, self.trimap_mean_iou):
            metric.update(predictions, references)

    def reduce(self, function) -> None:
        for owner, name in self._counts():
            setattr(owner, name, function(getattr(owner, name)))

    def gather(self) -> None:
        """Sums the counts of all processes (call once, before ``compute``, in a distributed run)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for owner, name in self._counts():
                torch.distributed.all_reduce(getattr(owner, name))

    def reset(self) -> None:
        for metric in (self.mean_iou, self.boundary_iou, self.trimap_mean_iou):
            metric.reset()

    def compute(self) -> dict:
        return {**self.mean_iou.compute(), **self.boundary_iou.compute(), **self.trimap_mean_iou.compute()}
