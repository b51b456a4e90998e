"""OpenAI-style rate-limit headers and durations."""

from __future__ import annotations

from llmgate.throttle.headers import build_rate_headers, format_duration
from llmgate.throttle.rules import build_plan, build_scopes

from .conftest import make_key, make_settings


def test_durations_are_written_like_openai():
    assert format_duration(0) == "0ms"
    assert format_duration(644) == "644ms"
    assert format_duration(1000) == "1s"
    assert format_duration(1500) == "1.5s"
    assert format_duration(360_000) == "6m0s"
    assert format_duration(90_250) == "1m30.25s"
    assert format_duration(3_723_000) == "1h2m3s"


def test_the_tightest_limit_of_each_kind_speaks():
    settings = make_settings(limits={"rpm": 10, "tpm": 1000}, throttle={"global": {"rpm": 100, "tpm": 500}})
    key = make_key()
    plan = build_plan(build_scopes(settings, key, "m"), key)
    names = [(r.scope.kind, r.name) for r in plan.rates]
    assert names == [("global", "rpm"), ("global", "tpm"), ("key", "rpm"), ("key", "tpm")]
    # requests: 5 left globally, 7 on the key; tokens: 400 left globally, 550 on the key
    headers = build_rate_headers(plan, used=[95, 100, 3, 450], reset_ms=[1000, 2000, 3000, 4000])
    assert headers == {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "5",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "500",
        "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "2s",
    }
