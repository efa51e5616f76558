"""The payout queue in PostgreSQL: claims with SKIP LOCKED and leases, attempts and idempotency scopes, results,
the status follower's work, the dead-letter queue. Each function is one transaction's worth of SQL on a sync
psycopg connection; the ``PayoutStore`` runs them through the database service (one thread hop per transaction).

Every write that settles a claimed slice is guarded by ``claimed_by = this incarnation`` (host and lock key):
a process whose lease ran out and whose slice another took over cannot overwrite the newer state. Each
incarnation holds a session advisory lock for its life (``ClaimOwner``); a claim whose owner's lock is free
belongs to a process that is gone and is taken back at once, not after its lease: a killed daemon's work
resumes as soon as it (or another host) is back. A live owner's lock is never free, so its claims wait for
their lease. Every attempt is a row of ``payout_slice_attempts`` written before the bank is called, and binds
the slice to the attempt's idempotency scope; an attempt that provably did not reach the bank puts the
previous binding back (design §6).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import msgspec
import psycopg

from actors import (
    AttemptStart,
    Claimed,
    Outcome,
    OutcomeKind,
    PushedOutcome,
    SentSlice,
    StatusOutcome,
)
from connectors import CallRecord, PayoutSlice

from . import audit as audit_trail
from .audit import Identity
from .db import Database, SessionLock, dict_rows

OWNER_NAMESPACE = 0x6D6F6C61  # "mola": the first key of every incarnation's advisory lock
LIVE_OWNERS = """live AS (  -- the owners alive now: their lock is held (by their session, in this database)
    SELECT l.objid::text::integer AS key FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.classid = %(namespace)s AND l.objsubid = 2 AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
)"""
_CLAIM = "WITH " + LIVE_OWNERS + """, picked AS (
    SELECT s.id, s.status AS previous
    FROM payout_slices s
    WHERE EXISTS (SELECT 1 FROM live WHERE live.key = %(owner)s)  -- our own lock, checked in the same statement
      AND ((s.status = 'pending' AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= now()))
       OR (s.status = 'retry_scheduled' AND s.next_attempt_at <= now())
       OR (s.status IN ('claimed', 'sending') AND s.lease_until < now())
       OR (s.status IN ('claimed', 'sending') AND s.claim_owner <> %(owner)s
           AND s.claim_owner NOT IN (SELECT live.key FROM live)))
    ORDER BY s.priority DESC, s.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE payout_slices p
SET status = 'claimed', claimed_by = %(claimer)s, claim_owner = %(owner)s,
    lease_until = now() + %(lease)s * interval '1 second'
FROM picked, treasury_accounts t
WHERE p.id = picked.id AND t.id = p.treasury_account_id
RETURNING p.id, p.payout_id, p.idempotency_key, p.amount, p.currency, p.rail, p.beneficiary_name,
          p.beneficiary_account, p.beneficiary_bic, p.remittance_info, coalesce(t.iban, t.account_number),
          t.bank_profile_id, t.currency, p.attempts, p.max_attempts, picked.previous, p.connector_name,
          p.provider_ref, p.bound_scope, extract(epoch FROM now() - p.bound_at), p.status_checks
"""
# A call cut short by a crash (or a lost lease) left its attempt open: it may have reached the bank.
_ABANDONED = """
UPDATE payout_slice_attempts SET outcome = 'in_doubt', ended_at = now(),
    error = 'the daemon stopped mid-call (lease expired); outcome unknown'
WHERE payout_slice_id = ANY(%s) AND outcome IS NULL
"""


def claim(conn: Any, claimer: str, owner: int, limit: int, lease: float) -> list[Claimed]:
    """Claim ready slices for incarnation ``claimer`` (lock key ``owner``); then close the attempts a crash left
    open (a statement of its own)."""
    rows = conn.execute(_CLAIM, {"claimer": claimer, "owner": owner, "namespace": OWNER_NAMESPACE, "limit": limit,
                                 "lease": lease}).fetchall()
    recovered = [r[0] for r in rows if r[15] == "sending"]
    if recovered:
        conn.execute(_ABANDONED, (recovered,))
    claimed = []
    for r in rows:
        slice_ = PayoutSlice(
            id=r[0], payout_id=r[1], idempotency_key=r[2], amount=Decimal(r[3]), currency=r[4], rail=r[5],
            beneficiary_name=r[6], beneficiary_account=r[7], beneficiary_bic=r[8], remittance_info=r[9],
            debtor_account=r[10],
        )
        claimed.append(Claimed(
            slice=slice_, bank_profile=r[11], account_currency=r[12], attempts=r[13], max_attempts=r[14],
            recovering=r[15] == "sending", connector_name=r[16], provider_ref=r[17], bound_scope=r[18],
            bound_age=float(r[19] or 0.0), lookups=r[20],
        ))
    return claimed


# One statement, one round trip: lock the slices this host still holds whose binding allows the attempt's scope,
# bind them (sending, one more attempt), and write the attempt rows with the binding as it was before.
_START_ATTEMPTS = """
WITH u AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(connectors)s::text[], %(scopes)s::text[], %(traces)s::text[])
        AS u(id, connector, scope, trace)
), held AS (
    SELECT p.id, p.bound_scope, p.bound_at, u.connector, u.scope, u.trace
    FROM payout_slices p JOIN u ON u.id = p.id
    WHERE p.claimed_by = %(claimer)s AND p.status = 'claimed' AND (p.bound_scope IS NULL OR p.bound_scope = u.scope)
    FOR UPDATE OF p
), bound AS (
    UPDATE payout_slices p SET status = 'sending', attempts = p.attempts + 1, connector_name = h.connector,
        bound_scope = h.scope, bound_at = now(), lease_until = now() + %(lease)s * interval '1 second'
    FROM held h WHERE p.id = h.id
)
INSERT INTO payout_slice_attempts (payout_slice_id, attempt_no, host_id, connector_name, idempotency_scope,
                                   trace_id, bound_before, bound_at_before)
SELECT h.id, coalesce((SELECT max(a.attempt_no) FROM payout_slice_attempts a WHERE a.payout_slice_id = h.id), 0) + 1,
       %(host)s, h.connector, h.scope, h.trace, h.bound_scope, h.bound_at
FROM held h
RETURNING payout_slice_id
"""


def start_attempts(conn: Any, host: str, claimer: str, attempts: Sequence[AttemptStart], lease: float) -> set[int]:
    """Claimed → sending with an attempt row each; the ids this incarnation still held (and could bind)."""
    if not attempts:
        return set()
    rows = conn.execute(_START_ATTEMPTS, {
        "ids": [a.slice_id for a in attempts], "scopes": [a.scope for a in attempts], "host": host,
        "claimer": claimer,
        "connectors": [a.connector for a in attempts], "traces": [a.trace_id for a in attempts], "lease": lease,
    }).fetchall()
    return {r[0] for r in rows}


# How each attempt ended; one that provably did not reach the bank gives the slice its previous binding back.
_END_ATTEMPTS = """
WITH ended AS (
    UPDATE payout_slice_attempts a SET outcome = u.outcome, ended_at = now(), error = u.err
    FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS u(id, outcome, err)
    WHERE a.payout_slice_id = u.id AND a.outcome IS NULL AND a.host_id = %s
    RETURNING a.payout_slice_id, a.outcome, a.bound_before, a.bound_at_before
)
UPDATE payout_slices p SET bound_scope = e.bound_before, bound_at = e.bound_at_before
FROM ended e WHERE p.id = e.payout_slice_id AND e.outcome IN ('refused', 'not_sent')
"""
_UNBIND = """
WITH freed AS (
    UPDATE payout_slices p SET bound_scope = NULL, bound_at = NULL
    FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS u(id, scope, err)
    WHERE p.id = u.id AND p.bound_scope = u.scope AND p.claimed_by = %s
    RETURNING p.id, p.status, u.scope, u.err
)
INSERT INTO molamd_audit (payout_slice_id, action, actor, host_id, from_status, to_status, target, detail)
SELECT id, 'scope_release', 'dispatcher', %s, status, status, scope, err FROM freed
"""


def record(conn: Any, host: str, claimer: str, outcomes: Sequence[Outcome], audit: Sequence[CallRecord]) -> int:
    """Write outcomes and their audit rows in one transaction; returns how many slices changed."""
    changed = 0
    by_kind: dict[OutcomeKind, list[Outcome]] = {}
    for outcome in outcomes:
        by_kind.setdefault(outcome.kind, []).append(outcome)
    ended = [o for o in outcomes if o.attempt is not None]
    if ended:
        conn.execute(_END_ATTEMPTS, ([o.slice_id for o in ended], [o.attempt for o in ended],
                                     [o.error for o in ended], host))
    freed = [o for o in outcomes if o.released_scope is not None]
    if freed:
        conn.execute(_UNBIND, ([o.slice_id for o in freed], [o.released_scope for o in freed],
                               [o.error for o in freed], claimer, host))
    for kind, group in by_kind.items():
        ids = [o.slice_id for o in group]
        refs = [o.provider_ref for o in group]
        errors = [o.error for o in group]
        delays = [o.delay for o in group]
        connectors = [o.connector for o in group]
        sql = _RECORD[kind]
        cur = conn.execute(sql, (ids, refs, errors, delays, connectors, claimer))
        changed += cur.rowcount
    audit_trail.bank_calls(conn, host, audit)
    return changed


_GUARD = " WHERE p.id = u.id AND p.claimed_by = %s AND p.status IN ('claimed', 'sending')"
_UNNEST = (" FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::float8[], %s::text[])"
           " AS u(id, ref, err, delay, connector)")
_RELEASE = (", claimed_by = NULL, claim_owner = NULL, lease_until = NULL,"
            " connector_name = coalesce(u.connector, p.connector_name)")
_RECORD: dict[OutcomeKind, str] = {
    OutcomeKind.SENT: "UPDATE payout_slices p SET status = 'sent', provider_ref = u.ref, sent_at = now(),"
    " last_error = NULL, next_attempt_at = now() + u.delay * interval '1 second'" + _RELEASE + _UNNEST + _GUARD,
    OutcomeKind.SETTLED: "UPDATE payout_slices p SET status = 'settled', provider_ref = u.ref, final_at = now(),"
    " sent_at = coalesce(p.sent_at, now()), last_error = NULL, next_attempt_at = NULL" + _RELEASE + _UNNEST + _GUARD,
    OutcomeKind.FAILED: "UPDATE payout_slices p SET status = 'failed', provider_ref = coalesce(u.ref, p.provider_ref),"
    " final_at = now(), last_error = u.err, next_attempt_at = NULL" + _RELEASE + _UNNEST + _GUARD,
    OutcomeKind.RETRY: "UPDATE payout_slices p SET status = 'retry_scheduled', last_error = u.err,"
    " next_attempt_at = now() + u.delay * interval '1 second'" + _RELEASE + _UNNEST + _GUARD,
    OutcomeKind.DEAD: "UPDATE payout_slices p SET status = 'dead', last_error = u.err, next_attempt_at = NULL"
    + _RELEASE + _UNNEST + _GUARD,
    OutcomeKind.BATCHED: "UPDATE payout_slices p SET status = 'batched', batched_at = now(), last_error = NULL,"
    " next_attempt_at = NULL" + _RELEASE + _UNNEST + _GUARD,
    # In doubt with its attempts used up: asked again later in its scope; a lookup, not an attempt.
    OutcomeKind.LOOKUP: "UPDATE payout_slices p SET status = 'retry_scheduled', last_error = u.err,"
    " status_checks = p.status_checks + 1, next_attempt_at = now() + u.delay * interval '1 second'"
    + _RELEASE + _UNNEST + _GUARD,
    # Its scope could not say by the end of the acceptance window: may have been paid, a person decides.
    # (Always bound by then; the fallback keeps the CHECK from failing a whole flush if it ever is not.)
    OutcomeKind.UNRESOLVED: "UPDATE payout_slices p SET status = 'unresolved', last_error = u.err,"
    " next_attempt_at = NULL, bound_scope = coalesce(p.bound_scope, p.connector_name),"
    " bound_at = coalesce(p.bound_at, now())" + _RELEASE + _UNNEST + _GUARD,
    # Not an attempt (breaker open, every connector busy): back to the queue, the attempt given back.
    OutcomeKind.RELEASE: "UPDATE payout_slices p SET status = 'pending',"
    " next_attempt_at = now() + u.delay * interval '1 second', last_error = coalesce(u.err, p.last_error),"
    " attempts = CASE WHEN p.status = 'sending' THEN greatest(p.attempts - 1, 0) ELSE p.attempts END"
    + _RELEASE + _UNNEST + _GUARD,
}


# -- the status follower ------------------------------------------------------------------------------


# The follower's claim of a sent slice is its next check pushed out by the lease, stamped with the owner: a dead
# owner's checks are taken back at once, as the dispatcher's claims are.
_CLAIM_SENT = "WITH " + LIVE_OWNERS + """
UPDATE payout_slices p SET next_attempt_at = now() + %(lease)s * interval '1 second', claim_owner = %(owner)s
WHERE EXISTS (SELECT 1 FROM live WHERE live.key = %(owner)s)
  AND p.id IN (SELECT id FROM payout_slices WHERE status = 'sent' AND payment_file_id IS NULL
      AND (next_attempt_at <= now() OR (claim_owner <> %(owner)s AND claim_owner NOT IN (SELECT key FROM live)))
      ORDER BY next_attempt_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING p.id, p.idempotency_key, p.provider_ref, p.connector_name,
  extract(epoch FROM now() - p.sent_at), p.status_checks, p.flagged_at IS NOT NULL, p.bound_scope
"""


def claim_sent(conn: Any, owner: int, limit: int, lease: float) -> list[SentSlice]:
    rows = conn.execute(_CLAIM_SENT, {"lease": lease, "owner": owner, "limit": limit,
                                      "namespace": OWNER_NAMESPACE}).fetchall()
    return [SentSlice(slice_id=r[0], idempotency_key=r[1], provider_ref=r[2], connector_name=r[3],
                      age_seconds=float(r[4] or 0), checks=r[5], flagged=r[6], scope=r[7]) for r in rows]


def record_status(conn: Any, host: str, outcomes: Sequence[StatusOutcome], audit: Sequence[CallRecord]) -> None:
    for o in outcomes:
        if o.final_status is not None:
            conn.execute(
                "UPDATE payout_slices SET status = %s, final_at = now(), last_error = %s, next_attempt_at = NULL"
                " WHERE id = %s AND status = 'sent'", (o.final_status, o.error, o.slice_id))
        else:
            conn.execute(
                "UPDATE payout_slices SET next_attempt_at = now() + %s * interval '1 second',"
                " status_checks = status_checks + 1, claim_owner = NULL,"
                " flagged_at = CASE WHEN %s THEN coalesce(flagged_at, now()) ELSE flagged_at END,"
                " last_error = CASE WHEN %s THEN %s ELSE last_error END"
                " WHERE id = %s AND status = 'sent'",
                (o.next_check, o.flag, o.flag, o.error, o.slice_id))
    audit_trail.bank_calls(conn, host, audit)


def apply_pushed(conn: Any, outcomes: Sequence[PushedOutcome]) -> set[tuple[str, str]]:
    """Final states the banks pushed; only slices still 'sent' change (polling may have been first).

    Returns the (connector, provider_ref) pairs that matched a slice still 'sent'.
    """
    if not outcomes:
        return set()
    rows = conn.execute(
        "UPDATE payout_slices p SET status = u.status, final_at = now(), last_error = u.err, next_attempt_at = NULL"
        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS u(connector, ref, status, err)"
        " WHERE p.connector_name = u.connector AND p.provider_ref = u.ref AND p.status = 'sent'"
        " RETURNING p.connector_name, p.provider_ref",
        ([o.connector for o in outcomes], [o.provider_ref for o in outcomes], [o.final_status for o in outcomes],
         [o.error for o in outcomes]),
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


# -- the dead-letter queue and counts ----------------------------------------------------------------


class DeadSlice(msgspec.Struct, frozen=True):
    id: int
    payout_id: str
    amount: str
    currency: str
    attempts: int
    connector: str | None
    last_error: str | None
    dead_since: str


def dlq_list(conn: Any, limit: int) -> list[DeadSlice]:
    rows = conn.execute(
        "SELECT id, payout_id, amount::text, currency, attempts, connector_name, last_error, updated_at::text"
        " FROM payout_slices WHERE status = 'dead' ORDER BY updated_at LIMIT %s", (limit,)).fetchall()
    return [DeadSlice(*r) for r in rows]


def dlq_retry(conn: Any, host: str, ids: Sequence[int] | None, who: Identity) -> list[int]:
    """Dead → pending with a fresh attempt budget (the idempotency key and scope binding are kept); audited."""
    where, params = ("status = 'dead'", []) if ids is None else ("status = 'dead' AND id = ANY(%s)", [list(ids)])
    rows = conn.execute(
        "UPDATE payout_slices SET status = 'pending', attempts = 0, next_attempt_at = NULL,"
        " claimed_by = NULL, lease_until = NULL WHERE " + where + " RETURNING id, last_error", params).fetchall()
    audit_trail.slice_changes(conn, host, who, [
        audit_trail.SliceChange(slice_id=r[0], action="dlq_retry", from_status="dead", to_status="pending",
                                detail=r[1]) for r in rows])
    return sorted(r[0] for r in rows)


def dlq_drop(conn: Any, host: str, slice_id: int, who: Identity, reason: str) -> bool:
    """Dead → failed (final): the operator gives up on it; the row and an audit entry stay."""
    row = conn.execute(
        "UPDATE payout_slices SET status = 'failed', final_at = now(),"
        " last_error = 'dropped from the DLQ: ' || %s || coalesce(' (was: ' || last_error || ')', '')"
        " WHERE id = %s AND status = 'dead' RETURNING id", (reason, slice_id)).fetchone()
    if row is None:
        return False
    audit_trail.slice_changes(conn, host, who, [audit_trail.SliceChange(
        slice_id=slice_id, action="dlq_drop", from_status="dead", to_status="failed", detail=reason)])
    return True


class SliceNotFound(LookupError):
    """No payout slice with that id."""


class ReleaseRefused(ValueError):
    """The slice cannot be released now: it is in flight (a subclass says when it never can)."""


class SliceFinal(ReleaseRefused):
    """The slice is final (settled, failed or returned): there is nothing to release, now or later."""


class SliceNotBound(ReleaseRefused):
    """The slice is bound to no idempotency scope: nothing to release."""


class SliceUnresolved(ReleaseRefused):
    """The slice is unresolved (may have been paid): a person resolves it; releasing it would let another
    channel pay it."""


def release(conn: Any, host: str, slice_id: int, who: Identity, reason: str) -> dict[str, Any]:
    """Free a slice from its idempotency scope (an operator's decision, after checking with the bank); audited.

    Refused while the slice is in flight (claimed or sending): its lease must run out first.
    """
    row = conn.execute("SELECT status, bound_scope FROM payout_slices WHERE id = %s FOR UPDATE",
                       (slice_id,)).fetchone()
    if row is None:
        raise SliceNotFound(f"no payout slice {slice_id}")
    status, scope = row
    if status in ("settled", "failed", "returned"):
        raise SliceFinal(f"payout slice {slice_id} is {status}: final, nothing to release")
    if scope is None:
        raise SliceNotBound(f"payout slice {slice_id} is not bound to any idempotency scope: nothing to release")
    if status == "unresolved":
        raise SliceUnresolved(f"payout slice {slice_id} is unresolved (it may have been paid): resolve it with"
                              " `molamctl payouts resolve ID --paid|--not-paid --reason TEXT`")
    if status in ("claimed", "sending"):
        raise ReleaseRefused(f"payout slice {slice_id} is {status} right now; release it once its call ended")
    conn.execute("UPDATE payout_slices SET bound_scope = NULL, bound_at = NULL WHERE id = %s", (slice_id,))
    audit_trail.slice_changes(conn, host, who, [audit_trail.SliceChange(
        slice_id=slice_id, action="payout_release", from_status=status, to_status=status, target=scope,
        detail=reason)])
    return {"id": slice_id, "status": status, "released_scope": scope}


def retry_now(conn: Any, host: str, ids: Sequence[int] | None, who: Identity) -> list[int]:
    """Make waiting slices due now (a retry or a bank's Retry-After set far ahead); the idempotency key and
    scope binding stay. ``ids`` None: every slice scheduled for later. Audited, one row per slice."""
    where = "(status = 'retry_scheduled' OR (status = 'pending' AND next_attempt_at > now()))"
    params: list[Any] = []
    if ids is not None:
        where += " AND id = ANY(%s)"
        params.append(list(ids))
    rows = conn.execute(
        "WITH due AS (SELECT id, status, next_attempt_at FROM payout_slices WHERE " + where + " FOR UPDATE)"
        " UPDATE payout_slices p SET next_attempt_at = now() FROM due WHERE p.id = due.id"
        " RETURNING p.id, due.status, due.next_attempt_at::text", params).fetchall()
    audit_trail.slice_changes(conn, host, who, [
        audit_trail.SliceChange(slice_id=r[0], action="payout_retry", from_status=r[1], to_status=r[1],
                                detail=f"made due now (was due {r[2]})") for r in rows])
    return sorted(r[0] for r in rows)


def show(conn: Any, slice_id: int) -> dict[str, Any]:
    """One slice with its attempts, its bank calls and its audit rows (``molamctl payouts show``)."""
    found = dict_rows(
        conn, "SELECT s.id, s.payout_id, s.status, s.amount::text AS amount, s.currency, s.rail,"
        " t.bank_profile_id AS bank_profile, s.idempotency_key, s.bound_scope, s.bound_at, s.connector_name,"
        " s.provider_ref, s.attempts, s.max_attempts, s.status_checks, s.last_error, s.next_attempt_at, s.created_at,"
        " s.sent_at, s.final_at FROM payout_slices s JOIN treasury_accounts t ON t.id = s.treasury_account_id"
        " WHERE s.id = %s", [slice_id])
    if not found:
        raise SliceNotFound(f"no payout slice {slice_id}")
    shown = found[0]
    shown["attempt_rows"] = dict_rows(
        conn, "SELECT attempt_no, connector_name AS connector, idempotency_scope AS scope, host_id, started_at,"
        " ended_at, outcome, error FROM payout_slice_attempts WHERE payout_slice_id = %s ORDER BY attempt_no",
        [slice_id])
    shown["bank_calls"] = audit_trail.slice_calls(conn, slice_id)
    shown["audit"] = audit_trail.slice_history(conn, slice_id)
    return shown


def in_doubt(conn: Any, limit: int) -> list[dict[str, Any]]:
    """Slices that may be in a bank's hands without a final answer, oldest binding first."""
    return dict_rows(
        conn, "SELECT id, payout_id, status, bound_scope, bound_at, extract(epoch FROM age)::float8 AS age_seconds,"
        " attempts, last_error FROM payout_slices_in_doubt ORDER BY bound_at LIMIT %s", [limit])


ACTIVE_STATUSES = ("pending", "claimed", "sending", "sent", "retry_scheduled", "dead", "unresolved")


def status_counts(conn: Any) -> list[tuple[str, str, int]]:
    """Slices per status and currency for the statuses that drain (final ones only grow: not counted here,
    so the query stays an index-only scan of the live part of the queue however large history gets)."""
    rows = conn.execute("SELECT status, currency, count(*) FROM payout_slices WHERE status = ANY(%s)"
                        " GROUP BY 1, 2", (list(ACTIVE_STATUSES),)).fetchall()
    return [(r[0], r[1], int(r[2])) for r in rows]




def in_doubt_summary(conn: Any) -> tuple[int, float]:
    """How many slices are in doubt, and the oldest one's age in seconds (0 when none)."""
    count, age = conn.execute("SELECT count(*), coalesce(extract(epoch FROM max(age)), 0)::float8"
                              " FROM payout_slices_in_doubt").fetchone()
    return int(count), float(age)


class ClaimOwner(SessionLock):
    """This incarnation's session advisory lock, held for the process's life; while it is not held nothing is
    claimed, since others may take this incarnation's claims back. The key is random; a key some other process
    holds is drawn again."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], rng: random.Random | None = None) -> None:
        super().__init__(connect)
        self._rng = rng or random.SystemRandom()
        self.key = self._rng.randint(1, 2**31 - 1)

    def take(self, conn: psycopg.Connection[Any]) -> bool:
        for _ in range(8):
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", [OWNER_NAMESPACE, self.key]).fetchone()
            if row and row[0]:
                return True
            self.key = self._rng.randint(1, 2**31 - 1)
        return False


class PayoutStore:
    """The dispatcher's and follower's view of the queue, one database transaction per call."""

    def __init__(self, db: Database, host: str, owner: ClaimOwner) -> None:
        self._db = db
        self.host = host
        self.owner = owner

    @property
    def claimer(self) -> str:
        """``claimed_by`` of this incarnation's claims: the host and its lock key."""
        return f"{self.host}#{self.owner.key}"

    async def claim(self, limit: int, lease: float) -> list[Claimed]:
        # Two autocommit statements, not one transaction: closing a crashed call's attempt is idempotent, and
        # the claim (the hot path) saves its BEGIN and COMMIT. No claim without this incarnation's lock.
        def work(c: Any) -> list[Claimed]:
            if not self.owner.hold():
                return []
            return claim(c, self.claimer, self.owner.key, limit, lease)

        return await self._db.statement(work)

    async def start_attempts(self, attempts: Sequence[AttemptStart], lease: float) -> set[int]:
        return await self._db.statement(lambda c: start_attempts(c, self.host, self.claimer, attempts, lease))

    async def record(self, outcomes: Sequence[Outcome], audit: Sequence[CallRecord]) -> int:
        return await self._db.transaction(lambda c: record(c, self.host, self.claimer, outcomes, audit))

    async def audit(self, audit: Sequence[CallRecord]) -> None:
        await self._db.statement(lambda c: audit_trail.bank_calls(c, self.host, audit))

    async def claim_sent(self, limit: int, lease: float) -> list[SentSlice]:
        def work(c: Any) -> list[SentSlice]:
            if not self.owner.hold():
                return []
            return claim_sent(c, self.owner.key, limit, lease)

        return await self._db.statement(work)

    async def record_status(self, outcomes: Sequence[StatusOutcome], audit: Sequence[CallRecord]) -> None:
        await self._db.transaction(lambda c: record_status(c, self.host, outcomes, audit))

    async def apply_pushed(self, outcomes: Sequence[PushedOutcome]) -> set[tuple[str, str]]:
        return await self._db.statement(lambda c: apply_pushed(c, outcomes))
