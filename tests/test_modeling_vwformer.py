"""VWFormer: the common suite over five backbones, and the varying window attention against a direct transcription of
the original computation (mmcv ``NonLocal2d`` / ``nn.MultiheadAttention`` on ``F.unfold`` windows)."""

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import ConvNextConfig, SegformerConfig, SwinConfig

from hf_semseg import KeepRatioImageProcessor, SeMaskSwinConfig, VWFormerConfig, VWFormerForSemanticSegmentation
from hf_semseg.models.configuration_pale import PaleConfig
from hf_semseg.models.modeling_vwformer import (
    VWFormerVaryingWindowAttention,
    context_windows,
    copy_shift_pad,
    window_partition,
    window_reverse,
)

from model_suite import (
    FOUR_STAGES,
    SegmentationModelSuite,
    perturb_batch_norms,
    perturb_sdn_fuse,
    tiny_label_kwargs,
    tiny_pale_kwargs,
    tiny_semask_swin_kwargs,
)


STAGES = FOUR_STAGES


def tiny_vwformer_config(backbone_config, **overrides) -> VWFormerConfig:
    values = dict(
        backbone_config=backbone_config,
        decoder_hidden_size=64,
        num_attention_heads=2,
        **tiny_label_kwargs(),
    )
    values.update(overrides)
    return VWFormerConfig(**values)


def tiny_swin():
    return SwinConfig(
        embed_dim=16,
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 2, 4],
        window_size=4,
        drop_path_rate=0.0,
        out_features=STAGES,
    )


def open_attention_outputs(model) -> None:
    """The ``vw`` head's attention output BatchNorm starts at weight 0 (mmcv NonLocal2d ``zero_init``), which hides
    the attention path; give it a weight so that gradients and comparisons see it."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("output_norm.weight"):
                parameter.fill_(0.7)
            elif name.endswith(".gamma"):  # SeMask's semantic gates
                parameter.fill_(0.5)


class VWFormerSuite(SegmentationModelSuite):
    model_class = VWFormerForSemanticSegmentation
    image_size = (128, 96)
    deterministic_overrides = {"classifier_dropout_prob": 0.0}

    def get_image_processor(self):
        return KeepRatioImageProcessor(size={"longest_edge": 192, "shortest_edge": 128}, size_divisor=64)

    def prepare_for_gradient_check(self, model):
        open_attention_outputs(model)


class TestVWFormerOverSwin(VWFormerSuite):
    def get_config(self):
        return tiny_vwformer_config(tiny_swin())


class TestVWFormerWithSDNNeck(VWFormerSuite):
    """The common suite with the SDN-style neck on."""

    def get_config(self):
        return tiny_vwformer_config(tiny_swin(), use_sdn_neck=True)

    def prepare_for_gradient_check(self, model):
        super().prepare_for_gradient_check(model)
        perturb_sdn_fuse(model)


class TestVWFormerCityHeadOverConvNeXt(VWFormerSuite):
    # ConvNeXt's 2x2 stride-2 downsampling needs at least 32 px per side (it fails below that on its own)
    odd_sizes = ((37, 53), (65, 45), (50, 90))

    def get_config(self):
        backbone = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 24, 32, 48], out_features=STAGES)
        return tiny_vwformer_config(backbone, head_type="vw_city", use_short_cut=False)

    def expected_logits_size(self, height, width):
        return height // 4, width // 4  # the 4x4 stride-4 stem drops a remainder


class TestVWFormerOverMiT(VWFormerSuite):
    def get_config(self):
        backbone = SegformerConfig(
            depths=[1, 1, 1, 1],
            hidden_sizes=[16, 24, 32, 48],
            num_attention_heads=[1, 1, 2, 2],
            sr_ratios=[4, 2, 2, 1],
            drop_path_rate=0.0,
        )
        return tiny_vwformer_config(backbone)


@pytest.mark.parametrize(
    "suite",
    [TestVWFormerOverSwin, TestVWFormerOverMiT, TestVWFormerCityHeadOverConvNeXt],
    ids=["swin", "mit", "convnext"],
)
def test_output_attentions_returns_the_backbones_as_upernet(suite):
    """``output_attentions=True`` was accepted and nothing returned (the output had no ``attentions``): the
    backbone's attention probabilities now, as transformers' UperNet returns them; None for ConvNeXt."""
    model = suite().make_model()
    model.set_attn_implementation("eager")  # transformers' backbones return no probabilities from SDPA (an empty tuple)
    pixel_values = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        output = model(pixel_values, output_attentions=True)
        backbone = model.backbone(pixel_values, output_attentions=True)
        plain = model(pixel_values)
    assert plain.attentions is None
    torch.testing.assert_close(output.logits, plain.logits)
    if suite is TestVWFormerCityHeadOverConvNeXt:
        assert output.attentions is None
        return
    assert len(output.attentions) == len(backbone.attentions) >= 4
    for actual, reference in zip(output.attentions, backbone.attentions):
        torch.testing.assert_close(actual, reference, atol=0, rtol=0)
        torch.testing.assert_close(actual.sum(-1), torch.ones_like(actual.sum(-1)))  # probabilities over the keys


def test_mit_backbone_normalises_with_the_configs_layer_norm_eps():
    # transformers' SegformerModel builds its LayerNorms with eps 1e-5 whatever layer_norm_eps says; the original MiT
    # uses its norm_cfg's (1e-6), which the converter carries into layer_norm_eps. A large eps shows in the values.
    config = TestVWFormerOverMiT().get_config()
    config.backbone_config.layer_norm_eps = 0.25
    model = VWFormerForSemanticSegmentation(config).eval()
    norms = [module for module in model.backbone.modules() if isinstance(module, torch.nn.LayerNorm)]
    # per stage: the embedding's, the block's two, the stage's; the key reduction's in the three with sr_ratio > 1
    assert len(norms) == 4 * 4 + 3 and {norm.eps for norm in norms} == {0.25}
    embedding = model.backbone.stages[0].patch_embeddings
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        tokens = embedding(pixel_values)[0]
        projected = embedding.proj(pixel_values).flatten(2).transpose(1, 2)  # (1, C, h, w) -> (1, h*w, C)
        expected = F.layer_norm(projected, (16,), embedding.layer_norm.weight, embedding.layer_norm.bias, eps=0.25)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-6)


class TestVWFormerOverSeMaskSwin(VWFormerSuite):
    # Adam's first step moves every weight by about lr: 1e-3 overshoots on this tiny random model (loss 4.32 ->
    # 4.45) where 3e-4 lowers it (-> 3.93)
    learning_rate = 3e-4

    def get_config(self):
        backbone = tiny_semask_swin_kwargs(
            depths=[1, 1, 2, 1], semantic_window_size=4, drop_path_rate=0.0, semantic_dropout_prob=0.0
        )
        return tiny_vwformer_config(SeMaskSwinConfig(**backbone, out_features=STAGES))


class TestVWFormerOverPale(VWFormerSuite):
    def get_config(self):
        backbone = PaleConfig(**tiny_pale_kwargs(depths=[1, 1, 1, 1], drop_path_rate=0.0))
        return tiny_vwformer_config(backbone)


# ---------------------------------------------------------------------------------------------------------------
# varying window attention against the original computation
# ---------------------------------------------------------------------------------------------------------------


def original_copy_shift_padding(context, ratio, ph, pw):
    """The original ``copy_shift_padding`` (its ``R <= nw`` branch), transcribed."""
    context = torch.cat(
        [
            context[..., (ratio + 1) * pw // 2 : ratio * pw],
            context,
            context[..., -(ratio * pw) : -((ratio + 1) * pw // 2)],
        ],
        dim=3,
    )
    return torch.cat(
        [
            context[..., (ratio + 1) * ph // 2 : ratio * ph, :],
            context,
            context[..., -(ratio * ph) : -((ratio + 1) * ph // 2), :],
        ],
        dim=2,
    )


def original_branch(attention: VWFormerVaryingWindowAttention, fused: torch.Tensor, city: bool) -> torch.Tensor:
    """One VWA branch computed the way the original does: ``F.unfold`` + einops-style reshapes + a 1x1-conv
    non-local block (``vw``) or ``nn.MultiheadAttention`` (``vw_city``)."""
    batch, channels, height, width = fused.shape
    ratio, grid, heads = attention.ratio, 8, attention.num_heads
    ph, pw = height // grid, width // grid
    query = fused.view(batch, channels, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    query = query.reshape(batch * grid * grid, channels, ph, pw)  # (b nh nw) c ph pw
    context = attention.context_embedding(F.pad(fused, (ratio // 2 - 1, ratio // 2, ratio // 2 - 1, ratio // 2)))
    context = original_copy_shift_padding(context, ratio, ph, pw)
    context = F.unfold(context, kernel_size=(ratio * ph, ratio * pw), stride=(ph, pw))
    assert context.shape[-1] == grid * grid  # what einops asserts in the original
    small = channels // ratio**2
    # 'b (c ph pw) (nh nw) -> (b nh nw) c ph pw'
    context = context.view(batch, small, ratio * ph, ratio * pw, grid * grid).permute(0, 4, 1, 2, 3)
    context = context.reshape(batch * grid * grid, small, ratio * ph, ratio * pw)
    # 'b c (ph rh) (pw rw) -> b (rh rw c) ph pw'
    context = context.view(-1, small, ph, ratio, pw, ratio).permute(0, 3, 5, 1, 2, 4).reshape(-1, channels, ph, pw)

    def conv1x1(linear, x):
        return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)

    q = conv1x1(attention.query_proj, query).flatten(2)  # (n, C, P*P)
    k = conv1x1(attention.key_proj, context).flatten(2)
    v = conv1x1(attention.value_proj, context).flatten(2)
    n = q.shape[0]
    q, k, v = (t.view(n, heads, channels // heads, -1) for t in (q, k, v))  # 'b (h dim) n -> b h dim n'
    weights = torch.softmax(q.transpose(-1, -2) @ k / (channels // heads) ** 0.5, dim=-1)
    y = (weights @ v.transpose(-1, -2)).transpose(-1, -2).reshape(n, channels, ph, pw)
    y = conv1x1(attention.output_proj, y)
    y = y.view(batch, grid, grid, channels, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height, width)
    return y if city else attention.output_norm(y)


@pytest.mark.parametrize("head_type", ["vw", "vw_city"])
@pytest.mark.parametrize("size", [(16, 16), (24, 40), (40, 24), (8, 16)])  # P = 2, odd 3x5 / 5x3, and P = 1
def test_varying_window_attention_equals_the_original_computation(head_type, size):
    torch.manual_seed(0)
    config = tiny_vwformer_config(tiny_swin(), decoder_hidden_size=64, num_attention_heads=4, head_type=head_type)
    fused = torch.randn(2, 64, *size)
    for ratio in (2, 4, 8):
        attention = VWFormerVaryingWindowAttention(config, ratio).eval()
        with torch.no_grad():
            if attention.output_norm is not None:
                attention.output_norm.weight.uniform_(0.5, 1.5)
                attention.output_norm.running_var.uniform_(0.5, 1.5)
            for layer in (attention.query_proj, attention.key_proj, attention.value_proj, attention.output_proj):
                layer.weight.normal_(0, 0.2)
            query_tokens = window_partition(fused.permute(0, 2, 3, 1), 8)
            actual = attention(fused, query_tokens)
            if size[0] // 8 == 1:  # the original's unfold then yields 9 windows per side and raises
                with pytest.raises(AssertionError):
                    original_branch(attention, fused, city=head_type == "vw_city")
                continue
            expected = original_branch(attention, fused, city=head_type == "vw_city")
        torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-5)


def test_window_partition_order_and_round_trip():
    x = torch.arange(2 * 16 * 8).float().view(2, 16, 8, 1)  # value = flat position
    windows = window_partition(x, 8)  # P = 2 x 1
    assert windows.shape == (128, 2, 1)
    # window (0, 1) of image 0 holds rows 0-1 of column 1
    assert windows[1, :, 0].tolist() == [1.0, 9.0]
    # first window of image 1 starts after the 64 windows of image 0
    assert windows[64, 0, 0].item() == 128.0
    torch.testing.assert_close(window_reverse(windows, 8, 16, 8), x, atol=0, rtol=0)


def test_copy_shift_padding_copies_border_content():
    row = torch.arange(16).float().view(1, 1, 1, 16).expand(1, 1, 16, 16)
    padded = copy_shift_pad(row, ratio=2, window_height=2, window_width=2)  # R*P - (R+1)*P//2 = 1 per side
    assert padded.shape == (1, 1, 18, 18)
    assert padded[0, 0, 0].tolist() == [3.0] + list(range(16)) + [12.0]  # left: column 3, right: column 12


def test_context_window_space_to_depth_channel_order():
    # a (1, 1, 4, 4) map, R = 2, P = 1 on a 2x2 grid: every window is one 2x2 block folded into 4 channels
    context = torch.arange(16).float().view(1, 1, 4, 4)
    tokens = context_windows(context, ratio=2, num_windows=2, window_height=1, window_width=1)
    assert tokens.shape == (4, 1, 4)
    # window (0, 0) covers rows 0-1, cols 0-1; channel (rh * R + rw) holds pixel (rh, rw)
    assert tokens[0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    # window (1, 1) starts at (1, 1) (stride P = 1)
    assert tokens[3, 0].tolist() == [5.0, 6.0, 9.0, 10.0]


def test_sizes_not_multiple_of_64_resize_the_fused_map_up():
    torch.manual_seed(0)
    model = VWFormerForSemanticSegmentation(tiny_vwformer_config(tiny_swin())).eval()
    captured = {}
    model.decode_head.multi_scale.register_forward_hook(lambda module, inputs, output: captured.update(out=output))
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 100, 70)).logits
    assert logits.shape[-2:] == (25, 18)
    assert captured["out"].shape[-2:] == (16, 16)  # 13 x 9 at stride 8 -> resized up to 16 x 16


def test_loss_averages_over_all_pixels_like_mmseg():
    torch.manual_seed(0)
    model = VWFormerForSemanticSegmentation(tiny_vwformer_config(tiny_swin())).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    labels = torch.randint(0, 4, (1, 64, 64))
    labels[:, :32] = 255
    with torch.no_grad():
        output = model(pixel_values, labels=labels)
        upsampled = F.interpolate(output.logits, size=(64, 64), mode="bilinear", align_corners=False)
        per_pixel = F.cross_entropy(upsampled, labels, ignore_index=255, reduction="none")
    torch.testing.assert_close(output.loss, per_pixel.sum() / 4096)
    model.config.loss_mean_over_all_pixels = False
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values, labels=labels).loss, per_pixel.sum() / 2048)


def test_auxiliary_head_adds_weighted_loss():
    torch.manual_seed(0)
    model = VWFormerForSemanticSegmentation(
        tiny_vwformer_config(tiny_swin(), use_auxiliary_head=True, auxiliary_channels=8)
    ).eval()
    pixel_values, labels = torch.randn(1, 3, 64, 64), torch.randint(0, 4, (1, 64, 64))
    with torch.no_grad():
        output = model(pixel_values, labels=labels)
    assert output.auxiliary_logits.shape == (1, 4, 4, 4)
    main = model.compute_loss(output.logits, None, labels)
    auxiliary = model.compute_loss(output.auxiliary_logits, None, labels)
    torch.testing.assert_close(output.loss, main + 0.4 * auxiliary)


def test_config_rejects_bad_values():
    with pytest.raises(StrictDataclassClassValidationError, match="head_type"):
        tiny_vwformer_config(tiny_swin(), head_type="uper")
    with pytest.raises(StrictDataclassClassValidationError, match="num_attention_heads"):
        tiny_vwformer_config(tiny_swin(), num_attention_heads=5)
    with pytest.raises(StrictDataclassClassValidationError, match="enlarging_ratios"):
        tiny_vwformer_config(tiny_swin(), enlarging_ratios=[2, 3])
    with pytest.raises(StrictDataclassClassValidationError, match="four backbone stages"):
        tiny_vwformer_config(SwinConfig(out_features=["stage3", "stage4"]))


@pytest.mark.parametrize("head_type", ["vw", "vw_city"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_fusions_split_over_their_inputs_equal_the_concatenation(monkeypatch, head_type, training):
    """The three 1x1 fusions (``linear_fuse``, the multi-scale ``fuse``, ``low_level_fuse``) run as sums of each
    input's convolution, resized after it (the pooled branch as a per-image term): the original's
    resize-concatenate-convolve values and gradients (float64, batch statistics in training), with the hand-counted
    MACs fewer."""
    from torch.utils.flop_counter import FlopCounterMode

    from hf_semseg.models.modeling_vwformer import VWFormerConvModule, VWFormerHead

    torch.manual_seed(0)
    config = tiny_vwformer_config(tiny_swin(), head_type=head_type)
    channels, classes = config.decoder_hidden_size, config.num_labels
    head = VWFormerHead(config, [16, 32, 64, 128]).double().train(training)
    open_attention_outputs(head)
    sides = (32, 16, 8, 4)  # a 128 x 128 image: strides 4, 8, 16, 32
    features = [torch.randn(2, c, s, s, dtype=torch.float64) for c, s in zip((16, 32, 64, 128), sides)]

    def logits_and_gradients():
        head.zero_grad()
        torch.manual_seed(1)  # the same dropout masks in training
        with FlopCounterMode(display=False) as counter:
            logits = head(features)
        logits.pow(2).sum().backward()
        gradients = {name: parameter.grad.clone() for name, parameter in head.named_parameters()}
        return logits.detach(), gradients, counter.get_total_flops() // 2  # MACs

    split_logits, split_gradients, split_macs = logits_and_gradients()
    monkeypatch.setattr(VWFormerConvModule, "splits_over_inputs", lambda self: False)
    logits, gradients, macs = logits_and_gradients()
    torch.testing.assert_close(split_logits, logits, rtol=1e-10, atol=1e-10)
    assert split_gradients.keys() == gradients.keys()
    for name in gradients:
        torch.testing.assert_close(split_gradients[name], gradients[name], rtol=1e-9, atol=1e-9, msg=name)
    assert logits.shape == (2, classes, 32, 32)

    # the forward's MACs (counted outside the backward pass) per image, two images:
    # linear_fuse: 3C -> C at 16x16 becomes C -> C at 4x4, 8x8 and 16x16; low_level_fuse: (C + 48) -> C at 32x32
    # becomes C -> C at 16x16 and 48 -> C at 32x32; the vw head's pooled branch: C -> C at 16x16 becomes at 1x1
    saved = 3 * channels * channels * 16 * 16 - channels * channels * (4 * 4 + 8 * 8 + 16 * 16)
    saved += channels * channels * (32 * 32 - 16 * 16)
    if head_type == "vw":
        saved += channels * channels * (16 * 16 - 1)
    assert macs - split_macs == 2 * saved


@pytest.mark.parametrize("head_type", ["vw", "vw_city"])
def test_single_head_inference_folds_the_key_and_value_projections(monkeypatch, head_type):
    """At inference a single-head branch attends with queries ``(Wk^T Wq) x + Wk^T bq`` to the context tokens
    themselves and projects their mix by ``Wo Wv`` (bias ``Wo bv + bo``): the original's logits (float64), with two
    projections of the stride-8 map fewer per branch (hand-counted MACs); a training step runs the four projections,
    the key bias keeping its (zero) gradient."""
    from torch.utils.flop_counter import FlopCounterMode

    from hf_semseg.models.modeling_vwformer import VWFormerHead, VWFormerVaryingWindowAttention

    torch.manual_seed(0)
    config = tiny_vwformer_config(tiny_swin(), head_type=head_type, num_attention_heads=1)
    config._attn_implementation = "sdpa"  # float64 throughout (the eager function takes its softmax in float32)
    channels, branches = config.decoder_hidden_size, len(config.enlarging_ratios)
    head = VWFormerHead(config, [16, 32, 64, 128]).double().eval()
    open_attention_outputs(head)
    with torch.no_grad():  # biases away from 0, so that each term of the folding shows
        for name, parameter in head.named_parameters():
            if name.endswith(("proj.bias", "output_norm.bias")):
                parameter.normal_()
    features = [torch.randn(2, c, s, s, dtype=torch.float64) for c, s in zip((16, 32, 64, 128), (32, 16, 8, 4))]

    def logits_and_macs():
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            logits = head(features)
        return logits, counter.get_total_flops() // 2

    folded_logits, folded_macs = logits_and_macs()
    monkeypatch.setattr(VWFormerVaryingWindowAttention, "folds_projections", lambda self: False)
    logits, macs = logits_and_macs()
    torch.testing.assert_close(folded_logits, logits, rtol=1e-10, atol=1e-10)
    # per branch: the key and value projections of the 2 x 16 x 16 context tokens, less the two C x C x C products
    assert macs - folded_macs == branches * (2 * 2 * 16 * 16 * channels * channels - 2 * channels**3)

    monkeypatch.undo()
    head.train()
    head(features).pow(2).sum().backward()
    key_bias_grad = head.multi_scale.attentions[0].key_proj.bias.grad
    assert key_bias_grad is not None and key_bias_grad.abs().max() < 1e-9


@pytest.mark.parametrize("head_type", ["vw", "vw_city"])
def test_inference_folds_the_batch_norms_into_the_layers_before_them(monkeypatch, head_type):
    """In eval mode every ConvModule's BatchNorm (and the ``vw`` branches' output norm, into the folded output
    projection) is a per-channel scale and shift folded into the convolution's kernel and bias: the unfolded
    logits (float64, running statistics and affine parameters away from the identity)."""
    from hf_semseg.models import modeling_utils_segmentation, modeling_vwformer
    from hf_semseg.models.modeling_vwformer import VWFormerHead

    torch.manual_seed(0)
    config = tiny_vwformer_config(tiny_swin(), head_type=head_type, num_attention_heads=1)
    config._attn_implementation = "sdpa"
    head = VWFormerHead(config, [16, 32, 64, 128]).double().eval()
    norms = perturb_batch_norms(head)
    assert len(norms) >= 8
    features = [torch.randn(2, c, s, s, dtype=torch.float64) for c, s in zip((16, 32, 64, 128), (32, 16, 8, 4))]
    with torch.no_grad():
        folded = head(features)
        for module in (modeling_utils_segmentation, modeling_vwformer):
            monkeypatch.setattr(module, "folds_into_previous_layer", lambda norm: False)
        unfolded = head(features)
    assert unfolded.abs().max() > 0.1
    torch.testing.assert_close(folded, unfolded, rtol=1e-10, atol=1e-10)


def test_one_class_by_id2label_is_refused_when_loading(tmp_path):
    """``num_labels=1`` was refused, ``id2label={0: "fg"}`` loaded a one-channel softmax whose loss is 0."""
    from hf_semseg import VWFormerForSemanticSegmentation

    VWFormerForSemanticSegmentation(tiny_vwformer_config(tiny_swin())).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"VWFormerForSemanticSegmentation: .*num_labels = 1; expected at least 2"):
        VWFormerForSemanticSegmentation.from_pretrained(tmp_path, id2label={0: "fg"}, ignore_mismatched_sizes=True)
