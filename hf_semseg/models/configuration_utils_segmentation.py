"""What the configurations of every family share: the ignore index and one vocabulary.

Portable module (it imports transformers' activation table only); the configuration, modeling and image-processing modules of this folder import
it as a sibling, and it is saved next to them.

The vocabulary, the same attribute name for the same meaning in every family (older names still load through each
config's ``attribute_map``):

- ``loss_ignore_index``: label value ignored by the losses (SeMask-Mask2Former's transformers field ``ignore_value``
  answers to it too);
- ``classifier_dropout_prob``: dropout before the final classifier;
- ``decoder_hidden_size``: channels of the decode head;
- ``semantic_loss_weight`` / ``auxiliary_loss_weight``: weights of the semantic (SeMask) and auxiliary (FCN) losses.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers.activations import ACT2FN


#: label value that marks unlabelled pixels: ignored by every loss and metric, used to pad label maps
IGNORE_INDEX = 255


def use_four_backbone_stages(backbone_config) -> None:
    """Gives a four-stage backbone config whose ``out_features`` were left unset the four stages the heads take
    (VWFormer's decode head, SeMask-Mask2Former's pixel decoder).

    transformers' backbone configs (``BackboneConfigMixin``) return the last stage only when neither ``out_features``
    nor ``out_indices`` is given; no head here can use that, so a backbone config with exactly that selection is set to
    ``stage1`` ... ``stage4`` (the configs call this at construction and when ``backbone_config`` is assigned). Any
    other selection is kept (and refused by the heads' validation unless it is the four). The MiT encoder
    (``segformer``) has no stage selection."""
    stage_names = getattr(backbone_config, "stage_names", None)
    if stage_names is None or len(stage_names) != 5 or getattr(backbone_config, "model_type", None) == "segformer":
        return
    if list(backbone_config.out_features or []) == [stage_names[-1]]:
        backbone_config.out_features = list(stage_names[1:])


@dataclass(frozen=True)
class ValueRule:
    """What :func:`validate_values` requires of each number: ``check`` and, for the message, ``expected``."""

    check: Callable[[float], bool]
    expected: str


POSITIVE = ValueRule(lambda value: value > 0, "a positive number")
NON_NEGATIVE = ValueRule(lambda value: value >= 0, "a number >= 0")
#: a dropout or stochastic-depth rate (1 would drop everything)
RATE = ValueRule(lambda value: 0 <= value < 1, "a rate in [0, 1)")


def validate_values(config: Any, names, rule: ValueRule, prefix: str | None = None) -> None:
    """Raises a ``ValueError`` naming the first attribute of ``names`` (of ``config``; a list or tuple value is checked
    entry by entry) whose value is not a number passing ``rule``, with its value and ``rule.expected``. ``prefix``
    starts the attribute's name in the message (the config's class name unless given, e.g.
    ``"SeMaskMaskFormerConfig.decoder_config"``)."""
    prefix = prefix or type(config).__name__
    for name in names:
        value = getattr(config, name)
        entries = value if isinstance(value, (list, tuple)) else [value]
        for entry in entries:
            if isinstance(entry, bool) or not isinstance(entry, (int, float)) or not rule.check(entry):
                raise ValueError(f"{prefix}.{name} = {value!r}; expected {rule.expected}")


def validate_mlp_and_activation(config: Any) -> None:
    """A Swin-style config's MLP width and activation: ``int(embed_dim * mlp_ratio)`` hidden channels in stage 1 (at
    least 1) and a ``hidden_act`` transformers' ``ACT2FN`` has."""
    name = type(config).__name__
    if int(config.embed_dim * config.mlp_ratio) < 1:
        raise ValueError(
            f"{name}.mlp_ratio = {config.mlp_ratio} gives MLPs of int({config.embed_dim} * {config.mlp_ratio}) = 0 "
            "hidden channels in stage 1; expected at least 1"
        )
    if config.hidden_act not in ACT2FN:
        raise ValueError(f"{name}.hidden_act = {config.hidden_act!r}; expected one of transformers' ACT2FN names")


def validate_labels(config: Any, per_pixel_softmax: str | None = None) -> None:
    """At least one class, and ``id2label`` keyed by the class indices ``0 ... num_labels - 1`` (the model predicts
    ``num_labels`` channels and the post-processing names channel ``i`` ``id2label[i]``). ``per_pixel_softmax``: the
    name of a model that classifies each pixel with a softmax over the classes, which needs two at least (over one
    class the prediction is that class everywhere and the loss and its gradients are 0)."""
    name = type(config).__name__
    if config.num_labels < 1:
        raise ValueError(f"{name}.num_labels = {config.num_labels}; expected at least 1 class")
    if per_pixel_softmax is not None and config.num_labels < 2:
        raise ValueError(
            f"{per_pixel_softmax}: {name}.num_labels = {config.num_labels}; expected at least 2 classes (a softmax "
            "over one class predicts it everywhere and its loss is 0): binary segmentation is num_labels = 2, "
            "background and foreground"
        )
    keys = sorted(int(key) for key in config.id2label)
    if keys != list(range(config.num_labels)):
        raise ValueError(
            f"{name}.id2label has the keys {keys}; expected the class indices 0 ... {config.num_labels - 1} "
            f"(num_labels = {config.num_labels})"
        )


def validate_mask2former_values(config: Any) -> None:
    """The sizes, rates and loss settings of transformers' ``Mask2FormerConfig`` fields the SeMask and VW
    Mask2Former configs share (transformers does not check them; wrong ones fail inside torch or are silently
    truncated), and the labels."""
    validate_labels(config)
    sizes = ("num_queries", "hidden_dim", "num_attention_heads", "feature_size", "mask_feature_size")
    validate_values(config, (*sizes, "dim_feedforward", "encoder_feedforward_dim", "train_num_points"), POSITIVE)
    weights = ("class_weight", "mask_weight", "dice_weight", "no_object_weight")
    validate_values(config, ("encoder_layers", *weights), NON_NEGATIVE)
    validate_values(config, ("dropout",), RATE)
    points = ValueRule(lambda value: value >= 1, "a number >= 1 (points sampled per kept point)")
    validate_values(config, ("oversample_ratio",), points)
    validate_values(
        config, ("importance_sample_ratio",), ValueRule(lambda value: 0 <= value <= 1, "a fraction in [0, 1]")
    )


#: the guidance similarities of the SDN-style neck (``sdn_similarity``; :mod:`modeling_sdn`)
SDN_SIMILARITIES = ("per_channel", "l2")


def validate_sdn_options(config: Any) -> None:
    """Checks the SDN-style neck options the configs of SeMask-FPN, Pale-UperNet and VWFormer share:

    - ``use_sdn_neck``: put an SDN-style neck (unofficial reconstruction of Tan et al., NeurIPS 2022; no official code
      exists: :mod:`modeling_sdn`) between the backbone and the decode head. Off by default; on, it is randomly
      initialised as the identity and leaves the checkpoint keys of everything else unchanged.
    - ``sdn_lambda`` / ``sdn_similarity`` / ``sdn_groups``: the similarity scale, the guidance similarity
      (``"per_channel"`` or ``"l2"``) and the semantic-difference-convolution groups (``"depthwise"``, ours, or a
      number).
    - ``sdn_width``: the diffusion width; None (default) diffuses at each backbone stage's own width, a number
      projects every stage to it first (cheaper on wide stages; ours).
    """
    name = type(config).__name__
    if config.sdn_similarity not in SDN_SIMILARITIES:
        raise ValueError(f"{name}.sdn_similarity must be one of {SDN_SIMILARITIES}, got {config.sdn_similarity!r}")
    if not config.sdn_lambda > 0:
        raise ValueError(f"{name}.sdn_lambda must be positive, got {config.sdn_lambda}")
    groups = config.sdn_groups
    if groups != "depthwise" and (isinstance(groups, bool) or not isinstance(groups, int) or groups < 1):
        raise ValueError(f"{name}.sdn_groups must be 'depthwise' or a positive number of groups, got {groups!r}")
    width = getattr(config, "sdn_width", None)
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise ValueError(f"{name}.sdn_width must be None or a positive number of channels, got {width!r}")


def refuse_sdn_neck(config: Any) -> None:
    """The families without an SDN-style neck (the detectron2-style ones) refuse ``use_sdn_neck = True``, an option of
    SeMask-FPN, Pale-UperNet and VWFormer: their configs take unknown keys, and the model was built without a neck,
    silently."""
    if getattr(config, "use_sdn_neck", False):
        raise ValueError(
            f"{type(config).__name__}.use_sdn_neck = True: this family has no SDN-style neck (an option of SeMask-FPN, "
            "Pale-UperNet and VWFormer); leave it unset"
        )


#: bits of the stored weight codes of an any-precision model (:mod:`modeling_any_precision`); every narrower width is
#: a prefix of them
STORAGE_WEIGHT_BITS = 8


@dataclass(kw_only=True)
class AnyPrecisionConfigMixin:
    """The any-precision fields every family's configuration shares (listed first among its bases), after "Vertical
    Layering of Quantized Neural Networks" (Wu et al., arXiv 2212.05326): one checkpoint whose 8-bit weight codes
    serve every narrower width by dropping low bits (:mod:`modeling_any_precision`).

    Args:
        weight_bits: the weight widths the model serves and once-QAT trains, e.g. ``[8, 4, 2]`` (each 1 ... 8). None
            (default): an ordinary float model.
        active_weight_bits: the width the model computes with; None means the largest of ``weight_bits``.
            ``model.set_weight_bits(b)`` changes it (any width 1 ... 8: the 8-bit codes define them all).
        weight_bits_float_modules: regular expressions (``re.search`` on module names) of the ``nn.Linear`` /
            ``nn.Conv2d`` layers kept in floating point; None keeps the patch embedding that meets the pixels and the
            final classifiers (``DEFAULT_FLOAT_MODULES`` of :mod:`modeling_any_precision`).
    """

    weight_bits: list[int] | None = None
    active_weight_bits: int | None = None
    weight_bits_float_modules: list[str] | None = None

    def validate_weight_bits(self):
        name = type(self).__name__
        widths = self.weight_bits
        if widths is None:
            if self.active_weight_bits is not None:
                raise ValueError(f"{name}.active_weight_bits={self.active_weight_bits} needs weight_bits to be set")
            return
        if not widths or len(set(widths)) != len(widths):
            raise ValueError(f"{name}.weight_bits must list distinct widths, got {widths}")
        for bits in [*widths, self.active_weight_bits]:
            if bits is not None and (isinstance(bits, bool) or not 1 <= bits <= STORAGE_WEIGHT_BITS):
                raise ValueError(
                    f"{name}: weight width {bits!r} is not between 1 and {STORAGE_WEIGHT_BITS} (weight_bits={widths}, "
                    f"active_weight_bits={self.active_weight_bits})"
                )
        for pattern in self.weight_bits_float_modules or ():
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"{name}.weight_bits_float_modules: {pattern!r} is not a regular expression ({error}); expected "
                    "patterns searched in the module names (re.search)"
                ) from None


__all__ = [
    "IGNORE_INDEX",
    "SDN_SIMILARITIES",
    "STORAGE_WEIGHT_BITS",
    "ValueRule",
    "AnyPrecisionConfigMixin",
    "use_four_backbone_stages",
    "validate_labels",
    "validate_mask2former_values",
    "validate_mlp_and_activation",
    "validate_sdn_options",
    "refuse_sdn_neck",
    "validate_values",
]
