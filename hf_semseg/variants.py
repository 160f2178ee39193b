"""Package-wide registry of named model variants (the released models of every family).

``list_variants()`` returns the names, ``variant_config(name)`` a fresh full model config, ``get_variant(name)`` the
record with the dataset, the test-time scale and the paper's reported numbers. Families add their variants with
:func:`register_variant`.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from transformers import PreTrainedConfig


@dataclass(frozen=True)
class Variant:
    """A named released model.

    Attributes:
        name: registry name, e.g. ``"semask-fpn-tiny-ade20k"``.
        family: model family (``"semask_swin"``, ...).
        dataset: dataset key of :func:`dataset_labels` (``"ade20k"``, ``"cityscapes"``, ``"coco-stuff-10k"``).
        make_config: builds the full model config.
        test_scale: keep-ratio test resize bound ``(longest_edge, shortest_edge)``.
        crop_size: training crop ``(height, width)``.
        reduce_labels: whether the dataset's label 0 is "other" and mapped to the ignore index.
        reported: the paper/README numbers (mIoU single-scale, mIoU multi-scale+flip, params in M).
        size_divisor: after the keep-ratio resize, resize up to a multiple of this (mmseg ``ResizeToMultiple``).
    """

    name: str
    family: str
    dataset: str
    make_config: Callable[[], PreTrainedConfig]
    test_scale: tuple[int, int]
    crop_size: tuple[int, int]
    reduce_labels: bool
    reported: dict = field(default_factory=dict)
    size_divisor: int | None = None


_REGISTRY: dict[str, Variant] = {}


def register_variant(variant: Variant) -> None:
    if variant.name in _REGISTRY:
        raise ValueError(f"variant {variant.name!r} is already registered")
    _REGISTRY[variant.name] = variant


def list_variants(family: str | None = None) -> list[str]:
    """Names of the registered variants (of one family when given)."""
    return [name for name, variant in _REGISTRY.items() if family is None or variant.family == family]


def get_variant(name: str) -> Variant:
    if name not in _REGISTRY:
        raise KeyError(f"unknown variant {name!r}; known variants: {', '.join(list_variants())}")
    return _REGISTRY[name]


def variant_config(name: str) -> PreTrainedConfig:
    """A fresh full model config of the named variant."""
    return get_variant(name).make_config()


def variant_image_processor(name: str, backend: str = "torchvision"):
    """The image processor of the named variant: its test-time keep-ratio scale and label reduction
    (``backend="pil"`` for the PIL/NumPy twin)."""
    from .models.image_processing_keep_ratio import KeepRatioImageProcessor
    from .models.image_processing_pil_keep_ratio import KeepRatioImageProcessorPil

    variant = get_variant(name)
    longest, shortest = variant.test_scale
    if variant.family == "semask_mask2former":  # detectron2 pipeline: ResizeShortestEdge, zero padding to 32
        from .models.image_processing_pil_semask_mask2former import SeMaskMask2FormerImageProcessorPil
        from .models.image_processing_semask_mask2former import SeMaskMask2FormerImageProcessor

        processor_class = SeMaskMask2FormerImageProcessorPil if backend == "pil" else SeMaskMask2FormerImageProcessor
        size = {"shortest_edge": shortest, "longest_edge": longest}
        return processor_class(size=size, do_reduce_labels=variant.reduce_labels)
    processor_class = KeepRatioImageProcessorPil if backend == "pil" else KeepRatioImageProcessor
    size = (
        {"height": longest, "width": shortest}
        if longest == shortest
        else {"longest_edge": longest, "shortest_edge": shortest}
    )
    return processor_class(size=size, do_reduce_labels=variant.reduce_labels, size_divisor=variant.size_divisor)


@cache
def _labels_file() -> dict:
    return json.loads(resources.files("hf_semseg.data").joinpath("dataset_labels.json").read_text())


def dataset_labels(dataset: str) -> tuple[dict[int, str], list[list[int]]]:
    """``(id2label, palette)`` of a known dataset (class names and colours of mmsegmentation's dataset classes)."""
    table = _labels_file()
    if dataset not in table:
        raise KeyError(f"unknown dataset {dataset!r}; known: {sorted(table)}")
    entry = table[dataset]
    return dict(enumerate(entry["classes"])), entry["palette"]


# ----------------------------------------------------------------------------------------------------------------
# SeMask-FPN (Jain et al. 2021, Table 2/3/4 and the SeMask-Segmentation README)
# ----------------------------------------------------------------------------------------------------------------

_SEMASK_SIZES = {
    # size: (embed_dim, depths, heads, window)
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
}

# (dataset, size): (mIoU, mIoU ms+flip, params M as counted from the original code)
_SEMASK_REPORTED = {
    ("ade20k", "tiny"): (42.06, 43.36, 34.66),
    ("ade20k", "small"): (45.92, 47.63, 55.97),
    ("ade20k", "base"): (49.35, 50.98, 96.49),
    ("ade20k", "large"): (51.89, 53.52, 210.79),
    ("cityscapes", "tiny"): (74.92, 76.56, 34.24),
    ("cityscapes", "small"): (77.13, 79.14, 55.56),
    ("cityscapes", "base"): (77.70, 79.73, 95.95),
    ("cityscapes", "large"): (78.53, 80.39, 210.00),
    ("coco-stuff-10k", "tiny"): (37.53, 38.88, 34.72),
    ("coco-stuff-10k", "small"): (40.72, 42.27, 56.04),
    ("coco-stuff-10k", "base"): (44.63, 46.30, 96.57),
    ("coco-stuff-10k", "large"): (47.47, 48.54, 210.92),
}


def semask_fpn_config(size: str, dataset: str):
    """The config of a released SeMask-FPN model (``size`` in tiny/small/base/large)."""
    from .models.configuration_semask_swin import SeMaskSwinConfig

    embed_dim, depths, heads, window = _SEMASK_SIZES[size]
    id2label, _ = dataset_labels(dataset)
    # OHEM in the released ADE20K-L and every COCO-Stuff-10k config
    use_ohem = dataset == "coco-stuff-10k" or (dataset == "ade20k" and size == "large")
    return SeMaskSwinConfig(
        embed_dim=embed_dim,
        depths=list(depths),
        num_heads=list(heads),
        window_size=window,
        semantic_window_size=window,
        drop_path_rate=0.3,
        use_ohem=use_ohem,
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )


def _register_semask_fpn() -> None:
    for (dataset, size), (miou, miou_ms, params) in _SEMASK_REPORTED.items():
        if dataset == "cityscapes":
            test_scale, crop = (2048, 1024), (768, 768)
        elif size == "large":
            test_scale, crop = (2560, 640), (640, 640)
        else:
            test_scale, crop = (2048, 512), (512, 512)
        register_variant(
            Variant(
                name=f"semask-fpn-{size}-{dataset}",
                family="semask_swin",
                dataset=dataset,
                make_config=lambda size=size, dataset=dataset: semask_fpn_config(size, dataset),
                test_scale=test_scale,
                crop_size=crop,
                reduce_labels=dataset != "cityscapes",
                reported={"mIoU": miou, "mIoU_ms_flip": miou_ms, "params_M": params},
            )
        )


_register_semask_fpn()


# ----------------------------------------------------------------------------------------------------------------
# Pale Transformer (Wu et al. 2022). No weights were ever released: these are architectures, randomly initialised.
# ----------------------------------------------------------------------------------------------------------------

_PALE_SIZES = {
    # size: (embed_dim, heads, drop_path_rate, ImageNet-1k top-1 reported, params M reported, GFLOPs reported)
    "tiny": (64, (2, 4, 8, 16), 0.1, 83.4, 22, 4.2),
    "small": (96, (4, 8, 16, 32), 0.3, 84.3, 48, 9.0),
    "base": (128, (4, 8, 16, 32), 0.5, 84.9, 85, 15.6),
}


def pale_config(size: str, num_labels: int = 1000, id2label: dict | None = None):
    """Pale-T/S/B (depths 2-2-16-2, pale size 7 in every stage)."""
    from .models.configuration_pale import PaleConfig

    embed_dim, heads, drop_path, *_ = _PALE_SIZES[size]
    id2label = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
    return PaleConfig(
        embed_dim=embed_dim,
        depths=[2, 2, 16, 2],
        num_heads=list(heads),
        pale_sizes=[7, 7, 7, 7],
        drop_path_rate=drop_path,
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )


def _register_pale() -> None:
    for size, (_, _, _, top1, params, gflops) in _PALE_SIZES.items():
        register_variant(
            Variant(
                name=f"pale-{size}",
                family="pale",
                dataset="imagenet-1k",
                make_config=lambda size=size: pale_config(size),
                test_scale=(224, 224),
                crop_size=(224, 224),
                reduce_labels=False,
                reported={"top1": top1, "params_M": params, "GFLOPs_224": gflops, "weights": None},
            )
        )
        register_variant(
            Variant(
                name=f"pale-{size}-upernet-ade20k",
                family="pale",
                dataset="ade20k",
                make_config=lambda size=size: pale_config(size, id2label=dataset_labels("ade20k")[0]),
                test_scale=(2048, 512),
                crop_size=(512, 512),
                reduce_labels=True,
                reported={"weights": None},
            )
        )


_register_pale()


# ----------------------------------------------------------------------------------------------------------------
# VWFormer (Yan et al. 2024): the 12 mmseg models of yan-hao-tian/VW (README tables; params counted on the original)
# ----------------------------------------------------------------------------------------------------------------

_VWFORMER_SWIN = {
    # size: (embed_dim, heads, use_short_cut)
    "base": (128, (4, 8, 16, 32), True),
    "large": (192, (6, 12, 24, 48), False),
}
_VWFORMER_CONVNEXT = {
    # size: (depths, hidden sizes)
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
_VWFORMER_REPORTED = {
    # (backbone, size, dataset): (mIoU, mIoU ms+flip, params M of the original model)
    ("swin", "base", "ade20k"): (52.5, 53.5, 94.74),
    ("swin", "large", "ade20k"): (54.4, 55.8, 203.52),
    ("convnext", "tiny", "ade20k"): (47.3, 48.3, 35.45),
    ("convnext", "small", "ade20k"): (48.8, 49.9, 56.56),
    ("convnext", "base", "ade20k"): (53.3, 54.1, 95.42),
    ("convnext", "large", "ade20k"): (54.3, 55.1, 204.55),
    ("convnext", "xlarge", "ade20k"): (54.6, 55.3, 356.93),
    ("convnext", "tiny", "cityscapes"): (81.3, 82.1, 34.85),
    ("convnext", "small", "cityscapes"): (82.2, 83.1, 56.49),
    ("convnext", "base", "cityscapes"): (83.2, 83.9, 94.83),
    ("convnext", "large", "cityscapes"): (83.4, 84.1, 203.96),
    ("convnext", "xlarge", "cityscapes"): (83.6, 84.3, 356.34),
}


def vwformer_config(backbone: str, size: str, dataset: str):
    """The config of a released VWFormer model. The ADE20K models use the ``vw`` head, except ConvNeXt-S whose
    released config (a copy of the Cityscapes one) uses the ``vw_city`` head, like every Cityscapes model."""
    from transformers import ConvNextConfig, SwinConfig

    from .models.configuration_vwformer import VWFormerConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    if backbone == "swin":
        embed_dim, heads, short_cut = _VWFORMER_SWIN[size]
        backbone_config = SwinConfig(
            image_size=384,
            embed_dim=embed_dim,
            depths=[2, 2, 18, 2],
            num_heads=list(heads),
            window_size=12,
            drop_path_rate=0.3,
            out_features=stages,
        )
    else:
        depths, hidden_sizes = _VWFORMER_CONVNEXT[size]
        short_cut = True
        backbone_config = ConvNextConfig(
            depths=list(depths),
            hidden_sizes=list(hidden_sizes),
            layer_scale_init_value=1.0,
            drop_path_rate=0.4,
            out_features=stages,
        )
    city_head = dataset == "cityscapes" or (backbone, size) == ("convnext", "small")
    id2label, _ = dataset_labels(dataset)
    return VWFormerConfig(
        backbone_config=backbone_config,
        head_type="vw_city" if city_head else "vw",
        num_attention_heads=16 if city_head else 1,
        use_short_cut=False if city_head else short_cut,
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )


def _register_vwformer() -> None:
    for (backbone, size, dataset), (miou, miou_ms, params) in _VWFORMER_REPORTED.items():
        if dataset == "cityscapes":
            test_scale, crop, divisor = (2048, 1024), (512, 1024), None
        elif size in ("tiny", "small"):
            test_scale, crop, divisor = (2048, 512), (512, 512), 64
        else:
            test_scale, crop, divisor = (2560, 640), (640, 640), 64
        register_variant(
            Variant(
                name=f"vwformer-{backbone}-{size}-{dataset}",
                family="vwformer",
                dataset=dataset,
                make_config=lambda b=backbone, s=size, d=dataset: vwformer_config(b, s, d),
                test_scale=test_scale,
                crop_size=crop,
                reduce_labels=dataset != "cityscapes",
                reported={"mIoU": miou, "mIoU_ms_flip": miou_ms, "params_M": params},
                size_divisor=divisor,
            )
        )


_register_vwformer()


# ----------------------------------------------------------------------------------------------------------------
# SeMask-L Mask2Former (Jain et al. 2021; SeMask-Mask2Former README). detectron2 checkpoints, SeMask Swin-L backbone.
# ----------------------------------------------------------------------------------------------------------------

# dataset: (classes, semantic window, test (longest, shortest), crop, mIoU, mIoU ms+flip, params M counted from the
# original code)
_SEMASK_MASK2FORMER = {
    "ade20k": (150, 12, (2560, 640), (640, 640), 56.41, 57.52, 222.63),
    "cityscapes": (19, 7, (2048, 1024), (512, 1024), 83.97, 84.98, 221.84),
}


def semask_mask2former_config(dataset: str):
    """The config of a released SeMask-L Mask2Former model (ADE20K: last stage global semantic attention, semantic
    window 12; Cityscapes: all windowed, semantic window 7 - detectron2's default, the yaml does not set it)."""
    from .models.configuration_semask_mask2former import (
        SEMASK_SWIN_LARGE,
        SeMaskMask2FormerConfig,
        semask_mask2former_semantic_attention_types,
    )
    from .models.configuration_semask_swin import SeMaskSwinConfig

    num_labels, semantic_window, *_ = _SEMASK_MASK2FORMER[dataset]
    id2label, _ = dataset_labels(dataset)
    backbone = SeMaskSwinConfig(
        **dict(SEMASK_SWIN_LARGE, semantic_window_size=semantic_window),
        semantic_attention_types=semask_mask2former_semantic_attention_types(num_labels),
    )
    return SeMaskMask2FormerConfig(
        backbone_config=backbone, id2label=id2label, label2id={label: i for i, label in id2label.items()}
    )


def _register_semask_mask2former() -> None:
    for dataset, (_, _, test_scale, crop, miou, miou_ms, params) in _SEMASK_MASK2FORMER.items():
        register_variant(
            Variant(
                name=f"semask-mask2former-large-{dataset}",
                family="semask_mask2former",
                dataset=dataset,
                make_config=lambda dataset=dataset: semask_mask2former_config(dataset),
                test_scale=test_scale,
                crop_size=crop,
                reduce_labels=dataset != "cityscapes",
                reported={"mIoU": miou, "mIoU_ms_flip": miou_ms, "params_M": params},
            )
        )


_register_semask_mask2former()
