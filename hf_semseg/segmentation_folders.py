"""Semantic-segmentation datasets from folders of image files and label maps, in the layouts the papers' datasets ship
in and mmsegmentation reads.

``datasets``' own ``imagefolder`` builder makes classification datasets (one class per subfolder), so a folder of
images and label maps loaded through it had a class number where the label map should be. :func:`load_image_folders`
pairs every image with its label map instead and returns a ``DatasetDict`` with the example scripts' columns,
``image`` and ``label`` (both ``datasets.Image``), one split per split folder:

- ``images/<split>/`` with ``annotations/<split>/`` (ADE20K's ``ADEChallengeData2016``; also ``labels/`` or
  ``masks/`` for the label maps), or mmseg's ``img_dir/<split>/`` with ``ann_dir/<split>/``: an image and its label
  map have the same path below the split folder up to the extension (``a/b.jpg`` and ``a/b.png``). Without split
  folders (the files directly in ``images/``) the pairs make one ``train`` split.
- Cityscapes: ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
  ``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` (the 19 training classes, written by cityscapesscripts'
  ``createTrainIdLabelImgs``, as mmseg's Cityscapes dataset reads them).

Split folders are named as ``datasets`` names splits: ``training`` reads as ``train``, ``val`` and ``valid`` as
``validation``, ``testing`` as ``test``. A split folder of images without its label-map folder (ADE20K's test
release), or with an empty label-map folder, is left out. An image without its label map, a label map without its
image, or two images with the same label map is a :class:`SegmentationFolderError` naming the files, before anything is
read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


#: file extensions read as images (case-insensitive)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

#: split folder names and the split names they read as (others keep their own name)
SPLIT_NAMES = {"training": "train", "val": "validation", "valid": "validation", "testing": "test"}


class SegmentationFolderError(ValueError):
    """A folder that is not a segmentation dataset of a known layout, or whose images and label maps do not pair."""


@dataclass(frozen=True)
class FolderLayout:
    """Where a layout keeps its images and label maps, and how a label map's path follows from its image's: the
    image's path below its split folder with ``image_suffix`` (the end of its name, extension included; None: any
    image extension) replaced by ``label_suffix`` (None: the same name with the ``.png`` extension)."""

    name: str
    image_folder: str
    label_folder: str
    image_suffix: str | None = None
    label_suffix: str | None = None

    def label_path(self, relative_image: Path) -> Path:
        """The label map's path below the split folder for the image at ``relative_image`` below its own."""
        if self.image_suffix is None:
            return relative_image.with_suffix(".png")
        stem = relative_image.name[: -len(self.image_suffix)]
        return relative_image.with_name(stem + self.label_suffix)

    def is_image(self, path: Path) -> bool:
        if self.image_suffix is not None:
            return path.name.endswith(self.image_suffix)
        return path.suffix.lower() in IMAGE_EXTENSIONS


CITYSCAPES = FolderLayout("Cityscapes", "leftImg8bit", "gtFine", "_leftImg8bit.png", "_gtFine_labelTrainIds.png")

#: the layouts, tried in this order (the first whose two folders exist)
LAYOUTS = (
    FolderLayout("images / annotations", "images", "annotations"),
    FolderLayout("img_dir / ann_dir (mmseg)", "img_dir", "ann_dir"),
    FolderLayout("images / labels", "images", "labels"),
    FolderLayout("images / masks", "images", "masks"),
    CITYSCAPES,
)


def folder_layout(root: Path) -> FolderLayout | None:
    """The first of :data:`LAYOUTS` whose image and label folders are both in ``root``; None if there is none."""
    for layout in LAYOUTS:
        if (root / layout.image_folder).is_dir() and (root / layout.label_folder).is_dir():
            return layout
    return None


def files_under(folder: Path) -> Iterator[Path]:
    """The files below ``folder``, subfolders reached through symbolic links included (``Path.rglob`` skipped them:
    Cityscapes city folders linked in were left out silently; mmseg's scandir follows them), each folder once (a link
    back up the tree is not walked again), hidden names (``.DS_Store``, macOS ``._a.jpg``) left out as mmseg's
    scandir leaves them."""
    visited = set()
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in visited:
            subfolders[:] = []
            continue
        visited.add(real)
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        yield from (Path(directory) / name for name in files if not name.startswith("."))


def holds_files(folder: Path) -> bool:
    """Whether any file is below ``folder`` (:func:`files_under`), stopping at the first."""
    return next(files_under(folder), None) is not None


def split_folders(image_root: Path, label_root: Path, layout: FolderLayout) -> dict[str, tuple[Path, Path]]:
    """``{split name: (image folder, label folder)}``: the subfolders of ``image_root`` with a label folder of the same
    name, or, where ``image_root`` holds images itself, one ``train`` split of the two roots (Cityscapes always has
    split folders: its images are in city folders). Images directly in ``image_root`` beside split folders are a
    :class:`SegmentationFolderError` (they made one ``train`` split of every split's files)."""
    splits = {}
    for folder in sorted(path for path in image_root.iterdir() if path.is_dir()):
        # images with a label folder without files are a split without label maps, as one without a label folder
        # (an empty annotations/testing refused every split before); a split with neither is named below as empty
        labels = label_root / folder.name
        if labels.is_dir() and (holds_files(labels) or not holds_files(folder)):
            split = SPLIT_NAMES.get(folder.name, folder.name)
            if split in splits:
                raise SegmentationFolderError(
                    f"{image_root}: split folders {splits[split][0].name!r} and {folder.name!r} are both split {split!r}"
                )
            splits[split] = (folder, label_root / folder.name)
    loose = [] if layout is CITYSCAPES else sorted(path for path in image_root.iterdir() if path.is_file())
    loose = [path for path in loose if layout.is_image(path) and not path.name.startswith(".")]
    if loose and splits:
        raise SegmentationFolderError(
            f"{image_root}: holds images itself ({loose[0].name}"
            + (f" and {len(loose) - 1} more" if len(loose) > 1 else "")
            + f") beside split folders ({', '.join(folder.name for folder, _ in splits.values())}); move them into a "
            "split folder or remove them"
        )
    if loose:
        return {"train": (image_root, label_root)}
    # a label folder whose images are in a folder of another name (annotations/validation beside images/val): the
    # image folder read as an unlabelled test split, left out without a word
    image_names = {folder.name for folder in image_root.iterdir() if folder.is_dir()}
    unmatched = sorted(
        folder.name
        for folder in label_root.iterdir()
        if folder.is_dir()
        and folder.name not in image_names
        and not folder.name.startswith(".")
        and holds_files(folder)
    )
    if unmatched:
        raise SegmentationFolderError(
            f"{label_root}: label-map folder {unmatched[0]!r} has no image folder of the same name in {image_root} "
            f"(its folders: {', '.join(sorted(image_names)) or 'none'}); name the image and label folders of a split "
            "alike"
        )
    return splits


def pair_split(image_folder: Path, label_folder: Path, layout: FolderLayout) -> tuple[list[str], list[str]]:
    """The image files below ``image_folder`` and their label maps below ``label_folder`` (sorted by path), every file
    of both in exactly one pair."""
    images = sorted(path for path in files_under(image_folder) if layout.is_image(path))
    if not images:
        raise SegmentationFolderError(f"{image_folder}: no image files ({layout.name} layout)")
    labels = {path for path in files_under(label_folder) if path.suffix.lower() in IMAGE_EXTENSIONS}
    pairs = [(image, label_folder / layout.label_path(image.relative_to(image_folder))) for image in images]
    missing = [(image, label) for image, label in pairs if label not in labels]
    if missing:
        image, label = missing[0]
        if layout is CITYSCAPES and label.with_name(label.name.replace("labelTrainIds", "labelIds")).is_file():
            raise SegmentationFolderError(
                f"{label_folder}: no *_gtFine_labelTrainIds.png label maps (expected {label} for {image}); write them "
                "with cityscapesscripts' createTrainIdLabelImgs (the 19 training classes)"
            )
        raise SegmentationFolderError(
            f"{len(missing)} image(s) without a label map: {image} has no {label}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    paired = {label for _, label in pairs}
    if len(paired) != len(pairs):
        seen = {}
        for image, label in pairs:
            if label in seen:
                raise SegmentationFolderError(f"{seen[label]} and {image} share the label map {label}")
            seen[label] = image
    if layout is not CITYSCAPES:  # Cityscapes' gtFine folders also hold colour, instance and polygon files
        orphans = sorted(labels - paired)
        if orphans:
            raise SegmentationFolderError(
                f"{len(orphans)} label map(s) without an image: {orphans[0]} has no image in {image_folder}"
            )
    return [str(image) for image, _ in pairs], [str(label) for _, label in pairs]


def load_image_folders(root: str | Path):
    """A ``DatasetDict`` of the image and label-map pairs in ``root`` (layouts: the module's docstring), with the
    columns ``image`` and ``label`` (undecoded until read). :class:`SegmentationFolderError` where ``root`` has no
    known layout, no split with label maps, or files that do not pair."""
    from datasets import Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    root = Path(root)
    layout = folder_layout(root)
    if layout is None:
        expected = ", ".join(f"{layout.image_folder}/ with {layout.label_folder}/" for layout in LAYOUTS)
        raise SegmentationFolderError(
            f"{root}: not a segmentation dataset folder (expected a save_to_disk folder, parquet files, or image and "
            f"label-map folders: {expected})"
        )
    image_root, label_root = root / layout.image_folder, root / layout.label_folder
    splits = split_folders(image_root, label_root, layout)
    if not splits:
        raise SegmentationFolderError(
            f"{root}: no split folder of {image_root} has a label-map folder of the same name in {label_root}"
        )
    features = Features({"image": ImageFeature(), "label": ImageFeature()})
    columns = {split: pair_split(images, labels, layout) for split, (images, labels) in splits.items()}
    return DatasetDict(
        {
            split: Dataset.from_dict({"image": images, "label": labels}, features=features)
            for split, (images, labels) in columns.items()
        }
    )


__all__ = ["LAYOUTS", "FolderLayout", "SegmentationFolderError", "load_image_folders"]
