"""The attention function the models pick (``attention_function`` in ``modeling_utils_segmentation``): the configured
implementation, with ``cpu_bfloat16_attention`` standing in for SDPA at CPU inference in bfloat16 on CPUs without AMX
(Pale-T, SeMask's Swin windows and the VW attention), and nowhere else. The tests that check the stand-in's calls set
the CPU check (``cpu_has_amx_tiles``) as they need it, so they run the same on every CPU."""

import pytest
import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.swin.modeling_swin import eager_attention_forward

from hf_semseg.models import modeling_utils_segmentation
from hf_semseg.models.configuration_pale import PaleConfig
from hf_semseg.models.configuration_semask_swin import SeMaskSwinConfig
from hf_semseg.models.modeling_pale import PaleModel
from hf_semseg.models.modeling_semask_swin import SeMaskSwinModel
from hf_semseg.models.modeling_utils_segmentation import (
    attention_function,
    cpu_bfloat16_attention,
    exported_eager_attention,
)

from model_suite import tiny_pale_kwargs, tiny_semask_swin_kwargs


pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


class Config:
    def __init__(self, implementation):
        self._attn_implementation = implementation


def bfloat16_operands(shape=(2, 3, 40, 16), keys=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch, heads, length, head_dim = shape
    query = torch.randn(batch, heads, length, head_dim, generator=generator)
    key, value = (torch.randn(batch, heads, keys, head_dim, generator=generator) for _ in range(2))
    return query.bfloat16(), key.bfloat16(), value.bfloat16()


@pytest.mark.parametrize("masked", [False, True], ids=["no mask", "key mask"])
def test_bfloat16_attention_equals_scaled_dot_product_attention(masked):
    """Against float64 SDPA of the same bfloat16 operands: within bfloat16 rounding of the scores and probabilities
    (2e-2 on outputs of magnitude ~1), in transformers' output layout; masked keys get no weight at all."""
    query, key, value = bfloat16_operands()
    mask = None
    if masked:  # the last 5 keys of the second image hidden, as Pale masks padded rows: (B, 1, 1, S)
        mask = torch.zeros(2, 1, 1, 24, dtype=torch.bfloat16)
        mask[1, ..., -5:] = torch.finfo(torch.bfloat16).min
    with torch.no_grad():
        attended, weights = cpu_bfloat16_attention(None, query, key, value, mask, scaling=0.3)
    reference = F.scaled_dot_product_attention(
        query.double(), key.double(), value.double(), attn_mask=None if mask is None else mask.double(), scale=0.3
    ).transpose(1, 2)
    assert weights is None
    assert attended.dtype == torch.bfloat16 and attended.shape == (2, 40, 3, 16)
    torch.testing.assert_close(attended.double(), reference, atol=2e-2, rtol=0)
    if masked:
        # a change of the hidden keys' values changes nothing
        changed = value.clone()
        changed[1, :, -5:] = 100.0
        with torch.no_grad():
            unchanged, _ = cpu_bfloat16_attention(None, query, key, changed, mask, scaling=0.3)
        assert torch.equal(unchanged, attended)


@pytest.mark.parametrize(
    ("budget", "mask_rows"),
    [(2 * 40 * 24, 1), (3 * 40 * 24, 40), (7 * 24, 1), (7 * 24, 40), (20, 40)],
    ids=["two pairs", "three pairs, full mask", "7 query rows", "7 query rows, full mask", "one row at a time"],
)
def test_chunks_of_the_scores_give_the_same_values(budget, mask_rows, monkeypatch):
    """A call with more scores than ``SCORES_PER_CHUNK`` runs in chunks of (batch, head) pairs, or of one pair's
    query rows where a pair's 40 x 24 scores exceed it (a budget below one row still takes one row): the output is
    the one-chunk call's, bit for bit, with a key mask broadcast over the queries or one row per query."""
    query, key, value = bfloat16_operands()
    generator = torch.Generator().manual_seed(1)
    mask = torch.randn(2, 1, mask_rows, 24, generator=generator).bfloat16()
    mask[1, ..., -5:] = torch.finfo(torch.bfloat16).min
    products = []
    real_bmm = torch.bmm

    def counting_bmm(*args, **kwargs):
        products.append(args[0].shape)
        return real_bmm(*args, **kwargs)

    with torch.no_grad():
        whole = [cpu_bfloat16_attention(None, query, key, value, m, scaling=0.3)[0] for m in (None, mask)]
        monkeypatch.setattr(modeling_utils_segmentation, "SCORES_PER_CHUNK", budget)
        monkeypatch.setattr(torch, "bmm", counting_bmm)
        chunked = [cpu_bfloat16_attention(None, query, key, value, m, scaling=0.3)[0] for m in (None, mask)]
    pairs = max(1, budget // (40 * 24))
    rows = 40 if pairs > 1 else max(1, budget // 24)
    chunks = -(-6 // pairs) * -(-40 // rows)  # 2 x 3 = 6 pairs of 40 query rows
    assert len(products) == 2 * chunks + chunks  # unmasked: two products per chunk; masked: one (and a baddbmm)
    for one, several in zip(whole, chunked):
        assert several.shape == (2, 40, 3, 16)
        torch.testing.assert_close(several, one, atol=0, rtol=0)


@pytest.mark.parametrize("masked", [False, True], ids=["no mask", "key mask"])
def test_chunks_write_their_scores_into_one_buffer(masked, monkeypatch):
    """Every chunk's scores are written (``out=``) at the start of one buffer allocated once per call: no fresh score
    map per chunk, which the product would first fault in page by page."""
    query, key, value = bfloat16_operands()
    mask = torch.zeros(2, 1, 1, 24, dtype=torch.bfloat16) if masked else None
    score_buffers = []
    real_bmm, real_baddbmm = torch.bmm, torch.baddbmm

    def recording(product):
        def record(*args, out=None, **kwargs):
            assert out is not None, "every product of the chunk loop writes into a given tensor"
            if out.shape[-1] == 24:  # a (pairs, rows, S) score map, not the (pairs, rows, d) output
                score_buffers.append((out.data_ptr(), out.shape))
            return product(*args, out=out, **kwargs)

        return record

    monkeypatch.setattr(modeling_utils_segmentation, "SCORES_PER_CHUNK", 4 * 40 * 24)
    monkeypatch.setattr(torch, "bmm", recording(real_bmm))
    monkeypatch.setattr(torch, "baddbmm", recording(real_baddbmm))
    with torch.no_grad():
        cpu_bfloat16_attention(None, query, key, value, mask, scaling=0.3)
    # 6 (batch, head) pairs in chunks of 4: (4, 40, 24), then (2, 40, 24), both at the buffer's start
    assert [shape for _, shape in score_buffers] == [(4, 40, 24), (2, 40, 24)]
    assert len({pointer for pointer, _ in score_buffers}) == 1


@pytest.mark.parametrize(("queries", "keys"), [(0, 24), (40, 0)], ids=["no queries", "no keys"])
def test_empty_calls_return_empty_or_zero_outputs(queries, keys):
    """No queries: an empty output; no keys: zeros, as SDPA gives (no division by zero in the chunking)."""
    query, key, value = bfloat16_operands(shape=(2, 3, queries, 16), keys=keys)
    with torch.no_grad():
        attended, _ = cpu_bfloat16_attention(None, query, key, value, None, scaling=0.3)
    reference = F.scaled_dot_product_attention(query, key, value, scale=0.3).transpose(1, 2)
    assert attended.shape == (2, queries, 3, 16)
    torch.testing.assert_close(attended, reference, atol=0, rtol=0)


def test_default_scaling_is_the_inverse_square_root_of_the_head_size():
    query, key, value = bfloat16_operands()
    with torch.no_grad():
        default, _ = cpu_bfloat16_attention(None, query, key, value, None)
        explicit, _ = cpu_bfloat16_attention(None, query, key, value, None, scaling=16**-0.5)
    assert torch.equal(default, explicit)


@pytest.fixture
def cpu_without_amx(monkeypatch):
    """The CPU check reads "no AMX": :func:`cpu_bfloat16_attention` stands in for SDPA in bfloat16 at inference."""
    monkeypatch.setattr(modeling_utils_segmentation, "cpu_has_amx_tiles", lambda: False)


def test_function_choice(cpu_without_amx):
    """SDPA in bfloat16 on the CPU at inference: the bfloat16 products; with a gradient to keep, in float32, traced,
    or another implementation: the configured function (Swin's eager one where unset)."""
    query, key, value = bfloat16_operands()
    sdpa = Config("sdpa")
    with torch.no_grad():
        assert attention_function(sdpa, query, key, value) is cpu_bfloat16_attention
        assert attention_function(sdpa, query.float(), key.float(), value.float()) is sdpa_attention_forward
        assert attention_function(Config("eager"), query, key, value) is eager_attention_forward
        assert attention_function(Config(None), query, key, value) is eager_attention_forward
    leaf = query.clone().requires_grad_()
    assert attention_function(sdpa, leaf, key, value) is sdpa_attention_forward
    with torch.no_grad():
        assert attention_function(sdpa, leaf, key, value) is cpu_bfloat16_attention
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert attention_function(sdpa, query, key, value) is sdpa_attention_forward


def test_exports_trace_the_batched_product_attention():
    """While exporting, the eager implementation (what ``hf_semseg.export`` sets) is
    :func:`exported_eager_attention`; compiled, and not traced, Swin's eager function."""
    query, key, value = (tensor.float() for tensor in bfloat16_operands())
    eager = Config("eager")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.compiler, "is_exporting", lambda: True)
        assert attention_function(eager, query, key, value) is exported_eager_attention
        assert attention_function(Config(None), query, key, value) is exported_eager_attention
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert attention_function(eager, query, key, value) is eager_attention_forward


class Module(torch.nn.Module):
    pass


@pytest.mark.parametrize(
    "shape, keys, masked",
    [((2, 3, 40, 16), 24, True), ((5, 1, 1, 8), 1, False), ((3, 2, 1, 8), 7, True), ((1, 4, 9, 8), 9, False)],
    ids=["heads, key mask", "one token, one key", "one query token", "one image"],
)
def test_exported_eager_attention_equals_swins_eager_function(shape, keys, masked):
    """The same outputs and weights as transformers' Swin eager function (same dtype, same products), with one
    token per window (VWFormer's cells at inputs of at most 64 px) among the cases; the output as the eager
    function returns it, ``(B, tokens, heads, head_dim)`` and contiguous."""
    generator = torch.Generator().manual_seed(3)
    batch, heads, length, head_dim = shape
    query = torch.randn(batch, heads, length, head_dim, generator=generator)
    key, value = (torch.randn(batch, heads, keys, head_dim, generator=generator) for _ in range(2))
    mask = None
    if masked:  # a window mask: (B, 1, 1, keys) with -100 on some keys, as Swin's shifted windows add it
        mask = torch.where(torch.rand(batch, 1, 1, keys, generator=generator) < 0.3, -100.0, 0.0)
    module = Module().eval()
    expected, expected_weights = eager_attention_forward(module, query, key, value, mask, scaling=0.3)
    output, weights = exported_eager_attention(module, query, key, value, mask, scaling=0.3)
    assert output.shape == (batch, length, heads, head_dim) and output.is_contiguous()
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=1e-6)
    assert expected.std() > 0.1 or keys == 1
    default, _ = exported_eager_attention(module, query, key, value, mask)
    explicit, _ = exported_eager_attention(module, query, key, value, mask, scaling=head_dim**-0.5)
    assert torch.equal(default, explicit)


def test_a_cpu_with_amx_keeps_sdpa(monkeypatch):
    """On a CPU with AMX torch's SDPA kernel is the faster bfloat16 attention (benchmarks/README.md): the configured
    SDPA runs there, also in bfloat16 at inference; without AMX the stand-in does."""
    query, key, value = bfloat16_operands()
    sdpa = Config("sdpa")
    with torch.no_grad():
        for has_amx, expected in ((True, sdpa_attention_forward), (False, cpu_bfloat16_attention)):
            monkeypatch.setattr(modeling_utils_segmentation, "cpu_has_amx_tiles", lambda has_amx=has_amx: has_amx)
            assert attention_function(sdpa, query, key, value) is expected


def test_the_amx_check_reads_torchs_cpu_feature_check(monkeypatch):
    """``cpu_has_amx_tiles`` is torch's own CPU feature check, read once, and False where torch has none."""
    check = modeling_utils_segmentation.cpu_has_amx_tiles
    try:
        for supported, expected in ((lambda: True, True), (lambda: False, False), (None, False)):
            check.cache_clear()
            if supported is None:
                monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
            else:
                monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", supported, raising=False)
            assert check() is expected
    finally:  # the next tests read this CPU's own answer, also after a failure here
        monkeypatch.undo()
        check.cache_clear()


def forwards_with_and_without_bfloat16_products(monkeypatch, model_class, config):
    """A seeded tiny ``model_class(config)`` with SDPA on a 36 x 44 input, under CPU bfloat16 autocast: the calls of
    :func:`cpu_bfloat16_attention` (``(query shape, mask shape or None)`` each) and the last hidden state, then the
    same forward with torch's SDPA (the stand-in switched off: no further calls)."""
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = model_class(config).eval()
    pixel_values = torch.randn(1, 3, 36, 44)
    calls = []

    def counting(*args, **kwargs):
        mask = args[4]
        calls.append((tuple(args[1].shape), None if mask is None else tuple(mask.shape)))
        return cpu_bfloat16_attention(*args, **kwargs)

    monkeypatch.setattr(modeling_utils_segmentation, "cpu_bfloat16_attention", counting)
    monkeypatch.setattr(modeling_utils_segmentation, "cpu_has_amx_tiles", lambda: False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(pixel_values).last_hidden_state
        products_calls = list(calls)
        monkeypatch.setattr(modeling_utils_segmentation, "runs_cpu_bfloat16_attention", lambda *tensors: False)
        reference = model(pixel_values).last_hidden_state
    assert calls == products_calls
    return products_calls, output.float(), reference.float()


def test_pale_under_bfloat16_autocast_uses_it_and_keeps_its_output(monkeypatch):
    """A tiny Pale model (a 36 x 44 input: both branches pad) under CPU bfloat16 autocast: the bfloat16 products run
    for all its attentions, and its output is SDPA's within bfloat16 rounding."""
    calls, output, reference = forwards_with_and_without_bfloat16_products(
        monkeypatch, PaleModel, PaleConfig(**tiny_pale_kwargs())
    )
    # a call per kind of group (a padded branch's longer and shorter groups, attend_real_rows, no mask), a square
    # map's two branches in the same calls. Maps 9x11, 5x6, 3x3, 2x2 with pales 3, 3, 2, 2: stage 1 rows 1 call,
    # columns 11 = 2 * 4 + 3: 2; stage 2 rows 5 = 2 * 2 + 1: 2, columns 1; stage 3 (square, two blocks) 3 = 1 * 2 + 1:
    # 2 calls for both branches; stage 4 (square, 2 divides it) 1 call for both
    assert len(calls) == (1 + 2) + (2 + 1) + 2 * 2 + 1
    assert calls[-1][0] == (2 * 1 * 1, 2, 2 * 2, 32)  # 2 branches x B x 1 group, 2 heads, 2 x 2 tokens, head size 32
    assert all(mask is None for _, mask in calls)
    scale = reference.abs().max().item()
    # measured 0.5% of the largest value; the mask itself is checked exactly above
    torch.testing.assert_close(output, reference, atol=0.02 * scale, rtol=0)


def test_semask_swin_windows_under_bfloat16_autocast_use_it_and_keep_their_output(monkeypatch):
    """A tiny SeMask-Swin (windows of 4, a 36 x 44 input: padded windows, shifted blocks with their shift mask) under
    CPU bfloat16 autocast: every Swin block's window attention runs the bfloat16 products, batched over all windows
    with the bias and shift mask as the additive mask, and the output is SDPA's within bfloat16 rounding."""
    calls, output, reference = forwards_with_and_without_bfloat16_products(
        monkeypatch, SeMaskSwinModel, SeMaskSwinConfig(**tiny_semask_swin_kwargs())
    )
    # maps 9 x 11, 5 x 6, 3 x 3, 2 x 2 zero-padded to whole windows of 4 x 4 = 16 tokens (the original pads; it
    # never shrinks the window): 3 x 3, 2 x 2, 1 and 1 windows of 16 / 32 / 64 / 128 channels over 1 / 2 / 2 / 4
    # heads; two blocks per stage, the first's mask the bias alone (1, heads, 16, 16), the shifted one's the bias
    # plus a shift mask per window (windows, heads, 16, 16)
    expected = []
    for windows, heads, head_dim in [(9, 1, 16), (4, 2, 16), (1, 2, 32), (1, 4, 32)]:
        query = (windows, heads, 16, head_dim)
        expected += [(query, (1, heads, 16, 16)), (query, (windows, heads, 16, 16))]
    assert calls == expected
    scale = reference.abs().max().item()
    torch.testing.assert_close(output, reference, atol=0.02 * scale, rtol=0)


@pytest.mark.parametrize(
    "model_class, config_class, kwargs, attention_calls",
    [
        # SeMask-Swin: one window attention per block, 2 + 2 + 2 + 2 blocks; Pale: a row and a column branch per
        # block, 1 + 1 + 2 + 1 blocks (masked, not split into kinds of groups, with eager attention)
        (SeMaskSwinModel, SeMaskSwinConfig, tiny_semask_swin_kwargs, 8),
        (PaleModel, PaleConfig, tiny_pale_kwargs, 10),
    ],
    ids=["semask_swin", "pale"],
)
def test_set_attn_implementation_switches_every_attention(
    monkeypatch, model_class, config_class, kwargs, attention_calls
):
    """``model.set_attn_implementation`` reaches every attention layer: transformers' source heuristic does not see
    :func:`attention_function`, and without ``SegmentationModelDefaults._can_set_attn_implementation`` it refused
    the switch with a warning (so ``hf_semseg.export`` exported SDPA, whose decomposition torch.onnx cannot re-trace
    for SeMask)."""
    config = config_class(**kwargs())
    config._attn_implementation = "sdpa"
    model = model_class(config).eval()
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[1].shape)
        return eager_attention_forward(*args, **kwargs)

    monkeypatch.setattr(modeling_utils_segmentation, "eager_attention_forward", counting)
    pixel_values = torch.randn(1, 3, 36, 44)
    with torch.no_grad():
        model(pixel_values)
        assert calls == []
        model.set_attn_implementation("eager")
        model(pixel_values)
        assert len(calls) == attention_calls
        model.set_attn_implementation("sdpa")
        model(pixel_values)
    assert len(calls) == attention_calls
