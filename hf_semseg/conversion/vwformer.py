"""Conversion of original VWFormer checkpoints (yan-hao-tian/VW, mmseg 0.30 fork) to
:class:`VWFormerForSemanticSegmentation`.

The backbones become transformers' own classes: mmseg Swin -> ``SwinBackbone``, mmcls ConvNeXt -> ``ConvNextBackbone``,
mmseg MiT -> ``SegformerModel``; the head becomes :class:`VWFormerHead`. Read top to bottom: the rename tables
(:data:`SWIN_RENAMES`, :data:`CONVNEXT_RENAMES`, :data:`MIT_RENAMES`, :data:`HEAD_RENAMES`) are the whole key mapping,
the few tensors that need surgery (fused q/k/v, PatchMerging channel order, 1x1 convs stored as linears) are handled
by named functions, which check each tensor's shape first (an error names the original key), and :func:`infer_config` derives every hyper-parameter from the tensors except the two that are
not in the weights (attention heads and short-cut), read from the config text in ``meta`` or from the released
variant (:mod:`hf_semseg.variants`). :data:`CONVERTER` is what ``conversion/convert_vwformer_to_hf.py`` runs.
"""

import re
from pathlib import Path

import torch
from transformers import ConvNextConfig, SegformerConfig, SwinConfig

from ..models.configuration_vwformer import VWFormerConfig
from ..models.modeling_vwformer import VWFormerForSemanticSegmentation
from ..variants import FOUR_STAGES, MIT_ATTENTION_HEADS
from .common import (
    DETECTRON2_CONVERTERS_HINT,
    MMSEG,
    CheckpointError,
    Conversion,
    ConversionError,
    Converter,
    build_conversion,
    check_four_stages,
    check_relative_position_index,
    check_swin_heads,
    check_transformers_swin_embedding,
    checkpoint_id2label,
    errors_name_the_file,
    expect_shape,
    find_rename,
    indices,
    raise_on_unmapped,
    read_checkpoint,
    relative_position_window,
    released_variant,
    split_fused_qkv,
    tensor_shape,
    window_size_from_table,
)
from .model_card import vwformer_card_fields
from .run_config import (
    MMCV_BATCH_NORMS,
    ConfigFileError,
    ResolvedSettings,
    Setting,
    activation_check,
    align_corners_check,
    boolean,
    check_consistent,
    check_dataset_classes,
    check_heads_setting,
    check_representable,
    conv_check,
    drop_rate,
    first_value,
    int_list,
    integer,
    loss_weight,
    mmseg_head_checks,
    mmseg_loss_check,
    mmseg_pipeline,
    mmseg_run_configs,
    norm_check,
    positive_int,
    probability,
    qk_scale_check,
    read_config_value,
    resolve_settings,
    training_only,
)


KIND = "VWFormer (mmseg)"

# (original key pattern, hf key template) - applied with re.fullmatch, first match wins. A template of None marks a
# key handled by tensor surgery below.
SWIN_RENAMES: list[tuple[str, str | None]] = [
    (r"backbone\.patch_embed\.projection\.(weight|bias)", r"backbone.swin.embeddings.patch_embeddings.projection.\1"),
    (r"backbone\.patch_embed\.norm\.(weight|bias)", r"backbone.swin.embeddings.norm.\1"),
    (
        r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.norm1\.(weight|bias)",
        r"backbone.swin.encoder.layers.\1.blocks.\2.layernorm_before.\3",
    ),
    (
        r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.norm2\.(weight|bias)",
        r"backbone.swin.encoder.layers.\1.blocks.\2.layernorm_after.\3",
    ),
    (r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.qkv\.(weight|bias)", None),  # split_fused_qkv
    (
        r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.proj\.(weight|bias)",
        r"backbone.swin.encoder.layers.\1.blocks.\2.attention.o_proj.\3",
    ),
    (
        r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.relative_position_bias_table",
        r"backbone.swin.encoder.layers.\1.blocks.\2.attention.relative_position_bias.relative_position_bias_table",
    ),
    (r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.relative_position_index", None),  # checked, dropped
    (
        r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)",
        r"backbone.swin.encoder.layers.\1.blocks.\2.mlp.fc1.\3",
    ),
    (
        r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.1\.(weight|bias)",
        r"backbone.swin.encoder.layers.\1.blocks.\2.mlp.fc2.\3",
    ),
    (r"backbone\.stages\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)", None),  # unfold_to_concat
    (r"backbone\.norm(\d+)\.(weight|bias)", None),  # stage output norms, index shifted by one
]

CONVNEXT_RENAMES: list[tuple[str, str | None]] = [
    (r"backbone\.downsample_layers\.0\.0\.(weight|bias)", r"backbone.embeddings.patch_embeddings.\1"),
    (r"backbone\.downsample_layers\.0\.1\.(weight|bias)", r"backbone.embeddings.layernorm.\1"),
    (
        r"backbone\.downsample_layers\.([123])\.([01])\.(weight|bias)",
        r"backbone.encoder.stages.\1.downsampling_layer.\2.\3",
    ),
    (r"backbone\.stages\.(\d+)\.(\d+)\.gamma", r"backbone.encoder.stages.\1.layers.\2.layer_scale_parameter"),
    (
        r"backbone\.stages\.(\d+)\.(\d+)\.depthwise_conv\.(weight|bias)",
        r"backbone.encoder.stages.\1.layers.\2.dwconv.\3",
    ),
    (r"backbone\.stages\.(\d+)\.(\d+)\.norm\.(weight|bias)", r"backbone.encoder.stages.\1.layers.\2.layernorm.\3"),
    (
        r"backbone\.stages\.(\d+)\.(\d+)\.pointwise_conv1\.(weight|bias)",
        r"backbone.encoder.stages.\1.layers.\2.pwconv1.\3",
    ),
    (
        r"backbone\.stages\.(\d+)\.(\d+)\.pointwise_conv2\.(weight|bias)",
        r"backbone.encoder.stages.\1.layers.\2.pwconv2.\3",
    ),
    (r"backbone\.norm(\d+)\.(weight|bias)", None),  # stage output norms, index shifted by one
]

MIT_RENAMES: list[tuple[str, str | None]] = [
    (r"backbone\.layers\.(\d+)\.0\.projection\.(weight|bias)", r"backbone.stages.\1.patch_embeddings.proj.\2"),
    (r"backbone\.layers\.(\d+)\.0\.norm\.(weight|bias)", r"backbone.stages.\1.patch_embeddings.layer_norm.\2"),
    (r"backbone\.layers\.(\d+)\.1\.(\d+)\.norm1\.(weight|bias)", r"backbone.stages.\1.blocks.\2.layernorm_before.\3"),
    (r"backbone\.layers\.(\d+)\.1\.(\d+)\.norm2\.(weight|bias)", r"backbone.stages.\1.blocks.\2.layernorm_after.\3"),
    (r"backbone\.layers\.(\d+)\.1\.(\d+)\.attn\.attn\.in_proj_(weight|bias)", None),  # split_fused_qkv
    (
        r"backbone\.layers\.(\d+)\.1\.(\d+)\.attn\.attn\.out_proj\.(weight|bias)",
        r"backbone.stages.\1.blocks.\2.attention.o_proj.\3",
    ),
    (
        r"backbone\.layers\.(\d+)\.1\.(\d+)\.attn\.sr\.(weight|bias)",
        r"backbone.stages.\1.blocks.\2.attention.sequence_reduction.sequence_reduction.\3",
    ),
    (
        r"backbone\.layers\.(\d+)\.1\.(\d+)\.attn\.norm\.(weight|bias)",
        r"backbone.stages.\1.blocks.\2.attention.sequence_reduction.layer_norm.\3",
    ),
    (
        r"backbone\.layers\.(\d+)\.1\.(\d+)\.ffn\.layers\.0\.(weight|bias)",
        r"backbone.stages.\1.blocks.\2.mlp.fc1.\3",
    ),  # 1x1 conv
    (
        r"backbone\.layers\.(\d+)\.1\.(\d+)\.ffn\.layers\.1\.(weight|bias)",
        r"backbone.stages.\1.blocks.\2.mlp.dwconv.dwconv.\3",
    ),
    (
        r"backbone\.layers\.(\d+)\.1\.(\d+)\.ffn\.layers\.4\.(weight|bias)",
        r"backbone.stages.\1.blocks.\2.mlp.fc2.\3",
    ),  # 1x1 conv
    (r"backbone\.layers\.(\d+)\.2\.(weight|bias)", r"backbone.stages.\1.layer_norm.\2"),
]

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"

# Both heads; keys of only one of them simply never occur in the other's checkpoints.
HEAD_RENAMES: list[tuple[str, str | None]] = [
    (r"decode_head\.linear_c(\d)\.proj\.(weight|bias)", r"decode_head.linear_c\1.proj.\2"),  # vw: nn.Linear
    (r"decode_head\.linear_c(\d)\.conv\.weight", r"decode_head.linear_c\1.conv.weight"),  # vw_city: ConvModule
    (rf"decode_head\.linear_c(\d)\.bn\.{_BN}", r"decode_head.linear_c\1.batch_norm.\2"),
    (r"decode_head\.linear_fuse\.conv\.weight", r"decode_head.linear_fuse.conv.weight"),
    (rf"decode_head\.linear_fuse\.bn\.{_BN}", r"decode_head.linear_fuse.batch_norm.\1"),
    (r"decode_head\.short_path\.conv\.weight", r"decode_head.multi_scale.short_path.conv.weight"),
    (rf"decode_head\.short_path\.bn\.{_BN}", r"decode_head.multi_scale.short_path.batch_norm.\1"),
    (r"decode_head\.image_pool\.1\.conv\.weight", r"decode_head.multi_scale.image_pool.conv.weight"),
    (rf"decode_head\.image_pool\.1\.bn\.{_BN}", r"decode_head.multi_scale.image_pool.batch_norm.\1"),
    (r"decode_head\.ds\.(\d+)\.conv\.weight", r"decode_head.multi_scale.attentions.\1.context_embedding.conv.weight"),
    (rf"decode_head\.ds\.(\d+)\.bn\.{_BN}", r"decode_head.multi_scale.attentions.\1.context_embedding.batch_norm.\2"),
    # vw: mmcv NonLocal2d theta / phi / g (1x1 convs with bias) and conv_out (1x1 conv without bias + BN)
    (r"decode_head\.attn\.(\d+)\.theta\.conv\.(weight|bias)", r"decode_head.multi_scale.attentions.\1.query_proj.\2"),
    (r"decode_head\.attn\.(\d+)\.phi\.conv\.(weight|bias)", r"decode_head.multi_scale.attentions.\1.key_proj.\2"),
    (r"decode_head\.attn\.(\d+)\.g\.conv\.(weight|bias)", r"decode_head.multi_scale.attentions.\1.value_proj.\2"),
    (r"decode_head\.attn\.(\d+)\.conv_out\.conv\.weight", r"decode_head.multi_scale.attentions.\1.output_proj.weight"),
    (rf"decode_head\.attn\.(\d+)\.conv_out\.bn\.{_BN}", r"decode_head.multi_scale.attentions.\1.output_norm.\2"),
    # vw_city: nn.MultiheadAttention
    (r"decode_head\.attn\.(\d+)\.in_proj_(weight|bias)", None),  # split_fused_qkv
    (r"decode_head\.attn\.(\d+)\.out_proj\.(weight|bias)", r"decode_head.multi_scale.attentions.\1.output_proj.\2"),
    (r"decode_head\.cat\.conv\.weight", r"decode_head.multi_scale.fuse.conv.weight"),
    (rf"decode_head\.cat\.bn\.{_BN}", r"decode_head.multi_scale.fuse.batch_norm.\1"),
    (r"decode_head\.low_level_fuse\.conv\.weight", r"decode_head.low_level_fuse.conv.weight"),
    (rf"decode_head\.low_level_fuse\.bn\.{_BN}", r"decode_head.low_level_fuse.batch_norm.\1"),
    (r"decode_head\.conv_seg\.(weight|bias)", r"decode_head.classifier.\1"),
    # an mmseg FCNHead auxiliary head (no release has one) as transformers' UperNetFCNHead
    (r"auxiliary_head\.(convs\.\d+|conv_cat)\.conv\.weight", r"auxiliary_head.\1.conv.weight"),
    (rf"auxiliary_head\.(convs\.\d+|conv_cat)\.bn\.{_BN}", r"auxiliary_head.\1.batch_norm.\2"),
    (r"auxiliary_head\.conv_seg\.(weight|bias)", r"auxiliary_head.classifier.\1"),
]

BACKBONE_RENAMES = {"swin": SWIN_RENAMES, "convnext": CONVNEXT_RENAMES, "mit": MIT_RENAMES}

# --------------------------------------------------------------------------------------------------------------------
# Detection and config inference
# --------------------------------------------------------------------------------------------------------------------


def _shape(state_dict: dict, key: str, ndim: int | None = None) -> tuple[int, ...]:
    return tensor_shape(state_dict, key, "VWFormer", ndim)


def detect_backbone_type(state_dict: dict) -> str:
    if "backbone.patch_embed.projection.weight" in state_dict:
        return "swin"
    if "backbone.downsample_layers.0.0.weight" in state_dict:
        return "convnext"
    if "backbone.layers.0.0.projection.weight" in state_dict:
        return "mit"
    if "backbone.patch_embed.proj.weight" in state_dict:
        raise CheckpointError(
            "backbone.patch_embed.proj.weight: a Swin in the older (SeMask / Swin-Transformer-Semantic-Segmentation) "
            "layout; VWFormer checkpoints use mmseg 0.30's Swin (backbone.patch_embed.projection.*)"
        )
    backbone_keys = [key for key in state_dict if key.startswith("backbone.")][:5]
    raise CheckpointError(
        "unknown backbone: expected mmseg Swin (backbone.patch_embed.projection.*), mmcls ConvNeXt "
        f"(backbone.downsample_layers.*) or mmseg MiT (backbone.layers.*.0.projection.*); first backbone keys: "
        f"{backbone_keys}"
    )


def detect_head_type(state_dict: dict) -> str:
    if "decode_head.attn.0.in_proj_weight" in state_dict:
        return "vw_city"
    if "decode_head.attn.0.theta.conv.weight" in state_dict or "decode_head.image_pool.1.conv.weight" in state_dict:
        return "vw"
    head_keys = [key for key in state_dict if key.startswith("decode_head.")][:5]
    raise CheckpointError(
        "not a VWFormer decode head: neither decode_head.attn.0.theta.conv.weight (VWHead) nor "
        f"decode_head.attn.0.in_proj_weight (VWCityHead); first decode_head keys: {head_keys or 'none'}"
    )


def infer_swin_config(state_dict: dict) -> SwinConfig:
    embed_dim, num_channels, patch_size, _ = _shape(state_dict, "backbone.patch_embed.projection.weight", 4)
    stages = indices(state_dict, r"backbone\.stages\.(\d+)\.")
    check_four_stages(stages, "backbone.stages.N.*")
    depths = [len(indices(state_dict, rf"backbone\.stages\.{stage}\.blocks\.(\d+)\.")) for stage in stages]
    table = "backbone.stages.{}.blocks.0.attn.w_msa.relative_position_bias_table"
    num_heads = [_shape(state_dict, table.format(stage), 2)[1] for stage in stages]
    check_swin_heads(embed_dim, num_heads, "the relative position bias tables")
    window_size = window_size_from_table(_shape(state_dict, table.format(0))[0], table.format(0))
    mlp_hidden = _shape(state_dict, "backbone.stages.0.blocks.0.ffn.layers.0.0.weight", 2)[0]
    check_transformers_swin_embedding(state_dict, "use_abs_pos_embed=True", "patch_norm=False", "VWFormer")
    return SwinConfig(
        patch_size=patch_size,
        num_channels=num_channels,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        mlp_ratio=mlp_hidden / embed_dim,
        qkv_bias="backbone.stages.0.blocks.0.attn.w_msa.qkv.bias" in state_dict,
        drop_path_rate=0.3,
        out_features=list(FOUR_STAGES),
    )


def infer_convnext_config(state_dict: dict) -> ConvNextConfig:
    _, num_channels, patch_size, _ = _shape(state_dict, "backbone.downsample_layers.0.0.weight", 4)
    stages = indices(state_dict, r"backbone\.stages\.(\d+)\.")
    check_four_stages(stages, "backbone.stages.N.*")
    depths = [len(indices(state_dict, rf"backbone\.stages\.{stage}\.(\d+)\.")) for stage in stages]
    hidden_sizes = [_shape(state_dict, f"backbone.stages.{stage}.0.depthwise_conv.weight", 4)[0] for stage in stages]
    return ConvNextConfig(
        num_channels=num_channels,
        patch_size=patch_size,
        hidden_sizes=hidden_sizes,
        depths=depths,
        layer_scale_init_value=1.0 if "backbone.stages.0.0.gamma" in state_dict else 0.0,
        drop_path_rate=0.4,
        out_features=list(FOUR_STAGES),
    )


def infer_mit_config(state_dict: dict) -> SegformerConfig:
    stages = indices(state_dict, r"backbone\.layers\.(\d+)\.")
    check_four_stages(stages, "backbone.layers.N.*")
    depths = [len(indices(state_dict, rf"backbone\.layers\.{stage}\.1\.(\d+)\.")) for stage in stages]
    hidden_sizes, patch_sizes, sr_ratios, mlp_ratios = [], [], [], []
    for stage in stages:
        hidden, _, kernel, _ = _shape(state_dict, f"backbone.layers.{stage}.0.projection.weight", 4)
        hidden_sizes.append(hidden)
        patch_sizes.append(kernel)
        sr_key = f"backbone.layers.{stage}.1.0.attn.sr.weight"
        sr_ratios.append(_shape(state_dict, sr_key, 4)[-1] if sr_key in state_dict else 1)
        mlp_ratios.append(_shape(state_dict, f"backbone.layers.{stage}.1.0.ffn.layers.0.weight", 4)[0] // hidden)
    return SegformerConfig(
        num_channels=_shape(state_dict, "backbone.layers.0.0.projection.weight", 4)[1],
        num_encoder_blocks=len(stages),
        depths=depths,
        sr_ratios=sr_ratios,
        hidden_sizes=hidden_sizes,
        patch_sizes=patch_sizes,
        strides=[4] + [2] * (len(stages) - 1),
        num_attention_heads=list(MIT_ATTENTION_HEADS)[: len(stages)],  # not in the weights: set from the run
        mlp_ratios=mlp_ratios,
        drop_path_rate=0.1,
    )


#: the values of a VWFormer model the weights do not hold, and where an mmseg config has them (``VWHead`` and
#: ``VWCityHead`` have no defaults for ``nheads`` and ``short_cut``)
HEAD_SETTINGS = [
    Setting("num_attention_heads", "the decode head's attention heads", "model.decode_head.nheads", read=positive_int),
    Setting("use_short_cut", "the decode head's short-cut", "model.decode_head.short_cut", read=boolean),
]
#: MiT's attention heads per stage (mmseg ``MixVisionTransformer`` default ``[1, 2, 4, 8]``)
MIT_HEADS = Setting(
    "backbone_config.num_attention_heads",
    "the MiT backbone's attention heads per stage",
    "model.backbone.num_heads",
    code_default=[1, 2, 4, 8],
    read=int_list,
)
DROP_PATH = training_only(
    "backbone_config.drop_path_rate", "stochastic depth", "model.backbone.drop_path_rate", drop_rate
)
#: the training-only values of the decode head (``BaseDecodeHead`` and ``CrossEntropyLoss`` defaults)
HEAD_TRAINING_SETTINGS = [
    training_only(
        "classifier_dropout_prob", "the classifier dropout", "model.decode_head.dropout_ratio", probability, 0.1
    ),
    training_only("loss_ignore_index", "the label the loss ignores", "model.decode_head.ignore_index", integer, 255),
    training_only(
        "loss_mean_over_all_pixels",
        "the loss average over all pixels",
        "model.decode_head.loss_decode.avg_non_ignore",
        lambda value: not boolean(value),  # mmseg 0.30 averages over the labelled pixels only with avg_non_ignore
        False,
    ),
]
CONFIG_FILE_HELP = "the run's mmseg config (.py)"
#: the original backbone and head class of each converted type, as a run's config names them
BACKBONE_TYPES = {"swin": "SwinTransformer", "convnext": "mmcls.ConvNeXt", "mit": "MixVisionTransformer"}
HEAD_TYPES = {"vw": "VWHead", "vw_city": "VWCityHead"}


#: the activation and norm of each backbone as the converted backbones compute them (transformers' Swin: GELU,
#: LayerNorm eps 1e-5; ConvNeXt: GELU, channels-first LayerNorm eps 1e-6; MiT: GELU, LayerNorms of the run's eps,
#: carried over by :func:`_mit_layer_norm_eps`), as a run's config names them
BACKBONE_ACTIVATION_AND_NORM = {
    "swin": ("GELU", ("LN",), 1e-5),
    "convnext": ("GELU", ("LN2d",), 1e-6),
    "mit": ("GELU", ("LN",), None),
}


def _representable_checks(backbone_type: str, backbone_config, head_type: str) -> list[tuple]:
    """What a run's config may set that changes the output, is not in the weights and that the converted model
    cannot represent unless it has the default (:func:`.run_config.check_representable`). The head's ``norm_cfg``
    epsilon is carried over for a ``VWCityHead`` (every BatchNorm of it follows ``norm_cfg``:
    :func:`_head_batch_norm_eps`); a ``VWHead`` hard-codes SyncBN (eps 1e-5) for all but two of its BatchNorms, so
    its ``norm_cfg`` must have eps 1e-5."""
    activation, norms, eps = BACKBONE_ACTIVATION_AND_NORM[backbone_type]
    checks = [
        # mmcls counts negative indices from the end, mmseg's Swin and MiT match none
        *mmseg_head_checks(None if head_type == "vw_city" else 1e-5, negative_out_indices=backbone_type == "convnext"),
        mmseg_loss_check("model.decode_head.loss_decode", options=("avg_non_ignore",)),
        activation_check("model.backbone.act_cfg", activation, "the backbone"),
    ]
    if norms is not None:
        checks.append(norm_check("model.backbone.norm_cfg", norms, eps, "the backbone"))
    if backbone_type == "swin":
        standard = [backbone_config.patch_size] + [2] * (len(backbone_config.depths) - 1)
        checks += [
            qk_scale_check("model.backbone.qk_scale", backbone_config.embed_dim, backbone_config.num_heads),
            (
                "model.backbone.strides",
                lambda value: isinstance(value, (list, tuple)) and list(value) == standard,
                f"strides {standard} (the patch embedding by its patch size, each patch merging by 2)",
            ),
        ]
    return checks


def _mit_strides(run_configs: list, backbone_config) -> None:
    """MiT's patch-embedding strides (``model.backbone.strides``) from the run's config, when it sets them (the
    weights do not hold them; without them, ``MixVisionTransformer``'s default [4, 2, 2, 2] is the run's)."""
    strides, source = first_value(run_configs, ["model.backbone.strides"])
    if strides is None:
        return
    stages = len(backbone_config.depths)
    strides = read_config_value(
        source, "model.backbone.strides", strides, lambda value: [positive_int(stride) for stride in int_list(value)]
    )
    if len(strides) != stages:
        raise ConfigFileError(
            f"{source}: model.backbone.strides = {strides}, expected one value per stage ({stages} stages in the "
            "weights)"
        )
    backbone_config.strides = strides


def _backbone_checks(backbone_type: str, backbone_config) -> list[tuple[str, object, str]]:
    """What a run's config may say about the backbone that the weights also tell."""
    checks = [("model.backbone.type", BACKBONE_TYPES[backbone_type], "the backbone's key layout")]
    if backbone_type == "swin":
        checks += [
            ("model.backbone.embed_dims", backbone_config.embed_dim, "backbone.patch_embed.projection.weight"),
            ("model.backbone.depths", backbone_config.depths, "the backbone.stages.*.blocks.* keys"),
            ("model.backbone.num_heads", backbone_config.num_heads, "the relative position bias tables"),
            ("model.backbone.window_size", backbone_config.window_size, "the relative position bias tables"),
        ]
    elif backbone_type == "convnext":
        checks += [
            ("model.backbone.arch.depths", backbone_config.depths, "the backbone.stages.* keys"),
            ("model.backbone.arch.channels", backbone_config.hidden_sizes, "the depthwise convolutions"),
        ]
    else:
        checks += [("model.backbone.num_layers", backbone_config.depths, "the backbone.layers.*.1.* keys")]
    return checks


#: the mmseg ``FCNHead`` auxiliary head as the converted model computes it (transformers' ``UperNetFCNHead`` on the
#: third stage): what a run's config may set that the weights do not hold and that must have these values
AUXILIARY_HEAD_CHECKS = [
    align_corners_check("model.auxiliary_head.align_corners"),
    activation_check("model.auxiliary_head.act_cfg", "ReLU", "the auxiliary head's convolution modules"),
    norm_check("model.auxiliary_head.norm_cfg", MMCV_BATCH_NORMS, 1e-5, "the auxiliary head's convolution modules"),
    conv_check("model.auxiliary_head.conv_cfg", "the auxiliary head"),
    ("model.auxiliary_head.dilation", lambda value: value == 1, "convolves without dilation (dilation 1)"),
    ("model.auxiliary_head.input_transform", lambda value: value is None, "takes one stage (input_transform None)"),
    mmseg_loss_check("model.auxiliary_head.loss_decode", carried=("loss_weight",)),
]
#: the auxiliary loss weight (training only; ``CrossEntropyLoss``'s default 1.0 where a run's head sets none)
AUXILIARY_LOSS_WEIGHT = training_only(
    "auxiliary_loss_weight",
    "the auxiliary loss weight",
    "model.auxiliary_head.loss_decode.loss_weight",
    loss_weight,
    1.0,
)


def _auxiliary_head_consistency(auxiliary: dict, num_labels: int, in_channels: int) -> list[tuple[str, object, str]]:
    """What a run's ``auxiliary_head`` must agree on with its weights (``auxiliary``: :func:`infer_auxiliary_head`'s
    fields; ``in_channels``: the third stage's)."""
    return [
        ("model.auxiliary_head.type", "FCNHead", "the auxiliary_head.* key layout"),
        ("model.auxiliary_head.in_index", 2, "the input channels of the auxiliary head's first convolution"),
        ("model.auxiliary_head.in_channels", in_channels, "the auxiliary head's first convolution"),
        ("model.auxiliary_head.num_classes", num_labels, "auxiliary_head.conv_seg.weight"),
        ("model.auxiliary_head.channels", auxiliary["auxiliary_channels"], "auxiliary_head.conv_seg.weight"),
        ("model.auxiliary_head.num_convs", auxiliary["auxiliary_num_convs"], "the auxiliary_head.convs.* keys"),
        ("model.auxiliary_head.concat_input", auxiliary["auxiliary_concat_input"], "the auxiliary_head.conv_cat keys"),
        ("model.auxiliary_head.kernel_size", 3, "the auxiliary head's convolution weights"),
    ]


def _backbone_stage_channels(backbone_type: str, backbone_config) -> list[int]:
    """The channels of the four stages the backbone of ``backbone_config`` emits."""
    if backbone_type == "swin":
        return [backbone_config.embed_dim * 2**stage for stage in range(len(backbone_config.depths))]
    return list(backbone_config.hidden_sizes)


def infer_auxiliary_head(state_dict: dict, stage_channels: list[int]) -> dict:
    """The :class:`VWFormerConfig` fields of an mmseg ``FCNHead`` auxiliary head (``auxiliary_head.*``; none in any
    release), which the converted model computes as transformers' ``UperNetFCNHead`` on the third stage: its
    channels, 3x3 convolution modules (with BatchNorm, no bias) and ``concat_input`` from the weights. Empty without
    one; a :class:`CheckpointError` naming the tensor for a layout that head cannot take."""
    if not any(key.startswith("auxiliary_head.") for key in state_dict):
        return {}
    num_labels = _shape(state_dict, "decode_head.conv_seg.weight", 4)[0]
    classes, channels, _, _ = _shape(state_dict, "auxiliary_head.conv_seg.weight", 4)
    if classes != num_labels:
        raise CheckpointError(
            f"auxiliary_head.conv_seg.weight: {classes} classes, but the decode head predicts {num_labels}"
        )
    num_convs = len(indices(state_dict, r"auxiliary_head\.convs\.(\d+)\."))
    concat_input = any(key.startswith("auxiliary_head.conv_cat.") for key in state_dict)
    first = "auxiliary_head.convs.0.conv.weight" if num_convs else "auxiliary_head.conv_seg.weight"
    in_channels = _shape(state_dict, first, 4)[1]
    if in_channels != stage_channels[2]:
        raise CheckpointError(
            f"{first}: {in_channels} input channels, but the converted auxiliary head takes the third backbone stage "
            f"({stage_channels[2]} channels; in_index 2 in every mmseg config with one); stage channels {stage_channels}"
        )
    for index in range(num_convs):
        key = f"auxiliary_head.convs.{index}.conv.weight"
        _shape(state_dict, key, 4)  # names a missing one (convolutions numbered with a gap)
        expect_shape(key, state_dict[key], (channels, in_channels if index == 0 else channels, 3, 3), "a 3x3 conv")
        if (
            f"auxiliary_head.convs.{index}.conv.bias" in state_dict
            or f"auxiliary_head.convs.{index}.bn.weight" not in state_dict
        ):
            raise CheckpointError(
                f"auxiliary_head.convs.{index}: a convolution module without BatchNorm (a conv bias, no bn.* keys); "
                "the converted auxiliary head's have BatchNorm and no bias"
            )
    return {
        "use_auxiliary_head": True,
        "auxiliary_channels": channels,
        "auxiliary_num_convs": num_convs,
        "auxiliary_concat_input": concat_input,
    }


def _head_batch_norm_eps(run_configs: list) -> float:
    """The epsilon of the decode head's BatchNorms: ``model.decode_head.norm_cfg``'s ``eps`` in the first run config
    that sets it (checked by :func:`_representable_checks`: any positive one for a ``VWCityHead``, 1e-5 for a
    ``VWHead``), else mmcv's default 1e-5."""
    return _norm_cfg_eps(run_configs, "model.decode_head.norm_cfg", 1e-5)


def _mit_layer_norm_eps(run_configs: list) -> float:
    """The epsilon of every LayerNorm of a MiT backbone: ``model.backbone.norm_cfg``'s ``eps`` in the first run config
    that sets it (any positive one, checked by :func:`_representable_checks`), else ``MixVisionTransformer``'s default
    ``dict(type='LN', eps=1e-6)``, the one of every release."""
    return _norm_cfg_eps(run_configs, "model.backbone.norm_cfg", 1e-6)


def _norm_cfg_eps(run_configs: list, path: str, code_default: float) -> float:
    """``eps`` of the mmcv ``norm_cfg`` at ``path`` in the first run config that sets it (mmcv's norm layers default
    to 1e-5 where the dict gives none), else ``code_default``, the original class's own ``norm_cfg``."""
    norm_cfg, _ = first_value(run_configs, [path])
    return float(norm_cfg.get("eps", 1e-5)) if isinstance(norm_cfg, dict) else code_default


def infer_config_and_settings(
    state_dict: dict,
    meta: dict | None = None,
    variant: str | None = None,
    config_file: str | Path | None = None,
    run_configs: list | None = None,
) -> tuple[VWFormerConfig, ResolvedSettings]:
    """The full :class:`VWFormerConfig` of the checkpoint and where the values the weights do not hold came from
    (whose ``variant`` is the released variant the checkpoint is). Backbone architecture, head type, channels,
    enlarging ratios and classes from the tensors; the head's attention heads and short-cut (and MiT's heads) from
    ``config_file``, the config text in ``meta`` or the released variant (``variant``, whose weights must then be the
    checkpoint's, or the one with exactly these weights), else the conversion stops naming them. A config whose head
    or backbone settings the converted model cannot represent is refused (:func:`_representable_checks`); the head's
    BatchNorm epsilon, a MiT backbone's LayerNorm epsilon and the training-only dropout, ignored label and loss average are carried over."""
    meta = meta or {}
    if run_configs is None:  # the caller may have read them already
        run_configs = mmseg_run_configs(config_file, meta)
    backbone_type = detect_backbone_type(state_dict)
    head_type = detect_head_type(state_dict)
    backbone_config = {"swin": infer_swin_config, "convnext": infer_convnext_config, "mit": infer_mit_config}[
        backbone_type
    ](state_dict)
    stage_channels = _backbone_stage_channels(backbone_type, backbone_config)
    auxiliary = infer_auxiliary_head(state_dict, stage_channels)

    decoder_hidden_size = _shape(state_dict, "decode_head.linear_fuse.conv.weight", 4)[0]
    num_labels = _shape(state_dict, "decode_head.conv_seg.weight", 4)[0]
    c1_key = "decode_head.linear_c1.proj.weight" if head_type == "vw" else "decode_head.linear_c1.conv.weight"
    low_level_channels = _shape(state_dict, c1_key, 2 if head_type == "vw" else 4)[0]
    ratios = [
        _shape(state_dict, f"decode_head.ds.{j}.conv.weight", 4)[-1]
        for j in indices(state_dict, r"decode_head\.ds\.(\d+)\.")
    ]
    check_consistent(
        run_configs,
        _backbone_checks(backbone_type, backbone_config)
        + [
            ("model.decode_head.type", HEAD_TYPES[head_type], "the decode head's key layout"),
            ("model.decode_head.num_classes", num_labels, "decode_head.conv_seg.weight"),
            ("model.decode_head.channels", decoder_hidden_size, "decode_head.linear_fuse.conv.weight"),
        ],
    )
    check_dataset_classes(run_configs, num_labels, "decode_head.conv_seg.weight")
    check_representable(run_configs, _representable_checks(backbone_type, backbone_config, head_type))
    if auxiliary:
        check_consistent(run_configs, _auxiliary_head_consistency(auxiliary, num_labels, stage_channels[2]))
        check_representable(run_configs, AUXILIARY_HEAD_CHECKS)
    if backbone_type == "mit":
        _mit_strides(run_configs, backbone_config)
        backbone_config.layer_norm_eps = _mit_layer_norm_eps(run_configs)
    id2label = checkpoint_id2label(meta.get("CLASSES"), num_labels)
    config = VWFormerConfig(
        backbone_config=backbone_config,
        head_type=head_type,
        decoder_hidden_size=decoder_hidden_size,
        enlarging_ratios=ratios,
        low_level_channels=low_level_channels,
        batch_norm_eps=_head_batch_norm_eps(run_configs),
        **auxiliary,
        id2label=id2label,
        label2id={label: index for index, label in id2label.items()},
    )
    settings = HEAD_SETTINGS + ([MIT_HEADS] if backbone_type == "mit" else []) + [DROP_PATH, *HEAD_TRAINING_SETTINGS]
    if auxiliary:
        settings.append(AUXILIARY_LOSS_WEIGHT)
    resolved = resolve_settings(
        config, settings, run_configs, released_variant(config, variant), variant is not None, CONFIG_FILE_HELP
    )
    if backbone_type == "mit" and len(config.backbone_config.num_attention_heads) != len(config.backbone_config.depths):
        raise ConversionError(
            f"{resolved.sources[MIT_HEADS.name]}: {MIT_HEADS.path} = {config.backbone_config.num_attention_heads}, "
            f"expected one value per stage ({len(config.backbone_config.depths)} stages in the weights)"
        )
    heads = HEAD_SETTINGS[0]  # the decode head's attention heads
    check_heads_setting(resolved, heads.name, heads.path, "the decode head's attention", decoder_hidden_size)
    if backbone_type == "mit":
        hidden_sizes = config.backbone_config.hidden_sizes
        check_heads_setting(resolved, MIT_HEADS.name, MIT_HEADS.path, "MiT stage", hidden_sizes)
    return config, resolved


def infer_config_and_variant(
    state_dict: dict, meta: dict | None = None, variant: str | None = None, config_file: str | Path | None = None
) -> tuple[VWFormerConfig, str | None]:
    """The full :class:`VWFormerConfig` of the checkpoint and the released variant it is (see
    :func:`infer_config_and_settings`)."""
    config, settings = infer_config_and_settings(state_dict, meta, variant, config_file)
    return config, settings.variant


def infer_config(
    state_dict: dict, meta: dict | None = None, variant: str | None = None, config_file: str | Path | None = None
) -> VWFormerConfig:
    """The full :class:`VWFormerConfig` of the checkpoint (see :func:`infer_config_and_settings`)."""
    return infer_config_and_settings(state_dict, meta, variant, config_file)[0]


# --------------------------------------------------------------------------------------------------------------------
# Tensor surgery
# --------------------------------------------------------------------------------------------------------------------


def unfold_to_concat_order(tensor: torch.Tensor, key: str = "tensor") -> torch.Tensor:
    """Input channels of mmseg's PatchMerging (``nn.Unfold(2, stride=2)``: channel-major, then the 2x2 positions
    (0,0),(0,1),(1,0),(1,1)) reordered as transformers' Swin concatenates them (position-major: (0,0),(1,0),(0,1),
    (1,1)). Works on the reduction weight (last dim) and the norm parameters (only dim); ``key`` names the tensor in
    the error when its last dimension is not 4 x channels."""
    *leading, channels = tensor.shape if tensor.ndim else (0,)
    if not tensor.ndim or channels % 4:
        raise CheckpointError(
            f"{key}: shape {tuple(tensor.shape)}, expected a last dimension of 4 x channels (the 2x2 patch merging)"
        )
    grouped = tensor.reshape(*leading, channels // 4, 4)[..., [0, 2, 1, 3]]
    return grouped.transpose(-1, -2).reshape(*leading, channels)


def _squeeze_1x1(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv weight ``(out, in, 1, 1)`` as a linear weight ``(out, in)`` (a linear weight stays as it is);
    anything else is an error naming ``key``."""
    if tensor.ndim == 4 and tuple(tensor.shape[2:]) == (1, 1):
        return tensor.flatten(1)
    if tensor.ndim == 2:
        return tensor
    out_channels, in_channels = (tuple(tensor.shape) + (0, 0))[:2] if tensor.ndim else ("out", "in")
    raise CheckpointError(
        f"{key}: shape {tuple(tensor.shape)}, expected ({out_channels}, {in_channels}, 1, 1) (a 1x1 convolution) "
        f"or ({out_channels}, {in_channels}) (a linear layer)"
    )


def _stage_channels(state_dict: dict, stage: str) -> int | None:
    """The channels of mmseg Swin stage ``stage`` (its first block's norm), None when the state dict lacks it."""
    norm = state_dict.get(f"backbone.stages.{stage}.blocks.0.norm1.weight")
    return norm.shape[0] if norm is not None and norm.ndim == 1 else None


def _projection_width(state_dict: dict, out_proj_key: str) -> int | None:
    """The input width of the output projection ``out_proj_key`` (the width of the fused q, k, v projections before
    it); None when the state dict lacks it."""
    weight = state_dict.get(out_proj_key)
    return weight.shape[1] if weight is not None and weight.ndim >= 2 else None


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps every key; raises :class:`CheckpointError` naming the keys it cannot account for."""
    backbone_type = detect_backbone_type(state_dict)
    table = BACKBONE_RENAMES[backbone_type] + HEAD_RENAMES
    converted: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, tensor in state_dict.items():
        known, new_key = find_rename(key, table)
        if not known:
            unmapped.append(key)
            continue
        if new_key is not None:
            if new_key.endswith(
                (".query_proj.weight", ".key_proj.weight", ".value_proj.weight", ".output_proj.weight")
            ):
                tensor = _squeeze_1x1(key, tensor)
            elif re.search(r"\.mlp\.fc[12]\.weight$", new_key) and backbone_type == "mit":
                tensor = _squeeze_1x1(key, tensor)
            converted[new_key] = tensor
            continue
        converted.update(_surgery(key, tensor, state_dict))
    raise_on_unmapped(unmapped)
    return converted


def _surgery(key: str, tensor: torch.Tensor, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys whose rename table entry is ``None``; every tensor is shape-checked (against the widths its
    neighbours in ``state_dict`` give) before it is split or reordered."""
    if match := re.fullmatch(r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.qkv\.(weight|bias)", key):
        stage, block, kind = match.groups()
        prefix = f"backbone.swin.encoder.layers.{stage}.blocks.{block}.attention"
        return split_fused_qkv(key, tensor, prefix, kind, dim=_stage_channels(state_dict, stage))
    if match := re.fullmatch(r"backbone\.layers\.(\d+)\.1\.(\d+)\.attn\.attn\.in_proj_(weight|bias)", key):
        stage, block, kind = match.groups()
        width = _projection_width(state_dict, f"backbone.layers.{stage}.1.{block}.attn.attn.out_proj.weight")
        return split_fused_qkv(key, tensor, f"backbone.stages.{stage}.blocks.{block}.attention", kind, dim=width)
    if match := re.fullmatch(r"decode_head\.attn\.(\d+)\.in_proj_(weight|bias)", key):
        branch, kind = match.groups()
        prefix = f"decode_head.multi_scale.attentions.{branch}"
        width = _projection_width(state_dict, f"decode_head.attn.{branch}.out_proj.weight")
        return split_fused_qkv(key, tensor, prefix, kind, names=("query_proj", "key_proj", "value_proj"), dim=width)
    if re.fullmatch(r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.relative_position_index", key):
        check_relative_position_index(key, tensor, relative_position_window(state_dict, key))
        return {}
    if match := re.fullmatch(r"backbone\.stages\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)", key):
        stage, name = match.groups()
        channels = _stage_channels(state_dict, stage)
        if channels is not None:
            expected = (2 * channels, 4 * channels) if name == "reduction.weight" else (4 * channels,)
            expect_shape(key, tensor, expected, f"the patch merging {name} of a {channels}-channel stage")
        return {f"backbone.swin.encoder.layers.{stage}.downsample.{name}": unfold_to_concat_order(tensor, key)}
    if match := re.fullmatch(r"backbone\.norm(\d+)\.(weight|bias)", key):
        stage, kind = match.groups()
        return {f"backbone.hidden_states_norms.stage{int(stage) + 1}.{kind}": tensor}
    raise CheckpointError(f"{key}: no conversion rule")  # a table entry without a handler: a converter bug


def convert(path: str | Path, variant: str | None = None, config_file: str | Path | None = None) -> Conversion:
    """Converts an original VWFormer checkpoint file (see :func:`infer_config_and_settings` for ``variant`` and
    ``config_file``): the model (eval mode), its ``meta``, the released variant it is and the run's test
    pre-processing."""
    state_dict, meta = read_checkpoint(path, MMSEG, KIND, DETECTRON2_CONVERTERS_HINT)
    with errors_name_the_file(path):  # read once: the settings and the test pipeline both use them
        run_configs = mmseg_run_configs(config_file, meta)
    return build_conversion(
        path,
        VWFormerForSemanticSegmentation,
        infer=lambda: infer_config_and_settings(state_dict, meta, variant, run_configs=run_configs),
        convert_keys=lambda: convert_state_dict(state_dict),
        original=state_dict,
        class_names=meta.get("CLASSES"),
        meta=meta,
        variant_given=variant is not None,
        pipeline=mmseg_pipeline(run_configs),
    )


def convert_checkpoint(path: str | Path, variant: str | None = None, config_file: str | Path | None = None):
    """Reads, converts and loads an original checkpoint. Returns ``(model, meta)``; the model is in eval mode."""
    conversion = convert(path, variant, config_file)
    return conversion.model, conversion.meta


#: the summary line of the command line (card fields)
SUMMARY = (
    "{backbone}; {head_type} head, {decoder_hidden_size} channels, {num_heads} heads, short-cut {short_cut}, "
    "{num_labels} classes"
)
# the saved folder must reproduce the converted model: equal weights, so equal logits up to float rounding (the
# reloaded tensors can sit at other memory alignments, which changes the GEMM kernels' summation order); inputs are
# multiples of 64, as the test pipeline makes them
CONVERTER = Converter(VWFormerConfig.model_type, MMSEG, convert, vwformer_card_fields, SUMMARY, CONFIG_FILE_HELP)
