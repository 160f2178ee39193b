#!/usr/bin/env python
"""Finetune an hf-semseg (or transformers) segmentation model with transformers' Trainer, with mmseg's recipe (as
VWFormer's runs use it): random keep-ratio resize (ratio 0.5-2.0), random crop with cat_max_ratio 0.75, flip,
photometric distortion, padding to the crop after the normalisation (labels with the ignore index); AdamW without weight decay on norms, biases and position tables, the decode and auxiliary
heads at ``--head_lr_multiplier`` (10 in the demo recipe) times the learning rate; poly schedule with linear warm-up;
streaming mIoU evaluation. ``--optim`` / ``--optim_args`` choose another optimizer as in ``Trainer`` (``sgd``, ...),
over the same parameter groups.

With neither ``--do_train`` nor ``--do_eval`` it trains, saves the model, then evaluates it (the demo recipe's
command); ``--do_train`` alone trains and saves without the final evaluation; ``--do_eval`` alone evaluates the
``--model_name_or_path`` model without training it (``eval_results.json`` and the predictions are written, no model).
The evaluation during and after training is at the ``--scale`` resolution (images keep-ratio resized, label maps
nearest-resized with them), which is quick but not the papers' protocol: numbers comparable to the papers' come from
``examples/evaluate_semantic_segmentation.py --model OUTPUT_DIR``, which measures at the original label size.

    python examples/run_semantic_segmentation.py --output_dir outputs/semask-demo
    python examples/run_semantic_segmentation.py --variant semask-fpn-tiny-ade20k --dataset_name scene_parse_150 \
        --label_column annotation --crop_size 512 --output_dir out --push_to_hub

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
from functools import partial
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments, set_seed

import hf_semseg
from hf_semseg.hub import HubAccessError, check_hub_access
from hf_semseg.inference import model_padded_size
from hf_semseg.training import (
    EpochCallback,
    RunOptionError,
    SegmentationTrainer,
    StreamingMeanIoU,
    active_weight_bits,
    build_optimizer,
    check_checkpoint_weights,
    check_float16_device,
    check_not_negative,
    check_positive_steps,
    check_run_options,
    exit_on_user_error,
    json_metrics,
    pad_collate,
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
        default=None,
        metadata={
            "help": "keep-ratio scale (long short) of the training and of the evaluation after it (labels resized "
            "with the images; evaluate_semantic_segmentation.py measures at the label size); default: the "
            "variant's, else 224 160"
        },
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
    "dataloader_num_workers": 0, "dataloader_pin_memory": False, "optim": "adamw_torch",
}  # fmt: skip
"""The demo recipe: the parser's defaults (``--help`` shows them); an option given on the command line wins. The
optimizer is the papers' AdamW (``adamw_torch``; transformers' default is the fused kernel)."""


#: the help of the options choosing what a run does (:func:`run_phases`)
PHASE_HELP = {
    "do_train": "train and save the model (alone: no final evaluation); with neither option: train, then evaluate",
    "do_eval": "evaluate after training (alone: evaluate --model_name_or_path without training, nothing saved)",
}


class OneLineUsageParser(HfArgumentParser):
    """A usage error is one ``error:`` line and exit status 1, as every other user error (argparse: the usage and
    status 2)."""

    def error(self, message: str):
        self.exit(1, f"error: {message} (see --help)\n")


def build_parser() -> HfArgumentParser:
    parser = OneLineUsageParser(
        (ModelArguments, DataArguments, TrainingArguments), description=__doc__.split("\n\n")[0]
    )
    parser.set_defaults(**RECIPE_DEFAULTS, do_train=None, do_eval=None)  # None: not given (run_phases)
    for name, text in PHASE_HELP.items():
        parser._option_string_actions[f"--{name}"].help = text
    return parser


def parse_options(argv=None):
    """The three argument dataclasses; a value ``TrainingArguments`` itself refuses (``--logging_steps 0``, ...) is
    a :class:`RunOptionError` with its message (a ``ValueError`` traceback before)."""
    try:
        return build_parser().parse_args_into_dataclasses(argv)
    except ValueError as error:
        raise RunOptionError(" ".join(str(error).split())) from None


def run_phases(training_args) -> tuple[bool, bool]:
    """``(train, evaluate)``: transformers' example semantics of ``--do_train`` / ``--do_eval`` (an option not given
    is off; ``--eval_strategy`` other than ``no`` turns evaluation on, as ``TrainingArguments`` does), except that
    with neither option given the run trains and evaluates, as the demo recipe's command always did. Neither is a
    :class:`RunOptionError`."""
    do_train, do_eval = training_args.do_train, training_args.do_eval
    if do_train is None and do_eval is None:
        return True, True
    if do_eval is None:
        do_eval = training_args.eval_strategy != "no"
    if not (do_train or do_eval):
        raise RunOptionError("--do_train false / --do_eval false: nothing to do (give --do_train and/or --do_eval)")
    return bool(do_train), bool(do_eval)


#: the end rate of transformers' polynomial schedule when ``--lr_scheduler_kwargs`` sets none
POLYNOMIAL_LR_END = 1e-7


def check_trainer_options(model_args, training_args, do_train: bool) -> None:
    """Refuses, before any work, what the Trainer run cannot do as asked: float16 on the CPU (float32 silently),
    label smoothing (``Trainer``'s smoother is for token logits: a torch error here), a step count below 1 (a
    ``ZeroDivisionError``), a negative worker count or gradient norm, a learning rate at or below the polynomial
    schedule's end, once QAT at several widths with gradient checkpointing, and an evaluation only without a trained
    model or with ``--push_to_hub``."""
    if training_args.fp16:
        check_float16_device("--fp16", training_args.device, "--bf16")
    if training_args.label_smoothing_factor:
        raise RunOptionError(
            f"--label_smoothing_factor {training_args.label_smoothing_factor}: not defined for these segmentation "
            "losses (the model computes its own loss over the pixels); leave it at 0"
        )
    check_positive_steps(
        {
            "--gradient_accumulation_steps": training_args.gradient_accumulation_steps,
            "--logging_steps": training_args.logging_steps if training_args.logging_strategy == "steps" else None,
            "--save_steps": training_args.save_steps if training_args.save_strategy == "steps" else None,
            "--eval_steps": training_args.eval_steps if training_args.eval_strategy == "steps" else None,
        }
    )
    check_not_negative(
        {
            "--dataloader_num_workers": training_args.dataloader_num_workers,
            "--max_grad_norm": training_args.max_grad_norm,  # 0 disables clipping; a negative one reads as 0 here
        }
    )
    if (
        do_train
        and str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)) == "polynomial"
    ):
        # transformers' polynomial schedule refuses an end above the rate with a traceback after the model has loaded
        lr_end = (training_args.lr_scheduler_kwargs or {}).get("lr_end", POLYNOMIAL_LR_END)
        if 0 < training_args.learning_rate <= lr_end:  # a rate that is not positive is named as such below
            raise RunOptionError(
                f"--learning_rate {training_args.learning_rate}: the polynomial schedule decays to lr_end {lr_end}, "
                "so the rate must be above it (or set a lower lr_end in --lr_scheduler_kwargs)"
            )
    if not do_train and not model_args.model_name_or_path:
        raise RunOptionError(
            "--do_eval without --do_train evaluates a trained model: give it with --model_name_or_path"
        )
    if not do_train and training_args.push_to_hub:
        raise RunOptionError(
            "--push_to_hub pushes a trained model: it needs --do_train (or neither --do_train nor --do_eval)"
        )


def main(argv=None, callbacks=None) -> dict:
    """Trains, saves and evaluates (:func:`run_phases`); ``callbacks`` are extra ``TrainerCallback``s. Returns the
    evaluation metrics (the training metrics of a run without evaluation)."""
    model_args, data_args, training_args = parse_options(argv)
    do_train, do_eval = run_phases(training_args)
    training_args.do_train, training_args.do_eval = do_train, do_eval
    check_trainer_options(model_args, training_args, do_train)
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
    checkpoint = resolve_checkpoint(
        training_args.output_dir, training_args.resume_from_checkpoint, "checkpoint", marker="trainer_state.json"
    )
    set_seed(training_args.seed)  # the model's initialisation too, not only the training

    # an evaluation during training (--eval_strategy) needs the evaluation split too
    evaluates = do_eval or training_args.eval_strategy != "no"
    run = set_up_run(
        model_args, data_args, training_args.seed, training_args.device, evaluate_only=not do_train, evaluates=evaluates
    )
    model = run.model
    check_checkpoint_weights(model, checkpoint)

    optimizer = build_optimizer(model, training_args, model_args.layer_decay, model_args.head_lr_multiplier)
    trainer = SegmentationTrainer(
        model=model,
        processing_class=run.processor,
        args=training_args,
        train_dataset=run.train,
        eval_dataset=run.evaluation_with_transform,
        data_collator=partial(pad_collate, with_sizes=True),
        compute_metrics=StreamingMeanIoU(
            model.config.num_labels, model.config.id2label, padded_input_size=partial(model_padded_size, model)
        ),
        optimizers=(optimizer, None),
        callbacks=[EpochCallback(run.train_transform), *(callbacks or [])],
    )
    trainer.once_qat = run.once_qat
    metrics = {}
    if do_train:  # saved before the evaluation (transformers' order): a bad validation sample loses no training
        train_result = trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
        trainer.save_model()
        metrics = {**train_result.metrics, "train_steps": train_result.global_step}
        trainer.save_metrics("train", metrics)
    if do_eval:
        metrics = evaluate(trainer, run, data_args, training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub()
    return metrics


def evaluate(trainer, run, data_args, output_dir) -> dict:
    """The evaluation metrics of the trainer's model (at the ``--scale`` resolution), saved as ``eval_results.json``,
    and the prediction overlays of the first ``--num_predictions`` validation images."""
    metrics = trainer.evaluate()
    weight_bits = active_weight_bits(trainer.model)
    if weight_bits is not None:  # once QAT: the model as saved, at its widest width
        metrics["eval_weight_bits"] = weight_bits
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", json_metrics(metrics))
    if trainer.is_world_process_zero():
        write_predictions(
            trainer.model, run.evaluation, data_args.image_column, Path(output_dir) / "predictions",
            data_args.num_predictions, run.settings.scale,
        )  # fmt: skip
    return metrics


if __name__ == "__main__":
    with exit_on_user_error():
        main()
