"""Decontamination: 13-gram overlap AND LCS ratio > 0.6 against the test sets (method.md, "Decontamination")."""

from __future__ import annotations

import random

import pytest

from mathloop.data.decontaminate import (
    ContaminationIndex, decontaminate, decontaminate_samples, lcs_length, lcs_ratio, normalize_text,
)
from mathloop.records import Problem, Sample

HEXAGON_ID = "math500/test/prealgebra/1622.json"
# MATH-500's hexagon problem, reworded: a few words changed, same numbers.
HEXAGON_REWORDED = ("A regular hexagon may be split into 6 equilateral triangles. If the perimeter of one of the "
                    "triangles is 21 inches, what is the perimeter, in inches, of the whole hexagon?")
POLAR_FORMAT = r"Enter your answer in the form $(r,\theta),$ where $r > 0$ and $0 \le \theta < 2 \pi.$"
NEW_PROBLEM = ("Marisol bakes 14 trays of muffins with 9 muffins on each tray. She gives 37 muffins to her "
               "neighbours and sells the rest for $2 each. How many dollars does she earn?")


@pytest.fixture(scope="module")
def math500_index(data_dir) -> ContaminationIndex:
    return ContaminationIndex.from_benchmarks(data_dir, ["math500"])


def test_normalize_drops_markup_and_punctuation():
    assert normalize_text(r"$\left( \frac{3}{4} \right)$, right?") == ["frac", "3", "4", "right"]
    assert normalize_text("It costs $1,250.75!") == ["it", "costs", "1250.75"]
    assert normalize_text("小明有3个苹果") == ["小", "明", "有", "3", "个", "苹", "果"]


def test_lcs_length_matches_dynamic_programming():
    def dp(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    rng = random.Random(0)
    for _ in range(200):
        a = [rng.randrange(5) for _ in range(rng.randrange(0, 40))]
        b = [rng.randrange(5) for _ in range(rng.randrange(0, 40))]
        assert lcs_length(a, b) == dp(a, b)
    assert lcs_ratio([1, 2, 3], [1, 2, 3]) == 1.0


def test_reworded_math500_problem_is_caught_with_its_id(math500_index):
    match = math500_index.match(HEXAGON_REWORDED)
    assert match is not None
    assert (match.test_id, match.benchmark) == (HEXAGON_ID, "math500")
    assert 0.6 < match.ratio < 1.0
    assert len(match.ngram.split()) == 13 and match.ngram in " ".join(normalize_text(HEXAGON_REWORDED))


def test_new_problem_is_kept(math500_index):
    assert math500_index.match(NEW_PROBLEM) is None


def test_one_shared_boilerplate_ngram_is_not_enough(math500_index):
    text = ("A particle spirals outward so that its distance from the origin doubles on every full turn. It starts "
            "at the point (1,0) and turns at one radian per second for seven seconds. Where is it then? "
            + POLAR_FORMAT)
    shared = " ".join(normalize_text(POLAR_FORMAT)[:13])
    assert shared in " ".join(normalize_text(text))  # the 13-gram condition holds...
    assert math500_index.match(text) is None  # ...but the LCS ratio is low


def test_short_texts_match_only_when_equal():
    index = ContaminationIndex.from_texts([("svamp/1", "What is 7 plus 5?"), ("mawps/2", "Add 3 and 4.")])
    assert index.match("what is 7 plus 5").test_id == "svamp/1"
    assert index.match("What is 7 plus 6?") is None
    assert index.match("Add 3 and 4, then double the result.") is None  # short test items inside longer text: kept


def test_decontaminate_splits_and_reports_per_benchmark(data_dir):
    index = ContaminationIndex.from_benchmarks(data_dir, ["math500", "gsm8k"])
    gsm8k_text = " ".join(normalize_text(_question(data_dir, "gsm8k", 0)))  # same tokens, markup gone
    problems = [
        Problem("train/0", "train", HEXAGON_REWORDED, gold="42"),
        Problem("train/1", "train", NEW_PROBLEM, gold="178"),
        Problem("train/2", "train", gsm8k_text.upper(), gold="18"),
        Problem("train/3", "train", "Unrelated question text.", metadata={"solution": HEXAGON_REWORDED}),
    ]
    kept, removed, report = decontaminate(problems, index)
    assert [p.id for p in kept] == ["train/1", "train/3"]
    assert [p.id for p in removed] == ["train/0", "train/2"]
    assert report == {"gsm8k": 1, "math500": 1}
    reason = removed[0].metadata["contamination"]
    assert reason["field"] == "question" and reason["test_id"] == HEXAGON_ID and reason["lcs_ratio"] > 0.6
    assert "contamination" not in problems[0].metadata  # inputs are not modified

    _, removed, report = decontaminate(problems, index, check_fields=("question", "solution"))
    assert [p.id for p in removed] == ["train/0", "train/2", "train/3"]
    assert removed[-1].metadata["contamination"]["field"] == "solution" and report == {"gsm8k": 1, "math500": 2}


def test_samples_check_question_and_response(math500_index):
    solution = "Each triangle has side 7, so the hexagon's perimeter is $6 \\cdot 7 = \\boxed{42}$."
    quoting = f"We are asked: {HEXAGON_REWORDED} {solution} " + "Let us double-check the arithmetic. " * 10
    samples = [
        Sample("p/0", "prompt", solution, question=HEXAGON_REWORDED),
        Sample("p/1", "prompt", quoting),
        Sample("p/2", "prompt", solution, question=NEW_PROBLEM),
    ]
    kept, removed, report = decontaminate_samples(samples, math500_index)
    assert [s.problem_id for s in kept] == ["p/2"]
    assert [s.metadata["contamination"]["field"] for s in removed] == ["question", "response"]
    assert report == {"math500": 2}


def _question(data_dir, name: str, row: int) -> str:
    from mathloop.data.benchmarks import load_benchmark

    return load_benchmark(name, data_dir, limit=row + 1)[row].question


def test_a_field_no_problem_has_is_an_error():
    index = ContaminationIndex.from_texts([("gsm8k/0", NEW_PROBLEM)])
    with pytest.raises(ValueError, match="solutoin"):
        decontaminate([Problem("t/0", "t", "question")], index, check_fields=("question", "solutoin"))


def test_benchmarks_it_cannot_check_are_warned_once_and_never_for_procedural_problems(data_dir, monkeypatch, caplog):
    import logging

    from mathloop.data import benchmarks, decontaminate as module

    monkeypatch.setattr(benchmarks, "available_benchmarks", lambda folder, split: (["math500"], ["aime24", "amc23"]))
    monkeypatch.setattr(module, "_WARNED_UNAVAILABLE", set())
    with caplog.at_level(logging.INFO, logger="mathloop.data.decontaminate"):
        with module.procedural_problems():
            ContaminationIndex.from_benchmarks(data_dir)  # the demo's problems: no benchmark can hold them
        first = ContaminationIndex.from_benchmarks(data_dir)
        again = ContaminationIndex.from_benchmarks(data_dir)  # the loop's selection, same folder, same process
    levels = [r.levelno for r in caplog.records if "not checked against aime24, amc23" in r.getMessage()]
    assert levels == [logging.INFO, logging.WARNING, logging.INFO]
    assert first.unavailable == again.unavailable == ["aime24", "amc23"]  # still recorded in every report
