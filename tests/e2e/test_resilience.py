"""Routing and resilience end to end: the real `openai` SDK against a running gateway in
front of fault-injecting fake upstreams (429 with Retry-After, 500, 400, resets before
and mid-stream, hangs, slow first token), client disconnects and graceful shutdown."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from llmgate.surfaces import deployments
from llmgate.types import RequestContext
from tests.harness import (
    FakeUpstream,
    GatewayServer,
    Received,
    Step,
    hang,
    head,
    json_response,
    make_settings,
    reset,
    sleep,
    sse_response,
)

MASTER = "sk-master-resilience"
HI = [{"role": "user", "content": "hi"}]
STATE: dict[str, Path] = {}


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path) -> None:
    """Each test's gateway keeps its database and usage spill file in the test's tmp dir."""
    STATE["dir"] = tmp_path


class RecordingSink:
    """A UsageSink that keeps every settled call."""

    def __init__(self) -> None:
        self.records: list[RequestContext] = []

    def record(self, ctx: RequestContext) -> None:
        self.records.append(ctx)


def completion(text: str = "fine", model: str = "up-model") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> list[Step]:
    return json_response({"error": {"message": message, "type": "x", "code": code}}, status, headers)


def chunk(content: str | None = None, finish: str | None = None, usage: bool = False) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]
    data: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up-model"}
    data["choices"] = choices
    if usage:
        data["usage"] = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    return b"data: " + orjson.dumps(data) + b"\n\n"


def stream_events(words: list[str]) -> list[bytes]:
    return [chunk(w) for w in words] + [chunk(finish="stop"), chunk(usage=True), b"data: [DONE]\n\n"]


def always(steps: list[Step]) -> Callable[[Received], list[Step]]:
    return lambda _req: steps


def in_turn(*answers: list[Step]) -> Callable[[Received], list[Step]]:
    """Each request gets the next answer; the last one repeats."""
    counter = itertools.count()
    return lambda _req: answers[min(next(counter), len(answers) - 1)]


def config(upstreams: dict[str, FakeUpstream], models: list[dict[str, Any]], **routing: Any) -> dict[str, Any]:
    providers = {
        name: {"type": "openai", "base_url": up.url + "/v1", "api_key": "sk-up"} for name, up in upstreams.items()
    }
    defaults = {"num_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "deadline_s": 10}
    state = STATE["dir"]
    return {
        "gateway": {
            "master_key": MASTER,
            "database_url": f"sqlite:///{state}/llmgate.db",
            "usage_spill_path": str(state / "spill.jsonl"),
        },
        "providers": providers,
        "models": models,
        "routing": {**defaults, **routing},
    }


def sdk(server: GatewayServer, timeout: float = 20) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=MASTER, max_retries=0, timeout=timeout)


def wait_for(condition: Callable[[], bool], seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def gateway(doc: dict[str, Any]) -> GatewayServer:
    server = GatewayServer(make_settings(doc))
    if not any(getattr(r, "path", None) == "/admin/deployments" for r in server.app.api.routes):
        server.app.api.include_router(deployments.router)
    return server


# -- retries ------------------------------------------------------------------------------


def test_retry_honours_retry_after_then_succeeds() -> None:
    script = in_turn(error(429, "slow down", "rate_limit_exceeded", {"retry-after": "1"}), json_response(completion()))
    with FakeUpstream(script) as up, gateway(config({"a": up}, [{"name": "m", "provider": "a"}])) as server:
        started = time.monotonic()
        raw = sdk(server).chat.completions.with_raw_response.create(model="m", messages=HI)
        elapsed = time.monotonic() - started
        assert raw.parse().choices[0].message.content == "fine"
        assert elapsed >= 1.0
        assert raw.headers["x-llmgate-attempts"] == "2" and raw.headers["x-llmgate-deployment"] == "a/m"
        assert len(up.requests) == 2


def test_retry_after_beyond_the_deadline_gives_the_429_at_once() -> None:
    script = always(error(429, "slow down", "rate_limit_exceeded", {"retry-after": "30"}))
    with FakeUpstream(script) as up:
        doc = config({"a": up}, [{"name": "m", "provider": "a"}], deadline_s=5)
        with gateway(doc) as server:
            started = time.monotonic()
            with pytest.raises(openai.RateLimitError) as info:
                sdk(server).chat.completions.create(model="m", messages=HI)
            assert time.monotonic() - started < 2
            assert info.value.response.headers["retry-after"] == "30"
            assert len(up.requests) == 1


def test_retry_after_of_one_deployment_does_not_delay_another() -> None:
    limited = always(error(429, "slow down", "rate_limit_exceeded", {"retry-after": "30"}))
    with FakeUpstream(limited) as a, FakeUpstream(always(json_response(completion("from b")))) as b:
        models = [
            {"name": "m", "provider": "a", "upstream": "m-a", "strategy": "priority"},
            {"name": "m", "provider": "b", "upstream": "m-b", "order": 1},
        ]
        with gateway(config({"a": a, "b": b}, models)) as server:
            started = time.monotonic()
            raw = sdk(server).chat.completions.with_raw_response.create(model="m", messages=HI)
            assert time.monotonic() - started < 1
            assert raw.parse().choices[0].message.content == "from b"
            assert raw.headers["x-llmgate-deployment"] == "b/m-b" and raw.headers["x-llmgate-attempts"] == "2"


def test_connect_error_is_retried_on_another_deployment() -> None:
    with FakeUpstream(always(json_response(completion("from b")))) as b:
        doc = config({"b": b}, [])
        doc["providers"]["down"] = {"type": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key": "sk-up"}
        doc["models"] = [
            {"name": "m", "provider": "down", "upstream": "m-down", "strategy": "priority"},
            {"name": "m", "provider": "b", "upstream": "m-b", "order": 1},
        ]
        with gateway(doc) as server:
            raw = sdk(server).chat.completions.with_raw_response.create(model="m", messages=HI)
            assert raw.parse().choices[0].message.content == "from b"
            assert raw.headers["x-llmgate-attempts"] == "2"
            (down,) = [d for d in server.gw.router.deployments() if d.provider.name == "down"]
            assert down.failures == 1


def test_caller_error_is_never_retried() -> None:
    bad = always(error(400, "bad temperature", "invalid_value"))
    models = [{"name": "m", "provider": "a"}]
    with FakeUpstream(bad) as up, gateway(config({"a": up}, models, cooldown_failures=1)) as server:
        with pytest.raises(openai.BadRequestError) as info:
            sdk(server).chat.completions.create(model="m", messages=HI)
        assert "bad temperature" in info.value.message
        assert len(up.requests) == 1
        assert server.gw.router.group("m").deployments[0].breaker.state == "closed"


# -- fallbacks ------------------------------------------------------------------------------


def test_group_of_500s_rotates_then_falls_back() -> None:
    failing = always(error(500, "boom"))
    with (
        FakeUpstream(failing) as a,
        FakeUpstream(failing) as b,
        FakeUpstream(always(json_response(completion("from backup")))) as c,
    ):
        models = [
            {"name": "main", "provider": "a", "upstream": "m-a", "fallbacks": ["backup"]},
            {"name": "main", "provider": "b", "upstream": "m-b"},
            {"name": "backup", "provider": "c", "upstream": "m-c"},
        ]
        with gateway(config({"a": a, "b": b, "c": c}, models, cooldown_failures=10)) as server:
            raw = sdk(server).chat.completions.with_raw_response.create(model="main", messages=HI)
            assert raw.parse().choices[0].message.content == "from backup"
            assert raw.headers["x-llmgate-deployment"] == "c/m-c"
            assert raw.headers["x-llmgate-attempts"] == "4"
            assert len(a.requests) + len(b.requests) == 3
            assert a.requests and b.requests, "retries rotate over the group"
            assert server.gw.router.stats.fallbacks == 1


def test_context_window_error_goes_to_context_window_fallbacks() -> None:
    too_long = error(400, "This model's maximum context length is 8192 tokens", "context_length_exceeded")
    with (
        FakeUpstream(always(too_long)) as small,
        FakeUpstream(always(json_response(completion("plain fallback")))) as other,
        FakeUpstream(always(json_response(completion("big window")))) as big,
    ):
        models = [
            {"name": "small", "provider": "s", "fallbacks": ["other"], "context_window_fallbacks": ["big"]},
            {"name": "other", "provider": "o"},
            {"name": "big", "provider": "b", "upstream": "big-128k"},
        ]
        with gateway(config({"s": small, "o": other, "b": big}, models)) as server:
            raw = sdk(server).chat.completions.with_raw_response.create(model="small", messages=HI)
            assert raw.parse().choices[0].message.content == "big window"
            assert raw.headers["x-llmgate-deployment"] == "b/big-128k"
            assert raw.headers["x-llmgate-attempts"] == "2"
            assert len(small.requests) == 1 and not other.requests


def test_context_window_error_without_fallback_is_the_callers_400() -> None:
    too_long = error(400, "maximum context length exceeded", "context_length_exceeded")
    with FakeUpstream(always(too_long)) as up, gateway(config({"a": up}, [{"name": "m", "provider": "a"}])) as server:
        with pytest.raises(openai.BadRequestError) as info:
            sdk(server).chat.completions.create(model="m", messages=HI)
        assert info.value.code == "context_length_exceeded" and len(up.requests) == 1


# -- streams ----------------------------------------------------------------------------------


def test_stream_fails_over_when_reset_before_the_first_byte() -> None:
    with (
        FakeUpstream(always([reset()])) as a,
        FakeUpstream(always(sse_response(stream_events(["Hel", "lo"])))) as b,
    ):
        models = [
            {"name": "m", "provider": "a", "upstream": "m-a", "strategy": "priority", "order": 0},
            {"name": "m", "provider": "b", "upstream": "m-b", "order": 1},
        ]
        with gateway(config({"a": a, "b": b}, models)) as server:
            raw = sdk(server).chat.completions.with_raw_response.create(model="m", messages=HI, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            assert text == "Hello"
            assert raw.headers["x-llmgate-deployment"] == "b/m-b" and raw.headers["x-llmgate-attempts"] == "2"
            assert len(a.requests) == 1


def test_mid_stream_reset_ends_with_an_error_event_and_records_usage() -> None:
    cut = [*sse_response([chunk("partial "), chunk("answer")], delay=0.05, end=False), reset()]
    with FakeUpstream(always(cut)) as a, FakeUpstream(always(sse_response(stream_events(["no"])))) as b:
        models = [
            {"name": "m", "provider": "a", "strategy": "priority"},
            {"name": "m", "provider": "b", "order": 1},
        ]
        with gateway(config({"a": a, "b": b}, models)) as server:
            sink = server.gw.usage = RecordingSink()
            received = []
            with pytest.raises(openai.APIError) as info:
                for c in sdk(server).chat.completions.create(model="m", messages=HI, stream=True):
                    received.extend(ch.delta.content or "" for ch in c.choices)
            assert "".join(received) == "partial answer"
            assert "'a'" in info.value.message
            assert not b.requests, "no failover once the caller has bytes"
            assert wait_for(lambda: len(sink.records) == 1)
            ctx = sink.records[0]
            assert ctx.status == 502 and ctx.usage is not None and ctx.usage.estimated
            assert ctx.usage.output_tokens >= 2 and ctx.usage.input_tokens > 0


# -- timeouts ---------------------------------------------------------------------------------


def test_hung_upstream_gives_504_within_the_total_timeout() -> None:
    with FakeUpstream(always([hang()])) as up:
        models = [{"name": "m", "provider": "a", "timeouts": {"total": 0.4}}]
        with gateway(config({"a": up}, models, num_retries=0)) as server:
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as info:
                sdk(server).chat.completions.create(model="m", messages=HI)
            assert info.value.status_code == 504 and 0.35 < time.monotonic() - started < 1.5
            assert wait_for(lambda: up.disconnects == 1), "the timed-out upstream connection is closed"


def test_retries_of_a_hung_upstream_stop_at_the_deadline() -> None:
    with FakeUpstream(always([hang()])) as up:
        models = [{"name": "m", "provider": "a", "timeouts": {"total": 0.4}}]
        with gateway(config({"a": up}, models, num_retries=5, deadline_s=0.7, cooldown_failures=10)) as server:
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as info:
                sdk(server).chat.completions.create(model="m", messages=HI)
            assert info.value.status_code == 504 and time.monotonic() - started < 1.3
            assert len(up.requests) == 2 and info.value.response.headers["x-llmgate-attempts"] == "2"


def test_slow_first_token_gives_504_per_first_byte_timeout() -> None:
    slow = [head(200, {"content-type": "text/event-stream"}, chunked=True), sleep(3)]
    with FakeUpstream(always(slow)) as up:
        models = [{"name": "m", "provider": "a", "timeouts": {"first_byte": 0.3, "total": 30}}]
        with gateway(config({"a": up}, models, num_retries=0)) as server:
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as info:
                sdk(server).chat.completions.create(model="m", messages=HI, stream=True)
            assert info.value.status_code == 504 and time.monotonic() - started < 1.5


def test_provider_timeout_applies_to_its_models() -> None:
    with FakeUpstream(always([sleep(2), *json_response(completion())])) as up:
        doc = config({"a": up}, [{"name": "m", "provider": "a"}], num_retries=0)
        doc["providers"]["a"]["timeout"] = 0.3
        with gateway(doc) as server:
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as info:
                sdk(server).chat.completions.create(model="m", messages=HI)
            assert info.value.status_code == 504 and time.monotonic() - started < 1.5


# -- cooldown, deployment limits, admin view ----------------------------------------------------


def test_cooldown_takes_a_failing_deployment_out_and_admin_shows_it() -> None:
    with FakeUpstream(always(error(503, "overloaded"))) as a, FakeUpstream(always(json_response(completion()))) as b:
        models = [
            {"name": "m", "provider": "a", "upstream": "m-a", "strategy": "priority"},
            {"name": "m", "provider": "b", "upstream": "m-b", "order": 1},
        ]
        with gateway(config({"a": a, "b": b}, models, cooldown_failures=2, cooldown_s=60)) as server:
            client = sdk(server)
            for _ in range(2):
                raw = client.chat.completions.with_raw_response.create(model="m", messages=HI)
                assert raw.headers["x-llmgate-attempts"] == "2"
            raw = client.chat.completions.with_raw_response.create(model="m", messages=HI)
            assert raw.headers["x-llmgate-attempts"] == "1" and raw.headers["x-llmgate-deployment"] == "b/m-b"
            assert len(a.requests) == 2
            admin = httpx.get(server.url + "/admin/deployments", headers={"authorization": f"Bearer {MASTER}"})
            rows = {r["deployment"]: r for r in admin.json()["data"]}
            assert rows["a/m-a"]["cooldown"]["state"] == "open" and rows["a/m-a"]["cooldowns_total"] == 1
            assert 50 < rows["a/m-a"]["cooldown"]["remaining_s"] <= 60
            assert rows["b/m-b"]["cooldown"]["state"] == "closed" and rows["b/m-b"]["latency_ewma_ms"] > 0
            assert admin.json()["stats"]["cooldowns"] == {"a/m-a": 1}
            assert "sk-up" not in admin.text
            refused = httpx.get(server.url + "/admin/deployments", headers={"authorization": "Bearer sk-nope"})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_deployment_rpm_waits_max_wait_then_429() -> None:
    with FakeUpstream(always(json_response(completion()))) as up:
        models = [{"name": "m", "provider": "a", "rpm": 1, "max_wait_ms": 300}]
        with gateway(config({"a": up}, models)) as server:
            client = sdk(server)
            client.chat.completions.create(model="m", messages=HI)
            started = time.monotonic()
            with pytest.raises(openai.RateLimitError) as info:
                client.chat.completions.create(model="m", messages=HI)
            assert time.monotonic() - started >= 0.3
            assert info.value.code == "deployment_rate_limited"
            assert 50 <= int(info.value.response.headers["retry-after"]) <= 61
            assert len(up.requests) == 1


# -- client disconnects -------------------------------------------------------------------------


def test_client_disconnect_cancels_a_non_streaming_call() -> None:
    with FakeUpstream(always([hang()])) as up, gateway(config({"a": up}, [{"name": "m", "provider": "a"}])) as server:
        sink = server.gw.usage = RecordingSink()
        with pytest.raises(openai.APITimeoutError):
            sdk(server, timeout=0.4).chat.completions.create(model="m", messages=HI)
        assert wait_for(lambda: up.disconnects == 1, 3), "the upstream request is cancelled"
        assert wait_for(lambda: len(sink.records) == 1)
        ctx = sink.records[0]
        assert ctx.status == 499 and ctx.attempts == 1
        assert len(up.requests) == 1
        assert server.gw.router.group("m").deployments[0].inflight == 0


def test_client_disconnect_before_the_first_byte_cancels_a_stream() -> None:
    with FakeUpstream(always([hang()])) as up, gateway(config({"a": up}, [{"name": "m", "provider": "a"}])) as server:
        sink = server.gw.usage = RecordingSink()
        with pytest.raises(openai.APITimeoutError):
            sdk(server, timeout=0.4).chat.completions.create(model="m", messages=HI, stream=True)
        assert wait_for(lambda: up.disconnects == 1, 3)
        assert wait_for(lambda: len(sink.records) == 1) and sink.records[0].status == 499


def test_client_disconnect_mid_stream_cancels_upstream_and_records_usage() -> None:
    drip = sse_response(stream_events([f"w{i} " for i in range(40)]), delay=0.05)
    with FakeUpstream(always(drip)) as up, gateway(config({"a": up}, [{"name": "m", "provider": "a"}])) as server:
        sink = server.gw.usage = RecordingSink()
        stream = sdk(server).chat.completions.create(model="m", messages=HI, stream=True)
        got = []
        for c in stream:
            got.extend(ch.delta.content or "" for ch in c.choices)
            if len(got) >= 3:
                break
        stream.close()
        assert wait_for(lambda: up.disconnects == 1, 3)
        assert wait_for(lambda: len(sink.records) == 1)
        usage = sink.records[0].usage
        assert usage is not None and usage.estimated and 3 <= usage.output_tokens < 40


# -- graceful shutdown --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[[str], tuple[subprocess.Popen[bytes], str]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(upstream_url: str) -> tuple[subprocess.Popen[bytes], str]:
        port = _free_port()
        cfg = tmp_path / "config.toml"
        cfg.write_text(
            f"""
[gateway]
master_key = "{MASTER}"
shutdown_grace_s = 10
database_url = "sqlite:///{tmp_path}/llmgate.db"
usage_spill_path = "{tmp_path}/spill.jsonl"

[providers.up]
type = "openai"
base_url = "{upstream_url}/v1"
api_key = "sk-up"

[[models]]
name = "m"
provider = "up"
"""
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmgate.cli", "serve", "--config", str(cfg), "--port", str(port)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        if not wait_for(lambda: _is_up(url), 30):
            proc.kill()
            raise RuntimeError(f"gateway did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        return proc, url

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _is_up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_sigterm_lets_an_in_flight_stream_finish(served: Callable[[str], tuple[subprocess.Popen[bytes], str]]) -> None:
    words = [f"w{i} " for i in range(12)]
    with FakeUpstream(always(sse_response(stream_events(words), delay=0.1))) as up:
        proc, url = served(up.url)
        client = openai.OpenAI(base_url=url + "/v1", api_key=MASTER, max_retries=0, timeout=20)
        got: list[str] = []
        first = threading.Event()
        failure: list[BaseException] = []

        def read() -> None:
            try:
                for c in client.chat.completions.create(model="m", messages=HI, stream=True):
                    got.extend(ch.delta.content or "" for ch in c.choices)
                    first.set()
            except BaseException as exc:
                failure.append(exc)
                first.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert first.wait(10)
        proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: not _is_up(url), 3), "stops accepting new connections"
        reader.join(15)
        assert not failure and "".join(got) == "".join(words)
        # uvicorn re-raises the signal once it has shut down gracefully.
        assert proc.wait(10) in (0, -signal.SIGTERM)
        assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()
