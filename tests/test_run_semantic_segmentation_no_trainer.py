"""The Accelerate-loop finetuning script: trains, evaluates, saves a loadable model, and resumes exactly.
(Its equality with the Trainer script and its 2-process run are in test_scale_out.py.)"""

import json

import pytest
from script_helpers import help_default, load_example
from test_scale_out import (
    LEARNER,
    LEARNING_EPOCHS,
    NO_TRAINER_KILLER,
    NO_TRAINER_SCRIPT,
    TINY,
    eval_results,
    no_trainer_losses,
    run,
    weight_difference,
)
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import hf_semseg  # noqa: F401  (registers the Auto classes)
from hf_semseg.training import STAGING_FOLDER

from conftest import REPO_ROOT


def load_script():
    return load_example(NO_TRAINER_SCRIPT)


# 16 images, 4 per batch, 2 batches accumulated per optimizer step: 2 steps per epoch, 24 in all (the 12 epochs and
# the 64-channel decoder of test_scale_out's runs that must learn); dropout and drop-path on (the demo model's 0.1); a
# checkpoint every 3 steps
RUN = [*LEARNING_EPOCHS, "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
       "--learning_rate", "2e-3", "--checkpointing_steps", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple:
    """The uninterrupted run of RUN: (output folder, logged losses, evaluation metrics)."""
    full = tmp_path_factory.mktemp("no_trainer_full")
    losses = no_trainer_losses(run(NO_TRAINER_SCRIPT, full, *RUN, "--num_predictions", "1", config=LEARNER))
    return full, losses, eval_results(full)


def write_killer(tmp_path, step: int, moment: str):
    killer = tmp_path / "killer.py"
    killer.write_text(NO_TRAINER_KILLER.format(examples=str(REPO_ROOT / "examples"), step=step, moment=moment))
    return killer


def test_trains_saves_and_resumes_a_killed_run_to_the_same_weights(full_run, tmp_path):
    """The uninterrupted run learns (mIoU measured 0.68, the untrained model about 0.04) and saves a folder that the
    Auto classes load; a run killed right after its step_3 checkpoint (mid-epoch 1) and resumed with
    --resume_from_checkpoint latest logs the losses of steps 4-24 and ends with the same weights (measured
    bit-identical: augmentation keyed by (seed, epoch, sample), RNG states restored, the skipped batches not drawn)."""
    full, full_losses, metrics = full_run
    assert len(full_losses) == 24 and full_losses[-1] < full_losses[0], full_losses
    assert {"eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy", "eval_iou_disc"} <= set(metrics)
    assert 0.0 <= metrics["eval_mean_boundary_iou"] <= 1.0 and 0.0 <= metrics["eval_trimap_mean_iou"] <= 1.0
    assert metrics["eval_mean_iou"] > 0.4, metrics
    model = AutoModelForSemanticSegmentation.from_pretrained(full)
    assert model.config.id2label[1] == "disc" and model.config.embed_dim == 16
    assert AutoImageProcessor.from_pretrained(full).size["longest_edge"] == 112
    assert (full / "predictions" / "overlay_0.png").is_file()
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= {
        p.name for p in (full / "step_3").iterdir()
    }

    killed = tmp_path / "killed"
    killed_losses = no_trainer_losses(
        run(write_killer(tmp_path, 3, "after_save"), killed, *RUN, config=LEARNER, expect_rc=17)
    )
    assert [path.name for path in killed.iterdir()] == ["step_3"] and killed_losses == full_losses[:3]
    output = run(NO_TRAINER_SCRIPT, killed, *RUN, "--resume_from_checkpoint", "latest", config=LEARNER)
    assert f"resuming from {killed / 'step_3'}" in output
    assert no_trainer_losses(output) == full_losses[3:]
    assert weight_difference(full, killed) == (0.0, 0.0)
    assert eval_results(killed) == metrics


def test_a_run_killed_while_saving_resumes_from_the_last_complete_checkpoint(full_run, tmp_path):
    """Killed while step_6 was being written (its model saved, its optimizer not): the half-written folder was
    step_6 itself, which 'latest' picked and failed to load. Checkpoints are now published whole: the run resumes
    from step_3 and ends with the uninterrupted run's weights."""
    full, full_losses, _ = full_run
    killed = tmp_path / "killed"
    killed_losses = no_trainer_losses(
        run(write_killer(tmp_path, 6, "mid_save"), killed, *RUN, config=LEARNER, expect_rc=17)
    )
    assert killed_losses == full_losses[:6] and sorted(p.name for p in killed.glob("step_*")) == ["step_3"]
    staged = killed / STAGING_FOLDER / "step_6"
    assert (staged / "model.safetensors").is_file() and not (staged / "optimizer.bin").exists()  # killed mid-save
    output = run(NO_TRAINER_SCRIPT, killed, *RUN, "--resume_from_checkpoint", "latest", config=LEARNER)
    assert f"resuming from {killed / 'step_3'}" in output and no_trainer_losses(output) == full_losses[3:]
    assert weight_difference(full, killed) == (0.0, 0.0)
    assert not (killed / STAGING_FOLDER).exists()


def test_a_run_resumed_after_its_last_step_trains_no_further_step(tmp_path):
    """--max_steps 5 (the last step in the middle of epoch 2), killed after training: resumed from step_5 the loop
    trained a sixth step; now it trains none and saves the checkpoint's weights. (The model is saved before the
    final evaluation, where the run is killed: removed, so that the resumed run must write it.)"""
    limited = [*RUN, "--max_steps", "5", "--checkpointing_steps", "5"]
    killed_losses = no_trainer_losses(
        run(write_killer(tmp_path, 5, "after_training"), tmp_path, *limited, config=LEARNER, expect_rc=17)
    )
    assert len(killed_losses) == 5 and not (tmp_path / "eval_results.json").exists()
    assert weight_difference(tmp_path / "step_5", tmp_path) == (0.0, 0.0)  # saved before the evaluation
    (tmp_path / "model.safetensors").unlink()
    output = run(NO_TRAINER_SCRIPT, tmp_path, *limited, "--resume_from_checkpoint", "latest", config=LEARNER)
    assert no_trainer_losses(output) == [] and "5 optimizer steps" in output
    assert weight_difference(tmp_path / "step_5", tmp_path) == (0.0, 0.0)


def test_argument_errors_and_defaults(tmp_path, capsys):
    script = load_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--output_dir", str(tmp_path), "--checkpointing_steps", "often"])
    args = script.parse_args(["--output_dir", str(tmp_path), "--config_overrides", json.dumps(TINY)])
    assert args.checkpointing_steps is None and args.crop_size == 160 and args.mixed_precision is None
    # --scale / --do_reduce_labels not given: the variant's, else the demo's (resolve_data_settings)
    assert (args.scale, args.do_reduce_labels) == (None, None)
    assert script.parse_args(["--output_dir", "o", "--do_reduce_labels"]).do_reduce_labels is True
    explicit = script.parse_args(
        ["--output_dir", "o", "--variant", "semask-fpn-tiny-ade20k", "--do_reduce_labels", "no"]
    )
    assert explicit.do_reduce_labels is False
    # the step limit has the Trainer script's name, and --help shows the recipe's defaults
    assert script.parse_args(["--output_dir", "o", "--max_steps", "7"]).max_steps == 7
    with pytest.raises(SystemExit):
        script.parse_args(["--output_dir", "o", "--max_train_steps", "7"])
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for option, default in [("learning_rate", "0.001"), ("head_lr_multiplier", "10.0"), ("num_train_epochs", "6"),
                            ("warmup_steps", "5"), ("weight_decay", "0.01"), ("max_steps", "-1")]:  # fmt: skip
        assert help_default(help_text, option) == default, option


def test_push_to_hub_without_hub_access_fails_before_any_work(tmp_path, monkeypatch):
    """--push_to_hub failed only after training, evaluation and saving; now the Hub access is checked first."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    output_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--output_dir", str(output_dir), "--push_to_hub", "--hub_model_id", "me/demo"])
    assert str(exit_info.value) == (
        "error: --push_to_hub: the Hub is switched off here (HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE to push, or "
        "train without --push_to_hub"
    )
    assert not output_dir.exists()  # nothing was trained or written
