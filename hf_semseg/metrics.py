"""Streaming semantic-segmentation metrics (offline: ``evaluate.load("mean_iou")`` needs the Hub).

:class:`MeanIoU` accumulates a ``num_labels x num_labels`` confusion matrix on torch, batch by batch, so an
evaluation never holds the logits of a whole split; ``compute()`` returns the keys and numbers of evaluate's
``mean_iou`` for the same inputs. In a distributed run the matrices are summed across processes.
"""

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
    """

    def __init__(self, num_labels: int, ignore_index: int = IGNORE_INDEX):
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        # confusion[label, prediction]; missed[label]: pixels of that label predicted as no class at all
        self.confusion = torch.zeros(num_labels, num_labels, dtype=torch.int64)
        self.missed = torch.zeros(num_labels, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()
        self.missed.zero_()

    @torch.no_grad()
    def update(self, predictions, references) -> None:
        predictions = torch.as_tensor(np.asarray(predictions) if not torch.is_tensor(predictions) else predictions)
        references = torch.as_tensor(np.asarray(references) if not torch.is_tensor(references) else references)
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
        predictions = predictions.reshape(-1).long()
        references = references.reshape(-1).long()
        valid = references != self.ignore_index
        out_of_range = valid & ((references < 0) | (references >= self.num_labels))
        if out_of_range.any():
            bad = references[out_of_range].unique()[:10].tolist()
            raise ValueError(f"references contain labels {bad} outside [0, {self.num_labels}) and {self.ignore_index}")
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
