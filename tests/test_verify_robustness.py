"""The verifier under hostile input and hostile conditions (issue 11, items 4-6): fuzzed and adversarial LaTeX up to
1 MB and deeply nested never raise and finish in bounded time; a verdict does not depend on load; workers die with
their parent. The time bounds are generous (they catch hangs and quadratic paths, not slowness)."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

try:
    import mathloop  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mathloop.verify import CORRECT, INCORRECT, NO_ANSWER, Verifier, extract_answer, grade, is_equivalent  # noqa: E402
from mathloop.verify.equivalence import fast_equivalent, normalize  # noqa: E402

VERDICTS = {CORRECT, INCORRECT, NO_ANSWER}
MB = 1 << 20
CALL_BOUND_S = 30.0  # per call, on a loaded 2-core machine; a quadratic path on 1 MB takes minutes
IN_PROCESS_BOUND_S = 10.0  # extraction + normalisation of 1 MB, no worker involved

ADVERSARIAL = {
    "boxed-1-repeated": r"\boxed{1}" * (MB // 9),
    "boxed-unclosed-repeated": r"\boxed{" * (MB // 7),
    "boxed-nested-deep": r"\boxed{" * 20000 + "1" + "}" * 20000,
    "frac-nested-deep": "$" + r"\frac{1}{" * 20000 + "2" + "}" * 20000 + "$",
    "braces-deep": "{" * 100000 + "}" * 100000,
    "parens-deep": "$" + "(" * 100000 + "1" + ")" * 100000 + "$",
    "text-units": r"1\text{ab}" * (MB // 10),
    "text-connectives": r"1 \text{ and } " * (MB // 14) + "2",
    "set-builder": r"\boxed{\{x|-" + "1" * MB + "}",
    "answer-then-spaces": "The answer is" + " " * MB + "x",
    "answer-word-spaces": "answer" + " " * MB,
    "dollars": "$a$ " * (MB // 4),
    "dollar-unclosed": "$" + "x" * MB,
    "escaped-dollars": "\\$" * (MB // 2),
    "numbers-commas": "1," * (MB // 2),
    "digits": "9" * MB,
    "spaces-and": "1 " + "and " * (MB // 4) + "2",
    "hashes": "#" * MB + "1",
    "final-answer-prose": "Final Answer: " + "The " * (MB // 4),
    "semicolon-tuples": r"\boxed{" + ";".join("(1;2)" for _ in range(MB // 6)) + "}",
    "list-3000-items": r"\boxed{" + ",".join(str(i) for i in range(3000)) + "}",
    "huge-exponent": r"\boxed{10^{" + "9" * 100000 + "}}",
    "backslashes": "\\" * MB,
}


@pytest.mark.parametrize("answer_type", ["math", "list", "mc"])
@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_extraction_is_bounded(name: str, answer_type: str) -> None:
    response = ADVERSARIAL[name]
    start = time.monotonic()
    pred = extract_answer(response, answer_type, ["1", "2"] if answer_type == "mc" else None)
    if pred is not None:
        for gold in ("1", "1,2", pred):
            assert fast_equivalent(gold, pred, answer_type) in (True, False, None)
        normalize(pred)
    assert time.monotonic() - start < IN_PROCESS_BOUND_S


@pytest.mark.parametrize("name", ["boxed-1-repeated", "frac-nested-deep", "parens-deep", "list-3000-items",
                                  "huge-exponent", "text-connectives", "set-builder"])
def test_adversarial_grading_is_bounded(name: str) -> None:
    response = ADVERSARIAL[name]
    start = time.monotonic()
    assert grade("1", response, timeout=2.0)[1] in VERDICTS
    assert grade(response, response, timeout=2.0)[1] in VERDICTS  # a huge gold too
    assert time.monotonic() - start < 2 * CALL_BOUND_S


def test_two_long_equal_lists_grade_correct_quickly() -> None:
    items = ",".join(str(i) for i in range(3000))
    start = time.monotonic()
    assert grade(items, rf"\boxed{{{items}}}", "list", timeout=2.0)[1] == CORRECT
    assert time.monotonic() - start < CALL_BOUND_S


_TOKENS = [r"\frac", r"\sqrt", r"\boxed", r"\text", r"\left(", r"\right)", r"\pi", r"\infty", r"\cdot", r"\times",
           r"\{", r"\}", "{", "}", "(", ")", "[", "]", "^", "_", "$", "$$", ",", ";", ":", "=", "<", r"\le", "+",
           "-", "/", "!", ".", " ", "x", "y", "e", "i", "and", "or", "%", r"\%", r"^\circ", "0", "1", "2", "9", "12",
           "3.14", "10^{50}", r"\to", r"\in", r"\cup", "The answer is", "Final Answer:", "####", "\n"]


def _random_latex(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(_TOKENS) for _ in range(length))


def test_fuzzed_latex_never_raises_and_finishes() -> None:
    rng = random.Random(11)
    items = [(_random_latex(rng, rng.randint(1, 12)), _random_latex(rng, rng.randint(1, 60))) for _ in range(300)]
    items += [(r"\frac{1}{3}", _random_latex(rng, 40) + r"\boxed{" + _random_latex(rng, 8) + "}") for _ in range(60)]
    timeout = 1.0
    start = time.monotonic()
    with Verifier(workers=2, timeout=timeout) as verifier:
        graded = verifier.grade_batch(items)
    elapsed = time.monotonic() - start
    assert all(verdict in VERDICTS for _, verdict in graded)
    assert elapsed < 60 + len(items) * timeout  # every comparison inside its deadline, plus start-up
    for gold, response in items[:40]:  # the single-call path agrees with the batch
        assert grade(gold, response, timeout=timeout)[1] in VERDICTS


# ---------------------------------------------------------------------------------------------------------------- load

LOAD_PAIR = (r"\sin^2 x+\cos^2 x", "1")  # ~0.1-0.2 CPU s in a warm worker
LOAD_TIMEOUT = 1.0  # CPU seconds: far above the pair's cost, below its wall time on a CPU shared 8 ways


def _spin(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


def _load_task(_: int) -> bool:
    return is_equivalent(*LOAD_PAIR, timeout=LOAD_TIMEOUT)


def test_same_verdict_under_load_from_threads_and_processes() -> None:
    assert is_equivalent(*LOAD_PAIR, timeout=LOAD_TIMEOUT) is True  # one thread, idle pool
    spinners = [multiprocessing.Process(target=_spin, args=(time.monotonic() + 60,), daemon=True) for _ in range(4)]
    for spinner in spinners:
        spinner.start()
    try:
        results: list[bool] = []
        threads = [threading.Thread(target=lambda: results.append(_load_task(0))) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        with Verifier(workers=2, timeout=LOAD_TIMEOUT) as verifier:
            batch = verifier.is_equivalent_batch([LOAD_PAIR] * 8)
        with multiprocessing.get_context("fork").Pool(3) as pool:
            pooled = pool.map(_load_task, range(6))
    finally:
        for spinner in spinners:
            spinner.kill()
    assert results == [True] * 8
    assert batch == [True] * 8
    assert pooled == [True] * 6


# ---------------------------------------------------------------------------------------------------------------- orphans


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    if int(stat.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _wait_dead(pids: set[int], seconds: float = 15.0) -> set[int]:
    end = time.monotonic() + seconds
    while time.monotonic() < end and any(map(_alive, pids)):
        time.sleep(0.1)
    return {pid for pid in pids if _alive(pid)}


_PARENT = textwrap.dedent(r"""
    import sys, threading
    from mathloop.verify import Verifier, is_equivalent
    verifier = Verifier(workers=2, timeout=600)
    assert verifier.is_equivalent_batch([(r"\sqrt{12}", r"2\sqrt{3}")] * 128) == [True] * 128  # enough for 2 workers
    # a worker busy in a big-integer computation (C code holding the GIL) when the parent dies
    threading.Thread(target=lambda: is_equivalent(r"9^{9^{9^{9}}}", "1", timeout=600), daemon=True).start()
    print("up", flush=True)
    threading.Event().wait()
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_when_the_parent_is_sigkilled() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, env=dict(os.environ))
    try:
        assert parent.stdout.readline().strip() == b"up"  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while len(_children(parent.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # two batch workers and the default pool's busy one
        workers = _children(parent.pid)
        assert len(workers) >= 3
        time.sleep(0.5)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _wait_dead(workers) == set()


def _worker_pids(_: int) -> list[int]:
    from mathloop.verify.pool import default_pool

    assert is_equivalent(r"\sqrt{12}", r"2\sqrt{3}")
    return [worker.process.pid for worker in default_pool()._idle]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_when_a_multiprocessing_pool_is_terminated() -> None:
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        pids = {pid for chunk in pool.map(_worker_pids, range(4), chunksize=1) for pid in chunk}
    finally:
        pool.terminate()
        pool.join()
    assert pids
    assert _wait_dead(pids) == set()


# ---------------------------------------------------------------------------------------------------------------------
# How workers start (issue 29, item 3): a fork of a single-threaded caller, else a new interpreter. Either way a worker
# keeps its CPU deadline and memory limit, holds none of the caller's files and runs none of its signal handlers.

_START = textwrap.dedent(r"""
    import json, os, signal, sys, threading, time
    from mathloop.verify import Verifier, pool

    mode, marker = sys.argv[1], sys.argv[2]
    pool.START_BY_FORK = mode != "spawn"
    if mode == "threaded":
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    held = open(os.devnull)  # a file of the caller's
    signal.signal(signal.SIGTERM, lambda *_: open(marker, "w").write("the caller's handler ran"))
    pairs = [(r"\sqrt{12}", r"2\sqrt{3}"), ("x+1", "1+x")]
    if mode == "fork":
        pairs.insert(1, (r"9^{9^{9^{9}}}", "1"))  # past its deadline: killed, replaced by a new fork
    with Verifier(workers=1, timeout=1.0) as verifier:
        verdicts = verifier.is_equivalent_batch(pairs)
        worker = verifier.pool._idle[0].process
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{worker.pid}/fd"))
        limit = next(line for line in open(f"/proc/{worker.pid}/limits") if line.startswith("Max address space"))
        os.kill(worker.pid, signal.SIGTERM)
        end = time.monotonic() + 10
        while time.monotonic() < end and not os.waitpid(worker.pid, os.WNOHANG)[0]:
            time.sleep(0.05)
        verifier.pool._idle.clear()
    print(json.dumps({"verdicts": verdicts, "kind": type(worker).__name__, "fds": fds,
                      "limit_mb": int(limit.split()[3]) // (1 << 20)}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("mode", "kind"), [("fork", "_ForkedProcess"), ("threaded", "Popen"), ("spawn", "Popen")])
def test_worker_start_keeps_the_limits_and_none_of_the_callers_state(mode: str, kind: str, tmp_path: Path) -> None:
    from mathloop.verify.pool import FORK_MAX_VM_MB, WORKER_MEMORY_LIMIT_MB

    marker = tmp_path / "handler-ran"
    done = subprocess.run([sys.executable, "-c", _START, mode, str(marker)], capture_output=True, text=True,
                          timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["kind"] == kind  # a caller with a second thread never forks
    assert result["verdicts"] == ([True, False, True] if mode == "fork" else [True, True])
    assert not marker.exists()  # SIGTERM ended the worker without running the caller's handler
    if mode == "fork":
        assert result["fds"] == [0, 1, 2, 3]  # task pipe, /dev/null, verdict pipe: not the caller's file
        assert WORKER_MEMORY_LIMIT_MB < result["limit_mb"] <= WORKER_MEMORY_LIMIT_MB + FORK_MAX_VM_MB
    else:
        assert result["limit_mb"] == WORKER_MEMORY_LIMIT_MB
