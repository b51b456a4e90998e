"""The Anthropic adapter beyond the golden cases: refusals, mappings, stream state, pass-through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmgate.calls import StreamRelay
from llmgate.config import ProviderSettings
from llmgate.errors import (
    ContextWindowExceeded,
    GatewayError,
    InvalidRequest,
    UpstreamCallerError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from llmgate.types import RequestContext
from providers.anthropic import AnthropicProvider, AnthropicStreamParser, build_messages_body, map_stop_reason
from providers.base import WireResponse
from providers.sse import SSEDecoder, SSEEvent

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "anthropic"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


def _provider(**overrides: Any) -> AnthropicProvider:
    return AnthropicProvider("claude", ProviderSettings(type="anthropic", api_key="sk-ant-test", **overrides))


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": "claude", "messages": [{"role": "user", "content": "Hi"}], **fields}


def _build(**fields: Any) -> dict[str, Any]:
    return build_messages_body(_body(**fields), "claude-haiku-4-5", False, 1024)


def _events(raw: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return decoder.feed(raw) + decoder.close()


def _event(kind: str, **payload: Any) -> SSEEvent:
    return SSEEvent(orjson.dumps({"type": kind, **payload}), kind)


# -- wire request: headers and URL ----------------------------------------------------------------


def test_default_auth_is_x_api_key_with_version_header() -> None:
    wire = _provider().build_chat_request(_body(), "claude-haiku-4-5", False)
    assert wire.url == "https://api.anthropic.com/v1/messages"
    assert wire.headers["x-api-key"] == "sk-ant-test"
    assert wire.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in wire.headers


def test_bearer_auth_configured_version_and_extra_headers() -> None:
    provider = _provider(
        auth_style="bearer", api_version="2025-01-01", headers={"anthropic-beta": "x"}, base_url="http://h:9/"
    )
    wire = provider.build_chat_request(_body(), "m", False)
    assert wire.url == "http://h:9/v1/messages"
    assert wire.headers["authorization"] == "Bearer sk-ant-test"
    assert wire.headers["anthropic-version"] == "2025-01-01"
    assert wire.headers["anthropic-beta"] == "x"
    assert "x-api-key" not in wire.headers


# -- wire request: what cannot be expressed is refused by name ------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -0.2),
        ("logit_bias", {"50256": -100}),
        ("seed", 7),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("reasoning_effort", "high"),
        ("web_search_options", {}),
        ("functions", [{"name": "f"}]),
        ("some_future_field", 1),
    ],
)
def test_inexpressible_field_is_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        _build(**{field: value})
    assert f"`{field}`" in info.value.message
    assert "not supported by Anthropic models" in info.value.message
    assert info.value.param == field
    assert info.value.status == 400


def test_harmless_defaults_and_bookkeeping_fields_are_accepted() -> None:
    wire = _build(
        n=1,
        logprobs=False,
        presence_penalty=0,
        frequency_penalty=0.0,
        modalities=["text"],
        store=False,
        metadata={"tag": "x"},
        stream_options={"include_usage": True},
        response_format={"type": "text"},
    )
    assert set(wire) == {"model", "max_tokens", "messages"}


def test_temperature_above_one_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="temperature"):
        _build(temperature=1.5)
    assert _build(temperature=1)["temperature"] == 1


def test_json_object_response_format_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="json_object"):
        _build(response_format={"type": "json_object"})


def test_top_k_and_thinking_extensions_are_forwarded() -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    wire = _build(top_k=5, thinking=thinking)
    assert wire["top_k"] == 5
    assert wire["thinking"] == thinking


def test_max_tokens_default_and_precedence() -> None:
    assert _build()["max_tokens"] == 1024
    assert _build(max_tokens=50)["max_tokens"] == 50
    assert _build(max_tokens=50, max_completion_tokens=70)["max_tokens"] == 70
    assert _provider(default_max_tokens=333).build_chat_request(_body(), "m", False).body.count(b'"max_tokens":333')
    with pytest.raises(InvalidRequest, match="max_tokens"):
        _build(max_tokens=0)


# -- tools --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "problem"),
    [
        ({"type": "string"}, "top level"),
        ({"type": "object", "properties": {"a": {"type": "strng"}}}, "invalid `parameters` schema"),
        ("not a schema", "JSON schema object"),
    ],
)
def test_malformed_tool_schema_is_refused_naming_the_tool(parameters: Any, problem: str) -> None:
    tool = {"type": "function", "function": {"name": "broken_tool", "parameters": parameters}}
    with pytest.raises(InvalidRequest) as info:
        _build(tools=[WEATHER_TOOL, tool])
    assert "tool `broken_tool`" in info.value.message
    assert problem in info.value.message
    assert info.value.param == "tools[1].function.parameters"


def test_bad_tool_name_and_non_function_tool_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="tool `get weather`"):
        _build(tools=[{"type": "function", "function": {"name": "get weather"}}])
    with pytest.raises(InvalidRequest, match="tool type `custom`"):
        _build(tools=[{"type": "custom", "custom": {"name": "x"}}])


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        (None, True, None),
    ],
)
def test_tool_choice_mapping(choice: Any, parallel: Any, expected: Any) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if choice is not None:
        fields["tool_choice"] = choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    assert _build(**fields).get("tool_choice") == expected


def test_tool_choice_without_tools_is_not_sent() -> None:
    assert "tool_choice" not in _build(tool_choice="auto")


def test_unknown_tool_choice_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="tool_choice"):
        _build(tools=[WEATHER_TOOL], tool_choice={"type": "allowed_tools", "allowed_tools": {}})


# -- messages -------------------------------------------------------------------------------------


def test_images_by_url_and_data_url() -> None:
    content = [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
    ]
    wire = _build(messages=[{"role": "user", "content": content}])
    assert wire["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
    ]


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}, "image/bmp"),
        ({"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}, r"http\(s\) URL"),
        ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "audio"),
        ({"type": "file", "file": {"file_id": "file-1"}}, "PDF"),
    ],
)
def test_inexpressible_content_parts_are_refused(part: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        _build(messages=[{"role": "user", "content": [part]}])
    assert info.value.param == "messages[0].content[0]"


def test_system_messages_anywhere_go_to_system_blocks_and_same_roles_merge() -> None:
    wire = _build(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": "Temp?"},
        ]
    )
    assert wire["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric units."}]
    assert wire["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "No."}]},
        {"role": "user", "content": "Temp?"},
    ]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "system", "content": "only a system prompt"}], "messages"),
        ([{"role": "function", "name": "f", "content": "x"}], "messages[0].role"),
        ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "[1]"}}]}],
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_malformed_conversation_is_refused_with_param(messages: list[Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _build(messages=messages)
    assert info.value.param == param


def test_stop_string_and_user() -> None:
    wire = _build(stop="END", user="u-1")
    assert wire["stop_sequences"] == ["END"]
    assert wire["metadata"] == {"user_id": "u-1"}


# -- response -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
    ],
)
def test_stop_reason_mapping(reason: str | None, finish: str) -> None:
    assert map_stop_reason(reason) == finish


def test_usage_counts_cache_reads_writes_and_thinking() -> None:
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "thinking", "thinking": "...", "signature": "s"}, {"type": "text", "text": "Hi"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 200,
            "cache_creation_input_tokens": 30,
            "output_tokens": 50,
            "output_tokens_details": {"thinking_tokens": 40},
        },
    }
    response, usage = _provider().parse_chat_response(WireResponse(200, orjson.dumps(body)), "m")
    assert response["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (240, 200, 30)
    assert (usage.output_tokens, usage.reasoning_tokens) == (50, 40)
    assert response["usage"]["prompt_tokens"] == 240
    assert response["usage"]["prompt_tokens_details"] == {"cached_tokens": 200}
    assert isinstance(response["created"], int)


def test_response_without_content_or_not_json_is_an_upstream_error() -> None:
    provider = _provider()
    with pytest.raises(UpstreamError, match="without `content`"):
        provider.parse_chat_response(WireResponse(200, b'{"id": "msg_1"}'), "m")
    with pytest.raises(UpstreamError, match="not JSON"):
        provider.parse_chat_response(WireResponse(200, b"<html>"), "m")


# -- errors ---------------------------------------------------------------------------------------


def _error_body(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


@pytest.mark.parametrize(
    ("status", "kind", "error", "mapped_status", "retryable"),
    [
        (403, "permission_error", UpstreamError, 502, True),
        (404, "not_found_error", UpstreamCallerError, 404, False),
        (413, "request_too_large", UpstreamCallerError, 413, False),
        (500, "api_error", UpstreamError, 502, True),
        (529, "overloaded_error", UpstreamUnavailable, 503, True),
    ],
)
def test_http_error_mapping(
    status: int, kind: str, error: type[GatewayError], mapped_status: int, retryable: bool
) -> None:
    err = _provider().map_error(WireResponse(status, _error_body(kind, "went wrong")))
    assert type(err) is error
    assert (err.status, err.retryable) == (mapped_status, retryable)
    assert "went wrong" in err.message


def test_prompt_too_long_is_a_context_window_error() -> None:
    body = _error_body("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")
    err = _provider().map_error(WireResponse(400, body))
    assert isinstance(err, ContextWindowExceeded)
    assert err.code == "context_length_exceeded"


def test_error_without_json_body_keeps_the_text() -> None:
    err = _provider().map_error(WireResponse(502, b"Bad Gateway"))
    assert isinstance(err, UpstreamError)
    assert "Bad Gateway" in err.message


# -- stream ---------------------------------------------------------------------------------------


def test_midstream_overloaded_error_raises_after_the_content_so_far() -> None:
    folder = GOLDEN / "stream_error_overloaded_midstream"
    expected = json.loads((folder / "expected.json").read_text())
    parser = _provider().new_stream_parser("m", {})
    chunks: list[dict[str, Any]] = []
    with pytest.raises(GatewayError) as info:
        for event in _events((folder / "wire_stream.sse").read_bytes()):
            chunks.extend(parser.feed(event))
    assert len(chunks) == expected["chunks_before_error"]
    assert type(info.value).__name__ == expected["error"]
    assert info.value.status == expected["status"]
    assert info.value.retryable is expected["retryable"]
    assert expected["message_contains"] in info.value.message
    assert parser.done is False


@pytest.mark.parametrize(
    ("kind", "error", "status"),
    [
        ("rate_limit_error", UpstreamRateLimited, 429),
        ("api_error", UpstreamError, 502),
        ("invalid_request_error", UpstreamCallerError, 400),
        ("overloaded_error", UpstreamUnavailable, 503),
    ],
)
def test_stream_error_types_map_like_their_http_status(kind: str, error: type[GatewayError], status: int) -> None:
    parser = AnthropicStreamParser("claude", "m")
    with pytest.raises(error) as info:
        parser.feed(_event("error", error={"type": kind, "message": "boom"}))
    assert info.value.status == status


def test_tool_indexes_count_tool_blocks_only_and_ids_are_stable() -> None:
    parser = AnthropicStreamParser("claude", "requested-model")
    events = [
        _event("message_start", message={"id": "msg_9", "model": "claude-x", "usage": {"input_tokens": 5}}),
        _event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        _event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Checking."}),
        _event("content_block_stop", index=0),
        _event(
            "content_block_start", index=1, content_block={"type": "tool_use", "id": "t1", "name": "a", "input": {}}
        ),
        _event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": ""}),
        _event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": "{}"}),
        _event("content_block_stop", index=1),
        _event("ping"),
        _event("some_future_event", anything=1),
        _event(
            "content_block_start", index=2, content_block={"type": "tool_use", "id": "t2", "name": "b", "input": {}}
        ),
        _event("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": '{"x": 1}'}),
        _event("content_block_stop", index=2),
        _event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 30}),
        _event("message_stop"),
    ]
    chunks = [c for e in events for c in parser.feed(e)]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert {c["id"] for c in chunks} == {"msg_9"}
    assert len({c["created"] for c in chunks}) == 1
    assert {c["model"] for c in chunks} == {"claude-x"}
    calls = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(d["index"], d.get("id")) for d in calls if "id" in d] == [(0, "t1"), (1, "t2")]
    assert [(d["index"], d["function"]["arguments"]) for d in calls if "id" not in d] == [(0, "{}"), (1, '{"x": 1}')]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
    assert parser.done
    assert parser.usage is not None
    assert (parser.usage.input_tokens, parser.usage.output_tokens) == (5, 30)


def test_message_delta_repeated_counters_replace_the_start_figures() -> None:
    parser = AnthropicStreamParser("claude", "m")
    start_usage = {"input_tokens": 10, "cache_read_input_tokens": 0, "output_tokens": 1}
    parser.feed(_event("message_start", message={"id": "msg_1", "usage": start_usage}))
    delta_usage = {
        "input_tokens": 10,
        "cache_read_input_tokens": 90,
        "cache_creation_input_tokens": 5,
        "output_tokens": 12,
    }
    parser.feed(_event("message_delta", delta={"stop_reason": "end_turn"}, usage=delta_usage))
    assert parser.usage is not None
    assert (parser.usage.input_tokens, parser.usage.cached_input_tokens, parser.usage.cache_write_tokens) == (
        105,
        90,
        5,
    )
    assert parser.usage.output_tokens == 12


def test_stream_event_that_is_not_json_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="not JSON"):
        AnthropicStreamParser("claude", "m").feed(SSEEvent(b"{oops", "message_start"))


# -- pass-through ---------------------------------------------------------------------------------


def test_relay_forwards_every_event_untouched_and_tracks_usage() -> None:
    raw = (GOLDEN / "stream_tool_use_recorded" / "wire_stream.sse").read_bytes()
    parser = _provider().new_stream_parser("m", {})
    events = _events(raw)
    forwarded = [parser.relay(e, include_usage=False) for e in events]
    assert forwarded == events
    assert all(a is b for a, b in zip(forwarded, events, strict=True))
    assert parser.done
    assert parser.usage is not None
    assert (parser.usage.input_tokens, parser.usage.output_tokens) == (656, 74)


def test_relay_without_event_names_reads_the_type_from_data() -> None:
    parser = AnthropicStreamParser("claude", "m")
    parser.relay(SSEEvent(b'{"type":"message_start","message":{"usage":{"input_tokens":3}}}'), True)
    parser.relay(SSEEvent(b'{"type":"message_stop"}'), True)
    assert parser.done
    assert parser.usage is not None
    assert parser.usage.input_tokens == 3


def test_relay_raises_on_an_error_event_instead_of_forwarding_it() -> None:
    parser = AnthropicStreamParser("claude", "m")
    with pytest.raises(UpstreamUnavailable):
        parser.relay(_event("error", error={"type": "overloaded_error", "message": "Overloaded"}), True)
    assert parser.done is False


def test_native_request_replaces_only_the_model() -> None:
    native = {
        "model": "alias",
        "max_tokens": 10,
        "top_k": 3,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}
        ],
    }
    provider = _provider()
    wire = provider.build_native_request(native, "claude-sonnet-4-5", stream=True)
    assert orjson.loads(wire.body) == {**native, "model": "claude-sonnet-4-5", "stream": True}
    assert wire.url == "https://api.anthropic.com/v1/messages"
    assert wire.headers["x-api-key"] == "sk-ant-test"
    plain = orjson.loads(provider.build_native_request({**native, "stream": True}, "m", stream=False).body)
    assert "stream" not in plain


def test_native_response_usage() -> None:
    raw = (GOLDEN / "chat_full_request" / "wire_response.json").read_bytes()
    usage = _provider().parse_native_response(WireResponse(200, raw))
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens, usage.output_tokens) == (
        1855,
        1536,
        256,
        31,
    )


def test_pipeline_stream_relay_passes_events_through_and_settles_provider_usage() -> None:
    raw = (GOLDEN / "stream_tool_use" / "wire_stream.sse").read_bytes()
    provider = _provider()
    ctx = RequestContext(request_id="r1", surface="messages", token=None, body=_body(), wire="anthropic")
    relay = StreamRelay(ctx, lambda: provider.new_stream_parser("m", ctx.body), passthrough=True)
    events = _events(raw)
    forwarded = [item for event in events for item in relay.feed(event)] + relay.end()
    assert forwarded == events
    usage = relay.usage()
    assert (usage.input_tokens, usage.output_tokens, usage.estimated) == (472, 89, False)


def test_tool_call_without_input_closes_with_empty_object_arguments() -> None:
    parser = AnthropicStreamParser("claude", "m")
    events = [
        _event("message_start", message={"id": "msg_1", "usage": {"input_tokens": 1}}),
        _event(
            "content_block_start", index=0, content_block={"type": "tool_use", "id": "t", "name": "now", "input": {}}
        ),
        _event("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": ""}),
        _event("content_block_stop", index=0),
        _event(
            "content_block_start",
            index=1,
            content_block={"type": "tool_use", "id": "u", "name": "f", "input": {"a": 1}},
        ),
        _event("content_block_stop", index=1),
    ]
    calls = [d for e in events for c in parser.feed(e) for d in c["choices"][0]["delta"].get("tool_calls", [])]
    arguments: dict[int, str] = {}
    for call in calls:
        arguments[call["index"]] = arguments.get(call["index"], "") + call["function"]["arguments"]
    assert arguments == {0: "{}", 1: '{"a":1}'}


def test_native_request_forwards_the_callers_beta_features() -> None:
    body = {"model": "a", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    wire = _provider().build_native_request(body, "m", stream=False, beta="context-1m-2025-08-07")
    assert wire.headers["anthropic-beta"] == "context-1m-2025-08-07"
    configured = _provider(headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    wire = configured.build_native_request(body, "m", stream=False, beta="context-1m-2025-08-07")
    assert wire.headers["anthropic-beta"] == "prompt-caching-2024-07-31,context-1m-2025-08-07"
    assert configured.build_native_request(body, "m", stream=False).headers["anthropic-beta"] == (
        "prompt-caching-2024-07-31"
    )
