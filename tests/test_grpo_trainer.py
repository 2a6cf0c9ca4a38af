"""The GRPO trainer on the tiny random model: it learns, masks executor output, resumes exactly, selects queries,
and uses the configured reward."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from mathloop.backends.base import Backend
from mathloop.records import Sample, read_records, write_jsonl

USER_REWARDS = '''
def contains_seven(prompts, completions, **columns):
    """1 for a completion that writes a 7 anywhere, else 0."""
    return [1.0 if "7" in completion else 0.0 for completion in completions]


def length_on_odd_queries(prompts, completions, problem_id, **columns):
    """text_length on q1, q3, q5, q7; 0 on the even queries, so their groups are always flat."""
    return [float(len(c)) if int(pid[1:]) % 2 else 0.0 for c, pid in zip(completions, problem_id)]


def text_length(prompts, completions, **columns):
    """The number of characters: random responses differ in it, so every group has a learning signal."""
    return [float(len(completion)) for completion in completions]
'''


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def user_rewards(tmp_path_factory):
    """A user reward module on sys.path; configs name its functions as 'grpo_user_rewards:<function>'."""
    folder = tmp_path_factory.mktemp("user-reward")
    (folder / "grpo_user_rewards.py").write_text(USER_REWARDS)
    sys.path.insert(0, str(folder))
    yield "grpo_user_rewards"
    sys.path.remove(str(folder))
    sys.modules.pop("grpo_user_rewards", None)


def grpo_config(tmp_path, model_dir, **changes):
    from mathloop.train.grpo import GRPOConfig

    queries = tmp_path / "queries.jsonl"
    if not queries.exists():
        write_jsonl(queries, [{"id": f"q{i}", "question": f"What is {i} + {7 - i}?", "gold": "7"} for i in range(8)])
    settings = dict(output_dir=str(tmp_path / "run"), model=str(model_dir), queries=str(queries), reward="verifier",
                    group_size=8, queries_per_step=4, steps=2, max_new_tokens=8, learning_rate=1e-2, micro_batch=32,
                    save_every=0, seed=0)
    return GRPOConfig(**{**settings, **changes})


def metric(run_dir, name):
    return [json.loads(line)[name] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- one step's math, apart from the processes -----------------------------------------------------------------

@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_of_processes_are_those_of_one_process_on_the_same_rollouts(scale):
    from mathloop.train.grpo import process_advantages
    from mathloop.train.grpo_math import group_advantages

    rewards = [1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 2.0, 0.5, 4.0, 1.0, 0.0]  # 6 groups of 2
    one = process_advantages([rewards], 0, 2, scale)
    assert one == pytest.approx(group_advantages(torch.tensor(rewards).view(-1, 2), scale=scale).flatten().tolist())
    for parts in ([rewards[:6], rewards[6:]], [rewards[:2], rewards[2:8], rewards[8:]], [[], rewards]):
        split = [a for rank in range(len(parts)) for a in process_advantages(parts, rank, 2, scale)]
        assert split == pytest.approx(one, abs=1e-6), parts
    assert process_advantages([[], rewards], 0, 2, scale) == []  # a process without rollouts this step


def test_step_metrics_average_the_updates_and_weigh_by_tokens():
    from mathloop.records import Problem
    from mathloop.train.grpo import Rollout, UpdateSums, step_metrics

    def rollout(reward, verdict, tokens, finish="stop"):
        sample = Sample(problem_id="q", prompt="p", response="r", verdict=verdict, completion_tokens=tokens,
                        finish_reason=finish)
        return Rollout(sample, Problem(id="q", benchmark="test", question="?"), ended_by_eos=True, reward=reward)

    sampled = [rollout(1.0, "correct", 4), rollout(0.0, "incorrect", 8, "length"), rollout(1.0, None, 6),
               rollout(0.0, "incorrect", 2)]
    sums = UpdateSums()
    sums.add(0.8, {"tokens": torch.tensor(10), "kl": torch.tensor(0.2), "clip_fraction": torch.tensor(0.0),
                   "entropy_sum": torch.tensor(5.0), "is_ratio_mean": torch.tensor(1.0),
                   "is_ratio_max": torch.tensor(1.5)}, weight=0.5, first_update=True)
    sums.add(0.4, {"tokens": torch.tensor(10), "kl": torch.tensor(0.4), "clip_fraction": torch.tensor(0.3),
                   "is_ratio_mean": torch.tensor(3.0), "is_ratio_max": torch.tensor(9.0)}, weight=0.5,
             first_update=False)  # the second update: entropy and importance ratios are the first update's
    sums.grad_norm = 3.0
    config = type("Config", (), {"updates_per_batch": 2, "group_size": 2})()
    line = step_metrics(7, sampled, sampled[:2], sums, config, flat_groups=0.5, sampling_tries=1, stale=False,
                        rollout_seconds=1.234, update_seconds=2.0)
    assert line["step"] == 7 and line["reward_mean"] == 0.5 and line["reward_std"] == pytest.approx(0.57735, abs=1e-5)
    assert line["accuracy"] == pytest.approx(1 / 3)  # of the graded responses only
    assert (line["loss"], line["kl"], line["grad_norm"]) == pytest.approx((0.3, 0.15, 1.5))  # means over 2 updates
    assert line["entropy"] == 0.5 and line["clip_fraction"] == pytest.approx(0.15)
    assert (line["is_ratio_mean"], line["is_ratio_max"]) == (1.0, 1.5)
    assert (line["response_length"], line["truncation_rate"], line["groups_trained"]) == (5.0, 0.25, 1)
    assert line["rollout_seconds"] == 1.23 and json.dumps(line)
    assert step_metrics(1, sampled[:1], [], UpdateSums(), config, flat_groups=1.0, sampling_tries=1, stale=True,
                        rollout_seconds=0, update_seconds=0)["entropy"] is None


# ---- learning --------------------------------------------------------------------------------------------------

@pytest.mark.training
@pytest.mark.parametrize("seed, variant", [
    (0, {}), (3, {}), (0, {"loss_type": "dapo"}), (0, {"loss_type": "dr_grpo", "scale_rewards": "none"}),
    (0, {"loss_type": "dapo", "scale_rewards": "batch", "updates_per_batch": 2, "clip_high": 0.28}),
], ids=["grpo-0", "grpo-3", "dapo", "dr_grpo", "dapo-2-updates"])
def test_the_policy_learns_a_trivially_rewarded_answer(tiny_model_dir, tmp_path, user_rewards, seed, variant):
    """Reward 1 for writing a 7: a random policy writes one in ~3% of 8-token responses; GRPO makes it the rule,
    with every loss type."""
    from mathloop.train.grpo import train_grpo

    config = grpo_config(tmp_path, tiny_model_dir, reward=f"{user_rewards}:contains_seven", steps=30,
                         seed=seed, **variant)
    summary = train_grpo(config)
    rewards = metric(tmp_path / "run", "reward_mean")
    assert len(rewards) == 30 and summary["step"] == 30
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.15 and last > first + 0.5, rewards
    assert all(k > 0 for k in metric(tmp_path / "run", "kl")[5:])  # the policy left the reference behind
    # The rollouts of a step are recorded with the user function's reward.
    rollouts = read_records(Sample, tmp_path / "run" / "rollouts" / "step-000030.jsonl")
    assert len(rollouts) == 4 * 8
    assert all(s.metadata["reward"] == (1.0 if "7" in s.response else 0.0) for s in rollouts)
    # Diagnostics per step: entropy of the policy on its response tokens, clipping only where the ratio can move.
    assert all(0 < h < math.log(300) for h in metric(tmp_path / "run", "entropy"))
    clip = metric(tmp_path / "run", "clip_fraction")
    assert any(c > 0 for c in clip) if config.updates_per_batch > 1 else all(c == 0 for c in clip)
    assert metric(tmp_path / "run", "is_ratio_mean") == [None] * 30  # hf rollouts: nothing to correct


# ---- issue 17: dynamic sampling, overlong handling -------------------------------------------------------------

def test_dynamic_sampling_trains_only_groups_with_distinct_rewards(tiny_model_dir, tmp_path, user_rewards):
    from mathloop.train.grpo import train_grpo

    reward = f"{user_rewards}:length_on_odd_queries"
    train_grpo(grpo_config(tmp_path, tiny_model_dir, reward=reward, steps=2, queries_per_step=2,
                           dynamic_sampling=True, dynamic_sampling_tries=6, learning_rate=0.05))
    for step in (1, 2):
        rollouts = read_records(Sample, tmp_path / "run" / "rollouts" / f"step-{step:06d}.jsonl")
        groups: dict = {}
        for s in rollouts:
            groups.setdefault((s.problem_id, s.sampling["seed"]), []).append(s)
        flat = {key: len({s.metadata["reward"] for s in g}) == 1 for key, g in groups.items()}
        trained = {key for key, g in groups.items() if g[0].metadata["trained"]}
        assert all(len(g) == 8 and len({s.metadata["trained"] for s in g}) == 1 for g in groups.values())
        assert trained and not any(flat[key] for key in trained)  # every trained group carries a signal
        assert all(int(pid[1:]) % 2 == 1 for pid, _ in trained)
        line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[step - 1])
        assert line["groups_trained"] == len(trained) == 2 and line["sampling_tries"] == len(
            {seed for _, seed in groups})
        assert line["flat_groups"] == pytest.approx(sum(flat.values()) / len(flat))
        assert line["reward_mean"] == pytest.approx(sum(s.metadata["reward"] for s in rollouts) / len(rollouts))
    assert any(f > 0 for f in metric(tmp_path / "run", "flat_groups"))  # flat groups were sampled and dropped


def test_overlong_mask_and_soft_penalty(tiny_model_dir, tmp_path, user_rewards):
    from transformers import AutoModelForCausalLM

    from mathloop.train.grpo import train_grpo
    from mathloop.train.grpo_math import soft_overlong_penalty

    # mask: every response is cut off at 3 tokens, so nothing is left in the loss and the weights do not move.
    train_grpo(grpo_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "mask"), overlong="mask", beta=0.0,
                           steps=1, max_new_tokens=3, reward=f"{user_rewards}:text_length"))
    rollouts = read_records(Sample, tmp_path / "mask" / "rollouts" / "step-000001.jsonl")
    cut = sum(s.finish_reason == "length" for s in rollouts) / len(rollouts)
    assert metric(tmp_path / "mask", "truncation_rate") == [pytest.approx(cut)]
    if not torch.cuda.is_available():
        assert cut == 1.0  # the CPU's random stream: no response ends within 3 tokens
    if cut == 1.0:  # (on a GPU's stream one of 32 did once: then it is trained on, as it should be)
        assert metric(tmp_path / "mask", "loss") == [0.0]
        start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
        after = AutoModelForCausalLM.from_pretrained(tmp_path / "mask" / "final").state_dict()
        assert all(torch.equal(start[k], after[k]) for k in start)

    # soft_penalty: the reward is the function's plus the length ramp of the last 4 of 8 tokens.
    train_grpo(grpo_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "soft"), overlong="soft_penalty",
                           overlong_buffer=4, steps=1, reward=f"{user_rewards}:contains_seven"))
    rollouts = read_records(Sample, tmp_path / "soft" / "rollouts" / "step-000001.jsonl")
    lengths = torch.tensor([s.completion_tokens for s in rollouts])
    penalties = soft_overlong_penalty(lengths, 8, 4).tolist()
    assert [s.metadata["reward"] for s in rollouts] == pytest.approx(
        [(1.0 if "7" in s.response else 0.0) + p for s, p in zip(rollouts, penalties)], abs=1e-6)
    assert min(penalties) == -1.0
    assert metric(tmp_path / "soft", "truncation_rate") == [
        pytest.approx(sum(s.finish_reason == "length" for s in rollouts) / len(rollouts))]


# ---- masking of the code executor's output ---------------------------------------------------------------------

class ScriptedTIRModel(Backend):
    """A backend that writes code then stops at ```output, and after the executor's output ends with an answer."""

    name, model_id = "scripted", "scripted"

    def chat_prompt(self, messages):
        return messages[-1]["content"]

    def generate(self, prompts, params):
        from mathloop.backends.base import Completion
        from mathloop.tools.tir import OUTPUT_STOP

        def answer(prompt):
            if OUTPUT_STOP in prompt:
                return Completion("So x = \\boxed{3}.", completion_tokens=5)
            return Completion("Let me compute.\n```python\nprint(1 + 2)\n```\n", completion_tokens=9,
                              stop_string=OUTPUT_STOP)

        return [[answer(p) for _ in range(params.n)] for p in prompts]


class Executor:
    def __init__(self, output):
        self.output = output

    def run_cells(self, cells):
        return [self.output for _ in cells]

    def close_session(self, session):
        pass


def tir_rollouts(executor_output, config):
    from mathloop.backends.base import SamplingParams
    from mathloop.records import Problem
    from mathloop.train.grpo import generate_rollouts

    query = Problem(id="q", benchmark="t", question="What is 1 + 2?", gold="3")
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=64)
    return generate_rollouts(ScriptedTIRModel(), Executor(executor_output), [query], {"q": "Q: 1 + 2?\n"}, config,
                             params)


def test_executor_output_is_masked_out_of_the_loss(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathloop.train.grpo import encode_rollouts, micro_batch_loss

    config = grpo_config(tmp_path, tiny_model_dir, mode="tir", beta=0.0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rollout = tir_rollouts("3", config)[0]
    (start, end), = rollout.sample.tool_output_spans
    assert rollout.sample.response[start:end] == "\n3\n```\n" and rollout.sample.response.endswith("\\boxed{3}.")
    assert rollout.ended_by_eos

    # The loss mask keeps exactly the model's text (and its end-of-turn token), never the prompt or the executor's.
    batch = encode_rollouts(tokenizer, [rollout], torch.device("cpu"))
    input_ids, loss_mask = batch.input_ids, batch.loss_mask
    targets = input_ids[0, 1:]
    kept, dropped = targets[loss_mask[0]].tolist(), targets[~loss_mask[0]].tolist()
    response = rollout.sample.response
    assert tokenizer.decode(kept) == response[:start] + response[end:] + tokenizer.eos_token
    assert response[start:end] in tokenizer.decode(dropped)

    # The loss moves the head's input at exactly those positions: the last hidden state at t predicts target t.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    outputs = []
    model.get_decoder().register_forward_hook(lambda module, args, output: outputs.append(output))
    rollout.advantage = 1.0
    loss, _ = micro_batch_loss(model, None, encode_rollouts(tokenizer, [rollout], torch.device("cpu")), config)
    hidden = outputs[0].last_hidden_state
    hidden.retain_grad()
    loss.backward()
    grad = hidden.grad[0, :-1].abs().sum(dim=-1)
    assert (grad[~loss_mask[0]] == 0).all() and (grad[loss_mask[0]] > 0).all()


def test_executor_text_changes_nothing_when_it_ends_the_response(tiny_model_dir, tmp_path):
    """With nothing after the executor's output, its text cannot reach the loss: another output gives the same
    gradients, and without the mask (no spans) they change. (The loss value is -A whatever the tokens: with one
    update per batch the ratio is 1.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathloop.train.grpo import encode_rollouts, micro_batch_loss

    config = grpo_config(tmp_path, tiny_model_dir, mode="tir", beta=0.0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    results = []
    for output, masked in (("3", True), ("123456789 Traceback", True), ("123456789 Traceback", False)):
        rollout = tir_rollouts(output, config)[0]
        start, end = rollout.sample.tool_output_spans[0]
        rollout.sample.response, rollout.ended_by_eos = rollout.sample.response[:end], False  # stopped after the output
        rollout.sample.tool_output_spans = [[start, end]] if masked else []
        rollout.advantage = 1.0
        model.zero_grad()
        loss, _ = micro_batch_loss(model, None, encode_rollouts(tokenizer, [rollout], torch.device("cpu")), config)
        loss.backward()
        results.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    grads_a, grads_b, grads_unmasked = results
    assert torch.allclose(grads_a, grads_b, atol=1e-7) and not torch.allclose(grads_a, grads_unmasked, atol=1e-4)


# ---- resume ----------------------------------------------------------------------------------------------------

@pytest.mark.training
def test_resumed_lora_run_matches_an_uninterrupted_one_and_saves_a_merged_model(tiny_model_dir, tmp_path,
                                                                                user_rewards):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from mathloop.backends.base import SamplingParams
    from mathloop.backends.hf import HFBackend
    from mathloop.cli import main
    from mathloop.train.grpo import train_grpo
    from mathloop.train.checkpoint import latest_checkpoint

    small = dict(steps=4, lora=True, lora_rank=4, micro_batch=12, gradient_checkpointing=True, beta=0.1,
                 reward=f"{user_rewards}:text_length", queries_per_step=3)  # 3 steps per epoch
    straight = train_grpo(grpo_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "straight"), **small))
    config = grpo_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "resumed"), **small)
    first = train_grpo(config, stop_after=2)
    assert first["step"] == 2 and first["final"] is None
    assert latest_checkpoint(tmp_path / "resumed").name == "step-000002"
    (tmp_path / "grpo.yaml").write_text(json.dumps({k: v for k, v in vars(config).items() if k != "steps"}))
    assert main(["grpo", "--config", str(tmp_path / "grpo.yaml"), "--steps", "4"]) == 0
    assert metric(tmp_path / "resumed", "step") == [1, 2, 3, 4] and straight["step"] == 4
    kl = metric(tmp_path / "resumed", "kl")
    assert kl == pytest.approx(metric(tmp_path / "straight", "kl"), abs=1e-7) and kl[0] == 0 and kl[-1] > 0

    weights = [AutoModelForCausalLM.from_pretrained(tmp_path / run / "final").state_dict()
               for run in ("straight", "resumed")]
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert set(weights[0]) == set(start)  # merged: no LoRA weights left
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in start)
    assert any(not torch.allclose(weights[0][k], start[k]) for k in start)  # training changed the model
    backend = HFBackend(str(tmp_path / "straight" / "final"), dtype="float32", device="cpu")
    assert len(backend.generate(["What is 3 + 4?"], SamplingParams(n=2, temperature=1.0, max_new_tokens=4))[0]) == 2


def test_resume_refuses_other_settings(tiny_model_dir, tmp_path):
    from mathloop.train.grpo import train_grpo

    train_grpo(grpo_config(tmp_path, tiny_model_dir, steps=2, max_new_tokens=4), stop_after=1)
    with pytest.raises(ValueError, match="group_size"):
        train_grpo(grpo_config(tmp_path, tiny_model_dir, steps=2, max_new_tokens=4, group_size=4))


# ---- queries and configuration ---------------------------------------------------------------------------------

def test_selection_keeps_queries_solved_2_to_5_of_8_times(tiny_model_dir, tmp_path):
    from mathloop.train.grpo import load_queries

    correct_counts = {"q0": 0, "q1": 1, "q2": 2, "q3": 5, "q4": 6, "q5": 8, "q6": 3}  # q7 was never sampled
    samples = [Sample(problem_id=pid, prompt="p", response="r", sample_index=i,
                      verdict="correct" if i < k else ("no_answer" if i % 2 else "incorrect"))
               for pid, k in correct_counts.items() for i in range(8)]
    write_jsonl(tmp_path / "samples.jsonl", samples)
    config = grpo_config(tmp_path, tiny_model_dir, selection_samples=str(tmp_path / "samples.jsonl"))
    queries, report = load_queries(config)
    assert [q.id for q in queries] == ["q2", "q3", "q6"]
    assert report == {"loaded": 8, "without_gold": 0, "not_sampled": 1, "not_selected": 4, "queries": 3}

    samples[0].verdict = None
    write_jsonl(tmp_path / "samples.jsonl", samples)
    with pytest.raises(ValueError, match="samples.jsonl: the sample of q0 .* no verdict"):
        load_queries(config)


def test_config_errors_name_the_key(tmp_path):
    from functools import partial

    from mathloop.config import load_settings, settings_from_dict
    from mathloop.train.grpo import GRPOConfig

    config_from_dict = partial(settings_from_dict, GRPOConfig)

    (tmp_path / "bad.yaml").write_text("output_dir: out\nqueries: q.jsonl\nreward: verifier\ngroup_sise: 4\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown key.*group_sise"):
        load_settings(GRPOConfig, str(tmp_path / "bad.yaml"))
    base = {"output_dir": "out", "queries": "q.jsonl"}
    with pytest.raises(ValueError, match="reward 'shaped' needs rm"):
        config_from_dict(base)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        config_from_dict({**base, "reward": "verifier", "group_size": 1})
    with pytest.raises(ValueError, match="exactly one of queries .* and benchmark"):
        config_from_dict({"output_dir": "out", "reward": "verifier"})
    with pytest.raises(ValueError, match="reward must be one of"):
        config_from_dict({**base, "reward": "best"})
    verifier = {**base, "reward": "verifier"}
    assert config_from_dict(verifier).learning_rate == 1e-6
    assert config_from_dict(verifier, {"lora": True}).learning_rate == 2e-5  # adapters need larger steps


def test_shipped_grpo_configs_are_valid_and_make_the_cheap_cpu_step():
    """configs/grpo/*.yaml load as GRPOConfig, and the CPU one keeps every saving the issue-31 step figures assume."""
    from pathlib import Path

    from mathloop.config import load_settings
    from mathloop.train.grpo import GRPOConfig

    paths = sorted((Path(__file__).resolve().parents[1] / "configs" / "grpo").glob("*.yaml"))
    assert paths
    configs = {path.name: load_settings(GRPOConfig, str(path)) for path in paths}
    cpu = configs["cpu-gsm8k.yaml"]
    assert cpu.group_size * cpu.queries_per_step == 16 and cpu.max_new_tokens == 384 and cpu.steps >= 100
    assert cpu.beta == 0 and cpu.skip_zero_advantage and cpu.lora and cpu.lora_layers == 4
    assert cpu.overlap_rollouts and cpu.rollout_backend == "openvino" and cpu.tis_cap == 2.0
    assert (cpu.temperature, cpu.top_p) == (1.0, 1.0)  # what the OpenVINO importance correction needs
    assert cpu.dtype == "bfloat16" and cpu.reward == "verifier" and cpu.benchmark == "gsm8k"


def test_cli_runs_a_step_from_a_yaml_config(tiny_model_dir, tmp_path, capsys):
    from mathloop.cli import main

    config = grpo_config(tmp_path, tiny_model_dir)
    (tmp_path / "grpo.yaml").write_text(
        f"model: {tiny_model_dir}\nqueries: {config.queries}\nreward: verifier\ngroup_size: 2\nqueries_per_step: 2\n"
        f"max_new_tokens: 4\nsteps: 5\n")
    assert main(["grpo", "--config", str(tmp_path / "grpo.yaml"), "--steps", "1",
                 "--output-dir", str(tmp_path / "cli")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 1 and summary["final"] == str(tmp_path / "cli" / "final")
    assert (tmp_path / "cli" / "final" / "config.json").exists()
    assert json.loads((tmp_path / "cli" / "run.json").read_text())["config"]["steps"] == 1
    assert main(["grpo", "--config", str(tmp_path / "grpo.yaml"), "--output-dir", str(tmp_path / "cli2"),
                 "--reward", "no_such_module:fn"]) == 2
    assert "cannot import no_such_module" in capsys.readouterr().err


# ---- rewards ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_reward_model(tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    from mathloop.reward.model import RewardModel

    path = tmp_path_factory.mktemp("tiny-rm")
    torch.manual_seed(0)
    RewardModel.from_backbone(str(tiny_model_dir)).save(path, AutoTokenizer.from_pretrained(tiny_model_dir))
    return path


@pytest.mark.parametrize("reward", ["shaped", "rm"])
def test_rm_based_rewards_use_the_reward_model_scores(tiny_model_dir, tiny_reward_model, tmp_path, reward):
    from mathloop.reward.model import load_reward_model
    from mathloop.reward.score import score_samples
    from mathloop.reward.shaping import shaped_reward
    from mathloop.train.grpo import train_grpo

    train_grpo(grpo_config(tmp_path, tiny_model_dir, reward=reward, rm=str(tiny_reward_model), steps=1,
                           group_size=4, queries_per_step=2))
    rollouts = read_records(Sample, tmp_path / "run" / "rollouts" / "step-000001.jsonl")
    model, tokenizer = load_reward_model(str(tiny_reward_model))  # where and in the dtype GRPO scored them
    scores = score_samples(model, tokenizer, rollouts)
    assert len(set(scores)) > 1  # the random RM tells the responses apart
    expected = [shaped_reward(score, s.verdict == "correct") if reward == "shaped" else score
                for s, score in zip(rollouts, scores)]
    # on a GPU the RM runs in bfloat16, where another batch's padding moves a score in the third digit
    tolerance = 1e-5 if next(model.parameters()).dtype == torch.float32 else 2e-3
    assert [s.metadata["reward"] for s in rollouts] == pytest.approx(expected, abs=tolerance)


# ---- vLLM rollouts -----------------------------------------------------------------------------------------------

@pytest.fixture
def stub_vllm(monkeypatch):
    """A fake `vllm` whose engine answers "\\boxed{7}" to even-numbered samples and records every LoRA request,
    checking that the adapter folder it names holds a saved adapter when generation starts."""
    import sys
    import types
    from pathlib import Path
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    vllm, lora, request = (types.ModuleType(name) for name in ("vllm", "vllm.lora", "vllm.lora.request"))
    vllm.engines, vllm.requests = [], []

    class LoRARequest:
        def __init__(self, name, lora_id, path):
            self.name, self.lora_id, self.path = name, lora_id, path

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            vllm.engines.append(self)

        def get_tokenizer(self):
            return AutoTokenizer.from_pretrained(self.kwargs["model"])

        def generate(self, prompts, sampling, use_tqdm=True, lora_request=None):
            assert (Path(lora_request.path) / "adapter_config.json").exists()
            vllm.requests.append(lora_request)
            outputs = [SimpleNamespace(text="so \\boxed{7}" if j % 2 == 0 else "so \\boxed{3}", token_ids=[1, 2],
                                       finish_reason="stop", stop_reason=None) for j in range(sampling.kwargs["n"])]
            if sampling.kwargs.get("logprobs") == 0:  # the sampled tokens (eos included), each with log mu = -1
                tokenizer = self.get_tokenizer()
                for o in outputs:
                    o.token_ids = tokenizer(o.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                    o.logprobs = [{t: SimpleNamespace(logprob=-1.0)} for t in o.token_ids]
            return [SimpleNamespace(prompt_token_ids=[0], outputs=outputs) for _ in prompts]

    vllm.LLM, vllm.SamplingParams, request.LoRARequest = LLM, SamplingParams, LoRARequest
    vllm.lora, lora.request = lora, request
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    return vllm


def test_vllm_rollouts_sample_through_the_adapter_of_each_step(tiny_model_dir, tmp_path, stub_vllm):
    from mathloop.train.grpo import train_grpo

    with pytest.raises(ValueError, match="rollout_backend vllm needs lora"):
        grpo_config(tmp_path, tiny_model_dir, rollout_backend="vllm").validate()
    config = grpo_config(tmp_path, tiny_model_dir, rollout_backend="vllm", lora=True, lora_rank=4, steps=2,
                         queries_per_step=2, group_size=4, vllm_args={"gpu_memory_utilization": 0.4})
    summary = train_grpo(config)
    [engine] = stub_vllm.engines
    assert engine.kwargs["model"] == str(tiny_model_dir) and engine.kwargs["enable_lora"] is True
    assert engine.kwargs["max_lora_rank"] == 4 and engine.kwargs["gpu_memory_utilization"] == 0.4
    assert [(r.lora_id, r.path.endswith(f"step-{r.lora_id - 1:06d}")) for r in stub_vllm.requests] == [
        (1, True), (2, True)]
    assert metric(tmp_path / "run", "accuracy") == [0.5, 0.5] and summary["final"]
    assert [p.name for p in (tmp_path / "run" / "rollout-adapter").iterdir()] == ["step-000001"]


def test_openvino_rollouts_sample_through_the_adapter_of_each_step(tiny_model_dir, tmp_path, monkeypatch):
    """rollout_backend openvino: one engine on the starting model, given each step's saved adapter before the step's
    rollouts (a stub engine here; the real one's run-time adapter is tested in test_backends_openvino)."""
    from pathlib import Path

    from mathloop.backends import Completion
    from mathloop.backends import openvino as ov_backend
    from mathloop.train.grpo import train_grpo

    engines = []

    class StubEngine(Backend):
        supports_lora = reports_each_completion = True

        def __init__(self, model, weight_format="fp16", threads=None):
            from transformers import AutoTokenizer

            self.model, self.adapters, self.model_id = model, [], model
            self.kwargs = {"weight_format": weight_format, "threads": threads}
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            engines.append(self)

        def use_lora(self, path, name, lora_id=0):
            config = json.loads((Path(path) / "adapter_config.json").read_text())
            self.adapters.append((Path(path).name, name, ov_backend.lora_scale(config)))

        def chat_prompt(self, messages):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

        def generate(self, prompts, params, on_progress=None):
            assert self.adapters, "rollouts before any adapter was given"
            return [[Completion(text="so \\boxed{7}" if j % 2 == 0 else "so \\boxed{3}", prompt_tokens=3,
                                completion_tokens=4, finish_reason="stop") for j in range(params.n)]
                    for _ in prompts]

    with pytest.raises(ValueError, match="rollout_backend openvino needs lora"):
        grpo_config(tmp_path, tiny_model_dir, rollout_backend="openvino").validate()
    with pytest.raises(ValueError, match="openvino_args: unknown key\\(s\\) weights; known: weight_format"):
        grpo_config(tmp_path, tiny_model_dir, rollout_backend="openvino", lora=True,
                    openvino_args={"weights": "int8"}).validate()
    with pytest.raises(ValueError, match="openvino_args are for rollout_backend openvino"):
        grpo_config(tmp_path, tiny_model_dir, openvino_args={"weight_format": "int8"}).validate()
    with pytest.raises(ValueError, match="tis_cap needs the engine's sampled token ids .* openai does not"):
        grpo_config(tmp_path, tiny_model_dir, rollout_backend="openai", lora=True, tis_cap=2.0,
                    rollout_base_url="http://localhost:1").validate()
    for reshaped in ({"temperature": 0.7}, {"top_p": 0.9}, {"top_k": 20}):
        with pytest.raises(ValueError, match="tis_cap with rollout_backend openvino needs temperature 1 and top_p 1"):
            grpo_config(tmp_path, tiny_model_dir, rollout_backend="openvino", lora=True, tis_cap=2.0,
                        **reshaped).validate()
    monkeypatch.setattr(ov_backend, "OpenVINOBackend", StubEngine)
    config = grpo_config(tmp_path, tiny_model_dir, rollout_backend="openvino", lora=True, lora_rank=4, steps=2,
                         queries_per_step=2, group_size=4, openvino_args={"weight_format": "int8", "threads": 2})
    summary = train_grpo(config)
    [engine] = engines
    assert engine.model == str(tiny_model_dir) and engine.kwargs == {"weight_format": "int8", "threads": 2}
    assert engine.adapters == [("step-000000", "policy-step-0", 8.0), ("step-000001", "policy-step-1", 8.0)]
    assert metric(tmp_path / "run", "accuracy") == [0.5, 0.5] and summary["final"]
    assert [p.name for p in (tmp_path / "run" / "rollout-adapter").iterdir()] == ["step-000001"]


def test_openvino_rollouts_are_trained_on_the_engines_tokens_and_corrected_by_their_log_probabilities(
        tiny_model_dir, tmp_path, monkeypatch):
    """The OpenVINO engine reports each sampled token's id and log-probability (its end token included): at
    temperature 1 those are mu, and `tis_cap` weighs each token by min(pi_old / mu, cap), logged as is_ratio."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathloop.backends import Completion
    from mathloop.backends import openvino as ov_backend
    from mathloop.train.grpo import train_grpo

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    sent = []

    class StubEngine(Backend):
        supports_lora = True

        def __init__(self, model, **settings):
            self.model_id = model

        def use_lora(self, path, name, lora_id=0):
            pass

        def chat_prompt(self, messages):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

        def generate(self, prompts, params):
            completions = []
            for _ in prompts:
                group = []
                for j in range(params.n):
                    text = "so \\boxed{7}" if j % 2 == 0 else "so \\boxed{3}"
                    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                    sent.append(ids)
                    group.append(Completion(text=text, prompt_tokens=3, completion_tokens=len(ids) - 1,
                                            finish_reason="stop",
                                            metadata={"token_ids": ids, "token_logprobs": [-1.0] * len(ids)}))
                completions.append(group)
            return completions

    monkeypatch.setattr(ov_backend, "OpenVINOBackend", StubEngine)
    config = grpo_config(tmp_path, tiny_model_dir, rollout_backend="openvino", lora=True, lora_rank=4, steps=1,
                         queries_per_step=2, group_size=4, tis_cap=2.0, temperature=1.0)
    train_grpo(config)
    # the ratio pi_old / mu over the engine's tokens: the starting model's probabilities (the adapter starts at 0)
    # times e, recomputed here from the prompts the trainer sent and the ids the engine returned
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    recorded = read_records(Sample, tmp_path / "run" / "rollouts" / "step-000001.jsonl")
    ratios = []
    for sample, ids in zip(recorded, sent):
        prompt = tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1].float()
        ratios += torch.exp(torch.log_softmax(logits, -1).gather(1, torch.tensor(ids)[:, None])[:, 0] + 1.0).tolist()
    assert metric(tmp_path / "run", "is_ratio_mean") == [pytest.approx(sum(ratios) / len(ratios), rel=1e-2)]
    assert metric(tmp_path / "run", "is_ratio_max") == [pytest.approx(max(ratios), rel=1e-2)]


def test_vllm_rollouts_are_corrected_by_truncated_importance_sampling(tiny_model_dir, tmp_path, stub_vllm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathloop.train.grpo import encode_rollouts, sequence_logprobs, train_grpo

    with pytest.raises(ValueError, match="tis_cap corrects rollouts from another engine"):
        grpo_config(tmp_path, tiny_model_dir, tis_cap=2.0).validate()
    config = grpo_config(tmp_path, tiny_model_dir, rollout_backend="vllm", lora=True, lora_rank=4, steps=1,
                         queries_per_step=2, group_size=4, tis_cap=2.0)
    train_grpo(config)
    [engine] = stub_vllm.engines
    assert engine.kwargs["logprobs_mode"] == "processed_logprobs"
    # The logged ratio is pi_old / mu over the engine's tokens: the starting model's probabilities (the LoRA
    # adapter starts at zero) times e, recomputed here from the recorded rollouts (the stub's ids are the text's).
    from mathloop.records import Problem
    from mathloop.train.grpo import Rollout

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    recorded = read_records(Sample, tmp_path / "run" / "rollouts" / "step-000001.jsonl")
    ids = [tokenizer(s.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for s in recorded]
    rollouts = [Rollout(s, Problem(id=s.problem_id, benchmark="t", question="", gold="7"), True, token_ids=i,
                        behaviour_logprobs=[-1.0] * len(i)) for s, i in zip(recorded, ids)]
    batch = encode_rollouts(tokenizer, rollouts, torch.device("cpu"))
    assert batch.input_ids[:, 1:][batch.loss_mask].tolist() == [t for i in ids for t in i]  # the engine's ids
    assert (batch.behaviour_logp[batch.loss_mask] == -1.0).all()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    logp, _ = sequence_logprobs(model, batch.input_ids, batch.attention_mask, 1.0)
    ratio = torch.exp(logp[batch.loss_mask] + 1.0)
    assert metric(tmp_path / "run", "is_ratio_mean") == [pytest.approx(ratio.mean().item(), rel=1e-2)]  # LoRA-wrapped, train mode: float noise
    assert metric(tmp_path / "run", "is_ratio_max") == [pytest.approx(ratio.max().item(), rel=1e-2)]


def test_cli_runs_the_practitioner_variants_from_a_yaml_config(tiny_model_dir, tmp_path, capsys):
    from mathloop.cli import main

    config = grpo_config(tmp_path, tiny_model_dir)
    (tmp_path / "grpo.yaml").write_text(
        f"model: {tiny_model_dir}\nqueries: {config.queries}\nreward: verifier\ngroup_size: 2\nqueries_per_step: 2\n"
        f"max_new_tokens: 4\nsteps: 1\nloss_type: dr_grpo\nscale_rewards: batch\ndynamic_sampling: true\n"
        f"dynamic_sampling_tries: 2\noverlong: soft_penalty\noverlong_buffer: 2\nupdates_per_batch: 2\n"
        f"clip_low: 0.2\nclip_high: 0.28\n")
    assert main(["grpo", "--config", str(tmp_path / "grpo.yaml"), "--output-dir", str(tmp_path / "cli"),
                 "--loss-type", "dapo"]) == 0
    recorded = json.loads((tmp_path / "cli" / "run.json").read_text())["config"]
    assert recorded["loss_type"] == "dapo" and recorded["dynamic_sampling"] is True  # the flag wins over the YAML
    assert recorded["updates_per_batch"] == 2 and recorded["clip_high"] == 0.28 and recorded["overlong"] == "soft_penalty"
    [line] = [json.loads(x) for x in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert {"flat_groups", "entropy", "clip_fraction", "truncation_rate", "is_ratio_mean", "is_ratio_max",
            "sampling_tries", "groups_trained"} <= line.keys()
    assert 1 <= line["sampling_tries"] <= 2
    capsys.readouterr()
    (tmp_path / "bad.yaml").write_text((tmp_path / "grpo.yaml").read_text().replace("dr_grpo", "ppo"))
    assert main(["grpo", "--config", str(tmp_path / "bad.yaml"), "--output-dir", str(tmp_path / "bad")]) == 2
    assert "loss_type must be one of grpo, dapo, dr_grpo, got 'ppo'" in capsys.readouterr().err


# ---- less work per step ----------------------------------------------------------------------------------------

def update_gradients(model, tokenizer, rollouts, config):
    """The loss and gradients of one update on `rollouts`, micro-batch by micro-batch as the trainer weighs them."""
    from mathloop.train.grpo import micro_batch_loss, update_batches

    model.zero_grad(set_to_none=True)
    batches, units, total = update_batches(tokenizer, rollouts, config, torch.device("cpu"))
    loss_sum = 0.0
    for batch, n in zip(batches, units):
        loss, _ = micro_batch_loss(model, None, batch, config)
        (loss * n / total).backward()
        loss_sum += loss.item() * n / total
    return len(batches), loss_sum, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_skipped_flat_groups_and_sorted_micro_batches_give_the_same_loss_and_gradients(tiny_model_dir, tmp_path,
                                                                                       loss_type):
    """With beta = 0, rollouts of advantage 0 get no forward or backward and micro-batches hold rollouts of similar
    length; loss and gradients are those of every rollout in rollout order."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathloop.records import Problem
    from mathloop.train.grpo import Rollout

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    responses = ["7", "The answer is 7 because 3 + 4 = 7.", "8", "It is 6.", "so 5 + 2 = 7", "no idea at all here"]
    advantages = [0.0, 0.0, 0.0, 1.2, -0.4, -0.8]  # a flat group of 3, then a group with a signal
    rollouts = [Rollout(Sample(problem_id=f"q{i // 3}", prompt=f"What is {i} + {7 - i}? ", response=text,
                               completion_tokens=len(tokenizer(text)["input_ids"]), finish_reason="stop"),
                        Problem(id=f"q{i // 3}", benchmark="t", question="", gold="7"), ended_by_eos=True,
                        advantage=a) for i, (text, a) in enumerate(zip(responses, advantages))]
    common = dict(beta=0.0, micro_batch=2, loss_type=loss_type)
    n_full, full_loss, full = update_gradients(model, tokenizer, rollouts, grpo_config(
        tmp_path, tiny_model_dir, skip_zero_advantage=False, sort_by_length=False, **common))
    n_lean, lean_loss, lean = update_gradients(model, tokenizer, rollouts, grpo_config(tmp_path, tiny_model_dir,
                                                                                       **common))
    assert (n_full, n_lean) == (3, 2)  # 6 rollouts in 3 micro-batches; the 3 of advantage 0 skipped
    assert lean_loss == pytest.approx(full_loss, abs=1e-6) and full_loss != 0
    assert full.keys() == lean.keys()
    for k in full:
        torch.testing.assert_close(lean[k], full[k], atol=1e-6, rtol=1e-5, msg=k)
    # a step of flat groups only: nothing to run (the trainer still steps the optimizer on zero gradients)
    for r in rollouts:
        r.advantage = 0.0
    assert update_gradients(model, tokenizer, rollouts, grpo_config(tmp_path, tiny_model_dir, **common))[:2] == (0, 0)
    # with a KL term a rollout of advantage 0 still has a gradient: nothing is skipped
    from mathloop.train.grpo import update_batches

    config = grpo_config(tmp_path, tiny_model_dir, **{**common, "beta": 0.1})
    assert len(update_batches(tokenizer, rollouts, config, torch.device("cpu"))[0]) == 3


def test_lora_layers_puts_adapters_in_the_top_blocks_only(tiny_model_dir, tmp_path):
    pytest.importorskip("peft")
    from mathloop.train.grpo import build_policy

    model, _ = build_policy(grpo_config(tmp_path, tiny_model_dir, lora=True, lora_rank=4, lora_layers=1),
                            torch.device("cpu"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in n and "lora_" in n for n in trainable)
    with pytest.raises(ValueError, match="lora_layers needs lora"):
        grpo_config(tmp_path, tiny_model_dir, lora_layers=1).validate()


def test_overlapped_rollouts_are_sampled_during_the_previous_update_one_step_stale(tiny_model_dir, tmp_path,
                                                                                   monkeypatch):
    """overlap_rollouts: step s+1's rollouts are generated in a thread, from step s's adapter, while step s
    updates; the first step's are sampled as usual (a stub OpenVINO engine records who sampled what)."""
    import threading
    from pathlib import Path

    from mathloop.backends import Completion
    from mathloop.backends import openvino as ov_backend
    from mathloop.train.grpo import train_grpo

    calls = []

    class StubEngine(Backend):
        supports_lora = reports_each_completion = True

        def __init__(self, model, **kwargs):
            from transformers import AutoTokenizer

            self.tokenizer, self.adapter = AutoTokenizer.from_pretrained(model), None

        def use_lora(self, path, name, lora_id=0):
            assert Path(path).exists()
            self.adapter = name

        def chat_prompt(self, messages):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

        def generate(self, prompts, params, on_progress=None):
            calls.append((self.adapter, threading.current_thread() is threading.main_thread()))
            return [[Completion(text="so \\boxed{7}" if j % 2 == 0 else "so \\boxed{3}", prompt_tokens=3,
                                completion_tokens=4, finish_reason="stop") for j in range(params.n)]
                    for _ in prompts]

    with pytest.raises(ValueError, match="overlap_rollouts needs a rollout engine"):
        grpo_config(tmp_path, tiny_model_dir, overlap_rollouts=True).validate()
    monkeypatch.setattr(ov_backend, "OpenVINOBackend", StubEngine)
    summary = train_grpo(grpo_config(tmp_path, tiny_model_dir, rollout_backend="openvino", lora=True, lora_rank=4,
                                     steps=3, queries_per_step=2, group_size=4, overlap_rollouts=True))
    assert calls == [("policy-step-0", True), ("policy-step-0", False), ("policy-step-1", False)]
    assert metric(tmp_path / "run", "stale_rollouts") == [False, True, True]
    assert metric(tmp_path / "run", "accuracy") == [0.5, 0.5, 0.5] and summary["final"]
