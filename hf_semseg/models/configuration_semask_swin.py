"""Configuration of SeMask-Swin (Jain et al., "SeMask: Semantically Masked Transformers for Semantic
Segmentation", arXiv 2112.12782) with its Semantic-FPN decode head.

Portable module: it imports only transformers and is copied next to saved weights, so a saved model loads with
``trust_remote_code=True`` without hf_semseg installed.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

from .configuration_utils_segmentation import (
    IGNORE_INDEX,
    NON_NEGATIVE,
    POSITIVE,
    RATE,
    AnyPrecisionConfigMixin,
    validate_labels,
    validate_mlp_and_activation,
    validate_sdn_options,
    validate_values,
)


SEMANTIC_ATTENTION_TYPES = ("window", "global")


def semask_fpn_semantic_attention_types(embed_dim: int, num_labels: int) -> list[str]:
    """The SeMask-FPN code's rule for which stages use global semantic attention.

    The original backbone switches to its "large" variant (stages 0-1 windowed, stages 2-3 global) exactly when
    ``embed_dim`` is 96 or 192 and there are more than 19 classes; otherwise all four stages are windowed. So the
    released ADE20K/COCO-Stuff T, S and L models are global in stages 2-3, B (embed 128) and every Cityscapes model
    is windowed throughout.
    """
    if embed_dim in (96, 192) and num_labels > 19:
        return ["window", "window", "global", "global"]
    return ["window"] * 4


@strict
class SeMaskSwinConfig(AnyPrecisionConfigMixin, BackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of a SeMask Swin Transformer backbone and the SeMask Semantic-FPN segmentation model.

    The semantic layers predict ``num_labels`` classes (the priors), so ``id2label`` / ``num_labels`` describe both
    the decode head and the backbone's semantic layers.

    Args:
        image_size: pre-training image size, an int or ``(height, width)``: with ``use_absolute_embeddings`` the
            position embedding is learned on its ``image_size // patch_size`` patch grid (the original's
            ``pretrain_img_size``); informational otherwise.
        patch_size: patch size of the patch embedding (4 in every release).
        num_channels: input channels.
        embed_dim: channels of stage 1; stage ``i`` has ``embed_dim * 2**i``.
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: Swin attention window (7 for T/S, 12 for B/L).
        mlp_ratio: MLP hidden size ratio.
        qkv_bias: bias on the fused query/key/value projection.
        hidden_dropout_prob: dropout after the attention projection and in the MLP.
        attention_probs_dropout_prob: dropout on the window attention probabilities.
        drop_path_rate: stochastic depth, linearly increased over all blocks.
        hidden_act: MLP activation.
        layer_norm_eps: LayerNorm epsilon.
        initializer_range: std of the truncated-normal init of Linear layers.
        use_absolute_embeddings: add a learned absolute position embedding to the patch embedding, bicubically
            resized to each input's patch grid (the original's ``ape``; no released model uses one).
        use_patch_norm: LayerNorm after the patch embedding (the original's ``patch_norm``; every release has it).
        semantic_window_size: window of the windowed semantic attention (equals ``window_size`` in every FPN release).
        num_semantic_blocks: semantic attention modules per stage's semantic layer (1 in every release; 0 removes
            the semantic layer of that stage).
        semantic_attention_types: per stage, ``"window"`` (attention inside non-overlapping windows) or ``"global"``
            (one attention over the whole map). ``None`` applies the SeMask-FPN code's rule
            (:func:`semask_fpn_semantic_attention_types`).
        semantic_dropout_prob: dropout on the semantic attention update (0.1 in the original).
        decoder_hidden_size: channels of the Semantic-FPN scale heads (256).
        classifier_dropout_prob: Dropout2d before the classifier (0.1).
        semantic_loss_weight: weight of the cross-entropy on the semantic logits (``cate_w`` = 0.4).
        use_ohem: online hard example mining on the main cross-entropy (released ADE20K-L and COCO-Stuff configs).
        ohem_min_kept: pixels kept per image by OHEM (100000).
        ohem_threshold: ``None`` (every release): OHEM keeps the ``ohem_min_kept`` pixels of the highest loss. A
            probability: it keeps the pixels whose predicted probability of their label is below the larger of this
            threshold and the ``ohem_min_kept``-th lowest such probability of the batch (mmseg's ``thresh``).
        loss_ignore_index: label ignored by the losses.
        loss_mean_over_all_pixels: average the per-pixel losses over all pixels, ignored ones included, as mmseg 0.x
            (and so the original training) does; ``False`` averages over the non-ignored pixels only.
        out_features / out_indices: stages (``stem``, ``stage1`` ... ``stage4``) returned by
            :class:`SeMaskSwinBackbone`. Neither given: the last stage only, the rule of transformers' backbone
            configs (``BackboneConfigMixin.set_output_features_output_indices``). The Semantic-FPN model
            (:class:`SeMaskSwinForSemanticSegmentation`) needs the four stages: its configs set
            ``out_features=["stage1", "stage2", "stage3", "stage4"]``, as the variants and converters do.
        use_sdn_neck / sdn_lambda / sdn_similarity / sdn_groups / sdn_width: the SDN-style neck between the backbone
            and the decode head, off by default (:func:`validate_sdn_options` describes the options).
    """

    model_type = "semask_swin"
    attribute_map = {"num_attention_heads": "num_heads", "num_hidden_layers": "num_layers"}

    image_size: int | list[int] | tuple[int, ...] = 224
    patch_size: int = 4
    num_channels: int = 3
    embed_dim: int = 96
    depths: list[int] | tuple[int, ...] = (2, 2, 6, 2)
    num_heads: list[int] | tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float | int = 4.0
    qkv_bias: bool = True
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_absolute_embeddings: bool = False
    use_patch_norm: bool = True
    semantic_window_size: int = 7
    num_semantic_blocks: list[int] | tuple[int, ...] = (1, 1, 1, 1)
    semantic_attention_types: list[str] | tuple[str, ...] | None = None
    semantic_dropout_prob: float | int = 0.1
    decoder_hidden_size: int = 256
    classifier_dropout_prob: float | int = 0.1
    semantic_loss_weight: float | int = 0.4
    use_ohem: bool = False
    ohem_min_kept: int = 100000
    ohem_threshold: float | int | None = None
    loss_ignore_index: int = IGNORE_INDEX
    loss_mean_over_all_pixels: bool = True
    use_sdn_neck: bool = False
    sdn_lambda: float | int = 1.0
    sdn_similarity: str = "per_channel"
    sdn_groups: str | int = "depthwise"
    sdn_width: int | None = None
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        num_stages = len(self.depths)
        self.depths = list(self.depths)
        self.num_heads = list(self.num_heads)
        self.num_semantic_blocks = list(self.num_semantic_blocks)
        self.num_layers = num_stages
        # channels after the last stage (HF Swin convention, used by VisionEncoderDecoder-style wrappers)
        self.hidden_size = int(self.embed_dim * 2 ** (num_stages - 1))
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, num_stages + 1)]
        # transformers' backbone rule (as SwinConfig): neither given -> the last stage
        self.set_output_features_output_indices(
            out_features=kwargs.pop("out_features", None), out_indices=kwargs.pop("out_indices", None)
        )
        super().__post_init__(**kwargs)
        if self.semantic_attention_types is None:
            self.semantic_attention_types = semask_fpn_semantic_attention_types(self.embed_dim, self.num_labels)
        self.semantic_attention_types = list(self.semantic_attention_types)

    def validate_architecture(self):
        validate_sdn_options(self)
        validate_labels(self)
        num_stages = len(self.depths)
        validate_values(self, ("depths", "num_semantic_blocks"), NON_NEGATIVE)
        validate_values(self, ("num_heads", "patch_size", "window_size", "semantic_window_size"), POSITIVE)
        validate_values(self, ("num_channels", "embed_dim", "decoder_hidden_size", "ohem_min_kept"), POSITIVE)
        validate_values(self, ("mlp_ratio", "layer_norm_eps", "image_size"), POSITIVE)
        threshold = self.ohem_threshold
        if threshold is not None and (isinstance(threshold, bool) or not 0 <= threshold <= 1):
            raise ValueError(
                f"SeMaskSwinConfig.ohem_threshold = {threshold!r}; expected None or a probability from 0 to 1"
            )
        if isinstance(self.image_size, (list, tuple)) and len(self.image_size) != 2:
            raise ValueError(f"SeMaskSwinConfig.image_size = {self.image_size!r}; expected an int or (height, width)")
        if self.use_absolute_embeddings and min(absolute_embedding_grid(self)) < 1:
            raise ValueError(
                f"SeMaskSwinConfig.image_size = {self.image_size!r} is smaller than patch_size = {self.patch_size}: "
                "the absolute position embedding (use_absolute_embeddings) would have no patch"
            )
        rates = ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate", "semantic_dropout_prob")
        validate_values(self, (*rates, "classifier_dropout_prob"), RATE)
        validate_values(self, ("initializer_range", "semantic_loss_weight"), NON_NEGATIVE)
        validate_mlp_and_activation(self)
        for name in ("num_heads", "num_semantic_blocks", "semantic_attention_types"):
            value = getattr(self, name)
            if value is not None and len(value) != num_stages:
                raise ValueError(f"SeMaskSwinConfig.{name} has {len(value)} entries but depths has {num_stages} stages")
        for stage, kind in enumerate(self.semantic_attention_types or []):
            if kind not in SEMANTIC_ATTENTION_TYPES:
                raise ValueError(
                    f"SeMaskSwinConfig.semantic_attention_types[{stage}] = {kind!r}; expected one of {SEMANTIC_ATTENTION_TYPES}"
                )
        for stage, heads in enumerate(self.num_heads):
            dim = self.embed_dim * 2**stage
            if dim % heads:
                raise ValueError(f"stage {stage}: {dim} channels are not divisible by num_heads[{stage}] = {heads}")


def absolute_embedding_grid(config: SeMaskSwinConfig) -> tuple[int, int]:
    """The patch grid ``(height, width)`` of the absolute position embedding: ``image_size // patch_size`` per side."""
    height, width = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    return height // config.patch_size, width // config.patch_size


AutoConfig.register(SeMaskSwinConfig.model_type, SeMaskSwinConfig, exist_ok=True)

__all__ = ["SeMaskSwinConfig", "absolute_embedding_grid", "semask_fpn_semantic_attention_types"]
