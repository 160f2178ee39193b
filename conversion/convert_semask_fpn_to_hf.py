#!/usr/bin/env python
"""Convert an original SeMask-FPN checkpoint (Picsart-AI-Research/SeMask-Segmentation, mmseg 0.11) to hf-semseg.

    python conversion/convert_semask_fpn_to_hf.py --checkpoint_path semask_tiny_fpn_ade20k.pth --output_dir out/
        [--push_to_hub user/semask-tiny-fpn-ade20k]

The whole config is inferred from the checkpoint (see ``hf_semseg.conversion.semask_fpn``); every key is accounted
for or the script fails naming the keys. The output folder holds ``model.safetensors``, ``config.json`` (with
``auto_map``), the model code, ``preprocessor_config.json`` and a model card, and loads with
``AutoModelForSemanticSegmentation.from_pretrained(out, trust_remote_code=True)``.
"""

import argparse
import sys
from pathlib import Path

import torch

import hf_semseg
from hf_semseg.conversion.model_card import write_model_card
from hf_semseg.conversion.semask_fpn import (
    CheckpointError,
    convert_checkpoint,
    infer_test_scale,
    reduces_zero_label,
)


MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "semask_fpn.md"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--checkpoint_path", required=True, help="original mmseg checkpoint (.pth)")
    parser.add_argument("--output_dir", required=True, help="folder to write the converted model to")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", default=None, help="also upload to this Hub repository")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        model, meta = convert_checkpoint(args.checkpoint_path)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    config = model.config
    long_edge, short_edge = infer_test_scale(meta, config)
    processor = hf_semseg.KeepRatioImageProcessor(
        size={"longest_edge": long_edge, "shortest_edge": short_edge},
        do_reduce_labels=reduces_zero_label(meta, config),
    )

    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    write_model_card(MODEL_CARD_TEMPLATE, output_dir, model, Path(args.checkpoint_path).name)

    # the saved folder must reproduce the converted model exactly
    reloaded = type(model).from_pretrained(output_dir).eval()
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (reloaded(pixel_values).logits - model(pixel_values).logits).abs().max().item()
    if difference != 0.0:
        print(f"error: the saved model differs from the converted one (max abs diff {difference})", file=sys.stderr)
        return 1

    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"converted {args.checkpoint_path}: embed_dim {config.embed_dim}, depths {config.depths}, heads "
        f"{config.num_heads}, window {config.window_size}, {config.num_labels} classes, semantic attention "
        f"{config.semantic_attention_types}, OHEM {config.use_ohem}, {parameters / 1e6:.2f}M parameters -> {output_dir}"
    )
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.push_to_hub, exist_ok=True)
        api.upload_folder(folder_path=str(output_dir), repo_id=args.push_to_hub)
        print(f"pushed to {args.push_to_hub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
