"""The price catalog: exact Decimal prices, id resolution, the per-deployment PriceBook, exact sums."""

from __future__ import annotations

import random
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from llmgate.config import ModelSettings, Price, Timeouts
from llmgate.cost import cost_nusd
from llmgate.prices import CatalogPriceBook, PriceCatalog, candidate_ids, parse_price_entry
from llmgate.routing import Deployment
from llmgate.types import Usage

REQUIRED_MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "o1",
    "o3",
    "o3-mini",
    "o4-mini",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "claude-opus-4",
    "claude-sonnet-4",
    "claude-3-7-sonnet",
    "claude-3-5-haiku",
    "claude-haiku-4-5",
    "claude-sonnet-4-5",
    "claude-opus-4-1",
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.0-flash",
    "text-embedding-004",
    "gemini-embedding-001",
]
# Anthropic bills 5-minute cache writes at 1.25x and cache hits at 0.1x the input price.
ANTHROPIC_CURRENT = [
    "claude-opus-4-5",
    "claude-opus-4-1",
    "claude-opus-4",
    "claude-sonnet-4-5",
    "claude-sonnet-4",
    "claude-3-7-sonnet",
    "claude-haiku-4-5",
    "claude-3-5-haiku",
]


@pytest.fixture(scope="module")
def catalog() -> PriceCatalog:
    return PriceCatalog.load()


def test_the_shipped_catalog_covers_the_required_models(catalog: PriceCatalog) -> None:
    missing = [m for m in REQUIRED_MODELS if m not in catalog]
    assert missing == []


def test_every_price_is_an_exact_decimal(catalog: PriceCatalog) -> None:
    for name in catalog.names():
        price = catalog.get(name)
        assert price is not None
        for field in ("input", "cached_input", "cache_write", "output"):
            value = getattr(price, field)
            assert value is None or type(value) is Decimal, (name, field, value)


def test_prices_keep_their_written_digits(catalog: PriceCatalog) -> None:
    mini = catalog.get("gpt-4o-mini")
    assert mini is not None
    assert str(mini.cached_input) == "0.075"  # a float would have become 0.07499999999999999722...
    assert mini.input == Decimal("0.15") and mini.output == Decimal("0.60")
    assert catalog.get("o4-mini").cached_input == Decimal("0.275")  # type: ignore[union-attr]


def test_toml_floats_are_read_as_decimals_without_binary_error() -> None:
    catalog = PriceCatalog.from_toml("[models.m]\ninput = 0.1\noutput = 0.2\ncached_input = 3\n")
    price = catalog.get("m")
    assert price is not None
    assert price.input + price.output == Decimal("0.3")
    assert price.cached_input == Decimal(3) and price.cache_write is None


@pytest.mark.parametrize("model", ANTHROPIC_CURRENT)
def test_anthropic_cache_prices_follow_the_published_multipliers(catalog: PriceCatalog, model: str) -> None:
    price = catalog.get(model)
    assert price is not None
    assert price.cache_write == price.input * Decimal("1.25")
    assert price.cached_input == price.input * Decimal("0.1")


def test_cached_input_is_never_dearer_than_input(catalog: PriceCatalog) -> None:
    for name in catalog.names():
        price = catalog.get(name)
        assert price is not None
        if price.cached_input is not None:
            assert price.cached_input <= price.input, name


def test_a_non_number_price_is_refused() -> None:
    with pytest.raises(ValueError, match=r"models\.x\.input"):
        parse_price_entry("x", {"input": "1.0"})
    with pytest.raises(ValueError):
        parse_price_entry("x", {"output": True})


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-0", "claude-opus-4"),
        ("claude-3-5-haiku@20241022", "claude-3-5-haiku"),
        ("us.anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
        ("openai/gpt-4o", "gpt-4o"),
        ("openai/gpt-4o-2024-08-06", "gpt-4o"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
        ("GPT-4.1", "gpt-4.1"),
    ],
)
def test_model_ids_resolve_through_suffixes_and_prefixes(catalog: PriceCatalog, model_id: str, expected: str) -> None:
    assert catalog.resolve(model_id) == catalog.get(expected)
    assert catalog.resolve(model_id) is not None


def test_the_most_specific_spelling_wins() -> None:
    catalog = PriceCatalog.from_toml(
        '[models."gpt-4o"]\ninput = 1.0\noutput = 1.0\n[models."gpt-4o-2024-05-13"]\ninput = 5.0\noutput = 15.0\n'
    )
    assert catalog.resolve("gpt-4o-2024-05-13").input == Decimal("5.0")  # type: ignore[union-attr]
    assert catalog.resolve("gpt-4o-2024-08-06").input == Decimal("1.0")  # type: ignore[union-attr]


def test_an_unknown_model_has_no_price(catalog: PriceCatalog) -> None:
    assert catalog.resolve("my-finetune") is None
    assert catalog.resolve("gpt-4.2") is None  # not silently priced as a neighbour
    assert list(candidate_ids("openai/gpt-4o-mini-2024-07-18")) == [
        "openai/gpt-4o-mini-2024-07-18",
        "openai/gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
        "gpt-4o-mini",
    ]


# --- the PriceBook -----------------------------------------------------------------------


def deployment(name: str, upstream: str | None = None, price: Price | None = None) -> Deployment:
    model = ModelSettings(name=name, provider="p", upstream=upstream, price=price)
    return Deployment(model, SimpleNamespace(name="p"), Timeouts())  # type: ignore[arg-type]


class CountingCatalog(PriceCatalog):
    def __init__(self, inner: PriceCatalog) -> None:
        super().__init__({name: inner.get(name) for name in inner.names()})  # type: ignore[misc]
        self.lookups: list[str] = []

    def resolve(self, model_id: str) -> Price | None:
        self.lookups.append(model_id)
        return super().resolve(model_id)


def test_the_config_price_wins_over_the_catalog(catalog: PriceCatalog) -> None:
    own = Price(input=Decimal("9"), output=Decimal("9"))
    book = CatalogPriceBook(catalog)
    assert book.price_for(deployment("fast", "gpt-4o-mini", price=own)) is own


def test_the_catalog_prices_the_upstream_model(catalog: PriceCatalog) -> None:
    book = CatalogPriceBook(catalog)
    assert book.price_for(deployment("fast", "gpt-4o-mini-2024-07-18")) == catalog.get("gpt-4o-mini")
    assert book.price_for(deployment("claude-3-5-haiku-20241022")) == catalog.get("claude-3-5-haiku")


def test_resolution_happens_once_per_deployment(catalog: PriceCatalog) -> None:
    counting = CountingCatalog(catalog)
    book = CatalogPriceBook(counting)
    dep = deployment("fast", "gpt-4o-mini")
    unknown = deployment("mine", "my-finetune")
    for _ in range(100):
        book.price_for(dep)
        book.price_for(unknown)
    assert counting.lookups == ["gpt-4o-mini", "my-finetune"]


def test_a_model_entry_is_priced_the_same_way(catalog: PriceCatalog) -> None:
    book = CatalogPriceBook(catalog)
    own = Price(input=Decimal("1"), output=Decimal("2"))
    assert book.price_of_model(ModelSettings(name="a", provider="p", upstream="o3-2025-04-16")) == catalog.get("o3")
    assert book.price_of_model(ModelSettings(name="b", provider="p", price=own)) is own
    assert book.price_of_model(ModelSettings(name="my-finetune", provider="p")) is None


def test_unpriced_deployments_are_listed(catalog: PriceCatalog) -> None:
    book = CatalogPriceBook(catalog)
    deps = [deployment("a", "gpt-5"), deployment("b", "my-finetune")]
    assert book.unpriced(deps) == ["p/my-finetune"]


# --- exact cost from record to report --------------------------------------------------


def random_usage(rng: random.Random) -> Usage:
    input_tokens = rng.randint(0, 50_000)
    cached = rng.randint(0, input_tokens)
    written = rng.randint(0, input_tokens - cached)
    output = rng.randint(0, 8_000)
    return Usage(
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        output_tokens=output,
        reasoning_tokens=rng.randint(0, output),
    )


def total_usage(usages: list[Usage]) -> Usage:
    total = Usage()
    for u in usages:
        total.input_tokens += u.input_tokens
        total.cached_input_tokens += u.cached_input_tokens
        total.cache_write_tokens += u.cache_write_tokens
        total.output_tokens += u.output_tokens
    return total


def test_every_catalog_price_costs_a_whole_number_of_nano_usd_per_token(catalog: PriceCatalog) -> None:
    # So a call's cost is never rounded, and any sum of calls equals the cost of the summed tokens.
    for name in catalog.names():
        price = catalog.get(name)
        assert price is not None
        for value in (price.input, price.cached_input, price.cache_write, price.output):
            if value is not None:
                assert (value * 1000) % 1 == 0, (name, value)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "o4-mini", "claude-3-5-haiku", "gemini-2.5-flash", "gpt-5-nano"])
def test_a_report_total_equals_the_cost_of_the_total_tokens(catalog: PriceCatalog, model: str) -> None:
    rng = random.Random(model)
    price = catalog.get(model)
    usages = [random_usage(rng) for _ in range(2_000)]
    per_call = [cost_nusd(price, u) for u in usages]
    assert all(isinstance(c, int) for c in per_call)
    assert sum(per_call) == cost_nusd(price, total_usage(usages))


def test_with_finer_prices_the_report_is_the_exact_sum_of_the_rounded_calls() -> None:
    price = Price(input=Decimal("0.0001234"), output=Decimal("0.0005678"), cached_input=Decimal("0.00001"))
    rng = random.Random(7)
    usages = [random_usage(rng) for _ in range(1_000)]
    per_call = [cost_nusd(price, u) for u in usages]
    exact = sum(
        (
            (u.input_tokens - u.cached_input_tokens - u.cache_write_tokens) * price.input
            + u.cached_input_tokens * price.cached_input  # type: ignore[operator]
            + u.cache_write_tokens * price.input
            + u.output_tokens * price.output
        )
        * 1000
        for u in usages
    )
    # Each call is rounded once to a whole nano-USD; the report adds integers, so it drifts from
    # the unrounded figure by at most half a nano-USD per call and never loses a call's cost.
    assert abs(Decimal(sum(per_call)) - exact) <= Decimal(len(usages)) / 2


def test_prices_round_trip_into_the_usage_cost(catalog: PriceCatalog) -> None:
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=200_000, cache_write_tokens=100_000, output_tokens=10_000)
    price: Any = catalog.get("claude-sonnet-4-5")
    # 700k plain x 3.00 + 200k cached x 0.30 + 100k written x 3.75 + 10k out x 15.00 (USD per 1M)
    assert cost_nusd(price, usage) == 2_100_000_000 + 60_000_000 + 375_000_000 + 150_000_000
