"""Exactly once across channels: one bank profile, a primary and a backup connector reaching two sandbox banks
with separate ledgers and idempotency stores, a flaky primary and repeated SIGKILLs of the daemon."""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

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

FINAL = ("settled", "failed", "dead")


@pytest.fixture
def two_banks() -> Iterator[tuple[Bank, Bank]]:
    a, b = Bank(), Bank()
    yield a, b
    a.close()
    b.close()


def test_a_flaky_primary_and_sigkills_never_pay_twice_across_channels(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, two_banks: tuple[Bank, Bank]
) -> None:
    primary, backup = two_banks
    connectors = (rest_connector("primary", primary.url, priority=10, call_timeout="500ms", scope="bank-a-api")
                  + rest_connector("backup", backup.url, priority=20, call_timeout="500ms", scope="bank-a-legacy"))
    config = payout_toml(short_tmp, migrated_dsn, connectors, lease="6s")
    # Hangs, resets and 5xx on the primary; half of the ambiguous faults happen after the bank executed.
    primary.faults(error_rate=0.25, reset_rate=0.1, hang_rate=0.1)
    ids = seed(migrated_dsn, 300)
    d = daemon_factory(config, env=env())
    rng = random.Random(3)
    for _ in range(3):
        # Killed mid-work, seen so, not after a sleep that a loaded machine may spend starting up: this
        # incarnation has ended some attempts and has a call to a bank open.
        since, ended = _now(migrated_dsn), rng.randint(5, 30)
        wait_for(partial(_mid_work, migrated_dsn, since, ended), 60, "calls in flight to kill",
                 lambda: statuses(migrated_dsn, ids))
        d.signal(signal.SIGKILL)
        d.proc.wait()  # type: ignore[union-attr]
        d.start()
    # An operator opens the primary's breaker: new work goes to the backup, in-doubt slices wait for the primary.
    assert d.ctl_json("force-open", "primary")["breaker"] == "forced_open"
    during = seed(migrated_dsn, 50, prefix="outage")
    ids += during
    wait_for(lambda: sum(statuses(migrated_dsn, during).get(s, 0) for s in ("sent", *FINAL)) == len(during), 30,
             "the outage's slices sent", lambda: statuses(migrated_dsn, during))
    d.ctl_json("reset-circuit", "primary")
    primary.faults(error_rate=0.0, reset_rate=0.0, hang_rate=0.0)
    wait_for(lambda: sum(statuses(migrated_dsn, ids).get(s, 0) for s in FINAL) == len(ids), 120,
             "every slice final", lambda: statuses(migrated_dsn, ids))
    paid = assert_no_payment_in_two_ledgers(primary, backup)
    assert len(backup.ledger()) > 0, "the backup bank took work while the primary was failing"
    with psycopg.connect(migrated_dsn) as conn:
        rows = conn.execute("SELECT payout_id || '/' || id, status, provider_ref, bound_scope FROM payout_slices"
                            " WHERE id = ANY(%s)", (ids,)).fetchall()
        scopes = conn.execute("SELECT DISTINCT idempotency_scope FROM payout_slice_attempts").fetchall()
        open_attempts = conn.execute("SELECT count(*) FROM payout_slice_attempts WHERE outcome IS NULL").fetchone()
    for reference, status, provider_ref, scope in rows:
        where = paid.get(reference, [])
        if status == "settled":
            assert [pid for _, pid in where] == [provider_ref], reference
            bank = primary if where[0][0] == primary.url else backup
            assert scope == ("bank-a-api" if bank is primary else "bank-a-legacy"), (reference, scope)
        elif status == "dead":
            assert not where or scope is not None, f"{reference} was paid but is dead and unbound"
    assert {s for (s,) in scopes} == {"bank-a-api", "bank-a-legacy"}
    assert open_attempts == (0,), "every attempt is closed once the daemon has recovered"
    with psycopg.connect(migrated_dsn) as conn:
        audited = conn.execute("SELECT action, uid, user_name, target, ok FROM molamd_audit"
                               " WHERE action LIKE 'command:%' ORDER BY id").fetchall()
    assert audited == [("command:force-open", 0, "root", "primary", True),
                       ("command:reset-circuit", 0, "root", "primary", True)]
    check_show_and_release(d, migrated_dsn, ids[0])
    assert d.stop() == 0


def _now(dsn: str) -> Any:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]


def _mid_work(dsn: str, since: Any, ended: int) -> bool:
    """Attempts started since ``since``: at least ``ended`` of them over, and one still open (a call in flight)."""
    with psycopg.connect(dsn) as conn:
        done, open_ = conn.execute("SELECT count(*) FILTER (WHERE outcome IS NOT NULL), count(*) FILTER (WHERE"
                                   " outcome IS NULL) FROM payout_slice_attempts WHERE started_at >= %s",
                                   (since,)).fetchone()  # type: ignore[misc]
    return bool(done >= ended and open_)


def check_show_and_release(d: Any, migrated_dsn: str, settled_id: int) -> None:
    """``molamctl payouts show`` prints attempts and scope; ``payouts release`` frees an in-doubt slice."""
    shown = d.ctl_json("payouts", "show", str(settled_id))
    assert shown["attempt_rows"] and shown["bound_scope"] in ("bank-a-api", "bank-a-legacy")
    assert {"attempt_no", "connector", "scope", "outcome"} <= set(shown["attempt_rows"][0])
    table = d.ctl("payouts", "show", str(settled_id)).stdout
    assert "attempts:" in table and "SCOPE" in table and "audit:" in table
    assert "final" in d.ctl("payouts", "release", str(settled_id), "--reason", "x").stderr

    # An operator frees a slice in doubt after checking with the bank: audited, and it may go to any channel.
    [stuck] = seed(migrated_dsn, 1, prefix="stuck", max_attempts=1)
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("UPDATE payout_slices SET status = 'claimed', claimed_by = 'x', lease_until = now()"
                     " + interval '1h' WHERE id = %s", (stuck,))
        conn.execute("UPDATE payout_slices SET status = 'sending' WHERE id = %s", (stuck,))
        conn.execute("UPDATE payout_slices SET status = 'dead', last_error = 'timeout', bound_scope = 'bank-a-api',"
                     " bound_at = now(), claimed_by = NULL, lease_until = NULL WHERE id = %s", (stuck,))
    assert d.ctl("payouts", "release", str(stuck)).returncode == 1, "a reason is required"
    released = d.ctl_json("payouts", "release", str(stuck), "--reason", "bank A confirmed it never got it")
    assert released["released_scope"] == "bank-a-api"
    history = d.ctl_json("payouts", "show", str(stuck))["audit"]
    assert [(h["action"], h["uid"], h["target"]) for h in history] == [("payout_release", 0, "bank-a-api")]


def test_a_connector_with_wrong_credentials_is_unhealthy_and_costs_no_payout_an_attempt(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, two_banks: tuple[Bank, Bank]
) -> None:
    """A wrong HMAC key: the bank answers 401. Its slices go to the other connector of the profile, or wait
    (pending, no attempt used) where there is none; nothing is dead, and a fixed key takes the work at once."""
    primary, backup = two_banks
    wrong = {"MOLAMD_WRONG_HMAC": "not-the-bank-secret"}
    connectors = (rest_connector("primary", primary.url, priority=10, scope="bank-a-api", hmac_env="MOLAMD_WRONG_HMAC")
                  + rest_connector("backup", backup.url, priority=20, scope="bank-a-legacy")
                  + rest_connector("lonely", primary.url, profile="bank-b", scope="bank-b-api",
                                   hmac_env="MOLAMD_WRONG_HMAC"))
    config = payout_toml(short_tmp, migrated_dsn, connectors, health_interval="1h")
    d = daemon_factory(config, env={**env(), **wrong})
    ids_a = seed(migrated_dsn, 50, max_attempts=1)
    ids_b = seed(migrated_dsn, 20, profile="bank-b", max_attempts=1)
    wait_for(lambda: statuses(migrated_dsn, ids_a).get("settled", 0) == len(ids_a), 30,
             "bank-a's slices settled through the backup", lambda: statuses(migrated_dsn, ids_a))
    assert len(backup.ledger()) == len(ids_a) and primary.ledger() == []
    rows = {r["name"]: r for r in d.ctl_json("connectors")}
    assert rows["primary"]["health"] == "unhealthy" and "health check failed" in rows["primary"]["last_error"]
    assert rows["lonely"]["health"] == "unhealthy" and rows["backup"]["health"] != "unhealthy"
    # bank-b has no other channel: its slices wait, none dead, no attempt used.
    with psycopg.connect(migrated_dsn) as conn:
        waiting = conn.execute("SELECT status, attempts FROM payout_slices WHERE id = ANY(%s)", (ids_b,)).fetchall()
    assert {status for status, _ in waiting} <= {"pending", "claimed"}, waiting
    assert max(attempts for _, attempts in waiting) == 0
    # A health check that fails keeps it out; one resume lets it try again (and fail again, cheaply).
    assert d.ctl_json("health", "lonely")["ok"] is False
    assert statuses(migrated_dsn, ids_b).get("dead", 0) == 0
    # The key is fixed and reloaded: the connector restarts healthy and takes bank-b's work.
    d.config.write_text(config.replace('hmac_secret = "env:MOLAMD_WRONG_HMAC"', 'hmac_secret = "env:MOLAMD_TEST_HMAC"'))
    assert d.ctl("reload").returncode == 0
    wait_for(lambda: statuses(migrated_dsn, ids_b).get("settled", 0) == len(ids_b), 30,
             "bank-b's slices settled once the key is right", lambda: statuses(migrated_dsn, ids_b))
    assert_each_paid_once(migrated_dsn, primary, backup, ids_a + ids_b)
    assert d.stop() == 0


def assert_each_paid_once(dsn: str, primary: Bank, backup: Bank, ids: list[int]) -> None:
    paid = assert_no_payment_in_two_ledgers(primary, backup)
    with psycopg.connect(dsn) as conn:
        references = [r for (r,) in conn.execute(
            "SELECT payout_id || '/' || id FROM payout_slices WHERE id = ANY(%s)", (ids,)).fetchall()]
    assert all(len(paid.get(ref, [])) == 1 for ref in references)
