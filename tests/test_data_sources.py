"""Benchmark data that ships with mathloop: evaluation with no data folder, checksums, `data pull` / `data list`,
the run record of the data a run read, and resume that follows the data's checksum, not its path."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from mathloop.backends.fake import FakeBackend
from mathloop.cli import main
from mathloop.data import benchmarks, sources
from mathloop.data.benchmarks import BENCHMARKS, load_benchmark
from mathloop.pipeline.evaluate import EvalConfig, run_eval
from mathloop.records import RecordError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_data_folder(monkeypatch):
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)


def right_for_gsm8k(prompt: str, index: int) -> str:
    golds = {"Janet": "18", "A robe takes": "3"}
    gold = next((g for key, g in golds.items() if key in prompt), "0")
    return f"Step by step. The answer is \\boxed{{{gold}}}."


def test_eval_of_two_gsm8k_problems_needs_no_data_folder(no_data_folder, tmp_path):
    out = tmp_path / "run"
    summary = run_eval(EvalConfig(model="fake", benchmarks=["gsm8k"], out=str(out), limit=2),
                       backend=FakeBackend(right_for_gsm8k), progress=False)
    gsm = summary["benchmarks"]["gsm8k"]
    assert (gsm["correct"], gsm["incorrect"], gsm["no_answer"]) == (2, 0, 0) and gsm["acc"]["mean"] == 1.0
    record = json.loads((out / "run.json").read_text())["data"]["gsm8k:test"]
    entry = sources.packaged_entry("gsm8k", "test")
    assert record["source"] == "packaged" and record["rows"] == 1319
    assert (record["version"], record["sha256"]) == (entry["version"], entry["sha256"])


def test_packaged_files_match_their_manifest_and_a_damaged_one_is_refused(tmp_path, monkeypatch):
    for entry in sources.packaged_manifest()["files"]:
        raw = gzip.decompress((sources.PACKAGED_DIR / entry["file"]).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == entry["sha256"] and len(raw.splitlines()) == entry["rows"]
        assert entry["licence"] and entry["version"] and entry["source"].startswith("https://")
    copy = tmp_path / "benchmark_data"
    shutil.copytree(sources.PACKAGED_DIR, copy)
    damaged = gzip.decompress((copy / "gsm8k" / "test.jsonl.gz").read_bytes()).replace(b"Janet", b"Jenny", 1)
    (copy / "gsm8k" / "test.jsonl.gz").write_bytes(gzip.compress(damaged))
    monkeypatch.setattr(sources, "PACKAGED_DIR", copy)
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    with pytest.raises(RecordError, match=r"test\.jsonl\.gz: checksum mismatch.*reinstall mathloop"):
        load_benchmark("gsm8k", limit=2)
    assert load_benchmark("math500", limit=1)  # the undamaged files still load


def test_packaged_wheel_data_stays_small_and_is_declared():
    total = sum((sources.PACKAGED_DIR / e["file"]).stat().st_size for e in sources.packaged_manifest()["files"])
    assert total < 5_000_000
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "data/benchmark_data/*/*.jsonl.gz" in package_data["mathloop"]
    assert "data/benchmark_data/*.json" in package_data["mathloop"]


def test_a_data_folder_comes_first_and_a_missing_set_says_where_to_get_it(no_data_folder, tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "Mine?", "answer": "#### 5"}\n')
    assert [(p.question, p.gold) for p in load_benchmark("gsm8k", tmp_path)] == [("Mine?", "5")]
    record = benchmarks.data_record("gsm8k", data_dir=tmp_path)
    assert record["version"] == "local" and record["rows"] == 1
    with pytest.raises(FileNotFoundError, match=r"aime24 \(test\): no data folder is set.*does not ship it.*"
                                                r"data pull --out DIR --benchmarks aime24.*--data-dir"):
        load_benchmark("aime24")


def test_data_pull_writes_the_harness_layout(no_data_folder, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["data", "pull", "--out", str(out), "--benchmarks", "gsm8k,math500"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.jsonl")) == [
        "gsm8k/test.jsonl", "gsm8k/train.jsonl", "math500/test.jsonl"]
    for name, split in (("gsm8k", "test"), ("gsm8k", "train"), ("math500", "test")):
        raw = (out / name / f"{split}.jsonl").read_bytes()  # byte for byte: the same checksum as the packaged copy
        assert hashlib.sha256(raw).hexdigest() == sources.packaged_entry(name, split)["sha256"]
    assert load_benchmark("gsm8k", out, limit=1)[0].gold == "18"
    assert "gsm8k/train.jsonl: 7473 rows from packaged data" in capsys.readouterr().out
    assert main(["data", "pull", "--out", str(tmp_path / "x"), "--benchmarks", "minerva_math"]) == 2
    assert "minerva_math (test)" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_data_pull_takes_the_rest_from_the_hub(no_data_folder, tmp_path, monkeypatch):
    """The Hub cannot be reached here; a stub `datasets` module stands in for it."""
    import sys
    import types

    rows = [{"problem": "Find x.", "answer": "204", "id": 60}]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: rows))
    done = benchmarks.pull_benchmarks(tmp_path, ["aime24"])
    assert done == {"aime24/test.jsonl": "1 rows from hub:HuggingFaceH4/aime_2024"}
    assert [(p.id, p.gold) for p in load_benchmark("aime24", tmp_path)] == [("aime24/60", "204")]


def test_data_list_names_source_version_and_licence(no_data_folder, capsys):
    assert main(["data", "list"]) == 0
    lines = {line.split()[0] + ":" + line.split()[1]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(lines) >= {f"{name}:test" for name in BENCHMARKS}
    assert "packaged" in lines["gsm8k:test"] and "MIT" in lines["gsm8k:test"] and "1319" in lines["gsm8k:test"]
    assert "hub (HuggingFaceH4/aime_2024)" in lines["aime24:test"] and "not shipped" in lines["aime24:test"]
    assert "not available" in lines["minerva_math:test"] and "CC BY-NC-SA" in lines["minerva_math:test"]


def test_eval_resumes_from_another_data_folder_with_the_same_data_but_not_other_data(no_data_folder, tmp_path):
    out = tmp_path / "run"
    backend = FakeBackend(right_for_gsm8k)
    run_eval(EvalConfig(model="fake", benchmarks=["gsm8k"], out=str(out), limit=1), backend=backend, progress=False)
    pulled = tmp_path / "data"
    benchmarks.pull_benchmarks(pulled, ["gsm8k"])
    run_eval(EvalConfig(model="fake", benchmarks=["gsm8k"], out=str(out), limit=2, data_dir=str(pulled),
                        backend_args={"batch_size": 4}), backend=backend, progress=False)
    assert json.loads((out / "run.json").read_text())["resumed"] == 1
    edited = (pulled / "gsm8k" / "test.jsonl").read_text().replace("Janet", "Jenny", 1)
    (pulled / "gsm8k" / "test.jsonl").write_text(edited)
    with pytest.raises(ValueError, match=r"other settings \(gsm8k:test \(sha256 9f098df7"):
        run_eval(EvalConfig(model="fake", benchmarks=["gsm8k"], out=str(out), limit=2, data_dir=str(pulled)),
                 backend=backend, progress=False)


def test_eval_of_a_missing_set_leaves_no_run_folder(no_data_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--model", "fake", "--benchmarks", "minerva_math", "--out", str(out), "--quiet"]) == 2
    assert "mathloop eval: error: minerva_math (test)" in capsys.readouterr().err
    assert not out.exists()


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"mathloop {version}"
