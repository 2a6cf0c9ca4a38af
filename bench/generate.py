"""Benchmark: generated tokens per second of the hf backend, batched vs batch 1, on the default model.

All configurations decode the same GSM8K CoT prompts (greedy, or --n samples each at --temperature / top-p 0.8) in
one process, one after the other, so the printed ratios compare runs on the same machine in the same state:
  batch 1                     one sequence at a time (--single-prompts of them; 0 leaves it out)
  batched (--batch-size)      left-padded static batches (refill=False): each runs until its longest sequence ends
                              (the anchor)
  refill                      the default: one batch that refills; a finished row leaves at once, waiting sequences
                              join

Usage: python bench/generate.py [--model default] [--prompts 16] [--n 1] [--batch-size 16] [--max-new-tokens 256]
Measured (2-core AMD EPYC, AVX512-BF16, bfloat16, the loop paused):
  --prompts 8 --n 4 --batch-size 16 --max-new-tokens 512: batched 55.2 tokens/s, refill 76.5 (1.39x)
  --prompts 16 --n 4 --batch-size 32 --max-new-tokens 256: batched 97.1 tokens/s, refill 95.5 (0.98x; most
  responses reach 256 tokens, so static batches have no idle slots)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

try:
    import mathloop  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from mathloop.backends.base import SamplingParams  # noqa: E402
from mathloop.backends.hf import HFBackend  # noqa: E402
from mathloop.data.benchmarks import load_benchmark  # noqa: E402
from mathloop.prompts import build_messages  # noqa: E402


def measure(backend: HFBackend, prompts: list[str], params: SamplingParams) -> tuple[float, int, float]:
    start = time.perf_counter()
    outs = backend.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(c.completion_tokens for cs in outs for c in (cs[:1] if params.greedy else cs))
    return tokens / seconds, tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data-dir", default=os.environ.get("MATHLOOP_DATA_DIR", "../shared/data"))
    parser.add_argument("--prompts", type=int, default=16, help="GSM8K test prompts for the batched runs")
    parser.add_argument("--single-prompts", type=int, default=4, help="prompts for the batch-1 row (0: none)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--n", type=int, default=1, help="samples per prompt (1: greedy)")
    parser.add_argument("--temperature", type=float, default=0.7, help="with --n > 1 (top-p 0.8)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    problems = load_benchmark("gsm8k", args.data_dir, limit=args.prompts)
    backend = HFBackend(args.model, batch_size=1, refill=False)
    prompts = [backend.chat_prompt(build_messages(p, "cot")) for p in problems]
    params = (SamplingParams(max_new_tokens=args.max_new_tokens) if args.n == 1 else
              SamplingParams(n=args.n, temperature=args.temperature, top_p=0.8, max_new_tokens=args.max_new_tokens))
    backend.generate(prompts[:1], SamplingParams(max_new_tokens=8))  # warm-up

    rows = []
    if args.single_prompts:
        rows.append(("batch 1", *measure(backend, prompts[:args.single_prompts], params)))
    backend.batch_size, backend.refill = args.batch_size, False
    rows.append((f"batched (batch {args.batch_size})", *measure(backend, prompts, params)))
    anchor = rows[-1][1]
    backend.refill = True
    rows.append((f"refill (batch {args.batch_size})", *measure(backend, prompts, params)))

    print(f"model: {backend.model_id}; dtype: {next(backend.model.parameters()).dtype}; "
          f"threads: {torch.get_num_threads()}; CPU capability: "
          f"{torch.backends.cpu.get_cpu_capability()}; load average: {os.getloadavg()[0]:.1f}; "
          f"max_new_tokens: {args.max_new_tokens}; "
          + ("greedy" if args.n == 1 else f"{args.n} samples at temperature {args.temperature}, top-p 0.8"))
    print(f"{'configuration':<36} {'tokens/s':>9} {'tokens':>7} {'seconds':>8} {'vs batched':>10}")
    for name, r, t, s in rows:
        print(f"{name:<36} {r:9.1f} {t:7d} {s:8.1f} {r / anchor:9.2f}x")


if __name__ == "__main__":
    main()
