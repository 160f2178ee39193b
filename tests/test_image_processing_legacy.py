"""Folders saved by earlier versions still load.

Before the flat model folder, the keep-ratio processors were called ``SeMaskImageProcessor`` /
``SeMaskImageProcessorPil`` and lived in ``image_processing_semask_swin.py`` / ``image_processing_pil_semask_swin.py``:
a saved ``preprocessor_config.json`` names them in ``image_processor_type`` and ``auto_map``. The folders are written
here by hand (the JSON as those versions wrote it, a minimal ``config.json``), without git.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoImageProcessor

import hf_semseg
from hf_semseg import KeepRatioImageProcessor, KeepRatioImageProcessorPil

from conftest import REPO_ROOT


MODEL_FOLDER = REPO_ROOT / "hf_semseg" / "models"

# preprocessor_config.json as `SeMaskImageProcessor(size=..., size_divisor=64, ...).save_pretrained` wrote it
OLD_PREPROCESSOR_CONFIG = {
    "auto_map": {
        "AutoImageProcessor": {
            "pil": "image_processing_pil_semask_swin.SeMaskImageProcessorPil",
            "torchvision": "image_processing_semask_swin.SeMaskImageProcessor",
        }
    },
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pad": True,
    "do_reduce_labels": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.4, 0.3],
    "image_processor_type": "SeMaskImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"longest_edge": 2560, "shortest_edge": 640},
    "size_divisor": 64,
}

# a 375 x 500 image: keep-ratio resize to (640, 853), then up to a multiple of 64
EXPECTED_SHAPE = (1, 3, 640, 896)


def write_old_folder(folder, image_processor_type="SeMaskImageProcessor", model_type="semask_swin"):
    folder.mkdir(parents=True, exist_ok=True)
    config = {**OLD_PREPROCESSOR_CONFIG, "image_processor_type": image_processor_type}
    (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=2))
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


def write_remote_code(folder):
    """The code an old folder names in its ``auto_map``: here the current portable modules, plus the two former
    module names as one-line modules (how an old Hub repository is given the current code without re-saving it)."""
    for module in MODEL_FOLDER.glob("*.py"):
        if module.name != "__init__.py":
            shutil.copy(module, folder / module.name)
    (folder / "image_processing_semask_swin.py").write_text(
        "from .image_processing_keep_ratio import SeMaskImageProcessor  # noqa: F401\n"
    )
    (folder / "image_processing_pil_semask_swin.py").write_text(
        "from .image_processing_pil_keep_ratio import SeMaskImageProcessorPil  # noqa: F401\n"
    )


def check_saved_settings(processor):
    assert dict(processor.size) == {"longest_edge": 2560, "shortest_edge": 640}
    assert processor.size_divisor == 64 and processor.do_reduce_labels is True
    assert tuple(processor.image_mean) == (0.5, 0.4, 0.3)
    out = processor(
        np.full((375, 500, 3), 124, np.uint8), segmentation_maps=np.zeros((375, 500), np.uint8), return_tensors="pt"
    )
    assert tuple(out.pixel_values.shape) == EXPECTED_SHAPE
    assert abs(out.pixel_values[0, 0, 0, 0].item() - (124 / 255 - 0.5) / 0.229) < 1e-5
    assert out.labels.unique().tolist() == [255]  # label 0 reduced to the ignore index


@pytest.mark.parametrize("model_type", ["semask_swin", "vwformer", "pale"])
@pytest.mark.parametrize("image_processor_type", ["SeMaskImageProcessor", "SeMaskImageProcessorPil"])
@pytest.mark.parametrize("backend", [None, "pil"])
def test_old_folder_loads_without_remote_code(tmp_path, model_type, image_processor_type, backend):
    folder = write_old_folder(tmp_path / "old", image_processor_type, model_type)
    kwargs = {} if backend is None else {"backend": backend}
    processor = AutoImageProcessor.from_pretrained(folder, **kwargs)  # no trust_remote_code: the package's classes
    assert type(processor) is (KeepRatioImageProcessorPil if backend == "pil" else KeepRatioImageProcessor)
    check_saved_settings(processor)


def test_old_folder_saved_again_has_the_current_names(tmp_path):
    processor = AutoImageProcessor.from_pretrained(write_old_folder(tmp_path / "old"))
    processor.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "KeepRatioImageProcessor"
    assert saved["auto_map"]["AutoImageProcessor"] == KeepRatioImageProcessor.saved_backends
    assert saved["size_divisor"] == 64 and saved["size"] == {"longest_edge": 2560, "shortest_edge": 640}
    check_saved_settings(KeepRatioImageProcessor.from_pretrained(tmp_path / "new"))


def test_former_class_names_are_deprecated_subclasses(tmp_path):
    folder = write_old_folder(tmp_path / "old")
    for legacy, current in (
        (hf_semseg.SeMaskImageProcessor, KeepRatioImageProcessor),
        (hf_semseg.SeMaskImageProcessorPil, KeepRatioImageProcessorPil),
    ):
        assert issubclass(legacy, current) and legacy is not current
        processor = legacy.from_pretrained(folder)
        assert type(processor) is legacy
        check_saved_settings(processor)


FRESH_PROCESS = """
import sys
{block}
import numpy as np
from transformers import AutoImageProcessor
processor = AutoImageProcessor.from_pretrained({folder!r}, trust_remote_code=True, backend={backend!r})
out = processor(np.full((375, 500, 3), 124, np.uint8), return_tensors="pt")
print(type(processor).__name__, type(processor).__module__.split(".")[0], processor.size_divisor,
      tuple(out["pixel_values"].shape))
"""


def load_in_fresh_process(folder, block: str, backend: str = "torchvision") -> list[str]:
    script = FRESH_PROCESS.format(block=block, folder=str(folder), backend=backend)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_old_folder_loads_as_remote_code_in_fresh_process(tmp_path, backend):
    """trust_remote_code=True, the package not importable: the folder's own modules, under the former names."""
    folder = write_old_folder(tmp_path / "old")
    write_remote_code(folder)
    printed = load_in_fresh_process(folder, 'sys.modules["hf_semseg"] = None', backend)
    name = "SeMaskImageProcessor" if backend == "torchvision" else "SeMaskImageProcessorPil"
    assert printed == [name, "transformers_modules", "64", "(1,", "3,", "640,", "896)"]


def test_old_folder_with_remote_code_prefers_the_imported_package_in_fresh_process(tmp_path):
    """trust_remote_code=True after ``import hf_semseg``: the package's classes, as for any registered class."""
    folder = write_old_folder(tmp_path / "old")
    write_remote_code(folder)
    printed = load_in_fresh_process(folder, "import hf_semseg")
    assert printed == ["KeepRatioImageProcessor", "hf_semseg", "64", "(1,", "3,", "640,", "896)"]
