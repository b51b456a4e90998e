"""Resource consumption: every input that could make the gateway hold memory, CPU or a connection is bounded.

Body size (413), JSON nesting (400, fast even for a 100k-deep document),
`max_tokens` capped per model (`max_tokens_cap`), `n` capped (`gateway.max_n`),
request line and headers (431 over `max_header_bytes`, 408 when slower than
`header_timeout_s`), upstream SSE lines (a 20 MB line with no newline ends in a
clean error), and slow request bodies (408 after `body_timeout_s`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest

from llmgate.surfaces.http import HTTP_PROTOCOL, HeaderBounds, set_header_bounds
from tests.harness import FakeUpstream, GatewayServer, Received, Step, body, head, make_settings
from tests.security.conftest import MASTER, ServeProcess, answer_upstream, free_port, gateway_doc

MAX_BODY = 512 * 1024
MAX_HEADERS = 16 * 1024
BODY_TIMEOUT = 1.0
HEADER_TIMEOUT = 1.0
AUTH = {"authorization": f"Bearer {MASTER}"}
CHAT = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
HUGE_LINE = 20 * 1024 * 1024


def _script(req: Received) -> list[Step]:
    if req.body and orjson.loads(req.body).get("model") == "long-line":
        return [head(200, {"content-type": "text/event-stream"}, chunked=True), body(b"data: " + b"x" * HUGE_LINE)]
    return answer_upstream(req)


@pytest.fixture(scope="module")
def limited_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(_script) as up:
        yield up


@pytest.fixture(scope="module")
def limited(limited_upstream: FakeUpstream) -> Iterator[GatewayServer]:
    doc = gateway_doc(
        limited_upstream.url,
        max_body_bytes=MAX_BODY,
        body_timeout_s=BODY_TIMEOUT,
        max_header_bytes=MAX_HEADERS,
        header_timeout_s=HEADER_TIMEOUT,
    )
    doc["models"].append({"name": "long-line", "provider": "up"})
    doc["routing"] = {"num_retries": 0}
    server = GatewayServer(make_settings(doc))
    # What `llmgate serve` runs: uvicorn's httptools protocol with the gateway's header bounds.
    server.server.config.http = HTTP_PROTOCOL
    set_header_bounds(MAX_HEADERS, HEADER_TIMEOUT)
    with server:
        prompt = {
            "model": "mock-gpt",
            "inputs": {"text": {"type": "string"}},
            "messages": [{"role": "user", "content": "{{ text }}"}],
        }
        assert httpx.put(server.url + "/admin/prompts/limits", headers=AUTH, json=prompt).status_code == 200
        yield server
    set_header_bounds(HeaderBounds().max_bytes, HeaderBounds().timeout_s)


SURFACES = [
    ("/v1/chat/completions", CHAT, "openai"),
    ("/v1/embeddings", {"model": "emb", "input": "hi"}, "openai"),
    ("/v1/messages", MESSAGES, "anthropic"),
    ("/prompts/limits", {"text": "hi"}, "openai"),
]


def _error(response: httpx.Response, shape: str) -> dict:
    payload = response.json()
    if shape == "anthropic":
        assert payload["type"] == "error"
    assert payload["error"]["message"]
    return payload["error"]


@pytest.mark.parametrize(("path", "base", "shape"), SURFACES)
def test_body_over_the_limit_is_413(limited: GatewayServer, path: str, base: dict, shape: str) -> None:
    big = {**base, "padding": "x" * (MAX_BODY + 1)}
    declared = httpx.post(limited.url + path, headers=AUTH, json=big)
    assert declared.status_code == 413, declared.text
    assert "limit" in _error(declared, shape)["message"]
    raw = orjson.dumps(big)

    def chunks() -> Iterator[bytes]:  # no content-length: the limit is found while reading
        for i in range(0, len(raw), 8192):
            yield raw[i : i + 8192]

    streamed = httpx.post(limited.url + path, headers={**AUTH, "content-type": "application/json"}, content=chunks())
    assert streamed.status_code == 413, streamed.text


@pytest.mark.parametrize(("path", "base", "shape"), SURFACES)
def test_very_deep_json_is_refused_quickly(limited: GatewayServer, path: str, base: dict, shape: str) -> None:
    deep_alone = b"[" * 100_000 + b"]" * 100_000
    deep_inside = orjson.dumps(base)[:-1] + b',"metadata":' + deep_alone + b"}"
    for raw in (deep_alone, deep_inside):
        started = time.monotonic()
        response = httpx.post(limited.url + path, headers={**AUTH, "content-type": "application/json"}, content=raw)
        assert time.monotonic() - started < 1.0
        assert response.status_code == 400, response.text[:300]
    assert "nested deeper than 64" in _error(response, shape)["message"]
    assert httpx.get(limited.url + "/health").status_code == 200


def _nested(levels: int) -> object:
    value: object = "leaf"
    for _ in range(levels):
        value = [value]
    return value


def test_nesting_up_to_the_limit_is_accepted(limited: GatewayServer) -> None:
    at_limit = httpx.post(limited.url + "/v1/chat/completions", headers=AUTH, json={**CHAT, "metadata": _nested(63)})
    assert at_limit.status_code == 200, at_limit.text  # the body object itself is level 1
    over = httpx.post(limited.url + "/v1/chat/completions", headers=AUTH, json={**CHAT, "metadata": _nested(64)})
    assert over.status_code == 400 and "nested deeper than 64" in over.json()["error"]["message"]


def test_max_tokens_is_capped_per_model(limited: GatewayServer, limited_upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=limited.url + "/v1", api_key=MASTER, max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    client.chat.completions.create(model="gpt", messages=messages, max_tokens=1_000_000)
    assert limited_upstream.requests[-1].json()["max_tokens"] == 100
    client.chat.completions.create(model="gpt", messages=messages, max_completion_tokens=1_000_000)
    assert limited_upstream.requests[-1].json()["max_completion_tokens"] == 100
    client.chat.completions.create(model="gpt", messages=messages, max_tokens=7)
    assert limited_upstream.requests[-1].json()["max_tokens"] == 7
    client.chat.completions.create(model="claude", messages=messages, max_tokens=1_000_000)  # translated
    assert limited_upstream.requests[-1].json()["max_tokens"] == 50
    native = anthropic.Anthropic(base_url=limited.url, api_key=MASTER, max_retries=0)
    native.messages.create(model="claude", max_tokens=20_000, messages=messages)  # passed through
    assert limited_upstream.requests[-1].json()["max_tokens"] == 50
    raw = httpx.post(limited.url + "/v1/messages", headers=AUTH, json={**MESSAGES, "max_tokens": 10**9})
    assert raw.status_code == 200
    assert limited_upstream.requests[-1].json()["max_tokens"] == 50


def test_n_is_capped(limited: GatewayServer, limited_upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=limited.url + "/v1", api_key=MASTER, max_retries=0)
    before = len(limited_upstream.requests)
    for n in (17, 1_000_000):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}], n=n)
        assert caught.value.body["param"] == "n" and "16" in caught.value.body["message"]
    assert len(limited_upstream.requests) == before
    client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}], n=16)
    assert limited_upstream.requests[-1].json()["n"] == 16


def _raw_exchange(port: int, parts: list[bytes], pause: float = 0.0, wait: float = 10.0) -> tuple[bytes, float]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        try:
            for part in parts:
                conn.sendall(part)
                if pause:
                    time.sleep(pause)
        except OSError:
            pass  # the gateway may close the connection while we still send
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer, time.monotonic() - started


def test_oversized_headers_are_refused(limited: GatewayServer) -> None:
    answer, elapsed = _raw_exchange(
        limited.port, [b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ", *([b"a" * 65536] * 320)]
    )  # 20 MB of one header
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["message"]
    assert elapsed < 5
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(500))
    answer, _ = _raw_exchange(limited.port, [b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"])
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert httpx.get(limited.url + "/health", headers={"x-fine": "v" * 4000}).status_code == 200


def test_slow_headers_time_out(limited: GatewayServer) -> None:
    answer, elapsed = _raw_exchange(limited.port, [b"GET /health HTTP/1.1\r\n", *([b"X-Slow: 1\r\n"] * 30)], pause=0.2)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert HEADER_TIMEOUT - 0.1 < elapsed < HEADER_TIMEOUT + 2.5


@pytest.mark.parametrize(("path", "shape"), [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")])
def test_slow_body_times_out(limited: GatewayServer, path: str, shape: str) -> None:
    head_bytes = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MASTER}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    answer, elapsed = _raw_exchange(limited.port, [head_bytes, *([b" "] * 60)], pause=0.2)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"connection: close" in answer.lower()
    payload = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert payload["error"]["message"].startswith("The request body did not arrive within 1 seconds")
    if shape == "anthropic":
        assert payload["type"] == "error"
    assert BODY_TIMEOUT - 0.1 < elapsed < BODY_TIMEOUT + 2.5


def test_a_body_that_never_comes_times_out(limited: GatewayServer) -> None:
    head_bytes = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MASTER}\r\nContent-Length: 50\r\n\r\n"
    ).encode()
    answer, elapsed = _raw_exchange(limited.port, [head_bytes])
    assert answer.startswith(b"HTTP/1.1 408") and elapsed < BODY_TIMEOUT + 2.5


@pytest.mark.parametrize("stream", [False, True])
def test_an_endless_upstream_sse_line_ends_cleanly(limited: GatewayServer, stream: bool) -> None:
    started = time.monotonic()
    response = httpx.post(
        limited.url + "/v1/chat/completions",
        headers=AUTH,
        json={"model": "long-line", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        timeout=30,
    )
    assert time.monotonic() - started < 10
    assert response.status_code == 502, response.text[:300]
    assert "SSE line longer than" in response.json()["error"]["message"]
    assert len(response.content) < 10_000
    client = openai.OpenAI(base_url=limited.url + "/v1", api_key=MASTER, max_retries=0)
    assert client.chat.completions.create(**CHAT).choices[0].message.content


@pytest.mark.parametrize("path", ["/admin/keys", "/prompts/limits", "/dashboard/login"])
def test_admin_and_prompt_bodies_are_bounded_too(limited: GatewayServer, path: str) -> None:
    head_bytes = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    answer, _ = _raw_exchange(limited.port, [head_bytes.encode()], wait=BODY_TIMEOUT + 2.5)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    big = httpx.post(limited.url + path, headers={"content-type": "application/json"}, content=b" " * (MAX_BODY + 1))
    assert big.status_code == 413


def test_llmgate_serve_bounds_headers(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[gateway]\nport = {port}\ndatabase_url = "sqlite:///{tmp_path}/g.db"\nmax_header_bytes = {MAX_HEADERS}\n'
        f'usage_spill_path = "{tmp_path}/spill.jsonl"\n'
    )
    server = ServeProcess(config, tmp_path / "serve.log", port)
    try:
        answer, _ = _raw_exchange(port, [b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"])
    finally:
        server.stop()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
