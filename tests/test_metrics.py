import numpy as np
import pytest
import torch

from hf_semseg.metrics import BoundaryIoU, MeanIoU, SegmentationMetrics, TrimapMeanIoU


def evaluate_mean_iou(predictions, references, num_labels, ignore_index):
    """evaluate's ``mean_iou`` written out (histograms over the non-ignored pixels of every pair, then totals)."""
    total = {name: np.zeros(num_labels) for name in ("intersect", "union", "prediction", "label")}
    for prediction, label in zip(predictions, references):
        mask = label != ignore_index
        prediction, label = prediction[mask], label[mask]
        intersect = prediction[prediction == label]
        bins = {"bins": num_labels, "range": (0, num_labels - 1)}
        area_intersect = np.histogram(intersect, **bins)[0]
        area_prediction = np.histogram(prediction, **bins)[0]
        area_label = np.histogram(label, **bins)[0]
        total["intersect"] += area_intersect
        total["prediction"] += area_prediction
        total["label"] += area_label
        total["union"] += area_prediction + area_label - area_intersect
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = total["intersect"] / total["union"]
        accuracy = total["intersect"] / total["label"]
    return {
        "mean_iou": np.nanmean(iou),
        "mean_accuracy": np.nanmean(accuracy),
        "overall_accuracy": total["intersect"].sum() / total["label"].sum(),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }


def test_hand_computed_example():
    metric = MeanIoU(num_labels=3, ignore_index=255)
    prediction = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
    reference = torch.tensor([[0, 1, 1, 1], [2, 2, 255, 255]])
    metric.update(prediction, reference)
    result = metric.compute()
    # class 0: I=1, U=2 (pred 0 at (0,0),(0,1); label 0 at (0,0)); class 1: I=2, U=3; class 2: I=2, U=2
    np.testing.assert_allclose(result["per_category_iou"], [1 / 2, 2 / 3, 1.0])
    np.testing.assert_allclose(result["per_category_accuracy"], [1.0, 2 / 3, 1.0])
    assert result["mean_iou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert result["overall_accuracy"] == pytest.approx(5 / 6)


def test_streaming_equals_evaluate_formula_on_random_batches():
    rng = np.random.default_rng(0)
    num_labels = 6
    predictions = [rng.integers(0, num_labels, (2, 17, 23)) for _ in range(4)]
    references = [rng.integers(0, num_labels - 1, (2, 17, 23)) for _ in range(4)]  # class 5 never labelled
    for reference in references:
        reference[rng.random(reference.shape) < 0.2] = 255
    predictions[0][0, 0, :5] = 9  # predictions outside the classes are misses
    metric = MeanIoU(num_labels)
    for prediction, reference in zip(predictions, references):
        metric.update(torch.from_numpy(prediction), reference)  # tensors and arrays both accepted
    ours = metric.compute()
    theirs = evaluate_mean_iou(
        [p for batch in predictions for p in batch], [r for batch in references for r in batch], num_labels, 255
    )
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
    np.testing.assert_allclose(ours["per_category_iou"], theirs["per_category_iou"])
    np.testing.assert_allclose(ours["per_category_accuracy"], theirs["per_category_accuracy"])
    assert np.isnan(ours["per_category_accuracy"][5])


def test_bad_input_is_named():
    metric = MeanIoU(4)
    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.long)  # noqa: E731
    with pytest.raises(ValueError, match=r"\[7\]"):
        metric.update(zeros(2, 2), torch.tensor([[0, 7], [1, 255]]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(zeros(2, 2), zeros(2, 3))
    metric.update(zeros(1, 2), zeros(1, 2))
    metric.reset()
    assert metric.confusion.sum() == 0 and metric.missed.sum() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_predictions_that_are_not_class_ids_are_refused(dtype):
    """Float maps (logits, probabilities) were truncated to class ids; now they are refused, saying what to do."""
    metric = MeanIoU(num_labels=3)
    with pytest.raises(TypeError, match=rf"predictions must be integer class ids, got {dtype} \(take the argmax"):
        metric.update(torch.tensor([[0.9, 1.7]]).to(dtype), torch.tensor([[0, 1]]))
    with pytest.raises(TypeError, match=rf"references must be integer class ids, got {dtype}"):
        metric.update(torch.tensor([[0, 1]]), torch.tensor([[0.0, 1.0]]).to(dtype))
    assert metric.confusion.sum() == 0


def test_class_ids_at_the_ends_of_the_range():
    """A prediction equal to ``num_labels`` (one past the last class) or -1 is a miss, counted in its label's area
    only; a reference equal to ``num_labels`` is refused, naming it; 0 and ``num_labels - 1`` are classes."""
    metric = MeanIoU(num_labels=3)
    metric.update(torch.tensor([[0, 3, 2, -1]]), torch.tensor([[0, 2, 2, 0]]))
    # class 0: I=1, label area 2 (one missed) -> 1/2; class 1: absent -> NaN; class 2: I=1, label area 2 -> 1/2
    np.testing.assert_allclose(metric.compute()["per_category_iou"], [1 / 2, np.nan, 1 / 2])
    assert metric.missed.tolist() == [1, 0, 1] and metric.confusion.sum() == 2
    with pytest.raises(ValueError, match=r"references contain labels \[3\] outside \[0, 3\) and 255"):
        metric.update(torch.tensor([[0, 1]]), torch.tensor([[3, 1]]))


@pytest.mark.parametrize("make", [lambda: MeanIoU(3), lambda: SegmentationMetrics(3)], ids=["MeanIoU", "all"])
def test_gather_outside_a_distributed_run_leaves_the_counts(make):
    """Without a process group (a single process, the evaluation script's default) ``gather`` has nothing to sum:
    the counts and the results stay as they were."""
    metric = make()
    metric.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [1, 2]]))
    before = metric.compute()
    metric.gather()
    after = metric.compute()
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def test_the_band_widths_default_to_the_papers():
    """Boundary IoU's dilation ratio is the paper's 0.02 of the diagonal; the trimap's half-width is 5 pixels (ours,
    documented); the combined metrics pass the same defaults on."""
    assert BoundaryIoU(3).dilation_ratio == 0.02 and TrimapMeanIoU(3).trimap_width == 5
    metrics = SegmentationMetrics(3)
    assert (metrics.boundary_iou.dilation_ratio, metrics.trimap_mean_iou.trimap_width) == (0.02, 5)
