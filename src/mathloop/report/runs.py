"""Read what a report shows from the folders mathloop writes: evaluations, sample sets, training curves, reports.

One `RunView` per path given to `mathloop report`; what a folder is comes from its run record's `kind`
(`mathloop.runs.read_run_record`, which also recognises folders written before records had a kind):
  eval folder        samples/<benchmark>.jsonl (+ metrics.json): one evaluation
  sample folder      samples/pass-<i>.jsonl: training samples
  loop folder        the stages its record names, in order: each stage's eval/ (an evaluation), samples.jsonl
                     (training samples with RM scores), every training run inside (rm/, sft/, the GRPO stage itself:
                     curves), decontamination.json, synthesis.json and select.json (what was removed and why)
  training folder    metrics.jsonl of `mathloop rm train`, `sft`, `grpo` or any other trainer (curves, under its
                     kind), run.json's data report, eval/ when the folder has one
  graded file        a `mathloop grade` output file or any graded Sample JSONL: one evaluation
  corpus folder      `mathloop corpus build` output: stats.json (per step: in, kept, removed by reason, docs/s) and
                     the classifier's report (recall rounds, held-out precision and recall)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathloop.pipeline.compare import Outcomes, read_eval_folder, read_graded_file
from mathloop.records import read_jsonl
from mathloop.runs import read_run_record


@dataclass
class SampleSet:
    """Samples shown in the browser; `evaluation` when they come from a held-out evaluation (then they also feed
    the tables and the paired comparison), else training samples."""

    label: str
    samples: list[dict[str, Any]]  # normalized: see `normalize_sample`
    evaluation: bool = True
    summary: dict | None = None  # metrics.summarize() shape: {"benchmarks": {...}, "average": {...}}
    outcomes: Outcomes | None = None  # per-problem correctness, as `mathloop compare` reads it


@dataclass
class Curves:
    """metrics.jsonl records of one training run."""

    label: str
    kind: str  # the run record's kind: grpo | rm | sft | a newer trainer's
    records: list[dict[str, Any]]


@dataclass
class RunView:
    label: str
    path: str
    kind: str  # the run record's kind (eval | sample | loop | grpo | rm | sft | corpus | ...) or graded
    sample_sets: list[SampleSet] = field(default_factory=list)
    curves: list[Curves] = field(default_factory=list)
    data_reports: list[tuple[str, Any]] = field(default_factory=list)  # (title, JSON value)


def read_run(path: str | Path, label: str | None = None) -> RunView:
    """Everything the report shows of one run folder or graded file (see the module docstring)."""
    path = Path(path)
    label = label or path.name or str(path)
    if path.is_file():
        view = RunView(label, str(path), "graded")
        view.sample_sets.append(_graded_file(path, label))
        return view
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run folder or graded JSONL file")
    if (path / "stats.json").exists() and (path / "classifier").is_dir():  # a corpus build writes no run record
        return _corpus(path, label)
    record = read_run_record(path)
    if record is None:
        raise FileNotFoundError(f"{path}: not a mathloop eval, loop, rm/sft/grpo folder (no run.json with a kind, "
                                f"samples/, round-0/ or metrics.jsonl)")
    if record["kind"] == "loop":
        return _loop(path, label, record)
    view = RunView(label, str(path), record["kind"])
    _stage(view, path, label, record)
    if not view.sample_sets and not view.curves:
        raise FileNotFoundError(f"{path}: a {record['kind']} run with nothing to show yet (no samples or "
                                f"metrics.jsonl)")
    return view


def _loop(path: Path, label: str, record: dict[str, Any]) -> RunView:
    view = RunView(label, str(path), "loop")
    for name, title in (("decontamination.json", "training problems removed by decontamination"),
                        ("synthesis.json", "problem synthesis")):
        if (path / name).exists():
            view.data_reports.append((f"{label}: {title}", _json(path / name)))
    for entry in record.get("stages", []):
        stage, stage_label = path / entry["folder"], f"{label}:{entry['name']}"
        if not stage.is_dir():
            continue
        if (stage / "samples.jsonl").exists():
            rows = [normalize_sample(r, f"{stage}/samples.jsonl:{i}") for i, r in
                    enumerate(read_jsonl(stage / "samples.jsonl"), 1)]
            view.sample_sets.append(SampleSet(f"{stage_label} training samples", rows, evaluation=False))
        if (stage / "select.json").exists():
            view.data_reports.append((f"{stage_label}: selection of SFT data", _json(stage / "select.json")))
        for sub in sorted(p for p in stage.iterdir() if p.is_dir()):  # the training runs inside (rm/, sft/, ...)
            sub_record = read_run_record(sub)
            if sub_record is not None and sub_record["kind"] not in ("eval", "sample"):
                _stage(view, sub, f"{stage_label} {sub.name}", sub_record)
        _stage(view, stage, stage_label, read_run_record(stage))  # the GRPO stage is a training run itself
    return view


def _corpus(path: Path, label: str) -> RunView:
    """A `mathloop corpus build` folder: each step's documents in, kept and removed by reason, and the classifier
    (its recall rounds and held-out precision/recall)."""
    view = RunView(label, str(path), "corpus")
    stats = _json(path / "stats.json")
    steps = [{k: v for k, v in step.items() if k != "seconds"} for step in stats.get("steps", [])
             if "in" in step or "documents" in step]
    view.data_reports.append((f"{label}: corpus steps ({stats.get('documents_out')} documents kept)", steps))
    classifier = _json(path / "classifier" / "report.json") if (path / "classifier" / "report.json").exists() else {}
    if classifier:
        view.data_reports.append((f"{label}: math classifier", classifier))
    return view


def _stage(view: RunView, folder: Path, label: str, record: dict[str, Any] | None) -> None:
    """The evaluation, training samples, curves and data report of one run folder (an eval or sample folder, a
    training run, or a loop stage) of the kind its `record` names."""
    kind = record["kind"] if record else None
    if kind == "sample":
        from mathloop.pipeline.sample import read_samples
        from mathloop.records import to_dict

        rows = [normalize_sample(to_dict(s), f"{folder}/samples") for s in read_samples(folder)]
        view.sample_sets.append(SampleSet(f"{label} samples", rows, evaluation=False))
    if kind is not None and (folder / "metrics.jsonl").exists():
        view.curves.append(Curves(label, kind, list(read_jsonl(folder / "metrics.jsonl"))))
        if kind == "rm" and isinstance(record.get("data"), dict):
            view.data_reports.append((f"{label}: reward-model data", record["data"]))
        if kind == "grpo" and isinstance(record.get("queries"), dict):
            view.data_reports.append((f"{label}: GRPO queries", record["queries"]))
    eval_dir = folder if kind == "eval" else folder / "eval"
    if eval_dir is folder or (eval_dir.is_dir() and (read_run_record(eval_dir) or {}).get("kind") == "eval"):
        if (eval_dir / "samples").is_dir() and any((eval_dir / "samples").glob("*.jsonl")):
            view.sample_sets.append(_eval_folder(eval_dir, label))


def _eval_folder(folder: Path, label: str) -> SampleSet:
    samples = []
    for path in sorted((folder / "samples").glob("*.jsonl")):
        samples += [normalize_sample(row, f"{path}:{i}", benchmark=path.stem)
                    for i, row in enumerate(read_jsonl(path), 1)]
    summary = _json(folder / "metrics.json") if (folder / "metrics.json").exists() else summarize_samples(samples)
    return SampleSet(label, samples, summary=summary, outcomes=read_eval_folder(folder))


def _graded_file(path: Path, label: str) -> SampleSet:
    samples = []
    for i, row in enumerate(read_jsonl(path), 1):
        graded = row.get("mathloop")
        if isinstance(graded, dict) and isinstance(row.get("code"), list):  # an official harness row, graded
            key = row.get("idx", row.get("question", i))
            for j, response in enumerate(row["code"]):
                samples.append(normalize_sample(
                    {"problem_id": str(key), "benchmark": row.get("benchmark") or "all", "sample_index": j,
                     "response": response, "gold": row.get("gt", row.get("answer")), "question": row.get("question"),
                     "pred": (graded.get("preds") or [None] * (j + 1))[j], "verdict": graded["verdicts"][j]},
                    f"{path}:{i}"))
        else:
            samples.append(normalize_sample({**row, "benchmark": row.get("benchmark") or "all"}, f"{path}:{i}"))
    return SampleSet(label, samples, summary=summarize_samples(samples), outcomes=read_graded_file(path))


def normalize_sample(row: dict[str, Any], where: str, benchmark: str | None = None) -> dict[str, Any]:
    """The fields the browser shows, from a `Sample` row (or a harness row flattened to one)."""
    meta = row.get("metadata") or {}
    problem_id = row.get("problem_id", row.get("idx", row.get("question")))
    if problem_id is None:
        from mathloop.records import RecordError

        raise RecordError(f"{where}: no problem_id, idx or question")
    gold = row.get("gold")
    return {"benchmark": benchmark or row.get("benchmark") or "all", "problem_id": str(problem_id),
            "sample_index": int(row.get("sample_index") or 0), "mode": row.get("mode") or "cot",
            "verdict": row.get("verdict"), "rm_score": row.get("rm_score"),
            "gold": None if gold is None else str(gold), "pred": row.get("pred"),
            "question": row.get("question") or meta.get("question") or _question_from_prompt(row.get("prompt")),
            "response": str(row.get("response") or ""),
            "tool_output_spans": row.get("tool_output_spans") or meta.get("tool_output_spans") or [],
            "finish_reason": row.get("finish_reason")}


def _question_from_prompt(prompt: str | None) -> str:
    """The user turn of a chat prompt, for samples that do not record their question (training samples)."""
    if not prompt:
        return ""
    turns = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, flags=re.S)
    return turns[-1] if turns else prompt[-2000:]


def summarize_samples(samples: list[dict[str, Any]]) -> dict:
    """Per-benchmark acc, pass@k, maj@k (and rm@k when every sample has an RM score), as `mathloop eval` writes."""
    from mathloop.metrics import summarize
    from mathloop.verify import same_answer

    problems: dict[tuple[str, str], list[dict]] = {}
    for s in samples:
        problems.setdefault((s["benchmark"], s["problem_id"]), []).append(s)
    per_problem = []
    for (benchmark, _), group in problems.items():
        group.sort(key=lambda s: s["sample_index"])
        entry = {"benchmark": benchmark, "verdicts": [s["verdict"] or "no_answer" for s in group],
                 "preds": [s["pred"] for s in group]}
        if all(s["rm_score"] is not None for s in group):
            entry["scores"] = [s["rm_score"] for s in group]
        per_problem.append(entry)
    n = min(len(p["verdicts"]) for p in per_problem)
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n} | {n})
    return summarize(per_problem, ks, same=same_answer)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
