"""Step-function policies: a measured signal -> the step (limits) in force, with hysteresis.

The step in force is the last whose `above` threshold the signal exceeds; the first
step is the floor while the signal exceeds none. Rising takes effect at once.
Falling back to a lower step waits until the signal has stayed below the current
step's threshold for `cooldown_s` (measured from the first evaluation that saw it
below), so a signal hovering at a threshold does not flap.

Signals `tokens_today`, `spend_today_usd` and `spend_month_usd` are the calling
key's; `inflight` and `upstream_error_rate` are gateway-wide. State is kept per
(policy, key) for the former and per policy for the latter. A policy applies to
a key when every `match` entry equals the key's attribute (`priority`, `team`,
`name`, `id`) or, failing that, its metadata entry. Key-, team- and key+model-scoped
policies never apply to the master key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llmgate.config import PolicyStep, ThrottlePolicy
from llmgate.throttle.window import SlidingWindow, bucket_of
from llmgate.types import KeyInfo

KEY_SIGNALS = frozenset({"tokens_today", "spend_today_usd", "spend_month_usd"})
GATEWAY_SIGNALS = frozenset({"inflight", "upstream_error_rate"})
_KEY_ATTRIBUTES = frozenset({"priority", "team", "name", "id"})
_KEY_SCOPES = frozenset({"key", "team", "key_model"})

SignalReader = Callable[[str], float]
# (index of the policy in the book, index of the step in force)
StepIndex = tuple[int, int]


def map_signal_to_step(steps: Sequence[PolicyStep], value: float) -> int:
    """The last step whose threshold `value` exceeds; 0 when it exceeds none."""
    index = 0
    for i, step in enumerate(steps):
        if value > step.above:
            index = i
        else:
            break
    return index


def match_key(policy: ThrottlePolicy, key: KeyInfo) -> bool:
    if key.is_master and policy.scope in _KEY_SCOPES:
        return False
    for name, wanted in policy.match.items():
        if name in _KEY_ATTRIBUTES:
            value: Any = getattr(key, name)
        else:
            value = (key.metadata or {}).get(name)
        if value is None or str(value) != wanted:
            return False
    return True


class Hysteresis:
    """The step in force for one policy and subject."""

    __slots__ = ("below_since", "step")

    def __init__(self) -> None:
        self.step = 0
        self.below_since: float | None = None

    def update(self, target: int, now: float, cooldown_s: float) -> int:
        if target >= self.step:
            self.step = target
            self.below_since = None
        elif self.below_since is None:
            self.below_since = now
            if cooldown_s <= 0:
                self.step = target
                self.below_since = None
        elif now - self.below_since >= cooldown_s:
            self.step = target
            self.below_since = None
        return self.step


class PolicyBook:
    """All configured policies and their hysteresis state."""

    def __init__(self, policies: Sequence[ThrottlePolicy]) -> None:
        self.policies = tuple(policies)
        self.signals = frozenset(p.signal for p in self.policies)
        self._states: dict[tuple[int, str], Hysteresis] = {}
        self._matching: dict[str, tuple[KeyInfo, tuple[int, ...]]] = {}

    def __bool__(self) -> bool:
        return bool(self.policies)

    def matching(self, key: KeyInfo) -> tuple[int, ...]:
        cached = self._matching.get(key.id)
        if cached is not None:
            if cached[0] is key:
                return cached[1]
            if cached[0] == key:
                self._matching[key.id] = (key, cached[1])
                return cached[1]
        indexes = tuple(i for i, p in enumerate(self.policies) if match_key(p, key))
        self._matching[key.id] = (key, indexes)
        return indexes

    def steps_for(self, key: KeyInfo, read: SignalReader, now: float) -> tuple[StepIndex, ...]:
        """Evaluate every policy that applies to `key`; returns (policy, step) pairs."""
        out = []
        for i in self.matching(key):
            policy = self.policies[i]
            target = map_signal_to_step(policy.steps, read(policy.signal))
            out.append((i, self._state(i, policy, key).update(target, now, policy.cooldown_s)))
        return tuple(out)

    def refresh_gateway(self, read: SignalReader, now: float) -> None:
        """Re-evaluate gateway-wide signals (after a settle lowered them)."""
        for i, policy in enumerate(self.policies):
            if policy.signal in GATEWAY_SIGNALS:
                target = map_signal_to_step(policy.steps, read(policy.signal))
                self._state(i, policy, None).update(target, now, policy.cooldown_s)

    def describe(self, key: KeyInfo, read: SignalReader, now: float) -> list[dict[str, Any]]:
        """The steps in force for `key`, for the admin key view and the dashboard."""
        out = []
        for i, step in self.steps_for(key, read, now):
            policy = self.policies[i]
            limits = policy.steps[step].model_dump(exclude_none=True, exclude={"above"})
            out.append(
                {
                    "policy": policy.name,
                    "scope": policy.scope,
                    "signal": policy.signal,
                    "value": read(policy.signal),
                    "step": step,
                    "above": policy.steps[step].above,
                    "limits": limits,
                }
            )
        return out

    def _state(self, index: int, policy: ThrottlePolicy, key: KeyInfo | None) -> Hysteresis:
        subject = key.id if key is not None and policy.signal in KEY_SIGNALS else ""
        state = self._states.get((index, subject))
        if state is None:
            state = self._states[(index, subject)] = Hysteresis()
        return state


class ErrorRate:
    """The `upstream_error_rate` signal: failed / all settled calls over a sliding window.

    Kept per process (every process sees the same upstreams, so its sample speaks
    for the gateway) with the same sub-bucketed window as the rate limits.
    """

    __slots__ = ("_calls", "_errors")

    def __init__(self, window_s: float) -> None:
        window_ms = max(1, int(window_s * 1000))
        self._calls = SlidingWindow(window_ms)
        self._errors = SlidingWindow(window_ms)

    def record(self, failed: bool, now_ms: int) -> None:
        bucket = bucket_of(now_ms, self._calls.window_ms)
        self._calls.used(bucket)
        self._calls.add(bucket, 1)
        if failed:
            self._errors.used(bucket)
            self._errors.add(bucket, 1)

    def rate(self, now_ms: int) -> float:
        bucket = bucket_of(now_ms, self._calls.window_ms)
        calls = self._calls.used(bucket)
        return self._errors.used(bucket) / calls if calls else 0.0
