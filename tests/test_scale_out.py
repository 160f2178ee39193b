"""Scale-out and resilience of the finetuning scripts (issue 5, item 7), on CPUs:

* two processes (DDP on gloo, ``accelerate launch``) reach the result of one process with the same global batch;
* the Trainer and the Accelerate scripts implement the same recipe (the same weights);
* a run killed after a checkpoint and resumed ends with the weights of an uninterrupted run;
* the example Accelerate configs parse with accelerate's own config classes;
* the demo recipe learns.

Every run trains a tiny SeMask-Swin FPN for a few steps on the demo data. BatchNorm: one process normalises a batch
of 8 with the statistics of the 8 images, two processes of 4 each with their own 4 unless ``--sync_batchnorm`` sums the
statistics across processes; with it the two runs differ only by float summation order.
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_semseg.training import STAGING_FOLDER

from conftest import REPO_ROOT


EXAMPLES = REPO_ROOT / "examples"
TRAINER_SCRIPT = EXAMPLES / "run_semantic_segmentation.py"
NO_TRAINER_SCRIPT = EXAMPLES / "run_semantic_segmentation_no_trainer.py"
TINY = {"embed_dim": 16, "depths": [1, 1, 1, 1], "decoder_hidden_size": 16}
NO_DROPOUT = {"drop_path_rate": 0.0, "classifier_dropout_prob": 0.0, "semantic_dropout_prob": 0.0}
# The runs that must learn: from the original init (classifier normal(0.01)) a model first learns the class frequencies
# (it predicts background everywhere: mIoU 0.21 after the 6 steps of the runs compared below, with every learning rate
# tried, 1e-3 to 1e-2 with the heads at 1x to 100x) and the small classes only after some 15 steps, sooner with a wider
# decoder: 12 epochs of 2 steps, 64 channels
LEARNING_EPOCHS = ["--num_train_epochs", "12"]
LEARNER = TINY | {"decoder_hidden_size": 64}
# The runs compared with each other train the heads at the backbone's learning rate: at the demo recipe's 10x, Adam
# turns the float summation-order differences of 2 processes into weight differences of up to 1.4e-3 after 6 steps
# (measured; 9.5e-7 at 1x), past what the comparisons allow
HEADS_AT_BACKBONE_LR = ["--head_lr_multiplier", "1"]
# 16 training images at 64x64 crops (never padded: the smallest random resize of the 160x224 demo images is 80x112),
# 5 validation images (uneven shards over 2 processes)
COMMON = [
    "--max_train_samples", "16", "--max_eval_samples", "5", "--crop_size", "64", "--scale", "112", "80",
    "--warmup_steps", "1", "--logging_steps", "1", "--num_predictions", "0", "--seed", "7",
]  # fmt: skip

# Kill a run (os._exit: no clean-up, like a lost machine) at step KILL_AT_STEP: "after_save" right after its
# checkpoint was published; "mid_save" while its checkpoint is being written (the model written, the optimizer not);
# "after_training" when training has ended (its last checkpoint published; the Trainer script's final model not yet
# saved, the Accelerate script's saved, as it is before the final evaluation).
TRAINER_KILLER = """
import os, sys
sys.path.insert(0, {examples!r})
import transformers
import run_semantic_segmentation as script
from transformers import TrainerCallback

STEP, MOMENT = {step}, {moment!r}

class Kill(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if MOMENT == "after_save" and state.global_step == STEP:
            os._exit(17)

    def on_train_end(self, args, state, control, **kwargs):
        if MOMENT == "after_training":
            os._exit(17)

save_optimizer = transformers.Trainer._save_optimizer_and_scheduler

def save_optimizer_or_exit(self, output_dir):
    if MOMENT == "mid_save" and self.state.global_step == STEP:
        os._exit(17)
    save_optimizer(self, output_dir)

transformers.Trainer._save_optimizer_and_scheduler = save_optimizer_or_exit
script.main(sys.argv[1:], callbacks=[Kill()])
"""
NO_TRAINER_KILLER = """
import os, sys
sys.path.insert(0, {examples!r})
import accelerate, accelerate.checkpointing
import run_semantic_segmentation_no_trainer as script

STEP, MOMENT = {step}, {moment!r}
publish, save_file, evaluate = script.publish_checkpoint, accelerate.checkpointing.save, script.evaluate

def publish_then_exit(staged, final):
    publish(staged, final)
    if MOMENT == "after_save" and os.path.basename(str(final)) == f"step_{{STEP}}":
        os._exit(17)

def save_file_or_exit(obj, path, *args, **kwargs):
    if MOMENT == "mid_save" and f"step_{{STEP}}" in str(path) and "optimizer" in os.path.basename(str(path)):
        os._exit(17)
    return save_file(obj, path, *args, **kwargs)

def exit_before_evaluation(*args, **kwargs):
    if MOMENT == "after_training":
        os._exit(17)
    return evaluate(*args, **kwargs)

script.publish_checkpoint = publish_then_exit
accelerate.checkpointing.save = save_file_or_exit
script.evaluate = exit_before_evaluation
script.main(sys.argv[1:])
"""


# One torch thread per process, as accelerate launch gives each DDP process: the runs compute alike, and a run on a
# 2-core machine shared with other work does not slow down tenfold with two spinning OpenMP threads (measured 62 s
# instead of 10 s).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(script, output_dir, *args, processes: int = 1, config=None, expect_rc: int = 0) -> str:
    """Runs an example script (or a killer driver) and returns its output; ``processes > 1`` uses ``accelerate
    launch`` (its ``--multi_gpu`` launcher starts the processes; ``--use_cpu`` makes them DDP on gloo)."""
    command = [sys.executable, str(script)]
    if processes > 1:
        launcher = [
            str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
            str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()),
        ]  # fmt: skip
        command = launcher + [str(script), "--use_cpu"]
    command += ["--output_dir", str(output_dir), *COMMON, *args]
    command += ["--config_overrides", json.dumps(config if config is not None else TINY)]
    # the launcher's own temporary files (torch elastic's log folders) go to the test's folder, not to /tmp
    environment = {**ONE_THREAD, "TMPDIR": str(Path(output_dir).parent)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=environment)
    output = result.stdout + result.stderr
    assert result.returncode == expect_rc, output[-4000:]
    return output


def trainer_losses(output: str) -> list[float]:
    return [float(value) for value in re.findall(r"'loss': '?([0-9.]+)", output)]


def no_trainer_losses(output: str) -> list[float]:
    return [json.loads(line)["loss"] for line in re.findall(r'^\{"step".*$', output, flags=re.M)]


def weight_difference(first: Path, second: Path) -> tuple[float, float]:
    """(max absolute difference, relative L2 difference) of the floating tensors of two saved models."""
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys()
    largest, squared, norm = 0.0, 0.0, 0.0
    for key in a:
        if a[key].is_floating_point():
            difference = a[key].double() - b[key].double()
            largest = max(largest, difference.abs().max().item())
            squared += difference.pow(2).sum().item()
            norm += a[key].double().pow(2).sum().item()
    return largest, (squared / norm) ** 0.5


def eval_results(output_dir: Path) -> dict:
    return json.loads((output_dir / "eval_results.json").read_text())


def assert_same_eval_metrics(reference_dir: Path, output_dir: Path, tolerance: float = 1e-3) -> None:
    """mIoU, mean accuracy, overall accuracy and (where the script reports it) the loss of two runs agree to
    ``tolerance`` (the loss of each validation image once: with several processes Trainer counted the padding
    duplicates of the last batch in it, 1% off here)."""
    reference, metrics = eval_results(reference_dir), eval_results(output_dir)
    keys = ["eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy"]
    for key in keys + (["eval_loss"] if "eval_loss" in reference else []):
        assert abs(metrics[key] - reference[key]) < tolerance, (key, metrics[key], reference[key])


def run_two_processes_and_compare(script: Path, output_dir: Path, reference: tuple, losses_of) -> str:
    """Runs ``script`` in DDP over 2 processes x 4 images with SyncBN and checks it against the one-process run
    ``reference`` = ``(output_dir, losses)``: the same 6 logged losses (not 6 per process), the same metrics, weights
    within float summation-order differences. Returns the script's output."""
    reference_dir, reference_losses = reference
    output = run(
        script, output_dir, "--num_train_epochs", "3", "--per_device_train_batch_size", "4", "--sync_batchnorm",
        *HEADS_AT_BACKBONE_LR, processes=2, config=TINY | NO_DROPOUT,
    )  # fmt: skip
    losses = losses_of(output)
    assert len(losses) == len(reference_losses) == 6, (losses, reference_losses)
    torch.testing.assert_close(losses, reference_losses, rtol=1e-3, atol=0)
    assert_same_eval_metrics(reference_dir, output_dir)
    largest, relative = weight_difference(reference_dir, output_dir)
    assert relative < 1e-5 and largest < 5e-5, (largest, relative)
    return output


TRAINER_RUN = ["--num_train_epochs", "3", "--save_strategy", "steps", "--save_steps", "3", *HEADS_AT_BACKBONE_LR]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Trainer script, one process, batch 8, 3 epochs of 2 steps, no dropout, a checkpoint every 3 steps: the
    reference run of the DDP, cross-script and resume tests."""
    output_dir = tmp_path_factory.mktemp("trainer_one_process")
    output = run(TRAINER_SCRIPT, output_dir, *TRAINER_RUN, config=TINY | NO_DROPOUT)
    return output_dir, trainer_losses(output)


def test_two_processes_with_sync_batchnorm_reach_the_one_process_result(one_process, tmp_path):
    """DDP over 2 processes x 4 images = the global batch of 8 of one process: the same samples per step (accelerate's
    seedable sampler gives batch i of the shuffle to process i % 2), the same augmentations, gradients averaged.
    Measured: the same logged losses and metrics (mIoU 0.21368: 6 steps learn the class frequencies only), weights max
    |diff| 9.5e-7, relative L2 5e-8 (float summation order: sums over 4 images and an all-reduce instead of sums over
    8). Without --sync_batchnorm: weights max |diff| 0.83 (BatchNorm running statistics), relative L2 3.3e-2. (With
    torch's bilinear resize in the augmentation, which rounds some pixels differently with one thread, it was max
    |diff| 1.4e-4.)"""
    run_two_processes_and_compare(TRAINER_SCRIPT, tmp_path, one_process, trainer_losses)


@pytest.fixture(scope="module")
def no_trainer_one_process(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("no_trainer_one_process")
    output = run(
        NO_TRAINER_SCRIPT, output_dir, "--num_train_epochs", "3", *HEADS_AT_BACKBONE_LR, config=TINY | NO_DROPOUT
    )
    return output_dir, no_trainer_losses(output)


def test_no_trainer_script_trains_exactly_as_the_trainer_script(one_process, no_trainer_one_process):
    """Same data order, augmentations, optimizer groups, schedule, clipping and loss: the same weights (measured
    bit-identical; without dropout, whose random draws the two loops consume differently)."""
    (trainer_dir, trainer_run_losses), (loop_dir, loop_losses) = one_process, no_trainer_one_process
    torch.testing.assert_close(loop_losses, trainer_run_losses, rtol=2e-3, atol=0)
    largest, _ = weight_difference(trainer_dir, loop_dir)
    assert largest < 1e-6, largest
    assert abs(eval_results(trainer_dir)["eval_mean_iou"] - eval_results(loop_dir)["eval_mean_iou"]) < 1e-6


def test_both_scripts_average_the_short_last_accumulation_window_of_an_epoch(tmp_path):
    """4 batches per epoch at 3 accumulation steps: windows of 3 and 1 batches. Trainer (and mmcv's accumulation
    hook) average each window over its own batches; the Accelerate loop divided the last one's loss by 3 too, a third
    of its gradient (0.185 apart in the weights). Without clipping, which would hide it: the same weights."""
    accumulation = [
        "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "3",
        "--max_grad_norm", "0", *HEADS_AT_BACKBONE_LR,
    ]  # fmt: skip
    run(TRAINER_SCRIPT, tmp_path / "trainer", *accumulation, config=TINY | NO_DROPOUT)
    run(NO_TRAINER_SCRIPT, tmp_path / "loop", *accumulation, config=TINY | NO_DROPOUT)
    largest, _ = weight_difference(tmp_path / "trainer", tmp_path / "loop")
    assert largest < 1e-6, largest


def test_no_trainer_script_on_two_processes_sums_the_confusion_matrices(no_trainer_one_process, tmp_path):
    """The Accelerate loop in DDP: the same steps as one process, and mIoU of the 5 validation images evaluated as
    uneven shards (3 + 2) whose confusion matrices are summed. Measured: the same mIoU, weights max |diff| 9.5e-7
    (bit-identical to the 2-process Trainer run's)."""
    output = run_two_processes_and_compare(NO_TRAINER_SCRIPT, tmp_path, no_trainer_one_process, no_trainer_losses)
    assert "2 processes x 4" in output, output[-3000:]


def test_trainer_run_killed_after_a_checkpoint_resumes_to_the_same_weights(one_process, tmp_path):
    """The reference run killed with os._exit right after checkpoint-3 (one step into epoch 1), then resumed with
    --resume_from_checkpoint latest: the losses of steps 4-6 and the final weights equal those of the uninterrupted
    run (measured bit-identical). The resumed run skips the first batch of epoch 1 and must give epoch 1's and 2's
    samples the augmentations of the uninterrupted run. (Dropout off here, as in the reference run; the Accelerate
    loop's resume test has it on.)"""
    reference_dir, reference_losses = one_process
    killer = tmp_path / "killer.py"
    killer.write_text(TRAINER_KILLER.format(examples=str(EXAMPLES), step=3, moment="after_save"))
    killed_losses = trainer_losses(run(killer, tmp_path, *TRAINER_RUN, config=TINY | NO_DROPOUT, expect_rc=17))
    assert [path.name for path in tmp_path.glob("checkpoint-*")] == ["checkpoint-3"] and len(killed_losses) == 3
    assert not (tmp_path / "model.safetensors").exists()
    resumed_losses = trainer_losses(
        run(TRAINER_SCRIPT, tmp_path, *TRAINER_RUN, "--resume_from_checkpoint", "latest", config=TINY | NO_DROPOUT)
    )
    assert killed_losses + resumed_losses == reference_losses, (killed_losses, resumed_losses, reference_losses)
    assert weight_difference(reference_dir, tmp_path) == (0.0, 0.0)
    assert eval_results(tmp_path)["eval_mean_iou"] == eval_results(reference_dir)["eval_mean_iou"]


def test_trainer_run_killed_while_saving_resumes_from_the_last_complete_checkpoint(one_process, tmp_path):
    """Killed while checkpoint-6 was being written (its model saved, its optimizer not): Trainer wrote checkpoints in
    place, so checkpoint-6 was left half-written and 'latest' picked it and failed. Checkpoints are now published
    whole: only checkpoint-3 is there, the run resumes from it and ends with the uninterrupted run's weights."""
    reference_dir, reference_losses = one_process
    killer = tmp_path / "killer.py"
    killer.write_text(TRAINER_KILLER.format(examples=str(EXAMPLES), step=6, moment="mid_save"))
    killed_losses = trainer_losses(run(killer, tmp_path, *TRAINER_RUN, config=TINY | NO_DROPOUT, expect_rc=17))
    assert len(killed_losses) == 6 and [path.name for path in tmp_path.glob("checkpoint-*")] == ["checkpoint-3"]
    staged = tmp_path / STAGING_FOLDER / "checkpoint-6"
    assert (staged / "model.safetensors").is_file() and not (staged / "optimizer.pt").exists()  # killed mid-save
    output = run(TRAINER_SCRIPT, tmp_path, *TRAINER_RUN, "--resume_from_checkpoint", "latest", config=TINY | NO_DROPOUT)
    assert killed_losses[:3] + trainer_losses(output) == reference_losses
    assert weight_difference(reference_dir, tmp_path) == (0.0, 0.0)
    assert sorted(path.name for path in tmp_path.glob("*checkpoint*")) == ["checkpoint-3", "checkpoint-6"]


def test_trainer_run_resumed_after_its_last_step_trains_no_further_step(tmp_path):
    """--max_steps 3 (the last step in the middle of epoch 1) and killed after training: resumed from checkpoint-3,
    Trainer trained a fourth step (the weights moved on); now nothing is trained and the final model is the
    checkpoint's."""
    killer = tmp_path / "killer.py"
    killer.write_text(TRAINER_KILLER.format(examples=str(EXAMPLES), step=3, moment="after_training"))
    limited = [*TRAINER_RUN, "--max_steps", "3"]
    assert len(trainer_losses(run(killer, tmp_path, *limited, config=TINY | NO_DROPOUT, expect_rc=17))) == 3
    assert not (tmp_path / "model.safetensors").exists()
    output = run(TRAINER_SCRIPT, tmp_path, *limited, "--resume_from_checkpoint", "latest", config=TINY | NO_DROPOUT)
    assert trainer_losses(output) == []
    assert weight_difference(tmp_path / "checkpoint-3", tmp_path) == (0.0, 0.0)


def test_the_demo_recipe_learns(tmp_path):
    """The Trainer script with the demo recipe (the heads at 10x the backbone's learning rate), 12 epochs of 2 steps,
    learns the small classes too. Measured mIoU 0.65 (with --seed 1 / 3: 0.73 / 0.65; the untrained model: 0.04)."""
    run(TRAINER_SCRIPT, tmp_path, *LEARNING_EPOCHS, config=LEARNER | NO_DROPOUT)
    assert eval_results(tmp_path)["eval_mean_iou"] > 0.4


def launch_environment(config_file: Path) -> tuple[dict, object]:
    """What ``accelerate launch --config_file CONFIG`` hands its processes (environment variables), computed by
    accelerate's own launcher code without starting anything, and the launcher's arguments."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), str(TRAINER_SCRIPT)])
    args, defaults, _ = _validate_launch_command(args)  # reads the file with accelerate's ClusterConfig
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1], args
    return prepare_multi_gpu_env(args), args


def test_accelerate_configs_are_what_accelerate_launch_reads(monkeypatch):
    """Each example config goes through accelerate launch's parsing (unknown keys are errors there) to the
    environment of the training processes; the FSDP plugin built from that environment wraps the model's
    _no_split_modules. (DeepSpeed itself is not installed here: its plugin is not built.)"""
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from hf_semseg import SeMaskSwinForSemanticSegmentation
    from hf_semseg.demo_data import demo_model_config

    folder = EXAMPLES / "accelerate_configs"
    assert sorted(path.name for path in folder.glob("*.yaml")) == ["ddp.yaml", "deepspeed.yaml", "fsdp.yaml"]
    expected_types = {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP}
    expected_types["deepspeed"] = DistributedType.DEEPSPEED
    for name, distributed_type in expected_types.items():
        config = load_config_from_file(str(folder / f"{name}.yaml"))
        assert isinstance(config, ClusterConfig) and config.distributed_type == distributed_type, name
        assert config.num_processes > 1 and config.mixed_precision == "bf16", name

    environment, args = launch_environment(folder / "ddp.yaml")
    assert args.multi_gpu and environment["ACCELERATE_MIXED_PRECISION"] == "bf16"

    environment, args = launch_environment(folder / "deepspeed.yaml")
    assert args.use_deepspeed and environment["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert environment["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert environment["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] == "1"

    environment, args = launch_environment(folder / "fsdp.yaml")
    assert args.use_fsdp and environment["FSDP_VERSION"] == "2"
    for key, value in environment.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # reads and checks the FSDP_* variables, as Accelerator does
    assert plugin.fsdp_version == 2 and "FULL_STATE_DICT" in str(plugin.state_dict_type)
    plugin.set_auto_wrap_policy(SeMaskSwinForSemanticSegmentation(demo_model_config()))
    assert [cls.__name__ for cls in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]] == ["SeMaskSwinStage"]
