"""The token actor: keeps the daemon's Vault token alive.

It renews the token when ``token_renew_fraction`` of its TTL has passed. When the server grants less than the
token had (its ``token_max_ttl`` is near), when the token is not renewable, or when a renewal fails (revoked
from outside, Vault restarted), it logs in again with the AppRole credentials of the first login, and tells
whoever holds leases under the old token (the database credentials) to take new ones. While neither works it
backs off and says what it is waiting for: in ``molamctl status``, in the log and as metrics. It never stops the
daemon: values already read keep working (the client's cache, until ``cache_ttl``).

Cancellation: a call in flight is abandoned (the worker thread ends at the client's own timeout).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from actors import Backoff

from .logs import log
from .metrics import VaultMetrics
from .vault import Vault, VaultError

logger = logging.getLogger("molamd.vault")
T = TypeVar("T")
# How a blocking client call runs: Vault.run, a worker thread (tests on trio's mock clock run it inline).
Blocking = Callable[[Callable[[], Any]], Awaitable[Any]]

_MIN_DELAY = 0.5  # never renew in a tighter loop than this, whatever the TTL says


class TokenKeeper:
    name = "vault-token"

    def __init__(self, vault: Vault, metrics: VaultMetrics, *, fraction: float, backoff: Backoff | None = None,
                 blocking: Blocking | None = None) -> None:
        self.vault = vault
        self._blocking = blocking or vault.run
        self._metrics = metrics
        self._fraction = fraction
        self._backoff = backoff or Backoff(initial=1.0, maximum=30.0)
        self._stop = trio.Event()
        self._wake = trio.Event()
        self._on_new_token: list[Callable[[], Awaitable[None]]] = []
        self.expires_at: float | None = None
        self.last_renewal_at: float | None = None
        self.waiting_for: str | None = None
        self.renewals = 0
        self.logins = 0
        self._lost: str | None = None  # why the token is no longer good: only a login helps then
        if vault.token_ttl is not None:
            self._granted(vault.token_ttl)

    def on_new_token(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Call ``fn`` after every new login (leases of the old token end with it)."""
        self._on_new_token.append(fn)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew and log in again until stopped; ready at once (the first login happened at start)."""
        task_status.started()
        failures = 0
        while not self._stop.is_set():
            with trio.move_on_after(self._delay(failures)):
                await self._wake.wait()
            self._wake = trio.Event()
            if self._stop.is_set():
                break
            failures = 0 if await self._keep() else failures + 1

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _delay(self, failures: int) -> float:
        if failures:
            return self._backoff.delay(failures)
        ttl = self.vault.token_ttl or 0
        return max(_MIN_DELAY, ttl * self._fraction)

    async def _keep(self) -> bool:
        """One renewal, or a login when renewal cannot keep the token; whether the token is good now."""
        if self._lost is not None:
            return await self._login(self._lost)
        try:
            state = await self._call(self.vault.renew_token)
        except VaultError as exc:
            self._metrics.renewals.labels("failure").inc()
            self._lost = f"renewal failed ({exc})"
            return await self._login(self._lost)
        if state.capped or not state.renewable or state.ttl <= 0:
            self._metrics.renewals.labels("capped").inc()
            self._lost = "the token nears its max TTL"
            return await self._login(self._lost)
        self.renewals += 1
        self.last_renewal_at = time.time()
        self._metrics.renewals.labels("success").inc()
        self._metrics.last_renewal.set(self.last_renewal_at)
        self._granted(state.ttl)
        self._clear()
        return True

    async def _login(self, why: str) -> bool:
        try:
            ttl = await self._call(self.vault.login_again)
        except VaultError as exc:
            self._metrics.logins.labels("failure").inc()
            self._metrics.up.set(0)
            waiting = f"a Vault login: {why}; then login failed ({exc})"
            if waiting != self.waiting_for:
                log(logger, logging.ERROR, "vault token lost; cached secrets keep working until their TTL",
                    waiting_for=waiting)
            self.waiting_for = waiting
            return False
        self.logins += 1
        self._lost = None
        self._metrics.logins.labels("success").inc()
        self._granted(ttl)
        self._clear()
        log(logger, logging.INFO, "vault: logged in again", reason=why, token_ttl_seconds=ttl)
        for fn in self._on_new_token:
            await fn()
        return True

    def _granted(self, ttl: int) -> None:
        self.expires_at = time.time() + ttl
        self._metrics.token_ttl.set(ttl)
        self._metrics.token_expiry.set(self.expires_at)
        self._metrics.up.set(1)

    def _clear(self) -> None:
        if self.waiting_for is not None:
            log(logger, logging.INFO, "vault token good again")
        self.waiting_for = None

    async def _call(self, fn: Callable[[], T]) -> T:
        result: T = await self._blocking(fn)
        return result

    def status(self) -> dict[str, Any]:
        """What `molamctl status` shows: never the token."""
        return {
            "address": self.vault.address,
            "state": "waiting" if self.waiting_for else "ok",
            "token_ttl_seconds": None if self.expires_at is None else max(0, round(self.expires_at - time.time())),
            "token_expires_at": self.expires_at,
            "last_renewal_at": self.last_renewal_at,
            "logged_in_at": self.vault.logged_in_at,
            "renewals": self.renewals,
            "logins_again": self.logins,
            "waiting_for": self.waiting_for,
        }
