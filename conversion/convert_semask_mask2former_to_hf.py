#!/usr/bin/env python
"""Convert an original SeMask-Mask2Former checkpoint (Picsart-AI-Research/SeMask-Segmentation, detectron2) to hf-semseg.

    python conversion/convert_semask_mask2former_to_hf.py --checkpoint_path semask_large_mask2former_ade20k.pth \
        --output_dir out/ [--push_to_hub user/semask-large-mask2former-ade20k]

What every converter does (key accounting, output folder, reload check, Hub upload): ``hf_semseg.conversion.common``.

The whole config is inferred from the checkpoint (see ``hf_semseg.conversion.semask_mask2former``). The semantic
window, the test resize, the label reduction and the class names are not in the weights: they come from the
registered variant with the same architecture (named in the summary line) or, for another architecture, from the
dataset its number of classes points to (150 ADE20K, 19 Cityscapes).
"""

import sys
from pathlib import Path

from hf_semseg.conversion.common import converter_main
from hf_semseg.conversion.semask_mask2former import CONVERTER


MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "semask_mask2former.md"


def main(argv=None) -> int:
    return converter_main(CONVERTER, MODEL_CARD_TEMPLATE, __doc__.splitlines()[1], argv)


if __name__ == "__main__":
    sys.exit(main())
