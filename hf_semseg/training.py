"""Training helpers shared by the Trainer and the Accelerate example scripts: dataset loading, the original
augmentation as a ``datasets`` transform, a padding collator, the optimizer recipe and a streaming-mIoU
``compute_metrics``."""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .metrics import MeanIoU
from .models.semask_swin.image_processing_utils_semask_swin import reduce_labels as reduce_zero_label
from .transforms import IGNORE_INDEX, SegmentationTrainTransform


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_segmentation_dataset(name: str | None, demo_sizes: tuple[int, int] = (64, 16)):
    """A ``DatasetDict``: the generated demo dataset (``None``), a ``save_to_disk`` folder, a folder of parquet files
    or images (``imagefolder``), or a Hub dataset id."""
    from datasets import load_dataset, load_from_disk

    if name is None:
        from .demo_data import make_demo_dataset

        return make_demo_dataset(num_train=demo_sizes[0], num_validation=demo_sizes[1])
    path = Path(name)
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            return load_from_disk(str(path))
        if any(path.rglob("*.parquet")):
            return load_dataset("parquet", data_dir=str(path))
        return load_dataset("imagefolder", data_dir=str(path))
    return load_dataset(name)


def to_arrays(image, label, index, num_labels: int, reduce_labels: bool) -> tuple[np.ndarray, np.ndarray]:
    """One sample as (RGB uint8 array, int64 label array), checked: readable, same size, labels in the classes."""
    try:
        image = np.array(image.convert("RGB") if isinstance(image, Image.Image) else image)  # a writable copy
        label = np.array(label, dtype=np.int64)
    except Exception as error:  # PIL raises several types for unreadable files
        raise ValueError(f"sample {index}: the image or label cannot be read ({error})") from error
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"sample {index}: image has shape {image.shape}, expected (H, W, 3)")
    if label.ndim == 3:
        label = label[..., 0]
    if image.shape[:2] != label.shape:
        raise ValueError(f"sample {index}: image size {image.shape[:2]} differs from label size {label.shape}")
    if reduce_labels:
        label = reduce_zero_label(label)
    bad = np.unique(label[(label != IGNORE_INDEX) & ((label < 0) | (label >= num_labels))])
    if bad.size:
        raise ValueError(f"sample {index}: label values {bad[:10].tolist()} are outside [0, {num_labels}) and 255")
    return image, label


SAMPLE_INDEX = "sample_index"


def with_sample_index(dataset):
    """Adds the row number as a column, so that errors in the on-the-fly transform name the dataset row."""
    return (
        dataset if SAMPLE_INDEX in dataset.column_names else dataset.add_column(SAMPLE_INDEX, list(range(len(dataset))))
    )


def normalise(image: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float ``(3, H, W)`` with ImageNet mean/std (the originals' normalisation)."""
    return torch.from_numpy(((image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


def make_transform(
    image_column: str,
    label_column: str,
    num_labels: int,
    reduce_labels: bool,
    augmentation: SegmentationTrainTransform | None,
    seed: int = 0,
    eval_scale: tuple[int, int] | None = None,
):
    """A ``datasets.set_transform`` function: training samples go through ``augmentation`` (seeded per call),
    evaluation samples are keep-ratio resized to ``eval_scale`` (labels stay at their size unless resized with it)."""
    from .transforms import keep_ratio_size, resize_pair

    rng = np.random.default_rng(seed)

    def transform(batch):
        pixel_values, labels = [], []
        # the dataset row of each sample, for error messages (see ``with_sample_index``)
        indices = batch.get(SAMPLE_INDEX, range(len(batch[image_column])))
        for index, image, label in zip(indices, batch[image_column], batch[label_column]):
            image, label = to_arrays(image, label, index, num_labels, reduce_labels)
            if augmentation is not None:
                image, label = augmentation(image, label, rng)
            elif eval_scale is not None:
                image, label = resize_pair(image, label, keep_ratio_size(*image.shape[:2], *eval_scale))
            pixel_values.append(normalise(image))
            labels.append(torch.from_numpy(np.ascontiguousarray(label)))
        return {"pixel_values": pixel_values, "labels": labels}

    return transform


def pad_collate(samples: list[dict]) -> dict:
    """Stacks samples, padding pixels with 0 and labels with 255 on the right/bottom to the largest size."""
    height = max(s["pixel_values"].shape[-2] for s in samples)
    width = max(s["pixel_values"].shape[-1] for s in samples)

    def pad(tensor, value):
        return F.pad(tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2]), value=value)

    return {
        "pixel_values": torch.stack([pad(s["pixel_values"], 0.0) for s in samples]),
        "labels": torch.stack([pad(s["labels"], IGNORE_INDEX) for s in samples]).long(),
    }


def parameter_groups(model, weight_decay: float, layer_decay: float | None = None, base_lr: float | None = None):
    """AdamW groups of the original recipe: no weight decay on norms (any name containing ``norm``), biases, gates and
    position tables; optional layer-wise lr decay over the backbone stages (stage ``i`` of ``n`` gets
    ``layer_decay ** (n - i)``, the decode head 1)."""
    groups: dict[tuple[float, float], list] = {}
    num_stages = len(getattr(model.config, "depths", [])) or 1
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = parameter.ndim <= 1 or "norm" in name or "relative_position_bias_table" in name
        scale = 1.0
        if layer_decay is not None and name.startswith("backbone."):
            stage = next((int(part) for part in name.split(".") if part.isdigit()), 0)
            scale = layer_decay ** (num_stages - stage)
        key = (0.0 if no_decay else weight_decay, scale)
        groups.setdefault(key, []).append(parameter)
    result = []
    for (decay, scale), parameters in groups.items():
        group = {"params": parameters, "weight_decay": decay}
        if base_lr is not None:
            group["lr"] = base_lr * scale
        result.append(group)
    return result


class StreamingMeanIoU:
    """``compute_metrics`` for ``Trainer(batch_eval_metrics=True)``: upsample the logits to the label size, argmax,
    accumulate; only the confusion matrix is kept between batches."""

    def __init__(self, num_labels: int, id2label: dict | None = None, ignore_index: int = IGNORE_INDEX):
        self.metric = MeanIoU(num_labels, ignore_index)
        self.id2label = id2label or {}

    def __call__(self, eval_prediction, compute_result: bool = False) -> dict:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        labels = eval_prediction.label_ids
        logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
        upsampled = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        self.metric.update(upsampled.argmax(1).cpu(), labels.cpu())
        if not compute_result:
            return {}
        # no gather(): Trainer already gathers predictions and labels of all processes before calling this
        result = self.metric.compute()
        self.metric.reset()
        metrics = {key: result[key] for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
        for index, value in enumerate(result["per_category_iou"]):
            metrics[f"iou_{self.id2label.get(index, index)}"] = float(value)
        return metrics
