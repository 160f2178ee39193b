#!/usr/bin/env python
"""Finetune an hf-semseg (or transformers) segmentation model with transformers' Trainer, with the recipe of the
papers: random keep-ratio resize (ratio 0.5-2.0), random crop with cat_max_ratio 0.75, flip, photometric distortion,
padding with the ignore index; AdamW without weight decay on norms and position tables, the decode and auxiliary
heads at ``--head_lr_multiplier`` (10 in the demo recipe) times the learning rate; poly schedule with linear warm-up;
streaming mIoU evaluation.

    python examples/run_semantic_segmentation.py --output_dir outputs/semask-demo
    python examples/run_semantic_segmentation.py --variant semask-fpn-tiny-ade20k --dataset_name scene_parse_150 \
        --crop_size 512 --output_dir out --push_to_hub

With no ``--dataset_name`` it trains on the generated demo dataset; with no ``--variant`` / ``--model_name_or_path`` a
small SeMask-Swin FPN. With ``--variant``, its test scale and label reduction (``hf_semseg.variants``) are the
defaults of ``--scale`` / ``--do_reduce_labels`` and the saved image processor is its family's (SeMask Mask2Former:
``SeMaskMask2FormerImageProcessor``); an option given on the command line wins. Any Trainer argument works
(``--per_device_train_batch_size``, ``--bf16``, ``--save_strategy steps --save_steps N``,
``--resume_from_checkpoint PATH|latest``, ...), ``--weight_bits 8 4 2`` trains any-precision weights once for all
those widths (once QAT; the saved folder holds 8-bit codes), and so does ``accelerate launch`` for
multi-GPU DDP / FSDP / DeepSpeed (``examples/accelerate_configs/``; ``--sync_batchnorm`` for SyncBN). Every sample's
augmentation is a function of (seed, epoch, sample index), so resumed and multi-process runs see the augmentations
of one uninterrupted process. Checkpoints are complete or absent (written to a hidden staging folder, then renamed), and
a run resumed from the checkpoint of its last step trains no further step (``SegmentationTrainer``). The demo
recipe's values are the defaults (``--help`` lists them).
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments, set_seed

import hf_semseg
from hf_semseg.hub import HubAccessError, check_hub_access
from hf_semseg.inference import model_size_divisibility
from hf_semseg.training import (
    EpochCallback,
    SegmentationTrainer,
    StreamingMeanIoU,
    check_run_options,
    exit_on_user_error,
    pad_collate,
    parameter_groups,
    resolve_checkpoint,
    set_up_run,
    write_predictions,
)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "saved model folder or Hub id"})
    variant: str | None = field(default=None, metadata={"help": f"a registered variant: {hf_semseg.list_variants()}"})
    trust_remote_code: bool = False
    layer_decay: float | None = field(default=None, metadata={"help": "layer-wise lr decay over backbone stages"})
    head_lr_multiplier: float = field(
        default=1.0, metadata={"help": "learning rate of the decode / auxiliary heads relative to the backbone's"}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "JSON object of config attributes, e.g. '{\"drop_path_rate\": 0.0}'"}
    )
    sync_batchnorm: bool = field(
        default=False, metadata={"help": "batch statistics over all processes (mmseg SyncBN), also on CPU"}
    )
    weight_bits: list[int] | None = field(
        default=None,
        metadata={"help": "once QAT of any-precision weights at these widths, e.g. 8 4 2 (saves 8-bit codes)"},
    )
    weight_bits_loss_weights: list[float] | None = field(
        default=None, metadata={"help": "weight of each --weight_bits width's loss (default: 1 each)"}
    )
    weight_bits_distillation: float = field(
        default=0.0, metadata={"help": "weight of the narrower widths' KL divergence to the widest width's output"}
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Hub id or local folder; none = demo dataset"})
    image_column: str = "image"
    label_column: str = "label"
    train_split: str = "train"
    eval_split: str = "validation"
    do_reduce_labels: bool | None = field(
        default=None,
        # a bare --do_reduce_labels is true; "--do_reduce_labels false" overrides a variant's reduction
        metadata={"help": "reduce label 0 (default: the variant's, else no)", "nargs": "?", "const": True},
    )
    scale: list[int] | None = field(
        default=None, metadata={"help": "keep-ratio scale (long short); default: the variant's, else 224 160"}
    )
    crop_size: int = 160
    cat_max_ratio: float = 0.75
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    num_predictions: int = field(default=4, metadata={"help": "validation images written as colour-coded PNGs"})


RECIPE_DEFAULTS = {
    "learning_rate": 1e-3, "head_lr_multiplier": 10.0, "num_train_epochs": 6.0, "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8, "lr_scheduler_type": "polynomial", "warmup_steps": 5, "weight_decay": 0.01,
    "eval_strategy": "no", "save_strategy": "no", "logging_steps": 8, "report_to": "none",
    "dataloader_num_workers": 0, "dataloader_pin_memory": False,
}  # fmt: skip
"""The demo recipe: the parser's defaults (``--help`` shows them); an option given on the command line wins."""


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    parser.set_defaults(**RECIPE_DEFAULTS)
    return parser


def main(argv=None, callbacks=None) -> dict:
    """Trains and evaluates; ``callbacks`` are extra ``TrainerCallback``s. Returns the evaluation metrics."""
    model_args, data_args, training_args = build_parser().parse_args_into_dataclasses(argv)
    if training_args.push_to_hub:  # before any work: a run that cannot push fails now, not after training
        try:
            repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
            training_args.hub_token = check_hub_access(repo_id, training_args.hub_token, task="train")
        except HubAccessError as error:
            raise SystemExit(f"error: {error}") from None
    check_run_options(
        training_args.output_dir,
        training_args.learning_rate,
        training_args.per_device_train_batch_size,
        training_args.per_device_eval_batch_size,
        training_args.num_train_epochs,
        training_args.max_steps,
    )
    training_args.remove_unused_columns = False
    training_args.batch_eval_metrics = True
    # "latest": the output folder's last checkpoint (complete: SegmentationTrainer publishes whole checkpoints only)
    checkpoint = resolve_checkpoint(training_args.output_dir, training_args.resume_from_checkpoint, "checkpoint")
    set_seed(training_args.seed)  # the model's initialisation too, not only the training

    run = set_up_run(model_args, data_args, training_args.seed, training_args.device)
    model = run.model

    optimizer = torch.optim.AdamW(
        parameter_groups(
            model,
            training_args.weight_decay,
            model_args.layer_decay,
            training_args.learning_rate,
            model_args.head_lr_multiplier,
        ),
        lr=training_args.learning_rate,
        betas=(training_args.adam_beta1, training_args.adam_beta2),
        eps=training_args.adam_epsilon,
    )
    trainer = SegmentationTrainer(
        model=model,
        processing_class=run.processor,
        args=training_args,
        train_dataset=run.train,
        eval_dataset=run.evaluation_with_transform,
        data_collator=pad_collate,
        compute_metrics=StreamingMeanIoU(
            model.config.num_labels, model.config.id2label, size_divisibility=model_size_divisibility(model)
        ),
        optimizers=(optimizer, None),
        callbacks=[EpochCallback(run.train_transform), *(callbacks or [])],
    )
    trainer.once_qat = run.once_qat
    train_result = trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    trainer.save_metrics("train", {**train_result.metrics, "train_steps": train_result.global_step})
    metrics = trainer.evaluate()
    trainer.save_model()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        write_predictions(
            trainer.model, run.evaluation, data_args.image_column, Path(training_args.output_dir) / "predictions",
            data_args.num_predictions, run.settings.scale,
        )  # fmt: skip
    if training_args.push_to_hub:
        trainer.push_to_hub()
    return metrics


if __name__ == "__main__":
    with exit_on_user_error():
        main()
