"""One converter for every SeMask detectron2 checkpoint (Picsart-AI-Research/SeMask-Segmentation): SeMask MaskFormer
(:mod:`.semask_maskformer`) and SeMask Mask2Former with its deformable-attention, FaPN or MSFaPN pixel decoder
(:mod:`.semask_mask2former`). The head is told from the keys (:func:`.semask_mask2former.detect_head`); what the
weights do not hold comes from ``--config_file``, the checkpoint's config text or the released variant with exactly
these weights, as for every converter. :data:`CONVERTER` is what ``conversion/convert_semask_d2_to_hf.py`` (and the
older ``convert_semask_mask2former_to_hf.py``) runs.
"""

from pathlib import Path

from ..models.configuration_semask_mask2former import SeMaskMask2FormerConfig
from ..models.configuration_semask_maskformer import SeMaskMaskFormerConfig
from .common import DETECTRON2, Conversion, Converter, errors_name_the_file
from .model_card import semask_d2_card_fields
from .semask_mask2former import (
    CONFIG_FILE_HELP,
    apply_legacy_renames,
    convert_loaded,
    detect_head,
    load_detectron2_checkpoint,
)
from .semask_maskformer import convert_loaded_maskformer


def convert(
    path: str | Path,
    variant: str | None = None,
    config_file: str | Path | None = None,
    id2label: dict[int, str] | None = None,
) -> Conversion:
    """Converts any SeMask detectron2 checkpoint file: reads it once, tells the head from its keys and converts it
    with that head's rules (see :func:`.semask_mask2former.infer_config_and_settings` and
    :func:`.semask_maskformer.infer_config_and_settings` for ``variant`` and ``config_file``)."""
    state_dict = load_detectron2_checkpoint(path)
    with errors_name_the_file(path):
        state_dict = apply_legacy_renames(state_dict)
        head = detect_head(state_dict)
    convert_head = convert_loaded_maskformer if head == "maskformer" else convert_loaded
    return convert_head(path, state_dict, variant, config_file, id2label)


def convert_checkpoint(
    path: str | Path,
    id2label: dict[int, str] | None = None,
    variant: str | None = None,
    config_file: str | Path | None = None,
):
    """Loads any SeMask detectron2 checkpoint file into its hf-semseg model (eval mode). Returns ``(model,
    state_dict)`` (the original state dict, after the legacy renames)."""
    conversion = convert(path, variant, config_file, id2label)
    return conversion.model, conversion.state_dict


#: the summary line of the command line (card fields)
SUMMARY = (
    "SeMask-Swin embed_dim {embed_dim}, depths [{depths}], window {window_size}, semantic attention "
    "[{semantic_attention_types}] (window {semantic_window_size}); {head_name}: pixel decoder {pixel_decoder_row}; "
    "{transformer_decoder_row}; {num_labels} classes"
)
CONVERTER = Converter(
    (SeMaskMask2FormerConfig.model_type, SeMaskMaskFormerConfig.model_type),
    DETECTRON2,
    convert,
    semask_d2_card_fields,
    SUMMARY,
    CONFIG_FILE_HELP,
)
