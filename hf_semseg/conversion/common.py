"""What every converter shares: the error type, reading a checkpoint safely, key accounting, what the registry can
tell about a checkpoint (its released variant, dataset and test pipeline), writing and checking the output folder,
the Hub upload and the command line.

A family converter (:mod:`.semask_fpn`, :mod:`.vwformer`, :mod:`.semask_mask2former`) maps the keys and infers the
config; it returns a :class:`Conversion`, and :func:`converter_main` does the rest: the image processor from the
test pipeline (:func:`resolve_test_pipeline`), ``save_pretrained`` of model and processor, the model card, the
reload check, the summary line and the upload. Every key of a checkpoint is accounted for or the conversion fails
naming the keys; the output folder holds ``model.safetensors``, ``config.json`` (with ``auto_map``), the model code,
``preprocessor_config.json`` and a model card, and loads with
``AutoModelForSemanticSegmentation.from_pretrained(out, trust_remote_code=True)``.
"""

import argparse
import math
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.modeling_semask_swin import relative_position_index
from ..variants import (
    dataset_labels,
    dataset_with_num_labels,
    datasets_with_labels,
    get_dataset,
    get_variant,
    image_processor_class,
    shared_variant_value,
)


class ConversionError(ValueError):
    """A conversion cannot be completed (the command line reports it as one ``error:`` line, exit status 1)."""


class CheckpointError(ConversionError):
    """The file is not a checkpoint of the converter's family, is corrupt, or has keys the converter cannot account
    for."""


# --------------------------------------------------------------------------------------------------------------------
# Reading a checkpoint
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointLayout:
    """How a training framework saves a checkpoint: the entry holding the state dict and the one holding metadata."""

    name: str
    weights_entry: str
    meta_entry: str | None
    article: str  # "an mmseg checkpoint", "a detectron2 checkpoint"


MMSEG = CheckpointLayout("mmseg", "state_dict", "meta", "an")
DETECTRON2 = CheckpointLayout("detectron2", "model", None, "a")
_LAYOUTS = (MMSEG, DETECTRON2)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def read_checkpoint(
    path: str | Path, layout: CheckpointLayout, kind: str, other_layout_hint: str = ""
) -> tuple[dict[str, torch.Tensor], dict]:
    """Reads a checkpoint file safely (``torch.load(weights_only=True)``): ``layout`` says where its state dict is
    (mmseg ``{'meta', 'state_dict'}``, detectron2 ``{'model', ...}``); a bare state dict is accepted too. ``kind``
    names the checkpoints the calling converter reads and ``other_layout_hint`` what to do with the other layout, for
    the error messages (which all name the file).

    Returns the state dict (a ``module.`` prefix from DDP on every key is stripped) and the metadata (empty when
    absent; optimizer and scheduler entries are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated / foreign files
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(error).__name__}: {error}); "
            "the file is corrupt, truncated, or not a torch.save file"
        ) from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path}: holds {_article(type(checkpoint).__name__)} {type(checkpoint).__name__}, not "
            f"{layout.article} {layout.name} checkpoint dict"
        )
    other = next(other for other in _LAYOUTS if other is not layout)
    if isinstance(checkpoint.get(layout.weights_entry), dict):
        state_dict = checkpoint[layout.weights_entry]
        meta = (checkpoint.get(layout.meta_entry) or {}) if layout.meta_entry else {}
    elif other.weights_entry in checkpoint:
        raise CheckpointError(
            f"{path}: {other.article} {other.name} checkpoint ({{'{other.weights_entry}': ...}}); this "
            f"converter reads {kind} checkpoints{other_layout_hint}"
        )
    elif checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        state_dict, meta = checkpoint, {}
    else:
        raise CheckpointError(
            f"{path}: no '{layout.weights_entry}' entry (top-level keys: {sorted(map(str, checkpoint))[:10]})"
        )
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {not_tensors[:10]}")
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return dict(state_dict), dict(meta)


@contextmanager
def errors_name_the_file(path: str | Path) -> Iterator[None]:
    """Prefixes the message of a :class:`CheckpointError` raised inside with the checkpoint's path."""
    try:
        yield
    except CheckpointError as error:
        if str(error).startswith(f"{path}:"):
            raise
        raise CheckpointError(f"{path}: {error}") from error


# --------------------------------------------------------------------------------------------------------------------
# Reading the tensors
# --------------------------------------------------------------------------------------------------------------------


def tensor_shape(state_dict: dict[str, torch.Tensor], key: str, kind: str) -> tuple[int, ...]:
    """The shape of ``state_dict[key]``; a :class:`CheckpointError` naming the key when it is missing (``kind``: the
    checkpoints the converter reads)."""
    if key not in state_dict:
        raise CheckpointError(f"missing key {key!r}: not a {kind} checkpoint (or a truncated state dict)")
    return tuple(state_dict[key].shape)


def indices(state_dict: dict, pattern: str) -> list[int]:
    """Sorted distinct values of the first group of ``pattern`` (``re.match``) over the keys."""
    return sorted({int(match.group(1)) for key in state_dict if (match := re.match(pattern, key))})


def window_size_from_table(rows: int, key: str) -> int:
    """The window size ``w`` of a Swin ``relative_position_bias_table`` with ``rows = (2w - 1)^2`` rows."""
    window_size = (math.isqrt(rows) + 1) // 2
    if (2 * window_size - 1) ** 2 != rows:
        raise CheckpointError(f"{key} has {rows} rows, not (2w-1)^2 for any window size w")
    return window_size


def check_relative_position_index(key: str, tensor: torch.Tensor) -> None:
    """The original's persistent ``relative_position_index`` buffer must be Swin's index of a square window (the HF
    model rebuilds it; a tensor on the meta device has no values to check)."""
    if tensor.device.type == "meta":
        return
    window = math.isqrt(tensor.shape[0]) if tensor.ndim == 2 else 0  # (w*w, w*w)
    if (
        tensor.ndim != 2
        or window * window != tensor.shape[0]
        or not torch.equal(tensor.long(), relative_position_index(window).view(tensor.shape).long())
    ):
        raise CheckpointError(
            f"{key}: not the standard Swin relative position index of a square window (shape {tuple(tensor.shape)})"
        )


def find_rename(key: str, table: list[tuple[str, str | None]]) -> tuple[bool, str | None]:
    """Applies the first rule of ``table`` (``(pattern, template)``, ``re.fullmatch``) that matches ``key``:
    ``(True, new key)``; ``(True, None)`` for a rule whose template is None (a key the converter handles by tensor
    surgery); ``(False, None)`` when no rule matches."""
    for pattern, template in table:
        match = re.fullmatch(pattern, key)
        if match:
            return True, (match.expand(template) if template is not None else None)
    return False, None


QKV_NAMES = ("q_proj", "k_proj", "v_proj")


def split_fused_qkv(key: str, tensor: torch.Tensor, prefix: str, kind: str, names=QKV_NAMES) -> dict[str, torch.Tensor]:
    """The rows (or entries) of a fused ``[q; k; v]`` projection ``key`` as ``{prefix}.{name}.{kind}`` for the three
    ``names``, in that order."""
    if tensor.shape[0] % 3:
        raise CheckpointError(f"{key}: {tuple(tensor.shape)} is not three stacked (q, k, v) projections")
    return {f"{prefix}.{name}.{kind}": part for name, part in zip(names, tensor.chunk(3, dim=0))}


def raise_on_unmapped(unmapped: list[str]) -> None:
    """A :class:`CheckpointError` naming the keys without a conversion rule (the first 20), if there are any."""
    if unmapped:
        more = f" and {len(unmapped) - 20} more" if len(unmapped) > 20 else ""
        raise CheckpointError(f"{len(unmapped)} keys have no conversion rule: {unmapped[:20]}{more}")


def check_against_model(converted: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor]) -> None:
    """Every converted key must exist in the model with the same shape, and every model key must be provided."""
    missing = sorted(set(model_state) - set(converted))
    unexpected = sorted(set(converted) - set(model_state))
    mismatched = [
        f"{key}: checkpoint {tuple(converted[key].shape)} vs model {tuple(model_state[key].shape)}"
        for key in sorted(set(converted) & set(model_state))
        if tuple(converted[key].shape) != tuple(model_state[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {missing}")
    if unexpected:
        problems.append(f"not in the model: {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise CheckpointError("; ".join(problems))


def load_converted(model_class, config, converted: dict[str, torch.Tensor]):
    """``model_class(config)`` with the converted tensors (checked with :func:`check_against_model`; floating tensors
    as float32), in eval mode."""
    model = model_class(config)
    check_against_model(converted, model.state_dict())
    model.load_state_dict(
        {key: value.float() if value.is_floating_point() else value for key, value in converted.items()}, strict=True
    )
    return model.eval()


# --------------------------------------------------------------------------------------------------------------------
# mmseg metadata
# --------------------------------------------------------------------------------------------------------------------


def config_text_value(meta: dict, key: str, value_pattern: str) -> str | None:
    """First value of ``key`` in the mmseg config text of ``meta``; the text is either mmcv's ``key=value`` style or
    a dict repr (``'key': value``)."""
    text = meta.get("config")
    if not isinstance(text, str):
        return None
    match = re.search(rf"['\"]?\b{key}['\"]?\s*[=:]\s*({value_pattern})", text)
    return match.group(1) if match else None


def config_text_float(meta: dict, key: str, default: float) -> float:
    """A number of the mmseg config text (:func:`config_text_value`), ``default`` when absent."""
    value = config_text_value(meta, key, r"[0-9.eE+-]+")
    return float(value) if value is not None else default


def config_text_test_pipeline(meta: dict) -> dict:
    """What the mmseg config text in ``meta`` says about the test pipeline: ``test_scale`` ``(longest, shortest)``
    and ``size_divisor`` (``ResizeToMultiple``; None when the text has a scale but no such step) when it has an
    ``img_scale``, ``reduce_labels`` when it has ``reduce_zero_label``. Empty without config text."""
    found = {}
    scale = config_text_value(meta, "img_scale", r"\(\d+\s*,\s*\d+\)")
    if scale:
        edges = [int(value) for value in scale.strip("()").split(",")]
        found["test_scale"] = (max(edges), min(edges))
        text = meta["config"]
        divisor = re.search(r"ResizeToMultiple['\"]?,\s*['\"]?size_divisor['\"]?\s*[=:]\s*(\d+)", text)
        found["size_divisor"] = int(divisor.group(1)) if divisor else None
    reduce = config_text_value(meta, "reduce_zero_label", "True|False")
    if reduce:
        found["reduce_labels"] = reduce == "True"
    return found


def checkpoint_id2label(class_names, num_labels: int) -> dict[int, str]:
    """The class names saved with the checkpoint (mmseg ``meta['CLASSES']``) when there is one per class, otherwise
    ``class_0``, ``class_1``, ... (:func:`name_classes` later gives the dataset's names where the dataset is known)."""
    if class_names is not None and len(class_names) == num_labels:
        return {index: str(name) for index, name in enumerate(class_names)}
    return {index: f"class_{index}" for index in range(num_labels)}


# --------------------------------------------------------------------------------------------------------------------
# What the registry tells about a conversion
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Conversion:
    """A converted checkpoint and what the converter learned about it.

    Attributes:
        path: the original checkpoint file.
        model: the converted model (eval mode).
        variant: the registered variant the checkpoint is: named by the user (``variant_given``) or matched by its
            exact architecture (:func:`hf_semseg.variants.find_variant`); None when neither.
        variant_given: whether ``variant`` was named by the user (``--variant``).
        meta: the mmseg ``meta`` (config text, ``CLASSES``); empty for detectron2 checkpoints.
        state_dict: the original tensors (after the loader's renames) where the caller wants them back.
        has_class_names: whether the checkpoint named its classes (otherwise :func:`name_classes` names them after
            the dataset, when it is known).
        processor_kwargs: family-specific image processor arguments read from the checkpoint (e.g. pixel statistics).
    """

    path: Path
    model: object
    variant: str | None = None
    variant_given: bool = False
    meta: dict = field(default_factory=dict)
    state_dict: dict = field(default_factory=dict)
    has_class_names: bool = False
    processor_kwargs: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.model.config.model_type

    @property
    def num_labels(self) -> int:
        return self.model.config.num_labels


def build_conversion(
    path: str | Path,
    model_class,
    infer: Callable[[], tuple[object, str | None]],
    convert_keys: Callable[[], dict[str, torch.Tensor]],
    class_names=None,
    **fields,
) -> Conversion:
    """The steps every converter ends with: ``infer()`` -> ``(config, variant)`` and ``convert_keys()`` -> the
    renamed tensors (their :class:`CheckpointError` name the file), the model loaded with them
    (:func:`load_converted`), the :class:`Conversion` with ``fields``, and the classes named after the dataset when
    ``class_names`` (saved with the checkpoint) are not one per class."""
    with errors_name_the_file(path):
        config, variant = infer()
        model = load_converted(model_class, config, convert_keys())
    has_class_names = class_names is not None and len(class_names) == config.num_labels
    conversion = Conversion(Path(path), model, variant=variant, has_class_names=has_class_names, **fields)
    name_classes(conversion)
    return conversion


def conversion_dataset(conversion: Conversion) -> tuple[str | None, str]:
    """``(dataset key, how it is known)``: the variant's dataset, else the one dataset of :data:`DATASETS` with the
    checkpoint's number of classes (a guess), else ``(None, "")``."""
    if conversion.variant is not None:
        return get_variant(conversion.variant).dataset, "variant"
    guessed = dataset_with_num_labels(conversion.num_labels)
    if guessed is not None:
        return guessed, f"guessed from the {conversion.num_labels} classes"
    return None, ""


def name_classes(conversion: Conversion) -> None:
    """Gives the model the class names of its dataset (:func:`conversion_dataset`) when the checkpoint has none."""
    dataset, _ = conversion_dataset(conversion)
    if conversion.has_class_names or dataset not in datasets_with_labels():
        return
    id2label, _ = dataset_labels(dataset)
    config = conversion.model.config
    config.id2label, config.label2id = id2label, {label: index for index, label in id2label.items()}
    if hasattr(config, "sync_backbone_labels"):  # SeMask Mask2Former: the backbone's semantic layers share them
        config.sync_backbone_labels()


_PIPELINE_FIELDS = ("test_scale", "size_divisor", "reduce_labels")


def _variant_pipeline(name: str) -> dict:
    """The test pipeline of the registered variant ``name``."""
    variant = get_variant(name)
    return {field_name: getattr(variant, field_name) for field_name in _PIPELINE_FIELDS}


def _dataset_pipeline(family: str, dataset: str) -> dict:
    """What the registry tells about the test pipeline of an unregistered ``family`` model trained on ``dataset``:
    the values every registered variant of the family on that dataset shares, else the dataset's."""
    info = get_dataset(dataset)
    return {
        "test_scale": shared_variant_value(family, dataset, "test_scale") or info.test_scale,
        "size_divisor": shared_variant_value(family, dataset, "size_divisor"),
        "reduce_labels": info.reduce_labels,
    }


def resolve_test_pipeline(conversion: Conversion) -> dict:
    """The test pipeline of the converted model (``test_scale``, ``size_divisor``, ``reduce_labels``), each value from
    the first source that knows it: the variant named by the user; the checkpoint's mmseg config text; the variant
    matched by architecture; the family's registered variants on the dataset guessed from the class count (else that
    dataset's values). A value no source knows is left out (the image processor's default)."""
    sources = []
    if conversion.variant is not None and conversion.variant_given:
        sources.append(_variant_pipeline(conversion.variant))
    sources.append(config_text_test_pipeline(conversion.meta))
    if conversion.variant is not None and not conversion.variant_given:
        sources.append(_variant_pipeline(conversion.variant))
    dataset, _ = conversion_dataset(conversion)
    if conversion.variant is None and dataset is not None:
        sources.append(_dataset_pipeline(conversion.family, dataset))
    pipeline = {}
    for name in _PIPELINE_FIELDS:
        source = next((source for source in sources if name in source), None)
        if source is not None:
            pipeline[name] = source[name]
    return pipeline


def build_image_processor(conversion: Conversion):
    """The image processor of the converted model: its family's class (:func:`image_processor_class`) with the
    :func:`resolve_test_pipeline` and the family's extra arguments."""
    pipeline = resolve_test_pipeline(conversion)
    kwargs = dict(conversion.processor_kwargs)
    if "test_scale" in pipeline:
        longest, shortest = pipeline["test_scale"]
        kwargs["size"] = {"longest_edge": longest, "shortest_edge": shortest}
    if pipeline.get("size_divisor") is not None:
        kwargs["size_divisor"] = pipeline["size_divisor"]
    if "reduce_labels" in pipeline:
        kwargs["do_reduce_labels"] = pipeline["reduce_labels"]
    return image_processor_class(conversion.family)(**kwargs)


def describe_provenance(conversion: Conversion) -> str:
    """Which released variant the checkpoint is and how that is known, and its dataset (for the summary line)."""
    if conversion.variant is not None and conversion.variant_given:
        variant = f"released variant {conversion.variant} (--variant; the architecture matches)"
    elif conversion.variant is not None:
        variant = f"released variant {conversion.variant} (matched by its architecture)"
    else:
        variant = "no released variant has this architecture"
    dataset, how = conversion_dataset(conversion)
    if dataset is None:
        return f"{variant}; dataset unknown"
    return f"{variant}; dataset {get_dataset(dataset).name}" + (f" ({how})" if how != "variant" else "")


# --------------------------------------------------------------------------------------------------------------------
# The output folder
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReloadCheck:
    """How the saved folder is checked against the converted model: logits on a seeded random input of
    ``input_size`` must agree to ``tolerance`` relative to the largest logit (at least 1): 0 demands equality."""

    input_size: tuple[int, int] = (64, 96)
    tolerance: float = 0.0


def check_reload(model, output_dir: Path, check: ReloadCheck) -> None:
    """Loads the saved folder and compares its logits with the converted model's (:class:`ReloadCheck`)."""
    reloaded = type(model).from_pretrained(output_dir).eval()
    pixel_values = torch.randn(1, 3, *check.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values).logits
        difference = (reloaded(pixel_values).logits - expected).abs().max().item()
    limit = check.tolerance * max(1.0, expected.abs().max().item())
    if not difference <= limit:  # also NaN
        raise ConversionError(
            f"the saved model in {output_dir} differs from the converted one (max abs diff {difference}, allowed "
            f"{limit})"
        )


def write_output_folder(
    conversion: Conversion, output_dir: str | Path, card_template: Path, card_fields: Callable, check: ReloadCheck
) -> dict:
    """Saves the model (``config.json`` with ``auto_map``, the model code, ``model.safetensors``) and its image
    processor into ``output_dir``, renders the model card ``card_template`` with ``card_fields(conversion,
    processor)``, and checks that the folder reproduces the converted model (:func:`check_reload`). Returns the card
    fields."""
    from .model_card import render_card

    output_dir = Path(output_dir)
    processor = build_image_processor(conversion)
    conversion.model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    fields = card_fields(conversion, processor)
    render_card(card_template, output_dir, fields)
    check_reload(conversion.model, output_dir, check)
    return fields


def push_to_hub(output_dir: str | Path, repo_id: str) -> None:
    """Uploads the folder to the Hub repository ``repo_id`` (created when absent)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=str(output_dir), repo_id=repo_id)


# --------------------------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Converter:
    """A family converter as the command line drives it.

    Attributes:
        family: ``model_type`` of the converted models (the ``--variant`` choices are its registered variants).
        layout: the checkpoint layout it reads (for the help text).
        convert: ``convert(path)`` or, with ``accepts_variant``, ``convert(path, variant)`` -> :class:`Conversion`.
        card_fields: ``card_fields(conversion, processor)`` -> the model card template's fields.
        summary: the converted architecture in one line, a ``str.format`` template of the card fields.
        reload_check: how the saved folder is compared with the converted model (default: equal logits).
        accepts_variant: whether the command line has ``--variant`` (settings that are not in the weights).
    """

    family: str
    layout: CheckpointLayout
    convert: Callable[..., Conversion]
    card_fields: Callable[[Conversion, object], dict]
    summary: str
    reload_check: ReloadCheck = ReloadCheck()
    accepts_variant: bool = False


def parse_converter_args(converter: Converter, description: str, argv=None) -> argparse.Namespace:
    """``--checkpoint_path``, ``--output_dir``, ``--push_to_hub`` (and ``--variant`` where the family needs it)."""
    from ..variants import list_variants

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint_path", required=True, help=f"original {converter.layout.name} checkpoint (.pth)")
    parser.add_argument("--output_dir", required=True, help="folder to write the converted model to")
    if converter.accepts_variant:
        parser.add_argument(
            "--variant",
            choices=sorted(list_variants(converter.family)),
            default=None,
            help="released variant the checkpoint comes from (settings that are not in the weights, when the "
            "checkpoint has no config text)",
        )
    parser.add_argument("--push_to_hub", metavar="REPO_ID", default=None, help="also upload to this Hub repository")
    return parser.parse_args(argv)


def converter_main(converter: Converter, card_template: Path, description: str, argv=None) -> int:
    """The command line of a converter script: converts ``--checkpoint_path``, writes ``--output_dir``
    (:func:`write_output_folder`), prints the summary line and uploads with ``--push_to_hub``. A
    :class:`ConversionError` (a bad checkpoint, a failed reload check) is one ``error: ...`` line on stderr and exit
    status 1."""
    args = parse_converter_args(converter, description, argv)
    try:
        variant_args = (args.variant,) if converter.accepts_variant else ()
        conversion = converter.convert(args.checkpoint_path, *variant_args)
        fields = write_output_folder(
            conversion, args.output_dir, card_template, converter.card_fields, converter.reload_check
        )
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"converted {args.checkpoint_path}: {converter.summary.format_map(fields)}, {fields['parameters']} "
        f"parameters; {describe_provenance(conversion)} -> {args.output_dir}"
    )
    if args.push_to_hub:
        push_to_hub(args.output_dir, args.push_to_hub)
        print(f"pushed to {args.push_to_hub}")
    return 0
