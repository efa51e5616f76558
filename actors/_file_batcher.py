"""The FileBatcher: the connector actor of an ISO 20022 file channel, which also closes, submits and follows its
files.

The dispatcher routes slices to it as to any connector (pause, drain, breaker and health all apply) but does
not call it: the slices wait ``batched``, bound to its scope. Every ``tick`` the batcher looks at what waits,
per debtor account and currency, and closes a file when one of three things holds: ``max_transactions`` are
waiting, the oldest has waited ``max_age``, or the bank's next cutoff is within ``cutoff_lead``. Closing is one
database transaction: the slices taken, the file built, signed in the HSM and verified, recorded with its
bytes, and the slices moved to ``sent`` in it. Only then is it uploaded; an upload that fails is retried with
backoff, and a crash anywhere resumes from the record: the same bytes, the same MsgId, never a second file with
other ids. Status reports are read from the bank's drop, stored as received, verified when signed, and applied
by the store (never backwards).

Before it takes any work the batcher builds and signs a probe file and verifies the signature with our
certificate: an HSM that is missing or locked, a wrong PIN, an absent key or a certificate that does not match
stop it here, with the reason, and nothing is sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Protocol

import trio

from connectors import (
    CallContext,
    CallRecord,
    ConnectorError,
    FileChanged,
    FileChannelConfig,
    FileChannelConnector,
    FileRefused,
    MoveRefused,
    PayoutSlice,
    Prepared,
    RemoteFile,
    Uploaded,
)
from connectors.iso20022 import SignatureInvalid, StatusReportError, msg_id, parse_pain002

from . import tracing
from ._backoff import Backoff
from ._connector_actor import CallObserver, ConnectorActor, DispatchState
from ._file_types import FileStore, ReportApplied, ReportIn, Submission, Waiting
from ._spool import clear_spool, spool_prefix

logger = logging.getLogger("molamd.files")
Sign = Callable[[str, bytes], bytes]  # (key label, data) -> signature, in the HSM


class FileObserver(Protocol):
    def file_built(self, connector: str, transactions: int, sign_seconds: float) -> None: ...

    def file_uploaded(self, connector: str, ok: bool) -> None: ...

    def report_received(self, connector: str, applied: ReportApplied) -> None: ...

    def slices_waiting(self, connector: str, count: int) -> None: ...

    def cutoff_missed(self, connector: str) -> None: ...

    def signed(self, connector: str, ok: bool) -> None: ...


class NullFileObserver:
    def file_built(self, connector: str, transactions: int, sign_seconds: float) -> None:
        pass

    def file_uploaded(self, connector: str, ok: bool) -> None:
        pass

    def report_received(self, connector: str, applied: ReportApplied) -> None:
        pass

    def slices_waiting(self, connector: str, count: int) -> None:
        pass

    def cutoff_missed(self, connector: str) -> None:
        pass

    def signed(self, connector: str, ok: bool) -> None:
        pass


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class FileBatcher(ConnectorActor):
    def __init__(self, config: FileChannelConfig, connector: FileChannelConnector, store: FileStore, sign: Sign,
                 observer: CallObserver | None = None,
                 files: FileObserver | None = None, clock: Callable[[], dt.datetime] = _utcnow,
                 spool_dir: str | None = None) -> None:
        super().__init__(config, connector, observer=observer)
        self.channel = connector
        self.options = config.iso20022
        self._store = store
        self._sign = sign
        self._files: FileObserver = files or NullFileObserver()
        self._clock = clock
        # Downloads in progress hold bank data: in the daemon's state directory (spool_dir), never a shared
        # temp directory, and what a killed incarnation left there is cleared before any new one is made.
        self._spool = spool_dir or tempfile.gettempdir()
        self._spool_prefix = spool_prefix("report", config.name)
        self._certificate = b""
        self._cutoff_ahead: dt.datetime | None = None  # the next cutoff as the last look at waiting slices saw it
        self._upload_backoff = Backoff(initial=1.0, maximum=self.options.upload_retry_max.seconds, jitter=0.2)
        self._stuck: set[tuple[str, int, int]] = set()  # reports the server would not let us move

    # -- lifecycle ----------------------------------------------------------------------------------

    async def setup(self) -> None:
        await super().setup()
        await trio.to_thread.run_sync(self._clear_spool)
        await trio.to_thread.run_sync(self._probe)
        self.nursery.start_soon(self._files_loop)
        self.nursery.start_soon(self._reports_loop)

    def _clear_spool(self) -> None:
        """The spool directory made (owner only) if missing, and the report downloads left there by a run that
        is gone removed (a killed daemon's; this connector's earlier incarnation in this process): such a report
        is fetched again from the bank's drop."""
        clear_spool(self._spool, "report", self._spool_prefix)

    def _probe(self) -> None:
        """One file built, signed and verified, never recorded nor sent: the HSM, the key and the certificate
        work together, or the connector does not start (the error says which)."""
        self._certificate = self.channel.certificate_key()
        probe = PayoutSlice(id=1, payout_id="probe", idempotency_key="molam-probe-1", amount=Decimal(1),
                            currency="XOF", rail="probe", debtor_account="PROBE", beneficiary_name="Probe",
                            beneficiary_account="PROBE")
        try:
            self._build(0, [probe], self._clock(), self._clock().date())
        except SignatureInvalid as exc:
            raise SignatureInvalid(
                f"key {self.options.key_label!r} in the HSM does not make signatures that verify against"
                f" certificate {self.options.certificate}: is it that key's certificate? ({exc})") from None

    @property
    def _working(self) -> bool:
        return self.dispatch is DispatchState.RUNNING and self.unhealthy is None

    # -- files --------------------------------------------------------------------------------------

    async def _files_loop(self) -> None:
        while True:
            if self._working:
                try:
                    await self._upload_recorded()
                    await self._close_due()
                except Exception as exc:
                    if not getattr(exc, "retryable", False):
                        raise
                    logger.warning("%s: database unavailable (%s); files wait", self.name, exc)
            await trio.sleep(self.options.tick.seconds)

    async def _close_due(self) -> None:
        groups = await self._store.waiting(self.name)
        self._files.slices_waiting(self.name, sum(g.count for g in groups))
        now = self._clock()
        cutoff = self.channel.calendar.next_cutoff(now)
        passed, self._cutoff_ahead = self._cutoff_ahead, cutoff
        if passed is not None and passed <= now:
            since = (now - passed).total_seconds()
            if any(g.oldest_seconds > since for g in groups):  # they waited through it (paused, HSM or bank down)
                logger.error("%s: cutoff %s passed with slices waiting since before it; they go to the next"
                             " business day", self.name, passed.isoformat())
                self._files.cutoff_missed(self.name)
        if not groups:
            return
        near_cutoff = (cutoff - now).total_seconds() <= self.options.cutoff_lead.seconds
        for group in groups:
            if not self._due(group, near_cutoff):
                continue
            left = group
            while True:
                submission = await self._record(left, cutoff.date())
                if submission is None:
                    break
                await self._upload(submission)
                if left.count <= submission.transactions:
                    break
                left = Waiting(debtor_account=left.debtor_account, currency=left.currency,
                               count=left.count - submission.transactions, oldest_seconds=left.oldest_seconds)
                if not self._due(left, near_cutoff):
                    break

    def _due(self, group: Waiting, near_cutoff: bool) -> bool:
        o = self.options
        return group.count >= o.max_transactions or group.oldest_seconds >= o.max_age.seconds or near_cutoff

    async def _record(self, group: Waiting, execution_date: dt.date) -> Submission | None:
        timings: list[float] = []

        def build(file_id: int, slices: Sequence[PayoutSlice], created_at: dt.datetime) -> Prepared:
            started = time.perf_counter()
            prepared = self._build(file_id, slices, created_at, execution_date)
            timings.append(time.perf_counter() - started)
            return prepared

        recorded = await self._store.record_file(self.name, self.options.version.value, group,
                                                 self.options.max_transactions, build, self._upload_lease)
        for slice_id, why in recorded.refused.items():
            logger.error("%s: payout slice %s is dead: %s", self.name, slice_id, why)
        if recorded.file is not None:
            self._files.file_built(self.name, recorded.file.transactions, timings[-1] if timings else 0.0)
            logger.info("%s: file %s recorded: %d transactions, execution date %s", self.name,
                        recorded.file.msg_id, recorded.file.transactions, execution_date)
        return recorded.file

    def _build(self, file_id: int, slices: Sequence[PayoutSlice], created_at: dt.datetime,
               execution_date: dt.date) -> Prepared:
        label = self.options.key_label
        file = self.channel.payment_file(file_id, slices, execution_date, created_at)
        msg = msg_id(file)
        trace_id = tracing.file_trace_id(msg) if tracing.enabled() else None
        with tracing.span(trace_id, "file.build", connector=self.name, file_id=file_id, msg_id=msg,
                          transactions=len(slices), version=self.options.version.value,
                          execution_date=execution_date.isoformat()):
            return self.channel.prepare(file, lambda data: self._signed(label, data, trace_id), self._certificate)

    def _signed(self, label: str, data: bytes, trace_id: str | None = None) -> bytes:
        with tracing.span(trace_id, "file.sign", connector=self.name, key_label=label, bytes=len(data)):
            try:
                signature = self._sign(label, data)
            except Exception:
                self._files.signed(self.name, False)
                raise
        self._files.signed(self.name, True)
        return signature

    @property
    def _upload_lease(self) -> float:
        return self.config.limits.call_timeout.seconds * 3 + 30.0

    async def _upload_recorded(self) -> None:
        for submission in await self._store.to_upload(self.name, self._upload_lease):
            await self._upload(submission)

    async def _upload(self, s: Submission) -> None:
        # The file's own trace id, the same on every host and upload: what the bank sees (X-Trace-Id over REST)
        # and the audit row of each upload carry it.
        trace_id = tracing.file_trace_id(s.msg_id)
        with tracing.span(trace_id, "file.upload", connector=self.name, file_id=s.file_id, msg_id=s.msg_id,
                          attempt=s.upload_attempts, bytes=len(s.content)) as span:
            await self._upload_in(s, trace_id, span)

    async def _upload_in(self, s: Submission, trace_id: str, span: Any) -> None:
        ctx = CallContext(trace_id=trace_id, timeout=self.config.limits.call_timeout.seconds)
        request: dict[str, object] = {"file": s.file_name, "msg_id": s.msg_id, "bytes": len(s.content),
                                      "transactions": s.transactions, "attempt": s.upload_attempts}

        async def call(c: CallContext) -> tuple[Uploaded, CallRecord]:
            started = trio.current_time()
            try:
                done = await self.channel.submit(s.file_name, s.content, s.signature_name, s.signature, s.msg_id)
            except ConnectorError as exc:
                exc.record = CallRecord(
                    connector=self.name, trace_id=c.trace_id, operation="upload", outcome="error",
                    duration_seconds=trio.current_time() - started, error_code=exc.code, request=request,
                    response={"error": str(exc)[:500]})
                raise
            return done, CallRecord(
                connector=self.name, trace_id=c.trace_id, operation="upload", outcome="ok",
                duration_seconds=trio.current_time() - started, request=request,
                response={"path": done.path, "detail": done.detail})

        try:
            done, record = await self._guarded("upload", call, ctx)
        except ConnectorError as exc:
            delay = self._upload_backoff.delay(max(1, s.upload_attempts))
            logger.warning("%s: upload of %s failed (%s: %s); again in %.0fs", self.name, s.msg_id, exc.code, exc,
                           delay)
            self._files.file_uploaded(self.name, False)
            if span is not None:
                span.set_attributes({"error.code": exc.code, "outcome": "failed"})
            await self._store.upload_failed(s.file_id, f"{exc.code}: {exc}", delay, exc.record)
            return
        await self._store.uploaded(s.file_id, done.detail, record)
        self._files.file_uploaded(self.name, True)
        logger.info("%s: file %s uploaded to %s%s", self.name, s.msg_id, done.path,
                    f" ({done.detail})" if done.detail else "")

    # -- status reports -----------------------------------------------------------------------------

    async def _reports_loop(self) -> None:
        failures = 0
        every, most = self.options.report_poll_interval.seconds, self.options.report_backoff_max.seconds
        while True:
            try:
                await self._take_reports()
                failures = 0
                delay = every
            except ConnectorError as exc:
                failures += 1
                delay = min(most, every * 2 ** min(failures, 10))
                logger.warning("%s: status reports: %s: %s; again in %.0fs", self.name, exc.code, exc, delay)
            except Exception as exc:
                if not getattr(exc, "retryable", False):
                    raise
                delay = every
                logger.warning("%s: status reports wait for the database (%s)", self.name, exc)
            await trio.sleep(delay)

    async def _take_reports(self) -> None:
        for remote in await self.channel.pending_reports():
            if (remote.name, remote.size, remote.mtime) not in self._stuck:
                await self._take_report(remote)

    async def _take_report(self, remote: RemoteFile) -> None:
        """One report: a file refused (too big, a bad name) goes to error/ with the reason, one still being
        written waits for a later pass; either way the reports behind it are taken."""
        fd, path = tempfile.mkstemp(prefix=self._spool_prefix, dir=self._spool)
        os.close(fd)
        try:
            fetched = await self.channel.fetch_report(remote, path)
            content = await trio.Path(path).read_bytes()
        except FileChanged as exc:
            logger.info("%s: status report %s is still changing; taken at a later pass (%s)", self.name,
                        remote.name, exc)
            return
        except FileRefused as exc:
            await self._refuse_report(remote, str(exc))
            return
        finally:
            await trio.Path(path).unlink(missing_ok=True)
        if not await self._store.known_report(self.name, fetched.sha256):
            started = tracing.now_ns()
            report_in = await trio.to_thread.run_sync(self._read_report, remote.name, content)
            applied = await self._store.record_report(report_in)
            original = report_in.report.original_msg_id if report_in.report is not None else None
            tracing.record(tracing.file_trace_id(original) if original else None, "file.report", started,
                           connector=self.name, msg_id=original, report=remote.name, flag=applied.flag,
                           settled=applied.settled, failed=applied.failed, signature=report_in.signature)
            self._files.report_received(self.name, applied)
            if applied.flag is not None:
                logger.error("%s: status report %s (stored as report %s) flagged %s: %s", self.name, remote.name,
                             applied.report_id, applied.flag, applied.detail)
            else:
                logger.info("%s: status report %s: %d slices settled, %d failed", self.name, remote.name,
                            applied.settled, applied.failed)
        try:
            await self.channel.done_report(remote)
        except MoveRefused as exc:
            self._stuck.add((remote.name, remote.size, remote.mtime))
            logger.warning("%s: %s", self.name, exc)

    async def _refuse_report(self, remote: RemoteFile, reason: str) -> None:
        self._files.report_received(self.name, ReportApplied(report_id=None, file_id=None, flag="refused",
                                                             detail=reason))
        try:
            moved = await self.channel.refuse_report(remote, reason)
        except MoveRefused as exc:
            moved, reason = None, f"{reason}; and it cannot be moved to error/: {exc}"
        if moved is None:  # left where it is: not tried again until it changes
            self._stuck.add((remote.name, remote.size, remote.mtime))
        logger.error("%s: status report %s refused, not stored (%s)%s", self.name, remote.name, reason,
                     f"; moved to {moved}" if moved else "")

    def _read_report(self, name: str, content: bytes) -> ReportIn:
        sha = hashlib.sha256(content).digest()
        try:
            report = parse_pain002(content)
        except StatusReportError as exc:
            return ReportIn(connector=self.name, remote_name=name, content=content, sha256=sha, report=None,
                            signature="not_checked", problem=str(exc))
        signature, problem = self.channel.report_signature(content)
        return ReportIn(connector=self.name, remote_name=name, content=content, sha256=sha, report=report,
                        signature=signature, problem=problem)
