"""The real `openai` SDK, sync and async, against a running gateway."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.harness import FakeUpstream, GatewayServer, Received, json_response, make_settings, sse_response

MASTER = "sk-master-e2e"
SAMPLES = Path(__file__).resolve().parents[1] / "golden" / "openai"


def _settings(upstream_url: str = "http://127.0.0.1:1/v1", **gateway: object) -> dict:
    return {
        "gateway": {"master_key": MASTER, **gateway},
        "providers": {
            "mock": {"type": "mock"},
            "up": {"type": "openai", "base_url": upstream_url, "api_key": "sk-upstream-secret"},
            "nokey": {"type": "openai", "base_url": upstream_url, "api_key": "${LLMGATE_E2E_UNSET_KEY}"},
        },
        "models": [
            {"name": "mock-gpt", "provider": "mock"},
            {"name": "mock-embed", "provider": "mock", "mode": "embedding"},
            {"name": "real-gpt", "provider": "up", "upstream": "gpt-4o-2024-08-06"},
            {"name": "keyless", "provider": "nokey"},
        ],
        "keys": [{"key": "sk-limited", "name": "limited", "models": ["mock-gpt"]}],
    }


@pytest.fixture(scope="module")
def gateway():
    with GatewayServer(make_settings(_settings())) as server:
        yield server


@pytest.fixture
def client(gateway: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0)


def test_chat_sync(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "ping pong"}])
    assert resp.choices[0].message.content.endswith("You said: ping pong")
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0


async def test_chat_async(gateway: GatewayServer) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0)
    resp = await client.chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "async"}])
    assert "async" in resp.choices[0].message.content
    raw = await client.chat.completions.with_raw_response.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hdr"}], extra_headers={"x-request-id": "req-123"}
    )
    assert raw.headers["x-request-id"] == "req-123"
    assert raw.headers["x-llmgate-deployment"] == "mock/mock-gpt"
    assert raw.headers["x-llmgate-attempts"] == "1"
    assert float(raw.headers["x-llmgate-cost-usd"]) == 0.0  # no price configured
    await client.close()


def test_stream_reassembles_and_usage_only_when_asked(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "stream me"}]
    full = client.chat.completions.create(model="mock-gpt", messages=messages)
    chunks = list(client.chat.completions.create(model="mock-gpt", messages=messages, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert all(c.usage is None for c in chunks)
    with_usage = list(
        client.chat.completions.create(
            model="mock-gpt", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == full.usage.completion_tokens


def test_tools(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    resp = client.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "weather?"}], tools=tools
    )
    call = resp.choices[0].message.tool_calls[0]
    assert resp.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and "city" in orjson.loads(call.function.arguments)
    streamed = list(
        client.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "weather?"}], tools=tools, stream=True
        )
    )
    args = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in streamed
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert orjson.loads(args) == orjson.loads(call.function.arguments)


def test_embeddings_float_base64_and_tokens(client: openai.OpenAI, gateway: GatewayServer) -> None:
    # The SDK asks for base64 by default and decodes it.
    resp = client.embeddings.create(model="mock-embed", input=["one", "two"])
    assert len(resp.data) == 2 and len(resp.data[0].embedding) == 256
    floats = client.embeddings.create(model="mock-embed", input="one", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(resp.data[0].embedding, abs=1e-6)
    tokens = client.embeddings.create(model="mock-embed", input=[[1, 2, 3], [4, 5]])
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 5
    raw = httpx.post(
        gateway.url + "/v1/embeddings",
        headers={"authorization": f"Bearer {MASTER}"},
        json={"model": "mock-embed", "input": "one", "encoding_format": "base64"},
    ).json()
    decoded = struct.unpack("<256f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_models_filtered_by_key(gateway: GatewayServer) -> None:
    admin = openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER)
    assert {m.id for m in admin.models.list()} == {"mock-gpt", "mock-embed", "real-gpt", "keyless"}
    limited = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-limited", max_retries=0)
    assert [m.id for m in limited.models.list()] == ["mock-gpt"]
    assert limited.models.retrieve("mock-gpt").id == "mock-gpt"
    with pytest.raises(openai.NotFoundError):
        limited.models.retrieve("real-gpt")
    with pytest.raises(openai.PermissionDeniedError) as info:
        limited.chat.completions.create(model="real-gpt", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["param"] == "model"


def test_error_classes(client: openai.OpenAI, gateway: GatewayServer) -> None:
    bad = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "nope" in info.value.message and info.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="mock-gpt", messages=[])
    assert info.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "x"}], max_tokens=-3)
    assert info.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="mock-gpt",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"api_base": "http://evil.invalid"},
        )
    assert info.value.body["param"] == "api_base"
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="real-gpt", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502 and "'up'" in info.value.message
    assert "sk-upstream-secret" not in str(info.value.body)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="keyless", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503 and "LLMGATE_E2E_UNSET_KEY" in info.value.message


def test_raw_bad_input(gateway: GatewayServer) -> None:
    auth = {"authorization": f"Bearer {MASTER}", "content-type": "application/json"}
    url = gateway.url + "/v1/chat/completions"
    r = httpx.post(url, headers=auth, content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url, headers=auth, content=b'{"model": 5, "messages": []}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.post(url, headers=auth, content=b"[1, 2]")
    assert r.status_code == 400
    r = httpx.post(
        url,
        headers={"x-api-key": MASTER},
        json={"model": "mock-gpt", "messages": [{"role": "user", "content": "x-api-key"}]},
    )
    assert r.status_code == 200 and "x-request-id" in r.headers


def test_body_limit() -> None:
    with GatewayServer(make_settings(_settings(max_body_bytes=1024))) as server:
        r = httpx.post(
            server.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {MASTER}"},
            json={"model": "mock-gpt", "messages": [{"role": "user", "content": "x" * 4096}]},
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def _recorded(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def test_openai_pass_through_forwards_untouched() -> None:
    def script(req: Received):
        if req.json().get("stream"):
            return sse_response([_recorded("stream_text_include_usage/wire_stream.sse")])
        return json_response(orjson.loads(_recorded("chat_text_usage/wire_response.json")))

    with FakeUpstream(script) as upstream, GatewayServer(make_settings(_settings(upstream.url + "/v1"))) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=MASTER, max_retries=0)
        resp = client.chat.completions.create(
            model="real-gpt", messages=[{"role": "user", "content": "hi"}], extra_body={"custom_field": [1, {"a": 2}]}
        )
        sent = upstream.requests[-1]
        assert sent.path == "/v1/chat/completions"
        assert sent.headers["authorization"] == "Bearer sk-upstream-secret"
        assert sent.json()["custom_field"] == [1, {"a": 2}] and sent.json()["model"] == "gpt-4o-2024-08-06"
        assert resp.usage.prompt_tokens_details.cached_tokens == 0
        assert (
            resp.system_fingerprint
            == orjson.loads(_recorded("chat_text_usage/wire_response.json"))["system_fingerprint"]
        )
        chunks = list(
            client.chat.completions.create(model="real-gpt", messages=[{"role": "user", "content": "hi"}], stream=True)
        )
        assert upstream.requests[-1].json()["stream_options"] == {"include_usage": True}
        assert all(c.choices for c in chunks), "usage chunk dropped when the caller did not ask for it"
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text.startswith("I'm")
