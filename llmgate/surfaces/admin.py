"""The admin API (keys, teams, cost reports; master key only) and `GET /v1/usage` (a key's own figures).

Request bodies are their own pydantic schemas with `extra="forbid"`, apart from
the table models: a field the operator may not set (`id`, `key_hash`,
`revoked`, ...) is refused rather than silently ignored, and only the master
key reaches any endpoint that changes a limit. Store calls are synchronous and
run in a thread. `install_error_handlers` makes every error here (and FastAPI's
own validation errors) answer in the OpenAI error shape.
"""

from __future__ import annotations

import asyncio
import hmac
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmgate.errors import AuthError, GatewayError, InvalidRequest, NotFound, PermissionDenied, Unprocessable
from llmgate.gateway import Gateway
from llmgate.reports import ReportParams, build_report, parse_report_params, render_csv
from llmgate.storage import DuplicateError
from llmgate.surfaces.http import public_error
from llmgate.types import KeyInfo

router = APIRouter()
admin = APIRouter(prefix="/admin")

Name = Annotated[str, Field(min_length=1, max_length=200)]
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
Money = Annotated[Decimal, Field(ge=0, max_digits=24, decimal_places=9)]
Period = Literal["day", "week", "month", "total"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyCreate(_Body):
    name: Name
    team: Name | None = None
    models: list[str] | None = None
    prompts: list[str] | None = None
    rpm: Count | None = None
    rps: Count | None = None
    tpm: Count | None = None
    tpd: Count | None = None
    max_concurrency: Count | None = None
    max_wait_ms: Count | None = None
    budget_usd: Money | None = None
    budget_period: Period | None = None
    priority: Annotated[str, Field(max_length=64)] | None = None
    expires_at: datetime | None = None
    metadata: dict[str, Any] | None = None


class KeyUpdate(KeyCreate):
    """Only the fields sent change; `null` clears a field (the name cannot be cleared)."""

    name: Name | None = None


class TeamUpdate(_Body):
    description: Annotated[str, Field(max_length=1000)] | None = None
    rpm: Count | None = None
    tpm: Count | None = None
    budget_usd: Money | None = None
    budget_period: Period | None = None
    metadata: dict[str, Any] | None = None


class TeamCreate(TeamUpdate):
    name: Name


# -- authentication ------------------------------------------------------------------------------


def read_token(request: Request) -> str | None:
    """The caller's key from `Authorization: Bearer <key>` or `x-api-key: <key>`."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def master_gateway(request: Request) -> Gateway:
    """The gateway, for a caller holding the master key; 401 otherwise (403 for a valid non-master key)."""
    gw = _gateway(request)
    token = read_token(request)
    master = gw.settings.gateway.master_key
    if token and master and hmac.compare_digest(token.encode(), master.encode()):
        return gw
    if not token:
        raise AuthError("The admin API needs the master key: send `Authorization: Bearer <master key>`.")
    key = await gw.auth.authenticate(token)
    if not key.is_master:
        raise PermissionDenied("The admin API needs the master key.", code="admin_only")
    return gw


async def caller_key(request: Request) -> KeyInfo:
    return await _gateway(request).auth.authenticate(read_token(request))


MasterGateway = Annotated[Gateway, Depends(master_gateway)]


async def _store_call(gw: Gateway, method: str, *args: Any, **kwargs: Any) -> Any:
    if gw.store is None:
        raise GatewayError("No database is configured.", status=503, code="store_unavailable")
    return await asyncio.to_thread(getattr(gw.store, method), *args, **kwargs)


def _forget_key(gw: Gateway, key_id: str) -> None:
    """Make an edit or a revocation take effect on this instance at once."""
    invalidate = getattr(gw.auth, "invalidate", None)
    if invalidate is not None:
        invalidate(key_id=key_id)


def _key_not_found(key_id: str) -> NotFound:
    return NotFound(f"No key with id {key_id!r}.", param="id", code="key_not_found")


def _team_not_found(name: str) -> NotFound:
    return NotFound(f"No team named {name!r}.", param="name", code="team_not_found")


# -- keys ------------------------------------------------------------------------------------------


@admin.post("/keys", status_code=201)
async def create_key(body: KeyCreate, gw: MasterGateway) -> dict[str, Any]:
    record, secret = await _store_call(gw, "create_key", **body.model_dump(exclude_unset=True))
    return {"id": record["id"], "key": secret, **record}


@admin.get("/keys")
async def list_keys(gw: MasterGateway, team: str | None = None, include_revoked: bool = False) -> dict[str, Any]:
    keys = await _store_call(gw, "list_keys", team=team, include_revoked=include_revoked)
    return {"object": "list", "data": keys}


@admin.get("/keys/{key_id}")
async def get_key(key_id: str, gw: MasterGateway) -> dict[str, Any]:
    record = await _store_call(gw, "get_key", key_id)
    if record is None:
        raise _key_not_found(key_id)
    return record


@admin.patch("/keys/{key_id}")
async def update_key(key_id: str, body: KeyUpdate, gw: MasterGateway) -> dict[str, Any]:
    fields = body.model_dump(exclude_unset=True)
    if "name" in fields and fields["name"] is None:
        raise Unprocessable("`name` cannot be null.", param="name")
    record = await _store_call(gw, "update_key", key_id, **fields)
    if record is None:
        raise _key_not_found(key_id)
    _forget_key(gw, key_id)
    return record


@admin.delete("/keys/{key_id}")
async def revoke_key(key_id: str, gw: MasterGateway) -> dict[str, Any]:
    record = await _store_call(gw, "revoke_key", key_id)
    if record is None:
        raise _key_not_found(key_id)
    _forget_key(gw, key_id)
    return record


# -- teams -----------------------------------------------------------------------------------------


@admin.post("/teams", status_code=201)
async def create_team(body: TeamCreate, gw: MasterGateway) -> dict[str, Any]:
    fields = body.model_dump(exclude_unset=True)
    name = fields.pop("name")
    try:
        return await _store_call(gw, "create_team", name, **fields)
    except DuplicateError:
        raise GatewayError(
            f"A team named {name!r} already exists.", status=409, param="name", code="team_exists"
        ) from None


@admin.get("/teams")
async def list_teams(gw: MasterGateway) -> dict[str, Any]:
    return {"object": "list", "data": await _store_call(gw, "list_teams")}


@admin.get("/teams/{name}")
async def get_team(name: str, gw: MasterGateway) -> dict[str, Any]:
    record = await _store_call(gw, "get_team", name)
    if record is None:
        raise _team_not_found(name)
    return record


@admin.patch("/teams/{name}")
async def update_team(name: str, body: TeamUpdate, gw: MasterGateway) -> dict[str, Any]:
    record = await _store_call(gw, "update_team", name, **body.model_dump(exclude_unset=True))
    if record is None:
        raise _team_not_found(name)
    return record


@admin.delete("/teams/{name}")
async def delete_team(name: str, gw: MasterGateway) -> dict[str, Any]:
    if not await _store_call(gw, "delete_team", name):
        raise _team_not_found(name)
    return {"name": name, "deleted": True}


# -- reports ---------------------------------------------------------------------------------------


@admin.get("/reports/cost")
async def cost_report(
    gw: MasterGateway,
    group_by: str | None = None,
    start: str | None = None,
    end: str | None = None,
    report_format: Annotated[str | None, Query(alias="format")] = None,
    key_id: str | None = None,
) -> Response:
    params = parse_report_params(group_by, start, end, report_format, default_group_by="key")
    return await _report(gw, params, key_id, filename="llmgate-cost")


@router.get("/v1/usage")
async def usage(
    request: Request,
    group_by: str | None = None,
    start: str | None = None,
    end: str | None = None,
    report_format: Annotated[str | None, Query(alias="format")] = None,
    key_id: str | None = None,
) -> Response:
    """The calling key's own usage; only the master key may name another key (or see all)."""
    key = await caller_key(request)
    if not key.is_master:
        if key_id is not None and key_id != key.id:
            raise PermissionDenied(
                "A key may read only its own usage: `key_id` must be its own id.", param="key_id", code="forbidden"
            )
        key_id = key.id
    params = parse_report_params(group_by, start, end, report_format, default_group_by="day")
    return await _report(_gateway(request), params, key_id, filename="llmgate-usage")


async def _report(gw: Gateway, params: ReportParams, key_id: str | None, filename: str) -> Response:
    rows = await _store_call(gw, "cost_report", list(params.group_by), params.start, params.end, key_id=key_id)
    if params.format == "csv":
        return Response(
            render_csv(params.group_by, rows),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{filename}.csv"'},
        )
    report = build_report(params, rows)
    report["key_id"] = key_id
    return JSONResponse(report)


router.include_router(admin)


# -- errors ----------------------------------------------------------------------------------------


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of the FastAPI app in the OpenAI error shape."""
    app.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]


def openai_error_response(error: GatewayError) -> Response:
    return Response(error.openai_body(), status_code=error.status, headers=error.headers, media_type="application/json")


async def _gateway_error(_request: Request, exc: GatewayError) -> Response:
    return openai_error_response(public_error(exc))


async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
    return openai_error_response(map_validation_error(exc.errors()))


async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
    error = GatewayError(str(exc.detail), status=exc.status_code, headers=dict(exc.headers or {}))
    if exc.status_code < 500:
        error.type = "invalid_request_error"
    return openai_error_response(error)


def map_validation_error(errors: Any) -> GatewayError:
    """FastAPI's validation errors -> one error naming the first bad field (422; bad JSON 400)."""
    first = next(iter(errors), None)
    if first is None:
        return Unprocessable("Invalid request.")
    if first.get("type") == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.")
    fields = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    param = ".".join(fields) or None
    if first.get("type") == "extra_forbidden":
        return Unprocessable(f"Unknown field `{param}`: it cannot be set through this API.", param=param)
    message = first.get("msg", "Invalid value")
    return Unprocessable(f"`{param}`: {message}." if param else f"{message}.", param=param)
