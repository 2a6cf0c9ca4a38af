"""Benchmark: the sandbox's modes side by side, forced with MATHLOOP_SANDBOX_WITHOUT (issue 35).

For each mode this machine offers to the user running it (as root: root, landlock, refused; as a normal user: userns,
landlock, refused) it prints:
- start-up: seconds for `Sandbox(workers=1)` to come up (the zygote: isolation, preloading math/numpy/sympy);
- fresh session: per-call wall time of `sandbox.run(cell)` with no session, i.e. a new confined process per call
  (fork, namespaces or Landlock rules, rlimits, seccomp, the cell, teardown), p50 and p90 over --calls calls;
- the attacks, each "refused" or what happened: read a mode-600 file in the caller's home, create a file outside the
  scratch folder (home, the checkout, /var/tmp), open a TCP connection to a listener on 127.0.0.1, start a
  subprocess; then whether the next cell still computes.
The refused mode raises SandboxUnavailable; it is then run with the explicit opt-in (mode "unsafe") to show what that
opt-in gives away. Run it as root and as a normal user (runuser -u USER -- python bench/sandbox_modes.py).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
import uuid
from pathlib import Path

try:
    import mathloop  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mathloop.tools.sandbox import Sandbox, SandboxUnavailable  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def attacks(sb: Sandbox) -> dict[str, str]:
    secret_path = Path.home() / f".mathloop-bench-secret-{uuid.uuid4().hex[:8]}"
    secret = uuid.uuid4().hex
    secret_path.write_text(secret)
    secret_path.chmod(0o600)
    out = {}
    try:
        out["read ~/secret (600)"] = "READ" if secret in sb.run(f"print(open({str(secret_path)!r}).read())").stdout \
            else "refused"
    finally:
        secret_path.unlink()
    written = []
    for target in (Path.home() / f"pwned-{uuid.uuid4().hex}", REPO / f"pwned-{uuid.uuid4().hex}",
                   Path("/var/tmp") / f"pwned-{uuid.uuid4().hex}"):
        sb.run(f"open({str(target)!r}, 'w').write('x')")
        if target.exists():
            written.append(str(target.parent))
            target.unlink()
    out["write outside scratch"] = f"WROTE in {', '.join(written)}" if written else "refused"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.3)
    sb.run(f"import socket\nsocket.create_connection(('127.0.0.1', {listener.getsockname()[1]}), timeout=1)")
    try:
        listener.accept()[0].close()
        out["tcp connect"] = "CONNECTED"
    except TimeoutError:
        out["tcp connect"] = "refused"
    listener.close()
    spawned = sb.run("import subprocess\nprint(subprocess.run(['echo', 'spawned'], capture_output=True).stdout)")
    out["subprocess"] = "STARTED" if "spawned" in spawned.stdout else "refused"
    after = sb.run("print(sum(range(10)))")
    out["next cell"] = "computes" if after.stdout == "45" else f"BROKEN ({after.status})"
    return out


def measure(without: str, calls: int) -> dict:
    os.environ["MATHLOOP_SANDBOX_WITHOUT"] = without
    start = time.monotonic()
    try:
        sb = Sandbox(workers=1, timeout=5)
        refused = ""
    except SandboxUnavailable as e:
        refused = str(e)
        start = time.monotonic()
        sb = Sandbox(workers=1, timeout=5, unsafe_file_access=True)
    startup = time.monotonic() - start
    with sb:
        sb.run("pass")
        latencies = []
        for _ in range(calls):
            t = time.monotonic()
            result = sb.run("print(6 * 7)")
            latencies.append(time.monotonic() - t)
            assert result.stdout == "42", result
        lat = sorted(latencies)
        return {"mode": sb.mode, "without": without or "-", "refused": refused, "startup_s": startup,
                "p50_ms": 1000 * statistics.median(lat), "p90_ms": 1000 * lat[int(0.9 * (len(lat) - 1))],
                "attacks": attacks(sb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="fresh-session calls per mode")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"# uid {os.getuid()}, {os.cpu_count()} x {cpu}, load {os.getloadavg()[0]:.1f}, kernel {os.uname().release}")
    rows = [measure(without, args.calls) for without in ("", "namespaces", "namespaces,landlock")]
    names = list(rows[0]["attacks"])
    print("| mode (MATHLOOP_SANDBOX_WITHOUT) | start-up s | fresh session p50 / p90 ms | " + " | ".join(names) + " |")
    print("|---" * (3 + len(names)) + "|")
    for r in rows:
        print(f"| {r['mode']} ({r['without']}) | {r['startup_s']:.2f} | {r['p50_ms']:.0f} / {r['p90_ms']:.0f} | "
              + " | ".join(r["attacks"][n] for n in names) + " |")
    for r in rows:
        if r["refused"]:
            print(f"\nwithout the opt-in ({r['without']}): SandboxUnavailable: {r['refused']}")


if __name__ == "__main__":
    main()
