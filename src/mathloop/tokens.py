"""Token utilities shared by generation scoring and every trainer: encoding, padding a batch, and the loss mask of a
response (the model's own tokens, not the TIR executor's output)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def encode(tokenizer, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    """Token ids of each text (no special tokens added: the texts are already formatted). Texts longer than
    `max_length` keep their last tokens, because the score is read at the end."""
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    return [row[-max_length:] for row in ids] if max_length else ids


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right",
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for token-id rows of different lengths.

    >>> ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def pad_token_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0




def _merged_spans(spans: Sequence[Sequence[int]], length: int) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, non-empty spans clipped to [0, length)."""
    merged: list[list[int]] = []
    for start, end in sorted((max(0, int(s)), min(length, int(e))) for s, e in spans):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def response_loss_mask(
    tokenizer,
    response: str,
    spans: Sequence[Sequence[int]] = (),
    *,
    use_offsets: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize a response and say which tokens count in the loss: (input_ids (T,) long, mask (T,) bool).

    No special tokens are added (the response text is already what the model wrote). With a fast tokenizer the
    whole response is tokenized once and `tool_output_token_mask` reads the character offsets. A tokenizer without
    offsets ("slow" tokenizers; or `use_offsets=False`) tokenizes segment by segment instead, cutting the text at
    the span edges: model text -> mask True, executor text -> mask False. The two can give slightly different
    ids around the edges (no BPE merge across an edge in the segment-wise one). Neither is guaranteed to equal
    the ids the rollout sampled: `Sample` keeps text, not ids, so training re-tokenizes.
    """
    for start, end in spans:
        if not 0 <= start <= end <= len(response):
            raise ValueError(f"executor span [{start}, {end}) lies outside the response of {len(response)} "
                             f"characters")
    if use_offsets is None:
        use_offsets = bool(getattr(tokenizer, "is_fast", False))
    if use_offsets:
        enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        return ids, tool_output_token_mask(enc["offset_mapping"], [list(s) for s in spans])
    piece_ids: list[int] = []
    keep: list[bool] = []
    cursor = 0
    pieces: list[tuple[str, bool]] = []
    for start, end in _merged_spans(spans, len(response)):
        pieces += [(response[cursor:start], True), (response[start:end], False)]
        cursor = end
    pieces.append((response[cursor:], True))
    for text, is_model_text in pieces:
        if not text:
            continue
        new_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        piece_ids += new_ids
        keep += [is_model_text] * len(new_ids)
    return torch.tensor(piece_ids, dtype=torch.long), torch.tensor(keep, dtype=torch.bool)


def tool_output_token_mask(
    offsets: torch.Tensor | Sequence[Sequence[int]],
    spans: torch.Tensor | Sequence[Sequence[int]],
) -> torch.Tensor:
    """(T,) bool: False for every response token that overlaps an executor span, True for the model's own tokens.

    `offsets` is each token's character range (start, end) in the response, as a fast tokenizer's
    `return_offsets_mapping=True` gives it; `spans` are `Sample.tool_output_spans`, character ranges [start, end)
    written by the code executor. A token straddling a span edge (BPE can merge the model's last character with the
    executor's first) is masked too: the loss never trains on a token that contains executor text. A zero-width
    token at position p (special tokens, trimmed offsets) counts as inside a span when start <= p < end.

    >>> # "ab" | executor wrote "\\n3\\n" at [2, 5) | "cd"; the token "b\\n" straddles the edge
    >>> tool_output_token_mask([(0, 1), (1, 3), (3, 4), (4, 5), (5, 7)], [[2, 5]]).tolist()
    [True, False, False, False, True]
    """
    offsets = torch.as_tensor(offsets, dtype=torch.long).reshape(-1, 2)
    spans = torch.as_tensor(spans, dtype=torch.long).reshape(-1, 2)
    if offsets.shape[0] == 0 or spans.shape[0] == 0:
        return torch.ones(offsets.shape[0], dtype=torch.bool)
    if (spans[:, 1] < spans[:, 0]).any():
        raise ValueError(f"executor spans must be [start, end) with start <= end; got {spans.tolist()}")
    tok_start, tok_end = offsets[:, 0:1], offsets[:, 1:2]
    span_start, span_end = spans[:, 0][None, :], spans[:, 1][None, :]
    overlaps = (tok_start < span_end) & (span_start < tok_end)
    zero_width = (tok_end == tok_start) & (span_start <= tok_start) & (tok_start < span_end)
    return ~(overlaps | zero_width).any(dim=1)
