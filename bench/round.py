"""Benchmark: wall time of one loop round of a shipped config, per stage, against a target (issue: 30 minutes for
`configs/cpu-default.yaml` on a 2-core CPU).

Runs `mathloop loop --config CONFIG --rounds 1` into a new folder (or resumes the one given: a resumed round adds
its sessions' times) and prints the stage table of its summary.md, the round's minutes, the whole command's
minutes (with round 0's evaluation) and the target's verdict, with the CPU it ran on. The data folder is
$MATHLOOP_DATA_DIR or --data-dir; generation uses the config's backend (`auto`: OpenVINO int8 where the extra is
installed). Nothing else should run on the machine meanwhile.

Usage: python bench/round.py [--config configs/cpu-default.yaml] [--out runs/bench-round] [--target-minutes 30]
       python bench/round.py --limit 4 --heldout-limit 4 --out /tmp/round-check    # a quick check that it runs
Measured (2-core AMD EPYC, AVX512-BF16, no AMX; OpenVINO int8; before this script, with /usr/bin/time and the
loop's log): round 1 29.5 min (sample 14.2, select 0.0, SFT 13.8, eval 1.5), the command 30.7 min, peak RSS 15.5 GB.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

try:
    import mathloop  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mathloop.pipeline.loop import load_loop_config, run_loop, stage_table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/cpu-default.yaml")
    parser.add_argument("--out", default="runs/bench-round", help="run folder (resumed when it exists)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--target-minutes", type=float, default=30.0)
    parser.add_argument("--limit", type=int, help="training problems (overrides the config's; for a quick check)")
    parser.add_argument("--heldout-limit", type=int, help="held-out problems (overrides the config's)")
    args = parser.parse_args()

    import torch

    overrides = {"output_dir": args.out, "rounds": 1, "data_dir": args.data_dir, "limit": args.limit,
                 "heldout_limit": args.heldout_limit}
    config = load_loop_config(args.config, overrides)
    start = time.time()
    summary = run_loop(config, progress=False)
    command = (time.time() - start) / 60
    rows = summary["rounds"]
    round_minutes = sum(rows[1].get("stage_seconds", {}).values()) / 60
    peak_gb = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 2**20
    print(f"CPU: torch capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    print(stage_table(rows))
    verdict = "meets" if round_minutes <= args.target_minutes else "misses"
    verdict = f"{verdict} the {args.target_minutes:g}-minute target"
    if args.limit or args.heldout_limit:
        verdict = "a quick check with --limit/--heldout-limit: not the target's workload"
    print(f"round 1: {round_minutes:.1f} min ({verdict}); this command: "
          f"{command:.1f} min; peak RSS {peak_gb:.1f} GB; held-out "
          f"{100 * rows[0]['acc']:.1f}% -> {100 * rows[1]['acc']:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
