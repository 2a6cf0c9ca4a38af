"""Where benchmark files come from: a data folder, the data packaged with mathloop, or the Hugging Face Hub.

Resolution for `<name>/<split>`: the folder given (`--data-dir` or $MATHLOOP_DATA_DIR) when it holds the file
(`.jsonl` or `.jsonl.gz`), else the packaged copy (`benchmark_data/`, gzip, listed in its MANIFEST.json with
version, sha256 of the uncompressed file, rows, source and licence), else one error that says where to get the set.
A packaged file is checked against its sha256 on every load. What identifies the data a run used is its
`data_record`: version and sha256, recorded in run.json and compared when a run folder is resumed.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from mathloop.records import RecordError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "MATHLOOP_DATA_DIR"
PACKAGED_DIR = Path(__file__).resolve().with_name("benchmark_data")


def default_data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value) if value else None


@functools.lru_cache(maxsize=1)
def packaged_manifest() -> dict[str, Any]:
    path = PACKAGED_DIR / "MANIFEST.json"
    return json.loads(path.read_text()) if path.exists() else {"files": [], "not_shipped": []}


def packaged_entry(name: str, split: str) -> dict[str, Any] | None:
    """The manifest entry of a packaged file, or None when mathloop does not ship it."""
    return next((e for e in packaged_manifest()["files"] if e["benchmark"] == name and e["split"] == split), None)


def not_shipped_reason(name: str, split: str) -> str:
    for item in packaged_manifest()["not_shipped"]:
        if item["benchmark"] in (name, f"{name}:{split}"):
            return item["reason"]
    return "not packaged"


def resolve_data_file(name: str, split: str = "test", data_dir: str | os.PathLike | None = None) -> Path:
    """The file that holds `name`'s `split`: the data folder's when it has one, else the packaged copy."""
    root = Path(data_dir) if data_dir else default_data_dir()
    if root is not None:
        for suffix in (".jsonl", ".jsonl.gz"):
            path = root / name / f"{split}{suffix}"
            if path.exists():
                return path
    entry = packaged_entry(name, split)
    if entry is not None:
        return PACKAGED_DIR / entry["file"]
    from mathloop.data.benchmarks import get_benchmark

    looked = f"{root / name / f'{split}.jsonl'} does not exist and" if root is not None else "no data folder is set and"
    hub = get_benchmark(name).hub
    where = (f"`mathloop data pull --out DIR --benchmarks {name}` (from the Hugging Face Hub, {hub[0]}) or "
             if hub else "")
    raise FileNotFoundError(
        f"{name} ({split}): {looked} mathloop does not ship it ({not_shipped_reason(name, split)}). Get it with "
        f"{where}the official Qwen2.5-Math harness's evaluation/data/ folder, then pass --data-dir DIR or set "
        f"${DATA_DIR_ENV}")


def read_data_file(path: Path) -> tuple[list[dict[str, Any]], str]:
    """The rows of a (possibly gzipped) JSONL benchmark file and the sha256 of its uncompressed bytes; a packaged
    file whose bytes do not match its manifest raises `RecordError`."""
    raw = _uncompressed_bytes(path)
    digest = hashlib.sha256(raw).hexdigest()
    if path.is_relative_to(PACKAGED_DIR):
        name, split = path.parent.name, path.name.split(".")[0]
        entry = packaged_entry(name, split)
        if entry is not None and entry["sha256"] != digest:
            raise RecordError(f"{path}: checksum mismatch (sha256 {digest[:12]}..., manifest "
                              f"{entry['sha256'][:12]}...): the packaged file is damaged; reinstall mathloop")
    rows = []
    for lineno, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows, digest


def data_record(name: str, split: str = "test", data_dir: str | os.PathLike | None = None,
                source: str = "local") -> dict[str, Any]:
    """What identifies a benchmark's data: source, version and sha256 (of the file, or of the Hub rows as JSON
    lines), rows, and the registry's benchmark version (prompt and gold extraction)."""
    from mathloop.data.benchmarks import get_benchmark

    benchmark = get_benchmark(name)
    if source == "hub":
        rows, digest, origin = _hub_rows(name, split)
        version = origin
    else:
        path = resolve_data_file(name, split, data_dir)
        rows, digest = read_rows(path)
        origin = "packaged" if path.is_relative_to(PACKAGED_DIR) else str(path)
        entry = packaged_entry(name, split)
        version = entry["version"] if entry is not None and entry["sha256"] == digest else "local"
    return {"benchmark": name, "split": split, "source": origin, "version": version, "sha256": digest,
            "rows": len(rows), "benchmark_version": benchmark.version}


def _uncompressed_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def read_rows(path: Path) -> tuple[list[dict[str, Any]], str]:
    """`read_data_file`, read once per file version (loading a set and recording its checksum share the read)."""
    stat = path.stat()
    return _read_cached(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_cached(path: Path, mtime_ns: int, size: int) -> tuple[list[dict[str, Any]], str]:
    return read_data_file(path)


def _hub_rows(name: str, split: str) -> tuple[list[dict[str, Any]], str, str]:
    from mathloop.data.benchmarks import hub_rows

    rows, dataset_id = hub_rows(name, split)
    digest = hashlib.sha256("".join(json.dumps(r, ensure_ascii=False, sort_keys=True, default=str) + "\n"
                                    for r in rows).encode("utf-8")).hexdigest()
    return rows, digest, f"hub:{dataset_id}"


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


def available_benchmarks(data_dir: str | os.PathLike | None = None, split: str = "test",
                         names: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """(available, missing) registered benchmarks for `split` in the data folder or the packaged data."""
    from mathloop.data.benchmarks import BENCHMARKS

    available, missing = [], []
    for name in (names if names is not None else BENCHMARKS):
        if split not in BENCHMARKS[name].splits:
            continue
        try:
            resolve_data_file(name, split, data_dir)
            available.append(name)
        except FileNotFoundError:
            missing.append(name)
    return available, missing


# --- `mathloop data list` / `data pull` -------------------------------------------------------------------------

def list_benchmarks(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per registered benchmark and split: where it would be read from, version, rows, licence."""
    from mathloop.data.benchmarks import BENCHMARKS

    rows = []
    for name, benchmark in BENCHMARKS.items():
        for split in benchmark.splits:
            entry = packaged_entry(name, split)
            try:
                path = resolve_data_file(name, split, data_dir)
                source = "packaged" if path.is_relative_to(PACKAGED_DIR) else str(path)
            except FileNotFoundError:
                source = f"hub ({benchmark.hub[0]})" if benchmark.hub else "not available"
            rows.append({"benchmark": name, "split": split, "source": source,
                         "version": entry["version"] if entry else "",
                         "rows": entry["rows"] if entry else None,
                         "licence": entry["licence"] if entry else f"not shipped: {not_shipped_reason(name, split)}"})
    return rows


def pull_benchmarks(out: str | os.PathLike, names: list[str] | None = None,
                    data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Write `<out>/<name>/<split>.jsonl` (the harness layout) for `names` (default: every packaged set), from the
    data folder or the packaged data, or from the Hub for the rest. Returns what was done per file; raises when a
    named set is available nowhere (after writing the others)."""
    from mathloop.data.benchmarks import get_benchmark

    if names is None:
        names = list(dict.fromkeys(e["benchmark"] for e in packaged_manifest()["files"]))
    out = Path(out)
    done: dict[str, str] = {}
    failed: list[str] = []
    for name in names:
        benchmark = get_benchmark(name)
        for split in benchmark.splits:
            target = out / name / f"{split}.jsonl"
            try:
                path = resolve_data_file(name, split, data_dir)
            except FileNotFoundError as e:
                if benchmark.hub is None or split != "test":  # the Hub copies are registered for one split
                    if split == "test":
                        failed.append(str(e))
                    continue
                rows, _, origin = _hub_rows(name, split)
                text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows).encode("utf-8")
            else:
                rows, _ = read_data_file(path)  # checks a packaged file's sha256
                text = _uncompressed_bytes(path)  # byte for byte, so the checksum stays the same
                origin = "packaged data" if path.is_relative_to(PACKAGED_DIR) else str(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(text)
            os.replace(tmp, target)
            done[f"{name}/{split}.jsonl"] = f"{len(rows)} rows from {origin}"
    if failed:
        raise FileNotFoundError("; ".join(failed) + (f" (written: {', '.join(done)})" if done else ""))
    return done
