#!/usr/bin/env python
"""Finetune an hf-semseg (or transformers) segmentation model with an explicit Accelerate loop: the recipe of
``run_semantic_segmentation.py`` (random keep-ratio resize, crop with cat_max_ratio, flip, photometric distortion,
padding to the crop after the normalisation; AdamW without weight decay on norms, biases and position tables, the heads at
``--head_lr_multiplier`` times the learning rate; poly schedule with linear warm-up) with gradient accumulation,
mixed precision, checkpoints every N steps and resumption, mIoU summed over all processes.

    python examples/run_semantic_segmentation_no_trainer.py --output_dir outputs/semask-demo-accelerate
    accelerate launch --config_file examples/accelerate_configs/ddp.yaml \
        examples/run_semantic_segmentation_no_trainer.py --variant semask-fpn-tiny-ade20k --dataset_name DATASET \
        --crop_size 512 --sync_batchnorm --checkpointing_steps 1000 --output_dir out

With no ``--dataset_name`` it trains on the generated demo dataset, with no ``--variant`` / ``--model_name_or_path``
a small SeMask-Swin FPN; the defaults are the demo recipe of the Trainer script. With ``--variant``, its test scale
and label reduction are the defaults of ``--scale`` / ``--do_reduce_labels`` and the saved image processor is its
family's; an option given on the command line wins. ``--resume_from_checkpoint latest``
continues from the last ``step_N`` folder of ``--output_dir``. A checkpoint is written to a hidden staging folder and
then renamed, so a ``step_N`` folder is always complete, also when the run was killed while saving; a resumed run ends
with the weights of an uninterrupted one (every sample's augmentation is a function of seed, epoch and sample index;
the RNG states are restored), also from the checkpoint of its last step. ``--max_steps`` is the step limit, as in the
Trainer script. The optimizer is always the recipe's AdamW (``--adam_beta1/2``, ``--adam_epsilon``), as in
transformers' no-trainer examples; the Trainer script takes ``--optim``. The model is saved before the final
evaluation, which is at the ``--scale`` resolution (label maps nearest-resized with the images): numbers comparable to
the papers' come from ``examples/evaluate_semantic_segmentation.py --model OUTPUT_DIR`` (original label size).
"""

import argparse
import json
import math
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_polynomial_decay_schedule_with_warmup

import hf_semseg
from hf_semseg.conversion.common import _ArgumentParser as OneLineUsageParser
from hf_semseg.hub import HubAccessError, check_hub_access
from hf_semseg.metrics import SegmentationMetrics
from hf_semseg.training import (
    OPTIONAL_FLAG,
    STAGING_FOLDER,
    UNPADDED_SIZES,
    MasterWeights,
    RunOptionError,
    active_weight_bits,
    check_checkpoint_weights,
    check_float16_device,
    check_not_negative,
    check_positive_steps,
    check_run_options,
    class_maps,
    exit_on_user_error,
    json_metrics,
    pad_collate,
    parameter_groups,
    publish_checkpoint,
    resolve_checkpoint,
    same_size_groups,
    set_up_run,
    summary_metrics,
    update_unpadded,
    write_predictions,
)


def parse_args(argv=None) -> argparse.Namespace:
    # a usage error is one `error:` line and exit status 1, as every other user error
    parser = OneLineUsageParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", default=None, help="saved model folder or Hub id")
    model.add_argument("--variant", default=None, help=f"a registered variant: {hf_semseg.list_variants()}")
    model.add_argument("--trust_remote_code", action="store_true")
    model.add_argument("--config_overrides", default=None, help="JSON object, e.g. '{\"drop_path_rate\": 0.0}'")
    model.add_argument("--sync_batchnorm", action="store_true", help="batch statistics over all processes (SyncBN)")
    model.add_argument(
        "--weight_bits", type=int, nargs="+", default=None, help="once QAT of any-precision weights, e.g. 8 4 2"
    )
    model.add_argument(
        "--weight_bits_loss_weights", type=float, nargs="+", default=None, help="each width's loss weight (1 each)"
    )
    model.add_argument(
        "--weight_bits_distillation", type=float, default=0.0, help="narrower widths' KL weight to the widest's output"
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None, help="Hub id or local folder; none = the demo dataset")
    data.add_argument("--image_column", default="image")
    data.add_argument("--label_column", default="label")
    data.add_argument("--train_split", default="train")
    data.add_argument("--eval_split", default="validation")
    data.add_argument("--do_reduce_labels", **OPTIONAL_FLAG, help="reduce label 0 (default: the variant's, else no)")
    data.add_argument(
        "--scale",
        type=int,
        nargs=2,
        default=None,
        help="keep-ratio scale (long short) of the training and of the final evaluation; default: the variant's, "
        "else 224 160",
    )
    data.add_argument("--crop_size", type=int, default=160)
    data.add_argument("--cat_max_ratio", type=float, default=0.75)
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--max_eval_samples", type=int, default=None)
    data.add_argument("--num_predictions", type=int, default=4, help="validation images written as PNGs")
    data.add_argument("--dataloader_num_workers", type=int, default=0)
    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", required=True)
    train.add_argument("--seed", type=int, default=42, help="initialisation, shuffling and augmentation")
    train.add_argument("--per_device_train_batch_size", type=int, default=8, help="images per process and step")
    train.add_argument("--per_device_eval_batch_size", type=int, default=8, help="images per process")
    train.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW learning rate of the backbone")
    train.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay (none on norms, biases)")
    train.add_argument("--layer_decay", type=float, default=None, help="layer-wise lr decay over backbone stages")
    train.add_argument(
        "--head_lr_multiplier", type=float, default=10.0, help="learning rate of the heads relative to the backbone's"
    )
    train.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1")
    train.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2")
    train.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon")
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping")
    train.add_argument("--num_train_epochs", type=int, default=6, help="epochs (unless --max_steps)")
    train.add_argument("--max_steps", type=int, default=-1, help="optimizer steps; if > 0, overrides the epochs")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1, help="batches per optimizer step")
    train.add_argument("--warmup_steps", type=int, default=5, help="linear warm-up (optimizer steps)")
    train.add_argument("--poly_power", type=float, default=1.0, help="power of the poly decay")
    train.add_argument("--lr_end", type=float, default=1e-7, help="learning rate at the end of the poly decay")
    train.add_argument("--use_cpu", action="store_true", help="train on CPUs (with several processes: DDP on gloo)")
    train.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None, help="default: accelerate's")
    train.add_argument("--logging_steps", type=int, default=8, help="log the mean loss every N steps")
    train.add_argument("--checkpointing_steps", default=None, help='save a step_N state every N steps, or "epoch"')
    train.add_argument("--resume_from_checkpoint", default=None, help='a step_N folder, or "latest" in output_dir')
    hub = parser.add_argument_group("hub")
    hub.add_argument("--push_to_hub", action="store_true")
    hub.add_argument("--hub_model_id", default=None, help="default: the output folder's name")
    hub.add_argument("--hub_token", default=None)
    args = parser.parse_args(argv)
    if args.checkpointing_steps not in (None, "epoch") and not str(args.checkpointing_steps).isdigit():
        parser.error(f'--checkpointing_steps must be a number of steps or "epoch", got {args.checkpointing_steps!r}')
    return args


class Progress:
    """Optimizer steps done; saved and restored with the accelerator state (``register_for_checkpointing``)."""

    def __init__(self):
        self.completed_steps = 0

    def state_dict(self) -> dict:
        return {"completed_steps": self.completed_steps}

    def load_state_dict(self, state: dict) -> None:
        self.completed_steps = int(state["completed_steps"])


def save_checkpoint(accelerator, output_dir: Path, step: int) -> None:
    """``accelerator.save_state`` into the staging folder, then published as ``step_N`` with one rename: a run killed
    while saving leaves no ``step_N`` folder, so ``latest`` is always a complete checkpoint."""
    import shutil

    staging = output_dir / STAGING_FOLDER
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging / f"step_{step}"))
    accelerator.wait_for_everyone()  # every process has written its part (RNG states)
    if accelerator.is_main_process:
        publish_checkpoint(staging / f"step_{step}", output_dir / f"step_{step}")
    accelerator.wait_for_everyone()


@torch.no_grad()
def evaluate(accelerator, model, dataset, batch_size: int, num_labels: int) -> dict:
    """mIoU of ``model`` on ``dataset``: each process evaluates its shard (images of any size, each at its own size;
    nothing gathered but the confusion matrices, which are summed). With several processes every process runs
    ``batch_size`` forward passes per round, as many rounds as the one with the most batches (repeating an image, not
    counted), since a sharded (FSDP) forward is a collective operation."""
    shard = dataset.shard(num_shards=accelerator.num_processes, index=accelerator.process_index, contiguous=True)
    collate = partial(pad_collate, with_sizes=True)
    loader = DataLoader(shard, batch_size=batch_size, collate_fn=collate)
    rounds = int(accelerator.gather(torch.tensor([len(loader)], device=accelerator.device)).max())
    spare = collate([dataset[0]])  # for a process whose shard is empty
    was_training = model.training
    model.eval()
    metric = SegmentationMetrics(num_labels)
    unwrapped = accelerator.unwrap_model(model)
    single_process = accelerator.num_processes == 1
    batches = iter(loader)
    for _ in tqdm(range(rounds), desc="evaluation", disable=not accelerator.is_local_main_process):
        batch = next(batches, None)
        # each image size alone, as mmseg tests (the batch's zero padding changed what the model saw); with several
        # processes each image alone and batch_size forwards per round, since a sharded (FSDP) forward is collective
        groups = [] if batch is None else same_size_groups(batch[UNPADDED_SIZES], single_process)
        for (height, width), indices in groups:
            pixel_values = batch["pixel_values"][indices, :, :height, :width].to(accelerator.device)
            outputs = model(pixel_values=pixel_values)
            query_outputs = (outputs.get("class_queries_logits"), outputs.get("masks_queries_logits"))
            maps = class_maps(unwrapped, outputs.logits, (height, width), *query_outputs).cpu()
            update_unpadded(metric, maps, batch["labels"][indices, :height, :width])
        for _ in range(0 if single_process else batch_size - len(groups)):
            model(pixel_values=spare["pixel_values"].to(accelerator.device))
    # the counts summed over the processes, on the accelerator's device (NCCL needs it)
    metric.reduce(lambda counts: accelerator.reduce(counts.to(accelerator.device), reduction="sum").cpu())
    model.train(was_training)
    return metric.compute()


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.push_to_hub:  # before any work: a run that cannot push fails now, not after training (one error line)
        try:
            repo_id = args.hub_model_id or Path(args.output_dir).name
            args.hub_token = check_hub_access(repo_id, args.hub_token, task="train")
        except HubAccessError as error:
            raise SystemExit(f"error: {error}") from None
    check_run_options(
        args.output_dir,
        args.learning_rate,
        args.per_device_train_batch_size,
        args.per_device_eval_batch_size,
        args.num_train_epochs,
        args.max_steps,
    )
    check_positive_steps(
        {
            "--gradient_accumulation_steps": args.gradient_accumulation_steps,
            "--logging_steps": args.logging_steps,
            "--checkpointing_steps": None
            if args.checkpointing_steps in (None, "epoch")
            else int(args.checkpointing_steps),
        }
    )
    check_not_negative(
        {
            "--max_grad_norm": args.max_grad_norm,
            "--warmup_steps": args.warmup_steps,
            "--lr_end": args.lr_end,
            "--dataloader_num_workers": args.dataloader_num_workers,
        }
    )
    if not args.lr_end < args.learning_rate:  # transformers' schedule refuses it after the model has loaded
        raise RunOptionError(
            f"--lr_end {args.lr_end}: the poly decay ends below the learning rate, expected less than "
            f"--learning_rate {args.learning_rate}"
        )
    # before any work; every step_N checkpoint holds the RNG state of process 0
    checkpoint = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint, "step", "_", "random_states_0.pkl")
    accelerator = Accelerator(
        cpu=args.use_cpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        # the shuffling is seeded by --seed on every process, whatever each process's torch seed
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    if accelerator.mixed_precision == "fp16":  # --mixed_precision fp16 or accelerate's configuration
        check_float16_device("--mixed_precision fp16", accelerator.device, "--mixed_precision bf16")
    set_seed(args.seed)  # the same initial weights on every process

    run = set_up_run(args, args, args.seed, accelerator.device, accelerator.main_process_first)
    check_checkpoint_weights(run.model, checkpoint)
    # made once the model and the data have loaded: a run that ends on a bad model or dataset leaves no folder
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    model, train, evaluation = run.model, run.train, run.evaluation
    num_labels = model.config.num_labels

    train_loader = DataLoader(
        train,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        collate_fn=pad_collate,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),  # draws of the loader leave the global torch RNG alone
    )
    optimizer = torch.optim.AdamW(
        parameter_groups(model, args.weight_decay, args.layer_decay, args.learning_rate, args.head_lr_multiplier),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)

    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    # the batches of each epoch's last window where it is shorter than the others: their loss is averaged over the
    # window (Trainer's and mmcv's accumulation), where accelerate divides every batch's by the full count
    short_window = len(train_loader) % args.gradient_accumulation_steps
    max_train_steps = args.max_steps if args.max_steps > 0 else args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    # stepped once per optimizer step, by hand: the schedule is in optimizer steps for any number of processes
    scheduler = get_polynomial_decay_schedule_with_warmup(
        optimizer, args.warmup_steps, max_train_steps, lr_end=args.lr_end, power=args.poly_power
    )
    progress = Progress()
    accelerator.register_for_checkpointing(scheduler, progress)
    if run.once_qat is not None:  # the float master weights below the saved 8-bit codes: an exact resume
        accelerator.register_for_checkpointing(MasterWeights(accelerator.unwrap_model(model)))
    # dropout and drop-path draw differently on each process (after the identical initialisation)
    set_seed(args.seed, device_specific=True)

    if checkpoint is not None:
        accelerator.print(f"resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))  # model, optimizer, scheduler, progress, RNG states
    start_epoch, done_in_epoch = divmod(progress.completed_steps, steps_per_epoch)

    accelerator.print(
        f"{len(train)} training samples, {accelerator.num_processes} processes x {args.per_device_train_batch_size} "
        f"x {args.gradient_accumulation_steps} accumulation; {max_train_steps} optimizer steps"
    )
    bar = tqdm(total=max_train_steps, initial=progress.completed_steps, disable=not accelerator.is_local_main_process)
    logged_loss, logged_batches = torch.zeros((), device=accelerator.device), 0
    model.train()
    # a checkpoint of the last step (mid-epoch too) leaves nothing to train
    for epoch in range(start_epoch, num_epochs if progress.completed_steps < max_train_steps else start_epoch):
        run.train_transform.set_epoch(epoch)  # before the loader starts (its workers copy the transform)
        train_loader.set_epoch(epoch)  # the shuffling of this epoch
        loader, first_batch = train_loader, 0
        if epoch == start_epoch and done_in_epoch:
            first_batch = done_in_epoch * args.gradient_accumulation_steps
            loader = accelerator.skip_first_batches(train_loader, first_batch)
        for batch_index, batch in enumerate(loader, start=first_batch):
            with accelerator.accumulate(model):
                if run.once_qat is None:
                    loss = model(**batch).loss
                else:  # every width inside one call, before one backward pass (DDP sees one forward)
                    loss, _ = run.once_qat.loss(model, accelerator.unwrap_model(model), batch)
                if short_window and batch_index >= len(train_loader) - short_window:
                    accelerator.backward(loss * (args.gradient_accumulation_steps / short_window))
                else:
                    accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            logged_loss += loss.detach().float()
            logged_batches += 1
            if not accelerator.sync_gradients:
                continue
            learning_rate = scheduler.get_last_lr()[0]  # the rate of this step, as Trainer logs it
            scheduler.step()
            progress.completed_steps += 1
            bar.update(1)
            step = progress.completed_steps
            if step % args.logging_steps == 0 or step == max_train_steps:
                mean_loss = accelerator.reduce(logged_loss, reduction="mean").item() / logged_batches
                epoch_done = round(step / steps_per_epoch, 4)
                record = {
                    "step": step,
                    "epoch": epoch_done,
                    "loss": round(mean_loss, 6),
                    "learning_rate": learning_rate,
                }
                accelerator.print(json.dumps(record))
                logged_loss.zero_()
                logged_batches = 0
            if args.checkpointing_steps not in (None, "epoch") and step % int(args.checkpointing_steps) == 0:
                save_checkpoint(accelerator, output_dir, step)
            if step >= max_train_steps:
                break
        if args.checkpointing_steps == "epoch":
            save_checkpoint(accelerator, output_dir, progress.completed_steps)
        if progress.completed_steps >= max_train_steps:
            break
    bar.close()

    # saved before the evaluation (transformers' order): a bad validation sample loses no training
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(
        output_dir,
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
        state_dict=accelerator.get_state_dict(model),  # gathered from the shards under FSDP / DeepSpeed
    )
    if accelerator.is_main_process:
        run.processor.save_pretrained(output_dir)

    result = evaluate(accelerator, model, run.evaluation_with_transform, args.per_device_eval_batch_size, num_labels)
    metrics = {f"eval_{key}": value for key, value in summary_metrics(result, run.model.config.id2label).items()}
    weight_bits = active_weight_bits(unwrapped)
    if weight_bits is not None:  # once QAT: the model as saved, at its widest width
        metrics["eval_weight_bits"] = weight_bits
    metrics["epoch"] = progress.completed_steps / steps_per_epoch
    accelerator.print(json.dumps(metrics))
    if accelerator.is_main_process:
        (output_dir / "eval_results.json").write_text(json.dumps(json_metrics(metrics), indent=2))
        write_predictions(
            unwrapped,
            evaluation,
            args.image_column,
            output_dir / "predictions",
            args.num_predictions,
            run.settings.scale,
        )
        if args.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=args.hub_token)
            repo_id = api.create_repo(args.hub_model_id or output_dir.name, exist_ok=True).repo_id
            api.upload_folder(
                repo_id=repo_id,
                folder_path=str(output_dir),
                ignore_patterns=["step_*", "step_*/**", f"{STAGING_FOLDER}/**"],
                commit_message="End of training",
            )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    with exit_on_user_error():
        main()
