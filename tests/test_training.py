import numpy as np
import pytest
import torch
from datasets import Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image

from hf_semseg.training import make_transform, pad_collate, parameter_groups, with_sample_index
from hf_semseg.transforms import SegmentationTrainTransform


def dataset_with(labels_per_row, sizes=None):
    images, labels = [], []
    for row, values in enumerate(labels_per_row):
        height, width = (sizes or {}).get(row, (8, 8))
        images.append(Image.fromarray(np.full((8, 8, 3), 100, np.uint8)))
        labels.append(Image.fromarray(np.full((height, width), values, np.uint8)))
    features = Features({"image": ImageFeature(), "label": ImageFeature()})
    return with_sample_index(Dataset.from_dict({"image": images, "label": labels}, features=features))


def test_bad_samples_are_named_by_their_row():
    dataset = dataset_with([1, 1, 9])
    dataset.set_transform(make_transform("image", "label", 4, False, None))
    assert dataset[0]["labels"].unique().tolist() == [1]
    with pytest.raises(ValueError, match=r"sample 2: label values \[9\]"):
        dataset[2]
    mismatched = dataset_with([1, 1], sizes={1: (8, 6)})
    mismatched.set_transform(make_transform("image", "label", 4, False, None))
    with pytest.raises(ValueError, match=r"sample 1: image size \(8, 8\) differs from label size \(8, 6\)"):
        mismatched[1]


def test_reduce_labels_and_training_transform_shapes():
    dataset = dataset_with([0, 3])
    augmentation = SegmentationTrainTransform(scale=(8, 8), crop_size=(12, 12), ratio_range=(1.0, 1.0))
    dataset.set_transform(make_transform("image", "label", 4, True, augmentation))
    first, second = dataset[0], dataset[1]
    assert first["pixel_values"].shape == (3, 12, 12) and first["labels"].shape == (12, 12)
    assert set(first["labels"].unique().tolist()) == {255}  # label 0 is reduced to ignore, padding is 255
    assert set(second["labels"].unique().tolist()) == {2, 255}


def test_pad_collate_pads_with_zero_and_ignore():
    batch = pad_collate(
        [
            {"pixel_values": torch.ones(3, 4, 5), "labels": torch.zeros(4, 5, dtype=torch.long)},
            {"pixel_values": torch.ones(3, 6, 3), "labels": torch.ones(6, 3, dtype=torch.long)},
        ]
    )
    assert batch["pixel_values"].shape == (2, 3, 6, 5) and batch["labels"].shape == (2, 6, 5)
    assert batch["pixel_values"][0, :, 4:].abs().sum() == 0 and (batch["labels"][0, 4:] == 255).all()
    assert (batch["labels"][1, :, 3:] == 255).all()


def test_parameter_groups_exclude_norms_and_decay_layers():
    from test_modeling_semask_swin import tiny_config

    from hf_semseg import SeMaskSwinForSemanticSegmentation

    model = SeMaskSwinForSemanticSegmentation(tiny_config())
    groups = parameter_groups(model, weight_decay=0.05, layer_decay=0.5, base_lr=1.0)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for parameter in group["params"]:
            name = names[id(parameter)]
            excluded = parameter.ndim <= 1 or "norm" in name or "relative_position_bias_table" in name
            assert group["weight_decay"] == (0.0 if excluded else 0.05), name
            if name.startswith("decode_head."):
                assert group["lr"] == 1.0
            if name.startswith("backbone.encoder.stages.0."):
                assert group["lr"] == 0.5**4
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
