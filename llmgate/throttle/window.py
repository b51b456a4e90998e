"""The sliding-window counter: the one algorithm behind every rate limit.

A window of length W is cut into 60 sub-buckets of W/60 on a fixed grid (bucket
`b` holds what was admitted in [b*W/60, (b+1)*W/60)). At time `now` (bucket `c`)
the counter sums buckets c-60 .. c, which covers [now - W, now] and reaches back
at most one bucket width further. A request of weight `cost` is admitted iff that
sum + cost <= N.

Why this never over-admits: take any interval [s, s + W] and the last admission
in it, at t. Every earlier admission in [s, t] lies in a bucket >= bucket(t - W)
= bucket(t) - 60, so it was counted when t was decided, hence the total is <= N.
Settlement only lowers (refunds) or raises (charges) a weight in its own bucket,
so with actual <= reserved the bound holds for the settled weights too.

Why it refuses early by at most W/60: the summed span is [now - W - d, now] with
d < W/60, so a refusal means the limit would be exceeded over an interval of
length at most W + W/60.

Times are integer milliseconds and bucket ids are computed as
`(now_ms * 60) // window_ms`, exact integer arithmetic that the Redis script
reproduces exactly in Lua doubles (see redis.py).
"""

from __future__ import annotations

from bisect import insort
from collections import deque

SUB_BUCKETS = 60


def bucket_of(now_ms: int, window_ms: int) -> int:
    """The sub-bucket id that `now_ms` falls in, for a window of `window_ms`."""
    return (now_ms * SUB_BUCKETS) // window_ms


def bucket_leaves_at(bucket: int, window_ms: int) -> int:
    """The first millisecond at which `bucket` is no longer summed."""
    return -((-(bucket + SUB_BUCKETS + 1) * window_ms) // SUB_BUCKETS)


class SlidingWindow:
    """Counts of one limit's unit (requests or tokens) in sub-buckets of one window.

    The limit itself is not stored: the limit in force may change (step policies)
    while the counts stay.
    """

    __slots__ = ("_counts", "_ids", "total", "window_ms")

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self._ids: deque[int] = deque()
        self._counts: dict[int, int] = {}
        self.total = 0

    def used(self, bucket: int) -> int:
        """The sum over the buckets summed at `bucket` (dropping those that left)."""
        ids = self._ids
        oldest = bucket - SUB_BUCKETS
        while ids and ids[0] < oldest:
            self.total -= self._counts.pop(ids.popleft())
        return self.total

    def add(self, bucket: int, amount: int) -> None:
        counts = self._counts
        if bucket in counts:
            counts[bucket] += amount
        else:
            counts[bucket] = amount
            ids = self._ids
            if not ids or ids[-1] < bucket:
                ids.append(bucket)
            else:  # the clock stepped back: keep the ids ordered
                insort(ids, bucket)
        self.total += amount

    def adjust(self, bucket: int, delta: int, now_bucket: int) -> None:
        """Settle a reservation made in `bucket`: refund (delta < 0) or charge.

        A bucket that has already left the window is not summed anymore: a refund
        to it is moot, and a charge goes to the current bucket instead.
        """
        self.used(now_bucket)
        if bucket in self._counts:
            self._counts[bucket] += delta
            self.total += delta
        elif delta > 0:
            self.add(now_bucket, delta)

    def wait_ms(self, now_ms: int, excess: int) -> int | None:
        """Milliseconds until at least `excess` has left the window; None if never."""
        freed = 0
        for bucket in self._ids:
            freed += self._counts[bucket]
            if freed >= excess:
                return max(0, bucket_leaves_at(bucket, self.window_ms) - now_ms)
        return None

    def reset_ms(self, now_ms: int) -> int:
        """Milliseconds until the window is empty again (the newest bucket leaves)."""
        if not self._ids:
            return 0
        return max(0, bucket_leaves_at(self._ids[-1], self.window_ms) - now_ms)

    def is_empty(self) -> bool:
        return not self._ids
