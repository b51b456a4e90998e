"""The in-memory backend's bookkeeping: spend per period, roll-over at UTC midnight."""

from __future__ import annotations

from llmgate.throttle.backend import Admission
from llmgate.throttle.memory import MemoryBackend
from llmgate.throttle.periods import build_period_ids
from llmgate.throttle.rules import build_plan, build_scopes

from .conftest import make_key, make_settings

MIDNIGHT = 1_790_035_200  # a UTC midnight (2026-09-22)


def plan_for(**limits: object):
    key = make_key()
    return build_plan(build_scopes(make_settings(limits=limits), key, "m"), key)


def test_spend_is_kept_for_every_period_of_the_key_and_the_estimate_settles_to_the_cost():
    backend = MemoryBackend()
    plan = plan_for(budget_usd="10", budget_period="week")
    periods = build_period_ids(MIDNIGHT + 60)
    admission = backend.acquire_now(plan, 0, 500, "m1", periods, (MIDNIGHT + 60) * 1000)
    assert isinstance(admission, Admission)
    assert backend.spend == {f"k:k1|{periods.week}": 500}
    backend.release_now(admission, 0, 120, (MIDNIGHT + 61) * 1000)
    assert backend.spend == {f"k:k1|{p}": 120 for p in (periods.day, periods.week, periods.month, "total")}
    assert backend.inflight() == 0


def test_a_new_utc_day_drops_counters_of_periods_that_ended():
    backend = MemoryBackend()
    plan = plan_for(rpm=10)
    before = build_period_ids(MIDNIGHT - 1)
    admission = backend.acquire_now(plan, 0, 0, "m1", before, (MIDNIGHT - 1) * 1000)
    backend.release_now(admission, 7, 50, (MIDNIGHT - 1) * 1000)
    assert backend.tokens_today == {f"k:k1|tok|{before.day}": 7}
    after = build_period_ids(MIDNIGHT + 90)  # the rpm window has emptied by then
    backend._windows_of(plan)[0].used((MIDNIGHT + 90) * 60 * 1000 // 60_000)
    backend.acquire_now(plan_for(), 0, 0, "m2", after, (MIDNIGHT + 90) * 1000)
    assert backend.tokens_today == {}
    assert set(backend.spend) == {f"k:k1|{before.week}", f"k:k1|{before.month}", "k:k1|total"}
    assert backend.windows == {}
    fresh = backend.acquire_now(plan, 0, 0, "m3", after, (MIDNIGHT + 90) * 1000)
    assert isinstance(fresh, Admission) and fresh.used == [1]
