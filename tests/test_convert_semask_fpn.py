import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import hf_semseg  # noqa: F401  (registers the Auto classes)
from hf_semseg.conversion.semask_fpn import (
    CheckpointError,
    check_against_model,
    convert_checkpoint,
    convert_state_dict,
    infer_config,
    load_original_checkpoint,
)
from hf_semseg.models.modeling_semask_swin import (
    SeMaskSwinForSemanticSegmentation,
    relative_position_index,
)

from conftest import REPO_ROOT, fixture_dir


SCRIPT = REPO_ROOT / "conversion" / "convert_semask_fpn_to_hf.py"

# released variant -> (params in M counted from the original code, semantic attention per stage)
KEY_LISTS = {
    "fpn_ade20k_tiny": (34.66, "WWGG"),
    "fpn_ade20k_small": (55.97, "WWGG"),
    "fpn_ade20k_base": (96.49, "WWWW"),
    "fpn_ade20k_large": (210.79, "WWGG"),
    "fpn_cityscapes_tiny": (34.24, "WWWW"),
    "fpn_cityscapes_small": (55.56, "WWWW"),
    "fpn_cityscapes_base": (95.95, "WWWW"),
    "fpn_cityscapes_large": (210.00, "WWWW"),
    "fpn_coco10k_tiny": (34.72, "WWGG"),
    "fpn_coco10k_small": (56.04, "WWGG"),
    "fpn_coco10k_base": (96.57, "WWWW"),
    "fpn_coco10k_large": (210.92, "WWGG"),
}


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
    for i in range(4):
        differences[f"hidden_state_{i}"] = (output.hidden_states[i] - expected[f"hidden_state_{i}"]).abs().max().item()
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


def state_dict_from_key_list(name: str) -> dict[str, torch.Tensor]:
    """Meta tensors of the listed shapes (no memory), real relative position indices (the converter checks them)."""
    pairs = json.loads((fixture_dir("semask_keys") / f"{name}.json").read_text())
    state_dict = {}
    for key, shape in pairs:
        if key.endswith("relative_position_index"):
            state_dict[key] = relative_position_index(int(round(shape[0] ** 0.5))).view(shape)
        else:
            state_dict[key] = torch.empty(shape, device="meta")
    return state_dict


@pytest.mark.parametrize("name", sorted(KEY_LISTS))
def test_every_released_fpn_layout_converts(name):
    params_m, types = KEY_LISTS[name]
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
    assert "".join(t[0].upper() for t in config.semantic_attention_types) == types


def test_registered_variants_match_the_released_layouts():
    for name in KEY_LISTS:
        _, dataset, size = name.split("_")
        dataset = {"coco10k": "coco-stuff-10k"}.get(dataset, dataset)
        inferred = infer_config(state_dict_from_key_list(name))
        registered = hf_semseg.variant_config(f"semask-fpn-{size}-{dataset}")
        for field in ("embed_dim", "depths", "num_heads", "window_size", "num_labels", "semantic_attention_types"):
            assert getattr(inferred, field) == getattr(registered, field), (name, field)


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------


def test_missing_and_unmapped_keys_are_named(tiny_fixture):
    folder = tiny_fixture[0]
    state_dict, _ = load_original_checkpoint(folder / "original_checkpoint.pth")
    extra = dict(state_dict, **{"decode_head.lateral_convs.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"decode_head\.lateral_convs\.0\.weight"):
        convert_state_dict(extra)
    missing = {k: v for k, v in state_dict.items() if k != "backbone.layers.1.blocks.0.mlp.fc2.bias"}
    converted = convert_state_dict(missing)
    with torch.device("meta"):
        model = SeMaskSwinForSemanticSegmentation(infer_config(missing))
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
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--checkpoint_path",
            str(folder / "original_checkpoint.pth"),
            "--output_dir",
            str(output_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
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
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--checkpoint_path", str(foreign), "--output_dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "not a SeMask-FPN checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
