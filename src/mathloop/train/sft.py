"""`mathloop sft`: supervised fine-tuning (method step 6) on rejection-sampled solutions, with TRL's SFTTrainer.

The data is a JSONL file in TRL's conversational prompt-completion format, one example per line:

    {"prompt": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
     "completion": [{"role": "assistant", "content": "... \\boxed{42}"}], ...any other keys, ignored}

TRL renders both with the model's chat template and computes the loss on the completion tokens only (the prompt's
labels are -100), whatever the template. TIR rows (`mathloop select` on TIR samples) also carry
`"tool_output_spans": [[start, end], ...]`, character ranges of the completion that the Python executor wrote, not
the model; a data file with such rows is tokenized here (`tokenize_example`) so that those tokens are out of the loss
too, as in the paper's TIR training, and TRL receives `input_ids` with a `completion_mask`.

Text mode (continued pre-training, `mathloop corpus`): a data file whose rows are {"text": "..."} trains on every
token of each text, cut into blocks of `max_length` tokens (`text_blocks`); summary.json then also holds the tokens
and tokens per second.

Examples longer than `max_length` tokens are dropped rather than truncated: a cut solution has no final answer and
no end-of-turn token, and would teach the model not to finish.

The defaults follow the paper where it gives a value: 3 epochs, sequence length 4096, learning rate 2e-5 with a
cosine decay (set `min_learning_rate: 7.0e-7` for the paper's floor), global batch 128 (8 per device x 16
accumulation steps on one GPU; divide the accumulation by the number of GPUs to keep 128). Weights are float32; on a
GPU the forward/backward run in bfloat16 autocast (mixed precision). `dtype: bfloat16` keeps the weights themselves
in bfloat16 to halve their memory (small updates then round away more easily). On CPU, bfloat16 autocast is on by default only
when the CPU computes bfloat16 natively (AVX512-BF16 or AMX; `mathloop.hardware`): about 1.8x faster per step for a
4-layer, 512-wide model on an AMX CPU; elsewhere it is emulated and many times slower, so float32 it is.

`packing: true` concatenates examples into `max_length`-token rows instead of padding each batch to its longest
example. It pays when examples are much shorter than `max_length` and vary in length (GSM8K solutions of a few
hundred tokens under 4096). TRL then runs padding-free, and only FlashAttention's variable-length kernels keep
packed examples from attending to each other (with sdpa or eager attention they do attend across, which is why
packing requires `attn_implementation: flash_attention_2`, a GPU and `pip install flash-attn`).

Several GPUs (data parallel; the Trainer shards batches and only the main process writes files):

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m mathloop.cli sft --config sft.yaml

and for models whose optimizer state does not fit one GPU, add `deepspeed: configs/deepspeed/zero2.json` (optimizer
and gradients sharded) or `zero3.json` (weights sharded too) to the config (needs `pip install deepspeed`). The
multi-process paths are not covered by the CPU tests.

Output folder:
  run.json                    config, data counts, package versions
  metrics.jsonl               one line per logged step: loss, learning rate, gradient norm
  checkpoints/checkpoint-N/   Trainer checkpoints (weights or adapters, optimizer, scheduler, RNG); the latest are kept
  adapter/                    the trained LoRA adapters (LoRA runs only)
  final/                      the fine-tuned model, LoRA merged, with its tokenizer: a plain transformers folder
                              (`mathloop eval --model <out>/final`)
  summary.json                what `train_sft` returned
Re-running the same command resumes from the latest checkpoint; once final/ exists it returns at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from mathloop.config import resume_keys
from mathloop.hardware import compute_dtype, release_freed_memory
from mathloop.progress import quiet
from mathloop.records import RecordError, read_jsonl
from mathloop.runs import check_run_record, lock_run_dir, new_run_record, read_json, refuse_other_kind, write_json
from mathloop.train.checkpoint import drop_metrics_after, final_done, finish_final, mark_whole_final, start_final
from mathloop.train.tracking import MetricsReporter, check_report_to

log = logging.getLogger(__name__)


@dataclass
class SFTRunConfig:
    """Every setting of an SFT run (recorded in run.json; YAML keys use these names)."""

    data: str = field(metadata={"resume": True,
        "help": "JSONL of {prompt: [messages], completion: [assistant message]} rows, or of {text: ...} rows (text "
                "mode: continued pre-training on every token)"})
    output_dir: str = field(metadata={"help": "run folder (created; resumed when it holds checkpoints): "
                                              "checkpoints, logs, final/"})
    model: str = field(default="default", metadata={"resume": True,
        "help": "starting model: 'default' (embedded Qwen2.5-Coder-0.5B-Instruct), a local folder or a Hub id"})
    epochs: int = field(default=3, metadata={"resume": True, "help": "passes over the data (the paper's 3)"})
    learning_rate: float = field(default=2e-5, metadata={"resume": True, "flags": ("--learning-rate", "--lr"),
        "help": "peak learning rate (the paper's 2e-5 for 1.5B/7B; it used 5e-6 for 72B)"})
    lr_scheduler: str = field(default="cosine", metadata={"resume": True,
        "help": "any transformers scheduler name: cosine, linear, constant, ..."})
    min_learning_rate: float = field(default=0.0, metadata={"resume": True,
        "help": "floor of the cosine decay (the paper decays to 7e-7); needs lr_scheduler cosine"})
    warmup_ratio: float = field(default=0.0, metadata={"resume": True,
        "help": "fraction of the steps with a linear warm-up (not stated in the paper)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradients clipped to this global norm"})
    max_length: int = field(default=4096, metadata={"resume": True,
        "help": "tokens per prompt + completion (the paper's 4096); longer examples are dropped"})
    per_device_batch_size: int = field(default=8, metadata={"resume": True,
        "help": "examples per forward/backward on each device"})
    gradient_accumulation_steps: int = field(default=16, metadata={"resume": True,
        "help": "micro-batches per optimizer step: global batch = per_device_batch_size x this x devices (paper: "
                "128)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass to save memory"})
    packing: bool = field(default=False, metadata={"resume": True,
        "help": "pack examples into max_length rows (needs FlashAttention; see the module docstring)"})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "e.g. flash_attention_2 (GPU); default: transformers' choice (sdpa)"})
    lora: bool = field(default=False, metadata={"resume": True,
        "help": "train LoRA adapters instead of all weights; final/ holds the merged model (mathloop[train])"})
    lora_rank: int = field(default=16, metadata={"resume": True, "help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"resume": True,
        "help": "LoRA scaling alpha (the update is scaled by alpha / rank)"})
    lora_layers: int | None = field(default=None, metadata={"resume": True,
        "help": "LoRA in the last N transformer layers only (None: all); the layers below run without a backward pass"
                " (needs gradient_checkpointing off), which makes a CPU step cheaper"})
    negative_weight: float = field(default=0.0, metadata={"resume": True,
        "help": "weight of the wrong responses' term (rows with \"reward\": -1; mathloop.train.sft_loss); 1.0 for "
                "2 epochs broke the demo model (greedy 42.5 -> 15.4, docs/loop.md): start at 0.05-0.1"})
    negative_floor: float = field(default=0.01, metadata={"resume": True,
        "help": "a wrong response's token is pushed down only while its probability is above this"})
    dtype: str = field(default="float32", metadata={"resume": True, "choices": ["float32", "bfloat16"],
        "help": "weights dtype: float32 or bfloat16 (half the memory, coarser updates)"})
    bf16: bool | None = field(default=None, metadata={"resume": True,
        "help": "bfloat16 autocast; default: on for GPUs and CPUs that support it"})
    save_steps: int = field(default=200, metadata={"help": "checkpoint every N optimizer steps (and at the end)"})
    keep_checkpoints: int = field(default=2, metadata={
        "help": "checkpoints kept in the run folder (older ones are deleted)"})
    log_every: int = field(default=10, metadata={
        "help": "optimizer steps between metrics.jsonl lines (the first step is always logged)"})
    seed: int = field(default=0, metadata={"resume": True, "help": "data order, LoRA initialisation, dropout"})
    deepspeed: str | None = field(default=None, metadata={
        "help": "DeepSpeed JSON config for multi-GPU runs, e.g. configs/deepspeed/zero2.json"})
    report_to: list[str] = field(default_factory=list, metadata={
        "help": "also log to tensorboard and/or wandb through TRL, comma-separated, besides metrics.jsonl "
                "(<output-dir>/tensorboard)"})

    def validate(self) -> None:
        check_report_to(self.report_to, "sft")
        for name in ("epochs", "max_length", "per_device_batch_size", "gradient_accumulation_steps", "lora_rank",
                     "lora_alpha", "save_steps", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"sft: {name} must be >= 1, got {getattr(self, name)}")
        if self.lora_layers is not None:
            if self.lora_layers < 1:
                raise ValueError(f"sft: lora_layers must be >= 1, got {self.lora_layers}")
            if not self.lora:
                raise ValueError("sft: lora_layers needs lora: true")
        if self.learning_rate <= 0:
            raise ValueError(f"sft: learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.min_learning_rate < self.learning_rate:
            raise ValueError(f"sft: min_learning_rate must be in [0, learning_rate), got {self.min_learning_rate}")
        if self.min_learning_rate and self.lr_scheduler != "cosine":
            raise ValueError(f"sft: min_learning_rate needs lr_scheduler 'cosine', got {self.lr_scheduler!r}")
        from transformers.trainer_utils import SchedulerType

        schedulers = [s.value for s in SchedulerType]
        if self.lr_scheduler not in schedulers:
            raise ValueError(f"sft: lr_scheduler {self.lr_scheduler!r} is not one of {', '.join(schedulers)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"sft: warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.negative_weight < 0:
            raise ValueError(f"sft: negative_weight must be >= 0, got {self.negative_weight}")
        if not 0 < self.negative_floor < 1:
            raise ValueError(f"sft: negative_floor must be a probability in (0, 1), got {self.negative_floor}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"sft: dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.packing and self.attn_implementation not in ("flash_attention_2", "flash_attention_3"):
            raise ValueError("sft: packing needs attn_implementation flash_attention_2 or flash_attention_3 (GPU, "
                             "pip install flash-attn); with other attention kernels packed examples attend to each "
                             "other")
        if self.deepspeed is not None:
            try:
                read_json(Path(self.deepspeed))
            except (OSError, ValueError) as e:
                raise ValueError(f"sft: deepspeed {self.deepspeed!r} is not a readable JSON file ({e})") from None


# Settings a resumed run must share with the run that wrote the checkpoints.
_RESUME_KEYS = resume_keys(SFTRunConfig)  # its fields marked metadata={"resume": True}


def read_sft_examples(path: str | Path) -> list[dict[str, Any]]:
    """The prompt-completion pairs of an SFT JSONL file, with their `tool_output_spans` when a row has any and their
    `reward` (+1, the default: a right response; -1: a wrong one, `mathloop select --negatives`); other keys are
    left out. Rows of the form {"text": ...} (every row of the file) are text mode, continued pre-training
    (`text_blocks`). A malformed line raises `RecordError` naming file and line."""
    examples = []
    for lineno, row in enumerate(read_jsonl(path), 1):
        if "text" in row and "prompt" not in row:  # text mode: continued pre-training on plain text
            if not isinstance(row["text"], str) or not row["text"].strip():
                raise RecordError(f"{path}: record {lineno}: 'text' must be a non-empty string")
            if examples and "text" not in examples[0]:
                raise RecordError(f"{path}: record {lineno}: a text row among prompt-completion rows; a data file "
                                  f"holds one kind")
            examples.append({"text": row["text"], "reward": 1.0})
            continue
        if examples and "text" in examples[0]:
            raise RecordError(f"{path}: record {lineno}: a prompt-completion row among text rows; a data file holds "
                              f"one kind")
        for key in ("prompt", "completion"):
            messages = row.get(key)
            if not (isinstance(messages, list) and messages and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages)):
                raise RecordError(f"{path}: record {lineno}: '{key}' must be a non-empty list of chat messages "
                                  f"{{\"role\": ..., \"content\": ...}}")
        if [m["role"] for m in row["completion"]] != ["assistant"]:
            raise RecordError(f"{path}: record {lineno}: 'completion' must be one assistant message")
        example = {"prompt": row["prompt"], "completion": row["completion"]}
        spans = row.get("tool_output_spans") or []
        length = len(row["completion"][0]["content"])
        if not (isinstance(spans, list) and all(
                isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span)
                and 0 <= span[0] <= span[1] <= length for span in spans)):
            raise RecordError(f"{path}: record {lineno}: 'tool_output_spans' must be [start, end] character ranges "
                              f"inside the completion ({length} characters), got {spans!r}")
        if spans:
            example["tool_output_spans"] = spans
        reward = row.get("reward", 1)
        if isinstance(reward, bool) or reward not in (1, -1):
            raise RecordError(f"{path}: record {lineno}: 'reward' must be 1 (a right response) or -1 (a wrong one), "
                              f"got {reward!r}")
        example["reward"] = float(reward)
        examples.append(example)
    if not examples:
        raise RecordError(f"{path}: no examples")
    return examples


def drop_too_long(examples: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Keep the examples whose rendered prompt + completion fits `max_length` tokens (already tokenized examples:
    whose `input_ids` fit); return them and the count dropped."""
    def length(e: dict) -> int:
        if "input_ids" in e:
            return len(e["input_ids"])
        return len(tokenizer.apply_chat_template(e["prompt"] + e["completion"], tokenize=True,
                                                 return_dict=True)["input_ids"])

    kept = [e for e in examples if length(e) <= max_length]
    return kept, len(examples) - len(kept)


def text_blocks(tokenizer, text: str, max_length: int) -> list[dict[str, list[int]]]:
    """Text mode (continued pre-training): the document's tokens, then the end-of-text token, cut into blocks of at
    most `max_length` tokens, every token in the loss. A long document is split rather than dropped (unlike a
    chat example, a block of running text needs no ending); blocks never join two documents.

    The end-of-text token is the tokenizer's eos token (for chat models, whose eos ends a turn, the pad token when
    it is a distinct <|endoftext|>-style token), so the model learns where a document stops."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    end = tokenizer.eos_token_id
    if tokenizer.pad_token is not None and "endoftext" in tokenizer.pad_token:
        end = tokenizer.pad_token_id
    if end is not None:
        ids = ids + [end]
    return [{"input_ids": ids[i:i + max_length], "completion_mask": [1] * len(ids[i:i + max_length])}
            for i in range(0, len(ids), max_length)]


def tokenize_example(tokenizer, example: dict[str, Any]) -> dict[str, list[int]]:
    """`input_ids` and `completion_mask` (1 = in the loss) of one prompt-completion example, with the executor's
    output (`tool_output_spans`, character ranges of the completion) out of the loss.

    The chat template renders the prompt (with the assistant header) and the whole conversation; the completion is
    what follows the prompt: the response text, then the template's end of turn (e.g. `<|im_end|>\n`), which stays
    in the loss so the model learns to stop. Prompt, response and end of turn are tokenized separately, as TRL does
    for prompt-completion rows, and the response's tokens that overlap an executor span are masked as in GRPO
    (`response_loss_mask`). A template that does not render the prompt as a prefix of the conversation, or that
    changes the response text (trimming it, say), cannot be masked by character ranges and raises ValueError."""
    from mathloop.tokens import response_loss_mask

    response = example["completion"][0]["content"]
    prompt_text = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
    if not (full_text.startswith(prompt_text) and full_text[len(prompt_text):].startswith(response)):
        raise ValueError("sft: the chat template does not render prompt + completion as the prompt followed by the "
                         "response text, so the executor's output cannot be masked by its character ranges")
    end_of_turn = full_text[len(prompt_text) + len(response):]
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids, keep = response_loss_mask(tokenizer, response, example.get("tool_output_spans", []))
    end_ids = tokenizer(end_of_turn, add_special_tokens=False)["input_ids"] if end_of_turn else []
    return {"input_ids": prompt_ids + response_ids.tolist() + end_ids,
            "completion_mask": [0] * len(prompt_ids) + [int(k) for k in keep.tolist()] + [1] * len(end_ids)}


def build_trainer(config: SFTRunConfig, callbacks: list[TrainerCallback] | None = None) -> tuple[Any, dict[str, Any]]:
    """The model, its tokenizer, the data and TRL's SFTTrainer for `config`; returns the
    trainer and a data report {model_path, model_name, examples, dropped_too_long, executor_output_masked}."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from mathloop.models import load_causal_lm, lora_config, resolve_model, top_layer_lora

    path, model_name = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = read_sft_examples(config.data)
    wrong = sum(e["reward"] < 0 for e in examples)
    if wrong and not config.negative_weight:
        raise ValueError(f"sft: {config.data} has {wrong} rows with reward -1 (wrong responses), which only "
                         f"negative_weight > 0 trains (pushing them down); set negative_weight, or select without "
                         f"negatives")
    masked_executor = any("tool_output_spans" in e for e in examples)
    text_mode = "text" in examples[0]
    if text_mode:  # continued pre-training: every token of the text in the loss, long texts cut into blocks
        examples = [{**block, "reward": 1.0} for e in examples
                    for block in text_blocks(tokenizer, e["text"], config.max_length)]
    elif masked_executor:  # TIR data: tokenized here so that the executor's output is out of the loss
        examples = [{**tokenize_example(tokenizer, e), "reward": e["reward"]} for e in examples]
    examples, dropped = drop_too_long(examples, tokenizer, config.max_length)
    if not examples:
        raise ValueError(f"sft: every example of {config.data} is longer than max_length={config.max_length} "
                         f"tokens; raise max_length")
    model = load_causal_lm(path, getattr(torch, config.dtype), attn_implementation=config.attn_implementation)

    # Loss on the completion tokens only, checkpoints under checkpoints/, no external loggers.
    on_gpu = torch.cuda.is_available()
    if config.bf16 is not None:
        bf16 = config.bf16
    else:
        bf16 = compute_dtype("cuda" if on_gpu else "cpu") == torch.bfloat16
    args = SFTConfig(
        output_dir=str(Path(config.output_dir) / "checkpoints"), num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine_with_min_lr" if config.min_learning_rate else config.lr_scheduler,
        lr_scheduler_kwargs={"min_lr": config.min_learning_rate} if config.min_learning_rate else None,
        warmup_steps=config.warmup_ratio, weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        max_length=config.max_length, packing=config.packing, completion_only_loss=True,
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        **{_checkpointing_field(SFTConfig): config.gradient_checkpointing},
        bf16=bf16, use_cpu=not on_gpu, dataloader_pin_memory=on_gpu,
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=config.keep_checkpoints,
        logging_steps=config.log_every, logging_first_step=True, report_to="none", seed=config.seed,
        data_seed=config.seed, deepspeed=config.deepspeed, disable_tqdm=quiet(),  # TRL's own bar: off with --quiet
    )
    peft_config = None
    if config.lora:
        peft_config = lora_config("sft", config.lora_rank, config.lora_alpha, task_type="CAUSAL_LM",
                                  **top_layer_lora(model, config.lora_layers))
    trainer = _trainer_class(SFTTrainer)(model=model, args=args, train_dataset=Dataset.from_list(examples),
                                         processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    trainer.objective = {"negative_weight": config.negative_weight, "negative_floor": config.negative_floor}
    return trainer, {"model_path": path, "model_name": model_name, "examples": len(examples),
                     "wrong_examples": sum(e["reward"] < 0 for e in examples), "dropped_too_long": dropped,
                     "executor_output_masked": masked_executor, "text_mode": text_mode,
                     "tokens": sum(len(e["input_ids"]) for e in examples) if text_mode else None}


def _trainer_class(base: type) -> type:
    """TRL's SFTTrainer with the loss of `mathloop.train.sft_loss`: each row's `reward` column reaches the loss,
    and the log-probabilities come from `completion_logprobs` (the LM head only on completion tokens)."""

    class SFTRewardTrainer(base):
        objective: dict[str, float]

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            collate = self.data_collator

            def with_rewards(rows: list[dict]) -> dict:
                batch = collate([{k: v for k, v in row.items() if k != "reward"} for row in rows])
                batch["reward"] = torch.tensor([float(row.get("reward", 1.0)) for row in rows])
                return batch

            self.data_collator = with_rewards

        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            if "reward" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "reward"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            from mathloop.train.logprobs import completion_logprobs
            from mathloop.train.sft_loss import sft_token_loss

            loss_mask = inputs["labels"][:, 1:] != -100
            logp = completion_logprobs(model, inputs["input_ids"], inputs["attention_mask"], loss_mask)
            loss = sft_token_loss(logp, loss_mask, inputs["reward"].to(logp.device), normalizer=num_items_in_batch,
                                  **self.objective)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # DDP averages; the normalizer counts every rank's tokens
            return (loss, None) if return_outputs else loss

    return SFTRewardTrainer


def _checkpointing_field(args_class: type) -> str:
    """The TrainingArguments field that turns activation checkpointing on: `activation_checkpointing` in recent
    transformers 5 releases, `gradient_checkpointing` before (5.17, for one, has only that)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(args_class)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def train_sft(config: SFTRunConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Fine-tune (or resume, or return at once when final/ exists); returns a summary with the steps, the mean
    training loss and the path of the final model.

    `stop_after` ends the run after that many optimizer steps in total, as an interruption would (a checkpoint is
    saved); calling `train_sft` again with the same config resumes it. The output folder is owned by this run
    (rank 0 of a distributed launch) while it works (`lock_run_dir`).
    """
    from mathloop.models import quiet_checkpointing_alias

    config.validate()
    with lock_run_dir(config.output_dir), quiet_checkpointing_alias():
        return _train_sft(config, stop_after)


def _train_sft(config: SFTRunConfig, stop_after: int | None) -> dict[str, Any]:
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(config.output_dir)
    refuse_other_kind(out, "sft")  # before final/: another kind's final model is not this run's
    if final_done(out):
        log.info("%s exists: SFT already done", out / "final")
        mark_whole_final(out)  # a final/ of an earlier session killed before its marker
        done = read_json(out / "summary.json") if (out / "summary.json").exists() else {}
        return {**done, "final": str(out / "final"), "already_done": True}
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = get_last_checkpoint(str(out / "checkpoints")) if (out / "checkpoints").is_dir() else None
    if checkpoint is not None:
        _check_resumable(out, config)

    callbacks = [_MetricsLog(out / "metrics.jsonl", config)] + ([_StopAfter(stop_after)] if stop_after else []) + \
        ([] if torch.cuda.is_available() else [_ReleaseFreedMemory()])
    trainer, report = build_trainer(config, callbacks)
    from mathloop.train.distributed import destroy_process_group_at_exit

    destroy_process_group_at_exit()  # several processes: TRL's Trainer leaves the group to exit, which can abort
    if trainer.is_world_process_zero():
        if checkpoint is None:
            _write_run_record(out, config, report)
        else:
            log.info("resuming from %s", checkpoint)
            drop_metrics_after(out / "metrics.jsonl", trainer_step(checkpoint))

    result = trainer.train(resume_from_checkpoint=checkpoint)
    state = trainer.state
    from mathloop.train.distributed import mean_over_processes

    # each process's Trainer averages its own batches' losses; the run's loss is the mean over processes
    train_loss, per_process = mean_over_processes(result.training_loss)
    summary = {"step": state.global_step, "total_steps": state.max_steps, "train_loss": train_loss,
               **({"train_loss_per_process": per_process} if len(per_process) > 1 else {}),
               "examples": report["examples"], "dropped_too_long": report["dropped_too_long"],
               "resumed_from": checkpoint, "final": None}
    if report["text_mode"]:  # continued pre-training: tokens per second, to size a cluster run
        seconds = result.metrics.get("train_runtime") or 0.0
        steps_run = state.global_step - (trainer_step(checkpoint) if checkpoint else 0)  # this call's steps
        epochs_run = steps_run / max(state.max_steps, 1) * config.epochs
        summary.update({"text_mode": True, "tokens": report["tokens"], "train_seconds": round(seconds, 2),
                        "tokens_per_second": round(report["tokens"] * epochs_run / seconds, 1) if seconds else None})
    if state.global_step < state.max_steps:  # stopped early (stop_after): the checkpoint is there to resume
        return summary

    # The finished model: a standalone folder with the tokenizer, LoRA adapters merged into the weights.
    partial = out / "final.partial"
    if trainer.is_world_process_zero():
        start_final(out)
    trainer.save_model(str(out / "adapter" if config.lora else partial))  # gathers sharded weights first
    if trainer.is_world_process_zero():
        if config.lora:
            _merge_adapter(report["model_path"], out / "adapter", partial, config, trainer.processing_class)
        summary["final"] = str(finish_final(out))
        write_json(out / "summary.json", summary)
    trainer.accelerator.wait_for_everyone()
    return summary


def trainer_step(checkpoint: str) -> int:
    """The optimizer step of a Trainer checkpoint folder.

    >>> trainer_step("runs/sft/checkpoints/checkpoint-120")
    120
    """
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])


def _merge_adapter(base_path: str, adapter_dir: Path, target: Path, config: SFTRunConfig, tokenizer) -> None:
    """Load the base model, apply the saved LoRA adapter, merge it into the weights and save a plain model.

    Reading the adapter back from disk (instead of merging the in-memory model) works the same whether or not
    DeepSpeed sharded the weights during training."""
    from peft import PeftModel

    from mathloop.models import load_causal_lm

    base = load_causal_lm(base_path, getattr(torch, config.dtype))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    shutil.rmtree(target, ignore_errors=True)
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _check_resumable(out: Path, config: SFTRunConfig) -> None:
    record = out / "run.json"
    if record.exists():
        check_run_record(read_json(record), config, _RESUME_KEYS, what=f"{out} holds a run", fix="use a new output_dir",
                         kind="sft")


def _write_run_record(out: Path, config: SFTRunConfig, report: dict[str, Any]) -> None:
    data = {key: report[key] for key in ("examples", "wrong_examples", "dropped_too_long", "executor_output_masked")}
    if report["text_mode"]:
        data.update(text_mode=True, tokens=report["tokens"])
    write_json(out / "run.json", new_run_record(config, data, "sft", _RESUME_KEYS, model_name=report["model_name"]))


class _MetricsLog(TrainerCallback):
    """Append every Trainer log (loss, learning rate, gradient norm) to metrics.jsonl, from the main process, and
    send it to the dashboards of `report_to` (`MetricsReporter`, as the RM and GRPO trainers do)."""

    def __init__(self, path: Path, config: SFTRunConfig) -> None:
        self.path, self.config, self.reporter = path, config, None

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        if state.is_world_process_zero and self.config.report_to:
            self.reporter = MetricsReporter(self.config.report_to, self.path.parent, "sft",
                                            dataclasses.asdict(self.config), resume_step=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")
            if self.reporter is not None:
                self.reporter.log(logs, state.global_step)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self.reporter is not None:
            self.reporter.close()


class _ReleaseFreedMemory(TrainerCallback):
    """On a CPU, give the step's freed activations back to the OS after every optimizer step
    (`mathloop.hardware.release_freed_memory`): rows of other lengths leave the heap fragmented otherwise."""

    def on_step_end(self, args, state, control, **kwargs) -> None:
        release_freed_memory()


class _StopAfter(TrainerCallback):
    """End training after `step` optimizer steps with a checkpoint, as an interruption at that point would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = True
