"""Conversion of original SeMask-Mask2Former (detectron2) checkpoints to :class:`SeMaskMask2FormerForSemanticSegmentation`.

Read top to bottom: :func:`apply_legacy_renames` repeats detectron2's loader renames of old checkpoints;
:data:`HEAD_RENAMES` maps the Mask2Former head onto transformers' module names (the backbone keys go through the
SeMask-FPN converter's table, :mod:`hf_semseg.conversion.semask_fpn`); :func:`infer_config` derives every
hyper-parameter from the tensors; :func:`convert_state_dict` fails, naming the keys, on anything it cannot account
for.
"""

import math
import re
from pathlib import Path

import torch

from ..models.configuration_semask_mask2former import (
    SeMaskMask2FormerConfig,
    semask_mask2former_semantic_attention_types,
)
from ..models.configuration_semask_swin import SeMaskSwinConfig
from .semask_fpn import CheckpointError, check_against_model
from .semask_fpn import convert_state_dict as convert_backbone_state_dict


PIXEL_DECODER = r"sem_seg_head\.pixel_decoder\."
PREDICTOR = r"sem_seg_head\.predictor\."
HF_PIXEL_DECODER = "model.pixel_level_module.decoder."
HF_TRANSFORMER = "model.transformer_module."
HF_BACKBONE = "model.pixel_level_module.encoder."

# (original key pattern, hf key template) - applied with re.fullmatch, first match wins. The decoder self-attention's
# packed ``in_proj`` is split into q/k/v by :func:`convert_state_dict` (the rows of in_proj are q, k, v).
HEAD_RENAMES: list[tuple[str, str]] = [
    # pixel decoder: deformable-attention encoder on strides 8-32, one FPN level at stride 4
    (PIXEL_DECODER + r"input_proj\.(\d+)\.([01])\.(weight|bias)", HF_PIXEL_DECODER + r"input_projections.\1.\2.\3"),
    (PIXEL_DECODER + r"transformer\.level_embed", HF_PIXEL_DECODER + "level_embed"),
    (
        PIXEL_DECODER
        + r"transformer\.encoder\.layers\.(\d+)\.self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)",
        HF_PIXEL_DECODER + r"encoder.layers.\1.self_attn.\2.\3",
    ),
    (
        PIXEL_DECODER + r"transformer\.encoder\.layers\.(\d+)\.norm1\.(weight|bias)",
        HF_PIXEL_DECODER + r"encoder.layers.\1.self_attn_layer_norm.\2",
    ),
    (
        PIXEL_DECODER + r"transformer\.encoder\.layers\.(\d+)\.linear1\.(weight|bias)",
        HF_PIXEL_DECODER + r"encoder.layers.\1.fc1.\2",
    ),
    (
        PIXEL_DECODER + r"transformer\.encoder\.layers\.(\d+)\.linear2\.(weight|bias)",
        HF_PIXEL_DECODER + r"encoder.layers.\1.fc2.\2",
    ),
    (
        PIXEL_DECODER + r"transformer\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)",
        HF_PIXEL_DECODER + r"encoder.layers.\1.final_layer_norm.\2",
    ),
    (PIXEL_DECODER + r"mask_features\.(weight|bias)", HF_PIXEL_DECODER + r"mask_projection.\1"),
    # detectron2 Conv2d-with-norm (conv weight, norm.*) -> nn.Sequential(conv, GroupNorm[, ReLU])
    (PIXEL_DECODER + r"(adapter|layer)_(\d+)\.weight", HF_PIXEL_DECODER + r"\1_\2.0.weight"),
    (PIXEL_DECODER + r"(adapter|layer)_(\d+)\.norm\.(weight|bias)", HF_PIXEL_DECODER + r"\1_\2.1.\3"),
    # masked-attention transformer decoder
    (PREDICTOR + r"query_feat\.weight", HF_TRANSFORMER + "queries_features.weight"),
    (PREDICTOR + r"query_embed\.weight", HF_TRANSFORMER + "queries_embedder.weight"),
    (PREDICTOR + r"level_embed\.weight", HF_TRANSFORMER + "level_embed.weight"),
    (PREDICTOR + r"decoder_norm\.(weight|bias)", HF_TRANSFORMER + r"decoder.layernorm.\1"),
    (PREDICTOR + r"input_proj\.(\d+)\.(weight|bias)", HF_TRANSFORMER + r"input_projections.\1.\2"),
    (
        PREDICTOR
        + r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
        HF_TRANSFORMER + r"decoder.layers.\1.cross_attn.\2",
    ),
    (
        PREDICTOR + r"transformer_cross_attention_layers\.(\d+)\.norm\.(weight|bias)",
        HF_TRANSFORMER + r"decoder.layers.\1.cross_attn_layer_norm.\2",
    ),
    (
        PREDICTOR + r"transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
        HF_TRANSFORMER + r"decoder.layers.\1.self_attn.out_proj.\2",
    ),
    (
        PREDICTOR + r"transformer_self_attention_layers\.(\d+)\.norm\.(weight|bias)",
        HF_TRANSFORMER + r"decoder.layers.\1.self_attn_layer_norm.\2",
    ),
    (
        PREDICTOR + r"transformer_ffn_layers\.(\d+)\.linear1\.(weight|bias)",
        HF_TRANSFORMER + r"decoder.layers.\1.fc1.\2",
    ),
    (
        PREDICTOR + r"transformer_ffn_layers\.(\d+)\.linear2\.(weight|bias)",
        HF_TRANSFORMER + r"decoder.layers.\1.fc2.\2",
    ),
    (
        PREDICTOR + r"transformer_ffn_layers\.(\d+)\.norm\.(weight|bias)",
        HF_TRANSFORMER + r"decoder.layers.\1.final_layer_norm.\2",
    ),
    (
        PREDICTOR + r"mask_embed\.layers\.(\d+)\.(weight|bias)",
        HF_TRANSFORMER + r"decoder.mask_predictor.mask_embedder.\1.0.\2",
    ),
    (PREDICTOR + r"class_embed\.(weight|bias)", r"class_predictor.\1"),
    (r"criterion\.empty_weight", "criterion.empty_weight"),
]

SELF_ATTENTION_IN_PROJ = re.compile(
    PREDICTOR + r"transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)"
)
# the d2 meta-architecture's normalisation buffers (non-persistent in the original, but tolerated when present)
PIXEL_STATISTICS = ("pixel_mean", "pixel_std")


def load_detectron2_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a detectron2 checkpoint (``{'model': state_dict, ...}``; a bare state dict is accepted too) safely
    (``weights_only=True``). A ``module.`` prefix from DDP is stripped; optimizer/scheduler entries are ignored."""
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
        raise CheckpointError(f"{path}: holds a {type(checkpoint).__name__}, not a detectron2 checkpoint dict")
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):
        state_dict = checkpoint["model"]
    elif "state_dict" in checkpoint:
        raise CheckpointError(
            f"{path}: an mmseg checkpoint ({{'state_dict': ...}}); this converter reads SeMask-Mask2Former "
            "(detectron2) checkpoints - use convert_semask_fpn_to_hf.py for SeMask-FPN"
        )
    elif checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        state_dict = checkpoint
    else:
        raise CheckpointError(f"{path}: no 'model' entry (top-level keys: {sorted(map(str, checkpoint))[:10]})")
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {not_tensors[:10]}")
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return dict(state_dict)


def apply_legacy_renames(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The renames detectron2's ``_load_from_state_dict`` hooks apply to old checkpoints: head keys directly under
    ``sem_seg_head.`` (version-1 heads) move under ``sem_seg_head.pixel_decoder.``; ``static_query`` (old
    MaskFormer decoders) becomes ``query_feat``."""
    renamed = {}
    for key, tensor in state_dict.items():
        new_key = key
        if key.startswith("sem_seg_head.") and not key.startswith(
            ("sem_seg_head.predictor.", "sem_seg_head.pixel_decoder.")
        ):
            new_key = "sem_seg_head.pixel_decoder." + key.removeprefix("sem_seg_head.")
        new_key = new_key.replace(".static_query.", ".query_feat.")
        if new_key in renamed:
            raise CheckpointError(f"{key} and another key both map to {new_key} (a mix of old and new key layouts)")
        renamed[new_key] = tensor
    return renamed


def _shape(state_dict: dict, key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"missing key {key!r}: not a SeMask-Mask2Former checkpoint (or a truncated state dict)")
    return tuple(state_dict[key].shape)


def _count(state_dict: dict, pattern: str) -> int:
    """Number of distinct indices captured by ``pattern``'s first group."""
    return len({int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))})


def check_semask_backbone(state_dict: dict[str, torch.Tensor]) -> None:
    """Fails clearly unless the state dict holds a SeMask-Swin backbone (Swin stages with semantic layers)."""
    if not any(key.startswith("backbone.layers.") and ".semantic_layer." in key for key in state_dict):
        if any(key.startswith("backbone.layers.") for key in state_dict):
            raise CheckpointError("no backbone.layers.*.semantic_layer keys: a plain Swin backbone, not SeMask")
        raise CheckpointError(
            f"no 'backbone.layers.*' keys: not a SeMask-Swin detectron2 checkpoint (first keys: {list(state_dict)[:5]})"
        )
    if "backbone.absolute_pos_embed" in state_dict:
        raise CheckpointError("backbone.absolute_pos_embed: absolute position embeddings (APE) are not supported")


def infer_backbone_config(state_dict: dict[str, torch.Tensor], num_labels: int) -> SeMaskSwinConfig:
    """The SeMask-Swin backbone from the ``backbone.*`` tensors. The semantic window is not stored in the weights:
    the released ADE20K config sets it to the window size, the Cityscapes one keeps detectron2's default 7."""
    check_semask_backbone(state_dict)
    embed_dim, num_channels, patch_size, _ = _shape(state_dict, "backbone.patch_embed.proj.weight")
    num_stages = _count(state_dict, r"backbone\.layers\.(\d+)\.")
    depths, num_heads, num_semantic_blocks = [], [], []
    for stage in range(num_stages):
        depths.append(_count(state_dict, rf"backbone\.layers\.{stage}\.blocks\.(\d+)\."))
        num_heads.append(_shape(state_dict, f"backbone.layers.{stage}.blocks.0.attn.relative_position_bias_table")[1])
        num_semantic_blocks.append(
            _count(state_dict, rf"backbone\.layers\.{stage}\.semantic_layer\.class_injection\.(\d+)\.")
        )
    table_rows = _shape(state_dict, "backbone.layers.0.blocks.0.attn.relative_position_bias_table")[0]
    window_size = (math.isqrt(table_rows) + 1) // 2
    if (2 * window_size - 1) ** 2 != table_rows:
        raise CheckpointError(f"relative_position_bias_table has {table_rows} rows, not (2w-1)^2 for any window w")
    semantic_classes = _shape(state_dict, "backbone.layers.0.semantic_layer.class_injection.0.mlp_cls_q.weight")[0]
    if semantic_classes != num_labels:
        raise CheckpointError(
            f"the class head predicts {num_labels} classes but the semantic layers {semantic_classes} (mlp_cls_q); "
            "the original builds both from NUM_CLASSES, so this is not a SeMask-Mask2Former checkpoint"
        )
    mlp_hidden = _shape(state_dict, "backbone.layers.0.blocks.0.mlp.fc1.weight")[0]
    return SeMaskSwinConfig(
        patch_size=patch_size,
        num_channels=num_channels,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        mlp_ratio=mlp_hidden / embed_dim,
        qkv_bias="backbone.layers.0.blocks.0.attn.qkv.bias" in state_dict,
        semantic_window_size=window_size if num_labels == 150 else 7,
        num_semantic_blocks=num_semantic_blocks,
        semantic_attention_types=semask_mask2former_semantic_attention_types(num_labels, num_stages),
        drop_path_rate=0.3,
        num_labels=num_labels,
    )


def infer_config(
    state_dict: dict[str, torch.Tensor], id2label: dict[int, str] | None = None
) -> SeMaskMask2FormerConfig:
    """Derives the full :class:`SeMaskMask2FormerConfig` from a (legacy-renamed) detectron2 state dict.

    From the tensors: the backbone (see :func:`infer_backbone_config`), classes (``class_embed``), pixel-decoder
    channels, encoder layers and FFN size, mask-feature channels, attention heads (``sampling_offsets`` has
    heads x 3 levels x 4 points x 2 rows), queries, hidden size, decoder layers, decoder FFN size, input projections
    and the no-object weight (``criterion.empty_weight``). ``PRE_NORM`` is not visible in the weights and is False in
    every released config."""
    check_semask_backbone(state_dict)
    num_classes = _shape(state_dict, "sem_seg_head.predictor.class_embed.weight")[0] - 1
    backbone_config = infer_backbone_config(state_dict, num_classes)
    feature_size = _shape(state_dict, "sem_seg_head.pixel_decoder.input_proj.0.0.weight")[0]
    sampling_rows = _shape(
        state_dict, "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.sampling_offsets.weight"
    )[0]
    if sampling_rows % 24:
        raise CheckpointError(
            f"sampling_offsets has {sampling_rows} rows, not heads x 3 levels x 4 points x 2 as in Mask2Former"
        )
    num_queries, hidden_dim = _shape(state_dict, "sem_seg_head.predictor.query_feat.weight")
    decoder_layers = _count(state_dict, r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.") + 1
    num_fpn_levels = _count(state_dict, r"sem_seg_head\.pixel_decoder\.adapter_(\d+)\.")
    if num_fpn_levels != 1:
        raise CheckpointError(
            f"{num_fpn_levels} FPN levels (adapter_*) in the pixel decoder; transformers' Mask2Former builds one "
            "(common stride 4 from stride-8 encoder features)"
        )
    no_object_weight = 0.1
    if "criterion.empty_weight" in state_dict:
        empty_weight = state_dict["criterion.empty_weight"]
        if empty_weight.device.type != "meta":
            no_object_weight = float(empty_weight[-1])
            if not torch.all(empty_weight[:-1] == 1):
                raise CheckpointError("criterion.empty_weight: class weights other than 1 are not supported")
    id2label = id2label if id2label is not None else {i: f"class_{i}" for i in range(num_classes)}
    if len(id2label) != num_classes:
        raise CheckpointError(f"{len(id2label)} class names given for a checkpoint with {num_classes} classes")
    return SeMaskMask2FormerConfig(
        backbone_config=backbone_config,
        feature_size=feature_size,
        mask_feature_size=_shape(state_dict, "sem_seg_head.pixel_decoder.mask_features.weight")[0],
        hidden_dim=hidden_dim,
        encoder_feedforward_dim=_shape(
            state_dict, "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.linear1.weight"
        )[0],
        encoder_layers=_count(state_dict, r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\."),
        decoder_layers=decoder_layers,
        num_attention_heads=sampling_rows // 24,
        dim_feedforward=_shape(state_dict, "sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight")[0],
        enforce_input_projection=any(key.startswith("sem_seg_head.predictor.input_proj.") for key in state_dict)
        and feature_size == hidden_dim,
        num_queries=num_queries,
        no_object_weight=no_object_weight,
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames every key of a (legacy-renamed) detectron2 state dict. The backbone goes through the SeMask-FPN
    converter's table (which also checks the ``relative_position_index`` buffers); the decoder self-attention's
    packed ``in_proj`` is split into ``q_proj``/``k_proj``/``v_proj``. Raises :class:`CheckpointError` listing every
    key without a rule."""
    backbone = {key: value for key, value in state_dict.items() if key.startswith("backbone.")}
    converted = {
        HF_BACKBONE + key.removeprefix("backbone."): value
        for key, value in convert_backbone_state_dict(backbone).items()
    }
    unmapped = []
    for key, tensor in state_dict.items():
        if key.startswith("backbone.") or key in PIXEL_STATISTICS:
            continue
        match = SELF_ATTENTION_IN_PROJ.fullmatch(key)
        if match:
            layer, kind = match.groups()
            if tensor.shape[0] % 3:
                raise CheckpointError(f"{key}: {tuple(tensor.shape)} is not three stacked (q, k, v) projections")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                converted[f"{HF_TRANSFORMER}decoder.layers.{layer}.self_attn.{name}.{kind}"] = part
            continue
        for pattern, template in HEAD_RENAMES:
            if re.fullmatch(pattern, key):
                converted[re.sub(pattern, template, key)] = tensor
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} keys have no conversion rule: {unmapped}")
    return converted


def pixel_statistics(state_dict: dict[str, torch.Tensor]) -> tuple[list[float], list[float]] | None:
    """``(image_mean, image_std)`` on the 0-1 scale from ``pixel_mean``/``pixel_std`` buffers if the checkpoint holds
    them (detectron2 keeps them non-persistent, so released checkpoints do not)."""
    if not all(name in state_dict for name in PIXEL_STATISTICS):
        return None
    mean, std = (state_dict[name].flatten().double() / 255.0 for name in PIXEL_STATISTICS)
    return mean.tolist(), std.tolist()


def convert_checkpoint(path: str | Path, id2label: dict[int, str] | None = None):
    """Loads an original SeMask-Mask2Former checkpoint file into a :class:`SeMaskMask2FormerForSemanticSegmentation`
    (eval mode). Returns ``(model, state_dict)`` (the original state dict, after the legacy renames)."""
    from ..models.modeling_semask_mask2former import SeMaskMask2FormerForSemanticSegmentation

    path = Path(path)
    state_dict = apply_legacy_renames(load_detectron2_checkpoint(path))
    try:
        config = infer_config(state_dict, id2label)
        converted = convert_state_dict(state_dict)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    model = SeMaskMask2FormerForSemanticSegmentation(config)
    try:
        check_against_model(converted, model.state_dict())
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    model.load_state_dict({key: value.float() for key, value in converted.items()})
    return model.eval(), state_dict
