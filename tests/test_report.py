"""`mathloop report`: one offline HTML page of runs. What it shows is read back from the page (tables, comparison, SVG
plots, the embedded samples); the browser test opens the page a fake-backend loop wrote in headless Chromium."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from mathloop.cli import main
from mathloop.pipeline.compare import compare_outcomes, paired_cells, read_eval_folder
from mathloop.records import Sample, write_jsonl
from synthetic_runs import _eval_folder, write_loop_folder

CHROMIUM = "/usr/bin/chromium"


def embedded_samples(page: str) -> dict:
    return json.loads(re.search(r'<script id="samples-data" type="application/json">(.*?)</script>', page, re.S)
                      .group(1))


def test_a_loop_report_shows_metrics_comparison_plots_samples_and_what_was_removed(tmp_path, capsys):
    loop = write_loop_folder(tmp_path / "loop", heldout=30, train_problems=10, train_n=4)
    out = tmp_path / "site" / "report.html"
    assert main(["report", str(loop), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"path": str(out), "bytes": out.stat().st_size, "samples": 3 * 30 + 10 * 4, "evaluations": 3}
    page = out.read_text()

    metrics = page[page.index('<table class="metrics">'):page.index("</table>", page.index('<table class="metrics">'))]
    assert re.findall(r"<tr><td>(.*?)</td><td>gsm8k</td>", metrics) == ["loop:0", "loop:1", "loop:grpo"]
    before, after = read_eval_folder(loop / "round-0" / "eval"), read_eval_folder(loop / "round-1" / "eval")
    delta, counts, p = paired_cells(compare_outcomes(before, after)["benchmarks"]["gsm8k"]["first_sample"])
    assert re.search(rf"<td>loop:1</td><td>gsm8k</td>.*?{re.escape(delta)}</td><td class=\"num\">{counts}</td>"
                     rf"<td class=\"num\">{p}</td>", page)
    titles = re.findall(r'<svg class="chart".*?aria-label="([^"]+)"', page)
    assert titles[0] == "accuracy per evaluation (first sample, 95% CI)"
    assert {"listwise loss", "held-out pairwise accuracy", "training loss", "reward (mean, band: +- std)",
            "KL to the reference", "truncated responses", "response length (tokens)"} <= set(titles)
    assert "train/planted" in page and "no correct response" in page  # decontamination and selection reports

    data = embedded_samples(page)
    assert [s["label"] for s in data["sets"]] == ["loop:0", "loop:1 training samples", "loop:1", "loop:grpo"]
    assert len(data["samples"]) == 130 and sum(s["r"] is not None for s in data["samples"]) == 40
    tir = next(s for s in data["samples"] if s["m"] == "tir")
    start, end = tir["o"][0]
    assert tir["t"][start:end].strip() .replace("\n```", "") .replace(".", "").isdigit()  # the executor's text


def test_the_page_fetches_nothing(tmp_path):
    """Every script, style and font is inline, and the Content Security Policy forbids any load."""
    loop = write_loop_folder(tmp_path / "loop")
    out = tmp_path / "report.html"
    main(["report", str(loop), "--out", str(out)])
    page = out.read_text()
    assert "default-src 'none'" in page and "font-src data:" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|url\((["']?)(https?:|//|fonts/)""", page)
    assert page.count("data:font/woff2;base64,") == 9  # the vendored KaTeX fonts


def test_several_runs_side_by_side_are_paired_with_the_first(tmp_path):
    import random

    rng = random.Random(1)
    _eval_folder(tmp_path / "a", rng, 25, 0.3, "cot")
    _eval_folder(tmp_path / "b", rng, 25, 0.7, "cot")
    graded = tmp_path / "graded.jsonl"  # a `mathloop grade` output row of the official harness
    write_jsonl(graded, [{"idx": 0, "question": "1+1?", "gt": "2", "code": ["\\boxed{2}", "\\boxed{3}"],
                          "mathloop": {"preds": ["2", "3"], "verdicts": ["correct", "incorrect"]}}])
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), str(graded), "--out", str(out)]) == 0
    page = out.read_text()
    first = compare_outcomes(read_eval_folder(tmp_path / "a"), read_eval_folder(tmp_path / "b"))
    delta = paired_cells(first["benchmarks"]["gsm8k"]["first_sample"])[0]
    assert re.search(rf"<td>b</td><td>gsm8k</td>.*?{re.escape(delta)}", page)
    assert "<td>graded.jsonl</td><td>all</td>" in page  # its metrics row: acc 100, pass@2 100
    data = embedded_samples(page)
    assert [(s["p"], s["i"], s["v"]) for s in data["samples"] if s["s"] == 2] == [("0", 0, 0), ("0", 1, 1)]


def test_a_response_cannot_end_the_embedded_data(tmp_path):
    folder = tmp_path / "eval"
    write_jsonl(folder / "samples" / "gsm8k.jsonl", [Sample(
        problem_id="p", prompt="", response="</script><script>alert(1)</script><!-- $x$", verdict="incorrect",
        gold="1", pred=None)])
    main(["report", str(folder), "--out", str(tmp_path / "r.html")])
    page = (tmp_path / "r.html").read_text()
    assert page.count("<script") == 3  # the data, KaTeX, the browser
    assert embedded_samples(page)["samples"][0]["t"].startswith("</script><script>alert(1)")


def test_bad_paths_are_named(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html")]) == 2
    assert f"{tmp_path / 'missing'}: no such run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    assert "not a mathloop eval, loop, rm/sft/grpo folder" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_a_failing_report_only_warns_in_the_loop(tmp_path, monkeypatch, caplog):
    from mathloop.pipeline import loop

    def broken(paths, out, title=None):
        raise KeyError("metrics")

    monkeypatch.setattr("mathloop.report.build_report", broken)
    with caplog.at_level(logging.WARNING):
        loop._write_report(tmp_path)
    assert "could not write" in caplog.text and "KeyError" in caplog.text


# ---- in a real browser -----------------------------------------------------------------------------------------

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is absent (pip install 'mathloop[browser]')")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


def open_page(browser, path: Path):
    """The page with its console errors, uncaught exceptions and requests recorded."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems, requests = [], []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: problems.append(f"exception: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return page, problems, requests


def count(page) -> tuple[int, int]:
    shown, total = re.match(r"(\d+) of (\d+) samples", page.inner_text("#sample-count")).groups()
    return int(shown), int(total)


@pytest.fixture(scope="module")
def fake_loop_run(tmp_path_factory, tiny_model_dir, data_dir):
    """A whole loop round (RM, SFT, GRPO) on the tiny model with scripted samples: its report.html."""
    from mathloop.backends.fake import FakeBackend
    from mathloop.pipeline.loop import run_loop
    from test_loop import half_right, tiny_loop

    tmp_path = tmp_path_factory.mktemp("fake-loop")
    run_loop(tiny_loop(tmp_path, tiny_model_dir, data_dir), progress=False, backend=FakeBackend(half_right))
    return tmp_path / "run"


@pytest.mark.browser
@pytest.mark.usefixtures("one_torch_thread")
def test_the_report_a_loop_writes_renders_and_filters_in_chromium(browser, fake_loop_run, tmp_path):
    page, problems, requests = open_page(browser, fake_loop_run / "report.html")
    assert page.locator("table.metrics tbody tr").count() == 3  # rounds 0, 1 and grpo on the held-out set
    assert page.locator("table.comparison tbody tr").count() == 2
    charts = page.locator("svg.chart")
    assert charts.count() >= 5 and all(charts.nth(i).bounding_box()["height"] > 100 for i in range(charts.count()))
    assert page.locator("svg.chart polyline").count() >= 4  # lines were drawn
    shown, total = count(page)
    assert shown == total > 0 and page.locator("tr.sample-row").count() == min(total, 50)

    page.select_option("#f-verdict", label="correct")
    correct, _ = count(page)
    assert 0 < correct < total
    assert set(page.locator("tr.sample-row .verdict").all_inner_texts()) == {"correct"}
    page.select_option("#f-verdict", label="all")
    page.fill("#f-rm-min", "0")
    scored = [float(t) for t in page.locator("tr.sample-row td.num").all_inner_texts()]
    assert scored and min(scored) >= 0 and count(page)[0] < total
    page.fill("#f-rm-min", "")
    page.select_option("#f-set", label="run:0")
    assert set(page.locator("tr.sample-row td:first-child").all_inner_texts()) == {"run:0"}
    page.locator("tr.sample-row").first.click()
    assert "The answer is" in page.inner_text(".sample-detail .response")
    assert page.locator(".sample-detail .response .katex").count() == 1  # its bare \boxed{...}
    page.screenshot(path=str(tmp_path / "loop-report.png"), full_page=True)
    assert problems == [] and all(url.startswith(("file:", "data:")) for url in requests)


@pytest.mark.browser
def test_math_tir_code_and_changed_problems_in_chromium(browser, tmp_path):
    loop = write_loop_folder(tmp_path / "loop", heldout=40)
    main(["report", str(loop), "--out", str(tmp_path / "report.html")])
    page, problems, requests = open_page(browser, tmp_path / "report.html")
    total = count(page)[1]

    page.select_option("#f-change", "wrong-right")  # before loop:0, after loop:grpo
    flipped = count(page)[0]
    labels = page.locator("tr.sample-row td:first-child").all_inner_texts()
    assert 0 < flipped < total and set(labels) == {"loop:0", "loop:grpo"} and flipped % 2 == 0
    first = {}
    for row in page.locator("tr.sample-row").all():
        cells = row.locator("td").all_inner_texts()
        first[(cells[0], cells[2])] = cells[5]
    assert all(first[("loop:0", p)] == "incorrect" and first[("loop:grpo", p)] == "correct" for _, p in first)

    page.select_option("#f-change", "")
    page.select_option("#f-mode", "tir")
    page.locator("tr.sample-row").first.click()
    detail = page.locator(".sample-detail")
    assert detail.locator(".katex").count() >= 2  # question and response math rendered by KaTeX
    assert detail.locator(".block.code pre").inner_text().startswith("print(")
    assert re.fullmatch(r"[\d.]+", detail.locator(".block.exec-output pre").inner_text().strip())
    assert detail.locator(".block-label").all_inner_texts() == ["python", "executor output"]
    page.screenshot(path=str(tmp_path / "sample-detail.png"))
    assert problems == [] and all(url.startswith(("file:", "data:")) for url in requests)


def test_a_long_grpo_run_draws_entropy_and_the_trend_of_each_curve():
    """GRPO logs a few rollouts per step: past 20 steps each chart has the steps and their 10-step moving mean;
    entropy and the importance ratio are among the charts."""
    from mathloop.report import _curve_chart, curve_specs, moving_mean
    from mathloop.report.runs import Curves

    records = [{"step": i + 1, "reward_mean": (i % 2) * 1.0, "reward_std": 0.5, "entropy": 0.2 - 0.001 * i,
                "is_ratio_mean": 1.0} for i in range(30)]
    titles = [title for _, title, _ in curve_specs(Curves("run", "grpo", records))]
    assert {"policy entropy (response tokens)", "importance ratio pi_old / mu (mean)"} <= set(titles)
    chart = _curve_chart(Curves("run", "grpo", records), "reward_mean", "reward", False)
    assert ">per step</text>" in chart and ">mean of the last 10 steps</text>" in chart
    short = _curve_chart(Curves("run", "grpo", records[:19]), "reward_mean", "reward", False)
    assert "mean of the last" not in short
    assert moving_mean([0.0, 1.0] * 5, 10)[-1] == 0.5 and moving_mean([0.0, 1.0] * 5, 10)[:9] == [None] * 9
    assert moving_mean([1.0], 3) == [None]
