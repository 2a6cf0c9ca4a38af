"""Decontamination: drop training items that overlap an evaluation set (Qwen2.5-Math report, "Decontamination").

A training item (a problem text or a response) is contaminated by a test item when, after `normalize_text`,

1. they share a 13-gram of tokens, and
2. their longest-common-subsequence ratio exceeds 0.6.

The LCS ratio is exact token LCS (bit-parallel, see `lcs_length`) in the symmetric form 2*LCS/(len_a + len_b), the
same form as `difflib.SequenceMatcher.ratio()` (which only approximates the LCS). It is computed only for test items
found through the 13-gram index (the most-shared first, at most `max_candidates`), so checking stays cheap.

Whole-text ratio is the default (problems against test questions). A response is much longer than the question it may
quote, so its whole-text ratio would stay low even when it restates a test question verbatim; `match(text,
local=True)` (used for responses) first cuts the longer text to a window around the shared 13-gram: the span the
shorter text covers when aligned on it, widened by a quarter of the shorter text's length on each side. Local ratios
flag more: a long text plus a short test item that is mostly boilerplate can pass 0.6 on the boilerplate alone.

Texts shorter than 13 tokens cannot share a 13-gram; for them exact equality of the normalised token sequences counts
as contamination (ratio 1.0). A short test item inside a longer training text is therefore *not* flagged.

`ContaminationIndex` holds the test items in compact numpy arrays (sorted 64-bit 13-gram hashes, item and position per
hash, and the token ids of every item), so indexing every test set in the harness data folder (about 25k items) takes
a few megabytes. Filters follow the datatrove habit: `decontaminate` returns the kept items, the removed items with the
reason in `metadata["contamination"]`, and a per-benchmark count.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence, Sized

import numpy as np

from mathloop.data.benchmarks import load_benchmark
from mathloop.progress import progress_bar
from mathloop.records import Problem, Sample

log = logging.getLogger(__name__)

# The benchmarks an index could not check are warned about once per process (a loop checks its problems and then each
# round's selection against the same folder); inside `procedural_problems()` they are an info line only.
_WARNED_UNAVAILABLE: set[tuple[str, ...]] = set()
_PROCEDURAL = contextvars.ContextVar("mathloop_procedural_problems", default=False)


@contextlib.contextmanager
def procedural_problems():
    """Within the block, the benchmarks decontamination cannot check are logged at info level, not warned about: the
    problems come from the procedural generator, which no benchmark's test set can contain."""
    token = _PROCEDURAL.set(True)
    try:
        yield
    finally:
        _PROCEDURAL.reset(token)


def _report_unavailable(names: list[str]) -> None:
    key = tuple(names)
    warn = not _PROCEDURAL.get() and key not in _WARNED_UNAVAILABLE
    if warn:
        _WARNED_UNAVAILABLE.add(key)
    log.log(logging.WARNING if warn else logging.INFO,
            "decontamination: not checked against %s (not in the data folder, not packaged; pass --data-dir with the "
            "harness's data folder)", ", ".join(names))

NGRAM = 13
MIN_RATIO = 0.6  # contaminated when the LCS ratio is strictly above this
MAX_CANDIDATES = 32  # test items (most shared 13-grams first) whose LCS ratio is computed per query

# --- normalisation ------------------------------------------------------------------------------------------------

# LaTeX commands that only lay text out; dropped. Every other command keeps its name as a token ("\frac" -> "frac").
_LAYOUT_COMMANDS = frozenset("""
    left right big bigl bigr bigg biggl biggr middle displaystyle textstyle scriptstyle text textbf textit textrm
    mathrm mathbf mathit mathsf mathtt mathcal mathbb boldsymbol operatorname mbox hbox quad qquad hspace vspace
    limits nolimits cr newline noindent
""".split())
_COMMAND = re.compile(r"\\([a-z]+)|\\[,;:!> ]")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
# A number (decimals kept), one CJK character (those scripts have no spaces), or a run of other letters.
_TOKEN = re.compile(rf"\d+(?:\.\d+)?|[{_CJK}]|[^\W\d_{_CJK}]+")


def _command(m: re.Match[str]) -> str:
    name = m.group(1)
    if name is None or name in _LAYOUT_COMMANDS:
        return " "
    return " frac " if name in ("dfrac", "tfrac") else f" {name} "


def normalize_text(text: str) -> list[str]:
    """Tokens for n-gram matching: lowercase words, numbers and LaTeX command names, without markup or punctuation.

    Dollar signs, layout commands (``\\left``, ``\\text``, spacing) and punctuation go; thousands separators are
    dropped and decimals kept, so "1,000" and "1000" match; CJK text is split into characters.

    >>> normalize_text(r"Janet sells 1,000 eggs at $\\$2.50$ each.")
    ['janet', 'sells', '1000', 'eggs', 'at', '2.50', 'each']
    >>> normalize_text(r"Find $\\left(\\dfrac{1}{2}\\right)^{3}$ in \\text{cm}.")
    ['find', 'frac', '1', '2', '3', 'in', 'cm']
    """
    text = _COMMAND.sub(_command, text.lower())
    return _TOKEN.findall(_THOUSANDS.sub("", text))


# --- longest common subsequence ---------------------------------------------------------------------------------

def lcs_length(a: Sequence, b: Sequence) -> int:
    """Exact length of the longest common subsequence of two token sequences.

    Bit-parallel (Hyyro 2004): one big-integer step per token of `b`, so comparing a few hundred tokens costs
    microseconds instead of the quadratic table.

    >>> lcs_length("abcbdab", "bdcaba")
    4
    """
    if not a or not b:
        return 0
    masks: dict = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def lcs_ratio(a: Sequence, b: Sequence) -> float:
    """2 * LCS / (len(a) + len(b)): 1.0 for equal sequences, 0.0 for disjoint ones.

    >>> lcs_ratio("abcd", "abxd")
    0.75
    """
    if not a and not b:
        return 1.0
    return 2 * lcs_length(a, b) / (len(a) + len(b))


# --- the index ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Match:
    """Why a text counts as contaminated: the test item it overlaps, one shared 13-gram and the LCS ratio."""

    test_id: str
    benchmark: str
    ngram: str  # the shared normalised 13-gram, space-joined (the whole text for short exact matches)
    ratio: float

    def reason(self, field: str) -> dict:
        return {"field": field, "benchmark": self.benchmark, "test_id": self.test_id, "ngram": self.ngram,
                "lcs_ratio": round(self.ratio, 4)}


_UNKNOWN = -1  # id of a token no test item contains: it never matches
_BASE = np.uint64(1_000_003)


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash (mod 2**64) of every n-gram of a token-id array; deterministic across processes."""
    count = len(ids) - n + 1
    values = ids.astype(np.uint64) + np.uint64(1)  # _UNKNOWN (-1) hashes as 0; real ids as id + 1
    h = np.zeros(count, dtype=np.uint64)
    for j in range(n):
        h = h * _BASE + values[j:j + count]
    return h


class ContaminationIndex:
    """Test items indexed by their 13-gram hashes; `match(text)` says whether a training text is contaminated."""

    def __init__(self, items: Iterable[tuple[str, str, str]], n: int = NGRAM, min_ratio: float = MIN_RATIO,
                 max_candidates: int = MAX_CANDIDATES):
        """`items`: (test id, benchmark, text) triples. Prefer `from_benchmarks` or `from_texts`."""
        self.n, self.min_ratio, self.max_candidates = n, min_ratio, max_candidates
        self.unavailable: list[str] = []  # registered benchmarks `from_benchmarks` could not find
        self.ids: list[str] = []
        self.benchmarks: list[str] = []
        self.vocab: dict[str, int] = {}
        token_arrays: list[np.ndarray] = []
        hashes, owners, positions = [], [], []
        self._short: dict[tuple[int, ...], int] = {}  # whole text -> first item, for items under n tokens
        for test_id, benchmark, text in items:
            index = len(self.ids)
            self.ids.append(test_id)
            self.benchmarks.append(benchmark)
            ids = np.array([self.vocab.setdefault(t, len(self.vocab)) for t in normalize_text(text)], dtype=np.int32)
            token_arrays.append(ids)
            if len(ids) < n:
                self._short.setdefault(tuple(ids.tolist()), index)
                continue
            h = _ngram_hashes(ids, n)
            hashes.append(h)
            owners.append(np.full(len(h), index, dtype=np.int32))
            positions.append(np.arange(len(h), dtype=np.int32))
        lengths = np.array([len(a) for a in token_arrays], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._tokens = np.concatenate(token_arrays) if token_arrays else np.zeros(0, dtype=np.int32)
        all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
        order = np.argsort(all_hashes, kind="stable")
        self._hashes = all_hashes[order]
        self._owners = (np.concatenate(owners) if owners else np.zeros(0, dtype=np.int32))[order]
        self._positions = (np.concatenate(positions) if positions else np.zeros(0, dtype=np.int32))[order]

    @classmethod
    def from_texts(cls, items: Iterable[tuple[str, str] | tuple[str, str, str]], **kwargs) -> "ContaminationIndex":
        """Index (id, text) pairs; the benchmark is the id's prefix before '/' (or give (id, text, benchmark))."""
        triples = ((item[0], item[2] if len(item) > 2 else item[0].split("/", 1)[0], item[1]) for item in items)
        return cls(triples, **kwargs)

    @classmethod
    def from_problems(cls, problems: Iterable[Problem], **kwargs) -> "ContaminationIndex":
        return cls(((p.id, p.benchmark, p.question) for p in problems), **kwargs)

    @classmethod
    def from_benchmarks(cls, data_dir: str | os.PathLike | None = None, names: Iterable[str] | None = None,
                        split: str = "test", **kwargs) -> "ContaminationIndex":
        """Index the questions of the benchmarks `names` (test split) from the data folder or the packaged data.

        A named benchmark that is missing raises `FileNotFoundError`. Without `names`, every registered benchmark
        that is available is indexed, and the others are named in `index.unavailable` (a run reports them) and in
        a warning, once per process (`procedural_problems` makes it an info line), never skipped silently.
        """
        from mathloop.data.benchmarks import available_benchmarks

        unavailable: list[str] = []
        if names is None:
            names, unavailable = available_benchmarks(data_dir, split)
            if unavailable:
                _report_unavailable(unavailable)
        problems: list[Problem] = []
        for name in names:
            problems.extend(load_benchmark(name, data_dir, split))
        index = cls.from_problems(problems, **kwargs)
        index.unavailable = unavailable
        return index

    def __len__(self) -> int:
        return len(self.ids)

    def _item_tokens(self, index: int) -> np.ndarray:
        return self._tokens[self._offsets[index]:self._offsets[index + 1]]

    def match(self, text: str, local: bool = False) -> Match | None:
        """The best-matching test item when `text` is contaminated (shared n-gram and LCS ratio above the bar).

        `local`: compare the test item with a window of `text` around the shared n-gram instead of the whole text
        (for responses, which are much longer than the questions they may quote).
        """
        tokens = normalize_text(text)
        ids = np.array([self.vocab.get(t, _UNKNOWN) for t in tokens], dtype=np.int32)
        n = self.n
        if len(ids) < n:
            index = self._short.get(tuple(ids.tolist()))
            if index is None or _UNKNOWN in ids:
                return None
            return Match(self.ids[index], self.benchmarks[index], " ".join(tokens), 1.0)

        query = _ngram_hashes(ids, n)
        lo = np.searchsorted(self._hashes, query, side="left")
        hi = np.searchsorted(self._hashes, query, side="right")
        counts = hi - lo
        hit = counts > 0
        if not hit.any():
            return None
        # Every (query position, index entry) pair with equal hashes, flattened without a Python loop.
        counts, lo = counts[hit], lo[hit]
        query_pos = np.repeat(np.flatnonzero(hit), counts)
        entries = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        owners = self._owners[entries]
        items, first, shared = np.unique(owners, return_index=True, return_counts=True)
        best: Match | None = None
        for k in np.argsort(-shared, kind="stable")[:self.max_candidates]:
            index, qpos, tpos = int(items[k]), int(query_pos[first[k]]), int(self._positions[entries[first[k]]])
            test = self._item_tokens(index)
            if not np.array_equal(ids[qpos:qpos + n], test[tpos:tpos + n]):
                continue  # a 64-bit hash collision
            ratio = _windowed_ratio(ids, test, qpos, tpos) if local else lcs_ratio(ids.tolist(), test.tolist())
            if ratio > self.min_ratio and (best is None or ratio > best.ratio):
                best = Match(self.ids[index], self.benchmarks[index], " ".join(tokens[qpos:qpos + n]), ratio)
        return best


def _windowed_ratio(a: np.ndarray, b: np.ndarray, pos_a: int, pos_b: int) -> float:
    """LCS ratio of `a` and `b` aligned on a shared n-gram at `pos_a` / `pos_b`, the longer cut to the shorter's span."""
    if len(a) < len(b):
        a, b, pos_a, pos_b = b, a, pos_b, pos_a
    slack = max(4, len(b) // 4)
    start = pos_a - pos_b  # where `b` starts when laid over `a`
    window = a[max(0, start - slack):max(0, start + len(b) + slack)]
    return lcs_ratio(window.tolist(), b.tolist())


# --- filters -----------------------------------------------------------------------------------------------------

def _field_text(problem: Problem, field: str) -> str | None:
    value = getattr(problem, field) if hasattr(problem, field) else problem.metadata.get(field)
    if isinstance(value, (list, tuple)):
        value = "\n".join(str(v) for v in value)
    return None if value is None else str(value)


def decontaminate(problems: Iterable[Problem], index: ContaminationIndex,
                  check_fields: Sequence[str] = ("question",)) -> tuple[list[Problem], list[Problem], dict[str, int]]:
    """Split problems into (kept, removed, report).

    `check_fields` names `Problem` attributes or `metadata` keys (e.g. "solution"); the first contaminated field
    decides. A field that no problem has raises `ValueError` rather than silently checking nothing. Removed problems are copies with the reason in `metadata["contamination"]` (field, benchmark, test id,
    shared 13-gram, LCS ratio); `report` counts removed problems per matched benchmark.
    """
    kept: list[Problem] = []
    removed: list[Problem] = []
    report: Counter[str] = Counter()
    found: set[str] = set()
    total = len(problems) if isinstance(problems, Sized) else None
    for problem in progress_bar(total, "decontaminate", "problem", iterable=problems):
        reason = None
        for field in check_fields:
            text = _field_text(problem, field)
            if text is not None:
                found.add(field)
            match = index.match(text) if text else None
            if match is not None:
                reason = match.reason(field)
                break
        if reason is None:
            kept.append(problem)
        else:
            removed.append(dataclasses.replace(problem, metadata={**problem.metadata, "contamination": reason}))
            report[reason["benchmark"]] += 1
    missing = [field for field in check_fields if field not in found]
    if missing and kept + removed:
        raise ValueError(f"no problem has field(s) {', '.join(missing)} (neither a Problem attribute nor a metadata "
                         f"key): nothing was checked there; fix check_fields")
    return kept, removed, dict(sorted(report.items()))


def decontaminate_samples(samples: Iterable[Sample], index: ContaminationIndex
                          ) -> tuple[list[Sample], list[Sample], dict[str, int]]:
    """`decontaminate` for responses: checks the sample's `question` (when present) and then the response.

    Responses are matched with `local=True`, so one that restates a test question inside a long solution is caught.

    The prompt itself is not checked (it carries templates and few-shot exemplars); the problem text is the
    sample's `question`. Repeated question texts (many samples per problem) are matched once.
    """
    kept: list[Sample] = []
    removed: list[Sample] = []
    report: Counter[str] = Counter()
    question_matches: dict[str, Match | None] = {}
    total = len(samples) if isinstance(samples, Sized) else None
    for sample in progress_bar(total, "decontaminate", "sample", iterable=samples):
        reason = None
        question = sample.question
        if question:
            if question not in question_matches:
                question_matches[question] = index.match(str(question))
            if question_matches[question] is not None:
                reason = question_matches[question].reason("question")
        if reason is None and sample.response:
            match = index.match(sample.response, local=True)
            reason = match.reason("response") if match else None
        if reason is None:
            kept.append(sample)
        else:
            removed.append(dataclasses.replace(sample, metadata={**sample.metadata, "contamination": reason}))
            report[reason["benchmark"]] += 1
    return kept, removed, dict(sorted(report.items()))


__all__ = ["ContaminationIndex", "Match", "decontaminate", "decontaminate_samples", "lcs_length", "lcs_ratio",
           "normalize_text"]
