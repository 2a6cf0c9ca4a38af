"""Every bad input a user can give gets exit code 2 and one line `mathloop <command>: error: ...` that names the
file, line, key or flag. Each row: the case, a function making the argv in a temporary folder (it may also plant
files or a fault), and the fragments the line must hold ({tmp} is the folder)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

import mathloop.runs
from mathloop.cli import main

SAMPLE = {"problem_id": "p", "prompt": "What is 3 + 4?", "response": "\\boxed{7}", "gold": "7",
          "verdict": "correct", "metadata": {"question": "What is 3 + 4?"}}


def write(path: Path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def samples(tmp: Path) -> str:
    return write(tmp / "samples.jsonl", json.dumps(SAMPLE) + "\n")


def problems(tmp: Path) -> str:
    return write(tmp / "problems.jsonl", '{"question": "What is 3 + 4?", "gold": "7"}\n')


def no_space(monkeypatch) -> None:
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mathloop.runs.os, "fsync", full)


def read_only(monkeypatch) -> None:
    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(mathloop.runs, "open", refused, raising=False)


def yaml_file(tmp: Path, text: str) -> str:
    return write(tmp / "settings.yaml", text)


EVAL = ["eval", "--model", "no-such-model", "--benchmarks", "gsm8k", "--quiet"]
SAMPLE_CMD = ["sample", "--model", "no-such-model", "--quiet"]
SYNTH = ["synthesize", "--model", "no-such-model"]

CASES = [
    # -- flags
    ("eval --limit -1", lambda t, m: EVAL + ["--out", f"{t}/r", "--limit", "-1"], ["argument --limit", ">= 1"]),
    ("eval --limit two", lambda t, m: EVAL + ["--out", f"{t}/r", "--limit", "two"], ["argument --limit", "'two'"]),
    ("eval --tool-timeout 0", lambda t, m: EVAL + ["--out", f"{t}/r", "--tool-timeout", "0"],
     ["argument --tool-timeout", "> 0"]),
    ("eval --n 0", lambda t, m: EVAL + ["--out", f"{t}/r", "--n", "0"], ["argument --n", ">= 1"]),
    ("eval without --out", lambda t, m: EVAL, ["--out"]),
    ("sample --limit -1", lambda t, m: SAMPLE_CMD + ["--problems", problems(t), "--out", f"{t}/s", "--limit", "-1"],
     ["argument --limit", ">= 1"]),
    ("sample --num-shards 0",
     lambda t, m: SAMPLE_CMD + ["--problems", problems(t), "--out", f"{t}/s", "--num-shards", "0"],
     ["argument --num-shards", ">= 1"]),
    ("sample --shard 2 --num-shards 2",
     lambda t, m: SAMPLE_CMD + ["--problems", problems(t), "--out", f"{t}/s", "--shard", "2", "--num-shards", "2"],
     ["shard must be in 0..1"]),
    ("sample --temperatures hot",
     lambda t, m: SAMPLE_CMD + ["--problems", problems(t), "--out", f"{t}/s", "--temperatures", "hot"],
     ["argument --temperatures", "'hot'"]),
    ("sample --temperatures -1",
     lambda t, m: SAMPLE_CMD + ["--problems", problems(t), "--out", f"{t}/s", "--temperatures=0.7,-1"],
     ["argument --temperatures", ">= 0"]),
    ("synthesize --chunk-size 0", lambda t, m: SYNTH + ["--seeds", problems(t), "--out", f"{t}/new.jsonl",
                                                        "--chunk-size", "0"], ["argument --chunk-size", ">= 1"]),
    ("grade --timeout 0", lambda t, m: ["grade", "--input", samples(t), "--output", f"{t}/o.jsonl", "--timeout", "0"],
     ["argument --timeout", "> 0"]),
    # -- input files
    ("grade: missing input", lambda t, m: ["grade", "--input", f"{t}/nope.jsonl", "--output", f"{t}/o.jsonl"],
     ["{tmp}/nope.jsonl: No such file or directory"]),
    ("grade: empty input", lambda t, m: ["grade", "--input", write(t / "empty.jsonl", ""), "--output",
                                         f"{t}/o.jsonl"], ["{tmp}/empty.jsonl: no rows to grade"]),
    ("grade: response not a string",
     lambda t, m: ["grade", "--input", write(t / "in.jsonl", json.dumps({**SAMPLE, "response": 7}) + "\n"),
                   "--output", f"{t}/o.jsonl"], ["{tmp}/in.jsonl:1: response must be a string"]),
    ("grade: a line that is not JSON",
     lambda t, m: ["grade", "--input", write(t / "in.jsonl", json.dumps(SAMPLE) + "\n{oops\n"),
                   "--output", f"{t}/o.jsonl"], ["{tmp}/in.jsonl:2: not valid JSON"]),
    ("eval: empty benchmark file",
     lambda t, m: EVAL + ["--out", f"{t}/r", "--data-dir", str(Path(write(t / "data/gsm8k/test.jsonl", "")).parents[1])],
     ["{tmp}/data/gsm8k/test.jsonl: no problems"]),
    ("synthesize: empty seeds file", lambda t, m: SYNTH + ["--seeds", write(t / "seeds.jsonl", "\n"), "--out",
                                                           f"{t}/new.jsonl"], ["{tmp}/seeds.jsonl: no problems"]),
    ("exec: not UTF-8", lambda t, m: ["exec", write(t / "prog.py", b"print('\xff\xfe')\n")],
     ["{tmp}/prog.py: not UTF-8 text"]),
    ("exec: a folder", lambda t, m: ["exec", str(t)], ["{tmp}: Is a directory"]),
    ("exec: missing file", lambda t, m: ["exec", f"{t}/nope.py"], ["{tmp}/nope.py: No such file or directory"]),
    # -- settings files
    ("sft: epochs: two", lambda t, m: ["sft", "--config", yaml_file(t, f"data: a.jsonl\noutput_dir: {t}/o\n"
                                                                       "epochs: two\n")],
     ["{tmp}/settings.yaml: epochs must be an integer, got 'two'"]),
    ("rm: epochs: two", lambda t, m: ["rm", "train", "--config", yaml_file(t, f"samples: a.jsonl\noutput_dir: {t}/o\n"
                                                                             "epochs: two\n")],
     ["{tmp}/settings.yaml: epochs must be an integer, got 'two'"]),
    ("grpo: steps: two", lambda t, m: ["grpo", "--config", yaml_file(t, f"output_dir: {t}/o\nqueries: q.jsonl\n"
                                                                        "steps: two\n")],
     ["{tmp}/settings.yaml: steps must be an integer, got 'two'"]),
    ("grpo: lora: maybe", lambda t, m: ["grpo", "--config", yaml_file(t, f"output_dir: {t}/o\nqueries: q.jsonl\n"
                                                                         "lora: maybe\n")],
     ["{tmp}/settings.yaml: lora must be true or false, got 'maybe'"]),
    ("loop: rounds: two", lambda t, m: ["loop", "--config", yaml_file(t, f"output_dir: {t}/o\nrounds: two\n")],
     ["{tmp}/settings.yaml: rounds must be an integer, got 'two'"]),
    ("loop: limit: -5", lambda t, m: ["loop", "--config", yaml_file(t, f"output_dir: {t}/o\nlimit: -5\n")],
     ["{tmp}/settings.yaml", "limit must be >= 1"]),
    ("loop: sft epochs: two", lambda t, m: ["loop", "--config", yaml_file(t, f"output_dir: {t}/o\nsft:\n  epochs: two\n")],
     ["loop: sft: epochs must be an integer, got 'two'"]),
    ("loop: sample n: two", lambda t, m: ["loop", "--config", yaml_file(t, f"output_dir: {t}/o\nsample:\n  n: two\n")],
     ["{tmp}/settings.yaml: loop: sample: n must be an integer, got 'two'"]),
    ("loop: eval tool_timeout: 0",
     lambda t, m: ["loop", "--config", yaml_file(t, f"output_dir: {t}/o\neval:\n  tool_timeout: 0\n")],
     ["{tmp}/settings.yaml", "tool_timeout must be > 0"]),
    ("loop: malformed YAML", lambda t, m: ["loop", "--config", yaml_file(t, "output_dir: o\nrounds: [1\nseed: 2\n")],
     ["{tmp}/settings.yaml:", "not valid YAML"]),
    ("sft: malformed YAML", lambda t, m: ["sft", "--config", yaml_file(t, "data: a.jsonl\n  epochs: : 3\n")],
     ["{tmp}/settings.yaml:2: not valid YAML"]),
    ("sft: missing config file", lambda t, m: ["sft", "--config", f"{t}/nope.yaml"],
     ["{tmp}/nope.yaml: No such file or directory"]),
    # -- outputs
    ("select --output = --samples", lambda t, m: ["select", "--samples", samples(t), "--output", f"{t}/samples.jsonl"],
     ["--output {tmp}/samples.jsonl is also --samples"]),
    ("grade --metrics = --input", lambda t, m: ["grade", "--input", samples(t), "--output", f"{t}/o.jsonl",
                                                "--metrics", f"{t}/samples.jsonl"], ["--metrics", "is also --input"]),
    ("synthesize --out = --seeds", lambda t, m: SYNTH + ["--seeds", problems(t), "--out", f"{t}/problems.jsonl"],
     ["--out {tmp}/problems.jsonl is also --seeds"]),
    ("sample: --problems inside --out/samples",
     lambda t, m: SAMPLE_CMD + ["--problems", write(t / "s/samples/p.jsonl", '{"question": "1+1?"}\n'),
                                "--out", f"{t}/s"], ["--out {tmp}/s/samples/ is also --problems"]),
    ("eval --out is a file", lambda t, m: EVAL + ["--out", samples(t)], ["{tmp}/samples.jsonl: is a file"]),
    ("sample --out is a file", lambda t, m: SAMPLE_CMD + ["--problems", problems(t), "--out", samples(t)],
     ["{tmp}/samples.jsonl: is a file"]),
    ("select --output in a read-only folder",
     lambda t, m: (read_only(m), ["select", "--samples", samples(t), "--output", f"{t}/ro/sft.jsonl"])[1],
     ["{tmp}/ro/sft.jsonl: Permission denied"]),
    ("select --output on a full disk",
     lambda t, m: (no_space(m), ["select", "--samples", samples(t), "--output", f"{t}/sft.jsonl"])[1],
     ["{tmp}/sft.jsonl: No space left on device"]),
    # -- issue 28 item 3
    ("grade: a number as gold",
     lambda t, m: ["grade", "--input", write(t / "in.jsonl", json.dumps({**SAMPLE, "gold": 7}) + "\n"),
                   "--output", f"{t}/o.jsonl"], ["{tmp}/in.jsonl:1: gold must be a string or null, got 7",
                                                 'write it as "7"']),
    ("eval --max-tool-calls -1", lambda t, m: EVAL + ["--out", f"{t}/r", "--max-tool-calls", "-1"],
     ["argument --max-tool-calls", ">= 0"]),
    ("sample --max-tool-calls -1",
     lambda t, m: SAMPLE_CMD + ["--problems", problems(t), "--out", f"{t}/s", "--max-tool-calls", "-1"],
     ["argument --max-tool-calls", ">= 0"]),
    ("loop: eval max_tool_calls: -1",
     lambda t, m: ["loop", "--config", yaml_file(t, f"output_dir: {t}/o\neval:\n  max_tool_calls: -1\n")],
     ["max_tool_calls must be >= 0"]),
    ("eval --shots -1", lambda t, m: EVAL + ["--out", f"{t}/r", "--shots", "-1"], ["argument --shots", ">= 0"]),
    ("eval --data-dir names a file", lambda t, m: EVAL + ["--out", f"{t}/r", "--data-dir", samples(t)],
     ["--data-dir {tmp}/samples.jsonl: is a file, not a folder", "<benchmark>/<split>.jsonl"]),
    ("compare --resamples -1", lambda t, m: ["compare", samples(t), samples(t), "--resamples", "-1"],
     ["argument --resamples", ">= 1"]),
    ("compare: no problem in common",
     lambda t, m: ["compare", samples(t), write(t / "other.jsonl", json.dumps({**SAMPLE, "problem_id": "q"}) + "\n")],
     ["share no problem to pair", "'p'", "'q'"]),
    ("select: sample_index: zero",
     lambda t, m: ["select", "--samples", write(t / "in.jsonl", json.dumps({**SAMPLE, "sample_index": "zero"}) + "\n"),
                   "--output", f"{t}/sft.jsonl"],
     ['{tmp}/in.jsonl: record 1: sample_index must be an integer, got "zero"']),
    ("grade: not UTF-8",
     lambda t, m: ["grade", "--input", write(t / "in.jsonl", json.dumps(SAMPLE).encode() + b'\n{"response": "\xff"}\n'),
                   "--output", f"{t}/o.jsonl"],
     ["{tmp}/in.jsonl:2: not UTF-8 text", "save the file as UTF-8"]),
    ("select: not UTF-8", lambda t, m: ["select", "--samples", write(t / "in.jsonl", b'{"problem_id": "\xe9"}\n'),
                                        "--output", f"{t}/sft.jsonl"], ["{tmp}/in.jsonl:1: not UTF-8 text"]),
    ("sft: settings not UTF-8", lambda t, m: ["sft", "--config", write(t / "settings.yaml", b"data: \xff.jsonl\n")],
     ["{tmp}/settings.yaml: not UTF-8 text"]),
    ("eval: benchmark file not UTF-8",
     lambda t, m: EVAL + ["--out", f"{t}/r", "--data-dir",
                          str(Path(write(t / "data/gsm8k/test.jsonl", b'{"question": "\xff"}\n')).parents[1])],
     ["{tmp}/data/gsm8k/test.jsonl:1: not UTF-8 text"]),
    ("eval --model a folder that is not a model",
     lambda t, m: EVAL[:2] + [str(Path(write(t / "notamodel/readme.txt", "x")).parent)] + EVAL[3:]
     + ["--out", f"{t}/r", "--limit", "1"], ["--model {tmp}/notamodel: a folder without config.json", "Hub id"]),
    ("sft without the training extra",
     lambda t, m: (m.setitem(__import__("sys").modules, "datasets", None),
                   m.setattr("mathloop.train.sft.train_sft", lambda config: __import__("datasets")),
                   ["sft", "--config", yaml_file(t, f"data: {samples(t)}\noutput_dir: {t}/o\n")])[-1],
     ["datasets is not installed (mathloop sft needs it): pip install 'mathloop[train]'"]),
    ("select on a full disk (no file named by the error)",
     lambda t, m: (m.setattr("mathloop.pipeline.select.run_select",
                             lambda config: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))),
                   ["select", "--samples", samples(t), "--output", f"{t}/sft.jsonl"])[-1],
     ["{tmp}/sft.jsonl: No space left on device", "run the same command again"]),
    ("grade --metrics on a full disk",
     lambda t, m: (no_space(m), ["grade", "--input", samples(t), "--output", f"{t}/o.jsonl", "--workers", "1",
                                 "--metrics", f"{t}/m.json"])[1], ["{tmp}/o.jsonl.partial: No space left on device"]),
]


@pytest.mark.parametrize("argv, fragments", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, argv, fragments):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # should a case get as far as loading a model, it fails at once
    args = argv(tmp_path, monkeypatch)
    try:
        code = main(args)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mathloop {args[0]}"), lines[0]
    assert "error: " in lines[0]
    for fragment in fragments:
        assert fragment.format(tmp=tmp_path) in lines[0], lines[0]


def test_select_onto_its_own_samples_file_leaves_the_samples_unchanged(tmp_path, capsys):
    source = samples(tmp_path)
    before = Path(source).read_bytes()
    assert main(["select", "--samples", source, "--output", source]) == 2
    assert Path(source).read_bytes() == before
    link = tmp_path / "link.jsonl"
    link.symlink_to(source)
    assert main(["select", "--samples", source, "--output", str(link)]) == 2
    assert Path(source).read_bytes() == before


def test_a_full_disk_keeps_the_previous_output(tmp_path, monkeypatch, capsys):
    source = samples(tmp_path)
    assert main(["select", "--samples", source, "--output", f"{tmp_path}/sft.jsonl"]) == 0
    before = (tmp_path / "sft.jsonl").read_bytes()
    no_space(monkeypatch)
    assert main(["select", "--samples", source, "--output", f"{tmp_path}/sft.jsonl"]) == 2
    assert (tmp_path / "sft.jsonl").read_bytes() == before
