"""Canonical types shared by every stage: usage, key identity, the request context.

The canonical request, response and stream chunk are the OpenAI chat schema as
plain dicts (parsed with orjson); only the pieces the gateway itself reasons
about get a type here. Everything is a slotted dataclass because one of each is
built per request on the hot path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from llmgate.errors import GatewayError


@dataclass(slots=True)
class Usage:
    """Token counts for one call, in the gateway's canonical shape.

    `input_tokens` is every prompt token, cached or not (OpenAI's prompt_tokens);
    `cached_input_tokens` and `cache_write_tokens` are parts of it. `output_tokens`
    includes `reasoning_tokens`. Adapters convert each provider's figures to this.
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI `usage` object for this usage."""
        out: dict[str, Any] = {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        if self.cached_input_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_input_tokens}
        if self.reasoning_tokens:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return out

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage:
        """Read an OpenAI `usage` object (chat or embeddings); missing parts count 0."""
        if not usage:
            return cls()
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            input_tokens=int(usage.get("prompt_tokens") or 0),
            cached_input_tokens=int(prompt_details.get("cached_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        )


@dataclass(slots=True, frozen=True)
class KeyInfo:
    """Who is calling: a gateway key as the pipeline sees it (never the secret).

    Limits left as None fall back to the `[limits]` defaults. `models` and
    `prompts` of None mean "any".
    """

    id: str
    name: str
    team: str | None = None
    models: tuple[str, ...] | None = None
    prompts: tuple[str, ...] | None = None
    rpm: int | None = None
    rps: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    max_concurrency: int | None = None
    max_wait_ms: int | None = None
    budget_usd: str | None = None
    budget_period: str | None = None
    priority: str | None = None
    expires_at: float | None = None
    metadata: dict[str, Any] | None = None
    is_master: bool = False

    def may_use_model(self, model: str) -> bool:
        return self.is_master or self.models is None or model in self.models


@dataclass(slots=True)
class RequestContext:
    """Everything one call carries through the pipeline stages.

    A surface creates it from the HTTP request, the stages fill it in, and the
    surface renders what the `call` stage left in `response` or `stream`.
    """

    request_id: str
    surface: str  # "chat" | "embeddings" | "messages" | "prompt"
    token: str | None
    body: dict[str, Any]  # canonical (OpenAI) request
    # The caller's wire format, and its own body when that is not OpenAI's: a
    # provider speaking the same format gets it passed through untranslated.
    wire: str = "openai"
    native_body: dict[str, Any] | None = None
    model: str = ""
    stream: bool = False
    include_usage: bool = False
    started: float = field(default_factory=time.perf_counter)
    started_wall: float = field(default_factory=time.time)
    key: KeyInfo | None = None
    # Set by admit: the reserved prompt and total tokens, the limiter's handle.
    prompt_tokens: int = 0
    reserved_tokens: int = 0
    admission: Any = None
    # Set by route/call.
    deployment: Any = None
    attempts: int = 0
    upstream_started: float = 0.0
    upstream_latency: float = 0.0
    first_token_at: float = 0.0
    response: dict[str, Any] | None = None  # canonical response
    response_raw: bytes | None = None  # a pass-through body, relayed as is
    # Canonical chunk dicts, or raw SSEEvents on a pass-through stream.
    stream_iter: AsyncIterator[Any] | None = None
    # Set by settle.
    usage: Usage | None = None
    cost_nusd: int = 0
    status: int = 200
    error: GatewayError | None = None
    settled: bool = False
    prompt_name: str | None = None
    prompt_version: int | None = None
    # Response headers the stages add (rate limits, cost, deployment, ...).
    headers: dict[str, str] = field(default_factory=dict)
