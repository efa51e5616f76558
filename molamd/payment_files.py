"""Payment files in PostgreSQL: closing a file (recorded with its slices in one transaction), uploads, status
reports applied to slices, and what `molamctl files` shows and does.

A file is recorded before it can reach the bank, bytes and all, in the transaction that moves its slices from
``batched`` to ``sent``: from then on each slice is in doubt in its connector's scope until a report or a
statement line resolves it, and every upload (a retry, a crash's resume, an operator's resubmit) sends those
same bytes with the same MsgId. The status reports that answer the files are applied by
molamd/payment_reports.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from actors import Build, Recorded, ReportApplied, ReportIn, Submission, Waiting
from connectors import CallRecord, PayoutSlice
from connectors.iso20022 import PaymentFileError

from . import audit as audit_trail
from .audit import Identity
from .db import Database, dict_rows
from .payment_reports import record_report
from .payouts import LIVE_OWNERS, OWNER_NAMESPACE, ClaimOwner

_WAITING = """
SELECT coalesce(t.iban, t.account_number), p.currency, count(*), extract(epoch FROM now() - min(p.batched_at))
FROM payout_slices p JOIN treasury_accounts t ON t.id = p.treasury_account_id
WHERE p.status = 'batched' AND p.connector_name = %s
GROUP BY 1, 2 ORDER BY 4 DESC
"""
_TAKE_BATCHED = """
SELECT p.id, p.payout_id, p.idempotency_key, p.amount, p.currency, p.rail, p.beneficiary_name,
       p.beneficiary_account, p.beneficiary_bic, p.remittance_info, coalesce(t.iban, t.account_number),
       t.bank_profile_id
FROM payout_slices p JOIN treasury_accounts t ON t.id = p.treasury_account_id
WHERE p.status = 'batched' AND p.connector_name = %s AND coalesce(t.iban, t.account_number) = %s
  AND p.currency = %s
ORDER BY p.id LIMIT %s
FOR UPDATE OF p SKIP LOCKED
"""
# A slice no file can carry (a name with no reading in the bank's character set, an amount with too many
# decimals): nothing left us, so its binding goes back, and it is dead with the reason for a person; unless an
# earlier attempt may have reached a bank (the binding it goes back to): never dead while in doubt, unresolved.
_REFUSE = """
WITH ended AS (
    UPDATE payout_slice_attempts a SET outcome = 'refused', ended_at = now(), error = u.err
    FROM unnest(%s::bigint[], %s::text[]) AS u(id, err)
    WHERE a.payout_slice_id = u.id AND a.outcome IS NULL
    RETURNING a.payout_slice_id, a.bound_before, a.bound_at_before
)
UPDATE payout_slices p SET status = CASE WHEN e.bound_before IS NULL THEN 'dead' ELSE 'unresolved' END,
    last_error = CASE WHEN e.bound_before IS NULL THEN u.err ELSE 'unresolved: may have been paid (an earlier'
        || ' attempt in scope ' || e.bound_before || ' may have reached the bank); ' || u.err END,
    batched_at = NULL, bound_scope = e.bound_before, bound_at = e.bound_at_before
FROM unnest(%s::bigint[], %s::text[]) AS u(id, err) LEFT JOIN ended e ON e.payout_slice_id = u.id
WHERE p.id = u.id AND p.status = 'batched'
"""
# Recorded already taken for upload by the incarnation that built it (it uploads next, under its lease).
_INSERT_FILE = """
INSERT INTO payment_files (id, connector_name, bank_profile_id, msg_id, version, file_name, content, sha256,
                           signature_name, signature, transactions, control_sum, execution_date,
                           upload_owner, upload_owner_key, upload_lease, upload_attempts)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() + %s * interval '1 second', 1)
"""
_LINK = """
INSERT INTO payment_file_slices (payment_file_id, payout_slice_id, pmt_inf_id, instr_id, end_to_end_id)
SELECT %s, u.id, u.block, u.instr, p.idempotency_key
FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS u(id, block, instr) JOIN payout_slices p ON p.id = u.id
"""
_SENT_IN_FILE = """
UPDATE payout_slices SET status = 'sent', sent_at = now(), payment_file_id = %s, provider_ref = %s || '/S' || id,
    next_attempt_at = NULL, last_error = NULL
WHERE id = ANY(%s) AND status = 'batched'
"""
_END_IN_FILE = """
UPDATE payout_slice_attempts SET outcome = 'in_doubt', ended_at = now(), error = %s
WHERE payout_slice_id = ANY(%s) AND outcome IS NULL
"""


def waiting(conn: Any, connector: str) -> list[Waiting]:
    rows = conn.execute(_WAITING, (connector,)).fetchall()
    return [Waiting(debtor_account=r[0], currency=r[1], count=r[2], oldest_seconds=float(r[3] or 0)) for r in rows]


def _slice(r: Sequence[Any]) -> PayoutSlice:
    return PayoutSlice(id=r[0], payout_id=r[1], idempotency_key=r[2], amount=Decimal(r[3]), currency=r[4],
                       rail=r[5], beneficiary_name=r[6], beneficiary_account=r[7], beneficiary_bic=r[8],
                       remittance_info=r[9], debtor_account=r[10])


def record_file(conn: Any, connector: str, version: str, group: Waiting, limit: int, build: Build,
                owner: tuple[str, int, float] = ("", 0, 0.0)) -> Recorded:
    """``owner``: (host#key, lock key, lease seconds) of the incarnation that will upload the file."""
    rows = conn.execute(_TAKE_BATCHED, (connector, group.debtor_account, group.currency, limit)).fetchall()
    slices = [_slice(r) for r in rows]
    refused: dict[int, str] = {}
    now = conn.execute("SELECT now()").fetchone()[0]
    while slices:
        file_id = conn.execute("SELECT nextval(pg_get_serial_sequence('payment_files', 'id'))").fetchone()[0]
        try:
            prepared = build(file_id, slices, now)
        except PaymentFileError as exc:
            if not exc.slices:
                raise  # the file's own settings are wrong (debtor, ids): no slice is at fault
            for s in slices:
                if s.id in exc.slices:
                    refused[s.id] = "cannot go in a payment file: " + "; ".join(
                        p for p in exc.problems if p.startswith(f"slice {s.id}:"))[:1000]
            slices = [s for s in slices if s.id not in exc.slices]
            continue
        bank_profile = rows[0][11]
        conn.execute(_INSERT_FILE, (
            file_id, connector, bank_profile, prepared.msg_id, version, prepared.file_name, prepared.content,
            prepared.sha256, prepared.signature_name, prepared.signature, prepared.transactions,
            prepared.control_sum, prepared.execution_date, owner[0] or None, owner[1] or None, owner[2]))
        ids = [s.id for s in slices]
        blocks, instrs = [prepared.pmt_inf_ids[i] for i in ids], [prepared.instr_ids[i] for i in ids]
        conn.execute(_LINK, (file_id, ids, blocks, instrs))
        conn.execute(_SENT_IN_FILE, (file_id, prepared.msg_id, ids))
        conn.execute(_END_IN_FILE, (f"in payment file {prepared.msg_id}: in doubt until a report resolves it", ids))
        _refuse(conn, refused)
        return Recorded(file=Submission(
            file_id=file_id, msg_id=prepared.msg_id, file_name=prepared.file_name, content=prepared.content,
            signature_name=prepared.signature_name, signature=prepared.signature,
            transactions=prepared.transactions, upload_attempts=1), refused=refused)
    _refuse(conn, refused)
    return Recorded(file=None, refused=refused)


def _refuse(conn: Any, refused: dict[int, str]) -> None:
    if refused:
        ids, errors = list(refused), list(refused.values())
        conn.execute(_REFUSE, (ids, errors, ids, errors))


# A recorded file is uploaded by one incarnation at a time, under a lease stamped with its lock key; a file whose
# uploader's lock is free (killed mid-upload) is taken at once, not after the lease, as claims are.
_TO_UPLOAD = "WITH " + LIVE_OWNERS + """
UPDATE payment_files SET upload_owner = %(owner)s, upload_owner_key = %(key)s,
    upload_lease = now() + %(lease)s * interval '1 second', upload_attempts = upload_attempts + 1
WHERE EXISTS (SELECT 1 FROM live WHERE live.key = %(key)s)
  AND id IN (SELECT id FROM payment_files WHERE connector_name = %(connector)s AND status = 'recorded'
             AND (upload_lease IS NULL OR upload_lease < now()
                  OR (upload_owner_key <> %(key)s AND upload_owner_key NOT IN (SELECT key FROM live)))
             ORDER BY id FOR UPDATE SKIP LOCKED)
RETURNING id, msg_id, file_name, content, signature_name, signature, transactions, upload_attempts
"""


def to_upload(conn: Any, connector: str, owner: str, key: int, lease: float) -> list[Submission]:
    rows = conn.execute(_TO_UPLOAD, {"owner": owner, "key": key, "lease": lease, "connector": connector,
                                     "namespace": OWNER_NAMESPACE}).fetchall()
    return [Submission(file_id=r[0], msg_id=r[1], file_name=r[2], content=bytes(r[3]), signature_name=r[4],
                       signature=None if r[5] is None else bytes(r[5]), transactions=r[6], upload_attempts=r[7])
            for r in sorted(rows)]


def uploaded(conn: Any, host: str, file_id: int, detail: str, record: CallRecord) -> None:
    conn.execute("UPDATE payment_files SET status = 'uploaded', uploaded_at = now(), upload_owner = NULL,"
                 " upload_lease = NULL, last_error = %s WHERE id = %s AND status = 'recorded'",
                 (detail or None, file_id))
    audit_trail.bank_calls(conn, host, [record])


def upload_failed(conn: Any, host: str, file_id: int, error: str, retry_in: float, record: CallRecord | None) -> None:
    conn.execute("UPDATE payment_files SET upload_owner = NULL, upload_lease = now() + %s * interval '1 second',"
                 " last_error = %s WHERE id = %s AND status = 'recorded'", (retry_in, error[:2000], file_id))
    if record is not None:
        audit_trail.bank_calls(conn, host, [record])


# -- molamctl files ---------------------------------------------------------------------------------------


def list_files(conn: Any, connector: str | None, limit: int) -> list[dict[str, Any]]:
    return dict_rows(
        conn, "SELECT id, connector_name AS connector, msg_id, file_name, status, group_status, transactions,"
        " control_sum::text, execution_date::text, upload_attempts, created_at::text, uploaded_at::text,"
        " first_report_at::text, final_report_at::text, last_error FROM payment_files"
        " WHERE %(c)s::text IS NULL OR connector_name = %(c)s ORDER BY id DESC LIMIT %(n)s",
        {"c": connector, "n": limit})


def show_file(conn: Any, file_id: int) -> dict[str, Any] | None:
    found = dict_rows(
        conn, "SELECT id, connector_name AS connector, bank_profile_id AS bank_profile, msg_id, version, file_name,"
        " encode(sha256, 'hex') AS sha256, octet_length(content) AS size_bytes, signature_name, status,"
        " group_status, transactions, control_sum::text, execution_date::text, upload_attempts,"
        " created_at::text, uploaded_at::text, first_report_at::text, final_report_at::text, last_error"
        " FROM payment_files WHERE id = %s", (file_id,))
    if not found:
        return None
    shown = found[0]
    shown["slices"] = dict_rows(
        conn, "SELECT f.payout_slice_id AS slice_id, f.instr_id, f.end_to_end_id, f.tx_status, f.reason,"
        " p.status, p.amount::text, p.currency FROM payment_file_slices f"
        " JOIN payout_slices p ON p.id = f.payout_slice_id WHERE f.payment_file_id = %s"
        " ORDER BY f.payout_slice_id", (file_id,))
    shown["reports"] = dict_rows(
        conn, "SELECT id, connector_name AS connector, remote_name, msg_id, group_status, signature, flag, detail,"
        " applied, received_at::text, reapplied_from, reapplied_by FROM payment_status_reports"
        " WHERE payment_file_id = %s ORDER BY id", (file_id,))
    return shown


class ResubmitRefused(Exception):
    """The file cannot be sent again as asked (every slice of it final, or failed slices the operator did not
    put back into it)."""


class FileNotFound(ResubmitRefused):
    """No payment file of that id."""


def resubmit(conn: Any, host: str, who: Identity, file_id: int, *, reopen_failed: bool = False,
             reason: str = "") -> dict[str, Any]:
    """Upload the recorded bytes again, same MsgId (a bank that holds the file refuses a duplicate; one that
    rejected it may keep nothing and execute it all).

    The same bytes pay every transaction in them, so a file with a failed slice goes again only when the
    operator says those slices go back into it (``reopen_failed``, with a reason): in this transaction they
    return to 'sent', in doubt in the file's scope until a report resolves them, each with its audit row. A file
    with a settled slice is never reopened (that payment would be made twice), and a file whose slices are all
    settled is never sent again.
    """
    row = conn.execute("SELECT msg_id, status FROM payment_files WHERE id = %s FOR UPDATE", (file_id,)).fetchone()
    if row is None:
        raise FileNotFound(f"no payment file {file_id}")
    msg, was = row
    slices = conn.execute("SELECT p.id, p.status FROM payment_file_slices f JOIN payout_slices p"
                          " ON p.id = f.payout_slice_id WHERE f.payment_file_id = %s ORDER BY p.id"
                          " FOR UPDATE OF p", (file_id,)).fetchall()
    failed = [i for i, status in slices if status == "failed"]
    settled = [i for i, status in slices if status == "settled"]
    if not reopen_failed:
        if failed:
            final = f" is {was}: every slice in it is final," if len(failed) + len(settled) == len(slices) else ":"
            raise ResubmitRefused(
                f"payment file {file_id} ({msg}){final} {len(failed)} failed ({_ids(failed)}): uploaded again, the"
                f" bank may pay them while they read failed; --reopen-failed --reason TEXT puts them back in doubt"
                f" in this file first")
        if len(settled) == len(slices):
            raise ResubmitRefused(f"payment file {file_id} ({msg}) is completed: every slice in it is final")
    elif not reason.strip():
        raise ResubmitRefused("--reopen-failed needs --reason TEXT (it goes into the audit trail)")
    elif settled:
        raise ResubmitRefused(
            f"payment file {file_id} ({msg}) holds settled slices ({_ids(settled)}): the same bytes would pay them"
            f" twice; it is never uploaded again")
    note = f"resubmitted by {who.label} (was {was})"
    if reopen_failed and failed:
        _reopen(conn, host, who, msg, failed, reason)
        note += f", {len(failed)} failed slices reopened: {reason}"
    conn.execute("UPDATE payment_files SET status = 'recorded', upload_lease = NULL, upload_owner = NULL,"
                 " final_report_at = NULL, last_error = %s WHERE id = %s", (note[:2000], file_id))
    return {"id": file_id, "msg_id": msg, "was": was, "status": "recorded", "reopened": failed if reopen_failed
            else []}


def _reopen(conn: Any, host: str, who: Identity, msg: str, ids: list[int], reason: str) -> None:
    """Failed slices back to 'sent' in their file (the one move out of 'failed' the database allows, and only
    in a transaction that declares it), bound to the scope of their last attempt if nothing binds them."""
    conn.execute("SELECT set_config('molamd.reopen_failed', 'on', true)")
    conn.execute(
        "UPDATE payout_slices p SET status = 'sent', final_at = NULL, last_error = %s,"
        " bound_scope = coalesce(p.bound_scope, (SELECT a.idempotency_scope FROM payout_slice_attempts a"
        "   WHERE a.payout_slice_id = p.id ORDER BY a.attempt_no DESC LIMIT 1), p.connector_name),"
        " bound_at = coalesce(p.bound_at, now())"
        " WHERE p.id = ANY(%s) AND p.status = 'failed'",
        (f"reopened into payment file {msg} by {who.label}: {reason}"[:2000], ids))
    conn.execute("SELECT set_config('molamd.reopen_failed', 'off', true)")
    audit_trail.slice_changes(conn, host, who, [audit_trail.SliceChange(
        slice_id=i, action="file_reopen", from_status="failed", to_status="sent", target=msg,
        detail=reason[:2000]) for i in ids])


def _ids(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:10]))
    return shown + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")


Counts = tuple[list[tuple[str, str, int]], list[tuple[str, str, int]], list[tuple[str, int, float]]]


def counts(conn: Any) -> Counts:
    """Files by connector and status, their transactions by connector and latest reported status, and per
    connector the files uploaded with no report yet: how many, and the oldest's seconds since upload."""
    files = conn.execute("SELECT connector_name, status, count(*) FROM payment_files GROUP BY 1, 2").fetchall()
    txs = conn.execute("SELECT f.connector_name, coalesce(s.tx_status, 'none'), count(*) FROM payment_file_slices s"
                       " JOIN payment_files f ON f.id = s.payment_file_id GROUP BY 1, 2").fetchall()
    # Every connector with files gets a row (0 files, age 0 when none waits): a dashboard shows 0, not no data.
    unreported = conn.execute("SELECT connector_name, count(*) FILTER (WHERE status = 'uploaded'),"
                              " extract(epoch FROM now() - min(uploaded_at) FILTER (WHERE status = 'uploaded'))::float8"
                              " FROM payment_files GROUP BY 1").fetchall()
    return files, txs, [(c, int(n), float(age or 0.0)) for c, n, age in unreported]


class FileStore:
    """The FileBatchers' view of the database, one transaction per call."""

    def __init__(self, db: Database, host: str, owner: ClaimOwner) -> None:
        self._db = db
        self.host = host
        self.owner = owner  # this incarnation's lock: uploads are taken under it, like claims

    async def waiting(self, connector: str) -> list[Waiting]:
        return await self._db.statement(lambda c: waiting(c, connector))

    async def record_file(self, connector: str, version: str, group: Waiting, limit: int, build: Build,
                          lease: float) -> Recorded:
        owner = (f"{self.host}#{self.owner.key}", self.owner.key, lease)
        return await self._db.transaction(lambda c: record_file(c, connector, version, group, limit, build, owner))

    async def to_upload(self, connector: str, lease: float) -> list[Submission]:
        def work(c: Any) -> list[Submission]:
            if not self.owner.hold():
                return []
            return to_upload(c, connector, f"{self.host}#{self.owner.key}", self.owner.key, lease)

        return await self._db.transaction(work)

    async def uploaded(self, file_id: int, detail: str, record: CallRecord) -> None:
        await self._db.transaction(lambda c: uploaded(c, self.host, file_id, detail, record))

    async def upload_failed(self, file_id: int, error: str, retry_in: float, record: CallRecord | None) -> None:
        await self._db.transaction(lambda c: upload_failed(c, self.host, file_id, error, retry_in, record))

    async def known_report(self, connector: str, sha256: bytes) -> bool:
        def work(c: Any) -> bool:
            return c.execute("SELECT 1 FROM payment_status_reports WHERE connector_name = %s AND sha256 = %s",
                             (connector, sha256)).fetchone() is not None

        return await self._db.statement(work)

    async def record_report(self, report: ReportIn) -> ReportApplied:
        return await self._db.transaction(lambda c: record_report(c, report))
