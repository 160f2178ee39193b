"""A generated semantic-segmentation dataset for demos and tests: textured shapes on textured backgrounds.

Deterministic (every sample comes from its own seeded generator), no download; returned as a ``datasets.DatasetDict``
with ``train`` and ``validation`` splits and ``image`` (RGB) / ``label`` (class ids, mode "L") columns.
"""

import numpy as np
from PIL import Image


DEMO_CLASSES = ("background", "disc", "bar", "triangle")
DEMO_PALETTE = np.array([[40, 40, 40], [230, 80, 60], [60, 160, 230], [250, 210, 60]], dtype=np.uint8)


def generate_scene(height: int = 160, width: int = 224, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """One scene: a striped, noisy background with a disc, a bar and a triangle at random places and sizes (the
    colours jitter per sample). Returns the RGB image and its ``(H, W)`` uint8 class-id map."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    labels = np.zeros((height, width), dtype=np.uint8)
    radius = rng.uniform(0.12, 0.25) * min(height, width)
    center = rng.uniform([radius, radius], [height - radius, width - radius])
    labels[(rows - center[0]) ** 2 + (cols - center[1]) ** 2 < radius**2] = 1
    bar_col, bar_half_width = rng.uniform(0.1, 0.9) * width, rng.uniform(0.03, 0.07) * width
    bar_top, bar_bottom = sorted(rng.uniform(0.05, 0.95, 2) * height)
    labels[
        (rows > bar_top) & (rows < max(bar_bottom, bar_top + 0.3 * height)) & (np.abs(cols - bar_col) < bar_half_width)
    ] = 2
    apex_row, apex_col = rng.uniform(0.1, 0.6) * height, rng.uniform(0.15, 0.85) * width
    triangle_height = rng.uniform(0.25, 0.4) * height
    inside = (
        (rows > apex_row) & (rows < apex_row + triangle_height) & (np.abs(cols - apex_col) < (rows - apex_row) * 0.5)
    )
    labels[inside] = 3
    base = np.array([[90, 110, 80], [200, 60, 50], [50, 120, 200], [220, 190, 40]], dtype=np.float32)
    base += rng.normal(0, 12, base.shape)
    phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(2.5, 5.0)
    stripes = 25 * np.sin(cols[..., None] / period + rows[..., None] / (period + 2) + phase)
    image = base[labels] + stripes + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)), labels


def make_demo_dataset(
    num_train: int = 64, num_validation: int = 16, height: int = 160, width: int = 224, seed: int = 0
):
    """``DatasetDict`` with ``train`` / ``validation`` splits of generated scenes (sample ``i`` of a split is
    seeded by ``(seed, split, i)``), columns ``image`` and ``label``; ``id2label`` is in :data:`DEMO_CLASSES`."""
    from datasets import Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "label": ImageFeature()})

    def split(name_index: int, count: int):
        images, labels = [], []
        for index in range(count):
            image, label = generate_scene(height, width, seed=(seed * 1_000_003 + name_index) * 1_000_003 + index)
            images.append(image)
            labels.append(Image.fromarray(label))  # uint8 (H, W) -> mode "L"
        return Dataset.from_dict({"image": images, "label": labels}, features=features)

    return DatasetDict({"train": split(0, num_train), "validation": split(1, num_validation)})


def demo_model_config(drop_path_rate: float = 0.1):
    """A small SeMask-Swin FPN config for the demo classes (2.9M parameters, trains in about a minute on a CPU)."""
    from .models.configuration_semask_swin import SeMaskSwinConfig
    from .variants import FOUR_STAGES

    id2label = dict(enumerate(DEMO_CLASSES))
    return SeMaskSwinConfig(
        embed_dim=32,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 4, 8],
        decoder_hidden_size=64,
        drop_path_rate=drop_path_rate,
        out_features=list(FOUR_STAGES),  # the Semantic-FPN head takes the four stages
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )


def colorize(labels: np.ndarray, palette: np.ndarray = DEMO_PALETTE) -> Image.Image:
    """Class-id map -> RGB image with one colour per class; ids outside the palette (255, negative ones) are white.
    Any number of classes: the ids are not cast to 8 bits (class 256 became class 0's colour before)."""
    labels = np.asarray(labels)
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    outside = (labels < 0) | (labels >= len(palette))
    colours = palette[np.where(outside, 0, labels)] if len(palette) else np.empty((*labels.shape, 3), np.uint8)
    colours[outside] = 255
    return Image.fromarray(colours)


def palette_for(id2label: dict) -> np.ndarray:
    """The palette of the known dataset with these classes (:func:`hf_semseg.variants.dataset_labels`), else the demo
    palette cycled over the classes."""
    from .variants import dataset_labels, datasets_with_labels

    names = [id2label.get(i) for i in range(len(id2label))]
    for dataset in datasets_with_labels():
        labels, palette = dataset_labels(dataset)
        if [labels[i] for i in range(len(labels))] == names:
            return np.array(palette, dtype=np.uint8)
    return DEMO_PALETTE[np.arange(len(names)) % len(DEMO_PALETTE)]
