"""HTTP surface of the prompt service: calling prompts, the catalog, the admin API, OpenAPI.

A prompt call is a chat call like any other: the handler resolves the version,
checks who may call it, renders the messages, and hands a canonical chat request
to the pipeline (auth, throttling, routing, usage and cost, with the prompt's
name and version on the record). Handlers stay thin; the work is in
`llmgate.prompting`.

Every live prompt is published in `/openapi.json` as its own operation
(`POST /prompts/<name>`) with its own request schema; `install_prompt_openapi`
merges those into FastAPI's schema and rebuilds it when the set of prompts changes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from llmgate import pipeline
from llmgate.cost import format_usd
from llmgate.errors import GatewayError, InvalidRequest, NotFound, PermissionDenied
from llmgate.gateway import Gateway
from llmgate.prompting.document import Prompt
from llmgate.prompting.inputs import build_response_format, parse_output
from llmgate.prompting.service import PromptService, PromptVersion, authorize, reload_prompts
from llmgate.surfaces.http import (
    Receive,
    RequestHeaders,
    Scope,
    Send,
    parse_json_object,
    public_error,
    read_body,
    stream_until_disconnect,
)
from llmgate.types import KeyInfo, RequestContext
from providers.sse import DONE, SSEEvent

log = logging.getLogger("llmgate.prompts")

router = APIRouter()


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _service(gw: Gateway) -> PromptService:
    service = gw.extras.get("prompts")
    if service is None:
        raise NotFound("Prompt templates are not enabled on this gateway.", code="prompt_not_found")
    return service


def _json(payload: Any, request_id: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload),
        media_type="application/json",
        headers={"x-request-id": request_id, **(headers or {})},
    )


async def _read_object(request: Request, gw: Gateway, hdrs: RequestHeaders) -> dict[str, Any]:
    settings = gw.settings.gateway
    raw = await read_body(request.receive, hdrs.content_length, settings.max_body_bytes, settings.body_timeout_s)
    return parse_json_object(raw, settings.max_json_depth)


def _version_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise NotFound(f"There is no prompt version `{text}`.", param="version", code="prompt_not_found")
    return int(text)


def _stream_flag(request: Request) -> bool:
    value = request.query_params.get("stream", "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidRequest("`stream` must be `true` or `false`.", param="stream")
    return value in ("true", "1")


async def _caller(gw: Gateway, hdrs: RequestHeaders) -> KeyInfo:
    return await gw.auth.authenticate(hdrs.token)


async def _master(gw: Gateway, hdrs: RequestHeaders) -> KeyInfo:
    key = await _caller(gw, hdrs)
    if not key.is_master:
        raise PermissionDenied("The admin API needs the master key.", code="admin_only")
    return key


# -- calling prompts -------------------------------------------------------------


class _PromptStream(Response):
    """An SSE answer that settles the call once the stream ends or the client leaves."""

    def __init__(self, ctx: RequestContext, gw: Gateway, prompt: Prompt, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(status_code=200)
        self.ctx = ctx
        self.gw = gw
        self.prompt = prompt
        self.extra_headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await stream_until_disconnect(send, receive, 200, self.extra_headers, _sse(self.ctx, self.prompt))
        finally:
            await pipeline.settle(self.ctx, self.gw)


def _chunk_content(chunk: dict[str, Any]) -> str:
    return "".join((choice.get("delta") or {}).get("content") or "" for choice in chunk.get("choices") or () if choice)


def _event_content(data: bytes) -> str:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ""
    return _chunk_content(chunk) if isinstance(chunk, dict) else ""


async def _sse(ctx: RequestContext, prompt: Prompt) -> AsyncIterator[bytes]:
    """The model's chunks as OpenAI SSE (canonical dicts or relayed events), ending in [DONE].

    With an output schema, the streamed text is checked once it is complete; a
    mismatch becomes a final error event (the status line has long been sent).
    """
    assert ctx.stream_iter is not None
    collected: list[str] | None = [] if prompt.output_schema is not None else None
    try:
        async for item in ctx.stream_iter:
            if isinstance(item, SSEEvent):
                if item.data.strip() == b"[DONE]":
                    continue
                data = item.data
                if collected is not None:
                    collected.append(_event_content(data))
            else:
                data = orjson.dumps(item)
                if collected is not None:
                    collected.append(_chunk_content(item))
            yield b"data: " + data + b"\n\n"
        if collected is not None:
            parse_output(prompt, "".join(collected))
    except GatewayError as err:
        ctx.error = err
        log.warning("prompt stream %s failed: %s", ctx.request_id, err.message)
        yield b"data: " + public_error(err).openai_body() + b"\n\n"
    yield DONE


def build_chat_body(pv: PromptVersion, messages: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
    """The canonical chat request of a prompt call."""
    body: dict[str, Any] = {"model": pv.prompt.model, "messages": messages, **pv.prompt.parameters, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    response_format = build_response_format(pv.prompt)
    if response_format is not None:
        body["response_format"] = response_format
    return body


def _reply_choice(ctx: RequestContext) -> dict[str, Any]:
    choices = (ctx.response or {}).get("choices") or [{}]
    return choices[0] or {}


def _reply_message(ctx: RequestContext) -> dict[str, Any]:
    return _reply_choice(ctx).get("message") or {}


def build_reply(pv: PromptVersion, ctx: RequestContext, output: Any) -> dict[str, Any]:
    """The answer of a prompt call: the output (text or checked JSON), model, usage, cost, prompt."""
    response = ctx.response or {}
    choice = _reply_choice(ctx)
    message = _reply_message(ctx)
    reply: dict[str, Any] = {
        "output": output,
        "model": response.get("model") or ctx.model,
        "usage": ctx.usage.to_openai() if ctx.usage is not None else response.get("usage"),
        "cost_usd": format_usd(ctx.cost_nusd),
        "prompt": {"name": pv.name, "version": pv.version},
        "finish_reason": choice.get("finish_reason"),
    }
    if message.get("tool_calls"):
        reply["tool_calls"] = message["tool_calls"]
    return reply


async def _call(request: Request, name: str, version: int | None) -> Response:
    """One prompt call; every outcome, refusals included, is settled and recorded like a chat call."""
    gw = _gateway(request)
    hdrs = RequestHeaders(request.scope)
    rid: str = hdrs.request_id  # type: ignore[assignment]
    ctx = RequestContext(request_id=rid, surface="prompt", token=hdrs.token, body={}, include_usage=True)
    lifecycle: dict[str, str] = {}
    try:
        ctx.key = await _caller(gw, hdrs)
        ctx.stream = _stream_flag(request)
        service = _service(gw)
        pv = await service.resolve(name, version, request.query_params.get("label"))
        ctx.model, ctx.prompt_name, ctx.prompt_version = pv.prompt.model, pv.name, pv.version
        authorize(pv, ctx.key)
        lifecycle = pv.lifecycle_headers()
        messages = await service.render(pv, await _read_object(request, gw, hdrs))
        ctx.body = build_chat_body(pv, messages, ctx.stream)
        await pipeline.run(ctx, gw)
        if ctx.stream_iter is not None:
            headers = [(b"x-request-id", rid.encode()), *pipeline.response_headers(ctx)]
            headers.extend((k.lower().encode(), v.encode()) for k, v in lifecycle.items())
            return _PromptStream(ctx, gw, pv.prompt, headers)
        output = parse_output(pv.prompt, _reply_message(ctx).get("content"))
    except GatewayError as err:
        ctx.error = err
        await pipeline.settle(ctx, gw)
        err.headers.setdefault("x-request-id", rid)
        err.headers.update({k.decode(): v.decode() for k, v in pipeline.response_headers(ctx)})
        raise
    except Exception:
        log.exception("unexpected error in prompt request %s", rid)
        ctx.error = GatewayError("The gateway failed to handle this request.", code="internal_error")
        await pipeline.settle(ctx, gw)
        raise ctx.error from None
    await pipeline.settle(ctx, gw)  # before the reply, which carries the cost
    reply = build_reply(pv, ctx, output)
    headers = {k.decode(): v.decode() for k, v in pipeline.response_headers(ctx)}
    cost_name, cost_value = pipeline.cost_header(ctx)
    headers[cost_name.decode()] = cost_value.decode()
    return _json(reply, rid, headers={**headers, **lifecycle})


@router.get("/prompts", tags=["prompts"], summary="The catalog of prompt APIs this key may call")
async def catalog(request: Request) -> Response:
    gw = _gateway(request)
    hdrs = RequestHeaders(request.scope)
    key = await _caller(gw, hdrs)
    entries = await _service(gw).catalog(key)
    return _json({"object": "list", "data": [pv.summary() for pv in entries]}, hdrs.request_id or "")


@router.post("/prompts/{name}", tags=["prompts"], summary="Call a prompt (label `prod`, else the latest)")
async def call_prompt(request: Request, name: str) -> Response:
    return await _call(request, name, None)


@router.post("/prompts/{name}/versions/{version}", tags=["prompts"], summary="Call a given version of a prompt")
async def call_prompt_version(request: Request, name: str, version: str) -> Response:
    return await _call(request, name, _version_number(version))


async def _render(request: Request, name: str, version: int | None) -> Response:
    gw = _gateway(request)
    hdrs = RequestHeaders(request.scope)
    service = _service(gw)
    key = await _caller(gw, hdrs)
    pv = await service.resolve(name, version, request.query_params.get("label"))
    authorize(pv, key)
    body = await _read_object(request, gw, hdrs)
    messages = await service.render(pv, body)
    payload = {
        "prompt": {"name": pv.name, "version": pv.version},
        "model": pv.prompt.model,
        "messages": messages,
        "request": build_chat_body(pv, messages, stream=False),
    }
    return _json(payload, hdrs.request_id or "", headers=pv.lifecycle_headers())


@router.post("/prompts/{name}/render", tags=["prompts"], summary="Render a prompt's messages without a model call")
async def render_prompt(request: Request, name: str) -> Response:
    return await _render(request, name, None)


@router.post("/prompts/{name}/versions/{version}/render", tags=["prompts"], summary="Render a given version")
async def render_prompt_version(request: Request, name: str, version: str) -> Response:
    return await _render(request, name, _version_number(version))


# -- admin -----------------------------------------------------------------------


@dataclass(slots=True)
class _Admin:
    """An admin request whose caller presented the master key."""

    gw: Gateway
    hdrs: RequestHeaders
    service: PromptService

    def reply(self, payload: Any) -> Response:
        return _json(payload, self.hdrs.request_id or "")


async def _admin(request: Request) -> _Admin:
    gw = _gateway(request)
    hdrs = RequestHeaders(request.scope)
    await _master(gw, hdrs)
    return _Admin(gw, hdrs, _service(gw))


@router.get("/admin/prompts", tags=["admin"], summary="Every stored prompt with its versions and labels")
async def admin_list(request: Request) -> Response:
    admin = await _admin(request)
    return admin.reply({"object": "list", "data": await admin.service.names()})


@router.post("/admin/prompts/reload", tags=["admin"], summary="Re-read the prompt files")
async def admin_reload(request: Request) -> Response:
    admin = await _admin(request)
    return admin.reply((await reload_prompts(admin.gw)).as_dict())


@router.get("/admin/prompts/{name}", tags=["admin"], summary="A prompt's latest (or `?version=`) document")
async def admin_get(request: Request, name: str) -> Response:
    admin = await _admin(request)
    wanted = request.query_params.get("version")
    return admin.reply(await admin.service.describe(name, _version_number(wanted) if wanted is not None else None))


@router.put("/admin/prompts/{name}", tags=["admin"], summary="Save a prompt document as a new version")
async def admin_put(request: Request, name: str) -> Response:
    admin = await _admin(request)
    pv = await admin.service.save(name, await _read_object(request, admin.gw, admin.hdrs))
    return admin.reply({"name": pv.name, "version": pv.version, "state": pv.state, "source": pv.source})


@router.delete("/admin/prompts/{name}", tags=["admin"], summary="Delete a prompt with all its versions")
async def admin_delete(request: Request, name: str) -> Response:
    admin = await _admin(request)
    await admin.service.delete(name)
    return admin.reply({"name": name, "deleted": True})


@router.get("/admin/prompts/{name}/versions", tags=["admin"], summary="A prompt's versions and labels")
async def admin_versions(request: Request, name: str) -> Response:
    admin = await _admin(request)
    return admin.reply(await admin.service.history(name))


@router.put("/admin/prompts/{name}/labels/{label}", tags=["admin"], summary="Point a label at a version")
async def admin_label(request: Request, name: str, label: str) -> Response:
    admin = await _admin(request)
    version = (await _read_object(request, admin.gw, admin.hdrs)).get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidRequest("`version` must be a positive integer.", param="version")
    await admin.service.set_label(name, label, version)
    return admin.reply({"name": name, "label": label, "version": version})


# -- OpenAPI ---------------------------------------------------------------------

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def build_reply_schema(pv: PromptVersion) -> dict[str, Any]:
    output = pv.prompt.output_schema if pv.prompt.output_schema is not None else {"type": "string"}
    return {
        "type": "object",
        "title": f"{pv.name} reply",
        "properties": {
            "output": output,
            "model": {"type": "string"},
            "usage": {"type": "object", "description": "OpenAI usage object"},
            "cost_usd": {"type": "string", "description": "This call's cost in USD (decimal string)"},
            "prompt": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "version": {"type": "integer"}},
            },
            "finish_reason": {"type": ["string", "null"]},
        },
        "required": ["output", "model", "usage", "cost_usd", "prompt"],
    }


def build_prompt_operation(pv: PromptVersion) -> dict[str, Any]:
    """The OpenAPI operation `POST /prompts/<name>` of one prompt."""
    p = pv.prompt
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/PromptError"}}}
    description = p.description or f"Call the prompt `{pv.name}`."
    if p.output_schema is not None:
        description += "\n\nThe reply's `output` is JSON validated against the prompt's output schema."
    operation: dict[str, Any] = {
        "tags": ["prompt APIs"],
        "summary": f"{pv.name} (v{pv.version}, {p.model})",
        "description": description,
        "operationId": f"prompt_{pv.name}",
        "parameters": [
            {"name": "stream", "in": "query", "required": False, "schema": {"type": "boolean", "default": False}},
            {"name": "label", "in": "query", "required": False, "schema": {"type": "string"}},
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{_input_ref(pv)}"}}},
        },
        "responses": {
            "200": {
                "description": "The model's output (or, with `?stream=true`, an SSE stream of chat chunks)",
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{_reply_ref(pv)}"}},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            "401": {"description": "Missing or invalid key", "content": error},
            "404": {"description": "Unknown prompt, version or label", "content": error},
            "410": {"description": "The prompt is retired", "content": error},
            "422": {"description": "An input is missing or invalid (`param` names it)", "content": error},
            "429": {"description": "Throttled", "content": error},
            "502": {"description": "Upstream failure or an output that breaks the schema", "content": error},
        },
        "security": [{"bearer": []}],
    }
    if p.state == "deprecated":
        operation["deprecated"] = True
    return operation


def _input_ref(pv: PromptVersion) -> str:
    return f"PromptInput_{pv.name}"


def _reply_ref(pv: PromptVersion) -> str:
    return f"PromptReply_{pv.name}"


def merge_prompt_operations(schema: dict[str, Any], prompts: list[PromptVersion]) -> dict[str, Any]:
    """FastAPI's schema with one operation (and its request/reply schemas) per prompt."""
    paths = schema.setdefault("paths", {})
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["PromptError"] = _ERROR_SCHEMA
    components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    for pv in prompts:
        schemas[_input_ref(pv)] = pv.input_schema
        schemas[_reply_ref(pv)] = build_reply_schema(pv)
        paths[f"/prompts/{pv.name}"] = {"post": build_prompt_operation(pv)}
    return schema


def install_prompt_openapi(app: FastAPI, get_prompts: Callable[[], list[PromptVersion]]) -> None:
    """Make `app.openapi()` include every live prompt; rebuilt whenever the prompts change."""
    base = app.openapi
    seen: list[tuple[str, int]] = []

    def openapi() -> dict[str, Any]:
        prompts = get_prompts()
        fingerprint = [(pv.name, pv.version) for pv in prompts]
        if app.openapi_schema is not None and fingerprint == seen:
            return app.openapi_schema
        app.openapi_schema = None
        schema = merge_prompt_operations(base(), prompts)
        app.openapi_schema = schema
        seen[:] = fingerprint
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_prompt_surface(app: FastAPI) -> None:
    """Mount the routes and the per-prompt OpenAPI on a FastAPI app whose `state.gateway` is
    (or will be, by the time requests arrive) a Gateway with `extras["prompts"]`."""
    app.include_router(router)

    def live() -> list[PromptVersion]:
        gw = getattr(app.state, "gateway", None)
        service = gw.extras.get("prompts") if gw is not None else None
        return service.current() if service is not None else []

    install_prompt_openapi(app, live)
