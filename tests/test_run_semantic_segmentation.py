import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from script_helpers import help_default, load_example
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, TrainerCallback

import hf_semseg
from hf_semseg import training

from conftest import REPO_ROOT


# one torch thread: on a busy 2-core machine two spinning OpenMP threads make a run several times slower
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_trainer_script_trains_on_the_demo_dataset_and_saves_a_loadable_model(tmp_path):
    """A short run of the README's main job: 2 epochs on 16 demo images; the loss must fall and the folder load."""
    command = [
        sys.executable, str(REPO_ROOT / "examples" / "run_semantic_segmentation.py"), "--output_dir", str(tmp_path),
        "--max_train_samples", "16", "--max_eval_samples", "4", "--num_train_epochs", "2", "--logging_steps", "1",
        "--num_predictions", "1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval_results.json").read_text())
    assert {"eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy", "eval_iou_disc"} <= set(metrics)
    assert 0.0 <= metrics["eval_mean_boundary_iou"] <= 1.0 and 0.0 <= metrics["eval_trimap_mean_iou"] <= 1.0
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0
    losses = [float(m) for m in re.findall(r"'loss': '?([0-9.]+)", result.stdout + result.stderr)]
    model = AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert model.config.id2label[1] == "disc" and processor.size["longest_edge"] == 224
    assert (tmp_path / "predictions" / "overlay_0.png").is_file()
    assert len(losses) == 4 and losses[-1] < losses[0], losses


def first_logged_loss(output_dir, *extra):
    command = [
        sys.executable, str(REPO_ROOT / "examples" / "run_semantic_segmentation.py"), "--output_dir", str(output_dir),
        "--max_train_samples", "8", "--max_eval_samples", "1", "--num_train_epochs", "1", "--logging_steps", "1",
        "--num_predictions", "0", "--seed", "3", *extra,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    return float(re.findall(r"'loss': '?([0-9.]+)", result.stdout + result.stderr)[0])


def test_gradient_accumulation_logs_the_same_loss(tmp_path):
    """The first logged loss (before any update). Trainer divides by the accumulation steps only for models that do
    not normalise the loss themselves: with
    accepts_loss_kwargs=False, the logged loss of 2 x 4 images equals that of 8 images (up to BatchNorm statistics),
    instead of twice it."""
    full = first_logged_loss(tmp_path / "full", "--per_device_train_batch_size", "8")
    accumulated = first_logged_loss(
        tmp_path / "accumulated", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"
    )
    # BatchNorm statistics of 4 vs 8 images differ slightly (measured 1.757 vs 1.762); the bug gives twice the loss
    assert abs(accumulated / full - 1) < 0.02, (full, accumulated)


def load_trainer_script():
    return load_example(REPO_ROOT / "examples" / "run_semantic_segmentation.py")


def test_variant_defaults_and_explicit_options_of_the_command_line():
    from transformers import HfArgumentParser, TrainingArguments

    script = load_trainer_script()
    parser = HfArgumentParser((script.ModelArguments, script.DataArguments, TrainingArguments))
    _, data_args, _ = parser.parse_args_into_dataclasses(["--output_dir", "out"])
    assert (data_args.scale, data_args.do_reduce_labels) == (None, None)  # resolved later: variant, else demo
    _, data_args, _ = parser.parse_args_into_dataclasses(["--output_dir", "out", "--do_reduce_labels"])
    assert data_args.do_reduce_labels is True
    arguments = ["--output_dir", "out", "--do_reduce_labels", "false", "--scale", "1024", "256"]
    _, data_args, _ = parser.parse_args_into_dataclasses(arguments)
    assert (data_args.scale, data_args.do_reduce_labels) == ([1024, 256], False)


def test_mask2former_variant_trains_with_its_processor_scale_and_label_reduction(tmp_path, monkeypatch):
    """With --variant semask-mask2former-large-ade20k and no --scale, the run uses the variant's test scale and saves
    the Mask2Former image processor (a tiny model of the family stands in for SeMask-L). The demo dataset has its own
    classes: reduced on request only (the variant's reduction is ADE20K's), and then the model's classes are those of
    the reduced targets (background dropped, the others one id lower: they kept the unreduced names before)."""
    from test_modeling_semask_mask2former import tiny_config

    script = load_trainer_script()

    def tiny_model(id2label, *args, **kwargs):
        label2id = {label: index for index, label in id2label.items()}
        return hf_semseg.SeMaskMask2FormerForSemanticSegmentation(tiny_config(id2label=id2label, label2id=label2id))

    monkeypatch.setattr(training, "build_model", tiny_model)
    arguments = [
        "--output_dir", str(tmp_path), "--variant", "semask-mask2former-large-ade20k", "--max_train_samples", "2",
        "--max_eval_samples", "1", "--max_steps", "1", "--per_device_train_batch_size", "2", "--crop_size", "64",
        "--num_predictions", "0", "--do_reduce_labels",
    ]  # fmt: skip
    metrics = script.main(arguments)
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0 and {"eval_iou_disc", "eval_iou_triangle"} <= set(metrics)
    assert "eval_iou_background" not in metrics
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor) is hf_semseg.SeMaskMask2FormerImageProcessor and processor.do_reduce_labels
    assert dict(processor.size) == {"longest_edge": 2560, "shortest_edge": 640}
    config = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).config
    assert config.id2label == {0: "disc", 1: "bar", 2: "triangle"} and config.num_labels == 3


def test_help_shows_the_recipe_defaults_the_script_uses():
    """The demo recipe was appended to the command line, so --help showed Trainer's defaults (learning rate 5e-05,
    3 epochs, linear schedule) instead of the values used; the recipe is now the parser's defaults."""
    script = load_trainer_script()
    help_text = " ".join(script.build_parser().format_help().split())
    for option, default in [("learning_rate", "0.001"), ("head_lr_multiplier", "10.0"), ("num_train_epochs", "6.0"),
                            ("warmup_steps", "5"), ("weight_decay", "0.01"), ("max_steps", "-1")]:  # fmt: skip
        assert help_default(help_text, option) == default, option
    assert re.search(r"--lr_scheduler_type [^()]*\(default: polynomial\)", help_text)
    _, _, training_args = script.build_parser().parse_args_into_dataclasses(["--output_dir", "o"])
    assert (training_args.learning_rate, training_args.num_train_epochs, training_args.warmup_steps) == (1e-3, 6, 5)
    assert (training_args.weight_decay, training_args.lr_scheduler_type.value) == (0.01, "polynomial")
    assert training_args.optim.value == "adamw_torch"  # the AdamW the script built itself before --optim counted
    _, _, training_args = script.build_parser().parse_args_into_dataclasses(
        ["--output_dir", "o", "--learning_rate", "3e-4", "--max_steps", "9"]
    )
    assert (training_args.learning_rate, training_args.max_steps) == (3e-4, 9)  # the command line wins


def test_an_unreadable_training_image_ends_the_run_with_one_line_naming_it(tmp_path):
    """A truncated PNG in the training set ended the run in PIL's 'image file is truncated' naming neither the file
    nor the sample; now the script stops with one line that names both (exit status 1)."""
    import numpy as np
    from datasets import Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature
    from PIL import Image
    from test_training import truncated_png

    images, labels = [], []
    for index in range(4):
        image, label = tmp_path / f"image_{index}.png", tmp_path / f"label_{index}.png"
        Image.fromarray(np.full((32, 48, 3), 40 * index, np.uint8)).save(image)
        Image.fromarray(np.full((32, 48), index % 2, np.uint8)).save(label)
        images.append(str(image))
        labels.append(str(label))
    truncated_png(tmp_path / "image_2.png", size=(32, 48))
    features = Features({"image": ImageFeature(), "label": ImageFeature()})
    split = Dataset.from_dict({"image": images, "label": labels}, features=features)
    DatasetDict({"train": split, "validation": split}).save_to_disk(tmp_path / "data")  # the bytes go in the arrow
    command = [
        sys.executable, str(REPO_ROOT / "examples" / "run_semantic_segmentation.py"), "--output_dir",
        str(tmp_path / "out"), "--dataset_name", str(tmp_path / "data"), "--variant", "semask-fpn-tiny-ade20k",
        "--config_overrides", '{"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "decoder_hidden_size": 16}',
        "--max_steps", "1", "--per_device_train_batch_size", "4", "--crop_size", "32", "--scale", "48", "32",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    assert result.returncode == 1, result.stderr[-3000:]
    # one error line (Trainer's progress bar, left open, redraws around it)
    errors = [line for line in re.split(r"[\r\n]|(?=error: )", result.stderr) if line.startswith("error:")]
    assert len(errors) == 1 and re.fullmatch(
        r"error: split 'train' sample 2: image (\S*/)?image_2\.png cannot be read \(.*truncated.*\)", errors[0]
    ), result.stderr[-2000:]


def test_push_to_hub_without_hub_access_fails_before_any_work(tmp_path, monkeypatch):
    """As the Accelerate script: the Hub access is checked before the model and data are set up (one error line)."""
    import huggingface_hub
    import pytest

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    output_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        load_trainer_script().main(["--output_dir", str(output_dir), "--push_to_hub", "--hub_model_id", "me/demo"])
    assert str(exit_info.value) == (
        "error: --push_to_hub: the Hub is switched off here (HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE to push, or "
        "train without --push_to_hub"
    )
    assert not output_dir.exists()


#: options of one script only: the Trainer script's (its --scale takes any count), the Accelerate script's
TRAINER_ONLY = {"--scale 512", "--label_smoothing_factor", "--fp16", "--do_eval", "--optim", "--gradient_checkpointing"}
NO_TRAINER_ONLY = {"--checkpointing_steps", "--mixed_precision", "--lr_end"}


def scripts_taking(arguments) -> list[str]:
    """The example scripts that take ``arguments`` (its first option decides)."""
    first = {arguments[0], " ".join(arguments[:2])}
    scripts = ["run_semantic_segmentation.py", "run_semantic_segmentation_no_trainer.py"]
    if first & TRAINER_ONLY:
        return scripts[:1]
    return scripts[1:] if first & NO_TRAINER_ONLY else scripts


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--variant", "semask-fpn-huge-ade20k"],
            r"--variant unknown variant 'semask-fpn-huge-ade20k'; known variants: ",
        ),
        # (a path that does not exist was "cannot be loaded (... Couldn't reach ... on the Hub)")
        (["--dataset_name", "{tmp}/no_such_dataset"], r"--dataset_name \S*no_such_dataset: no such folder$"),
        (["--model_name_or_path", "{tmp}/no_such_model"], r"--model_name_or_path \S*no_such_model: cannot be loaded"),
        (["--config_overrides", "{{depths: 1"], r"--config_overrides '\{depths: 1' is not valid JSON"),
        (
            ["--config_overrides", '{{"no_such": 1}}'],
            r"config override 'no_such': SeMaskSwinConfig has no such attribute",
        ),
        # torch's reshape in the first forward before
        (
            ["--config_overrides", '{{"num_heads": [5, 6, 12, 24]}}'],
            r"--config_overrides \{\"num_heads\": \[5, 6, 12, 24\]\}: no valid SeMaskSwinConfig \(.*num_heads",
        ),
        # (the Accelerate script's argparse takes exactly two numbers: its usage and exit status 2)
        (["--scale", "512"], r"--scale takes two numbers \(long short\), got \[512\]"),
        (["--eval_split", "test"], r"dataset demo has no split 'test'; it has \['train', 'validation'\]"),
        (["--resume_from_checkpoint", "latest"], r"--resume_from_checkpoint latest: no checkpoint-N checkpoint in"),
        # torch's or the Trainer's own errors before, or (no epochs) an untrained model saved with exit status 0
        (["--learning_rate", "-0.1"], r"--learning_rate -0\.1: expected a positive number"),
        (["--per_device_train_batch_size", "0"], r"--per_device_train_batch_size 0: expected at least 1 image"),
        (["--num_train_epochs", "0"], r"--num_train_epochs 0(\.0)?: no training step"),
        # 0 read as "no limit" before
        (["--max_train_samples", "0"], r"--max_train_samples 0: expected at least 1 sample"),
        (["--output_dir", "{tmp}/a_file"], r"--output_dir \S*a_file: is a file \(expected a folder\)"),
        # a KeyError traceback from the data loader, an empty output folder left
        (["--image_column", "img"], r"--image_column img: split 'train' has no such column \(its columns: \["),
        (["--label_column", "lab"], r"--label_column lab: split 'train' has no such column"),
        # ValueError tracebacks from hf_semseg.transforms
        (["--crop_size", "0"], r"--crop_size 0: expected a positive number of pixels"),
        (["--crop_size", "-5"], r"--crop_size -5: expected a positive number of pixels"),
        (["--scale", "0", "0"], r"--scale 0 0: expected two positive numbers of pixels \(long short\)"),
        # ZeroDivisionError / ValueError tracebacks, some after training steps
        (["--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps 0: expected a positive number"),
        (
            ["--logging_steps", "0"],
            r"(--logging_steps 0: expected a positive number of steps|logging strategy \S+ requires non-zero "
            r"--logging_steps)$",
        ),
        (["--checkpointing_steps", "0"], r"--checkpointing_steps 0: expected a positive number of steps"),
        # torch's RuntimeError from Trainer's label smoother
        (["--label_smoothing_factor", "0.1"], r"--label_smoothing_factor 0\.1: not defined for these segmentation"),
        # float32 training, silently
        (["--fp16", "--use_cpu"], r"--fp16: float16 mixed precision needs a GPU; .*\(use --bf16 "),
        (["--mixed_precision", "fp16", "--use_cpu"], r"--mixed_precision fp16: .*\(use --mixed_precision bf16 "),
        # Trainer's ValueError / Accelerate's FileNotFoundError
        (
            ["--resume_from_checkpoint", "{tmp}/not_a_checkpoint"],
            r"--resume_from_checkpoint \S*not_a_checkpoint: not a checkpoint folder \(a checkpoint-N checkpoint of "
            r"this script holds (trainer_state\.json|random_states_0\.pkl) ",
        ),
        # trained: --do_eval alone evaluates a given model
        (["--do_eval"], r"--do_eval without --do_train evaluates a trained model: give it with --model_name_or_path"),
        (["--optim", "galore_adamw"], r"--optim galore_adamw: lays out the parameters itself, so it cannot take "),
        # torch's DataLoader's ValueError after the model had loaded
        (["--dataloader_num_workers", "-1"], r"--dataloader_num_workers -1: expected 0 or a positive number$"),
        # the Accelerate script scaled the gradients by a negative factor: its loss climbed, exit status 0
        (["--max_grad_norm", "-1"], r"--max_grad_norm -1(\.0)?: expected 0 or a positive number$"),
        # a schedule shifted silently (Accelerate script; TrainingArguments refuses it itself)
        (["--warmup_steps", "-5"], r"(--warmup_steps -5: expected 0 or a positive number|.*warmup_steps >= 0)"),
        # transformers' ValueError from the schedule, after the model had loaded
        (["--lr_end", "0.1"], r"--lr_end 0\.1: the poly decay ends below the learning rate, expected less than "),
        # the data ignore 255 (labels, padding, metrics): another index, or a class 255, was trained and measured
        (
            ["--config_overrides", '{{"loss_ignore_index": 254}}'],  # str.format's braces
            r"the model has \d+ classes and loss_ignore_index 254; these scripts read label 255 as ignored",
        ),
        # the same from the Trainer script's polynomial schedule (transformers' ValueError, an empty output folder)
        (
            ["--learning_rate", "1e-8"],
            r"(--learning_rate 1e-08: the polynomial schedule decays to lr_end 1e-07|--lr_end 1e-07: the poly decay)",
        ),
        # torch's load_state_dict traceback, after the model had loaded and the output folder was made
        (
            ["--resume_from_checkpoint", "{tmp}/other_checkpoint"],
            r"--resume_from_checkpoint \S*other_checkpoint: model\.safetensors 'decode_head\.classifier\.weight' has "
            r"shape \(4, 3\), the model's is \(4, 64, 1, 1\) \(a checkpoint of another model or configuration\?\)$",
        ),
        # the variant's classes and data settings were applied to the pretrained model, silently
        (
            ["--variant", "semask-fpn-tiny-ade20k", "--model_name_or_path", "{tmp}/no_such_model"],
            r"--variant semask-fpn-tiny-ade20k and --model_name_or_path \S*no_such_model: give one of them ",
        ),
    ],
)
def test_bad_options_end_both_scripts_with_one_line_before_any_work(tmp_path, arguments, message):
    """Each of these ended in a traceback from datasets, transformers, json or the Hub client."""
    from hf_semseg.training import exit_on_user_error

    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "not_a_checkpoint").mkdir()
    other_checkpoint = tmp_path / "other_checkpoint"
    other_checkpoint.mkdir()
    for marker in ("trainer_state.json", "random_states_0.pkl"):  # what each script's checkpoints hold
        (other_checkpoint / marker).write_text("{}")
    save_file({"decode_head.classifier.weight": torch.zeros(4, 3)}, other_checkpoint / "model.safetensors")
    for script in scripts_taking(arguments):
        output_dir = tmp_path / script
        module = load_example(REPO_ROOT / "examples" / script)
        with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
            module.main(
                ["--output_dir", str(output_dir), "--max_train_samples", "2", "--max_eval_samples", "1", *arguments]
            )
        text = str(exit_info.value)
        step_name = message.replace("checkpoint-N", "step_N") if "no_trainer" in script else message
        assert text.startswith("error: ") and "\n" not in text and re.match(step_name, text[7:]), text
        assert not output_dir.exists(), sorted(output_dir.iterdir())  # nothing left behind, not even the folder


TINY = '{"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "decoder_hidden_size": 16}'
#: a one-step run of the tiny demo model on 4 training and 2 validation images
SHORT_RUN = [
    "--config_overrides", TINY, "--max_train_samples", "4", "--max_eval_samples", "2", "--max_steps", "1",
    "--per_device_train_batch_size", "2", "--crop_size", "64", "--num_predictions", "0",
]  # fmt: skip


class OptimizerSpy(TrainerCallback):
    """Records the optimizer a run trains with and how many steps it trains."""

    optimizer, steps = None, 0

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # unwrapped from Accelerate's

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def test_do_train_and_do_eval_choose_what_a_run_does_and_optim_is_used(tmp_path):
    """--do_eval alone trained anyway, and --optim was ignored (the script's own AdamW). Now, as in transformers'
    examples: --do_train alone trains and saves without evaluating, --do_eval alone evaluates the given model without
    a training step or a saved model, and neither trains then evaluates (the demo command); --optim sgd trains with
    SGD over the recipe's parameter groups (the heads at 10 x the learning rate, no decay on norms)."""
    script = load_trainer_script()
    trained, spy = tmp_path / "trained", OptimizerSpy()
    script.main(["--output_dir", str(trained), *SHORT_RUN, "--do_train", "--optim", "sgd"], callbacks=[spy])
    assert type(spy.optimizer) is torch.optim.SGD and spy.steps == 1
    assert sorted({(g["initial_lr"], g["weight_decay"]) for g in spy.optimizer.param_groups}) == [
        (1e-3, 0.0), (1e-3, 0.01), (1e-2, 0.0), (1e-2, 0.01)
    ]  # fmt: skip
    assert (trained / "model.safetensors").is_file() and not (trained / "eval_results.json").exists()
    weights = (trained / "model.safetensors").read_bytes()

    evaluated, spy = tmp_path / "evaluated", OptimizerSpy()
    metrics = script.main(
        ["--output_dir", str(evaluated), *SHORT_RUN, "--do_eval", "--model_name_or_path", str(trained)],
        callbacks=[spy],
    )
    assert spy.steps == 0 and (trained / "model.safetensors").read_bytes() == weights  # nothing trained or written
    assert sorted(path.name for path in evaluated.iterdir()) == ["all_results.json", "eval_results.json"]

    both = script.main(["--output_dir", str(tmp_path / "both"), *SHORT_RUN, "--optim", "sgd"])
    assert (tmp_path / "both" / "model.safetensors").read_bytes() == weights  # the same training, then evaluated
    for key in ("eval_mean_iou", "eval_overall_accuracy", "eval_iou_disc"):
        assert metrics[key] == pytest.approx(both[key], abs=1e-6), key


@pytest.mark.parametrize("script_name", ["run_semantic_segmentation.py", "run_semantic_segmentation_no_trainer.py"])
def test_a_bad_validation_sample_found_after_training_loses_no_training(tmp_path, script_name):
    """The model was saved after the final evaluation, so a bad validation sample lost the whole training (the
    Accelerate script left an empty folder); it is now saved first, and the error names the split and the file."""
    import numpy as np
    from datasets import Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    def split(name, bad_row=None):
        rows = {"image": [], "label": []}
        for index in range(2):
            image, label = tmp_path / f"{name}_image_{index}.png", tmp_path / f"{name}_label_{index}.png"
            Image.fromarray(np.full((64, 64, 3), 60 * index, np.uint8)).save(image)
            Image.fromarray(np.full((64, 64), 200 if index == bad_row else index, np.uint8)).save(label)
            rows["image"].append(str(image))
            rows["label"].append(str(label))
        return Dataset.from_dict(rows, features=Features({"image": ImageFeature(), "label": ImageFeature()}))

    DatasetDict({"train": split("train"), "validation": split("validation", bad_row=1)}).save_to_disk(tmp_path / "d")
    output_dir = tmp_path / "out"
    module = load_example(REPO_ROOT / "examples" / script_name)
    with pytest.raises(SystemExit) as exit_info, training.exit_on_user_error():
        module.main(
            ["--output_dir", str(output_dir), *SHORT_RUN, "--dataset_name", str(tmp_path / "d"), "--variant",
             "semask-fpn-tiny-ade20k", "--do_reduce_labels", "false", "--scale", "64", "64", "--use_cpu"]
        )  # fmt: skip
    assert re.fullmatch(
        r"error: split 'validation' sample 1 \(image (\S*/)?validation_image_1\.png, label (\S*/)?validation_label_1\.png\): "
        r"label values \[200\] are outside \[0, 150\) and 255",
        str(exit_info.value),
    ), str(exit_info.value)
    assert AutoModelForSemanticSegmentation.from_pretrained(output_dir).config.num_labels == 150


def test_an_evaluation_only_run_needs_no_training_split_and_writes_json_null(tmp_path):
    """--do_eval alone refused a dataset without a training split; and a metric without a value (one class
    everywhere: no boundary band) was written into eval_results.json as the non-standard NaN."""
    from datasets import DatasetDict

    from hf_semseg.demo_data import make_demo_dataset

    script = load_trainer_script()
    trained = tmp_path / "trained"
    script.main(["--output_dir", str(trained), *SHORT_RUN, "--do_train"])
    validation = make_demo_dataset(num_train=1, num_validation=2)["validation"]
    one_class = validation.map(lambda row: {"label": Image.fromarray(np.full_like(np.array(row["label"]), 1))})
    DatasetDict({"validation": one_class}).save_to_disk(tmp_path / "data")
    evaluated = tmp_path / "evaluated"
    metrics = script.main(
        ["--output_dir", str(evaluated), "--do_eval", "--model_name_or_path", str(trained),
         "--dataset_name", str(tmp_path / "data"), "--crop_size", "64"]
    )  # fmt: skip
    assert math.isnan(metrics["eval_trimap_mean_iou"])
    saved = json.loads(
        (evaluated / "eval_results.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON")
    )
    assert saved["eval_trimap_mean_iou"] is None and saved["eval_mean_iou"] == pytest.approx(metrics["eval_mean_iou"])


def test_a_label_reduction_taken_from_the_pretrained_model_is_announced(tmp_path):
    """A dataset other than the demo takes the label reduction of the variant or pretrained model (their dataset's:
    ADE20K's label 0 = "other"). On a user's own dataset whose label 0 is a class, that turned class 0 into ignored
    pixels without a word; it is announced, naming the option that keeps it, and --do_reduce_labels false keeps it."""
    import warnings

    from test_evaluate_semantic_segmentation import saved_dataset

    from hf_semseg.demo_data import demo_model_config

    folder = tmp_path / "model"
    hf_semseg.SeMaskSwinForSemanticSegmentation(demo_model_config()).save_pretrained(folder)
    size = {"longest_edge": 64, "shortest_edge": 48}
    hf_semseg.KeepRatioImageProcessor(size=size, do_reduce_labels=True).save_pretrained(folder)
    data = saved_dataset(tmp_path / "data")
    arguments = ["--model_name_or_path", str(folder), "--dataset_name", str(data), "--do_eval"]
    arguments += ["--max_eval_samples", "1", "--num_predictions", "0"]
    with pytest.warns(
        UserWarning, match=r"labels reduced as --model_name_or_path's dataset reduces them .* give --do_r"
    ):
        load_trainer_script().main(["--output_dir", str(tmp_path / "reduced"), *arguments])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_trainer_script().main(["--output_dir", str(tmp_path / "kept"), *arguments, "--do_reduce_labels", "false"])
    assert not [warning for warning in caught if "labels reduced" in str(warning.message)]
