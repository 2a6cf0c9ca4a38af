"""Run folders: one owner at a time, no write over an input, summaries that survive a kill, torn-line repair."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mathloop.records import JsonlAppender, drop_torn_last_line, read_jsonl
from mathloop.runs import (
    LOCK_NAME,
    RunLockedError,
    lock_run_dir,
    read_json,
    refuse_overwriting_inputs,
    write_json,
    write_text_atomic,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")

HOLD = textwrap.dedent("""
    import sys, time
    from mathloop.runs import lock_run_dir, RunLockedError
    try:
        with lock_run_dir(sys.argv[1]):
            print("won", flush=True)
            time.sleep(float(sys.argv[2]))
    except RunLockedError as e:
        print("refused", e, flush=True)
""")


def _python(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop("RANK", None)
    return subprocess.Popen([sys.executable, "-c", HOLD, *args], env=env, stdout=subprocess.PIPE, text=True, **kw)


def test_a_second_run_on_a_live_folder_is_refused_naming_folder_and_pid(tmp_path):
    holder = _python(str(tmp_path / "run"), "30")
    try:
        assert holder.stdout.readline().strip() == "won"
        with pytest.raises(RunLockedError) as refused:
            with lock_run_dir(tmp_path / "run"):
                pass
        assert str(tmp_path / "run") in str(refused.value) and f"pid {holder.pid}" in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    with lock_run_dir(tmp_path / "run"):  # the owner is gone: the folder is free again
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_racing_processes_cannot_both_own_a_folder(tmp_path):
    procs = [_python(str(tmp_path / "run"), "1.5") for _ in range(4)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert sum(out.startswith("won") for out in outputs) == 1, outputs
    assert sum(out.startswith("refused") for out in outputs) == 3, outputs


def test_a_stale_lock_of_a_dead_pid_is_taken_over_with_a_message(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING), lock_run_dir(tmp_path / "run"):
        owner = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid()
    assert f"taking over the lock of pid {dead.pid}" in caplog.text
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # released cleanly


def test_nested_locks_of_one_process_on_one_folder_nest(tmp_path):
    with lock_run_dir(tmp_path), lock_run_dir(tmp_path):
        pass
    with lock_run_dir(tmp_path):
        pass


def test_eval_on_a_folder_another_run_owns_is_refused(tmp_path, data_dir):
    from mathloop.backends.fake import FakeBackend
    from mathloop.pipeline.evaluate import EvalConfig, run_eval

    holder = _python(str(tmp_path / "run"), "30")
    try:
        assert holder.stdout.readline().strip() == "won"
        config = EvalConfig(model="fake", benchmarks=["gsm8k"], out=str(tmp_path / "run"), backend="fake", limit=2,
                            data_dir=str(data_dir))
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            run_eval(config, backend=FakeBackend(), progress=False)
        assert not (tmp_path / "run" / "samples").exists()
    finally:
        holder.kill()
        holder.wait()


def test_sample_shards_of_one_folder_each_own_their_part(tmp_path):
    from mathloop.runs import lock_run_dir as lock

    with lock(tmp_path, name=".mathloop.shard-0-of-2.lock"), lock(tmp_path, name=".mathloop.shard-1-of-2.lock"):
        pass


# ---- no write over an input --------------------------------------------------------------------------------

@pytest.mark.parametrize("link", ["same", "symlink", "hardlink", "dotted"])
def test_an_output_that_is_an_input_is_refused(tmp_path, link):
    source = tmp_path / "samples.jsonl"
    source.write_text("{}\n")
    output = {"same": source, "dotted": tmp_path / "." / "samples.jsonl", "symlink": tmp_path / "link.jsonl",
              "hardlink": tmp_path / "hard.jsonl"}[link]
    if link == "symlink":
        output.symlink_to(source)
    if link == "hardlink":
        os.link(source, output)
    with pytest.raises(ValueError, match="--output .* is also --samples"):
        refuse_overwriting_inputs({"--output": output}, {"--samples": [str(source)]})
    refuse_overwriting_inputs({"--output": tmp_path / "other.jsonl"}, {"--samples": [str(source)]})


def test_an_output_inside_an_input_folder_is_refused(tmp_path):
    (tmp_path / "s" / "samples").mkdir(parents=True)
    (tmp_path / "s" / "samples" / "pass-0.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="is also --samples"):
        refuse_overwriting_inputs({"--output": tmp_path / "s" / "samples" / "pass-0.jsonl"},
                                  {"--samples": [str(tmp_path / "s")]})


# ---- atomic summaries -----------------------------------------------------------------------------------------

def test_a_kill_during_a_summary_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    write_json(path, {"step": 1})

    class Killed(BaseException):
        pass

    real_fsync = os.fsync

    def killed_midway(fd):  # the new text is written but not yet in place
        raise Killed

    monkeypatch.setattr(os, "fsync", killed_midway)
    with pytest.raises(Killed):
        write_json(path, {"step": 2, "big": "x" * 100_000})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert read_json(path) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temporary file left behind


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "metrics.json"
    write_text_atomic(path, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        write_text_atomic(path, "new")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert path.read_text() == "old"


def test_a_corrupt_json_file_is_named_when_read(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"config": {"n": 3')
    with pytest.raises(ValueError, match=f"{path}:1: not valid JSON"):
        read_json(path)


# ---- torn-line repair -----------------------------------------------------------------------------------------

def test_a_complete_last_record_without_newline_is_kept_and_the_next_append_starts_a_new_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}')
    with JsonlAppender(path) as appender:
        appender.write([{"id": "c"}])
    assert [row["id"] for row in read_jsonl(path)] == ["a", "b", "c"]


@pytest.mark.parametrize("tail", ['{"id": "b", "x": [1, 2', '{"id": "b"', '17', '"text"', '{"id": "\xe9'[:-1]])
def test_a_last_line_that_is_not_a_whole_record_is_torn_and_cut(tmp_path, tail):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n' + tail)
    drop_torn_last_line(path)
    assert path.read_text() == '{"id": "a"}\n'


def test_a_cut_inside_a_multibyte_character_is_torn(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"id": "a"}\n' + '{"id": "\u00e9"}'.encode()[:-3])
    drop_torn_last_line(path)
    assert path.read_bytes() == b'{"id": "a"}\n'


def test_the_cli_refuses_a_folder_in_use_in_one_line(tmp_path, capsys):
    from mathloop.cli import main

    (tmp_path / "p.jsonl").write_text('{"question": "What is 3 + 4?", "gold": "7"}\n')
    holder = _python(str(tmp_path / "s"), "30")
    try:
        assert holder.stdout.readline().strip() == "won"
        code = main(["sample", "--model", "no-such-model", "--problems", str(tmp_path / "p.jsonl"),
                     "--out", str(tmp_path / "s"), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1
        assert f"{tmp_path / 's'} is in use by another run (pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()


def test_a_torn_training_log_line_does_not_block_resume(tmp_path):
    from mathloop.train.checkpoint import drop_metrics_after

    log_file = tmp_path / "metrics.jsonl"
    log_file.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    drop_metrics_after(log_file, 2)
    assert log_file.read_text() == '{"step": 1}\n{"step": 2}\n'


# ---- the run record's kind -----------------------------------------------------------------------------------

def _run_folder(folder: Path, kind: str, **facts) -> Path:
    from mathloop.runs import new_run_record

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "run.json", new_run_record({"model": "m"}, kind=kind, resume_keys=("model",), **facts))
    return folder


def _samples(path: Path, rows: int = 2) -> None:
    samples = [{"problem_id": f"p{i}", "prompt": "", "response": f"\\boxed{{{i}}}", "verdict": "correct",
                         "gold": str(i), "pred": str(i)} for i in range(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in samples))


@pytest.mark.parametrize("kind", ["eval", "sample", "synthesize", "rm", "sft", "grpo", "loop"])
def test_a_folder_of_each_kind_is_recognised_by_its_record_not_its_files(tmp_path, kind):
    from mathloop.runs import KINDS, read_run_record

    folder = _run_folder(tmp_path / "run", kind)
    # files another kind would have: the record decides, not them
    (folder / "rollouts").mkdir()
    (folder / "metrics.jsonl").write_text('{"step": 1, "reward_mean": 0.5}\n')
    record = read_run_record(folder)
    assert kind in KINDS and record["kind"] == kind and "kind_guessed" not in record
    assert record["resume_keys"] == ["model"]


def test_resuming_a_folder_of_another_kind_is_refused_and_a_resume_is_unfinished_until_it_ends(tmp_path):
    from mathloop.runs import finish_run_record, run_finished, start_run_record

    record, resumed = start_run_record(tmp_path / "run.json", {"n": 4}, ("n",), kind="eval")
    assert not resumed and record["kind"] == "eval" and not run_finished(tmp_path)
    finish_run_record(tmp_path / "run.json", record, 0.0)
    assert run_finished(tmp_path)
    with pytest.raises(ValueError, match=rf"^{tmp_path} holds a run of kind eval, not sample; use a new output"):
        start_run_record(tmp_path / "run.json", {"n": 4}, ("n",), kind="sample")
    record, resumed = start_run_record(tmp_path / "run.json", {"n": 4}, ("n",), kind="eval")
    assert resumed and not run_finished(tmp_path)  # written at once: a kill now leaves it unfinished
    with pytest.raises(ValueError, match="run kind 'Eval 2'"):
        start_run_record(tmp_path / "new" / "run.json", {}, kind="Eval 2")


def test_a_record_from_before_kinds_gets_the_kind_of_the_run_that_resumes_it(tmp_path):
    from mathloop.runs import read_run_record, start_run_record

    write_json(tmp_path / "run.json", {"config": {"n": 4}, "data": {}})
    record, resumed = start_run_record(tmp_path / "run.json", {"n": 4}, ("n",), kind="sample")
    assert resumed and record["kind"] == "sample" and read_run_record(tmp_path)["kind"] == "sample"


def test_a_checkpoint_is_refused_by_the_one_run_record_check(tmp_path):
    torch = pytest.importorskip("torch")
    from mathloop.train.checkpoint import load_checkpoint, save_checkpoint
    from mathloop.train.rm import RMTrainConfig

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    config = RMTrainConfig(samples=["s.jsonl"], output_dir=str(tmp_path), seed=1)
    path = save_checkpoint(tmp_path, model, optimizer, 3, config)
    assert load_checkpoint(path, model, optimizer, config, ("seed",)) == 3
    other = RMTrainConfig(samples=["s.jsonl"], output_dir=str(tmp_path), seed=2)
    with pytest.raises(ValueError, match=rf"^{tmp_path} holds a run with other settings \(seed: 1 -> 2\); use a new "
                                         rf"output_dir$"):
        load_checkpoint(path, model, optimizer, other, ("seed",))


@pytest.mark.parametrize("trainer, other", [("rm", "sft"), ("grpo", "sft"), ("sft", "grpo")])
def test_a_trainer_starting_afresh_refuses_a_folder_of_another_kind(tmp_path, trainer, other, capsys):
    from mathloop.cli import main

    folder = _run_folder(tmp_path / "run", other)
    (folder / "final").mkdir()  # a finished run: its model is not this trainer's either
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    (tmp_path / "s.jsonl").write_text("")
    (tmp_path / "d.jsonl").write_text("")
    argv = {"rm": ["rm", "train", "--samples", str(tmp_path / "s.jsonl")],
            "grpo": ["grpo", "--queries", str(tmp_path / "s.jsonl"), "--reward", "verifier"],
            "sft": ["sft", "--data", str(tmp_path / "d.jsonl")]}[trainer]
    assert main(argv + ["--output-dir", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{folder / 'run.json'} holds a run of kind {other}, not {trainer}" in err[0], err
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != LOCK_NAME} == before


def test_a_trainers_final_model_marks_its_record_finished(tmp_path):
    from mathloop.runs import run_finished
    from mathloop.train.checkpoint import finish_final, start_final

    _run_folder(tmp_path, "sft")
    start_final(tmp_path).mkdir()
    assert not run_finished(tmp_path)
    finish_final(tmp_path)
    assert run_finished(tmp_path) and (tmp_path / "final").is_dir()


def test_a_new_trainer_shows_in_the_report_as_itself_with_its_curves(tmp_path):
    from mathloop.report import build_report
    from mathloop.report.runs import read_run

    folder = _run_folder(tmp_path / "dpo-run", "dpo")
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / s, "margin": 0.1 * s}) + "\n"
                                                  for s in range(1, 4)))
    view = read_run(folder)
    assert view.kind == "dpo" and [(c.kind, len(c.records)) for c in view.curves] == [("dpo", 3)]
    build_report([str(folder)], tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "(dpo: " in page and "DPO, 3 logged steps" in page and 'aria-label="margin"' in page
    # ... also inside a loop stage, next to the SFT run
    loop = _run_folder(tmp_path / "loop", "loop", stages=[{"name": "1", "folder": "round-1"}])
    (loop / "round-1").mkdir()
    (folder).rename(loop / "round-1" / "dpo")
    assert [(c.label, c.kind) for c in read_run(loop).curves] == [("loop:1 dpo", "dpo")]


def test_a_sample_folder_shows_as_training_samples_not_as_an_evaluation(tmp_path):
    from mathloop.report.runs import read_run

    folder = _run_folder(tmp_path / "s", "sample")
    _samples(folder / "samples" / "pass-0.jsonl", rows=3)
    view = read_run(folder)
    assert view.kind == "sample" and [(s.evaluation, len(s.samples)) for s in view.sample_sets] == [(False, 3)]


def test_compare_and_report_find_a_loops_stages_in_its_record(tmp_path):
    """Stage folders named in the loop's record are found whatever they are called (no round-N glob)."""
    from mathloop.pipeline.compare import resolve_run
    from mathloop.report.runs import read_run

    loop = _run_folder(tmp_path / "loop", "loop", stages=[{"name": "0", "folder": "start"},
                                                          {"name": "grpo", "folder": "rl"}])
    for stage in ("start", "rl"):
        _samples(_run_folder(loop / stage / "eval", "eval") / "samples" / "gsm8k.jsonl")
    _run_folder(loop / "rl", "grpo", queries={"kept": 2})
    (loop / "rl" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    assert resolve_run(f"{loop}:grpo") == loop / "rl" / "eval" and resolve_run(f"{loop}:0") == loop / "start" / "eval"
    with pytest.raises(FileNotFoundError, match="has no stage round-1 .*its stages: 0, grpo"):
        resolve_run(f"{loop}:1")
    with pytest.raises(ValueError, match=f"is a loop folder; name a round: {loop}:0, {loop}:grpo"):
        resolve_run(str(loop))
    with pytest.raises(FileNotFoundError, match="no evaluation \\(it holds a grpo run"):
        resolve_run(str(_run_folder(tmp_path / "bare-grpo", "grpo")))
    view = read_run(loop)
    assert [s.label for s in view.sample_sets] == ["loop:0", "loop:grpo"]
    assert [(c.label, c.kind) for c in view.curves] == [("loop:grpo", "grpo")]
    assert ("loop:grpo: GRPO queries", {"kept": 2}) in view.data_reports


@pytest.mark.parametrize("layout, kind", [
    ({"round-0/eval/samples/gsm8k.jsonl": ""}, "loop"),
    ({"samples/gsm8k.jsonl": ""}, "eval"),
    ({"samples/pass-0.jsonl": ""}, "sample"),
    ({"metrics.jsonl": '{"step": 1, "loss": 1}\n', "rm_data.jsonl": ""}, "rm"),
    ({"metrics.jsonl": '{"step": 1, "loss": 1}\n'}, "sft"),
    ({"metrics.jsonl": '{"step": 1, "reward_mean": 1}\n'}, "grpo"),
    ({"metrics.jsonl": '{"step": 1, "loss": 1}\n', "rollouts/0.jsonl": ""}, "grpo"),
])
def test_old_folders_without_a_kind_are_recognised_from_their_files(tmp_path, layout, kind):
    from mathloop.runs import read_run_record

    write_json(tmp_path / "run.json", {"config": {}, "data": {"groups": 3}})  # a record from before kinds
    for name, text in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    record = read_run_record(tmp_path)
    assert (record["kind"], record["kind_guessed"], record["data"]) == (kind, True, {"groups": 3})
    assert read_run_record(tmp_path / "round-0") is None  # a stage folder is not a run


def test_an_old_loop_folder_lists_its_rounds_in_order_then_grpo(tmp_path):
    from mathloop.runs import read_run_record

    for name in ("round-10", "round-2", "round-0", "grpo-after-round-10", "round-x"):
        (tmp_path / name).mkdir()
    assert read_run_record(tmp_path)["stages"] == [
        {"name": "0", "folder": "round-0"}, {"name": "2", "folder": "round-2"}, {"name": "10", "folder": "round-10"},
        {"name": "grpo", "folder": "grpo-after-round-10"}]
