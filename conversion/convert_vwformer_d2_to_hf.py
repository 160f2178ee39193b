#!/usr/bin/env python
"""Convert any original VW-MaskFormer / VW-Mask2Former detectron2 checkpoint (yan-hao-tian/VW) to hf-semseg.

    python conversion/convert_vwformer_d2_to_hf.py --checkpoint_path vw_mask2former-ti_ade20k.pth --output_dir out/ \
        [--config_file config.yaml] [--variant NAME] [--push_to_hub user/vw-mask2former-swin-tiny-ade20k]

Reads VW-MaskFormer (MaskFormer/ folder) and VW-Mask2Former with the plain or the deformable-attention VW pixel
decoder (Mask2Former/ folder); the head is told from the keys. What every converter does (key accounting, output
folder, reload check, Hub upload): ``hf_semseg.conversion.common``; this family's rules:
``hf_semseg.conversion.vwformer_d2``.

The architecture is read from the checkpoint. What the weights do not hold (VW-MaskFormer's VW attention heads and
short-cut, the decoder heads where no deformable attention shows them, pre-norm, the padding multiple, the test
resize, the class names) comes from the run's detectron2 ``config.yaml`` (``--config_file``), else from the released
variant with exactly these weights (named in the summary line); otherwise the converter stops and names what is
missing. A padding multiple that is not a multiple of 64 (the released yamls say 32) becomes its least common
multiple with 64 (32 -> 64, 96 -> 192), which gives the same results wherever the original runs, and the summary
line says so.
"""

import sys
from pathlib import Path


MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "vwformer_d2.md"


def main(argv=None) -> int:
    # imported here, under the Ctrl-C guard below: torch and transformers take seconds to import
    from hf_semseg.conversion.common import converter_main
    from hf_semseg.conversion.vwformer_d2 import CONVERTER

    return converter_main(CONVERTER, MODEL_CARD_TEMPLATE, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # during the imports; once converting, converter_main reports Ctrl-C itself
        print("error: interrupted (Ctrl-C) while starting; nothing was written", file=sys.stderr)
        sys.exit(130)
