"""A concurrency bulkhead: at most ``limit`` calls in flight, at most ``max_waiting`` queued for a slot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from connectors import Busy


class Bulkhead:
    def __init__(self, name: str, limit: int, max_waiting: int | None = None) -> None:
        self.name = name
        self._limiter = trio.CapacityLimiter(limit)
        self.max_waiting = max_waiting
        self._waiting = 0

    @property
    def limit(self) -> int:
        return int(self._limiter.total_tokens)

    def set_limit(self, limit: int) -> None:
        self._limiter.total_tokens = limit

    @property
    def in_flight(self) -> int:
        return self._limiter.borrowed_tokens

    @property
    def waiting(self) -> int:
        return self._waiting

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body; raises Busy at once when too many already wait."""
        try:
            self._limiter.acquire_nowait()
        except trio.WouldBlock:
            if self.max_waiting is not None and self._waiting >= self.max_waiting:
                raise Busy(self.name, f"bulkhead full ({self.limit} in flight, {self._waiting} waiting)") from None
            self._waiting += 1
            try:
                await self._limiter.acquire()
            finally:
                self._waiting -= 1
        try:
            yield
        finally:
            self._limiter.release()
