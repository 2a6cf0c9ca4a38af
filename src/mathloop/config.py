"""Settings: every stage's settings are one dataclass, read from YAML with command-line overrides.

The dataclass holds each default, help text and resume flag, once, in its fields (`metadata={"help": ...,
"resume": True}`). `settings_from_dict` builds it from a YAML mapping plus overrides (the flags); `add_field_flags`
makes a flag for every field (name, type, choices from the annotation or the metadata): its default is None ("not
given"), and its help shows the field's default. One rule for all of them: an unknown key is an error that names it
(a typo must not silently fall back to a default), a value of the wrong type names its key (`epochs: two`), an
override of None means "not given on the command line", and a missing required key names itself. A malformed YAML
file is named with its line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union

C = TypeVar("C")


def read_yaml_mapping(path: str, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is an empty mapping)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start + 1} is 0x{e.object[e.start]:02x}); save the "
                             "file as UTF-8") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(e, "problem", None) or type(e).__name__
            raise ValueError(f"{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of {what} settings, got {type(data).__name__}")
    return data


def settings_from_dict(cls: type[C], data: dict[str, Any], overrides: dict[str, Any] | None = None,
                       source: str = "config", fixed: tuple[str, ...] = ()) -> C:
    """Build `cls` from `data` plus non-None `overrides`, then run its `validate()` when it has one.

    A field without a default is required. A list-of-strings field takes a single string as a one-item list. `fixed`
    fields may not come from `data` (a caller sets them through `overrides`, as the loop sets each stage's model
    and folders).

    >>> @dataclasses.dataclass
    ... class Demo:
    ...     out: str
    ...     files: list[str] = dataclasses.field(default_factory=list)
    >>> settings_from_dict(Demo, {"files": "a.jsonl"}, {"out": "run", "files": None})
    Demo(out='run', files=['a.jsonl'])
    >>> settings_from_dict(Demo, {"fils": []}, source="x.yaml")
    Traceback (most recent call last):
    ValueError: x.yaml: unknown key(s) fils; known: files, out
    >>> settings_from_dict(Demo, {"out": 3}, source="x.yaml")
    Traceback (most recent call last):
    ValueError: x.yaml: out must be a string, got 3
    """
    names = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    merged = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    hints = typing.get_type_hints(cls)
    for key, value in merged.items():
        if isinstance(value, str) and not _fits(value, hints.get(key, Any)) and _fits([value], hints.get(key, Any)):
            merged[key] = [value]
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in merged
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        flags = " and ".join("--" + k.replace("_", "-") for k in missing)
        raise ValueError(f"{source}: missing {', '.join(missing)} (give {flags}, or the key in a --config file)")
    for key, value in merged.items():
        merged[key] = checked_value(value, hints.get(key, Any), f"{source}: {key}")
    settings = cls(**merged)
    if hasattr(settings, "validate"):
        try:
            settings.validate()
        except ValueError as e:
            raise ValueError(str(e) if str(e).startswith(source) else f"{source}: {e}") from None
    return settings


def load_settings(cls: type[C], path: str | None, overrides: dict[str, Any] | None = None,
                  source: str = "command line", **options: Any) -> C:
    """`cls` from the YAML file `path` (when given; keys are `cls`'s fields) with `overrides` on top."""
    if path is None:
        return settings_from_dict(cls, {}, overrides, source, **options)
    return settings_from_dict(cls, read_yaml_mapping(path, cls.__name__), overrides, path, **options)


def field_default(cls: type, name: str) -> Any:
    """The default of field `name` of the dataclass `cls` (MISSING when it has none).

    >>> @dataclasses.dataclass
    ... class Demo:
    ...     n: int = 4
    ...     files: list = dataclasses.field(default_factory=lambda: ["a"])
    >>> field_default(Demo, "n"), field_default(Demo, "files")
    (4, ['a'])
    """
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return f.default
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def add_setting_flag(parser: Any, cls: type, flag: str, *aliases: str, dest: str | None = None,
                     help: str = "", **kwargs: Any) -> Any:
    """An argparse flag that overrides field `dest` of `cls` (default: the flag's name with underscores).

    Its default is None (not given: the YAML value or the field's default applies) and its help ends with the
    field's default, so the default is written once, in the dataclass (a help text that explains what None or
    another default means says it itself). A `store_false` flag sets the field to False. A flag naming no field
    is an error when the parser is built. Without `help` the field's `metadata["help"]` is the help.
    """
    dest = dest or flag.lstrip("-").replace("-", "_")
    default = field_default(cls, dest)
    help = help or next((f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == dest), "")
    shown = ",".join(str(v) for v in default) if isinstance(default, (list, tuple)) else default
    switch = kwargs.get("action") in ("store_true", "store_false")
    if default not in (dataclasses.MISSING, None, [], {}) and not switch and "(default:" not in help:
        help = f"{help} (default: {shown})".strip()
    elif default is dataclasses.MISSING and not kwargs.get("required"):
        help = f"{help} (required, here or in --config)".strip()
    return parser.add_argument(flag, *aliases, dest=dest, default=None, help=help, **kwargs)


# Field metadata keys that shape a field's flag, besides "help" (and "resume", which is not about flags): "flags"
# are its option strings (default `--field-name`; e.g. ("--learning-rate", "--lr")), the others go to argparse as
# they are and replace what the annotation gives ("type": positive_int, "choices": [...], "action": "append").
FLAG_METADATA = ("flags", "type", "choices", "action", "nargs", "const", "metavar")


def add_field_flags(parser: Any, cls: type) -> list[str]:
    """A flag for every field of the dataclass `cls` that `parser` has no flag for yet: `--field-name`, its help
    from the field's `metadata["help"]` and its type from the field's annotation (a bool defaulting to False is a
    switch, another bool gets `--x/--no-x`, a Literal gives choices, a list takes comma-separated values, a mapping
    takes JSON), or from the field's `FLAG_METADATA` where it has them (an "action" there replaces everything the
    annotation gives). Returns the fields added, so a new field of a stage's settings is a flag with help (and a
    YAML key) without any other change."""
    hints = typing.get_type_hints(cls)
    taken = {action.dest for action in parser._actions}
    added = []
    for f in fields_own_first(cls):
        if f.name in taken:
            continue
        given = {key: f.metadata[key] for key in FLAG_METADATA if key in f.metadata}
        kwargs = {} if "action" in given else _annotation_flag(hints.get(f.name, str), field_default(cls, f.name))
        kwargs.update(given)
        flags = kwargs.pop("flags", None) or ("--" + f.name.replace("_", "-"),)
        add_setting_flag(parser, cls, *flags, dest=f.name, help=f.metadata.get("help", ""), **kwargs)
        added.append(f.name)
    return added


def fields_own_first(cls: type) -> list[dataclasses.Field]:
    """The fields of the dataclass `cls`, those it declares itself first (a stage's own settings before the
    sampler and Ray options it inherits), each group in field order: the order of its flags and docs rows."""
    own = cls.__dict__.get("__annotations__", {})
    return sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)


def _annotation_flag(hint: Any, default: Any) -> dict[str, Any]:
    """The argparse settings a field's annotation gives its flag (see `add_field_flags`)."""
    import argparse

    hint = _optional_inner(hint)
    if hint is bool:
        return {"action": "store_true" if default is False else argparse.BooleanOptionalAction}
    if typing.get_origin(hint) is Literal:
        return {"choices": list(typing.get_args(hint))}
    if hint in (int, float):
        return {"type": hint}
    if hint in (list, tuple) or typing.get_origin(hint) in (list, tuple):
        item = (typing.get_args(hint) or (str,))[0]
        return {"type": _csv_of(item if item in (int, float) else str), "metavar": "A,B"}
    if hint is dict or typing.get_origin(hint) is dict:
        return {"type": _json_mapping, "metavar": "JSON"}
    return {}


def positive_int(text: str) -> int:
    """argparse type for a field's metadata ({"type": positive_int}): an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def temperature_list(text: str) -> list[float]:
    """argparse type: comma-separated temperatures >= 0, at least one.

    >>> temperature_list("0.7, 1.0")
    [0.7, 1.0]
    """
    import argparse

    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.7,1.0, got {text!r}") from None
    if not values or any(not t >= 0 for t in values):
        raise argparse.ArgumentTypeError(f"expected one or more temperatures >= 0, got {text!r}")
    return values


def _optional_inner(hint: Any) -> Any:
    """`X` of `X | None` (other hints as they are)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (Union, types.UnionType) and len(args) == 1 else hint


def _csv_of(item: type):
    """argparse type: comma-separated values of `item`."""
    def parse(text: str) -> list:
        import argparse

        try:
            return [item(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values, got {text!r}") from None
    return parse


def _json_mapping(text: str) -> dict:
    """argparse type: a JSON object, e.g. '{"gpu_memory_utilization": 0.4}'."""
    import argparse
    import json

    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"key\": 1}}', got {text!r}")
    return value


def resume_keys(cls: type, but: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The resume keys of the settings class `cls`: its fields marked `metadata={"resume": True}` (a setting that
    decides what a run produces, so a run folder resumes only with the same value), in field order, less `but`.

    >>> @dataclasses.dataclass
    ... class Demo:
    ...     n: int = dataclasses.field(default=4, metadata={"resume": True})
    ...     out: str = "run"
    >>> resume_keys(Demo)
    ('n',)
    """
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("resume") and f.name not in but)


def flag_overrides(args: Any, cls: type) -> dict[str, Any]:
    """The fields of `cls` that the parsed `args` give (argparse leaves the others None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def changed_settings(old: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...] | list[str]) -> str:
    """The resume keys whose value differs between a stored run and this one, as "key: old -> new, ..." ("" when
    none do; keys the stored run lacks are not compared).

    >>> changed_settings({"n": 3, "seed": 0}, {"n": 4, "seed": 0, "new": 1}, ("n", "seed", "new"))
    'n: 3 -> 4'
    """
    return ", ".join(f"{k}: {old[k]!r} -> {current[k]!r}" for k in keys if k in old and old[k] != current[k])


def changed_data(old: dict[str, dict], current: dict[str, dict]) -> str:
    """The benchmarks whose data differs between a stored run and this one ("" when none do).

    >>> changed_data({"gsm8k:test": {"sha256": "a", "benchmark_version": 1}},
    ...              {"gsm8k:test": {"sha256": "b", "benchmark_version": 1}, "math:test": {"sha256": "c"}})
    'gsm8k:test (sha256 a -> b)'
    """
    changes = []
    for key in sorted(set(old) & set(current)):
        for field in ("sha256", "benchmark_version"):
            if old[key].get(field) != current[key].get(field):
                changes.append(f"{key} ({field} {old[key].get(field)} -> {current[key].get(field)})")
                break
    return ", ".join(changes)



# Settings that decide where or how fast a stage runs, never what it produces: changing them between runs of one
# folder is allowed (a data folder added later, another batch size on another machine). The data itself is
# identified by its version and sha256 (`mathloop.data.sources.data_record`), not by the path it was read from.
NOT_RESUME_KEYS = frozenset({
    "data_dir", "output_dir", "out", "batch_size", "rm_batch_size", "rollout_batch_size", "micro_batch",
    "micro_batch_groups", "gradient_checkpointing", "concurrency", "threads", "num_workers", "workers", "progress",
    "quiet", "report_to", "ray_address", "ray_replicas", "ray_num_cpus", "ray_num_gpus", "ray_chunk", "ray",
    "save_steps", "keep_checkpoints", "log_every",  # how often a trainer checkpoints and logs, not what it learns
})


def result_settings(settings: Any) -> Any:
    """`settings` without the `NOT_RESUME_KEYS`, at any depth.

    >>> result_settings({"n": 4, "data_dir": "/data", "sample": {"backend_args": {"batch_size": 8}, "n": 2}})
    {'n': 4, 'sample': {'backend_args': {}, 'n': 2}}
    """
    if isinstance(settings, dict):
        return {k: result_settings(v) for k, v in settings.items() if k not in NOT_RESUME_KEYS}
    return settings
def checked_value(value: Any, hint: Any, where: str) -> Any:
    """`value` when it fits the type `hint`, else a ValueError naming `where`. A float setting also takes a string
    that reads as a number (YAML 1.1 reads `1e-5`, without a dot, as a string); types not listed are not checked.

    >>> checked_value("2e-5", float, "lr"), checked_value(3, float | None, "lr")
    (2e-05, 3)
    >>> checked_value("two", int, "x.yaml: epochs")
    Traceback (most recent call last):
    ValueError: x.yaml: epochs must be an integer, got 'two'
    """
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if not _fits(value, hint):
        raise ValueError(f"{where} must be {_describe(hint)}, got {value!r}")
    return value


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args and (origin is list or args[-1] is Ellipsis or len(args) == 1) else Any
        return all(_fits(v, item) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
             type(None): "null"}
    if hint in names:
        return names[hint]
    if hint in (list, tuple) or origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))
