"""`mathloop rm train`: train the listwise reward model (method steps 3-4) on graded samples, resumable.

The recipe reads top to bottom: `train()` builds the data, the model and the optimizer, then runs the steps.
It is a plain PyTorch loop rather than transformers' Trainer because the unit of a batch is a *group* of responses
to one problem (every response scored once, all pairs formed from those scores), which a per-example Trainer
would have to be bent around; the whole loop fits on a screen and resumes exactly.

It runs under `accelerate launch` for several GPUs (Accelerator().prepare wraps model and optimizer in DDP; each
process scores its share of every batch's groups; only the main process evaluates, logs and saves).
tests/test_scale_training.py launches it as 2 CPU processes (gloo) and finds the weights of one process.

Output folder:
  run.json                     config, data report, package versions
  rm_data.jsonl                the RM groups used (train and held-out, marked)
  metrics.jsonl                one line per logged step: loss, lr, held-out pairwise accuracy (also to TensorBoard /
                               W&B with report_to: tensorboard/ holds the event files)
  checkpoints/step-NNNNNN/     trainable weights, optimizer state, step (the latest ones are kept)
  final/                       the trained reward model (`mathloop score --rm <out>/final`)
Re-running the same command resumes from the latest checkpoint and ends at the same total step count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mathloop.config import resume_keys
from mathloop.hardware import autocast, release_freed_memory
from mathloop.progress import progress_bar
from mathloop.records import Sample, read_records, write_jsonl
from mathloop.reward.data import RMGroup, build_rm_groups, split_groups
from mathloop.reward.loss import listwise_loss, pairwise_accuracy
from mathloop.reward.model import RewardModel
from mathloop.runs import lock_run_dir, new_run_record, refuse_other_kind, write_json
from mathloop.tokens import encode, pad_batch, pad_token_id
from mathloop.train.checkpoint import drop_metrics_after, final_done, finish_final, latest_checkpoint
from mathloop.train.checkpoint import load_checkpoint, mark_whole_final, save_checkpoint, start_final
from mathloop.train.tracking import MetricsReporter, check_report_to

log = logging.getLogger(__name__)


@dataclass
class RMTrainConfig:
    """Every setting of a reward-model training run (recorded in run.json; YAML keys use these names)."""

    samples: list[str] = field(metadata={"resume": True,
        "help": "comma-separated graded sample JSONL files; responses of several files are mixed per problem"})
    output_dir: str = field(metadata={"help": "run folder (created; resumed when it holds checkpoints): "
                                              "checkpoints, logs, final/"})
    model: str = field(default="default", metadata={"resume": True,
        "help": "backbone: 'default' (embedded Qwen2.5-Coder-0.5B-Instruct), a local folder or a Hub id"})
    fill_samples: list[str] = field(default_factory=list, metadata={"resume": True,
        "help": "comma-separated sample files of other models, used only to complete the short label side"})
    decontaminate: list[str] = field(default_factory=list, metadata={"resume": True,
        "help": "comma-separated benchmark names whose test questions are removed (13-gram + LCS rule)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "benchmark folder for --decontaminate (default: $MATHLOOP_DATA_DIR)"})
    group_size: int = field(default=6, metadata={"resume": True, "help": "responses per problem (the paper's 6)"})
    max_ratio: float | None = field(default=2.0, metadata={"resume": True,
        "help": "majority label at most this times the minority label in a group"})
    heldout_fraction: float = field(default=0.05, metadata={"resume": True,
        "help": "fraction of problems held out for pairwise accuracy"})
    learning_rate: float = field(default=1e-5, metadata={"flags": ("--learning-rate", "--lr"),
        "help": "AdamW learning rate"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps, then constant"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradients clipped to this global norm"})
    epochs: int = field(default=1, metadata={"resume": True, "help": "passes over the training groups"})
    groups_per_batch: int = field(default=8, metadata={"resume": True, "help": "problems per optimizer step"})
    micro_batch_groups: int | None = field(default=None, metadata={
        "help": "problems per forward/backward, gradients accumulated (default: the whole batch)"})
    max_length: int = field(default=2048, metadata={
        "help": "tokens per prompt + response; longer ones keep their end"})
    lora: bool = field(default=False, metadata={"resume": True,
        "help": "train LoRA adapters and the head instead of the full backbone (needs mathloop[train])"})
    lora_rank: int = field(default=16, metadata={"resume": True, "help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha (the update is scaled by alpha / rank)"})
    lora_layers: int | None = field(default=None, metadata={"resume": True,
        "help": "LoRA in the last N transformer layers only; the rest runs without backward, which makes a CPU step "
                "several times cheaper (default: all)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass to save memory"})
    dtype: str | None = field(default=None, metadata={
        "help": "backbone weights dtype (default: bfloat16 on GPU, float32 on CPU; forward passes run in bfloat16 "
                "autocast where the device computes it natively)"})
    eval_every: int = field(default=0, metadata={"help": "held-out evaluation every N steps (0: at the end)"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: at the end)"})
    keep_checkpoints: int = field(default=2, metadata={
        "help": "checkpoints kept in the run folder (older ones are deleted)"})
    log_every: int = field(default=1, metadata={"help": "optimizer steps between metrics lines"})
    report_to: list[str] = field(default_factory=list, metadata={
        "help": "also log metrics to tensorboard and/or wandb, comma-separated, besides metrics.jsonl "
                "(<output-dir>/tensorboard; pip install 'mathloop[tensorboard]')"})
    seed: int = field(default=0, metadata={"resume": True, "help": "data order, splits and head init"})

    def validate(self) -> None:
        if not self.samples:
            raise ValueError("rm train: give at least one samples file (--samples)")
        for name in ("group_size", "groups_per_batch", "epochs", "max_length", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"rm train: {name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_groups is not None and self.micro_batch_groups < 1:
            raise ValueError(f"rm train: micro_batch_groups must be >= 1, got {self.micro_batch_groups}")
        if self.learning_rate <= 0:
            raise ValueError(f"rm train: learning_rate must be > 0, got {self.learning_rate}")
        check_report_to(self.report_to, "rm train")


# Settings a resumed run must share with the run that wrote the checkpoint.
_RESUME_KEYS = resume_keys(RMTrainConfig)  # its fields marked metadata={"resume": True}


def lr_at(step: int, config: RMTrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then constant."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / (config.warmup_steps + 1)
    return config.learning_rate


def batch_indices(step: int, n_groups: int, config: RMTrainConfig) -> list[int]:
    """The training groups of step `step`: a fresh seeded shuffle per epoch, so a resumed run sees the same
    batches as an uninterrupted one."""
    per_epoch = math.ceil(n_groups / config.groups_per_batch)
    epoch, b = divmod(step, per_epoch)
    order = list(range(n_groups))
    random.Random(config.seed * 1000003 + epoch).shuffle(order)
    return order[b * config.groups_per_batch:(b + 1) * config.groups_per_batch]


def group_scores(model: torch.nn.Module, tokenizer, groups: list[RMGroup], max_length: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score every response of `groups` once; return (scores, labels, mask), each (groups, max group size)."""
    texts = [RewardModel.input_text(tokenizer, p, r) for g in groups for p, r in zip(g.prompts, g.responses)]
    input_ids, attention_mask = pad_batch(encode(tokenizer, texts, max_length), pad_token_id(tokenizer),
                                          device=device)
    with autocast(device):
        flat = model(input_ids, attention_mask)
    width = max(len(g.responses) for g in groups)
    scores = flat.new_zeros((len(groups), width))
    labels = torch.zeros((len(groups), width), dtype=torch.bool, device=device)
    mask = torch.zeros_like(labels)
    start = 0
    for i, g in enumerate(groups):
        k = len(g.responses)
        scores[i, :k] = flat[start:start + k]
        labels[i, :k] = torch.tensor(g.labels, device=device)
        mask[i, :k] = True
        start += k
    return scores, labels, mask


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokenizer, groups: list[RMGroup], config: RMTrainConfig,
             device: torch.device) -> dict[str, float]:
    """Held-out loss and pooled pairwise accuracy (a correct response scored above a wrong one)."""
    was_training = model.training
    model.eval()
    chunk = config.micro_batch_groups or config.groups_per_batch
    loss_sum, wins, pairs = 0.0, 0.0, 0
    for start in range(0, len(groups), chunk):
        scores, labels, mask = group_scores(model, tokenizer, groups[start:start + chunk], config.max_length, device)
        loss_sum += listwise_loss(scores, labels, mask).item() * scores.shape[0]
        accuracy, n = pairwise_accuracy(scores, labels, mask)
        wins, pairs = wins + (accuracy * n if n else 0.0), pairs + n
    model.train(was_training)
    return {"heldout_loss": loss_sum / len(groups), "heldout_accuracy": wins / pairs if pairs else float("nan"),
            "heldout_pairs": pairs}


def build_model(config: RMTrainConfig, device: torch.device) -> tuple[RewardModel, Any]:
    """The reward model on the configured backbone (full or LoRA) and its tokenizer."""
    from mathloop.models import (add_lora, enable_activation_checkpointing, load_tokenizer, lora_config, resolve_model,
                                 top_layer_lora)

    path, _ = resolve_model(config.model)
    # Trained weights stay float32 on CPU (bfloat16 would round small updates away); forward passes run under
    # bfloat16 autocast where the CPU computes it natively (mathloop.hardware.autocast).
    dtype = getattr(torch, config.dtype) if config.dtype else (torch.bfloat16 if device.type == "cuda"
                                                               else torch.float32)
    tokenizer = load_tokenizer(path)
    torch.manual_seed(config.seed)  # the head's initial weights
    model = RewardModel.from_backbone(path, dtype=dtype)
    model.backbone_name = config.model
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model.backbone)
    if config.lora:
        lora = lora_config("rm train", config.lora_rank, config.lora_alpha,
                           **top_layer_lora(model.backbone, config.lora_layers))
        model.backbone = add_lora(model.backbone, lora)
    return model.to(device), tokenizer


def train(config: RMTrainConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Train (or resume) a reward model; returns a summary with the final step and held-out accuracy.

    `stop_after` ends the run after that many steps in total, as an interruption would (a checkpoint is saved);
    calling `train` again with the same config resumes it. The output folder is owned by this run (rank 0 of a
    distributed launch) while it works (`lock_run_dir`).
    """
    config.validate()
    with lock_run_dir(config.output_dir):
        return _train(config, stop_after)


def _train(config: RMTrainConfig, stop_after: int | None) -> dict[str, Any]:
    from mathloop.train.distributed import make_accelerator

    out = Path(config.output_dir)
    refuse_other_kind(out, "rm")
    accelerator = make_accelerator()
    out.mkdir(parents=True, exist_ok=True)

    # Data: groups of responses per problem, split by problem into train and held-out.
    samples = [s for path in config.samples for s in read_records(Sample, path)]
    fill = [s for path in config.fill_samples for s in read_records(Sample, path)]
    groups, report = build_rm_groups(samples, config.group_size, config.max_ratio, fill=fill,
                                     test_texts=_test_questions(config), seed=config.seed)
    train_groups, heldout_groups = split_groups(groups, config.heldout_fraction, seed=config.seed)
    if not train_groups:
        raise ValueError(f"rm train: no problem in {', '.join(config.samples)} has both a correct and a wrong "
                         f"response ({dict(report.reasons())}); sample more responses per problem")
    steps_per_epoch = math.ceil(len(train_groups) / config.groups_per_batch)
    total_steps = config.epochs * steps_per_epoch
    log.info("rm data: %d groups (%d train, %d held-out), %d positives, %d negatives; dropped %s; %d steps",
             len(groups), len(train_groups), len(heldout_groups), report.positives, report.negatives,
             dict(report.reasons()), total_steps)

    # Model and optimizer; resume from the latest checkpoint when one exists.
    model, tokenizer = build_model(config, accelerator.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    step = 0
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None:
        step = load_checkpoint(checkpoint, model, optimizer, config, _RESUME_KEYS)
        log.info("resuming from %s (step %d of %d)", checkpoint, step, total_steps)
        if accelerator.is_main_process:
            drop_metrics_after(out / "metrics.jsonl", step)
    elif accelerator.is_main_process:
        _write_run_record(out, config, report, total_steps)
        write_jsonl(out / "rm_data.jsonl", [{**dataclasses.asdict(g), "split": split}
                                           for split, part in (("train", train_groups), ("heldout", heldout_groups))
                                           for g in part])
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    # The loop: each step scores every response of its groups once and takes one optimizer step.
    stop = total_steps if stop_after is None else min(total_steps, stop_after)
    chunk = config.micro_batch_groups or config.groups_per_batch
    last: dict[str, Any] = {}
    started = time.time()
    reporter = MetricsReporter(config.report_to, out, "rm", dataclasses.asdict(config), resume_step=step,
                               main_process=accelerator.is_main_process)
    bar = progress_bar(total_steps, "rm train", "step", enabled=accelerator.is_main_process, initial=step)
    while step < stop:
        torch.manual_seed(config.seed + step)  # dropout etc. identical whether or not the run was resumed
        batch = [train_groups[i] for i in batch_indices(step, len(train_groups), config)]
        mine = batch[accelerator.process_index::accelerator.num_processes]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        loss_sum = 0.0
        for start in range(0, len(mine), chunk):
            part = mine[start:start + chunk]
            last_part = start + chunk >= len(mine)
            with contextlib.nullcontext() if last_part else accelerator.no_sync(model):
                scores, labels, mask = group_scores(model, tokenizer, part, config.max_length, accelerator.device)
                loss = listwise_loss(scores, labels, mask) * (len(part) / len(mine))
                accelerator.backward(loss)
            loss_sum += loss.item()
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if accelerator.device.type == "cpu":  # freed activations back to the OS (mathloop.hardware)
            release_freed_memory()
        step += 1
        bar.update(1)

        last = {"step": step, "loss": accelerator.reduce(torch.tensor(loss_sum, device=accelerator.device),
                                                         "mean").item(), "lr": lr_at(step - 1, config)}
        evaluate_now = heldout_groups and ((config.eval_every and step % config.eval_every == 0)
                                           or step == total_steps)
        if accelerator.is_main_process:
            if evaluate_now:
                last.update(evaluate(accelerator.unwrap_model(model), tokenizer, heldout_groups, config,
                                     accelerator.device))
            if evaluate_now or step % config.log_every == 0:
                last["seconds"] = round(time.time() - started, 1)
                log.info("step %d/%d %s", step, total_steps,
                         " ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)))
                with (out / "metrics.jsonl").open("a", encoding="utf-8") as f:
                    f.write(json.dumps(last) + "\n")
                reporter.log(last, step)
            if (config.save_every and step % config.save_every == 0) or step == stop:
                save_checkpoint(out, accelerator.unwrap_model(model), optimizer, step, config,
                                config.keep_checkpoints)
        accelerator.wait_for_everyone()
    bar.close()
    reporter.close()

    # The finished model.
    if step == total_steps and accelerator.is_main_process:
        if not final_done(out):
            accelerator.unwrap_model(model).save(start_final(out), tokenizer)
            finish_final(out)
        mark_whole_final(out)  # a final/ of an earlier session killed before its marker
    return {"step": step, "total_steps": total_steps, "final": str(out / "final") if step == total_steps else None,
            **{k: v for k, v in last.items() if k != "step"}}


def _test_questions(config: RMTrainConfig) -> list[str] | None:
    if not config.decontaminate:
        return None
    from mathloop.data.benchmarks import load_benchmark

    return [p.question for name in config.decontaminate for p in load_benchmark(name, config.data_dir)]


def _write_run_record(out: Path, config: RMTrainConfig, report, total_steps: int) -> None:
    data = {"groups": report.groups, "positives": report.positives, "negatives": report.negatives,
            "dropped": dict(report.reasons()), "contaminated_samples": report.contaminated_samples,
            "ungraded_samples": report.ungraded_samples, "duplicate_samples": report.duplicate_samples}
    write_json(out / "run.json", new_run_record(config, data, "rm", _RESUME_KEYS, total_steps=total_steps))
