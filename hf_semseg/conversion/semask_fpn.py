"""Conversion of original SeMask-FPN (mmseg 0.11 fork) checkpoints to :class:`SeMaskSwinForSemanticSegmentation`.

Read top to bottom: :data:`RENAMES` is the whole key mapping; :func:`infer_config` derives every hyper-parameter
from the tensors (and, for the two values that are not in the weights, from the config text in ``meta``);
:func:`convert_state_dict` applies the table and fails, naming the keys, on anything it cannot account for.
"""

import math
import re
from pathlib import Path

import torch

from ..models.configuration_semask_swin import SeMaskSwinConfig, semask_fpn_semantic_attention_types
from ..models.modeling_semask_swin import relative_position_index


class CheckpointError(ValueError):
    """The file is not a SeMask-FPN checkpoint, is corrupt, or has keys the converter cannot account for."""


# (original key pattern, hf key template) - applied with re.fullmatch, first match wins.
RENAMES: list[tuple[str, str]] = [
    (r"backbone\.patch_embed\.proj\.(weight|bias)", r"backbone.embeddings.projection.\1"),
    (r"backbone\.patch_embed\.norm\.(weight|bias)", r"backbone.embeddings.norm.\1"),
    (
        r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)",
        r"backbone.encoder.stages.\1.blocks.\2.\3.\4",
    ),
    (
        r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
        r"backbone.encoder.stages.\1.blocks.\2.attn.relative_position_bias_table",
    ),
    (
        r"backbone\.layers\.(\d+)\.semantic_layer\.norm1\.(weight|bias)",
        r"backbone.encoder.stages.\1.semantic_layer.norm.\2",
    ),
    (
        r"backbone\.layers\.(\d+)\.semantic_layer\.class_injection\.(\d+)\.gamma",
        r"backbone.encoder.stages.\1.semantic_layer.attentions.\2.gamma",
    ),
    (
        r"backbone\.layers\.(\d+)\.semantic_layer\.class_injection\.(\d+)\.mlp_cls_q\.(weight|bias)",
        r"backbone.encoder.stages.\1.semantic_layer.attentions.\2.class_query_proj.\3",
    ),
    (
        r"backbone\.layers\.(\d+)\.semantic_layer\.class_injection\.(\d+)\.mlp_cls_k\.(weight|bias)",
        r"backbone.encoder.stages.\1.semantic_layer.attentions.\2.class_key_proj.\3",
    ),
    (
        r"backbone\.layers\.(\d+)\.semantic_layer\.class_injection\.(\d+)\.mlp_v\.(weight|bias)",
        r"backbone.encoder.stages.\1.semantic_layer.attentions.\2.value_proj.\3",
    ),
    (
        r"backbone\.layers\.(\d+)\.semantic_layer\.class_injection\.(\d+)\.mlp_res\.(weight|bias)",
        r"backbone.encoder.stages.\1.semantic_layer.attentions.\2.out_proj.\3",
    ),
    (
        r"backbone\.layers\.(\d+)\.downsample\.(norm\.weight|norm\.bias|reduction\.weight)",
        r"backbone.encoder.stages.\1.downsample.\2",
    ),
    (r"backbone\.norm(\d+)\.(weight|bias)", r"backbone.encoder.norms.\1.\2"),
    (r"decode_head\.conv_seg\.(weight|bias)", r"decode_head.classifier.\1"),
    # scale_heads.{level}.{2k} are ConvModules (odd indices are parameter-free Upsample layers)
    (r"decode_head\.scale_heads\.(\d+)\.(\d+)\.conv\.weight", None),
    (r"decode_head\.scale_heads\.(\d+)\.(\d+)\.bn\.(\w+)", None),
]

# Buffers of the original that the HF model rebuilds itself; their values are checked, then dropped.
RELATIVE_POSITION_INDEX = re.compile(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_index")

_SCALE_HEAD_CONV = re.compile(r"decode_head\.scale_heads\.(\d+)\.(\d+)\.(conv|bn)\.(\w+)")


def rename_key(key: str) -> str | None:
    """The HF name of an original key, or None when the table has no rule for it."""
    match = _SCALE_HEAD_CONV.fullmatch(key)
    if match:
        level, index, module, name = match.groups()
        if int(index) % 2:
            return None
        new_module = "conv" if module == "conv" else "batch_norm"
        return f"decode_head.scale_heads.{level}.convs.{int(index) // 2}.{new_module}.{name}"
    for pattern, template in RENAMES:
        if template is not None and re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    return None


def load_original_checkpoint(
    path: str | Path, kind: str = "SeMask-FPN (mmseg)"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Reads an mmseg checkpoint (``{'meta', 'state_dict'}``) safely (``weights_only=True``); ``kind`` names the
    checkpoints the calling converter reads, for the error messages.

    Returns the state dict (a ``module.`` prefix from DDP is stripped) and ``meta`` (empty when absent)."""
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
        raise CheckpointError(f"{path}: holds a {type(checkpoint).__name__}, not an mmseg checkpoint dict")
    if "state_dict" in checkpoint:
        state_dict, meta = checkpoint["state_dict"], checkpoint.get("meta") or {}
    elif "model" in checkpoint:
        raise CheckpointError(
            f"{path}: a detectron2 checkpoint ({{'model': ...}}); this converter reads {kind} checkpoints"
        )
    elif all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        state_dict, meta = checkpoint, {}
    else:
        raise CheckpointError(f"{path}: no 'state_dict' entry (top-level keys: {sorted(checkpoint)[:10]})")
    if any(key.startswith("module.") for key in state_dict):
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return dict(state_dict), dict(meta)


def _meta_config_value(meta: dict, key: str, value_pattern: str) -> str | None:
    """First value of ``key`` in the mmseg config text of ``meta``; the text is either mmcv's ``key=value`` style or
    a dict repr (``'key': value``)."""
    text = meta.get("config")
    if not isinstance(text, str):
        return None
    match = re.search(rf"['\"]?\b{key}['\"]?\s*[=:]\s*({value_pattern})", text)
    return match.group(1) if match else None


def _shape(state_dict: dict, key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"missing key {key!r}: not a SeMask-FPN checkpoint (or a truncated state dict)")
    return tuple(state_dict[key].shape)


def infer_config(state_dict: dict[str, torch.Tensor], meta: dict | None = None) -> SeMaskSwinConfig:
    """Derives the full :class:`SeMaskSwinConfig` from the checkpoint.

    From the tensors: patch size, channels, embed dim, depths, heads, window size, MLP ratio, qkv bias, classes,
    semantic blocks per stage, decoder channels. From the mmseg config text in ``meta`` when present:
    ``sem_window_size`` (otherwise equal to the window size, as in every released config), OHEM and the class names.
    Global vs windowed semantic attention per stage follows the SeMask-FPN code's rule on (embed_dim, classes).
    """
    meta = meta or {}
    if not any(".semantic_layer." in key for key in state_dict):
        if any(key.startswith("backbone.layers.") for key in state_dict):
            raise CheckpointError("no semantic_layer keys: this is a plain Swin checkpoint, not SeMask")
        raise CheckpointError(
            f"not a SeMask-FPN checkpoint: no 'backbone.layers.*' keys (first keys: {list(state_dict)[:5]})"
        )
    if "backbone.absolute_pos_embed" in state_dict:
        raise CheckpointError("backbone.absolute_pos_embed: absolute position embeddings (ape=True) are not supported")
    embed_dim, num_channels, patch_size, _ = _shape(state_dict, "backbone.patch_embed.proj.weight")

    stage_ids = sorted({int(m.group(1)) for key in state_dict if (m := re.match(r"backbone\.layers\.(\d+)\.", key))})
    if stage_ids != list(range(len(stage_ids))):
        raise CheckpointError(f"stages {stage_ids} are not numbered 0..n-1")
    depths, num_heads, num_semantic_blocks = [], [], []
    for stage in stage_ids:
        blocks = {
            int(m.group(1))
            for key in state_dict
            if (m := re.match(rf"backbone\.layers\.{stage}\.blocks\.(\d+)\.", key))
        }
        depths.append(len(blocks))
        num_heads.append(_shape(state_dict, f"backbone.layers.{stage}.blocks.0.attn.relative_position_bias_table")[1])
        injections = {
            int(m.group(1))
            for key in state_dict
            if (m := re.match(rf"backbone\.layers\.{stage}\.semantic_layer\.class_injection\.(\d+)\.", key))
        }
        num_semantic_blocks.append(len(injections))

    table_rows = _shape(state_dict, "backbone.layers.0.blocks.0.attn.relative_position_bias_table")[0]
    window_size = (math.isqrt(table_rows) + 1) // 2
    if (2 * window_size - 1) ** 2 != table_rows:
        raise CheckpointError(f"relative_position_bias_table has {table_rows} rows, not (2w-1)^2 for any window w")
    mlp_hidden = _shape(state_dict, "backbone.layers.0.blocks.0.mlp.fc1.weight")[0]
    first_semantic = next(stage for stage, count in enumerate(num_semantic_blocks) if count)
    num_semantic_classes = _shape(
        state_dict, f"backbone.layers.{first_semantic}.semantic_layer.class_injection.0.mlp_cls_q.weight"
    )[0]
    num_classes, decoder_channels = _shape(state_dict, "decode_head.conv_seg.weight")[:2]
    if num_classes != num_semantic_classes:
        raise CheckpointError(
            f"the decode head predicts {num_classes} classes but the semantic layers {num_semantic_classes} "
            "(mlp_cls_q); the original training cannot have produced this checkpoint (its semantic loss compares "
            "the priors with the same labels), so it cannot be converted faithfully"
        )

    sem_window = _meta_config_value(meta, "sem_window_size", r"\d+")
    classes = meta.get("CLASSES")
    id2label = (
        {i: str(name) for i, name in enumerate(classes)}
        if classes is not None and len(classes) == num_classes
        else {i: f"class_{i}" for i in range(num_classes)}
    )
    ohem = "OHEMPixelSampler" in str(meta.get("config", ""))
    min_kept = _meta_config_value(meta, "min_kept", r"\d+")
    return SeMaskSwinConfig(
        patch_size=patch_size,
        num_channels=num_channels,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        mlp_ratio=mlp_hidden / embed_dim,
        qkv_bias="backbone.layers.0.blocks.0.attn.qkv.bias" in state_dict,
        semantic_window_size=int(sem_window) if sem_window else window_size,
        num_semantic_blocks=num_semantic_blocks,
        semantic_attention_types=semask_fpn_semantic_attention_types(embed_dim, num_classes),
        decoder_hidden_size=decoder_channels,
        use_ohem=ohem,
        ohem_min_kept=int(min_kept) if min_kept else 100000,
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames every key with :data:`RENAMES`. Raises :class:`CheckpointError` listing every key without a rule;
    checks the original's persistent ``relative_position_index`` buffers against the index the model rebuilds."""
    converted, unmapped = {}, []
    for key, tensor in state_dict.items():
        if RELATIVE_POSITION_INDEX.fullmatch(key):
            if tensor.device.type != "meta":
                window = math.isqrt(math.isqrt(tensor.numel()))
                expected = relative_position_index(window).view(tensor.shape)
                if not torch.equal(tensor.long(), expected):
                    raise CheckpointError(f"{key} differs from Swin's relative position index for window {window}")
            continue
        new_key = rename_key(key)
        if new_key is None:
            unmapped.append(key)
        else:
            converted[new_key] = tensor
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} keys have no conversion rule: {unmapped}")
    return converted


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


def convert_checkpoint(path: str | Path):
    """Loads an original SeMask-FPN checkpoint file into a :class:`SeMaskSwinForSemanticSegmentation` (eval mode).

    Returns ``(model, meta)``."""
    from ..models.modeling_semask_swin import SeMaskSwinForSemanticSegmentation

    state_dict, meta = load_original_checkpoint(path)
    config = infer_config(state_dict, meta)
    converted = convert_state_dict(state_dict)
    model = SeMaskSwinForSemanticSegmentation(config)
    check_against_model(converted, model.state_dict())
    model.load_state_dict(
        {key: value.float() if value.is_floating_point() else value for key, value in converted.items()}
    )
    return model.eval(), meta


def infer_test_scale(meta: dict, config: SeMaskSwinConfig) -> tuple[int, int]:
    """The (long, short) keep-ratio test scale: from the mmseg config text in ``meta`` when present, otherwise the
    released configs' values (Cityscapes 2048x1024; 640 models 2560x640; others 2048x512)."""
    found = _meta_config_value(meta, "img_scale", r"\(\d+\s*,\s*\d+\)")
    if found:
        long_edge, short_edge = (int(v) for v in found.strip("()").split(","))
        return max(long_edge, short_edge), min(long_edge, short_edge)
    if config.num_labels == 19:
        return 2048, 1024
    if config.embed_dim == 192:
        return 2560, 640
    return 2048, 512


def reduces_zero_label(meta: dict, config: SeMaskSwinConfig) -> bool:
    """``reduce_zero_label`` of the dataset config (True for ADE20K and COCO-Stuff-10k)."""
    found = _meta_config_value(meta, "reduce_zero_label", "True|False")
    if found:
        return found == "True"
    return config.num_labels in (150, 171)
