import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from transformers import SwinConfig
from transformers.models.swin.modeling_swin import SwinLayer

import hf_semseg
from hf_semseg import (
    KeepRatioImageProcessor,
    SeMaskSwinBackbone,
    SeMaskSwinConfig,
    SeMaskSwinForSemanticSegmentation,
    SeMaskSwinModel,
)
from hf_semseg.models.modeling_semask_swin import (
    SeMaskSwinBlock,
    SeMaskSwinPatchMerging,
    SeMaskSwinSemanticAttention,
    SeMaskSwinSemanticLayer,
    ohem_pixel_weights,
    pixel_label_probability,
    semantic_decoder,
    shifted_window_mask,
    upsample2x,
    upsample2x_by_transposed_convolution,
    window_attention_mask,
    window_partition,
    window_reverse,
)
from hf_semseg.models.modeling_utils_segmentation import pixel_cross_entropy

from model_suite import (
    FOUR_STAGES,
    ONEDNN_BFLOAT16,
    SegmentationModelSuite,
    open_semantic_gates,
    perturb_batch_norms,
    perturb_sdn_fuse,
    record_results,
    tiny_semask_swin_kwargs,
)


STAGES = FOUR_STAGES


def tiny_config(**overrides) -> SeMaskSwinConfig:
    """A tiny SeMask-Swin with the four stages, which the Semantic-FPN model takes."""
    values = dict(semantic_attention_types=["window", "window", "global", "global"], decoder_hidden_size=16)
    values["out_features"] = STAGES
    values.update(overrides)
    return SeMaskSwinConfig(**tiny_semask_swin_kwargs(**values))


class TestSeMaskSwinForSemanticSegmentation(SegmentationModelSuite):
    model_class = SeMaskSwinForSemanticSegmentation
    deterministic_overrides = {**SegmentationModelSuite.deterministic_overrides, "semantic_dropout_prob": 0.0}
    # Adam's first step moves every weight by about lr: from the original init (classifier normal(0.01): logits near
    # zero) 1e-3 overshoots on this tiny random model (loss 1.763 -> 1.790) where 2e-4 lowers it (-> 1.759)
    learning_rate = 2e-4

    def get_config(self):
        return tiny_config()

    def get_image_processor(self):
        return KeepRatioImageProcessor(size={"longest_edge": 96, "shortest_edge": 64})

    def prepare_for_gradient_check(self, model):
        open_semantic_gates(model)


class TestSeMaskSwinWithSDNNeck(TestSeMaskSwinForSemanticSegmentation):
    """The common suite with the SDN-style neck on (save / reload without hf-semseg included)."""

    # the deepest level's guidance (a stride-2 convolution of the stride-32 map) must be wider than 1 pixel, or its
    # differences, and so its gradients, vanish
    image_size = (128, 96)

    def get_config(self):
        config = tiny_config()
        config.use_sdn_neck = True
        return config

    def prepare_for_gradient_check(self, model):
        super().prepare_for_gradient_check(model)
        perturb_sdn_fuse(model)


# ---------------------------------------------------------------------------------------------------------------
# pieces against independent references
# ---------------------------------------------------------------------------------------------------------------


def test_window_partition_round_trip_and_order():
    x = torch.arange(2 * 6 * 4 * 1, dtype=torch.float32).view(2, 6, 4, 1)
    windows = window_partition(x, 2)
    assert windows.shape == (2, 6, 4, 1)
    # window 1 of image 0 = rows 0-1, columns 2-3, row-major inside
    assert windows[0, 1, :, 0].tolist() == [2.0, 3.0, 6.0, 7.0]
    torch.testing.assert_close(window_reverse(windows, 2, 6, 4), x, atol=0, rtol=0)


def test_shifted_window_mask_matches_the_region_construction_of_swin():
    # Swin's construction: label the 3x3 regions of the padded map, windows see -100 across regions
    height, width, window, shift = 8, 12, 4, 2
    regions = torch.zeros(height, width)
    count = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            regions[rows, cols] = count
            count += 1
    windows = window_partition(regions[None, :, :, None], window)[0, ..., 0]
    expected = (windows[:, None, :] != windows[:, :, None]).float() * -100.0
    torch.testing.assert_close(shifted_window_mask(height, width, window, shift, torch.device("cpu")), expected)


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("size", [(8, 8), (9, 13), (5, 6)])
def test_swin_block_equals_transformers_swin_layer(shift, size):
    """An independent implementation of the same block (transformers' SwinLayer) on padded, shifted inputs."""
    torch.manual_seed(0)
    config = tiny_config(embed_dim=8, num_heads=[2, 2, 2, 2], window_size=4)
    block = SeMaskSwinBlock(config, dim=8, num_heads=2, shift_size=shift, drop_path_rate=0.0).eval()
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0, 0.5)
    swin_config = SwinConfig(embed_dim=8, window_size=4, num_heads=[2], depths=[1])
    reference = SwinLayer(swin_config, dim=8, input_resolution=size, num_heads=2, shift_size=shift).eval()
    weights = {
        "layernorm_before.weight": block.norm1.weight,
        "layernorm_before.bias": block.norm1.bias,
        "layernorm_after.weight": block.norm2.weight,
        "layernorm_after.bias": block.norm2.bias,
        "attention.q_proj.weight": block.attn.qkv.weight[:8],
        "attention.k_proj.weight": block.attn.qkv.weight[8:16],
        "attention.v_proj.weight": block.attn.qkv.weight[16:],
        "attention.q_proj.bias": block.attn.qkv.bias[:8],
        "attention.k_proj.bias": block.attn.qkv.bias[8:16],
        "attention.v_proj.bias": block.attn.qkv.bias[16:],
        "attention.o_proj.weight": block.attn.proj.weight,
        "attention.o_proj.bias": block.attn.proj.bias,
        "attention.relative_position_bias.relative_position_bias_table": block.attn.relative_position_bias_table,
        "mlp.fc1.weight": block.mlp.fc1.weight,
        "mlp.fc1.bias": block.mlp.fc1.bias,
        "mlp.fc2.weight": block.mlp.fc2.weight,
        "mlp.fc2.bias": block.mlp.fc2.bias,
    }
    reference.load_state_dict({k: v.detach().clone() for k, v in weights.items()}, strict=False)
    height, width = size
    x = torch.randn(2, height, width, 8)
    padded_h, padded_w = math.ceil(height / 4) * 4, math.ceil(width / 4) * 4
    mask = shifted_window_mask(padded_h, padded_w, 4, 2, x.device)
    with torch.no_grad():
        ours, _ = block(x, mask)
        theirs = reference(x.view(2, height * width, 8), (height, width), always_partition=True)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    torch.testing.assert_close(ours.reshape(2, -1, 8), theirs, atol=1e-5, rtol=1e-5)


def naive_semantic_layer(layer: SeMaskSwinSemanticLayer, x: torch.Tensor):
    """The original's semantic layer written out window by window (loops allowed in a reference)."""
    batch, height, width, channels = x.shape
    y = layer.norm(x)
    attention = layer.attentions[0]
    w = layer.window_size if layer.windowed else None
    if w is None:
        groups = [(slice(0, height), slice(0, width))]
        padded = y
    else:
        ph, pw = math.ceil(height / w) * w, math.ceil(width / w) * w
        padded = F.pad(y, (0, 0, 0, pw - width, 0, ph - height))
        groups = [(slice(r, r + w), slice(c, c + w)) for r in range(0, ph, w) for c in range(0, pw, w)]
    out = torch.zeros_like(padded)
    prior = torch.zeros(*padded.shape[:3], attention.class_query_proj.out_features)
    for rows, cols in groups:
        tokens = padded[:, rows, cols].reshape(batch, -1, channels)
        q = attention.class_query_proj(tokens)
        k = attention.class_key_proj(tokens)
        v = attention.value_proj(tokens)
        a = torch.softmax(q @ k.transpose(1, 2), dim=-1)
        updated = tokens + attention.gamma * attention.out_proj(a @ v)
        out[:, rows, cols] = updated.view(batch, rows.stop - rows.start, cols.stop - cols.start, channels)
        prior[:, rows, cols] = q.view(batch, rows.stop - rows.start, cols.stop - cols.start, -1)
    return prior[:, :height, :width], out[:, :height, :width]


@pytest.mark.parametrize("attention_type", ["window", "global"])
@pytest.mark.parametrize("size", [(6, 6), (7, 5)])
def test_semantic_layer_equals_window_by_window_reference(attention_type, size):
    torch.manual_seed(0)
    layer = SeMaskSwinSemanticLayer(tiny_config(), dim=16, num_blocks=1, attention_type=attention_type).eval()
    open_semantic_gates(layer, 0.7)
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        prior, tokens, _ = layer(x)
        ref_prior, ref_tokens = naive_semantic_layer(layer, x)
    torch.testing.assert_close(prior, ref_prior, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens, ref_tokens, atol=1e-5, rtol=1e-5)


def many_classes_config(classes: int) -> SeMaskSwinConfig:
    """:func:`tiny_config` with ``classes`` labels."""
    id2label = {index: f"class {index}" for index in range(classes)}
    return tiny_config(id2label=id2label, label2id={label: index for index, label in id2label.items()})


@pytest.mark.parametrize("classes", [24, 4], ids=["K > C: both pairs fold", "K < C: value and output fold"])
@pytest.mark.parametrize("attention_type", ["window", "global"])
def test_semantic_attention_inference_folds_its_projections(monkeypatch, classes, attention_type):
    """At inference the Semantic Attention scores with queries ``(Wk^T Wq) y + Wk^T bq`` against the tokens themselves
    where K > C, and projects ``A y`` by ``Wo Wv`` (bias ``Wo bv + bo``): the same prior, tokens and probabilities as
    the four projections (float64), with the hand-counted MACs fewer; a training step runs the four projections."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    channels = 16
    layer = SeMaskSwinSemanticLayer(many_classes_config(classes), channels, 1, attention_type).double().eval()
    open_semantic_gates(layer, 0.7)
    with torch.no_grad():  # biases away from 0, so that each term of the folding shows
        for name, parameter in layer.named_parameters():
            if name.endswith("proj.bias"):
                parameter.normal_()
    x = torch.randn(2, 7, 5, channels, dtype=torch.float64)
    # windows of 3 on the 9 x 6 padded map: 6 per image of 9 tokens; globally one window of 35 tokens per image
    windows, tokens = (12, 9) if attention_type == "window" else (2, 35)

    def outputs_and_macs():
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            outputs = layer(x)
        return outputs, counter.get_total_flops() // 2

    (prior, updated, (probabilities,)), folded_macs = outputs_and_macs()
    monkeypatch.setattr(SeMaskSwinSemanticAttention, "folded_projections", lambda self, tokens: (False, False))
    (plain_prior, plain_updated, (plain_probabilities,)), macs = outputs_and_macs()
    assert (updated - x).abs().max() > 0.1  # the gate is open: the update shows
    for ours, plain in ((prior, plain_prior), (updated, plain_updated), (probabilities, plain_probabilities)):
        torch.testing.assert_close(ours, plain, rtol=1e-10, atol=1e-10)
    # the value/output pair: one C x C projection of every token less, for the C x C x C weight product
    saved = windows * tokens * channels * channels - channels**3
    if classes > channels:  # the query/key pair: C x C queries and C-channel scores instead of C x K keys and K-channel
        saved += windows * tokens * (channels + tokens) * (classes - channels) - channels * classes * channels
    assert macs - folded_macs == saved

    monkeypatch.undo()
    layer.train()
    layer(x)[1].pow(2).sum().backward()
    attention = layer.attentions[0]
    for projection in (attention.class_query_proj, attention.class_key_proj, attention.value_proj, attention.out_proj):
        assert projection.weight.grad is not None and projection.weight.grad.abs().max() > 0


def test_the_value_and_output_projections_stay_apart_for_fewer_tokens_than_channels():
    """Folding ``Wo Wv`` costs a ``C^3`` product: with fewer tokens than channels the two projections are cheaper."""
    attention = SeMaskSwinSemanticAttention(many_classes_config(24), 16)
    with torch.no_grad():
        assert attention.folded_projections(torch.zeros(1, 16, 16)) == (True, False)
        assert attention.folded_projections(torch.zeros(1, 17, 16)) == (True, True)
        assert attention.folded_projections(torch.zeros(2, 9, 16)) == (True, True)
    assert attention.folded_projections(torch.zeros(2, 9, 16)) == (False, False)  # grad mode: a training step


def test_semantic_attention_keeps_the_tokens_dtype_under_autocast():
    """Under bfloat16 autocast the update is added to the bfloat16 tokens in float32 and rounded (not a float32 map
    the next LayerNorm and patch merging would run in), in training as at inference."""
    attention = SeMaskSwinSemanticAttention(many_classes_config(24), 16)
    open_semantic_gates(attention, 0.7)
    tokens = torch.randn(3, 9, 16).bfloat16()
    for grad in (False, True):
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
            prior, updated, _ = attention(tokens)
        assert updated.dtype == torch.bfloat16 and prior.dtype == torch.bfloat16


def test_window_attention_mask_in_the_compute_dtype():
    """The relative position bias plus the shift mask, made once in the dtype asked for; a single image's mask is
    not repeated, two images' are, image-major like the windows."""
    bias = torch.tensor([[[0.25, -0.5], [1.0, 0.0]]])  # (heads 1, N 2, N 2)
    shift_mask = torch.tensor([[[0.0, -100.0], [-100.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])  # (nW 2, N, N)
    mask = window_attention_mask(bias, shift_mask, windows=2, dtype=torch.bfloat16)
    assert mask.dtype == torch.bfloat16 and mask.shape == (2, 1, 2, 2)
    expected = torch.tensor([[[[0.25, -100.5], [-99.0, 0.0]]], [[[0.25, -0.5], [1.0, 0.0]]]])
    assert torch.equal(mask.float(), expected.bfloat16().float())
    assert torch.equal(window_attention_mask(bias, shift_mask, windows=4), torch.cat([expected, expected]))
    assert torch.equal(window_attention_mask(bias, None, windows=4, dtype=torch.bfloat16), bias[None].bfloat16())


def test_patch_merging_order_and_odd_padding():
    merging = SeMaskSwinPatchMerging(tiny_config(), dim=1)
    x = torch.arange(1 * 3 * 3, dtype=torch.float32).view(1, 3, 3, 1)
    with torch.no_grad():
        merging.norm.weight.fill_(1), merging.norm.bias.zero_()
        merging.reduction.weight.copy_(torch.eye(2, 4))  # output = first two merged channels, before the norm
        merging.norm = torch.nn.Identity()
        out = merging(x)
    # padded to 4x4; the first merged token takes x[0,0] then x[1,0] (row offset first)
    assert out.shape == (1, 2, 2, 2)
    assert out[0, 0, 0].tolist() == [0.0, 3.0]
    assert out[0, 0, 1].tolist() == [2.0, 5.0]
    assert out[0, 1, 1].tolist() == [8.0, 0.0]  # x[2,2] and the zero pad below it


def test_semantic_decoder_upsamples_twofold_per_level():
    priors = (
        torch.zeros(1, 1, 8, 8),
        torch.ones(1, 1, 4, 4),
        torch.full((1, 1, 2, 2), 2.0),
        torch.full((1, 1, 1, 1), 3.0),
    )
    out = semantic_decoder(priors)
    torch.testing.assert_close(out, torch.full((1, 1, 8, 8), 6.0))
    # odd sizes: 2x upsampling then a resize to the stride-4 size
    priors = (torch.zeros(1, 1, 7, 5), torch.randn(1, 1, 4, 3), torch.randn(1, 1, 2, 2), torch.randn(1, 1, 1, 1))
    expected = F.interpolate(F.interpolate(priors[1], scale_factor=2.0, mode="bilinear"), size=(7, 5), mode="bilinear")
    level2 = F.interpolate(
        F.interpolate(priors[2], scale_factor=2.0, mode="bilinear"), scale_factor=2.0, mode="bilinear"
    )
    expected = expected + F.interpolate(level2, size=(7, 5), mode="bilinear") + priors[3].expand(1, 1, 7, 5)
    torch.testing.assert_close(semantic_decoder(priors), expected)


def test_upsample2x_by_transposed_convolution_is_the_bilinear_resizing():
    # hand values along one axis: x = [1, 3] -> [1, 1.5, 2.5, 3] (0.75 / 0.25 of the neighbour, the border repeated)
    row = torch.tensor([[[[1.0, 3.0]]]], dtype=torch.float64)
    assert upsample2x_by_transposed_convolution(row).tolist() == [[[[1.0, 1.5, 2.5, 3.0]] * 2]]
    generator = torch.Generator().manual_seed(0)
    for shape in ((2, 3, 5, 4), (1, 2, 1, 1), (1, 4, 7, 2)):
        hidden_states = torch.randn(shape, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(
            upsample2x_by_transposed_convolution(hidden_states), upsample2x(hidden_states), rtol=0, atol=1e-12
        )
    # under bfloat16 autocast it keeps the input's dtype, as the resizing does
    hidden_states = torch.randn(1, 2, 3, 3, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert upsample2x_by_transposed_convolution(hidden_states).dtype == torch.float32


def test_traced_semantic_decoder_materialises_each_upsampling():
    """Traced, the chain of 2x steps is transposed convolutions (inductor would fuse the bilinear resizings into one
    kernel recomputing every step per pixel); the values are the eager ones."""
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    generator = torch.Generator().manual_seed(0)
    priors = tuple(torch.randn(1, 3, 8 >> level, 8 >> level, generator=generator) for level in range(4))
    traced = torch.compile(semantic_decoder, backend=record, fullgraph=True)(priors)
    torch.testing.assert_close(traced, semantic_decoder(priors), rtol=1e-6, atol=1e-6)
    targets = [node.target for graph in graphs for node in graph.graph.nodes if node.op == "call_function"]
    assert targets.count(F.conv_transpose2d) == 1 + 2 + 3
    # no bilinear 2x step left: the only resizings are resize_to's three to the stride-4 size (traced, it resizes
    # whatever the sizes)
    assert targets.count(F.interpolate) == 3


def test_semantic_decoder_training_step_compiles_with_inductor():
    """The traced decoder's backward through inductor, on channels-last priors (as the model's): its values and
    gradients are the eager ones. (F.pad's replicate mode failed here: its fake backward kernel gives other strides.)"""
    generator = torch.Generator().manual_seed(0)
    priors = [
        torch.randn(1, 5, 8 >> level, 8 >> level, generator=generator).contiguous(memory_format=torch.channels_last)
        for level in range(4)
    ]

    def step(*priors):
        return semantic_decoder(priors).square().mean()

    compiled_priors = [prior.clone().requires_grad_() for prior in priors]
    eager_priors = [prior.clone().requires_grad_() for prior in priors]
    compiled_loss = torch.compile(step, fullgraph=True)(*compiled_priors)
    compiled_loss.backward()
    eager_loss = step(*eager_priors)
    eager_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss)
    for compiled, eager in zip(compiled_priors, eager_priors):
        torch.testing.assert_close(compiled.grad, eager.grad)


def test_ohem_keeps_the_hardest_valid_pixels():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0] = torch.tensor([3.0, 1.0, -2.0, 0.0])  # class 0 confidence per pixel
    labels = torch.tensor([[[0, 0, 0, 255]]])
    losses = pixel_cross_entropy(logits, labels, ignore_index=255)
    weights = ohem_pixel_weights(losses, labels, ignore_index=255, min_kept=2)
    assert weights.tolist() == [[[0.0, 1.0, 1.0, 0.0]]]  # the two least confident valid pixels
    assert ohem_pixel_weights(losses, labels, 255, min_kept=10).tolist() == [[[1.0, 1.0, 1.0, 0.0]]]


def test_ohem_with_a_threshold_keeps_the_pixels_of_low_label_probability():
    # mmseg's OHEMPixelSampler(thresh): the valid pixels whose softmax probability of their label is below
    # max(thresh, the min_kept-th lowest of these probabilities), the last valid one where fewer are valid
    logits = torch.zeros(1, 2, 1, 5)
    logits[0, 0] = torch.tensor([3.0, 1.0, -2.0, 0.0, 0.5])
    labels = torch.tensor([[[0, 0, 0, 255, 1]]])
    probabilities = pixel_label_probability(logits, labels, ignore_index=255)
    expected = [torch.sigmoid(torch.tensor(v)).item() for v in (3.0, 1.0, -2.0, 0.0, -0.5)]  # class 0 for the ignored
    torch.testing.assert_close(probabilities[0, 0], torch.tensor(expected))  # 0.953, 0.731, 0.119, 0.5, 0.378
    weights = ohem_pixel_weights(probabilities, labels, ignore_index=255, min_kept=1, threshold=0.7)
    assert weights.tolist() == [[[0.0, 0.0, 1.0, 0.0, 1.0]]]  # below max(0.7, 2nd lowest 0.378) = 0.7
    weights = ohem_pixel_weights(probabilities, labels, ignore_index=255, min_kept=3, threshold=0.1)
    assert weights.tolist() == [[[0.0, 1.0, 1.0, 0.0, 1.0]]]  # below max(0.1, the 4th lowest 0.953)
    weights = ohem_pixel_weights(probabilities, labels, ignore_index=255, min_kept=2, threshold=0.1)
    assert weights.tolist() == [[[0.0, 0.0, 1.0, 0.0, 1.0]]]  # below max(0.1, the 3rd lowest 0.731): not itself
    weights = ohem_pixel_weights(probabilities, labels, ignore_index=255, min_kept=1, threshold=1.0)
    assert weights.tolist() == [[[1.0, 1.0, 1.0, 0.0, 1.0]]]  # every valid pixel below 1
    # a batch: each image's own labels (the second image's first pixel is ignored, its last labelled 0)
    second = torch.tensor([[[255, 0, 0, 255, 0]]])
    batched = pixel_label_probability(logits.expand(2, -1, -1, -1), torch.cat([labels, second]), ignore_index=255)
    assert torch.equal(batched[0], probabilities[0])
    torch.testing.assert_close(batched[1, 0], torch.tensor(expected[:4] + [1 - expected[4]]))
    # several rows and classes: each pixel's probability of its own label (class 0 where ignored)
    grid_logits = torch.randn(1, 3, 2, 3, generator=torch.Generator().manual_seed(0))
    grid_labels = torch.tensor([[[0, 1, 2], [2, 255, 1]]])
    softmax = grid_logits.softmax(dim=1)[0]
    by_hand = [
        [softmax[0, 0, 0], softmax[1, 0, 1], softmax[2, 0, 2]],
        [softmax[2, 1, 0], softmax[0, 1, 1], softmax[1, 1, 2]],
    ]
    grid = pixel_label_probability(grid_logits, grid_labels, ignore_index=255)
    torch.testing.assert_close(grid[0], torch.tensor(by_hand))


def test_loss_normalisation_and_ohem_switch():
    torch.manual_seed(0)
    model = SeMaskSwinForSemanticSegmentation(tiny_config()).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    labels = torch.randint(0, 4, (1, 32, 32))
    labels[:, :8] = 255  # a quarter ignored
    with torch.no_grad():
        output = model(pixel_values)
        mean_all = model.compute_loss(output.logits, output.semantic_logits, labels)
        model.config.loss_mean_over_all_pixels = False
        mean_valid = model.compute_loss(output.logits, output.semantic_logits, labels)
        model.config.use_ohem, model.config.ohem_min_kept = True, 100
        ohem = model.compute_loss(output.logits, output.semantic_logits, labels)
    torch.testing.assert_close(mean_all, mean_valid * 0.75)
    upsampled = F.interpolate(output.logits, size=(32, 32), mode="bilinear")
    semantic = F.interpolate(output.semantic_logits, size=(32, 32), mode="bilinear")
    expected = F.cross_entropy(upsampled, labels, ignore_index=255) + 0.4 * F.cross_entropy(
        semantic, labels, ignore_index=255
    )
    torch.testing.assert_close(mean_valid, expected)
    per_pixel = F.cross_entropy(upsampled, labels, ignore_index=255, reduction="none")[labels != 255]
    hardest = per_pixel.topk(100).values.sum() / 768
    torch.testing.assert_close(ohem, hardest + 0.4 * F.cross_entropy(semantic, labels, ignore_index=255))


# ---------------------------------------------------------------------------------------------------------------
# base model / backbone / config
# ---------------------------------------------------------------------------------------------------------------


def test_model_backbone_and_segmentation_share_weights_and_outputs():
    torch.manual_seed(0)
    segmentation = SeMaskSwinForSemanticSegmentation(tiny_config()).eval()
    open_semantic_gates(segmentation)
    backbone = SeMaskSwinBackbone(tiny_config(out_features=["stage2", "stage4"])).eval()
    base = SeMaskSwinModel(tiny_config()).eval()
    backbone_state = {
        k.removeprefix("backbone."): v for k, v in segmentation.state_dict().items() if k.startswith("backbone.")
    }
    backbone.load_state_dict(backbone_state)
    base.load_state_dict(backbone_state)
    encoder = segmentation.backbone.encoder
    pixel_values = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        full = segmentation(pixel_values, output_hidden_states=True, output_semantic_priors=True)
        selected = backbone(pixel_values, output_hidden_states=True)
        base_output = base(pixel_values, output_hidden_states=True)
        # the segmentation model returns its backbone's hidden states (as transformers' UperNet): the embedding
        # output, then the four stage outputs before the patch merging, not normalised
        assert [tuple(h.shape[1:]) for h in full.hidden_states] == [
            (16, 12, 16),
            (16, 12, 16),
            (32, 6, 8),
            (64, 3, 4),
            (128, 2, 2),
        ]
        for ours, theirs in zip(selected.hidden_states, full.hidden_states, strict=True):
            torch.testing.assert_close(ours, theirs)
        # feature maps: the stage outputs through the stage LayerNorms (original norm0..3)
        stage4 = encoder.norms[3](full.hidden_states[4].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        stage2 = encoder.norms[1](full.hidden_states[2].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        # the base model's hidden states (SwinModel's): the embedding output, then each stage after its patch
        # merging (the next stage's input); the last stage has none
        merged1 = encoder.stages[0].downsample(full.hidden_states[1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert backbone.channels == [32, 128]
    assert [f.shape[1:] for f in selected.feature_maps] == [(32, 6, 8), (128, 2, 2)]
    torch.testing.assert_close(selected.feature_maps[0], stage2)
    torch.testing.assert_close(selected.feature_maps[1], stage4)
    torch.testing.assert_close(selected.semantic_priors[0], full.semantic_priors[1])
    torch.testing.assert_close(base_output.last_hidden_state, stage4)
    torch.testing.assert_close(base_output.pooler_output, stage4.mean((2, 3)))
    assert [tuple(h.shape[1:]) for h in base_output.hidden_states] == [
        (16, 12, 16),
        (32, 6, 8),
        (64, 3, 4),
        (128, 2, 2),
        (128, 2, 2),
    ]
    torch.testing.assert_close(base_output.hidden_states[0], full.hidden_states[0])
    torch.testing.assert_close(base_output.hidden_states[1], merged1)
    torch.testing.assert_close(base_output.hidden_states[4], full.hidden_states[4])
    assert [p.shape[1] for p in full.semantic_priors] == [4, 4, 4, 4]


def test_first_hidden_state_is_the_patch_embedding_output():
    """hidden_states[0] of the model, the backbone and the segmentation model is the embedding output, as in
    transformers' Swin: the image zero-padded to a multiple of the patch, the stride-4 patch projection and its
    LayerNorm, here computed with torch.nn.functional from the weights. The outputs depend on it (a gradient reaches
    it) and selecting hidden states by index keeps the others None."""
    torch.manual_seed(0)
    model = SeMaskSwinForSemanticSegmentation(tiny_config()).eval()
    open_semantic_gates(model)
    embeddings = model.backbone.embeddings
    with torch.no_grad():
        embeddings.norm.weight.normal_(1.0, 0.3), embeddings.norm.bias.normal_(0.0, 0.3)
    base = SeMaskSwinModel(model.config).eval()
    base.load_state_dict({k.removeprefix("backbone."): v for k, v in model.state_dict().items() if "backbone." in k})
    pixel_values = torch.randn(2, 3, 45, 61)
    padded = F.pad(pixel_values, (0, 3, 0, 3))  # 45 x 61 -> 48 x 64
    projected = F.conv2d(padded, embeddings.projection.weight, embeddings.projection.bias, stride=4)
    expected = F.layer_norm(projected.permute(0, 2, 3, 1), (16,), embeddings.norm.weight, embeddings.norm.bias)
    expected = expected.permute(0, 3, 1, 2).detach()
    assert expected.shape == (2, 16, 12, 16)
    output = model(pixel_values, output_hidden_states=True)
    base_output = base(pixel_values, output_hidden_states=True)
    backbone_output = model.backbone(pixel_values, output_hidden_states=True)
    for hidden_states in (output.hidden_states, base_output.hidden_states, backbone_output.hidden_states):
        assert len(hidden_states) == 5
        torch.testing.assert_close(hidden_states[0], expected, atol=1e-5, rtol=1e-5)
    first = output.hidden_states[0]
    first.retain_grad()
    output.logits.sum().backward()
    assert first.grad is not None and first.grad.abs().sum() > 0
    with torch.no_grad():
        chosen = model(pixel_values, output_hidden_states=[0, -1]).hidden_states
    assert chosen[1] is None and chosen[2] is None and chosen[3] is None
    torch.testing.assert_close(chosen[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chosen[4], output.hidden_states[4].detach())


def test_absolute_position_embedding_and_patch_norm_switch(tmp_path):
    """The original's ape: the (1, C, H, W) embedding of the image_size // patch_size grid, resized bicubically to
    the input's patch grid and added after the patch norm; at its own grid it is added unchanged. patch_norm=False:
    the projection alone. Both are saved and restored; the model trains the embedding."""
    torch.manual_seed(0)
    config = tiny_config(use_absolute_embeddings=True, image_size=[32, 48])
    model = SeMaskSwinForSemanticSegmentation(config).eval()
    embeddings = model.backbone.embeddings
    assert tuple(embeddings.position_embeddings.shape) == (1, 16, 8, 12)
    assert 0 < embeddings.position_embeddings.std() < 0.03  # the original's trunc-normal(0.02)
    for size in ((32, 48), (45, 61)):
        pixel_values = torch.randn(1, 3, *size)
        padded = F.pad(pixel_values, (0, -size[1] % 4, 0, -size[0] % 4))
        projected = F.conv2d(padded, embeddings.projection.weight, embeddings.projection.bias, stride=4)
        normalised = F.layer_norm(projected.permute(0, 2, 3, 1), (16,), embeddings.norm.weight, embeddings.norm.bias)
        position = embeddings.position_embeddings
        if size != (32, 48):
            position = F.interpolate(position, size=projected.shape[-2:], mode="bicubic", align_corners=False)
        with torch.no_grad():
            torch.testing.assert_close(embeddings(pixel_values), normalised + position.permute(0, 2, 3, 1))
    pixel_values = torch.randn(1, 3, 45, 61)
    model(pixel_values).logits.sum().backward()
    assert embeddings.position_embeddings.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    reloaded = SeMaskSwinForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert reloaded.config.image_size == [32, 48] and reloaded.config.use_absolute_embeddings
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=0)
    without_norm = SeMaskSwinForSemanticSegmentation(tiny_config(use_patch_norm=False)).eval()
    embeddings = without_norm.backbone.embeddings
    assert not any(name.startswith("backbone.embeddings.norm") for name in without_norm.state_dict())
    with torch.no_grad():
        projected = F.conv2d(
            F.pad(pixel_values, (0, 3, 0, 3)), embeddings.projection.weight, embeddings.projection.bias, stride=4
        )
        torch.testing.assert_close(embeddings(pixel_values), projected.permute(0, 2, 3, 1), rtol=0, atol=0)
    with pytest.raises(Exception, match=r"image_size = \[32, 48, 3\]; expected an int or \(height, width\)"):
        SeMaskSwinConfig(image_size=[32, 48, 3])
    with pytest.raises(Exception, match=r"image_size = 3 is smaller than patch_size = 4"):
        SeMaskSwinConfig(image_size=3, use_absolute_embeddings=True)


def test_out_features_none_means_the_last_stage_as_transformers_backbones():
    """transformers' rule (BackboneConfigMixin.set_output_features_output_indices): neither out_features nor
    out_indices -> the last stage; the configs of models that take the four stages say so."""
    from transformers import SwinConfig

    from hf_semseg import SeMaskMask2FormerConfig, VWFormerConfig
    from hf_semseg.demo_data import demo_model_config

    for config in (SeMaskSwinConfig(), SeMaskSwinConfig(out_features=None, out_indices=None)):
        swin = SwinConfig()
        assert (config.out_features, config.out_indices) == (swin.out_features, swin.out_indices) == (["stage4"], [4])
    backbone = SeMaskSwinBackbone(tiny_config(out_features=None))
    with torch.no_grad():
        feature_maps = backbone(torch.randn(1, 3, 32, 32)).feature_maps
    assert backbone.channels == [128] and [tuple(f.shape) for f in feature_maps] == [(1, 128, 1, 1)]
    assert SeMaskSwinConfig(out_indices=[0, 2]).out_features == ["stem", "stage2"]
    # the stem is a stage name too: its feature map is the embedding output (normalised by the patch embedding's
    # LayerNorm), without a semantic prior
    backbone = SeMaskSwinBackbone(tiny_config(out_features=["stem", "stage2"])).eval()
    with torch.no_grad():
        output = backbone(torch.randn(1, 3, 32, 32), output_hidden_states=True)
    assert backbone.channels == [16, 32] and [f.shape[1] for f in output.feature_maps] == [16, 32]
    torch.testing.assert_close(output.feature_maps[0], output.hidden_states[0])
    assert output.semantic_priors[0] is None and output.semantic_priors[1].shape == (1, 4, 4, 4)
    # the models that take the four stages
    assert hf_semseg.variant_config("semask-fpn-tiny-ade20k").out_features == STAGES
    assert demo_model_config().out_features == STAGES
    assert SeMaskMask2FormerConfig().backbone_config.out_features == STAGES
    assert SeMaskMask2FormerConfig(backbone_config=SeMaskSwinConfig()).backbone_config.out_features == STAGES
    assert VWFormerConfig(backbone_config=SeMaskSwinConfig()).backbone_config.out_features == STAGES
    # a config saved with its stages (every saved model's config lists them) loads them back
    reloaded = SeMaskSwinConfig.from_dict(tiny_config().to_dict())
    assert (reloaded.out_features, reloaded.out_indices) == (STAGES, [1, 2, 3, 4])
    partial = SeMaskSwinConfig.from_dict(tiny_config(out_features=["stage2", "stage4"]).to_dict())
    assert (partial.out_features, partial.out_indices) == (["stage2", "stage4"], [2, 4])


def test_fresh_model_is_a_plain_swin_until_gamma_opens():
    """gamma = 0 at init, as in the original: the semantic attention update is off but the priors exist."""
    torch.manual_seed(0)
    model = SeMaskSwinModel(tiny_config()).eval()
    assert all(p.item() == 0 for n, p in model.named_parameters() if n.endswith("gamma"))
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        closed = model(pixel_values, output_hidden_states=True)
        open_semantic_gates(model)
        opened = model(pixel_values, output_hidden_states=True)
    assert not torch.allclose(closed.last_hidden_state, opened.last_hidden_state)
    torch.testing.assert_close(closed.semantic_priors[0], opened.semantic_priors[0])  # stage 1 priors come first


def test_attentions_fall_back_to_eager_and_are_returned_with_it():
    """An SDPA model asked for attentions runs that call eagerly (a warning once), as transformers' models do; it
    raised before. The outputs equal an eager model's, and the model stays on SDPA for the next call."""
    from transformers.testing_utils import CaptureLogger

    from hf_semseg.models import modeling_utils_segmentation

    torch.manual_seed(0)
    model = SeMaskSwinForSemanticSegmentation(tiny_config()).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    assert model.config._attn_implementation == "sdpa"
    modeling_utils_segmentation.logger.warning_once.cache_clear()
    with CaptureLogger(modeling_utils_segmentation.logger) as captured, torch.no_grad():
        fallback = model(pixel_values, output_attentions=True)
    assert "output_attentions=True needs eager attention (the model uses 'sdpa')" in captured.out
    assert model.config._attn_implementation == "sdpa"  # restored
    model.set_attn_implementation("eager")
    with torch.no_grad():
        output = model(pixel_values, output_attentions=True)
    torch.testing.assert_close(fallback.logits, output.logits, rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(fallback.attentions, output.attentions))
    # per stage: 2 Swin blocks, then the semantic attention; stage-1 windows of 4x4 tokens, 2x2 windows per image
    assert len(output.attentions) == 12
    assert output.attentions[0].shape == output.attentions[1].shape == (8, 1, 16, 16)  # unshifted and shifted block
    assert output.attentions[2].shape == (18, 9, 9)  # semantic attention: 3x3 windows of 3x3 tokens (8x8 padded to 9x9)
    torch.testing.assert_close(output.attentions[1].sum(-1), torch.ones(8, 1, 16))


def test_fpn_rule_for_semantic_attention_types():
    assert SeMaskSwinConfig(embed_dim=96, num_labels=150).semantic_attention_types == [
        "window",
        "window",
        "global",
        "global",
    ]
    assert (
        SeMaskSwinConfig(embed_dim=128, num_heads=[4, 8, 16, 32], num_labels=150).semantic_attention_types
        == ["window"] * 4
    )
    assert SeMaskSwinConfig(embed_dim=192, num_labels=19).semantic_attention_types == ["window"] * 4
    assert SeMaskSwinConfig(embed_dim=192, num_labels=171).semantic_attention_types == [
        "window",
        "window",
        "global",
        "global",
    ]


def test_config_validation_names_the_field():
    with pytest.raises(Exception, match="semantic_attention_types"):
        SeMaskSwinConfig(semantic_attention_types=["window", "local", "global", "global"])
    with pytest.raises(Exception, match="num_heads"):
        SeMaskSwinConfig(num_heads=[3, 6, 12])


@pytest.mark.parametrize("name", hf_semseg.list_variants("semask_swin"))
def test_variant_parameter_counts_equal_the_original(name):
    variant = hf_semseg.get_variant(name)
    config = hf_semseg.variant_config(name)
    with torch.device("meta"):
        model = SeMaskSwinForSemanticSegmentation(config)
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6, 2) == variant.reported["params_M"]


def test_variant_registry():
    names = hf_semseg.list_variants()
    assert len(hf_semseg.list_variants("semask_swin")) == 12
    assert "semask-fpn-tiny-ade20k" in names and "semask-fpn-large-coco-stuff-10k" in names
    config = hf_semseg.variant_config("semask-fpn-large-ade20k")
    assert (config.embed_dim, config.window_size, config.num_labels, config.use_ohem) == (192, 12, 150, True)
    assert config.semantic_attention_types == ["window", "window", "global", "global"]
    assert config.id2label[0] == "wall"
    assert hf_semseg.variant_config("semask-fpn-base-cityscapes").semantic_attention_types == ["window"] * 4
    with pytest.raises(KeyError, match="semask-fpn-tiny-ade20k"):
        hf_semseg.variant_config("semask-fpn-huge-ade20k")


def test_import_registers_every_auto_class():
    from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

    config = tiny_config()
    assert type(AutoConfig.for_model("semask_swin")) is SeMaskSwinConfig
    assert type(AutoModel.from_config(config)) is SeMaskSwinModel
    assert type(AutoBackbone.from_config(config)) is SeMaskSwinBackbone
    assert type(AutoModelForSemanticSegmentation.from_config(config)) is SeMaskSwinForSemanticSegmentation
    assert IMAGE_PROCESSOR_MAPPING[SeMaskSwinConfig]["pil"] is hf_semseg.KeepRatioImageProcessorPil
    assert AutoImageProcessor is not None
    for cls, auto in (
        (SeMaskSwinConfig, "AutoConfig"),
        (SeMaskSwinModel, "AutoModel"),
        (SeMaskSwinBackbone, "AutoBackbone"),
        (SeMaskSwinForSemanticSegmentation, "AutoModelForSemanticSegmentation"),
        (KeepRatioImageProcessor, "AutoImageProcessor"),
    ):
        assert cls._auto_class == auto


def test_variant_image_processor_uses_the_test_scale():
    processor = hf_semseg.variant_image_processor("semask-fpn-large-ade20k")
    assert processor.size == {"longest_edge": 2560, "shortest_edge": 640} and processor.do_reduce_labels
    city = hf_semseg.variant_image_processor("semask-fpn-tiny-cityscapes", backend="pil")
    assert type(city).__name__ == "KeepRatioImageProcessorPil"
    assert city.size == {"longest_edge": 2048, "shortest_edge": 1024} and not city.do_reduce_labels
    # a 512x683 ADE20K image keeps its size at the 512 scale, and is scaled by 1.25 at the 640 scale
    assert processor(torch.zeros(3, 512, 683), return_tensors="pt")["pixel_values"].shape[-2:] == (640, 854)


def test_input_embeddings_are_the_patch_embedding():
    from hf_semseg import SeMaskSwinBackbone, SeMaskSwinModel
    from hf_semseg.models.modeling_semask_swin import SeMaskSwinPatchEmbeddings

    for model_class in (SeMaskSwinModel, SeMaskSwinBackbone, SeMaskSwinForSemanticSegmentation):
        model = model_class(tiny_config())
        embeddings = model.get_input_embeddings()
        assert isinstance(embeddings, SeMaskSwinPatchEmbeddings)
        assert embeddings is next(m for m in model.modules() if isinstance(m, SeMaskSwinPatchEmbeddings))


def test_inference_folds_the_head_batch_norms_into_the_convolutions(monkeypatch):
    """In eval mode each Semantic-FPN ConvModule is one convolution, its BatchNorm's scale folded into the kernel and
    its shift the bias: the unfolded logits (float64, running statistics and affine parameters away from the
    identity); training runs the BatchNorm on batch statistics."""
    from hf_semseg.models import modeling_utils_segmentation

    torch.manual_seed(0)
    model = SeMaskSwinForSemanticSegmentation(tiny_config()).double().eval()
    norms = perturb_batch_norms(model.decode_head)
    assert len(norms) == 7  # one per conv module of the four scale heads: 1 + 1 + 2 + 3
    pixel_values = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    norm_calls = []
    norm_forward = torch.nn.BatchNorm2d.forward

    def counted_forward(norm, hidden_states):  # not a hook: a hooked BatchNorm is not folded
        norm_calls.extend([norm] if any(norm is head_norm for head_norm in norms) else [])
        return norm_forward(norm, hidden_states)

    monkeypatch.setattr(torch.nn.BatchNorm2d, "forward", counted_forward)
    with torch.no_grad():
        folded = model(pixel_values).logits
        assert norm_calls == []  # no BatchNorm ran
        monkeypatch.setattr(modeling_utils_segmentation, "folds_into_previous_layer", lambda norm: False)
        unfolded = model(pixel_values).logits
        assert len(norm_calls) == 7
    assert unfolded.abs().max() > 0.1
    torch.testing.assert_close(folded, unfolded, rtol=1e-10, atol=1e-10)


def test_batch_norms_are_not_folded_under_autocast():
    """Under autocast the folded kernel would be cast and reordered on every call (slower than the norm): the
    BatchNorm runs."""
    from hf_semseg.models.modeling_utils_segmentation import folds_into_previous_layer

    norm = torch.nn.BatchNorm2d(4).eval()
    assert folds_into_previous_layer(norm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not folds_into_previous_layer(norm)
    assert not folds_into_previous_layer(norm.train())


def optimized_fpn_model():
    """A seeded tiny SeMask-FPN in eval mode whose head BatchNorms are away from the identity."""
    torch.manual_seed(0)
    model = SeMaskSwinForSemanticSegmentation(tiny_config()).eval()
    perturb_batch_norms(model.decode_head)
    return model


def count_packed_conv_modules(monkeypatch) -> list:
    """Records the product dtype each Semantic-FPN conv module ran its prepared convolution in (None: the modules)."""
    from hf_semseg.models.modeling_semask_swin import SeMaskFPNConvModule

    return record_results(monkeypatch, SeMaskFPNConvModule, "packed_dtype")


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output.double() - reference.double()).abs().max() / reference.double().abs().max())


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16-autocast"])
def test_optimized_fpn_conv_modules_run_one_packed_convolution(autocast, monkeypatch):
    """After ``optimize_for_inference`` each of the head's 7 conv modules runs one prepared convolution (the
    BatchNorm folded, the ReLU its post-op) in the forward's product dtype, and the logits are the model's: float32
    within 1e-5, bfloat16 as close to the float64 model as the unoptimised one (within 1.5x its error); the second
    forward reuses the prepared weights (the same logits bit for bit)."""
    model = optimized_fpn_model()
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = copy.deepcopy(model).double()(pixel_values.double()).logits
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            loaded = model(pixel_values).logits
            dtypes = count_packed_conv_modules(monkeypatch)
            assert model.optimize_for_inference() is model
            optimized = model(pixel_values).logits
            # where oneDNN has no bfloat16 kernels for this CPU the conv modules run as modules under autocast
            prepared = not autocast or ONEDNN_BFLOAT16
            assert dtypes == [(torch.bfloat16 if autocast else torch.float32) if prepared else None] * 7
            again = model(pixel_values).logits
    torch.testing.assert_close(again, optimized, atol=0, rtol=0)
    assert optimized.dtype == loaded.dtype and optimized.abs().max() > 0.1
    if not autocast:
        assert relative_error(optimized, loaded) < 1e-5
    else:
        loaded_error = relative_error(loaded, reference)
        assert loaded_error > 1e-3 and relative_error(optimized, reference) < 1.5 * loaded_error


def test_fpn_conv_modules_run_as_modules_where_it_could_tell(monkeypatch):
    """A conv module runs module by module with a hook on its ReLU (which fires), a BatchNorm in train mode or
    without running statistics, an activation other than ``nn.ReLU``, gradients on and while traced; changed running
    statistics are prepared again; copies keep the setting without the packed tensors; clearing turns it off."""
    from hf_semseg.models.modeling_semask_swin import SeMaskFPNConvModule

    model = optimized_fpn_model().optimize_for_inference()
    module = next(m for m in model.decode_head.modules() if isinstance(m, SeMaskFPNConvModule))
    hidden_states = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert module.packed_dtype(hidden_states) == torch.float32
        before = module(hidden_states)
        seen = []
        handle = module.activation.register_forward_hook(lambda m, inputs, output: seen.append(output.shape))
        assert module.packed_dtype(hidden_states) is None
        module(hidden_states)
        handle.remove()
        assert seen == [(1, 16, 8, 8)]
        module.batch_norm.train()
        assert module.packed_dtype(hidden_states) is None
        module.batch_norm.eval()
        module.activation = torch.nn.GELU()
        assert module.packed_dtype(hidden_states) is None
        module.activation = torch.nn.ReLU(inplace=True)
        module.batch_norm.running_var.mul_(4.0)
        changed = module(hidden_states)
        expected = torch.relu(module.batch_norm(module.conv(hidden_states)))
    assert relative_error(changed, before) > 1e-2 and relative_error(changed, expected) < 1e-6
    assert module.packed_dtype(hidden_states) is None  # gradients on
    for copied in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert copied.inference_weights.settings == {} and not copied.inference_weights.by_dtype
        with torch.no_grad():
            torch.testing.assert_close(copied(hidden_states), changed, atol=0, rtol=0)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.no_grad():
        assert module.packed_dtype(hidden_states) is None
    monkeypatch.undo()
    model.clear_inference_optimization()
    assert module.inference_weights is None
    norm = module.batch_norm
    norm.track_running_stats, norm.running_mean, norm.running_var = False, None, None
    model.optimize_for_inference()
    assert module.inference_weights is not None
    with torch.no_grad():
        assert module.packed_dtype(hidden_states) is None
