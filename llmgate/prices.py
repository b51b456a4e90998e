"""The price catalog (`providers/prices.toml`) and the PriceBook that uses it.

The catalog holds list prices per model id as exact Decimals (TOML floats are
parsed with `parse_float=Decimal`, so no binary float ever touches a price).
Upstream model ids come in many spellings — dated snapshots, `-latest`,
provider prefixes — so `PriceCatalog.resolve` normalises them step by step.
`CatalogPriceBook` answers the pipeline's `price_for(deployment)`: the model's
own `price` from config wins, the catalog fills in the rest; the answer is
cached per deployment so the hot path pays one dict lookup. The arithmetic
itself lives in `llmgate.cost`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from llmgate.config import ModelSettings, Price
from llmgate.gateway import PriceBook

_PRICE_FIELDS = ("input", "cached_input", "cache_write", "output")

# Version suffixes, tried one after another (several may stack, e.g. "-001" after "-preview-05-20").
_SUFFIXES = (
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),  # OpenAI snapshots: gpt-4o-mini-2024-07-18
    re.compile(r"[-@]\d{8}$"),  # Anthropic: claude-3-5-haiku-20241022, Vertex: ...@20241022
    re.compile(r"-v\d+(?::\d+)?$"),  # Bedrock: ...-20241022-v1:0
    re.compile(r"-latest$"),
    re.compile(r"-preview(?:-\d{2}-\d{2,4})?$"),  # Gemini previews: gemini-2.5-flash-preview-05-20
    re.compile(r"-exp(?:-\d{2}-\d{2,4})?$"),
    re.compile(r"-\d{3}$"),  # Gemini stable versions: gemini-2.0-flash-001
)
# "openai/gpt-4o", "models/gemini-2.5-pro", Bedrock's "us.anthropic.claude-...".
_PROVIDER_PREFIX = re.compile(r"^(?:.*/)|^(?:[a-z]{2}\.)?[a-z]+\.(?=[a-z])")


class PriceCatalog:
    """Model id -> Price, loaded from a TOML catalog."""

    def __init__(self, prices: Mapping[str, Price], providers: Mapping[str, str] | None = None) -> None:
        self._prices = {name.lower(): price for name, price in prices.items()}
        self.providers = dict(providers or {})
        self._resolved: dict[str, Price | None] = {}

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceCatalog:
        """Read a catalog file (the shipped `providers/prices.toml` by default)."""
        text = Path(path).read_text(encoding="utf-8") if path is not None else _shipped_catalog_text()
        return cls.from_toml(text)

    @classmethod
    def from_toml(cls, text: str) -> PriceCatalog:
        data = tomllib.loads(text, parse_float=Decimal)
        prices: dict[str, Price] = {}
        providers: dict[str, str] = {}
        for name, entry in (data.get("models") or {}).items():
            price = parse_price_entry(name, entry)
            for model_id in (name, *entry.get("aliases", ())):
                prices[model_id] = price
                providers[model_id] = entry.get("provider", "")
        return cls(prices, providers)

    def __len__(self) -> int:
        return len(self._prices)

    def __contains__(self, model_id: str) -> bool:
        return model_id.lower() in self._prices

    def names(self) -> list[str]:
        return sorted(self._prices)

    def get(self, model_id: str) -> Price | None:
        """The exact entry for `model_id`, no normalising."""
        return self._prices.get(model_id.lower())

    def resolve(self, model_id: str) -> Price | None:
        """The price for an upstream model id: exact, then without version suffixes,
        then without a provider prefix (and its suffixes). None when unknown."""
        try:
            return self._resolved[model_id]
        except KeyError:
            pass
        price = None
        for candidate in candidate_ids(model_id):
            price = self._prices.get(candidate)
            if price is not None:
                break
        self._resolved[model_id] = price
        return price


def parse_price_entry(name: str, entry: Mapping[str, Any]) -> Price:
    """One `[models."<id>"]` table -> Price; ints and Decimals only, never floats."""
    values: dict[str, Decimal] = {}
    for field in _PRICE_FIELDS:
        value = entry.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise ValueError(f"prices.toml: models.{name}.{field}: expected a number, got {value!r}")
        values[field] = Decimal(value)
    return Price(**values)


def candidate_ids(model_id: str) -> Iterator[str]:
    """The spellings to try for `model_id`, most specific first."""
    seen: set[str] = set()
    base = model_id.strip().lower()
    unprefixed = _PROVIDER_PREFIX.sub("", base, count=1)
    for start in (base, unprefixed):
        for candidate in _without_suffixes(start):
            if candidate and candidate not in seen:
                seen.add(candidate)
                yield candidate


def _without_suffixes(model_id: str) -> Iterator[str]:
    yield model_id
    current = model_id
    changed = True
    while changed:
        changed = False
        for pattern in _SUFFIXES:
            stripped = pattern.sub("", current)
            if stripped != current:
                current = stripped
                changed = True
                yield current


def _shipped_catalog_text() -> str:
    return resources.files("providers").joinpath("prices.toml").read_text(encoding="utf-8")


_UNSET = object()


class CatalogPriceBook(PriceBook):
    """Prices per deployment: the config's `price`, else the catalog's, cached per deployment.

    Deployments hash by identity (`Deployment` is `eq=False`), so the cache is one dict lookup.
    """

    def __init__(self, catalog: PriceCatalog) -> None:
        self.catalog = catalog
        self._by_deployment: dict[Any, Price | None] = {}

    def price_for(self, deployment: Any) -> Price | None:
        price = self._by_deployment.get(deployment, _UNSET)
        if price is _UNSET:
            price = self._by_deployment[deployment] = self.price_of_model(deployment.model)
        return price  # type: ignore[return-value]

    def price_of_model(self, model: ModelSettings) -> Price | None:
        """The same answer for a `[[models]]` entry (the limiter's cost estimate takes this)."""
        return model.price if model.price is not None else self.catalog.resolve(model.upstream_model)

    def unpriced(self, deployments: Iterable[Any]) -> list[str]:
        """Labels of the deployments neither config nor catalog prices (for a start-up warning)."""
        return [d.label for d in deployments if self.price_for(d) is None]
