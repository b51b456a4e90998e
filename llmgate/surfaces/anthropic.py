"""The Anthropic-compatible surface: `POST /v1/messages` and `/v1/messages/count_tokens`.

Routed to any model. The caller's Messages body is translated to the canonical
request (llmgate/surfaces/anthropic_format.py) and the answer back; an
Anthropic upstream gets the caller's body untranslated (a pass-through) and its
events are relayed as they are. Errors use Anthropic's shape.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson

from llmgate import pipeline
from llmgate.errors import GatewayError, InvalidRequest
from llmgate.gateway import Gateway
from llmgate.surfaces.anthropic_format import (
    AnthropicStreamEncoder,
    build_message_response,
    build_native_event,
    count_tokens,
    error_event,
    parse_messages_request,
)
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
from llmgate.surfaces.openai import check_forbidden
from llmgate.types import RequestContext
from providers.sse import SSEEvent

log = logging.getLogger("llmgate.surface")


def _model_of(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required (a non-empty string).", param="model")
    return model


class AnthropicSurface:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.limit = gw.settings.gateway.max_body_bytes
        self.max_depth = gw.settings.gateway.max_json_depth
        self.body_timeout_s = gw.settings.gateway.body_timeout_s
        self.disconnects = DisconnectWatch()

    async def _read(self, receive: Receive, hdrs: RequestHeaders) -> bytes:
        return await read_body(receive, hdrs.content_length, self.limit, self.body_timeout_s)

    async def messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        hdrs = RequestHeaders(scope)
        rid: str = hdrs.request_id  # type: ignore[assignment]
        ctx = RequestContext(request_id=rid, surface="messages", token=hdrs.token, body={}, wire="anthropic")
        gw = self.gw
        try:
            ctx.key = await gw.auth.authenticate(hdrs.token)
            native = parse_json_object(await self._read(receive, hdrs), self.max_depth)
            ctx.model = _model_of(native)
            check_forbidden(native)
            ctx.body = parse_messages_request(native)
            ctx.native_body = native
            stream = native.get("stream", False)
            if not isinstance(stream, bool):
                raise InvalidRequest("stream: Input should be a valid boolean.", param="stream")
            ctx.stream = stream
            ctx.include_usage = True  # the event stream ends with usage in message_delta
            with self.disconnects.guard(receive):
                await pipeline.run(ctx, gw)
        except GatewayError as err:
            ctx.error = err
            await pipeline.settle(ctx, gw)
            if isinstance(err, ClientDisconnected):
                return
            await send_bytes(send, err.status, public_error(err).anthropic_body(), error_headers(err, rid) + _own(ctx))
            return
        except Exception:
            log.exception("unexpected error in messages request %s", rid)
            ctx.error = GatewayError("The gateway failed to handle this request.", code="internal_error")
            await pipeline.settle(ctx, gw)
            await send_bytes(send, 500, ctx.error.anthropic_body(), [(b"x-request-id", rid.encode())])
            return
        if ctx.stream_iter is not None:
            headers = [(b"x-request-id", rid.encode()), *_own(ctx)]
            try:
                await stream_until_disconnect(send, receive, 200, headers, self._events(ctx))
            finally:
                await pipeline.settle(ctx, gw)
            return
        try:
            payload = ctx.response_raw
            if payload is None:
                payload = orjson.dumps(build_message_response(ctx.response or {}, ctx.model))
        except GatewayError as err:  # e.g. tool arguments that are not a JSON object
            ctx.error = err
            await pipeline.settle(ctx, gw)
            await send_bytes(send, err.status, public_error(err).anthropic_body(), error_headers(err, rid) + _own(ctx))
            return
        try:  # answer first, then release and record (as the OpenAI surface does)
            pipeline.price(ctx, gw)
            headers = [(b"x-request-id", rid.encode()), pipeline.cost_header(ctx), *_own(ctx)]
            await send_bytes(send, 200, payload, headers)
        finally:
            await pipeline.settle(ctx, gw, priced=True)

    async def _events(self, ctx: RequestContext) -> AsyncIterator[bytes]:
        assert ctx.stream_iter is not None
        encoder = AnthropicStreamEncoder(ctx.model, ctx.prompt_tokens)
        native = False
        try:
            async for item in ctx.stream_iter:
                if isinstance(item, SSEEvent):
                    native = True
                    yield build_native_event(item)
                    continue
                piece = encoder.encode(item)
                if piece:
                    yield piece
        except GatewayError as err:
            ctx.error = err
            log.warning("stream %s failed: %s", ctx.request_id, err.message)
            yield error_event(public_error(err))
            return
        if not native:
            yield encoder.finish()

    async def count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        hdrs = RequestHeaders(scope)
        rid: str = hdrs.request_id  # type: ignore[assignment]
        try:
            key = await self.gw.auth.authenticate(hdrs.token)
            body = parse_json_object(await self._read(receive, hdrs), self.max_depth)
            model = _model_of(body)
            if not self.gw.router.has_model(model) or not key.may_use_model(model):
                raise InvalidRequest(f"model: `{model}` is not available to this key.", param="model")
            payload = orjson.dumps(count_tokens(body))
        except GatewayError as err:
            await send_bytes(send, err.status, public_error(err).anthropic_body(), error_headers(err, rid))
            return
        await send_bytes(send, 200, payload, [(b"x-request-id", rid.encode())])


def _own(ctx: RequestContext) -> list[tuple[bytes, bytes]]:
    return pipeline.response_headers(ctx)
