"""Key mapping of the original VW-MaskFormer / VW-Mask2Former detectron2 checkpoints (yan-hao-tian/VW, folders
``MaskFormer/`` and ``Mask2Former/``) onto :class:`VWMaskFormerForSemanticSegmentation` and
:class:`VWMask2FormerForSemanticSegmentation`.

Pure functions, no command line. Read top to bottom:

- :func:`detect_vw_head` tells the three layouts apart from the keys: ``"vw_maskformer"`` (VWTransformerPixelDecoder
  + DETR ``TransformerPredictor``), ``"vw"`` (VW-Mask2Former, the repository's ``BasePixelDecoder``) and
  ``"vw_deformable"`` (``VWDeformAttnPixelDecoder``);
- :data:`D2_SWIN_RENAMES` maps detectron2's Swin (``D2SwinTransformer``: ``backbone.layers.i.blocks.j.attn.qkv``, ...)
  onto transformers' ``SwinBackbone``: the fused ``qkv`` is split into q/k/v, ``proj`` becomes ``o_proj``,
  ``norm1/2`` ``layernorm_before/after``, the stage output norms ``norm{i}`` ``hidden_states_norms.stage{i+1}``;
  PatchMerging keeps its channel order (the original Swin concatenation, as transformers');
- :func:`vw_block_renames` maps the VW block of either naming (``attn``/``ds``/``cat``/``short_path``/``image_pool``
  in VW-MaskFormer, the same with ``_0`` in VW-Mask2Former); the one GroupNorm(32, 512) the original registers under
  six or seven names (:data:`TIED_GROUP_NORM`) is loaded once, from ``linear_c4.norm.*``, after checking that every
  other name holds the same tensor;
- the transformer decoders and the deformable encoder go through the SeMask converters' tables
  (:data:`hf_semseg.conversion.semask_maskformer.MASKFORMER_HEAD_RENAMES`,
  :data:`hf_semseg.conversion.semask_mask2former.HEAD_RENAMES`): the same original modules onto the same
  transformers modules;
- :func:`convert_vw_d2_state_dict` applies all of it and raises a :class:`CheckpointError` (a ``ValueError``) naming
  every key it cannot account for; :func:`vw_head_fields` reads every hyper-parameter the tensors hold as config
  arguments.
"""

import re
from pathlib import Path

import torch
from transformers import SwinConfig

from ..models.configuration_vw_mask2former import VWMask2FormerConfig
from ..models.configuration_vw_maskformer import VWMaskFormerConfig
from ..variants import FOUR_STAGES
from .common import (
    DETECTRON2,
    CheckpointError,
    check_relative_position_index,
    expect_shape,
    find_rename,
    indices,
    raise_on_unmapped,
    read_checkpoint,
    relative_position_window,
    split_fused_qkv,
    tensor_shape,
    window_size_from_table,
)
from .semask_mask2former import HEAD_RENAMES as MASK2FORMER_HEAD_RENAMES
from .semask_mask2former import SELF_ATTENTION_IN_PROJ, check_tied_copy, read_no_object_weight
from .semask_maskformer import HF_ATTENTION, MASKFORMER_HEAD_RENAMES, PACKED_ATTENTION


KIND = "VW-MaskFormer / VW-Mask2Former (detectron2)"
PIXEL_DECODER = r"sem_seg_head\.pixel_decoder\."
HF_BACKBONE = "model.pixel_level_module.encoder."
HF_PIXEL_DECODER = "model.pixel_level_module.decoder."
HF_VW = HF_PIXEL_DECODER + "vw."
# the d2 meta-architecture's normalisation buffers (non-persistent in the original, but tolerated when present)
PIXEL_STATISTICS = ("pixel_mean", "pixel_std")
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"

#: the three heads: what each is called and the model config it converts to
VW_HEADS = {
    "vw_maskformer": ("VW-MaskFormer", VWMaskFormerConfig),
    "vw": ("VW-Mask2Former", VWMask2FormerConfig),
    "vw_deformable": ("VW-Mask2Former (deformable attention)", VWMask2FormerConfig),
}

# --------------------------------------------------------------------------------------------------------------------
# Rename tables
# --------------------------------------------------------------------------------------------------------------------

_BLOCK = r"backbone\.layers\.(\d+)\.blocks\.(\d+)\."
_HF_BLOCK = HF_BACKBONE + r"swin.encoder.layers.\1.blocks.\2."

# (original key pattern, hf key template) - applied with re.fullmatch, first match wins; a None template marks a key
# handled by tensor surgery (:func:`_convert_backbone_key`)
D2_SWIN_RENAMES: list[tuple[str, str | None]] = [
    (r"backbone\.patch_embed\.proj\.(weight|bias)", HF_BACKBONE + r"swin.embeddings.patch_embeddings.projection.\1"),
    (r"backbone\.patch_embed\.norm\.(weight|bias)", HF_BACKBONE + r"swin.embeddings.norm.\1"),
    (_BLOCK + r"norm1\.(weight|bias)", _HF_BLOCK + r"layernorm_before.\3"),
    (_BLOCK + r"norm2\.(weight|bias)", _HF_BLOCK + r"layernorm_after.\3"),
    (_BLOCK + r"attn\.qkv\.(weight|bias)", None),  # split into q_proj / k_proj / v_proj
    (_BLOCK + r"attn\.proj\.(weight|bias)", _HF_BLOCK + r"attention.o_proj.\3"),
    (
        _BLOCK + r"attn\.relative_position_bias_table",
        _HF_BLOCK + "attention.relative_position_bias.relative_position_bias_table",
    ),
    (_BLOCK + r"attn\.relative_position_index", None),  # checked, dropped (transformers rebuilds it)
    (_BLOCK + r"mlp\.fc([12])\.(weight|bias)", _HF_BLOCK + r"mlp.fc\3.\4"),
    (
        r"backbone\.layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)",
        HF_BACKBONE + r"swin.encoder.layers.\1.downsample.\2",
    ),
    (r"backbone\.norm(\d+)\.(weight|bias)", None),  # stage output norms, index shifted by one
]


def vw_block_names(head: str) -> dict[str, str]:
    """The original module names of the VW block's branches in a ``head`` checkpoint (regex-escaped)."""
    suffix = "" if head == "vw_maskformer" else "_0"
    return {
        "attn": rf"attn{suffix}",
        "ds": rf"ds{suffix}",
        "cat": rf"cat{suffix}",
        "short_path": rf"short_path{suffix}",
        "image_pool": rf"image_pool{suffix}\.1",
    }


def tied_group_norm_pattern(head: str) -> re.Pattern:
    """The names of the block's one GroupNorm(32, 512) other than ``linear_c4.norm`` (the loaded one)."""
    names = vw_block_names(head)
    alternatives = "|".join(
        ["linear_c3", "linear_c2", "linear_fuse", names["short_path"], names["image_pool"], names["cat"]]
    )
    return re.compile(PIXEL_DECODER + rf"({alternatives})\.norm\.(weight|bias)")


def vw_block_renames(head: str) -> list[tuple[str, str | None]]:
    """The pixel decoder's VW keys of a ``head`` checkpoint onto the model's ``decoder.vw`` (and, for ``"vw"``,
    ``decoder.projections``). A None template marks the fused attention projections (split into
    ``query/key/value_proj``)."""
    names = vw_block_names(head)
    renames = [
        (PIXEL_DECODER + r"linear_c([234])\.weight", HF_VW + r"linear_c\1.conv.weight"),
        (PIXEL_DECODER + r"linear_c4\.norm\.(weight|bias)", HF_VW + r"output_norm.\1"),  # the tied GroupNorm
        (PIXEL_DECODER + r"linear_fuse\.weight", HF_VW + "linear_fuse.conv.weight"),
        (PIXEL_DECODER + names["short_path"] + r"\.weight", HF_VW + "short_path.conv.weight"),
        (PIXEL_DECODER + names["image_pool"] + r"\.weight", HF_VW + "image_pool.conv.weight"),
        (PIXEL_DECODER + names["cat"] + r"\.weight", HF_VW + "fuse.conv.weight"),
        (PIXEL_DECODER + names["ds"] + r"\.(\d+)\.(weight|bias)", HF_VW + r"attentions.\1.context_embedding.conv.\2"),
        (
            PIXEL_DECODER + names["ds"] + rf"\.(\d+)\.norm\.{_BN}",
            HF_VW + r"attentions.\1.context_embedding.batch_norm.\2",
        ),
        (PIXEL_DECODER + names["attn"] + r"\.(\d+)\.in_proj_(weight|bias)", None),
        (PIXEL_DECODER + names["attn"] + r"\.(\d+)\.out_proj\.(weight|bias)", HF_VW + r"attentions.\1.output_proj.\2"),
        (PIXEL_DECODER + r"linear_c1\.weight", HF_VW + "linear_c1.conv.weight"),
        (PIXEL_DECODER + rf"linear_c1\.norm\.{_BN}", HF_VW + r"linear_c1.batch_norm.\1"),
        (PIXEL_DECODER + r"low_level_fuse\.weight", HF_VW + "low_level_fuse.conv.weight"),
        (PIXEL_DECODER + r"low_level_fuse\.norm\.(weight|bias)", HF_VW + r"low_level_fuse.norm.\1"),
    ]
    if head == "vw":
        renames += [
            (PIXEL_DECODER + r"proj\.([012])\.weight", HF_PIXEL_DECODER + r"projections.\1.conv.weight"),
            (PIXEL_DECODER + r"proj\.([012])\.norm\.(weight|bias)", HF_PIXEL_DECODER + r"projections.\1.norm.\2"),
        ]
    if head == "vw_deformable":  # the deformable encoder: the SeMask-Mask2Former converter's rules for it
        encoder_prefixes = (PIXEL_DECODER + r"input_proj\.", PIXEL_DECODER + r"transformer\.")
        renames += [rule for rule in MASK2FORMER_HEAD_RENAMES if rule[0].startswith(encoder_prefixes)]
    return renames


def vw_attention_in_proj_pattern(head: str) -> re.Pattern:
    return re.compile(PIXEL_DECODER + vw_block_names(head)["attn"] + r"\.(\d+)\.in_proj_(weight|bias)")


# --------------------------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------------------------


def load_vw_d2_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a detectron2 checkpoint (``{'model': state_dict, ...}``; a bare state dict too) safely
    (:func:`.common.read_checkpoint`); optimizer / scheduler entries are ignored."""
    state_dict, _ = read_checkpoint(path, DETECTRON2, KIND, " - use the VWFormer (mmseg) converter for mmseg ones")
    return state_dict


def detect_vw_head(state_dict: dict[str, torch.Tensor]) -> str:
    """Which VW detectron2 head a state dict holds, from its keys: ``"vw_maskformer"`` (VW pixel decoder with the
    unsuffixed branch names and a DETR ``predictor.transformer``), ``"vw_deformable"`` (``attn_0`` branches and a
    deformable ``pixel_decoder.transformer``) or ``"vw"`` (``attn_0`` branches, ``proj`` multi-scale projections).
    Anything else (no VW block: a stock MaskFormer / Mask2Former or a SeMask checkpoint) is a :class:`CheckpointError`."""

    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in state_dict)

    prefix = "sem_seg_head.pixel_decoder."
    if not has(prefix + "linear_fuse.") or not has(prefix + "low_level_fuse."):
        decoder_keys = [key for key in state_dict if key.startswith(prefix)][:5]
        raise CheckpointError(
            "not a VW pixel decoder (no sem_seg_head.pixel_decoder.linear_fuse / low_level_fuse keys): VW-MaskFormer "
            f"and VW-Mask2Former checkpoints have them; first pixel decoder keys: {decoder_keys or 'none'}"
        )
    if has(prefix + "attn.") and has("sem_seg_head.predictor.transformer."):
        return "vw_maskformer"
    if has(prefix + "attn_0."):
        if has(prefix + "transformer."):
            return "vw_deformable"
        if has(prefix + "proj."):
            return "vw"
    raise CheckpointError(
        "a VW pixel decoder of no known layout: expected attn.* with a DETR predictor (VW-MaskFormer), or attn_0.* "
        "with proj.* (VW-Mask2Former) or with a deformable transformer.* (VW-Mask2Former, deformable attention)"
    )


# --------------------------------------------------------------------------------------------------------------------
# Config fields from the tensors
# --------------------------------------------------------------------------------------------------------------------


def _shape(state_dict: dict, key: str, ndim: int | None = None) -> tuple[int, ...]:
    return tensor_shape(state_dict, key, KIND, ndim)


def swin_backbone_fields(state_dict: dict[str, torch.Tensor]) -> dict:
    """The ``SwinConfig`` arguments the ``backbone.*`` tensors of a D2 Swin hold (patch size, input channels, width,
    depths, heads, window, MLP ratio, q/k/v bias), with the four stages as ``out_features``."""
    embed_dim, num_channels, patch_size, _ = _shape(state_dict, "backbone.patch_embed.proj.weight", 4)
    stages = indices(state_dict, r"backbone\.layers\.(\d+)\.")
    if stages != list(range(len(stages))):
        raise CheckpointError(f"the Swin stages of the checkpoint are numbered {stages}, not 0 ... S-1")
    depths = [len(indices(state_dict, rf"backbone\.layers\.{stage}\.blocks\.(\d+)\.")) for stage in stages]
    table = "backbone.layers.{}.blocks.0.attn.relative_position_bias_table"
    num_heads = [_shape(state_dict, table.format(stage), 2)[1] for stage in stages]
    window_size = window_size_from_table(_shape(state_dict, table.format(0))[0], table.format(0))
    mlp_hidden = _shape(state_dict, "backbone.layers.0.blocks.0.mlp.fc1.weight", 2)[0]
    if any(key.startswith("backbone.absolute_pos_embed") for key in state_dict):
        raise CheckpointError("backbone.absolute_pos_embed: a Swin with APE, which no released VW model uses")
    return {
        "patch_size": patch_size,
        "num_channels": num_channels,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": num_heads,
        "window_size": window_size,
        "mlp_ratio": mlp_hidden / embed_dim,
        "qkv_bias": "backbone.layers.0.blocks.0.attn.qkv.bias" in state_dict,
        "out_features": list(FOUR_STAGES),
    }


def _check_vw_widths(state_dict: dict[str, torch.Tensor], head: str) -> None:
    """The VW block's hard-coded widths (512 inside, 48 low-level, 256 mask features) and branch count."""
    names = vw_block_names(head)
    prefix = "sem_seg_head.pixel_decoder."
    branches = 4 if head == "vw_deformable" else 5  # short path, [image pool,] three attentions
    for name, expected, what in (
        ("linear_fuse", (512, 1536, 1, 1), "the VW fusion of three 512-channel maps"),
        ("low_level_fuse", (256, 560, 1, 1), "512 + 48 channels fused into the 256-channel mask features"),
        (names["cat"], (512, 512 * branches, 1, 1), f"the fusion of the VW block's {branches} branches"),
    ):
        key = prefix + name + ".weight"
        _shape(state_dict, key)
        expect_shape(key, state_dict[key], expected, what)
    ratios = [
        _shape(state_dict, prefix + names["ds"] + f".{j}.weight", 4)[-1]
        for j in indices(state_dict, re.escape(prefix) + names["ds"] + r"\.(\d+)\.")
    ]
    if ratios != [2, 4, 8]:
        raise CheckpointError(f"VW context convolutions of kernel {ratios}; the original's ratios are [2, 4, 8]")


def vw_head_fields(state_dict: dict[str, torch.Tensor]) -> dict:
    """The config arguments the tensors of a VW detectron2 checkpoint hold (the class is
    ``VW_HEADS[detect_vw_head(state_dict)][1]``):

    - every head: ``backbone_config`` (a ``SwinConfig``, :func:`swin_backbone_fields`; drop-path 0.3 as released),
      ``num_labels`` (``class_embed`` rows - 1), ``no_object_weight`` (``criterion.empty_weight``, when it holds
      values);
    - VW-Mask2Former: ``pixel_decoder_type``, ``hidden_dim`` and ``num_queries`` (``query_feat``),
      ``decoder_layers`` (the masked-attention layers + 1, as DEC_LAYERS), ``dim_feedforward``,
      ``enforce_input_projection`` (input projections present although ``feature_size`` = ``hidden_dim``); with
      deformable attention also ``encoder_layers``, ``encoder_feedforward_dim`` and ``num_attention_heads``
      (``sampling_offsets`` rows = heads x 3 levels x 4 points x 2);
    - VW-MaskFormer: ``decoder_config`` with ``d_model``, ``num_queries``, ``decoder_layers`` and
      ``decoder_ffn_dim``.

    Not in the weights: VW-MaskFormer's VW heads and short-cut (NHEADS, SHORT_CUT), the transformer decoder's heads
    (except the deformable encoder's, which are also the decoder's), the dropouts, the padding multiple and the loss
    weights. The VW block's hard-coded widths are checked. Raises :class:`CheckpointError` naming a missing key or an
    inconsistent shape."""
    head = detect_vw_head(state_dict)
    _check_vw_widths(state_dict, head)
    num_labels = _shape(state_dict, "sem_seg_head.predictor.class_embed.weight", 2)[0] - 1
    fields: dict = {
        "backbone_config": SwinConfig(**swin_backbone_fields(state_dict), drop_path_rate=0.3),
        "num_labels": num_labels,
    }
    mask_embedding = _shape(state_dict, "sem_seg_head.predictor.mask_embed.layers.2.weight", 2)[0]
    if mask_embedding != 256:
        raise CheckpointError(
            f"sem_seg_head.predictor.mask_embed.layers.2.weight: {mask_embedding} mask-embedding channels; the VW "
            "pixel decoders make 256-channel mask features"
        )
    if head == "vw_maskformer":
        num_queries, hidden_size = _shape(state_dict, "sem_seg_head.predictor.query_embed.weight", 2)
        layers = indices(state_dict, r"sem_seg_head\.predictor\.transformer\.decoder\.layers\.(\d+)\.")
        if not layers or layers != list(range(len(layers))):
            raise CheckpointError(f"the DETR decoder layers of the checkpoint are numbered {layers}, not 0 ... L-1")
        ffn = _shape(state_dict, "sem_seg_head.predictor.transformer.decoder.layers.0.linear1.weight", 2)[0]
        fields["decoder_config"] = {
            "d_model": hidden_size,
            "num_queries": num_queries,
            "decoder_layers": len(layers),
            "decoder_ffn_dim": ffn,
        }
    else:
        num_queries, hidden_dim = _shape(state_dict, "sem_seg_head.predictor.query_feat.weight", 2)
        layers = indices(state_dict, r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.")
        fields.update(
            pixel_decoder_type=head,
            hidden_dim=hidden_dim,
            num_queries=num_queries,
            decoder_layers=len(layers) + 1,
            dim_feedforward=_shape(state_dict, "sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight", 2)[0],
            enforce_input_projection=hidden_dim == 256
            and any(key.startswith("sem_seg_head.predictor.input_proj.") for key in state_dict),
        )
        if head == "vw_deformable":
            encoder = "sem_seg_head.pixel_decoder.transformer.encoder.layers."
            sampling_rows = _shape(state_dict, encoder + "0.self_attn.sampling_offsets.weight", 2)[0]
            if sampling_rows % 24:
                raise CheckpointError(
                    f"{encoder}0.self_attn.sampling_offsets.weight has {sampling_rows} rows, not heads x 3 levels x 4 "
                    "points x 2"
                )
            fields.update(
                encoder_layers=len(indices(state_dict, re.escape(encoder) + r"(\d+)\.")),
                encoder_feedforward_dim=_shape(state_dict, encoder + "0.linear1.weight", 2)[0],
                num_attention_heads=sampling_rows // 24,
            )
    no_object_weight = read_no_object_weight(state_dict, num_labels)
    if no_object_weight is not None:
        fields["no_object_weight"] = no_object_weight
    return fields


# --------------------------------------------------------------------------------------------------------------------
# Key conversion
# --------------------------------------------------------------------------------------------------------------------


def _stage_channels(state_dict: dict, stage: str) -> int | None:
    norm = state_dict.get(f"backbone.layers.{stage}.blocks.0.norm1.weight")
    return norm.shape[0] if norm is not None and norm.ndim == 1 else None


def _convert_backbone_key(key: str, tensor: torch.Tensor, state_dict: dict) -> dict[str, torch.Tensor] | None:
    """One ``backbone.*`` key -> its converted tensors (empty for a dropped buffer); None when no rule matches."""
    known, new_key = find_rename(key, D2_SWIN_RENAMES)
    if not known:
        return None
    if new_key is not None:
        return {new_key: tensor}
    if match := re.fullmatch(_BLOCK + r"attn\.qkv\.(weight|bias)", key):
        stage, block, kind = match.groups()
        prefix = f"{HF_BACKBONE}swin.encoder.layers.{stage}.blocks.{block}.attention"
        return split_fused_qkv(key, tensor, prefix, kind, dim=_stage_channels(state_dict, stage))
    if re.fullmatch(_BLOCK + r"attn\.relative_position_index", key):
        check_relative_position_index(key, tensor, relative_position_window(state_dict, key))
        return {}
    stage, kind = re.fullmatch(r"backbone\.norm(\d+)\.(weight|bias)", key).groups()
    return {f"{HF_BACKBONE}hidden_states_norms.stage{int(stage) + 1}.{kind}": tensor}


def convert_vw_d2_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames every key of a VW detectron2 state dict (any of the three heads, :func:`detect_vw_head`) onto the
    model's. The fused q/k/v projections (Swin ``qkv``, the VW attentions' and the decoders' ``in_proj``) are split;
    the tied GroupNorm is taken from ``linear_c4.norm.*`` after every other name of it was checked equal; the Swin
    ``relative_position_index`` buffers are checked and dropped. Raises :class:`CheckpointError` naming every key
    without a rule."""
    head = detect_vw_head(state_dict)
    block_renames = vw_block_renames(head)
    tied = tied_group_norm_pattern(head)
    vw_in_proj = vw_attention_in_proj_pattern(head)
    predictor_renames = MASKFORMER_HEAD_RENAMES if head == "vw_maskformer" else MASK2FORMER_HEAD_RENAMES
    query_key = "sem_seg_head.predictor." + ("query_embed" if head == "vw_maskformer" else "query_feat") + ".weight"
    queries = state_dict.get(query_key)
    hidden_size = queries.shape[1] if queries is not None and queries.ndim == 2 else None
    converted: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, tensor in state_dict.items():
        if key in PIXEL_STATISTICS:
            continue
        if key.startswith("backbone."):
            result = _convert_backbone_key(key, tensor, state_dict)
            if result is None:
                unmapped.append(key)
            else:
                converted.update(result)
            continue
        if key.startswith("sem_seg_head.pixel_decoder."):
            if match := tied.fullmatch(key):
                check_tied_copy(state_dict, key, f"sem_seg_head.pixel_decoder.linear_c4.norm.{match.group(2)}")
                continue
            if match := vw_in_proj.fullmatch(key):
                branch, kind = match.groups()
                out_proj = state_dict.get(key.rsplit(".", 1)[0] + ".out_proj.weight")
                width = out_proj.shape[1] if out_proj is not None and out_proj.ndim == 2 else None
                names = ("query_proj", "key_proj", "value_proj")
                prefix = f"{HF_VW}attentions.{branch}"
                converted.update(split_fused_qkv(key, tensor, prefix, kind, names=names, dim=width))
                continue
            known, new_key = find_rename(key, block_renames)
        elif head == "vw_maskformer" and (match := PACKED_ATTENTION.fullmatch(key)):
            layer, attention, kind = match.groups()
            prefix = f"model.transformer_module.decoder.layers.{layer}.{HF_ATTENTION[attention]}"
            converted.update(split_fused_qkv(key, tensor, prefix, kind, dim=hidden_size))
            continue
        elif head != "vw_maskformer" and (match := SELF_ATTENTION_IN_PROJ.fullmatch(key)):
            layer, kind = match.groups()
            prefix = f"model.transformer_module.decoder.layers.{layer}.self_attn"
            converted.update(split_fused_qkv(key, tensor, prefix, kind, dim=hidden_size))
            continue
        else:
            known, new_key = find_rename(key, predictor_renames)
            # the predictor tables also hold pixel-decoder rules (FPN, deformable encoder): never for these keys
        if known and new_key is not None:
            converted[new_key] = tensor
        else:
            unmapped.append(key)
    raise_on_unmapped(unmapped)
    return converted


__all__ = [
    "D2_SWIN_RENAMES",
    "VW_HEADS",
    "convert_vw_d2_state_dict",
    "detect_vw_head",
    "load_vw_d2_checkpoint",
    "swin_backbone_fields",
    "vw_block_renames",
    "vw_head_fields",
]
