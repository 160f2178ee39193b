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
  arguments;
- :func:`infer_config_and_settings` adds the values the weights do not hold (:func:`vw_settings`: VW-MaskFormer's VW
  heads and short-cut, the transformer decoder's heads where no deformable encoder shows them, pre-norm, the padding
  multiple, the training-only values) from the run's detectron2 ``config.yaml`` or the released variant with exactly
  these weights, and refuses a config that contradicts the weights; :func:`convert` and :data:`CONVERTER` are what
  ``conversion/convert_vwformer_d2_to_hf.py`` runs.
"""

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import SwinConfig

from ..models.configuration_vw_mask2former import VW_FEATURE_SIZE, VW_SIZE_MULTIPLE, VWMask2FormerConfig
from ..models.configuration_vw_maskformer import VWMaskFormerConfig
from ..models.modeling_vw_mask2former import VWMask2FormerForSemanticSegmentation
from ..models.modeling_vw_maskformer import VWMaskFormerForSemanticSegmentation
from ..variants import FOUR_STAGES
from .common import (
    DETECTRON2,
    MMSEG_CONVERTERS_HINT,
    CheckpointError,
    Conversion,
    Converter,
    build_conversion,
    check_attention_heads,
    check_four_stages,
    check_no_detr_encoder,
    check_relative_position_index,
    check_swin_heads,
    check_transformers_swin_embedding,
    errors_name_the_file,
    expect_shape,
    find_rename,
    given_id2label,
    indices,
    raise_on_unmapped,
    read_checkpoint,
    relative_position_window,
    released_variant,
    split_fused_qkv,
    tensor_shape,
    window_size_from_table,
)
from .model_card import vw_d2_card_fields
from .run_config import (
    D2_SWIN_PATHS,
    DETECTRON2_HEAD_CHECKS,
    ResolvedSettings,
    Setting,
    boolean,
    check_consistent,
    check_heads_setting,
    check_representable,
    detectron2_pipeline,
    detectron2_run_configs,
    first_value,
    positive_int,
    probability,
    qk_scale_check,
    resolve_settings,
    swin_consistency_checks,
    training_only,
)
from .semask_mask2former import (
    CONFIG_FILE_HELP,
    DECODER_HEADS,
    DROP_PATH,
    MASK2FORMER_LOSS_SETTINGS,
    NO_OBJECT_WEIGHT,
    NO_OBJECT_WEIGHT_KEY,
    SELF_ATTENTION_IN_PROJ,
    check_tied_copy,
    checkpoint_pipeline,
    pixel_statistics,
    read_no_object_weight,
)
from .semask_mask2former import HEAD_RENAMES as MASK2FORMER_HEAD_RENAMES
from .semask_maskformer import (
    DETR_DECODER_HEADS,
    DETR_PRE_NORM,
    HF_ATTENTION,
    MASKFORMER_HEAD_RENAMES,
    MASKFORMER_TRAINING_SETTINGS,
    PACKED_ATTENTION,
)


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


def tied_group_norm_copies(head: str) -> list[str]:
    """The keys of every name of the block's one GroupNorm(32, 512) other than ``linear_c4.norm`` in a ``head``
    checkpoint (weight and bias of six names, five in the deformable decoder, which has no image pool): a checkpoint
    of the original holds them all, equal to ``linear_c4.norm.*``."""
    names = vw_block_names(head)
    modules = ["linear_c3", "linear_c2", "linear_fuse", names["short_path"], names["cat"]]
    if head != "vw_deformable":
        modules.append(names["image_pool"])
    unescaped = [re.sub(r"\\(.)", r"\1", module) for module in modules]
    return [f"sem_seg_head.pixel_decoder.{module}.norm.{kind}" for module in unescaped for kind in ("weight", "bias")]


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
    state_dict, _ = read_checkpoint(path, DETECTRON2, KIND, MMSEG_CONVERTERS_HINT)
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
    check_four_stages(stages, "backbone.layers.N.*")
    depths = [len(indices(state_dict, rf"backbone\.layers\.{stage}\.blocks\.(\d+)\.")) for stage in stages]
    table = "backbone.layers.{}.blocks.0.attn.relative_position_bias_table"
    num_heads = [_shape(state_dict, table.format(stage), 2)[1] for stage in stages]
    check_swin_heads(embed_dim, num_heads, "the relative position bias tables")
    window_size = window_size_from_table(_shape(state_dict, table.format(0))[0], table.format(0))
    mlp_hidden = _shape(state_dict, "backbone.layers.0.blocks.0.mlp.fc1.weight", 2)[0]
    check_transformers_swin_embedding(state_dict, "MODEL.SWIN.APE True", "MODEL.SWIN.PATCH_NORM False", "VW model")
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


#: the backbone levels the deformable VW pixel decoder's encoder reads (DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES in
#: every release), coarsest first as its input projections are numbered; the VW block then runs on res2
DEFORMABLE_LEVELS = ["res3", "res4", "res5"]


def _check_deformable_levels(state_dict: dict[str, torch.Tensor], backbone: SwinConfig) -> None:
    """The deformable encoder's input projections must read res5, res4, res3 (their input channels), the levels
    the converted model feeds it; another DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES is named."""
    channels = {f"res{stage + 2}": backbone.embed_dim * 2**stage for stage in range(4)}
    for index, level in enumerate(reversed(DEFORMABLE_LEVELS)):
        key = f"sem_seg_head.pixel_decoder.input_proj.{index}.0.weight"
        found = _shape(state_dict, key, 4)[1]
        if found != channels[level]:
            raise CheckpointError(
                f"{key}: {found} input channels, but the converted deformable pixel decoder projects {level} "
                f"({channels[level]} channels) there: its encoder reads {DEFORMABLE_LEVELS} "
                "(MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES in every release)"
            )


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
        check_no_detr_encoder(state_dict, "VW-MaskFormer")
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
            heads = sampling_rows // 24
            where = f"sampling_offsets: {sampling_rows} rows = heads x 3 levels x 4 points x 2"
            check_attention_heads("the pixel decoder's deformable attention", VW_FEATURE_SIZE, heads, where)
            check_attention_heads("the masked-attention decoder (the same NHEADS)", hidden_dim, heads, where)
            _check_deformable_levels(state_dict, fields["backbone_config"])
            fields.update(
                encoder_layers=len(indices(state_dict, re.escape(encoder) + r"(\d+)\.")),
                encoder_feedforward_dim=_shape(state_dict, encoder + "0.linear1.weight", 2)[0],
                num_attention_heads=heads,
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
    missing_copies = [key for key in tied_group_norm_copies(head) if key not in state_dict]
    if missing_copies:
        raise CheckpointError(
            f"{missing_copies[0]} is missing ({len(missing_copies)} key{'s' if len(missing_copies) > 1 else ''} of "
            "the VW block's GroupNorm missing): the original registers its one GroupNorm(32, 512) under "
            f"{len(tied_group_norm_copies(head)) // 2 + 1} names, and its checkpoints hold every one of them"
        )
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
        if key in PIXEL_STATISTICS or key == NO_OBJECT_WEIGHT_KEY:
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


# --------------------------------------------------------------------------------------------------------------------
# The values the weights do not hold
# --------------------------------------------------------------------------------------------------------------------


def vw_padding_multiple(value) -> int:
    """The model's ``size_divisibility`` for a run's ``MODEL.MASK_FORMER.SIZE_DIVISIBILITY``: the VW block splits the
    stride-8 map into 8 x 8 windows, so the original runs only on inputs whose padded sides are multiples of 64; on
    those, padding to the least common multiple of the value and 64 gives the identical result. So 64 and its
    multiples are kept, 32 (the released yamls' value; every README command passes 64) becomes 64, 96 becomes 192,
    and 0 (no padding) or a negative value (the Swin backbone's 32) becomes 64."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return VW_SIZE_MULTIPLE if value <= 0 else math.lcm(value, VW_SIZE_MULTIPLE)


def vw_attention_heads(value) -> int:
    """VW-MaskFormer's ``MODEL.SEM_SEG_HEAD.NHEADS``: a positive divisor of the VW block's 512 channels."""
    value = positive_int(value)
    if 512 % value:
        raise ValueError("the VW attention heads must divide the VW block's 512 channels")
    return value


def mask2former_post_norm_only(value) -> bool:
    """PRE_NORM of a VW-Mask2Former run: only False (post-norm masked-attention layers, as every released model)."""
    value = boolean(value)
    if value:
        raise ValueError(
            "PRE_NORM True (pre-norm masked-attention decoder layers) is not supported: every released VW-Mask2Former "
            "is post-norm, and only post-norm layers are checked against the original"
        )
    return value


#: the padding multiple (the VW block needs multiples of 64: :func:`vw_padding_multiple`)
SIZE_DIVISIBILITY = Setting(
    "size_divisibility",
    "the input padding multiple",
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY",
    code_default=32,
    read=vw_padding_multiple,
)
VW_MASKFORMER_SETTINGS = [
    DETR_PRE_NORM,
    Setting(
        "vw_num_heads", "the VW attention heads", "MODEL.SEM_SEG_HEAD.NHEADS", code_default=16, read=vw_attention_heads
    ),
    Setting("vw_use_short_cut", "the VW short-cut", "MODEL.SEM_SEG_HEAD.SHORT_CUT", code_default=True, read=boolean),
    DETR_DECODER_HEADS,
    SIZE_DIVISIBILITY,
    DROP_PATH,
    *MASKFORMER_TRAINING_SETTINGS,
]
#: the values of a VW-Mask2Former model the weights do not hold (``add_maskformer2_config`` of the Mask2Former copy
#: gives the defaults). The VW block's heads (16) and the absent short-cut are hard-coded there; the decoder heads are
#: in the weights only with the deformable encoder (:data:`DECODER_HEADS` for the plain decoder).
VW_MASK2FORMER_SETTINGS = [
    Setting(
        "pre_norm",
        "pre-norm decoder layers",
        "MODEL.MASK_FORMER.PRE_NORM",
        code_default=False,
        read=mask2former_post_norm_only,
    ),
    SIZE_DIVISIBILITY,
    DROP_PATH,
    training_only("dropout", "the decoder dropout", "MODEL.MASK_FORMER.DROPOUT", probability),
    *MASK2FORMER_LOSS_SETTINGS,
    training_only("use_auxiliary_loss", "deep supervision", "MODEL.MASK_FORMER.DEEP_SUPERVISION", boolean),
]


def vw_settings(head: str, no_object_weight_in_weights: bool = False) -> list[Setting]:
    """The :class:`Setting` s of a ``head`` checkpoint (:func:`detect_vw_head`): :data:`VW_MASKFORMER_SETTINGS` or
    :data:`VW_MASK2FORMER_SETTINGS` (with :data:`DECODER_HEADS` for the plain decoder), and the no-object weight when
    ``criterion.empty_weight`` does not hold it."""
    if head == "vw_maskformer":
        settings = list(VW_MASKFORMER_SETTINGS)
    else:
        settings = VW_MASK2FORMER_SETTINGS + ([DECODER_HEADS] if head == "vw" else [])
    return settings + ([] if no_object_weight_in_weights else [NO_OBJECT_WEIGHT])


#: the original's name of each head's pixel decoder (``MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``)
PIXEL_DECODER_NAMES = {
    "vw_maskformer": "VWTransformerPixelDecoder",
    "vw": "BasePixelDecoder",  # the Mask2Former copy's BasePixelDecoder is the plain VW decoder
    "vw_deformable": "VWDeformAttnPixelDecoder",
}
#: the model class of each head
MODEL_CLASSES = {
    "vw_maskformer": VWMaskFormerForSemanticSegmentation,
    "vw": VWMask2FormerForSemanticSegmentation,
    "vw_deformable": VWMask2FormerForSemanticSegmentation,
}


@dataclass
class VWResolvedSettings(ResolvedSettings):
    """:class:`~.run_config.ResolvedSettings` with ``notes`` for the summary line and the card (how a padding multiple
    that is not a multiple of 64 was taken)."""

    notes: tuple = ()

    def describe(self) -> str:
        return "; ".join([super().describe(), *self.notes])


def _consistency_checks(state_dict: dict[str, torch.Tensor], head: str, fields: dict) -> list[tuple]:
    """What a run's config must agree on with the weights (:func:`.run_config.check_consistent`)."""
    backbone = fields["backbone_config"]
    checks = [
        ("MODEL.META_ARCHITECTURE", "MaskFormer", "a VW-MaskFormer / VW-Mask2Former checkpoint"),
        ("MODEL.BACKBONE.NAME", "D2SwinTransformer", "the backbone.* keys (a detectron2 Swin)"),
        ("MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", PIXEL_DECODER_NAMES[head], "the pixel decoder's key layout"),
        ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", fields["num_labels"], "sem_seg_head.predictor.class_embed.weight"),
        ("MODEL.SEM_SEG_HEAD.MASK_DIM", VW_FEATURE_SIZE, "sem_seg_head.predictor.mask_embed.layers.2.weight"),
        *swin_consistency_checks(backbone, D2_SWIN_PATHS),
    ]
    if head == "vw_maskformer":
        decoder = fields["decoder_config"]
        encoder_layers = indices(state_dict, r"sem_seg_head\.predictor\.transformer\.encoder\.layers\.(\d+)\.")
        return checks + [
            ("MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "res5", "the predictor's input_proj (res5 channels)"),
            ("MODEL.MASK_FORMER.HIDDEN_DIM", decoder["d_model"], "sem_seg_head.predictor.query_embed.weight"),
            ("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", decoder["num_queries"], "sem_seg_head.predictor.query_embed"),
            ("MODEL.MASK_FORMER.DEC_LAYERS", decoder["decoder_layers"], "the DETR decoder layers"),
            ("MODEL.MASK_FORMER.ENC_LAYERS", len(encoder_layers), "the DETR encoder layers"),
            ("MODEL.MASK_FORMER.DIM_FEEDFORWARD", decoder["decoder_ffn_dim"], "the decoder layers' linear1"),
        ]
    checks += [
        (
            "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME",
            "MultiScaleMaskedTransformerDecoder",
            "the transformer decoder's key layout",
        ),
        ("MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "multi_scale_pixel_decoder", "the predictor's input levels"),
        ("MODEL.SEM_SEG_HEAD.CONVS_DIM", VW_FEATURE_SIZE, "the 256-channel multi-scale features"),
        ("MODEL.MASK_FORMER.HIDDEN_DIM", fields["hidden_dim"], "sem_seg_head.predictor.query_feat.weight"),
        ("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", fields["num_queries"], "sem_seg_head.predictor.query_feat.weight"),
        ("MODEL.MASK_FORMER.DEC_LAYERS", fields["decoder_layers"], "the predictor's transformer layers"),
        ("MODEL.MASK_FORMER.DIM_FEEDFORWARD", fields["dim_feedforward"], "the predictor's transformer_ffn_layers"),
    ]
    if fields["hidden_dim"] == VW_FEATURE_SIZE:  # otherwise the projections are there whatever the config says
        checks.append(
            (
                "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ",
                fields["enforce_input_projection"],
                "the presence of sem_seg_head.predictor.input_proj.* keys",
            )
        )
    if head == "vw_deformable":
        checks += [
            (
                "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS",
                fields["encoder_layers"],
                "the pixel decoder's encoder layers",
            ),
            ("MODEL.MASK_FORMER.NHEADS", fields["num_attention_heads"], "the deformable attention's sampling_offsets"),
            (
                "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES",
                DEFORMABLE_LEVELS,
                "the input channels of sem_seg_head.pixel_decoder.input_proj.*",
            ),
        ]
    return checks


def _padding_note(resolved: ResolvedSettings, run_configs: list) -> tuple[str, ...]:
    """The note of the summary and the card when the run's SIZE_DIVISIBILITY is not the model's (not a multiple of
    64: :func:`vw_padding_multiple`)."""
    source = resolved.sources.get("size_divisibility", "")
    if not source.startswith("--config_file"):
        return ()
    if source.endswith(" [default]"):
        raw = SIZE_DIVISIBILITY.code_default
    else:
        raw, _ = first_value(run_configs, [SIZE_DIVISIBILITY.path])
    value = resolved.values["size_divisibility"]
    if raw == value:
        return ()
    return (
        f"SIZE_DIVISIBILITY {raw} of the run padded to {value} instead (the VW block needs multiples of 64; the "
        f"original runs only on inputs whose padded size is a multiple of 64, where padding to {value} gives the "
        "identical result)",
    )


def infer_config_and_settings(
    state_dict: dict[str, torch.Tensor],
    id2label: dict[int, str] | None = None,
    variant: str | None = None,
    config_file: str | Path | None = None,
    run_configs: list | None = None,
) -> tuple[VWMaskFormerConfig | VWMask2FormerConfig, VWResolvedSettings]:
    """The full config of a VW detectron2 state dict (``VW_HEADS[detect_vw_head(state_dict)][1]``) and where the
    values the weights do not hold came from (whose ``variant`` is the released variant the checkpoint is).

    From the tensors: :func:`vw_head_fields`. Not in the weights (:func:`vw_settings`): VW-MaskFormer's VW heads and
    short-cut (``MODEL.SEM_SEG_HEAD.NHEADS`` / ``SHORT_CUT``) and DETR heads, the plain VW-Mask2Former's decoder heads,
    pre-norm (only False converts), the padding multiple (mapped to a multiple of 64: :func:`vw_padding_multiple`) and
    the training-only values, from ``config_file`` (the run's detectron2 ``config.yaml``) or the released variant
    (``variant``, or the one with exactly these weights); a required value neither has stops the conversion, naming
    it. A config that contradicts the weights (another head, other sizes, the deformable encoder's heads) is
    refused, naming the key and both values."""
    if run_configs is None:
        run_configs = detectron2_run_configs(config_file)
    head = detect_vw_head(state_dict)
    fields = vw_head_fields(state_dict)
    check_consistent(run_configs, _consistency_checks(state_dict, head, fields))
    backbone = fields["backbone_config"]
    check_representable(
        run_configs,
        [qk_scale_check("MODEL.SWIN.QK_SCALE", backbone.embed_dim, backbone.num_heads), *DETECTRON2_HEAD_CHECKS],
    )
    num_labels = fields.pop("num_labels")
    id2label = given_id2label(id2label, num_labels)
    config = VW_HEADS[head][1](**fields, id2label=id2label, label2id={label: i for i, label in id2label.items()})
    settings = vw_settings(head, "no_object_weight" in fields)
    matched = released_variant(config, variant)
    resolved = resolve_settings(config, settings, run_configs, matched, variant is not None, CONFIG_FILE_HELP)
    if head != "vw_maskformer":
        decoder_heads = (DECODER_HEADS.name, DECODER_HEADS.path, "the masked-attention decoder", config.hidden_dim)
        check_heads_setting(resolved, *decoder_heads)
    else:
        decoder = config.decoder_config
        detr_heads = (DETR_DECODER_HEADS.name, DETR_DECODER_HEADS.path, "the DETR decoder", decoder.d_model)
        check_heads_setting(resolved, *detr_heads)
        if "decoder_config.dropout" in resolved.values:  # the original applies DROPOUT in the attentions and FFN too
            decoder.attention_dropout = decoder.activation_dropout = decoder.dropout
        config.force_original_decoder()  # the decoder heads may have changed: the config's copy of them follows
    resolved = VWResolvedSettings(**vars(resolved), notes=_padding_note(resolved, run_configs))
    return config, resolved


def infer_config(
    state_dict: dict[str, torch.Tensor], id2label: dict[int, str] | None = None, **sources
) -> VWMaskFormerConfig | VWMask2FormerConfig:
    """The full config of a VW detectron2 state dict (see :func:`infer_config_and_settings`)."""
    return infer_config_and_settings(state_dict, id2label, **sources)[0]


# --------------------------------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------------------------------

#: the test pre-processing a run's config or the released variant gives; the padding multiple is the model's
#: (``processor_kwargs``), and there is no resize to a multiple
PIPELINE_FIELDS = ("test_scale", "reduce_labels", "image_mean", "image_std")


def convert_loaded(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    variant: str | None = None,
    config_file: str | Path | None = None,
    id2label: dict[int, str] | None = None,
) -> Conversion:
    """:func:`convert` of a state dict already read from ``path``."""
    with errors_name_the_file(path):
        head = detect_vw_head(state_dict)
        statistics = pixel_statistics(state_dict)
    run_configs = detectron2_run_configs(config_file)  # read once: the settings and the test pipeline
    pipeline = detectron2_pipeline(run_configs)
    with errors_name_the_file(path):
        from_checkpoint = checkpoint_pipeline(statistics, pipeline)
    conversion = build_conversion(
        path,
        MODEL_CLASSES[head],
        infer=lambda: infer_config_and_settings(state_dict, id2label, variant, run_configs=run_configs),
        convert_keys=lambda: convert_vw_d2_state_dict(state_dict),
        original=state_dict,
        class_names=list(id2label.values()) if id2label is not None else None,
        state_dict=state_dict,
        variant_given=variant is not None,
        pipeline=pipeline,
        checkpoint_pipeline=from_checkpoint,
        pipeline_fields=PIPELINE_FIELDS,
    )
    # the image processor pads to the model's multiple (the VW block's windows need it; the model pads too)
    conversion.processor_kwargs["size_divisibility"] = conversion.model.config.size_divisibility
    return conversion


def convert(
    path: str | Path,
    variant: str | None = None,
    config_file: str | Path | None = None,
    id2label: dict[int, str] | None = None,
) -> Conversion:
    """Converts any VW-MaskFormer / VW-Mask2Former (plain or deformable) detectron2 checkpoint file: the head told
    from the keys, the model (eval mode), the released variant it is, the run's test pre-processing (see
    :func:`infer_config_and_settings` for ``variant`` and ``config_file``) and the image processor's padding multiple
    (the model's)."""
    return convert_loaded(path, load_vw_d2_checkpoint(path), variant, config_file, id2label)


def convert_checkpoint(
    path: str | Path,
    id2label: dict[int, str] | None = None,
    variant: str | None = None,
    config_file: str | Path | None = None,
):
    """Loads any VW detectron2 checkpoint file into its hf-semseg model (eval mode). Returns ``(model,
    state_dict)``."""
    conversion = convert(path, variant, config_file, id2label)
    return conversion.model, conversion.state_dict


#: the summary line of the command line (card fields)
SUMMARY = (
    "{head_name}: Swin embed_dim {embed_dim}, depths [{depths}], window {window_size}; pixel decoder "
    "{pixel_decoder_row}; {transformer_decoder_row}; padding multiple {size_divisibility}; {num_labels} classes"
)
CONVERTER = Converter(
    (VWMaskFormerConfig.model_type, VWMask2FormerConfig.model_type),
    DETECTRON2,
    convert,
    vw_d2_card_fields,
    SUMMARY,
    CONFIG_FILE_HELP,
)


__all__ = [
    "CONVERTER",
    "D2_SWIN_RENAMES",
    "VW_HEADS",
    "VW_MASK2FORMER_SETTINGS",
    "VW_MASKFORMER_SETTINGS",
    "convert",
    "convert_checkpoint",
    "convert_loaded",
    "convert_vw_d2_state_dict",
    "detect_vw_head",
    "infer_config",
    "infer_config_and_settings",
    "load_vw_d2_checkpoint",
    "swin_backbone_fields",
    "tied_group_norm_copies",
    "vw_block_renames",
    "vw_head_fields",
    "vw_padding_multiple",
    "vw_settings",
]
