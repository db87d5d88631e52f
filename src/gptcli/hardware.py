"""What this machine's CPU offers inference, and how busy its cores are, found without
importing torch (so that commands which only describe a model, such as `gpt models show`, stay
fast, and training can look at the cores before torch starts its threads)."""

from __future__ import annotations

import functools
import os
import sys
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
    """Seconds every core together has spent running this machine's work (user, nice, system,
    irq, softirq), not idling, waiting for I/O or stolen by a hypervisor.

    Steal is left out: on a virtual machine it comes in bursts that no thread count here can
    avoid. Counted, it made back-to-back runs on a Firecracker VM see 0.24 to 0.3 cores busy
    (mostly steal) and train on one thread: 324 steps in 45 s instead of 580.
    """
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in first[1:8])
    except (OSError, IndexError, ValueError):
        return None
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    times = os.times()
    return times.user + times.system


MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD = 1 << 30  # and up to 1 GiB freed at its top is kept for the next step


@functools.cache
def keep_freed_memory() -> bool:
    """Asks glibc's malloc to keep the memory a training step frees for the next one, instead
    of handing it back to the kernel; True where it could (Linux with glibc).

    By default glibc maps each block over a few hundred KiB afresh and unmaps it when freed, so
    every step of CPU training touches new, zeroed pages: on two cores of an Intel Xeon the
    micro preset's step (8 x 256 tokens) took 4,950 page faults and 20 ms of kernel time; with
    these thresholds, 45 and 1.5 ms. The cost is memory kept at the step's peak, which the next
    step needs again anyway.
    """
    if sys.platform != "linux":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)  # the process's own C library
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(
        mallopt(m_trim_threshold, TRIM_THRESHOLD)
    )


def sleeping_omp_threads(only_when_busy: bool = False) -> None:
    """Has OpenMP threads sleep while they wait instead of spinning; runs before torch loads.

    Spinning threads look busy to the kernel, so on a machine shared with other work they lose
    their core, and each of the hundreds of parallel regions of a torch decode step waits for
    one: steps get ten to fifty times slower. Sleeping costs a wake-up per region instead
    (about 150 us on a Firecracker VM), which the native CPU step (gptcli.kernels) pays once
    a token: its threads wait for each other on barriers of its own. Training
    (`only_when_busy`) has many more regions per second, so sleeping costs more there: on two
    idle cores 150 steps of the nanogpt-cpu preset took 15 s spinning and 26 s sleeping, while
    on cores shared with other work a mini step took 8.4 s spinning and 0.4 to 1.2 s sleeping.
    So training sleeps only when the load average already fills every core. OMP_WAIT_POLICY
    set in the environment wins.
    """
    if only_when_busy and os.getloadavg()[0] < (os.cpu_count() or 1):
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
