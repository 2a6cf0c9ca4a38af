"""The GRPO math of method step 8 as pure tensor functions (no loops over batches, no models, no I/O).

The objective, per query with G sampled responses o_1..o_G (DeepSeekMath eq. 3, as the Qwen2.5-Math paper uses it):

    J = 1/G sum_i 1/|o_i| sum_t [ min(rho_it * A_i, clip(rho_it, 1-eps, 1+eps) * A_i) - beta * KL_it ]

with rho_it = pi(o_it) / pi_old(o_it), A_i = (r_i - mean(r)) / std(r) over the group (the same value on every token
of response i), and KL_it the k3 estimator pi_ref/pi - log(pi_ref/pi) - 1. `grpo_loss` returns -J for a batch.

Shapes: B sequences (responses) of T token positions; `mask` (B, T) is True on the tokens that count in the loss
(response tokens the model wrote: not the prompt, not padding, not TIR executor output, see
`mathloop.tokens.response_loss_mask`).
All log-probabilities are of the sampled tokens, (B, T), as `token_logprobs` gives them. Three policies appear:

- behaviour policy mu: the one that actually sampled the rollouts, i.e. the rollout engine (vLLM, a server) with
  its own kernels and numerics; its log-probabilities come back from the engine with the tokens;
- old policy pi_old: the *trainer's* model with the weights it had when the batch was rolled out; its
  log-probabilities are computed by the trainer and stored for the batch, and rho = pi / pi_old is the ratio PPO
  clips when the batch is used for several updates;
- current policy pi: the trainer's model being updated (the only one with a gradient).
When the trainer's own model samples, mu = pi_old. When another engine samples, mu != pi_old even with the same
weights; `truncated_importance_weights` corrects for it (pi_old / mu, capped).

>>> rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])           # one query, G = 4
>>> adv = group_advantages(rewards).flatten()                # sample std of [1, 0, 0, 1] is 1/sqrt(3)
>>> [round(a, 3) for a in adv.tolist()]
[0.866, -0.866, -0.866, 0.866]
>>> logp = torch.log(torch.full((4, 3), 0.5))
>>> loss, stats = grpo_loss(logp, logp, adv, torch.ones(4, 3, dtype=torch.bool), ref_logp=logp)
>>> round(loss.item(), 6), round(stats["clip_fraction"].item(), 6), round(stats["kl"].item(), 6)
(0.0, 0.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Aggregation = Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]
AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


# --------------------------------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------------------------------

def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor | Sequence[int] | None = None,
    *,
    eps: float = 1e-6,
    scale: Literal["group", "batch", "none"] = "group",
) -> torch.Tensor:
    """Group-relative advantages: (r - mean(group)) / (std + eps), one value per response.

    `rewards` is either (num_groups, G), one row per query, or flat (N,) with `group_ids` (N,) naming each
    response's query (any integers, any order, groups may differ in size). The result has the shape of `rewards`.

    Conventions:
    - std is the *sample* standard deviation (Bessel-corrected, divide by G-1), as TRL's GRPOTrainer computes it with
      `torch.std`; DeepSeekMath does not say which. With G = 32 the two differ by a factor sqrt(32/31) ~ 1.016,
      which only rescales the advantages (and so the step size) slightly.
    - a group whose rewards are all equal (every response correct, or every one wrong with the same RM score, or a
      group of one) gives exactly 0 for all its responses: it carries no learning signal. This is decided by
      comparing max and min, so floating-point noise in the mean never turns into a huge advantage.
    - `scale` says which std divides: "group" (GRPO: each group's own std), "batch" (the std of all the rewards
      passed in, one number for the batch, as TRL's scale_rewards="batch" and Liu et al. 2025's "Lite PPO": group
      mean, batch std, which keeps a group's spread meaningful against the others'), or "none".
    - `scale="none"` skips the division by std (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training"):
      std scaling up-weights queries whose rewards barely differ (nearly all right or nearly all wrong), which
      biases updates toward too-easy and too-hard queries; without it the advantage keeps the reward's own units.

    >>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.3, 0.3, 0.3, 0.3]]), scale="none")
    tensor([[ 0.5000, -0.5000, -0.5000,  0.5000],
            [ 0.0000,  0.0000,  0.0000,  0.0000]])
    >>> group_advantages(torch.tensor([2.0, 7.0, 0.0, 4.0, 0.0]), group_ids=[5, 9, 5, 9, 5])  # stds 1.1547, 2.1213
    tensor([ 1.1547,  0.7071, -0.5773, -0.7071, -0.5773])
    >>> group_advantages(torch.tensor([[1.0, 0.0], [3.0, 3.0]]), scale="batch", eps=0.0)  # batch std 1.5
    tensor([[ 0.3333, -0.3333],
            [ 0.0000,  0.0000]])
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if group_ids is None:
        if rewards.dim() != 2:
            raise ValueError(f"rewards must be (num_groups, G), or flat (N,) with group_ids; got shape "
                             f"{tuple(rewards.shape)} and no group_ids")
        mean = rewards.mean(dim=1, keepdim=True)
        spread = rewards.amax(dim=1, keepdim=True) - rewards.amin(dim=1, keepdim=True)
        std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    else:
        group_ids = torch.as_tensor(group_ids, device=rewards.device)
        if rewards.dim() != 1 or group_ids.shape != rewards.shape:
            raise ValueError(f"with group_ids, rewards and group_ids must both be flat (N,); got "
                             f"{tuple(rewards.shape)} and {tuple(group_ids.shape)}")
        _, inverse = torch.unique(group_ids, return_inverse=True)
        num_groups = int(inverse.max()) + 1 if inverse.numel() else 0
        zeros = rewards.new_zeros(num_groups)
        count = zeros.scatter_add(0, inverse, torch.ones_like(rewards))
        mean = (zeros.scatter_add(0, inverse, rewards) / count)[inverse]
        sq_dev = zeros.scatter_add(0, inverse, (rewards - mean) ** 2)
        std = (sq_dev / (count - 1).clamp(min=1)).sqrt()[inverse]
        high = zeros.scatter_reduce(0, inverse, rewards, reduce="amax", include_self=False)
        low = zeros.scatter_reduce(0, inverse, rewards, reduce="amin", include_self=False)
        spread = (high - low)[inverse]
    centered = rewards - mean
    if scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else rewards.new_tensor(0.0)
    advantages = centered if scale == "none" else centered / (std + eps)
    return torch.where(spread > 0, advantages, torch.zeros_like(advantages))


def zero_variance_groups(rewards: torch.Tensor) -> torch.Tensor:
    """(num_groups, G) -> (num_groups,) bool: True for a group whose rewards are all equal (max == min).

    Such a group has zero advantage for every response, so it adds nothing to the policy gradient (only to the KL
    term and to the normaliser of a token-mean loss). DAPO's dynamic sampling drops these groups and samples
    further queries instead; its fraction per step shows how much of the rollout compute taught nothing.

    >>> zero_variance_groups(torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.2]]))
    tensor([ True, False,  True])
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (num_groups, G); got shape {tuple(rewards.shape)}")
    return rewards.amax(dim=1) == rewards.amin(dim=1)


def soft_overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the reward of each response:

        0                                  if L <= L_max - L_buffer
        (L_max - L_buffer - L) / L_buffer  if L_max - L_buffer < L <= L_max   (from 0 down to -1, linearly)
        -1                                 if L > L_max

    times `penalty`. `max_length` is the generation budget (max_new_tokens), `buffer` the length of the ramp in
    tokens. A response the budget cut off gets the full penalty; one that ends inside the ramp gets part of it, so
    the policy learns to finish before the budget rather than being told only "truncated = wrong".

    >>> soft_overlong_penalty(torch.tensor([10, 60, 75, 100, 120]), max_length=100, buffer=40)
    tensor([ 0.0000,  0.0000, -0.3750, -1.0000, -1.0000])
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"buffer must be in 1..max_length ({max_length}), got {buffer}")
    lengths = torch.as_tensor(lengths, dtype=torch.float32)
    ramp = (max_length - buffer - lengths) / buffer
    return penalty * ramp.clamp(min=-1.0, max=0.0)


def drop_truncated(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Overlong filtering (DAPO): the loss mask (B, T) with every token of a truncated response (B,) dropped.

    A response cut off by the token budget is not wrong for its reasoning, only unfinished; its (usually low)
    reward would push down whatever it wrote. Masked out, it still counts in its group's mean and std.

    >>> drop_truncated(torch.ones(2, 3, dtype=torch.bool), torch.tensor([False, True])).tolist()
    [[True, True, True], [False, False, False]]
    """
    truncated = torch.as_tensor(truncated, dtype=torch.bool, device=mask.device)
    if truncated.shape != mask.shape[:1]:
        raise ValueError(f"truncated must be (B,) for a mask {tuple(mask.shape)}; got {tuple(truncated.shape)}")
    return mask.bool() & ~truncated[:, None]


# --------------------------------------------------------------------------------------------------------------------
# Log-probabilities of the sampled tokens
# --------------------------------------------------------------------------------------------------------------------

def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """log pi(token) for every position: logits (..., V) and tokens (...) -> (...) float32.

    The caller aligns them: for a causal LM the logits at position t predict token t+1, so pass
    `logits[:, :-1]` with `tokens[:, 1:]`. `temperature` divides the logits first; use the sampling temperature so
    the ratio is taken against the distribution the rollouts came from.

    Memory: a full `log_softmax` materialises another (B, T, V) tensor (for V = 152k and 8k tokens, ~5 GB in
    float32). Here the positions are processed `chunk_size` at a time in float32 and only the log-normaliser
    (one number per position) is kept, so the extra memory is chunk_size * V. Gradients flow through every chunk.

    >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])      # (B=1, T=2, V=2)
    >>> token_logprobs(logits, torch.tensor([[1, 0]]))          # log 1/2, log e^2/(e^2+1)
    tensor([[-0.6931, -0.1269]])
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits (..., V) and tokens (...) must agree on the leading dims; got "
                         f"{tuple(logits.shape)} and {tuple(tokens.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_tokens = tokens.reshape(-1, 1).long()
    pieces = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        chunk = flat_logits[start:start + chunk_size].float()
        if temperature != 1.0:
            chunk = chunk / temperature
        picked = chunk.gather(-1, flat_tokens[start:start + chunk_size]).squeeze(-1)
        pieces.append(picked - torch.logsumexp(chunk, dim=-1))
    if not pieces:
        return logits.new_zeros(tokens.shape, dtype=torch.float32)
    return torch.cat(pieces).reshape(tokens.shape)


@torch.no_grad()
def token_entropy(logits: torch.Tensor, *, temperature: float = 1.0, chunk_size: int = 1024) -> torch.Tensor:
    """The entropy of the policy's next-token distribution at every position: logits (..., V) -> (...) float32.

    H = logsumexp(z) - sum softmax(z) * z with z = logits / temperature (the distribution rollouts are sampled
    from). A diagnostic, without gradient: entropy collapsing toward 0 means the policy stopped exploring.
    Chunked like `token_logprobs`.

    >>> token_entropy(torch.tensor([[0.0, 0.0], [0.0, 2.0]]))   # log 2; then H(0.119, 0.881)
    tensor([0.6931, 0.3653])
    """
    flat = logits.reshape(-1, logits.shape[-1])
    pieces = []
    for start in range(0, flat.shape[0], chunk_size):
        z = flat[start:start + chunk_size].float()
        if temperature != 1.0:
            z = z / temperature
        log_p = torch.log_softmax(z, dim=-1)
        pieces.append(-(log_p.exp() * log_p).sum(dim=-1))
    if not pieces:
        return logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return torch.cat(pieces).reshape(logits.shape[:-1])


# --------------------------------------------------------------------------------------------------------------------
# Aggregating per-token values with the mask
# --------------------------------------------------------------------------------------------------------------------

def masked_sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B,): the mean of each row over its masked-in tokens (0 for a row with no such token).

    >>> masked_sequence_mean(torch.tensor([[1.0, 3.0, 9.0], [4.0, 0.0, 0.0]]),
    ...                      torch.tensor([[True, True, False], [True, False, False]]))
    tensor([2., 4.])
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


def aggregate_token_loss(values: torch.Tensor, mask: torch.Tensor,
                         aggregation: Aggregation = "seq_mean_token_mean",
                         max_tokens: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss (B, T) to a scalar over the masked-in tokens (the `loss_type` of the trainer).

    - "seq_mean_token_mean" (loss_type grpo: DeepSeekMath and the paper): the token mean of each response, then the
      mean over responses; every response weighs the same whatever its length, so a token of a long response
      weighs less. Responses with no token in the mask (all executor output, a filtered truncated response) are
      left out of the mean over responses.
    - "token_mean" (loss_type dapo): the mean over all masked-in tokens of the batch; every token weighs the same,
      so long (often wrong, rambling) responses are not under-penalised.
    - "seq_mean_token_sum_norm" (loss_type dr_grpo, Liu et al. 2025): the sum over all masked-in tokens divided by
      the constant B * max_tokens (the generation budget): no per-response length normaliser, so there is no
      length bias toward long wrong answers, and the scale does not depend on the batch's lengths.

    An empty mask gives 0, still attached to the graph so `backward()` works.

    >>> v = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]])
    >>> m = torch.tensor([[True, True, True, True], [True, False, False, False]])
    >>> aggregate_token_loss(v, m).item(), round(aggregate_token_loss(v, m, "token_mean").item(), 4)
    (3.0, 1.8)
    >>> round(aggregate_token_loss(v, m, "seq_mean_token_sum_norm", max_tokens=10).item(), 4)   # 9 / (2 * 10)
    0.45
    """
    mask = mask.bool()
    if values.shape != mask.shape:
        raise ValueError(f"values and mask must have the same shape; got {tuple(values.shape)} "
                         f"and {tuple(mask.shape)}")
    values = values.masked_fill(~mask, 0.0)  # masked_fill, not multiply: a NaN/inf on a dropped token stays dropped
    if aggregation == "seq_mean_token_mean":
        counts = mask.sum(dim=-1)
        has_tokens = counts > 0
        if not has_tokens.any():
            return values.sum() * 0.0
        per_seq = values.sum(dim=-1)[has_tokens] / counts[has_tokens]
        return per_seq.mean()
    if aggregation == "token_mean":
        return values.sum() / mask.sum().clamp(min=1)
    if aggregation == "seq_mean_token_sum_norm":
        if max_tokens is None or max_tokens < 1:
            raise ValueError(f"aggregation 'seq_mean_token_sum_norm' needs max_tokens >= 1, got {max_tokens}")
        return values.sum() / (max(values.shape[0], 1) * max_tokens)
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


def aggregation_units(mask: torch.Tensor, aggregation: Aggregation = "seq_mean_token_mean") -> int:
    """How many things `aggregate_token_loss` averages over: responses with a token in the mask, tokens, or
    responses. A batch split into micro-batches gets the whole batch's loss back as
    sum_k aggregate(micro-batch k) * units(k) / units(batch), whichever the aggregation.

    >>> m = torch.tensor([[True, True, False], [False, False, False], [True, False, False]])
    >>> [aggregation_units(m, a) for a in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")]
    [2, 3, 3]
    """
    mask = mask.bool()
    if aggregation == "seq_mean_token_mean":
        return int(mask.any(dim=-1).sum())
    if aggregation == "token_mean":
        return int(mask.sum())
    if aggregation == "seq_mean_token_sum_norm":
        return int(mask.shape[0])
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


# --------------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------------

def _token_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sequence advantages (B,) broadcast to every token (B, T); (B, T) is passed through."""
    if advantages.dim() == 1 and advantages.shape[0] == like.shape[0]:
        return advantages[:, None].expand_as(like)
    if advantages.shape == like.shape:
        return advantages
    raise ValueError(f"advantages must be (B,) or (B, T) matching logp {tuple(like.shape)}; got "
                     f"{tuple(advantages.shape)}")


def clipped_surrogate_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    aggregation: Aggregation = "seq_mean_token_mean",
    *,
    max_tokens: int | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped ratio objective, negated as a loss: -w * min(rho * A, clip(rho, 1-eps, 1+eps_high) * A).

    `logp` (B, T) carries the gradient; `old_logp` (B, T) is from the policy that sampled the rollouts (treated
    as a constant); `advantages` is (B,), one per response as GRPO gives, or (B, T). `clip_eps_high` (default:
    `clip_eps`) allows an asymmetric range ("clip-higher", DAPO). The per-token loss is reduced by
    `aggregate_token_loss` (default: token mean per response, then mean over responses; `max_tokens` for
    "seq_mean_token_sum_norm"). `is_weights` (B, T), default 1, multiplies each token's term as a constant: the
    truncated importance weights of `truncated_importance_weights` when another engine sampled the rollouts.

    Where the ratio has left the trust region in the direction the advantage pushes it (rho > 1+eps_high with
    A > 0, or rho < 1-eps with A < 0) the clipped term wins the min and the token gives no gradient.

    Stats (detached 0-dim tensors; token means over the mask): "clip_fraction" (tokens with no gradient because
    of the clip), "clip_fraction_high", "clip_fraction_low", "ratio_mean", "ratio_max".

    >>> logp = torch.log(torch.tensor([[1.5, 1.0], [0.5, 1.0]]))   # old_logp = 0, so ratio = exp(logp)
    >>> loss, stats = clipped_surrogate_loss(logp, torch.zeros(2, 2), torch.tensor([1.0, -1.0]),
    ...                                      torch.tensor([[True, True], [True, False]]))
    >>> round(loss.item(), 4)   # seq 1: -(1.2 + 1.0)/2 = -1.1; seq 2: -(-0.8) = 0.8; mean -0.15
    -0.15
    >>> round(stats["clip_fraction"].item(), 4), round(stats["ratio_mean"].item(), 4)
    (0.6667, 1.0)
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"logp, old_logp and mask must have the same (B, T) shape; got {tuple(logp.shape)}, "
                         f"{tuple(old_logp.shape)}, {tuple(mask.shape)}")
    eps_low = clip_eps
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = mask.bool()
    adv = _token_advantages(advantages.to(logp.dtype), logp)
    log_ratio = (logp - old_logp.detach()).masked_fill(~mask, 0.0)  # no exp overflow on padding
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if is_weights is not None:
        if is_weights.shape != logp.shape:
            raise ValueError(f"is_weights must be (B, T) like logp {tuple(logp.shape)}; got {tuple(is_weights.shape)}")
        per_token = per_token * is_weights.detach().masked_fill(~mask, 0.0)
    loss = aggregate_token_loss(per_token, mask, aggregation, max_tokens)

    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        high = (ratio > 1.0 + eps_high) & (adv > 0) & mask
        low = (ratio < 1.0 - eps_low) & (adv < 0) & mask
        stats = {
            "clip_fraction": (high | low).sum() / n,
            "clip_fraction_high": high.sum() / n,
            "clip_fraction_low": low.sum() / n,
            "ratio_mean": ratio.masked_fill(~mask, 0.0).sum() / n,
            "ratio_max": ratio.masked_fill(~mask, 0.0).max() if mask.any() else ratio.new_tensor(0.0),
        }
    return loss, stats


def truncated_importance_weights(
    old_logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    mask: torch.Tensor,
    cap: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Truncated importance sampling (TIS) for rollouts sampled by another engine: w = min(pi_old / mu, C), per token.

    `old_logp` is the trainer's log-probability of each sampled token under the weights of rollout time (pi_old),
    `behaviour_logp` the rollout engine's own (mu, e.g. vLLM's). Even with the same weights they differ (other
    kernels, precision, sampling processors), so the engine's samples are slightly off-policy for the trainer;
    weighting each token's policy-gradient term by pi_old / mu makes the update on-policy in expectation, and the
    cap C bounds the variance that rare large ratios bring (Yao et al. 2025, "Your efficient RL framework secretly
    brings you off-policy RL training"; C = 2 there). Both inputs are constants (no gradient).

    Returns the weights (B, T) (1 on dropped tokens) and stats over the mask, of the ratio before the cap:
    "is_ratio_mean", "is_ratio_max", and "is_truncated_fraction" (tokens whose ratio exceeded C).

    >>> old = torch.log(torch.tensor([[0.5, 0.9, 0.2]]))
    >>> mu = torch.log(torch.tensor([[0.5, 0.3, 0.4]]))     # ratios 1, 3, 0.5
    >>> w, stats = truncated_importance_weights(old, mu, torch.ones(1, 3, dtype=torch.bool), cap=2.0)
    >>> [round(x, 4) for x in w.flatten().tolist()], round(stats["is_ratio_mean"].item(), 4)
    ([1.0, 2.0, 0.5], 1.5)
    """
    if old_logp.shape != behaviour_logp.shape or old_logp.shape != mask.shape:
        raise ValueError(f"old_logp, behaviour_logp and mask must have the same (B, T) shape; got "
                         f"{tuple(old_logp.shape)}, {tuple(behaviour_logp.shape)}, {tuple(mask.shape)}")
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    mask = mask.bool()
    with torch.no_grad():
        log_ratio = (old_logp.float() - behaviour_logp.float()).masked_fill(~mask, 0.0)
        ratio = torch.exp(log_ratio)
        n = mask.sum().clamp(min=1)
        stats = {
            "is_ratio_mean": ratio.masked_fill(~mask, 0.0).sum() / n,
            "is_ratio_max": ratio.masked_fill(~mask, 0.0).max() if mask.any() else ratio.new_tensor(0.0),
            "is_truncated_fraction": ((ratio > cap) & mask).sum() / n,
        }
        return ratio.clamp(max=cap), stats


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, max_log_ratio: float | None = None) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) by the k3 estimator (Schulman 2020; DeepSeekMath eq. 4):

        pi_ref/pi - log(pi_ref/pi) - 1 = exp(d) - d - 1,  d = ref_logp - logp.

    Unbiased for KL(pi || pi_ref) when the tokens are sampled from pi, and >= 0 for every token (e^d >= 1 + d),
    0 exactly where the two agree. Its gradient w.r.t. logp is 1 - exp(d): it pulls logp toward ref_logp.
    `ref_logp` is treated as a constant. `max_log_ratio` optionally clamps d to [-m, m] first, which bounds
    exp(d) where the policy has drifted far from the reference (no gradient beyond the clamp); default: no clamp.

    >>> k3_kl(torch.log(torch.tensor([0.5, 0.25])), torch.log(torch.tensor([0.5, 0.5])))  # 2 - log 2 - 1
    tensor([0.0000, 0.3069])
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp and ref_logp must have the same shape; got {tuple(logp.shape)} "
                         f"and {tuple(ref_logp.shape)}")
    d = ref_logp.detach() - logp
    if max_log_ratio is not None:
        d = d.clamp(-max_log_ratio, max_log_ratio)
    return torch.exp(d) - d - 1.0


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    beta: float = 1e-3,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    aggregation: Aggregation = "seq_mean_token_mean",
    max_log_ratio: float | None = None,
    *,
    max_tokens: int | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss: clipped surrogate + beta * k3 KL to the reference, per token, reduced over the mask.

    Both terms are reduced the same way (default: token mean per response, then mean over responses), so the
    total equals surrogate + beta * KL reduced separately. `old_logp=None` means the batch is used for a single
    update right after sampling (pi_old = pi): the ratio is 1 and the gradient is A * grad log pi. `ref_logp=None`
    or `beta=0` drops the KL term (no reference model needed). `is_weights` (the rollout-engine correction) weighs
    the surrogate only: the KL term is an estimate under the current policy's own samples either way.

    Stats: those of `clipped_surrogate_loss`, plus "policy_loss" and "kl" (the reduced k3 KL, before beta).

    >>> logp = torch.log(torch.tensor([[0.25, 0.5]])).requires_grad_()
    >>> ref = torch.log(torch.tensor([[0.5, 0.5]]))
    >>> loss, stats = grpo_loss(logp, None, torch.tensor([0.0]), torch.ones(1, 2, dtype=torch.bool), ref, beta=1.0)
    >>> round(loss.item(), 4), round(stats["kl"].item(), 4)   # (0.3069 + 0) / 2
    (0.1534, 0.1534)
    """
    if old_logp is None:
        old_logp = logp.detach()
    policy_loss, stats = clipped_surrogate_loss(logp, old_logp, advantages, mask, clip_eps, clip_eps_high,
                                                aggregation, max_tokens=max_tokens, is_weights=is_weights)
    stats["policy_loss"] = policy_loss.detach()
    if ref_logp is None or beta == 0.0:
        stats["kl"] = policy_loss.new_tensor(0.0)
        return policy_loss, stats
    # Zero both on dropped tokens first: exp(ref - logp) of a padding token can overflow to inf, and inf times the
    # zero gradient of a masked-out position is NaN.
    dropped = ~mask.bool()
    per_token_kl = k3_kl(logp.masked_fill(dropped, 0.0), ref_logp.masked_fill(dropped, 0.0), max_log_ratio)
    kl = aggregate_token_loss(per_token_kl, mask, aggregation, max_tokens)
    stats["kl"] = kl.detach()
    return policy_loss + beta * kl, stats
