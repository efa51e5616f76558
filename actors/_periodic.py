"""An actor that runs one async function on an interval (telemetry flushes and the like)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import trio

from ._actor import Actor


class RunNow(msgspec.Struct, frozen=True):
    pass


class Periodic(Actor[RunNow]):
    def __init__(self, name: str, interval: float, fn: Callable[[], Awaitable[None]]) -> None:
        super().__init__(name, mailbox_size=4)
        self.interval = interval
        self._fn = fn

    async def setup(self) -> None:
        self.nursery.start_soon(self._ticker)

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.interval)
            await self._fn()

    async def handle(self, msg: RunNow) -> None:
        await self._fn()

    async def drained(self) -> None:
        await self._fn()  # a last run on a graceful stop, so nothing buffered is left behind
