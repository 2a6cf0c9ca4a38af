"""The `openvino` backend: OpenVINO GenAI's continuous-batching pipeline on CPU, on an OpenVINO export of the model.

A finished sequence's slot takes the next waiting one at once (paged KV cache), so no compute goes to sequences that
already stopped, and the CPU plugin runs int8/fp16 weights with its own kernels. Every prompt of a call is queued
at once and the pipeline is stepped from here, so each prompt's responses are handed back (saved, counted on the bar)
as soon as they finish, and an interrupted call cancels the requests still running. Prompts are tokenized and responses
decoded by the model's Hugging Face tokenizer in this process, exactly as the hf backend does (the export's own
OpenVINO tokenizer is not used), so prompt handling, special tokens and token counts are the same for both backends.

Export: OpenVINO reads its own model format, written by `optimum-intel`, which pins an older transformers than
mathloop's. `export_openvino` therefore runs `optimum-cli export openvino` in a separate environment under the
mathloop cache (`openvino-export-env`, created on first use with `EXPORT_REQUIREMENTS`; it sees this environment's
packages after its own, so torch is reused and only its pinned transformers shadows mathloop's). Exports are cached
by the checkpoint's content (`checkpoint_hash`: config, tokenizer and weight files), so each new SFT checkpoint of a
loop is exported once, the first time a stage generates with it.

Precision: the CPU plugin's defaults trade accuracy for speed (bfloat16 compute where the CPU has it, a uint8 KV
cache and int8 dynamic quantization of activations for int8 weights). `inference_precision` and `kv_cache_precision`
set them; what was used goes to `info` (run.json's `backend_info`). Their default, "auto", follows the weights:
fp16/fp32 weights get f32 compute and KV cache, which reproduced the hf backend's float32 greedy responses token for
token on the first 32 GSM8K questions; int8/int4 weights (asked for speed) get the plugin's own precisions. int8
weights differ in most responses but scored within noise of fp16 on the first 100 (29 vs 27 correct).

Seeds: a sampled prompt's n responses are n requests of one sequence each, request j seeded (`rng_seed`) with
`sample_seed(params.seed, key, j)` (key: the problem id, `seed_keys`, else the prompt text), so a response does not
depend on the other requests of the pipeline, the batch, a resumed run, a shard or a Ray replica. The prompt is
prefilled once per response rather than once per prompt (the cost of that independence; prompts are short next to
responses).

LoRA: `use_lora` makes the pipeline generate through a peft adapter applied at run time to the exported base weights,
so GRPO's rollouts follow the policy's adapter each step without a new export (`rollout_backend: openvino`).

openvino-genai is an optional extra (`pip install 'mathloop[openvino]'`), imported only when this backend is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mathloop.backends.base import Backend, Completion, Message, SamplingParams, cut_at_stop, sample_seed

log = logging.getLogger(__name__)

# optimum-intel's exporter with the newest transformers it supports (it refuses transformers >= 5.6).
EXPORT_REQUIREMENTS = ("optimum-intel[openvino]==2.2.0", "transformers==5.5.4")
WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")  # `optimum-cli export openvino --weight-format`
PRECISIONS = ("f32", "bf16", "f16", "u8")  # CPU plugin element types, as its properties spell them
_CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "chat_template.jinja")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


class OpenVINOBackend(Backend):
    """Generate with `openvino_genai.ContinuousBatchingPipeline` on CPU.

    `model` is anything `resolve_model` takes (an embedded name, a local HF folder such as an SFT `final/`, a GGUF
    file). `weight_format` picks the export; `inference_precision` / `kv_cache_precision` ("auto": f32 for
    fp16/fp32 weights, the plugin's default for int8/int4; None: the plugin's default) go to the CPU plugin as
    INFERENCE_PRECISION_HINT / KV_CACHE_PRECISION; `threads` as
    INFERENCE_NUM_THREADS; `cache_size_gb` sizes the paged KV cache: 0 (the default) lets it grow with the running
    requests. A fixed size is reserved at once and its pages become resident as the scheduler hands its blocks
    out, so a long run ends up holding all of it: with 2 GB, the default model (int8) held 12 MB more after each
    batch of 16 x 81 tokens (1.88 GB after 40 batches) against 1.46 GB grown as needed, at the same speed
    (openvino-genai 2026.4). `export_python` is an interpreter with
    optimum-intel to export with (default: the managed export environment)."""

    name = "openvino"
    supports_lora = takes_seed_keys = seeds_each_sample = reports_each_completion = reports_tokens = True

    def __init__(self, model: str, weight_format: str = "fp16", inference_precision: str | None = "auto",
                 kv_cache_precision: str | None = "auto", threads: int | None = None, cache_size_gb: int = 0,
                 export_python: str | None = None) -> None:
        try:
            import openvino_genai
        except ImportError as exc:
            raise ImportError("the openvino backend needs OpenVINO GenAI, which is not installed: "
                              "pip install 'mathloop[openvino]', or use the hf backend") from exc
        if weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"openvino backend: weight_format must be one of {', '.join(WEIGHT_FORMATS)}, "
                             f"got {weight_format!r}")
        for key, value in (("inference_precision", inference_precision), ("kv_cache_precision", kv_cache_precision)):
            if value not in (None, "auto", *PRECISIONS):
                raise ValueError(f"openvino backend: {key} must be auto, null or one of {', '.join(PRECISIONS)}, "
                                 f"got {value!r}")
        exact = weight_format in ("fp32", "fp16")
        inference_precision = ("f32" if exact else None) if inference_precision == "auto" else inference_precision
        kv_cache_precision = ("f32" if exact else None) if kv_cache_precision == "auto" else kv_cache_precision
        from mathloop.models import load_tokenizer, resolve_model

        self._genai = openvino_genai
        path, self.model_id = resolve_model(model)
        self.tokenizer = load_tokenizer(path)
        self.eos_token_ids = _eos_ids(path, self.tokenizer)
        self.export_path, export = export_openvino(path, weight_format, export_python)
        properties: dict[str, Any] = {}
        if inference_precision:
            properties["INFERENCE_PRECISION_HINT"] = inference_precision
        if kv_cache_precision:
            properties["KV_CACHE_PRECISION"] = kv_cache_precision
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        self._scheduler = openvino_genai.SchedulerConfig()
        self._scheduler.cache_size = cache_size_gb
        self._properties = properties
        self._adapters: Any = None  # the LoRA adapter generation goes through (`use_lora`)
        start = time.perf_counter()
        self.pipeline = openvino_genai.ContinuousBatchingPipeline(str(self.export_path), self._scheduler, "CPU",
                                                                  properties)
        self.info = {"engine": f"openvino-genai {openvino_genai.get_version()}", "device": "CPU",
                     "weight_format": weight_format, "export_path": str(self.export_path),
                     "export_s": export.get("export_s"), "checkpoint_sha256": export.get("checkpoint_sha256"),
                     "properties": properties, "load_s": round(time.perf_counter() - start, 2)}
        self.dtype = weight_format
        self._requests = 0

    def use_lora(self, path: str, name: str, lora_id: int = 0) -> None:
        """Generate through the peft LoRA adapter saved in the folder `path` from now on, applied at run time to the
        exported base weights (no new export): GRPO passes each step's adapter. The first call rebuilds the pipeline
        with LoRA state in its graph (about 2 s for the default model; generation through an adapter was about 1.6x
        slower than without, measured with int8 weights). `lora_id` is unused (vLLM's engine takes it)."""
        folder = Path(path)
        config_path = folder / "adapter_config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"openvino backend: {folder} has no adapter_config.json (a peft LoRA adapter "
                                    "folder, as `save_pretrained` writes it, is needed)")
        adapter = self._genai.Adapter(str(folder / "adapter_model.safetensors"))
        adapters = self._genai.AdapterConfig(adapter, lora_scale(json.loads(config_path.read_text()), config_path))
        if self._adapters is None:
            self.pipeline = self._genai.ContinuousBatchingPipeline(str(self.export_path), self._scheduler, "CPU",
                                                                   {**self._properties, "adapters": adapters})
        # The pipeline sets its LoRA state from the adapters of a generate() call, not from add_request's config
        # (openvino-genai 2026.4: requests added and stepped ran without the adapter); the state then stays for the
        # requests `generate` adds. So one token is generated through the new adapter here.
        import numpy as np
        import openvino

        probe = self._genai.GenerationConfig()
        probe.max_new_tokens, probe.adapters = 1, adapters
        self.pipeline.generate([openvino.Tensor(np.array([[self.eos_token_ids[0]]], dtype=np.int64))], [probe])
        self._adapters, self.model_id = adapters, name
        self.info["lora_adapter"] = str(folder)

    def chat_prompt(self, messages: list[Message]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: list[str], params: SamplingParams,
                 on_progress: Callable[[int, int, Completion], None] | None = None,
                 seed_keys: list[str] | None = None,
                 on_tokens: Callable[[int], None] | None = None) -> list[list[Completion]]:
        """Every prompt is queued at once (the pipeline schedules them) and the pipeline is stepped here, so that
        `on_progress(i, j, completion)` is called as each sequence finishes: a caller can save them and show
        progress while the others run. Greedy decoding generates once per prompt and repeats it `n` times; sampling
        sends one request per response, seeded `sample_seed(params.seed, seed_keys[i], j)`. `on_tokens(k)` is called
        after each pipeline step with the requests it advanced (each step decodes one token per running request; a
        count for progress bars, not exact around prefill)."""
        if not prompts:
            return []
        import numpy as np
        import openvino

        keys = list(seed_keys) if seed_keys is not None else list(prompts)
        if len(keys) != len(prompts):
            raise ValueError(f"openvino backend: {len(keys)} seed keys for {len(prompts)} prompts")
        n = 1 if params.greedy else params.n
        prompt_ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        handles = {}
        for i, ids in enumerate(prompt_ids):
            for j in range(n):
                config = generation_config(self._genai, params, self.eos_token_ids,
                                           None if params.greedy else sample_seed(params.seed, keys[i], j))
                if self._adapters is not None:  # the state `use_lora` set is what applies; named per request too
                    config.adapters = self._adapters
                tensor = openvino.Tensor(np.array([ids], dtype=np.int64))
                handles[i, j] = self.pipeline.add_request(self._requests, tensor, config)
                self._requests += 1  # request ids stay unique across calls
        results: list[list[Completion | None]] = [[None] * n for _ in prompts]
        try:
            while handles:
                stepped = self.pipeline.has_non_finished_requests()
                if stepped:
                    self.pipeline.step()
                done = [key for key, handle in handles.items() if handle.get_status().name != "RUNNING"]
                if stepped and on_tokens:
                    on_tokens(len(handles))
                if not done and not stepped:
                    raise RuntimeError(f"openvino backend: {len(handles)} requests still running in a pipeline "
                                       "with no unfinished requests")
                for i, j in done:
                    [results[i][j]] = self._finished(handles.pop((i, j)), len(prompt_ids[i]), 1, params)[:1]
                    if on_progress:
                        for k in range(params.n) if params.greedy else (j,):  # greedy: one stands for all n
                            on_progress(i, k, results[i][j])  # type: ignore[arg-type]
        finally:
            for handle in handles.values():  # interrupted: free the other requests' KV cache
                handle.cancel()
        if params.greedy and params.n > 1:
            return [[r[0]] * params.n for r in results]  # type: ignore[misc]
        return results  # type: ignore[return-value]

    def _finished(self, handle: Any, prompt_tokens: int, n: int, params: SamplingParams) -> list[Completion]:
        """A finished request's sequences as Completions (greedy: the one sequence `params.n` times)."""
        status = handle.get_status().name
        if status != "FINISHED":
            raise RuntimeError(f"openvino backend: a request ended with status {status} (IGNORED: the KV cache could "
                               "not hold it; raise cache_size_gb, or set it to 0 to let it grow)")
        outputs = [(list(output.generated_ids), output.finish_reason.name == "STOP", list(output.generated_log_probs))
                   for output in handle.read_all()]
        if len(outputs) > n:
            raise RuntimeError(f"openvino backend: the pipeline returned {len(outputs)} of {n} sequences for a prompt")
        # A sequence cut by a stop string at its very start has no tokens left, and the handle returns nothing for
        # it (openvino-genai 2026.4; its own generate() gives an empty STOP sequence there): the same here.
        outputs += [([], True, [])] * (n - len(outputs))
        completions = [self.to_completion(ids, prompt_tokens, params, engine_stopped=stopped, logprobs=logprobs)
                       for ids, stopped, logprobs in outputs]
        return [completions[0]] * params.n if params.greedy and params.n > 1 else completions

    def to_completion(self, generated: list[int], prompt_tokens: int, params: SamplingParams,
                      engine_stopped: bool = False, logprobs: list[float] | None = None) -> Completion:
        """One sequence's token ids (and the engine's log-probability of each) as a Completion. The pipeline keeps
        the EOS token and (asked to) the stop string in them, except in one case seen with openvino-genai 2026.4: a
        stop string matched at the very start of a response sometimes comes back as no tokens at all; with a single
        stop string it is still named. `metadata["token_ids"]` are the sampled ids, the EOS included when the
        model wrote one (what GRPO trains on), and `["token_logprobs"]` each one's log-probability, as vLLM reports
        them."""
        metadata = {"token_ids": list(generated)}
        if logprobs:
            metadata["token_logprobs"] = [float(x) for x in logprobs[:len(generated)]]
        ended_by_eos = bool(generated) and generated[-1] in self.eos_token_ids
        if ended_by_eos:
            generated = generated[:-1]
        text, stop_string = cut_at_stop(self.tokenizer.decode(generated, skip_special_tokens=True), params.stop)
        if engine_stopped and not ended_by_eos and stop_string is None and len(params.stop) == 1:
            stop_string = params.stop[0]
        stopped = ended_by_eos or stop_string is not None or len(generated) < params.max_new_tokens
        return Completion(text=text, prompt_tokens=prompt_tokens, completion_tokens=len(generated),
                          finish_reason="stop" if stopped else "length", stop_string=stop_string, metadata=metadata)


def generation_config(genai: Any, params: SamplingParams, eos_token_ids: list[int], seed: int | None = None) -> Any:
    """The `openvino_genai.GenerationConfig` of `params`: the prompts are token ids already through the chat template
    (no template applied again), stop strings are kept in the output so that `cut_at_stop` finds which one ended a
    response, and sampling options are set only where they change the distribution. With `seed` (one response's
    `sample_seed`) the request is that one response, else `params.n` drawn from `params.seed`."""
    config = genai.GenerationConfig()
    config.max_new_tokens = params.max_new_tokens
    config.stop_token_ids = set(eos_token_ids)
    config.apply_chat_template = False
    config.logprobs = 1  # each sampled token's log-probability: the sample's confidence (`Sample.confidence`)
    if params.stop:
        config.stop_strings = set(params.stop)
        config.include_stop_str_in_output = True
    if not params.greedy:
        config.do_sample = True
        config.num_return_sequences = params.n if seed is None else 1
        config.temperature = params.temperature
        config.top_p = params.top_p
        config.rng_seed = params.seed if seed is None else seed
        options = params.sampler_options()
        if "top_k" in options:
            config.top_k = options["top_k"]
        if "min_p" in options:
            config.min_p = options["min_p"]
    return config


def lora_scale(adapter_config: dict[str, Any], source: str | os.PathLike = "adapter_config.json") -> float:
    """The factor by which a peft LoRA adapter's update B @ A is scaled: lora_alpha / r, or lora_alpha / sqrt(r)
    with rsLoRA. openvino-genai scales by the alpha it is given, without dividing by the rank (measured: alpha 1
    with a lora_alpha 32, r 16 adapter matched the merged model in 3 of 12 greedy responses, alpha 2 in 6; the int8
    exports differ anyway), so the backend passes this factor. Adapter settings it cannot express are refused.

    >>> lora_scale({"peft_type": "LORA", "r": 16, "lora_alpha": 32})
    2.0
    >>> lora_scale({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "use_rslora": True})
    8.0
    """
    if adapter_config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{source}: peft_type {adapter_config.get('peft_type')!r}; the openvino backend applies "
                         "LoRA adapters only")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save"):
        if adapter_config.get(key):
            raise ValueError(f"{source}: {key} is set; the openvino backend applies one rank and alpha to every "
                             "module and no fully trained modules (merge the adapter and use the merged model)")
    if adapter_config.get("use_dora"):
        raise ValueError(f"{source}: use_dora is set; the openvino backend applies plain LoRA adapters only")
    rank, alpha = adapter_config.get("r"), adapter_config.get("lora_alpha")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
        raise ValueError(f"{source}: needs r (a positive integer) and lora_alpha (a number), got r={rank!r}, "
                         f"lora_alpha={alpha!r}")
    return float(alpha) / (math.sqrt(rank) if adapter_config.get("use_rslora") else rank)


def _eos_ids(path: str, tokenizer: Any) -> list[int]:
    """The ids that end a response: the generation config's eos_token_id(s) and the tokenizer's EOS."""
    ids = set()
    config = Path(path) / "generation_config.json"
    if config.exists():
        eos = json.loads(config.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


# ---- export ------------------------------------------------------------------------------------------------------

def checkpoint_hash(folder: str | os.PathLike) -> str:
    """sha256 over the names and contents of a checkpoint folder's config, tokenizer and weight files: what decides
    an export. A folder without weight files is refused."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.name in _CHECKPOINT_FILES
                                                                   or p.suffix in _WEIGHT_SUFFIXES))
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise FileNotFoundError(f"{folder}: no *.safetensors or *.bin weights to export to OpenVINO")
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def export_openvino(folder: str | os.PathLike, weight_format: str, python: str | None = None) -> tuple[Path, dict]:
    """The OpenVINO export of the HF checkpoint `folder` with `weight_format` weights, made now if the cache has none
    for its content; returns its folder and its record (`mathloop-export.json`: source, hash, command, seconds)."""
    from mathloop.models import cache_dir

    sha = checkpoint_hash(folder)
    out = cache_dir() / "openvino" / f"{sha[:16]}-{weight_format}"
    record_path = out / "mathloop-export.json"
    if record_path.exists():
        return out, json.loads(record_path.read_text())
    python = python or export_environment()
    partial = out.with_name(out.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    command = [python, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model", str(folder),
               "--task", "text-generation-with-past", "--weight-format", weight_format, str(partial)]
    log.info("exporting %s to OpenVINO (%s weights): %s", folder, weight_format, out)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"OpenVINO export of {folder} failed (exit {done.returncode}): {' '.join(command)}\n"
                           + done.stderr[-3000:])
    record = {"source": str(Path(folder).resolve()), "checkpoint_sha256": sha, "weight_format": weight_format,
              "command": command, "export_s": round(time.perf_counter() - start, 1)}
    (partial / "mathloop-export.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(out, ignore_errors=True)  # an export folder without its record is unfinished
    partial.rename(out)
    return out, record


def export_environment() -> str:
    """The python of the managed export environment (`cache_dir()/openvino-export-env`), created on first use: a
    venv with `EXPORT_REQUIREMENTS` that reuses this interpreter's torch (linked, read after its own packages) and
    nothing else of it. torchvision, which pip brings for optimum-intel, is removed (a build that does not match
    torch breaks transformers' import, and the export does not need it)."""
    from mathloop.models import cache_dir

    env = cache_dir() / "openvino-export-env"
    python = env / "bin" / "python"
    marker = env / "mathloop-ready.json"
    if marker.exists() and json.loads(marker.read_text()).get("requirements") == list(EXPORT_REQUIREMENTS):
        return str(python)
    import importlib.metadata

    log.info("creating the OpenVINO export environment %s (once; pip installs %s)", env,
             " ".join(EXPORT_REQUIREMENTS))
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    # Only torch is shared (linked into a folder the venv reads after its own packages): sharing every package
    # would mix mathloop's newer ones (datasets, huggingface_hub users) with the exporter's older pins.
    torch = importlib.metadata.distribution("torch")
    shared = env / "shared-torch"
    shared.mkdir()
    for top in sorted({str(f).split("/")[0] for f in torch.files or []} - {"..", "bin", "__pycache__"}):
        (shared / top).symlink_to(Path(torch.locate_file(top)))
    Path(own, "zz-mathloop-shared-torch.pth").write_text(f"{shared}\n")
    # optimum-intel requires torchvision, whose newest release would pull a newer (CUDA) torch: hold torch at the
    # installed version, so pip keeps it and picks the torchvision built for it.
    constraints = env / "constraints.txt"
    constraints.write_text(f"torch=={torch.version.split('+')[0]}\n")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(constraints),
           *EXPORT_REQUIREMENTS]
    done = subprocess.run(pip, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"creating the OpenVINO export environment {env} failed: {' '.join(pip)}\n"
                           + done.stderr[-3000:])
    if (Path(own) / "torch").exists():
        raise RuntimeError(f"creating the OpenVINO export environment {env}: pip installed a torch of its own "
                           f"despite {constraints}; remove {env} and report this")
    if (Path(own) / "torchvision").exists():
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "torchvision"], check=True, capture_output=True)
    imports = ("import torch, transformers; from optimum.intel.openvino import OVModelForCausalLM; "
               "print(transformers.__version__, torch.__version__)")
    check = subprocess.run([str(python), "-c", imports], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"the OpenVINO export environment {env} does not import optimum-intel:\n"
                           + check.stderr[-3000:])
    marker.write_text(json.dumps({"requirements": list(EXPORT_REQUIREMENTS), "versions": check.stdout.split()}))
    return str(python)
