"""Shared pieces of the reliability suite: the short/full mode switch, free ports, waiting.

The default run is short (a few minutes of CPU at most, under a minute of wall
time on two cores); `LLMGATE_RELIABILITY_FULL=1` runs the long versions (1,000
concurrent streams, longer store outages, more load) and prints its figures.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest

FULL = os.environ.get("LLMGATE_RELIABILITY_FULL") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], bool], seconds: float = 5, step: float = 0.02) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def missing_service(message: str) -> None:
    """Skip (or, under LLMGATE_REQUIRE_SERVICES=1, fail): a binary the test needs is not installed."""
    if os.environ.get("LLMGATE_REQUIRE_SERVICES"):
        pytest.fail(message)
    pytest.skip(message)
