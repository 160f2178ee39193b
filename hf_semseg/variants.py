"""Package-wide registry of named model variants (the released models of every family) and of their datasets: the
one place for every fact about a released model that is not in its weights.

``list_variants()`` returns the names, ``variant_config(name)`` a fresh full model config, ``get_variant(name)`` the
record: dataset, test-time scale, size divisor, label reduction, the settings a converter cannot read from the
weights (VWFormer attention heads and short-cut, the SeMask semantic window) and the paper's reported numbers.
:data:`DATASETS` holds the facts of each dataset (display name, Hub dataset id, classes, label reduction, base test
scale). The converters, the model cards, :func:`variant_image_processor` and the training scripts read them from
here. Families add their variants with :func:`register_variant`; :func:`find_variant` tells which registered variant
a config builds (the exact architecture).
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from transformers import PreTrainedConfig


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """The facts of a dataset that every model trained on it shares.

    Attributes:
        key: registry key (``"ade20k"``); also the key of :func:`dataset_labels` when the dataset has class names there.
        name: display name (``"ADE20K"``).
        hub_id: Hub dataset id, for the ``datasets:`` field of a model card.
        num_labels: classes after label reduction.
        reduce_labels: whether the annotations' label 0 is "other", mapped to the ignore index and the other labels
            shifted down by one (mmseg ``reduce_zero_label``).
        test_scale: keep-ratio test resize bound ``(longest_edge, shortest_edge)`` of the dataset's base config (a
            variant's own config may use another one).
    """

    key: str
    name: str
    hub_id: str
    num_labels: int
    reduce_labels: bool
    test_scale: tuple[int, int]


DATASETS: dict[str, DatasetInfo] = {
    "ade20k": DatasetInfo("ade20k", "ADE20K", "scene_parse_150", 150, True, (2048, 512)),
    "cityscapes": DatasetInfo("cityscapes", "Cityscapes", "cityscapes", 19, False, (2048, 1024)),
    "coco-stuff-10k": DatasetInfo("coco-stuff-10k", "COCO-Stuff-10k", "coco_stuff", 171, True, (2048, 512)),
    "imagenet-1k": DatasetInfo("imagenet-1k", "ImageNet-1k", "ILSVRC/imagenet-1k", 1000, False, (224, 224)),
}


def get_dataset(key: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``key``."""
    if key not in DATASETS:
        raise KeyError(f"unknown dataset {key!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[key]


@cache
def _labels_file() -> dict:
    return json.loads(resources.files("hf_semseg.data").joinpath("dataset_labels.json").read_text())


def dataset_labels(dataset: str) -> tuple[dict[int, str], list[list[int]]]:
    """``(id2label, palette)`` of a known dataset (class names and colours of mmsegmentation's dataset classes)."""
    table = _labels_file()
    if dataset not in table:
        raise KeyError(f"unknown dataset {dataset!r}; known: {sorted(table)}")
    entry = table[dataset]
    return dict(enumerate(entry["classes"])), [
        list(colour) for colour in entry["palette"]
    ]  # a copy: the table is cached


def datasets_with_labels() -> list[str]:
    """Keys of the datasets whose class names and palette :func:`dataset_labels` knows."""
    return [key for key in DATASETS if key in _labels_file()]


def _labels_config_kwargs(dataset: str) -> dict:
    """``id2label`` / ``label2id`` of a dataset with class names, as config keyword arguments."""
    id2label, _ = dataset_labels(dataset)
    return {"id2label": id2label, "label2id": {label: index for index, label in id2label.items()}}


# ----------------------------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A named released model.

    Attributes:
        name: registry name, e.g. ``"semask-fpn-tiny-ade20k"``.
        family: model family, the ``model_type`` of its config (``"semask_swin"``, ``"vwformer"``, ...).
        dataset: key of :data:`DATASETS` (``"ade20k"``, ``"cityscapes"``, ``"coco-stuff-10k"``, ``"imagenet-1k"``).
        make_config: builds the full model config.
        test_scale: keep-ratio test resize bound ``(longest_edge, shortest_edge)``; defaults to the dataset's.
        crop_size: training crop ``(height, width)``.
        reduce_labels: whether the dataset's label 0 is "other" and mapped to the ignore index; defaults to the
            dataset's.
        reported: the paper/README numbers (mIoU single-scale, mIoU multi-scale+flip, params in M).
        size_divisor: after the keep-ratio resize, resize up to a multiple of this (mmseg ``ResizeToMultiple``).
        size_divisibility: detectron2 heads: after the resize, zero-pad to a multiple of this (the processor's
            ``size_divisibility``; the processor's default, 32, when None).
        num_attention_heads: VWFormer: attention heads of the decode head (not in the weights).
        use_short_cut: VWFormer: the decode head's short-cut (not in the weights).
        semantic_window_size: SeMask backbones: window of the semantic attention (not in the weights).
    """

    name: str
    family: str
    dataset: str
    make_config: Callable[[], PreTrainedConfig]
    crop_size: tuple[int, int]
    test_scale: tuple[int, int] | None = None
    reduce_labels: bool | None = None
    reported: dict = field(default_factory=dict)
    size_divisor: int | None = None
    size_divisibility: int | None = None
    num_attention_heads: int | None = None
    use_short_cut: bool | None = None
    semantic_window_size: int | None = None

    def __post_init__(self):
        if self.test_scale is None:
            object.__setattr__(self, "test_scale", get_dataset(self.dataset).test_scale)
        if self.reduce_labels is None:
            object.__setattr__(self, "reduce_labels", get_dataset(self.dataset).reduce_labels)

    @property
    def dataset_info(self) -> DatasetInfo:
        return get_dataset(self.dataset)


_REGISTRY: dict[str, Variant] = {}


def register_variant(variant: Variant) -> None:
    if variant.name in _REGISTRY:
        raise ValueError(f"variant {variant.name!r} is already registered")
    _REGISTRY[variant.name] = variant


def list_variants(family: str | None = None) -> list[str]:
    """Names of the registered variants, of one ``family`` when given: a config ``model_type``, one of
    ``"semask_swin"`` (SeMask-FPN), ``"semask_mask2former"``, ``"semask_maskformer"``, ``"vwformer"``,
    ``"vw_mask2former"``, ``"vw_maskformer"`` and ``"pale"``; another name is a ``ValueError`` listing them."""
    if family is not None and family not in {variant.family for variant in _REGISTRY.values()}:
        families = sorted({variant.family for variant in _REGISTRY.values()})
        raise ValueError(f"unknown family {family!r}; the families with registered variants are {families}")
    return [name for name, variant in _REGISTRY.items() if family is None or variant.family == family]


def get_variant(name: str) -> Variant:
    if name not in _REGISTRY:
        raise KeyError(f"unknown variant {name!r}; known variants: {', '.join(list_variants())}")
    return _REGISTRY[name]


#: ``out_features`` of the backbone of every released segmentation model: its decode head takes the four stages
#: (transformers' backbone configs return the last stage only when ``out_features`` is not given)
FOUR_STAGES = ("stage1", "stage2", "stage3", "stage4")

#: the model class of each family's released models (``config.architectures``), by whether they classify images
_ARCHITECTURES = {
    ("semask_swin", False): "SeMaskSwinForSemanticSegmentation",
    ("semask_mask2former", False): "SeMaskMask2FormerForSemanticSegmentation",
    ("semask_maskformer", False): "SeMaskMaskFormerForSemanticSegmentation",
    ("vwformer", False): "VWFormerForSemanticSegmentation",
    ("vw_mask2former", False): "VWMask2FormerForSemanticSegmentation",
    ("vw_maskformer", False): "VWMaskFormerForSemanticSegmentation",
    ("pale", False): "PaleForSemanticSegmentation",
    ("pale", True): "PaleForImageClassification",
}


def variant_config(name: str) -> PreTrainedConfig:
    """A fresh full model config of the named variant, with ``architectures`` naming the model class its released
    weights belong to (as a config saved with them says)."""
    variant = get_variant(name)
    config = variant.make_config()
    config.architectures = [_ARCHITECTURES[(variant.family, variant.dataset == "imagenet-1k")]]
    return config


# ----------------------------------------------------------------------------------------------------------------
# Image processors and matching
# ----------------------------------------------------------------------------------------------------------------


def image_processor_class(family: str, backend: str = "torchvision"):
    """The image processor class registered for ``family`` (a config ``model_type``) with ``AutoImageProcessor``
    (``backend`` ``"torchvision"`` or ``"pil"``); the keep-ratio processor for a family this package does not
    register (transformers' own models)."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

    from .models.image_processing_keep_ratio import KeepRatioImageProcessor
    from .models.image_processing_pil_keep_ratio import KeepRatioImageProcessorPil

    if backend not in ("torchvision", "pil"):
        raise ValueError(f"backend must be 'torchvision' or 'pil', got {backend!r}")
    families = {variant.family for variant in _REGISTRY.values()}
    if family in families and family in CONFIG_MAPPING:
        return IMAGE_PROCESSOR_MAPPING[CONFIG_MAPPING[family]][backend]
    return KeepRatioImageProcessorPil if backend == "pil" else KeepRatioImageProcessor


def variant_image_processor(
    name: str,
    backend: str = "torchvision",
    test_scale: tuple[int, int] | None = None,
    reduce_labels: bool | None = None,
):
    """The image processor of the named variant: its family's processor class (keep-ratio resize; detectron2's
    ``ResizeShortestEdge`` for SeMask Mask2Former) with the variant's test scale, size divisor and label reduction
    (``backend="pil"`` for the PIL/NumPy twin); a square scale (the classification variants') is a fixed-size resize.
    ``test_scale`` ``(longest, shortest)`` and ``reduce_labels`` replace the variant's values when given (a model
    finetuned at another scale or on other annotations)."""
    variant = get_variant(name)
    longest, shortest = max(test_scale or variant.test_scale), min(test_scale or variant.test_scale)
    size = (
        {"height": longest, "width": shortest}
        if longest == shortest
        else {"longest_edge": longest, "shortest_edge": shortest}
    )
    kwargs = {"size": size, "do_reduce_labels": variant.reduce_labels if reduce_labels is None else reduce_labels}
    if variant.size_divisor is not None:
        kwargs["size_divisor"] = variant.size_divisor
    if variant.size_divisibility is not None:
        kwargs["size_divisibility"] = variant.size_divisibility
    return image_processor_class(variant.family, backend)(**kwargs)


def _weight_shapes(config: PreTrainedConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the parameters and buffers of the segmentation model ``config`` builds (on the meta
    device: no memory)."""
    import torch
    from transformers import AutoModelForSemanticSegmentation

    with torch.device("meta"):
        model = AutoModelForSemanticSegmentation.from_config(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@cache
def _variant_weight_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return _weight_shapes(variant_config(name))


def variant_has_weights(name: str, config: PreTrainedConfig) -> bool:
    """Whether the registered variant ``name`` has exactly the weights (names and shapes) and the number of classes of
    the model ``config`` builds."""
    variant = get_variant(name)
    if variant.family != config.model_type or variant.dataset_info.num_labels != config.num_labels:
        return False
    return _variant_weight_shapes(name) == _weight_shapes(config)


def find_variant(config: PreTrainedConfig) -> str | None:
    """The registered variant with exactly the architecture of ``config``: of its family (``model_type``), trained on
    a dataset with ``config.num_labels`` classes, and whose model has the same weights (names and shapes) as the
    model ``config`` builds. None when no variant, or more than one, has them."""
    candidates = [
        name
        for name, variant in _REGISTRY.items()  # any model type: one without variants has no candidates
        if variant.family == config.model_type and variant.dataset_info.num_labels == config.num_labels
    ]
    if not candidates:
        return None
    shapes = _weight_shapes(config)
    matches = [name for name in candidates if _variant_weight_shapes(name) == shapes]
    return matches[0] if len(matches) == 1 else None


# ----------------------------------------------------------------------------------------------------------------
# SeMask-FPN (Jain et al. 2021, Table 2/3/4 and the SeMask-Segmentation README)
# ----------------------------------------------------------------------------------------------------------------

_SEMASK_SIZES = {
    # size: (embed_dim, depths, heads, window = semantic window in every released config)
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
        out_features=list(FOUR_STAGES),
        **_labels_config_kwargs(dataset),
    )


def _semask_fpn_pipeline(dataset: str, size: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(test scale, crop) of a released SeMask-FPN config."""
    if dataset == "cityscapes":
        return get_dataset(dataset).test_scale, (768, 768)
    if size == "large":  # the 640 configs
        return (2560, 640), (640, 640)
    return get_dataset(dataset).test_scale, (512, 512)


def _register_semask_fpn() -> None:
    for (dataset, size), (miou, miou_ms, params) in _SEMASK_REPORTED.items():
        test_scale, crop = _semask_fpn_pipeline(dataset, size)
        register_variant(
            Variant(
                name=f"semask-fpn-{size}-{dataset}",
                family="semask_swin",
                dataset=dataset,
                make_config=lambda size=size, dataset=dataset: semask_fpn_config(size, dataset),
                test_scale=test_scale,
                crop_size=crop,
                reported={"mIoU": miou, "mIoU_ms_flip": miou_ms, "params_M": params},
                semantic_window_size=_SEMASK_SIZES[size][3],
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
    """Pale-T/S/B (depths 2-2-16-2, pale size 7 in every stage), the backbone returning the four stages (the UperNet
    head takes them; the classifier pools the last stage whatever they are)."""
    from .models.configuration_pale import PaleConfig

    embed_dim, heads, drop_path, *_ = _PALE_SIZES[size]
    id2label = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
    return PaleConfig(
        embed_dim=embed_dim,
        depths=[2, 2, 16, 2],
        num_heads=list(heads),
        pale_sizes=[7, 7, 7, 7],
        drop_path_rate=drop_path,
        out_features=list(FOUR_STAGES),
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )


def _register_pale() -> None:
    classes = get_dataset("imagenet-1k").num_labels
    for size, (_, _, _, top1, params, gflops) in _PALE_SIZES.items():
        register_variant(
            Variant(
                name=f"pale-{size}",
                family="pale",
                dataset="imagenet-1k",
                make_config=lambda size=size: pale_config(size, num_labels=classes),
                crop_size=(224, 224),
                reported={"top1": top1, "params_M": params, "GFLOPs_224": gflops, "weights": None},
            )
        )
        register_variant(
            Variant(
                name=f"pale-{size}-upernet-ade20k",
                family="pale",
                dataset="ade20k",
                make_config=lambda size=size: pale_config(size, id2label=dataset_labels("ade20k")[0]),
                crop_size=(512, 512),
                reported={"weights": None},
            )
        )


_register_pale()


# ----------------------------------------------------------------------------------------------------------------
# VWFormer (Yan et al. 2024): the 12 mmseg models of yan-hao-tian/VW (README tables; params counted on the original)
# ----------------------------------------------------------------------------------------------------------------

_VWFORMER_SWIN = {
    # size: (embed_dim, heads)
    "base": (128, (4, 8, 16, 32)),
    "large": (192, (6, 12, 24, 48)),
}
_VWFORMER_CONVNEXT = {
    # size: (depths, hidden sizes)
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
# The decode head of each released config. Heads and short-cut are not in the weights. The ADE20K models use the
# ``vw`` head, except ConvNeXt-S whose released config (a copy of the Cityscapes one) uses the ``vw_city`` head, like
# every Cityscapes model.
_VWFORMER_HEADS = {
    # (backbone, size, dataset): (head type, attention heads, short-cut)
    ("swin", "base", "ade20k"): ("vw", 1, True),
    ("swin", "large", "ade20k"): ("vw", 1, False),
    ("convnext", "tiny", "ade20k"): ("vw", 1, True),
    ("convnext", "small", "ade20k"): ("vw_city", 16, False),
    ("convnext", "base", "ade20k"): ("vw", 1, True),
    ("convnext", "large", "ade20k"): ("vw", 1, True),
    ("convnext", "xlarge", "ade20k"): ("vw", 1, True),
    ("convnext", "tiny", "cityscapes"): ("vw_city", 16, False),
    ("convnext", "small", "cityscapes"): ("vw_city", 16, False),
    ("convnext", "base", "cityscapes"): ("vw_city", 16, False),
    ("convnext", "large", "cityscapes"): ("vw_city", 16, False),
    ("convnext", "xlarge", "cityscapes"): ("vw_city", 16, False),
}
#: MiT (SegFormer) attention heads per stage, not in the weights: the same in every MiT-B0..B5
MIT_ATTENTION_HEADS = (1, 2, 5, 8)
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
    """The config of a released VWFormer model (its head: :data:`_VWFORMER_HEADS`)."""
    from transformers import ConvNextConfig, SwinConfig

    from .models.configuration_vwformer import VWFormerConfig

    stages = list(FOUR_STAGES)
    if backbone == "swin":
        embed_dim, heads = _VWFORMER_SWIN[size]
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
        backbone_config = ConvNextConfig(
            depths=list(depths),
            hidden_sizes=list(hidden_sizes),
            layer_scale_init_value=1.0,
            drop_path_rate=0.4,
            out_features=stages,
        )
    head_type, num_heads, short_cut = _VWFORMER_HEADS[(backbone, size, dataset)]
    return VWFormerConfig(
        backbone_config=backbone_config,
        head_type=head_type,
        num_attention_heads=num_heads,
        use_short_cut=short_cut,
        **_labels_config_kwargs(dataset),
    )


def _vwformer_pipeline(dataset: str, size: str) -> tuple[tuple[int, int], tuple[int, int], int | None]:
    """(test scale, crop, size divisor) of a released VWFormer config."""
    if dataset == "cityscapes":
        return get_dataset(dataset).test_scale, (512, 1024), None
    if size in ("tiny", "small"):
        return get_dataset(dataset).test_scale, (512, 512), 64
    return (2560, 640), (640, 640), 64  # the 640 configs


def _register_vwformer() -> None:
    for (backbone, size, dataset), (miou, miou_ms, params) in _VWFORMER_REPORTED.items():
        test_scale, crop, divisor = _vwformer_pipeline(dataset, size)
        _, num_heads, short_cut = _VWFORMER_HEADS[(backbone, size, dataset)]
        register_variant(
            Variant(
                name=f"vwformer-{backbone}-{size}-{dataset}",
                family="vwformer",
                dataset=dataset,
                make_config=lambda b=backbone, s=size, d=dataset: vwformer_config(b, s, d),
                test_scale=test_scale,
                crop_size=crop,
                reported={"mIoU": miou, "mIoU_ms_flip": miou_ms, "params_M": params},
                size_divisor=divisor,
                num_attention_heads=num_heads,
                use_short_cut=short_cut,
            )
        )


_register_vwformer()


# ----------------------------------------------------------------------------------------------------------------
# SeMask-L Mask2Former (Jain et al. 2021; SeMask-Mask2Former README). detectron2 checkpoints, SeMask Swin-L backbone.
# ----------------------------------------------------------------------------------------------------------------

#: ``MODEL.SWIN.SEM_WINDOW_SIZE`` of the SeMask-Mask2Former code when the yaml does not set it (``add_swin_config``)
SEMASK_MASK2FORMER_DEFAULT_SEMANTIC_WINDOW = 7

# name suffix: (pixel decoder, dataset, semantic window, test (longest, shortest), crop, mIoU, mIoU ms+flip, params M
# counted from the original code). ADE20K: the 640 configs, semantic window 12; Cityscapes: the dataset's scale, the
# yaml sets no semantic window. FaPN / MSFaPN: the SeMask-FAPN copy of the code (README table of the repository).
_SEMASK_MASK2FORMER = {
    "large-ade20k": ("msdeformattn", "ade20k", 12, (2560, 640), (640, 640), 56.41, 57.52, 222.63),
    "large-cityscapes": (
        "msdeformattn",
        "cityscapes",
        SEMASK_MASK2FORMER_DEFAULT_SEMANTIC_WINDOW,
        None,
        (512, 1024),
        83.97,
        84.98,
        221.84,
    ),
    "fapn-large-ade20k": ("fapn", "ade20k", 12, (2560, 640), (640, 640), 56.88, 58.25, 226.75),
    "msfapn-large-ade20k": ("msfapn", "ade20k", 12, (2560, 640), (640, 640), 57.00, 58.25, 223.85),
}


def semask_mask2former_config(name: str):
    """The config of a released SeMask-L Mask2Former model (``name``: a key of ``_SEMASK_MASK2FORMER``, e.g.
    ``"fapn-large-ade20k"``). The semantic attention of each stage follows the rule of the code copy the model
    comes from (``default_semantic_attention_types``: the SeMask-Mask2Former code's, where ADE20K's last stage
    attends globally, or the SeMask-FAPN code's W W G G); the semantic window is the released config's. The FaPN
    decoder's attention heads are the original's default (8; the released yaml does not set them)."""
    from .models.configuration_semask_mask2former import (
        SEMASK_SWIN_LARGE,
        SeMaskMask2FormerConfig,
        default_semantic_attention_types,
    )
    from .models.configuration_semask_swin import SeMaskSwinConfig

    pixel_decoder_type, dataset, semantic_window = _SEMASK_MASK2FORMER[name][:3]
    labels = _labels_config_kwargs(dataset)
    backbone = SeMaskSwinConfig(
        **dict(SEMASK_SWIN_LARGE, semantic_window_size=semantic_window),
        semantic_attention_types=default_semantic_attention_types(pixel_decoder_type, len(labels["id2label"])),
        out_features=list(FOUR_STAGES),
    )
    return SeMaskMask2FormerConfig(backbone_config=backbone, pixel_decoder_type=pixel_decoder_type, **labels)


def _register_semask_mask2former() -> None:
    for suffix, (_, dataset, semantic_window, test_scale, crop, miou, miou_ms, params) in _SEMASK_MASK2FORMER.items():
        register_variant(
            Variant(
                name=f"semask-mask2former-{suffix}",
                family="semask_mask2former",
                dataset=dataset,
                make_config=lambda suffix=suffix: semask_mask2former_config(suffix),
                test_scale=test_scale,
                crop_size=crop,
                reported={"mIoU": miou, "mIoU_ms_flip": miou_ms, "params_M": params},
                semantic_window_size=semantic_window,
            )
        )


_register_semask_mask2former()


def semask_maskformer_config():
    """The config of the released SeMask-L MaskFormer (ADE20K, 640): SeMask Swin-L with the SeMask-MaskFormer code's
    semantic attention (W W W G for every class count), semantic window 12, and the released DETR decoder (6 layers,
    100 queries, 8 heads: the original's default, the yaml does not set NHEADS)."""
    from .models.configuration_semask_mask2former import SEMASK_SWIN_LARGE
    from .models.configuration_semask_maskformer import (
        SeMaskMaskFormerConfig,
        semask_maskformer_semantic_attention_types,
    )
    from .models.configuration_semask_swin import SeMaskSwinConfig

    backbone = SeMaskSwinConfig(
        **dict(SEMASK_SWIN_LARGE, semantic_window_size=12),
        semantic_attention_types=semask_maskformer_semantic_attention_types(),
        out_features=list(FOUR_STAGES),
    )
    return SeMaskMaskFormerConfig(backbone_config=backbone, **_labels_config_kwargs("ade20k"))


register_variant(
    Variant(
        name="semask-maskformer-large-ade20k",
        family="semask_maskformer",
        dataset="ade20k",
        make_config=semask_maskformer_config,
        test_scale=(2560, 640),
        crop_size=(640, 640),
        reported={"mIoU": 54.75, "mIoU_ms_flip": 56.15, "params_M": 218.72},
        semantic_window_size=12,
    )
)


# ----------------------------------------------------------------------------------------------------------------
# VW-MaskFormer and VW-Mask2Former (Yan et al. 2024): the 12 detectron2 models of yan-hao-tian/VW (MaskFormer/ and
# Mask2Former/ READMEs; params counted on the original code). ADE20K, Swin backbones.
# ----------------------------------------------------------------------------------------------------------------

_VW_D2_SWIN = {
    # size: (embed_dim, depths, heads, window, pretraining image size): the released yamls; T/S ImageNet-1k 224
    # (window 7), B/L ImageNet-22k 384 (window 12), as the relative position bias tables of the checkpoints show
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 224),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384),
}
#: VW-MaskFormer's VW block per size: (attention heads, short-cut) of the released yamls (MODEL.SEM_SEG_HEAD.NHEADS /
#: SHORT_CUT; not in the weights). VW-Mask2Former hard-codes 16 heads and no short-cut in its code.
_VW_MASKFORMER_HEADS = {"tiny": (16, True), "small": (16, False), "base": (8, False), "large": (16, False)}
#: name part: (config model_type, VW-Mask2Former pixel decoder type)
_VW_D2_MODELS = {
    "maskformer": ("vw_maskformer", None),
    "mask2former": ("vw_mask2former", "vw"),
    "mask2former-deformattn": ("vw_mask2former", "vw_deformable"),
}
_VW_D2_REPORTED = {
    # (model, size): (mIoU, mIoU ms+flip, params M counted on the original code)
    ("maskformer", "tiny"): (47.4, 49.0, 44.85),
    ("maskformer", "small"): (50.5, 52.7, 66.17),
    ("maskformer", "base"): (53.8, 54.6, 104.51),
    ("maskformer", "large"): (55.3, 56.5, 213.42),
    ("mask2former", "tiny"): (48.2, 50.5, 49.76),
    ("mask2former", "small"): (52.1, 53.7, 71.08),
    ("mask2former", "base"): (54.6, 56.0, 109.47),
    ("mask2former", "large"): (56.5, 57.8, 218.48),
    ("mask2former-deformattn", "tiny"): (48.5, 50.3, 53.34),
    ("mask2former-deformattn", "small"): (52.0, 53.6, 74.66),
    ("mask2former-deformattn", "base"): (55.2, 56.5, 112.81),
    ("mask2former-deformattn", "large"): (56.9, 58.3, 221.37),
}


def vw_d2_config(model: str, size: str):
    """The config of a released VW detectron2 model (``model``: ``"maskformer"``, ``"mask2former"`` or
    ``"mask2former-deformattn"``; ``size`` in tiny/small/base/large): the released Swin, the VW block (VW-MaskFormer:
    the size's heads and short-cut) and the released decoders (the configs' defaults: DETR 6 layers / masked attention
    9 layers, 100 queries, hidden 256, 8 heads; deformable encoder 6 layers, FFN 1024)."""
    from transformers import SwinConfig

    from .models.configuration_vw_mask2former import VWMask2FormerConfig
    from .models.configuration_vw_maskformer import VWMaskFormerConfig

    embed_dim, depths, heads, window, image_size = _VW_D2_SWIN[size]
    backbone = SwinConfig(
        image_size=image_size,
        embed_dim=embed_dim,
        depths=list(depths),
        num_heads=list(heads),
        window_size=window,
        drop_path_rate=0.3,
        out_features=list(FOUR_STAGES),
    )
    labels = _labels_config_kwargs("ade20k")
    if model == "maskformer":
        vw_heads, short_cut = _VW_MASKFORMER_HEADS[size]
        return VWMaskFormerConfig(backbone_config=backbone, vw_num_heads=vw_heads, vw_use_short_cut=short_cut, **labels)
    return VWMask2FormerConfig(backbone_config=backbone, pixel_decoder_type=_VW_D2_MODELS[model][1], **labels)


def _register_vw_d2() -> None:
    for (model, size), (miou, miou_ms, params) in _VW_D2_REPORTED.items():
        family = _VW_D2_MODELS[model][0]
        heads, short_cut = _VW_MASKFORMER_HEADS[size] if family == "vw_maskformer" else (None, None)
        small = size in ("tiny", "small")  # the 512 configs; B and L are the 640 ones
        register_variant(
            Variant(
                name=f"vw-{model}-swin-{size}-ade20k",
                family=family,
                dataset="ade20k",
                make_config=lambda model=model, size=size: vw_d2_config(model, size),
                test_scale=(2048, 512) if small else (2560, 640),
                crop_size=(512, 512) if small else (640, 640),
                reported={"mIoU": miou, "mIoU_ms_flip": miou_ms, "params_M": params},
                size_divisibility=64,  # every README command; the yamls' 32 fails on sizes not a multiple of 64
                num_attention_heads=heads,
                use_short_cut=short_cut,
            )
        )


_register_vw_d2()
