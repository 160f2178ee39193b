"""Values of a run's config that change what the converted model computes and that the weights do not hold (issue 11,
"never guess"): each is carried over where the hf-semseg config can represent it, and refused - one ``error:`` line
naming the config file, the key, the value found and what the converted model computes, nothing written - where it
cannot. Before, these were silently dropped: a GELU decode head converted into a ReLU one, a BatchNorm of another
epsilon into one of 1e-5, a detectron2 LayerNorm pixel decoder into a GroupNorm one, and a config whose ``model`` was
not a dict was read as one without model settings."""

import json

import pytest
import torch
import yaml
from script_helpers import load_example

from conftest import REPO_ROOT, fixture_config_file, fixture_dir


#: the command line that converts each shared fixture
CONVERTERS = {
    "semask_fpn_tiny": "semask_fpn",
    "vwformer_tiny": "vwformer",
    "vwformer_city_tiny": "vwformer",
    "semask_mask2former_tiny": "semask_d2",
    "semask_maskformer_tiny": "semask_d2",
    "vw_mask2former_tiny": "vwformer_d2",
    "vw_maskformer_tiny": "vwformer_d2",
}
#: what ``check_representable`` says after the value: the converted model cannot reproduce the run
CANNOT = "and cannot represent this value; it cannot reproduce this run"


def run_converter(fixture: str, tmp_path, capsys, *arguments, checkpoint=None) -> tuple[int, str, list[str]]:
    """Converts ``checkpoint`` (the fixture's by default) into ``tmp_path / "out"`` with ``arguments``: exit status,
    stdout, stderr lines."""
    converter = load_example(REPO_ROOT / "conversion" / f"convert_{CONVERTERS[fixture]}_to_hf.py")
    checkpoint = checkpoint or fixture_dir(fixture) / "original_checkpoint.pth"
    arguments = ["--checkpoint_path", checkpoint, "--output_dir", tmp_path / "out", *arguments]
    status = converter.main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return status, captured.out, captured.err.splitlines()


def refused(fixture: str, tmp_path, capsys, *arguments, checkpoint=None) -> str:
    """The one ``error:`` line of a conversion that must stop (exit status 1) before anything is written."""
    status, _, errors = run_converter(fixture, tmp_path, capsys, *arguments, checkpoint=checkpoint)
    assert status == 1 and len(errors) == 1 and errors[0].startswith("error: "), errors
    assert not (tmp_path / "out").exists()
    return errors[0]


def mmseg_config(fixture: str, tmp_path, change) -> str:
    """The fixture's mmseg config (``model = dict(...)``) with ``change`` applied to the model dict, as a file."""
    config = json.loads((fixture_dir(fixture) / "config.json").read_text())
    model = config.get("mmseg_config") or config.get("original_config")
    change(model)
    path = tmp_path / "run.py"
    path.write_text(f"model = {model!r}\n")
    return str(path)


def detectron2_config(fixture: str, tmp_path, change) -> str:
    """The fixture's detectron2 ``config.yaml`` with ``change`` applied to the loaded mapping, as a file."""
    config = yaml.safe_load(fixture_config_file(fixture, tmp_path).read_text())
    change(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def head(**values):
    return lambda model: model["decode_head"].update(values)


def backbone(**values):
    return lambda model: model["backbone"].update(values)


REFUSED_MMSEG = [
    # the decode heads compute ReLU: a GELU (or no activation) would convert into another model
    (
        "semask_fpn_tiny",
        head(act_cfg={"type": "GELU"}),
        "model.decode_head.act_cfg = {'type': 'GELU'}, but the converted model applies ReLU in the decode head's "
        "convolution modules (act_cfg dict(type='ReLU'))",
    ),
    (
        "vwformer_tiny",  # VWHead: the image-pooling branch follows act_cfg
        head(act_cfg=None),
        "model.decode_head.act_cfg = None, but the converted model applies ReLU",
    ),
    # BN and SyncBN are the same at inference; GroupNorm (same parameter names in the weights) is not
    (
        "semask_fpn_tiny",
        head(norm_cfg={"type": "GN", "num_groups": 8, "requires_grad": True}),
        "model.decode_head.norm_cfg = {'type': 'GN', 'num_groups': 8, 'requires_grad': True}, but the converted "
        "model normalises the decode head's convolution modules with norm_cfg type 'BN' or 'BN2d' or 'SyncBN' or "
        "'MMSyncBN', eps 1e-05",
    ),
    (
        "semask_fpn_tiny",
        head(norm_cfg={"type": "SyncBN", "eps": 0.001}),
        "model.decode_head.norm_cfg = {'type': 'SyncBN', 'eps': 0.001}, but the converted model normalises",
    ),
    (
        "vwformer_tiny",  # VWHead hard-codes SyncBN (eps 1e-5) for all but its pooling and attention-output norms
        head(norm_cfg={"type": "SyncBN", "eps": 0.001, "requires_grad": True}),
        "model.decode_head.norm_cfg = {'type': 'SyncBN', 'eps': 0.001, 'requires_grad': True}, but the converted "
        "model normalises the decode head's convolution modules with norm_cfg type 'BN' or 'BN2d' or 'SyncBN' or "
        "'MMSyncBN', eps 1e-05",
    ),
    (
        "semask_fpn_tiny",  # weight-standardised convolutions have the plain ones' parameters
        head(conv_cfg={"type": "ConvWS"}),
        "model.decode_head.conv_cfg = {'type': 'ConvWS'}, but the converted model uses plain convolutions in the "
        "decode head (conv_cfg None or dict(type='Conv2d'))",
    ),
    (
        "semask_fpn_tiny",
        head(in_index=[0, 1, 3, 2]),
        "model.decode_head.in_index = [0, 1, 3, 2], but the converted model feeds the decode head the four backbone "
        "stages in order (in_index [0, 1, 2, 3])",
    ),
    (
        "vwformer_tiny",
        backbone(out_indices=(1, 2, 3)),
        "model.backbone.out_indices = (1, 2, 3), but the converted model takes the four backbone stages",
    ),
    (
        "semask_fpn_tiny",
        head(feature_strides=[4, 8, 16, 16]),
        "model.decode_head.feature_strides = [4, 8, 16, 16], but the converted model upsamples each level by 2 once "
        "per stage (feature_strides [4, 8, 16, 32])",
    ),
    # the loss the converted model computes (labels given)
    (
        "semask_fpn_tiny",
        head(loss_decode={"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 0.5}),
        "model.decode_head.loss_decode = {'type': 'CrossEntropyLoss', 'use_sigmoid': False, 'loss_weight': 0.5}, "
        "but the converted model computes one softmax cross-entropy of weight 1.0, averaged",
    ),
    (
        "vwformer_tiny",
        head(loss_decode=[{"type": "CrossEntropyLoss"}, {"type": "LovaszLoss"}]),
        "model.decode_head.loss_decode = [{'type': 'CrossEntropyLoss'}, {'type': 'LovaszLoss'}], but the converted "
        "model computes one softmax cross-entropy",
    ),
    (
        "semask_fpn_tiny",  # a pixel sampler other than mmseg's OHEM
        head(sampler={"type": "RandomPixelSampler", "ratio": 0.5}),
        "model.decode_head.sampler = {'type': 'RandomPixelSampler', 'ratio': 0.5}, but the converted model samples "
        "pixels with OHEM or not at all",
    ),
    # the backbones' activation and norm (transformers' Swin: GELU, LayerNorm eps 1e-5; ConvNeXt: eps 1e-6)
    (
        "vwformer_tiny",
        backbone(act_cfg={"type": "ReLU"}),
        "model.backbone.act_cfg = {'type': 'ReLU'}, but the converted model applies GELU in the backbone "
        "(act_cfg dict(type='GELU'))",
    ),
    (
        "vwformer_tiny",
        backbone(norm_cfg={"type": "LN", "eps": 1e-6, "requires_grad": True}),
        "model.backbone.norm_cfg = {'type': 'LN', 'eps': 1e-06, 'requires_grad': True}, but the converted model "
        "normalises the backbone with norm_cfg type 'LN', eps 1e-05",
    ),
    (
        "vwformer_city_tiny",  # mmcls ConvNeXt's default is LN2d with eps 1e-6; a bare LN2d has 1e-5
        backbone(norm_cfg={"type": "LN2d"}),
        "model.backbone.norm_cfg = {'type': 'LN2d'}, but the converted model normalises the backbone with norm_cfg "
        "type 'LN2d', eps 1e-06",
    ),
]


@pytest.mark.parametrize("fixture, change, expected", REFUSED_MMSEG)
def test_mmseg_values_the_converted_model_cannot_represent_are_refused(fixture, change, expected, tmp_path, capsys):
    config_file = mmseg_config(fixture, tmp_path, change)
    error = refused(fixture, tmp_path, capsys, "--config_file", config_file)
    assert f"error: --config_file {config_file}: {expected}" in error, error
    assert error.endswith(CANNOT), error


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model = 5\n", "model = 5"),
        ("model = [dict(type='EncoderDecoder')]\n", "model = [{'type': 'EncoderDecoder'}]"),
        ("model = dict(type='EncoderDecoder', decode_head=None)\n", "model.decode_head = None"),
    ],
)
def test_an_mmseg_config_whose_model_is_not_a_dict_is_an_error_naming_the_key(text, expected, tmp_path, capsys):
    """Such a config read as one without model settings: each value was taken from elsewhere, or left out."""
    config_file = tmp_path / "run.py"
    config_file.write_text(text)
    error = refused("semask_fpn_tiny", tmp_path, capsys, "--config_file", config_file)
    assert error == f"error: --config_file {config_file}: {expected}, expected a dict of settings (dict(...))"


def test_checkpoint_config_text_whose_model_is_not_a_dict_is_an_error(tmp_path, capsys):
    checkpoint = torch.load(fixture_dir("vwformer_tiny") / "original_checkpoint.pth", weights_only=True)
    checkpoint["meta"]["config"] = "model = 'VWHead'\n"
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    error = refused("vwformer_tiny", tmp_path, capsys, checkpoint=path)
    assert error == (
        f"error: {path}: the config text saved in the checkpoint cannot be read: the checkpoint's config text: "
        "model = 'VWHead', expected a dict of settings (dict(...))"
    )


def saved_config(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / "config.json").read_text())


@pytest.mark.parametrize(
    "fixture, change, expected",
    [
        # the classifier dropout and the ignored label (training only)
        (
            "semask_fpn_tiny",
            head(dropout_ratio=0.2, ignore_index=250),
            {"classifier_dropout_prob": 0.2, "loss_ignore_index": 250},
        ),
        # the same, and mmseg 0.30's avg_non_ignore (the loss averaged over the labelled pixels only)
        (
            "vwformer_tiny",
            head(dropout_ratio=0.0, ignore_index=0, loss_decode={"type": "CrossEntropyLoss", "avg_non_ignore": True}),
            {"classifier_dropout_prob": 0.0, "loss_ignore_index": 0, "loss_mean_over_all_pixels": False},
        ),
        # VWCityHead: every BatchNorm of the head follows norm_cfg, whose eps the converted head keeps
        (
            "vwformer_city_tiny",
            head(norm_cfg={"type": "SyncBN", "eps": 0.001, "requires_grad": True}),
            {"batch_norm_eps": 0.001},
        ),
    ],
)
def test_mmseg_values_the_converted_model_represents_are_carried_over(fixture, change, expected, tmp_path, capsys):
    config_file = mmseg_config(fixture, tmp_path, change)
    status, _, errors = run_converter(fixture, tmp_path, capsys, "--config_file", config_file, "--skip_reload_check")
    assert status == 0, errors
    saved = saved_config(tmp_path)
    assert {name: saved[name] for name in expected} == expected


def section(*path, **values):
    """A change of a detectron2 config: ``values`` set in the section at ``path`` (created when absent)."""

    def change(config):
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node.update(values)

    return change


REFUSED_DETECTRON2 = [
    # detectron2's get_norm: "GN" is GroupNorm(32, C); a LayerNorm ("LN") has the same parameter names
    (
        "semask_mask2former_tiny",
        section("MODEL", "SEM_SEG_HEAD", NORM="LN"),
        "MODEL.SEM_SEG_HEAD.NORM = 'LN', but the converted model normalises the pixel decoder's convolutions with "
        "GroupNorm(32, C) (NORM 'GN')",
    ),
    ("semask_maskformer_tiny", section("MODEL", "SEM_SEG_HEAD", NORM="LN"), "MODEL.SEM_SEG_HEAD.NORM = 'LN', but"),
    ("vw_mask2former_tiny", section("MODEL", "SEM_SEG_HEAD", NORM="LN"), "MODEL.SEM_SEG_HEAD.NORM = 'LN', but"),
    # the image processor resizes the class scores, not the mask logits, to the image
    (
        "vw_maskformer_tiny",
        section("MODEL", "MASK_FORMER", "TEST", SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE=True),
        "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = True, but the converted model (its image "
        "processor) resizes the class scores to the image after the semantic inference "
        "(SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE False)",
    ),
    (
        "semask_mask2former_tiny",
        section("MODEL", "MASK_FORMER", "TEST", SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE=True),
        "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = True, but the converted model",
    ),
]


@pytest.mark.parametrize("fixture, change, expected", REFUSED_DETECTRON2)
def test_detectron2_values_the_converted_model_cannot_represent_are_refused(
    fixture, change, expected, tmp_path, capsys
):
    config_file = detectron2_config(fixture, tmp_path, change)
    error = refused(fixture, tmp_path, capsys, "--config_file", config_file)
    assert f"error: --config_file {config_file}: {expected}" in error and error.endswith(CANNOT), error


@pytest.mark.parametrize(
    "change, expected",
    [
        # the projections are there when ENFORCE_INPUT_PROJ is set, even where CONVS_DIM equals HIDDEN_DIM
        (
            section("MODEL", "MASK_FORMER", ENFORCE_INPUT_PROJ=True),
            "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = True, but the checkpoint's weights have False (the presence of "
            "sem_seg_head.predictor.input_proj.* keys)",
        ),
        # the masked-attention decoder reads the pixel decoder's three levels
        (
            section("MODEL", "MASK_FORMER", TRANSFORMER_IN_FEATURE="res5"),
            "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = 'res5', but the checkpoint's weights have "
            "'multi_scale_pixel_decoder' (the predictor's input levels)",
        ),
    ],
)
def test_a_semask_mask2former_config_that_contradicts_the_decoder_is_refused(change, expected, tmp_path, capsys):
    config_file = detectron2_config("semask_mask2former_tiny", tmp_path, change)
    error = refused("semask_mask2former_tiny", tmp_path, capsys, "--config_file", config_file)
    assert f"error: --config_file {config_file}: {expected}; it is not the config of the run" in error, error


@pytest.mark.parametrize(
    "fixture, change, expected",
    [
        ("semask_mask2former_tiny", lambda config: config.update(MODEL=None), "MODEL = None"),
        ("vw_mask2former_tiny", lambda config: config["MODEL"].update(SWIN=None), "MODEL.SWIN = None"),
        ("semask_maskformer_tiny", lambda config: config["MODEL"].update(MASK_FORMER=[1]), "MODEL.MASK_FORMER = [1]"),
        ("vw_maskformer_tiny", lambda config: config.update(INPUT="RGB"), "INPUT = 'RGB'"),
    ],
)
def test_a_detectron2_section_that_is_not_a_mapping_is_an_error_naming_it(fixture, change, expected, tmp_path, capsys):
    """``MODEL: null`` read as a config without MODEL settings: each value was reported "not set"."""
    config_file = detectron2_config(fixture, tmp_path, change)
    error = refused(fixture, tmp_path, capsys, "--config_file", config_file)
    assert error == (
        f"error: --config_file {config_file}: {expected}, expected a mapping of settings (a detectron2 config section)"
    )


def test_the_maskformer_decoder_dropout_reaches_its_attentions_and_ffn(tmp_path, capsys):
    """The original DETR decoder layers apply DROPOUT to the attention weights and after the FFN's activation too."""
    config_file = detectron2_config("semask_maskformer_tiny", tmp_path, section("MODEL", "MASK_FORMER", DROPOUT=0.2))
    arguments = ["--config_file", config_file, "--skip_reload_check"]
    status, _, errors = run_converter("semask_maskformer_tiny", tmp_path, capsys, *arguments)
    assert status == 0, errors
    decoder = saved_config(tmp_path)["decoder_config"]
    assert (decoder["dropout"], decoder["attention_dropout"], decoder["activation_dropout"]) == (0.2, 0.2, 0.2)


@pytest.mark.parametrize(
    "fixture, change",
    [
        # ReLU in place, SyncBN / BN with the default eps, a plain conv, negative in_index and ConvNeXt out_indices
        (
            "vwformer_city_tiny",
            lambda model: (
                model["decode_head"].update(
                    act_cfg={"type": "ReLU", "inplace": True},
                    norm_cfg={"type": "BN", "eps": 1e-5, "momentum": 0.01},
                    conv_cfg={"type": "Conv2d"},
                    in_index=[-4, -3, -2, -1],
                    loss_decode={"type": "CrossEntropyLoss", "loss_name": "loss_ce", "class_weight": None},
                )
                or model["backbone"].update(
                    out_indices=[-4, -3, -2, -1], act_cfg={"type": "GELU"}, norm_cfg={"type": "LN2d", "eps": 1e-6}
                )
            ),
        ),
        (
            "semask_fpn_tiny",
            lambda model: model["decode_head"].update(
                feature_strides=(8, 16, 32, 64), conv_cfg=None, sampler={"type": "OHEMPixelSampler", "min_kept": 10}
            ),
        ),
    ],
)
def test_values_the_converted_model_computes_are_accepted(fixture, change, tmp_path, capsys):
    config_file = mmseg_config(fixture, tmp_path, change)
    arguments = ["--config_file", config_file, "--skip_reload_check"]
    status, _, errors = run_converter(fixture, tmp_path, capsys, *arguments)
    assert status == 0 and errors == [], errors


def mask_former(**values):
    return lambda config: config["MODEL"]["MASK_FORMER"].update(values)


@pytest.mark.parametrize(
    "fixture, kind, change, expected",
    [
        (
            "semask_fpn_tiny",
            "mmseg",
            backbone(drop_path_rate=1.5),
            "model.backbone.drop_path_rate = 1.5: expected a rate",
        ),
        (
            "vwformer_tiny",
            "mmseg",
            backbone(drop_path_rate=-0.1),
            "model.backbone.drop_path_rate = -0.1: expected a rate",
        ),
        ("semask_fpn_tiny", "mmseg", head(cate_w=-1.0), "model.decode_head.cate_w = -1.0: expected a loss weight >= 0"),
        ("semask_fpn_tiny", "mmseg", head(cate_w=12345.5), "model.decode_head.cate_w = inf: expected a finite number"),
        (
            "semask_mask2former_tiny",
            "d2",
            mask_former(CLASS_WEIGHT=-2.0),
            "CLASS_WEIGHT = -2.0: expected a loss weight",
        ),
        (
            "semask_mask2former_tiny",
            "d2",
            mask_former(MASK_WEIGHT=float("inf")),
            "MASK_WEIGHT = inf: expected a finite",
        ),
        (
            "semask_maskformer_tiny",
            "d2",
            mask_former(DROPOUT=1.5),
            "MODEL.MASK_FORMER.DROPOUT = 1.5: expected a number",
        ),
        (
            "semask_mask2former_tiny",
            "d2",
            lambda config: config["MODEL"]["SWIN"].update(DROP_PATH_RATE=1.5),
            "MODEL.SWIN.DROP_PATH_RATE = 1.5: expected a rate from 0 up to, not including, 1",
        ),
        (
            "vw_mask2former_tiny",
            "d2",
            mask_former(OVERSAMPLE_RATIO=0.5),
            "OVERSAMPLE_RATIO = 0.5: expected a number >= 1",
        ),
        (
            "vw_mask2former_tiny",
            "d2",
            mask_former(IMPORTANCE_SAMPLE_RATIO=1.5),
            "IMPORTANCE_SAMPLE_RATIO = 1.5: expected a number from 0 to 1",
        ),
    ],
)
def test_training_only_values_out_of_their_range_are_refused(fixture, kind, change, expected, tmp_path, capsys):
    """Read as any number and set on the config after its validation: the config's own check failed later, in
    save_pretrained (a traceback), or nothing checked them (a drop-path rate of 1.5, an infinite loss weight written
    into config.json)."""
    if kind == "mmseg":
        config_file = mmseg_config(fixture, tmp_path, change)
        text = open(config_file).read().replace("12345.5", "1e999")  # a literal that reads as inf
        open(config_file, "w").write(text)
    else:
        config_file = detectron2_config(fixture, tmp_path, change)
    error = refused(fixture, tmp_path, capsys, "--config_file", config_file)
    assert error.startswith(f"error: --config_file {config_file}: ") and expected in error, error
