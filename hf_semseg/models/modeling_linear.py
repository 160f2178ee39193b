"""The dense layer every family's token MLPs, projections and heads use: ``nn.Linear``, run on the CPU in float32 as a
1x1 convolution through oneDNN.

Why: PyTorch runs a float32 ``nn.Linear`` on the CPU as a BLAS ``sgemm`` (MKL in the official wheels), and MKL picks
its AVX2 kernels on AMD processors: on the 2-core AMD EPYC (Zen 5) we benchmark on, a 2048^2 matmul reaches about
190 GFLOP/s, while oneDNN's 1x1 convolution of the same product, with the tokens laid out channels-last, reaches
350-450 GFLOP/s (AVX-512); the projections of Swin-T's blocks at 512x512 ran 1.6-2.4x faster (forward) and 1.4-2x
(training step). The values are the same product with another summation order (relative differences of 1e-7 to
1e-6, like any change of BLAS kernel); no layout changes hands: the ``(..., C)`` tokens are viewed as a ``(1, C, T, 1)``
channels-last map and the output comes back as ``(..., C_out)`` views of the convolution's.

It runs only where oneDNN computes in full float32: the CPU, float32 inputs and weights, no autocast (autocast runs
``F.linear`` in bfloat16 through oneDNN already), the float32 precision of both matmuls and oneDNN convolutions left
at full precision (a user who allows bfloat16 or TF32 inside float32 matmuls gets ``F.linear`` as asked), and not
while traced by torch.compile / torch.export (a traced ``F.linear`` is what inductor fuses and ONNX exports as a
``MatMul``). Elsewhere it is ``F.linear``.

Portable module: imports torch only.
"""

import torch
import torch.nn.functional as F
from torch import nn


def runs_on_onednn(*tensors: torch.Tensor) -> bool:
    """Whether a dense layer over ``tensors`` (its input or output gradient, weight, ...) runs as a oneDNN 1x1
    convolution: all on the CPU in float32, full-precision float32 matmuls and oneDNN convolutions, not traced."""
    if torch.compiler.is_compiling():
        return False
    if not all(tensor.device.type == "cpu" and tensor.dtype == torch.float32 for tensor in tensors):
        return False
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if torch.get_float32_matmul_precision() != "highest":
        return False
    convolution_precision = torch.backends.mkldnn.conv.fp32_precision
    if convolution_precision == "none":  # "none": the oneDNN-wide setting applies
        convolution_precision = torch.backends.mkldnn.fp32_precision
    return convolution_precision in ("none", "ieee")


def tokens_as_channels_last_map(tokens: torch.Tensor) -> torch.Tensor:
    """``(..., C)`` -> ``(1, C, T, 1)`` with channels-last strides: T = the product of the leading sizes; a view of a
    contiguous input."""
    # (..., C) -> (1, T, 1, C) -> (1, C, T, 1)
    return tokens.reshape(1, -1, 1, tokens.shape[-1]).permute(0, 3, 1, 2)


def channels_last_map_as_tokens(channels_last: torch.Tensor, leading_shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`tokens_as_channels_last_map`: ``(1, C, T, 1)`` -> ``(*leading_shape, C)``."""
    # (1, C, T, 1) -> (1, T, 1, C) -> (..., C)
    return channels_last.permute(0, 2, 3, 1).reshape(*leading_shape, channels_last.shape[1])


def onednn_linear(hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(hidden_states, weight, bias)``; where :func:`runs_on_onednn` (and not under autocast), as a oneDNN
    1x1 convolution of the tokens (see the module docstring). Autograd differentiates the convolution, which runs
    oneDNN's backward kernels too."""
    operands = (hidden_states, weight) if bias is None else (hidden_states, weight, bias)
    if (
        hidden_states.numel() == 0
        or torch.is_autocast_enabled(hidden_states.device.type)
        or not runs_on_onednn(*operands)
    ):
        return F.linear(hidden_states, weight, bias)
    # (C_out, C_in) -> (C_out, C_in, 1, 1); the output (1, C_out, T, 1) is channels-last like the input
    output = F.conv2d(tokens_as_channels_last_map(hidden_states), weight[:, :, None, None], bias)
    return channels_last_map_as_tokens(output, hidden_states.shape[:-1])


def linear_backward(
    grad_output: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, has_bias: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The gradients of ``F.linear(inputs, weight, bias)`` given that of its output: ``(grad_inputs, grad_weight,
    grad_bias)`` (``grad_bias`` None without a bias), in the dtype of ``grad_output`` (the callers cast). For the
    custom autograd functions that recompute the linear layer's input: where :func:`runs_on_onednn`, oneDNN's 1x1
    convolution backward; elsewhere two matmuls and a sum."""
    if grad_output.numel() and runs_on_onednn(grad_output, inputs, weight):
        out_features, in_features = weight.shape
        grad_map, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            tokens_as_channels_last_map(grad_output),
            tokens_as_channels_last_map(inputs),
            weight[:, :, None, None],
            [out_features] if has_bias else None,
            [1, 1],  # stride
            [0, 0],  # padding
            [1, 1],  # dilation
            False,  # transposed
            [0, 0],  # output padding
            1,  # groups
            [True, True, has_bias],
        )
        grad_inputs = channels_last_map_as_tokens(grad_map, inputs.shape[:-1])
        return grad_inputs, grad_weight.view(out_features, in_features), grad_bias if has_bias else None
    # (..., out) -> (tokens, out); (..., in) -> (tokens, in)
    grad_rows = grad_output.reshape(-1, grad_output.shape[-1])
    grad_weight = grad_rows.t().mm(inputs.reshape(-1, inputs.shape[-1]))
    grad_bias = grad_rows.sum(0) if has_bias else None
    return grad_output.matmul(weight), grad_weight, grad_bias


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and init) whose forward is :func:`onednn_linear`."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return onednn_linear(hidden_states, self.weight, self.bias)


#: the dense layers whose forward is the plain product (``nn.Linear``'s or :class:`OneDNNLinear`'s): the memory-saving
#: autograd functions may run them themselves; quantised or adapted subclasses, with forwards of their own, run as
#: they are
PLAIN_LINEAR_TYPES = (nn.Linear, OneDNNLinear)
