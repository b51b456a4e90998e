"""Anthropic Messages API (`POST /v1/messages`, `anthropic-version: 2023-06-01` by default).

Translates the canonical (OpenAI chat) request into a Messages body and the
Messages response and SSE event stream back into canonical shapes; maps
Anthropic's error bodies. An Anthropic caller reaching an Anthropic upstream is a
pass-through: `build_native_request` forwards the caller's body with only `model`
replaced, and the stream parser's `relay` forwards every event untouched while
it tracks usage.

Choices worth knowing:
- `response_format: json_schema` becomes `output_config.format` (Anthropic's
  structured outputs, `{"type": "json_schema", "schema": ...}` per the SDK's
  `OutputConfigParam`); the JSON arrives as ordinary text, streamed or not.
  Models without structured outputs refuse it upstream with a 400.
  `json_object` has no Anthropic form and is refused.
- Canonical fields Anthropic cannot express (n > 1, logprobs, penalties, seed,
  audio, ...) and unknown fields raise InvalidRequest naming the field. Fields
  that do not change the generated answer (`store`, `metadata`, `service_tier`,
  `stream_options`, `prompt_cache_key`, a message's `name`) are ignored.
- `top_k` and `thinking` are accepted as extensions and forwarded.
- All `system`/`developer` messages, wherever they stand, become the top-level
  `system` (Anthropic has no mid-conversation system turn).
- A mid-stream `error` event raises the mapped GatewayError, on the translated
  path and on the pass-through alike: the upstream's error event is not
  forwarded, so the surface renders exactly one error event from the exception
  (an error before the first forwarded event can still fail over).
"""

from __future__ import annotations

import re
import time
from functools import lru_cache
from typing import Any

import orjson

from llmgate.errors import GatewayError, InvalidRequest, UpstreamError
from llmgate.types import Usage
from providers.base import Provider, WireRequest, WireResponse, map_http_error
from providers.openai import parse_json_body
from providers.sse import SSEEvent

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error `type` -> the HTTP status it stands for (used for in-stream errors).
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 403,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "conflict_error": 409,
    "overloaded_error": 529,
}

# Canonical fields translated below, and fields that do not change the answer.
_TRANSLATED = frozenset(
    {"model", "messages", "tools", "tool_choice", "parallel_tool_calls", "stop", "temperature", "top_p", "max_tokens"}
    | {"max_completion_tokens", "response_format", "user", "safety_identifier", "stream", "top_k", "thinking"}
)
_IGNORED = frozenset({"store", "metadata", "service_tier", "stream_options", "prompt_cache_key"})

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(r"data:(?P<media>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)", re.DOTALL)
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def _unsupported(field: str, detail: str = "") -> InvalidRequest:
    return InvalidRequest(f"`{field}` {detail or 'is not supported by Anthropic models'}", param=field)


def _is_active(field: str, value: Any) -> bool:
    """Whether a field Anthropic cannot express asks for something (defaults are harmless)."""
    if value is None:
        return False
    if field == "n":
        return value != 1
    if field in ("presence_penalty", "frequency_penalty"):
        return value != 0
    if field == "modalities":
        return value != ["text"]
    if field in ("logprobs", "logit_bias"):
        return bool(value)
    return True


def check_supported_fields(body: dict[str, Any]) -> None:
    """Refuse every field Anthropic cannot express, by name, rather than drop it."""
    for field, value in body.items():
        if field in _TRANSLATED or field in _IGNORED:
            continue
        if field in ("functions", "function_call"):
            if value is not None:
                raise _unsupported(field, "(deprecated) is not supported by Anthropic models; use `tools`")
            continue
        if _is_active(field, value):
            raise _unsupported(field)


def map_stop_reason(reason: str | None) -> str:
    """Anthropic `stop_reason` -> OpenAI `finish_reason`."""
    return _STOP_REASONS.get(reason or "end_turn", "stop")


# -- request --------------------------------------------------------------------------------------


def build_messages_body(
    body: dict[str, Any], upstream_model: str, stream: bool, default_max_tokens: int
) -> dict[str, Any]:
    """A canonical chat request -> the Messages API body."""
    check_supported_fields(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty list", param="messages")
    system, turns = build_conversation(messages)
    if not turns:
        raise InvalidRequest("`messages` needs at least one user or assistant message", param="messages")
    out: dict[str, Any] = {"model": upstream_model, "max_tokens": build_max_tokens(body, default_max_tokens)}
    if system is not None:
        out["system"] = system
    out["messages"] = turns
    tools = body.get("tools")
    if tools:
        out["tools"] = build_tools(tools)
        choice = build_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    stop = build_stop_sequences(body.get("stop"))
    if stop:
        out["stop_sequences"] = stop
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
            raise _unsupported("temperature", "must be between 0 and 1 for Anthropic models")
        out["temperature"] = temperature
    for field in ("top_p", "top_k", "thinking"):
        if body.get(field) is not None:
            out[field] = body[field]
    output_format = build_output_format(body.get("response_format"))
    if output_format is not None:
        out["output_config"] = {"format": output_format}
    user = body.get("user") or body.get("safety_identifier")
    if user:
        out["metadata"] = {"user_id": str(user)}
    if stream:
        out["stream"] = True
    return out


def build_max_tokens(body: dict[str, Any], default: int) -> int:
    """`max_completion_tokens`, else `max_tokens`, else the provider's default (Anthropic requires one)."""
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"`{field}` must be a positive integer", param=field)
        return value
    return default


def build_stop_sequences(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise InvalidRequest("`stop` must be a string or a list of strings", param="stop")


def build_output_format(response_format: Any) -> dict[str, Any] | None:
    """`response_format` -> Anthropic's `output_config.format` (None for plain text)."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "`response_format.json_schema.schema` must be a JSON schema object", param="response_format"
            )
        return {"type": "json_schema", "schema": schema}
    if kind == "json_object":
        raise _unsupported(
            "response_format",
            "type `json_object` is not supported by Anthropic models; use `json_schema` with a schema",
        )
    raise InvalidRequest(f"`response_format` type `{kind}` is not supported", param="response_format")


def build_conversation(messages: list[Any]) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """OpenAI messages -> (`system`, Anthropic turns) with consecutive same-role turns merged."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidRequest(f"`messages[{i}]` must be an object", param=f"messages[{i}]")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(build_text_blocks(msg.get("content"), f"messages[{i}].content"))
            continue
        if role == "user":
            turn_role, content = "user", build_user_content(msg.get("content"), i)
        elif role == "assistant":
            turn_role, content = "assistant", build_assistant_content(msg, i)
        elif role == "tool":
            turn_role, content = "user", [build_tool_result(msg, i)]
        else:
            raise InvalidRequest(
                f"`messages[{i}].role` `{role}` is not supported by Anthropic models", param=f"messages[{i}].role"
            )
        if content:
            _append_turn(turns, turn_role, content)
    return build_system(system), turns


def build_system(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]] | None:
    """One plain system text stays a string; several (or cache hints) stay blocks."""
    if not blocks:
        return None
    if len(blocks) == 1 and set(blocks[0]) == {"type", "text"}:
        return blocks[0]["text"]
    return blocks


def _append_turn(turns: list[dict[str, Any]], role: str, content: str | list[dict[str, Any]]) -> None:
    if turns and turns[-1]["role"] == role:
        previous = turns[-1]["content"]
        turns[-1]["content"] = _as_blocks(previous) + _as_blocks(content)
    else:
        turns.append({"role": role, "content": content})


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _text_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    text = part.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"`{where}.text` must be a string", param=where)
    block: dict[str, Any] = {"type": "text", "text": text}
    if part.get("cache_control"):
        block["cache_control"] = part["cache_control"]
    return block


def build_text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """System/developer content (a string or text parts) -> text blocks; empty text is left out."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"`{where}` must be a string or a list of text parts", param=where)
    blocks = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise InvalidRequest(f"`{where}[{j}]` must be a text part", param=f"{where}[{j}]")
        if part.get("text"):
            blocks.append(_text_block(part, f"{where}[{j}]"))
    return blocks


def build_user_content(content: Any, i: int) -> str | list[dict[str, Any]]:
    where = f"messages[{i}].content"
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"`{where}` must be a string or a list of parts", param=where)
    blocks = []
    for j, part in enumerate(content):
        part_where = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append(_text_block(part, part_where))
        elif kind == "image_url":
            blocks.append(build_image_block(part.get("image_url"), part_where))
        elif kind == "file":
            blocks.append(build_document_block(part.get("file"), part_where))
        elif kind == "input_audio":
            raise InvalidRequest("audio input (`input_audio`) is not supported by Anthropic models", param=part_where)
        else:
            raise InvalidRequest(f"content part type `{kind}` is not supported by Anthropic models", param=part_where)
    return blocks


def build_image_block(image_url: Any, where: str) -> dict[str, Any]:
    """An OpenAI `image_url` (data: URL or http(s) URL) -> an Anthropic image block."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"`{where}.image_url.url` must be a URL", param=where)
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise InvalidRequest(f"`{where}.image_url.url` must be an http(s) URL or a base64 data: URL", param=where)
    media = match["media"].lower()
    if media not in _IMAGE_TYPES:
        raise InvalidRequest(
            f"image type `{media}` is not supported by Anthropic models (one of: {', '.join(sorted(_IMAGE_TYPES))})",
            param=where,
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media, "data": match["data"]}}


def build_document_block(file: Any, where: str) -> dict[str, Any]:
    """An OpenAI `file` part carrying a base64 PDF -> an Anthropic document block."""
    data = file.get("file_data") if isinstance(file, dict) else None
    match = _DATA_URL.fullmatch(data) if isinstance(data, str) else None
    if match is None or match["media"].lower() != "application/pdf":
        raise InvalidRequest(
            "only PDF files sent inline as `file_data` (a base64 data: URL) are supported by Anthropic models",
            param=where,
        )
    return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": match["data"]}}


def build_assistant_content(msg: dict[str, Any], i: int) -> str | list[dict[str, Any]]:
    """Assistant text (and refusal) plus `tool_calls` -> text and tool_use blocks."""
    content = msg.get("content")
    where = f"messages[{i}].content"
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and part.get("text"):
                blocks.append(_text_block(part, f"{where}[{j}]"))
            elif kind == "refusal" and part.get("refusal"):
                blocks.append({"type": "text", "text": str(part["refusal"])})
            elif kind not in ("text", "refusal"):
                raise InvalidRequest(
                    f"assistant content part type `{kind}` is not supported by Anthropic models", param=f"{where}[{j}]"
                )
    elif content is not None:
        raise InvalidRequest(f"`{where}` must be a string or a list of parts", param=where)
    for j, call in enumerate(msg.get("tool_calls") or ()):
        blocks.append(build_tool_use_block(call, f"messages[{i}].tool_calls[{j}]"))
    if len(blocks) == 1 and isinstance(content, str) and not msg.get("tool_calls"):
        return content
    return blocks


def build_tool_use_block(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(call.get("id"), str) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"`{where}` needs an `id` and a `function.name`", param=where)
    raw = fn.get("arguments") or "{}"
    try:
        arguments = orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"`{where}.function.arguments` must be a JSON object", param=f"{where}.function.arguments")
    return {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": arguments}


def build_tool_result(msg: dict[str, Any], i: int) -> dict[str, Any]:
    """A `role: tool` message -> a tool_result block (it goes into a user turn)."""
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"`messages[{i}].tool_call_id` is required", param=f"messages[{i}].tool_call_id")
    content = msg.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, list):
        block["content"] = build_text_blocks(content, f"messages[{i}].content")
    elif isinstance(content, str):
        block["content"] = content
    elif content is not None:
        raise InvalidRequest(f"`messages[{i}].content` must be a string or text parts", param=f"messages[{i}].content")
    return block


def build_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI function tools -> Anthropic tools; a malformed one is refused by name."""
    if not isinstance(tools, list):
        raise InvalidRequest("`tools` must be a list", param="tools")
    return [build_tool(tool, i) for i, tool in enumerate(tools)]


def build_tool(tool: Any, i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise InvalidRequest(
            f"`{where}`: tool type `{kind}` is not supported by Anthropic models (only `function` tools)", param=where
        )
    fn = tool["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
        raise InvalidRequest(
            f"tool `{name}`: the name must be 1-64 letters, digits, `_` or `-`", param=f"{where}.function.name"
        )
    params = fn.get("parameters")
    schema = {"type": "object", "properties": {}} if params is None else params
    problem = check_tool_schema(schema)
    if problem:
        raise InvalidRequest(
            f"tool `{name}`: invalid `parameters` schema: {problem}", param=f"{where}.function.parameters"
        )
    out: dict[str, Any] = {"name": name}
    description = fn.get("description")
    if description:
        out["description"] = str(description)
    out["input_schema"] = schema
    if fn.get("strict") is True:
        out["strict"] = True
    return out


def check_tool_schema(schema: Any) -> str | None:
    """Why a tool's parameters schema is unusable, or None when it is fine."""
    if not isinstance(schema, dict):
        return "it must be a JSON schema object"
    if schema.get("type") != "object":
        return 'the top level must be `"type": "object"`'
    return _schema_problem(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))


@lru_cache(maxsize=512)
def _schema_problem(schema_json: bytes) -> str | None:
    """Check against the JSON Schema meta-schema, once per distinct schema (tools repeat per call)."""
    import jsonschema  # imported here: only calls with tools need it, and it weighs ~3 MB

    schema = orjson.loads(schema_json)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        return exc.message
    return None


def build_tool_choice(choice: Any, parallel_tool_calls: Any) -> dict[str, Any] | None:
    """OpenAI `tool_choice` (+ `parallel_tool_calls: false`) -> Anthropic `tool_choice`."""
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "none":
        out = {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function" and (choice.get("function") or {}).get("name"):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequest(
            f"`tool_choice` {orjson.dumps(choice).decode()} is not supported by Anthropic models", param="tool_choice"
        )
    if parallel_tool_calls is False:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


# -- response -------------------------------------------------------------------------------------


def parse_usage(usage: dict[str, Any] | None) -> Usage:
    """Anthropic usage -> canonical: input counts fresh, cache-read and cache-write tokens."""
    if not usage:
        return Usage()
    fresh = int(usage.get("input_tokens") or 0)
    cached = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    details = usage.get("output_tokens_details") or {}
    return Usage(
        input_tokens=fresh + cached + written,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        output_tokens=int(usage.get("output_tokens") or 0),
        reasoning_tokens=int(details.get("thinking_tokens") or 0),
    )


def build_tool_call(block: dict[str, Any]) -> dict[str, Any]:
    arguments = orjson.dumps(block.get("input") or {}).decode()
    return {"id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": arguments}}


def parse_message_response(data: dict[str, Any]) -> tuple[dict[str, Any], Usage]:
    """A Messages API response -> (canonical chat.completion, usage)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append(build_tool_call(block))
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    usage = parse_usage(data.get("usage"))
    response = {
        "id": data.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": data.get("model"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": map_stop_reason(data.get("stop_reason")),
            }
        ],
        "usage": usage.to_openai(),
    }
    return response, usage


# -- errors ---------------------------------------------------------------------------------------


def parse_error_body(body: bytes) -> tuple[str | None, str | None]:
    """(error type, message) of an Anthropic error body; the raw text when it is not one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, body[:200].decode("utf-8", "replace") or None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        kind, message = err.get("type"), err.get("message")
        return (kind if isinstance(kind, str) else None), (message if isinstance(message, str) else None)
    return None, None


def map_anthropic_error(provider: str, response: WireResponse) -> GatewayError:
    """An Anthropic error answer (`{"type":"error","error":{type,message}}`) -> a gateway error."""
    _, message = parse_error_body(response.body)
    code = None
    if response.status == 400 and message and "prompt is too long" in message.lower():
        code = "context_length_exceeded"
    elif response.status == 413:
        code = "request_too_large"
    return map_http_error(provider, response, message, code)


def map_stream_error(provider: str, data: bytes) -> GatewayError:
    """An `event: error` inside a 200 stream, mapped as if it had come with its HTTP status."""
    kind, _ = parse_error_body(data)
    status = _ERROR_STATUS.get(kind or "", 500)
    return map_anthropic_error(provider, WireResponse(status, data, {}))


# -- stream ---------------------------------------------------------------------------------------


def _event_type(event: SSEEvent, data: dict[str, Any] | None = None) -> str | None:
    if event.event:
        return event.event
    if data is None:
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return None
    return data.get("type") if isinstance(data, dict) else None


class AnthropicStreamParser:
    """Anthropic stream events -> canonical chunks; on a pass-through, relays them and tracks usage.

    Tool-call indexes count tool_use blocks only (a text block at index 0 does not
    shift them). Usage is kept as Anthropic's counters: message_start gives input
    and cache figures, message_delta the cumulative output (and, in newer API
    versions, the input and cache figures again).
    """

    def __init__(self, provider: str, model: str) -> None:
        self.provider = provider
        self.model = model
        self.usage: Usage | None = None
        self.done = False
        self._id = ""
        self._created = int(time.time())
        self._counts: dict[str, Any] = {}
        self._tool_index: dict[int, int] = {}  # content block index -> tool-call index
        self._argued: set[int] = set()  # tool blocks that produced argument text
        self._finished = False

    def _load(self, event: SSEEvent) -> dict[str, Any]:
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"provider {self.provider!r} sent a stream event that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError(f"provider {self.provider!r} sent a stream event that is not an object")
        return data

    def _count(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._counts.update({k: v for k, v in usage.items() if v is not None})
            self.usage = parse_usage(self._counts)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        data = self._load(event)
        kind = _event_type(event, data)
        if kind == "message_start":
            message = data.get("message") or {}
            self._id = message.get("id") or self._id
            self.model = message.get("model") or self.model
            self._count(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "content_block_stop":
            return self._block_stop(data)
        if kind == "message_delta":
            self._count(data.get("usage"))
            reason = (data.get("delta") or {}).get("stop_reason")
            if reason is None or self._finished:
                return []
            self._finished = True
            return [self._chunk({}, map_stop_reason(reason))]
        if kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise map_stream_error(self.provider, event.data)
        return []  # ping, and event types added after this adapter was written

    def _block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block") or {}
        if block.get("type") == "tool_use":
            index = int(data.get("index", 0))
            tool_index = len(self._tool_index)
            self._tool_index[index] = tool_index
            arguments = orjson.dumps(block["input"]).decode() if block.get("input") else ""
            if arguments:
                self._argued.add(index)
            call = {
                "index": tool_index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": arguments},
            }
            return [self._chunk({"tool_calls": [call]})]
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        return []

    def _block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "input_json_delta" and delta.get("partial_json"):
            index = int(data.get("index", 0))
            tool_index = self._tool_index.get(index)
            if tool_index is None:
                return []
            self._argued.add(index)
            return [
                self._chunk({"tool_calls": [{"index": tool_index, "function": {"arguments": delta["partial_json"]}}]})
            ]
        return []

    def _block_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """A tool call without input streams no JSON at all: close it as `{}`, as OpenAI would send it."""
        index = int(data.get("index", 0))
        tool_index = self._tool_index.get(index)
        if tool_index is None or index in self._argued:
            return []
        self._argued.add(index)
        return [self._chunk({"tool_calls": [{"index": tool_index, "function": {"arguments": "{}"}}]})]

    def finish(self) -> list[dict[str, Any]]:
        return []

    def relay(self, event: SSEEvent, include_usage: bool) -> SSEEvent | None:
        """Pass-through: every event is forwarded as is (Anthropic streams always carry usage)."""
        data = event.data
        if data[:1] != b"{" or data.rstrip()[-1:] != b"}":
            raise UpstreamError(f"provider {self.provider!r} sent a stream event that is not JSON")
        kind = _event_type(event)
        if kind == "message_start":
            self._count((self._load(event).get("message") or {}).get("usage"))
        elif kind == "message_delta":
            self._count(self._load(event).get("usage"))
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise map_stream_error(self.provider, event.data)
        return event


# -- adapter --------------------------------------------------------------------------------------


class AnthropicProvider(Provider):
    type = "anthropic"
    wire_format = "anthropic"

    def __init__(self, name: str, settings: Any) -> None:
        super().__init__(name, settings)
        self.base_url = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.url = self.base_url + "/v1/messages"
        self.headers = self._headers()

    def _headers(self) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "anthropic-version": self.settings.api_version or DEFAULT_VERSION,
            **self.settings.headers,
        }
        key = self.settings.api_key
        if key:
            style = self.settings.auth_style
            if style == "bearer":
                headers["authorization"] = f"Bearer {key}"
            elif style == "default":
                headers["x-api-key"] = key
            else:
                headers[style] = key
        return headers

    def build_chat_request(self, body: dict[str, Any], upstream_model: str, stream: bool) -> WireRequest:
        payload = build_messages_body(body, upstream_model, stream, self.settings.default_max_tokens)
        return WireRequest(self.url, orjson.dumps(payload), self.headers)

    def build_native_request(
        self, body: dict[str, Any], upstream_model: str, stream: bool, beta: str | None = None
    ) -> WireRequest:
        """Pass-through: the caller's own Messages body with only `model` (and `stream`) set.

        `beta` is the caller's `anthropic-beta` header: the features its body may use,
        added to any configured ones.
        """
        payload = {**body, "model": upstream_model}
        if stream:
            payload["stream"] = True
        else:
            payload.pop("stream", None)
        headers = self.headers
        if beta:
            configured = headers.get("anthropic-beta")
            headers = {**headers, "anthropic-beta": f"{configured},{beta}" if configured else beta}
        return WireRequest(self.url, orjson.dumps(payload), headers)

    def parse_chat_response(self, response: WireResponse, upstream_model: str) -> tuple[dict[str, Any], Usage]:
        data = parse_json_body(response, self.name)
        if data.get("type") == "error":
            raise map_stream_error(self.name, response.body)
        if not isinstance(data.get("content"), list):
            raise UpstreamError(f"provider {self.name!r} returned a message without `content`")
        return parse_message_response(data)

    def parse_native_response(self, response: WireResponse) -> Usage:
        """Pass-through: the usage of a Messages body relayed to the caller as is."""
        data = parse_json_body(response, self.name)
        if data.get("type") == "error":
            raise map_stream_error(self.name, response.body)
        return parse_usage(data.get("usage"))

    def new_stream_parser(self, upstream_model: str, body: dict[str, Any]) -> AnthropicStreamParser:
        return AnthropicStreamParser(self.name, upstream_model)

    def map_error(self, response: WireResponse) -> GatewayError:
        return map_anthropic_error(self.name, response)
