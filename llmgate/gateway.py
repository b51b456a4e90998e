"""The services one running gateway holds, and the seams the pipeline calls.

`Gateway` is built by the app lifespan and handed to every stage. Each seam is a
small protocol so throttling, usage recording and key storage plug in without
touching the surfaces or the pipeline.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmgate.config import Price, Settings
from llmgate.errors import AuthError
from llmgate.types import KeyInfo, RequestContext


class Authenticator(Protocol):
    async def authenticate(self, token: str | None) -> KeyInfo:
        """The key for a caller's secret; raises AuthError for a missing, unknown,
        revoked or expired one."""
        ...


class Limiter(Protocol):
    async def admit(self, ctx: RequestContext) -> None:
        """Reserve capacity for the call (may wait up to `max_wait_ms`); sets
        `ctx.admission` and the rate-limit headers; raises Throttled/QuotaExceeded."""
        ...

    async def settle(self, ctx: RequestContext) -> None:
        """Settle `ctx.admission` to `ctx.usage` and `ctx.cost_nusd` (refund or charge)."""
        ...


class UsageSink(Protocol):
    def record(self, ctx: RequestContext) -> None:
        """Queue the call's usage record; never blocks, never raises."""
        ...


class PriceBook:
    """Prices per deployment: the model's own `price` from config (the catalog of
    `providers/prices.toml` fills in what config leaves out)."""

    def price_for(self, deployment: Any) -> Price | None:
        return deployment.model.price


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class MasterKeyAuthenticator:
    """The master key (an admin key that may use every model) and keys listed in config."""

    def __init__(self, settings: Settings) -> None:
        self._master = settings.gateway.master_key
        self._keys: dict[str, KeyInfo] = {}  # sha256 of the secret -> key: no plaintext kept
        for i, k in enumerate(settings.keys):
            if k.key:
                self._keys[_digest(k.key)] = KeyInfo(
                    id=f"config-{i}",
                    name=k.name,
                    team=k.team,
                    models=k.models,
                    priority=k.priority,
                    rpm=k.rpm,
                    tpm=k.tpm,
                )

    async def authenticate(self, token: str | None) -> KeyInfo:
        if not token:
            raise AuthError("Missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`.")
        key = self._keys.get(_digest(token))
        if key is not None:
            return key
        if self._master and hmac.compare_digest(token.encode(), self._master.encode()):
            return MASTER_KEY
        raise AuthError("Invalid API key.")


MASTER_KEY = KeyInfo(id="master", name="master", is_master=True)


class UnlimitedLimiter:
    """Admits everything; the throttling engine replaces it."""

    async def admit(self, ctx: RequestContext) -> None:
        return None

    async def settle(self, ctx: RequestContext) -> None:
        return None


class DiscardingUsageSink:
    """Keeps nothing; the usage writer replaces it."""

    def record(self, ctx: RequestContext) -> None:
        return None


@dataclass
class Gateway:
    settings: Settings
    client: Any  # llmgate.upstream.UpstreamClient
    router: Any  # llmgate.routing.Router
    auth: Authenticator
    limiter: Limiter = field(default_factory=UnlimitedLimiter)
    usage: UsageSink = field(default_factory=DiscardingUsageSink)
    prices: PriceBook = field(default_factory=PriceBook)
    store: Any = None  # llmgate.storage.Store once the database is wired
    extras: dict[str, Any] = field(default_factory=dict)
