"""`mathloop sft`: TRL SFT on the tiny random model (completion-only loss, loss goes down, final/ loads and
generates, resume, LoRA merge), config errors, and the shipped multi-GPU configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mathloop.records import RecordError, write_jsonl

pytest.importorskip("trl")

from mathloop.config import load_settings, settings_from_dict  # noqa: E402
from mathloop.train.sft import (  # noqa: E402
    SFTRunConfig,
    _checkpointing_field,
    build_trainer,
    drop_too_long,
    read_sft_examples,
    train_sft,
)

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def sft_rows(n: int = 8) -> list[dict]:
    """Prompt-completion chat rows, the format `mathloop select` writes (extra keys included)."""
    return [{"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is 2 + {i}?"}],
             "completion": [{"role": "assistant", "content": f"2 + {i} = {2 + i}. The answer is \\boxed{{{2 + i}}}."}],
             "problem_id": f"p{i}", "gold": str(2 + i), "rm_score": None} for i in range(n)]


def sft_config(tmp_path: Path, model_dir: Path, **changes) -> SFTRunConfig:
    data = tmp_path / "sft_data.jsonl"
    if not data.exists():
        write_jsonl(data, sft_rows())
    settings = dict(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "sft"), epochs=3,
                    learning_rate=3e-3, per_device_batch_size=4, gradient_accumulation_steps=1, max_length=128,
                    log_every=1)
    return SFTRunConfig(**{**settings, **changes})


def logged_losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["loss"]) for row in rows if "loss" in row]


@pytest.mark.training
def test_labels_cover_the_completion_only(tiny_model_dir, tmp_path):
    trainer, report = build_trainer(sft_config(tmp_path, tiny_model_dir))
    assert report["examples"] == 8 and report["dropped_too_long"] == 0
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    tokenizer = trainer.processing_class
    for row, ids, labels in zip(sft_rows(3), batch["input_ids"], batch["labels"]):
        prompt_ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        assert (labels[:len(prompt_ids)] == -100).all()  # no loss on the system and user turns
        trained = labels[labels != -100]
        assert tokenizer.decode(trained) == row["completion"][0]["content"] + "<|im_end|>\n"
        assert torch.equal(trained, ids[len(prompt_ids):len(prompt_ids) + len(trained)])


def tir_row() -> dict:
    """A TIR completion as `mathloop select` writes it: model text, a code block, the executor's output block (its
    character range in `tool_output_spans`), then the model's answer."""
    before = "Let me compute.\n```python\nprint(17 * 23)\n```\n"
    executor = "```output\n391\n```\n"
    content = before + executor + "So the answer is \\boxed{391}."
    row = sft_rows(1)[0]
    row.update(completion=[{"role": "assistant", "content": content}], mode="tir",
               tool_output_spans=[[len(before), len(before) + len(executor)]])
    return row


def test_tir_rows_keep_the_executor_output_out_of_the_loss(tiny_model_dir, tmp_path):
    rows = [tir_row(), sft_rows(2)[1]]  # one TIR row, one CoT row without spans
    write_jsonl(tmp_path / "tir.jsonl", rows)
    trainer, report = build_trainer(sft_config(tmp_path, tiny_model_dir, data=str(tmp_path / "tir.jsonl"),
                                                  max_length=512))
    assert report["examples"] == 2 and report["executor_output_masked"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    tokenizer = trainer.processing_class
    labels = batch["labels"][0]
    trained = tokenizer.decode(labels[labels != -100])
    assert "391\n```\n" not in trained.split("print(17 * 23)")[1].split("So the answer")[0]  # nothing of the output
    assert trained.startswith("Let me compute.\n```python\nprint(17 * 23)\n```")
    assert trained.endswith("So the answer is \\boxed{391}.<|im_end|>\n")
    # every token is either the prompt, the model's text, the executor's output or the end of turn
    content = rows[0]["completion"][0]["content"]
    masked = [i for i, label in enumerate(labels.tolist()) if label == -100 and batch["attention_mask"][0][i]]
    prompt_len = len(tokenizer.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"])
    executor_tokens = [i for i in masked if i >= prompt_len]
    start, end = rows[0]["tool_output_spans"][0]
    assert tokenizer.decode(batch["input_ids"][0][executor_tokens]) in content[start - 1:end + 1]
    assert "391" in tokenizer.decode(batch["input_ids"][0][executor_tokens])
    # the CoT row in the same file: the whole completion is trained, as TRL would do it
    cot = batch["labels"][1]
    assert tokenizer.decode(cot[cot != -100]) == rows[1]["completion"][0]["content"] + "<|im_end|>\n"


@pytest.mark.training
def test_tir_training_runs_and_records_the_masking(tiny_model_dir, tmp_path):
    write_jsonl(tmp_path / "tir.jsonl", [tir_row()] * 4)
    summary = train_sft(sft_config(tmp_path, tiny_model_dir, data=str(tmp_path / "tir.jsonl"), epochs=1,
                                   max_length=512))
    assert summary["step"] == 1 and Path(summary["final"], "config.json").exists()
    run = json.loads((tmp_path / "sft" / "run.json").read_text())
    assert run["data"] == {"examples": 4, "dropped_too_long": 0, "executor_output_masked": True}


@pytest.mark.training
def test_training_lowers_the_loss_and_writes_a_model_the_hf_backend_loads(tiny_model_dir, tmp_path):
    from mathloop.backends.base import SamplingParams
    from mathloop.backends.hf import HFBackend

    summary = train_sft(sft_config(tmp_path, tiny_model_dir))
    assert summary["step"] == summary["total_steps"] == 6  # 8 examples / 4 per step x 3 epochs
    losses = [loss for _, loss in logged_losses(tmp_path / "sft")]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.2
    final = Path(summary["final"])
    assert "quantization_config" not in json.loads((final / "config.json").read_text())
    backend = HFBackend(str(final), dtype="float32")
    prompt = backend.chat_prompt(sft_rows(1)[0]["prompt"])
    completion = backend.generate([prompt], SamplingParams(max_new_tokens=8))[0][0]
    assert completion.completion_tokens > 0
    run = json.loads((tmp_path / "sft" / "run.json").read_text())
    assert run["config"]["learning_rate"] == 3e-3 and run["data"]["examples"] == 8

    again = train_sft(sft_config(tmp_path, tiny_model_dir))  # stage done: returns at once
    assert again["already_done"] and again["final"] == summary["final"] and again["step"] == 6


@pytest.mark.training
def test_an_interrupted_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    straight = train_sft(sft_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "straight")))
    config = sft_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "resumed"))
    first = train_sft(config, stop_after=4)  # killed in the middle of the third epoch
    assert first["step"] == 4 and first["final"] is None
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint-4").is_dir()
    second = train_sft(config)
    assert second["resumed_from"].endswith("checkpoint-4") and second["step"] == 6 and second["final"]
    assert [step for step, _ in logged_losses(tmp_path / "resumed")] == [1, 2, 3, 4, 5, 6]
    weights = [AutoModelForCausalLM.from_pretrained(run["final"]).state_dict() for run in (straight, second)]
    for name, tensor in weights[0].items():
        assert torch.allclose(tensor, weights[1][name], atol=1e-5), name


@pytest.mark.training
def test_resume_refuses_other_settings(tiny_model_dir, tmp_path):
    train_sft(sft_config(tmp_path, tiny_model_dir, epochs=1), stop_after=1)
    with pytest.raises(ValueError, match="learning_rate"):
        train_sft(sft_config(tmp_path, tiny_model_dir, epochs=1, learning_rate=1e-3))


@pytest.mark.training
def test_lora_training_writes_a_merged_standalone_model(tiny_model_dir, tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    summary = train_sft(sft_config(tmp_path, tiny_model_dir, lora=True, lora_rank=4, learning_rate=1e-2,
                                   gradient_checkpointing=True))
    final = Path(summary["final"])
    assert (tmp_path / "sft" / "adapter" / "adapter_config.json").exists()
    assert not (final / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(final).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert not any("lora_" in name for name in merged)
    assert set(merged) == set(base)
    changed = [n for n in base if not torch.equal(base[n], merged[n])]
    assert changed and all("proj" in n for n in changed)  # only the adapted linear layers moved


@pytest.mark.training
def test_lora_layers_trains_only_the_top_blocks(tiny_model_dir, tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    summary = train_sft(sft_config(tmp_path, tiny_model_dir, lora=True, lora_rank=4, lora_layers=1,
                                   learning_rate=1e-2))
    merged = AutoModelForCausalLM.from_pretrained(summary["final"]).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    top = base.config.num_hidden_layers - 1
    changed = {n for n, tensor in base.state_dict().items() if not torch.equal(tensor, merged[n])}
    assert changed and all(n.startswith(f"model.layers.{top}.") and "proj" in n for n in changed), changed
    assert {n.split(".")[3] for n in changed} == {"self_attn", "mlp"}  # every linear layer of that block


@pytest.mark.parametrize("settings, message", [
    ({"lora": True, "lora_layers": 0}, "lora_layers must be >= 1"),
    ({"lora_layers": 2}, "lora_layers needs lora: true"),
])
def test_lora_layers_is_checked(tiny_model_dir, tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        sft_config(tmp_path, tiny_model_dir, **settings).validate()


def test_examples_longer_than_max_length_are_dropped_not_truncated(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = sft_rows(2)
    rows[1]["completion"][0]["content"] *= 20
    kept, dropped = drop_too_long(rows, tokenizer, max_length=128)
    assert kept == rows[:1] and dropped == 1
    write_jsonl(tmp_path / "long.jsonl", rows[1:])
    with pytest.raises(ValueError, match="longer than max_length=128"):
        build_trainer(sft_config(tmp_path, tiny_model_dir, data=str(tmp_path / "long.jsonl")))


@pytest.mark.parametrize("row, message", [
    ({"prompt": "What is 1+1?", "completion": [{"role": "assistant", "content": "2"}]}, "'prompt' must be"),
    ({"prompt": [{"role": "user", "content": "1+1?"}]}, "'completion' must be"),
    ({"prompt": [{"role": "user", "content": "1+1?"}], "completion": [{"role": "user", "content": "2"}]},
     "'completion' must be one assistant message"),
    ({"prompt": [{"role": "user", "content": "1+1?"}], "completion": [{"role": "assistant", "content": "2"}],
      "tool_output_spans": [[0, 5]]}, r"'tool_output_spans' must be \[start, end\] character ranges inside the "
                                      r"completion \(1 characters\)"),
])
def test_malformed_data_names_file_and_record(tmp_path, row, message):
    path = tmp_path / "data.jsonl"
    write_jsonl(path, [sft_rows(1)[0], row])
    with pytest.raises(RecordError, match=f"data.jsonl: record 2: {message}"):
        read_sft_examples(path)


@pytest.mark.parametrize("settings, message", [
    ({"learning_rat": 0.1}, "unknown key.*learning_rat"),
    ({"data": None}, "missing data"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"lr_scheduler": "cosin"}, "lr_scheduler 'cosin' is not one of"),
    ({"lr_scheduler": "linear", "min_learning_rate": 1e-7}, "min_learning_rate needs lr_scheduler 'cosine'"),
    ({"dtype": "float16"}, "dtype must be float32 or bfloat16"),
    ({"packing": True}, "packing needs attn_implementation flash_attention_2"),
    ({"deepspeed": "missing.json"}, "deepspeed 'missing.json' is not a readable JSON file"),
])
def test_config_errors_name_the_key(tmp_path, settings, message):
    data = {"data": "sft.jsonl", "output_dir": "out", **settings}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}))
    with pytest.raises(ValueError, match=message):
        load_settings(SFTRunConfig, str(tmp_path / "sft.yaml"))


def test_overrides_win_over_the_file_and_none_keeps_the_file_value():
    config = settings_from_dict(SFTRunConfig, {"data": "a.jsonl", "output_dir": "out", "epochs": 2},
                              {"epochs": 1, "learning_rate": None, "lora": True})
    assert (config.epochs, config.learning_rate, config.lora) == (1, 2e-5, True)


def test_shipped_multi_gpu_configs_are_valid(monkeypatch):
    accelerate = yaml.safe_load((ROOT / "configs" / "accelerate" / "multi_gpu.yaml").read_text())
    assert accelerate["distributed_type"] == "MULTI_GPU" and accelerate["mixed_precision"] == "bf16"
    for stage in (2, 3):
        deepspeed = json.loads((ROOT / "configs" / "deepspeed" / f"zero{stage}.json").read_text())
        assert deepspeed["zero_optimization"]["stage"] == stage
        assert deepspeed["train_micro_batch_size_per_gpu"] == "auto"  # filled in by the Trainer from SFTRunConfig
    monkeypatch.chdir(ROOT)  # the SFT config names the DeepSpeed file relative to the repository
    for path in sorted((ROOT / "configs" / "sft").glob("*.yaml")):
        config = load_settings(SFTRunConfig, str(path))
        assert config.per_device_batch_size * config.gradient_accumulation_steps * 8 == 128  # the paper's batch


def test_cli_maps_flags_onto_the_config_file(tmp_path, monkeypatch):
    import mathloop.train.sft as sft
    from mathloop.cli import main

    seen = []
    monkeypatch.setattr(sft, "train_sft", lambda config: seen.append(config) or {"final": "x"})
    (tmp_path / "sft.yaml").write_text("data: a.jsonl\noutput_dir: out\nepochs: 2\nlearning_rate: 1.0e-5\n")
    assert main(["sft", "--config", str(tmp_path / "sft.yaml"), "--epochs", "1", "--lora", "--max-length", "512",
                 "--model", "smollm2"]) == 0
    assert (seen[0].epochs, seen[0].lora, seen[0].max_length, seen[0].model) == (1, True, 512, "smollm2")
    assert seen[0].learning_rate == 1e-5 and seen[0].data == "a.jsonl"
    assert main(["sft", "--data", "a.jsonl"]) == 2  # no output dir: a one-line error, not a traceback


def test_activation_checkpointing_uses_the_field_the_installed_transformers_has():
    """transformers 5.17 (a GPU image's) has only `gradient_checkpointing`; passing the newer name raised TypeError."""
    import dataclasses

    from trl import SFTConfig

    @dataclasses.dataclass
    class Older:
        gradient_checkpointing: bool = False

    @dataclasses.dataclass
    class Newer(Older):
        activation_checkpointing: bool = False

    assert _checkpointing_field(Older) == "gradient_checkpointing"
    assert _checkpointing_field(Newer) == "activation_checkpointing"
    field = _checkpointing_field(SFTConfig)
    args = SFTConfig(output_dir="unused", use_cpu=True, report_to="none", **{field: True})
    assert getattr(args, field) is True

