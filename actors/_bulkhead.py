"""A concurrency bulkhead: at most ``limit`` calls in flight, at most ``max_waiting`` queued for a slot.

The fast path (a free slot) is synchronous and costs a comparison. A released slot is handed straight to the
longest waiter, so no newcomer can starve it.
"""

from __future__ import annotations

import trio

from connectors import Busy


class Bulkhead:
    def __init__(self, name: str, limit: int, max_waiting: int | None = None) -> None:
        if limit < 1:
            raise ValueError("a bulkhead needs a limit of at least 1")
        self.name = name
        self._limit = limit
        self.max_waiting = max_waiting
        self._in_flight = 0
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a bulkhead needs a limit of at least 1")
        self._limit = limit
        while self._lot and self._in_flight < self._limit:
            self._in_flight += 1
            self._lot.unpark()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._lot)

    def try_enter(self) -> bool:
        """Take a slot if one is free, without waiting."""
        if self._in_flight < self._limit and not self._lot:
            self._in_flight += 1
            return True
        return False

    async def enter(self) -> None:
        """Take a slot, waiting in line; raises Busy at once when max_waiting are already waiting.

        Cancelled while waiting: no slot is taken.
        """
        if self.try_enter():
            return
        if self.max_waiting is not None and len(self._lot) >= self.max_waiting:
            raise Busy(self.name, f"bulkhead full ({self._limit} in flight, {len(self._lot)} waiting)")
        # A leaving caller hands us its slot. Cancelled in line, trio takes us out of the lot at once (it never
        # cancels a park that was already unparked): no slot was taken, and no count needs mending.
        await self._lot.park()

    def leave(self) -> None:
        # The slot passes to the next in line (in_flight stays the same); with nobody waiting it is freed.
        if not self._lot.unpark():
            self._in_flight -= 1

    def slot(self) -> _Slot:
        """``async with bulkhead.slot():`` holds one slot for the body."""
        return _Slot(self)


class _Slot:
    __slots__ = ("_bulkhead",)

    def __init__(self, bulkhead: Bulkhead) -> None:
        self._bulkhead = bulkhead

    async def __aenter__(self) -> None:
        if not self._bulkhead.try_enter():
            await self._bulkhead.enter()

    async def __aexit__(self, *exc: object) -> None:
        self._bulkhead.leave()
