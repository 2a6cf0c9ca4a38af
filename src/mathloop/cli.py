"""The `mathloop` command: the stages of the self-improvement loop and the tools around them.

`mathloop COMMAND --help` lists a command's flags; docs/options.md lists every setting of every command."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import sys
import typing
from collections.abc import Callable

from mathloop import __version__
from mathloop.config import positive_float, positive_int
from mathloop.progress import configure_output
from mathloop.records import RecordError
from mathloop.runs import RunLockedError
from mathloop.tools.errors import SandboxUnavailable

# Errors a user can cause (a bad file, flag, setting or path, a folder in use, a host the sandbox cannot confine
# without the opt-in): one line and exit code 2.
USER_ERRORS = (RecordError, ValueError, OSError, ImportError, RunLockedError, SandboxUnavailable)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: `mathloop <command>: error: ...`."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# Modules of optional extras, by the extra that installs them (a ModuleNotFoundError names the install line).
EXTRA_OF_MODULE = {"datasets": "train", "trl": "train", "peft": "train", "ray": "ray", "openvino_genai": "openvino",
                   "vllm": "vllm", "tensorboard": "tensorboard", "wandb": "wandb", "playwright": "browser",
                   "deepspeed": "deepspeed"}


def _error_line(e: BaseException, args: argparse.Namespace | None = None) -> str:
    """The one line a user sees for `e`: an OSError names its path first (a full disk without one names the
    command's output); a missing optional module names the extra that installs it; other messages are joined onto
    one line."""
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = next((getattr(args, name) for name in ("out", "output", "output_dir") if getattr(args, name, None)),
                     None)
        return (f"{where}: " if where else "") + f"{e.strerror}; free space there (or give another output folder) " \
            "and run the same command again to resume"
    if isinstance(e, ModuleNotFoundError) and e.name and e.name.split(".")[0] in EXTRA_OF_MODULE:
        module = e.name.split(".")[0]
        command = getattr(args, "command", None)
        return (f"{module} is not installed{f' (mathloop {command} needs it)' if command else ''}: "
                f"pip install 'mathloop[{EXTRA_OF_MODULE[module]}]'")
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def _print_summary(summary: dict) -> None:
    """A training command's summary, printed once: by rank 0 of an `accelerate launch` (the values are the run's,
    averaged over processes where each process has its own), by the only process otherwise."""
    from mathloop.train.distributed import is_main_process

    if is_main_process():
        print(json.dumps(summary, indent=2))


def _settings(args: argparse.Namespace, cls, **extra):
    """A stage's settings: --config's YAML (when given) with the flags the command line gives on top."""
    from mathloop.config import flag_overrides, load_settings

    return load_settings(cls, args.config, {**flag_overrides(args, cls), **extra})


def with_backend_flags(args: argparse.Namespace, config, command: str):
    """`config` with the backend flags given on the command line added to its `backend_args`."""
    from mathloop.backends import AUTO, choose_backend

    given = {key for keys in BACKEND_FLAGS.values() for key in keys if getattr(args, key) is not None}
    name, why = choose_backend(config.backend)
    wrong = sorted(given - set(BACKEND_FLAGS.get(name, ())))
    if wrong:
        chosen = f" (chosen by --backend auto: {why}; name the backend the flag is for)" if config.backend == AUTO else ""
        raise ValueError(f"--{wrong[0].replace('_', '-')} is not a setting of the {name} backend{chosen}; "
                         f"its flags: {', '.join('--' + k.replace('_', '-') for k in BACKEND_FLAGS[name])}")
    config.backend_args = {**config.backend_args, **{key: getattr(args, key) for key in given}}
    if config.backend == "openai" and not config.backend_args.get("base_url"):
        raise SystemExit(f"mathloop {command}: --backend openai needs --base-url (e.g. http://localhost:8000/v1)")
    return config


# The backend flags of the commands whose settings have `backend_args` (eval, sample, synthesize, corpus qa), per
# backend: each is a key of the stage's `backend_args` (the backend's own default applies when it is not given).
BACKEND_FLAGS = {"hf": ("batch_size", "dtype"), "openai": ("base_url", "tokenizer", "concurrency"),
                 "vllm": ("tensor_parallel_size", "dtype"), "openvino": ("weight_format",)}


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    """The generation backend flags of the commands whose settings have `backend_args` (eval, sample, synthesize,
    corpus qa): each sets a key of `backend_args` (read by `with_backend_flags`); --backend itself is a field."""
    p.add_argument("--batch-size", type=positive_int, default=None, help="hf: sequences per forward batch")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="model dtype; auto (the default) is bfloat16 where the device computes it natively, else float32")
    p.add_argument("--base-url", default=None, help="openai: server URL, e.g. http://localhost:8000/v1 (needed there)")
    p.add_argument("--tokenizer", default=None, help="openai: tokenizer folder or id for the chat template")
    p.add_argument("--concurrency", type=positive_int, default=None, help="openai: parallel requests")
    p.add_argument("--weight-format", default=None, choices=["fp32", "fp16", "int8", "int4"],
                   help="openvino: weights of the export (default fp16)")
    p.add_argument("--tensor-parallel-size", type=positive_int, default=None, help="vllm: GPUs per model")


def add_config_argument(p: argparse.ArgumentParser, cls) -> None:
    """--config, and `cls` as the command's settings: `build_parser` adds a flag for each of its fields that the
    command does not declare by hand (`mathloop.config.add_field_flags`)."""
    p.add_argument("--config", default=None,
                   help=f"YAML file of settings (keys are {cls.__name__} fields); flags override it")
    p.settings_class = cls


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    from mathloop.pipeline.evaluate import EvalConfig

    p.description = (
        "Generate solutions, extract and verify answers, and write samples, metrics.json, results.md and "
        "results.json (lm-evaluation-harness layout) to --out. "
        "Re-running with the same --out resumes and skips finished problems.")
    add_config_argument(p, EvalConfig)


def cmd_eval(args: argparse.Namespace) -> int:
    from mathloop.pipeline.evaluate import EvalConfig, run_eval

    config = with_backend_flags(args, _settings(args, EvalConfig), "eval")
    run_eval(config, progress=not args.quiet)
    print((__import__("pathlib").Path(config.out) / "results.md").read_text())
    return 0


def add_grade_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Read mathloop samples or the official Qwen2.5-Math harness's output rows (question, gt, code, pred_score), "
        "write every row back with a 'mathloop' field {preds, verdicts}, and write acc/maj@k/rm@k/pass@k.")
    p.add_argument("--input", required=True, help="JSONL file to grade")
    p.add_argument("--output", required=True, help="JSONL file to write (input rows + 'mathloop' field)")
    p.add_argument("--metrics", default=None, help="JSON file for the metrics, in the layout and scale of eval's "
                   "metrics.json (docs/metrics.md; default: printed only)")
    p.add_argument("--answer-type", choices=["math", "mc", "list"], default=None,
                   help="force the answer type (default: per row; letters as gold mean multiple choice)")
    p.add_argument("--workers", type=positive_int, default=None, help="verifier processes (default: all cores)")
    p.add_argument("--timeout", type=positive_float, default=5.0, help="seconds per comparison (default: %(default)s)")


def cmd_grade(args: argparse.Namespace) -> int:
    from mathloop.pipeline.grade import format_metrics, grade_file

    metrics = grade_file(args.input, args.output, args.metrics, answer_type=args.answer_type,
                         workers=args.workers, timeout=args.timeout)
    print(f"# mathloop grade: {args.input}\n\n{format_metrics(metrics)}\n\npercent, 95% interval in brackets (the "
          f"metrics file holds fractions); graded rows -> {args.output}"
          + (f"; metrics -> {args.metrics}" if args.metrics else ""))
    return 0


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    from mathloop.pipeline import compare

    p.description = compare.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("a", help="reference run: eval folder, LOOP_DIR:<round> (or LOOP_DIR:grpo), or graded JSONL file")
    p.add_argument("b", help="the run compared with it, in the same forms; differences are B - A")
    p.add_argument("--out", default=None, help="write the Markdown here instead of printing it")
    p.add_argument("--json", default=None, help="also write the comparison as JSON here")
    p.add_argument("--resamples", type=positive_int, default=compare.BOOTSTRAP_RESAMPLES,
                   help="bootstrap resamples for runs with several samples per problem (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")


def cmd_compare(args: argparse.Namespace) -> int:
    from mathloop.pipeline.compare import compare_runs, write_comparison

    result, markdown = compare_runs(args.a, args.b, resamples=args.resamples, seed=args.seed)
    write_comparison(result, markdown, args.out, args.json)
    if not args.out:
        print(markdown, end="")
    return 0


def add_exec_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run FILE in the sandbox the TIR loop uses (no network, read-only file system, private temporary folder, "
        "memory and time limits) and print a JSON result {status, stdout, error, seconds}. "
        "Exit code 0 when status is ok, else 1.")
    p.add_argument("file", help="Python file to run")
    p.add_argument("--timeout", type=positive_float, default=5.0, help="wall-clock seconds (default: %(default)s)")
    p.add_argument("--memory-mb", type=int, default=1024,
                   help="memory the program may allocate beyond the preloaded interpreter (default: %(default)s)")
    p.add_argument("--unsafe-sandbox-file-access", action="store_true",
                   help="where this host offers neither user namespaces nor Landlock, run FILE anyway; it can then "
                        "read and write every file you can (see docs/sandbox.md)")


def cmd_exec(args: argparse.Namespace) -> int:
    from mathloop.tools.sandbox import Sandbox

    with open(args.file, "rb") as f:
        data = f.read()
    try:
        code = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{args.file}: not UTF-8 text (byte {e.start}); save the program as UTF-8") from None
    with Sandbox(workers=1, timeout=args.timeout, memory_mb=args.memory_mb,
                 unsafe_file_access=args.unsafe_sandbox_file_access) as sandbox:
        result = sandbox.run(code)
    print(json.dumps(dataclasses.asdict(result)))
    return 0 if result.status == "ok" else 1


def add_rm_arguments(p: argparse.ArgumentParser) -> None:
    from mathloop.train.rm import RMTrainConfig

    p.description = "Reward-model commands."
    actions = p.add_subparsers(dest="rm_command", required=True)
    t = actions.add_parser("train", help="train a reward model on graded samples", description=(
        "Group graded samples per problem (correct = positive), drop all-correct/all-wrong problems, balance the "
        "labels, and train a scalar-head reward model with the listwise ranking loss. Settings come from --config "
        "(YAML, keys as the flags with underscores) and flags, flags winning. Re-running with the same --output-dir "
        "resumes from the latest checkpoint. The model is written to <output-dir>/final."))
    add_config_argument(t, RMTrainConfig)


def cmd_rm(args: argparse.Namespace) -> int:
    from mathloop.train import rm

    _print_summary(rm.train(_settings(args, rm.RMTrainConfig)))
    return 0


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Score every sample of --input with a reward model and write the samples, with rm_score set, to --output. "
        "--rm is a folder written by `mathloop rm train` (its final/ folder), an AutoModelForSequenceClassification "
        "reward model, or a Qwen2.5-Math-RM-style checkpoint (those read the question from metadata.question).")
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


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    from mathloop.pipeline.sample import SampleConfig

    p.description = (
        "Sample --n responses per problem at each of --temperatures (one pass each), grade them, and write them "
        "to --out/samples/. Re-running the same command resumes; --shard/--num-shards split the problems over "
        "processes or machines writing into one folder.")
    add_config_argument(p, SampleConfig)


def cmd_sample(args: argparse.Namespace) -> int:
    from mathloop.pipeline.sample import SampleConfig, run_sample

    config = with_backend_flags(args, _settings(args, SampleConfig), "sample")
    print(json.dumps(run_sample(config, progress=not args.quiet), indent=2))
    return 0


def add_select_arguments(p: argparse.ArgumentParser) -> None:
    from mathloop.pipeline.select import SelectConfig

    p.description = (
        "Read samples (files, or `mathloop sample` folders), keep up to --k correct responses per problem (ranked "
        "by --vote), pseudo-label problems without a gold answer by a vote, "
        "drop truncated and near-duplicate responses, optionally remove responses that match a benchmark, and "
        "write prompt-completion chat rows for `mathloop sft`.")
    add_config_argument(p, SelectConfig)


def cmd_select(args: argparse.Namespace) -> int:
    from mathloop.pipeline.select import SelectConfig, run_select

    print(json.dumps(run_select(_settings(args, SelectConfig)), indent=2))
    return 0


def add_loop_arguments(p: argparse.ArgumentParser) -> None:
    from mathloop.pipeline.loop import LoopConfig

    p.description = (
        "Rounds of sample -> verify -> train RM -> select -> SFT -> evaluate (and GRPO when configured) in one "
        "resumable run folder; see configs/*.yaml. Re-running the same command skips finished stages.")
    p.add_argument("--config", required=True, help="loop YAML file (e.g. configs/cpu-default.yaml)")
    p.settings_class = LoopConfig


def cmd_loop(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mathloop.config import flag_overrides
    from mathloop.pipeline.loop import LoopConfig, load_loop_config, run_loop

    config = load_loop_config(args.config, flag_overrides(args, LoopConfig))
    run_loop(config, progress=not args.quiet)
    print((Path(config.output_dir) / "summary.md").read_text())
    return 0


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    from mathloop.pipeline import demo

    p.description = demo.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--out", default="mathloop-demo", help="run folder (default: %(default)s; resumed when it exists)")
    p.add_argument("--model", default="default", help="starting model (default: %(default)s)")


def cmd_demo(args: argparse.Namespace) -> int:
    from mathloop.pipeline.demo import run_demo

    print(run_demo(args.out, model=args.model, progress=not args.quiet))
    return 0


def add_grpo_arguments(p: argparse.ArgumentParser) -> None:
    from mathloop.train.grpo import GRPOConfig

    p.description = (
        "Roll out groups of responses per query from the policy being trained (CoT, or TIR with the sandbox), grade "
        "them, reward them (default: the paper's shaped reward from verifier and reward model), and update the "
        "policy with GRPO. Settings come from --config (YAML, keys are GRPOConfig fields, flags with underscores) "
        "and flags, flags winning; every field is a YAML key and a flag (docs/options.md). Re-running with the "
        "same --output-dir resumes from the latest checkpoint. The trained model is written to <output-dir>/final.")
    add_config_argument(p, GRPOConfig)


def cmd_grpo(args: argparse.Namespace) -> int:
    from mathloop.train import grpo

    _print_summary(grpo.train_grpo(_settings(args, grpo.GRPOConfig)))
    return 0


def add_sft_arguments(p: argparse.ArgumentParser) -> None:
    from mathloop.train.sft import SFTRunConfig

    p.description = (
        "Fine-tune a model on a JSONL file of prompt-completion chat rows (`mathloop select` writes them) with "
        "TRL's SFTTrainer; the loss covers the completion only. Settings come from --config (YAML, keys are "
        "SFTRunConfig fields) and flags, flags winning. Re-running with the same --output-dir resumes from the "
        "latest checkpoint; the model is written to <output-dir>/final. Several GPUs: accelerate launch "
        "--config_file configs/accelerate/multi_gpu.yaml -m mathloop.cli sft --config FILE.yaml")
    add_config_argument(p, SFTRunConfig)


def cmd_sft(args: argparse.Namespace) -> int:
    from mathloop.train import sft

    _print_summary(sft.train_sft(_settings(args, sft.SFTRunConfig)))
    return 0


def add_interpolate_arguments(p: argparse.ArgumentParser) -> None:
    from mathloop.train import interpolate

    p.description = interpolate.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--base", required=True, help="the starting model: folder, .gguf file or embedded name (default)")
    p.add_argument("--tuned", required=True, help="the fine-tuned model (a folder with the same weights' names)")
    p.add_argument("--alpha", type=float, required=True, help="0 gives the base, 1 the tuned model")
    p.add_argument("--out", required=True, help="folder to write the interpolated model to")


def cmd_interpolate(args: argparse.Namespace) -> int:
    from mathloop.train.interpolate import interpolate_models

    print(json.dumps({"model": str(interpolate_models(args.base, args.tuned, args.alpha, args.out)),
                      "alpha": args.alpha}))
    return 0


def add_synthesize_arguments(p: argparse.ArgumentParser) -> None:
    from mathloop.pipeline.evolve import SynthesizeConfig

    p.description = (
        "MuggleMath-style problem synthesis: the model rewrites each seed problem into --variants new ones (change "
        "the numbers, add fractions or percentages, add a condition, combine with a concept, ask for another "
        "quantity), answers each new problem --answers times, and keeps those whose majority answer holds at least "
        "--min-agreement of the answers, with that answer as gold. Kept problems go to --out, rejected candidates "
        "with their reasons to <out>.rejected.jsonl; re-running the same command skips the seeds already done.")
    add_config_argument(p, SynthesizeConfig)


def cmd_synthesize(args: argparse.Namespace) -> int:
    from mathloop.pipeline.evolve import SynthesizeConfig, run_synthesis

    config = with_backend_flags(args, _settings(args, SynthesizeConfig), "synthesize")
    if not isinstance(config.seeds, str) or not config.out:
        raise ValueError("synthesize: give --seeds (a benchmark split or a Problem JSONL file) and --out")
    print(json.dumps(run_synthesis(config.model, config.seeds, config.out, config.evolution(),
                                   backend=config.backend, backend_args=config.backend_args,
                                   decontaminate=config.decontaminate, data_dir=config.data_dir,
                                   chunk_size=config.chunk_size), indent=2))
    return 0


def add_corpus_arguments(p: argparse.ArgumentParser) -> None:
    from mathloop.corpus.build import CorpusConfig
    from mathloop.corpus.qa import QAConfig

    p.description = (
        "The pre-training half (docs/corpus.md; pip install 'mathloop[corpus]'): `build` recalls math documents from "
        "web data with a fastText classifier and filters them (decontamination, MinHash dedup, quality scores) on "
        "datatrove; `qa` writes question-answer pairs from kept documents; `sample` writes a small labelled web "
        "corpus to try it offline. Continued pre-training: `mathloop sft --data <text rows>`.")
    actions = p.add_subparsers(dest="action", required=True)
    b = actions.add_parser("build", help="build a math corpus from web documents (resumable output folder)",
                           description="See `mathloop.corpus.build`: classifier (with iterative recall), filter "
                                       "(classifier, decontamination), MinHash dedup, quality; stats.json per step.")
    add_config_argument(b, CorpusConfig)
    q = actions.add_parser("qa", help="question-answer pairs from corpus documents, kept when self-consistent",
                           description="See `mathloop.corpus.qa`. Re-running the same command skips done documents.")
    add_config_argument(q, QAConfig)
    t = actions.add_parser("text", help="a built corpus as {\"text\"} rows for continued pre-training (mathloop sft)")
    t.add_argument("--corpus", required=True, help="corpus folder (<build out>/corpus) or JSONL file")
    t.add_argument("--out", required=True, help="JSONL file to write")
    sm = actions.add_parser("sample", help="write a small labelled web corpus (offline tries and tests)")
    sm.add_argument("--out", required=True, help="folder to write (web/, held_out.jsonl, negatives.txt)")
    sm.add_argument("--seed", type=int, default=0, help="random seed")


def cmd_corpus(args: argparse.Namespace) -> int:
    if args.action == "sample":
        from mathloop.corpus.sample import write_sample_corpus

        print(json.dumps(write_sample_corpus(args.out, seed=args.seed), indent=2))
        return 0
    if args.action == "text":
        from mathloop.corpus.qa import read_documents
        from mathloop.records import write_jsonl
        from mathloop.runs import refuse_overwriting_inputs

        refuse_overwriting_inputs({"--out": args.out}, {"--corpus": args.corpus})
        count = write_jsonl(args.out, ({"text": text} for _, text in read_documents(args.corpus)))
        print(json.dumps({"out": args.out, "documents": count}))
        return 0
    if args.action == "qa":
        from mathloop.corpus.qa import QAConfig, run_qa

        config = with_backend_flags(args, _settings(args, QAConfig), "corpus qa")
        print(json.dumps(run_qa(config), indent=2))
        return 0
    from mathloop.corpus.build import CorpusConfig, build_corpus, stats_markdown

    stats = build_corpus(_settings(args, CorpusConfig))
    print(stats_markdown(stats) if "steps" in stats else json.dumps(stats))
    return 0


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Benchmarks are read from --data-dir / $MATHLOOP_DATA_DIR when given, else from the test sets packaged with "
        "mathloop (those whose licence allows it), else not at all; `--data-source hub` reads the Hub instead.")
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
    from mathloop.data.benchmarks import BENCHMARKS
    from mathloop.data.benchmarks import list_benchmarks, pull_benchmarks

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


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    from mathloop import report

    p.description = report.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="eval folder, loop folder, rm/sft/grpo output folder, or graded JSONL file; several are shown "
                        "side by side and paired with the first")
    p.add_argument("--out", default="report.html", help="HTML file to write (default: %(default)s)")
    p.add_argument("--title", default=None, help="page title (default: the run names)")


def cmd_report(args: argparse.Namespace) -> int:
    from mathloop.report import build_report

    print(json.dumps(build_report(args.runs, args.out, title=args.title)))
    return 0


@dataclasses.dataclass(frozen=True)
class Command:
    """A `mathloop` command: its line in `mathloop --help`, the function that adds its flags to its parser (and
    imports what they need, so only the command being run pays for that) and the function that runs it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# Every command, in the order `mathloop --help` lists them: a new command is one entry here.
COMMANDS = {
    "eval": Command("generate, verify and score a model on benchmarks (resumable run folder)",
                    add_eval_arguments, cmd_eval),
    "grade": Command("re-grade samples produced elsewhere (mathloop's or the official harness's output)",
                     add_grade_arguments, cmd_grade),
    "compare": Command("paired comparison of two runs (delta with interval, McNemar p) on their shared problems",
                       add_compare_arguments, cmd_compare),
    "exec": Command("run one Python file in the sandbox that TIR uses, print a JSON result",
                    add_exec_arguments, cmd_exec),
    "rm": Command("reward model: `rm train` trains one on graded samples (resumable run folder)",
                  add_rm_arguments, cmd_rm),
    "score": Command("add reward-model scores (rm_score) to samples", add_score_arguments, cmd_score),
    "sample": Command("sample graded responses to training problems (several temperatures, resumable, shardable)",
                      add_sample_arguments, cmd_sample),
    "select": Command("pick the best responses per problem (RM score, majority pseudo-labels) as SFT chat rows",
                      add_select_arguments, cmd_select),
    "loop": Command("self-improvement rounds from a YAML config (sample, RM, select, SFT, eval, GRPO)",
                    add_loop_arguments, cmd_loop),
    "demo": Command("one round of the loop on the embedded model, sized for a laptop CPU: before/after accuracy",
                    add_demo_arguments, cmd_demo),
    "grpo": Command("reinforcement learning of a policy with GRPO (resumable run folder)", add_grpo_arguments,
                    cmd_grpo),
    "sft": Command("supervised fine-tuning on prompt-completion chat rows with TRL (resumable run folder)",
                   add_sft_arguments, cmd_sft),
    "interpolate": Command("base + alpha * (tuned - base): a model part of the way from a checkpoint to its "
                           "fine-tuned one", add_interpolate_arguments, cmd_interpolate),
    "synthesize": Command("new problems evolved from seed problems, answered by majority vote (resumable)",
                          add_synthesize_arguments, cmd_synthesize),
    "data": Command("the benchmark data: `data list` (sources, versions, licences), `data pull` (harness layout)",
                    add_data_arguments, cmd_data),
    "corpus": Command("the pre-training half: `corpus build` (math corpus from web data), `corpus qa`, "
                      "`corpus sample`", add_corpus_arguments, cmd_corpus),
    "report": Command("one self-contained HTML page of runs: metrics, comparison, plots, sample browser",
                      add_report_arguments, cmd_report),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `mathloop` parser. Only `command` gets its flags (reading a stage's settings class may import torch and
    transformers, seconds each); the other commands are listed with their help. None builds every command."""
    parser = _Parser(prog="mathloop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug information")
    parser.add_argument("--version", action="version", version=f"mathloop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for name, entry in COMMANDS.items():
        p = sub.add_parser(name, help=entry.help)
        if command is None or command == name:
            entry.add_arguments(p)
        add_quiet_flag(p)
        add_settings_flags(p)
    return parser


def add_settings_flags(p: argparse.ArgumentParser) -> None:
    """On a command and each of its actions with a settings class (`add_config_argument`): a flag for every field
    of that class not declared by hand, made from the field (`mathloop.config.add_field_flags`), and the backend
    flags where the class has `backend_args`."""
    from mathloop.config import add_field_flags

    cls = getattr(p, "settings_class", None)
    if cls is not None:
        add_field_flags(p, cls)
        if "backend_args" in {f.name for f in dataclasses.fields(cls)}:
            add_backend_arguments(p)
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                add_settings_flags(child)


def add_quiet_flag(p: argparse.ArgumentParser) -> None:
    """`--quiet` on a command and on each of its actions (`rm train`, `data pull`)."""
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or stage messages: warnings, errors and the result only")
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                add_quiet_flag(child)


def settings_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every command and action of `parser` that reads a settings class."""
    if getattr(parser, "settings_class", None) is not None:
        yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from settings_parsers(child, (*path, name))


def settings_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """docs/options.md: for each command with a settings class, every field with its flag, default, whether it is
    a resume key and its help, all read from the dataclass and the flags made from it
    (`python scripts/options_doc.py` writes the file; a test checks it is current)."""
    import re

    from mathloop.config import field_default, fields_own_first, resume_keys

    lines = ["# Settings of every command", "",
             "Generated from the settings dataclasses by `python scripts/options_doc.py` (a test fails when this page "
             "misses a field). Each field is a YAML key of the command's `--config` file and a flag; flags win over "
             "the file. A resume key must keep its value for a run folder to resume (`docs/runs.md`).", "",
             "A new option is one field of the stage's dataclass, e.g. `warmup: int = field(default=0, metadata="
             "{\"help\": \"...\", \"resume\": True})`: its flag (`--warmup`, type from the annotation), help, YAML "
             "key, run record entry and resume check follow from it; then rerun the script above. Where the "
             "annotation does not say enough, the metadata does: `\"flags\": (\"--learning-rate\", \"--lr\")`, "
             "`\"type\": positive_int` (`mathloop.config`), `\"choices\": [...]`, `\"action\": \"append\"`.", ""]
    for path, p in settings_parsers(parser or build_parser()):
        cls = p.settings_class
        keys = resume_keys(cls) or None
        narrowed = getattr(sys.modules[cls.__module__], "_RESUME_KEYS", None)  # a stage that narrows its fields'
        if keys and narrowed is not None and set(narrowed) < set(keys):  # (GRPO: sampler options may change)
            keys = narrowed
        flags = {action.dest: action for action in p._actions if action.option_strings}
        lines += [f"## mathloop {' '.join(path)} ({cls.__name__})", "",
                  "| field | flag | default | resume key | what it does |", "|---|---|---|---|---|"]
        for f in fields_own_first(cls):
            action = flags.get(f.name)
            default = field_default(cls, f.name)
            shown = "required" if default is dataclasses.MISSING else f"`{default!r}`"
            what = re.sub(r" ?\((default: [^()]*|required, here or in --config)\)$", "",
                          (action.help if action else "") or f.metadata.get("help", "")).replace("|", "\\|")
            flag = ", ".join(f"`{o}`" for o in action.option_strings) if action else ""
            resume = "" if keys is None else ("yes" if f.name in keys else "")
            lines.append(f"| `{f.name}` | {flag} | {shown} | {resume} | {what} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    configure_output(verbose=args.verbose, quiet=args.quiet)
    try:
        return COMMANDS[args.command].run(args)
    except USER_ERRORS as e:
        print(f"mathloop {args.command}: error: {_error_line(e, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mathloop {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
