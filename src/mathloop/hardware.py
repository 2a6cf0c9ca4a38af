"""Which dtype a device computes fastest in, decided on the machine that runs, not the one that was measured.

bfloat16 halves memory traffic, but a CPU without bfloat16 instructions emulates it, many times slower than float32,
while a CPU with AVX512-BF16 computes it faster than float32 (bench/dtype.py prints both; figures in
docs/results.md, "Dtypes"). So mathloop uses bfloat16 on a CPU only when
the CPU has AVX512-BF16 or AMX, on a GPU when CUDA reports bfloat16 support, and float32 everywhere else. The same
rule decides the weights of generation and RM scoring (`--dtype auto`) and the autocast of training; every run.json
records what was chosen (`hardware_info`).

`MATHLOOP_CPU_BF16=0` or `=1` overrides the CPU check (to measure both, or for a CPU the check misreads).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from typing import Any

import torch


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles), as torch's own CPU probe reports it.

    Falls back to the flags in /proc/cpuinfo where torch lacks the probe; `$MATHLOOP_CPU_BF16` overrides both.
    """
    forced = os.environ.get("MATHLOOP_CPU_BF16", "").strip().lower()
    if forced in ("0", "false", "no"):
        return False
    if forced in ("1", "true", "yes"):
        return True
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(p) for p in probes):
        return any(p() for p in probes)
    return bool({"avx512_bf16", "amx_bf16"} & _cpuinfo_flags())


def compute_dtype(device: str | torch.device) -> torch.dtype:
    """The dtype `device` computes fastest in: bfloat16 where native (see the module docstring), else float32.

    >>> import unittest.mock as mock
    >>> with mock.patch.dict(os.environ, {"MATHLOOP_CPU_BF16": "0"}):
    ...     compute_dtype("cpu")
    torch.float32
    >>> with mock.patch.dict(os.environ, {"MATHLOOP_CPU_BF16": "1"}):
    ...     compute_dtype("cpu")
    torch.bfloat16
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if kind == "cpu":
        return torch.bfloat16 if cpu_bf16_native() else torch.float32
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """A user's dtype setting as a torch dtype: None or "auto" means `compute_dtype(device)`.

    >>> resolve_dtype("float32", "cpu")
    torch.float32
    >>> resolve_dtype("half-precision", "cpu")
    Traceback (most recent call last):
    ValueError: unknown dtype 'half-precision'; use auto, float32, bfloat16 or float16
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return compute_dtype(device)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return getattr(torch, dtype)


def autocast(device: str | torch.device):
    """Mixed precision for training forward passes: bfloat16 autocast where the device computes it natively,
    nothing elsewhere (the weights keep their own dtype either way)."""
    kind = torch.device(device).type
    if kind in ("cpu", "cuda") and compute_dtype(kind) == torch.bfloat16:
        return torch.autocast(kind, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def hardware_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """What a run.json records about the machine: CPU model, torch's CPU capability, bfloat16 support and the
    dtype `auto` resolves to on `device` (default: CUDA when available, else CPU)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info: dict[str, Any] = {
        "device": device.type,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_native": cpu_bf16_native(),
        "auto_dtype": str(compute_dtype(device)).removeprefix("torch."),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return name or platform.processor() or platform.machine()


def release_freed_memory() -> bool:
    """Give the heap memory that has been freed back to the operating system (glibc's `malloc_trim(0)`); True where
    that ran. On a CPU, each training step allocates and frees activations of another shape (responses of other
    lengths), and glibc keeps the freed pages: a GRPO run of the default model grew from 4.7 GB to 9.2 GB resident
    between steps over 40 steps, and one `malloc_trim(0)` brought it back to 6.2 GB (within a step it climbs to
    its working size again: this lowers what a step holds between steps, not a step's peak). A no-op (False) off
    glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, looked up once per process (every training step calls it); None where it is not."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
