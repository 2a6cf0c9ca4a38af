"""Quality scores from a small language model: the probability that it answers "yes" to a quality question about
the document (the paper scores its corpus with a small model the same way).

`QualityScorer.score(texts)` renders each document (cut to `max_chars`) into `QUALITY_PROMPT` with the model's chat
template and reads the next-token distribution after the assistant turn opens: the score is P(yes) / (P(yes) +
P(no)), each summed over the spellings "yes"/"Yes"/" yes"/" Yes" (and the same for no). Normalising by yes + no
makes the score comparable across models, where a small model puts much of its mass on other first tokens.
`quality_filter` keeps the documents scoring at least `threshold` and writes the score to
`metadata["quality_score"]`.
"""

from __future__ import annotations

from typing import Sequence

QUALITY_PROMPT = (
    "Here is a document from the web:\n\n{text}\n\n"
    "Is this document useful for learning mathematics: does it explain mathematical ideas or work through math "
    "problems correctly and clearly? Answer with yes or no.")
YES = ("yes", "Yes", " yes", " Yes", "YES")
NO = ("no", "No", " no", " No", "NO")


class QualityScorer:
    """P(yes) to `QUALITY_PROMPT` under a causal LM (an embedded name, a folder or a Hub id)."""

    def __init__(self, model: str = "default", batch_size: int = 8, max_chars: int = 2000):
        import torch
        from transformers import AutoTokenizer

        from mathloop.models import load_causal_lm, resolve_model

        path, self.model_name = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = load_causal_lm(path, torch.float32).eval()
        self.batch_size, self.max_chars = batch_size, max_chars
        self.yes_ids = self._first_tokens(YES)
        self.no_ids = self._first_tokens(NO)

    def _first_tokens(self, words: Sequence[str]) -> list[int]:
        ids = {self.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words}
        return sorted(ids)

    def prompt(self, text: str) -> str:
        messages = [{"role": "user", "content": QUALITY_PROMPT.format(text=text[:self.max_chars])}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def score(self, texts: Sequence[str]) -> list[float]:
        import torch

        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            prompts = [self.prompt(t) for t in texts[start:start + self.batch_size]]
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                logits = self.model(**batch).logits[:, -1, :].float()
            probs = torch.softmax(logits, dim=-1)
            yes = probs[:, self.yes_ids].sum(-1)
            no = probs[:, self.no_ids].sum(-1)
            scores.extend((yes / (yes + no).clamp_min(1e-12)).tolist())
        return scores


def quality_filter(model: str, threshold: float = 0.5, batch_size: int = 8, exclusion_writer=None):
    """The datatrove filter: keeps documents scoring at least `threshold`, the score in metadata["quality_score"];
    the model is loaded in the worker on first use."""
    from functools import partial

    from mathloop.corpus.classifier import score_filter

    return score_filter("quality", partial(QualityScorer, model, batch_size=batch_size), "quality_score",
                        "low_quality", threshold, batch_size, exclusion_writer)
