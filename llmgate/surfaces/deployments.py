"""`GET /admin/deployments`: every deployment's live routing state, for the master key only.

Shows, per deployment: its model group and strategy, weight, calls in flight,
latency EWMA, recent upstream faults, the cooldown state (closed, open until
when, half-open) and its own rpm/tpm usage this minute. Never a credential.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llmgate.errors import AuthError
from llmgate.surfaces.http import RequestHeaders

router = APIRouter()


def _is_master(request: Request, master: str | None) -> bool:
    token = RequestHeaders(request.scope).token
    return bool(master and token and hmac.compare_digest(token.encode(), master.encode()))


@router.get("/admin/deployments", tags=["admin"], summary="Each deployment with health, cooldown and load")
async def list_deployments(request: Request) -> Response:
    gw: Any = request.app.state.gateway
    if not _is_master(request, gw.settings.gateway.master_key):
        err = AuthError("The admin API needs the master key.")
        return Response(err.openai_body(), status_code=err.status, media_type="application/json")
    return JSONResponse({"object": "list", "data": gw.router.describe(), "stats": _stats(gw.router)})


def _stats(router: Any) -> dict[str, Any]:
    s = router.stats
    return {
        "retries": s.retries,
        "fallbacks": s.fallbacks,
        "throttled": s.throttled,
        "capacity_waits": s.capacity_waits,
        "cooldowns": dict(s.cooldowns),
    }
