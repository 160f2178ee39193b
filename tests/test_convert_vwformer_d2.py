"""The converter of every VW detectron2 checkpoint (``conversion/convert_vwformer_d2_to_hf.py``): the head told from
the keys, the three shared fixtures reproduced after a fresh-process load without hf-semseg, the 12 released key
lists on their registered variants with the original's parameter counts, the values the weights do not hold taken
from the run's config or the variant (and named when neither has them), configs that contradict the weights, pre-norm
runs, edited tied GroupNorm copies and the padding multiple."""

import contextlib
import functools
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from script_helpers import key_list_state_dict, load_example

from hf_semseg import SeMaskMask2FormerImageProcessor
from hf_semseg.conversion.common import (
    SKIPPED_CARD_LINE,
    CheckpointError,
    Conversion,
    build_image_processor,
    check_against_model,
    describe_provenance,
    name_classes,
)
from hf_semseg.conversion.model_card import render_card, vw_d2_card_fields
from hf_semseg.conversion.run_config import ConfigFileError
from hf_semseg.conversion.vwformer_d2 import (
    MODEL_CLASSES,
    PIPELINE_FIELDS,
    convert,
    convert_vw_d2_state_dict,
    detect_vw_head,
    infer_config_and_settings,
    load_vw_d2_checkpoint,
    vw_padding_multiple,
)
from hf_semseg.variants import get_variant, list_variants, variant_config, variant_image_processor

from conftest import REPO_ROOT, fixture_config_file, fixture_dir


SCRIPT = REPO_ROOT / "conversion" / "convert_vwformer_d2_to_hf.py"
CARD_TEMPLATE = REPO_ROOT / "model_cards" / "vwformer_d2.md"
#: fixture -> (head, model class, the head's name in the summary, where the values the weights do not hold came from)
FIXTURES = {
    "vw_maskformer_tiny": (
        "vw_maskformer",
        "VWMaskFormerForSemanticSegmentation",
        "VW-MaskFormer: ",
        "pre_norm=False, vw_num_heads=16, vw_use_short_cut=True, decoder_attention_heads=4, size_divisibility=64",
    ),
    "vw_mask2former_tiny": (
        "vw",
        "VWMask2FormerForSemanticSegmentation",
        "VW-Mask2Former: ",
        "pre_norm=False, size_divisibility=64, num_attention_heads=8",
    ),
    "vw_mask2former_deform_tiny": (
        "vw_deformable",
        "VWMask2FormerForSemanticSegmentation",
        "VW-Mask2Former (deformable attention): ",
        "pre_norm=False, size_divisibility=64",  # the heads are the deformable attention's (sampling_offsets)
    ),
}
#: what the converter must name without a config (no released model has a tiny fixture's weights)
MISSING = {
    "vw_maskformer_tiny": [
        "MODEL.MASK_FORMER.PRE_NORM",
        "MODEL.SEM_SEG_HEAD.NHEADS",
        "MODEL.SEM_SEG_HEAD.SHORT_CUT",
        "MODEL.MASK_FORMER.NHEADS",
        "MODEL.MASK_FORMER.SIZE_DIVISIBILITY",
    ],
    "vw_mask2former_tiny": [
        "MODEL.MASK_FORMER.PRE_NORM",
        "MODEL.MASK_FORMER.SIZE_DIVISIBILITY",
        "MODEL.MASK_FORMER.NHEADS",
    ],
    "vw_mask2former_deform_tiny": ["MODEL.MASK_FORMER.PRE_NORM", "MODEL.MASK_FORMER.SIZE_DIVISIBILITY"],
}
#: released key list -> (variant, VW heads, VW short-cut (VW-MaskFormer only), decoder heads, test (longest, shortest))
RELEASED = {
    "d2_vw_maskformer_swin_tiny_ade20k": ("vw-maskformer-swin-tiny-ade20k", 16, True, 8, (2048, 512)),
    "d2_vw_maskformer_swin_small_ade20k": ("vw-maskformer-swin-small-ade20k", 16, False, 8, (2048, 512)),
    "d2_vw_maskformer_swin_base_ade20k": ("vw-maskformer-swin-base-ade20k", 8, False, 8, (2560, 640)),
    "d2_vw_maskformer_swin_large_ade20k": ("vw-maskformer-swin-large-ade20k", 16, False, 8, (2560, 640)),
    "d2_vw_mask2former_swin_tiny_ade20k": ("vw-mask2former-swin-tiny-ade20k", None, None, 8, (2048, 512)),
    "d2_vw_mask2former_swin_small_ade20k": ("vw-mask2former-swin-small-ade20k", None, None, 8, (2048, 512)),
    "d2_vw_mask2former_swin_base_ade20k": ("vw-mask2former-swin-base-ade20k", None, None, 8, (2560, 640)),
    "d2_vw_mask2former_swin_large_ade20k": ("vw-mask2former-swin-large-ade20k", None, None, 8, (2560, 640)),
    "d2_vw_deformattn_mask2former_swin_tiny_ade20k": (
        "vw-mask2former-deformattn-swin-tiny-ade20k",
        None,
        None,
        8,
        (2048, 512),
    ),
    "d2_vw_deformattn_mask2former_swin_small_ade20k": (
        "vw-mask2former-deformattn-swin-small-ade20k",
        None,
        None,
        8,
        (2048, 512),
    ),
    "d2_vw_deformattn_mask2former_swin_base_ade20k": (
        "vw-mask2former-deformattn-swin-base-ade20k",
        None,
        None,
        8,
        (2560, 640),
    ),
    "d2_vw_deformattn_mask2former_swin_large_ade20k": (
        "vw-mask2former-deformattn-swin-large-ade20k",
        None,
        None,
        8,
        (2560, 640),
    ),
}
#: the original READMEs' mIoU (single scale, multi-scale + flip) of each registered variant
REPORTED = {
    "vw-maskformer-swin-tiny-ade20k": (47.4, 49.0),
    "vw-maskformer-swin-small-ade20k": (50.5, 52.7),
    "vw-maskformer-swin-base-ade20k": (53.8, 54.6),
    "vw-maskformer-swin-large-ade20k": (55.3, 56.5),
    "vw-mask2former-swin-tiny-ade20k": (48.2, 50.5),
    "vw-mask2former-swin-small-ade20k": (52.1, 53.7),
    "vw-mask2former-swin-base-ade20k": (54.6, 56.0),
    "vw-mask2former-swin-large-ade20k": (56.5, 57.8),
    "vw-mask2former-deformattn-swin-tiny-ade20k": (48.5, 50.3),
    "vw-mask2former-deformattn-swin-small-ade20k": (52.0, 53.6),
    "vw-mask2former-deformattn-swin-base-ade20k": (55.2, 56.5),
    "vw-mask2former-deformattn-swin-large-ade20k": (56.9, 58.3),
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread while this module runs, here and in the fresh process it starts (``OMP_NUM_THREADS``): on
    a busy 2-core machine two contending threads make the tiny VW models 3-4x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@functools.cache
def fixture_state_dict(name: str) -> dict[str, torch.Tensor]:
    """A fixture's original state dict (cached: tests that edit it work on a copy)."""
    return load_vw_d2_checkpoint(fixture_dir(name) / "original_checkpoint.pth")


def edited_config_file(name: str, folder: Path, edit) -> Path:
    """The fixture's detectron2 config.yaml with ``edit(config)`` applied, written into ``folder``."""
    config = yaml.safe_load(fixture_config_file(name, folder).read_text())
    edit(config)
    path = folder / f"{name}_edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_converter(*arguments) -> tuple[int, str, list[str]]:
    """The command line in this process: ``(status, stdout, stderr lines)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = load_example(SCRIPT).main([str(argument) for argument in arguments])
    return status, out.getvalue(), err.getvalue().splitlines()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The three fixtures converted once by the command line with their run's config.yaml: ``{fixture: (output
    folder, summary line, config file)}``. The reload check is skipped here: the fresh-process test below compares
    the saved folders with the original's outputs instead, all three in one process."""
    work = tmp_path_factory.mktemp("vw_d2")
    results = {}
    for name in FIXTURES:
        config_file = fixture_config_file(name, work)
        output_dir = work / name
        checkpoint = fixture_dir(name) / "original_checkpoint.pth"
        arguments = ["--checkpoint_path", checkpoint, "--output_dir", output_dir, "--config_file", config_file]
        status, summary, errors = run_converter(*arguments, "--skip_reload_check")
        assert status == 0 and errors == [], errors
        results[name] = (output_dir, summary.strip(), config_file)
    return results


def test_each_fixture_converts_with_its_config_file(converted):
    for name, (head, model_class, head_name, values) in FIXTURES.items():
        output_dir, summary, config_file = converted[name]
        config = json.loads((output_dir / "config.json").read_text())
        assert config["architectures"] == [model_class]
        assert config.get("pixel_decoder_type", "vw_maskformer") == head
        assert config["size_divisibility"] == 64
        assert summary.startswith(f"converted {fixture_dir(name) / 'original_checkpoint.pth'}: {head_name}Swin")
        assert f"{values} from --config_file {config_file}" in summary, summary
        assert "no released variant has these weights" in summary and "padding multiple 64; 5 classes" in summary
        assert "reload check SKIPPED" in summary
        processor = json.loads((output_dir / "preprocessor_config.json").read_text())
        assert processor["image_processor_type"] == "SeMaskMask2FormerImageProcessor"
        assert processor["size_divisibility"] == 64
        assert processor["size"] == {"longest_edge": 2048, "shortest_edge": 512}  # INPUT.MIN/MAX_SIZE_TEST
        card = (output_dir / "README.md").read_text()
        assert not re.search(r"\$[a-z_]+", card)  # every template field filled
        assert "zero padding to a multiple of 64" in card and "yan2024vwformer" in card
    maskformer = json.loads((converted["vw_maskformer_tiny"][0] / "config.json").read_text())
    assert (maskformer["vw_num_heads"], maskformer["vw_use_short_cut"]) == (16, True)
    assert maskformer["decoder_config"]["decoder_attention_heads"] == 4 and maskformer["num_attention_heads"] == 4
    plain = json.loads((converted["vw_mask2former_tiny"][0] / "config.json").read_text())
    assert (plain["num_attention_heads"], plain["pre_norm"], plain["decoder_layers"]) == (8, False, 4)
    deformable = json.loads((converted["vw_mask2former_deform_tiny"][0] / "config.json").read_text())
    assert (deformable["num_attention_heads"], deformable["encoder_layers"], deformable["hidden_dim"]) == (8, 2, 64)


def test_converted_folders_reproduce_the_original_in_a_fresh_process_without_hf_semseg(converted, tmp_path):
    """Each folder, loaded (model and processor) in one fresh process where hf_semseg cannot be imported, gives the
    original's class logits, mask logits, auxiliary predictions and post-processed sem_seg; its processor pads to 64."""
    folders = {name: (str(converted[name][0]), str(fixture_dir(name))) for name in FIXTURES}
    check = textwrap.dedent(
        f"""
        import sys, json
        sys.modules["hf_semseg"] = None
        import numpy as np
        import torch
        from safetensors.torch import load_file
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
        report = {{}}
        for name, (folder, fixture) in {folders!r}.items():
            model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
            processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
            pixel_values = load_file(fixture + "/inputs.safetensors")["pixel_values"]
            expected = load_file(fixture + "/outputs.safetensors")
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
            image = np.zeros((100, 130, 3), dtype=np.uint8)
            report[name] = {{
                "differences": {{key: (value - expected[key]).abs().max().item() for key, value in actual.items()}},
                "missing": sorted(key for key in expected if key.startswith("aux_") and key not in actual),
                "model_module": type(model).__module__,
                "processed_shape": list(processor(image, return_tensors="pt").pixel_values.shape),
            }}
        report["hf_semseg"] = sorted(m for m, v in sys.modules.items() if m.startswith("hf_semseg") and v)
        print(json.dumps(report))
        """
    )
    checked = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert checked.returncode == 0, checked.stderr[-3000:]
    report = json.loads(checked.stdout.strip().splitlines()[-1])
    assert report.pop("hf_semseg") == []
    for name, result in report.items():
        assert result["model_module"].startswith("transformers_modules."), name
        assert result["missing"] == [], name
        assert len(result["differences"]) >= 5, name  # final + at least one auxiliary prediction + sem_seg
        assert max(result["differences"].values()) < 1e-4, (name, result["differences"])
        # 100 x 130 -> shortest edge 512: 512 x 666, zero-padded to a multiple of 64
        assert result["processed_shape"] == [1, 3, 512, 704], name


@pytest.mark.parametrize("name", list(FIXTURES))
def test_without_a_config_the_converter_stops_and_names_what_is_missing(name, tmp_path):
    output_dir = tmp_path / "out"
    checkpoint = fixture_dir(name) / "original_checkpoint.pth"
    status, summary, errors = run_converter("--checkpoint_path", checkpoint, "--output_dir", output_dir)
    assert status == 1 and summary == "" and len(errors) == 1, errors
    message = errors[0]
    assert message.startswith(f"error: {checkpoint}: the weights do not hold ")
    for path in MISSING[name]:
        assert f"({path})" in message, (path, message)
    if name == "vw_mask2former_deform_tiny":  # the deformable encoder's sampling_offsets hold the heads
        assert "MODEL.MASK_FORMER.NHEADS" not in message
    assert "no released model has exactly these weights" in message
    assert "--config_file PATH" in message and "--variant NAME" in message
    assert not output_dir.exists()


def test_each_released_key_list_converts_onto_its_variant_with_the_original_parameter_count(tmp_path):
    """The 12 released layouts (meta tensors from the key lists): head told, the registered variant with exactly
    these weights matched and named, the values the weights do not hold taken from it, every key mapped onto the
    model, the parameter count of the original; the variant's own config builds the same model, and the processor
    gets the variant's test resize and the padding multiple 64."""
    folder = fixture_dir("vwformer_keys")
    summary = json.loads((folder / "_summary_d2.json").read_text())
    assert sorted(path.stem for path in folder.glob("d2_*.json")) == sorted(RELEASED)
    for stem, (name, vw_heads, short_cut, decoder_heads, test_scale) in RELEASED.items():
        state_dict = key_list_state_dict(folder / f"{stem}.json")
        head = detect_vw_head(state_dict)
        assert head == ("vw_maskformer" if "_maskformer_" in stem else "vw_deformable" if "deform" in stem else "vw")
        config, settings = infer_config_and_settings(state_dict)
        assert settings.variant == name, stem
        source = f"released variant {name} (same weights, names and shapes)"
        if head == "vw_maskformer":
            assert (config.vw_num_heads, config.vw_use_short_cut) == (vw_heads, short_cut), stem
            assert config.decoder_config.decoder_attention_heads == decoder_heads == config.num_attention_heads
            for field in ("vw_num_heads", "vw_use_short_cut", "decoder_config.decoder_attention_heads", "pre_norm"):
                assert settings.sources[field] == source, (stem, field)
        else:
            assert config.num_attention_heads == decoder_heads and config.pixel_decoder_type == head
            heads_source = settings.sources.get("num_attention_heads")  # deformable: in the weights
            assert heads_source == (source if head == "vw" else None), stem
            assert config.pre_norm is False and settings.sources["pre_norm"] == source
        assert config.size_divisibility == 64 and settings.sources["size_divisibility"] == source
        with torch.device("meta"):
            model = MODEL_CLASSES[head](config)
            registered = MODEL_CLASSES[head](variant_config(name))
        check_against_model(convert_vw_d2_state_dict(state_dict), model.state_dict())
        count = summary[stem]["params_total"]
        assert sum(parameter.numel() for parameter in model.parameters()) == count, stem
        assert sum(parameter.numel() for parameter in registered.parameters()) == count, stem
        assert get_variant(name).reported["params_M"] == round(count / 1e6, 2)
        conversion = Conversion(
            folder / f"{stem}.json",
            model,
            variant=name,
            settings=settings,
            processor_kwargs={"size_divisibility": config.size_divisibility},
            pipeline_fields=PIPELINE_FIELDS,
        )
        name_classes(conversion)  # as the converter does: the variant's dataset names the classes
        processor = build_image_processor(conversion)
        assert type(processor) is SeMaskMask2FormerImageProcessor and processor.size_divisibility == 64
        assert (processor.size["longest_edge"], processor.size["shortest_edge"]) == test_scale, stem
        assert processor.do_reduce_labels and config.id2label[0] == "wall"  # ADE20K's classes, from the variant
        assert f"released variant {name} (same weights, names and shapes)" in describe_provenance(conversion)
        if name == "vw-maskformer-swin-base-ade20k":  # the card of a released model
            fields = vw_d2_card_fields(conversion, processor)
            fields.update(reload_check=SKIPPED_CARD_LINE)
            card = render_card(CARD_TEMPLATE, tmp_path, fields).read_text()
            assert "\n# vw-maskformer-swin-base-ade20k\n" in card
            assert "53.8 mIoU single-scale, 54.6 mIoU multi-scale + flip (vw-maskformer-swin-base-ade20k)" in card
            assert "| pixel decoder | VW on strides 8-32 (8 heads, short-cut off, image pooling)" in card
            assert "shortest edge 640, longest at most 2560" in card and "104.51M" in card


def test_the_registry_has_the_twelve_released_models_with_their_pipelines():
    names = list_variants("vw_maskformer") + list_variants("vw_mask2former")
    assert sorted(names) == sorted(REPORTED)
    for name, (miou, miou_ms) in REPORTED.items():
        variant = get_variant(name)
        assert (variant.reported["mIoU"], variant.reported["mIoU_ms_flip"]) == (miou, miou_ms)
        small = "-tiny-" in name or "-small-" in name
        assert variant.test_scale == ((2048, 512) if small else (2560, 640))
        assert variant.crop_size == ((512, 512) if small else (640, 640))
        assert variant.dataset == "ade20k" and variant.size_divisibility == 64 and variant.size_divisor is None
        processor = variant_image_processor(name)
        assert type(processor) is SeMaskMask2FormerImageProcessor and processor.size_divisibility == 64
        assert dict(processor.size) == {"longest_edge": variant.test_scale[0], "shortest_edge": variant.test_scale[1]}
        backbone = variant_config(name).backbone_config
        assert (backbone.window_size, backbone.image_size) == ((7, 224) if small else (12, 384))
    heads = {name: (get_variant(name).num_attention_heads, get_variant(name).use_short_cut) for name in names}
    assert heads["vw-maskformer-swin-tiny-ade20k"] == (16, True)
    assert heads["vw-maskformer-swin-small-ade20k"] == heads["vw-maskformer-swin-large-ade20k"] == (16, False)
    assert heads["vw-maskformer-swin-base-ade20k"] == (8, False)
    assert all(heads[name] == (None, None) for name in list_variants("vw_mask2former"))  # 16 heads, hard-coded
    assert variant_config("vw-mask2former-deformattn-swin-tiny-ade20k").pixel_decoder_type == "vw_deformable"


def released_tiny_maskformer_config(folder: Path, **changes) -> Path:
    """A run config.yaml of the released VW-MaskFormer Swin-T layout (the values of its yaml, SIZE_DIVISIBILITY 32
    as the yaml says), with ``changes`` (``"SEM_SEG_HEAD.SHORT_CUT": False``) applied under ``MODEL``."""
    model = {
        "META_ARCHITECTURE": "MaskFormer",
        "SEM_SEG_HEAD": {"PIXEL_DECODER_NAME": "VWTransformerPixelDecoder", "NUM_CLASSES": 150, "NHEADS": 16},
        "MASK_FORMER": {"NHEADS": 8, "SIZE_DIVISIBILITY": 32, "DEC_LAYERS": 6},
        "SWIN": {"EMBED_DIM": 96, "DEPTHS": [2, 2, 6, 2], "NUM_HEADS": [3, 6, 12, 24], "WINDOW_SIZE": 7},
    }
    model["SEM_SEG_HEAD"]["SHORT_CUT"] = True
    for path, value in changes.items():
        section, key = path.split(".")
        model[section][key] = value
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({"MODEL": model, "INPUT": {"MIN_SIZE_TEST": 512, "MAX_SIZE_TEST": 2048}}))
    return config


def test_a_run_config_that_agrees_with_a_released_variant_keeps_it_and_one_that_differs_does_not(tmp_path):
    state_dict = key_list_state_dict(fixture_dir("vwformer_keys") / "d2_vw_maskformer_swin_tiny_ade20k.json")
    name = "vw-maskformer-swin-tiny-ade20k"
    # the released yaml (SIZE_DIVISIBILITY 32 -> 64, as the variant): still the variant; the values from the config
    config, settings = infer_config_and_settings(state_dict, config_file=released_tiny_maskformer_config(tmp_path))
    assert settings.variant == name and config.size_divisibility == 64
    assert settings.sources["vw_use_short_cut"] == f"--config_file {tmp_path / 'config.yaml'}"
    assert settings.sources["pre_norm"] == f"--config_file {tmp_path / 'config.yaml'} [default]"  # key left out
    assert "SIZE_DIVISIBILITY 32 of the run padded to 64 instead" in settings.describe()
    # a short-cut the released model does not have: same weights, another model
    other = released_tiny_maskformer_config(tmp_path, **{"SEM_SEG_HEAD.SHORT_CUT": False})
    config, settings = infer_config_and_settings(state_dict, config_file=other)
    assert settings.variant is None and config.vw_use_short_cut is False
    with pytest.raises(ConfigFileError, match=rf"SHORT_CUT = False, but the released variant {name} \(--variant\)"):
        infer_config_and_settings(state_dict, variant=name, config_file=other)


def _without_patch_norm(state_dict: dict) -> dict:
    return {key: value for key, value in state_dict.items() if not key.startswith("backbone.patch_embed.norm.")}


def _with_detr_encoder(state_dict: dict) -> dict:
    return dict(state_dict, **{"sem_seg_head.predictor.transformer.encoder.layers.0.linear1.weight": torch.zeros(8, 8)})


def _encoder_on_res2_to_res4(state_dict: dict) -> dict:
    # input_proj.0 (res5's) given res4's channels, as DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES res2-res4 makes it
    key = "sem_seg_head.pixel_decoder.input_proj.0.0.weight"
    return dict(state_dict, **{key: state_dict[key][:, : state_dict[key].shape[1] // 2]})


@pytest.mark.parametrize(
    ("fixture", "edit", "expected"),
    [
        (
            "vw_mask2former_tiny",
            _without_patch_norm,
            r"no backbone\.patch_embed\.norm\.\* keys: .*\(MODEL\.SWIN\.PATCH_NORM False\)",
        ),
        (
            "vw_maskformer_tiny",
            _with_detr_encoder,
            r"sem_seg_head\.predictor\.transformer\.encoder\.\* keys: a DETR encoder over res5 \(MODEL\.MASK_FORMER\.ENC_LAYERS",
        ),
        (
            "vw_mask2former_deform_tiny",
            _encoder_on_res2_to_res4,
            r"input_proj\.0\.0\.weight: 64 input channels, but .* projects res5 \(128 channels\) .*"
            r"DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES",
        ),
    ],
)
def test_original_options_the_converted_model_lacks_are_named(fixture, edit, expected):
    """Options no release uses, which a probe's fixtures of the original code had: each is named (an unmapped-key
    list, missing converted keys or shape mismatches before)."""
    with pytest.raises(CheckpointError, match=expected):
        infer_config_and_settings(edit(dict(fixture_state_dict(fixture))), run_configs=[])


def test_a_named_variant_must_have_the_checkpoints_weights():
    state_dict = fixture_state_dict("vw_maskformer_tiny")
    with pytest.raises(CheckpointError, match=r"--variant vw-maskformer-swin-tiny-ade20k: the checkpoint's weights"):
        infer_config_and_settings(state_dict, variant="vw-maskformer-swin-tiny-ade20k")
    with pytest.raises(
        CheckpointError, match="--variant vw-mask2former-swin-tiny-ade20k: not a released vw_maskformer"
    ):
        infer_config_and_settings(state_dict, variant="vw-mask2former-swin-tiny-ade20k")


def _set(path: str, value):
    def edit(config):
        section = config
        for part in path.split(".")[:-1]:
            section = section[part]
        section[path.split(".")[-1]] = value

    return edit


@pytest.mark.parametrize(
    "fixture, other, edit, expected",
    [
        (
            "vw_maskformer_tiny",
            "vw_mask2former_tiny",
            None,
            "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = 'BasePixelDecoder', but the checkpoint's weights have "
            "'VWTransformerPixelDecoder'",
        ),
        (
            "vw_mask2former_tiny",
            "vw_mask2former_deform_tiny",
            None,
            "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = 'VWDeformAttnPixelDecoder', but the checkpoint's weights have "
            "'BasePixelDecoder'",
        ),
        (
            "vw_mask2former_deform_tiny",
            None,
            _set("MODEL.MASK_FORMER.NHEADS", 4),
            "MODEL.MASK_FORMER.NHEADS = 4, but the checkpoint's weights have 8 (the deformable attention's "
            "sampling_offsets)",
        ),
        (
            "vw_maskformer_tiny",
            None,
            _set("MODEL.SWIN.DEPTHS", [2, 2, 6, 2]),
            "MODEL.SWIN.DEPTHS = [2, 2, 6, 2], but the checkpoint's weights have [2, 2, 2, 2]",
        ),
        (
            "vw_maskformer_tiny",
            None,
            _set("MODEL.SEM_SEG_HEAD.NHEADS", 7),
            "MODEL.SEM_SEG_HEAD.NHEADS = 7: the VW attention heads must divide the VW block's 512 channels",
        ),
        (
            "vw_mask2former_deform_tiny",
            None,
            _set("MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES", ["res2", "res3", "res4"]),
            "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ['res2', 'res3', 'res4'], but the "
            "checkpoint's weights have ['res3', 'res4', 'res5']",
        ),
    ],
    ids=[
        "maskformer-with-mask2former-config",
        "plain-with-deformable-config",
        "deformable-heads",
        "depths",
        "vw-heads",
        "deformable-levels",
    ],
)
def test_a_config_of_another_head_or_run_is_refused_by_name(fixture, other, edit, expected, tmp_path):
    if other is not None:
        config_file = fixture_config_file(other, tmp_path)
    else:
        config_file = edited_config_file(fixture, tmp_path, edit)
    with pytest.raises(ConfigFileError) as error:
        infer_config_and_settings(fixture_state_dict(fixture), config_file=config_file)
    assert str(error.value).startswith(f"--config_file {config_file}: ") and expected in str(error.value)


@pytest.mark.parametrize(
    "fixture, expected",
    [
        ("vw_maskformer_tiny", "PRE_NORM True (pre-norm DETR decoder layers) is not supported"),
        ("vw_mask2former_tiny", "PRE_NORM True (pre-norm masked-attention decoder layers) is not supported"),
    ],
)
def test_a_pre_norm_run_is_refused_by_name(fixture, expected, tmp_path):
    config_file = edited_config_file(fixture, tmp_path, _set("MODEL.MASK_FORMER.PRE_NORM", True))
    with pytest.raises(ConfigFileError) as error:
        infer_config_and_settings(fixture_state_dict(fixture), config_file=config_file)
    assert str(error.value).startswith(f"--config_file {config_file}: MODEL.MASK_FORMER.PRE_NORM = True: {expected}")


def test_unequal_or_missing_tied_group_norm_copies_are_refused(tmp_path):
    """The original's one GroupNorm(32, 512) under six names besides linear_c4.norm: a checkpoint whose copies differ
    is refused by the command line naming the key and the size of the difference, one without a copy naming it."""
    name = "vw_mask2former_deform_tiny"
    edited = dict(fixture_state_dict(name))
    key = "sem_seg_head.pixel_decoder.cat_0.norm.bias"
    edited[key] = edited[key] + 0.25
    checkpoint = tmp_path / "edited.pth"
    torch.save({"model": edited, "iteration": 1}, checkpoint)
    output_dir = tmp_path / "out"
    config_file = fixture_config_file(name, tmp_path)
    arguments = ["--checkpoint_path", checkpoint, "--output_dir", output_dir, "--config_file", config_file]
    status, _, errors = run_converter(*arguments)
    assert status == 1 and len(errors) == 1, errors
    assert errors[0].startswith(
        f"error: {checkpoint}: {key} differs from sem_seg_head.pixel_decoder.linear_c4.norm.bias by up to 0.25; "
    )
    assert not output_dir.exists()
    state_dict = dict(fixture_state_dict("vw_maskformer_tiny"))
    del state_dict["sem_seg_head.pixel_decoder.image_pool.1.norm.weight"]
    with pytest.raises(CheckpointError, match=r"image_pool\.1\.norm\.weight is missing .* under 7 names"):
        convert_vw_d2_state_dict(state_dict)


def test_a_padding_multiple_that_is_not_a_multiple_of_64_becomes_the_next_one(tmp_path):
    """The released yamls' SIZE_DIVISIBILITY 32: the model and the processor pad to 64 (the original runs only where
    both agree), and the summary says so; a config leaving the key out has the original's default, 32, too."""
    assert [vw_padding_multiple(value) for value in (32, 64, 96, 128, 0, -1)] == [64, 64, 192, 128, 64, 64]
    name = "vw_mask2former_tiny"
    config_file = edited_config_file(name, tmp_path, _set("MODEL.MASK_FORMER.SIZE_DIVISIBILITY", 32))
    conversion = convert(fixture_dir(name) / "original_checkpoint.pth", config_file=config_file)
    assert conversion.model.config.size_divisibility == 64
    assert build_image_processor(conversion).size_divisibility == 64
    provenance = describe_provenance(conversion)
    assert f"size_divisibility=64, num_attention_heads=8 from --config_file {config_file}" in provenance
    assert "SIZE_DIVISIBILITY 32 of the run padded to 64 instead (the VW block needs multiples of 64" in provenance
    config_file = edited_config_file(name, tmp_path, _set("MODEL.MASK_FORMER.SIZE_DIVISIBILITY", 96))
    config, settings = infer_config_and_settings(fixture_state_dict(name), config_file=config_file)
    assert config.size_divisibility == 192 and "SIZE_DIVISIBILITY 96 of the run padded to 192" in settings.describe()

    def leave_out(config):
        del config["MODEL"]["MASK_FORMER"]["SIZE_DIVISIBILITY"]

    config_file = edited_config_file(name, tmp_path, leave_out)
    config, settings = infer_config_and_settings(fixture_state_dict(name), config_file=config_file)
    assert config.size_divisibility == 64 and "size_divisibility=64 (original default)" in settings.describe()
    assert "SIZE_DIVISIBILITY 32 of the run padded to 64" in settings.describe()


# ---------------------------------------------------------------------------------------------------------------
# the original repositories' _BASE_ files compute a training value with !!python/object/apply:eval
# ---------------------------------------------------------------------------------------------------------------

#: laid out as configs/ade20k/semantic-segmentation/Base-ADE20K-SemanticSegmentation.yaml of the original repositories
#: (yan-hao-tian/VW Mask2Former, Picsart-AI-Research/SeMask-Segmentation), which detectron2 reads with yaml.unsafe_load
BASE_YAML = """\
MODEL:
  BACKBONE:
    FREEZE_AT: 0
    NAME: "build_resnet_backbone"
  WEIGHTS: "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
DATASETS:
  TRAIN: ("ade20k_sem_seg_train",)
  TEST: ("ade20k_sem_seg_val",)
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.0001
  MAX_ITER: 160000
INPUT:
  MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * 640) for x in range(5, 21)]"]
  MIN_SIZE_TRAIN_SAMPLING: "choice"
  MIN_SIZE_TEST: 512
  MAX_SIZE_TRAIN: 2048
  MAX_SIZE_TEST: 2048
  CROP:
    ENABLED: True
    TYPE: "absolute"
    SIZE: (512, 512)
    SINGLE_CATEGORY_MAX_AREA: 1.0
  COLOR_AUG_SSD: True
  SIZE_DIVISIBILITY: 512  # used in dataset mapper
  FORMAT: "RGB"
  DATASET_MAPPER_NAME: "mask_former_semantic"
TEST:
  EVAL_PERIOD: 5000
VERSION: 2
"""


def base_and_child_yaml(folder: Path, name: str, base: str = BASE_YAML) -> Path:
    """The fixture's config split as the original repositories write theirs: ``base`` as
    ``Base-ADE20K-SemanticSegmentation.yaml`` and a child naming it in ``_BASE_`` with the fixture's own values, less
    ``INPUT.MIN_SIZE_TRAIN`` (the Base computes it). Returns the child."""
    config = yaml.safe_load(fixture_config_file(name, folder).read_text())
    del config["INPUT"]["MIN_SIZE_TRAIN"]
    (folder / "Base-ADE20K-SemanticSegmentation.yaml").write_text(base)
    child = folder / "maskformer_child.yaml"
    child.write_text("_BASE_: Base-ADE20K-SemanticSegmentation.yaml\n" + yaml.safe_dump(config))
    return child


def test_a_base_file_computing_a_training_value_with_eval_is_read_without_evaluating_it(tmp_path):
    """MIN_SIZE_TRAIN is a training value: the conversion through the _BASE_ chain goes through, and gives the
    model the flat config gives; the expression is kept as text, never evaluated."""
    from hf_semseg.conversion.run_config import NotEvaluated, read_detectron2_config

    name = "vw_maskformer_tiny"
    checkpoint = fixture_dir(name) / "original_checkpoint.pth"
    child = base_and_child_yaml(tmp_path, name)
    merged = read_detectron2_config(child)
    base = tmp_path / "Base-ADE20K-SemanticSegmentation.yaml"
    assert merged["INPUT"]["MIN_SIZE_TRAIN"] == NotEvaluated("[int(x * 0.1 * 640) for x in range(5, 21)]", str(base))
    assert merged["INPUT"]["MIN_SIZE_TEST"] == 512 and merged["INPUT"]["MIN_SIZE_TRAIN_SAMPLING"] == "choice"
    from_chain = convert(checkpoint, None, child)
    flat = convert(checkpoint, None, fixture_config_file(name, tmp_path))
    assert from_chain.model.config.to_dict() == flat.model.config.to_dict()
    pixel_values = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(from_chain.model(pixel_values).logits, flat.model(pixel_values).logits)
    assert build_image_processor(from_chain).to_dict() == build_image_processor(flat).to_dict()


def test_a_value_the_converter_needs_computed_by_eval_stops_it_by_name(tmp_path):
    """A value the conversion reads that a file computes by an expression: one line naming the key, the file and the
    expression, not evaluated; any other python tag is refused as before."""
    name = "vw_maskformer_tiny"
    checkpoint = fixture_dir(name) / "original_checkpoint.pth"
    expression = "__import__('os').system('touch " + str(tmp_path / "ran") + "') or 512"
    base = BASE_YAML.replace(
        "  MIN_SIZE_TEST: 512\n", f"  MIN_SIZE_TEST: !!python/object/apply:eval [{expression!r}]\n"
    )
    child = base_and_child_yaml(tmp_path, name, base)
    config = yaml.safe_load(child.read_text().split("\n", 1)[1])
    del config["INPUT"]["MIN_SIZE_TEST"]  # the Base's value is the one read
    child.write_text("_BASE_: Base-ADE20K-SemanticSegmentation.yaml\n" + yaml.safe_dump(config))
    status, _, errors = run_converter(
        "--checkpoint_path", checkpoint, "--output_dir", tmp_path / "out", "--config_file", child
    )
    base_file = tmp_path / "Base-ADE20K-SemanticSegmentation.yaml"
    assert status == 1 and errors == [
        f"error: --config_file {child}: INPUT.MIN_SIZE_TEST is computed in {base_file} by "
        f"!!python/object/apply:eval {expression!r}, which is not evaluated (a config file's code is never run); set "
        "the value itself in the config file"
    ], errors
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()
    system = BASE_YAML.replace(
        "  MIN_SIZE_TEST: 512\n", f"  MIN_SIZE_TEST: !!python/object/apply:os.system ['touch {tmp_path / 'ran'}']\n"
    )
    base_and_child_yaml(tmp_path, name, system)
    status, _, errors = run_converter(
        "--checkpoint_path", checkpoint, "--output_dir", tmp_path / "out", "--config_file", child
    )
    assert status == 1 and len(errors) == 1, errors
    assert f"--config_file {base_file}: not a YAML file (could not determine a constructor for the tag " in errors[0]
    assert "python/object/apply:os.system" in errors[0] and not (tmp_path / "ran").exists()


# ---------------------------------------------------------------------------------------------------------------
# detectron2 model-zoo .pkl files: plain pickles of numpy arrays
# ---------------------------------------------------------------------------------------------------------------


def test_a_model_zoo_pkl_of_numpy_arrays_converts_to_the_same_model_as_the_pth(tmp_path):
    """detectron2 loads a ``.pkl`` (``{'model': {name: numpy array}, '__author__': ..., 'matching_heuristics': ...}``,
    a plain pickle, not a torch zip) as it loads a ``.pth``; so does the converter, keeping each array's dtype; a
    torch.save'd dict of numpy arrays too. The converted models are the ``.pth``'s."""
    import pickle

    name = "vw_mask2former_tiny"
    checkpoint = fixture_dir(name) / "original_checkpoint.pth"
    config_file = fixture_config_file(name, tmp_path)
    arrays = {key: tensor.numpy() for key, tensor in torch.load(checkpoint, weights_only=True)["model"].items()}
    model_zoo = tmp_path / "model_final.pkl"
    with open(model_zoo, "wb") as file:
        pickle.dump({"model": arrays, "__author__": "VW", "matching_heuristics": True}, file)
    torch.save({"model": arrays}, tmp_path / "numpy.pth")
    expected = convert(checkpoint, None, config_file).model
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected_logits = expected(pixel_values).logits
    for path in (model_zoo, tmp_path / "numpy.pth"):
        state_dict = load_vw_d2_checkpoint(path)
        assert {key: tensor.dtype for key, tensor in state_dict.items()} == {
            key: tensor.dtype for key, tensor in fixture_state_dict(name).items()
        }
        model = convert(path, None, config_file).model
        with torch.no_grad():
            assert torch.equal(model(pixel_values).logits, expected_logits), path
        assert all(torch.equal(model.state_dict()[key], value) for key, value in expected.state_dict().items())


class _RunsACommand:
    """Pickled as a call of ``os.system``: what a malicious pickle holds."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_pickle_referencing_any_other_global_is_refused_by_name_without_running_it(tmp_path, protocol):
    import os
    import pickle

    marker = tmp_path / "ran"
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": {"weight": _RunsACommand(marker)}, "__author__": "x"}, protocol=protocol))
    status, _, errors = run_converter("--checkpoint_path", path, "--output_dir", tmp_path / "out")
    system = f"{os.system.__module__}.system"  # posix.system
    assert status == 1 and errors == [
        f"error: {path}: cannot be read as a PyTorch checkpoint (a plain pickle referencing the global {system}, which "
        "is not loaded: the converters read tensors, numpy arrays and plain values only)"
    ], errors
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_numpy_arrays_no_tensor_can_hold_are_refused_by_name(tmp_path):
    import pickle

    import numpy as np

    path = tmp_path / "model_final.pkl"
    weights = {"a.weight": np.zeros(2, np.float32), "b.names": np.array(["x", 1], dtype=object)}
    path.write_bytes(pickle.dumps({"model": weights}))
    with pytest.raises(CheckpointError, match=r"numpy arrays no tensor can hold: \['b\.names \(numpy object\)'\]"):
        load_vw_d2_checkpoint(path)
