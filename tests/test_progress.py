"""Progress that moves and output that obeys --quiet: per-sequence reports from the hf backend, problems written as
they finish (a killed run keeps them), --quiet on every command, and the bar helper."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import pytest

from mathloop.backends.base import SamplingParams
from mathloop.backends.fake import FakeBackend
from mathloop.pipeline.evaluate import EvalConfig, run_eval
from mathloop.records import Problem, Sample, read_records

PROBLEMS = [Problem(id=f"toy-{i}", question=f"What is {i} + 1?", gold=str(i + 1), benchmark="toy") for i in range(20)]


def answer(prompt: str, j: int) -> str:
    return "The answer is \\boxed{1}."


class Interrupted(KeyboardInterrupt):
    pass


class StreamingFake(FakeBackend):
    """Reports each completion as it finishes, like the hf backend, and is killed after `kill_after` of them."""

    reports_each_completion = True

    def __init__(self, kill_after: int | None = None) -> None:
        super().__init__(answer)
        self.kill_after, self.reported = kill_after, 0

    def generate(self, prompts, params, on_progress=None):
        out = super().generate(prompts, params)
        for i, outs in enumerate(out):
            for j, completion in enumerate(outs):
                if self.reported == self.kill_after:
                    raise Interrupted
                self.reported += 1
                if on_progress:
                    on_progress(i, j, completion)
        return out


class BatchFake(FakeBackend):
    """A backend without per-completion reports, killed on its `kill_on`-th call."""

    batch_size = 4

    def __init__(self, kill_on: int) -> None:
        super().__init__(answer)
        self.kill_on = kill_on

    def generate(self, prompts, params):
        if len(self.calls) + 1 == self.kill_on:
            raise Interrupted
        return super().generate(prompts, params)


def _eval(tmp_path, backend) -> None:
    config = EvalConfig(out=str(tmp_path / "run"), n=2, temperature=0.7, max_new_tokens=16, shots=0)
    run_eval(config, backend=backend, progress=False, problems={"toy": PROBLEMS})


def _written(tmp_path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in read_records(Sample, tmp_path / "run" / "samples" / "toy.jsonl"):
        counts[s.problem_id] = counts.get(s.problem_id, 0) + 1
    return counts


def test_a_killed_eval_keeps_every_problem_finished_before_the_kill(tmp_path):
    with pytest.raises(Interrupted):
        _eval(tmp_path, StreamingFake(kill_after=7))  # 3 problems x 2 samples done, the 4th half done
    assert sorted(_written(tmp_path).values()) == [2, 2, 2]  # (per 32-problem chunk before: nothing)
    resumed = StreamingFake()
    _eval(tmp_path, resumed)
    assert resumed.reported == 2 * 17  # only the 17 unfinished problems are generated again
    assert set(_written(tmp_path).values()) == {2} and len(_written(tmp_path)) == 20


def test_a_backend_without_reports_loses_at_most_one_batch(tmp_path):
    with pytest.raises(Interrupted):
        _eval(tmp_path, BatchFake(kill_on=3))  # batch of 4 sequences = 2 problems x 2 samples per call
    assert sorted(_written(tmp_path).values()) == [2, 2, 2, 2]


def test_hf_backend_reports_each_finished_sequence(tiny_model_dir):
    from mathloop.backends import load_backend

    backend = load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=4)
    prompts = ["What is 2 + 3?", "Janet has 16 eggs.", "Let x = 7"]
    for params in (SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=1),
                   SamplingParams(n=2, max_new_tokens=6)):  # greedy: one generation stands for the n samples
        calls = []
        out = backend.generate(prompts, params, on_progress=lambda i, j, c: calls.append((i, j, c)))
        assert len(calls) == params.n * len(prompts)
        assert sorted((i, j) for i, j, _ in calls) == [(i, j) for i in range(3) for j in range(params.n)]
        assert all(out[i][j] is c for i, j, c in calls)


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_command_takes_quiet():
    from mathloop.cli import COMMANDS, build_parser

    parser = build_parser()
    commands = [p for p in _parsers(parser) if p is not parser]
    assert len(commands) > len(COMMANDS)  # the commands and the actions of rm and data
    missing = [p.prog for p in commands if "--quiet" not in p._option_string_actions]
    assert not missing
    assert build_parser("data").parse_args(["data", "list", "--quiet"]).quiet
    assert build_parser("grade").parse_args(["grade", "--input", "a", "--output", "b", "--quiet"]).quiet


def test_quiet_run_writes_no_bar_and_no_info_lines(tmp_path, capsys):
    import logging

    from mathloop import progress

    try:
        progress.configure_output(quiet=True)
        logging.getLogger("mathloop.test").info("a stage message")
        _eval(tmp_path, StreamingFake())
        with progress.progress_bar(3, "stage", "seq") as bar:
            bar.update(3)
        assert capsys.readouterr().err == ""
        progress.configure_output()
        with progress.progress_bar(3, "stage", "seq") as bar:
            bar.update(3)
        err = capsys.readouterr().err
        assert "stage: 3/3 seq" in err and "seq/s" in err
    finally:
        progress.configure_output()


def test_grade_prints_the_metrics_as_eval_does(tmp_path, capsys):
    import json

    from mathloop.cli import main
    from mathloop.metrics import format_metric, summarize

    rows = [Sample(problem_id=f"p{i}", prompt="", response=f"\\boxed{{{i % 2}}}", gold="1") for i in range(4)]
    src = tmp_path / "samples.jsonl"
    src.write_text("".join(json.dumps(s.__dict__) + "\n" for s in rows))
    assert main(["grade", "--input", str(src), "--output", str(tmp_path / "o.jsonl"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    eval_acc = summarize([{"verdicts": ["correct" if i % 2 else "incorrect"], "preds": [str(i % 2)]}
                          for i in range(4)], [1])["benchmarks"]["all"]["acc"]
    assert f"| 4 | {format_metric(eval_acc)} |" in out  # percent with the interval, e.g. 50.0 [15.0, 85.0]


@contextlib.contextmanager
def transformers_log() -> Iterator[list[str]]:
    """The messages transformers logs while the block runs (any of its loggers)."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    messages: list[str] = []
    try:
        yield messages
    finally:
        hf_logger.removeHandler(handler)
        messages += [r.getMessage() for r in records]


def test_loading_and_generating_with_hf_warns_about_no_dtype(tiny_model_dir):
    """transformers' dtype advice names a flag mathloop does not have; loading through the hf backend (every
    --dtype choice) and generating must not print it (Python warnings or transformers' logger)."""
    import warnings

    from mathloop.backends import load_backend

    with transformers_log() as logged, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for dtype in ("auto", "float32", "bfloat16", "float16"):
            backend = load_backend("hf", str(tiny_model_dir), dtype=dtype, batch_size=2)
            backend.generate(["What is 2 + 3?"], SamplingParams(n=2, temperature=0.8, max_new_tokens=3))
    messages = [str(w.message) for w in caught] + logged
    assert not [m for m in messages if "dtype" in m], messages


def test_the_gguf_conversion_hides_transformers_dtype_advice():
    """Converting the embedded GGUF to bfloat16 makes transformers advise `dtype=torch.float32` (a flag mathloop does
    not have, for a choice mathloop made): hidden while converting, and only that message."""
    import logging

    from mathloop.models import without_dtype_advice

    gguf_logger = logging.getLogger("transformers.quantizers.quantizer_gguf")
    advice = "Loading a GGUF checkpoint ... Pass `dtype=torch.float32` to avoid it"
    with transformers_log() as logged:
        with without_dtype_advice():
            gguf_logger.warning(advice)
            gguf_logger.warning("something else")
        gguf_logger.warning(advice)
    assert logged == ["something else", advice]


@pytest.fixture
def untied_model_dir(tmp_path, tiny_model_dir):
    """The tiny model with its own LM head (untied, as the default model's bfloat16 copy has), so loading its
    backbone alone leaves `lm_head.weight` unused."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path)
    return tmp_path


def _load_reports(load) -> list[str]:
    with transformers_log() as logged:
        load()
    return [m for m in logged if "LOAD REPORT" in m]


def test_a_reward_model_backbone_loads_without_the_lm_head_report(untied_model_dir):
    """A reward model reads a causal LM without its LM head: transformers' load report lists `lm_head.weight` as
    UNEXPECTED, a table that alarms users for the intended case. Hidden while a reward model loads; shown for the
    same load elsewhere; a report that lists anything else still reaches the user."""
    import logging

    from transformers import AutoModel

    from mathloop.models import without_dropped_head_report
    from mathloop.reward.model import RewardModel

    assert any("lm_head.weight" in m for m in _load_reports(lambda: AutoModel.from_pretrained(untied_model_dir)))
    assert _load_reports(lambda: RewardModel.from_backbone(str(untied_model_dir))) == []
    other = ("Qwen2Model LOAD REPORT from: x\nKey                 | Status     |  | \n--------+----+--+-\n"
             "lm_head.weight      | UNEXPECTED |  | \nlayers.0.mlp.weight | MISSING    |  | \n")

    def warn_other():
        with without_dropped_head_report():
            logging.getLogger("transformers.modeling_utils").warning(other)

    assert _load_reports(warn_other) == [other]


def test_adding_lora_does_not_show_peft_s_deprecation_warning(tiny_model_dir):
    """peft reads transformers' deprecated `is_gradient_checkpointing`; users of `rm train --lora` / `grpo --lora`
    would see a FutureWarning they cannot act on."""
    import warnings

    from mathloop.models import add_lora, load_causal_lm, lora_config

    model = load_causal_lm(str(tiny_model_dir), dtype=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        add_lora(model, lora_config("rm", 4, 8))
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


class RecordingBar:
    """Stands in for the tqdm bar of `generate_and_grade`: what it was told, in order."""

    def __init__(self, events: list) -> None:
        self.events, self.n, self.total = events, 0, None

    def update(self, count: int) -> None:
        self.n += count
        self.events.append(("tokens", count))

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.events.append(("postfix", text))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


@pytest.mark.parametrize("refill", [True, False], ids=["refill", "static"])
def test_the_bar_counts_tokens_before_the_first_sequence_ends(tiny_model_dir, tmp_path, monkeypatch, refill):
    """Issue 28 item 6: the hf backend reports tokens at every decoding step, so the stage's bar moves long before
    a sequence finishes; its total follows the lengths of the finished sequences."""
    import mathloop.progress
    from mathloop.backends import load_backend
    from mathloop.generate import generate_and_grade

    events: list = []
    bars: list[RecordingBar] = []
    monkeypatch.setattr(mathloop.progress, "progress_bar",
                        lambda *args, **kwargs: bars.append(RecordingBar(events)) or bars[-1])
    backend = load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=8, refill=refill)
    backend.eos_token_ids = []  # every sequence runs to max_new_tokens: none ends before 12 steps
    generate_and_grade(PROBLEMS[:3], tmp_path / "s.jsonl", backend,
                       SamplingParams(n=2, temperature=1.0, max_new_tokens=12), verifier=None)
    [bar] = bars
    first_done = events.index(("postfix", "1/6 seq"))
    assert events[0] == ("postfix", "0/6 seq") and events[1] == ("tokens", 6)  # one token for each of 6 rows
    assert sum(count for kind, count in events[:first_done] if kind == "tokens") >= 6 * 11
    assert bar.n == bar.total == 6 * 12 and events[-1] == ("postfix", "6/6 seq")


def test_openvino_reports_tokens_at_every_pipeline_step(stub_genai_steps):
    backend, calls = stub_genai_steps
    events: list = []
    backend.generate(["q long", "q eos"], SamplingParams(n=2, temperature=1.0, max_new_tokens=16),
                     on_progress=lambda i, j, c: events.append("done"), on_tokens=lambda k: events.append(k))
    assert events[:3] == [4, 4, 4] and events.count("done") == 4  # 4 requests, one token each per step


@pytest.fixture
def stub_genai_steps(monkeypatch, tiny_model_dir, tmp_path):
    """The openvino backend on the stub engine of tests/test_backends_openvino.py."""
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location("ov_tests", pathlib.Path(__file__).with_name(
        "test_backends_openvino.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    genai = module.stub_genai.__wrapped__(monkeypatch, tiny_model_dir, tmp_path)
    return module.OpenVINOBackend(str(tiny_model_dir)), genai
