"""Streams: SSE decoding and the relay of a pass-through stream, per whole stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmgate.calls import StreamRelay
from llmgate.types import RequestContext
from providers.anthropic import AnthropicStreamParser
from providers.openai import OpenAIStreamParser
from providers.sse import SSEDecoder

GOLDEN = Path(__file__).parents[1] / "golden"
NGINX_CONF = Path(__file__).parents[3] / "shared" / "bench" / "upstream" / "nginx.conf"


def build_openai_stream() -> bytes:
    """The bench kit's 6-chunk stream, a usage chunk and [DONE], as the upstream sends it."""
    chunks = [
        b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
        b'"choices":[{"index":0,"delta":{"content":"' + word + b'"},"finish_reason":null}]}'
        for word in (b"Hello", b"!", b" How", b" can", b" I", b" help?")
    ]
    chunks.append(
        b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],'
        b'"usage":{"prompt_tokens":14,"completion_tokens":6,"total_tokens":20}}'
    )
    chunks.append(b"[DONE]")
    return b"".join(b"data: " + c + b"\n\n" for c in chunks)


def relay_stream(raw: bytes, reads: int) -> tuple[list[Any], RequestContext]:
    ctx = RequestContext(request_id="r", surface="chat", token=None, body={}, model="m", stream=True)
    relay = StreamRelay(ctx, lambda: OpenAIStreamParser("up"), passthrough=True)
    decoder = SSEDecoder()
    size = max(1, len(raw) // reads)
    out: list[Any] = []
    for start in range(0, len(raw), size):
        for event in decoder.feed(raw[start : start + size]):
            out.extend(relay.feed(event))
    for event in decoder.close():
        out.extend(relay.feed(event))
    out.extend(relay.end())
    return out, ctx


def test_openai_passthrough_relay(benchmark: Any) -> None:
    raw = build_openai_stream()
    out, _ = benchmark(relay_stream, raw, 8)
    assert [e.data for e in out][-1] == b"[DONE]"
    assert len(out) == 7  # the usage chunk is dropped: the caller did not ask for it


def test_anthropic_stream_translation(benchmark: Any) -> None:
    raw = (GOLDEN / "anthropic/stream_text/wire_stream.sse").read_bytes()

    def translate() -> tuple[list[dict[str, Any]], AnthropicStreamParser]:
        parser = AnthropicStreamParser("anthropic", "claude")
        decoder = SSEDecoder()
        chunks = [c for event in [*decoder.feed(raw), *decoder.close()] for c in parser.feed(event)]
        return chunks + parser.finish(), parser

    chunks, parser = benchmark(translate)
    assert parser.done and parser.usage is not None and parser.usage.output_tokens > 0
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
