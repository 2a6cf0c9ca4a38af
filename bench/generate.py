"""Benchmark: generated tokens per second of the hf backend, batched vs batch 1, on the default model.

All configurations decode the same GSM8K CoT prompts greedily in one process, one after the other, so the printed
ratios compare runs on the same machine in the same state:
  batch 1                     the anchor: one sequence at a time
  batched (--batch-size)      left-padded static batches, the backend's default
  batched + segment refill    segments of --segment tokens; finished sequences leave, unfinished ones are regrouped

Usage: python bench/generate.py [--model default] [--prompts 16] [--batch-size 16] [--max-new-tokens 256]
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

from mathloop.backends.base import SamplingParams  # noqa: E402
from mathloop.backends.hf import HFBackend  # noqa: E402
from mathloop.data.benchmarks import load_benchmark  # noqa: E402
from mathloop.prompts import build_messages  # noqa: E402


def measure(backend: HFBackend, prompts: list[str], params: SamplingParams) -> tuple[float, int, float]:
    start = time.perf_counter()
    outs = backend.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(c[0].completion_tokens for c in outs)
    return tokens / seconds, tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data-dir", default=os.environ.get("MATHLOOP_DATA_DIR", "../shared/data"))
    parser.add_argument("--prompts", type=int, default=16, help="GSM8K test prompts for the batched runs")
    parser.add_argument("--single-prompts", type=int, default=4, help="prompts for the batch-1 anchor")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--segment", type=int, default=64, help="segment length for the refill run")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()

    problems = load_benchmark("gsm8k", args.data_dir, limit=args.prompts)
    backend = HFBackend(args.model, batch_size=1)
    prompts = [backend.chat_prompt(build_messages(p, "cot")) for p in problems]
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    backend.generate(prompts[:1], SamplingParams(max_new_tokens=8))  # warm-up

    rows = []
    rate1, tok1, sec1 = measure(backend, prompts[:args.single_prompts], params)
    rows.append(("batch 1", rate1, tok1, sec1))
    backend.batch_size = args.batch_size
    rate, tok, sec = measure(backend, prompts, params)
    rows.append((f"batched (batch {args.batch_size})", rate, tok, sec))
    backend.segment_tokens = args.segment
    rate_s, tok_s, sec_s = measure(backend, prompts, params)
    rows.append((f"batched + segment refill ({args.segment})", rate_s, tok_s, sec_s))

    print(f"model: {backend.model_id}; dtype: {next(backend.model.parameters()).dtype}; "
          f"threads: {__import__('torch').get_num_threads()}; max_new_tokens: {args.max_new_tokens}")
    print(f"{'configuration':<36} {'tokens/s':>9} {'tokens':>7} {'seconds':>8} {'vs batch 1':>10}")
    for name, r, t, s in rows:
        print(f"{name:<36} {r:9.1f} {t:7d} {s:8.1f} {r / rate1:9.2f}x")


if __name__ == "__main__":
    main()
