"""Statement ingestion in PostgreSQL: raw bytes and lines in one transaction, reconciliation, the source lock.

Everything here is synchronous and runs in a worker thread, one transaction per file (design §7, §8):

    dedup by sha256 -> raw row (COPY, streamed from the spool file) -> parse -> lines (COPY, one statement at a
    time) -> link lines to the payout slices they settle -> commit

A file that does not parse or balance rolls back to a savepoint: its raw row stays, marked ``parse_failed`` or
``balance_failed`` with the error, and no line of it is written.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import msgspec
import psycopg
import trio
from psycopg.copy import QueuedLibpqWriter
from psycopg.rows import dict_row

from connectors import Fetched
from connectors.statements import CsvProfile, Statement, StatementError, iter_statements

from .db import Database, DatabaseError, DatabaseUnavailable, SessionLock
from .encryption import FieldSealer, Keys, KeyUnavailable, lookup_hash, seal_chunks, unseal_with, wrapped_key
from .reconciliation import reconcile, settle_proven, unmatched_count

RAW_CHUNK = 1024 * 1024
LINE_COLUMNS = (
    "statement_raw_id", "statement_no", "line_no", "account", "statement_ref", "booking_date", "value_date",
    "credit_debit", "reversal", "amount", "currency", "transaction_code", "customer_ref", "bank_ref",
    "end_to_end_id", "counterparty_name", "counterparty_account", "counterparty_bic", "remittance_info", "details",
    "raw_line", "source_line", "sealed_fields", "counterparty_account_hash",
)
# Sealed together when the file is sealed: what matching does not need and a database reader should not see.
SEALED_FIELDS = ("counterparty_name", "counterparty_account", "counterparty_bic", "remittance_info", "details",
                 "raw_line", "source_line")
_COPY_LINES = f"COPY bank_statement_lines ({', '.join(LINE_COLUMNS)}) FROM STDIN"
_json = msgspec.json.Encoder()


class Ingested(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one file."""

    raw_id: int
    outcome: str  # parsed, duplicate, parse_failed, balance_failed
    statements: int = 0
    lines: int = 0
    matched: int = 0
    settled: int = 0
    error: str | None = None
    previous_status: str | None = None  # for a duplicate: how the first copy ended


def ingest(
    conn: psycopg.Connection[Any], *, source: str, remote_name: str, fmt: str, spooled: Fetched,
    csv_profile: CsvProfile | None = None, bank_profile: str | None = None, keys: Keys | None = None,
    lookup_key: bytes | None = None,
) -> Ingested:
    """Store one spooled file and its lines, in the caller's transaction: with ``keys``, the raw bytes and the
    lines' SEALED_FIELDS sealed under one data key for the file; with ``lookup_key``, each counterparty account's
    lookup hash."""
    conn.execute("SET LOCAL statement_timeout = 0")  # a million-line COPY outlives the daemon's default
    row = conn.execute("SELECT id, status FROM bank_statements_raw WHERE sha256 = %s", [spooled.sha256]).fetchone()
    if row is not None:
        return Ingested(raw_id=row[0], outcome="duplicate", previous_status=row[1])
    raw_id = conn.execute("SELECT nextval(pg_get_serial_sequence('bank_statements_raw', 'id'))").fetchone()[0]  # type: ignore[index]
    data_key = keys.new_key() if keys is not None else None
    _copy_raw(conn, raw_id, source, remote_name, fmt, spooled, keys, data_key)
    if bank_profile is not None:
        conn.execute("UPDATE bank_statements_raw SET bank_profile_id = %s WHERE id = %s", [bank_profile, raw_id])
    with open(spooled.path, "rb") as f:
        return _parse_into(conn, raw_id, fmt, f, csv_profile,
                           _Protect(FieldSealer(data_key[0]) if data_key else None, lookup_key))


def reprocess(conn: psycopg.Connection[Any], raw_id: int, csv_profile: CsvProfile | None,
              keys: Keys | None = None, lookup_key: bytes | None = None) -> Ingested:
    """Parse a stored file again (after a parser or profile fix); only files that have no lines yet."""
    row = conn.execute(
        "SELECT status, format, raw, sealed, data_key FROM bank_statements_raw WHERE id = %s FOR UPDATE",
        [raw_id]).fetchone()
    if row is None:
        raise LookupError(f"no stored statement file {raw_id}")
    status, fmt, raw, sealed, data_key = row
    sealer = None
    if sealed:
        if keys is None:
            raise ValueError(f"statement file {raw_id} is sealed and no [encryption] keys are configured")
        key = keys.open_key(data_key or wrapped_key(bytes(raw)))
        raw, sealer = unseal_with(key, bytes(raw)), FieldSealer(key)
    if status == "parsed":
        raise ValueError(f"statement file {raw_id} is already parsed; its lines are in bank_statement_lines")
    conn.execute("SET LOCAL statement_timeout = 0")
    return _parse_into(conn, raw_id, fmt, io.BytesIO(raw), csv_profile, _Protect(sealer, lookup_key))


class _Protect(msgspec.Struct, frozen=True):
    """How the lines of one file are protected: their sealed fields, their lookup hashes (either may be None)."""

    sealer: FieldSealer | None
    lookup_key: bytes | None


def _parse_into(
    conn: psycopg.Connection[Any], raw_id: int, fmt: str, f: BinaryIO, csv_profile: CsvProfile | None,
    protect: _Protect,
) -> Ingested:
    statements = lines = 0
    try:
        with conn.transaction():  # a savepoint: a bad file loses its lines, never its raw row
            cursor = conn.cursor()
            # A writer thread sends while this one parses: PostgreSQL inserts one batch as the next is read.
            with cursor.copy(_COPY_LINES, writer=QueuedLibpqWriter(cursor)) as copy:
                chunks = iter(lambda: f.read(RAW_CHUNK), b"")
                for statements, statement in enumerate(iter_statements(fmt, chunks, csv_profile=csv_profile),
                                                       start=1):
                    for row in _rows(raw_id, statements, statement, protect):
                        copy.write_row(row)
                    lines += len(statement.lines)
            if statements == 0:
                raise _Empty
    except StatementError as exc:
        return _failed(conn, raw_id, exc.code, str(exc))
    except _Empty:
        return _failed(conn, raw_id, "parse_failed", "the file holds no statement")
    matched, settled = reconcile(conn, raw_id)
    conn.execute(
        "UPDATE bank_statements_raw SET status = 'parsed', error = NULL, line_count = %s, statement_count = %s,"
        " processed_at = now() WHERE id = %s", [lines, statements, raw_id])
    return Ingested(raw_id=raw_id, outcome="parsed", statements=statements, lines=lines, matched=matched,
                    settled=settled)


class _Empty(Exception):
    pass


def _failed(conn: psycopg.Connection[Any], raw_id: int, outcome: str, error: str) -> Ingested:
    error = error.replace("\x00", "\\x00")
    conn.execute("UPDATE bank_statements_raw SET status = %s, error = %s, processed_at = now() WHERE id = %s",
                 [outcome, error, raw_id])
    return Ingested(raw_id=raw_id, outcome=outcome, error=error)


def _copy_raw(conn: psycopg.Connection[Any], raw_id: int, source: str, name: str, fmt: str, spooled: Fetched,
              keys: Keys | None, data_key: tuple[bytes, str] | None) -> None:
    """The raw row, its bytes streamed from disk as COPY text (hex bytea), sealed when ``keys`` are given: never
    the whole file in memory."""
    head = "\t".join((str(raw_id), _copy_text(source), _copy_text(name), fmt, "\\\\x" + spooled.sha256.hex(),
                      str(spooled.size), "received", "t" if keys is not None else "f"))
    with conn.cursor().copy(
        "COPY bank_statements_raw (id, source, remote_name, format, sha256, size_bytes, status, sealed, raw)"
        " FROM STDIN"
    ) as copy:
        copy.write(head.encode() + b"\t\\\\x")
        with open(spooled.path, "rb") as f:
            chunks: Iterator[bytes] = iter(lambda: f.read(RAW_CHUNK), b"")
            for chunk in seal_chunks(keys, chunks, data_key=data_key) if keys is not None else chunks:
                copy.write(chunk.hex().encode())
        copy.write(b"\n")


def _copy_text(value: str) -> str:
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
            .replace("\x00", ""))


def _clean(value: str | None) -> str | None:
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def _rows(raw_id: int, statement_no: int, statement: Statement, protect: _Protect) -> Iterator[tuple[Any, ...]]:
    ref = statement.number or statement.reference
    dirty = any("\x00" in line.raw for line in statement.lines)
    for line_no, line in enumerate(statement.lines, start=1):
        amount = line.amount
        private: tuple[Any, ...] = (
            line.counterparty_name, line.counterparty_iban, line.counterparty_bic, line.remittance,
            _json.encode(line.details).decode() if line.details else None, line.raw, line.source_line)
        if dirty:
            private = tuple(_clean(v) if isinstance(v, str) else v for v in private)
        sealed = None
        if protect.sealer is not None:
            sealed = protect.sealer.seal(f"{raw_id}/{statement_no}/{line_no}", dict(zip(SEALED_FIELDS, private,
                                                                                         strict=True)))
            private = (None,) * len(SEALED_FIELDS)
        account_hash = (lookup_hash(protect.lookup_key, line.counterparty_iban)
                        if protect.lookup_key is not None and line.counterparty_iban else None)
        row = (
            raw_id, statement_no, line_no, line.account, ref, line.booking_date, line.value_date,
            line.credit_debit, line.reversal, -amount if amount < 0 else amount, line.currency,
            line.transaction_code, line.customer_ref, line.bank_ref, line.end_to_end_id, *private, sealed,
            account_hash,
        )
        yield tuple(_clean(v) if isinstance(v, str) else v for v in row) if dirty else row


def source_of(conn: psycopg.Connection[Any], raw_id: int) -> str | None:
    """The source a stored file came from, or None when there is no such file."""
    row = conn.execute("SELECT source FROM bank_statements_raw WHERE id = %s", [raw_id]).fetchone()
    return None if row is None else str(row[0])


def list_files(conn: psycopg.Connection[Any], source: str | None, limit: int) -> list[dict[str, Any]]:
    """The newest stored files, as rows for ``molamctl statements list`` (the reply encoder writes the dates)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(
            "SELECT r.id, r.source, r.remote_name, r.format, r.status, r.size_bytes, r.statement_count AS statements,"
            " r.line_count AS lines, r.error, r.received_at, (SELECT count(*) FROM bank_statement_lines l"
            "   WHERE l.statement_raw_id = r.id AND l.payout_slice_id IS NOT NULL) AS matched"
            " FROM bank_statements_raw r WHERE %(source)s::text IS NULL OR r.source = %(source)s"
            " ORDER BY r.id DESC LIMIT %(limit)s", {"source": source, "limit": limit}).fetchall()


def show_file(conn: psycopg.Connection[Any], raw_id: int, limit: int = 1000,
              keys: Keys | None = None) -> dict[str, Any] | None:
    """One stored file and its first ``limit`` lines, amounts signed (money out negative); the sealed fields of a
    sealed file opened with ``keys`` (without them, they stay null and ``sealed`` says so)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        found = cursor.execute(
            "SELECT id, source, remote_name, format, status, size_bytes, statement_count AS statements,"
            " line_count, error, received_at, processed_at, encode(sha256, 'hex') AS sha256, sealed,"
            " CASE WHEN sealed THEN coalesce(data_key, '') END AS data_key,"
            " CASE WHEN sealed THEN substring(raw FROM 1 FOR 4096) END AS head"
            " FROM bank_statements_raw WHERE id = %s", [raw_id]).fetchone()
        if found is None:
            return None
        head, data_key = found.pop("head"), found.pop("data_key")
        found["lines"] = cursor.execute(
            "SELECT statement_no, line_no, account, statement_ref AS statement, value_date, booking_date,"
            " credit_debit, CASE WHEN (credit_debit = 'D') <> reversal THEN -amount ELSE amount END AS amount,"
            " currency, end_to_end_id, customer_ref, bank_ref, counterparty_name, remittance_info AS remittance,"
            " payout_slice_id, sealed_fields FROM bank_statement_lines WHERE statement_raw_id = %s"
            " ORDER BY statement_no, line_no LIMIT %s", [raw_id, limit]).fetchall()
    sealer = None
    if keys is not None and head:
        sealer = FieldSealer(keys.open_key(data_key or wrapped_key(bytes(head))))
    for line in found["lines"]:
        sealed = line.pop("sealed_fields")
        if sealed is not None and sealer is not None:
            fields = sealer.open(f"{raw_id}/{line['statement_no']}/{line['line_no']}", bytes(sealed))
            line["counterparty_name"], line["remittance"] = fields["counterparty_name"], fields["remittance_info"]
    return found


def rewrap_stored(conn: psycopg.Connection[Any], keys: Keys, limit: int = 10_000) -> dict[str, int]:
    """Rewrap the data keys of sealed files under the wrapping key's latest version (after a transit rotation), the
    files' bytes untouched; up to ``limit`` files a call. A key version already retired is KeyUnavailable."""
    rows = conn.execute(
        "SELECT id, data_key, substring(raw FROM 1 FOR 4096) FROM bank_statements_raw WHERE sealed ORDER BY id"
        " LIMIT %s", [limit]).fetchall()
    moved = 0
    for raw_id, data_key, head in rows:
        current = data_key or wrapped_key(bytes(head))
        fresh = keys.rewrap(current)
        # Transit answers a new ciphertext every time: only a newer key version ("vault:vN") is a change.
        if fresh.split(":")[:2] != current.split(":")[:2]:
            conn.execute("UPDATE bank_statements_raw SET data_key = %s WHERE id = %s", [fresh, raw_id])
            moved += 1
    return {"sealed": len(rows), "rewrapped": moved}


class SourceLock(SessionLock):
    """A session advisory lock per statement source: one host polls a source."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], source: str) -> None:
        super().__init__(connect)
        self._key = f"molamd.statement-source:{source}"

    def take(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [self._key]).fetchone()
        return bool(row and row[0])


class SealingUnavailable(DatabaseError):
    """The raw file could not be sealed (transit away or refusing): nothing was stored; the file stays with the
    bank and the next poll takes it again."""

    retryable = True


class StatementStore:
    """The trio face of the above: each call is one worker-thread hop through the Database service."""

    def __init__(self, database: Database, connect: Callable[[], psycopg.Connection[Any]],
                 keys: Keys | None = None, lookup_key: bytes | None = None) -> None:
        self.db = database
        self._connect = connect
        self.keys = keys  # raw files and their lines' private fields are sealed with these ([encryption])
        self.lookup_key = lookup_key
        self._locks: dict[str, SourceLock] = {}

    async def hold_lock(self, source: str) -> bool:
        """True while this process is the one polling ``source`` (PostgreSQL advisory lock)."""
        lock = self._locks.setdefault(source, SourceLock(self._connect, source))
        try:
            return await trio.to_thread.run_sync(lock.hold)
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"statement source lock: {exc}") from exc

    async def release_lock(self, source: str) -> None:
        lock = self._locks.pop(source, None)
        if lock is not None:
            await trio.to_thread.run_sync(lock.release)

    async def ingest(self, *, source: str, remote_name: str, fmt: str, spooled: Fetched,
                     csv_profile: CsvProfile | None, bank_profile: str | None = None) -> Ingested:
        def work(conn: psycopg.Connection[Any]) -> Ingested:
            return ingest(conn, source=source, remote_name=remote_name, fmt=fmt, spooled=spooled,
                          csv_profile=csv_profile, bank_profile=bank_profile, keys=self.keys,
                          lookup_key=self.lookup_key)

        try:
            result: Ingested = await self.db.transaction(work)
        except KeyUnavailable as exc:
            raise SealingUnavailable(f"sealing {remote_name}: {exc}") from exc
        except psycopg.errors.UniqueViolation:
            # The same bytes arrived through another source at the same moment and committed first: this copy
            # is now a duplicate, which the second try finds.
            result = await self.db.transaction(work)
        return result

    async def last_parsed(self, source: str) -> float | None:
        """Unix time the source's latest statement file that parsed was received; None if none did."""
        def work(conn: psycopg.Connection[Any]) -> float | None:
            row = conn.execute("SELECT extract(epoch FROM received_at)::float8 FROM bank_statements_raw"
                               " WHERE source = %s AND status = 'parsed' ORDER BY received_at DESC LIMIT 1",
                               [source]).fetchone()
            return None if row is None else float(row[0])
        found: float | None = await self.db.statement(work)
        return found

    async def settle_proven(self) -> list[int]:
        settled: list[int] = await self.db.transaction(settle_proven)
        return settled

    async def unmatched(self, sources: list[str]) -> int:
        count: int = await self.db.statement(lambda conn: unmatched_count(conn, sources))
        return count
