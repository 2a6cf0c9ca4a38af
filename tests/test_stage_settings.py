"""Every stage's settings are one dataclass: YAML sets every field, each flag overrides one field and restates no
default (its argparse default is None; the help text shows the dataclass's)."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from mathloop.cli import BACKEND_FLAGS, build_parser
from mathloop.config import field_default, settings_from_dict


def stage_classes():
    from mathloop.pipeline.evolve import SynthesizeConfig
    from mathloop.pipeline.evaluate import EvalConfig
    from mathloop.pipeline.loop import LoopConfig
    from mathloop.pipeline.sample import SampleConfig
    from mathloop.pipeline.select import SelectConfig
    from mathloop.train.grpo import GRPOConfig
    from mathloop.train.rm import RMTrainConfig
    from mathloop.train.sft import SFTRunConfig

    # command (argv before the flags) -> its settings class
    return {("eval",): EvalConfig, ("sample",): SampleConfig, ("select",): SelectConfig, ("sft",): SFTRunConfig,
            ("rm", "train"): RMTrainConfig, ("grpo",): GRPOConfig, ("synthesize",): SynthesizeConfig,
            ("loop",): LoopConfig}


STAGES = ["eval", "sample", "select", "sft", "rm train", "grpo", "synthesize", "loop"]
# Flags that are not settings: where the settings come from, and how the command talks to the terminal.
NOT_SETTINGS = {"help", "config", "quiet"}


def command_parser(command: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser(command[0])
    for name in command:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


def valid_value(cls, name: str):
    """A value of field `name` that its type accepts (the default when there is one)."""
    default = field_default(cls, name)
    if default is not dataclasses.MISSING:
        return default
    hint = typing.get_type_hints(cls)[name]
    return ["x.jsonl"] if typing.get_origin(hint) is list else "x.jsonl"


@pytest.mark.parametrize("stage", STAGES)
def test_yaml_accepts_every_field_of_the_stage(stage):
    cls = stage_classes()[tuple(stage.split())]
    data = {f.name: valid_value(cls, f.name) for f in dataclasses.fields(cls)}
    if stage == "grpo":
        data.update(queries="q.jsonl", reward="verifier")  # exactly one query source; no reward model needed
    settings = settings_from_dict(cls, data, source=f"{stage}.yaml")
    assert {f.name for f in dataclasses.fields(cls)} == set(vars(settings))
    with pytest.raises(ValueError, match=f"{stage}.yaml: unknown key"):
        settings_from_dict(cls, {**data, "not_a_setting": 1}, source=f"{stage}.yaml")


@pytest.mark.parametrize("stage", STAGES)
def test_every_flag_sets_a_field_and_restates_no_default(stage):
    command = tuple(stage.split())
    cls = stage_classes()[command]
    fields = {f.name for f in dataclasses.fields(cls)}
    backend = {key for keys in BACKEND_FLAGS.values() for key in keys} if "backend_args" in fields else set()
    flags = [a for a in command_parser(command)._actions if a.dest not in NOT_SETTINGS]
    assert flags
    for action in flags:
        assert action.dest in fields | backend, f"{stage} {action.option_strings}: no {cls.__name__} field"
        assert action.default is None, f"{stage} {action.option_strings}: restates a default"
        default = field_default(cls, action.dest) if action.dest in fields else None
        if action.dest in fields and default not in (None, [], {}, dataclasses.MISSING) and action.nargs != 0:
            shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
            assert f"(default: {shown})" in action.help, f"{stage} {action.option_strings}: {action.help}"


def test_a_flag_wins_over_the_yaml_file_and_an_absent_flag_keeps_it(tmp_path):
    from mathloop.config import flag_overrides, load_settings
    from mathloop.pipeline.sample import SampleConfig

    path = tmp_path / "sample.yaml"
    path.write_text("problems: gsm8k:train\nout: run\nn: 3\ntop_p: 0.9\n")
    args = command_parser(("sample",)).parse_args(["--n", "5"])
    config = load_settings(SampleConfig, str(path), flag_overrides(args, SampleConfig))
    assert (config.n, config.top_p, config.max_new_tokens) == (5, 0.9, field_default(SampleConfig, "max_new_tokens"))


def test_max_new_tokens_of_eval_and_sample_is_the_sampling_default():
    from mathloop.backends.base import SamplingParams
    from mathloop.pipeline.evaluate import EvalConfig
    from mathloop.pipeline.sample import SampleConfig

    assert EvalConfig(out="o").max_new_tokens == SampleConfig(problems="p", out="o").max_new_tokens \
        == SamplingParams().max_new_tokens


def test_ray_settings_come_from_flags_and_a_loop_configs_ray_section(tmp_path):
    from mathloop.pipeline.loop import loop_config_from_dict

    args = build_parser().parse_args(["sample", "--problems", "p.jsonl", "--out", "o", "--ray", "--ray-replicas", "3"])
    assert (args.ray_address, args.ray_replicas, args.ray_num_gpus) == ("local", 3, None)  # --ray alone: local
    assert build_parser().parse_args(["eval", "--ray", "ray://head:10001"]).ray_address == "ray://head:10001"
    loop = loop_config_from_dict({"output_dir": str(tmp_path), "ray": {"address": "auto", "replicas": 4},
                                  "eval": {"ray_replicas": 2}})
    sample, evaluation = loop.sample_config("m", tmp_path / "r1", 1), loop.eval_config("m", tmp_path / "r1")
    assert (sample.ray_address, sample.ray_replicas) == ("auto", 4)
    assert (evaluation.ray_address, evaluation.ray_replicas) == ("auto", 2)  # the stage's own key wins
    with pytest.raises(ValueError, match="loop: ray: unknown key.*replica\\b"):
        loop_config_from_dict({"output_dir": str(tmp_path), "ray": {"replica": 4}})
