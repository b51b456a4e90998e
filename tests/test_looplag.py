"""The event-loop lag monitor: it sees a blocked loop, and /metrics shows what it saw."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from llmgate.looplag import LAG_BUCKETS, LoopLagMonitor, RunQueueClock, monitor_enabled, parse_run_queue_wait
from llmgate.metrics import Metrics


def test_enabled_only_by_the_env_flag() -> None:
    assert not monitor_enabled({})
    assert not monitor_enabled({"LLMGATE_LOOP_LAG_MONITOR": "0"})
    assert monitor_enabled({"LLMGATE_LOOP_LAG_MONITOR": "1"})
    assert monitor_enabled({"LLMGATE_LOOP_LAG_MONITOR": " true "})


def test_observe_keeps_last_max_and_histogram() -> None:
    monitor = LoopLagMonitor()
    for lag in (0.0005, 0.03, -0.001, 0.2):
        monitor.observe(lag)
    assert monitor.last_s == 0.2 and monitor.max_s == 0.2
    assert sum(monitor.counts) == 4
    assert monitor.counts[0] == 2  # 0.0005 and the negative reading clamped to 0
    assert monitor.counts[LAG_BUCKETS.index(0.05)] == 1
    assert monitor.counts[LAG_BUCKETS.index(0.25)] == 1


def test_time_spent_waiting_for_a_cpu_is_not_the_loops_lag() -> None:
    monitor = LoopLagMonitor()
    monitor.observe(0.3, descheduled_s=0.25)
    assert monitor.wall_max_s == 0.3 and abs(monitor.max_s - 0.05) < 1e-9
    monitor.observe(0.02, descheduled_s=0.5)  # never below zero
    assert monitor.last_s == 0.0 and monitor.max_s == pytest.approx(0.05)


def test_parse_run_queue_wait() -> None:
    assert parse_run_queue_wait(b"57788478 13822867 86\n") == pytest.approx(0.013822867)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/thread-self/schedstat is Linux's")
def test_run_queue_clock_reads_this_threads_wait() -> None:
    clock = RunQueueClock()
    first = clock()
    sum(range(2_000_000))
    assert clock() >= first >= 0.0
    clock.close()
    assert clock() == 0.0


async def test_a_busy_loop_shows_up_as_lag() -> None:
    monitor = LoopLagMonitor(interval_s=0.01)
    monitor.start()
    await asyncio.sleep(0.05)
    started = time.thread_time()
    while time.thread_time() - started < 0.15:  # 150 ms of CPU work holding the loop (however long it takes)
        pass
    await asyncio.sleep(0.05)
    await monitor.aclose()
    assert monitor.max_s >= 0.14


async def test_a_blocking_call_shows_up_as_lag_and_an_idle_loop_does_not() -> None:
    monitor = LoopLagMonitor(interval_s=0.01)
    monitor.start()
    await asyncio.sleep(0.1)
    idle_max = monitor.max_s
    time.sleep(0.15)  # blocks the loop, as a synchronous call on the hot path would
    await asyncio.sleep(0.05)
    await monitor.aclose()
    assert idle_max < 0.1
    assert 0.12 <= monitor.max_s < 1.0
    assert monitor.counts[LAG_BUCKETS.index(0.25)] == 1
    samples = sum(monitor.counts)
    await asyncio.sleep(0.05)
    assert sum(monitor.counts) == samples, "closed: no more samples"


def test_metrics_expose_the_max_gauge_and_the_histogram() -> None:
    metrics = Metrics(process_metrics=False)
    monitor = LoopLagMonitor()
    metrics.bind_loop_lag(monitor)
    monitor.observe(0.004)
    monitor.observe(0.12)
    text = metrics.render().decode()
    assert "llmgate_event_loop_lag_max_seconds 0.12" in text
    assert "llmgate_event_loop_wall_lag_max_seconds 0.12" in text
    assert 'llmgate_event_loop_lag_seconds_bucket{le="0.005"} 1.0' in text
    assert 'llmgate_event_loop_lag_seconds_bucket{le="0.1"} 1.0' in text
    assert 'llmgate_event_loop_lag_seconds_bucket{le="0.25"} 2.0' in text
    assert "llmgate_event_loop_lag_seconds_count 2.0" in text


def test_metrics_without_the_monitor_have_no_lag_figures() -> None:
    assert b"event_loop_lag" not in Metrics(process_metrics=False).render()
