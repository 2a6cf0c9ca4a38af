"""The `mathloop` command.

  mathloop eval   generate, verify and score a model on benchmarks (resumable run folder)
  mathloop grade  re-grade samples produced elsewhere (mathloop's or the official harness's output)
  mathloop exec   run one Python file in the sandbox that TIR uses, print a JSON result
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from mathloop.records import RecordError


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _backend_args(args: argparse.Namespace) -> dict:
    if args.backend == "hf":
        return {"batch_size": args.batch_size, **({"dtype": args.dtype} if args.dtype else {})}
    if args.backend == "openai":
        if not args.base_url:
            raise SystemExit("mathloop eval: --backend openai needs --base-url (e.g. http://localhost:8000/v1)")
        return {"base_url": args.base_url, "concurrency": args.concurrency,
                **({"tokenizer": args.tokenizer} if args.tokenizer else {})}
    if args.backend == "vllm":
        return {"tensor_parallel_size": args.tensor_parallel_size, **({"dtype": args.dtype} if args.dtype else {})}
    return {}


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on benchmarks", description=(
        "Generate solutions, extract and verify answers, and write samples, metrics.json and results.md to --out. "
        "Re-running with the same --out resumes and skips finished problems."))
    p.add_argument("--model", default="default",
                   help="'default' (embedded Qwen2.5-Coder-0.5B-Instruct), 'smollm2' (embedded SmolLM2-135M-Instruct), "
                        "a local folder or .gguf file, or a Hugging Face Hub id (default: %(default)s)")
    p.add_argument("--benchmarks", type=_csv, default=["gsm8k"],
                   help="comma-separated benchmark names, e.g. gsm8k,math500 (default: gsm8k)")
    p.add_argument("--mode", choices=["cot", "tir"], default="cot",
                   help="cot = chain of thought; tir = tool-integrated reasoning, the model's Python runs in the "
                        "sandbox (default: %(default)s)")
    p.add_argument("--max-tool-calls", type=int, default=4, help="tir: code executions per response (default: 4)")
    p.add_argument("--tool-timeout", type=float, default=5.0, help="tir: seconds per execution (default: 5)")
    p.add_argument("--n", type=int, default=1, help="samples per problem (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=2048, help="per response (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark (default: all)")
    p.add_argument("--split", default="test", help="data split (default: %(default)s)")
    p.add_argument("--shots", type=int, default=None,
                   help="few-shot examples for multiple-choice sets (default: the official setting, 5 for MC sets)")
    p.add_argument("--data-dir", default=None,
                   help="benchmark folder in the official harness layout (default: $MATHLOOP_DATA_DIR)")
    p.add_argument("--out", required=True, help="run folder (created; resumed when it exists)")
    p.add_argument("--backend", choices=["hf", "openai", "vllm"], default="hf",
                   help="hf = transformers (CPU/GPU), openai = any OpenAI-compatible server, vllm = local vLLM")
    p.add_argument("--batch-size", type=int, default=32, help="hf: sequences per forward batch (default: %(default)s)")
    p.add_argument("--dtype", default=None, help="model dtype, e.g. bfloat16 or float32 (default: bfloat16)")
    p.add_argument("--base-url", default=None, help="openai: server URL, e.g. http://localhost:8000/v1")
    p.add_argument("--tokenizer", default=None, help="openai: tokenizer folder or id for the chat template")
    p.add_argument("--concurrency", type=int, default=32, help="openai: parallel requests (default: %(default)s)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs per model (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_eval(args: argparse.Namespace) -> int:
    from mathloop.pipeline.evaluate import EvalConfig, run_eval

    config = EvalConfig(model=args.model, benchmarks=args.benchmarks, out=args.out, backend=args.backend,
                        mode=args.mode, n=args.n, temperature=args.temperature, top_p=args.top_p,
                        max_new_tokens=args.max_new_tokens, seed=args.seed, limit=args.limit,
                        data_dir=args.data_dir, split=args.split, shots=args.shots,
                        max_tool_calls=args.max_tool_calls, tool_timeout=args.tool_timeout,
                        backend_args=_backend_args(args))
    run_eval(config, progress=not args.quiet)
    print((__import__("pathlib").Path(args.out) / "results.md").read_text())
    return 0


def add_grade_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grade", help="re-grade samples produced elsewhere", description=(
        "Read mathloop samples or the official Qwen2.5-Math harness's output rows (question, gt, code, pred_score), "
        "write every row back with a 'mathloop' field {preds, verdicts}, and write acc/maj@k/rm@k/pass@k."))
    p.add_argument("--input", required=True, help="JSONL file to grade")
    p.add_argument("--output", required=True, help="JSONL file to write (input rows + 'mathloop' field)")
    p.add_argument("--metrics", default=None, help="JSON file for the metrics (default: printed only)")
    p.add_argument("--answer-type", choices=["math", "mc", "list"], default=None,
                   help="force the answer type (default: per row; letters as gold mean multiple choice)")
    p.add_argument("--workers", type=int, default=None, help="verifier processes (default: all cores)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per comparison (default: %(default)s)")


def cmd_grade(args: argparse.Namespace) -> int:
    from mathloop.pipeline.grade import grade_file

    metrics = grade_file(args.input, args.output, args.metrics, answer_type=args.answer_type,
                         workers=args.workers, timeout=args.timeout)
    print(json.dumps(metrics, indent=2))
    return 0


def add_exec_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("exec", help="run a Python file in the TIR sandbox", description=(
        "Run FILE in the sandbox the TIR loop uses (no network, read-only file system, private temporary folder, "
        "memory and time limits) and print a JSON result {status, stdout, error, seconds}. "
        "Exit code 0 when status is ok, else 1."))
    p.add_argument("file", help="Python file to run")
    p.add_argument("--timeout", type=float, default=5.0, help="wall-clock seconds (default: %(default)s)")
    p.add_argument("--memory-mb", type=int, default=1024,
                   help="memory the program may allocate beyond the preloaded interpreter (default: %(default)s)")


def cmd_exec(args: argparse.Namespace) -> int:
    import dataclasses

    from mathloop.tools.sandbox import Sandbox

    with open(args.file, encoding="utf-8") as f:
        code = f.read()
    with Sandbox(workers=1, timeout=args.timeout, memory_mb=args.memory_mb) as sandbox:
        result = sandbox.run(code)
    print(json.dumps(dataclasses.asdict(result)))
    return 0 if result.status == "ok" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mathloop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug information")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(sub)
    add_grade_parser(sub)
    add_exec_parser(sub)
    return parser


COMMANDS = {"eval": cmd_eval, "grade": cmd_grade, "exec": cmd_exec}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (RecordError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"mathloop {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mathloop {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
