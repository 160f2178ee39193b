"""``benchmarks/harness.py``'s operation count: what the package's layers run on the CPU is counted, the fused
attention kernel and oneDNN's matmul primitive (the dense layers at inference) included."""

import pytest
import torch
from test_benchmark_cuda_script import load_benchmark_module

from hf_semseg.models.modeling_linear import OneDNNLinear


harness = load_benchmark_module("harness")


@pytest.mark.parametrize("grad", [False, True], ids=["inference (matmul primitive)", "graph (1x1 convolution)"])
def test_a_dense_layer_counts_its_multiply_adds(grad):
    layer = OneDNNLinear(8, 16)
    tokens = torch.randn(2, 5, 8)
    counter = harness.flop_counter()
    with torch.set_grad_enabled(grad), counter:
        layer(tokens)
    assert counter.get_total_flops() == 2 * (2 * 5) * 8 * 16  # 10 tokens x 8 inputs x 16 outputs, 2 FLOPs each


def test_the_cpu_attention_kernel_counts_its_two_products():
    query = key = value = torch.randn(1, 2, 6, 4)
    counter = harness.flop_counter()
    with torch.no_grad(), counter:
        torch.nn.functional.scaled_dot_product_attention(query, key, value)
    assert counter.get_total_flops() == 2 * 2 * (1 * 2 * 6 * 6 * 4)  # q k^T and P v, 2 heads


def test_the_decoder_count_also_counts_the_dense_layers():
    """``count_macs_with_analytic`` (the decoder benchmarks' count) runs the model under ``no_grad``, where the dense
    layers run oneDNN's matmul primitive: it counts them."""
    layer = OneDNNLinear(8, 16)
    counts = harness.count_macs_with_analytic(layer, torch.randn(2, 5, 8), [])
    assert counts["gmacs"] == counts["gmacs_flop_counter"] == (2 * 5) * 8 * 16 / 1e9
