"""The `mathloop` command.

  mathloop eval   generate, verify and score a model on benchmarks (resumable run folder)
  mathloop grade  re-grade samples produced elsewhere (mathloop's or the official harness's output)
  mathloop exec   run one Python file in the sandbox that TIR uses, print a JSON result
  mathloop rm     reward model: `rm train` trains one on graded samples (resumable run folder)
  mathloop score  add reward-model scores (rm_score) to samples
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


def add_rm_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rm", help="train a reward model", description="Reward-model commands.")
    actions = p.add_subparsers(dest="rm_command", required=True)
    t = actions.add_parser("train", help="train a reward model on graded samples", description=(
        "Group graded samples per problem (correct = positive), drop all-correct/all-wrong problems, balance the "
        "labels, and train a scalar-head reward model with the listwise ranking loss. Settings come from --config "
        "(YAML, keys as the flags with underscores) and flags, flags winning. Re-running with the same --output-dir "
        "resumes from the latest checkpoint. The model is written to <output-dir>/final."))
    t.add_argument("--config", default=None, help="YAML file of settings (RMTrainConfig fields)")
    t.add_argument("--model", default=None,
                   help="backbone: 'default' (embedded Qwen2.5-Coder-0.5B-Instruct), a local folder or a Hub id "
                        "(default: default)")
    t.add_argument("--samples", type=_csv, default=None,
                   help="comma-separated graded sample JSONL files; responses of several files are mixed per problem")
    t.add_argument("--fill-samples", type=_csv, default=None,
                   help="comma-separated sample files of other models, used only to complete the short label side")
    t.add_argument("--decontaminate", type=_csv, default=None,
                   help="comma-separated benchmark names whose test questions are removed (13-gram + LCS rule)")
    t.add_argument("--data-dir", default=None,
                   help="benchmark folder for --decontaminate (default: $MATHLOOP_DATA_DIR)")
    t.add_argument("--output-dir", default=None, help="run folder (created; resumed when it holds checkpoints)")
    t.add_argument("--group-size", type=int, default=None, help="responses per problem (default: 6)")
    t.add_argument("--max-ratio", type=float, default=None,
                   help="majority label at most this times the minority label in a group (default: 2)")
    t.add_argument("--heldout-fraction", type=float, default=None,
                   help="fraction of problems held out for pairwise accuracy (default: 0.05)")
    t.add_argument("--learning-rate", "--lr", type=float, default=None, help="AdamW learning rate (default: 1e-5)")
    t.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default: 0)")
    t.add_argument("--epochs", type=int, default=None, help="passes over the training groups (default: 1)")
    t.add_argument("--groups-per-batch", type=int, default=None, help="problems per optimizer step (default: 8)")
    t.add_argument("--micro-batch-groups", type=int, default=None,
                   help="problems per forward/backward, gradients accumulated (default: the whole batch)")
    t.add_argument("--max-length", type=int, default=None,
                   help="tokens per prompt + response; longer ones keep their end (default: 2048)")
    t.add_argument("--lora", action="store_true", default=None,
                   help="train LoRA adapters and the head instead of the full backbone (needs mathloop[train])")
    t.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (default: 16)")
    t.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute activations in the backward pass to save memory")
    t.add_argument("--dtype", default=None, help="backbone dtype (default: bfloat16 on GPU, float32 on CPU)")
    t.add_argument("--eval-every", type=int, default=None,
                   help="held-out evaluation every N steps (default: at the end)")
    t.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (default: at the end)")
    t.add_argument("--seed", type=int, default=None, help="data order, splits and head init (default: 0)")


def cmd_rm(args: argparse.Namespace) -> int:
    from mathloop.train.rm import config_from_dict, load_config, train

    names = ("model", "samples", "fill_samples", "decontaminate", "data_dir", "output_dir", "group_size", "max_ratio",
             "heldout_fraction", "learning_rate", "warmup_steps", "epochs", "groups_per_batch",
             "micro_batch_groups", "max_length", "lora", "lora_rank", "gradient_checkpointing", "dtype",
             "eval_every", "save_every", "seed")
    overrides = {name: getattr(args, name) for name in names}
    if args.config:
        config = load_config(args.config, overrides)
    else:
        config = config_from_dict({}, overrides, source="command line (use --samples and --output-dir)")
    print(json.dumps(train(config), indent=2))
    return 0


def add_score_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="add reward-model scores to samples", description=(
        "Score every sample of --input with a reward model and write the samples, with rm_score set, to --output. "
        "--rm is a folder written by `mathloop rm train` (its final/ folder), an AutoModelForSequenceClassification "
        "reward model, or a Qwen2.5-Math-RM-style checkpoint (those read the question from metadata.question)."))
    p.add_argument("--rm", required=True, help="reward model folder or Hugging Face Hub id")
    p.add_argument("--input", required=True, help="sample JSONL file")
    p.add_argument("--output", required=True, help="JSONL file to write (may equal --input)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=4096,
                   help="tokens per prompt + response; longer ones keep their end (default: %(default)s)")
    p.add_argument("--dtype", default=None, help="model dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def cmd_score(args: argparse.Namespace) -> int:
    from mathloop.reward.score import score_file

    n = score_file(args.rm, args.input, args.output, batch_size=args.batch_size, max_length=args.max_length,
                   dtype=args.dtype, device=args.device)
    print(f"scored {n} samples -> {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mathloop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug information")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(sub)
    add_grade_parser(sub)
    add_exec_parser(sub)
    add_rm_parser(sub)
    add_score_parser(sub)
    return parser


COMMANDS = {"eval": cmd_eval, "grade": cmd_grade, "exec": cmd_exec, "rm": cmd_rm, "score": cmd_score}


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
