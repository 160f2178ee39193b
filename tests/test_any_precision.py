"""Any-precision (vertical-layered) weights and once QAT: the representation on hand-computed codes, the top-bits
property, the width switch, saving and loading (in a fresh process without hf-semseg), the once-QAT step, and the
common model suite of the four families with the representation on."""

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from test_modeling_pale import TestPaleForSemanticSegmentation as _PaleSuite
from test_modeling_semask_mask2former import TestSeMaskMask2FormerForSemanticSegmentation as _Mask2FormerSuite
from test_modeling_semask_maskformer import TestSeMaskMaskFormerForSemanticSegmentation as _MaskFormerSuite
from test_modeling_semask_swin import TestSeMaskSwinForSemanticSegmentation as _SeMaskFPNSuite
from test_modeling_vwformer import TestVWFormerCityHeadOverConvNeXt as _VWFormerConvNeXtSuite
from test_modeling_vwformer import TestVWFormerOverMiT as _VWFormerMiTSuite
from test_modeling_vwformer import TestVWFormerOverSwin as _VWFormerSuite
from torch import nn
from transformers import AutoModelForSemanticSegmentation

from hf_semseg.demo_data import demo_model_config
from hf_semseg.models.modeling_any_precision import (
    VerticalLayeredConv2d,
    VerticalLayeredLinear,
    dequantize_weight,
    fake_quantize_weight,
    quantize_weight,
    top_bits,
)
from hf_semseg.models.modeling_linear import PLAIN_LINEAR_TYPES
from hf_semseg.models.modeling_semask_swin import SeMaskSwinForSemanticSegmentation
from hf_semseg.training import OnceQAT, RunOptionError, prepare_once_qat


WIDTHS = [8, 4, 2]


def tiny_fpn(**config_overrides):
    suite = _SeMaskFPNSuite()
    return suite, suite.make_model(**config_overrides)


def relative_rmse(approximation: torch.Tensor, weight: torch.Tensor) -> float:
    return ((approximation - weight).pow(2).mean().sqrt() / weight.pow(2).mean().sqrt()).item()


def rounding_quantizer(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The dedicated b-bit quantiser we compare with: symmetric, per output channel, round to nearest."""
    levels = 2 ** (bits - 1) - 1
    scale = weight.flatten(1).abs().amax(1).reshape(-1, *([1] * (weight.dim() - 1))) / levels
    return torch.round(weight / scale).clamp(-levels - 1, levels) * scale


# -- the representation --------------------------------------------------------------------------------------------
def test_codes_and_every_width_by_hand():
    weight = torch.tensor([[1.0, -1.0, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0]])
    codes, scale = quantize_weight(weight)
    # s = max|w| / 127.5; q = floor(w / s): 127.5 -> 127, -127.5 -> -128, 38.25 -> 38, 0 -> 0
    assert scale[0].item() == pytest.approx(1 / 127.5)
    assert codes.dtype == torch.int8 and codes[0].tolist() == [127, -128, 38, 0]
    # an all-zero channel: the smallest positive scale, its weights ~1e-38
    assert codes[1].tolist() == [0, 0, 0, 0] and scale[1].item() == torch.finfo(torch.float32).tiny
    # 8 bits, mid-rise: (q + 1/2) s; the extremes are the channel's extreme weights
    torch.testing.assert_close(
        dequantize_weight(codes, scale, 8)[0], torch.tensor([1.0, -1.0, 38.5 / 127.5, 0.5 / 127.5])
    )
    # 2 bits: q >> 6 = [1, -2, 0, 0], step 64 s, (q2 + 1/2) * 64 s
    assert top_bits(codes, 2)[0].tolist() == [1, -2, 0, 0]
    step = 64 / 127.5
    torch.testing.assert_close(
        dequantize_weight(codes, scale, 2)[0], torch.tensor([1.5 * step, -1.5 * step, 0.5 * step, 0.5 * step])
    )
    # 1 bit: the sign
    assert top_bits(codes, 1)[0].tolist() == [0, -1, 0, 0]


def real_codes() -> torch.Tensor:
    """8-bit codes of the weights of a (randomly initialised) demo SeMask-Swin FPN: every quantised layer."""
    torch.manual_seed(0)
    model = SeMaskSwinForSemanticSegmentation(demo_model_config()).to_any_precision(WIDTHS)
    return torch.cat([layer.weight_codes.flatten() for _, layer in model.vertical_layers()])


@pytest.fixture(scope="module")
def codes() -> torch.Tensor:
    return real_codes()


@pytest.mark.parametrize("bits", range(1, 8))
def test_narrower_codes_are_the_top_bits_of_the_stored_bytes(codes, bits):
    narrow = top_bits(codes, bits)
    # two's complement: the b-bit code's b bits are the stored byte's top b bits
    stored_byte = codes.to(torch.int16) & 0xFF
    assert torch.equal(narrow.to(torch.int16) & ((1 << bits) - 1), stored_byte >> (8 - bits))
    assert narrow.min() >= -(2 ** (bits - 1)) and narrow.max() <= 2 ** (bits - 1) - 1
    # the cascade: one width down drops exactly the lowest bit (one enhance layer)
    assert torch.equal(top_bits(codes, bits), top_bits(codes, bits + 1) >> 1)
    assert len(torch.unique(narrow)) > 2**bits // 2  # the codes really use the width


def test_error_decreases_with_the_width_and_stays_close_to_a_dedicated_rounding_quantizer():
    torch.manual_seed(0)
    weight = torch.randn(64, 32, 3, 3) * 0.05
    codes, scale = quantize_weight(weight)
    errors = [relative_rmse(dequantize_weight(codes, scale, bits), weight) for bits in range(1, 9)]
    assert all(wide < narrow for narrow, wide in zip(errors, errors[1:])), errors
    for bits in range(2, 9):
        rounding = relative_rmse(rounding_quantizer(weight, bits), weight)
        assert errors[bits - 1] <= 1.05 * rounding, (bits, errors[bits - 1], rounding)


def test_straight_through_estimator_value_and_gradient():
    weight = torch.randn(8, 5, requires_grad=True)
    quantized = fake_quantize_weight(weight, 4)
    assert torch.equal(quantized, dequantize_weight(*quantize_weight(weight), 4))
    (quantized * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(weight.grad, torch.arange(5.0).expand(8, 5))


#: the float layers the any-precision swap replaces
FLOAT_LAYER_TYPES = (*PLAIN_LINEAR_TYPES, torch.nn.Conv2d)


# -- the model -----------------------------------------------------------------------------------------------------
def test_to_any_precision_quantizes_all_but_the_patch_embedding_and_the_classifier():
    _, model = tiny_fpn()
    linears = sum(type(m) in PLAIN_LINEAR_TYPES for m in model.modules())
    assert linears > 0
    convs = sum(type(m) is torch.nn.Conv2d for m in model.modules())
    model.to_any_precision(WIDTHS)
    kept = sorted(name for name, m in model.named_modules() if type(m) in FLOAT_LAYER_TYPES)
    assert kept == ["backbone.embeddings.projection", "decode_head.classifier"]
    layers = dict(model.vertical_layers())
    assert sum(isinstance(m, VerticalLayeredLinear) for m in layers.values()) == linears
    assert sum(isinstance(m, VerticalLayeredConv2d) for m in layers.values()) == convs - 2
    assert model.config.weight_bits == WIDTHS and model.config.active_weight_bits == 8
    with pytest.raises(ValueError, match="already any-precision"):
        model.to_any_precision(WIDTHS)


@pytest.mark.parametrize(
    "suite, kept",
    [
        (_VWFormerSuite, ["backbone.swin.embeddings.patch_embeddings.projection", "decode_head.classifier"]),
        (_VWFormerConvNeXtSuite, ["backbone.embeddings.patch_embeddings", "decode_head.classifier"]),
        (_VWFormerMiTSuite, ["backbone.stages.0.patch_embeddings.proj", "decode_head.classifier"]),
        (
            _PaleSuite,
            ["auxiliary_head.classifier", "backbone.encoder.stages.0.patch_embed.projection", "decode_head.classifier"],
        ),
        (_Mask2FormerSuite, ["class_predictor", "model.pixel_level_module.encoder.embeddings.projection"]),
        (_MaskFormerSuite, ["class_predictor", "model.pixel_level_module.encoder.embeddings.projection"]),
    ],
    ids=["vwformer-swin", "vwformer-convnext", "vwformer-mit", "pale", "mask2former", "maskformer"],
)
def test_each_family_keeps_its_first_patch_embedding_and_final_classifiers_in_float(suite, kept):
    model = suite().make_model().to_any_precision(WIDTHS)
    plain = sorted(name for name, m in model.named_modules() if type(m) in FLOAT_LAYER_TYPES)
    assert plain == kept
    # no float layer is left where a forward still calls it (Mask2Former's prediction blocks keep their layers in a
    # list as well as registered)
    registered = {id(module) for module in model.modules()}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, (list, tuple)):
                assert all(id(item) in registered for item in value if isinstance(item, torch.nn.Module))


def test_float_modules_are_configurable():
    _, model = tiny_fpn(weight_bits_float_modules=[r"decode_head\."])
    model.to_any_precision(WIDTHS)
    assert not any(name.startswith("decode_head.") for name, _ in model.vertical_layers())
    assert any(name == "backbone.embeddings.projection" for name, _ in model.vertical_layers())


def test_set_weight_bits_round_trip_and_monotone_error():
    suite, model = tiny_fpn()
    pixel_values, _ = suite.make_inputs()
    with torch.no_grad():
        float_logits = model(pixel_values).logits
        model.to_any_precision(WIDTHS)
        by_width = {bits: model.set_weight_bits(bits)(pixel_values).logits for bits in (8, 6, 4, 3, 2)}
        again = model.set_weight_bits(8)(pixel_values).logits
    assert torch.equal(again, by_width[8])
    assert model.config.active_weight_bits == 8
    errors = [(by_width[bits] - float_logits).abs().mean().item() for bits in (8, 6, 4, 3, 2)]
    assert all(wide < narrow for wide, narrow in zip(errors, errors[1:])), errors
    assert errors[0] < 0.02 * float_logits.abs().mean().item()  # 8 bits: close to the float model
    for bad in (0, 9, True, 4.0):
        with pytest.raises(ValueError, match="between 1 and 8"):
            model.set_weight_bits(bad)
    _, float_model = tiny_fpn()
    with pytest.raises(ValueError, match="call to_any_precision first"):
        float_model.set_weight_bits(4)


def test_the_two_forms_compute_the_same_and_share_one_state_dict():
    suite, model = tiny_fpn()
    pixel_values, _ = suite.make_inputs()
    model.to_any_precision(WIDTHS).set_weight_bits(4)
    with torch.no_grad():
        codes_logits = model(pixel_values).logits
    codes_state = model.state_dict()
    model.use_float_master_weights()
    assert all(not layer.holds_codes for _, layer in model.vertical_layers())
    with torch.no_grad():
        assert torch.equal(model(pixel_values).logits, codes_logits)
    master_state = model.state_dict()
    assert master_state.keys() == codes_state.keys()
    for key, value in codes_state.items():
        assert torch.equal(master_state[key], value), key
    # a float state dict (a float checkpoint) loads into both forms
    _, float_model = tiny_fpn(seed=1)
    model.load_state_dict(float_model.state_dict())
    model.use_weight_codes()
    expected = float_model.to_any_precision(WIDTHS).set_weight_bits(4)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, expected(pixel_values).logits, atol=0, rtol=0)


@pytest.mark.parametrize("form", ["codes", "float master"])
@pytest.mark.parametrize("source", ["codes", "float"])
def test_a_layer_loaded_by_assignment_takes_the_state_dicts_tensors(form, source):
    """``load_state_dict(..., assign=True)`` (PyTorch's meta-device loading) into either form, from codes or from a
    float weight: the layer holds tensors of the state dict's values (codes: the very tensors; a parameter keeps its
    ``requires_grad``), where before it copied into its own (on the meta device: nothing) and ignored ``assign``."""
    torch.manual_seed(0)
    source_layer = nn.Linear(6, 5)
    codes, scale = quantize_weight(source_layer.weight)
    state = (
        {"weight_codes": codes, "weight_scale": scale, "bias": source_layer.bias.detach().clone()}
        if source == "codes"
        else {"weight": source_layer.weight.detach().clone(), "bias": source_layer.bias.detach().clone()}
    )
    with torch.device("meta"):
        layer = VerticalLayeredLinear.from_float(nn.Linear(6, 5), trainable=form == "float master", active_bits=8)
    layer.bias.requires_grad_(False)
    layer.load_state_dict(state, assign=True)
    assert not any(tensor.is_meta for tensor in (*layer.parameters(), *layer.buffers()))
    assert layer.holds_codes == (form == "codes")
    if form == "codes":
        if source == "codes":
            assert layer.weight_codes is codes and layer.weight_scale is scale
        torch.testing.assert_close(layer.weight_codes, codes, atol=0, rtol=0)
    else:
        assert isinstance(layer.weight, nn.Parameter) and layer.weight.requires_grad
        expected = dequantize_weight(codes, scale, 8) if source == "codes" else source_layer.weight.detach()
        torch.testing.assert_close(layer.weight.detach(), expected, atol=0, rtol=0)
    assert isinstance(layer.bias, nn.Parameter) and not layer.bias.requires_grad
    torch.testing.assert_close(layer.bias.detach(), source_layer.bias.detach(), atol=0, rtol=0)


def test_wrong_codes_are_refused_naming_the_key():
    _, model = tiny_fpn()
    model.to_any_precision(WIDTHS)
    state = model.state_dict()
    key = "decode_head.scale_heads.0.convs.0.conv.weight_codes"
    shape = tuple(state[key].shape)
    state[key] = state[key].float()
    scale_key = key.replace("weight_codes", "weight_scale")
    expected = (
        f"{key}: int8 codes of shape {shape} and {scale_key} of shape {shape[:1]} expected, "
        f"got torch.float32 {shape} and {shape[:1]}"
    )
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        model.load_state_dict(state)


@pytest.mark.parametrize("trainable", [False, True], ids=["codes", "float master"])
def test_a_layers_unexpected_and_missing_keys_are_reported_as_pytorchs_modules_report_them(trainable):
    torch.manual_seed(0)
    float_layer = nn.Linear(3, 2)
    layer = VerticalLayeredLinear.from_float(nn.Linear(3, 2), trainable=trainable, active_bits=8)
    state = layer.state_dict()
    # a key of the layer's own level that is not its own: unexpected, as for nn.Linear
    extra = torch.zeros(1)
    with pytest.raises(RuntimeError, match='Unexpected key\\(s\\) in state_dict: "weight_extra"') as ours:
        layer.load_state_dict({**state, "weight_extra": extra})
    with pytest.raises(RuntimeError) as pytorchs:
        float_layer.load_state_dict({**float_layer.state_dict(), "weight_extra": extra})
    assert str(ours.value).split(":", 1)[1] == str(pytorchs.value).split(":", 1)[1]
    assert layer.load_state_dict({**state, "weight_extra": extra}, strict=False).unexpected_keys == ["weight_extra"]
    # one of the codes / scale pair absent: that one is missing, not both
    for absent in ("weight_scale", "weight_codes"):
        partial_state = {key: value for key, value in state.items() if key != absent}
        assert layer.load_state_dict(partial_state, strict=False).missing_keys == [absent]
    no_weight = {"bias": state["bias"]}
    assert layer.load_state_dict(no_weight, strict=False).missing_keys == ["weight_codes", "weight_scale"]
    no_bias = {key: value for key, value in state.items() if key != "bias"}
    assert layer.load_state_dict(no_bias, strict=False).missing_keys == ["bias"]


def test_to_any_precision_by_default_keeps_widths_8_4_2_and_computes_at_8():
    _, model = tiny_fpn()
    model.to_any_precision()
    assert model.config.weight_bits == [8, 4, 2] and model.config.active_weight_bits == 8
    assert {layer.active_bits for _, layer in model.vertical_layers()} == {8}


def test_one_bit_is_a_width_the_sign_of_each_code():
    layer = VerticalLayeredLinear.from_float(nn.Linear(4, 1), trainable=False, active_bits=1)
    layer.load_state_dict({"weight": torch.tensor([[1.0, -1.0, 0.3, -0.01]]), "bias": torch.zeros(1)})
    # codes [127, -128, 38, -2] >> 7 = [0, -1, 0, -1]; (q1 + 1/2) * 128 s with s = 1 / 127.5
    torch.testing.assert_close(layer.weight, torch.tensor([[0.5, -0.5, 0.5, -0.5]]) * (128 / 127.5))
    # the model takes 1 as a width to keep and to compute with
    _, model = tiny_fpn()
    model.to_any_precision([8, 1], active_bits=1)
    assert model.config.active_weight_bits == 1
    model.set_weight_bits(8).set_weight_bits(1)
    assert model.config.active_weight_bits == 1 and {b.active_bits for _, b in model.vertical_layers()} == {1}


def test_saved_folder_holds_codes_and_reloads_at_every_width_in_a_fresh_process_without_hf_semseg(tmp_path):
    suite, model = tiny_fpn()
    model.to_any_precision(WIDTHS)
    model.save_pretrained(tmp_path / "model")
    with safe_open(tmp_path / "model" / "model.safetensors", "pt") as saved:
        keys = set(saved.keys())
        codes_keys = {key for key in keys if key.endswith(".weight_codes")}
        assert len(codes_keys) == sum(1 for _ in model.vertical_layers())
        assert all(saved.get_tensor(key).dtype == torch.int8 for key in codes_keys)
    assert not {key.removesuffix("_codes") for key in codes_keys} & keys  # no float weight of a quantised layer
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["weight_bits"] == WIDTHS and config["active_weight_bits"] == 8

    pixel_values, _ = suite.make_inputs()
    expected = {}
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        for bits in (8, 4, 2):
            expected[bits] = model.set_weight_bits(bits)(pixel_values).logits
            assert torch.equal(reloaded.set_weight_bits(bits)(pixel_values).logits, expected[bits]), bits
    torch.save({"pixel_values": pixel_values, **{str(k): v for k, v in expected.items()}}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["hf_semseg"] = None
        import torch
        from transformers import AutoModelForSemanticSegmentation
        model = AutoModelForSemanticSegmentation.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        io = torch.load({str(tmp_path / "io.pt")!r})
        diffs = {{}}
        with torch.no_grad():
            for bits in (8, 4, 2):
                logits = model.eval().set_weight_bits(bits)(io["pixel_values"]).logits
                diffs[bits] = (logits - io[str(bits)]).abs().max().item()
        print(json.dumps({{"diffs": diffs, "module": type(model).__module__,
                          "hf_semseg": [m for m, v in sys.modules.items() if m.startswith("hf_semseg") and v]}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"diffs": {"8": 0.0, "4": 0.0, "2": 0.0}, "module": report["module"], "hf_semseg": []}
    assert report["module"].startswith("transformers_modules.")


def test_saved_demo_model_is_under_three_tenths_of_the_float_folder(tmp_path):
    torch.manual_seed(0)
    model = SeMaskSwinForSemanticSegmentation(demo_model_config())
    model.save_pretrained(tmp_path / "float")
    model.to_any_precision(WIDTHS).save_pretrained(tmp_path / "codes")
    ratio = (tmp_path / "codes" / "model.safetensors").stat().st_size / (
        tmp_path / "float" / "model.safetensors"
    ).stat().st_size
    assert ratio <= 0.3, ratio


# -- once QAT ------------------------------------------------------------------------------------------------------
def test_once_qat_step_lowers_every_widths_loss():
    suite = _SeMaskFPNSuite()
    model = suite.make_model(**suite.deterministic_overrides).train()
    plan = prepare_once_qat(model, [2, 8, 4], loss_weights=[1.0, 1.0, 0.5], distillation=0.5)
    assert plan.weight_bits == WIDTHS and plan.loss_weights == [1.0, 0.5, 1.0]
    assert all(not layer.holds_codes for _, layer in model.vertical_layers())
    pixel_values, labels = suite.make_inputs()
    inputs = {"pixel_values": pixel_values, "labels": labels}

    def losses():
        with torch.no_grad():
            return {bits: model.set_weight_bits(bits)(**inputs).loss.item() for bits in WIDTHS}

    before = losses()
    optimizer = torch.optim.AdamW(model.parameters(), lr=suite.learning_rate)
    total, widest = plan.loss(model, model, inputs)
    assert model.config.active_weight_bits == 8 and widest.logits.shape[0] == 2
    assert total.item() > before[8] + 0.5 * before[4] + before[2]  # the distillation terms are added
    total.backward()
    master = model.backbone.encoder.stages[0].blocks[0].mlp.fc1
    assert master.weight.grad is not None and master.weight.grad.abs().sum() > 0
    optimizer.step()
    after = losses()
    assert all(after[bits] < before[bits] for bits in WIDTHS), (before, after)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_once_qat_at_several_widths_under_activation_checkpointing_has_the_gradients_without(use_reentrant):
    """The width is the layers' state, back at the widest before the one backward pass, where checkpointed layers
    recompute their forward: without :class:`RecomputeAtForwardWidth` every narrower width's gradients were wrong
    (0.4-1.3 relative), the losses unchanged. Each checkpointed layer recomputes at its forward's width: the same
    losses and gradients as without checkpointing, reentrant or not, and the model is left at the widest width."""
    suite = _SeMaskFPNSuite()
    pixel_values, labels = suite.make_inputs()
    inputs = {"pixel_values": pixel_values, "labels": labels}
    results = []
    for checkpointing in (True, False):
        model = suite.make_model(**suite.deterministic_overrides).train()
        plan = prepare_once_qat(model, [8, 4, 2])
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": use_reentrant})
            assert model.is_gradient_checkpointing
        total, _ = plan.loss(model, model, inputs)
        total.backward()
        assert model.config.active_weight_bits == 8
        gradients = {
            name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None
        }
        results.append((total.item(), gradients))
    (checkpointed_loss, checkpointed), (loss, expected) = results
    assert checkpointed_loss == loss and checkpointed.keys() == expected.keys()
    master = "backbone.encoder.stages.0.blocks.0.mlp.fc1.weight"  # a quantised layer inside a checkpointed block
    assert master in expected and expected[master].abs().sum() > 0
    for name, gradient in expected.items():
        torch.testing.assert_close(checkpointed[name], gradient, rtol=1e-5, atol=1e-7, msg=name)


def test_a_deep_copy_of_a_checkpointing_model_recomputes_at_its_own_width():
    """The checkpointing function holds the model it sets the width of: a deep copy's layers set the copy's."""
    import copy

    from hf_semseg.models.modeling_any_precision import RecomputeAtForwardWidth

    suite = _SeMaskFPNSuite()
    model = suite.make_model(**suite.deterministic_overrides).train()
    prepare_once_qat(model, [8, 2])
    model.gradient_checkpointing_enable()
    copied = copy.deepcopy(model)
    block = copied.backbone.encoder.stages[0].blocks[0]
    assert isinstance(block._gradient_checkpointing_func, RecomputeAtForwardWidth)
    assert block._gradient_checkpointing_func.model is copied
    assert model.backbone.encoder.stages[0].blocks[0]._gradient_checkpointing_func.model is model


def test_once_qat_options_are_checked():
    _, model = tiny_fpn()
    assert prepare_once_qat(model, None) is None
    for bits, weights, message in (
        ([8, 8], None, "distinct widths"),
        ([9], None, "distinct widths"),
        ([8, 4.5], None, r"--weight_bits 8 4\.5: distinct widths between 1 and 8 expected"),  # a plain ValueError
        ([8, 4], [1.0], "one non-negative weight per width"),
        ([8, 4], [1.0, -1.0], "one non-negative weight per width"),
    ):
        with pytest.raises(RunOptionError, match=message):
            prepare_once_qat(model, bits, weights)
    with pytest.raises(RunOptionError, match="need --weight_bits"):
        prepare_once_qat(model, None, [1.0])
    with pytest.raises(RunOptionError, match="not an hf-semseg model"):
        prepare_once_qat(torch.nn.Linear(2, 2), [8])


def test_once_qat_continues_from_a_saved_codes_folder(tmp_path):
    _, model = tiny_fpn()
    model.to_any_precision(WIDTHS).save_pretrained(tmp_path)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    plan = prepare_once_qat(reloaded, [8, 2])
    assert isinstance(plan, OnceQAT) and reloaded.config.weight_bits == [8, 2]
    for (name, layer), (_, source) in zip(reloaded.vertical_layers(), model.vertical_layers()):
        assert isinstance(layer.weight, torch.nn.Parameter), name
        torch.testing.assert_close(layer.weight, dequantize_weight(source.weight_codes, source.weight_scale, 8))


# -- the common suite with the representation on ------------------------------------------------------------------
class AnyPrecisionSuite:
    """A family's model suite on the model a saved any-precision folder gives: 8-bit codes, computing at 4 bits."""

    def get_config(self):
        config = super().get_config()
        config.weight_bits = WIDTHS
        config.active_weight_bits = 4
        return config

    def test_eager_attention_matches_sdpa(self):
        pytest.skip("the attention implementation is independent of the weights: the family's own suite checks it")

    def test_the_model_is_any_precision(self):
        model = self.make_model()
        assert model.config.active_weight_bits == 4
        layers = dict(model.vertical_layers())
        assert len(layers) > 10 and all(layer.holds_codes and layer.active_bits == 4 for layer in layers.values())


class TestSeMaskFPNAnyPrecision(AnyPrecisionSuite, _SeMaskFPNSuite):
    pass


class TestVWFormerAnyPrecision(AnyPrecisionSuite, _VWFormerSuite):
    pass


class TestPaleAnyPrecision(AnyPrecisionSuite, _PaleSuite):
    pass


class TestSeMaskMask2FormerAnyPrecision(AnyPrecisionSuite, _Mask2FormerSuite):
    pass


# -- what a checkpoint does not fill, and the dtype of a load ------------------------------------------------------
def all_codes_are_finite(model) -> bool:
    return all(
        layer.weight_scale.isfinite().all() and layer.weight_scale.gt(0).all() for _, layer in model.vertical_layers()
    )


def test_layers_a_codes_checkpoint_does_not_fill_are_initialised_then_quantised(tmp_path):
    """An SDN-style neck turned on for an any-precision folder, and a classifier resized by
    ``ignore_mismatched_sizes``: the quantised layers the checkpoint lacks are initialised by the family's rules in
    float, then quantised (before, their codes and scales kept uninitialised memory: NaN logits). The neck's
    ``fuse`` layers stay in float (:data:`DEFAULT_FLOAT_MODULES`), so it starts as the identity."""
    suite, model = tiny_fpn()
    model.eval().to_any_precision(WIDTHS).save_pretrained(tmp_path)
    pixel_values, _ = suite.make_inputs(batch_size=1)
    with torch.no_grad():
        reference = model(pixel_values).logits

    with_neck = AutoModelForSemanticSegmentation.from_pretrained(tmp_path, use_sdn_neck=True).eval()
    guide = with_neck.neck.levels[0].guide_proj
    assert isinstance(guide, VerticalLayeredConv2d) and guide.holds_codes and all_codes_are_finite(with_neck)
    initialised = guide.weight_codes.float()
    assert initialised.abs().max() > 0 and initialised.std() > 0  # initialised by the family's rules, then quantised
    with torch.no_grad():
        logits = with_neck(pixel_values).logits
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5 * reference.abs().max().item())

    resized = AutoModelForSemanticSegmentation.from_pretrained(
        tmp_path,
        id2label={index: f"class {index}" for index in range(6)},
        label2id={f"class {index}": index for index in range(6)},
        weight_bits_float_modules=[],  # the classifier quantised too
        ignore_mismatched_sizes=True,
    ).eval()
    classifier = resized.decode_head.classifier
    assert isinstance(classifier, VerticalLayeredConv2d) and classifier.out_channels == 6
    assert all_codes_are_finite(resized)
    with torch.no_grad():
        assert resized(pixel_values).logits.isfinite().all()


def test_a_codes_folder_loaded_in_bfloat16_computes_in_bfloat16(tmp_path):
    """``from_pretrained(..., dtype=torch.bfloat16)`` keeps the scales in the model's dtype, as ``.to(torch.bfloat16)``
    does (they stayed float32: a float32 weight that ``F.linear`` refused beside the bfloat16 input, from inside
    torch)."""
    suite, model = tiny_fpn()
    model.eval().to_any_precision(WIDTHS).save_pretrained(tmp_path)
    pixel_values, _ = suite.make_inputs(batch_size=1)
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert {layer.weight_scale.dtype for _, layer in loaded.vertical_layers()} == {torch.bfloat16}
    cast = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval().to(torch.bfloat16)
    with torch.no_grad():
        logits = loaded(pixel_values.bfloat16()).logits
        torch.testing.assert_close(logits, cast(pixel_values.bfloat16()).logits, atol=0, rtol=0)
        reference = model(pixel_values).logits
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_a_float_modules_pattern_that_is_not_a_regular_expression_is_refused_by_the_config():
    """It failed in ``re`` when the model was built, naming no field."""
    from hf_semseg import SeMaskSwinConfig

    from model_suite import tiny_semask_swin_kwargs

    with pytest.raises(Exception, match=r"weight_bits_float_modules: '\(bad' is not a regular expression"):
        SeMaskSwinConfig(**tiny_semask_swin_kwargs(weight_bits=[8, 4], weight_bits_float_modules=["(bad"]))


@pytest.mark.parametrize(
    "weight_bits, message",
    [([8, 8, 4], r"^weight_bits must list distinct widths, got \[8, 8, 4\]$"), (4, r"^weight_bits must be a list")],
)
def test_to_any_precision_refuses_what_the_config_would_refuse_on_loading(weight_bits, message, tmp_path):
    """Repeated widths were accepted and saved, and the folder then failed to load (the config's validation); a
    single int ended in "'int' object is not iterable"."""
    _, model = tiny_fpn()
    with pytest.raises(ValueError, match=message):
        model.to_any_precision(weight_bits)
    assert model.config.weight_bits is None and not any(True for _ in model.vertical_layers())


def test_an_sdn_neck_turned_on_for_an_any_precision_folder_starts_as_the_identity(tmp_path):
    """Its ``fuse`` layers ([I | 0] at initialisation) were quantised: the mid-rise grid has no zero, so every width
    added half a step of the diffusion channels (logits off by 0.003 at 8 bits, 0.34 at 2 bits); they stay in float
    by default."""
    _, model = tiny_fpn()
    model.to_any_precision(WIDTHS).save_pretrained(tmp_path)
    plain = SeMaskSwinForSemanticSegmentation.from_pretrained(tmp_path).eval()
    neck = SeMaskSwinForSemanticSegmentation.from_pretrained(tmp_path, use_sdn_neck=True).eval()
    assert type(neck.neck.levels[0].fuse) is torch.nn.Conv2d
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for bits in (8, 4, 2):
            expected = plain.set_weight_bits(bits)(pixel_values).logits
            actual = neck.set_weight_bits(bits)(pixel_values).logits
            torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
