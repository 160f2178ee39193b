"""Training helpers shared by the Trainer and the Accelerate example scripts: dataset loading, the data settings
(scale, label reduction: the variant's unless given), the original augmentation as a ``datasets`` transform
(deterministic per sample and epoch), a padding collator, the model and its image processor, the optimizer recipe, a
cross-process BatchNorm, a streaming-mIoU ``compute_metrics`` and prediction overlays."""

import dataclasses
import json
import math
import re
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.hf_argparser import string_to_bool

from .inference import classifies_masks, logits_to_size, model_padded_size
from .metrics import SegmentationMetrics
from .models.configuration_utils_segmentation import IGNORE_INDEX
from .models.image_processing_utils_segmentation import is_sixteen_bit_pil_image, sixteen_to_eight_bits
from .models.image_processing_utils_segmentation import reduce_labels as reduce_zero_label
from .models.modeling_any_precision import active_weight_bits  # noqa: F401  (the scripts report the width with it)
from .models.modeling_semask_mask2former import semantic_scores
from .segmentation_folders import SegmentationFolderError, files_under, folder_layout, load_image_folders
from .transforms import SegmentationTrainTransform


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class RunOptionError(ValueError):
    """An option of a training or evaluation run that cannot work (an unknown variant, a dataset or model that cannot
    be loaded, a bad ``--scale``, ``--config_overrides`` or checkpoint); the message names the option and the value.
    The example scripts end with it as one line (exit status 1: :func:`exit_on_user_error`)."""


@contextmanager
def loading(option: str):
    """Turns the failure to load what ``option`` names (a dataset or pretrained model: missing folder, unknown Hub
    id, no network) into a one-line :class:`RunOptionError` naming the option and the cause."""
    try:
        yield
    except RunOptionError:
        raise
    except Exception as error:  # datasets, transformers and the Hub client raise many types here
        detail = (str(error).strip().splitlines() or [""])[0]
        raise RunOptionError(f"{option}: cannot be loaded ({type(error).__name__}: {detail})") from error


def load_segmentation_dataset(name: str | None, demo_sizes: tuple[int, int] = (64, 16)):
    """A ``DatasetDict``: the generated demo dataset (``None``), a ``save_to_disk`` folder, a folder of parquet files,
    a folder of images and label maps (:func:`hf_semseg.segmentation_folders.load_image_folders`: ADE20K's, mmseg's
    and Cityscapes' layouts), or a Hub dataset id. A folder that is none of these, or whose images and label maps do
    not pair, is a :class:`RunOptionError` naming the folder or the files."""
    from datasets import load_dataset, load_from_disk

    if name is None:
        from .demo_data import make_demo_dataset

        return make_demo_dataset(num_train=demo_sizes[0], num_validation=demo_sizes[1])
    if not str(name).strip():  # an unset shell variable: read as the current folder, the whole tree was searched
        raise RunOptionError(f"--dataset_name {name!r}: empty (expected a folder, or a Hub dataset id)")
    path = Path(name)
    if path.is_file():
        raise RunOptionError(
            f"--dataset_name {name}: is a file (expected a folder: of parquet files, images and label maps, or a "
            "save_to_disk dataset; or a Hub dataset id)"
        )
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        # a path, not a Hub id ("user/name"): the Hub client's "couldn't reach" message named the wrong cause
        raise RunOptionError(f"--dataset_name {name}: no such folder")
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            check_saved_splits_have_data(path)
            return load_from_disk(str(path))
        # hidden folders (a tool's cache) left out, as the image layouts leave them out
        parquet_files = sorted(file for file in files_under(path) if file.suffix == ".parquet")
        if parquet_files:
            if folder_layout(path) is not None:
                raise RunOptionError(
                    f"--dataset_name {name}: holds both parquet files ({parquet_files[0]}) and a folder of images and "
                    "label maps; give the folder of one of them"
                )
            if declares_dataset_configs(path):  # a local copy of a Hub dataset: its default config, as the Hub loads it
                return load_dataset(str(path))
            return load_dataset("parquet", data_dir=str(path))
        try:
            return load_image_folders(path)
        except SegmentationFolderError as error:
            raise RunOptionError(f"--dataset_name {name}: {error}") from None
    return load_dataset(name)


def declares_dataset_configs(path: Path) -> bool:
    """Whether the folder's ``README.md`` (a dataset card, as a Hub dataset repository has) declares ``configs`` in its
    YAML header: then the folder's parquet files belong to several configs, and reading them all as one dataset
    concatenated every config's rows into each split."""
    card = path / "README.md"
    if not card.is_file():
        return False
    lines = card.read_text(errors="replace").splitlines()
    if not lines or lines[0].strip() != "---":
        return False
    header = lines[1 : lines.index("---", 1)] if "---" in lines[1:] else []
    return any(line.startswith("configs:") for line in header)


def check_has_splits(dataset, dataset_name, splits: str = "the --train_split and --eval_split splits") -> None:
    """Refuses a loaded dataset that is not a dictionary of splits (a single ``Dataset`` saved with ``save_to_disk``),
    naming its type and size and the ``splits`` expected: ``split in dataset`` compared the split name with its rows,
    and the error listed every row with its decoded images."""
    if not hasattr(dataset, "keys"):
        size = f" of {len(dataset)} rows" if hasattr(dataset, "__len__") else ""
        raise RunOptionError(
            f"--dataset_name {dataset_name}: holds one {type(dataset).__name__}{size}, not splits (expected a "
            f"DatasetDict with {splits}, e.g. DatasetDict(train=..., validation=...))"
        )


def empty_split_error(dataset_name, split: str) -> RunOptionError:
    """The error of a split without samples, wherever it is found: before ``load_from_disk`` (which fails on such a
    split with a bare IndexError; datasets 3.0 loads it) or after loading (the scripts)."""
    return RunOptionError(f"--dataset_name {dataset_name or 'demo'}: split {split!r} has no samples")


def check_saved_splits_have_data(path: Path) -> None:
    """Refuses a ``save_to_disk`` folder with a split of no data file (what an empty split saves), which ``datasets``'
    ``load_from_disk`` fails on with a bare ``IndexError``; the message names the split. A folder not laid out as
    ``save_to_disk`` writes it is left to ``load_from_disk``, which says what it is."""
    listing = path / "dataset_dict.json"
    try:
        splits = json.loads(listing.read_text())["splits"] if listing.is_file() else [None]
        empty = [
            split
            for split in splits
            if not json.loads((path / split if split else path).joinpath("state.json").read_text()).get("_data_files")
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if empty:
        raise empty_split_error(path, empty[0] or "of the folder")


def load_splits(
    dataset_name: str | None,
    train_split: str = "train",
    eval_split: str = "validation",
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    needed: tuple[bool, bool] = (True, True),
):
    """``(train, evaluation)`` datasets of :func:`load_segmentation_dataset`, cut to the maximum sizes, with the
    ``sample_index`` column (:func:`with_sample_index`). Of the demo dataset only the samples used are generated
    (sample ``i`` is the same whatever the size). ``needed`` says which of the two the run uses: a split it does not
    use may be absent (None then; an evaluation-only run needs no training split, as in transformers' examples)."""
    for option, value in (("--max_train_samples", max_train_samples), ("--max_eval_samples", max_eval_samples)):
        if value is not None and value < 1:  # 0 read as "no limit" before, a negative one emptied the split
            raise RunOptionError(f"{option} {value}: expected at least 1 sample (leave it out for all of them)")
    demo_sizes = (max_train_samples or 64, max_eval_samples or 16)
    dataset = load_segmentation_dataset(dataset_name, demo_sizes=demo_sizes)
    check_has_splits(dataset, dataset_name)
    selected = []
    for split, use, limit in ((train_split, needed[0], max_train_samples), (eval_split, needed[1], max_eval_samples)):
        if not use:
            selected.append(None)
            continue
        if split not in dataset:
            raise RunOptionError(f"dataset {dataset_name or 'demo'} has no split {split!r}; it has {list(dataset)}")
        if len(dataset[split]) == 0:
            raise empty_split_error(dataset_name, split)
        rows = dataset[split] if limit is None else dataset[split].select(range(min(limit, len(dataset[split]))))
        selected.append(with_sample_index(rows))
    return tuple(selected)


def check_run_options(
    output_dir: str,
    learning_rate: float,
    train_batch_size: int,
    eval_batch_size: int,
    num_train_epochs: float,
    max_steps: int,
) -> None:
    """Refuses, before any work and naming the option, what would end the run in torch's or the Trainer's own error
    (an output path that is a file, a learning rate or batch size below the smallest that trains) or would end it
    without a training step (no epochs and no ``--max_steps``)."""
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise RunOptionError(f"--output_dir {output_dir}: is a file (expected a folder)")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise RunOptionError(f"--learning_rate {learning_rate}: expected a positive number")
    for option, value in (
        ("--per_device_train_batch_size", train_batch_size),
        ("--per_device_eval_batch_size", eval_batch_size),
    ):
        if value < 1:
            raise RunOptionError(f"{option} {value}: expected at least 1 image")
    if max_steps <= 0 and not num_train_epochs > 0:
        raise RunOptionError(
            f"--num_train_epochs {num_train_epochs}: no training step (expected a positive number of epochs, or "
            "--max_steps)"
        )


def check_positive_steps(options: dict) -> None:
    """Refuses, before any work, a step count (``{"--logging_steps": 0, ...}``) that is not positive: 0 divided a step
    number (a ``ZeroDivisionError`` after the first training steps) or stopped ``Trainer`` in its own error. None is
    an option not in use."""
    for option, value in options.items():
        if value is not None and not value > 0:
            raise RunOptionError(f"{option} {value}: expected a positive number of steps")


def check_not_negative(options: dict) -> None:
    """Refuses, before any work, a count or a norm (``{"--dataloader_num_workers": -1, ...}``) below 0: torch's
    ``DataLoader`` refused a negative worker count in its own error after the model had loaded, and a negative
    ``--max_grad_norm`` scaled every gradient by a negative factor (the run climbed its loss). None is an option not in
    use."""
    for option, value in options.items():
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise RunOptionError(f"{option} {value}: expected 0 or a positive number")


def check_float16_device(option: str, device, alternative: str) -> None:
    """Refuses float16 mixed precision (``option``) on a CPU, where ``Trainer`` and Accelerate silently train in
    float32 instead (no float16 autocast there); ``alternative`` is the option of bfloat16 mixed precision."""
    if torch.device(device).type == "cpu":
        raise RunOptionError(
            f"{option}: float16 mixed precision needs a GPU; on the CPU it would silently train in float32 (use "
            f"{alternative} for bfloat16 mixed precision on the CPU)"
        )


#: keep-ratio scale ``(longest, shortest)`` of the demo recipe (the generated demo images are 224 x 160)
DEMO_SCALE = (224, 160)

#: ``argparse`` keyword arguments of an optional yes/no option: absent it is None (a default applies), a bare
#: ``--option`` is true, ``--option false`` is false (to override a default that is true)
OPTIONAL_FLAG = {"type": string_to_bool, "nargs": "?", "const": True, "default": None}


@dataclass(frozen=True)
class DataSettings:
    """What the data pipeline of a training run needs to know about the model's dataset.

    Attributes:
        scale: keep-ratio scale ``(longest, shortest)`` of the random resize and of the evaluation resize.
        reduce_labels: map the annotations' label 0 to the ignore index and shift the others down by one.
        size_divisor: the test pipeline's resize up to a multiple of this (saved with the image processor).
    """

    scale: tuple[int, int]
    reduce_labels: bool
    size_divisor: int | None = None


def pretrained_processor_settings(model_name_or_path: str | None) -> dict | None:
    """The saved image processor settings (``preprocessor_config.json``) of a pretrained model folder or Hub id, or
    None when it has none."""
    if not model_name_or_path:
        return None
    from transformers.utils import cached_file

    path = cached_file(
        model_name_or_path,
        "preprocessor_config.json",
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    return json.loads(Path(path).read_text()) if path else None


def resolve_data_settings(
    variant: str | None,
    scale: list[int] | tuple[int, int] | None = None,
    do_reduce_labels: bool | None = None,
    pretrained_processor: dict | None = None,
) -> DataSettings:
    """``--scale`` and ``--do_reduce_labels`` as given; where one is not given, the variant's test scale and label
    reduction (:mod:`hf_semseg.variants`); without a variant, those of the pretrained model's saved image processor
    (``pretrained_processor``, :func:`pretrained_processor_settings`: its keep-ratio ``size``, ``do_reduce_labels``
    and ``size_divisor``), so a finetuned model keeps its pre-processing; without either, the demo recipe's
    (:data:`DEMO_SCALE`, no reduction). The size divisor is the variant's or the saved processor's."""
    from .variants import get_variant

    if scale is not None and len(scale) != 2:
        raise RunOptionError(f"--scale takes two numbers (long short), got {list(scale)}")
    if scale is not None and not all(side > 0 for side in scale):
        raise RunOptionError(
            f"--scale {' '.join(map(str, scale))}: expected two positive numbers of pixels (long short)"
        )
    if variant is not None:
        record = get_variant(variant)
        default_scale, default_reduce, size_divisor = record.test_scale, record.reduce_labels, record.size_divisor
    elif pretrained_processor is not None:
        size = pretrained_processor.get("size")
        keep_ratio = isinstance(size, dict) and size.get("longest_edge") and size.get("shortest_edge")
        if keep_ratio:
            default_scale = (size["longest_edge"], size["shortest_edge"])
        elif size and scale is None:
            # a fixed (height, width), a shortest edge alone, or transformers' older int: the demo scale was used
            raise RunOptionError(
                f"the image processor of --model_name_or_path resizes to size {size}, which is not a keep-ratio scale "
                "(longest_edge and shortest_edge): give the training scale with --scale LONG SHORT"
            )
        else:
            default_scale = DEMO_SCALE
        default_reduce = bool(pretrained_processor.get("do_reduce_labels", False))
        size_divisor = pretrained_processor.get("size_divisor")
    else:
        default_scale, default_reduce, size_divisor = DEMO_SCALE, False, None
    return DataSettings(
        scale=tuple(scale) if scale is not None else tuple(default_scale),
        reduce_labels=default_reduce if do_reduce_labels is None else bool(do_reduce_labels),
        size_divisor=size_divisor,
    )


def dataset_reduce_labels(dataset_name: str | None, do_reduce_labels: bool | None) -> bool | None:
    """``--do_reduce_labels`` as given, or the default of a dataset with its own classes: the demo dataset's label 0
    (background) is a real class, so it is not reduced unless asked, whatever the variant or the pretrained model
    reduced (their reduction describes their own dataset, ADE20K's 0 = "other"). None for other datasets: the
    variant's or the pretrained model's reduction applies (:func:`resolve_data_settings`)."""
    if dataset_name is None and do_reduce_labels is None:
        return False
    return do_reduce_labels


def reduced_classes(id2label: dict) -> dict:
    """The classes of label maps after the label reduction: class 0 dropped (it becomes the ignore index), the others
    one id lower (``{0: "background", 1: "disc"}`` -> ``{0: "disc"}``)."""
    return {
        int(index) - 1: name for index, name in sorted(id2label.items(), key=lambda item: int(item[0])) if int(index)
    }


def resolve_id2label(
    dataset_name: str | None,
    model_name_or_path: str | None,
    variant: str | None,
    trust_remote_code: bool = False,
    reduce_labels: bool = False,
) -> dict:
    """The classes of the training targets: the demo classes for the demo dataset (after the label reduction when
    ``reduce_labels``: :func:`reduced_classes`), else those of the variant or of the pretrained model (which describe
    the targets of their own label reduction)."""
    from transformers import AutoConfig

    from .demo_data import DEMO_CLASSES
    from .variants import variant_config

    if dataset_name is None:
        classes = dict(enumerate(DEMO_CLASSES))
        return reduced_classes(classes) if reduce_labels else classes
    if variant:
        return variant_config(variant).id2label
    if model_name_or_path:
        return AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code).id2label
    raise RunOptionError("a dataset other than the demo needs --variant or --model_name_or_path for its classes")


#: keys of a config's ``to_dict`` that are not dataclass fields but arguments its construction takes as they are
CONFIG_KEYWORD_KEYS = frozenset({"out_features", "out_indices", "output_attentions", "_name_or_path", "model_type"})


def derived_config_keys(config) -> set[str]:
    """The keys of ``config.to_dict()`` its construction derives from its fields (``hidden_sizes``, ``stage_names``):
    those of a config built from the fields alone that are neither fields nor :data:`CONFIG_KEYWORD_KEYS`. Keys
    set after construction (``auto_map``) are not derived; none for a config that is not a dataclass."""
    if not dataclasses.is_dataclass(config):
        return set()
    given = {field.name for field in dataclasses.fields(config)} | CONFIG_KEYWORD_KEYS
    built = type(config).from_dict({key: value for key, value in config.to_dict().items() if key in given})
    return set(built.to_dict()) - given


def apply_config_overrides(config, overrides: str | dict | None):
    """``config`` with attributes set from a JSON object (e.g. ``'{"drop_path_rate": 0.0, "depths": [1, 1, 1, 1]}'``).

    The config is built again from its fields and the overrides (``from_dict``, as ``from_pretrained`` builds a saved
    one), so that the values it derives from its fields are derived again (Pale's ``hidden_sizes`` from an overridden
    ``embed_dim``: setting the attribute alone left them stale) and its own validation runs (a head count that does
    not divide a stage's width reached torch's reshape, an odd one silently lost a head). A :class:`RunOptionError`
    names the override for an attribute the config does not have, one it derives from the others, and an invalid
    combination."""
    from huggingface_hub.errors import StrictDataclassError

    if not overrides:
        return config
    try:
        values = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
    except ValueError as error:
        raise RunOptionError(f"--config_overrides {overrides!r} is not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise RunOptionError(f"config overrides must be a JSON object, got {overrides!r}")
    name, current = type(config).__name__, config.to_dict()
    derived = derived_config_keys(config)
    for key in values:
        if not hasattr(config, key):
            raise RunOptionError(f"config override {key!r}: {name} has no such attribute")
        if key in derived:
            raise RunOptionError(
                f"config override {key!r}: {name} derives it from its other attributes; override those instead"
            )
    merged = {key: value for key, value in {**current, **values}.items() if key not in derived}
    try:
        rebuilt = type(config).from_dict(merged)
    except (StrictDataclassError, ValueError, TypeError) as error:  # the config's validation
        detail = " ".join(str(error).split())
        raise RunOptionError(f"--config_overrides {json.dumps(values)}: no valid {name} ({detail})") from None
    return rebuilt


def build_model(
    id2label: dict,
    model_name_or_path: str | None = None,
    variant: str | None = None,
    trust_remote_code: bool = False,
    config_overrides: str | dict | None = None,
    evaluate_only: bool = False,
):
    """A segmentation model for the classes ``id2label``: pretrained (the head is re-initialised when the classes
    differ, unless ``evaluate_only``: then that is a :class:`RunOptionError`, a random head would be evaluated), a
    registered variant (random init), or with neither the small demo SeMask-Swin FPN."""
    from transformers import AutoConfig, AutoModelForSemanticSegmentation

    from .demo_data import demo_model_config
    from .models.modeling_semask_swin import SeMaskSwinForSemanticSegmentation
    from .variants import variant_config

    label2id = {label: i for i, label in id2label.items()}
    if model_name_or_path:
        config = AutoConfig.from_pretrained(
            model_name_or_path, id2label=id2label, label2id=label2id, trust_remote_code=trust_remote_code
        )
        if evaluate_only:
            trained = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code).num_labels
            if trained != len(id2label):
                raise RunOptionError(
                    f"--model_name_or_path {model_name_or_path}: has {trained} classes, the dataset {len(id2label)} "
                    "(its head would be re-initialised and a random head evaluated); evaluate it on its own classes"
                )
        return AutoModelForSemanticSegmentation.from_pretrained(
            model_name_or_path,
            config=apply_config_overrides(config, config_overrides),
            ignore_mismatched_sizes=True,
            trust_remote_code=trust_remote_code,
        )
    config = variant_config(variant) if variant else demo_model_config()
    # the classes of the targets (the demo model kept its 4 classes for the 3 of the reduced demo labels before)
    config.id2label, config.label2id = id2label, label2id
    if variant:
        return AutoModelForSemanticSegmentation.from_config(apply_config_overrides(config, config_overrides))
    return SeMaskSwinForSemanticSegmentation(apply_config_overrides(config, config_overrides))


def build_processor(
    scale: tuple[int, int],
    do_reduce_labels: bool,
    family: str | None = None,
    size_divisor: int | None = None,
    size_divisibility: int | None = None,
):
    """The evaluation pre-processing, saved next to the trained model so that ``AutoImageProcessor`` loads it: the
    image processor class of the model's ``family`` (its config's ``model_type``; the keep-ratio resize, or
    detectron2's ``ResizeShortestEdge`` for SeMask Mask2Former) bounded by ``scale``, then resized up to a multiple of
    ``size_divisor`` when given; a processor that pads (the detectron2 families') pads to the model's
    ``size_divisibility`` when given (VW's 64: the processor's default of 32 was saved for them)."""
    from .variants import image_processor_class

    kwargs = {"size": {"longest_edge": max(scale), "shortest_edge": min(scale)}, "do_reduce_labels": do_reduce_labels}
    if size_divisor is not None:
        kwargs["size_divisor"] = size_divisor
    processor_class = image_processor_class(family or "")
    if size_divisibility is not None and hasattr(processor_class, "size_divisibility"):
        kwargs["size_divisibility"] = size_divisibility
    return processor_class(**kwargs)


def build_transforms(
    image_column: str,
    label_column: str,
    num_labels: int,
    settings: DataSettings,
    crop_size: int,
    cat_max_ratio: float,
    seed: int,
    splits: tuple[str | None, str | None] = (None, None),
) -> tuple["SegmentationDatasetTransform", "SegmentationDatasetTransform"]:
    """``(training transform, evaluation transform)`` of the recipe: random keep-ratio resize around
    ``settings.scale``, ``crop_size`` square crop with ``cat_max_ratio``, flip and photometric distortion, each
    sample's augmentation drawn from (seed, epoch, sample index), so the same in resumed and multi-process runs; the
    evaluation samples keep-ratio resized to ``settings.scale``; ``splits`` (training, evaluation) name the split in
    sample errors. A ``crop_size`` below 1 is a :class:`RunOptionError` naming ``--crop_size``."""
    if crop_size < 1:
        raise RunOptionError(f"--crop_size {crop_size}: expected a positive number of pixels (the square crop's side)")
    augmentation = SegmentationTrainTransform(
        scale=settings.scale, crop_size=(crop_size, crop_size), cat_max_ratio=cat_max_ratio
    )
    columns = (image_column, label_column, num_labels, settings.reduce_labels)
    return (
        make_transform(*columns, augmentation, seed=seed, split=splits[0]),
        make_transform(*columns, None, eval_scale=settings.scale, split=splits[1]),
    )


@dataclass
class RunSetup:
    """The model and data of a finetuning run (:func:`set_up_run`).

    Attributes:
        model: the model to train (with cross-process BatchNorm when asked).
        settings: scale and label reduction of the data (:func:`resolve_data_settings`).
        train: the training split, its transform set to ``train_transform`` (None for a run that does not train).
        train_transform: the augmentation; call its ``set_epoch`` before each epoch.
        evaluation: the evaluation split, its images undecoded (:func:`without_image_decoding`; for the prediction
            overlays); None for a run that does not evaluate.
        evaluation_with_transform: the evaluation split, keep-ratio resized to the scale (or None).
        processor: the evaluation pre-processing to save next to the model (:func:`build_processor`).
    """

    model: nn.Module
    settings: DataSettings
    train: object
    train_transform: "SegmentationDatasetTransform"
    evaluation: object
    evaluation_with_transform: object
    processor: object
    once_qat: "OnceQAT | None" = None


def set_up_run(
    model_options,
    data_options,
    seed: int,
    device,
    main_process_first=nullcontext,
    evaluate_only: bool = False,
    evaluates: bool = True,
) -> RunSetup:
    """The model and data of a run of the example scripts, from their options (``evaluate_only``: a run that does
    not train, whose pretrained model must have the dataset's classes, :func:`build_model`, and which needs no
    training split; ``evaluates``: False for a run that never evaluates, which needs no evaluation split).

    ``model_options`` has ``model_name_or_path``, ``variant``, ``trust_remote_code``, ``config_overrides`` and
    ``sync_batchnorm``; ``data_options`` has ``dataset_name``, ``train_split``, ``eval_split``, ``max_train_samples``,
    ``max_eval_samples``, ``image_column``, ``label_column``, ``scale``, ``do_reduce_labels``, ``crop_size`` and
    ``cat_max_ratio`` (the Trainer script's dataclasses or the Accelerate script's namespace). The datasets are loaded
    inside ``main_process_first()`` (the main process writes the datasets cache first). Call it after seeding: the
    model is initialised here.
    """
    from .variants import get_variant

    if model_options.variant is not None:
        try:
            get_variant(model_options.variant)
        except KeyError as error:
            raise RunOptionError(f"--variant {error.args[0]}") from None
        if model_options.model_name_or_path:  # the variant's classes and data settings went to the other model
            raise RunOptionError(
                f"--variant {model_options.variant} and --model_name_or_path {model_options.model_name_or_path}: give "
                "one of them (a variant is a new model of random weights with its recipe's data settings; a "
                "pretrained model brings its own classes and image processor)"
            )
    with main_process_first(), loading(f"--dataset_name {data_options.dataset_name}"):
        train, evaluation = load_splits(
            data_options.dataset_name,
            data_options.train_split,
            data_options.eval_split,
            data_options.max_train_samples,
            data_options.max_eval_samples,
            needed=(not evaluate_only, evaluates),
        )
    columns = {"--image_column": data_options.image_column, "--label_column": data_options.label_column}
    for split, name in ((train, data_options.train_split), (evaluation, data_options.eval_split)):
        if split is not None:
            require_columns(split, columns, f"split {name!r}")
    with loading(f"--model_name_or_path {model_options.model_name_or_path}"):
        saved_processor = (
            None if model_options.variant else pretrained_processor_settings(model_options.model_name_or_path)
        )
        settings = resolve_data_settings(
            model_options.variant,
            data_options.scale,
            dataset_reduce_labels(data_options.dataset_name, data_options.do_reduce_labels),
            saved_processor,
        )
        if settings.reduce_labels and data_options.do_reduce_labels is None:
            source = f"--variant {model_options.variant}" if model_options.variant else "--model_name_or_path"
            warnings.warn(
                f"--dataset_name {data_options.dataset_name}: labels reduced as {source}'s dataset reduces them (label "
                "0 ignored, label k trained as class k - 1, ADE20K's convention); if label 0 of this dataset is a "
                "class, give --do_reduce_labels false",
                stacklevel=2,
            )
        id2label = resolve_id2label(
            data_options.dataset_name,
            model_options.model_name_or_path,
            model_options.variant,
            model_options.trust_remote_code,
            settings.reduce_labels,
        )
        model = build_model(
            id2label,
            model_options.model_name_or_path,
            model_options.variant,
            model_options.trust_remote_code,
            model_options.config_overrides,
            evaluate_only,
        )
    check_ignore_index(model.config)
    once_qat = prepare_once_qat(
        model,
        getattr(model_options, "weight_bits", None),
        getattr(model_options, "weight_bits_loss_weights", None),
        getattr(model_options, "weight_bits_distillation", 0.0),
    )
    if model_options.sync_batchnorm:
        model = convert_sync_batchnorm(model, device)
    train_transform, eval_transform = build_transforms(
        data_options.image_column,
        data_options.label_column,
        model.config.num_labels,
        settings,
        data_options.crop_size,
        data_options.cat_max_ratio,
        seed,
        (data_options.train_split, data_options.eval_split),
    )
    # the files are decoded in the transform, which names the sample and file it cannot read
    columns = (data_options.image_column, data_options.label_column)
    if train is not None:
        train = without_image_decoding(train, columns)
        train.set_transform(train_transform)
    if evaluation is not None:
        evaluation = without_image_decoding(evaluation, columns)
    return RunSetup(
        model=model,
        settings=settings,
        train=train,
        train_transform=train_transform,
        evaluation=evaluation,
        evaluation_with_transform=None if evaluation is None else evaluation.with_transform(eval_transform),
        processor=build_processor(
            settings.scale,
            settings.reduce_labels,
            model.config.model_type,
            settings.size_divisor,
            getattr(model.config, "size_divisibility", None),
        ),
        once_qat=once_qat,
    )


def check_ignore_index(config) -> None:
    """The scripts' data use mmseg's ignore index, 255: labels, the crop's padding and the metrics ignore it. A
    model with more than 255 classes (class 255 would be ignored: left out of the loss and of the mIoU, silently) or
    whose loss ignores another index is refused, naming the value."""
    ignore_index = getattr(config, "loss_ignore_index", IGNORE_INDEX)
    if config.num_labels > IGNORE_INDEX or ignore_index != IGNORE_INDEX:
        raise RunOptionError(
            f"the model has {config.num_labels} classes and loss_ignore_index {ignore_index}; these scripts read "
            f"label {IGNORE_INDEX} as ignored (mmseg's), so they train models of at most {IGNORE_INDEX} classes whose "
            f"loss ignores {IGNORE_INDEX}"
        )


@dataclass
class OnceQAT:
    """Once quantisation-aware training (Wu et al., "Vertical Layering of Quantized Neural Networks", arXiv
    2212.05326): every step runs the model at each weight width, from the same float master weights through the
    straight-through estimator, and sums ``loss_weights[i]`` times the loss at ``weight_bits[i]``; with
    ``distillation`` > 0 each narrower width also learns the widest width's per-pixel class distribution
    (``distillation`` times the mean KL divergence over pixels, the widest output detached), as Any-Precision DNN
    does. The widths run widest first, and the model is left at the widest. Under activation checkpointing each
    checkpointed layer recomputes at the width its forward ran at (``RecomputeAtForwardWidth``), so every width's
    gradients are the ones without checkpointing."""

    weight_bits: list[int]
    loss_weights: list[float]
    distillation: float = 0.0

    def loss(self, model: nn.Module, unwrapped: nn.Module, inputs: dict):
        """``(total loss, outputs at the widest width)``; ``model`` is what runs (a DDP wrapper), ``unwrapped`` the
        model whose width is set. All widths run inside this one call, before one backward pass."""
        total, widest, teacher = 0.0, None, None
        try:
            for bits, weight in zip(self.weight_bits, self.loss_weights):
                unwrapped.set_weight_bits(bits)
                outputs = model(**inputs)
                total = total + weight * outputs.loss
                if widest is None:
                    widest = outputs
                    if self.distillation:
                        teacher = F.log_softmax(outputs.logits.detach().float(), dim=1)
                elif teacher is not None:
                    student = F.log_softmax(outputs.logits.float(), dim=1)
                    divergence = F.kl_div(student, teacher, log_target=True, reduction="none").sum(1).mean()
                    total = total + self.distillation * divergence
        finally:
            unwrapped.set_weight_bits(self.weight_bits[0])
        return total, widest


#: the float master weights of a once-QAT run, saved in each checkpoint next to the model's 8-bit codes
MASTER_WEIGHTS_FILE = "once_qat_master_weights.safetensors"


class MasterWeights:
    """The float master weights of a once-QAT model as a checkpointable object (``state_dict`` /
    ``load_state_dict``): the model's own state dict holds their 8-bit codes, which keep every width's network but not
    the weights below one code step, so a resumed run reads these to continue exactly where it stopped (the Trainer
    script saves them as :data:`MASTER_WEIGHTS_FILE`, the Accelerate loop registers this object for checkpointing)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        return {f"{name}.weight": layer.weight.detach().cpu().clone() for name, layer in self.model.vertical_layers()}

    def load_state_dict(self, state: dict) -> None:
        layers = dict(self.model.vertical_layers())
        expected = {f"{name}.weight" for name in layers}
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise RunOptionError(f"once-QAT master weights: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for name, layer in layers.items():
                layer.weight.copy_(state[f"{name}.weight"])


def prepare_once_qat(model: nn.Module, weight_bits, loss_weights=None, distillation: float = 0.0) -> OnceQAT | None:
    """Makes ``model`` ready for once QAT at ``weight_bits`` (``--weight_bits``): a float model gets float master
    weights behind quantised layers, an any-precision one (a saved codes folder) its dequantised 8-bit codes as master
    weights. Returns the plan, or None without ``weight_bits``."""
    if not weight_bits:
        if loss_weights or distillation:
            raise RunOptionError("--weight_bits_loss_weights / --weight_bits_distillation need --weight_bits")
        return None
    widths = sorted(weight_bits, reverse=True)
    integral = all(isinstance(bits, int) and not isinstance(bits, bool) for bits in widths)
    if not integral or len(set(widths)) != len(widths) or any(not 1 <= bits <= 8 for bits in widths):
        raise RunOptionError(
            f"--weight_bits {' '.join(map(str, weight_bits))}: distinct widths between 1 and 8 expected"
        )
    if loss_weights is None:
        loss_weights = [1.0] * len(widths)
    elif len(loss_weights) != len(widths) or any(not weight >= 0 for weight in loss_weights):
        raise RunOptionError(
            f"--weight_bits_loss_weights {' '.join(map(str, loss_weights))}: one non-negative weight per width of "
            f"--weight_bits {' '.join(map(str, weight_bits))} expected"
        )
    else:  # in the order the widths were given
        loss_weights = [loss_weights[list(weight_bits).index(bits)] for bits in widths]
    if not distillation >= 0:
        raise RunOptionError(f"--weight_bits_distillation {distillation}: a non-negative weight expected")
    if not hasattr(model, "set_weight_bits"):
        raise RunOptionError(
            f"--weight_bits: {type(model).__name__} is not an hf-semseg model (no any-precision weights)"
        )
    if getattr(model.config, "weight_bits", None):
        model.config.weight_bits = widths
        model.use_float_master_weights().set_weight_bits(widths[0])
    else:
        model.to_any_precision(widths, trainable=True)
    return OnceQAT(widths, [float(weight) for weight in loss_weights], float(distillation))


class DatasetSampleError(RunOptionError):
    """A sample of the dataset cannot be used (unreadable file, wrong size, label values outside the classes); the
    message names the sample (its dataset row) and, where known, its file. The example scripts end with this message
    as one line (exit status 1)."""


@contextmanager
def exit_on_user_error():
    """For a script's ``__main__``: a :class:`RunOptionError` (a bad option, a :class:`DatasetSampleError`) ends the
    script with its message as one line (exit status 1), also when a data loader worker raised it (torch re-raises
    it with the worker's traceback, whose last line is the message)."""
    try:
        yield
    except RunOptionError as error:
        message = str(error).strip().splitlines()[-1]
        message = re.sub(r"^[\w.]*(RunOptionError|DatasetSampleError): ", "", message)  # a traceback's last line
        raise SystemExit(f"error: {message}") from None


def require_columns(dataset, columns: dict, where: str) -> None:
    """Refuses, before any sample is read, a dataset without the columns the options name (``{"--image_column":
    "image", ...}``): a :class:`RunOptionError` naming the option, the missing column, ``where`` (the split) and the
    columns there are (a ``KeyError`` traceback from the first sample before)."""
    present = [column for column in dataset.column_names if column != SAMPLE_INDEX]  # ours, not the dataset's
    for option, column in columns.items():
        if column not in present:
            raise RunOptionError(f"{option} {column}: {where} has no such column (its columns: {present})")


def without_image_decoding(dataset, columns):
    """``dataset`` with its ``datasets.Image`` columns among ``columns`` left undecoded (``{"path", "bytes"}``):
    ``datasets`` decodes them before a transform sees the sample, so an unreadable file (a truncated PNG) would fail
    there without naming it; :func:`open_image` decodes them and names the sample and the file."""
    from datasets import Image as ImageFeature

    for column in columns:
        feature = dataset.features.get(column)
        if isinstance(feature, ImageFeature) and feature.decode:
            dataset = dataset.cast_column(column, ImageFeature(decode=False))
    return dataset


def file_path(value) -> str | None:
    """The file a dataset value was read from: the ``path`` of an undecoded ``datasets.Image`` value, the
    ``filename`` of a PIL image opened from a file; None for bytes or arrays in the dataset."""
    path = value.get("path") if isinstance(value, dict) else getattr(value, "filename", None)
    return str(path) if path else None


def sample_name(index, split: str | None = None, files: dict | None = None) -> str:
    """How errors name a sample: its split and dataset row, then its files where known
    (``split 'train' sample 2 (label a/s2.png)``)."""
    name = f"sample {index}" if split is None else f"split {split!r} sample {index}"
    known = [f"{column} {path}" for column, path in (files or {}).items() if path]
    return f"{name} ({', '.join(known)})" if known else name


def open_image(value, index, column: str, split: str | None = None):
    """A dataset value as an image: a PIL image or an array as they are, an undecoded ``datasets.Image`` value
    (``{"path", "bytes"}``, :func:`without_image_decoding`) read completely; a file that cannot be read is a
    :class:`DatasetSampleError` naming the split, the sample, the column and the file."""
    if not isinstance(value, dict):
        return value
    from datasets import Image as ImageFeature

    try:
        image = ImageFeature().decode_example(value)
        image.load()
    except Exception as error:  # PIL and the file system raise several types for unreadable files
        where = file_path(value) or "bytes in the dataset"
        raise DatasetSampleError(f"{sample_name(index, split)}: {column} {where} cannot be read ({error})") from error
    return image


def single_channel_label(label: np.ndarray, sample: str, column: str) -> np.ndarray:
    """A label map as ``(H, W)`` class ids: a 3-D one only when its channels are equal (a grey map saved as RGB);
    a colour-coded map (channels that differ) is a :class:`DatasetSampleError`, where its first channel alone was
    taken before (every class of a palette with equal reds became one)."""
    if label.ndim != 3:
        return label
    if label.shape[2] == 1 or (label.shape[2] == 3 and (label == label[..., :1]).all()):
        return label[..., 0]
    if label.shape[2] in (2, 4):  # LA, RGBA: the message said the channels differed where only the alpha did
        colours = "grey" if (label[..., :-1] == label[..., :1]).all() else "colour"
        raise DatasetSampleError(
            f"{sample}: {column} is a {colours} map with an alpha channel ({label.shape[2]} channels); a label map "
            "must hold class ids in one channel (a grey PNG without alpha)"
        )
    raise DatasetSampleError(
        f"{sample}: {column} has {label.shape[2]} channels that differ (a colour-coded map?); a label map must hold "
        "class ids in one channel (a grey PNG)"
    )


def rgb_array(image, sample: str = "the image") -> np.ndarray:
    """An image value of a dataset as a writable ``(H, W, 3)`` uint8 RGB array, as mmseg reads image files (OpenCV's
    colour read: grey replicated, 16 bits reduced to 8): a PIL image converted to RGB, a 16-bit one (modes
    ``I;16*``, or ``I`` from a PNG) first reduced as ``round(v * 255 / 65535)`` (PIL's RGB conversion clipped it:
    99% white); arrays (``datasets``' ``Array3D`` values come as nested lists) uint8, uint16 (reduced) or integers
    in [0, 255]. Float images are refused (``DatasetSampleError`` naming ``sample``): a [0, 1] image read as
    0-255 was black, so the scale is not guessed."""
    if isinstance(image, Image.Image):
        if is_sixteen_bit_pil_image(image):
            grey = sixteen_to_eight_bits(np.asarray(image).astype(np.uint16))
            return np.repeat(grey[..., None], 3, axis=2)
        if image.mode not in ("I", "F"):
            return np.array(image.convert("RGB"))
    array = np.array(image)
    if isinstance(image, Image.Image) and array.ndim == 2:  # mode I or F: one grey channel
        array = np.repeat(array[..., None], 3, axis=2)
    if array.dtype.kind == "f":
        raise DatasetSampleError(
            f"{sample}: the image is floating point ({array.dtype}); store images as uint8 RGB (0-255), e.g. "
            "(image * 255).round().astype('uint8') for values in [0, 1]"
        )
    if array.dtype == np.uint16:
        return sixteen_to_eight_bits(array)
    if array.dtype.kind in "iu" and array.dtype != np.uint8 and array.size:
        if array.min() < 0 or array.max() > 255:
            raise DatasetSampleError(
                f"{sample}: the image holds {array.dtype} values in [{array.min()}, {array.max()}]; expected uint8 "
                "(0-255) or uint16 (16-bit) values"
            )
        return array.astype(np.uint8)
    return array


def lossy_label_file(label) -> str | None:
    """The format of a label map stored lossily (``JPEG``: class ids change at every edge), else None."""
    image_format = getattr(label, "format", None)
    path = file_path(label) or ""
    if image_format == "JPEG" or path.lower().endswith((".jpg", ".jpeg")):
        return "JPEG"
    return None


#: the label warnings given in this process (each once): "lossy", "binary"
_warned_labels: set[str] = set()


def warn_once(kind: str, message: str) -> None:
    if kind not in _warned_labels:
        _warned_labels.add(kind)
        warnings.warn(message, stacklevel=3)


def warn_lossy_label(sample: str) -> None:
    warn_once(
        "lossy",
        f"{sample}: the label map is a JPEG, whose lossy compression changes class ids at the edges of every region "
        "(22% of the pixels in a 150-class test); store label maps as PNG",
    )


def warn_binary_mask(label: np.ndarray, sample: str) -> None:
    """Warns (once) about a label map of 0 and 255 alone: 255 is the ignore index (mmseg's, transformers'), so a binary
    mask saved as 0 / 255, the common way, had its object left out of the loss and the metrics, silently (an
    evaluation of a model that finds no object read mIoU 1.0)."""
    if "binary" in _warned_labels or label.max(initial=0) != IGNORE_INDEX:
        return
    if np.any(label == 0) and not np.any((label != 0) & (label != IGNORE_INDEX)):
        warn_once(
            "binary",
            f"{sample}: the label map holds only 0 and {IGNORE_INDEX}; {IGNORE_INDEX} is the ignore index, so those "
            "pixels are left out of the loss and the metrics. A binary mask saved as 0 / 255 has its object ignored: "
            "store it as 0 / 1 (mask // 255)",
        )


def to_arrays(
    image,
    label,
    index,
    num_labels: int,
    reduce_labels: bool,
    columns: tuple[str, str] = ("image", "label"),
    split: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One sample as (RGB uint8 array, int64 label array), checked: readable, one channel of class ids
    (:func:`single_channel_label`), same size, labels in the classes. ``image`` and ``label`` are PIL images, arrays
    or undecoded ``datasets.Image`` values (:func:`open_image`); ``columns`` and ``split`` name them in errors, with
    their files where known (:func:`sample_name`). Errors are :class:`DatasetSampleError`."""
    sample = sample_name(index, split, {columns[0]: file_path(image), columns[1]: file_path(label)})
    for column, value, expected in zip(columns, (image, label), ("an image", "a label map")):
        if isinstance(value, (str, bytes, int, float)):  # read as a 0-d array: "shape ()" named no cause
            hint = (
                "a column of file paths: cast it to datasets.Image()"
                if isinstance(value, str)
                else "a classification dataset's class number?"
                if isinstance(value, int)
                else "expected an image value"
            )
            raise DatasetSampleError(f"{sample}: {column} holds {value!r:.80}, not {expected} ({hint})")
    image, label = open_image(image, index, columns[0], split), open_image(label, index, columns[1], split)
    if lossy_label_file(label):  # a decoded JPEG keeps its format, a file read by path its name
        warn_lossy_label(sample)
    try:
        image = rgb_array(image, sample)
        label = np.array(label)
    except DatasetSampleError:
        raise
    except Exception as error:  # PIL raises several types for unreadable files
        raise DatasetSampleError(f"{sample}: the image or label cannot be read ({error})") from error
    if image.ndim != 3 or image.shape[2] != 3:
        raise DatasetSampleError(f"{sample}: {columns[0]} has shape {image.shape}, expected (H, W, 3)")
    if label.dtype.kind not in "iub":  # a float map (an Array2D of floats, a mode F TIFF) was truncated: 0.6 -> 0
        raise DatasetSampleError(
            f"{sample}: {columns[1]} holds {label.dtype} values; a label map must hold integer class ids"
        )
    label = single_channel_label(label.astype(np.int64), sample, columns[1])
    if image.shape[:2] != label.shape:
        raise DatasetSampleError(f"{sample}: image size {image.shape[:2]} differs from label size {label.shape}")
    warn_binary_mask(label, sample)
    # checked as stored: with reduce_labels, 0 is the ignored background and k is class k - 1 (mmseg's)
    low, high = (1, num_labels + 1) if reduce_labels else (0, num_labels)
    outside = (label != IGNORE_INDEX) & ((label < low) | (label >= high))
    if reduce_labels:
        outside &= label != 0
    bad = np.unique(label[outside])
    if bad.size:
        reduced = " (with reduce_labels: 0 ignored, k the class k - 1)" if reduce_labels else ""
        raise DatasetSampleError(
            f"{sample}: label values {bad[:10].tolist()} are outside [{low}, {high}) and {IGNORE_INDEX}{reduced}"
        )
    if reduce_labels:
        label = reduce_zero_label(label)
    return image, label


SAMPLE_INDEX = "sample_index"


def with_sample_index(dataset):
    """Adds the row number as a column: errors in the on-the-fly transform name the dataset row, and it keys each
    training sample's augmentation (:func:`augmentation_rng`)."""
    return (
        dataset if SAMPLE_INDEX in dataset.column_names else dataset.add_column(SAMPLE_INDEX, list(range(len(dataset))))
    )


def normalise(image: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float ``(3, H, W)`` with ImageNet mean/std (the originals' normalisation)."""
    return torch.from_numpy(((image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


def augmentation_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation: a function of ``(seed, epoch, sample index)`` only, so a resumed,
    multi-process or multi-worker run draws the same augmentation for a sample as one uninterrupted process."""
    if min(seed, epoch, index) < 0:
        raise ValueError(f"seed, epoch and sample index must be non-negative, got {(seed, epoch, index)}")
    return np.random.default_rng([seed, epoch, index])


class SegmentationDatasetTransform:
    """A ``datasets.set_transform`` function: training samples go through ``augmentation`` with the generator
    :func:`augmentation_rng` ``(seed, epoch, sample index)``; evaluation samples are keep-ratio resized to
    ``eval_scale`` (labels stay at their size unless resized with it). ``split`` names the split in sample errors.

    The sample index is the ``sample_index`` column (:func:`with_sample_index`); the epoch is set with
    :meth:`set_epoch` before each epoch's data loader is iterated (:class:`EpochCallback` does it for ``Trainer``). A
    plain picklable object, so data loader workers get a copy with the epoch it had when they started.
    """

    def __init__(
        self,
        image_column: str,
        label_column: str,
        num_labels: int,
        reduce_labels: bool,
        augmentation: SegmentationTrainTransform | None,
        seed: int = 0,
        eval_scale: tuple[int, int] | None = None,
        split: str | None = None,
    ):
        self.image_column, self.label_column, self.split = image_column, label_column, split
        self.num_labels, self.reduce_labels = num_labels, reduce_labels
        self.augmentation, self.seed, self.eval_scale = augmentation, seed, eval_scale
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, batch: dict) -> dict:
        from .transforms import keep_ratio_size, pad_to_crop, resize_pair

        if self.augmentation is not None and SAMPLE_INDEX not in batch:
            raise ValueError(
                f"the training dataset has no {SAMPLE_INDEX!r} column, which keys each sample's augmentation: "
                "apply hf_semseg.training.with_sample_index to it before set_transform"
            )
        pixel_values, labels = [], []
        # the dataset row of each sample, for error messages and the augmentation's generator
        indices = batch.get(SAMPLE_INDEX, range(len(batch[self.image_column])))
        for index, image, label in zip(indices, batch[self.image_column], batch[self.label_column]):
            columns = (self.image_column, self.label_column)
            image, label = to_arrays(image, label, index, self.num_labels, self.reduce_labels, columns, self.split)
            if self.augmentation is not None:
                image, label = self.augmentation(image, label, augmentation_rng(self.seed, self.epoch, int(index)))
            elif self.eval_scale is not None:
                image, label = resize_pair(image, label, keep_ratio_size(*image.shape[:2], *self.eval_scale))
            image, label = normalise(image), torch.from_numpy(np.ascontiguousarray(label))
            if self.augmentation is not None:  # mmseg's Normalize -> Pad: the padding is the mean colour
                image, label = pad_to_crop(image, label, self.augmentation.crop_size)
            pixel_values.append(image)
            labels.append(label)
        return {"pixel_values": pixel_values, "labels": labels}


#: builds a :class:`SegmentationDatasetTransform` (the name the scripts and tests use)
make_transform = SegmentationDatasetTransform


class EpochCallback(TrainerCallback):
    """Tells a :class:`SegmentationDatasetTransform` the epoch ``Trainer`` is about to run (also when it resumes in the
    middle of an epoch: ``state.epoch`` is then the checkpoint's fractional epoch)."""

    def __init__(self, transform: SegmentationDatasetTransform):
        self.transform = transform

    def on_train_begin(self, args, state, control, **kwargs):
        if args.dataloader_num_workers > 0 and args.dataloader_persistent_workers:
            raise ValueError(
                "dataloader_persistent_workers keeps the workers' dataset copies of the first epoch, so the "
                "augmentation could not follow the epoch: run without --dataloader_persistent_workers"
            )

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.transform.set_epoch(math.floor(state.epoch or 0))


#: the hidden folder of the output folder where checkpoints are written before they are published complete
STAGING_FOLDER = ".incomplete-checkpoints"


def publish_checkpoint(staged: Path, final: Path) -> None:
    """Moves the fully written checkpoint folder ``staged`` to ``final`` with one rename, so a checkpoint is complete
    or absent whenever the process is killed; an older folder of that name is replaced (moved aside first, then
    deleted). Call it on the main process, after every process has written its part."""
    import shutil

    staged, final = Path(staged), Path(final)
    replaced = staged.with_name(staged.name + ".replaced")
    if final.exists():
        shutil.rmtree(replaced, ignore_errors=True)
        final.rename(replaced)
    staged.rename(final)
    shutil.rmtree(replaced, ignore_errors=True)
    if staged.parent.name == STAGING_FOLDER and not any(staged.parent.iterdir()):
        staged.parent.rmdir()


def last_checkpoint(output_dir, prefix: str, separator: str = "-") -> Path:
    """The checkpoint ``<prefix><separator><N>`` of ``output_dir`` with the largest N (by number, not by name), for
    ``--resume_from_checkpoint latest``. Checkpoints are published complete (:func:`publish_checkpoint`), and a
    checkpoint being written lives in :data:`STAGING_FOLDER`, so the largest is the last complete one."""
    pattern = re.compile(rf"^{re.escape(prefix + separator)}(\d+)$")
    steps = [
        (int(match.group(1)), path)
        for path in Path(output_dir).glob(f"{prefix}{separator}*")
        if path.is_dir() and (match := pattern.match(path.name))
    ]
    if not steps:
        raise RunOptionError(f"--resume_from_checkpoint latest: no {prefix}{separator}N checkpoint in {output_dir}")
    return max(steps)[1]


def resolve_checkpoint(
    output_dir, name: str | None, prefix: str, separator: str = "-", marker: str | None = None
) -> Path | None:
    """The folder ``--resume_from_checkpoint name`` means: None without it, the last complete checkpoint of
    ``output_dir`` for ``latest`` (:func:`last_checkpoint`), else the named folder, which must exist and, with
    ``marker``, hold that file, which every checkpoint of the script holds (a folder that is not a checkpoint ended in
    ``Trainer``'s or Accelerate's traceback, after the output folder was made)."""
    if name is None:
        return None
    if name == "latest":
        return last_checkpoint(output_dir, prefix, separator)
    if not Path(name).is_dir():
        raise RunOptionError(f"--resume_from_checkpoint {name}: no such folder")
    if marker is not None and not (Path(name) / marker).is_file():
        raise RunOptionError(
            f"--resume_from_checkpoint {name}: not a checkpoint folder (a {prefix}{separator}N checkpoint of this "
            f"script holds {marker} next to the model weights and the optimizer state)"
        )
    return Path(name)


def saved_weight_shapes(model: nn.Module) -> list[dict[str, tuple[int, ...]]]:
    """The names and shapes of ``model``'s tensors as a checkpoint can hold them: as ``state_dict()`` names them
    (``Accelerator.save_state``) and, where transformers renames a model's weights when it saves them
    (``save_pretrained``, which ``Trainer`` checkpoints use: transformers' Swin's ``attention.self.query`` for
    ``attention.q_proj``), as saved. The saved form is left out if transformers cannot make it."""
    state = model.state_dict()
    forms = [{name: tuple(tensor.shape) for name, tensor in state.items()}]
    try:
        from transformers.core_model_loading import revert_weight_conversion

        saved = revert_weight_conversion(model, dict(state))
        forms.append({name: tuple(tensor.shape) for name, tensor in dict(saved).items()})
    except Exception:  # not a transformers model, or another transformers version's internals
        pass
    return forms


def check_checkpoint_weights(model: nn.Module, checkpoint: Path | None) -> None:
    """Refuses, before any training, a ``--resume_from_checkpoint`` folder whose saved model weights
    (``model.safetensors``, what ``Trainer`` and ``Accelerator.save_state`` write) are not this model's: a tensor of
    another shape or a tensor the model does not have (the checkpoint of another model or configuration ended in
    torch's ``load_state_dict`` traceback, after the output folder was made), compared with the model's tensors under
    the names a checkpoint of either script gives them (:func:`saved_weight_shapes`). The file's header is read, not
    its tensors. A checkpoint without that file (sharded FSDP states) is left to the loader."""
    if checkpoint is None:
        return
    weights = Path(checkpoint) / "model.safetensors"
    if not weights.is_file():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as saved:
            shapes = {key: tuple(saved.get_slice(key).get_shape()) for key in saved.keys()}
    except Exception as error:  # safetensors raises its own error types for a damaged file
        raise RunOptionError(
            f"--resume_from_checkpoint {checkpoint}: {weights.name} cannot be read ({error})"
        ) from None
    expected = max(saved_weight_shapes(model), key=lambda form: len(form.keys() & shapes.keys()))
    for key, shape in shapes.items():
        if key not in expected:
            problem = f"holds {key!r}, which {type(model).__name__} does not have"
        elif shape != expected[key]:
            problem = f"{key!r} has shape {shape}, the model's is {expected[key]}"
        else:
            continue
        raise RunOptionError(
            f"--resume_from_checkpoint {checkpoint}: {weights.name} {problem} (a checkpoint of another model or "
            "configuration?)"
        )


class SegmentationTrainer(Trainer):
    """``Trainer`` with checkpoints that are complete or absent, and a resumed run that trains exactly the steps
    left.

    * Each checkpoint is written to :data:`STAGING_FOLDER` and published with one rename
      (:func:`publish_checkpoint`): a run killed while saving leaves no ``checkpoint-N`` folder behind, and
      ``--resume_from_checkpoint latest`` resumes from the last complete one. The older checkpoints are then rotated
      (``save_total_limit``) in the output folder, and the best-model path points at the published folder.
    * ``Trainer`` resumes a checkpoint whose step is a run's last step in the middle of an epoch by training one more
      step; here an epoch begins only while steps are left.
    """

    _staging: Path | None = None
    #: once quantisation-aware training (``--weight_bits``): the training loss sums every width's
    once_qat: OnceQAT | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # every loss these scripts train is a pixel mean that takes no ``num_items_in_batch``: Trainer divides it by
        # the accumulation steps and does not scale it by the process count. transformers' segmentation models
        # (Segformer, UperNet, DPT, ...) take ``**kwargs`` and declare nothing, which Trainer reads as a loss
        # normalised by the batch's items: their loss and gradients were N times too large under N accumulation steps
        # or processes (hf-semseg's declare ``accepts_loss_kwargs = False``)
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {key: value for key, value in inputs.items() if key != UNPADDED_SIZES}
        if self.once_qat is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = self.once_qat.loss(model, self.accelerator.unwrap_model(model), inputs)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation as mmseg tests, one image size at a time: a batch of :func:`pad_collate` with
        ``with_sizes=True`` is run in groups of samples of one size (with several processes, each sample alone: the
        same number of forwards everywhere, since evaluation batches are even), each at that size (zero padding to the batch's
        largest image changed what the model saw, so the mIoU depended on the evaluation batch size: 0.6308 at 1,
        0.5995 at 8). Returns ``(B, H, W)`` int64 class maps at the collated size (the ignore index outside each
        image) and, with labels, each sample's loss (its group's) as ``(class maps, sample losses)`` for
        :class:`StreamingMeanIoU`, which reports their mean as ``eval_loss``: ``Trainer`` repeats one loss per
        batch for its samples, and with several processes the last batch's padding duplicates (accelerate's even
        batches) were counted in it (+2.8% for 9 images on 2 processes), where ``gather_for_metrics`` drops the
        duplicates of every per-sample output. With ``prediction_loss_only`` the batch's mean loss as ``Trainer``
        takes it; a batch without sizes goes to ``Trainer`` as it is."""
        sizes = inputs.get(UNPADDED_SIZES)
        if sizes is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        pixel_values, labels = inputs["pixel_values"], inputs.get("labels")
        maps = torch.full((len(pixel_values), *pixel_values.shape[-2:]), IGNORE_INDEX, device=pixel_values.device)
        sample_losses = None
        for (height, width), indices in same_size_groups(sizes, self.accelerator.num_processes == 1):
            rows = torch.tensor(indices, device=pixel_values.device)
            group = {"pixel_values": pixel_values[rows, :, :height, :width]}
            if labels is not None:
                group["labels"] = labels[rows, :height, :width]
            loss, logits, _ = super().prediction_step(model, group, prediction_loss_only, ignore_keys)
            if loss is not None:
                if sample_losses is None:
                    sample_losses = torch.zeros(len(pixel_values), device=loss.device, dtype=torch.float32)
                sample_losses[rows.to(loss.device)] = loss.float()
            if logits is not None:
                unwrapped = self.accelerator.unwrap_model(model)
                logits, class_logits, mask_logits = prediction_outputs(unwrapped, logits)
                group_maps = class_maps(unwrapped, logits, (height, width), class_logits, mask_logits)
                maps[rows, :height, :width] = group_maps.to(maps.device)
        if prediction_loss_only:
            return None if sample_losses is None else sample_losses.mean(), None, None
        if sample_losses is None:
            return None, maps, labels
        return None, (maps, sample_losses), labels

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        master = Path(resume_from_checkpoint) / MASTER_WEIGHTS_FILE
        if self.once_qat is not None and master.is_file():
            from safetensors.torch import load_file

            MasterWeights(self.accelerator.unwrap_model(model or self.model)).load_state_dict(load_file(str(master)))

    def _get_output_dir(self, trial) -> str:
        # while a checkpoint is saved, Trainer's checkpoint logic writes into the staging folder
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        import shutil

        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = Path(self._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / STAGING_FOLDER
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
        self.accelerator.wait_for_everyone()
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        best = self.state.best_model_checkpoint
        if best is not None and Path(best).parent == staging:
            self.state.best_model_checkpoint = str(run_dir / Path(best).name)
            if self.args.should_save:  # the saved state names the published folder too
                self.state.save_to_json(str(staging / name / "trainer_state.json"))
        if self.once_qat is not None and self.args.should_save:
            from safetensors.torch import save_file

            master = MasterWeights(self.accelerator.unwrap_model(model)).state_dict()
            save_file(master, str(staging / name / MASTER_WEIGHTS_FILE))
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG states)
        if self.args.should_save:
            publish_checkpoint(staging / name, run_dir / name)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _run_epoch(self, *args, **kwargs):
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)


#: the key of each sample's own ``(height, width)`` in a batch of :func:`pad_collate` with ``with_sizes=True``
UNPADDED_SIZES = "unpadded_sizes"


def pad_collate(samples: list[dict], with_sizes: bool = False) -> dict:
    """Stacks samples, padding pixels with 0 (the mean colour, after normalisation) and labels with the ignore index
    on the right/bottom to the largest size. ``with_sizes``: each sample's own ``(height, width)`` under
    :data:`UNPADDED_SIZES` too (the evaluation runs each size alone: :meth:`SegmentationTrainer.prediction_step`)."""
    height = max(s["pixel_values"].shape[-2] for s in samples)
    width = max(s["pixel_values"].shape[-1] for s in samples)

    def pad(tensor, value):
        return F.pad(tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2]), value=value)

    batch = {
        "pixel_values": torch.stack([pad(s["pixel_values"], 0.0) for s in samples]),
        "labels": torch.stack([pad(s["labels"], IGNORE_INDEX) for s in samples]).long(),
    }
    if with_sizes:
        batch[UNPADDED_SIZES] = torch.tensor([tuple(s["pixel_values"].shape[-2:]) for s in samples])
    return batch


def same_size_groups(sizes, single_process: bool = True) -> list[tuple[tuple[int, int], list[int]]]:
    """The samples of a collated batch grouped by their own ``(height, width)`` (``sizes``, one row per sample),
    in order of first appearance: ``[(size, [sample indices]), ...]``. With several processes each sample is a group
    of its own: every process then runs as many forwards per batch (a sharded, FSDP, forward is collective)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(torch.as_tensor(sizes).tolist()):
        groups.setdefault(tuple(size) if single_process else (tuple(size), index), []).append(index)
    return [(key if single_process else key[0], indices) for key, indices in groups.items()]


def prediction_outputs(model, logits) -> tuple:
    """``(logits, class_queries_logits, masks_queries_logits)`` from what ``Trainer.prediction_step`` returns as the
    logits (the model output's values but the loss, in its fields' order: a mask-classification model's are
    ``logits, class_queries_logits, masks_queries_logits, ...``); the query outputs None for other models."""
    if not isinstance(logits, (tuple, list)):
        return logits, None, None
    if classifies_masks(model) and len(logits) >= 3:
        class_logits, mask_logits = logits[1], logits[2]
        if class_logits.dim() == 3 and mask_logits.dim() == 4 and class_logits.shape[:2] == mask_logits.shape[:2]:
            return logits[0], class_logits, mask_logits
    return logits[0], None, None


def class_maps(
    model,
    logits: torch.Tensor,
    size,
    class_queries_logits: torch.Tensor | None = None,
    masks_queries_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, H, W)`` int64 predictions at ``size`` from the outputs of inputs of that size, a padding model's padding
    cropped first (:func:`~hf_semseg.inference.model_padded_size`). With a mask-classification model's query outputs,
    detectron2's semantic inference (as its image processor's post-processing): each image's mask logits upsampled to
    the padded input, ``sum_q softmax(class_q)[k] * sigmoid(mask_q)`` there, the padding cropped; else ``logits``
    upsampled (for a mask-classification model, its combined stride-4 scores: an approximation of that)."""
    size = tuple(int(side) for side in size)
    padded_size = model_padded_size(model, size)
    if class_queries_logits is None or masks_queries_logits is None:
        return logits_to_size(logits.float(), size, size, padded_size).argmax(1)
    maps = []
    for index in range(len(class_queries_logits)):  # one image at a time: Q full-size masks each
        # (1, Q, h, w) stride-4 mask logits -> (1, Q, H', W') at the padded input
        masks = F.interpolate(
            masks_queries_logits[index : index + 1].float(), size=padded_size, mode="bilinear", align_corners=False
        )
        scores = semantic_scores(class_queries_logits[index : index + 1].float(), masks)  # (1, K, H', W')
        maps.append(scores[0, :, : size[0], : size[1]].argmax(0))
    return torch.stack(maps)


#: parameter-name prefixes of the decode and auxiliary heads, which ``head_lr_multiplier`` applies to
HEAD_PREFIXES = ("decode_head.", "auxiliary_head.")
#: parameter-name prefixes of the backbones, which ``layer_decay`` applies to (SeMask-Mask2Former's is inside the
#: pixel-level module)
BACKBONE_PREFIXES = ("backbone.", "model.pixel_level_module.encoder.")
#: the stage index in a backbone parameter's name (SeMask-Swin, Pale, ConvNeXt ``stages.i``, Swin ``layers.i``, MiT
#: ``block.i``)
BACKBONE_STAGE = re.compile(r"\.(?:stages|layers|block)\.(\d+)\.")


def backbone_stage_count(config) -> int:
    """The number of stages of a model's backbone: of its own config (SeMask-Swin, Pale) or its ``backbone_config``
    (VWFormer, SeMask-Mask2Former, UperNet); 4 when neither says."""
    for candidate in (config, getattr(config, "backbone_config", None)):
        depths = getattr(candidate, "depths", None)
        if depths:
            return len(depths)
    return 4


def parameter_groups(
    model,
    weight_decay: float,
    layer_decay: float | None = None,
    base_lr: float | None = None,
    head_lr_multiplier: float = 1.0,
):
    """AdamW groups of the original recipe: no weight decay on norms (any name containing ``norm``), biases, gates and
    position tables; optional layer-wise lr decay over the backbone stages (stage ``i`` of ``n`` gets
    ``layer_decay ** (n - i)``, the patch embedding ``layer_decay ** n``, so every backbone scale is below the heads'
    1; the backbone is ``backbone.*``, or SeMask-Mask2Former's ``model.pixel_level_module.encoder.*``, and its stage
    the index after ``stages.`` / ``layers.`` / ``block.``); the decode and auxiliary heads (parameters named
    ``decode_head.*`` / ``auxiliary_head.*``) get ``head_lr_multiplier`` (mmseg's ``lr_mult`` on the heads). The
    scales multiply ``base_lr``; without it every group has the optimizer's learning rate."""
    groups: dict[tuple[float, float], list] = {}
    num_stages = backbone_stage_count(model.config)
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = parameter.ndim <= 1 or "norm" in name or "relative_position_bias_table" in name
        scale = 1.0
        if layer_decay is not None and name.startswith(BACKBONE_PREFIXES):
            stage = BACKBONE_STAGE.search(name)
            scale = layer_decay ** (num_stages - (int(stage.group(1)) if stage else 0))
        elif name.startswith(HEAD_PREFIXES):
            scale = head_lr_multiplier
        key = (0.0 if no_decay else weight_decay, scale)
        groups.setdefault(key, []).append(parameter)
    result = []
    for (decay, scale), parameters in groups.items():
        group = {"params": parameters, "weight_decay": decay}
        if base_lr is not None:
            group["lr"] = base_lr * scale
        result.append(group)
    return result


#: keyword arguments of ``Trainer.get_optimizer_cls_and_kwargs`` that carry the optimizer's own parameter layout
#: (GaLore / APOLLO ``params``, LOMO ``model``, layer-wise ``optimizer_dict``) instead of taking parameter groups
OWN_PARAMETER_LAYOUT = ("params", "model", "optimizer_dict")
#: parts of the ``--optim`` names of those optimizers (transformers' GaLore, APOLLO, LOMO and layer-wise ones): refused
#: by name before transformers asks for their package and their target modules
OWN_PARAMETER_LAYOUT_NAMES = ("galore", "apollo", "lomo", "layerwise")


def own_parameter_layout_error(name: str) -> RunOptionError:
    return RunOptionError(
        f"--optim {name}: lays out the parameters itself, so it cannot take the recipe's parameter groups "
        "(weight-decay exclusions, --layer_decay, --head_lr_multiplier); choose another --optim"
    )


def build_optimizer(model, args, layer_decay: float | None = None, head_lr_multiplier: float = 1.0):
    """The optimizer ``--optim`` / ``--optim_args`` name (``Trainer.get_optimizer_cls_and_kwargs``, as ``Trainer``
    builds it) over the recipe's parameter groups (:func:`parameter_groups`: no weight decay on norms, biases and
    position tables, ``layer_decay``, ``head_lr_multiplier``); ``adamw_torch`` (the default) is the recipe's AdamW
    with ``--adam_beta1/2`` and ``--adam_epsilon``. An optimizer that lays out the parameters itself (GaLore, APOLLO,
    LOMO, layer-wise), or one that cannot be made here (a package missing), is a :class:`RunOptionError` naming
    ``--optim``."""
    name = str(getattr(args.optim, "value", args.optim))
    if any(part in name for part in OWN_PARAMETER_LAYOUT_NAMES):
        raise own_parameter_layout_error(name)
    try:
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    except (ValueError, ImportError) as error:
        detail = (str(error).strip().splitlines() or [""])[0]
        raise RunOptionError(f"--optim {name}: cannot be used here ({detail})") from None
    if any(key in kwargs for key in OWN_PARAMETER_LAYOUT):
        raise own_parameter_layout_error(name)
    groups = parameter_groups(model, args.weight_decay, layer_decay, args.learning_rate, head_lr_multiplier)
    return optimizer_cls(groups, **kwargs)


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the batches of all processes together (mmseg's SyncBN),
    on any device and backend (``torch.nn.SyncBatchNorm`` only runs on GPUs). The statistics are summed with the
    differentiable ``all_reduce`` of ``torch.distributed.nn``, so gradients flow to every process's inputs; with one
    process, in evaluation or outside a process group it is ``BatchNorm2d``. Same parameters and buffers, so saved
    weights load into ``BatchNorm2d``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(input)
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        values = input.float()  # statistics in float32 also under mixed precision
        count = all_reduce(torch.tensor(float(input.numel() // input.shape[1]), device=input.device))
        mean = all_reduce(values.sum(dims)) / count
        centred = values - mean.view(shape)
        variance = all_reduce((centred * centred).sum(dims)) / count  # biased, as BatchNorm normalises with
        output = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        output = output.to(input.dtype)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = variance * (count / max(float(count) - 1.0, 1.0))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return output


def convert_sync_batchnorm(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Replaces every ``BatchNorm2d`` with a batch norm synchronised across processes: ``torch.nn.SyncBatchNorm`` on
    CUDA / XPU, :class:`CrossProcessBatchNorm2d` elsewhere (CPU with gloo). Weights and buffers are kept."""
    if torch.device(device).type in ("cuda", "xpu"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(module: nn.Module) -> nn.Module:
        if type(module) is nn.BatchNorm2d:
            converted = CrossProcessBatchNorm2d(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            )
            converted.load_state_dict(module.state_dict())
            converted.train(module.training)
            return converted.to(module.weight.device if module.affine else "cpu")
        for name, child in module.named_children():
            setattr(module, name, convert(child))
        return module

    return convert(model)


def update_unpadded(metric, predictions: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> None:
    """Updates ``metric`` with each sample of a collated batch cropped to its labelled extent: :func:`pad_collate`
    pads the labels on the right and bottom with the ignore index, and the boundary metrics must see the image's own
    border there, not the batch's (rows and columns with no labelled pixel at the bottom and right are dropped; they
    count in no statistic)."""
    labelled = labels != ignore_index
    for prediction, label, mask in zip(predictions, labels, labelled):
        rows, columns = mask.any(1).nonzero(), mask.any(0).nonzero()
        if rows.numel() == 0:
            continue  # nothing labelled: counts in no statistic
        height, width = int(rows[-1]) + 1, int(columns[-1]) + 1
        metric.update(prediction[:height, :width], label[:height, :width])


class StreamingMeanIoU:
    """``compute_metrics`` for ``Trainer(batch_eval_metrics=True)``: upsample the logits to the label size, argmax
    (or take the class maps :meth:`SegmentationTrainer.prediction_step` returns at that size), accumulate (:class:`~hf_semseg.metrics.SegmentationMetrics`: mIoU, Boundary IoU, trimap mIoU); only the counts are
    kept between batches. ``padded_input_size``: for a model that pads its input, the size it pads an input of a
    given ``(height, width)`` to (``functools.partial(model_padded_size, model)``,
    :func:`~hf_semseg.inference.model_padded_size`); its logits are cropped to the input before the upsampling.
    Predictions ``(class maps, sample losses)`` (:meth:`SegmentationTrainer.prediction_step`'s) add the samples'
    mean loss to the result as ``loss`` (``eval_loss`` in Trainer's metrics)."""

    def __init__(
        self,
        num_labels: int,
        id2label: dict | None = None,
        ignore_index: int = IGNORE_INDEX,
        padded_input_size=None,
    ):
        self.metric = SegmentationMetrics(num_labels, ignore_index)
        self.id2label = id2label or {}
        self.padded_input_size = padded_input_size
        self.loss_sum, self.loss_count = 0.0, 0

    def __call__(self, eval_prediction, compute_result: bool = False) -> dict:
        logits = eval_prediction.predictions
        if isinstance(logits, (tuple, list)) and len(logits) == 2 and torch.as_tensor(logits[1]).dim() == 1:
            sample_losses = torch.as_tensor(logits[1]).double()
            self.loss_sum += sample_losses.sum().item()
            self.loss_count += sample_losses.numel()
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        labels = eval_prediction.label_ids
        logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
        # Trainer pads the labels of different processes to one size with -100 before gathering them
        labels = torch.where(labels == -100, torch.full_like(labels, self.metric.ignore_index), labels)
        if logits.dim() == 3 and not logits.is_floating_point():  # class maps at the labels' size already
            predictions = torch.where(logits == -100, torch.full_like(logits, self.metric.ignore_index), logits)
        else:
            # the labels have the (collated) input's size; a padding model's logits are cropped to it first
            input_size = labels.shape[-2:]
            padded_size = None if self.padded_input_size is None else self.padded_input_size(input_size)
            predictions = logits_to_size(logits.float(), input_size, input_size, padded_size).argmax(1)
        update_unpadded(self.metric, predictions.cpu(), labels.cpu(), self.metric.ignore_index)
        if not compute_result:
            return {}
        # no gather(): Trainer already gathers predictions and labels of all processes before calling this
        result = self.metric.compute()
        self.metric.reset()
        summary = summary_metrics(result, self.id2label)
        if self.loss_count:
            summary["loss"] = self.loss_sum / self.loss_count
        self.loss_sum, self.loss_count = 0.0, 0
        return summary


def json_number(value):
    """NaN (a class or boundary band absent from both prediction and labels) as JSON null, not the non-standard NaN
    that ``json.dumps`` writes; other numbers as floats, other values as they are."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    value = float(value)
    return None if math.isnan(value) else value


def json_metrics(metrics: dict) -> dict:
    """``metrics`` with every NaN as null (:func:`json_number`), for the ``eval_results.json`` the scripts write."""
    return {key: json_number(value) for key, value in metrics.items()}


def summary_metrics(result: dict, id2label: dict) -> dict:
    """The scalar metrics of :meth:`~hf_semseg.metrics.SegmentationMetrics.compute` and one ``iou_<class>`` per
    class, as the training scripts log them."""
    keys = ("mean_iou", "mean_accuracy", "overall_accuracy", "mean_boundary_iou", "trimap_mean_iou")
    metrics = {key: result[key] for key in keys}
    for index, value in enumerate(result["per_category_iou"]):
        metrics[f"iou_{id2label.get(index, index)}"] = float(value)
    return metrics


def write_predictions(model, dataset, image_column: str, output_dir: Path, count: int, scale) -> None:
    """Colour-coded predictions and overlays (PNG; the palette of the model's classes' dataset where known, else the
    demo palette: :func:`~hf_semseg.demo_data.palette_for`) of the first ``count`` images of ``dataset``, each
    keep-ratio resized to ``scale`` for the model and its logits upsampled back to the image size."""
    from .demo_data import colorize, palette_for
    from .transforms import keep_ratio_size, resize_pair

    if count <= 0:
        return
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    palette = palette_for(model.config.id2label)
    for index in range(min(count, len(dataset))):
        array = rgb_array(open_image(dataset[index][image_column], index, image_column))  # writable
        image = Image.fromarray(array)
        resized, _ = resize_pair(array, np.zeros(array.shape[:2], np.int64), keep_ratio_size(*array.shape[:2], *scale))
        with torch.no_grad():
            logits = model(pixel_values=normalise(resized)[None].to(device)).logits
        # a model that pads its input (SeMask-Mask2Former) has logits over the padding too: cropped first
        padded_size = model_padded_size(model, resized.shape[:2])
        logits = logits_to_size(logits.float(), resized.shape[:2], array.shape[:2], padded_size)
        mask = colorize(logits.argmax(1)[0].cpu().numpy(), palette)
        mask.save(output_dir / f"prediction_{index}.png")
        Image.blend(image, mask, alpha=0.5).save(output_dir / f"overlay_{index}.png")
    model.train(was_training)
