"""`molamctl files resubmit` and `files reapply` in a real PostgreSQL (molamd/payment_files.py): a file whose
slices the bank failed is never uploaded again behind their backs, an operator who puts them back says so (and
the audit trail holds it, in the same transaction), and a stored report can be applied again."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from molamd import payment_files, payment_reports
from molamd.audit import Identity
from tests.file_helpers import CONNECTOR
from tests.test_payment_reports import apply, recorded_file, report, states

OPERATOR = Identity(uid=1000, user="awa", pid=4242, via="molamctl")


def uploaded(dsn: str, file_id: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE payment_files SET status = 'uploaded', uploaded_at = now(), upload_owner = NULL,"
                     " upload_lease = NULL WHERE id = %s", (file_id,))


def resubmit(dsn: str, file_id: int, **kwargs: object) -> dict[str, object]:
    with psycopg.connect(dsn) as conn:
        return payment_files.resubmit(conn, "host-a", OPERATOR, file_id, **kwargs)  # type: ignore[arg-type]


def file_status(dsn: str, file_id: int) -> str:
    with psycopg.connect(dsn) as conn:
        return str(conn.execute("SELECT status FROM payment_files WHERE id = %s", (file_id,)).fetchone()[0])


def test_a_file_the_bank_rejected_is_not_uploaded_again_while_its_slices_read_failed(migrated_dsn: str) -> None:
    file_id, ids = recorded_file(migrated_dsn, 5, "MOLAM-R1")
    uploaded(migrated_dsn, file_id)
    rejected = apply(migrated_dsn, report("MOLAM-R1", "RJCT", group_reason="FF01"))
    assert rejected.failed == 5 and file_status(migrated_dsn, file_id) == "rejected"
    with pytest.raises(payment_files.ResubmitRefused, match="5 failed"):
        resubmit(migrated_dsn, file_id)
    assert file_status(migrated_dsn, file_id) == "rejected", "nothing is queued for upload"
    assert {s for s, _ in states(migrated_dsn, ids).values()} == {"failed"}


def test_one_failed_slice_is_enough_to_refuse_a_plain_resubmit(migrated_dsn: str) -> None:
    file_id, ids = recorded_file(migrated_dsn, 3, "MOLAM-R2")
    uploaded(migrated_dsn, file_id)
    apply(migrated_dsn, report("MOLAM-R2", txs=[(f"molam-slice-{ids[0]}", "RJCT", "AC04")]))
    with pytest.raises(payment_files.ResubmitRefused, match=f"failed.*{ids[0]}"):
        resubmit(migrated_dsn, file_id)
    assert file_status(migrated_dsn, file_id) == "uploaded"


def test_reopen_failed_puts_them_back_in_doubt_audited_and_a_later_report_settles_them(migrated_dsn: str) -> None:
    file_id, ids = recorded_file(migrated_dsn, 3, "MOLAM-R3")
    uploaded(migrated_dsn, file_id)
    apply(migrated_dsn, report("MOLAM-R3", "RJCT", group_reason="FF01"))
    with pytest.raises(payment_files.ResubmitRefused, match="reason"):
        resubmit(migrated_dsn, file_id, reopen_failed=True, reason=" ")
    done = resubmit(migrated_dsn, file_id, reopen_failed=True, reason="bank ops: FF01 was their parser, fixed")
    assert done["status"] == "recorded" and done["reopened"] == ids
    now = states(migrated_dsn, ids)
    assert {s for s, _ in now.values()} == {"sent"}, "in doubt again: the same bytes may pay them"
    with psycopg.connect(migrated_dsn) as conn:
        audit = conn.execute("SELECT payout_slice_id, from_status, to_status, target, detail, user_name"
                             " FROM molamd_audit WHERE action = 'file_reopen' ORDER BY payout_slice_id").fetchall()
        bound = conn.execute("SELECT count(*) FROM payout_slices WHERE id = ANY(%s) AND bound_scope IS NOT NULL",
                             (ids,)).fetchone()[0]
        with pytest.raises(psycopg.errors.CheckViolation):  # and nobody else may take a slice out of failed
            conn.execute("UPDATE payout_slices SET status = 'failed', final_at = now() WHERE id = %s", (ids[0],))
            conn.execute("UPDATE payout_slices SET status = 'sent' WHERE id = %s", (ids[0],))
    assert [(a[0], a[1], a[2], a[3], a[5]) for a in audit] == [(i, "failed", "sent", "MOLAM-R3", "awa") for i in ids]
    assert all("FF01 was their parser" in a[4] for a in audit)
    assert bound == 3
    paid = apply(migrated_dsn, report("MOLAM-R3", txs=[(f"molam-slice-{i}", "ACSC", None) for i in ids]))
    assert (paid.flag, paid.settled) == (None, 3), "the bank's ACSC now settles them (before: only a conflict)"


def test_a_file_with_settled_slices_is_never_reopened_and_a_completed_one_never_resubmitted(
    migrated_dsn: str
) -> None:
    file_id, ids = recorded_file(migrated_dsn, 2, "MOLAM-R4")
    uploaded(migrated_dsn, file_id)
    apply(migrated_dsn, report("MOLAM-R4", txs=[(f"molam-slice-{ids[0]}", "ACSC", None),
                                                (f"molam-slice-{ids[1]}", "RJCT", "AC04")]))
    with pytest.raises(payment_files.ResubmitRefused, match=f"settled.*{ids[0]}"):
        resubmit(migrated_dsn, file_id, reopen_failed=True, reason="try again")
    assert states(migrated_dsn, ids)[ids[1]][0] == "failed"
    other, more = recorded_file(migrated_dsn, 1, "MOLAM-R5")
    apply(migrated_dsn, report("MOLAM-R5", txs=[(f"molam-slice-{more[0]}", "ACSC", None)]))
    with pytest.raises(payment_files.ResubmitRefused, match="completed"):
        resubmit(migrated_dsn, other)
    with pytest.raises(payment_files.FileNotFound):
        resubmit(migrated_dsn, 999999)


def test_a_file_still_waiting_for_its_report_is_resubmitted_as_before(migrated_dsn: str) -> None:
    file_id, _ = recorded_file(migrated_dsn, 2, "MOLAM-R6")
    uploaded(migrated_dsn, file_id)
    assert resubmit(migrated_dsn, file_id)["status"] == "recorded"


def test_molamctl_sends_the_reopen_and_its_reason() -> None:
    from molamd.ctl_parser import parse

    _, cmd, args = parse(["files", "resubmit", "7", "--reopen-failed", "--reason", "bank ops: send again"])
    assert (cmd.wire, args) == ("files-resubmit", {"id": 7, "reopen_failed": True, "reason": "bank ops: send again"})
    _, _, plain = parse(["files", "resubmit", "7"])
    assert plain == {"id": 7}


def received_by(dsn: str, connector: str, data: bytes, *, signature: str = "unsigned",
                problem: str | None = None) -> Any:
    import hashlib

    from actors import ReportIn
    from connectors.iso20022 import parse_pain002

    with psycopg.connect(dsn) as conn:
        return payment_files.record_report(conn, ReportIn(
            connector=connector, remote_name="r.xml", content=data, sha256=hashlib.sha256(data).digest(),
            report=None if problem == "malformed" else parse_pain002(data), signature=signature, problem=problem))


def reapply(dsn: str, report_id: int, profile: str | None = "bank-c", signed: frozenset[str] = frozenset()) -> Any:
    with psycopg.connect(dsn) as conn:
        return payment_reports.reapply(conn, OPERATOR, report_id, lambda _: profile, lambda name: name in signed)


def test_a_report_another_channel_took_is_reapplied_to_its_file_and_the_evidence_stays(migrated_dsn: str) -> None:
    """Two file channels on one drop (now refused by check-config): the other one stored the report as
    unknown_file; once the config is fixed, the operator applies it again."""
    _, ids = recorded_file(migrated_dsn, 3, "MOLAM-P1")
    paid = report("MOLAM-P1", txs=[(f"molam-slice-{i}", "ACSC", None) for i in ids])
    taken = received_by(migrated_dsn, "bank-c-other-files", paid)
    assert taken.flag == "unknown_file" and {s for s, _ in states(migrated_dsn, ids).values()} == {"sent"}
    done = reapply(migrated_dsn, taken.report_id)
    assert (done["flag"], done["settled"], done["connector"], done["reapplied_from"]) == (
        None, 3, CONNECTOR, taken.report_id)
    assert {s for s, _ in states(migrated_dsn, ids).values()} == {"settled"}
    with psycopg.connect(migrated_dsn) as conn:
        rows = conn.execute("SELECT id, connector_name, flag, reapplied_from, reapplied_by, applied"
                            " FROM payment_status_reports ORDER BY id").fetchall()
    assert rows == [(taken.report_id, "bank-c-other-files", "unknown_file", None, None, 0),
                    (done["report_id"], CONNECTOR, None, taken.report_id, OPERATOR.label, 3)]
    again = reapply(migrated_dsn, done["report_id"])
    assert (again["applied"], again["reapplied_from"]) == (0, taken.report_id), "applied twice changes nothing"
    assert received_by(migrated_dsn, CONNECTOR, paid).report_id is None, "the bank's copy later: known"


def test_what_is_never_reapplied_by_hand(migrated_dsn: str) -> None:
    _, ids = recorded_file(migrated_dsn, 1, "MOLAM-P2")
    failing = report("MOLAM-P2", txs=[(f"molam-slice-{ids[0]}", "RJCT", "AC04")])
    with pytest.raises(payment_reports.ReportNotFound):
        reapply(migrated_dsn, 999999)
    broken = received_by(migrated_dsn, "x-files", b"<not xml", signature="not_checked", problem="malformed")
    forged = received_by(migrated_dsn, "y-files", failing, signature="invalid", problem="does not verify")
    for stored, flag in ((broken, "malformed"), (forged, "signature_invalid")):
        with pytest.raises(payment_reports.ReapplyRefused, match=flag):
            reapply(migrated_dsn, stored.report_id)
    unsigned = received_by(migrated_dsn, "z-files", failing)
    with pytest.raises(payment_reports.ReapplyRefused, match="signed reports only"):
        reapply(migrated_dsn, unsigned.report_id, signed=frozenset({CONNECTOR}))
    with pytest.raises(payment_reports.ReapplyRefused, match="bank profile 'bank-b'"):
        reapply(migrated_dsn, unsigned.report_id, profile="bank-b")
    with pytest.raises(payment_reports.ReapplyRefused, match="not configured"):
        reapply(migrated_dsn, unsigned.report_id, profile=None)
    assert states(migrated_dsn, ids)[ids[0]][0] == "sent"


def test_molamctl_sends_a_reapply() -> None:
    from molamd.ctl_parser import parse

    _, cmd, args = parse(["files", "reapply", "12"])
    assert (cmd.wire, args) == ("files-reapply", {"id": 12})


def test_files_show_lists_a_reapplication_beside_the_reports(migrated_dsn: str) -> None:
    file_id, ids = recorded_file(migrated_dsn, 1, "MOLAM-P3")
    taken = received_by(migrated_dsn, "bank-c-other-files", report("MOLAM-P3", "ACTC"))
    done = reapply(migrated_dsn, taken.report_id)
    with psycopg.connect(migrated_dsn) as conn:
        shown = payment_files.show_file(conn, file_id)
    assert shown is not None and ids
    assert [(r["id"], r["connector"], r["reapplied_from"], r["reapplied_by"]) for r in shown["reports"]] == [
        (done["report_id"], CONNECTOR, taken.report_id, OPERATOR.label)]
