"""What the configurations of every family share: the ignore index and the stage bookkeeping of a backbone config.

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


def set_backbone_stages(config: Any, kwargs: dict[str, Any]) -> None:
    """Sets ``stage_names`` (``stem``, ``stage1`` ...) and the backbone's ``out_features`` / ``out_indices`` of a
    ``BackboneConfigMixin`` config with ``config.num_layers`` stages, from ``kwargs`` or the saved fields; all four
    stages when neither is given. Pops the two keys from ``kwargs``."""
    config.stage_names = ["stem"] + [f"stage{index}" for index in range(1, config.num_layers + 1)]
    out_features = kwargs.pop("out_features", None)
    out_indices = kwargs.pop("out_indices", None)
    if out_features is None and out_indices is None:
        out_features, out_indices = config._out_features, config._out_indices
    if out_features is None and out_indices is None:
        out_features = config.stage_names[1:]
    config.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)


__all__ = ["IGNORE_INDEX", "set_backbone_stages"]
