"""`mathloop sample` (passes, resume after a kill, shards, hard problems) and `mathloop select` (RM order, majority
pseudo-labels, duplicates, chat rows), with the scripted backend and built-in procedural problems."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mathloop.backends.fake import FakeBackend
from mathloop.cli import main
from mathloop.data.synthetic import generate_problems
from mathloop.pipeline.sample import SampleConfig, read_samples, run_sample, shard_of
from mathloop.pipeline.select import majority_answer, select_responses, sft_rows
from mathloop.records import Sample, read_records, write_jsonl

PROBLEMS = generate_problems(6, seed=3)
HARD = {PROBLEMS[0].question, PROBLEMS[1].question}  # the scripted model never solves these


def solver(prompt: str, index: int) -> str:
    """Right on samples 0 and 2 of each easy problem, wrong otherwise."""
    problem = next(p for p in PROBLEMS if p.question in prompt)
    if problem.question not in HARD and index % 2 == 0:
        return f"Step {index}: work it out. The answer is \\boxed{{{problem.gold}}}."
    return f"Attempt {index}. The answer is \\boxed{{123456}}."


def sample_config(tmp_path, **changes) -> SampleConfig:
    write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    settings = dict(model="fake", problems=str(tmp_path / "problems.jsonl"), out=str(tmp_path / "samples"), n=3,
                    temperatures=[0.7, 1.0], max_new_tokens=64)
    return SampleConfig(**{**settings, **changes})


def test_each_temperature_is_a_pass_of_n_graded_responses(tmp_path):
    backend = FakeBackend(solver)
    summary = run_sample(sample_config(tmp_path), backend=backend, progress=False)
    samples = read_samples(tmp_path / "samples")
    assert summary["samples"] == len(samples) == 6 * 3 * 2
    assert sorted({p.temperature for _, p in backend.calls}) == [0.7, 1.0]
    per_problem = {}
    for s in samples:
        per_problem.setdefault(s.problem_id, []).append(s.sample_index)
    assert all(sorted(indexes) == list(range(6)) for indexes in per_problem.values())
    assert summary["correct"] == 4 * 2 * 2 and summary["solved_problems"] == 4
    # the 4 easy problems are right on 4 of their 6 samples (0 and 2 of each pass), the 2 hard ones on none
    assert summary["correct_per_problem"] == {"0": 2, "4": 4} and summary["all_correct_problems"] == 0
    assert all(s.gold and s.verdict and s.question for s in samples)


def test_resume_after_a_kill_loses_and_duplicates_nothing(tmp_path):
    backend = FakeBackend(solver)
    run_sample(sample_config(tmp_path), backend=backend, progress=False)
    pass0 = tmp_path / "samples" / "samples" / "pass-0.jsonl"
    lines = pass0.read_text().splitlines()
    pass0.write_text("\n".join(lines[:7]) + "\n" + lines[7][:30])  # killed: problem 3 half written, a torn line
    (tmp_path / "samples" / "samples" / "pass-1.jsonl").unlink()  # the second pass never started
    backend.calls.clear()
    run_sample(sample_config(tmp_path), backend=backend, progress=False)
    samples = read_samples(tmp_path / "samples")
    keys = [(s.problem_id, s.metadata["pass"], s.sample_index) for s in samples]
    assert len(keys) == len(set(keys)) == 36
    regenerated = [prompt for prompts, _ in backend.calls for prompt in prompts]
    assert len(regenerated) == 4 + 6  # pass 0: problems 3-6 (one half done, three missing); pass 1: all six


def test_shards_split_the_problems_and_fill_one_folder(tmp_path):
    for shard in (0, 1):
        run_sample(sample_config(tmp_path, shard=shard, num_shards=2, temperatures=[0.7]), backend=FakeBackend(solver),
                   progress=False)
    files = sorted(p.name for p in (tmp_path / "samples" / "samples").iterdir())
    assert files == ["pass-0.shard-0-of-2.jsonl", "pass-0.shard-1-of-2.jsonl"]
    samples = read_samples(tmp_path / "samples")
    assert sorted({s.problem_id for s in samples}) == sorted(p.id for p in PROBLEMS)
    for shard in (0, 1):
        in_file = read_records(Sample, tmp_path / "samples" / "samples" / f"pass-0.shard-{shard}-of-2.jsonl")
        assert in_file and {shard_of(s.problem_id, 2) for s in in_file} == {shard}
    assert len(samples) == 18


def test_hard_problems_get_extra_samples(tmp_path):
    run_sample(sample_config(tmp_path, temperatures=[0.7], hard_n=5, hard_max_correct=0), backend=FakeBackend(solver),
               progress=False)
    samples = read_samples(tmp_path / "samples")
    extra = [s for s in samples if s.metadata["pass"] == 1]
    assert {s.problem_id for s in extra} == {PROBLEMS[0].id, PROBLEMS[1].id} and len(extra) == 10


def test_resuming_with_other_settings_is_refused(tmp_path):
    run_sample(sample_config(tmp_path, temperatures=[0.7]), backend=FakeBackend(solver), progress=False)
    with pytest.raises(ValueError, match=r"n: 3 -> 4"):
        run_sample(sample_config(tmp_path, temperatures=[0.7], n=4), backend=FakeBackend(solver), progress=False)


def test_sample_cli_reads_benchmark_splits_and_names_a_bad_source(tmp_path, data_dir, capsys):
    code = main(["sample", "--problems", "synthetic:oops", "--out", str(tmp_path / "s"), "--quiet"])
    assert code == 2 and "synthetic:<count>:<seed>" in capsys.readouterr().err


# ---- select -------------------------------------------------------------------------------------------------------

def graded(problem_id, response, verdict=None, rm=None, gold="7", pred=None, finish="stop", index=0):
    return Sample(problem_id=problem_id, prompt="p", response=response, gold=gold, verdict=verdict, rm_score=rm,
                  pred=pred, finish_reason=finish, sample_index=index,
                  question=f"Question {problem_id}: what is 3 + 4?")


def test_gold_problems_keep_the_top_k_correct_by_rm_score_without_truncated_or_duplicates():
    long = ("First we note that Tom has three apples and buys four more at the market, then he counts all of "
            "his apples again on the table one by one to be sure, and the total he gets is seven")
    samples = [graded("a", long + ", so \\boxed{7}.", "correct", rm=0.1, index=0),
               graded("a", long + "  so \\boxed{7}!", "correct", rm=2.0, index=1),
               graded("a", "Three plus four: 3 + 4 = 7. \\boxed{7}", "correct", rm=1.0, index=2),
               graded("a", "Counting up from 3 by four gives 7 \\boxed{7}", "correct", rm=5.0, finish="length",
                      index=3),
               graded("a", "It is \\boxed{8}.", "incorrect", rm=9.0, index=4),
               graded("b", "It is \\boxed{8}.", "incorrect", rm=1.0)]
    chosen, report = select_responses(samples, k=3)
    assert [s.rm_score for s in chosen] == [2.0, 1.0]  # 5.0 truncated, 0.1 near-copy of 2.0, 9.0 wrong
    assert report.truncated == 1 and report.duplicates == 1
    assert report.dropped == {"no correct response": 1} and report.kept_problems == 1
    chosen, _ = select_responses(samples, k=2, vote="majority")
    assert [s.sample_index for s in chosen] == [0, 2]  # sampling order when RM scores are ignored


def test_shortest_first_keeps_the_most_concise_correct_responses():
    samples = [graded("a", f"Solution {i}: " + "step " * size + "\\boxed{7}", "correct", index=i)
               for i, size in enumerate([30, 5, 60, 5])]
    for s, tokens in zip(samples, [40, 12, 80, 12]):
        s.completion_tokens = tokens
    samples[3].response = "A different way to count: three, then four more make \\boxed{7}"
    samples.append(graded("a", "short and wrong \\boxed{8}", "incorrect", index=4))
    samples[-1].completion_tokens = 5
    chosen, _ = select_responses(samples, k=2, shortest_first=True)
    assert [s.sample_index for s in chosen] == [1, 3]  # fewest tokens, ties in sampling order; wrong ones never
    chosen, _ = select_responses(samples, k=2)
    assert [s.sample_index for s in chosen] == [0, 1]
    for s in samples:
        s.rm_score = float(s.sample_index)
    chosen, _ = select_responses(samples, k=2, shortest_first=True)
    assert [s.sample_index for s in chosen] == [3, 2]  # RM order wins when every candidate has a score


def test_problems_without_gold_get_a_majority_pseudo_label_weighted_by_rm():
    votes = [graded("q", f"Way {i}: the total is {a}, \\boxed{{{a}}}", gold=None, pred=a, rm=rm, index=i)
             for i, (a, rm) in enumerate([("12", -4.0), ("12", -4.0), ("12", -4.0), ("15", 4.0), ("15", 4.0)])]
    assert majority_answer(votes, vote="majority") == ("12", 0.6)
    label, share = majority_answer(votes)  # weights sigmoid(rm): 3 x 0.018 vs 2 x 0.982
    assert label == "15" and share == pytest.approx(0.9735, abs=1e-3)
    chosen, report = select_responses(votes, k=4)
    assert {s.pred for s in chosen} == {"15"} and report.pseudo_labelled == 1
    assert chosen[0].metadata["pseudo_label"] == "15"
    _, report = select_responses(votes, k=4, vote="majority", min_agreement=0.7)
    assert report.dropped == {"no majority answer": 1}


def test_confidence_weighted_vote_ranks_by_the_generators_confidence_and_needs_it_everywhere():
    votes = [graded("q", f"Way {i}: the total is {a}, \\boxed{{{a}}}", gold=None, pred=a, index=i)
             for i, a in enumerate(["12", "12", "12", "15", "15"])]
    for s, lowest in zip(votes, [-3.0, -3.0, -3.0, -0.1, -0.2]):
        s.confidence = {"mean": lowest / 2, "lowest_window": lowest, "tail": lowest}
    label, share = majority_answer(votes, vote="confidence-weighted")  # 3 x exp(-3) = 0.149 vs 0.905 + 0.819
    assert label == "15" and share == pytest.approx(1.724 / 1.873, abs=1e-3)
    right = [graded("a", f"Solution number {i} counts {'up ' * i}to \\boxed{{7}}", "correct", index=i) for i in range(3)]
    for s, lowest in zip(right, [-2.0, -0.5, -1.0]):
        s.confidence = {"mean": 0.0, "lowest_window": lowest, "tail": 0.0}
    chosen, _ = select_responses(right, k=2, vote="confidence-weighted")
    assert [s.sample_index for s in chosen] == [1, 2]  # most confident first
    right[0].confidence = None
    with pytest.raises(ValueError, match="confidence"):
        select_responses(right, k=2, vote="confidence-weighted")
    with pytest.raises(ValueError, match="rm_score"):
        select_responses(right, k=2, vote="rm-weighted")


def test_difficulty_gives_rarely_solved_problems_more_rows_and_always_solved_ones_none():
    def problem(pid: str, right: int, of: int = 4) -> list[Sample]:
        return [graded(pid, f"Way {i} of {pid}: " + " ".join(["step"] * i) + f" {pid * (i + 1)} \\boxed{{7}}",
                       "correct" if i < right else "incorrect", index=i) for i in range(of)]

    samples = problem("hard", 1) + problem("half", 2) + problem("easy", 3) + problem("always", 4)
    chosen, report = select_responses(samples, k=4, difficulty=True)
    per_problem = {pid: sum(s.problem_id == pid for s in chosen) for pid in ("hard", "half", "easy", "always")}
    # ceil(4 * wrong share), at most the distinct right responses there are
    assert per_problem == {"hard": 1, "half": 2, "easy": 1, "always": 0}
    assert report.dropped == {"solved by every sample": 1}
    plain, _ = select_responses(samples, k=4)
    assert len(plain) == 1 + 2 + 3 + 4


def test_negatives_are_wrong_finished_distinct_responses_with_reward_minus_one():
    samples = [graded("a", "Three plus four is seven \\boxed{7}", "correct", index=0),
               graded("a", "Three plus four is eight, so the answer is \\boxed{8}", "incorrect", pred="8", index=1),
               graded("a", "Three plus four is eight, so the answer is \\boxed{8}", "incorrect", pred="8", index=2),
               graded("a", "It never ends ...", "incorrect", finish="length", index=3),
               graded("a", "Subtracting: 4 - 3 = 1, \\boxed{1}", "incorrect", pred="1", index=4),
               graded("b", "Seven minus nothing is \\boxed{6}", "incorrect", pred="6", index=0)]
    chosen, report = select_responses(samples, k=2, negatives=2)
    assert [(s.problem_id, s.sample_index, s.metadata.get("reward", 1)) for s in chosen] == [
        ("a", 1, -1), ("a", 4, -1), ("a", 0, 1), ("b", 0, -1)]  # the copy and the truncated one are left out
    assert report.negatives == 3 and report.selected == 4 and report.dropped == {"no correct response": 1}
    assert [row["reward"] for row in sft_rows(chosen)] == [-1, -1, 1, -1]
    without, _ = select_responses(samples, k=2)
    assert [row["reward"] for row in sft_rows(without)] == [1]


def test_sft_rows_are_prompt_completion_chats():
    rows = sft_rows([graded("a", "3 + 4 = 7, so \\boxed{7}.", "correct", rm=1.5)])
    assert rows[0]["prompt"][0]["role"] == "system" and "3 + 4" in rows[0]["prompt"][-1]["content"]
    assert rows[0]["prompt"][-1]["role"] == "user"
    assert rows[0]["completion"] == [{"role": "assistant", "content": "3 + 4 = 7, so \\boxed{7}."}]
    assert rows[0]["gold"] == "7" and rows[0]["rm_score"] == 1.5


def test_select_cli_removes_a_planted_math500_near_copy_and_keeps_a_new_problem(tmp_path, data_dir, capsys):
    from mathloop.data.benchmarks import load_benchmark

    leaked = load_benchmark("math500", data_dir, limit=1)[0].question
    near_copy = leaked.replace("What", "Compute") + " Explain."
    samples = [graded("leak", "Solving: \\boxed{7}", "correct"), graded("new", "So 3 + 4 = \\boxed{7}", "correct")]
    samples[0].question = near_copy
    write_jsonl(tmp_path / "s.jsonl", samples)
    assert main(["select", "--samples", str(tmp_path / "s.jsonl"), "--output", str(tmp_path / "sft.jsonl"),
                 "--decontaminate", "--data-dir", str(data_dir)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert [r["problem_id"] for r in rows] == ["new"]
    report = json.loads(capsys.readouterr().out)["decontamination"]
    assert report["removed_responses"] == 1 and report["examples"][0]["problem_id"] == "leak"
    assert report["examples"][0]["field"] == "question" and report["examples"][0]["lcs_ratio"] > 0.6


def test_select_refuses_a_selection_without_responses_on_the_cli_as_the_loop_does(tmp_path, capsys):
    write_jsonl(tmp_path / "s.jsonl", [graded("p1", "The answer is \\boxed{5}.", "incorrect", pred="5")])
    code = main(["select", "--samples", str(tmp_path / "s.jsonl"), "--output", str(tmp_path / "sft.jsonl")])
    assert code == 2 and "selection kept no response" in capsys.readouterr().err
    assert not (tmp_path / "sft.jsonl").exists()


def test_samples_carry_the_problem_and_its_benchmark_version_which_resuming_checks(tmp_path):
    versioned = [dataclasses.replace(p, metadata={**p.metadata, "benchmark_version": 1}) for p in PROBLEMS]
    config = sample_config(tmp_path, temperatures=[0.7], n=1)
    write_jsonl(tmp_path / "problems.jsonl", versioned)
    run_sample(config, backend=FakeBackend(solver), progress=False)
    samples = read_samples(config.out)
    by_id = {p.id: p for p in versioned}
    assert all(s.question == by_id[s.problem_id].question and s.benchmark_version == 1
               and s.answer_type == "math" for s in samples)
    # The benchmark changes version under a half-done run: resuming refuses to mix the two.
    path = next((tmp_path / "samples" / "samples").glob("pass-0*.jsonl"))
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    write_jsonl(tmp_path / "problems.jsonl", [dataclasses.replace(p, metadata={**p.metadata, "benchmark_version": 2})
                                              for p in versioned])
    with pytest.raises(ValueError, match="version 1 of .* now version 2"):
        run_sample(config, backend=FakeBackend(solver), progress=False)
