"""`mathloop grade`: re-grade samples produced elsewhere with mathloop's verifier.

Two input shapes are read, one row per line:
- mathloop's own samples (`Sample` rows: `problem_id`, `response`, `gold`, ...), one response per row;
- the official Qwen2.5-Math harness's output rows: `question`, `gt` (gold), `code` (list of responses) and optionally
  `pred_score` (list of [score]) — one problem per row.
Every input row is written back unchanged plus a field `mathloop` = {"preds": [...], "verdicts": [...]}; the
metrics file has the layout and scale of `mathloop eval`'s metrics.json (docs/metrics.md: per benchmark, fractions
with 95% intervals and standard errors): `acc` (first response), `maj@k`, `rm@k` (when scores exist) and `pass@k`
for every k it can. Harness rows name no benchmark and count under "all"; mathloop samples under their benchmark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mathloop.metrics import format_markdown, summarize
from mathloop.records import JsonlAppender, RecordError, Sample, check_field_types, read_jsonl
from mathloop.verify import Verifier, same_answer
from mathloop.runs import refuse_overwriting_inputs, write_json

MC_LETTERS = set("ABCDEFGHIJ")


def guess_answer_type(gold: str) -> str:
    """A gold of option letters (A, BD, ...) means a multiple-choice item.

    >>> guess_answer_type("C"), guess_answer_type("ACD"), guess_answer_type("12")
    ('mc', 'mc', 'math')
    """
    text = gold.strip().strip("()")
    return "mc" if text and len(text) <= 5 and set(text) <= MC_LETTERS and text == "".join(sorted(text)) else "math"


def _row_to_items(row: dict[str, Any], where: str) -> tuple[str | None, list[str], list[float] | None, str, Any]:
    """(gold, responses, scores, answer_type, group key) of one input row, in either shape."""
    if "code" in row and ("gt" in row or "answer" in row):  # official harness row
        responses = row["code"] if isinstance(row["code"], list) else [row["code"]]
        gold = row.get("gt", row.get("answer"))
        if isinstance(gold, list):
            gold = ",".join(str(g) for g in gold)
        scores = None
        if isinstance(row.get("pred_score"), list) and len(row["pred_score"]) == len(responses):
            scores = [float(s[0] if isinstance(s, list) else s) for s in row["pred_score"]]
        gold = None if gold is None else str(gold)
        answer_type = row.get("answer_type") or guess_answer_type(gold or "")
        return gold, [str(r) for r in responses], scores, answer_type, row.get("idx", where)
    if "response" in row and "problem_id" in row:  # mathloop Sample row
        check_field_types(Sample, row, where)
        meta = row.get("metadata") or {}
        scores = [float(row["rm_score"])] if row.get("rm_score") is not None else None
        gold = row.get("gold")
        answer_type = meta.get("answer_type") or guess_answer_type(gold or "")
        return gold, [row["response"]], scores, answer_type, row["problem_id"]
    raise RecordError(f"{where}: neither a mathloop sample (problem_id, response) nor an official harness row "
                      f"(question, gt, code); fields present: {', '.join(sorted(row)) or 'none'}")


def _question(row: dict[str, Any]) -> str | None:
    """The problem text of a row (official harness: ``question``; mathloop sample: ``metadata.question``), if any."""
    metadata = row.get("metadata")
    question = row.get("question", metadata.get("question") if isinstance(metadata, dict) else None)
    return question if isinstance(question, str) else None


def grade_file(input_path: str | Path, output_path: str | Path, metrics_path: str | Path | None = None,
               answer_type: str | None = None, workers: int | None = None, timeout: float = 5.0) -> dict:
    """Grade every row of `input_path`, write rows with a `mathloop` field, return (and write) the metrics."""
    input_path, output_path = Path(input_path), Path(output_path)
    refuse_overwriting_inputs({"--output": output_path, "--metrics": metrics_path}, {"--input": input_path})
    rows = list(read_jsonl(input_path))
    if not rows:
        raise ValueError(f"{input_path}: no rows to grade (the file is empty)")
    items = [_row_to_items(row, f"{input_path}:{i + 1}") for i, row in enumerate(rows)]
    flat = [(gold, response, answer_type or kind, row.get("choices") if isinstance(row.get("choices"), list) else None)
            for row, (gold, responses, _, kind, _) in zip(rows, items) for response in responses]
    questions = [_question(row) for row, (_, responses, _, _, _) in zip(rows, items) for _ in responses]
    truncated = [row.get("finish_reason") == "length" for row, (_, responses, _, _, _) in zip(rows, items)
                 for _ in responses]
    with Verifier(workers=workers, timeout=timeout) as verifier:
        graded = verifier.grade_batch([(g, r) for g, r, _, _ in flat], answer_type=[t for _, _, t, _ in flat],
                                      choices=[c for _, _, _, c in flat], questions=questions, truncated=truncated)
    tmp = output_path.with_name(output_path.name + ".partial")
    tmp.unlink(missing_ok=True)
    groups: dict[Any, dict[str, list]] = {}
    cursor = 0
    with JsonlAppender(tmp) as out:
        for row, (gold, responses, scores, _, key) in zip(rows, items):
            part = graded[cursor:cursor + len(responses)]
            cursor += len(responses)
            preds, verdicts = [p for p, _ in part], [v for _, v in part]
            out.write([{**row, "mathloop": {"preds": preds, "verdicts": verdicts}}])
            benchmark = row.get("benchmark") or "all"
            group = groups.setdefault((benchmark, key), {"benchmark": benchmark, "preds": [], "verdicts": [],
                                                         "scores": []})
            group["preds"] += preds
            group["verdicts"] += verdicts
            group["scores"] += scores if scores is not None else [None] * len(responses)
    tmp.replace(output_path)
    metrics = graded_metrics(list(groups.values()))
    if metrics_path:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(metrics_path), metrics)
    return metrics


def graded_metrics(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics of graded problems (each a dict of `benchmark`, `preds`, `verdicts`, `scores`) in the layout of
    `mathloop eval`'s metrics.json (`metrics.summarize`): k runs over powers of two up to the smallest response count
    among the problems, and that count; rm@k only when every response has a score.

    >>> groups = [{"benchmark": "all", "preds": ["1", "2"], "verdicts": ["correct", "incorrect"], "scores": [None] * 2}]
    >>> metrics = graded_metrics(groups)
    >>> metrics["scale"], metrics["benchmarks"]["all"]["acc"]["mean"], metrics["benchmarks"]["all"]["pass@2"]["mean"]
    ('fraction', 1.0, 1.0)
    """
    n = min(len(g["verdicts"]) for g in groups)
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n} | {n})
    have_scores = all(s is not None for g in groups for s in g["scores"])
    rows = [{"benchmark": g["benchmark"], "verdicts": g["verdicts"], "preds": g["preds"],
             **({"scores": g["scores"]} if have_scores else {})} for g in groups]
    return summarize(rows, ks, same=same_answer)


def format_metrics(metrics: dict[str, Any]) -> str:
    """`grade_file`'s metrics as the Markdown table of `mathloop eval`'s results.md: percent with the 95% interval
    (the file holds fractions)."""
    return format_markdown(metrics)
