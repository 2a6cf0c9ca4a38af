"""The listwise ranking loss of the Qwen2.5-Math reward model, and held-out pairwise accuracy.

Both are pure functions over a score tensor of shape (groups, responses) and a boolean label tensor of the same
shape (True = correct response), with an optional mask for groups of different sizes (False = padding slot).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pairs(labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(G, K, K) bool: entry [g, i, j] says response i is positive and response j negative in group g."""
    labels = labels.bool()
    valid = torch.ones_like(labels) if mask is None else mask.bool()
    pos, neg = labels & valid, ~labels & valid
    return pos[:, :, None] & neg[:, None, :]


def listwise_loss(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L = -1/(P*N) * sum over positive/negative pairs of log sigmoid(r_pos - r_neg), averaged over groups.

    With 6 responses of which k are correct this is the paper's -1/(k(6-k)) sum. Each response is scored once;
    the pairs are formed from the scores. Groups without any pair (all correct, all wrong or empty) are left
    out of the mean; a batch without any pair returns 0 (still attached to the graph).

    >>> s = torch.tensor([[2.0, 0.0, 0.0]]); y = torch.tensor([[True, False, False]])
    >>> round(listwise_loss(s, y).item(), 4)  # both pairs have margin 2: -log sigmoid(2)
    0.1269
    """
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(f"scores and labels must both be (groups, responses); got {tuple(scores.shape)} "
                         f"and {tuple(labels.shape)}")
    pairs = _pairs(labels, mask)
    margins = scores[:, :, None] - scores[:, None, :]
    pair_loss = -F.logsigmoid(margins).masked_fill(~pairs, 0.0)
    n_pairs = pairs.sum(dim=(1, 2))
    has_pairs = n_pairs > 0
    if not has_pairs.any():
        return scores.sum() * 0.0
    per_group = pair_loss.sum(dim=(1, 2))[has_pairs] / n_pairs[has_pairs]
    return per_group.mean()


def pairwise_accuracy(scores: torch.Tensor, labels: torch.Tensor,
                      mask: torch.Tensor | None = None) -> tuple[float, int]:
    """Fraction of positive/negative pairs the scores rank correctly (a tie counts half), and the pair count.

    Pairs are pooled over all groups (not averaged per group), so it reads as "how often a correct response
    beats a wrong one for the same problem".

    >>> pairwise_accuracy(torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[True, False, False]]))
    (0.75, 2)
    """
    pairs = _pairs(labels, mask)
    margins = scores[:, :, None] - scores[:, None, :]
    wins = (margins > 0).float() + 0.5 * (margins == 0).float()
    n = int(pairs.sum())
    if n == 0:
        return float("nan"), 0
    return float(wins[pairs].sum()) / n, n
