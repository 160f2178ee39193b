#!/usr/bin/env python
"""Evaluate a segmentation model on a dataset split the way the papers do, and optionally write predictions.

    python examples/evaluate_semantic_segmentation.py --model outputs/semask-demo [--dataset_name NAME] \
        [--split validation] [--mode whole|slide|multi_scale] [--crop_size 512 --stride 341] \
        [--predictions_dir preds/] [--do_reduce_labels [true|false]] [--weight_bits 4]

The labels are reduced (label 0 ignored, the others shifted down by one) as the model's saved image processor says,
unless ``--do_reduce_labels`` is given. Scores are taken to each image's own size as the original of the model's
family does (mmseg: logits resized to the input, then to the image; detectron2: its semantic inference at the padded
input, cropped, resized); ``--mode multi_scale`` is the papers' ms+flip (ratios 0.5-1.75 and flips, the model's
processor at every scale, e.g. VWFormer's multiple-of-64 resize; mmseg averages softmax probabilities, detectron2 raw
scores). Reports mIoU, mean accuracy, overall accuracy, per-class IoU, Boundary IoU and trimap mIoU (streaming,
nothing held in memory but the confusion matrix). ``--predictions_dir`` writes a colour-coded mask and an overlay PNG
per image (with the dataset's palette when the classes are a known dataset's, else the demo palette).
"""

import json
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import hf_semseg  # noqa: F401  (registers the Auto classes)
from hf_semseg.conversion.common import INTERRUPTED_STATUS, TERMINATED_STATUS, Terminated, terminate_with_cleanup
from hf_semseg.conversion.common import _ArgumentParser as OneLineUsageParser
from hf_semseg.demo_data import colorize, palette_for
from hf_semseg.inference import TEST_SCALES, classifies_masks, segmentation_scores
from hf_semseg.metrics import SegmentationMetrics
from hf_semseg.training import (
    OPTIONAL_FLAG,
    RunOptionError,
    active_weight_bits,
    check_has_splits,
    empty_split_error,
    exit_on_user_error,
    json_number,
    load_segmentation_dataset,
    loading,
    require_columns,
    to_arrays,
    without_image_decoding,
)


def parse_args(argv=None):
    # a usage error is one `error:` line and exit status 1, as every other user error
    parser = OneLineUsageParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="saved model folder or Hub id")
    parser.add_argument("--dataset_name", default=None, help="Hub id or local folder; none = the demo dataset")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--label_column", default="label")
    parser.add_argument(
        "--do_reduce_labels", **OPTIONAL_FLAG, help="reduce label 0 (default: as the model's processor)"
    )
    parser.add_argument("--mode", choices=("whole", "slide", "multi_scale"), default="whole")
    parser.add_argument("--crop_size", type=int, default=512, help="sliding-window crop (slide mode)")
    parser.add_argument("--stride", type=int, default=341, help="sliding-window stride (slide mode)")
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument("--predictions_dir", type=Path, default=None)
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument(
        "--weight_bits",
        type=int,
        default=None,
        help="evaluate at this weight width (1-8): an any-precision model's top bits, a float model quantised first",
    )
    return parser.parse_args(argv)


def use_weight_bits(model, bits: int) -> None:
    """Sets an any-precision model to ``bits``; a float hf-semseg model is quantised first (post-training, 8-bit
    codes by rounding, then the top ``bits``)."""
    if not hasattr(model, "set_weight_bits"):
        raise RunOptionError(f"--weight_bits {bits}: {type(model).__name__} has no any-precision weights")
    try:
        if not model.config.weight_bits:
            model.to_any_precision([bits])
        model.set_weight_bits(bits)
    except ValueError as error:
        raise RunOptionError(f"--weight_bits {bits}: {error}") from None


def predict(model, processor, image, args) -> torch.Tensor:
    """The ``(H, W)`` class map of one image at its own size, as the original of the model's family evaluates
    (:func:`hf_semseg.inference.segmentation_scores`): multi-scale mode is the papers' ms+flip (the processor at every
    ratio of ``TEST_SCALES``, with VWFormer's ``ResizeToMultiple`` at each; detectron2's ``TEST.AUG`` sizes for
    Mask2Former-style models)."""
    if args.mode == "slide":
        window = {"crop_size": (args.crop_size, args.crop_size), "stride": (args.stride, args.stride)}
        scores = segmentation_scores(model, processor, image, **window)
    elif args.mode == "multi_scale":
        scores = segmentation_scores(model, processor, image, scales=TEST_SCALES, flip=True)
    else:
        scores = segmentation_scores(model, processor, image)
    return scores.argmax(0).cpu()


#: the files a run writes into ``--predictions_dir`` (``00012_mask.png``, ``00012_overlay.png``)
PREDICTION_FILE = re.compile(r"^\d{5,}_(mask|overlay)\.png$")


@contextmanager
def staged_folder(folder: Path | None):
    """Yields a hidden folder beside ``folder`` to write into; on success its files are moved into ``folder``
    (created then) and the predictions of an earlier run that this one did not write are removed (a run over fewer
    samples, or of another model, left the older run's later samples mixed with its own); other files are left. On
    any failure the hidden folder is removed: a failed run leaves no partial predictions and ``folder`` as it was."""
    if folder is None:
        yield None
        return
    created = [parent for parent in [folder.parent, *folder.parent.parents] if not parent.exists()]
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name[:100]}.partial-", dir=folder.parent))
    except OSError as error:
        remove_empty(created)
        raise RunOptionError(f"--predictions_dir {folder}: cannot be written ({error.strerror or error})") from None
    try:
        yield staging
        folder.mkdir(exist_ok=True)
        written = set()
        for file in sorted(staging.iterdir()):
            os.replace(file, folder / file.name)
            written.add(file.name)
        for file in folder.iterdir():
            if PREDICTION_FILE.match(file.name) and file.name not in written and file.is_file():
                file.unlink()
    except BaseException as error:
        if not folder.exists():  # the run failed before its predictions were put in place
            shutil.rmtree(staging, ignore_errors=True)
            remove_empty(created)
        if isinstance(error, OSError):  # a full disk, a file-size limit, ...
            raise RunOptionError(f"--predictions_dir {folder}: cannot be written ({error.strerror or error})") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_empty(folders: list[Path]) -> None:
    """Removes the ``folders`` a failed run created (deepest first), where they are still empty."""
    for created in folders:
        try:
            created.rmdir()
        except OSError:
            break


def check_options(args) -> None:
    """Refuses, before any work and naming the option, what would evaluate nothing (``--max_samples`` 0 was read as
    "no limit" and a negative one emptied the split: NaN metrics with exit status 0), sliding windows that cannot
    cover the image, and a predictions folder that is a file (a traceback after the evaluation)."""
    if args.max_samples is not None and args.max_samples < 1:
        raise RunOptionError(f"--max_samples {args.max_samples}: expected at least 1 sample (leave it out for all)")
    if args.mode == "slide":
        for option, value in (("--crop_size", args.crop_size), ("--stride", args.stride)):
            if value < 1:
                raise RunOptionError(f"{option} {value}: expected a positive number of pixels")
        if args.stride > args.crop_size:
            raise RunOptionError(
                f"--stride {args.stride}: larger than --crop_size {args.crop_size}, the windows would leave pixels "
                "uncovered"
            )
    if args.predictions_dir is not None:
        check_predictions_dir(args.predictions_dir)


def check_predictions_dir(folder: Path) -> None:
    """The predictions folder must be a folder, or go where one can be made: its nearest existing parent a writable
    folder (a file there, or a read-only parent, failed after the evaluation with a traceback); a path the system
    cannot check (a name too long, a folder that cannot be entered) is named."""
    try:
        if folder.exists() and not folder.is_dir():
            raise RunOptionError(f"--predictions_dir {folder}: is a file (expected a folder)")
        existing = next(path for path in [folder, *folder.parents] if path.exists())
        if not existing.is_dir():
            raise RunOptionError(f"--predictions_dir {folder}: {existing} is a file (expected a folder)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise RunOptionError(f"--predictions_dir {folder}: folder {existing} is not writable")
    except OSError as error:
        raise RunOptionError(f"--predictions_dir {folder}: cannot be checked ({error.strerror or error})") from None


def check_mode(args, model, processor) -> None:
    """Refuses, before any sample, a mode the model's family has no protocol for: sliding windows of a Mask2Former-style
    model (its originals evaluate whole images), multi-scale with a processor that is not hf-semseg's (the test
    scales resize with the model's own processor)."""
    if args.mode == "slide" and classifies_masks(model):
        raise RunOptionError(
            f"--mode slide: {type(model).__name__} classifies masks and is evaluated on whole images (its originals "
            "have no sliding-window inference); use --mode whole or multi_scale"
        )
    if args.mode == "multi_scale" and not hasattr(processor, "get_unpadded_size"):
        raise RunOptionError(
            f"--mode multi_scale: the model's image processor {type(processor).__name__} is not an hf-semseg "
            "processor, which the test scales resize with"
        )


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_options(args)
    with loading(f"--model {args.model}"):
        model = AutoModelForSemanticSegmentation.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
        processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    model.eval()
    check_mode(args, model, processor)
    if args.weight_bits is not None:
        use_weight_bits(model, args.weight_bits)
    with loading(f"--dataset_name {args.dataset_name}"):
        splits = load_segmentation_dataset(args.dataset_name)
    check_has_splits(splits, args.dataset_name, f"a split {args.split!r} (--split)")
    if args.split not in splits:
        raise RunOptionError(f"--split {args.split}: dataset {args.dataset_name or 'demo'} has splits {list(splits)}")
    dataset = splits[args.split]
    if len(dataset) == 0:
        raise empty_split_error(args.dataset_name, args.split)
    if args.max_samples:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    where = f"split {args.split!r} of {args.dataset_name or 'the demo dataset'}"
    require_columns(dataset, {"--image_column": args.image_column, "--label_column": args.label_column}, where)
    # decoded per sample by to_arrays, which names a file it cannot read
    dataset = without_image_decoding(dataset, (args.image_column, args.label_column))
    num_labels = model.config.num_labels
    reduce_labels = args.do_reduce_labels
    if reduce_labels is None:  # as the model's own pre-processing
        reduce_labels = bool(getattr(processor, "do_reduce_labels", False))
    metric = SegmentationMetrics(num_labels)
    palette = palette_for(model.config.id2label)
    with staged_folder(args.predictions_dir) as predictions_dir:
        for index in tqdm(range(len(dataset)), desc=f"evaluating ({args.mode})"):
            sample = dataset[index]
            columns = (args.image_column, args.label_column)
            values = (sample[column] for column in columns)
            image, label = to_arrays(*values, index, num_labels, reduce_labels, columns, args.split)
            prediction = predict(model, processor, image, args)
            metric.update(prediction, torch.from_numpy(label))
            if predictions_dir is not None:
                mask = colorize(prediction.numpy(), palette)
                mask.save(predictions_dir / f"{index:05d}_mask.png")
                Image.blend(Image.fromarray(image), mask, alpha=0.5).save(predictions_dir / f"{index:05d}_overlay.png")
    result = metric.compute()
    keys = ("mean_iou", "mean_accuracy", "overall_accuracy", "mean_boundary_iou", "trimap_mean_iou")
    summary = {key: json_number(result[key]) for key in keys}
    weight_bits = active_weight_bits(model)
    if weight_bits is not None:  # the width it measured (--weight_bits, else the folder's own)
        summary["weight_bits"] = weight_bits
    summary["per_category_iou"] = {
        model.config.id2label[i]: json_number(v) for i, v in enumerate(result["per_category_iou"])
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    try:
        with exit_on_user_error(), terminate_with_cleanup():  # SIGTERM unwinds as Ctrl-C does: no staging left
            main()
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); no predictions were written", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)
    except Terminated:
        print("error: terminated (SIGTERM); no predictions were written", file=sys.stderr)
        sys.exit(TERMINATED_STATUS)
