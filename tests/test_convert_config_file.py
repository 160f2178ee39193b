"""No guessing (issue 11, item 1): the values a checkpoint's weights do not hold come from the run's config file
(``--config_file``: an mmseg ``.py`` read without running it, a detectron2 ``config.yaml``), the checkpoint's own config
text, or the released variant with exactly its weights; otherwise the converter stops and names them."""

import json
import re

import pytest
import torch
import yaml
from safetensors.torch import load_file
from script_helpers import load_example

from hf_semseg.conversion.common import CheckpointError
from hf_semseg.conversion.run_config import (
    ConfigFileError,
    parse_mmseg_config_text,
    read_detectron2_config,
    read_mmseg_config,
)
from hf_semseg.models.modeling_semask_mask2former import semantic_scores

from conftest import REPO_ROOT, fixture_config_file, fixture_dir


FAMILIES = {
    "semask_fpn_tiny": "semask_fpn",
    "vwformer_tiny": "vwformer",
    "vwformer_city_tiny": "vwformer",
    "semask_mask2former_tiny": "semask_mask2former",
    "semask_mask2former_tiny_ade150": "semask_mask2former",
}
# what each fixture's converter must say is missing without its config
MISSING = {
    "semask_fpn": ["model.backbone.sem_window_size"],
    "vwformer": ["model.decode_head.nheads", "model.decode_head.short_cut"],
    "semask_mask2former": [
        "MODEL.SWIN.SEM_WINDOW_SIZE",
        "MODEL.MASK_FORMER.PRE_NORM",
        "MODEL.MASK_FORMER.SIZE_DIVISIBILITY",
    ],
}


def run_converter(family: str, capsys, *arguments) -> tuple[int, str, list[str]]:
    converter = load_example(REPO_ROOT / "conversion" / f"convert_{family}_to_hf.py")
    status = converter.main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return status, captured.out, captured.err.splitlines()


def without_config_text(fixture: str, tmp_path) -> str:
    """The fixture's checkpoint without the config text mmseg saves in ``meta`` (a detectron2 one has none)."""
    checkpoint = torch.load(fixture_dir(fixture) / "original_checkpoint.pth", weights_only=True)
    if "meta" in checkpoint:
        checkpoint["meta"] = {key: value for key, value in checkpoint["meta"].items() if key != "config"}
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    return str(path)


@pytest.mark.parametrize("fixture", sorted(FAMILIES))
def test_each_fixture_converts_with_its_config_file_and_stops_without_it(fixture, tmp_path, capsys):
    family = FAMILIES[fixture]
    checkpoint = without_config_text(fixture, tmp_path)
    # without a config: one line naming every missing value and the flag that supplies it, nothing written
    status, _, errors = run_converter(family, capsys, "--checkpoint_path", checkpoint, "--output_dir", tmp_path / "a")
    assert status == 1 and len(errors) == 1 and errors[0].startswith("error: "), errors
    for path in MISSING[family]:
        assert path in errors[0], (path, errors[0])
    assert "--config_file PATH" in errors[0] and "--variant NAME" in errors[0]
    assert not (tmp_path / "a").exists()
    # with the config file the run would have written: converted, and the saved model is the original
    config_file = fixture_config_file(fixture, tmp_path)
    arguments = ["--checkpoint_path", checkpoint, "--output_dir", tmp_path / "b", "--config_file", config_file]
    status, summary, errors = run_converter(family, capsys, *arguments)
    assert status == 0 and errors == [], errors
    assert f"from --config_file {config_file}" in summary and "no released variant has these weights" in summary
    from transformers import AutoModelForSemanticSegmentation

    model = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "b").eval()
    inputs = load_file(fixture_dir(fixture) / "inputs.safetensors")
    expected = load_file(fixture_dir(fixture) / "outputs.safetensors")
    with torch.no_grad():
        logits = model(inputs["pixel_values"]).logits
    reference = (
        semantic_scores(expected["pred_logits"], expected["pred_masks"])
        if family == "semask_mask2former"
        else expected["logits"]
    )
    assert (logits - reference).abs().max() < 2e-4
    card = (tmp_path / "b" / "README.md").read_text()
    assert "Values the weights do not hold: " in card and f"from --config_file {config_file}" in card


def test_a_semantic_window_only_the_config_knows_is_taken_from_it(tmp_path, capsys):
    """The issue's case: a user's run with SEM_WINDOW_SIZE 6 is converted with 6, not the released rule's 7."""
    fixture = "semask_mask2former_tiny"
    config = yaml.safe_load(fixture_config_file(fixture, tmp_path).read_text())
    config["MODEL"]["SWIN"]["SEM_WINDOW_SIZE"] = 6
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    checkpoint = fixture_dir(fixture) / "original_checkpoint.pth"
    status, summary, errors = run_converter(
        "semask_mask2former",
        capsys,
        "--checkpoint_path",
        checkpoint,
        "--output_dir",
        tmp_path / "out",
        "--config_file",
        config_file,
        "--skip_reload_check",
    )
    assert status == 0, errors
    assert "semantic_window_size=6" in summary
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["backbone_config"]["semantic_window_size"] == 6


def test_a_key_the_run_config_leaves_out_takes_the_original_code_default(tmp_path, capsys):
    config = yaml.safe_load(fixture_config_file("semask_mask2former_tiny", tmp_path).read_text())
    del config["MODEL"]["SWIN"]["SEM_WINDOW_SIZE"], config["MODEL"]["MASK_FORMER"]["PRE_NORM"]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    status, summary, errors = run_converter(
        "semask_mask2former",
        capsys,
        "--checkpoint_path",
        fixture_dir("semask_mask2former_tiny") / "original_checkpoint.pth",
        "--output_dir",
        tmp_path / "out",
        "--config_file",
        config_file,
        "--skip_reload_check",
    )
    assert status == 0, errors
    # add_semask_config's SEM_WINDOW_SIZE 7 and add_maskformer2_config's PRE_NORM False, said to be defaults
    assert "semantic_window_size=7 (original default), pre_norm=False (original default)" in summary


def refused_with(fixture: str, config_file, tmp_path, capsys) -> list[str]:
    """Converts the fixture's checkpoint with ``config_file``: exit status 1, one error line (returned), nothing
    written."""
    checkpoint = fixture_dir(fixture) / "original_checkpoint.pth"
    arguments = ["--checkpoint_path", checkpoint, "--output_dir", tmp_path / "out", "--config_file", config_file]
    status, _, errors = run_converter(FAMILIES[fixture], capsys, *arguments)
    assert status == 1 and len(errors) == 1 and errors[0].startswith("error: "), errors
    assert not (tmp_path / "out").exists()
    return errors


@pytest.mark.parametrize(
    "fixture, change, expected",
    [
        (
            "semask_mask2former_tiny",
            lambda config: config["MODEL"]["SEM_SEG_HEAD"].update(NUM_CLASSES=150),
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES = 150, but the checkpoint's weights have 5",
        ),
        (
            "semask_mask2former_tiny",
            lambda config: config["MODEL"]["SEM_SEG_HEAD"].update(PIXEL_DECODER_NAME="PixelFANDecoder"),
            "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = 'PixelFANDecoder', but the checkpoint's weights have "
            "'MSDeformAttnPixelDecoder'",
        ),
        (
            "semask_mask2former_tiny",
            lambda config: config["MODEL"]["SWIN"].update(SEM_WINDOW_SIZE="seven"),
            "MODEL.SWIN.SEM_WINDOW_SIZE = 'seven': expected a positive integer",
        ),
        (
            "semask_mask2former_tiny",
            lambda config: config.update(INPUT={"FORMAT": "BGR"}),
            "INPUT.FORMAT = 'BGR': the model was trained on BGR images",
        ),
    ],
)
def test_a_detectron2_config_of_another_run_is_refused(fixture, change, expected, tmp_path, capsys):
    config = yaml.safe_load(fixture_config_file(fixture, tmp_path).read_text())
    change(config)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    errors = refused_with(fixture, config_file, tmp_path, capsys)
    assert expected in errors[0] and "config.yaml" in errors[0], errors


@pytest.mark.parametrize(
    "fixture, old, new, expected",
    [
        ("vwformer_tiny", "'nheads': 2", "'nheads': 0", "model.decode_head.nheads = 0: expected a positive integer"),
        ("vwformer_tiny", "'type': 'VWHead'", "'type': 'VWCityHead'", "model.decode_head.type = 'VWCityHead'"),
        ("vwformer_city_tiny", "'num_classes': 19", "'num_classes': 150", "model.decode_head.num_classes = 150"),
        ("semask_fpn_tiny", "'embed_dim': 32", "'embed_dim': 96", "model.backbone.embed_dim = 96, but the"),
        ("semask_fpn_tiny", "model = ", "import os\nmodel = ", "line 1: `import os` is not a plain assignment"),
    ],
)
def test_an_mmseg_config_of_another_run_is_refused(fixture, old, new, expected, tmp_path, capsys):
    config_file = fixture_config_file(fixture, tmp_path)
    text = config_file.read_text()
    assert old in text
    config_file.write_text(text.replace(old, new, 1))
    errors = refused_with(fixture, config_file, tmp_path, capsys)
    assert expected in errors[0], errors


def test_a_named_variant_that_the_config_contradicts_is_refused():
    from script_helpers import key_list_state_dict

    from hf_semseg.conversion.semask_fpn import infer_config_and_settings

    state_dict = key_list_state_dict(fixture_dir("semask_keys") / "fpn_ade20k_tiny.json")
    config, settings = infer_config_and_settings(state_dict)
    assert settings.variant == "semask-fpn-tiny-ade20k"  # the released layout: no config needed, and it says so
    assert settings.describe().startswith(
        "semantic_window_size=7 from released variant semask-fpn-tiny-ade20k (same weights, names and shapes)"
    )
    other = {"config": "model = dict(backbone=dict(sem_window_size=5))"}
    with pytest.raises(ConfigFileError, match=r"sem_window_size = 5, but the released variant semask-fpn-tiny-ade20k"):
        infer_config_and_settings(state_dict, other, variant="semask-fpn-tiny-ade20k")
    with pytest.raises(CheckpointError, match=r"--variant semask-fpn-small-ade20k: the checkpoint's weights are not"):
        infer_config_and_settings(state_dict, variant="semask-fpn-small-ade20k")


def test_missing_config_files_are_one_line_errors(tmp_path, capsys):
    checkpoint = fixture_dir("semask_fpn_tiny") / "original_checkpoint.pth"
    status, _, errors = run_converter(
        "semask_fpn",
        capsys,
        "--checkpoint_path",
        checkpoint,
        "--output_dir",
        tmp_path / "out",
        "--config_file",
        tmp_path / "absent.py",
    )
    absent = tmp_path / "absent.py"
    assert status == 1 and errors == [f"error: --config_file {absent}: no such file (an mmseg config)"]


# ---------------------------------------------------------------------------------------------------------------
# reading config files without running them
# ---------------------------------------------------------------------------------------------------------------


def test_mmseg_configs_are_evaluated_without_running_them(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model.py").write_text(
        "norm_cfg = dict(type='SyncBN', requires_grad=True)\n"
        "model = dict(type='EncoderDecoder', backbone=dict(type='X', depths=[2] * 4, drop_path_rate=0.3),"
        " decode_head=dict(num_classes=150, norm_cfg=norm_cfg, loss=dict(type='CE', weight=1.0)))\n"
    )
    (tmp_path / "run.py").write_text(
        '"""a run"""\n_base_ = ["base/model.py"]\n'
        "crop_size = (512, 512)\n"
        "model = dict(backbone=dict(drop_path_rate=0.1 * 2, window=-(-7)), "
        "decode_head=dict(num_classes=19, loss=dict(_delete_=True, type='Focal')))\n"
        "extra = {**dict(a=1), 'b': crop_size[::1] if False else 2}\n".replace("crop_size[::1] if False else 2", "2")
    )
    config = read_mmseg_config(tmp_path / "run.py")
    assert config["model"]["backbone"] == {"type": "X", "depths": [2, 2, 2, 2], "drop_path_rate": 0.2, "window": 7}
    assert config["model"]["decode_head"]["loss"] == {"type": "Focal"}  # _delete_ replaces the base's dict
    assert config["model"]["decode_head"]["norm_cfg"] == {"type": "SyncBN", "requires_grad": True}
    assert config["model"]["decode_head"]["num_classes"] == 19 and config["crop_size"] == (512, 512)
    assert config["extra"] == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x = open('/etc/passwd').read()", r"line 1: cannot read `open\('/etc/passwd'\).read\(\)` without running"),
        ("x = [0] * 10 ** 9", "line 1: cannot"),
        ("x = y", "line 1: 'y' is not defined"),
        ("for i in range(3):\n    pass", "line 1: `for i in range\\(3\\):` is not a plain assignment"),
        ("x = dict(", "not a Python \\(mmseg\\) config: line 1"),
        ("x = 1 / 0", "line 1: cannot evaluate `1 / 0`"),
    ],
)
def test_code_in_an_mmseg_config_is_refused_naming_the_line(text, expected):
    with pytest.raises(ConfigFileError, match=expected):
        parse_mmseg_config_text(text, "run.py")


def test_base_files_that_are_missing_or_cyclic_are_named(tmp_path):
    (tmp_path / "a.py").write_text("_base_ = 'b.py'\nx = 1\n")
    (tmp_path / "b.py").write_text("_base_ = ['a.py']\n")
    with pytest.raises(ConfigFileError, match="_base_ files include each other"):
        read_mmseg_config(tmp_path / "a.py")
    (tmp_path / "c.py").write_text("_base_ = 'absent.py'\n")
    with pytest.raises(ConfigFileError, match="absent.py: no such file"):
        read_mmseg_config(tmp_path / "c.py")


def test_detectron2_configs_merge_their_base(tmp_path):
    (tmp_path / "base.yaml").write_text("MODEL:\n  SWIN:\n    EMBED_DIM: 96\n    SEM_WINDOW_SIZE: 7\n")
    (tmp_path / "run.yaml").write_text("_BASE_: base.yaml\nMODEL:\n  SWIN:\n    SEM_WINDOW_SIZE: 12\n")
    assert read_detectron2_config(tmp_path / "run.yaml") == {
        "MODEL": {"SWIN": {"EMBED_DIM": 96, "SEM_WINDOW_SIZE": 12}}
    }
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigFileError, match="holds list, not a detectron2 config mapping"):
        read_detectron2_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("MODEL: [unclosed\n")
    with pytest.raises(ConfigFileError, match="bad.yaml: not a YAML file"):
        read_detectron2_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("_base_ = 5\n", "5"),
        ("_base_ = None\n", "None"),
        ("_base_ = dict(a='x.py')\n", "{'a': 'x.py'}"),
        ("_base_ = ['a.py', 3]\n", "['a.py', 3]"),
    ],
)
def test_a_base_that_is_not_file_names_is_refused_naming_it(text, shown, tmp_path, capsys):
    """``_base_ = 5`` or ``None`` was a TypeError traceback (``list(bases)`` ran before the check of its entries);
    ``_base_ = dict(a='x.py')`` was read as a file named ``a``."""
    config_file = tmp_path / "run.py"
    config_file.write_text(text)
    errors = refused_with("semask_fpn_tiny", config_file, tmp_path, capsys)
    assert errors == [
        f"error: --config_file {config_file}: _base_ = {shown}, expected a file name or a list of file names (the "
        "configs it builds on)"
    ]


@pytest.mark.parametrize(
    ("fixture", "name", "text"),
    [
        ("semask_fpn_tiny", "unary.py", "a = " + "-" * 2900 + "1\n"),  # ast.parse takes it; evaluating it recursed
        ("semask_fpn_tiny", "parser.py", "a = " + "-" * 20000 + "1\n"),  # past the parser's own stack
        ("semask_fpn_tiny", "sum.py", "a = " + " + ".join(["1"] * 3000) + "\n"),
        ("semask_fpn_tiny", "names.py", "a0 = 1\n" + "".join(f"a{i} = dict(x=a{i - 1})\n" for i in range(1, 3000))),
        ("semask_mask2former_tiny", "lists.yaml", "A: " + "[" * 5000 + "]" * 5000 + "\n"),
    ],
)
def test_a_config_nested_too_deeply_is_refused_in_one_line(fixture, name, text, tmp_path, capsys):
    """Text nested some thousands of levels deep (hand-made or corrupt: no run's config is) was a RecursionError
    traceback from the mmseg evaluator and from yaml's composer."""
    config_file = tmp_path / name
    config_file.write_text(text)
    errors = refused_with(fixture, config_file, tmp_path, capsys)
    assert re.fullmatch(rf"error: (--config_file )?{re.escape(str(config_file))}: nested too deeply .*", errors[0])


def test_config_text_nested_too_deeply_is_a_config_file_error():
    """The checkpoint's own config text (``meta['config']``) is read by the same evaluator."""
    with pytest.raises(ConfigFileError, match=r"^meta\['config'\]: nested too deeply to be read"):
        parse_mmseg_config_text("a = " + "-" * 2900 + "1\n", "meta['config']")
