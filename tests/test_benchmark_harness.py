"""``benchmarks/harness.py``'s operation count: what the package's layers run on the CPU is counted, the fused
attention kernel and oneDNN's matmul primitive (the dense layers at inference) included."""

import contextlib
import time
from unittest import mock

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


def test_the_attention_timer_times_each_models_own_attention_functions():
    """``benchmark_pale.timed_attention`` gives each model's attention functions to its own timer: a Pale forward
    adds to Pale's timer only, a Swin forward to Swin's only; the recorded seconds are part of the forward's."""
    from transformers import SwinConfig, SwinModel

    from hf_semseg import PaleConfig, PaleModel

    from model_suite import tiny_pale_kwargs

    pale_benchmark = load_benchmark_module("benchmark_pale")
    torch.manual_seed(0)
    models = {
        "pale_tiny": PaleModel(PaleConfig(**tiny_pale_kwargs(), attn_implementation="sdpa")).eval(),
        "hf_swin_tiny": SwinModel(
            SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, attn_implementation="sdpa")
        ).eval(),
    }
    inputs = {"pale_tiny": torch.randn(1, 3, 36, 44), "hf_swin_tiny": torch.randn(1, 3, 32, 32)}
    timers = {name: harness.AttentionTimer() for name in models}
    with pale_benchmark.timed_attention(timers), torch.no_grad():
        for name, model in models.items():
            other = next(timer for key, timer in timers.items() if key != name)
            before = list(other.calls), other.current
            start = time.perf_counter()
            timers[name].wrap(model)(inputs[name])
            forward_s = time.perf_counter() - start
            assert len(timers[name].calls) == 1 and 0 < timers[name].calls[0] < forward_s
            assert (other.calls, other.current) == before  # nothing of this forward in the other model's timer
    # outside the context the lookups are the models' own again: nothing more is recorded
    with torch.no_grad():
        models["pale_tiny"](inputs["pale_tiny"])
    assert timers["pale_tiny"].current == timers["pale_tiny"].calls[0]


def test_the_module_forward_twin_is_pale_before_the_inference_forward_with_its_own_attention_timer():
    """``use_module_forward`` switches the instance (not the class) to the module-by-module forward with a call per
    branch: the same output bit for bit, more attention calls; under ``timed_attention`` each Pale model's
    attention seconds go to its own timer."""
    from hf_semseg import PaleConfig, PaleModel
    from hf_semseg.models import modeling_pale

    from model_suite import tiny_pale_kwargs

    pale_benchmark = load_benchmark_module("benchmark_pale")
    config = PaleConfig(**tiny_pale_kwargs(), attn_implementation="sdpa")
    torch.manual_seed(0)
    models = {"pale_tiny": PaleModel(config).eval()}
    models[pale_benchmark.MODULE_FORWARD_TWIN] = PaleModel(config).eval()
    models[pale_benchmark.MODULE_FORWARD_TWIN].load_state_dict(models["pale_tiny"].state_dict())
    pale_benchmark.use_module_forward(models[pale_benchmark.MODULE_FORWARD_TWIN])
    pixel_values = torch.randn(1, 3, 48, 48)  # maps 12, 6, 3, 2: the branches of stages 1, 2 and 4 attend together
    timers = {name: harness.AttentionTimer() for name in models}
    calls = {name: 0 for name in models}
    real_function = modeling_pale.attention_function

    def counting_lookup(*args):
        function = real_function(*args)
        name = next(name for name, timer in timers.items() if timer.active)

        def counted(*call_args, **kwargs):
            calls[name] += 1
            return function(*call_args, **kwargs)

        return counted

    outputs = {}
    with mock.patch.object(modeling_pale, "attention_function", counting_lookup):
        with pale_benchmark.timed_attention(timers), torch.no_grad():
            for name, model in models.items():
                outputs[name] = timers[name].wrap(model)(pixel_values).last_hidden_state
    assert [len(timer.calls) for timer in timers.values()] == [1, 1]
    assert all(timer.calls[0] > 0 for timer in timers.values())
    # attention calls, blocks per stage 1, 1, 2, 1, all maps square (12, 6, 3, 2 in pales of 3, 3, 2, 2): one per kind
    # of group (stage 3's map of 3 has two: 3 = 1 x 2 + 1), 1 + 1 + 2 x 2 + 1; the twin one per kind and branch
    assert calls == {"pale_tiny": 7, pale_benchmark.MODULE_FORWARD_TWIN: 14}
    torch.testing.assert_close(outputs["pale_tiny"], outputs[pale_benchmark.MODULE_FORWARD_TWIN], atol=0, rtol=0)
    with torch.no_grad():  # the class is untouched: the other model's blocks still take the inference forward
        assert models["pale_tiny"].encoder.stages[0].layers[0].runs_inference_forward(torch.ones(1, 12, 12, 16))


def test_the_attention_fields_and_the_split_of_the_ratio():
    timer = harness.AttentionTimer()
    timer.calls = [9.0, 0.5, 1.5]  # a warm-up forward, then two timed rounds
    fields = timer.fields([2.0, 3.0])
    assert fields == {"attention_share": (0.25 + 0.5) / 2, "attention_s": [0.5, 1.5]}
    with pytest.raises(ValueError, match="3 forwards recorded for 4 timed rounds"):
        timer.fields([1.0] * 4)
    pale_benchmark = load_benchmark_module("benchmark_pale")
    pale = {"median_s": 2.0, "attention_s": [1.0, 1.2, 0.8]}
    swin = {"median_s": 1.0, "attention_s": [0.5, 0.5, 0.4]}
    # Pale's attention alone (median 1.0 s) is Swin's whole forward; outside it 1.0 s against Swin's 0.5 s
    assert pale_benchmark.attention_split(pale, swin) == {
        "pale_attention_over_swin": 1.0,
        "pale_rest_over_swin_rest": 2.0,
    }


def test_the_optimized_twin_is_pale_optimized_for_inference_with_the_same_gmacs():
    """``--optimized-twin`` adds Pale-T with the same weights after ``optimize_for_inference``: nearly the same
    output (the folded BatchNorms' rounding), and the same GMACs, since the FLOP counter counts oneDNN's packed
    convolutions (2 x 9 FLOPs per output of a 3 x 3 depth-wise one, worked out below) and products."""
    from hf_semseg.models.modeling_pale import PackedInferenceConvolution, PaleBlock

    pale_benchmark = load_benchmark_module("benchmark_pale")
    names = pale_benchmark.model_names(pale_benchmark.parse_args(["--optimized-twin"]))
    assert names == ("pale_tiny", "hf_swin_tiny", pale_benchmark.OPTIMIZED_TWIN)
    both = pale_benchmark.parse_args(["--optimized-twin", "--module-forward-twin"])
    assert pale_benchmark.model_names(both) == (*pale_benchmark.MODELS, *pale_benchmark.TWINS)
    models = {name: pale_benchmark.build_model(name).eval() for name in ("pale_tiny", pale_benchmark.OPTIMIZED_TWIN)}
    blocks = {name: [m for m in model.modules() if isinstance(m, PaleBlock)] for name, model in models.items()}
    assert len(blocks["pale_tiny"]) == 22 and all(block.inference_weights is None for block in blocks["pale_tiny"])
    optimized_blocks = blocks[pale_benchmark.OPTIMIZED_TWIN]
    assert all(block.inference_weights.settings == {"fold_batch_norm": True} for block in optimized_blocks)
    pixel_values = torch.randn(1, 3, 64, 64)
    gmacs = {name: harness.count_gmacs(model, pixel_values) for name, model in models.items()}
    assert gmacs["pale_tiny"] > 0.1 and gmacs[pale_benchmark.OPTIMIZED_TWIN] == pytest.approx(gmacs["pale_tiny"])
    with torch.no_grad():
        outputs = [model(pixel_values).last_hidden_state for model in models.values()]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4)
    convolution = PackedInferenceConvolution(torch.randn(8, 1, 3, 3), torch.randn(8), 8, torch.float32)
    counter = harness.flop_counter()
    with torch.no_grad(), counter:
        convolution(torch.randn(1, 5, 5, 8).permute(0, 3, 1, 2))
    assert counter.get_total_flops() == 2 * 9 * 8 * 5 * 5


def test_products_with_a_residual_post_op_count_their_products_only(float32_on_onednn):
    """The optimised blocks' residual additions run as oneDNN post-ops (the ``.binary`` overloads, the added map
    before the weight): counted as the products alone, from the weight's shape, not the added map's. (The dense
    layer's float32 product forced onto oneDNN, as on a CPU with AVX-512, whatever this CPU is.)"""
    from hf_semseg.models.modeling_linear import PackedInferenceConvolution, PackedInferenceLinear

    convolution = PackedInferenceConvolution(torch.randn(8, 1, 3, 3), torch.randn(8), 8, torch.float32)
    channels_first = torch.randn(1, 5, 5, 8).permute(0, 3, 1, 2)
    dense = PackedInferenceLinear(torch.randn(16, 8), torch.randn(16), torch.float32)
    counter = harness.flop_counter()
    with torch.no_grad(), counter:
        convolution(channels_first, residual=channels_first)
        dense(torch.randn(2, 5, 8), residual=torch.randn(2, 5, 16))
    assert counter.get_total_flops() == 2 * 9 * 8 * 5 * 5 + 2 * (2 * 5) * 8 * 16


@pytest.mark.parametrize("count", [2, 3, 4, 5])
def test_balanced_orders_put_every_step_right_after_every_other_equally_often(count):
    """A Williams design: every order a permutation; every ordered pair of different steps adjacent in the same
    number of orders (once for an even count over ``count`` orders, twice for an odd one over ``2 * count``)."""
    orders = harness.balanced_orders(count)
    assert len(orders) == (count if count % 2 == 0 else 2 * count)
    adjacent = {}
    for order in orders:
        assert sorted(order) == list(range(count))
        for before, after in zip(order, order[1:]):
            adjacent[before, after] = adjacent.get((before, after), 0) + 1
    assert set(adjacent) == {(a, b) for a in range(count) for b in range(count) if a != b}
    assert set(adjacent.values()) == {1 if count % 2 == 0 else 2}
    assert harness.balanced_orders(4)[0] == [0, 1, 3, 2]  # a = 0, 1, n - 1, 2 (worked out by hand)


def test_round_robin_rounds_take_the_balanced_orders_in_turn():
    """``time_round_robin``: the warm-up rounds in the steps' order, then each timed round in the next balanced
    order; every step timed once per round, its times in round order."""
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times, errors = harness.time_round_robin(steps, warmup=1, repeats=3, synchronize=lambda: None)
    orders = harness.balanced_orders(3)
    expected = list("abc") + ["abc"[i] for order in orders[:3] for i in order]
    assert calls == expected and errors == {}
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 3, "b": 3, "c": 3}


class CastCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the casts to bfloat16 of one float32 tensor that reach the dispatcher below autocast (where autocast's
    own casts arrive as ``_to_copy``)."""

    def __init__(self, tensor):
        super().__init__()
        self.tensor, self.casts = tensor, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and args[0] is self.tensor and kwargs.get("dtype") == torch.bfloat16:
            self.casts += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize(("scope", "casts"), [("forward", 3), ("run", 1)])
def test_the_autocast_scope_decides_how_often_autocast_casts_a_weight(scope, casts):
    """``--autocast-scope``: with one region per forward (the default) autocast casts a layer's float32 weight in every
    forward (its cache is emptied when the forward's region ends); with one region around the rounds, once for the
    whole run. Three forwards: one warm-up round and two timed ones."""
    layer = torch.nn.Linear(4, 4)
    tokens = torch.randn(2, 4)
    cpu = torch.device("cpu")
    autocast, _ = harness.device_helpers(cpu, torch.bfloat16)
    counter = CastCounter(layer.weight)
    with counter:
        harness.time_round_robin(
            {"layer": harness.forward_step(layer, tokens, autocast)}, warmup=1, repeats=2,
            region=harness.autocast_region(cpu, torch.bfloat16, scope),
        )  # fmt: skip
    assert counter.casts == casts


def test_the_autocast_scope_is_one_of_two_and_nothing_in_float32():
    cpu = torch.device("cpu")
    assert harness.autocast_region(cpu, torch.float32, "run") is contextlib.nullcontext
    with pytest.raises(ValueError, match="autocast scope 'once'; expected one of \\('forward', 'run'\\)"):
        harness.autocast_region(cpu, torch.bfloat16, "once")
