"""`sample` and `eval` on Ray actors (`mathloop.replicas`): a local Ray cluster started here, 2 replicas of the tiny
model. The Ray run writes the same rows as a run without Ray, sampled responses byte for byte, also when a replica
dies in the middle of a chunk."""

from __future__ import annotations

import json

import pytest

from mathloop.data.synthetic import generate_problems
from mathloop.pipeline.evaluate import EvalConfig, run_eval
from mathloop.pipeline.sample import SampleConfig, read_samples, run_sample
from mathloop.records import Sample, read_records, write_jsonl
from mathloop.replicas import CRASH_ONCE_ENV

ray = pytest.importorskip("ray", reason="pip install 'mathloop[ray]'")
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

PROBLEMS = generate_problems(10, seed=5)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local 2-CPU cluster whose replicas crash once, after generating their first chunk (the marker file)."""
    marker = tmp_path_factory.mktemp("ray") / "crashed"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {CRASH_ONCE_ENV: str(marker), "OMP_NUM_THREADS": "1"}})
    yield marker
    ray.shutdown()


def rows(samples: list[Sample]) -> list[tuple]:
    return sorted((s.problem_id, s.sample_index, s.response, s.pred, s.verdict, s.completion_tokens)
                  for s in samples)


def sample_config(tmp_path, model_dir, out: str, **changes) -> SampleConfig:
    write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    # batch 2 with n 2: chunks of 4 problems, so 3 chunks for 2 replicas
    return SampleConfig(model=str(model_dir), problems=str(tmp_path / "problems.jsonl"), out=str(tmp_path / out),
                        n=2, temperatures=[0.8], max_new_tokens=12, backend_args={"batch_size": 2, "dtype": "float32"},
                        **changes)


def test_sample_on_two_replicas_writes_what_one_process_writes_even_when_one_dies(tiny_model_dir, tmp_path,
                                                                                  ray_cluster):
    run_sample(sample_config(tmp_path, tiny_model_dir, "local"), progress=False)
    expected = rows(read_samples(tmp_path / "local"))
    assert len(expected) == 20

    summary = run_sample(sample_config(tmp_path, tiny_model_dir, "ray", ray_address="auto", ray_replicas=2),
                         progress=False)
    assert ray_cluster.exists(), "no replica died: the crash hook did not run"
    on_ray = read_records(Sample, tmp_path / "ray" / "samples" / "pass-0.jsonl")
    assert len(on_ray) == 20 and summary["samples"] == 20  # the lost chunk was generated again, once
    # each response is seeded by (seed, problem id, sample index) alone (issue 28): byte-identical to one process,
    # although one process batches all pending problems while replicas batch per chunk
    assert rows(on_ray) == expected and len({r[2] for r in expected}) > 10
    assert all(s.verdict in ("correct", "incorrect", "no_answer") and s.completion_tokens for s in on_ray)
    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert run["config"]["ray_replicas"] == 2

    # a resumed run of the folder (without Ray: where it ran does not change what it is) generates nothing
    again = run_sample(sample_config(tmp_path, tiny_model_dir, "ray"), progress=False)
    assert again["samples"] == 20 and len(read_records(Sample, tmp_path / "ray" / "samples" / "pass-0.jsonl")) == 20


def test_eval_on_replicas_resumes_a_partial_run(tiny_model_dir, tmp_path, ray_cluster):
    settings = dict(model=str(tiny_model_dir), benchmarks=["gsm8k"], max_new_tokens=8,
                    backend_args={"batch_size": 1, "dtype": "float32"})  # no padding: chunking cannot matter
    run_eval(EvalConfig(out=str(tmp_path / "local"), limit=6, **settings), progress=False)
    run_eval(EvalConfig(out=str(tmp_path / "ray"), limit=3, ray_address="auto", **settings), progress=False)
    metrics = run_eval(EvalConfig(out=str(tmp_path / "ray"), limit=6, ray_address="auto", ray_chunk=1, **settings),
                       progress=False)
    local = read_records(Sample, tmp_path / "local" / "samples" / "gsm8k.jsonl")
    on_ray = read_records(Sample, tmp_path / "ray" / "samples" / "gsm8k.jsonl")
    assert rows(on_ray) == rows(local)  # greedy: the same responses, each problem once
    assert json.loads((tmp_path / "ray" / "metrics.json").read_text()) == metrics
    assert metrics == json.loads((tmp_path / "local" / "metrics.json").read_text())


def test_bad_ray_settings_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="ray_replicas must be >= 1"):
        SampleConfig(problems="x.jsonl", out=str(tmp_path), ray_replicas=0).validate()
