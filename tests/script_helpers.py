"""Helpers shared by the tests of the scripts (converters and examples)."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import torch

from hf_semseg.models.modeling_semask_swin import relative_position_index


def key_list_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict of the ``[key, shape]`` pairs listed in ``path`` (the key lists of released checkpoints): meta
    tensors (no memory), except the relative position indices, which the converters check, with real values."""
    state_dict = {}
    for key, shape in json.loads(Path(path).read_text()):
        if key.endswith("relative_position_index"):
            state_dict[key] = relative_position_index(int(round(shape[0] ** 0.5))).view(shape)
        else:
            state_dict[key] = torch.empty(shape, device="meta")
    return state_dict


def run_script(script: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs a converter script in a fresh interpreter; stdout and stderr as text."""
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout)


def load_example(path: Path):
    """The script at ``path`` (an example script) imported as a module, for calling its functions in-process."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def help_default(help_text: str, option: str) -> str | None:
    """The ``(default: X)`` that ``--help`` prints for ``--option`` (whitespace-normalised help text), or None: the
    first default after the option's own entry (its metavar not closing a usage bracket)."""
    match = re.search(rf"--{option} \S+(?<!\]) (?:(?!\(default: ).)*\(default: ([^)]*)\)", help_text)
    return match.group(1) if match else None
