"""The `mathloop` command.

  mathloop eval   generate, verify and score a model on benchmarks (resumable run folder)
  mathloop grade  re-grade samples produced elsewhere (mathloop's or the official harness's output)
  mathloop compare  paired comparison of two runs (delta with interval, McNemar p) on their shared problems
  mathloop exec   run one Python file in the sandbox that TIR uses, print a JSON result
  mathloop rm     reward model: `rm train` trains one on graded samples (resumable run folder)
  mathloop score  add reward-model scores (rm_score) to samples
  mathloop sample sample graded responses to training problems (several temperatures, resumable, shardable)
  mathloop select pick the best responses per problem (RM score, majority pseudo-labels) as SFT chat rows
  mathloop loop   self-improvement rounds from a YAML config (sample, RM, select, SFT, eval, GRPO)
  mathloop grpo   reinforcement learning with GRPO (resumable run folder)
  mathloop sft    supervised fine-tuning on prompt-completion chat rows with TRL (resumable run folder)
  mathloop synthesize  new problems evolved from seed problems, answered by majority vote (resumable)
  mathloop demo   one round of the loop on the embedded model, before/after accuracy
  mathloop data   the benchmark data: `data list` (sources, versions, licences), `data pull` (harness layout)
  mathloop report one self-contained HTML page of runs: metrics, comparison, plots, sample browser
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing

from mathloop import __version__
from mathloop.records import RecordError
from mathloop.runs import RunLockedError

# Errors a user can cause (a bad file, flag, setting or path, a folder in use): one line and exit code 2.
USER_ERRORS = (RecordError, ValueError, OSError, ImportError, RunLockedError)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: `mathloop <command>: error: ...`."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _temperatures(text: str) -> list[float]:
    """argparse type: comma-separated temperatures >= 0, at least one."""
    try:
        values = [float(part) for part in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.7,1.0, got {text!r}") from None
    if not values or any(not t >= 0 for t in values):
        raise argparse.ArgumentTypeError(f"expected one or more temperatures >= 0, got {text!r}")
    return values


def _error_line(e: BaseException) -> str:
    """The one line a user sees for `e`: an OSError names its path first; other messages are joined onto one line."""
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def _settings_from_args(args: argparse.Namespace, names: tuple[str, ...], module, hint: str):
    """A training command's settings: --config's YAML (when given) with the flags in `names` on top."""
    overrides = {name: getattr(args, name) for name in names}
    if args.config:
        return module.load_config(args.config, overrides)
    return module.config_from_dict({}, overrides, source=f"command line ({hint})")


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


def add_sampler_arguments(p: argparse.ArgumentParser) -> None:
    """A flag for every `SamplerOptions` field (--top-k, ...), for eval, sample and grpo; unset flags leave the
    stage's default (or its YAML value) alone."""
    from mathloop.backends.base import SamplerOptions

    for f in dataclasses.fields(SamplerOptions):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                       help=f.metadata["help"])


def _sampler_options(args: argparse.Namespace) -> dict:
    """The `SamplerOptions` flags given on the command line, by field name."""
    from mathloop.backends.base import SAMPLER_OPTIONS

    return {name: getattr(args, name) for name in SAMPLER_OPTIONS if getattr(args, name) is not None}


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    """The generation backend flags shared by eval, sample and synthesize (read by `_backend_args`)."""
    p.add_argument("--backend", choices=["hf", "openai", "vllm"], default="hf",
                   help="hf = transformers (CPU/GPU), openai = any OpenAI-compatible server, vllm = local vLLM")
    p.add_argument("--batch-size", type=int, default=32, help="hf: sequences per forward batch (default: %(default)s)")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="model dtype; auto (the default) is bfloat16 where the device computes it natively, else float32")
    p.add_argument("--base-url", default=None, help="openai: server URL, e.g. http://localhost:8000/v1")
    p.add_argument("--tokenizer", default=None, help="openai: tokenizer folder or id for the chat template")
    p.add_argument("--concurrency", type=int, default=32, help="openai: parallel requests (default: %(default)s)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs per model (default: %(default)s)")


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
    p.add_argument("--tool-timeout", type=_positive_float, default=5.0, help="tir: seconds per execution (default: 5)")
    p.add_argument("--n", type=_positive_int, default=1, help="samples per problem (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: %(default)s)")
    add_sampler_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=2048, help="per response (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="first N problems of each benchmark (default: all)")
    p.add_argument("--split", default="test", help="data split (default: %(default)s)")
    p.add_argument("--shots", type=int, default=None,
                   help="few-shot examples for multiple-choice sets (default: the official setting, 5 for MC sets)")
    p.add_argument("--data-dir", default=None,
                   help="benchmark folder in the official harness layout (default: $MATHLOOP_DATA_DIR); sets it "
                        "lacks come from the data packaged with mathloop")
    p.add_argument("--data-source", choices=["local", "hub"], default="local",
                   help="local = --data-dir, else the packaged data; hub = the Hugging Face Hub (pip install "
                        "'mathloop[hub]') (default: %(default)s)")
    p.add_argument("--out", required=True, help="run folder (created; resumed when it exists)")
    add_backend_arguments(p)
    p.add_argument("--rm", default=None,
                   help="reward model (a `mathloop rm train` final/ folder or Hub id): scores every sample and "
                        "adds RM@k (best-of-k by RM score) next to Maj@k and pass@k; may be added to a finished run")
    p.add_argument("--rm-batch-size", type=int, default=8, help="reward model: sequences per forward pass")
    p.add_argument("--rm-dtype", default=None,
                   help="reward model dtype (default: bfloat16 where the device computes it natively, else float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_eval(args: argparse.Namespace) -> int:
    from mathloop.pipeline.evaluate import EvalConfig, run_eval

    config = EvalConfig(model=args.model, benchmarks=args.benchmarks, out=args.out, backend=args.backend,
                        mode=args.mode, n=args.n, temperature=args.temperature, top_p=args.top_p,
                        max_new_tokens=args.max_new_tokens, seed=args.seed, limit=args.limit,
                        data_dir=args.data_dir, data_source=args.data_source, split=args.split, shots=args.shots,
                        max_tool_calls=args.max_tool_calls, tool_timeout=args.tool_timeout,
                        backend_args=_backend_args(args), rm=args.rm, rm_batch_size=args.rm_batch_size,
                        rm_dtype=args.rm_dtype, **_sampler_options(args))
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
    p.add_argument("--workers", type=_positive_int, default=None, help="verifier processes (default: all cores)")
    p.add_argument("--timeout", type=_positive_float, default=5.0, help="seconds per comparison (default: %(default)s)")


def cmd_grade(args: argparse.Namespace) -> int:
    from mathloop.pipeline.grade import grade_file

    metrics = grade_file(args.input, args.output, args.metrics, answer_type=args.answer_type,
                         workers=args.workers, timeout=args.timeout)
    print(json.dumps(metrics, indent=2))
    return 0


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    from mathloop.pipeline import compare

    p = sub.add_parser("compare", help="paired comparison of two runs on the problems both have",
                       description=compare.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="reference run: eval folder, LOOP_DIR:<round> (or LOOP_DIR:grpo), or graded JSONL file")
    p.add_argument("b", help="the run compared with it, in the same forms; differences are B - A")
    p.add_argument("--out", default=None, help="write the Markdown here instead of printing it")
    p.add_argument("--json", default=None, help="also write the comparison as JSON here")
    p.add_argument("--resamples", type=int, default=compare.BOOTSTRAP_RESAMPLES,
                   help="bootstrap resamples for runs with several samples per problem (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")


def cmd_compare(args: argparse.Namespace) -> int:
    from mathloop.pipeline.compare import compare_runs, write_comparison

    result, markdown = compare_runs(args.a, args.b, resamples=args.resamples, seed=args.seed)
    write_comparison(result, markdown, args.out, args.json)
    if not args.out:
        print(markdown, end="")
    return 0


def add_exec_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("exec", help="run a Python file in the TIR sandbox", description=(
        "Run FILE in the sandbox the TIR loop uses (no network, read-only file system, private temporary folder, "
        "memory and time limits) and print a JSON result {status, stdout, error, seconds}. "
        "Exit code 0 when status is ok, else 1."))
    p.add_argument("file", help="Python file to run")
    p.add_argument("--timeout", type=_positive_float, default=5.0, help="wall-clock seconds (default: %(default)s)")
    p.add_argument("--memory-mb", type=int, default=1024,
                   help="memory the program may allocate beyond the preloaded interpreter (default: %(default)s)")


def cmd_exec(args: argparse.Namespace) -> int:
    from mathloop.tools.sandbox import Sandbox

    with open(args.file, "rb") as f:
        data = f.read()
    try:
        code = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{args.file}: not UTF-8 text (byte {e.start}); save the program as UTF-8") from None
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
    t.add_argument("--lora-layers", type=int, default=None,
                   help="LoRA in the last N transformer layers only; the rest runs without backward (default: all)")
    t.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute activations in the backward pass to save memory")
    t.add_argument("--dtype", default=None, help="backbone weights dtype (default: bfloat16 on GPU, float32 on CPU; forward "
                   "passes run in bfloat16 autocast where the device computes it natively)")
    t.add_argument("--eval-every", type=int, default=None,
                   help="held-out evaluation every N steps (default: at the end)")
    t.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (default: at the end)")
    t.add_argument("--seed", type=int, default=None, help="data order, splits and head init (default: 0)")
    t.add_argument("--report-to", type=_csv, default=None,
                   help="also log metrics to tensorboard and/or wandb, comma-separated (<output-dir>/tensorboard; "
                        "pip install 'mathloop[tensorboard]')")


def cmd_rm(args: argparse.Namespace) -> int:
    from mathloop.train import rm

    names = ("model", "samples", "fill_samples", "decontaminate", "data_dir", "output_dir", "group_size", "max_ratio",
             "heldout_fraction", "learning_rate", "warmup_steps", "epochs", "groups_per_batch",
             "micro_batch_groups", "max_length", "lora", "lora_rank", "lora_layers", "gradient_checkpointing", "dtype",
             "eval_every", "save_every", "report_to", "seed")
    config = _settings_from_args(args, names, rm, "use --samples and --output-dir")
    print(json.dumps(rm.train(config), indent=2))
    return 0


def add_score_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="add reward-model scores to samples", description=(
        "Score every sample of --input with a reward model and write the samples, with rm_score set, to --output. "
        "--rm is a folder written by `mathloop rm train` (its final/ folder), an AutoModelForSequenceClassification "
        "reward model, or a Qwen2.5-Math-RM-style checkpoint (those read the question from each sample's question)."))
    p.add_argument("--rm", required=True, help="reward model folder or Hugging Face Hub id")
    p.add_argument("--input", required=True, help="sample JSONL file")
    p.add_argument("--output", required=True, help="JSONL file to write (may equal --input)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=4096,
                   help="tokens per prompt + response; longer ones keep their end (default: %(default)s)")
    p.add_argument("--dtype", default=None, help="model dtype (default: bfloat16 where the device computes it natively, "
                   "else float32)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def cmd_score(args: argparse.Namespace) -> int:
    from mathloop.reward.score import score_file

    n = score_file(args.rm, args.input, args.output, batch_size=args.batch_size, max_length=args.max_length,
                   dtype=args.dtype, device=args.device)
    print(f"scored {n} samples -> {args.output}")
    return 0


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample graded responses to training problems", description=(
        "Sample --n responses per problem at each of --temperatures (one pass each), grade them, and write them "
        "to --out/samples/. Re-running the same command resumes; --shard/--num-shards split the problems over "
        "processes or machines writing into one folder."))
    p.add_argument("--model", default="default", help="embedded name (default, smollm2), folder or Hub id")
    p.add_argument("--problems", required=True,
                   help="'<benchmark>:<split>' from the data folder (e.g. gsm8k:train), 'synthetic:<count>:<seed>' "
                        "(built-in procedural problems) or a Problem JSONL file")
    p.add_argument("--out", required=True, help="sampling folder (created; resumed when it exists)")
    p.add_argument("--n", type=_positive_int, default=8, help="responses per problem per temperature (default: 8)")
    p.add_argument("--temperatures", type=_temperatures, default=[0.7, 1.0],
                   help="comma-separated, one pass each (default: 0.7,1.0)")
    p.add_argument("--top-p", type=float, default=0.95)
    add_sampler_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=2048)
    p.add_argument("--mode", choices=["cot", "tir"], default="cot")
    p.add_argument("--hard-n", type=int, default=0,
                   help="extra responses for problems with at most --hard-max-correct correct ones (default: 0)")
    p.add_argument("--hard-max-correct", type=int, default=0)
    p.add_argument("--hard-temperature", type=float, default=1.0)
    p.add_argument("--limit", type=_positive_int, default=None, help="first N problems")
    p.add_argument("--data-dir", default=None, help="benchmark folder (default: $MATHLOOP_DATA_DIR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", type=int, default=0, help="this process's shard, 0-based (default: 0)")
    p.add_argument("--num-shards", type=_positive_int, default=1, help="processes sharing the folder (default: 1)")
    add_backend_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_sample(args: argparse.Namespace) -> int:
    from mathloop.pipeline.sample import SampleConfig, run_sample

    config = SampleConfig(model=args.model, problems=args.problems, out=args.out, n=args.n,
                          temperatures=args.temperatures, top_p=args.top_p,
                          max_new_tokens=args.max_new_tokens, mode=args.mode, hard_n=args.hard_n,
                          hard_max_correct=args.hard_max_correct, hard_temperature=args.hard_temperature,
                          limit=args.limit, data_dir=args.data_dir, seed=args.seed, shard=args.shard,
                          num_shards=args.num_shards, backend=args.backend, backend_args=_backend_args(args),
                          **_sampler_options(args))
    print(json.dumps(run_sample(config, progress=not args.quiet), indent=2))
    return 0


def add_select_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select", help="pick the best responses per problem as SFT data", description=(
        "Read samples (files, or `mathloop sample` folders), keep up to --k correct responses per problem (best RM "
        "score first when samples have rm_score), pseudo-label problems without a gold answer by majority vote, "
        "drop truncated and near-duplicate responses, optionally remove responses that match a benchmark, and "
        "write prompt-completion chat rows for `mathloop sft`."))
    p.add_argument("--samples", type=_csv, required=True, help="comma-separated sample JSONL files or folders")
    p.add_argument("--output", required=True, help="SFT data JSONL to write")
    p.add_argument("--k", type=_positive_int, default=4, help="responses per problem (default: %(default)s)")
    p.add_argument("--no-rm", action="store_true", help="ignore rm_score (order and votes unweighted)")
    p.add_argument("--min-agreement", type=float, default=0.5,
                   help="pseudo-labels: share of votes the majority answer needs (default: %(default)s)")
    p.add_argument("--near-duplicate", type=float, default=0.8,
                   help="word 3-gram Jaccard similarity at which two responses count as one (default: %(default)s)")
    p.add_argument("--decontaminate", action="store_true",
                   help="remove responses and questions that match any benchmark of the data folder")
    p.add_argument("--data-dir", default=None, help="benchmark folder (default: $MATHLOOP_DATA_DIR)")


def cmd_select(args: argparse.Namespace) -> int:
    from mathloop.pipeline.select import read_sample_sources, write_sft_data
    from mathloop.runs import refuse_overwriting_inputs

    refuse_overwriting_inputs({"--output": args.output}, {"--samples": args.samples})
    info = write_sft_data(read_sample_sources(args.samples), args.output, decontaminate=args.decontaminate,
                          data_dir=args.data_dir, k=args.k, use_rm=not args.no_rm, min_agreement=args.min_agreement,
                          near_duplicate=args.near_duplicate)
    print(json.dumps(info, indent=2))
    return 0


def add_loop_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loop", help="run self-improvement rounds from a YAML config", description=(
        "Rounds of sample -> verify -> train RM -> select -> SFT -> evaluate (and GRPO when configured) in one "
        "resumable run folder; see configs/*.yaml. Re-running the same command skips finished stages."))
    p.add_argument("--config", required=True, help="loop YAML file (e.g. configs/cpu-default.yaml)")
    p.add_argument("--output-dir", default=None, help="override the config's output_dir")
    p.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    p.add_argument("--data-dir", default=None, help="benchmark folder (default: $MATHLOOP_DATA_DIR)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_loop(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mathloop.pipeline.loop import load_loop_config, run_loop

    config = load_loop_config(args.config, {"output_dir": args.output_dir, "rounds": args.rounds,
                                            "data_dir": args.data_dir})
    run_loop(config, progress=not args.quiet)
    print((Path(config.output_dir) / "summary.md").read_text())
    return 0


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    from mathloop.pipeline import demo

    p = sub.add_parser("demo", help="one round of the loop on the embedded model (under 20 min on a laptop CPU)",
                       description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="mathloop-demo", help="run folder (default: %(default)s; resumed when it exists)")
    p.add_argument("--model", default="default", help="starting model (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_demo(args: argparse.Namespace) -> int:
    from mathloop.pipeline.demo import run_demo

    print(run_demo(args.out, model=args.model, progress=not args.quiet))
    return 0


def add_grpo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grpo", help="reinforcement learning of a policy with GRPO", description=(
        "Roll out groups of responses per query from the policy being trained (CoT, or TIR with the sandbox), grade "
        "them, reward them (default: the paper's shaped reward from verifier and reward model), and update the "
        "policy with GRPO. Settings come from --config (YAML, keys are GRPOConfig fields, flags with underscores) "
        "and flags, flags winning. Re-running with the same --output-dir resumes from the latest checkpoint. The "
        "trained model is written to <output-dir>/final."))
    p.add_argument("--config", default=None, help="YAML file of settings (GRPOConfig fields)")
    p.add_argument("--model", default=None,
                   help="policy: 'default' (embedded Qwen2.5-Coder-0.5B-Instruct), a local folder or a Hub id "
                        "(default: default)")
    p.add_argument("--output-dir", default=None, help="run folder (created; resumed when it holds checkpoints)")
    p.add_argument("--queries", default=None, help="problems JSONL to train on (question, gold)")
    p.add_argument("--benchmark", default=None, help="or a benchmark's split as the queries, e.g. gsm8k")
    p.add_argument("--split", default=None, help="split of --benchmark (default: train)")
    p.add_argument("--data-dir", default=None, help="benchmark folder (default: $MATHLOOP_DATA_DIR)")
    p.add_argument("--selection-samples", default=None,
                   help="graded samples JSONL: keep only queries with 2..5 of 8 samples correct")
    p.add_argument("--mode", choices=["cot", "tir"], default=None,
                   help="cot = chain of thought; tir = the model's Python runs in the sandbox (default: cot)")
    p.add_argument("--reward", default=None,
                   help="shaped (verifier + reward model), verifier, rm, or module.path:function with TRL's reward "
                        "signature (default: shaped)")
    p.add_argument("--rm", default=None, help="reward model folder (`mathloop rm train`) or Hub id")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps in all (default: 100)")
    p.add_argument("--group-size", type=int, default=None, help="responses per query (default: 8)")
    p.add_argument("--queries-per-step", type=int, default=None, help="queries per step (default: 16)")
    p.add_argument("--learning-rate", "--lr", type=float, default=None,
                   help="AdamW learning rate (default: 1e-6, with --lora 2e-5)")
    p.add_argument("--lora", action="store_true", default=None,
                   help="train LoRA adapters instead of all weights (needs mathloop[train])")
    p.add_argument("--seed", type=int, default=None, help="query order and sampling (default: 0)")
    p.add_argument("--loss-type", choices=["grpo", "dapo", "dr_grpo"], default=None,
                   help="loss aggregation: grpo (per-response token mean), dapo (batch token mean), dr_grpo "
                        "(constant normalizer) (default: grpo)")
    p.add_argument("--scale-rewards", choices=["group", "batch", "none"], default=None,
                   help="divide advantages by the group's reward std, the batch's, or none (default: group)")
    p.add_argument("--dynamic-sampling", action="store_true", default=None,
                   help="drop groups whose rewards are all equal and sample more queries to fill the step (DAPO)")
    p.add_argument("--overlong", choices=["none", "mask", "soft_penalty"], default=None,
                   help="truncated responses: trained as is, masked out of the loss, or DAPO's soft length "
                        "penalty (default: none)")
    p.add_argument("--updates-per-batch", type=int, default=None,
                   help="optimizer steps per rollout batch; > 1 makes the clipped ratio act (default: 1)")
    p.add_argument("--tis-cap", type=float, default=None,
                   help="vllm rollouts: truncated importance sampling pi_old/mu capped at this (e.g. 2)")
    add_sampler_arguments(p)
    p.add_argument("--report-to", type=_csv, default=None,
                   help="also log metrics to tensorboard and/or wandb, comma-separated (<output-dir>/tensorboard; "
                        "pip install 'mathloop[tensorboard]')")


def cmd_grpo(args: argparse.Namespace) -> int:
    from mathloop.backends.base import SAMPLER_OPTIONS
    from mathloop.train import grpo

    names = ("model", "output_dir", "queries", "benchmark", "split", "data_dir", "selection_samples", "mode",
             "reward", "rm", "steps", "group_size", "queries_per_step", "learning_rate", "lora", "report_to", "seed",
             "loss_type", "scale_rewards", "dynamic_sampling", "overlong", "updates_per_batch", "tis_cap",
             *SAMPLER_OPTIONS)
    config = _settings_from_args(args, names, grpo, "use --output-dir and --queries")
    print(json.dumps(grpo.train_grpo(config), indent=2))
    return 0


def add_sft_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning on prompt-completion chat rows (TRL)", description=(
        "Fine-tune a model on a JSONL file of prompt-completion chat rows (`mathloop select` writes them) with "
        "TRL's SFTTrainer; the loss covers the completion only. Settings come from --config (YAML, keys are "
        "SFTRunConfig fields) and flags, flags winning. Re-running with the same --output-dir resumes from the "
        "latest checkpoint; the model is written to <output-dir>/final. Several GPUs: accelerate launch "
        "--config_file configs/accelerate/multi_gpu.yaml -m mathloop.cli sft --config FILE.yaml"))
    p.add_argument("--config", default=None, help="YAML file of settings (SFTRunConfig fields)")
    p.add_argument("--model", default=None,
                   help="starting model: 'default' (embedded Qwen2.5-Coder-0.5B-Instruct), a local folder or a Hub "
                        "id (default: default)")
    p.add_argument("--data", default=None, help="JSONL of {prompt: [messages], completion: [assistant message]}")
    p.add_argument("--output-dir", default=None, help="run folder (created; resumed when it holds checkpoints)")
    p.add_argument("--epochs", type=int, default=None, help="passes over the data (default: 3)")
    p.add_argument("--learning-rate", "--lr", type=float, default=None, help="peak learning rate (default: 2e-5)")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per prompt + completion; longer examples are dropped (default: 4096)")
    p.add_argument("--per-device-batch-size", type=int, default=None, help="examples per device per step (default: 8)")
    p.add_argument("--gradient-accumulation-steps", type=int, default=None,
                   help="micro-batches per optimizer step (default: 16)")
    p.add_argument("--lora", action="store_true", default=None,
                   help="train LoRA adapters instead of all weights; final/ holds the merged model (mathloop[train])")
    p.add_argument("--deepspeed", default=None, help="DeepSpeed JSON config, e.g. configs/deepspeed/zero2.json")
    p.add_argument("--seed", type=int, default=None, help="data order and initialisation (default: 0)")


def cmd_sft(args: argparse.Namespace) -> int:
    from mathloop.train import sft

    names = ("model", "data", "output_dir", "epochs", "learning_rate", "max_length", "per_device_batch_size",
             "gradient_accumulation_steps", "lora", "deepspeed", "seed")
    config = _settings_from_args(args, names, sft, "use --data and --output-dir")
    print(json.dumps(sft.train_sft(config), indent=2))
    return 0


def add_synthesize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synthesize", help="new problems evolved from seed problems", description=(
        "MuggleMath-style problem synthesis: the model rewrites each seed problem into --variants new ones (change "
        "the numbers, add fractions or percentages, add a condition, combine with a concept, ask for another "
        "quantity), answers each new problem --answers times, and keeps those whose majority answer holds at least "
        "--min-agreement of the answers, with that answer as gold. Kept problems go to --out, rejected candidates "
        "with their reasons to <out>.rejected.jsonl; re-running the same command skips the seeds already done."))
    p.add_argument("--model", default="default", help="embedded name (default, smollm2), folder or Hub id")
    p.add_argument("--seeds", required=True,
                   help="'<benchmark>:<split>:<count>' from the data folder (e.g. gsm8k:train:100) or a Problem "
                        "JSONL file")
    p.add_argument("--out", required=True, help="JSONL file of the kept problems (appended; resumed when it exists)")
    p.add_argument("--variants", type=_positive_int, default=2, help="new problems per seed, one operation each (default: 2)")
    p.add_argument("--answers", type=_positive_int, default=4, help="sampled solutions per new problem (default: 4)")
    p.add_argument("--min-agreement", type=float, default=0.5,
                   help="share of the solutions the majority answer needs (default: %(default)s)")
    p.add_argument("--operations", type=_csv, default=None,
                   help="comma-separated subset of change_numbers, fractions_percentages, add_condition, "
                        "combine_concept, change_target (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="per solution (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="operation choice and sampling (default: 0)")
    p.add_argument("--chunk-size", type=_positive_int, default=32,
                   help="seeds per written chunk (default: %(default)s)")
    p.add_argument("--decontaminate", action="store_true",
                   help="reject new problems that match a test item of any benchmark in the data folder")
    p.add_argument("--data-dir", default=None, help="benchmark folder (default: $MATHLOOP_DATA_DIR)")
    add_backend_arguments(p)


def cmd_synthesize(args: argparse.Namespace) -> int:
    from mathloop.data.evolve import run_synthesis, synthesis_config

    config = synthesis_config(variants_per_seed=args.variants, n_answers=args.answers,
                              min_agreement=args.min_agreement, seed=args.seed, operations=args.operations,
                              max_new_tokens=args.max_new_tokens)
    print(json.dumps(run_synthesis(args.model, args.seeds, args.out, config, backend=args.backend,
                                   backend_args=_backend_args(args), decontaminate=args.decontaminate,
                                   data_dir=args.data_dir, chunk_size=args.chunk_size), indent=2))
    return 0


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list or pull the benchmark data", description=(
        "Benchmarks are read from --data-dir / $MATHLOOP_DATA_DIR when given, else from the test sets packaged with "
        "mathloop (those whose licence allows it), else not at all; `--data-source hub` reads the Hub instead."))
    actions = p.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("list", help="each benchmark: where it is read from, version, rows, licence")
    ls.add_argument("--data-dir", default=None, help="benchmark folder (default: $MATHLOOP_DATA_DIR)")
    pull = actions.add_parser("pull", help="write benchmarks in the harness layout (<out>/<name>/<split>.jsonl)",
                              description="From the data folder or the packaged data, else from the Hugging Face "
                                          "Hub (pip install 'mathloop[hub]', network) where a Hub copy is registered.")
    pull.add_argument("--out", required=True, help="folder to write (created; files are replaced)")
    pull.add_argument("--benchmarks", type=_csv, default=None,
                      help="comma-separated names, or 'all' (default: every packaged benchmark)")
    pull.add_argument("--data-dir", default=None, help="benchmark folder to copy from (default: $MATHLOOP_DATA_DIR)")


def cmd_data(args: argparse.Namespace) -> int:
    from mathloop.data.benchmarks import BENCHMARKS, list_benchmarks, pull_benchmarks

    if args.action == "list":
        rows = list_benchmarks(args.data_dir)
        print(f"{'benchmark':<18} {'split':<6} {'rows':>5}  {'source':<34} {'version':<36} licence")
        for r in rows:
            print(f"{r['benchmark']:<18} {r['split']:<6} {r['rows'] or '':>5}  {r['source']:<34} {r['version']:<36} "
                  f"{r['licence']}")
        return 0
    names = list(BENCHMARKS) if args.benchmarks == ["all"] else args.benchmarks
    for file, what in pull_benchmarks(args.out, names, args.data_dir).items():
        print(f"{args.out}/{file}: {what}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mathloop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug information")
    parser.add_argument("--version", action="version", version=f"mathloop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(sub)
    add_grade_parser(sub)
    add_compare_parser(sub)
    add_exec_parser(sub)
    add_rm_parser(sub)
    add_score_parser(sub)
    add_sample_parser(sub)
    add_select_parser(sub)
    add_loop_parser(sub)
    add_demo_parser(sub)
    add_grpo_parser(sub)
    add_sft_parser(sub)
    add_synthesize_parser(sub)
    add_data_parser(sub)
    add_report_parser(sub)
    return parser


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    from mathloop import report

    p = sub.add_parser("report", help="one self-contained HTML page of runs (plots, tables, sample browser)",
                       description=report.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="eval folder, loop folder, rm/sft/grpo output folder, or graded JSONL file; several are shown "
                        "side by side and paired with the first")
    p.add_argument("--out", default="report.html", help="HTML file to write (default: %(default)s)")
    p.add_argument("--title", default=None, help="page title (default: the run names)")


def cmd_report(args: argparse.Namespace) -> int:
    from mathloop.report import build_report

    print(json.dumps(build_report(args.runs, args.out, title=args.title)))
    return 0


COMMANDS = {"eval": cmd_eval, "grade": cmd_grade, "compare": cmd_compare, "exec": cmd_exec, "rm": cmd_rm, "score": cmd_score,
            "sample": cmd_sample, "select": cmd_select, "loop": cmd_loop, "demo": cmd_demo, "grpo": cmd_grpo,
            "sft": cmd_sft, "synthesize": cmd_synthesize, "data": cmd_data,
            "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as e:
        print(f"mathloop {args.command}: error: {_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mathloop {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
