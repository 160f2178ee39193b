#!/usr/bin/env python
"""Convert an original VWFormer checkpoint (yan-hao-tian/VW, mmseg 0.30 fork) to hf-semseg.

    python conversion/convert_vwformer_to_hf.py --checkpoint_path vw_swin-b_ade20k.pth --output_dir out/
        [--variant vwformer-swin-base-ade20k] [--push_to_hub user/vwformer-swin-base-ade20k]

mmseg Swin, mmcls ConvNeXt and mmseg MiT backbones become transformers' SwinBackbone / ConvNextBackbone /
SegformerModel; the head type, channels, enlarging ratios and classes are inferred from the keys. The two values that
are not in the weights (attention heads, short-cut) come from the config text in the checkpoint's ``meta`` or, when
it has none, from the released variant named by ``--variant``. Every key is accounted for or the script fails naming
the keys. The output folder holds ``model.safetensors``, ``config.json`` (with ``auto_map``), the model code,
``preprocessor_config.json`` and a model card, and loads with
``AutoModelForSemanticSegmentation.from_pretrained(out, trust_remote_code=True)``.
"""

import argparse
import re
import sys
from pathlib import Path

import torch

import hf_semseg
from hf_semseg.conversion.model_card import write_vwformer_model_card
from hf_semseg.conversion.vwformer import RELEASED_HEAD_SETTINGS, CheckpointError, convert_checkpoint


MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "vwformer.md"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--checkpoint_path", required=True, help="original mmseg checkpoint (.pth)")
    parser.add_argument("--output_dir", required=True, help="folder to write the converted model to")
    parser.add_argument(
        "--variant",
        choices=sorted(RELEASED_HEAD_SETTINGS),
        default=None,
        help="released variant the checkpoint comes from (heads / short-cut when meta has no config text)",
    )
    parser.add_argument("--push_to_hub", metavar="REPO_ID", default=None, help="also upload to this Hub repository")
    return parser.parse_args(argv)


def test_pipeline(meta: dict, config, variant: str | None) -> dict:
    """Image processor settings of the original test pipeline: from the variant, else from the config text."""
    if variant is not None:
        processor = hf_semseg.variant_image_processor(variant)
        return {
            "size": dict(processor.size),
            "size_divisor": processor.size_divisor,
            "reduce": processor.do_reduce_labels,
        }
    text = meta.get("config") if isinstance(meta.get("config"), str) else ""
    scale = re.search(r"img_scale\s*=\s*\((\d+),\s*(\d+)\)", text)
    longest, shortest = (int(scale.group(1)), int(scale.group(2))) if scale else (2048, 512)
    divisor = re.search(r"ResizeToMultiple['\"]?,\s*size_divisor\s*=\s*(\d+)", text)
    reduce = re.search(r"reduce_zero_label\s*=\s*(True|False)", text)
    return {
        "size": {"longest_edge": max(longest, shortest), "shortest_edge": min(longest, shortest)},
        "size_divisor": int(divisor.group(1)) if divisor else None,
        "reduce": reduce.group(1) == "True" if reduce else config.num_labels == 150,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        model, meta = convert_checkpoint(args.checkpoint_path, variant=args.variant)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    pipeline = test_pipeline(meta, model.config, args.variant)
    processor = hf_semseg.KeepRatioImageProcessor(
        size=pipeline["size"], size_divisor=pipeline["size_divisor"], do_reduce_labels=pipeline["reduce"]
    )

    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    write_vwformer_model_card(MODEL_CARD_TEMPLATE, output_dir, model, Path(args.checkpoint_path).name, args.variant)

    # the saved folder must reproduce the converted model: equal weights, so equal logits up to float rounding (the
    # reloaded tensors can sit at other memory alignments, which changes the GEMM kernels' summation order)
    reloaded = type(model).from_pretrained(output_dir).eval()
    pixel_values = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values).logits
        difference = (reloaded(pixel_values).logits - expected).abs().max().item()
    if difference > 1e-5 * max(1.0, expected.abs().max().item()):
        print(f"error: the saved model differs from the converted one (max abs diff {difference})", file=sys.stderr)
        return 1

    config = model.config
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"converted {args.checkpoint_path}: {config.backbone_config.model_type} backbone, {config.head_type} head, "
        f"{config.hidden_size} channels, {config.num_attention_heads} heads, short-cut {config.use_short_cut}, "
        f"{config.num_labels} classes, {parameters / 1e6:.2f}M parameters -> {output_dir}"
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
