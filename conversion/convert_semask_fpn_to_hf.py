#!/usr/bin/env python
"""Convert an original SeMask-FPN checkpoint (Picsart-AI-Research/SeMask-Segmentation, mmseg 0.11) to hf-semseg.

    python conversion/convert_semask_fpn_to_hf.py --checkpoint_path semask_tiny_fpn_ade20k.pth --output_dir out/ \
        [--config_file run.py] [--variant NAME] [--push_to_hub user/semask-tiny-fpn-ade20k]

What every converter does (key accounting, output folder, reload check, Hub upload): ``hf_semseg.conversion.common``.

The whole config is inferred from the checkpoint (see ``hf_semseg.conversion.semask_fpn``). What is not in the
weights (semantic window, test pipeline, dataset) comes, in this order, from the run's mmseg config
(``--config_file``), from the checkpoint's config text, or from the released variant whose weights are exactly the
checkpoint's (found by matching, or named with ``--variant``), which the summary line names; otherwise the converter
stops and names what is missing.
"""

import sys
from pathlib import Path


MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "semask_fpn.md"


def main(argv=None) -> int:
    # imported here, under the Ctrl-C guard below: torch and transformers take seconds to import
    from hf_semseg.conversion.common import converter_main
    from hf_semseg.conversion.semask_fpn import CONVERTER

    return converter_main(CONVERTER, MODEL_CARD_TEMPLATE, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # during the imports; once converting, converter_main reports Ctrl-C itself
        print("error: interrupted (Ctrl-C) while starting; nothing was written", file=sys.stderr)
        sys.exit(130)
