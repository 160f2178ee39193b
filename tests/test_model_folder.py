"""The one rule of the model layer: ``hf_semseg/models/`` is a flat folder of portable modules.

Every module there is what ``save_pretrained`` copies next to the weights, so each one may import only torch,
torchvision, transformers (and huggingface_hub, which transformers' own configuration modules use), numpy, PIL, the
standard library and its single-dot siblings - never the package around it, never through a fallback. The
fresh-process loads of every family and every VWFormer backbone are in the common suite
(``test_reload_in_fresh_process_uses_only_saved_code``).
"""

import ast
import sys

import pytest

from conftest import REPO_ROOT


MODEL_FOLDER = REPO_ROOT / "hf_semseg" / "models"
ALLOWED_TOP_LEVEL = {"torch", "torchvision", "transformers", "huggingface_hub", "numpy", "PIL"}
PIL_BACKEND_MODULES = {"image_processing_pil_keep_ratio.py", "image_processing_pil_semask_mask2former.py"}


def portable_modules() -> list[str]:
    return sorted(path.name for path in MODEL_FOLDER.glob("*.py") if path.name != "__init__.py")


def imports_of(filename: str) -> list[tuple[int, str | None, int]]:
    """``(level, module, line)`` of every import statement of a module, wherever it stands."""
    tree = ast.parse((MODEL_FOLDER / filename).read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(0, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module, node.lineno))
    return found


def test_the_folder_is_flat_and_holds_every_family():
    assert not [path.name for path in MODEL_FOLDER.iterdir() if path.is_dir() and path.name != "__pycache__"]
    assert not [path.name for path in MODEL_FOLDER.iterdir() if path.is_symlink()]
    modules = set(portable_modules())
    for family in ("semask_swin", "pale", "vwformer", "semask_mask2former"):
        assert {f"configuration_{family}.py", f"modeling_{family}.py"} <= modules, family
    assert {"image_processing_keep_ratio.py", "image_processing_pil_keep_ratio.py"} <= modules
    assert (MODEL_FOLDER / "__init__.py").read_text().strip().startswith('"""')  # a docstring, no imports
    assert not [node for node in ast.parse((MODEL_FOLDER / "__init__.py").read_text()).body[1:]]


@pytest.mark.parametrize("filename", portable_modules())
def test_module_imports_only_portable_packages_and_siblings(filename):
    allowed = ALLOWED_TOP_LEVEL | set(sys.stdlib_module_names)
    if filename in PIL_BACKEND_MODULES:  # the PIL backends must work where torchvision is not installed
        allowed = allowed - {"torchvision"}
    for level, module, line in imports_of(filename):
        where = f"{filename}:{line}"
        if level == 0:
            assert module.split(".")[0] in allowed, f"{where} imports {module}"
            continue
        # `from .sibling import name` only: `from ..x` breaks save_pretrained, `from . import x` is not copied
        assert level == 1 and module is not None, f"{where}: only `from .sibling import name` is portable"
        assert (MODEL_FOLDER / f"{module}.py").is_file(), f"{where}: no sibling module {module}.py"
        if filename in PIL_BACKEND_MODULES:
            assert module not in ("image_processing_keep_ratio", "image_processing_semask_mask2former"), where


@pytest.mark.parametrize("filename", portable_modules())
def test_module_uses_no_import_tricks(filename):
    """No import fallbacks, no ``sys.modules`` surgery, no rewriting of a saved folder, no config ``isinstance``."""
    source = (MODEL_FOLDER / filename).read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            handled = {ast.unparse(handler.type) for handler in node.handlers if handler.type is not None}
            assert not handled & {"ImportError", "ModuleNotFoundError"}, f"{filename}:{node.lineno}: import fallback"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            checked = ast.unparse(node.args[1])
            assert "Config" not in checked, f"{filename}:{node.lineno}: isinstance on {checked} (duck-type configs)"
        if isinstance(node, ast.FunctionDef):
            assert node.name != "save_pretrained", f"{filename}:{node.lineno}: save_pretrained override"
    assert "sys.modules" not in source and "importlib" not in source, filename


def test_every_sibling_is_reachable_from_a_class_that_is_saved():
    """Each module is imported by some family's entry point, so no file of the folder is dead weight."""
    entry_points = [name for name in portable_modules() if name.startswith(("modeling_", "image_processing_"))]
    reachable, pending = set(), list(entry_points)
    while pending:
        name = pending.pop()
        if name in reachable:
            continue
        reachable.add(name)
        pending += [f"{module}.py" for level, module, _ in imports_of(name) if level == 1]
    assert reachable == set(portable_modules())
