import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from script_helpers import key_list_state_dict, run_script
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import hf_semseg  # noqa: F401  (registers the Auto classes)
from hf_semseg.conversion import semask_fpn
from hf_semseg.conversion.common import CheckpointError, Conversion, build_image_processor, check_against_model
from hf_semseg.conversion.model_card import semask_fpn_card_fields
from hf_semseg.conversion.run_config import ConfigFileError, mmseg_pipeline, mmseg_run_configs
from hf_semseg.conversion.semask_fpn import (
    convert_checkpoint,
    convert_state_dict,
    infer_config,
    infer_config_and_variant,
    load_original_checkpoint,
)
from hf_semseg.models.modeling_semask_swin import SeMaskSwinForSemanticSegmentation

from conftest import REPO_ROOT, fixture_dir


SCRIPT = REPO_ROOT / "conversion" / "convert_semask_fpn_to_hf.py"

# the 12 released SeMask-FPN key lists: every size on ADE20K, Cityscapes and COCO-Stuff-10k
KEY_LISTS = [
    f"fpn_{dataset}_{size}"
    for dataset in ("ade20k", "cityscapes", "coco10k")
    for size in ("tiny", "small", "base", "large")
]


def released_attention_pattern(key_list: str) -> str:
    """Per stage, W(indow) or G(lobal) semantic attention in the released configs: global in stages 3-4 except for
    SeMask-B (embed 128) and every Cityscapes model (19 classes)."""
    _, dataset, size = key_list.split("_")
    return "WWWW" if dataset == "cityscapes" or size == "base" else "WWGG"


@pytest.fixture(scope="module")
def tiny_fixture():
    folder = fixture_dir("semask_fpn_tiny")
    model, meta = convert_checkpoint(folder / "original_checkpoint.pth")
    return folder, model, meta


def test_converted_tiny_fixture_equals_the_original(tiny_fixture):
    folder, model, _ = tiny_fixture
    inputs = load_file(folder / "inputs.safetensors")
    expected = load_file(folder / "outputs.safetensors")
    with torch.no_grad():
        output = model(inputs["pixel_values"], output_hidden_states=True, output_semantic_priors=True)
    differences = {"logits": (output.logits - expected["logits"]).abs().max().item()}
    differences["semantic_logits"] = (output.semantic_logits - expected["semantic_logits"]).abs().max().item()
    with torch.no_grad():
        feature_maps = model.backbone(inputs["pixel_values"]).feature_maps  # the normalised stage outputs
    for i in range(4):
        differences[f"hidden_state_{i}"] = (feature_maps[i] - expected[f"hidden_state_{i}"]).abs().max().item()
        differences[f"semantic_prior_{i}"] = (
            (output.semantic_priors[i] - expected[f"semantic_prior_{i}"]).abs().max().item()
        )
    assert max(differences.values()) < 1e-4, differences
    upsampled = torch.nn.functional.interpolate(output.logits, size=(224, 224), mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsampled, expected["upsampled_logits"], atol=1e-4, rtol=0)


def test_converted_tiny_fixture_loss_equals_the_original(tiny_fixture):
    folder, model, _ = tiny_fixture
    inputs = load_file(folder / "inputs.safetensors")
    expected = load_file(folder / "outputs.safetensors")
    with torch.no_grad():
        loss = model(inputs["pixel_values"], labels=inputs["labels"][:, 0]).loss
    torch.testing.assert_close(loss, (expected["loss_ce"] + expected["loss_cate"])[0], atol=1e-5, rtol=0)


def test_inferred_config_of_tiny_fixture(tiny_fixture):
    folder, model, meta = tiny_fixture
    original = json.loads((folder / "config.json").read_text())
    backbone = original["mmseg_config"]["backbone"]
    config = model.config
    assert config.embed_dim == backbone["embed_dim"]
    assert config.depths == backbone["depths"]
    assert config.num_heads == backbone["num_heads"]
    assert config.window_size == backbone["window_size"]
    assert config.semantic_window_size == backbone["sem_window_size"]
    assert config.num_labels == backbone["num_cls"]
    assert config.decoder_hidden_size == original["mmseg_config"]["decode_head"]["channels"]
    expected_types = ["window" if w else "global" for w in original["derived"]["semantic_attention_windowed_per_stage"]]
    assert config.semantic_attention_types == expected_types
    assert [config.id2label[i] for i in range(config.num_labels)] == list(meta["CLASSES"])


def test_absolute_position_embedding_and_no_patch_norm_are_read_from_the_weights(tiny_fixture):
    # the original's ape (a (1, C, H, W) embedding on the pretrain_img_size // patch_size grid) and patch_norm=False
    # (no backbone.patch_embed.norm keys); no release uses either, the original code builds both
    folder = tiny_fixture[0]
    state_dict, meta = load_original_checkpoint(folder / "original_checkpoint.pth")
    state_dict = {key: value for key, value in state_dict.items() if not key.startswith("backbone.patch_embed.norm.")}
    embedding = torch.randn(1, 32, 14, 10, generator=torch.Generator().manual_seed(0)) * 0.02
    state_dict["backbone.absolute_pos_embed"] = embedding
    # the fixture's own config text says ape=False, patch_norm=True: refused below; this run's says nothing of them
    meta = {**meta, "config": "model = dict(backbone=dict(type='SeMaskSwinTransformer', sem_window_size=7))"}
    config = infer_config(state_dict, meta)
    assert (config.use_absolute_embeddings, config.image_size, config.use_patch_norm) == (True, [56, 40], False)
    model = SeMaskSwinForSemanticSegmentation(config).eval()
    model.load_state_dict(convert_state_dict(state_dict))
    pixel_values = load_file(folder / "inputs.safetensors")["pixel_values"][..., :72, :100]
    embeddings = model.backbone.embeddings
    with torch.no_grad():
        projected = embeddings.projection(pixel_values)  # (1, 32, 18, 25): no norm
        resized = torch.nn.functional.interpolate(embedding, size=(18, 25), mode="bicubic", align_corners=False)
        expected = (projected + resized).permute(0, 2, 3, 1)
        torch.testing.assert_close(embeddings(pixel_values), expected, rtol=0, atol=0)
    # a run config that says otherwise is not this checkpoint's
    for setting, value in (("ape", "False"), ("patch_norm", "True")):
        text = f"model = dict(backbone=dict(type='SeMaskSwinTransformer', sem_window_size=7, {setting}={value}))"
        with pytest.raises(
            ConfigFileError, match=rf"model\.backbone\.{setting} = {value}, but the checkpoint's weights"
        ):
            infer_config(state_dict, {**meta, "config": text})
    wrong = dict(state_dict, **{"backbone.absolute_pos_embed": torch.zeros(1, 16, 14, 10)})
    with pytest.raises(
        CheckpointError, match=r"backbone\.absolute_pos_embed: shape \(1, 16, 14, 10\), expected \(1, 32"
    ):
        infer_config(wrong, meta)


@pytest.mark.parametrize(
    ("sampler", "expected"), [("thresh=0.7, min_kept=1000", (0.7, 1000)), ("min_kept=50", (None, 50))]
)
def test_ohem_threshold_and_pixels_kept_come_from_the_run_config(tiny_fixture, sampler, expected):
    folder = tiny_fixture[0]
    state_dict, meta = load_original_checkpoint(folder / "original_checkpoint.pth")
    text = (
        "model = dict(backbone=dict(type='SeMaskSwinTransformer', sem_window_size=7), "
        f"decode_head=dict(type='BranchFPNHead', sampler=dict(type='OHEMPixelSampler', {sampler})))"
    )
    config = infer_config(state_dict, {**meta, "config": text})
    assert (config.use_ohem, config.ohem_threshold, config.ohem_min_kept) == (True, *expected)


def state_dict_from_key_list(name: str) -> dict[str, torch.Tensor]:
    return key_list_state_dict(fixture_dir("semask_keys") / f"{name}.json")


@pytest.mark.parametrize("name", KEY_LISTS)
def test_every_released_fpn_layout_converts(name):
    params_m = hf_semseg.get_variant(variant_of(name)).reported["params_M"]  # counted on the original code
    state_dict = state_dict_from_key_list(name)
    config = infer_config(state_dict)
    converted = convert_state_dict(state_dict)
    with torch.device("meta"):
        model = SeMaskSwinForSemanticSegmentation(config)
    check_against_model(converted, model.state_dict())
    original_params = sum(
        t.numel()
        for k, t in state_dict.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked", "relative_position_index"))
    )
    assert sum(p.numel() for p in model.parameters()) == original_params
    assert round(original_params / 1e6, 2) == params_m
    assert "".join(t[0].upper() for t in config.semantic_attention_types) == released_attention_pattern(name)


def variant_of(key_list: str) -> str:
    """``fpn_coco10k_tiny`` -> ``semask-fpn-tiny-coco-stuff-10k``."""
    _, dataset, size = key_list.split("_")
    return f"semask-fpn-{size}-{ {'coco10k': 'coco-stuff-10k'}.get(dataset, dataset) }"


@pytest.mark.parametrize("name", KEY_LISTS)
def test_every_released_layout_is_matched_to_its_registered_variant(name):
    inferred, variant = infer_config_and_variant(state_dict_from_key_list(name))
    assert variant == variant_of(name)
    registered = hf_semseg.variant_config(variant)
    for field in (
        "embed_dim",
        "depths",
        "num_heads",
        "window_size",
        "num_labels",
        "semantic_attention_types",
        "semantic_window_size",
    ):
        assert getattr(inferred, field) == getattr(registered, field), (name, field)


def test_config_text_with_another_semantic_window_is_not_the_released_variant():
    state_dict = state_dict_from_key_list("fpn_ade20k_tiny")
    same = {"config": "model = dict(backbone=dict(sem_window_size=7))"}
    config, variant = infer_config_and_variant(state_dict, same)
    assert variant == "semask-fpn-tiny-ade20k" and config.semantic_window_size == 7
    other = {"config": "model = dict(backbone=dict(sem_window_size=5))"}
    config, variant = infer_config_and_variant(state_dict, other)
    assert variant is None and config.semantic_window_size == 5
    # a config that leaves the key out: the original class's default (7), as in the run
    config, variant = infer_config_and_variant(state_dict, {"config": "model = dict(backbone=dict(embed_dim=96))"})
    assert variant == "semask-fpn-tiny-ade20k" and config.semantic_window_size == 7


def test_a_matched_checkpoint_gets_the_variant_pipeline_dataset_and_card():
    """Without config text, the test scale, label reduction, class names and reported numbers of a released
    checkpoint come from the registry (the variant it was matched to)."""
    config, variant = infer_config_and_variant(state_dict_from_key_list("fpn_ade20k_large"))
    with torch.device("meta"):
        model = SeMaskSwinForSemanticSegmentation(config)
    conversion = Conversion(Path("semask_large_fpn_ade20k.pth"), model, variant=variant)
    processor = build_image_processor(conversion)
    assert dict(processor.size) == {"longest_edge": 2560, "shortest_edge": 640} and processor.do_reduce_labels
    fields = semask_fpn_card_fields(conversion, processor)
    assert fields["model_name"] == "semask-fpn-large-ade20k" and "51.89 mIoU" in fields["reported_row"]
    assert fields["dataset_row"] == "ADE20K, 150 classes" and fields["repo_id"] == "<user>/semask-fpn-large-ade20k"
    assert (fields["dataset"], fields["dataset_id"], fields["test_scale"]) == (
        "ADE20K",
        "scene_parse_150",
        "2560 x 640",
    )
    # the run's own config (here: the checkpoint's config text) wins over the variant
    text = "test_pipeline = [dict(type='MultiScaleFlipAug', img_scale=(1024, 256))]"
    conversion.pipeline = mmseg_pipeline(mmseg_run_configs(None, {"config": text}))
    assert dict(build_image_processor(conversion).size) == {"longest_edge": 1024, "shortest_edge": 256}


def test_checkpoint_error_is_importable_where_it_was():
    from hf_semseg.conversion.vwformer import CheckpointError as vwformer_error

    assert semask_fpn.CheckpointError is CheckpointError is vwformer_error
    assert issubclass(CheckpointError, ValueError)


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------


def test_missing_and_unmapped_keys_are_named(tiny_fixture):
    folder = tiny_fixture[0]
    state_dict, meta = load_original_checkpoint(folder / "original_checkpoint.pth")
    extra = dict(state_dict, **{"decode_head.lateral_convs.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"decode_head\.lateral_convs\.0\.weight"):
        convert_state_dict(extra)
    missing = {k: v for k, v in state_dict.items() if k != "backbone.layers.1.blocks.0.mlp.fc2.bias"}
    converted = convert_state_dict(missing)
    with torch.device("meta"):
        model = SeMaskSwinForSemanticSegmentation(infer_config(missing, meta))
    with pytest.raises(CheckpointError, match=r"stages\.1\.blocks\.0\.mlp\.fc2\.bias"):
        check_against_model(converted, model.state_dict())
    broken_index = dict(state_dict)
    key = "backbone.layers.0.blocks.0.attn.relative_position_index"
    broken_index[key] = state_dict[key].flip(0)
    with pytest.raises(CheckpointError, match="relative_position_index"):
        convert_state_dict(broken_index)


def test_wrong_files_are_explained(tmp_path, tiny_fixture):
    folder = tiny_fixture[0]
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((folder / "original_checkpoint.pth").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_original_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="no such file"):
        load_original_checkpoint(tmp_path / "absent.pth")
    detectron = tmp_path / "d2.pth"
    torch.save({"model": {"backbone.x": torch.zeros(1)}, "iteration": 1}, detectron)
    with pytest.raises(CheckpointError, match="detectron2"):
        load_original_checkpoint(detectron)
    listing = tmp_path / "list.pth"
    torch.save([1, 2], listing)
    with pytest.raises(CheckpointError, match="list"):
        load_original_checkpoint(listing)
    plain_swin = {"backbone.layers.0.blocks.0.norm1.weight": torch.zeros(4)}
    with pytest.raises(CheckpointError, match="plain Swin"):
        infer_config(plain_swin)
    with pytest.raises(CheckpointError, match="not a SeMask-FPN checkpoint"):
        infer_config({"encoder.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------------------


def test_command_line_writes_a_loadable_folder(tmp_path, tiny_fixture):
    folder, model, _ = tiny_fixture
    output_dir = tmp_path / "converted"
    result = run_script(
        SCRIPT, "--checkpoint_path", str(folder / "original_checkpoint.pth"), "--output_dir", str(output_dir)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no released variant has these weights; dataset unknown" in result.stdout
    # the semantic window is not in the weights: from the checkpoint's own config text (mmseg meta)
    assert "semantic_window_size=7 from the checkpoint's config text; training-only values from" in result.stdout
    files = {path.name for path in output_dir.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "configuration_semask_swin.py",
        "modeling_semask_swin.py",
        "README.md",
    } <= files
    config = json.loads((output_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSemanticSegmentation"].endswith("SeMaskSwinForSemanticSegmentation")
    card = (output_dir / "README.md").read_text()
    assert "$" not in card.split("```")[0] and "42.06" in card and "original_checkpoint.pth" in card

    reloaded = AutoModelForSemanticSegmentation.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert processor.size == {"longest_edge": 2048, "shortest_edge": 512}
    inputs = load_file(folder / "inputs.safetensors")
    expected = load_file(folder / "outputs.safetensors")
    with torch.no_grad():
        logits = reloaded(inputs["pixel_values"]).logits
    torch.testing.assert_close(logits, expected["logits"], atol=1e-4, rtol=0)


def test_command_line_fails_cleanly_on_a_foreign_file(tmp_path):
    foreign = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(2, 3, 3, 3)}}, foreign)
    result = run_script(SCRIPT, "--checkpoint_path", str(foreign), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {foreign}: ") and result.stderr.count("\n") == 1, result.stderr
    assert "not a SeMask-FPN checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
