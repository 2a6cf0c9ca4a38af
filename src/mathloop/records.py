"""The two records every stage of mathloop reads and writes: `Problem` and `Sample`.

Both are plain dataclasses that round-trip through JSON lines. Unknown keys in an input line go to
`metadata` so nothing a user stored is lost; a malformed line raises `RecordError` naming file and line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, TypeVar

Mode = Literal["cot", "tir"]
# The verdict vocabulary: the verifier's grades, counted by the metrics, shown by the report.
CORRECT, INCORRECT, NO_ANSWER = "correct", "incorrect", "no_answer"
Verdict = Literal["correct", "incorrect", "no_answer"]
VERDICTS: tuple[str, ...] = (CORRECT, INCORRECT, NO_ANSWER)


class RecordError(ValueError):
    """A JSONL file holds a line that is not a valid record; the message names file and line."""


@dataclass
class Problem:
    """One benchmark or training item.

    `gold` is the reference final answer as text (None when the problem has no gold answer, e.g. synthesized
    problems waiting for a pseudo-label). `choices` holds the options of a multiple-choice item, in order; then
    `gold` is the option letter.
    """

    id: str
    benchmark: str
    question: str
    gold: str | None = None
    choices: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One generated response to one problem, with everything needed to grade, score and reproduce it.

    Eval, sample, GRPO rollouts and synthesis all make it the same way (`mathloop.generate.response_samples`).
    `question`, `answer_type` and `benchmark_version` are the problem's, so a sample is graded, scored and
    checked against its data without the problem at hand (None in files written before they were fields)."""

    problem_id: str
    prompt: str
    response: str
    mode: Mode = "cot"
    benchmark: str = ""
    sample_index: int = 0
    gold: str | None = None
    question: str | None = None
    answer_type: str = "math"
    benchmark_version: int | str | None = None
    pred: str | None = None
    verdict: Verdict | None = None
    rm_score: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    # Summaries of the generated tokens' log-probabilities (`metrics.confidence_summary`: mean, lowest_window,
    # tail), where the backend reports them; None where it does not
    confidence: dict[str, float] | None = None
    model: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)
    # Character spans [start, end) of `response` written by the code executor (TIR), masked in training.
    tool_output_spans: list[list[int]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


R = TypeVar("R", Problem, Sample)


def to_dict(record: Problem | Sample) -> dict[str, Any]:
    return dataclasses.asdict(record)


def from_dict(cls: type[R], row: dict[str, Any]) -> R:
    """Build a record from a dict; keys the record does not know are kept in `metadata`, and fields that older
    files kept in `metadata` (a Sample's question and answer_type) are read from there.

    >>> from_dict(Sample, {"problem_id": "p", "prompt": "", "response": "", "metadata": {"question": "1+1?"}}).question
    '1+1?'
    """
    names = {f.name for f in dataclasses.fields(cls)}
    known = {k: v for k, v in row.items() if k in names}
    extra = {k: v for k, v in row.items() if k not in names}
    metadata = {**extra, **(known.get("metadata") or {})}
    for name in names & metadata.keys() - known.keys() - {"metadata"}:
        known[name] = metadata.pop(name)
    if metadata or "metadata" in known:
        known["metadata"] = metadata
    return cls(**known)


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSONL file; blank lines are skipped, a bad line raises `RecordError`."""
    path = Path(path)
    with path.open("rb") as f:
        yield from jsonl_rows(utf8_lines(f, path), path)


def utf8_lines(lines: Iterable[bytes], source: str | os.PathLike) -> Iterator[str]:
    """The lines of a file read in binary, decoded as UTF-8; a line that is not raises `RecordError` naming
    `source` and the line (a codec message alone names neither)."""
    for lineno, line in enumerate(lines, 1):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(f"{source}:{lineno}: not UTF-8 text (byte {e.start + 1} of the line is "
                              f"0x{line[e.start]:02x}); save the file as UTF-8") from None


def jsonl_rows(lines: Iterable[str], source: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The JSON objects of JSONL `lines` (blank lines skipped); a line that is not a JSON object raises `RecordError`
    naming `source` and the line number."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{source}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise RecordError(f"{source}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield row


_NONE = type(None)
# The fields of a record that code reads as text or numbers, and the JSON types they may hold.
FIELD_TYPES: dict[type, dict[str, tuple[type, ...]]] = {
    Problem: {"id": (str,), "benchmark": (str,), "question": (str,), "gold": (str, _NONE)},
    Sample: {"problem_id": (str,), "prompt": (str,), "response": (str,), "benchmark": (str,), "sample_index": (int,),
             "gold": (str, _NONE), "question": (str, _NONE), "pred": (str, _NONE), "rm_score": (int, float, _NONE),
             "prompt_tokens": (int, _NONE), "completion_tokens": (int, _NONE)},
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", _NONE: "null"}


def check_field_types(cls: type, row: dict[str, Any], where: str) -> None:
    """Raise `RecordError` naming `where` and the key when a field of `row` has a JSON type its record does not take
    (`FIELD_TYPES`): a number as gold, text as sample_index."""
    for name, types in FIELD_TYPES.get(cls, {}).items():
        if name not in row:
            continue
        value = row[name]
        if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
            continue
        wanted = " or ".join(dict.fromkeys(_TYPE_NAMES[t] for t in types))
        fix = f'; write it as "{value}"' if str in types and isinstance(value, (int, float)) else ""
        raise RecordError(f"{where}: {name} must be {wanted}, got {json.dumps(value)}{fix}")


def read_records(cls: type[R], path: str | os.PathLike) -> list[R]:
    """Read `Problem`s or `Sample`s from JSONL, naming file, line and field on a bad row."""
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    records = []
    for lineno, row in enumerate(read_jsonl(path), 1):
        missing = [name for name in required if name not in row]
        if missing:
            raise RecordError(f"{path}: record {lineno}: missing field(s) {', '.join(missing)} for {cls.__name__}")
        check_field_types(cls, row, f"{path}: record {lineno}")
        try:
            records.append(from_dict(cls, row))
        except TypeError as e:
            raise RecordError(f"{path}: record {lineno}: {e}") from None
    return records


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any] | Problem | Sample]) -> int:
    """Write rows atomically (temp file + rename), so an interrupted write never truncates `path`."""
    from mathloop.runs import atomic_open

    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(_dumps(row) + "\n")
            n += 1
    return n


class JsonlAppender:
    """Append records one line at a time, flushed and fsynced, so a killed run keeps every finished line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_last_line(self.path)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, rows: Iterable[dict[str, Any] | Problem | Sample]) -> None:
        try:
            for row in rows:
                self._f.write(_dumps(row) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:  # a full disk: name the file; the lines already fsynced stay
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SURROGATES = re.compile("[\ud800-\udfff]")


def _dumps(row: dict[str, Any] | Problem | Sample) -> str:
    """One JSONL line. A lone surrogate in a string (a model-written cell can print one) becomes U+FFFD: no UTF-8
    writer accepts it, and one string must not stop a run.

    >>> _dumps({"stdout": "\\udcff"})
    '{"stdout": "\ufffd"}'
    """
    if dataclasses.is_dataclass(row):
        row = dataclasses.asdict(row)
    return _SURROGATES.sub("\ufffd", json.dumps(row, ensure_ascii=False))


def drop_torn_last_line(path: str | os.PathLike) -> None:
    """A kill mid-write can leave a last line without its newline. When that line does not parse it is torn and cut;
    when it is a complete JSON record it is kept and given its newline, so the next append starts a new line."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        try:
            complete = isinstance(json.loads(data[keep:]), dict)
        except ValueError:  # also a cut inside a multi-byte character
            complete = False
        if not complete:
            f.truncate(keep)
            return
        f.seek(0, os.SEEK_END)
        f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
