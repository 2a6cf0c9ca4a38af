"""The dtype is chosen from the CPU that runs: bfloat16 only where it is computed natively."""

from __future__ import annotations

import json
import platform

import pytest
import torch

from mathloop import hardware
from mathloop.backends import load_backend


@pytest.fixture
def cpu_features(monkeypatch):
    """Pretend this CPU has (or lacks) AVX512-BF16 and AMX, as torch's probes report them."""
    monkeypatch.delenv("MATHLOOP_CPU_BF16", raising=False)

    def set_features(avx512_bf16: bool, amx: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)

    return set_features


@pytest.mark.parametrize("avx512_bf16, amx, expected", [
    (False, False, torch.float32),   # AVX2-only (e.g. AMD EPYC Zen 2/3): bf16 is emulated, ~13x slower
    (True, False, torch.bfloat16),   # AVX512-BF16 (e.g. Zen 4, Cooper Lake)
    (False, True, torch.bfloat16),   # AMX (Sapphire Rapids and later)
])
def test_cpu_dtype_follows_the_cpus_bfloat16_support(cpu_features, avx512_bf16, amx, expected):
    cpu_features(avx512_bf16, amx)
    assert hardware.compute_dtype("cpu") == expected
    assert hardware.resolve_dtype("auto", "cpu") == expected
    assert hardware.resolve_dtype(None, "cpu") == expected
    assert hardware.resolve_dtype("float32", "cpu") == torch.float32  # an explicit choice is kept
    assert hardware.hardware_info("cpu")["auto_dtype"] == str(expected).removeprefix("torch.")


def test_environment_overrides_the_probe(cpu_features, monkeypatch):
    cpu_features(True, True)
    monkeypatch.setenv("MATHLOOP_CPU_BF16", "0")
    assert hardware.compute_dtype("cpu") == torch.float32
    cpu_features(False, False)
    monkeypatch.setenv("MATHLOOP_CPU_BF16", "1")
    assert hardware.compute_dtype("cpu") == torch.bfloat16


def test_training_autocast_only_where_native(cpu_features):
    cpu_features(False, False)
    with hardware.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    cpu_features(True, False)
    with hardware.autocast("cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.parametrize("native, expected", [(False, "float32"), (True, "bfloat16")])
def test_hf_backend_auto_dtype(cpu_features, tiny_model_dir, native, expected):
    cpu_features(native, False)
    backend = load_backend("hf", str(tiny_model_dir), device="cpu")  # dtype="auto" is the default
    assert backend.dtype == expected
    assert next(backend.model.parameters()).dtype == getattr(torch, expected)


def test_eval_run_json_records_the_hardware(tmp_path, cpu_features, monkeypatch):
    from mathloop.pipeline.evaluate import EvalConfig, run_eval
    from mathloop.records import Problem

    cpu_features(False, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, also where a GPU is present
    problems = {"gsm8k": [Problem(id="gsm8k/0", benchmark="gsm8k", question="1+1?", gold="2")]}
    backend = load_backend("fake", "tiny", responses=["The answer is \\boxed{2}."])
    run_eval(EvalConfig(model="tiny", benchmarks=["gsm8k"], out=str(tmp_path)), backend=backend, problems=problems,
             progress=False)
    info = json.loads((tmp_path / "run.json").read_text())["hardware"]
    assert info["auto_dtype"] == "float32" and info["cpu_bf16_native"] is False
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_freed_heap_memory_goes_back_to_the_os():
    """What a training step leaves: many freed blocks under glibc's mmap threshold, held in the heap because a live
    block sits above them. release_freed_memory hands them back."""
    from mathloop.hardware import release_freed_memory

    blocks = [bytearray(64 * 1024) for _ in range(3200)]  # 200 MB from the heap, each page touched
    pinned = blocks[-1]
    del blocks
    held = _rss_kb()
    assert release_freed_memory() is True
    assert held - _rss_kb() > 100_000, "less than 100 MB of the 200 MB freed went back to the OS"
    assert len(pinned) == 64 * 1024


def test_release_freed_memory_is_a_no_op_off_glibc(monkeypatch):
    from mathloop.hardware import release_freed_memory

    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert release_freed_memory() is False
