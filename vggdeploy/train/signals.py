"""Stopping a run cleanly: Ctrl-C / SIGTERM and ``--time-limit`` become a flag read at step boundaries."""

from __future__ import annotations

import signal
import threading
import time

import torch
import torch.distributed as dist

from vggdeploy.train.devices import PROGRESS_EVERY, Distributed


class StopRequests:
    """Turns the first SIGINT/SIGTERM into a flag read at step boundaries (a second one stops at once), and keeps the
    wall-clock deadline of ``--time-limit`` (counted from the start of the run, data loading included)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool, time_limit: float | None = None) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: str | None = None
        self._previous: dict = {}
        self.started = time.perf_counter()
        self.time_limit = time_limit

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def out_of_time(self, step: int, distributed: Distributed, device: torch.device) -> bool:
        """True once the time limit has passed. Under DDP every rank must agree, so the ranks compare their clocks
        every PROGRESS_EVERY steps (all take the same steps) instead of each deciding alone."""
        if self.time_limit is None:
            return False
        late = self.elapsed() >= self.time_limit
        if distributed.world == 1:
            return late
        if step % PROGRESS_EVERY:
            return False
        flag = torch.tensor(float(late), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _handle(self, number, _frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(number).name

    def __enter__(self) -> StopRequests:
        if self.enabled:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
