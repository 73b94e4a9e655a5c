"""What CPU this machine has, as /proc/cpuinfo names it (no torch): chooses the execution provider's advice and
names the machine in reports."""

from __future__ import annotations

import re
from pathlib import Path

# fp32 vector width, int8 dot products (VNNI) and matrix tiles (AMX): what sets the CPU engines' ceilings
NOTABLE_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpuinfo_field(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo, or None (not Linux, or no such field)."""
    try:
        found = re.search(rf"^{field}\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return None
    return found.group(1).strip() if found else None


def cpu_vendor() -> str:
    """The CPU's vendor and model as /proc/cpuinfo names them (the OpenVINO plugin offers Intel CPUs only)."""
    named = [value for value in (cpuinfo_field("vendor_id"), cpuinfo_field("model name")) if value]
    return " ".join(named) if named else "unknown CPU"


def cpu_instruction_sets() -> list[str]:
    """The instruction sets that decide CPU inference speed which this CPU has, as /proc/cpuinfo names them."""
    present = set((cpuinfo_field("flags") or "").split())
    return [name for name in NOTABLE_CPU_FLAGS if name in present]
