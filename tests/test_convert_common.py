"""The shared conversion module: reading checkpoints of both layouts, key accounting, the test pipeline taken from the
registry, the reload check and the command-line skeleton."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_semseg
from hf_semseg.conversion import semask_d2, semask_fpn, vwformer
from hf_semseg.conversion.common import (
    DETECTRON2,
    MMSEG,
    RELOAD_CHECK,
    RELOAD_TOLERANCE,
    CheckpointError,
    Conversion,
    ConversionError,
    ReloadCheck,
    build_image_processor,
    check_reload,
    describe_provenance,
    find_rename,
    raise_on_unmapped,
    read_checkpoint,
    resolve_test_pipeline,
)
from hf_semseg.conversion.run_config import (
    RunConfig,
    detectron2_pipeline,
    mmseg_pipeline,
    mmseg_run_configs,
    read_detectron2_config,
)
from hf_semseg.demo_data import demo_model_config

from conftest import REPO_ROOT


def saved(tmp_path, checkpoint, name="checkpoint.pth") -> Path:
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


def test_both_layouts_are_read_and_the_other_one_is_named(tmp_path):
    tensors = {"module.backbone.a": torch.zeros(2), "module.decode_head.b": torch.ones(1)}
    state_dict, meta = read_checkpoint(
        saved(tmp_path, {"state_dict": tensors, "meta": {"CLASSES": ("a",)}}), MMSEG, "X"
    )
    assert set(state_dict) == {"backbone.a", "decode_head.b"} and meta == {"CLASSES": ("a",)}
    state_dict, meta = read_checkpoint(saved(tmp_path, {"model": tensors, "iteration": 3}), DETECTRON2, "Y")
    assert set(state_dict) == {"backbone.a", "decode_head.b"} and meta == {}
    bare, _ = read_checkpoint(saved(tmp_path, {"backbone.a": torch.zeros(1)}), DETECTRON2, "Y")
    assert set(bare) == {"backbone.a"}
    with pytest.raises(CheckpointError, match=r"checkpoint.pth: a detectron2 checkpoint .*reads X checkpoints - hint"):
        read_checkpoint(saved(tmp_path, {"model": tensors}), MMSEG, "X", " - hint")
    with pytest.raises(CheckpointError, match=r"an mmseg checkpoint \(\{'state_dict': ...\}\); this converter reads Y"):
        read_checkpoint(saved(tmp_path, {"state_dict": tensors}), DETECTRON2, "Y")
    with pytest.raises(CheckpointError, match=r"entries that are not tensors: \['step'\]"):
        read_checkpoint(saved(tmp_path, {"state_dict": {"step": 3}}), MMSEG, "X")
    with pytest.raises(CheckpointError, match=r"no 'model' entry \(top-level keys: \['optimizer'\]\)"):
        read_checkpoint(saved(tmp_path, {"optimizer": {"lr": 1}}), DETECTRON2, "Y")
    with pytest.raises(CheckpointError, match="holds a list, not an mmseg checkpoint dict"):
        read_checkpoint(saved(tmp_path, [1]), MMSEG, "X")


def test_key_accounting_names_the_keys():
    table = [(r"a\.(\d+)\.weight", r"b.\1.weight"), (r"a\.(\d+)\.fused", None)]
    assert find_rename("a.3.weight", table) == (True, "b.3.weight")
    assert find_rename("a.3.fused", table) == (True, None)
    assert find_rename("a.3.bias", table) == (False, None)
    raise_on_unmapped([])
    with pytest.raises(CheckpointError, match=r"25 keys have no conversion rule: \['k0', .*'k19'\] and 5 more"):
        raise_on_unmapped([f"k{index}" for index in range(25)])


def conversion_of(config, variant=None, given=False, meta=None, pipeline=None, **fields) -> Conversion:
    """A conversion of a model with ``config`` (the pipeline and provenance need only the config)."""
    return Conversion(
        Path("ckpt.pth"), SimpleNamespace(config=config), variant, given, meta or {}, pipeline=pipeline or {}, **fields
    )


# an mmseg run's test pipeline, as mmcv writes it into meta['config'] (a non-ImageNet normalisation on purpose)
CONFIG_TEXT = """
img_norm_cfg = dict(mean=[127.5, 127.5, 127.5], std=[51.0, 51.0, 51.0], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(1024, 256),
        flip=False,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='ResizeToMultiple', size_divisor=32),
            dict(type='Normalize', **img_norm_cfg),
        ]),
]
data = dict(test=dict(type='ADE20KDataset', reduce_zero_label=False, pipeline=test_pipeline))
"""


def test_test_pipeline_sources_in_order():
    """the run's config (file, then the checkpoint's text) > the released variant > the processor's defaults (said);
    never the dataset of the class count."""
    from_text = mmseg_pipeline(mmseg_run_configs(None, {"config": CONFIG_TEXT}))
    assert from_text == {
        "test_scale": (1024, 256),
        "size_divisor": 32,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.2, 0.2, 0.2],
        "reduce_labels": False,
        "dataset": "ade20k",
        "source": "the checkpoint's config text",
    }
    vw = hf_semseg.variant_config("vwformer-convnext-base-ade20k")
    imagenet = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    released = {"test_scale": (2560, 640), "size_divisor": 64, "reduce_labels": True, **imagenet}
    pipeline, defaults, _ = resolve_test_pipeline(
        conversion_of(vw, "vwformer-convnext-base-ade20k", given=True, pipeline=from_text)
    )
    assert pipeline == {name: from_text[name] for name in released} and defaults == []
    pipeline, defaults, where = resolve_test_pipeline(conversion_of(vw, "vwformer-convnext-base-ade20k"))
    assert pipeline == released and where["test_scale"] == "released variant vwformer-convnext-base-ade20k"
    # an unregistered 150-class VWFormer without a config: nothing is guessed from the class count
    pipeline, defaults, _ = resolve_test_pipeline(conversion_of(vw))
    assert pipeline == {} and defaults == ["test_scale", "size_divisor", "reduce_labels", "image_mean", "image_std"]
    assert describe_provenance(conversion_of(vw)).startswith("no released variant has these weights; dataset unknown")
    processor = build_image_processor(conversion_of(vw))
    assert dict(processor.size) == {"longest_edge": 2048, "shortest_edge": 512} and not processor.do_reduce_labels
    processor = build_image_processor(conversion_of(vw, pipeline=from_text))
    assert dict(processor.size) == {"longest_edge": 1024, "shortest_edge": 256} and processor.size_divisor == 32
    assert list(processor.image_mean) == [0.5, 0.5, 0.5] and list(processor.image_std) == [0.2, 0.2, 0.2]


def test_model_cards_state_the_processors_own_normalisation():
    """The card's test pre-processing row said "ImageNet mean/std" for every conversion, also where the run's config
    normalises otherwise (the saved processor had the config's values): it states the processor's own."""
    from hf_semseg.conversion.model_card import _normalisation

    vw = hf_semseg.variant_config("vwformer-convnext-base-ade20k")
    from_text = mmseg_pipeline(mmseg_run_configs(None, {"config": CONFIG_TEXT}))
    own = build_image_processor(conversion_of(vw, pipeline=from_text))
    assert _normalisation(own) == "mean (0.5, 0.5, 0.5) / std (0.2, 0.2, 0.2) (0-1 scale)"
    assert _normalisation(build_image_processor(conversion_of(vw))) == "ImageNet mean/std"
    own.do_normalize = False
    assert _normalisation(own) == "no normalisation"
    for template in (REPO_ROOT / "model_cards").glob("*.md"):
        assert "ImageNet mean/std" not in template.read_text(), template.name


def test_pipelines_the_processor_cannot_reproduce_are_refused():
    bgr = CONFIG_TEXT.replace("to_rgb=True", "to_rgb=False")
    with pytest.raises(
        ConversionError, match=r"test pipeline: Normalize\(to_rgb=False\): the model was trained on BGR"
    ):
        mmseg_pipeline(mmseg_run_configs(None, {"config": bgr}))
    multi = CONFIG_TEXT.replace("img_scale=(1024, 256)", "img_scale=[(1024, 256), (2048, 512)]")
    with pytest.raises(ConversionError, match=r"img_scale = \[\(1024, 256\), \(2048, 512\)\], expected one"):
        mmseg_pipeline(mmseg_run_configs(None, {"config": multi}))
    yaml_config = RunConfig({"INPUT": {"FORMAT": "BGR"}}, "--config_file c.yaml")
    with pytest.raises(ConversionError, match=r"c.yaml: INPUT.FORMAT = 'BGR': the model was trained on BGR"):
        detectron2_pipeline([yaml_config])


def test_a_detectron2_source_config_is_decoded_as_detectron2_decodes_it(tmp_path):
    """detectron2's own config files write tuples as strings (``TEST: ("ade20k_sem_seg_val",)``), which its
    ``CfgNode`` evaluates as Python literals when it merges them; read as plain YAML the dataset was not found (the
    first character of the string was taken for the first test set). Other strings stay as they are."""
    (tmp_path / "base.yaml").write_text('MODEL:\n  BACKBONE:\n    NAME: "D2SwinTransformer"\n  SWIN:\n    QK_SCALE:\n')
    (tmp_path / "run.yaml").write_text(
        '_BASE_: base.yaml\nDATASETS:\n  TEST: ("ade20k_sem_seg_val",)\nINPUT:\n  MIN_SIZE_TEST: 640\n'
        '  MAX_SIZE_TEST: "2560"\n  FORMAT: "RGB"\n'
    )
    values = read_detectron2_config(tmp_path / "run.yaml")
    assert values["DATASETS"]["TEST"] == ("ade20k_sem_seg_val",)
    assert values["INPUT"]["MAX_SIZE_TEST"] == 2560 and values["INPUT"]["FORMAT"] == "RGB"
    assert values["MODEL"] == {"BACKBONE": {"NAME": "D2SwinTransformer"}, "SWIN": {"QK_SCALE": None}}
    found = detectron2_pipeline([RunConfig(values, "--config_file run.yaml")])
    assert found["dataset"] == "ade20k" and found["test_scale"] == (2560, 640)
    one_name = RunConfig({"DATASETS": {"TEST": "cityscapes_fine_sem_seg_val"}}, "--config_file c.yaml")
    assert detectron2_pipeline([one_name])["dataset"] == "cityscapes"


def test_the_mask2former_family_gets_its_processor_and_its_config_pipeline():
    config = hf_semseg.variant_config("semask-mask2former-large-cityscapes")
    config.num_queries = 50  # not the released architecture
    run = RunConfig(
        {
            "INPUT": {"MIN_SIZE_TEST": 1024, "MAX_SIZE_TEST": 2048},
            "MODEL": {"PIXEL_MEAN": [123.675, 116.28, 103.53], "PIXEL_STD": [58.395, 57.12, 57.375]},
            "DATASETS": {"TEST": ["cityscapes_fine_sem_seg_val"]},
        },
        "--config_file config.yaml",
    )
    conversion = conversion_of(
        config, pipeline=detectron2_pipeline([run]), pipeline_fields=("test_scale", "reduce_labels", "image_mean")
    )
    processor = build_image_processor(conversion)
    assert type(processor) is hf_semseg.SeMaskMask2FormerImageProcessor
    assert dict(processor.size) == {"longest_edge": 2048, "shortest_edge": 1024} and not processor.do_reduce_labels
    assert describe_provenance(conversion).startswith(
        "no released variant has these weights; dataset Cityscapes (--config_file config.yaml); every value is in "
        "the weights; test pre-processing: test_scale, image_mean from --config_file config.yaml; reduce_labels from "
        "dataset Cityscapes"
    )
    matched = conversion_of(config, "semask-mask2former-large-cityscapes")
    assert describe_provenance(matched).startswith(
        "released variant semask-mask2former-large-cityscapes (same weights, names and shapes); dataset Cityscapes"
    )


def test_reload_check_compares_the_saved_folder_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = hf_semseg.SeMaskSwinForSemanticSegmentation(demo_model_config()).eval()
    model.save_pretrained(tmp_path)
    check = ReloadCheck(input_size=(64, 64))
    result = check_reload(model, tmp_path, check)
    assert result.max_diff <= result.limit and result.input_size == (64, 64)
    assert "fresh process without hf-semseg" in result.card_line() and "1x3x64x64" in result.card_line()
    weights = load_file(tmp_path / "model.safetensors")
    weights["decode_head.classifier.bias"] = weights["decode_head.classifier.bias"] + 1e-3
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"reloaded in a fresh process, differs .* differ by up to 0\.001"):
        check_reload(model, tmp_path, check)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ConversionError, match="does not load and run in a fresh process without hf-semseg"):
        check_reload(model, tmp_path, check)


def test_one_reload_tolerance_for_every_family():
    assert RELOAD_TOLERANCE == 1e-5
    converters = [semask_fpn.CONVERTER, vwformer.CONVERTER, semask_d2.CONVERTER]
    assert {converter.reload_check for converter in converters} == {RELOAD_CHECK}
