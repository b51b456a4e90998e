"""The OpenAI-compatible surface: chat completions, embeddings, models.

Handlers are thin: parse the few fields the gateway needs, run the pipeline,
render. A body from an OpenAI caller to an OpenAI upstream is forwarded as is.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from llmgate import pipeline
from llmgate.config import UPSTREAM_OVERRIDE_FIELDS
from llmgate.errors import GatewayError, InvalidRequest, NotFound
from llmgate.gateway import Gateway
from llmgate.surfaces.http import (
    ClientDisconnected,
    DisconnectWatch,
    Receive,
    RequestHeaders,
    Scope,
    Send,
    error_headers,
    parse_json_object,
    public_error,
    read_body,
    send_bytes,
    stream_until_disconnect,
)
from llmgate.types import RequestContext
from providers.sse import DONE, SSEEvent

log = logging.getLogger("llmgate.surface")

# Request fields that would let a caller choose the upstream or its credentials:
# upstream URLs and keys come only from config.
FORBIDDEN_FIELDS = UPSTREAM_OVERRIDE_FIELDS
# The default cap on `n` (choices per chat request); `gateway.max_n` sets it.
DEFAULT_MAX_N = 16


def check_forbidden(body: dict[str, Any]) -> None:
    bad = FORBIDDEN_FIELDS.intersection(body)
    if bad:
        field = sorted(bad)[0]
        raise InvalidRequest(
            f"`{field}` is not accepted: upstream endpoints and credentials come only from the gateway's config.",
            param=field,
        )


def validate_chat(body: dict[str, Any], max_n: int = DEFAULT_MAX_N) -> tuple[str, bool]:
    """The model and stream flag of a chat request, with errors naming the field."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a non-empty string.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("`messages` is required and must be an array.", param="messages")
    if not messages:
        raise InvalidRequest("`messages` must contain at least one message.", param="messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise InvalidRequest(f"`messages[{i}]` must be an object with a string `role`.", param=f"messages[{i}]")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise InvalidRequest("`stream` must be a boolean.", param="stream")
    for field in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InvalidRequest(f"`{field}` must be a positive integer.", param=field)
    n = body.get("n")
    if n is not None and n > max_n:
        raise InvalidRequest(f"`n` may be at most {max_n} on this gateway.", param="n")
    check_forbidden(body)
    return model, bool(stream)


def validate_embeddings(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a non-empty string.", param="model")
    value = body.get("input")
    ok = isinstance(value, str) or (
        isinstance(value, list)
        and value
        and (
            all(isinstance(v, str) for v in value)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or all(isinstance(v, list) and v and all(isinstance(t, int) for t in v) for v in value)
        )
    )
    if not ok:
        raise InvalidRequest(
            "`input` must be a string, an array of strings, or an array of token arrays.", param="input"
        )
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise InvalidRequest("`encoding_format` must be `float` or `base64`.", param="encoding_format")
    check_forbidden(body)
    return model


class OpenAISurface:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.limit = gw.settings.gateway.max_body_bytes
        self.max_depth = gw.settings.gateway.max_json_depth
        self.body_timeout_s = gw.settings.gateway.body_timeout_s
        self.max_n = gw.settings.gateway.max_n
        self.disconnects = DisconnectWatch()

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._proxy(scope, receive, send, "chat")

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._proxy(scope, receive, send, "embeddings")

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, surface: str) -> None:
        hdrs = RequestHeaders(scope)
        rid: str = hdrs.request_id  # type: ignore[assignment]
        ctx = RequestContext(request_id=rid, surface=surface, token=hdrs.token, body={})
        gw = self.gw
        try:
            ctx.key = await gw.auth.authenticate(hdrs.token)
            raw = await read_body(receive, hdrs.content_length, self.limit, self.body_timeout_s)
            ctx.body = body = parse_json_object(raw, self.max_depth)
            if surface == "chat":
                ctx.model, ctx.stream = validate_chat(body, self.max_n)
                options = body.get("stream_options")
                ctx.include_usage = bool(ctx.stream and isinstance(options, dict) and options.get("include_usage"))
            else:
                ctx.model = validate_embeddings(body)
            with self.disconnects.guard(receive):
                await pipeline.run(ctx, gw)
        except GatewayError as err:
            ctx.error = err
            await pipeline.settle(ctx, gw)
            if isinstance(err, ClientDisconnected):
                return
            public_error(err)
            await send_bytes(send, err.status, err.openai_body(), error_headers(err, rid) + _own_headers(ctx))
            return
        except Exception:
            log.exception("unexpected error in %s request %s", surface, rid)
            ctx.error = GatewayError("The gateway failed to handle this request.", code="internal_error")
            await pipeline.settle(ctx, gw)
            await send_bytes(send, 500, ctx.error.openai_body(), [(b"x-request-id", rid.encode())])
            return
        if ctx.stream_iter is not None:
            await self._stream(ctx, receive, send)
            return
        # Answer first, then release and record: the caller does not wait for the settlement
        # (a round trip when limits live in Redis).
        try:
            pipeline.price(ctx, gw)
            payload = ctx.response_raw if ctx.response_raw is not None else orjson.dumps(ctx.response)
            headers = [(b"x-request-id", rid.encode()), pipeline.cost_header(ctx), *_own_headers(ctx)]
            await send_bytes(send, 200, payload, headers)
        finally:
            await pipeline.settle(ctx, gw, priced=True)

    async def _stream(self, ctx: RequestContext, receive: Receive, send: Send) -> None:
        headers = [(b"x-request-id", ctx.request_id.encode()), *_own_headers(ctx)]
        try:
            await stream_until_disconnect(send, receive, 200, headers, self._sse(ctx))
        finally:
            await pipeline.settle(ctx, self.gw)

    async def _sse(self, ctx: RequestContext) -> AsyncIterator[bytes]:
        """Canonical chunks or relayed upstream events as OpenAI SSE, ending in [DONE]."""
        assert ctx.stream_iter is not None
        done = False
        try:
            async for item in ctx.stream_iter:
                if isinstance(item, SSEEvent):
                    done = done or item.data == b"[DONE]"
                    yield b"data: " + item.data + b"\n\n"
                else:
                    yield b"data: " + orjson.dumps(item) + b"\n\n"
        except GatewayError as err:
            ctx.error = err
            log.warning("stream %s failed: %s", ctx.request_id, err.message)
            yield b"data: " + public_error(err).openai_body() + b"\n\n"
        if not done:
            yield DONE

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        hdrs = RequestHeaders(scope)
        rid: str = hdrs.request_id  # type: ignore[assignment]
        try:
            key = await self.gw.auth.authenticate(hdrs.token)
            path: str = scope["path"]
            names = [name for name in self.gw.router.groups if key.may_use_model(name)]
            prefix = "/v1/models/"
            if path.startswith(prefix) and len(path) > len(prefix):
                wanted = path[len(prefix) :]
                if wanted not in names:
                    raise NotFound(
                        f"The model `{wanted}` does not exist or you do not have access to it.", param="model"
                    )
                payload: Any = _model_entry(wanted)
            else:
                payload = {"object": "list", "data": [_model_entry(n) for n in names]}
        except GatewayError as err:
            await send_bytes(send, err.status, public_error(err).openai_body(), error_headers(err, rid))
            return
        await send_bytes(send, 200, orjson.dumps(payload), [(b"x-request-id", rid.encode())])


def _model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmgate"}


def _own_headers(ctx: RequestContext) -> list[tuple[bytes, bytes]]:
    return pipeline.response_headers(ctx)
