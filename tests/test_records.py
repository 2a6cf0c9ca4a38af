from __future__ import annotations

import json

import pytest

from mathloop.records import JsonlAppender, Problem, RecordError, Sample, read_records, write_jsonl


def test_problem_and_sample_round_trip(tmp_path):
    problems = [Problem(id="p/0", benchmark="gsm8k", question="1+1?", gold="2", metadata={"answer_type": "math"}),
                Problem(id="p/1", benchmark="mmlu_stem", question="Pick", gold="B", choices=["x", "y"])]
    write_jsonl(tmp_path / "p.jsonl", problems)
    assert read_records(Problem, tmp_path / "p.jsonl") == problems
    sample = Sample(problem_id="p/0", prompt="P", response="\\boxed{2}", pred="2", verdict="correct", rm_score=0.5,
                    prompt_tokens=3, completion_tokens=4, model="m", sampling={"temperature": 0.7},
                    tool_output_spans=[[1, 3]])
    write_jsonl(tmp_path / "s.jsonl", [sample])
    assert read_records(Sample, tmp_path / "s.jsonl") == [sample]


def test_unknown_fields_are_kept_in_metadata(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "benchmark": "b", "question": "q", "level": 5}) + "\n")
    assert read_records(Problem, path)[0].metadata == {"level": 5}


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"problem_id": "a", "prompt": "p", "response": "r"}\n\n{not json}\n')
    with pytest.raises(RecordError, match=r"s\.jsonl:3: not valid JSON"):
        read_records(Sample, path)


def test_missing_field_is_named(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"problem_id": "a", "prompt": "p"}\n')
    with pytest.raises(RecordError, match="missing field.*response"):
        read_records(Sample, path)


def test_appender_drops_a_half_written_last_line(tmp_path):
    path = tmp_path / "s.jsonl"
    with JsonlAppender(path) as out:
        out.write([Sample(problem_id="a", prompt="p", response="r")])
    with path.open("a") as f:
        f.write('{"problem_id": "b", "pro')  # a kill in the middle of a write
    with JsonlAppender(path) as out:
        out.write([Sample(problem_id="c", prompt="p", response="r")])
    assert [s.problem_id for s in read_records(Sample, path)] == ["a", "c"]
