"""The ``null`` connector kind: talks to no bank. For benchmarks and for a daemon with no bank wired yet."""

from __future__ import annotations

from typing import ClassVar

import msgspec
import trio

from ._contract import Capability, ConnectorConfig, Health
from ._errors import Network
from ._values import Duration, Secret


class NullOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[connectors.null]``: how the fake bank behaves."""

    latency: Duration = msgspec.field(default_factory=lambda: Duration("0s"))
    healthy: bool = True
    token: Secret | None = None


class NullConfig(ConnectorConfig, frozen=True, kw_only=True, tag="null"):
    null: NullOptions = msgspec.field(default_factory=NullOptions)


class NullConnector:
    kind: ClassVar[str] = "null"
    offers: ClassVar[frozenset[Capability]] = frozenset({Capability.HEALTH})
    capabilities: frozenset[Capability] = offers

    def __init__(self, config: NullConfig) -> None:
        self.config = config
        self.opened = False

    async def open(self) -> None:
        await trio.sleep(self.config.null.latency.seconds)
        self.opened = True

    async def aclose(self) -> None:
        self.opened = False

    async def healthcheck(self) -> Health:
        start = trio.current_time()
        await trio.sleep(self.config.null.latency.seconds)
        if not self.config.null.healthy:
            raise Network(self.config.name, "null connector configured unhealthy")
        return Health(ok=True, latency_seconds=trio.current_time() - start, detail="null")
