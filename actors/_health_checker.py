"""The health checker: asks every connector actor for a health check on an interval and reports the results.

Where results go (the registry table) is the caller's business: it passes ``report``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import msgspec
import trio

from connectors import Health

from ._actor import Actor
from ._connector_actor import ConnectorActor
from ._errors import ActorError

logger = logging.getLogger("molamd.health")


class HealthResult(msgspec.Struct, frozen=True, kw_only=True):
    connector: str
    health: Health | None
    error: str | None = None


class CheckNow(msgspec.Struct, frozen=True):
    pass


Targets = Callable[[], Sequence[tuple[str, ConnectorActor | None]]]
Report = Callable[[Sequence[HealthResult]], Awaitable[None]]


class HealthChecker(Actor[CheckNow]):
    def __init__(
        self, *, targets: Targets, report: Report, interval: float, timeout: float, concurrency: int
    ) -> None:
        super().__init__("health_checker", mailbox_size=4)
        self._targets = targets
        self._report = report
        self.interval = interval
        self.timeout = timeout
        self._limiter = trio.CapacityLimiter(concurrency)

    async def setup(self) -> None:
        self.nursery.start_soon(self._ticker)

    async def _ticker(self) -> None:
        while True:
            await self.check_all()
            await trio.sleep(self.interval)

    async def handle(self, msg: CheckNow) -> tuple[HealthResult, ...]:
        return await self.check_all()

    async def check_all(self) -> tuple[HealthResult, ...]:
        """One round over every connector; a connector that is not running is reported with its reason."""
        targets = list(self._targets())
        results: list[HealthResult | None] = [None] * len(targets)

        async def one(index: int, name: str, actor: ConnectorActor) -> None:
            async with self._limiter:
                try:
                    health = await actor.check_health(timeout=self.timeout)
                except ActorError as exc:
                    results[index] = HealthResult(connector=name, health=None, error=str(exc))
                else:
                    results[index] = HealthResult(connector=name, health=health)

        async with trio.open_nursery() as nursery:
            for index, (name, actor) in enumerate(targets):
                if actor is None:
                    results[index] = HealthResult(connector=name, health=None, error="not running")
                else:
                    nursery.start_soon(one, index, name, actor)
        final = tuple(r for r in results if r is not None)
        await self._report(final)
        return final
