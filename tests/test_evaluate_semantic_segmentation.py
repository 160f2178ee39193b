import copy
import json
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
        # FileExistsError / a traceback from the path check, after the evaluation
        (
            ["--predictions_dir", "{tmp}/a_file/predictions"],
            "--predictions_dir {tmp}/a_file/predictions: {tmp}/a_file is a file (expected a folder)",
        ),
        (
            ["--predictions_dir", "{tmp}/" + "p" * 300],
            "--predictions_dir {tmp}/" + "p" * 300 + ": cannot be checked (File name too long)",
        ),
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


def saved_dataset(folder, label_value=None, bad_label_at=None):
    """Three demo validation samples saved to disk; every label ``label_value`` / one sample's label out of range."""
    from datasets import DatasetDict, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    rows = make_demo_dataset(num_train=1, num_validation=3)["validation"]
    images, labels = [], []
    for index, sample in enumerate(rows):
        label = np.array(sample["label"])
        if label_value is not None:
            label[:] = label_value
        if index == bad_label_at:
            label[0, 0] = 9  # the model has 4 classes
        images.append(sample["image"])
        labels.append(Image.fromarray(label.astype(np.uint8)))
    features = Features({"image": ImageFeature(), "label": ImageFeature()})
    split = rows.from_dict({"image": images, "label": labels}, features=features)
    DatasetDict({"validation": split}).save_to_disk(folder, num_shards={"validation": 1})
    return folder


def test_a_missing_column_is_one_error_line_before_any_prediction(saved_model, tmp_path):
    from hf_semseg.training import exit_on_user_error

    folder, _ = saved_model
    data = saved_dataset(tmp_path / "data")
    script = load_script()
    predictions = tmp_path / "predictions"
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        script.main(["--model", str(folder), "--dataset_name", str(data), "--label_column", "annotation",
                     "--predictions_dir", str(predictions)])  # fmt: skip
    assert str(exit_info.value) == (
        f"error: --label_column annotation: split 'validation' of {data} has no such column (its columns: "
        "['image', 'label'])"
    )  # a KeyError traceback from the first sample before, after the predictions folder was made
    assert not predictions.exists()


def test_a_failed_evaluation_leaves_no_partial_predictions(saved_model, tmp_path):
    from hf_semseg.training import exit_on_user_error

    folder, _ = saved_model
    data = saved_dataset(tmp_path / "data", bad_label_at=2)
    script = load_script()
    predictions = tmp_path / "predictions"
    arguments = ["--model", str(folder), "--dataset_name", str(data), "--predictions_dir", str(predictions)]
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        script.main(arguments)
    # the split named (images stored as bytes in the saved dataset: no file to name)
    assert str(exit_info.value) == "error: split 'validation' sample 2: label values [9] are outside [0, 4) and 255"
    # the first two samples' PNGs were left in the folder
    assert not predictions.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["data"]
    predictions.mkdir()
    (predictions / "earlier.txt").write_text("kept")
    with pytest.raises(SystemExit), exit_on_user_error():
        script.main(arguments)
    assert [path.name for path in predictions.iterdir()] == ["earlier.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "predictions"]


def test_metrics_without_a_value_are_json_null(saved_model, tmp_path, capsys):
    """One class everywhere: no boundary band, so the trimap mIoU is NaN, printed as the non-standard NaN before."""
    folder, _ = saved_model
    data = saved_dataset(tmp_path / "data", label_value=1)
    summary = load_script().main(["--model", str(folder), "--dataset_name", str(data)])
    printed = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert summary["trimap_mean_iou"] is None and printed["trimap_mean_iou"] is None
    assert isinstance(printed["mean_iou"], float) and printed["mean_iou"] == summary["mean_iou"]


def test_modes_without_a_protocol_for_the_family_are_refused():
    from argparse import Namespace

    from test_modeling_semask_mask2former import tiny_config as mask2former_config
    from transformers import SegformerImageProcessor

    from hf_semseg.training import RunOptionError

    script = load_script()
    mask2former = hf_semseg.SeMaskMask2FormerForSemanticSegmentation(mask2former_config())
    processor = hf_semseg.SeMaskMask2FormerImageProcessor()
    with pytest.raises(RunOptionError, match=r"^--mode slide: SeMaskMask2FormerForSemanticSegmentation classifies"):
        script.check_mode(Namespace(mode="slide"), mask2former, processor)
    script.check_mode(Namespace(mode="multi_scale"), mask2former, processor)
    with pytest.raises(RunOptionError, match=r"^--mode multi_scale: .* SegformerImageProcessor is not an hf-semseg"):
        script.check_mode(Namespace(mode="multi_scale"), mask2former, SegformerImageProcessor())


def test_a_saved_single_dataset_is_named_by_its_type_not_its_rows(saved_model, tmp_path):
    """A ``Dataset`` saved alone: the split check compared the split name with its rows, and the error listed every
    row with its decoded images."""
    from hf_semseg.training import exit_on_user_error

    folder, _ = saved_model
    make_demo_dataset(1, 2)["validation"].save_to_disk(tmp_path / "single")
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        load_script().main(["--model", str(folder), "--dataset_name", str(tmp_path / "single")])
    assert str(exit_info.value) == (
        f"error: --dataset_name {tmp_path / 'single'}: holds one Dataset of 2 rows, not splits (expected a DatasetDict "
        "with a split 'validation' (--split), e.g. DatasetDict(train=..., validation=...))"
    )


def test_predictions_of_an_earlier_run_do_not_stay_mixed_with_a_new_run(saved_model, tmp_path):
    """A second run over fewer samples into the same folder kept the first run's later samples beside its own."""
    folder, _ = saved_model
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    (predictions / "notes.txt").write_text("kept")
    script = load_script()
    script.main(["--model", str(folder), "--max_samples", "3", "--predictions_dir", str(predictions)])
    assert len(list(predictions.glob("0000[0-2]_*.png"))) == 6
    script.main(["--model", str(folder), "--max_samples", "1", "--predictions_dir", str(predictions)])
    assert sorted(path.name for path in predictions.iterdir()) == ["00000_mask.png", "00000_overlay.png", "notes.txt"]


def test_a_write_failure_is_one_line_and_removes_the_folders_it_made(saved_model, tmp_path, monkeypatch):
    """A full disk or a file-size limit while the PNGs were written: an OSError traceback, and the parent folders
    the run had made stayed."""
    from hf_semseg.training import exit_on_user_error

    folder, _ = saved_model
    script = load_script()

    class FullDisk:
        def save(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(script, "colorize", lambda *args: FullDisk())
    predictions = tmp_path / "new1" / "new2" / "predictions"
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        script.main(["--model", str(folder), "--max_samples", "1", "--predictions_dir", str(predictions)])
    assert (
        str(exit_info.value) == f"error: --predictions_dir {predictions}: cannot be written (No space left on device)"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_any_precision_model_is_evaluated_and_reported_at_its_width(saved_model, tmp_path, capsys):
    """``--weight_bits B`` evaluates at B bits (a float model quantised first); the summary says the width it measured,
    also where the folder's own width decided it (a folder saved after ``set_weight_bits(2)`` evaluates at 2 bits,
    which the output did not say); a float model's summary has no width."""
    folder, model = saved_model
    script = load_script()
    arguments = ["--max_samples", "2"]
    float_summary = script.main(["--model", str(folder), *arguments])
    assert "weight_bits" not in float_summary
    two_bits = script.main(["--model", str(folder), *arguments, "--weight_bits", "2"])
    assert two_bits["weight_bits"] == 2 and two_bits["mean_iou"] != float_summary["mean_iou"]
    saved_at_two = tmp_path / "two_bits"
    quantised = copy.deepcopy(model).to_any_precision([8, 4, 2]).set_weight_bits(2)
    quantised.save_pretrained(saved_at_two)
    hf_semseg.KeepRatioImageProcessor(size={"longest_edge": 224, "shortest_edge": 160}).save_pretrained(saved_at_two)
    capsys.readouterr()
    own_width = script.main(["--model", str(saved_at_two), *arguments])
    assert own_width["weight_bits"] == 2 and json.loads(capsys.readouterr().out)["weight_bits"] == 2
    assert own_width["mean_iou"] == two_bits["mean_iou"]
    assert script.main(["--model", str(saved_at_two), *arguments, "--weight_bits", "8"])["weight_bits"] == 8
