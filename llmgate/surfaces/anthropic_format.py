"""Pure translations for the Anthropic-compatible `/v1/messages` ingress.

An Anthropic Messages request becomes the canonical (OpenAI chat) request, and
the canonical response or chunk stream becomes an Anthropic message or SSE event
stream, so an Anthropic caller can reach any model. No I/O here: the HTTP
handler (llmgate/surfaces/anthropic.py) calls these functions.

What has no canonical form is carried over, never dropped: an Anthropic-only
top-level field (`top_k`, `thinking`, `container`, ...) keeps its name in the
canonical body, and a content block, tool or part without an OpenAI equivalent
(server tools, documents by URL, search results, images inside tool results)
is carried as is. The routed provider then uses it or refuses it by name (the
OpenAI API answers 400 naming the field). This matters because translation
happens before routing: an Anthropic upstream gets the caller's own body (the
pass-through), so refusing such fields here would break it.

Deliberately left out, because they do not change what the model is asked:
`cache_control` hints (OpenAI-format providers cache on their own), `citations`
flags, and `thinking`/`redacted_thinking` blocks of earlier assistant turns
(reasoning traces only the Anthropic upstream that made them can verify).
A `tool_result` with `is_error: true` becomes tool output prefixed "Error: ".
"""

from __future__ import annotations

from typing import Any

import orjson

from llmgate import tokens
from llmgate.errors import GatewayError, InvalidRequest, UpstreamError
from providers.sse import SSEEvent, encode_event

# Anthropic request fields translated below; every other field is carried over.
_TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "metadata",
        "tools",
        "tool_choice",
        "output_config",
    }
)

_FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_HISTORY_ONLY_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def _where(*path: object) -> str:
    return ".".join(str(p) for p in path)


# -- request --------------------------------------------------------------------------------------


def parse_messages_request(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request -> the canonical chat request (InvalidRequest names the field)."""
    return _parse_request(body, count_only=False)


def _parse_request(body: dict[str, Any], count_only: bool) -> dict[str, Any]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required (a non-empty string)", param="model")
    out: dict[str, Any] = {"model": model}
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: Field required (a non-empty list)", param="messages")
    system = parse_system(body.get("system"))
    out["messages"] = ([{"role": "system", "content": system}] if system else []) + parse_messages(messages)
    max_tokens = body.get("max_tokens")
    if max_tokens is not None or not count_only:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InvalidRequest("max_tokens: Field required (a positive integer)", param="max_tokens")
        out["max_tokens"] = max_tokens
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            out[field] = body[field]
    stop = body.get("stop_sequences")
    if stop:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("stop_sequences: must be a list of strings", param="stop_sequences")
        out["stop"] = list(stop)
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if user:
        out["user"] = str(user)
    tools = body.get("tools")
    if tools:
        out["tools"] = parse_tools(tools)
    choice = body.get("tool_choice")
    if choice is not None:
        out.update(parse_tool_choice(choice))
    out.update(parse_output_config(body.get("output_config")))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream: must be a boolean", param="stream")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    for field, value in body.items():
        if field not in _TRANSLATED and value is not None:
            out[field] = value
    return out


def parse_system(system: Any) -> str | None:
    """`system` (a string or text blocks) -> one system message text; blocks are joined by blank lines."""
    if system is None or isinstance(system, str):
        return system or None
    if not isinstance(system, list):
        raise InvalidRequest("system: must be a string or a list of text blocks", param="system")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequest(f"system.{i}: must be a text block", param=f"system.{i}")
        texts.append(block["text"])
    return "\n\n".join(texts) or None


def parse_messages(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidRequest(f"messages.{i}: must be an object", param=f"messages.{i}")
        role = msg.get("role")
        content = msg.get("content")
        if not isinstance(content, str | list):
            raise InvalidRequest(
                f"messages.{i}.content: must be a string or a list of blocks", param=f"messages.{i}.content"
            )
        if role == "user":
            out.extend(parse_user_message(content, i))
        elif role == "assistant":
            out.append(parse_assistant_message(content, i))
        else:
            raise InvalidRequest(
                f"messages.{i}.role: must be `user` or `assistant`, not `{role}`", param=f"messages.{i}.role"
            )
    return out


def _block_type(block: Any, where: str) -> str:
    kind = block.get("type") if isinstance(block, dict) else None
    if not isinstance(kind, str):
        raise InvalidRequest(f"{where}: a content block needs a `type`", param=where)
    return kind


def parse_user_message(content: str | list[Any], i: int) -> list[dict[str, Any]]:
    """A user turn -> its tool results as `tool` messages first, then the rest as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = _where("messages", i, "content", j)
        kind = _block_type(block, where)
        if kind == "tool_result":
            results.append(parse_tool_result(block, where))
        elif kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(parse_image(block))
        elif kind == "document":
            parts.append(parse_document(block))
        else:
            parts.append(block)
    if not parts:
        return results
    if len(parts) == 1 and parts[0].get("type") == "text":
        return [*results, {"role": "user", "content": parts[0]["text"]}]
    return [*results, {"role": "user", "content": parts}]


def parse_image(block: dict[str, Any]) -> dict[str, Any]:
    """An image block (base64 or URL source) -> an OpenAI `image_url` part; other sources are carried."""
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        return {"type": "image_url", "image_url": {"url": url}}
    if source.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": source.get("url")}}
    return block


def parse_document(block: dict[str, Any]) -> dict[str, Any]:
    """A base64 PDF -> an OpenAI `file` part; a plain-text document -> a text part; others are carried."""
    source = block.get("source") or {}
    if source.get("type") == "base64" and source.get("media_type") == "application/pdf":
        name = block.get("title") or "document.pdf"
        return {
            "type": "file",
            "file": {"filename": name, "file_data": f"data:application/pdf;base64,{source['data']}"},
        }
    if source.get("type") == "text":
        return {"type": "text", "text": str(source.get("data", ""))}
    return block


def parse_tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"{where}.tool_use_id: Field required", param=f"{where}.tool_use_id")
    content = block.get("content")
    result: Any
    if content is None or isinstance(content, str):
        result = content or ""
    elif isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        result = "\n".join(str(b.get("text", "")) for b in content)
    else:
        result = [parse_image(b) if isinstance(b, dict) and b.get("type") == "image" else b for b in content]
    if block.get("is_error") and isinstance(result, str):
        result = "Error: " + result
    return {"role": "tool", "tool_call_id": call_id, "content": result}


def parse_assistant_message(content: str | list[Any], i: int) -> dict[str, Any]:
    """An assistant turn -> text content plus `tool_calls` (tool_use input as a JSON string)."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    carried: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = _where("messages", i, "content", j)
        kind = _block_type(block, where)
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append(parse_tool_use(block, where))
        elif kind not in _HISTORY_ONLY_BLOCKS:
            carried.append(block)
    message: dict[str, Any] = {"role": "assistant"}
    if carried:
        message["content"] = [*({"type": "text", "text": t} for t in texts), *carried]
    else:
        message["content"] = "".join(texts) if texts else None
    if calls:
        message["tool_calls"] = calls
    return message


def parse_tool_use(block: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise InvalidRequest(f"{where}: a tool_use block needs `id` and `name`", param=where)
    arguments = orjson.dumps(block.get("input") or {}).decode()
    return {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}


def parse_tools(tools: Any) -> list[dict[str, Any]]:
    """Custom tools -> OpenAI function tools; server tools (typed, e.g. web_search_...) are carried."""
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"tools.{i}: must be an object", param=f"tools.{i}")
        if tool.get("type") not in (None, "custom"):
            out.append(tool)
            continue
        name = tool.get("name")
        schema = tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"tools.{i}.name: Field required", param=f"tools.{i}.name")
        if not isinstance(schema, dict):
            raise InvalidRequest(
                f"tools.{i}.input_schema: tool `{name}` needs a JSON schema object", param=f"tools.{i}.input_schema"
            )
        fn: dict[str, Any] = {"name": name}
        if tool.get("description"):
            fn["description"] = tool["description"]
        fn["parameters"] = schema
        if tool.get("strict") is True:
            fn["strict"] = True
        out.append({"type": "function", "function": fn})
    return out


def parse_tool_choice(choice: Any) -> dict[str, Any]:
    """Anthropic `tool_choice` -> canonical `tool_choice` (+ `parallel_tool_calls`)."""
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        out: dict[str, Any] = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        out = {"tool_choice": "none"}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise InvalidRequest("tool_choice: must be {type: auto | any | none | tool (with name)}", param="tool_choice")
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


def parse_output_config(config: Any) -> dict[str, Any]:
    """`output_config.format` (JSON schema) -> `response_format`; other settings are carried."""
    if not isinstance(config, dict):
        return {}
    out: dict[str, Any] = {}
    fmt = config.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt.get("schema") or {}, "strict": True},
        }
    rest = {k: v for k, v in config.items() if k != "format" and v is not None}
    if rest:
        out["output_config"] = rest
    return out


def count_tokens(body: dict[str, Any]) -> dict[str, int]:
    """`POST /v1/messages/count_tokens`: an estimate with the gateway's tokenizer (no `max_tokens` needed)."""
    canonical = _parse_request(body, count_only=True)
    return {"input_tokens": tokens.count_request(canonical, canonical["model"])}


# -- response -------------------------------------------------------------------------------------


def map_finish_reason(finish: str | None) -> str:
    """OpenAI `finish_reason` -> Anthropic `stop_reason`."""
    return _FINISH_TO_STOP.get(finish or "stop", "end_turn")


def build_message_id(chunk_id: Any) -> str:
    text = str(chunk_id or "")
    return text if text.startswith("msg_") else "msg_" + text.removeprefix("chatcmpl-")


def build_usage(usage: Any) -> dict[str, int]:
    """OpenAI usage -> Anthropic usage (Anthropic's input_tokens exclude cache reads)."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": max(0, prompt - cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }


def _tool_input(arguments: Any) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments or "{}") if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError("The model returned tool arguments that are not a JSON object.")
    return value


def build_message_response(response: dict[str, Any], model: str) -> dict[str, Any]:
    """A canonical chat.completion -> an Anthropic message (first choice)."""
    choices = response.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    text = text or message.get("refusal")
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": fn.get("name"),
                "input": _tool_input(fn.get("arguments")),
            }
        )
    return {
        "id": build_message_id(response.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": map_finish_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": build_usage(response.get("usage")),
    }


# -- stream ---------------------------------------------------------------------------------------


def error_event(err: GatewayError) -> bytes:
    """An Anthropic `event: error` for a failure after the stream has started."""
    return encode_event(err.anthropic_body(), "error")


def build_native_event(event: SSEEvent) -> bytes:
    """A pass-through upstream event, re-framed unchanged."""
    return encode_event(event.data, event.event)


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps({"type": kind, **payload}), kind)


class AnthropicStreamEncoder:
    """Canonical chunks -> Anthropic SSE events, as bytes.

    Feed every chunk to `encode` (the usage-only chunk with `choices: []`
    included) and call `finish` when the canonical stream ends normally: it
    closes the open block and sends message_delta (stop_reason, usage) and
    message_stop. On a failure send `error_event(err)` instead of `finish`.
    Only the first choice is rendered (Anthropic has no `n`).
    """

    def __init__(self, model: str, input_tokens: int = 0) -> None:
        self.model = model
        self.input_tokens = input_tokens
        self._started = False
        self._open: int | None = None  # index of the open content block
        self._open_text = False
        self._next_index = 0
        self._tool_blocks: dict[int, int] = {}  # canonical tool-call index -> block index
        self._stop_reason: str | None = None
        self._usage: dict[str, Any] | None = None

    def encode(self, chunk: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start(chunk.get("id")))
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if text:
                out.extend(self._text(text))
            for call in delta.get("tool_calls") or ():
                out.extend(self._tool_call(call))
            if choice.get("finish_reason"):
                self._stop_reason = map_finish_reason(choice["finish_reason"])
                out.extend(self._close())
        return b"".join(out)

    def finish(self) -> bytes:
        out = [] if self._started else [self._message_start(None)]
        out.extend(self._close())
        usage = build_usage(self._usage) if self._usage else {"output_tokens": 0}
        delta = {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None}
        out.append(_event("message_delta", {"delta": delta, "usage": usage}))
        out.append(_event("message_stop", {}))
        return b"".join(out)

    def _message_start(self, chunk_id: Any) -> bytes:
        self._started = True
        message = {
            "id": build_message_id(chunk_id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return _event("message_start", {"message": message})

    def _start(self, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self._open = self._next_index
        self._next_index += 1
        return [*out, _event("content_block_start", {"index": self._open, "content_block": block})]

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        index, self._open, self._open_text = self._open, None, False
        return [_event("content_block_stop", {"index": index})]

    def _text(self, text: str) -> list[bytes]:
        out = [] if self._open_text else self._start({"type": "text", "text": ""})
        self._open_text = True
        assert self._open is not None
        out.append(_event("content_block_delta", {"index": self._open, "delta": {"type": "text_delta", "text": text}}))
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        key = int(call.get("index", 0))
        fn = call.get("function") or {}
        out: list[bytes] = []
        if key not in self._tool_blocks:
            out.extend(self._start({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": {}}))
            assert self._open is not None
            self._tool_blocks[key] = self._open
        arguments = fn.get("arguments")
        if arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(_event("content_block_delta", {"index": self._tool_blocks[key], "delta": delta}))
        return out
