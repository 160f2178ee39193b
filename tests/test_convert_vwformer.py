"""VWFormer conversion: the original code's outputs on the fixtures, every released key layout, and clear errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from script_helpers import key_list_state_dict, run_script

import hf_semseg
from hf_semseg.conversion.common import CheckpointError, parse_converter_args
from hf_semseg.conversion.run_config import ConfigFileError
from hf_semseg.conversion.vwformer import (
    CONVERTER,
    convert_checkpoint,
    convert_state_dict,
    infer_config,
    infer_config_and_variant,
    unfold_to_concat_order,
)
from hf_semseg.models.modeling_vwformer import window_partition

from conftest import FIXTURES, REPO_ROOT, fixture_dir


def load_fixture(folder):
    model, meta = convert_checkpoint(folder / "original_checkpoint.pth")
    inputs = load_file(folder / "inputs.safetensors")["pixel_values"]
    return model, meta, inputs, load_file(folder / "outputs.safetensors")


def head_intermediates(model, features):
    """The head's stages, named as in the fixtures. The split fusions (``splits_over_inputs``) skip the fusion
    modules' forwards, whose outputs the original saves: they are turned off here (the test of the split itself is
    in ``test_modeling_vwformer.py``)."""
    from hf_semseg.models.modeling_vwformer import VWFormerConvModule

    head = model.decode_head
    captured = {}
    modules = {
        "head.linear_fuse": head.linear_fuse,
        "head.short_path": head.multi_scale.short_path,
        "head.cat": head.multi_scale.fuse,
        "head.low_level_fuse": head.low_level_fuse,
    }
    if head.multi_scale.image_pool is not None:
        modules["head.image_pool_1x1"] = head.multi_scale.image_pool
    for index, attention in enumerate(head.multi_scale.attentions):
        modules[f"head.ds.{index}"] = attention.context_embedding
        modules[f"head.attn.{index}"] = attention
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
        for name, module in modules.items()
    ]
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(VWFormerConvModule, "splits_over_inputs", lambda self: False)
        captured["logits"] = head(features)
    for handle in handles:
        handle.remove()
    return captured


@pytest.mark.parametrize(
    "name, head_type, logits_atol", [("vwformer_tiny", "vw", 2e-5), ("vwformer_city_tiny", "vw_city", 1e-3)]
)
def test_converted_fixture_reproduces_the_original(name, head_type, logits_atol):
    model, _, pixel_values, expected = load_fixture(fixture_dir(name))
    assert model.config.head_type == head_type
    with torch.no_grad():
        features, _, _ = model.backbone_features(pixel_values)
        logits = model(pixel_values).logits
    for index, feature in enumerate(features):
        torch.testing.assert_close(feature, expected[f"backbone.out{index}"], atol=1e-4, rtol=0)
    # end to end (ConvNeXt's backbone differs by up to 5e-5 in float32, amplified to ~1.4e-4 in the logits)
    torch.testing.assert_close(logits, expected["logits"], atol=logits_atol, rtol=0)
    assert torch.equal(logits.argmax(1), expected["logits"].argmax(1))

    # the head alone, on the original's backbone outputs: every stage equals the original's up to float32 rounding
    # (measured: relative to the stage's largest value at most 1.2e-5, e.g. 1.0e-3 on values up to 84)
    original_features = tuple(expected[f"backbone.out{index}"] for index in range(4))
    stages = head_intermediates(model, original_features)
    assert set(stages) == {key for key in expected if key.startswith("head.")} | {"logits"}
    for key, value in stages.items():
        scale = max(1.0, expected[key].abs().max().item())
        torch.testing.assert_close(value, expected[key], atol=2e-5 * scale, rtol=0, msg=key)


def test_head_type_heads_and_short_cut_come_from_the_config_text():
    model, meta, *_ = load_fixture(fixture_dir("vwformer_tiny"))
    assert (model.config.num_attention_heads, model.config.use_short_cut) == (2, True)
    assert model.config.enlarging_ratios == [2, 4, 8]
    city, *_ = load_fixture(fixture_dir("vwformer_city_tiny"))
    assert (city.config.num_attention_heads, city.config.use_short_cut, city.config.num_labels) == (4, False, 19)
    assert type(city.backbone).__name__ == "ConvNextBackbone"


def test_patch_merging_channel_reorder_matches_the_unfold_order():
    # nn.Unfold(2, stride 2) on a (1, C, 2, 2) map lists channel-major; HF Swin concatenates positions first
    channels = 3
    patch = torch.arange(channels * 4).float().view(1, channels, 2, 2)
    unfold_order = torch.nn.functional.unfold(patch, 2, stride=2)[0, :, 0]  # c*4 + (row*2 + col)
    x00, x10, x01, x11 = patch[0, :, 0, 0], patch[0, :, 1, 0], patch[0, :, 0, 1], patch[0, :, 1, 1]
    concat_order = torch.cat([x00, x10, x01, x11])
    weight = torch.eye(4 * channels)[:, None].squeeze(1)  # identity reduction: output i reads unfold input i
    reordered = unfold_to_concat_order(weight)
    torch.testing.assert_close(reordered @ concat_order, weight @ unfold_order)


KEY_LISTS = sorted(path.stem for path in (FIXTURES / "vwformer_keys").glob("vw_*.json")) if FIXTURES.is_dir() else []


meta_state_dict = key_list_state_dict


def variant_of(key_list: str) -> str | None:
    """``vw_convnext_small_ade20k_512`` -> ``vwformer-convnext-small-ade20k`` (None for the constructed MiT lists)."""
    _, backbone, size, dataset, *_ = key_list.split("_")
    return None if backbone == "mit" else f"vwformer-{backbone}-{size}-{dataset}"


@pytest.mark.parametrize("key_list", KEY_LISTS)
def test_every_released_key_layout_converts_with_the_original_parameter_count(key_list):
    folder = fixture_dir("vwformer_keys")
    summary = json.loads((folder / "_summary.json").read_text())[key_list]
    state_dict = meta_state_dict(folder / f"{key_list}.json")
    variant = variant_of(key_list)
    # the MiT lists are not released models: their head settings come as config text, as a training run writes it
    text = (
        "model = dict(backbone=dict(type='MixVisionTransformer', num_heads=[1, 2, 5, 8]), "
        "decode_head=dict(type='VWHead', short_cut=True, nheads=1))"
    )
    meta = {} if variant else {"config": text}
    config = infer_config(state_dict, meta, variant)
    converted = convert_state_dict(state_dict)
    with torch.device("meta"):
        model = hf_semseg.VWFormerForSemanticSegmentation(config)
    model_state = model.state_dict()
    assert set(converted) == set(model_state)
    assert all(tuple(converted[key].shape) == tuple(model_state[key].shape) for key in converted)
    assert sum(p.numel() for p in model.parameters()) == summary["params_total"]
    head = summary["head"]
    assert config.head_type == ("vw" if head["type"] == "VWHead" else "vw_city")
    assert (config.num_attention_heads, config.use_short_cut, config.num_labels) == (
        head["nheads"],
        head["short_cut"],
        head["num_classes"],
    )
    if variant:  # the registry builds the same architecture
        with torch.device("meta"):
            registered = hf_semseg.VWFormerForSemanticSegmentation(hf_semseg.variant_config(variant))
        registered_state = registered.state_dict()
        assert {key: tuple(value.shape) for key, value in registered_state.items()} == {
            key: tuple(value.shape) for key, value in model_state.items()
        }
        assert registered.config.to_dict() | {"_name_or_path": ""} == model.config.to_dict() | {
            "_name_or_path": ""
        } or (
            registered.config.num_attention_heads,
            registered.config.use_short_cut,
            registered.config.head_type,
        ) == (config.num_attention_heads, config.use_short_cut, config.head_type)


def test_released_checkpoint_without_config_text_takes_the_matching_variant():
    state_dict = meta_state_dict(fixture_dir("vwformer_keys") / "vw_swin_large_ade20k_640.json")
    config, variant = infer_config_and_variant(state_dict, {})  # the released key layout: its heads and short-cut
    assert variant == "vwformer-swin-large-ade20k" and (config.num_attention_heads, config.use_short_cut) == (1, False)
    config = infer_config(state_dict, {}, "vwformer-swin-large-ade20k")
    assert (config.num_attention_heads, config.use_short_cut) == (1, False)
    with pytest.raises(CheckpointError, match="not a released vwformer variant"):
        infer_config(state_dict, {}, "vwformer-swin-huge-ade20k")
    # one tensor of another shape: no released layout, so the values the weights do not hold must be given
    resized = dict(state_dict, **{"decode_head.conv_seg.weight": torch.empty(7, 512, 1, 1, device="meta")})
    resized["decode_head.conv_seg.bias"] = torch.empty(7, device="meta")
    with pytest.raises(CheckpointError, match=r"attention heads \(model\.decode_head\.nheads\); .*short-cut"):
        infer_config(state_dict | resized, {})


def test_a_named_variant_must_have_the_checkpoint_weights():
    state_dict = meta_state_dict(fixture_dir("vwformer_keys") / "vw_swin_large_ade20k_640.json")
    with pytest.raises(CheckpointError, match="--variant vwformer-swin-base-ade20k: .*vwformer-swin-large-ade20k's"):
        infer_config(state_dict, {}, "vwformer-swin-base-ade20k")
    config, variant = infer_config_and_variant(state_dict, {}, "vwformer-swin-large-ade20k")
    assert variant == "vwformer-swin-large-ade20k"


def test_config_text_heads_decide_whether_the_checkpoint_is_the_released_variant():
    state_dict = meta_state_dict(fixture_dir("vwformer_keys") / "vw_swin_large_ade20k_640.json")
    released = {"config": "model = dict(decode_head=dict(type='VWHead', short_cut=False, nheads=1))"}
    assert infer_config_and_variant(state_dict, released)[1] == "vwformer-swin-large-ade20k"
    other_heads = {"config": "model = dict(decode_head=dict(type='VWHead', short_cut=False, nheads=2))"}
    config, variant = infer_config_and_variant(state_dict, other_heads)
    assert variant is None and config.num_attention_heads == 2


@pytest.mark.parametrize(
    ("norm_cfg", "expected_eps"),
    [
        (None, 1e-6),
        ("dict(type='LN', eps=1e-6)", 1e-6),
        ("dict(type='LN', eps=0.001)", 1e-3),
        ("dict(type='LN')", 1e-5),
    ],
)
def test_mit_layer_norm_eps_comes_from_the_run_config(norm_cfg, expected_eps):
    # MixVisionTransformer's default norm_cfg is dict(type='LN', eps=1e-6); mmcv's LN without eps is nn.LayerNorm's 1e-5
    state_dict = meta_state_dict(fixture_dir("vwformer_keys") / "vw_mit_b0_ade20k_CONSTRUCTED_not_released.json")
    norm = "" if norm_cfg is None else f", norm_cfg={norm_cfg}"
    text = (
        f"model = dict(backbone=dict(type='MixVisionTransformer', num_heads=[1, 2, 5, 8]{norm}), "
        "decode_head=dict(type='VWHead', short_cut=True, nheads=1))"
    )
    config = infer_config(state_dict, {"config": text})
    assert config.backbone_config.layer_norm_eps == expected_eps


def test_mit_backbone_normalised_otherwise_is_refused():
    state_dict = meta_state_dict(fixture_dir("vwformer_keys") / "vw_mit_b0_ade20k_CONSTRUCTED_not_released.json")
    text = (
        "model = dict(backbone=dict(type='MixVisionTransformer', num_heads=[1, 2, 5, 8], norm_cfg=dict(type='BN')), "
        "decode_head=dict(type='VWHead', short_cut=True, nheads=1))"
    )
    with pytest.raises(ConfigFileError, match=r"model\.backbone\.norm_cfg = \{'type': 'BN'\}.*'LN', a positive eps"):
        infer_config(state_dict, {"config": text})


def test_swin_options_transformers_swin_cannot_compute_are_named():
    checkpoint = torch.load(fixture_dir("vwformer_tiny") / "original_checkpoint.pth", weights_only=True)
    state_dict, meta = checkpoint["state_dict"], checkpoint["meta"]
    without_norm = {key: value for key, value in state_dict.items() if not key.startswith("backbone.patch_embed.norm.")}
    with pytest.raises(CheckpointError, match=r"no backbone\.patch_embed\.norm\.\* keys: .*\(patch_norm=False\)"):
        infer_config(without_norm, meta)
    with_ape = dict(state_dict, **{"backbone.absolute_pos_embed": torch.zeros(1, 4096, 16)})
    with pytest.raises(CheckpointError, match=r"backbone\.absolute_pos_embed: .*\(use_abs_pos_embed=True\)"):
        infer_config(with_ape, meta)


def with_auxiliary_head(state_dict: dict, channels: int = 8, kernel: int = 3, in_channels: int = 128) -> dict:
    """``state_dict`` with an mmseg FCNHead auxiliary head (one 3x3 ConvModule with BN, conv_seg) on stage 3."""
    generator = torch.Generator().manual_seed(0)
    num_labels = state_dict["decode_head.conv_seg.weight"].shape[0]
    head = {
        "auxiliary_head.convs.0.conv.weight": torch.randn(channels, in_channels, kernel, kernel, generator=generator),
        "auxiliary_head.convs.0.bn.weight": torch.rand(channels, generator=generator) + 0.5,
        "auxiliary_head.convs.0.bn.bias": torch.randn(channels, generator=generator) * 0.1,
        "auxiliary_head.convs.0.bn.running_mean": torch.randn(channels, generator=generator) * 0.1,
        "auxiliary_head.convs.0.bn.running_var": torch.rand(channels, generator=generator) + 0.5,
        "auxiliary_head.convs.0.bn.num_batches_tracked": torch.tensor(1),
        "auxiliary_head.conv_seg.weight": torch.randn(num_labels, channels, 1, 1, generator=generator),
        "auxiliary_head.conv_seg.bias": torch.randn(num_labels, generator=generator),
    }
    return {**state_dict, **head}


def with_head_config(text: str, head: str) -> str:
    """The mmseg config ``text`` with ``head`` (``auxiliary_head=dict(...),``) among the model's settings."""
    assert text.count("    decode_head=dict(") == 1
    return text.replace("    decode_head=dict(", f"    {head}\n    decode_head=dict(")


def test_an_fcn_auxiliary_head_converts_onto_the_models_auxiliary_head():
    # no release has one; the model's (transformers' UperNetFCNHead on stage 3) computes mmseg's FCNHead
    checkpoint = torch.load(fixture_dir("vwformer_tiny") / "original_checkpoint.pth", weights_only=True)
    state_dict, meta = with_auxiliary_head(checkpoint["state_dict"]), checkpoint["meta"]
    head = (
        "auxiliary_head=dict(type='FCNHead', in_channels=128, in_index=2, channels=8, num_convs=1, concat_input=False, "
        "num_classes=5, norm_cfg=dict(type='SyncBN', requires_grad=True), align_corners=False, "
        "loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),"
    )
    config = infer_config(state_dict, {**meta, "config": with_head_config(meta["config"], head)})
    assert (config.use_auxiliary_head, config.auxiliary_channels, config.auxiliary_num_convs) == (True, 8, 1)
    assert (config.auxiliary_concat_input, config.auxiliary_loss_weight) == (False, 0.4)
    model = hf_semseg.VWFormerForSemanticSegmentation(config).eval()
    model.load_state_dict(convert_state_dict(state_dict))
    pixel_values = load_file(fixture_dir("vwformer_tiny") / "inputs.safetensors")["pixel_values"]
    with torch.no_grad():
        output = model(pixel_values, output_hidden_states=True)
        stage3 = model.backbone(pixel_values).feature_maps[2]
        hidden = F.conv2d(stage3, state_dict["auxiliary_head.convs.0.conv.weight"], padding=1)
        bn = {name: state_dict[f"auxiliary_head.convs.0.bn.{name}"] for name in ("weight", "bias")}
        mean, var = (state_dict[f"auxiliary_head.convs.0.bn.running_{name}"] for name in ("mean", "var"))
        hidden = F.relu(F.batch_norm(hidden, mean, var, bn["weight"], bn["bias"], eps=1e-5))
        expected = F.conv2d(
            hidden, state_dict["auxiliary_head.conv_seg.weight"], state_dict["auxiliary_head.conv_seg.bias"]
        )
    torch.testing.assert_close(output.auxiliary_logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (dict(kernel=1), r"auxiliary_head\.convs\.0\.conv\.weight: shape \(8, 128, 1, 1\), expected \(8, 128, 3, 3\)"),
        (
            dict(in_channels=64),
            r"auxiliary_head\.convs\.0\.conv\.weight: 64 input channels, but .* third backbone stage",
        ),
    ],
)
def test_an_auxiliary_head_the_model_cannot_take_is_named(change, expected):
    checkpoint = torch.load(fixture_dir("vwformer_tiny") / "original_checkpoint.pth", weights_only=True)
    with pytest.raises(CheckpointError, match=expected):
        infer_config(with_auxiliary_head(checkpoint["state_dict"], **change), checkpoint["meta"])


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("in_index=3", r"model\.auxiliary_head\.in_index = 3, but the checkpoint's weights have 2"),
        ("in_index=2, dilation=2", r"model\.auxiliary_head\.dilation = 2, but the converted model convolves without"),
        ("in_index=2, concat_input=True", r"model\.auxiliary_head\.concat_input = True, but the checkpoint's weights"),
    ],
)
def test_an_auxiliary_head_config_contradicting_its_weights_is_refused(setting, expected):
    checkpoint = torch.load(fixture_dir("vwformer_tiny") / "original_checkpoint.pth", weights_only=True)
    meta = checkpoint["meta"]
    text = with_head_config(meta["config"], f"auxiliary_head=dict(type='FCNHead', channels=8, num_convs=1, {setting}),")
    with pytest.raises(ConfigFileError, match=expected):
        infer_config(with_auxiliary_head(checkpoint["state_dict"]), {**meta, "config": text})


def test_variant_choices_of_the_command_line_are_the_registry():
    args = parse_converter_args(CONVERTER, "x", ["--checkpoint_path", "a", "--output_dir", "b"])
    assert args.variant is None
    with pytest.raises(SystemExit):
        parse_converter_args(CONVERTER, "x", ["--checkpoint_path", "a", "--output_dir", "b", "--variant", "semask"])
    args = parse_converter_args(
        CONVERTER,
        "x",
        ["--checkpoint_path", "a", "--output_dir", "b", "--variant", "vwformer-convnext-xlarge-cityscapes"],
    )
    assert args.variant in hf_semseg.list_variants("vwformer")


@pytest.fixture
def tiny_checkpoint():
    return torch.load(fixture_dir("vwformer_tiny") / "original_checkpoint.pth", weights_only=True)


def save(tmp_path, checkpoint, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


def test_errors_name_the_problem(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match="no such file"):
        convert_checkpoint(tmp_path / "missing.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((fixture_dir("vwformer_tiny") / "original_checkpoint.pth").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        convert_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="detectron2 checkpoint.*VWFormer"):
        convert_checkpoint(save(tmp_path, {"model": {"a": torch.zeros(1)}}))

    state_dict = dict(tiny_checkpoint["state_dict"])
    extra = dict(state_dict, **{"decode_head.mystery.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="decode_head.mystery.weight"):
        convert_checkpoint(save(tmp_path, {"meta": tiny_checkpoint["meta"], "state_dict": extra}))
    missing = {key: value for key, value in state_dict.items() if key != "decode_head.cat.conv.weight"}
    with pytest.raises(CheckpointError, match="multi_scale.fuse.conv.weight"):
        convert_checkpoint(save(tmp_path, {"meta": tiny_checkpoint["meta"], "state_dict": missing}))
    auxiliary = dict(state_dict, **{"auxiliary_head.conv_seg.weight": torch.zeros(5, 8, 1, 1)})
    with pytest.raises(CheckpointError, match="auxiliary head"):
        convert_checkpoint(save(tmp_path, {"meta": tiny_checkpoint["meta"], "state_dict": auxiliary}))
    index_key = "backbone.stages.0.blocks.0.attn.w_msa.relative_position_index"
    corrupted = dict(state_dict, **{index_key: torch.zeros_like(state_dict[index_key])})
    with pytest.raises(CheckpointError, match="relative position index"):
        convert_checkpoint(save(tmp_path, {"meta": tiny_checkpoint["meta"], "state_dict": corrupted}))
    semask_like = {"backbone.patch_embed.proj.weight": torch.zeros(96, 3, 4, 4)}
    with pytest.raises(CheckpointError, match="older .*layout"):
        convert_checkpoint(save(tmp_path, {"state_dict": semask_like}))
    no_head = {key: value for key, value in state_dict.items() if key.startswith("backbone.")}
    with pytest.raises(CheckpointError, match="not a VWFormer decode head"):
        convert_checkpoint(save(tmp_path, {"meta": tiny_checkpoint["meta"], "state_dict": no_head}))


def test_cli_converts_and_the_folder_loads_in_a_fresh_process(tmp_path):
    checkpoint = fixture_dir("vwformer_tiny") / "original_checkpoint.pth"
    output_dir = tmp_path / "converted"
    script = REPO_ROOT / "conversion" / "convert_vwformer_to_hf.py"
    result = run_script(script, "--checkpoint_path", str(checkpoint), "--output_dir", str(output_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "vw head" in result.stdout and "no released variant has these weights" in result.stdout
    card = (output_dir / "README.md").read_text()
    assert "$" not in card.split("```")[0] and "VWFormer" in card

    inputs = load_file(fixture_dir("vwformer_tiny") / "inputs.safetensors")["pixel_values"]
    torch.save(inputs, tmp_path / "inputs.pt")
    loader = (
        "import sys, torch\n"
        "sys.modules['hf_semseg'] = None\n"
        "from transformers import AutoModelForSemanticSegmentation\n"
        f"model = AutoModelForSemanticSegmentation.from_pretrained({str(output_dir)!r}, trust_remote_code=True).eval()\n"
        f"x = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(model(x).logits, {str(tmp_path / 'logits.pt')!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", loader], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = load_file(fixture_dir("vwformer_tiny") / "outputs.safetensors")["logits"]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=2e-5, rtol=0)


def test_cli_reports_errors_without_a_traceback(tmp_path):
    script = REPO_ROOT / "conversion" / "convert_vwformer_to_hf.py"
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    result = run_script(script, "--checkpoint_path", str(bad), "--output_dir", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 1
    assert "bad.pth" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# test pre-processing: keep-ratio resize, then resize up to a multiple of 64
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_variant_processor_resizes_to_a_multiple_of_64_in_two_steps(backend):
    processor = hf_semseg.variant_image_processor("vwformer-swin-base-ade20k", backend=backend)
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    pixel_values = processor(image, return_tensors="pt").pixel_values
    # mmcv imrescale(500x375, (2560, 640)): factor 640/375 -> 640 x 853; ResizeToMultiple(64): -> 640 x 896
    assert pixel_values.shape == (1, 3, 640, 896)
    assert processor.get_output_size(375, 500) == (640, 896)
    # the two steps of the original (each on the uint8 image) differ from one direct resize
    direct = hf_semseg.KeepRatioImageProcessor(size={"height": 640, "width": 896})(image, return_tensors="pt")
    assert not torch.allclose(pixel_values, direct.pixel_values)
    two_steps = hf_semseg.KeepRatioImageProcessor(size={"height": 640, "width": 896})(
        hf_semseg.KeepRatioImageProcessor(
            size={"longest_edge": 2560, "shortest_edge": 640}, do_rescale=False, do_normalize=False
        )(image, return_tensors="pt")
        .pixel_values[0]
        .round()
        .to(torch.uint8),
        return_tensors="pt",
    )
    torch.testing.assert_close(pixel_values, two_steps.pixel_values, atol=1e-5, rtol=0)


def test_size_divisor_keeps_labels_aligned():
    processor = hf_semseg.KeepRatioImageProcessor(size={"longest_edge": 100, "shortest_edge": 70}, size_divisor=32)
    image = np.zeros((70, 90, 3), dtype=np.uint8)
    labels = np.arange(70 * 90).reshape(70, 90) % 5
    output = processor(image, segmentation_maps=labels, return_tensors="pt")
    assert output.pixel_values.shape[-2:] == output.labels.shape[-2:] == (96, 96)
    assert set(output.labels.unique().tolist()) <= {0, 1, 2, 3, 4}
    with pytest.raises(ValueError, match="size_divisor"):
        hf_semseg.KeepRatioImageProcessor(size_divisor=0)(image)


def test_window_partition_is_used_on_channels_last_views():
    # the head feeds channels-last views of NCHW maps: partitioning must not depend on the memory layout
    x = torch.randn(1, 8, 16, 16)
    a = window_partition(x.permute(0, 2, 3, 1), 8)
    b = window_partition(x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1), 8)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# the run's config file decides the test pre-processing, over a released variant's
# ---------------------------------------------------------------------------------------------------------------

#: an mmseg config of a VWFormer ConvNeXt-T ADE20K run (the released weights' settings) whose test pipeline has no
#: ResizeToMultiple step (the released run's has ResizeToMultiple(size_divisor=64))
RUN_CONFIG = """
model = dict(backbone=dict(type='mmcls.ConvNeXt'),
             decode_head=dict(type='VWHead', num_classes=150, channels=512, nheads=1, short_cut=True))
data = dict(test=dict(type='ADE20KDataset', pipeline=[
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(2048, 512), flip=False, transforms=[
        dict(type='Resize', keep_ratio=True),
        dict(type='Normalize', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True),
        dict(type='ImageToTensor', keys=['img']), dict(type='Collect', keys=['img'])])]))
"""


def convert_with_config_file(tmp_path, text: str, key_list: str = "vw_convnext_tiny_ade20k_512"):
    """A meta-device conversion of the released ``key_list`` layout with the mmseg config ``text`` as
    ``--config_file``: ``(conversion, config file)``."""
    from hf_semseg.conversion.common import Conversion
    from hf_semseg.conversion.run_config import mmseg_pipeline, mmseg_run_configs
    from hf_semseg.conversion.vwformer import infer_config_and_settings
    from hf_semseg.models.modeling_vwformer import VWFormerForSemanticSegmentation

    config_file = tmp_path / "run.py"
    config_file.write_text(text)
    run_configs = mmseg_run_configs(config_file, {})
    state_dict = meta_state_dict(fixture_dir("vwformer_keys") / f"{key_list}.json")
    config, settings = infer_config_and_settings(state_dict, {}, run_configs=run_configs)
    with torch.device("meta"):
        model = VWFormerForSemanticSegmentation(config)
    conversion = Conversion(
        tmp_path / "ckpt.pth", model, settings.variant, settings=settings, pipeline=mmseg_pipeline(run_configs)
    )
    return conversion, config_file


def test_a_config_files_test_pipeline_is_the_runs_own(tmp_path):
    """A step the config's test pipeline lacks did not happen in the run: no ResizeToMultiple is no size_divisor,
    not the matched released variant's 64; and the summary says where each value came from."""
    from hf_semseg.conversion.common import build_image_processor, describe_pipeline

    conversion, config_file = convert_with_config_file(tmp_path, RUN_CONFIG)
    assert conversion.variant == "vwformer-convnext-tiny-ade20k"  # the weights are the released ones
    processor = build_image_processor(conversion)
    assert processor.size_divisor is None and processor.do_reduce_labels  # ADE20KDataset reduces, as the variant
    assert dict(processor.size) == {"longest_edge": 2048, "shortest_edge": 512}
    assert describe_pipeline(conversion) == (
        f"test pre-processing: test_scale, size_divisor, reduce_labels, image_mean, image_std from --config_file "
        f"{config_file}"
    )
    # with the step, its value
    with_step = RUN_CONFIG.replace(
        "dict(type='Resize', keep_ratio=True),", "dict(type='ResizeToMultiple', size_divisor=32),"
    )
    assert build_image_processor(convert_with_config_file(tmp_path, with_step)[0]).size_divisor == 32
    # a pipeline without a test scale is refused, not completed from the variant
    without_scale = RUN_CONFIG.replace("img_scale=(2048, 512), ", "")
    with pytest.raises(ConfigFileError, match=r"run\.py: test pipeline: no MultiScaleFlipAug img_scale, expected"):
        convert_with_config_file(tmp_path, without_scale)


def test_a_config_files_dataset_decides_the_label_reduction_over_the_variant(tmp_path):
    """The dataset class the config tests on decides ``reduce_labels`` where ``reduce_zero_label`` is not set (mmseg's
    own default for the class), never the matched ADE20K variant's True; a dataset class of unknown behaviour leaves it
    NOT GIVEN, and says so."""
    from hf_semseg.conversion.common import build_image_processor, describe_pipeline

    coco = RUN_CONFIG.replace("type='ADE20KDataset'", "type='COCOStuffDataset'")  # CustomDataset's default: False
    conversion, config_file = convert_with_config_file(tmp_path, coco)
    assert conversion.variant == "vwformer-convnext-tiny-ade20k"
    assert not build_image_processor(conversion).do_reduce_labels
    assert f"reduce_labels, image_mean, image_std from --config_file {config_file}" in describe_pipeline(conversion)
    own = RUN_CONFIG.replace("type='ADE20KDataset'", "type='MyDataset'")
    conversion, config_file = convert_with_config_file(tmp_path, own)
    assert not build_image_processor(conversion).do_reduce_labels  # the processor's default, not the variant's True
    assert describe_pipeline(conversion).endswith(
        f"; reduce_labels NOT GIVEN (--config_file {config_file} does not say; the image processor's defaults)"
    )


def test_a_config_file_of_another_dataset_is_refused_naming_both_class_counts(tmp_path):
    """The released ``vw_convnext_small_fp16_512x512_160k_ade20k.py`` is a copy of the Cityscapes config (its test
    dataset CityscapesDataset, 19 classes); with the 150-class ADE20K weights it is not the run's config. A decode head
    ``num_classes`` that disagrees with the weights is refused as well."""
    cityscapes = RUN_CONFIG.replace("type='ADE20KDataset'", "type='CityscapesDataset'")
    with pytest.raises(
        ConfigFileError,
        match=r"run\.py: the test dataset CityscapesDataset has 19 classes, but the checkpoint's weights have 150 "
        r"\(decode_head\.conv_seg\.weight\)",
    ):
        convert_with_config_file(tmp_path, cityscapes)
    # a run on its own classes of the dataset names them: not refused
    subset = cityscapes.replace("type='CityscapesDataset',", "type='CityscapesDataset', classes=['a'] * 150,")
    assert not convert_with_config_file(tmp_path, subset)[0].pipeline["reduce_labels"]
    head = RUN_CONFIG.replace("num_classes=150", "num_classes=19")
    with pytest.raises(
        ConfigFileError, match=r"model\.decode_head\.num_classes = 19, but the checkpoint's weights have 150"
    ):
        convert_with_config_file(tmp_path, head)
