"""Benchmark: float32 vs bfloat16 on this CPU, for the matmul shapes of the default model and for generation.

mathloop picks bfloat16 only where the CPU computes it natively (`mathloop.hardware`). This prints the CPU's
features, what `auto` resolves to, and the measured ratio, all in one run, so a reader can check the rule on the
machine at hand: on an AVX2-only CPU bfloat16 is emulated (13.5x slower than float32 was measured on one); with
AVX512-BF16 or AMX it is faster.

Usage: python bench/dtype.py [--model default] [--prompts 8] [--max-new-tokens 64] [--skip-generate]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import mathloop  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from mathloop.hardware import hardware_info  # noqa: E402

# (rows, in, out) of the default model's (Qwen2.5-0.5B) projections: decoding 32 sequences, and a 512-token prefill.
SHAPES = [("decode MLP up, 32 rows", 32, 896, 4864), ("decode MLP down, 32 rows", 32, 4864, 896),
          ("prefill MLP up, 512 rows", 512, 896, 4864), ("lm head, 32 rows", 32, 896, 151936)]


def time_matmul(rows: int, k: int, n: int, dtype: torch.dtype, repeats: int = 10) -> float:
    x, w = torch.randn(rows, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(2):
        x @ w
    start = time.perf_counter()
    for _ in range(repeats):
        x @ w
    return (time.perf_counter() - start) / repeats


def time_generate(model: str, dtype: str, prompts: int, max_new_tokens: int) -> tuple[float, int]:
    from mathloop.backends.base import SamplingParams
    from mathloop.backends.hf import HFBackend
    from mathloop.data.synthetic import generate_problems
    from mathloop.prompts import build_messages

    backend = HFBackend(model, dtype=dtype, batch_size=prompts)
    texts = [backend.chat_prompt(build_messages(p, "cot")) for p in generate_problems(prompts, seed=0)]
    params = SamplingParams(max_new_tokens=max_new_tokens)
    backend.generate(texts[:1], SamplingParams(max_new_tokens=4))  # warm-up
    start = time.perf_counter()
    outs = backend.generate(texts, params)
    seconds = time.perf_counter() - start
    return sum(c[0].completion_tokens for c in outs) / seconds, sum(c[0].completion_tokens for c in outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--skip-generate", action="store_true")
    args = parser.parse_args()

    info = hardware_info("cpu")
    print(f"cpu: {info['cpu']}; cores: {info['cpu_count']}; torch capability: {info['cpu_capability']}; "
          f"bf16 native: {info['cpu_bf16_native']}; auto dtype: {info['auto_dtype']}; threads: {torch.get_num_threads()}")
    print(f"{'workload':<28} {'float32':>10} {'bfloat16':>10} {'bf16 speed-up':>14}")
    for name, rows, k, n in SHAPES:
        f32, bf16 = time_matmul(rows, k, n, torch.float32), time_matmul(rows, k, n, torch.bfloat16)
        print(f"{name:<28} {f32 * 1e3:8.2f}ms {bf16 * 1e3:8.2f}ms {f32 / bf16:13.2f}x")
    if not args.skip_generate:
        f32, tokens = time_generate(args.model, "float32", args.prompts, args.max_new_tokens)
        bf16, _ = time_generate(args.model, "bfloat16", args.prompts, args.max_new_tokens)
        print(f"{'generate ' + str(args.prompts) + 'x' + str(args.max_new_tokens) + ' greedy':<28} "
              f"{f32:6.1f}tok/s {bf16:6.1f}tok/s {bf16 / f32:13.2f}x   ({args.model}, {tokens} tokens)")


if __name__ == "__main__":
    main()
