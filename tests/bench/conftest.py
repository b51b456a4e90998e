"""Micro-benchmarks of the hot path (pytest-benchmark).

By default every benchmark body runs once, untimed: CI runs this folder to catch
crashes, never to compare timings. Time them on a quiet machine with

    .venv/bin/pytest tests/bench --benchmark-enable

Coroutines that complete without suspending (a cached key, an in-memory
admission) are driven with `run_now`, so the figure is the code's own cost and
not an event loop's.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


@pytest.hookimpl(trylast=True)  # after pytest-benchmark has built its session
def pytest_configure(config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is not None and not config.getoption("benchmark_enable"):
        session.disabled = True


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that finishes without suspending (fails if it suspends)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the coroutine suspended: it is not on the in-memory path")
