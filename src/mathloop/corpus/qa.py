"""Synthetic question-answer pairs from reference documents (`mathloop corpus qa`), as the paper extends its
corpus with QA pairs that its instruct model extracts from reference pages.

1. Extract: the model reads each kept document (its first `max_chars` characters) and writes one self-contained
   question the document answers or teaches, with the document's final answer (`QA_PROMPT`, greedy).
2. Answer: the model solves each question `n_answers` times with the official chain-of-thought prompt (sampled,
   temperature 0.7, top_p 0.8). Extracted answers are grouped by mathematical equivalence.
3. Keep: a pair is kept when the majority answer holds at least `min_agreement` of the answers (self-consistency);
   with `require_reference` it must also equal the answer the document gave in step 1. The kept solution is one
   of the majority's responses.

Rows go to `out` as SFT rows (`format: sft`, for `mathloop sft`: the CoT prompt and the solution) or as
pre-training text (`format: text`, "Question: ...\\nAnswer: ..." for continued pre-training); every row's
`metadata` names the document, the votes and the agreement. Rejected pairs go to <out>.rejected.jsonl with the
reason (no_question, no_answer, no_agreement, reference_mismatch). Documents are handled `chunk_size` at a time;
a re-run skips the documents already in either file.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mathloop.backends import BACKEND_SETTING
from mathloop.backends.base import Backend, SamplingParams
from mathloop.config import positive_int
from mathloop.records import Problem

QA_PROMPT = """Read the text below and write one math question that it answers or teaches how to solve. The question \
must make sense on its own, without the text, and have a single final answer.

Text:
{text}

Reply in exactly this form:
Question: <the question>
Answer: <the final answer only>"""

EXTRACT_SAMPLING = SamplingParams(temperature=0.0, max_new_tokens=256)
BENCHMARK = "corpus_qa"
FORMATS = ("sft", "text")


@dataclass
class QAConfig:
    """Settings of `mathloop corpus qa` (YAML keys use these names)."""

    corpus: str = dataclasses.field(default="", metadata={
        "help": "corpus folder (<build out>/corpus) or JSONL(.gz) file of {\"text\"}"})
    out: str = dataclasses.field(default="", metadata={
        "help": "JSONL file of kept pairs, appended and resumed (rejected ones beside it)"})
    model: str = dataclasses.field(default="default", metadata={
        "help": "embedded name (default, smollm2), folder or Hub id"})
    backend: str = dataclasses.field(default="auto", metadata=BACKEND_SETTING)
    backend_args: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={
        "help": "backend settings as JSON (the backend flags such as --batch-size set the same keys)"})
    n_answers: int = dataclasses.field(default=4, metadata={"flags": ("--answers",), "type": positive_int,
        "help": "solutions per question"})
    min_agreement: float = dataclasses.field(default=0.5, metadata={
        "help": "share of the solutions the majority answer needs"})
    require_reference: bool = dataclasses.field(default=False, metadata={
        "help": "also require the majority answer to equal the document's answer"})
    format: str = dataclasses.field(default="sft", metadata={"choices": list(FORMATS),
        "help": "SFT rows (prompt-completion) or pre-training text rows"})
    max_chars: int = dataclasses.field(default=3000, metadata={"help": "document characters shown to the model"})
    max_new_tokens: int = dataclasses.field(default=1024, metadata={"type": positive_int, "help": "per solution"})
    limit: int | None = dataclasses.field(default=None, metadata={"type": positive_int,
        "help": "documents to use (default: all)"})
    chunk_size: int = dataclasses.field(default=16, metadata={"help": "documents per written chunk"})
    seed: int = dataclasses.field(default=0, metadata={"help": "sampling seed"})

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"corpus qa: format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.n_answers < 1 or self.chunk_size < 1 or self.max_chars < 1 or self.max_new_tokens < 1:
            raise ValueError("corpus qa: n_answers, chunk_size, max_chars and max_new_tokens must be >= 1")
        if not 0 < self.min_agreement <= 1:
            raise ValueError(f"corpus qa: min_agreement must be in (0, 1], got {self.min_agreement}")


def parse_qa(response: str) -> tuple[str, str | None] | None:
    """(question, answer) from the model's reply; None when there is no question. The answer may be missing.

    >>> parse_qa("Question: What is 2 + 3?\\nAnswer: 5")
    ('What is 2 + 3?', '5')
    >>> parse_qa("Question: Find $x$ if $2x = 8$.\\nAnswer: $x = 4$.")
    ('Find $x$ if $2x = 8$.', '4')
    >>> parse_qa("I cannot find a question.") is None
    True
    """
    match = re.search(r"question\s*:\s*(.+?)(?:\n\s*answer\s*:\s*(.+))?$", response.strip(), re.I | re.S)
    if not match or len(match.group(1).strip()) < 10:
        return None
    question = match.group(1).strip()
    answer = match.group(2).strip().splitlines()[0].strip() if match.group(2) else None
    if answer:
        answer = answer.strip().rstrip(".").strip("$ ").strip()
        answer = re.sub(r"^[a-zA-Z]\s*=\s*", "", answer) or None
    return question, answer


def read_documents(source: str | Path) -> Iterator[tuple[str, str]]:
    """(id, text) of each document of a corpus folder (*.jsonl.gz, as datatrove writes them) or a JSONL file."""
    source = Path(source)
    files = sorted(source.glob("*.jsonl*")) if source.is_dir() else [source]
    if not files or not all(f.is_file() for f in files):
        raise ValueError(f"corpus qa: {source} is neither a JSONL file nor a folder of *.jsonl[.gz] files")
    for file in files:
        opener = gzip.open if file.name.endswith(".gz") else open
        with opener(file, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    text = str(row["text"])
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{file}:{lineno}: expected a JSON object with a \"text\" field") from None
                yield str(row.get("id", f"{file.name}:{lineno}")), text


def synthesize_qa(backend: Backend, documents: list[tuple[str, str]], config: QAConfig
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Extract, answer and keep pairs for `documents`; returns (kept rows, rejected rows), one row per document."""
    from mathloop.pipeline.evolve import ANSWER_SAMPLING, majority_vote
    from mathloop.generate import generate, grade_samples, response_samples
    from mathloop.prompts import build_messages
    from mathloop.verify import same_answer

    extract = [backend.chat_prompt([{"role": "user", "content": QA_PROMPT.format(text=text[:config.max_chars])}])
               for _, text in documents]
    replies = generate(backend, extract, dataclasses.replace(EXTRACT_SAMPLING, seed=config.seed)) if documents else []
    problems: list[Problem] = []
    rejected: list[dict[str, Any]] = []
    for (doc_id, _), reply in zip(documents, replies):
        parsed = parse_qa(reply[0].text)
        if parsed is None:
            rejected.append({"doc_id": doc_id, "reason": "no_question", "reply": reply[0].text})
            continue
        problems.append(Problem(id=f"{doc_id}/qa", benchmark=BENCHMARK, question=parsed[0],
                                metadata={"doc_id": doc_id, "reference_answer": parsed[1]}))

    params = dataclasses.replace(ANSWER_SAMPLING, n=config.n_answers, seed=config.seed,
                                 max_new_tokens=config.max_new_tokens)
    messages = [build_messages(p, "cot", 0) for p in problems]
    prompts = [backend.chat_prompt(m) for m in messages]
    outputs = generate(backend, prompts, params) if problems else []
    samples = response_samples(problems, prompts, outputs, params, "cot", backend.model_id)
    grade_samples(samples, [None] * len(samples))
    kept: list[dict[str, Any]] = []
    n = config.n_answers
    for i, problem in enumerate(problems):
        group = samples[i * n:(i + 1) * n]
        answers = [None if s.finish_reason == "length" else s.pred for s in group]
        answer, votes = majority_vote(answers)
        reference = problem.metadata["reference_answer"]
        info = {"doc_id": problem.metadata["doc_id"], "question": problem.question, "answer": answer,
                "reference_answer": reference, "answers": answers, "votes": votes, "agreement": votes / n,
                "matches_reference": bool(reference and answer and same_answer(reference, answer)),
                "model": backend.model_id}
        reason = None
        if answer is None:
            reason = "no_answer"
        elif votes / n < config.min_agreement:
            reason = "no_agreement"
        elif config.require_reference and not info["matches_reference"]:
            reason = "reference_mismatch"
        if reason:
            rejected.append({**info, "reason": reason})
            continue
        response = next(s.response for s, a in zip(group, answers) if a is not None and same_answer(a, answer))
        if config.format == "sft":
            kept.append({"prompt": messages[i], "completion": [{"role": "assistant", "content": response}],
                         "metadata": info})
        else:
            kept.append({"text": f"Question: {problem.question}\nAnswer: {response}", "metadata": info})
    return kept, rejected


def rejected_path(out: str | Path) -> Path:
    """qa.jsonl -> qa.rejected.jsonl"""
    out = Path(out)
    return out.with_name(out.name[:-len(".jsonl")] + ".rejected.jsonl" if out.name.endswith(".jsonl")
                         else out.name + ".rejected.jsonl")


def _done_documents(*paths: Path) -> set[str]:
    from mathloop.records import drop_torn_last_line

    done: set[str] = set()
    for path in paths:
        if path.exists():
            drop_torn_last_line(path)
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                done.add(row.get("metadata", row).get("doc_id"))
    return done


def qa_file(backend: Backend, config: QAConfig) -> dict[str, Any]:
    """Run `synthesize_qa` over the corpus into `config.out`, a chunk of documents at a time (resumable)."""
    import itertools

    from mathloop.progress import progress_bar
    from mathloop.records import JsonlAppender
    from mathloop.runs import lock_run_dir

    config.validate()
    out, rejected_out = Path(config.out), rejected_path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with lock_run_dir(out.parent, name=f".{out.name}.lock"):
        done = _done_documents(out, rejected_out)
        documents = list(itertools.islice(read_documents(config.corpus), config.limit))
        pending = [d for d in documents if d[0] not in done]
        counts = {"documents": len(documents), "already_done": len(documents) - len(pending), "kept": 0,
                  "rejected": {}}
        with JsonlAppender(out) as kept_f, JsonlAppender(rejected_out) as rejected_f:
            chunks = range(0, len(pending), config.chunk_size)
            for start in progress_bar(len(chunks), "qa", "chunk", iterable=chunks):
                kept, rejected = synthesize_qa(backend, pending[start:start + config.chunk_size], config)
                kept_f.write(kept)
                rejected_f.write(rejected)
                counts["kept"] += len(kept)
                for row in rejected:
                    counts["rejected"][row["reason"]] = counts["rejected"].get(row["reason"], 0) + 1
        counts.update({"out": str(out), "rejected_file": str(rejected_out)})
        return counts


def run_qa(config: QAConfig) -> dict[str, Any]:
    """`mathloop corpus qa`: load the backend and run `qa_file`."""
    from mathloop.backends import load_backend

    config.validate()
    if not config.corpus or not config.out:
        raise ValueError("corpus qa: give --corpus (a corpus folder or JSONL file) and --out")
    for _ in read_documents(config.corpus):  # a malformed corpus file is named before the model loads
        pass
    backend = load_backend(config.backend, config.model, **config.backend_args)
    return qa_file(backend, config)
