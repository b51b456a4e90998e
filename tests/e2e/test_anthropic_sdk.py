"""The real `anthropic` SDK against /v1/messages, and the `openai` SDK reaching an Anthropic upstream.

Fake upstreams answer with the recorded wire samples from ../shared/wire-samples
(copied into tests/golden), so both translation directions and the
Anthropic -> Anthropic pass-through run over real sockets.
"""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import openai
import orjson
import pytest

from tests.harness import FakeUpstream, GatewayServer, Received, json_response, make_settings, sse_response

MASTER = "sk-master-anthropic-e2e"
# Recorded samples copied from ../shared/wire-samples (see its README for sources).
SAMPLES = Path(__file__).resolve().parent / "samples"


def _sample(*parts: str) -> bytes:
    return SAMPLES.joinpath(*parts).read_bytes()


def _settings(openai_url: str, anthropic_url: str) -> dict:
    return {
        "gateway": {"master_key": MASTER},
        "providers": {
            "mock": {"type": "mock"},
            "oa": {"type": "openai", "base_url": openai_url + "/v1", "api_key": "sk-oa-upstream"},
            "an": {"type": "anthropic", "base_url": anthropic_url, "api_key": "sk-ant-upstream"},
        },
        "models": [
            {"name": "mock-gpt", "provider": "mock"},
            {"name": "gpt-up", "provider": "oa", "upstream": "gpt-4o-2024-08-06"},
            {"name": "claude-up", "provider": "an", "upstream": "claude-haiku-4-5-20251001"},
        ],
    }


def _openai_script(req: Received):
    if req.json().get("stream"):
        if req.json().get("tools"):
            return sse_response([_sample("openai", "stream_parallel_tool_calls.sse")])
        return sse_response([_sample("openai", "stream_text_include_usage.sse")])
    if req.json().get("tools"):
        return json_response(orjson.loads(_sample("openai", "chat_response_tool_calls.json")))
    return json_response(orjson.loads(_sample("openai", "chat_response_text_usage.json")))


def _anthropic_script(req: Received):
    body = req.json()
    if body.get("stream"):
        name = "stream_tool_use_recorded.sse" if body.get("tools") else "stream_text.sse"
        return sse_response([_sample("anthropic", name)])
    return json_response(orjson.loads(_sample("anthropic", "messages_response_text_tool_use_recorded.json")))


def _recorded_tool_input() -> dict:
    """The tool input the recorded Anthropic stream spells out in input_json_delta pieces."""
    pieces = []
    for line in _sample("anthropic", "stream_tool_use_recorded.sse").decode().splitlines():
        if line.startswith("data:") and "input_json_delta" in line:
            pieces.append(json.loads(line[5:])["delta"]["partial_json"])
    return json.loads("".join(pieces))


@pytest.fixture(scope="module")
def servers():
    with (
        FakeUpstream(_openai_script) as oa,
        FakeUpstream(_anthropic_script) as an,
        GatewayServer(make_settings(_settings(oa.url, an.url))) as gw,
    ):
        yield gw, oa, an


@pytest.fixture
def claude(servers) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=servers[0].url, api_key=MASTER, max_retries=0)


TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def test_messages_to_mock_text_stream_and_tools(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="mock-gpt", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "hello claude"}]
    )
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and "hello claude" in msg.content[0].text
    assert msg.stop_reason == "end_turn" and msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    with claude.messages.stream(
        model="mock-gpt", max_tokens=100, messages=[{"role": "user", "content": "hello claude"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == msg.content[0].text
    assert final.usage.output_tokens == msg.usage.output_tokens
    tool_msg = claude.messages.create(
        model="mock-gpt", max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": "weather in Paris?"}]
    )
    block = next(b for b in tool_msg.content if b.type == "tool_use")
    assert block.name == "get_weather" and "city" in block.input and tool_msg.stop_reason == "tool_use"
    with claude.messages.stream(
        model="mock-gpt", max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": "weather in Paris?"}]
    ) as stream:
        streamed = stream.get_final_message()
    assert [b.input for b in streamed.content if b.type == "tool_use"] == [block.input]


def test_messages_to_openai_upstream(servers, claude: anthropic.Anthropic) -> None:
    _, oa, _ = servers
    msg = claude.messages.create(model="gpt-up", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    recorded = orjson.loads(_sample("openai", "chat_response_text_usage.json"))
    assert msg.content[0].text == recorded["choices"][0]["message"]["content"]
    sent = oa.requests[-1].json()
    assert sent["model"] == "gpt-4o-2024-08-06" and sent["messages"][-1] == {"role": "user", "content": "hi"}
    with claude.messages.stream(model="gpt-up", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.startswith("I'm") and final.usage.output_tokens == 30
    with claude.messages.stream(
        model="gpt-up", max_tokens=50, tools=TOOLS, messages=[{"role": "user", "content": "weather?"}]
    ) as s:
        final = s.get_final_message()
    calls = [b for b in final.content if b.type == "tool_use"]
    assert [c.name for c in calls] == ["GetWeatherArgs", "get_stock_price"]
    assert calls[0].input == {"city": "Edinburgh", "country": "GB", "units": "c"}
    assert calls[1].input == {"ticker": "AAPL", "exchange": "NASDAQ"}
    assert final.stop_reason == "tool_use"


def test_messages_pass_through_to_anthropic(servers, claude: anthropic.Anthropic) -> None:
    _, _, an = servers
    msg = claude.messages.create(
        model="claude-up",
        max_tokens=64,
        tools=TOOLS,
        extra_body={"top_k": 5},
        messages=[{"role": "user", "content": "weather?"}],
    )
    sent = an.requests[-1]
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == "sk-ant-upstream"
    assert sent.json()["top_k"] == 5 and sent.json()["model"] == "claude-haiku-4-5-20251001"
    recorded = orjson.loads(_sample("anthropic", "messages_response_text_tool_use_recorded.json"))
    assert msg.model_dump(exclude_none=True)["content"] == recorded["content"]
    with claude.messages.stream(
        model="claude-up", max_tokens=64, tools=TOOLS, messages=[{"role": "user", "content": "weather?"}]
    ) as s:
        final = s.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == _recorded_tool_input()


def test_openai_sdk_to_anthropic_upstream(servers) -> None:
    gw, _, an = servers
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=MASTER, max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": TOOLS[0]["input_schema"]}}]
    resp = client.chat.completions.create(
        model="claude-up",
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "weather?"}],
        tools=tools,
    )
    sent = an.requests[-1].json()
    assert sent["system"] in ("sys", [{"type": "text", "text": "sys"}])
    assert sent["tools"][0]["name"] == "get_weather" and sent["max_tokens"] > 0
    call = resp.choices[0].message.tool_calls[0]
    assert resp.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    recorded = orjson.loads(_sample("anthropic", "messages_response_text_tool_use_recorded.json"))
    tool_use = next(b for b in recorded["content"] if b["type"] == "tool_use")
    assert json.loads(call.function.arguments) == tool_use["input"]
    chunks = list(
        client.chat.completions.create(
            model="claude-up",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello!"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 15


def test_errors_in_anthropic_shape(servers, claude: anthropic.Anthropic) -> None:
    gw = servers[0]
    bad = anthropic.Anthropic(base_url=gw.url, api_key="sk-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model="mock-gpt", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="mock-gpt", max_tokens=5, messages=[{"role": "robot", "content": "x"}])
    assert info.value.body["error"]["type"] == "invalid_request_error"


def test_count_tokens(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model="mock-gpt", messages=[{"role": "user", "content": "hello world"}])
    assert counted.input_tokens > 0
