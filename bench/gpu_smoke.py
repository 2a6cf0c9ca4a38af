"""GPU smoke test: every stage's GPU path once, on a tiny random-weight model built here, with timings and peak memory.

For a GPU machine with no network and nothing but this checkout, PyTorch with CUDA, transformers, peft and
accelerate. A Qwen2-shaped model (random weights, a byte-level BPE tokenizer trained here on a few sentences) is
saved to a temporary folder, then:
  eval    the hf backend in bfloat16 on CUDA: greedy CoT on 16 gsm8k problems (the packaged data), graded by the
          verifier (math-verify; without it the responses are generated and not graded, and it says so)
  sft     one LoRA SFT step through TRL's SFTTrainer (skipped without trl)
  rm      one LoRA reward-model step (listwise loss)
  grpo    two GRPO steps with LoRA, rollouts from the trained model itself (hf), reward: a plain function of the text
Each stage prints its wall time and the peak GPU memory it allocated (the process's peak RSS on the CPU). A stage that
fails prints its error and the script goes on; the exit code is 1 when one failed (skips do not count).

Usage: python bench/gpu_smoke.py [--device cuda|cpu] [--hidden 256] [--layers 4] [--out DIR] [--json FILE]
`--device cpu` runs the same stages on the CPU (float32 weights), to check the script where there is no GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import mathloop  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "src"))

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = ["Please reason step by step, and put your final answer within \\boxed{}.",
          "What is 2 + 3? The answer is \\boxed{5}. Let x = 7, so 2x = 14.",
          "Janet has 16 eggs and sells the remainder for $2 each. She makes 18 dollars a day."] * 30


class Skip(Exception):
    """A stage that cannot run here (a package is missing); not a failure."""


def missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def build_tiny_model(out: Path, hidden: int, layers: int) -> Path:
    """A Qwen2 model with random weights and a ~400-token tokenizer, saved to `out` (no downloads)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64), num_key_value_heads=1,
                         max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out


def text_reward(prompts, completions, **columns):
    """GRPO reward without the verifier: 1 for a response that writes a box, else the share of its length up to 64
    characters (so a group's rewards differ)."""
    return [1.0 if "\\boxed" in c else min(len(c), 64) / 64 for c in completions]


def stage_eval(model: Path, work: Path, device: str) -> dict:
    from mathloop.backends.hf import HFBackend

    dtype = "bfloat16" if device == "cuda" else "float32"
    if missing("math_verify"):
        from mathloop.data.benchmarks import load_benchmark
        from mathloop.prompts import build_messages
        from mathloop.backends.base import SamplingParams

        backend = HFBackend(str(model), dtype=dtype, device=device, batch_size=16)
        problems = load_benchmark("gsm8k", limit=16)
        prompts = [backend.chat_prompt(build_messages(p, "cot")) for p in problems]
        completions = backend.generate(prompts, SamplingParams(max_new_tokens=64))
        tokens = sum(c.completion_tokens for cs in completions for c in cs)
        return {"note": "generated only: math-verify missing, responses not graded", "completion_tokens": tokens}
    from mathloop.pipeline.evaluate import EvalConfig, run_eval

    metrics = run_eval(EvalConfig(out=str(work / "eval"), model=str(model), benchmarks=["gsm8k"], limit=16,
                                  max_new_tokens=64, backend="hf", backend_args={"dtype": dtype, "device": device,
                                                                   "batch_size": 16}), progress=False)
    from mathloop.records import Sample, read_records

    tokens = sum(s.completion_tokens for s in read_records(Sample, work / "eval" / "samples" / "gsm8k.jsonl"))
    return {"problems": 16, "completion_tokens": tokens, "acc": metrics["benchmarks"]["gsm8k"]["acc"]}


def stage_sft(model: Path, work: Path, device: str) -> dict:
    if missing("trl", "peft"):
        raise Skip(f"needs {', '.join(missing('trl', 'peft'))} (pip install 'mathloop[train]', or carry the wheels)")
    from mathloop.records import write_jsonl
    from mathloop.train.sft import SFTRunConfig, train_sft

    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + 3?"}],
             "completion": [{"role": "assistant", "content": f"{i} + 3 = {i + 3}, so \\boxed{{{i + 3}}}."}]}
            for i in range(8)]
    write_jsonl(work / "sft.jsonl", rows)
    summary = train_sft(SFTRunConfig(data=str(work / "sft.jsonl"), output_dir=str(work / "sft"), model=str(model),
                                     epochs=1, per_device_batch_size=4, gradient_accumulation_steps=1, lora=True,
                                     lora_rank=8, max_length=256, save_steps=1000, log_every=1,
                                     dtype="bfloat16" if device == "cuda" else "float32"), stop_after=1)
    return {"steps": 1, "examples": summary.get("examples")}


def stage_rm(model: Path, work: Path, device: str) -> dict:
    if missing("peft"):
        raise Skip("needs peft (pip install 'mathloop[train]', or carry the wheel)")
    from mathloop.records import Sample, write_jsonl
    from mathloop.train.rm import RMTrainConfig, train

    samples = [Sample(problem_id=f"p{i}", prompt=f"What is {i} + 7?", sample_index=j,
                      response=f"so {i} + 7 = {i + 7 if j < 2 else j}, \\boxed{{{i + 7 if j < 2 else j}}}",
                      verdict="correct" if j < 2 else "incorrect") for i in range(8) for j in range(4)]
    write_jsonl(work / "rm_samples.jsonl", samples)
    summary = train(RMTrainConfig(samples=[str(work / "rm_samples.jsonl")], output_dir=str(work / "rm"),
                                  model=str(model), heldout_fraction=0.0, groups_per_batch=8, max_length=128,
                                  max_ratio=None, lora=True, lora_rank=8), stop_after=1)
    return {"steps": summary["step"], "loss": round(summary["loss"], 4)}


def stage_grpo(model: Path, work: Path, device: str) -> dict:
    if missing("peft"):
        raise Skip("needs peft (pip install 'mathloop[train]', or carry the wheel)")
    from mathloop.records import write_jsonl
    from mathloop.train.grpo import GRPOConfig, train_grpo

    write_jsonl(work / "queries.jsonl", [{"id": f"q{i}", "question": f"What is {i} + {7 - i}?"} for i in range(8)])
    summary = train_grpo(GRPOConfig(output_dir=str(work / "grpo"), model=str(model), queries=str(work / "queries.jsonl"),
                                    reward="gpu_smoke:text_reward", group_size=4, queries_per_step=4, steps=2,
                                    max_new_tokens=32, lora=True, lora_rank=8, micro_batch=8, save_every=0,
                                    rollout_batch_size=16))
    return {"steps": summary["step"], "reward_mean": round(summary["reward_mean"], 3),
            "rollout_seconds": summary["rollout_seconds"], "update_seconds": summary["update_seconds"]}


def run_stage(name: str, fn, model: Path, work: Path, device: str) -> dict:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    row: dict = {"stage": name}
    try:
        row.update(fn(model, work, device))
        row["status"] = "ok"
    except Skip as e:
        row.update(status="skipped", reason=str(e))
    except Exception as e:  # a smoke test reports every stage
        row.update(status="failed", error=f"{type(e).__name__}: {e}")
        traceback.print_exc()
    if device == "cuda":
        torch.cuda.synchronize()
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the tiny model")
    parser.add_argument("--layers", type=int, default=4, help="transformer layers of the tiny model")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the trainers pick CUDA when they see it
    absent = missing("torch", "transformers", "accelerate")
    if absent:
        print(f"gpu_smoke: cannot run without {', '.join(absent)}", file=sys.stderr)
        return 2
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device visible to PyTorch (torch.cuda.is_available() is False); use --device cpu "
              "to check the script on the CPU", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the GRPO reward `gpu_smoke:text_reward`
    os.environ.setdefault("MATHLOOP_CACHE", tempfile.mkdtemp(prefix="mathloop-cache-"))
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else ""))
    for optional in ("peft", "trl", "math_verify", "vllm"):
        print(f"  {optional}: {'present' if not missing(optional) else 'missing'}")
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        work = Path(args.out or tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        model = build_tiny_model(work / "tiny-model", args.hidden, args.layers)
        params = sum(p.numel() for p in __import__("safetensors.torch").torch.load_file(
            str(model / "model.safetensors")).values())
        print(f"tiny model: hidden {args.hidden}, {args.layers} layers, {params / 1e6:.2f}M parameters "
              f"({time.perf_counter() - started:.1f} s)")
        rows = [run_stage(name, fn, model, work, args.device) for name, fn in
                (("eval", stage_eval), ("sft", stage_sft), ("rm", stage_rm), ("grpo", stage_grpo))]
    memory = "peak_gpu_mib" if args.device == "cuda" else "peak_rss_mib"
    print(f"\n{'stage':<6} {'status':<8} {'seconds':>8} {memory:>13}  detail")
    for row in rows:
        detail = row.get("reason") or row.get("error") or ", ".join(
            f"{k}={v}" for k, v in row.items() if k not in ("stage", "status", "seconds", memory))
        print(f"{row['stage']:<6} {row['status']:<8} {row['seconds']:>8} {row[memory]:>13}  {detail}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any(row["status"] == "failed" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
