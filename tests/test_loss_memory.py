"""Training memory (issue 17). The upsampled cross-entropy of every per-pixel family (SeMask-FPN's main and semantic
terms, VWFormer's and Pale-UperNet's main and auxiliary terms) is computed one image at a time: the same loss and
gradients as the whole-batch computation, without the batch's logits at label size in memory. The Transformer MLPs
recompute their GELU and LayerNorm outputs, SeMask-Swin's window attention its probabilities, in the backward pass:
the same values and gradients."""

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
    label size for every image; image at a time keeps the precomputed gradient of the low-resolution logits only (each
    image's label-size tensors are freed before the next image)."""
    import weakref

    logits, labels, _ = batch(batch_size=4, num_labels=6, size=48)
    logits = logits.float().requires_grad_()
    label_size = logits.shape[0] * logits.shape[1] * labels.shape[1] * labels.shape[2]

    def largest_kept(compute) -> int:
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(weakref.ref(t)) or t, lambda t: t):
            loss = compute()
        kept = [reference() for reference in saved if reference() is not None]
        assert loss.requires_grad
        return max(tensor.numel() for tensor in kept)

    assert largest_kept(lambda: whole_batch_cross_entropy(logits, labels, 255, False)) >= label_size
    assert largest_kept(lambda: upsampled_cross_entropy(logits, labels, 255)) <= logits.numel()


def test_pixel_cross_entropy_is_the_per_pixel_loss_without_gradient():
    logits, labels, _ = batch(seed=2)
    logits.requires_grad_()
    losses = pixel_cross_entropy(logits, labels, 255)
    upsampled = F.interpolate(logits.detach(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    expected = F.cross_entropy(upsampled, labels, ignore_index=255, reduction="none")
    torch.testing.assert_close(losses, expected, rtol=0, atol=1e-12)
    assert not losses.requires_grad and losses.shape == labels.shape


def test_one_labelled_pixel_and_a_loss_without_gradient_by_hand():
    """Over the labelled pixels only: one labelled pixel gives its own cross-entropy (not half of it), none gives 0.
    Under ``torch.no_grad`` a leaf that requires a gradient gets none computed (the loss alone, as eager)."""
    logits = torch.tensor([[[[2.0]], [[0.0]], [[-1.0]]]], dtype=torch.float64)  # (1, 3, 1, 1): every pixel the same
    labels = torch.full((1, 2, 3), 255)
    labels[0, 1, 2] = 1
    expected = -torch.log_softmax(logits[0, :, 0, 0], 0)[1]
    torch.testing.assert_close(upsampled_cross_entropy(logits, labels, 255), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(upsampled_cross_entropy(logits, labels, 255, True), expected / 6, atol=1e-12, rtol=0)
    assert upsampled_cross_entropy(logits, torch.full((1, 2, 3), 255), 255).item() == 0.0

    leaf = logits.clone().requires_grad_()
    with torch.no_grad():
        loss = upsampled_cross_entropy(leaf, labels, 255)
    assert not loss.requires_grad and leaf.grad is None
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# The Transformer MLPs (Swin, Pale): GELU recomputed in the backward pass
# ---------------------------------------------------------------------------------------------------------------------


def tiny_models_with_mlps():
    from hf_semseg import PaleConfig, PaleForSemanticSegmentation, SeMaskSwinConfig, SeMaskSwinForSemanticSegmentation

    from model_suite import FOUR_STAGES, tiny_label_kwargs, tiny_pale_kwargs, tiny_semask_swin_kwargs

    semask = SeMaskSwinConfig(**tiny_semask_swin_kwargs(depths=[2, 1, 1, 1], out_features=FOUR_STAGES))
    pale = PaleConfig(**tiny_pale_kwargs(depths=[1, 1, 1, 1], out_features=FOUR_STAGES, **tiny_label_kwargs()))
    return {"semask_fpn": (SeMaskSwinForSemanticSegmentation, semask), "pale": (PaleForSemanticSegmentation, pale)}


@pytest.mark.parametrize("name", ["semask_fpn", "pale"])
def test_mlp_gelu_recomputation_gives_the_same_loss_and_gradients(name):
    """The MLPs' GELU + second layer as ``GeluLinearFunction`` (training) against autograd's GELU and linear layer:
    the same loss and the same gradient of every parameter (bit for bit in practice; asserted to 1e-6 relative)."""
    import copy

    from hf_semseg.models.modeling_utils_segmentation import GeluLinearFunction, TransformerMLP

    model_class, config = tiny_models_with_mlps()[name]
    torch.manual_seed(0)
    model = model_class(config).train()
    plain = copy.deepcopy(model)
    mlps = [module for module in plain.modules() if isinstance(module, TransformerMLP)]
    assert mlps and all(module.recomputes_gelu() for module in mlps)
    for module in mlps:
        module.exact_gelu = False
    assert not any(module.recomputes_gelu() for module in mlps)

    calls = []
    original_apply = GeluLinearFunction.apply

    def counting_apply(*arguments):
        calls.append(1)
        return original_apply(*arguments)

    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(2, 3, 64, 80, generator=generator)
    labels = torch.randint(0, config.num_labels, (2, 64, 80), generator=generator)
    GeluLinearFunction.apply = counting_apply
    try:
        torch.manual_seed(2)  # the same drop-path and dropout draws in both
        loss = model(pixel_values=pixel_values, labels=labels).loss
    finally:
        GeluLinearFunction.apply = original_apply
    assert len(calls) == len(mlps)
    torch.manual_seed(2)
    reference = plain(pixel_values=pixel_values, labels=labels).loss
    loss.backward()
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6, abs=0)
    for (parameter_name, parameter), reference_parameter in zip(model.named_parameters(), plain.parameters()):
        if reference_parameter.grad is None:
            assert parameter.grad is None, parameter_name
            continue
        torch.testing.assert_close(parameter.grad, reference_parameter.grad, rtol=1e-6, atol=1e-9, msg=parameter_name)


def test_gelu_linear_function_keeps_one_hidden_map_for_backward():
    """What the backward pass keeps of one MLP: its hidden map once (autograd's GELU and linear keep it twice: the
    GELU's input and output)."""
    from hf_semseg.models.modeling_utils_segmentation import GeluLinearFunction

    hidden = torch.randn(4, 6, 32, requires_grad=True)
    weight = torch.randn(8, 32, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)

    def saved_hidden_maps(function) -> int:
        storages = set()

        def pack(tensor):
            if tensor.numel() == hidden.numel():  # F.linear keeps a 2-D view
                storages.add(tensor.untyped_storage().data_ptr())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            function(hidden * 1.0)
        return len(storages)

    assert saved_hidden_maps(lambda h: GeluLinearFunction.apply(h, weight, bias)) == 1
    assert saved_hidden_maps(lambda h: F.linear(F.gelu(h), weight, bias)) == 2
    output = GeluLinearFunction.apply(hidden, weight, bias)
    grads = torch.autograd.grad(output.square().sum(), (hidden, weight, bias))
    expected = torch.autograd.grad(F.linear(F.gelu(hidden), weight, bias).square().sum(), (hidden, weight, bias))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_gelu_linear_function_under_bfloat16_autocast_matches_autograd():
    """Under autocast the function computes in bfloat16 as autocast's linear layer does, and returns the gradients
    in the parameters' float32 (autograd's cast nodes)."""
    from hf_semseg.models.modeling_utils_segmentation import GeluLinearFunction

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 10, 32, generator=generator)
    weight = torch.randn(8, 32, generator=generator, requires_grad=True)
    bias = torch.randn(8, generator=generator, requires_grad=True)

    def gradients(function):
        source = hidden.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = function(source.to(torch.bfloat16))
        assert output.dtype == torch.bfloat16
        return output, torch.autograd.grad(output.float().square().sum(), (source, weight, bias))

    output, grads = gradients(lambda h: GeluLinearFunction.apply(h, weight, bias))
    expected_output, expected = gradients(lambda h: F.linear(F.gelu(h), weight, bias))
    torch.testing.assert_close(output, expected_output, rtol=0, atol=0)
    for got, want in zip(grads, expected):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # bit for bit here


# ---------------------------------------------------------------------------------------------------------------------
# SeMask-Swin's window attention: the probabilities recomputed in the backward pass
# ---------------------------------------------------------------------------------------------------------------------


def window_attention_inputs(shifted: bool, seed: int = 0):
    """q, k, v ``(B*nW, heads, N, d)`` of 2 images x 3 windows, 2 heads, 9 tokens, 4 channels; a bias ``(heads, N,
    N)``; a shift mask ``(nW, N, N)`` of 0 and -100 or None."""
    generator = torch.Generator().manual_seed(seed)
    query, key, value = (torch.randn(6, 2, 9, 4, generator=generator, requires_grad=True) for _ in range(3))
    bias = torch.randn(2, 9, 9, generator=generator, requires_grad=True)
    shift_mask = None
    if shifted:
        shift_mask = torch.where(torch.rand(3, 9, 9, generator=generator) < 0.3, -100.0, 0.0)
    return query, key, value, bias, shift_mask


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_function_matches_autograd_attention(shifted):
    """Values and the gradients of q, k, v and the bias against autograd through softmax(q k^T s + mask) v, the
    mask the bias plus each image's windows' shift mask; hand-checked on one entry: the bias's gradient is the sum
    over the windows of the scores' gradient."""
    from hf_semseg.models.modeling_semask_swin import WindowAttentionFunction

    query, key, value, bias, shift_mask = window_attention_inputs(shifted)
    scaling = 0.5
    grad_output = torch.randn(6, 2, 9, 4, generator=torch.Generator().manual_seed(9))

    output = WindowAttentionFunction.apply(query, key, value, bias, shift_mask, scaling)
    grads = torch.autograd.grad(output, (query, key, value, bias), grad_output)

    mask = bias.unsqueeze(0)
    if shift_mask is not None:
        mask = (shift_mask.unsqueeze(1) + bias.unsqueeze(0)).repeat(2, 1, 1, 1)  # image-major windows
    scores = query @ key.transpose(-2, -1) * scaling + mask
    reference = torch.softmax(scores, dim=-1) @ value
    expected = torch.autograd.grad(reference, (query, key, value, bias, scores), grad_output)
    torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected[:4]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    grad_scores = expected[4]
    assert grads[3][1, 4, 7].item() == pytest.approx(grad_scores[:, 1, 4, 7].sum().item(), rel=1e-5, abs=1e-7)
    assert grads[3].abs().max() > 1e-3  # a real gradient


def test_window_attention_keeps_no_probabilities_for_the_backward_pass():
    """What the backward pass keeps of one shifted SeMask-Swin block's attention: no ``(B*nW, heads, N, N)`` map (the
    math path of SDPA with a bias that needs a gradient keeps the probabilities)."""
    import weakref

    from hf_semseg import SeMaskSwinConfig
    from hf_semseg.models.modeling_semask_swin import SeMaskSwinWindowAttention

    config = SeMaskSwinConfig(embed_dim=16, num_heads=[2, 2, 4, 4], window_size=4, attn_implementation="sdpa")
    attention = SeMaskSwinWindowAttention(config, dim=16, num_heads=2).train()
    windows = torch.randn(2, 3, 16, 16)
    shift_mask = torch.where(torch.rand(3, 16, 16) < 0.3, -100.0, 0.0)
    probabilities = 2 * 3 * 2 * 16 * 16

    def largest_kept() -> int:
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(weakref.ref(t)) or t, lambda t: t):
            output, _ = attention(windows, shift_mask)
        assert output.requires_grad
        return max(tensor.numel() for tensor in (reference() for reference in saved) if tensor is not None)

    assert attention.recomputes_probabilities(windows)
    assert largest_kept() < probabilities
    attention.recomputes_probabilities = lambda query: False  # the attention interface (SDPA's math path)
    assert largest_kept() >= probabilities


def test_window_attention_recomputation_gives_the_same_loss_and_gradients():
    """A SeMask-FPN training step with the window attention as ``WindowAttentionFunction`` and the blocks' first
    LayerNorm run with the qkv projection on the windows of the zero-padded map (``layer_norm_linear``, the pad
    tokens' projection then set to the bias) against the plain path (LayerNorm, zero padding, qkv projection, the attention interface: SDPA, whose math
    path autograd differentiates): the same loss and every parameter's gradient (the relative position bias tables
    included). In float64: the fused kernel and the math path round differently, and
    the tiny model's BatchNorm over a few values amplifies float32's differences in some gradients to 1e-3."""
    import copy

    from hf_semseg.models.modeling_semask_swin import (
        SeMaskSwinBlock,
        SeMaskSwinWindowAttention,
        WindowAttentionFunction,
    )
    from hf_semseg.models.modeling_utils_segmentation import LayerNormLinearFunction

    model_class, config = tiny_models_with_mlps()["semask_fpn"]
    torch.manual_seed(0)
    model = model_class(config).train().double()
    for module in model.modules():  # gamma starts at 0: give the semantic attention a say in the gradients
        if hasattr(module, "gamma"):
            module.gamma.data.fill_(0.5)
    plain = copy.deepcopy(model)
    attentions = [module for module in plain.modules() if isinstance(module, SeMaskSwinWindowAttention)]
    for module in attentions:
        module.recomputes_probabilities = lambda query: False

    class PlainLayerNorm(torch.nn.LayerNorm):
        """Not exactly ``nn.LayerNorm``: ``layer_norm_linear`` runs it as it is."""

    blocks = [module for module in plain.modules() if isinstance(module, SeMaskSwinBlock)]
    for module in blocks:
        module.norm1.__class__ = PlainLayerNorm
    layer_norm_calls = []
    original_layer_norm_apply = LayerNormLinearFunction.apply
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(2, 3, 64, 80, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, config.num_labels, (2, 64, 80), generator=generator)
    assert model.config._attn_implementation == "sdpa"
    calls = []
    original_apply = WindowAttentionFunction.apply
    WindowAttentionFunction.apply = lambda *arguments: calls.append(1) or original_apply(*arguments)
    # (hidden_states, norm weight, norm bias, eps, weight, bias): a qkv projection (3C outputs)
    LayerNormLinearFunction.apply = lambda *arguments: (
        layer_norm_calls.append(arguments[4].shape[0] == 3 * arguments[0].shape[-1])
        or original_layer_norm_apply(*arguments)
    )
    try:
        torch.manual_seed(2)
        loss = model(pixel_values=pixel_values, labels=labels).loss
    finally:
        WindowAttentionFunction.apply = original_apply
        LayerNormLinearFunction.apply = original_layer_norm_apply
    assert len(calls) == len(attentions)
    assert sum(layer_norm_calls) == len(blocks)  # the qkv projections
    torch.manual_seed(2)
    reference = plain(pixel_values=pixel_values, labels=labels).loss
    loss.backward()
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12, abs=0)
    checked = 0
    for (parameter_name, parameter), reference_parameter in zip(model.named_parameters(), plain.parameters()):
        if reference_parameter.grad is None:
            assert parameter.grad is None, parameter_name
            continue
        # atol: the key projections' bias has a zero gradient (the softmax ignores it), 1e-13 in float64's rounding
        torch.testing.assert_close(parameter.grad, reference_parameter.grad, rtol=1e-9, atol=1e-12, msg=parameter_name)
        checked += "relative_position_bias_table" in parameter_name and reference_parameter.grad.abs().max() > 0
    assert checked == len(attentions)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "graph"])
def test_mlp_inference_runs_the_gelu_in_place(grad):
    """At inference the MLP's GELU overwrites ``fc1``'s output (no second ``mlp_ratio * C`` map is allocated); where a
    graph is built it runs out of place. The output is the plain layers' either way."""
    from hf_semseg import SeMaskSwinConfig
    from hf_semseg.models.modeling_utils_segmentation import TransformerMLP

    from model_suite import tiny_semask_swin_kwargs

    torch.manual_seed(0)
    mlp = TransformerMLP(SeMaskSwinConfig(**tiny_semask_swin_kwargs()), 8).double().eval()
    hidden_states = torch.randn(2, 5, 8, dtype=torch.float64)
    fc1_outputs = []
    mlp.fc1.register_forward_hook(lambda module, inputs, output: fc1_outputs.append(output))
    with torch.set_grad_enabled(grad):
        output = mlp(hidden_states)
    with torch.no_grad():
        pre_activation = F.linear(hidden_states, mlp.fc1.weight, mlp.fc1.bias)
        expected = F.linear(F.gelu(pre_activation), mlp.fc2.weight, mlp.fc2.bias)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    # what fc1 returned now holds the GELU's output (in place) or still its own (out of place)
    torch.testing.assert_close(fc1_outputs[0], pre_activation if grad else F.gelu(pre_activation), rtol=0, atol=1e-12)


def test_hooked_layers_of_the_recomputing_functions_run_as_modules():
    """A hook on a layer that ``GeluLinearFunction`` (the activation, the dropout, ``fc2``) or
    ``LayerNormLinearFunction`` (the LayerNorm, ``fc1``) computes without calling it turns that function off: the hooked
    layer's forward hook sees its output, its full backward hook its output's gradient, and the output and
    gradients are the functions' (float64)."""
    import copy

    from hf_semseg import SeMaskSwinConfig
    from hf_semseg.models.modeling_utils_segmentation import TransformerMLP, recomputes_layer_norm

    from model_suite import tiny_semask_swin_kwargs

    torch.manual_seed(0)
    config = SeMaskSwinConfig(**tiny_semask_swin_kwargs(hidden_dropout_prob=0.0))
    fused_mlp = TransformerMLP(config, 8).double().train()
    fused_norm = torch.nn.LayerNorm(8).double()
    hidden_states = torch.randn(2, 5, 8, dtype=torch.float64)

    def output_and_gradients(mlp, norm):
        inputs = hidden_states.clone().requires_grad_()
        output = mlp(inputs, norm=norm)
        output.pow(2).sum().backward()
        parameters = [*mlp.parameters(), *norm.parameters()]
        return output.detach(), [inputs.grad, *(parameter.grad for parameter in parameters)]

    assert fused_mlp.recomputes_gelu() and recomputes_layer_norm(fused_norm, fused_mlp.fc1, hidden_states)
    expected_output, expected_gradients = output_and_gradients(fused_mlp, fused_norm)
    for layer_name in ("activation", "dropout", "fc2", "norm", "fc1"):
        mlp, norm = copy.deepcopy(fused_mlp), copy.deepcopy(fused_norm)
        mlp.zero_grad()
        norm.zero_grad()
        layer = norm if layer_name == "norm" else getattr(mlp, layer_name)
        outputs, output_gradients = [], []
        layer.register_forward_hook(lambda module, args, output, seen=outputs: seen.append(output.detach().clone()))
        layer.register_full_backward_hook(
            lambda module, grad_in, grad_out, seen=output_gradients: seen.append(grad_out[0])
        )
        if layer_name in ("activation", "dropout", "fc2"):
            assert not mlp.recomputes_gelu(), layer_name
        else:
            assert not recomputes_layer_norm(norm, mlp.fc1, hidden_states), layer_name
        output, gradients = output_and_gradients(mlp, norm)
        calls = 2 if layer_name == "dropout" else 1  # after the activation and after fc2
        assert len(outputs) == len(output_gradients) == calls, layer_name
        assert all(gradient is not None and gradient.abs().max() > 0 for gradient in output_gradients), layer_name
        torch.testing.assert_close(output, expected_output, rtol=1e-12, atol=1e-12)
        for gradient, expected in zip(gradients, expected_gradients):
            torch.testing.assert_close(gradient, expected, rtol=1e-10, atol=1e-12, msg=layer_name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_narrow_float_logits_give_the_float32_loss(dtype):
    """A float16 model's loss was summed in float16: one image's pixels passed 65504 (an infinite loss at about 47k
    labelled pixels); a bfloat16 one's was rounded (1.953125 for 1.9558). mmseg computes its losses in float32."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 64, 64, generator=generator).to(dtype)
    labels = torch.randint(0, 6, (2, 256, 256), generator=generator)
    narrow = logits.clone().requires_grad_()
    loss = upsampled_cross_entropy(narrow, labels, 255)
    loss.backward()
    reference_logits = logits.float().requires_grad_()
    reference = whole_batch_cross_entropy(reference_logits, labels, 255, False)
    reference.backward()
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert narrow.grad.dtype == dtype
    torch.testing.assert_close(narrow.grad.float(), reference_logits.grad, rtol=1e-2, atol=1e-7)  # fp16's step
    probabilities = pixel_cross_entropy(logits, labels, 255)
    assert probabilities.dtype == torch.float32 and probabilities.sum().isfinite()
