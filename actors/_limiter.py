"""A GCRA rate limiter: ``rate`` calls per second sustained, ``burst`` at once, exact waits, trio time.

``pause_until`` honours a bank's Retry-After: nobody is let through before that moment. Rate and burst can be
changed live. A caller cancelled while waiting gives its slot back when it was the last one reserved.
"""

from __future__ import annotations

import trio


class RateLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self._tat = 0.0  # theoretical arrival time of the next call
        self._paused_until = 0.0
        self.waited_seconds = 0.0
        self.set_rate(rate, burst)

    def set_rate(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._interval = 1.0 / rate
        self._tolerance = self._interval * (burst - 1)

    def pause_until(self, when: float) -> None:
        self._paused_until = max(self._paused_until, when)

    def paused_for(self) -> float:
        """Seconds left of a Retry-After pause (0 when not paused)."""
        return max(0.0, self._paused_until - trio.current_time())

    def delay(self) -> float:
        """How long a call arriving now would wait."""
        now = trio.current_time()
        start = max(now, self._paused_until)
        return max(start - now, max(self._tat, start) - self._tolerance - now)

    def tokens(self) -> float:
        """Calls that could go through right now without waiting (for display)."""
        now = trio.current_time()
        if now < self._paused_until:
            return 0.0
        backlog = max(0.0, self._tat - now)
        return max(0.0, (self._tolerance + self._interval - backlog) / self._interval)

    def try_acquire(self, now: float | None = None) -> bool:
        """Take this call's turn if it may go now, without waiting (the hot path: no coroutine).

        ``now`` saves a clock read when the caller has just taken ``trio.current_time()`` itself.
        """
        if now is None:
            now = trio.current_time()
        if now < self._paused_until:
            return False
        tat = self._tat if self._tat > now else now
        if tat - self._tolerance > now:
            return False
        self._tat = tat + self._interval
        return True

    async def acquire(self) -> float:
        """Wait for this call's turn; returns the seconds waited. Cancellation gives the turn back.

        When the call may go at once this returns without a checkpoint (it is on every bank call's path).
        """
        now = trio.current_time()
        start = max(now, self._paused_until)
        tat = max(self._tat, start)
        allowed_at = max(start, tat - self._tolerance)
        reserved = tat + self._interval
        self._tat = reserved
        wait = allowed_at - now
        if wait <= 0:
            return 0.0  # no checkpoint on the fast path: the call it admits is the next one
        try:
            await trio.sleep(wait)
        except trio.Cancelled:
            if self._tat == reserved:
                self._tat -= self._interval
            raise
        self.waited_seconds += wait
        return wait
