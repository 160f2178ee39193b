"""Conversion of original SeMask-FPN (mmseg 0.11 fork) checkpoints to :class:`SeMaskSwinForSemanticSegmentation`.

Read top to bottom: :data:`RENAMES` is the whole key mapping; :func:`infer_config` derives every hyper-parameter
from the tensors (and, for the values that are not in the weights, from the config text in ``meta`` or the
registered variant with the same architecture); :func:`convert_state_dict` applies the table and fails, naming the
keys, on anything it cannot account for. :data:`CONVERTER` is what ``conversion/convert_semask_fpn_to_hf.py`` runs
(:mod:`.common` reads the file, writes the folder).
"""

import re
from pathlib import Path

import torch

from ..models.configuration_semask_swin import SeMaskSwinConfig, semask_fpn_semantic_attention_types
from ..models.modeling_semask_swin import SeMaskSwinForSemanticSegmentation
from ..variants import FOUR_STAGES
from .common import (
    DETECTRON2_CONVERTERS_HINT,
    MMSEG,
    CheckpointError,
    Conversion,
    Converter,
    build_conversion,
    check_against_model,  # noqa: F401  (importable from here, as before the shared module)
    check_four_stages,
    check_relative_position_index,
    check_swin_heads,
    checkpoint_id2label,
    errors_name_the_file,
    expect_shape,
    indices,
    raise_on_unmapped,
    read_checkpoint,
    relative_position_window,
    released_variant,
    tensor_shape,
    window_size_from_table,
)
from .model_card import semask_fpn_card_fields
from .run_config import (
    ResolvedSettings,
    Setting,
    check_consistent,
    check_dataset_classes,
    check_representable,
    drop_rate,
    integer,
    loss_weight,
    mmseg_head_checks,
    mmseg_loss_check,
    mmseg_pipeline,
    mmseg_run_configs,
    positive_int,
    probability,
    qk_scale_check,
    resolve_settings,
    swin_consistency_checks,
    training_only,
)


KIND = "SeMask-FPN (mmseg)"


# (original key pattern, hf key template) - applied with re.fullmatch, first match wins.
RENAMES: list[tuple[str, str]] = [
    (r"backbone\.patch_embed\.proj\.(weight|bias)", r"backbone.embeddings.projection.\1"),
    (r"backbone\.patch_embed\.norm\.(weight|bias)", r"backbone.embeddings.norm.\1"),
    (r"backbone\.absolute_pos_embed", r"backbone.embeddings.position_embeddings"),
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


def load_original_checkpoint(path: str | Path, kind: str = KIND) -> tuple[dict[str, torch.Tensor], dict]:
    """Reads an mmseg checkpoint (``{'meta', 'state_dict'}``) safely (:func:`.common.read_checkpoint`); ``kind``
    names the checkpoints the calling converter reads, for the error messages.

    Returns the state dict (a ``module.`` prefix from DDP is stripped) and ``meta`` (empty when absent)."""
    return read_checkpoint(path, MMSEG, kind, DETECTRON2_CONVERTERS_HINT)


def _shape(state_dict: dict, key: str, ndim: int | None = None) -> tuple[int, ...]:
    return tensor_shape(state_dict, key, "SeMask-FPN", ndim)


def check_semask_backbone(state_dict: dict[str, torch.Tensor], kind: str) -> None:
    """Fails clearly unless the state dict holds a SeMask-Swin backbone (Swin stages with semantic layers); ``kind``
    names the checkpoints the converter reads."""
    if not any(key.startswith("backbone.layers.") and ".semantic_layer." in key for key in state_dict):
        if any(key.startswith("backbone.layers.") for key in state_dict):
            raise CheckpointError(
                "no backbone.layers.*.semantic_layer keys: this is a plain Swin checkpoint, not SeMask"
            )
        raise CheckpointError(
            f"not a {kind} checkpoint: no 'backbone.layers.*' keys (first keys: {list(state_dict)[:5]})"
        )


def infer_backbone_fields(state_dict: dict[str, torch.Tensor], kind: str) -> tuple[dict, int]:
    """The :class:`SeMaskSwinConfig` fields of the ``backbone.*`` tensors (patch size, channels, embed dim, depths,
    heads, window size, MLP ratio, qkv bias, semantic blocks per stage, the patch embedding's norm and absolute
    position embedding with its pre-training grid) and the number of classes of the semantic
    layers. Shared by the SeMask-FPN and SeMask-Mask2Former converters (``kind`` names the checkpoints). Their models
    take four stages, each with a semantic layer (the original allows none in a stage, ``num_sem_blocks[i] = 0``,
    which no released model uses): any other layout is a :class:`CheckpointError` naming the stages."""
    check_semask_backbone(state_dict, kind)
    embed_dim, num_channels, patch_size, _ = tensor_shape(state_dict, "backbone.patch_embed.proj.weight", kind, 4)
    stages = indices(state_dict, r"backbone\.layers\.(\d+)\.")
    if stages != list(range(len(stages))):
        raise CheckpointError(f"stages {stages} are not numbered 0..n-1")
    check_four_stages(stages, "backbone.layers.N.*")
    table = "backbone.layers.{}.blocks.0.attn.relative_position_bias_table"
    depths = [len(indices(state_dict, rf"backbone\.layers\.{stage}\.blocks\.(\d+)\.")) for stage in stages]
    num_heads = [tensor_shape(state_dict, table.format(stage), kind, 2)[1] for stage in stages]
    check_swin_heads(embed_dim, num_heads, "the relative position bias tables")
    injection = r"backbone\.layers\.{}\.semantic_layer\.class_injection\.(\d+)\."
    num_semantic_blocks = [len(indices(state_dict, injection.format(stage))) for stage in stages]
    without = [stage for stage, count in enumerate(num_semantic_blocks) if not count]
    if without:
        raise CheckpointError(
            f"stage{'s' if len(without) > 1 else ''} {without} without a semantic layer (no "
            f"backbone.layers.{without[0]}.semantic_layer.class_injection.* keys; semantic blocks per stage "
            f"{num_semantic_blocks}): the converted SeMask models need a semantic layer in each of the four stages "
            "(every released model has one)"
        )
    semantic_query = "backbone.layers.0.semantic_layer.class_injection.0.mlp_cls_q.weight"
    mlp_hidden = tensor_shape(state_dict, "backbone.layers.0.blocks.0.mlp.fc1.weight", kind, 2)[0]
    fields = {
        "patch_size": patch_size,
        "num_channels": num_channels,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": num_heads,
        "window_size": window_size_from_table(tensor_shape(state_dict, table.format(0), kind)[0], table.format(0)),
        "mlp_ratio": mlp_hidden / embed_dim,
        "qkv_bias": "backbone.layers.0.blocks.0.attn.qkv.bias" in state_dict,
        "num_semantic_blocks": num_semantic_blocks,
        # the original's patch_norm: the LayerNorm's keys are in the weights exactly when it has one
        "use_patch_norm": any(key.startswith("backbone.patch_embed.norm.") for key in state_dict),
        **_absolute_embedding_fields(state_dict, kind, embed_dim, patch_size),
    }
    return fields, tensor_shape(state_dict, semantic_query, kind, 2)[0]


def _absolute_embedding_fields(state_dict: dict[str, torch.Tensor], kind: str, embed_dim: int, patch_size: int) -> dict:
    """The original's ``ape``: ``backbone.absolute_pos_embed``, ``(1, embed_dim, H, W)`` on the pre-training patch grid
    (``pretrain_img_size // patch_size``), gives ``use_absolute_embeddings`` and the ``image_size`` of that grid."""
    key = "backbone.absolute_pos_embed"
    if key not in state_dict:
        return {"use_absolute_embeddings": False}
    grid = tensor_shape(state_dict, key, kind, 4)[2:]
    expect_shape(key, state_dict[key], (1, embed_dim, *grid), f"one {embed_dim}-channel embedding per patch of a grid")
    height, width = (side * patch_size for side in grid)
    return {"use_absolute_embeddings": True, "image_size": height if height == width else [height, width]}


#: the values of a SeMask-FPN model the weights do not hold: where an mmseg config has them, and the defaults of the
#: original ``SeMaskSwinTransformer`` / mmseg classes when a run's config leaves a key out
SETTINGS = [
    Setting(
        "semantic_window_size",
        "the semantic attention window",
        "model.backbone.sem_window_size",
        code_default=7,
        read=positive_int,
    ),
    training_only("drop_path_rate", "stochastic depth", "model.backbone.drop_path_rate", drop_rate, 0.2),
    training_only("semantic_loss_weight", "the semantic loss weight", "model.decode_head.cate_w", loss_weight),
    training_only(
        "use_ohem",
        "online hard example mining",
        "model.decode_head.sampler",
        read=lambda sampler: sampler is not None and dict(sampler).get("type") == "OHEMPixelSampler",
        code_default=None,
    ),
    training_only("ohem_min_kept", "OHEM pixels kept", "model.decode_head.sampler.min_kept", positive_int, 100000),
    training_only(
        "ohem_threshold",
        "the OHEM probability threshold",
        "model.decode_head.sampler.thresh",
        lambda value: None if value is None else probability(value),
        None,
    ),
    training_only(
        "classifier_dropout_prob", "the classifier dropout", "model.decode_head.dropout_ratio", probability, 0.1
    ),
    training_only("loss_ignore_index", "the label the losses ignore", "model.decode_head.ignore_index", integer, 255),
]
CONFIG_FILE_HELP = "the run's mmseg config (.py)"
#: where an mmseg config (``SeMaskSwinTransformer``) keeps the Swin hyper-parameters the weights hold
MMSEG_SWIN_PATHS = {
    "embed_dim": "model.backbone.embed_dim",
    "patch_size": "model.backbone.patch_size",
    "depths": "model.backbone.depths",
    "num_heads": "model.backbone.num_heads",
    "window_size": "model.backbone.window_size",
    "mlp_ratio": "model.backbone.mlp_ratio",
    "qkv_bias": "model.backbone.qkv_bias",
    "use_absolute_embeddings": "model.backbone.ape",
    "use_patch_norm": "model.backbone.patch_norm",
    "num_semantic_blocks": "model.backbone.num_sem_blocks",
}


def _fpn_strides(value) -> bool:
    """``feature_strides`` of a ``BranchFPNHead`` the converted head computes: four strides, each twice the one
    before (each scale head then brings its level to the finest stride by one 2x upsampling per stage)."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 4
        and all(isinstance(stride, int) and not isinstance(stride, bool) and stride > 0 for stride in value)
        and all(stride == value[0] * 2**level for level, stride in enumerate(value))
    )


def _ohem_sampler(value) -> bool:
    """A decode head's ``sampler`` the converted model computes: none, or ``OHEMPixelSampler`` with its ``min_kept``
    and ``thresh`` (carried over as ``ohem_min_kept`` / ``ohem_threshold``)."""
    if value is None:
        return True
    return (
        isinstance(value, dict)
        and value.get("type") == "OHEMPixelSampler"
        and set(value) <= {"type", "thresh", "min_kept"}
    )


#: what a SeMask-FPN run's config may set that changes the output, is not in the weights and that the converted model
#: cannot represent unless it has the value the original's released configs have (:func:`check_representable`)
REPRESENTABLE_CHECKS = [
    *mmseg_head_checks(),
    (
        "model.decode_head.feature_strides",
        _fpn_strides,
        "upsamples each level by 2 once per stage (feature_strides [4, 8, 16, 32])",
    ),
    mmseg_loss_check("model.decode_head.loss_decode"),
    (
        "model.decode_head.sampler",
        _ohem_sampler,
        "samples pixels with OHEM or not at all (sampler None or dict(type='OHEMPixelSampler', thresh=..., min_kept=...))",
    ),
]


def infer_config_and_settings(
    state_dict: dict[str, torch.Tensor],
    meta: dict | None = None,
    variant: str | None = None,
    config_file: str | Path | None = None,
    run_configs: list | None = None,
) -> tuple[SeMaskSwinConfig, ResolvedSettings]:
    """The full :class:`SeMaskSwinConfig` of the checkpoint, and where the values the weights do not hold came from
    (whose ``variant`` is the released variant it is, None when it is none).

    From the tensors: the backbone (:func:`infer_backbone_fields`), classes, decoder channels. Global vs windowed
    semantic attention per stage follows the SeMask-FPN code's rule on (embed_dim, classes). Not in the weights
    (:data:`SETTINGS`): the semantic window (required), stochastic depth, the semantic loss weight and OHEM (training
    only), from ``config_file``, the config text in ``meta``, or the released variant (``variant``, or the one with
    exactly these weights); a required value none of them has stops the conversion, naming it. A config that
    contradicts the weights (classes, widths, patch size, depths, heads, window, MLP ratio, q/k/v bias, semantic
    blocks, APE) is refused, and so is one whose ``qk_scale``, ``align_corners``, head activation / norm / convolution,
    stage indices, FPN strides, loss or pixel sampler the converted model cannot represent
    (:data:`REPRESENTABLE_CHECKS`). The classifier dropout and the ignored label (training only) are carried over.
    """
    meta = meta or {}
    if run_configs is None:  # the caller may have read them already
        run_configs = mmseg_run_configs(config_file, meta)
    backbone, num_semantic_classes = infer_backbone_fields(state_dict, "SeMask-FPN")
    num_classes, decoder_channels = _shape(state_dict, "decode_head.conv_seg.weight", 4)[:2]
    if num_classes != num_semantic_classes:
        raise CheckpointError(
            f"the decode head predicts {num_classes} classes but the semantic layers {num_semantic_classes} "
            "(mlp_cls_q); the original training cannot have produced this checkpoint (its semantic loss compares "
            "the priors with the same labels), so it cannot be converted faithfully"
        )
    check_consistent(
        run_configs,
        [
            ("model.backbone.type", "SeMaskSwinTransformer", "a SeMask-Swin backbone"),
            ("model.decode_head.type", "BranchFPNHead", "a SeMask-FPN decode head"),
            ("model.decode_head.num_classes", num_classes, "decode_head.conv_seg.weight"),
            ("model.backbone.num_cls", num_semantic_classes, "the semantic layers' mlp_cls_q"),
            *swin_consistency_checks(backbone, MMSEG_SWIN_PATHS),
            ("model.decode_head.channels", decoder_channels, "decode_head.conv_seg.weight"),
        ],
    )
    check_dataset_classes(run_configs, num_classes, "decode_head.conv_seg.weight")
    check_representable(
        run_configs,
        [
            qk_scale_check("model.backbone.qk_scale", backbone["embed_dim"], backbone["num_heads"]),
            *REPRESENTABLE_CHECKS,
        ],
    )
    id2label = checkpoint_id2label(meta.get("CLASSES"), num_classes)
    config = SeMaskSwinConfig(
        **backbone,
        semantic_attention_types=semask_fpn_semantic_attention_types(backbone["embed_dim"], num_classes),
        out_features=list(FOUR_STAGES),  # the Semantic-FPN head takes the four stages
        decoder_hidden_size=decoder_channels,
        id2label=id2label,
        label2id={label: index for index, label in id2label.items()},
    )
    settings = resolve_settings(
        config, SETTINGS, run_configs, released_variant(config, variant), variant is not None, CONFIG_FILE_HELP
    )
    if not config.use_ohem:  # the pixels OHEM keeps mean nothing without OHEM
        settings.defaults = [default for default in settings.defaults if not default.startswith("ohem_min_kept=")]
    return config, settings


def infer_config_and_variant(
    state_dict: dict[str, torch.Tensor], meta: dict | None = None, **sources
) -> tuple[SeMaskSwinConfig, str | None]:
    """The full :class:`SeMaskSwinConfig` of the checkpoint and the released variant it is (see
    :func:`infer_config_and_settings`; ``sources``: its ``variant`` and ``config_file``)."""
    config, settings = infer_config_and_settings(state_dict, meta, **sources)
    return config, settings.variant


def infer_config(state_dict: dict[str, torch.Tensor], meta: dict | None = None, **sources) -> SeMaskSwinConfig:
    """The full :class:`SeMaskSwinConfig` of the checkpoint (see :func:`infer_config_and_settings`)."""
    return infer_config_and_settings(state_dict, meta, **sources)[0]


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames every key with :data:`RENAMES`. Raises :class:`CheckpointError` listing every key without a rule;
    checks the original's persistent ``relative_position_index`` buffers against the index the model rebuilds."""
    converted, unmapped = {}, []
    for key, tensor in state_dict.items():
        if RELATIVE_POSITION_INDEX.fullmatch(key):
            check_relative_position_index(key, tensor, relative_position_window(state_dict, key))
            continue
        new_key = rename_key(key)
        if new_key is None:
            unmapped.append(key)
        else:
            converted[new_key] = tensor
    raise_on_unmapped(unmapped)
    return converted


def convert(path: str | Path, variant: str | None = None, config_file: str | Path | None = None) -> Conversion:
    """Converts an original SeMask-FPN checkpoint file (see :func:`infer_config_and_settings` for ``variant`` and
    ``config_file``): the model (eval mode), its ``meta``, the released variant it is and the run's test
    pre-processing."""
    state_dict, meta = load_original_checkpoint(path)
    with errors_name_the_file(path):  # read once: the settings and the test pipeline both use them
        run_configs = mmseg_run_configs(config_file, meta)
    return build_conversion(
        path,
        SeMaskSwinForSemanticSegmentation,
        infer=lambda: infer_config_and_settings(state_dict, meta, variant, run_configs=run_configs),
        convert_keys=lambda: convert_state_dict(state_dict),
        original=state_dict,
        class_names=meta.get("CLASSES"),
        meta=meta,
        variant_given=variant is not None,
        pipeline=mmseg_pipeline(run_configs),
    )


def convert_checkpoint(path: str | Path, variant: str | None = None, config_file: str | Path | None = None):
    """Loads an original SeMask-FPN checkpoint file into a :class:`SeMaskSwinForSemanticSegmentation` (eval mode).

    Returns ``(model, meta)``."""
    conversion = convert(path, variant, config_file)
    return conversion.model, conversion.meta


#: the summary line of the command line (card fields)
SUMMARY = (
    "embed_dim {embed_dim}, depths [{depths}], heads [{num_heads}], window {window_size}, {num_labels} classes, "
    "semantic attention [{semantic_attention_types}] (window {semantic_window_size}){ohem_note}"
)
CONVERTER = Converter(SeMaskSwinConfig.model_type, MMSEG, convert, semask_fpn_card_fields, SUMMARY, CONFIG_FILE_HELP)
