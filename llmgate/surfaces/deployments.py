"""`GET /admin/deployments`: every deployment's live routing state, for the master key only.

Shows, per deployment: its model group and strategy, weight, calls in flight,
latency EWMA, recent upstream faults, the cooldown state (closed, open until
when, half-open) and its own rpm/tpm usage this minute. Never a credential.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llmgate.surfaces.admin import master_gateway

router = APIRouter()


@router.get("/admin/deployments", tags=["admin"], summary="Each deployment with health, cooldown and load")
async def list_deployments(request: Request) -> Response:
    gw: Any = await master_gateway(request)
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
