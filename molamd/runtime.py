"""The daemon's running state: the current config and the supervisors that run it.

Config (what was asked for), OS calls (daemon.py) and this runtime state live apart. Everything here runs on
the trio thread; nothing needs a lock beyond the reload lock.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence

import trio

from actors import (
    Backoff,
    ChildSpec,
    ConnectorActor,
    HealthChecker,
    HealthResult,
    RestartPolicy,
    Strategy,
    Supervisor,
    SupervisorEvent,
)
from connectors import ConnectorConfig, build_connector

from . import __version__, db
from .config import Config, HealthCheckerSection, SupervisionSection, secret_values
from .events import EventBus
from .logs import log, redactor
from .metrics import Metrics
from .sdnotify import Notifier

logger = logging.getLogger("molamd.runtime")

CONNECTORS = "connectors"
WORKERS = "workers"
HEALTH_CHECKER = "health_checker"


def restart_policy(section: SupervisionSection) -> RestartPolicy:
    return RestartPolicy(
        max_restarts=section.max_restarts,
        period=section.period.seconds,
        stable_after=section.stable_after.seconds,
        backoff=Backoff(initial=section.backoff_initial.seconds, maximum=section.backoff_max.seconds),
    )


class Runtime:
    def __init__(self, config_path: str, config: Config, *, notifier: Notifier | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.host_id = config.daemon.host_id or socket.gethostname()
        self.pid = os.getpid()
        self.started_at = time.time()
        self.config_loaded_at = time.time()
        self.last_reload: dict[str, object] = {"ok": True, "at": self.config_loaded_at, "error": None}
        self.metrics = Metrics()
        self.metrics.reload_success_timestamp.set(self.config_loaded_at)
        self.events = EventBus()
        self.notifier = notifier or Notifier()
        self.reload_lock = trio.Lock()
        self.nursery: trio.Nursery | None = None
        self.db = db.Database(config.database, metrics=self.metrics, on_up=self.sync_registry)
        policy = restart_policy(config.supervision)
        self.connectors = Supervisor(
            CONNECTORS,
            [self.connector_spec(c) for c in config.connectors],
            strategy=Strategy.ONE_FOR_ONE,
            policy=policy,
            on_event=self.on_actor_event,
        )
        self.workers = Supervisor(
            WORKERS, self.worker_specs(config), strategy=Strategy.ONE_FOR_ONE, policy=policy,
            on_event=self.on_actor_event,
        )
        self.metrics.watch_supervisors(lambda: (self.connectors, self.workers))
        redactor.set_values(secret_values(config))

    # -- specs --------------------------------------------------------------------------------------

    def connector_spec(self, config: ConnectorConfig) -> ChildSpec:
        return ChildSpec(
            name=config.name,
            factory=lambda: ConnectorActor(config, build_connector(config)),
            shutdown_grace=config.shutdown_grace.seconds,
        )

    def worker_specs(self, config: Config) -> list[ChildSpec]:
        specs = []
        health = config.workers.health_checker
        if health.enabled:
            specs.append(ChildSpec(name=HEALTH_CHECKER, factory=lambda: self._health_checker(health)))
        return specs

    def _health_checker(self, section: HealthCheckerSection) -> HealthChecker:
        return HealthChecker(
            targets=self.connector_actors,
            report=self.report_health,
            interval=section.interval.seconds,
            timeout=section.timeout.seconds,
            concurrency=section.concurrency,
        )

    # -- lookups ------------------------------------------------------------------------------------

    def connector_actor(self, name: str) -> ConnectorActor | None:
        child = self.connectors.child(name)
        return child if isinstance(child, ConnectorActor) else None

    def connector_actors(self) -> list[tuple[str, ConnectorActor | None]]:
        return [(name, self.connector_actor(name)) for name in self.connectors.names()]

    # -- events and the registry -------------------------------------------------------------------

    def on_actor_event(self, event: SupervisorEvent) -> None:
        level = logging.WARNING if event.kind in ("exited", "failed", "escalated") and event.reason else logging.INFO
        log(
            logger, level, f"actor {event.kind}", actor=event.child, supervisor=event.supervisor,
            incarnation=event.incarnation, reason=event.reason, delay_seconds=event.delay_seconds,
            restarts=event.restarts,
        )
        self.events.publish(
            "actor", supervisor=event.supervisor, actor=event.child, event=event.kind.value,
            incarnation=event.incarnation, reason=event.reason, delay_seconds=event.delay_seconds,
            restarts=event.restarts,
        )

    async def sync_registry(self) -> None:
        """Upsert the configured connectors for this host; a database that is down is retried on reconnect."""
        configs = list(self.config.connectors)
        try:
            await self.db.transaction(lambda conn: db.sync_configured(conn, self.host_id, configs))
        except db.DatabaseUnavailable as exc:
            log(logger, logging.WARNING, "registry sync skipped: database unavailable", reason=str(exc))
        else:
            log(logger, logging.INFO, "registry synced", connectors=len(configs))

    async def report_health(self, results: Sequence[HealthResult]) -> None:
        by_name = {r.connector: r for r in results}
        rows = []
        for info in self.connectors.infos():
            actor = self.connector_actor(info.name)
            state = actor.dispatch.value if actor is not None else info.state.value
            result = by_name.get(info.name)
            health = result.health if result else None
            rows.append(
                db.RegistryRow(
                    name=info.name, state=state, incarnation=info.incarnation, restarts=info.restarts,
                    last_error=info.last_error or (result.error if result else None),
                    health_ok=health.ok if health else (False if result and result.error else None),
                    health_detail=(health.detail if health else (result.error if result else None)),
                )
            )
        if not rows or not self.db.up:
            return
        try:
            await self.db.transaction(lambda conn: db.report_states(conn, self.host_id, rows))
        except db.DatabaseUnavailable as exc:
            log(logger, logging.WARNING, "health report skipped: database unavailable", reason=str(exc))

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run background work in the daemon's nursery (set by the daemon once it runs)."""
        if self.nursery is None:
            raise RuntimeError("the daemon is not running")
        self.nursery.start_soon(fn)

    def uptime(self) -> float:
        return time.time() - self.started_at

    version = __version__
