"""Translation: the OpenAI pass-through build, and OpenAI <-> Anthropic build and parse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmgate.config import ProviderSettings
from providers.anthropic import AnthropicProvider
from providers.base import WireResponse
from providers.openai import OpenAIProvider

GOLDEN = Path(__file__).parents[1] / "golden"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Say hello in one short sentence."}], "max_tokens": 32}


def load(case: str, name: str) -> Any:
    return json.loads((GOLDEN / case / name).read_text())


def test_openai_passthrough_build(benchmark: Any) -> None:
    provider = OpenAIProvider("up", ProviderSettings(type="openai", api_key="sk-up"))
    wire = benchmark(provider.build_chat_request, CHAT, "gpt-4o-mini", False)
    assert json.loads(wire.body)["model"] == "gpt-4o-mini"
    assert wire.headers["authorization"] == "Bearer sk-up"


def test_anthropic_build_request(benchmark: Any) -> None:
    case = load("anthropic/chat_full_request", "case.json")
    canonical = load("anthropic/chat_full_request", "canonical_request.json")
    settings = ProviderSettings(type="anthropic", api_key="sk-test-key", **case.get("provider", {}))
    provider = AnthropicProvider("anthropic", settings)
    wire = benchmark(provider.build_chat_request, canonical, case["upstream_model"], False)
    assert json.loads(wire.body) == load("anthropic/chat_full_request", "wire_request.json")


def test_anthropic_parse_response(benchmark: Any) -> None:
    case = load("anthropic/chat_full_request", "case.json")
    provider = AnthropicProvider("anthropic", ProviderSettings(type="anthropic", api_key="sk-test-key"))
    body = (GOLDEN / "anthropic/chat_full_request/wire_response.json").read_bytes()
    response = WireResponse(200, body, {"content-type": "application/json"})
    result, usage = benchmark(provider.parse_chat_response, response, case["upstream_model"])
    expected = load("anthropic/chat_full_request", "canonical_result.json")["response"]
    assert result["choices"] == expected["choices"]
    assert usage.to_openai()["total_tokens"] == expected["usage"]["total_tokens"]
