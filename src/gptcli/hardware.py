"""What this machine's CPU offers inference, and how busy its cores are, found without
importing torch (so that commands which only describe a model, such as `gpt models show`, stay
fast, and training can look at the cores before torch starts its threads)."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path


@functools.cache
def cpu_flags() -> tuple[str, set[str]]:
    """(vendor, feature flags) from /proc/cpuinfo; ("", empty) where there is none (not Linux,
    or an architecture whose cpuinfo has no x86 `flags` line)."""
    cpuinfo = Path("/proc/cpuinfo")
    vendor, flags = "", set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "vendor_id" and not vendor:
                vendor = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return vendor, flags


def cpu_is_amd() -> bool:
    return cpu_flags()[0] == "AuthenticAMD"


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16).

    Read from /proc/cpuinfo's flags on Linux x86; elsewhere torch's own CPU checks answer.
    """
    _, flags = cpu_flags()
    if flags:
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


class CoreUse:
    """How many cores other processes kept busy since this was made: from /proc/stat's busy
    time of every core, less this process's own CPU time (Linux; 0 elsewhere)."""

    def __init__(self) -> None:
        self.start = (time.perf_counter(), busy_seconds(), own_seconds())

    def others(self) -> float:
        wall, busy, own = self.start
        elapsed = time.perf_counter() - wall
        now = busy_seconds()
        if now is None or busy is None or elapsed < 0.2:
            return 0.0
        return max(0.0, (now - busy) - (own_seconds() - own)) / elapsed


def busy_seconds() -> float | None:
    """Seconds every core together has spent on anything but idling and waiting for I/O."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
        ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, IndexError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    times = os.times()
    return times.user + times.system
