import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

import hf_semseg
from hf_semseg import (
    KeepRatioImageProcessor,
    PaleBackbone,
    PaleConfig,
    PaleForImageClassification,
    PaleForSemanticSegmentation,
    PaleModel,
)
from hf_semseg.models import modeling_linear, modeling_pale
from hf_semseg.models.modeling_pale import PaleShapedAttention, pale_group_rows, pale_ungroup_rows

from model_suite import (
    FOUR_STAGES,
    ONEDNN_BFLOAT16,
    SegmentationModelSuite,
    perturb_sdn_fuse,
    record_results,
    tiny_label_kwargs,
    tiny_pale_kwargs,
)


STAGES = FOUR_STAGES


def tiny_pale_config(**overrides) -> PaleConfig:
    """A tiny Pale Transformer with the four stages, which the UperNet model takes."""
    values = tiny_pale_kwargs(
        decoder_hidden_size=16, auxiliary_channels=8, pool_scales=[1, 2], out_features=STAGES, **tiny_label_kwargs()
    )
    values.update(overrides)
    return PaleConfig(**values)


class TestPaleForSemanticSegmentation(SegmentationModelSuite):
    model_class = PaleForSemanticSegmentation

    def get_config(self):
        return tiny_pale_config()

    def get_image_processor(self):
        return KeepRatioImageProcessor(size={"longest_edge": 96, "shortest_edge": 64})


class TestPaleWithSDNNeck(TestPaleForSemanticSegmentation):
    """The common suite with the SDN-style neck on."""

    # the deepest level's guidance (a stride-2 convolution of the stride-32 map) must be wider than 1 pixel, or its
    # differences, and so its gradients, vanish
    image_size = (128, 96)

    def get_config(self):
        config = tiny_pale_config()
        config.use_sdn_neck = True
        return config

    def prepare_for_gradient_check(self, model):
        perturb_sdn_fuse(model)


# ---------------------------------------------------------------------------------------------------------------
# pale-shaped attention
# ---------------------------------------------------------------------------------------------------------------


def test_row_grouping_is_interlaced_and_invertible():
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1, 1).expand(1, 6, 2, 1).contiguous()  # value = row index
    grouped = pale_group_rows(x, pale_size=3)  # N = 2 groups of 3 interlaced rows
    assert grouped.shape == (2, 6, 1)
    assert grouped[0, :, 0].tolist() == [0, 0, 2, 2, 4, 4]
    assert grouped[1, :, 0].tolist() == [1, 1, 3, 3, 5, 5]
    torch.testing.assert_close(pale_ungroup_rows(grouped, 3, batch_size=1, width=2), x, atol=0, rtol=0)


def projected_qkv(attention: PaleShapedAttention, x: torch.Tensor):
    channels_first = x.permute(0, 3, 1, 2)
    return attention.query(channels_first), attention.key(channels_first), attention.value(channels_first)


def attention_config(implementation: str) -> PaleConfig:
    """A tiny config whose attention runs as ``implementation`` (a module built outside a model has none set and
    runs eager attention)."""
    config = tiny_pale_config()
    config._attn_implementation = implementation
    return config


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("size", [(9, 12), (10, 7), (4, 5)])
def test_receptive_field_is_exactly_the_pale(size, implementation):
    """In one attention layer, the output at (h0, w0) depends on the projected keys/values of exactly the tokens of
    its pale: the rows of its row group (all columns) for the row half of the channels, and the columns of its column
    group (all rows) for the column half. Eager attention masks the padded keys; SDPA attends each kind of group over
    its real rows (``attend_real_rows``), and its gradients too stay inside the pale."""
    height, width = size
    pale_size = 3
    torch.manual_seed(0)
    attention = PaleShapedAttention(attention_config(implementation), dim=8, num_heads=2, pale_size=pale_size).eval()
    q, k, v = projected_qkv(attention, torch.randn(1, height, width, 8))
    k = k.detach().requires_grad_(True)
    v = v.detach().requires_grad_(True)
    half = 4
    rows, _ = attention.attend_rows(q[..., :half], k[..., :half], v[..., :half])
    columns, _ = attention.attend_rows(*(t[..., half:].transpose(1, 2) for t in (q, k, v)))
    row_groups = -(-height // min(pale_size, height))
    column_groups = -(-width // min(pale_size, width))
    for h0, w0 in [(0, 0), (height - 1, width - 1), (height // 2, 1)]:
        (row_grad_k, row_grad_v) = torch.autograd.grad(rows[0, h0, w0].sum(), (k, v), retain_graph=True)
        (col_grad_k, col_grad_v) = torch.autograd.grad(columns[0, w0, h0].sum(), (k, v), retain_graph=True)
        hs = torch.arange(height)[:, None].expand(height, width)
        ws = torch.arange(width)[None, :].expand(height, width)
        in_row_group = hs % row_groups == h0 % row_groups
        in_column_group = ws % column_groups == w0 % column_groups
        row_dependence = (row_grad_k[0].abs().sum(-1) + row_grad_v[0].abs().sum(-1)) > 0
        col_dependence = (col_grad_k[0].abs().sum(-1) + col_grad_v[0].abs().sum(-1)) > 0
        assert torch.equal(row_dependence, in_row_group), (h0, w0)
        assert torch.equal(col_dependence, in_column_group), (h0, w0)
        # each branch only reads its own half of the channels
        assert not row_grad_v[0, ..., half:].any() and not col_grad_v[0, ..., :half].any()
        pale = in_row_group | in_column_group
        assert pale.sum() == in_row_group.sum() + in_column_group.sum() - (in_row_group & in_column_group).sum()


def naive_row_attention(q, k, v, pale_size, heads, scaling):
    """Loop over the interlaced row groups of the UNPADDED map (a reference, loops allowed)."""
    batch, height, width, channels = q.shape
    groups = -(-height // pale_size)
    out = torch.zeros_like(q)
    for i in range(groups):
        rows = list(range(i, height, groups))

        def tokens(t, rows=rows):
            return t[:, rows].reshape(batch, -1, heads, channels // heads).transpose(1, 2)

        attended = torch.softmax(tokens(q) @ tokens(k).transpose(-1, -2) * scaling, -1) @ tokens(v)
        out[:, rows] = attended.transpose(1, 2).reshape(batch, len(rows), width, channels)
    return out


@pytest.mark.parametrize("height", [7, 8, 9, 11])
def test_padding_does_not_change_the_result(height):
    torch.manual_seed(0)
    attention = PaleShapedAttention(tiny_pale_config(), dim=8, num_heads=4, pale_size=3).eval()
    q, k, v = (torch.randn(2, height, 5, 4) for _ in range(3))
    with torch.no_grad():
        ours, _ = attention.attend_rows(q, k, v)
    reference = naive_row_attention(q, k, v, 3, heads=2, scaling=attention.scaling)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def record_attention_calls(monkeypatch) -> list:
    """Records ``(query shape, key shape, mask)`` of every attention call of the Pale attention layers."""
    calls = []
    real_function = modeling_pale.attention_function

    def recording_function(config, query, key, value):
        function = real_function(config, query, key, value)

        def record(module, query, key, value, mask, **kwargs):
            calls.append((tuple(query.shape), tuple(key.shape), mask))
            return function(module, query, key, value, mask, **kwargs)

        return record

    monkeypatch.setattr(modeling_pale, "attention_function", recording_function)
    return calls


# (height, pale size) -> (groups, real rows) of the longer and of the shorter groups: H = q N + r, N = ceil(H / s)
UNPADDED_GROUPS = {
    (7, 3): [(1, 3), (2, 2)],  # N = 3: group 0 has rows 0, 3, 6; groups 1, 2 two rows each
    (8, 3): [(2, 3), (1, 2)],  # N = 3: groups 0, 1 three rows, group 2 two
    (11, 3): [(3, 3), (1, 2)],  # N = 4: rows 0, 4, 8 / 1, 5, 9 / 2, 6, 10 / 3, 7
    (16, 7): [(1, 6), (2, 5)],  # N = 3, fewer than s - 1 rows in every group (16 = 5 * 3 + 1)
    (12, 7): [(2, 6)],  # N = 2 divides H: one kind of group, 6 < s rows each
    (128, 7): [(14, 7), (5, 6)],  # Pale-T's first stage at 512: N = 19
}


@pytest.mark.parametrize(("height", "pale_size"), list(UNPADDED_GROUPS))
def test_sdpa_attends_the_real_rows_of_padded_groups_without_a_mask(height, pale_size, monkeypatch):
    """With SDPA a padded map is attended in one call per kind of group over its real tokens, with no mask, and the
    values are those of the loop over the unpadded groups (float64, rtol 1e-12); at inference in bfloat16 (the
    matmul attention) they equal the masked computation's to bfloat16 rounding. The hand-counted calls are the
    savings: Pale-T's first stage at 512 scores 14 x 896^2 + 5 x 768^2 keys instead of 19 x 896^2 (7% fewer)."""
    width = 3 if height > 16 else 5
    calls = record_attention_calls(monkeypatch)
    torch.manual_seed(0)
    attention = PaleShapedAttention(attention_config("sdpa"), dim=8, num_heads=4, pale_size=pale_size).eval()
    q, k, v = (torch.randn(2, height, width, 4, dtype=torch.float64) for _ in range(3))
    with torch.no_grad():
        ours, weights = attention.attend_rows(q, k, v)
    assert weights is None
    expected_calls = [(2 * groups, rows * width) for groups, rows in UNPADDED_GROUPS[(height, pale_size)]]
    assert [(query_shape[0], key_shape[2]) for query_shape, key_shape, _ in calls] == expected_calls
    assert all(mask is None for _, _, mask in calls)
    reference = naive_row_attention(q, k, v, pale_size, heads=2, scaling=attention.scaling)
    torch.testing.assert_close(ours, reference, atol=1e-12, rtol=1e-12)

    # bfloat16 inference: the same split, against the masked layout that eager attention keeps
    masked_attention = PaleShapedAttention(attention_config("eager"), dim=8, num_heads=4, pale_size=pale_size).eval()
    with torch.no_grad():
        split, _ = attention.attend_rows(*(t.bfloat16() for t in (q, k, v)))
        masked, _ = masked_attention.attend_rows(*(t.bfloat16() for t in (q, k, v)))
    assert split.dtype == torch.bfloat16
    torch.testing.assert_close(split.double(), masked.double(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(split.double(), reference, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize(("size", "pale_size"), [(6, 3), (4, 2), (3, 3), (2, 7), (7, 3), (8, 3), (5, 2)])
def test_both_branches_in_one_call_are_the_two_branch_calls(size, pale_size, monkeypatch):
    """On a square map SDPA attends the row and the column groups in the same calls (``attend_real_rows`` with both
    branches): one call where the (clamped) pale size divides the map, one per kind of group where it does not (7 in
    pales of 3: 3 groups, one of 3 rows and two of 2). The values are those of the two calls of ``attend_rows`` and
    of the loop over the (zero-padded, masked) groups of each branch (float64, 1e-12), row half of the channels
    first."""
    calls = record_attention_calls(monkeypatch)
    torch.manual_seed(0)
    attention = PaleShapedAttention(attention_config("sdpa"), dim=16, num_heads=4, pale_size=pale_size).eval()
    q, k, v = (torch.randn(2, size, size, 16, dtype=torch.float64) for _ in range(3))
    assert attention.attends_branches_together(size, size)
    with torch.no_grad():
        together, weights = attention.attend_pales(q, k, v)
        rows, _ = attention.attend_rows(q[..., :8], k[..., :8], v[..., :8])
        columns, _ = attention.attend_rows(*(t[..., 8:].transpose(1, 2) for t in (q, k, v)))
    assert weights == (None, None)
    groups = -(-size // min(pale_size, size))
    rows_per_group, longer_groups = divmod(size, groups)
    # a call per kind: 2 branches x B x n groups, 2 heads, rows x H tokens, head size 4; then as many per branch
    kinds = [(longer_groups, rows_per_group + 1)] if longer_groups else []
    kinds.append((groups - longer_groups, rows_per_group))
    assert [call[0] for call in calls[: len(kinds)]] == [(2 * 2 * n, 2, rows * size, 4) for n, rows in kinds]
    assert len(calls) == 3 * len(kinds)
    torch.testing.assert_close(together, torch.cat([rows, columns.transpose(1, 2)], -1), atol=1e-12, rtol=1e-12)
    scaling = attention.scaling
    reference_rows = naive_row_attention(q[..., :8], k[..., :8], v[..., :8], pale_size, heads=2, scaling=scaling)
    reference_columns = naive_row_attention(
        *(t[..., 8:].transpose(1, 2) for t in (q, k, v)), pale_size, heads=2, scaling=scaling
    ).transpose(1, 2)
    torch.testing.assert_close(together[..., :8], reference_rows, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(together[..., 8:], reference_columns, atol=1e-12, rtol=1e-12)


def test_branches_are_attended_apart_where_one_call_cannot_hold_both(monkeypatch):
    """Not square (the branches' groups differ), eager attention (it returns each branch's weights) or traced (a
    graph keeps the size comparison): each branch in calls of its own. Square maps, padded or not, share them."""
    sdpa = PaleShapedAttention(attention_config("sdpa"), dim=8, num_heads=2, pale_size=3)
    eager = PaleShapedAttention(attention_config("eager"), dim=8, num_heads=2, pale_size=3)
    assert sdpa.attends_branches_together(6, 6) and sdpa.attends_branches_together(9, 9)
    assert sdpa.attends_branches_together(7, 7)
    assert not sdpa.attends_branches_together(6, 9)
    assert not eager.attends_branches_together(6, 6)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not sdpa.attends_branches_together(6, 6)


def test_gather_plan_on_hand_computed_rows():
    """A 5 x 3 map, pales of 2, one head of 2 channels per branch: rows of ``d`` channels ``r = (h * 3 + w) * 2 +
    branch``. Row branch: 3 groups of interlaced rows (5 = 1 x 3 + 2), groups 0 and 1 hold rows {0, 3} and {1, 4},
    group 2 row {2}; column branch: 2 groups of columns (3 = 1 x 2 + 1), group 0 columns {0, 2} (all 5 rows each),
    group 1 column {1}. Not square: each branch's two kinds in calls of their own, in the call's (group, head, line,
    token) order; the inverse puts every map row back."""
    plan = modeling_pale.pale_gather_plan(1, 5, 3, 2, 1, 2, (False, True), True, torch.device("cpu"))
    calls = [(index.tolist(), pairs, length) for index, pairs, length in plan.calls]
    assert calls == [
        ([0, 2, 4, 18, 20, 22, 6, 8, 10, 24, 26, 28], 2, 6),  # row groups 0, 1: rows 0, 3 / 1, 4
        ([12, 14, 16], 1, 3),  # row group 2: row 2
        ([1, 7, 13, 19, 25, 5, 11, 17, 23, 29], 1, 10),  # column group 0: columns 0, 2
        ([3, 9, 15, 21, 27], 1, 5),  # column group 1: column 1
    ]
    gathered = torch.cat([index for index, _, _ in plan.calls])
    assert torch.equal(gathered[plan.inverse], torch.arange(30))
    # square, two images, two heads per branch: every kind holds both branches' groups, images, then heads
    plan = modeling_pale.pale_gather_plan(2, 3, 3, 4, 2, 2, (False, True), True, torch.device("cpu"))
    # pairs: 2 branches x 2 images x 1 group per kind
    assert [(pairs, length) for _, pairs, length in plan.calls] == [(4, 6), (4, 3)]
    first = plan.calls[0][0].view(2, 2, 1, 2, 2, 3)  # (branch, image, group, head, line, token)
    assert first[0, 1, 0, 1, 1].tolist() == [((9 + 2 * 3 + w) * 4 + 1) for w in range(3)]  # image 1, row 2, head 1
    assert first[1, 0, 0, 0, 1].tolist() == [((h * 3 + 2) * 4 + 2) for h in range(3)]  # column 2, head 0 = chunk 2
    apart = modeling_pale.pale_gather_plan(2, 3, 3, 4, 2, 2, (False, True), False, torch.device("cpu"))
    assert len(apart.calls) == 4


def test_maps_whose_channels_are_not_the_branches_heads_are_refused():
    """Every map row must fall in exactly one attention call: a map wider or narrower than the branches' heads would
    leave rows of the output unwritten, so it stops and names the sizes."""
    attention = PaleShapedAttention(attention_config("sdpa"), dim=8, num_heads=2, pale_size=3)
    q = torch.randn(1, 4, 4, 12)
    with pytest.raises(
        ValueError, match=r"maps of 12 channels for 2 branch\(es\) of 1 head\(s\) of 4 channels; expected 8"
    ):
        attention.attend_pales(q, q, q)


def test_gather_plan_made_in_inference_mode_serves_a_training_step():
    """The plans are cached across calls: one made under ``torch.inference_mode`` is made of normal tensors, so a
    later training forward and backward can use it (autograd saves the index of ``index_select``)."""
    modeling_pale.pale_gather_plan.cache_clear()
    torch.manual_seed(0)
    attention = PaleShapedAttention(attention_config("sdpa"), dim=8, num_heads=2, pale_size=3)
    q, k, v = (torch.randn(1, 7, 7, 8) for _ in range(3))
    with torch.inference_mode():
        attention.attend_pales(q, k, v)
    # 8 channels: 2 chunks of d = 4, one head per branch
    plan = modeling_pale.pale_gather_plan(1, 7, 7, 2, 1, 3, (False, True), True, torch.device("cpu"))
    assert modeling_pale.pale_gather_plan.cache_info().hits >= 1
    assert not plan.inverse.is_inference() and not any(index.is_inference() for index, _, _ in plan.calls)
    v.requires_grad_(True)
    attended, _ = attention.attend_pales(q, k, v)
    (gradient,) = torch.autograd.grad(attended.sum(), v)
    # every output sums its pale's value rows with probabilities summing to 1: each value row's gradient is the sum
    # of the probabilities it gets, and over the map they sum to the number of queries, per channel
    torch.testing.assert_close(gradient.sum((0, 1, 2)), torch.full((8,), 49.0), atol=1e-4, rtol=0)


def tiny_inference_model(**overrides) -> PaleModel:
    """A seeded tiny ``PaleModel`` with SDPA in eval mode, its BatchNorms holding non-trivial running statistics."""
    config = PaleConfig(**tiny_pale_kwargs(**overrides))
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = PaleModel(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2), module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.2), module.bias.normal_(0.0, 0.2)
    return model


def count_inference_forwards(monkeypatch) -> list:
    """Records each block that runs ``PaleBlock.inference_forward``."""
    blocks = []
    real = modeling_pale.PaleBlock.inference_forward

    def counting(self, hidden_states):
        blocks.append(self)
        return real(self, hidden_states)

    monkeypatch.setattr(modeling_pale.PaleBlock, "inference_forward", counting)
    return blocks


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16-autocast"])
@pytest.mark.parametrize("size", [(48, 48), (36, 44)], ids=["square", "padded"])
def test_inference_forward_is_the_module_forward_bit_for_bit(size, autocast, monkeypatch):
    """At inference every block runs ``inference_forward`` (direct kernel calls), and the model's output is the
    module-by-module forward's exactly (atol 0), in float32 and under CPU bfloat16 autocast, on a map whose branches
    attend together (48: maps 12, 6, 3, 2 with pales 3, 3, 2, 2; stages 1, 2 and 4) and on padded ones."""
    model = tiny_inference_model()
    pixel_values = torch.randn(2, 3, *size)
    blocks = count_inference_forwards(monkeypatch)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        fast = model(pixel_values).last_hidden_state
        assert len(blocks) == sum(model.config.depths)
        monkeypatch.setattr(modeling_pale.PaleBlock, "runs_inference_forward", lambda self, hidden_states: False)
        modular = model(pixel_values).last_hidden_state
    assert len(blocks) == sum(model.config.depths)
    assert fast.dtype == modular.dtype and fast.abs().max() > 0
    torch.testing.assert_close(fast, modular, atol=0, rtol=0)


class RecordingLinear(torch.nn.Linear):
    """A dense layer with a forward of its own (as a quantised or adapted layer has)."""

    def forward(self, hidden_states):
        return super().forward(hidden_states) + 1.0


def eval_batch_norm_in_train_mode(model):
    model.encoder.stages[0].layers[0].attention.key.norm.train()  # test-time adaptation of the norms


def dropout_in_train_mode(model):
    model.encoder.stages[0].layers[0].mlp.dropout.train()  # Monte-Carlo dropout


def replaced_dense_layer(model):
    model.encoder.stages[0].layers[0].attention.output.dense = RecordingLinear(16, 16).eval()


def replaced_convolution(model):
    from hf_semseg.models.modeling_any_precision import VerticalLayeredConv2d

    model.encoder.stages[0].layers[0].cpe.__class__ = VerticalLayeredConv2d


@pytest.mark.parametrize(
    "change", [eval_batch_norm_in_train_mode, dropout_in_train_mode, replaced_dense_layer, replaced_convolution]
)
def test_a_block_someone_changed_runs_its_modules(change, monkeypatch):
    """A submodule in train mode or of another type (its own forward) keeps that block on the module forward, and
    only that block; the others still run ``inference_forward``."""
    model = tiny_inference_model()
    change(model)
    blocks = count_inference_forwards(monkeypatch)
    changed = model.encoder.stages[0].layers[0]
    assert not changed.runs_inference_forward(torch.ones(1, 12, 12, 16))
    with torch.no_grad():
        model(torch.randn(1, 3, 48, 48))
    assert len(blocks) == sum(model.config.depths) - 1 and changed not in blocks


def test_hooks_gradients_weights_and_tracing_keep_the_module_forward(monkeypatch):
    """A forward hook on any submodule fires (so that block runs its modules). A global hook (torch's module trackers:
    FlopCounterMode, the memory tracker) observes the path that runs: every block still runs ``inference_forward``,
    and the hook sees the blocks, not their submodules. With gradients on, attention weights asked for (eager
    attention) or while traced no block runs ``inference_forward``."""
    model = tiny_inference_model()
    pixel_values = torch.randn(1, 3, 48, 48)
    blocks = count_inference_forwards(monkeypatch)
    seen = []
    dense = model.encoder.stages[3].layers[0].attention.output.dense
    handle = dense.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    with torch.no_grad():
        model(pixel_values)
    handle.remove()
    assert seen == [(1, 2, 2, 128)] and len(blocks) == sum(model.config.depths) - 1
    blocks.clear()
    observed = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: observed.append(module)
    )
    try:
        with torch.no_grad():
            model(pixel_values)
    finally:
        handle.remove()
    all_blocks = [block for stage in model.encoder.stages for block in stage.layers]
    assert len(blocks) == len(all_blocks) == sum(model.config.depths)
    assert all(any(module is block for module in observed) for block in all_blocks)
    assert not any(module is dense for module in observed)
    blocks.clear()
    model(pixel_values)  # gradients on
    with torch.no_grad():
        output = model(pixel_values, output_attentions=True)
    assert blocks == [] and len(output.attentions) == 2 * sum(model.config.depths)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    block = model.encoder.stages[0].layers[0]
    with torch.no_grad():
        assert not block.runs_inference_forward(torch.ones(1, 12, 12, 16))


def count_optimized_forwards(monkeypatch) -> list:
    """Records each block that runs ``PaleBlock.optimized_inference_forward``."""
    blocks = []
    real = modeling_pale.PaleBlock.optimized_inference_forward

    def counting(self, hidden_states, weights):
        blocks.append(self)
        return real(self, hidden_states, weights)

    monkeypatch.setattr(modeling_pale.PaleBlock, "optimized_inference_forward", counting)
    return blocks


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output.double() - reference.double()).abs().max() / reference.double().abs().max())


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16-autocast"])
@pytest.mark.parametrize("size", [(48, 48), (36, 44)], ids=["square", "padded"])
def test_optimized_for_inference_computes_the_model(size, autocast, fold, monkeypatch):
    """After ``optimize_for_inference`` every block runs on its prepared weights, and the output is the model's:
    without folding the same kernels' (float32 within 1e-6, bfloat16 within 1.5x the module forward's own error),
    with the BatchNorms folded float32 within 1e-5 and bfloat16 as close to the float64 model as the unoptimised one
    (within 1.5x its error)."""
    model = tiny_inference_model()
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        reference = copy.deepcopy(model).double()(pixel_values.double()).last_hidden_state
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            loaded = model(pixel_values).last_hidden_state
            blocks = count_optimized_forwards(monkeypatch)
            assert model.optimize_for_inference(fold_batch_norm=fold) is model
            optimized = model(pixel_values).last_hidden_state
            # where oneDNN has no bfloat16 kernels for this CPU the blocks keep the module forward under autocast
            prepared = not autocast or ONEDNN_BFLOAT16
            assert len(blocks) == (sum(model.config.depths) if prepared else 0)
            again = model(pixel_values).last_hidden_state  # on the weights prepared by the first forward
    assert optimized.dtype == loaded.dtype and optimized.abs().max() > 0
    torch.testing.assert_close(again, optimized, atol=0, rtol=0)
    loaded_error, optimized_error = relative_error(loaded, reference), relative_error(optimized, reference)
    if not autocast:
        assert relative_error(optimized, loaded) < (1e-5 if fold else 1e-6)
    else:
        assert loaded_error > 1e-3  # bfloat16 rounding shows
        assert optimized_error < 1.5 * loaded_error
        if not fold:
            # the prepared blocks' packed bfloat16 products sum in another order than the module forward's: on a CPU
            # with oneDNN bfloat16 kernels the two outputs are a bfloat16 step or so apart, as far as either is from
            # float64 (0.0095 against 0.0088 on an AVX-512 BF16 EPYC)
            assert relative_error(optimized, loaded) < 1.5 * loaded_error


class RecordedOperators(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the operator overloads dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.operators = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.operators.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("gelu_post_op", [True, False], ids=["gelu-post-op", "gelu-in-place"])
@pytest.mark.parametrize("case", ["float32", "float32-avx2", "bfloat16-autocast", "bfloat16-weights"])
def test_an_optimized_block_adds_and_activates_in_its_products(case, gelu_post_op, monkeypatch):
    """An optimised block runs the exact GELU as ``fc1``'s post-op (no separate GELU kernel) where the CPU runs that
    faster (``gelu_post_op_pays``, both answers forced here), and otherwise as one in-place GELU on ``fc1``'s output;
    where the residual stream is in the product dtype (float32; bfloat16 weights without autocast) its three
    residual additions run as post-ops of the CPE convolution, the output layer and ``fc2`` (no separate addition),
    except that on a CPU whose float32 products are MKL's (``float32_product_on_onednn`` False: "float32-avx2") the
    two dense layers' ones are in-place additions after ``F.linear``; under bfloat16 autocast the float32 stream is
    added outside the bfloat16 products. The outputs stay those of the model up to rounding
    (``test_optimized_for_inference_computes_the_model``; bfloat16 weights here)."""
    if not case.startswith("float32") and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bfloat16 kernels for this CPU")
    monkeypatch.setattr(modeling_pale, "gelu_post_op_pays", lambda: gelu_post_op)
    monkeypatch.setattr(modeling_linear, "float32_product_on_onednn", lambda: case != "float32-avx2")
    model = tiny_inference_model()
    if case == "bfloat16-weights":
        model = model.to(torch.bfloat16)
    block = model.encoder.stages[0].layers[0]
    hidden_states = torch.randn(1, 8, 8, block.attention.output.dense.in_features)
    if case == "bfloat16-weights":
        hidden_states = hidden_states.to(torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=case == "bfloat16-autocast"):
        expected, _ = block(hidden_states)
        block.inference_weights = modeling_pale.InferenceWeights(fold_batch_norm=False)
        recorder = RecordedOperators()
        with recorder:
            optimized, _ = block(hidden_states)
    mkldnn, aten = torch.ops.mkldnn, torch.ops.aten
    binary = [
        op for op in recorder.operators if op in (mkldnn._linear_pointwise.binary, mkldnn._convolution_pointwise.binary)
    ]
    additions = [op for op in recorder.operators if op is aten.add.Tensor]
    gelus = [op for op in recorder.operators if op in (aten.gelu.default, aten.gelu_.default)]
    # F.linear has no post-op: the prepared fc1 then runs the GELU in place itself
    assert gelus == ([] if gelu_post_op and case != "float32-avx2" else [aten.gelu_.default])
    in_place_additions = [op for op in recorder.operators if op is aten.add_.Tensor]
    if case == "bfloat16-autocast":
        assert binary == [] and len(additions) == 3
    elif case == "float32-avx2":
        assert binary == [mkldnn._convolution_pointwise.binary] and additions == []
        assert in_place_additions == [aten.add_.Tensor] * 2
        assert not [op for op in recorder.operators if op is mkldnn._linear_pointwise.default]
    else:
        assert binary == [mkldnn._convolution_pointwise.binary] + [mkldnn._linear_pointwise.binary] * 2
        assert additions == []
    assert optimized.dtype == expected.dtype
    tolerance = {"rtol": 1e-6, "atol": 1e-6} if case.startswith("float32") else {"rtol": 2**-7, "atol": 2e-2}
    torch.testing.assert_close(optimized, expected, **tolerance)


def test_fold_batch_norm_by_hand():
    """``fold_batch_norm`` on numbers worked out by hand: one output channel, gamma 2, beta 1, mean 3, var 3,
    eps 1: scale 2 / sqrt(4) = 1, so w' = w and b' = (b - 3) * 1 + 1; a second channel with gamma 1, var 0 and eps
    0.25: scale 2."""
    norm = torch.nn.BatchNorm2d(2, eps=1.0).eval()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 1.0])), norm.bias.copy_(torch.tensor([1.0, 0.0]))
        norm.running_mean.copy_(torch.tensor([3.0, 1.0])), norm.running_var.copy_(torch.tensor([3.0, -0.75]))
    weight = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 4.0]]]])  # (2, 1, 1, 2)
    folded_weight, folded_bias = modeling_pale.fold_batch_norm(weight, torch.tensor([5.0, 1.0]), norm)
    # channel 2: scale 1 / sqrt(-0.75 + 1) = 2, bias (1 - 1) * 2 + 0 = 0
    assert folded_weight.tolist() == [[[[1.0, 2.0]]], [[[6.0, 8.0]]]] and folded_bias.tolist() == [3.0, 0.0]
    _, without_bias = modeling_pale.fold_batch_norm(weight, None, norm)
    assert without_bias.tolist() == [-2.0, -2.0]
    conv = torch.nn.Conv2d(2, 2, (1, 2), groups=2).eval()
    x = torch.randn(1, 2, 3, 4)
    with torch.no_grad():
        conv.weight.copy_(weight), conv.bias.copy_(torch.tensor([5.0, 1.0]))
        expected = norm(conv(x))
    torch.testing.assert_close(F.conv2d(x, folded_weight, folded_bias, groups=2), expected)


def change_in_place(model):
    with torch.no_grad():
        model.encoder.stages[1].layers[0].attention.value.depthwise.weight.mul_(-2.0)


def load_other_weights(model):
    other = tiny_inference_model()
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(1.5)
    model.load_state_dict(other.state_dict())


def change_batch_norm_statistics(model):
    model.encoder.stages[0].layers[0].attention.value.norm.running_var.mul_(4.0)


def replace_a_weight(model):
    dense = model.encoder.stages[2].layers[1].mlp.fc1
    dense.weight = torch.nn.Parameter(torch.randn_like(dense.weight))


def change_an_embedding(model):
    with torch.no_grad():
        model.encoder.stages[0].patch_embed.projection.weight.mul_(-2.0)


def optimizer_step(model):
    model.train()
    loss = model(torch.randn(1, 3, 48, 48)).last_hidden_state.square().mean()
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    model.eval()


@pytest.mark.parametrize(
    "change",
    [
        change_in_place,
        load_other_weights,
        change_batch_norm_statistics,
        replace_a_weight,
        change_an_embedding,
        optimizer_step,
    ],
)
def test_changed_weights_are_prepared_again(change):
    """A weight changed after the first optimised forward (in place, by ``load_state_dict``, a BatchNorm's running
    statistics, a new ``Parameter``, an optimiser step) is noticed: the next output is the changed model's."""
    model = tiny_inference_model().optimize_for_inference()
    pixel_values = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        before = model(pixel_values).last_hidden_state
    change(model)
    with torch.no_grad():
        changed = model(pixel_values).last_hidden_state
        model.clear_inference_optimization()
        expected = model(pixel_values).last_hidden_state
    assert relative_error(changed, before) > 1e-4
    assert relative_error(changed, expected) < 1e-6


def test_a_change_through_data_needs_optimize_again():
    """The documented limit: ``.data`` has no version counter, so an in-place change through it keeps the prepared
    weights until ``optimize_for_inference`` is called again."""
    model = tiny_inference_model().optimize_for_inference()
    pixel_values = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        before = model(pixel_values).last_hidden_state
        model.encoder.stages[0].layers[0].mlp.fc2.weight.data.mul_(3.0)
        stale = model(pixel_values).last_hidden_state
        fresh = model.optimize_for_inference()(pixel_values).last_hidden_state
        expected = model.clear_inference_optimization()(pixel_values).last_hidden_state
    torch.testing.assert_close(stale, before, atol=0, rtol=0)
    assert relative_error(fresh, expected) < 1e-5 and relative_error(fresh, before) > 1e-3


def test_optimized_for_inference_leaves_the_rest_alone(tmp_path, monkeypatch):
    """The state dict and a saved folder are the model's own; training, gradients and another input size take their
    usual paths (the prepared convolutions pack their weights again for the new size); a deep copy and a pickled
    copy keep the setting (not the packed tensors) and compute the same; ``clear_inference_optimization`` drops it.
    (Training last: its forward updates the BatchNorms' running statistics.)"""
    model = tiny_inference_model()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.optimize_for_inference()
    blocks = count_optimized_forwards(monkeypatch)
    with torch.no_grad():
        model(torch.randn(1, 3, 48, 48))
        padded_input = torch.randn(1, 3, 36, 44)
        padded = model(padded_input).last_hidden_state
    assert len(blocks) == 2 * sum(model.config.depths)
    first_block = model.encoder.stages[0].layers[0].inference_weights.by_dtype[torch.float32][-1]
    assert first_block.position_encoding.input_shape == [1, 16, 9, 11]  # packed again for the 36 x 44 input's map
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())
    model.save_pretrained(tmp_path)
    reloaded = PaleModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    with torch.no_grad():
        torch.testing.assert_close(padded, reloaded(padded_input).last_hidden_state, rtol=1e-5, atol=1e-5)
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert all(
            block.inference_weights.settings == {"fold_batch_norm": True} and not block.inference_weights.by_dtype
            for block in copied.modules()
            if isinstance(block, modeling_pale.PaleBlock)
        )
        with torch.no_grad():
            torch.testing.assert_close(copied(padded_input).last_hidden_state, padded, atol=0, rtol=0)
    blocks.clear()
    model(padded_input).last_hidden_state.sum().backward()  # gradients on
    model.train()
    with torch.no_grad():
        model(padded_input)
    model.eval()
    assert blocks == []
    model.clear_inference_optimization()
    blocks.clear()
    with torch.no_grad():
        model(padded_input)
    assert blocks == []


def test_batch_norm_without_running_statistics_is_not_folded():
    """A BatchNorm without running statistics normalises with the batch's in eval mode: it stays a BatchNorm (no
    weight can hold it) and the optimised model computes what the model computes."""
    model = tiny_inference_model()
    key = model.encoder.stages[0].layers[0].attention.key
    key.norm.track_running_stats, key.norm.running_mean, key.norm.running_var = False, None, None
    pixel_values = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = model(pixel_values).last_hidden_state
        optimized = model.optimize_for_inference()(pixel_values).last_hidden_state
    weights = model.encoder.stages[0].layers[0].inference_weights.by_dtype[torch.float32][-1]
    assert [projection.norm is not None for projection in weights.projections] == [False, True, False]
    assert relative_error(optimized, expected) < 1e-5


def test_reduced_precision_float32_convolutions_keep_the_inference_forward(monkeypatch):
    """Where float32 convolutions may run in reduced precision (the user's setting), the prepared weights are not
    used: the block's inference forward runs as without the optimisation."""
    from hf_semseg.models.modeling_linear import packs_inference_weights

    model = tiny_inference_model().optimize_for_inference()
    blocks = count_optimized_forwards(monkeypatch)
    settings = torch.backends.mkldnn.conv
    previous = settings.fp32_precision
    settings.fp32_precision = "bf16"
    try:
        assert not packs_inference_weights(torch.float32) and packs_inference_weights(torch.bfloat16)
        with torch.no_grad():
            model(torch.randn(1, 3, 48, 48))
    finally:
        settings.fp32_precision = previous
    assert blocks == [] and packs_inference_weights(torch.float32) and not packs_inference_weights(None)


def count_packed_embeddings(monkeypatch) -> list:
    """Records the product dtype each conv embedding's forward ran its prepared convolution in (None: the module)."""
    return record_results(monkeypatch, modeling_pale.PalePatchEmbeddings, "packed_projection_dtype")


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16-autocast"])
@pytest.mark.parametrize("size", [(48, 48), (36, 44)], ids=["square", "padded"])
def test_optimized_conv_embeddings_run_their_packed_weights_bit_for_bit(size, autocast, monkeypatch):
    """After ``optimize_for_inference`` the four conv embeddings (7x7 / 4, then 3x3 / 2) run their prepared
    convolutions in the forward's product dtype, and every hidden state is the module convolution's exactly."""
    model = tiny_inference_model().optimize_for_inference()
    pixel_values = torch.randn(2, 3, *size)
    dtypes = count_packed_embeddings(monkeypatch)
    # where oneDNN has no bfloat16 kernels for this CPU the embeddings keep the module convolution under autocast
    prepared = not autocast or ONEDNN_BFLOAT16
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        packed = model(pixel_values, output_hidden_states=True).hidden_states
        assert dtypes == [(torch.bfloat16 if autocast else torch.float32) if prepared else None] * 4
        monkeypatch.setattr(modeling_pale.PalePatchEmbeddings, "packed_projection_dtype", lambda self, h: None)
        modular = model(pixel_values, output_hidden_states=True).hidden_states
    if prepared:
        embedding = model.encoder.stages[1].patch_embed
        assert embedding.inference_weights.by_dtype[packed[0].dtype][-1].stride == [2, 2]
    assert len(packed) == len(modular) == 5 and packed[0].abs().max() > 0
    for ours, theirs in zip(packed, modular):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_conv_embeddings_keep_the_module_where_it_could_tell(monkeypatch):
    """The embedding's convolution runs as the module with a forward hook on it (which fires), another padding
    mode, gradients on, while traced, on an empty input and after ``clear_inference_optimization``; copies keep
    the setting without the packed tensors."""
    model = tiny_inference_model().optimize_for_inference()
    embedding = model.encoder.stages[0].patch_embed
    pixel_values = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert embedding.packed_projection_dtype(pixel_values) == torch.float32
        assert embedding.packed_projection_dtype(pixel_values[:0]) is None
        seen = []
        handle = embedding.projection.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
        assert embedding.packed_projection_dtype(pixel_values) is None
        embedding(pixel_values)
        handle.remove()
        assert seen == [(1, 16, 12, 12)]
        embedding.projection.padding_mode = "reflect"
        assert embedding.packed_projection_dtype(pixel_values) is None
        embedding.projection.padding_mode = "zeros"
    assert embedding.packed_projection_dtype(pixel_values) is None  # gradients on
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        weights = copied.encoder.stages[0].patch_embed.inference_weights
        assert weights.settings == {} and not weights.by_dtype
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.no_grad():
        assert embedding.packed_projection_dtype(pixel_values) is None
        monkeypatch.undo()
        model.clear_inference_optimization()
        assert embedding.inference_weights is None and embedding.packed_projection_dtype(pixel_values) is None


def test_a_strided_packed_convolution_by_hand():
    """``PackedInferenceConvolution`` with stride 2 and padding 1 on a 4 x 4 map holding ``4 i + j``, a 3 x 3 kernel
    of ones and bias 0.5: each output is the sum of a zero-padded window (worked out by hand), and a second input
    size packs the weight again."""
    convolution = modeling_pale.PackedInferenceConvolution(
        torch.ones(1, 1, 3, 3), torch.tensor([0.5]), 1, torch.float32, stride=(2, 2), padding=(1, 1)
    )
    with torch.no_grad():
        output = convolution(torch.arange(16.0).view(1, 1, 4, 4))
        # windows centred on (0, 0), (0, 2), (2, 0), (2, 2): 0+1+4+5, 1+2+3+5+6+7, 4+5+8+9+12+13, 5+...+15 (9 values)
        assert output.tolist() == [[[[10.5, 24.5], [51.5, 90.5]]]]
        assert convolution.input_shape == [1, 1, 4, 4]
        wider = convolution(torch.ones(1, 1, 2, 6))
    assert convolution.input_shape == [1, 1, 2, 6]
    # rows -1..1 of a 2-row map: 2 real rows; columns centred on 0, 2, 4: 2, 3, 3 real columns
    assert wider.tolist() == [[[[4.5, 6.5, 6.5]]]]


def test_block_weights_are_the_modules_tensors():
    """``pale_block_weights`` (read through the modules' dicts) is the block's tensors and settings as attributes,
    in order: the very tensors, None for a missing bias and for a BatchNorm without running statistics."""
    model = tiny_inference_model(qkv_bias=False)
    block = model.encoder.stages[1].layers[0]
    norm = block.attention.key.norm
    norm.track_running_stats, norm.running_mean, norm.running_var, norm.num_batches_tracked = False, None, None, None
    attention, mlp = block.attention, block.mlp
    expected = [block.cpe.weight, block.cpe.bias]
    for projection in (attention.query, attention.key, attention.value):
        depthwise, norm, pointwise = projection.depthwise, projection.norm, projection.pointwise
        expected += [depthwise.weight, depthwise.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var]
        # the count a train-mode forward bumps (the statistics' own version counters stay)
        expected += [norm.num_batches_tracked, norm.eps, pointwise.weight, pointwise.bias]
    for dense in (attention.output.dense, mlp.fc1, mlp.fc2):
        expected += [dense.weight, dense.bias]
    weights = modeling_pale.pale_block_weights(block)
    assert len(weights) == len(expected) == 38
    assert all(ours is theirs for ours, theirs in zip(weights, expected))
    # 10 entries per projection after the CPE's 2: the key's running statistics, count and eps at 16, 17, 18, 19
    assert weights[16] is None and weights[17] is None and weights[18] is None
    assert weights[19] == attention.key.norm.eps == 1e-5
    assert weights[3] is None and weights[11] is None  # the query's depth-wise and point-wise biases (none)


def test_500x375_input_sizes():
    torch.manual_seed(0)
    backbone = PaleBackbone(tiny_pale_config(pale_sizes=[7, 7, 7, 7])).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 500, 375)).feature_maps
    assert [tuple(f.shape[-2:]) for f in features] == [(125, 94), (63, 47), (32, 24), (16, 12)]
    assert all(torch.isfinite(f).all() for f in features)


# ---------------------------------------------------------------------------------------------------------------
# hidden states and backbone stages
# ---------------------------------------------------------------------------------------------------------------


def test_hidden_states_are_the_embedding_output_then_every_stage():
    """transformers' convention for a hierarchical model (SwinModel, ConvNextModel): len(depths) + 1 hidden states,
    the embedding output first. Here the stem (conv 7x7 / 4, padding 3, then its LayerNorm) is computed with
    torch.nn.functional from the weights; the backbone's feature maps are its hidden states through the LayerNorm of
    each selected stage; every model class returns the same hidden states, and the outputs depend on the first."""
    torch.manual_seed(0)
    model = PaleForSemanticSegmentation(tiny_pale_config()).eval()
    classifier = PaleForImageClassification(tiny_pale_config()).eval()
    classifier.pale.encoder.load_state_dict(model.backbone.encoder.state_dict())
    stem = model.backbone.encoder.stages[0].patch_embed
    with torch.no_grad():
        stem.norm.weight.normal_(1.0, 0.3), stem.norm.bias.normal_(0.0, 0.3)
        classifier.pale.encoder.load_state_dict(model.backbone.encoder.state_dict())
    pixel_values = torch.randn(2, 3, 45, 61)
    projected = F.conv2d(pixel_values, stem.projection.weight, stem.projection.bias, stride=4, padding=3)
    expected = F.layer_norm(projected.permute(0, 2, 3, 1), (16,), stem.norm.weight, stem.norm.bias)
    expected = expected.permute(0, 3, 1, 2).detach()
    assert expected.shape == (2, 16, 12, 16)
    output = model(pixel_values, output_hidden_states=True)
    hidden_states = output.hidden_states
    assert [tuple(h.shape[1:]) for h in hidden_states] == [
        (16, 12, 16),
        (16, 12, 16),
        (32, 6, 8),
        (64, 3, 4),
        (128, 2, 2),
    ]
    torch.testing.assert_close(hidden_states[0], expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        backbone_output = model.backbone(pixel_values, output_hidden_states=True)
        classified = classifier(pixel_values, output_hidden_states=True)
        # stage 2 is its conv embedding (3x3 / 2) and its block, applied to stage 1's output
        stage2_embedding, stage2, _ = model.backbone.encoder.stages[1](hidden_states[1])
    for ours in (backbone_output.hidden_states, classified.hidden_states):
        for a, b in zip(ours, hidden_states, strict=True):
            torch.testing.assert_close(a, b.detach())
    torch.testing.assert_close(stage2.permute(0, 3, 1, 2), hidden_states[2].detach())
    assert stage2_embedding.shape == (2, 32, 6, 8)
    for stage, hidden_state, feature_map in zip(STAGES, hidden_states[1:], backbone_output.feature_maps):
        norm = model.backbone.hidden_states_norms[stage]
        expected_map = F.layer_norm(
            hidden_state.detach().permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias
        )
        torch.testing.assert_close(feature_map, expected_map.permute(0, 3, 1, 2))
    first = hidden_states[0]
    first.retain_grad()
    output.logits.sum().backward()
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_out_features_none_means_the_last_stage_as_transformers_backbones():
    """transformers' rule (BackboneConfigMixin): neither out_features nor out_indices -> the last stage; the
    configs of the models that take the four stages say so, or their parent config gives them."""
    from hf_semseg import VWFormerConfig

    for config in (PaleConfig(), PaleConfig(out_features=None, out_indices=None)):
        assert (config.out_features, config.out_indices) == (["stage4"], [4])
    backbone = PaleBackbone(tiny_pale_config(out_features=None)).eval()
    with torch.no_grad():
        feature_maps = backbone(torch.randn(1, 3, 32, 32)).feature_maps
    assert backbone.channels == [128] and [tuple(f.shape) for f in feature_maps] == [(1, 128, 1, 1)]
    assert list(backbone.hidden_states_norms) == ["stage4"]
    # the stem is a stage name too: its feature map is the embedding output through its own LayerNorm
    backbone = PaleBackbone(tiny_pale_config(out_features=["stem", "stage2"])).eval()
    with torch.no_grad():
        output = backbone(torch.randn(1, 3, 32, 32), output_hidden_states=True)
    assert backbone.channels == [16, 32] and [f.shape[1] for f in output.feature_maps] == [16, 32]
    stem_norm = backbone.hidden_states_norms["stem"]
    torch.testing.assert_close(
        output.feature_maps[0], stem_norm(output.hidden_states[0].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    )
    for name in ("pale-tiny", "pale-tiny-upernet-ade20k"):
        assert hf_semseg.variant_config(name).out_features == STAGES
    vwformer = VWFormerConfig(backbone_config=PaleConfig(**tiny_pale_kwargs()), decoder_hidden_size=64)
    assert vwformer.backbone_config.out_features == STAGES
    reloaded = PaleConfig.from_dict(tiny_pale_config().to_dict())
    assert (reloaded.out_features, reloaded.out_indices) == (STAGES, [1, 2, 3, 4])


# ---------------------------------------------------------------------------------------------------------------
# classification, variants, registration
# ---------------------------------------------------------------------------------------------------------------


def test_classification_labels_of_every_integer_layout_are_class_ids():
    """(B, 1) class ids took the soft-label branch (a meaningless loss) and int32 ids crashed; now both are class ids,
    and labels that are neither class ids nor soft targets are named."""
    torch.manual_seed(0)
    model = PaleForImageClassification(tiny_pale_config(num_labels=5)).eval()
    logits = torch.randn(3, 5)
    ids = torch.tensor([4, 0, 2])
    expected = F.cross_entropy(logits, ids)
    for labels in (ids, ids.int(), ids[:, None], ids.to(torch.uint8)[:, None]):
        torch.testing.assert_close(model.compute_loss(logits, labels), expected)
    ignored = torch.tensor([4, -100, 2])
    torch.testing.assert_close(model.compute_loss(logits, ignored), F.cross_entropy(logits[[0, 2]], ids[[0, 2]]))
    with pytest.raises(ValueError, match=r"class ids \[7\] outside \[0, 5\)"):
        model.compute_loss(logits, torch.tensor([4, 7, 2]))
    with pytest.raises(ValueError, match=r"labels of shape \(2,\) and dtype torch.int64 for 3 images"):
        model.compute_loss(logits, ids[:2])
    with pytest.raises(ValueError, match=r"soft-target labels of shape \(3, 4\): expected \(3, 5\)"):
        model.compute_loss(logits, torch.rand(3, 4))
    with pytest.raises(ValueError, match=r"dtype torch.bool"):
        model.compute_loss(logits, torch.ones(3, dtype=torch.bool))


def test_classification_losses_follow_the_problem_type():
    torch.manual_seed(0)
    logits = torch.randn(3, 5)
    model = PaleForImageClassification(tiny_pale_config(num_labels=5, problem_type="multi_label_classification"))
    targets = (torch.rand(3, 5) > 0.5).float()
    torch.testing.assert_close(model.compute_loss(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))
    regression = PaleForImageClassification(tiny_pale_config(num_labels=1))  # one label: regression, as transformers
    values = torch.randn(3)
    torch.testing.assert_close(regression.compute_loss(logits[:, :1], values), F.mse_loss(logits[:, 0], values))
    with pytest.raises(ValueError, match=r"labels of shape \(2,\) and dtype torch.float32 for regression"):
        regression.compute_loss(logits[:, :1], values[:2])


def test_classification_training_step_and_reload(tmp_path):
    torch.manual_seed(0)
    config = tiny_pale_config(num_labels=5, drop_path_rate=0.0)
    model = PaleForImageClassification(config).train()
    pixel_values = torch.randn(4, 3, 64, 64)
    labels = torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_before = model(pixel_values, labels=labels).loss
    loss_before.backward()
    optimizer.step()
    with torch.no_grad():
        loss_after = model(pixel_values, labels=labels).loss
    assert loss_after < loss_before
    model.eval().save_pretrained(tmp_path)
    from transformers import AutoModelForImageClassification

    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, model(pixel_values).logits, atol=0, rtol=0)
    soft = torch.softmax(torch.randn(4, 5), -1)
    with torch.no_grad():
        logits = model(pixel_values).logits
        expected = -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()
        torch.testing.assert_close(model(pixel_values, labels=soft).loss, expected)


@pytest.mark.parametrize(
    "size,paper_m,exact_m", [("tiny", 22, 21.748712), ("small", 48, 48.3082), ("base", 85, 85.324776)]
)
def test_parameter_counts_match_the_paper(size, paper_m, exact_m):
    """The paper prints parameters rounded to millions (22M / 48M / 85M). The layout it describes gives 21.75M /
    48.31M / 85.32M (as the clean-room rebuild of the reference notes); with UperNet 51.5M / 80.0M / 118.8M: all round to the printed figures; S and B are
    within 0.7%, T is 1.14% below 22M."""
    config = hf_semseg.variant_config(f"pale-{size}")
    with torch.device("meta"):
        model = PaleForImageClassification(config)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(exact_m, abs=1e-6)
    assert round(params) == paper_m
    assert abs(params - paper_m) / paper_m < 0.012


def test_pale_variants_are_registered():
    names = hf_semseg.list_variants("pale")
    assert set(names) == {f"pale-{s}{t}" for s in ("tiny", "small", "base") for t in ("", "-upernet-ade20k")}
    config = hf_semseg.variant_config("pale-small-upernet-ade20k")
    assert (config.embed_dim, config.num_heads, config.num_labels) == (96, [4, 8, 16, 32], 150)
    assert hf_semseg.get_variant("pale-base").reported["weights"] is None


def test_auto_classes_build_pale_models():
    from transformers import AutoBackbone, AutoModelForImageClassification, AutoModelForSemanticSegmentation

    config = tiny_pale_config()
    assert type(AutoBackbone.from_config(config)) is PaleBackbone
    assert type(AutoModelForImageClassification.from_config(config)) is PaleForImageClassification
    assert type(AutoModelForSemanticSegmentation.from_config(config)) is PaleForSemanticSegmentation


def test_config_validation_names_the_field():
    with pytest.raises(Exception, match="num_heads"):
        PaleConfig(embed_dim=64, num_heads=[3, 4, 8, 16])
    with pytest.raises(Exception, match="pale_sizes"):
        PaleConfig(pale_sizes=[7, 7, 7])


def test_model_card_says_no_weights_exist(tmp_path):
    from hf_semseg.conversion.model_card import write_pale_model_card

    from conftest import REPO_ROOT

    model = PaleForSemanticSegmentation(tiny_pale_config())
    card = write_pale_model_card(REPO_ROOT / "model_cards" / "pale.md", tmp_path, model, "me/pale-demo").read_text()
    assert "No pretrained Pale Transformer weights exist anywhere" in card
    assert "| Pale-T | 22M | 4.2G | 83.4 |" in card
    assert "pipeline_tag: image-segmentation" in card and "me/pale-demo" in card
    assert "$" not in card.split("```")[0]
    assert 'AutoModelForSemanticSegmentation.from_pretrained("me/pale-demo"' in card and "use_sdn_neck" in card


def test_a_classification_model_card_loads_it_with_the_classification_auto_class(tmp_path):
    """The card of a PaleForImageClassification told to load it with AutoModelForSemanticSegmentation (its auto_map
    has only AutoModelForImageClassification: a ValueError without hf-semseg) and offered the segmentation neck."""
    from hf_semseg import PaleForImageClassification
    from hf_semseg.conversion.model_card import write_pale_model_card

    from conftest import REPO_ROOT

    model = PaleForImageClassification(tiny_pale_config())
    card = write_pale_model_card(REPO_ROOT / "model_cards" / "pale.md", tmp_path, model, "me/pale-cls").read_text()
    assert "pipeline_tag: image-classification" in card
    assert 'model = AutoModelForImageClassification.from_pretrained("me/pale-cls", trust_remote_code=True)' in card
    assert "AutoModelForSemanticSegmentation" not in card and "use_sdn_neck" not in card
    assert "$" not in card and "see below" not in card


def test_a_segmentation_model_without_the_four_stages_and_scalar_class_labels_are_named():
    """A Pale UperNet whose config selects fewer stages ended in an IndexError of the auxiliary head; a 0-d class label
    in an IndexError of the loss."""
    from hf_semseg import PaleForImageClassification

    config = tiny_pale_config()
    config.out_features = ["stage4"]
    with pytest.raises(ValueError, match=r"takes the backbone's 4 stages, but config.out_features is \['stage4'\]"):
        PaleForSemanticSegmentation(config)
    classifier = PaleForImageClassification(tiny_pale_config()).eval()
    with pytest.raises(ValueError, match=r"labels of shape \(\) and dtype torch.int64 for 1 images"):
        classifier(torch.randn(1, 3, 32, 32), labels=torch.tensor(2))


def test_segmentation_loss_by_hand_averages_over_the_labelled_pixels():
    """Pale-UperNet's loss (transformers' UperNet convention, as documented): the cross-entropy of the bilinearly
    upsampled logits averaged over the labelled pixels, plus 0.4 x the auxiliary head's; ignored pixels (255) count
    in neither sum nor count."""
    torch.manual_seed(0)
    model = PaleForSemanticSegmentation(tiny_pale_config()).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    labels = torch.randint(0, model.config.num_labels, (1, 64, 64), generator=torch.Generator().manual_seed(1))
    labels[:, :40] = 255  # most pixels ignored: averaging over all of them would be 2.6x smaller
    with torch.no_grad():
        output = model(pixel_values, labels=labels)

    def labelled_mean(logits):
        upsampled = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
        losses = F.cross_entropy(upsampled, labels, ignore_index=255, reduction="none")
        return losses.sum() / (labels != 255).sum()

    expected = labelled_mean(output.logits) + 0.4 * labelled_mean(output.auxiliary_logits)
    torch.testing.assert_close(output.loss, expected, atol=1e-6, rtol=1e-6)
