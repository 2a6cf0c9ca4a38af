"""Reward models: mathloop's own (a causal-LM backbone with a scalar head) and loaders for existing ones.

mathloop's reward model follows Qwen2.5-Math: the SFT model with its LM head replaced by
Linear(h, h) -> ReLU -> Linear(h, 1), read at the last non-padding token of prompt + response.

Every reward model here has the same two-method surface, so scoring code does not care which one it holds:
  `input_text(tokenizer, prompt, response, question)`  the text the model reads for one response
  `forward(input_ids, attention_mask)`                 one float score per row (any padding side)

A saved mathloop reward model is a folder:
  reward_config.json   format marker, the backbone it was trained from, head shape, pooling
  config.json, model*.safetensors, tokenizer files   the backbone (transformers `save_pretrained`)
  head.safetensors     the scalar head
Existing reward models load through `load_reward_model` too: `AutoModelForSequenceClassification` checkpoints and
Qwen2.5-Math-RM-style checkpoints (`Qwen2ForRewardModel`, remote code). Those two need real weights and are not
exercised by the tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mathloop.hardware import resolve_dtype
from mathloop.runs import read_json, write_json

REWARD_CONFIG = "reward_config.json"
HEAD_FILE = "head.safetensors"
FORMAT = "mathloop-reward-model"
FORMAT_VERSION = 1
# The system prompt the Qwen2.5-Math-RM model card formats every (question, response) pair with.
QWEN_RM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding position of each row; works for left and right padding.

    >>> last_token_index(torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1]])).tolist()
    [1, 2, 2]
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row sees the same positions as unpadded.

    >>> position_ids_from_mask(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])).tolist()
    [[0, 0, 0, 1], [0, 1, 2, 2]]
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


class RewardModel(nn.Module):
    """A transformer backbone (no LM head) plus a scalar head read at the last non-padding token."""

    def __init__(self, backbone: nn.Module, backbone_name: str = ""):
        super().__init__()
        hidden = backbone.config.hidden_size
        self.backbone = backbone
        self.backbone_name = backbone_name
        # float32 head: a few h*h weights, and scores compared across a group should not be rounded to bf16.
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    @classmethod
    def from_backbone(cls, name_or_path: str, dtype: torch.dtype | None = None, **kwargs: Any) -> RewardModel:
        """A fresh reward model on a pretrained backbone (`AutoModel` drops the LM head of a causal LM)."""
        from transformers import AutoModel

        from mathloop.models import without_dropped_head_report

        with without_dropped_head_report():
            backbone = AutoModel.from_pretrained(name_or_path, dtype=dtype or torch.float32, **kwargs)
        return cls(backbone, backbone_name=str(name_or_path))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids and mask -> (B,) float32 scores."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids_from_mask(attention_mask), use_cache=False)
        hidden = out.last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, last_token_index(attention_mask)]
        return self.head(pooled.to(self.head[0].weight.dtype)).squeeze(-1).float()

    @staticmethod
    def input_text(tokenizer, prompt: str, response: str, question: str | None = None) -> str:
        """The prompt as the policy saw it, its response, and the end-of-turn token the score is read at."""
        return prompt + response + (tokenizer.eos_token or "")

    def save(self, out_dir: str | os.PathLike, tokenizer=None) -> Path:
        """Write the folder described in the module docstring. LoRA adapters are merged into the backbone first
        (in place: call this when training is over)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if hasattr(self.backbone, "merge_and_unload"):  # a peft model
            self.backbone = self.backbone.merge_and_unload()
        self.backbone.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        head = {k: v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head, str(out / HEAD_FILE))
        config = {"format": FORMAT, "version": FORMAT_VERSION, "backbone": self.backbone_name,
                  "hidden_size": self.backbone.config.hidden_size, "head": "linear-relu-linear",
                  "pooling": "last_non_padding_token", "input": "prompt + response + eos_token"}
        write_json(out / REWARD_CONFIG, config)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: torch.dtype | None = None, **kwargs: Any) -> RewardModel:
        """Load a folder written by `save`."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        path = Path(path)
        config = _read_reward_config(path)
        backbone = AutoModel.from_pretrained(path, dtype=dtype or torch.float32, **kwargs)
        model = cls(backbone, backbone_name=config.get("backbone", ""))
        head_path = path / HEAD_FILE
        if not head_path.exists():
            raise FileNotFoundError(f"{head_path} is missing: {path} is not a complete mathloop reward model")
        model.head.load_state_dict(load_file(str(head_path)))
        return model.to(next(backbone.parameters()).device)


def _read_reward_config(path: Path) -> dict:
    config = read_json(path / REWARD_CONFIG)
    if config.get("format") != FORMAT:
        raise ValueError(f"{path / REWARD_CONFIG}: format is {config.get('format')!r}, expected {FORMAT!r}")
    if config.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path / REWARD_CONFIG}: version {config['version']} is newer than this mathloop "
                         f"reads ({FORMAT_VERSION}); upgrade mathloop")
    return config


class SequenceClassifierRewardModel(nn.Module):
    """An existing `AutoModelForSequenceClassification` reward model (one logit): score = logit 0.

    transformers pools these at the rightmost non-padding token itself; it needs `pad_token_id` in the config.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return logits[:, 0].float()

    @staticmethod
    def input_text(tokenizer, prompt: str, response: str, question: str | None = None) -> str:
        """The user/assistant chat these models are trained on when the question is known, else prompt + response."""
        if question is not None and getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": response}]
            return tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt + response


class QwenMathRewardModel(nn.Module):
    """Qwen2.5-Math-RM-72B-style checkpoints (`Qwen2ForRewardModel`, loaded with trust_remote_code).

    The model reads its own chat format (system CoT prompt, user question, assistant response) and returns the
    score as `outputs[0]`; its remote code finds the last token from the first pad token, so inputs must be
    right-padded (`score_samples` always pads on the right).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out[0].reshape(input_ids.shape[0], -1)[:, 0].float()

    @staticmethod
    def input_text(tokenizer, prompt: str, response: str, question: str | None = None) -> str:
        if question is None:
            raise ValueError("a Qwen2.5-Math-RM model needs each problem's question text: pass questions="
                             "{problem_id: question} to score_samples, or store it in Sample.question")
        messages = [{"role": "system", "content": QWEN_RM_SYSTEM}, {"role": "user", "content": question},
                    {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def load_reward_model(name_or_path: str, dtype: str | torch.dtype | None = None,
                      device: str | None = None) -> tuple[nn.Module, Any]:
    """Load any supported reward model and its tokenizer, in eval mode.

    `dtype` None or "auto" is bfloat16 where the device computes it natively, else float32 (`mathloop.hardware`).
    A mathloop folder (has reward_config.json) loads on `device` (default: cuda when available, else cpu).
    `AutoModelForSequenceClassification` and Qwen2.5-Math-RM checkpoints (a local folder or Hub id) load with
    `device_map="auto"` on GPU so a 72B model spreads over the visible GPUs; that needs `accelerate`.
    """
    from transformers import AutoConfig, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = resolve_dtype(dtype, device)
    path = Path(name_or_path).expanduser()
    if (path / REWARD_CONFIG).exists():
        model = RewardModel.load(path, dtype=torch_dtype).to(device)
        return model.eval(), AutoTokenizer.from_pretrained(path)
    if path.is_dir() and not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has neither {REWARD_CONFIG} (a mathloop reward model) nor config.json "
                                f"(a transformers checkpoint)")
    config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=True)
    architectures = getattr(config, "architectures", None) or []
    placement = {"device_map": "auto"} if device == "cuda" else {}
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=True)
    if any(a.endswith("ForRewardModel") for a in architectures):
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(name_or_path), dtype=torch_dtype, trust_remote_code=True, **placement)
        wrapped: nn.Module = QwenMathRewardModel(model)
    elif any(a.endswith("ForSequenceClassification") for a in architectures):
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(str(name_or_path), dtype=torch_dtype,
                                                                   **placement)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
        wrapped = SequenceClassifierRewardModel(model)
    else:
        raise ValueError(f"{name_or_path}: architectures {architectures} is not a reward model this loader knows "
                         f"(a mathloop reward model folder, *ForSequenceClassification, or *ForRewardModel)")
    if not placement:
        wrapped = wrapped.to(device)
    return wrapped.eval(), tokenizer
