"""Every command line's ``--help`` opens with its docstring's first paragraph: they took the docstring's second line,
which was blank (no description) or the middle of a sentence."""

import ast
import importlib
import re

import pytest
from script_helpers import load_example

from conftest import REPO_ROOT


SCRIPTS = [
    "examples/run_semantic_segmentation.py",
    "examples/run_semantic_segmentation_no_trainer.py",
    "examples/evaluate_semantic_segmentation.py",
    "examples/semask_demo.py",
    *(f"conversion/convert_{name}_to_hf.py" for name in ("semask_fpn", "semask_d2", "vwformer", "vwformer_d2")),
    "hf_semseg/export.py",  # python -m hf_semseg.export
]


def load_command(script: str):
    """The command's module: a package module (relative imports) imported, a script loaded from its path."""
    if script.startswith("hf_semseg/"):
        return importlib.import_module(script.removesuffix(".py").replace("/", "."))
    return load_example(REPO_ROOT / script)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_describes_the_command_with_its_docstring(script, capsys):
    path = REPO_ROOT / script
    first_paragraph = ast.get_docstring(ast.parse(path.read_text())).split("\n\n")[0]
    module = load_command(script)
    with pytest.raises(SystemExit) as exit_info:
        if "run_semantic_segmentation.py" in script:
            module.build_parser().parse_args_into_dataclasses(["--help"])
        elif "evaluate_" in script:
            module.parse_args(["--help"])
        else:  # the commands whose entry point takes the argument list
            module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: ")
    # argparse rewraps the paragraph (also at hyphens): compared without whitespace
    assert re.sub(r"\s", "", first_paragraph) in re.sub(r"\s", "", text), text[:600]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_usage_error_is_one_line_and_exit_status_1(script, capsys):
    """argparse's own: the whole usage and exit status 2 (14 lines for the evaluation script); every other user
    error of these commands is one ``error:`` line and status 1."""
    module = load_command(script)
    with pytest.raises(SystemExit) as exit_info:
        if "run_semantic_segmentation.py" in script:
            module.build_parser().parse_args_into_dataclasses(["--crop_size", "abc"])
        elif hasattr(module, "parse_args"):
            module.parse_args(["--no_such_option", "1"])
        else:
            module.main(["--no_such_option", "1"])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.endswith(" (see --help)\n") and error.count("\n") == 1, error
