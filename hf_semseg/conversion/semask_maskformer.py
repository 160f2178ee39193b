"""Key mapping of original SeMask-MaskFormer (detectron2) heads onto :class:`SeMaskMaskFormerForSemanticSegmentation`.

Pure functions, no command line: :data:`MASKFORMER_HEAD_RENAMES` maps the head (``BasePixelDecoder``,
``TransformerPredictor`` with its DETR decoder, the criterion's no-object weights) onto transformers' MaskFormer
module names; :func:`convert_maskformer_head` applies it (splitting DETR's packed attention projections) and fails,
naming the keys, on anything it cannot account for; :func:`maskformer_head_fields` reads the head's hyper-parameters
from the tensors. The backbone keys (``backbone.*``) go through the SeMask-FPN converter's table
(:func:`hf_semseg.conversion.semask_fpn.convert_state_dict`) with the prefix :data:`HF_BACKBONE`. Checkpoints with
version-1 head keys (directly under ``sem_seg_head.``) need
:func:`hf_semseg.conversion.semask_mask2former.apply_legacy_renames` first, as detectron2's loader does.
"""

import re
from pathlib import Path

import torch

from ..models.configuration_semask_maskformer import (
    SeMaskMaskFormerConfig,
    semask_maskformer_semantic_attention_types,
)
from ..models.configuration_semask_swin import SeMaskSwinConfig
from ..models.modeling_semask_maskformer import SeMaskMaskFormerForSemanticSegmentation
from ..variants import FOUR_STAGES
from .common import (
    CheckpointError,
    Conversion,
    check_no_detr_encoder,
    checkpoint_id2label,
    find_rename,
    indices,
    raise_on_unmapped,
    released_variant,
    split_fused_qkv,
    tensor_shape,
)
from .run_config import (
    ResolvedSettings,
    Setting,
    boolean,
    check_consistent,
    check_heads_setting,
    check_representable,
    detectron2_run_configs,
    loss_weight,
    positive_int,
    probability,
    resolve_settings,
    training_only,
)
from .semask_fpn import check_semask_backbone, infer_backbone_fields
from .semask_fpn import convert_state_dict as convert_backbone_state_dict
from .semask_mask2former import (
    CONFIG_FILE_HELP,
    DROP_PATH,
    NO_OBJECT_WEIGHT,
    NO_OBJECT_WEIGHT_KEY,
    SEMANTIC_LOSS_WEIGHT,
    SEMANTIC_WINDOW,
    SIZE_DIVISIBILITY,
    convert_loaded,
    read_no_object_weight,
    semask_d2_representable_checks,
    semask_d2_swin_checks,
)


KIND = "SeMask-MaskFormer"
PIXEL_DECODER = r"sem_seg_head\.pixel_decoder\."
PREDICTOR = r"sem_seg_head\.predictor\."
DECODER_LAYER = PREDICTOR + r"transformer\.decoder\.layers\.(\d+)\."
HF_BACKBONE = "model.pixel_level_module.encoder."
HF_PIXEL_DECODER = "model.pixel_level_module.decoder."
HF_TRANSFORMER = "model.transformer_module."

# detectron2 Conv2d-with-norm (conv ``weight``, ``norm.*``) -> transformers' (conv, GroupNorm[, ReLU]) modules. The
# original FPN counts its levels from stride 4 (``*_1``) to stride 32 (``layer_4``); transformers' from the top:
# ``fpn.stem`` reads stride 32 and ``fpn.layers.j`` adds the lateral of level ``3 - j``.
_FPN_RENAMES: list[tuple[str, str]] = [
    (PIXEL_DECODER + r"layer_4\.weight", HF_PIXEL_DECODER + "fpn.stem.0.weight"),
    (PIXEL_DECODER + r"layer_4\.norm\.(weight|bias)", HF_PIXEL_DECODER + r"fpn.stem.1.\1"),
]
for _level in (1, 2, 3):
    _FPN_RENAMES += [
        (PIXEL_DECODER + rf"adapter_{_level}\.weight", HF_PIXEL_DECODER + f"fpn.layers.{3 - _level}.proj.0.weight"),
        (
            PIXEL_DECODER + rf"adapter_{_level}\.norm\.(weight|bias)",
            HF_PIXEL_DECODER + f"fpn.layers.{3 - _level}.proj.1." + r"\1",
        ),
        (PIXEL_DECODER + rf"layer_{_level}\.weight", HF_PIXEL_DECODER + f"fpn.layers.{3 - _level}.block.0.weight"),
        (
            PIXEL_DECODER + rf"layer_{_level}\.norm\.(weight|bias)",
            HF_PIXEL_DECODER + f"fpn.layers.{3 - _level}.block.1." + r"\1",
        ),
    ]

# (original key pattern, hf key template) - applied with re.fullmatch, first match wins; a None template marks the
# packed attention projections, which :func:`convert_maskformer_head` splits into q/k/v (rows q, k, v).
MASKFORMER_HEAD_RENAMES: list[tuple[str, str | None]] = [
    *_FPN_RENAMES,
    (PIXEL_DECODER + r"mask_features\.(weight|bias)", HF_PIXEL_DECODER + r"mask_projection.\1"),
    # DETR decoder (post-norm layers: self-attention, cross-attention, FFN, each followed by its LayerNorm)
    (DECODER_LAYER + r"(self_attn|multihead_attn)\.in_proj_(weight|bias)", None),
    (DECODER_LAYER + r"self_attn\.out_proj\.(weight|bias)", HF_TRANSFORMER + r"decoder.layers.\1.self_attn.o_proj.\2"),
    (
        DECODER_LAYER + r"multihead_attn\.out_proj\.(weight|bias)",
        HF_TRANSFORMER + r"decoder.layers.\1.encoder_attn.o_proj.\2",
    ),
    (DECODER_LAYER + r"linear1\.(weight|bias)", HF_TRANSFORMER + r"decoder.layers.\1.mlp.fc1.\2"),
    (DECODER_LAYER + r"linear2\.(weight|bias)", HF_TRANSFORMER + r"decoder.layers.\1.mlp.fc2.\2"),
    (DECODER_LAYER + r"norm1\.(weight|bias)", HF_TRANSFORMER + r"decoder.layers.\1.self_attn_layer_norm.\2"),
    (DECODER_LAYER + r"norm2\.(weight|bias)", HF_TRANSFORMER + r"decoder.layers.\1.encoder_attn_layer_norm.\2"),
    (DECODER_LAYER + r"norm3\.(weight|bias)", HF_TRANSFORMER + r"decoder.layers.\1.final_layer_norm.\2"),
    (PREDICTOR + r"transformer\.decoder\.norm\.(weight|bias)", HF_TRANSFORMER + r"decoder.layernorm.\1"),
    (PREDICTOR + r"query_embed\.weight", HF_TRANSFORMER + "queries_embedder.weight"),
    (PREDICTOR + r"input_proj\.(weight|bias)", HF_TRANSFORMER + r"input_projection.\1"),
    # prediction heads
    (PREDICTOR + r"class_embed\.(weight|bias)", r"class_predictor.\1"),
    (PREDICTOR + r"mask_embed\.layers\.(\d+)\.(weight|bias)", r"mask_embedder.\1.0.\2"),
]

PACKED_ATTENTION = re.compile(DECODER_LAYER + r"(self_attn|multihead_attn)\.in_proj_(weight|bias)")
HF_ATTENTION = {"self_attn": "self_attn", "multihead_attn": "encoder_attn"}
# the d2 meta-architecture's normalisation buffers (non-persistent in the original, but tolerated when present)
PIXEL_STATISTICS = ("pixel_mean", "pixel_std")


def convert_maskformer_head(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames every ``sem_seg_head.*`` and ``criterion.empty_weight`` key of a detectron2 SeMask-MaskFormer state
    dict with :data:`MASKFORMER_HEAD_RENAMES`; the DETR attentions' packed ``in_proj_weight`` / ``in_proj_bias`` are
    split into ``q_proj`` / ``k_proj`` / ``v_proj``. ``backbone.*`` keys (see the module docstring) and the
    ``pixel_mean`` / ``pixel_std`` buffers are left out. Raises :class:`~hf_semseg.conversion.common.CheckpointError`
    (a ``ValueError``) naming every other key without a rule (a transformer encoder layer, for instance: the hosted
    decoder has none, as released)."""
    # the decoder's width (the queries'): the packed projections are (3 x hidden, hidden)
    queries = state_dict.get("sem_seg_head.predictor.query_embed.weight")
    hidden_size = queries.shape[1] if queries is not None and queries.ndim == 2 else None
    converted, unmapped = {}, []
    for key, tensor in state_dict.items():
        if key.startswith("backbone.") or key in PIXEL_STATISTICS or key == NO_OBJECT_WEIGHT_KEY:
            continue
        match = PACKED_ATTENTION.fullmatch(key)
        if match:
            layer, attention, kind = match.groups()
            prefix = f"{HF_TRANSFORMER}decoder.layers.{layer}.{HF_ATTENTION[attention]}"
            converted.update(split_fused_qkv(key, tensor, prefix, kind, dim=hidden_size))
            continue
        known, new_key = find_rename(key, MASKFORMER_HEAD_RENAMES)
        if known and new_key is not None:
            converted[new_key] = tensor
        else:
            unmapped.append(key)
    raise_on_unmapped(unmapped)
    return converted


def _shape(state_dict: dict, key: str, ndim: int) -> tuple[int, ...]:
    return tensor_shape(state_dict, key, KIND, ndim)


def maskformer_head_fields(state_dict: dict[str, torch.Tensor]) -> dict:
    """The head's hyper-parameters that the tensors hold, as :class:`SeMaskMaskFormerConfig` arguments:
    ``num_labels`` (``class_embed`` rows - 1), ``fpn_feature_size`` (CONVS_DIM), ``mask_feature_size`` (MASK_DIM) and
    ``decoder_config`` with ``d_model`` (HIDDEN_DIM), ``num_queries``, ``decoder_layers`` (DEC_LAYERS) and
    ``decoder_ffn_dim`` (DIM_FEEDFORWARD); ``no_object_weight`` too when ``criterion.empty_weight`` holds values
    (not for a key list of meta tensors). Not in the weights: the attention heads (NHEADS; ``nn.MultiheadAttention``
    packs all heads in one matrix), PRE_NORM, the dropouts, the semantic attention types and window, the padding
    multiple and the loss weights. Raises :class:`~hf_semseg.conversion.common.CheckpointError` naming a missing key
    or an inconsistent shape."""
    num_labels = _shape(state_dict, "sem_seg_head.predictor.class_embed.weight", 2)[0] - 1
    num_queries, hidden_size = _shape(state_dict, "sem_seg_head.predictor.query_embed.weight", 2)
    decoder_layers = indices(state_dict, DECODER_LAYER)
    if not decoder_layers or decoder_layers != list(range(len(decoder_layers))):
        raise CheckpointError(f"the DETR decoder layers of the checkpoint are numbered {decoder_layers}, not 0 ... L-1")
    check_no_detr_encoder(state_dict, "SeMask-MaskFormer")
    ffn_size, ffn_input = _shape(state_dict, "sem_seg_head.predictor.transformer.decoder.layers.0.linear1.weight", 2)
    fpn_feature_size = _shape(state_dict, "sem_seg_head.pixel_decoder.layer_4.weight", 4)[0]
    mask_feature_size = _shape(state_dict, "sem_seg_head.pixel_decoder.mask_features.weight", 4)[0]
    mask_embedding_size = _shape(state_dict, "sem_seg_head.predictor.mask_embed.layers.2.weight", 2)[0]
    if ffn_input != hidden_size or mask_embedding_size != mask_feature_size:
        raise CheckpointError(
            f"inconsistent head: queries of width {hidden_size}, FFN input {ffn_input}, mask embeddings of "
            f"{mask_embedding_size} channels and mask features of {mask_feature_size}"
        )
    fields = {
        "num_labels": num_labels,
        "fpn_feature_size": fpn_feature_size,
        "mask_feature_size": mask_feature_size,
        "decoder_config": {
            "d_model": hidden_size,
            "num_queries": num_queries,
            "decoder_layers": len(decoder_layers),
            "decoder_ffn_dim": ffn_size,
        },
    }
    no_object_weight = read_no_object_weight(state_dict, num_labels)
    if no_object_weight is not None:
        fields["no_object_weight"] = no_object_weight
    return fields


def infer_backbone_config(state_dict: dict[str, torch.Tensor], num_labels: int) -> SeMaskSwinConfig:
    """The SeMask-Swin backbone from the ``backbone.*`` tensors (:func:`.semask_fpn.infer_backbone_fields`), with the
    SeMask-MaskFormer code's semantic attention (W W W G for every class count: the head says which copy of the
    code made the checkpoint). The semantic window is a :data:`SETTINGS` value."""
    fields, semantic_classes = infer_backbone_fields(state_dict, KIND)
    if semantic_classes != num_labels:
        raise CheckpointError(
            f"the class head predicts {num_labels} classes but the semantic layers {semantic_classes} (mlp_cls_q); "
            "the original builds both from NUM_CLASSES, so this is not a SeMask-MaskFormer checkpoint"
        )
    return SeMaskSwinConfig(
        **fields,
        semantic_attention_types=semask_maskformer_semantic_attention_types(len(fields["depths"])),
        drop_path_rate=0.3,
        out_features=list(FOUR_STAGES),
        num_labels=num_labels,
    )


def post_norm_only(value) -> bool:
    """PRE_NORM of the run: transformers' DETR decoder layers are post-norm, so only False converts."""
    value = boolean(value)
    if value:
        raise ValueError("PRE_NORM True (pre-norm DETR decoder layers) is not supported: transformers' are post-norm")
    return value


#: the values of a SeMask MaskFormer model the weights do not hold: where a detectron2 config has them, and the
#: defaults of the SeMask-MaskFormer code's config (``add_mask_former_config``) for a key a run's config leaves out.
#: nn.MultiheadAttention packs every head in one matrix, so NHEADS is not in the weights.
#: the DETR decoder's heads (nn.MultiheadAttention packs every head in one matrix), every MaskFormer head's
DETR_DECODER_HEADS = Setting(
    "decoder_config.decoder_attention_heads",
    "the decoder attention heads",
    "MODEL.MASK_FORMER.NHEADS",
    code_default=8,
    read=positive_int,
)
#: pre-norm DETR layers (refused: transformers' are post-norm), every MaskFormer head's
DETR_PRE_NORM = Setting(
    "pre_norm", "pre-norm decoder layers", "MODEL.MASK_FORMER.PRE_NORM", code_default=False, read=post_norm_only
)
#: the training-only values of MaskFormer's decoder and set loss, every MaskFormer head's
MASKFORMER_TRAINING_SETTINGS = [
    training_only("decoder_config.dropout", "the decoder dropout", "MODEL.MASK_FORMER.DROPOUT", probability),
    training_only("mask_weight", "the mask (focal) loss weight", "MODEL.MASK_FORMER.MASK_WEIGHT", loss_weight),
    training_only("dice_weight", "the dice loss weight", "MODEL.MASK_FORMER.DICE_WEIGHT", loss_weight),
    training_only("use_auxiliary_loss", "deep supervision", "MODEL.MASK_FORMER.DEEP_SUPERVISION", boolean),
]
SETTINGS = [
    SEMANTIC_WINDOW,
    DETR_DECODER_HEADS,
    DETR_PRE_NORM,
    SIZE_DIVISIBILITY,
    DROP_PATH,
    *MASKFORMER_TRAINING_SETTINGS,
    SEMANTIC_LOSS_WEIGHT,
]


def infer_config_and_settings(
    state_dict: dict[str, torch.Tensor],
    id2label: dict[int, str] | None = None,
    variant: str | None = None,
    config_file: str | Path | None = None,
    run_configs: list | None = None,
) -> tuple[SeMaskMaskFormerConfig, ResolvedSettings]:
    """The full :class:`SeMaskMaskFormerConfig` of a (legacy-renamed) detectron2 state dict, and where the values the
    weights do not hold came from. From the tensors: the backbone (:func:`infer_backbone_config`) and
    :func:`maskformer_head_fields`; from ``config_file`` / the checkpoint's config text / the released variant with
    exactly these weights: :data:`SETTINGS` (else the conversion stops naming them). A config that contradicts the
    weights is refused."""
    if run_configs is None:
        run_configs = detectron2_run_configs(config_file)
    check_semask_backbone(state_dict, KIND)
    head = maskformer_head_fields(state_dict)
    num_labels = head.pop("num_labels")
    backbone_config = infer_backbone_config(state_dict, num_labels)
    decoder = head["decoder_config"]
    encoder_layers = indices(state_dict, PREDICTOR + r"transformer\.encoder\.layers\.(\d+)\.")
    check_consistent(
        run_configs,
        [
            ("MODEL.META_ARCHITECTURE", "SeMaskMaskFormer", "a SeMask MaskFormer checkpoint"),
            ("MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "BasePixelDecoder", "the pixel decoder's key layout"),
            ("MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "res5", "the predictor's input_proj (res5 channels)"),
            ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_labels, "sem_seg_head.predictor.class_embed.weight"),
            ("MODEL.SEM_SEG_HEAD.CONVS_DIM", head["fpn_feature_size"], "sem_seg_head.pixel_decoder.layer_4.weight"),
            ("MODEL.SEM_SEG_HEAD.MASK_DIM", head["mask_feature_size"], "sem_seg_head.pixel_decoder.mask_features"),
            ("MODEL.MASK_FORMER.HIDDEN_DIM", decoder["d_model"], "sem_seg_head.predictor.query_embed.weight"),
            ("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", decoder["num_queries"], "sem_seg_head.predictor.query_embed"),
            ("MODEL.MASK_FORMER.DEC_LAYERS", decoder["decoder_layers"], "the DETR decoder layers"),
            ("MODEL.MASK_FORMER.ENC_LAYERS", len(encoder_layers), "the DETR encoder layers"),
            ("MODEL.MASK_FORMER.DIM_FEEDFORWARD", decoder["decoder_ffn_dim"], "the decoder layers' linear1"),
            *semask_d2_swin_checks(backbone_config),
        ],
    )
    check_representable(run_configs, semask_d2_representable_checks(backbone_config))
    if id2label is not None and len(id2label) != num_labels:
        raise CheckpointError(f"{len(id2label)} class names given for a checkpoint with {num_labels} classes")
    id2label = id2label if id2label is not None else checkpoint_id2label(None, num_labels)
    config = SeMaskMaskFormerConfig(
        backbone_config=backbone_config,
        **head,
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )
    settings = SETTINGS + ([NO_OBJECT_WEIGHT] if "no_object_weight" not in head else [])
    resolved = resolve_settings(
        config, settings, run_configs, released_variant(config, variant), variant is not None, CONFIG_FILE_HELP
    )
    check_heads_setting(
        resolved, DETR_DECODER_HEADS.name, DETR_DECODER_HEADS.path, "the DETR decoder", decoder["d_model"]
    )
    if "decoder_config.dropout" in resolved.values:  # the original applies DROPOUT in the attentions and FFN too
        decoder_config = config.decoder_config
        decoder_config.attention_dropout = decoder_config.activation_dropout = decoder_config.dropout
    config.force_original_decoder()  # the heads may have changed: the config's copy of them follows
    return config, resolved


def infer_config(
    state_dict: dict[str, torch.Tensor], id2label: dict[int, str] | None = None, **sources
) -> SeMaskMaskFormerConfig:
    """The full :class:`SeMaskMaskFormerConfig` of the checkpoint (see :func:`infer_config_and_settings`)."""
    return infer_config_and_settings(state_dict, id2label, **sources)[0]


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every key of a (legacy-renamed) SeMask MaskFormer state dict renamed: the backbone through the SeMask-FPN
    converter's table, the head through :func:`convert_maskformer_head`."""
    backbone = {key: value for key, value in state_dict.items() if key.startswith("backbone.")}
    converted = {
        HF_BACKBONE + key.removeprefix("backbone."): value
        for key, value in convert_backbone_state_dict(backbone).items()
    }
    converted.update(convert_maskformer_head(state_dict))
    return converted


def convert_loaded_maskformer(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    variant: str | None = None,
    config_file: str | Path | None = None,
    id2label: dict[int, str] | None = None,
) -> Conversion:
    """Converts a SeMask MaskFormer state dict read from ``path`` (legacy-renamed): the model (eval mode), the
    released variant it is and the run's test pre-processing (the detectron2 steps shared with SeMask Mask2Former)."""
    return convert_loaded(
        path,
        state_dict,
        variant,
        config_file,
        id2label,
        model_class=SeMaskMaskFormerForSemanticSegmentation,
        infer_config_and_settings=infer_config_and_settings,
        convert_state_dict=convert_state_dict,
    )


__all__ = [
    "HF_BACKBONE",
    "MASKFORMER_HEAD_RENAMES",
    "SETTINGS",
    "convert_loaded_maskformer",
    "convert_maskformer_head",
    "convert_state_dict",
    "infer_config",
    "infer_config_and_settings",
    "maskformer_head_fields",
]
