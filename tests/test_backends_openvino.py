"""OpenVINOBackend against a stub `openvino_genai`: generation config, token-level output mapping, progress, the
export cache; and (marked `integration`) a real export and generation with the tiny model."""

import json
import os
import stat
import sys
import types

import pytest

from mathloop.records import Problem

from mathloop.backends import Backend, SamplingParams, load_backend
from mathloop.backends.base import sample_seed
from mathloop.backends import openvino as ov_backend
from mathloop.backends.openvino import OpenVINOBackend, checkpoint_hash, export_openvino


class StubConfig:
    """Records the attributes the backend sets (GenerationConfig's defaults are C++ side)."""


@pytest.fixture
def stub_genai(monkeypatch, tiny_model_dir, tmp_path):
    """A fake `openvino_genai` whose pipeline answers each prompt with scripted token ids, and a fake export."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tokenizer.eos_token_id

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    module = types.ModuleType("openvino_genai")
    module.pipelines, module.requests = [], []
    module.get_version = lambda: "2026.0-stub"
    module.GenerationConfig = StubConfig
    module.SchedulerConfig = StubConfig

    class StubHandle:
        """One request: running until the pipeline has stepped once per scripted token."""

        def __init__(self, pipeline, script, reason, n):
            self.pipeline, self.script, self.reason, self.n = pipeline, script, reason, n
            self.finish_at, self.cancelled = pipeline.steps + max(1, len(script)), False

        def get_status(self):
            if self.cancelled:
                return types.SimpleNamespace(name="CANCEL")
            return types.SimpleNamespace(name="FINISHED" if self.pipeline.steps >= self.finish_at else "RUNNING")

        def read_all(self):  # like openvino-genai 2026.4, nothing for a sequence a stop string left empty
            logprobs = [-0.5] * len(self.script)  # the end token's -0.1
            if self.script and self.script[-1] == tokenizer.eos_token_id:
                logprobs[-1] = -0.1
            output = types.SimpleNamespace(generated_ids=self.script, finish_reason=self.reason,
                                           generated_log_probs=logprobs)
            return [output] * self.n if self.script else []

        def cancel(self):
            self.cancelled = True

    class StubPipeline:
        def __init__(self, path, scheduler, device, properties):
            self.args = (path, scheduler.cache_size, device, properties)
            self.steps, self.handles, self.generated = 0, [], []
            module.pipelines.append(self)

        def add_request(self, request_id, tensor, config):
            prompt = tokenizer.decode(tensor.data[0])
            module.requests.append((request_id, prompt, config))
            script = {"eos": ids("The answer is \\boxed{5}.") + [eos],
                      "long": ids("Let x = 7, so 2x = 14. Let x")[:6],
                      "tool": ids("print(1 + 2)\n```\n```output\n3"),
                      "swallowed": []}[prompt.split()[-1]]  # stopped at once, the stop string not returned
            reason = types.SimpleNamespace(name="LENGTH" if prompt.endswith("long") else "STOP")
            self.handles.append(StubHandle(self, script, reason, getattr(config, "num_return_sequences", 1)))
            return self.handles[-1]

        def generate(self, tensors, configs):  # the backend calls it only to set the LoRA state
            self.generated.append((tensors, configs))

        def has_non_finished_requests(self):
            return any(h.get_status().name == "RUNNING" for h in self.handles)

        def step(self):
            self.steps += 1

    module.ContinuousBatchingPipeline = StubPipeline
    module.Adapter = lambda path: types.SimpleNamespace(path=path)
    module.AdapterConfig = lambda adapter, alpha: types.SimpleNamespace(adapter=adapter, alpha=alpha)
    tensor_module = types.ModuleType("openvino")
    tensor_module.Tensor = lambda array: types.SimpleNamespace(data=array)
    monkeypatch.setitem(sys.modules, "openvino_genai", module)
    monkeypatch.setitem(sys.modules, "openvino", tensor_module)
    exported = tmp_path / "export"
    monkeypatch.setattr(ov_backend, "export_openvino", lambda folder, weight_format, python=None: (
        exported, {"export_s": 1.5, "checkpoint_sha256": "ab" * 32, "folder": str(folder)}))
    return module


def test_pipeline_arguments_and_info(stub_genai, tiny_model_dir, tmp_path):
    backend = OpenVINOBackend(str(tiny_model_dir), weight_format="int8", inference_precision="bf16",
                              kv_cache_precision=None, threads=2, cache_size_gb=3)
    assert isinstance(backend, Backend) and backend.name == "openvino"
    [pipeline] = stub_genai.pipelines
    assert pipeline.args == (str(tmp_path / "export"), 3, "CPU",
                             {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": 2})
    assert backend.info["weight_format"] == "int8" and backend.info["export_path"] == str(tmp_path / "export")
    assert backend.info["engine"] == "openvino-genai 2026.0-stub" and backend.info["export_s"] == 1.5
    default = load_backend("openvino", str(tiny_model_dir))  # the accurate settings unless asked otherwise
    assert stub_genai.pipelines[1].args[1] == 0  # a KV cache that grows with the requests, not a fixed reservation
    assert stub_genai.pipelines[1].args[3] == {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
    assert default.info["weight_format"] == "fp16"
    load_backend("openvino", str(tiny_model_dir), weight_format="int8")  # asked for speed: the plugin's precisions
    assert stub_genai.pipelines[2].args[3] == {}


def test_bad_settings_are_refused(stub_genai, tiny_model_dir):
    with pytest.raises(ValueError, match="weight_format must be one of fp32, fp16, int8, int4, got 'q4'"):
        OpenVINOBackend(str(tiny_model_dir), weight_format="q4")
    with pytest.raises(ValueError, match="kv_cache_precision must be auto, null or one of"):
        OpenVINOBackend(str(tiny_model_dir), kv_cache_precision="int8")


def test_sampling_maps_to_generation_config(stub_genai, tiny_model_dir):
    backend = OpenVINOBackend(str(tiny_model_dir))
    params = SamplingParams(n=3, temperature=0.7, top_p=0.8, top_k=20, min_p=0.05, max_new_tokens=64, seed=9,
                            stop=("```output",))
    backend.generate(["q eos"], params, seed_keys=["gsm8k/3"])
    # one request per response, each seeded by (run seed, problem id, sample index) alone (issue 28)
    assert [(request_id, prompt) for request_id, prompt, _ in stub_genai.requests] == [(0, "q eos"), (1, "q eos"),
                                                                                      (2, "q eos")]
    for j, (_, _, config) in enumerate(stub_genai.requests):
        assert vars(config) == {"max_new_tokens": 64, "stop_token_ids": set(backend.eos_token_ids),
                                "apply_chat_template": False, "logprobs": 1, "stop_strings": {"```output"},
                                "include_stop_str_in_output": True, "do_sample": True, "num_return_sequences": 1,
                                "temperature": 0.7, "top_p": 0.8, "rng_seed": sample_seed(9, "gsm8k/3", j),
                                "top_k": 20, "min_p": 0.05}
    backend.generate(["q eos"], SamplingParams(max_new_tokens=8))
    assert vars(stub_genai.requests[3][2]) == {"max_new_tokens": 8, "stop_token_ids": set(backend.eos_token_ids),
                                               "apply_chat_template": False, "logprobs": 1}  # greedy: no sampling


def _adapter(folder, **config):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, **config}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def test_lora_adapters_are_applied_at_run_time(stub_genai, tiny_model_dir, tmp_path):
    backend = OpenVINOBackend(str(tiny_model_dir))
    backend.use_lora(str(_adapter(tmp_path / "step-0")), "policy-step-0", 1)
    backend.use_lora(str(_adapter(tmp_path / "step-1", use_rslora=True)), "policy-step-1", 2)
    first, rebuilt = stub_genai.pipelines  # rebuilt once, with LoRA state in its graph; not again per adapter
    assert first.args[3] == {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
    assert rebuilt.args[3]["adapters"].adapter.path == str(tmp_path / "step-0" / "adapter_model.safetensors")
    assert rebuilt.args[3]["adapters"].alpha == 2.0  # peft's lora_alpha / r: the engine does not divide
    assert backend.pipeline is rebuilt and backend.model_id == "policy-step-1"
    # each adapter is set by a one-token generate() (the pipeline takes its LoRA state from there, not add_request)
    assert [(configs[0].max_new_tokens, configs[0].adapters.alpha) for _, configs in rebuilt.generated] == [
        (1, 2.0), (1, 4.0)]
    backend.generate(["q eos"], SamplingParams(n=2, temperature=1.0, max_new_tokens=8))
    [(_, _, config), _] = stub_genai.requests  # one request per response
    assert config.adapters.adapter.path == str(tmp_path / "step-1" / "adapter_model.safetensors")
    assert config.adapters.alpha == 4.0  # rsLoRA: lora_alpha / sqrt(r)
    assert backend.info["lora_adapter"] == str(tmp_path / "step-1")


@pytest.mark.parametrize("config, message", [
    ({"r": 4, "lora_alpha": 8, "rank_pattern": {"q_proj": 8}}, "rank_pattern is set"),
    ({"r": 4, "lora_alpha": 8, "modules_to_save": ["lm_head"]}, "modules_to_save is set"),
    ({"r": 4, "lora_alpha": 8, "use_dora": True}, "use_dora is set"),
    ({"peft_type": "IA3"}, "peft_type 'IA3'"),
    ({"r": 0, "lora_alpha": 8}, "needs r"),
])
def test_adapters_the_engine_cannot_apply_are_refused(config, message):
    with pytest.raises(ValueError, match=f"adapter_config.json: {message}"):
        ov_backend.lora_scale(config)


def test_a_folder_without_an_adapter_is_refused(stub_genai, tiny_model_dir, tmp_path):
    backend = OpenVINOBackend(str(tiny_model_dir))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no adapter_config.json|{tmp_path} has no adapter"):
        backend.use_lora(str(tmp_path), "x")


def test_outputs_map_to_completions(stub_genai, tiny_model_dir):
    from mathloop.generate import response_samples

    backend = OpenVINOBackend(str(tiny_model_dir))
    seen = []
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, stop=("```output",))
    pipeline = stub_genai.pipelines[-1]
    eos, long, tool = backend.generate(["a eos", "b long", "c tool"], params,
                                       on_progress=lambda i, j, c: seen.append((i, j, c.finish_reason, pipeline.steps)))
    assert [c.text for c in eos] == ["The answer is \\boxed{5}."] * 2
    assert (eos[0].finish_reason, eos[0].stop_string) == ("stop", None)
    assert eos[0].completion_tokens == len(backend.tokenizer("The answer is \\boxed{5}.")["input_ids"])  # no EOS
    assert eos[0].prompt_tokens == len(backend.tokenizer("a eos")["input_ids"])
    assert (long[0].finish_reason, long[0].completion_tokens) == ("length", 6)
    # the engine's sampled ids, the EOS included (what GRPO trains on), each with its log-probability; the sample's
    # confidence is over the response's tokens, the EOS's left out
    ids = backend.tokenizer("The answer is \\boxed{5}.")["input_ids"]
    assert eos[0].metadata["token_ids"] == ids + [backend.eos_token_ids[0]]
    assert eos[0].metadata["token_logprobs"] == [-0.5] * eos[0].completion_tokens + [-0.1]
    assert len(long[0].metadata["token_ids"]) == len(long[0].metadata["token_logprobs"]) == 6
    [sample, _] = response_samples([Problem("p", "b", "q", gold="5")], ["a eos"], [eos], params, "cot", "m")
    assert sample.confidence == {"mean": -0.5, "lowest_window": -0.5, "tail": -0.5}
    assert (tool[0].text, tool[0].stop_string, tool[0].finish_reason) == ("print(1 + 2)\n```\n", "```output", "stop")
    # every completion, reported as its request finishes (the 6-token one first), not when the last one does
    assert [(i, j, r) for i, j, r, _ in seen] == [(1, 0, "length"), (1, 1, "length"), (0, 0, "stop"), (0, 1, "stop"),
                                                  (2, 0, "stop"), (2, 1, "stop")]
    assert seen[0][3] == 6 < seen[2][3] < seen[4][3] == pipeline.steps
    [[swallowed]] = backend.generate(["d swallowed"], SamplingParams(max_new_tokens=6, stop=("```output",)))
    assert (swallowed.text, swallowed.stop_string, swallowed.finish_reason) == ("", "```output", "stop")


def test_an_interrupted_call_cancels_the_requests_left(stub_genai, tiny_model_dir):
    backend = OpenVINOBackend(str(tiny_model_dir))

    def interrupt(i, j, completion):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backend.generate(["a eos", "b long", "c tool"], SamplingParams(max_new_tokens=6), on_progress=interrupt)
    assert [h.get_status().name for h in stub_genai.pipelines[-1].handles] == ["CANCEL", "FINISHED", "CANCEL"]
    [[again]] = backend.generate(["a eos"], SamplingParams(max_new_tokens=6))  # the pipeline is usable after
    assert again.text == "The answer is \\boxed{5}." and stub_genai.requests[-1][0] == 3  # ids are not reused


def test_a_request_the_cache_could_not_hold_is_an_error(stub_genai, tiny_model_dir):
    backend = OpenVINOBackend(str(tiny_model_dir))
    pipeline = stub_genai.pipelines[-1]
    real_add = pipeline.add_request

    def ignored(*args):
        handle = real_add(*args)
        handle.get_status = lambda: types.SimpleNamespace(name="IGNORED")
        return handle

    pipeline.add_request = ignored
    with pytest.raises(RuntimeError, match="status IGNORED .*raise cache_size_gb"):
        backend.generate(["a eos"], SamplingParams(max_new_tokens=6))


def test_greedy_generates_once_and_repeats(stub_genai, tiny_model_dir):
    results = OpenVINOBackend(str(tiny_model_dir)).generate(["p eos"], SamplingParams(n=3))
    assert not hasattr(stub_genai.requests[0][2], "num_return_sequences")
    assert [c.text for c in results[0]] == ["The answer is \\boxed{5}."] * 3


def test_missing_openvino_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino_genai", None)
    with pytest.raises(ImportError, match=r"mathloop\[openvino\]"):
        OpenVINOBackend("m")


def test_checkpoint_hash_follows_weights_and_config(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    first = checkpoint_hash(tmp_path)
    (tmp_path / "README.md").write_text("notes")
    assert checkpoint_hash(tmp_path) == first  # not part of the model
    (tmp_path / "model.safetensors").write_bytes(b"weights, next round")
    second = checkpoint_hash(tmp_path)
    (tmp_path / "config.json").write_text('{"rope_theta": 1}')
    assert len({first, second, checkpoint_hash(tmp_path)}) == 3
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no \\*.safetensors"):
        checkpoint_hash(tmp_path)


def test_export_runs_once_per_checkpoint(tmp_path, monkeypatch):
    """A stand-in exporter (it logs each call and writes the output folder) behind the export command."""
    monkeypatch.setenv("MATHLOOP_CACHE", str(tmp_path / "cache"))
    calls = tmp_path / "calls.txt"
    exporter = tmp_path / "python"
    exporter.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nfor last; do :; done\nmkdir -p "$last"\n')
    exporter.chmod(exporter.stat().st_mode | stat.S_IEXEC)
    checkpoint = tmp_path / "final"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"round 1")
    path, record = export_openvino(checkpoint, "int8", str(exporter))
    assert export_openvino(checkpoint, "int8", str(exporter))[0] == path
    assert len(calls.read_text().splitlines()) == 1
    assert "--weight-format int8" in calls.read_text() and record["source"] == str(checkpoint)
    assert path.parent == tmp_path / "cache" / "openvino" and record["export_s"] >= 0
    (checkpoint / "model.safetensors").write_bytes(b"round 2")
    assert export_openvino(checkpoint, "int8", str(exporter))[0] != path
    assert len(calls.read_text().splitlines()) == 2
    assert not [p for p in path.parent.iterdir() if ".partial" in p.name]


def test_failed_export_leaves_no_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("MATHLOOP_CACHE", str(tmp_path / "cache"))
    exporter = tmp_path / "python"
    exporter.write_text("#!/bin/sh\necho 'unsupported architecture' >&2\nexit 3\n")
    exporter.chmod(exporter.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "model.safetensors").write_bytes(b"w")
    with pytest.raises(RuntimeError, match="(?s)exit 3.*unsupported architecture"):
        export_openvino(tmp_path, "fp16", str(exporter))
    assert not (tmp_path / "cache" / "openvino").exists() or not any((tmp_path / "cache" / "openvino").iterdir())


def _export_python() -> str | None:
    """An interpreter with optimum-intel: $MATHLOOP_OPENVINO_EXPORT_PYTHON, else the managed environment if made."""
    from mathloop.models import cache_dir

    if os.environ.get("MATHLOOP_OPENVINO_EXPORT_PYTHON"):
        return os.environ["MATHLOOP_OPENVINO_EXPORT_PYTHON"]
    ready = cache_dir() / "openvino-export-env" / "mathloop-ready.json"
    return str(ready.parent / "bin" / "python") if ready.exists() else None


@pytest.mark.integration
def test_export_and_generate_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("openvino_genai", reason="openvino-genai is not installed (pip install 'mathloop[openvino]')")
    python = _export_python()
    if python is None:
        pytest.skip("no OpenVINO export environment: set MATHLOOP_OPENVINO_EXPORT_PYTHON to a python with "
                    "optimum-intel, or create the managed one with "
                    "`python -c 'from mathloop.backends.openvino import export_environment; export_environment()'`")
    monkeypatch.setenv("MATHLOOP_CACHE", str(tmp_path / "cache"))
    backend = OpenVINOBackend(str(tiny_model_dir), weight_format="fp16", export_python=python, threads=1)
    prompt = backend.chat_prompt([{"role": "user", "content": "What is 2 + 3?"}])
    [[greedy]] = backend.generate([prompt], SamplingParams(max_new_tokens=12))
    assert greedy.completion_tokens <= 12 and greedy.finish_reason in ("stop", "length")
    assert greedy.prompt_tokens == len(backend.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    stop = greedy.text[-2:]  # text the greedy response is known to reach (the random model repeats "\n")
    assert len(stop) == 2 and greedy.finish_reason == "length", greedy
    # each generated token's log-probability (Sample.confidence) is the model's, as a direct forward pass gives it
    import torch

    from mathloop.models import load_causal_lm

    ids = backend.tokenizer(prompt + greedy.text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(load_causal_lm(str(tiny_model_dir), torch.float32)(ids).logits[0, :-1].float(), -1)
    start = greedy.prompt_tokens - 1
    direct = logp[start:start + greedy.completion_tokens].gather(1, ids[0, start + 1:, None])[:, 0]
    assert greedy.metadata["token_logprobs"] == pytest.approx(direct.tolist(), abs=2e-3)
    [[cut]] = backend.generate([prompt], SamplingParams(max_new_tokens=12, stop=(stop,)))  # TIR reads stop_string
    assert (cut.text, cut.stop_string, cut.finish_reason) == (greedy.text[:greedy.text.index(stop)], stop, "stop")
    assert cut.completion_tokens < greedy.completion_tokens  # the engine stopped there
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=1)
    first, again = backend.generate([prompt], params), backend.generate([prompt], params)
    assert len(first[0]) == 3 and [c.text for c in first[0]] == [c.text for c in again[0]]  # seeded
    # at temperature 1, the sampled ids and their log-probabilities are the model's (mu for GRPO's tis_cap)
    sampled = first[0][0].metadata
    prompt_ids = backend.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = load_causal_lm(str(tiny_model_dir), torch.float32)(torch.tensor([prompt_ids + sampled["token_ids"]]))
    logp = torch.log_softmax(logits.logits[0, len(prompt_ids) - 1:-1].float(), -1)
    direct = logp.gather(1, torch.tensor(sampled["token_ids"])[:, None])[:, 0]
    assert sampled["token_logprobs"] == pytest.approx(direct.tolist(), abs=2e-3)
    # each response's seed is its own (problem id, sample index): alone or beside another problem, the same tokens
    other = backend.chat_prompt([{"role": "user", "content": "What is 7 * 6?"}])
    both = backend.generate([other, prompt], params, seed_keys=["q2", "q1"])
    alone = backend.generate([prompt], params, seed_keys=["q1"])
    assert [c.text for c in both[1]] == [c.text for c in alone[0]] and len({c.text for c in alone[0]}) > 1
    assert backend.info["export_s"] > 0 and (tmp_path / "cache" / "openvino").is_dir()


@pytest.mark.integration
def test_a_lora_adapter_applied_at_run_time_generates_as_the_merged_model(tiny_model_dir, tmp_path, monkeypatch):
    """fp32 weights and compute: the base export with a peft adapter applied at run time gives the greedy tokens of
    the hf model with that adapter merged, and those differ from the base model's (the adapter matters)."""
    pytest.importorskip("openvino_genai", reason="openvino-genai is not installed (pip install 'mathloop[openvino]')")
    python = _export_python()
    if python is None:
        pytest.skip("no OpenVINO export environment (see test_export_and_generate_tiny_model)")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mathloop.backends.hf import HFBackend

    monkeypatch.setenv("MATHLOOP_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter")
    backend = OpenVINOBackend(str(tiny_model_dir), weight_format="fp32", export_python=python, threads=1)
    prompts = [backend.chat_prompt([{"role": "user", "content": q}]) for q in ("What is 2 + 3?", "Add 7 and 5.")]
    params = SamplingParams(max_new_tokens=16)
    base = [c.text for [c] in backend.generate(prompts, params)]
    backend.use_lora(str(tmp_path / "adapter"), "step-0")
    adapted = [c.text for [c] in backend.generate(prompts, params)]
    merged = HFBackend(str(tiny_model_dir), model_obj=model.merge_and_unload().eval(), tokenizer_obj=backend.tokenizer)
    assert adapted == [c.text for [c] in merged.generate(prompts, params)]
    assert adapted != base


def test_eval_records_the_engine_in_run_json(tmp_path, data_dir):
    import json

    from mathloop.backends.fake import FakeBackend
    from mathloop.pipeline.evaluate import EvalConfig, run_eval

    backend = FakeBackend(["\\boxed{1}"])
    backend.info = {"engine": "openvino-genai 2026.0", "weight_format": "fp16", "export_path": "/cache/openvino/x"}
    run_eval(EvalConfig(model="fake", benchmarks=["gsm8k"], out=str(tmp_path / "run"), limit=1, data_dir=str(data_dir)),
             backend=backend, progress=False)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["backend_info"] == backend.info and run["finished"]


# --- `auto`, the default backend of eval, sample, synthesize and the loop's sections ---------------------------------

@pytest.fixture
def openvino_here(monkeypatch):
    """A machine where OpenVINO GenAI is installed and torch sees no CUDA GPU."""
    import torch

    import mathloop.backends

    monkeypatch.setattr(mathloop.backends, "openvino_installed", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_openvino_int8_where_it_is_installed_and_there_is_no_gpu(openvino_here, monkeypatch):
    import torch

    import mathloop.backends
    from mathloop.backends import resolve_backend

    assert resolve_backend("auto") == ("openvino", {"weight_format": "int8"})
    assert resolve_backend("auto", {"weight_format": "fp16", "threads": 2}) == (
        "openvino", {"weight_format": "fp16", "threads": 2})
    assert resolve_backend("hf", {"batch_size": 8}) == ("hf", {"batch_size": 8})  # a named backend is kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto", {"batch_size": 8}) == ("hf", {"batch_size": 8})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(mathloop.backends, "openvino_installed", lambda: False)
    assert resolve_backend("auto") == ("hf", {})


def test_auto_refuses_settings_of_another_engine(openvino_here, tmp_path):
    from mathloop.backends import resolve_backend
    from mathloop.pipeline.loop import LoopConfig

    with pytest.raises(ValueError, match=r"'batch_size' is not a setting of the openvino backend, which backend "
                                         r"'auto' chose \(OpenVINO GenAI is installed and there is no CUDA GPU\)"):
        resolve_backend("auto", {"batch_size": 32})
    config = LoopConfig(output_dir=str(tmp_path / "loop"), eval={"backend_args": {"batch_size": 32}})
    with pytest.raises(ValueError, match="'batch_size' is not a setting of the openvino backend"):
        config.validate()  # before any stage runs
    assert not (tmp_path / "loop").exists()


def test_cli_names_the_engine_auto_chose_for_a_wrong_flag(openvino_here, tmp_path, capsys):
    from mathloop.cli import main

    assert main(["eval", "--out", str(tmp_path / "run"), "--batch-size", "4"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size is not a setting of the openvino backend (chosen by --backend auto" in err
    assert "--weight-format" in err and not (tmp_path / "run").exists()


def test_a_run_records_the_engine_auto_chose_and_refuses_to_resume_on_another(openvino_here, monkeypatch, tmp_path,
                                                                               data_dir):
    import mathloop.backends
    from mathloop.backends.fake import FakeBackend
    from mathloop.pipeline.evaluate import EvalConfig, run_eval
    from mathloop.pipeline.sample import SampleConfig, run_sample

    loaded = []

    def load(name, model, **args):
        loaded.append((name, args))
        return FakeBackend(["\\boxed{18}"])

    monkeypatch.setattr(mathloop.backends, "load_backend", load)  # what eval and sample load their engine with
    config = EvalConfig(model="default", benchmarks=["gsm8k"], out=str(tmp_path / "eval"), limit=2,
                        data_dir=str(data_dir))
    assert config.backend == "auto"
    run_eval(config, progress=False)
    run = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert loaded == [("openvino", {"weight_format": "int8"})]
    assert (run["config"]["backend"], run["config"]["backend_args"]) == ("openvino", {"weight_format": "int8"})
    run_sample(SampleConfig(problems="gsm8k:test", out=str(tmp_path / "sample"), limit=1, n=2,
                            data_dir=str(data_dir)), progress=False)
    assert loaded[-1] == ("openvino", {"weight_format": "int8"})
    # the same command where `auto` means hf: the run is not continued on another engine
    monkeypatch.setattr(mathloop.backends, "openvino_installed", lambda: False)
    with pytest.raises(ValueError, match="holds a run with other settings.*backend"):
        run_eval(EvalConfig(model="default", benchmarks=["gsm8k"], out=str(tmp_path / "eval"), limit=3,
                            data_dir=str(data_dir)), progress=False)
    assert len(loaded) == 2


def test_auto_with_a_backend_object_records_its_name(tmp_path, data_dir):
    from mathloop.backends.fake import FakeBackend
    from mathloop.pipeline.evaluate import EvalConfig, run_eval

    run_eval(EvalConfig(model="fake", benchmarks=["gsm8k"], out=str(tmp_path / "run"), limit=1,
                        data_dir=str(data_dir)), backend=FakeBackend(["\\boxed{1}"]), progress=False)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["backend"] == "fake"
