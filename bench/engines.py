"""Benchmark: CPU generation engines on mathloop's sampling workload, against the hf backend in the same run.

Workload (issue 15): the first 32 GSM8K test questions with the CoT system prompt through the model's chat template,
256 new tokens, (a) greedy and (b) 4 samples per question at temperature 0.7 / top-p 0.8. For every engine it prints
generated tokens/s, the ratio to the anchor (`hf`: mathloop's hf backend as the CLI runs it, batch 32, dtype `auto`),
the child process's peak RSS, load and convert time, greedy accuracy on the questions (graded with
`mathloop.verify.grade`), the load averages before and after, and the CPU flags that decide the kernels.

Engines live in their own virtual environments (their pins conflict with mathloop's transformers), so each runs as a
child process of its environment's python, `python bench/engines.py --worker ENGINE JOB.json`, and writes one JSON
file back. Generated tokens are counted the same way for every engine: the decoded response re-encoded with the
model's tokenizer. Conversions (CTranslate2, OpenVINO) are cached under --workdir with the time they took;
--reconvert times them again.

  hf          the anchor: HFBackend(dtype="auto", batch_size=32), static left-padded batches
  hf-fp32     the same in float32
  hf-cb       the hf backend with continuous_batching=True (transformers' `generate_batch`), dtype auto
  ct2-int8    CTranslate2, int8 weights and compute          (venv: .venvs/ct2)
  ct2-bf16    CTranslate2, bfloat16
  ov-int8     OpenVINO GenAI continuous-batching pipeline, int8 weights (optimum-intel export)   (venv: .venvs/ov)
  ov-fp16     the same with fp16 weights (the CPU plugin computes in bf16 where native, else fp32)
  llamacpp    llama-cpp-python on the embedded Q4_K_M GGUF, one sequence at a time   (venv: .venvs/llamacpp)
  openvino    mathloop's openvino backend as the CLI runs it (fp16 weights, f32 compute and KV cache), in mathloop's
              environment (openvino-genai installed there); it exports through its managed export environment, or
              --export-python (an interpreter with optimum-intel, e.g. .venvs/ov/bin/python)
  openvino-int8  the same with int8 weights

Environments (git-ignored; a CPU torch first, or pip pulls a CUDA build):
  python -m venv .venvs/ct2 && .venvs/ct2/bin/pip install torch==2.13.0 ctranslate2 'transformers<5.6'
  python -m venv .venvs/ov && .venvs/ov/bin/pip install torch==2.13.0 openvino-genai 'optimum-intel[openvino]' \
      && .venvs/ov/bin/pip uninstall -y torchvision   # the torchvision it pulls breaks transformers' import
  python -m venv .venvs/llamacpp && .venvs/llamacpp/bin/pip install llama-cpp-python   # compiles for minutes

Usage:
  python bench/engines.py [--engines hf,hf-fp32,ct2-int8,ov-int8] [--quick] [--workloads greedy,sample]
  --quick runs 4 questions x 32 tokens, to check the plumbing. `--python ENGINE=PATH` points an engine at another
  interpreter (defaults: the current one for hf*, .venvs/ct2|ov|llamacpp/bin/python for the others).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("hf", "hf-fp32", "hf-cb", "ct2-int8", "ct2-bf16", "ov-int8", "ov-fp16", "llamacpp", "openvino",
           "openvino-int8")
VENVS = {"ct2": ".venvs/ct2", "ov": ".venvs/ov", "llamacpp": ".venvs/llamacpp"}
WORKLOADS = {  # name -> sampling settings; n samples per question
    "greedy": {"n": 1, "temperature": 0.0, "top_p": 1.0},
    "sample": {"n": 4, "temperature": 0.7, "top_p": 0.8},
}
CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16",
                         "amx_int8")


# ---------------------------------------------------------------- workers (run inside each engine's environment)

def worker(engine: str, job_path: str) -> None:
    """Load (converting first if needed) the engine, run every workload of the job, write JSON next to the job."""
    job = json.loads(Path(job_path).read_text())
    family = engine.split("-")[0]
    run = {"hf": _run_hf, "ct2": _run_ct2, "ov": _run_ov, "llamacpp": _run_llamacpp, "openvino": _run_openvino}[family]
    run(engine, job)


def _record(job: dict, result: dict, workload: str, run: dict) -> None:
    """Write the result so far after every workload: a run killed later keeps the workloads it finished."""
    result["runs"][workload] = run
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(job["result_path"]).write_text(json.dumps(result))


def _per_prompt(texts: list[str], n: int) -> list[list[str]]:
    """A flat list with each prompt's n responses together, as lists per prompt."""
    return [texts[i:i + n] for i in range(0, len(texts), n)]


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def _run_hf(engine: str, job: dict) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from mathloop.backends.base import SamplingParams
    from mathloop.backends.hf import HFBackend

    torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    backend = HFBackend(job["model_path"], dtype="float32" if engine == "hf-fp32" else "auto", batch_size=32,
                        continuous_batching=engine == "hf-cb")
    load_s = time.perf_counter() - start
    result = {"load_s": load_s, "convert_s": 0.0, "dtype": backend.dtype, "runs": {}}
    backend.generate(job["prompts"][:1], SamplingParams(max_new_tokens=4))  # warm-up
    for name, w in job["workloads"].items():
        params = SamplingParams(n=w["n"], temperature=w["temperature"], top_p=w["top_p"],
                                max_new_tokens=job["max_new_tokens"], seed=0)
        outs, seconds = _timed(backend.generate, job["prompts"], params)
        _record(job, result, name, {"seconds": seconds, "texts": [[c.text for c in cs] for cs in outs]})


def _run_openvino(engine: str, job: dict) -> None:
    """mathloop's own openvino backend: its export cache, its generation config, its completions."""
    sys.path.insert(0, str(ROOT / "src"))
    from mathloop.backends.base import SamplingParams
    from mathloop.backends.openvino import OpenVINOBackend

    backend = OpenVINOBackend(job["model_path"], weight_format="int8" if engine == "openvino-int8" else "fp16",
                              threads=job["threads"], export_python=job.get("export_python"))
    # convert_s: how long the (cached, per checkpoint content) export took when it was made; load_s: the pipeline
    result = {"load_s": backend.info["load_s"], "convert_s": backend.info["export_s"] or 0.0,
              "dtype": backend.dtype, "backend_info": backend.info, "runs": {}}
    for name, w in job["workloads"].items():
        params = SamplingParams(n=w["n"], temperature=w["temperature"], top_p=w["top_p"],
                                max_new_tokens=job["max_new_tokens"], seed=0)
        outs, seconds = _timed(backend.generate, job["prompts"], params)
        _record(job, result, name, {"seconds": seconds, "texts": [[c.text for c in cs] for cs in outs],
                                    "finish_reasons": [[c.finish_reason for c in cs] for cs in outs]})


def _convert(job: dict, engine: str, command: list[str]) -> tuple[Path, float]:
    """Run a conversion once per engine and model; the folder keeps how long it took."""
    out = Path(job["workdir"]) / f"{Path(job['model_path']).name}-{engine}"
    record = out / "mathloop-convert.json"
    if record.exists() and not job["reconvert"]:
        return out, json.loads(record.read_text())["convert_s"]
    start = time.perf_counter()
    subprocess.run(command + [str(out)], check=True)
    convert_s = time.perf_counter() - start
    record.write_text(json.dumps({"convert_s": convert_s, "command": command}))
    return out, convert_s


def _run_ct2(engine: str, job: dict) -> None:
    import ctranslate2
    from transformers import AutoTokenizer

    quantization = {"ct2-int8": "int8", "ct2-bf16": "bfloat16"}[engine]
    converter = str(Path(sys.executable).parent / "ct2-transformers-converter")
    path, convert_s = _convert(job, engine, [converter, "--model", job["model_path"], "--quantization", quantization,
                                              "--force", "--output_dir"])
    start = time.perf_counter()
    generator = ctranslate2.Generator(str(path), device="cpu", compute_type=quantization,
                                      intra_threads=job["threads"])
    tok = AutoTokenizer.from_pretrained(job["model_path"])
    load_s = time.perf_counter() - start
    tokens = [tok.convert_ids_to_tokens(tok.encode(p, add_special_tokens=False)) for p in job["prompts"]]
    result = {"load_s": load_s, "convert_s": convert_s, "dtype": quantization, "runs": {}}
    for name, w in job["workloads"].items():
        ctranslate2.set_random_seed(0)
        batch = [t for t in tokens for _ in range(w["n"])]  # n samples = n copies of the prompt
        sampling = {} if w["temperature"] == 0 else {"sampling_topk": 0, "sampling_topp": w["top_p"],
                                                      "sampling_temperature": w["temperature"]}
        outs, seconds = _timed(lambda: generator.generate_batch(
            batch, max_length=job["max_new_tokens"], include_prompt_in_result=False, max_batch_size=32,
            end_token=job["eos_token_ids"], **sampling))
        texts = [tok.decode(o.sequences_ids[0], skip_special_tokens=True) for o in outs]
        _record(job, result, name, {"seconds": seconds, "texts": _per_prompt(texts, w["n"])})


def _run_ov(engine: str, job: dict) -> None:
    import openvino_genai as ov_genai

    weights = {"ov-int8": "int8", "ov-fp16": "fp16"}[engine]
    cli = str(Path(sys.executable).parent / "optimum-cli")
    path, convert_s = _convert(job, engine, [cli, "export", "openvino", "--model", job["model_path"],
                                             "--task", "text-generation-with-past", "--weight-format", weights])
    start = time.perf_counter()
    scheduler = ov_genai.SchedulerConfig()
    scheduler.cache_size = 2  # GB of KV cache; a scheduler config selects the continuous-batching pipeline
    pipe = ov_genai.LLMPipeline(str(path), "CPU", scheduler_config=scheduler,
                                INFERENCE_NUM_THREADS=job["threads"])
    load_s = time.perf_counter() - start
    result = {"load_s": load_s, "convert_s": convert_s, "dtype": weights, "runs": {}}
    for name, w in job["workloads"].items():
        config = ov_genai.GenerationConfig()
        config.max_new_tokens = job["max_new_tokens"]
        config.stop_token_ids = set(job["eos_token_ids"])
        config.apply_chat_template = False  # the prompts already went through the chat template
        config.num_return_sequences = w["n"]
        if w["temperature"] > 0:
            config.do_sample, config.temperature, config.top_p, config.rng_seed = True, w["temperature"], w["top_p"], 0
        outs, seconds = _timed(pipe.generate, job["prompts"], config)
        texts = list(outs.texts)  # n per prompt, in prompt order
        _record(job, result, name, {"seconds": seconds, "texts": _per_prompt(texts, w["n"])})


def _run_llamacpp(engine: str, job: dict) -> None:
    from llama_cpp import Llama

    start = time.perf_counter()
    llm = Llama(job["gguf_path"], n_ctx=1024, n_threads=job["threads"], n_batch=512, verbose=False, seed=0)
    load_s = time.perf_counter() - start
    result = {"load_s": load_s, "convert_s": 0.0, "dtype": "q4_k_m", "runs": {}}
    for name, w in job["workloads"].items():
        def generate():
            texts = []
            for prompt in job["prompts"]:
                texts.append([llm(prompt, max_tokens=job["max_new_tokens"], temperature=w["temperature"],
                                  top_p=w["top_p"], top_k=0, stop=["<|im_end|>", "<|endoftext|>"])
                              ["choices"][0]["text"] for _ in range(w["n"])])
            return texts
        texts, seconds = _timed(generate)
        _record(job, result, name, {"seconds": seconds, "texts": texts})


# ---------------------------------------------------------------- the driver (runs in mathloop's environment)

def cpu_summary() -> dict:
    import torch

    flags: set[str] = set()
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    return {"cpu": model, "cores": os.cpu_count(), "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "flags": [f for f in CPU_FLAGS_OF_INTEREST if f in flags]}


def run_child(command: list[str], log_path: Path) -> tuple[int, float, float]:
    """Run a child process; return its exit code, wall seconds and peak RSS in MB (from wait4)."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "JOB"), help=argparse.SUPPRESS)
    parser.add_argument("--engines", default="hf,hf-fp32,ct2-int8,ct2-bf16,ov-int8,ov-fp16",
                        help=f"comma-separated, from: {', '.join(ENGINES)}")
    parser.add_argument("--workloads", default="greedy,sample", help="comma-separated: greedy, sample")
    parser.add_argument("--quick", action="store_true", help="4 questions x 32 tokens: check the plumbing")
    parser.add_argument("--questions", type=int, default=32, help="first N GSM8K test questions")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--model", default="default", help="mathloop model name or a local HF folder")
    parser.add_argument("--data-dir", default=os.environ.get("MATHLOOP_DATA_DIR"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--python", action="append", default=[], metavar="ENGINE=PATH",
                        help="interpreter for an engine (or engine family: ct2, ov, llamacpp)")
    parser.add_argument("--workdir", default="/tmp/engines", help="conversions and per-engine logs")
    parser.add_argument("--export-python", default=None,
                        help="openvino*: an interpreter with optimum-intel to export with (default: the backend's "
                             "managed export environment)")
    parser.add_argument("--reconvert", action="store_true", help="convert again even if a conversion is cached")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-engines.jsonl"),
                        help="one JSON line per engine and workload is appended here")
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)

    sys.path.insert(0, str(ROOT / "src"))
    from transformers import AutoTokenizer

    from mathloop.backends.hf import _eos_ids
    from mathloop.data.benchmarks import load_benchmark
    from mathloop.models import resolve_model
    from mathloop.prompts import build_messages
    from mathloop.verify import CORRECT, grade

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        parser.error(f"--engines: unknown {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    workload_names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if any(w not in WORKLOADS for w in workload_names):
        parser.error(f"--workloads: choose from {', '.join(WORKLOADS)}")
    questions, max_new = (4, 32) if args.quick else (args.questions, args.max_new_tokens)
    pythons = dict(p.split("=", 1) for p in args.python)

    model_path, model_id = resolve_model(args.model)
    gguf = Path(model_path).with_name(Path(model_path).name.removesuffix("-bf16") + ".gguf")
    tok = AutoTokenizer.from_pretrained(model_path)
    from transformers import GenerationConfig
    eos = _eos_ids(type("M", (), {"generation_config": GenerationConfig.from_pretrained(model_path)}), tok)
    problems = load_benchmark("gsm8k", args.data_dir, limit=questions)
    prompts = [tok.apply_chat_template(build_messages(p, "cot"), tokenize=False, add_generation_prompt=True)
               for p in problems]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cpu = cpu_summary()
    print(f"model: {model_id}; {questions} questions x {max_new} new tokens; threads {args.threads}")
    print(f"cpu: {cpu['cpu']}; {cpu['cores']} cores; torch capability {cpu['torch_capability']}; "
          f"flags: {' '.join(cpu['flags'])}", flush=True)

    rows = []
    for engine in engines:
        family = engine.split("-")[0]
        python = pythons.get(engine) or pythons.get(family) or (
            sys.executable if family in ("hf", "openvino") else str(ROOT / VENVS[family] / "bin" / "python"))
        if not Path(python).exists():
            print(f"{engine}: skipped, no interpreter at {python} (see the module docstring for its venv)")
            continue
        job_path, result_path = workdir / f"job-{engine}.json", workdir / f"result-{engine}.json"
        result_path.unlink(missing_ok=True)
        job_path.write_text(json.dumps({
            "model_path": model_path, "gguf_path": str(gguf), "prompts": prompts, "eos_token_ids": eos,
            "max_new_tokens": max_new, "threads": args.threads, "workdir": str(workdir),
            "reconvert": args.reconvert, "result_path": str(result_path), "export_python": args.export_python,
            "workloads": {w: WORKLOADS[w] for w in workload_names}}))
        load_before = os.getloadavg()
        rc, wall, rss = run_child([python, str(Path(__file__).resolve()), "--worker", engine, str(job_path)],
                                  workdir / f"log-{engine}.txt")
        load_after = os.getloadavg()
        if rc != 0:
            print(f"{engine}: failed (exit {rc}); see {workdir / f'log-{engine}.txt'}", flush=True)
        if not result_path.exists():
            continue
        result = json.loads(result_path.read_text())
        for name, run in result["runs"].items():
            responses = [t for texts in run["texts"] for t in texts]
            tokens = sum(len(ids) for ids in tok(responses, add_special_tokens=False)["input_ids"])
            row = {"engine": engine, "workload": name, "dtype": result["dtype"], "tokens": tokens,
                   "seconds": run["seconds"], "tokens_per_s": tokens / run["seconds"],
                   "peak_rss_mb": result["peak_rss_mb"], "peak_rss_with_convert_mb": rss,
                   "load_s": result["load_s"], "convert_s": result["convert_s"], "wall_s": wall,
                   "loadavg_before": load_before, "loadavg_after": load_after, "questions": questions,
                   "max_new_tokens": max_new, "threads": args.threads, "cpu": cpu, "model": model_id}
            if "finish_reasons" in run:  # engines that report them: responses cut at max_new_tokens
                row["cut_at_max_new_tokens"] = sum(r == "length" for rs in run["finish_reasons"] for r in rs)
            if name == "greedy":
                verdicts = [grade(p.gold, texts[0])[1] for p, texts in zip(problems, run["texts"])]
                row["greedy_correct"] = sum(v == CORRECT for v in verdicts)
            rows.append(row)
            print(f"{engine} {name}: {row['tokens_per_s']:.1f} tok/s ({tokens} tokens, {run['seconds']:.1f} s)"
                  + (f", {row['greedy_correct']}/{questions} correct" if "greedy_correct" in row else "")
                  + (f", {row['cut_at_max_new_tokens']} cut" if "cut_at_max_new_tokens" in row else ""),
                  flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            for row in rows[-len(result["runs"]):]:
                f.write(json.dumps(row) + "\n")

    anchor = {r["workload"]: r["tokens_per_s"] for r in rows if r["engine"] == "hf"}
    print(f"\n{'engine':<10} {'workload':<8} {'dtype':<9} {'tok/s':>7} {'vs hf':>6} {'tokens':>7} {'gen s':>7} "
          f"{'RSS MB':>7} {'load s':>6} {'conv s':>6} {'correct':>7}  load avg before/after")
    for r in rows:
        ratio = f"{r['tokens_per_s'] / anchor[r['workload']]:5.2f}x" if r["workload"] in anchor else "     -"
        correct = f"{r['greedy_correct']}/{questions}" if "greedy_correct" in r else "-"
        print(f"{r['engine']:<10} {r['workload']:<8} {r['dtype']:<9} {r['tokens_per_s']:7.1f} {ratio:>6} "
              f"{r['tokens']:7d} {r['seconds']:7.1f} {r['peak_rss_mb']:7.0f} {r['load_s']:6.1f} "
              f"{r['convert_s']:6.1f} {correct:>7}  {r['loadavg_before'][0]:.2f}/{r['loadavg_after'][0]:.2f}")


if __name__ == "__main__":
    main()
