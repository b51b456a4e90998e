"""One conformance suite for every registered provider: plain, streamed, tool call, 401/429/5xx mapping.

Each provider runs through its own `send` / `open_stream` over the shared UpstreamClient, with respx as the
transport, and must give the same canonical result: the text "Hello from upstream" with usage 11 in / 7 out,
a `get_weather` call with arguments {"city": "Paris"}, and the same gateway error for each upstream status.

Adding a provider type:
1. If it speaks a wire format not listed below (OPENAI_WIRE, ANTHROPIC_WIRE, GEMINI_WIRE), add a `WireFormat`:
   the upstream's answers for those outcomes (text body, tool-call body, text stream, tool-call stream) and its
   error body for a status (with whatever carries a 429's retry delay of 7 seconds: header or body).
2. Add one `Scenario` to SCENARIOS: ProviderSettings fields, the upstream model, the URLs a plain and a
   streaming call must reach, the auth header expected on the request, and its WireFormat.
A provider that does no HTTP goes into IN_PROCESS with the reason instead; it gets its own test below.
`test_every_registered_provider_is_covered` fails until a new type is in one of the two.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import respx

from llmgate.config import ProviderSettings, Timeouts
from llmgate.errors import GatewayError, UpstreamError, UpstreamRateLimited, UpstreamUnavailable
from llmgate.types import Usage
from llmgate.upstream import UpstreamClient
from providers import PROVIDER_TYPES, provider_class
from providers.base import Provider
from providers.sse import encode_event

TEXT = "Hello from upstream"
TEXT_PIECES = ("Hello", " from upstream")
INPUT_TOKENS, OUTPUT_TOKENS = 11, 7
TOOL_NAME, TOOL_ARGS = "get_weather", {"city": "Paris"}
TIMEOUTS = Timeouts(connect=1, first_byte=2, total=5)

TEXT_REQUEST: dict[str, Any] = {
    "model": "public-model",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
    "max_tokens": 50,
}
TOOL_REQUEST: dict[str, Any] = {
    **TEXT_REQUEST,
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": TOOL_NAME,
                "description": "Current weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ],
    "tool_choice": "required",
}
STREAM = {"stream": True, "stream_options": {"include_usage": True}}


@dataclass(frozen=True)
class WireFormat:
    """One upstream wire format's answers for the suite's outcomes."""

    text_body: bytes
    tool_body: bytes
    text_stream: bytes
    tool_stream: bytes
    error: Callable[[int], tuple[bytes, dict[str, str]]]  # status -> (body, headers)


@dataclass(frozen=True)
class Scenario:
    settings: dict[str, Any]
    upstream_model: str
    chat_url: str
    stream_url: str
    auth_header: tuple[str, str]
    wire: WireFormat
    stream_headers: dict[str, str] = field(default_factory=lambda: {"content-type": "text/event-stream"})


# -- OpenAI chat completions (openai, azure, every OpenAI-compatible server) ------------------------------


def _openai_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}


def _openai_stream(deltas: list[dict[str, Any]], finish: str) -> bytes:
    usage = {"prompt_tokens": INPUT_TOKENS, "completion_tokens": OUTPUT_TOKENS, "total_tokens": 18}
    chunks = [_openai_chunk({"role": "assistant", "content": ""})]
    chunks += [_openai_chunk(d) for d in deltas]
    chunks.append(_openai_chunk({}, finish))
    chunks.append({**_openai_chunk({}), "choices": [], "usage": usage})
    return b"".join(encode_event(orjson.dumps(c)) for c in chunks) + b"data: [DONE]\n\n"


def _openai_body(message: dict[str, Any], finish: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": {"prompt_tokens": INPUT_TOKENS, "completion_tokens": OUTPUT_TOKENS, "total_tokens": 18},
        }
    )


def _openai_error(status: int) -> tuple[bytes, dict[str, str]]:
    kind = {401: "invalid_request_error", 429: "requests"}.get(status, "server_error")
    body = orjson.dumps({"error": {"message": f"upstream says {status}", "type": kind, "param": None, "code": None}})
    return body, {"retry-after": "7"} if status == 429 else {}


_OPENAI_CALL = {"id": "call_1", "type": "function", "function": {"name": TOOL_NAME, "arguments": '{"city":"Paris"}'}}
OPENAI_WIRE = WireFormat(
    text_body=_openai_body({"content": TEXT}, "stop"),
    tool_body=_openai_body({"content": None, "tool_calls": [_OPENAI_CALL]}, "tool_calls"),
    text_stream=_openai_stream([{"content": p} for p in TEXT_PIECES], "stop"),
    tool_stream=_openai_stream(
        [
            {
                "tool_calls": [
                    {"index": 0, "id": "call_1", "type": "function", "function": {"name": TOOL_NAME, "arguments": ""}}
                ]
            },
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        ],
        "tool_calls",
    ),
    error=_openai_error,
)


# -- Anthropic Messages ---------------------------------------------------------------------------------


def _anthropic_event(kind: str, **payload: Any) -> bytes:
    return encode_event(orjson.dumps({"type": kind, **payload}), kind)


def _anthropic_stream(block: dict[str, Any], deltas: list[dict[str, Any]], stop_reason: str) -> bytes:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
    }
    return b"".join(
        [
            _anthropic_event("message_start", message=message),
            _anthropic_event("content_block_start", index=0, content_block=block),
            _anthropic_event("ping"),
            *(_anthropic_event("content_block_delta", index=0, delta=d) for d in deltas),
            _anthropic_event("content_block_stop", index=0),
            _anthropic_event(
                "message_delta",
                delta={"stop_reason": stop_reason, "stop_sequence": None},
                usage={"output_tokens": OUTPUT_TOKENS},
            ),
            _anthropic_event("message_stop"),
        ]
    )


def _anthropic_body(content: list[dict[str, Any]], stop_reason: str) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
        }
    )


def _anthropic_error(status: int) -> tuple[bytes, dict[str, str]]:
    kind = {401: "authentication_error", 429: "rate_limit_error", 503: "overloaded_error"}.get(status, "api_error")
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": f"upstream says {status}"}})
    return body, {"retry-after": "7"} if status == 429 else {}


_TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": TOOL_NAME, "input": {}}
ANTHROPIC_WIRE = WireFormat(
    text_body=_anthropic_body([{"type": "text", "text": TEXT}], "end_turn"),
    tool_body=_anthropic_body([{**_TOOL_USE, "input": TOOL_ARGS}], "tool_use"),
    text_stream=_anthropic_stream(
        {"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in TEXT_PIECES], "end_turn"
    ),
    tool_stream=_anthropic_stream(
        _TOOL_USE,
        [{"type": "input_json_delta", "partial_json": p} for p in ("", '{"city":', ' "Paris"}')],
        "tool_use",
    ),
    error=_anthropic_error,
)


# -- Gemini generateContent ---------------------------------------------------------------------------


def _gemini_response(parts: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    usage = {"promptTokenCount": INPUT_TOKENS, "candidatesTokenCount": OUTPUT_TOKENS, "totalTokenCount": 18}
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash", "responseId": "r1"}


def _gemini_error(status: int) -> tuple[bytes, dict[str, str]]:
    name = {401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}.get(status, "INTERNAL")
    error: dict[str, Any] = {"code": status, "message": f"upstream says {status}", "status": name}
    if status == 429:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
    return orjson.dumps({"error": error}), {}


_GEMINI_CALL = {"functionCall": {"name": TOOL_NAME, "args": TOOL_ARGS}}
GEMINI_WIRE = WireFormat(
    text_body=orjson.dumps(_gemini_response([{"text": TEXT}], "STOP")),
    tool_body=orjson.dumps(_gemini_response([_GEMINI_CALL], "STOP")),
    text_stream=encode_event(orjson.dumps(_gemini_response([{"text": TEXT_PIECES[0]}], None)))
    + encode_event(orjson.dumps(_gemini_response([{"text": TEXT_PIECES[1]}], "STOP"))),
    tool_stream=encode_event(orjson.dumps(_gemini_response([_GEMINI_CALL], "STOP"))),
    error=_gemini_error,
)


# -- the registry of scenarios --------------------------------------------------------------------------

SCENARIOS: dict[str, Scenario] = {
    "openai": Scenario(
        settings={"base_url": "https://openai.test/v1"},
        upstream_model="gpt-4o-mini",
        chat_url="https://openai.test/v1/chat/completions",
        stream_url="https://openai.test/v1/chat/completions",
        auth_header=("authorization", "Bearer sk-conformance"),
        wire=OPENAI_WIRE,
    ),
    "azure": Scenario(
        settings={"base_url": "https://res.openai.azure.com", "api_version": "2024-10-21"},
        upstream_model="gpt4o-deployment",
        chat_url="https://res.openai.azure.com/openai/deployments/gpt4o-deployment/chat/completions?api-version=2024-10-21",
        stream_url="https://res.openai.azure.com/openai/deployments/gpt4o-deployment/chat/completions?api-version=2024-10-21",
        auth_header=("api-key", "sk-conformance"),
        wire=OPENAI_WIRE,
    ),
    "anthropic": Scenario(
        settings={"base_url": "https://anthropic.test"},
        upstream_model="claude-haiku-4-5",
        chat_url="https://anthropic.test/v1/messages",
        stream_url="https://anthropic.test/v1/messages",
        auth_header=("x-api-key", "sk-conformance"),
        wire=ANTHROPIC_WIRE,
    ),
    "gemini": Scenario(
        settings={"base_url": "https://gemini.test"},
        upstream_model="gemini-2.5-flash",
        chat_url="https://gemini.test/v1beta/models/gemini-2.5-flash:generateContent",
        stream_url="https://gemini.test/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        auth_header=("x-goog-api-key", "sk-conformance"),
        wire=GEMINI_WIRE,
    ),
}

# Providers that answer in-process (no HTTP, so no transport to mock and no upstream error to map).
IN_PROCESS: dict[str, str] = {"mock": "answers in-process without HTTP; see test_in_process_provider_*"}

REGISTERED = [t for t in PROVIDER_TYPES if importlib.util.find_spec(f"providers.{t}") is not None]
HTTP_TYPES = [t for t in REGISTERED if t not in IN_PROCESS]


def test_every_registered_provider_is_covered() -> None:
    missing = [t for t in REGISTERED if t not in SCENARIOS and t not in IN_PROCESS]
    assert not missing, f"add a Scenario (or an IN_PROCESS reason) for: {missing} (see this module's docstring)"


# -- the driver (what pipeline._attempt does, without routing) -------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient(transport=httpx.AsyncHTTPTransport())
    yield upstream
    await upstream.aclose()


def _setup(provider_type: str) -> tuple[Scenario, Provider]:
    scenario = SCENARIOS[provider_type]
    settings = ProviderSettings(type=provider_type, api_key="sk-conformance", **scenario.settings)
    return scenario, provider_class(provider_type)("conformance", settings)


async def _call(provider: Provider, client: UpstreamClient, body: dict[str, Any], model: str) -> tuple[Any, Usage]:
    wire = provider.build_chat_request(body, model, stream=False)
    response = await provider.send(client, wire, TIMEOUTS)
    if response.status >= 300:
        raise provider.map_error(response)
    return provider.parse_chat_response(response, model)


async def _stream(
    provider: Provider, client: UpstreamClient, body: dict[str, Any], model: str
) -> tuple[list[dict[str, Any]], Any]:
    wire = provider.build_chat_request(body, model, stream=True)
    parser = provider.new_stream_parser(model, body)
    chunks: list[dict[str, Any]] = []
    async with provider.open_stream(client, wire, TIMEOUTS) as events:
        async for event in events:
            chunks.extend(parser.feed(event))
    chunks.extend(parser.finish())
    return chunks, parser


def _check_stream_shape(chunks: list[dict[str, Any]], finish: str) -> list[dict[str, Any]]:
    """Role on the first chunk only, stable id, exactly one finish_reason (the last); returns the deltas."""
    assert chunks, "the stream produced no chunks"
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    assert deltas[0].get("role") == "assistant"
    assert all("role" not in d for d in deltas[1:])
    assert len({c["id"] for c in chunks}) == 1
    finishes = [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")]
    assert [f for f in finishes if f] == [finish]
    assert finishes[-1] == finish
    return deltas


def _arguments_by_index(deltas: list[dict[str, Any]]) -> dict[int, tuple[str, str]]:
    calls: dict[int, tuple[str, str]] = {}
    for delta in deltas:
        for call in delta.get("tool_calls") or ():
            name, args = calls.get(call["index"], ("", ""))
            fn = call.get("function") or {}
            calls[call["index"]] = (name or fn.get("name") or "", args + (fn.get("arguments") or ""))
    return calls


# -- scenarios --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider_type", HTTP_TYPES)
async def test_plain_text(provider_type: str, client: UpstreamClient) -> None:
    scenario, provider = _setup(provider_type)
    with respx.mock(using="httpx") as mock:
        route = mock.post(scenario.chat_url).respond(200, content=scenario.wire.text_body)
        response, usage = await _call(provider, client, TEXT_REQUEST, scenario.upstream_model)
    sent = route.calls.last.request
    assert sent.headers[scenario.auth_header[0]] == scenario.auth_header[1]
    assert "sk-conformance" not in sent.content.decode()
    choice = response["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == TEXT
    assert choice["finish_reason"] == "stop"
    assert (usage.input_tokens, usage.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)
    assert response["usage"]["prompt_tokens"] == INPUT_TOKENS


@pytest.mark.parametrize("provider_type", HTTP_TYPES)
async def test_streamed_text(provider_type: str, client: UpstreamClient) -> None:
    scenario, provider = _setup(provider_type)
    with respx.mock(using="httpx") as mock:
        mock.post(scenario.stream_url).respond(200, content=scenario.wire.text_stream, headers=scenario.stream_headers)
        chunks, parser = await _stream(provider, client, {**TEXT_REQUEST, **STREAM}, scenario.upstream_model)
    deltas = _check_stream_shape(chunks, "stop")
    assert "".join(d.get("content") or "" for d in deltas) == TEXT
    assert parser.done
    assert (parser.usage.input_tokens, parser.usage.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)


@pytest.mark.parametrize("provider_type", HTTP_TYPES)
async def test_tool_call(provider_type: str, client: UpstreamClient) -> None:
    scenario, provider = _setup(provider_type)
    with respx.mock(using="httpx") as mock:
        mock.post(scenario.chat_url).respond(200, content=scenario.wire.tool_body)
        response, _ = await _call(provider, client, TOOL_REQUEST, scenario.upstream_model)
    choice = response["choices"][0]
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"]
    assert call["function"]["name"] == TOOL_NAME
    assert json.loads(call["function"]["arguments"]) == TOOL_ARGS
    assert choice["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("provider_type", HTTP_TYPES)
async def test_streamed_tool_call(provider_type: str, client: UpstreamClient) -> None:
    scenario, provider = _setup(provider_type)
    with respx.mock(using="httpx") as mock:
        mock.post(scenario.stream_url).respond(200, content=scenario.wire.tool_stream, headers=scenario.stream_headers)
        chunks, parser = await _stream(provider, client, {**TOOL_REQUEST, **STREAM}, scenario.upstream_model)
    deltas = _check_stream_shape(chunks, "tool_calls")
    calls = _arguments_by_index(deltas)
    assert list(calls) == [0]
    assert calls[0][0] == TOOL_NAME
    assert json.loads(calls[0][1]) == TOOL_ARGS
    assert parser.done


ERROR_CASES = [
    (401, UpstreamError, 502, True),
    (429, UpstreamRateLimited, 429, True),
    (500, UpstreamError, 502, True),
    (503, UpstreamUnavailable, 503, True),
]


def _check_error(err: GatewayError, expected: type[GatewayError], status: int, retryable: bool) -> None:
    assert type(err) is expected
    assert (err.status, err.retryable) == (status, retryable)
    assert "sk-conformance" not in err.message
    if status == 429:
        assert err.retry_after == 7.0


@pytest.mark.parametrize("provider_type", HTTP_TYPES)
@pytest.mark.parametrize(("upstream_status", "expected", "status", "retryable"), ERROR_CASES)
async def test_error_mapping(
    provider_type: str,
    upstream_status: int,
    expected: type[GatewayError],
    status: int,
    retryable: bool,
    client: UpstreamClient,
) -> None:
    scenario, provider = _setup(provider_type)
    body, headers = scenario.wire.error(upstream_status)
    with respx.mock(using="httpx") as mock:
        mock.post(scenario.chat_url).respond(upstream_status, content=body, headers=headers)
        with pytest.raises(GatewayError) as plain:
            await _call(provider, client, TEXT_REQUEST, scenario.upstream_model)
    _check_error(plain.value, expected, status, retryable)
    with respx.mock(using="httpx") as mock:
        mock.post(scenario.stream_url).respond(upstream_status, content=body, headers=headers)
        with pytest.raises(GatewayError) as streamed:
            await _stream(provider, client, {**TEXT_REQUEST, **STREAM}, scenario.upstream_model)
    _check_error(streamed.value, expected, status, retryable)


# -- in-process providers (no HTTP) -------------------------------------------------------------------------


@pytest.mark.parametrize("provider_type", [t for t in REGISTERED if t in IN_PROCESS])
async def test_in_process_provider_plain_stream_and_tool_call(provider_type: str, client: UpstreamClient) -> None:
    provider = provider_class(provider_type)("conformance", ProviderSettings(type=provider_type))
    response, usage = await _call(provider, client, TEXT_REQUEST, "mock-model")
    assert response["choices"][0]["message"]["content"]
    assert response["choices"][0]["finish_reason"] == "stop"
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    chunks, parser = await _stream(provider, client, {**TEXT_REQUEST, **STREAM}, "mock-model")
    deltas = _check_stream_shape(chunks, "stop")
    assert "".join(d.get("content") or "" for d in deltas) == response["choices"][0]["message"]["content"]
    assert parser.done
    assert parser.usage is not None
    tool_response, _ = await _call(provider, client, TOOL_REQUEST, "mock-model")
    [call] = tool_response["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == TOOL_NAME
    assert isinstance(json.loads(call["function"]["arguments"]), dict)
    chunks, _ = await _stream(provider, client, {**TOOL_REQUEST, **STREAM}, "mock-model")
    calls = _arguments_by_index(_check_stream_shape(chunks, "tool_calls"))
    assert calls[0][0] == TOOL_NAME
    assert json.loads(calls[0][1]) == json.loads(call["function"]["arguments"])
