"""Liveness and readiness.

`/health` answers as soon as the process serves; `/health/ready` also checks the
backends the gateway depends on (database, Redis) and answers 503 naming the one
that is down. Neither shows configuration or secrets.
"""

from __future__ import annotations

import asyncio

import orjson

from llmgate.gateway import Gateway
from llmgate.surfaces.http import Receive, RequestHeaders, Scope, Send, send_bytes

_LIVE = orjson.dumps({"status": "ok"})


class HealthSurface:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def live(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = RequestHeaders(scope).request_id or ""
        await send_bytes(send, 200, _LIVE, [(b"x-request-id", rid.encode())])

    async def ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = RequestHeaders(scope).request_id or ""
        checks: dict[str, str] = {}
        store = self.gw.store
        if store is not None:
            try:
                ok = await asyncio.wait_for(asyncio.to_thread(store.ping), 2.0)
            except Exception:
                ok = False
            checks["database"] = "ok" if ok else "unreachable"
        ping = getattr(self.gw.limiter, "ping", None)
        if ping is not None and self.gw.settings.gateway.redis_url:
            try:
                ok = await asyncio.wait_for(ping(), 2.0)
            except Exception:
                ok = False
            checks["redis"] = "ok" if ok else "unreachable"
        ready = all(v == "ok" for v in checks.values())
        body = orjson.dumps({"status": "ok" if ready else "unavailable", "checks": checks})
        await send_bytes(send, 200 if ready else 503, body, [(b"x-request-id", rid.encode())])
