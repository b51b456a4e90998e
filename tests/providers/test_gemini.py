"""Gemini translation beyond the golden cases: request mapping, bad input, finish reasons, streams, errors."""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import respx

from llmgate.config import ProviderSettings, Timeouts
from llmgate.errors import (
    ContextWindowExceeded,
    InvalidRequest,
    UpstreamCallerError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from llmgate.upstream import UpstreamClient
from providers.base import WireResponse
from providers.gemini import (
    SKIP_SIGNATURE,
    GeminiProvider,
    GeminiStreamParser,
    build_embed_request,
    build_generate_body,
    map_finish_reason,
    map_gemini_error,
    parse_embed_response,
    parse_generate_response,
    parse_usage,
)
from providers.sse import SSEDecoder
from tests.harness import FakeUpstream, GatewayServer, Received, json_response, make_settings, sse_response

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "gemini"
TIMEOUTS = Timeouts(connect=1, first_byte=2, total=5)

MODEL = "gemini-2.5-flash"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": "g", "messages": [_user("hi")], **fields}


def _tool_turns(result: str) -> list[dict[str, Any]]:
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    return [
        _user("weather?"),
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]


# -- request ------------------------------------------------------------------


def test_generation_fields_are_mapped() -> None:
    body = _body(
        temperature=0.3, top_p=0.9, n=2, seed=7, presence_penalty=0.5, frequency_penalty=0.25,
        max_tokens=50, max_completion_tokens=70, stop="END", logprobs=True, top_logprobs=3,
    )  # fmt: skip
    config = build_generate_body(body, MODEL)["generationConfig"]
    assert config == {
        "temperature": 0.3,
        "topP": 0.9,
        "candidateCount": 2,
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": 0.25,
        "maxOutputTokens": 70,
        "stopSequences": ["END"],
        "responseLogprobs": True,
        "logprobs": 3,
    }


def test_system_and_developer_messages_become_system_instruction_and_turns_merge() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        _user("one"),
        {"role": "developer", "content": [{"type": "text", "text": "Use English."}]},
        _user([{"type": "text", "text": "two"}]),
    ]
    out = build_generate_body({"messages": messages}, MODEL)
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use English."}]}
    assert out["contents"] == [{"role": "user", "parts": [{"text": "one"}, {"text": "two"}]}]


def test_images_data_url_inline_and_http_url_as_file_data() -> None:
    content = [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?size=big"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/render?id=3"}},
    ]
    parts = build_generate_body({"messages": [_user(content)]}, MODEL)["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    assert parts[2] == {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?size=big"}}
    assert parts[3] == {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/render?id=3"}}


def test_image_that_is_not_base64_data_url_is_refused() -> None:
    content = [{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]
    with pytest.raises(InvalidRequest) as info:
        build_generate_body({"messages": [_user(content)]}, MODEL)
    assert info.value.param == "messages[0].content[0].image_url.url"


def test_tool_call_and_result_round_trip_with_name_lookup() -> None:
    contents = build_generate_body({"messages": _tool_turns('{"temp": 21}')}, MODEL)["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [{"text": "Let me check."}, {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "weather", "response": {"temp": 21}}}],
    }


@pytest.mark.parametrize(
    ("result", "response"),
    [("sunny", {"content": "sunny"}), ("[1, 2]", {"content": [1, 2]}), ("", {"content": ""})],
)
def test_tool_result_that_is_not_a_json_object_is_wrapped(result: str, response: dict[str, Any]) -> None:
    contents = build_generate_body({"messages": _tool_turns(result)}, MODEL)["contents"]
    assert contents[2]["parts"][0]["functionResponse"]["response"] == response


def test_tool_result_for_unknown_call_id_names_the_field() -> None:
    messages = [*_tool_turns("ok")[:2], {"role": "tool", "tool_call_id": "call_zzz", "content": "ok"}]
    with pytest.raises(InvalidRequest) as info:
        build_generate_body({"messages": messages}, MODEL)
    assert info.value.param == "messages[2].tool_call_id"


def test_invalid_tool_call_arguments_are_refused() -> None:
    messages = _tool_turns("ok")
    messages[1]["tool_calls"][0]["function"]["arguments"] = "{not json"
    with pytest.raises(InvalidRequest) as info:
        build_generate_body({"messages": messages}, MODEL)
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_gemini_3_history_without_signature_gets_the_documented_placeholder() -> None:
    contents = build_generate_body({"messages": _tool_turns("ok")}, "gemini-3-pro-preview")["contents"]
    assert contents[1]["parts"][1]["thoughtSignature"] == SKIP_SIGNATURE
    older = build_generate_body({"messages": _tool_turns("ok")}, "gemini-2.5-pro")["contents"]
    assert "thoughtSignature" not in older[1]["parts"][1]


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"functionCallingConfig": {"mode": "AUTO"}}),
        ("none", {"functionCallingConfig": {"mode": "NONE"}}),
        ("required", {"functionCallingConfig": {"mode": "ANY"}}),
        (
            {"type": "function", "function": {"name": "weather"}},
            {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}},
        ),
    ],
)
def test_tool_choice_modes(choice: Any, config: dict[str, Any]) -> None:
    assert build_generate_body(_body(tools=[WEATHER_TOOL], tool_choice=choice), MODEL)["toolConfig"] == config


def test_tool_choice_naming_an_undeclared_function_is_refused() -> None:
    choice = {"type": "function", "function": {"name": "stocks"}}
    with pytest.raises(InvalidRequest, match="stocks"):
        build_generate_body(_body(tools=[WEATHER_TOOL], tool_choice=choice), MODEL)


def test_required_tool_choice_without_tools_is_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        build_generate_body(_body(tool_choice="required"), MODEL)
    assert info.value.param == "tool_choice"


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"type": "function", "function": {"name": "bad name!"}}, "tools[0].function.name"),
        (
            {"type": "function", "function": {"name": "ok", "parameters": {"type": "string"}}},
            "tools[0].function.parameters",
        ),
        ({"type": "web_search"}, "tools[0]"),
    ],
)
def test_malformed_tools_are_refused_naming_the_tool(tool: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        build_generate_body(_body(tools=[tool]), MODEL)
    assert info.value.param == param


@pytest.mark.parametrize("field", ["logit_bias", "functions", "audio", "prediction", "web_search_options"])
def test_fields_gemini_cannot_express_are_refused_by_name(field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        build_generate_body(_body(**{field: {"x": 1}}), MODEL)
    assert info.value.param == field
    assert "Gemini" in info.value.message


def test_parallel_tool_calls_false_is_refused_but_true_is_fine() -> None:
    assert "generationConfig" not in build_generate_body(_body(parallel_tool_calls=True), MODEL)
    with pytest.raises(InvalidRequest):
        build_generate_body(_body(parallel_tool_calls=False), MODEL)


def test_json_object_and_reasoning_effort() -> None:
    body = _body(response_format={"type": "json_object"}, reasoning_effort="low")
    assert build_generate_body(body, MODEL)["generationConfig"] == {
        "responseMimeType": "application/json",
        "thinkingConfig": {"thinkingBudget": 1024},
    }
    config = build_generate_body(body, "gemini-3-flash-preview")["generationConfig"]
    assert config["thinkingConfig"] == {"thinkingLevel": "low"}


def test_unknown_role_is_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        build_generate_body({"messages": [{"role": "function", "content": "x"}]}, MODEL)
    assert info.value.param == "messages[0].role"


# -- response -----------------------------------------------------------------


def _parse(data: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    return parse_generate_response(data, MODEL, "resp-1")


@pytest.mark.parametrize(
    ("reason", "tools", "expected"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", True, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("LANGUAGE", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        ("OTHER", False, "stop"),
        (None, False, None),
    ],
)
def test_finish_reasons(reason: str | None, tools: bool, expected: str | None) -> None:
    assert map_finish_reason(reason, tools) == expected


def test_blocked_prompt_is_an_empty_content_filtered_answer() -> None:
    response, usage = _parse({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 8}})
    assert response["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "content_filter"}
    ]
    assert usage.input_tokens == 8


def test_response_without_candidates_or_block_reason_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        _parse({"usageMetadata": {}})


def test_thought_parts_are_skipped_and_candidates_become_choices() -> None:
    data = {
        "candidates": [
            {"content": {"parts": [{"text": "plan...", "thought": True}, {"text": "A"}]}, "finishReason": "STOP"},
            {"index": 1, "content": {"parts": [{"text": "B"}]}, "finishReason": "MAX_TOKENS"},
        ]
    }
    choices = _parse(data)[0]["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "A", "stop"),
        (1, "B", "length"),
    ]


def test_tool_call_ids_are_stable_and_distinct() -> None:
    part = {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}
    data = {"candidates": [{"content": {"parts": [part, part]}, "finishReason": "STOP"}]}
    first = _parse(data)[0]["choices"][0]["message"]["tool_calls"]
    again = _parse(data)[0]["choices"][0]["message"]["tool_calls"]
    assert [c["id"] for c in first] == [c["id"] for c in again]
    assert first[0]["id"] != first[1]["id"]
    assert all(c["id"].startswith("call_") for c in first)


def test_usage_counts_tool_prompt_and_thoughts_and_missing_keys_as_zero() -> None:
    usage = parse_usage({"promptTokenCount": 10, "toolUsePromptTokenCount": 4, "thoughtsTokenCount": 6})
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens, usage.cached_input_tokens) == (14, 6, 6, 0)


def test_logprobs_are_translated() -> None:
    candidate = {
        "content": {"parts": [{"text": "Hi"}]},
        "finishReason": "STOP",
        "logprobsResult": {
            "chosenCandidates": [{"token": "Hi", "logProbability": -0.1}],
            "topCandidates": [
                {"candidates": [{"token": "Hi", "logProbability": -0.1}, {"token": "Yo", "logProbability": -2.5}]}
            ],
        },
    }
    logprobs = _parse({"candidates": [candidate]})[0]["choices"][0]["logprobs"]
    assert logprobs["content"][0]["token"] == "Hi"
    assert logprobs["content"][0]["logprob"] == -0.1
    assert [t["token"] for t in logprobs["content"][0]["top_logprobs"]] == ["Hi", "Yo"]


# -- stream -------------------------------------------------------------------


def _events(raw: bytes, split: int) -> list[Any]:
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(raw), split):
        events.extend(decoder.feed(raw[i : i + split]))
    return events + decoder.close()


def _sse(*payloads: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(p) + b"\r\n\r\n" for p in payloads)


def test_stream_with_crlf_in_small_reads_and_text_with_finish_in_one_event() -> None:
    raw = _sse(
        {"candidates": [{"content": {"parts": [{"text": "Hel"}]}}], "responseId": "r1"},
        {
            "candidates": [{"content": {"parts": [{"text": "lo"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2},
        },
    )
    parser = GeminiStreamParser("g", MODEL)
    chunks = [c for e in _events(raw, 7) for c in parser.feed(e)]
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks]
    assert deltas == [({"role": "assistant", "content": "Hel"}, None), ({"content": "lo"}, None), ({}, "stop")]
    assert parser.done
    assert parser.usage is not None and (parser.usage.input_tokens, parser.usage.output_tokens) == (3, 2)
    assert {c["id"] for c in chunks} == {"chatcmpl-r1"}


def test_stream_without_finish_reason_is_not_done() -> None:
    parser = GeminiStreamParser("g", MODEL)
    for event in _events(_sse({"candidates": [{"content": {"parts": [{"text": "cut"}]}}]}), 1000):
        parser.feed(event)
    assert not parser.done


def test_stream_tool_calls_count_their_index_across_events() -> None:
    call = {"functionCall": {"name": "weather", "args": {}}}
    raw = _sse(
        {"candidates": [{"content": {"parts": [call]}}]},
        {"candidates": [{"content": {"parts": [call]}, "finishReason": "STOP"}]},
    )
    parser = GeminiStreamParser("g", MODEL)
    chunks = [c for e in _events(raw, 1000) for c in parser.feed(e)]
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [tc["index"] for tc in calls] == [0, 1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_blocked_prompt_and_error_event() -> None:
    parser = GeminiStreamParser("g", MODEL)
    chunks = [c for e in _events(_sse({"promptFeedback": {"blockReason": "OTHER"}}), 1000) for c in parser.feed(e)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter" and parser.done
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    with pytest.raises(UpstreamUnavailable):
        GeminiStreamParser("g", MODEL).feed(_events(_sse(error), 1000)[0])


# -- errors -------------------------------------------------------------------


def _error(status: int, message: str, status_name: str, **extra: Any) -> WireResponse:
    body = {"error": {"code": status, "message": message, "status": status_name, **extra}}
    return WireResponse(status, orjson.dumps(body), {})


def test_error_statuses() -> None:
    assert isinstance(map_gemini_error("g", _error(404, "models/x is not found", "NOT_FOUND")), UpstreamCallerError)
    assert map_gemini_error("g", _error(403, "denied", "PERMISSION_DENIED")).status == 502
    assert isinstance(map_gemini_error("g", _error(503, "overloaded", "UNAVAILABLE")), UpstreamUnavailable)
    assert isinstance(map_gemini_error("g", _error(504, "deadline", "DEADLINE_EXCEEDED")), UpstreamTimeout)
    internal = map_gemini_error("g", _error(500, "oops", "INTERNAL"))
    assert internal.status == 502 and internal.retryable


def test_context_window_error_and_array_wrapped_body() -> None:
    message = "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
    assert isinstance(map_gemini_error("g", _error(400, message, "INVALID_ARGUMENT")), ContextWindowExceeded)
    wrapped = WireResponse(429, b'[{"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}]')
    err = map_gemini_error("g", wrapped)
    assert err.status == 429 and "slow down" in err.message and err.retry_after is None


def test_retry_after_header_and_non_json_body() -> None:
    err = map_gemini_error("g", WireResponse(429, b"<html>busy</html>", {"retry-after": "3"}))
    assert err.retry_after == 3.0 and "busy" in err.message


# -- embeddings ---------------------------------------------------------------


def test_embeddings_base64_is_float32_little_endian() -> None:
    body = {"input": "hi", "encoding_format": "base64"}
    response, usage = parse_embed_response({"embedding": {"values": [0.5, -1.25]}}, "text-embedding-004", body)
    raw = base64.b64decode(response["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -1.25)
    assert usage.estimated and usage.input_tokens == response["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [1, 2, 3]}, "input"),
        ({"input": "x", "task": "y"}, "task"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_embeddings_bad_input(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        build_embed_request(body, "gemini-embedding-001")
    assert info.value.param == param


# -- adapter ------------------------------------------------------------------


def test_adapter_urls_and_auth_never_put_the_key_in_the_url() -> None:
    settings = ProviderSettings(type="gemini", api_key="AIza-secret", base_url="https://proxy.example/v1beta/")
    adapter = GeminiProvider("g", settings)
    wire = adapter.build_chat_request(_body(), "models/gemini-2.5-pro", stream=True)
    assert wire.url == "https://proxy.example/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert "AIza-secret" not in wire.url and wire.headers["x-goog-api-key"] == "AIza-secret"
    bearer = GeminiProvider("g", ProviderSettings(type="gemini", api_key="tok", auth_style="bearer"))
    assert bearer.headers["authorization"] == "Bearer tok" and "x-goog-api-key" not in bearer.headers
    assert bearer.build_embeddings_request({"input": ["a"]}, "text-embedding-004").url.endswith(
        "/v1beta/models/text-embedding-004:batchEmbedContents"
    )


async def test_through_the_shared_client_text_stream_and_quota_error() -> None:
    adapter = GeminiProvider("g", ProviderSettings(type="gemini", api_key="AIza-k"))
    model = "gemini-3-pro-preview"
    stream_url = adapter.model_url(model, "streamGenerateContent?alt=sse")
    quota = (GOLDEN / "error_429_resource_exhausted" / "wire_response.json").read_bytes()
    client = UpstreamClient(transport=httpx.AsyncHTTPTransport())
    try:
        with respx.mock(using="httpx") as mock:
            route = mock.post(stream_url).respond(
                200,
                content=(GOLDEN / "stream_text" / "wire_stream.sse").read_bytes(),
                headers={"content-type": "text/event-stream"},
            )
            wire = adapter.build_chat_request(_body(stream=True), model, stream=True)
            parser = adapter.new_stream_parser(model, {})
            chunks = []
            async with adapter.open_stream(client, wire, TIMEOUTS) as events:
                async for event in events:
                    chunks.extend(parser.feed(event))
            sent = route.calls.last.request
            assert sent.headers["x-goog-api-key"] == "AIza-k" and "key=" not in str(sent.url)
            assert parser.done and parser.usage is not None and parser.usage.output_tokens == 208
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
            assert text == 'There are **3** "r"s in strawberry.\n\nst**r**awbe**rr**y'
            route.respond(429, content=quota)
            with pytest.raises(UpstreamRateLimited) as info:
                async with adapter.open_stream(client, wire, TIMEOUTS):
                    pass
            assert info.value.retry_after == 34.4 and info.value.headers["retry-after"] == "35"
    finally:
        await client.aclose()


# -- end to end: the real openai SDK -> gateway -> a fake Gemini upstream ----------------------------------


def test_openai_sdk_tool_round_trip_stream_and_embeddings_through_the_gateway() -> None:
    call_reply = (GOLDEN / "chat_function_call" / "wire_response.json").read_bytes()
    text_reply = (GOLDEN / "chat_thought_signature_roundtrip" / "wire_response.json").read_bytes()
    stream_reply = (GOLDEN / "stream_text" / "wire_stream.sse").read_bytes()
    embed_reply = (GOLDEN / "batch_embed_contents" / "wire_response.json").read_bytes()

    def script(request: Received) -> list[Any]:
        if request.path.endswith(":streamGenerateContent?alt=sse"):
            return sse_response([stream_reply])
        if request.path.endswith(":batchEmbedContents"):
            return json_response(orjson.loads(embed_reply))
        first_turn = len(request.json()["contents"]) == 1
        return json_response(orjson.loads(call_reply if first_turn else text_reply))

    doc = {
        "gateway": {"master_key": "sk-master"},
        "providers": {"g": {"type": "gemini", "base_url": "", "api_key": "AIza-upstream"}},
        "models": [
            {"name": "gem", "provider": "g", "upstream": "gemini-3-pro-preview"},
            {"name": "gem-embed", "provider": "g", "upstream": "gemini-embedding-001", "mode": "embedding"},
        ],
    }
    with FakeUpstream(script) as upstream:
        doc["providers"]["g"]["base_url"] = upstream.url
        with GatewayServer(make_settings(doc)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-master", max_retries=0)
            messages: list[Any] = [{"role": "user", "content": "What is the weather in San Francisco?"}]
            tools: list[Any] = [WEATHER_TOOL]
            first = client.chat.completions.create(model="gem", messages=messages, tools=tools)
            assert first.choices[0].finish_reason == "tool_calls"
            call = first.choices[0].message.tool_calls[0]
            assert orjson.loads(call.function.arguments) == {"location": "San Francisco"}
            messages += [first.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
            second = client.chat.completions.create(model="gem", messages=messages, tools=tools)
            assert second.choices[0].message.content.startswith("There are **3**")
            sent = upstream.requests[-1]
            assert sent.path == "/v1beta/models/gemini-3-pro-preview:generateContent"
            assert sent.headers["x-goog-api-key"] == "AIza-upstream"
            signature = orjson.loads(call_reply)["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
            model_turn = sent.json()["contents"][1]
            assert model_turn["parts"][0]["thoughtSignature"] == signature, "the SDK carried the signature back"
            assert sent.json()["contents"][2]["parts"][0]["functionResponse"]["name"] == "weather"

            chunks = list(
                client.chat.completions.create(
                    model="gem", messages=messages[:1], stream=True, stream_options={"include_usage": True}
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text.startswith("There are **3**") and chunks[0].choices[0].delta.role == "assistant"
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 208

            embeddings = client.embeddings.create(model="gem-embed", input=["a", "b", "c"])
            assert [len(e.embedding) for e in embeddings.data] == [5, 5, 5]
