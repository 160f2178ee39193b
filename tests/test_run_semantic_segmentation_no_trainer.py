"""The Accelerate-loop finetuning script: trains, evaluates, saves a loadable model, and resumes exactly.
(Its equality with the Trainer script and its 2-process run are in test_scale_out.py.)"""

import json

import pytest
from script_helpers import load_example
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

from conftest import REPO_ROOT


def load_script():
    return load_example(NO_TRAINER_SCRIPT)


# 16 images, 4 per batch, 2 batches accumulated per optimizer step: 2 steps per epoch, 24 in all (the 12 epochs and
# the 64-channel decoder of test_scale_out's runs that must learn); dropout and drop-path on (the demo model's 0.1); a
# checkpoint every 3 steps
RUN = [*LEARNING_EPOCHS, "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
       "--learning_rate", "2e-3", "--checkpointing_steps", "3"]  # fmt: skip


def test_trains_saves_and_resumes_a_killed_run_to_the_same_weights(tmp_path):
    """The uninterrupted run learns (mIoU measured 0.68, the untrained model about 0.04) and saves a folder that the
    Auto classes load; a run killed right after its step_3 checkpoint (mid-epoch 1) and resumed with
    --resume_from_checkpoint latest logs the losses of steps 4-24 and ends with the same weights (measured
    bit-identical: augmentation keyed by (seed, epoch, sample), RNG states restored, the skipped batches not drawn)."""
    full = tmp_path / "full"
    full_losses = no_trainer_losses(run(NO_TRAINER_SCRIPT, full, *RUN, "--num_predictions", "1", config=LEARNER))
    assert len(full_losses) == 24 and full_losses[-1] < full_losses[0], full_losses
    metrics = eval_results(full)
    assert {"eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy", "eval_iou_disc"} <= set(metrics)
    assert metrics["eval_mean_iou"] > 0.4, metrics
    model = AutoModelForSemanticSegmentation.from_pretrained(full)
    assert model.config.id2label[1] == "disc" and model.config.embed_dim == 16
    assert AutoImageProcessor.from_pretrained(full).size["longest_edge"] == 112
    assert (full / "predictions" / "overlay_0.png").is_file()
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= {
        p.name for p in (full / "step_3").iterdir()
    }

    killer = tmp_path / "killer.py"
    killer.write_text(NO_TRAINER_KILLER.format(examples=str(REPO_ROOT / "examples"), step=3))
    killed = tmp_path / "killed"
    killed_losses = no_trainer_losses(run(killer, killed, *RUN, config=LEARNER, expect_rc=17))
    assert [path.name for path in killed.iterdir()] == ["step_3"] and killed_losses == full_losses[:3]
    output = run(NO_TRAINER_SCRIPT, killed, *RUN, "--resume_from_checkpoint", "latest", config=LEARNER)
    assert f"resuming from {killed / 'step_3'}" in output
    assert no_trainer_losses(output) == full_losses[3:]
    assert weight_difference(full, killed) == (0.0, 0.0)
    assert eval_results(killed) == metrics


def test_checkpoint_lookup_and_argument_errors(tmp_path):
    script = load_script()
    with pytest.raises(FileNotFoundError, match="no step_N checkpoint"):
        script.find_checkpoint(str(tmp_path), "latest")
    for name in ("step_2", "step_10", "step_9", "step_x", "other"):
        (tmp_path / name).mkdir()
    assert script.find_checkpoint(str(tmp_path), "latest").name == "step_10"  # by number, not by name
    assert script.find_checkpoint(str(tmp_path), str(tmp_path / "step_2")).name == "step_2"
    with pytest.raises(FileNotFoundError, match="step_404: no such folder"):
        script.find_checkpoint(str(tmp_path), str(tmp_path / "step_404"))
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
