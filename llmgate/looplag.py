"""Event-loop lag: how late the loop wakes a sleeping task (opt-in, LLMGATE_LOOP_LAG_MONITOR=1).

One task sleeps `interval_s` in a loop and measures how much later than asked it
woke up. That overshoot is how long the loop was busy with something else — a
callback that blocked (a synchronous call, a big JSON document, a garbage
collection) or simply too much work at once — so the largest overshoot is the
longest stall a call could have waited through.

On a shared host part of an overshoot can be the kernel not running the process
at all (other processes had the CPUs). On Linux the loop thread's run-queue wait
(/proc/thread-self/schedstat) is read with each sample and taken off: `max_s`
and the histogram are the lag the process caused itself (including blocking
system calls, which do not wait on the run queue), `wall_max_s` the raw
overshoot. The figures are read at scrape time (llmgate/metrics.py). Off by
default: the monitor wakes the loop 100 times a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from bisect import bisect_left
from collections.abc import Mapping

ENV_FLAG = "LLMGATE_LOOP_LAG_MONITOR"
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCHEDSTAT = "/proc/thread-self/schedstat"


def monitor_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(ENV_FLAG, "").strip().lower() in ("1", "true", "yes", "on")


def parse_run_queue_wait(schedstat: bytes) -> float:
    """Seconds the thread has waited on a run queue, from a schedstat line (`on-cpu wait slices`, ns)."""
    return int(schedstat.split()[1]) / 1e9


class RunQueueClock:
    """The calling thread's total run-queue wait, or 0.0 where the kernel does not say (not Linux)."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open(SCHEDSTAT, os.O_RDONLY)
        except OSError:
            self._fd = None

    def __call__(self) -> float:
        if self._fd is None:
            return 0.0
        try:
            return parse_run_queue_wait(os.pread(self._fd, 128, 0))
        except (OSError, ValueError, IndexError):
            return 0.0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LoopLagMonitor:
    """Samples the running loop's lag every `interval_s`: the last and largest lag, and a
    histogram (`counts[i]` samples up to `LAG_BUCKETS[i]`, the last one above them all)."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.last_s = 0.0
        self.max_s = 0.0
        self.wall_max_s = 0.0
        self.total_s = 0.0
        self.counts = [0] * (len(LAG_BUCKETS) + 1)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="llmgate-loop-lag")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def observe(self, lag_s: float, descheduled_s: float = 0.0) -> None:
        """One sample: `lag_s` late, of which `descheduled_s` waiting for a CPU."""
        self.wall_max_s = max(self.wall_max_s, lag_s)
        lag_s = max(0.0, lag_s - max(0.0, descheduled_s))
        self.last_s = lag_s
        self.total_s += lag_s
        self.counts[bisect_left(LAG_BUCKETS, lag_s)] += 1
        if lag_s > self.max_s:
            self.max_s = lag_s

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.interval_s
        run_queue = RunQueueClock()  # opened here: it must be the loop thread's
        try:
            while True:
                asked, waited = loop.time() + interval, run_queue()
                await asyncio.sleep(interval)
                self.observe(loop.time() - asked, run_queue() - waited)
        finally:
            run_queue.close()
