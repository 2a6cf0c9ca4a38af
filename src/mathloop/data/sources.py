"""Where benchmark files come from: a data folder, the data packaged with mathloop, or the Hugging Face Hub.

Resolution for `<name>/<split>`: the folder given (`--data-dir` or $MATHLOOP_DATA_DIR) when it holds the file
(`.jsonl` or `.jsonl.gz`), else the packaged copy (`benchmark_data/`, gzip, listed in its MANIFEST.json with
version, sha256 of the uncompressed file, rows, source and licence), else one error that says where to get the set.
A packaged file is checked against its sha256 on every load. What identifies the data a run used is its
`mathloop.data.benchmarks.data_record` (version and sha256), recorded in run.json and compared on resume. This
module knows files, not the benchmark registry (`mathloop.data.benchmarks`, which builds on it).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from mathloop.records import RecordError, jsonl_rows

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


def resolve_data_file(name: str, split: str = "test", data_dir: str | os.PathLike | None = None,
                      hub: str | None = None) -> Path:
    """The file that holds `name`'s `split`: the data folder's when it has one, else the packaged copy. `hub` (the
    set's Hugging Face dataset id, when the registry has one) goes into the error that says where to get it."""
    root = Path(data_dir) if data_dir else default_data_dir()
    if root is not None and root.exists() and not root.is_dir():
        flag = "--data-dir" if data_dir else f"${DATA_DIR_ENV}"
        raise NotADirectoryError(f"{flag} {root}: is a file, not a folder; give the folder that holds "
                                 "<benchmark>/<split>.jsonl files (gsm8k/test.jsonl, ...)")
    if root is not None:
        for suffix in (".jsonl", ".jsonl.gz"):
            path = root / name / f"{split}{suffix}"
            if path.exists():
                return path
    entry = packaged_entry(name, split)
    if entry is not None:
        return PACKAGED_DIR / entry["file"]
    looked = f"{root / name / f'{split}.jsonl'} does not exist and" if root is not None else "no data folder is set and"
    where = (f"`mathloop data pull --out DIR --benchmarks {name}` (from the Hugging Face Hub, {hub}) or "
             if hub else "")
    raise FileNotFoundError(
        f"{name} ({split}): {looked} mathloop does not ship it ({not_shipped_reason(name, split)}). Get it with "
        f"{where}the official Qwen2.5-Math harness's evaluation/data/ folder, then pass --data-dir DIR or set "
        f"${DATA_DIR_ENV}")


def read_data_file(path: Path) -> tuple[list[dict[str, Any]], str]:
    """The rows of a (possibly gzipped) JSONL benchmark file and the sha256 of its uncompressed bytes; a packaged
    file whose bytes do not match its manifest raises `RecordError`."""
    raw = uncompressed_bytes(path)
    digest = hashlib.sha256(raw).hexdigest()
    if path.is_relative_to(PACKAGED_DIR):
        name, split = path.parent.name, path.name.split(".")[0]
        entry = packaged_entry(name, split)
        if entry is not None and entry["sha256"] != digest:
            raise RecordError(f"{path}: checksum mismatch (sha256 {digest[:12]}..., manifest "
                              f"{entry['sha256'][:12]}...): the packaged file is damaged; reinstall mathloop")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise RecordError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None
    rows = list(jsonl_rows(text.splitlines(), path))
    return rows, digest


def uncompressed_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def read_rows(path: Path) -> tuple[list[dict[str, Any]], str]:
    """`read_data_file`, read once per file version (loading a set and recording its checksum share the read)."""
    stat = path.stat()
    return _read_cached(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_cached(path: Path, mtime_ns: int, size: int) -> tuple[list[dict[str, Any]], str]:
    return read_data_file(path)
