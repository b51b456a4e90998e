"""Shared builders for the throttle tests: settings, keys, contexts, a fake clock, Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmgate.config import Settings, parse_settings
from llmgate.types import KeyInfo, RequestContext, Usage

REDIS_URL = os.environ.get("LLMGATE_TEST_REDIS_URL")


class FakeClock:
    """A wall clock that only moves when told to (seconds since the epoch)."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_settings(**sections: Any) -> Settings:
    return parse_settings(sections, "test.toml")


def make_key(key_id: str = "k1", **fields: Any) -> KeyInfo:
    return KeyInfo(id=key_id, name=fields.pop("name", key_id), **fields)


_counter = iter(range(10**9))


def make_ctx(
    key: KeyInfo, model: str = "gpt-4o", *, max_tokens: int | None = 10, text: str = "hi", surface: str = "chat"
) -> RequestContext:
    body: dict[str, Any]
    if surface == "embeddings":
        body = {"model": model, "input": text}
    else:
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
    return RequestContext(
        request_id=f"req-{next(_counter)}", surface=surface, token=None, body=body, model=model, key=key
    )


def finish(ctx: RequestContext, input_tokens: int = 0, output_tokens: int = 0, cost_nusd: int = 0) -> RequestContext:
    ctx.usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    ctx.cost_nusd = cost_nusd
    return ctx


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def redis_url() -> str:
    if not REDIS_URL:
        pytest.skip("LLMGATE_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0): Redis backend tests need it")
    return REDIS_URL


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A unique key prefix; every key under it is deleted afterwards."""
    from llmgate.throttle.redis import build_client

    prefix = f"llmgate-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = build_client(redis_url)
    try:
        await delete_keys(client, f"{prefix}*")
    finally:
        await client.aclose()


async def delete_keys(client: Any, pattern: str) -> None:
    """Delete every key matching `pattern` (SCAN, then DEL) through a RespClient."""
    keys: list[bytes] = []
    cursor = b"0"
    while True:
        cursor, batch = await client.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        keys += batch
        if cursor == b"0":
            break
    if keys:
        await client.execute("DEL", *keys)


async def hash_of(client: Any, key: str) -> dict[bytes, bytes]:
    """HGETALL as a dict."""
    flat = await client.execute("HGETALL", key)
    return dict(zip(flat[0::2], flat[1::2], strict=True))


class ThrowawayRedis:
    """A private redis-server on a free loopback port that a test may stop and start again."""

    def __init__(self, *extra_args: str) -> None:
        import socket

        self.extra_args = extra_args
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Any = None

    def start(self) -> None:
        import shutil
        import socket
        import subprocess
        import time

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed: the outage tests run their own throwaway server")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("throwaway redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=5)
            self.process = None


@pytest.fixture
def throwaway_redis():
    server = ThrowawayRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()
