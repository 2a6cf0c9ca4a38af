"""Benchmark: `mathloop sample` on 1 vs 2 Ray replicas with the same total CPU threads, against the run without Ray.

Three runs of the same sampling job into fresh folders: in process (the anchor, `--threads` torch threads), on one
Ray replica with `--threads` threads, and on two replicas with half the threads each. Prints samples per second of
each (model load and actor start included: that is what a user waits for) and the ratios to the anchor, with the
load average, since a shared machine moves these numbers.

Usage: python bench/ray_sample.py [--model PATH|smollm2] [--problems 24] [--n 2] [--max-new-tokens 48] [--threads 2]
Without --model a random-weight model (gpu_smoke.py's, hidden 256, 4 layers) is built in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import mathloop  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--problems", type=int, default=24)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2, help="total torch threads, split over the replicas")
    args = parser.parse_args()
    import ray

    from gpu_smoke import build_tiny_model
    from mathloop.pipeline.sample import SampleConfig, run_sample

    work = Path(tempfile.mkdtemp(prefix="ray-sample-"))
    model = args.model or str(build_tiny_model(work / "model", 256, 4))
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    runs = [("in process", {}, args.threads),
            ("ray, 1 replica", {"ray_address": "auto", "ray_replicas": 1, "ray_num_cpus": args.threads}, args.threads),
            ("ray, 2 replicas", {"ray_address": "auto", "ray_replicas": 2, "ray_num_cpus": args.threads / 2},
             max(1, args.threads // 2))]
    print(f"model {model}; {args.problems} problems x {args.n} samples, {args.max_new_tokens} new tokens; "
          f"{args.threads} threads in all; load average before: {os.getloadavg()[0]:.2f}")
    anchor = None
    for name, ray_settings, threads in runs:
        config = SampleConfig(model=model, problems=f"synthetic:{args.problems}:0", out=str(work / name.replace(" ", "_")),
                              n=args.n, temperatures=[0.7], max_new_tokens=args.max_new_tokens,
                              backend_args={"threads": threads, "batch_size": 8}, **ray_settings)
        started = time.perf_counter()
        summary = run_sample(config, progress=False)
        seconds = time.perf_counter() - started
        rate = summary["samples"] / seconds
        anchor = anchor or rate
        print(f"{name:<16} {summary['samples']:>4} samples {seconds:7.1f} s {rate:7.2f} samples/s "
              f"x{rate / anchor:.2f} vs in process (load average {os.getloadavg()[0]:.2f})")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
