"""The request path, stage by stage: authenticate -> admit -> call (route + adapter) -> settle.

Surfaces build a RequestContext, `await run(ctx, gw)`, render what `call` left in
the context, and always `await settle(ctx, gw)` at the end (also after an error,
a cut-short stream or a client disconnect), so every call is settled and
recorded exactly once.
"""

from __future__ import annotations

import logging

from llmgate import calls
from llmgate.cost import cost_nusd, format_usd
from llmgate.errors import NotFound, PermissionDenied
from llmgate.gateway import Gateway
from llmgate.types import RequestContext

log = logging.getLogger("llmgate.pipeline")


async def run(ctx: RequestContext, gw: Gateway) -> None:
    await authenticate(ctx, gw)
    await admit(ctx, gw)
    await call(ctx, gw)


async def authenticate(ctx: RequestContext, gw: Gateway) -> None:
    """The caller's key (surfaces may have checked it before reading the body), then model access."""
    key = ctx.key
    if key is None:
        ctx.key = key = await gw.auth.authenticate(ctx.token)
    if not gw.router.has_model(ctx.model):
        raise NotFound(f"The model `{ctx.model}` does not exist or you do not have access to it.", param="model")
    if not key.may_use_model(ctx.model):
        raise PermissionDenied(f"This key may not use the model `{ctx.model}`.", param="model")


async def admit(ctx: RequestContext, gw: Gateway) -> None:
    await gw.limiter.admit(ctx)


async def call(ctx: RequestContext, gw: Gateway) -> None:
    """Route the call and run it (retries, fallbacks, streams: llmgate/calls.py)."""
    await calls.execute(ctx, gw)


def price(ctx: RequestContext, gw: Gateway) -> None:
    """Work out the call's status and cost. `settle` does it too; a surface calls it first
    when it answers before settling (the cost goes in a header)."""
    if ctx.error is not None:
        ctx.status = ctx.error.status
    dep = ctx.deployment
    usage = ctx.usage
    if usage is not None and dep is not None:
        ctx.cost_nusd = cost_nusd(gw.prices.price_for(dep), usage) if ctx.status < 400 or usage.estimated else 0


async def settle(ctx: RequestContext, gw: Gateway, priced: bool = False) -> None:
    """Charge the actual usage, work out the cost (unless `priced`: the surface ran `price`
    and changed nothing since), release the admission, record."""
    if ctx.settled:
        return
    ctx.settled = True
    if not priced:
        price(ctx, gw)
    if ctx.admission is not None:
        try:
            await gw.limiter.settle(ctx)
        except Exception:  # settling must never lose the record
            log.exception("limiter settle failed for request %s", ctx.request_id)
    gw.usage.record(ctx)


def response_headers(ctx: RequestContext) -> list[tuple[bytes, bytes]]:
    """The gateway's own headers for a proxied answer."""
    out = [(name.encode(), value.encode()) for name, value in ctx.headers.items()]
    dep = ctx.deployment
    if dep is not None:
        out.append((b"x-llmgate-deployment", dep.label.encode()))
        out.append((b"x-llmgate-attempts", str(ctx.attempts).encode()))
    return out


def cost_header(ctx: RequestContext) -> tuple[bytes, bytes]:
    return (b"x-llmgate-cost-usd", format_usd(ctx.cost_nusd).encode())
