"""`mathloop loop` and `mathloop demo`: shipped configs validate, a whole round runs on the tiny model with a scripted
sampler, finished stages are skipped on re-run, rounds can be added, and planted contamination is removed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from mathloop.backends.fake import FakeBackend
from mathloop.data.benchmarks import load_benchmark
from mathloop.data.benchmarks import pull_benchmarks
from mathloop.data.synthetic import generate_problems
from mathloop.pipeline.compare import resolve_run
from mathloop.pipeline.loop import LoopConfig, load_loop_config, loop_config_from_dict, run_loop
from mathloop.records import Problem, Sample, read_records, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
TRAIN = generate_problems(8, seed=11)
HELDOUT = generate_problems(4, seed=12)
GOLDS = {p.question: p.gold for p in TRAIN + HELDOUT}


def half_right(prompt: str, index: int) -> str:
    """Samples 0 and 2 of every problem are right, 1 and 3 wrong; greedy (index 0) is right."""
    gold = next((g for q, g in GOLDS.items() if q in prompt), "0")
    if index % 2 == 0:
        return f"We compute it step by step, attempt {index}. The answer is \\boxed{{{gold}}}."
    return f"A rushed guess number {index}. The answer is \\boxed{{987654}}."


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_loop_configs_validate(path, tmp_path):
    config = load_loop_config(str(path), {"output_dir": str(tmp_path / "run")})
    assert config.rounds >= 1 and config.sample and config.sft


def test_config_errors_name_the_section_and_key(tmp_path):
    with pytest.raises(ValueError, match=r"loop: sft.*unknown key\(s\) epoch\b"):
        loop_config_from_dict({"output_dir": str(tmp_path), "sft": {"epoch": 2}})
    with pytest.raises(ValueError, match=r"sample: unknown key\(s\) temperature\b"):
        loop_config_from_dict({"output_dir": str(tmp_path), "sample": {"temperature": 0.7}})
    with pytest.raises(ValueError, match="unknown key\\(s\\) round\\b"):
        loop_config_from_dict({"output_dir": str(tmp_path), "round": 2})


def tiny_loop(tmp_path, model_dir, data_dir, **changes) -> LoopConfig:
    leaked = load_benchmark("math500", data_dir, limit=1)[0]
    planted = Problem(id="planted/0", benchmark="planted", gold="1",
                      question=leaked.question.replace("What", "Find") + " Show your work.")
    write_jsonl(tmp_path / "problems.jsonl", TRAIN + [planted])
    write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    settings = dict(output_dir=str(tmp_path / "run"), model=str(model_dir), problems=str(tmp_path / "problems.jsonl"),
                    heldout=str(tmp_path / "heldout.jsonl"), data_dir=str(data_dir), rounds=1,
                    sample={"n": 4, "temperatures": [0.8], "max_new_tokens": 32},
                    reward_model={"enabled": True, "group_size": 4, "epochs": 1, "groups_per_batch": 4,
                                  "max_length": 64, "heldout_fraction": 0.25, "learning_rate": 1e-3},
                    select={"k": 2},
                    sft={"epochs": 1, "max_length": 128, "per_device_batch_size": 4, "gradient_accumulation_steps": 1,
                         "learning_rate": 1e-3, "save_steps": 50},
                    eval={"max_new_tokens": 32},
                    grpo={"enabled": True, "reward": "shaped", "steps": 2, "group_size": 4, "queries_per_step": 2,
                          "max_new_tokens": 12, "selection_n": 4, "selection_low": 1, "selection_high": 3,
                          "learning_rate": 1e-4, "micro_batch": 4})
    return loop_config_from_dict({**settings, **changes})


@pytest.mark.training
def test_a_round_runs_every_stage_and_a_rerun_skips_them(tiny_model_dir, data_dir, tmp_path):
    backend = FakeBackend(half_right)
    summary = run_loop(tiny_loop(tmp_path, tiny_model_dir, data_dir), progress=False, backend=backend)
    run = tmp_path / "run"
    decontamination = json.loads((run / "decontamination.json").read_text())
    assert decontamination["removed"] == 1  # MATH-500 is a subset of MATH test: either may be named
    assert list(decontamination["per_benchmark"].values()) == [1] and decontamination["examples"][0]["id"] == "planted/0"
    assert [p.id for p in read_records(Problem, run / "problems.jsonl")] == [p.id for p in TRAIN]

    samples = read_records(Sample, run / "round-1" / "samples.jsonl")
    assert len(samples) == 8 * 4 and all(s.rm_score is not None for s in samples)
    assert (run / "round-1" / "rm" / "final" / "reward_config.json").exists()
    rows = [json.loads(line) for line in (run / "round-1" / "sft_data.jsonl").read_text().splitlines()]
    assert len(rows) == 8 * 2 and all("\\boxed{987654}" not in r["completion"][0]["content"] for r in rows)
    assert (run / "round-1" / "sft" / "final" / "config.json").exists()

    assert [r["round"] for r in summary["rounds"]] == [0, 1, "grpo"]
    assert summary["rounds"][1]["model"] == str(run / "round-1" / "sft" / "final")
    grpo_dir = run / "grpo-after-round-1"
    grpo_run = json.loads((grpo_dir / "run.json").read_text())
    assert grpo_run["config"]["model"] == summary["rounds"][1]["model"]  # GRPO starts from the last SFT model
    assert grpo_run["config"]["rm"] == str(run / "round-1" / "rm" / "final")
    assert len((grpo_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert summary["rounds"][2]["model"] == str(grpo_dir / "final")
    assert summary["rounds"][0]["acc"] == 1.0 and summary["rounds"][0]["n"] == 4
    assert "| 1 |" in (run / "summary.md").read_text() and (run / "accuracy.svg").read_text().startswith("<svg")
    assert summary["rounds"][1]["samples"]["correct_per_problem"] == {"2": 8}  # half right: 2 of 4 on each
    assert "| 16/32 | 8/8 (0) |" in (run / "summary.md").read_text()  # solved, none on every sample
    # every later stage is paired with round 0 on the same held-out problems (all 4 right both times here)
    for row in summary["rounds"][1:]:
        first = row["vs_round_0"]["first_sample"]
        assert (first["both"], first["b"], first["c"], first["mcnemar_p"]) == (4, 0, 0, 1.0)
    assert (run / "summary.md").read_text().count("| +0.0 [-49.0, +49.0] | 0 / 0 | 1.000 |") == 2
    # wall time per stage, in each row and in summary.md
    assert set(summary["rounds"][1]["stage_seconds"]) == {"sample", "rm", "select", "sft", "eval"}
    assert set(summary["rounds"][2]["stage_seconds"]) == {"grpo", "eval"}
    assert summary["rounds"][1]["stage_seconds"]["sft"] > 0
    assert "| round | sample | rm | select | sft | grpo | eval | total |" in (run / "summary.md").read_text()
    report = (run / "report.html").read_text()  # `mathloop report` of the folder (tests/test_report.py opens it)
    records = {str(p.parent.relative_to(run)): json.loads(p.read_text()) for p in run.rglob("run.json")}
    assert {folder: record["kind"] for folder, record in records.items()} == {
        ".": "loop", "round-0/eval": "eval", "round-1/samples": "sample", "round-1/rm": "rm", "round-1/sft": "sft",
        "round-1/eval": "eval", "grpo-after-round-1": "grpo", "grpo-after-round-1/eval": "eval"}
    assert all("finished" in record for record in records.values())  # every stage's done marker, and the loop's
    assert records["."]["stages"] == [{"name": "0", "folder": "round-0"}, {"name": "1", "folder": "round-1"},
                                      {"name": "grpo", "folder": "grpo-after-round-1"}]
    assert report.count("<tr><td>run:") == 3 + 2  # metrics of rounds 0, 1 and grpo; two paired comparisons

    final = run / "round-1" / "sft" / "final" / "config.json"
    stamp = final.stat().st_mtime_ns
    backend.calls.clear()
    run_loop(tiny_loop(tmp_path, tiny_model_dir, data_dir), progress=False, backend=backend)
    assert backend.calls == [] and final.stat().st_mtime_ns == stamp  # nothing sampled, nothing retrained
    resumed = json.loads((run / "summary.json").read_text())["rounds"][1]["stage_seconds"]
    timed = summary["rounds"][1]["stage_seconds"]
    assert resumed == timed | {"rm": resumed["rm"]} and resumed["rm"] >= timed["rm"]  # finished stages add nothing
    assert all(path.exists() for path in (run / "round-1" / "samples.jsonl", run / "round-1" / "select.json",
                                          run / "round-1" / "eval" / "metrics.json"))  # the files marking them done

    summary = run_loop(tiny_loop(tmp_path, tiny_model_dir, data_dir, rounds=2), progress=False, backend=backend)
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2, "grpo"] and final.stat().st_mtime_ns == stamp
    assert (run / "grpo-after-round-2" / "final" / "config.json").exists()
    assert [stage["name"] for stage in json.loads((run / "run.json").read_text())["stages"]] == [
        "0", "1", "grpo-after-round-1", "2", "grpo"]  # the earlier GRPO stage keeps its folder's name
    assert resolve_run(f"{run}:grpo") == run / "grpo-after-round-2" / "eval"
    second = read_records(Sample, run / "round-2" / "samples.jsonl")
    assert len(second) == 32 and second[0].model == "fake"


@pytest.mark.training
def test_coverage_interpolation_difficulty_and_negatives_in_one_round(tiny_model_dir, data_dir, tmp_path):
    """The settings against narrowing: a dev split no round samples, the coverage evaluation of every round paired
    with round 0, alpha picked on the dev split, difficulty-aware rows and wrong rows pushed down."""
    config = tiny_loop(tmp_path, tiny_model_dir, data_dir, reward_model={}, grpo={}, dev_size=2,
                       coverage={"n": 4, "limit": 3, "max_new_tokens": 32},
                       interpolate={"alphas": [1.0, 0.5]}, select={"k": 2, "difficulty": True, "negatives": 1},
                       explore={"temperatures": [0.9, 0.6], "problems": 2, "target": 2},
                       sft={"epochs": 1, "max_length": 512, "per_device_batch_size": 4,
                            "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "negative_weight": 0.5})
    summary = run_loop(config, progress=False, backend=FakeBackend(half_right))
    run = tmp_path / "run"
    dev = [p.id for p in read_records(Problem, run / "dev.jsonl")]
    train = [p.id for p in read_records(Problem, run / "problems.jsonl")]
    assert dev == [p.id for p in TRAIN[-2:]] and train == [p.id for p in TRAIN[:-2]]
    assert {s.problem_id for s in read_records(Sample, run / "round-1" / "samples.jsonl")} == set(train)

    # 2 of 4 right on every problem: ceil(2 * 2/4) = 1 right row, and 1 wrong row
    rows = [json.loads(line) for line in (run / "round-1" / "sft_data.jsonl").read_text().splitlines()]
    assert sorted(r["reward"] for r in rows) == [-1] * 6 + [1] * 6
    assert all(("987654" in r["completion"][0]["content"]) == (r["reward"] == -1) for r in rows)
    assert json.loads((run / "round-1" / "sft" / "run.json").read_text())["data"]["wrong_examples"] == 6

    interpolation = json.loads((run / "round-1" / "interpolation.json").read_text())
    assert [entry["alpha"] for entry in interpolation["grid"]] == [0.5, 1.0] and interpolation["dev_problems"] == 2
    assert interpolation["alpha"] == 0.5  # the scripted sampler scores both the same: the smaller alpha wins
    chosen = run / "round-1" / "interpolate" / "alpha-0.5" / "model"
    assert summary["rounds"][1]["model"] == str(chosen) and (chosen / "config.json").exists()
    assert (run / "round-1" / "interpolate" / "alpha-1" / "eval" / "metrics.json").exists()

    for row in summary["rounds"]:
        coverage = row["coverage"]
        assert (coverage["n"], coverage["samples"]) == (3, 4) and coverage["metrics"]["pass@4"]["mean"] == 1.0
    versus = summary["rounds"][1]["coverage"]["vs_round_0"]
    assert versus["pass_at_k"]["k"] == 4 and versus["mean"]["delta"] == 0.0
    text = (run / "summary.md").read_text()
    assert "Coverage: 4 samples per problem on the first 3 held-out problems" in text
    assert "| 1 | 50.0 | +0.0 [+0.0, +0.0] | 100.0 | +0.0 [-56.1, +56.1] | 0 / 0 | 1.000 | 100.0 |" in text
    assert {"interpolate", "coverage"} <= set(summary["rounds"][1]["stage_seconds"])
    # the scripted sampler does not change with the temperature: both balance the same and the lower one wins
    assert summary["rounds"][1]["temperature"]["temperature"] == 0.6
    assert "round 1: temperature 0.6 (balance 0.6: 1.000, 0.9: 1.000)" in text

def test_a_run_folder_refuses_other_settings(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(ValueError, match="grpo stage selects its queries from a round's samples"):
        tiny_loop(tmp_path, tiny_model_dir, data_dir, rounds=0)
    config = tiny_loop(tmp_path, tiny_model_dir, data_dir, rounds=0, grpo={})
    run_loop(config, progress=False, backend=FakeBackend(half_right))
    with pytest.raises(ValueError, match="select"):
        run_loop(tiny_loop(tmp_path, tiny_model_dir, data_dir, rounds=0, grpo={}, select={"k": 3}), progress=False,
                 backend=FakeBackend(half_right))


def test_demo_settings_are_a_valid_loop_that_fits_a_laptop(tmp_path):
    from mathloop.pipeline.demo import demo_config

    config = demo_config(str(tmp_path / "demo"))
    config.validate()
    assert config.model == "default" and config.rounds == 1 and config.sft["lora"]
    assert config.problems.startswith("synthetic:") and config.heldout.startswith("synthetic:")
    assert yaml.safe_dump(config.sample)  # plain data, recorded in run.json


def evolving(prompt: str, index: int) -> str:
    """Evolves a seed into "<seed> Then add 10." and answers evolved problems 42, except for the problem evolved from
    the second seed, whose answers all differ (no majority); seed problems are answered as in `half_right`."""
    if "Write one new math problem" in prompt:
        seed = next(p for p in TRAIN if p.question in prompt)
        return f"New problem: {seed.question} Then add 10 to the result."
    if "Then add 10" in prompt:
        answer = 100 + index if TRAIN[1].question in prompt else 42
        return f"Adding ten. The answer is \\boxed{{{answer}}}."
    return half_right(prompt, index)


def test_synthesized_problems_join_the_training_problems_once(tiny_model_dir, data_dir, tmp_path):
    synthesize = {"seeds": 3, "variants_per_seed": 1, "n_answers": 4, "min_agreement": 0.75,
                  "operations": ["add_condition"], "max_new_tokens": 64}
    config = tiny_loop(tmp_path, tiny_model_dir, data_dir, rounds=0, grpo={}, synthesize=synthesize)
    backend = FakeBackend(evolving)
    run_loop(config, progress=False, backend=backend)
    run = tmp_path / "run"
    problems = read_records(Problem, run / "problems.jsonl")
    evolved = [p for p in problems if p.benchmark == "evolved"]
    assert [p.id for p in problems[:len(TRAIN)]] == [p.id for p in TRAIN]  # the planted copy is still removed
    assert [p.id for p in evolved] == [f"{TRAIN[i].id}/evolved/add_condition" for i in (0, 2)]
    assert all(p.gold == "42" and p.metadata["agreement"] == 1.0 for p in evolved)
    rejected = [json.loads(line) for line in (run / "synthesized.rejected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejected] == [f"{TRAIN[1].id}/evolved/add_condition"]
    assert json.loads((run / "synthesis.json").read_text())["kept"] == 2

    # the stage ran once: a re-run asks nothing; a record written before the synthesize setting existed resumes
    record = json.loads((run / "run.json").read_text())
    del record["config"]["synthesize"]
    (run / "run.json").write_text(json.dumps(record))
    backend.calls.clear()
    run_loop(tiny_loop(tmp_path, tiny_model_dir, data_dir, rounds=0, grpo={}), progress=False, backend=backend)
    assert backend.calls == []


def test_synthesize_section_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"synthesize: unknown key\(s\) variants\b"):
        loop_config_from_dict({"output_dir": str(tmp_path), "synthesize": {"variants": 2}}).validate()
    with pytest.raises(ValueError, match="synthesize: min_agreement must be in"):
        loop_config_from_dict({"output_dir": str(tmp_path), "synthesize": {"min_agreement": 2}}).validate()


def interrupt(prompt: str, index: int) -> str:
    raise KeyboardInterrupt


def test_a_loop_interrupted_before_its_first_round_resumes_with_a_data_folder_or_another_batch_size(
        tiny_model_dir, data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("MATHLOOP_DATA_DIR", raising=False)
    settings = dict(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), problems="gsm8k:train", limit=4,
                    heldout="gsm8k:test", heldout_limit=2, rounds=1, decontaminate=False,
                    sample={"n": 2, "temperatures": [0.8], "max_new_tokens": 16, "backend_args": {"batch_size": 8}},
                    eval={"max_new_tokens": 16, "backend_args": {"batch_size": 8}})
    with pytest.raises(KeyboardInterrupt):  # round 0 starts from the packaged data, then is interrupted
        run_loop(loop_config_from_dict(settings), progress=False, backend=FakeBackend(interrupt))
    data = json.loads((tmp_path / "run" / "run.json").read_text())["data"]
    assert set(data) == {"gsm8k:train", "gsm8k:test"} and data["gsm8k:test"]["source"] == "packaged"

    pulled = tmp_path / "data"  # the same files in a folder: the user adds --data-dir, and another batch size
    pull_benchmarks(pulled, ["gsm8k"])
    resumed = {**settings, "data_dir": str(pulled), "eval": {"max_new_tokens": 16, "backend_args": {"batch_size": 2}},
               "sample": {**settings["sample"], "backend_args": {"batch_size": 1}}}
    answered = []

    def evaluate_then_interrupt(prompt: str, index: int) -> str:
        if len(answered) == 2:  # the two held-out problems are answered; round 1's sampling is interrupted
            raise KeyboardInterrupt
        answered.append(prompt)
        return "The answer is \\boxed{18}."

    with pytest.raises(KeyboardInterrupt):
        run_loop(loop_config_from_dict(resumed), progress=False, backend=FakeBackend(evaluate_then_interrupt))
    assert len(answered) == 2 and len(read_records(Sample, tmp_path / "run" / "round-0" / "eval" / "samples" /
                                                   "gsm8k.jsonl")) == 2
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["data_dir"] == str(pulled)
    with pytest.raises(ValueError, match=r"holds a loop run with other settings \(sample: "):
        run_loop(loop_config_from_dict({**resumed, "sample": {**resumed["sample"], "max_new_tokens": 17}}),
                 progress=False, backend=FakeBackend(interrupt))


def test_a_loop_without_its_data_leaves_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MATHLOOP_DATA_DIR", raising=False)
    config = loop_config_from_dict({"output_dir": str(tmp_path / "run"), "heldout": "minerva_math:test"})
    with pytest.raises(FileNotFoundError, match="minerva_math"):
        run_loop(config, progress=False, backend=FakeBackend(interrupt))
    assert not (tmp_path / "run").exists()


def test_training_problems_that_repeat_a_heldout_question_are_removed(tiny_model_dir, data_dir, tmp_path):
    config = tiny_loop(tmp_path, tiny_model_dir, data_dir, rounds=0, grpo={})
    repeat = Problem(id="repeat/0", benchmark="synthetic", gold=HELDOUT[1].gold,
                     question="  " + HELDOUT[1].question.upper() + "\n")  # case and spacing do not hide it
    write_jsonl(tmp_path / "problems.jsonl", TRAIN + [repeat])
    run_loop(config, progress=False, backend=FakeBackend(half_right))
    problems = read_records(Problem, tmp_path / "run" / "problems.jsonl")
    assert [p.id for p in problems] == [p.id for p in TRAIN]
    assert json.loads((tmp_path / "run" / "decontamination.json").read_text())["heldout_overlap"] == 1


def test_problems_per_round_gives_each_round_the_next_block(tmp_path):
    """Round r samples the r-th block of problems_per_round training problems (written to round-<r>/problems.jsonl
    once, so a resumed round samples the same block), wrapping around at the end of problems.jsonl."""
    from mathloop.pipeline.loop import _sample

    config = loop_config_from_dict({"output_dir": str(tmp_path / "run"), "problems_per_round": 3,
                                    "sample": {"n": 2, "temperatures": [0.8], "max_new_tokens": 16}})
    config.validate()
    write_jsonl(tmp_path / "run" / "problems.jsonl", TRAIN)
    seen = {}
    for r in (1, 2, 3):
        _sample(config, "fake", tmp_path / "run" / f"round-{r}", r, progress=False, backend=FakeBackend(half_right))
        seen[r] = sorted({s.problem_id for s in read_records(Sample, tmp_path / "run" / f"round-{r}" / "samples.jsonl")})
    ids = [p.id for p in TRAIN]
    assert seen == {1: sorted(ids[0:3]), 2: sorted(ids[3:6]), 3: sorted(ids[6:8] + ids[0:1])}
    with pytest.raises(ValueError, match="problems_per_round must be >= 1"):
        loop_config_from_dict({"output_dir": str(tmp_path / "x"), "problems_per_round": 0}).validate()


def test_stage_timer_sums_the_sessions_of_a_stage_and_counts_a_failed_one(tmp_path, monkeypatch):
    from mathloop.pipeline import loop

    clock = iter([100.0, 160.0, 200.0, 230.5, 300.0, 301.0])
    monkeypatch.setattr(loop.time, "time", lambda: next(clock))
    with loop.stage_timer(tmp_path / "round-1", "sample"):
        pass
    with pytest.raises(KeyboardInterrupt), loop.stage_timer(tmp_path / "round-1", "sample"):
        raise KeyboardInterrupt  # an interrupted session's time still counts
    with loop.stage_timer(tmp_path / "round-1", "sft"):
        pass
    assert loop.stage_seconds(tmp_path / "round-1") == {"sample": 90.5, "sft": 1.0}
    assert loop.stage_seconds(tmp_path / "round-2") == {}
    # a stage whose last file exists was finished earlier (maybe before timing existed): its check adds nothing
    done = tmp_path / "round-2" / "select.json"
    done.parent.mkdir()
    done.write_text("{}")
    with loop.stage_timer(tmp_path / "round-2", "select"):
        pass
    assert loop.stage_seconds(tmp_path / "round-2") == {} and not (tmp_path / "round-2" / "stage_seconds.json").exists()


@pytest.mark.parametrize("stage", ["rm", "sft", "grpo", "eval", "coverage"])
def test_a_stage_that_is_a_run_is_done_by_its_records_marker_and_an_old_folder_by_its_last_file(tmp_path, stage):
    from mathloop.pipeline.loop import STAGE_RUNS, stage_done
    from mathloop.runs import mark_run_finished, new_run_record, write_json

    folder, last_file = STAGE_RUNS[stage]
    run = tmp_path / "round-1" / folder
    (run / last_file).parent.mkdir(parents=True)
    assert not stage_done(tmp_path / "round-1", stage)
    (run / last_file).write_text("{}")
    assert stage_done(tmp_path / "round-1", stage)  # a folder from before run records: its last file
    write_json(run / "run.json", {"config": {}})
    assert stage_done(tmp_path / "round-1", stage)  # a record from before kinds and done markers: the same
    write_json(run / "run.json", new_run_record({}, kind=stage if stage != "coverage" else "eval"))
    assert not stage_done(tmp_path / "round-1", stage)  # the file is there, the run did not mark itself done
    mark_run_finished(run)
    assert stage_done(tmp_path / "round-1", stage)
    (run / last_file).unlink()
    assert stage_done(tmp_path / "round-1", stage)  # the marker decides, not the file


def test_the_loop_runs_again_a_trainer_whose_record_is_not_finished(tmp_path, monkeypatch):
    import mathloop.train.sft
    from mathloop.pipeline.loop import _sft
    from mathloop.runs import mark_run_finished, new_run_record, write_json

    trained = []
    monkeypatch.setattr(mathloop.train.sft, "train_sft", trained.append)
    config = loop_config_from_dict({"output_dir": str(tmp_path), "model": "m"})
    sft = tmp_path / "round-1" / "sft"
    (sft / "final").mkdir(parents=True)
    (sft / "final" / "config.json").write_text("{}")
    assert _sft(config, "m", tmp_path / "round-1") == str(sft / "final") and trained == []  # an old folder: done
    write_json(sft / "run.json", new_run_record({}, kind="sft"))
    _sft(config, "m", tmp_path / "round-1")
    assert len(trained) == 1  # final/ is there, but the run never marked itself done: the trainer decides
    mark_run_finished(sft)
    _sft(config, "m", tmp_path / "round-1")
    assert len(trained) == 1


def test_a_trainer_finding_its_final_model_whole_marks_its_record_finished(tmp_path):
    from mathloop.runs import new_run_record, run_finished, write_json
    from mathloop.train.sft import SFTRunConfig, train_sft

    (tmp_path / "data.jsonl").write_text("")
    out = tmp_path / "sft"
    (out / "final").mkdir(parents=True)  # a session killed between final/'s rename and its marker
    write_json(out / "run.json", new_run_record({}, kind="sft"))
    summary = train_sft(SFTRunConfig(model="m", data=str(tmp_path / "data.jsonl"), output_dir=str(out)))
    assert summary["already_done"] and run_finished(out)


def test_the_demo_does_not_warn_about_benchmarks_it_cannot_check(tmp_path):
    from mathloop.data import decontaminate
    from mathloop.pipeline.demo import demo_config
    from mathloop.pipeline.loop import _quiet_decontamination

    demo = demo_config(str(tmp_path / "demo"))
    with _quiet_decontamination(demo):
        assert decontaminate._PROCEDURAL.get()  # procedural problems: an info line, not a warning
    gsm8k = LoopConfig(output_dir=str(tmp_path / "gsm8k"), problems="gsm8k:train")
    with _quiet_decontamination(gsm8k):
        assert not decontaminate._PROCEDURAL.get()


def test_accuracy_svg_is_the_reports_chart_with_its_own_style():
    from mathloop.pipeline.loop import accuracy_svg

    rows = [{"round": 0, "acc": 0.271, "ci95": [0.247, 0.295]}, {"round": 1, "acc": 0.286, "ci95": [0.262, 0.311]},
            {"round": "grpo", "acc": 0.31, "ci95": [0.286, 0.336]}]
    svg = accuracy_svg(rows)
    assert svg.startswith('<svg class="chart"') and "<style>" in svg  # readable as a file on its own
    assert svg.count("<circle") == 3 and svg.count('stroke-width="1.5"') == 3  # a point and a 95% bar per round
    assert all(f">{name}</text>" in svg for name in ("0", "1", "grpo"))


def test_accuracy_svg_plots_coverage_over_rounds_where_it_was_measured():
    from mathloop.pipeline.loop import accuracy_svg

    def coverage(mean, maj, best):
        return {"n": 120, "samples": 8, "metrics": {
            "pass@1": {"mean": mean, "ci95": [mean - 0.05, mean + 0.05]},
            "maj@8": {"mean": maj, "ci95": [maj - 0.08, maj + 0.08]},
            "pass@8": {"mean": best, "ci95": [best - 0.08, best + 0.08]}}}

    rows = [{"round": 0, "acc": 0.43, "ci95": [0.37, 0.49], "coverage": coverage(0.374, 0.483, 0.642)},
            {"round": 1, "acc": 0.49, "ci95": [0.43, 0.55], "coverage": coverage(0.434, 0.542, 0.683)},
            {"round": "grpo", "acc": 0.5, "ci95": [0.44, 0.56]}]  # no coverage run: no point there
    svg = accuracy_svg(rows)
    assert "accuracy and coverage per round" in svg
    for name in ("greedy", "mean per sample (8 samples)", "maj@8", "pass@8"):
        assert f'class="legend">{name}</text>' in svg
    assert svg.count("<circle") == 3 + 3 * 2  # greedy in every round, the coverage metrics in rounds 0 and 1
    assert svg.count('stroke-width="1.5"') == 3 + 3 * 2


class TemperatureFake(FakeBackend):
    """A sampler whose diversity and accuracy follow the temperature: at 0.3 it repeats one right solution, at 0.8
    it writes a different right solution each time, at 1.5 it is wrong but for its first sample."""

    def _complete(self, prompt, index, params):
        completion = super()._complete(prompt, index, params)
        gold = next((g for q, g in GOLDS.items() if q in prompt), "0")
        if params.temperature <= 0.3:
            text = f"Add the numbers and check the sum. The answer is \\boxed{{{gold}}}."
        elif params.temperature <= 0.8:
            steps = " ".join(f"step{index}x{j}" for j in range(6))
            text = f"Solution {index}: {steps}. The answer is \\boxed{{{gold}}}."
        else:
            text = f"Guess {index}. The answer is \\boxed{{{gold if index == 0 else 987654}}}."
        return dataclasses.replace(completion, text=text, finish_reason="stop", stop_string=None)


def test_explore_samples_the_round_at_the_temperature_with_the_best_balance(tmp_path):
    """The explore section probes each candidate temperature on the round's first problems, writes the balance
    scores to temperature.json, samples the round at the best one, and a resumed round does not probe again."""
    from mathloop.pipeline.loop import _sample

    config = loop_config_from_dict({"output_dir": str(tmp_path / "run"),
                                    "sample": {"n": 4, "temperatures": [1.0], "max_new_tokens": 64},
                                    "explore": {"temperatures": [1.5, 0.3, 0.8], "problems": 3, "target": 4}})
    config.validate()
    write_jsonl(tmp_path / "run" / "problems.jsonl", TRAIN)
    backend = TemperatureFake()
    round_dir = tmp_path / "run" / "round-1"
    _sample(config, "fake", round_dir, 1, progress=False, backend=backend)
    chosen = json.loads((round_dir / "temperature.json").read_text())
    grid = {entry["temperature"]: entry for entry in chosen["grid"]}
    assert chosen["temperature"] == 0.8 and sorted(grid) == [0.3, 0.8, 1.5]
    assert grid[0.3]["balance"] == 0.25 and grid[0.3]["correct_per_problem"] == 4  # one distinct of four right
    assert grid[0.8]["balance"] == 1.0 and grid[0.8]["distinct_correct_per_problem"] == 4
    assert grid[1.5]["balance"] == pytest.approx(1 / 4) and grid[1.5]["solved"] == 1.0
    assert len(read_records(Problem, round_dir / "explore" / "problems.jsonl")) == 3
    samples = read_records(Sample, round_dir / "samples.jsonl")
    assert len(samples) == len(TRAIN) * 4 and all(s.response.startswith("Solution") for s in samples)  # at 0.8
    calls = len(backend.calls)
    import shutil

    (round_dir / "samples.jsonl").unlink()  # killed after the choice, before sampling: the round samples again
    shutil.rmtree(round_dir / "samples")
    _sample(config, "fake", round_dir, 1, progress=False, backend=backend)
    again = [params.temperature for _, params in backend.calls[calls:]]
    assert again and set(again) == {0.8}  # no probe ran again


@pytest.mark.parametrize("explore, message", [
    ({"temperature": [0.5]}, "unknown key"), ({"temperatures": []}, "list of numbers > 0"),
    ({"temperatures": [0.0, 0.7]}, "list of numbers > 0"), ({"problems": 0}, "problems must be a whole number"),
    ({"target": 2.5}, "target must be a whole number")])
def test_explore_section_errors_name_the_key(tmp_path, explore, message):
    with pytest.raises(ValueError, match=f"loop: explore: .*{message}"):
        loop_config_from_dict({"output_dir": str(tmp_path / "run"), "explore": explore}).validate()


def test_the_rm_of_a_round_trains_on_that_round_or_on_every_round_so_far(tmp_path):
    """reward_model.all_rounds: round r's RM reads the samples of rounds 1..r (more problems with both labels, as
    the selection issue asks); by default only round r's."""
    run = tmp_path / "run"
    plain = loop_config_from_dict({"output_dir": str(run), "reward_model": {"enabled": True}})
    every = loop_config_from_dict({"output_dir": str(run), "reward_model": {"all_rounds": True, "group_size": 4}})
    plain.validate()
    every.validate()
    assert plain.rm_config("m", plain.rm_samples(3), run / "round-3").samples == [str(run / "round-3" / "samples.jsonl")]
    config = every.rm_config("m", every.rm_samples(3), run / "round-3")
    assert config.samples == [str(run / f"round-{r}" / "samples.jsonl") for r in (1, 2, 3)]
    assert config.group_size == 4 and config.output_dir == str(run / "round-3" / "rm")
    with pytest.raises(ValueError, match="loop: reward_model: all_rounds must be true or false"):
        loop_config_from_dict({"output_dir": str(run), "reward_model": {"all_rounds": "yes"}}).validate()
