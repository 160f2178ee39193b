import math

import numpy as np
import pytest
import torch

from hf_semseg.metrics import BoundaryIoU, TrimapMeanIoU, inner_boundaries


IGNORE = 255


# ----- slow direct definitions, pixel by pixel ------------------------------------------------------------------------


def chessboard_distance_to_outside(mask: np.ndarray, i: int, j: int) -> int:
    """Chessboard distance from pixel ``(i, j)`` to the nearest pixel outside ``mask`` or outside the image, by
    explicit search over growing squares."""
    height, width = mask.shape
    radius = 0
    while True:
        radius += 1
        if i - radius < 0 or j - radius < 0 or i + radius >= height or j + radius >= width:
            return radius  # a pixel of the square lies outside the image
        if not mask[i - radius : i + radius + 1, j - radius : j + radius + 1].all():
            return radius


def slow_inner_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Pixels of ``mask`` whose chessboard distance to the nearest pixel outside the mask or outside the image is at
    most ``d``."""
    boundary = np.zeros_like(mask)
    for i, j in np.argwhere(mask):
        boundary[i, j] = chessboard_distance_to_outside(mask, i, j) <= d
    return boundary


def iterated_erosion_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """The reference code's ``mask_to_boundary``: pad with one zero pixel, erode ``d`` times with a 3x3 square (pixels
    beyond the padded array do not erode, as cv2's default border), crop, subtract."""
    padded = np.pad(mask, 1, constant_values=False)
    height, width = padded.shape
    for _ in range(d):
        eroded = padded.copy()
        for i in range(height):
            for j in range(width):
                eroded[i, j] = padded[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].all()
        padded = eroded
    return mask & ~padded[1:-1, 1:-1]


def slow_boundary_iou_counts(predictions, references, num_labels, dilation_ratio):
    intersection = np.zeros(num_labels, dtype=np.int64)
    union = np.zeros(num_labels, dtype=np.int64)
    for prediction, reference in zip(predictions, references):
        height, width = reference.shape
        d = max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))
        labelled = reference != IGNORE
        for c in range(num_labels):
            reference_boundary = slow_inner_boundary(reference == c, d)
            prediction_boundary = slow_inner_boundary(prediction == c, d)
            intersection[c] += (reference_boundary & prediction_boundary & labelled).sum()
            union[c] += ((reference_boundary | prediction_boundary) & labelled).sum()
    return intersection, union


def slow_trimap_counts(predictions, references, num_labels, trimap_width):
    intersection = np.zeros(num_labels, dtype=np.int64)
    union = np.zeros(num_labels, dtype=np.int64)
    for prediction, reference in zip(predictions, references):
        height, width = reference.shape
        boundary = np.zeros(reference.shape, dtype=bool)
        for i in range(height):
            for j in range(width):
                if reference[i, j] == IGNORE:
                    continue
                for k in range(max(i - 1, 0), min(i + 2, height)):
                    for m in range(max(j - 1, 0), min(j + 2, width)):
                        if reference[k, m] != IGNORE and reference[k, m] != reference[i, j]:
                            boundary[i, j] = True
        band = np.zeros(reference.shape, dtype=bool)
        for i in range(height):
            for j in range(width):
                for k in range(max(i - trimap_width, 0), min(i + trimap_width + 1, height)):
                    for m in range(max(j - trimap_width, 0), min(j + trimap_width + 1, width)):
                        band[i, j] |= boundary[k, m]
        counted = band & (reference != IGNORE)
        for c in range(num_labels):
            intersection[c] += (counted & (reference == c) & (prediction == c)).sum()
            union[c] += (counted & ((reference == c) | (prediction == c))).sum()
    return intersection, union


def random_maps(rng, batch, height, width, num_labels):
    """Blocky references (regions of a few pixels, some isolated pixels, ignored pixels and an ignored block) and
    predictions that mostly follow them, with a few predictions outside the classes."""
    coarse = rng.integers(0, num_labels, (batch, height // 5 + 1, width // 6 + 1))
    references = coarse.repeat(5, axis=1).repeat(6, axis=2)[:, :height, :width]
    noise = rng.random(references.shape) < 0.02
    references[noise] = rng.integers(0, num_labels, noise.sum())
    references[rng.random(references.shape) < 0.05] = IGNORE
    references[:, 2:5, 3:9] = IGNORE
    predictions = np.where(
        rng.random(references.shape) < 0.15,
        rng.integers(0, num_labels, references.shape),
        coarse.repeat(5, 1).repeat(6, 2)[:, :height, :width],
    )
    predictions = np.roll(predictions, 1, axis=2)
    predictions[rng.random(references.shape) < 0.02] = num_labels + 3
    return predictions, references


# ----- (a) against the slow definitions --------------------------------------------------------------------------------


def test_min_max_band_equals_iterated_3x3_erosion_and_distance_search():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (3, 5)).repeat(4, 0).repeat(3, 1)[:, :14]  # 12x14
    for d in (1, 2, 3, 5):
        ours = inner_boundaries(torch.from_numpy(labels)[None], d)[0].numpy()
        for c in range(3):
            mask = labels == c
            expected = slow_inner_boundary(mask, d)
            np.testing.assert_array_equal(iterated_erosion_boundary(mask, d), expected)
            np.testing.assert_array_equal(ours & mask, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(17, 23), (32, 32)])
@pytest.mark.parametrize("dilation_ratio", [0.0, 0.02, 0.06, 0.1])  # 0: a band of 1 pixel
def test_boundary_iou_equals_slow_definition(seed, shape, dilation_ratio):
    num_labels = 4
    rng = np.random.default_rng(seed)
    predictions, references = random_maps(rng, 2, *shape, num_labels)
    metric = BoundaryIoU(num_labels, dilation_ratio=dilation_ratio)
    metric.update(torch.from_numpy(predictions), references)  # tensors and arrays both accepted
    intersection, union = slow_boundary_iou_counts(predictions, references, num_labels, dilation_ratio)
    np.testing.assert_array_equal(metric.intersection.numpy(), intersection)
    np.testing.assert_array_equal(metric.union.numpy(), union)
    result = metric.compute()
    np.testing.assert_allclose(result["per_category_boundary_iou"], intersection / union)
    assert result["mean_boundary_iou"] == pytest.approx(np.mean(intersection / union))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(17, 23), (32, 32)])
@pytest.mark.parametrize("trimap_width", [0, 1, 3])
def test_trimap_mean_iou_equals_slow_definition(seed, shape, trimap_width):
    num_labels = 4
    rng = np.random.default_rng(seed)
    predictions, references = random_maps(rng, 2, *shape, num_labels)
    metric = TrimapMeanIoU(num_labels, trimap_width=trimap_width)
    metric.update(predictions, torch.from_numpy(references))
    intersection, union = slow_trimap_counts(predictions, references, num_labels, trimap_width)
    result = metric.compute()
    np.testing.assert_allclose(result["per_category_trimap_iou"], intersection / union)
    assert result["trimap_mean_iou"] == pytest.approx(np.mean(intersection / union))
    np.testing.assert_array_equal(metric.band.confusion.diag().numpy(), intersection)


# ----- (b) hand-computed maps -----------------------------------------------------------------------------------------


def square_maps():
    """A 10x10 image of class 0 with a 6x6 square of class 1 (rows and columns 2..7); the prediction has the square
    one pixel to the right (rows 2..7, columns 3..8). Diagonal 14.14, so d = max(1, round(0.28)) = 1."""
    reference = np.zeros((10, 10), dtype=np.int64)
    reference[2:8, 2:8] = 1
    prediction = np.zeros((10, 10), dtype=np.int64)
    prediction[2:8, 3:9] = 1
    return prediction, reference


def test_boundary_iou_by_hand():
    prediction, reference = square_maps()
    metric = BoundaryIoU(2)
    metric.update(prediction, reference)
    # class 1: G_d is the 20-pixel ring of the square (36 - 16), P_d the ring of the shifted square. Shared: rows 2 and
    # 7, columns 3..7 (2 x 5 = 10); the left and right sides never meet (G's column 7 is inside P, P's column 3 inside
    # G). I = 10, U = 20 + 20 - 10 = 30.
    # class 0: G_d = the image's outer ring (36, the border is a contour) + the 8x8 ring around the square (rows and
    # columns 1..8 minus the square: 28) = 64. P_d = outer ring (36) + ring around the shifted square (rows 1..8,
    # columns 2..9: 28, of which column 9, 8 pixels, is already in the outer ring) = 56. Shared: the outer ring (36) +
    # rows 1 and 8, columns 2..8 (14); G's column 1 is too far from P's square, G's column 8 is P's square, P's column
    # 2 is G's square. I = 50, U = 64 + 56 - 50 = 70.
    assert metric.intersection.tolist() == [50, 10]
    assert metric.union.tolist() == [70, 30]
    result = metric.compute()
    np.testing.assert_allclose(result["per_category_boundary_iou"], [5 / 7, 1 / 3])
    assert result["mean_boundary_iou"] == pytest.approx(11 / 21)


def test_boundary_iou_by_hand_ignored_pixels_and_wider_band():
    prediction, reference = square_maps()
    reference[0, :] = IGNORE  # the top row is not counted (prediction still 0 there)
    metric = BoundaryIoU(2, dilation_ratio=0.15)  # d = round(0.15 * 14.14) = round(2.12) = 2
    metric.update(prediction, reference)
    # class 1: d = 2 leaves only the 2x2 centre of the 6x6 square, so G_d = 32 (rows/columns 2..7 minus 4..5) and
    # P_d = 32 (rows 2..7, columns 3..8 minus rows 4..5, columns 5..6). Both squares are rows 2..7 x columns 3..7
    # (30 pixels); of those, G's centre (rows 4..5, columns 4..5) and P's centre (rows 4..5, columns 5..6) are out:
    # rows 4..5 x columns 4..6 = 6 pixels, I = 24, U = 32 + 32 - 24 = 40.
    # class 0 in the reference: rows 1..9 minus the square (row 0 is ignored, so no class 0 either); each of its
    # pixels lies in row 1 (next to row 0), rows 8..9 or columns 0..1 and 8..9 (within 2 of the image edge): all 54 are
    # G_d. Class 0 in the prediction: all but its square, each pixel in rows 0..1, 8..9, columns 0..2 (column 2 next
    # to the square) or 9: all 64 are P_d, 54 of them labelled. Shared: labelled pixels of class 0 in both, 90 minus
    # the two squares' union (rows 2..7, columns 2..8: 42) = 48. I = 48, U = 54 + 54 - 48 = 60.
    assert metric.intersection.tolist() == [48, 24]
    assert metric.union.tolist() == [60, 40]


def test_trimap_mean_iou_by_hand():
    prediction, reference = square_maps()
    metric = TrimapMeanIoU(2, trimap_width=1)
    metric.update(prediction, reference)
    # boundary pixels: both sides of the square's edge, rows/columns 1..8 minus rows/columns 3..6 (64 - 16 = 48); the
    # band within 1 of them is the whole image but the centre rows 4..5 x columns 4..5 (96 pixels), class 1 in both.
    # class 1: reference 36 - 4 = 32, prediction 36 - 4 = 32, both 30 - 4 = 26: IoU 26 / 38.
    # class 0: reference 64, prediction 64, both 100 - 42 = 58: IoU 58 / 70.
    result = metric.compute()
    np.testing.assert_allclose(result["per_category_trimap_iou"], [58 / 70, 26 / 38])
    assert result["trimap_mean_iou"] == pytest.approx((58 / 70 + 26 / 38) / 2)
    metric = TrimapMeanIoU(2, trimap_width=0)
    metric.update(prediction, reference)
    # band = the 48 boundary pixels. class 1 (the square's 20-pixel ring): predicted 1 are its rows 2 and 7, columns
    # 3..7, and its column 7 (rows 3..6): 14; the outer 28-pixel ring of class 0 has 6 predicted 1 (column 8, rows
    # 2..7). class 1: I = 14, U = 20 + 6 = 26; class 0: I = 22, U = 28 + 6 = 34.
    np.testing.assert_allclose(metric.compute()["per_category_trimap_iou"], [22 / 34, 14 / 26])


def test_trimap_ignores_void_edges_and_image_edges():
    reference = np.zeros((6, 8), dtype=np.int64)
    reference[:, 4:] = IGNORE  # class 0 next to a void region only: no boundary at all
    metric = TrimapMeanIoU(3, trimap_width=2)
    metric.update(np.ones_like(reference), reference)
    assert metric.band.confusion.sum() == 0
    assert np.isnan(metric.compute()["trimap_mean_iou"])


# ----- (c) perfect predictions ----------------------------------------------------------------------------------------


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(5)
    _, references = random_maps(rng, 3, 32, 32, 5)
    references[0, :, :] = 4  # an image with one class: its boundary is the image edge
    boundary, trimap = BoundaryIoU(6, dilation_ratio=0.05), TrimapMeanIoU(6, trimap_width=2)
    for metric in (boundary, trimap):
        metric.update(references, references)
    result = boundary.compute()
    assert result["mean_boundary_iou"] == 1.0
    assert np.isnan(result["per_category_boundary_iou"][5])  # class 5 never appears
    assert trimap.compute()["trimap_mean_iou"] == 1.0
    single = BoundaryIoU(1, dilation_ratio=0.15)  # d = 2: the 10x10 image's outer 2 pixels, 100 - 36
    single.update(np.zeros((10, 10), dtype=np.int64), np.zeros((10, 10), dtype=np.int64))
    assert single.intersection.tolist() == [64] and single.union.tolist() == [64]


# ----- (d) streaming --------------------------------------------------------------------------------------------------


def test_two_updates_equal_one_concatenated_update():
    rng = np.random.default_rng(7)
    first, second = random_maps(rng, 2, 17, 23, 4), random_maps(rng, 3, 17, 23, 4)
    for make in (lambda: BoundaryIoU(4, dilation_ratio=0.1), lambda: TrimapMeanIoU(4, trimap_width=2)):
        streamed, whole = make(), make()
        streamed.update(*first)
        streamed.update(*second)
        whole.update(np.concatenate([first[0], second[0]]), np.concatenate([first[1], second[1]]))
        for key, value in streamed.compute().items():
            np.testing.assert_array_equal(value, whole.compute()[key])


def test_images_of_different_sizes_add_up():
    rng = np.random.default_rng(8)
    small, large = random_maps(rng, 2, 17, 23, 4), random_maps(rng, 1, 32, 32, 4)
    both, alone_small, alone_large = (BoundaryIoU(4, dilation_ratio=0.1) for _ in range(3))
    both.update(*small)
    both.update(large[0][0], large[1][0])  # (H, W) maps too
    alone_small.update(*small)
    alone_large.update(*large)
    assert torch.equal(both.intersection, alone_small.intersection + alone_large.intersection)
    assert torch.equal(both.union, alone_small.union + alone_large.union)
    # the band width follows each image's diagonal: d = 3 at 17x23 (0.1 x 28.6), 5 at 32x32 (0.1 x 45.3)
    expected = [slow_boundary_iou_counts(*maps, 4, 0.1) for maps in (small, large)]
    np.testing.assert_array_equal(both.intersection.numpy(), expected[0][0] + expected[1][0])
    np.testing.assert_array_equal(both.union.numpy(), expected[0][1] + expected[1][1])
    trimap_both, trimap_small, trimap_large = (TrimapMeanIoU(4, trimap_width=1) for _ in range(3))
    trimap_both.update(*small)
    trimap_both.update(*large)
    trimap_small.update(*small)
    trimap_large.update(*large)
    assert torch.equal(trimap_both.band.confusion, trimap_small.band.confusion + trimap_large.band.confusion)
    both.reset()
    trimap_both.reset()
    assert both.intersection.sum() == 0 and both.union.sum() == 0 and trimap_both.band.confusion.sum() == 0


# ----- (e) bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [BoundaryIoU, TrimapMeanIoU], ids=["boundary", "trimap"])
def test_bad_input_is_refused_and_named(make):
    metric = make(4)
    zeros = np.zeros((2, 5, 5), dtype=np.int64)
    with pytest.raises(TypeError, match="predictions must be integer class ids"):
        metric.update(zeros.astype(np.float32), zeros)
    with pytest.raises(TypeError, match="references must be integer class ids"):
        metric.update(zeros, torch.zeros(2, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(zeros, zeros[:, :4])
    with pytest.raises(ValueError, match=r"\(H, W\) or \(batch, H, W\)"):
        metric.update(zeros[None], zeros[None])
    labels = zeros.copy()
    labels[0, 0, :3] = [7, -2, IGNORE]
    with pytest.raises(ValueError, match=r"\[-2, 7\] outside \[0, 4\)"):
        metric.update(zeros, labels)
    assert all(value.sum() == 0 for value in vars(getattr(metric, "band", metric)).values() if torch.is_tensor(value))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="num_labels"):
        BoundaryIoU(0)
    with pytest.raises(ValueError, match="dilation_ratio"):
        BoundaryIoU(3, dilation_ratio=-0.1)
    with pytest.raises(ValueError, match="trimap_width"):
        TrimapMeanIoU(3, trimap_width=-1)


# ----- (f) gather -----------------------------------------------------------------------------------------------------


def test_gather_without_process_group_changes_nothing():
    rng = np.random.default_rng(9)
    maps = random_maps(rng, 2, 17, 23, 4)
    for metric in (BoundaryIoU(4), TrimapMeanIoU(4)):
        metric.update(*maps)
        before = metric.compute()
        metric.gather()
        for key, value in metric.compute().items():
            np.testing.assert_array_equal(value, before[key])


def test_gather_reduces_the_whole_state(monkeypatch):
    reduced = []

    def all_reduce(tensor):  # a second process with the same counts
        reduced.append(tensor)
        tensor.mul_(2)

    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    rng = np.random.default_rng(10)
    maps = random_maps(rng, 2, 17, 23, 4)
    for metric in (BoundaryIoU(4), TrimapMeanIoU(4)):
        reduced.clear()
        metric.update(*maps)
        holder = getattr(metric, "band", metric)
        state = {name: value.clone() for name, value in vars(holder).items() if torch.is_tensor(value)}
        assert state and sum(value.sum() for value in state.values()) > 0
        metric.gather()
        assert {id(tensor) for tensor in reduced} == {
            id(value) for value in vars(holder).values() if torch.is_tensor(value)
        }
        for name, value in state.items():
            assert torch.equal(getattr(holder, name), 2 * value), name


def test_a_one_pixel_image_is_counted():
    """A 1 x 1 image is its own inner boundary (the outside of the image is not the class): a right prediction adds
    one pixel to the class's intersection and union, a wrong one one pixel to the union of each of the two classes."""
    metric = BoundaryIoU(3)
    metric.update(torch.tensor([[2]]), torch.tensor([[2]]))
    assert metric.intersection.tolist() == [0, 0, 1] and metric.union.tolist() == [0, 0, 1]
    metric.update(torch.tensor([[[1]]]), torch.tensor([[[2]]]))
    assert metric.intersection.tolist() == [0, 0, 1] and metric.union.tolist() == [0, 1, 2]
