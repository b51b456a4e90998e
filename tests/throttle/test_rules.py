"""Scopes a request touches, limits per scope with fallbacks, step replacement."""

from __future__ import annotations

from llmgate.config import PolicyStep, ThrottlePolicy
from llmgate.throttle.rules import build_plan, build_scopes

from .conftest import make_key, make_settings


def limits_by_kind(scopes):
    return {s.kind: s.limits for s in scopes}


def test_every_scope_with_limits_is_touched_and_empty_ones_are_left_out():
    settings = make_settings(
        limits={"rpm": 600},
        throttle={"global": {"rpm": 10000}, "teams": {"ml": {"tpm": 5000}}, "models": {"gpt-4o": {"rps": 3}}},
    )
    key = make_key("k1", team="ml", metadata={"model_limits": {"gpt-4o": {"rpm": 7}}})
    scopes = build_scopes(settings, key, "gpt-4o")
    assert [(s.kind, s.id) for s in scopes] == [
        ("global", "g"),
        ("team", "t:ml"),
        ("key", "k:k1"),
        ("model", "m:gpt-4o"),
        ("key_model", "km:k1:gpt-4o"),
    ]
    by_kind = limits_by_kind(scopes)
    assert by_kind["global"].rpm == 10000
    assert by_kind["team"].tpm == 5000
    assert by_kind["key"].rpm == 600
    assert by_kind["model"].rps == 3
    assert by_kind["key_model"].rpm == 7
    assert [s.kind for s in build_scopes(settings, make_key("k2"), "other")] == ["global", "key"]


def test_key_fields_fall_back_to_the_limits_defaults_one_by_one():
    settings = make_settings(limits={"rpm": 600, "tpm": 200000, "budget_usd": "5", "budget_period": "day"})
    key = make_key("k1", rpm=5, max_concurrency=2, max_wait_ms=300)
    (scope,) = build_scopes(settings, key, "m")
    limits = scope.limits
    assert (limits.rpm, limits.tpm, limits.max_concurrency, limits.max_wait_ms) == (5, 200000, 2, 300)
    assert (limits.budget_nusd, limits.budget_period) == (5_000_000_000, "day")
    assert scope.label == "key 'k1'"


def test_master_key_skips_key_scopes_but_counts_toward_global_and_model():
    settings = make_settings(limits={"rpm": 1}, throttle={"global": {"rpm": 9}, "models": {"m": {"rpm": 4}}})
    master = make_key("master", is_master=True)
    assert [s.kind for s in build_scopes(settings, master, "m")] == ["global", "model"]
    plan = build_plan(build_scopes(settings, master, "m"), master)
    assert plan.key_scope is None


def test_a_step_replaces_the_limits_it_names_and_the_tightest_step_wins():
    settings = make_settings(limits={"rpm": 600, "tpm": 100})
    a = ThrottlePolicy(name="a", signal="inflight", steps=(PolicyStep(above=0), PolicyStep(above=5, rpm=60)))
    b = ThrottlePolicy(
        name="b", signal="tokens_today", steps=(PolicyStep(above=0), PolicyStep(above=9, rpm=30, tpm=1000))
    )
    (scope,) = build_scopes(settings, make_key(), "m", [(a, 1), (b, 1)])
    assert (scope.limits.rpm, scope.limits.tpm) == (30, 1000)  # replaced, even upward for tpm
    assert scope.limits.via == {"rpm": "b/1", "tpm": "b/1"}
    plan = build_plan([scope], make_key(), [(a, 1), (b, 1)])
    assert plan.steps_header == "a/1, b/1"


def test_plan_lists_each_limit_once_with_its_window_and_unit():
    settings = make_settings(
        limits={"rpm": 5, "rps": 1, "tpm": 100, "tpd": 1000, "max_concurrency": 2, "budget_usd": "1"}
    )
    key = make_key()
    plan = build_plan(build_scopes(settings, key, "m"), key)
    assert [(r.name, r.window_ms, r.tokens, r.counter) for r in plan.rates] == [
        ("rpm", 60_000, False, "k:k1|rpm"),
        ("rps", 1_000, False, "k:k1|rps"),
        ("tpm", 60_000, True, "k:k1|tpm"),
        ("tpd", 86_400_000, True, "k:k1|tpd"),
    ]
    assert plan.needs_tokens
    assert [c.limit for c in plan.concurrency] == [2]
    assert [(b.limit_nusd, b.period) for b in plan.budgets] == [(1_000_000_000, "month")]
    assert plan.steps_header is None
