"""Breaker, rate limiter, bulkhead and retry policy, all on trio's mock clock."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from actors import Backoff, BreakerEvent, BreakerState, Bulkhead, CircuitBreaker, RateLimiter, RetryPolicy
from connectors import BreakerConfig, Busy, CircuitOpen, Duration, Network, RateLimited, Validation


def breaker(events: list[BreakerEvent] | None = None, **kw: object) -> CircuitBreaker:
    defaults: dict[str, object] = dict(
        window=10, minimum_calls=4, failure_rate=0.5, open_duration=Duration("2s"), open_duration_max=Duration("8s"),
        half_open_calls=2, half_open_max_duration=Duration("5s"), slow_call_duration=Duration("1s"),
    )
    defaults.update(kw)
    config = BreakerConfig(**defaults)  # type: ignore[arg-type]
    return CircuitBreaker("bank-a", config, events.append if events is not None else None)


async def test_opens_at_the_failure_rate_only_past_minimum_calls(autojump_clock: trio.testing.MockClock) -> None:
    events: list[BreakerEvent] = []
    b = breaker(events)
    for _ in range(3):
        b.acquire()
        b.record(False, 0.1)
    assert b.state is BreakerState.CLOSED, "3 failures are under minimum_calls"
    b.acquire()
    b.record(False, 0.1)
    assert b.state is BreakerState.OPEN and not b.allows()
    with pytest.raises(CircuitOpen):
        b.acquire()
    assert events[-1].from_state is BreakerState.CLOSED and "failure rate 4/4" in events[-1].reason
    assert b.snapshot().open_seconds_left == pytest.approx(2.0)


async def test_successes_keep_it_closed(autojump_clock: trio.testing.MockClock) -> None:
    b = breaker()
    for i in range(100):
        b.acquire()
        b.record(i % 3 != 2, 0.1)  # a third fail: under the 50% rate
    assert b.state is BreakerState.CLOSED
    assert 0.2 < b.snapshot().failure_rate < 0.5


async def test_slow_calls_open_it(autojump_clock: trio.testing.MockClock) -> None:
    b = breaker(slow_call_rate=0.5)
    for _ in range(4):
        b.acquire()
        b.record(True, 2.0)
    assert b.state is BreakerState.OPEN


async def test_half_open_probe_quota_then_close(autojump_clock: trio.testing.MockClock) -> None:
    events: list[BreakerEvent] = []
    b = breaker(events)
    b.force_open()
    b.reset()
    for _ in range(4):
        b.record(False, 0.1)
    await trio.sleep(2)
    assert b.state is BreakerState.HALF_OPEN
    b.acquire()
    b.acquire()
    with pytest.raises(CircuitOpen):
        b.acquire()  # only half_open_calls probes at once
    b.record(True, 0.1)
    assert b.state is BreakerState.HALF_OPEN
    b.record(True, 0.1)
    assert b.state is BreakerState.CLOSED
    assert [e.to_state for e in events] == [
        BreakerState.FORCED_OPEN, BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN,
        BreakerState.CLOSED]


async def test_reopening_grows_up_to_the_max(autojump_clock: trio.testing.MockClock) -> None:
    b = breaker()
    for _ in range(4):
        b.record(False, 0.1)
    durations = []
    for _ in range(4):
        start = trio.current_time()
        while b.state is BreakerState.OPEN:  # noqa: ASYNC110 - polls the breaker's clock-driven state
            await trio.sleep(0.1)
        durations.append(round(trio.current_time() - start))
        b.acquire()
        b.record(False, 0.1)  # the probe fails: open again, longer
    assert durations == [2, 4, 8, 8]


async def test_never_stuck_half_open_or_open(autojump_clock: trio.testing.MockClock) -> None:
    """A probe that never reports (lost, cancelled) cannot keep the breaker half-open: it reopens, then
    half-opens again, and a success closes it."""
    events: list[BreakerEvent] = []
    b = breaker(events)
    for _ in range(4):
        b.record(False, 0.1)
    await trio.sleep(2)
    b.acquire()
    b.acquire()  # two probes taken, neither ever reports
    assert not b.allows()
    await trio.sleep(5)
    assert b.state is BreakerState.OPEN and "no verdict" in events[-1].reason
    await trio.sleep(8)
    assert b.state is BreakerState.HALF_OPEN
    b.acquire()
    b.release()  # a permitted call that never reached the bank gives its slot back
    b.acquire()
    b.acquire()
    b.record(True, 0.1)
    b.record(True, 0.1)
    assert b.state is BreakerState.CLOSED


async def test_forced_open_stays_until_reset(autojump_clock: trio.testing.MockClock) -> None:
    b = breaker()
    b.force_open()
    await trio.sleep(3600)
    assert b.state is BreakerState.FORCED_OPEN and not b.allows()
    b.reset()
    assert b.allows()


async def test_time_window_forgets_old_outcomes(autojump_clock: trio.testing.MockClock) -> None:
    b = breaker(window_time=Duration("10s"), window=1000)
    for _ in range(3):
        b.record(False, 0.1)
    await trio.sleep(11)
    for _ in range(3):
        b.record(True, 0.1)
    b.record(False, 0.1)
    assert b.state is BreakerState.CLOSED and b.snapshot().calls_in_window == 4


async def test_limiter_rate_and_burst(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(rate=10, burst=5)
    start = trio.current_time()
    times = []
    for _ in range(15):
        await limiter.acquire()
        times.append(round(trio.current_time() - start, 3))
    assert times[:5] == [0.0] * 5, "the burst goes at once"
    assert times[5:] == [round(0.1 * i, 3) for i in range(1, 11)], "then exactly one per 1/rate"
    assert limiter.waited_seconds == pytest.approx(1.0)  # ten waits of 1/rate each


async def test_limiter_retry_after_and_live_changes(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(rate=100, burst=1)
    limiter.pause_until(trio.current_time() + 3)
    assert limiter.tokens() == 0.0 and limiter.delay() == pytest.approx(3)
    assert await limiter.acquire() == pytest.approx(3)
    limiter.set_rate(1, 1)
    await limiter.acquire()
    start = trio.current_time()
    await limiter.acquire()
    assert trio.current_time() - start == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError):
        limiter.set_rate(0, 1)


async def test_limiter_cancelled_waiter_gives_its_turn_back(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(rate=1, burst=1)
    await limiter.acquire()
    with trio.move_on_after(0.5):
        await limiter.acquire()
    start = trio.current_time()
    await limiter.acquire()
    assert trio.current_time() - start == pytest.approx(0.5)


async def test_bulkhead_caps_concurrency_and_waiting(autojump_clock: trio.testing.MockClock) -> None:
    bulkhead = Bulkhead("bank-a", limit=2, max_waiting=1)
    peak = 0
    busy = 0

    async def call() -> None:
        nonlocal peak
        try:
            async with bulkhead.slot():
                peak = max(peak, bulkhead.in_flight)
                await trio.sleep(1)
        except Busy:
            nonlocal busy
            busy += 1

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(call)
    assert peak == 2 and busy == 2 and bulkhead.in_flight == 0
    bulkhead.set_limit(4)
    assert bulkhead.limit == 4


async def test_retry_policy(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Network("bank-a", "reset")
        return "ok"

    policy = RetryPolicy(attempts=5, total_seconds=60, backoff=Backoff(initial=1, maximum=4, jitter=1.0))
    assert await policy.call(flaky, rng=random.Random(1)) == "ok" and calls == 3

    async def refuses() -> str:
        raise Validation("bank-a", "bad")

    with pytest.raises(Validation):
        await policy.call(refuses)

    async def always_down() -> str:
        raise Network("bank-a", "down")

    start = trio.current_time()
    with pytest.raises(Network):
        await RetryPolicy(attempts=3, total_seconds=60, backoff=Backoff(initial=1, jitter=0)).call(always_down)
    assert trio.current_time() - start == pytest.approx(3.0)  # waits 1 then 2
    start = trio.current_time()
    with pytest.raises(Network):
        await RetryPolicy(attempts=100, total_seconds=10, backoff=Backoff(initial=1, jitter=0)).call(always_down)
    assert trio.current_time() - start <= 10

    async def slow_down() -> str:
        nonlocal calls
        calls += 1
        if calls < 6:
            raise RateLimited("bank-a", "429", retry_after=7.0)
        return "ok"

    start = trio.current_time()
    assert await RetryPolicy(attempts=5, total_seconds=60).call(slow_down) == "ok"
    assert trio.current_time() - start == pytest.approx(14.0)


async def test_bulkhead_cancelled_waiter_takes_no_slot(autojump_clock: trio.testing.MockClock) -> None:
    bulkhead = Bulkhead("bank-a", limit=1)
    async with trio.open_nursery() as nursery:

        async def holder() -> None:
            async with bulkhead.slot():
                await trio.sleep(1)

        nursery.start_soon(holder)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.5):
            async with bulkhead.slot():
                raise AssertionError("never admitted while the holder holds the only slot")
        assert bulkhead.waiting == 0 and bulkhead.in_flight == 1
    assert bulkhead.in_flight == 0
    async with bulkhead.slot():
        assert bulkhead.in_flight == 1
    bulkhead.set_limit(3)
    with pytest.raises(ValueError):
        Bulkhead("x", 0)


async def test_bulkhead_waiters_cancelled_in_line_lose_no_slot(autojump_clock: trio.testing.MockClock) -> None:
    bulkhead = Bulkhead("bank-a", 1)
    assert bulkhead.try_enter()

    async def impatient() -> None:
        with trio.move_on_after(1):
            await bulkhead.enter()
            bulkhead.leave()

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(impatient)
        await trio.sleep(1)  # their deadlines pass; the holder leaves in the same instant
        bulkhead.leave()
    assert (bulkhead.in_flight, bulkhead.waiting) == (0, 0)
    assert bulkhead.try_enter(), "the slot is free again"
