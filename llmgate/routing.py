"""Model groups and the order in which their deployments are tried.

Several `[[models]]` entries with one `name` form a group. `plan(name)` gives the
deployments to try for one call: the group's members in strategy order, then
each fallback group's. The pipeline walks the plan, retrying on retryable errors.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from llmgate.config import ModelSettings, Settings, Timeouts
from llmgate.errors import NotFound
from providers import provider_class
from providers.base import Provider


@dataclass(eq=False, slots=True)
class Deployment:
    """One `[[models]]` entry bound to its provider adapter."""

    model: ModelSettings
    provider: Provider
    timeouts: Timeouts
    inflight: int = 0
    label: str = field(init=False)

    def __post_init__(self) -> None:
        self.label = f"{self.provider.name}/{self.model.upstream_model}"

    @property
    def upstream(self) -> str:
        return self.model.upstream_model


def build_providers(settings: Settings) -> dict[str, Provider]:
    return {name: provider_class(p.type)(name, p) for name, p in settings.providers.items()}


class Router:
    def __init__(self, settings: Settings, providers: dict[str, Provider]) -> None:
        self.settings = settings
        self.providers = providers
        self.groups: dict[str, list[Deployment]] = {}
        for m in settings.models:
            provider = providers[m.provider]
            timeouts = m.timeouts or provider.settings.effective_timeouts()
            self.groups.setdefault(m.name, []).append(Deployment(m, provider, timeouts))

    def has_model(self, name: str) -> bool:
        return name in self.groups

    def group(self, name: str) -> list[Deployment]:
        try:
            return self.groups[name]
        except KeyError:
            raise NotFound(f"The model `{name}` does not exist.", param="model") from None

    def order(self, group: list[Deployment]) -> list[Deployment]:
        """A weighted random order of a group's deployments (the default strategy)."""
        if len(group) == 1:
            return group
        pool = list(group)
        ordered = []
        while pool:
            weights = [d.model.weight for d in pool]
            pick = random.choices(pool, weights=weights)[0] if sum(weights) > 0 else pool[0]
            ordered.append(pick)
            pool.remove(pick)
        return ordered

    def plan(self, name: str) -> list[Deployment]:
        """Deployments to try, in order: the group, then its fallbacks' groups."""
        group = self.group(name)
        plan = self.order(group)
        for fallback in group[0].model.fallbacks:
            plan.extend(self.order(self.groups[fallback]))
        return plan
