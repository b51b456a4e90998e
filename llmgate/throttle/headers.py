"""The OpenAI-style rate-limit headers, from the tightest request and token limit (pure).

`x-ratelimit-{limit,remaining,reset}-{requests,tokens}`: the limit whose
remaining capacity is smallest (the smaller limit on a tie) speaks for its kind;
`reset` is the time until that window is empty again, written the way OpenAI
writes durations ("644ms", "1s", "6m0s", "1h2m3s").
"""

from __future__ import annotations

from collections.abc import Sequence

from llmgate.throttle.rules import Plan


def format_duration(ms: int) -> str:
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


def build_rate_headers(plan: Plan, used: Sequence[int], reset_ms: Sequence[int]) -> dict[str, str]:
    groups = plan.memo.get("header_groups")
    if groups is None:
        groups = plan.memo["header_groups"] = [
            (suffix, [i for i, r in enumerate(plan.rates) if r.tokens == tokens])
            for tokens, suffix in ((False, "requests"), (True, "tokens"))
        ]
    rates = plan.rates
    headers = {}
    for suffix, indexes in groups:
        best = -1
        best_remaining = best_limit = 0
        for i in indexes:
            if i >= len(used):
                break
            limit = rates[i].limit
            remaining = limit - used[i]
            if remaining < 0:
                remaining = 0
            if best < 0 or remaining < best_remaining or (remaining == best_remaining and limit < best_limit):
                best, best_remaining, best_limit = i, remaining, limit
        if best >= 0:
            headers[f"x-ratelimit-limit-{suffix}"] = str(best_limit)
            headers[f"x-ratelimit-remaining-{suffix}"] = str(best_remaining)
            headers[f"x-ratelimit-reset-{suffix}"] = format_duration(reset_ms[best])
    return headers
