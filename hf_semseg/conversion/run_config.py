"""The configuration of the training run a checkpoint comes from, and the settings a converter takes from it.

A checkpoint's weights do not hold every value the model needs (the SeMask semantic window, VWFormer's attention heads
and short-cut, Mask2Former's pre-norm, the test pre-processing). A converter takes each such value, in this order, from

1. the run's config file (``--config_file``): the mmseg config (``.py``) of the run, or the ``config.yaml`` detectron2
   writes into its output folder (the full ``cfg.dump()``);
2. the config text inside the checkpoint (mmseg's ``meta['config']``, the run's ``cfg.pretty_text``);
3. the released variant whose weights (names and shapes) are exactly the checkpoint's - named with ``--variant``, or
   found by matching - and then says so;

and otherwise stops before writing anything, naming each missing value and the flag that supplies it. A key a run's
config leaves out has the value the original code gives it (the class's or detectron2's default), as in the run.

Config files are read without running them: an mmseg config is parsed (:mod:`ast`) and only literals, ``dict(...)``
calls, arithmetic and earlier names are evaluated (``_base_`` files are merged as mmcv merges them); a detectron2 config
is read with ``yaml.safe_load`` (``_BASE_`` merged as detectron2 does; an ``!!python/object/apply:eval`` value is kept as
its unevaluated text, and a converter that needs it stops, naming it).
"""

import ast
import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .common import CheckpointError, ConversionError, _short_repr, check_accessible


class ConfigFileError(ConversionError):
    """A run's config file cannot be read, or contradicts the checkpoint."""


_MISSING = object()
#: the largest list or string an mmseg config expression may build (``[0] * 10**9`` is refused, not evaluated)
_MAX_LENGTH = 100_000


# --------------------------------------------------------------------------------------------------------------------
# Reading config files
# --------------------------------------------------------------------------------------------------------------------


def _evaluate(node: ast.AST, names: dict, where: str):
    """The value of an mmseg config expression: literals, containers, ``dict(...)`` calls, names assigned earlier in
    the file, unary minus and arithmetic; anything else (calls, attributes, comprehensions ...) is refused, naming the
    line."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_evaluate(element, names, where) for element in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        result = {}
        for key, value in zip(node.keys, node.values):
            if key is None:  # {**other}
                result.update(_as_dict(_evaluate(value, names, where), node, where))
            else:
                result[_evaluate(key, names, where)] = _evaluate(value, names, where)
        return result
    if isinstance(node, ast.Name):
        if node.id in names:
            return copy.deepcopy(names[node.id])
        raise ConfigFileError(f"{where}, line {node.lineno}: {node.id!r} is not defined before it is used")
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "dict"
        and len(node.args) <= 1
    ):
        result = _as_dict(_evaluate(node.args[0], names, where), node, where) if node.args else {}
        for keyword in node.keywords:
            value = _evaluate(keyword.value, names, where)
            if keyword.arg is None:  # dict(**other)
                result.update(_as_dict(value, node, where))
            else:
                result[keyword.arg] = value
        return result
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _evaluate(node.operand, names, where)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv)):
        left, right = _evaluate(node.left, names, where), _evaluate(node.right, names, where)
        return _arithmetic(node, left, right, where)
    raise ConfigFileError(
        f"{where}, line {getattr(node, 'lineno', '?')}: cannot read `{ast.unparse(node)[:60]}` without running the "
        "file (only literals, dict(...), arithmetic and names assigned earlier are read)"
    )


def _as_dict(value, node: ast.AST, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigFileError(f"{where}, line {node.lineno}: `{ast.unparse(node)[:60]}` unpacks a non-dict")
    return value


def _arithmetic(node: ast.BinOp, left, right, where: str):
    numbers = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in (left, right))
    sequences = isinstance(left, (list, tuple, str)) and type(left) is type(right)
    repeat = isinstance(left, (list, tuple, str)) and isinstance(right, int) and not isinstance(right, bool)
    allowed = numbers or (sequences and isinstance(node.op, ast.Add)) or (repeat and isinstance(node.op, ast.Mult))
    if allowed and repeat and not sequences and len(left) * max(right, 0) > _MAX_LENGTH:
        allowed = False
    if allowed and sequences and len(left) + len(right) > _MAX_LENGTH:  # doubling by a + a, step by step
        allowed = False
    if allowed and numbers and isinstance(node.op, ast.Mult) and all(isinstance(v, int) for v in (left, right)):
        allowed = abs(left).bit_length() + abs(right).bit_length() <= 128  # squaring by a * a: no config holds these
    if allowed and isinstance(node.op, (ast.Div, ast.FloorDiv)) and right == 0:
        allowed = False
    if not allowed:
        raise ConfigFileError(f"{where}, line {node.lineno}: cannot evaluate `{ast.unparse(node)[:60]}`")
    operations = {
        ast.Add: lambda: left + right,
        ast.Sub: lambda: left - right,
        ast.Mult: lambda: left * right,
        ast.Div: lambda: left / right,
        ast.FloorDiv: lambda: left // right,
    }
    return operations[type(node.op)]()


@contextmanager
def nesting_is_a_config_error(where: str) -> Iterator[None]:
    """A ``RecursionError`` inside as a :class:`ConfigFileError` naming the config (``where``): Python's stack ends
    some hundreds of levels into nested lists, dicts or operators (yaml's composer, :func:`_evaluate`, the copies and
    merges), and no run's config nests that deeply: such text is hand-made or corrupt, and is refused in one line."""
    try:
        yield
    except RecursionError as error:
        raise ConfigFileError(
            f"{where}: nested too deeply to be read (hundreds of levels of lists, dicts or operators), expected a "
            "run's config, which nests a few levels"
        ) from error


def parse_mmseg_config_text(text: str, where: str) -> dict:
    """The top-level names of an mmseg config's text (a config file, or ``meta['config']``), evaluated without running
    it (:func:`_evaluate`); ``where`` names the text in errors. Imports and other statements are refused, naming the
    line."""
    if "{{" in text and "_base_." in text:
        raise ConfigFileError(f"{where}: `{{{{_base_.…}}}}` references are not supported; pass the run's dumped config")
    try:
        with nesting_is_a_config_error(where):
            module = ast.parse(text)
    except SyntaxError as error:
        raise ConfigFileError(f"{where}: not a Python (mmseg) config: line {error.lineno}: {error.msg}") from error
    except MemoryError as error:  # the parser's own stack: an expression thousands of operators deep
        raise ConfigFileError(
            f"{where}: nested too deeply (or too large) to be parsed, expected a run's config, which nests a few levels"
        ) from error
    with nesting_is_a_config_error(where):
        return _module_names(module, where)


def _module_names(module: ast.Module, where: str) -> dict:
    """The names the statements of a parsed mmseg config assign (:func:`parse_mmseg_config_text`)."""
    names: dict = {}
    for statement in module.body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring
        if (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
        ):
            names[statement.targets[0].id] = _evaluate(statement.value, names, where)
            continue
        raise ConfigFileError(
            f"{where}, line {statement.lineno}: `{ast.unparse(statement).splitlines()[0][:60]}` is not a plain "
            "assignment; only `name = value` statements are read"
        )
    return names


def merge_config(base: dict, child: dict) -> dict:
    """mmcv's merge of a config over its ``_base_``: dicts merge key by key (unless the child's has
    ``_delete_=True``), anything else is replaced."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict):
            value = dict(value)
            delete = value.pop("_delete_", False)
            if not delete and isinstance(merged.get(key), dict):
                value = merge_config(merged[key], value)
        merged[key] = value
    return merged


def _read_text(path: Path, what: str) -> str:
    check_accessible(path, f"--config_file {path}", f"{what} you can read", ConfigFileError)
    if path.is_dir():
        raise ConfigFileError(f"--config_file {path}: a directory, not a file ({what})")
    if not path.is_file():
        raise ConfigFileError(f"--config_file {path}: no such file ({what})")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigFileError(f"--config_file {path}: cannot be read ({error})") from error


def read_mmseg_config(path: str | Path, _seen: tuple = (), files: list | None = None) -> dict:
    """The names of an mmseg config file (``.py``), with its ``_base_`` files merged in as mmcv does (``files``, when
    given, gets the path of every file read)."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigFileError(f"--config_file {_seen[0]}: _base_ files include each other ({path})")
    values = parse_mmseg_config_text(_read_text(path, "an mmseg config"), str(path))
    if files is not None:
        files.append(path)
    merged: dict = {}
    with nesting_is_a_config_error(f"--config_file {path}"):
        for base in _base_files(values.pop("_base_", []), path):
            merged = merge_config(merged, read_mmseg_config(path.parent / base, _seen + (path.resolve(),), files))
        return merge_config(merged, values)


def _base_files(bases, path: Path) -> list[str]:
    """The file names of an mmseg config's ``_base_`` (one name or a list / tuple of them, as mmcv takes it); any
    other value (``None``, a number, a dict, whose keys would be read as file names) is a :class:`ConfigFileError`
    naming the config ``path`` and the value."""
    if isinstance(bases, str):
        return [bases]
    if isinstance(bases, (list, tuple)) and all(isinstance(base, str) for base in bases):
        return list(bases)
    raise ConfigFileError(
        f"--config_file {path}: _base_ = {_short_repr(bases)}, expected a file name or a list of file names (the "
        "configs it builds on)"
    )


@dataclass(frozen=True)
class NotEvaluated:
    """A value a detectron2 config file computes with ``!!python/object/apply:eval [expression]`` (detectron2 reads
    its configs with ``yaml.unsafe_load``; the original repositories' Base files compute ``INPUT.MIN_SIZE_TRAIN``
    this way). The expression is kept as text and never evaluated: a converter that needs the value stops, naming it
    (:func:`check_evaluated`)."""

    expression: str
    file: str

    def __repr__(self) -> str:
        return f"eval({self.expression!r}) (not evaluated)"


def _yaml_loader(path: Path):
    """``yaml.SafeLoader`` plus one tag: ``!!python/object/apply:eval [expression]`` becomes a :class:`NotEvaluated`
    naming ``path`` (any other ``python/*`` tag is still refused, as ``yaml.safe_load`` refuses it)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def not_evaluated(loader, node):
        arguments = loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else []
        if len(arguments) != 1 or not isinstance(arguments[0], str):
            raise yaml.constructor.ConstructorError(
                None, None, "expected one expression (a string) after !!python/object/apply:eval", node.start_mark
            )
        return NotEvaluated(arguments[0], str(path))

    Loader.add_constructor("tag:yaml.org,2002:python/object/apply:eval", not_evaluated)
    return Loader


def read_detectron2_config(path: str | Path, _seen: tuple = (), files: list | None = None) -> dict:
    """A detectron2 ``config.yaml`` (``yaml.safe_load``, with the ``!!python/object/apply:eval`` values of the original
    repositories' Base files kept unevaluated: :class:`NotEvaluated`), with its ``_BASE_`` file merged in as
    detectron2 does (``files``, when given, gets the path of every file read)."""
    import yaml

    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigFileError(f"--config_file {_seen[0]}: _BASE_ files include each other ({path})")
    if files is not None:
        files.append(path)
    text = _read_text(path, "a detectron2 config.yaml")
    with nesting_is_a_config_error(f"--config_file {path}"):
        try:
            values = yaml.load(text, Loader=_yaml_loader(path))
        except yaml.YAMLError as error:
            detail = " ".join(str(error).split())
            raise ConfigFileError(f"--config_file {path}: not a YAML file ({detail})") from error
        if not isinstance(values, dict):
            raise ConfigFileError(
                f"--config_file {path}: holds {type(values).__name__}, not a detectron2 config mapping"
            )
        values = _decode_yacs_values(values)
        base = values.pop("_BASE_", None)
        if base is None:
            return values
        return _merge_yaml(read_detectron2_config(path.parent / str(base), _seen + (path.resolve(),), files), values)


def check_evaluated(where: str, key: str, value):
    """``value``, unless it is (or holds) a :class:`NotEvaluated` expression: then a :class:`ConfigFileError` naming
    the config (``where``), the ``key``, the file that computes it and the expression, which is not evaluated."""
    if isinstance(value, (list, tuple)):
        for item in value:
            check_evaluated(where, key, item)
    if isinstance(value, NotEvaluated):
        raise ConfigFileError(
            f"{where}: {key} is computed in {value.file} by !!python/object/apply:eval {value.expression!r}, which is "
            "not evaluated (a config file's code is never run); set the value itself in the config file"
        )
    return value


def _decode_yacs_values(value):
    """``value`` with every string that is a Python literal evaluated, as detectron2's ``CfgNode`` (yacs) decodes
    the values of a config file it merges: ``TEST: ("ade20k_sem_seg_val",)`` is a tuple there, not a string (other
    strings, e.g. ``D2SwinTransformer``, stay as they are)."""
    if isinstance(value, dict):
        return {key: _decode_yacs_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_yacs_values(item) for item in value]
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
    return value


def config_file_paths(path: str | Path, layout) -> tuple[Path, ...]:
    """The config file ``path`` and every ``_base_`` (mmseg) or ``_BASE_`` (detectron2) file it includes, for a
    converter reading checkpoints of ``layout`` (:data:`~.common.MMSEG` or :data:`~.common.DETECTRON2`)."""
    files: list = []
    reader = read_mmseg_config if layout.name == "mmseg" else read_detectron2_config
    reader(path, files=files)
    return tuple(files)


def _merge_yaml(base: dict, child: dict) -> dict:
    merged = dict(base)
    for key, value in child.items():
        merged[key] = (
            _merge_yaml(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


# --------------------------------------------------------------------------------------------------------------------
# A run's config and the settings taken from it
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """A run's configuration as nested dicts. ``source`` names it in messages (``"--config_file x.py"``, ``"the
    checkpoint's config text"``)."""

    values: dict
    source: str

    def get(self, path: str, default=_MISSING):
        """The value at the dotted ``path`` (``"model.backbone.sem_window_size"``); ``default`` (else a
        ``KeyError``) when absent. A value the file computes by an expression that is not evaluated
        (:class:`NotEvaluated`) is a :class:`ConfigFileError` naming it (:func:`check_evaluated`): only what a
        converter reads must be a value, so a training-only one elsewhere in the file does not stop it."""
        node = self._lookup(path)
        if node is _MISSING:
            if default is _MISSING:
                raise KeyError(path)
            return default
        return node if isinstance(node, dict) else check_evaluated(self.source, path, node)

    def has(self, path: str) -> bool:
        return self._lookup(path) is not _MISSING

    def _lookup(self, path: str):
        node = self.values
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node


#: the sections of an mmseg config the converters read settings from: each must be a dict where the config has it
MMSEG_SECTIONS = ("model", "model.backbone", "model.decode_head", "data")
#: the sections of a detectron2 config the converters read settings from: each must be a mapping where it is there
DETECTRON2_SECTIONS = (
    "MODEL",
    "MODEL.SWIN",
    "MODEL.SEM_SEG_HEAD",
    "MODEL.MASK_FORMER",
    "MODEL.MASK_FORMER.TEST",
    "INPUT",
    "DATASETS",
)


def check_sections(run_config: RunConfig, sections: tuple[str, ...], expected: str) -> RunConfig:
    """``run_config``, once each of ``sections`` it has is a mapping (a ``model`` that is not a dict would read as a
    config without any of its settings: each value "not set", or silently left out); else a :class:`ConfigFileError`
    naming the section, its value and ``expected``."""
    for path in sections:
        if run_config.has(path) and not isinstance(run_config.get(path), dict):
            raise ConfigFileError(f"{run_config.source}: {path} = {run_config.get(path)!r}, expected {expected}")
    return run_config


def mmseg_run_configs(config_file: str | Path | None, meta: dict) -> list[RunConfig]:
    """The run configs of an mmseg checkpoint, first source first: ``config_file``, then ``meta['config']`` (text a
    reader cannot parse is reported, not silently skipped). A section of :data:`MMSEG_SECTIONS` that is not a dict is
    an error naming it."""
    expected = "a dict of settings (dict(...))"
    configs = []
    if config_file is not None:
        run_config = RunConfig(read_mmseg_config(config_file), f"--config_file {config_file}")
        configs.append(check_sections(run_config, MMSEG_SECTIONS, expected))
    text = meta.get("config")
    if isinstance(text, str) and text.strip():
        try:
            run_config = RunConfig(parse_mmseg_config_text(text, "meta['config']"), "the checkpoint's config text")
            configs.append(check_sections(run_config, MMSEG_SECTIONS, expected))
        except ConfigFileError as error:
            if config_file is None:
                raise CheckpointError(f"the config text saved in the checkpoint cannot be read: {error}") from error
    return configs


def detectron2_run_configs(config_file: str | Path | None) -> list[RunConfig]:
    """The run config of a detectron2 checkpoint (which holds none itself): ``config_file`` when given. A section of
    :data:`DETECTRON2_SECTIONS` that is not a mapping (``MODEL: null``) is an error naming it."""
    if config_file is None:
        return []
    run_config = RunConfig(read_detectron2_config(config_file), f"--config_file {config_file}")
    return [check_sections(run_config, DETECTRON2_SECTIONS, "a mapping of settings (a detectron2 config section)")]


@dataclass(frozen=True)
class Setting:
    """A value the weights do not hold.

    Attributes:
        name: the HF config field it sets (a dotted path below the model config, e.g.
            ``"backbone_config.semantic_window_size"``).
        description: what it is, for messages (``"semantic attention window"``).
        path: where the run's config holds it (``"model.backbone.sem_window_size"``).
        code_default: the value the original code gives it when the run's config leaves the key out (only used when
            the config has ``path``'s parent section); ``_MISSING`` when the original has no default.
        read: turns the config's value into the HF field's (checked; a ``ValueError`` names the bad value).
        required: False for training-only values (loss weights, stochastic depth): without a source they keep the
            package's default, and the conversion says so.
    """

    name: str
    description: str
    path: str
    code_default: object = _MISSING
    read: Callable = lambda value: value
    required: bool = True


def training_only(name: str, description: str, path: str, read: Callable = None, code_default=_MISSING) -> Setting:
    """A :class:`Setting` only training reads (a loss weight, stochastic depth): without a source it keeps the
    package's default, and the conversion says so. ``read`` checks the value (default: a finite number)."""
    return Setting(name, description, path, code_default, read or number, required=False)


def get_field(config, name: str):
    for part in name.split(".")[:-1]:
        config = getattr(config, part)
    return getattr(config, name.split(".")[-1])


def set_field(config, name: str, value) -> None:
    for part in name.split(".")[:-1]:
        config = getattr(config, part)
    setattr(config, name.split(".")[-1], value)


@dataclass
class ResolvedSettings:
    """The values of a conversion's :class:`Setting` s and where each came from (``sources[name]``)."""

    values: dict
    sources: dict
    variant: str | None
    defaults: list  # the training-only settings left at the package's default
    training_only: tuple = ()  # the names of the training-only settings

    def describe(self) -> str:
        """One phrase for the summary line and the card: the values that change the model's output and where each
        came from ("original default": the run's config leaves the key out, so the original code's default is the
        run's value), then where the training-only values came from."""
        by_source: dict[str, list[str]] = {}
        for name, source in self.sources.items():
            if name in self.training_only:
                continue
            value = f"{name.split('.')[-1]}={self.values[name]!r}"
            value += " (original default)" if source.endswith(" [default]") else ""
            by_source.setdefault(source.removesuffix(" [default]"), []).append(value)
        parts = [f"{', '.join(values)} from {source}" for source, values in by_source.items()]
        training = sorted(
            {self.sources[name].removesuffix(" [default]") for name in self.training_only if name in self.sources}
        )
        if training:
            parts.append(f"training-only values from {' and '.join(training)}")
        if self.defaults:
            parts.append(f"training-only {', '.join(self.defaults)} at the package defaults")
        return "; ".join(parts) if parts else "every value is in the weights"


def _from_config(setting: Setting, run_config: RunConfig):
    """``(value, source)`` of ``setting`` in ``run_config``: the key's value, or the original code's default when
    the key's section is there but the key is not; ``_MISSING`` when the config does not tell."""
    parent = setting.path.rsplit(".", 1)[0]
    if run_config.has(setting.path):
        raw, how = run_config.get(setting.path), run_config.source
    elif (
        setting.code_default is not _MISSING and "." in setting.path and isinstance(run_config.get(parent, None), dict)
    ):
        raw, how = setting.code_default, f"{run_config.source} [default]"
    else:
        return _MISSING, None
    try:
        return setting.read(raw), how
    except (ValueError, TypeError, AttributeError) as error:
        raise ConfigFileError(f"{run_config.source}: {setting.path} = {raw!r}: {error}") from error


def resolve_settings(
    config,
    settings: list[Setting],
    run_configs: list[RunConfig],
    variant: str | None,
    variant_given: bool,
    config_flag_help: str,
) -> ResolvedSettings:
    """Sets each of ``settings`` on ``config`` from the first source that has it: the ``run_configs`` (config file,
    then the checkpoint's config text), then the released ``variant`` (named, or matched by its exact weights). A
    required value no source has stops the conversion: a :class:`CheckpointError` naming every missing value, where
    a run's config holds it, and the flags that supply it (``config_flag_help``: the config file to pass). A required
    value a config sets differently from a *matched* variant means the checkpoint is not that variant (``variant``
    becomes None); from a *named* variant (``--variant``) it is an error."""
    from ..variants import variant_config

    from_configs = {}
    for setting in settings:
        for run_config in run_configs:
            value, how = _from_config(setting, run_config)
            if value is not _MISSING:
                from_configs[setting.name] = (value, how)
                break
    released = variant_config(variant) if variant is not None else None
    for setting in settings:
        if released is None or not setting.required or setting.name not in from_configs:
            continue
        value, how = from_configs[setting.name]
        if get_field(released, setting.name) != value:
            if variant_given:
                raise ConfigFileError(
                    f"{how.removesuffix(' [default]')}: {setting.path} = {value!r}, but the released variant {variant} (--variant) has "
                    f"{setting.description} {get_field(released, setting.name)!r}; drop --variant or check the config"
                )
            variant, released = None, None
    values, sources, missing, defaults = {}, {}, [], []
    for setting in settings:
        if setting.name in from_configs:
            value, how = from_configs[setting.name]
        elif released is not None:
            value = get_field(released, setting.name)
            how = f"released variant {variant} ({'--variant' if variant_given else 'same weights, names and shapes'})"
        elif setting.required:
            missing.append(f"{setting.description} ({setting.path})")
            continue
        else:
            defaults.append(f"{setting.name.split('.')[-1]}={get_field(config, setting.name)!r}")
            continue
        set_field(config, setting.name, value)
        values[setting.name], sources[setting.name] = value, how
    if missing:
        if run_configs:
            reason = f"not set in {' or '.join(run_config.source for run_config in run_configs)}"
        else:
            reason = "the checkpoint has no config text"
        raise CheckpointError(
            f"the weights do not hold {'; '.join(missing)}: {reason}, and no released model has exactly these "
            f"weights; pass {config_flag_help} with --config_file PATH (or --variant NAME for a released model's "
            "checkpoint)"
        )
    training_only = tuple(setting.name for setting in settings if not setting.required)
    return ResolvedSettings(values, sources, variant, defaults, training_only)


def check_consistent(run_configs: list[RunConfig], checks: list[tuple[str, object, str]]) -> None:
    """Each ``(path, value in the weights, where the weights hold it)`` must agree with the run's config where the
    config sets ``path`` explicitly: a config of another run is refused, naming the key and both values."""
    for run_config in run_configs:
        for path, weights_value, where in checks:
            if not run_config.has(path):
                continue
            value = run_config.get(path)
            if isinstance(value, (list, tuple)) and isinstance(weights_value, (list, tuple)):
                equal = list(value) == list(weights_value)
            else:
                equal = value == weights_value
            if not equal:
                raise ConfigFileError(
                    f"{run_config.source}: {path} = {value!r}, but the checkpoint's weights have {weights_value!r} "
                    f"({where}); it is not the config of the run that saved this checkpoint"
                )


#: where the original Swin's weights (``backbone.patch_embed.proj``, ``backbone.layers.*``: SeMask-FPN, the SeMask and
#: VW detectron2 backbones) hold each hyper-parameter, for the messages of :func:`swin_consistency_checks`
_SWIN_WEIGHTS = {
    "embed_dim": "backbone.patch_embed.proj.weight",
    "patch_size": "backbone.patch_embed.proj.weight",
    "depths": "the backbone.layers.*.blocks.* keys",
    "num_heads": "the relative position bias tables",
    "window_size": "the relative position bias tables",
    "mlp_ratio": "backbone.layers.0.blocks.0.mlp.fc1.weight",
    "qkv_bias": "the backbone's attn.qkv.bias keys",
    "use_absolute_embeddings": "whether the weights hold backbone.absolute_pos_embed",
    "use_patch_norm": "whether the weights hold backbone.patch_embed.norm.*",
    "num_semantic_blocks": "the backbone.layers.*.semantic_layer.class_injection.* keys",
}
#: where a detectron2 config (``MODEL.SWIN``) keeps the Swin hyper-parameters the weights hold
D2_SWIN_PATHS = {
    "embed_dim": "MODEL.SWIN.EMBED_DIM",
    "patch_size": "MODEL.SWIN.PATCH_SIZE",
    "depths": "MODEL.SWIN.DEPTHS",
    "num_heads": "MODEL.SWIN.NUM_HEADS",
    "window_size": "MODEL.SWIN.WINDOW_SIZE",
    "mlp_ratio": "MODEL.SWIN.MLP_RATIO",
    "qkv_bias": "MODEL.SWIN.QKV_BIAS",
    "use_absolute_embeddings": "MODEL.SWIN.APE",
}


def swin_consistency_checks(backbone, paths: dict[str, str]) -> list[tuple[str, object, str]]:
    """The :func:`check_consistent` checks of a Swin backbone in the original key layout: for each field of
    ``paths`` (``embed_dim``, ``patch_size``, ``depths``, ``num_heads``, ``window_size``, ``mlp_ratio``, ``qkv_bias``,
    ``num_semantic_blocks``, ``use_absolute_embeddings`` (``ape``), ``use_patch_norm``), the key a run's config keeps
    it under and its value in ``backbone`` (the fields read from the weights: a dict or a config)."""

    def value(field: str):
        return backbone[field] if isinstance(backbone, dict) else getattr(backbone, field)

    return [(path, value(field), _SWIN_WEIGHTS[field]) for field, path in paths.items()]


def check_representable(run_configs: list[RunConfig], checks: list[tuple[str, Callable, str]]) -> None:
    """Values of the run that change the model's output, that the weights do not hold and that the converted model
    cannot represent: for each ``(path, accepts, what the converted model computes)``, a run's config setting ``path``
    to a value ``accepts`` refuses is refused, naming the key, its value and what the converted model computes."""
    for run_config in run_configs:
        for path, accepts, computes in checks:
            if run_config.has(path) and not accepts(run_config.get(path)):
                raise ConfigFileError(
                    f"{run_config.source}: {path} = {run_config.get(path)!r}, but the converted model {computes} "
                    "and cannot represent this value; it cannot reproduce this run"
                )


#: what a detectron2 run's config may set for any SeMask or VW head that changes the output, is not in the weights
#: and that the converted model cannot represent unless it has the released configs' value
#: (:func:`check_representable`): the pixel decoder's norm (``get_norm``: "GN" is GroupNorm(32, C); a detectron2
#: LayerNorm has the same keys) and where the semantic inference happens relative to the resize to the image
DETECTRON2_HEAD_CHECKS = [
    (
        "MODEL.SEM_SEG_HEAD.NORM",
        lambda value: value == "GN",
        "normalises the pixel decoder's convolutions with GroupNorm(32, C) (NORM 'GN')",
    ),
    (
        "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE",
        lambda value: value is False,
        "(its image processor) resizes the class scores to the image after the semantic inference "
        "(SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE False)",
    ),
]


def qk_scale_check(path: str, embed_dim: int, num_heads: list[int]) -> tuple[str, Callable, str]:
    """The :func:`check_representable` check of a Swin's ``qk_scale``: the original scales the attention by
    ``qk_scale or head_dim ** -0.5``, the converted model always by ``head_dim ** -0.5``."""
    head_dims = sorted({embed_dim * 2**stage // heads for stage, heads in enumerate(num_heads) if heads > 0})

    def accepts(value) -> bool:
        if not value:  # None (or 0): the original's default
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return all(math.isclose(value, head_dim**-0.5, rel_tol=1e-6) for head_dim in head_dims)

    dims = "/".join(map(str, head_dims))
    return path, accepts, f"scales the attention by head_dim ** -0.5 (head_dim {dims}; qk_scale None)"


def align_corners_check(path: str) -> tuple[str, Callable, str]:
    """The :func:`check_representable` check of a decode head's ``align_corners`` (the converted heads resize with
    ``align_corners=False``)."""
    return path, lambda value: not value, "resizes with align_corners=False"


#: mmcv's batch norms (``norm_cfg`` types): in eval mode each normalises with its running statistics, as the converted
#: heads' ``nn.BatchNorm2d`` do (SyncBN differs only in training)
MMCV_BATCH_NORMS = ("BN", "BN2d", "SyncBN", "MMSyncBN")
#: the options of an mmcv ``norm_cfg`` other than its type: ``eps`` changes the output, the others only training
_NORM_CFG_OPTIONS = {"type", "eps", "momentum", "requires_grad"}


def activation_check(path: str, activation: str, where: str) -> tuple[str, Callable, str]:
    """The :func:`check_representable` check of an mmcv ``act_cfg``: ``dict(type=activation)`` (``inplace`` does not
    change the output) is what the converted model applies in ``where``; another activation, or None (none at all),
    is refused."""

    def accepts(value) -> bool:
        return isinstance(value, dict) and value.get("type") == activation and set(value) <= {"type", "inplace"}

    return path, accepts, f"applies {activation} in {where} (act_cfg dict(type={activation!r}))"


def norm_check(path: str, types: tuple[str, ...], eps: float | None, where: str) -> tuple[str, Callable, str]:
    """The :func:`check_representable` check of an mmcv ``norm_cfg``: one of ``types`` with the epsilon ``eps`` (a
    ``norm_cfg`` without ``eps`` has the layers' default, 1e-5; ``eps`` None: any positive one, which the caller
    carries over) and no option other than ``momentum`` / ``requires_grad`` (training only). Another norm (GN or LN
    for BN), None (no norm) or another epsilon is refused."""

    def accepts(value) -> bool:
        if not isinstance(value, dict) or value.get("type") not in types or not set(value) <= _NORM_CFG_OPTIONS:
            return False
        value_eps = value.get("eps", 1e-5)
        if isinstance(value_eps, bool) or not isinstance(value_eps, (int, float)):
            return False
        if not (math.isfinite(value_eps) and value_eps > 0):
            return False
        return eps is None or math.isclose(value_eps, eps, rel_tol=1e-6)

    names = " or ".join(map(repr, types))
    epsilon = "a positive eps" if eps is None else f"eps {eps:g}"
    return path, accepts, f"normalises {where} with norm_cfg type {names}, {epsilon}"


def conv_check(path: str, where: str) -> tuple[str, Callable, str]:
    """The :func:`check_representable` check of an mmcv ``conv_cfg``: None or ``dict(type='Conv2d')`` (``'Conv'``)
    are plain convolutions; another type (a weight-standardised ``ConvWS``, a deformable ``DCN`` ...) is refused."""

    def accepts(value) -> bool:
        return value is None or (
            isinstance(value, dict) and set(value) == {"type"} and value["type"] in ("Conv", "Conv2d")
        )

    return path, accepts, f"uses plain convolutions in {where} (conv_cfg None or dict(type='Conv2d'))"


def stages_check(path: str, computes: str, ordered: bool, negative: bool) -> tuple[str, Callable, str]:
    """The :func:`check_representable` check of a list of backbone stage indices that must be the four stages:
    ``[0, 1, 2, 3]`` in this order when ``ordered`` (a decode head's ``in_index`` picks its inputs by position),
    else in any order (a backbone's ``out_indices``: stages are emitted in order); ``negative``: an index ``-k`` counts
    from the end, as in Python (``in_index``; mmcls ConvNeXt's ``out_indices``), else it matches no stage."""

    def accepts(value) -> bool:
        value = [value] if isinstance(value, int) else value
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in value
        ):
            return False
        stages = [i + 4 if negative and -4 <= i < 0 else i for i in value]
        return stages == [0, 1, 2, 3] if ordered else sorted(set(stages)) == [0, 1, 2, 3]

    return path, accepts, computes


def mmseg_head_checks(norm_eps: float | None = 1e-5, negative_out_indices: bool = False) -> list[tuple]:
    """The :func:`check_representable` checks every mmseg decode head over the four backbone stages shares (SeMask's
    BranchFPNHead, VWFormer's VWHead / VWCityHead): ``align_corners`` False, convolution modules of plain
    convolutions, a batch norm of ``norm_eps`` (None: any, carried over by the caller) and ReLU, fed the four stages
    in order (``in_index``) from a backbone that emits them all (``out_indices``; ``negative_out_indices``: counted
    from the end, as mmcls' ConvNeXt counts them)."""
    modules = "the decode head's convolution modules"
    return [
        align_corners_check("model.decode_head.align_corners"),
        activation_check("model.decode_head.act_cfg", "ReLU", modules),
        norm_check("model.decode_head.norm_cfg", MMCV_BATCH_NORMS, norm_eps, modules),
        conv_check("model.decode_head.conv_cfg", "the decode head"),
        stages_check(
            "model.decode_head.in_index",
            "feeds the decode head the four backbone stages in order (in_index [0, 1, 2, 3])",
            ordered=True,
            negative=True,
        ),
        stages_check(
            "model.backbone.out_indices",
            "takes the four backbone stages (out_indices (0, 1, 2, 3))",
            ordered=False,
            negative=negative_out_indices,
        ),
    ]


def mmseg_loss_check(
    path: str, options: tuple[str, ...] = (), carried: tuple[str, ...] = ()
) -> tuple[str, Callable, str]:
    """The :func:`check_representable` check of an mmseg decode head's ``loss_decode``: the converted model's loss is
    a softmax cross-entropy of weight 1 averaged over the pixels (mmseg's default ``CrossEntropyLoss``); a sigmoid
    or mask loss, class weights, another weight or reduction, another loss or a list of losses is refused.
    ``options``: further options of that loss the converter carries over (``avg_non_ignore``); ``carried``: defaults
    the converter carries over instead (an auxiliary head's ``loss_weight``)."""
    defaults = {"use_sigmoid": False, "use_mask": False, "reduction": "mean", "class_weight": None, "loss_weight": 1.0}
    defaults = {name: value for name, value in defaults.items() if name not in carried}

    def accepts(value) -> bool:
        if not isinstance(value, dict) or value.get("type") != "CrossEntropyLoss":
            return False
        if not set(value) <= {"type", "loss_name", *defaults, *options, *carried}:
            return False
        return all(value.get(name, default) == default for name, default in defaults.items())

    weight = "" if "loss_weight" in carried else " of weight 1.0"
    return path, accepts, f"computes one softmax cross-entropy{weight}, averaged (CrossEntropyLoss defaults)"


def check_heads_setting(resolved: "ResolvedSettings", name: str, path: str, what: str, channels: int) -> None:
    """The attention heads the setting ``name`` (``path`` in a run's config) resolved to must split ``channels``
    evenly (:func:`~.common.check_attention_heads`; a :class:`ConfigFileError` naming ``what``, the channels, the
    heads and where they came from); a list of heads (one per stage) is checked against a list of channels."""
    from .common import check_attention_heads

    if name not in resolved.values:
        return
    heads, source = resolved.values[name], resolved.sources[name].removesuffix(" [default]")
    if isinstance(heads, (list, tuple)):
        for stage, (stage_heads, stage_channels) in enumerate(zip(heads, channels)):
            check_attention_heads(
                f"{what} {stage}", stage_channels, stage_heads, f"{path} from {source}", ConfigFileError
            )
    else:
        check_attention_heads(what, channels, heads, f"{path} from {source}", ConfigFileError)


def first_value(run_configs: list[RunConfig], paths: list[str]):
    """``(value, source)`` of the first of ``paths`` any run config sets, ``(None, None)`` when none does."""
    for run_config in run_configs:
        for path in paths:
            if run_config.has(path):
                return run_config.get(path), run_config.source
    return None, None


def positive_int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("expected a positive integer")
    return value


def non_negative_int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def boolean(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected True or False")
    return value


def number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def loss_weight(value) -> float:
    if not number(value) >= 0:
        raise ValueError("expected a loss weight >= 0")
    return value


def drop_rate(value) -> float:
    """Stochastic depth: a rate in [0, 1) (1 would drop every residual branch)."""
    if not 0 <= number(value) < 1:
        raise ValueError("expected a rate from 0 up to, not including, 1")
    return value


def at_least_one(value) -> float:
    if not number(value) >= 1:
        raise ValueError("expected a number >= 1")
    return value


def probability(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError("expected a number from 0 to 1")
    return value


def integer(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return value


def int_list(value) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError("expected a list of integers")
    return list(value)


# --------------------------------------------------------------------------------------------------------------------
# Test pre-processing and dataset
# --------------------------------------------------------------------------------------------------------------------

#: mmseg dataset classes -> registry dataset keys (COCO-Stuff only when the data root says which one)
MMSEG_DATASETS = {"ADE20KDataset": "ade20k", "CityscapesDataset": "cityscapes"}
#: detectron2 registered dataset names start with these -> registry dataset keys
DETECTRON2_DATASETS = {"ade20k_sem_seg": "ade20k", "cityscapes_fine_sem_seg": "cityscapes"}


def read_config_value(where: str, name: str, value, read: Callable):
    """``read(value)``; its ``ValueError`` as a :class:`ConfigFileError` naming ``where`` (the config), the setting
    ``name``, its value and what was expected."""
    try:
        return read(value)
    except (ValueError, TypeError) as error:
        raise ConfigFileError(f"{where}: {name} = {value!r}: {error}") from error


def _pixel_statistics(where: str, name: str, values, is_std: bool) -> list[float]:
    """Three mean or std values of the 0-255 scale (a config's ``Normalize`` or ``PIXEL_MEAN`` / ``PIXEL_STD``) on the
    0-1 scale; anything else (not three finite numbers, a std that is not positive) is a :class:`ConfigFileError`
    naming ``where`` and the setting ``name``."""
    expected = "3 positive finite numbers (a std divides the pixels)" if is_std else "3 finite numbers"
    valid = isinstance(values, (list, tuple)) and len(values) == 3
    valid = valid and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if not valid or (is_std and min(values) <= 0):
        raise ConfigFileError(f"{where}: {name} = {values!r}, expected {expected}")
    return [float(value) / 255.0 for value in values]


def _walk_transforms(pipeline):
    """Every transform dict of an mmseg pipeline list, nested ones (``MultiScaleFlipAug.transforms``) included."""
    for step in pipeline if isinstance(pipeline, (list, tuple)) else []:
        if isinstance(step, dict):
            yield step
            yield from _walk_transforms(step.get("transforms"))


def _edges(scale, where: str) -> tuple[int, int]:
    """``(longest, shortest)`` of an mmseg ``img_scale``: one ``(width, height)`` pair (or a list holding one)."""
    if isinstance(scale, list) and len(scale) == 1:
        scale = scale[0]
    if not (
        isinstance(scale, (list, tuple))
        and len(scale) == 2
        and all(isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in scale)
    ):
        raise ConfigFileError(
            f"{where}: img_scale = {scale!r}, expected one (width, height) pair of positive integers (the processor "
            "resizes to one scale)"
        )
    return max(scale), min(scale)


#: mmseg dataset classes -> ``reduce_zero_label`` when the config leaves it out: the class's own (``ADE20KDataset``
#: always reduces; ``CityscapesDataset`` and ``COCOStuffDataset`` take ``CustomDataset``'s default, False: the
#: released COCO-Stuff configs set it explicitly)
MMSEG_DATASET_REDUCE_ZERO_LABEL = {
    "ADE20KDataset": True,
    "CityscapesDataset": False,
    "COCOStuffDataset": False,
    "CustomDataset": False,
}


def _mmseg_test_data(run_config: RunConfig) -> tuple[dict, object, object]:
    """``(data.test, its pipeline, its dataset type)`` of an mmseg run config (the top-level ``test_pipeline`` /
    ``dataset_type`` where ``data.test`` does not set them); None for what the config does not give."""
    test = run_config.get("data.test", None)
    test = test if isinstance(test, dict) else {}
    pipeline = test.get("pipeline", run_config.get("test_pipeline", None))
    return test, pipeline, test.get("type", run_config.get("dataset_type", None))


def _pipeline_steps(pipeline, where: str) -> dict:
    """What an mmseg test pipeline's steps say about the test pre-processing. The pipeline is the run's: a step it
    lacks did not happen, so a missing ``ResizeToMultiple`` is no resize to a multiple (``size_divisor`` None), never
    the released variant's; a pipeline without a test scale (``MultiScaleFlipAug.img_scale``) is refused. Without a
    ``Normalize`` step the statistics are left to the next source (a pipeline without normalisation is no run of
    these models; mmseg 1.x normalises in the model's ``data_preprocessor``, which these converters do not read). A
    step the image processor cannot reproduce (BGR input, a fixed-size resize) is an error naming it."""
    found: dict = {"size_divisor": None}
    for step in _walk_transforms(pipeline):
        kind = step.get("type")
        if kind == "MultiScaleFlipAug" and "img_scale" in step:
            found["test_scale"] = _edges(step["img_scale"], where)
        elif kind == "Resize" and step.get("keep_ratio") is False:
            raise ConfigFileError(f"{where}: Resize(keep_ratio=False) is not supported by the keep-ratio processor")
        elif kind == "ResizeToMultiple":
            found["size_divisor"] = read_config_value(
                where, "ResizeToMultiple size_divisor", step.get("size_divisor", 32), positive_int
            )
        elif kind == "Normalize":
            if step.get("to_rgb", True) is False:
                raise ConfigFileError(
                    f"{where}: Normalize(to_rgb=False): the model was trained on BGR images, which the image "
                    "processor does not produce"
                )
            for name in ("mean", "std"):
                found[f"image_{name}"] = _pixel_statistics(where, f"Normalize {name}", step.get(name), name == "std")
    return found


def _dataset_settings(run_config: RunConfig, test: dict, dataset_type) -> dict:
    """What an mmseg run config says about its test dataset: the registry ``dataset`` its type names (COCO-Stuff
    only when the data root says which one) and ``reduce_labels``: ``reduce_zero_label`` where set, else the dataset
    class's own (:data:`MMSEG_DATASET_REDUCE_ZERO_LABEL`). A dataset class of unknown behaviour leaves the label
    reduction ``undecided`` (it is then NOT GIVEN, never taken from a released variant of another dataset)."""
    found: dict = {}
    if "reduce_zero_label" in test:
        found["reduce_labels"] = read_config_value(
            f"{run_config.source}: data.test", "reduce_zero_label", test["reduce_zero_label"], boolean
        )
    elif dataset_type in MMSEG_DATASET_REDUCE_ZERO_LABEL:
        found["reduce_labels"] = MMSEG_DATASET_REDUCE_ZERO_LABEL[dataset_type]
    elif dataset_type is not None:
        found["undecided"] = ("reduce_labels",)
    dataset = MMSEG_DATASETS.get(dataset_type)
    if dataset_type == "COCOStuffDataset" and "10k" in str(test.get("data_root", run_config.get("data_root", ""))):
        dataset = "coco-stuff-10k"
    if dataset is not None:
        found["dataset"] = dataset
    return found


def mmseg_pipeline(run_configs: list[RunConfig]) -> dict:
    """What the first run config with a test pipeline or test dataset says about the test pre-processing
    (``test_scale``, ``size_divisor``, ``image_mean`` / ``image_std`` on the 0-1 scale: :func:`_pipeline_steps`;
    ``reduce_labels`` and the ``dataset``: :func:`_dataset_settings`), with ``source``; empty when no config has a
    test pipeline or dataset. That config is the run's: what it says (a missing step included) is taken over any
    released variant's values."""
    for run_config in run_configs:
        test, pipeline, dataset_type = _mmseg_test_data(run_config)
        if pipeline is None and dataset_type is None:
            continue
        found: dict = {}
        if pipeline is not None:
            where = f"{run_config.source}: test pipeline"
            found.update(_pipeline_steps(pipeline, where))
        found.update(_dataset_settings(run_config, test, dataset_type))
        if pipeline is not None and "test_scale" not in found:
            raise ConfigFileError(
                f"{where}: no MultiScaleFlipAug img_scale, expected the test scale (one (width, height) pair) the "
                "image processor resizes to"
            )
        found["source"] = run_config.source
        return found
    return {}


def check_dataset_classes(run_configs: list[RunConfig], num_classes: int, where: str) -> None:
    """The dataset an mmseg run config tests on (``data.test.type``) must have the checkpoint's ``num_classes``
    (``where``: the weights that show them) unless the config names its own ``classes``: a config of another
    dataset (the released ``vw_convnext_small_fp16_512x512_160k_ade20k.py`` is a copy of the Cityscapes config) would
    give the converted model that dataset's test pre-processing, a :class:`ConfigFileError` naming both numbers."""
    from ..variants import get_dataset

    for run_config in run_configs:
        test, pipeline, dataset_type = _mmseg_test_data(run_config)
        if pipeline is None and dataset_type is None:
            continue
        dataset = _dataset_settings(run_config, test, dataset_type).get("dataset")
        if dataset is None or "classes" in test:
            return
        expected = get_dataset(dataset).num_labels
        if expected != num_classes:
            raise ConfigFileError(
                f"{run_config.source}: the test dataset {dataset_type} has {expected} classes, but the checkpoint's "
                f"weights have {num_classes} ({where}); it is not the config of the run that saved this checkpoint"
            )
        return


def detectron2_pipeline(run_configs: list[RunConfig]) -> dict:
    """What a detectron2 run config says about the test pre-processing: ``test_scale`` from
    ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, ``image_mean`` / ``image_std`` (0-1 scale) from
    ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``, and the ``dataset`` of ``DATASETS.TEST``; only the keys the config sets
    (detectron2's own defaults are not this family's). BGR input (``INPUT.FORMAT``) is an error."""
    found: dict = {}
    for run_config in run_configs:
        where = run_config.source
        if run_config.get("INPUT.FORMAT", "RGB") != "RGB":
            raise ConfigFileError(
                f"{where}: INPUT.FORMAT = {run_config.get('INPUT.FORMAT')!r}: the model was trained on BGR images, "
                "which the image processor does not produce"
            )
        shortest, longest = run_config.get("INPUT.MIN_SIZE_TEST", None), run_config.get("INPUT.MAX_SIZE_TEST", None)
        if shortest is not None:
            shortest = read_config_value(where, "INPUT.MIN_SIZE_TEST", shortest, positive_int)
            longest = read_config_value(where, "INPUT.MAX_SIZE_TEST", longest, positive_int) if longest else None
            if longest is None:
                raise ConfigFileError(f"{where}: INPUT.MIN_SIZE_TEST is set but INPUT.MAX_SIZE_TEST is not")
            found["test_scale"] = (longest, shortest)
        for name, key in (("image_mean", "MODEL.PIXEL_MEAN"), ("image_std", "MODEL.PIXEL_STD")):
            values = run_config.get(key, None)
            if values is not None:
                found[name] = _pixel_statistics(where, key, values, name == "image_std")
        test_sets = run_config.get("DATASETS.TEST", None) or []
        if isinstance(test_sets, str):  # one name rather than a list of them
            test_sets = [test_sets]
        for prefix, dataset in DETECTRON2_DATASETS.items():
            if test_sets and str(list(test_sets)[0]).startswith(prefix):
                found["dataset"] = dataset
        if found:
            found["source"] = where
            return found
    return found


__all__ = [
    "ConfigFileError",
    "NotEvaluated",
    "RunConfig",
    "Setting",
    "ResolvedSettings",
    "check_consistent",
    "check_evaluated",
    "detectron2_run_configs",
    "first_value",
    "mmseg_run_configs",
    "parse_mmseg_config_text",
    "read_detectron2_config",
    "read_mmseg_config",
    "resolve_settings",
]
