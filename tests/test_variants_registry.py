"""The variant registry is the one place for the facts of every released model that are not in its weights: each
variant has them, its config agrees with them, and the image processors, the converters and the training scripts read
them from there."""

import pytest

import hf_semseg
from hf_semseg.variants import (
    DATASETS,
    MIT_ATTENTION_HEADS,
    SEMASK_MASK2FORMER_DEFAULT_SEMANTIC_WINDOW,
    dataset_labels,
    datasets_with_labels,
    find_variant,
    get_dataset,
    get_variant,
    image_processor_class,
    list_variants,
    variant_config,
    variant_image_processor,
)


ALL_VARIANTS = list_variants()
# families with a converter: their variants must be recognisable from a config by the exact architecture
CONVERTED_FAMILIES = (
    "semask_swin",
    "vwformer",
    "semask_mask2former",
    "semask_maskformer",
    "vw_maskformer",
    "vw_mask2former",
)


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_every_variant_has_its_facts(name):
    variant = get_variant(name)
    dataset = get_dataset(variant.dataset)
    assert dataset.name and dataset.hub_id and variant.dataset_info is dataset
    longest, shortest = variant.test_scale
    assert isinstance(longest, int) and isinstance(shortest, int) and longest >= shortest > 0
    assert len(variant.crop_size) == 2 and all(side > 0 for side in variant.crop_size)
    assert variant.reduce_labels is dataset.reduce_labels  # a dataset fact, the same for every model trained on it
    assert variant.size_divisor in (None, 64)
    config = variant_config(name)
    assert config.model_type == variant.family
    assert config.num_labels == dataset.num_labels
    if variant.family == "vwformer":  # heads and short-cut are not in the weights: the registry has them
        assert (variant.num_attention_heads, variant.use_short_cut) == (
            config.num_attention_heads,
            config.use_short_cut,
        )
    elif variant.family == "vw_maskformer":  # the VW block's heads and short-cut: not in the weights either
        assert (variant.num_attention_heads, variant.use_short_cut) == (config.vw_num_heads, config.vw_use_short_cut)
    else:
        assert variant.num_attention_heads is None and variant.use_short_cut is None
    if variant.family == "semask_swin":
        assert variant.semantic_window_size == config.semantic_window_size
    elif variant.family in ("semask_mask2former", "semask_maskformer"):
        assert variant.semantic_window_size == config.backbone_config.semantic_window_size
    else:
        assert variant.semantic_window_size is None


def test_dataset_table_agrees_with_the_label_file():
    assert set(datasets_with_labels()) == {"ade20k", "cityscapes", "coco-stuff-10k"}
    for key in datasets_with_labels():
        id2label, palette = dataset_labels(key)
        assert len(id2label) == len(palette) == DATASETS[key].num_labels, key
    assert [(DATASETS[key].name, DATASETS[key].hub_id) for key in ("ade20k", "cityscapes", "coco-stuff-10k")] == [
        ("ADE20K", "scene_parse_150"),
        ("Cityscapes", "cityscapes"),
        ("COCO-Stuff-10k", "coco_stuff"),
    ]
    with pytest.raises(KeyError, match="unknown dataset 'pascal'.*ade20k"):
        get_dataset("pascal")


def test_released_pipelines_and_head_settings():
    """The values the converters and cards used to restate, now read from the registry."""
    assert get_variant("semask-fpn-large-ade20k").test_scale == (2560, 640)
    assert get_variant("semask-fpn-base-cityscapes").test_scale == (2048, 1024)
    assert get_variant("semask-fpn-tiny-coco-stuff-10k").test_scale == (2048, 512)
    assert not get_variant("semask-fpn-tiny-cityscapes").reduce_labels
    assert get_variant("vwformer-convnext-tiny-ade20k").size_divisor == 64
    assert get_variant("vwformer-convnext-tiny-cityscapes").size_divisor is None
    heads = {
        name: (get_variant(name).num_attention_heads, get_variant(name).use_short_cut)
        for name in list_variants("vwformer")
    }
    assert heads["vwformer-swin-base-ade20k"] == (1, True) and heads["vwformer-swin-large-ade20k"] == (1, False)
    assert heads["vwformer-convnext-small-ade20k"] == (16, False)  # a copy of the Cityscapes config
    assert all(heads[f"vwformer-convnext-{size}-cityscapes"] == (16, False) for size in ("tiny", "xlarge"))
    assert get_variant("semask-mask2former-large-ade20k").semantic_window_size == 12
    assert get_variant("semask-mask2former-large-cityscapes").semantic_window_size == 7
    assert SEMASK_MASK2FORMER_DEFAULT_SEMANTIC_WINDOW == 7 and MIT_ATTENTION_HEADS == (1, 2, 5, 8)


@pytest.mark.parametrize("name", [name for family in CONVERTED_FAMILIES for name in list_variants(family)])
def test_find_variant_recognises_every_released_architecture(name):
    assert find_variant(variant_config(name)) == name


def test_find_variant_needs_the_exact_architecture():
    config = variant_config("semask-fpn-tiny-ade20k")
    config.depths = [2, 2, 4, 2]  # one stage shorter: no released model
    assert find_variant(config) is None
    from test_modeling_semask_swin import tiny_config

    assert find_variant(tiny_config()) is None


def test_variant_image_processor_is_the_family_processor_with_the_variant_facts():
    processor = variant_image_processor("semask-mask2former-large-cityscapes")
    assert type(processor) is hf_semseg.SeMaskMask2FormerImageProcessor
    assert dict(processor.size) == {"longest_edge": 2048, "shortest_edge": 1024} and not processor.do_reduce_labels
    pil = variant_image_processor("semask-mask2former-large-ade20k", backend="pil")
    assert type(pil) is hf_semseg.SeMaskMask2FormerImageProcessorPil and pil.do_reduce_labels
    vw = variant_image_processor("vwformer-convnext-base-ade20k")
    assert type(vw) is hf_semseg.KeepRatioImageProcessor and vw.size_divisor == 64
    assert dict(vw.size) == {"longest_edge": 2560, "shortest_edge": 640}
    finetuned = variant_image_processor("vwformer-convnext-base-ade20k", test_scale=(1024, 256), reduce_labels=False)
    assert dict(finetuned.size) == {"longest_edge": 1024, "shortest_edge": 256} and not finetuned.do_reduce_labels
    assert dict(variant_image_processor("pale-tiny").size) == {"height": 224, "width": 224}
    assert image_processor_class("segformer") is hf_semseg.KeepRatioImageProcessor  # not a family of this package
    with pytest.raises(ValueError, match="backend"):
        image_processor_class("vwformer", "numpy")


def test_registered_models_load_with_the_processor_auto_class():
    """The processor class a variant gets is the one AutoImageProcessor registers for its config."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

    for family in ("semask_swin", "pale", "vwformer", "semask_mask2former", "vw_maskformer", "vw_mask2former"):
        config_class = type(variant_config(list_variants(family)[0]))
        assert IMAGE_PROCESSOR_MAPPING[config_class]["torchvision"] is image_processor_class(family)


def test_variant_configs_are_fresh_objects():
    first, second = variant_config("semask-fpn-tiny-ade20k"), variant_config("semask-fpn-tiny-ade20k")
    first.id2label[0] = "changed"
    assert second.id2label[0] == "wall" and first is not second


def test_variant_configs_name_their_model_class_and_families_are_checked():
    import transformers

    for name in list_variants():
        config = variant_config(name)
        (architecture,) = config.architectures
        model_class = getattr(hf_semseg, architecture)
        auto = (
            transformers.AutoModelForImageClassification
            if get_variant(name).dataset == "imagenet-1k"
            else transformers.AutoModelForSemanticSegmentation
        )
        assert auto._model_mapping[type(config)] is model_class, name  # what the auto class builds from it
    assert variant_config("pale-tiny").architectures == ["PaleForImageClassification"]
    assert variant_config("semask-fpn-tiny-ade20k").architectures == ["SeMaskSwinForSemanticSegmentation"]
    with pytest.raises(ValueError, match=r"unknown family 'semask'; the families .*'semask_swin'"):
        list_variants("semask")


def test_dataset_labels_returns_a_palette_the_caller_may_change():
    """The cached table's palette was returned itself: a caller's change changed it for every later call."""
    _, palette = hf_semseg.dataset_labels("cityscapes")
    first = list(palette[0])
    palette[0][0] = 1 - palette[0][0]
    palette.append([0, 0, 0])
    again = hf_semseg.dataset_labels("cityscapes")[1]
    assert again[0] == first and len(again) == 19
