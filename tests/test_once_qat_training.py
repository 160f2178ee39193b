"""Once QAT (``--weight_bits``) in both finetuning scripts: the saved folder holds 8-bit codes, a killed run resumes
to the weights of an uninterrupted one (the float master weights travel in the checkpoints), two processes reach the
one-process result, gradient accumulation and bf16 work, and the Accelerate loop trains as the Trainer script.
Tiny SeMask-Swin FPN runs on the demo data, as ``test_scale_out.py``."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_scale_out import (
    EXAMPLES,
    HEADS_AT_BACKBONE_LR,
    NO_DROPOUT,
    NO_TRAINER_KILLER,
    NO_TRAINER_SCRIPT,
    TINY,
    TRAINER_KILLER,
    TRAINER_RUN,
    TRAINER_SCRIPT,
    eval_results,
    no_trainer_losses,
    run,
    trainer_losses,
)

from hf_semseg.training import MASTER_WEIGHTS_FILE


QAT = ["--weight_bits", "8", "2"]
CONFIG = TINY | NO_DROPOUT


def assert_same_saved_model(first, second) -> None:
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, different[:5]


def code_differences(first, second) -> tuple[int, int, int]:
    """(codes that differ, total codes, largest difference) of two saved any-precision models."""
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    keys = [key for key in a if key.endswith(".weight_codes")]
    differences = torch.cat([(a[k].int() - b[k].int()).flatten() for k in keys])
    return int(differences.count_nonzero()), differences.numel(), int(differences.abs().max())


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    """Trainer script, once QAT at 8 and 2 bits, batch 8, 3 epochs of 2 steps, a checkpoint every 3 steps."""
    output_dir = tmp_path_factory.mktemp("once_qat_trainer")
    output = run(TRAINER_SCRIPT, output_dir, *TRAINER_RUN, *QAT, config=CONFIG)
    return output_dir, trainer_losses(output)


def test_trainer_script_saves_codes_and_the_checkpoints_keep_the_master_weights(qat_run):
    output_dir, losses = qat_run
    assert len(losses) == 6 and all(loss > 0 for loss in losses)
    config = json.loads((output_dir / "config.json").read_text())
    assert config["weight_bits"] == [8, 2] and config["active_weight_bits"] == 8
    assert eval_results(output_dir)["eval_weight_bits"] == 8  # measured at the widest width, and said so
    with safe_open(output_dir / "model.safetensors", "pt") as saved:
        codes = [key for key in saved.keys() if key.endswith(".weight_codes")]
        assert len(codes) > 20 and all(saved.get_tensor(key).dtype == torch.int8 for key in codes)
        assert not any(key.removesuffix("_codes") in saved.keys() for key in codes)
    master = load_file(output_dir / "checkpoint-6" / MASTER_WEIGHTS_FILE)
    assert {key.removesuffix(".weight") for key in master} == {key.removesuffix(".weight_codes") for key in codes}
    assert not (output_dir / MASTER_WEIGHTS_FILE).exists()  # the final folder is the deployable codes only


def test_trainer_run_killed_after_a_checkpoint_resumes_to_the_same_codes(qat_run, tmp_path):
    reference_dir, reference_losses = qat_run
    killer = tmp_path / "killer.py"
    killer.write_text(TRAINER_KILLER.format(examples=str(EXAMPLES), step=3, moment="after_save"))
    killed = trainer_losses(run(killer, tmp_path, *TRAINER_RUN, *QAT, config=CONFIG, expect_rc=17))
    resumed = trainer_losses(
        run(TRAINER_SCRIPT, tmp_path, *TRAINER_RUN, *QAT, "--resume_from_checkpoint", "latest", config=CONFIG)
    )
    assert killed + resumed == reference_losses, (killed, resumed, reference_losses)
    assert_same_saved_model(reference_dir, tmp_path)


def test_two_processes_reach_the_one_process_result(qat_run, tmp_path):
    """DDP over 2 processes x 4 images with SyncBN: every width runs inside one forward call, so DDP sees one
    forward and one backward per step. The same losses and metrics; float summation order may move a master weight
    across a code boundary, by one code at most."""
    reference_dir, reference_losses = qat_run
    output = run(
        TRAINER_SCRIPT, tmp_path, "--num_train_epochs", "3", "--per_device_train_batch_size", "4", "--sync_batchnorm",
        *HEADS_AT_BACKBONE_LR, *QAT, processes=2, config=CONFIG,
    )  # fmt: skip
    torch.testing.assert_close(trainer_losses(output), reference_losses, rtol=1e-3, atol=0)
    assert abs(eval_results(tmp_path)["eval_mean_iou"] - eval_results(reference_dir)["eval_mean_iou"]) < 1e-3
    differing, total, largest = code_differences(reference_dir, tmp_path)
    assert differing < 1e-3 * total and largest <= 1, (differing, total, largest)


def test_gradient_accumulation_and_bf16(tmp_path):
    """2 x 4 images accumulated log the loss of 8 images (up to BatchNorm statistics), and a bf16-autocast run trains
    and saves codes."""

    def first_loss(output_dir, *args):
        output = run(TRAINER_SCRIPT, output_dir, "--max_steps", "2", *QAT, *args, config=CONFIG)
        return trainer_losses(output)[0]

    full = first_loss(tmp_path / "full", "--per_device_train_batch_size", "8")
    accumulated = first_loss(
        tmp_path / "accumulated", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"
    )
    assert abs(accumulated / full - 1) < 0.02, (full, accumulated)
    bf16 = first_loss(tmp_path / "bf16", "--per_device_train_batch_size", "8", "--bf16", "--use_cpu")
    assert abs(bf16 / full - 1) < 0.05, (full, bf16)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["weight_bits"] == [8, 2]


def test_activation_checkpointing_trains_as_without(tmp_path):
    """``--gradient_checkpointing`` with several widths: each checkpointed layer recomputes at the width its forward
    ran at, so three steps give the float master weights of three steps without checkpointing, up to float rounding
    (before, the narrower widths' gradients came from a recompute at the widest width, with the same logged losses)."""
    weights = {}
    for name, extra in (("plain", []), ("checkpointed", ["--gradient_checkpointing"])):
        steps = ["--max_steps", "3", "--save_strategy", "steps", "--save_steps", "3", *HEADS_AT_BACKBONE_LR]
        run(TRAINER_SCRIPT, tmp_path / name, *steps, *QAT, *extra, config=CONFIG)
        weights[name] = load_file(tmp_path / name / "checkpoint-3" / MASTER_WEIGHTS_FILE)
    assert weights["plain"].keys() == weights["checkpointed"].keys() and len(weights["plain"]) > 10
    largest = max((weights["plain"][key] - weights["checkpointed"][key]).abs().max().item() for key in weights["plain"])
    assert largest < 1e-6, largest


def test_accelerate_loop_trains_as_the_trainer_script_and_resumes_exactly(qat_run, tmp_path):
    """The Accelerate loop with --weight_bits: the Trainer script's losses and codes; killed after step 3 and resumed
    (its master weights registered for checkpointing), the uninterrupted loop's codes."""
    reference_dir, reference_losses = qat_run
    loop_args = ["--num_train_epochs", "3", "--checkpointing_steps", "3", *HEADS_AT_BACKBONE_LR, *QAT]
    loop_dir = tmp_path / "loop"
    losses = no_trainer_losses(run(NO_TRAINER_SCRIPT, loop_dir, *loop_args, config=CONFIG))
    torch.testing.assert_close(losses, reference_losses, rtol=2e-3, atol=0)
    differing, _, _ = code_differences(reference_dir, loop_dir)
    assert differing == 0
    assert eval_results(loop_dir)["eval_weight_bits"] == 8

    killed_dir = tmp_path / "killed"
    killer = tmp_path / "killer.py"
    killer.write_text(NO_TRAINER_KILLER.format(examples=str(EXAMPLES), step=3, moment="after_save"))
    run(killer, killed_dir, *loop_args, config=CONFIG, expect_rc=17)
    run(NO_TRAINER_SCRIPT, killed_dir, *loop_args, "--resume_from_checkpoint", "latest", config=CONFIG)
    assert_same_saved_model(loop_dir, killed_dir)
