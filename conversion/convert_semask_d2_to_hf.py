#!/usr/bin/env python
"""Convert any original SeMask detectron2 checkpoint (Picsart-AI-Research/SeMask-Segmentation) to hf-semseg.

    python conversion/convert_semask_d2_to_hf.py --checkpoint_path semask_large_fapn_ade20k.pth --output_dir out/ \
        [--config_file config.yaml] [--variant NAME] [--push_to_hub user/semask-large-mask2former-fapn-ade20k]

Reads SeMask MaskFormer and SeMask Mask2Former with the deformable-attention, FaPN or MSFaPN pixel decoder; the head
is told from the keys. What every converter does (key accounting, output folder, reload check, Hub upload):
``hf_semseg.conversion.common``; this family's rules: ``hf_semseg.conversion.semask_d2``.

The architecture is read from the checkpoint. What the weights do not hold (the semantic window, the decoder heads
where no deformable attention shows them, pre-norm, the padding multiple, the test resize, the class names) comes
from the run's detectron2 ``config.yaml`` (``--config_file``), else from the released variant with exactly these
weights (named in the summary line); otherwise the converter stops and names what is missing.
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
