"""Negative controls of the cross-bank "paid twice" check: the scope rule broken on purpose, and the check seen red.

Two sandbox banks, each with its own ledger and idempotency store, are two channels of one bank profile
(``bank-a-api`` the primary, ``bank-a-legacy`` the backup). The primary executes some payments and never answers
(it hangs, half the time after executing), so its slices are in doubt in its scope. Then the primary goes away:

- routing: its breaker is forced open while the slices wait for a retry;
- recovery: the daemon is killed mid-call and comes back with the primary's connector removed from the config.

With the rule kept, the slices wait for their scope and ``assert_no_payment_in_two_ledgers`` (the check
tests/test_channels.py runs after its SIGKILL storm) passes. With the rule broken (tests/scope_rule_off.py: routing
and recovery ignore the bound scope, the SQL guard of a new attempt is removed and the attempts table's scope
trigger turned off), the backup pays them too and the same check fails. With routing alone broken, the SQL guard
must still hold them (defence in depth). The same broken daemon makes
tests/test_file_channel.py's one-bank, two-channel check (its REST API and its file desk) see payments made
through both.

The same for reconciliation's scoping (a statement line of one bank or account settling another's slice) and the
append-only triggers of the audit trail and the raw statement files: the existing tests of those rules are run
with the rule turned off, and must fail.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from molamd import reconciliation
from tests.payout_helpers import (
    Bank,
    assert_no_payment_in_two_ledgers,
    env,
    payout_toml,
    rest_connector,
    seed,
    statuses,
    wait_for,
)
from tests.scope_rule_off import daemon_env, disable_trigger
from tests.test_audit_chain import test_chain_heads_are_never_deleted_or_moved_back as heads_check
from tests.test_audit_chain import test_raw_statement_files_cannot_be_changed_or_deleted as raw_files_check
from tests.test_audit_chain import test_the_trail_refuses_changes_and_deletes as trail_check
from tests.test_audit_chain import (
    test_truncate_is_refused_on_every_audit_table_and_partition_even_ones_made_later as truncate_check,
)
from tests.test_db import test_raw_statements_are_immutable as raw_statements_check
from tests.test_file_channel import file_bank, hsm_key  # noqa: F401 - the fixtures of the file channel's check
from tests.test_file_channel import (
    test_a_payout_in_doubt_on_the_rest_channel_never_goes_into_a_file as rest_and_files_check,
)
from tests.test_statement_ingest import (
    test_a_line_of_one_bank_never_settles_another_banks_slice as reconciliation_scope_check,
)

API, LEGACY = "bank-a-api", "bank-a-legacy"
COUNT = 20


@pytest.fixture
def banks() -> Iterator[tuple[Bank, Bank]]:
    primary, backup = Bank(), Bank()
    yield primary, backup
    primary.close()
    backup.close()


@pytest.fixture(params=["kept", "broken", "routing-only"])
def scope_rule(request: pytest.FixtureRequest, migrated_dsn: str, short_tmp: Path) -> tuple[str, dict[str, str]]:
    """("kept", {}), ("broken", the environment of a daemon that breaks it, the trigger off), or ("routing-only":
    routing ignores the scope, and the SQL guard and the trigger are left to hold the line)."""
    if request.param == "kept":
        return "kept", {}
    if request.param == "routing-only":
        return "routing-only", daemon_env(short_tmp, "break_routing")
    disable_trigger(migrated_dsn)
    return "broken", daemon_env(short_tmp)


def assert_rule_as_said(d: Any, rule: str) -> None:
    """The daemon broke what the scenario says it broke (its start-up says so), and nothing else."""
    logs = d.logs()
    assert ("routing ignores the bound scope" in logs) == (rule != "kept"), rule
    assert ("the scope guard of a new attempt removed" in logs) == (rule == "broken"), rule


def connectors(primary: Bank, backup: Bank, *, primary_timeout: str, with_primary: bool = True) -> str:
    first = rest_connector("primary", primary.url, priority=10, call_timeout=primary_timeout, scope=API)
    return (first if with_primary else "") + rest_connector("backup", backup.url, priority=20, scope=LEGACY)


def keys(dsn: str, ids: list[int]) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {k for (k,) in conn.execute("SELECT idempotency_key FROM payout_slices WHERE id = ANY(%s)",
                                           (ids,)).fetchall()}


def tried_at_the_primary(dsn: str, ids: list[int], outcome: str | None) -> int:
    """How many of ``ids`` have an attempt in the primary's scope with this outcome (None: still open)."""
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(
            "SELECT count(DISTINCT payout_slice_id) FROM payout_slice_attempts WHERE payout_slice_id = ANY(%s)"
            " AND idempotency_scope = %s AND outcome IS NOT DISTINCT FROM %s", (ids, API, outcome)).fetchone()[0])


def touched_since(dsn: str, ids: list[int], since: float) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM payout_slices WHERE id = ANY(%s)"
                                " AND updated_at > to_timestamp(%s)", (ids, since)).fetchone()[0])


def paid_at(bank: Bank, wanted: set[str]) -> set[str]:
    return {p["idempotency_key"] for p in bank.ledger()} & wanted


def held_in_their_scope(dsn: str, primary: Bank, backup: Bank, ids: list[int], since: float) -> None:
    """The rule kept: new work goes to the backup, and every in-doubt slice is looked at again and left waiting."""
    fresh = seed(dsn, 5, prefix="fresh")
    wait_for(lambda: statuses(dsn, fresh).get("settled", 0) == 5, 30, "new work settled by the backup",
             lambda: statuses(dsn, fresh))
    wait_for(lambda: touched_since(dsn, ids, since) == COUNT, 30, "every in-doubt slice claimed again")
    assert paid_at(backup, keys(dsn, ids)) == set(), "an in-doubt slice went to the other channel"
    with psycopg.connect(dsn) as conn:
        waiting = conn.execute("SELECT DISTINCT status, bound_scope FROM payout_slices WHERE id = ANY(%s)",
                               (ids,)).fetchall()
    assert {scope for _, scope in waiting} == {API} and {s for s, _ in waiting} <= {"pending", "retry_scheduled",
                                                                                   "claimed"}, waiting
    assert_no_payment_in_two_ledgers(primary, backup)


def seen_paid_twice(dsn: str, primary: Bank, backup: Bank, ids: list[int]) -> None:
    """The rule broken: the backup pays every slice, the primary had executed some, and the check says so."""
    wanted = keys(dsn, ids)
    wait_for(lambda: paid_at(backup, wanted) == wanted, 60, "the backup paying the primary's slices",
             lambda: len(paid_at(backup, wanted)))
    executed_by_primary = paid_at(primary, wanted)
    assert executed_by_primary, "the primary executed some before it hung (else this control proves nothing)"
    with pytest.raises(AssertionError, match=f"paid by both banks: {len(executed_by_primary)},"):
        assert_no_payment_in_two_ledgers(primary, backup)


def test_slices_in_doubt_when_the_primarys_breaker_opens(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, banks: tuple[Bank, Bank],
    scope_rule: tuple[str, dict[str, str]],
) -> None:
    rule, rule_env = scope_rule
    primary, backup = banks
    primary.faults(hang_rate=1.0)
    config = payout_toml(short_tmp, migrated_dsn, connectors(primary, backup, primary_timeout="500ms"),
                         lease="8s")
    d = daemon_factory(config, env={**env(), **rule_env})
    assert_rule_as_said(d, rule)
    ids = seed(migrated_dsn, COUNT, max_attempts=1000)
    wait_for(lambda: tried_at_the_primary(migrated_dsn, ids, "in_doubt") == COUNT and primary.ledger(), 30,
             "every slice in doubt at the primary")
    since = time.time()
    assert d.ctl_json("force-open", "primary")["breaker"] == "forced_open"
    if rule == "broken":
        seen_paid_twice(migrated_dsn, primary, backup, ids)
        return
    held_in_their_scope(migrated_dsn, primary, backup, ids, since)
    # The primary answers again: its slices are paid there, once each (the executed ones found by their key).
    primary.faults(hang_rate=0.0)
    d.ctl_json("reset-circuit", "primary")
    wait_for(lambda: statuses(migrated_dsn, ids).get("settled", 0) == COUNT, 60, "every slice settled",
             lambda: statuses(migrated_dsn, ids))
    assert paid_at(primary, keys(migrated_dsn, ids)) == keys(migrated_dsn, ids)
    assert_no_payment_in_two_ledgers(primary, backup)
    assert d.stop() == 0


def test_slices_in_flight_when_the_daemon_dies_and_comes_back_without_the_primary(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, banks: tuple[Bank, Bank],
    scope_rule: tuple[str, dict[str, str]], request: pytest.FixtureRequest,
) -> None:
    rule, rule_env = scope_rule
    primary, backup = banks
    primary.faults(hang_rate=1.0)
    config = payout_toml(short_tmp, migrated_dsn, connectors(primary, backup, primary_timeout="30s"))
    d = daemon_factory(config, env={**env(), **rule_env})
    assert_rule_as_said(d, rule)
    ids = seed(migrated_dsn, COUNT, max_attempts=1000)
    wait_for(lambda: tried_at_the_primary(migrated_dsn, ids, None) == COUNT and primary.ledger(), 30,
             "every slice in flight at the primary")
    d.signal(signal.SIGKILL)
    assert d.proc is not None
    d.proc.wait()
    # It comes back with the primary's connector gone from the config (an operator took the channel out).
    since = time.time()
    d.config.write_text(payout_toml(short_tmp, migrated_dsn, connectors(primary, backup, primary_timeout="30s",
                                                                         with_primary=False)))
    d.start()
    if rule == "broken":
        seen_paid_twice(migrated_dsn, primary, backup, ids)
        return
    held_in_their_scope(migrated_dsn, primary, backup, ids, since)
    assert tried_at_the_primary(migrated_dsn, ids, "in_doubt") == COUNT, "the crashed calls closed as in doubt"
    # The channel is put back and answers: each slice is paid there, once.
    primary.faults(hang_rate=0.0)
    d.config.write_text(config)
    assert d.ctl("reload").returncode == 0
    wait_for(lambda: statuses(migrated_dsn, ids).get("settled", 0) == COUNT, 60, "every slice settled",
             lambda: statuses(migrated_dsn, ids))
    assert paid_at(primary, keys(migrated_dsn, ids)) == keys(migrated_dsn, ids)
    assert_no_payment_in_two_ledgers(primary, backup)
    assert d.stop() == 0


def test_negative_control_the_rest_and_file_channel_check_sees_a_payment_made_by_both(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, hsm_key: Any, file_bank: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """test_file_channel's one bank with two channels (its REST API and its file desk, one ledger): with the rule
    broken in the daemon, slices in doubt at the API go into files, and that test's check says so."""
    disable_trigger(migrated_dsn)
    monkeypatch.setenv("PYTHONPATH", daemon_env(short_tmp)["PYTHONPATH"])  # the daemon that test starts inherits it
    with pytest.raises(AssertionError, match="paid through both channels"):
        rest_and_files_check(daemon_factory, short_tmp, migrated_dsn, hsm_key, file_bank)


# -- reconciliation: a line of bank X never settles a slice of bank Y -----------------------------------------------

PROFILE_SCOPE = "ON t.bank_profile_id = stmt.bank_profile_id"
ACCOUNT_SCOPE = """AND (replace(l.account, ' ', '') IN (t.iban, t.account_number)
          OR replace(l.account, ' ', '') LIKE '%%/' || coalesce(t.iban, t.account_number))"""


async def test_the_reconciliation_scope_check_passes_with_the_scoping_on(tmp_path: Path, migrated_dsn: str) -> None:
    await reconciliation_scope_check(tmp_path, migrated_dsn)


@pytest.mark.parametrize(("rule", "scoped", "unscoped"), [
    ("the bank profile", PROFILE_SCOPE, "ON true"),
    ("the treasury account", ACCOUNT_SCOPE, ""),
])
async def test_negative_control_reconciliation_without_its_scoping_settles_another_banks_slice(
    tmp_path: Path, migrated_dsn: str, monkeypatch: pytest.MonkeyPatch, rule: str, scoped: str, unscoped: str,
) -> None:
    """test_statement_ingest's check, with the line matched outside the statement's bank profile (or account)."""
    assert scoped in reconciliation._MATCH, f"reconciliation no longer scopes by {rule} the way this control breaks"
    monkeypatch.setattr(reconciliation, "_MATCH", reconciliation._MATCH.replace(scoped, unscoped))
    with pytest.raises((AssertionError, ExceptionGroup)) as failed:  # raised inside the rig's nursery: grouped
        await reconciliation_scope_check(tmp_path, migrated_dsn)
    assert failed.errisinstance(AssertionError) or failed.group_contains(AssertionError, depth=None)
    with psycopg.connect(migrated_dsn) as conn:
        settled = conn.execute("SELECT t.bank_profile_id, t.account_number FROM payout_slices s JOIN treasury_accounts"
                               " t ON t.id = s.treasury_account_id WHERE s.status = 'settled'").fetchall()
    assert settled and ("bank-a", "ACC-1") not in settled, f"another bank's or account's slice settled: {settled}"


# -- append-only tables: a trigger off, and the check that it refuses changes fails -------------------------------

def payment_evidence_check(dsn: str) -> None:
    """A pain.001 file's bytes and a status report, as recorded, are never changed or deleted (a file's status may
    move)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO bank_profiles (id, name, country) VALUES ('bank-a', 'Bank A', 'SN')"
                     " ON CONFLICT DO NOTHING")
        file_id = conn.execute(
            "INSERT INTO payment_files (connector_name, bank_profile_id, msg_id, version, file_name, content, sha256,"
            " transactions, control_sum, execution_date) VALUES ('files', 'bank-a', 'MOLAM-NC-1', 'pain.001.001.09',"
            " 'MOLAM-NC-1.xml', '<x/>', sha256('<x/>'), 1, 1, current_date) RETURNING id").fetchone()[0]
        report_id = conn.execute(
            "INSERT INTO payment_status_reports (connector_name, remote_name, sha256, content, signature)"
            " VALUES ('files', 'r.xml', sha256('<r/>'), '<r/>', 'unsigned') RETURNING id").fetchone()[0]
        conn.execute("UPDATE payment_files SET status = 'uploaded', uploaded_at = now() WHERE id = %s", (file_id,))
    for sql, row in (("UPDATE payment_files SET content = 'y' WHERE id = %s", file_id),
                     ("DELETE FROM payment_files WHERE id = %s", file_id),
                     ("UPDATE payment_status_reports SET flag = 'conflict' WHERE id = %s", report_id),
                     ("DELETE FROM payment_status_reports WHERE id = %s", report_id)):
        with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.IntegrityConstraintViolation):
            conn.execute(sql, (row,))


def test_payment_files_and_reports_are_kept_as_recorded(migrated_dsn: str) -> None:
    payment_evidence_check(migrated_dsn)


APPEND_ONLY = [  # (the existing check, the table, the trigger that makes it pass)
    (trail_check, "molamd_audit", "molamd_audit_append_only"),
    (trail_check, "bank_connector_logs", "bank_connector_logs_append_only"),
    (raw_files_check, "bank_statements_raw", "bank_statements_raw_immutable"),
    (raw_statements_check, "bank_statements_raw", "bank_statements_raw_immutable"),
    (truncate_check, "molamd_audit_default", "molamd_no_truncate"),
    (heads_check, "molamd_audit_chain", "molamd_audit_chain_guard"),
    (payment_evidence_check, "payment_files", "payment_files_immutable"),
    (payment_evidence_check, "payment_status_reports", "payment_status_reports_immutable"),
]
# Refusing triggers whose negative control is elsewhere, and why.
CONTROLLED_ELSEWHERE = {
    "payout_slice_attempts_guard_scope": "the cross-bank scenarios above turn it off with the scope rule",
    "payout_slices_guard_status": "a transition guard, not an append-only rule (tests/test_db.py checks its list)",
}


def test_every_trigger_that_refuses_a_change_has_its_negative_control(migrated_dsn: str) -> None:
    """A new append-only table gets a control here: its trigger is listed in APPEND_ONLY (or says where else)."""
    with psycopg.connect(migrated_dsn) as conn:
        refusing = {name for (name,) in conn.execute(
            "SELECT DISTINCT t.tgname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
            " WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND p.prosrc ILIKE '%%RAISE EXCEPTION%%'")}
    controlled = {trigger for _, _, trigger in APPEND_ONLY} | set(CONTROLLED_ELSEWHERE)
    assert refusing - controlled == set(), "triggers with no negative control"
    assert controlled - refusing == set(), "controls of triggers that no longer exist"


@pytest.mark.parametrize(("check", "table", "trigger"), APPEND_ONLY,
                         ids=[f"{c.__name__}-{t}-{g}" for c, t, g in APPEND_ONLY])
def test_negative_control_an_append_only_trigger_turned_off_fails_its_check(
    migrated_dsn: str, check: Any, table: str, trigger: str,
) -> None:
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")  # on a partitioned table: every partition
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        check(migrated_dsn)
