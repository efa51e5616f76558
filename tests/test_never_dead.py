"""Never dead while in doubt (design §6), end to end: a real daemon, the sandbox bank over real sockets, PostgreSQL.

The bank executes every payment and then never answers (it hangs or resets the connection after executing,
every time). Each slice uses up its attempts in doubt; none may end ``dead``, since the bank has every one of
them. Those whose lookups the bank answers are settled by lookup; those it cannot say anything about end
``unresolved``, and an operator resolves them, checked against the bank when it answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import free_port
from tests.payout_helpers import Bank, assert_paid_once, env, payout_toml, rest_connector, seed, statuses, wait_for

DONE = ("settled", "failed", "dead", "unresolved")


@pytest.fixture
def bank() -> Iterator[Bank]:
    b = Bank()
    yield b
    b.close()


def _config(tmp: Path, dsn: str, bank: Bank, metrics_port: int) -> str:
    connector = rest_connector("primary", bank.url, call_timeout="300ms").replace(
        'idempotency_scope = ""', 'idempotency_scope = ""\nacceptance_window = "3s"')
    return payout_toml(tmp, dsn, connector, metrics_port=metrics_port).replace('retry_max = "200ms"', (
        'retry_max = "200ms"\nlookup_initial = "100ms"\nlookup_max = "500ms"\nlookup_grace = "2s"'))


def _wait_done(d: Any, dsn: str, ids: list[int], timeout: float) -> dict[str, int]:
    wait_for(lambda: sum(statuses(dsn, ids).get(s, 0) for s in DONE) == len(ids), timeout,
             "every slice settled, failed, dead or unresolved",
             lambda: f"{statuses(dsn, ids)}; {_slices(dsn, ids)}\n{d.logs()[-4000:]}")
    return statuses(dsn, ids)


def _slices(dsn: str, ids: list[int]) -> dict[int, tuple[str, str, int, int, str | None]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, status, idempotency_key, attempts, status_checks, last_error FROM payout_slices"
            " WHERE id = ANY(%s)", (ids,)).fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}


def test_a_bank_that_executes_and_never_answers_leaves_no_slice_dead(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, bank: Bank
) -> None:
    port = free_port()
    d = daemon_factory(_config(short_tmp, migrated_dsn, bank, port), env=env())
    # Every send executes and then hangs or is reset; lookups are answered.
    bank.faults(hang_rate=0.5, reset_rate=0.5, after_execute=1.0)
    looked_up = seed(migrated_dsn, 10, max_attempts=3, prefix="answered")
    assert _wait_done(d, migrated_dsn, looked_up, 90) == {"settled": 10}, "settled by lookup, none dead"
    executed = {p["idempotency_key"] for p in bank.ledger()}
    for status, key, attempts, _checks, _ in _slices(migrated_dsn, looked_up).values():
        assert key in executed and 1 <= attempts <= 3, (status, key, attempts)

    # Now the bank cannot say either: every status lookup answers 503.
    bank.faults(lookup_error_rate=1.0)
    started = time.monotonic()
    silent = seed(migrated_dsn, 6, max_attempts=3, prefix="silent")
    assert _wait_done(d, migrated_dsn, silent, 90) == {"unresolved": 6}, "may have been paid: a person decides"
    assert time.monotonic() - started >= 3, "not before the acceptance window has passed"
    executed = {p["idempotency_key"] for p in bank.ledger()}
    looked: list[int] = []
    for slice_id, (_status, key, attempts, checks, error) in _slices(migrated_dsn, silent).items():
        assert key in executed and 1 <= attempts <= 3, (key, attempts, checks)
        assert error is not None and "may have been paid" in error, error
        # Asked and unanswered; or, past the window and the grace while the failed lookups held the breaker
        # open, refused before any call (not counted as a check) or nobody to ask: unresolved either way.
        assert "lookup in scope" in error or "is available to ask" in error, (checks, error)
        if checks:
            looked.append(slice_id)
    assert looked, "the scope was asked about some of them"
    shown = d.ctl_json("payouts", "show", str(looked[0]))
    assert shown["status"] == "unresolved" and shown["status_checks"] >= 1, "the lookups are counted and shown"
    assert {r["id"] for r in d.ctl_json("payouts", "in-doubt")} >= set(silent), "unresolved slices are in doubt"
    wait_for(lambda: "molamd_payout_slices_unresolved 6.0" in _metrics(port), 10, "the unresolved gauge")
    assert_paid_once(migrated_dsn, bank)

    # The operator's word, checked against the bank when it answers.
    released = d.ctl("payouts", "release", str(silent[0]), "--reason", "x")
    assert released.returncode == 1 and "unresolved" in released.stdout + released.stderr, "resolve, not release"
    # The bank cannot be asked: the operator's word stands, and the audit row says so.
    resolved = d.ctl_json("payouts", "resolve", str(silent[0]), "--paid", "--reason", "portal: executed, ref 1")
    assert resolved["status"] == "settled" and resolved["bank_asked"] is False
    bank.faults(lookup_error_rate=0.0)
    assert d.ctl("reset-circuit", "primary").returncode == 0  # lookups failing opened it
    disagree = d.ctl("--json", "payouts", "resolve", str(silent[1]), "--not-paid", "--reason", "phone: not received")
    assert disagree.returncode == 1 and "bank_disagrees" in disagree.stdout + disagree.stderr, disagree
    assert statuses(migrated_dsn, [silent[1]]) == {"unresolved": 1}, "nothing changed"
    paid = d.ctl_json("payouts", "resolve", str(silent[1]), "--paid", "--reason", "the bank says so too")
    assert paid["status"] == "settled" and paid["bank_asked"] is True and "answered settled" in paid["bank"]
    final = d.ctl("payouts", "resolve", str(silent[1]), "--paid", "--reason", "again")
    assert final.returncode == 1 and "final" in final.stdout + final.stderr
    with psycopg.connect(migrated_dsn) as conn:
        audit = conn.execute(
            "SELECT payout_slice_id, from_status, to_status, detail, user_name IS NOT NULL OR uid IS NOT NULL"
            " FROM molamd_audit WHERE action = 'payout_resolve' ORDER BY id").fetchall()
        provider_ref = conn.execute("SELECT provider_ref FROM payout_slices WHERE id = %s",
                                    (silent[1],)).fetchone()[0]
    assert [(a[0], a[1], a[2], a[4]) for a in audit] == [(silent[0], "unresolved", "settled", True),
                                                        (silent[1], "unresolved", "settled", True)]
    assert "the bank could not be asked" in audit[0][3] and "portal: executed" in audit[0][3]
    assert "answered settled" in audit[1][3]
    assert provider_ref == next(p["id"] for p in bank.ledger() if p["idempotency_key"] == f"molam-slice-{silent[1]}")
    assert statuses(migrated_dsn, looked_up + silent).get("dead", 0) == 0
    assert d.stop() == 0


def _metrics(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
