"""An offline, deterministic OpenAI-compatible model for development and tests.

It speaks the OpenAI wire format in-process (so every gateway path, the
pass-through included, works without a network): answers derived from the
request, a tool call when tools are offered, JSON that fits a requested JSON
schema, embeddings of the right shape, streams token by token with a
configurable delay (`stream_delay_ms`), and usage counted with the tokenizer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from llmgate import tokens
from llmgate.config import Timeouts
from providers.base import WireRequest, WireResponse
from providers.openai import OpenAIProvider
from providers.sse import SSEEvent

EMBEDDING_DIMENSIONS = 256


def _last_user_text(messages: Any) -> str:
    for msg in reversed(messages if isinstance(messages, list) else []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def build_example(schema: Any, depth: int = 0) -> Any:
    """A value that satisfies a (simple) JSON schema: enums, types, required properties."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return build_example(schema[combinator][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: build_example(sub, depth + 1) for name, sub in props.items()}
    if kind == "array":
        item = build_example(schema.get("items") or {"type": "string"}, depth + 1)
        return [item] * max(1, int(schema.get("minItems") or 1))
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = "mock"
    min_len = int(schema.get("minLength") or 0)
    return text + "x" * max(0, min_len - len(text))


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    tool = tools[0]
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        tool = next((t for t in tools if (t.get("function") or {}).get("name") == wanted), tool)
    fn = tool.get("function") or {}
    args = build_example(fn.get("parameters") or {"type": "object", "properties": {}}) or {}
    digest = hashlib.sha256(orjson.dumps(body.get("messages"))).hexdigest()[:24]
    return {
        "id": f"call_{digest}",
        "type": "function",
        "function": {"name": fn.get("name", "tool"), "arguments": orjson.dumps(args).decode()},
    }


def build_answer(body: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None, str]:
    """(content, tool_call, finish_reason) for a chat request; deterministic."""
    call = _tool_call(body)
    if call is not None:
        return None, call, "tool_calls"
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        return orjson.dumps(build_example(schema)).decode(), None, "stop"
    if fmt.get("type") == "json_object":
        return orjson.dumps({"answer": _last_user_text(body.get("messages"))}).decode(), None, "stop"
    said = _last_user_text(body.get("messages"))
    content = f"Mock answer from {body.get('model')}. You said: {said}"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and limit > 0:
        words = content.split(" ")
        if len(words) > limit:
            return " ".join(words[:limit]), None, "length"
    return content, None, "stop"


def build_completion(body: dict[str, Any], request_id: str) -> dict[str, Any]:
    content, call, finish = build_answer(body)
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if call is not None:
        message["tool_calls"] = [call]
    prompt = tokens.count_request(body, body.get("model", ""))
    completion = tokens.count_text(content or call["function"]["arguments"], body.get("model", ""))  # type: ignore[index]
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


def build_stream_chunks(body: dict[str, Any], request_id: str) -> list[dict[str, Any]]:
    """The chunk sequence of a streamed answer (role first, finish, then usage)."""
    done = build_completion(body, request_id)
    base = {"id": done["id"], "object": "chat.completion.chunk", "created": done["created"], "model": done["model"]}
    message = done["choices"][0]["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    if message.get("tool_calls"):
        call = message["tool_calls"][0]
        fn = call["function"]
        chunks.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": fn["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        args = fn["arguments"]
        for i in range(0, len(args), 16):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 16]}}]}))
    else:
        words = (message["content"] or "").split(" ")
        for i, word in enumerate(words):
            chunks.append(chunk({"content": word if i == 0 else " " + word}))
    chunks.append(chunk({}, done["choices"][0]["finish_reason"]))
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**base, "choices": [], "usage": done["usage"]})
    return chunks


def _vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector derived from the text."""
    seed = hashlib.sha256(text.encode()).digest()
    raw = []
    block = seed
    while len(raw) < dimensions:
        block = hashlib.sha256(block).digest()
        raw.extend(b / 127.5 - 1.0 for b in block)
    values = raw[:dimensions]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


def build_embeddings(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("input")
    items = value if isinstance(value, list) and value and not isinstance(value[0], int) else [value]
    dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else EMBEDDING_DIMENSIONS
    data = []
    for i, item in enumerate(items):
        text = item if isinstance(item, str) else " ".join(str(t) for t in item or [])
        vector = _vector(text, dims)
        embedding: Any = vector
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    used = tokens.count_embedding_input(value, body.get("model", ""))
    return {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }


class MockProvider(OpenAIProvider):
    """OpenAI-compatible answers generated in-process: no network, no key."""

    type = "mock"
    default_base_url = "http://mock.invalid/v1"

    async def send(self, client: Any, request: WireRequest, timeouts: Timeouts) -> WireResponse:
        body = orjson.loads(request.body)
        rid = hashlib.sha256(request.body).hexdigest()[:24]
        if request.url.endswith("/embeddings"):
            return WireResponse(200, orjson.dumps(build_embeddings(body)), {"content-type": "application/json"})
        return WireResponse(200, orjson.dumps(build_completion(body, rid)), {"content-type": "application/json"})

    @asynccontextmanager
    async def open_stream(
        self, client: Any, request: WireRequest, timeouts: Timeouts
    ) -> AsyncIterator[AsyncIterator[SSEEvent]]:
        body = orjson.loads(request.body)
        rid = hashlib.sha256(request.body).hexdigest()[:24]
        yield self._events(build_stream_chunks(body, rid))

    async def _events(self, chunks: list[dict[str, Any]]) -> AsyncIterator[SSEEvent]:
        delay = self.settings.stream_delay_ms / 1000
        for chunk in chunks:
            if delay:
                await asyncio.sleep(delay)
            yield SSEEvent(orjson.dumps(chunk))
        yield SSEEvent(b"[DONE]")
