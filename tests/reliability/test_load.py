"""Load: many concurrent streaming calls with slow readers against a gateway process.

The gateway runs as `llmgate serve` with the event-loop lag monitor on
(LLMGATE_LOOP_LAG_MONITOR=1); its upstream is a FakeUpstream that drips each
stream's events DRIP_S apart and closes the connection after the answer (so
the gateway keeps no idle upstream connections and its fd count must return to
the baseline). The same load runs twice: RSS and open fds are read from /proc
before, at the peak, and after each round, and the lag histogram from /metrics.

Short mode: 200 connections. Full mode (LLMGATE_RELIABILITY_FULL=1): 1,000.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.harness import Received, Step, body, head, sleep
from tests.reliability.conftest import FULL, wait_for
from tests.reliability.served import ServedGateway, cpu_seconds, open_fds, rss_kib
from tests.reliability.wire import ClosingUpstream, close, openai_events

MASTER = "sk-master-load"
CONNECTIONS = 1000 if FULL else 200
WORDS = [f"w{i} " for i in range(8)]
DRIP_S = 0.2
READ_PAUSE_S = 0.05  # a slow client: a pause after every piece it reads
# Connections open over this ramp (all are still open together: a stream lasts 8 x DRIP_S).
# 200 requests arriving in the same millisecond are ~80 ms of one loop pass by themselves.
RAMP_S = 0.5
# RSS a concurrent stream may hold at the peak (its ASGI scope and context, the upstream and
# downstream transports and their buffers, the stream relay and two tasks), generously.
PEAK_KIB_PER_STREAM = 160
BASE_SLACK_KIB = 24 * 1024  # allocator arenas and lazily imported modules touched by the first load
# A second identical round must mostly reuse the first round's memory. The allocator's
# fragmentation still moves RSS a little (measured: +1 to +2 MiB at 200 streams, up to +6 MiB at
# 1,000); Python objects are counted exactly by test_streams_leave_no_python_objects_behind.
ROUND_GROWTH_KIB = 8 * 1024 + 8 * CONNECTIONS


def drip(req: Received) -> list[Step]:
    content, closing = openai_events(WORDS)
    steps: list[Step] = [head(200, {"content-type": "text/event-stream", "connection": "close"}, chunked=True)]
    for event in content:
        steps += [sleep(DRIP_S), body(event)]
    return [*steps, *(body(e) for e in closing), Step("end"), close()]


@dataclass
class Round:
    completed: int = 0
    failures: list[str] = field(default_factory=list)
    peak_rss_kib: int = 0
    peak_fds: int = 0


async def slow_stream(session: aiohttp.ClientSession, url: str, result: Round, delay: float) -> None:
    await asyncio.sleep(delay)
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    try:
        async with session.post(url + "/v1/chat/completions", json=payload) as resp:
            if resp.status != 200:
                result.failures.append(f"status {resp.status}")
                return
            data = b""
            async for piece in resp.content.iter_any():
                data += piece
                await asyncio.sleep(READ_PAUSE_S)
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.failures.append(repr(exc))
        return
    if data.endswith(b"data: [DONE]\n\n") and all(w.encode() in data for w in WORDS):
        result.completed += 1
    else:
        result.failures.append(f"incomplete: {data[-80:]!r}")


async def sample(pid: int, result: Round, stop: asyncio.Event) -> None:
    while not stop.is_set():
        result.peak_rss_kib = max(result.peak_rss_kib, rss_kib(pid))
        result.peak_fds = max(result.peak_fds, open_fds(pid))
        await asyncio.sleep(0.1)


async def load_round(url: str, pid: int, connections: int) -> Round:
    result = Round()
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    headers = {"authorization": f"Bearer {MASTER}"}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        sampler = asyncio.create_task(sample(pid, result, stop))
        ramp = RAMP_S / connections
        await asyncio.gather(*(slow_stream(session, url, result, i * ramp) for i in range(connections)))
        stop.set()
        await sampler
    return result


def lag_figures(url: str) -> tuple[float, float, dict[float, float]]:
    """(largest lag since start, the same with waits for a CPU, cumulative lag histogram: bound -> samples)."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    max_lag = wall_lag = 0.0
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("llmgate_event_loop_lag_max_seconds "):
            max_lag = float(line.split()[-1])
        elif line.startswith("llmgate_event_loop_wall_lag_max_seconds "):
            wall_lag = float(line.split()[-1])
        elif line.startswith("llmgate_event_loop_lag_seconds_bucket{"):
            bound = line.split('le="')[1].split('"')[0]
            buckets[float(bound)] = float(line.split()[-1])
    return max_lag, wall_lag, buckets


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"{CONNECTIONS} connections need {needed} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def test_streams_with_slow_clients_keep_memory_fds_and_loop_lag_bounded(tmp_path: Path) -> None:
    raise_fd_limit(CONNECTIONS * 4 + 256)  # the gateway process inherits it
    with ClosingUpstream(drip) as up:
        doc = {
            "gateway": {"master_key": MASTER},
            "providers": {"up": {"type": "openai", "base_url": up.url + "/v1", "api_key": "sk-up"}},
            "models": [{"name": "m", "provider": "up"}],
            "routing": {"num_retries": 0},
        }
        with ServedGateway(tmp_path, doc, env={"LLMGATE_LOOP_LAG_MONITOR": "1"}) as gateway:
            pid = gateway.pid
            warm = asyncio.run(load_round(gateway.url, pid, 10))  # first-use costs (tokenizer, pools) out of the way
            assert warm.completed == 10, warm.failures
            time.sleep(0.5)
            rss_before, fds_before = rss_kib(pid), open_fds(pid)
            _, _, lag_before = lag_figures(gateway.url)
            started, cpu_before = time.monotonic(), cpu_seconds(pid)
            first = asyncio.run(load_round(gateway.url, pid, CONNECTIONS))
            first_s, first_cpu = time.monotonic() - started, cpu_seconds(pid) - cpu_before
            assert wait_for(lambda: open_fds(pid) <= fds_before + 5, 10)
            rss_first, fds_first = rss_kib(pid), open_fds(pid)
            second = asyncio.run(load_round(gateway.url, pid, CONNECTIONS))
            assert wait_for(lambda: open_fds(pid) <= fds_before + 5, 10)
            rss_second, fds_second = rss_kib(pid), open_fds(pid)
            max_lag, wall_lag, lag_after = lag_figures(gateway.url)

    for result in (first, second):
        assert result.completed == CONNECTIONS, result.failures[:5]
        assert result.peak_fds >= CONNECTIONS, "the streams were concurrent"
    peak_growth = max(first.peak_rss_kib, second.peak_rss_kib) - rss_before
    samples = {bound: lag_after[bound] - lag_before.get(bound, 0) for bound in lag_after}
    total = samples[float("inf")]
    over_100ms = total - samples[0.1]
    worst_bucket = min(b for b, n in samples.items() if n == total)
    print(
        f"\nload: {CONNECTIONS} slow streaming connections x 2 rounds ({first_s:.1f} s a round, "
        f"gateway CPU {first_cpu * 1000 / CONNECTIONS:.2f} ms a stream); "
        f"RSS {rss_before / 1024:.1f} MiB before, peak +{peak_growth / 1024:.1f} MiB, "
        f"after round 1 {rss_first / 1024:.1f} MiB, after round 2 {rss_second / 1024:.1f} MiB; "
        f"fds {fds_before} before, peak {max(first.peak_fds, second.peak_fds)}, after {fds_first}/{fds_second}; "
        f"loop lag during load <= {worst_bucket} s ({total:.0f} samples, {over_100ms:.0f} over 100 ms), "
        f"max since start {max_lag * 1000:.1f} ms ({wall_lag * 1000:.1f} ms with waits for a CPU)"
    )
    assert peak_growth < CONNECTIONS * PEAK_KIB_PER_STREAM + BASE_SLACK_KIB
    assert rss_second - rss_first < ROUND_GROWTH_KIB, "memory grows round after round"
    assert abs(fds_first - fds_before) <= 5 and abs(fds_second - fds_before) <= 5
    assert total > 0
    if not FULL:
        assert over_100ms == 0, f"event loop stalled over 100 ms during the load: {samples}"


def test_startup_freezes_the_heap_it_allocated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up objects are moved out of the collector's sight, so a full collection under
    load does not walk them (unfrozen, one stalled the loop for 100-200 ms mid-traffic)."""
    import gc

    from tests.harness import GatewayServer, make_settings

    doc = {"providers": {"mock": {"type": "mock"}}, "models": [{"name": "m", "provider": "mock"}]}
    gc.unfreeze()
    monkeypatch.setenv("LLMGATE_LOOP_LAG_MONITOR", "1")
    with GatewayServer(make_settings(doc)) as server:
        assert gc.get_freeze_count() > 10_000
        monitor = server.gw.extras["loop_lag"]
        assert wait_for(lambda: sum(monitor.counts) > 3, 2), "the lag monitor samples when enabled"
        assert b"llmgate_event_loop_lag_max_seconds" in server.gw.extras["metrics"].render()
    assert monitor._task is None, "stopped at shutdown"


def test_streams_leave_no_python_objects_behind() -> None:
    """RSS after a round depends on the allocator; object counts do not. After a round of
    streams, no type of object has grown by anything like one per stream (in-process gateway)."""
    import collections
    import gc
    import os

    from tests.harness import GatewayServer, make_settings

    def census() -> collections.Counter[str]:
        gc.collect()
        return collections.Counter(type(o).__name__ for o in gc.get_objects())

    streams = 200
    with ClosingUpstream(drip) as up:
        doc = {
            "gateway": {"master_key": MASTER},
            "providers": {"up": {"type": "openai", "base_url": up.url + "/v1", "api_key": "sk-up"}},
            "models": [{"name": "m", "provider": "up"}],
            "routing": {"num_retries": 0},
        }
        with GatewayServer(make_settings(doc)) as server:
            assert asyncio.run(load_round(server.url, os.getpid(), streams)).completed == streams  # warm-up
            up.requests.clear()
            before = census()
            assert asyncio.run(load_round(server.url, os.getpid(), streams)).completed == streams
            up.requests.clear()  # the fake upstream's own log of what it received
            time.sleep(0.3)
            after = census()
    # One object kept per stream would be +200; loops and weakrefs of the test's own client wobble by tens.
    grown = {kind: after[kind] - before[kind] for kind in after if after[kind] - before[kind] >= streams // 2}
    assert not grown, f"objects left behind by {streams} streams: {grown}"
