"""Payment status reports (pain.002) applied to the slices of recorded files, and re-applied by an operator.

A report is stored as received before anything is made of it. One that names no file of its connector, a
transaction the file does not hold, another message than the one we sent (OrgnlMsgNmId), or a state that
contradicts a final one, is stored and flagged, never dropped; one that contradicts itself about a transaction
(settled and rejected) moves nothing of that transaction. Reports never move a slice backwards.

``molamctl files reapply REPORT`` applies a stored report again (after the config that let another channel take
it is fixed, or its file's slices were reopened): the report is looked up among the files of its bank profile,
and the application is a new row naming the one it repeats, so the evidence stays as received.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

from actors import ReportApplied, ReportIn
from connectors.iso20022 import Effect, Move, StatusReport, StatusReportError, effect, move, parse_pain002

from .audit import Identity


class _FileSlice(msgspec.Struct, kw_only=True):
    slice_id: int
    pmt_inf_id: str
    instr_id: str
    end_to_end_id: str
    status: str


_FINAL_REASON_FLAGS = frozenset({"DU01", "DU02", "DU03", "DU04", "DU05"})  # duplicate message / block / tx ids


def record_report(conn: Any, r: ReportIn) -> ReportApplied:
    """Store a report as received by its connector and apply it to the file of that connector it names."""
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
    row = _store(conn, r.connector, r.remote_name, r.sha256, r.content, report, file_id, r.signature, flag, detail,
                 counts["applied"])
    if row is None:
        # Another host stored the same bytes meanwhile; what this transaction applied, it applied the same way
        # (reports never move a slice backwards), so nothing is done twice.
        return ReportApplied(report_id=None, file_id=file_id, flag=None, detail="already received")
    return ReportApplied(report_id=row[0], file_id=file_id, flag=flag, detail=detail, **counts)


def _store(conn: Any, connector: str, remote_name: str, sha256: bytes, content: bytes, report: StatusReport | None,
           file_id: int | None, signature: str, flag: str | None, detail: str | None, applied: int,
           reapplied: tuple[int, str] | None = None) -> Any:
    """The report's row (None when these bytes were received by this connector already)."""
    return conn.execute(
        "INSERT INTO payment_status_reports (connector_name, remote_name, sha256, content, msg_id, original_msg_id,"
        " payment_file_id, group_status, signature, flag, detail, applied, reapplied_from, reapplied_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (connector_name, sha256) WHERE reapplied_from IS NULL DO NOTHING RETURNING id",
        (connector, remote_name, sha256, content, report.msg_id if report else None,
         report.original_msg_id if report else None, file_id, report.group_status if report else None,
         signature, flag, (detail or "")[:4000] or None, applied, *(reapplied or (None, None)))).fetchone()


class ReapplyRefused(Exception):
    """The stored report cannot be applied by hand (unknown, unreadable, unverified, or naming no file of its
    bank)."""


class ReportNotFound(ReapplyRefused):
    """No stored report of that id."""


_NEVER_BY_HAND: Final = frozenset({"malformed", "signature_invalid", "signature_missing"})


def reapply(conn: Any, who: Identity, report_id: int, profile_of: Callable[[str], str | None],
            signed_only: Callable[[str], bool]) -> dict[str, Any]:
    """Apply stored report ``report_id`` again, to the file it names among those of the bank profile of the
    connector that received it (``profile_of(connector)``, None if not configured), whichever file channel of
    that bank sent it; the application is stored as a
    new row naming the report it repeats. What could not be read, or failed its signature, is never applied by
    hand (the bank sends it again), nor one not verified to a file channel that takes signed reports only
    (``signed_only(connector)``)."""
    row = conn.execute("SELECT coalesce(reapplied_from, id), connector_name, remote_name, content, sha256,"
                       " signature, flag FROM payment_status_reports WHERE id = %s", (report_id,)).fetchone()
    if row is None:
        raise ReportNotFound(f"no stored status report {report_id}")
    original, received_by, remote_name, content, sha256, signature, first_flag = row
    if first_flag in _NEVER_BY_HAND:
        raise ReapplyRefused(f"status report {report_id} was flagged {first_flag} when {received_by} received it:"
                             " only a report that parsed and passed its signature check is applied again")
    bank_profile = profile_of(received_by)
    if bank_profile is None:
        raise ReapplyRefused(f"status report {report_id} came to {received_by}, which is not configured now: its"
                             " bank profile is not known")
    try:
        report = parse_pain002(bytes(content))
    except StatusReportError as exc:
        raise ReapplyRefused(f"status report {report_id} no longer parses: {exc}") from None
    found = conn.execute("SELECT id, version, connector_name FROM payment_files WHERE msg_id = %s"
                         " AND bank_profile_id = %s FOR UPDATE", (report.original_msg_id or "", bank_profile)
                         ).fetchone()
    if found is None:
        raise ReapplyRefused(f"status report {report_id} names file {report.original_msg_id!r}, which no file"
                             f" channel of bank profile {bank_profile!r} sent")
    file_id, version, owner = found
    if signature != "verified" and signed_only(owner):
        raise ReapplyRefused(f"status report {report_id} is {signature} and {owner}, whose file it names, takes"
                             " signed reports only")
    counts: dict[str, Any] = {"applied": 0, "settled": 0, "failed": 0}
    detail = _other_message(report, version)
    flag = "wrong_message" if detail else None
    if flag is None:
        flag, detail = _apply(conn, file_id, report, counts)
    stored = _store(conn, owner, remote_name, bytes(sha256), bytes(content), report, file_id, signature, flag, detail,
                    counts["applied"], reapplied=(original, who.label))
    return {"report_id": stored[0], "reapplied_from": original, "received_by": received_by, "file_id": file_id,
            "connector": owner, "flag": flag, "detail": detail, "applied": counts["applied"],
            "settled": counts["settled"], "failed": counts["failed"]}


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
