"""Score samples with a reward model: `score_samples` for code (eval's --rm), `score_file` for `mathloop score`.

Scoring thousands of responses on a CPU takes tens of minutes, so it resumes: with a `progress_file`, each
finished batch's scores are appended there (keyed by a hash of the exact text the reward model read), and a run
started again reads them back and scores only the rest. Callers open `scoring_progress(output, reward_model)`
around scoring and writing their output: the file lives next to the output and goes once the block has finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from mathloop.progress import progress_bar
from mathloop.records import JsonlAppender, Sample, drop_torn_last_line, read_jsonl, read_records, write_jsonl
from mathloop.tokens import encode, pad_batch, pad_token_id


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_samples(reward_model: torch.nn.Module, tokenizer, samples: Sequence[Sample], batch_size: int = 8,
                  max_length: int | None = 4096, questions: Mapping[str, str] | None = None,
                  progress_file: str | os.PathLike | None = None) -> list[float]:
    """One reward-model score per sample, in the order given.

    Texts are built by the model's `input_text` (for a mathloop RM: prompt + response + eos), sorted by length so
    a batch wastes little padding, and right-padded. `questions` maps problem_id to question text, which RMs
    with their own chat format (Qwen2.5-Math-RM) need; a sample's own `question` works too. With `progress_file`,
    scores found there for the same text and length limit are reused and new ones are appended batch by batch (the
    module docstring); the caller deletes it when done.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    questions = questions or {}
    texts = [reward_model.input_text(tokenizer, s.prompt, s.response,
                                     questions.get(s.problem_id, s.question))
             for s in samples]
    ids = encode(tokenizer, texts, max_length)
    keys = [hashlib.sha256(f"{max_length}\0{text}".encode()).hexdigest()[:32] for text in texts]
    done = _finished_scores(progress_file)
    scores = [done.get(key, 0.0) for key in keys]
    order = sorted((i for i, key in enumerate(keys) if key not in done), key=lambda i: -len(ids[i]))
    device, pad = model_device(reward_model), pad_token_id(tokenizer)
    was_training = reward_model.training
    reward_model.eval()
    appender = JsonlAppender(progress_file) if progress_file is not None and order else None
    try:
        with progress_bar(len(ids), "rm score", "sample", initial=len(ids) - len(order)) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                input_ids, mask = pad_batch([ids[i] for i in batch], pad, side="right", device=device)
                batch_scores = reward_model(input_ids, mask).tolist()
                for i, score in zip(batch, batch_scores):
                    scores[i] = score
                if appender is not None:
                    appender.write({"key": keys[i], "rm_score": score} for i, score in zip(batch, batch_scores))
                bar.update(len(batch))
    finally:
        if appender is not None:
            appender.close()
        reward_model.train(was_training)
    return scores


def _finished_scores(progress_file: str | os.PathLike | None) -> dict[str, float]:
    if progress_file is None or not Path(progress_file).exists():
        return {}
    drop_torn_last_line(progress_file)  # a kill mid-append
    return {row["key"]: float(row["rm_score"]) for row in read_jsonl(progress_file)}


def progress_path(output: str | os.PathLike, reward_model: str) -> Path:
    """Where scoring `output` with `reward_model` keeps its finished scores until `output` is written (one file per
    reward model, so scores of another model are never reused)."""
    output = Path(output)
    tag = hashlib.sha256(str(Path(reward_model).expanduser().resolve()).encode()).hexdigest()[:12]
    return output.with_name(f"{output.name}.rm-progress-{tag}.jsonl")


@contextlib.contextmanager
def scoring_progress(output: str | os.PathLike, reward_model: str) -> Iterator[Path]:
    """The `progress_file` for scoring `output` with `reward_model`; deleted when the block (scoring and writing
    `output`) finishes, kept when it is interrupted so the next run resumes."""
    path = progress_path(output, reward_model)
    yield path
    path.unlink(missing_ok=True)


def score_file(reward_model_path: str, input_path: str | os.PathLike, output_path: str | os.PathLike,
               batch_size: int = 8, max_length: int | None = 4096, dtype: str | None = None,
               device: str | None = None) -> int:
    """Read samples, add `rm_score` to each, write them to `output_path`; returns the number written. An interrupted
    run resumes (`scoring_progress`)."""
    from mathloop.reward.model import load_reward_model

    samples = read_records(Sample, input_path)
    if not Path(reward_model_path).expanduser().exists() and not _looks_like_hub_id(reward_model_path):
        raise FileNotFoundError(f"reward model {reward_model_path} not found (a folder written by "
                                f"`mathloop rm train`, or a Hugging Face Hub id)")
    reward_model, tokenizer = load_reward_model(reward_model_path, dtype=dtype, device=device)
    with scoring_progress(output_path, reward_model_path) as progress:
        scores = score_samples(reward_model, tokenizer, samples, batch_size, max_length, progress_file=progress)
        for sample, score in zip(samples, scores):
            sample.rm_score = score
        return write_jsonl(output_path, samples)


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))
