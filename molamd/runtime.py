"""The daemon's running state: the current config and the supervisors that run it.

Config (what was asked for), OS calls (daemon.py) and this runtime state live apart. Everything here runs on
the trio thread; nothing needs a lock beyond the reload lock.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from actors import (
    Backoff,
    ChildSpec,
    ConnectorActor,
    Dispatcher,
    DispatcherSettings,
    FileBatcher,
    FollowerSettings,
    HealthChecker,
    Outcome,
    Periodic,
    RestartPolicy,
    StatusFollower,
    Strategy,
    Supervisor,
    SupervisorEvent,
    UnknownChild,
)
from connectors import (
    BankConnector,
    ConnectorConfig,
    FileChannelConfig,
    FileChannelConnector,
    PaymentEvent,
    RestConfig,
    RestConnector,
    SftpSourceConfig,
    SftpStatementConnector,
    build_connector,
)

from . import __version__, db
from .client_certificates import CertificateKeeper, Request
from .config import Config, HealthCheckerSection, SupervisionSection, secret_entries, secret_values
from .config._model import DispatcherSection, StatusFollowerSection
from .directory import Directory
from .encryption import Keys, LocalKeys, TransitKeys
from .events import EventBus
from .hsm import HsmUnavailable, Signer
from .logs import log, redactor
from .metrics import Metrics
from .payment_files import FileStore
from .payouts import ClaimOwner, PayoutStore
from .registry_mirror import RegistryMirror
from .sdnotify import Notifier
from .spool import spool_directory
from .statement_poller import StatementPoller
from .statements import StatementStore
from .telemetry import Telemetry
from .withdrawn import Withdrawn

if TYPE_CHECKING:
    from .db_credentials import CredentialKeeper
    from .vault import Vault
    from .vault_token import TokenKeeper

logger = logging.getLogger("molamd.runtime")
C = TypeVar("C")

CONNECTORS = "connectors"
WORKERS = "workers"
HEALTH_CHECKER = "health_checker"
DISPATCHER = "dispatcher"
STATUS_FOLLOWER = "status_follower"
TELEMETRY = "telemetry"


def dispatcher_settings(section: DispatcherSection) -> DispatcherSettings:
    return DispatcherSettings(
        batch_size=section.batch_size, lease=section.lease.seconds, idle_poll=section.idle_poll.seconds,
        max_in_flight=section.max_in_flight, flush_interval=section.flush_interval.seconds,
        call_timeout=section.call_timeout.seconds, first_status_check=section.first_status_check.seconds,
        release_delay=section.release_delay.seconds,
        retry_backoff=Backoff(initial=section.retry_initial.seconds, maximum=section.retry_max.seconds, jitter=1.0),
        lookup_backoff=Backoff(initial=section.lookup_initial.seconds, maximum=section.lookup_max.seconds),
        lookup_grace=section.lookup_grace.seconds,
    )


def follower_settings(section: StatusFollowerSection) -> FollowerSettings:
    return FollowerSettings(
        batch_size=section.batch_size, interval=section.interval.seconds, lease=section.lease.seconds,
        concurrency=section.concurrency, call_timeout=section.call_timeout.seconds,
        unknown_after=section.unknown_after.seconds,
        backoff=Backoff(initial=section.backoff_initial.seconds, maximum=section.backoff_max.seconds),
    )


def restart_policy(section: SupervisionSection) -> RestartPolicy:
    return RestartPolicy(
        max_restarts=section.max_restarts,
        period=section.period.seconds,
        stable_after=section.stable_after.seconds,
        backoff=Backoff(initial=section.backoff_initial.seconds, maximum=section.backoff_max.seconds),
    )


class Runtime:
    def __init__(self, config_path: str, config: Config, *, notifier: Notifier | None = None,
                 vault: Vault | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.host_id = config.daemon.host_id or socket.gethostname()
        self.pid = os.getpid()
        self.started_at = time.time()
        self.config_loaded_at = time.time()
        self.last_reload: dict[str, object] = {"ok": True, "at": self.config_loaded_at, "error": None}
        self.metrics = Metrics()
        self.metrics.reload_success_timestamp.set(self.config_loaded_at)
        self.metrics.set_secrets(secret_entries(config))
        self.events = EventBus()
        self.notifier = notifier or Notifier()
        self.reload_lock = trio.Lock()
        self.withdrawn: dict[str, str] = {}  # secret reference → why its source says it is gone (secret_rotation)
        self.nursery: trio.Nursery | None = None
        self.vault = vault
        self.token_keeper: TokenKeeper | None = None
        self.certificates: CertificateKeeper | None = None
        self.credentials: CredentialKeeper | None = None
        self._vault_services(config)
        credentials = self.credentials
        self.db = db.Database(config.database, metrics=self.metrics, on_up=self._database_up,
                              login=credentials.login if credentials is not None else None,
                              on_refused=(lambda: credentials.rotate_soon("refused")) if credentials else None)
        self.telemetry = Telemetry(self.metrics, self.db, self.host_id, publish=self.events.publish,
                                   partitions_ahead=config.audit.partitions_ahead)
        self.store = PayoutStore(self.db, self.host_id, ClaimOwner(lambda: self._lock_connection("molamd-owner")))
        self.files = FileStore(self.db, self.host_id, self.store.owner)
        self.signer: Signer | None = None
        lookup = config.encryption.lookup_key
        self.statements = StatementStore(self.db, lambda: self._lock_connection("molamd-statement-lock"),
                                         self._sealing_keys(config),
                                         base64.b64decode(lookup.reveal()) if lookup is not None else None)
        self.directory = Directory(config, self.connector_actor, self._running_connectors)
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
        self.registry = RegistryMirror(self.db, self.host_id, self.metrics, self._configured,
                                       self.connectors.infos, self.connector_actor)
        self.metrics.watch_supervisors(lambda: (self.connectors, self.workers))
        redactor.set_values(secret_values(config))

    def _vault_services(self, config: Config) -> None:
        """The token actor, and the database credentials keeper when the pool logs in with leased credentials."""
        vault = self.vault
        if vault is None:
            return
        from .db_credentials import CredentialKeeper
        from .vault_token import TokenKeeper

        fraction = config.vault.token_renew_fraction
        self.token_keeper = TokenKeeper(vault, self.metrics.vault, fraction=fraction)
        self.certificates = CertificateKeeper(vault, self.metrics.vault)
        role = config.database.credentials_role
        if role is not None:
            credentials = CredentialKeeper(vault, role[0], role[1], self.metrics.vault, fraction=fraction,
                                           drain=self._drain_pool)
            self.credentials = credentials

            async def new_token() -> None:
                credentials.rotate_soon("new token")

            self.token_keeper.on_new_token(new_token)

    def _sealing_keys(self, config: Config) -> Keys | None:
        """What seals raw statement files: transit with [vault], else the local key; None when not sealing."""
        section = config.encryption
        if not section.statements:
            return None
        if self.vault is not None:
            return TransitKeys(self.vault, section.transit_key)
        assert section.local_key is not None  # validated: sealing without Vault needs one
        return LocalKeys.from_text(section.local_key.reveal())

    async def _drain_pool(self) -> None:
        await self.db.drain()

    def reset_signer(self) -> None:
        """A new HSM PIN: the next signature opens a new session with it; the old one closes off the trio thread."""
        old, self.signer = self.signer, None
        if old is not None and self.nursery is not None:
            self.nursery.start_soon(trio.to_thread.run_sync, old.close)

    # -- specs --------------------------------------------------------------------------------------

    def connector_spec(self, config: ConnectorConfig, whole: Config | None = None) -> ChildSpec:
        """The child spec of one connector entry of ``whole`` (the running config when None)."""
        gone = [f"{s.reference} {self.withdrawn[s.reference]}" for _, s in secret_entries(config)
                if not s.resolved and s.reference in self.withdrawn]
        if gone:
            return ChildSpec(name=config.name, factory=lambda: Withdrawn(config.name, gone),
                             shutdown_grace=config.shutdown_grace.seconds)
        if isinstance(config, SftpSourceConfig):
            source_of = whole or self.config
            return ChildSpec(name=config.name, factory=lambda: self.statement_poller(config, source_of),
                             shutdown_grace=config.shutdown_grace.seconds)
        self.telemetry.connector_known(config.name)
        if isinstance(config, FileChannelConfig):
            return ChildSpec(name=config.name, factory=lambda: self.file_batcher(config),
                             shutdown_grace=config.shutdown_grace.seconds)
        return ChildSpec(
            name=config.name,
            factory=lambda: ConnectorActor(config, self._connector(config), observer=self.telemetry,
                                           on_event=self.pushed_event),
            shutdown_grace=config.shutdown_grace.seconds,
        )

    def _connector(self, config: ConnectorConfig) -> BankConnector:
        """A new connector instance; a REST one with a client certificate from Vault's PKI gets it from the
        certificate keeper."""
        pki = config.rest.client_pki if isinstance(config, RestConfig) else None
        if isinstance(config, RestConfig) and pki and self.certificates is not None:
            keeper, options = self.certificates, config.rest
            request = Request(pki, options.client_common_name or config.name, options.ca_file)

            async def tls() -> ssl.SSLContext:
                return await keeper.context(config.name, request)

            return RestConnector(config, tls=tls)
        return build_connector(config)

    def statement_poller(self, config: SftpSourceConfig, whole: Config) -> StatementPoller:
        sources = [c.name for c in whole.connectors
                   if isinstance(c, SftpSourceConfig) and c.bank_profile == config.bank_profile]
        return StatementPoller(config, SftpStatementConnector(config), self.statements, self.metrics,
                               csv_profile=whole.source_profile(config), profile_sources=sources)

    def file_batcher(self, config: FileChannelConfig) -> FileBatcher:
        return FileBatcher(config, FileChannelConnector(config), self.files, self.sign, observer=self.telemetry,
                           files=self.metrics.files,
                           spool_dir=spool_directory(config.sftp.spool_dir if config.sftp is not None else ""))

    def sign(self, label: str, data: bytes) -> bytes:
        """Sign in the configured HSM (from a worker thread); the session opens on first use and stays open."""
        section = self.config.hsm
        if not section.token or section.pin is None:
            raise HsmUnavailable("no [hsm] token configured")
        signer = self.signer
        if signer is None:
            signer = self.signer = Signer(section.module, section.token, section.pin.reveal())
        signer.open()
        return signer.sign(label, data)

    def statement_source(self, name: str) -> StatementPoller | None:
        return self._connector_child(name, StatementPoller)

    def _lock_connection(self, application_name: str) -> Any:
        """A connection of its own for a session advisory lock (it lives as long as the lock)."""
        import psycopg

        kwargs = self.db.connect_kwargs(application_name)
        kwargs.pop("options", None)
        return psycopg.connect(self.config.database.dsn, **kwargs)

    def worker_specs(self, config: Config) -> list[ChildSpec]:
        specs = []
        workers = config.workers
        grace = config.daemon.shutdown_grace.seconds
        if workers.telemetry.enabled:
            interval = workers.telemetry.interval.seconds
            specs.append(ChildSpec(name=TELEMETRY, factory=lambda: Periodic(TELEMETRY, interval, self.telemetry.tick)))
        if workers.health_checker.enabled:
            health = workers.health_checker
            specs.append(ChildSpec(name=HEALTH_CHECKER, factory=lambda: self._health_checker(health)))
        if workers.dispatcher.enabled:
            dispatch = dispatcher_settings(workers.dispatcher)
            specs.append(ChildSpec(
                name=DISPATCHER, factory=lambda: Dispatcher(self.store, self.directory, dispatch,
                                                             on_recorded=self.recorded),
                shutdown_grace=grace))
        if workers.status_follower.enabled:
            follow = follower_settings(workers.status_follower)
            specs.append(ChildSpec(name=STATUS_FOLLOWER, factory=lambda: StatusFollower(
                self.store, self.directory.status_actor, follow)))
        return specs

    def recorded(self, outcomes: Sequence[Outcome], now: float) -> None:
        histogram = self.metrics.dispatch_duration
        for outcome in outcomes:
            if outcome.claimed_at is not None:
                histogram.labels(outcome.kind.value).observe(now - outcome.claimed_at)

    def wake_dispatcher(self) -> None:
        """New slices arrived (PostgreSQL NOTIFY): claim now rather than at the next poll."""
        try:
            child = self.workers.child(DISPATCHER)
        except UnknownChild:
            return
        if isinstance(child, Dispatcher):
            child.wake()

    def pushed_event(self, connector: str, event: PaymentEvent) -> None:
        """A bank pushed a status change: the status follower applies it (polling covers it otherwise)."""
        try:
            child = self.workers.child(STATUS_FOLLOWER)
        except UnknownChild:
            return
        if isinstance(child, StatusFollower):
            child.push(connector, event)

    def _running_connectors(self) -> list[ConnectorActor]:
        return [a for a in self.connectors.running() if isinstance(a, ConnectorActor)]

    def _health_checker(self, section: HealthCheckerSection) -> HealthChecker:
        return HealthChecker(
            targets=self.connector_actors,
            report=self.registry.report,
            interval=section.interval.seconds,
            timeout=section.timeout.seconds,
            concurrency=section.concurrency,
        )

    # -- lookups ------------------------------------------------------------------------------------

    def connector_actor(self, name: str) -> ConnectorActor | None:
        return self._connector_child(name, ConnectorActor)

    def _connector_child(self, name: str, kind: type[C]) -> C | None:
        """The running child of the connectors supervisor by that name, if it is a ``kind``."""
        try:
            child = self.connectors.child(name)
        except UnknownChild:
            return None
        return child if isinstance(child, kind) else None

    def connector_actors(self) -> list[tuple[str, ConnectorActor | None]]:
        sources = {c.name for c in self.config.connectors if isinstance(c, SftpSourceConfig)}
        return [(name, self.connector_actor(name)) for name in self.connectors.names() if name not in sources]

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

    def _configured(self) -> list[ConnectorConfig]:
        return list(self.config.connectors)

    async def _database_up(self) -> None:
        await self.registry.sync()

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run background work in the daemon's nursery (set by the daemon once it runs)."""
        if self.nursery is None:
            raise RuntimeError("the daemon is not running")
        self.nursery.start_soon(fn)

    def uptime(self) -> float:
        return time.time() - self.started_at

    version = __version__
