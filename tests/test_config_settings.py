"""Settings a transformers user can plausibly get wrong in the configs of every family, each refused at construction
with a message naming the attribute, its value and what is expected (before: a traceback from inside torch when the
model was built or run, or a silently different model). Tiny configs from ``model_suite``; no forward pass."""

import pytest
from transformers import SegformerConfig

from hf_semseg import (
    PaleConfig,
    SeMaskMask2FormerConfig,
    SeMaskMaskFormerConfig,
    SeMaskSwinConfig,
    VWFormerConfig,
)

from model_suite import (
    FOUR_STAGES,
    TINY_DETR_DECODER_KWARGS,
    tiny_label_kwargs,
    tiny_mask2former_kwargs,
    tiny_pale_kwargs,
    tiny_semask_swin_kwargs,
    tiny_swin,
    tiny_vw_mask2former_config,
    tiny_vw_maskformer_config,
    tiny_vwformer_kwargs,
)


def pale(**overrides):
    return PaleConfig(**tiny_pale_kwargs(**overrides), out_features=FOUR_STAGES)


def semask_swin(**overrides):
    return SeMaskSwinConfig(**tiny_semask_swin_kwargs(**{"out_features": FOUR_STAGES, **overrides}))


def vwformer(backbone_config=None, **overrides):
    return VWFormerConfig(backbone_config=backbone_config or tiny_swin(), **tiny_vwformer_kwargs(**overrides))


def semask_mask2former(**overrides):
    backbone = overrides.pop("backbone_config", None) or SeMaskSwinConfig(**tiny_semask_swin_kwargs())
    return SeMaskMask2FormerConfig(**tiny_mask2former_kwargs(backbone_config=backbone, **overrides))


def semask_maskformer(**overrides):
    values = dict(
        backbone_config=SeMaskSwinConfig(**tiny_semask_swin_kwargs()),
        fpn_feature_size=32,
        mask_feature_size=32,
        decoder_config=dict(TINY_DETR_DECODER_KWARGS),
        **tiny_label_kwargs(),
    )
    values.update(overrides)
    return SeMaskMaskFormerConfig(**values)


def assert_refused(build, *parts):
    """``build()`` raises (the strict dataclass error wraps our ValueError) with every one of ``parts`` in the
    message."""
    with pytest.raises(Exception) as error:
        build()
    message = str(error.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


CASES = {
    # Pale: silently a single head / no stochastic depth change / NaN-prone norms, or a traceback from torch
    "pale num_heads 0": (lambda: pale(num_heads=[0, 2, 4, 4]), "PaleConfig.num_heads", "[0, 2, 4, 4]", "positive"),
    "pale patch_strides 0": (lambda: pale(patch_strides=[0, 2, 2, 2]), "PaleConfig.patch_strides", "positive"),
    "pale embed_dim 0": (lambda: pale(embed_dim=0), "PaleConfig.embed_dim = 0", "positive"),
    "pale mlp_ratio 0.01": (lambda: pale(mlp_ratio=0.01), "PaleConfig.mlp_ratio = 0.01", "at least 1"),
    "pale drop_path 1.5": (lambda: pale(drop_path_rate=1.5), "PaleConfig.drop_path_rate = 1.5", "[0, 1)"),
    "pale dropout -0.1": (
        lambda: pale(attention_probs_dropout_prob=-0.1),
        "PaleConfig.attention_probs_dropout_prob = -0.1",
        "[0, 1)",
    ),
    "pale layer_norm_eps 0": (lambda: pale(layer_norm_eps=0.0), "PaleConfig.layer_norm_eps = 0.0", "positive"),
    "pale cpe even": (lambda: pale(cpe_kernel_size=4), "PaleConfig.cpe_kernel_size = 4", "odd"),
    "pale pool_scales 0": (lambda: pale(pool_scales=[0, 1]), "PaleConfig.pool_scales = [0, 1]", "positive"),
    "pale aux convs 0": (lambda: pale(auxiliary_num_convs=0), "auxiliary_num_convs = 0", "auxiliary_channels = 64"),
    "pale aux weight -1": (lambda: pale(auxiliary_loss_weight=-1.0), "PaleConfig.auxiliary_loss_weight = -1.0", ">= 0"),
    "pale hidden_act": (lambda: pale(hidden_act="gleu"), "PaleConfig.hidden_act = 'gleu'", "ACT2FN"),
    "pale num_labels 0": (lambda: pale(num_labels=0), "PaleConfig.num_labels = 0", "at least 1"),
    "pale id2label gap": (lambda: pale(id2label={0: "a", 5: "b"}), "PaleConfig.id2label", "[0, 5]", "0 ... 1"),
    # SeMask-Swin
    "swin num_heads 0": (lambda: semask_swin(num_heads=[0, 2, 2, 4]), "SeMaskSwinConfig.num_heads", "positive"),
    "swin window_size 0": (lambda: semask_swin(window_size=0), "SeMaskSwinConfig.window_size = 0", "positive"),
    "swin patch_size 0": (lambda: semask_swin(patch_size=0), "SeMaskSwinConfig.patch_size = 0", "positive"),
    "swin depths -1": (lambda: semask_swin(depths=[1, -1, 1, 1]), "SeMaskSwinConfig.depths", ">= 0"),
    "swin mlp_ratio 0": (lambda: semask_swin(mlp_ratio=0), "SeMaskSwinConfig.mlp_ratio = 0", "positive"),
    "swin drop_path -0.1": (lambda: semask_swin(drop_path_rate=-0.1), "SeMaskSwinConfig.drop_path_rate", "[0, 1)"),
    "swin classifier dropout": (
        lambda: semask_swin(classifier_dropout_prob=1.5),
        "SeMaskSwinConfig.classifier_dropout_prob = 1.5",
        "[0, 1)",
    ),
    "swin semantic weight": (
        lambda: semask_swin(semantic_loss_weight=-1.0),
        "SeMaskSwinConfig.semantic_loss_weight = -1.0",
        ">= 0",
    ),
    "swin ohem_min_kept": (
        lambda: semask_swin(use_ohem=True, ohem_min_kept=-1),
        "SeMaskSwinConfig.ohem_min_kept = -1",
        "positive",
    ),
    "swin layer_norm_eps": (lambda: semask_swin(layer_norm_eps=-1.0), "SeMaskSwinConfig.layer_norm_eps", "positive"),
    # VWFormer
    "vw heads 0": (lambda: vwformer(num_attention_heads=0), "VWFormerConfig.num_attention_heads = 0", "positive"),
    "vw hidden 0": (lambda: vwformer(decoder_hidden_size=0), "VWFormerConfig.decoder_hidden_size = 0", "positive"),
    "vw windows 0": (
        lambda: vwformer(num_windows_per_side=0, enlarging_ratios=[]),
        "VWFormerConfig.num_windows_per_side = 0",
        "positive",
    ),
    "vw low level 0": (lambda: vwformer(low_level_channels=0), "VWFormerConfig.low_level_channels = 0", "positive"),
    "vw batch_norm_eps": (lambda: vwformer(batch_norm_eps=-1.0), "VWFormerConfig.batch_norm_eps = -1.0", "positive"),
    "vw aux weight": (
        lambda: vwformer(auxiliary_loss_weight=-1.0),
        "VWFormerConfig.auxiliary_loss_weight = -1.0",
        ">= 0",
    ),
    "vw stem stage": (
        lambda: vwformer(backbone_config=tiny_swin(out_features=["stem", "stage1", "stage2", "stage3"])),
        "out_features is ['stem', 'stage1', 'stage2', 'stage3']",
        "expected ['stage1', 'stage2', 'stage3', 'stage4']",
    ),
    "vw mit 3 stages": (
        lambda: vwformer(
            backbone_config=SegformerConfig(
                num_encoder_blocks=3, depths=[1, 1, 1], hidden_sizes=[16, 24, 32], num_attention_heads=[1, 1, 2]
            )
        ),
        "num_encoder_blocks is 3",
        "four MiT stages",
    ),
    # SeMask Mask2Former
    "m2f num_queries 0": (
        lambda: semask_mask2former(num_queries=0),
        "SeMaskMask2FormerConfig.num_queries = 0",
        "positive",
    ),
    "m2f heads 0": (
        lambda: semask_mask2former(num_attention_heads=0),
        "SeMaskMask2FormerConfig.num_attention_heads = 0",
        "positive",
    ),
    "m2f mask features 0": (
        lambda: semask_mask2former(mask_feature_size=0),
        "SeMaskMask2FormerConfig.mask_feature_size = 0",
        "positive",
    ),
    "m2f encoder_layers -1": (
        lambda: semask_mask2former(encoder_layers=-1),
        "SeMaskMask2FormerConfig.encoder_layers = -1",
        ">= 0",
    ),
    "m2f dice weight": (
        lambda: semask_mask2former(dice_weight=-1.0),
        "SeMaskMask2FormerConfig.dice_weight = -1.0",
        ">= 0",
    ),
    "m2f semantic weight": (
        lambda: semask_mask2former(semantic_loss_weight=-1.0),
        "SeMaskMask2FormerConfig.semantic_loss_weight = -1.0",
        ">= 0",
    ),
    "m2f dropout": (lambda: semask_mask2former(dropout=1.5), "SeMaskMask2FormerConfig.dropout = 1.5", "[0, 1)"),
    "m2f oversample": (
        lambda: semask_mask2former(oversample_ratio=0.5),
        "SeMaskMask2FormerConfig.oversample_ratio = 0.5",
        ">= 1",
    ),
    "m2f importance": (
        lambda: semask_mask2former(importance_sample_ratio=1.5),
        "SeMaskMask2FormerConfig.importance_sample_ratio = 1.5",
        "[0, 1]",
    ),
    "m2f train points": (
        lambda: semask_mask2former(train_num_points=0),
        "SeMaskMask2FormerConfig.train_num_points = 0",
        "positive",
    ),
    "m2f common_stride": (
        lambda: semask_mask2former(common_stride=3),
        "SeMaskMask2FormerConfig.common_stride = 3",
        "expected 4",
    ),
    "m2f feature_strides": (
        lambda: semask_mask2former(feature_strides=[4, 8, 16]),
        "SeMaskMask2FormerConfig.feature_strides = [4, 8, 16]",
        "[4, 8, 16, 32]",
    ),
    "m2f backbone 3 stages": (
        lambda: semask_mask2former(
            backbone_config=SeMaskSwinConfig(**tiny_semask_swin_kwargs(out_features=["stage2", "stage3", "stage4"]))
        ),
        "backbone_config.out_features = ['stage2', 'stage3', 'stage4']",
        "['stage1', 'stage2', 'stage3', 'stage4']",
    ),
    "m2f num_labels 0": (
        lambda: semask_mask2former(id2label=None, label2id=None, num_labels=0),
        "SeMaskMask2FormerConfig.num_labels = 0",
        "at least 1",
    ),
    # SeMask MaskFormer (the DETR decoder checks are shared with VW-MaskFormer)
    "mf heads 0": (
        lambda: semask_maskformer(decoder_config={**TINY_DETR_DECODER_KWARGS, "decoder_attention_heads": 0}),
        "SeMaskMaskFormerConfig.decoder_config.decoder_attention_heads = 0",
        "positive",
    ),
    "mf ffn 0": (
        lambda: semask_maskformer(decoder_config={**TINY_DETR_DECODER_KWARGS, "decoder_ffn_dim": 0}),
        "SeMaskMaskFormerConfig.decoder_config.decoder_ffn_dim = 0",
        "positive",
    ),
    "mf dropout": (
        lambda: semask_maskformer(decoder_config={**TINY_DETR_DECODER_KWARGS, "dropout": 1.5}),
        "SeMaskMaskFormerConfig.decoder_config.dropout = 1.5",
        "[0, 1)",
    ),
    "mf mask weight": (
        lambda: semask_maskformer(mask_weight=-1.0),
        "SeMaskMaskFormerConfig.mask_weight = -1.0",
        ">= 0",
    ),
    "mf semantic weight": (
        lambda: semask_maskformer(semantic_loss_weight=-1.0),
        "SeMaskMaskFormerConfig.semantic_loss_weight = -1.0",
        ">= 0",
    ),
    "mf num_labels 0": (
        lambda: semask_maskformer(id2label=None, label2id=None, num_labels=0),
        "SeMaskMaskFormerConfig.num_labels = 0",
        "at least 1",
    ),
    # VW-MaskFormer / VW-Mask2Former
    "vw maskformer no object weight": (
        lambda: tiny_vw_maskformer_config(no_object_weight=-1.0),
        "VWMaskFormerConfig.no_object_weight = -1.0",
        ">= 0",
    ),
    "vw maskformer stem stage": (
        lambda: tiny_vw_maskformer_config(
            backbone_config=tiny_swin(out_features=["stem", "stage1", "stage2", "stage3"])
        ),
        "out_features=['stem', 'stage1', 'stage2', 'stage3']",
        "expected four depths and out_features ['stage1', 'stage2', 'stage3', 'stage4']",
    ),
    "vw maskformer three-stage swin": (
        lambda: tiny_vw_maskformer_config(
            backbone_config=tiny_swin(depths=[1] * 3, num_heads=[1, 2, 2], out_features=["stage1", "stage2", "stage3"])
        ),
        "depths=[1, 1, 1]",
        "expected four depths and out_features ['stage1', 'stage2', 'stage3', 'stage4']",
    ),
    "vw mask2former num_queries 0": (
        lambda: tiny_vw_mask2former_config(num_queries=0),
        "VWMask2FormerConfig.num_queries = 0",
        "positive",
    ),
    "vw mask2former heads 0": (
        lambda: tiny_vw_mask2former_config(num_attention_heads=0),
        "VWMask2FormerConfig.num_attention_heads = 0",
        "positive",
    ),
    "vw mask2former class weight": (
        lambda: tiny_vw_mask2former_config(class_weight=-1.0),
        "VWMask2FormerConfig.class_weight = -1.0",
        ">= 0",
    ),
    "vw mask2former stem stage": (
        lambda: tiny_vw_mask2former_config(
            backbone_config=tiny_swin(out_features=["stem", "stage1", "stage2", "stage3"])
        ),
        "out_features=['stem', 'stage1', 'stage2', 'stage3']",
        "expected four depths and out_features ['stage1', 'stage2', 'stage3', 'stage4']",
    ),
    "vwformer five-stage swin": (
        lambda: vwformer(
            tiny_swin(depths=[1] * 5, num_heads=[1, 2, 2, 4, 4], out_features=["stage2", "stage3", "stage4", "stage5"])
        ),
        "VWFormer needs the four backbone stages (strides 4/8/16/32)",
        "['stage2', 'stage3', 'stage4', 'stage5'] of a backbone with 5 stages",
    ),
    "vwformer three-stage swin": (
        lambda: vwformer(
            tiny_swin(depths=[1] * 3, num_heads=[1, 2, 2], out_features=["stem", "stage1", "stage2", "stage3"])
        ),
        "out_features is ['stem', 'stage1', 'stage2', 'stage3'] of a backbone with 3 stages",
        "expected four",
    ),
    # the detectron2-style families have no neck: the option was kept as an unknown key and the model built without
    "mask2former sdn neck": (
        lambda: semask_mask2former(use_sdn_neck=True),
        "SeMaskMask2FormerConfig.use_sdn_neck = True: this family has no SDN-style neck",
    ),
    "maskformer sdn neck": (lambda: semask_maskformer(use_sdn_neck=True), "SeMaskMaskFormerConfig.use_sdn_neck"),
    "vw mask2former sdn neck": (lambda: tiny_vw_mask2former_config(use_sdn_neck=True), "VWMask2FormerConfig.use_sdn"),
    "vw maskformer sdn neck": (lambda: tiny_vw_maskformer_config(use_sdn_neck=True), "VWMaskFormerConfig.use_sdn_neck"),
    "vwformer one label": (
        lambda: vwformer(id2label={0: "object"}, label2id={"object": 0}),
        "VWFormerForSemanticSegmentation: VWFormerConfig.num_labels = 1",
        "expected at least 2 classes",
        "binary segmentation is num_labels = 2",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_wrong_setting_is_refused_at_construction(case):
    build, *parts = CASES[case]
    assert_refused(build, *parts)


def test_values_the_models_support_still_construct():
    """Edge values the models run correctly are not refused: stages without blocks, encoder without layers, no
    dropout, a single head, no pooling scales, a no-object weight above 1, mask features at stride 8."""
    pale(depths=[1, 0, 1, 1], drop_path_rate=0.0, pool_scales=[])
    pale(num_heads=[1, 2, 2, 2], auxiliary_num_convs=0, auxiliary_channels=64)
    semask_swin(depths=[1, 0, 1, 1], num_heads=[1, 1, 1, 1], mlp_ratio=0.5)
    vwformer(enlarging_ratios=[2], num_windows_per_side=4, num_attention_heads=1)
    semask_mask2former(encoder_layers=0, no_object_weight=1.5, common_stride=8, dropout=0.0)
    tiny_vw_mask2former_config(encoder_layers=0)
    semask_maskformer(decoder_config={**TINY_DETR_DECODER_KWARGS, "dropout": 0.0})


@pytest.mark.parametrize("family", ["pale", "semask_swin"])
def test_per_pixel_segmentation_model_refuses_one_label(family):
    """A softmax over one class predicts it everywhere and its loss and gradients are 0: the per-pixel segmentation
    models refuse ``num_labels = 1`` (their configs also serve the backbones, and Pale's image classifier, where one
    label is regression, as in transformers), as transformers' BEiT / DPT refuse it."""
    from hf_semseg import PaleForImageClassification, PaleForSemanticSegmentation, SeMaskSwinForSemanticSegmentation

    one_label = {"id2label": {0: "object"}, "label2id": {"object": 0}}
    build, config = {
        "pale": (PaleForSemanticSegmentation, lambda: pale(**one_label)),
        "semask_swin": (SeMaskSwinForSemanticSegmentation, lambda: semask_swin(**one_label)),
    }[family]
    assert_refused(
        lambda: build(config()), f"{build.__name__}: {type(config()).__name__}.num_labels = 1", "at least 2 classes"
    )
    if family == "pale":
        assert PaleForImageClassification(config()).config.num_labels == 1  # regression stays


def test_pale_derived_attributes_follow_embed_dim_and_depths(tmp_path, caplog):
    """``hidden_sizes`` (which the model builds its stages from), ``hidden_size``, ``num_layers`` and ``stage_names``
    follow ``embed_dim`` and ``depths``: set after construction (``from_pretrained(..., embed_dim=...)`` sets its
    keyword arguments on the built config), or given with stale saved values (an edited ``config.json`` or dict).
    Before, the saved values won and the model silently kept the old widths."""
    from transformers import AutoConfig, AutoModelForSemanticSegmentation

    pale().save_pretrained(tmp_path)  # embed_dim 16: widths [16, 32, 64, 128]
    config = AutoConfig.from_pretrained(tmp_path, embed_dim=32)
    assert config.hidden_sizes == [32, 64, 128, 256] and config.hidden_size == 256
    model = AutoModelForSemanticSegmentation.from_config(config)
    assert model.backbone.encoder.stages[0].patch_embed.projection.out_channels == 32
    assert [stage.patch_embed.projection.out_channels for stage in model.backbone.encoder.stages] == [32, 64, 128, 256]

    edited = pale().to_dict()
    edited["depths"] = [1, 1, 2]
    edited["out_features"], edited["out_indices"] = ["stage1", "stage2", "stage3"], [1, 2, 3]
    for name in ("num_heads", "pale_sizes", "patch_sizes", "patch_strides"):
        edited[name] = edited[name][:3]
    with caplog.at_level("WARNING"):
        config = PaleConfig.from_dict(edited)
    assert (config.num_layers, config.hidden_sizes, config.stage_names) == (
        3,
        [16, 32, 64],
        ["stem", "stage1", "stage2", "stage3"],
    )
    assert "the given num_layers = 4 (derived: 3)" in caplog.text and "stage_names" in caplog.text

    config.update({"embed_dim": 8})
    assert config.hidden_sizes == [8, 16, 32] and config.hidden_size == 32
    caplog.clear()
    with caplog.at_level("WARNING"):
        loaded = PaleConfig.from_pretrained(tmp_path)  # consistent saved values: taken without a word
    assert loaded.hidden_sizes == [16, 32, 64, 128] and loaded.stage_names == pale().stage_names
    assert "PaleConfig: the given" not in caplog.text


#: values given after the config checked itself (``from_pretrained(dir, name=value)`` sets them on the loaded config,
#: as ``config.name = value`` does): (model class, config, name, value, parts of the message). Before, the model was
#: built with them: a typo of an attention type silently ran global attention, a width of 9 bits computed with 9,
#: others failed inside torch (a reshape, a division by zero) without naming the setting.
def overrides():
    from hf_semseg import (
        PaleForSemanticSegmentation,
        SeMaskMask2FormerForSemanticSegmentation,
        SeMaskSwinForSemanticSegmentation,
        VWFormerForSemanticSegmentation,
    )

    return {
        "semask attention type typo": (
            SeMaskSwinForSemanticSegmentation,
            semask_swin,
            "semantic_attention_types",
            ["Window", "window", "global", "global"],
            "semantic_attention_types[0] = 'Window'",
        ),
        "weight width 9": (
            SeMaskSwinForSemanticSegmentation,
            lambda: semask_swin(weight_bits=[8, 4]),
            "active_weight_bits",
            9,
            "weight width 9",
        ),
        "pale pale_sizes 0": (PaleForSemanticSegmentation, pale, "pale_sizes", [0, 0, 0, 0], "PaleConfig.pale_sizes"),
        "vwformer heads 3": (
            VWFormerForSemanticSegmentation,
            vwformer,
            "num_attention_heads",
            3,
            "num_attention_heads",
        ),
        "mask2former decoder": (
            SeMaskMask2FormerForSemanticSegmentation,
            semask_mask2former,
            "pixel_decoder_type",
            "bogus",
            "pixel_decoder_type = 'bogus'",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["semask attention type typo", "weight width 9", "pale pale_sizes 0", "vwformer heads 3", "mask2former decoder"],
)
def test_values_set_after_construction_are_checked_when_a_model_is_built(case, tmp_path):
    """The model constructors run the config's checks again (``PreTrainedConfig.validate``, those of its constructor
    and of ``save_pretrained``): a wrong value given to ``from_pretrained`` or set on a config is refused with the
    constructor's message, before any layer is built; the same value given to the constructor is refused alike."""
    from transformers import AutoModelForSemanticSegmentation

    model_class, config_builder, name, value, part = overrides()[case]
    model_class(config_builder()).save_pretrained(tmp_path)
    assert_refused(lambda: AutoModelForSemanticSegmentation.from_pretrained(tmp_path, **{name: value}), part)
    config = config_builder()
    setattr(config, name, value)
    assert_refused(lambda: model_class(config), part)
    assert_refused(lambda: type(config).from_dict({**config_builder().to_dict(), name: value}), part)


@pytest.mark.parametrize("family", ["pale", "semask_swin"])
def test_segmentation_models_built_from_a_default_backbone_stage_choice_name_the_fix(family):
    """A config built with transformers' backbone default (``out_features`` unset: the last stage only) is refused
    when the segmentation model is built, naming the setting that fixes it (SeMask-FPN was built and failed in its
    first forward with a message that did not say what to set); so is a SeMask stage without semantic blocks."""
    from hf_semseg import PaleForSemanticSegmentation, SeMaskSwinForSemanticSegmentation

    build, config = {
        "pale": (PaleForSemanticSegmentation, PaleConfig(**tiny_pale_kwargs(), **tiny_label_kwargs())),
        "semask_swin": (SeMaskSwinForSemanticSegmentation, SeMaskSwinConfig(**tiny_semask_swin_kwargs())),
    }[family]
    assert config.out_features == ["stage4"]
    fix = "set out_features=['stage1', 'stage2', 'stage3', 'stage4']"
    assert_refused(lambda: build(config), "config.out_features is ['stage4'] (unset means the last stage only", fix)
    if family == "semask_swin":
        assert_refused(
            lambda: build(semask_swin(num_semantic_blocks=[1, 0, 1, 1])),
            "SeMaskSwinConfig.num_semantic_blocks = [1, 0, 1, 1]; expected at least one semantic block in every stage",
        )
