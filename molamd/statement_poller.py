"""The statement poller: one actor per statement source (design §7).

Each poll: take the source's advisory lock (another host may hold it: then do nothing), list the inbox, keep
the files whose size and mtime stayed the same for ``stable_for`` (or that have their done marker), and take
them one by one: download to a spool file, ingest in one transaction, and only then move the remote file to
``archive/`` or ``error/``. A crash between the commit and the move leaves the file in the inbox; the next
poll finds its sha256 already stored and only archives it, so no line is written twice. A database that is
down leaves the file where it is. Polls back off on errors and while the inbox stays empty.

A file the server will not let us move (a read-only drop, a rename it denies) is stored once and then
remembered by name, size, mtime and hash: it is not downloaded again until it changes or an operator retries it
(``molamctl statements poll SOURCE --retry-stuck``), and the files behind it go on. Entries never offered
(unsafe names, links out of the inbox, dangling or unreadable links, directories) are logged once each while
they stay, and counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio

from actors import Actor, Backoff, Deferred, Refused, clear_spool, spool_prefix
from connectors import (
    ConnectorError,
    FileChanged,
    FileRefused,
    MoveRefused,
    RemoteFile,
    SftpSourceConfig,
    SftpStatementConnector,
    Skipped,
)
from connectors.statements import CsvProfile

from .db import DatabaseError
from .logs import log
from .metrics import Metrics
from .spool import spool_directory
from .statements import Ingested, StatementStore

FIRST_RETRY = 5.0  # seconds before the first retry of a failed poll
DATABASE_WAIT = 0.5  # how often a poller looks whether the database is up again
logger = logging.getLogger("molamd.statements")


class PollNow(msgspec.Struct, frozen=True):
    """Poll at once (``molamctl statements poll``, tests); answers with the poll's summary. ``retry_stuck``
    forgets the files that could not be moved, so they are downloaded and tried again."""

    retry_stuck: bool = False


class Stuck(msgspec.Struct, frozen=True, kw_only=True):
    """A file stored but not moved out of the inbox: left alone until it changes."""

    size: int
    mtime: int
    sha256: str
    reason: str


class PollSummary(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    locked_elsewhere: bool = False
    listed: int = 0
    taken: list[dict[str, Any]] = msgspec.field(default_factory=list)
    skipped: list[Skipped] = msgspec.field(default_factory=list)
    stuck: list[str] = msgspec.field(default_factory=list)  # left alone this poll: still cannot be moved


class StatementPoller(Actor[PollNow]):
    # A poll an operator asked for that fails (a wrong password, a server down) is the operator's answer, not a
    # crash of the source.
    reply_errors = (Refused, ConnectorError, DatabaseError)

    def __init__(
        self, config: SftpSourceConfig, connector: SftpStatementConnector, store: StatementStore, metrics: Metrics, *,
        csv_profile: CsvProfile | None, profile_sources: list[str],
        after_commit: Callable[[RemoteFile, Ingested], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(config.name, mailbox_size=8)
        self.config = config
        self.options = config.sftp
        self.connector = connector
        self.store = store
        self.metrics = metrics
        self.csv_profile = csv_profile
        self.profile_sources = profile_sources
        self.after_commit = after_commit  # a test seam: runs between the commit and the remote move
        self.last_poll_ok: bool | None = None  # None until the first poll ends
        self.last_error: str | None = None
        self._lock = trio.Lock()
        self._stuck: dict[str, Stuck] = {}
        self._spool = spool_directory(self.options.spool_dir)
        self._spool_prefix = spool_prefix("statement", self.name)
        self._skipped_seen: set[tuple[str, str]] = set()
        self._last_file_known = False  # the last parsed file's time is read from the database once
        metrics.statement_expected_every.labels(self.name).set(self.options.expected_every.seconds)
        for outcome in ("parsed", "parse_failed", "balance_failed"):  # from 0, so that alerts see the first one
            metrics.statement_files.labels(self.name, outcome)
        metrics.statement_lines.labels(self.name)
        metrics.statement_lines_matched.labels(self.name)
        interval, worst = self.options.poll_interval.seconds, self.options.error_backoff_max.seconds
        # A failed poll is tried again soon, then less and less often, up to error_backoff_max.
        self._errors = Backoff(initial=min(interval, worst, FIRST_RETRY), maximum=max(interval, worst), jitter=0.2)

    async def setup(self) -> None:
        # Downloads hold a bank's statement: in the daemon's state directory, never the shared temp directory,
        # and what a killed run left there is cleared first (the file is still in the bank's drop).
        await trio.to_thread.run_sync(clear_spool, self._spool, "statement", self._spool_prefix)
        self.nursery.start_soon(self._poll_forever)

    async def teardown(self) -> None:
        with contextlib.suppress(Exception):
            await self.store.release_lock(self.name)
        with contextlib.suppress(Exception):
            await self.connector.aclose()

    async def handle(self, msg: PollNow) -> Deferred:
        if msg.retry_stuck:
            self._stuck.clear()
        return Deferred(self._requested_poll)

    async def _requested_poll(self) -> PollSummary:
        try:
            summary = await self.poll_once()
        except (ConnectorError, DatabaseError) as exc:
            self.last_poll_ok, self.last_error = False, str(exc)
            log(logger, logging.WARNING, "statement poll failed", source=self.name, error=str(exc), requested=True)
            raise
        self.last_poll_ok, self.last_error = True, None
        return summary

    async def _poll_forever(self) -> None:
        interval = self.options.poll_interval.seconds
        idle = interval
        failures = 0
        while True:
            await self._database_ready()
            try:
                summary = await self.poll_once()
            except (ConnectorError, DatabaseError) as exc:
                self.last_poll_ok, self.last_error = False, str(exc)
                failures += 1
                delay = self._errors.delay(failures)
                log(logger, logging.WARNING, "statement poll failed", source=self.name, error=str(exc),
                    retry_in_seconds=round(delay, 3))
            else:
                self.last_poll_ok, self.last_error = True, None
                failures = 0
                if summary.taken or summary.listed:
                    idle = interval
                else:  # nothing there: look less often, up to idle_backoff_max
                    idle = max(interval, min(idle * 2, self.options.idle_backoff_max.seconds))
                delay = idle if not summary.taken else interval
            await trio.sleep(delay)

    async def _database_ready(self) -> None:
        """Wait while the database is down (at start-up it connects in the background): a poll could only
        fail, and a source is not at fault for our database."""
        while not self.store.db.up:  # noqa: ASYNC110 - the database service keeps a flag, not an event
            await trio.sleep(DATABASE_WAIT)

    async def poll_once(self) -> PollSummary:
        async with self._lock:
            started = time.monotonic()
            try:
                return await self._poll()
            finally:
                self.metrics.statement_poll_duration.labels(self.name).observe(time.monotonic() - started)

    async def _poll(self) -> PollSummary:
        if not await self.store.hold_lock(self.name):
            return PollSummary(source=self.name, locked_elsewhere=True)
        await self._settle_proven()
        if not self._last_file_known:
            last = await self.store.last_parsed(self.name)
            self.metrics.statement_last_file.labels(self.name).set(last or 0)
            self._last_file_known = True
        listing = await self.connector.listing()
        self._note_skipped(listing.skipped)
        first = self._not_stuck(listing.files)
        stuck = sorted(self._stuck)
        if not first:
            return PollSummary(source=self.name, listed=len(listing.files), skipped=listing.skipped, stuck=stuck)
        ready = first
        if not self.options.done_marker:  # stable: same size and mtime across two listings
            await trio.sleep(self.options.stable_for.seconds)
            before = {(f.name, f.size, f.mtime) for f in first}
            ready = [f for f in await self.connector.list_statements() if (f.name, f.size, f.mtime) in before]
        taken = [await self._take(f) for f in ready]
        if any(t.get("lines") for t in taken):
            await self._update_unmatched()
        return PollSummary(source=self.name, listed=len(listing.files), taken=taken, skipped=listing.skipped,
                           stuck=sorted(self._stuck))

    def _note_skipped(self, skipped: list[Skipped]) -> None:
        """Log and count each skipped entry once while it stays in the inbox."""
        present = {(s.name, s.reason) for s in skipped}
        for entry in skipped:
            if (entry.name, entry.reason) not in self._skipped_seen:
                self.metrics.statement_entries_skipped.labels(self.name, entry.reason).inc()
                log(logger, logging.WARNING, "statement inbox entry skipped", source=self.name, entry=entry.name,
                    reason=entry.reason, detail=entry.detail or None)
        self._skipped_seen = present

    def _not_stuck(self, files: list[RemoteFile]) -> list[RemoteFile]:
        """The files to try; a stuck file is tried again only once its size or mtime changed (or it went)."""
        names = {f.name for f in files}
        for name in [n for n in self._stuck if n not in names]:
            del self._stuck[name]  # gone: someone moved it
        ready = []
        for f in files:
            stuck = self._stuck.get(f.name)
            if stuck is not None and (stuck.size, stuck.mtime) == (f.size, f.mtime):
                continue
            self._stuck.pop(f.name, None)
            ready.append(f)
        return ready

    async def _take(self, remote: RemoteFile) -> dict[str, Any]:
        os.makedirs(self._spool, mode=0o700, exist_ok=True)  # setup made it; a state directory can be cleaned
        fd, path = tempfile.mkstemp(prefix=self._spool_prefix, suffix=".part", dir=self._spool)
        os.close(fd)
        try:
            started = time.monotonic()
            try:
                fetched = await self.connector.fetch(remote, path)
            except FileChanged as exc:
                self._count("changed")
                log(logger, logging.INFO, "statement file still changing", source=self.name, file=remote.name,
                    reason=str(exc))
                return {"file": remote.name, "outcome": "changed"}
            except FileRefused as exc:
                self._count("refused")
                moved = await self.connector.acknowledge(remote, ok=False, reason=str(exc))
                log(logger, logging.ERROR, "statement file refused", source=self.name, file=remote.name,
                    reason=str(exc), moved_to=moved)
                return {"file": remote.name, "outcome": "refused", "error": str(exc), "moved_to": moved}
            downloaded = time.monotonic()
            result = await self.store.ingest(source=self.name, remote_name=remote.name,
                                             fmt=self.config.statement_format, spooled=fetched,
                                             csv_profile=self.csv_profile, bank_profile=self.config.bank_profile)
            stored = time.monotonic()
            if self.after_commit is not None:
                await self.after_commit(remote, result)
            ok, reason = _verdict(result)
            try:
                moved = await self.connector.acknowledge(remote, ok=ok, reason=reason)
            except MoveRefused as exc:
                return self._stuck_file(remote, fetched.sha256.hex(), result, str(exc))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._count(result.outcome)
        if result.lines:
            self.metrics.statement_lines.labels(self.name).inc(result.lines)
            self.metrics.statement_lines_matched.labels(self.name).inc(result.matched)
        if result.outcome == "parsed":
            self.metrics.statement_last_file.labels(self.name).set(time.time())
        level = logging.INFO if ok else logging.ERROR
        log(logger, level, "statement file taken", source=self.name, file=remote.name, outcome=result.outcome,
            raw_id=result.raw_id, statements=result.statements, lines=result.lines, matched=result.matched,
            settled=result.settled, error=reason, moved_to=moved, download_seconds=round(downloaded - started, 3),
            store_seconds=round(stored - downloaded, 3))
        return {"file": remote.name, "outcome": result.outcome, "raw_id": result.raw_id, "lines": result.lines,
                "matched": result.matched, "settled": result.settled, "error": reason, "moved_to": moved,
                "download_seconds": round(downloaded - started, 3), "store_seconds": round(stored - downloaded, 3)}

    def _stuck_file(self, remote: RemoteFile, sha256: str, result: Ingested, reason: str) -> dict[str, Any]:
        self._stuck[remote.name] = Stuck(size=remote.size, mtime=remote.mtime, sha256=sha256, reason=reason)
        self._count("stuck")
        self.metrics.statement_entries_skipped.labels(self.name, "stuck").inc()
        log(logger, logging.ERROR, "statement file stored but cannot be moved; left alone until it changes",
            source=self.name, file=remote.name, sha256=sha256, raw_id=result.raw_id, outcome=result.outcome,
            reason=reason)
        return {"file": remote.name, "outcome": "stuck", "raw_id": result.raw_id, "lines": result.lines,
                "stored_as": result.outcome, "error": reason}

    async def _settle_proven(self) -> None:
        """Slices linked to a statement line while in flight may have gone dead or retrying since: settle them."""
        settled = await self.store.settle_proven()
        if settled:
            log(logger, logging.WARNING, "payouts settled by statement lines after their outcome was lost",
                source=self.name, slices=settled[:50], count=len(settled))

    def _count(self, outcome: str) -> None:
        self.metrics.statement_files.labels(self.name, outcome).inc()

    async def _update_unmatched(self) -> None:
        try:
            count = await self.store.unmatched(self.profile_sources)
        except DatabaseError:
            return
        self.metrics.statement_lines_unmatched.labels(self.config.bank_profile).set(count)


def _verdict(result: Ingested) -> tuple[bool, str | None]:
    """Archive (True) or error/ with a reason."""
    if result.outcome == "parsed":
        return True, None
    if result.outcome == "duplicate":
        if result.previous_status == "parsed":
            return True, None
        return False, f"same bytes as stored statement file {result.raw_id}, which ended {result.previous_status}"
    return False, result.error
