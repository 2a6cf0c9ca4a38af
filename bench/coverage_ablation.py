"""Ablation of the settings against narrowing (issue 30): one loop round per arm, every arm trained from the SAME
round-1 samples, each evaluated greedy on the held-out set and with k samples on the coverage subset, and paired
with round 0 and with plain rejection-sampling SFT.

The source is a loop folder whose round 1 has been sampled; by default it is the plain arm's own folder, which runs
first from scratch (round 0's evaluations, round 1's samples, plain SFT). For each other arm the script makes `<out>/<arm>/`, copies in the source's round-0 evaluations and round-1
samples (arms that sample more, `hard_n`, copy only the first pass and sample the rest themselves), writes
`<out>/<arm>/arm.yaml` (the base config with the arm's changes) and runs `mathloop loop` on it; an arm whose select
and sft settings are the source's also takes the source's SFT and evaluation (the same rows give the same model).
Every step resumes: run the same command again after a kill. Arms run one after another; `--arms` picks some.
The combination arms (`negatives-half`, `difficulty-half`) interpolate the SFT model of their arm, which must have
trained first; the `grpo` arm continues the plain arm's round with a GRPO stage, and its row is that stage.

Then it prints the table: per arm the greedy accuracy and the coverage metrics (mean share of correct samples,
maj@k, pass@k), each as a change against round 0 and against the plain arm on the same problems (intervals, b / c,
exact McNemar p), and the wall minutes per stage, with the CPU named. `--table-only` prints it from what exists.

The scale flags (`--problems-per-round`, `--dev-size`, `--heldout-limit`, `--coverage-limit`) make a smaller
ablation fit one session on 2 cores; the table names the scale it ran at.

Usage: python bench/coverage_ablation.py --out runs/ablation [--arms plain,interpolate] [--source runs/cov]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import mathloop  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import yaml  # noqa: E402

from mathloop.config import read_yaml_mapping  # noqa: E402
from mathloop.runs import read_json, write_json  # noqa: E402

# The settings every arm shares on top of the base config: one round, a dev split of 200 training problems after
# the ones the rounds use, and the coverage evaluation (8 samples on the first 400 held-out problems).
COMMON = {"rounds": 1, "limit": 2360, "dev_size": 200,
          "coverage": {"n": 8, "limit": 400, "temperature": 0.7, "top_p": 0.8, "max_new_tokens": 512}}
# Each arm's changes to the base config's sections.
ARMS: dict[str, dict] = {
    "plain": {},
    "interpolate": {"interpolate": {"alphas": [0.25, 0.5, 0.75, 1.0]}},
    # halfway, whatever the dev split prefers: what interpolation does to coverage when it is used
    "interpolate-half": {"interpolate": {"alphas": [0.5]}},
    "negatives": {"select": {"negatives": 1}, "sft": {"negative_weight": 1.0}},
    # weight 1.0 broke the demo model (greedy 42.5 -> 15.4): on a token that right and wrong rows share, the two terms
    # cancel, so the wrong rows won wherever they outnumbered the right ones; at 0.1 the right rows dominate every
    # shared token. Offline (samples of the starting model, 2 epochs), the negative side is the one to keep small
    # (Asymmetric REINFORCE, arXiv 2506.20520); on-policy, Zhu et al. 2025 down-weighted the positive side instead.
    "negatives-light": {"select": {"negatives": 1}, "sft": {"negative_weight": 0.1}},
    "difficulty": {"select": {"k": 4, "difficulty": True},
                   "sample": {"hard_n": 8, "hard_max_correct": 1, "hard_temperature": 0.7}},
    "explore": {"explore": {"temperatures": [0.6, 0.8, 1.0, 1.2], "problems": 32, "target": 3}},
    # issue 32: the correct responses that become rows ranked by an RM trained on the round's own samples (the
    # settings of configs/cpu-default.yaml, groups of 4 because the round samples 4 per problem)
    "rm-ranked": {"reward_model": {"enabled": True, "group_size": 4, "lora": True, "lora_rank": 8, "lora_layers": 4,
                                   "learning_rate": 1.0e-4, "epochs": 2, "groups_per_batch": 4,
                                   "micro_batch_groups": 1, "max_length": 640, "heldout_fraction": 0.15},
                  "select": {"vote": "rm-weighted"}},
    # the control of every "vs plain" column: plain's rows, another SFT seed (data order, LoRA initialisation)
    "plain-seed1": {"sft": {"seed": 1}},
    # issue 31: LoRA in the top 4 of 24 blocks only (2.4x faster SFT steps): does it learn as much as all blocks?
    "lora-top4": {"sft": {"lora_layers": 4}},
    # issue 31: GRPO after the plain round (its model, its round-1 samples pick the queries solved 1..3 of 4), with
    # the verifier reward, beta 0, rollouts on OpenVINO (int8, one thread) overlapping the update, corrected by
    # truncated importance sampling (one step stale, int8 numerics); the GRPO stage is evaluated like a round and
    # paired with round 0 and with the plain arm's round 1 (its starting model). The
    # learning rate gives about the Adam movement of the SFT round that gained (2e-4 x 74 steps); LoRA in the top 4
    # blocks (it learned as much as all blocks in the lora-top4 arm) and no gradient checkpointing: with adapters in
    # every block and checkpointing, an update of 16 rollouts took 167 s on one thread against 48 s of rollouts.
    "grpo": {"grpo": {"enabled": True, "steps": 100, "group_size": 8, "queries_per_step": 2, "max_new_tokens": 320,
                      "lora": True, "lora_layers": 4, "learning_rate": 1.0e-4, "beta": 0.0, "reward": "verifier",
                      "rollout_backend": "openvino", "overlap_rollouts": True, "micro_batch": 4, "threads": 2,
                      "openvino_args": {"weight_format": "int8", "threads": 1}, "tis_cap": 2.0,
                      "selection_n": 4, "selection_low": 1, "selection_high": 3, "save_every": 5}},
}


# combinations: the model of the named arm, interpolated halfway (they reuse that arm's SFT: evaluations only)
ARMS |= {f"{arm}-half": ARMS[arm] | ARMS["interpolate-half"] for arm in ("negatives", "difficulty")}

GRPO_STAGE = "grpo-after-round-1"  # the loop's folder of a GRPO stage after one round


def trainer_arm(arm: str) -> str | None:
    """The arm whose SFT model this arm interpolates (its samples, rows and SFT are reused), or None when the arm
    trains a model of its own. The interpolation arms of plain rows have the plain arm."""
    changes = {section: value for section, value in ARMS[arm].items() if section != "interpolate"}
    if changes == ARMS[arm]:
        return None
    return next((other for other, value in ARMS.items() if value == changes), None)


def scaled(problems_per_round: int | None = None, dev_size: int | None = None, heldout_limit: int | None = None,
           coverage_limit: int | None = None, coverage_max_new_tokens: int | None = None) -> dict:
    """COMMON at a smaller scale: fewer problems per round (the training limit follows: the round's block, then the
    dev split, then a margin for decontamination), a smaller dev split, the first N held-out problems for greedy and
    the first M for the k-sample coverage."""
    common = copy.deepcopy(COMMON)
    if dev_size is not None:
        common["dev_size"] = dev_size
    if problems_per_round is not None:
        common["problems_per_round"] = problems_per_round
        common["limit"] = problems_per_round + common["dev_size"] + 10
    if heldout_limit is not None:
        common["heldout_limit"] = heldout_limit
    if coverage_limit is not None:
        common["coverage"]["limit"] = coverage_limit
    if coverage_max_new_tokens is not None:
        common["coverage"]["max_new_tokens"] = coverage_max_new_tokens
    return common


def arm_config(base: dict, arm: str, out: Path, common: dict | None = None) -> dict:
    """The base config with the common settings and the arm's changes (sections merged key by key)."""
    config = copy.deepcopy(base) | copy.deepcopy(common or COMMON) | {"output_dir": str(out)}
    for section, changes in ARMS[arm].items():
        config[section] = {**config.get(section, {}), **changes}
    return config


def rehome(folder: Path, origin: Path, arm_dir: Path) -> None:
    """The run records (run.json) of a stage copied from another arm's folder name the copies: the same model and
    settings, now under the arm's folder (the loop refuses to resume a stage whose record names another model)."""
    def moved(value):
        if isinstance(value, str) and value.startswith(f"{origin}/"):
            return f"{arm_dir}/{value[len(str(origin)) + 1:]}"
        if isinstance(value, dict):
            return {key: moved(item) for key, item in value.items()}
        if isinstance(value, list):
            return [moved(item) for item in value]
        return value

    for record in folder.rglob("run.json"):
        write_json(record, moved(read_json(record)))


def prepare(source: Path, arm_dir: Path, config: dict, base: dict, trainer: Path | None = None) -> None:
    """Copy the source's round-0 evaluations and round-1 samples into the arm's folder (once), with the wall
    seconds of the stages copied. Round 0's coverage evaluation comes from the first arm that made it. With a
    `trainer` (the folder of the arm whose SFT this arm interpolates), round 1's samples, rows and SFT come from it."""
    if (arm_dir / "round-1" / "problems.jsonl").exists():
        return
    (arm_dir / "round-1").mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "round-0", arm_dir / "round-0", dirs_exist_ok=True)
    covered = sorted(arm_dir.parent.glob("*/round-0/coverage/metrics.json"))
    if covered and not (arm_dir / "round-0" / "coverage").exists():
        shutil.copytree(covered[0].parent, arm_dir / "round-0" / "coverage")
        made = read_json(covered[0].parents[1] / "stage_seconds.json")
        seconds = read_json(arm_dir / "round-0" / "stage_seconds.json")
        (arm_dir / "round-0" / "stage_seconds.json").write_text(json.dumps({**seconds, "coverage": made["coverage"]}))
    origin = trainer or source
    samples = origin / "round-1" / "samples"
    if (origin / "round-1" / "stage_seconds.json").exists():
        shutil.copy2(origin / "round-1" / "stage_seconds.json", arm_dir / "round-1")
    if trainer is None and config.get("explore"):  # the arm picks its own temperature: it samples its round itself
        pass
    elif trainer is None and config.get("sample", {}).get("hard_n"):  # it samples more: the first pass only
        (arm_dir / "round-1" / "samples" / "samples").mkdir(parents=True, exist_ok=True)
        shutil.copy2(samples / "samples" / "pass-0.jsonl", arm_dir / "round-1" / "samples" / "samples")
    else:
        shutil.copytree(samples, arm_dir / "round-1" / "samples", dirs_exist_ok=True)
        shutil.copy2(origin / "round-1" / "samples.jsonl", arm_dir / "round-1")
        same_rows = all(config.get(key) == base.get(key) for key in ("select", "sft"))
        if trainer is not None or same_rows:  # the same rows: the same model
            copied = ["select.json", "sft_data.jsonl", "sft"] + \
                ([] if config.get("interpolate") else ["eval", "coverage"])
            for name in copied:
                path = origin / "round-1" / name
                if path.is_dir():
                    shutil.copytree(path, arm_dir / "round-1" / name, dirs_exist_ok=True)
                    rehome(arm_dir / "round-1" / name, origin, arm_dir)
                elif path.exists():
                    shutil.copy2(path, arm_dir / "round-1")
    shutil.copy2(origin / "round-1" / "problems.jsonl", arm_dir / "round-1")
    timed = arm_dir / "round-1" / "stage_seconds.json"
    if timed.exists():  # keep only the stages whose output was copied
        seconds = read_json(timed)
        kept = {stage: value for stage, value in seconds.items()
                if (arm_dir / "round-1" / {"sample": "samples", "select": "select.json", "sft": "sft",
                                           "eval": "eval", "coverage": "coverage"}.get(stage, "-")).exists()}
        timed.write_text(json.dumps(kept))


def run_arm(source: Path, out: Path, arm: str, base: dict, data_dir: str | None, common: dict) -> None:
    arm_dir = out / arm
    config = arm_config(base, arm, arm_dir, common)
    arm_dir.mkdir(parents=True, exist_ok=True)
    if source.resolve() != arm_dir.resolve():  # the source arm samples its own round 1
        if not (source / "round-1" / "samples.jsonl").exists():
            raise SystemExit(f"--source: {source} has no sampled round 1 (round-1/samples.jsonl); run its arm first")
        trainer = trainer_arm(arm)
        donor = out / trainer if trainer and trainer != "plain" else None  # plain: the source itself
        if donor is not None:
            from mathloop.pipeline.loop import stage_done

            if not stage_done(donor / "round-1", "sft"):
                raise SystemExit(f"{arm}: interpolates the SFT model of the {trainer} arm, which has not finished "
                                 f"its SFT in {donor}; run that arm first (--arms {trainer},{arm})")
        prepare(source, arm_dir, config, base, donor)
    (arm_dir / "arm.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "mathloop.cli", "loop", "--config", str(arm_dir / "arm.yaml")]
    if data_dir:
        command += ["--data-dir", data_dir]
    print(f"== {arm}: {' '.join(command)}", flush=True)
    subprocess.run(command, check=True)


def paired(entry: dict | None) -> str:
    from mathloop.pipeline.compare import paired_cells

    if not entry:
        return "-"
    delta, bc, p = paired_cells(entry)
    return f"{delta}, {bc}, p {p}"


def table(out: Path, arms: list[str], common: dict | None = None, reference: str = "plain") -> str:
    """The ablation table from the arms' folders (arms without a finished round are left out), each arm paired
    with round 0 and with the `reference` arm (the first finished arm when that one has not finished)."""
    from mathloop.pipeline.compare import compare_benchmark, read_eval_folder

    def outcomes(arm: str, stage: str, folder: str) -> dict:
        return read_eval_folder(out / arm / stage / folder)

    def result(arm: str) -> str:  # the arm's last stage: GRPO after the round, else the round
        return GRPO_STAGE if ARMS.get(arm, {}).get("grpo") else "round-1"

    done = [arm for arm in arms if (out / arm / result(arm) / "coverage" / "metrics.json").exists()]
    if not done:
        return "no arm has finished its round yet"
    reference = reference if reference in done else done[0]
    common = common or COMMON
    greedy_on = f"its first {common['heldout_limit']}" if common.get("heldout_limit") else "the whole"
    lines = [f"Arms from the same round-1 samples ({common.get('problems_per_round', 'all')} training problems); "
             f"greedy on {greedy_on} held-out set and {common['coverage']['n']} samples "
             f"on its first {common['coverage']['limit']} problems. Cells: value; change [95% CI], b / c, McNemar p "
             f"(mean: paired bootstrap interval) against round 0 and against the `{reference}` arm.", "",
             "| arm | greedy | vs round 0 | vs " + reference + " | mean per sample | vs round 0 | vs " + reference +
             " | maj@8 | vs round 0 | vs " + reference + " | pass@8 | vs round 0 | vs " + reference +
             " | minutes (sample / select / sft / interpolate / grpo / eval / coverage) |", "|---" * 14 + "|"]
    for arm in done:
        cells = [arm]
        for stage, name in (("eval", None), ("coverage", "coverage")):
            this = outcomes(arm, result(arm), stage)
            base0 = outcomes(arm, "round-0", stage)
            ref = outcomes(reference, "round-1", stage)
            bench = name or next(iter(this))
            vs0, vsref = compare_benchmark(base0[bench], this[bench]), compare_benchmark(ref[bench], this[bench])
            metrics = read_json(out / arm / result(arm) / stage / "metrics.json")["benchmarks"][bench]
            if stage == "eval":
                cells += [f"{100 * metrics['acc']['mean']:.1f}", paired(vs0.get("first_sample")),
                          paired(vsref.get("first_sample")) if arm != reference else ""]
                continue
            for key, metric in (("mean", "pass@1"), ("maj_at_k", "maj@8"), ("pass_at_k", "pass@8")):
                def cell(entry: dict | None) -> str:
                    if key != "mean":
                        return paired(entry)
                    return (f"{100 * entry['delta']:+.1f} [{100 * entry['ci95'][0]:+.1f}, "
                            f"{100 * entry['ci95'][1]:+.1f}]") if entry else "-"
                cells += [f"{100 * metrics[metric]['mean']:.1f}", cell(vs0.get(key)),
                          cell(vsref.get(key)) if arm != reference else ""]
        timed = out / arm / result(arm) / "stage_seconds.json"
        seconds = read_json(timed) if timed.exists() else {}
        cells.append(" / ".join(f"{seconds[s] / 60:.0f}" if s in seconds else "-"
                                for s in ("sample", "select", "sft", "interpolate", "grpo", "eval", "coverage")))
        lines.append("| " + " | ".join(cells) + " |")
    interpolation = [(arm, read_json(out / arm / "round-1" / "interpolation.json")) for arm in done
                     if (out / arm / "round-1" / "interpolation.json").exists()]
    for arm, result in interpolation:
        grid = ", ".join(f"{entry['alpha']:g}: {100 * entry[result['metric']]['mean']:.1f}" for entry in result["grid"])
        lines.append(f"\n{arm}: dev {result['metric']} per alpha ({result['dev_problems']} problems) {grid}; chose "
                     f"{result['alpha']:g}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=None,
                        help="loop folder whose round 1 is sampled (default: the plain arm's folder, run first)")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--config", default="configs/cpu-gsm8k.yaml", help="the base config the arms change")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--problems-per-round", type=int, default=None, help="training problems in round 1")
    parser.add_argument("--dev-size", type=int, default=None, help=f"dev split (default {COMMON['dev_size']})")
    parser.add_argument("--heldout-limit", type=int, default=None, help="greedy on the first N held-out problems")
    parser.add_argument("--coverage-limit", type=int, default=None,
                        help=f"k samples on the first M held-out problems (default {COMMON['coverage']['limit']})")
    parser.add_argument("--coverage-max-new-tokens", type=int, default=None,
                        help=f"tokens per coverage sample (default {COMMON['coverage']['max_new_tokens']})")
    parser.add_argument("--table-only", action="store_true", help="print the table of what exists, run nothing")
    parser.add_argument("--reference", default="plain",
                        help="the arm every other is paired with besides round 0 (plain-seed1: the other seed)")
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    if args.reference not in ARMS:
        parser.error(f"--reference: unknown arm {args.reference}; known: {', '.join(ARMS)}")
    out = Path(args.out)
    source = Path(args.source) if args.source else out / "plain"
    common = scaled(args.problems_per_round, args.dev_size, args.heldout_limit, args.coverage_limit,
                    args.coverage_max_new_tokens)
    if not args.table_only:
        if args.source is None and "plain" in arms:  # the plain arm makes the samples the others share
            arms = ["plain"] + [arm for arm in arms if arm != "plain"]
        base = read_yaml_mapping(args.config, "loop")
        for arm in arms:
            run_arm(source, out, arm, base, args.data_dir, common)
    import torch

    print(f"CPU: torch capability {torch.backends.cpu.get_cpu_capability()}")
    print(table(out, arms, common, args.reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
