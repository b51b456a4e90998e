"""The worst-case cost of a call, reserved against budgets at admission.

Prompt tokens at the highest input price and the whole output allowance at the
highest output price among the model group's deployments (and its fallbacks',
since a fallback may answer): an upper bound, so concurrent requests can never
spend past a budget together. The reservation is settled to the real cost.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_CEILING, Decimal

from llmgate.config import ModelSettings, Price, Settings
from llmgate.types import RequestContext

CostEstimator = Callable[[RequestContext], int]
_NANO_PER_TOKEN_PRICE = Decimal(1000)  # USD per 1M tokens x tokens x 1e3 = nano-USD


def build_cost_estimator(
    settings: Settings, price_of: Callable[[ModelSettings], Price | None] | None = None
) -> CostEstimator:
    """An estimator over the configured prices (or `price_of`, e.g. the price catalog)."""
    lookup = price_of or (lambda model: model.price)
    groups: dict[str, list[ModelSettings]] = {}
    for m in settings.models:
        groups.setdefault(m.name, []).append(m)
    worst: dict[str, tuple[Decimal, Decimal]] = {}
    for name, members in groups.items():
        candidates = list(members)
        for fallback in members[0].fallbacks:
            candidates.extend(groups.get(fallback, ()))
        prices = [p for p in (lookup(m) for m in candidates) if p is not None]
        worst[name] = (
            max((p.input for p in prices), default=Decimal(0)),
            max((p.output for p in prices), default=Decimal(0)),
        )

    def estimate(ctx: RequestContext) -> int:
        input_price, output_price = worst.get(ctx.model, (Decimal(0), Decimal(0)))
        output_allowance = max(0, ctx.reserved_tokens - ctx.prompt_tokens)
        total = (ctx.prompt_tokens * input_price + output_allowance * output_price) * _NANO_PER_TOKEN_PRICE
        return int(total.to_integral_value(rounding=ROUND_CEILING))

    return estimate
