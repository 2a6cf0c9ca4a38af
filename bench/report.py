"""Size and load time of `mathloop report` for a loop folder with 10,000 samples, against a 200-sample anchor.

    python bench/report.py [--samples 10000]

Builds synthetic loop folders (tests/synthetic_runs.py: 3 evaluations of `heldout` problems plus round 1's training
samples, 4 per problem), writes their reports, and when /usr/bin/chromium and playwright are present opens each in
headless Chromium: time until the page is ready (data parsed, first page of rows drawn), and time of one filter
change. Prints the figures and the ratios to the anchor.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from synthetic_runs import write_loop_folder  # noqa: E402

from mathloop.report import build_report  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def measure(folder: Path, samples: int) -> dict:
    heldout = samples * 3 // 10 // 3  # 30% evaluation samples over three evaluations, the rest training samples
    loop = write_loop_folder(folder / "loop", heldout=heldout, train_problems=(samples - 3 * heldout) // 4)
    started = time.perf_counter()
    result = build_report([str(loop)], folder / "report.html")
    return {**result, "build_s": time.perf_counter() - started}


def browser_times(path: Path, repeats: int = 3) -> dict:
    from playwright.sync_api import sync_playwright

    loads, filters = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for _ in range(repeats):
            page = browser.new_page()
            started = time.perf_counter()
            page.goto(path.as_uri())
            page.wait_for_selector("body[data-ready='1']")
            loads.append(time.perf_counter() - started)
            started = time.perf_counter()
            page.select_option("#f-verdict", label="correct")
            page.wait_for_function("document.getElementById('sample-count').textContent.indexOf('of') > 0")
            filters.append(time.perf_counter() - started)
            page.close()
        browser.close()
    return {"load_s": min(loads), "filter_s": min(filters)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for name, n in (("anchor", 200), ("large", args.samples)):
            rows[name] = measure(Path(tmp) / name, n)
            if Path("/usr/bin/chromium").exists():
                try:
                    rows[name].update(browser_times(Path(rows[name]["path"])))
                except ImportError:
                    pass
        for name, row in rows.items():
            print(f"{name}: {row['samples']} samples, {row['bytes'] / 1e6:.2f} MB, build {row['build_s']:.2f} s"
                  + (f", load {row['load_s']:.2f} s, filter {row['filter_s'] * 1000:.0f} ms" if "load_s" in row else ""))
        large, anchor = rows["large"], rows["anchor"]
        print(f"ratios large/anchor: size {large['bytes'] / anchor['bytes']:.1f}x, build "
              f"{large['build_s'] / anchor['build_s']:.1f}x"
              + (f", load {large['load_s'] / anchor['load_s']:.1f}x" if "load_s" in large else ""))


if __name__ == "__main__":
    main()
