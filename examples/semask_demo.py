#!/usr/bin/env python
"""hf-semseg demo: build a small SeMask-Swin FPN model, fit it briefly to a generated scene, segment the scene and
write colour-coded prediction PNGs. Runs on a CPU in well under a minute, offline.

    python examples/semask_demo.py [--output_dir outputs/demo] [--steps 30]

Writes ``image.png`` (the generated scene), ``ground_truth.png``, ``prediction.png`` (colour-coded classes),
``overlay.png`` (prediction blended over the image) and ``model/`` (a saved model folder that
``AutoModelForSemanticSegmentation.from_pretrained`` loads, with or without hf-semseg installed).
"""

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import hf_semseg
from hf_semseg.conversion.common import _ArgumentParser as OneLineUsageParser
from hf_semseg.demo_data import DEMO_CLASSES as CLASSES
from hf_semseg.demo_data import colorize, demo_model_config, generate_scene


def main(argv=None) -> None:
    parser = OneLineUsageParser(description=__doc__.split("\n\n")[0])  # usage errors: one line, status 1
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    image, labels = generate_scene()
    image.save(output_dir / "image.png")
    colorize(labels).save(output_dir / "ground_truth.png")

    config = demo_model_config(drop_path_rate=0.0)
    model = hf_semseg.SeMaskSwinForSemanticSegmentation(config)
    processor = hf_semseg.KeepRatioImageProcessor(size={"longest_edge": 224, "shortest_edge": 160})
    print(f"SeMask-Swin FPN with {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")

    inputs = processor(image, segmentation_maps=Image.fromarray(labels), return_tensors="pt")
    # the scene and its mirror image as a batch of two
    pixel_values = torch.cat([inputs["pixel_values"], inputs["pixel_values"].flip(-1)])
    targets = torch.cat([inputs["labels"], inputs["labels"].flip(-1)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    model.train()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = model(pixel_values, labels=targets).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 20 == 0 or step == 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    print(f"fitted in {time.perf_counter() - start:.1f} s")

    model.eval()
    model.save_pretrained(output_dir / "model")
    processor.save_pretrained(output_dir / "model")
    # reload through the Auto classes, as a user of the saved folder would
    model = AutoModelForSemanticSegmentation.from_pretrained(output_dir / "model").eval()
    processor = AutoImageProcessor.from_pretrained(output_dir / "model")
    with torch.no_grad():
        outputs = model(**processor(image, return_tensors="pt"))
    prediction = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0].numpy()
    prediction = prediction.astype(np.uint8)

    colorize(prediction).save(output_dir / "prediction.png")
    overlay = Image.blend(image, colorize(prediction), alpha=0.5)
    overlay.save(output_dir / "overlay.png")
    accuracy = (prediction == labels).mean()
    ious = [
        ((prediction == c) & (labels == c)).sum() / max(((prediction == c) | (labels == c)).sum(), 1)
        for c in range(len(CLASSES))
    ]
    print(f"pixel accuracy {accuracy:.3f}, mIoU {np.mean(ious):.3f}")
    print(f"wrote {output_dir}/image.png, ground_truth.png, prediction.png, overlay.png and model/")


if __name__ == "__main__":
    main()
