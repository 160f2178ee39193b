"""Bad tensors in otherwise valid checkpoints (issue 11): non-finite values and tensors the converters reshape, split or
index with a wrong shape are refused by every converter's command line - exit status 1, one ``error:`` line naming
the original key and the shapes, no traceback, no output folder - and a converted checkpoint's card is titled with the
model's name."""

import math
import re
from string import Template

import pytest
import torch
from script_helpers import load_example

from hf_semseg.conversion.common import CheckpointError, check_finite, split_fused_qkv

from conftest import REPO_ROOT, fixture_config_file, fixture_dir


SCRIPTS = REPO_ROOT / "conversion"


def _cli(family: str):
    return load_example(SCRIPTS / f"convert_{family}_to_hf.py")


def _original(fixture: str) -> tuple[dict, str]:
    """The fixture's checkpoint and the entry holding its state dict (mmseg ``state_dict``, detectron2 ``model``)."""
    checkpoint = torch.load(fixture_dir(fixture) / "original_checkpoint.pth", weights_only=True)
    return checkpoint, ("state_dict" if "state_dict" in checkpoint else "model")


def bad_checkpoint(tmp_path, fixture: str, replace) -> str:
    """Saves the fixture's checkpoint with its state dict changed by ``replace(state_dict)`` (in place)."""
    checkpoint, entry = _original(fixture)
    state_dict = dict(checkpoint[entry])
    replace(state_dict)
    checkpoint[entry] = state_dict
    path = tmp_path / "bad.pth"
    torch.save(checkpoint, path)
    return str(path)


def run_cli(
    family: str, checkpoint: str, tmp_path, capsys, fixture: str | None = None
) -> tuple[int, list[str], object]:
    """Runs the family's converter in-process: exit status, the lines on stderr, and the output folder; with
    ``fixture``, passing that fixture's run config (``--config_file``) as a user would."""
    output_dir = tmp_path / "out"
    arguments = ["--checkpoint_path", checkpoint, "--output_dir", str(output_dir)]
    if fixture is not None:
        (tmp_path / "run_config").mkdir(exist_ok=True)
        arguments += ["--config_file", str(fixture_config_file(fixture, tmp_path / "run_config"))]
    status = _cli(family).main(arguments)
    return status, capsys.readouterr().err.splitlines(), output_dir


def assert_refused(status, lines, output_dir, *expected: str) -> str:
    """Exit status 1, exactly one ``error:`` line holding every ``expected`` text, nothing written next to the
    checkpoint."""
    assert status == 1
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not output_dir.exists()
    written = sorted(path.name for path in output_dir.parent.iterdir())
    assert written in (["bad.pth"], ["bad.pth", "run_config"]), written  # no temporary folder either
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# non-finite values
# ---------------------------------------------------------------------------------------------------------------

NAN_CASES = [
    ("semask_fpn", "semask_fpn_tiny", "backbone.layers.0.blocks.0.mlp.fc1.weight"),
    ("vwformer", "vwformer_tiny", "decode_head.conv_seg.weight"),
    ("vwformer", "vwformer_city_tiny", "decode_head.attn.0.in_proj_weight"),
    ("semask_mask2former", "semask_mask2former_tiny", "sem_seg_head.predictor.query_feat.weight"),
]


@pytest.mark.parametrize(("family", "fixture", "key"), NAN_CASES, ids=[case[1] for case in NAN_CASES])
def test_non_finite_values_are_refused_naming_the_keys(family, fixture, key, tmp_path, capsys):
    def poison(state_dict):
        state_dict[key] = state_dict[key].clone()
        state_dict[key].view(-1)[0] = math.nan

    status, lines, output_dir = run_cli(family, bad_checkpoint(tmp_path, fixture, poison), tmp_path, capsys, fixture)
    line = assert_refused(status, lines, output_dir, "bad.pth", "non-finite", repr(key))
    assert "1 tensor:" in line


def test_many_non_finite_tensors_are_named_ten_and_counted():
    state_dict = {f"layer.{index}.weight": torch.full((2,), math.inf) for index in range(13)}
    state_dict["index"] = torch.zeros(2, dtype=torch.long)  # integer tensors have no non-finite values
    state_dict["meta"] = torch.empty(3, device="meta")  # nor do tensors without values
    with pytest.raises(CheckpointError) as error:
        check_finite(state_dict)
    message = str(error.value)
    assert "13 tensors" in message and "and 3 more" in message
    assert "layer.9.weight" in message and "layer.10.weight" not in message
    check_finite({"a": torch.zeros(2), "b": torch.empty(2, device="meta")})


# ---------------------------------------------------------------------------------------------------------------
# tensors the converters reshape, split or index
# ---------------------------------------------------------------------------------------------------------------


def _replaced(key: str, shape: tuple[int, ...], dtype=torch.float32):
    def replace(state_dict):
        assert key in state_dict, key
        state_dict[key] = torch.zeros(shape, dtype=dtype)

    return replace


# (family, fixture, original key, wrong shape, expected shape, dtype)
SHAPE_CASES = [
    # relative_position_index: (w*w, w*w) for the window of the block's bias table (else a bare torch error)
    (
        "semask_fpn",
        "semask_fpn_tiny",
        "backbone.layers.1.blocks.0.attn.relative_position_index",
        (49, 50),
        (49, 49),
        torch.long,
    ),
    (
        "semask_fpn",
        "semask_fpn_tiny",
        "backbone.layers.0.blocks.1.attn.relative_position_index",
        (16, 16),
        (49, 49),
        torch.long,
    ),
    (
        "vwformer",
        "vwformer_tiny",
        "backbone.stages.0.blocks.0.attn.w_msa.relative_position_index",
        (16, 15),
        (16, 16),
        torch.long,
    ),
    (
        "semask_mask2former",
        "semask_mask2former_tiny",
        "backbone.layers.2.blocks.1.attn.relative_position_index",
        (49,),
        (49, 49),
        torch.long,
    ),
    # the patch merging reduction / norm reordered from nn.Unfold's channel order
    ("vwformer", "vwformer_tiny", "backbone.stages.1.downsample.reduction.weight", (128, 250), (128, 256), None),
    ("vwformer", "vwformer_tiny", "backbone.stages.0.downsample.norm.weight", (126,), (128,), None),
    # fused q, k, v projections split in three
    ("vwformer", "vwformer_tiny", "backbone.stages.2.blocks.0.attn.w_msa.qkv.weight", (384, 96), (384, 128), None),
    ("vwformer", "vwformer_tiny", "backbone.stages.2.blocks.0.attn.w_msa.qkv.bias", (383,), (384,), None),
    ("vwformer", "vwformer_city_tiny", "decode_head.attn.1.in_proj_weight", (191, 64), (192, 64), None),
    ("vwformer", "vwformer_city_tiny", "decode_head.attn.1.in_proj_bias", (96,), (192,), None),
    (
        "semask_mask2former",
        "semask_mask2former_tiny",
        "sem_seg_head.predictor.transformer_self_attention_layers.1.self_attn.in_proj_weight",
        (96, 33),
        (96, 32),
        None,
    ),
    (
        "semask_mask2former",
        "semask_mask2former_tiny",
        "sem_seg_head.predictor.transformer_self_attention_layers.0.self_attn.in_proj_bias",
        (93,),
        (96,),
        None,
    ),
    # the no-object weight read by index
    ("semask_mask2former", "semask_mask2former_tiny", "criterion.empty_weight", (5,), (6,), None),
]


@pytest.mark.parametrize(
    ("family", "fixture", "key", "shape", "expected", "dtype"),
    SHAPE_CASES,
    ids=[f"{case[1]}-{case[2].split('.', 1)[1]}" for case in SHAPE_CASES],
)
def test_wrong_shapes_are_refused_naming_the_key_and_the_shapes(
    family, fixture, key, shape, expected, dtype, tmp_path, capsys
):
    replace = _replaced(key, shape, dtype or torch.float32)
    status, lines, output_dir = run_cli(family, bad_checkpoint(tmp_path, fixture, replace), tmp_path, capsys, fixture)
    assert_refused(status, lines, output_dir, "bad.pth", f"{key}: shape {shape}, expected {expected}")


def test_a_1x1_convolution_that_is_not_1x1_is_refused(tmp_path, capsys):
    key = "decode_head.attn.0.theta.conv.weight"
    checkpoint = bad_checkpoint(tmp_path, "vwformer_tiny", _replaced(key, (64, 64, 3, 3)))
    status, lines, output_dir = run_cli("vwformer", checkpoint, tmp_path, capsys)
    assert_refused(status, lines, output_dir, f"{key}: shape (64, 64, 3, 3), expected (64, 64, 1, 1)")


def test_pixel_statistics_of_another_length_are_refused(tmp_path, capsys):
    def add_statistics(state_dict):
        state_dict["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53, 0.0]).view(4, 1, 1)
        state_dict["pixel_std"] = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)

    checkpoint = bad_checkpoint(tmp_path, "semask_mask2former_tiny", add_statistics)
    status, lines, output_dir = run_cli("semask_mask2former", checkpoint, tmp_path, capsys)
    assert_refused(status, lines, output_dir, "bad.pth", "pixel_mean: shape (4, 1, 1), expected (3, 1, 1)")


def test_a_tensor_of_the_wrong_rank_read_for_the_config_is_refused(tmp_path, capsys):
    key = "backbone.patch_embed.proj.weight"
    checkpoint = bad_checkpoint(tmp_path, "semask_fpn_tiny", _replaced(key, (32, 3, 16)))
    status, lines, output_dir = run_cli("semask_fpn", checkpoint, tmp_path, capsys)
    assert_refused(status, lines, output_dir, f"{key}: shape (32, 3, 16), expected 4 dimensions")


def test_split_fused_qkv_checks_before_splitting():
    weight = torch.arange(12.0).view(6, 2)
    parts = split_fused_qkv("w", weight, "p", "weight", dim=2)
    assert [tuple(part.shape) for part in parts.values()] == [(2, 2)] * 3
    with pytest.raises(CheckpointError, match=re.escape("w: shape (6, 2), expected (9, 3)")):
        split_fused_qkv("w", weight, "p", "weight", dim=3)
    with pytest.raises(CheckpointError, match=re.escape("b: shape (7,), expected (3 x dim)")):
        split_fused_qkv("b", torch.zeros(7), "p", "bias")
    with pytest.raises(CheckpointError, match=re.escape("w: shape (6,), expected (3 x dim, dim)")):
        split_fused_qkv("w", torch.zeros(6), "p", "weight")


# ---------------------------------------------------------------------------------------------------------------
# model card titles
# ---------------------------------------------------------------------------------------------------------------


def test_the_card_is_titled_with_the_architecture_and_names_the_class_count_once(tmp_path, capsys):
    checkpoint = str(fixture_dir("semask_fpn_tiny") / "original_checkpoint.pth")
    status, _, output_dir = run_cli("semask_fpn", checkpoint, tmp_path, capsys)
    assert status == 0
    card = (output_dir / "README.md").read_text()
    title = next(line for line in card.splitlines() if line.startswith("# "))
    match = re.fullmatch(r"# SeMask-Swin \(embed 32, depths 2-2-2-2\) Semantic-FPN, (\d+) classes", title)
    assert match, title
    assert "original_checkpoint" not in title and "<user>/original_checkpoint" not in card
    assert len(re.findall(rf"\b{match.group(1)} classes\b", card)) == 1
    assert "| dataset | unknown |" in card


@pytest.mark.parametrize(
    ("fixture", "title"),
    [
        ("vwformer_tiny", "Swin (embed 32, depths 2-2-2-2) VWFormer (vw head), 5 classes"),
        ("vwformer_city_tiny", "ConvNeXt (widths 16-32-64-128, depths 1-1-2-1) VWFormer (vw_city head), 19 classes"),
    ],
)
def test_vwformer_cards_are_titled_with_the_backbone_and_head(fixture, title):
    from hf_semseg.conversion.common import build_image_processor
    from hf_semseg.conversion.model_card import vwformer_card_fields
    from hf_semseg.conversion.vwformer import convert

    conversion = convert(fixture_dir(fixture) / "original_checkpoint.pth")
    fields = vwformer_card_fields(conversion, build_image_processor(conversion))
    assert fields["model_name"] == title
    assert fields["repo_id"] == "<user>/" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def test_a_registered_variant_card_is_titled_with_the_variant_name():
    from pathlib import Path

    from test_convert_semask_fpn import state_dict_from_key_list

    from hf_semseg.conversion.common import Conversion, build_image_processor
    from hf_semseg.conversion.model_card import semask_fpn_card_fields
    from hf_semseg.conversion.semask_fpn import infer_config_and_variant
    from hf_semseg.models.modeling_semask_swin import SeMaskSwinForSemanticSegmentation

    config, variant = infer_config_and_variant(state_dict_from_key_list("fpn_ade20k_tiny"))
    with torch.device("meta"):
        model = SeMaskSwinForSemanticSegmentation(config)
    conversion = Conversion(Path("original_checkpoint.pth"), model, variant=variant)
    fields = semask_fpn_card_fields(conversion, build_image_processor(conversion))
    # the fields the output folder's writer adds (the reload check's line) are left as placeholders
    card = Template((REPO_ROOT / "model_cards" / "semask_fpn.md").read_text()).safe_substitute(fields)
    assert "\n# semask-fpn-tiny-ade20k\n" in card and "original_checkpoint\n" not in card
    assert card.count("150 classes") == 1 and "| dataset | ADE20K, 150 classes |" in card
