"""`mathloop report RUN_DIR... --out report.html`: one self-contained HTML page to look at runs.

The page opens offline: its styles, scripts (KaTeX 0.19.1, MIT, vendored in `katex/` with its licence; a subset of its
fonts inlined as base64, other styles fall back to the system serif) and data are inline, and its Content Security
Policy forbids any fetch. It shows, top to bottom:
  1. per-benchmark metrics of every evaluation (acc, maj@k, rm@k, pass@k with 95% intervals);
  2. with two or more evaluations (several runs, or the rounds of a loop), each paired with the first one as
     `mathloop compare` pairs them (delta with Tango's interval, b / c, McNemar p);
  3. plots as inline SVG: accuracy per evaluation with 95% intervals, GRPO curves (reward mean +- std, accuracy, KL,
     response length, truncation rate, loss), SFT and RM loss curves, from the trainers' metrics.jsonl;
  4. a sample browser (filters: samples from, benchmark, verdict, mode, RM score range, changed between two
     evaluations; math rendered, TIR code and executor output set apart);
  5. decontamination, selection, synthesis and RM-data reports (what was removed and why).
What each path may be: see `mathloop.report.runs`.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

from mathloop.records import VERDICTS
from mathloop.report.plots import Series, line_chart
from mathloop.report.runs import Curves, RunView, SampleSet, read_run

VERDICT_INDEX = {verdict: i for i, verdict in enumerate(VERDICTS)}
# Training curves drawn per trainer: (metrics.jsonl key, title, values are a share in [0, 1])
CURVES = {
    "grpo": [("reward_mean", "reward (mean, band: +- std)", False), ("accuracy", "rollout accuracy", True),
             ("kl", "KL to the reference", False), ("response_length", "response length (tokens)", False),
             ("entropy", "policy entropy (response tokens)", False),
             ("truncation_rate", "truncated responses", True), ("flat_groups", "groups with equal rewards", True),
             ("is_ratio_mean", "importance ratio pi_old / mu (mean)", False), ("loss", "loss", False)],
    "rm": [("loss", "listwise loss", False), ("heldout_accuracy", "held-out pairwise accuracy", True)],
    "sft": [("loss", "training loss", False), ("eval_loss", "eval loss", False),
            ("mean_token_accuracy", "token accuracy", True), ("learning_rate", "learning rate", False)],
}


def build_report(paths: list[str], out: str | Path, title: str | None = None) -> dict[str, Any]:
    """Read every run and write the report to `out` (atomically); returns {path, bytes, samples, evaluations}."""
    if not paths:
        raise ValueError("report: give at least one run folder or graded file")
    labels = _labels(paths)
    runs = [read_run(path, label) for path, label in zip(paths, labels)]
    page = render_page(runs, title or "mathloop report: " + ", ".join(labels))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    sets = [s for run in runs for s in run.sample_sets]
    return {"path": str(out), "bytes": out.stat().st_size, "samples": sum(len(s.samples) for s in sets),
            "evaluations": sum(s.evaluation for s in sets)}


def _labels(paths: list[str]) -> list[str]:
    """Short unique names: the folder names, or the paths where two folders share a name."""
    names = [Path(p).name or p for p in paths]
    return [p if names.count(n) > 1 else n for p, n in zip(paths, names)]


# ---- the page -------------------------------------------------------------------------------------------------

def render_page(runs: list[RunView], title: str) -> str:
    from mathloop import __version__

    evaluations = [s for run in runs for s in run.sample_sets if s.evaluation]
    sections = [("metrics", "Metrics", _metrics_section(evaluations))]
    if len(evaluations) >= 2:
        sections.append(("comparison", "Paired comparison", _comparison_section(evaluations)))
    sections.append(("plots", "Plots", _plots_section(evaluations, [c for run in runs for c in run.curves])))
    reports = [r for run in runs for r in run.data_reports]
    after = [("data-reports", "What was removed and why", _reports_section(reports))] if reports else []

    def html_sections(items: list[tuple[str, str, str]]) -> str:
        return "\n".join(f'<section id="{key}">\n<h2>{name}</h2>\n{content}\n</section>' for key, name, content in items)

    nav = "".join(f'<a href="#{key}">{name}</a>' for key, name, _ in
                  sections + [("samples", "Samples", "")] + after)
    meta = " &middot; ".join([", ".join(f"{html.escape(r.label)} ({r.kind}: {html.escape(r.path)})" for r in runs),
                              f"mathloop {__version__}",
                              datetime.datetime.now().strftime("written %Y-%m-%d %H:%M")])
    parts = {"title": html.escape(title), "meta": meta, "nav": nav, "sections": html_sections(sections),
             "after": html_sections(after),
             "katex_css": katex_css(), "katex_js": _asset("katex/katex.min.js"), "report_css": _asset("report.css"),
             "report_js": _asset("report.js"), "samples_json": samples_json(runs)}
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], _asset("template.html"))


def _asset(name: str) -> str:
    return resources.files("mathloop.report").joinpath(name).read_text(encoding="utf-8")


def katex_css() -> str:
    """KaTeX's stylesheet with its vendored fonts inlined (woff2, base64); @font-face rules of fonts not vendored
    are dropped, so nothing is fetched and those styles fall back to the next font in KaTeX's list."""
    fonts = resources.files("mathloop.report").joinpath("katex/fonts")

    def inline(match: re.Match) -> str:
        name = re.search(r"url\(fonts/(KaTeX_[\w-]+)\.woff2\)", match.group(0))
        font = fonts.joinpath(f"{name.group(1)}.woff2") if name else None
        if font is None or not font.is_file():
            return ""
        data = base64.b64encode(font.read_bytes()).decode("ascii")
        return re.sub(r"src:[^}]*", f'src:url(data:font/woff2;base64,{data}) format("woff2")', match.group(0))

    return re.sub(r"@font-face\{[^}]*\}", inline, _asset("katex/katex.min.css"))


def samples_json(runs: list[RunView]) -> str:
    """The browser's data: sample sets, a table of distinct questions, and one compact object per sample."""
    sets, questions, rows = [], {}, []
    for run in runs:
        for sample_set in run.sample_sets:
            index = len(sets)
            sets.append({"label": sample_set.label, "evaluation": sample_set.evaluation})
            for s in sample_set.samples:
                q = questions.setdefault(s["question"] or "", len(questions))
                rows.append({"s": index, "b": s["benchmark"], "p": s["problem_id"], "i": s["sample_index"],
                             "m": s["mode"], "v": VERDICT_INDEX.get(s["verdict"], 3), "r": _finite(s["rm_score"]),
                             "a": s["pred"], "g": s["gold"], "q": q, "t": s["response"],
                             "o": s["tool_output_spans"], "f": s["finish_reason"]})
    text = json.dumps({"sets": sets, "questions": list(questions), "samples": rows}, ensure_ascii=False,
                      separators=(",", ":"))
    # inside <script>, "</script" or "<!--" in a response would end the block: escape every "<"
    return text.replace("<", "\\u003c")


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


# ---- sections -------------------------------------------------------------------------------------------------

def _cell(metric: dict | None) -> str:
    if not metric:
        return '<td class="num">-</td>'
    text = f"{100 * metric['mean']:.1f}"
    if metric.get("ci95"):
        low, high = metric["ci95"]
        text += f' <span class="ci">[{100 * low:.1f}, {100 * high:.1f}]</span>'
    return f'<td class="num">{text}</td>'


def _metric_columns(entries: list[dict]) -> list[str]:
    order = {"acc": 0, "maj": 1, "rm": 2, "pass": 3}
    keys = {k for e in entries for k, v in e.items() if isinstance(v, dict) and "mean" in v}
    return sorted(keys, key=lambda k: (order.get(k.split("@")[0], 9), int(k.split("@")[1]) if "@" in k else 0))


def _metrics_section(evaluations: list[SampleSet]) -> str:
    if not evaluations:
        return '<p class="note">No evaluation among these runs (training runs only).</p>'
    rows = []
    for s in evaluations:
        entries = {**s.summary["benchmarks"], **({"average": s.summary["average"]}
                                                 if len(s.summary["benchmarks"]) > 1 else {})}
        rows += [(s.label, name, entry) for name, entry in entries.items()]
    columns = _metric_columns([entry for _, _, entry in rows])
    body = "".join(f"<tr><td>{html.escape(label)}</td><td>{html.escape(name)}</td>"
                   f"<td class=\"num\">{entry.get('n_problems', '')}</td><td class=\"num\">{entry.get('n_samples', '')}"
                   "</td>" + "".join(_cell(entry.get(c)) for c in columns) + "</tr>" for label, name, entry in rows)
    return ('<p class="note">Percent, with 95% intervals (Wilson for acc, the first sample of each problem; a normal '
            'interval over problems for maj@k, rm@k and pass@k; pass@k is the unbiased estimator). An average row '
            'is the unweighted mean over benchmarks.</p><table class="metrics"><thead><tr><th>evaluation</th>'
            '<th>benchmark</th><th class="num">problems</th><th class="num">samples</th>'
            + "".join(f'<th class="num">{c}</th>' for c in columns) + f"</tr></thead><tbody>{body}</tbody></table>")


def _comparison_section(evaluations: list[SampleSet]) -> str:
    from mathloop.pipeline.compare import compare_outcomes, paired_cells

    base = evaluations[0]
    out = [f'<p class="note">Each evaluation paired with <b>{html.escape(base.label)}</b> on the problems both have '
           f"(as <code>mathloop compare</code>): accuracy of each problem's first sample, delta = this one - "
           f"{html.escape(base.label)} in points with Tango's 95% score interval for paired proportions; b = right "
           f"only in {html.escape(base.label)}, c = right only in this one; p = exact two-sided McNemar test.</p>",
           '<table class="comparison"><thead><tr><th>evaluation</th><th>benchmark</th><th class="num">shared</th>'
           f'<th class="num">{html.escape(base.label)}</th><th class="num">this one</th><th class="num">delta [95% CI]'
           '</th><th class="num">b / c</th><th class="num">p</th></tr></thead><tbody>']
    for s in evaluations[1:]:
        result = compare_outcomes(base.outcomes, s.outcomes)
        for name, entry in result["benchmarks"].items():
            first = entry.get("first_sample")
            accs = ([f"{100 * first['acc_a']['mean']:.1f}", f"{100 * first['acc_b']['mean']:.1f}"] if first
                    else ["-", "-"])
            delta, counts, p = paired_cells(first)
            cls = "" if not first else ("better" if first["ci95"][0] > 0 else "worse" if first["ci95"][1] < 0 else "")
            out.append(f"<tr><td>{html.escape(s.label)}</td><td>{html.escape(name)}</td>"
                       f'<td class="num">{entry["shared"]}</td><td class="num">{accs[0]}</td>'
                       f'<td class="num">{accs[1]}</td><td class="num {cls}">{delta}</td><td class="num">{counts}</td>'
                       f'<td class="num">{p}</td></tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


def _plots_section(evaluations: list[SampleSet], curves: list[Curves]) -> str:
    charts = []
    if len(evaluations) >= 2:
        names = sorted({b for s in evaluations for b in s.summary["benchmarks"]})
        series = []
        for name in names:
            acc = [s.summary["benchmarks"].get(name, {}).get("acc") for s in evaluations]
            series.append(Series(name, list(range(len(evaluations))), [a["mean"] if a else None for a in acc],
                                 [a["ci95"][0] if a else None for a in acc], [a["ci95"][1] if a else None for a in acc]))
        charts.append(line_chart("accuracy per evaluation (first sample, 95% CI)", series, x_label="evaluation",
                                 percent=True, x_names=[s.label for s in evaluations],
                                 width=max(420, 90 * len(evaluations))))
    out = ['<div class="charts">' + "".join(charts) + "</div>"] if charts else []
    for c in curves:
        drawn = [chart for chart in (_curve_chart(c, *spec) for spec in curve_specs(c)) if chart]
        if drawn:
            out.append(f"<h3>{html.escape(c.label)} ({c.kind.upper()}, {len(c.records)} logged steps)</h3>"
                       f'<div class="charts">{"".join(drawn)}</div>')
    if not out:
        return '<p class="note">Nothing to plot: one evaluation and no training run.</p>'
    return "\n".join(out)


def curve_specs(curves: Curves) -> list[tuple[str, str, bool]]:
    """The charts of a training run: its kind's in `CURVES`; a kind not listed there (a newer trainer) gets one
    chart per number it logs (at most 8), titled by its key."""
    if curves.kind in CURVES:
        return CURVES[curves.kind]
    keys = dict.fromkeys(key for r in curves.records for key, value in r.items()
                         if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool))
    return [(key, key, False) for key in list(keys)[:8]]


def _curve_chart(curves: Curves, key: str, title: str, percent: bool) -> str | None:
    records = [r for r in curves.records if isinstance(r.get(key), (int, float))]
    if not records:
        return None
    xs = [r.get("step", i + 1) for i, r in enumerate(records)]
    ys = [float(r[key]) for r in records]
    low = high = None
    if key == "reward_mean" and all(isinstance(r.get("reward_std"), (int, float)) for r in records):
        low = [y - r["reward_std"] for y, r in zip(ys, records)]
        high = [y + r["reward_std"] for y, r in zip(ys, records)]
    series = [Series("", xs, ys, low, high, band=True)]
    if len(ys) >= 2 * TREND_WINDOW:  # a few rollouts per step are noisy: the trend beside the steps
        series = [Series("per step", xs, ys, low, high, band=True),
                  Series(f"mean of the last {TREND_WINDOW} steps", xs, moving_mean(ys, TREND_WINDOW))]
    return line_chart(title, series, x_label="step", percent=percent)


TREND_WINDOW = 10  # steps in the moving mean drawn over a training curve of at least twice as many steps


def moving_mean(values: list[float], window: int) -> list[float | None]:
    """The mean of each value and the `window - 1` before it; None where fewer than `window` values are behind.

    >>> moving_mean([1.0, 2.0, 3.0, 5.0], 2)
    [None, 1.5, 2.5, 4.0]
    """
    out: list[float | None] = [None] * min(window - 1, len(values))
    for i in range(window - 1, len(values)):
        out.append(sum(values[i - window + 1:i + 1]) / window)
    return out


def _reports_section(reports: list[tuple[str, Any]]) -> str:
    return "\n".join(f'<details class="report" open><summary>{html.escape(title)}</summary>{json_html(value)}'
                     f"</details>" for title, value in reports)


def json_html(value: Any, limit: int = 200) -> str:
    """A JSON value as nested HTML tables: a mapping as key/value rows, a list of mappings as one table (first
    `limit` rows), other lists inline.

    >>> json_html({"removed": 1, "examples": [{"id": "a", "benchmark": "math"}]})
    '<table class="kv"><tr><th>removed</th><td>1</td></tr><tr><th>examples</th><td><table><tr><th>id</th><th>benchmark</th></tr><tr><td>a</td><td>math</td></tr></table></td></tr></table>'
    """
    if isinstance(value, dict):
        if not value:
            return "none"
        return '<table class="kv">' + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{json_html(v, limit)}</td></tr>"
                                              for k, v in value.items()) + "</table>"
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            keys = list(dict.fromkeys(k for v in value[:limit] for k in v))
            rows = "".join("<tr>" + "".join(f"<td>{json_html(v.get(k, ''), limit)}</td>" for k in keys) + "</tr>"
                           for v in value[:limit])
            more = f"<p class=\"note\">... {len(value) - limit} more</p>" if len(value) > limit else ""
            return ("<table><tr>" + "".join(f"<th>{html.escape(str(k))}</th>" for k in keys) + f"</tr>{rows}</table>"
                    + more)
        return html.escape(", ".join(str(v) for v in value)) if value else "none"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))
