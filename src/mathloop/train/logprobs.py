"""The log-probabilities a trainer needs: one function for SFT and GRPO, computed only where the loss looks.

`completion_logprobs(model, input_ids, attention_mask, loss_mask)` gives log pi(token t+1 | tokens <= t) at the
positions of `loss_mask` (B, T-1) and 0 elsewhere. The language-model head is the costly part of a small model's
step: for Qwen2.5-0.5B its 152k x 896 matrix is about a quarter of the FLOPs of a token, and the float32 logits of
a 4k-token micro-batch are 2.5 GB, kept for the backward pass (plus the log-softmax's copy). So here:

  - the model runs up to its last hidden state only (the head is asked for one position: `logits_to_keep=1`),
  - the head runs on the completion positions only (no logits for prompt tokens or padding),
  - in chunks of `chunk_size` positions, each chunk's logits freed at once: the forward keeps one number per
    position (log pi of the token, and the log-normaliser), and the backward recomputes each chunk's logits
    (`_ChunkedHeadLogprobs`, a custom autograd function; the same idea as liger-kernel's fused linear
    cross-entropy, whose one-scalar-loss form does not fit a per-token policy-gradient weight).

Extra memory: chunk_size x V floats instead of N x V (x2). Extra compute: the head's forward once more in the
backward (2 N H V FLOPs), against the full head's 6 N H V on every position of the batch before.

Models whose head is not a plain `nn.Linear` on the decoder's output (a LoRA adapter on lm_head, Gemma-2's logit
soft-capping) take the plain path: the full forward, the positions picked afterwards.
"""

from __future__ import annotations

import torch

from mathloop.train.grpo_math import token_entropy, token_logprobs


def completion_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        loss_mask: torch.Tensor, *, temperature: float = 1.0, chunk_size: int = 1024,
                        entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(B, T-1) float32: log pi(input_ids[:, t+1] | input_ids[:, :t+1]) where `loss_mask[:, t]` is True, 0 elsewhere
    (gradients flow through the kept positions only). With `entropy`, also the entropy of the policy's
    next-token distribution at those positions (B, T-1), without gradient, from the same logits."""
    if loss_mask.shape != (input_ids.shape[0], input_ids.shape[1] - 1):
        raise ValueError(f"loss_mask must be (B, T-1) = {(input_ids.shape[0], input_ids.shape[1] - 1)} for input_ids "
                         f"{tuple(input_ids.shape)}; got {tuple(loss_mask.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    mask = loss_mask.bool()
    targets = input_ids[:, 1:][mask]
    parts = _decoder_and_head(model)
    if parts is None:  # the plain path
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1][mask]
        picked = token_logprobs(logits, targets, temperature=temperature, chunk_size=chunk_size)
        picked_entropy = None
        if entropy:
            picked_entropy = token_entropy(logits.detach(), temperature=temperature, chunk_size=chunk_size)
    else:
        decoder, head = parts
        hidden = _last_hidden_state(model, decoder, input_ids, attention_mask)[:, :-1][mask]
        picked, picked_entropy = _ChunkedHeadLogprobs.apply(hidden, head.weight, head.bias, targets, temperature,
                                                            chunk_size, entropy)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=input_ids.device)
    out = out.masked_scatter(mask, picked.float())
    if not entropy:
        return out
    ent = torch.zeros(mask.shape, dtype=torch.float32, device=input_ids.device)
    return out, ent.masked_scatter(mask, picked_entropy.float())


def _decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """The decoder (whose output is the head's input) and the plain linear head of a transformers causal LM,
    through peft and DDP wrappers; None when the fast path does not apply."""
    inner = getattr(model, "module", model)  # DDP
    try:
        decoder, head = inner.get_decoder(), inner.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    config = getattr(inner, "config", None)
    if (decoder is None or type(head) is not torch.nn.Linear
            or getattr(config, "final_logit_softcapping", None) is not None
            or getattr(config, "logit_scale", None) not in (None, 1, 1.0)):
        return None
    return decoder, head


def _last_hidden_state(model: torch.nn.Module, decoder: torch.nn.Module, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's output (B, T, H) for the whole batch, taken by a forward hook while the model itself runs
    (so DDP and peft wrappers see their forward) with its head on the last position only."""
    captured: list[torch.Tensor] = []

    def keep(module, args, output) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = decoder.register_forward_hook(keep)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[-1]


class _ChunkedHeadLogprobs(torch.autograd.Function):
    """log softmax(h W^T + b)[target] / temperature, chunk by chunk, keeping no logits for the backward pass.

    forward: hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) -> log-probabilities (N,) float32 and
    entropies (N,) (zeros unless asked). backward: per chunk, the logits again, p = softmax(z), and
    d logp / d z = onehot(target) - p, scaled by the incoming gradient and 1 / temperature."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, with_entropy):
        logp = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        ent = torch.zeros_like(logp)
        with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
            w, b = weight.float(), None if bias is None else bias.float()
            for start in range(0, hidden.shape[0], chunk_size):
                z = _chunk_logits(hidden, w, b, start, chunk_size, temperature)
                lse = torch.logsumexp(z, dim=-1)
                logp[start:start + chunk_size] = z.gather(-1, targets[start:start + chunk_size, None]).squeeze(-1) - lse
                if with_entropy:
                    p = torch.softmax(z, dim=-1)
                    ent[start:start + chunk_size] = lse - (p * z).sum(dim=-1)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        hidden, weight, bias, targets = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(hidden, dtype=torch.float32) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
        size = ctx.chunk_size
        with torch.autocast(hidden.device.type, enabled=False):
            w, b = weight.float(), None if bias is None else bias.float()
            for start in range(0, hidden.shape[0], size):
                z = _chunk_logits(hidden, w, b, start, size, ctx.temperature)
                # d logp / d z = onehot - softmax(z); times the incoming gradient, over the temperature
                g = torch.softmax(z, dim=-1).mul_(-grad_logp[start:start + size, None].float())
                g.scatter_add_(-1, targets[start:start + size, None], grad_logp[start:start + size, None].float())
                if ctx.temperature != 1.0:
                    g.div_(ctx.temperature)
                if need_hidden:
                    grad_hidden[start:start + size] = g @ w
                if need_weight:
                    grad_weight.addmm_(g.t(), hidden[start:start + size].float())
                if need_bias:
                    grad_bias += g.sum(dim=0)
        cast = lambda grad, like: None if grad is None else grad.to(like.dtype)  # noqa: E731
        return (cast(grad_hidden, hidden), cast(grad_weight, weight), cast(grad_bias, bias),
                None, None, None, None)


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, start: int, size: int,
                  temperature: float) -> torch.Tensor:
    """float32 logits / temperature of positions start .. start + size (weight and bias already float32)."""
    z = torch.nn.functional.linear(hidden[start:start + size].float(), weight, bias)
    return z.div_(temperature) if temperature != 1.0 else z

