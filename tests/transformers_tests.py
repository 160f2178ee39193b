"""transformers' own common test modules (``ModelTesterMixin``, ``BackboneTesterMixin``, ``ConfigTester``,
``ImageProcessingTestMixin``), for the installed transformers version, importable by our tests.

They are not in the transformers wheel, but the sdist of every release carries them (its top-level ``tests/*.py``).
:func:`load_common_tests` downloads the sdist of the installed ``transformers.__version__`` once with pip
(``pip download transformers==<version> --no-binary :all: --no-deps``), extracts only the top-level ``tests/*.py``
files into a package ``transformers_common_tests`` of a cache folder **outside the repository** and imports them from
there. Nothing third-party is ever written into the repository.

Cache folder: ``$HF_SEMSEG_TRANSFORMERS_TESTS/<version>/`` when that variable is set, else
``$XDG_CACHE_HOME/hf_semseg/transformers-tests/<version>/`` (``~/.cache/...`` without ``XDG_CACHE_HOME``)::

    <version>/
        transformers_common_tests/          the package (sys.path gets <version>/)
            __init__.py                     ours (empty)
            test_modeling_common.py ...     from the sdist, unchanged
            exporters/test_export.py        ours: stand-ins of the modules the common
            generation/test_utils.py        modules import from sub-folders of
            utils/test_configuration_utils.py   transformers' tests/ that the sdist lacks
        utils/fetch_hub_objects_for_ci.py   ours: stand-in of transformers' utils/ script
        COMPLETE                            marker: version, sdist name, extracted files

To fill the cache on a machine without network access, copy such a folder from another machine (same version), or
unpack the sdist's top-level ``tests/*.py`` into ``transformers_common_tests/`` yourself and run
:func:`ensure_common_tests` once (it then only writes the stand-ins and the marker).

When the sdist cannot be had (no network, a development version that is not on the package index, pip failing), or
the modules do not import, :func:`load_common_tests` raises :class:`TransformersTestsUnavailable` with the reason;
importing this module never fails.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace


ENV_VAR = "HF_SEMSEG_TRANSFORMERS_TESTS"
PACKAGE = "transformers_common_tests"
MARKER = "COMPLETE"
#: seconds pip may take to download the sdist (about 11 MB)
DOWNLOAD_TIMEOUT = 300
#: the common modules our tests import, by the attribute name :func:`load_common_tests` gives them
COMMON_MODULES = {
    "modeling": "test_modeling_common",
    "backbone": "test_backbone_common",
    "configuration": "test_configuration_common",
    "image_processing": "test_image_processing_common",
}

# -- stand-ins of modules the common files import from parts of transformers' repository that are not in the sdist --
# (written by us; each only provides the names the common modules import)
_STANDINS = {
    f"{PACKAGE}/__init__.py": '"""transformers\' common test modules, extracted from the sdist by hf-semseg."""\n',
    f"{PACKAGE}/exporters/__init__.py": "",
    f"{PACKAGE}/exporters/test_export.py": '''
        """Stand-in (hf-semseg) of transformers' tests/exporters/test_export.py, which is not in the sdist: the export
        tests (torch.export / ONNX) of ModelTesterMixin are absent from our runs."""


        class ExportTesterMixin:
            pass
    ''',
    f"{PACKAGE}/generation/__init__.py": "",
    f"{PACKAGE}/generation/test_utils.py": '''
        """Stand-in (hf-semseg) of transformers' tests/generation/test_utils.py, which is not in the sdist: no
        hf-semseg model generates, so the generation tests do not apply."""


        class GenerationTesterMixin:
            pass
    ''',
    f"{PACKAGE}/utils/__init__.py": "",
    f"{PACKAGE}/utils/test_configuration_utils.py": '''
        """Stand-in (hf-semseg) of transformers' tests/utils/test_configuration_utils.py, which is not in the sdist.

        ``ConfigTester.check_config_arguments_init`` builds a config from ``config_common_kwargs`` and checks that every
        value is set on it (``dtype`` must become ``torch.float16``). The keys are the public fields of transformers
        5's ``PreTrainedConfig`` (plus ``output_attentions``, an init argument stored behind a property), each with a
        value different from its default, as upstream's dict requires."""

        config_common_kwargs = {
            "return_dict": False,
            "output_hidden_states": True,
            "output_attentions": True,
            "dtype": "float16",
            "chunk_size_feed_forward": 5,
            "architectures": ["BertModel"],
            "id2label": {0: "label"},
            "label2id": {"label": 0},
            "problem_type": "regression",
        }
    ''',
    "utils/fetch_hub_objects_for_ci.py": '''
        """Stand-in (hf-semseg) of transformers' utils/fetch_hub_objects_for_ci.py (not in the sdist), which maps a
        Hub URL to a copy that transformers' CI fetched beforehand. We have no such copies: the URL is returned
        unchanged (``load_image`` then downloads it), and with ``HF_HUB_OFFLINE`` set the calling test is skipped
        with the URL as the reason instead of failing on the network."""

        import os
        import unittest


        def url_to_local_path(url, return_url_if_not_found=True):
            if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
                raise unittest.SkipTest(f"needs {url} from the Hub, and HF_HUB_OFFLINE is set")
            return url
    ''',
}


class TransformersTestsUnavailable(RuntimeError):
    """transformers' common test modules cannot be had; the message says why (tests skip with it)."""


def installed_version() -> str:
    import transformers

    return transformers.__version__


def cache_dir(version: str | None = None) -> Path:
    """``<root>/<version>``: the folder of one version's extracted common tests (it may not exist yet)."""
    version = version or installed_version()
    root = os.environ.get(ENV_VAR)
    if root:
        root = Path(root).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base).expanduser() / "hf_semseg" / "transformers-tests"
    return root.resolve() / version


def _write_standins(folder: Path) -> None:
    for relative, text in _STANDINS.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")


def _download_sdist(version: str, destination: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"transformers=={version}",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
        str(destination),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise TransformersTestsUnavailable(
            f"downloading the transformers {version} sdist took more than {DOWNLOAD_TIMEOUT}s ({' '.join(command)})"
        ) from None
    except OSError as error:
        raise TransformersTestsUnavailable(f"could not run pip to download the transformers sdist: {error}") from None
    archives = sorted(destination.glob("transformers-*.tar.gz"))
    if result.returncode != 0 or not archives:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise TransformersTestsUnavailable(
            f"could not download the transformers {version} sdist with pip (exit code {result.returncode}): "
            + " | ".join(tail)
        )
    return archives[0]


def _extract_common_modules(archive: Path, package_folder: Path) -> list[str]:
    """Writes the top-level ``tests/*.py`` files of the sdist ``archive`` into ``package_folder``; returns their
    names. Members are read and written by name (no ``extractall``), so nothing lands outside the folder."""
    names = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            # <root>/tests/<name>.py, no sub-folder
            if len(parts) != 3 or parts[1] != "tests" or not parts[2].endswith(".py") or not member.isfile():
                continue
            name = parts[2]
            if name == "__init__.py" or name.startswith("."):
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            (package_folder / name).write_bytes(source.read())
            names.append(name)
    missing = [f"{module}.py" for module in COMMON_MODULES.values() if f"{module}.py" not in names]
    if missing:
        raise TransformersTestsUnavailable(f"the sdist {archive.name} has no tests/{', tests/'.join(missing)}")
    return sorted(names)


def ensure_common_tests(version: str | None = None) -> Path:
    """The cache folder of ``version`` (default: the installed one) with the common modules and our stand-ins,
    downloading and extracting the sdist the first time. Raises :class:`TransformersTestsUnavailable`."""
    version = version or installed_version()
    folder = cache_dir(version)
    if (folder / MARKER).is_file():
        return folder
    package_folder = folder / PACKAGE
    if package_folder.is_dir() and all((package_folder / f"{m}.py").is_file() for m in COMMON_MODULES.values()):
        # filled by hand (see the module docstring): add what is ours
        _write_standins(folder)
        (folder / MARKER).write_text(json.dumps({"version": version, "sdist": None}, indent=1) + "\n")
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=folder.parent))
    except OSError as error:
        raise TransformersTestsUnavailable(f"cannot create the cache folder {folder}: {error}") from None
    try:
        download = staging / "download"
        download.mkdir()
        archive = _download_sdist(version, download)
        (staging / PACKAGE).mkdir()
        names = _extract_common_modules(archive, staging / PACKAGE)
        _write_standins(staging)
        shutil.rmtree(download)
        marker = {"version": version, "sdist": archive.name, "extracted": names}
        (staging / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        try:
            staging.rename(folder)  # atomic; another process may have won the race
        except OSError:
            if not (folder / MARKER).is_file():
                raise
    except tarfile.TarError as error:
        raise TransformersTestsUnavailable(
            f"the downloaded transformers {version} sdist is unreadable: {error}"
        ) from None
    except OSError as error:
        raise TransformersTestsUnavailable(f"cannot write the common tests into {folder}: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


_LOADED: SimpleNamespace | None = None
_FAILURE: str | None = None


def load_common_tests() -> SimpleNamespace:
    """The common modules of the installed transformers, imported: ``.modeling`` (test_modeling_common),
    ``.backbone``, ``.configuration``, ``.image_processing``, and ``.folder`` (the cache folder). Memoised, failure
    included. Raises :class:`TransformersTestsUnavailable` with the reason."""
    global _LOADED, _FAILURE
    if _LOADED is not None:
        return _LOADED
    if _FAILURE is not None:
        raise TransformersTestsUnavailable(_FAILURE)
    try:
        folder = ensure_common_tests()
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
        modules = {}
        for attribute, module in COMMON_MODULES.items():
            try:
                with warnings.catch_warnings():
                    # transformers registers its own marks (flash_attn_test, torch_compile_test...) in its conftest
                    warnings.filterwarnings("ignore", message=r"Unknown pytest\.mark\.")
                    modules[attribute] = importlib.import_module(f"{PACKAGE}.{module}")
            except ImportError as error:
                raise TransformersTestsUnavailable(
                    f"transformers' {module}.py (from {folder}) does not import: {error!r}; "
                    f"tests/transformers_tests.py may need a stand-in for it"
                ) from None
    except TransformersTestsUnavailable as error:
        _FAILURE = str(error)
        raise
    _LOADED = SimpleNamespace(folder=folder, **modules)
    return _LOADED


__all__ = [
    "ENV_VAR",
    "TransformersTestsUnavailable",
    "cache_dir",
    "ensure_common_tests",
    "load_common_tests",
]
