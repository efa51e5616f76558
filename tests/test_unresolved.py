"""The ``unresolved`` status in PostgreSQL (migration 0010) and an operator's resolve (molamd/payout_resolve.py).

Unresolved: a slice whose bank could not say whether it executed it; it may have been paid. The database holds
the rule whoever writes (bound to a scope, with a reason, out of it only to a final state); a statement line
that carries the payment settles it; a person's word is checked against what the bank said.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from connectors import PaymentState, PaymentStatus
from molamd import payment_files, payout_resolve, payouts, reconciliation
from molamd.audit import Identity

ALICE = Identity(uid=1000, user="alice", pid=42, via="molamctl")


def _pending(conn: Any, suffix: str) -> int:
    conn.execute("INSERT INTO bank_profiles (id, name, country) VALUES ('b1', 'Bank', 'SN') ON CONFLICT DO NOTHING")
    account = conn.execute(
        "INSERT INTO treasury_accounts (bank_profile_id, label, account_number, currency)"
        " VALUES ('b1', 'main', 'ACC-1', 'XOF') ON CONFLICT (bank_profile_id, label) DO UPDATE SET currency = 'XOF'"
        " RETURNING id").fetchone()[0]
    return int(conn.execute(
        "INSERT INTO payout_slices (payout_id, treasury_account_id, amount, currency, rail, beneficiary_name,"
        " beneficiary_account) VALUES (%s, %s, 15000, 'XOF', 'ach', 'Awa', 'SN08') RETURNING id",
        (f"p-{suffix}", account)).fetchone()[0])


def _unresolved(conn: Any, *, key_suffix: str = "1") -> int:
    sid = _pending(conn, key_suffix)
    conn.execute("UPDATE payout_slices SET status = 'claimed', claimed_by = 'h', lease_until = now() + '1m'"
                 " WHERE id = %s", (sid,))
    conn.execute("UPDATE payout_slices SET status = 'sending', bound_scope = 'bank-a-api', bound_at = now(),"
                 " connector_name = 'primary', attempts = 3 WHERE id = %s", (sid,))
    conn.execute("UPDATE payout_slices SET status = 'unresolved', last_error = 'unresolved: may have been paid',"
                 " claimed_by = NULL, lease_until = NULL WHERE id = %s", (sid,))
    return int(sid)


def test_unresolved_is_bound_says_why_and_leaves_only_to_a_final_state(migrated_dsn: str) -> None:
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        sid = _unresolved(conn)
        with pytest.raises(psycopg.errors.CheckViolation, match="unresolved_check"):
            conn.execute("UPDATE payout_slices SET bound_scope = NULL, bound_at = NULL WHERE id = %s", (sid,))
        with pytest.raises(psycopg.errors.CheckViolation, match="unresolved -> pending is not allowed"):
            conn.execute("UPDATE payout_slices SET status = 'pending' WHERE id = %s", (sid,))
        with pytest.raises(psycopg.errors.CheckViolation, match="unresolved -> dead is not allowed"):
            conn.execute("UPDATE payout_slices SET status = 'dead' WHERE id = %s", (sid,))
        in_doubt = conn.execute("SELECT status FROM payout_slices_in_doubt WHERE id = %s", (sid,)).fetchall()
        assert in_doubt == [("unresolved",)], "an unresolved slice is in doubt"
        assert ("unresolved", "XOF", 1) in payouts.status_counts(conn)


def test_a_statement_line_carrying_it_settles_an_unresolved_slice(migrated_dsn: str) -> None:
    with psycopg.connect(migrated_dsn) as conn:
        sid = _unresolved(conn)
        raw = conn.execute(
            "INSERT INTO bank_statements_raw (source, remote_name, format, sha256, size_bytes, raw, bank_profile_id)"
            " VALUES ('s', 'day.csv', 'csv', sha256('x'), 1, 'x', 'b1') RETURNING id").fetchone()[0]
        conn.execute(
            "INSERT INTO bank_statement_lines (statement_raw_id, statement_no, line_no, account, value_date,"
            " credit_debit, amount, currency, bank_ref, end_to_end_id, payout_slice_id, matched_at)"
            " VALUES (%s, 1, 1, 'ACC-1', '2026-12-08', 'D', 15000, 'XOF', 'pay_9', %s, %s, now())",
            (raw, f"molam-slice-{sid}", sid))
        assert reconciliation.settle_proven(conn) == [sid]
        status, ref = conn.execute("SELECT status, provider_ref FROM payout_slices WHERE id = %s", (sid,)).fetchone()
        was = conn.execute("SELECT from_status FROM molamd_audit WHERE payout_slice_id = %s"
                           " AND action = 'statement_settle'", (sid,)).fetchone()[0]
    assert (status, ref, was) == ("settled", "pay_9", "unresolved")


def test_resolve_is_checked_against_the_bank_and_audited(migrated_dsn: str) -> None:
    executed = payout_resolve.BankCheck.from_status(
        "primary", PaymentStatus(state=PaymentState.SETTLED, provider_ref="pay_7"))
    rejected = payout_resolve.BankCheck.from_status(
        "primary", PaymentStatus(state=PaymentState.REJECTED, provider_ref="pay_8", reason_code="AC04"))
    not_found = payout_resolve.BankCheck.from_status("primary", PaymentStatus(state=PaymentState.NOT_FOUND))
    away = payout_resolve.BankCheck.not_asked("primary: timeout: no answer")
    with psycopg.connect(migrated_dsn) as conn:
        a, b, c = (_unresolved(conn, key_suffix=str(n)) for n in (1, 2, 3))
        with pytest.raises(payout_resolve.BankDisagrees, match="says not paid but primary answered settled"):
            payout_resolve.resolve(conn, "h", a, ALICE, False, "phone", executed)
        with pytest.raises(payout_resolve.BankDisagrees, match="answered rejected"):
            payout_resolve.resolve(conn, "h", a, ALICE, True, "portal", rejected)
        with pytest.raises(payout_resolve.BankDisagrees, match="answered not_found"):
            payout_resolve.resolve(conn, "h", a, ALICE, True, "portal", not_found)
        assert payout_resolve.resolve(conn, "h", a, ALICE, True, "portal: executed", executed)["status"] == "settled"
        assert payout_resolve.resolve(conn, "h", b, ALICE, False, "ops ticket 5531", not_found)["status"] == "failed"
        done = payout_resolve.resolve(conn, "h", c, ALICE, False, "ops by phone", away)
        assert done == {"id": c, "status": "failed", "scope": "bank-a-api", "bank": away.detail, "bank_asked": False}
        with pytest.raises(payouts.SliceFinal):
            payout_resolve.unresolved(conn, a)
        rows = conn.execute(
            "SELECT payout_slice_id, to_status, user_name, uid, target, detail FROM molamd_audit"
            " WHERE action = 'payout_resolve' ORDER BY id").fetchall()
        refs = dict(conn.execute("SELECT id, provider_ref FROM payout_slices WHERE id = ANY(%s)",
                                 ([a, b, c],)).fetchall())
        with pytest.raises(payouts.SliceUnresolved):
            payouts.release(conn, "h", _unresolved(conn, key_suffix="4"), ALICE, "x")
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        (a, "settled", "alice", 1000, "bank-a-api"), (b, "failed", "alice", 1000, "bank-a-api"),
        (c, "failed", "alice", 1000, "bank-a-api")]
    assert "could not be asked" in rows[2][5] and "ops by phone" in rows[2][5]
    assert refs[a] == "pay_7", "the bank's payment id is kept"


def _batched(conn: Any, suffix: str, bound_before: str | None) -> int:
    sid = _pending(conn, f"batched-{suffix}")
    conn.execute("UPDATE payout_slices SET status = 'claimed', claimed_by = 'h', lease_until = now() + '1m',"
                 " bound_scope = %s, bound_at = CASE WHEN %s::text IS NULL THEN NULL ELSE now() END"
                 " WHERE id = %s", (bound_before, bound_before, sid))
    conn.execute("INSERT INTO payout_slice_attempts (payout_slice_id, attempt_no, host_id, connector_name,"
                 " idempotency_scope, bound_before, bound_at_before) VALUES (%s, 2, 'h', 'files', 'bank-a-api', %s,"
                 " CASE WHEN %s::text IS NULL THEN NULL ELSE now() END)", (sid, bound_before, bound_before))
    conn.execute("UPDATE payout_slices SET status = 'sending', bound_scope = 'bank-a-api', bound_at = now(),"
                 " connector_name = 'files' WHERE id = %s", (sid,))
    conn.execute("UPDATE payout_slices SET status = 'batched', batched_at = now(), claimed_by = NULL,"
                 " lease_until = NULL WHERE id = %s", (sid,))
    return sid


def test_a_slice_no_file_can_carry_is_dead_only_if_no_earlier_attempt_may_have_reached_the_bank(
    migrated_dsn: str
) -> None:
    from actors import Waiting
    from connectors.iso20022 import PaymentFileError

    with psycopg.connect(migrated_dsn) as conn:
        clean = _batched(conn, "a", None)  # only the file channel ever had it, and it never left us
        doubt = _batched(conn, "b", "bank-a-api")  # an earlier attempt in this scope may have reached the bank

        def refuse(file_id: int, slices: Any, now: Any) -> Any:
            raise PaymentFileError([f"slice {s.id}: creditor name has no reading" for s in slices],
                                   frozenset(s.id for s in slices))

        recorded = payment_files.record_file(conn, "files", "pain.001.001.09",
                                             Waiting(debtor_account="ACC-1", currency="XOF", count=2,
                                                     oldest_seconds=0.0), 10, refuse)
        now = dict(conn.execute("SELECT id, status FROM payout_slices WHERE id = ANY(%s)",
                                ([clean, doubt],)).fetchall())
    assert recorded.file is None and set(recorded.refused) == {clean, doubt}
    assert now == {clean: "dead", doubt: "unresolved"}


def test_molamctl_resolve_needs_exactly_one_of_paid_and_not_paid(capsys: pytest.CaptureFixture[str]) -> None:
    from molamd import ctl_parser

    _, cmd, args = ctl_parser.parse(["payouts", "resolve", "7", "--not-paid", "--reason", "ticket 5531"])
    assert (cmd.wire, args) == ("payouts-resolve", {"id": 7, "not_paid": True, "reason": "ticket 5531"})
    for argv in (["payouts", "resolve", "7", "--reason", "x"], ["payouts", "resolve", "7", "--paid", "--not-paid"]):
        with pytest.raises(SystemExit) as exited:
            ctl_parser.parse(argv)
        assert exited.value.code == 2
    assert "give --paid or --not-paid" in capsys.readouterr().err
