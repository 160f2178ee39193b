"""Faults an audit of the converters found: malformed checkpoint metadata and keys, degenerate or mistyped tensors,
attention heads that do not split the channels, mistyped or contradicting run configs, values the converted model
cannot represent, and the output folder under ``--overwrite`` or SIGTERM. Each is refused before torch sees it: exit
status 1 (143 for SIGTERM), one ``error:`` line naming the thing, nothing half-written."""

import errno
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import pytest
import torch
import yaml
from test_convert_bad_tensors import _cli, _original, assert_refused, bad_checkpoint, run_cli

from hf_semseg.conversion import common, semask_fpn, semask_mask2former, vwformer
from hf_semseg.conversion.common import (
    MMSEG,
    CheckpointError,
    ConversionError,
    checkpoint_id2label,
    invalid_config_is_an_error,
    read_checkpoint,
)
from hf_semseg.conversion.run_config import (
    ConfigFileError,
    RunConfig,
    detectron2_pipeline,
    mmseg_pipeline,
    qk_scale_check,
    read_mmseg_config,
)
from hf_semseg.models.configuration_semask_swin import SeMaskSwinConfig
from hf_semseg.models.modeling_semask_swin import SeMaskSwinForSemanticSegmentation

from conftest import REPO_ROOT, fixture_config_file, fixture_dir


def changed_checkpoint(tmp_path, fixture: str, change) -> str:
    """The fixture's checkpoint, ``change(checkpoint)`` applied to the whole dict, saved as ``bad.pth``."""
    checkpoint, _ = _original(fixture)
    change(checkpoint)
    path = tmp_path / "bad.pth"
    torch.save(checkpoint, path)
    return str(path)


def without_config_text(checkpoint: dict) -> None:
    checkpoint["meta"] = {key: value for key, value in checkpoint["meta"].items() if key != "config"}


def edited_config_text(old: str, new: str):
    def change(checkpoint):
        assert old in checkpoint["meta"]["config"], old
        checkpoint["meta"] = dict(checkpoint["meta"], config=checkpoint["meta"]["config"].replace(old, new, 1))

    return change


def config_file(tmp_path, fixture: str, change) -> str:
    """The fixture's run config (``--config_file``) with ``change`` applied: to the parsed YAML of a detectron2
    fixture, to the text of an mmseg one (which returns the new text); written into ``tmp_path / "run_config"``."""
    folder = tmp_path / "run_config"
    folder.mkdir(exist_ok=True)
    path = fixture_config_file(fixture, folder)
    if path.suffix == ".yaml":
        values = yaml.safe_load(path.read_text())
        change(values)
        path.write_text(yaml.safe_dump(values))
    else:
        path.write_text(change(path.read_text()))
    return str(path)


def run_with(family, checkpoint, tmp_path, capsys, *extra):
    """The family's command line on ``checkpoint`` with ``extra`` arguments: exit status, stderr lines, output."""
    output_dir = tmp_path / "out"
    arguments = ["--checkpoint_path", str(checkpoint), "--output_dir", str(output_dir), *map(str, extra)]
    status = _cli(family).main(arguments)
    return status, capsys.readouterr().err.splitlines(), output_dir


# ---------------------------------------------------------------------------------------------------------------
# 1, 2: checkpoint metadata and keys
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "fixture", "change", "expected"),
    [
        ("semask_fpn", "semask_fpn_tiny", lambda ck: ck.update(meta="x"), "meta is a str ('x'), expected a dict"),
        (
            "vwformer",
            "vwformer_tiny",
            lambda ck: ck["meta"].update(CLASSES=5),
            "meta['CLASSES'] = 5, expected a list of class names",
        ),
        (
            "semask_fpn",
            "semask_fpn_tiny",
            lambda ck: ck["meta"].update(config=["x"]),
            "meta['config'] = ['x'], expected the run's config text",
        ),
    ],
    ids=["meta-str", "classes-int", "config-list"],
)
def test_metadata_of_a_wrong_type_is_refused_naming_the_entry(family, fixture, change, expected, tmp_path, capsys):
    status, lines, output_dir = run_cli(family, changed_checkpoint(tmp_path, fixture, change), tmp_path, capsys)
    assert_refused(status, lines, output_dir, "bad.pth", expected)


def test_class_names_of_a_wrong_type_are_refused():
    assert checkpoint_id2label(("a", "b"), 2) == {0: "a", 1: "b"}
    with pytest.raises(CheckpointError, match=r"meta\['CLASSES'\] = 5, expected a list of class names"):
        checkpoint_id2label(5, 2)


def test_a_state_dict_key_that_is_not_a_string_is_refused(tmp_path, capsys):
    (tmp_path / "run_config").mkdir()
    path = tmp_path / "run_config" / "keys.pth"
    torch.save({"state_dict": {"backbone.a": torch.zeros(1), 7: torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match=r"keys.pth: state dict keys that are not strings: \[7\]"):
        read_checkpoint(path, MMSEG, "X")
    checkpoint = bad_checkpoint(tmp_path, "semask_mask2former_tiny", lambda sd: sd.__setitem__(7, torch.zeros(2)))
    status, lines, output_dir = run_cli("semask_d2", checkpoint, tmp_path, capsys)
    assert_refused(status, lines, output_dir, "bad.pth", "state dict keys that are not strings: [7]")


# ---------------------------------------------------------------------------------------------------------------
# 3, 4: degenerate sizes and attention heads
# ---------------------------------------------------------------------------------------------------------------

EMPTY_PATCH_EMBEDDING = [
    ("semask_fpn", "semask_fpn_tiny", "backbone.patch_embed.proj.weight"),
    ("vwformer", "vwformer_tiny", "backbone.patch_embed.projection.weight"),
    ("vwformer_d2", "vw_mask2former_tiny", "backbone.patch_embed.proj.weight"),
]


@pytest.mark.parametrize(
    ("family", "fixture", "key"), EMPTY_PATCH_EMBEDDING, ids=[case[0] for case in EMPTY_PATCH_EMBEDDING]
)
def test_an_empty_patch_embedding_is_refused_naming_it(family, fixture, key, tmp_path, capsys):
    checkpoint = bad_checkpoint(tmp_path, fixture, lambda sd: sd.__setitem__(key, torch.zeros(0, 3, 4, 4)))
    status, lines, output_dir = run_cli(family, checkpoint, tmp_path, capsys, fixture)
    assert_refused(status, lines, output_dir, "bad.pth", f"{key}: shape (0, 3, 4, 4), an empty tensor")


def _three_heads(prefix: str):
    """Every relative position bias table under ``prefix`` with 3 heads (of stage 0's 16 or 32 channels)."""

    def replace(state_dict):
        tables = [key for key in state_dict if key.startswith(prefix) and key.endswith("relative_position_bias_table")]
        assert tables
        for key in tables:
            state_dict[key] = torch.zeros(state_dict[key].shape[0], 3)

    return replace


def test_swin_heads_that_do_not_split_the_channels_are_refused(tmp_path, capsys):
    (tmp_path / "run_config").mkdir()
    config = tmp_path / "run_config" / "fpn.py"
    config.write_text("model = dict(backbone=dict(sem_window_size=7))\n")
    checkpoint, _ = _original("semask_fpn_tiny")
    without_config_text(checkpoint)
    _three_heads("backbone.layers.0.")(checkpoint["state_dict"])
    torch.save(checkpoint, tmp_path / "bad.pth")
    status, lines, output_dir = run_with("semask_fpn", tmp_path / "bad.pth", tmp_path, capsys, "--config_file", config)
    expected = "Swin stage 0: 32 channels are not divisible by 3 attention heads (the relative position bias tables)"
    assert status == 1 and len(lines) == 1 and expected in lines[0], lines
    assert not output_dir.exists()

    checkpoint = bad_checkpoint(tmp_path, "vw_mask2former_tiny", _three_heads("backbone.layers.0."))
    status, lines, output_dir = run_cli("vwformer_d2", checkpoint, tmp_path, capsys)
    assert_refused(status, lines, output_dir, "Swin stage 0: 16 channels are not divisible by 3 attention heads")

    checkpoint = bad_checkpoint(tmp_path, "vwformer_tiny", _three_heads("backbone.stages.0."))
    status, lines, output_dir = run_cli("vwformer", checkpoint, tmp_path, capsys)
    assert_refused(status, lines, output_dir, "Swin stage 0: 32 channels are not divisible by 3 attention heads")


def test_deformable_attention_heads_that_do_not_split_the_channels_are_refused(tmp_path, capsys):
    def heads_3(state_dict):
        for key in [key for key in state_dict if key.endswith("self_attn.sampling_offsets.weight")]:
            state_dict[key] = torch.zeros(72, state_dict[key].shape[1])

    checkpoint = bad_checkpoint(tmp_path, "semask_mask2former_tiny", heads_3)
    status, lines, output_dir = run_cli("semask_d2", checkpoint, tmp_path, capsys)
    assert_refused(
        status,
        lines,
        output_dir,
        "the pixel decoder's deformable attention: 32 channels are not divisible by 3 attention heads",
        "sampling_offsets: 72 rows",
    )


def test_configured_heads_that_do_not_split_the_channels_are_refused(tmp_path, capsys):
    checkpoint = changed_checkpoint(tmp_path, "vwformer_tiny", edited_config_text("nheads=2", "nheads=3"))
    status, lines, output_dir = run_cli("vwformer", checkpoint, tmp_path, capsys)
    assert_refused(
        status,
        lines,
        output_dir,
        "the decode head's attention: 64 channels are not divisible by 3 attention heads "
        "(model.decode_head.nheads from the checkpoint's config text)",
    )


def test_a_config_class_validation_error_is_a_named_error():
    with pytest.raises(CheckpointError, match=r"make no valid SeMaskSwinConfig: .*not divisible by num_heads\[0\] = 3"):
        with invalid_config_is_an_error(SeMaskSwinForSemanticSegmentation):
            SeMaskSwinConfig(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[3, 2, 4, 8])
    with pytest.raises(ZeroDivisionError):  # anything else is a bug, and not hidden
        with invalid_config_is_an_error(SeMaskSwinForSemanticSegmentation):
            1 / 0  # noqa: B018


# ---------------------------------------------------------------------------------------------------------------
# 5, 9: the test pipeline of a run's config
# ---------------------------------------------------------------------------------------------------------------


def _mmseg_test(pipeline=(), **test) -> list[RunConfig]:
    return [
        RunConfig(
            {"data": {"test": {"type": "ADE20KDataset", "pipeline": list(pipeline), **test}}}, "--config_file r.py"
        )
    ]


@pytest.mark.parametrize(
    ("run_configs", "expected"),
    [
        (
            _mmseg_test([{"type": "ResizeToMultiple", "size_divisor": "32"}]),
            "r.py: test pipeline: ResizeToMultiple size_divisor = '32': expected a positive integer",
        ),
        (
            _mmseg_test([{"type": "Normalize", "mean": ["a", 1, 2], "std": [1, 1, 1]}]),
            "r.py: test pipeline: Normalize mean = ['a', 1, 2], expected 3 finite numbers",
        ),
        (
            _mmseg_test([{"type": "Normalize", "mean": [1, 1, 2], "std": [0, 0, 0]}]),
            "r.py: test pipeline: Normalize std = [0, 0, 0], expected 3 positive finite numbers",
        ),
        (_mmseg_test(reduce_zero_label="yes"), "r.py: data.test: reduce_zero_label = 'yes': expected True or False"),
        (
            [RunConfig({"INPUT": {"MIN_SIZE_TEST": "512", "MAX_SIZE_TEST": 2048}}, "--config_file c.yaml")],
            "c.yaml: INPUT.MIN_SIZE_TEST = '512': expected a positive integer",
        ),
        (
            [RunConfig({"INPUT": {"MIN_SIZE_TEST": [512], "MAX_SIZE_TEST": 2048}}, "--config_file c.yaml")],
            "c.yaml: INPUT.MIN_SIZE_TEST = [512]: expected a positive integer",
        ),
        (
            [RunConfig({"MODEL": {"PIXEL_MEAN": ["a", 1, 2]}}, "--config_file c.yaml")],
            "c.yaml: MODEL.PIXEL_MEAN = ['a', 1, 2], expected 3 finite numbers",
        ),
        (
            [RunConfig({"MODEL": {"PIXEL_STD": [0, 0, 0]}}, "--config_file c.yaml")],
            "c.yaml: MODEL.PIXEL_STD = [0, 0, 0], expected 3 positive finite numbers",
        ),
        (
            [RunConfig({"MODEL": {"PIXEL_STD": [1.0, math.inf, 1.0]}}, "--config_file c.yaml")],
            "c.yaml: MODEL.PIXEL_STD = [1.0, inf, 1.0], expected 3 positive finite numbers",
        ),
    ],
    ids=[
        "size_divisor",
        "mean",
        "std-zero",
        "reduce_zero_label",
        "min-size-str",
        "min-size-list",
        "pixel-mean",
        "pixel-std",
        "pixel-std-inf",
    ],
)
def test_mistyped_test_pipeline_values_are_config_file_errors(run_configs, expected):
    reader = detectron2_pipeline if run_configs[0].source.endswith(".yaml") else mmseg_pipeline
    with pytest.raises(ConfigFileError) as error:
        reader(run_configs)
    assert expected in str(error.value)


def test_a_mistyped_pipeline_value_is_one_line_on_the_command_line(tmp_path, capsys):
    checkpoint = fixture_dir("semask_mask2former_tiny") / "original_checkpoint.pth"
    # (a quoted "512" is 512 there: detectron2 evaluates string values as Python literals, and so does the reader)
    config = config_file(tmp_path, "semask_mask2former_tiny", lambda c: c.update(INPUT={"MIN_SIZE_TEST": "large"}))
    status, lines, output_dir = run_with("semask_d2", checkpoint, tmp_path, capsys, "--config_file", config)
    assert status == 1 and lines == [
        f"error: --config_file {config}: INPUT.MIN_SIZE_TEST = 'large': expected a positive integer"
    ]
    assert not output_dir.exists()


def test_a_pixel_std_buffer_that_is_not_positive_is_refused(tmp_path, capsys):
    def add_statistics(state_dict):
        state_dict["pixel_mean"] = torch.zeros(3, 1, 1)
        state_dict["pixel_std"] = torch.tensor([58.4, 0.0, 57.4]).view(3, 1, 1)

    checkpoint = bad_checkpoint(tmp_path, "semask_mask2former_tiny", add_statistics)
    status, lines, output_dir = run_cli("semask_mask2former", checkpoint, tmp_path, capsys, "semask_mask2former_tiny")
    assert_refused(status, lines, output_dir, "bad.pth", "pixel_std: [58.4", "expected 3 positive values")


# ---------------------------------------------------------------------------------------------------------------
# 6, 7: run configs that contradict the weights, or that the converted model cannot represent
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def semask_d2_state_dict():
    path = fixture_dir("semask_mask2former_tiny") / "original_checkpoint.pth"
    return semask_mask2former.apply_legacy_renames(semask_mask2former.load_detectron2_checkpoint(path))


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("SWIN", "PATCH_SIZE", 8, "MODEL.SWIN.PATCH_SIZE = 8, but the checkpoint's weights have 4"),
        ("SWIN", "MLP_RATIO", 2.0, "MODEL.SWIN.MLP_RATIO = 2.0, but the checkpoint's weights have 4.0"),
        ("SWIN", "QKV_BIAS", False, "MODEL.SWIN.QKV_BIAS = False, but the checkpoint's weights have True"),
        ("SWIN", "APE", True, "MODEL.SWIN.APE = True, but the checkpoint's weights have False"),
        ("SWIN", "PATCH_NORM", False, "MODEL.SWIN.PATCH_NORM = False, but the checkpoint's weights have True"),
        ("SWIN", "NUM_SEM_BLOCKS", 2, "MODEL.SWIN.NUM_SEM_BLOCKS = 2, but the checkpoint's weights have 1"),
        (
            "SEM_SEG_HEAD",
            "COMMON_STRIDE",
            8,
            "MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 8, but the checkpoint's weights have 4",
        ),
        (
            "SEM_SEG_HEAD",
            "DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES",
            ["res4", "res5"],
            "DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ['res4', 'res5'], but the checkpoint's weights have ['res3'",
        ),
        ("SWIN", "QK_SCALE", 0.01, "MODEL.SWIN.QK_SCALE = 0.01, but the converted model scales the attention by"),
    ],
)
def test_a_semask_detectron2_config_contradicting_the_weights_is_refused(
    semask_d2_state_dict, section, key, value, expected, tmp_path
):
    values = yaml.safe_load(fixture_config_file("semask_mask2former_tiny", tmp_path).read_text())
    values["MODEL"][section][key] = value
    with pytest.raises(ConfigFileError) as error:
        semask_mask2former.infer_config_and_settings(
            semask_d2_state_dict, run_configs=[RunConfig(values, "--config_file c.yaml")]
        )
    assert str(error.value).startswith("--config_file c.yaml: ") and expected in str(error.value)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "'mlp_ratio': 4.0",
            "'mlp_ratio': 2.0",
            "model.backbone.mlp_ratio = 2.0, but the checkpoint's weights have 4.0",
        ),
        ("'num_sem_blocks': [1, 1, 1, 1]", "'num_sem_blocks': [2, 2, 2, 2]", "model.backbone.num_sem_blocks = [2, 2"),
        ("'qkv_bias': True", "'qkv_bias': False", "model.backbone.qkv_bias = False, but the checkpoint's weights"),
        ("'ape': False", "'ape': True", "model.backbone.ape = True, but the checkpoint's weights have False"),
        ("'qk_scale': None", "'qk_scale': 0.01", "model.backbone.qk_scale = 0.01, but the converted model scales"),
        (
            "'align_corners': False",
            "'align_corners': True",
            "model.decode_head.align_corners = True, but the converted model resizes with align_corners=False",
        ),
    ],
)
def test_a_semask_fpn_config_contradicting_the_weights_or_unrepresentable_is_refused(old, new, expected, tmp_path):
    checkpoint, _ = _original("semask_fpn_tiny")
    edited_config_text(old, new)(checkpoint)
    with pytest.raises(ConfigFileError) as error:
        semask_fpn.infer_config_and_settings(checkpoint["state_dict"], checkpoint["meta"])
    assert str(error.value).startswith("the checkpoint's config text: ") and expected in str(error.value)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "strides=(4, 2, 2, 2)",
            "strides=(2, 2, 2, 2)",
            "model.backbone.strides = (2, 2, 2, 2), but the converted model",
        ),
        ("qk_scale=None", "qk_scale=0.01", "model.backbone.qk_scale = 0.01, but the converted model scales"),
        ("align_corners=False", "align_corners=True", "model.decode_head.align_corners = True, but the converted"),
    ],
)
def test_a_vwformer_config_the_converted_model_cannot_represent_is_refused(old, new, expected, tmp_path, capsys):
    checkpoint = changed_checkpoint(tmp_path, "vwformer_tiny", edited_config_text(old, new))
    status, lines, output_dir = run_cli("vwformer", checkpoint, tmp_path, capsys)
    assert_refused(status, lines, output_dir, expected, "cannot represent")


def test_a_vw_detectron2_qk_scale_is_refused_and_the_default_one_accepted(tmp_path, capsys):
    checkpoint = fixture_dir("vw_mask2former_tiny") / "original_checkpoint.pth"
    config = config_file(tmp_path, "vw_mask2former_tiny", lambda c: c["MODEL"]["SWIN"].update(QK_SCALE=0.01))
    status, lines, output_dir = run_with("vwformer_d2", checkpoint, tmp_path, capsys, "--config_file", config)
    assert status == 1 and len(lines) == 1, lines
    assert "MODEL.SWIN.QK_SCALE = 0.01, but the converted model scales the attention by head_dim ** -0.5" in lines[0]
    _, accepts, _ = qk_scale_check("QK_SCALE", 32, [1, 2, 4, 8])  # head_dim 32 in every stage
    assert accepts(None) and accepts(32**-0.5) and not accepts(0.01) and not accepts("x")


def test_mit_strides_of_the_run_are_carried_over():
    from script_helpers import key_list_state_dict

    state_dict = key_list_state_dict(fixture_dir("vwformer_keys") / "vw_mit_b0_ade20k_CONSTRUCTED_not_released.json")
    text = "model = dict(backbone=dict(strides=[4, 2, 2, 1]), decode_head=dict(nheads=1, short_cut=True))"
    config, _ = vwformer.infer_config_and_settings(state_dict, {"config": text})
    assert list(config.backbone_config.strides) == [4, 2, 2, 1]
    config, _ = vwformer.infer_config_and_settings(state_dict, {"config": text.replace("strides=[4, 2, 2, 1]", "")})
    assert list(config.backbone_config.strides) == [4, 2, 2, 2]  # MixVisionTransformer's default


# ---------------------------------------------------------------------------------------------------------------
# 8, 13: tensor dtypes, directories, foreign files
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.long, "backbone.embeddings.norm.weight (torch.int64)"),
        (torch.bool, "backbone.patch_embed.norm.weight (torch.bool)"),
        (torch.complex64, "backbone.patch_embed.norm.weight (torch.complex64)"),
    ],
)
def test_weights_that_are_not_floating_point_are_refused(dtype, expected, tmp_path, capsys):
    key = "backbone.patch_embed.norm.weight"
    checkpoint = bad_checkpoint(tmp_path, "semask_fpn_tiny", lambda sd: sd.__setitem__(key, sd[key].to(dtype)))
    status, lines, output_dir = run_cli("semask_fpn", checkpoint, tmp_path, capsys)
    assert_refused(status, lines, output_dir, "bad.pth", expected)  # one line: no torch warning either


def test_directories_and_foreign_files_are_named(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    status, lines, _ = run_with("semask_fpn", tmp_path / "folder", tmp_path, capsys)
    assert status == 1 and lines == [f"error: {tmp_path / 'folder'}: a directory, not a checkpoint file"]
    checkpoint = fixture_dir("semask_fpn_tiny") / "original_checkpoint.pth"
    status, lines, _ = run_with("semask_fpn", checkpoint, tmp_path, capsys, "--config_file", tmp_path / "folder")
    assert status == 1 and lines == [
        f"error: --config_file {tmp_path / 'folder'}: a directory, not a file (an mmseg config)"
    ]
    import pickle

    (tmp_path / "pickled.pth").write_bytes(pickle.dumps({"state_dict": {"a": object.__new__(RunConfig)}}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:  # torch's warning about the pickle protocol: not shown
        warnings.simplefilter("always")
        status, lines, output_dir = run_with("semask_fpn", tmp_path / "pickled.pth", tmp_path, capsys)
    assert status == 1 and len(lines) == 1 and "cannot be read as a PyTorch checkpoint" in lines[0], lines
    assert [str(warning.message) for warning in caught if issubclass(warning.category, UserWarning)] == []


class _NotAWeight:
    """An object a checkpoint's metadata should not hold (saved by ``torch.save``, refused by the safe loader)."""


def test_unreadable_files_say_why_in_one_plain_line(tmp_path, capsys):
    """torch's weights-only refusal is a paragraph advising an unsafe load, with terminal escape codes; the error
    line keeps the safe unpickler's reason: a text file, a truncated archive, a checkpoint holding an object."""
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    status, lines, _ = run_with("semask_fpn", text, tmp_path, capsys)
    assert status == 1 and len(lines) == 1, lines
    assert re.fullmatch(
        rf"error: {re.escape(str(text))}: cannot be read as a PyTorch checkpoint \(Unsupported operand \d+; the file "
        r"is corrupt, truncated, or not a torch\.save file\)",
        lines[0],
    ), lines
    original = (fixture_dir("semask_fpn_tiny") / "original_checkpoint.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(original[: len(original) // 2])
    status, lines, _ = run_with("semask_fpn", truncated, tmp_path, capsys)
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {truncated}: cannot be read as a PyTorch checkpoint (") and lines[0].endswith(
        "; the file is corrupt, truncated, or not a torch.save file)"
    ), lines
    with_object = tmp_path / "with_object.pth"
    torch.save({"state_dict": {}, "meta": {"hooks": _NotAWeight()}}, with_object)
    status, lines, _ = run_with("semask_fpn", with_object, tmp_path, capsys)
    assert (
        lines
        == [
            f"error: {with_object}: cannot be read as a PyTorch checkpoint (it holds a {__name__}._NotAWeight object; the "
            "converters read tensors and plain values only, never arbitrary objects (torch.load weights_only=True): save "
            "the state dict alone)"
        ]
        and status == 1
    )
    assert "\x1b" not in "".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# 10, 11, 12: the output folder
# ---------------------------------------------------------------------------------------------------------------

FPN_CHECKPOINT = "semask_fpn_tiny"


def test_overwrite_through_a_symbolic_link_replaces_the_folder_it_points_to(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (real / "old.txt").write_text("old")
    (tmp_path / "link").symlink_to(real)
    checkpoint = fixture_dir(FPN_CHECKPOINT) / "original_checkpoint.pth"
    arguments = [
        "--checkpoint_path",
        checkpoint,
        "--output_dir",
        tmp_path / "link",
        "--overwrite",
        "--skip_reload_check",
    ]
    status = _cli("semask_fpn").main([str(argument) for argument in arguments])
    assert status == 0, capsys.readouterr().err
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link").resolve() == real.resolve()
    assert (real / "model.safetensors").is_file() and not (real / "old.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]  # no stray .old / .partial entries


def test_overwrite_never_deletes_the_config_file_or_its_base(tmp_path, capsys):
    checkpoint = fixture_dir(FPN_CHECKPOINT) / "original_checkpoint.pth"
    out = tmp_path / "out"
    out.mkdir()
    (out / "base.py").write_text("model = dict(backbone=dict(sem_window_size=7))\n")
    (tmp_path / "run.py").write_text("_base_ = ['out/base.py']\n")
    for config in (out / "base.py", tmp_path / "run.py"):
        arguments = ["--checkpoint_path", checkpoint, "--output_dir", out, "--config_file", config, "--overwrite"]
        status = _cli("semask_fpn").main([str(argument) for argument in arguments])
        lines = capsys.readouterr().err.splitlines()
        assert status == 1 and len(lines) == 1, lines
        assert f"--output_dir {out} holds the config file {out / 'base.py'}" in lines[0]
        assert "--overwrite would delete it" in lines[0]
        assert (out / "base.py").is_file()


def test_sigterm_cleans_up_like_an_interrupt(tmp_path, capsys, monkeypatch):
    """SIGTERM during the reload check: the temporary output folder and the reload check's folder are removed, one
    line, exit status 143, and the previous SIGTERM handler is back."""
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    seen = []

    def terminated_run(*args, **kwargs):
        seen.append(sorted(os.listdir(work)))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not interrupt the conversion")

    monkeypatch.setattr(common.subprocess, "run", terminated_run)
    previous = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    checkpoint = fixture_dir(FPN_CHECKPOINT) / "original_checkpoint.pth"
    status = _cli("semask_fpn").main(["--checkpoint_path", str(checkpoint), "--output_dir", str(out)])
    lines = capsys.readouterr().err.splitlines()
    assert status == 143 and lines == [f"error: terminated (SIGTERM); {out} was not written"]
    assert seen and seen[0][0].startswith("hf_semseg_reload_")  # it was interrupted inside the reload check
    assert os.listdir(work) == [] and sorted(os.listdir(tmp_path)) == ["tmp"]
    assert signal.getsignal(signal.SIGTERM) is previous


# ---------------------------------------------------------------------------------------------------------------
# A second audit: the output location, layouts the models cannot build, pixel statistics, a full disk, SIGTERM
# while the replaced folder is removed
# ---------------------------------------------------------------------------------------------------------------


def fpn_arguments(output_dir, *extra) -> list[str]:
    checkpoint = fixture_dir(FPN_CHECKPOINT) / "original_checkpoint.pth"
    return ["--checkpoint_path", str(checkpoint), "--output_dir", str(output_dir), *map(str, extra)]


@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)], ids=["plain", "overwrite"])
def test_an_empty_output_dir_is_refused(overwrite, tmp_path, capsys, monkeypatch):
    """``--output_dir ""`` (an unset shell variable) was the current directory: with --overwrite its files were
    deleted and replaced by the model, exit status 0."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    status = _cli("semask_fpn").main(fpn_arguments("", *overwrite, "--skip_reload_check"))
    lines = capsys.readouterr().err.splitlines()
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: --output_dir '' is empty (an unset shell variable?)")
    assert os.listdir(tmp_path) == ["keep.txt"] and (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("output_dir", "expected"),
    [
        (".", "is the current directory"),
        ("..", "holds the current directory"),
        ("HOME", "is the home directory"),
    ],
)
def test_overwrite_of_the_working_or_home_directory_is_refused(output_dir, expected, tmp_path, capsys, monkeypatch):
    work, home = tmp_path / "work", tmp_path / "home"
    for folder in (work, home):
        folder.mkdir()
        (folder / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    output_dir = str(home) if output_dir == "HOME" else output_dir
    status = _cli("semask_fpn").main(fpn_arguments(output_dir, "--overwrite", "--skip_reload_check"))
    lines = capsys.readouterr().err.splitlines()
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: --output_dir {output_dir} {expected}")
    assert "--overwrite would delete everything in it" in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["home", "work"]
    assert os.listdir(work) == ["keep.txt"] and os.listdir(home) == ["keep.txt"]


def _without(pattern: str):
    def change(state_dict):
        for key in [key for key in state_dict if re.match(pattern, key)]:
            del state_dict[key]

    return change


@pytest.mark.parametrize(
    ("family", "fixture", "pattern", "expected"),
    [
        (
            "semask_fpn",
            "semask_fpn_tiny",
            r"backbone\.(layers\.3\.|norm3\.)|decode_head\.scale_heads\.3\.",
            "backbone.layers.N.* keys of 3 backbone stages [0, 1, 2], expected 4",
        ),
        (
            "semask_fpn",
            "semask_fpn_tiny",
            r"backbone\.layers\.3\.semantic_layer\.",
            "stage [3] without a semantic layer (no backbone.layers.3.semantic_layer.class_injection.* keys; semantic "
            "blocks per stage [1, 1, 1, 0])",
        ),
        (
            "semask_mask2former",
            "semask_mask2former_tiny",
            r"backbone\.layers\.0\.semantic_layer\.",
            "stage [0] without a semantic layer",
        ),
        (
            "vwformer",
            "vwformer_tiny",
            r"backbone\.(stages\.3\.|norm3\.)",
            "backbone.stages.N.* keys of 3 backbone stages [0, 1, 2], expected 4",
        ),
        (
            "vwformer_d2",
            "vw_mask2former_tiny",
            r"backbone\.(layers\.3\.|norm3\.)",
            "backbone.layers.N.* keys of 3 backbone stages [0, 1, 2], expected 4",
        ),
    ],
    ids=["fpn-three-stages", "fpn-no-semantic-stage3", "m2f-no-semantic-stage0", "vw-three-stages", "vwd2-three"],
)
def test_a_layout_the_model_cannot_build_is_refused_naming_the_stages(
    family, fixture, pattern, expected, tmp_path, capsys
):
    """A stage count or a stage without semantic layers the converted model cannot run: a ValueError traceback from
    transformers' backbone rules or the reload check's forward, or, with --skip_reload_check, a folder (exit 0)
    whose model raised on every forward."""
    checkpoint = bad_checkpoint(tmp_path, fixture, _without(pattern))
    for extra in ((), ("--skip_reload_check",)):
        status, lines, output_dir = run_with(
            family, checkpoint, tmp_path, capsys, *fixture_arguments(tmp_path, fixture), *extra
        )
        assert_refused(status, lines, output_dir, "bad.pth", expected)


def fixture_arguments(tmp_path, fixture: str) -> tuple:
    """The ``--config_file`` a converter needs besides the weights: none for the mmseg fixtures (their config text),
    the run's config for the detectron2 ones."""
    if fixture in ("semask_fpn_tiny", "vwformer_tiny"):
        return ()
    return ("--config_file", config_file(tmp_path, fixture, unchanged))


def unchanged(values) -> None:
    """A :func:`config_file` change that keeps the fixture's config as it is."""


def test_a_model_that_does_not_run_in_the_reload_check_is_a_conversion_error(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, pixel_values):
            raise ValueError("needs all four stages\nsecond line")

    with pytest.raises(common.ConversionError) as error:
        common.check_reload(Broken(), tmp_path, common.ReloadCheck(input_size=(64, 64)))
    assert str(error.value) == (
        "the converted model does not run on a seeded 1x3x64x64 input (ValueError: needs all four stages)"
    )


def _with_statistics(mean=None, std=None):
    def change(state_dict):
        if mean is not None:
            state_dict["pixel_mean"] = torch.tensor(mean).view(3, 1, 1)
        if std is not None:
            state_dict["pixel_std"] = torch.tensor(std).view(3, 1, 1)

    return change


IMAGENET_MEAN, IMAGENET_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


@pytest.mark.parametrize(
    ("family", "fixture"),
    [("semask_mask2former", "semask_mask2former_tiny"), ("vwformer_d2", "vw_mask2former_tiny")],
)
def test_pixel_statistics_buffers_that_contradict_the_config_file_are_refused(family, fixture, tmp_path, capsys):
    """The buffers silently overrode the config file's MODEL.PIXEL_MEAN / PIXEL_STD (0, 0, 0 / 1, 1, 1 in the
    fixtures), and the summary said the statistics came from --config_file."""
    checkpoint = bad_checkpoint(tmp_path, fixture, _with_statistics(IMAGENET_MEAN, [1.0, 1.0, 1.0]))
    config = config_file(tmp_path, fixture, unchanged)
    status, lines, output_dir = run_with(family, checkpoint, tmp_path, capsys, "--config_file", config)
    assert_refused(
        status,
        lines,
        output_dir,
        f"bad.pth: the checkpoint's pixel_mean buffer {IMAGENET_MEAN} differs from MODEL.PIXEL_MEAN = [0.0, 0.0, 0.0] "
        f"of --config_file {config}",
        "remove the pixel_mean / pixel_std buffers from the checkpoint or correct MODEL.PIXEL_MEAN",
    )


def test_pixel_statistics_only_the_checkpoint_has_are_used_and_said_so(tmp_path, capsys):
    def no_statistics(values):
        del values["MODEL"]["PIXEL_MEAN"], values["MODEL"]["PIXEL_STD"]

    fixture = "semask_mask2former_tiny"
    checkpoint = bad_checkpoint(tmp_path, fixture, _with_statistics(IMAGENET_MEAN, IMAGENET_STD))
    config = config_file(tmp_path, fixture, no_statistics)
    arguments = ["--config_file", config, "--skip_reload_check"]
    status, lines, output_dir = run_with("semask_mask2former", checkpoint, tmp_path, capsys, *arguments)
    assert status == 0, lines
    processor = json.loads((output_dir / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == pytest.approx([value / 255 for value in IMAGENET_MEAN])
    assert processor["image_std"] == pytest.approx([value / 255 for value in IMAGENET_STD])
    assert (
        "image_mean, image_std from the checkpoint's pixel_mean / pixel_std buffers"
        in (output_dir / "README.md").read_text()
    )
    # and the config's values where the buffers agree with them: named as the config's
    checkpoint = bad_checkpoint(tmp_path, fixture, _with_statistics([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]))
    shutil.rmtree(output_dir)
    arguments = ["--config_file", config_file(tmp_path, fixture, unchanged), "--skip_reload_check"]
    status, _, output_dir = run_with("semask_mask2former", checkpoint, tmp_path, capsys, *arguments)
    assert status == 0
    assert json.loads((output_dir / "preprocessor_config.json").read_text())["image_mean"] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("mean", "std", "lone"), [([0.0] * 3, None, "pixel_mean"), (None, [1.0] * 3, "pixel_std")])
def test_a_lone_pixel_statistics_buffer_is_named(mean, std, lone, tmp_path, capsys):
    """A lone pixel_mean buffer was silently dropped."""
    fixture = "semask_mask2former_tiny"
    checkpoint = bad_checkpoint(tmp_path, fixture, _with_statistics(mean, std))
    status, lines, output_dir = run_with(
        "semask_mask2former", checkpoint, tmp_path, capsys, "--config_file", config_file(tmp_path, fixture, unchanged)
    )
    assert_refused(status, lines, output_dir, f"bad.pth: {lone}: a normalisation buffer without", "expected both")


def test_a_full_disk_while_the_weights_are_written_is_one_line(tmp_path, capsys, monkeypatch):
    """safetensors' SafetensorError (not an OSError) escaped as a traceback."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_disk)
    out = tmp_path / "out"
    status = _cli("semask_fpn").main(fpn_arguments(out, "--skip_reload_check"))
    lines = capsys.readouterr().err.splitlines()
    assert status == 1 and lines == [f"error: cannot write {out} (No space left on device); it was not written"]
    assert os.listdir(tmp_path) == []


def test_a_full_disk_in_the_reload_check_is_one_line(tmp_path, capsys, monkeypatch):
    """torch.save's RuntimeError in the reload check's temporary folder (a full TMPDIR) escaped as a traceback."""
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(common.torch, "save", full_disk)
    out = tmp_path / "out"
    status = _cli("semask_fpn").main(fpn_arguments(out))
    lines = capsys.readouterr().err.splitlines()
    assert status == 1 and len(lines) == 1, lines
    assert re.fullmatch(
        rf"error: cannot write the reload check's temporary folder {re.escape(str(work))}/hf_semseg_reload_\w+ "
        r"\(RuntimeError: \[enforce fail at inline_container\.cc:672\] \. unexpected pos 704 vs 598; [\d.]+ MiB free "
        rf"there\); {re.escape(str(out))} was not written",
        lines[0],
    )
    assert os.listdir(work) == [] and os.listdir(tmp_path) == ["tmp"]


@pytest.mark.parametrize("interrupts", [1, 2], ids=["removal-finished", "removal-interrupted-twice"])
def test_sigterm_while_the_replaced_folder_is_removed_says_the_folder_is_written(
    interrupts, tmp_path, capsys, monkeypatch
):
    """SIGTERM while --overwrite removed the set-aside old folder: the message said the folder "was left unchanged"
    (it held the new model) and a hidden .out.old-XXXX folder was left without a word."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old model")
    real_rmtree, calls = shutil.rmtree, []

    def interrupted_rmtree(path, *args, **kwargs):
        if ".old-" in str(path) and len(calls) < interrupts:
            calls.append(path)
            raise common.Terminated()  # what the SIGTERM handler raises
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(common.shutil, "rmtree", interrupted_rmtree)
    status = _cli("semask_fpn").main(fpn_arguments(out, "--overwrite", "--skip_reload_check"))
    lines = capsys.readouterr().err.splitlines()
    assert status == 143 and (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    leftovers = [name for name in os.listdir(tmp_path) if name != "out"]
    if interrupts == 1:  # the removal is finished before the exit
        assert lines == [f"error: terminated (SIGTERM); {out} is written"] and leftovers == []
    else:
        assert len(leftovers) == 1 and leftovers[0].startswith(".out.old-")
        assert lines == [
            f"error: terminated (SIGTERM); {out} is written; the folder it replaced is left at "
            f"{tmp_path / leftovers[0]} (delete it)"
        ]


# ---------------------------------------------------------------------------------------------------------------
# A third audit: tensors no model holds, errors in the checkpoint's own key names, class names that do not fit,
# long output names, the config reader's size bound, Ctrl-C
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("convert", "expected"),
    [
        (lambda tensor: tensor.to(torch.float8_e4m3fn), "(torch.float8_e4m3fn, an 8-bit float)"),
        (lambda tensor: tensor.to_sparse(), "(torch.sparse_coo layout)"),
        (lambda tensor: tensor.to("meta"), "(meta device: no values)"),
    ],
    ids=["float8", "sparse", "meta"],
)
def test_tensors_without_a_dense_float_or_integer_value_are_refused(convert, expected, tmp_path, capsys):
    """An 8-bit float or a sparse tensor reached torch's "not implemented" in the finiteness check, a tensor saved
    from the meta device torch's "Cannot copy out of meta tensor" in load_state_dict: tracebacks."""
    key = "backbone.layers.0.blocks.0.mlp.fc1.weight"
    checkpoint = bad_checkpoint(tmp_path, "semask_fpn_tiny", lambda sd: sd.__setitem__(key, convert(sd[key])))
    status, lines, output_dir = run_cli("semask_fpn", checkpoint, tmp_path, capsys)
    assert_refused(status, lines, output_dir, "bad.pth: tensors no converted model can hold: ", f"{key} {expected}")


def test_missing_and_misshapen_tensors_are_named_by_the_checkpoint_keys(tmp_path, capsys):
    """The errors named only the converted model's keys (decode_head.classifier.bias), which the checkpoint never
    holds."""

    def change(state_dict):
        del state_dict["decode_head.conv_seg.bias"]
        state_dict["backbone.layers.3.blocks.1.mlp.fc2.weight"] = torch.zeros(3, 3)

    checkpoint = bad_checkpoint(tmp_path, "semask_fpn_tiny", change)
    status, lines, output_dir = run_cli("semask_fpn", checkpoint, tmp_path, capsys)
    assert_refused(
        status,
        lines,
        output_dir,
        "missing from the checkpoint: ['decode_head.conv_seg.bias (converted: decode_head.classifier.bias)']",
        "shape mismatches: ['backbone.layers.3.blocks.1.mlp.fc2.weight (converted: "
        "backbone.encoder.stages.3.blocks.1.mlp.fc2.weight): checkpoint (3, 3) vs model (256, 1024)']",
    )


def test_a_detectron2_tensor_of_another_shape_is_named_by_its_checkpoint_key(tmp_path, capsys):
    key = "backbone.layers.3.blocks.1.mlp.fc2.weight"
    checkpoint = bad_checkpoint(tmp_path, "semask_mask2former_tiny", lambda sd: sd.__setitem__(key, torch.zeros(3, 3)))
    status, lines, output_dir = run_cli("semask_d2", checkpoint, tmp_path, capsys, fixture="semask_mask2former_tiny")
    assert_refused(status, lines, output_dir, f"shape mismatches: ['{key} (converted: model.pixel_level_module.")


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        (["a", "b", "c", "d"], "meta['CLASSES'] names 4 classes, the weights have 5: the names cannot be matched"),
        (["a", "b", "c", "d", "e", "f"], "meta['CLASSES'] names 6 classes, the weights have 5"),
        (["a", "a", "c", "d", "e"], "meta['CLASSES'] names more than one class ['a']: a class name must name one"),
    ],
    ids=["fewer", "more", "repeated"],
)
def test_class_names_that_do_not_name_the_classes_one_each_are_refused(classes, expected, tmp_path, capsys):
    """Names not one per class were dropped for class_0, class_1, ... without a word; a repeated name gave a
    label2id without class 0."""
    checkpoint = changed_checkpoint(
        tmp_path, "semask_fpn_tiny", lambda checkpoint: checkpoint["meta"].__setitem__("CLASSES", classes)
    )
    status, lines, output_dir = run_cli("semask_fpn", checkpoint, tmp_path, capsys)
    assert_refused(status, lines, output_dir, expected)
    with pytest.raises(CheckpointError, match=r"^id2label names more than one class \['x'\]"):
        common.given_id2label({0: "x", 1: "x", 2: "y"}, 3)  # the detectron2 converters' class names


def test_a_long_output_folder_name_the_file_system_takes_is_written(tmp_path, capsys):
    """The hidden folders next to it (.{name}.write-test-..., .partial-, .old-) went past 255 bytes: "cannot write
    in ... (File name too long)" for a name mkdir takes."""
    out = tmp_path / ("x" * 240)
    status = _cli("semask_fpn").main(fpn_arguments(out, "--skip_reload_check"))
    assert status == 0, capsys.readouterr().err
    assert (out / "model.safetensors").is_file() and os.listdir(tmp_path) == [out.name]
    status = _cli("semask_fpn").main(fpn_arguments(out, "--skip_reload_check", "--overwrite"))
    assert status == 0 and os.listdir(tmp_path) == [out.name]


def test_a_config_that_doubles_a_list_step_by_step_is_refused(tmp_path):
    """The length bound held for [0] * n but not for a + a repeated: a 10**8-element list was built (49 s)."""
    from hf_semseg.conversion.run_config import parse_mmseg_config_text

    text = "a = [0] * 100000\nb = a + a\n"
    with pytest.raises(ConfigFileError, match=r"^c\.py, line 2: cannot evaluate `a \+ a`$"):
        parse_mmseg_config_text(text, "c.py")
    with pytest.raises(ConfigFileError, match=r"^c\.py, line 2: cannot evaluate `a \* a`$"):  # squaring, likewise
        parse_mmseg_config_text("a = 99999999999 * 99999999999\nb = a * a\n", "c.py")
    assert parse_mmseg_config_text("a = [1] * 3 + [2]\nb = 6 * 7\n", "c.py") == {"a": [1, 1, 1, 2], "b": 42}


def test_a_device_or_an_entry_that_is_not_a_state_dict_is_named_for_what_it_is(tmp_path, capsys):
    status, lines, _ = run_with("semask_fpn", "/dev/zero", tmp_path, capsys)
    assert status == 1 and lines == [
        "error: /dev/zero: not a regular file (a device, pipe or socket), expected a checkpoint file"
    ]
    torch.save({"state_dict": None, "meta": {}}, tmp_path / "none.pth")
    status, lines, _ = run_with("semask_fpn", tmp_path / "none.pth", tmp_path, capsys)
    assert status == 1 and lines == [
        f"error: {tmp_path / 'none.pth'}: its 'state_dict' entry is a NoneType (None), expected a dict of tensors "
        "(the state dict)"
    ]


def test_ctrl_c_is_one_line_and_cleans_up(tmp_path, capsys, monkeypatch):
    """Ctrl-C ended in a 30-100 line KeyboardInterrupt traceback (the cleanup was right)."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "check_reload", interrupted)
    out = tmp_path / "out"
    status = _cli("semask_fpn").main(fpn_arguments(out))
    lines = capsys.readouterr().err.splitlines()
    assert status == 130 and lines == [f"error: interrupted (Ctrl-C); {out} was not written"]
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# A third audit: paths whose status cannot be read, Ctrl-C while a converter starts
# ---------------------------------------------------------------------------------------------------------------

#: a file name over the 255 bytes file systems take: stat() fails with ENAMETOOLONG (as root too), not ENOENT
LONG_NAME = "x" * 300


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (
            "--checkpoint_path",
            "{path}: cannot be accessed (File name too long), expected a checkpoint file you can read",
        ),
        (
            "--output_dir",
            "--output_dir {path}: cannot be accessed (File name too long), expected a folder you can write to",
        ),
        (
            "--config_file",
            "--config_file {path}: cannot be accessed (File name too long), expected an mmseg config you can read",
        ),
    ],
)
def test_a_path_whose_status_cannot_be_read_is_one_line_naming_it(option, expected, tmp_path, capsys):
    """Python 3.11's Path.is_dir / exists raise OSError for a name over 255 bytes (or a folder the user cannot
    enter): a 20-30 line traceback instead of the path and the system's reason."""
    path = tmp_path / LONG_NAME
    arguments = {"--checkpoint_path": fixture_dir(FPN_CHECKPOINT) / "original_checkpoint.pth"}
    arguments["--output_dir"] = tmp_path / "out"
    arguments[option] = path
    status = _cli("semask_fpn").main([str(item) for pair in arguments.items() for item in pair])
    lines = capsys.readouterr().err.splitlines()
    assert status == 1 and lines == ["error: " + expected.format(path=path)], lines
    assert os.listdir(tmp_path) == []


def test_a_folder_the_user_cannot_enter_or_list_is_named_with_the_reason(tmp_path, monkeypatch):
    """As root no permission is ever denied: stat() and listdir() fail here as they do for a user who cannot enter
    (or list) the folder (EACCES), which Path.is_dir / iterdir raised as a bare PermissionError."""
    private, unlisted = tmp_path / "private", tmp_path / "unlisted"
    unlisted.mkdir()
    (unlisted / "old.txt").write_text("old")
    real_stat, real_listdir = os.stat, os.listdir

    def stat(path, *args, **kwargs):
        if str(path).startswith(str(private)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_stat(path, *args, **kwargs)

    def listdir(path="."):
        if str(path) == str(unlisted):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "listdir", listdir)
    checkpoint = private / "checkpoint.pth"
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(checkpoint, MMSEG, "mmseg")
    assert str(refused.value) == (
        f"{checkpoint}: cannot be accessed (Permission denied), expected a checkpoint file you can read"
    )
    with pytest.raises(ConversionError) as refused:
        common.check_output_dir(private / "out")
    assert str(refused.value) == (
        f"--output_dir {private / 'out'}: cannot be accessed (Permission denied), expected a folder you can write to"
    )
    with pytest.raises(ConversionError) as refused:
        common.check_output_dir(unlisted, overwrite=True)
    assert str(refused.value) == (
        f"--output_dir {unlisted} cannot be listed (Permission denied), expected a folder you can read and write"
    )
    with pytest.raises(ConfigFileError) as refused:
        read_mmseg_config(private / "run.py")
    assert str(refused.value) == (
        f"--config_file {private / 'run.py'}: cannot be accessed (Permission denied), expected an mmseg config you "
        "can read"
    )


def _loads_extension_modules(pid: int) -> bool:
    """Whether the process has mapped a compiled module of an installed package (its imports are under way: the
    first, numpy's or regex's, comes some 0.1 s after the start; torch and transformers take seconds more)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return any("site-packages" in line and ".so" in line for line in maps)
    except OSError:  # the process has ended
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="the imports are seen starting in /proc/PID/maps")
@pytest.mark.parametrize(
    ("family", "fixture"),
    [
        ("semask_fpn", "semask_fpn_tiny"),
        ("semask_d2", "semask_mask2former_tiny"),
        ("semask_mask2former", "semask_mask2former_tiny"),
        ("vwformer", "vwformer_tiny"),
        ("vwformer_d2", "vw_mask2former_tiny"),
    ],
)
def test_ctrl_c_while_a_converter_starts_is_one_line(family, fixture, tmp_path):
    """Ctrl-C in a converter's first seconds, while torch, transformers and hf_semseg were imported at the script's
    top, was an 80-line traceback and the process killed by SIGINT (exit -2). The signal is sent as soon as the
    script's imports are seen under way, seconds before they end."""
    out = tmp_path / "out"
    script = REPO_ROOT / "conversion" / f"convert_{family}_to_hf.py"
    checkpoint = fixture_dir(fixture) / "original_checkpoint.pth"
    command = [sys.executable, str(script), "--checkpoint_path", str(checkpoint), "--output_dir", str(out)]
    # a shell that starts jobs in the background ignores SIGINT in them, and Python keeps an ignored SIGINT ignored:
    # the child gets the default disposition, as a command typed at a terminal has
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        while not _loads_extension_modules(process.pid):
            assert process.poll() is None, ("the converter ended before its imports were seen", process.communicate())
            time.sleep(0.002)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines = stderr.splitlines()
    assert process.returncode == 130 and lines == ["error: interrupted (Ctrl-C) while starting; nothing was written"], (
        process.returncode,
        lines[-5:],
    )
    assert os.listdir(tmp_path) == []
