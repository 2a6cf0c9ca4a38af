"""Rejection sampling into SFT data (method step 5): pick the best responses per problem, write chat rows.

Per problem:
- with a gold answer: the verified-correct responses, ranked by `vote`: best RM score first (`rm-weighted`, and
  `auto` when every sample has a score), most confident first (`confidence-weighted`: the generator's own
  `Sample.confidence`), else in sampling order, or fewest tokens first with `shortest_first` (concise solutions,
  which also cost SFT less);
- without one (synthesized problems): a pseudo-label by a vote over the extracted answers, each response weighted by
  sigmoid(RM score) (`rm-weighted`; `auto` with scores), by exp(confidence) (`confidence-weighted`) or 1
  (`majority`); the problem is kept when the winning answer holds at least `min_agreement` of the weight, and its
  responses that agree are the candidates.
Candidates that hit the token limit are dropped (they never finished), then exact and near-duplicate responses
(word 3-gram Jaccard similarity >= `near_duplicate`, default 0.8) are removed, and the first `k` remain.

Two settings against the narrowing that training on the model's own right answers causes (docs/results.md):
- `difficulty`: rows per problem follow how often it was solved, ceil(k * wrong share): a problem solved c of n
  times gets ceil(k * (n - c) / n) rows, so rarely solved problems get up to k and problems solved every time none
  (DART-Math's argument: the easy ones teach what the model already does);
- `negatives`: up to this many wrong, finished responses per problem with a gold answer become rows with
  `"reward": -1`, which `mathloop sft` pushes down with its `negative_weight` (`mathloop.train.sft_loss`).

`sft_rows` turns the chosen samples into TRL's prompt-completion conversational rows, so SFT computes the loss on
the response only whatever the chat template:
  {"prompt": [system, user messages], "completion": [{"role": "assistant", "content": response}], ...}
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mathloop.config import positive_int
from mathloop.metrics import CONFIDENCE_MEASURE, majority
from mathloop.prompts import build_messages
from mathloop.records import Problem, Sample
from mathloop.verify import same_answer


VOTES = ("auto", "majority", "rm-weighted", "confidence-weighted")


@dataclass
class SelectConfig:
    """Every setting of `mathloop select` (the loop's select section sets the selection rule; it fills in the
    files, and `decontaminate` and `data_dir` from its own settings)."""

    samples: list[str] = field(metadata={"help": "comma-separated sample JSONL files or folders"})
    output: str = field(metadata={"help": "SFT data JSONL to write"})
    k: int = field(default=4, metadata={"type": positive_int, "help": "responses per problem"})
    vote: str = field(default="auto", metadata={"choices": list(VOTES),
        "help": "how correct responses rank and pseudo-label votes weigh: by RM score (rm-weighted; auto when every "
                "sample has one), by the generator's confidence (confidence-weighted), or not (majority)"})
    shortest_first: bool = field(default=False, metadata={
        "help": "without RM order, keep the responses with the fewest tokens (default: sampling order)"})
    min_agreement: float = field(default=0.5, metadata={
        "help": "pseudo-labels: share of votes the majority answer needs"})
    near_duplicate: float = field(default=0.8, metadata={
        "help": "word 3-gram Jaccard similarity at which two responses count as one"})
    difficulty: bool = field(default=False, metadata={
        "help": "rows per problem ceil(k * share of wrong samples): none for problems always solved"})
    negatives: int = field(default=0, metadata={
        "help": "wrong responses per problem kept as rows with reward -1 (for sft's negative_weight)"})
    decontaminate: bool = field(default=False, metadata={
        "help": "remove responses and questions that match any benchmark of the data folder"})
    data_dir: str | None = field(default=None, metadata={"help": "benchmark folder (default: $MATHLOOP_DATA_DIR)"})

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"select: k must be >= 1, got {self.k}")
        if not 0 < self.min_agreement <= 1:
            raise ValueError(f"select: min_agreement must be in (0, 1], got {self.min_agreement}")
        if not 0 < self.near_duplicate <= 1:
            raise ValueError(f"select: near_duplicate must be in (0, 1], got {self.near_duplicate}")
        if self.negatives < 0:
            raise ValueError(f"select: negatives must be >= 0, got {self.negatives}")
        if self.vote not in VOTES:
            raise ValueError(f"select: vote must be one of {', '.join(VOTES)}, got {self.vote!r}")

    def rule(self) -> dict[str, Any]:
        """The settings of `select_responses`."""
        return {name: getattr(self, name) for name in ("k", "vote", "min_agreement", "near_duplicate",
                                                        "shortest_first", "difficulty", "negatives")}


def run_select(config: SelectConfig, problems: Mapping[str, Problem] | None = None) -> dict:
    """Select from `config.samples` and write the SFT rows to `config.output`; returns the selection report with
    the row count. A selection that keeps no response is an error (an empty SFT file trains nothing)."""
    from pathlib import Path

    from mathloop.pipeline.sample import read_samples
    from mathloop.records import read_records, write_jsonl
    from mathloop.runs import refuse_overwriting_inputs

    config.validate()
    refuse_overwriting_inputs({"--output": config.output}, {"--samples": config.samples})
    samples = [s for source in config.samples
               for s in (read_samples(source) if Path(source).is_dir() else read_records(Sample, source))]
    chosen, report = select_responses(samples, **config.rule())
    info = report.to_dict()
    if config.decontaminate:
        chosen, info["decontamination"] = decontaminate_selection(chosen, config.data_dir)
    if not chosen:
        raise ValueError(f"{', '.join(config.samples)}: selection kept no response ({info}); sample more responses "
                         f"per problem or more problems")
    info["rows"] = write_jsonl(config.output, sft_rows(chosen, problems))
    return info


@dataclass
class SelectionReport:
    """What selection kept and why the rest went."""

    problems: int = 0
    kept_problems: int = 0
    selected: int = 0
    pseudo_labelled: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> problems
    truncated: int = 0
    duplicates: int = 0
    negatives: int = 0  # wrong responses selected as reward -1 rows (in `selected` too)

    def to_dict(self) -> dict:
        return {"problems": self.problems, "kept_problems": self.kept_problems, "selected": self.selected,
                "negatives": self.negatives, "pseudo_labelled": self.pseudo_labelled, "dropped": dict(self.dropped),
                "truncated_responses": self.truncated, "duplicate_responses": self.duplicates}


def shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """Word n-grams of the lower-cased text (punctuation kept as its own words).

    >>> sorted(shingles("So x = 2", n=2))
    [('=', '2'), ('so', 'x'), ('x', '=')]
    """
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def distinct_indices(texts: Iterable[str], near_duplicate: float = 0.8) -> Iterator[int]:
    """The indices of the texts selection keeps as distinct, lazily: each text that is not a near-duplicate (word
    3-gram Jaccard >= `near_duplicate`) of an earlier kept one.

    >>> list(distinct_indices(["x = 2 so the answer is 2", "x = 2 so the answer is 2", "first halve it, then add 1"]))
    [0, 2]
    """
    kept: list[set] = []
    for index, text in enumerate(texts):
        mine = shingles(text)
        if not any(jaccard(mine, other) >= near_duplicate for other in kept):
            kept.append(mine)
            yield index


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets).

    >>> jaccard({1, 2, 3}, {2, 3, 4})
    0.5
    """
    return len(a & b) / len(a | b) if a or b else 1.0


def vote_weights(samples: list[Sample], vote: str = "auto") -> list[float] | None:
    """Each sample's weight in a vote and rank (higher first), or None for plain votes in sampling order:
    sigmoid(RM score) for `rm-weighted` (and `auto` when every sample has a score), exp(confidence) for
    `confidence-weighted` (the geometric-mean probability of the tokens of the `CONFIDENCE_MEASURE` window).

    >>> vote_weights([Sample("p", "", "", rm_score=0.0)]), vote_weights([Sample("p", "", "")])
    ([0.5], None)
    """
    if vote == "majority" or (vote == "auto" and not all(s.rm_score is not None for s in samples)):
        return None
    if vote in ("auto", "rm-weighted"):
        if any(s.rm_score is None for s in samples):
            raise ValueError("select: vote rm-weighted needs an rm_score on every sample (score them with "
                             "`mathloop rm score`, or use vote majority)")
        return [1.0 / (1.0 + math.exp(-s.rm_score)) for s in samples]
    if vote == "confidence-weighted":
        if any(not s.confidence or CONFIDENCE_MEASURE not in s.confidence for s in samples):
            raise ValueError("select: vote confidence-weighted needs every sample's confidence (sample with a "
                             "backend that reports token log-probabilities: hf, openvino, vllm, openai)")
        return [math.exp(s.confidence[CONFIDENCE_MEASURE]) for s in samples]
    raise ValueError(f"select: vote must be one of {', '.join(VOTES)}, got {vote!r}")


def majority_answer(samples: list[Sample], vote: str = "auto") -> tuple[str | None, float]:
    """The (weighted) majority answer among the samples' extracted answers and its share of the weight.

    Answers are grouped with the verifier's equivalence (1/2 and 0.5 are one vote); each vote weighs what
    `vote_weights` gives (1 without). Samples without an answer count in the total weight but vote for nothing.

    >>> s = [Sample("p", "", "", pred=a) for a in ("1/2", "0.5", "3", None)]
    >>> majority_answer(s)
    ('1/2', 0.5)
    """
    weights = vote_weights(samples, vote) or [1.0] * len(samples)
    winner, votes = majority([s.pred for s in samples], same_answer, weights)
    if winner is None:
        return None, 0.0
    return samples[winner].pred, votes / sum(weights)


def select_responses(samples: Iterable[Sample], k: int = SelectConfig.k, vote: str = SelectConfig.vote,
                     min_agreement: float = SelectConfig.min_agreement,
                     near_duplicate: float = SelectConfig.near_duplicate,
                     shortest_first: bool = SelectConfig.shortest_first, difficulty: bool = SelectConfig.difficulty,
                     negatives: int = SelectConfig.negatives) -> tuple[list[Sample], SelectionReport]:
    """The SFT responses: up to `k` per problem (fewer with `difficulty`), and up to `negatives` wrong ones marked
    `metadata["reward"] = -1`, as described in the module docstring."""
    if k < 1:
        raise ValueError(f"select: k must be >= 1, got {k}")
    if not 0 < min_agreement <= 1:
        raise ValueError(f"select: min_agreement must be in (0, 1], got {min_agreement}")
    by_problem: dict[str, list[Sample]] = {}
    for s in samples:
        by_problem.setdefault(s.problem_id, []).append(s)
    report = SelectionReport(problems=len(by_problem))
    chosen: list[Sample] = []
    for problem_id in sorted(by_problem):
        group = sorted(by_problem[problem_id], key=lambda s: s.sample_index)
        rows = k
        if group[0].gold is not None:
            candidates = [s for s in group if s.verdict == "correct"]
            reason = "no correct response"
            if difficulty:
                rows = rows_for_difficulty(k, len(candidates), len(group))
            if negatives:
                wrong = _distinct(_finished([s for s in group if s.verdict != "correct"], report), negatives,
                                  near_duplicate, report)
                for s in wrong:
                    s.metadata["reward"] = -1
                chosen += wrong
                report.negatives += len(wrong)
        else:
            label, share = majority_answer(group, vote)
            if label is None or share < min_agreement:
                report.dropped["no majority answer"] += 1
                continue
            candidates = [s for s in group if s.pred is not None and same_answer(label, s.pred)]
            for s in candidates:
                s.metadata.update(pseudo_label=label, agreement=round(share, 4))
            report.pseudo_labelled += 1
            reason = "no agreeing response"
        if rows == 0:
            report.dropped["solved by every sample"] += 1
            continue
        finished = _finished(candidates, report)
        weights = vote_weights(finished, vote) if finished else None
        if weights is not None:
            order = sorted(range(len(finished)), key=lambda i: -weights[i])  # stable: sampling order on ties
            finished = [finished[i] for i in order]
        elif shortest_first:
            finished.sort(key=lambda s: math.inf if s.completion_tokens is None else s.completion_tokens)  # stable
        kept = _distinct(finished, rows, near_duplicate, report)
        if not kept:
            report.dropped[reason if not candidates or finished else "only truncated responses"] += 1
            continue
        report.kept_problems += 1
        chosen += kept
    report.selected = len(chosen)
    return chosen, report


def rows_for_difficulty(k: int, correct: int, samples: int) -> int:
    """SFT rows for a problem solved `correct` of `samples` times: ceil(k * wrong share).

    >>> [rows_for_difficulty(4, c, 8) for c in range(9)]
    [4, 4, 3, 3, 2, 2, 1, 1, 0]
    """
    return math.ceil(k * (samples - correct) / samples) if samples else 0


def _finished(candidates: list[Sample], report: SelectionReport) -> list[Sample]:
    """The candidates that did not hit the token limit (the others never finished); counts the rest."""
    finished = [s for s in candidates if s.finish_reason != "length"]
    report.truncated += len(candidates) - len(finished)
    return finished


def _distinct(candidates: list[Sample], limit: int, near_duplicate: float, report: SelectionReport) -> list[Sample]:
    """The first `limit` candidates that are not near-duplicates of an earlier kept one (word 3-gram Jaccard)."""
    kept: list[Sample] = []
    examined = 0
    for index in distinct_indices((s.response for s in candidates), near_duplicate):
        kept.append(candidates[index])
        examined = index + 1
        if len(kept) == limit:
            break
    else:
        examined = len(candidates)
    report.duplicates += examined - len(kept)
    return kept


def sft_rows(samples: Iterable[Sample], problems: Mapping[str, Problem] | None = None) -> list[dict]:
    """Prompt-completion chat rows for SFT. The prompt messages are rebuilt from the problem (from `problems`, or
    from the sample's `question`) in the sample's mode, without few-shot turns.
    TIR responses keep their executor spans (`tool_output_spans`), which `mathloop sft` keeps out of the loss."""
    rows = []
    for s in samples:
        problem = (problems or {}).get(s.problem_id)
        if problem is None:
            question = s.question
            if question is None:
                raise ValueError(f"sample of problem {s.problem_id} has no question: pass the problems, or sample "
                                 f"with a mathloop version that stores the question")
            problem = Problem(id=s.problem_id, benchmark=s.benchmark, question=question, gold=s.gold)
        rows.append({"prompt": build_messages(problem, s.mode, 0),
                     "completion": [{"role": "assistant", "content": s.response}],
                     "problem_id": s.problem_id, "gold": s.gold if s.gold is not None
                     else s.metadata.get("pseudo_label"), "rm_score": s.rm_score, "mode": s.mode,
                     "tool_output_spans": s.tool_output_spans, "reward": s.metadata.get("reward", 1)})
    return rows


def decontaminate_selection(samples: list[Sample], data_dir: str | None = None) -> tuple[list[Sample], dict]:
    """Remove selected responses whose question or text matches a test item of any benchmark in the data folder
    (13-gram + LCS rule); returns the kept samples and a report: counts per benchmark and every removal's reason."""
    from mathloop.data.decontaminate import ContaminationIndex, decontaminate_samples

    index = ContaminationIndex.from_benchmarks(data_dir)
    kept, removed, per_benchmark = decontaminate_samples(samples, index)
    return kept, {"removed_responses": len(removed), "per_benchmark": per_benchmark, "not_checked": index.unavailable,
                  "examples": [{"problem_id": s.problem_id, "sample_index": s.sample_index,
                                **s.metadata["contamination"]} for s in removed]}
