"""The coverage ablation's arm configs (bench/coverage_ablation.py): every arm is the base config plus the common
one-round settings plus its own changes, and a smaller scale keeps the training block and the dev split apart."""

import importlib.util
import json
from pathlib import Path

import pytest

from mathloop.pipeline.loop import loop_config_from_dict

BENCH = Path(__file__).resolve().parents[1] / "bench" / "coverage_ablation.py"


def load_ablation():
    spec = importlib.util.spec_from_file_location("coverage_ablation", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ablation():
    return load_ablation()


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


@pytest.mark.parametrize("arm", list(load_ablation().ARMS))
def test_every_arm_is_a_valid_loop_config(ablation, arm, tmp_path):
    common = ablation.scaled(problems_per_round=240, dev_size=150, heldout_limit=500, coverage_limit=200)
    config = ablation.arm_config(BASE, arm, tmp_path / arm, common)
    loaded = loop_config_from_dict(config)
    assert loaded.rounds == 1 and loaded.dev_size == 150 and loaded.heldout_limit == 500


def test_combination_arms_interpolate_the_model_of_their_arm(ablation):
    assert ablation.trainer_arm("interpolate") == "plain" and ablation.trainer_arm("interpolate-half") == "plain"
    assert ablation.trainer_arm("negatives-half") == "negatives"
    assert ablation.trainer_arm("difficulty-half") == "difficulty"
    for arm in ("plain", "plain-seed1", "negatives", "negatives-light", "difficulty", "explore", "rm-ranked", "grpo"):
        assert ablation.trainer_arm(arm) is None


def make_round(folder: Path, *, sft: bool = True) -> None:
    """A finished loop folder's round 0 and round 1, with a marker file in each copied part."""
    for part in ("round-0/eval", "round-0/coverage", "round-1/samples/samples", "round-1/eval"):
        (folder / part).mkdir(parents=True, exist_ok=True)
        (folder / part / "marker").write_text(str(folder))
    (folder / "round-0" / "coverage" / "metrics.json").write_text("{}")
    (folder / "round-0" / "stage_seconds.json").write_text('{"eval": 60, "coverage": 600}')
    (folder / "round-1" / "samples" / "samples" / "pass-0.jsonl").write_text("")
    for name in ("samples.jsonl", "problems.jsonl", "select.json", "sft_data.jsonl"):
        (folder / "round-1" / name).write_text(str(folder))
    stages = {"sample": 500, "select": 1, "eval": 200, "coverage": 800}
    if sft:
        (folder / "round-1" / "sft").mkdir()
        (folder / "round-1" / "sft" / "marker").write_text(str(folder))
        stages["sft"] = 1200
    (folder / "round-1" / "stage_seconds.json").write_text(json.dumps(stages))


def test_a_combination_arm_takes_samples_rows_and_sft_from_its_arm_but_evaluates_itself(ablation, tmp_path):
    make_round(tmp_path / "plain")
    make_round(tmp_path / "negatives")
    arm_dir = tmp_path / "negatives-half"
    config = ablation.arm_config(BASE, "negatives-half", arm_dir)
    ablation.prepare(tmp_path / "plain", arm_dir, config, BASE, tmp_path / "negatives")
    round1 = arm_dir / "round-1"
    assert (round1 / "sft" / "marker").read_text() == str(tmp_path / "negatives")
    assert (round1 / "samples.jsonl").read_text() == str(tmp_path / "negatives")
    assert (round1 / "sft_data.jsonl").read_text() == str(tmp_path / "negatives")
    assert not (round1 / "eval").exists()  # the interpolated model is evaluated by the arm itself
    assert (arm_dir / "round-0" / "eval" / "marker").read_text() == str(tmp_path / "plain")
    # the copied stages keep their wall seconds; the stages the arm runs itself start from none
    assert json.loads((round1 / "stage_seconds.json").read_text()) == {"sample": 500, "select": 1, "sft": 1200}


def test_an_arm_with_its_own_rows_takes_only_the_samples(ablation, tmp_path):
    make_round(tmp_path / "plain")
    arm_dir = tmp_path / "rm-ranked"
    config = ablation.arm_config(BASE, "rm-ranked", arm_dir)
    ablation.prepare(tmp_path / "plain", arm_dir, config, BASE)
    round1 = arm_dir / "round-1"
    assert (round1 / "samples" / "samples" / "marker").exists() and (round1 / "samples.jsonl").exists()
    assert not (round1 / "sft").exists() and not (round1 / "select.json").exists() and not (round1 / "eval").exists()
    assert config["select"]["vote"] == "rm-weighted" and config["reward_model"]["enabled"] is True


def test_a_combination_arm_refuses_to_start_before_its_arm_has_trained(ablation, tmp_path):
    make_round(tmp_path / "plain")
    make_round(tmp_path / "negatives", sft=False)
    with pytest.raises(SystemExit, match="negatives arm, which has not finished its SFT"):
        ablation.run_arm(tmp_path / "plain", tmp_path, "negatives-half", BASE, None, ablation.COMMON)


def test_an_arm_with_the_same_rows_takes_the_model_and_its_evaluations_under_its_own_folder(ablation, tmp_path):
    """The grpo arm trains on plain's round: it copies the SFT model and its evaluations, and their run records name
    the copies (the loop refuses to resume an evaluation whose record names another model)."""
    make_round(tmp_path / "plain")
    record = {"kind": "eval", "config": {"model": str(tmp_path / "plain" / "round-1" / "sft" / "final"),
                                         "out": str(tmp_path / "plain" / "round-1" / "eval"),
                                         "benchmarks": [str(tmp_path / "plain-other" / "x")]}}
    (tmp_path / "plain" / "round-1" / "eval" / "run.json").write_text(json.dumps(record))
    arm_dir = tmp_path / "grpo"
    config = ablation.arm_config(BASE, "grpo", arm_dir)
    ablation.prepare(tmp_path / "plain", arm_dir, config, BASE)
    round1 = arm_dir / "round-1"
    assert (round1 / "sft" / "marker").read_text() == str(tmp_path / "plain")
    assert (round1 / "eval" / "marker").exists() and (round1 / "select.json").exists()
    copied = json.loads((round1 / "eval" / "run.json").read_text())["config"]
    assert copied["model"] == str(arm_dir / "round-1" / "sft" / "final")
    assert copied["out"] == str(arm_dir / "round-1" / "eval")
    assert copied["benchmarks"] == [str(tmp_path / "plain-other" / "x")]  # only paths inside the origin move
    # the source's own record is left as it was
    assert json.loads((tmp_path / "plain" / "round-1" / "eval" / "run.json").read_text()) == record
    assert config["grpo"]["enabled"] is True and config["grpo"]["overlap_rollouts"] is True


def _eval_folder(folder: Path, benchmark: str, right: list[list[bool]]) -> None:
    """A `mathloop eval` folder as the table reads it: graded samples per problem and the metrics file."""
    (folder / "samples").mkdir(parents=True)
    rows = [{"problem_id": f"p{i}", "sample_index": j, "verdict": "correct" if ok else "incorrect",
             "pred": "1" if ok else f"{i + 2}"} for i, oks in enumerate(right) for j, ok in enumerate(oks)]
    (folder / "samples" / f"{benchmark}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    share = sum(map(sum, right)) / sum(map(len, right))
    metrics = {key: {"mean": share} for key in ("acc", "pass@1", "maj@8", "pass@8")}
    (folder / "metrics.json").write_text(json.dumps({"benchmarks": {benchmark: metrics}}))


def test_the_table_pairs_every_arm_with_the_reference_arm_asked_for(ablation, tmp_path):
    """`--reference plain-seed1`: the "vs" columns pair each arm with the other SFT seed, that arm's own cell is
    empty, and plain is paired with it like any arm (here plain solved 4 problems more on greedy: 0 / 4)."""
    greedy = {"plain": [True] * 6 + [False] * 4, "plain-seed1": [True] * 2 + [False] * 8,
              "difficulty": [True] * 3 + [False] * 7}
    for arm, right in greedy.items():
        for round_ in ("round-0", "round-1"):
            folder = tmp_path / arm / round_
            _eval_folder(folder / "eval", "synthetic", [[ok] for ok in (right if round_ == "round-1" else [False] * 10)])
            _eval_folder(folder / "coverage", "coverage", [[ok] * 8 for ok in right])
    text = ablation.table(tmp_path, ["plain", "plain-seed1", "difficulty"], reference="plain-seed1")
    header = next(line for line in text.splitlines() if line.startswith("| arm"))
    assert header.count("vs plain-seed1") == 4 and "vs plain |" not in header
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines() if line.startswith("| p")
            or line.startswith("| d")}
    assert rows["plain-seed1"][3] == ""  # no pair with itself
    assert rows["plain"][1] == "60.0" and "+40.0" in rows["plain"][3] and "0 / 4" in rows["plain"][3]
    assert "+10.0" in rows["difficulty"][3] and "0 / 1" in rows["difficulty"][3]
    assert ablation.table(tmp_path, ["plain", "difficulty"], reference="plain-seed1").count("vs plain |") == 4
