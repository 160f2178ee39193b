#!/usr/bin/env python
"""Convert an original SeMask detectron2 checkpoint (Picsart-AI-Research/SeMask-Segmentation) to hf-semseg.

The older name of ``convert_semask_d2_to_hf.py``, kept working: the same command line (``hf_semseg.conversion.
semask_d2.CONVERTER``), which converts every SeMask detectron2 head (MaskFormer; Mask2Former with the
deformable-attention, FaPN or MSFaPN pixel decoder).

    python conversion/convert_semask_mask2former_to_hf.py --checkpoint_path semask_large_mask2former_ade20k.pth \
        --output_dir out/ [--config_file config.yaml] [--push_to_hub user/semask-large-mask2former-ade20k]
"""

import sys
from pathlib import Path


MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "semask_d2.md"


def main(argv=None) -> int:
    # imported here, under the Ctrl-C guard below: torch and transformers take seconds to import
    from hf_semseg.conversion.common import converter_main
    from hf_semseg.conversion.semask_d2 import CONVERTER

    return converter_main(CONVERTER, MODEL_CARD_TEMPLATE, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # during the imports; once converting, converter_main reports Ctrl-C itself
        print("error: interrupted (Ctrl-C) while starting; nothing was written", file=sys.stderr)
        sys.exit(130)
