"""The app factory: wires settings, the upstream client and the surfaces.

The proxied surfaces are raw ASGI handlers found by an exact (method, path)
lookup, so the hot path pays for no framework routing; everything else (admin,
prompts, dashboard, OpenAPI docs) is a FastAPI app behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from typing import Any

from llmgate.config import Settings
from llmgate.gateway import Gateway, MasterKeyAuthenticator
from llmgate.keys import StoreAuthenticator
from llmgate.logs import RequestLogger, configure_logging, register_settings_secrets, reset_logging
from llmgate.looplag import LoopLagMonitor, monitor_enabled
from llmgate.metrics import Metrics
from llmgate.prices import CatalogPriceBook, PriceCatalog
from llmgate.prompting import reload_prompts, start_prompt_service
from llmgate.routing import Router, build_providers
from llmgate.storage import create_store
from llmgate.surfaces.anthropic import AnthropicSurface
from llmgate.surfaces.health import HealthSurface
from llmgate.surfaces.http import BodyLimits, Handler, Receive, Scope, Send, set_header_bounds
from llmgate.surfaces.openai import OpenAISurface
from llmgate.throttle import build_limiter
from llmgate.upstream import UpstreamClient
from llmgate.usage import UsageSinks, UsageWriter

log = logging.getLogger("llmgate")


GC_YOUNG_THRESHOLD = 10_000


def freeze_startup_heap() -> None:
    """Move everything start-up allocated (modules, settings, pools) out of the collector's sight.

    Those objects live as long as the process, yet every full collection walked
    them all: with the default thresholds one would stall the event loop for
    100-200 ms in the middle of traffic (measured by tests/reliability/test_load.py).
    Frozen, a full collection only walks what calls allocate.

    The young generation's threshold is raised too: nearly every object a call
    allocates is freed by reference counting, but the objects of the calls in
    flight keep the default count of 700 crossed, so a young collection ran every
    few calls and walked them all (~20 us per call at 32 in flight, bench/profile_app.py);
    at 10,000 one runs every few thousand calls.

    Last, glibc is asked to hand back the free pages start-up left in its heap
    (`malloc_trim`, about 1.5 MB of resident memory); elsewhere this is skipped.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def build_gateway(settings: Settings) -> Gateway:
    """The services that need no I/O to build: providers, router, prices."""
    providers = build_providers(settings)
    for name, provider in providers.items():
        if provider.settings.disabled_reason:
            log.warning("provider %r is disabled: %s", name, provider.settings.disabled_reason)
    prices = CatalogPriceBook(PriceCatalog.load())
    router = Router(settings, providers)
    router.use_prices(prices.price_for)
    return Gateway(
        settings=settings,
        client=UpstreamClient(),
        router=router,
        auth=MasterKeyAuthenticator(settings),
        prices=prices,
    )


async def start_limiter(gw: Gateway) -> None:
    """The throttling engine (memory or Redis), its spend counters raised to the usage records."""
    settings = gw.settings
    limiter = build_limiter(settings, price_of=gw.prices.price_of_model, redis_prefix=settings.gateway.redis_prefix)
    await limiter.start()
    store = gw.store
    await limiter.reconcile_from_usage(store.spend_by_key, store.spend_by_team, store.tokens_by_key)
    for team in await asyncio.to_thread(store.list_teams):
        limiter.set_team_limits(team["name"], team)
    gw.limiter = limiter


async def open_store(gw: Gateway) -> None:
    """Connect the database, bring its schema up to date, and authenticate keys from it."""
    store = create_store(gw.settings.gateway.database_url)
    await asyncio.to_thread(store.upgrade)
    gw.store = store
    gw.auth = StoreAuthenticator(store, gw.settings)


def start_recording(gw: Gateway) -> Metrics:
    """Usage records, metrics and the request log: the sinks every settled call reaches."""
    settings = gw.settings
    deployments = [d for group in gw.router.groups.values() for d in group]
    unpriced = gw.prices.unpriced(deployments)
    if unpriced:
        log.warning("no price for %s: their calls cost 0 (set `price` in config)", ", ".join(unpriced))
    metrics = Metrics(known_models=gw.router.groups)
    gw.router.on_cooldown = metrics.cooldown
    gw.router.on_upstream_error = metrics.upstream_error
    writer = UsageWriter.from_settings(gw.store.insert_usage, settings.gateway)
    writer.start()
    metrics.bind_usage_writer(writer)
    stats = getattr(gw.limiter, "stats", None)
    if stats is not None:
        metrics.bind_limiter_stats(stats)
    request_log = RequestLogger() if settings.gateway.log_requests else None
    if request_log is not None:
        request_log.start()
    gw.usage = UsageSinks(writer, metrics, request_log)
    gw.extras.update(metrics=metrics, usage_writer=writer, request_log=request_log)
    if monitor_enabled():
        loop_lag = LoopLagMonitor()
        loop_lag.start()
        metrics.bind_loop_lag(loop_lag)
        gw.extras["loop_lag"] = loop_lag
    return metrics


class GatewayApp:
    """The ASGI application: hot-path routes, then FastAPI for the rest."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gw: Gateway | None = None
        self.routes: dict[tuple[str, str], Handler] = {}
        self.prefix_routes: list[tuple[str, str, Handler]] = []
        self._api: Any = None  # FastAPI, built on first use (see `api`)
        self._bounded_api: BodyLimits | None = None
        self._api_building: asyncio.Future[Any] | None = None

    @property
    def api(self) -> Any:
        """The FastAPI app for admin, prompts and the dashboard.

        Built on first use, not at start-up: importing FastAPI and the admin
        surfaces costs about 0.7 s and 10 MB that the proxied routes never need.
        """
        if self._api is None:
            self._api = build_api(self.gw)
        return self._api

    async def _admin_app(self) -> Any:
        """`api` behind the body bounds (413/408 before any handler runs), built in a thread
        the first time so the event loop keeps serving meanwhile."""
        if self._bounded_api is not None:
            return self._bounded_api
        g = self.settings.gateway
        self._bounded_api = BodyLimits(await self._build_api(), g.max_body_bytes, g.body_timeout_s)
        return self._bounded_api

    async def _build_api(self) -> Any:
        if self._api is not None:
            return self._api
        if self._api_building is None:
            self._api_building = asyncio.ensure_future(asyncio.to_thread(build_api, self.gw))
        api = await asyncio.shield(self._api_building)
        if self._api is None:
            self._api = api
        return self._api

    async def startup(self) -> None:
        register_settings_secrets(self.settings)
        g = self.settings.gateway
        set_header_bounds(g.max_header_bytes, g.header_timeout_s)
        configure_logging(os.environ.get("LLMGATE_LOG_LEVEL", "INFO"))
        gw = build_gateway(self.settings)
        self.gw = gw
        if self._api is not None:
            self._api.state.gateway = gw
        await open_store(gw)
        await start_limiter(gw)
        await start_prompt_service(gw)
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread (tests)
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(reload_prompts(gw))
            )
        metrics = start_recording(gw)
        self.routes[("GET", "/metrics")] = metrics.asgi
        self.routes[("HEAD", "/metrics")] = metrics.asgi
        openai = OpenAISurface(gw)
        health = HealthSurface(gw)
        for path in ("/v1/chat/completions", "/chat/completions"):
            self.routes[("POST", path)] = openai.chat
        for path in ("/v1/embeddings", "/embeddings"):
            self.routes[("POST", path)] = openai.embeddings
        anthropic = AnthropicSurface(gw)
        self.routes[("POST", "/v1/messages")] = anthropic.messages
        self.routes[("POST", "/v1/messages/count_tokens")] = anthropic.count_tokens
        self.routes[("GET", "/v1/models")] = openai.models
        self.prefix_routes.append(("GET", "/v1/models/", openai.models))
        self.routes[("GET", "/health")] = health.live
        self.routes[("GET", "/health/ready")] = health.ready
        freeze_startup_heap()

    async def shutdown(self) -> None:
        """After uvicorn has let in-flight requests finish: flush records, close connections."""
        gw = self.gw
        if gw is not None:
            loop_lag = gw.extras.get("loop_lag")
            if loop_lag is not None:
                await loop_lag.aclose()
            writer = gw.extras.get("usage_writer")
            if writer is not None:
                await writer.aclose(timeout=self.settings.gateway.shutdown_grace_s)
            request_log = gw.extras.get("request_log")
            if request_log is not None:
                await request_log.aclose()
            await gw.client.aclose()
            close_limiter = getattr(gw.limiter, "close", None)
            if close_limiter is not None:
                await close_limiter()
            if gw.store is not None:
                gw.store.close()
        reset_logging()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            path = scope["path"]
            handler = self.routes.get((method, path))
            if handler is None:
                for m, prefix, h in self.prefix_routes:
                    if m == method and path.startswith(prefix):
                        handler = h
                        break
            if handler is not None:
                await handler(scope, receive, send)
                return
            await (await self._admin_app())(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await (await self._admin_app())(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: dict[str, Any] = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return


def build_api(gw: Gateway | None) -> Any:
    """The FastAPI app behind the hot-path routes: admin, prompts, deployments, dashboard."""
    from fastapi import FastAPI

    from llmgate.surfaces import admin, dashboard, deployments
    from llmgate.surfaces.admin import install_error_handlers
    from llmgate.surfaces.prompts import install_prompt_surface

    api = FastAPI(title="llmgate", version="0.1.0")
    api.include_router(admin.router)
    api.include_router(dashboard.router)
    api.include_router(deployments.router)
    install_error_handlers(api)
    install_prompt_surface(api)
    if gw is not None:
        api.state.gateway = gw
    return api


def create_app(settings: Settings) -> GatewayApp:
    return GatewayApp(settings)


def app_from_env() -> GatewayApp:
    """The uvicorn factory (`llmgate serve` sets LLMGATE_CONFIG; workers import this)."""
    import os

    from llmgate.config import load_settings

    return create_app(load_settings(os.environ.get("LLMGATE_CONFIG", "config.toml")))
