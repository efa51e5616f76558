"""The registry mirror: this host's connectors, their state, health and breaker, in ``bank_connectors_registry``.

Design §10: every host reports what it runs, so people (and other hosts' operators) see one table. The mirror
upserts the configured connectors when the database comes up and after a reload, and writes each connector's
dispatch state, incarnation, restarts, last health check and breaker state after every health round. A database
that is away is skipped and logged; the next round writes again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from actors import BreakerState, ChildInfo, ConnectorActor, HealthResult
from connectors import ConnectorConfig

from . import db
from .logs import log
from .metrics import Metrics

logger = logging.getLogger("molamd.registry")
# The registry's breaker_state column knows closed, open and half_open; forced open is open to a reader.
_BREAKER = {BreakerState.FORCED_OPEN: "open"}


class RegistryMirror:
    def __init__(self, database: db.Database, host_id: str, metrics: Metrics,
                 configured: Callable[[], Sequence[ConnectorConfig]], children: Callable[[], Sequence[ChildInfo]],
                 actor: Callable[[str], ConnectorActor | None]) -> None:
        self._db = database
        self._host = host_id
        self._metrics = metrics
        self._configured = configured
        self._children = children
        self._actor = actor

    async def sync(self) -> None:
        """Upsert the configured connectors for this host; a database that is down is retried on reconnect."""
        configs = list(self._configured())
        try:
            await self._db.transaction(lambda conn: db.sync_configured(conn, self._host, configs))
        except db.DatabaseError as exc:
            log(logger, logging.WARNING, "registry sync skipped: database unavailable", reason=str(exc))
        else:
            log(logger, logging.INFO, "registry synced", connectors=len(configs))

    async def report(self, results: Sequence[HealthResult]) -> None:
        """After a health round: state, health and breaker of every connector of this host."""
        by_name = {r.connector: r for r in results}
        for r in results:
            self._metrics.connector_up.labels(r.connector).set(1.0 if r.health is not None and r.health.ok else 0.0)
        rows = []
        for info in self._children():
            actor = self._actor(info.name)
            state = actor.dispatch.value if actor is not None else info.state.value
            breaker = None
            if actor is not None:
                breaker = _BREAKER.get(actor.breaker.state, actor.breaker.state.value)
            result = by_name.get(info.name)
            health = result.health if result else None
            rows.append(db.RegistryRow(
                name=info.name, state=state, incarnation=info.incarnation, restarts=info.restarts,
                last_error=info.last_error or (result.error if result else None),
                health_ok=health.ok if health else (False if result and result.error else None),
                health_detail=(health.detail if health else (result.error if result else None)),
                breaker_state=breaker,
            ))
        if not rows or not self._db.up:
            return
        try:
            await self._db.transaction(lambda conn: db.report_states(conn, self._host, rows))
        except db.DatabaseError as exc:
            log(logger, logging.WARNING, "health report skipped: database unavailable", reason=str(exc))
