"""Configuration of the Pale Transformer (Wu, Wu, Tan, Guo, "Pale Transformer: A General Vision Transformer Backbone
with Pale-Shaped Attention", AAAI 2022, arXiv 2112.14000) and of its UperNet segmentation model.

No official code or weights were ever released; the layout follows the paper (and reproduces its parameter counts,
22M / 48M / 85M for Pale-T / S / B). Portable module: imports only transformers and huggingface_hub.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin
from transformers.utils import logging

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


logger = logging.get_logger(__name__)

#: attributes of :class:`PaleConfig` computed from ``embed_dim`` and ``depths``
DERIVED_ATTRIBUTES = ("num_layers", "hidden_sizes", "hidden_size", "stage_names")


@strict
class PaleConfig(AnyPrecisionConfigMixin, BackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of a Pale Transformer backbone, image classifier and UperNet segmentation model.

    Args:
        num_channels: input channels.
        embed_dim: channels of stage 1; stage ``i`` has ``embed_dim * 2**i`` (64 / 96 / 128 for Pale-T / S / B).
        depths: Pale blocks per stage ([2, 2, 16, 2]).
        num_heads: attention heads per stage, split evenly between the row and the column branch (a single head is
            used by both branches).
        pale_sizes: pale size ``s`` per stage: each pale holds ``s`` interlaced rows and ``s`` interlaced columns.
        mlp_ratio: MLP hidden size ratio.
        qkv_bias: bias of the point-wise Q/K/V projections.
        qkv_depthwise_bias: bias of the depth-wise 3x3 convs of the separable Q/K/V projections (CvT style: none).
        cpe_kernel_size: kernel of the depth-wise conditional position encoding conv before each block.
        patch_sizes / patch_strides: overlapping conv embeddings (7/4 stem, 3/2 between stages).
        embed_norm: LayerNorm after each conv embedding.
        final_norm: LayerNorm on the pooled features before the classifier.
        hidden_act: MLP activation.
        layer_norm_eps: LayerNorm epsilon.
        drop_path_rate: stochastic depth, linearly increased over all blocks (0.1 / 0.3 / 0.5 for T / S / B).
        attention_probs_dropout_prob / hidden_dropout_prob: dropouts of the attention and of the projections.
        initializer_range: std of the truncated-normal init of Linear layers.
        decoder_hidden_size: channels of the UperNet head (512).
        pool_scales: pyramid pooling scales of the UperNet head.
        use_auxiliary_head: the FCN auxiliary head on stage 3 (Swin/CSWin ADE20K recipe).
        auxiliary_loss_weight / auxiliary_channels / auxiliary_num_convs / auxiliary_concat_input: the FCN head.
        loss_ignore_index: label ignored by the segmentation losses.
        out_features / out_indices: stages (``stem``, ``stage1`` ... ``stage4``) returned by :class:`PaleBackbone`.
            Neither given: the last stage only, the rule of transformers' backbone configs
            (``BackboneConfigMixin.set_output_features_output_indices``). The UperNet model
            (:class:`PaleForSemanticSegmentation`) needs the four stages: its configs set
            ``out_features=["stage1", "stage2", "stage3", "stage4"]``, as the variants do.
        use_sdn_neck / sdn_lambda / sdn_similarity / sdn_groups / sdn_width: the SDN-style neck between the backbone
            and the decode head, off by default (:func:`validate_sdn_options` describes the options).
    """

    model_type = "pale"
    attribute_map = {"num_attention_heads": "num_heads", "num_hidden_layers": "num_layers"}

    num_channels: int = 3
    embed_dim: int = 64
    depths: list[int] | tuple[int, ...] = (2, 2, 16, 2)
    num_heads: list[int] | tuple[int, ...] = (2, 4, 8, 16)
    pale_sizes: list[int] | tuple[int, ...] = (7, 7, 7, 7)
    mlp_ratio: float | int = 4.0
    qkv_bias: bool = True
    qkv_depthwise_bias: bool = False
    cpe_kernel_size: int = 3
    patch_sizes: list[int] | tuple[int, ...] = (7, 3, 3, 3)
    patch_strides: list[int] | tuple[int, ...] = (4, 2, 2, 2)
    embed_norm: bool = True
    final_norm: bool = True
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    drop_path_rate: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.0
    hidden_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    decoder_hidden_size: int = 512
    pool_scales: list[int] | tuple[int, ...] = (1, 2, 3, 6)
    use_auxiliary_head: bool = True
    auxiliary_loss_weight: float | int = 0.4
    auxiliary_channels: int = 256
    auxiliary_num_convs: int = 1
    auxiliary_concat_input: bool = False
    loss_ignore_index: int = IGNORE_INDEX
    use_sdn_neck: bool = False
    sdn_lambda: float | int = 1.0
    sdn_similarity: str = "per_channel"
    sdn_groups: str | int = "depthwise"
    sdn_width: int | None = None
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        for name in ("depths", "num_heads", "pale_sizes", "patch_sizes", "patch_strides", "pool_scales"):
            setattr(self, name, list(getattr(self, name)))
        # a saved config.json holds the derived attributes too: they follow embed_dim and depths, not the file
        saved = {name: kwargs.pop(name) for name in DERIVED_ATTRIBUTES if name in kwargs}
        self.set_derived_attributes()
        stale = {
            name: value
            for name, value in saved.items()
            if (list(value) if isinstance(value, list | tuple) else value) != getattr(self, name)
        }
        if stale:
            given = ", ".join(f"{name} = {value} (derived: {getattr(self, name)})" for name, value in stale.items())
            logger.warning(
                f"PaleConfig: the given {given} do not follow embed_dim = {self.embed_dim} and depths = {self.depths}; "
                f"the derived values are used ({', '.join(DERIVED_ATTRIBUTES)} follow those two)"
            )
        # transformers' backbone rule (as SwinConfig): neither given -> the last stage
        self.set_output_features_output_indices(
            out_features=kwargs.pop("out_features", None), out_indices=kwargs.pop("out_indices", None)
        )
        super().__post_init__(**kwargs)

    def set_derived_attributes(self):
        """``num_layers``, ``hidden_sizes`` (the stages' channels), ``hidden_size`` and ``stage_names`` from
        ``embed_dim`` and ``depths``."""
        num_layers = len(self.depths)
        hidden_sizes = [self.embed_dim * 2**i for i in range(num_layers)]
        derived = {
            "num_layers": num_layers,
            "hidden_sizes": hidden_sizes,
            "hidden_size": hidden_sizes[-1] if hidden_sizes else self.embed_dim,  # no stage: refused
            "stage_names": ["stem"] + [f"stage{index}" for index in range(1, num_layers + 1)],
        }
        for name, value in derived.items():
            super().__setattr__(name, value)

    def __setattr__(self, key, value):
        """Setting ``embed_dim`` or ``depths`` on a built config (``config.update``, ``from_pretrained(...,
        embed_dim=...)``, which sets its keyword arguments after construction) updates the derived attributes, from
        which the model takes its widths."""
        super().__setattr__(key, value)
        if key in ("embed_dim", "depths") and "stage_names" in self.__dict__:
            self.set_derived_attributes()

    def validate_architecture(self):
        validate_sdn_options(self)
        validate_labels(self)
        num_stages = len(self.depths)
        if not num_stages:
            raise ValueError("PaleConfig.depths = []; expected the number of blocks of each stage (one stage at least)")
        validate_values(
            self, ("depths", "initializer_range", "auxiliary_loss_weight", "auxiliary_num_convs"), NON_NEGATIVE
        )
        validate_values(self, ("num_heads", "pale_sizes", "patch_sizes", "patch_strides"), POSITIVE)
        validate_values(self, ("num_channels", "embed_dim", "decoder_hidden_size", "pool_scales"), POSITIVE)
        validate_values(self, ("mlp_ratio", "layer_norm_eps", "auxiliary_channels"), POSITIVE)
        validate_values(self, ("drop_path_rate", "attention_probs_dropout_prob", "hidden_dropout_prob"), RATE)
        validate_mlp_and_activation(self)
        if self.cpe_kernel_size < 1 or self.cpe_kernel_size % 2 == 0:
            raise ValueError(
                f"PaleConfig.cpe_kernel_size = {self.cpe_kernel_size}; expected a positive odd kernel (the position "
                "encoding conv keeps the map size)"
            )
        if self.use_auxiliary_head and self.auxiliary_num_convs == 0 and num_stages > 2:
            if self.auxiliary_channels != self.hidden_sizes[2]:
                raise ValueError(
                    f"PaleConfig.auxiliary_num_convs = 0 passes stage 3's {self.hidden_sizes[2]} channels straight to "
                    f"the classifier; expected auxiliary_channels = {self.hidden_sizes[2]}, got {self.auxiliary_channels}"
                )
        for name in ("num_heads", "pale_sizes", "patch_sizes", "patch_strides"):
            if len(getattr(self, name)) != num_stages:
                raise ValueError(f"PaleConfig.{name} has {len(getattr(self, name))} entries, depths has {num_stages}")
        for stage, heads in enumerate(self.num_heads):
            dim = self.embed_dim * 2**stage
            if heads > 1 and (heads % 2 or dim % heads):
                raise ValueError(
                    f"stage {stage}: num_heads[{stage}] = {heads} must be even (half per branch) and divide {dim}"
                )
            if dim % 2:
                raise ValueError(f"stage {stage}: {dim} channels cannot be split into a row and a column half")
        if any(size < 1 for size in self.pale_sizes):
            raise ValueError(f"PaleConfig.pale_sizes must be positive, got {self.pale_sizes}")


AutoConfig.register(PaleConfig.model_type, PaleConfig, exist_ok=True)

__all__ = ["PaleConfig"]
