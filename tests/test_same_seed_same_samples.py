"""Issue 28 item 2: a sampled response depends on (run seed, problem id, sample index) alone. `mathloop sample` on the
tiny model writes byte-identical responses whether the run was uninterrupted, killed and resumed, grown in steps,
split into shards or run with another batch size (the Ray replicas: tests/test_ray.py)."""

from __future__ import annotations

import json

import pytest

from mathloop.data.synthetic import generate_problems
from mathloop.pipeline.sample import SampleConfig, read_samples, run_sample
from mathloop.records import write_jsonl

pytest.importorskip("torch")
pytestmark = [pytest.mark.training, pytest.mark.usefixtures("one_torch_thread")]

PROBLEMS = generate_problems(8, seed=2)


def responses(folder) -> list[tuple[str, int, str]]:
    return sorted((s.problem_id, s.sample_index, s.response) for s in read_samples(folder))


def config(tmp_path, model_dir, out: str, batch_size: int = 4, **changes) -> SampleConfig:
    write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    return SampleConfig(model=str(model_dir), problems=str(tmp_path / "problems.jsonl"), out=str(tmp_path / out),
                        n=3, temperatures=[1.0], max_new_tokens=12, seed=4,
                        backend_args={"batch_size": batch_size, "dtype": "float32"}, **changes)


def test_resume_shards_and_batch_size_draw_the_same_responses(tiny_model_dir, tmp_path):
    run_sample(config(tmp_path, tiny_model_dir, "whole"), progress=False)
    expected = responses(tmp_path / "whole")
    assert len(expected) == 24 and len({r[2] for r in expected}) > 12  # sampled: the responses differ
    assert json.loads((tmp_path / "whole" / "run.json").read_text())["sample_seeds"] == "per sample"

    run_sample(config(tmp_path, tiny_model_dir, "batch", batch_size=5), progress=False)
    assert responses(tmp_path / "batch") == expected

    for limit in (3, 5, None):  # a run grown in steps (the problem list grows with --limit)
        run_sample(config(tmp_path, tiny_model_dir, "grown", limit=limit), progress=False)
    assert responses(tmp_path / "grown") == expected

    # killed mid-run: the file holds 4 whole problems, one half-done problem and a torn line
    path = tmp_path / "whole" / "samples" / "pass-0.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    killed = tmp_path / "killed" / "samples"
    killed.mkdir(parents=True)
    (killed / "pass-0.jsonl").write_text("".join(lines[:14]) + lines[14][:30])
    (tmp_path / "killed" / "run.json").write_text((tmp_path / "whole" / "run.json").read_text())
    run_sample(config(tmp_path, tiny_model_dir, "killed", batch_size=2), progress=False)
    assert responses(tmp_path / "killed") == expected

    for shard in (0, 1):
        run_sample(config(tmp_path, tiny_model_dir, "shards", shard=shard, num_shards=2), progress=False)
    assert responses(tmp_path / "shards") == expected


def test_refill_and_static_batches_draw_the_same_responses(tiny_model_dir, tmp_path):
    run_sample(config(tmp_path, tiny_model_dir, "refill"), progress=False)
    static = config(tmp_path, tiny_model_dir, "static", batch_size=3)
    static.backend_args["refill"] = False
    run_sample(static, progress=False)
    assert responses(tmp_path / "static") == responses(tmp_path / "refill")


def test_the_run_record_says_when_responses_depend_on_batching(tmp_path, data_dir):
    from mathloop.backends.fake import FakeBackend

    run_sample(SampleConfig(model="fake", problems="gsm8k:test", data_dir=str(data_dir), limit=2, n=2,
                            out=str(tmp_path / "fake")), backend=FakeBackend(), progress=False)
    assert json.loads((tmp_path / "fake" / "run.json").read_text())["sample_seeds"] == "per call"
