"""Payment files in PostgreSQL: closing a file (recorded with its slices in one transaction), uploads, status
reports applied to slices, and what `molamctl files` shows and does.

A file is recorded before it can reach the bank, bytes and all, in the transaction that moves its slices from
``batched`` to ``sent``: from then on each slice is in doubt in its connector's scope until a report or a
statement line resolves it, and every upload (a retry, a crash's resume, an operator's resubmit) sends those
same bytes with the same MsgId. A report is stored as received before anything is made of it; one that names
no file of this connector, or a transaction the file does not hold, or contradicts a final state, is stored and
flagged, never dropped; one that contradicts itself about a transaction (settled and rejected) moves nothing of
that transaction. Reports never move a slice backwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import msgspec

from actors import Build, Recorded, ReportApplied, ReportIn, Submission, Waiting
from connectors import CallRecord, PayoutSlice
from connectors.iso20022 import Effect, Move, PaymentFileError, StatusReport, effect, move

from . import audit as audit_trail
from .audit import Identity
from .db import Database, dict_rows
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
# decimals): nothing left us, so its binding goes back, and it is dead with the reason for a person.
_REFUSE = """
WITH ended AS (
    UPDATE payout_slice_attempts a SET outcome = 'refused', ended_at = now(), error = u.err
    FROM unnest(%s::bigint[], %s::text[]) AS u(id, err)
    WHERE a.payout_slice_id = u.id AND a.outcome IS NULL
    RETURNING a.payout_slice_id, a.bound_before, a.bound_at_before
)
UPDATE payout_slices p SET status = 'dead', last_error = u.err, batched_at = NULL,
    bound_scope = e.bound_before, bound_at = e.bound_at_before
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


# -- status reports ---------------------------------------------------------------------------------------


class _FileSlice(msgspec.Struct, kw_only=True):
    slice_id: int
    pmt_inf_id: str
    instr_id: str
    end_to_end_id: str
    status: str


_FINAL_REASON_FLAGS = frozenset({"DU01", "DU02", "DU03", "DU04", "DU05"})  # duplicate message / block / tx ids


def record_report(conn: Any, r: ReportIn) -> ReportApplied:
    if conn.execute("SELECT 1 FROM payment_status_reports WHERE connector_name = %s AND sha256 = %s",
                    (r.connector, r.sha256)).fetchone():
        return ReportApplied(report_id=None, file_id=None, flag=None, detail="already received")
    report = r.report
    file_id: int | None = None
    flag, detail = None, None
    counts: dict[str, Any] = {"applied": 0, "settled": 0, "failed": 0}
    if report is None or r.problem is not None:
        flag = "malformed" if report is None else ("signature_missing" if r.signature == "unsigned"
                                                   else "signature_invalid")
        detail = r.problem
    else:
        found = conn.execute("SELECT id, version FROM payment_files WHERE connector_name = %s AND msg_id = %s"
                             " FOR UPDATE", (r.connector, report.original_msg_id or "")).fetchone()
        if found is None:
            flag = "unknown_file"
            detail = f"names file {report.original_msg_id!r}, which this connector never sent"
        else:
            file_id = found[0]
            detail = _other_message(report, found[1])
            flag = "wrong_message" if detail else None
            if flag is None:
                flag, detail = _apply(conn, file_id, report, counts)
    row = conn.execute(
        "INSERT INTO payment_status_reports (connector_name, remote_name, sha256, content, msg_id, original_msg_id,"
        " payment_file_id, group_status, signature, flag, detail, applied)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (connector_name, sha256) WHERE reapplied_from IS NULL DO NOTHING RETURNING id",
        (r.connector, r.remote_name, r.sha256, r.content, report.msg_id if report else None,
         report.original_msg_id if report else None, file_id, report.group_status if report else None,
         r.signature, flag, (detail or "")[:4000] or None, counts["applied"])).fetchone()
    if row is None:
        # Another host stored the same bytes meanwhile; what this transaction applied, it applied the same way
        # (reports never move a slice backwards), so nothing is done twice.
        return ReportApplied(report_id=None, file_id=file_id, flag=None, detail="already received")
    return ReportApplied(report_id=row[0], file_id=file_id, flag=flag, detail=detail, **counts)


def _other_message(report: StatusReport, version: str) -> str | None:
    """Why the report is not about the message we sent under its MsgId (a pain.008 status, another version of
    pain.001), or None. ``OrgnlMsgNmId`` may name the message only (``pain.001``) or add a bank's variant
    (``pain.001.001.03.ch.02``); a version it names must be the file's. A report that names none is taken."""
    named = report.original_msg_name
    if named is None:
        return None  # mandatory in the schema, yet some banks leave it out (Cross River): nothing to check
    parts = named.lower().split(".")
    if parts[:2] != ["pain", "001"] or (len(parts) >= 4 and ".".join(parts[:4]) != version):
        return (f"names message {named!r} (OrgnlMsgNmId) for {report.original_msg_id}, which we sent as"
                f" {version}: nothing applied")
    return None


def _apply(conn: Any, file_id: int, report: StatusReport, counts: dict[str, Any]) -> tuple[str | None, str | None]:
    reasons = {reason.code for reason in report.group_reasons if reason.code}
    if report.group_status == "RJCT" and reasons & _FINAL_REASON_FLAGS:
        # The bank refused an upload as a duplicate of one it already has: about that upload, not the payments.
        counts["first_after"], _ = _touch_file(conn, file_id, report, final=False)
        return "duplicate_submission", f"group RJCT {', '.join(sorted(reasons))}: a re-upload refused; nothing applied"
    rows = conn.execute(
        "SELECT f.payout_slice_id, f.pmt_inf_id, f.instr_id, f.end_to_end_id, p.status"
        " FROM payment_file_slices f JOIN payout_slices p ON p.id = f.payout_slice_id"
        " WHERE f.payment_file_id = %s FOR UPDATE OF p", (file_id,)).fetchall()
    slices = [_FileSlice(slice_id=x[0], pmt_inf_id=x[1], instr_id=x[2], end_to_end_id=x[3], status=x[4])
              for x in rows]
    targets, unknown = _targets(report, slices)
    contradicted = _contradicted(targets)
    conflicts = []
    for s, status, reason in targets:
        if s.slice_id in contradicted:
            continue
        new = effect(status)
        conn.execute("UPDATE payment_file_slices SET tx_status = %s, reason = %s"
                     " WHERE payment_file_id = %s AND payout_slice_id = %s", (status, reason or None, file_id,
                                                                              s.slice_id))
        verdict = move(s.status, new)
        if verdict is Move.CONFLICT:
            conflicts.append(f"slice {s.slice_id} is {s.status}, the report says {status}")
        elif verdict is Move.APPLY and new in (Effect.SETTLED, Effect.FAILED):
            to = "settled" if new is Effect.SETTLED else "failed"
            error = None if to == "settled" else f"rejected by the bank ({status}): {reason or 'no reason given'}"
            conn.execute("UPDATE payout_slices SET status = %s, final_at = now(), last_error = %s"
                         " WHERE id = %s AND status = 'sent'", (to, error, s.slice_id))
            s.status = to
            counts["applied"] += 1
            counts[to] += 1
    first, final = _touch_file(conn, file_id, report, final=all(x.status in ("settled", "failed") for x in slices))
    counts["first_after"], counts["final_after"] = first, final
    problems = []
    if contradicted:
        problems.append("contradicts itself, so nothing of it applied to: " + "; ".join(
            f"slice {i} ({', '.join(sorted(said))})" for i, said in sorted(contradicted.items())[:20]))
    if unknown:
        problems.append("names what the file does not hold: " + ", ".join(unknown[:20]))
    if conflicts:
        problems.append("contradicts final states: " + "; ".join(conflicts[:20]))
    if report.unknown_statuses:
        problems.append("status codes not known: " + ", ".join(report.unknown_statuses))
    if not problems:
        return None, None
    flag = ("contradiction" if contradicted else "unknown_transaction" if unknown else
            "conflict" if conflicts else "unknown_status")
    return flag, "; ".join(problems)


Target = tuple[_FileSlice, str | None, str]  # slice, the status reported for it, reason text


def _targets(report: StatusReport, slices: list[_FileSlice]) -> tuple[list[Target], list[str]]:
    """What the report says of each slice of the file (in document order), and what it names that the file
    does not hold."""
    by_e2e = {s.end_to_end_id: s for s in slices}
    by_instr = {s.instr_id: s for s in slices}
    targets: list[Target] = []
    unknown: list[str] = []
    if not report.payments:
        targets = [(s, report.group_status, _reason_text(report.group_reasons)) for s in slices]
    for payment, tx, status, why in report.effective():
        if tx is None:
            block = [s for s in slices if s.pmt_inf_id == payment.original_pmt_inf_id]
            if not block:
                unknown.append(f"block {payment.original_pmt_inf_id!r}")
            targets.extend((s, status, _reason_text(why)) for s in block)
            continue
        hit = by_e2e.get(tx.original_end_to_end_id or "") or by_instr.get(tx.original_instr_id or "")
        if hit is None:
            unknown.append(f"transaction {tx.original_end_to_end_id or tx.original_instr_id!r}")
            continue
        targets.append((hit, status, _reason_text(why)))
    return targets, unknown


def _contradicted(targets: Sequence[Target]) -> dict[int, set[str]]:
    """The slices a report gives both a settling and a failing status (ACSC and RJCT, in any order, at any
    level): which of the two the bank meant is for a person to find out, so neither applies."""
    said: dict[int, set[str]] = {}
    for s, status, _ in targets:
        if effect(status) in (Effect.SETTLED, Effect.FAILED):
            said.setdefault(s.slice_id, set()).add(status or "")
    return {i: codes for i, codes in said.items()
            if {effect(c) for c in codes} >= {Effect.SETTLED, Effect.FAILED}}


def _touch_file(conn: Any, file_id: int, report: StatusReport, *, final: bool) -> tuple[float | None, float | None]:
    """The file's status from this report; seconds since upload if this is its first report, and if its last."""
    group = report.group_status
    status = {"RJCT": "rejected", "PART": "partially_accepted", "ACWC": "partially_accepted"}.get(group or "")
    if status is None and effect(group) is not Effect.NONE:
        status = "accepted"
    if final:
        status = "completed" if status != "rejected" else "rejected"
    before = conn.execute("SELECT first_report_at IS NULL, final_report_at IS NULL,"
                          " extract(epoch FROM now() - coalesce(uploaded_at, created_at)) FROM payment_files"
                          " WHERE id = %s", (file_id,)).fetchone()
    conn.execute(
        "UPDATE payment_files SET group_status = coalesce(%s, group_status),"
        " status = CASE WHEN status = 'completed' THEN status ELSE coalesce(%s, status) END,"
        " first_report_at = coalesce(first_report_at, now()),"
        " final_report_at = CASE WHEN %s THEN coalesce(final_report_at, now()) ELSE final_report_at END"
        " WHERE id = %s", (group, status, final, file_id))
    age = float(before[2])
    return (age if before[0] else None), (age if final and before[1] else None)


def _reason_text(reasons: Sequence[Any]) -> str:
    return "; ".join(" ".join(filter(None, [r.code, *r.info])) for r in reasons)


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
        conn, "SELECT id, remote_name, msg_id, group_status, signature, flag, detail, applied, received_at::text"
        " FROM payment_status_reports WHERE payment_file_id = %s ORDER BY id", (file_id,))
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
            final = "every slice in it is final, " if len(failed) + len(settled) == len(slices) else ""
            raise ResubmitRefused(
                f"payment file {file_id} ({msg}): {final}{len(failed)} failed ({_ids(failed)}): uploaded again, the"
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
