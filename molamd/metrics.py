"""Prometheus metrics: molamd's own registry, and the /metrics endpoint served from the trio loop.

Actor gauges (state, mailbox depth, restarts) are read from the supervisors at scrape time by a collector,
so they are never stale and cost nothing between scrapes.

A scrape of a host with a thousand connectors renders some 20,000 series, so each connector's share is kept
small: an actor's and a breaker's state is one series (the state it is in, value 1), histograms per connector
have few buckets (around the 500 ms latency target), and counters carry no ``_created`` series. The text format
is rendered by ``exposition.TextEncoder`` (the library's bytes, with each series' name and labels formatted once).
"""

from __future__ import annotations

import contextlib
import logging
import platform
from collections.abc import Callable, Iterable, Iterator

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from actors import RateLimiter, ReportApplied, Supervisor
from connectors import Secret

from . import __version__
from .exposition import TextEncoder

logger = logging.getLogger("molamd.metrics")

disable_created_metrics()  # type: ignore[no-untyped-call]  # a _created series per counter child: a third more series, read by nothing here

_MAX_REQUEST = 16 * 1024
_READ_TIMEOUT = 5.0


class Metrics:
    """Every metric the daemon core exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build = Info("molamd_build", "molamd version and runtime", registry=r)
        self.build.info(
            {"version": __version__, "python": platform.python_version()}
        )
        self.reload_successful = Gauge(
            "molamd_config_last_reload_successful", "1 if the last config reload succeeded", registry=r
        )
        self.reload_success_timestamp = Gauge(
            "molamd_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load or reload",
            registry=r,
        )
        self.reloads = Counter("molamd_config_reloads", "Config reloads attempted", ["outcome"], registry=r)
        self.database_up = Gauge("molamd_database_up", "1 while PostgreSQL answers", registry=r)
        self.control_requests = Counter(
            "molamd_control_requests", "Control socket requests", ["command", "outcome"], registry=r
        )
        self.reload_duration = Histogram(
            "molamd_config_reload_duration_seconds", "Time to parse, diff and apply a reload", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.control_duration = Histogram(
            "molamd_control_request_duration_seconds", "Time to answer a control request", ["command"],
            registry=r, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0),
        )
        self.connector_requests = Counter(
            "molamd_connector_requests", "Calls to banks", ["connector", "operation", "outcome"], registry=r)
        self.connector_duration = Histogram(
            "molamd_connector_request_duration_seconds", "Duration of calls to banks", ["connector", "operation"],
            registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.connector_failures = Counter(
            "molamd_connector_failures", "Failed calls to banks by error", ["connector", "error"], registry=r)
        self.breaker_state = Gauge(
            "molamd_circuit_breaker_state", "1 for the state each connector's breaker is in (only that state)",
            ["connector", "state"], registry=r)
        self.breaker_transitions = Counter(
            "molamd_circuit_breaker_transitions", "Breaker state changes", ["connector", "from_state", "to_state"],
            registry=r)
        self.limiter_wait = Histogram(
            "molamd_rate_limiter_wait_seconds", "Time calls waited for the rate limiter", ["connector"], registry=r,
            buckets=(0.01, 0.1, 1.0, 10.0))
        self.payout_slices = Gauge(
            "molamd_payout_slices", "Payout slices by status and currency (refreshed by telemetry)",
            ["status", "currency"], registry=r)
        self.dispatch_duration = Histogram(
            "molamd_payout_dispatch_duration_seconds", "From claim to the bank's answer recorded in the database",
            ["outcome"], registry=r,
            buckets=(0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
                     5.0, 10.0, 30.0))
        self.dlq_slices = Gauge("molamd_dlq_slices", "Payout slices in the dead-letter queue", registry=r)
        self.unresolved = Gauge("molamd_payout_slices_unresolved", "Payout slices unresolved: their bank could not"
                                " say whether it executed them; may have been paid, a person decides", registry=r)
        self.in_doubt = Gauge("molamd_payout_slices_in_doubt", "Slices bound to one channel's idempotency scope"
                              " and not final: the bank may have them (refreshed by telemetry)", registry=r)
        self.in_doubt_oldest = Gauge("molamd_payout_slices_in_doubt_oldest_age_seconds",
                                     "Age of the oldest slice in doubt (0: none)", registry=r)
        self.connector_up = Gauge("molamd_connector_up", "1 when the last health check passed", ["connector"],
                                  registry=r)
        self.statement_files = Counter(
            "molamd_statement_files", "Statement files taken from sources, by outcome "
            "(parsed, duplicate, parse_failed, balance_failed, refused, changed)", ["source", "outcome"], registry=r)
        self.statement_entries_skipped = Counter(
            "molamd_statement_entries_skipped", "Inbox entries never taken, counted once each while they stay: "
            "unsafe_name, link_outside, dangling_link, not_a_file, unreadable, stuck (cannot be moved)",
            ["source", "reason"], registry=r)
        self.statement_lines = Counter(
            "molamd_statement_lines", "Statement lines committed", ["source"], registry=r)
        self.statement_lines_matched = Counter(
            "molamd_statement_lines_matched", "Statement lines linked to a payout slice when their file was taken",
            ["source"], registry=r)
        self.statement_last_file = Gauge(
            "molamd_statement_source_last_file_timestamp_seconds",
            "Unix time the source's last statement file was stored (0: none yet)", ["source"], registry=r)
        self.statement_expected_every = Gauge(
            "molamd_statement_source_expected_interval_seconds",
            "How often the source is expected to deliver a file (its expected_every)", ["source"], registry=r)
        self.statement_lines_unmatched = Gauge(
            "molamd_statement_lines_unmatched", "Statement lines not (yet) linked to a payout slice",
            ["bank_profile"], registry=r)
        self.statement_poll_duration = Histogram(
            "molamd_statement_poll_duration_seconds", "One poll of a statement source, files included", ["source"],
            registry=r, buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0))
        self.secret_created = Gauge(
            "molamd_secret_version_created_timestamp_seconds",
            "Unix time the version in use of each Vault secret reference was written", ["reference"], registry=r)
        self.reload_successful.set(1)

        self.files = FileMetrics(r)
        self.vault = VaultMetrics(r)

    def set_secrets(self, entries: Iterable[tuple[str, Secret]]) -> None:
        """The age of each Vault secret in use: a secret not rotated for 90 days alerts."""
        self.secret_created.clear()
        for _, secret in entries:
            if secret.created_at is not None:
                self.secret_created.labels(secret.reference).set(secret.created_at)

    def watch_supervisors(self, supervisors: Callable[[], Iterable[Supervisor]]) -> None:
        self.registry.register(_ActorCollector(supervisors))


class VaultMetrics:
    """The Vault token, the secrets read from it, and the database credentials leased from it."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.up = Gauge("molamd_vault_token_valid", "1 while the daemon holds a Vault token it could renew", registry=r)
        self.token_ttl = Gauge("molamd_vault_token_ttl_seconds", "TTL the last login or renewal granted", registry=r)
        self.token_expiry = Gauge("molamd_vault_token_expiry_timestamp_seconds", "Unix time the token ends unless"
                                  " renewed", registry=r)
        self.last_renewal = Gauge("molamd_vault_token_last_renewal_timestamp_seconds",
                                  "Unix time of the last successful renewal", registry=r)
        self.renewals = Counter("molamd_vault_token_renewals", "Token renewals by outcome (capped: max TTL near)",
                                ["outcome"], registry=r)
        self.logins = Counter("molamd_vault_logins", "AppRole logins after the first, by outcome", ["outcome"],
                              registry=r)
        self.secret_checks = Counter("molamd_vault_secret_checks", "Rotation checks of the secrets in use, by"
                                     " outcome (rotated: a new version was applied)", ["outcome"], registry=r)
        self.db_lease_expiry = Gauge("molamd_database_credentials_lease_expiry_timestamp_seconds",
                                     "Unix time the current leased database credentials end unless renewed",
                                     registry=r)
        self.db_lease = Gauge("molamd_database_credentials_lease_info", "1 for the lease the pool logs in with",
                              ["lease_id"], registry=r)
        self.cert_expiry = Gauge("molamd_client_certificate_expiry_timestamp_seconds",
                                 "Unix time a connector's client certificate from Vault's PKI expires", ["connector"],
                                 registry=r)
        self.cert_renewals = Counter("molamd_client_certificate_renewals", "Client certificate renewals by outcome",
                                     ["outcome"], registry=r)
        self.db_rotations = Counter("molamd_database_credentials_rotations", "Moves of the pool to new leased"
                                    " credentials, by reason", ["reason"], registry=r)


class FileMetrics:
    """The file channels' metrics (the FileBatcher's observer)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.built = Counter("molamd_payment_files_built", "pain.001 files built, signed and recorded",
                             ["connector"], registry=r)
        self.transactions = Counter("molamd_payment_file_transactions", "Transactions put in recorded files",
                                    ["connector"], registry=r)
        self.uploads = Counter("molamd_payment_file_uploads", "File uploads by outcome", ["connector", "outcome"],
                               registry=r)
        self.reports = Counter("molamd_payment_status_reports", "pain.002 reports received, by flag (none: applied)",
                               ["connector", "flag"], registry=r)
        self.report_slices = Counter("molamd_payment_file_slices_final",
                                     "Slices a status report made final, by status", ["connector", "status"],
                                     registry=r)
        self.signing = Histogram("molamd_payment_file_build_seconds",
                                 "Build, validate, sign in the HSM and verify one file", ["connector"], registry=r,
                                 buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.first_report = Histogram("molamd_payment_file_first_report_seconds",
                                      "From upload to a file's first status report", ["connector"], registry=r,
                                      buckets=(1, 5, 15, 60, 300, 900, 3600, 14400, 86400))
        self.final_report = Histogram("molamd_payment_file_final_report_seconds",
                                      "From upload to the report that leaves every slice of the file final",
                                      ["connector"], registry=r, buckets=(1, 5, 15, 60, 300, 900, 3600, 14400, 86400))
        self.by_status = Gauge("molamd_payment_files", "Payment files by status (recorded, uploaded, accepted,"
                               " partially_accepted, rejected, completed)", ["connector", "status"], registry=r)
        self.tx_by_status = Gauge("molamd_payment_file_transactions_by_status",
                                  "Transactions in files by the latest status a report gave them (none: no report yet)",
                                  ["connector", "status"], registry=r)
        self.waiting = Gauge("molamd_payment_file_slices_waiting", "Slices batched, waiting for their file to close",
                             ["connector"], registry=r)
        self.awaiting_report = Gauge("molamd_payment_files_awaiting_report", "Files uploaded with no status report"
                                     " yet", ["connector"], registry=r)
        self.oldest_unreported = Gauge("molamd_payment_file_oldest_unreported_age_seconds",
                                       "Since the upload of the oldest file with no status report (0: none)",
                                       ["connector"], registry=r)
        self.cutoffs_missed = Counter("molamd_payment_file_cutoffs_missed", "Cutoffs that passed while slices"
                                      " waiting before them were still not in a file at the bank", ["connector"],
                                      registry=r)
        self.hsm_up = Gauge("molamd_hsm_up", "1 while the connector's last HSM signature (or start-up probe)"
                            " succeeded", ["connector"], registry=r)
        self.signatures = Counter("molamd_hsm_signatures", "Signatures asked of the HSM, by outcome",
                                  ["connector", "outcome"], registry=r)

    def file_built(self, connector: str, transactions: int, sign_seconds: float) -> None:
        self.built.labels(connector).inc()
        self.transactions.labels(connector).inc(transactions)
        self.signing.labels(connector).observe(sign_seconds)

    def file_uploaded(self, connector: str, ok: bool) -> None:
        self.uploads.labels(connector, "ok" if ok else "error").inc()

    def report_received(self, connector: str, applied: ReportApplied) -> None:
        self.reports.labels(connector, applied.flag or "none").inc()
        if applied.settled:
            self.report_slices.labels(connector, "settled").inc(applied.settled)
        if applied.failed:
            self.report_slices.labels(connector, "failed").inc(applied.failed)
        if applied.first_after is not None:
            self.first_report.labels(connector).observe(applied.first_after)
        if applied.final_after is not None:
            self.final_report.labels(connector).observe(applied.final_after)

    def slices_waiting(self, connector: str, count: int) -> None:
        self.waiting.labels(connector).set(count)

    def cutoff_missed(self, connector: str) -> None:
        self.cutoffs_missed.labels(connector).inc()

    def signed(self, connector: str, ok: bool) -> None:
        self.hsm_up.labels(connector).set(1 if ok else 0)
        self.signatures.labels(connector, "ok" if ok else "error").inc()

    def set_counts(self, files: list[tuple[str, str, int]], transactions: list[tuple[str, str, int]],
                   unreported: list[tuple[str, int, float]]) -> None:
        self.awaiting_report.clear()
        self.oldest_unreported.clear()
        for connector, count, oldest in unreported:
            self.awaiting_report.labels(connector).set(count)
            self.oldest_unreported.labels(connector).set(oldest)
        self.by_status.clear()
        for connector, status, count in files:
            self.by_status.labels(connector, status).set(count)
        self.tx_by_status.clear()
        for connector, status, count in transactions:
            self.tx_by_status.labels(connector, status).set(count)


# The families the actor collector makes at scrape time: name -> (type, labels, help).
ACTOR_FAMILIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "molamd_actor_state": ("gauge", ("supervisor", "actor", "state"), "1 for the state each actor is in"),
    "molamd_actor_restarts": ("counter", ("supervisor", "actor"), "Restarts of each actor by its supervisor"),
    "molamd_actor_mailbox_depth": ("gauge", ("supervisor", "actor"), "Messages waiting in each actor's mailbox"),
    "molamd_connector_limiter_paused_seconds": (
        "gauge", ("connector",),
        "Seconds left of a bank's Retry-After pause; the connector takes no new work meanwhile"),
}


def _family(name: str) -> GaugeMetricFamily | CounterMetricFamily:
    kind, labels, documentation = ACTOR_FAMILIES[name]
    family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return family(name, documentation, labels=list(labels))


class _ActorCollector(Collector):
    def __init__(self, supervisors: Callable[[], Iterable[Supervisor]]) -> None:
        self._supervisors = supervisors

    def collect(self) -> Iterator[Metric]:
        state, restarts = _family("molamd_actor_state"), _family("molamd_actor_restarts")
        depth, paused = _family("molamd_actor_mailbox_depth"), _family("molamd_connector_limiter_paused_seconds")
        for sup in self._supervisors():
            for info in sup.infos():
                state.add_metric([sup.name, info.name, info.state.value], 1.0)  # the other states: no series
                restarts.add_metric([sup.name, info.name], info.restarts)
                child = sup.child(info.name)
                snapshot = getattr(child, "snapshot", None)
                if snapshot is not None:
                    depth.add_metric([sup.name, info.name], snapshot().mailbox_depth)
                limiter = getattr(child, "limiter", None)
                if isinstance(limiter, RateLimiter):
                    paused.add_metric([info.name], limiter.paused_for())
        yield paused
        yield state
        yield restarts
        yield depth


class MetricsServer:
    """A minimal HTTP/1.0 endpoint for GET /metrics; anything else gets 404 or 405."""

    name = "metrics"

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self.port: int | None = None
        self._stop = trio.Event()
        self._text = TextEncoder()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until stopped; cancellation closes the listener and open connections."""
        listeners = await trio.open_tcp_listeners(self._port, host=self._host)
        self.port = listeners[0].socket.getsockname()[1]
        logger.info("metrics on http://%s:%s/metrics", self._host, self.port)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            task_status.started()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def request_stop(self) -> None:
        self._stop.set()

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            with trio.move_on_after(_READ_TIMEOUT):
                while b"\r\n\r\n" not in head and len(head) < _MAX_REQUEST:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    head += chunk
            request_line, _, rest = head.partition(b"\r\n")
            parts = request_line.split()
            accept = ""
            for line in rest.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"accept":
                    accept = value.strip().decode("latin-1")
            if len(parts) < 2:
                await self._reply(stream, 400, "text/plain", b"bad request\n")
            elif parts[0] != b"GET":
                await self._reply(stream, 405, "text/plain", b"only GET\n")
            elif parts[1].split(b"?")[0] != b"/metrics":
                await self._reply(stream, 404, "text/plain", b"try /metrics\n")
            else:
                encoder, content_type = choose_encoder(accept)
                if encoder is generate_latest:  # the text format: the same bytes, formatted faster
                    encoder = self._text
                await self._reply(stream, 200, content_type, encoder(self._metrics.registry))

    @staticmethod
    async def _reply(stream: trio.SocketStream, status: int, content_type: str, body: bytes) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
        head = (
            f"HTTP/1.0 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(head + body)
