"""`report_to`: the RM and GRPO trainers' metrics reach TensorBoard (read back from the event files) and W&B (a stand-in
module records the calls), from the main process only, and bad names fail before training."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types

import pytest

from test_grpo_trainer import grpo_config
from test_reward import rm_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scalars(run_dir, tag):
    """(step, value) of every event of `tag` in <run_dir>/tensorboard, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rm_training_writes_its_metrics_to_tensorboard_across_a_resume(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from mathloop.config import settings_from_dict
    from mathloop.train.rm import RMTrainConfig, train

    config = rm_config(tmp_path, tiny_model_dir, n_problems=12, epochs=2, groups_per_batch=5)
    settings = {**vars(config), "report_to": "tensorboard"}  # YAML may give one name as a string
    train(settings_from_dict(RMTrainConfig, settings), stop_after=3)
    train(settings_from_dict(RMTrainConfig, settings))  # resumes at step 3, ends at 4
    run = tmp_path / "run"
    logged = records(run)
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert scalars(run, "rm/loss") == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in logged]
    assert scalars(run, "rm/heldout_accuracy") == [(4, pytest.approx(logged[-1]["heldout_accuracy"]))]


def test_grpo_writes_reward_kl_and_truncation_to_tensorboard(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from mathloop.train.grpo import train_grpo

    train_grpo(grpo_config(tmp_path, tiny_model_dir, report_to=["tensorboard"]))
    run = tmp_path / "run"
    logged = records(run)
    assert [r["step"] for r in logged] == [1, 2]
    for key in ("reward_mean", "reward_std", "accuracy", "kl", "response_length", "truncation_rate"):
        assert scalars(run, f"grpo/{key}") == [(r["step"], pytest.approx(r[key], rel=1e-6, abs=1e-9)) for r in logged]
    assert all(0 <= r["truncation_rate"] <= 1 for r in logged)  # max_new_tokens=8: most responses are cut


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in `wandb` module that records init / log / finish."""
    calls = []
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)

    class Run:
        def log(self, data, step):
            calls.append(("log", step, data))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_wandb_gets_each_record_at_its_step_and_only_rank_0_reports(fake_wandb, tmp_path):
    from mathloop.train.tracking import MetricsReporter

    with MetricsReporter(["wandb"], tmp_path, "grpo", {"seed": 0}) as reporter:
        reporter.log({"step": 1, "reward_mean": 0.5, "accuracy": None, "note": "x"}, 1)
    with MetricsReporter(["wandb", "tensorboard"], tmp_path / "rank1", "grpo", {}, main_process=False) as other:
        other.log({"step": 1, "loss": 1.0}, 1)
    assert [c[0] for c in fake_wandb] == ["init", "log", "finish"]
    assert fake_wandb[0][1]["config"] == {"seed": 0}
    assert fake_wandb[1] == ("log", 1, {"grpo/reward_mean": 0.5})
    assert not (tmp_path / "rank1").exists()


def test_report_to_errors_name_the_key_and_the_install(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from mathloop.cli import main
    from mathloop.config import settings_from_dict
    from mathloop.train import grpo, rm

    with pytest.raises(ValueError, match=r"grpo: report_to: unknown 'mlflow'; known: tensorboard, wandb"):
        settings_from_dict(grpo.GRPOConfig, {"output_dir": "out", "queries": "q.jsonl", "reward": "verifier",
                               "report_to": ["mlflow"]})
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match=r"rm train: report_to: wandb needs the wandb package: "
                                         r"pip install 'mathloop\[wandb\]'"):
        settings_from_dict(rm.RMTrainConfig, {"samples": "s.jsonl", "output_dir": "out", "report_to": "wandb"})
    monkeypatch.undo()
    assert main(["grpo", "--output-dir", str(tmp_path), "--queries", "q.jsonl", "--reward", "verifier",
                 "--report-to", "tensorboard,mlflow"]) == 2
    assert "report_to: unknown 'mlflow'" in capsys.readouterr().err


@pytest.mark.training
def test_sft_training_sends_the_trainer_logs_to_tensorboard(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("trl")
    from test_sft import sft_config

    from mathloop.train.sft import train_sft

    train_sft(sft_config(tmp_path, tiny_model_dir, report_to=["tensorboard"]))
    out = tmp_path / "sft"
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in logged if "loss" in r]
    assert losses and scalars(out, "sft/loss") == [(step, pytest.approx(loss, rel=1e-6)) for step, loss in losses]
