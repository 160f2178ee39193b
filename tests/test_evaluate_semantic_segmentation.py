import re

import numpy as np
import pytest
import torch
from script_helpers import load_example

import hf_semseg
from hf_semseg.demo_data import demo_model_config, make_demo_dataset
from hf_semseg.metrics import SegmentationMetrics

from conftest import REPO_ROOT


def load_script():
    return load_example(REPO_ROOT / "examples" / "evaluate_semantic_segmentation.py")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = hf_semseg.SeMaskSwinForSemanticSegmentation(demo_model_config()).eval()
    model.save_pretrained(folder)
    hf_semseg.KeepRatioImageProcessor(size={"longest_edge": 224, "shortest_edge": 160}).save_pretrained(folder)
    return folder, model


def test_whole_mode_equals_manual_evaluation_and_writes_predictions(saved_model, tmp_path):
    folder, model = saved_model
    script = load_script()
    summary = script.main(["--model", str(folder), "--max_samples", "2", "--predictions_dir", str(tmp_path)])
    processor = hf_semseg.KeepRatioImageProcessor(size={"longest_edge": 224, "shortest_edge": 160})
    metric = SegmentationMetrics(model.config.num_labels)
    for sample in make_demo_dataset()["validation"].select(range(2)):
        label = np.array(sample["label"])
        with torch.no_grad():
            outputs = model(**processor(sample["image"], return_tensors="pt"))
        prediction = processor.post_process_semantic_segmentation(outputs, target_sizes=[label.shape])[0]
        metric.update(prediction, torch.from_numpy(label.astype(np.int64)))
    expected = metric.compute()
    for key in ("mean_iou", "mean_boundary_iou", "trimap_mean_iou"):  # the boundary metrics at the image size
        assert summary[key] == pytest.approx(expected[key], abs=1e-6), key
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00000_mask.png", "00000_overlay.png", "00001_mask.png", "00001_overlay.png",
    ]  # fmt: skip


def test_slide_and_multi_scale_modes_run(saved_model):
    folder, _ = saved_model
    script = load_script()
    slide = script.main(
        ["--model", str(folder), "--max_samples", "1", "--mode", "slide", "--crop_size", "96", "--stride", "64"]
    )
    multi = script.main(["--model", str(folder), "--max_samples", "1", "--mode", "multi_scale"])
    for summary in (slide, multi):
        assert 0.0 <= summary["mean_iou"] <= 1.0 and set(summary["per_category_iou"]) == set(
            hf_semseg.demo_data.DEMO_CLASSES
        )


def test_known_dataset_palette_is_used():
    script = load_script()
    id2label, palette = hf_semseg.dataset_labels("cityscapes")
    assert script.palette_for(id2label).tolist() == palette


def test_a_missing_model_or_split_is_one_error_line(saved_model, tmp_path):
    from hf_semseg.training import exit_on_user_error

    folder, _ = saved_model
    script = load_script()
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        script.main(["--model", str(tmp_path / "no_such_model")])
    assert str(exit_info.value).startswith(f"error: --model {tmp_path / 'no_such_model'}: cannot be loaded (")
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        script.main(["--model", str(folder), "--split", "test", "--max_samples", "1"])
    assert str(exit_info.value) == "error: --split test: dataset demo has splits ['train', 'validation']"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        # 0 evaluated every sample, -1 none (NaN metrics, exit status 0)
        (["--max_samples", "0"], "--max_samples 0: expected at least 1 sample (leave it out for all)"),
        (["--max_samples", "-1"], "--max_samples -1: expected at least 1 sample (leave it out for all)"),
        # tracebacks of the sliding-window function, after the model and the dataset were loaded
        (["--mode", "slide", "--crop_size", "0"], "--crop_size 0: expected a positive number of pixels"),
        (["--mode", "slide", "--stride", "-3"], "--stride -3: expected a positive number of pixels"),
        (
            ["--mode", "slide", "--crop_size", "64", "--stride", "100"],
            "--stride 100: larger than --crop_size 64, the windows would leave pixels uncovered",
        ),
        # FileExistsError after the evaluation
        (["--predictions_dir", "{tmp}/a_file"], "--predictions_dir {tmp}/a_file: is a file (expected a folder)"),
    ],
)
def test_options_that_cannot_evaluate_are_one_error_line_before_any_work(tmp_path, monkeypatch, arguments, message):
    from hf_semseg.training import exit_on_user_error

    (tmp_path / "a_file").write_text("not a folder")
    script = load_script()
    monkeypatch.setattr(script, "loading", lambda option: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        script.main(["--model", "unused", *(argument.format(tmp=tmp_path) for argument in arguments)])
    assert str(exit_info.value) == "error: " + message.format(tmp=tmp_path)


def test_an_empty_split_is_one_error_line(saved_model, tmp_path):
    from datasets import DatasetDict, Features
    from datasets import Image as ImageFeature

    from hf_semseg.training import exit_on_user_error

    folder, _ = saved_model
    features = Features({"image": ImageFeature(), "label": ImageFeature()})
    one = make_demo_dataset(num_train=1, num_validation=1)["train"].cast(features)
    # the shard counts given: datasets 3.0 divides by zero estimating an empty image split's size
    DatasetDict({"train": one, "validation": one.select([])}).save_to_disk(
        tmp_path / "data", num_shards={"train": 1, "validation": 1}
    )
    script = load_script()
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        script.main(["--model", str(folder), "--dataset_name", str(tmp_path / "data")])
    assert str(exit_info.value).startswith("error: --")
    assert re.fullmatch(r"error: --dataset_name \S+: split 'validation' has no samples", str(exit_info.value))
