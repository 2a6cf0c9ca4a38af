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
