"""Leased PostgreSQL credentials from Vault's database engine (``[database] credentials = "vault-db:ROLE"``).

The keeper takes credentials at start, renews their lease when ``token_renew_fraction`` of it has passed, and
moves the pool to fresh credentials (``rotate``) when the lease nears its end (the role's max TTL caps a
renewal), when it is revoked from outside (renewal finds no lease), when the daemon logs in to Vault again
(leases are children of the token and end with it), or when the database refuses the current user. Moving
means: new credentials first, then every connection made with the old ones is retired as it comes back to the
pool (``Database.drain``); work in flight finishes on its connection, claims are rows and are not touched.
The old lease is left to run out: the daemon's policy cannot revoke leases (``sys/leases/revoke`` takes any id).

Lease ids are shown in status and metrics; the password never is.

Cancellation: a call in flight is abandoned (the worker thread ends at the client's own timeout).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from actors import Backoff

from .logs import log, redactor
from .metrics import VaultMetrics
from .vault import DbCredentials, Vault, VaultError, VaultNotFound

logger = logging.getLogger("molamd.db")

_MIN_DELAY = 0.5
_ROTATE_WHEN_LEFT = 0.34  # rotate once a renewal leaves less than this fraction of the first lease


class NoCredentials(Exception):
    """No leased credentials yet; the message says what the keeper waits for."""


class CredentialKeeper:
    name = "database-credentials"

    def __init__(self, vault: Vault, mount: str, role: str, metrics: VaultMetrics, *, fraction: float,
                 drain: Callable[[], Awaitable[None]], backoff: Backoff | None = None) -> None:
        self.vault = vault
        self.mount, self.role = mount, role
        self._metrics = metrics
        self._fraction = fraction
        self._drain = drain
        self._backoff = backoff or Backoff(initial=0.5, maximum=15.0)
        self._lock = threading.Lock()  # the pool's worker threads read `current` while the keeper swaps it
        self._current: DbCredentials | None = None
        self._first_duration = 0
        self._stop = trio.Event()
        self._wake = trio.Event()
        self._rotate_reason: str | None = "start"
        self.waiting_for: str | None = "leased credentials from Vault"
        self.rotations = 0

    @property
    def reference(self) -> str:
        return f"vault-db:{self.mount}/{self.role}"

    def login(self) -> dict[str, str]:
        """``user`` and ``password`` for psycopg.connect (from any thread); NoCredentials before the first lease."""
        with self._lock:
            current = self._current
        if current is None:
            raise NoCredentials(f"waiting for {self.reference}: {self.waiting_for}")
        return {"user": current.username, "password": current.password}

    def rotate_soon(self, reason: str) -> None:
        """Move to fresh credentials now (the token was replaced, or the database refused the user)."""
        self._rotate_reason = self._rotate_reason or reason
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Lease, renew and rotate until stopped; ready at once (the database waits for the first lease)."""
        task_status.started()
        failures = 0
        while not self._stop.is_set():
            ok = await (self._rotate() if self._rotate_reason else self._renew())
            failures = 0 if ok else failures + 1
            with trio.move_on_after(self._backoff.delay(failures) if failures else self._delay()):
                await self._wake.wait()
            self._wake = trio.Event()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _delay(self) -> float:
        current = self._current
        if current is None:
            return _MIN_DELAY
        left = current.lease.at + current.lease.duration - time.time()
        return max(_MIN_DELAY, left * self._fraction)

    async def _renew(self) -> bool:
        current = self._current
        assert current is not None
        try:
            lease = await self.vault.run(lambda: self.vault.renew_lease(current.lease, current.lease.duration))
        except VaultNotFound:
            self._rotate_reason = "revoked"
            return await self._rotate()
        except VaultError as exc:
            self._waiting(f"renewing lease {current.lease.lease_id} ({exc})")
            left = current.lease.at + current.lease.duration - time.time()
            if left < self._first_duration * _ROTATE_WHEN_LEFT:
                self._rotate_reason = "renewal failed"
            return False
        renewed = DbCredentials(username=current.username, password=current.password, lease=lease)
        with self._lock:
            self._current = renewed
        self._leased(renewed)
        if lease.duration < current.lease.duration or not lease.renewable:
            self._rotate_reason = "max TTL"  # the server granted less than asked: the role's max TTL is near
            return await self._rotate()
        return True

    async def _rotate(self) -> bool:
        reason = self._rotate_reason or "rotation"
        try:
            fresh = await self.vault.run(lambda: self.vault.database_credentials(self.mount, self.role))
        except VaultError as exc:
            self._waiting(f"new credentials ({exc})")
            return False
        redactor.add_values([fresh.password])
        with self._lock:
            old, self._current = self._current, fresh
        self._first_duration = fresh.lease.duration
        self._rotate_reason = None
        self._leased(fresh)
        if old is not None:
            self.rotations += 1
            self._metrics.db_rotations.labels(reason).inc()
            self._metrics.db_lease.remove(old.lease.lease_id)
            await self._drain()
            log(logger, logging.INFO, "database credentials rotated", reason=reason, lease_id=fresh.lease.lease_id,
                old_lease_id=old.lease.lease_id, user=fresh.username)
        else:
            log(logger, logging.INFO, "database credentials leased", lease_id=fresh.lease.lease_id,
                user=fresh.username, lease_seconds=fresh.lease.duration)
        return True

    def _leased(self, credentials: DbCredentials) -> None:
        self.waiting_for = None
        self._metrics.db_lease.labels(credentials.lease.lease_id).set(1)
        self._metrics.db_lease_expiry.set(credentials.lease.at + credentials.lease.duration)

    def _waiting(self, what: str) -> None:
        if what != self.waiting_for:
            log(logger, logging.WARNING, "database credentials: waiting", waiting_for=what, role=self.reference)
        self.waiting_for = what

    def status(self) -> dict[str, Any]:
        current = self._current
        lease = current.lease if current is not None else None
        return {
            "credentials": self.reference,
            "user": current.username if current is not None else None,
            "lease_id": lease.lease_id if lease is not None else None,
            "lease_expires_at": lease.at + lease.duration if lease is not None else None,
            "rotations": self.rotations,
            "waiting_for": self.waiting_for,
        }
