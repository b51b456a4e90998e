"""Throttling through the real SDKs: exact admission under concurrency, budgets, shared Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.harness import GatewayServer, make_settings

MASTER = "sk-master-throttle-e2e"


def _doc(**extra: object) -> dict:
    return {
        "gateway": {"master_key": MASTER},
        "providers": {"mock": {"type": "mock"}},
        "models": [{"name": "mock-gpt", "provider": "mock", "price": {"input": 1000, "output": 1000}}],
        "keys": [{"key": "sk-five", "name": "five", "rpm": 5}],
        **extra,
    }


async def _burst(url: str, key: str, n: int) -> list[BaseException | object]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    calls = [
        client.chat.completions.with_raw_response.create(model="mock-gpt", messages=[{"role": "user", "content": "x"}])
        for _ in range(n)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    await client.close()
    return results


def test_rpm_5_with_20_simultaneous_calls_admits_exactly_5() -> None:
    with GatewayServer(make_settings(_doc())) as server:
        results = asyncio.run(_burst(server.url, "sk-five", 20))
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(ok) == 5 and len(refused) == 15
    assert ok[0].headers["x-ratelimit-limit-requests"] == "5"
    err = refused[0]
    assert err.body["code"] == "rate_limit_exceeded" and "rpm 5" in err.message
    assert int(err.response.headers["retry-after"]) >= 1
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_budget_refuses_with_insufficient_quota_in_each_wire_format() -> None:
    with GatewayServer(make_settings(_doc())) as server:
        admin = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {MASTER}"})
        key = admin.post("/admin/keys", json={"name": "budgeted", "budget_usd": "0.05", "budget_period": "day"}).json()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key["key"], max_retries=0)
        spent = 0
        with pytest.raises(openai.RateLimitError) as info:
            for _ in range(50):
                client.chat.completions.create(
                    model="mock-gpt", max_tokens=5, messages=[{"role": "user", "content": "hello"}]
                )
                spent += 1
        assert info.value.body["code"] == "insufficient_quota" and spent >= 1
        claude = anthropic.Anthropic(base_url=server.url, api_key=key["key"], max_retries=0)
        with pytest.raises(anthropic.RateLimitError) as refused:
            claude.messages.create(model="mock-gpt", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert refused.value.body["type"] == "error" and refused.value.body["error"]["type"] == "rate_limit_error"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gateway_processes_share_an_exact_limit_through_redis(tmp_path: Path, redis_url: str) -> None:
    prefix = f"llmgate-e2e-{uuid.uuid4().hex[:8]}:"
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[gateway]\nmaster_key = "{MASTER}"\nredis_url = "{redis_url}"\nredis_prefix = "{prefix}"\n'
        f'database_url = "sqlite:///{tmp_path}/gw.db"\nusage_spill_path = "{tmp_path}/spill.jsonl"\n'
        "log_requests = false\n"
        '[providers.mock]\ntype = "mock"\n[[models]]\nname = "mock-gpt"\nprovider = "mock"\n'
        '[[keys]]\nkey = "sk-shared"\nname = "shared"\nrpm = 9\n'
    )
    ports = [_free_port(), _free_port()]
    env = {**os.environ, "LLMGATE_LOG_LEVEL": "WARNING"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "llmgate.cli", "serve", "--config", str(config), "--port", str(p)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"gw-{p}.log").open("wb"),
        )
        for p in ports
    ]
    try:
        for p in ports:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{p}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "gateway process did not start"
                time.sleep(0.1)

        async def both() -> list:
            results = await asyncio.gather(*(_burst(f"http://127.0.0.1:{p}", "sk-shared", 15) for p in ports))
            return [r for rs in results for r in rs]

        results = asyncio.run(both())
        ok = [r for r in results if not isinstance(r, BaseException)]
        assert len(ok) == 9
        assert sum(isinstance(r, openai.RateLimitError) for r in results) == 21
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)
