"""Shared fixtures: backing services from the environment, and a running gateway.

Tests that need PostgreSQL, Redis or a browser read their location from
LLMGATE_TEST_PG_URL / LLMGATE_TEST_REDIS_URL / LLMGATE_TEST_CHROMIUM. Unset, they
skip with the reason; under CI (`LLMGATE_REQUIRE_SERVICES=1`, set by .ci/run) a
missing service fails instead.
"""

from __future__ import annotations

import os

import pytest


def service_url(var: str, what: str) -> str:
    value = os.environ.get(var)
    if not value:
        message = f"{what} not configured: set {var} (.ci/run sets it)"
        if os.environ.get("LLMGATE_REQUIRE_SERVICES"):
            pytest.fail(message)
        pytest.skip(message)
    return value


@pytest.fixture
def pg_url() -> str:
    return service_url("LLMGATE_TEST_PG_URL", "PostgreSQL")


@pytest.fixture
def redis_url() -> str:
    return service_url("LLMGATE_TEST_REDIS_URL", "Redis")


@pytest.fixture
def chromium_path() -> str:
    path = service_url("LLMGATE_TEST_CHROMIUM", "Chromium")
    if not os.path.exists(path):
        message = f"Chromium not found at {path}"
        if os.environ.get("LLMGATE_REQUIRE_SERVICES"):
            pytest.fail(message)
        pytest.skip(message)
    return path
