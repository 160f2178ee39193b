#!/usr/bin/env python
"""Finetune an hf-semseg (or transformers) segmentation model with transformers' Trainer, with the recipe of the
papers: random keep-ratio resize (ratio 0.5-2.0), random crop with cat_max_ratio 0.75, flip, photometric distortion,
padding with 255; AdamW without weight decay on norms and position tables; poly schedule with linear warm-up;
streaming mIoU evaluation.

    python examples/run_semantic_segmentation.py --output_dir outputs/semask-demo
    python examples/run_semantic_segmentation.py --variant semask-fpn-tiny-ade20k --dataset_name scene_parse_150 \
        --do_reduce_labels --crop_size 512 --scale 2048 512 --output_dir out --push_to_hub

With no ``--dataset_name`` it trains on the generated demo dataset; with no ``--variant`` / ``--model_name_or_path`` a
small SeMask-Swin FPN. Any Trainer argument works (``--per_device_train_batch_size``, ``--bf16``, ...), and so does
``accelerate launch`` for multi-GPU DDP / FSDP / DeepSpeed.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSemanticSegmentation,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

import hf_semseg
from hf_semseg.demo_data import DEMO_CLASSES, colorize, demo_model_config
from hf_semseg.training import (
    StreamingMeanIoU,
    load_segmentation_dataset,
    make_transform,
    pad_collate,
    parameter_groups,
    with_sample_index,
)
from hf_semseg.transforms import SegmentationTrainTransform


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "saved model folder or Hub id"})
    variant: str | None = field(default=None, metadata={"help": f"a registered variant: {hf_semseg.list_variants()}"})
    trust_remote_code: bool = False
    layer_decay: float | None = field(default=None, metadata={"help": "layer-wise lr decay over backbone stages"})


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Hub id or local folder; none = demo dataset"})
    image_column: str = "image"
    label_column: str = "label"
    train_split: str = "train"
    eval_split: str = "validation"
    do_reduce_labels: bool = False
    scale: list[int] = field(default_factory=lambda: [224, 160], metadata={"help": "keep-ratio scale (long short)"})
    crop_size: int = 160
    cat_max_ratio: float = 0.75
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    num_predictions: int = field(default=4, metadata={"help": "validation images written as colour-coded PNGs"})


def build_model(model_args: ModelArguments, id2label: dict):
    label2id = {label: i for i, label in id2label.items()}
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            id2label=id2label,
            label2id=label2id,
            trust_remote_code=model_args.trust_remote_code,
        )
        return AutoModelForSemanticSegmentation.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            ignore_mismatched_sizes=True,
            trust_remote_code=model_args.trust_remote_code,
        )
    if model_args.variant:
        config = hf_semseg.variant_config(model_args.variant)
        config.id2label, config.label2id = id2label, label2id
        return AutoModelForSemanticSegmentation.from_config(config)
    return hf_semseg.SeMaskSwinForSemanticSegmentation(demo_model_config())


def write_predictions(model, dataset, image_column, output_dir: Path, count: int, scale) -> None:
    """Colour-coded predictions and overlays of the first ``count`` evaluation images."""
    from PIL import Image

    from hf_semseg.training import normalise
    from hf_semseg.transforms import keep_ratio_size, resize_pair

    output_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    for index in range(min(count, len(dataset))):
        image = dataset[index][image_column].convert("RGB")
        array = np.asarray(image)
        resized, _ = resize_pair(array, np.zeros(array.shape[:2], np.int64), keep_ratio_size(*array.shape[:2], *scale))
        with torch.no_grad():
            logits = model(pixel_values=normalise(resized)[None].to(model.device)).logits
        logits = torch.nn.functional.interpolate(logits, size=array.shape[:2], mode="bilinear", align_corners=False)
        prediction = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        colorize(prediction).save(output_dir / f"prediction_{index}.png")
        Image.blend(image, colorize(prediction), alpha=0.5).save(output_dir / f"overlay_{index}.png")


def main(argv=None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    training_args.remove_unused_columns = False
    training_args.batch_eval_metrics = True
    set_seed(training_args.seed)  # the model's initialisation too, not only the training

    dataset = load_segmentation_dataset(data_args.dataset_name)
    train, evaluation = dataset[data_args.train_split], dataset[data_args.eval_split]
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    train, evaluation = with_sample_index(train), with_sample_index(evaluation)
    if data_args.dataset_name is None:
        id2label = dict(enumerate(DEMO_CLASSES))
    elif model_args.variant:
        id2label = hf_semseg.variant_config(model_args.variant).id2label
    else:
        id2label = AutoConfig.from_pretrained(
            model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
        ).id2label
    model = build_model(model_args, id2label)
    num_labels = model.config.num_labels

    augmentation = SegmentationTrainTransform(
        scale=tuple(data_args.scale), crop_size=(data_args.crop_size,) * 2, cat_max_ratio=data_args.cat_max_ratio
    )
    columns = (data_args.image_column, data_args.label_column, num_labels, data_args.do_reduce_labels)
    train.set_transform(make_transform(*columns, augmentation, seed=training_args.seed))
    eval_transform = make_transform(*columns, None, eval_scale=tuple(data_args.scale))
    evaluation_with_transform = evaluation.with_transform(eval_transform)

    optimizer = torch.optim.AdamW(
        parameter_groups(model, training_args.weight_decay, model_args.layer_decay, training_args.learning_rate),
        lr=training_args.learning_rate,
        betas=(training_args.adam_beta1, training_args.adam_beta2),
    )
    # saved next to the model, so that AutoImageProcessor loads the evaluation pre-processing with it
    processor = hf_semseg.SeMaskImageProcessor(
        size={"longest_edge": max(data_args.scale), "shortest_edge": min(data_args.scale)},
        do_reduce_labels=data_args.do_reduce_labels,
    )
    trainer = Trainer(
        model=model,
        processing_class=processor,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation_with_transform,
        data_collator=pad_collate,
        compute_metrics=StreamingMeanIoU(num_labels, model.config.id2label),
        optimizers=(optimizer, None),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.save_model()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        write_predictions(
            trainer.model, evaluation, data_args.image_column, Path(training_args.output_dir) / "predictions",
            data_args.num_predictions, tuple(data_args.scale),
        )  # fmt: skip
    if training_args.push_to_hub:
        trainer.push_to_hub()
    return metrics


if __name__ == "__main__":
    # the demo recipe; any of these given on the command line wins (argparse keeps the last value)
    defaults = [
        "--learning_rate", "1e-3", "--num_train_epochs", "6", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8", "--lr_scheduler_type", "polynomial", "--warmup_steps", "5",
        "--weight_decay", "0.01", "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "8",
        "--report_to", "none", "--dataloader_num_workers", "0", "--dataloader_pin_memory", "false",
    ]  # fmt: skip
    main(defaults + sys.argv[1:])
