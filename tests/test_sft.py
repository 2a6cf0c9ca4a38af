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
    assert run["data"] == {"examples": 4, "wrong_examples": 0, "dropped_too_long": 0, "executor_output_masked": True}


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
def test_lora_training_writes_a_merged_standalone_model(tiny_model_dir, tmp_path, recwarn):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    summary = train_sft(sft_config(tmp_path, tiny_model_dir, lora=True, lora_rank=4, learning_rate=1e-2,
                                   gradient_checkpointing=True))
    # transformers' deprecated alias, read by peft and TRL, is not the user's to fix (it printed twice per run)
    assert not [w for w in recwarn if "is_gradient_checkpointing" in str(w.message)]
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



# ---- learning from wrong responses (mathloop.train.sft_loss) -----------------------------------------------------

def test_the_wrong_term_is_bounded_and_stops_pushing_under_the_floor():
    from mathloop.train.sft_loss import sft_token_loss

    logp = torch.log(torch.tensor([[0.9, 0.02, 1e-9]])).requires_grad_()
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss = sft_token_loss(logp, mask, torch.tensor([-1.0]), negative_weight=1.0, negative_floor=0.05)
    loss.backward()
    # log 0.9 counts, the two tokens under the floor count as log 0.05, whatever their probability (even 1e-9)
    assert loss.item() == pytest.approx((torch.log(torch.tensor(0.9)).item() + 2 * torch.log(torch.tensor(0.05)).item()) / 3)
    assert logp.grad[0].tolist() == pytest.approx([1 / 3, 0.0, 0.0])
    # right rows: plain negative log-likelihood, a token mean
    right = sft_token_loss(torch.log(torch.tensor([[0.5, 0.5]])), torch.tensor([[True, False]]), torch.tensor([1.0]))
    assert right.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


@pytest.mark.parametrize("rewards, message", [([0.5], "must be \\+1 or -1"), ([2.0], "must be \\+1 or -1")])
def test_rewards_other_than_plus_or_minus_one_are_refused(rewards, message):
    from mathloop.train.sft_loss import sft_token_loss

    with pytest.raises(ValueError, match=message):
        sft_token_loss(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), torch.tensor(rewards))


def wrong_rows(n: int = 4) -> list[dict]:
    return [{**row, "completion": [{"role": "assistant", "content": f"Maybe it is {3 + i}? I guess {3 + i}."}],
             "reward": -1} for i, row in enumerate(sft_rows(n))]


@pytest.mark.training
def test_the_trainer_loss_is_the_token_mean_nll_of_the_completion(tiny_model_dir, tmp_path):
    """Right rows only: the trainer's loss equals the mean negative log-likelihood of the completion tokens,
    computed here from the model's full logits."""
    trainer, _ = build_trainer(sft_config(tmp_path, tiny_model_dir))
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["reward"].tolist() == [1.0] * 4
    loss = trainer.compute_loss(trainer.model, dict(batch))
    logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                 ignore_index=-100)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.training
def test_wrong_rows_are_pushed_down_and_refused_without_a_negative_weight(tiny_model_dir, tmp_path):
    data = tmp_path / "mixed.jsonl"
    write_jsonl(data, sft_rows(4) + wrong_rows(4))
    with pytest.raises(ValueError, match="4 rows with reward -1.*negative_weight"):
        build_trainer(sft_config(tmp_path, tiny_model_dir, data=str(data)))

    def wrong_logp(model_dir) -> float:
        """Summed log-probability of the wrong completions under a model."""
        config = sft_config(tmp_path / "probe", tiny_model_dir, data=str(data), model=str(model_dir),
                            negative_weight=1.0)
        trainer, _ = build_trainer(config)
        from mathloop.train.logprobs import completion_logprobs

        total = 0.0
        for batch in trainer.get_train_dataloader():
            mask = (batch["labels"][:, 1:] != -100) & (batch["reward"] < 0)[:, None]
            with torch.no_grad():
                total += completion_logprobs(trainer.model, batch["input_ids"], batch["attention_mask"], mask).sum().item()
        return total

    right_only = tmp_path / "right.jsonl"
    write_jsonl(right_only, sft_rows(4) * 2)  # as many rows and steps as the mixed file
    plain = train_sft(sft_config(tmp_path, tiny_model_dir, data=str(right_only), output_dir=str(tmp_path / "plain"),
                                 epochs=4))
    # the random model gives every token about 1/300: a floor under that lets the wrong term act
    both = train_sft(sft_config(tmp_path, tiny_model_dir, data=str(data), negative_weight=1.0, negative_floor=1e-6,
                                epochs=4))
    run = json.loads((tmp_path / "sft" / "run.json").read_text())
    assert run["data"]["wrong_examples"] == 4 and run["config"]["negative_weight"] == 1.0
    # the same right rows learned, and the wrong answers less likely than after plain SFT
    assert wrong_logp(both["final"]) < wrong_logp(plain["final"]) - 1.0


@pytest.mark.parametrize("reward", ["-1", 0, True, 0.5])
def test_a_reward_other_than_plus_or_minus_one_names_the_record(tmp_path, reward):
    write_jsonl(tmp_path / "bad.jsonl", [sft_rows(1)[0], {**sft_rows(1)[0], "reward": reward}])
    with pytest.raises(RecordError, match="bad.jsonl: record 2: 'reward' must be 1"):
        read_sft_examples(tmp_path / "bad.jsonl")


# ---- interpolation (mathloop.train.interpolate) -----------------------------------------------------------------

def test_interpolation_is_the_base_at_zero_and_the_tuned_model_at_one():
    from mathloop.train.interpolate import interpolate_weights

    base = {"w": torch.tensor([1.0, -2.0], dtype=torch.bfloat16), "steps": torch.tensor([3])}
    tuned = {"w": torch.tensor([2.0, 2.0]), "steps": torch.tensor([5])}
    assert interpolate_weights(base, tuned, 0.0)["w"].tolist() == [1.0, -2.0]
    assert interpolate_weights(base, tuned, 1.0)["w"].tolist() == [2.0, 2.0]
    half = interpolate_weights(base, tuned, 0.5)
    assert half["w"].tolist() == [1.5, 0.0] and half["w"].dtype == torch.float32 and half["steps"].item() == 5
    with pytest.raises(ValueError, match="only in the tuned model: extra"):
        interpolate_weights(base, {**tuned, "extra": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match="finite"):
        interpolate_weights(base, tuned, float("nan"))


@pytest.mark.training
def test_interpolated_lora_model_equals_the_adapter_scaled_before_the_merge(tiny_model_dir, tmp_path):
    """The interpolated merged model is the base with the LoRA update scaled by alpha: checked on the logits of a
    model merged with its adapter's B matrices scaled by alpha."""
    from peft import PeftModel

    from mathloop.cli import main
    from mathloop.models import load_causal_lm

    summary = train_sft(sft_config(tmp_path, tiny_model_dir, lora=True, lora_rank=4, lora_alpha=8, epochs=1))
    assert main(["interpolate", "--base", str(tiny_model_dir), "--tuned", summary["final"], "--alpha", "0.3",
                 "--out", str(tmp_path / "mixed")]) == 0
    mixed = load_causal_lm(str(tmp_path / "mixed"), torch.float32)
    scaled = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_dir), torch.float32), str(tmp_path / "sft" / "adapter"))
    with torch.no_grad():
        for name, parameter in scaled.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.3)
    scaled = scaled.merge_and_unload()
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        assert torch.allclose(mixed(ids).logits, scaled(ids).logits, atol=1e-5)
        base_logits = load_causal_lm(str(tiny_model_dir), torch.float32)(ids).logits
        assert not torch.allclose(mixed(ids).logits, base_logits, atol=1e-4)
