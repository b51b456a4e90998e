"""Virtual keys: secrets, their hashes, and the store-backed authentication stage.

A secret is `sk-lg-` plus 256 random bits, shown once at creation; the store
keeps only its sha256 (a fast hash is enough for a secret of that entropy) and
a short display prefix for listings.

`StoreAuthenticator` answers the master key and config-listed keys from memory,
then looks a token's hash up in a small in-process cache, so the hot path does
not touch the database on every call. A miss asks the store in a thread (one
lookup per hash however many callers wait on it). Revocation on this instance
drops the cache entry at once; other instances see it within the cache TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from llmgate.config import Settings
from llmgate.errors import AuthError, GatewayError
from llmgate.gateway import MasterKeyAuthenticator
from llmgate.types import KeyInfo

if TYPE_CHECKING:
    from llmgate.storage import Store

SECRET_PREFIX = "sk-lg-"
_DISPLAY_CHARS = 8
# Unknown tokens are remembered briefly, so a flood of bad keys cannot reach the database.
_NEGATIVE_TTL_S = 1.0
_CACHE_MAX_ENTRIES = 10_000


def generate_secret() -> str:
    """A new key secret: the prefix plus 43 URL-safe characters (256 bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def generate_key_id() -> str:
    return f"key_{secrets.token_hex(6)}"


def hash_secret(secret: str) -> str:
    """The stored form of a secret: its sha256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """The part of a secret safe to show in listings (`sk-lg-` and 8 characters)."""
    return secret[: len(SECRET_PREFIX) + _DISPLAY_CHARS]


def build_key_info(record: dict[str, Any]) -> KeyInfo:
    """The pipeline's view of a stored key record."""
    expires_at: datetime | None = record.get("expires_at")
    models = record.get("models")
    prompts = record.get("prompts")
    return KeyInfo(
        id=record["id"],
        name=record["name"],
        team=record.get("team"),
        models=tuple(models) if models is not None else None,
        prompts=tuple(prompts) if prompts is not None else None,
        rpm=record.get("rpm"),
        rps=record.get("rps"),
        tpm=record.get("tpm"),
        tpd=record.get("tpd"),
        max_concurrency=record.get("max_concurrency"),
        max_wait_ms=record.get("max_wait_ms"),
        budget_usd=record.get("budget_usd"),
        budget_period=record.get("budget_period"),
        priority=record.get("priority"),
        expires_at=expires_at.timestamp() if expires_at is not None else None,
        metadata=record.get("metadata"),
    )


@dataclass(slots=True)
class _CacheEntry:
    fresh_until: float  # time.monotonic()
    key: KeyInfo | None  # None: no such key
    revoked: bool = False


class KeyStoreUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "key_store_unavailable"


class StoreAuthenticator:
    """Master key, config keys, then virtual keys from the store (cached by hash)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self._static = MasterKeyAuthenticator(settings)
        self._ttl = settings.gateway.key_cache_ttl_s
        self._negative_ttl = min(self._ttl, _NEGATIVE_TTL_S)
        self._cache: OrderedDict[str, _CacheEntry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[_CacheEntry]] = {}
        self._generation = 0  # bumped by invalidate(): lookups begun before it are not cached

    async def authenticate(self, token: str | None) -> KeyInfo:
        if not token:
            raise AuthError("Missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`.")
        key_hash = hash_secret(token)
        entry = self._cache.get(key_hash)
        if entry is not None and entry.fresh_until > time.monotonic():
            return _check(entry)
        # The master and config keys never enter the cache, so they are checked on every miss.
        try:
            return await self._static.authenticate(token)
        except AuthError:
            pass
        return _check(await self._refresh(key_hash, entry))

    def invalidate(self, key_id: str | None = None, key_hash: str | None = None) -> None:
        """Forget cached lookups of a key (by id, or by the hash of its secret), so a
        revocation or an edit takes effect on this instance at once."""
        self._generation += 1
        if key_hash is not None:
            self._cache.pop(key_hash, None)
        if key_id is not None:
            for cached_hash in [h for h, e in self._cache.items() if e.key is not None and e.key.id == key_id]:
                del self._cache[cached_hash]

    async def _refresh(self, key_hash: str, stale: _CacheEntry | None) -> _CacheEntry:
        pending = self._inflight.get(key_hash)
        if pending is None:
            pending = asyncio.ensure_future(self._load(key_hash, stale))
            self._inflight[key_hash] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(key_hash, None))
        return await asyncio.shield(pending)

    async def _load(self, key_hash: str, stale: _CacheEntry | None) -> _CacheEntry:
        generation = self._generation
        try:
            record = await asyncio.to_thread(self.store.get_key_by_hash, key_hash)
        except Exception as exc:
            # Database down: a key known a moment ago keeps working; an unknown one cannot be checked.
            if stale is not None and stale.key is not None:
                return self._remember(key_hash, stale.key, stale.revoked, self._ttl, generation)
            raise KeyStoreUnavailable("The key store is unavailable; try again shortly.") from exc
        if record is None:
            return self._remember(key_hash, None, False, self._negative_ttl, generation)
        return self._remember(key_hash, build_key_info(record), bool(record["revoked"]), self._ttl, generation)

    def _remember(self, key_hash: str, key: KeyInfo | None, revoked: bool, ttl: float, generation: int) -> _CacheEntry:
        entry = _CacheEntry(fresh_until=time.monotonic() + ttl, key=key, revoked=revoked)
        if generation != self._generation:
            return entry  # invalidated while this lookup ran: the answer may predate the change
        self._cache[key_hash] = entry
        self._cache.move_to_end(key_hash)
        while len(self._cache) > _CACHE_MAX_ENTRIES:
            self._cache.popitem(last=False)
        return entry


def _check(entry: _CacheEntry) -> KeyInfo:
    key = entry.key
    if key is None:
        raise AuthError("Invalid API key.")
    if entry.revoked:
        raise AuthError("This API key has been revoked.")
    if key.expires_at is not None and key.expires_at <= time.time():
        raise AuthError("This API key has expired.")
    return key
