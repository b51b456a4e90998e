"""Every golden wire case, through the adapter's pure functions (no network)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmgate.config import ProviderSettings
from llmgate.types import Usage
from providers import provider_class
from providers.base import EmbeddingsCapable, WireResponse
from providers.sse import SSEDecoder

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = sorted(p.parent for p in GOLDEN.glob("*/*/case.json"))


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _adapter(provider_type: str, case: dict[str, Any]) -> Any:
    settings = ProviderSettings(**{"type": provider_type, "api_key": "sk-test-key", **case.get("provider", {})})
    return provider_class(provider_type)("golden", settings)


def _without_created(actual: Any, expected: Any) -> Any:
    """Drop `created` from actual dicts where the expected one has none (translators stamp the time)."""
    if isinstance(actual, dict) and isinstance(expected, dict):
        return {
            k: _without_created(v, expected.get(k))
            for k, v in actual.items()
            if not (k == "created" and k not in expected)
        }
    if isinstance(actual, list) and isinstance(expected, list):
        return [_without_created(a, e) for a, e in zip(actual, expected, strict=False)] + actual[len(expected) :]
    return actual


def _usage(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.input_tokens,
        "cached_input_tokens": u.cached_input_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "output_tokens": u.output_tokens,
        "reasoning_tokens": u.reasoning_tokens,
    }


@pytest.mark.parametrize("case_dir", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
def test_golden_case(case_dir: Path) -> None:
    case = _load(case_dir / "case.json")
    assert case.get("reference"), "every golden case names the reference it follows"
    adapter = _adapter(case_dir.parent.name, case)
    kind = case["kind"]
    upstream = case.get("upstream_model", "model")
    request = _load(case_dir / "canonical_request.json")
    expected = _load(case_dir / "canonical_result.json")
    status = case.get("status", 200)
    headers = {k.lower(): v for k, v in case.get("response_headers", {}).items()}

    if kind == "error":
        body = (case_dir / "wire_response.json").read_bytes()
        err = adapter.map_error(WireResponse(status, body, headers))
        assert err.status == expected["status"]
        assert type(err).__name__ == expected["error"]
        assert err.code == expected.get("code")
        assert err.retryable == expected["retryable"]
        if "retry_after" in expected:
            assert err.retry_after == expected["retry_after"]
        if "message_contains" in expected:
            assert expected["message_contains"] in err.message
        return

    if kind == "embeddings":
        assert isinstance(adapter, EmbeddingsCapable)
        wire = adapter.build_embeddings_request(request, upstream)
    else:
        wire = adapter.build_chat_request(request, upstream, kind == "stream")
    assert json.loads(wire.body) == _load(case_dir / "wire_request.json")
    if "expect_url" in case:
        assert wire.url == case["expect_url"]
    for name, value in case.get("expect_headers", {}).items():
        assert wire.headers.get(name) == value, name

    if kind == "stream":
        parser = adapter.new_stream_parser(upstream, request)
        decoder = SSEDecoder()
        chunks: list[dict[str, Any]] = []
        for event in decoder.feed((case_dir / "wire_stream.sse").read_bytes()) + decoder.close():
            chunks.extend(parser.feed(event))
        chunks.extend(parser.finish())
        assert parser.done
        assert _without_created(chunks, expected["chunks"]) == expected["chunks"]
        assert parser.usage is not None
        assert _usage(parser.usage) == expected["usage"]
        return

    response = WireResponse(status, (case_dir / "wire_response.json").read_bytes(), headers)
    if kind == "embeddings":
        result, usage = adapter.parse_embeddings_response(response, upstream, request)
    else:
        result, usage = adapter.parse_chat_response(response, upstream)
    assert _without_created(result, expected["response"]) == expected["response"]
    assert _usage(usage) == expected["usage"]
