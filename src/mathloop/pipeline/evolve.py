"""`mathloop synthesize`: new problems written by the model from seed problems (query evolution in the manner of
MuggleMath), a generating stage; `mathloop.data.synthetic` is the other source of new problems, a procedural
generator with exact answers and no model.

Problem synthesis by the model: query evolution in the manner of MuggleMath (Li et al. 2023, "Query and Response
Augmentation"), with answers agreed by majority vote (the method page's stand-in for the paper's synthesized QA data).

1. Evolve (`evolve_problems`): for each seed problem, `variants_per_seed` operations, chosen per seed reproducibly,
   ask the model to rewrite it into a new problem:
     change_numbers         other numbers, same story and question
     fractions_percentages  a quantity given as a fraction or a percentage of another
     add_condition          one more condition, so one more step of reasoning
     combine_concept        a second mathematical concept woven in
     change_target          the same situation, asked about another quantity
   The new problem is read from the response's "New problem:" part (`parse_new_problem`) and rejected, with a
   reason, when it is missing, too short or too long, asks nothing, is the seed again or a duplicate, states an
   answer or solution, was cut by the token limit, or matches a benchmark test item (with a `ContaminationIndex`).
2. Answer (`answer_by_majority`): `n_answers` chain-of-thought solutions per new problem with the official CoT prompt,
   sampled (temperature 0.7, top_p 0.8: the paper's Maj@8 setting). Extracted answers are grouped by mathematical
   equivalence; the largest group's answer becomes `gold` when it holds at least `min_agreement` of the n solutions
   (solutions cut by the token limit vote for nothing). These golds are pseudo-labels: the current model's majority,
   right more often than one sample but not always, so keep the agreement (in `metadata`) when weighing the data.

Kept problems have ids `<seed id>/evolved/<operation>`, benchmark "evolved", and `metadata` with `seed_id`,
`seed_question`, `operation`, `answers` (the n extracted answers), `votes`, `agreement` and `model`. Seeds are
shown to the model as question text only (multiple-choice options are left out), so new problems are free-response.

`synthesize_file` writes kept problems to a JSONL file and rejected candidates, with their reasons, next to it
(`<name>.rejected.jsonl`), a chunk of seeds at a time; re-running it skips the seeds already done
(`mathloop synthesize`).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mathloop.backends import BACKEND_SETTING
from mathloop.backends.base import Backend, SamplingParams
from mathloop.config import positive_int, resume_keys
from mathloop.generate import generate, grade_samples, response_samples
from mathloop.progress import progress_bar
from mathloop.metrics import majority
from mathloop.prompts import build_messages
from mathloop.records import JsonlAppender, Problem, drop_torn_last_line, read_jsonl, write_jsonl
from mathloop.runs import lock_run_dir, start_run_record
from mathloop.verify import same_answer

if TYPE_CHECKING:
    from mathloop.data.decontaminate import ContaminationIndex

log = logging.getLogger(__name__)

BENCHMARK = "evolved"

OPERATIONS: dict[str, str] = {
    "change_numbers": (
        "Change the specific numbers in the problem to different values. Keep the story and what is asked, and "
        "pick numbers that keep every quantity sensible (counts of things stay whole numbers)."),
    "fractions_percentages": (
        "Rewrite the problem so that at least one quantity is given as a fraction or a percentage of another "
        "quantity in it, instead of as a plain number."),
    "add_condition": (
        "Add one new condition or event to the problem, so that solving it takes one more step of reasoning than "
        "the original."),
    "combine_concept": (
        "Combine the problem with another mathematical concept, such as ratios, averages, area, unit conversion or "
        "a simple equation, so that both the original idea and the new concept are needed for the answer."),
    "change_target": (
        "Keep the situation but ask for a different quantity that it determines, and word the problem in your own "
        "way rather than copying the original sentences."),
}

EVOLVE_PROMPT = """Here is a math problem:

{question}

Write one new math problem based on it. {instruction}

The new problem must be self-contained, solvable, and have a single final answer. Do not solve it and do not \
state its answer. Reply in this form:
New problem: <the new problem>"""

EVOLVE_SAMPLING = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=400)
ANSWER_SAMPLING = SamplingParams(temperature=0.7, top_p=0.8, max_new_tokens=1024)  # the paper's Maj@8 setting

MIN_CHARS, MAX_CHARS = 20, 2000

_MARKER = re.compile(r"new\s+problem\s*\**\s*[:：]", re.IGNORECASE)
# A line that starts a solution, an answer, a note or another problem ends the new problem's text.
_END = re.compile(r"^[\s*#>_-]*(?:solution|answer|explanation|note|step\s*\d|original problem|new problem)\b",
                  re.IGNORECASE | re.MULTILINE)
_STATES_ANSWER = re.compile(r"\\boxed|\banswer\s*(?:is|:)|\bsolution\s*:", re.IGNORECASE)
_ASKS = re.compile(r"\?|\b(?:find|compute|calculate|determine|evaluate|simplify|solve|express|how|what|which)\b",
                   re.IGNORECASE)


@dataclass
class Rejected:
    """A candidate that did not become a problem, with the reason (datatrove's habit: filters say why)."""

    id: str  # the id the kept problem would have had
    seed_id: str
    operation: str
    reason: str  # no_problem, too_short, too_long, no_question, same_as_seed, duplicate, states_answer, truncated,
    #              contaminated, no_answer, no_agreement
    text: str  # the model's response (evolution) or the new question (later stages)
    detail: dict[str, Any] = field(default_factory=dict)  # answers and agreement, or the contamination match


@dataclass
class SynthesisReport:
    seeds: int = 0
    candidates: int = 0  # (seed, operation) pairs asked for
    kept: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def reasons(self) -> Counter[str]:
        return Counter(r.reason for r in self.rejected)

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "candidates": self.candidates, "kept": self.kept,
                "rejected": dict(self.reasons().most_common())}


@dataclass(frozen=True)
class EvolutionSettings:
    """What decides the synthesized problems (recorded next to the output; a resumed file must keep every field:
    each is a resume key)."""

    variants_per_seed: int = field(default=2, metadata={"resume": True,
        "help": "new problems asked for per seed, each by a different operation"})
    n_answers: int = field(default=4, metadata={"resume": True, "help": "sampled solutions per new problem"})
    min_agreement: float = field(default=0.5, metadata={"resume": True,
        "help": "share of the n solutions the majority answer needs"})
    seed: int = field(default=0, metadata={"resume": True, "help": "operation choice per seed and sampling"})
    operations: tuple[str, ...] = field(default=tuple(OPERATIONS), metadata={"resume": True,
        "help": "the operations a seed's variants are drawn from"})
    evolve_sampling: SamplingParams = field(default_factory=lambda: EVOLVE_SAMPLING, metadata={"resume": True,
        "help": "how a seed is rewritten into a new problem"})
    answer_sampling: SamplingParams = field(default_factory=lambda: ANSWER_SAMPLING, metadata={"resume": True,
        "help": "how a new problem's answers are sampled"})

    def validate(self) -> None:
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if unknown or not self.operations:
            raise ValueError(f"unknown operation(s) {unknown or '(none given)'}; known: {', '.join(OPERATIONS)}")
        if not 1 <= self.variants_per_seed <= len(self.operations):
            raise ValueError(f"variants_per_seed must be 1..{len(self.operations)} (one per operation), "
                             f"got {self.variants_per_seed}")
        if self.n_answers < 1:
            raise ValueError(f"n_answers must be >= 1, got {self.n_answers}")
        if not 0 < self.min_agreement <= 1:
            raise ValueError(f"min_agreement must be in (0, 1], got {self.min_agreement}")
        if self.answer_sampling.greedy and self.n_answers > 1:
            raise ValueError("greedy answers are all the same: a majority vote needs answer temperature > 0")



@dataclass
class SynthesizeConfig:
    """Every setting of `mathloop synthesize` (and of the loop's synthesize section, where `seeds` is how many of the
    training problems seed it and the loop sets `out`, `decontaminate` and `data_dir`); `evolution()` is the
    `EvolutionSettings` that decides the problems."""

    seeds: str | int | None = field(default=None, metadata={
        "help": "'<benchmark>:<split>:<count>' from the data folder (e.g. gsm8k:train:100) or a Problem JSONL file "
                "(the loop: how many of its training problems)"})
    out: str | None = field(default=None, metadata={
        "help": "JSONL file of the kept problems (appended; resumed when it exists)"})
    model: str = field(default="default", metadata={"resume": True,
        "help": "writes and answers the new problems: embedded name (default, smollm2), folder or Hub id"})
    backend: str = field(default="auto", metadata=BACKEND_SETTING)
    backend_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "backend settings as JSON (the backend flags such as --batch-size set the same keys)"})
    variants_per_seed: int = field(default=EvolutionSettings.variants_per_seed, metadata={"resume": True,
        "flags": ("--variants",), "type": positive_int, "help": "new problems per seed, one operation each"})
    n_answers: int = field(default=EvolutionSettings.n_answers, metadata={"resume": True,
        "flags": ("--answers",), "type": positive_int, "help": "sampled solutions per new problem"})
    min_agreement: float = field(default=EvolutionSettings.min_agreement, metadata={"resume": True,
        "help": "share of the solutions the majority answer needs"})
    operations: list[str] | None = field(default=None, metadata={"resume": True,
        "help": f"comma-separated subset of {', '.join(OPERATIONS)} (default: all)"})
    max_new_tokens: int = field(default=ANSWER_SAMPLING.max_new_tokens, metadata={"resume": True,
        "type": positive_int, "help": "per solution"})
    evolve_max_new_tokens: int = field(default=EVOLVE_SAMPLING.max_new_tokens, metadata={"resume": True,
        "type": positive_int, "help": "per rewritten problem"})
    seed: int = field(default=EvolutionSettings.seed, metadata={"resume": True,
        "help": "operation choice and sampling"})
    chunk_size: int = field(default=32, metadata={"type": positive_int, "help": "seeds per written chunk"})
    decontaminate: bool = field(default=False, metadata={
        "help": "reject new problems that match a test item of any benchmark in the data folder"})
    data_dir: str | None = field(default=None, metadata={"help": "benchmark folder (default: $MATHLOOP_DATA_DIR)"})

    def validate(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"synthesize: chunk_size must be >= 1, got {self.chunk_size}")
        if isinstance(self.seeds, int) and self.seeds < 1:
            raise ValueError(f"synthesize: seeds must be a count >= 1 (the first N training problems), got "
                             f"{self.seeds}")
        self.evolution()

    def evolution(self) -> EvolutionSettings:
        """The validated `EvolutionSettings` of these settings."""
        config = EvolutionSettings(
            variants_per_seed=self.variants_per_seed, n_answers=self.n_answers, min_agreement=self.min_agreement,
            seed=self.seed, operations=tuple(self.operations or OPERATIONS),
            evolve_sampling=dataclasses.replace(EVOLVE_SAMPLING, max_new_tokens=self.evolve_max_new_tokens),
            answer_sampling=dataclasses.replace(ANSWER_SAMPLING, max_new_tokens=self.max_new_tokens))
        config.validate()
        return config


# ---- evolution ---------------------------------------------------------------------------------------------------

def evolution_messages(question: str, operation: str) -> list[dict[str, str]]:
    """The chat turn that asks for one evolved problem."""
    return [{"role": "user", "content": EVOLVE_PROMPT.format(question=question.strip(),
                                                             instruction=OPERATIONS[operation])}]


def choose_operations(seed_id: str, k: int, seed: int = 0, operations: Iterable[str] = tuple(OPERATIONS)
                      ) -> list[str]:
    """`k` different operations for one seed problem, the same on every run for (seed_id, seed); a larger `k`
    extends a smaller one's choice.

    >>> choose_operations("gsm8k/7", 2) == choose_operations("gsm8k/7", 3)[:2]
    True
    """
    order = list(operations)
    random.Random(f"mathloop-evolve/{seed}/{seed_id}").shuffle(order)
    return order[:k]


def parse_new_problem(response: str) -> str | None:
    """The problem text after the first "New problem:" marker, up to a line that starts a solution, an answer or
    another problem; None without a marker.

    >>> parse_new_problem("Sure!\\n**New problem:** Ann has 3 pens and buys 4 more. How many pens?\\n\\nSolution: 7")
    'Ann has 3 pens and buys 4 more. How many pens?'
    >>> parse_new_problem("Ann has 3 pens.") is None
    True
    """
    marker = _MARKER.search(response)
    if marker is None:
        return None
    text = response[marker.end():]
    end = _END.search(text)
    if end is not None and text[:end.start()].strip():
        text = text[:end.start()]
    return text.strip().strip("*\"'“”").strip()


def _normalized(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def rejection_reason(problem: str | None, seed_question: str) -> str | None:
    """Why an evolved problem text is unusable, or None when it is fine.

    >>> rejection_reason("Ann has 3 pens and buys 4 more. How many pens does she have?", "Bo has 2 cats.")
    >>> rejection_reason("Ann has 3 pens. The answer is 7.", "Bo has 2 cats.")
    'states_answer'
    """
    if not problem:
        return "no_problem"
    if len(problem) < MIN_CHARS:
        return "too_short"
    if len(problem) > MAX_CHARS:
        return "too_long"
    if _normalized(problem) == _normalized(seed_question):
        return "same_as_seed"
    if _STATES_ANSWER.search(problem):
        return "states_answer"
    if not _ASKS.search(problem):
        return "no_question"
    return None


def evolve_problems(backend: Backend, seeds: list[Problem], variants_per_seed: int = 2, seed: int = 0,
                    operations: Iterable[str] = tuple(OPERATIONS), params: SamplingParams = EVOLVE_SAMPLING,
                    index: ContaminationIndex | None = None, known_questions: Iterable[str] = ()
                    ) -> tuple[list[Problem], list[Rejected]]:
    """New problems (without gold) from `seeds`, one per (seed, chosen operation), and the rejected candidates.

    `index` (a `ContaminationIndex`) rejects problems that match a benchmark test item; `known_questions`
    (e.g. problems synthesized earlier) count as duplicates.
    """
    jobs = [(s, op) for s in seeds for op in choose_operations(s.id, variants_per_seed, seed, operations)]
    prompts = [backend.chat_prompt(evolution_messages(s.question, op)) for s, op in jobs]
    outputs = generate(backend, prompts, dataclasses.replace(params, n=1, seed=seed)) if jobs else []
    seen = {_normalized(q) for q in known_questions}
    problems: list[Problem] = []
    rejected: list[Rejected] = []
    for (source, operation), (completion,) in zip(jobs, outputs):
        candidate_id = f"{source.id}/evolved/{operation}"
        question = parse_new_problem(completion.text)
        if question and completion.finish_reason == "length" and completion.text.rstrip().endswith(question):
            reason = "truncated"  # the token limit cut the problem itself
        else:
            reason = rejection_reason(question, source.question)
        detail: dict[str, Any] = {}
        if reason is None and _normalized(question) in seen:
            reason = "duplicate"
        if reason is None and index is not None:
            match = index.match(question)
            if match is not None:
                reason, detail = "contaminated", match.reason("question")
        if reason is not None:
            rejected.append(Rejected(candidate_id, source.id, operation, reason,
                                     question if reason in ("duplicate", "contaminated") else completion.text, detail))
            continue
        seen.add(_normalized(question))
        problems.append(Problem(id=candidate_id, benchmark=BENCHMARK, question=question, metadata={
            "seed_id": source.id, "seed_question": source.question, "operation": operation,
            "model": backend.model_id, "answer_type": "math"}))
    return problems, rejected


# ---- answers by majority vote ------------------------------------------------------------------------------------

def majority_vote(answers: list[str | None], verifier: Callable[[str, str], bool] = same_answer
                  ) -> tuple[str | None, int]:
    """The most common answer and its votes (`mathloop.metrics.majority` under the verifier's equivalence).

    >>> majority_vote(["1/2", "3", "0.5", None])
    ('1/2', 2)
    >>> majority_vote([None, None])
    (None, 0)
    """
    winner, votes = majority(answers, verifier)
    return (None, 0) if winner is None else (answers[winner], int(votes))


def answer_by_majority(backend: Backend, problems: list[Problem], n_answers: int = 4, min_agreement: float = 0.5,
                       verifier: Callable[[str, str], bool] = same_answer, seed: int = 0,
                       params: SamplingParams = ANSWER_SAMPLING) -> tuple[list[Problem], list[Rejected]]:
    """Sample `n_answers` CoT solutions per problem; keep the problems whose majority answer holds at least
    `min_agreement` of them, with that answer as `gold`. Returns (kept, rejected)."""
    prompts = [backend.chat_prompt(build_messages(p, "cot", 0)) for p in problems]
    params = dataclasses.replace(params, n=n_answers, seed=seed)
    outputs = generate(backend, prompts, params) if problems else []
    samples = response_samples(problems, prompts, outputs, params, "cot", backend.model_id)
    grade_samples(samples, [p.choices for p in problems for _ in range(n_answers)])  # no gold: answers only
    kept: list[Problem] = []
    rejected: list[Rejected] = []
    for i, problem in enumerate(problems):
        answers = [None if s.finish_reason == "length" else s.pred for s in samples[i * n_answers:(i + 1) * n_answers]]
        answer, votes = majority_vote(answers, verifier)
        agreement = votes / n_answers
        detail = {"answers": answers, "votes": votes, "agreement": agreement}
        if answer is None or agreement < min_agreement:
            rejected.append(Rejected(problem.id, problem.metadata.get("seed_id", ""),
                                     problem.metadata.get("operation", ""),
                                     "no_answer" if answer is None else "no_agreement", problem.question, detail))
            continue
        kept.append(dataclasses.replace(problem, gold=answer, metadata={**problem.metadata, **detail}))
    return kept, rejected


# ---- both, in memory and into a resumable file -------------------------------------------------------------------

def synthesize(backend: Backend, seeds: list[Problem], config: EvolutionSettings = EvolutionSettings(),
               verifier: Callable[[str, str], bool] = same_answer, index: ContaminationIndex | None = None,
               known_questions: Iterable[str] = ()) -> tuple[list[Problem], SynthesisReport]:
    """Evolve `seeds` into new problems and answer them by majority vote; returns the kept problems and a report
    that holds every rejected candidate with its reason."""
    config.validate()
    candidates, rejected = evolve_problems(backend, seeds, config.variants_per_seed, config.seed, config.operations,
                                           config.evolve_sampling, index, known_questions)
    kept, unanswered = answer_by_majority(backend, candidates, config.n_answers, config.min_agreement, verifier,
                                          config.seed, config.answer_sampling)
    return kept, SynthesisReport(seeds=len(seeds), candidates=len(seeds) * config.variants_per_seed, kept=len(kept),
                                 rejected=rejected + unanswered)


def rejected_path(out: str | Path) -> Path:
    """Where `synthesize_file` writes the rejected candidates of `out`: problems.jsonl -> problems.rejected.jsonl."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl") + ".rejected.jsonl")


def synthesize_file(backend: Backend, seeds: list[Problem], out: str | Path,
                    config: EvolutionSettings = EvolutionSettings(), index: ContaminationIndex | None = None,
                    chunk_size: int = 32) -> dict[str, Any]:
    """`synthesize` into `out` (kept problems) and its `.rejected.jsonl` companion, `chunk_size` seeds at a time.

    Re-running with the same files skips the seeds whose candidates are all written; rows of a seed that a kill
    left half-written are dropped and the seed is done again. Settings are recorded in `<name>.run.json`, and
    other settings for the same files are refused; one run at a time owns the files (`lock_run_dir`). Returns
    counts over the whole files.
    """
    config.validate()
    if chunk_size < 1:
        raise ValueError(f"synthesize: chunk_size must be >= 1, got {chunk_size}")
    if not seeds:
        raise ValueError("synthesize: no seed problems")
    out = Path(out)
    with lock_run_dir(out.parent, name=f".{out.name}.lock"):
        return _synthesize_file(backend, seeds, out, config, index, chunk_size)


def _synthesize_file(backend: Backend, seeds: list[Problem], out: Path, config: EvolutionSettings,
                     index: ContaminationIndex | None, chunk_size: int) -> dict[str, Any]:
    rejected_file = rejected_path(out)
    _check_run_record(out, backend, config)
    done_ids = _drop_half_done_seeds([out, rejected_file], seeds, config)
    pending = [s for s in seeds if not _candidate_ids(s, config) <= done_ids]
    log.info("synthesize: %d seeds, %d already done", len(seeds), len(seeds) - len(pending))
    known = [row["question"] for row in read_jsonl(out)] if out.exists() else []
    with JsonlAppender(out) as kept_rows, JsonlAppender(rejected_file) as rejected_rows, \
            progress_bar(len(pending), "synthesize", "seed") as bar:
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start:start + chunk_size]
            problems, report = synthesize(backend, chunk, config, index=index, known_questions=known)
            rejected_rows.write(report.rejected)
            kept_rows.write(problems)
            known += [p.question for p in problems]
            bar.update(len(chunk))
            log.debug("synthesize: seeds %d-%d of %d: %s", start + 1, start + len(chunk), len(pending),
                      report.to_dict())
    reasons = Counter(row["reason"] for row in read_jsonl(rejected_file))
    kept = sum(1 for _ in read_jsonl(out))
    return {"seeds": len(seeds), "skipped_seeds": len(seeds) - len(pending), "kept": kept,
            "rejected": dict(reasons.most_common()), "out": str(out), "rejected_file": str(rejected_file)}


def _candidate_ids(seed_problem: Problem, config: EvolutionSettings) -> set[str]:
    operations = choose_operations(seed_problem.id, config.variants_per_seed, config.seed, config.operations)
    return {f"{seed_problem.id}/evolved/{op}" for op in operations}


def _drop_half_done_seeds(paths: list[Path], seeds: list[Problem], config: EvolutionSettings) -> set[str]:
    """The candidate ids already written; rows of seeds with only some of their candidates written are removed
    from the files (those seeds run again whole)."""
    rows = {}
    for path in paths:
        if path.exists():
            drop_torn_last_line(path)
            rows[path] = list(read_jsonl(path))
    written = {row["id"] for path_rows in rows.values() for row in path_rows}
    expected = {s.id: _candidate_ids(s, config) for s in seeds}
    half_done = {seed_id for seed_id, ids in expected.items() if ids & written and not ids <= written}
    if half_done:
        for path, path_rows in rows.items():
            write_jsonl(path, [row for row in path_rows if _seed_of(row["id"]) not in half_done])
        written = {i for i in written if _seed_of(i) not in half_done}
    return written


def _seed_of(candidate_id: str) -> str:
    """
    >>> _seed_of("gsm8k/3/evolved/add_condition/evolved/change_numbers")
    'gsm8k/3/evolved/add_condition'
    """
    return candidate_id.rsplit("/evolved/", 1)[0]


# The record of a synthesis output: the model that wrote it and its `EvolutionSettings`, every field a resume key.
_RESUME_KEYS = ("model", *resume_keys(EvolutionSettings))


def _check_run_record(out: Path, backend: Backend, config: EvolutionSettings) -> None:
    settings = {"model": backend.model_id, **dataclasses.asdict(config)}
    start_run_record(out.with_name(out.name.removesuffix(".jsonl") + ".run.json"), settings, _RESUME_KEYS,
                     what=f"{out} holds problems synthesized", fix="use another output", kind="synthesize")


def _as_stored(current: Any, old: Any) -> Any:
    """`current` with only the keys a stored dict has (sampling options added later are not compared)."""
    if isinstance(current, dict) and isinstance(old, dict):
        return {k: current[k] for k in old if k in current}
    return current


def run_synthesis(model: str, seeds: str, out: str | Path, config: EvolutionSettings, *, backend: str = "auto",
                  backend_args: dict[str, Any] | None = None, decontaminate: bool = False,
                  data_dir: str | None = None, chunk_size: int = 32) -> dict[str, Any]:
    """`mathloop synthesize`: seeds from a problem source (`load_problem_source`), optionally checked against the
    benchmarks, evolved and answered by `model` into `out` (`synthesize_file`)."""
    from mathloop.backends import load_backend
    from mathloop.data.benchmarks import load_problem_source
    from mathloop.runs import refuse_overwriting_inputs

    refuse_overwriting_inputs({"--out": out, "--out (rejected)": rejected_path(out)},
                              {"--seeds": seeds if Path(seeds).is_file() else None})
    config.validate()
    seed_problems = load_problem_source(seeds, data_dir)
    index = None
    if decontaminate:
        from mathloop.data.decontaminate import ContaminationIndex

        index = ContaminationIndex.from_benchmarks(data_dir)
    generator = load_backend(backend, model, **(backend_args or {}))
    return synthesize_file(generator, seed_problems, out, config, index, chunk_size)
