"""A circuit breaker driven by ``trio.current_time()``.

::

    CLOSED --(failure or slow-call rate over the window, with at least minimum_calls)--> OPEN
    OPEN --(open_duration elapsed)--> HALF_OPEN
    HALF_OPEN --(half_open_calls probes all succeed)--> CLOSED
    HALF_OPEN --(a probe fails, or half_open_max_duration passes without a verdict)--> OPEN (longer, up to max)
    any --force_open()--> FORCED_OPEN --reset()--> CLOSED

Automatic states are bounded in time, so the breaker can never stay open or half-open forever; only an
operator's force_open stays until reset. Every transition is reported as a BreakerEvent.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable

import msgspec
import trio

from connectors import BreakerConfig, CircuitOpen


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"


_CLOSED = BreakerState.CLOSED  # module constants for the per-call path


class BreakerEvent(msgspec.Struct, frozen=True, kw_only=True):
    breaker: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    timestamp: float = msgspec.field(default_factory=time.time)


class BreakerSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    state: BreakerState
    calls_in_window: int
    failure_rate: float
    slow_call_rate: float
    open_seconds_left: float
    times_opened: int


class CircuitBreaker:
    def __init__(
        self, name: str, config: BreakerConfig, on_transition: Callable[[BreakerEvent], None] | None = None
    ) -> None:
        self.name = name
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._window: deque[tuple[float, bool, bool]] = deque()
        self._failures = 0  # failed outcomes in the window, kept in step with it
        self._slows = 0
        self._open_until = 0.0
        self._half_open_until = 0.0
        self._probes_started = 0
        self._probes_ok = 0
        self._reopenings = 0
        self.times_opened = 0
        self.configure(config)

    def configure(self, config: BreakerConfig) -> None:
        self.config = config
        self._window_size = config.window
        self._window_time = config.window_time.seconds if config.window_time else None
        # Plain floats for the per-call path.
        self._slow_seconds = config.slow_call_duration.seconds
        self._minimum_calls = config.minimum_calls
        self._failure_rate = config.failure_rate
        self._slow_rate = config.slow_call_rate

    # -- state --------------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.CLOSED or self._state is BreakerState.FORCED_OPEN:
            return self._state  # no timed transitions leave these states
        now = trio.current_time()
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._to(BreakerState.HALF_OPEN, "open duration elapsed")
            self._probes_started = self._probes_ok = 0
            self._half_open_until = now + self.config.half_open_max_duration.seconds
        elif self._state is BreakerState.HALF_OPEN and now >= self._half_open_until:
            self._open(f"no verdict from probes within {self.config.half_open_max_duration}")
        return self._state

    def allows(self) -> bool:
        """Whether a call would be let through now (without taking a probe slot)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and self._probes_started < self.config.half_open_calls

    def acquire(self) -> None:
        """Take permission for one call; raises CircuitOpen (not an attempt) when there is none."""
        if self._state is _CLOSED:
            return
        state = self.state
        if state is BreakerState.CLOSED:
            return
        if state is BreakerState.HALF_OPEN and self._probes_started < self.config.half_open_calls:
            self._probes_started += 1
            return
        raise CircuitOpen(self.name, f"circuit {state.value}")

    def release(self) -> None:
        """A permitted call never reached the bank (cancelled, busy): give its probe slot back."""
        if self._state is BreakerState.HALF_OPEN and self._probes_started > 0:
            self._probes_started -= 1

    def record(self, ok: bool, duration: float) -> None:
        """The outcome of a permitted call."""
        state = self._state
        if state is not _CLOSED:
            state = self.state
        slow = duration >= self._slow_seconds
        if state is BreakerState.HALF_OPEN:
            if not ok:
                self._open("a half-open probe failed")
                return
            self._probes_ok += 1
            if self._probes_ok >= self.config.half_open_calls:
                self._close("half-open probes succeeded")
            return
        if state is not _CLOSED:
            return  # a call admitted before the breaker opened; its outcome no longer decides anything
        window = self._window
        if self._window_time is not None:
            now = trio.current_time()
            window.append((now, not ok, slow))
            self._trim(now)
        else:
            window.append((0.0, not ok, slow))
            if len(window) > self._window_size:
                self._forget()
        self._failures += not ok
        self._slows += slow
        calls = len(window)
        if calls < self._minimum_calls or (ok and not slow):
            return  # a success that is not slow cannot raise either rate
        failures, slows = self._failures, self._slows
        if failures / calls >= self._failure_rate:
            self._open(f"failure rate {failures}/{calls}")
        elif slows / calls >= self._slow_rate:
            self._open(f"slow-call rate {slows}/{calls}")

    def force_open(self) -> None:
        self._to(BreakerState.FORCED_OPEN, "forced open by an operator")

    def reset(self) -> None:
        self._close("reset by an operator")

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        if self._window_time is not None:
            self._trim(trio.current_time())
        calls = len(self._window)
        failures, slows = self._failures, self._slows
        left = max(0.0, self._open_until - trio.current_time()) if state is BreakerState.OPEN else 0.0
        return BreakerSnapshot(
            state=state, calls_in_window=calls, failure_rate=round(failures / calls, 4) if calls else 0.0,
            slow_call_rate=round(slows / calls, 4) if calls else 0.0, open_seconds_left=round(left, 3),
            times_opened=self.times_opened,
        )

    # -- internals ----------------------------------------------------------------------------------

    def _trim(self, now: float) -> None:
        window = self._window
        if self._window_time is not None:
            while window and now - window[0][0] > self._window_time:
                self._forget()
        while len(window) > self._window_size:
            self._forget()

    def _forget(self) -> None:
        _, failed, slow = self._window.popleft()
        self._failures -= failed
        self._slows -= slow

    def _clear(self) -> None:
        self._window.clear()
        self._failures = self._slows = 0

    def _open(self, reason: str) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._reopenings += 1
        grow = self.config.open_duration_multiplier ** min(self._reopenings, 64)
        duration = min(self.config.open_duration_max.seconds, self.config.open_duration.seconds * grow)
        self._open_until = trio.current_time() + duration
        self._clear()
        self.times_opened += 1
        self._to(BreakerState.OPEN, f"{reason}; open for {duration:g}s")

    def _close(self, reason: str) -> None:
        self._clear()
        self._reopenings = 0
        self._probes_started = self._probes_ok = 0
        self._to(BreakerState.CLOSED, reason)

    def _to(self, state: BreakerState, reason: str) -> None:
        previous, self._state = self._state, state
        if previous is not state and self._on_transition is not None:
            self._on_transition(BreakerEvent(breaker=self.name, from_state=previous, to_state=state, reason=reason))
