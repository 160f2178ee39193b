#!/usr/bin/env python
"""Convert an original VWFormer checkpoint (yan-hao-tian/VW, mmseg 0.30 fork) to hf-semseg.

    python conversion/convert_vwformer_to_hf.py --checkpoint_path vw_swin-b_ade20k.pth --output_dir out/
        [--variant vwformer-swin-base-ade20k] [--push_to_hub user/vwformer-swin-base-ade20k]

What every converter does (key accounting, output folder, reload check, Hub upload): ``hf_semseg.conversion.common``.

mmseg Swin, mmcls ConvNeXt and mmseg MiT backbones become transformers' SwinBackbone / ConvNextBackbone /
SegformerModel; the head type, channels, enlarging ratios and classes are inferred from the keys. The two values that
are not in the weights (attention heads, short-cut) come from the config text in the checkpoint's ``meta`` or, when
it has none, from the released variant named by ``--variant`` (whose weights must be the checkpoint's).
"""

import sys
from pathlib import Path

from hf_semseg.conversion.common import converter_main
from hf_semseg.conversion.vwformer import CONVERTER


MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "vwformer.md"


def main(argv=None) -> int:
    return converter_main(CONVERTER, MODEL_CARD_TEMPLATE, __doc__.splitlines()[1], argv)


if __name__ == "__main__":
    sys.exit(main())
