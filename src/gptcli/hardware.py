"""What this machine's CPU offers inference, found without importing torch (so that commands
which only describe a model, such as `gpt models show`, stay fast)."""

from __future__ import annotations

import functools
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
