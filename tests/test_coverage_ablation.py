"""The coverage ablation's arm configs (bench/coverage_ablation.py): every arm is the base config plus the common
one-round settings plus its own changes, and a smaller scale keeps the training block and the dev split apart."""

import importlib.util
from pathlib import Path

import pytest

from mathloop.pipeline.loop import loop_config_from_dict

BENCH = Path(__file__).resolve().parents[1] / "bench" / "coverage_ablation.py"


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("coverage_ablation", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BASE = {"output_dir": "runs/x", "model": "default", "problems": "gsm8k:train", "limit": 2160, "rounds": 3,
        "problems_per_round": 718, "select": {"k": 2}, "sft": {"lora": True, "epochs": 1}}


def test_default_scale_is_the_issue_scale(ablation):
    config = ablation.arm_config(BASE, "plain", Path("out/plain"))
    assert config["rounds"] == 1 and config["dev_size"] == 200 and config["limit"] == 2360
    assert config["coverage"] == {"n": 8, "limit": 400, "temperature": 0.7, "top_p": 0.8, "max_new_tokens": 512}
    assert config["output_dir"] == "out/plain" and config["problems_per_round"] == 718
    assert "heldout_limit" not in config


def test_smaller_scale_leaves_room_for_the_dev_split(ablation):
    common = ablation.scaled(problems_per_round=240, dev_size=150, heldout_limit=500, coverage_limit=200)
    config = ablation.arm_config(BASE, "negatives", Path("o/negatives"), common)
    # the round's block, then the dev split, then a margin for problems removed by decontamination
    assert config["limit"] == 240 + 150 + 10 and config["problems_per_round"] == 240 and config["dev_size"] == 150
    assert config["heldout_limit"] == 500 and config["coverage"]["limit"] == 200
    # the arm's changes merge into the base sections key by key
    assert config["select"] == {"k": 2, "negatives": 1} and config["sft"] == {"lora": True, "epochs": 1,
                                                                            "negative_weight": 1.0}
    assert ablation.COMMON["coverage"]["limit"] == 400  # scaling does not change the defaults


@pytest.mark.parametrize("arm", ["plain", "interpolate", "interpolate-half", "negatives", "difficulty", "explore"])
def test_every_arm_is_a_valid_loop_config(ablation, arm, tmp_path):
    common = ablation.scaled(problems_per_round=240, dev_size=150, heldout_limit=500, coverage_limit=200)
    config = ablation.arm_config(BASE, arm, tmp_path / arm, common)
    loaded = loop_config_from_dict(config)
    assert loaded.rounds == 1 and loaded.dev_size == 150 and loaded.heldout_limit == 500
