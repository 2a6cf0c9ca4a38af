"""Weight interpolation between a starting model and its fine-tuned descendant (WiSE-FT; Dang et al. 2025, arXiv
2504.10478, report that it recovers the pass@k that SFT loses while keeping or raising pass@1).

    theta(alpha) = theta_base + alpha * (theta_tuned - theta_base)

alpha = 0 is the starting model, 1 the fine-tuned one, values in between move part of the way (and > 1 extrapolates).
For a LoRA run the merged model is theta_base + (lora_alpha / r) * B A, so interpolating the merged weights is the
same as scaling the adapter by alpha before the merge: one function serves both.

`mathloop interpolate --base A --tuned B --alpha 0.5 --out C` writes C as a plain transformers folder (the tuned
model's config, dtype and tokenizer); the loop's `interpolate` section picks alpha on a dev split
(`mathloop.pipeline.loop`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch


def interpolate_weights(base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor],
                        alpha: float) -> dict[str, torch.Tensor]:
    """base + alpha * (tuned - base) for every tensor, computed in float32 and returned in the tuned tensor's dtype;
    tensors that are not floating point (step counters, masks) are the tuned model's.

    >>> base, tuned = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([1.0, 4.0])}
    >>> interpolate_weights(base, tuned, 0.25)["w"]
    tensor([0.2500, 2.5000])
    """
    if not math.isfinite(alpha):
        raise ValueError(f"interpolate: alpha must be a finite number, got {alpha}")
    if set(base) != set(tuned):
        missing, extra = sorted(set(tuned) - set(base)), sorted(set(base) - set(tuned))
        raise ValueError(f"interpolate: the models have different weights (only in the tuned model: "
                         f"{', '.join(missing[:3]) or 'none'}; only in the base: {', '.join(extra[:3]) or 'none'}); "
                         f"interpolate a model with its own fine-tuned descendant")
    out = {}
    for name, t in tuned.items():
        b = base[name]
        if b.shape != t.shape:
            raise ValueError(f"interpolate: {name} is {tuple(b.shape)} in the base and {tuple(t.shape)} in the tuned "
                             f"model")
        if not t.is_floating_point():
            out[name] = t.clone()
            continue
        b32 = b.to(torch.float32)
        out[name] = (b32 + alpha * (t.to(torch.float32) - b32)).to(t.dtype)
    return out


def interpolate_models(base: str, tuned: str, alpha: float, out: str | Path) -> Path:
    """Write the interpolated model of two checkpoints (model folders, `.gguf` files or embedded names such as
    `default`) to `out`, with the tuned model's config and tokenizer; returns `out`. Written to a sibling folder
    first and renamed, so `out` exists only when complete."""
    import shutil

    from mathloop.models import load_causal_lm, load_tokenizer, resolve_model

    out = Path(out)
    base_path, _ = resolve_model(base)
    tuned_path, _ = resolve_model(tuned)
    tuned_model = load_causal_lm(tuned_path, "auto")
    base_model = load_causal_lm(base_path, torch.float32)
    base_weights = dict(base_model.named_parameters())
    tuned_weights = dict(tuned_model.named_parameters())
    mixed = interpolate_weights({k: v.detach() for k, v in base_weights.items()},
                                {k: v.detach() for k, v in tuned_weights.items()}, alpha)
    del base_model, base_weights
    with torch.no_grad():
        for name, parameter in tuned_weights.items():
            parameter.copy_(mixed[name])
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tuned_model.save_pretrained(partial)
    load_tokenizer(tuned_path).save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out
