"""Benchmarks as data: one `Benchmark` entry per evaluation set, in the official harness's folder layout.

Each entry says which file holds the set (`<data-dir>/<name>/<split>.jsonl`), how a row becomes a `Problem`
(question text, gold answer, options), how answers are extracted and compared (`answer_type`: "math", "mc" or
"list"), the official shot setting and a version number that is bumped whenever the prompt or the gold answer of the
entry changes, so results of different versions are never mixed silently. The same row builders read the Hugging
Face Hub copies (`hub`), for users who have network access. Where the files come from (a data folder, the data
packaged with mathloop, the Hub) is `mathloop.data.sources`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from mathloop.data import sources
from mathloop.data.sources import read_rows, resolve_data_file
from mathloop.records import Problem, RecordError, read_jsonl

LETTERS = "ABCDEFGHIJ"

Row = dict[str, Any]


@dataclass(frozen=True)
class Benchmark:
    name: str
    build: Callable[[Row], tuple[str, Any, list[str] | None]]  # row -> (question, gold, choices)
    answer_type: str = "math"  # "math" | "mc" | "list"; a row may override it (mixed Chinese sets)
    shots: int = 0  # official setting: 0, or 5 for multiple-choice sets
    splits: tuple[str, ...] = ("test",)
    id_field: str | None = None  # row field holding a stable id; else the row number
    hub: tuple[str, str | None, str] | None = None  # (dataset id, config, split) on the Hugging Face Hub
    language: str = "en"
    version: int = 1


# --- row builders: row -> (question, gold, choices) -------------------------------------------------------------

def _question_answer(q: str = "question", a: str = "answer") -> Callable[[Row], tuple[str, Any, None]]:
    return lambda row: (str(row[q]), row[a], None)


def _gsm8k(row: Row) -> tuple[str, str, None]:
    answer = str(row["answer"])
    if "####" not in answer:
        raise KeyError("answer has no '#### <number>' line")
    return row["question"], answer.split("####")[-1].strip().replace(",", ""), None


def _math(row: Row) -> tuple[str, str, None]:
    gold = row.get("answer")
    if gold in (None, ""):  # two MATH train rows box nothing: they are kept without a gold answer
        try:
            gold = _last_boxed(row["solution"])
        except KeyError:
            gold = None
    return row["problem"], gold, None


def _minerva(row: Row) -> tuple[str, str, None]:
    return row["problem"], _last_boxed(row["solution"]), None


def _olympiadbench(row: Row) -> tuple[str, str, None]:
    answers = _as_list(row["final_answer"])
    question = row["question"] if not row.get("context") else f"{row['context']}\n{row['question']}"
    return question, ",".join(a.strip().strip("$") for a in answers), None


def _body_question(body: str, question: str, answer: str) -> Callable[[Row], tuple[str, Any, None]]:
    def build(row: Row) -> tuple[str, Any, None]:
        text = f"{str(row[body]).strip()} {str(row[question]).strip()}".strip()
        return text, row[answer], None
    return build


def _asdiv(row: Row) -> tuple[str, str, None]:
    gold = re.sub(r"\s*\(.*?\)\s*$", "", str(row["answer"])).strip()  # "9 (apples)" -> "9"
    return f"{row['body'].strip()} {row['question'].strip()}", gold, None


def _mmlu(row: Row) -> tuple[str, str, list[str]]:
    choices = _as_list(row["choices"])
    answer = row["answer"]
    gold = LETTERS[int(answer)] if str(answer).isdigit() else str(answer).strip()
    return row["question"], gold, choices


def _options_in_text(options_field: str, answer_field: str) -> Callable[[Row], tuple[str, str, list[str]]]:
    """Options given as "A) x B) y" (SAT) or ["A)x", "B)y"] (AQuA)."""
    def build(row: Row) -> tuple[str, str, list[str]]:
        raw = row[options_field]
        if isinstance(raw, str) and raw.strip().startswith("["):
            raw = _as_list(raw)
        if isinstance(raw, str):
            parts = re.split(r"(?:^|\s)([A-E])\)\s*", raw)
            choices = [p.strip() for p in parts[2::2]]
        else:
            choices = [re.sub(r"^\(?[A-E]\)\s*", "", str(o)).strip() for o in raw]
        return row["question"], str(row[answer_field]).strip(), choices
    return build


def _gaokao_qa(row: Row) -> tuple[str, str, list[str]]:
    options = row["options"]
    if isinstance(options, str):
        options = ast.literal_eval(options)
    choices = [str(options[k]) for k in sorted(options)]
    return row["question"], str(row["label"]).strip(), choices


def _mixed_choice(row: Row) -> tuple[str, str, None]:
    """Chinese sets whose question text carries the options; `choice_answer` marks the multiple-choice rows."""
    if row.get("choice_answer"):
        return row["question"], str(row["choice_answer"]).strip(), None
    return row["question"], str(row["answer"]), None


def _gaokao2024(row: Row) -> tuple[str, str, None]:
    return row["question"], str(row["answer"]).strip(), None


def _row_answer_type(benchmark: Benchmark, row: Row) -> str:
    if benchmark.name in ("cn_middle_school", "gaokao2024_mix"):
        return "mc" if row.get("choice_answer") else "math"
    if benchmark.name.startswith("gaokao2024_") and row.get("type") in ("single", "multi"):
        return "mc"
    if benchmark.name == "olympiadbench" and row.get("is_multiple_answer") in (True, "True", "true"):
        return "list"
    return benchmark.answer_type


def _last_boxed(text: str) -> str:
    from mathloop.verify import extract_answer

    answer = extract_answer(text, "math")
    if answer is None:
        raise KeyError("solution has no \\boxed{} answer")
    return answer


def _as_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    try:
        parsed = ast.literal_eval(str(value))
    except (ValueError, SyntaxError):
        return [str(value)]
    return [str(v) for v in parsed] if isinstance(parsed, (list, tuple)) else [str(parsed)]


# --- the registry -------------------------------------------------------------------------------------------------

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("gsm8k", _gsm8k, splits=("test", "train"), id_field="idx", hub=("openai/gsm8k", "main", "test")),
    Benchmark("math", _math, splits=("test", "train"), id_field="unique_id"),
    Benchmark("math500", _math, id_field="unique_id", hub=("HuggingFaceH4/MATH-500", None, "test")),
    Benchmark("minerva_math", _minerva, id_field="idx"),
    Benchmark("gaokao2023en", _question_answer()),
    Benchmark("olympiadbench", _olympiadbench, id_field="id"),
    Benchmark("college_math", _question_answer()),  # question_number repeats across its sources
    Benchmark("aime24", _question_answer("problem", "answer"), id_field="id", hub=("HuggingFaceH4/aime_2024", None, "train")),
    Benchmark("amc23", _question_answer(), id_field="id", hub=("math-ai/amc23", None, "test")),
    Benchmark("svamp", _body_question("Body", "Question", "Answer"), id_field="ID"),
    Benchmark("asdiv", _asdiv, id_field="idx"),
    Benchmark("mawps", _question_answer("input", "target"), id_field="idx"),
    Benchmark("carp_en", _question_answer("content", "answer")),
    Benchmark("mmlu_stem", _mmlu, answer_type="mc", shots=5),
    Benchmark("sat_math", _options_in_text("options", "Answer"), answer_type="mc", shots=5, id_field="id"),
    Benchmark("aqua", _options_in_text("options", "correct"), answer_type="mc", shots=5),
    Benchmark("cmath", _question_answer(), language="zh"),
    Benchmark("cn_middle_school", _mixed_choice, id_field="idx", language="zh"),
    Benchmark("gaokao_math_cloze", _question_answer(), language="zh"),
    Benchmark("gaokao_math_qa", _gaokao_qa, answer_type="mc", language="zh"),
    Benchmark("gaokao2024_I", _gaokao2024, language="zh"),
    Benchmark("gaokao2024_II", _gaokao2024, language="zh"),
    Benchmark("gaokao2024_mix", _mixed_choice, id_field="idx", language="zh"),
]}


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)}") from None


def problems_from_rows(benchmark: Benchmark, rows: Iterable[Row], source: str) -> list[Problem]:
    """Turn raw rows into Problems; a row that lacks a field raises one error naming source and line."""
    problems = []
    for lineno, row in enumerate(rows, 1):
        try:
            question, gold, choices = benchmark.build(row)
        except (KeyError, ValueError, SyntaxError) as e:
            raise RecordError(f"{source}: row {lineno}: cannot build a {benchmark.name} problem: {e}") from None
        row_id = row.get(benchmark.id_field) if benchmark.id_field else None
        problems.append(Problem(
            id=f"{benchmark.name}/{row_id if row_id is not None else lineno - 1}",
            benchmark=benchmark.name,
            question=str(question).strip(),
            gold=None if gold is None or not str(gold).strip() else str(gold).strip(),
            choices=choices,
            metadata={"answer_type": _row_answer_type(benchmark, row), "benchmark_version": benchmark.version,
                      "row": lineno - 1},
        ))
    return problems


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None, split: str = "test",
                   limit: int | None = None, source: str = "local") -> list[Problem]:
    """Load a benchmark's split as Problems.

    `source="local"`: `<data_dir>/<name>/<split>.jsonl` (`data_dir` defaults to $MATHLOOP_DATA_DIR) when that file
    exists, else the copy packaged with mathloop (checksum verified); `source="hub"`: the Hugging Face Hub.
    """
    benchmark = get_benchmark(name)
    if split not in benchmark.splits:
        raise ValueError(f"benchmark '{name}' has splits {', '.join(benchmark.splits)}, not '{split}'")
    if source == "hub":
        return load_benchmark_from_hub(name, None if split == "test" else split, limit)
    if source != "local":
        raise ValueError(f"unknown data source '{source}': use local (data folder, else packaged data) or hub")
    path = resolve_data_file(name, split, data_dir, _hub_id(name))
    rows, _ = read_rows(path)
    problems = problems_from_rows(benchmark, rows[:limit] if limit is not None else rows, str(path))
    if not problems:
        raise ValueError(f"{path}: no problems (the file is empty)")
    return problems


def hub_rows(name: str, split: str | None = None) -> tuple[list[Row], str]:
    """The raw rows of a benchmark's Hub copy and the dataset id (needs `pip install mathloop[hub]`, network)."""
    benchmark = get_benchmark(name)
    if benchmark.hub is None:
        raise ValueError(f"no Hub dataset is registered for '{name}'; use --data-dir with the harness's data folder")
    try:
        import datasets
    except ImportError:
        raise ImportError("loading from the Hub needs the `datasets` package: pip install 'mathloop[hub]'") from None
    dataset_id, config, default_split = benchmark.hub
    if split == "test":
        split = None
    ds = datasets.load_dataset(dataset_id, config, split=split or default_split)
    return [dict(row) for row in ds], dataset_id


def load_benchmark_from_hub(name: str, split: str | None = None, limit: int | None = None) -> list[Problem]:
    """Load a benchmark from the Hugging Face Hub (needs `pip install mathloop[hub]` and network access)."""
    benchmark = get_benchmark(name)
    rows, dataset_id = hub_rows(name, split)
    return problems_from_rows(benchmark, rows[:limit] if limit is not None else rows, f"hub:{dataset_id}")


def load_problems(path: str | os.PathLike) -> list[Problem]:
    """Read user-provided problems (JSONL with at least `question`, usually `gold` or `answer`)."""
    problems = []
    for lineno, row in enumerate(read_jsonl(path), 1):
        if "question" not in row and "problem" not in row:
            raise RecordError(f"{path}:{lineno}: a problem needs a 'question' field")
        question = row.get("question", row.get("problem"))
        gold = row.get("gold", row.get("answer"))
        meta = {k: v for k, v in row.items() if k not in ("id", "benchmark", "question", "problem", "gold",
                                                            "answer", "choices", "metadata")}
        meta.update(row.get("metadata") or {})
        meta.setdefault("answer_type", "mc" if row.get("choices") else "math")
        problems.append(Problem(id=str(row.get("id", f"{Path(path).stem}/{lineno - 1}")),
                                benchmark=str(row.get("benchmark", Path(path).stem)), question=str(question),
                                gold=None if gold is None else str(gold), choices=row.get("choices"), metadata=meta))
    if not problems:
        raise ValueError(f"{path}: no problems (the file is empty)")
    return problems



def load_problem_source(spec: str, data_dir: str | os.PathLike | None = None, limit: int | None = None
                        ) -> list[Problem]:
    """Problems from a problem source, the one grammar of every stage that reads problems (sample, synthesize's
    seeds, the loop, GRPO's queries):

      <benchmark>[:<split>[:<first N>]]   a benchmark of the data folder, split train by default (gsm8k:train:100)
      synthetic:<count>:<seed>            the built-in procedural generator (exact answers)
      <file>.jsonl                        a Problem JSONL file

    `limit` keeps the first `limit` problems (with a count in the spec, the smaller of the two)."""
    if Path(spec).suffix == ".jsonl" or Path(spec).exists():
        problems = load_problems(spec)
        return problems[:limit] if limit is not None else problems
    if spec.startswith("synthetic:"):
        from mathloop.data.synthetic import generate_problems

        try:
            count, seed = (int(x) for x in spec.split(":")[1:3])
        except ValueError:
            raise ValueError(f"problem source {spec!r}: write synthetic:<count>:<seed>, e.g. synthetic:64:1") from None
        return generate_problems(count if limit is None else min(count, limit), seed=seed)
    name, _, rest = spec.partition(":")
    split, _, count = rest.partition(":")
    if count and not count.isdigit():
        raise ValueError(f"problem source {spec!r}: write <benchmark>:<split>:<count>, e.g. gsm8k:train:100, "
                         "synthetic:<count>:<seed> or a JSONL file")
    if count:
        limit = int(count) if limit is None else min(limit, int(count))
    return load_benchmark(name, data_dir, split or "train", limit)


def problem_source_data(spec: str, data_dir: str | os.PathLike | None = None) -> dict[str, dict]:
    """The `data_record` of a benchmark problem source ({} for files and synthetic problems)."""
    if Path(spec).suffix == ".jsonl" or Path(spec).exists() or spec.startswith("synthetic:"):
        return {}
    name, _, rest = spec.partition(":")
    split = rest.partition(":")[0] or "train"
    return {f"{name}:{split}": data_record(name, split, data_dir)}


def _hub_id(name: str) -> str | None:
    hub = get_benchmark(name).hub
    return hub[0] if hub else None


# ---- what identifies a benchmark's data; `mathloop data list` / `data pull` --------------------------------------

def data_record(name: str, split: str = "test", data_dir: str | os.PathLike | None = None,
                source: str = "local") -> dict[str, Any]:
    """What identifies a benchmark's data: source, version and sha256 (of the file, or of the Hub rows as JSON
    lines), rows, and the registry's benchmark version (prompt and gold extraction)."""
    benchmark = get_benchmark(name)
    if source == "hub":
        rows, digest, origin = _hub_rows_record(name, split)
        version = origin
    else:
        path = resolve_data_file(name, split, data_dir, _hub_id(name))
        rows, digest = read_rows(path)
        origin = "packaged" if path.is_relative_to(sources.PACKAGED_DIR) else str(path)
        entry = sources.packaged_entry(name, split)
        version = entry["version"] if entry is not None and entry["sha256"] == digest else "local"
    return {"benchmark": name, "split": split, "source": origin, "version": version, "sha256": digest,
            "rows": len(rows), "benchmark_version": benchmark.version}


def _hub_rows_record(name: str, split: str) -> tuple[list[dict[str, Any]], str, str]:
    rows, dataset_id = hub_rows(name, split)
    digest = hashlib.sha256("".join(json.dumps(r, ensure_ascii=False, sort_keys=True, default=str) + "\n"
                                    for r in rows).encode("utf-8")).hexdigest()
    return rows, digest, f"hub:{dataset_id}"


def available_benchmarks(data_dir: str | os.PathLike | None = None, split: str = "test",
                         names: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """(available, missing) registered benchmarks for `split` in the data folder or the packaged data."""
    available, missing = [], []
    for name in (names if names is not None else BENCHMARKS):
        if split not in BENCHMARKS[name].splits:
            continue
        try:
            resolve_data_file(name, split, data_dir, _hub_id(name))
            available.append(name)
        except FileNotFoundError:
            missing.append(name)
    return available, missing


# --- `mathloop data list` / `data pull` -------------------------------------------------------------------------

def list_benchmarks(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per registered benchmark and split: where it would be read from, version, rows, licence."""
    rows = []
    for name, benchmark in BENCHMARKS.items():
        for split in benchmark.splits:
            entry = sources.packaged_entry(name, split)
            try:
                path = resolve_data_file(name, split, data_dir, _hub_id(name))
                source = "packaged" if path.is_relative_to(sources.PACKAGED_DIR) else str(path)
            except FileNotFoundError:
                source = f"hub ({benchmark.hub[0]})" if benchmark.hub else "not available"
            rows.append({"benchmark": name, "split": split, "source": source,
                         "version": entry["version"] if entry else "",
                         "rows": entry["rows"] if entry else None,
                         "licence": entry["licence"] if entry
                         else f"not shipped: {sources.not_shipped_reason(name, split)}"})
    return rows


def pull_benchmarks(out: str | os.PathLike, names: list[str] | None = None,
                    data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Write `<out>/<name>/<split>.jsonl` (the harness layout) for `names` (default: every packaged set), from the
    data folder or the packaged data, or from the Hub for the rest. Returns what was done per file; raises when a
    named set is available nowhere (after writing the others)."""
    if names is None:
        names = list(dict.fromkeys(e["benchmark"] for e in sources.packaged_manifest()["files"]))
    out = Path(out)
    done: dict[str, str] = {}
    failed: list[str] = []
    for name in names:
        benchmark = get_benchmark(name)
        for split in benchmark.splits:
            target = out / name / f"{split}.jsonl"
            try:
                path = resolve_data_file(name, split, data_dir, _hub_id(name))
            except FileNotFoundError as e:
                if benchmark.hub is None or split != "test":  # the Hub copies are registered for one split
                    if split == "test":
                        failed.append(str(e))
                    continue
                rows, _, origin = _hub_rows_record(name, split)
                text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows).encode("utf-8")
            else:
                rows, _ = sources.read_data_file(path)  # checks a packaged file's sha256
                text = sources.uncompressed_bytes(path)  # byte for byte, so the checksum stays the same
                origin = "packaged data" if path.is_relative_to(sources.PACKAGED_DIR) else str(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(text)
            os.replace(tmp, target)
            done[f"{name}/{split}.jsonl"] = f"{len(rows)} rows from {origin}"
    if failed:
        raise FileNotFoundError("; ".join(failed) + (f" (written: {', '.join(done)})" if done else ""))
    return done
