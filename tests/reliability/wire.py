"""What the fault-injecting upstreams say: healthy answers and broken ones, in OpenAI's and Anthropic's wire format.

`FaultUpstream` is one scripted upstream serving many fault cases at once: each case
is a path prefix (`/<case>/...`, set in the provider's `base_url`), so one gateway
in front of it can exercise the whole fault matrix, and the upstream counts the
attempts each case received.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from tests.harness import FakeUpstream, Received, Step, body, hang, head, json_response, reset, sleep, sse_response

TEXT = ["Hel", "lo", " there"]
DRIP_S = 0.3


def close() -> Step:
    """End the answer by closing the connection cleanly (FIN, not a reset)."""
    return Step("close")


class ClosingUpstream(FakeUpstream):
    """A FakeUpstream that also understands the `close` step (a body read until EOF, cut short)."""

    async def _answer(self, steps: list[Step], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if steps and steps[-1].kind == "close":
            if await super()._answer(steps[:-1], reader, writer):
                await writer.drain()
                writer.close()
            return False
        return await super()._answer(steps, reader, writer)


# -- healthy answers ------------------------------------------------------------------------------


def openai_completion(text: str = "".join(TEXT)) -> dict[str, Any]:
    return {
        "id": "chatcmpl-r1",
        "object": "chat.completion",
        "created": 1,
        "model": "up-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def anthropic_message(text: str = "".join(TEXT)) -> dict[str, Any]:
    return {
        "id": "msg_r1",
        "type": "message",
        "role": "assistant",
        "model": "claude-up",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 3},
    }


def openai_chunk(content: str | None = None, finish: str | None = None, usage: bool = False) -> bytes:
    data: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up-model"}
    if usage:
        data["choices"] = []
        data["usage"] = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    else:
        delta = {"content": content} if content else {}
        data["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + orjson.dumps(data) + b"\n\n"


def anthropic_event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def openai_events(words: list[str]) -> tuple[list[bytes], list[bytes]]:
    """(content events, closing events) of an OpenAI stream."""
    return [openai_chunk(w) for w in words], [
        openai_chunk(finish="stop"),
        openai_chunk(usage=True),
        b"data: [DONE]\n\n",
    ]


def anthropic_events(words: list[str]) -> tuple[list[bytes], list[bytes]]:
    message = {
        **anthropic_message(""),
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 5, "output_tokens": 0},
    }
    start = [
        anthropic_event("message_start", {"message": message}),
        anthropic_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    ]
    deltas = [
        anthropic_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": w}}) for w in words
    ]
    end = [
        anthropic_event("content_block_stop", {"index": 0}),
        anthropic_event(
            "message_delta",
            {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 3}},
        ),
        anthropic_event("message_stop", {}),
    ]
    return start + deltas, end


def events(wire: str, words: list[str] = TEXT) -> tuple[list[bytes], list[bytes]]:
    return openai_events(words) if wire == "openai" else anthropic_events(words)


def success(wire: str, stream: bool) -> list[Step]:
    if stream:
        content, closing = events(wire)
        return sse_response(content + closing)
    return json_response(openai_completion() if wire == "openai" else anthropic_message())


def error_answer(wire: str, status: int, message: str, headers: dict[str, str] | None = None) -> list[Step]:
    if wire == "openai":
        payload: dict[str, Any] = {"error": {"message": message, "type": "server_error", "code": None}}
    else:
        kind = "rate_limit_error" if status == 429 else "api_error"
        payload = {"type": "error", "error": {"type": kind, "message": message}}
    return json_response(payload, status, headers)


# -- faults -----------------------------------------------------------------------------------------


def reset_mid_stream(wire: str, stream: bool) -> list[Step]:
    if stream:
        content, _ = events(wire)
        return [*sse_response(content[:-2], delay=0.02, end=False), reset()]  # cut after the first word
    data = orjson.dumps(openai_completion() if wire == "openai" else anthropic_message())
    return [head(200, {"content-type": "application/json", "content-length": str(len(data))}), body(data[:20]), reset()]


def slow_drip(wire: str, stream: bool) -> list[Step]:
    """Every event (or a third of the body) DRIP_S apart; the answer completes."""
    if stream:
        content, closing = events(wire)
        steps = sse_response(content, delay=DRIP_S, end=False)
        return [*steps, *(body(e) for e in closing), Step("end")]
    data = orjson.dumps(openai_completion() if wire == "openai" else anthropic_message())
    third = len(data) // 3
    pieces = [data[:third], data[third : 2 * third], data[2 * third :]]
    steps: list[Step] = [head(200, {"content-type": "application/json", "content-length": str(len(data))})]
    for piece in pieces:
        steps += [sleep(DRIP_S), body(piece)]
    return steps


def malformed_json(wire: str, stream: bool) -> list[Step]:
    """A 200 whose body (or a stream event after the first one) is not JSON."""
    if stream:
        content, closing = events(wire)
        bad = b'data: {"choices": [oops\n\n' if wire == "openai" else b"event: content_block_delta\ndata: {oops\n\n"
        return sse_response([*content[:-2], bad, *content[-2:], *closing])
    data = b'{"id": "x", "choices": [oops'
    return [head(200, {"content-type": "application/json", "content-length": str(len(data))}), body(data)]


def truncated(wire: str, stream: bool) -> list[Step]:
    """The stream ends cleanly but without [DONE] / message_stop; a body read to EOF is cut short."""
    if stream:
        content, _ = events(wire)
        return sse_response(content)
    data = orjson.dumps(openai_completion() if wire == "openai" else anthropic_message())
    return [head(200, {"content-type": "application/json", "connection": "close"}), body(data[:30]), close()]


Answer = Callable[[str, bool, int], list[Step]]  # (wire, stream, n-th call of the case) -> steps

FAULTS: dict[str, Answer] = {
    "ok": lambda wire, stream, n: success(wire, stream),
    "reset_before_headers": lambda wire, stream, n: [reset()],
    "reset_mid_stream": lambda wire, stream, n: reset_mid_stream(wire, stream),
    "hang": lambda wire, stream, n: [hang()],
    "slow_drip": lambda wire, stream, n: slow_drip(wire, stream),
    "malformed_json": lambda wire, stream, n: malformed_json(wire, stream),
    "truncated": lambda wire, stream, n: truncated(wire, stream),
    "429_storm": lambda wire, stream, n: error_answer(wire, 429, "slow down", {"retry-after": "30"}),
    "5xx_burst": lambda wire, stream, n: error_answer(wire, 500, "boom") if n < 2 else success(wire, stream),
}


class FaultUpstream:
    """One ClosingUpstream serving every case: `/<case>/...` is answered by the case's fault."""

    def __init__(self) -> None:
        self.cases: dict[str, tuple[str, str]] = {}  # case -> (fault, wire)
        self.calls: Counter[str] = Counter()
        self._ids = itertools.count()
        self.server = ClosingUpstream(self._answer)

    def __enter__(self) -> FaultUpstream:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.__exit__(*exc)

    def add(self, fault: str, wire: str) -> str:
        """A new case; returns its base URL (for the provider's `base_url`)."""
        case = f"{fault}-{wire}-{next(self._ids)}"
        self.cases[case] = (fault, wire)
        suffix = "/v1" if wire == "openai" else ""
        return f"{self.server.url}/{case}{suffix}"

    def calls_of(self, base_url: str) -> int:
        return self.calls[base_url.removeprefix(self.server.url + "/").split("/")[0]]

    def _answer(self, req: Received) -> list[Step]:
        case = req.path.split("/")[1]
        n = self.calls[case]
        self.calls[case] += 1
        fault, wire = self.cases[case]
        stream = bool(req.body and req.json().get("stream"))
        return FAULTS[fault](wire, stream, n)
