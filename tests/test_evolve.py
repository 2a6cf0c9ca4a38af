"""Problem synthesis by the model (`mathloop synthesize`): parsing and rejecting evolved problems, majority-vote
answers, metadata, resume, and the command, all with the scripted backend."""

from __future__ import annotations

import json

import pytest

from mathloop.backends.base import SamplingParams
from mathloop.backends.fake import FakeBackend
from mathloop.data.benchmarks import load_problem_source
from mathloop.pipeline.evolve import (
    OPERATIONS,
    EvolutionSettings,
    answer_by_majority,
    choose_operations,
    evolve_problems,
    majority_vote,
    parse_new_problem,
    rejected_path,
    rejection_reason,
    synthesize,
    synthesize_file,
)
from mathloop.prompts import COT_SYSTEM
from mathloop.records import Problem, read_jsonl, read_records, write_jsonl

SEEDS = [Problem(id=f"seed/{i}", benchmark="seed", gold=str(i + 5),
                 question=f"Tom has {i + 2} apples and buys 3 more. How many apples does he have now?")
         for i in range(4)]


def operation_in(prompt: str) -> str:
    return next(op for op, instruction in OPERATIONS.items() if instruction in prompt)


def model(prompt: str, index: int) -> str:
    """Evolves every seed into a distinct problem; answers new problems right 3 times in 4 (the 4th says 99)."""
    if "Write one new math problem" in prompt:
        seed = next(s for s in SEEDS if s.question in prompt)
        number = int(seed.id.split("/")[1]) + 2
        return (f"Here is one.\nNew problem: Tom has {number} apples ({operation_in(prompt)}) and buys 5 more. "
                f"How many apples does he have?\n\nSolution: {number} + 5 = {number + 5}.")
    number = int(prompt.split("Tom has ")[1].split()[0])
    return f"{number} + 5 = {number + 5}. The answer is \\boxed{{{99 if index == 3 else number + 5}}}."


@pytest.mark.parametrize("response, problem", [
    ("New problem: Ann has 3 pens and buys 4 more. How many pens?", "Ann has 3 pens and buys 4 more. How many pens?"),
    ("Sure!\n**New Problem:** Ann has 3 pens. How many?\n\n**Solution:** 3", "Ann has 3 pens. How many?"),
    ("New problem:\nAnn has 3 pens.\nShe buys 4. How many?\nAnswer: 7", "Ann has 3 pens.\nShe buys 4. How many?"),
    ('New problem: "Ann has 3 pens. How many?"', "Ann has 3 pens. How many?"),
    ("New problem: Ann has 3 pens. How many?\nNew problem: Bo has 2.", "Ann has 3 pens. How many?"),
    ("Ann has 3 pens. How many?", None),
])
def test_the_new_problem_is_read_from_its_marker(response, problem):
    assert parse_new_problem(response) == problem


@pytest.mark.parametrize("problem, reason", [
    (None, "no_problem"),
    ("", "no_problem"),
    ("How many pens?", "too_short"),
    ("Ann has pens. How many? " * 100, "too_long"),
    ("tom has 2 apples and buys 3 more.  How many apples does he have now", "same_as_seed"),
    ("Ann has 3 pens and buys 4 more. How many pens? \\boxed{7}", "states_answer"),
    ("Ann has 3 pens and buys 4 more pens. The answer is 7.", "states_answer"),
    ("Ann has 3 pens and buys 4 more pens at the shop.", "no_question"),
    ("Ann has 3 pens and buys 4 more. Find the number of pens she has.", None),
])
def test_rejection_rules(problem, reason):
    assert rejection_reason(problem, SEEDS[0].question) == reason


def test_each_seed_gets_distinct_reproducible_operations():
    chosen = [choose_operations(s.id, 3, seed=1) for s in SEEDS]
    assert all(len(set(ops)) == 3 and set(ops) <= set(OPERATIONS) for ops in chosen)
    assert chosen == [choose_operations(s.id, 3, seed=1) for s in SEEDS]
    assert len({tuple(ops) for ops in chosen}) > 1  # not the same choice for every seed


def test_evolution_asks_once_per_seed_and_operation_and_records_where_a_problem_came_from():
    backend = FakeBackend(model, model_id="tiny")
    problems, rejected = evolve_problems(backend, SEEDS[:2], variants_per_seed=2, seed=0)
    assert rejected == [] and len(problems) == 4 and len(backend.calls) == 1
    prompts, params = backend.calls[0]
    assert params.n == 1 and params.temperature > 0
    for problem, prompt in zip(problems, prompts):
        seed = next(s for s in SEEDS if s.id == problem.metadata["seed_id"])
        operation = problem.metadata["operation"]
        assert problem.id == f"{seed.id}/evolved/{operation}" and problem.benchmark == "evolved"
        assert seed.question in prompt and OPERATIONS[operation] in prompt and "New problem:" in prompt
        assert problem.question.startswith("Tom has") and problem.question.endswith("How many apples does he have?")
        assert problem.gold is None and problem.metadata["model"] == "tiny"
        assert problem.metadata["seed_question"] == seed.question


def test_unusable_evolutions_are_rejected_with_their_reason():
    from mathloop.data.decontaminate import ContaminationIndex

    leaked = ("A train travels 60 miles per hour for 3 hours and then 40 miles per hour for 2 hours. "
              "How far does it travel in total?")
    good = "Tom buys 4 boxes of 6 eggs each and breaks 5 of them. How many eggs are left?"
    responses = {
        "change_numbers": "I cannot do that.",
        "fractions_percentages": f"New problem: {SEEDS[0].question}",
        "add_condition": f"New problem: {good}",
        "combine_concept": f"New problem: {good}",
        "change_target": f"New problem: {leaked}",
    }
    backend = FakeBackend(lambda prompt, i: responses[operation_in(prompt)])
    index = ContaminationIndex.from_texts([("gsm8k/1", leaked)])
    problems, rejected = evolve_problems(backend, SEEDS[:1], variants_per_seed=5, index=index)
    reasons = {r.operation: r.reason for r in rejected}
    kept_operation = problems[0].metadata["operation"]
    assert len(problems) == 1 and kept_operation in ("add_condition", "combine_concept")
    duplicate = ({"add_condition", "combine_concept"} - {kept_operation}).pop()
    assert reasons == {"change_numbers": "no_problem", "fractions_percentages": "same_as_seed",
                       duplicate: "duplicate", "change_target": "contaminated"}
    contaminated = next(r for r in rejected if r.reason == "contaminated")
    assert contaminated.detail["test_id"] == "gsm8k/1" and contaminated.text == leaked

    cut = FakeBackend(lambda prompt, i: "New problem: Tom has " + "many " * 40 + "apples. How many?")
    _, rejected = evolve_problems(cut, SEEDS[:1], 1, params=SamplingParams(temperature=0.7, max_new_tokens=20))
    assert [r.reason for r in rejected] == ["truncated"]
    _, rejected = evolve_problems(FakeBackend(model), SEEDS[:1], 1, known_questions=[
        parse_new_problem(model(f"Write one new math problem {SEEDS[0].question} "
                                f"{OPERATIONS[choose_operations(SEEDS[0].id, 1)[0]]}", 0))])
    assert [r.reason for r in rejected] == ["duplicate"]  # synthesized in an earlier run


@pytest.mark.parametrize("answers, expected", [
    (["4", "4", "5"], ("4", 2)),
    (["1/2", "3", "0.5", None], ("1/2", 2)),  # equal answers vote together
    (["3", "4"], ("3", 1)),  # a tie goes to the answer seen first
    ([None, None], (None, 0)),
])
def test_majority_vote(answers, expected):
    assert majority_vote(answers) == expected


def new_problem(i: int, question: str) -> Problem:
    return Problem(id=f"seed/{i}/evolved/add_condition", benchmark="evolved", question=question,
                   metadata={"seed_id": f"seed/{i}", "operation": "add_condition"})


SOLUTIONS = {
    "agree": ["So \\boxed{4}.", "So \\boxed{4}.", "So \\boxed{4}.", "So \\boxed{5}."],
    "equivalent": ["So \\boxed{\\frac{1}{2}}.", "So \\boxed{0.5}.", "So \\boxed{3}.", "So \\boxed{7}."],
    "split": ["So \\boxed{1}.", "So \\boxed{2}.", "So \\boxed{3}.", "I am not sure."],
    "silent": ["I do not know."] * 4,
    "cut": ["First 2 + 2 = 4 and then " + "more " * 40 + "\\boxed{4}"] * 4,
}


def test_majority_answers_become_gold_only_with_enough_agreement():
    problems = [new_problem(i, f"Problem {name}: how many?") for i, name in enumerate(SOLUTIONS)]
    backend = FakeBackend(lambda prompt, i: SOLUTIONS[prompt.split("Problem ")[1].split(":")[0]][i])
    params = SamplingParams(temperature=0.7, top_p=0.8, max_new_tokens=30)
    kept, rejected = answer_by_majority(backend, problems, n_answers=4, min_agreement=0.5, params=params)
    prompts, used = backend.calls[0]
    assert COT_SYSTEM in prompts[0] and used.n == 4
    assert [(p.question, p.gold, p.metadata["agreement"]) for p in kept] == [
        ("Problem agree: how many?", "4", 0.75), ("Problem equivalent: how many?", "\\frac{1}{2}", 0.5)]
    assert kept[0].metadata["answers"] == ["4", "4", "4", "5"] and kept[0].metadata["votes"] == 3
    assert kept[0].metadata["operation"] == "add_condition"  # what evolution recorded is kept
    assert [(r.text, r.reason) for r in rejected] == [("Problem split: how many?", "no_agreement"),
                                                      ("Problem silent: how many?", "no_answer"),
                                                      ("Problem cut: how many?", "no_answer")]  # cut: no vote
    assert rejected[0].detail["agreement"] == 0.25 and rejected[0].seed_id == "seed/2"

    stricter, _ = answer_by_majority(backend, problems, n_answers=4, min_agreement=0.8, params=params)
    assert stricter == []


def test_synthesize_evolves_answers_and_reports():
    backend = FakeBackend(model)
    problems, report = synthesize(backend, SEEDS[:3], EvolutionSettings(variants_per_seed=2, n_answers=4))
    assert report.to_dict() == {"seeds": 3, "candidates": 6, "kept": 6, "rejected": {}}
    for p in problems:
        number = int(p.question.split("Tom has ")[1].split()[0])
        assert p.gold == str(number + 5) and p.metadata["agreement"] == 0.75
    strict = EvolutionSettings(variants_per_seed=2, n_answers=4, min_agreement=0.8)
    problems, report = synthesize(FakeBackend(model), SEEDS[:3], strict)
    assert problems == [] and report.to_dict()["rejected"] == {"no_agreement": 6}


@pytest.mark.parametrize("changes, message", [
    ({"operations": ("reverse",)}, "unknown operation"),
    ({"variants_per_seed": 6}, "variants_per_seed must be 1..5"),
    ({"min_agreement": 0}, "min_agreement"),
    ({"answer_sampling": SamplingParams(temperature=0.0)}, "greedy answers"),
])
def test_bad_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        EvolutionSettings(**changes).validate()


def test_the_output_file_resumes_and_skips_seeds_already_done(tmp_path):
    out = tmp_path / "problems.jsonl"
    backend = FakeBackend(model)
    config = EvolutionSettings(variants_per_seed=2, n_answers=4, min_agreement=0.8)  # all rejected: no_agreement
    first = synthesize_file(backend, SEEDS[:2], out, config, chunk_size=1)
    assert first["skipped_seeds"] == 0 and first["rejected"] == {"no_agreement": 4}
    assert len(backend.calls) == 4  # per chunk: one evolution call, one answering call

    backend.calls.clear()
    again = synthesize_file(backend, SEEDS[:3], out, config, chunk_size=1)  # one seed more
    assert again["skipped_seeds"] == 2 and len(backend.calls) == 2
    assert again["rejected"] == {"no_agreement": 6}
    assert all(SEEDS[2].question in p for p in backend.calls[0][0])

    lines = rejected_path(out).read_text().splitlines()
    rejected_path(out).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])  # killed mid-line in seed 2
    backend.calls.clear()
    resumed = synthesize_file(backend, SEEDS[:3], out, config, chunk_size=1)
    assert resumed["skipped_seeds"] == 2 and len(backend.calls) == 2
    ids = [row["id"] for row in read_jsonl(rejected_path(out))]
    assert len(ids) == len(set(ids)) == 6

    with pytest.raises(ValueError, match="min_agreement: 0.8 -> 0.5"):
        synthesize_file(backend, SEEDS[:3], out, EvolutionSettings(variants_per_seed=2, n_answers=4))


def test_synthesize_command_end_to_end(tmp_path, monkeypatch, capsys):
    import mathloop.backends
    from mathloop.cli import main

    loaded = []
    monkeypatch.setattr(mathloop.backends, "load_backend",
                        lambda name, model_name, **kwargs: loaded.append((name, model_name)) or FakeBackend(model))
    write_jsonl(tmp_path / "seeds.jsonl", [{"id": s.id, "question": s.question, "answer": s.gold} for s in SEEDS])
    out = tmp_path / "problems.jsonl"
    argv = ["synthesize", "--model", "default", "--seeds", str(tmp_path / "seeds.jsonl"), "--out", str(out),
            "--variants", "2", "--answers", "4", "--min-agreement", "0.5"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert loaded == [("auto", "default")] and report["kept"] == 8 and report["rejected"] == {}
    problems = read_records(Problem, out)
    assert len(problems) == 8 and all(p.gold and p.metadata["agreement"] == 0.75 for p in problems)
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["skipped_seeds"] == 4
    assert main(argv[:-2] + ["--min-agreement", "1.5"]) == 2  # a one-line error, not a traceback


def test_seeds_come_from_a_benchmark_split_or_a_file(data_dir, tmp_path):
    seeds = load_problem_source("gsm8k:train:3", str(data_dir))
    assert len(seeds) == 3 and all(s.question and s.gold for s in seeds)
    with pytest.raises(ValueError, match="gsm8k:train:100"):
        load_problem_source("gsm8k:train:many", str(data_dir))
    write_jsonl(tmp_path / "seeds.jsonl", [{"question": "What is 2 + 2?", "answer": "4"}])
    assert load_problem_source(str(tmp_path / "seeds.jsonl"))[0].gold == "4"
