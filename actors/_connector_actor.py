"""The connector actor: one per configured connector, owning the connector and its dispatch state.

Dispatch state is the operator's switch: ``running`` takes new work, ``paused`` takes none until resumed,
``draining`` finishes what is in flight and then sits ``drained``. Work itself (payouts, statements) comes
through the mailbox; health checks too, so they queue behind work like any other call to the bank.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec
import trio

from connectors import BankConnector, ConnectorConfig, ConnectorError, Health

from ._actor import DEFAULT_ASK_TIMEOUT, Actor, ActorSnapshot


class DispatchState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    DRAINING = "draining"
    DRAINED = "drained"


class Pause(msgspec.Struct, frozen=True):
    pass


class Resume(msgspec.Struct, frozen=True):
    pass


class Drain(msgspec.Struct, frozen=True):
    pass


class CheckHealth(msgspec.Struct, frozen=True):
    pass


ConnectorMsg = Pause | Resume | Drain | CheckHealth


class ConnectorSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    actor: ActorSnapshot
    kind: str
    bank_profile: str
    priority: int
    dispatch: DispatchState
    in_flight: int
    last_health: Health | None
    last_health_error: str | None


class ConnectorActor(Actor[ConnectorMsg]):
    def __init__(self, config: ConnectorConfig, connector: BankConnector) -> None:
        super().__init__(config.name, mailbox_size=config.mailbox_size)
        self.config = config
        self.connector = connector
        self._dispatch = DispatchState.RUNNING if config.enabled else DispatchState.PAUSED
        self._in_flight = 0
        self._last_health: Health | None = None
        self._last_health_error: str | None = None

    @property
    def dispatch(self) -> DispatchState:
        return self._dispatch

    @property
    def accepting(self) -> bool:
        """Whether the dispatcher may hand this connector new work."""
        return self._dispatch is DispatchState.RUNNING

    async def setup(self) -> None:
        await self.connector.open()

    async def teardown(self) -> None:
        await self.connector.aclose()

    async def handle(self, msg: ConnectorMsg) -> Any:
        match msg:
            case Pause():
                self._dispatch = DispatchState.PAUSED
            case Resume():
                self._dispatch = DispatchState.RUNNING
            case Drain():
                self._dispatch = DispatchState.DRAINING if self._in_flight else DispatchState.DRAINED
            case CheckHealth():
                return await self._check_health()
        return self._dispatch

    async def _check_health(self) -> Health:
        start = trio.current_time()
        try:
            health = await self.connector.healthcheck()
        except ConnectorError as exc:
            health = Health(ok=False, latency_seconds=trio.current_time() - start, detail=str(exc))
            self._last_health_error = str(exc)
        else:
            self._last_health_error = None if health.ok else health.detail
        self._last_health = health
        return health

    def connector_snapshot(self) -> ConnectorSnapshot:
        return ConnectorSnapshot(
            actor=self.snapshot(),
            kind=self.config.kind,
            bank_profile=self.config.bank_profile,
            priority=self.config.priority,
            dispatch=self._dispatch,
            in_flight=self._in_flight,
            last_health=self._last_health,
            last_health_error=self._last_health_error,
        )

    async def pause(self, timeout: float = DEFAULT_ASK_TIMEOUT) -> DispatchState:
        return await self._ask_state(Pause(), timeout)

    async def resume(self, timeout: float = DEFAULT_ASK_TIMEOUT) -> DispatchState:
        return await self._ask_state(Resume(), timeout)

    async def drain(self, timeout: float = DEFAULT_ASK_TIMEOUT) -> DispatchState:
        return await self._ask_state(Drain(), timeout)

    async def check_health(self, timeout: float = DEFAULT_ASK_TIMEOUT) -> Health:
        result = await self.ask(CheckHealth(), timeout=timeout)
        assert isinstance(result, Health)
        return result

    async def _ask_state(self, msg: ConnectorMsg, timeout: float) -> DispatchState:
        result = await self.ask(msg, timeout=timeout)
        assert isinstance(result, DispatchState)
        return result
