import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# remote-code modules loaded by the tests are cached in a throw-away folder, not in the user's ~/.cache; the folder is
# removed when the session ends (the fresh processes the tests start inherit it through the environment). Each
# pytest-xdist worker caches in a subfolder of its own: two workers loading saved folders of the same name would
# write the same module files at once
if "HF_MODULES_CACHE" not in os.environ:
    _MODULES_CACHE = tempfile.mkdtemp(prefix="hf_semseg_modules_")
    os.environ["HF_MODULES_CACHE"] = os.environ["HF_SEMSEG_TEST_MODULES_CACHE"] = _MODULES_CACHE
    atexit.register(shutil.rmtree, _MODULES_CACHE, ignore_errors=True)
elif "PYTEST_XDIST_WORKER" in os.environ and os.environ["HF_MODULES_CACHE"] == os.environ.get(
    "HF_SEMSEG_TEST_MODULES_CACHE"
):
    os.environ["HF_MODULES_CACHE"] = os.path.join(os.environ["HF_MODULES_CACHE"], os.environ["PYTEST_XDIST_WORKER"])

# under pytest-xdist (``-n N``) the workers share the cores: each computes on its share of them, and the processes the
# tests start inherit that (torch's default of one thread per core in every worker would oversubscribe the machine,
# and OpenMP's spinning threads then slow every worker down many times)
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _THREADS
    import torch

    torch.set_num_threads(int(_THREADS))

REPO_ROOT = Path(__file__).resolve().parents[1]
# reference data made by running the original implementations; it lives next to the repository (never inside it),
# or where HF_SEMSEG_FIXTURES points
FIXTURES = Path(os.environ.get("HF_SEMSEG_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


@pytest.fixture
def float32_on_onednn(monkeypatch):
    """Float32 products on oneDNN (the matmul primitive, the packed weights and their post-ops, the training
    convolution), as on a CPU with AVX-512, whatever this CPU is: the oneDNN route's tests run on every CPU."""
    from hf_semseg.models import modeling_linear

    monkeypatch.setattr(modeling_linear, "float32_product_on_onednn", lambda: True)


def fixture_dir(name: str) -> Path:
    """Path of a shared fixture folder; skips the calling test with the reason when it is absent."""
    path = FIXTURES / name
    if not path.is_dir():
        pytest.skip(f"shared fixture folder {path} is absent (the reference outputs of the original code)")
    return path


def fixture_config_file(name: str, folder: Path) -> Path:
    """The config file the original run of the shared fixture ``name`` would have written, made from the fixture's
    config.json the way a user would pass it to a converter (``--config_file``): ``model = {...}`` as an mmseg ``.py``
    for the mmseg fixtures, the detectron2 config as ``config.yaml`` for the detectron2 ones. Written into
    ``folder``."""
    import json

    import yaml

    config = json.loads((fixture_dir(name) / "config.json").read_text())
    if "detectron2_config" in config:
        path = Path(folder) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config["detectron2_config"]))
        return path
    model = config.get("mmseg_config") or config.get("original_config")
    path = Path(folder) / f"{name}.py"
    path.write_text(f"model = {model!r}\n")
    return path


def pytest_collection_modifyitems(config, items):
    """A test module may list tests that fail today for a known, open reason: ``KNOWN_FAILURES`` maps
    ``"TestClass.test_name"`` to the reason. Those tests are strict xfails: each still runs, and one that starts
    passing fails the suite until it is taken off the list."""
    for item in items:
        known = getattr(getattr(item, "module", None), "KNOWN_FAILURES", None)
        if not known or item.cls is None:
            continue
        reason = known.get(f"{item.cls.__name__}.{getattr(item, 'originalname', item.name)}")
        if reason is not None:
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
