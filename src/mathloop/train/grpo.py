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
     Log-probabilities come from the LM head on response tokens only (`completion_logprobs`); with beta = 0 there
     is no reference and rollouts of advantage 0 are skipped (their loss and gradient are exactly 0).

Under `accelerate launch` (N processes) each process rolls out every N-th query of the step and trains on its
groups; gradients are averaged (DDP), each micro-batch weighted by its share of the whole step, so N processes
reach the weights of one on the same rollouts; only the main process writes (and pushes adapters to a rollout
engine). hf and openvino rollouts are seeded per response (`backends.base.sample_seed` of the step's seed, the
prompt and the response's index), so they do not depend on which process draws them; dynamic sampling needs one
process.

It is a plain PyTorch loop rather than TRL's GRPOTrainer because TIR rollouts need the sandbox inside the rollout
and the executor's output masked out of the loss, and the shaped reward needs the verifier and the reward model
together; both would have to be bent into TRL's generation and reward hooks. Users who prefer TRL (1.x) can still
use it with the TRL-style reward functions of `mathloop.reward.shaping`.

Choices the paper leaves open, or where mathloop differs from it:
  - one update per rollout batch by default (pi_old = pi, as DeepSeekMath's GRPO with one inner iteration): the
    ratio is 1, so PPO's clip never acts; the gradient is A * grad log pi plus the KL pull. `updates_per_batch` > 1
    reuses the batch: pi_old is the trainer's log-probs from the first update (the weights of rollout time) and the
    ratio is clipped to [1 - clip_low, 1 + clip_high]. The behaviour policy mu is the rollout engine; with vLLM
    or OpenVINO rollouts and `tis_cap`, its reported log-probs weight each token by min(pi_old / mu, tis_cap);
  - practitioners' variants, all off by default: dynamic sampling, overlong mask / soft penalty, loss_type dapo /
    dr_grpo, scale_rewards batch / none (docs/training.md);
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
  metrics.jsonl                  one line per step: reward mean and std, accuracy, KL, loss, response length, share
                                 of truncated responses, seconds (also to TensorBoard / W&B with report_to)
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mathloop.backends import Backend, backend_names, backend_settings, load_backend
from mathloop.backends.base import (
    SAMPLER_OPTIONS,
    SamplerOptions,
    SamplingParams,
    sampling_params,
    validate_sampler_options,
)
from mathloop.config import positive_float, positive_int, resume_keys
from mathloop.generate import code_executor, generate, grade_samples, response_samples
from mathloop.hardware import autocast, release_freed_memory
from mathloop.progress import progress_bar
from mathloop.prompts import build_messages
from mathloop.records import CORRECT, Problem, Sample, read_records, write_jsonl
from mathloop.reward.shaping import RewardFn, make_rm_reward, make_shaped_reward, select_queries, verifier_reward
from mathloop.runs import lock_run_dir, new_run_record, refuse_other_kind, write_json
from mathloop.tools.errors import UNSAFE_FILE_ACCESS_SETTING
from mathloop.tokens import pad_batch, pad_token_id, response_loss_mask
from mathloop.train.checkpoint import (
    drop_metrics_after,
    final_done,
    finish_final,
    latest_checkpoint,
    load_checkpoint,
    mark_whole_final,
    save_checkpoint,
    start_final,
)
from mathloop.train.grpo_math import (
    aggregation_units,
    drop_truncated,
    group_advantages,
    grpo_loss,
    soft_overlong_penalty,
    truncated_importance_weights,
    zero_variance_groups,
)
from mathloop.train.logprobs import completion_logprobs
from mathloop.train.tracking import MetricsReporter, check_report_to

log = logging.getLogger(__name__)

BUILTIN_REWARDS = ("shaped", "verifier", "rm")
# Every backend a user may name generates rollouts (`rollout_backend`): hf is the trained model itself, the others
# are engines besides it that generate through the policy's LoRA adapter (`Backend.supports_lora`).
ROLLOUT_BACKENDS = tuple(backend_names())
# loss_type -> how `grpo_loss` reduces the per-token loss (`aggregate_token_loss`)
LOSS_AGGREGATION = {"grpo": "seq_mean_token_mean", "dapo": "token_mean", "dr_grpo": "seq_mean_token_sum_norm"}


@dataclass
class GRPOConfig(SamplerOptions):
    """Every setting of a GRPO run (recorded in run.json; YAML keys use these names)."""

    output_dir: str = dataclasses.field(metadata={
        "help": "run folder (created; resumed when it holds checkpoints): checkpoints, logs, rollouts, final/"})
    model: str = dataclasses.field(default='default', metadata={"resume": True,
        "help": "policy: 'default' (embedded Qwen2.5-Coder-0.5B-Instruct), a local folder or a Hub id"})
    queries: str | None = dataclasses.field(default=None, metadata={"resume": True,
        "help": "problems JSONL to train on (question, gold)"})
    benchmark: str | None = dataclasses.field(default=None, metadata={"resume": True,
        "help": "or a benchmark's split as the queries, e.g. gsm8k"})
    split: str = dataclasses.field(default='train', metadata={"resume": True, "help": "split of --benchmark"})
    data_dir: str | None = dataclasses.field(default=None, metadata={
        "help": "benchmark folder (default: $MATHLOOP_DATA_DIR)"})
    limit: int | None = dataclasses.field(default=None, metadata={"resume": True, "type": positive_int,
        "help": "the first N queries only (default: all)"})
    selection_samples: str | None = dataclasses.field(default=None, metadata={"resume": True,
        "help": "graded samples JSONL: keep only queries with --selection-low..--selection-high of --selection-n "
                "samples correct"})
    selection_low: int = dataclasses.field(default=2, metadata={"resume": True,
        "help": "fewest correct samples a kept query has"})
    selection_high: int = dataclasses.field(default=5, metadata={"resume": True,
        "help": "most correct samples a kept query has"})
    selection_n: int = dataclasses.field(default=8, metadata={"resume": True, "type": positive_int,
        "help": "samples per query the selection counts"})
    mode: str = dataclasses.field(default='cot', metadata={"resume": True, "choices": ["cot", "tir"],
        "help": "cot = chain of thought; tir = the model's Python runs in the sandbox"})
    max_tool_calls: int = dataclasses.field(default=4, metadata={"type": positive_int,
        "help": "tir: code executions per response"})
    tool_timeout: float = dataclasses.field(default=5.0, metadata={"type": positive_float,
        "help": "tir: seconds per execution"})
    unsafe_sandbox_file_access: bool = dataclasses.field(default=False, metadata=UNSAFE_FILE_ACCESS_SETTING)
    group_size: int = dataclasses.field(default=8, metadata={"resume": True, "help": "responses per query"})
    queries_per_step: int = dataclasses.field(default=16, metadata={"resume": True, "type": positive_int,
        "help": "queries per step"})
    steps: int = dataclasses.field(default=100, metadata={"type": positive_int, "help": "optimizer steps in all"})
    max_new_tokens: int = dataclasses.field(default=1024, metadata={"type": positive_int, "help": "per response"})
    temperature: float = dataclasses.field(default=1.0, metadata={
        "help": "rollout temperature, also applied to the log-probabilities"})
    top_p: float = dataclasses.field(default=1.0, metadata={"help": "rollout nucleus sampling"})
    rollout_batch_size: int = dataclasses.field(default=64, metadata={"type": positive_int,
        "help": "hf rollouts: sequences per generation batch"})
    rollout_backend: str = dataclasses.field(default='hf', metadata={"choices": list(ROLLOUT_BACKENDS),
        "help": "hf: the training model generates; vllm: a vLLM engine with the step's LoRA adapter; openai: a server"
                " at --rollout-base-url; openvino: OpenVINO GenAI on CPU with the step's LoRA adapter (settings in "
                "the config's openvino_args)"})
    rollout_base_url: str | None = dataclasses.field(default=None, metadata={
        "help": "openai rollouts: the server's URL (vLLM serve with --enable-lora); it is sent the policy's LoRA "
                "adapter every step"})
    rollout_adapter_dir: str | None = dataclasses.field(default=None, metadata={
        "help": "openai rollouts: where adapters are saved, a path the server can read (default: "
                "<output_dir>/rollout-adapter; another machine needs a shared filesystem)"})
    vllm_args: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={
        "help": "vllm rollouts: vLLM engine settings, e.g. gpu_memory_utilization: 0.4"})
    openvino_args: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={
        "help": "openvino rollouts: OpenVINOBackend settings, e.g. weight_format: int8 (default fp16 weights with f32 "
                "compute: the closest to the trained policy), threads"})
    reward: str = dataclasses.field(default='shaped', metadata={"resume": True,
        "help": "shaped (verifier + reward model), verifier, rm, or module.path:function with TRL's reward signature"})
    rm: str | None = dataclasses.field(default=None, metadata={"resume": True,
        "help": "reward model folder (`mathloop rm train`) or Hub id"})
    alpha: float = dataclasses.field(default=0.5, metadata={"resume": True,
        "help": "shaped reward: sigmoid(alpha * r_m) + (r_v - 1)"})
    learning_rate: float | None = dataclasses.field(default=None, metadata={"flags": ("--learning-rate", "--lr"),
        "help": "AdamW learning rate (default: 1e-6, with --lora 2e-5)"})
    weight_decay: float = dataclasses.field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = dataclasses.field(default=1.0, metadata={"help": "gradients clipped to this global norm"})
    beta: float = dataclasses.field(default=0.001, metadata={
        "help": "KL coefficient to the reference policy; 0 drops the reference"})
    loss_type: str = dataclasses.field(default='grpo', metadata={"choices": list(LOSS_AGGREGATION),
        "help": "loss aggregation: grpo (per-response token mean), dapo (batch token mean), dr_grpo (constant "
                "normalizer)"})
    scale_rewards: str = dataclasses.field(default='group', metadata={"choices": ["group", "batch", "none"],
        "help": "divide advantages by the group's reward std, the batch's, or none"})
    dynamic_sampling: bool = dataclasses.field(default=False, metadata={
        "help": "drop groups whose rewards are all equal and sample more queries to fill the step (DAPO)"})
    dynamic_sampling_tries: int = dataclasses.field(default=4, metadata={
        "help": "rollout rounds per step at most (the first included) when dynamic_sampling"})
    overlong: str = dataclasses.field(default='none', metadata={"choices": ["none", "mask", "soft_penalty"],
        "help": "truncated responses: trained as is, masked out of the loss, or DAPO's soft length penalty"})
    overlong_buffer: int = dataclasses.field(default=256, metadata={
        "help": "soft_penalty: tokens before max_new_tokens where the penalty ramps from 0 to -1"})
    overlong_penalty: float = dataclasses.field(default=1.0, metadata={
        "help": "soft_penalty: the penalty at max_new_tokens"})
    updates_per_batch: int = dataclasses.field(default=1, metadata={"type": positive_int,
        "help": "optimizer steps per rollout batch; > 1 makes the clipped ratio act"})
    clip_low: float = dataclasses.field(default=0.2, metadata={
        "help": "ratio clipped to [1 - clip_low, 1 + clip_high]"})
    clip_high: float = dataclasses.field(default=0.2, metadata={"help": "upper clip (DAPO's clip-higher: 0.28)"})
    tis_cap: float | None = dataclasses.field(default=None, metadata={
        "help": "vllm or openvino rollouts: truncated importance sampling pi_old/mu capped at this (e.g. 2); "
                "openvino needs temperature 1 and top_p 1"})
    micro_batch: int = dataclasses.field(default=8, metadata={"type": positive_int,
        "help": "sequences per forward/backward"})
    lora: bool = dataclasses.field(default=False, metadata={"resume": True,
        "help": "train LoRA adapters instead of all weights (needs mathloop[train])"})
    lora_rank: int = dataclasses.field(default=16, metadata={"resume": True, "help": "LoRA rank"})
    lora_alpha: int = dataclasses.field(default=32, metadata={"resume": True,
        "help": "LoRA scaling alpha (the update is scaled by alpha / rank)"})
    lora_layers: int | None = dataclasses.field(default=None, metadata={"resume": True, "type": positive_int,
        "help": "LoRA in the last N transformer blocks only (no backward below them; default: every block)"})
    skip_zero_advantage: bool = dataclasses.field(default=True, metadata={
        "flags": ("--no-skip-zero-advantage",), "action": "store_false",
        "help": "with --beta 0, still run forward and backward on rollouts of advantage 0 (flat groups; their loss "
                "and gradient are 0, so this only costs time)"})
    sort_by_length: bool = dataclasses.field(default=True, metadata={
        "flags": ("--no-sort-by-length",), "action": "store_false",
        "help": "micro-batches in rollout order instead of rollouts of similar length together"})
    threads: int | None = dataclasses.field(default=None, metadata={"type": positive_int,
        "help": "torch threads of the trainer (default: one per core)"})
    overlap_rollouts: bool = dataclasses.field(default=False, metadata={
        "help": "rollout engines other than hf: generate the next step's rollouts while this step's update runs (one "
                "step stale; with vllm and --tis-cap importance-weighted)"})
    gradient_checkpointing: bool = dataclasses.field(default=False, metadata={
        "help": "recompute activations in the backward pass to save memory"})
    dtype: str | None = dataclasses.field(default=None, metadata={
        "help": "policy weights dtype (default: float32; bfloat16 saves memory with LoRA)"})
    save_every: int = dataclasses.field(default=25, metadata={
        "help": "checkpoint every N steps (and always at the end)"})
    keep_checkpoints: int = dataclasses.field(default=2, metadata={
        "help": "checkpoints kept in the run folder (older ones are deleted)"})
    report_to: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "also log metrics to tensorboard and/or wandb, comma-separated (<output-dir>/tensorboard; pip install"
                " 'mathloop[tensorboard]')"})
    seed: int = dataclasses.field(default=0, metadata={"resume": True, "help": "query order and sampling"})

    def __post_init__(self) -> None:
        if self.learning_rate is None:
            self.learning_rate = 2e-5 if self.lora else 1e-6

    def validate(self) -> None:
        validate_sampler_options(self, "grpo")
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
        if self.rollout_backend not in ROLLOUT_BACKENDS:
            raise ValueError(f"grpo: rollout_backend must be one of {', '.join(ROLLOUT_BACKENDS)}, got "
                             f"{self.rollout_backend!r}")
        if self.rollout_backend != "hf" and not self.lora:
            raise ValueError(f"grpo: rollout_backend {self.rollout_backend} needs lora: true (the policy reaches the "
                             f"rollout engine as a LoRA adapter each step)")
        if self.openvino_args:
            if self.rollout_backend != "openvino":
                raise ValueError(f"grpo: openvino_args are for rollout_backend openvino, got rollout_backend "
                                 f"{self.rollout_backend}")
            known = backend_settings("openvino")
            unknown = sorted(set(self.openvino_args) - set(known))
            if unknown:
                raise ValueError(f"grpo: openvino_args: unknown key(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(known)}")
        if (self.rollout_backend == "openai") != (self.rollout_base_url is not None):
            raise ValueError("grpo: rollout_backend openai needs rollout_base_url (the server's URL, e.g. "
                             "http://localhost:8000/v1), and rollout_base_url needs rollout_backend openai")
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
        for name, allowed in (("loss_type", LOSS_AGGREGATION), ("scale_rewards", ("group", "batch", "none")),
                              ("overlong", ("none", "mask", "soft_penalty"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"grpo: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.lora_layers is not None and (self.lora_layers < 1 or not self.lora):
            raise ValueError(f"grpo: lora_layers needs lora: true and a value >= 1, got {self.lora_layers}")
        if self.overlap_rollouts and self.rollout_backend == "hf":
            raise ValueError("grpo: overlap_rollouts needs a rollout engine besides the trained model (rollout_backend "
                             "openvino, vllm or openai); with hf the model that trains also generates")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"grpo: threads must be >= 1, got {self.threads}")
        for name in ("dynamic_sampling_tries", "updates_per_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"grpo: {name} must be >= 1, got {getattr(self, name)}")
        if self.overlong == "soft_penalty" and not 0 < self.overlong_buffer <= self.max_new_tokens:
            raise ValueError(f"grpo: overlong_buffer must be in 1..max_new_tokens ({self.max_new_tokens}), got "
                             f"{self.overlong_buffer}")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            raise ValueError(f"grpo: need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.tis_cap is not None:
            if self.tis_cap <= 0:
                raise ValueError(f"grpo: tis_cap must be > 0, got {self.tis_cap}")
            if self.rollout_backend == "hf":
                raise ValueError("grpo: tis_cap corrects rollouts from another engine; with rollout_backend hf the "
                                 "trained model samples itself (nothing to correct): use rollout_backend vllm or "
                                 "openvino, or drop tis_cap")
            if self.rollout_backend not in ("vllm", "openvino"):
                raise ValueError(f"grpo: tis_cap needs the engine's sampled token ids and their log-probabilities, "
                                 f"which rollout_backend vllm and openvino report and {self.rollout_backend} does "
                                 f"not: use one of those or drop tis_cap")
            if self.rollout_backend == "openvino":
                shaped = {"temperature": self.temperature, "top_p": self.top_p,
                          **sampling_params(self).sampler_options()}
                if shaped != {"temperature": 1.0, "top_p": 1.0}:
                    raise ValueError(f"grpo: tis_cap with rollout_backend openvino needs temperature 1 and top_p 1 "
                                     f"and no other sampler option (the engine reports the model's log-probabilities, "
                                     f"not those of the distribution it sampled from once these reshape it); got "
                                     f"{shaped}")
            if self.mode != "cot":
                raise ValueError("grpo: tis_cap needs mode cot (TIR trajectories are several engine calls with "
                                 "executor text between them; their token log-probabilities are not kept)")
        check_report_to(self.report_to, "grpo")


# Settings a resumed run must share with the run that wrote the checkpoint.
# the resume keys: fields marked metadata={"resume": True}; rollout sampling (SAMPLER_OPTIONS, inherited) may change
# between runs of one folder
_RESUME_KEYS = resume_keys(GRPOConfig, but=SAMPLER_OPTIONS)


def _is_function_spec(text: str) -> bool:
    module, _, function = text.partition(":")
    return bool(module) and bool(function)


# ---- queries ---------------------------------------------------------------------------------------------------

def load_queries(config: GRPOConfig) -> tuple[list[Problem], dict[str, int]]:
    """The RL queries and a report of how many each filter kept.

    Queries without a gold answer are dropped for the verifier-based rewards (shaped, verifier). With
    `selection_samples`, only queries with `selection_low`..`selection_high` correct of their first `selection_n`
    graded samples stay (the paper's 2..5 of 8): neither always nor never solved, so a group has rewards to compare.
    """
    from mathloop.data.benchmarks import load_problem_source

    source = config.queries or f"{config.benchmark}:{config.split}"
    problems = load_problem_source(source, config.data_dir, config.limit)
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
    from mathloop.models import add_lora, enable_activation_checkpointing, load_causal_lm, load_tokenizer, lora_config
    from mathloop.models import resolve_model, top_layer_lora

    path, _ = resolve_model(config.model)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, getattr(torch, config.dtype) if config.dtype else torch.float32)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if config.lora:
        lora = lora_config("grpo", config.lora_rank, config.lora_alpha, task_type="CAUSAL_LM",
                           **top_layer_lora(model, config.lora_layers))
        torch.manual_seed(config.seed)  # the adapters' initial weights
        model = add_lora(model, lora)
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
            samples = [Sample(problem_id="", prompt=p, response=t, question=questions.get(p))
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
    """One sampled response to one query: its `Sample` (the record written to rollouts/, graded by the verifier),
    and what training needs besides."""

    sample: Sample
    query: Problem
    ended_by_eos: bool  # the model wrote its end-of-turn token (trained as the tokenizer's eos token)
    token_ids: list[int] | None = None  # the engine's sampled token ids, when it reports them (then trained as is)
    behaviour_logprobs: list[float] | None = None  # the engine's log-probability of each of those tokens (mu)
    reward: float = 0.0
    advantage: float = 0.0


def generate_rollouts(backend, executor, queries: list[Problem], prompts: dict[str, str], config: GRPOConfig,
                      params: SamplingParams) -> list[Rollout]:
    """`group_size` responses per query, query by query (a group's rollouts are consecutive), graded against
    each query's gold (queries without one stay ungraded)."""
    texts = [prompts[q.id] for q in queries]
    groups = generate(backend, texts, params, config.mode, executor, config.max_tool_calls, session_prefix="grpo")
    samples = response_samples(queries, texts, groups, params, config.mode, config.model)
    completions = [c for group in groups for c in group]
    # the engine's log-probabilities matter only to the rollout-engine correction (engines report them for every
    # sample's confidence too)
    rollouts = [Rollout(s, q, ended_by_eos=c.finish_reason == "stop" and c.stop_string is None,
                        token_ids=c.metadata.get("token_ids"),
                        behaviour_logprobs=c.metadata.get("token_logprobs") if config.tis_cap is not None else None)
                for s, c, q in zip(samples, completions, (q for q in queries for _ in range(params.n)))]
    graded = [r for r in rollouts if r.sample.gold is not None]
    grade_samples([r.sample for r in graded], [r.query.choices for r in graded])
    return rollouts


def reward_rollouts(rollouts: list[Rollout], reward_fn: RewardFn) -> None:
    """Set each rollout's reward (the configured function; None, a row the function does not apply to, counts as
    0 as in TRL). The function gets the columns gold, answer_type, choices, question, problem_id and finish_reason
    ("length": cut at the token limit, graded without fallback extraction), one entry per completion."""
    columns = {"gold": [r.sample.gold for r in rollouts], "answer_type": [r.sample.answer_type for r in rollouts],
               "choices": [r.query.choices for r in rollouts], "question": [r.sample.question for r in rollouts],
               "problem_id": [r.sample.problem_id for r in rollouts],
               "finish_reason": [r.sample.finish_reason for r in rollouts]}
    rewards = reward_fn([r.sample.prompt for r in rollouts], [r.sample.response for r in rollouts], **columns)
    if len(rewards) != len(rollouts):
        raise ValueError(f"reward function {getattr(reward_fn, '__name__', reward_fn)} returned {len(rewards)} "
                         f"rewards for {len(rollouts)} completions")
    for r, reward in zip(rollouts, rewards):
        r.reward = 0.0 if reward is None else float(reward)


# ---- the loss --------------------------------------------------------------------------------------------------

@dataclass
class MicroBatch:
    """The tensors of a micro-batch of rollouts, encoded once per rollout batch and reused by every update.

    Log-probabilities of the predicted tokens ids[:, 1:], (B, T-1), by policy (see `mathloop.train.grpo_math`):
    `behaviour_logp` the rollout engine's (mu; None when it reported none), `old_logp` the trainer's under the
    weights of rollout time (pi_old; filled by the first update, which runs on exactly those weights), `ref_logp`
    the reference policy's (filled once, when beta > 0).
    """

    input_ids: torch.Tensor  # (B, T) right-padded prompt + response (+ eos)
    attention_mask: torch.Tensor  # (B, T)
    loss_mask: torch.Tensor  # (B, T-1) True on the model's own response tokens
    advantages: torch.Tensor  # (B,)
    truncated: torch.Tensor  # (B,) bool: the token budget cut the response off
    behaviour_logp: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None


def encode_rollouts(tokenizer, rollouts: Sequence[Rollout], device: torch.device) -> MicroBatch:
    """Right-padded prompt + response (+ eos) ids (B, T), their attention mask (B, T), and the loss mask (B, T-1)
    over the *predicted* tokens ids[:, 1:]: True on the model's own response tokens, False on the prompt, padding
    and the code executor's output (`response_loss_mask`).

    A rollout that carries the engine's token ids is trained on those ids (its eos included, when it wrote one),
    so the engine's log-probabilities line up token by token; others are re-tokenized from their text."""
    rows, keeps, behaviour = [], [], []
    for r in rollouts:
        prompt_ids = tokenizer(r.sample.prompt, add_special_tokens=False)["input_ids"]
        if r.token_ids is not None:
            response, keep = list(r.token_ids), [True] * len(r.token_ids)
            if r.behaviour_logprobs is not None and len(r.behaviour_logprobs) != len(response):
                raise ValueError(f"rollout of {r.query.id}: {len(r.behaviour_logprobs)} log-probabilities for "
                                 f"{len(response)} tokens from the rollout engine")
        else:
            response_ids, response_keep = response_loss_mask(tokenizer, r.sample.response, r.sample.tool_output_spans)
            eos = [tokenizer.eos_token_id] if r.ended_by_eos else []
            response, keep = response_ids.tolist() + eos, response_keep.tolist() + [True] * len(eos)
        rows.append(prompt_ids + response)
        keeps.append([False] * len(prompt_ids) + keep)
        behaviour.append((len(prompt_ids), r.behaviour_logprobs))
    input_ids, attention_mask = pad_batch(rows, pad_token_id(tokenizer), side="right", device=device)
    loss_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for i, keep in enumerate(keeps):
        loss_mask[i, :len(keep)] = torch.tensor(keep, dtype=torch.bool)
    behaviour_logp = None
    if any(logprobs is not None for _, logprobs in behaviour):
        if not all(logprobs is not None for _, logprobs in behaviour):
            raise ValueError("the rollout engine reported log-probabilities for some responses of a batch only")
        behaviour_logp = torch.zeros(input_ids.shape, dtype=torch.float32, device=device)
        for i, (prompt_length, logprobs) in enumerate(behaviour):
            behaviour_logp[i, prompt_length:prompt_length + len(logprobs)] = torch.tensor(logprobs)
        behaviour_logp = behaviour_logp[:, 1:]  # log mu(token t+1), aligned with the loss mask
    return MicroBatch(input_ids, attention_mask, loss_mask[:, 1:],
                      advantages=torch.tensor([r.advantage for r in rollouts], dtype=torch.float32, device=device),
                      truncated=torch.tensor([r.sample.finish_reason == "length" for r in rollouts], device=device),
                      behaviour_logp=behaviour_logp)


def update_batches(tokenizer, trained: Sequence[Rollout], config: GRPOConfig, device: torch.device
                   ) -> tuple[list[MicroBatch], list[int], float]:
    """The micro-batches an update runs on, what each one's loss averages over (`aggregation_units`), and that
    count for all of `trained`. With beta = 0 and `skip_zero_advantage`, rollouts of advantage 0 are left out of the
    micro-batches (their loss and gradient are exactly 0) but still count in the total, so the step's loss and
    gradient are those of the full computation."""
    aggregation = LOSS_AGGREGATION[config.loss_type]
    batches = micro_batches(tokenizer, trained, config, device)
    total_units = float(sum(aggregation_units(batch.loss_mask, aggregation) for batch in batches))
    if config.skip_zero_advantage and config.beta == 0 and any(r.advantage == 0 for r in trained):
        batches = micro_batches(tokenizer, [r for r in trained if r.advantage != 0], config, device)
    return batches, [aggregation_units(batch.loss_mask, aggregation) for batch in batches], total_units


def micro_batches(tokenizer, rollouts: Sequence[Rollout], config: GRPOConfig, device: torch.device) -> list[MicroBatch]:
    """The rollouts encoded in micro-batches of `micro_batch` (with `sort_by_length`, longest first, so that each
    micro-batch pads to a length close to its rows'), truncated responses masked out with overlong mask."""
    if config.sort_by_length:
        def length(r: Rollout) -> int:
            response = len(r.token_ids) if r.token_ids is not None else r.sample.completion_tokens or 0
            return len(tokenizer(r.sample.prompt, add_special_tokens=False)["input_ids"]) + response

        lengths = {id(r): length(r) for r in rollouts}
        rollouts = sorted(rollouts, key=lambda r: -lengths[id(r)])
    batches = [encode_rollouts(tokenizer, rollouts[i:i + config.micro_batch], device)
               for i in range(0, len(rollouts), config.micro_batch)]
    if config.overlong == "mask":
        for batch in batches:
            batch.loss_mask = drop_truncated(batch.loss_mask, batch.truncated)
    return batches


def sequence_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      temperature: float, *, entropy: bool = False, loss_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(token t+1 | tokens <= t), (B, T-1) float32, and (with `entropy`) the entropy of the policy's
    distribution there (B, T-1), without gradient: at the positions of `loss_mask` (default: every non-padding
    position), 0 elsewhere. The LM head runs on those positions only, chunked (`completion_logprobs`)."""
    mask = attention_mask[:, 1:].bool() if loss_mask is None else loss_mask
    if entropy:
        return completion_logprobs(model, input_ids, attention_mask, mask, temperature=temperature, entropy=True)
    return completion_logprobs(model, input_ids, attention_mask, mask, temperature=temperature), None


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, reference: torch.nn.Module | None, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor, temperature: float,
                       loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The reference policy's log-probabilities: the frozen copy, or (LoRA) the policy with adapters switched off."""
    if reference is not None:
        return sequence_logprobs(reference, input_ids, attention_mask, temperature, loss_mask=loss_mask)[0]
    with model.disable_adapter():
        return sequence_logprobs(model, input_ids, attention_mask, temperature, loss_mask=loss_mask)[0]


def micro_batch_loss(model: torch.nn.Module, reference: torch.nn.Module | None, batch: MicroBatch,
                     config: GRPOConfig, policy: torch.nn.Module | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of a micro-batch, and its stats (those of `grpo_loss`; on the first update of a batch also
    "entropy_sum" and "tokens", and with `tis_cap` the importance-ratio stats).

    The first call on a batch stores the trainer's log-probabilities as pi_old (the weights have not moved yet, so
    its ratio is exactly 1), and the reference's; later updates reuse both. `policy` is the module that `model`
    wraps (DDP) when it wraps one: the LoRA reference switches its adapters off.
    """
    mask = batch.loss_mask
    first = batch.old_logp is None
    logp, entropy = sequence_logprobs(model, batch.input_ids, batch.attention_mask, config.temperature,
                                      entropy=first, loss_mask=mask)
    if first:
        batch.old_logp = logp.detach()  # no forward of its own: the weights of rollout time are these
        if config.beta > 0:  # beta = 0: no reference forward at all
            batch.ref_logp = reference_logprobs(policy or model, reference, batch.input_ids, batch.attention_mask,
                                                config.temperature, loss_mask=mask)
    is_weights, is_stats = None, {}
    if config.tis_cap is not None and batch.behaviour_logp is not None:
        is_weights, is_stats = truncated_importance_weights(batch.old_logp, batch.behaviour_logp, mask,
                                                            config.tis_cap)
    loss, stats = grpo_loss(logp, batch.old_logp, batch.advantages, mask, batch.ref_logp, config.beta,
                            config.clip_low, config.clip_high, LOSS_AGGREGATION[config.loss_type],
                            max_tokens=config.max_new_tokens, is_weights=is_weights)
    stats.update(is_stats)
    stats["tokens"] = mask.sum()
    if entropy is not None:
        stats["entropy_sum"] = entropy.masked_fill(~mask, 0.0).sum()
    return loss, stats


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
    from mathloop.train.distributed import make_accelerator

    out = Path(config.output_dir)
    refuse_other_kind(out, "grpo")
    # Under `accelerate launch` every process rolls out its share of the step's queries and trains on them;
    # gradients are averaged across processes (DDP), and only the main process writes the run folder.
    accelerator = make_accelerator()
    device, main = accelerator.device, accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    check_process_count(config, world)
    if config.threads:
        torch.set_num_threads(config.threads)
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
        if main:
            drop_metrics_after(out / "metrics.jsonl", step)
    elif main:
        _write_run_record(out, config, report)
    policy = model  # the module itself: rollouts, adapters and checkpoints; `model` may be its DDP wrapper
    model, optimizer = accelerator.prepare(model, optimizer)

    # Rollouts come from the policy being trained; the reward sees the prompts as the policy saw them.
    backend = rollout_backend(config, policy, tokenizer, device)
    prompts = {q.id: backend.chat_prompt(build_messages(q, config.mode)) for q in queries}
    reward_fn = reward_function(config, device, {prompts[q.id]: q.question for q in queries})

    stop = config.steps if stop_after is None else min(config.steps, stop_after)
    last: dict[str, Any] = {}
    reporter = MetricsReporter(config.report_to, out, "grpo", dataclasses.asdict(config), resume_step=step,
                               main_process=main)
    # overlap_rollouts: a thread generates step s+1's rollouts (from the adapter of step s) while step s updates.
    ahead = ThreadPoolExecutor(1, thread_name_prefix="grpo-rollouts") if config.overlap_rollouts else None
    pending: Future | None = None
    with code_executor(config.mode, config.tool_timeout, config.unsafe_sandbox_file_access) as executor, reporter, \
            progress_bar(config.steps, "grpo", "step", enabled=main, initial=step) as bar, \
            ahead if ahead is not None else contextlib.nullcontext():
        while step < stop:
            torch.manual_seed(config.seed + step)

            # 1. Rollout, grading and reward (dynamic sampling: until the step's groups all carry a signal).
            started = time.time()
            policy.eval()
            stale = pending is not None  # sampled during the previous step's update, from its adapter
            sampled = None
            if pending is not None:
                sampled, trained, flat, tries = pending.result()
                pending = None
            if backend.supports_lora:  # an engine besides the policy: it gets the step's adapter
                share_adapter(backend, policy, config, out, step, accelerator)
            if sampled is None:
                sampled, trained, flat, tries = rollout_step(step, queries, backend, executor, prompts, reward_fn,
                                                             config, device, rank, world)
            if ahead is not None and step + 1 < stop:
                pending = ahead.submit(rollout_step, step + 1, queries, backend, executor, prompts, reward_fn, config,
                                       device, rank, world)

            # 2. Advantages: group-relative, from every process's rewards (the batch std spans them all).
            advantages = process_advantages(gather_rewards(accelerator, [r.reward for r in trained]), rank,
                                            config.group_size, config.scale_rewards)
            for r, advantage in zip(trained, advantages):
                r.advantage = advantage
            rollout_seconds = time.time() - started

            # 3. The loss and the optimizer steps.
            started = time.time()
            model.train()
            batches, units, total_units = update_batches(tokenizer, trained, config, device)
            if world > 1:  # what the loss averages over, in the whole step
                total_units = accelerator.reduce(torch.tensor(total_units, device=device), "sum").item()
            sums = update_policy(model, reference, policy, optimizer, trainable, batches, units, total_units, config,
                                 accelerator)
            del batches
            if device.type == "cpu":  # the step's activations, freed, go back to the OS (else RSS climbs per step)
                release_freed_memory()
            step += 1
            bar.update(1)

            # 4. Metrics and the rollouts file, of every process's share of the step, written by the main process.
            if world > 1:
                sums, sampled, trained = reduce_step(accelerator, sums, sampled, trained)
            last = step_metrics(step, sampled, trained, sums, config, flat_groups=flat, sampling_tries=tries,
                                stale=stale, rollout_seconds=rollout_seconds,
                                update_seconds=time.time() - started)
            if main:
                log.info("step %d/%d %s", step, config.steps,
                         " ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)))
                with (out / "metrics.jsonl").open("a", encoding="utf-8") as f:
                    f.write(json.dumps(last) + "\n")
                reporter.log(last, step)
                trained_ids = {id(r) for r in trained}
                write_jsonl(out / "rollouts" / f"step-{step:06d}.jsonl",
                            [rollout_sample(r, step, id(r) in trained_ids) for r in sampled])
                if (config.save_every and step % config.save_every == 0) or step == stop:
                    save_checkpoint(out, policy, optimizer, step, config, config.keep_checkpoints)
            accelerator.wait_for_everyone()

    if step == config.steps and main:
        if not final_done(out):
            save_final(policy, tokenizer, out, config)
        mark_whole_final(out)  # a final/ of an earlier session killed before its marker
    accelerator.wait_for_everyone()
    return {"step": step, "steps": config.steps, "final": str(out / "final") if step == config.steps else None,
            **{k: v for k, v in last.items() if k != "step"}}


# ---- one step's math: advantages, update, metrics --------------------------------------------------------------

def process_advantages(rewards: Sequence[Sequence[float]], rank: int, group_size: int, scale: str) -> list[float]:
    """The advantages of process `rank`'s trained rollouts, from every process's rewards (`rewards[p]`: process
    p's, whole groups of `group_size` in order; one process: `[its rewards]`). With `scale` "group" or "none" a
    process needs only its own groups; with "batch" the std is that of every process's rewards, so N processes get
    the advantages one process gets on the same rollouts.

    >>> process_advantages([[1.0, 0.0, 1.0, 1.0]], 0, 2, "none")
    [0.5, -0.5, 0.0, 0.0]
    >>> one = process_advantages([[1.0, 0.0, 3.0, 1.0]], 0, 2, "batch")
    >>> process_advantages([[1.0, 0.0], [3.0, 1.0]], 1, 2, "batch") == one[2:]
    True
    """
    if not rewards[rank]:
        return []
    if scale != "batch":
        own = torch.tensor(list(rewards[rank]), dtype=torch.float32)
        return group_advantages(own.view(-1, group_size), scale=scale).flatten().tolist()
    every = torch.tensor([x for part in rewards for x in part], dtype=torch.float32)
    whole = group_advantages(every.view(-1, group_size), scale="batch").flatten()
    offset = sum(len(part) for part in rewards[:rank])
    return whole[offset:offset + len(rewards[rank])].tolist()


# the sums over processes that `reduce_step` adds up (grad_norm is the same in every process; is_ratio_max a max)
SUMMED_OVER_PROCESSES = ("loss", "kl", "tokens", "clipped", "entropy", "entropy_tokens", "is_ratio", "is_tokens")


@dataclass
class UpdateSums:
    """What a step's updates add up, for its metrics: `loss` and `kl` weighted by each micro-batch's share of the
    step (so their sums over processes are the step's), summed over updates like `grad_norm`; `clipped` and
    `is_ratio` weighted by tokens; `entropy` (the first update's) a sum over `entropy_tokens`."""

    loss: float = 0.0
    kl: float = 0.0
    grad_norm: float = 0.0
    tokens: float = 0.0
    clipped: float = 0.0
    entropy: float = 0.0
    entropy_tokens: float = 0.0
    is_ratio: float = 0.0
    is_tokens: float = 0.0
    is_ratio_max: float | None = None

    def add(self, loss: float, stats: dict[str, torch.Tensor], weight: float, first_update: bool) -> None:
        """A micro-batch's `loss` and `stats` (`micro_batch_loss`), its loss and KL counted with `weight`."""
        tokens = stats["tokens"].item()
        self.loss += loss * weight
        self.kl += stats["kl"].item() * weight
        self.tokens += tokens
        self.clipped += stats["clip_fraction"].item() * tokens
        if "entropy_sum" in stats:
            self.entropy += stats["entropy_sum"].item()
            self.entropy_tokens += tokens
        if "is_ratio_mean" in stats and first_update:
            self.is_ratio += stats["is_ratio_mean"].item() * tokens
            self.is_tokens += tokens
            self.is_ratio_max = max(self.is_ratio_max or 0.0, stats["is_ratio_max"].item())


def update_policy(model: torch.nn.Module, reference: torch.nn.Module | None, policy: torch.nn.Module, optimizer,
                  trainable: list[torch.nn.Parameter], batches: list[MicroBatch], units: list[int],
                  total_units: float, config: GRPOConfig, accelerator) -> UpdateSums:
    """`updates_per_batch` optimizer steps over this process's micro-batches (`update_batches`). Each micro-batch's
    loss weighs by its share (`units`) of what the loss averages over in the whole step (`total_units`, across
    processes: DDP averages the processes' gradients, hence the factor `world`). With beta = 0 a rollout of
    advantage 0 adds exactly 0 to loss and gradient: it is in no micro-batch, but counts in `total_units`."""
    world = accelerator.num_processes
    sums = UpdateSums()
    for update in range(config.updates_per_batch):
        for i, (batch, n) in enumerate(zip(batches, units)):
            share = n * world / total_units if total_units else 0.0
            # gradients are averaged across processes once per update, on the last micro-batch
            with contextlib.nullcontext() if i == len(batches) - 1 else accelerator.no_sync(model):
                with autocast(accelerator.device):
                    loss, stats = micro_batch_loss(model, reference, batch, config, policy)
                accelerator.backward(loss * share)
            sums.add(loss.item(), stats, share / world, first_update=update == 0)
        if not batches:  # a process without rollouts this step still takes part in the gradient average
            accelerator.backward(sum(p.sum() for p in trainable) * 0.0)
        sums.grad_norm += float(accelerator.clip_grad_norm_(trainable, config.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return sums


def step_metrics(step: int, sampled: Sequence[Rollout], trained: Sequence[Rollout], sums: UpdateSums,
                 config: GRPOConfig, *, flat_groups: float, sampling_tries: int, stale: bool,
                 rollout_seconds: float, update_seconds: float) -> dict[str, Any]:
    """The line of metrics.jsonl for step `step`, from its rollouts (every one sampled; those trained on) and its
    updates' sums (of every process). Per-update figures (loss, KL, gradient norm) are means over the updates."""
    graded = [r.sample for r in sampled if r.sample.verdict is not None]
    n_updates = config.updates_per_batch
    rewards = torch.tensor([r.reward for r in sampled], dtype=torch.float64)
    return {"step": step, "reward_mean": rewards.mean().item(),
            "reward_std": rewards.std().item() if len(sampled) > 1 else 0.0,
            "accuracy": sum(s.verdict == CORRECT for s in graded) / len(graded) if graded else None,
            "kl": sums.kl / n_updates, "loss": sums.loss / n_updates, "grad_norm": sums.grad_norm / n_updates,
            "response_length": sum(r.sample.completion_tokens for r in sampled) / len(sampled),
            "flat_groups": flat_groups,
            "truncation_rate": sum(r.sample.finish_reason == "length" for r in sampled) / len(sampled),
            "entropy": sums.entropy / sums.entropy_tokens if sums.entropy_tokens else None,
            "clip_fraction": sums.clipped / sums.tokens if sums.tokens else 0.0,
            "is_ratio_mean": sums.is_ratio / sums.is_tokens if sums.is_tokens else None,
            "is_ratio_max": sums.is_ratio_max,
            "sampling_tries": sampling_tries, "groups_trained": len(trained) // config.group_size,
            "stale_rollouts": stale,
            "rollout_seconds": round(rollout_seconds, 2), "update_seconds": round(update_seconds, 2)}


# ---- the processes' share of a step (under `accelerate launch`) ------------------------------------------------

def check_process_count(config: GRPOConfig, world: int) -> None:
    """The settings that run in one process only."""
    if world > 1 and config.overlap_rollouts:
        raise ValueError("grpo: overlap_rollouts runs in one process only; drop it or launch one process")
    if world > 1 and config.dynamic_sampling:
        raise ValueError("grpo: dynamic_sampling runs in one process only (its extra rounds depend on every "
                         "process's groups); drop it or launch one process")


def gather_rewards(accelerator, rewards: list[float]) -> list[list[float]]:
    """Every process's rewards, in process order (`process_advantages` reads them)."""
    if accelerator.num_processes == 1:
        return [rewards]
    from accelerate.utils import gather_object

    return gather_object([rewards])


def reduce_step(accelerator, sums: UpdateSums, sampled: list[Rollout], trained: list[Rollout]
                ) -> tuple[UpdateSums, list[Rollout], list[Rollout]]:
    """The step of every process: its sums added up over the processes (the largest importance ratio the largest
    of any), its rollouts gathered in process order (each still marked trained or not)."""
    from accelerate.utils import gather_object

    totals = accelerator.reduce(torch.tensor([getattr(sums, k) for k in SUMMED_OVER_PROCESSES],
                                             device=accelerator.device), "sum").tolist()
    sums = dataclasses.replace(sums, **dict(zip(SUMMED_OVER_PROCESSES, totals)))
    maxima = [x for x in gather_object([sums.is_ratio_max]) if x is not None]  # every process asks, or none
    sums.is_ratio_max = max(maxima) if maxima else None
    trained_ids = {id(r) for r in trained}
    marked = gather_object([(r, id(r) in trained_ids) for r in sampled])
    return sums, [r for r, _ in marked], [r for r, kept in marked if kept]


def share_adapter(backend, policy: torch.nn.Module, config: GRPOConfig, out: Path, step: int, accelerator) -> None:
    """Make a rollout engine besides the policy sample through step `step`'s adapter: the main process saves it and
    hands it over (`sync_adapter`); the others load it into their own OpenVINO engine, or name it on the engine
    the main process pushed it to."""
    adapters = Path(config.rollout_adapter_dir or out / "rollout-adapter")
    if accelerator.is_main_process:
        sync_adapter(backend, policy, adapters, step)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        if config.rollout_backend == "openvino":  # each process has its own engine
            backend.use_lora(str(adapter_folder(adapters, step).resolve()), adapter_name(step), step + 1)
        else:
            backend.model_id = adapter_name(step)


# ---- a step's rollouts and the rollout engine ------------------------------------------------------------------

def rollout_step(step: int, queries: list[Problem], backend, executor, prompts: dict[str, str], reward_fn: RewardFn,
                 config: GRPOConfig, device: torch.device, rank: int = 0,
                 world: int = 1) -> tuple[list[Rollout], list[Rollout], float, int]:
    """Sample, grade and reward the step's groups: (every rollout sampled, the rollouts to train on, the fraction
    of sampled groups whose rewards are all equal, the number of rollout rounds).

    Without dynamic sampling that is one round on the step's `queries_per_step` queries, all trained. With it,
    groups whose rewards are all equal are dropped and further queries (a seeded draw per step and round, so a
    resumed run draws the same) are sampled for the missing groups, for at most `dynamic_sampling_tries` rounds.
    A step still short after them trains on the groups it has (logged); one with none trains on its first
    round's groups (only the KL term acts). Process `rank` of `world` takes every world-th query of the step.
    """
    target = config.queries_per_step
    sampled: list[Rollout] = []
    kept: list[Rollout] = []
    flat_count = groups = rounds = 0
    while rounds < (config.dynamic_sampling_tries if config.dynamic_sampling else 1):
        missing = target - len(kept) // config.group_size
        if rounds == 0:
            indices = query_indices(step, len(queries), config)[rank::world]
        else:
            indices = random.Random(f"grpo-queries-{config.seed}-{step}-{rounds}").sample(
                range(len(queries)), min(missing, len(queries)))
        params = sampling_params(config, n=config.group_size, seed=rollout_seed(config, step, rounds))
        with autocast(device):
            rollouts = generate_rollouts(backend, executor, [queries[i] for i in indices], prompts, config, params)
        reward_rollouts(rollouts, reward_fn)
        if config.overlong == "soft_penalty":
            lengths = torch.tensor([r.sample.completion_tokens for r in rollouts])
            penalties = soft_overlong_penalty(lengths, config.max_new_tokens, config.overlong_buffer,
                                              config.overlong_penalty)
            for r, penalty in zip(rollouts, penalties.tolist()):
                r.reward += penalty
        rounds += 1
        sampled += rollouts
        flat = zero_variance_groups(torch.tensor([r.reward for r in rollouts]).view(-1, config.group_size))
        flat_count, groups = flat_count + int(flat.sum()), groups + len(flat)
        for g, is_flat in enumerate(flat.tolist()):
            if not (config.dynamic_sampling and is_flat):
                kept += rollouts[g * config.group_size:(g + 1) * config.group_size]
        if len(kept) >= target * config.group_size:
            break
    kept = kept[:target * config.group_size]
    if config.dynamic_sampling and len(kept) < target * config.group_size:
        log.warning("step %d: dynamic sampling found %d of %d groups with distinct rewards in %d rounds; training "
                    "on those", step + 1, len(kept) // config.group_size, target, rounds)
        if not kept:
            kept = sampled[:len(query_indices(step, len(queries), config)) * config.group_size]
    return sampled, kept, flat_count / groups, rounds


def rollout_backend(config: GRPOConfig, model: torch.nn.Module, tokenizer, device: torch.device) -> Backend:
    """The rollout engine `config.rollout_backend`, built by `load_backend`. hf: the model being trained generates
    (the policy object itself: no copy, always current). The others generate through the policy's LoRA adapter,
    handed over at every step (`sync_adapter`, `Backend.use_lora`), with the arguments `ROLLOUT_ENGINE_ARGS` gives."""
    if config.rollout_backend == "hf":
        return load_backend("hf", config.model, model_obj=model, tokenizer_obj=tokenizer,
                            batch_size=config.rollout_batch_size, device=str(device))
    name, kwargs = ROLLOUT_ENGINE_ARGS.get(config.rollout_backend, _engine_args)(config, tokenizer)
    return load_backend(config.rollout_backend, name, **kwargs)


def _engine_args(config: GRPOConfig, tokenizer) -> tuple[str, dict[str, Any]]:
    return config.model, {}


def _openai_args(config: GRPOConfig, tokenizer) -> tuple[str, dict[str, Any]]:
    """An OpenAI-compatible server at `rollout_base_url` (on this machine or another), which loads each step's
    adapter and serves it under the adapter's name."""
    return adapter_name(0), {"base_url": config.rollout_base_url, "tokenizer_obj": tokenizer}


def _openvino_args(config: GRPOConfig, tokenizer) -> tuple[str, dict[str, Any]]:
    """OpenVINO GenAI on this CPU, on an export of the starting weights (made once, cached), applying each step's
    adapter at run time; `openvino_args` are its settings."""
    return config.model, dict(config.openvino_args)


def _vllm_args(config: GRPOConfig, tokenizer) -> tuple[str, dict[str, Any]]:
    """A vLLM engine on the starting weights with LoRA enabled; with `tis_cap` it returns the sampled tokens'
    log-probabilities, for the rollout-engine correction. `vllm_args` go to the engine."""
    from mathloop.models import resolve_model

    path, _ = resolve_model(config.model)
    engine_args = dict(config.vllm_args)
    if config.tis_cap is not None:
        # The sampled tokens' log-probabilities after temperature and top-p (vLLM >= 0.10.2; its default,
        # raw_logprobs, is the distribution before them), so mu is the distribution actually sampled from.
        engine_args.setdefault("logprobs_mode", "processed_logprobs")
    return path, {"seed": config.seed, "enable_lora": True, "max_lora_rank": config.lora_rank,
                       "logprobs": config.tis_cap is not None, **engine_args}


# The model and constructor arguments of each rollout engine besides hf (default: the policy's starting model, the
# engine's own defaults).
ROLLOUT_ENGINE_ARGS = {"openai": _openai_args, "openvino": _openvino_args, "vllm": _vllm_args}


def adapter_name(step: int) -> str:
    """The name the rollout engine knows step `step`'s adapter by."""
    return f"policy-step-{step}"


def adapter_folder(folder: Path, step: int) -> Path:
    """Where step `step`'s adapter is saved for the rollout engine."""
    return folder / f"step-{step:06d}"


def sync_adapter(backend, model: torch.nn.Module, folder: Path, step: int) -> None:
    """Save the policy's current LoRA adapter in `folder` and make the rollout engine (vLLM, or a server) sample
    through it (the previous step's adapter folder is removed)."""
    target = adapter_folder(folder, step)
    model.save_pretrained(str(target))
    backend.use_lora(str(target.resolve()), adapter_name(step), step + 1)
    for old in folder.glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def rollout_seed(config: GRPOConfig, step: int, round_: int = 0) -> int:
    """The sampling seed of step `step` (and dynamic-sampling round `round_`): a function of (seed, step, round)
    only, so a resumed run samples the same rollouts. Random rather than seed + step, so neighbouring steps' seeds
    are unrelated."""
    if round_ == 0:
        return random.Random(config.seed * 1000003 + step).randrange(2 ** 31)
    return random.Random(f"grpo-rollout-{config.seed}-{step}-{round_}").randrange(2 ** 31)


def rollout_sample(r: Rollout, step: int, trained: bool = True) -> Sample:
    """The record of a rollout in rollouts/step-NNNNNN.jsonl: its Sample with step, reward, advantage, trained."""
    return dataclasses.replace(r.sample, metadata={**r.sample.metadata, "step": step, "reward": r.reward,
                                                   "advantage": r.advantage, "trained": trained})


def save_final(model: torch.nn.Module, tokenizer, out: Path, config: GRPOConfig) -> None:
    """The trained policy as a plain transformers folder (LoRA merged in place: training is over)."""
    if config.lora:
        model = model.merge_and_unload()
    partial = start_final(out)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    finish_final(out)

def _write_run_record(out: Path, config: GRPOConfig, report: dict[str, int]) -> None:
    write_json(out / "run.json", new_run_record(config, kind="grpo", resume_keys=_RESUME_KEYS, queries=report))
