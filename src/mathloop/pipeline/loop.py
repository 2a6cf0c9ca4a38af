"""`mathloop loop`: the self-improvement rounds of method steps 1-7 (and GRPO, step 8) as one resumable run.

    setup     decontaminate [-> synthesize] the training problems (synthesis: `synthesize` section, off by default)
    round 0   eval                         the starting model on the held-out problems
    round r   sample -> [rm -> score] -> select -> sft -> [interpolate] -> eval [-> coverage]
    grpo      (optional) GRPO from the last model on queries its samples solve 2..5 of 8 times -> eval [-> coverage]

Everything lives in one run folder; each stage writes its own sub-folder and is skipped when it is done
(`stage_done`: its run record's `finished`), so re-running the same command after a kill continues with the stage
that was interrupted (each stage also resumes inside itself):

  run.json                    the run record (kind loop): the settings of the run and the version and sha256 of the
                              benchmark data it reads (a resumed run must match them, except paths, batch sizes and
                              worker counts, which do not change results), package versions, hardware, and `stages`:
                              each stage's name and folder (round-<r>, grpo-after-round-<R>), in order, as
                              `mathloop compare LOOP_DIR:<name>` and `mathloop report` find them; every run folder
                              inside has its own run.json with its kind (eval, sample, rm, sft, grpo)
  problems.jsonl              training problems after decontamination; decontamination.json says what was removed
  synthesized.jsonl           problems evolved from the training problems and answered by majority vote (when the
                              synthesize section is on; in problems.jsonl too); synthesis.json counts, and
                              synthesized.rejected.jsonl holds every rejected candidate with its reason
  dev.jsonl                   the dev split (`dev_size`): the last training problems, which no round samples;
                              interpolation picks its alpha on them, never on the held-out set
  round-0/eval/               baseline evaluation (mathloop eval folder)
  round-<r>/coverage/         (coverage section) k samples on the first `limit` held-out problems: the mean share
                              of correct samples, maj@k and pass@k of every round, paired with round 0's
  round-<r>/problems.jsonl    the round's block of the training problems, when problems_per_round is set
  round-<r>/explore/t-<T>/    (explore section) the probe's samples at each candidate temperature; temperature.json
                              has the balance score per temperature and the one the round samples at
  round-<r>/samples/          mathloop sample folder; samples.jsonl merges its passes (with rm_score after scoring)
  round-<r>/rm/               reward model run (final/ is the RM), when the reward_model section is enabled
  round-<r>/sft_data.jsonl    selected responses as prompt-completion chat rows; select.json is the report
  round-<r>/sft/              SFT run (final/ is the next model, unless interpolation picks another alpha)
  round-<r>/interpolate/alpha-<a>/   (interpolate section) base + a * (tuned - base) of the round's SFT (model/)
                              and its dev evaluation (eval/); interpolation.json has the grid, the dev scores and
                              the chosen alpha, whose model is the round's model
  round-<r>/eval/             held-out evaluation of that model
  round-<r>/stage_seconds.json   wall seconds per stage of the round (round-0 and grpo-after-round-<R> too), summed
                              over the sessions that ran it; summary.md tabulates them in minutes
  grpo-after-round-<R>/       the GRPO stage from the last round's model, when enabled (eval/ inside)
  summary.md, summary.json, accuracy.svg   accuracy per round with 95% intervals; each later stage paired with
                              round 0 (delta with interval, discordant counts b / c, McNemar p: `mathloop compare`)
  report.html                 `mathloop report` of the folder, rewritten at the end of each round (plots, tables,
                              sample browser); a report that fails logs a warning and the loop goes on

The sections of the YAML file are the settings of the stage commands, keys of their dataclasses (`sample`:
SampleConfig, `reward_model`: RMTrainConfig, `select`: SelectConfig, `sft`: SFTRunConfig, `eval`: EvalConfig,
`grpo`: GRPOConfig, `synthesize`: SynthesizeConfig), read by the one loader `config.settings_from_dict`; a `ray:`
section (address, replicas, num_cpus, num_gpus, chunk) runs the sample and eval stages on Ray actors
(`mathloop.replicas`); the loop fills in the model, data and folder fields itself (a section may not set them), and
the run's seed unless a section sets one. `sft_init: base` trains every round from the starting model on that
round's data (the paper rebuilds the data each round); `previous` continues from the last round's model, which is
cheaper on a CPU. `problems_per_round: N` gives each round the next N training problems (in problems.jsonl's order,
wrapping around) instead of all of them: rounds that sample the same problems again train each model on answers to
the problems its predecessor was trained on, which sharpens it on those problems more than on new ones (measured:
docs/loop.md).

Against the narrowing that SFT on the model's own right answers causes (docs/results.md): `coverage` (EvalConfig
fields; `n` samples per problem on the first `limit` held-out problems, default 8 x 400 at temperature 0.7, top-p
0.8) measures it every round; `interpolate` (`alphas`, default [0.25, 0.5, 0.75, 1.0], and `metric`, default acc: the
dev split's greedy accuracy under the eval section's settings; ties go to the smaller alpha) moves each round's
model only part of the way from its starting point (`mathloop.train.interpolate`); the select section's
`difficulty` and `negatives` and the sft section's `negative_weight` change what is trained on; `explore`
(`temperatures`, default [0.5, 0.7, 0.9, 1.1], `problems`, default 64, `target`, default 4) picks each round's
sampling temperature from the model of that round (`choose_temperature`: B-STaR's balance score, with the verifier as
the reward), replacing the sample section's temperatures.

The `synthesize` section (`mathloop synthesize`'s settings; `seeds` is how many of the training problems seed it, and
`model`/`backend`/`backend_args` may name another model, since the paper synthesized with a stronger model than the
one it trains) adds evolved problems,
with majority-vote answers as their gold, to the training problems once, before round 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathloop.config import read_yaml_mapping, settings_from_dict
from mathloop.records import Problem, Sample, read_records, write_jsonl
from mathloop.replicas import RAY_OPTIONS
from mathloop.runs import (lock_run_dir, mark_run_finished, read_json, run_done, start_run_record, write_json,
                           write_text_atomic)

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    output_dir: str = field(metadata={"help": "run folder (overrides the config's output_dir)"})
    model: str = field(default="default", metadata={
        "help": "starting model: embedded name (default, smollm2), folder or Hub id"})
    problems: str = field(default="gsm8k:train", metadata={
        "help": "\"<benchmark>:<split>\", \"synthetic:<count>:<seed>\" or a Problem JSONL file"})
    limit: int | None = field(default=None, metadata={"help": "first N training problems (default: all)"})
    heldout: str = field(default="gsm8k:test", metadata={"help": "the same forms as `problems`"})
    heldout_limit: int | None = field(default=None, metadata={"help": "first N held-out problems (default: all)"})
    data_dir: str | None = field(default=None, metadata={"help": "benchmark folder (default: $MATHLOOP_DATA_DIR)"})
    rounds: int = field(default=1, metadata={"help": "number of rounds (overrides the config's)"})
    sft_init: str = field(default="base", metadata={
        "help": "'base' (each round fine-tunes the starting model) or 'previous' (the last round's)"})
    problems_per_round: int | None = field(default=None, metadata={
        "help": "the next N training problems each round (default: every round samples all of them)"})
    decontaminate: bool = field(default=True, metadata={
        "help": "training problems and selected responses against every benchmark in data_dir"})
    dev_size: int | None = field(default=None, metadata={
        "help": "the last N training problems are the dev split (dev.jsonl), sampled by no round"})
    seed: int = field(default=0, metadata={"help": "seed of the problem split and every stage that samples"})
    sample: dict[str, Any] = field(default_factory=dict, metadata={"help": "sample stage: SampleConfig fields"})
    reward_model: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "reward model: RMTrainConfig fields, plus enabled: bool and all_rounds: bool (train on the samples "
                "of every round so far)"})
    select: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "select stage: SelectConfig fields (k, vote, ...)"})
    sft: dict[str, Any] = field(default_factory=dict, metadata={"help": "SFT stage: SFTRunConfig fields"})
    eval: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "held-out evaluation: EvalConfig fields (n, temperature, max_new_tokens, ...)"})
    coverage: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "EvalConfig fields of the k-sample evaluation, plus limit (held-out problems) and enabled"})
    interpolate: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "weight interpolation: alphas, metric, enabled (needs dev_size)"})
    explore: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "each round's sampling temperature chosen on a probe of its problems by the balance score: "
                "temperatures, problems, target, enabled"})
    grpo: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "GRPO stage: GRPOConfig fields, plus enabled: bool"})
    synthesize: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "problem synthesis before round 1: SynthesizeConfig fields, plus enabled"})
    ray: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "address, replicas, num_cpus, num_gpus, chunk: sample and eval generate on Ray actors "
                "(`mathloop.replicas`; a stage section's own ray_* keys win)"})

    def validate(self) -> None:
        """Check every section by building its stage config now, so a typo fails before hours of sampling."""
        if self.rounds < 0:
            raise ValueError(f"loop: rounds must be >= 0, got {self.rounds}")
        for name in ("limit", "heldout_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"loop: {name} must be >= 1 (or left out for all problems), got {getattr(self, name)}")
        unknown = sorted(set(self.ray) - {name.removeprefix("ray_") for name in RAY_OPTIONS})
        if unknown:
            raise ValueError(f"loop: ray: unknown key(s) {', '.join(unknown)}; known: address, chunk, num_cpus, "
                             f"num_gpus, replicas")
        if self.problems_per_round is not None and self.problems_per_round < 1:
            raise ValueError(f"loop: problems_per_round must be >= 1 (or left out for all problems), got "
                             f"{self.problems_per_round}")
        if self.sft_init not in ("base", "previous"):
            raise ValueError(f"loop: sft_init must be 'base' or 'previous', got {self.sft_init!r}")
        if self.dev_size is not None and self.dev_size < 1:
            raise ValueError(f"loop: dev_size must be >= 1 (or left out for no dev split), got {self.dev_size}")
        if self.interpolation_enabled:
            if self.dev_size is None:
                raise ValueError("loop: interpolate picks alpha on the dev split: set dev_size (e.g. 200)")
            self.interpolation_grid()
        if self.exploration_enabled:
            self.exploration_settings()
        from mathloop.backends import resolve_backend

        probe = Path(self.output_dir) / "round-1"
        generating = [self.sample_config(self.model, probe, 1), self.eval_config(self.model, probe)]
        if self.coverage_enabled:
            generating.append(self.coverage_config(self.model, probe))
        if self.synthesis_enabled:
            generating.append(self.synthesis_config())
        for stage in generating:  # backend_args that do not fit the engine `auto` picks here fail now
            resolve_backend(stage.backend, stage.backend_args)
        self.select_config(probe)
        if self.rm_enabled:
            self.rm_config(self.model, self.rm_samples(1), probe)
        if self.rounds:
            self.sft_config(self.model, probe / "sft_data.jsonl", probe)
        if self.grpo_enabled:
            if not self.rounds:
                raise ValueError("loop: the grpo stage selects its queries from a round's samples; set rounds >= 1")
            rm = str(probe / "rm" / "final") if self.rm_enabled else None
            self.grpo_config(self.model, probe / "samples.jsonl", Path(self.output_dir) / "grpo-after-round-1", rm)

    @property
    def synthesis_enabled(self) -> bool:
        return section_enabled(self.synthesize)

    @property
    def coverage_enabled(self) -> bool:
        return section_enabled(self.coverage)

    @property
    def interpolation_enabled(self) -> bool:
        return section_enabled(self.interpolate)

    def interpolation_grid(self) -> tuple[list[float], str]:
        """The alphas to try and the dev metric that picks one (a key of the eval metrics: acc, maj@k, pass@k)."""
        unknown = sorted(set(self.interpolate) - {"enabled", "alphas", "metric"})
        if unknown:
            raise ValueError(f"loop: interpolate: unknown key(s) {', '.join(unknown)}; known: alphas, metric, enabled")
        alphas = self.interpolate.get("alphas", [0.25, 0.5, 0.75, 1.0])
        if not (isinstance(alphas, list) and alphas and all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                                            for a in alphas)):
            raise ValueError(f"loop: interpolate: alphas must be a list of numbers, got {alphas!r}")
        metric = self.interpolate.get("metric", "acc")
        if not isinstance(metric, str) or not (metric == "acc" or metric.split("@")[0] in ("maj", "pass")):
            raise ValueError(f"loop: interpolate: metric must be acc, maj@k or pass@k, got {metric!r}")
        return sorted(float(a) for a in alphas), metric

    @property
    def exploration_enabled(self) -> bool:
        return section_enabled(self.explore)

    def exploration_settings(self) -> dict[str, Any]:
        """The explore section with its defaults: the candidate `temperatures`, the first `problems` of the round's
        problems that probe them, and the `target` number of distinct correct responses per problem."""
        unknown = sorted(set(self.explore) - {"enabled", "temperatures", "problems", "target"})
        if unknown:
            raise ValueError(f"loop: explore: unknown key(s) {', '.join(unknown)}; known: temperatures, problems, "
                             f"target, enabled")
        settings = {"temperatures": [0.5, 0.7, 0.9, 1.1], "problems": 64, "target": 4} | {
            key: value for key, value in self.explore.items() if key != "enabled"}
        temperatures = settings["temperatures"]
        if not (isinstance(temperatures, list) and temperatures and all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 for t in temperatures)):
            raise ValueError(f"loop: explore: temperatures must be a list of numbers > 0, got {temperatures!r}")
        for key in ("problems", "target"):
            if not isinstance(settings[key], int) or isinstance(settings[key], bool) or settings[key] < 1:
                raise ValueError(f"loop: explore: {key} must be a whole number >= 1, got {settings[key]!r}")
        return settings | {"temperatures": sorted(float(t) for t in temperatures)}

    @property
    def rm_enabled(self) -> bool:
        return section_enabled(self.reward_model)

    @property
    def grpo_enabled(self) -> bool:
        return section_enabled(self.grpo)

    # -- the stage configs ---------------------------------------------------------------------------------------

    def synthesis_config(self):
        """The `SynthesizeConfig` of the synthesize section."""
        from mathloop.pipeline.evolve import SynthesizeConfig

        config = self._stage(SynthesizeConfig, "synthesize", {"model": self.model, **self.synthesize},
                             {"out": str(Path(self.output_dir) / "synthesized.jsonl"),
                              "decontaminate": self.decontaminate, "data_dir": self.data_dir})
        if isinstance(config.seeds, str):
            raise ValueError(f"loop: synthesize: seeds must be a count >= 1 (the first N training problems), got "
                             f"{config.seeds!r}")
        return config

    def sample_config(self, model: str, round_dir: Path, round_index: int):
        from mathloop.pipeline.sample import SampleConfig

        problems = round_dir / "problems.jsonl" if self.problems_per_round else Path(self.output_dir) / "problems.jsonl"
        config = self._stage(SampleConfig, "sample", {**self._ray_settings(), **self.sample},
                             {"model": model, "problems": str(problems),
                              "out": str(round_dir / "samples"), "data_dir": self.data_dir})
        config.seed += 1000 * round_index  # each round draws fresh samples
        return config

    def rm_samples(self, round_index: int) -> list[Path]:
        """The sample files round `round_index`'s RM trains on: that round's, or with `all_rounds: true` in the
        reward_model section every round's so far (rounds with new problems give the RM more problems)."""
        rounds = range(1, round_index + 1) if self.reward_model.get("all_rounds", False) else [round_index]
        return [Path(self.output_dir) / f"round-{r}" / "samples.jsonl" for r in rounds]

    def rm_config(self, model: str, samples: list[Path], round_dir: Path):
        from mathloop.train.rm import RMTrainConfig

        if not isinstance(self.reward_model.get("all_rounds", False), bool):
            raise ValueError(f"loop: reward_model: all_rounds must be true or false, got "
                             f"{self.reward_model['all_rounds']!r}")
        section = {k: v for k, v in self.reward_model.items() if k != "all_rounds"}
        return self._stage(RMTrainConfig, "reward_model", section,
                           {"model": model, "samples": [str(path) for path in samples],
                            "output_dir": str(round_dir / "rm"), "data_dir": self.data_dir})

    def select_config(self, round_dir: Path):
        from mathloop.pipeline.select import SelectConfig

        return self._stage(SelectConfig, "select", self.select,
                           {"samples": [str(round_dir / "samples.jsonl")], "output": str(round_dir / "sft_data.jsonl"),
                            "decontaminate": self.decontaminate, "data_dir": self.data_dir})

    def sft_config(self, model: str, data: Path, round_dir: Path):
        from mathloop.train.sft import SFTRunConfig

        return self._stage(SFTRunConfig, "sft", self.sft,
                           {"model": model, "data": str(data), "output_dir": str(round_dir / "sft")})

    def eval_config(self, model: str, round_dir: Path):
        from mathloop.pipeline.evaluate import EvalConfig

        section = {"shots": 0, **self._ray_settings(), **self.eval}
        return self._stage(EvalConfig, "eval", section,
                           {"model": model, "benchmarks": [], "out": str(round_dir / "eval"),
                            "data_dir": self.data_dir}, fixed=("limit", "split"))

    def coverage_config(self, model: str, stage_dir: Path):
        """The EvalConfig of the coverage section: k samples per held-out problem (its `limit` cuts the list)."""
        from mathloop.pipeline.evaluate import EvalConfig

        section = {"shots": 0, "n": 8, "temperature": 0.7, "top_p": 0.8, "limit": 400, **self._ray_settings(),
                   **self.coverage}
        return self._stage(EvalConfig, "coverage", section,
                           {"model": model, "benchmarks": [], "out": str(stage_dir / "coverage"),
                            "data_dir": self.data_dir}, fixed=("split",))

    def grpo_config(self, model: str, samples: Path, grpo_dir: Path, rm: str | None = None):
        """GRPO from `model` on the training problems its samples solve 2..5 of 8 times; the reward model is the
        section's `rm`, else the last round's (when the loop trains one)."""
        from mathloop.train.grpo import GRPOConfig

        return self._stage(GRPOConfig, "grpo", self.grpo,
                           {"model": model, "output_dir": str(grpo_dir),
                            "queries": str(Path(self.output_dir) / "problems.jsonl"),
                            "selection_samples": str(samples), "data_dir": self.data_dir,
                            "rm": None if self.grpo.get("rm") else rm})

    def _ray_settings(self) -> dict[str, Any]:
        """The `ray:` section as the stage configs' ray_* fields."""
        return {f"ray_{key}": value for key, value in self.ray.items()}

    def _stage(self, cls, name: str, section: dict[str, Any], filled: dict[str, Any], fixed: tuple[str, ...] = ()):
        """The stage config `cls` of a section: its settings (the loop's seed unless it sets one), with the fields
        the loop fills in (`filled`; a section may not set them)."""
        settings = {k: v for k, v in section.items() if k != "enabled"}
        if "seed" in {f.name for f in dataclasses.fields(cls)}:
            settings = {"seed": self.seed, **settings}
        fixed = tuple(k for k in filled if k != "rm") + fixed
        return settings_from_dict(cls, settings, filled, f"loop: {name}", fixed=fixed)


def section_enabled(section: dict[str, Any]) -> bool:
    """Whether an optional section of the loop config is on: its `enabled` key, else whether it sets anything.

    >>> section_enabled({}), section_enabled({"alphas": [0.5]}), section_enabled({"alphas": [0.5], "enabled": False})
    (False, True, False)
    """
    return bool(section.get("enabled", bool(section)))


def load_loop_config(path: str, overrides: dict[str, Any] | None = None) -> LoopConfig:
    """Read a loop YAML file; `overrides` (non-None values) replace top-level keys."""
    return loop_config_from_dict(read_yaml_mapping(path, "loop"), overrides, source=path)


def loop_config_from_dict(data: dict[str, Any], overrides: dict[str, Any] | None = None,
                          source: str = "loop config") -> LoopConfig:
    names = ("sample", "reward_model", "select", "sft", "eval", "coverage", "interpolate", "grpo", "synthesize")
    for section in names:
        if not isinstance(data.get(section) or {}, dict):
            raise ValueError(f"{source}: {section} must be a mapping of settings")
    sections = {section: dict(data.get(section) or {}) for section in names}
    try:
        return settings_from_dict(LoopConfig, {**data, **sections}, overrides, source)
    except TypeError as e:
        raise ValueError(f"{source}: {e}") from None


# ---- the run --------------------------------------------------------------------------------------------------

def run_loop(config: LoopConfig, progress: bool = True, backend=None) -> dict:
    """Run (or resume) the loop; returns the summary (also written to summary.json / summary.md).

    `backend` generates for every sampling and evaluation stage instead of loading each round's model (tests use a
    scripted one); by default each stage loads the model it is given. The run folder is owned by this run while
    it works (`lock_run_dir`)."""
    from mathloop.data.benchmarks import load_problem_source, problem_source_data

    config.validate()
    # the data is found (and identified by its checksums) before the run folder exists: a missing set leaves none
    heldout = load_problem_source(config.heldout, config.data_dir, config.heldout_limit)
    data = {**problem_source_data(config.problems, config.data_dir),
            **problem_source_data(config.heldout, config.data_dir)}
    with lock_run_dir(config.output_dir), _quiet_decontamination(config):
        return _run_loop(config, progress, backend, heldout, data)


def _quiet_decontamination(config: LoopConfig):
    """For training problems from the procedural generator (the demo's), the benchmarks decontamination cannot check
    are not worth a warning: none of them can contain such a problem (`procedural_problems`)."""
    if not config.decontaminate or not config.problems.startswith("synthetic:") or config.synthesis_enabled:
        return contextlib.nullcontext()
    from mathloop.data.decontaminate import procedural_problems

    return procedural_problems()


def _run_loop(config: LoopConfig, progress: bool, backend, heldout: list[Problem], data: dict[str, dict]) -> dict:
    out = Path(config.output_dir)
    _check_config(out, config, data)
    _prepare_problems(out, config, heldout, backend)

    log.info("round 0: evaluating the starting model on %d held-out problems", len(heldout))
    begin_stage(out, "0", "round-0")
    with stage_timer(out / "round-0", "eval"):
        row = _evaluate(config, config.model, out / "round-0", heldout, progress, backend)
    log.info("round 0: %s", _accuracy_line(row))
    row["coverage"] = _coverage(config, config.model, out / "round-0", heldout, progress, backend)
    rows = [row | {"round": 0, "model": config.model, "stage_seconds": stage_seconds(out / "round-0")}]
    model = config.model
    for r in range(1, config.rounds + 1):
        round_dir = begin_stage(out, str(r), f"round-{r}")
        log.info("round %d/%d: sampling", r, config.rounds)
        with stage_timer(round_dir, "sample"):
            sample_summary = _sample(config, model, round_dir, r, progress, backend)
        log.info("round %d: %s of %s samples verified correct, %s of %s problems solved", r,
                 sample_summary.get("correct"), sample_summary.get("samples"), sample_summary.get("solved_problems"),
                 sample_summary.get("problems"))
        rm_summary = {}
        if config.rm_enabled:
            log.info("round %d: reward model", r)
            with stage_timer(round_dir, "rm"):
                rm_summary = _reward_model(config, model, round_dir, r)
        with stage_timer(round_dir, "select"):
            selection = _select(config, round_dir)
        log.info("round %d: selected %s SFT rows; fine-tuning", r, selection.get("rows"))
        init = config.model if config.sft_init == "base" else model
        with stage_timer(round_dir, "sft"):
            model = _sft(config, init, round_dir)
        interpolation = {}
        if config.interpolation_enabled:
            with stage_timer(round_dir, "interpolate"):
                interpolation = _interpolate(config, init, model, round_dir, progress, backend)
            model = interpolation["model"]
        log.info("round %d: evaluating %s", r, model)
        with stage_timer(round_dir, "eval"):
            row = _evaluate(config, model, round_dir, heldout, progress, backend)
        log.info("round %d: %s (round 0: %.1f%%)", r, _accuracy_line(row), 100 * rows[0]["acc"])
        row["vs_round_0"] = _against_round_0(out, round_dir, row["benchmark"])
        row["coverage"] = _coverage(config, model, round_dir, heldout, progress, backend)
        rows.append(row | {"round": r, "model": model, "samples": sample_summary, "rm": rm_summary,
                           "selection": selection, "interpolation": interpolation,
                           "temperature": read_json(round_dir / "temperature.json")
                           if (round_dir / "temperature.json").exists() else {},
                           "stage_seconds": stage_seconds(round_dir)})
        _write_summary(out, rows)
        _write_report(out)
    if config.grpo_enabled:
        grpo_dir = begin_stage(out, "grpo", f"grpo-after-round-{config.rounds}")
        log.info("grpo: training from %s", model)
        with stage_timer(grpo_dir, "grpo"):
            model = _grpo(config, model, grpo_dir, config.rounds)
        log.info("grpo: evaluating %s", model)
        with stage_timer(grpo_dir, "eval"):
            row = _evaluate(config, model, grpo_dir, heldout, progress, backend)
        log.info("grpo: %s (round 0: %.1f%%)", _accuracy_line(row), 100 * rows[0]["acc"])
        row["coverage"] = _coverage(config, model, grpo_dir, heldout, progress, backend)
        rows.append(row | {"round": "grpo", "model": model, "stage_seconds": stage_seconds(grpo_dir),
                           "vs_round_0": _against_round_0(out, grpo_dir, row["benchmark"])})
    summary = _write_summary(out, rows)
    _write_report(out)
    mark_run_finished(out)
    return summary


STAGE_SECONDS = "stage_seconds.json"
STAGES = ("sample", "rm", "select", "sft", "interpolate", "grpo", "eval", "coverage")
# The stages that are a run with a run record: the run's folder under the round (or GRPO) folder, and the file it
# writes last there, by which a folder from before records carried their kind and done marker is judged.
STAGE_RUNS = {"rm": ("rm", "final/reward_config.json"), "sft": ("sft", "final/config.json"),
              "grpo": (".", "final/config.json"), "eval": ("eval", "metrics.json"),
              "coverage": ("coverage", "metrics.json")}
# The stages done when the loop has written the file that ends them, under the round folder: their output is the
# loop's own (the merged samples, the selection's report, the interpolation's choice).
STAGE_FILES = {"sample": "samples.jsonl", "select": "select.json", "interpolate": "interpolation.json"}


def stage_done(stage_dir: Path, stage: str) -> bool:
    """Whether `stage` of the round (or GRPO) folder `stage_dir` is done: for a stage that is a run, its run
    record's done marker (`runs.run_done`: `finished`, or for a folder from before records had a kind, the file it
    writes last); for the others, the file the loop writes when they end (`STAGE_FILES`)."""
    if stage in STAGE_RUNS:
        folder, last_file = STAGE_RUNS[stage]
        return run_done(stage_dir / folder, last_file)
    return stage in STAGE_FILES and (stage_dir / STAGE_FILES[stage]).exists()


@contextlib.contextmanager
def stage_timer(stage_dir: Path, stage: str) -> Iterator[None]:
    """Add the wall seconds of the block to `stage` in `stage_dir`/stage_seconds.json, also when it fails or is
    interrupted, so a stage run in several sessions reports their sum (a session killed outright adds nothing).

    When the stage is done before the block (`stage_done`), an earlier session finished it and the resume's check
    adds nothing (a stage finished before timing existed stays untimed: a blank in the summary, not 0.0). The RM
    stage is always timed: after its run it scores the round's samples, which its run record does not cover."""
    if stage != "rm" and stage_done(stage_dir, stage):
        yield
        return
    started = time.time()
    try:
        yield
    finally:
        path = stage_dir / STAGE_SECONDS
        seconds = stage_seconds(stage_dir)
        seconds[stage] = round(seconds.get(stage, 0.0) + time.time() - started, 1)
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, seconds)


def stage_seconds(stage_dir: Path) -> dict[str, float]:
    """The wall seconds per stage recorded by `stage_timer` in `stage_dir` (empty for a round run before they were)."""
    path = stage_dir / STAGE_SECONDS
    return read_json(path) if path.exists() else {}


def _accuracy_line(row: dict) -> str:
    """A stage's held-out result as the summary writes it: `held-out acc 43.8% [95% CI 30.7, 57.6] (48 problems)`."""
    low, high = row["ci95"]
    return f"held-out acc {100 * row['acc']:.1f}% [95% CI {100 * low:.1f}, {100 * high:.1f}] ({row['n']} problems)"


def _check_config(out: Path, config: LoopConfig, data: dict[str, dict]) -> None:
    """Write run.json (settings, each data file's version and sha256, versions, hardware), or check that a resumed
    run matches it. Rounds may grow (continue a finished run for more rounds), and settings that cannot change
    results (paths, batch sizes, worker counts: `NOT_RESUME_KEYS`) may change; anything else would mix two
    experiments. A setting the record lacks (added to mathloop after the run started) is not compared."""
    from mathloop.config import result_settings

    keys = tuple(k for k in result_settings(dataclasses.asdict(config)) if k != "rounds")
    record, resumed = start_run_record(out / "run.json", config, keys, data, what=f"{out} holds a loop run",
                                       fix="use a new output_dir", kind="loop", stages=[])
    if resumed:
        record["config"] = dataclasses.asdict(config)
        record.setdefault("stages", [])  # a loop from before the record named its stages: each is added as it is met
        write_json(out / "run.json", record)


def begin_stage(out: Path, name: str, folder: str) -> Path:
    """Name the stage `name` (a round number, or grpo) and its folder in the loop's run record, once, in the order
    the stages run; returns the folder. `mathloop compare LOOP_DIR:<name>` and the report find stages here. A GRPO
    stage of a run continued for more rounds takes the name grpo; the earlier one keeps its folder's name."""
    record = read_json(out / "run.json")
    stages = record.setdefault("stages", [])
    if not any(stage == {"name": name, "folder": folder} for stage in stages):
        for stage in stages:
            if stage["name"] == name:
                stage["name"] = stage["folder"]
        stages.append({"name": name, "folder": folder})
        write_json(out / "run.json", record)
    return out / folder


def _prepare_problems(out: Path, config: LoopConfig, heldout: list[Problem], backend=None) -> list[Problem]:
    """The training problems without any whose question is also a held-out question (procedural problems drawn
    with two seeds can repeat), decontaminated against every benchmark of the data folder, less the dev split (the
    last `dev_size`, to dev.jsonl), plus the problems synthesized from them when the synthesize section is on (once
    per run: problems.jsonl)."""
    from mathloop.data.benchmarks import load_problem_source

    path = out / "problems.jsonl"
    if path.exists():
        return read_records(Problem, path)
    problems = load_problem_source(config.problems, config.data_dir, config.limit)
    if config.dev_size is not None and config.dev_size >= len(problems):
        raise ValueError(f"loop: dev_size {config.dev_size} leaves no training problems of the {len(problems)} in "
                         f"{config.problems}; lower dev_size or raise limit")
    heldout_questions = {_question_key(p.question) for p in heldout}
    kept = [p for p in problems if _question_key(p.question) not in heldout_questions]
    report: dict[str, Any] = {"problems": len(problems), "heldout_overlap": len(problems) - len(kept), "removed": 0,
                              "per_benchmark": {}, "examples": []}
    if len(kept) < len(problems):
        log.info("removed %d training problems that are also held-out questions", len(problems) - len(kept))
    problems = kept
    index = None
    if config.decontaminate:
        from mathloop.data.decontaminate import ContaminationIndex, decontaminate

        index = ContaminationIndex.from_benchmarks(config.data_dir)
        checked = len(problems)
        problems, removed, per_benchmark = decontaminate(problems, index)
        report.update(removed=len(removed), per_benchmark=per_benchmark, not_checked=index.unavailable,
                      examples=[{"id": p.id, **p.metadata["contamination"]} for p in removed])
        log.info("decontamination: removed %d of %d training problems %s", len(removed), checked, per_benchmark)
    write_json(out / "decontamination.json", report)
    if config.dev_size is not None:  # the dev split: the last problems, before synthesis adds any
        write_jsonl(out / "dev.jsonl", problems[-config.dev_size:])
        problems = problems[:-config.dev_size]
    if config.synthesis_enabled:
        problems = problems + _synthesize(config, out, problems, index, backend)
    write_jsonl(path, problems)
    return problems


def _question_key(question: str) -> str:
    """A question's text with case and whitespace ignored, to find a training problem that repeats a held-out one.

    >>> _question_key("What  is 2+3?  ") == _question_key("what is 2+3?")
    True
    """
    return " ".join(question.lower().split())


def _synthesize(config: LoopConfig, out: Path, problems: list[Problem], index, backend) -> list[Problem]:
    """New problems evolved from the first `seeds` training problems and answered by majority vote
    (`mathloop synthesize`), checked against the benchmarks when the run decontaminates; resumable, with the
    rejected candidates in synthesized.rejected.jsonl and the counts in synthesis.json."""
    from mathloop.pipeline.evolve import synthesize_file

    settings = config.synthesis_config()
    seeds = problems[:settings.seeds or len(problems)]
    if backend is None:
        from mathloop.backends import load_backend

        backend = load_backend(settings.backend, settings.model, **settings.backend_args)
    result = synthesize_file(backend, seeds, out / "synthesized.jsonl", settings.evolution(), index,
                             settings.chunk_size)
    write_json(out / "synthesis.json", result)
    log.info("synthesis: %d new problems from %d seeds", result["kept"], len(seeds))
    return read_records(Problem, out / "synthesized.jsonl")


def _sample(config: LoopConfig, model: str, round_dir: Path, r: int, progress: bool, backend) -> dict:
    from mathloop.pipeline.sample import read_samples, run_sample

    merged = round_dir / STAGE_FILES["sample"]
    sample_config = config.sample_config(model, round_dir, r)
    if stage_done(round_dir, "sample"):  # (or its samples were copied in for an ablation on the same samples)
        summary = Path(sample_config.out) / "summary.json"
        return read_json(summary) if summary.exists() else {}
    if config.problems_per_round and not (round_dir / "problems.jsonl").exists():
        problems = read_records(Problem, Path(config.output_dir) / "problems.jsonl")
        round_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(round_dir / "problems.jsonl", round_problems(problems, config.problems_per_round, r))
    if config.exploration_enabled:
        sample_config.temperatures = [choose_temperature(config, sample_config, round_dir, progress, backend)]
    summary = run_sample(sample_config, backend=backend, progress=progress)
    write_jsonl(merged, read_samples(sample_config.out))
    return summary


def choose_temperature(config: LoopConfig, sample_config, round_dir: Path, progress: bool, backend) -> float:
    """The round's sampling temperature: each candidate of the explore section samples the first `problems` of the
    round's problems (under `round-<r>/explore/t-<T>/`, with the round's n, seed and other settings), and the one
    with the highest balance score (`mathloop.metrics.balance_score`; distinct as the select stage counts them) wins,
    the lower temperature on a tie. The grid and the choice are written to `round-<r>/temperature.json`, which a
    resumed round reads instead of probing again."""
    from mathloop.metrics import balance_score
    from mathloop.pipeline.sample import read_samples, run_sample
    from mathloop.pipeline.select import distinct_indices

    chosen = round_dir / "temperature.json"
    if chosen.exists():
        return float(read_json(chosen)["temperature"])
    settings = config.exploration_settings()
    near_duplicate = config.select_config(round_dir).near_duplicate
    probe_dir = round_dir / "explore"
    probe_problems = probe_dir / "problems.jsonl"
    if not probe_problems.exists():
        probe_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(probe_problems, read_records(Problem, sample_config.problems)[: settings["problems"]])
    grid = []
    for temperature in settings["temperatures"]:
        probe = dataclasses.replace(sample_config, problems=str(probe_problems), out=str(probe_dir / f"t-{temperature:g}"),
                        temperatures=[temperature], hard_n=0, limit=None)
        log.info("explore: %d problems x %d at temperature %g", settings["problems"], probe.n, temperature)
        run_sample(probe, backend=backend, progress=progress)
        groups: dict[str, list[Sample]] = {}
        for s in read_samples(probe.out):
            groups.setdefault(s.problem_id, []).append(s)
        right = [[s.response for s in group if s.verdict == "correct" and s.finish_reason != "length"]
                 for group in groups.values()]
        correct = [len(texts) for texts in right]
        distinct = [sum(1 for _ in distinct_indices(texts, near_duplicate)) for texts in right]
        solved = sum(1 for group in groups.values() if any(s.verdict == "correct" for s in group))
        grid.append({"temperature": temperature, "balance": balance_score(distinct, settings["target"]),
                     "solved": solved / len(groups), "correct_per_problem": sum(correct) / len(groups),
                     "distinct_correct_per_problem": sum(distinct) / len(groups)})
    best = max(grid, key=lambda entry: (entry["balance"], -entry["temperature"]))
    write_json(chosen, {"temperature": best["temperature"], "grid": grid, "problems": settings["problems"],
                        "n": sample_config.n, "target": settings["target"], "near_duplicate": near_duplicate})
    log.info("explore: temperature %g (balance %.3f; %s)", best["temperature"], best["balance"],
             ", ".join(f"{entry['temperature']:g}: {entry['balance']:.3f}" for entry in grid))
    return best["temperature"]


def round_problems(problems: list, per_round: int, round_index: int) -> list:
    """Round `round_index`'s block of `per_round` problems: blocks follow the list's order and wrap around, so
    consecutive rounds get new problems until the list is used up (and no block repeats a problem).

    >>> round_problems(list("abcde"), 2, 1), round_problems(list("abcde"), 2, 3), round_problems(list("abc"), 5, 2)
    (['a', 'b'], ['e', 'a'], ['c', 'a', 'b'])
    """
    start = (round_index - 1) * per_round
    return [problems[(start + i) % len(problems)] for i in range(min(per_round, len(problems)))]


def _reward_model(config: LoopConfig, model: str, round_dir: Path, round_index: int) -> dict:
    """Train the round's RM on the round's samples (or every round's, `all_rounds`), then score the round's samples
    with it (for selection)."""
    from mathloop.records import Sample
    from mathloop.reward.model import load_reward_model
    from mathloop.reward.score import score_samples, scoring_progress
    from mathloop.train.rm import train

    rm_config = config.rm_config(model, config.rm_samples(round_index), round_dir)
    final = Path(rm_config.output_dir) / "final"
    summary_path = Path(rm_config.output_dir) / "summary.json"
    if not stage_done(round_dir, "rm"):
        summary = train(rm_config)
        write_json(summary_path, summary)
    samples_path = round_dir / "samples.jsonl"
    samples = read_records(Sample, samples_path)
    if any(s.rm_score is None for s in samples):
        reward_model, tokenizer = load_reward_model(str(final))
        with scoring_progress(samples_path, str(final)) as progress:
            for s, score in zip(samples, score_samples(reward_model, tokenizer, samples,
                                                       max_length=rm_config.max_length, progress_file=progress)):
                s.rm_score = score
            write_jsonl(samples_path, samples)
    return read_json(summary_path) if summary_path.exists() else {}


def _select(config: LoopConfig, round_dir: Path) -> dict:
    from mathloop.pipeline.select import run_select

    select_config = config.select_config(round_dir)
    report_path = round_dir / "select.json"
    if Path(select_config.output).exists() and report_path.exists():
        return read_json(report_path)
    problems = {p.id: p for p in read_records(Problem, Path(config.output_dir) / "problems.jsonl")}
    info = run_select(select_config, problems)
    write_json(report_path, info)
    return info


def _sft(config: LoopConfig, init_model: str, round_dir: Path) -> str:
    from mathloop.train.sft import train_sft

    sft_config = config.sft_config(init_model, round_dir / "sft_data.jsonl", round_dir)
    if not stage_done(round_dir, "sft"):
        train_sft(sft_config)
    return str(Path(sft_config.output_dir) / "final")


def _grpo(config: LoopConfig, model: str, grpo_dir: Path, last_round: int) -> str:
    from mathloop.train.grpo import train_grpo

    round_dir = Path(config.output_dir) / f"round-{last_round}"
    rm = str(round_dir / "rm" / "final") if config.rm_enabled else None
    grpo_config = config.grpo_config(model, round_dir / "samples.jsonl", grpo_dir, rm)
    if not stage_done(grpo_dir, "grpo"):
        train_grpo(grpo_config)
    return str(Path(grpo_config.output_dir) / "final")


def _evaluate(config: LoopConfig, model: str, stage_dir: Path, heldout: list[Problem], progress: bool,
              backend) -> dict:
    from mathloop.pipeline.evaluate import run_eval

    eval_config = config.eval_config(model, stage_dir)
    name = config.heldout.split(":")[0] if ":" in config.heldout else Path(config.heldout).stem
    summary = run_eval(eval_config, backend=backend, progress=progress, problems={name: heldout})
    acc = summary["benchmarks"][name]["acc"]
    return {"benchmark": name, "acc": acc["mean"], "ci95": acc["ci95"], "n": len(heldout),
            "metrics": summary["benchmarks"][name]}


def _coverage(config: LoopConfig, model: str, stage_dir: Path, heldout: list[Problem], progress: bool,
              backend) -> dict:
    """The coverage section's k-sample evaluation of `model` on the first `limit` held-out problems, and (for a
    later stage) its comparison with round 0's: the mean share of correct samples, maj@k and pass@k, paired
    (`mathloop compare`). {} when the section is off."""
    from mathloop.pipeline.compare import compare_benchmark, read_eval_folder
    from mathloop.pipeline.evaluate import run_eval

    if not config.coverage_enabled:
        return {}
    settings = config.coverage_config(model, stage_dir)
    problems = heldout[:settings.limit] if settings.limit else heldout
    with stage_timer(stage_dir, "coverage"):
        summary = run_eval(settings, backend=backend, progress=progress, problems={"coverage": problems})
    result = {"n": len(problems), "samples": settings.n, "metrics": summary["benchmarks"]["coverage"]}
    round_0 = Path(config.output_dir) / "round-0" / "coverage"
    if stage_dir.name != "round-0" and stage_done(round_0.parent, "coverage"):
        before, after = read_eval_folder(round_0), read_eval_folder(stage_dir / "coverage")
        result["vs_round_0"] = compare_benchmark(before["coverage"], after["coverage"])
    return result


def _interpolate(config: LoopConfig, init: str, tuned: str, round_dir: Path, progress: bool, backend) -> dict:
    """Pick the round's model on the line from its SFT's starting model (`init`) to the fine-tuned one (`tuned`):
    each alpha of the grid is interpolated (`mathloop.train.interpolate`) and evaluated on the dev split with the
    eval section's settings; the best dev score wins, ties to the smaller alpha (nearer the starting model, which
    sampled more diversely). interpolation.json holds the grid, every dev score and the choice; the models of the
    alphas not chosen are deleted once chosen (their scores stay)."""
    import shutil

    from mathloop.pipeline.evaluate import run_eval
    from mathloop.train.interpolate import interpolate_models

    done = round_dir / STAGE_FILES["interpolate"]
    if done.exists():
        return read_json(done)
    alphas, metric = config.interpolation_grid()
    dev = read_records(Problem, Path(config.output_dir) / "dev.jsonl")
    scores: dict[str, dict] = {}
    for alpha in alphas:
        folder = round_dir / "interpolate" / f"alpha-{alpha:g}"
        model = tuned if alpha == 1 else init if alpha == 0 else str(folder / "model")
        if not stage_done(folder, "eval") and not Path(model, "config.json").exists() \
                and model not in (tuned, init):
            interpolate_models(init, tuned, alpha, model)
        summary = run_eval(config.eval_config(model, folder), backend=backend, progress=progress,
                           problems={"dev": dev})["benchmarks"]["dev"]
        if metric not in summary:
            raise ValueError(f"loop: interpolate: the dev evaluation has no {metric!r} (it has "
                             f"{', '.join(k for k in summary if '@' in k or k == 'acc')}); set the eval section's n")
        scores[f"{alpha:g}"] = {"alpha": alpha, "model": model, metric: summary[metric]}
        log.info("interpolate: alpha %g, dev %s %.1f%%", alpha, metric, 100 * summary[metric]["mean"])
    best = choose_alpha(list(scores.values()), metric)
    for entry in scores.values():
        if entry is not best and entry["model"] not in (tuned, init):
            shutil.rmtree(entry["model"], ignore_errors=True)
    result = {"metric": metric, "dev_problems": len(dev), "grid": list(scores.values()), "alpha": best["alpha"],
              "model": best["model"]}
    write_json(done, result)
    log.info("interpolate: alpha %g chosen (dev %s %.1f%%)", best["alpha"], metric, 100 * best[metric]["mean"])
    return result


def choose_alpha(grid: list[dict], metric: str) -> dict:
    """The grid entry with the best dev score; ties go to the smaller alpha (nearer the starting model).

    >>> grid = [{"alpha": a, "acc": {"mean": m}} for a, m in ((0.25, 0.30), (0.5, 0.34), (0.75, 0.34), (1.0, 0.33))]
    >>> choose_alpha(grid, "acc")["alpha"]
    0.5
    """
    return max(grid, key=lambda entry: (entry[metric]["mean"], -entry["alpha"]))


def _against_round_0(out: Path, stage_dir: Path, benchmark: str) -> dict:
    """The stage's held-out evaluation paired with round 0's, problem by problem (`mathloop compare`)."""
    from mathloop.pipeline.compare import compare_benchmark, read_eval_folder

    before, after = read_eval_folder(out / "round-0" / "eval"), read_eval_folder(stage_dir / "eval")
    return compare_benchmark(before[benchmark], after[benchmark])


def _write_summary(out: Path, rows: list[dict]) -> dict:
    from mathloop.pipeline.compare import paired_cells

    summary = {"rounds": rows}
    write_json(out / "summary.json", summary)
    lines = ["| round | held-out acc | 95% CI | delta vs round 0 [95% CI] | b / c | McNemar p | problems | SFT rows | "
             "train samples correct | train problems solved (every sample right) | RM held-out pair acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        samples = row.get("samples") or {}
        correct = f"{samples['correct']}/{samples['samples']}" if samples.get("samples") else ""
        solved = (f"{samples['solved_problems']}/{samples['problems']}" if samples.get("problems") else "") + (
            f" ({samples['all_correct_problems']})" if "all_correct_problems" in samples else "")
        rm_acc = row.get("rm", {}).get("heldout_accuracy")
        paired = paired_cells(row["vs_round_0"].get("first_sample")) if "vs_round_0" in row else ["", "", ""]
        lines.append(f"| {row['round']} | {100 * row['acc']:.1f}% | [{100 * row['ci95'][0]:.1f}, "
                     f"{100 * row['ci95'][1]:.1f}] | {' | '.join(paired)} | {row['n']} | "
                     f"{row.get('selection', {}).get('rows', '')} | {correct} | {solved} | "
                     f"{'' if rm_acc is None else f'{rm_acc:.3f}'} |")
    table = "\n".join(lines)
    note = ("delta: points against round 0 on the same held-out problems (first sample), Tango's 95% score interval "
            "for paired proportions; b = right only in round 0, c = right only in this round; p = exact two-sided "
            "McNemar test (`mathloop compare` gives the full comparison).")
    explored = [f"round {row['round']}: temperature {row['temperature']['temperature']:g} (balance "
                + ", ".join(f"{entry['temperature']:g}: {entry['balance']:.3f}" for entry in row["temperature"]["grid"])
                + ")" for row in rows if row.get("temperature")]
    temperatures = ("\nSampling temperature chosen on the probe (explore section): " + "; ".join(explored) + "\n"
                    if explored else "")
    write_text_atomic(out / "summary.md", f"# mathloop loop: {out}\n\n{table}\n\n{note}\n{temperatures}"
                                          f"{coverage_table(rows)}{stage_table(rows)}")
    write_text_atomic(out / "accuracy.svg", accuracy_svg(rows))
    return summary


def coverage_table(rows: list[dict]) -> str:
    """The summary's table of the coverage evaluations: per round the mean share of correct samples, maj@k and
    pass@k, each with its change against round 0 on the same problems (empty when no row has one)."""
    from mathloop.pipeline.compare import paired_cells

    covered = [row for row in rows if row.get("coverage")]
    if not covered:
        return ""
    first = covered[0]["coverage"]
    k = first["samples"]
    lines = ["", f"Coverage: {k} samples per problem on the first {first['n']} held-out problems, in percent; "
                 f"changes against round 0 on the same problems (mean: paired bootstrap interval; maj@{k} and "
                 f"pass@{k}: Tango's interval, b / c, exact McNemar p).", "",
             f"| round | mean per sample | delta [95% CI] | maj@{k} | delta [95% CI] | b / c | p | pass@{k} | "
             f"delta [95% CI] | b / c | p |", "|---" * 11 + "|"]
    for row in covered:
        metrics, versus = row["coverage"]["metrics"], row["coverage"].get("vs_round_0", {})
        mean = versus.get("mean")
        cells = [str(row["round"]), f"{100 * metrics['pass@1']['mean']:.1f}",
                 f"{100 * mean['delta']:+.1f} [{100 * mean['ci95'][0]:+.1f}, {100 * mean['ci95'][1]:+.1f}]"
                 if mean else "-"]
        for key, name in (("maj_at_k", f"maj@{k}"), ("pass_at_k", f"pass@{k}")):
            value = metrics.get(name)
            cells += [f"{100 * value['mean']:.1f}" if value else "-", *paired_cells(versus.get(key))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def stage_table(rows: list[dict]) -> str:
    """The summary's table of wall minutes per stage and round (empty when no row has `stage_seconds`).

    >>> spent = {"sample": 851.4, "select": 0.6, "sft": 827.0, "eval": 93.0}
    >>> print(stage_table([{"round": 0, "stage_seconds": {"eval": 66.0}}, {"round": 1, "stage_seconds": spent}]))
    <BLANKLINE>
    Wall minutes per stage, summed over the sessions that ran it:
    <BLANKLINE>
    | round | sample | select | sft | eval | total |
    |---|---|---|---|---|---|
    | 0 |  |  |  | 1.1 | 1.1 |
    | 1 | 14.2 | 0.0 | 13.8 | 1.6 | 29.5 |
    <BLANKLINE>
    """
    timed = [row for row in rows if row.get("stage_seconds")]
    if not timed:
        return ""
    stages = [stage for stage in STAGES if any(stage in row["stage_seconds"] for row in timed)]
    lines = ["", "Wall minutes per stage, summed over the sessions that ran it:", "",
             f"| round | {' | '.join(stages)} | total |", "|---" * (len(stages) + 2) + "|"]
    for row in timed:
        spent = row["stage_seconds"]
        cells = [f"{spent[stage] / 60:.1f}" if stage in spent else "" for stage in stages]
        lines.append(f"| {row['round']} | {' | '.join(cells)} | {sum(spent.values()) / 60:.1f} |")
    return "\n".join(lines) + "\n"


def _write_report(out: Path) -> None:
    """report.html of the run so far (`mathloop report`); a report is a view, so its failure never stops the loop."""
    try:
        from mathloop.report import build_report

        build_report([str(out)], out / "report.html")
    except Exception as e:  # noqa: BLE001 - any failure of the view is logged, the run goes on
        log.warning("loop: could not write %s (%s: %s); the run goes on, `mathloop report %s` retries it",
                    out / "report.html", type(e).__name__, e, out)


def accuracy_svg(rows: list[dict]) -> str:
    """Held-out accuracy per round with 95% interval bars, as an SVG file of its own (the report's `line_chart`);
    with the coverage evaluation, also its mean share of correct samples, maj@k and pass@k per round."""
    from mathloop.report.plots import Series, line_chart

    x = list(range(len(rows)))
    series = [Series("greedy" if any(row.get("coverage") for row in rows) else "", x, [row["acc"] for row in rows],
                     [row["ci95"][0] for row in rows], [row["ci95"][1] for row in rows])]
    covered = [row.get("coverage") or {} for row in rows]
    k = next((c["samples"] for c in covered if c), None)
    for metric, name in (("pass@1", "mean per sample"), (f"maj@{k}", f"maj@{k}"), (f"pass@{k}", f"pass@{k}")):
        values = [c.get("metrics", {}).get(metric) for c in covered]
        if any(values):
            series.append(Series(f"{name} ({k} samples)" if metric == "pass@1" else name, x,
                                 [v["mean"] if v else None for v in values],
                                 [v["ci95"][0] if v else None for v in values],
                                 [v["ci95"][1] if v else None for v in values]))
    title = "held-out accuracy and coverage per round (95% CI)" if len(series) > 1 else \
        "held-out accuracy per round (95% CI)"
    return line_chart(title, series, x_label="round", percent=True, x_names=[str(row["round"]) for row in rows],
                      width=480, height=300, standalone=True) + "\n"
