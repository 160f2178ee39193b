"""Every model class initialises every parameter and buffer it has through its ``_init_weights`` (issue 11, item 5).

transformers initialises a model it builds on the meta device (``from_pretrained``: missing keys, and keys resized by
``ignore_mismatched_sizes``) with ``_init_weights`` alone, so a branch of it that never runs leaves uninitialised
memory. The checks: (a) transformers' own ``test_can_init_all_missing_weights`` (a model from ``__init__`` and one from
an empty state dict are equal under a seeded init) and a model whose every tensor was overwritten with NaN gets finite
values back, for every registered model class (VWFormer over each of its five backbones); (b) a saved tiny model
reloads with ``num_channels=4, ignore_mismatched_sizes=True`` finite, its loaded weights untouched and its resized
patch embedding initialised by the family's rule; (c) the documented rules themselves, with numbers.
"""

import copy
import math
import random
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn
from transformers import ConvNextConfig, PreTrainedModel, SegformerConfig, SwinConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerMaskedAttentionDecoderLayer,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    Mask2FormerPredictionBlock,
)

import hf_semseg
from hf_semseg import (
    PaleBackbone,
    PaleConfig,
    PaleForImageClassification,
    PaleForSemanticSegmentation,
    PaleModel,
    SeMaskMask2FormerConfig,
    SeMaskMask2FormerForSemanticSegmentation,
    SeMaskMask2FormerModel,
    SeMaskMaskFormerConfig,
    SeMaskMaskFormerForSemanticSegmentation,
    SeMaskMaskFormerModel,
    SeMaskSwinBackbone,
    SeMaskSwinConfig,
    SeMaskSwinForSemanticSegmentation,
    SeMaskSwinModel,
    VWFormerConfig,
    VWFormerForSemanticSegmentation,
    VWMask2FormerForSemanticSegmentation,
    VWMask2FormerModel,
    VWMaskFormerForSemanticSegmentation,
    VWMaskFormerModel,
)
from hf_semseg.models.modeling_semask_swin import SeMaskFPNConvModule, SeMaskSwinWindowAttention
from hf_semseg.models.modeling_vwformer import VWFormerConvModule, VWFormerVaryingWindowAttention

from model_suite import (
    FOUR_STAGES,
    tiny_label_kwargs,
    tiny_mask2former_kwargs,
    tiny_pale_kwargs,
    tiny_semask_swin_kwargs,
    tiny_vw_mask2former_config,
    tiny_vw_maskformer_config,
)


STAGES = FOUR_STAGES


def many_labels(num_labels: int = 150) -> dict:
    """``id2label`` / ``label2id`` of ``num_labels`` classes: a classifier large enough to measure its init."""
    return {
        "id2label": {i: f"class {i}" for i in range(num_labels)},
        "label2id": {f"class {i}": i for i in range(num_labels)},
    }


def semask_config(**overrides):
    return SeMaskSwinConfig(**{**tiny_semask_swin_kwargs(decoder_hidden_size=16), "out_features": STAGES, **overrides})


def pale_config(**overrides):
    values = tiny_pale_kwargs(decoder_hidden_size=16, auxiliary_channels=8, pool_scales=[1, 2], **tiny_label_kwargs())
    return PaleConfig(**{**values, "out_features": STAGES, **overrides})


def vwformer_config(backbone_config, **overrides):
    values = dict(backbone_config=backbone_config, decoder_hidden_size=64, num_attention_heads=2, **tiny_label_kwargs())
    return VWFormerConfig(**{**values, **overrides})


def mask2former_config(**overrides):
    values = tiny_mask2former_kwargs(backbone_config=SeMaskSwinConfig(**tiny_semask_swin_kwargs(depths=[2, 1, 2, 1])))
    return SeMaskMask2FormerConfig(**{**values, **overrides})


def maskformer_config(**overrides):
    decoder = dict(d_model=32, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=64, num_queries=6)
    values = dict(
        backbone_config=SeMaskSwinConfig(**tiny_semask_swin_kwargs(depths=[2, 1, 2, 1])),
        fpn_feature_size=32,
        mask_feature_size=32,
        decoder_config=decoder,
        **tiny_label_kwargs(),
    )
    return SeMaskMaskFormerConfig(**{**values, **overrides})


#: (model class, tiny config factory) for every registered model class; VWFormer over each backbone it supports
CASES = {
    "semask-model": (SeMaskSwinModel, semask_config),
    "semask-backbone": (SeMaskSwinBackbone, lambda: semask_config(out_features=STAGES)),
    "semask-fpn": (SeMaskSwinForSemanticSegmentation, semask_config),
    "pale-model": (PaleModel, pale_config),
    "pale-backbone": (PaleBackbone, lambda: pale_config(out_features=STAGES)),
    "pale-classification": (PaleForImageClassification, pale_config),
    "pale-upernet": (PaleForSemanticSegmentation, lambda: pale_config(use_auxiliary_head=True)),
    "vwformer-swin": (
        VWFormerForSemanticSegmentation,
        lambda: vwformer_config(
            SwinConfig(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4, out_features=STAGES)
        ),
    ),
    "vwformer-city-convnext": (
        VWFormerForSemanticSegmentation,
        lambda: vwformer_config(
            ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 24, 32, 48], out_features=STAGES),
            head_type="vw_city",
            use_short_cut=False,
        ),
    ),
    "vwformer-mit": (
        VWFormerForSemanticSegmentation,
        lambda: vwformer_config(
            SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 24, 32, 48], num_attention_heads=[1, 1, 2, 2])
        ),
    ),
    "vwformer-semask": (
        VWFormerForSemanticSegmentation,
        lambda: vwformer_config(
            SeMaskSwinConfig(**tiny_semask_swin_kwargs(depths=[1, 1, 2, 1]), out_features=STAGES),
            use_auxiliary_head=True,
        ),
    ),
    "vwformer-pale": (
        VWFormerForSemanticSegmentation,
        lambda: vwformer_config(PaleConfig(**tiny_pale_kwargs(depths=[1, 1, 1, 1]), out_features=STAGES)),
    ),
    "mask2former-model": (SeMaskMask2FormerModel, mask2former_config),
    "mask2former": (SeMaskMask2FormerForSemanticSegmentation, mask2former_config),
    "mask2former-fapn": (
        SeMaskMask2FormerForSemanticSegmentation,
        lambda: mask2former_config(pixel_decoder_type="fapn"),
    ),
    "mask2former-msfapn": (
        SeMaskMask2FormerForSemanticSegmentation,
        lambda: mask2former_config(pixel_decoder_type="msfapn"),
    ),
    "maskformer-model": (SeMaskMaskFormerModel, maskformer_config),
    "maskformer": (SeMaskMaskFormerForSemanticSegmentation, maskformer_config),
    "vw-mask2former-model": (VWMask2FormerModel, lambda: tiny_vw_mask2former_config(pixel_decoder_type="vw")),
    "vw-mask2former-deformable": (VWMask2FormerForSemanticSegmentation, tiny_vw_mask2former_config),
    "vw-maskformer-model": (VWMaskFormerModel, tiny_vw_maskformer_config),
    "vw-maskformer": (VWMaskFormerForSemanticSegmentation, tiny_vw_maskformer_config),
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread while this module runs: the tiny models' inits and loads gain nothing from a second
    thread, and on a busy 2-core machine two contending threads make the module about 1.6x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextmanager
def seeded_weight_init():
    """transformers' test helper of the same name: the seed is set again before each module's init, so a model built
    by ``__init__`` and one initialised from the meta device get the same random values. ``set_seed(42)`` without its
    accelerator seeds (every test model is initialised on the CPU): with no accelerator initialised, each of those is
    a call queued with its stack trace, 2-3 s per VW detectron2 model, whose init runs once per module (741 times)."""
    original = PreTrainedModel._initialize_weights

    def seeded(*args, **kwargs):
        random.seed(42)
        np.random.seed(42)
        torch.default_generator.manual_seed(42)
        original(*args, **kwargs)

    PreTrainedModel._initialize_weights = seeded
    try:
        yield
    finally:
        PreTrainedModel._initialize_weights = original


def non_finite(tensors: dict) -> list[str]:
    return sorted(
        name for name, tensor in tensors.items() if tensor.is_floating_point() and not tensor.isfinite().all()
    )


def test_cases_cover_every_registered_model_class():
    registered = {
        value
        for value in vars(hf_semseg).values()
        if isinstance(value, type)
        and issubclass(value, PreTrainedModel)
        and not value.__name__.endswith("PreTrainedModel")
    }
    assert len(registered) == 16
    assert registered == {model_class for model_class, _ in CASES.values()}


# -- (a) everything is initialised from nothing ---------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_can_init_all_missing_weights(case):
    """transformers' ``test_can_init_all_missing_weights``: the weights of a model initialised from the meta device by
    ``_init_weights`` alone equal those of the model built by ``__init__`` (same seed), nothing stays on meta."""
    model_class, make_config = CASES[case]
    with seeded_weight_init():
        from_init = model_class(make_config())
        from_empty_state_dict = model_class.from_pretrained(None, config=make_config(), state_dict={})
    expected, actual = from_init.state_dict(), from_empty_state_dict.state_dict()
    on_meta = [name for name, tensor in actual.items() if tensor.device.type == "meta"]
    assert not on_meta, f"still on the meta device: {on_meta}"
    assert sorted(actual) == sorted(expected)
    different = sorted(name for name in expected if not torch.equal(actual[name], expected[name]))
    assert not different, f"not (re)initialised by _init_weights: {different}"
    assert not non_finite(actual)


@pytest.mark.parametrize("case", CASES)
def test_init_replaces_every_value(case):
    """Every parameter and buffer overwritten with NaN (integers with -7) and every initialised flag cleared: the
    model's init gives every floating tensor finite values back and every buffer the value ``__init__`` gave it."""
    model_class, make_config = CASES[case]
    reference = model_class(make_config())
    model = model_class(make_config())
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.fill_(float("nan") if tensor.is_floating_point() else -7)
    for item in [*model.modules(), *model.parameters(), *model.buffers()]:
        item.__dict__.pop("_is_hf_initialized", None)
    model.initialize_weights()
    assert not non_finite(model.state_dict()), "left without a value by _init_weights"
    reference_buffers = dict(reference.named_buffers())
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, reference_buffers[name]), f"buffer {name} not restored by _init_weights"


# -- (b) a reload with a resized input layer ------------------------------------------------------------------------


def set_num_channels(config, num_channels: int) -> None:
    """``num_channels`` of the model's own config (SeMask-Swin, Pale) or of its backbone's (VWFormer, Mask2Former)."""
    backbone_config = getattr(config, "backbone_config", None)
    if backbone_config is not None:
        backbone_config.num_channels = num_channels
    else:
        config.num_channels = num_channels


@pytest.mark.parametrize("case", CASES)
def test_reload_with_four_input_channels(case, tmp_path):
    """``from_pretrained(..., ignore_mismatched_sizes=True)`` with a 4-channel input: the patch embedding weight is
    resized and initialised by the family's rule (the spread of a fresh 4-channel model's; uninitialised memory has
    another, or NaN), every loaded tensor is the saved one, and nothing is left non-finite."""
    model_class, make_config = CASES[case]
    torch.manual_seed(0)
    model_class(make_config()).save_pretrained(tmp_path)
    saved = model_class.from_pretrained(tmp_path).state_dict()
    config = make_config()
    set_num_channels(config, 4)
    torch.manual_seed(1)
    fresh = model_class(copy.deepcopy(config)).state_dict()
    reloaded = model_class.from_pretrained(tmp_path, config=config, ignore_mismatched_sizes=True).state_dict()

    assert not non_finite(reloaded), non_finite(reloaded)
    resized = sorted(name for name in saved if reloaded[name].shape != saved[name].shape)
    assert resized and all(reloaded[name].shape[1] == 4 for name in resized), resized
    for name, tensor in reloaded.items():
        if name not in resized:
            assert torch.equal(tensor, saved[name]), f"loaded weight {name} was overwritten"
    for name in resized:
        expected_std = fresh[name].std().item()
        assert expected_std > 0
        assert reloaded[name].std().item() == pytest.approx(expected_std, rel=0.25), name


# -- (c) the documented rules -----------------------------------------------------------------------------------------


def assert_std(tensor: torch.Tensor, std: float, rel: float = 0.1) -> None:
    assert tensor.numel() >= 500, "too few values to measure a standard deviation"
    assert tensor.mean().item() == pytest.approx(0.0, abs=4 * std / math.sqrt(tensor.numel()))
    assert tensor.std().item() == pytest.approx(std, rel=rel)


def assert_zero(tensor: torch.Tensor) -> None:
    assert torch.equal(tensor, torch.zeros_like(tensor))


def assert_one(tensor: torch.Tensor) -> None:
    assert torch.equal(tensor, torch.ones_like(tensor))


def kaiming_fan_out_std(conv: nn.Conv2d) -> float:
    """kaiming-normal (fan-out, ReLU): ``sqrt(2 / (out_channels * kernel area / groups))``."""
    return math.sqrt(2.0 / (conv.out_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]))


def test_semask_fpn_rules():
    """trunc-normal(0.02) Linears with zero bias, LayerNorm 1/0, gamma 0, relative position bias trunc-normal(0.02),
    the patch embedding PyTorch's conv default (kaiming-uniform, a=sqrt 5; bias uniform in +-1/sqrt(fan-in): the
    original's backbone init leaves it alone), decode-head convs kaiming-normal (fan-out) with BatchNorm 1/0,
    classifier normal(0.01) with zero bias."""
    torch.manual_seed(0)
    model = SeMaskSwinForSemanticSegmentation(semask_config(**many_labels(), decoder_hidden_size=64, embed_dim=32))
    backbone = model.backbone
    projection = backbone.embeddings.projection
    bound = 1 / math.sqrt(projection.weight[0].numel())
    assert projection.weight.abs().max().item() <= bound
    assert_std(projection.weight, bound / math.sqrt(3))
    assert projection.bias.abs().max().item() <= bound and projection.bias.std().item() > bound / 4
    assert_one(backbone.embeddings.norm.weight), assert_zero(backbone.embeddings.norm.bias)
    stage = backbone.encoder.stages[3]
    assert_std(stage.blocks[0].attn.qkv.weight, 0.02), assert_zero(stage.blocks[0].attn.qkv.bias)
    assert_std(stage.blocks[0].mlp.fc1.weight, 0.02), assert_zero(stage.blocks[0].mlp.fc1.bias)
    semantic = stage.semantic_layer.attentions[0]
    assert_std(semantic.class_query_proj.weight, 0.02), assert_zero(semantic.class_query_proj.bias)
    tables = torch.cat(
        [
            m.relative_position_bias_table.flatten()
            for m in backbone.modules()
            if isinstance(m, SeMaskSwinWindowAttention)
        ]
    )
    assert_std(tables, 0.02, rel=0.15)
    for name, parameter in model.named_parameters():
        if name.endswith(".gamma"):
            assert_zero(parameter)
    conv_modules = [m for m in model.decode_head.modules() if isinstance(m, SeMaskFPNConvModule)]
    for conv_module in conv_modules:
        assert_one(conv_module.batch_norm.weight), assert_zero(conv_module.batch_norm.bias)
    later_convs = torch.cat([m.conv.weight.flatten() for m in conv_modules[1:]])  # all 64 -> 64 channels
    assert_std(later_convs, kaiming_fan_out_std(conv_modules[1].conv), rel=0.05)
    assert_std(model.decode_head.classifier.weight, 0.01, rel=0.05)
    assert_zero(model.decode_head.classifier.bias)


def test_a_semask_fpn_from_scratch_has_bounded_gradients_on_zero_padded_crops():
    """The training crops are padded with zeros after the normalisation: with a zero patch-embedding bias those
    tokens were zero vectors, whose LayerNorm has no variance (its slope 1/sqrt(eps), multiplied by every LayerNorm
    after it), and the first backward pass of a model trained from scratch had a gradient norm of about 1e9 (4e9 on
    the demo data), nearly all in that bias. The original's conv default bias keeps them ordinary tokens."""
    torch.manual_seed(0)
    config = semask_config(embed_dim=16, depths=[1, 1, 1, 1], drop_path_rate=0.0, semantic_dropout_prob=0.0)
    model = SeMaskSwinForSemanticSegmentation(config).train()
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(4, 3, 64, 64, generator=generator)
    pixel_values[..., 40:] = 0  # a crop padded on the right
    labels = torch.randint(0, config.num_labels, (4, 64, 64), generator=generator)
    labels[..., 40:] = 255
    model(pixel_values=pixel_values, labels=labels).loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert norm.item() < 100, norm.item()


def test_pale_rules():
    """trunc-normal(0.02) Linears with zero bias, LayerNorm / BatchNorm 1/0, every conv kaiming-normal (fan-out) with
    zero bias."""
    torch.manual_seed(0)
    model = PaleForSemanticSegmentation(pale_config(decoder_hidden_size=64, use_auxiliary_head=True))
    block = model.backbone.encoder.stages[3].layers[0]
    assert_std(block.mlp.fc1.weight, 0.02), assert_zero(block.mlp.fc1.bias)
    assert_one(block.layernorm_before.weight), assert_zero(block.layernorm_before.bias)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            if module.weight.numel() >= 2000:
                assert_std(module.weight, kaiming_fan_out_std(module), rel=0.1)
            if module.bias is not None:
                assert_zero(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            assert_one(module.weight), assert_zero(module.bias)
            assert_zero(module.running_mean), assert_one(module.running_var)


@pytest.mark.parametrize("head_type", ["vw", "vw_city"])
def test_vwformer_rules(head_type):
    """Convs kaiming-normal (fan-out) with BatchNorm 1/0, Linears trunc-normal(0.02) with zero bias except the query
    projection normal(0.01), the ``vw`` head's attention output BatchNorm weight 0, the classifier normal(0.01)."""
    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, out_features=STAGES)
    torch.manual_seed(0)
    config = vwformer_config(backbone, **many_labels(), head_type=head_type, use_short_cut=head_type == "vw")
    model = VWFormerForSemanticSegmentation(config)
    head = model.decode_head
    attentions = [m for m in head.modules() if isinstance(m, VWFormerVaryingWindowAttention)]
    assert len(attentions) == 3
    for attention in attentions:
        assert_std(attention.query_proj.weight, 0.01)
        assert_std(attention.key_proj.weight, 0.02), assert_zero(attention.key_proj.bias)
        assert_std(attention.value_proj.weight, 0.02), assert_zero(attention.value_proj.bias)
        if head_type == "vw":
            assert_zero(attention.output_norm.weight), assert_zero(attention.output_norm.bias)
        else:
            assert attention.output_norm is None
            assert_zero(attention.output_proj.bias)
    for module in head.modules():
        if isinstance(module, VWFormerConvModule):
            if module.conv.weight.numel() >= 2000:
                assert_std(module.conv.weight, kaiming_fan_out_std(module.conv), rel=0.1)
            assert_one(module.batch_norm.weight), assert_zero(module.batch_norm.bias)
    assert_std(head.classifier.weight, 0.01, rel=0.05)
    assert_zero(head.classifier.bias)


def test_semask_mask2former_rules():
    """transformers' Mask2Former init for the head: the deformable attention's sampling offsets 0 with the
    per-head direction grid as bias and attention weights 0, the masked-attention decoder layers' matrices
    xavier-uniform with zero cross-attention bias, the mask MLP PyTorch's Linear default, query embeddings
    normal(1); the class predictor normal(``init_std``); the no-object weight in the loss; SeMask-Swin's own init
    in the backbone (semantic gates 0)."""
    torch.manual_seed(0)
    config = mask2former_config(**many_labels())
    model = SeMaskMask2FormerForSemanticSegmentation(config)
    deformable = [
        m for m in model.modules() if isinstance(m, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention)
    ]
    assert deformable
    for attention in deformable:
        assert_zero(attention.sampling_offsets.weight)
        assert_zero(attention.attention_weights.weight), assert_zero(attention.attention_weights.bias)
        assert_zero(attention.value_proj.bias), assert_zero(attention.output_proj.bias)
        offsets = attention.sampling_offsets.bias.view(attention.n_heads, attention.n_levels, attention.n_points, 2)
        for head in range(attention.n_heads):
            angle = 2 * math.pi * head / attention.n_heads
            direction = torch.tensor([math.cos(angle), math.sin(angle)])
            direction = direction / direction.abs().max()
            for point in range(attention.n_points):
                expected = (point + 1) * direction.expand(attention.n_levels, 2)
                torch.testing.assert_close(offsets[head, :, point], expected)
    decoder_layers = [m for m in model.modules() if isinstance(m, Mask2FormerMaskedAttentionDecoderLayer)]
    assert decoder_layers
    for layer in decoder_layers:
        weight = layer.cross_attn.in_proj_weight  # xavier-uniform: U(-b, b), b = gain sqrt(6 / (fan_in + fan_out))
        bound = config.init_xavier_std * math.sqrt(6.0 / sum(weight.shape))
        assert weight.abs().max().item() <= bound
        assert_std(weight, bound / math.sqrt(3))
        assert_zero(layer.cross_attn.in_proj_bias)
    for block in (m for m in model.modules() if isinstance(m, Mask2FormerPredictionBlock)):
        linear = next(m for m in block.modules() if isinstance(m, nn.Linear))
        assert linear.weight.abs().max().item() <= 1 / math.sqrt(linear.in_features) + 1e-6
    queries = model.model.transformer_module.queries_embedder.weight
    assert queries.std().item() == pytest.approx(1.0, rel=0.35)
    assert_std(model.class_predictor.weight, config.init_std)
    assert_zero(model.class_predictor.bias)
    expected_empty_weight = torch.ones(config.num_labels + 1)
    expected_empty_weight[-1] = config.no_object_weight
    assert torch.equal(model.criterion.empty_weight, expected_empty_weight)
    for name, parameter in model.named_parameters():
        if name.endswith(".gamma"):
            assert_zero(parameter)
    projection = model.model.pixel_level_module.encoder.embeddings.projection  # SeMask-Swin's: PyTorch's conv default
    bound = 1 / math.sqrt(projection.weight[0].numel())
    assert projection.bias.abs().max().item() <= bound and projection.bias.std().item() > bound / 4
