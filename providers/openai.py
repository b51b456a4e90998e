"""OpenAI Chat Completions and Embeddings, and every OpenAI-compatible server.

Targets the `/v1/chat/completions` and `/v1/embeddings` wire format (base_url
includes the version path). OpenAI caller -> OpenAI upstream is a pass-through:
the body is forwarded with only `model` (and, on streams, `stream_options`)
changed, and stream events are relayed untouched; usage is always requested on
streams and the usage chunk is dropped when the caller did not ask for it.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmgate.errors import GatewayError, UpstreamError
from llmgate.types import Usage
from providers.base import Provider, WireRequest, WireResponse, map_http_error
from providers.sse import SSEEvent

_DONE = b"[DONE]"


def build_chat_body(body: dict[str, Any], upstream_model: str, stream: bool) -> dict[str, Any]:
    """The upstream body: the caller's, with the upstream model and usage on streams."""
    out = {**body, "model": upstream_model}
    if stream:
        options = body.get("stream_options")
        out["stream"] = True
        out["stream_options"] = (
            {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
        )
    return out


def parse_json_body(response: WireResponse, provider: str) -> dict[str, Any]:
    try:
        data = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"provider {provider!r} returned a body that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError(f"provider {provider!r} returned JSON that is not an object")
    return data


def map_openai_error(provider: str, response: WireResponse) -> GatewayError:
    """An OpenAI-shaped error body (`{"error": {message, type, param, code}}`) to a gateway error."""
    message = code = param = None
    try:
        data = orjson.loads(response.body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message, code, param = err.get("message"), err.get("code"), err.get("param")
        elif isinstance(err, str):
            message = err
    except orjson.JSONDecodeError:
        message = response.body[:200].decode("utf-8", "replace") or None
    return map_http_error(provider, response, message, code if isinstance(code, str) else None, param)


class OpenAIStreamParser:
    """OpenAI chunks: relayed raw on a pass-through, parsed otherwise."""

    __slots__ = ("done", "provider", "usage")

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.usage: Usage | None = None
        self.done = False

    def _error(self, data: bytes) -> None:
        try:
            err = orjson.loads(data).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            err = None
        message = err.get("message") if isinstance(err, dict) else str(err)
        raise UpstreamError(f"provider {self.provider!r} failed mid-stream: {message}")

    def relay(self, event: SSEEvent, include_usage: bool) -> SSEEvent | None:
        data = event.data
        if data == _DONE:
            self.done = True
            return event
        if data[:1] != b"{" or data.rstrip()[-1:] != b"}":
            raise UpstreamError(f"provider {self.provider!r} sent a stream event that is not JSON")
        if data.startswith(b'{"error"'):
            self._error(data)
        if b'"usage":{' in data or b'"usage": {' in data:
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise UpstreamError(f"provider {self.provider!r} sent a stream event that is not JSON") from None
            self.usage = Usage.from_openai(chunk.get("usage"))
            if not include_usage and not chunk.get("choices"):
                return None
        return event

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        data = event.data
        if data == _DONE:
            self.done = True
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"provider {self.provider!r} sent a stream event that is not JSON") from None
        if "error" in chunk and "choices" not in chunk:
            self._error(data)
        usage = chunk.pop("usage", None)
        if usage:
            self.usage = Usage.from_openai(usage)
        return [chunk] if chunk.get("choices") else []

    def finish(self) -> list[dict[str, Any]]:
        return []


class OpenAIProvider(Provider):
    type = "openai"
    wire_format = "openai"
    default_base_url = "https://api.openai.com/v1"

    def __init__(self, name: str, settings: Any) -> None:
        super().__init__(name, settings)
        self.base_url = (settings.base_url or self.default_base_url).rstrip("/")
        self.headers = self._auth_headers()

    def _auth_headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", **self.settings.headers}
        key = self.settings.api_key
        if key:
            style = self.settings.auth_style
            if style in ("default", "bearer"):
                headers["authorization"] = f"Bearer {key}"
            else:
                headers[style] = key
        return headers

    def chat_url(self, upstream_model: str) -> str:
        return self.base_url + "/chat/completions"

    def embeddings_url(self, upstream_model: str) -> str:
        return self.base_url + "/embeddings"

    def build_chat_request(self, body: dict[str, Any], upstream_model: str, stream: bool) -> WireRequest:
        payload = build_chat_body(body, upstream_model, stream)
        return WireRequest(self.chat_url(upstream_model), orjson.dumps(payload), self.headers)

    def parse_chat_response(self, response: WireResponse, upstream_model: str) -> tuple[dict[str, Any], Usage]:
        data = parse_json_body(response, self.name)
        if "choices" not in data:
            raise UpstreamError(f"provider {self.name!r} returned a response without `choices`")
        return data, Usage.from_openai(data.get("usage"))

    def new_stream_parser(self, upstream_model: str, body: dict[str, Any]) -> OpenAIStreamParser:
        return OpenAIStreamParser(self.name)

    def map_error(self, response: WireResponse) -> GatewayError:
        return map_openai_error(self.name, response)

    def build_embeddings_request(self, body: dict[str, Any], upstream_model: str) -> WireRequest:
        payload = orjson.dumps({**body, "model": upstream_model})
        return WireRequest(self.embeddings_url(upstream_model), payload, self.headers)

    def parse_embeddings_response(
        self, response: WireResponse, upstream_model: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any], Usage]:
        data = parse_json_body(response, self.name)
        if "data" not in data:
            raise UpstreamError(f"provider {self.name!r} returned an embeddings response without `data`")
        usage = data.get("usage") or {}
        return data, Usage(input_tokens=int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0))
