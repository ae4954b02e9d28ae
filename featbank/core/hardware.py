"""What this machine has, read without torch: its cores, its CPU's instruction sets, an
NVIDIA driver.

``native_bf16`` decides what ``--precision auto`` means on a CPU: bf16 where the CPU
computes it natively (AVX512-BF16 or AMX, read from the flags the kernel reports),
fp32 elsewhere, never assumed.
"""
from __future__ import annotations

import functools
import os

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instruction sets with native bf16 arithmetic


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (``/proc/cpuinfo``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """Whether the CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def cores() -> int:
    """The cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def nvidia_driver() -> bool:
    """Whether an NVIDIA driver is loaded (Linux: /proc/driver/nvidia; elsewhere assumed,
    and left to torch to tell)."""
    if not os.path.isdir("/proc"):
        return True
    return os.path.isdir("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")
