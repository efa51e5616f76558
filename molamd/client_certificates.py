"""Short-lived mTLS client certificates from Vault's PKI engine, renewed before they expire.

A REST connector with ``client_pki = "MOUNT/issue/ROLE"`` gets its TLS context here: the first time it opens, a
certificate for ``client_common_name`` is issued and loaded into a context of its own. The keeper renews each
certificate when ``RENEW_AT`` of its lifetime has passed and loads the new one into the same context, so the
connector's next TLS handshake presents it: no restart, and connections already open finish on the old one.
The key goes from Vault's answer into an anonymous in-memory file (``memfd``) that OpenSSL reads and that is
closed at once: it is never written to disk. A renewal that fails keeps the current certificate (it is valid
until it expires), is retried with backoff, and says so in status and metrics.

Cancellation: a call in flight is abandoned (the worker thread ends at the client's own timeout).
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import time
from typing import Any

import msgspec
import trio

from actors import Backoff

from .logs import log
from .metrics import VaultMetrics
from .vault import Certificate, Vault, VaultError

logger = logging.getLogger("molamd.vault")

RENEW_AT = 2 / 3
_MIN_DELAY = 0.5


class Request(msgspec.Struct, frozen=True):
    path: str
    common_name: str
    ca_file: str | None


class _Held:
    def __init__(self, request: Request, context: ssl.SSLContext, certificate: Certificate) -> None:
        self.request, self.context, self.certificate = request, context, certificate
        self.issued_at = time.time()
        self.failures = 0
        self.error: str | None = None

    @property
    def renew_at(self) -> float:
        lifetime = max(0.0, self.certificate.expires_at - self.issued_at)
        return self.issued_at + lifetime * RENEW_AT


def load(context: ssl.SSLContext, certificate: Certificate) -> None:
    """Put a certificate and its key into a TLS context, through memfds (never a file on disk)."""
    chain_fd = os.memfd_create("molamd-client-chain", os.MFD_CLOEXEC)
    key_fd = os.memfd_create("molamd-client-key", os.MFD_CLOEXEC)
    try:
        os.write(chain_fd, certificate.chain_pem.encode())
        os.write(key_fd, certificate.key_pem.encode())
        context.load_cert_chain(f"/proc/self/fd/{chain_fd}", f"/proc/self/fd/{key_fd}")
    finally:
        os.close(chain_fd)
        os.close(key_fd)


class CertificateKeeper:
    name = "client-certificates"

    def __init__(self, vault: Vault, metrics: VaultMetrics, *, backoff: Backoff | None = None) -> None:
        self.vault = vault
        self._metrics = metrics
        self._backoff = backoff or Backoff(initial=1.0, maximum=60.0)
        self._held: dict[str, _Held] = {}
        self._lock = trio.Lock()
        self._stop = trio.Event()
        self._wake = trio.Event()

    async def context(self, connector: str, request: Request) -> ssl.SSLContext:
        """The TLS context of a connector, with a certificate issued for it (VaultError when none can be)."""
        async with self._lock:
            held = self._held.get(connector)
            if held is not None and held.request == request:
                return held.context
            certificate = await self._issue(request)
            context = ssl.create_default_context(cafile=request.ca_file)
            load(context, certificate)
            self._held[connector] = _Held(request, context, certificate)
            self._issued(connector, certificate, "issued")
            self._wake.set()
            return context

    def forget(self, connector: str) -> None:
        """A connector removed from the config: its certificate is no longer renewed."""
        self._held.pop(connector, None)
        with contextlib.suppress(KeyError):  # never issued
            self._metrics.cert_expiry.remove(connector)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew each certificate when it is due, until stopped."""
        task_status.started()
        while not self._stop.is_set():
            with trio.move_on_after(self._delay()):
                await self._wake.wait()
            self._wake = trio.Event()
            if self._stop.is_set():
                break
            now = time.time()
            for connector, held in list(self._held.items()):
                if self._due(held) <= now:
                    await self._renew(connector, held)

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _due(self, held: _Held) -> float:
        if held.failures:
            return held.renew_at + sum(self._backoff.ceiling(n) for n in range(1, held.failures + 1))
        return held.renew_at

    def _delay(self) -> float:
        if not self._held:
            return 3600.0
        return max(_MIN_DELAY, min(self._due(h) for h in self._held.values()) - time.time())

    async def _renew(self, connector: str, held: _Held) -> None:
        try:
            certificate = await self._issue(held.request)
            load(held.context, certificate)  # the next handshake presents it
        except (VaultError, ssl.SSLError, OSError) as exc:
            held.failures += 1
            held.error = str(exc)
            self._metrics.cert_renewals.labels("failure").inc()
            log(logger, logging.WARNING, "client certificate renewal failed; the current one is kept",
                connector=connector, error=str(exc), expires_at=held.certificate.expires_at)
            return
        held.certificate, held.issued_at, held.failures, held.error = certificate, time.time(), 0, None
        self._issued(connector, certificate, "renewed")

    def _issued(self, connector: str, certificate: Certificate, what: str) -> None:
        self._metrics.cert_expiry.labels(connector).set(certificate.expires_at)
        if what == "renewed":
            self._metrics.cert_renewals.labels("success").inc()
        log(logger, logging.INFO, f"client certificate {what}", connector=connector, serial=certificate.serial,
            expires_at=certificate.expires_at)

    async def _issue(self, request: Request) -> Certificate:
        return await self.vault.run(lambda: self.vault.issue_certificate(request.path, request.common_name))

    def status(self) -> dict[str, Any]:
        return {name: {"serial": h.certificate.serial, "expires_at": h.certificate.expires_at,
                       "renew_at": self._due(h), "error": h.error} for name, h in self._held.items()}
