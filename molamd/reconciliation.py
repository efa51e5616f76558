"""Reconciliation: which payout slice a statement line proves paid, and settling what it proves (design §6).

A line matches a slice only inside the bank profile of the statement's source and the slice's own treasury
account (the statement's account, by IBAN or account number), money out, amount and currency equal, and either

- the end-to-end reference we sent (the slice's idempotency key) in the line's end-to-end field or echoed as the
  customer reference, or
- the bank's payment id (the slice's provider reference, which only a connector of that bank profile can have
  written, since routing never leaves the profile).

A line of bank B never settles bank A's slice, whatever their payment ids. A slice is linked once. A linked slice
whose outcome was still open (sent, waiting for a retry, given up on as dead, all possibly in doubt) is settled,
with the line as its proof in the audit trail; a slice the bank rejected is linked but left for a person.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from . import audit

_MATCH = """
WITH stmt AS (
    SELECT bank_profile_id FROM bank_statements_raw WHERE id = %(raw)s
), candidates AS (
    SELECT DISTINCT ON (l.id) l.id AS line_id, s.id AS slice_id
    FROM bank_statement_lines l
    CROSS JOIN stmt
    JOIN treasury_accounts t
      ON t.bank_profile_id = stmt.bank_profile_id
     AND (replace(l.account, ' ', '') IN (t.iban, t.account_number)
          OR replace(l.account, ' ', '') LIKE '%%/' || coalesce(t.iban, t.account_number))
    JOIN payout_slices s
      ON s.treasury_account_id = t.id
     AND (s.idempotency_key = l.end_to_end_id OR s.idempotency_key = l.customer_ref OR s.provider_ref = l.bank_ref)
    WHERE l.statement_raw_id = %(raw)s AND l.payout_slice_id IS NULL
      AND l.credit_debit = 'D' AND NOT l.reversal AND l.amount = s.amount AND l.currency = s.currency
      AND NOT EXISTS (SELECT 1 FROM bank_statement_lines x WHERE x.payout_slice_id = s.id)
    ORDER BY l.id, (s.idempotency_key IN (l.end_to_end_id, l.customer_ref)) DESC, s.id
), firsts AS (
    SELECT DISTINCT ON (slice_id) line_id, slice_id FROM candidates ORDER BY slice_id, line_id
)
UPDATE bank_statement_lines l SET payout_slice_id = f.slice_id, matched_at = now()
FROM firsts f WHERE l.id = f.line_id
"""
# Run for the lines one file linked (``raw``), and for all lines (``raw`` null) on each poll, which settles a slice
# linked while still in flight that has gone to retry or dead since; a sent one the status follower settles.
_SETTLE = """
WITH open AS (
    SELECT s.id, s.status, l.bank_ref, l.statement_raw_id, l.statement_no, l.line_no, s.bound_scope
    FROM payout_slices s JOIN bank_statement_lines l ON l.payout_slice_id = s.id
    WHERE s.status = ANY(%(statuses)s) AND (%(raw)s::bigint IS NULL OR l.statement_raw_id = %(raw)s)
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE payout_slices p SET status = 'settled', final_at = now(), provider_ref = coalesce(p.provider_ref, open.bank_ref)
FROM open WHERE p.id = open.id
RETURNING p.id, open.status, open.statement_raw_id, open.statement_no, open.line_no, open.bound_scope
"""
# A line is proof the money left: it settles an unresolved slice too (its bank could not say; the statement does).
_OPEN = ["sent", "retry_scheduled", "dead", "unresolved"]
_GIVEN_UP = ["retry_scheduled", "dead", "unresolved"]
ACTOR = audit.Identity(via="statement reconciliation")


def reconcile(conn: psycopg.Connection[Any], raw_id: int) -> tuple[int, int]:
    """Link this file's lines to payout slices, then settle what they prove; returns (linked, settled)."""
    linked = conn.execute(_MATCH, {"raw": raw_id}).rowcount
    return linked, len(settle_proven(conn, raw_id)) if linked else 0


def settle_proven(conn: psycopg.Connection[Any], raw_id: int | None = None) -> list[int]:
    """Settle the open slices that lines of file ``raw_id`` (or, with None, any line) prove paid; their ids.

    Every slice settled from retry or dead gets an audit row naming the line (and the scope it was in doubt in).
    """
    statuses = _OPEN if raw_id is not None else _GIVEN_UP
    settled = conn.execute(_SETTLE, {"statuses": statuses, "raw": raw_id}).fetchall()
    audit.slice_changes(conn, None, ACTOR, [
        audit.SliceChange(slice_id=slice_id, action="statement_settle", from_status=was, to_status="settled",
                          target=scope,
                          detail=f"statement file {raw}, statement {statement_no}, line {line_no}"
                                 + (f"; was in doubt in idempotency scope {scope}" if scope else ""))
        for slice_id, was, raw, statement_no, line_no, scope in settled if was != "sent"])
    return [row[0] for row in settled]


def unmatched_count(conn: psycopg.Connection[Any], sources: Iterable[str]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM bank_statement_lines l JOIN bank_statements_raw r ON r.id = l.statement_raw_id"
        " WHERE l.payout_slice_id IS NULL AND r.source = ANY(%s)", [list(sources)]).fetchone()
    return int(row[0]) if row else 0
