"""The OpenAI adapter through the shared upstream client, with respx as the transport."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest
import respx

from llmgate.config import ProviderSettings, Timeouts
from llmgate.errors import UpstreamError, UpstreamRateLimited, UpstreamTimeout
from llmgate.upstream import UpstreamClient
from providers.openai import OpenAIProvider, OpenAIStreamParser
from providers.sse import SSEDecoder, SSEEvent

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "openai"
BASE = "https://upstream.test/v1"
TIMEOUTS = Timeouts(connect=1, first_byte=2, total=5)


@pytest.fixture
def adapter() -> OpenAIProvider:
    return OpenAIProvider("oa", ProviderSettings(type="openai", base_url=BASE, api_key="sk-up", headers={"x-org": "o"}))


async def test_send_passes_body_through(adapter: OpenAIProvider) -> None:
    body = {"model": "public", "messages": [{"role": "user", "content": "hi"}], "seed": 7, "vendor_extra": {"a": 1}}
    recorded = (GOLDEN / "chat_text_usage" / "wire_response.json").read_bytes()
    client = UpstreamClient(transport=httpx.AsyncHTTPTransport())
    try:
        with respx.mock(using="httpx") as mock:
            route = mock.post(f"{BASE}/chat/completions").respond(200, content=recorded)
            wire = adapter.build_chat_request(body, "gpt-4o-mini", stream=False)
            resp = await adapter.send(client, wire, TIMEOUTS)
        sent = route.calls.last.request
        assert orjson.loads(sent.content) == {**body, "model": "gpt-4o-mini"}
        assert sent.headers["authorization"] == "Bearer sk-up" and sent.headers["x-org"] == "o"
        data, usage = adapter.parse_chat_response(resp, "gpt-4o-mini")
        assert data == orjson.loads(recorded)
        assert usage.input_tokens == data["usage"]["prompt_tokens"]
    finally:
        await client.aclose()


async def test_stream_relay_drops_usage_chunk_unless_asked(adapter: OpenAIProvider) -> None:
    raw = (GOLDEN / "stream_text_include_usage" / "wire_stream.sse").read_bytes()
    client = UpstreamClient(transport=httpx.AsyncHTTPTransport())
    try:
        for include_usage in (False, True):
            with respx.mock(using="httpx") as mock:
                mock.post(f"{BASE}/chat/completions").respond(200, content=raw,
                                                              headers={"content-type": "text/event-stream"})
                wire = adapter.build_chat_request({"model": "m", "messages": [], "stream": True}, "m", stream=True)
                assert orjson.loads(wire.body)["stream_options"] == {"include_usage": True}
                parser = adapter.new_stream_parser("m", {})
                forwarded = []
                async with adapter.open_stream(client, wire, TIMEOUTS) as events:
                    async for event in events:
                        out = parser.relay(event, include_usage)
                        if out is not None:
                            forwarded.append(out.data)
            assert parser.done and parser.usage is not None and parser.usage.output_tokens == 30
            has_usage_chunk = any(b'"choices":[]' in d for d in forwarded)
            assert has_usage_chunk is include_usage
            assert forwarded[-1] == b"[DONE]"
    finally:
        await client.aclose()


async def test_errors_are_mapped_once(adapter: OpenAIProvider) -> None:
    client = UpstreamClient(transport=httpx.AsyncHTTPTransport())
    try:
        with respx.mock(using="httpx") as mock:
            route = mock.post(f"{BASE}/chat/completions")
            route.respond(429, content=(GOLDEN / "error_429_rate_limit" / "wire_response.json").read_bytes(),
                          headers={"retry-after": "3"})
            wire = adapter.build_chat_request({"model": "m", "messages": []}, "m", stream=False)
            resp = await adapter.send(client, wire, TIMEOUTS)
            err = adapter.map_error(resp)
            assert isinstance(err, UpstreamRateLimited) and err.retry_after == 3 and err.headers["retry-after"] == "3"
            route.side_effect = httpx.ConnectError("refused")
            with pytest.raises(UpstreamError) as info:
                await adapter.send(client, wire, TIMEOUTS)
            assert "unreachable" in info.value.message and "sk-up" not in info.value.message
            route.side_effect = httpx.ReadTimeout("slow")
            with pytest.raises(UpstreamTimeout):
                await adapter.send(client, wire, TIMEOUTS)
            route.side_effect = None
            route.respond(500, content=b"<html>oops</html>")
            with pytest.raises(UpstreamError) as info:
                async with adapter.open_stream(client, wire, TIMEOUTS):
                    pass
            assert info.value.status == 502 and info.value.retryable
    finally:
        await client.aclose()


def test_parser_feed_strips_usage_and_raises_on_error_events() -> None:
    parser = OpenAIStreamParser("oa")
    decoder = SSEDecoder()
    raw = (GOLDEN / "stream_parallel_tool_calls" / "wire_stream.sse").read_bytes()
    chunks = [c for e in decoder.feed(raw) for c in parser.feed(e)]
    assert parser.done and parser.usage is not None
    assert all("usage" not in c for c in chunks)
    with pytest.raises(UpstreamError) as info:
        OpenAIStreamParser("oa").feed(SSEEvent(b'{"error": {"message": "overloaded"}}'))
    assert "overloaded" in info.value.message
    with pytest.raises(UpstreamError):
        OpenAIStreamParser("oa").relay(SSEEvent(b'{"error": {"message": "boom"}}'), True)


def test_invalid_json_body_is_an_upstream_error(adapter: OpenAIProvider) -> None:
    from providers.base import WireResponse

    with pytest.raises(UpstreamError) as info:
        adapter.parse_chat_response(WireResponse(200, b"not json"), "m")
    assert "not JSON" in info.value.message
