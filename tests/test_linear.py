"""The dense layer of the model folder (``hf_semseg/models/modeling_linear.py``): ``F.linear`` run on the CPU through
oneDNN, at inference as its matmul primitive (float32, or bfloat16 under autocast / with bfloat16 operands), in
training in float32 as a 1x1 convolution; the same values and gradients, and ``F.linear`` wherever oneDNN would not
compute at the precision asked for, where a gradient is needed from the primitive, or while traced."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_semseg.models import modeling_linear
from hf_semseg.models.modeling_linear import (
    PLAIN_LINEAR_TYPES,
    OneDNNLinear,
    PackedInferenceConvolution,
    PackedInferenceLinear,
    aten_runs_avx512,
    calls_hooks,
    float32_product_on_onednn,
    gelu_post_op_pays,
    inference_product_dtype,
    linear_backward,
    onednn_inference_linear,
    onednn_linear,
    runs_on_onednn,
    unchanged_since,
    weight_stamps,
)


pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


@pytest.fixture
def convolutions(monkeypatch):
    """Counts the ``F.conv2d`` calls (the training path) while a test runs."""
    calls = []
    original = F.conv2d

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "conv2d", counting)
    return calls


@pytest.fixture
def primitives(monkeypatch):
    """Records the dtypes of the operands of oneDNN's matmul primitive (the inference path) on each call."""
    calls = []
    original = torch.ops.mkldnn._linear_pointwise

    def counting(inputs, weight, bias, *args):
        calls.append(tuple(None if operand is None else operand.dtype for operand in (inputs, weight, bias)))
        return original(inputs, weight, bias, *args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counting)
    return calls


needs_bfloat16_kernels = pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="oneDNN has no bfloat16 kernels for this CPU"
)


def float64_linear(inputs, weight, bias):
    return F.linear(inputs.double(), weight.double(), None if bias is None else bias.double())


@pytest.mark.parametrize(
    "shape", [(7, 5), (2, 3, 4, 5), (1, 200, 5)], ids=["tokens", "windows (B, nW, N, C)", "one image"]
)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("on_onednn", [True, False], ids=["avx512", "avx2"])
def test_values_and_gradients_are_the_linear_layers(convolutions, shape, with_bias, on_onednn, monkeypatch):
    """In training, where ``float32_product_on_onednn`` (AVX-512) the tokens go through oneDNN's 1x1 convolution,
    elsewhere through ``F.linear``; the values and gradients are the linear layer's either way."""
    monkeypatch.setattr(modeling_linear, "float32_product_on_onednn", lambda: on_onednn)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(shape, generator=generator, requires_grad=True)
    weight = torch.randn(6, shape[-1], generator=generator, requires_grad=True)
    bias = torch.randn(6, generator=generator, requires_grad=True) if with_bias else None
    output = onednn_linear(inputs, weight, bias)
    # the tokens as a (1, C, T, 1) map
    assert convolutions == ([(1, shape[-1], inputs.numel() // shape[-1], 1)] if on_onednn else [])
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


@pytest.mark.parametrize(
    "shape", [(7, 5), (2, 3, 4, 5), (1, 200, 5)], ids=["tokens", "windows (B, nW, N, C)", "one image"]
)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("on_onednn", [True, False], ids=["avx512", "avx2"])
def test_inference_runs_the_matmul_primitive(convolutions, primitives, shape, with_bias, on_onednn, monkeypatch):
    """Float32 inference runs oneDNN's matmul primitive where ``float32_product_on_onednn`` (AVX-512), and exactly
    ``F.linear`` elsewhere; neither is the training path's convolution."""
    monkeypatch.setattr(modeling_linear, "float32_product_on_onednn", lambda: on_onednn)
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(shape, generator=generator)
    weight = torch.randn(6, shape[-1], generator=generator, requires_grad=True)  # a parameter, under no_grad
    bias = torch.randn(6, generator=generator, requires_grad=True) if with_bias else None
    with torch.no_grad():
        output = onednn_linear(inputs, weight, bias)
        linear = F.linear(inputs, weight, bias)
    assert primitives == ([(torch.float32, torch.float32, torch.float32 if with_bias else None)] if on_onednn else [])
    assert convolutions == []
    if not on_onednn:
        assert torch.equal(output, linear)
    assert output.shape == (*shape[:-1], 6) and output.is_contiguous() and not output.requires_grad
    expected = float64_linear(inputs, weight.detach(), None if bias is None else bias.detach())
    torch.testing.assert_close(output.double(), expected, rtol=1e-6, atol=1e-5)


@needs_bfloat16_kernels
@pytest.mark.parametrize("case", ["autocast", "bfloat16 operands"])
def test_bfloat16_inference_runs_the_matmul_primitive_in_bfloat16(convolutions, primitives, case):
    generator = torch.Generator().manual_seed(3)
    inputs, weight, bias = (torch.randn(shape, generator=generator) for shape in ((2, 9, 16), (8, 16), (8,)))
    with torch.no_grad():
        if case == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                output, expected = onednn_linear(inputs, weight, bias), F.linear(inputs, weight, bias)
        else:
            operands = (inputs.bfloat16(), weight.bfloat16(), bias.bfloat16())
            output, expected = onednn_linear(*operands), F.linear(*operands)
    # the float32 operands cast as autocast casts them
    assert primitives == [(torch.bfloat16,) * 3] and convolutions == []
    assert output.dtype == torch.bfloat16 and output.shape == (2, 9, 8)
    # the same bfloat16 operands and float32 accumulation as autocast's F.linear: within a bfloat16 rounding of it
    torch.testing.assert_close(output.float(), expected.float(), rtol=2**-7, atol=1e-2)
    exact = float64_linear(inputs.bfloat16().float(), weight.bfloat16().float(), bias.bfloat16().float())
    torch.testing.assert_close(output.double(), exact, rtol=2**-7, atol=1e-2)


@pytest.mark.parametrize("requires_grad", [True, False], ids=["training", "inference"])
def test_a_hand_computed_product(requires_grad):
    inputs = torch.tensor([[1.0, 2.0], [3.0, -1.0]], requires_grad=requires_grad)
    weight = torch.tensor([[1.0, 0.0], [2.0, 1.0], [-1.0, 4.0]])
    bias = torch.tensor([0.5, 0.0, -2.0])
    expected = torch.tensor([[1.5, 4.0, 5.0], [3.5, 5.0, -9.0]])
    assert torch.equal(onednn_linear(inputs, weight, bias).detach(), expected)


@pytest.mark.parametrize("requires_grad", [True, False], ids=["training", "inference"])
def test_a_non_contiguous_input(convolutions, primitives, requires_grad, float32_on_onednn):
    inputs = torch.randn(4, 6, 5).transpose(0, 1)  # (6, 4, 5), not contiguous
    weight, bias = torch.randn(3, 5, requires_grad=requires_grad), torch.randn(3)
    torch.testing.assert_close(onednn_linear(inputs, weight, bias), F.linear(inputs, weight, bias))
    assert (len(convolutions), len(primitives)) == ((1, 0) if requires_grad else (0, 1))


def test_the_torchscript_tracer_records_the_linear_layer(primitives):
    with torch.no_grad():
        traced = torch.jit.trace(OneDNNLinear(5, 3), torch.randn(4, 5), check_trace=False)
    assert primitives == []
    assert [node.kind() for node in traced.graph.nodes() if node.kind().startswith("aten::")] == ["aten::linear"]


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
@pytest.mark.parametrize(
    "case",
    [
        "float64",
        "bfloat16 autocast, training",
        "float16 autocast",
        "medium matmul precision",
        "oneDNN off",
        "empty",
        "traced",
    ],
)
@pytest.mark.parametrize("requires_grad", [True, False], ids=["training", "inference"])
def test_falls_back_to_the_linear_layer(convolutions, primitives, case, requires_grad):
    inputs, weight, bias = torch.randn(3, 4, 5), torch.randn(2, 5, requires_grad=requires_grad), torch.randn(2)
    if case == "float64":
        inputs, weight, bias = inputs.double(), weight.double(), bias.double()
    if case == "empty":
        inputs = inputs[:0]
    if case.startswith("bfloat16 autocast") or case == "float16 autocast":
        if case.startswith("bfloat16") and not requires_grad:
            pytest.skip("bfloat16 autocast at inference runs the primitive (tested above)")
        dtype = torch.float16 if case == "float16 autocast" else torch.bfloat16
        with torch.autocast("cpu", dtype=dtype):
            output, expected = onednn_linear(inputs, weight, bias), F.linear(inputs, weight, bias)
        assert output.dtype == dtype
    elif case == "traced":
        monkeypatch = pytest.MonkeyPatch()
        with monkeypatch.context() as patched:
            patched.setattr(torch.jit, "is_tracing", lambda: True)
            assert not runs_on_onednn(inputs, weight) and inference_product_dtype(inputs, weight) is None
            output, expected = onednn_linear(inputs, weight, bias), F.linear(inputs, weight, bias)
    elif case == "medium matmul precision":
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("medium")
        try:
            assert not runs_on_onednn(inputs, weight) and inference_product_dtype(inputs, weight) is None
            output, expected = onednn_linear(inputs, weight, bias), F.linear(inputs, weight, bias)
        finally:
            torch.set_float32_matmul_precision(previous)
    elif case == "oneDNN off":
        with torch.backends.mkldnn.flags(enabled=False):
            assert not runs_on_onednn(inputs, weight) and inference_product_dtype(inputs, weight) is None
            output, expected = onednn_linear(inputs, weight, bias), F.linear(inputs, weight, bias)
    else:
        output, expected = onednn_linear(inputs, weight, bias), F.linear(inputs, weight, bias)
    assert convolutions == [] and primitives == []
    assert torch.equal(output, expected)


@pytest.mark.parametrize("backend", ["conv", "matmul"])
def test_bfloat16_oneDNN_products_keep_the_linear_layer(backend, float32_on_onednn):
    """A user who lets oneDNN convolutions or matmuls compute float32 in bfloat16 still gets full-precision dense
    layers: a path that would compute through them is not taken (the training path's convolution stands in for a
    matmul, so it needs both)."""
    inputs, weight = torch.randn(3, 5), torch.randn(2, 5)
    assert runs_on_onednn(inputs, weight) and inference_product_dtype(inputs, weight) == torch.float32
    settings = getattr(torch.backends.mkldnn, backend)
    previous = settings.fp32_precision
    settings.fp32_precision = "bf16"
    try:
        assert not runs_on_onednn(inputs, weight)  # the training path needs both at full precision
        expected_dtype = torch.float32 if backend == "conv" else None
        assert inference_product_dtype(inputs, weight) == expected_dtype
    finally:
        settings.fp32_precision = previous


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


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_packed_weight_is_the_same_product(with_bias, dtype, float32_on_onednn):
    """``PackedInferenceLinear``: the weight cast and packed once; on a hand-computed product exactly, and on random
    ``(2, 5, 7, C)`` tokens what the per-call cast and reorder (:func:`onednn_inference_linear`) computes, bit for bit
    (float32 inputs are cast to ``dtype``, as autocast casts them); the parameters stay as they are."""
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bfloat16 kernels for this CPU")
    weight = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]], requires_grad=True)
    bias = torch.tensor([1.0, 0.0, -2.0]) if with_bias else None
    packed = PackedInferenceLinear(weight, bias, dtype)
    with torch.no_grad():
        output = packed(torch.tensor([[2.0, 1.0], [0.0, 4.0]]))
    product = [[4.0, 5.0, 1.0], [8.0, -4.0, 0.0]]
    expected = [[a + b for a, b in zip(row, [1.0, 0.0, -2.0] if with_bias else [0.0] * 3)] for row in product]
    assert output.dtype == dtype and output.tolist() == expected
    torch.manual_seed(0)
    weight, bias = torch.randn(24, 40), torch.randn(24) if with_bias else None
    packed = PackedInferenceLinear(weight, bias, dtype)
    tokens = torch.randn(2, 5, 7, 40)
    with torch.no_grad():
        output = packed(tokens)
        reference = onednn_inference_linear(tokens, weight, bias, dtype)
    assert output.shape == (2, 5, 7, 24) and weight.dtype == torch.float32
    torch.testing.assert_close(output, reference, atol=0, rtol=0)
    # against float32's F.linear: bfloat16 within a bfloat16 rounding of the operands (as autocast's F.linear)
    tolerance = {"rtol": 1.3e-6, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2**-6, "atol": 5e-2}
    torch.testing.assert_close(output.float(), F.linear(tokens, weight, bias), **tolerance)


def test_unchanged_since_notices_every_kind_of_change():
    """``unchanged_since`` against the stamps taken when a preparation was made: True only for the very tensors,
    unchanged, and equal settings; an in-place change, a replaced tensor, new memory (``.data =``), a changed setting,
    a tensor where a setting was (and back) and another number of entries each make it False."""
    weight, bias = torch.ones(3, 2), torch.zeros(3)
    sources = (weight, None, 1e-5, bias)
    stamps = weight_stamps(sources)
    assert unchanged_since(sources, sources, stamps)
    assert unchanged_since((weight, None, 1e-5, bias), sources, stamps)  # a new tuple of the same entries
    assert not unchanged_since((weight.clone(), None, 1e-5, bias), sources, stamps)  # the same values, replaced
    assert not unchanged_since((weight, None, 1e-6, bias), sources, stamps)
    assert not unchanged_since((weight, torch.zeros(1), 1e-5, bias), sources, stamps)
    assert not unchanged_since((None, None, 1e-5, bias), sources, stamps)
    assert not unchanged_since((weight, None, 1e-5), sources, stamps)
    bias.add_(1.0)  # in place: the version counter moves
    assert not unchanged_since(sources, sources, stamps)
    stamps = weight_stamps(sources)
    weight.data = torch.ones(3, 2)  # new memory under the same tensor, no version change
    assert not unchanged_since(sources, sources, stamps)
    assert unchanged_since(sources, sources, weight_stamps(sources))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_packed_convolution_with_its_relu_by_hand(dtype):
    """``PackedInferenceConvolution`` with stride 2, padding 1 and the ReLU post-op on a 4 x 4 map holding
    ``4 i + j``, a 3 x 3 kernel of ones and bias -30: the window sums 10, 24, 51, 90 (worked out by hand) less 30,
    the negative ones cut to 0; exact in bfloat16 too (small integers); the weight and bias are cast to ``dtype``."""
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bfloat16 kernels for this CPU")
    convolution = PackedInferenceConvolution(
        torch.ones(1, 1, 3, 3), torch.tensor([-30.0]), 1, dtype, stride=(2, 2), padding=(1, 1), activation="relu"
    )
    assert convolution.weight.dtype == convolution.bias.dtype == dtype
    with torch.no_grad():
        output = convolution(torch.arange(16.0).view(1, 1, 4, 4).to(dtype))
    assert output.dtype == dtype and output.tolist() == [[[[0.0, 0.0], [21.0, 60.0]]]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_packed_products_post_ops_by_hand(dtype, float32_on_onednn):
    """``PackedInferenceLinear`` and ``PackedInferenceConvolution`` with a residual added in the kernel and
    ``PackedInferenceLinear`` with the exact GELU as its post-op, on numbers worked out by hand (exact in bfloat16:
    small integers; GELU(0) = 0, GELU(1) = 0.8413447, GELU(-1) = -0.1586553, Phi(x) x); the residual is only read."""
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bfloat16 kernels for this CPU")
    weight, bias = torch.tensor([[1.0, 2.0], [3.0, -1.0]]), torch.tensor([1.0, -2.0])
    tokens = torch.tensor([[2.0, 1.0], [0.0, 4.0]])  # products + bias: [[5, 3], [9, -6]]
    residual = torch.tensor([[10.0, 20.0], [30.0, 40.0]], dtype=dtype)
    kept = residual.clone()
    with torch.no_grad():
        added = PackedInferenceLinear(weight, bias, dtype)(tokens, residual=residual)
        activated = PackedInferenceLinear(torch.eye(2), None, dtype, exact_gelu=True)(torch.tensor([[0.0, 1.0]]))
        activated_negative = PackedInferenceLinear(torch.eye(2), None, dtype, exact_gelu=True)(-torch.ones(1, 2))
    assert added.dtype == dtype and added.tolist() == [[15.0, 23.0], [39.0, 34.0]]
    assert torch.equal(residual, kept) and added.data_ptr() != residual.data_ptr()
    tolerance = {"rtol": 1e-6, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 2**-8, "atol": 0.0}
    torch.testing.assert_close(activated.float(), torch.tensor([[0.0, 0.8413447]]), **tolerance)
    torch.testing.assert_close(activated_negative.float(), torch.full((1, 2), -0.1586553), **tolerance)
    # a 3 x 3 kernel of ones over a 3 x 3 map of ones, "same" padding: 4 / 6 / 9 neighbours, plus 10 * (i + 1)
    convolution = PackedInferenceConvolution(torch.ones(1, 1, 3, 3), None, 1, dtype)
    map_residual = (10.0 * torch.arange(1.0, 10.0)).view(1, 1, 3, 3).to(dtype)
    with torch.no_grad():
        output = convolution(torch.ones(1, 1, 3, 3, dtype=dtype), residual=map_residual)
    assert output.tolist() == [[[[14.0, 26.0, 34.0], [46.0, 59.0, 66.0], [74.0, 86.0, 94.0]]]]


def test_the_post_ops_equal_the_separate_kernels_in_float32(float32_on_onednn):
    """On random operands, the residual post-ops equal ``residual + product`` and the GELU post-op ``gelu`` of the
    product, float32 at float32's own rounding (bit for bit in our checks; not promised)."""
    torch.manual_seed(0)
    weight, bias, tokens = torch.randn(24, 40), torch.randn(24), torch.randn(2, 5, 7, 40)
    residual = torch.randn(2, 5, 7, 24)
    with torch.no_grad():
        product = F.linear(tokens, weight, bias)
        added = PackedInferenceLinear(weight, bias, torch.float32)(tokens, residual=residual)
        activated = PackedInferenceLinear(weight, bias, torch.float32, exact_gelu=True)(tokens)
        kernel = torch.randn(40, 1, 3, 3)
        channels_first = torch.randn(2, 9, 11, 40).permute(0, 3, 1, 2)
        convolution = PackedInferenceConvolution(kernel, bias.repeat(2)[:40], 40, torch.float32)
        map_added = convolution(channels_first, residual=channels_first)
        map_expected = channels_first + F.conv2d(channels_first, kernel, bias.repeat(2)[:40], padding=1, groups=40)
    torch.testing.assert_close(added, residual + product)
    torch.testing.assert_close(activated, F.gelu(product))
    torch.testing.assert_close(map_added, map_expected)


@pytest.mark.parametrize(
    ("capability", "pays"), [("AVX512", True), ("AVX2", False), ("DEFAULT", False), ("SVE256", False)]
)
def test_onednn_float32_kernels_run_where_aten_runs_avx512(capability, pays, monkeypatch):
    """``gelu_post_op_pays`` and ``float32_product_on_onednn`` answer from torch's CPU capability: oneDNN's GELU
    post-op and per-call float32 product on AVX-512 (measured faster there), ATen's GELU and ``F.linear`` elsewhere
    (measured faster on an AVX2-only EPYC; unmeasured CPUs keep the kernels of the unoptimised PyTorch layer). Read
    once per process: the cache is cleared around the forced capability."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    aten_runs_avx512.cache_clear()
    try:
        assert gelu_post_op_pays() is pays and float32_product_on_onednn() is pays
    finally:
        aten_runs_avx512.cache_clear()


def test_a_float32_prepared_layer_where_mkl_is_faster_is_f_linear(monkeypatch):
    """Where ``float32_product_on_onednn`` is False (AVX2 only), a float32 ``PackedInferenceLinear`` keeps a copy of
    the weight in its own layout and computes ``F.linear`` on it, then the GELU or the residual addition in place:
    exactly those values; a residual of another shape is refused (``add_`` would broadcast it), naming both."""
    monkeypatch.setattr(modeling_linear, "float32_product_on_onednn", lambda: False)
    torch.manual_seed(0)
    weight, bias, tokens = torch.randn(24, 40), torch.randn(24), torch.randn(2, 5, 7, 40)
    residual = torch.randn(2, 5, 7, 24)
    prepared = PackedInferenceLinear(weight, bias, torch.float32)
    assert not prepared.on_onednn and prepared.weight.layout == torch.strided
    assert torch.equal(prepared.weight, weight) and prepared.weight.data_ptr() != weight.data_ptr()
    with torch.no_grad():
        product = F.linear(tokens, weight, bias)
        assert torch.equal(prepared(tokens), product)
        assert torch.equal(prepared(tokens, residual=residual), product + residual)
        activated = PackedInferenceLinear(weight, bias, torch.float32, exact_gelu=True)(tokens)
        assert torch.equal(activated, F.gelu(product))
        with pytest.raises(
            ValueError, match=r"residual of shape \(7, 24\) added to a product of shape \(2, 5, 7, 24\)"
        ):
            prepared(tokens, residual=residual[0, 0])
        weight.mul_(2.0)  # the prepared copy is what the layer held when it was prepared
        assert torch.equal(prepared(tokens), product)


def test_a_residual_of_another_dtype_or_after_an_activation_is_refused():
    """The residual post-op adds a map in the product's dtype to the bare product: a float32 residual on a bfloat16
    product, or a residual on a product with an activation post-op, are refused, naming both."""
    weight = torch.randn(4, 3)
    tokens, residual = torch.randn(2, 3), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"residual of dtype torch.float64 .* torch.float32 product"):
        PackedInferenceLinear(weight, None, torch.float32)(tokens, residual=residual.double())
    with pytest.raises(ValueError, match=r"post-op 'gelu'"):
        PackedInferenceLinear(weight, None, torch.float32, exact_gelu=True)(tokens, residual=residual)
    convolution = PackedInferenceConvolution(torch.ones(2, 1, 3, 3), None, 2, torch.float32, activation="relu")
    channels_first = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"post-op 'relu'"):
        convolution(channels_first, residual=channels_first)


def test_calls_hooks_counts_the_modules_own_hooks():
    """``calls_hooks``: a forward hook or pre-hook of any of the modules, always; a backward hook or pre-hook only
    with grad mode on (under ``no_grad`` a call sets none up); global hooks (torch's module trackers) never."""
    layer, other = nn.Linear(2, 2), nn.Linear(2, 2)
    assert not calls_hooks(layer, other)
    forward_hooks = (
        lambda module: module.register_forward_hook(lambda *args: None),
        lambda module: module.register_forward_pre_hook(lambda *args: None),
    )
    for register in forward_hooks:
        handle = register(other)
        assert calls_hooks(layer, other) and calls_hooks(other, layer) and not calls_hooks(layer)
        with torch.no_grad():
            assert calls_hooks(other)
        handle.remove()
        assert not calls_hooks(other)
    backward_hooks = (
        lambda module: module.register_full_backward_hook(lambda *args: None),
        lambda module: module.register_full_backward_pre_hook(lambda *args: None),
    )
    for register in backward_hooks:
        handle = register(other)
        assert calls_hooks(layer, other)
        with torch.no_grad():
            assert not calls_hooks(layer, other)
        handle.remove()
        assert not calls_hooks(other)
    module_hooks = torch.nn.modules.module
    handles = [
        module_hooks.register_module_forward_hook(lambda *args: None),
        module_hooks.register_module_forward_pre_hook(lambda *args: None),
        module_hooks.register_module_full_backward_hook(lambda *args: None),
    ]
    try:
        assert not calls_hooks(layer, other)
    finally:
        for handle in handles:
            handle.remove()
