"""What every converter shares: the error type, reading a checkpoint safely, key accounting, what the registry can
tell about a checkpoint (its released variant, dataset and test pipeline), writing and checking the output folder,
the Hub upload and the command line.

A family converter (:mod:`.semask_fpn`, :mod:`.vwformer`, :mod:`.semask_mask2former`) maps the keys and infers the
config; it returns a :class:`Conversion`, and :func:`converter_main` does the rest: the image processor from the
test pipeline (:func:`resolve_test_pipeline`), ``save_pretrained`` of model and processor, the model card, the
reload check in a fresh process (:func:`check_reload`, one tolerance for every family), the summary line and the
upload; the output folder is written completely or not at all, and the output location and the Hub access are
checked before the checkpoint is read. Every key of a checkpoint is accounted for or the conversion fails
naming the keys; the output folder holds ``model.safetensors``, ``config.json`` (with ``auto_map``), the model code,
``preprocessor_config.json`` and a model card, and loads with
``AutoModelForSemanticSegmentation.from_pretrained(out, trust_remote_code=True)``.
"""

import argparse
import errno
import math
import os
import pickle
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..hub import HubAccessError, check_hub_access
from ..models.modeling_semask_swin import relative_position_index
from ..variants import (
    dataset_labels,
    datasets_with_labels,
    find_variant,
    get_dataset,
    get_variant,
    image_processor_class,
    list_variants,
    variant_has_weights,
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


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_failure(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line: the safe unpickler's own reason where it gave one
    (torch wraps it in a paragraph advising an unsafe load, with terminal escape codes), else the error's first line;
    and what that means for the file."""
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(error))
    if detail is None:
        return f"{type(error).__name__}: {first_line(error)}; the file is corrupt, truncated, or not a torch.save file"
    unsupported = re.match(r"Unsupported global: GLOBAL (\S+)", detail.group(1))
    if unsupported is not None:
        return (
            f"it holds a {unsupported.group(1)} object; the converters read tensors and plain values only, never "
            "arbitrary objects (torch.load weights_only=True): save the state dict alone"
        )
    return f"{detail.group(1).strip()}; the file is corrupt, truncated, or not a torch.save file"


class RefusedGlobal(pickle.UnpicklingError):
    """A plain pickle references a global (a class or function) the restricted reader does not load."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (the raw data of a numpy array): latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal(f"_codecs.encode (with {encoding!r}, not latin1)")
    return text.encode("latin1")


def numpy_pickle_globals() -> dict[tuple[str, str], object]:
    """The globals a pickle of numpy arrays references, and nothing else: numpy's array and scalar reconstruction
    functions (under their numpy 1 and numpy 2 module names), ``numpy.ndarray``, ``numpy.dtype``, and the latin-1
    ``_codecs.encode`` of protocol 2. Each builds an array, a dtype or bytes from plain values; none runs code a
    file chooses."""
    import numpy

    core = numpy._core if hasattr(numpy, "_core") else numpy.core
    allowed = {("numpy", "ndarray"): numpy.ndarray, ("numpy", "dtype"): numpy.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = core.numeric._frombuffer
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


class NumpyUnpickler(pickle.Unpickler):
    """Reads a plain pickle (a detectron2 model-zoo ``.pkl``) of plain values and numpy arrays: ``find_class`` gives
    only :func:`numpy_pickle_globals` and refuses any other global by name (:class:`RefusedGlobal`) before it is
    imported, so nothing the file names is run. ``latin1``: how detectron2 reads the Python 2 pickles of the model
    zoo."""

    def __init__(self, file):
        super().__init__(file, encoding="latin1")
        self._allowed = numpy_pickle_globals()

    def find_class(self, module: str, name: str):
        if (module, name) not in self._allowed:
            raise RefusedGlobal(f"{module}.{name}")
        return self._allowed[(module, name)]


def _numpy_safe_globals() -> list:
    """What ``torch.load(weights_only=True)`` must also allow to read numpy arrays saved by ``torch.save``: the
    reconstruction functions, and the dtype classes its unpickler checks when it sets a dtype's state (numeric and
    boolean dtypes; object arrays are refused later, by name)."""
    import numpy

    objects = [value for (module, _), value in numpy_pickle_globals().items() if module != "_codecs"]
    codes = numpy.typecodes["AllInteger"] + numpy.typecodes["AllFloat"] + "?O"
    return objects + [type(numpy.dtype(code)) for code in codes]


def _numpy_array_types() -> tuple[type, ...]:
    """The numpy types a state dict read from a pickle may hold as weights (:func:`numpy_arrays_as_tensors`)."""
    import numpy

    return numpy.ndarray, numpy.generic


def _read_plain_pickle(path: Path):
    """The object a plain (not ``torch.save``) pickle file holds (:class:`NumpyUnpickler`); a :class:`RefusedGlobal`
    when it references anything but numpy arrays, any other error when it is not such a pickle."""
    with open(path, "rb") as file:
        return NumpyUnpickler(file).load()


def _load_checkpoint_file(path: Path):
    """``torch.load(weights_only=True)`` of ``path``, numpy arrays allowed; a file torch cannot read that is not a
    zip archive (a detectron2 model-zoo ``.pkl``) is read as a plain pickle of numpy arrays
    (:func:`_read_plain_pickle`). torch's warnings are shown only when torch read the file."""
    with warnings.catch_warnings(record=True) as caught:  # shown only when the file is read: else the error says it
        warnings.simplefilter("always")
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for truncated / foreign files
            torch_error = error
        else:
            torch_error = None
    if torch_error is None:
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return checkpoint
    reason = load_failure(torch_error)
    if not zipfile.is_zipfile(path):
        try:
            checkpoint = _read_plain_pickle(path)
        except RefusedGlobal as refused:
            raise CheckpointError(
                f"{path}: cannot be read as a PyTorch checkpoint (a plain pickle referencing the global "
                f"{refused.name}, which is not loaded: the converters read tensors, numpy arrays and plain values "
                "only)"
            ) from torch_error
        except Exception:  # not a plain pickle either: torch's reason is the one to give
            checkpoint = None
        if isinstance(checkpoint, dict):
            return checkpoint
    raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({reason})") from torch_error


def numpy_arrays_as_tensors(state_dict: dict) -> dict:
    """``state_dict`` with its numpy arrays (and numpy scalars) as tensors of the same dtype (``torch.from_numpy``;
    a non-native byte order is swapped, a read-only array copied). An array of a dtype torch has no tensor for (object,
    strings) is a :class:`CheckpointError` naming the keys and dtypes."""
    import numpy

    converted, refused = {}, []
    for key, value in state_dict.items():
        if isinstance(value, (numpy.ndarray, numpy.generic)):
            array = numpy.asarray(value)
            if array.dtype.hasobject or array.dtype.kind not in "biuf":
                refused.append(f"{key} (numpy {array.dtype})")
                continue
            if not array.dtype.isnative:
                array = array.astype(array.dtype.newbyteorder("="))
            value = torch.from_numpy(array if array.flags.writeable else array.copy())
        converted[key] = value
    if refused:
        raise CheckpointError(f"numpy arrays no tensor can hold: {refused[:10]}; expected numeric arrays (the weights)")
    return converted


#: the ``stat()`` errors that mean nothing is at a path (pathlib's ``exists`` / ``is_dir`` / ``is_file`` answer False)
_ABSENT_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})


def check_accessible(path: str | Path, what: str, expected: str, error: type = ConversionError) -> None:
    """Refuses ``path`` when its status cannot be read for a reason other than its absence: a name longer than the
    file system takes (ENAMETOOLONG), a folder on the way the user cannot enter (EACCES). pathlib's ``exists`` /
    ``is_dir`` / ``is_file`` raise these as a bare ``OSError`` on Python 3.11 (a traceback) and call the path absent
    on later versions (a wrong reason), so the checks that use them call this first: ``error`` names ``what``, the
    system's reason and ``expected``. A symbolic link and what it points to are both checked; an absent path passes
    (the caller says it is absent)."""
    for follow_symlinks in (False, True):
        try:
            os.stat(path, follow_symlinks=follow_symlinks)
        except ValueError:  # a NUL byte in the name: absent for pathlib too
            return
        except OSError as failure:
            if failure.errno in _ABSENT_ERRNOS:
                return
            reason = failure.strerror or first_line(failure)
            raise error(f"{what}: cannot be accessed ({reason}), expected {expected}") from failure


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
    check_accessible(path, str(path), "a checkpoint file you can read", CheckpointError)
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, not a checkpoint file")
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path}: not a regular file (a device, pipe or socket), expected a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    checkpoint = _load_checkpoint_file(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path}: holds {_article(type(checkpoint).__name__)} {type(checkpoint).__name__}, not "
            f"{layout.article} {layout.name} checkpoint dict"
        )
    other = next(other for other in _LAYOUTS if other is not layout)
    if isinstance(checkpoint.get(layout.weights_entry), dict):
        state_dict = checkpoint[layout.weights_entry]
        meta = checkpoint.get(layout.meta_entry) if layout.meta_entry else None
        if meta is not None:
            with errors_name_the_file(path):
                check_mmseg_meta(meta)
    elif other.weights_entry in checkpoint:
        raise CheckpointError(
            f"{path}: {other.article} {other.name} checkpoint ({{'{other.weights_entry}': ...}}); this "
            f"converter reads {kind} checkpoints{other_layout_hint}"
        )
    elif checkpoint and all(isinstance(value, (torch.Tensor, *_numpy_array_types())) for value in checkpoint.values()):
        state_dict, meta = checkpoint, {}
    elif layout.weights_entry in checkpoint:
        value = checkpoint[layout.weights_entry]
        raise CheckpointError(
            f"{path}: its '{layout.weights_entry}' entry is {_article(type(value).__name__)} {type(value).__name__} "
            f"({_short_repr(value)}), expected a dict of tensors (the state dict)"
        )
    else:
        raise CheckpointError(
            f"{path}: no '{layout.weights_entry}' entry (top-level keys: {sorted(map(str, checkpoint))[:10]})"
        )
    not_strings = [key for key in state_dict if not isinstance(key, str)]
    if not_strings:
        raise CheckpointError(
            f"{path}: state dict keys that are not strings: {not_strings[:10]!r} (a state dict maps parameter names "
            "to tensors)"
        )
    with errors_name_the_file(path):
        state_dict = numpy_arrays_as_tensors(state_dict)
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {not_tensors[:10]}")
    not_weights = [
        f"{key} ({reason})" for key, tensor in state_dict.items() if (reason := unconvertible_tensor(tensor))
    ]
    if not_weights:
        more = f" and {len(not_weights) - 10} more" if len(not_weights) > 10 else ""
        raise CheckpointError(
            f"{path}: tensors no converted model can hold: {not_weights[:10]}{more}; expected dense floating-point "
            "weights (16, 32 or 64 bits) and integer buffers, with their values"
        )
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    with errors_name_the_file(path):
        check_finite(state_dict)
    return dict(state_dict), dict(meta or {})


def unconvertible_tensor(tensor: torch.Tensor) -> str | None:
    """Why a checkpoint tensor cannot become a weight or buffer of a converted model (its dtype, layout or device),
    None when it can: the converters check and copy dense tensors with values, as float32 weights or integer
    buffers (an 8-bit float reached torch's "not implemented" in the finiteness check, a tensor saved from the meta
    device the model's ``load_state_dict``)."""
    if tensor.is_complex() or tensor.dtype == torch.bool:
        return f"{tensor.dtype}"
    if tensor.is_quantized:
        return f"quantized {tensor.dtype}"
    if tensor.is_floating_point() and tensor.dtype.itemsize < 2:
        return f"{tensor.dtype}, an 8-bit float"
    if tensor.layout != torch.strided:
        return f"{tensor.layout} layout"
    if tensor.device.type == "meta":
        return "meta device: no values"
    return None


#: what the converters reading one layout tell of a checkpoint of the other layout (:func:`read_checkpoint`)
MMSEG_CONVERTERS_HINT = (
    " - convert mmseg checkpoints with convert_semask_fpn_to_hf.py (SeMask-FPN) or convert_vwformer_to_hf.py (VWFormer)"
)
DETECTRON2_CONVERTERS_HINT = (
    " - convert detectron2 checkpoints with convert_semask_d2_to_hf.py (SeMask MaskFormer / Mask2Former) or "
    "convert_vwformer_d2_to_hf.py (VW-MaskFormer / VW-Mask2Former)"
)


#: what each entry of an mmseg ``meta`` that a converter reads must be (the others, e.g. ``PALETTE``, are not read)
_META_ENTRIES = {
    "CLASSES": "a list of class names",
    "config": "the run's config text (a string)",
}


def check_mmseg_meta(meta) -> None:
    """A :class:`CheckpointError` naming the entry unless ``meta`` is a dict whose ``CLASSES`` (class names) and
    ``config`` (the config text), the entries the converters read, are of the types mmseg saves (or None)."""
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"meta is {_article(type(meta).__name__)} {type(meta).__name__} ({_short_repr(meta)}), expected a dict "
            "(mmseg's checkpoint metadata: config text, CLASSES, PALETTE)"
        )
    for name, expected in _META_ENTRIES.items():
        value = meta.get(name)
        if value is None:
            continue
        if name == "CLASSES":
            valid = isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)
        else:
            valid = isinstance(value, str)
        if not valid:
            raise CheckpointError(f"meta[{name!r}] = {_short_repr(value)}, expected {expected}")


def _short_repr(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def check_finite(state_dict: dict[str, torch.Tensor]) -> None:
    """A :class:`CheckpointError` naming the floating tensors holding NaN or infinite values (the first 10 and a
    count), if there are any; tensors on the meta device have no values to check."""
    bad = [
        key
        for key, tensor in state_dict.items()
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise CheckpointError(
            f"non-finite values (NaN or inf) in {len(bad)} tensor{'s' if len(bad) > 1 else ''}: {bad[:10]}{more}; "
            "the checkpoint is corrupt or comes from a diverged training run"
        )


def expect_shape(key: str, tensor: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
    """A :class:`CheckpointError` naming the original ``key``, its shape and the ``expected`` one (``what``: the
    tensor the converter expects there) unless ``tensor`` has that shape."""
    if tuple(tensor.shape) != tuple(expected):
        raise CheckpointError(f"{key}: shape {tuple(tensor.shape)}, expected {tuple(expected)} ({what})")


def check_transformers_swin_embedding(
    state_dict: dict[str, torch.Tensor], ape: str, patch_norm: str, family: str
) -> None:
    """A :class:`CheckpointError` naming the original's option (``ape`` / ``patch_norm``: how the run's config sets
    it) when a Swin checkpoint converted onto transformers' Swin has an absolute position embedding
    (``backbone.absolute_pos_embed``) or no patch-embedding LayerNorm (no ``backbone.patch_embed.norm.*``): no released
    ``family`` model has either, and transformers' Swin cannot compute them as the originals do."""
    if any(key.startswith("backbone.absolute_pos_embed") for key in state_dict):
        raise CheckpointError(
            f"backbone.absolute_pos_embed: a Swin with an absolute position embedding ({ape}), which no released "
            f"{family} has; the converted model's Swin (transformers') cannot represent the original's"
        )
    if not any(key.startswith("backbone.patch_embed.norm.") for key in state_dict):
        raise CheckpointError(
            "no backbone.patch_embed.norm.* keys: a Swin without the patch embedding's LayerNorm "
            f"({patch_norm}), which no released {family} has; the converted model's Swin (transformers') always "
            "applies it"
        )


def check_no_detr_encoder(state_dict: dict[str, torch.Tensor], family: str) -> None:
    """A :class:`CheckpointError` naming MODEL.MASK_FORMER.ENC_LAYERS when a MaskFormer-style predictor has DETR
    encoder layers over res5 (``sem_seg_head.predictor.transformer.encoder.*``): no released ``family`` model has any
    (ENC_LAYERS 0), and the converted decoder (transformers' MaskFormer DETR decoder) has none."""
    if any(key.startswith("sem_seg_head.predictor.transformer.encoder.") for key in state_dict):
        raise CheckpointError(
            "sem_seg_head.predictor.transformer.encoder.* keys: a DETR encoder over res5 (MODEL.MASK_FORMER."
            f"ENC_LAYERS > 0), which no released {family} has (ENC_LAYERS 0); the converted model's decoder "
            "(transformers' MaskFormer) has none"
        )


def tensor_shape(state_dict: dict[str, torch.Tensor], key: str, kind: str, ndim: int | None = None) -> tuple[int, ...]:
    """The shape of ``state_dict[key]``; a :class:`CheckpointError` naming the key when it is missing (``kind``: the
    checkpoints the converter reads) or, with ``ndim``, when it has another number of dimensions."""
    if key not in state_dict:
        raise CheckpointError(f"missing key {key!r}: not a {kind} checkpoint (or a truncated state dict)")
    shape = tuple(state_dict[key].shape)
    if ndim is not None and len(shape) != ndim:
        raise CheckpointError(f"{key}: shape {shape}, expected {ndim} dimensions")
    if 0 in shape:  # the sizes read from it (channels, kernel, heads) would be 0
        raise CheckpointError(f"{key}: shape {shape}, an empty tensor (every size read from it must be positive)")
    return shape


def check_attention_heads(what: str, channels: int, heads: int, source: str, error: type = None) -> None:
    """A :class:`CheckpointError` (or ``error``) naming ``what`` (a Swin stage, a decoder), its ``channels`` and the
    number of ``heads`` unless the heads split the channels evenly; ``source`` says where the heads come from (the
    tensors that show them, or the config that sets them)."""
    if heads <= 0 or channels % heads:
        raise (error or CheckpointError)(
            f"{what}: {channels} channels are not divisible by {heads} attention heads ({source}); every head takes "
            "an equal share of the channels"
        )


def check_swin_heads(embed_dim: int, num_heads: list[int], source: str) -> None:
    """Each Swin stage ``i`` (``embed_dim * 2**i`` channels) must split evenly into its ``num_heads[i]``
    (:func:`check_attention_heads`)."""
    for stage, heads in enumerate(num_heads):
        check_attention_heads(f"Swin stage {stage}", embed_dim * 2**stage, heads, source)


def check_four_stages(stages: list[int], keys: str) -> None:
    """Every converted model's head takes the four stage outputs of its backbone (strides 4, 8, 16, 32): a
    :class:`CheckpointError` naming the stage indices found under ``keys`` (``"backbone.layers.N.*"``) unless they are
    0, 1, 2, 3."""
    if stages != [0, 1, 2, 3]:
        raise CheckpointError(
            f"{keys} keys of {len(stages)} backbone stage{'s' if len(stages) != 1 else ''} {stages}, expected 4 "
            "(stages 0..3): the decode head takes the four stage outputs (strides 4, 8, 16, 32)"
        )


def indices(state_dict: dict, pattern: str) -> list[int]:
    """Sorted distinct values of the first group of ``pattern`` (``re.match``) over the keys."""
    return sorted({int(match.group(1)) for key in state_dict if (match := re.match(pattern, key))})


def window_size_from_table(rows: int, key: str) -> int:
    """The window size ``w`` of a Swin ``relative_position_bias_table`` with ``rows = (2w - 1)^2`` rows."""
    window_size = (math.isqrt(rows) + 1) // 2
    if (2 * window_size - 1) ** 2 != rows:
        raise CheckpointError(f"{key} has {rows} rows, not (2w-1)^2 for any window size w")
    return window_size


def relative_position_window(state_dict: dict[str, torch.Tensor], index_key: str) -> int | None:
    """The window size of the block whose ``relative_position_index`` is ``index_key``, from the block's
    ``relative_position_bias_table`` (None when the state dict has no such table)."""
    table_key = index_key.removesuffix("relative_position_index") + "relative_position_bias_table"
    if table_key not in state_dict or not state_dict[table_key].ndim:
        return None
    return window_size_from_table(state_dict[table_key].shape[0], table_key)


def check_relative_position_index(key: str, tensor: torch.Tensor, window_size: int | None = None) -> None:
    """The original's persistent ``relative_position_index`` buffer must be Swin's index of a square window: of
    shape ``(w*w, w*w)`` for the block's ``window_size`` when it is given (else any square window), with Swin's values
    (the HF model rebuilds it; a tensor on the meta device has no values to check)."""
    if window_size is None:
        window_size = math.isqrt(tensor.shape[0]) if tensor.ndim == 2 else 0
        if window_size == 0 or window_size * window_size != tensor.shape[0]:
            raise CheckpointError(
                f"{key}: shape {tuple(tensor.shape)}, expected (w*w, w*w) for a square window w (the Swin relative "
                "position index)"
            )
    tokens = window_size * window_size
    expect_shape(
        key, tensor, (tokens, tokens), f"the Swin relative position index of a {window_size}x{window_size} window"
    )
    if tensor.device.type == "meta":
        return
    if not torch.equal(tensor.long(), relative_position_index(window_size).view(tensor.shape).long()):
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


def split_fused_qkv(
    key: str, tensor: torch.Tensor, prefix: str, kind: str, names=QKV_NAMES, dim: int | None = None
) -> dict[str, torch.Tensor]:
    """The rows (or entries) of a fused ``[q; k; v]`` projection ``key`` as ``{prefix}.{name}.{kind}`` for the three
    ``names``, in that order. ``kind`` is ``weight`` (shape ``(3 dim, dim)``) or ``bias`` (``(3 dim,)``); without
    ``dim`` (the projections' width) only the rank and the three equal parts are checked."""
    ndim = 2 if kind == "weight" else 1
    if dim is not None:
        expected = (3 * dim, dim)[:ndim]
        expect_shape(key, tensor, expected, f"the fused q, k, v {kind} of {dim}-channel projections")
    elif tensor.ndim != ndim or tensor.shape[0] % 3:
        raise CheckpointError(
            f"{key}: shape {tuple(tensor.shape)}, expected (3 x dim{', dim' if ndim == 2 else ''}) "
            f"(three stacked q, k, v projection {kind}s)"
        )
    return {f"{prefix}.{name}.{kind}": part for name, part in zip(names, tensor.chunk(3, dim=0))}


def raise_on_unmapped(unmapped: list[str]) -> None:
    """A :class:`CheckpointError` naming the keys without a conversion rule (the first 20), if there are any."""
    if unmapped:
        more = f" and {len(unmapped) - 20} more" if len(unmapped) > 20 else ""
        raise CheckpointError(f"{len(unmapped)} keys have no conversion rule: {unmapped[:20]}{more}")


def checkpoint_origins(converted: dict[str, torch.Tensor], original: dict[str, torch.Tensor] | None) -> dict[str, str]:
    """The checkpoint key each converted tensor was made from, found by its memory: a renamed tensor is the
    original one, and a reshaped, transposed or split one a view of it (a tensor the converter computed anew, e.g. a
    folded norm, has none)."""
    if not original:
        return {}
    owners = {
        tensor.untyped_storage().data_ptr(): key
        for key, tensor in original.items()
        if tensor.numel() and tensor.device.type != "meta"
    }
    return {
        key: owners[pointer]
        for key, tensor in converted.items()
        if tensor.numel() and (pointer := tensor.untyped_storage().data_ptr()) in owners
    }


def check_against_model(
    converted: dict[str, torch.Tensor],
    model_state: dict[str, torch.Tensor],
    original: dict[str, torch.Tensor] | None = None,
) -> None:
    """Every converted key must exist in the model with the same shape, and every model key must be provided. The
    error names the checkpoint's own key of each tensor where it can (:func:`checkpoint_origins`): of a missing
    tensor, the checkpoint key its converted sibling (``weight`` / ``bias``) came from, with its own last part."""
    origins = checkpoint_origins(converted, original)

    def named(key: str) -> str:
        return f"{origins[key]} (converted: {key})" if key in origins else f"{key} (converted name)"

    def missing_origin(key: str) -> str:
        prefix, _, leaf = key.rpartition(".")
        for sibling in sorted(converted):
            sibling_prefix, _, sibling_leaf = sibling.rpartition(".")
            origin = origins.get(sibling)
            if sibling_prefix == prefix and origin and origin.rpartition(".")[2] == sibling_leaf:
                return f"{origin.rpartition('.')[0]}.{leaf} (converted: {key})"
        return f"{key} (converted name)"

    missing = sorted(set(model_state) - set(converted))
    unexpected = sorted(set(converted) - set(model_state))
    mismatched = [
        f"{named(key)}: checkpoint {tuple(converted[key].shape)} vs model {tuple(model_state[key].shape)}"
        for key in sorted(set(converted) & set(model_state))
        if tuple(converted[key].shape) != tuple(model_state[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {[missing_origin(key) for key in missing]}")
    if unexpected:
        problems.append(f"not in the model: {[named(key) for key in unexpected]}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise CheckpointError("; ".join(problems))


def load_converted(
    model_class, config, converted: dict[str, torch.Tensor], original: dict[str, torch.Tensor] | None = None
):
    """``model_class(config)`` with the converted tensors (checked with :func:`check_against_model`, whose errors
    name the keys of the ``original`` checkpoint tensors where known; floating tensors as float32), in eval mode."""
    model = model_class(config)
    model_state = model.state_dict()
    check_against_model(converted, model_state, original)
    not_floating = [
        f"{key} ({converted[key].dtype})"
        for key in sorted(converted)
        if model_state[key].is_floating_point() and not converted[key].is_floating_point()
    ]
    if not_floating:
        raise CheckpointError(
            f"tensors that are not floating point where the model has floating-point weights (converted names): "
            f"{not_floating[:10]}"
        )
    model.load_state_dict(
        {key: value.float() if value.is_floating_point() else value for key, value in converted.items()}, strict=True
    )
    return model.eval()


# --------------------------------------------------------------------------------------------------------------------
# Class names
# --------------------------------------------------------------------------------------------------------------------


def checkpoint_id2label(class_names, num_labels: int) -> dict[int, str]:
    """The class names saved with the checkpoint (mmseg ``meta['CLASSES']``), one per class; without them
    ``class_0``, ``class_1``, ... (:func:`name_classes` later gives the dataset's names where the dataset is known).
    Names that are not one per class, or that name a class twice, are a :class:`CheckpointError`: they cannot be
    matched to the classes (they were dropped silently for generic names before)."""
    if class_names is None:
        return {index: f"class_{index}" for index in range(num_labels)}
    if not isinstance(class_names, (list, tuple)):
        raise CheckpointError(f"meta['CLASSES'] = {_short_repr(class_names)}, expected {_META_ENTRIES['CLASSES']}")
    if len(class_names) != num_labels:
        raise CheckpointError(
            f"meta['CLASSES'] names {len(class_names)} classes, the weights have {num_labels}: the names cannot be "
            "matched to the classes (metadata of another model?)"
        )
    check_unique_class_names(class_names, "meta['CLASSES']")
    return {index: str(name) for index, name in enumerate(class_names)}


def given_id2label(id2label: dict[int, str] | None, num_labels: int) -> dict[int, str]:
    """The class names a caller gives a detectron2 conversion (whose checkpoints hold none): one per class, each
    naming one class (a :class:`CheckpointError` otherwise); without them ``class_0``, ``class_1``, ..."""
    if id2label is None:
        return checkpoint_id2label(None, num_labels)
    if len(id2label) != num_labels:
        raise CheckpointError(f"{len(id2label)} class names given for a checkpoint with {num_labels} classes")
    check_unique_class_names(id2label.values(), "id2label")
    return id2label


def check_unique_class_names(names, where: str) -> None:
    """A :class:`CheckpointError` naming the class names ``where`` holds more than once (a config's ``label2id``
    maps a name to one class)."""
    names = [str(name) for name in names]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CheckpointError(f"{where} names more than one class {repeated[:10]}: a class name must name one class")


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
            exact weights, names and shapes (:func:`hf_semseg.variants.find_variant`); None when neither.
        variant_given: whether ``variant`` was named by the user (``--variant``).
        meta: the mmseg ``meta`` (config text, ``CLASSES``); empty for detectron2 checkpoints.
        state_dict: the original tensors (after the loader's renames) where the caller wants them back.
        has_class_names: whether the checkpoint named its classes (otherwise :func:`name_classes` names them after
            the dataset, when it is known).
        processor_kwargs: image processor arguments the model dictates (e.g. its padding multiple).
        settings: the values the weights do not hold, and where each came from
            (:class:`~.run_config.ResolvedSettings`); None for a converter without such values.
        pipeline: what the run's config says about the test pre-processing and the dataset: ``test_scale``
            ``(longest, shortest)``, ``size_divisor``, ``reduce_labels``, ``image_mean`` / ``image_std`` (0-1 scale),
            ``dataset`` (a :data:`~hf_semseg.variants.DATASETS` key); ``source`` names the config; ``undecided``: the
            fields the config decides but does not tell (no other source may fill them in).
        checkpoint_pipeline: test pre-processing values read from the checkpoint's tensors (a detectron2 checkpoint's
            ``pixel_mean`` / ``pixel_std`` buffers: ``image_mean`` / ``image_std``), with their ``source``; used where
            the run's config does not give them (the converter refuses a config that contradicts them).
    """

    path: Path
    model: object
    variant: str | None = None
    variant_given: bool = False
    meta: dict = field(default_factory=dict)
    state_dict: dict = field(default_factory=dict)
    has_class_names: bool = False
    processor_kwargs: dict = field(default_factory=dict)
    settings: object = None
    pipeline: dict = field(default_factory=dict)
    checkpoint_pipeline: dict = field(default_factory=dict)
    pipeline_fields: tuple = ("test_scale", "size_divisor", "reduce_labels", "image_mean", "image_std")

    @property
    def family(self) -> str:
        return self.model.config.model_type

    @property
    def num_labels(self) -> int:
        return self.model.config.num_labels


def build_conversion(
    path: str | Path,
    model_class,
    infer: Callable[[], tuple[object, object]],
    convert_keys: Callable[[], dict[str, torch.Tensor]],
    class_names=None,
    original: dict[str, torch.Tensor] | None = None,
    **fields,
) -> Conversion:
    """The steps every converter ends with: ``infer()`` -> ``(config, settings)`` (the
    :class:`~.run_config.ResolvedSettings`, whose ``variant`` is the released variant the checkpoint is) and
    ``convert_keys()`` -> the renamed tensors (their :class:`CheckpointError` name the file), the model loaded with
    them (:func:`load_converted`; ``original``: the checkpoint's tensors, which its errors name), the
    :class:`Conversion` with ``fields``, and the classes named after the dataset
    when ``class_names`` (saved with the checkpoint) are not one per class."""
    with errors_name_the_file(path), invalid_config_is_an_error(model_class):
        config, settings = infer()
        # the values set after the config was built (the training-only ones) are checked now, not in save_pretrained
        for part in (config, *(getattr(config, name, None) for name in ("backbone_config", "decoder_config"))):
            if hasattr(part, "validate"):
                part.validate()
        model = load_converted(model_class, config, convert_keys(), original)
    has_class_names = class_names is not None and len(class_names) == config.num_labels
    conversion = Conversion(
        Path(path), model, variant=settings.variant, has_class_names=has_class_names, settings=settings, **fields
    )
    name_classes(conversion)
    return conversion


@contextmanager
def invalid_config_is_an_error(model_class) -> Iterator[None]:
    """The validation error of a model config built (or changed) inside, from the values a converter read, as a
    :class:`CheckpointError` naming the config class and the failed check (only the config classes' own validation
    errors: anything else is a bug and propagates)."""
    from huggingface_hub.errors import StrictDataclassError

    try:
        yield
    except StrictDataclassError as error:
        config_class = getattr(model_class, "config_class", None)
        name = getattr(config_class, "__name__", "the model config")
        detail = " ".join(str(error).split())
        raise CheckpointError(
            f"the values read from the checkpoint and its config make no valid {name}: {detail}"
        ) from error


def get_variant_or_none(name: str):
    """The registered variant ``name``, None when there is none."""
    try:
        return get_variant(name)
    except KeyError:
        return None


def released_variant(config, variant: str | None) -> str | None:
    """The released variant a checkpoint whose weights build ``config`` is: the named ``variant`` (``--variant``),
    which must have exactly these weights, names and shapes, else the one registered variant that has them (None
    when none or several do)."""
    if variant is None:
        return find_variant(config)
    named = get_variant_or_none(variant)
    if named is None or named.family != config.model_type:
        raise CheckpointError(
            f"--variant {variant}: not a released {config.model_type} variant; they are "
            f"{sorted(list_variants(config.model_type))}"
        )
    if not variant_has_weights(variant, config):
        matched = find_variant(config)
        whose = f"they are {matched}'s" if matched else "no released variant has them"
        raise CheckpointError(f"--variant {variant}: the checkpoint's weights are not that variant's ({whose})")
    return variant


def conversion_dataset(conversion: Conversion) -> tuple[str | None, str]:
    """``(dataset key, how it is known)``: the run's config's dataset, else the released variant's, else
    ``(None, "")`` (never guessed from the number of classes)."""
    if conversion.pipeline.get("dataset") is not None:
        return conversion.pipeline["dataset"], conversion.pipeline.get("source", "the run's config")
    if conversion.variant is not None:
        return get_variant(conversion.variant).dataset, "variant"
    return None, ""


def name_classes(conversion: Conversion) -> None:
    """Gives the model the class names of its dataset (:func:`conversion_dataset`) when the checkpoint has none."""
    dataset, _ = conversion_dataset(conversion)
    if conversion.has_class_names or dataset not in datasets_with_labels():
        return
    id2label, _ = dataset_labels(dataset)
    if len(id2label) != conversion.num_labels:
        return  # e.g. a run on a subset of the classes: keep the checkpoint's names
    config = conversion.model.config
    config.id2label, config.label2id = id2label, {label: index for index, label in id2label.items()}
    if hasattr(config, "sync_backbone_labels"):  # SeMask Mask2Former: the backbone's semantic layers share them
        config.sync_backbone_labels()


def resolve_test_pipeline(conversion: Conversion) -> tuple[dict, list[str], dict]:
    """The test pre-processing of the converted model: ``(values, left at the processor's defaults, sources)``. Each
    of the conversion's ``pipeline_fields`` comes from the first source that knows it: the run's config (config file,
    then the checkpoint's config text), the label reduction of the dataset the config names, the values read from the
    checkpoint's tensors (``checkpoint_pipeline``), then the released variant. The run's config is the run's: what its
    test pipeline and dataset decide (a step it lacks, a dataset's own label reduction, a value it leaves
    ``undecided``) is never filled in from a released variant, whose dataset may be another one. A value no source
    knows keeps the image processor's default (listed, so the summary and the card say so)."""
    sources = []
    if conversion.pipeline:
        sources.append((conversion.pipeline, conversion.pipeline.get("source", "the run's config")))
    dataset = conversion.pipeline.get("dataset")
    if dataset is not None:
        sources.append(({"reduce_labels": get_dataset(dataset).reduce_labels}, f"dataset {get_dataset(dataset).name}"))
    if conversion.checkpoint_pipeline:
        sources.append((conversion.checkpoint_pipeline, conversion.checkpoint_pipeline["source"]))
    if conversion.variant is not None:
        variant = get_variant(conversion.variant)
        values = {"test_scale": variant.test_scale, "size_divisor": variant.size_divisor}
        values["reduce_labels"] = variant.reduce_labels
        processor_class = image_processor_class(variant.family)  # its defaults are the released models' statistics
        values["image_mean"], values["image_std"] = list(processor_class.image_mean), list(processor_class.image_std)
        sources.append((values, f"released variant {conversion.variant}"))
    undecided = conversion.pipeline.get("undecided", ())
    pipeline, where, defaults = {}, {}, []
    for name in conversion.pipeline_fields:
        found = next(((values, how) for values, how in sources if name in values), None)
        if found is None or name in undecided:
            defaults.append(name)
        else:
            pipeline[name], where[name] = found[0][name], found[1]
    return pipeline, defaults, where


def build_image_processor(conversion: Conversion):
    """The image processor of the converted model: its family's class (:func:`image_processor_class`) with the
    :func:`resolve_test_pipeline` values and those read from the checkpoint's tensors."""
    pipeline, _, _ = resolve_test_pipeline(conversion)
    kwargs = {}
    if "test_scale" in pipeline:
        longest, shortest = pipeline["test_scale"]
        kwargs["size"] = {"longest_edge": longest, "shortest_edge": shortest}
    if pipeline.get("size_divisor") is not None:
        kwargs["size_divisor"] = pipeline["size_divisor"]
    if "reduce_labels" in pipeline:
        kwargs["do_reduce_labels"] = pipeline["reduce_labels"]
    for name in ("image_mean", "image_std"):
        if name in pipeline:
            kwargs[name] = list(pipeline[name])
    kwargs.update(conversion.processor_kwargs)
    return image_processor_class(conversion.family)(**kwargs)


def describe_pipeline(conversion: Conversion) -> str:
    """Where the test pre-processing came from, for the summary line and the card."""
    _, defaults, where = resolve_test_pipeline(conversion)
    by_source: dict[str, list[str]] = {}
    for name, source in where.items():
        by_source.setdefault(source, []).append(name)
    parts = [f"{', '.join(names)} from {source}" for source, names in by_source.items()]
    defaults = [name for name in defaults if name not in conversion.processor_kwargs]
    if defaults and conversion.pipeline.get("undecided"):
        parts.append(
            f"{', '.join(defaults)} NOT GIVEN ({conversion.pipeline['source']} does not say; the image processor's "
            "defaults)"
        )
    elif defaults:
        parts.append(
            f"{', '.join(defaults)} NOT GIVEN (the image processor's defaults; pass --config_file to set them)"
        )
    return "test pre-processing: " + "; ".join(parts)


def describe_provenance(conversion: Conversion) -> str:
    """Which released variant the checkpoint is and how that is known, its dataset, and where the values the weights
    do not hold came from (for the summary line)."""
    if conversion.variant is not None and conversion.variant_given:
        variant = f"released variant {conversion.variant} (--variant; the weights match)"
    elif conversion.variant is not None:
        variant = f"released variant {conversion.variant} (same weights, names and shapes)"
    else:
        variant = "no released variant has these weights"
    dataset, how = conversion_dataset(conversion)
    dataset_part = (
        "dataset unknown"
        if dataset is None
        else f"dataset {get_dataset(dataset).name}" + (f" ({how})" if how != "variant" else "")
    )
    settings = conversion.settings.describe() if conversion.settings is not None else "every value is in the weights"
    return f"{variant}; {dataset_part}; {settings}; {describe_pipeline(conversion)}"


# --------------------------------------------------------------------------------------------------------------------
# The output folder
# --------------------------------------------------------------------------------------------------------------------


#: The one tolerance of the reload check, for every family: the logits of the folder reloaded in a fresh process may
#: differ from the converted model's by at most ``RELOAD_TOLERANCE * max(1, max |logit|)``. Not 0: tensors reloaded
#: from safetensors in another process sit at other memory alignments, which changes oneDNN's summation order (the
#: reference fixtures: SeMask-FPN and SeMask-Mask2Former 0, VWFormer 8.3e-7 with max |logit| 2.9).
RELOAD_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ReloadCheck:
    """The input of the reload check (:func:`check_reload`): one seeded ``torch.randn`` image of ``input_size``
    (height, width; multiples of 64 suit every family). The tolerance is :data:`RELOAD_TOLERANCE`, the same for every
    family."""

    input_size: tuple[int, int] = (128, 192)

    def pixel_values(self) -> torch.Tensor:
        return torch.randn(1, 3, *self.input_size, generator=torch.Generator().manual_seed(0))


RELOAD_CHECK = ReloadCheck()


@dataclass(frozen=True)
class ReloadResult:
    """What :func:`check_reload` measured: the largest absolute logit difference and the allowed one."""

    input_size: tuple[int, int]
    max_diff: float
    limit: float

    def card_line(self) -> str:
        height, width = self.input_size
        agreement = "equal" if self.max_diff == 0 else f"are within {self.max_diff:.1e} of"
        return (
            "Checked at conversion: reloaded in a fresh process without hf-semseg (`trust_remote_code=True`), the "
            f"logits on a seeded 1x3x{height}x{width} input {agreement} the converted model's (allowed: "
            f"{RELOAD_TOLERANCE:g} x max(1, max |logit|) = {self.limit:.1e})."
        )

    def summary(self) -> str:
        return f"reload check in a fresh process: max abs diff {self.max_diff:.1e} (allowed {self.limit:.1e})"


SKIPPED_CARD_LINE = "Not checked at conversion: the reload check was skipped (`--skip_reload_check`)."
SKIPPED_SUMMARY = "reload check SKIPPED (--skip_reload_check)"

# run by check_reload in a fresh interpreter: argv = folder, input file, output file
_RELOAD_SCRIPT = """
import sys
sys.modules["hf_semseg"] = None  # the folder's own code, not the installed package
import torch
from transformers import AutoModelForSemanticSegmentation
folder, inputs_path, logits_path = sys.argv[1:4]
model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
if not type(model).__module__.startswith("transformers_modules."):
    sys.exit(f"the model class {type(model).__module__}.{type(model).__name__} is not the folder's code")
with torch.no_grad():
    logits = model(torch.load(inputs_path)).logits
torch.save(logits, logits_path)
"""


def check_reload(model, folder: str | Path, check: ReloadCheck = RELOAD_CHECK, timeout: float = 1800) -> ReloadResult:
    """Reloads the saved ``folder`` in a fresh Python process in which ``hf_semseg`` cannot be imported
    (``AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True)``: the folder's own code),
    runs the seeded input of ``check`` and compares the logits with ``model``'s (input and logits pass through files).
    The logits must agree to ``RELOAD_TOLERANCE * max(1, max |logit|)`` (:data:`RELOAD_TOLERANCE`, the same for every
    family); otherwise, when the converted model does not run on the input, when the folder does not load, or when
    the check's files cannot be written in the temporary folder (a full disk), a :class:`ConversionError`."""
    pixel_values = check.pixel_values()
    height, width = check.input_size
    try:
        with torch.no_grad():
            expected = model(pixel_values).logits
    except ConversionError:
        raise
    except Exception as error:  # a layout the model cannot run, read from the checkpoint: not a traceback
        raise ConversionError(
            f"the converted model does not run on a seeded 1x3x{height}x{width} input ({type(error).__name__}: "
            f"{first_line(error)})"
        ) from error
    limit = RELOAD_TOLERANCE * max(1.0, expected.abs().max().item())
    with tempfile.TemporaryDirectory(prefix="hf_semseg_reload_") as work:
        work = Path(work)
        with _write_errors("the reload check's temporary folder", work):
            torch.save(pixel_values, work / "pixel_values.pt")
        environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(work / "modules"))
        command = [sys.executable, "-c", _RELOAD_SCRIPT, str(Path(folder).absolute()), "pixel_values.pt", "logits.pt"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, cwd=work, env=environment, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise ConversionError(f"the reload check did not finish within {timeout:g} s") from error
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            raise ConversionError(
                "the saved folder does not load and run in a fresh process without hf-semseg "
                f"({lines[-1].strip() if lines else f'exit status {result.returncode}'})"
            )
        with _write_errors("the reload check's temporary folder", work):
            reloaded = torch.load(work / "logits.pt")
    if reloaded.shape != expected.shape:
        raise ConversionError(
            f"the reloaded model's logits have shape {tuple(reloaded.shape)}, the converted model's "
            f"{tuple(expected.shape)}"
        )
    difference = (reloaded - expected).abs().max().item()
    if not difference <= limit:  # also NaN
        raise ConversionError(
            f"the saved model, reloaded in a fresh process, differs from the converted one: logits on a seeded "
            f"1x3x{height}x{width} input differ by up to {difference:.3g} (allowed {limit:.3g})"
        )
    return ReloadResult(tuple(check.input_size), difference, limit)


def _storage_error_reason(error: BaseException, folder: Path) -> str:
    """Why writing a file in ``folder`` failed, in a few words: the system's reason (``No space left on device``)
    where the error (an ``OSError``, safetensors' ``SafetensorError``) gives one, else (torch's ``RuntimeError`` of its
    zip writer says only that a write failed) the error's type and first line and the space left in ``folder``."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    reason = re.search(r"(?:I/O error: |message: \")([^\"(]+)", str(error))
    if reason is not None:
        return reason.group(1).strip()
    try:
        free = f"; {shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
    except OSError:
        free = ""
    return f"{type(error).__name__}: {first_line(error)}{free}"


def _is_storage_error(error: BaseException) -> bool:
    """Whether ``error`` is a failure to write or read a file: an ``OSError``, safetensors' ``SafetensorError`` (a
    full disk while ``model.safetensors`` is written), or torch's ``RuntimeError`` of its zip writer / reader."""
    if isinstance(error, OSError):
        return True
    if type(error).__name__ == "SafetensorError":
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in text for marker in ("PytorchStreamWriter", "PytorchStreamReader", "inline_container", "iostream")
    )


@contextmanager
def _write_errors(what: str, folder: Path) -> Iterator[None]:
    """A failure to write or read a file in ``folder`` inside (:func:`_is_storage_error`) as a
    :class:`ConversionError` naming ``what`` (the folder's role), the folder and the reason."""
    try:
        yield
    except Exception as error:
        if not _is_storage_error(error):
            raise
        raise ConversionError(f"cannot write {what} {folder} ({_storage_error_reason(error, folder)})") from error


def check_output_dir(
    output_dir: str | Path,
    overwrite: bool = False,
    checkpoint_path: str | Path | None = None,
    config_files: tuple = (),
) -> Path:
    """Refuses, before any work, an output location the converter cannot fill (a :class:`ConversionError`): a path
    that is a file or lies under one, a folder that cannot be created or written in, a non-empty folder without
    ``overwrite`` (naming a few of its entries and their count), and with ``overwrite`` a folder holding the checkpoint
    being converted or one of the ``config_files`` it reads, the current working directory or the home directory (or
    a folder holding either). An empty ``output_dir`` (an unset shell variable, say) is refused: ``Path("")`` would be
    the current directory. Returns the absolute path; a symbolic link to a folder is resolved (the folder it points to
    is the one written)."""
    if str(output_dir) == "":
        raise ConversionError(
            f"--output_dir {str(output_dir)!r} is empty (an unset shell variable?); name the folder to write, e.g. "
            "--output_dir ./converted (the current directory is never written implicitly)"
        )
    target = Path(output_dir).absolute()
    check_accessible(target, f"--output_dir {output_dir}", "a folder you can write to")
    if target.is_symlink() and not target.exists():
        raise ConversionError(f"--output_dir {output_dir} is a broken symbolic link")
    if target.is_symlink():
        target = target.resolve()
    if target.exists():
        if not target.is_dir():
            raise ConversionError(f"--output_dir {output_dir} is a file, not a folder")
        entries = _folder_entries(target, output_dir)
        if entries and not overwrite:
            listed = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ConversionError(
                f"--output_dir {output_dir} is not empty ({len(entries)} entr{'ies' if len(entries) > 1 else 'y'}: "
                f"{listed}); pass --overwrite to replace it, or choose another folder"
            )
        if entries and checkpoint_path is not None and Path(checkpoint_path).resolve().is_relative_to(target.resolve()):
            raise ConversionError(
                f"--output_dir {output_dir} holds the checkpoint {checkpoint_path}: --overwrite would delete it; "
                "choose another folder"
            )
        if entries:
            for what, folder in (("the current directory", Path.cwd()), ("the home directory", _home())):
                if folder is not None and folder.resolve().is_relative_to(target.resolve()):
                    held = "is" if folder.resolve() == target.resolve() else "holds"
                    raise ConversionError(
                        f"--output_dir {output_dir} {held} {what} ({folder}): --overwrite would delete everything in "
                        "it; choose a new folder for the converted model"
                    )
        for config_file in config_files if entries else ():
            if Path(config_file).resolve().is_relative_to(target.resolve()):
                raise ConversionError(
                    f"--output_dir {output_dir} holds the config file {config_file}, which the conversion reads: "
                    "--overwrite would delete it; choose another folder"
                )
    ancestor = target.parent
    while not (ancestor.exists() or ancestor.is_symlink()):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConversionError(f"--output_dir {output_dir} cannot be created: {ancestor} is not a folder")
    probe = ancestor / hidden_sibling_name(target.name, "write-test")
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as error:
        raise ConversionError(
            f"--output_dir {output_dir}: cannot write in {ancestor} ({error.strerror or error}); choose a folder you "
            "can write to"
        ) from error
    return target


def _folder_entries(folder: Path, output_dir: str | Path) -> list[str]:
    """The sorted names in the existing ``--output_dir`` ``folder``; a folder the user cannot list (no read
    permission) is a :class:`ConversionError` naming it and the system's reason."""
    try:
        return sorted(path.name for path in folder.iterdir())
    except OSError as error:
        raise ConversionError(
            f"--output_dir {output_dir} cannot be listed ({error.strerror or first_line(error)}), expected a folder "
            "you can read and write"
        ) from error


def hidden_sibling_name(name: str, tag: str) -> str:
    """The name of a hidden folder beside ``name`` (``.name.tag-1a2b3c4d``): the probe, the folder being written and
    the one ``--overwrite`` sets aside. Long names are cut to 100 characters, so that a name the file system takes
    for the output folder itself (up to 255 bytes) does not fail as "File name too long" for these."""
    return f".{name[:100]}.{tag}-{secrets.token_hex(4)}"


def _home() -> Path | None:
    """The user's home directory, None when it cannot be determined."""
    try:
        return Path.home()
    except (RuntimeError, KeyError):
        return None


def _move_into_place(partial: Path, target: Path) -> Path | None:
    """Renames the complete folder ``partial`` to ``target`` (same parent); an existing non-empty ``target``
    (``--overwrite``) is set aside first (put back if the rename fails). Returns the set-aside folder, which the caller
    removes once the new folder is in place (:func:`_remove_replaced`), None when there was none."""
    if target.is_dir() and any(target.iterdir()):
        old = target.parent / hidden_sibling_name(target.name, "old")
        os.rename(target, old)
        try:
            os.rename(partial, target)
        except BaseException:
            os.rename(old, target)
            raise
        return old
    os.replace(partial, target)  # an empty folder is replaced
    return None


def _remove_replaced(old: Path | None, written: dict) -> None:
    """Removes the folder ``--overwrite`` replaced (set aside by :func:`_move_into_place`). An interrupt (SIGTERM,
    Ctrl-C) during the removal finishes it before it propagates; if the folder still cannot be removed, ``written``
    gets its path as ``"leftover"`` (the command line names it)."""
    if old is None:
        return
    try:
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        try:
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            pass  # a second interrupt: the first one propagates, the leftover is named
        if old.exists():
            written["leftover"] = old
        raise
    if old.exists():
        written["leftover"] = old


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """No transformers progress bars inside (restored afterwards)."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def write_output_folder(
    conversion: Conversion,
    output_dir: str | Path,
    card_template: Path,
    card_fields: Callable,
    check: ReloadCheck | None = RELOAD_CHECK,
    overwrite: bool = False,
    written: dict | None = None,
) -> dict:
    """Writes the output folder completely or not at all: saves the model (``config.json`` with ``auto_map``, the
    model code, ``model.safetensors``) and its image processor into a temporary folder next to ``output_dir`` (same
    file system), checks it (:func:`check_reload`; skipped when ``check`` is None, which the card then says), renders
    the model card ``card_template`` with ``card_fields(conversion, processor)`` and the check's result
    (``$reload_check``), and only then renames it to ``output_dir`` (with ``overwrite``, an existing folder is replaced
    once the new one is complete). On any failure the temporary folder (and any parent folder created for it) is
    removed and ``output_dir`` is left as it was; a failed check or an unwritable location (a full disk included) is a
    :class:`ConversionError`. ``written`` (a dict, if given) gets ``"output_dir"`` as soon as the new folder is in
    place, and ``"leftover"``: the replaced folder if it could not be removed (an interrupt during its removal, say).
    Returns the card fields (``reload_check``: the card's line, ``reload_summary``: the summary's)."""
    from .model_card import render_card

    target = check_output_dir(output_dir, overwrite, conversion.path)
    created = []
    folder = target.parent
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    partial = target.parent / hidden_sibling_name(target.name, "partial")
    try:
        for folder in reversed(created):
            folder.mkdir()
        partial.mkdir()
        processor = build_image_processor(conversion)
        with quiet_progress_bars():  # the command line's stderr is for errors
            conversion.model.save_pretrained(partial)
            processor.save_pretrained(partial)
        fields = card_fields(conversion, processor)
        if check is None:
            fields.update(reload_check=SKIPPED_CARD_LINE, reload_summary=SKIPPED_SUMMARY)
        else:
            result = check_reload(conversion.model, partial, check)
            fields.update(reload_check=result.card_line(), reload_summary=result.summary())
        render_card(card_template, partial, fields)
        old = _move_into_place(partial, target)
    except BaseException as error:
        storage_error = isinstance(error, Exception) and _is_storage_error(error)  # safetensors' and torch's writers
        reason = _storage_error_reason(error, target.parent) if storage_error else ""  # before the space is freed
        shutil.rmtree(partial, ignore_errors=True)
        for folder in created:  # deepest first; only folders that are still empty
            try:
                folder.rmdir()
            except OSError:
                break
        untouched = "left unchanged" if target.exists() else "not written"
        if isinstance(error, OSError):
            raise ConversionError(f"cannot write {output_dir} ({error}); it was {untouched}") from error
        if storage_error:
            raise ConversionError(f"cannot write {output_dir} ({reason}); it was {untouched}") from error
        if isinstance(error, ConversionError):
            raise ConversionError(f"{error}; {output_dir} was {untouched}") from error
        raise
    written = {} if written is None else written
    written["output_dir"] = output_dir
    _remove_replaced(old, written)
    return fields


def push_to_hub(output_dir: str | Path, repo_id: str, token: str | None = None) -> str:
    """Uploads the folder to the Hub model repository ``repo_id`` (created when absent); returns its URL."""
    import huggingface_hub

    api = huggingface_hub.HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
    api.upload_folder(
        folder_path=str(output_dir),
        repo_id=repo_id,
        repo_type="model",
        commit_message="Upload converted model (hf-semseg)",
    )
    return str(url)


# --------------------------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Converter:
    """A family converter as the command line drives it.

    Attributes:
        family: ``model_type`` of the converted models, or a tuple of them for a converter of several model classes
            (the ``--variant`` choices are their registered variants).
        layout: the checkpoint layout it reads (for the help text).
        convert: ``convert(path, variant=None, config_file=None)`` -> :class:`Conversion`.
        card_fields: ``card_fields(conversion, processor)`` -> the model card template's fields.
        summary: the converted architecture in one line, a ``str.format`` template of the card fields.
        config_file_help: what ``--config_file`` takes (the mmseg ``.py`` or detectron2 ``config.yaml`` of the run).
        reload_check: the input of the fresh-process reload check (:data:`RELOAD_CHECK`; one tolerance for all).
    """

    family: str | tuple[str, ...]
    layout: CheckpointLayout
    convert: Callable[..., Conversion]
    card_fields: Callable[[Conversion, object], dict]
    summary: str
    config_file_help: str
    reload_check: ReloadCheck = RELOAD_CHECK


class _ArgumentParser(argparse.ArgumentParser):
    """A usage error is one ``error: ...`` line on stderr and exit status 1, like every other user error."""

    def error(self, message: str):
        self.exit(1, f"error: {message} (see --help)\n")


def parse_converter_args(converter: Converter, description: str, argv=None) -> argparse.Namespace:
    """``--checkpoint_path``, ``--output_dir``, ``--overwrite``, ``--config_file``, ``--variant``, ``--push_to_hub`` and
    ``--skip_reload_check``; a usage error is one ``error:`` line and exit status 1."""
    from ..variants import list_variants

    parser = _ArgumentParser(description=description)
    parser.add_argument("--checkpoint_path", required=True, help=f"original {converter.layout.name} checkpoint (.pth)")
    parser.add_argument(
        "--output_dir", required=True, help="folder to write the converted model to (absent or empty, see --overwrite)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --output_dir (only once the new folder is complete and checked)",
    )
    parser.add_argument(
        "--config_file",
        default=None,
        help=f"{converter.config_file_help}: the values the weights do not hold (and the test pre-processing) are "
        "read from it; without it they come from the checkpoint's own config text or the released variant with "
        "exactly its weights, else the converter stops and names them",
    )
    parser.add_argument(
        "--variant",
        choices=sorted(
            name
            for family in ((converter.family,) if isinstance(converter.family, str) else converter.family)
            for name in list_variants(family)
        ),
        default=None,
        help="the released variant the checkpoint is (its weights must match exactly): the values the weights do "
        "not hold come from it where the config does not give them",
    )
    parser.add_argument(
        "--push_to_hub",
        metavar="REPO_ID",
        default=None,
        help="also upload the folder to this Hub repository (write access is checked before converting)",
    )
    parser.add_argument(
        "--skip_reload_check",
        action="store_true",
        help="do not reload the folder in a fresh process to compare its logits with the converted model's (the "
        "summary and the model card say it was skipped)",
    )
    return parser.parse_args(argv)


def _report(error: Exception) -> int:
    """One ``error: ...`` line on stderr; exit status 1."""
    print("error: " + " ".join(str(error).split("\n")), file=sys.stderr)
    return 1


class Terminated(BaseException):
    """SIGTERM arrived during a conversion (raised by the handler :func:`terminate_with_cleanup` installs, so that
    the cleanup a ``KeyboardInterrupt`` runs runs too: the temporary folders are removed)."""


#: the exit status of a conversion ended by SIGTERM or Ctrl-C (128 + the signal number, as the shell reports it)
TERMINATED_STATUS = 128 + signal.SIGTERM
INTERRUPTED_STATUS = 128 + signal.SIGINT


@contextmanager
def terminate_with_cleanup() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` inside (the handler in place before is restored afterwards); outside the
    main thread, where no handler can be installed, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _protected_config_files(converter: Converter, config_file: str | None) -> tuple:
    """The ``--config_file`` and the ``_base_`` files it includes (what ``--overwrite`` must not delete)."""
    if config_file is None:
        return ()
    from .run_config import config_file_paths

    return config_file_paths(config_file, converter.layout)


def converter_main(converter: Converter, card_template: Path, description: str, argv=None) -> int:
    """The command line of a converter script. Before any work it refuses an output location it cannot fill
    (:func:`check_output_dir`) and, with ``--push_to_hub``, a Hub it cannot write to (:func:`check_hub_access`); then
    converts ``--checkpoint_path``, writes ``--output_dir`` completely or not at all, checked in a fresh process
    (:func:`write_output_folder`, :func:`check_reload`; ``--skip_reload_check`` skips the check), prints the summary
    line and uploads with ``--push_to_hub``. A :class:`ConversionError` (a bad checkpoint, a refused output folder or
    Hub, a failed reload check) or a failed upload is one ``error: ...`` line on stderr and exit status 1. SIGTERM
    cleans up as an interrupt does (no temporary folder is left) and is one ``error:`` line and exit status 143;
    Ctrl-C the same with exit status 130 (a traceback before)."""
    args = parse_converter_args(converter, description, argv)
    written = {}  # "output_dir" once the output folder is in place (write_output_folder)
    with terminate_with_cleanup():
        try:
            return _convert_and_write(converter, card_template, args, written)
        except (Terminated, KeyboardInterrupt) as stop:
            if "output_dir" in written:
                state = "is written" + (" but was not (completely) pushed" if args.push_to_hub else "")
                if "leftover" in written:
                    state += f"; the folder it replaced is left at {written['leftover']} (delete it)"
            else:
                # os.path.exists: False, not an OSError, for a path whose status cannot be read
                state = "was left unchanged" if os.path.exists(args.output_dir) else "was not written"
            how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted (Ctrl-C)"
            print(f"error: {how}; {args.output_dir} {state}", file=sys.stderr)
            return TERMINATED_STATUS if isinstance(stop, Terminated) else INTERRUPTED_STATUS


def _convert_and_write(converter: Converter, card_template: Path, args: argparse.Namespace, written: dict) -> int:
    """:func:`converter_main` after the arguments are parsed (``written``: see :func:`write_output_folder`)."""
    try:
        if args.overwrite:
            config_files = _protected_config_files(converter, args.config_file)
        else:
            config_files = ()
        check_output_dir(args.output_dir, args.overwrite, args.checkpoint_path, config_files)
        token = check_hub_access(args.push_to_hub) if args.push_to_hub else None
        conversion = converter.convert(args.checkpoint_path, args.variant, args.config_file)
        check = None if args.skip_reload_check else converter.reload_check
        fields = write_output_folder(
            conversion,
            args.output_dir,
            card_template,
            converter.card_fields,
            check,
            overwrite=args.overwrite,
            written=written,
        )
    except (ConversionError, HubAccessError) as error:
        return _report(error)
    print(
        f"converted {args.checkpoint_path}: {converter.summary.format_map(fields)}, {fields['parameters']} "
        f"parameters; {describe_provenance(conversion)} -> {args.output_dir}; {fields['reload_summary']}"
    )
    if "leftover" in written:
        print(f"warning: the folder --overwrite replaced could not be removed: {written['leftover']}", file=sys.stderr)
    if args.push_to_hub:
        try:
            url = push_to_hub(args.output_dir, args.push_to_hub, token)
        except Exception as error:  # network, permissions, quota: the folder is written, the upload can be retried
            detail = (str(error).strip().splitlines() or [""])[0]
            return _report(
                f"pushing to {args.push_to_hub} failed ({type(error).__name__}: {detail}); {args.output_dir} is "
                f"written, upload it with `hf upload {args.push_to_hub} {args.output_dir}`"
            )
        print(f"pushed {args.output_dir} to {url}")
    return 0
