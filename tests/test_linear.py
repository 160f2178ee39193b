"""The dense layer of the model folder (``hf_semseg/models/modeling_linear.py``): ``F.linear`` run on the CPU in float32
as a oneDNN 1x1 convolution, the same values and gradients, and ``F.linear`` wherever oneDNN would not compute in full
float32."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_semseg.models.modeling_linear import (
    PLAIN_LINEAR_TYPES,
    OneDNNLinear,
    linear_backward,
    onednn_linear,
    runs_on_onednn,
)


pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


@pytest.fixture
def convolutions(monkeypatch):
    """Counts the ``F.conv2d`` calls (the oneDNN path) while a test runs."""
    calls = []
    original = F.conv2d

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "conv2d", counting)
    return calls


def float64_linear(inputs, weight, bias):
    return F.linear(inputs.double(), weight.double(), None if bias is None else bias.double())


@pytest.mark.parametrize(
    "shape", [(7, 5), (2, 3, 4, 5), (1, 200, 5)], ids=["tokens", "windows (B, nW, N, C)", "one image"]
)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_values_and_gradients_are_the_linear_layers(convolutions, shape, with_bias):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(shape, generator=generator, requires_grad=True)
    weight = torch.randn(6, shape[-1], generator=generator, requires_grad=True)
    bias = torch.randn(6, generator=generator, requires_grad=True) if with_bias else None
    output = onednn_linear(inputs, weight, bias)
    assert convolutions == [(1, shape[-1], inputs.numel() // shape[-1], 1)]  # the tokens as a (1, C, T, 1) map
    assert output.shape == (*shape[:-1], 6) and output.is_contiguous()
    expected = float64_linear(inputs, weight, bias)
    torch.testing.assert_close(output.double(), expected, rtol=1e-6, atol=1e-5)

    grad_output = torch.randn(output.shape, generator=generator)
    output.backward(grad_output)
    # d/dx (x W^T + b) = g W; d/dW = g^T x (over all tokens); d/db = sum of g
    rows, grad_rows = inputs.detach().reshape(-1, shape[-1]).double(), grad_output.reshape(-1, 6).double()
    torch.testing.assert_close(
        inputs.grad.double(), grad_output.double() @ weight.detach().double(), rtol=1e-6, atol=1e-5
    )
    torch.testing.assert_close(weight.grad.double(), grad_rows.t() @ rows, rtol=1e-6, atol=1e-5)
    if with_bias:
        torch.testing.assert_close(bias.grad.double(), grad_rows.sum(0), rtol=1e-6, atol=1e-5)


def test_a_hand_computed_product():
    inputs = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    weight = torch.tensor([[1.0, 0.0], [2.0, 1.0], [-1.0, 4.0]])
    bias = torch.tensor([0.5, 0.0, -2.0])
    expected = torch.tensor([[1.5, 4.0, 5.0], [3.5, 5.0, -9.0]])
    assert torch.equal(onednn_linear(inputs, weight, bias), expected)


def test_a_non_contiguous_input(convolutions):
    inputs = torch.randn(4, 6, 5).transpose(0, 1)  # (6, 4, 5), not contiguous
    weight, bias = torch.randn(3, 5), torch.randn(3)
    torch.testing.assert_close(onednn_linear(inputs, weight, bias), F.linear(inputs, weight, bias))
    assert len(convolutions) == 1


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
@pytest.mark.parametrize("case", ["float64", "bfloat16 autocast", "medium matmul precision", "oneDNN off", "empty"])
def test_falls_back_to_the_linear_layer(convolutions, case):
    inputs, weight, bias = torch.randn(3, 4, 5), torch.randn(2, 5), torch.randn(2)
    if case == "float64":
        inputs, weight, bias = inputs.double(), weight.double(), bias.double()
    if case == "empty":
        inputs = inputs[:0]
    if case == "bfloat16 autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output, expected = onednn_linear(inputs, weight, bias), F.linear(inputs, weight, bias)
        assert output.dtype == torch.bfloat16
    elif case == "medium matmul precision":
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("medium")
        try:
            assert not runs_on_onednn(inputs, weight)
            output, expected = onednn_linear(inputs, weight, bias), F.linear(inputs, weight, bias)
        finally:
            torch.set_float32_matmul_precision(previous)
    elif case == "oneDNN off":
        with torch.backends.mkldnn.flags(enabled=False):
            assert not runs_on_onednn(inputs, weight)
            output, expected = onednn_linear(inputs, weight, bias), F.linear(inputs, weight, bias)
    else:
        output, expected = onednn_linear(inputs, weight, bias), F.linear(inputs, weight, bias)
    assert convolutions == []
    assert torch.equal(output, expected)


def test_bfloat16_oneDNN_convolutions_keep_the_linear_layer():
    """A user who lets oneDNN convolutions compute float32 in bfloat16 still gets full-precision dense layers."""
    inputs, weight = torch.randn(3, 5), torch.randn(2, 5)
    assert runs_on_onednn(inputs, weight)
    previous = torch.backends.mkldnn.conv.fp32_precision
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
    try:
        assert not runs_on_onednn(inputs, weight)
    finally:
        torch.backends.mkldnn.conv.fp32_precision = previous


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_backward_is_the_linear_layers_gradient(with_bias, dtype):
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(2, 9, 5, generator=generator, dtype=dtype)
    weight = torch.randn(4, 5, generator=generator, dtype=dtype)
    grad_output = torch.randn(2, 9, 4, generator=generator, dtype=dtype)
    grad_inputs, grad_weight, grad_bias = linear_backward(grad_output, inputs, weight, with_bias)
    assert grad_inputs.shape == inputs.shape and grad_weight.shape == weight.shape
    rows, grad_rows = inputs.reshape(-1, 5).double(), grad_output.reshape(-1, 4).double()
    tolerance = {"rtol": 1e-6, "atol": 1e-5}
    torch.testing.assert_close(grad_inputs.double(), grad_output.double() @ weight.double(), **tolerance)
    torch.testing.assert_close(grad_weight.double(), grad_rows.t() @ rows, **tolerance)
    if with_bias:
        torch.testing.assert_close(grad_bias.double(), grad_rows.sum(0), **tolerance)
    else:
        assert grad_bias is None


def test_the_layer_is_an_nn_linear_with_its_state_dict():
    plain = nn.Linear(5, 3)
    layer = OneDNNLinear(5, 3)
    assert isinstance(layer, nn.Linear) and type(layer) in PLAIN_LINEAR_TYPES
    layer.load_state_dict(plain.state_dict())
    assert layer.state_dict().keys() == plain.state_dict().keys()
    inputs = torch.randn(4, 5)
    torch.testing.assert_close(layer(inputs), plain(inputs))
