"""Every stage's settings dataclass is the source of its command's flags: each field has a flag with help."""

import argparse
import dataclasses

import pytest

from mathloop import cli


def _settings_parsers(parser, path=()):
    """(command path, parser, settings class) for every command and action that reads a settings class."""
    if getattr(parser, "settings_class", None) is not None:
        yield " ".join(path), parser, parser.settings_class
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _settings_parsers(child, (*path, name))


@pytest.fixture(scope="module")
def parser():
    return cli.build_parser()


def test_every_settings_field_has_a_flag_with_help(parser):
    found = list(_settings_parsers(parser))
    commands = {command for command, _, _ in found}
    assert {"eval", "sample", "select", "loop", "grpo", "sft", "rm train", "synthesize", "corpus build",
            "corpus qa"} <= commands
    missing = []
    for command, p, cls in found:
        helps = {action.dest: action.help for action in p._actions}
        for f in dataclasses.fields(cls):
            if f.name not in helps:
                missing.append(f"{command}: {cls.__name__}.{f.name} has no flag")
            elif not (helps[f.name] or "").strip() or helps[f.name].startswith("(default"):
                missing.append(f"{command}: {cls.__name__}.{f.name} has no help (metadata={{'help': ...}})")
    assert not missing, "\n".join(missing)


def test_generated_flags_parse_to_settings(parser):
    """Flags made from fields: a number, a switch, --x/--no-x for a bool whose default is not False, a mapping as
    JSON, comma-separated lists; not given, they are None (the YAML value or the field's default applies)."""
    from mathloop.config import flag_overrides
    from mathloop.train.grpo import GRPOConfig
    from mathloop.train.sft import SFTRunConfig

    args = parser.parse_args(["grpo", "--weight-decay", "0.1", "--vllm-args", '{"gpu_memory_utilization": 0.4}',
                              "--overlong-buffer", "64"])
    given = flag_overrides(args, GRPOConfig)
    assert given["weight_decay"] == 0.1 and given["overlong_buffer"] == 64
    assert given["vllm_args"] == {"gpu_memory_utilization": 0.4}
    assert "max_grad_norm" not in given
    args = parser.parse_args(["sft", "--no-bf16", "--packing", "--lr-scheduler", "linear"])
    assert flag_overrides(args, SFTRunConfig) | {} == {"bf16": False, "packing": True, "lr_scheduler": "linear"}
    args = parser.parse_args(["corpus", "build", "--decontaminate-benchmarks", "gsm8k,math500", "--no-benchmark-seeds"])
    assert args.decontaminate_benchmarks == ["gsm8k", "math500"] and args.benchmark_seeds is False


@pytest.mark.parametrize("argv, message", [
    (["grpo", "--vllm-args", "[1]"], "--vllm-args: expected a JSON object"),
    (["grpo", "--weight-decay", "much"], "--weight-decay: invalid float value"),
])
def test_generated_flags_refuse_bad_values(parser, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


# The resume keys of each stage as they were written by hand before they came from field metadata.
HAND_WRITTEN_RESUME_KEYS = {
    "mathloop.pipeline.evaluate": {"backend", "max_new_tokens", "max_tool_calls", "min_p", "mode", "model", "n", "seed",
                                   "shots", "split", "temperature", "top_k", "top_p"},
    "mathloop.pipeline.evolve": {"model", "variants_per_seed", "n_answers", "min_agreement", "seed", "operations",
                                 "evolve_sampling", "answer_sampling"},
    "mathloop.pipeline.sample": {"hard_max_correct", "hard_n", "hard_temperature", "max_new_tokens", "min_p", "mode",
                                 "model", "n", "num_shards", "problems", "seed", "temperatures", "top_k", "top_p"},
    "mathloop.train.grpo": {"alpha", "benchmark", "group_size", "limit", "lora", "lora_alpha", "lora_layers",
                            "lora_rank", "mode", "model", "queries", "queries_per_step", "reward", "rm", "seed",
                            "selection_high", "selection_low", "selection_n", "selection_samples", "split"},
    "mathloop.train.rm": {"decontaminate", "epochs", "fill_samples", "group_size", "groups_per_batch",
                          "heldout_fraction", "lora", "lora_layers", "lora_rank", "max_ratio", "model", "samples",
                          "seed"},
    "mathloop.train.sft": {"bf16", "data", "dtype", "epochs", "gradient_accumulation_steps", "learning_rate", "lora",
                           "lora_alpha", "lora_layers", "lora_rank", "lr_scheduler", "max_length", "min_learning_rate",
                           "model", "negative_floor", "negative_weight", "packing", "per_device_batch_size", "seed",
                           "warmup_ratio"},
}


@pytest.mark.parametrize("module", sorted(HAND_WRITTEN_RESUME_KEYS))
def test_resume_keys_from_field_metadata_equal_the_hand_written_lists(module):
    import importlib

    from mathloop.config import NOT_RESUME_KEYS

    keys = importlib.import_module(module)._RESUME_KEYS
    assert len(keys) == len(set(keys)) and set(keys) == HAND_WRITTEN_RESUME_KEYS[module]
    assert not set(keys) & NOT_RESUME_KEYS


def test_synthesize_resume_keys_are_the_settings_that_change_its_record():
    """`mathloop synthesize` records the model and `EvolutionSettings`; the fields of its settings marked as resume
    keys are exactly those that change that record (the docs' resume column is read from them)."""
    import dataclasses as dc

    from mathloop.config import resume_keys
    from mathloop.pipeline.evolve import OPERATIONS, SynthesizeConfig

    def record(config):
        return {"model": config.model, **dc.asdict(config.evolution())}

    base = SynthesizeConfig(seeds="seeds.jsonl", out="kept.jsonl")
    other = {"seeds": "other.jsonl", "out": "other.jsonl", "model": "smollm2", "backend": "hf",
             "backend_args": {"batch_size": 2}, "variants_per_seed": 1, "n_answers": 5, "min_agreement": 0.75,
             "operations": list(OPERATIONS)[:2], "max_new_tokens": 100, "evolve_max_new_tokens": 100, "seed": 7,
             "chunk_size": 3, "decontaminate": True, "data_dir": "data"}
    assert set(other) == {f.name for f in dc.fields(SynthesizeConfig)}
    changing = {name for name, value in other.items() if record(dc.replace(base, **{name: value})) != record(base)}
    assert changing == set(resume_keys(SynthesizeConfig))


def test_options_doc_lists_every_field_and_is_current(parser):
    """docs/options.md is generated from the settings classes (scripts/options_doc.py): it lists every field of
    every command with a settings class, and a field added without regenerating it fails here."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "options.md").read_text(encoding="utf-8")
    for command, p, cls in _settings_parsers(parser):
        section = text.split(f"## mathloop {command} ({cls.__name__})\n", 1)[-1].split("\n## ", 1)[0]
        missing = [f.name for f in dataclasses.fields(cls) if f"| `{f.name}` |" not in section]
        assert not missing, f"docs/options.md, mathloop {command}: no row for {missing}"
    assert text == cli.settings_markdown(parser), "docs/options.md is not current: run python scripts/options_doc.py"


def test_a_new_trainer_option_is_one_field(tmp_path):
    """One field with help and resume metadata gives the flag with its help, the YAML key, the run record's
    config and resume keys, the resume check and the docs row; nothing else is written for it."""
    from mathloop.config import add_field_flags, flag_overrides, load_settings, resume_keys
    from mathloop.runs import check_run_record, new_run_record
    from mathloop.train.sft import SFTRunConfig

    @dataclasses.dataclass
    class NextSFT(SFTRunConfig):
        new_knob: float = dataclasses.field(default=0.5, metadata={"help": "a new knob", "resume": True})

    p = argparse.ArgumentParser(prog="mathloop sft")
    p.settings_class = NextSFT
    assert "new_knob" in add_field_flags(p, NextSFT)
    assert "a new knob (default: 0.5)" in " ".join(p.format_help().split())
    yaml_file = tmp_path / "sft.yaml"
    yaml_file.write_text("data: d.jsonl\noutput_dir: out\nnew_knob: 0.6\n")
    assert load_settings(NextSFT, str(yaml_file)).new_knob == 0.6
    config = load_settings(NextSFT, str(yaml_file), flag_overrides(p.parse_args(["--new-knob", "0.7"]), NextSFT))
    assert config.new_knob == 0.7 and "new_knob" in resume_keys(NextSFT)
    record = new_run_record(config, kind="sft", resume_keys=resume_keys(NextSFT))
    assert record["config"]["new_knob"] == 0.7 and "new_knob" in record["resume_keys"]
    with pytest.raises(ValueError, match=r"new_knob: 0.7 -> 0.6"):
        check_run_record(record, dataclasses.replace(config, new_knob=0.6), resume_keys(NextSFT))
    assert "| `new_knob` | `--new-knob` | `0.5` | yes | a new knob |" in cli.settings_markdown(p)
