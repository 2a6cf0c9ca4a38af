"""`mathloop demo`: one round of the self-improvement loop on the embedded default model, sized for a laptop CPU.

The model (Qwen2.5-Coder-0.5B-Instruct, shipped in the `default-model` extra) samples 4 solutions at temperature 0.8
to each built-in procedural problem (arithmetic, fractions, percentages, linear equations, number theory, word
problems; exact answers): 128 are drawn, and those repeating a held-out question are dropped (9 with these seeds,
so 119 are sampled). The verifier keeps up to 2 distinct
correct solutions per problem, LoRA SFT trains on them for 2 epochs, and greedy accuracy on 240 other procedural
problems is printed before and after, paired problem by problem (the change with Tango's interval, problems fixed
and broken, the exact McNemar p). No reward model is trained: on a 2-core CPU that alone would take longer than the
whole demo. Generation uses the default backend, `auto`: OpenVINO GenAI with int8 weights when it is installed
(`mathloop[openvino]`), else the hf backend; both evaluations of a run use the same engine.

What the gain means: the model gets better at these procedural families (in distribution: the held-out problems are
new draws of the same templates), not at GSM8K. The measured result and times, with the CPU and load they ran
under, are in docs/results.md ("The demo"); the report ends with this run's minutes per stage, the cores it ran on
and the load average, to compare with them. `--out` keeps everything, and re-running resumes.
"""

from __future__ import annotations

from typing import Any

from pathlib import Path

from mathloop.pipeline.loop import LoopConfig, run_loop
from mathloop.runs import read_json

DEMO_SETTINGS: dict[str, Any] = {
    "model": "default",
    "problems": "synthetic:128:1",
    "heldout": "synthetic:240:2",
    "rounds": 1,
    "sft_init": "base",
    "sample": {"n": 4, "temperatures": [0.8], "top_p": 0.95, "max_new_tokens": 320},
    "select": {"k": 2},
    # One example per forward pass (batches of 4 padded the demo's rows by a quarter), 4 per optimizer step.
    "sft": {"lora": True, "lora_rank": 16, "epochs": 2, "learning_rate": 2e-4, "max_length": 640,
            "per_device_batch_size": 1, "gradient_accumulation_steps": 4, "lr_scheduler": "cosine",
            "warmup_ratio": 0.0},
    "eval": {"max_new_tokens": 320},
}


def demo_config(output_dir: str, model: str = "default", data_dir: str | None = None) -> LoopConfig:
    """The demo's loop settings. Training problems and selected responses are checked against the packaged
    benchmarks, plus those of a data folder when one is known ($MATHLOOP_DATA_DIR or `data_dir`); setting one
    later does not stop a run from resuming."""
    from mathloop.data.sources import default_data_dir

    data_dir = data_dir or (str(default_data_dir()) if default_data_dir() else None)
    from mathloop.backends import AUTO, resolve_backend

    settings = {**DEMO_SETTINGS, "model": model}
    name, args = resolve_backend(AUTO)  # named in the loop's run.json too (and as the demo named it before `auto`)
    for stage in ("sample", "eval"):
        settings[stage] = {**settings[stage], "backend": name, "backend_args": args}
    return LoopConfig(output_dir=output_dir, data_dir=data_dir, decontaminate=True, **settings)


def run_demo(output_dir: str, model: str = "default", progress: bool = True, backend=None) -> str:
    """Run (or resume) the demo and return the before/after report as text."""
    import time

    started, load_before = time.time(), load_average()
    summary = run_loop(demo_config(output_dir, model), progress=progress, backend=backend)
    setup_file = Path(output_dir) / "decontamination.json"
    setup = read_json(setup_file) if setup_file.exists() else None
    return demo_report(summary, output_dir, model, time.time() - started, machine_lines(load_before), setup)


def demo_report(summary: dict, output_dir: str, model: str, seconds: float, machine: list[str],
                setup: dict | None = None) -> str:
    """The demo's closing report: what it trained on, accuracy before and after with the paired verdict, the minutes
    per stage (`stage_table`, summed over the sessions of a resumed run) and the machine it ran on. `setup`: the
    run's decontamination.json, whose counts say how many drawn problems were removed before sampling.

    >>> rows = [{"round": 0, "acc": 0.4, "ci95": [0.3, 0.5], "n": 240, "stage_seconds": {"eval": 120.0}},
    ...         {"round": 1, "acc": 0.5, "ci95": [0.4, 0.6], "n": 240, "selection": {"rows": 118},
    ...          "stage_seconds": {"sample": 210.0, "eval": 90.0},
    ...          "samples": {"problems": 119, "samples": 476, "correct": 200}}]
    >>> setup = {"problems": 128, "heldout_overlap": 9, "removed": 0}
    >>> print(demo_report({"rounds": rows}, "runs/demo", "default", 400.0, ["  ran on 2 cores"], setup))
    mathloop demo: one round of sample -> verify -> select -> SFT on default
      training problems: 119 of 128 drawn (9 repeat a held-out question: removed)
      samples: 476 (200 verified correct), SFT rows: 118
      held-out: 240 other built-in procedural problems (none repeats a training question), greedy
      before (starting model)       40.0%   95% CI [30.0, 50.0]
      after one round of SFT        50.0%   95% CI [40.0, 60.0]
    <BLANKLINE>
    Wall minutes per stage, summed over the sessions that ran it:
    <BLANKLINE>
    | round | sample | eval | total |
    |---|---|---|---|
    | 0 |  | 2.0 | 2.0 |
    | 1 | 3.5 | 1.5 | 5.0 |
    <BLANKLINE>
      ran on 2 cores
      wall time this session: 6.7 min; everything is in runs/demo (summary.md, accuracy.svg, report.html)
    """
    from mathloop.pipeline.loop import stage_table

    before, after = summary["rounds"][0], summary["rounds"][-1]
    selection = after.get("selection", {})
    samples = after.get("samples", {})

    def line(label: str, row: dict) -> str:
        low, high = row["ci95"]
        return f"  {label:<28} {100 * row['acc']:5.1f}%   95% CI [{100 * low:.1f}, {100 * high:.1f}]"

    setup = setup or {}
    removed = [f"{count} {why}" for count, why in ((setup.get("heldout_overlap"), "repeat a held-out question"),
                                                   (setup.get("removed"), "match a benchmark test item")) if count]
    drawn = f" of {setup['problems']} drawn ({', '.join(removed)}: removed)" if removed else ""
    return "\n".join([
        f"mathloop demo: one round of sample -> verify -> select -> SFT on {model}",
        f"  training problems: {samples.get('problems', '?')}{drawn}",
        f"  samples: {samples.get('samples', '?')} ({samples.get('correct', '?')} verified correct), SFT rows: "
        f"{selection.get('rows', '?')}",
        f"  held-out: {before['n']} other built-in procedural problems (none repeats a training question), greedy",
        line("before (starting model)", before),
        line("after one round of SFT", after),
        *paired_lines(after.get("vs_round_0", {}).get("first_sample")),
        stage_table(summary["rounds"]),
        *machine,
        f"  wall time this session: {seconds / 60:.1f} min; everything is in {output_dir} (summary.md, "
        f"accuracy.svg, report.html)",
    ])


def load_average() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    import os

    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_lines(load_before: float | None, load_after: float | None = None, cores: int | None = None,
                  cpu: str | None = None) -> list[str]:
    """The cores the demo ran on and how busy they were, so its minutes can be compared with the measured ones: the
    demo keeps every core it may use busy, so a load average well above the core count means other jobs shared
    them and the minutes are longer than on idle cores.

    >>> print("\\n".join(machine_lines(0.1, 2.1, cores=2, cpu="AMD EPYC")))
      ran on 2 cores (AMD EPYC); load average 0.1 before the run, 2.1 at its end: the cores were free for it
    >>> print("\\n".join(machine_lines(3.0, 5.2, cores=2, cpu="AMD EPYC")))
      ran on 2 cores (AMD EPYC); load average 3.0 before the run, 5.2 at its end: other jobs shared the cores, so
      the minutes above are longer than this CPU takes when idle (docs/results.md, "The demo")
    """
    import os

    from mathloop.hardware import _cpu_model

    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = cpu or _cpu_model()
    load_after = load_average() if load_after is None else load_after
    if load_before is None or load_after is None:
        return [f"  ran on {cores} cores ({cpu}); no load average on this system"]
    head = (f"  ran on {cores} cores ({cpu}); load average {load_before:.1f} before the run, {load_after:.1f} at its "
            f"end")
    if load_before < 0.5 * cores and load_after < 1.5 * cores:
        return [head + ": the cores were free for it"]
    return [head + ": other jobs shared the cores, so",
            "  the minutes above are longer than this CPU takes when idle (docs/results.md, \"The demo\")"]


def paired_lines(first: dict | None) -> list[str]:
    """The demo's paired verdict: the change on the same held-out problems, its interval, the discordant
    problems and the exact McNemar p-value, in words a first-time user can read.

    >>> print("\\n".join(paired_lines({"delta": 0.1, "ci95": [0.04, 0.16], "b": 5, "c": 25, "mcnemar_p": 0.0003})))
      change on the same problems  +10.0 points, 95% CI [+4.0, +16.0]
      problems fixed / broken      25 fixed (wrong before, right after), 5 broken (right before, wrong after)
      exact McNemar test           p = 0.0003: a real gain at the 5% level
    """
    from mathloop.pipeline.compare import format_p

    if not first:
        return []
    low, high = first["ci95"]
    p = first["mcnemar_p"]
    if p < 0.05:
        verdict = "a real gain at the 5% level" if first["delta"] > 0 else "a real loss at the 5% level"
    else:
        verdict = "no change this sample can tell apart from chance"
    return [
        f"  {'change on the same problems':<28} {100 * first['delta']:+.1f} points, 95% CI [{100 * low:+.1f}, "
        f"{100 * high:+.1f}]",
        f"  {'problems fixed / broken':<28} {first['c']} fixed (wrong before, right after), {first['b']} broken "
        f"(right before, wrong after)",
        f"  {'exact McNemar test':<28} p = {format_p(p)}: {verdict}",
    ]
