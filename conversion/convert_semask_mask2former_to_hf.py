#!/usr/bin/env python
"""Convert an original SeMask-Mask2Former checkpoint (Picsart-AI-Research/SeMask-Segmentation, detectron2) to hf-semseg.

    python conversion/convert_semask_mask2former_to_hf.py --checkpoint_path semask_large_mask2former_ade20k.pth \
        --output_dir out/ [--push_to_hub user/semask-large-mask2former-ade20k]

The whole config is inferred from the checkpoint (see ``hf_semseg.conversion.semask_mask2former``); every key is
accounted for or the script fails naming the keys. 150 classes are taken to be ADE20K and 19 Cityscapes (class
names, test resize 640/2560 or 1024/2048, label reduction). The output folder holds ``model.safetensors``,
``config.json`` (with ``auto_map``), the model code, ``preprocessor_config.json`` and a model card, and loads with
``AutoModelForSemanticSegmentation.from_pretrained(out, trust_remote_code=True)``.
"""

import argparse
import sys
from pathlib import Path

import torch

import hf_semseg
from hf_semseg.conversion.model_card import write_semask_mask2former_model_card
from hf_semseg.conversion.semask_fpn import CheckpointError
from hf_semseg.conversion.semask_mask2former import convert_checkpoint, pixel_statistics


MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "semask_mask2former.md"
# number of classes -> (dataset key of hf_semseg.dataset_labels, test (shortest, longest) edge, reduce labels)
DATASETS = {150: ("ade20k", (640, 2560), True), 19: ("cityscapes", (1024, 2048), False)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--checkpoint_path", required=True, help="original detectron2 checkpoint (.pth)")
    parser.add_argument("--output_dir", required=True, help="folder to write the converted model to")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", default=None, help="also upload to this Hub repository")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        model, state_dict = convert_checkpoint(args.checkpoint_path)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    config = model.config
    dataset, (shortest, longest), reduce_labels = DATASETS.get(config.num_labels, (None, (640, 2560), False))
    if dataset is not None:
        id2label, _ = hf_semseg.dataset_labels(dataset)
        config.id2label, config.label2id = id2label, {label: i for i, label in id2label.items()}
        config.sync_backbone_labels()
    processor_kwargs = {}
    statistics = pixel_statistics(state_dict)
    if statistics is not None:
        processor_kwargs["image_mean"], processor_kwargs["image_std"] = statistics
    processor = hf_semseg.SeMaskMask2FormerImageProcessor(
        size={"shortest_edge": shortest, "longest_edge": longest}, do_reduce_labels=reduce_labels, **processor_kwargs
    )

    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    write_semask_mask2former_model_card(MODEL_CARD_TEMPLATE, output_dir, model, Path(args.checkpoint_path).name)

    # the saved folder must reproduce the converted model exactly
    reloaded = type(model).from_pretrained(output_dir).eval()
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (reloaded(pixel_values).logits - model(pixel_values).logits).abs().max().item()
    if difference != 0.0:
        print(f"error: the saved model differs from the converted one (max abs diff {difference})", file=sys.stderr)
        return 1

    backbone = config.backbone_config
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"converted {args.checkpoint_path}: SeMask-Swin embed_dim {backbone.embed_dim}, depths {backbone.depths}, "
        f"window {backbone.window_size}, semantic attention {backbone.semantic_attention_types} (window "
        f"{backbone.semantic_window_size}); Mask2Former {config.encoder_layers} encoder / {config.decoder_layers - 1} "
        f"decoder layers, {config.num_queries} queries; {config.num_labels} classes, {parameters / 1e6:.2f}M "
        f"parameters -> {output_dir}"
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
