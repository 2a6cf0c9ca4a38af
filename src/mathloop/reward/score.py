"""Score samples with a reward model: `score_samples` for code (eval's --rm), `score_file` for `mathloop score`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from mathloop.progress import progress_bar
from mathloop.records import Sample, read_records, write_jsonl
from mathloop.tokens import encode, pad_batch, pad_token_id


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_samples(reward_model: torch.nn.Module, tokenizer, samples: Sequence[Sample], batch_size: int = 8,
                  max_length: int | None = 4096, questions: Mapping[str, str] | None = None) -> list[float]:
    """One reward-model score per sample, in the order given.

    Texts are built by the model's `input_text` (for a mathloop RM: prompt + response + eos), sorted by length so
    a batch wastes little padding, and right-padded. `questions` maps problem_id to question text, which RMs
    with their own chat format (Qwen2.5-Math-RM) need; a sample's own `question` works too.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    questions = questions or {}
    texts = [reward_model.input_text(tokenizer, s.prompt, s.response,
                                     questions.get(s.problem_id, s.question))
             for s in samples]
    ids = encode(tokenizer, texts, max_length)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    scores = [0.0] * len(ids)
    device, pad = model_device(reward_model), pad_token_id(tokenizer)
    was_training = reward_model.training
    reward_model.eval()
    with progress_bar(len(order), "rm score", "sample") as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            input_ids, mask = pad_batch([ids[i] for i in batch], pad, side="right", device=device)
            for i, score in zip(batch, reward_model(input_ids, mask).tolist()):
                scores[i] = score
            bar.update(len(batch))
    reward_model.train(was_training)
    return scores


def score_file(reward_model_path: str, input_path: str | os.PathLike, output_path: str | os.PathLike,
               batch_size: int = 8, max_length: int | None = 4096, dtype: str | None = None,
               device: str | None = None) -> int:
    """Read samples, add `rm_score` to each, write them to `output_path`; returns the number written."""
    from mathloop.reward.model import load_reward_model

    samples = read_records(Sample, input_path)
    if not Path(reward_model_path).expanduser().exists() and not _looks_like_hub_id(reward_model_path):
        raise FileNotFoundError(f"reward model {reward_model_path} not found (a folder written by "
                                f"`mathloop rm train`, or a Hugging Face Hub id)")
    reward_model, tokenizer = load_reward_model(reward_model_path, dtype=dtype, device=device)
    for sample, score in zip(samples, score_samples(reward_model, tokenizer, samples, batch_size, max_length)):
        sample.rm_score = score
    return write_jsonl(output_path, samples)


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))
