"""`mathloop grpo`: reinforcement learning of the policy with GRPO on math queries (method step 8), resumable.

The recipe reads top to bottom: `train_grpo()` loads the queries, the policy, its reference and the reward, then
runs the steps. One step:
  1. take `queries_per_step` queries (a fresh seeded shuffle per epoch);
  2. roll out `group_size` responses per query: CoT through the generation backend (`HFBackend` on the model being
     trained, or a vLLM engine that samples through the policy's LoRA adapter, handed over every step), TIR
     through `tir_generate` with the code running in the sandbox;
  3. grade every response against the query's gold answer (the step's accuracy) and compute its reward: the
     paper's shaped reward sigmoid(alpha * r_m) + (r_v - 1), the verifier alone, the reward model alone, or a user
     function with TRL's signature;
  4. group-relative advantages (r - mean) / std within each query's group;
  5. one optimizer step: per micro-batch, policy log-probabilities (with gradient) and reference ones (without),
     `grpo_loss`, backward scaled by the micro-batch's share of the batch; then gradient clipping and AdamW.

It is a plain PyTorch loop rather than TRL's GRPOTrainer because TIR rollouts need the sandbox inside the rollout
and the executor's output masked out of the loss, and the shaped reward needs the verifier and the reward model
together; both would have to be bent into TRL's generation and reward hooks. Users who prefer TRL (1.x) can still
use it with the TRL-style reward functions of `mathloop.reward.shaping`.

Choices the paper leaves open, or where mathloop differs from it:
  - one update per rollout batch (pi_old = pi, as DeepSeekMath's GRPO with one inner iteration): the ratio is 1,
    so PPO's clip never acts and there is no clip_eps to set; the gradient is A * grad log pi plus the KL pull;
  - beta = 1e-3 (the paper's KL coefficient), k3 estimator, token mean per response then mean over responses;
  - log-probabilities are taken at the sampling temperature, so the reference and policy distributions are the
    ones the rollouts came from;
  - the reference policy is the starting model: with LoRA, the same model with its adapters switched off (no
    second copy); with full fine-tuning a frozen copy (none when beta = 0);
  - weights are float32 by default, even on GPU (forward passes run under bfloat16 autocast where the device computes
    it natively, `mathloop.hardware`): AdamW moves a
    weight by about the learning rate per step, and bfloat16 cannot store a change of 1e-6 to a weight of 0.02
    (its spacing there is ~1e-4), so full fine-tuning in bfloat16 weights barely moves; with LoRA the adapters
    stay float32 (peft) and `dtype: bfloat16` for the frozen base only saves memory;
  - G = 8 responses per query by default (the paper's 32 is a config change);
  - training re-tokenizes the response text (records keep text, not ids), so a sampled token sequence that BPE
    would merge differently is trained as its canonical tokenization; a response that ended with the end-of-turn
    token is trained with the tokenizer's eos token appended, so the policy also learns when to stop.

Output folder:
  run.json                       config, query report, package versions
  metrics.jsonl                  one line per step: reward, accuracy, KL, loss, response length, seconds
  rollouts/step-NNNNNN.jsonl     the step's responses as Samples (verdict; reward and advantage in metadata)
  checkpoints/step-NNNNNN/       trainable weights, optimizer state, step (the latest ones are kept)
  final/                         the trained policy, LoRA merged (`mathloop eval --model <out>/final`)
Re-running the same command resumes from the latest checkpoint and ends at the same step, with the same weights
as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mathloop.backends.base import SamplingParams
from mathloop.config import read_yaml_mapping, settings_from_dict
from mathloop.hardware import autocast
from mathloop.prompts import build_messages
from mathloop.records import Problem, Sample, read_records, write_jsonl
from mathloop.reward.score import pad_batch, pad_token_id
from mathloop.reward.shaping import RewardFn, make_rm_reward, make_shaped_reward, select_queries, verifier_reward
from mathloop.train.checkpoint import drop_metrics_after, latest_checkpoint, load_checkpoint, save_checkpoint
from mathloop.train.grpo_math import group_advantages, grpo_loss, response_loss_mask, token_logprobs
from mathloop.verify import CORRECT, grade
from mathloop.runs import lock_run_dir, write_json

log = logging.getLogger(__name__)

BUILTIN_REWARDS = ("shaped", "verifier", "rm")


@dataclass
class GRPOConfig:
    """Every setting of a GRPO run (recorded in run.json; YAML keys use these names)."""

    output_dir: str  # run folder: checkpoints, logs, rollouts, final/
    model: str = "default"  # policy to train: 'default' (embedded model), a local folder or a Hub id
    queries: str | None = None  # problems JSONL (question, gold) ...
    benchmark: str | None = None  # ... or a benchmark in the harness layout (with split, data_dir)
    split: str = "train"
    data_dir: str | None = None  # benchmark folder (default: $MATHLOOP_DATA_DIR)
    limit: int | None = None  # the first N queries only
    selection_samples: str | None = None  # graded samples JSONL: keep queries with low..high of n correct
    selection_low: int = 2
    selection_high: int = 5
    selection_n: int = 8
    mode: str = "cot"  # cot | tir (the model's Python runs in the sandbox during rollouts)
    max_tool_calls: int = 4  # tir: code executions per response
    tool_timeout: float = 5.0  # tir: seconds per execution
    group_size: int = 8  # responses per query (G; the paper uses 32)
    queries_per_step: int = 16  # queries per optimizer step
    steps: int = 100  # optimizer steps in all (one rollout batch each)
    max_new_tokens: int = 1024  # per response
    temperature: float = 1.0  # sampling temperature, also applied to the log-probabilities
    top_p: float = 1.0
    rollout_batch_size: int = 64  # sequences per generation batch (hf rollouts)
    rollout_backend: str = "hf"  # hf: the training model generates; vllm: a vLLM engine with the step's LoRA adapter
    vllm_args: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. gpu_memory_utilization: 0.4
    reward: str = "shaped"  # shaped | verifier | rm | 'module.path:function' (TRL signature)
    rm: str | None = None  # reward model folder or Hub id, for reward shaped or rm
    alpha: float = 0.5  # shaped reward: sigmoid(alpha * r_m) + (r_v - 1)
    learning_rate: float | None = None  # default 1e-6 (full fine-tuning) or 2e-5 (LoRA: adapters need larger steps)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 1e-3  # KL coefficient (k3 estimator) to the reference policy; 0 drops the reference
    micro_batch: int = 8  # sequences per forward/backward (gradients accumulated over the step)
    lora: bool = False  # train LoRA adapters instead of all weights (needs `mathloop[train]`)
    lora_rank: int = 16
    lora_alpha: int = 32
    gradient_checkpointing: bool = False
    dtype: str | None = None  # policy weights: float32 by default; bfloat16 saves memory with LoRA
    save_every: int = 25  # checkpoint every N steps (and always at the end)
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.learning_rate is None:
            self.learning_rate = 2e-5 if self.lora else 1e-6

    def validate(self) -> None:
        if (self.queries is None) == (self.benchmark is None):
            raise ValueError("grpo: give exactly one of queries (a problems JSONL) and benchmark")
        if self.mode not in ("cot", "tir"):
            raise ValueError(f"grpo: mode must be cot or tir, got {self.mode!r}")
        if self.reward not in BUILTIN_REWARDS and not _is_function_spec(self.reward):
            raise ValueError(f"grpo: reward must be one of {', '.join(BUILTIN_REWARDS)} or 'module.path:function', "
                             f"got {self.reward!r}")
        if self.reward in ("shaped", "rm") and not self.rm:
            raise ValueError(f"grpo: reward {self.reward!r} needs rm (a reward model folder from `mathloop rm "
                             f"train`, or a Hub id); or set reward: verifier")
        if self.rollout_backend not in ("hf", "vllm"):
            raise ValueError(f"grpo: rollout_backend must be hf or vllm, got {self.rollout_backend!r}")
        if self.rollout_backend == "vllm" and not self.lora:
            raise ValueError("grpo: rollout_backend vllm needs lora: true (the policy reaches the vLLM engine as a "
                             "LoRA adapter each step)")
        if self.group_size < 2:
            raise ValueError(f"grpo: group_size must be >= 2 (advantages compare responses within a group), "
                             f"got {self.group_size}")
        for name in ("queries_per_step", "steps", "max_new_tokens", "rollout_batch_size", "micro_batch",
                     "max_tool_calls", "keep_checkpoints", "selection_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"grpo: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.selection_low <= self.selection_high <= self.selection_n:
            raise ValueError(f"grpo: need 0 <= selection_low <= selection_high <= selection_n, got "
                             f"{self.selection_low}, {self.selection_high}, {self.selection_n}")
        if self.temperature <= 0:
            raise ValueError(f"grpo: temperature must be > 0 (a group of greedy responses has nothing to compare), "
                             f"got {self.temperature}")
        if self.learning_rate <= 0:
            raise ValueError(f"grpo: learning_rate must be > 0, got {self.learning_rate}")
        if self.beta < 0:
            raise ValueError(f"grpo: beta must be >= 0, got {self.beta}")
        if self.save_every < 0:
            raise ValueError(f"grpo: save_every must be >= 0, got {self.save_every}")


# Settings a resumed run must share with the run that wrote the checkpoint.
_RESUME_KEYS = ("model", "queries", "benchmark", "split", "limit", "selection_samples", "selection_low",
                "selection_high", "selection_n", "mode", "group_size", "queries_per_step", "reward", "rm", "alpha",
                "lora", "lora_rank", "lora_alpha", "seed")


def _is_function_spec(text: str) -> bool:
    module, _, function = text.partition(":")
    return bool(module) and bool(function)


def load_config(path: str, overrides: dict[str, Any] | None = None) -> GRPOConfig:
    """Read a YAML config (keys are `GRPOConfig` fields) and apply non-None overrides (command-line flags)."""
    return config_from_dict(read_yaml_mapping(path, "GRPOConfig"), overrides, source=path)


def config_from_dict(data: dict[str, Any], overrides: dict[str, Any] | None = None,
                     source: str = "config") -> GRPOConfig:
    return settings_from_dict(GRPOConfig, data, overrides, source, required=("output_dir",))


# ---- queries ---------------------------------------------------------------------------------------------------

def load_queries(config: GRPOConfig) -> tuple[list[Problem], dict[str, int]]:
    """The RL queries and a report of how many each filter kept.

    Queries without a gold answer are dropped for the verifier-based rewards (shaped, verifier). With
    `selection_samples`, only queries with `selection_low`..`selection_high` correct of their first `selection_n`
    graded samples stay (the paper's 2..5 of 8): neither always nor never solved, so a group has rewards to compare.
    """
    if config.queries:
        from mathloop.data.benchmarks import load_problems

        problems = load_problems(config.queries)
    else:
        from mathloop.data.benchmarks import load_benchmark

        problems = load_benchmark(config.benchmark, config.data_dir, config.split)
    problems = problems[:config.limit]
    report = {"loaded": len(problems)}
    if config.reward in ("shaped", "verifier"):
        with_gold = [p for p in problems if p.gold is not None]
        report["without_gold"] = len(problems) - len(with_gold)
        problems = with_gold
    if config.selection_samples:
        verdicts = _verdicts_per_problem(config.selection_samples)
        ids = {p.id for p in problems}
        kept = set(select_queries({pid: v for pid, v in verdicts.items() if pid in ids}, config.selection_low,
                                  config.selection_high, config.selection_n))
        report["not_sampled"] = len(ids - verdicts.keys())
        report["not_selected"] = len(ids & verdicts.keys()) - len(kept)
        problems = [p for p in problems if p.id in kept]
    report["queries"] = len(problems)
    if not problems:
        raise ValueError(f"grpo: no query left to train on ({report}); check queries/benchmark, the gold answers "
                         f"and selection_samples")
    return problems, report


def _verdicts_per_problem(path: str) -> dict[str, list[str]]:
    """Each problem's verdicts in sample_index order, from a graded samples file."""
    samples = read_records(Sample, path)
    for s in samples:
        if s.verdict is None:
            raise ValueError(f"{path}: the sample of {s.problem_id} (index {s.sample_index}) has no verdict; grade "
                             f"the samples first (`mathloop grade`)")
    verdicts: dict[str, list[str]] = {}
    for s in sorted(samples, key=lambda s: (s.problem_id, s.sample_index)):
        verdicts.setdefault(s.problem_id, []).append(s.verdict)
    return verdicts


def query_indices(step: int, n_queries: int, config: GRPOConfig) -> list[int]:
    """The queries of step `step`: a fresh seeded shuffle per epoch, so a resumed run sees the same batches as an
    uninterrupted one."""
    per_epoch = math.ceil(n_queries / config.queries_per_step)
    epoch, b = divmod(step, per_epoch)
    order = list(range(n_queries))
    random.Random(config.seed * 1000003 + epoch).shuffle(order)
    return order[b * config.queries_per_step:(b + 1) * config.queries_per_step]


# ---- model, reference and reward -------------------------------------------------------------------------------

def build_policy(config: GRPOConfig, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The policy (full, or with LoRA adapters) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathloop.models import make_trainable, resolve_model

    path, _ = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = getattr(torch, config.dtype) if config.dtype else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    make_trainable(model)
    if config.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if config.lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ImportError("grpo --lora needs peft: pip install 'mathloop[train]'") from None
        torch.manual_seed(config.seed)  # the adapters' initial weights
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules="all-linear",
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model.to(device), tokenizer


def reward_function(config: GRPOConfig, device: torch.device, questions: dict[str, str]) -> RewardFn:
    """The configured reward as a TRL-style function `fn(prompts, completions, **columns)`.

    `questions` maps each prompt to its question text (reward models with their own chat format read it).
    """
    if config.reward == "verifier":
        return verifier_reward
    if config.reward in ("shaped", "rm"):
        from mathloop.reward.model import load_reward_model
        from mathloop.reward.score import score_samples

        reward_model, rm_tokenizer = load_reward_model(config.rm, device=str(device))

        def score(prompts: Sequence[str], texts: Sequence[str]) -> list[float]:
            samples = [Sample(problem_id="", prompt=p, response=t, metadata={"question": questions.get(p)})
                       for p, t in zip(prompts, texts)]
            return score_samples(reward_model, rm_tokenizer, samples)

        return make_shaped_reward(score, config.alpha) if config.reward == "shaped" else make_rm_reward(score)
    module_name, _, function_name = config.reward.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"grpo: reward {config.reward!r}: cannot import {module_name} ({e})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"grpo: reward {config.reward!r}: {module_name} has no function {function_name}")
    return function


# ---- rollouts --------------------------------------------------------------------------------------------------

@dataclass
class Rollout:
    """One sampled response to one query, with what training needs from it."""

    query: Problem
    prompt: str
    response: str
    sample_index: int
    completion_tokens: int
    finish_reason: str | None
    ended_by_eos: bool  # the model wrote its end-of-turn token (trained as the tokenizer's eos token)
    tool_output_spans: list[list[int]] = dataclasses.field(default_factory=list)
    pred: str | None = None
    verdict: str | None = None
    reward: float = 0.0
    advantage: float = 0.0


def generate_rollouts(backend, executor, queries: list[Problem], prompts: dict[str, str], config: GRPOConfig,
                      params: SamplingParams) -> list[Rollout]:
    """`group_size` responses per query, query by query (a group's rollouts are consecutive)."""
    texts = [prompts[q.id] for q in queries]
    if config.mode == "tir":
        from mathloop.tools.tir import OUTPUT_STOP, tir_generate

        groups = tir_generate(backend, texts, params, executor, config.max_tool_calls, session_prefix="grpo")
        return [Rollout(q, p, t.response, j, t.completion_tokens, t.finish_reason,
                        # a trajectory that stopped at "```output" without code to run did not end its turn
                        ended_by_eos=t.finish_reason == "stop" and not t.response.endswith(OUTPUT_STOP),
                        tool_output_spans=t.tool_output_spans)
                for q, p, group in zip(queries, texts, groups) for j, t in enumerate(group)]
    groups = backend.generate(texts, params)
    return [Rollout(q, p, c.text, j, c.completion_tokens, c.finish_reason,
                    ended_by_eos=c.finish_reason == "stop" and c.stop_string is None)
            for q, p, group in zip(queries, texts, groups) for j, c in enumerate(group)]


def grade_and_reward(rollouts: list[Rollout], reward_fn: RewardFn) -> None:
    """Set each rollout's verdict (the verifier against the query's gold) and reward (the configured function;
    None, a row the function does not apply to, counts as 0 as in TRL). The function gets the columns gold,
    answer_type, choices, question and problem_id, one entry per completion."""
    columns = {"gold": [r.query.gold for r in rollouts],
               "answer_type": [r.query.metadata.get("answer_type", "math") for r in rollouts],
               "choices": [r.query.choices for r in rollouts],
               "question": [r.query.question for r in rollouts],
               "problem_id": [r.query.id for r in rollouts]}
    for r, answer_type in zip(rollouts, columns["answer_type"]):
        if r.query.gold is not None:
            r.pred, r.verdict = grade(r.query.gold, r.response, answer_type, r.query.choices, question=r.query.question)
    rewards = reward_fn([r.prompt for r in rollouts], [r.response for r in rollouts], **columns)
    if len(rewards) != len(rollouts):
        raise ValueError(f"reward function {getattr(reward_fn, '__name__', reward_fn)} returned {len(rewards)} "
                         f"rewards for {len(rollouts)} completions")
    for r, reward in zip(rollouts, rewards):
        r.reward = 0.0 if reward is None else float(reward)


# ---- the loss --------------------------------------------------------------------------------------------------

def encode_rollouts(tokenizer, rollouts: Sequence[Rollout],
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt + response (+ eos) ids (B, T), their attention mask (B, T), and the loss mask (B, T-1)
    over the *predicted* tokens ids[:, 1:]: True on the model's own response tokens, False on the prompt, padding
    and the code executor's output (`response_loss_mask`)."""
    rows, keeps = [], []
    for r in rollouts:
        prompt_ids = tokenizer(r.prompt, add_special_tokens=False)["input_ids"]
        response_ids, response_keep = response_loss_mask(tokenizer, r.response, r.tool_output_spans)
        eos = [tokenizer.eos_token_id] if r.ended_by_eos else []
        rows.append(prompt_ids + response_ids.tolist() + eos)
        keeps.append([False] * len(prompt_ids) + response_keep.tolist() + [True] * len(eos))
    input_ids, attention_mask = pad_batch(rows, pad_token_id(tokenizer), side="right", device=device)
    loss_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for i, keep in enumerate(keeps):
        loss_mask[i, :len(keep)] = torch.tensor(keep, dtype=torch.bool)
    return input_ids, attention_mask, loss_mask[:, 1:]


def sequence_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """log pi(token t+1 | tokens <= t) for every position: (B, T-1) float32."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return token_logprobs(logits[:, :-1], input_ids[:, 1:], temperature=temperature)


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, reference: torch.nn.Module | None, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """The reference policy's log-probabilities: the frozen copy, or (LoRA) the policy with adapters switched off."""
    if reference is not None:
        return sequence_logprobs(reference, input_ids, attention_mask, temperature)
    with model.disable_adapter():
        return sequence_logprobs(model, input_ids, attention_mask, temperature)


def micro_batch_loss(model: torch.nn.Module, reference: torch.nn.Module | None, tokenizer,
                     rollouts: Sequence[Rollout], config: GRPOConfig,
                     device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of a micro-batch of rollouts (their advantages already set), and its stats."""
    input_ids, attention_mask, loss_mask = encode_rollouts(tokenizer, rollouts, device)
    logp = sequence_logprobs(model, input_ids, attention_mask, config.temperature)
    ref_logp = (reference_logprobs(model, reference, input_ids, attention_mask, config.temperature)
                if config.beta > 0 else None)
    advantages = torch.tensor([r.advantage for r in rollouts], dtype=torch.float32, device=device)
    return grpo_loss(logp, None, advantages, loss_mask, ref_logp, config.beta)


# ---- the loop --------------------------------------------------------------------------------------------------

def train_grpo(config: GRPOConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Train (or resume) a policy with GRPO; returns a summary with the final step and the last step's metrics.

    `stop_after` ends the run after that many steps in total, as an interruption would (a checkpoint is saved);
    calling `train_grpo` again with the same config resumes it. The output folder is owned by this run while it
    works (`lock_run_dir`).
    """
    config.validate()
    with lock_run_dir(config.output_dir):
        return _train_grpo(config, stop_after)


def _train_grpo(config: GRPOConfig, stop_after: int | None) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    queries, report = load_queries(config)
    log.info("grpo queries: %s", report)

    # Policy, reference and optimizer; the reference is copied before a checkpoint is loaded: it is the start.
    model, tokenizer = build_policy(config, device)
    reference = None
    if config.beta > 0 and not config.lora:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    step = 0
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None:
        step = load_checkpoint(checkpoint, model, optimizer, config, _RESUME_KEYS)
        log.info("resuming from %s (step %d of %d)", checkpoint, step, config.steps)
        drop_metrics_after(out / "metrics.jsonl", step)
    else:
        _write_run_record(out, config, report)

    # Rollouts come from the policy being trained; the reward sees the prompts as the policy saw them.
    backend = rollout_backend(config, model, tokenizer, device)
    prompts = {q.id: backend.chat_prompt(build_messages(q, config.mode)) for q in queries}
    reward_fn = reward_function(config, device, {prompts[q.id]: q.question for q in queries})

    stop = config.steps if stop_after is None else min(config.steps, stop_after)
    last: dict[str, Any] = {}
    with _executor(config) as executor:
        while step < stop:
            torch.manual_seed(config.seed + step)
            batch = [queries[i] for i in query_indices(step, len(queries), config)]
            params = SamplingParams(n=config.group_size, temperature=config.temperature, top_p=config.top_p,
                                    max_new_tokens=config.max_new_tokens, seed=rollout_seed(config, step))

            # Rollout, grading and reward, advantages within each query's group.
            started = time.time()
            model.eval()
            if config.rollout_backend == "vllm":
                sync_adapter(backend, model, out, step)
            with autocast(device):
                rollouts = generate_rollouts(backend, executor, batch, prompts, config, params)
            grade_and_reward(rollouts, reward_fn)
            rewards = torch.tensor([r.reward for r in rollouts]).view(len(batch), config.group_size)
            advantages = group_advantages(rewards)
            for r, advantage in zip(rollouts, advantages.flatten().tolist()):
                r.advantage = advantage
            rollout_seconds = time.time() - started

            # One optimizer step over all rollouts, micro-batch by micro-batch.
            started = time.time()
            model.train()
            loss_sum, kl_sum = 0.0, 0.0
            for start in range(0, len(rollouts), config.micro_batch):
                part = rollouts[start:start + config.micro_batch]
                share = len(part) / len(rollouts)
                with autocast(device):
                    loss, stats = micro_batch_loss(model, reference, tokenizer, part, config, device)
                (loss * share).backward()
                loss_sum += loss.item() * share
                kl_sum += stats["kl"].item() * share
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            graded = [r for r in rollouts if r.verdict is not None]
            last = {"step": step, "reward_mean": rewards.mean().item(),
                    "accuracy": sum(r.verdict == CORRECT for r in graded) / len(graded) if graded else None,
                    "kl": kl_sum, "loss": loss_sum, "grad_norm": grad_norm.item(),
                    "response_length": sum(r.completion_tokens for r in rollouts) / len(rollouts),
                    "flat_groups": (advantages.abs().amax(dim=1) == 0).float().mean().item(),
                    "rollout_seconds": round(rollout_seconds, 2), "update_seconds": round(time.time() - started, 2)}
            log.info("step %d/%d %s", step, config.steps,
                     " ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)))
            with (out / "metrics.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(last) + "\n")
            write_jsonl(out / "rollouts" / f"step-{step:06d}.jsonl",
                        [rollout_sample(r, config, params, step) for r in rollouts])
            if (config.save_every and step % config.save_every == 0) or step == stop:
                save_checkpoint(out, model, optimizer, step, config, config.keep_checkpoints)

    final = out / "final"
    if step == config.steps and not (final / "config.json").exists():
        save_final(model, tokenizer, final, config)
    return {"step": step, "steps": config.steps, "final": str(final) if step == config.steps else None,
            **{k: v for k, v in last.items() if k != "step"}}


def rollout_backend(config: GRPOConfig, model: torch.nn.Module, tokenizer, device: torch.device):
    """hf: the model being trained generates (no copy, always current). vllm: a vLLM engine on the starting
    weights that generates through the policy's LoRA adapter, saved and handed over at every step."""
    if config.rollout_backend == "vllm":
        from mathloop.backends.vllm import VLLMBackend
        from mathloop.models import resolve_model

        path, _ = resolve_model(config.model)
        return VLLMBackend(path, seed=config.seed, enable_lora=True, max_lora_rank=config.lora_rank,
                           **config.vllm_args)
    from mathloop.backends.hf import HFBackend

    return HFBackend(config.model, model_obj=model, tokenizer_obj=tokenizer, batch_size=config.rollout_batch_size,
                     device=str(device))


def sync_adapter(backend, model: torch.nn.Module, out: Path, step: int) -> None:
    """Save the policy's current LoRA adapter and make the vLLM engine sample through it (the previous step's
    adapter folder is removed)."""
    folder = out / "rollout-adapter"
    target = folder / f"step-{step:06d}"
    model.save_pretrained(str(target))
    backend.use_lora(str(target), f"policy-step-{step}", step + 1)
    for old in folder.glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def rollout_seed(config: GRPOConfig, step: int) -> int:
    """The sampling seed of step `step`: a function of (seed, step) only, so a resumed run samples the same
    rollouts. Random rather than seed + step because the backend adds its batch number to it."""
    return random.Random(config.seed * 1000003 + step).randrange(2 ** 31)


def rollout_sample(r: Rollout, config: GRPOConfig, params: SamplingParams, step: int) -> Sample:
    return Sample(problem_id=r.query.id, prompt=r.prompt, response=r.response, mode=config.mode,
                  benchmark=r.query.benchmark, sample_index=r.sample_index, gold=r.query.gold, pred=r.pred,
                  verdict=r.verdict, completion_tokens=r.completion_tokens, finish_reason=r.finish_reason,
                  model=config.model, sampling=params.to_dict(), tool_output_spans=r.tool_output_spans,
                  metadata={"step": step, "reward": r.reward, "advantage": r.advantage})


def save_final(model: torch.nn.Module, tokenizer, final: Path, config: GRPOConfig) -> None:
    """The trained policy as a plain transformers folder (LoRA merged in place: training is over)."""
    if config.lora:
        model = model.merge_and_unload()
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(final)



def _executor(config: GRPOConfig):
    """The code sandbox for TIR rollouts; a do-nothing context for CoT."""
    if config.mode != "tir":
        return contextlib.nullcontext()
    from mathloop.tools.sandbox import Sandbox

    return Sandbox(timeout=config.tool_timeout)




def _write_run_record(out: Path, config: GRPOConfig, report: dict[str, int]) -> None:
    from mathloop.hardware import hardware_info
    from mathloop.pipeline.evaluate import package_versions

    info = {"config": dataclasses.asdict(config), "queries": report,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": package_versions(),
            "hardware": hardware_info()}
    write_json(out / "run.json", info)
