"""UTC calendar periods for budgets: day, ISO week from Monday, month, total."""

from __future__ import annotations

from datetime import UTC, datetime

from llmgate.throttle.periods import PeriodClock, build_period_ids, build_period_starts


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_period_ids_follow_the_utc_calendar_and_iso_weeks():
    ids = build_period_ids(at("2026-11-25T23:59:59"))
    assert (ids.day, ids.week, ids.month, ids.total) == ("d2026-11-25", "w2026-W48", "m2026-11", "total")
    assert build_period_ids(at("2026-11-26T00:00:00")).day == "d2026-11-26"
    # 2027-01-01 is a Friday: still ISO week 53 of 2026; Monday 2027-01-04 starts 2027-W01.
    assert build_period_ids(at("2027-01-01T12:00:00")).week == "w2026-W53"
    assert build_period_ids(at("2027-01-04T00:00:00")).week == "w2027-W01"


def test_period_starts_are_what_the_store_sums_from():
    starts = build_period_starts(at("2026-11-25T15:30:00"))
    assert starts["day"] == datetime(2026, 11, 25, tzinfo=UTC)
    assert starts["week"] == datetime(2026, 11, 23, tzinfo=UTC)  # Monday
    assert starts["month"] == datetime(2026, 11, 1, tzinfo=UTC)
    assert starts["total"] == datetime(1970, 1, 1, tzinfo=UTC)


def test_the_period_clock_recomputes_only_when_the_day_changes():
    clock = PeriodClock()
    first = clock.ids(at("2026-11-25T00:00:01"))
    assert clock.ids(at("2026-11-25T23:00:00")) is first
    assert clock.ids(at("2026-11-26T00:00:00")).day == "d2026-11-26"
