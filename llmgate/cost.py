"""Exact cost arithmetic: Decimal prices, integer nano-USD per call.

A call's cost is computed once with Decimal and rounded half-even to a whole
nano-USD (1e-9 USD); records and reports hold and sum integers, so a report's
total is exactly the sum of its calls.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from llmgate.config import Price
from llmgate.types import Usage

_NANO_PER_MICRO_TOKEN_PRICE = Decimal(1000)  # USD per 1M tokens x tokens x 1e3 = nano-USD
_ONE = Decimal(1)
_NANO = Decimal("1e-9")


def cost_nusd(price: Price | None, usage: Usage) -> int:
    """The cost of `usage` at `price`, in nano-USD. No price: 0."""
    if price is None:
        return 0
    cached = usage.cached_input_tokens
    written = usage.cache_write_tokens
    plain = max(0, usage.input_tokens - cached - written)
    cached_price = price.cached_input if price.cached_input is not None else price.input
    write_price = price.cache_write if price.cache_write is not None else price.input
    total = (
        plain * price.input + cached * cached_price + written * write_price + usage.output_tokens * price.output
    ) * _NANO_PER_MICRO_TOKEN_PRICE
    return int(total.quantize(_ONE, rounding=ROUND_HALF_EVEN))


def nusd_to_usd(nusd: int) -> Decimal:
    """Nano-USD as an exact Decimal in USD."""
    return (Decimal(nusd) * _NANO).quantize(_NANO)


def format_usd(nusd: int) -> str:
    """`x-llmgate-cost-usd` text: a plain decimal with nine places."""
    return f"{nusd_to_usd(nusd):f}"
