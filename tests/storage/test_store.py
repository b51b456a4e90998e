"""Store queries on SQLite and PostgreSQL: keys, teams, usage, exact cost reports, prompts."""

from __future__ import annotations

import random
import time
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.exc import SQLAlchemyError

from llmgate.cost import format_usd
from llmgate.keys import hash_secret
from llmgate.storage import DuplicateError, MissingError, Store


def usage_row(ts: datetime | str, key_id: str | None = "key_a", **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "ts": ts,
        "request_id": f"req_{random.randrange(10**9)}",
        "key_id": key_id,
        "key_name": f"name-{key_id}",
        "team": None,
        "surface": "chat",
        "model": "gpt-4o-mini",
        "deployment": "openai/gpt-4o-mini",
        "provider": "openai",
        "status": 200,
        "input_tokens": 0,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
        "cost_nusd": 0,
        "latency_ms": 12.5,
        "ttft_ms": None,
        "estimated": False,
        "prompt_name": None,
        "prompt_version": None,
        "error_code": None,
    }
    row.update(fields)
    return row


def at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


# -- keys ----------------------------------------------------------------------------------------


def test_create_key_returns_the_secret_once_and_stores_only_its_hash(store: Store) -> None:
    record, secret = store.create_key(name="svc", team="search", models=["gpt-4o-mini"], rpm=60)
    assert secret.startswith("sk-lg-") and len(secret) > 40
    assert record["id"].startswith("key_") and len(record["id"]) == 16
    assert secret.startswith(record["display_prefix"]) and len(record["display_prefix"]) == 14
    assert secret not in repr(record) and "key_hash" not in record
    assert store.get_key_by_hash(hash_secret(secret)) == record
    assert store.get_key_by_hash(hash_secret(secret + "x")) is None
    assert store.get_key(record["id"]) == record
    assert record["models"] == ["gpt-4o-mini"] and record["rpm"] == 60 and record["revoked"] is False


def test_two_keys_never_share_a_secret_or_id(store: Store) -> None:
    (a, sa), (b, sb) = store.create_key(name="a"), store.create_key(name="b")
    assert a["id"] != b["id"] and sa != sb


def test_key_fields_round_trip_exactly(store: Store) -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    record, _ = store.create_key(
        name="exact",
        budget_usd=Decimal("12.345678901"),
        budget_period="week",
        expires_at=expires,
        metadata={"owner": "ana", "tags": ["a", "b"]},
        prompts=("summarize",),
        tpd=10_000_000_000,
    )
    got = store.get_key(record["id"])
    assert got["budget_usd"] == "12.345678901"
    assert got["expires_at"] == expires and got["expires_at"].tzinfo == UTC
    assert got["metadata"] == {"owner": "ana", "tags": ["a", "b"]}
    assert got["prompts"] == ["summarize"] and got["tpd"] == 10_000_000_000


def test_create_key_refuses_store_owned_fields(store: Store) -> None:
    for field in ("revoked", "key_hash", "id", "display_prefix"):
        with pytest.raises(ValueError, match=field):
            store.create_key(name="x", **{field: "y"})
    with pytest.raises(ValueError, match="name"):
        store.create_key(team="t")
    with pytest.raises(ValueError, match="budget_usd"):
        store.create_key(name="x", budget_usd="-1")


def test_update_key_sets_and_clears_fields(store: Store) -> None:
    record, _ = store.create_key(name="u", rpm=10, team="t")
    updated = store.update_key(record["id"], rpm=20, team=None, budget_usd="5")
    assert updated["rpm"] == 20 and updated["team"] is None and updated["budget_usd"] == "5"
    assert updated["updated_at"] >= record["updated_at"]
    assert store.get_key(record["id"]) == updated
    assert store.update_key("key_missing", rpm=1) is None
    with pytest.raises(ValueError, match="revoked"):
        store.update_key(record["id"], revoked=False)


def test_revoke_key_is_permanent_and_hidden_from_listings(store: Store) -> None:
    kept, _ = store.create_key(name="kept", team="t")
    gone, secret = store.create_key(name="gone", team="t")
    revoked = store.revoke_key(gone["id"])
    assert revoked["revoked"] is True and revoked["revoked_at"] is not None
    assert store.get_key_by_hash(hash_secret(secret))["revoked"] is True
    assert [k["id"] for k in store.list_keys()] == [kept["id"]]
    assert {k["id"] for k in store.list_keys(include_revoked=True)} == {kept["id"], gone["id"]}
    assert store.revoke_key(gone["id"])["revoked_at"] == revoked["revoked_at"]
    assert store.revoke_key("key_missing") is None


def test_list_keys_by_team(store: Store) -> None:
    a, _ = store.create_key(name="a", team="red")
    store.create_key(name="b", team="blue")
    assert [k["id"] for k in store.list_keys(team="red")] == [a["id"]]
    assert len(store.list_keys()) == 2


# -- teams ---------------------------------------------------------------------------------------


def test_team_crud(store: Store) -> None:
    team = store.create_team("red", description="Red team", rpm=100, budget_usd="50.25", metadata={"cc": 7})
    assert team["budget_usd"] == "50.25" and team["metadata"] == {"cc": 7}
    with pytest.raises(DuplicateError):
        store.create_team("red")
    store.create_team("blue")
    assert [t["name"] for t in store.list_teams()] == ["blue", "red"]
    assert store.update_team("red", rpm=5)["rpm"] == 5
    assert store.get_team("red")["rpm"] == 5
    assert store.update_team("green", rpm=5) is None
    with pytest.raises(ValueError, match="created_at"):
        store.update_team("red", created_at="2020-01-01")
    assert store.delete_team("red") is True
    assert store.delete_team("red") is False
    assert store.get_team("red") is None


# -- usage and reports ---------------------------------------------------------------------------


def test_insert_usage_accepts_aware_datetimes_and_iso_strings(store: Store) -> None:
    store.insert_usage(
        [
            usage_row("2026-03-01T23:30:00-02:00", cost_nusd=1),  # 01:30 UTC on March 2nd
            usage_row(at("2026-03-01"), cost_nusd=2),
            usage_row("2026-03-01T00:00:00Z", cost_nusd=4),
        ]
    )
    rows = store.cost_report(["day"], None, None)
    assert [(r["day"], r["cost_nusd"]) for r in rows] == [("2026-03-01", 6), ("2026-03-02", 1)]


def test_insert_usage_rejects_unknown_columns_and_raises_on_db_failure(store: Store) -> None:
    with pytest.raises(ValueError, match="cached_tokens"):
        store.insert_usage([usage_row(at("2026-03-01"), cached_tokens=3)])
    with pytest.raises(SQLAlchemyError):
        store.insert_usage([usage_row(at("2026-03-01"), cost_nusd=1), usage_row(at("2026-03-01"), status=None)])
    assert store.cost_report([], None, None)[0]["requests"] == 0  # the whole batch rolled back


def test_insert_usage_cuts_overlong_text_instead_of_failing_the_batch(store: Store) -> None:
    store.insert_usage([usage_row(at("2026-03-01"), key_name="n" * 5000, model="m" * 500, cost_nusd=3)])
    [row] = store.cost_report(["key", "model"], None, None)
    assert row["key_name"] == "n" * 200 and row["model"] == "m" * 200 and row["cost_nusd"] == 3


def known_calls() -> list[dict[str, Any]]:
    """Calls whose costs come from known prices (nano-USD), across keys, teams, models, days."""
    return [
        usage_row(at("2026-03-01", 0), "key_a", team="red", input_tokens=1000, output_tokens=200, cost_nusd=270_000),
        usage_row(at("2026-03-01", 23), "key_a", team="red", model="claude", input_tokens=10, cost_nusd=30_001),
        usage_row(at("2026-03-02", 9), "key_b", team="red", cached_input_tokens=50, input_tokens=100, cost_nusd=11),
        usage_row(at("2026-03-02", 10), "key_b", team="red", status=429, error_code="rate_limit_exceeded"),
        usage_row(at("2026-03-03", 0), "key_c", team=None, output_tokens=5, reasoning_tokens=3, cost_nusd=999_999),
        usage_row(at("2026-03-04", 1), "key_c", status=502, prompt_name="summarize", prompt_version=2),
        usage_row(at("2026-03-04", 2), "key_c", prompt_name="summarize", cost_nusd=123_456_789_012),
    ]


def test_report_totals_equal_the_sum_of_the_calls(store: Store) -> None:
    calls = known_calls()
    store.insert_usage(calls)
    for group_by in (["key"], ["team"], ["model"], ["day"], ["prompt"], ["key", "day"], ["team", "model", "day"]):
        rows = store.cost_report(group_by, None, None)
        assert sum(r["cost_nusd"] for r in rows) == sum(c["cost_nusd"] for c in calls)
        assert sum(r["requests"] for r in rows) == len(calls)
        assert sum(r["errors"] for r in rows) == 2
        assert sum(r["input_tokens"] for r in rows) == 1110
        for row in rows:
            assert row["cost_usd"] == format_usd(row["cost_nusd"])
            assert Decimal(row["cost_usd"]) * 10**9 == row["cost_nusd"]


def test_report_groups(store: Store) -> None:
    store.insert_usage(known_calls())
    by_key = {r["key_id"]: r for r in store.cost_report(["key"], None, None)}
    assert by_key["key_a"] == {
        "key_id": "key_a",
        "key_name": "name-key_a",
        "requests": 2,
        "errors": 0,
        "input_tokens": 1010,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 200,
        "reasoning_tokens": 0,
        "cost_nusd": 300_001,
        "cost_usd": "0.000300001",
    }
    assert by_key["key_b"]["errors"] == 1 and by_key["key_b"]["cached_input_tokens"] == 50
    by_team = {r["team"]: r["cost_nusd"] for r in store.cost_report(["team"], None, None)}
    assert by_team == {"red": 300_012, None: 123_457_789_011}
    by_prompt = {r["prompt_name"]: r["requests"] for r in store.cost_report(["prompt"], None, None)}
    assert by_prompt == {None: 5, "summarize": 2}
    key_day = [(r["key_id"], r["day"], r["requests"]) for r in store.cost_report(["key", "day"], None, None)]
    assert key_day == [
        ("key_a", "2026-03-01", 2),
        ("key_b", "2026-03-02", 2),
        ("key_c", "2026-03-03", 1),
        ("key_c", "2026-03-04", 2),
    ]
    model_first = store.cost_report(["model", "key"], None, None)
    assert list(model_first[0])[:3] == ["model", "key_id", "key_name"]
    assert [(r["model"], r["key_id"]) for r in model_first][:1] == [("claude", "key_a")]


def test_report_date_bounds_are_whole_utc_days_inclusive(store: Store) -> None:
    store.insert_usage(known_calls())
    days = [r["day"] for r in store.cost_report(["day"], date(2026, 3, 2), date(2026, 3, 3))]
    assert days == ["2026-03-02", "2026-03-03"]
    only_first = store.cost_report([], date(2026, 3, 1), date(2026, 3, 1))[0]
    assert only_first["requests"] == 2 and only_first["cost_nusd"] == 300_001  # 00:00 and 23:00 both in
    assert store.cost_report([], date(2026, 3, 5), None)[0]["requests"] == 0
    assert store.cost_report([], None, date(2026, 2, 28))[0]["cost_nusd"] == 0


def test_report_for_one_key(store: Store) -> None:
    store.insert_usage(known_calls())
    rows = store.cost_report(["model"], None, None, key_id="key_a")
    assert [(r["model"], r["cost_nusd"]) for r in rows] == [("claude", 30_001), ("gpt-4o-mini", 270_000)]


def test_report_refuses_unknown_groups(store: Store) -> None:
    with pytest.raises(ValueError, match="provider"):
        store.cost_report(["key", "provider"], None, None)


def test_spend_and_tokens_since(store: Store) -> None:
    store.insert_usage(known_calls())
    since = at("2026-03-02", 0)
    assert store.spend_by_key(since) == {"key_b": 11, "key_c": 123_457_789_011}
    assert store.spend_by_team(since) == {"red": 11}
    assert store.tokens_by_key(since) == {"key_b": 100, "key_c": 5}


def test_spend_since_a_time_of_day_counts_only_the_calls_after_it(store: Store) -> None:
    store.insert_usage(known_calls())
    midday = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert store.spend_by_key(midday) == {"key_a": 30_001, "key_b": 11, "key_c": 123_457_789_011}
    assert store.spend_by_team(midday) == {"red": 30_012}
    assert store.tokens_by_key(midday) == {"key_a": 10, "key_b": 100, "key_c": 5}
    in_another_zone = datetime(2026, 3, 2, 11, 30, tzinfo=timezone(timedelta(hours=2)))  # 09:30 UTC
    assert store.spend_by_key(in_another_zone) == {"key_b": 0, "key_c": 123_457_789_011}


def test_a_year_of_usage_for_a_thousand_keys_reports_exactly(store: Store) -> None:
    rng = random.Random(7)
    start = at("2025-01-01", 0)
    calls = [
        usage_row(
            start + timedelta(minutes=rng.randrange(365 * 24 * 60)),
            f"key_{rng.randrange(1000):04d}",
            cost_nusd=rng.randrange(10**9),
            input_tokens=rng.randrange(5000),
        )
        for _ in range(20_000)
    ]
    for i in range(0, len(calls), 5000):
        store.insert_usage(calls[i : i + 5000])
    began = time.perf_counter()
    rows = store.cost_report(["key", "day"], date(2025, 1, 1), date(2025, 12, 31))
    elapsed = time.perf_counter() - began
    assert sum(r["cost_nusd"] for r in rows) == sum(c["cost_nusd"] for c in calls)
    assert len({r["key_id"] for r in rows}) == 1000
    one = store.cost_report([], None, None, key_id="key_0042")[0]
    assert one["cost_nusd"] == sum(c["cost_nusd"] for c in calls if c["key_id"] == "key_0042")
    assert elapsed < 5.0


# -- prompts -------------------------------------------------------------------------------------


def test_prompt_versions_are_immutable_and_deduplicated(store: Store) -> None:
    v1 = store.add_prompt_version("greet", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "file")
    again = store.add_prompt_version("greet", {"messages": [{"role": "user", "content": "hi"}], "model": "m"}, "api")
    v2 = store.add_prompt_version("greet", {"model": "m2"}, "api")
    v3 = store.add_prompt_version("greet", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "api")
    assert (v1, again, v2, v3) == (1, 1, 2, 3)
    assert store.latest_prompt_version("greet") == 3
    assert store.latest_prompt_version("nope") is None
    got = store.get_prompt_version("greet", 2)
    assert got["document"] == {"model": "m2"} and got["source"] == "api" and got["created_at"].tzinfo == UTC
    assert store.get_prompt_version("greet", 9) is None
    assert [v["version"] for v in store.list_prompt_versions("greet")] == [1, 2, 3]


def test_prompt_sources_may_be_long_paths(store: Store) -> None:
    source = "file:/" + "deep/" * 100 + "prompt.toml"
    version = store.add_prompt_version("long", {"x": 1}, source)
    assert store.get_prompt_version("long", version)["source"] == source


def test_prompt_labels_and_delete(store: Store) -> None:
    store.add_prompt_version("a", {"x": 1}, "file")
    store.add_prompt_version("a", {"x": 2}, "file")
    store.add_prompt_version("b", {"x": 1}, "file")
    store.set_prompt_label("a", "prod", 1)
    store.set_prompt_label("a", "staging", 2)
    store.set_prompt_label("a", "prod", 2)
    assert store.prompt_labels("a") == {"prod": 2, "staging": 2}
    with pytest.raises(MissingError):
        store.set_prompt_label("a", "prod", 7)
    assert store.list_prompt_names() == ["a", "b"]
    assert store.delete_prompt("a") is True
    assert store.delete_prompt("a") is False
    assert store.prompt_labels("a") == {} and store.list_prompt_names() == ["b"]


def test_ping_and_close(store: Store) -> None:
    assert store.ping() is True
