"""Where a long command spends its time and memory: wall seconds per phase, and the process's peak resident memory
when each phase ends (so the phase that raised the peak is the first whose figure jumps)."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@dataclass
class PhaseLog:
    phases: list[dict] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.phases.append(
            {
                "phase": name,
                "seconds": round(time.perf_counter() - started, 2),
                "peak_rss_gb": round(peak_rss_bytes() / 1e9, 3),
            }
        )
