"""The converter of every SeMask detectron2 checkpoint (``conversion/convert_semask_d2_to_hf.py``): the head told from
the keys, every released layout with the original's parameter count, the values the weights do not hold named when no
source has them, and each shared fixture reproduced after a fresh-process load without hf-semseg."""

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from script_helpers import key_list_state_dict, load_example

import hf_semseg
from hf_semseg.conversion.common import CheckpointError, check_against_model, describe_provenance, write_output_folder
from hf_semseg.conversion.run_config import ConfigFileError
from hf_semseg.conversion.semask_d2 import CONVERTER, convert, convert_checkpoint
from hf_semseg.conversion.semask_mask2former import apply_legacy_renames, detect_head, load_detectron2_checkpoint
from hf_semseg.conversion.semask_maskformer import convert_state_dict as convert_maskformer_state_dict
from hf_semseg.conversion.semask_maskformer import infer_config_and_settings as infer_maskformer_config
from hf_semseg.models.modeling_semask_maskformer import SeMaskMaskFormerForSemanticSegmentation

from conftest import REPO_ROOT, fixture_config_file, fixture_dir


NEW_SCRIPT = REPO_ROOT / "conversion" / "convert_semask_d2_to_hf.py"
OLD_SCRIPT = REPO_ROOT / "conversion" / "convert_semask_mask2former_to_hf.py"
CARD_TEMPLATE = REPO_ROOT / "model_cards" / "semask_d2.md"
#: fixture -> (head, model class name)
FIXTURES = {
    "semask_maskformer_tiny": ("maskformer", "SeMaskMaskFormerForSemanticSegmentation"),
    "semask_fapn_tiny": ("fapn", "SeMaskMask2FormerForSemanticSegmentation"),
    "semask_msfapn_tiny": ("msfapn", "SeMaskMask2FormerForSemanticSegmentation"),
    "semask_mask2former_tiny": ("msdeformattn", "SeMaskMask2FormerForSemanticSegmentation"),
}


def read_state_dict(fixture: str) -> dict[str, torch.Tensor]:
    return apply_legacy_renames(load_detectron2_checkpoint(fixture_dir(fixture) / "original_checkpoint.pth"))


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_the_head_is_told_from_the_keys(fixture):
    assert detect_head(read_state_dict(fixture)) == FIXTURES[fixture][0]


@pytest.mark.parametrize(
    "fixture, script",
    [
        ("semask_maskformer_tiny", NEW_SCRIPT),
        ("semask_fapn_tiny", NEW_SCRIPT),
        ("semask_msfapn_tiny", OLD_SCRIPT),  # the old name runs the same command line
    ],
    ids=["maskformer", "fapn", "msfapn-old-script-name"],
)
def test_converted_folder_reproduces_the_original_in_a_fresh_process_without_hf_semseg(fixture, script, tmp_path):
    """The command line (new and old name) writes a folder that, loaded in a fresh process where hf_semseg cannot be
    imported, gives the original's class logits, mask logits, auxiliary predictions and post-processed sem_seg."""
    folder = fixture_dir(fixture)
    output_dir = tmp_path / "out"
    config_file = fixture_config_file(fixture, tmp_path)
    arguments = ["--checkpoint_path", str(folder / "original_checkpoint.pth"), "--output_dir", str(output_dir)]
    # --skip_reload_check: this test is the stricter check, against the original rather than the in-process model
    arguments += ["--config_file", str(config_file), "--skip_reload_check"]
    assert load_example(script).main(arguments) == 0
    config = json.loads((output_dir / "config.json").read_text())
    assert config["architectures"] == [FIXTURES[fixture][1]]
    check = textwrap.dedent(
        f"""
        import sys, json
        sys.modules["hf_semseg"] = None
        import torch
        from safetensors.torch import load_file
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
        folder = {str(output_dir)!r}
        model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        pixel_values = load_file({str(folder / "inputs.safetensors")!r})["pixel_values"]
        expected = load_file({str(folder / "outputs.safetensors")!r})
        with torch.no_grad():
            output = model(pixel_values, output_auxiliary_logits=True)
        height, width = pixel_values.shape[-2:]
        scores = processor.post_process_semantic_segmentation(
            output, target_sizes=[(height, width)], image_sizes=[(height, width)], return_segmentation_scores=True
        )[0]["segmentation_scores"]
        actual = {{"pred_logits": output.class_queries_logits, "pred_masks": output.masks_queries_logits,
                   "sem_seg": scores}}
        for i, aux in enumerate(output.auxiliary_logits):
            actual[f"aux_{{i}}_pred_logits"] = aux["class_queries_logits"]
            actual[f"aux_{{i}}_pred_masks"] = aux["masks_queries_logits"]
        print(json.dumps({{
            "differences": {{name: (value - expected[name]).abs().max().item() for name, value in actual.items()}},
            "missing": sorted(name for name in expected if name.startswith("aux_") and name not in actual),
            "model_module": type(model).__module__,
            "hf_semseg": sorted(m for m, v in sys.modules.items() if m.startswith("hf_semseg") and v),
        }}))
        """
    )
    checked = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert checked.returncode == 0, checked.stderr[-3000:]
    report = json.loads(checked.stdout.strip().splitlines()[-1])
    assert report["hf_semseg"] == [] and report["model_module"].startswith("transformers_modules.")
    assert report["missing"] == []
    assert max(report["differences"].values()) < 1e-4, report["differences"]


def test_the_released_maskformer_layout_converts_with_the_original_parameter_count():
    state_dict = key_list_state_dict(fixture_dir("semask_keys") / "maskformer_ade20k_large.json")
    assert len(state_dict) == 546
    config, settings = infer_maskformer_config(state_dict)
    # NHEADS, the semantic window, PRE_NORM and the padding are not in the weights: the matched variant's
    assert settings.variant == "semask-maskformer-large-ade20k"
    assert config.decoder_config.decoder_attention_heads == 8 and config.num_attention_heads == 8
    assert config.backbone_config.semantic_window_size == 12
    assert config.backbone_config.semantic_attention_types == ["window", "window", "window", "global"]
    with torch.device("meta"):
        model = SeMaskMaskFormerForSemanticSegmentation(config)
    check_against_model(convert_maskformer_state_dict(state_dict), model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == 218_719_231
    registered = hf_semseg.variant_config("semask-maskformer-large-ade20k")
    assert registered.to_dict()["decoder_config"] == config.to_dict()["decoder_config"]


def test_every_released_variant_of_the_detectron2_heads_is_registered_with_its_pipeline():
    expected = {
        "semask-maskformer-large-ade20k": (54.75, 56.15),
        "semask-mask2former-large-ade20k": (56.41, 57.52),
        "semask-mask2former-fapn-large-ade20k": (56.88, 58.25),
        "semask-mask2former-msfapn-large-ade20k": (57.00, 58.25),
        "semask-mask2former-large-cityscapes": (83.97, 84.98),
    }
    for name, (miou, miou_ms) in expected.items():
        variant = hf_semseg.get_variant(name)
        assert (variant.reported["mIoU"], variant.reported["mIoU_ms_flip"]) == (miou, miou_ms)
        processor = hf_semseg.variant_image_processor(name)
        assert type(processor).__name__ == "SeMaskMask2FormerImageProcessor"
        if variant.dataset == "ade20k":  # the detectron2 test resize of the 640 configs
            assert (processor.size["shortest_edge"], processor.size["longest_edge"]) == (640, 2560)


def test_maskformer_values_not_in_the_weights_are_named_when_no_source_has_them(tmp_path):
    checkpoint = fixture_dir("semask_maskformer_tiny") / "original_checkpoint.pth"
    with pytest.raises(CheckpointError) as error:
        convert_checkpoint(checkpoint, config_file=None)
    message = str(error.value)
    for path in ("MODEL.SWIN.SEM_WINDOW_SIZE", "MODEL.MASK_FORMER.NHEADS"):
        assert path in message
    # a run's config that leaves NHEADS out: the original code's default (8) is what the run used
    config = yaml.safe_load(fixture_config_file("semask_maskformer_tiny", tmp_path).read_text())
    del config["MODEL"]["MASK_FORMER"]["NHEADS"]
    defaulted = tmp_path / "defaulted.yaml"
    defaulted.write_text(yaml.safe_dump(config))
    model, _ = convert_checkpoint(checkpoint, config_file=defaulted)
    assert model.config.decoder_config.decoder_attention_heads == 8


def test_a_detr_encoder_over_res5_is_named():
    # MODEL.MASK_FORMER.ENC_LAYERS > 0 (the original builds it; no release has one): an unmapped-key list before
    state_dict = read_state_dict("semask_maskformer_tiny")
    state_dict["sem_seg_head.predictor.transformer.encoder.layers.0.linear1.weight"] = torch.zeros(8, 8)
    with pytest.raises(
        CheckpointError,
        match=r"transformer\.encoder\.\* keys: a DETR encoder over res5 \(MODEL\.MASK_FORMER\.ENC_LAYERS",
    ):
        infer_maskformer_config(state_dict, run_configs=[])


def test_a_pre_norm_run_is_refused_by_name(tmp_path):
    config = yaml.safe_load(fixture_config_file("semask_maskformer_tiny", tmp_path).read_text())
    config["MODEL"]["MASK_FORMER"]["PRE_NORM"] = True
    path = tmp_path / "pre_norm.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises((CheckpointError, ConfigFileError), match=r"PRE_NORM.*post-norm"):
        convert_checkpoint(fixture_dir("semask_maskformer_tiny") / "original_checkpoint.pth", config_file=path)


@pytest.mark.parametrize(
    "fixture, other",
    [("semask_fapn_tiny", "semask_msfapn_tiny"), ("semask_maskformer_tiny", "semask_mask2former_tiny")],
)
def test_a_config_of_another_head_is_refused(fixture, other, tmp_path):
    """The run's config.yaml of another head contradicts the weights: refused, naming the key and both values."""
    with pytest.raises((CheckpointError, ConfigFileError), match=r"PIXEL_DECODER_NAME|META_ARCHITECTURE|ENC_LAYERS"):
        convert_checkpoint(
            fixture_dir(fixture) / "original_checkpoint.pth", config_file=fixture_config_file(other, tmp_path)
        )


def test_the_summary_and_card_name_the_head_and_where_its_heads_came_from(tmp_path):
    """The FaPN decoder heads are not in the weights: the summary names their source; the card names the head."""
    conversion = convert(
        fixture_dir("semask_fapn_tiny") / "original_checkpoint.pth",
        config_file=fixture_config_file("semask_fapn_tiny", tmp_path),
    )
    fields = write_output_folder(conversion, tmp_path / "out", CARD_TEMPLATE, CONVERTER.card_fields, check=None)
    summary = CONVERTER.summary.format_map(fields)
    assert "Mask2Former-FaPN: pixel decoder FaPN" in summary and "4 heads" in summary
    assert "num_attention_heads=4 from --config_file" in describe_provenance(conversion)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "\n# SeMask-Swin (embed 32, depths 2-2-2-2) Mask2Former-FaPN, 5 classes\n" in card
    assert "| semantic attention per stage | window, window, global, global (semantic window 7) |" in card
    assert not re.search(r"\$[a-z_]+", card)  # every template field filled
    assert "huang2021fapn" in card
