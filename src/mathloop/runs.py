"""Run folders and the files stages write: one owner per folder, no write over an input, atomic summaries.

- `lock_run_dir(folder)`: a run folder is owned by one process at a time. The lock file `.mathloop.lock` holds the
  owner's pid and host; the kernel lock (`fcntl.flock`) on it decides who wins, so two racing processes cannot both
  own a folder, and a killed owner's lock is free again (it is taken over with a message naming the dead pid).
- `refuse_overwriting_inputs(outputs, inputs)`: no command writes over one of its own inputs (same path, symlink,
  hard link).
- `write_text_atomic` / `write_json` / `read_json`: a summary file is either the old one or the new one, never a
  torn mix (temporary file in the same folder + fsync + rename); a corrupt JSON file is named when read.
- `start_run_record(path, config, resume_keys, data, kind=...)`: the run record (`run.json`) of every stage: its
  `kind` (`KINDS`), the settings, the resume keys, the data it reads (version and sha256 of each file), package
  versions, hardware and start time. A run that resumes a folder must be of the same kind and match the record on
  the resume keys and on every data file both read, else it is refused with what differs (`check_run_record`, also
  what a training checkpoint is checked with); `finish_run_record` / `mark_run_finished` write the completion marker
  (`finished`, wall seconds). A trainer starting afresh first checks that its folder holds no other kind of run
  (`refuse_other_kind`).
- `read_run_record(folder)`: what a folder holds, for the report, `compare` and the loop: its record's `kind` (and a
  loop's `stages`). Folders written before records had a kind are recognised from their files by one function,
  `_guess_old_record`. `run_done(folder, last_file)`: whether its run is done, by the marker (old folders: by the
  file their stage writes last).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

log = logging.getLogger(__name__)

LOCK_NAME = ".mathloop.lock"
RECORD_NAME = "run.json"

# The kinds of run a record names, and what the folder holds. A kind not listed (a newer stage) is shown as itself.
KINDS = {
    "eval": "`mathloop eval`: samples/<benchmark>.jsonl, metrics.json",
    "sample": "`mathloop sample`: samples/pass-<i>.jsonl, summary.json",
    "synthesize": "`mathloop synthesize`: <name>.jsonl, its record is <name>.run.json",
    "rm": "`mathloop rm train`: metrics.jsonl, rm_data.jsonl, checkpoints/, final/",
    "sft": "`mathloop sft`: metrics.jsonl, checkpoints, final/",
    "grpo": "`mathloop grpo`: metrics.jsonl, rollouts/, checkpoints/, final/",
    "loop": "`mathloop loop`: one folder per stage (`stages`: round-<r>/, grpo-after-round-<R>/), summary.json",
}


class RunLockedError(RuntimeError):
    """The run folder is owned by another live process."""


# Folders this process holds, with a count, so a stage called from another stage on the same folder nests.
_held: dict[str, list] = {}


@contextlib.contextmanager
def lock_run_dir(folder: str | os.PathLike, name: str = LOCK_NAME) -> Iterator[Path]:
    """Own `folder` (created when missing) for the duration of the block; another live owner is refused.

    `name` is the lock file inside the folder: processes that write disjoint files of one folder (the shards of
    `mathloop sample`) each lock their own name. Under a distributed launch (torchrun, accelerate: RANK is set)
    every rank writes the same folder, so rank 0 owns it for the whole launch and the other ranks do not lock.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a run folder: choose another path", str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RANK", "0") != "0":
        yield folder
        return
    path = folder / name
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield folder
        finally:
            _held[key][1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            owner = _read_owner(fd)
            raise RunLockedError(f"{folder} is in use by another run (pid {owner.get('pid', '?')} on "
                                 f"{owner.get('host', '?')}); wait for it to finish or use another folder") from None
        previous = _read_owner(fd)
        if previous:
            log.warning("%s: taking over the lock of pid %s on %s, which is no longer running", folder,
                        previous.get("pid", "?"), previous.get("host", "?"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode() + b"\n", 0)
        os.fsync(fd)
        _held[key] = [fd, 1]
        try:
            yield folder
        finally:
            del _held[key]
            os.ftruncate(fd, 0)  # an empty lock file means "released cleanly"; the file stays (no unlink race)
    finally:
        os.close(fd)


def _read_owner(fd: int) -> dict[str, Any]:
    data = os.pread(fd, 4096, 0)
    try:
        owner = json.loads(data) if data.strip() else {}
    except ValueError:
        owner = {"pid": "?", "host": "?"}
    return owner if isinstance(owner, dict) else {}


def refuse_overwriting_inputs(outputs: Mapping[str, str | os.PathLike | None],
                              inputs: Mapping[str, Any]) -> None:
    """Raise ValueError when an output file is one of the inputs (same path, a symlink to it, or a hard link).

    Both mappings go from the flag that names a path to the path (inputs may map to a list of paths); a folder
    given as an input counts with every file under it, and an output folder (an existing one, or a path ending in
    "/") refuses every input inside it.

    >>> refuse_overwriting_inputs({"--output": "a.jsonl"}, {"--samples": ["a.jsonl"]})
    Traceback (most recent call last):
    ValueError: --output a.jsonl is also --samples a.jsonl; writing it would destroy the input: choose another --output
    """
    files: list[tuple[str, str]] = []
    for flag, value in inputs.items():
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path is None:
                continue
            path = str(path)
            if os.path.isdir(path):
                files += [(flag, str(p)) for p in Path(path).rglob("*") if p.is_file()]
            else:
                files.append((flag, path))
    for out_flag, out in outputs.items():
        if out is None:
            continue
        folder = os.path.isdir(out) or str(out).endswith("/")
        for in_flag, path in files:
            inside = folder and os.path.realpath(path).startswith(os.path.realpath(out).rstrip("/") + "/")
            if inside or _same_file(str(out), path):
                raise ValueError(f"{out_flag} {out} is also {in_flag} {path}; writing it would destroy the input: "
                                 f"choose another {out_flag}")


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with `text` so that a kill at any moment leaves the old file or the new one, whole."""
    with atomic_open(path) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[Any]:
    """A text file to write that becomes `path` only when the block ends without error (fsynced, renamed).

    An OSError while writing (full disk, read-only folder) names `path`; the old file is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """`data` as indented JSON, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a corrupt one raises ValueError naming it."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); the file is damaged: restore or delete "
                         f"it") from None


# ---- the run record ----------------------------------------------------------------------------------------------

def package_versions() -> dict[str, str]:
    """The versions of Python and of the packages that decide a run's results (those installed)."""
    import importlib.metadata

    versions = {"python": platform.python_version()}
    for name in ("mathloop", "torch", "transformers", "trl", "peft", "math-verify", "sympy", "vllm"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def new_run_record(config: Any, data: Mapping[str, Any] | None = None, kind: str | None = None,
                   resume_keys: tuple[str, ...] | None = None, **facts: Any) -> dict[str, Any]:
    """A run record: its `kind` (`KINDS`), `config` (a dataclass or a mapping), the `resume_keys` a resume must match
    (None: every setting but the `NOT_RESUME_KEYS`), `data` (`data_record` per data file), the stage's own `facts`,
    start time, package versions and hardware."""
    from mathloop.hardware import hardware_info

    head = {} if kind is None else {"kind": _checked_kind(kind)}
    keys = {} if resume_keys is None else {"resume_keys": list(resume_keys)}
    return {**head, "config": _settings_dict(config), **keys, **facts, "data": dict(data or {}),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": package_versions(),
            "hardware": hardware_info()}


def _checked_kind(kind: str) -> str:
    """
    >>> _checked_kind("dpo")
    'dpo'
    >>> _checked_kind("round 1")
    Traceback (most recent call last):
    ValueError: run kind 'round 1': a kind is a lowercase word (letters, digits, - and _), e.g. eval, sft, grpo
    """
    word = kind.replace("-", "").replace("_", "") if isinstance(kind, str) else ""
    if not (word.isalnum() and kind == kind.lower()):
        raise ValueError(f"run kind {kind!r}: a kind is a lowercase word (letters, digits, - and _), e.g. eval, sft, "
                         f"grpo")
    return kind


def check_run_record(record: Mapping[str, Any], config: Any, resume_keys: tuple[str, ...] | None = None,
                     data: Mapping[str, Any] | None = None, what: str = "a run",
                     fix: str = "use a new output folder", kind: str | None = None) -> None:
    """Refuse to resume `record` with `config` and `data` when it is a run of another `kind`, or they differ on a
    resume key (None: every setting but the `NOT_RESUME_KEYS`) or on a data file both read; the error names the
    folder's `what` and the changes. A record without a kind (written before records had one) is not refused for
    its kind.

    >>> check_run_record({"config": {"n": 4, "batch_size": 8}}, {"n": 4, "batch_size": 16}, what="runs/a")
    >>> check_run_record({"config": {"n": 4}}, {"n": 8}, ("n",), what="runs/a holds samples")
    Traceback (most recent call last):
    ValueError: runs/a holds samples with other settings (n: 4 -> 8); use a new output folder
    >>> check_run_record({"kind": "eval", "config": {}}, {}, kind="sft", what="runs/a holds a run")
    Traceback (most recent call last):
    ValueError: runs/a holds a run of kind eval, not sft; use a new output folder
    """
    from mathloop.config import changed_data, changed_settings, result_settings

    _check_kind(record, kind, what, fix)
    old, current = result_settings(record.get("config", {})), result_settings(_settings_dict(config))
    keys = tuple(current) if resume_keys is None else resume_keys
    detail = (changed_settings(old, current, keys)
              or changed_data(record.get("data", {}), dict(data or {})))
    if detail:
        raise ValueError(f"{what} with other settings ({detail}); {fix}")


def _check_kind(record: Mapping[str, Any], kind: str | None, what: str, fix: str) -> None:
    if kind is not None and record.get("kind") not in (None, kind):
        raise ValueError(f"{what} of kind {record['kind']}, not {kind}; {fix}")


def refuse_other_kind(folder: str | os.PathLike, kind: str, fix: str = "use a new output_dir") -> None:
    """Refuse to start a run of `kind` in `folder` when the run record there is of another kind, before the run
    writes anything: a trainer starting afresh writes its own record, which would replace the other run's. A
    record without a kind (written before records had one) is not refused.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> write_json(Path(folder, RECORD_NAME), {"kind": "sft", "config": {}})
    >>> refuse_other_kind(folder, "sft")
    >>> refuse_other_kind(folder, "grpo")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: .../run.json holds a run of kind sft, not grpo; use a new output_dir
    """
    path = Path(folder) / RECORD_NAME
    if path.is_file():
        record = read_json(path)
        _check_kind(record if isinstance(record, dict) else {}, kind, f"{path} holds a run", fix)


def start_run_record(path: str | os.PathLike, config: Any, resume_keys: tuple[str, ...] | None = None,
                     data: Mapping[str, Any] | None = None, what: str | None = None,
                     fix: str = "use a new output folder", kind: str | None = None,
                     **facts: Any) -> tuple[dict[str, Any], bool]:
    """The run record at `path` and whether the run resumes: a new record is written; an existing one is checked
    (`check_run_record`) and returned with this run's data added (written back by `finish_run_record` or the
    caller). A resumed record is no longer finished (written at once, so a kill leaves it unfinished); one without
    a kind gets this run's."""
    path = Path(path)
    if path.exists():
        record = read_json(path)
        check_run_record(record, config, resume_keys, data, what or f"{path.parent} holds a run", fix, kind)
        record["data"] = {**record.get("data", {}), **dict(data or {})}
        stale = record.pop("finished", None) is not None
        if kind is not None and "kind" not in record:
            record, stale = {"kind": _checked_kind(kind), **record}, True
        if stale:
            write_json(path, record)
        return record, True
    record = new_run_record(config, data, kind, resume_keys, **facts)
    write_json(path, record)
    return record, False


def record_backend(path: str | os.PathLike, record: dict[str, Any], backend: Any) -> None:
    """Add what the backend reports about its engine (`backend.info`: e.g. the openvino backend's engine version,
    weight format and export folder) to the run record at `path` as `backend_info`, and how it seeds samples
    (`sample_seeds`: "per sample" where each response depends on the run seed, its problem id and its index alone,
    else "per call", where responses also depend on batching, resume, shards and replicas; docs/reliability.md)."""
    if backend.info:
        record["backend_info"] = dict(backend.info)
    record["sample_seeds"] = "per sample" if backend.seeds_each_sample else "per call"
    write_json(path, record)


def finish_run_record(path: str | os.PathLike, record: dict[str, Any], started: float) -> None:
    """Mark the run finished (the completion marker): the time, and the wall seconds of all its sessions."""
    record.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                  wall_seconds=round(record.get("wall_seconds", 0) + time.time() - started, 1))
    write_json(path, record)


def mark_run_finished(folder: str | os.PathLike) -> None:
    """Write the completion marker into the run record of `folder` (a trainer's, when its final model is whole);
    a folder without a record is left as it is."""
    path = Path(folder) / RECORD_NAME
    if path.exists():
        record = read_json(path)
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(path, record)


def run_finished(folder: str | os.PathLike) -> bool:
    """Whether the run record of `folder` carries the completion marker."""
    path = Path(folder) / RECORD_NAME
    return path.exists() and "finished" in read_json(path)


def run_done(folder: str | os.PathLike, last_file: str) -> bool:
    """Whether the run in `folder` is done: its record's completion marker (`finished`). A folder from before records
    had a kind (a record without one, or none) may predate the marker too: it is done when `last_file`, the file
    its stage writes last (relative to `folder`), exists.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / "metrics.json").write_text("{}") and run_done(folder, "metrics.json")  # no record: the file
    True
    >>> write_json(folder / RECORD_NAME, {"kind": "eval", "config": {}})
    >>> run_done(folder, "metrics.json")  # a record with a kind: its marker, not the file
    False
    """
    path = Path(folder) / RECORD_NAME
    record = read_json(path) if path.is_file() else {}
    if isinstance(record, dict) and "kind" in record:
        return "finished" in record
    return Path(folder, last_file).exists()


def read_run_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The run record of `folder` with its `kind` (and a loop's `stages`), or None when the folder holds no run.

    A record without a kind (written before records had one), or a folder without a record, is recognised from its
    files (`_guess_old_record`); such a record has `"kind_guessed": true`."""
    folder = Path(folder)
    path = folder / RECORD_NAME
    record = read_json(path) if path.is_file() else {}
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a run record (a JSON object); restore or delete it")
    if isinstance(record.get("kind"), str):
        return record
    guessed = _guess_old_record(folder)
    return {**record, **guessed, "kind_guessed": True} if guessed else None


def _guess_old_record(folder: Path) -> dict[str, Any]:
    """The kind (and a loop's stages) of a folder written before run records named their kind, from its files, as
    the report and `compare` guessed it then; {} when the files are not a run's. New folders never come here: do
    not teach it new kinds."""
    if (folder / "round-0").is_dir():
        rounds = sorted((p for p in folder.glob("round-*") if p.is_dir() and p.name[6:].isdigit()),
                        key=lambda p: int(p.name[6:]))
        stages = [{"name": p.name[6:], "folder": p.name} for p in rounds]
        stages += [{"name": "grpo", "folder": p.name} for p in sorted(folder.glob("grpo-after-round-*"))
                   if p.is_dir()]
        return {"kind": "loop", "stages": stages}
    if (folder / "metrics.jsonl").exists():
        if (folder / "rollouts").is_dir() or '"reward_mean"' in (folder / "metrics.jsonl").read_text("utf-8"):
            return {"kind": "grpo"}
        return {"kind": "rm" if (folder / "rm_data.jsonl").exists() else "sft"}
    samples = folder / "samples"
    if any(samples.glob("pass-*.jsonl")):
        return {"kind": "sample"}
    if any(samples.glob("*.jsonl")):
        return {"kind": "eval"}
    return {}


def _settings_dict(config: Any) -> dict[str, Any]:
    """Settings as plain JSON data, as they read back from a record (tuples as lists)."""
    settings = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return json.loads(json.dumps(settings))
