"""The audit trail's integrity: month partitions, the hash chain, its verification, export and retention.

``molamd_audit`` and ``bank_connector_logs`` are partitioned by month (UTC). A trigger chains every row to the
one before it in its month (migration 0009): ``prev_hash`` is the previous row's ``row_hash``, ``row_hash`` the
SHA-256 of the row's canonical jsonb text, and ``molamd_audit_chain`` keeps each month's head. So:

- a row changed by hand no longer matches its hash;
- a row removed leaves a gap in ``chain_seq`` and a ``prev_hash`` that points at nothing;
- a row removed from the end leaves the head pointing past the last row;
- a month emptied (TRUNCATE, refused by a trigger since migration 0012, but an owner can turn triggers off) and
  its head deleted (refused too) leaves a month with no head: heads are written with the partitions, for empty
  months too, so every month from the first partition to now has one, and a month without is named.

:func:`verify` finds each of these and names the row. :func:`export` writes one month (both tables, and the raw
statement files received that month with their SHA-256) to a gzip file of JSON lines, with its SHA-256 beside
it, after verifying the month. :func:`retire` detaches the partitions of months past the retention that have
been exported with the head they still have: detached tables stay in the database, nothing is dropped.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .db import Conn

TABLES = ("molamd_audit", "bank_connector_logs")
CANONICAL = "SET LOCAL TimeZone = 'UTC'; SET LOCAL extra_float_digits = 1"  # as the chaining trigger renders rows


class AuditError(Exception):
    """Something the operator asked cannot be done as asked (a bad month, a broken chain to export)."""


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a month's chain, naming the row."""

    table: str
    month: dt.date
    what: str

    def __str__(self) -> str:
        return f"{self.table} {self.month:%Y-%m}: {self.what}"


@dataclass(frozen=True)
class MonthReport:
    table: str
    month: dt.date
    rows: int
    findings: tuple[Finding, ...]


def parse_month(text: str) -> dt.date:
    """``YYYY-MM`` to the first day of that month (AuditError if it is not one)."""
    try:
        return dt.datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise AuditError(f"{text!r} is not a month: give YYYY-MM, e.g. 2026-11") from None


def _next(month: dt.date) -> dt.date:
    return (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


@dataclass(frozen=True)
class Partitions:
    made: tuple[str, ...]  # partitions created now
    missing: tuple[str, ...]  # partitions still missing: this role does not own the tables


def ensure_partitions(conn: Conn, months_ahead: int) -> Partitions:
    """Make the month partitions missing from this month to ``months_ahead`` after, if this role owns the audit
    tables (a leased role does not: it is told what is missing instead, and tries no DDL that it would be
    refused, which the database layer would take for the database refusing the daemon)."""
    missing = [str(r[0]) for r in conn.execute(
        "SELECT format('%%s_%%s', t, to_char(m, 'YYYY_MM')) FROM unnest(%s::text[]) AS t,"
        " generate_series(date_trunc('month', now() AT TIME ZONE 'UTC'),"
        " date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => %s), interval '1 month') AS m"
        " WHERE to_regclass(format('%%s_%%s', t, to_char(m, 'YYYY_MM'))) IS NULL", (list(TABLES), months_ahead)
    ).fetchall()]
    _heads_ahead(conn, months_ahead)
    if not missing:
        return Partitions((), ())
    owner = conn.execute("SELECT bool_and(pg_has_role(relowner, 'MEMBER')) FROM pg_class"
                         " WHERE oid = ANY(%s::regclass[])", (list(TABLES),)).fetchone()
    if not (owner and owner[0]):
        return Partitions((), tuple(missing))
    rows = conn.execute("SELECT molamd_audit_partitions(now()::date, %s)", (months_ahead,)).fetchall()
    return Partitions(tuple(str(r[0]) for r in rows), ())


def _heads_ahead(conn: Conn, months_ahead: int) -> None:
    """The heads of this month and the ``months_ahead`` after it, written before any row (seq 0, the genesis
    hash: what a month's first row would write), so that a month with no rows has its head too; plain DML, so a
    role that owns nothing writes them as well."""
    conn.execute(
        "INSERT INTO molamd_audit_chain (table_name, month, seq, head)"
        " SELECT t, m::date, 0, molamd_audit_genesis(t, m::date) FROM unnest(%s::text[]) AS t,"
        " generate_series(date_trunc('month', now() AT TIME ZONE 'UTC'),"
        " date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => %s), interval '1 month') AS m"
        " ON CONFLICT DO NOTHING", (list(TABLES), months_ahead))


def months(conn: Conn) -> list[tuple[str, dt.date]]:
    """Every (table, month) whose chain is to be verified, oldest first: each head still in the database (not
    retired), and every month from the first partition (attached, or retired with its head) to this one, which
    must have a head even when it has no rows."""
    rows = conn.execute("SELECT table_name, month FROM molamd_audit_chain WHERE retired_at IS NULL").fetchall()
    wanted = {(str(t), m) for t, m in rows}
    first = conn.execute(
        "SELECT least((SELECT min(to_date(right(c.relname, 7), 'YYYY_MM')) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = ANY(%s::regclass[])"
        " AND c.relname ~ '_[0-9]{4}_[0-9]{2}$'),"
        " (SELECT min(month) FROM molamd_audit_chain WHERE retired_at IS NOT NULL)),"
        " date_trunc('month', now() AT TIME ZONE 'UTC')::date", (list(TABLES),)).fetchone()
    retired = {(str(t), m) for t, m in conn.execute(
        "SELECT table_name, month FROM molamd_audit_chain WHERE retired_at IS NOT NULL").fetchall()}
    if first is not None and first[0] is not None:
        month: dt.date = first[0]
        while month <= first[1]:
            wanted.update((t, month) for t in TABLES if (t, month) not in retired)
            month = _next(month)
    return sorted(wanted, key=lambda tm: (tm[1], tm[0]))


def verify_month(conn: Conn, table: str, month: dt.date, *, required: bool = True) -> MonthReport:
    """Recompute one month's chain of one table; every row that breaks it is named. ``required``: the month is
    one that must have a head (from the first partition to now), rows or not."""
    if table not in TABLES:
        raise AuditError(f"{table}: not an audit table ({', '.join(TABLES)})")
    findings: list[Finding] = []
    with conn.transaction():
        conn.execute(CANONICAL)
        rows = conn.execute(
            f"SELECT id, chain_seq, prev_hash, row_hash, molamd_audit_row_hash(to_jsonb(t)) FROM {table} t"
            " WHERE at >= %s AND at < %s ORDER BY chain_seq, id", (month, _next(month))).fetchall()
        head = conn.execute("SELECT seq, head, molamd_audit_genesis(%s, %s) FROM molamd_audit_chain"
                            " WHERE table_name = %s AND month = %s", (table, month, table, month)).fetchone()
    genesis = head[2] if head else None
    expected_prev, expected_seq = genesis, 1
    for row_id, seq, prev, stored, recomputed in rows:
        if seq > expected_seq:
            findings.append(Finding(table, month, f"chain_seq rows {expected_seq}..{seq - 1} missing before id"
                                    f" {row_id}"))
        elif seq < expected_seq:
            findings.append(Finding(table, month, f"id {row_id}: row {seq} twice"))
        elif prev != expected_prev:
            findings.append(Finding(table, month, f"id {row_id} (chain_seq {seq}): prev_hash does not match the row"
                                    " before it: a row was removed or changed before it"))
        if stored != recomputed:
            findings.append(Finding(table, month, f"id {row_id} (chain_seq {seq}): altered (its hash does not match"
                                    " its content)"))
        expected_prev, expected_seq = stored, seq + 1
    if head is None:
        if rows or required:
            findings.append(Finding(table, month, "rows without a chain head" if rows else (
                "no chain head: every month from the first partition has one, written with its partition; its"
                " rows and head were removed")))
    elif head[0] != expected_seq - 1 or (rows and head[1] != expected_prev):
        findings.append(Finding(table, month, f"the chain head is at chain_seq {head[0]} but the last row is"
                                f" {expected_seq - 1}: rows removed from the end"))
    return MonthReport(table, month, len(rows), tuple(findings))


def verify(conn: Conn, month: dt.date | None = None) -> list[MonthReport]:
    """Every chain still in the database, or one month's of both tables."""
    required = months(conn)
    if month is None:
        return [verify_month(conn, table, m) for table, m in required]
    return [verify_month(conn, table, month, required=(table, month) in required) for table in TABLES]


def _rows(conn: Conn, sql: str, params: tuple[Any, ...]) -> Iterator[dict[str, Any]]:
    with conn.cursor(name="molamd_audit_export") as cursor:
        cursor.itersize = 2000
        cursor.execute(sql, params)
        names = [c.name for c in cursor.description or []]
        for row in cursor:
            yield dict(zip(names, row, strict=True))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


@dataclass(frozen=True)
class Exported:
    path: Path
    sha256: str
    rows: dict[str, int]


def export(conn: Conn, month: dt.date, out: Path, who: str) -> Exported:
    """Write one month (both audit tables and that month's raw statement files) to ``out``; refuse a broken chain."""
    broken = [f for report in verify(conn, month) for f in report.findings]
    if broken:
        raise AuditError(f"{month:%Y-%m}: the chain is broken, not exported: " + "; ".join(map(str, broken)))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"molamd-audit-{month:%Y-%m}.jsonl.gz"
    partial = path.with_suffix(".partial")
    counts: dict[str, int] = {}
    digest = hashlib.sha256()
    with conn.transaction():
        conn.execute(CANONICAL)
        heads = {str(t): bytes(h) for t, h in conn.execute(
            "SELECT table_name, head FROM molamd_audit_chain WHERE month = %s", (month,)).fetchall()}
        with partial.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            def write(kind: str, row: dict[str, Any]) -> None:
                line = json.dumps({"kind": kind, **{k: _jsonable(v) for k, v in row.items()}}, sort_keys=True,
                                  ensure_ascii=False).encode() + b"\n"
                gz.write(line)
                counts[kind] = counts.get(kind, 0) + 1

            for table in TABLES:
                counts[table] = 0
                for row in _rows(conn, f"SELECT * FROM {table} WHERE at >= %s AND at < %s ORDER BY chain_seq",
                                 (month, _next(month))):
                    write(table, row)
                if table in heads:
                    write("chain_head", {"table_name": table, "month": month, "head": heads[table],
                                         "rows": counts[table]})
            counts["bank_statements_raw"] = 0
            for row in _rows(conn, "SELECT id, source, remote_name, format, sha256, size_bytes, sealed, data_key,"
                             " received_at, raw FROM bank_statements_raw WHERE received_at >= %s"
                             " AND received_at < %s ORDER BY id", (month, _next(month))):
                row["raw"] = base64.b64encode(bytes(row["raw"])).decode()
                write("bank_statements_raw", row)
        data = partial.read_bytes()
        digest.update(data)
        os.replace(partial, path)
        checksum = digest.hexdigest()
        (out / f"{path.name}.sha256").write_text(f"{checksum}  {path.name}\n")
        for table in TABLES:
            conn.execute("INSERT INTO molamd_audit_exports (table_name, month, rows, head, file_name, sha256,"
                         " exported_by) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                         (table, month, counts[table], heads.get(table), str(path), checksum, who))
    counts.pop("chain_head", None)
    return Exported(path, checksum, counts)


def retire(conn: Conn, retention_months: int, today: dt.date | None = None) -> list[str]:
    """Detach the month partitions older than the retention whose month was exported with its current head;
    the partitions detached. A month not exported is kept attached (and said so by the caller's listing)."""
    today = today or dt.datetime.now(dt.UTC).date()
    first_kept = today.replace(day=1)
    for _ in range(retention_months):
        first_kept = (first_kept - dt.timedelta(days=1)).replace(day=1)
    detached: list[str] = []
    for table in TABLES:
        parts = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = %s::regclass AND c.relname ~ '_[0-9]{4}_[0-9]{2}$' ORDER BY 1", (table,)).fetchall()
        for (name,) in parts:
            month = dt.datetime.strptime(name[-7:], "%Y_%m").date()
            if month >= first_kept:
                continue
            exported = conn.execute(
                "SELECT 1 FROM molamd_audit_exports e LEFT JOIN molamd_audit_chain c"
                " ON c.table_name = e.table_name AND c.month = e.month WHERE e.table_name = %s AND e.month = %s"
                " AND e.head IS NOT DISTINCT FROM c.head", (table, month)).fetchone()
            if exported is None:
                continue
            conn.execute(f'ALTER TABLE {table} DETACH PARTITION "{name}"')
            conn.execute("UPDATE molamd_audit_chain SET retired_at = now() WHERE table_name = %s AND month = %s",
                         (table, month))
            detached.append(name)
    return detached
