#!/usr/bin/env python
"""Convert an original VWFormer checkpoint (yan-hao-tian/VW, mmseg 0.30 fork) to hf-semseg.

    python conversion/convert_vwformer_to_hf.py --checkpoint_path vw_swin-b_ade20k.pth --output_dir out/ \
        [--config_file run.py] [--variant vwformer-swin-base-ade20k] [--push_to_hub user/vwformer-swin-base-ade20k]

What every converter does (key accounting, output folder, reload check, Hub upload): ``hf_semseg.conversion.common``.

mmseg Swin, mmcls ConvNeXt and mmseg MiT backbones become transformers' SwinBackbone / ConvNextBackbone /
SegformerModel; the head type, channels, enlarging ratios and classes are inferred from the keys. What is not in the
weights (attention heads, short-cut, the test pre-processing, the dataset) comes, in this order, from the run's mmseg
config (``--config_file``), from the config text in the checkpoint's ``meta``, or from the released variant whose
weights are exactly the checkpoint's (found by matching, or named with ``--variant``), which the summary line names;
otherwise the converter stops and names what is missing.
"""

import sys
from pathlib import Path


MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "vwformer.md"


def main(argv=None) -> int:
    # imported here, under the Ctrl-C guard below: torch and transformers take seconds to import
    from hf_semseg.conversion.common import converter_main
    from hf_semseg.conversion.vwformer import CONVERTER

    return converter_main(CONVERTER, MODEL_CARD_TEMPLATE, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # during the imports; once converting, converter_main reports Ctrl-C itself
        print("error: interrupted (Ctrl-C) while starting; nothing was written", file=sys.stderr)
        sys.exit(130)
