"""Settings and inputs a user of evaluate's ``mean_iou`` or of mmsegmentation plausibly passes to the streaming
metrics of :mod:`hf_semseg.metrics`, and what each one now gives: an error naming the argument, its value and what is
expected. Before, each reached torch (``torch.zeros`` of 2.5 classes, ``torch.where`` with ``ignore_index=None``,
``pad`` of a float width), NumPy (an "inhomogeneous shape") or gave a silent result (all-NaN metrics from
``compute()`` with nothing counted, a batch counted by one metric of three)."""

import math
import re
import warnings

import numpy as np
import pytest
import torch

from hf_semseg.metrics import BoundaryIoU, MeanIoU, SegmentationMetrics, TrimapMeanIoU


METRICS = pytest.mark.parametrize(
    "make", [MeanIoU, BoundaryIoU, TrimapMeanIoU, SegmentationMetrics], ids=["miou", "boundary", "trimap", "all"]
)


def maps(*shape, value=0):
    return torch.full(shape, value, dtype=torch.long)


@METRICS
@pytest.mark.parametrize("num_labels", [0, 2.5, True, "3", None])
def test_num_labels_must_be_a_positive_integer(make, num_labels):
    """2.5 and True reached ``torch.zeros`` ("takes 1 positional argument but 2 were given"), "3" and None a
    comparison with 0."""
    expected = rf"num_labels must be a positive integer \(the number of classes\), got {re.escape(repr(num_labels))}$"
    with pytest.raises(ValueError, match=expected):
        make(num_labels)


@METRICS
def test_num_labels_from_numpy_is_a_number_of_classes(make):
    metric = make(np.int64(3))
    assert metric.num_labels == 3 and type(metric.num_labels) is int


@METRICS
def test_ignore_index_must_be_an_integer(make):
    """``ignore_index=None`` reached ``torch.where(bool, Tensor, int)`` in the boundary metrics; in MeanIoU it only
    worked because ``tensor != None`` is the Python ``True``."""
    with pytest.raises(
        TypeError, match=r"ignore_index must be an integer label value \(255 in mmsegmentation .*got None"
    ):
        make(3, ignore_index=None)


@pytest.mark.parametrize("ratio", [math.inf, "0.02"])
def test_dilation_ratio_must_be_a_finite_number(ratio):
    """An infinite ratio failed in the first update ("cannot convert float infinity to integer"), a string in a
    comparison."""
    with pytest.raises(ValueError, match=rf"dilation_ratio must be a non-negative finite number, got {ratio!r}"):
        BoundaryIoU(3, dilation_ratio=ratio)


@pytest.mark.parametrize("width", [1.5, None])
def test_trimap_width_must_be_an_integer(width):
    """1.5 reached ``torch.nn.functional.pad`` in the first update ("must be tuple of ints"), None a comparison."""
    with pytest.raises(ValueError, match=rf"trimap_width must be a non-negative integer \(pixels\), got {width!r}"):
        TrimapMeanIoU(3, trimap_width=width)


@pytest.mark.parametrize("make", [MeanIoU, BoundaryIoU], ids=["miou", "boundary"])
def test_compute_before_anything_was_counted_warns(make):
    """``compute()`` with no update returned NaN for every statistic, without a word: NaN still (as evaluate's
    ``mean_iou``), with a warning that says why."""
    metric = make(3)
    with pytest.warns(UserWarning, match=r"\.compute\(\): no labelled pixel has been counted \(no update\(\) yet"):
        result = metric.compute()
    assert all(math.isnan(value) for key, value in result.items() if key.startswith("mean"))
    metric.update(maps(1, 4, 4), maps(1, 4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.compute()
    metric.reset()
    with pytest.warns(UserWarning, match="no labelled pixel has been counted"):
        metric.compute()


@pytest.mark.parametrize("make", [MeanIoU, BoundaryIoU, SegmentationMetrics], ids=["miou", "boundary", "all"])
def test_compute_when_every_reference_was_ignored_warns(make):
    """A split whose labels are all ``ignore_index`` (e.g. a wrong ``reduce_labels`` on a background-only split)
    gave NaN metrics silently; Boundary IoU's unions are 0 exactly then, as every labelled class has an inner
    boundary."""
    metric = make(3)
    metric.update(maps(2, 4, 4), maps(2, 4, 4, value=255))
    with pytest.warns(UserWarning, match=r"every reference pixel was ignore_index=255\): every statistic is NaN"):
        result = metric.compute()
    assert math.isnan(result["mean_iou" if make is not BoundaryIoU else "mean_boundary_iou"])


def test_an_empty_trimap_band_after_updates_is_still_nan():
    """Images of one class have no boundary, hence an empty band: NaN there, documented, not an error; and counts
    gathered from other processes are counted."""
    metric = TrimapMeanIoU(3)
    metric.update(maps(1, 4, 4), maps(1, 4, 4))
    assert math.isnan(metric.compute()["trimap_mean_iou"])
    gathered = TrimapMeanIoU(2)
    gathered.band.confusion[1, 1] = 5  # as another process's counts after gather()
    assert gathered.compute()["trimap_mean_iou"] == 1.0


@METRICS
def test_lists_of_maps_of_different_sizes_are_named(make):
    """evaluate's ``mean_iou`` takes lists of maps of any sizes; here NumPy's "inhomogeneous shape" named neither
    argument."""
    ragged = [np.zeros((2, 2), np.int64), np.zeros((3, 3), np.int64)]
    with pytest.raises(ValueError, match=r"predictions must be one array of class ids .* got a list of maps of diff"):
        make(3).update(ragged, ragged)


@pytest.mark.parametrize("shape", [(2, 1, 4, 4), (16,)], ids=["channel axis", "flat"])
def test_segmentation_metrics_refuse_a_batch_before_counting_it(shape):
    """MeanIoU takes any layout: it counted a ``(B, 1, H, W)`` batch before BoundaryIoU refused it, so a caller that
    went on had the three metrics out of step."""
    metric = SegmentationMetrics(3)
    with pytest.raises(
        ValueError, match=rf"label maps must be \(H, W\) or \(batch, H, W\), got shape {re.escape(str(shape))}$"
    ):
        metric.update(maps(*shape), maps(*shape))
    assert metric.mean_iou.confusion.sum() == 0 and metric.mean_iou.missed.sum() == 0
