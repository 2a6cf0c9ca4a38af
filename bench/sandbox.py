"""Benchmark: TIR code cells per second and latency, mathloop's Sandbox vs two anchors, as ratios from one run.

Workload: trajectories of 4 notebook cells each (sympy solve, arithmetic on the previous cells' variables, a loop,
a final print), like a TIR rollout with 4 tool calls. Cell i of every trajectory is submitted together (one batch
per tool-call round, as the TIR loop does), `--workers` calls at a time.

- pool: `Sandbox(workers, timeout=5, memory_mb=1024)` with every limit on (namespaces, uid, rlimits, seccomp);
  cell i runs in the trajectory's session, so it executes only cell i. Start-up is reported separately.
- subprocess: a fresh `python -c` per call with the same timeout, RLIMIT_AS and RLIMIT_CPU (no namespaces); it has
  no state, so call i runs cells 1..i.
- official: the official harness's approach, in-process exec() of cells 1..i in a fresh namespace with stdout
  captured (no limits at all; one process, so one call at a time).

Latency is per call (wall, including queueing inside a round). Usage: python bench/sandbox.py [--trajectories N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    import mathloop  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mathloop.tools.sandbox import Sandbox, format_output, truncate  # noqa: E402

TIMEOUT, MEMORY_MB = 5.0, 1024


def trajectory(seed: int) -> list[str]:
    a, b = seed % 7 + 1, seed % 5 + 2
    return [
        f"import sympy as sp\nx = sp.Symbol('x')\nroots = sp.solve(x**2 - {a + b}*x + {a * b}, x)\nprint(roots)",
        f"total = sum(roots) * {b} + {a}**3 // {b}\nfrac = sp.Rational({a}, {b}) + sp.Rational(1, 3)\nprint(total, frac)",
        f"count = 0\nfor n in range(1, {2000 + seed}):\n    if n % {a + 1} == 0 or n % {b} == 0:\n        count += 1\n"
        "print(count)",
        "print(total + count, sp.nsimplify(frac * 6))",
    ]


def summarize(name: str, latencies: list[float], wall: float) -> dict:
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    return {"name": name, "calls": len(lat), "rate": len(lat) / wall, "p50": statistics.median(lat), "p99": p99}


def bench_pool(trajs: list[list[str]], workers: int) -> tuple[dict, float, list[str], dict]:
    start = time.monotonic()
    sandbox = Sandbox(workers=workers, timeout=TIMEOUT, memory_mb=MEMORY_MB)
    startup = time.monotonic() - start
    latencies, outputs = [], []
    with sandbox:
        wall_start = time.monotonic()
        for i in range(4):
            results = sandbox.run_many([(cells[i], f"t{j}") for j, cells in enumerate(trajs)])
            latencies += [r.seconds for r in results]
            outputs += [format_output(r) for r in results]
        wall = time.monotonic() - wall_start
        assert all(r.status == "ok" for r in results), results
        isolation = sandbox.isolation
    return summarize("pool (Sandbox, all limits)", latencies, wall), startup, outputs, isolation


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 * MEMORY_MB * 2**20,) * 2)  # no preloaded image to discount here
    resource.setrlimit(resource.RLIMIT_CPU, (int(TIMEOUT) + 1,) * 2)


def run_subprocess(code: str) -> tuple[float, str]:
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT,
                              preexec_fn=_limits, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL)
        out = truncate(proc.stdout.strip()) if proc.returncode == 0 else proc.stderr.strip().split("\n")[-1]
    except subprocess.TimeoutExpired:
        out = "Timeout Error"
    return time.monotonic() - start, out or "Done"


def bench_subprocess(trajs: list[list[str]], workers: int) -> tuple[dict, list[str]]:
    latencies, outputs = [], []
    wall_start = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        for i in range(4):
            for seconds, out in pool.map(run_subprocess, ["\n".join(cells[: i + 1]) for cells in trajs]):
                latencies.append(seconds)
                outputs.append(out.split("\n")[-1])  # re-run cells print again; the last line is this cell's
    return summarize("fresh python -c per call", latencies, time.monotonic() - wall_start), outputs


def run_official(cells: list[str]) -> str:
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            namespace: dict = {}
            for cell in cells:
                exec(cell, namespace)  # noqa: S102 - the anchor being measured
        return truncate(buf.getvalue().strip()) or "Done"
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"


def bench_official(trajs: list[list[str]]) -> tuple[dict, list[str]]:
    import sympy  # noqa: F401 - imported once by the harness process too

    latencies, outputs = [], []
    wall_start = time.monotonic()
    for i in range(4):
        for cells in trajs:
            start = time.monotonic()
            outputs.append(run_official(cells[: i + 1]).split("\n")[-1])
            latencies.append(time.monotonic() - start)
    return summarize("official (exec cells 1..i in-process)", latencies, time.monotonic() - wall_start), outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=16, help="trajectories of 4 cells (default: %(default)s)")
    parser.add_argument("--subprocess-trajectories", type=int, default=6,
                        help="trajectories for the slow subprocess anchor (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="calls at a time (default: %(default)s)")
    args = parser.parse_args()
    trajs = [trajectory(s) for s in range(args.trajectories)]
    pool, startup, pool_out, isolation = bench_pool(trajs, args.workers)
    sub, sub_out = bench_subprocess(trajs[: args.subprocess_trajectories], args.workers)
    official, official_out = bench_official(trajs)
    # the same answers everywhere (cells' last printed line)
    assert [o.split("\n")[-1] for o in pool_out] == official_out, "pool and official disagree"
    per_traj = lambda outs, n: [outs[i * n + j] for i in range(4) for j in range(min(n, args.subprocess_trajectories))]  # noqa: E731
    assert per_traj(official_out, args.trajectories) == sub_out, "subprocess and official disagree"

    print(f"host: {os.cpu_count()} cores, python {sys.version.split()[0]}, workers={args.workers}, "
          f"{args.trajectories} trajectories x 4 cells (subprocess: {args.subprocess_trajectories})")
    print(f"pool start-up (zygote + preload + sympy warm-up): {startup:.2f} s, not included below")
    print("isolation:", ", ".join(k if v is True else f"{k}=MISSING({v})" for k, v in isolation.items()))
    print(f"{'mode':40s} {'calls':>6s} {'calls/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s}")
    for row in (pool, sub, official):
        print(f"{row['name']:40s} {row['calls']:6d} {row['rate']:9.1f} {row['p50'] * 1e3:9.1f} {row['p99'] * 1e3:9.1f}")
    print(f"pool / subprocess: {pool['rate'] / sub['rate']:.1f}x calls/s, p50 {sub['p50'] / pool['p50']:.1f}x lower")
    print(f"pool / official:   {pool['rate'] / official['rate']:.1f}x calls/s, "
          f"p50 {official['p50'] / pool['p50']:.1f}x lower")


if __name__ == "__main__":
    main()
