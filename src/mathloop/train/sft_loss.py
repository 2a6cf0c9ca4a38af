"""The SFT objective on graded samples: learn the right responses, and (optionally) push down the wrong ones.

Rejection-sampling SFT trains on the model's correct responses only, which raises pass@1 and lowers pass@k: the
model concentrates on answers it already finds (Zhu et al. 2025, arXiv 2506.01347, measured it; so did this project,
docs/results.md). Their remedy is to learn from the wrong samples too, REINFORCE with rewards +1 and -1. Offline, on a
fixed data set, the negative term -log pi has no floor: a wrong response can be pushed towards probability 0 for
ever, and the loss runs to minus infinity. Here it stops at a floor:

    per token of a right response (reward +1):   -log pi(y_t)
    per token of a wrong response (reward -1):   negative_weight * max(log pi(y_t), log negative_floor)

summed over the completion tokens of the batch and divided by their number (the token mean TRL's SFT uses, so
negative_weight = 0 on right responses is exactly plain SFT). The wrong term is bounded below by
negative_weight * log(negative_floor) per token and its gradient is 0 once a token's probability is under the floor.
Its gradient with respect to the logits is negative_weight * (p - onehot(y_t)) above the floor: small on tokens the
model is sure of (shared formatting), largest on the uncertain steps where right and wrong responses part.
"""

from __future__ import annotations

import math

import torch


def sft_token_loss(logp: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor, *, negative_weight: float = 0.0,
                   negative_floor: float = 0.01, normalizer: int | float | torch.Tensor | None = None) -> torch.Tensor:
    """The loss of a batch: logp (B, T) log-probabilities of the completion tokens, mask (B, T) which tokens count,
    rewards (B,) +1 (right) or -1 (wrong); divided by `normalizer` (default: the tokens of this batch; the trainer
    passes the tokens of the whole optimizer step).

    >>> logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.001]]))
    >>> mask = torch.tensor([[True, True], [True, True]])
    >>> round(sft_token_loss(logp[:1], mask[:1], torch.tensor([1.0])).item(), 4)   # (log 2 + log 4) / 2
    1.0397
    >>> # right row log 2 + log 4, wrong row 0.5 * (log 0.5 + log 0.01) (its second token held at the floor), over 4 tokens
    >>> round(sft_token_loss(logp, mask, torch.tensor([1.0, -1.0]), negative_weight=0.5).item(), 4)
    -0.1424
    """
    if logp.shape != mask.shape or rewards.shape != logp.shape[:1]:
        raise ValueError(f"sft_token_loss: logp and mask must be (B, T) and rewards (B,); got {tuple(logp.shape)}, "
                         f"{tuple(mask.shape)} and {tuple(rewards.shape)}")
    if not ((rewards == 1) | (rewards == -1)).all():
        raise ValueError(f"sft_token_loss: rewards must be +1 or -1, got {rewards.tolist()}")
    if not 0 < negative_floor < 1:
        raise ValueError(f"sft_token_loss: negative_floor must be a probability in (0, 1), got {negative_floor}")
    wrong = (rewards < 0)[:, None]
    per_token = torch.where(wrong, negative_weight * logp.clamp(min=math.log(negative_floor)), -logp)
    total = (per_token * mask).sum()
    if normalizer is None:
        normalizer = mask.sum()
    return total / torch.as_tensor(normalizer, dtype=total.dtype, device=total.device).clamp(min=1)
