"""Where connector actors report their calls: Prometheus metrics, and the audit rows of bank calls.

Audit rows of payment sends travel with their results and are written in the same transaction by the
dispatcher. Rows of other calls (status lookups, health checks) are buffered here and written by the
telemetry worker every ``interval``; while the database is down they wait (bounded; an overflow is counted
and logged, never silent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from actors import BreakerEvent, BreakerState, DispatchState
from connectors import CallRecord, ConnectorError

from . import audit, audit_chain, db, payment_files, payouts
from .logs import log
from .metrics import Metrics

logger = logging.getLogger("molamd.telemetry")
MAX_BUFFERED = 100_000
PARTITION_CHECK_EVERY = 6 * 3600.0  # seconds between checks that next months' audit partitions exist


class Telemetry:
    def __init__(self, metrics: Metrics, database: db.Database, host_id: str,
                 publish: Callable[..., None] | None = None, partitions_ahead: int = 3) -> None:
        self._metrics = metrics
        self._partitions_ahead = partitions_ahead
        self._partitions_checked: float | None = None
        self._publish = publish
        self._db = database
        self._host = host_id
        self._audit: list[CallRecord] = []
        self.dropped_audit = 0
        self.calls: dict[str, list[float]] = {}  # connector -> [calls, failed calls, seconds]: `molamctl top`
        self.slices: dict[str, dict[str, int]] = {}  # status -> currency -> slices, as of the last tick

    # -- CallObserver -------------------------------------------------------------------------------

    def call_finished(self, connector: str, operation: str, error: ConnectorError | None, seconds: float) -> None:
        m = self._metrics
        m.connector_requests.labels(connector, operation, "ok" if error is None else error.code).inc()
        m.connector_duration.labels(connector, operation).observe(seconds)
        totals = self.calls.setdefault(connector, [0.0, 0.0, 0.0])
        totals[0] += 1
        totals[2] += seconds
        if error is not None:
            m.connector_failures.labels(connector, error.code).inc()
            totals[1] += 1

    def limiter_waited(self, connector: str, seconds: float) -> None:
        self._metrics.limiter_wait.labels(connector).observe(seconds)

    def breaker_changed(self, event: BreakerEvent) -> None:
        self.set_breaker(event.breaker, event.to_state)
        self._metrics.breaker_transitions.labels(event.breaker, event.from_state.value, event.to_state.value).inc()
        level = logging.WARNING if event.to_state is not BreakerState.CLOSED else logging.INFO
        log(logger, level, f"circuit {event.to_state.value}", actor=event.breaker, reason=event.reason,
            from_state=event.from_state.value)

    def dispatch_changed(self, connector: str, old: DispatchState, new: DispatchState) -> None:
        log(logger, logging.INFO, f"dispatch {new.value}", actor=connector, from_state=old.value)
        if self._publish is not None:
            self._publish("dispatch", actor=connector, from_state=old.value, to_state=new.value)

    def connector_known(self, connector: str) -> None:
        """A connector's breaker starts closed, and its trips count from 0: an alert's rate needs the series
        before the first trip."""
        self.set_breaker(connector, BreakerState.CLOSED)
        for from_state in (BreakerState.CLOSED, BreakerState.HALF_OPEN):  # the two ways into a trip
            self._metrics.breaker_transitions.labels(connector, from_state.value, BreakerState.OPEN.value)

    def set_breaker(self, connector: str, state: BreakerState) -> None:
        """One series per breaker, for the state it is in (a thousand connectors: a thousand series, not four)."""
        gauge = self._metrics.breaker_state
        for candidate in BreakerState:
            if candidate is not state:
                gauge.remove(connector, candidate.value)
        gauge.labels(connector, state.value).set(1)

    def audit(self, record: CallRecord) -> None:
        if len(self._audit) >= MAX_BUFFERED:
            self.dropped_audit += 1
            if self.dropped_audit % 1000 == 1:
                log(logger, logging.ERROR, "audit buffer full while the database is away; dropping rows",
                    dropped=self.dropped_audit)
            return
        self._audit.append(record)

    # -- the worker's tick --------------------------------------------------------------------------

    async def tick(self) -> None:
        """Write buffered audit rows and refresh the payout gauges; quiet while the database is down."""
        if not self._db.up:
            return
        rows, self._audit = self._audit, []
        try:
            counts, doubt, files = await self._db.transaction(lambda conn: self._write(conn, rows))
        except db.DatabaseError:
            self._audit[:0] = rows
            return
        self._metrics.files.set_counts(*files)
        self._metrics.payout_slices.clear()
        dead = unresolved = 0
        slices: dict[str, dict[str, int]] = {}
        for status, currency, count in counts:
            self._metrics.payout_slices.labels(status, currency).set(count)
            slices.setdefault(status, {})[currency] = count
            if status == "dead":
                dead += count
            elif status == "unresolved":
                unresolved += count
        self._metrics.dlq_slices.set(dead)
        self._metrics.unresolved.set(unresolved)
        self.slices = slices
        self._metrics.in_doubt.set(doubt[0])
        self._metrics.in_doubt_oldest.set(doubt[1])
        now = trio.current_time()
        if self._partitions_checked is None or now - self._partitions_checked >= PARTITION_CHECK_EVERY:
            self._partitions_checked = now
            await self._check_partitions()

    async def _check_partitions(self) -> None:
        """Next months' audit partitions: made if missing. The daemon's database role may not own the tables
        (leased credentials): then it says what is missing, and rows still land, chained, in the default
        partition until the owner runs `molamd audit partitions`."""
        try:
            found = await self._db.transaction(
                lambda conn: audit_chain.ensure_partitions(conn, self._partitions_ahead))
        except db.DatabaseError as exc:
            log(logger, logging.WARNING, "audit partitions not checked", error=str(exc))
            return
        if found.made:
            log(logger, logging.INFO, "audit partitions made", partitions=list(found.made))
        if found.missing:
            log(logger, logging.WARNING, "audit partitions missing and this role may not make them; run"
                " `molamd audit partitions` as the schema owner", partitions=list(found.missing))

    def _write(self, conn: db.Conn, rows: Sequence[CallRecord]) -> tuple[
            list[tuple[str, str, int]], tuple[int, float], payment_files.Counts]:
        """The audit rows written, and the counts read, in one transaction: a failure after the rows were
        committed would have queued them again, and written them twice. The rows go last: the audit chain's
        head stays locked from the first row to the commit, and other writers wait for it meanwhile."""
        counts = payouts.status_counts(conn), payouts.in_doubt_summary(conn), payment_files.counts(conn)
        audit.bank_calls(conn, self._host, rows)
        return counts
