"""Export a saved segmentation model to ONNX or to a torch.export program (``.pt2``).

    python -m hf_semseg.export --model DIR --format onnx --output model.onnx
    python -m hf_semseg.export --model DIR --format torch_export --output model.pt2 [--batch_size N]

``DIR`` is a folder written by ``save_pretrained`` (any model ``AutoModelForSemanticSegmentation`` loads once hf_semseg
is imported; a folder whose config names its own code needs ``--trust_remote_code``). The model is loaded in float32
whatever dtype it was saved in (a bfloat16 or float16 folder is exported in float32, with a note on stderr). The
exported graph maps ``pixel_values`` ``(B, 3, H, W)`` float32, normalised as the model's image processor does, to
``logits`` ``(B, num_labels, h, w)`` - the model's own logits, at 1/4 of the (padded) input for every family here:
resize them to the image as ``post_process_semantic_segmentation`` does. A mask-classification model's graph (SeMask- and
VW-MaskFormer / Mask2Former) gives after ``logits`` its ``class_queries_logits`` ``(B, Q, num_labels + 1)`` and
``masks_queries_logits`` ``(B, Q, h, w)``: its image processor's ``post_process_semantic_segmentation`` of those two
(a dict of tensors) gives the PyTorch model's class maps, where ``logits`` alone give its approximation (a program
returns the three as a tuple, an ONNX file names them). Height and width are dynamic; the batch size
``B`` is fixed at export (``--batch_size``, 1 by default; see :func:`dynamic_shapes`). Next to the output go
``<output name>.preprocessor_config.json`` (the folder's image processor settings, when it has them) and
``<output name>.labels.json`` (``id2label`` and the input / output names), e.g. ``semask.onnx.labels.json``: exports
to ``semask.onnx`` and ``semask.pt2`` keep their own; a side file of an earlier export to the same output that this
one does not write is removed. Every file is written to a temporary name in the destination folder and renamed when
complete. User errors (a missing folder, a model that is not a semantic-segmentation model, an unknown format, an
unwritable output or one named with the other format's suffix, an output or side file that would replace a file of
the model folder, a usage error) exit with status 1 and one line on stderr.

ONNX goes through torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``); FaPN's modulated deformable
convolution (``torchvision.ops.deform_conv2d``) becomes ONNX ``DeformConv`` (opset 19), which onnxruntime implements.
Attention runs its eager implementation in the exported graph (the same numbers as SDPA within float rounding).
Before anything is written, the export is run at :data:`VERIFY_SIDES` and compared with the model: an export that
does not reproduce it (a model whose code fixes sizes in the traced graph, see the README) is refused.
"""

import dataclasses
import inspect
import json
import os
import secrets
import sys
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .conversion.common import (
    INTERRUPTED_STATUS,
    TERMINATED_STATUS,
    Terminated,
    _ArgumentParser,
    _is_storage_error,
    first_line,
    quiet_progress_bars,
    terminate_with_cleanup,
)
from .models.configuration_utils_segmentation import STORAGE_WEIGHT_BITS
from .models.modeling_any_precision import active_weight_bits, check_weight_width
from .models.modeling_semask_swin import window_partition, window_reverse
from .models.modeling_utils_segmentation import reshape_copy


FORMATS = ("onnx", "torch_export")
#: the file suffix of each format's output: an output named with the other format's suffix is refused (a torch.export
#: archive named ``.onnx`` fails later in onnxruntime as a protobuf it cannot parse); other suffixes are the user's
FORMAT_SUFFIXES = {"onnx": ".onnx", "torch_export": ".pt2"}
#: the ONNX opset: 19 for DeformConv (FaPN); torch's ONNX functions are written for 18 and converted up
ONNX_OPSET = 19
#: the traced example's height and width: different (export gives equal sizes one symbol), large enough that no map
#: of a released model is one window on a side (export specialises sizes of 1), and multiples of nothing the models
#: pad to (a size that needs no padding can fix the padding out of the graph)
EXAMPLE_SIDES = (458, 522)
#: the sides the command line checks an export at before writing it (other padding than the example's)
VERIFY_SIDES = ((424, 488), (474, 442))
#: the largest difference accepted there, relative to the largest logit (at least 1)
VERIFY_TOLERANCE = 1e-4


class ExportError(Exception):
    """A user error of the export: its message is one line naming the thing and what was expected."""


#: what a mask-classification model (SeMask-MaskFormer / Mask2Former, VW-MaskFormer / Mask2Former) exports besides
#: ``logits``: the per-query class and mask logits, from which its image processor computes the papers' class maps
#: exactly (``logits`` alone, the class scores combined at 1/4 resolution, give only its approximation)
MASK_CLASSIFICATION_OUTPUTS = ("class_queries_logits", "masks_queries_logits")


def export_output_names(model: nn.Module) -> tuple[str, ...]:
    """The outputs the export of ``model`` gives, in order: ``logits``, then :data:`MASK_CLASSIFICATION_OUTPUTS` for a
    model whose forward returns them (read from the output class its ``forward`` declares, as transformers' and this
    package's models do; a model that declares none exports ``logits`` only)."""
    forward = type(model).forward
    try:
        output_class = typing.get_type_hints(forward).get("return")
    except Exception:  # an annotation that does not resolve (a remote-code model's, say)
        output_class = inspect.signature(forward).return_annotation
    candidates = typing.get_args(output_class) or (output_class,)  # ``tuple | SomeOutput`` too
    for candidate in candidates:
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            fields = {field.name for field in dataclasses.fields(candidate)}
            if "logits" in fields and set(MASK_CLASSIFICATION_OUTPUTS) <= fields:
                return ("logits", *MASK_CLASSIFICATION_OUTPUTS)
    return ("logits",)


class LogitsModel(nn.Module):
    """``pixel_values -> logits`` of a segmentation model (the graph that is exported), or ``pixel_values ->
    (logits, class_queries_logits, masks_queries_logits)`` of a mask-classification model
    (:func:`export_output_names`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.output_names = export_output_names(model)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = self.model(pixel_values=pixel_values, return_dict=True)
        if self.output_names == ("logits",):
            return outputs.logits
        return tuple(outputs[name] for name in self.output_names)


def dynamic_shapes() -> dict:
    """Height and width of ``pixel_values`` dynamic; the batch size is fixed. A dynamic batch is not offered: torch's
    convolution and transformers' Swin attention choose their memory layout by whether the batch is 1, so a traced
    dynamic batch holds either for 1 or for more than 1, not for both."""
    dynamic = torch.export.Dim.DYNAMIC
    return {"pixel_values": {2: dynamic, 3: dynamic}}


def example_input(model: nn.Module, batch_size: int = 1) -> torch.Tensor:
    """A seeded example ``pixel_values`` of ``batch_size`` images of :data:`EXAMPLE_SIDES` (the model's channels)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, config_channels(model.config), *EXAMPLE_SIDES, generator=generator)


def adaptive_pooling_matrix(size: int, output_size: int, like: torch.Tensor) -> torch.Tensor:
    """``(output_size, size)`` averaging weights of adaptive average pooling along one axis: bin ``i`` covers
    ``[floor(i*size/o), ceil((i+1)*size/o))``, torch's bins. Built from tensor arithmetic on ``size``, so a traced
    ``size`` stays symbolic (positive operands only: ONNX's integer division truncates)."""
    bins = torch.arange(output_size, device=like.device)
    start = bins * size // output_size
    end = ((bins + 1) * size + output_size - 1) // output_size
    positions = torch.arange(size, device=like.device)
    inside = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class TraceableAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products whose pooling windows follow the input's symbolic size.

    torch's own ``adaptive_avg_pool2d`` decomposition sizes its windows for the traced input, so an export of it
    (UperNet's pyramid pooling) is wrong at any other size. Equal to it within float rounding."""

    def __init__(self, output_size: tuple[int, int]):
        super().__init__()
        self.output_size = output_size

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        height, width = hidden_states.shape[-2:]
        rows = adaptive_pooling_matrix(height, self.output_size[0], hidden_states)  # (oh, H)
        columns = adaptive_pooling_matrix(width, self.output_size[1], hidden_states)  # (ow, W)
        # (B, C, H, W) -> (B, C, oh, ow)
        return torch.einsum("oh,bchw,pw->bcop", rows, hidden_states, columns)


def _always_padding_patch_embeddings(self, pixel_values: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """transformers' ``SwinPatchEmbeddings.maybe_pad`` padding always (maybe by 0): no branch on the size."""
    patch_height, patch_width = self.patch_size
    pad_right = (width + patch_width - 1) // patch_width * patch_width - width
    pad_bottom = (height + patch_height - 1) // patch_height * patch_height - height
    return F.pad(pixel_values, (0, pad_right, 0, pad_bottom))


def _always_padding_patch_merging(self, input_feature: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """transformers' ``SwinPatchMerging.maybe_pad`` padding always (maybe by 0): no branch on the size's parity."""
    return F.pad(input_feature, (0, 0, 0, width % 2, 0, height % 2))


def _traceable_swin_layer(
    self, hidden_states: torch.Tensor, input_dimensions: tuple[int, int], always_partition: bool = False, **kwargs
):
    """transformers' ``SwinLayer.forward`` padding the map to whole windows always (maybe by 0) and cropping it back
    with ``narrow`` and a copy, where transformers' forward pads and crops only where the size needs it, and crops
    with a slice and ``.contiguous()``, whose strides torch.export keeps as a guard on the size: a program traced at a
    size that one layer pads would refuse every size it does not pad, and the reverse. The same operations and values
    otherwise (``set_shift_and_window_size`` is called where transformers' forward calls it: never in the backbone,
    which partitions maps of any size)."""
    if not always_partition:
        self.set_shift_and_window_size(input_dimensions)
    height, width = input_dimensions
    batch_size, _, channels = hidden_states.shape
    shortcut = hidden_states
    window = self.window_size
    # (B, h * w, C) -> (B, h, w, C), padded to whole windows at the bottom and the right
    hidden_states = self.layernorm_before(hidden_states).view(batch_size, height, width, channels)
    pad_right = (width + window - 1) // window * window - width
    pad_bottom = (height + window - 1) // window * window - height
    hidden_states = F.pad(hidden_states, (0, 0, 0, pad_right, 0, pad_bottom))
    _, height_pad, width_pad, _ = hidden_states.shape
    # (B, h', w', C) -> (B * windows, window ** 2, C)
    windows = window_partition(self.cyclic_shift(hidden_states), window).flatten(0, 1)  # SeMask-Swin's, copying
    attn_mask = self.get_attn_mask(height_pad, width_pad, dtype=hidden_states.dtype, device=windows.device)
    attention_output, attn_weights = self.attention(windows, attn_mask, **kwargs)
    attention_windows = self.dropout(attention_output)
    # (B * windows, window ** 2, C) -> (B, windows, window ** 2, C) -> (B, h', w', C)
    windows_per_image = (height_pad // window) * (width_pad // window)
    per_image = attention_windows.view(batch_size, windows_per_image, window * window, channels)
    merged = self.cyclic_shift(window_reverse(per_image, window, height_pad, width_pad), reverse=True)
    # (B, h', w', C) -> the top-left h x w -> (B, h * w, C)
    cropped = reshape_copy(merged.narrow(1, 0, height).narrow(2, 0, width), batch_size, height * width, channels)
    hidden_states = shortcut + self.drop_path(cropped)
    return self.dropout(self.mlp(self.layernorm_after(hidden_states))) + hidden_states, attn_weights


def _traceable_reference_points(self, spatial_shapes_list, valid_ratios: torch.Tensor, device) -> torch.Tensor:
    """transformers' ``Mask2FormerPixelDecoderEncoderOnly.get_reference_points``: the centre of every pixel of every
    level, relative to the level's valid size, repeated for every level. The centres come from ``arange(n) + 0.5``
    instead of ``linspace(0.5, n - 0.5, n)`` (the same values: its step is exactly 1), whose length follows a
    symbolic size where the linspace's is fixed at the traced one. Returns ``(B, sum of h*w, levels, 2)``."""
    per_level = []
    for level, (height, width) in enumerate(spatial_shapes_list):
        rows = torch.arange(height, dtype=valid_ratios.dtype, device=device) + 0.5
        columns = torch.arange(width, dtype=valid_ratios.dtype, device=device) + 0.5
        # (h, w) grid, row-major -> (h*w,)
        centre_y = rows[:, None].expand(height, width).reshape(-1)
        centre_x = columns[None, :].expand(height, width).reshape(-1)
        y = centre_y[None] / (valid_ratios[:, None, level, 1] * height)
        x = centre_x[None] / (valid_ratios[:, None, level, 0] * width)
        per_level.append(torch.stack((x, y), -1))  # (B, h*w, 2)
    return torch.cat(per_level, 1)[:, :, None] * valid_ratios[:, None]


def _traceable_deformable_attention(
    self,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask=None,
    position_embeddings: torch.Tensor | None = None,
    reference_points: torch.Tensor | None = None,
    spatial_shapes_list=None,
    level_start_index=None,
    output_attentions: bool = False,
):
    """transformers' ``Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention.forward`` (2-d reference points,
    the pixel decoder's case) with the sampling offsets' normaliser, each level's ``(width, height)``, built as tensors
    that follow symbolic sizes (``new_full``) where ``torch.tensor`` of the sizes fixes them at the traced ones. The
    same operations and values otherwise."""
    from transformers.models.mask2former.modeling_mask2former import multi_scale_deformable_attention

    from .models.modeling_deformable_attention import deformable_attention_projections

    if reference_points.shape[-1] != 2:
        raise ExportError("the deformable attention of this model takes boxes as reference points: not exportable")
    value, sampling_offsets, attention_weights = deformable_attention_projections(
        self, hidden_states, encoder_hidden_states, attention_mask, position_embeddings
    )
    # (levels, 2): each level's (width, height)
    normaliser = torch.stack(
        [
            torch.stack([sampling_offsets.new_full((), width), sampling_offsets.new_full((), height)])
            for height, width in spatial_shapes_list
        ]
    )
    sampling_locations = (
        reference_points[:, :, None, :, None, :] + sampling_offsets / normaliser[None, None, None, :, None, :]
    )
    output = multi_scale_deformable_attention(value, spatial_shapes_list, sampling_locations, attention_weights)
    return self.output_proj(output), attention_weights


def _size_branch_free_methods() -> dict[type, tuple[str, Callable]]:
    """transformers' modules whose methods branch on sizes or fix them, with a replacement that does not."""
    from transformers.models.mask2former import modeling_mask2former
    from transformers.models.swin import modeling_swin

    from .models.modeling_deformable_attention import GatheringMultiscaleDeformableAttention

    return {
        modeling_swin.SwinPatchEmbeddings: ("maybe_pad", _always_padding_patch_embeddings),
        modeling_swin.SwinPatchMerging: ("maybe_pad", _always_padding_patch_merging),
        modeling_swin.SwinLayer: ("forward", _traceable_swin_layer),
        modeling_mask2former.Mask2FormerPixelDecoderEncoderOnly: ("get_reference_points", _traceable_reference_points),
        modeling_mask2former.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention: (
            "forward",
            _traceable_deformable_attention,
        ),
        # the deformable pixel decoders' own (transformers' module, gathering at eager CPU inference)
        GatheringMultiscaleDeformableAttention: ("forward", _traceable_deformable_attention),
    }


@contextmanager
def traceable_sizes(model: nn.Module) -> Iterator[None]:
    """Inside, ``model`` computes the same function with nothing fixed at its input's size: adaptive average pooling
    as :class:`TraceableAdaptiveAvgPool2d`, transformers' Swin (VWFormer's and VW-Mask(2)Former's backbone) padding
    and cropping unconditionally, and transformers' deformable-attention encoder (the Mask2Former pixel decoders)
    building its reference points and offset normaliser from symbolic sizes. A branch on a size, or a size read into a
    constant, would be fixed for the traced size in an export. The model is restored on exit."""
    replaced_modules, replaced_lists, patched_methods = [], [], []
    methods = _size_branch_free_methods()
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.AdaptiveAvgPool2d:
                output_size = child.output_size
                output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
                if None in output_size:
                    continue  # keeps that input side: no size-dependent window
                replacement = TraceableAdaptiveAvgPool2d(output_size)
                replaced_modules.append((parent, name, child))
                setattr(parent, name, replacement)
                # modules that call their children through a plain list (transformers' UperNet pooling blocks)
                for attribute in vars(parent).values():
                    if isinstance(attribute, list):
                        for index, entry in enumerate(attribute):
                            if entry is child:
                                attribute[index] = replacement
                                replaced_lists.append((attribute, index, child))
        if type(parent) in methods:
            name, function = methods[type(parent)]
            patched_methods.append((parent, name))
            setattr(parent, name, types.MethodType(function, parent))
    try:
        yield
    finally:
        for parent, name, child in replaced_modules:
            setattr(parent, name, child)
        for attribute, index, child in replaced_lists:
            attribute[index] = child
        for module, name in patched_methods:
            delattr(module, name)


def prepare_for_export(model: nn.Module) -> LogitsModel:
    """The model in eval mode with eager attention, wrapped to return its exported outputs only (a tensor or a tuple:
    :class:`LogitsModel`)."""
    model.eval()
    if hasattr(model, "set_attn_implementation"):
        # SDPA's output strides differ between the traced kernel and its decomposition, which breaks the re-traced
        # reshape of the attention output when torch.onnx decomposes the program
        model.set_attn_implementation("eager")
    return LogitsModel(model)


def export_program(model: nn.Module, batch_size: int = 1) -> torch.export.ExportedProgram:
    """``torch.export`` of ``pixel_values -> logits`` (a tuple of :func:`export_output_names` for a
    mask-classification model) for ``batch_size`` images of any height and width."""
    wrapped = prepare_for_export(model)
    pixel_values = example_input(model, batch_size)
    # size-oblivious tracing: sizes of 1 are not special-cased, which would add guards fixing a size in the program
    with (
        torch.no_grad(),
        traceable_sizes(model),
        torch.fx.experimental._config.patch(backed_size_oblivious=True),
    ):
        return torch.export.export(wrapped, (pixel_values,), dynamic_shapes=dynamic_shapes())


def _deform_conv2d_to_onnx(
    input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups,
    offset_groups, use_mask,
):  # fmt: skip
    """``torchvision::deform_conv2d`` as ONNX ``DeformConv`` (opset 19): the same offset layout (per kernel tap,
    ``(dy, dx)``) and modulation mask."""
    from onnxscript import opset19

    return opset19.DeformConv(
        input,
        weight,
        offset,
        bias,
        mask if use_mask else None,
        dilations=[dilation_h, dilation_w],
        group=groups,
        offset_group=offset_groups,
        pads=[pad_h, pad_w, pad_h, pad_w],
        strides=[stride_h, stride_w],
    )


def exported_runner(output_format: str, path: str | os.PathLike) -> Callable[[torch.Tensor], tuple] | None:
    """``pixel_values -> (every output of the export, in order)`` of an exported file: onnxruntime for ONNX (None
    when it is not installed), the loaded program for torch.export."""
    if output_format == "torch_export":
        program = torch.export.load(str(path)).module()

        def run_program(pixel_values: torch.Tensor) -> tuple:
            outputs = program(pixel_values)
            return outputs if isinstance(outputs, tuple) else (outputs,)

        return run_program
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda pixel_values: tuple(
        torch.from_numpy(output) for output in session.run(None, {"pixel_values": pixel_values.numpy()})
    )


def verify_export(
    model: nn.Module, output_format: str, path: str | os.PathLike, batch_size: int = 1, sides=VERIFY_SIDES
) -> bool:
    """Checks that the exported file computes the model's outputs (:func:`export_output_names`) on ``batch_size``
    images of each of ``sides``, each within :data:`VERIFY_TOLERANCE` of its own largest value; :class:`ExportError`
    names the first output and size where it does not. False when it cannot be run (onnxruntime missing)."""
    run = exported_runner(output_format, path)
    if run is None:
        return False
    names = export_output_names(model)
    generator = torch.Generator().manual_seed(1)
    for side in sides:
        pixel_values = torch.randn(batch_size, config_channels(model.config), *side, generator=generator)
        shape = "x".join(str(side) for side in pixel_values.shape)
        with torch.no_grad():
            model_outputs = model(pixel_values=pixel_values, return_dict=True)
            try:
                exported = run(pixel_values)
            except Exception as error:  # onnxruntime's and torch.export's failures have no common type
                raise ExportError(
                    f"the {output_format} export of this model fails on an input of {shape} "
                    f"({first_line(error)[:300]}): it does "
                    "not export with dynamic sizes"
                ) from error
        if len(exported) != len(names):
            raise ExportError(
                f"the {output_format} export of this model gives {len(exported)} outputs where {len(names)} were "
                f"exported ({', '.join(names)})"
            )
        for name, output in zip(names, exported):
            expected = model_outputs[name]
            if output.shape != expected.shape:
                raise ExportError(
                    f"the {output_format} export of this model returns {name} of shape {tuple(output.shape)} where "
                    f"the model returns {tuple(expected.shape)} on an input of {shape}: it does not export with "
                    "dynamic sizes"
                )
            difference = (output - expected).abs().max().item()
            if not difference <= VERIFY_TOLERANCE * max(1.0, expected.abs().max().item()):
                raise ExportError(
                    f"the {output_format} export of this model computes other {name} than the model on an input of "
                    f"{shape} (largest difference {difference:.3g}): it does not export with dynamic sizes"
                )
    return True


def custom_translation_table() -> dict[Callable, Callable]:
    """The ONNX translations torch's exporter lacks: torchvision's deformable convolution (FaPN)."""
    table = {}
    try:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    except ImportError:
        return table
    table[torch.ops.torchvision.deform_conv2d.default] = _deform_conv2d_to_onnx
    return table


def export_onnx(model: nn.Module, path: str | os.PathLike, batch_size: int = 1) -> None:
    """Writes ``pixel_values -> logits`` (plus the query outputs of a mask-classification model:
    :func:`export_output_names`) for ``batch_size`` images of any size as one ONNX file, weights inside."""
    save_onnx(export_program(model, batch_size), path, export_output_names(model))


def save_onnx(
    program: torch.export.ExportedProgram, path: str | os.PathLike, output_names: tuple[str, ...] = ("logits",)
) -> None:
    """Writes an :func:`export_program` as one ONNX file, weights inside, its outputs named ``output_names`` (the
    model's :func:`export_output_names`: one name per output of the program, checked)."""
    outputs = len(program.graph_signature.user_outputs)
    if outputs != len(output_names):
        raise ValueError(f"the program has {outputs} outputs, {len(output_names)} names given ({output_names})")
    onnx_program = torch.onnx.export(
        program,
        input_names=["pixel_values"],
        output_names=list(output_names),
        opset_version=ONNX_OPSET,
        dynamo=True,
        custom_translation_table=custom_translation_table(),
        verbose=False,
    )
    onnx_program.save(str(path), external_data=False)


def export_torch(model: nn.Module, path: str | os.PathLike, batch_size: int = 1) -> None:
    """Writes the ``torch.export`` program of ``pixel_values -> logits`` (a tuple with the query outputs after it for
    a mask-classification model: :func:`export_output_names`), ``batch_size`` images of any size, at
    ``path``: ``torch.export.save`` into memory, then one Python write (torch's zip writer, failing on a full disk,
    threw from a destructor and aborted the process: SIGABRT, no message)."""
    import io

    archive = io.BytesIO()
    torch.export.save(export_program(model, batch_size), archive)
    Path(path).write_bytes(archive.getbuffer())


EXPORTERS = {"onnx": export_onnx, "torch_export": export_torch}


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def _error_text(error: BaseException) -> str:
    """``error``'s message in one line: huggingface_hub's config validation errors put the cause on a second line
    (``Validation error for field 'embed_dim':`` / ``TypeError: Field 'embed_dim' expected int, ...``), kept here;
    other errors give their first line."""
    from huggingface_hub.errors import StrictDataclassError

    if isinstance(error, StrictDataclassError):
        return " ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())[:500]
    return first_line(error)


def load_segmentation_model(folder: str | os.PathLike, trust_remote_code: bool = False) -> nn.Module:
    """The semantic-segmentation model saved in ``folder``, in float32 whatever dtype it was saved in (the exported
    graph takes and computes float32); :class:`ExportError` when there is none. A folder whose config names its own
    code (``auto_map``) for a model type neither transformers nor hf_semseg provides is refused unless
    ``trust_remote_code`` (transformers' interactive question is never asked: the command line must not wait on
    stdin); with it, the folder's code runs only for such a model type (hf_semseg's own folders, which carry a copy of
    its code, load hf_semseg's)."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig, AutoModelForSemanticSegmentation
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES

    import hf_semseg  # noqa: F401  (registers the families with the Auto classes)

    folder = Path(folder)
    if folder.is_file():
        raise ExportError(f"--model {folder}: is a file (expected a model folder written by save_pretrained)")
    if not folder.is_dir():
        raise ExportError(f"--model {folder}: no such folder (expected a model folder written by save_pretrained)")
    if not (folder / "config.json").is_file():
        raise ExportError(f"--model {folder}: no config.json (expected a model folder written by save_pretrained)")
    try:
        raw_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ExportError(f"--model {folder}: config.json does not load ({first_line(error)})") from error
    if not isinstance(raw_config, dict):
        raise ExportError(f"--model {folder}: config.json holds a {type(raw_config).__name__} (expected an object)")
    model_type, auto_map = raw_config.get("model_type"), raw_config.get("auto_map")
    custom_code = isinstance(auto_map, dict) and bool(auto_map) and model_type not in CONFIG_MAPPING
    if custom_code and not trust_remote_code:
        raise ExportError(
            f"--model {folder}: config.json's model type {model_type!r} is the folder's own code (auto_map), not a "
            "model transformers or hf_semseg provides; pass --trust_remote_code to run it (only for a folder you trust)"
        )
    # the folder's own code only where nothing here provides the model type: hf_semseg's saved folders carry a copy of
    # its code (auto_map), whose classes traceable_sizes would not recognise
    trust_remote_code = trust_remote_code and custom_code
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError, OSError, StrictDataclassError) as error:  # a key of the wrong type too
        raise ExportError(f"--model {folder}: config.json does not load ({_error_text(error)})") from error
    custom_segmentation = trust_remote_code and "AutoModelForSemanticSegmentation" in (auto_map or {})
    if config.model_type not in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES and not custom_segmentation:
        raise ExportError(
            f"--model {folder}: model type {config.model_type!r} is not a semantic-segmentation model (expected one "
            "that AutoModelForSemanticSegmentation loads)"
        )
    saved_dtype = getattr(config, "dtype", None)
    saved_dtype = str(saved_dtype).removeprefix("torch.") if saved_dtype is not None else None
    from safetensors import SafetensorError

    try:
        with quiet_progress_bars():  # the command line's stderr is for errors
            # float32 whatever the folder's dtype: the example input and the documented graph are float32
            model = AutoModelForSemanticSegmentation.from_pretrained(
                folder, dtype=torch.float32, trust_remote_code=trust_remote_code
            )
    except (OSError, ValueError, RuntimeError, SafetensorError, StrictDataclassError) as error:
        # a missing, corrupt or mismatched file
        raise ExportError(f"--model {folder}: the model's weights do not load ({_error_text(error)})") from error
    if saved_dtype not in (None, "float32"):
        print(f"note: --model {folder} is saved in {saved_dtype}; it is exported in float32", file=sys.stderr)
    return model


def side_file_paths(output: Path) -> dict[str, Path]:
    """Where the side files of an export to ``output`` go, named after the output's full file name so that exports
    of one model to ``semask.onnx`` and ``semask.pt2`` side by side keep their own: ``processor``
    (``semask.onnx.preprocessor_config.json``, the image processor's settings) and ``labels``
    (``semask.onnx.labels.json``: the labels, the graph's input / output names and shapes)."""
    return {
        "processor": output.with_name(f"{output.name}.preprocessor_config.json"),
        "labels": output.with_name(f"{output.name}.labels.json"),
    }


def side_files(
    model: nn.Module, folder: Path, output: Path, output_format: str, batch_size: int = 1
) -> dict[Path, bytes]:
    """The files written next to the export: the image processor's settings (the folder's own file) and the labels
    with the graph's input / output names."""
    files, paths = {}, side_file_paths(output)
    processor_config = folder / "preprocessor_config.json"
    if processor_config.is_file():
        files[paths["processor"]] = processor_config.read_bytes()
    config = model.config
    outputs = export_output_shapes(model, batch_size)
    labels = {
        "format": output_format,
        "model_type": config.model_type,
        "input": {"name": "pixel_values", "shape": [batch_size, config_channels(config), "height", "width"]},
        # the segmentation scores (the first output); "outputs" lists every output of the graph, in order
        "output": {"name": "logits", "shape": outputs["logits"]},
        "outputs": [{"name": name, "shape": shape} for name, shape in outputs.items()],
        "size_divisibility": int(getattr(config, "size_divisibility", 0) or 0),
        # the weight width an any-precision model was exported at (its weights are fixed in the graph); null: float
        "weight_bits": active_weight_bits(model),
        "id2label": {str(index): label for index, label in sorted(config.id2label.items())},
    }
    files[paths["labels"]] = (json.dumps(labels, indent=2) + "\n").encode()
    return files


def export_output_shapes(model: nn.Module, batch_size: int) -> dict[str, list]:
    """Each exported output's shape (:func:`export_output_names`), the sizes that follow the input named: the query
    outputs' number of queries is the config's (``num_queries``, or its decoder config's)."""
    config = model.config
    map_shape = ["logits_height", "logits_width"]
    shapes = {"logits": [batch_size, config.num_labels, *map_shape]}
    if export_output_names(model) != ("logits",):
        decoder_config = getattr(config, "decoder_config", None)
        queries = getattr(config, "num_queries", None) or getattr(decoder_config, "num_queries", None) or "num_queries"
        shapes["class_queries_logits"] = [batch_size, queries, config.num_labels + 1]
        shapes["masks_queries_logits"] = [batch_size, queries, *map_shape]
    return shapes


def config_channels(config) -> int:
    return int(getattr(getattr(config, "backbone_config", None) or config, "num_channels", 3))


def check_output(output: Path, output_format: str) -> None:
    """:class:`ExportError` when ``output`` or a side file next to it cannot be written (a folder, a missing or
    read-only parent), or ``output`` has the suffix of the other format (:data:`FORMAT_SUFFIXES`)."""
    if output.is_dir():
        raise ExportError(f"--output {output}: is a folder (expected a file path)")
    suffix = output.suffix.lower()
    for other_format, other_suffix in FORMAT_SUFFIXES.items():
        if other_format != output_format and suffix == other_suffix:
            raise ExportError(
                f"--output {output}: the suffix of a {other_format} file, for an export to {output_format} (expected "
                f"{FORMAT_SUFFIXES[output_format]})"
            )
    for path in side_file_paths(output).values():
        if path.is_dir():
            raise ExportError(f"--output {output}: {path}, where a file goes next to the export, is a folder")
    parent = output.parent
    if not parent.is_dir():
        raise ExportError(f"--output {output}: folder {parent} does not exist (expected an existing, writable folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"--output {output}: folder {parent} is not writable (expected a writable folder)")


def _temporary_path(destination: Path, suffix: str | None = None) -> Path:
    """A new empty file next to ``destination``, hidden, unique and ending with ``suffix`` (``destination``'s by
    default; ``.semask.3f2a...tmp.pt2``: ``torch.export.save`` and ``load`` warn about any other), made as a plain new file is
    (mode 0o666 less the umask), so that the file renamed into place is readable as any other the user writes
    (``mkstemp`` would make it private, 0o600)."""
    suffix = destination.suffix if suffix is None else suffix
    path = destination.parent / f".{destination.stem[:100]}.{secrets.token_hex(8)}.tmp{suffix}"  # fits 255 bytes
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return path


def check_model_files_kept(folder: str | os.PathLike, output: Path) -> None:
    """:class:`ExportError` when ``output`` or one of its side files (:func:`side_file_paths`) is an existing file
    inside the model folder ``folder`` (its weights, its config, ...): the export would replace or remove it."""
    model_folder = Path(folder).resolve()
    for path in (output, *side_file_paths(output).values()):
        if path.exists() and path.resolve().is_relative_to(model_folder):
            where = "" if path == output else f" ({path}, where a file goes next to the export)"
            raise ExportError(
                f"--output {output}: would replace the file {path.resolve()} of the model folder --model {folder}"
                f"{where}; expected a path outside the model folder, or a name none of its files has"
            )


def weight_bits_error(value) -> ExportError:
    """The error for a ``--weight_bits`` value that is not a width an any-precision model computes at."""
    return ExportError(f"--weight_bits {value}: expected a whole number of bits from 1 to {STORAGE_WEIGHT_BITS}")


def export_folder(
    folder: str | os.PathLike,
    output_format: str,
    output: str | os.PathLike,
    batch_size: int = 1,
    trust_remote_code: bool = False,
    weight_bits: int | None = None,
) -> list[Path]:
    """Exports the model saved in ``folder`` as ``output_format`` to ``output`` plus its side files; returns the
    paths written. Every file goes to a temporary name in the destination folder first: on any error nothing is
    left. A side file of an earlier export to ``output`` that this one does not write (the processor settings of a
    model that has none) is removed, so that the side files always describe the export next to them. An output or
    side file that would replace a file of the model folder is refused before any work. ``weight_bits``: the width
    an any-precision model is exported at (its ``set_weight_bits``; None: the width its folder records, by default
    its widest); refused for a float model."""
    if output_format not in FORMATS:
        raise ExportError(f"--format {output_format}: unknown format (expected one of {', '.join(FORMATS)})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"--batch_size {batch_size}: expected a whole number of images, at least 1")
    if weight_bits is not None:
        try:
            check_weight_width(weight_bits)
        except ValueError:
            raise weight_bits_error(weight_bits) from None
    output = Path(output)
    try:  # on Python 3.11 the path checks raise for a name too long or a folder that cannot be entered
        check_output(output, output_format)
        check_model_files_kept(folder, output)
    except OSError as error:
        path = error.filename or output
        raise ExportError(f"--output {output}: {path} cannot be checked ({error.strerror or error})") from None
    try:
        model = load_segmentation_model(folder, trust_remote_code=trust_remote_code)
    except OSError as error:
        path = error.filename or folder
        raise ExportError(f"--model {folder}: {path} cannot be read ({error.strerror or error})") from None
    if weight_bits is not None:
        if active_weight_bits(model) is None:
            raise ExportError(
                f"--weight_bits {weight_bits}: {folder} holds a float model (config.weight_bits is None); expected "
                "an any-precision model (saved after model.to_any_precision(...))"
            )
        model.set_weight_bits(weight_bits)
    written = {}  # final path -> temporary path
    try:
        files = side_files(model, Path(folder), output, output_format, batch_size)
        # an earlier export's side file that this export does not write: removed when this one is put in place
        stale = [path for path in side_file_paths(output).values() if path not in files and path.is_file()]
        for path, content in files.items():
            temporary = written[path] = _temporary_path(path)
            temporary.write_bytes(content)
        # the format's own suffix whatever the output's is (torch.export warns about a .pt2 archive named otherwise)
        temporary = written[output] = _temporary_path(output, FORMAT_SUFFIXES[output_format])
        try:
            EXPORTERS[output_format](model, temporary, batch_size=batch_size)
        except Exception as error:
            if _is_storage_error(error):  # torch.export's zip writer on a full disk: a RuntimeError
                raise
            # a model that does not trace (transformers' DPT, say): its error in one line, not torch's traceback
            raise ExportError(
                f"--model {folder}: {type(model).__name__} does not export as {output_format} "
                f"({type(error).__name__}: {_error_text(error)})"
            ) from error
        try:
            verified = verify_export(model, output_format, temporary, batch_size)
        except ExportError as error:
            raise ExportError(f"--model {folder}: {error}") from error
        if not verified:
            print(f"note: onnxruntime is not installed: {output} was not checked", file=sys.stderr)
        # stale side files first, the export itself last: its presence means its side files are there too
        for path in stale:
            path.unlink(missing_ok=True)
        for path in sorted(written, key=lambda path: path == output):
            os.replace(written[path], path)
    except BaseException as error:
        for temporary in written.values():
            temporary.unlink(missing_ok=True)
        if _is_storage_error(error):  # a folder the permission bits let through (root), a full disk, ...
            reason = getattr(error, "strerror", None) or first_line(error)
            raise ExportError(f"--output {output}: cannot be written in {output.parent} ({reason})") from error
        raise
    return list(written)


def main(argv: list[str] | None = None) -> int:
    # a usage error (a missing or unknown option) is one `error:` line and exit status 1, as the converters'
    parser = _ArgumentParser(
        prog="python -m hf_semseg.export", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--model", required=True, help="a model folder written by save_pretrained")
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--output", required=True, help="the file to write (.onnx or .pt2)")
    parser.add_argument("--batch_size", default="1", help="the number of images the export takes per call (1)")
    parser.add_argument(
        "--weight_bits",
        default=None,
        help="an any-precision model's weight width for the export, 1 to 8 bits (default: the width its folder "
        "records, by default its widest); labels.json records the width",
    )
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="run the model folder's own code where its config names some (auto_map) for a model type neither "
        "transformers nor hf_semseg provides; only for a folder you trust (without it such a folder is refused)",
    )
    arguments = parser.parse_args(argv)
    try:
        try:
            batch_size = int(arguments.batch_size)
        except ValueError:
            raise ExportError(
                f"--batch_size {arguments.batch_size}: expected a whole number of images, at least 1"
            ) from None
        weight_bits = arguments.weight_bits
        if weight_bits is not None:
            try:
                weight_bits = int(weight_bits)
            except ValueError:
                raise weight_bits_error(weight_bits) from None
        with terminate_with_cleanup():  # SIGTERM cleans up as an interrupt does
            paths = export_folder(
                arguments.model,
                arguments.format,
                arguments.output,
                batch_size,
                trust_remote_code=arguments.trust_remote_code,
                weight_bits=weight_bits,
            )
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"error: terminated (SIGTERM); {arguments.output} was not written", file=sys.stderr)
        return TERMINATED_STATUS
    except KeyboardInterrupt:
        print(f"error: interrupted; {arguments.output} was not written", file=sys.stderr)
        return INTERRUPTED_STATUS
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
