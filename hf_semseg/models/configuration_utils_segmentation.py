"""What the configurations of every family share: the ignore index and one vocabulary.

Portable module (no third-party import); the configuration, modeling and image-processing modules of this folder import
it as a sibling, and it is saved next to them.

The vocabulary, the same attribute name for the same meaning in every family (older names still load through each
config's ``attribute_map``):

- ``loss_ignore_index``: label value ignored by the losses (SeMask-Mask2Former's transformers field ``ignore_value``
  answers to it too);
- ``classifier_dropout_prob``: dropout before the final classifier;
- ``decoder_hidden_size``: channels of the decode head;
- ``semantic_loss_weight`` / ``auxiliary_loss_weight``: weights of the semantic (SeMask) and auxiliary (FCN) losses.
"""

from typing import Any


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


__all__ = ["IGNORE_INDEX", "SDN_SIMILARITIES", "use_four_backbone_stages", "validate_sdn_options"]
