"""Ingress translations for `/v1/messages`, checked against the wire samples and the anthropic SDK's own types.

The Anthropic samples are the copies under tests/golden/anthropic/ (see each case.json for its reference);
the OpenAI streams are the recorded ones under tests/golden/openai/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import orjson
import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse

from llmgate.errors import InvalidRequest, UpstreamError, UpstreamUnavailable
from llmgate.surfaces.anthropic_format import (
    AnthropicStreamEncoder,
    build_message_response,
    build_native_event,
    count_tokens,
    error_event,
    parse_messages_request,
)
from providers.anthropic import AnthropicStreamParser, build_messages_body, parse_message_response
from providers.sse import SSEDecoder, SSEEvent

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
STREAM_EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)


def _load(path: str) -> Any:
    return json.loads((GOLDEN / path).read_text())


def _sse(raw: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return decoder.feed(raw) + decoder.close()


def _openai_chunks(path: str) -> list[dict[str, Any]]:
    return [orjson.loads(e.data) for e in _sse((GOLDEN / path).read_bytes()) if e.data != b"[DONE]"]


def _accumulate(raw: bytes) -> tuple[list[str], Message]:
    """Decode our SSE bytes, validate every event with the SDK's types and build the message as the SDK does."""
    names: list[str] = []
    snapshot = None
    buffers: dict[int, bytes] = {}
    for event in _sse(raw):
        parsed = STREAM_EVENT.validate_json(event.data)
        assert parsed.type == event.event
        names.append(parsed.type)
        snapshot = accumulate_event(event=parsed, current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    return names, Message.model_validate(snapshot.model_dump())


def _messages_body(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}], **fields}


# -- request --------------------------------------------------------------------------------------


def test_full_request_to_canonical() -> None:
    wire = _load("anthropic/chat_full_request/wire_request.json")
    canonical = parse_messages_request(wire)
    image = wire["messages"][0]["content"][0]["source"]
    assert canonical == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [
            {"role": "system", "content": "You are a concise weather assistant."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image['data']}"}},
                    {"type": "text", "text": wire["messages"][0]["content"][1]["text"]},
                ],
            },
            {
                "role": "assistant",
                "content": "I'll check the current weather in San Francisco for you.",
                "tool_calls": [
                    {
                        "id": "toolu_01A09q90qw90lq917835lq9",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"location":"San Francisco, CA","unit":"celsius"}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees, partly cloudy"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Get the current weather in a given location",
                    "parameters": wire["tools"][0]["input_schema"],
                },
            }
        ],
        "tool_choice": "auto",
    }


def test_round_trip_through_the_anthropic_adapter_gives_the_request_back() -> None:
    wire = _load("anthropic/chat_full_request/wire_request.json")
    again = build_messages_body(parse_messages_request(wire), wire["model"], False, 4096)
    # Only the cache hint on the system block does not survive the canonical form (documented).
    assert again == {**wire, "system": wire["system"][0]["text"]}
    recorded = _load("anthropic/chat_tools_recorded/wire_request.json")
    assert build_messages_body(parse_messages_request(recorded), recorded["model"], False, 4096) == recorded


def test_sampling_fields_stream_and_metadata() -> None:
    canonical = parse_messages_request(
        _messages_body(
            system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
            stop_sequences=["END"],
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            metadata={"user_id": "u-7"},
            stream=True,
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}, "effort": "low"},
        )
    )
    assert canonical["messages"][0] == {"role": "system", "content": "A\n\nB"}
    assert canonical["stop"] == ["END"]
    assert (canonical["temperature"], canonical["top_p"], canonical["top_k"]) == (0.5, 0.9, 40)
    assert canonical["user"] == "u-7"
    assert canonical["stream"] is True
    assert canonical["stream_options"] == {"include_usage": True}
    assert canonical["tool_choice"] == "required"
    assert canonical["parallel_tool_calls"] is False
    assert canonical["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": {"type": "object"}, "strict": True},
    }
    assert canonical["output_config"] == {"effort": "low"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    canonical = parse_messages_request(_messages_body(tool_choice=choice))
    assert canonical["tool_choice"] == expected
    assert "parallel_tool_calls" not in canonical


def test_tool_results_come_first_and_errors_are_marked() -> None:
    content = [
        {"type": "text", "text": "Here you go."},
        {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "42"}]},
        {"type": "tool_result", "tool_use_id": "t2", "content": "timeout", "is_error": True},
    ]
    canonical = parse_messages_request(_messages_body(messages=[{"role": "user", "content": content}]))
    assert canonical["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "42"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: timeout"},
        {"role": "user", "content": "Here you go."},
    ]


def test_what_has_no_canonical_form_is_carried_not_dropped() -> None:
    server_tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    url_document = {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}
    thinking = {"type": "enabled", "budget_tokens": 2048}
    canonical = parse_messages_request(
        _messages_body(
            thinking=thinking,
            tools=[server_tool],
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "Read this"}, url_document]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                        {"type": "text", "text": "Ok"},
                    ],
                },
            ],
        )
    )
    assert canonical["thinking"] == thinking
    assert canonical["tools"] == [server_tool]
    assert canonical["messages"][0]["content"] == [{"type": "text", "text": "Read this"}, url_document]
    # A past turn's reasoning trace is left out (documented): the text stays.
    assert canonical["messages"][1] == {"role": "assistant", "content": "Ok"}


def test_documents_and_image_urls() -> None:
    content = [
        {
            "type": "document",
            "title": "r.pdf",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVB"},
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    ]
    canonical = parse_messages_request(_messages_body(messages=[{"role": "user", "content": content}]))
    assert canonical["messages"][0]["content"] == [
        {"type": "file", "file": {"filename": "r.pdf", "file_data": "data:application/pdf;base64,JVB"}},
        {"type": "text", "text": "plain words"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"model": ""}, "model"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages.0.content.0"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "messages.0.content.0.tool_use_id"),
        ({"system": 5}, "system"),
        ({"stream": "yes"}, "stream"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"tools": [{"name": "t"}]}, "tools.0.input_schema"),
        ({"stop_sequences": "END"}, "stop_sequences"),
    ],
)
def test_invalid_requests_name_the_field(change: dict[str, Any], param: str) -> None:
    body = {k: v for k, v in {**_messages_body(), **change}.items() if v is not None}
    with pytest.raises(InvalidRequest) as info:
        parse_messages_request(body)
    assert info.value.param == param
    assert info.value.status == 400
    assert json.loads(info.value.anthropic_body())["error"]["type"] == "invalid_request_error"


def test_count_tokens() -> None:
    # wire-samples/anthropic/count_tokens_request.json (the SDK's message_count_tokens_params): no max_tokens.
    body = {
        "model": "claude-sonnet-4-5",
        "system": "You are a scientist",
        "messages": [{"role": "user", "content": "Hello, Claude"}],
    }
    counted = count_tokens(body)
    MessageTokensCount.model_validate(counted)
    longer = count_tokens({**body, "messages": [{"role": "user", "content": "Hello, Claude. " * 50}]})
    assert 0 < counted["input_tokens"] < longer["input_tokens"]
    with pytest.raises(InvalidRequest):
        count_tokens({"model": "m"})


# -- response -------------------------------------------------------------------------------------


def test_tool_call_response_validates_as_an_sdk_message_and_parses_back() -> None:
    canonical = _load("openai/chat_tool_calls/wire_response.json")
    message = build_message_response(canonical, "gpt-4o-mini")
    validated = Message.model_validate(message)
    assert validated.stop_reason == "tool_use"
    assert validated.id == "msg_abc123"
    assert validated.content[0].type == "tool_use"
    assert validated.content[0].input == {"location": "Boston, MA"}
    assert message["usage"] == {
        "input_tokens": 82,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 17,
    }
    again, usage = parse_message_response(message)
    call = again["choices"][0]["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"location": "Boston, MA"}
    assert again["choices"][0]["finish_reason"] == "tool_calls"
    assert (usage.input_tokens, usage.output_tokens) == (82, 17)


def test_text_response_with_cached_tokens() -> None:
    canonical = _load("openai/chat_text_usage/wire_response.json")
    message = build_message_response(canonical, "gpt-4o")
    Message.model_validate(message)
    usage = canonical["usage"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert message["content"] == [{"type": "text", "text": canonical["choices"][0]["message"]["content"]}]
    assert message["usage"]["input_tokens"] + message["usage"]["cache_read_input_tokens"] == usage["prompt_tokens"]
    assert message["usage"]["cache_read_input_tokens"] == cached
    assert message["model"] == "gpt-4o"


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal")],
)
def test_finish_reason_mapping(finish: str, stop_reason: str) -> None:
    response = {"id": "chatcmpl-1", "choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
    assert build_message_response(response, "m")["stop_reason"] == stop_reason


def test_tool_arguments_that_are_not_an_object_are_an_upstream_error() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "not json"}}
    response = {
        "id": "x",
        "choices": [{"message": {"content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}],
    }
    with pytest.raises(UpstreamError):
        build_message_response(response, "m")


# -- stream ---------------------------------------------------------------------------------------


def _encode(chunks: list[dict[str, Any]], model: str = "gpt-4o", input_tokens: int = 0) -> bytes:
    encoder = AnthropicStreamEncoder(model, input_tokens=input_tokens)
    return b"".join(encoder.encode(c) for c in chunks) + encoder.finish()


def test_text_stream_is_a_valid_anthropic_event_sequence() -> None:
    chunks = _openai_chunks("openai/stream_text_include_usage/wire_stream.sse")
    names, message = _accumulate(_encode(chunks, input_tokens=9))
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 1
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == text
    assert message.stop_reason == "end_turn"
    assert message.model == "gpt-4o"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (14, 30)


def test_parallel_tool_call_stream_becomes_tool_use_blocks() -> None:
    chunks = _openai_chunks("openai/stream_parallel_tool_calls/wire_stream.sse")
    names, message = _accumulate(_encode(chunks))
    assert names.count("content_block_start") == 2
    assert [b.type for b in message.content] == ["tool_use", "tool_use"]
    expected = [
        (d["id"], d["function"]["name"])
        for c in chunks
        for choice in c["choices"]
        for d in choice["delta"].get("tool_calls", [])
        if "id" in d
    ]
    assert [(b.id, b.name) for b in message.content] == expected
    arguments: dict[int, str] = {}
    for c in chunks:
        for choice in c["choices"]:
            for d in choice["delta"].get("tool_calls", []):
                arguments[d["index"]] = arguments.get(d["index"], "") + d["function"].get("arguments", "")
    assert [b.input for b in message.content] == [json.loads(arguments[0]), json.loads(arguments[1])]
    assert message.stop_reason == "tool_use"


def test_text_then_tool_call_and_back_through_the_anthropic_parser() -> None:
    base = {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1, "model": "x"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    call_start = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me check."}),
        chunk({"tool_calls": [call_start]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        chunk({}, "tool_calls"),
        {**base, "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}},
    ]
    raw = _encode(chunks)
    _, message = _accumulate(raw)
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"a": 1}
    assert message.id == "msg_7"
    parser = AnthropicStreamParser("gateway", "x")
    back = [c for e in _sse(raw) for c in parser.feed(e)]
    assert parser.done
    deltas = [c["choices"][0]["delta"] for c in back]
    assert "".join(d.get("content") or "" for d in deltas) == "Let me check."
    assert "".join(t["function"]["arguments"] for d in deltas for t in d.get("tool_calls", [])) == '{"a": 1}'
    assert back[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert parser.usage is not None
    assert (parser.usage.input_tokens, parser.usage.output_tokens) == (20, 7)


def test_empty_stream_still_opens_and_closes_the_message() -> None:
    encoder = AnthropicStreamEncoder("m", input_tokens=3)
    names, message = _accumulate(encoder.finish())
    assert names == ["message_start", "message_delta", "message_stop"]
    assert message.content == []
    assert message.usage.input_tokens == 3


def test_error_event_and_native_event_framing() -> None:
    raw = error_event(UpstreamUnavailable("provider 'claude' is overloaded: Overloaded"))
    [event] = _sse(raw)
    assert event.event == "error"
    parsed = ErrorResponse.model_validate_json(event.data).model_dump(exclude_none=True)
    assert parsed == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "provider 'claude' is overloaded: Overloaded"},
    }
    native = SSEEvent(b'{"type":"ping"}', "ping")
    assert build_native_event(native) == b'event: ping\ndata: {"type":"ping"}\n\n'


# -- the real anthropic SDK over an in-memory transport ---------------------------------------------------


def _fake_ingress(seen: list[dict[str, Any]]) -> httpx2.MockTransport:
    """A `/v1/messages` made of this module's functions over canned canonical answers (no gateway).

    httpx2, not httpx: it is the transport package the installed anthropic SDK uses.
    """
    chunks = _openai_chunks("openai/stream_parallel_tool_calls/wire_stream.sse")
    completion = _load("openai/chat_tool_calls/wire_response.json")

    def handle(request: httpx2.Request) -> httpx2.Response:
        canonical = parse_messages_request(orjson.loads(request.content))
        seen.append(canonical)
        if not canonical.get("stream"):
            return httpx2.Response(200, json=build_message_response(completion, canonical["model"]))
        encoder = AnthropicStreamEncoder(canonical["model"], input_tokens=5)
        raw = b"".join(encoder.encode(c) for c in chunks) + encoder.finish()
        return httpx2.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    return httpx2.MockTransport(handle)


async def test_anthropic_sdk_reads_our_messages_and_streams() -> None:
    seen: list[dict[str, Any]] = []
    http = httpx2.AsyncClient(transport=_fake_ingress(seen))
    client = anthropic.AsyncAnthropic(api_key="gateway-key", base_url="http://gateway.test", http_client=http)
    tools = [
        {"name": "get_weather", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}
    ]
    try:
        message = await client.messages.create(
            model="gpt-4o",
            max_tokens=64,
            system="Be brief.",
            tools=tools,
            messages=[{"role": "user", "content": "Weather in Boston?"}],
        )
        assert message.stop_reason == "tool_use"
        assert message.content[0].type == "tool_use"
        assert message.content[0].input == {"location": "Boston, MA"}
        async with client.messages.stream(
            model="gpt-4o", max_tokens=64, tools=tools, messages=[{"role": "user", "content": "Two cities?"}]
        ) as stream:
            final = await stream.get_final_message()
        assert [b.type for b in final.content] == ["tool_use", "tool_use"]
        assert all(isinstance(b.input, dict) and b.input for b in final.content)
        assert final.stop_reason == "tool_use"
        assert final.usage.output_tokens > 0
    finally:
        await client.close()
    assert seen[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert seen[0]["tools"][0]["function"]["name"] == "get_weather"
    assert seen[1]["stream"] is True
