"""The upsampled cross-entropy of every per-pixel family (SeMask-FPN's main and semantic terms, VWFormer's and
Pale-UperNet's main and auxiliary terms) is computed one image at a time under activation checkpointing: the same loss
and gradients as the whole-batch computation, without the batch's logits at label size in memory."""

import pytest
import torch
import torch.nn.functional as F

from hf_semseg.models.modeling_utils_segmentation import pixel_cross_entropy, upsampled_cross_entropy


def whole_batch_cross_entropy(logits, labels, ignore_index, mean_over_all_pixels, pixel_weights=None):
    """The computation before: the whole batch's logits resized to the labels, then one cross-entropy."""
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    losses = F.cross_entropy(upsampled, labels, ignore_index=ignore_index, reduction="none")
    if pixel_weights is not None:
        losses = losses * pixel_weights
    if mean_over_all_pixels:
        return losses.mean()
    return losses.sum() / (labels != ignore_index).sum().clamp(min=1)


def batch(seed: int = 0, batch_size: int = 4, num_labels: int = 6, size: int = 24):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch_size, num_labels, size // 4, size // 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, num_labels, (batch_size, size, size), generator=generator)
    labels[torch.rand(batch_size, size, size, generator=generator) < 0.2] = 255
    weights = (torch.rand(batch_size, size, size, generator=generator) < 0.5).to(torch.float64)
    return logits, labels, weights


@pytest.mark.parametrize("mean_over_all_pixels", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_image_at_a_time_equals_the_whole_batch_in_loss_and_gradient(mean_over_all_pixels, weighted):
    logits, labels, weights = batch()
    weights = weights if weighted else None
    reference_logits = logits.clone().requires_grad_()
    reference = whole_batch_cross_entropy(reference_logits, labels, 255, mean_over_all_pixels, weights)
    reference.backward()
    chunked_logits = logits.clone().requires_grad_()
    loss = upsampled_cross_entropy(chunked_logits, labels, 255, mean_over_all_pixels, weights)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    torch.testing.assert_close(chunked_logits.grad, reference_logits.grad, rtol=1e-10, atol=1e-14)
    assert reference.item() > 0.5  # a real loss, not a vacuous comparison


def test_float32_loss_and_gradients_within_the_targets():
    logits, labels, _ = batch(seed=1, batch_size=8, num_labels=150, size=64)
    logits = logits.float()
    reference_logits = logits.clone().requires_grad_()
    reference = whole_batch_cross_entropy(reference_logits, labels, 255, False)
    reference.backward()
    chunked_logits = logits.clone().requires_grad_()
    loss = upsampled_cross_entropy(chunked_logits, labels, 255)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    relative = (chunked_logits.grad - reference_logits.grad).norm() / reference_logits.grad.norm()
    assert relative < 1e-5


def test_no_label_size_tensor_of_the_whole_batch_is_kept_for_the_backward_pass():
    """The tensors autograd keeps for the backward pass: the whole-batch computation keeps log-softmax's output at
    label size for every image; image at a time under checkpointing keeps the low-resolution logits and labels only."""
    logits, labels, _ = batch(batch_size=4, num_labels=6, size=48)
    logits = logits.float().requires_grad_()
    label_size = logits.shape[0] * logits.shape[1] * labels.shape[1] * labels.shape[2]

    def largest_saved(compute) -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            compute()
        return max(sizes)

    assert largest_saved(lambda: whole_batch_cross_entropy(logits, labels, 255, False)) >= label_size
    assert largest_saved(lambda: upsampled_cross_entropy(logits, labels, 255)) <= labels.numel()


def test_pixel_cross_entropy_is_the_per_pixel_loss_without_gradient():
    logits, labels, _ = batch(seed=2)
    logits.requires_grad_()
    losses = pixel_cross_entropy(logits, labels, 255)
    upsampled = F.interpolate(logits.detach(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    expected = F.cross_entropy(upsampled, labels, ignore_index=255, reduction="none")
    torch.testing.assert_close(losses, expected, rtol=0, atol=1e-12)
    assert not losses.requires_grad and losses.shape == labels.shape
