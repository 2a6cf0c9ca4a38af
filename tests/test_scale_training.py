"""Training at scale on the tiny model: data parallelism under `accelerate launch --num_processes 2 --cpu` (gloo) for
the reward-model and GRPO trainers, and GRPO with rollouts from a separate OpenAI-compatible server that is sent
the policy's LoRA adapter every step (a small server in this test: loopback only, records what it is sent)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from mathloop.records import write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]
ROOT = Path(__file__).resolve().parents[1]

# Two processes with half the batch each reach the weights of one process with the whole batch up to float
# rounding (the gradients are summed in another order): at most this far apart, while training moves them by
# more than a thousand times as much (asserted too).
WEIGHT_TOLERANCE = 1e-5


class RolloutServer(ThreadingHTTPServer):
    """`/v1/completions` answering each (prompt, choice) with a fixed text (a hash of the prompt picks the answer, so
    groups have right and wrong responses), and vLLM's `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`,
    recorded in `events`. A completion asking for a model that is not the loaded adapter is refused (HTTP 404)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.events: list[tuple[str, dict]] = []
        self.loaded: set[str] = set()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: RolloutServer

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.events.append((self.path, body))
            if self.path == "/v1/load_lora_adapter":
                if not (Path(body["lora_path"]) / "adapter_config.json").exists():
                    return self._answer(400, {"error": f"no adapter at {body['lora_path']}"})
                server.loaded.add(body["lora_name"])
                return self._answer(200, "ok")
            if self.path == "/v1/unload_lora_adapter":
                server.loaded.discard(body["lora_name"])
                return self._answer(200, "ok")
            if self.path != "/v1/completions":
                return self._answer(404, {"error": "no such endpoint"})
            if body["model"] not in server.loaded:
                return self._answer(404, {"error": f"model {body['model']} does not exist"})
        choices = []
        for i in range(body["n"]):
            digest = hashlib.sha1(f"{body['prompt']}|{body['seed'] + i}".encode()).digest()
            answer = 7 if digest[0] % 2 else digest[1] % 7
            choices.append({"index": i, "text": f" so {digest[2] % 9} then \\boxed{{{answer}}}",
                            "finish_reason": "stop"})
        self._answer(200, {"choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 6 * len(choices)}})

    def _answer(self, status: int, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def rollout_server():
    server = RolloutServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def grpo_settings(tmp_path, model_dir, server_url: str, out: str) -> dict:
    queries = tmp_path / "queries.jsonl"
    write_jsonl(queries, [{"id": f"q{i}", "question": f"What is {i} + {7 - i}?", "gold": "7"} for i in range(8)])
    return dict(output_dir=str(tmp_path / out), model=str(model_dir), queries=str(queries), reward="verifier",
                group_size=4, queries_per_step=4, steps=2, max_new_tokens=16, lora=True, lora_rank=4,
                learning_rate=1e-2, micro_batch=4, save_every=1, keep_checkpoints=5, seed=0,
                rollout_backend="openai", rollout_base_url=server_url)


def test_grpo_rollouts_come_from_a_server_sent_each_steps_adapter(tiny_model_dir, tmp_path, rollout_server):
    from mathloop.train.grpo import GRPOConfig, train_grpo

    summary = train_grpo(GRPOConfig(**grpo_settings(tmp_path, tiny_model_dir, rollout_server.url, "run")))
    assert summary["step"] == 2
    pushes = [(path, body) for path, body in rollout_server.events if "lora_adapter" in path]
    assert [(path, body["lora_name"]) for path, body in pushes] == [
        ("/v1/load_lora_adapter", "policy-step-0"), ("/v1/load_lora_adapter", "policy-step-1"),
        ("/v1/unload_lora_adapter", "policy-step-0")]
    completions = [(i, body["model"]) for i, (path, body) in enumerate(rollout_server.events)
                   if path == "/v1/completions"]
    second_push = rollout_server.events.index(pushes[1])
    assert {model for i, model in completions if i < second_push} == {"policy-step-0"}
    assert {model for i, model in completions if i > second_push} == {"policy-step-1"}
    assert len(completions) == 2 * 4  # one request per query (n = group size) per step
    rollouts = (tmp_path / "run" / "rollouts" / "step-000001.jsonl").read_text().splitlines()
    assert len(rollouts) == 16 and all("boxed" in json.loads(line)["response"] for line in rollouts)


def test_grpo_refuses_a_server_without_runtime_lora(tiny_model_dir, tmp_path):
    from mathloop.train.grpo import GRPOConfig

    with pytest.raises(ValueError, match="rollout_backend openai needs lora: true"):
        GRPOConfig(**{**grpo_settings(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", "run"), "lora": False}
                   ).validate()


RANK_LINE = ("import pathlib\nfrom mathloop.train.distributed import make_accelerator\nstate = make_accelerator().state\n"
             "pathlib.Path(f'rank-{state.process_index}-of-{state.num_processes}').touch()\n")


def launch(script: Path, processes: int, tmp_path: Path) -> subprocess.CompletedProcess:
    """N processes on the CPU (gloo) with accelerate's multi-process launcher (torchrun), bounded in time; `script`
    prints `RANK_LINE`. `accelerate launch --cpu --num_processes N` alone starts one process unless mpirun is
    there (its CPU path goes through MPI); `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu` starts N.
    `processes=1` runs the script as a plain process (no launcher), in the same environment."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf"), "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    result = subprocess.run(command if processes > 1 else [sys.executable, str(script)], env=env,
                            capture_output=True, text=True, timeout=300, cwd=script.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = sorted(p.name for p in script.parent.glob("rank-*"))
    assert ranks == [f"rank-{r}-of-{processes}" for r in range(processes)]  # really distributed
    for p in script.parent.glob("rank-*"):
        p.unlink()
    return result


def test_launched_processes_exit_cleanly_after_collectives(tmp_path):
    """A launched trainer that finished must exit 0. Left to interpreter finalization, the gloo process group
    aborted a process ("terminate called without an active exception") in 3 of 15 two-process launches measured
    (and once in CI, after GRPO had finished); `make_accelerator` has it destroyed at exit. 4 launches of 4
    processes: 16 exits, which without that fail at least once with probability about 0.97."""
    script = tmp_path / "collectives.py"
    script.write_text(RANK_LINE + "import torch, torch.distributed as dist\nt = torch.ones(1000)\n"
                      "for _ in range(20):\n    dist.all_reduce(t)\n"
                      "    dist.all_gather([torch.empty(1000) for _ in range(dist.get_world_size())], t)\n"
                      "dist.barrier()\n")
    for _ in range(4):
        launch(script, 4, tmp_path)


def trained_alone_or_launched(main: str, settings: dict, name: str, processes: int, tmp_path: Path) -> None:
    """Train with `settings` (output `tmp_path/name`) in `processes` launched processes, or in one plain process.
    Both are fresh processes in the same environment: a run inside pytest would inherit process-wide state that
    earlier tests changed (threads, kernels), which changes float rounding."""
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**settings, "output_dir": str(tmp_path / name)}))
    script = tmp_path / f"{name}_main.py"
    script.write_text(RANK_LINE + main + f"train(load_settings(Config, {str(tmp_path / f'{name}.yaml')!r}))\n")
    launch(script, processes, tmp_path)


def trained_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint / "trainable.pt", weights_only=True)


def assert_same_weights(one: dict, two: dict, start: dict) -> tuple[float, float]:
    """The largest difference between the two runs' weights, and the largest change from `start` (one run)."""
    assert one.keys() == two.keys()
    gap = max((one[k] - two[k]).abs().max().item() for k in one)
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    assert gap <= WEIGHT_TOLERANCE and moved > 1000 * gap, (gap, moved)
    return gap, moved


def test_two_grpo_processes_with_half_the_queries_reach_the_weights_of_one(tiny_model_dir, tmp_path,
                                                                           rollout_server):
    settings = grpo_settings(tmp_path, tiny_model_dir, rollout_server.url, "one")
    main = ("from mathloop.config import load_settings\n"
            "from mathloop.train.grpo import GRPOConfig as Config, train_grpo as train\n")
    trained_alone_or_launched(main, settings, "one", 1, tmp_path)  # one process, 4 queries a step
    requests = len(rollout_server.events)
    trained_alone_or_launched(main, settings, "two", 2, tmp_path)  # two processes, 2 queries each a step
    completions = [body for path, body in rollout_server.events[requests:] if path == "/v1/completions"]
    assert len(completions) == 2 * 4  # each query of a step asked for once, by one of the two processes
    one_w = trained_weights(tmp_path / "one" / "checkpoints" / "step-000002")
    two_w = trained_weights(tmp_path / "two" / "checkpoints" / "step-000002")
    # the starting adapters: B is zero, A is as after step 1 (B = 0 gives A no gradient in step 1)
    start = {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in
             trained_weights(tmp_path / "one" / "checkpoints" / "step-000001").items()}
    print("grpo: 2 processes vs 1, largest weight difference, largest change", assert_same_weights(one_w, two_w, start))
    one_metrics = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two_metrics = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(two_metrics) == 2  # written once, by the main process
    for a, b in zip(one_metrics, two_metrics):
        assert b["reward_mean"] == pytest.approx(a["reward_mean"]) and b["loss"] == pytest.approx(a["loss"], abs=1e-6)
    assert len((tmp_path / "two" / "rollouts" / "step-000002.jsonl").read_text().splitlines()) == 16


def rm_samples(path: Path) -> None:
    import random

    from mathloop.records import Sample

    rng = random.Random(0)
    samples = [Sample(problem_id=f"p{i}", prompt=f"What is {i} + 7?", sample_index=j,
                      response=f"{' '.join(rng.choice(['so', 'x', 'then']) for _ in range(3))} \\boxed{{{7 if j < 2 else j}}}",
                      verdict="correct" if j < 2 else "incorrect")
               for i in range(16) for j in range(4)]
    write_jsonl(path, samples)


def test_two_rm_processes_with_half_the_groups_reach_the_weights_of_one(tiny_model_dir, tmp_path):
    rm_samples(tmp_path / "samples.jsonl")
    settings = dict(samples=[str(tmp_path / "samples.jsonl")], model=str(tiny_model_dir), heldout_fraction=0.0,
                    learning_rate=3e-3, epochs=1, groups_per_batch=8, micro_batch_groups=1, max_length=64, max_ratio=None,
                    save_every=1, keep_checkpoints=5, seed=0)
    main = "from mathloop.config import load_settings\nfrom mathloop.train.rm import RMTrainConfig as Config, train\n"
    trained_alone_or_launched(main, settings, "one", 1, tmp_path)
    trained_alone_or_launched(main, settings, "two", 2, tmp_path)
    one_w = trained_weights(tmp_path / "one" / "checkpoints" / "step-000002")
    two_w = trained_weights(tmp_path / "two" / "checkpoints" / "step-000002")
    start = trained_weights(tmp_path / "one" / "checkpoints" / "step-000001")  # after one step: both runs moved on
    print("rm: 2 processes vs 1, largest weight difference, largest change", assert_same_weights(one_w, two_w, start))
    assert (tmp_path / "two" / "final").is_dir() and len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 2


def test_two_sft_processes_report_the_mean_loss_once(tiny_model_dir, tmp_path):
    """Issue 28 item 5: under `accelerate launch` rank 0 prints the summary once, and its train_loss (also in
    summary.json) is the mean over the processes, each of which averaged only its own batches."""
    from mathloop.records import write_jsonl

    rows = [{"prompt": [{"role": "user", "content": f"What is 2 + {i}?"}],
             "completion": [{"role": "assistant", "content": f"2 + {i} = {2 + i}. \\boxed{{{2 + i}}}"}]}
            for i in range(8)]
    write_jsonl(tmp_path / "sft.jsonl", rows)
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(dict(
        model=str(tiny_model_dir), data=str(tmp_path / "sft.jsonl"), output_dir=str(tmp_path / "out"), epochs=1,
        learning_rate=3e-3, per_device_batch_size=2, gradient_accumulation_steps=1, max_length=64,
        log_every=100)))  # no logging step: each Trainer's training_loss is its own process's mean
    script = tmp_path / "sft_main.py"
    script.write_text(RANK_LINE + "import sys\nfrom mathloop.cli import main\n"
                      f"sys.exit(main(['sft', '--config', {str(tmp_path / 'sft.yaml')!r}, '--quiet']))\n")
    result = launch(script, 2, tmp_path)
    assert result.stdout.count('"train_loss"') == 1, result.stdout  # one summary, not one per rank
    printed = json.loads(result.stdout[result.stdout.index('{\n  "step"'):result.stdout.rindex("}") + 1])
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    losses = written["train_loss_per_process"]
    assert len(losses) == 2 and losses[0] != losses[1]  # each process saw other batches
    assert written["train_loss"] == pytest.approx(sum(losses) / 2) == printed["train_loss"]
