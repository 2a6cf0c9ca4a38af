"""The log-probabilities a trainer needs: one function for SFT and GRPO, computed only where the loss looks.

`completion_logprobs(model, input_ids, attention_mask, loss_mask)` gives log pi(token t+1 | tokens <= t) at the
positions of `loss_mask` (B, T-1) and 0 elsewhere, so a trainer never pays for the language-model head on prompt
tokens or padding. Today it runs the model's forward and picks the positions; the head over the 152k-token
vocabulary is the place to make it cheaper (issue 31).
"""

from __future__ import annotations

import torch

from mathloop.train.grpo_math import token_logprobs


def completion_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        loss_mask: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """(B, T-1) float32: log pi(input_ids[:, t+1] | input_ids[:, :t+1]) where `loss_mask[:, t]` is True, 0 elsewhere
    (gradients flow through the kept positions only)."""
    if loss_mask.shape != (input_ids.shape[0], input_ids.shape[1] - 1):
        raise ValueError(f"loss_mask must be (B, T-1) = {(input_ids.shape[0], input_ids.shape[1] - 1)} for input_ids "
                         f"{tuple(input_ids.shape)}; got {tuple(loss_mask.shape)}")
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    mask = loss_mask.bool()
    out = torch.zeros(loss_mask.shape, dtype=torch.float32, device=input_ids.device)
    out[mask] = token_logprobs(logits[mask], input_ids[:, 1:][mask], temperature=temperature)
    return out
