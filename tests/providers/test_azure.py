"""The Azure OpenAI adapter: deployment URLs, api-version and auth header, through the shared client."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest
import respx

from llmgate.config import ProviderSettings, Timeouts
from llmgate.errors import UpstreamRateLimited
from llmgate.upstream import UpstreamClient
from providers.azure import DEFAULT_API_VERSION, AzureProvider

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "openai"
BASE = "https://res.openai.azure.com"
TIMEOUTS = Timeouts(connect=1, first_byte=2, total=5)


def _adapter(**settings: object) -> AzureProvider:
    return AzureProvider("az", ProviderSettings(type="azure", base_url=BASE, api_key="az-key", **settings))


def test_deployment_urls_use_the_upstream_name_and_api_version() -> None:
    adapter = _adapter(api_version="2025-01-01-preview")
    assert adapter.chat_url("gpt 4o/prod") == (
        f"{BASE}/openai/deployments/gpt%204o%2Fprod/chat/completions?api-version=2025-01-01-preview"
    )
    assert (
        _adapter().embeddings_url("emb")
        == f"{BASE}/openai/deployments/emb/embeddings?api-version={DEFAULT_API_VERSION}"
    )


def test_auth_header_styles() -> None:
    assert _adapter().headers["api-key"] == "az-key" and "authorization" not in _adapter().headers
    entra = _adapter(auth_style="bearer")
    assert entra.headers["authorization"] == "Bearer az-key" and "api-key" not in entra.headers
    custom = _adapter(headers={"x-ms-client-request-id": "r1"})
    assert custom.headers["x-ms-client-request-id"] == "r1"


def test_base_url_is_required() -> None:
    with pytest.raises(ValueError, match="base_url"):
        AzureProvider("az", ProviderSettings(type="azure", api_key="k"))


async def test_chat_and_429_through_the_shared_client() -> None:
    adapter = _adapter()
    recorded = (GOLDEN / "chat_text_usage" / "wire_response.json").read_bytes()
    limited = (GOLDEN / "error_429_rate_limit" / "wire_response.json").read_bytes()
    url = adapter.chat_url("gpt-4o")
    client = UpstreamClient(transport=httpx.AsyncHTTPTransport())
    try:
        with respx.mock(using="httpx") as mock:
            route = mock.post(url).respond(200, content=recorded)
            wire = adapter.build_chat_request({"model": "public", "messages": []}, "gpt-4o", stream=False)
            response = await adapter.send(client, wire, TIMEOUTS)
            sent = route.calls.last.request
            assert sent.headers["api-key"] == "az-key"
            assert orjson.loads(sent.content)["model"] == "gpt-4o"
            data, usage = adapter.parse_chat_response(response, "gpt-4o")
            assert usage.input_tokens == data["usage"]["prompt_tokens"]
            mock.post(url).respond(429, content=limited, headers={"retry-after": "2"})
            error = adapter.map_error(await adapter.send(client, wire, TIMEOUTS))
        assert isinstance(error, UpstreamRateLimited) and error.retry_after == 2.0
    finally:
        await client.aclose()
