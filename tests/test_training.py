import re
import shutil
import warnings
from pathlib import Path

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
    # the 8 x 8 image padded after the normalisation, as mmseg's Normalize -> Pad: the mean colour (0), not black
    assert (first["pixel_values"][:, 8:] == 0).all() and (first["pixel_values"][:, :, 8:] == 0).all()
    assert (first["pixel_values"][:, :8, :8] != 0).any()
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


def test_parameter_groups_scale_the_heads_learning_rate():
    from test_modeling_pale import tiny_pale_config

    from hf_semseg import PaleForSemanticSegmentation

    model = PaleForSemanticSegmentation(tiny_pale_config(use_auxiliary_head=True))
    groups = parameter_groups(model, weight_decay=0.05, layer_decay=0.5, base_lr=2.0, head_lr_multiplier=10)
    learning_rates = {}
    for group in groups:
        for parameter in group["params"]:
            learning_rates[id(parameter)] = group["lr"]
    heads = 0
    for name, parameter in model.named_parameters():
        if name.startswith(("decode_head.", "auxiliary_head.")):
            heads += 1
            assert learning_rates[id(parameter)] == 20.0, name
        else:
            assert learning_rates[id(parameter)] < 2.0, name  # backbone stages: layer decay
    assert heads > 0 and any(name.startswith("auxiliary_head.") for name, _ in model.named_parameters())


def augmented(dataset, transform, rows, epoch):
    """``pixel_values`` and ``labels`` of ``rows`` fetched together (one transform call), at ``epoch``."""
    transform.set_epoch(epoch)
    batch = dataset[rows]
    return [(batch["pixel_values"][i], batch["labels"][i]) for i in range(len(rows))]


def test_augmentation_depends_on_seed_epoch_and_sample_index_only():
    """A sample's augmentation must not depend on what else was drawn before (another worker, another process, a run
    resumed half-way through an epoch): only on (seed, epoch, sample index)."""
    import pickle

    from hf_semseg.demo_data import make_demo_dataset

    dataset = with_sample_index(make_demo_dataset(num_train=6, num_validation=1, height=40, width=56)["train"])
    augmentation = SegmentationTrainTransform(scale=(56, 40), crop_size=(32, 32))
    transform = make_transform("image", "label", 4, False, augmentation, seed=5)
    dataset.set_transform(transform)

    reference = augmented(dataset, transform, [0, 1, 2, 3, 4, 5], epoch=1)
    # other batch compositions and orders, after other draws, give every sample the same augmentation
    for rows in ([3], [5, 3, 0], [2, 4, 1]):
        augmented(dataset, transform, [0, 1], epoch=0)  # draws in between must not matter
        for row, (pixels, labels) in zip(rows, augmented(dataset, transform, rows, epoch=1)):
            assert torch.equal(pixels, reference[row][0]) and torch.equal(labels, reference[row][1]), row
    # a copy as a data loader worker gets (pickled) draws the same
    copy = pickle.loads(pickle.dumps(transform))
    raw = dataset.with_format(None)[[4]]  # the row without the transform
    assert torch.equal(copy(raw)["pixel_values"][0], reference[4][0])
    # and the augmentation changes with the epoch, the sample and the seed
    other_epoch = augmented(dataset, transform, [0, 1, 2, 3, 4, 5], epoch=2)
    assert sum(torch.equal(a[0], b[0]) for a, b in zip(reference, other_epoch)) == 0
    assert not torch.equal(reference[0][0], reference[1][0])
    other_seed = make_transform("image", "label", 4, False, augmentation, seed=6)
    dataset.set_transform(other_seed)
    assert not torch.equal(augmented(dataset, other_seed, [0], epoch=1)[0][0], reference[0][0])


def test_training_transform_needs_the_sample_index():
    dataset = dataset_with([1]).remove_columns("sample_index")
    dataset.set_transform(make_transform("image", "label", 4, False, SegmentationTrainTransform(crop_size=(8, 8))))
    with pytest.raises(ValueError, match="no 'sample_index' column"):
        dataset[0]


def test_epoch_callback_follows_trainer_epochs():
    from types import SimpleNamespace

    from hf_semseg.training import EpochCallback

    transform = make_transform("image", "label", 4, False, None)
    callback = EpochCallback(transform)
    args = SimpleNamespace(dataloader_num_workers=0, dataloader_persistent_workers=True)
    callback.on_train_begin(args, None, None)  # persistent workers without workers: fine
    for state_epoch, expected in ((None, 0), (1.0, 1), (1.75, 1), (3.0, 3)):  # fresh, after epoch 0, resumed
        callback.on_epoch_begin(args, SimpleNamespace(epoch=state_epoch), None)
        assert transform.epoch == expected
    with pytest.raises(ValueError, match="persistent_workers"):
        callback.on_train_begin(
            SimpleNamespace(dataloader_num_workers=2, dataloader_persistent_workers=True), None, None
        )


def test_cross_process_batchnorm_is_batchnorm_in_one_process():
    """Converted norms keep weights and buffers (saved models load into BatchNorm2d) and compute what BatchNorm2d
    does without a process group; their cross-process statistics are tested by the 2-process run of
    test_scale_out.py."""
    from hf_semseg.training import CrossProcessBatchNorm2d, convert_sync_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    model[1].running_mean.uniform_()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = torch.randn(2, 3, 8, 8)
    expected = model(inputs)
    model.load_state_dict(reference)
    converted = convert_sync_batchnorm(model)
    assert isinstance(converted[1], CrossProcessBatchNorm2d) and set(converted.state_dict()) == set(reference)
    converted.load_state_dict(reference)
    torch.testing.assert_close(converted(inputs), expected, rtol=0, atol=0)


def test_config_overrides_set_known_attributes_only():
    from hf_semseg.demo_data import demo_model_config
    from hf_semseg.training import apply_config_overrides

    config = apply_config_overrides(demo_model_config(), '{"drop_path_rate": 0.0, "depths": [1, 1, 1, 1]}')
    assert config.drop_path_rate == 0.0 and list(config.depths) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="'no_such_field'"):
        apply_config_overrides(config, '{"no_such_field": 1}')
    with pytest.raises(ValueError, match="JSON object"):
        apply_config_overrides(config, "[1, 2]")


def test_config_overrides_rebuild_the_config_derived_values_and_validation_included():
    """Overrides set as attributes left derived values stale (Pale's ``hidden_sizes`` after ``embed_dim``: the model
    kept 64 channels) and skipped the config's validation (an odd head count silently lost a head)."""
    from hf_semseg.training import RunOptionError, apply_config_overrides
    from hf_semseg.variants import variant_config

    config = apply_config_overrides(variant_config("pale-tiny"), '{"embed_dim": 32, "depths": [1, 1, 2, 1]}')
    assert (config.embed_dim, config.hidden_sizes, config.hidden_size) == (32, [32, 64, 128, 256], 256)
    with pytest.raises(RunOptionError, match=r"no valid PaleConfig \(.*num_heads\[0\] = 3 must be even"):
        apply_config_overrides(variant_config("pale-tiny"), '{"num_heads": [3, 4, 8, 16]}')
    with pytest.raises(RunOptionError, match="'hidden_sizes': PaleConfig derives it from its other attributes"):
        apply_config_overrides(variant_config("pale-tiny"), '{"hidden_sizes": [32, 64, 128, 256]}')
    with pytest.raises(RunOptionError, match=r"no valid VWFormerConfig \("):
        apply_config_overrides(variant_config("vwformer-convnext-tiny-ade20k"), '{"decoder_hidden_size": 100}')


@pytest.mark.parametrize(
    "variant",
    [
        "semask-fpn-tiny-ade20k",
        "pale-tiny-upernet-ade20k",
        "vwformer-swin-base-ade20k",
        "semask-mask2former-large-ade20k",
        "vw-maskformer-swin-tiny-ade20k",
    ],
)
def test_config_overrides_leave_every_other_value_as_it_was(variant):
    from hf_semseg.training import apply_config_overrides
    from hf_semseg.variants import variant_config

    config = variant_config(variant)
    config.auto_map = {"AutoConfig": "configuration_x.XConfig"}  # set when saved with its code: not derived, kept
    rebuilt = apply_config_overrides(config, {"output_hidden_states": True})
    assert rebuilt.output_hidden_states and type(rebuilt) is type(config)
    assert {**rebuilt.to_dict(), "output_hidden_states": False} == config.to_dict()


def test_streaming_mean_iou_ignores_the_label_padding_of_trainer_gathers():
    """Trainer pads labels of different processes to one size with -100 before gathering: those pixels are ignored."""
    from transformers import EvalPrediction

    from hf_semseg.training import StreamingMeanIoU

    metric = StreamingMeanIoU(2, {0: "a", 1: "b"})
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, :, 1] = 1.0  # predicts class 0 in column 0, class 1 in column 1
    labels = torch.tensor([[[0, 1], [-100, -100]]])
    assert metric(EvalPrediction(predictions=logits, label_ids=labels), compute_result=False) == {}
    result = metric(EvalPrediction(predictions=logits, label_ids=labels), compute_result=True)
    assert result["mean_iou"] == 1.0 and result["iou_b"] == 1.0 and result["overall_accuracy"] == 1.0


def test_data_settings_are_the_variant_facts_unless_given():
    from hf_semseg.training import DEMO_SCALE, resolve_data_settings

    assert resolve_data_settings(None) == resolve_data_settings(None, None, None)
    demo = resolve_data_settings(None)
    assert (demo.scale, demo.reduce_labels, demo.size_divisor) == (DEMO_SCALE, False, None)
    assert resolve_data_settings(None, [448, 320], True).scale == (448, 320)
    ade = resolve_data_settings("vwformer-convnext-base-ade20k")
    assert (ade.scale, ade.reduce_labels, ade.size_divisor) == ((2560, 640), True, 64)
    explicit = resolve_data_settings("vwformer-convnext-base-ade20k", [1024, 256], False)
    assert (explicit.scale, explicit.reduce_labels, explicit.size_divisor) == ((1024, 256), False, 64)
    city = resolve_data_settings("semask-fpn-tiny-cityscapes", None, None)
    assert (city.scale, city.reduce_labels) == ((2048, 1024), False)
    with pytest.raises(ValueError, match="two numbers"):
        resolve_data_settings(None, [512])
    # finetuning a saved model: its processor's settings unless given (a variant wins over them)
    saved = {"size": {"longest_edge": 2048, "shortest_edge": 512}, "do_reduce_labels": True, "size_divisor": 32}
    finetuned = resolve_data_settings(None, None, None, saved)
    assert (finetuned.scale, finetuned.reduce_labels, finetuned.size_divisor) == ((2048, 512), True, 32)
    assert resolve_data_settings(None, [640, 480], False, saved).scale == (640, 480)
    assert resolve_data_settings(None, [640, 480], False, saved).reduce_labels is False
    with pytest.raises(ValueError, match="not a keep-ratio scale"):  # the demo scale, silently, before
        resolve_data_settings(None, None, None, {"size": {"height": 512, "width": 512}})
    with pytest.raises(KeyError, match="unknown variant"):
        resolve_data_settings("semask-fpn-huge-ade20k")


def test_processor_is_the_model_family_processor():
    from hf_semseg import KeepRatioImageProcessor, SeMaskMask2FormerImageProcessor
    from hf_semseg.training import build_processor

    mask2former = build_processor((2048, 1024), False, "semask_mask2former")
    assert type(mask2former) is SeMaskMask2FormerImageProcessor
    assert dict(mask2former.size) == {"longest_edge": 2048, "shortest_edge": 1024}
    keep_ratio = build_processor((2560, 640), True, "vwformer", size_divisor=64)
    assert type(keep_ratio) is KeepRatioImageProcessor and keep_ratio.size_divisor == 64 and keep_ratio.do_reduce_labels
    assert type(build_processor((224, 160), False)) is KeepRatioImageProcessor  # the demo model, no family given
    # the VW detectron2 models pad to 64: their processor was saved with the default 32
    vw = build_processor((2048, 512), True, "vw_mask2former", size_divisibility=64)
    assert type(vw) is SeMaskMask2FormerImageProcessor and vw.size_divisibility == 64
    assert build_processor((2048, 512), True, "semask_swin", size_divisibility=64).size_divisor is None  # no padding


def test_streaming_miou_crops_the_logits_of_a_padding_model():
    """SeMask-Mask2Former's logits cover its input padded to a multiple of 32; stretching them over the labels (as
    before) mixed the padding's scores into the image."""
    from transformers import EvalPrediction

    from hf_semseg.training import StreamingMeanIoU

    labels = torch.zeros(1, 6, 5, dtype=torch.long)
    labels[..., 3:] = 1  # class 1 in the right columns
    logits = torch.zeros(1, 2, 8, 8)  # stride 1 over the 8 x 8 padded input
    logits[:, 1, :6, 3:5] = 5.0  # the image: right columns class 1
    logits[:, 1, :, 5:] = 9.0  # the padding on the right: class 1 everywhere
    logits[:, 1, 6:, :] = 9.0  # the padding at the bottom
    cropped = StreamingMeanIoU(2, padded_input_size=lambda size: tuple(side + -side % 8 for side in size))
    assert cropped(EvalPrediction(logits.numpy(), labels.numpy()), compute_result=True)["mean_iou"] == 1.0
    stretched = StreamingMeanIoU(2)
    assert stretched(EvalPrediction(logits.numpy(), labels.numpy()), compute_result=True)["mean_iou"] < 0.8


def test_layer_decay_keeps_every_backbone_stage_below_the_heads():
    """VWFormer's stages 2 and 3 got 1.11x and 1.23x the head's rate (its config has no depths, so one stage was
    assumed); SeMask-Mask2Former's backbone got no decay at all (it is not named backbone.*)."""
    from test_modeling_semask_mask2former import tiny_config as mask2former_config
    from test_modeling_vwformer import tiny_swin, tiny_vwformer_config

    from hf_semseg import SeMaskMask2FormerForSemanticSegmentation, VWFormerForSemanticSegmentation

    for model, backbone_prefix, stage_pattern in (
        (
            VWFormerForSemanticSegmentation(tiny_vwformer_config(tiny_swin())),
            "backbone.",
            "backbone.swin.encoder.layers.{}.",
        ),
        (
            SeMaskMask2FormerForSemanticSegmentation(mask2former_config()),
            "model.pixel_level_module.encoder.",
            "model.pixel_level_module.encoder.encoder.stages.{}.",
        ),
    ):
        groups = parameter_groups(model, weight_decay=0.05, layer_decay=0.5, base_lr=1.0)
        rates = {id(parameter): group["lr"] for group in groups for parameter in group["params"]}
        for name, parameter in model.named_parameters():
            if name.startswith(backbone_prefix):
                assert rates[id(parameter)] <= 0.5, (name, rates[id(parameter)])
                stages = [stage for stage in range(4) if name.startswith(stage_pattern.format(stage))]
                if stages:  # stage i of 4 at 0.5 ** (4 - i)
                    assert rates[id(parameter)] == 0.5 ** (4 - stages[0]), name
                elif ".embeddings." in name:  # the patch embedding below every stage: 0.5 ** 4
                    assert rates[id(parameter)] == 0.5**4, name
            else:
                assert rates[id(parameter)] == 1.0, name


def truncated_png(path, size=(16, 24)) -> None:
    """A PNG cut in the middle of its pixel data (a download or copy that stopped)."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_an_unreadable_file_is_named_with_its_sample(tmp_path):
    """datasets decodes a truncated PNG before any transform sees it and ends in PIL's 'image file is truncated'
    without naming the file or the sample; the run's datasets are left undecoded and the transform names both."""
    from hf_semseg.training import DatasetSampleError, to_arrays, without_image_decoding

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(good)
    truncated_png(bad)
    label = tmp_path / "label.png"
    Image.fromarray(np.ones((16, 24), np.uint8)).save(label)
    features = Features({"image": ImageFeature(), "label": ImageFeature()})
    rows = {"image": [str(good), str(bad)], "label": [str(label), str(label)]}
    dataset = with_sample_index(Dataset.from_dict(rows, features=features))
    with pytest.raises(OSError, match="truncated"):  # what datasets itself does
        dataset[1]
    dataset = without_image_decoding(dataset, ("image", "label"))
    dataset.set_transform(make_transform("image", "label", 4, False, None))
    assert dataset[0]["labels"].unique().tolist() == [1]
    with pytest.raises(DatasetSampleError, match=rf"^sample 1: image {bad} cannot be read \(.*truncated"):
        dataset[1]
    # the label column is named too, and a sample without a path is named by its row
    with pytest.raises(DatasetSampleError, match=r"^sample 7: label bytes in the dataset cannot be read"):
        to_arrays(np.zeros((16, 24, 3), np.uint8), {"path": None, "bytes": bad.read_bytes()}, 7, 4, False)
    with pytest.raises(DatasetSampleError, match=r"^sample 3: image size \(16, 24\) differs from label size"):
        to_arrays(np.zeros((16, 24, 3), np.uint8), np.zeros((24, 16), np.int64), 3, 4, False)


def test_a_sample_error_ends_a_script_with_one_line():
    from hf_semseg.training import DatasetSampleError, exit_on_user_error

    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        raise DatasetSampleError("sample 4: image a.png cannot be read (image file is truncated)")
    assert str(exit_info.value) == "error: sample 4: image a.png cannot be read (image file is truncated)"
    # as a data loader worker re-raises it: the worker's traceback first, the message on the last line
    worker = "Caught DatasetSampleError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        raise DatasetSampleError(worker + "  File x\nhf_semseg.training.DatasetSampleError: sample 4: bad\n")
    assert str(exit_info.value) == "error: sample 4: bad"
    with pytest.raises(ValueError, match="other"), exit_on_user_error():  # other errors pass through
        raise ValueError("other")


def test_checkpoints_are_published_whole_and_latest_is_the_largest_step(tmp_path):
    from hf_semseg.training import (
        STAGING_FOLDER,
        RunOptionError,
        last_checkpoint,
        publish_checkpoint,
        resolve_checkpoint,
    )

    with pytest.raises(RunOptionError, match=r"latest: no checkpoint-N checkpoint in"):
        last_checkpoint(tmp_path, "checkpoint")
    for name in ("checkpoint-2", "checkpoint-10", "checkpoint-9", "checkpoint-x", "checkpoint-11.tmp", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-12").write_text("a file, not a checkpoint")
    assert last_checkpoint(tmp_path, "checkpoint").name == "checkpoint-10"  # by number, not by name
    # a checkpoint being written is in the staging folder, invisible to latest until it is published
    staged = tmp_path / STAGING_FOLDER / "checkpoint-20"
    staged.mkdir(parents=True)
    (staged / "weights").write_text("new")
    assert last_checkpoint(tmp_path, "checkpoint").name == "checkpoint-10"
    publish_checkpoint(staged, tmp_path / "checkpoint-20")
    assert (tmp_path / "checkpoint-20" / "weights").read_text() == "new"
    assert not (tmp_path / STAGING_FOLDER).exists()  # removed once empty
    assert last_checkpoint(tmp_path, "checkpoint").name == "checkpoint-20"
    # publishing a step again replaces the older folder whole
    staged.mkdir(parents=True)
    (staged / "other").write_text("newer")
    publish_checkpoint(staged, tmp_path / "checkpoint-20")
    assert sorted(p.name for p in (tmp_path / "checkpoint-20").iterdir()) == ["other"]
    # the staging folder stays while another checkpoint is being written in it; another parent folder always stays
    (tmp_path / STAGING_FOLDER / "checkpoint-30").mkdir(parents=True)
    staged.mkdir()
    publish_checkpoint(staged, tmp_path / "checkpoint-21")
    assert [p.name for p in (tmp_path / STAGING_FOLDER).iterdir()] == ["checkpoint-30"]
    (tmp_path / "elsewhere" / "checkpoint-22").mkdir(parents=True)
    publish_checkpoint(tmp_path / "elsewhere" / "checkpoint-22", tmp_path / "checkpoint-22")
    assert (tmp_path / "elsewhere").is_dir() and (tmp_path / "checkpoint-22").is_dir()
    shutil.rmtree(tmp_path / STAGING_FOLDER)
    assert resolve_checkpoint(tmp_path, None, "checkpoint") is None
    assert resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-2"), "checkpoint").name == "checkpoint-2"
    with pytest.raises(RunOptionError, match="step_404: no such folder"):
        resolve_checkpoint(tmp_path, str(tmp_path / "step_404"), "step", "_")
    (tmp_path / "step_3").mkdir()
    assert resolve_checkpoint(tmp_path, "latest", "step", "_").name == "step_3"


def test_a_finetuned_model_keeps_its_saved_pre_processing(tmp_path):
    """The training scripts built the demo scale for --model_name_or_path, so a finetuned converted model (SeMask
    Mask2Former: 2560 x 640) was saved with a 224 x 160 processor; its saved processor is now the default."""
    from hf_semseg import SeMaskMask2FormerImageProcessor
    from hf_semseg.training import build_processor, pretrained_processor_settings, resolve_data_settings

    assert pretrained_processor_settings(str(tmp_path)) is None and pretrained_processor_settings(None) is None
    SeMaskMask2FormerImageProcessor(
        size={"longest_edge": 2560, "shortest_edge": 640}, do_reduce_labels=True
    ).save_pretrained(tmp_path)
    settings = resolve_data_settings(None, None, None, pretrained_processor_settings(str(tmp_path)))
    assert (settings.scale, settings.reduce_labels) == ((2560, 640), True)
    processor = build_processor(settings.scale, settings.reduce_labels, "semask_mask2former", settings.size_divisor)
    saved = type(processor).from_pretrained(tmp_path).to_dict()
    assert type(processor) is SeMaskMask2FormerImageProcessor
    assert processor.to_dict() == {key: value for key, value in saved.items() if key != "auto_map"}


def test_training_evaluation_reports_boundary_metrics_of_each_unpadded_sample():
    """The training scripts' evaluation reports Boundary IoU and trimap mIoU next to mIoU; each sample of a collated
    batch is measured at its own size (the collate padding is not the image's border), so the result equals that of
    the samples measured one by one."""
    from transformers import EvalPrediction

    from hf_semseg.metrics import SegmentationMetrics
    from hf_semseg.training import StreamingMeanIoU

    generator = torch.Generator().manual_seed(0)
    samples = []
    for height, width in ((24, 40), (32, 20)):
        label = torch.randint(0, 3, (height // 4, width // 4), generator=generator)
        label = label.repeat_interleave(4, 0).repeat_interleave(4, 1)  # blocks: boundaries to measure
        label[0, :5] = 255
        logits = torch.randn(3, height, width, generator=generator) + 3 * torch.nn.functional.one_hot(
            label.clamp(max=2), 3
        ).permute(2, 0, 1)
        samples.append({"pixel_values": logits, "labels": label})
    batch = pad_collate(samples)  # logits padded with 0, labels with 255, to 32 x 40
    metric = StreamingMeanIoU(3, {0: "a", 1: "b", 2: "c"})
    result = metric(EvalPrediction(predictions=batch["pixel_values"].numpy(), label_ids=batch["labels"].numpy()), True)
    expected = SegmentationMetrics(3)
    for sample in samples:
        expected.update(sample["pixel_values"].argmax(0), sample["labels"])
    expected = expected.compute()
    for key in ("mean_iou", "mean_boundary_iou", "trimap_mean_iou"):
        assert result[key] == pytest.approx(expected[key], abs=1e-12), key
    assert 0.0 < result["mean_boundary_iou"] < 1.0 and set(result) >= {"iou_a", "iou_b", "iou_c"}
    padded = SegmentationMetrics(3)  # what measuring the padded batch would give instead
    padded.update(batch["pixel_values"].argmax(1), batch["labels"])
    assert padded.compute()["mean_boundary_iou"] != pytest.approx(expected["mean_boundary_iou"])


def test_sample_limits_below_one_and_empty_splits_are_refused(monkeypatch):
    """``--max_train_samples 0`` was read as "no limit" and a negative one emptied the split; a split without samples
    trained on nothing. Each is named now."""
    from datasets import DatasetDict

    from hf_semseg import training

    splits = {"train": Dataset.from_dict({"x": [1, 2, 3]}), "validation": Dataset.from_dict({"x": [4]})}
    monkeypatch.setattr(training, "load_segmentation_dataset", lambda name, demo_sizes: DatasetDict(splits))
    train, evaluation = training.load_splits("d", max_train_samples=2)
    assert len(train) == 2 and len(evaluation) == 1
    for option, limits in (("--max_train_samples 0", (0, None)), ("--max_eval_samples -1", (None, -1))):
        with pytest.raises(training.RunOptionError, match=f"^{option}: expected at least 1 sample"):
            training.load_splits("d", max_train_samples=limits[0], max_eval_samples=limits[1])
    splits["validation"] = Dataset.from_dict({"x": []})
    with pytest.raises(training.RunOptionError, match="^--dataset_name d: split 'validation' has no samples$"):
        training.load_splits("d")


def test_a_saved_dataset_with_an_empty_split_is_named(tmp_path):
    """An empty split of a saved dataset is named: newer ``datasets`` fail on it in ``load_from_disk`` with a bare
    IndexError (the folder is checked before), 3.0 loads it (the split is checked after)."""
    from datasets import DatasetDict

    from hf_semseg import training

    splits = {"train": Dataset.from_dict({"x": [1, 2]}), "validation": Dataset.from_dict({"x": []})}
    DatasetDict(splits).save_to_disk(tmp_path / "saved")
    with pytest.raises(training.RunOptionError, match=r"^--dataset_name \S*saved: split 'validation' has no samples$"):
        training.load_splits(str(tmp_path / "saved"))
    splits["validation"] = Dataset.from_dict({"x": [3]})
    DatasetDict(splits).save_to_disk(tmp_path / "whole")
    assert training.load_segmentation_dataset(str(tmp_path / "whole"))["validation"]["x"] == [3]


def test_a_label_map_in_three_equal_channels_is_read_and_a_colour_coded_one_refused(tmp_path):
    """The first channel of a 3-D label map was taken silently: a colour-coded mask (palette reds 0, 1, 0, 1) became
    two classes. A grey map saved as RGB (equal channels) is read; one whose channels differ is refused, naming the
    split, the sample and the file."""
    from hf_semseg.training import DatasetSampleError, to_arrays

    image = np.zeros((4, 6, 3), np.uint8)
    classes = np.arange(24).reshape(4, 6) % 4
    grey = tmp_path / "grey.png"
    Image.fromarray(np.repeat(classes[..., None], 3, 2).astype(np.uint8)).save(grey)
    _, label = to_arrays(image, {"path": str(grey), "bytes": None}, 0, 4, False)
    assert label.shape == (4, 6) and (label == classes).all()
    palette = np.array([[0, 0, 0], [1, 200, 0], [0, 0, 200], [1, 1, 1]], np.uint8)
    coloured = tmp_path / "coloured.png"
    Image.fromarray(palette[classes]).save(coloured)
    with pytest.raises(DatasetSampleError) as error:
        to_arrays(image, {"path": str(coloured), "bytes": None}, 5, 4, False, split="train")
    assert str(error.value) == (
        f"split 'train' sample 5 (label {coloured}): label has 3 channels that differ (a colour-coded map?); a label "
        "map must hold class ids in one channel (a grey PNG)"
    )


def test_sample_errors_name_the_split_and_the_files(tmp_path):
    """'sample 2: label values [7] ...' named neither the split nor the file of the sample."""
    from hf_semseg.training import DatasetSampleError

    paths = {}
    for column, array in (("image", np.zeros((8, 8, 3), np.uint8)), ("label", np.full((8, 8), 7, np.uint8))):
        paths[column] = tmp_path / f"{column}.png"
        Image.fromarray(array).save(paths[column])
    features = Features({"image": ImageFeature(decode=False), "label": ImageFeature(decode=False)})
    dataset = Dataset.from_dict({key: [str(path)] for key, path in paths.items()}, features=features)
    dataset = with_sample_index(dataset)
    dataset.set_transform(make_transform("image", "label", 4, False, None, split="validation"))
    with pytest.raises(DatasetSampleError) as error:
        dataset[0]
    assert str(error.value) == (
        f"split 'validation' sample 0 (image {paths['image']}, label {paths['label']}): label values [7] are outside "
        "[0, 4) and 255"
    )


def test_a_saved_single_dataset_is_named_by_its_type_not_its_rows(tmp_path):
    """A ``Dataset`` saved alone (no splits): ``'train' in dataset`` compared the name with the rows, and the error
    listed every row with its decoded images; now one short line."""
    from hf_semseg import training
    from hf_semseg.demo_data import make_demo_dataset

    make_demo_dataset(3, 1)["train"].save_to_disk(tmp_path / "single")
    with pytest.raises(training.RunOptionError) as error:
        training.load_splits(str(tmp_path / "single"))
    assert str(error.value) == (
        f"--dataset_name {tmp_path / 'single'}: holds one Dataset of 3 rows, not splits (expected a DatasetDict with "
        "the --train_split and --eval_split splits, e.g. DatasetDict(train=..., validation=...))"
    )


def test_the_demo_classes_decide_its_label_reduction_and_follow_it():
    """With labels reduced, the targets are class - 1 but the model kept the unreduced names (the demo's 'disc'
    pixels named 'background'); and an ADE20K variant's reduction dropped the demo's real background class. The
    demo dataset is reduced only on request, and then its classes are those of the reduced targets."""
    from hf_semseg.training import dataset_reduce_labels, resolve_data_settings, resolve_id2label

    assert resolve_id2label(None, None, None) == {0: "background", 1: "disc", 2: "bar", 3: "triangle"}
    assert resolve_id2label(None, None, None, reduce_labels=True) == {0: "disc", 1: "bar", 2: "triangle"}
    variant = "semask-fpn-tiny-ade20k"  # reduces ADE20K's 0 = "other"
    assert not resolve_data_settings(variant, None, dataset_reduce_labels(None, None)).reduce_labels
    assert resolve_data_settings(variant, None, dataset_reduce_labels("scene_parse_150", None)).reduce_labels
    assert resolve_data_settings(None, None, dataset_reduce_labels(None, True)).reduce_labels


def test_a_folder_that_is_not_a_checkpoint_is_refused_naming_what_one_holds(tmp_path):
    """An existing folder that is no checkpoint ended in Trainer's ValueError or Accelerate's FileNotFoundError."""
    from hf_semseg.training import RunOptionError, resolve_checkpoint

    (tmp_path / "checkpoint-4").mkdir()
    with pytest.raises(RunOptionError) as error:
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-4"), "checkpoint", marker="trainer_state.json")
    assert str(error.value) == (
        f"--resume_from_checkpoint {tmp_path / 'checkpoint-4'}: not a checkpoint folder (a checkpoint-N checkpoint "
        "of this script holds trainer_state.json next to the model weights and the optimizer state)"
    )
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    assert resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-4"), "checkpoint", marker="trainer_state.json")


def test_the_optimizer_is_trainers_choice_over_the_recipe_groups(monkeypatch):
    """--optim was ignored (the script built AdamW itself). The script's default adamw_torch is still exactly that
    AdamW (class, betas, epsilon, groups, not fused); --optim sgd --optim_args is SGD over the same groups; an optimizer that lays out the
    parameters itself is refused."""
    from test_modeling_semask_swin import tiny_config
    from transformers import Trainer, TrainingArguments

    from hf_semseg import SeMaskSwinForSemanticSegmentation
    from hf_semseg.training import RunOptionError, build_optimizer

    model = SeMaskSwinForSemanticSegmentation(tiny_config())
    recipe = {"output_dir": "o", "learning_rate": 1e-3, "weight_decay": 0.01, "adam_beta2": 0.98, "adam_epsilon": 1e-6}

    def groups(optimizer):
        return [
            ({k: v for k, v in g.items() if k != "params"}, [id(p) for p in g["params"]])
            for g in optimizer.param_groups
        ]

    adamw = build_optimizer(model, TrainingArguments(**recipe, optim="adamw_torch"), 0.9, 10.0)
    expected = torch.optim.AdamW(
        parameter_groups(model, 0.01, 0.9, 1e-3, 10.0), lr=1e-3, betas=(0.9, 0.98), eps=1e-6
    )  # what the script built before
    assert type(adamw) is torch.optim.AdamW and groups(adamw) == groups(expected)
    sgd = build_optimizer(model, TrainingArguments(**recipe, optim="sgd", optim_args="momentum=0.9"), 0.9, 10.0)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9
    assert [(g["lr"], g["weight_decay"], ids) for g, ids in groups(sgd)] == [
        (g["lr"], g["weight_decay"], ids) for g, ids in groups(expected)
    ]
    layout = staticmethod(lambda args, model: (torch.optim.AdamW, {"lr": 1.0, "params": []}))
    monkeypatch.setattr(Trainer, "get_optimizer_cls_and_kwargs", layout)
    with pytest.raises(RunOptionError, match=r"^--optim adamw_torch_fused: lays out the parameters itself"):
        build_optimizer(model, TrainingArguments(**recipe))


def test_an_evaluation_only_run_refuses_a_model_of_other_classes(tmp_path):
    """Without training, a pretrained model whose class count differs from the dataset's had its head silently
    re-initialised (``ignore_mismatched_sizes``) and that random head evaluated; a training run still re-initialises
    it, as fine-tuning does."""
    from hf_semseg import SeMaskSwinForSemanticSegmentation
    from hf_semseg.demo_data import DEMO_CLASSES, demo_model_config
    from hf_semseg.training import RunOptionError, build_model

    SeMaskSwinForSemanticSegmentation(demo_model_config()).save_pretrained(tmp_path)
    three = dict(enumerate(DEMO_CLASSES[1:]))
    with pytest.raises(RunOptionError, match=rf"^--model_name_or_path {tmp_path}: has 4 classes, the dataset 3 "):
        build_model(three, str(tmp_path), evaluate_only=True)
    assert build_model(three, str(tmp_path)).config.num_labels == 3  # training: a new head
    assert build_model(dict(enumerate(DEMO_CLASSES)), str(tmp_path), evaluate_only=True).config.num_labels == 4


def test_images_stored_as_arrays_are_read_as_uint8_images(tmp_path):
    """``Array3D`` uint8 images reach the transform as nested lists, which numpy read as int64: the transform's
    "image must be uint8" error (a traceback), and the prediction overlays could not open them."""
    from datasets import Array2D, Array3D
    from test_modeling_semask_swin import tiny_config

    from hf_semseg import SeMaskSwinForSemanticSegmentation
    from hf_semseg.training import normalise, write_predictions

    image = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    features = Features({"image": Array3D((8, 12, 3), "uint8"), "label": Array2D((8, 12), "uint8")})
    rows = {"image": [image], "label": [np.full((8, 12), 2, np.uint8)]}
    dataset = with_sample_index(Dataset.from_dict(rows, features=features))
    dataset.set_transform(make_transform("image", "label", 4, False, None))
    sample = dataset[0]
    torch.testing.assert_close(sample["pixel_values"], normalise(image), rtol=0, atol=0)
    assert sample["labels"].unique().tolist() == [2]
    model = SeMaskSwinForSemanticSegmentation(tiny_config()).eval()
    output = tmp_path / "predictions" / "run"  # folders made as needed
    write_predictions(model, Dataset.from_dict(rows, features=features), "image", output, 1, (64, 32))
    overlay = np.asarray(Image.open(output / "overlay_0.png"), dtype=np.int64)
    prediction = np.asarray(Image.open(output / "prediction_0.png"), dtype=np.int64)
    assert overlay.shape == (8, 12, 3)
    assert np.abs(overlay - (image.astype(np.int64) + prediction) / 2).max() <= 1  # the blend of image and mask
    (output / "prediction_0.png").unlink()
    write_predictions(model, Dataset.from_dict(rows, features=features), "image", output, 1, (64, 32))  # again
    assert np.array_equal(np.asarray(Image.open(output / "prediction_0.png"), dtype=np.int64), prediction)


def test_a_run_needs_only_the_splits_it_uses():
    """An evaluation-only run refused a dataset without a training split, a training-only run one without a
    validation split (transformers' examples need only the split of each phase)."""
    from datasets import DatasetDict

    from hf_semseg import training

    splits = {"validation": Dataset.from_dict({"x": [4, 5]})}
    original = training.load_segmentation_dataset
    try:
        training.load_segmentation_dataset = lambda name, demo_sizes: DatasetDict(splits)
        train, evaluation = training.load_splits("d", needed=(False, True))
        assert train is None and evaluation["x"] == [4, 5] and evaluation["sample_index"] == [0, 1]
        with pytest.raises(training.RunOptionError, match=r"^dataset d has no split 'train'; it has \['validation'\]$"):
            training.load_splits("d")
        splits["train"] = splits.pop("validation")
        train, evaluation = training.load_splits("d", max_train_samples=1, needed=(True, False))
        assert evaluation is None and train["x"] == [4]
    finally:
        training.load_segmentation_dataset = original


def test_a_checkpoint_of_another_model_is_refused_naming_the_tensor(tmp_path):
    """Resuming from the checkpoint of another configuration ended in torch's load_state_dict traceback, after the
    model had loaded and the output folder was made."""
    from safetensors.torch import save_file
    from test_modeling_semask_swin import tiny_config

    from hf_semseg import SeMaskSwinForSemanticSegmentation
    from hf_semseg.training import RunOptionError, check_checkpoint_weights

    model = SeMaskSwinForSemanticSegmentation(tiny_config())
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    save_file(weights, tmp_path / "model.safetensors")
    check_checkpoint_weights(model, tmp_path)  # its own checkpoint
    check_checkpoint_weights(model, None)
    other = SeMaskSwinForSemanticSegmentation(tiny_config(decoder_hidden_size=24))
    with pytest.raises(RunOptionError) as error:
        check_checkpoint_weights(other, tmp_path)
    assert str(error.value) == (
        f"--resume_from_checkpoint {tmp_path}: model.safetensors 'decode_head.classifier.weight' has shape (4, 16, 1, "
        "1), the model's is (4, 24, 1, 1) (a checkpoint of another model or configuration?)"
    )
    save_file({**weights, "head.extra": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(RunOptionError, match=r"model\.safetensors holds 'head\.extra', which SeMaskSwinForSemantic"):
        check_checkpoint_weights(model, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(RunOptionError, match=r"model\.safetensors cannot be read \("):
        check_checkpoint_weights(model, tmp_path)


def test_the_demo_model_has_the_classes_of_its_targets():
    """With ``--do_reduce_labels`` the demo targets are 3 classes (disc, bar, triangle), but the demo model was built
    with its 4 classes, background included, whatever the classes given."""
    from hf_semseg.training import build_model, resolve_id2label

    reduced = build_model(resolve_id2label(None, None, None, reduce_labels=True))
    assert reduced.config.id2label == {0: "disc", 1: "bar", 2: "triangle"}
    assert reduced.config.label2id == {"disc": 0, "bar": 1, "triangle": 2}
    assert reduced.decode_head.classifier.out_channels == 3
    assert build_model(resolve_id2label(None, None, None)).decode_head.classifier.out_channels == 4


def test_a_local_copy_of_a_hub_dataset_with_several_configs_reads_its_default_config(tmp_path, monkeypatch):
    """Every parquet file below the folder was read as one dataset: a multi-config repository's configs were
    concatenated into each split (the Hub, and datasets.load_dataset(folder), read the default config)."""
    from hf_semseg.training import load_segmentation_dataset

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rows = Dataset.from_dict({"x": [0, 1, 2, 3]})
    for config, count in (("full", 4), ("mini", 1)):
        (tmp_path / "repo" / config).mkdir(parents=True)
        for split in ("train", "validation"):
            rows.select(range(count)).to_parquet(str(tmp_path / "repo" / config / f"{split}-00000-of-00001.parquet"))
    card = ["---", "configs:"]
    for config, default in (("full", True), ("mini", False)):
        card += [f"- config_name: {config}", *(["  default: true"] if default else []), "  data_files:"]
        card += [f"  - split: {split}\n    path: {config}/{split}-*" for split in ("train", "validation")]
    (tmp_path / "repo" / "README.md").write_text("\n".join([*card, "---", "# a dataset"]) + "\n")
    dataset = load_segmentation_dataset(str(tmp_path / "repo"))
    assert {split: rows.num_rows for split, rows in dataset.items()} == {"train": 4, "validation": 4}  # 5 and 5


@pytest.mark.parametrize("size", [512, {"height": 512, "width": 512}, {"shortest_edge": 512}])
def test_a_pretrained_processor_without_a_keep_ratio_scale_needs_the_scale_given(size):
    """An int size (transformers' older configs) ended in "cannot be loaded (AttributeError ...)"; a fixed height and
    width trained at the demo scale, 224 x 160, without a word."""
    from hf_semseg.training import RunOptionError, resolve_data_settings

    saved = {"size": size, "do_reduce_labels": True}
    with pytest.raises(RunOptionError, match=rf"resizes to size {re.escape(str(size))}, which is not a keep-ratio"):
        resolve_data_settings(None, None, None, saved)
    settings = resolve_data_settings(None, [640, 480], None, saved)
    assert settings.scale == (640, 480) and settings.reduce_labels
    keep_ratio = {"size": {"longest_edge": 1024, "shortest_edge": 512}}
    assert resolve_data_settings(None, None, None, keep_ratio).scale == (1024, 512)


def test_a_label_map_with_an_alpha_channel_is_named_for_it():
    from hf_semseg.training import DatasetSampleError, single_channel_label

    grey = np.dstack([np.full((2, 2, 3), 4, np.uint8), np.full((2, 2, 1), 255, np.uint8)])
    with pytest.raises(
        DatasetSampleError, match=r"^sample 0: label is a grey map with an alpha channel \(4 channels\)"
    ):
        single_channel_label(grey, "sample 0", "label")
    for channel in (1, 2):  # green or blue differing from red
        colour = grey.copy()
        colour[0, 0, channel] = 9
        with pytest.raises(DatasetSampleError, match=r"is a colour map with an alpha channel"):
            single_channel_label(colour, "sample 0", "label")


def test_a_checkpoint_of_a_model_whose_weights_transformers_renames_when_saving_is_accepted(tmp_path):
    """``save_pretrained`` (what Trainer's checkpoints hold) saves transformers' Swin under its original names
    (``attention.self.query`` for ``attention.q_proj``, no ``swin.`` prefix in a SwinBackbone), Accelerate's
    ``save_state`` under the ``state_dict`` names: a VWFormer over transformers' Swin resumes from either."""
    from safetensors.torch import save_file
    from test_modeling_vwformer import TestVWFormerOverSwin

    from hf_semseg.training import RunOptionError, check_checkpoint_weights

    model = TestVWFormerOverSwin().make_model()
    model.save_pretrained(tmp_path / "trainer")
    save_file(
        {name: tensor.contiguous() for name, tensor in model.state_dict().items()}, tmp_path / "model.safetensors"
    )
    check_checkpoint_weights(model, tmp_path / "trainer")  # refused before: 98 of 200 names are the saved form's
    check_checkpoint_weights(model, tmp_path)
    wider = TestVWFormerOverSwin().make_model(decoder_hidden_size=128)
    with pytest.raises(RunOptionError, match=r"'decode_head\.classifier\.weight' has shape \(4, 64, 1, 1\), the mod"):
        check_checkpoint_weights(wider, tmp_path / "trainer")


def _varied_size_samples(num_labels: int = 4) -> list[dict]:
    """Normalised images of three sizes with random label maps (a few pixels ignored), as the evaluation transform
    gives them."""
    generator = torch.Generator().manual_seed(0)
    samples = []
    for height, width in ((64, 96), (48, 64), (64, 96), (80, 48)):
        labels = torch.randint(0, num_labels, (height, width), generator=generator)
        labels[:3, :5] = 255
        samples.append({"pixel_values": torch.randn(3, height, width, generator=generator), "labels": labels})
    return samples


def _perturbed_semask_model():
    from test_modeling_semask_swin import tiny_config

    from hf_semseg import SeMaskSwinForSemanticSegmentation

    torch.manual_seed(0)
    model = SeMaskSwinForSemanticSegmentation(tiny_config()).eval()
    with torch.no_grad():  # away from the near-constant start, so that the classes vary over the image
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1 or name.endswith("bias"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def test_evaluation_does_not_depend_on_the_batch_size(tmp_path):
    """Zero padding to the batch's largest image changed what the model saw: the mIoU depended on
    --per_device_eval_batch_size (0.6308 at 1, 0.5995 at 8 on varied-size images). Both scripts evaluate each size
    alone now, as mmseg tests one image at a time; the padded batch still gives other numbers (the test can fail)."""
    from functools import partial

    from script_helpers import load_example
    from transformers import TrainingArguments

    from hf_semseg.training import SegmentationTrainer, StreamingMeanIoU

    samples, model = _varied_size_samples(), _perturbed_semask_model()
    dataset = Dataset.from_list([{key: value.numpy() for key, value in sample.items()} for sample in samples])
    dataset = dataset.with_format("torch")

    def trainer_metrics(batch_size: int, with_sizes: bool = True) -> dict:
        arguments = TrainingArguments(
            output_dir=str(tmp_path / f"run{batch_size}"),
            per_device_eval_batch_size=batch_size,
            batch_eval_metrics=True,
            report_to=[],
            use_cpu=True,
        )
        trainer = SegmentationTrainer(
            model=model,
            args=arguments,
            eval_dataset=dataset,
            data_collator=partial(pad_collate, with_sizes=with_sizes),
            compute_metrics=StreamingMeanIoU(4),
        )
        return trainer.evaluate()

    single, batched = trainer_metrics(1), trainer_metrics(3)
    assert single["eval_mean_iou"] == batched["eval_mean_iou"]
    assert single["eval_overall_accuracy"] == batched["eval_overall_accuracy"]
    assert abs(single["eval_loss"] - batched["eval_loss"]) < 1e-5
    assert trainer_metrics(3, with_sizes=False)["eval_mean_iou"] != single["eval_mean_iou"]

    from accelerate import Accelerator

    script = load_example(Path(__file__).resolve().parents[1] / "examples" / "run_semantic_segmentation_no_trainer.py")
    accelerator = Accelerator(cpu=True)
    for batch_size in (1, 3):
        result = script.evaluate(accelerator, model, dataset, batch_size, 4)
        assert result["mean_iou"] == pytest.approx(single["eval_mean_iou"], abs=1e-12)


def test_image_values_are_read_as_mmseg_reads_image_files_or_refused():
    """A 16-bit grey image was clipped by PIL's RGB conversion (99% white; OpenCV, mmseg's reader, scales it to 8
    bits); a float image in [0, 1] was read as 0-255 values (black: mIoU 0.21 for 0.62), a float label map truncated
    (0.6 -> class 0)."""
    from hf_semseg.training import DatasetSampleError, to_arrays

    eight = np.random.default_rng(0).integers(0, 256, (6, 5), dtype=np.uint8)
    label = np.zeros((6, 5), np.int64)
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257)  # mode I;16, the 8-bit values exactly
    assert sixteen.mode.startswith("I;16")
    image, _ = to_arrays(sixteen, label, 0, 4, False)
    assert image.dtype == np.uint8 and image.shape == (6, 5, 3)
    np.testing.assert_array_equal(image, np.repeat(eight[..., None], 3, axis=2))
    image, _ = to_arrays(np.repeat(eight[..., None], 3, axis=2).astype(np.uint16) * 257, label, 0, 4, False)
    np.testing.assert_array_equal(image[..., 0], eight)
    with pytest.raises(DatasetSampleError, match=r"sample 3: the image is floating point \(float32\); store images"):
        to_arrays(np.random.rand(6, 5, 3).astype(np.float32), label, 3, 4, False)
    with pytest.raises(DatasetSampleError, match=r"sample 3: label holds float64 values; a label map must hold int"):
        to_arrays(np.zeros((6, 5, 3), np.uint8), np.full((6, 5), 0.6), 3, 4, False)
    with pytest.raises(DatasetSampleError, match=r"sample 3: label holds float32 values"):
        to_arrays(np.zeros((6, 5, 3), np.uint8), Image.fromarray(np.ones((6, 5), np.float32)), 3, 4, False)


def test_out_of_range_labels_are_named_as_stored():
    """With reduce_labels the message gave the reduced value (the file holds 7, it said [6])."""
    from hf_semseg.training import DatasetSampleError, to_arrays

    image, label = np.zeros((4, 4, 3), np.uint8), np.array([[0, 1, 4, 255]] * 4)
    _, reduced = to_arrays(image, label, 0, 4, True)  # 4 classes stored as 1..4 with 0 the background
    assert reduced[0].tolist() == [255, 0, 3, 255]
    label[0, 0] = 7
    with pytest.raises(DatasetSampleError, match=r"label values \[7\] are outside \[1, 5\) and 255 \(with reduce_"):
        to_arrays(image, label, 0, 4, True)
    with pytest.raises(DatasetSampleError, match=r"label values \[4, 7\] are outside \[0, 4\) and 255$"):
        to_arrays(image, label, 0, 4, False)
    many = np.arange(4, 16).reshape(3, 4)  # 12 values outside 4 classes: the first ten are listed
    with pytest.raises(DatasetSampleError, match=r"label values \[4, 5, 6, 7, 8, 9, 10, 11, 12, 13\] are outside"):
        to_arrays(np.zeros((3, 4, 3), np.uint8), many, 0, 4, False)


def test_a_jpeg_label_map_is_warned_about(tmp_path):
    """JPEG's compression changes class ids at every edge (22% of the pixels of a 150-class test), silently."""
    import hf_semseg.training as training

    label = np.zeros((16, 16), np.uint8)
    label[4:12, 4:12] = 3
    Image.fromarray(label).save(tmp_path / "label.jpg", quality=90)
    training._warned_labels.clear()
    with pytest.warns(UserWarning, match=r"sample 0 \(label \S+label\.jpg\): the label map is a JPEG"):
        training.to_arrays(np.zeros((16, 16, 3), np.uint8), Image.open(tmp_path / "label.jpg"), 0, 150, False)


def test_a_binary_mask_saved_as_0_and_255_is_warned_about():
    """255 is the ignore index: a binary mask saved as 0 / 255 had its object ignored, silently (a model that finds no
    object evaluated at mIoU 1.0). Warned once, naming the sample; a map with another class besides is not."""
    import hf_semseg.training as training

    image = np.zeros((16, 16, 3), np.uint8)
    label = np.zeros((16, 16), np.uint8)
    training._warned_labels.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for values in (label, np.full((16, 16), 255, np.uint8)):  # all background, all ignored: not 0 and 255
            training.to_arrays(image, values, 0, 2, False)
    label[4:12, 4:12] = 1
    label[0, :] = 255
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training.to_arrays(image, label, 0, 2, False)  # 0, 1 and ignored pixels: a usual map
    label[4:12, 4:12] = 255
    with pytest.warns(UserWarning, match=r"^sample 3: the label map holds only 0 and 255; 255 is the ignore index"):
        _, loaded = training.to_arrays(image, label, 3, 2, False)
    assert (loaded == 255).sum() == 80  # the values as given: a warning, not a change
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training.to_arrays(image, label, 4, 2, False)  # once per process


def test_a_value_that_is_no_image_is_named_for_what_it_is():
    """A column of file paths (strings) or a classification dataset's class numbers were read as 0-d arrays: "image
    has shape (), expected (H, W, 3)" / "label size ()" named no cause."""
    from hf_semseg.training import DatasetSampleError, to_arrays

    label = np.zeros((4, 4), np.uint8)
    with pytest.raises(
        DatasetSampleError, match=r"^sample 0: image holds 'a/b\.png', not an image \(a column of file pa"
    ):
        to_arrays("a/b.png", label, 0, 4, False)
    with pytest.raises(DatasetSampleError, match=r"^sample 1: label holds 3, not a label map \(a classification datas"):
        to_arrays(np.zeros((4, 4, 3), np.uint8), 3, 1, 4, False)


def test_a_transformers_model_loss_is_averaged_over_accumulation_steps_as_hf_semsegs(tmp_path):
    """transformers' Segformer takes ``**kwargs`` in its forward and declares no ``accepts_loss_kwargs``: Trainer
    read its pixel-mean loss as one normalised by the batch's items and did not divide it by the accumulation steps
    (and scaled it by the process count): 4 accumulation steps gave 4x the gradients. The script's Trainer divides
    every model's loss by the steps, as for hf-semseg's models."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, TrainingArguments

    from hf_semseg.training import SegmentationTrainer

    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 2],
        patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=3,
        drop_path_rate=0.0, classifier_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(config).train()
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "pixel_values": torch.randn(2, 3, 32, 32, generator=generator),
        "labels": torch.randint(0, 3, (2, 32, 32), generator=generator),
    }
    model.zero_grad()
    model(**inputs).loss.backward()
    expected = {name: parameter.grad / 4 for name, parameter in model.named_parameters()}
    model.zero_grad()
    arguments = TrainingArguments(
        output_dir=str(tmp_path), gradient_accumulation_steps=4, use_cpu=True, report_to=[], disable_tqdm=True
    )
    trainer = SegmentationTrainer(model=model, args=arguments)
    trainer.current_gradient_accumulation_steps = 4  # as the training loop sets it
    trainer.training_step(model, dict(inputs), num_items_in_batch=torch.tensor(2 * 32 * 32))
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name], rtol=1e-5, atol=1e-8, msg=name)
    assert trainer.model_accepts_loss_kwargs is False


def test_training_evaluation_of_a_mask_classification_model_is_detectron2s_semantic_inference(tmp_path):
    """The scripts' evaluation (``class_maps`` from ``Trainer.prediction_step``'s outputs, or the Accelerate loop's)
    of a mask-classification model computes its processor's post-processing: mask logits upsampled to the model's
    padded input before the sigmoid, the padding cropped. It resized the combined stride-4 scores (other classes on
    a share of the pixels)."""
    from test_modeling_semask_mask2former import tiny_config

    from hf_semseg import SeMaskMask2FormerForSemanticSegmentation, SeMaskMask2FormerImageProcessor
    from hf_semseg.training import class_maps, prediction_outputs

    torch.manual_seed(0)
    model = SeMaskMask2FormerForSemanticSegmentation(tiny_config()).eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # weights far from the init, so that the maps hold several classes and the paths disagree
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    pixel_values = torch.randn(2, 3, 45, 70, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values)
    processor = SeMaskMask2FormerImageProcessor()
    expected = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(45, 70)] * 2, image_sizes=[(45, 70)] * 2
    )
    # Trainer's prediction_step hands the output's values but the loss, in field order
    trainer_logits = tuple(value for key, value in outputs.items() if key != "loss")
    logits, class_logits, mask_logits = prediction_outputs(model, trainer_logits)
    maps = class_maps(model, logits, (45, 70), class_logits, mask_logits)
    assert maps.shape == (2, 45, 70) and len(maps.unique()) > 1
    assert torch.equal(maps, torch.stack(expected))
    approximation = class_maps(model, outputs.logits, (45, 70))
    assert not torch.equal(approximation, maps)
    # through the Trainer script's own prediction step: the same maps
    from transformers import TrainingArguments

    from hf_semseg.training import UNPADDED_SIZES, SegmentationTrainer

    arguments = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True)
    trainer = SegmentationTrainer(model=model, args=arguments)
    labels = torch.zeros(2, 45, 70, dtype=torch.long)
    inputs = {"pixel_values": pixel_values, "labels": labels, UNPADDED_SIZES: torch.tensor([[45, 70], [45, 70]])}
    _, (trainer_maps, _), _ = trainer.prediction_step(model, inputs, prediction_loss_only=False)
    assert torch.equal(trainer_maps, maps)


# -- boundaries and values the mutation pass found no test could fail -----------------------------------------------
def test_normalisation_is_mmsegs_imagenet_mean_and_std_in_0_255():
    from hf_semseg.training import normalise

    image = np.array([[[255, 0, 128], [0, 255, 7]]], np.uint8)  # (1, 2, 3)
    # mmseg's Normalize: (v - mean) / std with mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    expected = torch.tensor(((image.astype(np.float64) - mean) / std).transpose(2, 0, 1), dtype=torch.float32)
    result = normalise(image)
    assert result.shape == (3, 1, 2) and result.dtype == torch.float32
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "options, refused",
    [
        ({}, None),
        ({"learning_rate": 1e-12}, None),
        ({"learning_rate": 0.0}, "--learning_rate 0.0: expected a positive number"),
        ({"train_batch_size": 0}, "--per_device_train_batch_size 0: expected at least 1 image"),
        ({"eval_batch_size": 0}, "--per_device_eval_batch_size 0: expected at least 1 image"),
        ({"num_train_epochs": 0, "max_steps": 1}, None),
        ({"num_train_epochs": 0.5, "max_steps": -1}, None),
        ({"num_train_epochs": 0, "max_steps": 0}, "--num_train_epochs 0: no training step"),
        ({"num_train_epochs": 0, "max_steps": -1}, "--num_train_epochs 0: no training step"),
    ],
)
def test_run_options_at_their_bounds(tmp_path, options, refused):
    """One image per batch, any positive learning rate, and one step by epochs or by --max_steps train."""
    from hf_semseg.training import RunOptionError, check_run_options

    values = dict(learning_rate=1e-4, train_batch_size=1, eval_batch_size=1, num_train_epochs=1, max_steps=-1)
    values.update(options)
    if refused is None:
        check_run_options(str(tmp_path), **values)
    else:
        with pytest.raises(RunOptionError, match="^" + re.escape(refused)):
            check_run_options(str(tmp_path), **values)


def test_models_of_up_to_255_classes_train_with_the_ignore_index_255():
    from types import SimpleNamespace

    from hf_semseg.training import RunOptionError, check_ignore_index

    check_ignore_index(SimpleNamespace(num_labels=255))  # classes 0 ... 254: 255 stays the ignore index
    check_ignore_index(SimpleNamespace(num_labels=4, loss_ignore_index=255))
    with pytest.raises(RunOptionError, match="^the model has 256 classes and loss_ignore_index 255; "):
        check_ignore_index(SimpleNamespace(num_labels=256))
    with pytest.raises(RunOptionError, match="^the model has 4 classes and loss_ignore_index -100; "):
        check_ignore_index(SimpleNamespace(num_labels=4, loss_ignore_index=-100))


def test_32_bit_and_float_pil_images_and_integer_arrays_are_read_or_refused():
    """PIL modes I (32-bit integers, not from a PNG) and F (float) hold one grey channel; integer arrays other than
    uint8 are taken when their values are 8-bit ones."""
    from hf_semseg.training import DatasetSampleError, rgb_array

    grey = np.array([[0, 7], [128, 255]], np.int32)
    image = rgb_array(Image.fromarray(grey, mode="I"), "sample 0")
    assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
    np.testing.assert_array_equal(image, np.repeat(grey[..., None], 3, axis=2))
    with pytest.raises(DatasetSampleError, match=r"^sample 0: the image is floating point \(float32\)"):
        rgb_array(Image.fromarray(grey.astype(np.float32), mode="F"), "sample 0")
    np.testing.assert_array_equal(rgb_array(np.full((2, 2, 3), 255, np.int64)), np.full((2, 2, 3), 255, np.uint8))
    for low, high in ((-1, 3), (0, 256)):
        array = np.array([[[low, 0, high]]], np.int64)
        with pytest.raises(DatasetSampleError, match=rf"^x: the image holds int64 values in \[{low}, {high}\]; exp"):
            rgb_array(array, "x")
    assert rgb_array(np.zeros((0, 0, 3), np.int64)).shape == (0, 0, 3)  # empty: no min / max to take


@pytest.mark.parametrize("shape", [(4, 4), (4, 4, 4), (4, 4, 1)])
def test_an_image_array_that_is_not_rgb_is_refused_naming_its_shape(shape):
    from hf_semseg.training import DatasetSampleError, to_arrays

    with pytest.raises(DatasetSampleError, match=rf"^sample 2: image has shape {re.escape(str(shape))}, expected"):
        to_arrays(np.zeros(shape, np.uint8), np.zeros((4, 4), np.uint8), 2, 4, False)


def test_a_label_map_with_one_channel_axis_is_read_as_its_class_ids():
    from hf_semseg.training import to_arrays

    label = np.array([[0, 1], [2, 3]], np.uint8)
    _, loaded = to_arrays(np.zeros((2, 2, 3), np.uint8), label[..., None], 0, 4, False)
    assert loaded.tolist() == label.tolist()


def test_a_jpeg_label_decoded_in_memory_is_warned_about_too():
    import io

    import hf_semseg.training as training

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="JPEG")
    decoded = Image.open(io.BytesIO(buffer.getvalue()))  # format JPEG, no file name
    assert training.lossy_label_file(decoded) == "JPEG"
    assert training.lossy_label_file(Image.fromarray(np.zeros((8, 8), np.uint8))) is None
    assert training.lossy_label_file({"path": "x/label.JPG", "bytes": None}) == "JPEG"
    assert training.lossy_label_file({"path": "x/label.png", "bytes": None}) is None


def test_streaming_mean_iou_reports_the_mean_sample_loss_of_one_evaluation_at_a_time():
    """The per-sample losses of every batch are averaged over the samples (not the batches), and the next evaluation
    starts from nothing."""
    from transformers import EvalPrediction

    from hf_semseg.training import StreamingMeanIoU

    metric = StreamingMeanIoU(2)
    logits, labels = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    metric(EvalPrediction((logits, torch.tensor([1.0, 2.0])), labels), compute_result=False)
    first = metric(EvalPrediction((logits, torch.tensor([6.0])), labels), compute_result=True)
    assert first["loss"] == pytest.approx(3.0)  # (1 + 2 + 6) / 3, not the mean of the batch means (3.75)
    second = metric(EvalPrediction((logits, torch.tensor([0.5])), labels), compute_result=True)
    assert second["loss"] == pytest.approx(0.5)
    assert "loss" not in metric(EvalPrediction(logits, labels), compute_result=True)


def test_json_numbers_keep_integers_strings_and_none_and_write_nan_as_null():
    from hf_semseg.training import json_metrics

    metrics = {"epoch": 3, "flag": True, "name": "a", "none": None, "iou": np.float32(0.5), "nan": float("nan")}
    result = json_metrics(metrics)
    assert result == {"epoch": 3, "flag": True, "name": "a", "none": None, "iou": 0.5, "nan": None}
    assert type(result["epoch"]) is int and type(result["flag"]) is bool and type(result["iou"]) is float


def test_a_transform_before_any_epoch_is_set_augments_as_epoch_0():
    from hf_semseg.demo_data import make_demo_dataset

    dataset = with_sample_index(make_demo_dataset(num_train=2, num_validation=1, height=40, width=56)["train"])
    augmentation = SegmentationTrainTransform(scale=(56, 40), crop_size=(32, 32))
    raw = dataset.with_format(None)[[1]]
    fresh = make_transform("image", "label", 4, False, augmentation, seed=5)
    at_zero = make_transform("image", "label", 4, False, augmentation, seed=5)
    at_zero.set_epoch(0)
    assert torch.equal(fresh(raw)["pixel_values"][0], at_zero(raw)["pixel_values"][0])
    at_zero.set_epoch(1)
    assert not torch.equal(fresh(raw)["pixel_values"][0], at_zero(raw)["pixel_values"][0])


def test_each_sample_is_scored_on_its_labelled_extent_only():
    """A collated batch's labels are padded right and bottom with 255: each sample reaches the metric cropped to its
    last labelled row and column."""
    from hf_semseg.training import update_unpadded

    class Spy:
        def __init__(self):
            self.shapes = []

        def update(self, prediction, label):
            self.shapes.append((tuple(prediction.shape), tuple(label.shape)))

    labels = torch.full((3, 5, 6), 255)
    labels[0, :2, :3] = 1  # a 2 x 3 sample
    labels[1, :4, :6] = 0  # a 4 x 6 one with an ignored pixel inside its extent
    labels[1, 3, 5] = 255
    spy = Spy()
    update_unpadded(spy, torch.zeros(3, 5, 6, dtype=torch.long), labels)  # the third: nothing labelled, skipped
    assert spy.shapes == [((2, 3), (2, 3)), ((4, 6), (4, 6))]


def test_prediction_outputs_take_the_query_outputs_only_of_a_mask_classification_model():
    from types import SimpleNamespace

    from hf_semseg.training import prediction_outputs

    logits, class_logits, mask_logits = torch.zeros(2, 4, 8, 8), torch.zeros(2, 5, 4), torch.zeros(2, 5, 2, 2)
    mask_model = SimpleNamespace(config=SimpleNamespace(num_queries=5))
    per_pixel_model = SimpleNamespace(config=SimpleNamespace())
    three = (logits, class_logits, mask_logits)  # exactly the three fields
    assert all(a is b for a, b in zip(prediction_outputs(mask_model, three), three))
    assert prediction_outputs(mask_model, (*three, torch.zeros(1)))[2] is mask_logits
    for model, outputs in (
        (per_pixel_model, three),  # another model's three outputs are no queries
        (mask_model, (logits, class_logits)),  # too few
        (mask_model, (logits, mask_logits, class_logits)),  # not (B, Q, K) and (B, Q, h, w)
        (mask_model, (logits, class_logits, torch.zeros(2, 6, 2, 2))),  # other query counts
        (mask_model, (logits, torch.zeros(3, 5, 4), mask_logits)),  # other batch sizes
    ):
        first, *queries = prediction_outputs(model, outputs)
        assert first is logits and queries == [None, None]
    assert prediction_outputs(mask_model, logits) == (logits, None, None)


def test_a_dataset_name_with_one_slash_is_a_hub_id_and_with_more_a_path(monkeypatch, tmp_path):
    import datasets

    import hf_semseg.training as training

    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *args, **kwargs: asked.append(name) or "hub")
    monkeypatch.chdir(tmp_path)
    assert training.load_segmentation_dataset("someone/ade20k-copy") == "hub" and asked == ["someone/ade20k-copy"]
    with pytest.raises(training.RunOptionError, match=r"^--dataset_name someone/ade20k/train: no such folder$"):
        training.load_segmentation_dataset("someone/ade20k/train")
    assert asked == ["someone/ade20k-copy"]


def test_only_a_readmes_yaml_header_declares_dataset_configs(tmp_path):
    from hf_semseg.training import declares_dataset_configs

    card = tmp_path / "README.md"
    assert not declares_dataset_configs(tmp_path)  # no card
    card.write_text("")
    assert not declares_dataset_configs(tmp_path)
    card.write_text("---\nconfigs:\n- config_name: a\n---\n# A dataset\n")
    assert declares_dataset_configs(tmp_path)
    card.write_text("---\nlicense: mit\n---\n# A dataset\n")
    assert not declares_dataset_configs(tmp_path)
    card.write_text("---\n---\n# A dataset\n")  # an empty header
    assert not declares_dataset_configs(tmp_path)
    # a body (no header) with a rule, a "configs:" line and another rule
    card.write_text("# A dataset\n---\nconfigs:\n---\n")
    assert not declares_dataset_configs(tmp_path)


def test_the_demo_dataset_is_made_at_the_sizes_asked_or_64_and_16(monkeypatch):
    import hf_semseg.demo_data as demo_data
    from hf_semseg.training import load_splits

    made, make = [], demo_data.make_demo_dataset
    monkeypatch.setattr(
        demo_data, "make_demo_dataset", lambda **sizes: made.append(sizes) or make(**sizes, height=8, width=8)
    )
    assert [len(split) for split in load_splits(None)] == [64, 16]
    assert [len(split) for split in load_splits(None, max_train_samples=3, max_eval_samples=2)] == [3, 2]
    assert made == [{"num_train": 64, "num_validation": 16}, {"num_train": 3, "num_validation": 2}]


def test_with_several_processes_each_sample_is_a_group_of_its_own():
    from hf_semseg.training import same_size_groups

    sizes = [[4, 6], [8, 8], [4, 6]]
    assert same_size_groups(sizes) == [((4, 6), [0, 2]), ((8, 8), [1])]
    assert same_size_groups(sizes, single_process=False) == [((4, 6), [0]), ((8, 8), [1]), ((4, 6), [2])]


def test_only_decoded_image_columns_are_left_undecoded():
    from datasets import Array2D

    from hf_semseg.training import without_image_decoding

    features = Features({"image": ImageFeature(), "label": Array2D((2, 2), "uint8"), "other": ImageFeature()})
    rows = {"image": [Image.new("RGB", (2, 2))], "label": [np.zeros((2, 2), np.uint8)], "other": [None]}
    dataset = without_image_decoding(Dataset.from_dict(rows, features=features), ("image", "label", "absent"))
    assert dataset.features["image"] == ImageFeature(decode=False)  # the image: undecoded
    assert dataset.features["label"] == Array2D((2, 2), "uint8")  # an array column and an absent one: as they were
    assert dataset.features["other"] == ImageFeature()  # a column not asked for: decoded
