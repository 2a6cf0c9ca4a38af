"""`mathloop compare A B`: is run B better than run A on the problems both were graded on?

A and B are each one of
  EVAL_DIR          a `mathloop eval` folder (samples/<benchmark>.jsonl; the benchmark is the file name)
  LOOP_DIR:<r>      round r of a `mathloop loop` folder (its round-<r>/eval folder; round 0 is the starting model),
                    or LOOP_DIR:grpo for the GRPO stage's evaluation: any stage the loop's run record names
                    (`stages`); a stage folder holding an eval/ folder (LOOP_DIR/round-2) works too
  FILE.jsonl        a file written by `mathloop grade` (each row's `mathloop.verdicts`), or any `Sample` JSONL with
                    graded `verdict`s; problems are keyed by `problem_id` (harness rows: `idx`, else `question`)
                    and grouped by `benchmark` ("all" when rows carry none)

Per benchmark, problems only one run has are dropped (and counted). On the shared problems:
  first sample    each run's accuracy on its first sample (the greedy one in a greedy run), the difference B - A
                  with Tango's 95% score interval for paired proportions, the discordant counts b (right only in A)
                  and c (right only in B), and the exact two-sided McNemar p-value;
  mean            when a run has more than one sample per problem: each problem's share of correct samples, the
                  difference of the means with a 95% paired percentile bootstrap interval (seed and resample count
                  reported);
  maj@k, pass@k   when both runs have k > 1 samples of every shared problem (k: the smaller run's count): the
                  majority answer of each problem's first k samples (answers grouped by the verifier's
                  `same_answer`) and "any of the first k correct", each paired like the first sample (Tango's
                  interval, b / c, exact McNemar p). Sharper sampling can raise the mean and lower pass@k at once.
See `mathloop.stats` for the formulas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from mathloop.metrics import maj_at_k
from mathloop.records import RecordError, read_jsonl
from mathloop.runs import read_run_record
from mathloop.stats import BOOTSTRAP_RESAMPLES, paired_bootstrap_ci95, paired_outcomes


class Graded(NamedTuple):
    """One graded sample as `mathloop compare` pairs it: is it correct, and the answer extracted from it."""
    correct: bool
    pred: str | None = None


# benchmark -> problem id -> each sample, in sample order
Outcomes = dict[str, dict[str, list[Graded]]]


# ---- reading runs ---------------------------------------------------------------------------------------------

def resolve_run(spec: str) -> Path:
    """The eval folder or graded JSONL file that `spec` names (see the module docstring for the forms)."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        return _evaluation_folder(path, spec)
    loop_dir, sep, stage = spec.rpartition(":")
    if sep and Path(loop_dir).is_dir():
        record = read_run_record(loop_dir)
        if record is None or record["kind"] != "loop":
            raise ValueError(f"{spec}: {loop_dir} is not a loop folder ({_what(record)}); name its folder alone")
        stages = {entry["name"]: entry["folder"] for entry in record.get("stages", [])}
        if stage.isdigit():
            stage = str(int(stage))
        if stage not in stages:
            missing = f"round-{stage}" if stage.isdigit() else stage
            raise FileNotFoundError(f"{spec}: {loop_dir} has no stage {missing} (has it run? its stages: "
                                    f"{', '.join(stages) or 'none yet'})")
        return _evaluation_folder(Path(loop_dir) / stages[stage], spec)
    raise FileNotFoundError(f"{spec}: no such eval folder, loop round (LOOP_DIR:<round>) or graded JSONL file")


def _evaluation_folder(path: Path, spec: str) -> Path:
    """The eval folder `path` is, or holds as eval/ (a loop stage's, or a training run's evaluation)."""
    record = read_run_record(path)
    if record is not None and record["kind"] == "eval":
        return path
    inner = read_run_record(path / "eval") if (path / "eval").is_dir() else None
    if inner is not None and inner["kind"] == "eval":
        return path / "eval"
    if record is not None and record["kind"] == "loop":
        names = [entry["name"] for entry in record.get("stages", [])] or ["0"]
        raise ValueError(f"{spec} is a loop folder; name a round: " + ", ".join(f"{spec}:{n}" for n in names))
    raise FileNotFoundError(f"{spec}: no evaluation ({_what(record)}; an eval folder, or a folder with eval/ inside, "
                            f"holds one: has that stage run?)")


def _what(record: dict | None) -> str:
    return "not a mathloop run folder" if record is None else f"it holds a {record['kind']} run"


def read_eval_folder(folder: str | Path) -> Outcomes:
    """Per-problem correctness of every benchmark of a `mathloop eval` folder."""
    files = sorted(Path(folder, "samples").glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{folder}: samples/ holds no <benchmark>.jsonl file")
    return {path.stem: _sample_outcomes(path, list(enumerate(read_jsonl(path), 1))) for path in files}


def read_graded_file(path: str | Path) -> Outcomes:
    """Per-problem correctness from a `mathloop grade` output file or a graded `Sample` JSONL file."""
    outcomes: Outcomes = {}
    for benchmark, rows in _group_by_benchmark(path).items():
        outcomes[benchmark] = _sample_outcomes(path, rows)
    if not outcomes:
        raise ValueError(f"{path}: no rows")
    return outcomes


def read_outcomes(spec: str) -> tuple[Path, Outcomes]:
    """Resolve `spec` and read its per-problem correctness."""
    path = resolve_run(spec)
    return path, (read_graded_file(path) if path.is_file() else read_eval_folder(path))


def _group_by_benchmark(path: str | Path) -> dict[str, list[tuple[int, dict]]]:
    groups: dict[str, list[tuple[int, dict]]] = {}
    for lineno, row in enumerate(read_jsonl(path), 1):
        groups.setdefault(row.get("benchmark") or "all", []).append((lineno, row))
    return groups


def _sample_outcomes(path: str | Path, rows: list[tuple[int, dict]]) -> dict[str, list[Graded]]:
    """problem id -> each sample's correctness and answer, ordered by sample_index, from (line number, row) pairs of
    either shape `mathloop grade` writes."""
    per_problem: dict[str, list[tuple[int, Graded]]] = {}
    for lineno, row in rows:
        graded = row.get("mathloop")
        if isinstance(graded, dict) and isinstance(graded.get("verdicts"), list):
            verdicts = graded["verdicts"]
            preds = graded.get("preds") if isinstance(graded.get("preds"), list) else [None] * len(verdicts)
            if len(preds) != len(verdicts):
                raise RecordError(f"{path}:{lineno}: mathloop.preds has {len(preds)} answers but mathloop.verdicts "
                                  f"{len(verdicts)} verdicts")
        elif "verdict" in row:
            verdicts, preds = [row["verdict"]], [row.get("pred")]
        else:
            raise RecordError(f"{path}:{lineno}: no verdict (a `mathloop grade` output row has mathloop.verdicts, a "
                              f"graded sample has verdict); grade the file first with `mathloop grade`")
        key = next((row[k] for k in ("problem_id", "idx", "question") if row.get(k) is not None), None)
        if key is None:
            raise RecordError(f"{path}:{lineno}: no problem_id, idx or question to pair the problem by")
        entries = per_problem.setdefault(str(key), [])
        start = int(row.get("sample_index") or 0) if len(verdicts) == 1 else len(entries)
        entries += [(start + i, Graded(v == "correct", pred if isinstance(pred, str) else None))
                    for i, (v, pred) in enumerate(zip(verdicts, preds))]
    return {pid: [graded for _, graded in sorted(entries, key=lambda e: e[0])]
            for pid, entries in per_problem.items()}


# ---- the comparison -------------------------------------------------------------------------------------------

def majority_correct(samples: list[Graded], k: int) -> bool:
    """Is the majority answer of the first k samples correct (`mathloop.metrics.maj_at_k` with the verifier's
    `same_answer`)?

    >>> majority_correct([Graded(False, "3"), Graded(True, "4"), Graded(True, "4.0")], 3)
    True
    >>> majority_correct([Graded(False, "3"), Graded(True, "4"), Graded(True, "4.0")], 2)  # tie: the earlier answer
    False
    """
    from mathloop.verify import same_answer

    return maj_at_k([s.pred for s in samples], ["correct" if s.correct else "incorrect" for s in samples], k,
                    same_answer) == 1.0


def compare_benchmark(a: dict[str, list[Graded]], b: dict[str, list[Graded]], resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> dict[str, Any]:
    """The paired comparison of one benchmark: B against A on the problems both have (see the module docstring)."""
    shared = sorted(set(a) & set(b))
    entry: dict[str, Any] = {"shared": len(shared), "only_in_a": len(set(a) - set(b)),
                             "only_in_b": len(set(b) - set(a))}
    shared = [pid for pid in shared if a[pid] and b[pid]]
    if not shared:
        return entry
    n = len(shared)
    entry["first_sample"] = paired_outcomes([a[pid][0].correct for pid in shared],
                                            [b[pid][0].correct for pid in shared])
    samples_a, samples_b = max(len(a[pid]) for pid in shared), max(len(b[pid]) for pid in shared)
    if max(samples_a, samples_b) > 1:
        mean_a = [sum(s.correct for s in a[pid]) / len(a[pid]) for pid in shared]
        mean_b = [sum(s.correct for s in b[pid]) / len(b[pid]) for pid in shared]
        difference, lower, upper = paired_bootstrap_ci95(mean_a, mean_b, resamples, seed)
        entry["mean"] = {"samples_a": samples_a, "samples_b": samples_b, "mean_a": sum(mean_a) / n,
                         "mean_b": sum(mean_b) / n, "delta": difference, "ci95": [lower, upper],
                         "interval": "paired percentile bootstrap", "resamples": resamples, "seed": seed}
    k = min(len(runs[pid]) for runs in (a, b) for pid in shared)
    if k > 1:
        # a correct sample without an answer means the run recorded no answers: no majority vote to count
        if not any(s.correct and s.pred is None for runs in (a, b) for pid in shared for s in runs[pid][:k]):
            entry["maj_at_k"] = {"k": k, **paired_outcomes([majority_correct(a[pid], k) for pid in shared],
                                                           [majority_correct(b[pid], k) for pid in shared])}
        entry["pass_at_k"] = {"k": k, **paired_outcomes([any(s.correct for s in a[pid][:k]) for pid in shared],
                                                        [any(s.correct for s in b[pid][:k]) for pid in shared])}
    return entry


def compare_outcomes(a: Outcomes, b: Outcomes, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Every benchmark both runs have, compared; benchmarks only one run has are listed."""
    return {"benchmarks": {name: compare_benchmark(a[name], b[name], resamples, seed) for name in a if name in b},
            "benchmarks_only_in_a": sorted(set(a) - set(b)), "benchmarks_only_in_b": sorted(set(b) - set(a))}


# ---- output ---------------------------------------------------------------------------------------------------

def format_p(p: float) -> str:
    """
    >>> format_p(1.0), format_p(0.03857421875), format_p(3.2e-16)
    ('1.000', '0.0386', '3.2e-16')
    """
    if p >= 0.1:
        return f"{p:.3f}"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _points(value: float, sign: bool = False) -> str:
    return f"{100 * value:+.1f}" if sign else f"{100 * value:.1f}"


def paired_cells(first: dict | None) -> list[str]:
    """The cells 'delta [95% CI]', 'b / c' and 'p' of a first-sample comparison, in points."""
    if not first:
        return ["-", "-", "-"]
    lower, upper = first["ci95"]
    return [f"{_points(first['delta'], True)} [{_points(lower, True)}, {_points(upper, True)}]",
            f"{first['b']} / {first['c']}", format_p(first["mcnemar_p"])]


def format_comparison(result: dict, label_a: str = "A", label_b: str = "B") -> str:
    """The comparison as Markdown: a first-sample table, and a mean-correctness table when runs sampled n > 1."""
    lines = ["# mathloop compare", "", f"A: `{label_a}`  ", f"B: `{label_b}`", "",
             "Paired on the problems both runs have; accuracy on each problem's first sample (greedy in a greedy "
             "run), in percent. delta = B - A in points with Tango's 95% score interval for paired proportions; "
             "b = right only in A, c = right only in B; p = exact two-sided McNemar test.", "",
             "| benchmark | shared | dropped (only A / only B) | A acc | B acc | delta [95% CI] | b / c | p |",
             "|---|---|---|---|---|---|---|---|"]
    means = []
    for name, entry in result["benchmarks"].items():
        first = entry.get("first_sample")
        accs = [_points(first["acc_a"]["mean"]), _points(first["acc_b"]["mean"])] if first else ["-", "-"]
        lines.append("| " + " | ".join([name, str(entry["shared"]), f"{entry['only_in_a']} / {entry['only_in_b']}",
                                        *accs, *paired_cells(first)]) + " |")
        if "mean" in entry:
            means.append((name, entry["mean"]))
    if means:
        resamples, seed = means[0][1]["resamples"], means[0][1]["seed"]
        lines += ["", f"Several samples per problem: mean share of correct samples per problem, in percent; delta "
                      f"with a 95% paired percentile bootstrap interval over problems ({resamples} resamples, seed "
                      f"{seed}).", "",
                  "| benchmark | samples A / B | A mean | B mean | delta [95% CI] |", "|---|---|---|---|---|"]
        for name, mean in means:
            lower, upper = mean["ci95"]
            lines.append(f"| {name} | {mean['samples_a']} / {mean['samples_b']} | {_points(mean['mean_a'])} | "
                         f"{_points(mean['mean_b'])} | {_points(mean['delta'], True)} [{_points(lower, True)}, "
                         f"{_points(upper, True)}] |")
    voted = [(name, entry) for name, entry in result["benchmarks"].items() if "pass_at_k" in entry]
    if voted:
        lines += ["", "Majority vote and coverage over each problem's first k samples (k: the smaller run's count), "
                      "in percent: maj@k = the majority answer is correct (answers grouped by the verifier), pass@k = "
                      "any of the k is correct; each paired like the first sample.", "",
                  "| benchmark | k | A maj@k | B maj@k | delta [95% CI] | b / c | p | A pass@k | B pass@k | "
                  "delta [95% CI] | b / c | p |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, entry in voted:
            cells = [name, str(entry["pass_at_k"]["k"])]
            for key in ("maj_at_k", "pass_at_k"):
                paired = entry.get(key)
                cells += ([_points(paired["acc_a"]["mean"]), _points(paired["acc_b"]["mean"]), *paired_cells(paired)]
                          if paired else ["-", "-", *paired_cells(None)])
            lines.append("| " + " | ".join(cells) + " |")
    for side, key in (("A", "benchmarks_only_in_a"), ("B", "benchmarks_only_in_b")):
        if result[key]:
            lines += ["", f"Only in {side} (not compared): {', '.join(result[key])}"]
    return "\n".join(lines) + "\n"


def compare_runs(spec_a: str, spec_b: str, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[dict, str]:
    """Read both runs and compare them; returns (the JSON result, its Markdown)."""
    if resamples < 1:
        raise ValueError(f"compare: --resamples must be >= 1, got {resamples}")
    path_a, outcomes_a = read_outcomes(spec_a)
    path_b, outcomes_b = read_outcomes(spec_b)
    result = {"a": str(path_a), "b": str(path_b), **compare_outcomes(outcomes_a, outcomes_b, resamples, seed)}
    if not result["benchmarks"]:
        raise ValueError(f"{spec_a} and {spec_b} share no benchmark (A: {', '.join(outcomes_a)}; B: "
                         f"{', '.join(outcomes_b)})")
    if not any(entry.get("first_sample") for entry in result["benchmarks"].values()):
        example_a = next((pid for runs in outcomes_a.values() for pid in runs), "")
        example_b = next((pid for runs in outcomes_b.values() for pid in runs), "")
        raise ValueError(f"{spec_a} and {spec_b} share no problem to pair (A's ids look like {example_a!r}, B's like "
                         f"{example_b!r}); compare two runs of the same problems")
    return result, format_comparison(result, str(path_a), str(path_b))


def write_comparison(result: dict, markdown: str, out: str | None, json_path: str | None) -> None:
    for path, text in ((out, markdown), (json_path, json.dumps(result, indent=2) + "\n")):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
