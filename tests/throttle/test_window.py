"""The sliding-window counter: the never-over-admit guarantee and its W/60 error bound."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from llmgate.throttle.window import SUB_BUCKETS, SlidingWindow, bucket_leaves_at, bucket_of

WINDOWS_MS = st.sampled_from([1_000, 60_000, 86_400_000, 7_000])


@dataclass
class Admitted:
    at: int
    bucket: int
    weight: int


arrivals = st.lists(
    st.tuples(
        st.integers(0, 3_000),  # ms since the previous arrival (scaled by the window below)
        st.integers(1, 12),  # cost
        st.integers(0, 100),  # actual cost, as a percentage of the reservation
        st.booleans(),  # settled?
    ),
    min_size=1,
    max_size=120,
)


def simulate(window_ms: int, limit: int, schedule: list[tuple[int, int, int, bool]]):
    """Admit a schedule (settling each admitted request at once, refund only); return
    the admitted requests and the refusals as (time, cost, weights counted then)."""
    window = SlidingWindow(window_ms)
    scale = max(1, window_ms // 1000)
    now = 0
    admitted: list[Admitted] = []
    refused: list[tuple[int, int, list[Admitted]]] = []
    for gap, cost, percent, settles in schedule:
        now += gap * scale
        bucket = bucket_of(now, window_ms)
        if window.used(bucket) + cost <= limit:
            window.add(bucket, cost)
            entry = Admitted(now, bucket, cost)
            admitted.append(entry)
            if settles:
                actual = cost * percent // 100
                window.adjust(bucket, actual - cost, bucket)
                entry.weight = actual
        else:
            refused.append((now, cost, [Admitted(a.at, a.bucket, a.weight) for a in admitted]))
    return admitted, refused


@settings(max_examples=300, deadline=None)
@given(window_ms=WINDOWS_MS, limit=st.integers(0, 40), schedule=arrivals)
def test_no_sliding_interval_of_length_w_holds_more_than_the_limit(window_ms, limit, schedule):
    admitted, _ = simulate(window_ms, limit, schedule)
    for last in admitted:
        inside = sum(a.weight for a in admitted if last.at - window_ms <= a.at <= last.at)
        assert inside <= limit


@settings(max_examples=300, deadline=None)
@given(window_ms=WINDOWS_MS, limit=st.integers(0, 40), schedule=arrivals)
def test_a_refusal_means_the_limit_would_be_exceeded_within_w_plus_one_bucket(window_ms, limit, schedule):
    _, refused = simulate(window_ms, limit, schedule)
    bucket_width = window_ms / SUB_BUCKETS
    for at, cost, weights in refused:
        recent = sum(a.weight for a in weights if a.at > at - window_ms - bucket_width)
        assert recent + cost > limit


@settings(max_examples=200, deadline=None)
@given(
    window_ms=WINDOWS_MS,
    limit=st.integers(1, 30),
    costs=st.lists(st.integers(1, 10), min_size=1, max_size=40),
    gap=st.integers(0, 500),
    cost=st.integers(1, 30),
)
def test_wait_ms_is_exactly_when_the_request_would_pass(window_ms, limit, costs, gap, cost):
    window = SlidingWindow(window_ms)
    now = 10**12
    for c in costs:
        bucket = bucket_of(now, window_ms)
        if window.used(bucket) + c <= limit:
            window.add(bucket, c)
        now += gap
    used = window.used(bucket_of(now, window_ms))
    if used + cost <= limit:
        return
    wait = window.wait_ms(now, used + cost - limit)
    if cost > limit:
        assert wait is None or window.used(bucket_of(now + wait, window_ms)) + cost > limit
        return
    assert wait is not None
    if wait > 0:
        probe = SlidingWindow(window_ms)
        for b, count in window._counts.items():
            probe.add(b, count)
        assert probe.used(bucket_of(now + wait - 1, window_ms)) + cost > limit
    assert window.used(bucket_of(now + wait, window_ms)) + cost <= limit


def test_bucket_leaves_exactly_one_window_plus_one_bucket_after_it_starts():
    for window_ms in (1_000, 60_000, 7_000):
        for bucket in (0, 59, 123_456_789):
            leaves = bucket_leaves_at(bucket, window_ms)
            assert bucket_of(leaves, window_ms) - SUB_BUCKETS > bucket
            assert bucket_of(leaves - 1, window_ms) - SUB_BUCKETS <= bucket


def test_settlement_refunds_and_charges_the_bucket_of_the_reservation():
    window = SlidingWindow(60_000)
    window.add(10, 100)
    window.add(11, 5)
    window.adjust(10, -60, 12)
    window.adjust(10, 7, 12)
    assert window._counts == {10: 47, 11: 5}
    assert window.used(12) == 52


def test_a_charge_to_a_bucket_that_left_goes_to_the_current_bucket_and_a_refund_is_dropped():
    window = SlidingWindow(60_000)
    window.add(0, 10)
    window.adjust(0, -4, 200)
    assert window.used(200) == 0
    window.adjust(0, 6, 200)
    assert window._counts == {200: 6}


def test_a_clock_stepping_back_keeps_counting_every_bucket():
    window = SlidingWindow(60_000)
    window.add(100, 3)
    window.add(90, 2)
    assert list(window._ids) == [90, 100]
    assert window.used(95) == 5
