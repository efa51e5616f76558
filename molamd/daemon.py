"""The daemon: root nursery, signals, sd_notify and the supervision tree of design §2.

Signals: SIGHUP reloads (coalesced: a SIGHUP during a reload triggers one more reload after it), SIGTERM and
SIGINT drain and exit 0 within ``daemon.shutdown_grace``; a SIGTERM during start-up abandons the start and
exits 0 as well. A core service past its restart intensity escalates: the daemon exits 1 and systemd restarts
it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator

import trio

from actors import ChildSpec, Periodic, RestartPolicy, Strategy, Supervisor, describe_error

from . import db, logs, tracing
from .config import Config, ConfigError, split_listen
from .control import ControlServer, check_socket_path
from .logs import log
from .metrics import MetricsServer
from .reload import reload
from .runtime import Runtime
from .sdnotify import Notifier
from .vault import Vault, VaultError

logger = logging.getLogger("molamd.daemon")

CORE_POLICY = RestartPolicy(max_restarts=3, period=60.0)
_CORE_GRACE = 5.0


class Daemon:
    def __init__(self, config_path: str, config: Config, *, notifier: Notifier | None = None,
                 vault: Vault | None = None) -> None:
        self.rt = Runtime(config_path, config, notifier=notifier, vault=vault)
        self._stop = trio.Event()
        self._reload_wanted = trio.Event()
        self._root_done = trio.Event()
        self._startup: trio.CancelScope | None = None
        self.exit_reason = "stopped"
        specs = []
        rt = self.rt
        if rt.token_keeper is not None:
            keeper = rt.token_keeper
            specs.append(ChildSpec(name=keeper.name, factory=lambda: keeper, shutdown_grace=_CORE_GRACE))
            interval = config.vault.rotation_check.seconds
            if interval > 0:
                specs.append(ChildSpec(name="secret-rotation", factory=lambda: Periodic(
                    "secret-rotation", interval, self._check_secrets)))
        if rt.certificates is not None:
            certificates = rt.certificates
            specs.append(ChildSpec(name=certificates.name, factory=lambda: certificates, shutdown_grace=_CORE_GRACE))
        if rt.credentials is not None:
            credentials = rt.credentials
            specs.append(ChildSpec(name=credentials.name, factory=lambda: credentials, shutdown_grace=_CORE_GRACE))
        specs.append(ChildSpec(name="database", factory=lambda: self.rt.db, core=True, shutdown_grace=_CORE_GRACE))
        if config.metrics.enabled:
            host, port = split_listen(config.metrics.listen)
            self.metrics_server = MetricsServer(self.rt.metrics, host, port)
            specs.append(ChildSpec(name="metrics", factory=lambda: self.metrics_server, core=True))
        grace = config.daemon.shutdown_grace.seconds
        if config.workers.dispatcher.enabled:
            listener = db.Listener(config.database, "molamd_payout_slices", self.rt.wake_dispatcher,
                                   login=self.rt.db.login_now if self.rt.credentials is not None else None)
            specs.append(ChildSpec(name="listener", factory=lambda: listener, shutdown_grace=_CORE_GRACE))
        specs += [
            ChildSpec(name="connectors", factory=lambda: self.rt.connectors, core=True, shutdown_grace=grace),
            ChildSpec(name="workers", factory=lambda: self.rt.workers, core=True, shutdown_grace=grace),
            ChildSpec(name="control", factory=lambda: ControlServer(self.rt), core=True, shutdown_grace=_CORE_GRACE),
        ]
        self.root = Supervisor(
            "molamd", specs, strategy=Strategy.ONE_FOR_ONE, policy=CORE_POLICY, on_event=self.rt.on_actor_event
        )

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (or ``request_stop``); raises Escalation if a core service gives up."""
        rt = self.rt
        check_socket_path(rt.config.control.socket)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                rt.nursery = nursery
                nursery.start_soon(self._signals, signals)
                rt.notifier.status("starting")
                with trio.CancelScope() as startup:
                    self._startup = startup
                    await nursery.start(self._run_root)
                if startup.cancelled_caught:
                    log(logger, logging.INFO, "stop requested during start-up")
                    rt.notifier.stopping("stopping during start-up")
                    nursery.cancel_scope.cancel()
                    return
                self._startup = None
                nursery.start_soon(rt.notifier.watchdog)
                nursery.start_soon(self._reloader)
                status = f"serving {len(rt.config.connectors)} connectors"
                # What start-up built (config, actors, clients) lives as long as the process: out of the cyclic
                # collector's sight, a full collection no longer walks it (with 1,000 connectors one took ~90 ms
                # of the trio thread, every few scrapes).
                gc.collect()
                gc.freeze()
                rt.notifier.ready(status=status)
                log(logger, logging.INFO, "molamd ready", host_id=rt.host_id, connectors=len(rt.config.connectors),
                    socket=rt.config.control.socket, version=rt.version)
                await self._stop.wait()
                await self._shutdown()
                await self._revoke_token()
                nursery.cancel_scope.cancel()

    def request_stop(self, reason: str = "stop requested") -> None:
        self.exit_reason = reason
        self._stop.set()
        if self._startup is not None:
            self._startup.cancel()

    async def _run_root(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.root.run(task_status=task_status)
        finally:
            self._root_done.set()

    async def _shutdown(self) -> None:
        """Stop the tree gracefully (control first, database last) within the shutdown grace."""
        rt = self.rt
        grace = rt.config.daemon.shutdown_grace.seconds
        rt.notifier.stopping(f"draining: {self.exit_reason}")
        log(logger, logging.INFO, "draining", reason=self.exit_reason, grace_seconds=grace)
        self.root.request_stop()
        with trio.move_on_after(grace) as scope:
            await self._root_done.wait()
        if scope.cancelled_caught:
            log(logger, logging.WARNING, "shutdown grace elapsed; cancelling what is left")
        log(logger, logging.INFO, "stopped", reason=self.exit_reason)

    async def _check_secrets(self) -> None:
        from .secret_rotation import check_and_apply

        with contextlib.suppress(ConfigError):  # logged, counted and kept in `status` by the refresh itself
            await check_and_apply(self.rt)

    async def _revoke_token(self) -> None:
        """At a clean stop: the token is revoked, and the leases under it (database credentials) end with it."""
        vault = self.rt.vault
        if vault is None:
            return
        with trio.move_on_after(_CORE_GRACE):
            try:
                await trio.to_thread.run_sync(vault.revoke_token, abandon_on_cancel=True)
            except VaultError as exc:
                log(logger, logging.WARNING, "could not revoke the Vault token at stop", error=str(exc))
            else:
                log(logger, logging.INFO, "vault token revoked")

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                self._reload_wanted.set()
            else:
                self.request_stop(f"signal {signal.Signals(signum).name}")

    async def _reloader(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted = trio.Event()
            with contextlib.suppress(ConfigError):  # logged, counted and kept in `status` by reload itself
                await reload(self.rt)


async def run(config_path: str, config: Config, vault: Vault | None = None) -> int:
    """Run the daemon (``vault``: the client logged in while the config was resolved); the process exit code."""
    logs.configure(config.logging.level.value)
    traces = tracing.configure(config)
    daemon = Daemon(config_path, config, vault=vault)
    failed = False
    try:
        await daemon.run()
    except* Exception as group:
        failed = True
        for exc in group.exceptions:
            log(logger, logging.CRITICAL, "molamd exiting on error", error=describe_error(exc))
        daemon.rt.notifier.stopping("failed")
    finally:
        await trio.to_thread.run_sync(tracing.shutdown, traces)
    return 1 if failed else 0
