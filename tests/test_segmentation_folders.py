"""Image-and-label-map folders (hf_semseg.segmentation_folders): the layouts, the pairing, the errors, and a training
run on such a folder. Before, a folder that was neither a ``save_to_disk`` folder nor parquet went to ``datasets``'
``imagefolder``, a classification builder: the label column held class numbers of subfolders."""

import numpy as np
import pytest
from PIL import Image
from script_helpers import load_example

from hf_semseg.segmentation_folders import SegmentationFolderError, load_image_folders
from hf_semseg.training import RunOptionError, load_splits

from conftest import REPO_ROOT


def write_image(path, seed, size=(24, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_label(path, seed, size=(24, 32), classes=3):
    """A label map whose values are (seed + row) % classes: each file's content tells which it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = (np.arange(size[0])[:, None] + seed) % classes
    label = np.broadcast_to(rows, size).astype(np.uint8)
    Image.fromarray(label).save(path)
    return label


def ade_layout(root, with_test=True):
    """ADE20K's layout: images/{training,validation} (jpg) and annotations/{training,validation} (png); a test split
    of images only."""
    labels = {}
    for split, names in (("training", ["a", "b", "c"]), ("validation", ["d"])):
        for seed, name in enumerate(names):
            write_image(root / "images" / split / f"{name}.jpg", seed)
            labels[split, name] = write_label(root / "annotations" / split / f"{name}.png", seed + len(labels))
    if with_test:
        write_image(root / "images" / "testing" / "e.jpg", 9)
    return labels


def test_ade20k_layout_pairs_every_image_with_its_label_map(tmp_path):
    labels = ade_layout(tmp_path)
    dataset = load_image_folders(tmp_path)
    assert sorted(dataset) == ["train", "validation"]  # the test split has no label maps: left out
    assert dataset["train"].num_rows == 3 and dataset["validation"].num_rows == 1
    for split, folder in (("train", "training"), ("validation", "validation")):
        for row in dataset[split]:
            name = [key for key in labels if key[0] == folder and row["image"].filename.endswith(f"/{key[1]}.jpg")]
            assert len(name) == 1
            assert row["label"].filename.endswith(f"annotations/{folder}/{name[0][1]}.png")
            np.testing.assert_array_equal(np.asarray(row["label"]), labels[name[0]])
            assert row["image"].size == (32, 24)


def test_mmseg_layout_with_nested_folders_and_val_split(tmp_path):
    write_image(tmp_path / "img_dir" / "train" / "city" / "x.png", 0)
    write_label(tmp_path / "ann_dir" / "train" / "city" / "x.png", 0)
    write_image(tmp_path / "img_dir" / "val" / "y.jpeg", 1)
    expected = write_label(tmp_path / "ann_dir" / "val" / "y.png", 1)
    dataset = load_image_folders(tmp_path)
    assert sorted(dataset) == ["train", "validation"]
    np.testing.assert_array_equal(np.asarray(dataset["validation"][0]["label"]), expected)


def test_flat_folders_make_one_train_split(tmp_path):
    for seed, name in enumerate(["p", "q"]):
        write_image(tmp_path / "images" / f"{name}.jpg", seed)
        write_label(tmp_path / "masks" / f"{name}.png", seed)
    dataset = load_image_folders(tmp_path)
    assert list(dataset) == ["train"] and dataset["train"].num_rows == 2


def cityscapes_layout(root, train_ids=True):
    base = "aachen_000000_000019"
    write_image(root / "leftImg8bit" / "train" / "aachen" / f"{base}_leftImg8bit.png", 0)
    folder = root / "gtFine" / "train" / "aachen"
    write_label(folder / f"{base}_gtFine_labelIds.png", 5, classes=34)
    write_image(folder / f"{base}_gtFine_color.png", 6)
    return write_label(folder / f"{base}_gtFine_labelTrainIds.png", 1, classes=19) if train_ids else None


def test_cityscapes_layout_reads_the_train_id_label_maps(tmp_path):
    expected = cityscapes_layout(tmp_path)
    dataset = load_image_folders(tmp_path)
    assert list(dataset) == ["train"] and dataset["train"].num_rows == 1
    row = dataset["train"][0]
    assert row["label"].filename.endswith("aachen_000000_000019_gtFine_labelTrainIds.png")
    np.testing.assert_array_equal(np.asarray(row["label"]), expected)


def test_cityscapes_without_train_ids_names_the_script_that_writes_them(tmp_path):
    cityscapes_layout(tmp_path, train_ids=False)
    with pytest.raises(SegmentationFolderError, match=r"no \*_gtFine_labelTrainIds\.png .* createTrainIdLabelImgs"):
        load_image_folders(tmp_path)


def test_cityscapes_missing_a_label_map_its_label_ids_do_not_explain_is_named(tmp_path):
    """Without the image's ``*_gtFine_labelIds.png`` either, the train-id script is not the fix: the missing file is
    named as in every other layout."""
    cityscapes_layout(tmp_path, train_ids=False)
    next((tmp_path / "gtFine").rglob("*_gtFine_labelIds.png")).unlink()
    with pytest.raises(
        SegmentationFolderError,
        match=r"1 image\(s\) without a label map: \S*aachen_000000_000019_"
        r"leftImg8bit\.png has no \S*aachen_000000_000019_gtFine_labelTrainIds\.png$",
    ):
        load_image_folders(tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing_label", r"1 image\(s\) without a label map: \S*images/training/b\.jpg has no \S*training/b\.png"),
        ("orphan_label", r"1 label map\(s\) without an image: \S*annotations/training/z\.png has no image in "),
        ("shared_label", r"\S*training/a\.jpg and \S*training/a\.png share the label map \S*training/a\.png"),
        ("two_train_splits", r"split folders 'train' and 'training' are both split 'train'"),
        ("class_folders", r"not a segmentation dataset folder \(expected a save_to_disk folder, .*images/ with "),
        # (the label folders named first: "no split folder of images/ has a label-map folder of the same name" before)
        ("no_paired_split", r"label-map folder 'train-old' has no image folder of the same name in \S*images \(its "),
        ("empty_split", r"\S*images/training: no image files"),
    ],
)
def test_folders_that_do_not_pair_name_the_files(tmp_path, damage, message):
    ade_layout(tmp_path, with_test=False)
    training = tmp_path / "images" / "training"
    if damage == "missing_label":
        (tmp_path / "annotations" / "training" / "b.png").unlink()
    elif damage == "orphan_label":
        write_label(tmp_path / "annotations" / "training" / "z.png", 0)
    elif damage == "shared_label":
        write_image(training / "a.png", 3)
    elif damage == "two_train_splits":
        write_image(tmp_path / "images" / "train" / "f.jpg", 0)
        write_label(tmp_path / "annotations" / "train" / "f.png", 0)
    elif damage == "class_folders":
        tmp_path = tmp_path / "classes"
        write_image(tmp_path / "cat" / "1.jpg", 0)
        write_image(tmp_path / "dog" / "2.jpg", 1)
    elif damage == "no_paired_split":
        (tmp_path / "annotations" / "training").rename(tmp_path / "annotations" / "train-old")
        (tmp_path / "annotations" / "validation").rename(tmp_path / "annotations" / "val-old")
    elif damage == "empty_split":
        for path in training.iterdir():
            path.unlink()
        for path in (tmp_path / "annotations" / "training").iterdir():
            path.unlink()
    with pytest.raises(SegmentationFolderError, match=message):
        load_image_folders(tmp_path)


def test_load_splits_reads_a_folder_and_names_it_in_errors(tmp_path):
    ade_layout(tmp_path / "ade")
    train, evaluation = load_splits(str(tmp_path / "ade"), max_train_samples=2)
    assert (train.num_rows, evaluation.num_rows) == (2, 1)
    assert train["sample_index"] == [0, 1]
    (tmp_path / "plain").mkdir()
    write_image(tmp_path / "plain" / "x.jpg", 0)
    with pytest.raises(RunOptionError, match=r"--dataset_name \S*plain: \S*plain: not a segmentation dataset folder"):
        load_splits(str(tmp_path / "plain"))


def test_trainer_script_trains_and_evaluates_on_an_ade20k_folder(tmp_path):
    """The training script on a folder in ADE20K's layout (labels reduced as the ADE20K variants do: 0 is ignored)."""
    ade_layout(tmp_path / "ade")
    script = load_example(REPO_ROOT / "examples" / "run_semantic_segmentation.py")
    overrides = '{"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "decoder_hidden_size": 16}'
    metrics = script.main(
        [
            "--output_dir", str(tmp_path / "out"), "--dataset_name", str(tmp_path / "ade"),
            "--variant", "semask-fpn-tiny-ade20k", "--config_overrides", overrides, "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--crop_size", "32", "--scale", "32", "24", "--num_predictions", "0",
        ]
    )  # fmt: skip
    # the validation label map holds raw classes 0, 1 and 2 in rows: reduced as ADE20K's, 0 is ignored and 1, 2 are
    # wall and building, the only classes whose IoU is defined whatever the model predicts
    assert 0.0 <= metrics["eval_iou_wall"] <= 1.0 and 0.0 <= metrics["eval_iou_building"] <= 1.0
    assert (tmp_path / "out" / "config.json").is_file()


def test_split_subfolders_linked_in_are_read(tmp_path):
    """``Path.rglob`` does not follow links to folders: Cityscapes city folders linked in (a subset made of links)
    were left out silently; mmseg's scandir follows them."""
    import os

    for split in ("train", "val"):
        for city, seed in (("aachen", 0), ("bremen", 1)):
            store = tmp_path / "store" / split / city
            write_image(store / "img" / f"{city}_000000_000019_leftImg8bit.png", seed)
            write_label(store / "gt" / f"{city}_000000_000019_gtFine_labelTrainIds.png", seed)
            for kind, part in (("leftImg8bit", "img"), ("gtFine", "gt")):
                (tmp_path / "data" / kind / split).mkdir(parents=True, exist_ok=True)
                os.symlink(store / part, tmp_path / "data" / kind / split / city)
    train_images = tmp_path / "data" / "leftImg8bit" / "train"
    os.symlink(train_images, train_images / "aachen" / "loop")  # a link back up the tree: read once
    dataset = load_image_folders(tmp_path / "data")
    assert dataset["train"].num_rows == 2 and dataset["validation"].num_rows == 2  # 1 and 1 before; no loop either
    for row in dataset["train"]:
        city = row["image"].filename.split("/")[-2]
        np.testing.assert_array_equal(np.asarray(row["label"])[:3, 0], [0, 1, 2] if city == "aachen" else [1, 2, 0])


def test_images_beside_split_folders_and_hidden_files(tmp_path):
    """An image directly in images/ beside training/ and validation/ made one train split of every split's files
    (the validation images trained on); macOS ``._a.jpg`` files were paired as images and failed to decode."""
    ade_layout(tmp_path, with_test=False)
    write_image(tmp_path / "images" / "training" / "._a.jpg", 5)
    (tmp_path / "annotations" / "training" / ".DS_Store").write_bytes(b"\0")
    # files that are no images, or hidden, beside the split folders are not images beside them
    (tmp_path / "images" / "README.txt").write_text("ADE20K")
    write_image(tmp_path / "images" / ".thumbnail.jpg", 6)
    dataset = load_image_folders(tmp_path)
    assert dataset["train"].num_rows == 3 and dataset["validation"].num_rows == 1
    write_image(tmp_path / "images" / "extra.jpg", 7)
    write_label(tmp_path / "annotations" / "extra.png", 7)
    with pytest.raises(SegmentationFolderError) as error:
        load_image_folders(tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'images'}: holds images itself (extra.jpg) beside split folders (training, validation); move "
        "them into a split folder or remove them"
    )


def test_a_split_with_an_empty_label_folder_is_left_out_as_one_without(tmp_path):
    """An empty annotations/testing beside images/testing refused the whole dataset ("1 image(s) without a label
    map"), train and validation included; it is left out as ADE20K's test release without label maps is."""
    ade_layout(tmp_path)
    (tmp_path / "annotations" / "testing").mkdir()
    (tmp_path / "annotations" / "testing" / ".DS_Store").write_bytes(b"\0")
    dataset = load_image_folders(tmp_path)
    assert sorted(dataset) == ["train", "validation"]


def test_dataset_names_that_are_no_folder_say_so(tmp_path):
    """An empty name (an unset shell variable) searched the whole current tree (the repository's .venv included) and
    failed on pyarrow's test files; a path that does not exist was "not reachable on the Hub"; a parquet file given
    itself was "no data file found"; a stray parquet file in a tool's hidden folder made an image folder load as
    parquet; a folder of both is refused, naming a parquet file."""
    from hf_semseg.training import load_segmentation_dataset

    with pytest.raises(RunOptionError, match=r"^--dataset_name '': empty \(expected a folder, or a Hub dataset id\)$"):
        load_segmentation_dataset("")
    with pytest.raises(RunOptionError, match=r"^--dataset_name \./typo_folder: no such folder$"):
        load_segmentation_dataset("./typo_folder")
    (tmp_path / "train.parquet").write_bytes(b"PAR1")
    with pytest.raises(RunOptionError, match=r"train\.parquet: is a file \(expected a folder: of parquet files, "):
        load_segmentation_dataset(str(tmp_path / "train.parquet"))
    root = tmp_path / "ade"
    ade_layout(root)
    (root / ".cache").mkdir()
    (root / ".cache" / "export-train.parquet").write_bytes(b"PAR1")
    dataset = load_segmentation_dataset(str(root))
    assert {split: rows.num_rows for split, rows in dataset.items()} == {"train": 3, "validation": 1}
    (root / "export-train.parquet").write_bytes(b"PAR1")
    with pytest.raises(RunOptionError, match=r"holds both parquet files \(\S+export-train\.parquet\) and a folder of"):
        load_segmentation_dataset(str(root))


def test_a_label_folder_without_an_image_folder_of_its_name_is_named(tmp_path):
    """images/val beside annotations/validation: the image folder was read as an unlabelled test split and left out,
    and the run failed later with "has no split 'validation'; it has ['train']"."""
    ade_layout(tmp_path, with_test=False)
    (tmp_path / "images" / "validation").rename(tmp_path / "images" / "val")
    with pytest.raises(
        SegmentationFolderError,
        match=r"annotations: label-map folder 'validation' has no image folder of the same name in \S+images \(its "
        r"folders: training, val\); name the image and label folders of a split alike$",
    ):
        load_image_folders(tmp_path)
