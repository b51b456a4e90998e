"""Budget periods on the UTC calendar: day, ISO week (from Monday), month, total.

Spend and tokens-today counters are keyed by a period id such as `d2026-11-25`,
`w2026-W48`, `m2026-11` or `total`, so a counter rolls over by itself when the
id changes. The ids are derived from the gateway's wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

PERIODS = ("day", "week", "month", "total")

# How long a period's counter is worth keeping in Redis after the period starts.
PERIOD_TTL_S = {"day": 3 * 86400, "week": 16 * 86400, "month": 70 * 86400, "total": 0}


@dataclass(frozen=True, slots=True)
class PeriodIds:
    """The ids of the periods that contain one instant."""

    day_number: int
    day: str
    week: str
    month: str
    total: str = "total"

    def of(self, period: str) -> str:
        return getattr(self, period)  # type: ignore[no-any-return]


def build_period_ids(now: float) -> PeriodIds:
    moment = datetime.fromtimestamp(now, UTC)
    iso = moment.isocalendar()
    return PeriodIds(
        day_number=int(now // 86400),
        day=f"d{moment:%Y-%m-%d}",
        week=f"w{iso.year}-W{iso.week:02d}",
        month=f"m{moment:%Y-%m}",
    )


def build_period_starts(now: float) -> dict[str, datetime]:
    """The UTC start of each period containing `now` (what a store query sums from)."""
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "day": day,
        "week": day - timedelta(days=day.weekday()),
        "month": day.replace(day=1),
        "total": datetime(1970, 1, 1, tzinfo=UTC),
    }


class PeriodClock:
    """Period ids for the current instant, recomputed only when the UTC day changes."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: PeriodIds | None = None

    def ids(self, now: float) -> PeriodIds:
        ids = self._ids
        if ids is None or ids.day_number != int(now // 86400):
            ids = self._ids = build_period_ids(now)
        return ids
