"""config.toml -> typed settings.

`${VAR}` is read from the environment. A provider whose `api_key` names an unset
variable is kept but disabled (it answers 503). Every other problem is collected
and reported as one line each: `file: key.path: what is wrong`.
"""

from __future__ import annotations

import os
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Request fields that would let a caller choose an upstream, its headers or its credentials
# (names other gateways and SDKs use). Upstream URLs and keys come only from this config, so
# every surface refuses these fields, and a prompt document may not set them as parameters.
UPSTREAM_OVERRIDE_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "extra_headers",
        "extra_query",
        "extra_body",
        "custom_llm_provider",
        "litellm_params",
        "azure_endpoint",
        "deployment_id",
        "organization",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Seconds. `first_byte` bounds the wait for the upstream's first response byte
    (the first token of a stream); `total` bounds the whole non-streaming call."""

    connect: float = Field(5.0, gt=0)
    first_byte: float = Field(60.0, gt=0)
    total: float = Field(600.0, gt=0)


class GatewaySettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(4000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    master_key: str | None = None
    database_url: str = "sqlite:///llmgate.db"
    redis_url: str | None = None
    redis_prefix: str = "llmgate:"
    prompts_dir: str = "prompts"
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_json_depth: int = Field(64, gt=0)
    # A request body must have fully arrived this many seconds after its headers (else 408).
    body_timeout_s: float = Field(30.0, gt=0)
    # Request line plus headers: at most this many bytes (else 431), all in within this many seconds.
    max_header_bytes: int = Field(64 * 1024, gt=0)
    header_timeout_s: float = Field(10.0, gt=0)
    # The most choices (`n`) one chat request may ask for.
    max_n: int = Field(16, gt=0)
    key_cache_ttl_s: float = Field(5.0, ge=0)
    shutdown_grace_s: float = Field(30.0, ge=0)
    usage_spill_path: str = "llmgate-usage-spill.jsonl"
    usage_batch_size: int = Field(500, gt=0)
    usage_flush_interval_s: float = Field(0.5, gt=0)
    usage_buffer_max: int = Field(100_000, gt=0)
    log_requests: bool = True


class ProviderSettings(_Strict):
    type: str
    base_url: str | None = None
    api_key: str | None = None
    # Azure: `api-version` query parameter; Anthropic: the `anthropic-version` header.
    api_version: str | None = None
    auth_style: Literal["default", "bearer", "x-api-key", "api-key"] = "default"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(None, gt=0)
    timeouts: Timeouts | None = None
    default_max_tokens: int = Field(4096, gt=0)
    # mock provider: delay between streamed tokens, in milliseconds.
    stream_delay_ms: float = Field(0.0, ge=0)
    disabled_reason: str | None = None

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        from providers import PROVIDER_TYPES

        if value not in PROVIDER_TYPES:
            raise ValueError(f"unknown provider type {value!r} (one of: {', '.join(PROVIDER_TYPES)})")
        return value

    @model_validator(mode="after")
    def _azure_needs_endpoint(self) -> ProviderSettings:
        if self.type == "azure" and not self.base_url:
            raise ValueError("base_url: azure needs the resource endpoint (https://<resource>.openai.azure.com)")
        return self

    def effective_timeouts(self) -> Timeouts:
        base = self.timeouts or Timeouts()
        if self.timeout is not None:
            return base.model_copy(update={"total": self.timeout})
        return base


class Price(_Strict):
    """USD per 1M tokens."""

    input: Decimal = Field(Decimal(0), ge=0)
    output: Decimal = Field(Decimal(0), ge=0)
    cached_input: Decimal | None = Field(None, ge=0)
    cache_write: Decimal | None = Field(None, ge=0)


class ModelSettings(_Strict):
    name: str = Field(min_length=1)
    provider: str
    upstream: str | None = None
    mode: Literal["chat", "embedding"] = "chat"
    price: Price | None = None
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    weight: float = Field(1.0, ge=0)
    order: int = 0
    fallbacks: tuple[str, ...] = ()
    context_window_fallbacks: tuple[str, ...] = ()
    timeouts: Timeouts | None = None
    max_tokens_cap: int | None = Field(None, gt=0)
    supports_vision: bool = True
    # Group-level knobs; the first entry of a group that sets them wins.
    strategy: Literal["weighted", "least-inflight", "lowest-latency", "priority", "lowest-cost"] | None = None
    max_wait_ms: int | None = Field(None, ge=0)

    @property
    def upstream_model(self) -> str:
        return self.upstream or self.name


BudgetPeriod = Literal["day", "week", "month", "total"]


class LimitSet(_Strict):
    """Limits of one scope; None means unlimited."""

    rpm: int | None = Field(None, ge=0)
    rps: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    tpd: int | None = Field(None, ge=0)
    max_concurrency: int | None = Field(None, ge=0)
    max_wait_ms: int | None = Field(None, ge=0)
    budget_usd: Decimal | None = Field(None, ge=0)
    budget_period: BudgetPeriod = "month"


class LimitsSettings(LimitSet):
    """`[limits]`: the defaults for keys that set none, and how tokens are counted."""

    default_max_tokens: int = Field(1024, gt=0)
    count_cached_input: bool = True
    on_store_error: Literal["open", "closed"] = "open"


class PolicyStep(_Strict):
    above: float
    rpm: int | None = Field(None, ge=0)
    rps: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    tpd: int | None = Field(None, ge=0)
    max_concurrency: int | None = Field(None, ge=0)


class ThrottlePolicy(_Strict):
    name: str
    scope: Literal["key", "team", "global", "model", "key_model"] = "key"
    signal: Literal["tokens_today", "spend_today_usd", "spend_month_usd", "inflight", "upstream_error_rate"]
    steps: tuple[PolicyStep, ...] = Field(min_length=1)
    match: dict[str, str] = Field(default_factory=dict)
    cooldown_s: float = Field(0.0, ge=0)

    @field_validator("steps")
    @classmethod
    def _ascending(cls, steps: tuple[PolicyStep, ...]) -> tuple[PolicyStep, ...]:
        thresholds = [s.above for s in steps]
        if thresholds != sorted(thresholds) or len(set(thresholds)) != len(thresholds):
            raise ValueError("step thresholds (`above`) must be strictly ascending")
        return steps


class ThrottleSettings(_Strict):
    global_limits: LimitSet = Field(default_factory=LimitSet, alias="global")
    teams: dict[str, LimitSet] = Field(default_factory=dict)
    models: dict[str, LimitSet] = Field(default_factory=dict)
    policies: tuple[ThrottlePolicy, ...] = ()
    error_rate_window_s: float = Field(60.0, gt=0)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RoutingSettings(_Strict):
    num_retries: int = Field(2, ge=0)
    backoff_base_s: float = Field(0.1, ge=0)
    backoff_max_s: float = Field(5.0, ge=0)
    deadline_s: float = Field(120.0, gt=0)
    cooldown_failures: int = Field(3, ge=1)
    cooldown_window_s: float = Field(60.0, gt=0)
    cooldown_s: float = Field(30.0, ge=0)
    latency_ewma_alpha: float = Field(0.2, gt=0, le=1)


class StaticKey(_Strict):
    """A caller key listed in config (useful before keys live in the database)."""

    key: str | None
    name: str
    team: str | None = None
    models: tuple[str, ...] | None = None
    priority: str | None = None
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)


class Settings(_Strict):
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    models: tuple[ModelSettings, ...] = ()
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    throttle: ThrottleSettings = Field(default_factory=ThrottleSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    keys: tuple[StaticKey, ...] = ()
    source: str = "<defaults>"


class ConfigError(Exception):
    """Invalid configuration; `problems` holds one human-readable line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Missing(str):
    """An unset ${VAR}: remembered so the right field can decide what it means."""


def _substitute(value: Any, path: str, missing: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        unset = [m.group(1) for m in _VAR.finditer(value) if m.group(1) not in os.environ]
        if unset:
            missing.append((path, unset[0]))
            return _Missing(unset[0])
        return _VAR.sub(lambda m: os.environ[m.group(1)], value)
    if isinstance(value, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else k, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", missing) for i, v in enumerate(value)]
    return value


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "union[", "list[", "tuple[")) or part in (
            "constrained-str",
            "decimal",
            "int",
            "float",
            "str",
            "dict",
            "literal",
        ):
            continue
        else:
            out += f".{part}" if out else part
    return out


def _reference_problems(data: dict[str, Any]) -> list[str]:
    """Models naming providers or fallbacks that do not exist (checked on the raw
    document, so they are reported alongside field errors)."""
    providers = data.get("providers") if isinstance(data.get("providers"), dict) else {}
    raw_models = data.get("models") if isinstance(data.get("models"), list) else []
    models = [m for m in raw_models if isinstance(m, dict)]
    names = {m.get("name") for m in models}
    problems = []
    for i, m in enumerate(models):
        if "provider" in m and m["provider"] not in providers:
            problems.append(f"models[{i}].provider: unknown provider {m['provider']!r}")
        for field in ("fallbacks", "context_window_fallbacks"):
            for name in m.get(field) or []:
                if name not in names:
                    problems.append(f"models[{i}].{field}: unknown model {name!r}")
    return problems


def parse_settings(raw: dict[str, Any], source: str) -> Settings:
    """Validate a parsed TOML document; raises ConfigError with one line per problem."""
    missing: list[tuple[str, str]] = []
    data = _substitute(raw, "", missing)
    problems: list[str] = []
    for path, var in missing:
        parts = path.split(".")
        if parts[0] == "providers" and len(parts) == 3 and parts[2] == "api_key":
            provider = data["providers"][parts[1]]
            provider["api_key"] = None
            provider["disabled_reason"] = f"environment variable {var} is not set"
        elif path == "gateway.master_key" or (parts[0].startswith("keys[") and parts[-1] == "key"):
            _set_path(data, parts, None)
        else:
            problems.append(f"{source}: {path}: environment variable {var} is not set")
    data["source"] = source
    problems.extend(f"{source}: {line}" for line in _reference_problems(data))
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{source}: {_loc(err['loc'])}: {msg}")
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return settings


def _set_path(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node: Any = data
    for part in parts[:-1]:
        name, _, index = part.partition("[")
        node = node[name]
        if index:
            node = node[int(index.rstrip("]"))]
    node[parts[-1]] = value


def load_settings(path: str | Path) -> Settings:
    """Read and validate a config file; raises ConfigError."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{p}: file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: invalid TOML: {exc}"]) from None
    return parse_settings(raw, str(p))
