"""Settings files: every stage's settings are one dataclass, read from YAML with command-line overrides.

One rule for all of them: an unknown key is an error that names it (a typo must not silently fall back to a
default), an override of None means "not given on the command line", and a missing required key names itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

C = TypeVar("C")


def read_yaml_mapping(path: str, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is an empty mapping)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of {what} settings, got {type(data).__name__}")
    return data


def settings_from_dict(cls: type[C], data: dict[str, Any], overrides: dict[str, Any] | None = None,
                       source: str = "config", required: tuple[str, ...] = (),
                       list_fields: tuple[str, ...] = ()) -> C:
    """Build `cls` from `data` plus non-None `overrides`, then run its `validate()` when it has one.

    `list_fields` accept a single string for a one-item list.

    >>> @dataclasses.dataclass
    ... class Demo:
    ...     out: str
    ...     files: list = dataclasses.field(default_factory=list)
    >>> settings_from_dict(Demo, {"files": "a.jsonl"}, {"out": "run", "files": None}, list_fields=("files",))
    Demo(out='run', files=['a.jsonl'])
    >>> settings_from_dict(Demo, {"fils": []}, source="x.yaml")
    Traceback (most recent call last):
    ValueError: x.yaml: unknown key(s) fils; known: files, out
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    merged = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    for key in list_fields:
        if isinstance(merged.get(key), str):
            merged[key] = [merged[key]]
    missing = [k for k in required if k not in merged]
    if missing:
        raise ValueError(f"{source}: missing {', '.join(missing)}")
    settings = cls(**merged)
    if hasattr(settings, "validate"):
        settings.validate()
    return settings


def changed_settings(old: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...] | list[str]) -> str:
    """The resume keys whose value differs between a stored run and this one, as "key: old -> new, ..." ("" when
    none do; keys the stored run lacks are not compared).

    >>> changed_settings({"n": 3, "seed": 0}, {"n": 4, "seed": 0, "new": 1}, ("n", "seed", "new"))
    'n: 3 -> 4'
    """
    return ", ".join(f"{k}: {old[k]!r} -> {current[k]!r}" for k in keys if k in old and old[k] != current[k])



# Settings that decide where or how fast a stage runs, never what it produces: changing them between runs of one
# folder is allowed (a data folder added later, another batch size on another machine). The data itself is
# identified by its version and sha256 (`mathloop.data.sources.data_record`), not by the path it was read from.
NOT_RESUME_KEYS = frozenset({
    "data_dir", "output_dir", "out", "batch_size", "rm_batch_size", "rollout_batch_size", "micro_batch",
    "micro_batch_groups", "gradient_checkpointing", "concurrency", "threads", "num_workers", "workers", "progress",
    "quiet", "report_to",
})


def result_settings(settings: Any) -> Any:
    """`settings` without the `NOT_RESUME_KEYS`, at any depth.

    >>> result_settings({"n": 4, "data_dir": "/data", "sample": {"backend_args": {"batch_size": 8}, "n": 2}})
    {'n': 4, 'sample': {'backend_args': {}, 'n': 2}}
    """
    if isinstance(settings, dict):
        return {k: result_settings(v) for k, v in settings.items() if k not in NOT_RESUME_KEYS}
    return settings
