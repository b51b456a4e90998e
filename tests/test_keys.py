"""Key secrets and the store-backed authenticator: cache hits never touch the database, revocation is immediate."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from llmgate import keys
from llmgate.config import Settings, parse_settings
from llmgate.errors import AuthError, GatewayError
from llmgate.gateway import MASTER_KEY
from llmgate.keys import StoreAuthenticator, build_key_info, display_prefix, generate_secret, hash_secret
from llmgate.storage import Store, create_store

MASTER = "mk-test-master"


class CountingStore:
    """The real store, counting key lookups; `down` makes them fail like an unreachable database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lookups = 0
        self.down = False

    def get_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        self.lookups += 1
        if self.down:
            raise ConnectionError("database unreachable")
        return self.store.get_key_by_hash(key_hash)


def settings(ttl: float = 5.0) -> Settings:
    return parse_settings(
        {
            "gateway": {"master_key": MASTER, "key_cache_ttl_s": ttl},
            "keys": [{"key": "cfg-secret", "name": "from-config", "team": "ops", "rpm": 7}],
        },
        "test",
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = create_store(f"sqlite:///{tmp_path}/keys.db")
    store.upgrade()
    yield store
    store.close()


@pytest.fixture
def counting(store: Store) -> CountingStore:
    return CountingStore(store)


def test_secrets_are_prefixed_random_and_hashed_with_sha256() -> None:
    secrets = {generate_secret() for _ in range(100)}
    assert len(secrets) == 100
    secret = secrets.pop()
    assert secret.startswith("sk-lg-") and len(secret) == len("sk-lg-") + 43
    assert hash_secret(secret) == hashlib.sha256(secret.encode()).hexdigest()
    assert display_prefix(secret) == secret[:14]


def test_build_key_info_from_a_record() -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    info = build_key_info(
        {
            "id": "key_1",
            "name": "n",
            "team": "t",
            "models": ["a", "b"],
            "prompts": None,
            "rpm": 5,
            "budget_usd": "1.5",
            "budget_period": "day",
            "priority": "batch",
            "expires_at": expires,
            "metadata": {"m": 1},
        }
    )
    assert info.models == ("a", "b") and info.prompts is None and info.rpm == 5 and info.tpm is None
    assert info.budget_usd == "1.5" and info.expires_at == expires.timestamp() and not info.is_master
    assert info.may_use_model("a") and not info.may_use_model("c")


async def test_master_and_config_keys_need_no_database(counting: CountingStore) -> None:
    auth = StoreAuthenticator(counting, settings())
    assert await auth.authenticate(MASTER) is MASTER_KEY
    config_key = await auth.authenticate("cfg-secret")
    assert config_key.name == "from-config" and config_key.rpm == 7
    assert counting.lookups == 0
    for token in (None, ""):
        with pytest.raises(AuthError, match="Missing"):
            await auth.authenticate(token)


async def test_a_cached_key_does_not_touch_the_database(store: Store, counting: CountingStore) -> None:
    record, secret = store.create_key(name="hot", team="t", models=["m"], rpm=9)
    auth = StoreAuthenticator(counting, settings())
    first = await auth.authenticate(secret)
    assert (first.id, first.team, first.models, first.rpm) == (record["id"], "t", ("m",), 9)
    for _ in range(50):
        assert await auth.authenticate(secret) is first
    assert counting.lookups == 1


async def test_unknown_keys_are_refused_and_remembered_briefly(counting: CountingStore) -> None:
    auth = StoreAuthenticator(counting, settings())
    for _ in range(5):
        with pytest.raises(AuthError, match="Invalid API key") as caught:
            await auth.authenticate("sk-lg-not-a-key")
    assert caught.value.status == 401
    assert counting.lookups == 1


async def test_the_cache_expires_after_its_ttl(store: Store, counting: CountingStore) -> None:
    _, secret = store.create_key(name="ttl")
    auth = StoreAuthenticator(counting, settings(ttl=0.05))
    await auth.authenticate(secret)
    await asyncio.sleep(0.08)
    await auth.authenticate(secret)
    assert counting.lookups == 2


async def test_revocation_on_this_instance_takes_effect_at_once(store: Store, counting: CountingStore) -> None:
    record, secret = store.create_key(name="gone")
    auth = StoreAuthenticator(counting, settings(ttl=60))
    await auth.authenticate(secret)
    store.revoke_key(record["id"])
    auth.invalidate(key_id=record["id"])
    with pytest.raises(AuthError, match="revoked"):
        await auth.authenticate(secret)


async def test_a_lookup_racing_a_revocation_is_not_cached(store: Store) -> None:
    record, secret = store.create_key(name="racing")
    read, release = threading.Event(), threading.Event()

    class SlowStore:
        """Reads the key, then stalls before answering: the revocation lands in between."""

        def get_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
            found = store.get_key_by_hash(key_hash)
            read.set()
            release.wait(5)
            return found

    auth = StoreAuthenticator(SlowStore(), settings(ttl=60))
    lookup = asyncio.ensure_future(auth.authenticate(secret))
    await asyncio.to_thread(read.wait, 5)
    store.revoke_key(record["id"])
    auth.invalidate(key_id=record["id"])
    release.set()
    assert (await lookup).id == record["id"]  # began before the revocation
    with pytest.raises(AuthError, match="revoked"):
        await auth.authenticate(secret)


async def test_revocation_elsewhere_takes_effect_within_the_ttl(store: Store, counting: CountingStore) -> None:
    record, secret = store.create_key(name="gone-elsewhere")
    auth = StoreAuthenticator(counting, settings(ttl=0.1))
    await auth.authenticate(secret)
    store.revoke_key(record["id"])  # another instance revoked it: this one was not told
    await auth.authenticate(secret)
    await asyncio.sleep(0.15)
    with pytest.raises(AuthError, match="revoked"):
        await auth.authenticate(secret)


async def test_expired_keys_are_refused_even_from_the_cache(store: Store, counting: CountingStore) -> None:
    _, old = store.create_key(name="old", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    _, soon = store.create_key(name="soon", expires_at=datetime.now(UTC) + timedelta(seconds=0.3))
    auth = StoreAuthenticator(counting, settings(ttl=60))
    with pytest.raises(AuthError, match="expired"):
        await auth.authenticate(old)
    await auth.authenticate(soon)
    await asyncio.sleep(0.35)
    with pytest.raises(AuthError, match="expired"):
        await auth.authenticate(soon)


async def test_concurrent_misses_share_one_lookup(store: Store, counting: CountingStore) -> None:
    _, secret = store.create_key(name="herd")
    auth = StoreAuthenticator(counting, settings())
    found = await asyncio.gather(*(auth.authenticate(secret) for _ in range(20)))
    assert len({k.id for k in found}) == 1
    assert counting.lookups == 1


async def test_database_outage_keeps_known_keys_and_refuses_unknown_ones(store: Store, counting: CountingStore) -> None:
    _, secret = store.create_key(name="known")
    auth = StoreAuthenticator(counting, settings(ttl=0.01))
    await auth.authenticate(secret)
    counting.down = True
    await asyncio.sleep(0.02)
    assert (await auth.authenticate(secret)).name == "known"
    with pytest.raises(GatewayError) as caught:
        await auth.authenticate("sk-lg-never-seen")
    assert caught.value.status == 503 and caught.value.code == "key_store_unavailable"


async def test_the_cache_is_bounded(store: Store, counting: CountingStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "_CACHE_MAX_ENTRIES", 3)
    auth = StoreAuthenticator(counting, settings())
    for i in range(10):
        with pytest.raises(AuthError):
            await auth.authenticate(f"sk-lg-bogus-{i}")
    assert len(auth._cache) == 3


async def test_a_cached_lookup_is_fast(store: Store, counting: CountingStore) -> None:
    _, secret = store.create_key(name="fast")
    auth = StoreAuthenticator(counting, settings())
    await auth.authenticate(secret)
    began = time.perf_counter()
    for _ in range(10_000):
        await auth.authenticate(secret)
    assert (time.perf_counter() - began) / 10_000 < 50e-6
