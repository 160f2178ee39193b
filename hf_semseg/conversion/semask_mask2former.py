"""Conversion of original SeMask-Mask2Former (detectron2) checkpoints to :class:`SeMaskMask2FormerForSemanticSegmentation`.

Read top to bottom: :func:`apply_legacy_renames` repeats detectron2's loader renames of old checkpoints;
:data:`HEAD_RENAMES` maps the Mask2Former head onto transformers' module names (the backbone keys go through the
SeMask-FPN converter's table, :mod:`hf_semseg.conversion.semask_fpn`); :func:`infer_config` derives every
hyper-parameter from the tensors (the semantic window, which is not in the weights, from the registered variant with
the same architecture); :func:`convert_state_dict` fails, naming the keys, on anything it cannot account for.
:mod:`.semask_d2` (the command line of every SeMask detectron2 checkpoint) sends the Mask2Former ones here.
"""

import math
import re
from pathlib import Path

import torch

from ..models.configuration_semask_mask2former import (
    SeMaskMask2FormerConfig,
    default_semantic_attention_types,
)
from ..models.configuration_semask_swin import SeMaskSwinConfig
from ..models.modeling_semask_mask2former import SeMaskMask2FormerForSemanticSegmentation
from ..variants import FOUR_STAGES, SEMASK_MASK2FORMER_DEFAULT_SEMANTIC_WINDOW
from .common import (
    DETECTRON2,
    MMSEG_CONVERTERS_HINT,
    CheckpointError,
    Conversion,
    build_conversion,
    check_attention_heads,
    errors_name_the_file,
    expect_shape,
    find_rename,
    given_id2label,
    indices,
    raise_on_unmapped,
    read_checkpoint,
    released_variant,
    split_fused_qkv,
    tensor_shape,
)
from .run_config import (
    D2_SWIN_PATHS,
    DETECTRON2_HEAD_CHECKS,
    ResolvedSettings,
    Setting,
    at_least_one,
    boolean,
    check_consistent,
    check_heads_setting,
    check_representable,
    detectron2_pipeline,
    detectron2_run_configs,
    drop_rate,
    loss_weight,
    non_negative_int,
    positive_int,
    probability,
    qk_scale_check,
    resolve_settings,
    swin_consistency_checks,
    training_only,
)
from .semask_fpn import check_semask_backbone, infer_backbone_fields
from .semask_fpn import convert_state_dict as convert_backbone_state_dict


KIND = "SeMask-Mask2Former"
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
    # FaPN / MSFaPN feature alignment: the offset conv, the DCNv2 weights and its offset/mask predictor. The offset
    # conv's GroupNorm is the level's output-conv GroupNorm (one module, two keys): checked equal, loaded once.
    (PIXEL_DECODER + r"align_(\d+)\.offset\.weight", HF_PIXEL_DECODER + r"align_\1.offset_projection.weight"),
    (PIXEL_DECODER + r"align_(\d+)\.offset\.norm\.(weight|bias)", None),
    (PIXEL_DECODER + r"align_(\d+)\.dcpack_L2\.(weight|bias)", HF_PIXEL_DECODER + r"align_\1.deformable_conv.\2"),
    (
        PIXEL_DECODER + r"align_(\d+)\.dcpack_L2\.conv_offset_mask\.(weight|bias)",
        HF_PIXEL_DECODER + r"align_\1.deformable_conv.offset_mask.\2",
    ),
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
]

TIED_OFFSET_NORM = re.compile(PIXEL_DECODER + r"align_(\d+)\.offset\.norm\.(weight|bias)")
SELF_ATTENTION_IN_PROJ = re.compile(
    PREDICTOR + r"transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)"
)
# the d2 meta-architecture's normalisation buffers (non-persistent in the original, but tolerated when present)
PIXEL_STATISTICS = ("pixel_mean", "pixel_std")
#: the set loss's class weights (ones, then the no-object weight): read into ``no_object_weight``, not a model tensor
NO_OBJECT_WEIGHT_KEY = "criterion.empty_weight"


def load_detectron2_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a detectron2 checkpoint (``{'model': state_dict, ...}``; a bare state dict is accepted too) safely
    (:func:`.common.read_checkpoint`). A ``module.`` prefix from DDP is stripped; optimizer/scheduler entries are
    ignored."""
    state_dict, _ = read_checkpoint(path, DETECTRON2, f"{KIND} (detectron2)", MMSEG_CONVERTERS_HINT)
    return state_dict


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


def _shape(state_dict: dict, key: str, ndim: int | None = None) -> tuple[int, ...]:
    return tensor_shape(state_dict, key, KIND, ndim)


#: the pixel decoder of each SeMask Mask2Former head (``config.pixel_decoder_type``) and its detectron2 name
PIXEL_DECODER_NAMES = {
    "msdeformattn": "MSDeformAttnPixelDecoder",
    "fapn": "PixelFANDecoder",
    "msfapn": "MSDeformAttnPixelFANDecoder",
}
#: what each head is called in messages and summaries
HEAD_NAMES = {
    "maskformer": "SeMask MaskFormer",
    "msdeformattn": "SeMask Mask2Former",
    "fapn": "SeMask Mask2Former-FaPN",
    "msfapn": "SeMask Mask2Former-MSFaPN",
}


def detect_head(state_dict: dict[str, torch.Tensor]) -> str:
    """Which SeMask detectron2 head a state dict holds, from its keys: ``"maskformer"`` (a DETR
    ``predictor.transformer``), ``"fapn"`` (FeatureAlign ``pixel_decoder.align_*`` modules without a deformable
    encoder), ``"msfapn"`` (both) or ``"msdeformattn"`` (the deformable encoder alone: SeMask Mask2Former)."""
    if any(key.startswith("sem_seg_head.predictor.transformer.") for key in state_dict):
        return "maskformer"
    aligned = any(key.startswith("sem_seg_head.pixel_decoder.align_") for key in state_dict)
    deformable = any(key.startswith("sem_seg_head.pixel_decoder.transformer.") for key in state_dict)
    if aligned:
        return "msfapn" if deformable else "fapn"
    return "msdeformattn"


def check_head_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """The Mask2Former pixel decoder of the state dict (:func:`detect_head`); a SeMask MaskFormer checkpoint is
    refused, naming what it is (:mod:`.semask_d2` converts it)."""
    head = detect_head(state_dict)
    if head == "maskformer":
        raise CheckpointError(
            "sem_seg_head.predictor.transformer.* keys: a SeMask MaskFormer checkpoint (DETR decoder), not a "
            "Mask2Former one - use convert_semask_d2_to_hf.py, which converts every SeMask detectron2 head"
        )
    return head


def _count(state_dict: dict, pattern: str) -> int:
    """Number of distinct indices captured by ``pattern``'s first group."""
    return len(indices(state_dict, pattern))


def infer_backbone_config(
    state_dict: dict[str, torch.Tensor], num_labels: int, pixel_decoder_type: str = "msdeformattn"
) -> SeMaskSwinConfig:
    """The SeMask-Swin backbone from the ``backbone.*`` tensors (:func:`.semask_fpn.infer_backbone_fields`), with the
    semantic attention rule of the code copy the head comes from (the SeMask-Mask2Former code's for the deformable
    decoder, the SeMask-FAPN code's for FaPN / MSFaPN: :func:`default_semantic_attention_types`; the keys are the
    same either way, but the head says which copy made the checkpoint). The semantic window is not stored in the
    weights: :func:`infer_config_and_settings` sets it from the run's config or the released variant."""
    fields, semantic_classes = infer_backbone_fields(state_dict, KIND)
    if semantic_classes != num_labels:
        raise CheckpointError(
            f"the class head predicts {num_labels} classes but the semantic layers {semantic_classes} (mlp_cls_q); "
            "the original builds both from NUM_CLASSES, so this is not a SeMask-Mask2Former checkpoint"
        )
    return SeMaskSwinConfig(
        **fields,
        semantic_attention_types=default_semantic_attention_types(
            pixel_decoder_type, num_labels, len(fields["depths"])
        ),
        drop_path_rate=0.3,
        out_features=list(FOUR_STAGES),  # the pixel decoder takes the four stages
        num_labels=num_labels,
    )


#: the values of a SeMask Mask2Former model the weights do not hold: where a detectron2 config has them, and the
#: defaults of the original code's config (``add_semask_config``, ``add_maskformer2_config``) for a key a run's
#: config leaves out. Attention heads are in the weights (``sampling_offsets``: heads x 3 levels x 4 points x 2, both
#: hard-coded; the decoder uses the same ``NHEADS``).
#: the settings every SeMask detectron2 head has (the SeMask MaskFormer converter takes them too)
SEMANTIC_WINDOW = Setting(
    "backbone_config.semantic_window_size",
    "the semantic attention window",
    "MODEL.SWIN.SEM_WINDOW_SIZE",
    code_default=SEMASK_MASK2FORMER_DEFAULT_SEMANTIC_WINDOW,
    read=positive_int,
)
SIZE_DIVISIBILITY = Setting(
    "size_divisibility",
    "the input padding multiple",
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY",
    code_default=32,
    read=non_negative_int,
)
DROP_PATH = training_only("backbone_config.drop_path_rate", "stochastic depth", "MODEL.SWIN.DROP_PATH_RATE", drop_rate)
#: the training-only values of Mask2Former's set loss (its weights and point sampling), every Mask2Former head's
MASK2FORMER_LOSS_SETTINGS = [
    training_only("class_weight", "the class loss weight", "MODEL.MASK_FORMER.CLASS_WEIGHT", loss_weight),
    training_only("mask_weight", "the mask loss weight", "MODEL.MASK_FORMER.MASK_WEIGHT", loss_weight),
    training_only("dice_weight", "the dice loss weight", "MODEL.MASK_FORMER.DICE_WEIGHT", loss_weight),
    training_only("train_num_points", "the sampled points", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", positive_int),
    training_only("oversample_ratio", "the oversample ratio", "MODEL.MASK_FORMER.OVERSAMPLE_RATIO", at_least_one),
    training_only(
        "importance_sample_ratio", "the importance ratio", "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO", probability
    ),
]
#: the semantic head's loss weight (SeMask's heads)
SEMANTIC_LOSS_WEIGHT = training_only(
    "semantic_loss_weight", "the semantic loss weight", "MODEL.MASK_FORMER.CATE_WEIGHT", loss_weight
)
SETTINGS = [
    SEMANTIC_WINDOW,
    Setting("pre_norm", "pre-norm decoder layers", "MODEL.MASK_FORMER.PRE_NORM", code_default=False, read=boolean),
    SIZE_DIVISIBILITY,
    DROP_PATH,
    *MASK2FORMER_LOSS_SETTINGS,
    SEMANTIC_LOSS_WEIGHT,
]
#: the masked-attention decoder's heads, for the FaPN decoder (without a deformable encoder whose sampling_offsets
#: would show them; nn.MultiheadAttention's weights do not)
DECODER_HEADS = Setting(
    "num_attention_heads", "the decoder attention heads", "MODEL.MASK_FORMER.NHEADS", code_default=8, read=positive_int
)
#: the no-object class weight, when the checkpoint has no ``criterion.empty_weight`` that holds it
NO_OBJECT_WEIGHT = training_only(
    "no_object_weight", "the no-object weight", "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT", loss_weight
)
CONFIG_FILE_HELP = "the run's detectron2 config.yaml (its output folder has it)"


def semask_d2_swin_checks(backbone_config: SeMaskSwinConfig) -> list[tuple[str, object, str]]:
    """What a SeMask detectron2 run's ``MODEL.SWIN`` must agree on with the backbone's weights
    (:func:`.run_config.swin_consistency_checks`); ``NUM_SEM_BLOCKS`` is one number for every stage there."""
    blocks = backbone_config.num_semantic_blocks
    paths = {
        **D2_SWIN_PATHS,
        "num_semantic_blocks": "MODEL.SWIN.NUM_SEM_BLOCKS",
        "use_patch_norm": "MODEL.SWIN.PATCH_NORM",
    }
    fields = {name: getattr(backbone_config, name) for name in paths}
    fields["num_semantic_blocks"] = blocks[0] if len(set(blocks)) == 1 else list(blocks)
    return swin_consistency_checks(fields, paths)


def semask_d2_representable_checks(backbone_config: SeMaskSwinConfig) -> list[tuple]:
    """The values of a SeMask detectron2 run the converted model cannot represent unless they have the default
    (:func:`.run_config.check_representable`): the Swin's ``QK_SCALE`` and
    :data:`~.run_config.DETECTRON2_HEAD_CHECKS`."""
    return [
        qk_scale_check("MODEL.SWIN.QK_SCALE", backbone_config.embed_dim, backbone_config.num_heads),
        *DETECTRON2_HEAD_CHECKS,
    ]


def read_no_object_weight(state_dict: dict[str, torch.Tensor], num_classes: int) -> float | None:
    """The no-object class weight from ``criterion.empty_weight`` (``num_classes`` ones, then it); None when the
    checkpoint has no such buffer (or only its shape: a key list), so that the run's config must give it."""
    if "criterion.empty_weight" not in state_dict:
        return None
    empty_weight = state_dict["criterion.empty_weight"]
    expect_shape(
        "criterion.empty_weight",
        empty_weight,
        (num_classes + 1,),
        f"{num_classes} class weights, then the no-object weight",
    )
    if empty_weight.device.type == "meta":
        return None
    if not torch.all(empty_weight[:-1] == 1):
        raise CheckpointError("criterion.empty_weight: class weights other than 1 are not supported")
    return float(empty_weight[-1])


def infer_config_and_settings(
    state_dict: dict[str, torch.Tensor],
    id2label: dict[int, str] | None = None,
    variant: str | None = None,
    config_file: str | Path | None = None,
    run_configs: list | None = None,
) -> tuple[SeMaskMask2FormerConfig, ResolvedSettings]:
    """Derives the full :class:`SeMaskMask2FormerConfig` from a (legacy-renamed) detectron2 state dict, and where the
    values the weights do not hold came from (whose ``variant`` is the released variant the checkpoint is).

    From the tensors: the backbone (see :func:`infer_backbone_config`), classes (``class_embed``), pixel-decoder
    channels, encoder layers and FFN size, mask-feature channels, attention heads (``sampling_offsets`` has
    heads x 3 levels x 4 points x 2 rows), queries, hidden size, decoder layers, decoder FFN size, input projections
    and the no-object weight (``criterion.empty_weight``). Not in the weights (:data:`SETTINGS`): the semantic
    window, pre-norm and the padding multiple, from ``config_file`` (detectron2's ``config.yaml``) or the released
    variant (``variant``, or the one with exactly these weights), else the conversion stops naming them; the loss
    weights likewise, else the package defaults (the released configs'). A config that contradicts the weights is
    refused."""
    if run_configs is None:  # the caller may have read them already
        run_configs = detectron2_run_configs(config_file)
    check_semask_backbone(state_dict, KIND)
    head = check_head_layout(state_dict)
    deformable = head != "fapn"  # MSDeformAttn encoder on strides 8-32 (Mask2Former's decoder and MSFaPN)
    num_classes = _shape(state_dict, "sem_seg_head.predictor.class_embed.weight", 2)[0] - 1
    backbone_config = infer_backbone_config(state_dict, num_classes, head)
    num_stages = len(backbone_config.depths)
    num_queries, hidden_dim = _shape(state_dict, "sem_seg_head.predictor.query_feat.weight", 2)
    decoder_layers = _count(state_dict, r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.") + 1
    mask_feature_size = _shape(state_dict, "sem_seg_head.pixel_decoder.mask_features.weight", 4)[0]
    dim_feedforward = _shape(state_dict, "sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight", 2)[0]
    num_fpn_levels = _count(state_dict, r"sem_seg_head\.pixel_decoder\.adapter_(\d+)\.")
    num_aligned = _count(state_dict, r"sem_seg_head\.pixel_decoder\.align_(\d+)\.")
    head_fields, consistent = {}, []
    if deformable:
        feature_size = _shape(state_dict, "sem_seg_head.pixel_decoder.input_proj.0.0.weight", 4)[0]
        sampling_rows = _shape(
            state_dict, "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.sampling_offsets.weight", 2
        )[0]
        if sampling_rows % 24:
            raise CheckpointError(
                f"sampling_offsets has {sampling_rows} rows, not heads x 3 levels x 4 points x 2 as in Mask2Former"
            )
        encoder_layers = _count(state_dict, r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.")
        heads = sampling_rows // 24
        where = f"sampling_offsets: {sampling_rows} rows = heads x 3 levels x 4 points x 2"
        check_attention_heads("the pixel decoder's deformable attention", feature_size, heads, where)
        check_attention_heads("the masked-attention decoder (the same NHEADS)", hidden_dim, heads, where)
        head_fields = {
            "encoder_layers": encoder_layers,
            "encoder_feedforward_dim": _shape(
                state_dict, "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.linear1.weight", 2
            )[0],
            "num_attention_heads": heads,
        }
        consistent = [
            ("MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", encoder_layers, "the pixel decoder's encoder layers"),
            ("MODEL.MASK_FORMER.NHEADS", heads, "the deformable attention's sampling_offsets"),
            # the encoder reads the three coarsest stages, and one FPN level (adapter_1) brings it to stride 4
            (
                "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES",
                [f"res{stage + 2}" for stage in range(num_stages - 3, num_stages)],
                "the deformable encoder's three input_proj levels (strides 8-32)",
            ),
            ("MODEL.SEM_SEG_HEAD.COMMON_STRIDE", 4, "one FPN level (adapter_1) below the stride-8 encoder features"),
        ]
        expected_fpn_levels = 1  # transformers' Mask2Former: common stride 4 from stride-8 encoder features
    else:
        feature_size = _shape(state_dict, f"sem_seg_head.pixel_decoder.layer_{num_stages}.weight", 4)[0]
        expected_fpn_levels = num_stages - 1  # FaPN: every level below the coarsest is a lateral level
        # no deformable encoder (TRANSFORMER_ENC_LAYERS is in the run's config but unused by this decoder)
        head_fields = {"encoder_layers": 0}
    enforce_input_projection = (
        any(key.startswith("sem_seg_head.predictor.input_proj.") for key in state_dict) and feature_size == hidden_dim
    )
    if feature_size == hidden_dim:  # otherwise the projections are there whatever the config says
        consistent.append(
            (
                "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ",
                enforce_input_projection,
                "the presence of sem_seg_head.predictor.input_proj.* keys",
            )
        )
    if num_fpn_levels != expected_fpn_levels:
        raise CheckpointError(
            f"{num_fpn_levels} FPN levels (adapter_*) in the {HEAD_NAMES[head]} pixel decoder; the original builds "
            f"{expected_fpn_levels}"
        )
    if head in ("fapn", "msfapn") and num_aligned != num_fpn_levels:
        raise CheckpointError(
            f"{num_aligned} FeatureAlign modules (align_*) for {num_fpn_levels} FPN levels; the original aligns "
            "every FPN level"
        )
    no_object_weight = read_no_object_weight(state_dict, num_classes)
    check_consistent(
        run_configs,
        [
            ("MODEL.META_ARCHITECTURE", "SeMaskMaskFormer", "a SeMask Mask2Former checkpoint"),
            ("MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", PIXEL_DECODER_NAMES[head], "the pixel decoder's key layout"),
            (
                "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME",
                "MultiScaleMaskedTransformerDecoder",
                "the transformer decoder's key layout",
            ),
            ("MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "multi_scale_pixel_decoder", "the predictor's input levels"),
            ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes, "sem_seg_head.predictor.class_embed.weight"),
            ("MODEL.SEM_SEG_HEAD.CONVS_DIM", feature_size, "the pixel decoder's convolutions"),
            ("MODEL.SEM_SEG_HEAD.MASK_DIM", mask_feature_size, "sem_seg_head.pixel_decoder.mask_features.weight"),
            *consistent,
            ("MODEL.MASK_FORMER.HIDDEN_DIM", hidden_dim, "sem_seg_head.predictor.query_feat.weight"),
            ("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", num_queries, "sem_seg_head.predictor.query_feat.weight"),
            ("MODEL.MASK_FORMER.DEC_LAYERS", decoder_layers, "the predictor's transformer layers"),
            ("MODEL.MASK_FORMER.DIM_FEEDFORWARD", dim_feedforward, "the predictor's transformer_ffn_layers"),
            (
                "MODEL.SEM_SEG_HEAD.IN_FEATURES",
                [f"res{stage + 2}" for stage in range(num_stages)],
                f"the pixel decoder's levels: every one of the {num_stages} backbone stages",
            ),
            *semask_d2_swin_checks(backbone_config),
        ],
    )
    check_representable(run_configs, semask_d2_representable_checks(backbone_config))
    id2label = given_id2label(id2label, num_classes)
    config = SeMaskMask2FormerConfig(
        backbone_config=backbone_config,
        pixel_decoder_type=head,
        feature_size=feature_size,
        mask_feature_size=mask_feature_size,
        hidden_dim=hidden_dim,
        **head_fields,
        decoder_layers=decoder_layers,
        dim_feedforward=dim_feedforward,
        enforce_input_projection=enforce_input_projection,
        num_queries=num_queries,
        **({"no_object_weight": no_object_weight} if no_object_weight is not None else {}),
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )
    settings = (
        SETTINGS + ([] if deformable else [DECODER_HEADS]) + ([NO_OBJECT_WEIGHT] if no_object_weight is None else [])
    )
    resolved = resolve_settings(
        config, settings, run_configs, released_variant(config, variant), variant is not None, CONFIG_FILE_HELP
    )
    check_heads_setting(
        resolved, DECODER_HEADS.name, DECODER_HEADS.path, "the masked-attention decoder", config.hidden_dim
    )
    return config, resolved


def infer_config_and_variant(
    state_dict: dict[str, torch.Tensor], id2label: dict[int, str] | None = None, **sources
) -> tuple[SeMaskMask2FormerConfig, str | None]:
    """The full :class:`SeMaskMask2FormerConfig` of the checkpoint and the released variant it is (see
    :func:`infer_config_and_settings`; ``sources``: its ``variant`` and ``config_file``)."""
    config, settings = infer_config_and_settings(state_dict, id2label, **sources)
    return config, settings.variant


def infer_config(
    state_dict: dict[str, torch.Tensor], id2label: dict[int, str] | None = None, **sources
) -> SeMaskMask2FormerConfig:
    """The full :class:`SeMaskMask2FormerConfig` of the checkpoint (see :func:`infer_config_and_settings`)."""
    return infer_config_and_settings(state_dict, id2label, **sources)[0]


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
    # the decoder's width (the queries'): the fused self-attention projections are (3 x hidden, hidden)
    queries = state_dict.get("sem_seg_head.predictor.query_feat.weight")
    hidden_dim = queries.shape[1] if queries is not None and queries.ndim == 2 else None
    unmapped = []
    for key, tensor in state_dict.items():
        if key.startswith("backbone.") or key in PIXEL_STATISTICS or key == NO_OBJECT_WEIGHT_KEY:
            continue
        match = TIED_OFFSET_NORM.fullmatch(key)
        if match:  # one GroupNorm under two keys: the output conv's copy is loaded, this one must equal it
            level, kind = match.groups()
            tied_key = f"sem_seg_head.pixel_decoder.layer_{level}.norm.{kind}"
            check_tied_copy(state_dict, key, tied_key)
            continue
        match = SELF_ATTENTION_IN_PROJ.fullmatch(key)
        if match:
            layer, kind = match.groups()
            prefix = f"{HF_TRANSFORMER}decoder.layers.{layer}.self_attn"
            converted.update(split_fused_qkv(key, tensor, prefix, kind, dim=hidden_dim))
            continue
        known, new_key = find_rename(key, HEAD_RENAMES)
        if known:
            converted[new_key] = tensor
        else:
            unmapped.append(key)
    raise_on_unmapped(unmapped)
    return converted


def check_tied_copy(state_dict: dict[str, torch.Tensor], key: str, tied_key: str) -> None:
    """``key`` is a second name of the tensor ``tied_key`` (one module registered twice in the original): both
    present, same shape, equal values (a meta tensor from a key list is compared by shape only)."""
    if tied_key not in state_dict:
        raise CheckpointError(f"{key} is a copy of {tied_key} (one GroupNorm under both names), which is missing")
    tensor, tied = state_dict[key], state_dict[tied_key]
    if tensor.shape != tied.shape:
        raise CheckpointError(
            f"{key} {tuple(tensor.shape)} is a copy of {tied_key} {tuple(tied.shape)} (one GroupNorm under both "
            "names), but their shapes differ"
        )
    if tensor.device.type != "meta" and tied.device.type != "meta" and not torch.equal(tensor, tied):
        difference = (tensor.double() - tied.double()).abs().max().item()
        raise CheckpointError(
            f"{key} differs from {tied_key} by up to {difference:.3g}; the original registers one GroupNorm under "
            "both names, so they must be equal (was the checkpoint edited?)"
        )


def pixel_statistics(state_dict: dict[str, torch.Tensor]) -> tuple[list[float], list[float]] | None:
    """``(image_mean, image_std)`` on the 0-1 scale from ``pixel_mean``/``pixel_std`` buffers if the checkpoint holds
    them (detectron2 keeps them non-persistent, so released checkpoints do not); one buffer without the other, or a
    std that is not positive, is a :class:`CheckpointError` (non-finite values are refused when the checkpoint is
    read)."""
    present = [name for name in PIXEL_STATISTICS if name in state_dict]
    if not present:
        return None
    if len(present) == 1:
        (missing,) = set(PIXEL_STATISTICS) - set(present)
        raise CheckpointError(
            f"{present[0]}: a normalisation buffer without {missing}; expected both (detectron2's pixel_mean and "
            "pixel_std) or neither (the original keeps them out of its checkpoints)"
        )
    for name in PIXEL_STATISTICS:
        if state_dict[name].numel() != 3:
            expect_shape(name, state_dict[name], (3, 1, 1), "one value per RGB channel")
    if state_dict["pixel_std"].device.type != "meta" and not bool((state_dict["pixel_std"] > 0).all()):
        raise CheckpointError(
            f"pixel_std: {state_dict['pixel_std'].flatten().tolist()}, expected 3 positive values (the std divides "
            "the pixels)"
        )
    mean, std = (state_dict[name].flatten().double() / 255.0 for name in PIXEL_STATISTICS)
    return mean.tolist(), std.tolist()


#: where the test pre-processing's statistics come from when the checkpoint holds them (:func:`checkpoint_pipeline`)
CHECKPOINT_STATISTICS_SOURCE = "the checkpoint's pixel_mean / pixel_std buffers"


def checkpoint_pipeline(statistics: tuple[list[float], list[float]] | None, pipeline: dict) -> dict:
    """The test pre-processing values the checkpoint's ``pixel_mean`` / ``pixel_std`` buffers give
    (:func:`pixel_statistics`; ``Conversion.checkpoint_pipeline``, used where the run's config does not set them),
    with their ``source``; empty without buffers. The original registers these buffers as non-persistent, so its run
    normalised with the config's ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``: buffers that differ from the values of the
    run's config (``pipeline``, :func:`~.run_config.detectron2_pipeline`) are a :class:`CheckpointError` naming
    both (which one the model was trained with cannot be told)."""
    if statistics is None:
        return {}
    values = dict(zip(("image_mean", "image_std"), statistics))
    for name, buffer, key in (
        ("image_mean", "pixel_mean", "MODEL.PIXEL_MEAN"),
        ("image_std", "pixel_std", "MODEL.PIXEL_STD"),
    ):
        configured = pipeline.get(name)
        if configured is None or all(
            math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(values[name], configured)
        ):
            continue
        raise CheckpointError(
            f"the checkpoint's {buffer} buffer {_on_255_scale(values[name])} differs from {key} = "
            f"{_on_255_scale(configured)} of {pipeline.get('source', 'the run config')}; the original does not save "
            f"these buffers (non-persistent) and normalises with the config's values, so which ones the model was "
            f"trained with cannot be told: remove the pixel_mean / pixel_std buffers from the checkpoint or correct "
            f"{key}"
        )
    return {**values, "source": CHECKPOINT_STATISTICS_SOURCE}


def _on_255_scale(values: list[float]) -> list[float]:
    """Statistics of the 0-1 scale on the 0-255 scale of the checkpoint and the config, for messages."""
    return [round(value * 255.0, 4) for value in values]


def convert(
    path: str | Path,
    variant: str | None = None,
    config_file: str | Path | None = None,
    id2label: dict[int, str] | None = None,
) -> Conversion:
    """Converts an original SeMask Mask2Former checkpoint file (any of its pixel decoders; see
    :func:`infer_config_and_settings` for ``variant`` and ``config_file``): the model (eval mode), the released variant
    it is, the run's test pre-processing, and the pixel statistics for the image processor when the checkpoint has
    them."""
    state_dict = load_detectron2_checkpoint(path)
    with errors_name_the_file(path):
        state_dict = apply_legacy_renames(state_dict)
    return convert_loaded(path, state_dict, variant, config_file, id2label)


def convert_loaded(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    variant: str | None = None,
    config_file: str | Path | None = None,
    id2label: dict[int, str] | None = None,
    model_class=SeMaskMask2FormerForSemanticSegmentation,
    infer_config_and_settings=infer_config_and_settings,
    convert_state_dict=convert_state_dict,
) -> Conversion:
    """:func:`convert` of a state dict already read from ``path`` (and legacy-renamed); the SeMask MaskFormer
    converter passes its own model class, config inference and key mapping (the rest is shared)."""
    run_configs = detectron2_run_configs(config_file)  # read once: the settings and the test pipeline
    pipeline = detectron2_pipeline(run_configs)
    with errors_name_the_file(path):
        from_checkpoint = checkpoint_pipeline(pixel_statistics(state_dict), pipeline)
    return build_conversion(
        path,
        model_class,
        infer=lambda: infer_config_and_settings(state_dict, id2label, variant, run_configs=run_configs),
        convert_keys=lambda: convert_state_dict(state_dict),
        original=state_dict,
        class_names=list(id2label.values()) if id2label is not None else None,
        state_dict=state_dict,
        variant_given=variant is not None,
        pipeline=pipeline,
        checkpoint_pipeline=from_checkpoint,
        pipeline_fields=("test_scale", "reduce_labels", "image_mean", "image_std"),  # the model pads, no divisor
    )


def convert_checkpoint(
    path: str | Path,
    id2label: dict[int, str] | None = None,
    variant: str | None = None,
    config_file: str | Path | None = None,
):
    """Loads an original SeMask-Mask2Former checkpoint file into a :class:`SeMaskMask2FormerForSemanticSegmentation`
    (eval mode). Returns ``(model, state_dict)`` (the original state dict, after the legacy renames)."""
    conversion = convert(path, variant, config_file, id2label)
    return conversion.model, conversion.state_dict
