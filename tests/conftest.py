"""Shared fixtures: a tiny random-weight causal LM with a tiny tokenizer (built here, no downloads), and the benchmark
data: `data_dir` is the data packaged with mathloop (always there); `full_data_dir` is a folder with every set, for the
sets that cannot ship ($MATHLOOP_DATA_DIR, else ../shared/data; tests that need it skip without it, and fail in CI,
where MATHLOOP_CI=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FULL_DATA_DIR = Path(os.environ.get("MATHLOOP_DATA_DIR") or ROOT.parent / "shared" / "data")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "What is 2 + 3? The answer is \\boxed{5}. Let x = 7, so 2x = 14.",
    "```python\nprint(1 + 2)\n```\n```output\n3\n```",
    "Janet has 16 eggs and sells the remainder for $2 each.",
] * 20


@pytest.fixture(autouse=True)
def backend_auto_is_hf(monkeypatch):
    """The `auto` backend resolves to hf in every test, also where OpenVINO GenAI is installed, so no test's engine
    depends on the extras of the machine it runs on; the tests of `auto` itself set `openvino_installed`."""
    import mathloop.backends

    monkeypatch.setattr(mathloop.backends, "openvino_installed", lambda: False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (several threads on tiny matrices mostly wait for each other).
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The packaged benchmark data (a folder in the harness layout, gzipped)."""
    from mathloop.data.sources import PACKAGED_DIR

    assert (PACKAGED_DIR / "gsm8k" / "test.jsonl.gz").exists(), f"packaged data missing from {PACKAGED_DIR}"
    return PACKAGED_DIR


@pytest.fixture(scope="session")
def full_data_dir() -> Path:
    """Every benchmark, including those mathloop may not ship."""
    if not (FULL_DATA_DIR / "minerva_math" / "test.jsonl").exists():
        missing = pytest.fail if os.environ.get("MATHLOOP_CI") == "1" else pytest.skip
        missing(f"the sets that cannot ship are not at {FULL_DATA_DIR} (set MATHLOOP_DATA_DIR)")
    return FULL_DATA_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Qwen2 model with random weights and a 300-token byte-level BPE tokenizer, saved to disk."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("tiny-model")
    bpe = ByteLevelBPETokenizer()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, special_tokens=specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out
