import numpy as np

from hf_semseg.demo_data import DEMO_CLASSES, colorize, generate_scene, make_demo_dataset


def test_scenes_are_deterministic_and_hold_every_class():
    image, labels = generate_scene(96, 128, seed=5)
    again, labels_again = generate_scene(96, 128, seed=5)
    assert np.array_equal(np.array(image), np.array(again)) and np.array_equal(labels, labels_again)
    assert image.mode == "RGB" and image.size == (128, 96) and labels.shape == (96, 128)
    assert set(np.unique(labels)) == set(range(len(DEMO_CLASSES)))
    other, _ = generate_scene(96, 128, seed=6)
    assert not np.array_equal(np.array(image), np.array(other))
    # each class has its own colour on average: the task is learnable
    means = [np.array(image)[labels == c].mean(0) for c in range(len(DEMO_CLASSES))]
    assert min(np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1 :]) > 30


def test_dataset_splits_and_columns():
    dataset = make_demo_dataset(num_train=3, num_validation=2, height=48, width=64)
    assert {name: len(split) for name, split in dataset.items()} == {"train": 3, "validation": 2}
    sample = dataset["train"][0]
    assert sample["image"].size == sample["label"].size == (64, 48)
    assert sample["label"].mode == "L" and np.array(sample["label"]).max() < len(DEMO_CLASSES)
    again = make_demo_dataset(num_train=3, num_validation=2, height=48, width=64)
    assert np.array_equal(np.array(again["validation"][1]["image"]), np.array(dataset["validation"][1]["image"]))
    assert not np.array_equal(np.array(dataset["train"][0]["image"]), np.array(dataset["validation"][0]["image"]))


def test_colorize_uses_the_palette_and_white_for_ignore():
    colours = np.array(colorize(np.array([[0, 3, 255]], dtype=np.uint8)))
    assert colours[0, 0].tolist() == [40, 40, 40] and colours[0, 1].tolist() == [250, 210, 60]
    assert colours[0, 2].tolist() == [255, 255, 255]


def test_colorize_takes_more_classes_than_a_byte_holds():
    """Ids were cast to 8 bits (class 256 took class 0's colour) and a palette of over 256 colours ended in numpy's
    "negative dimensions" error."""
    palette = np.stack([np.arange(300) % 256, np.arange(300) // 256, np.full(300, 7)], axis=1).astype(np.uint8)
    colours = np.array(colorize(np.array([[0, 256, 299, 300, -1]]), palette))
    assert colours[0].tolist() == [[0, 0, 7], [0, 1, 7], [43, 1, 7], [255, 255, 255], [255, 255, 255]]
