"""PostgreSQL: migrations, the schema's guards, the pool service with cancellation, the registry."""

from __future__ import annotations

import re
import tempfile
import threading
import time
from typing import Any

import psycopg
import pytest
import trio
from pgcluster import Cluster

from connectors import Duration, NullConfig
from molamd import db
from molamd.config import DatabaseSection
from molamd.metrics import Metrics


def test_migrations_from_empty_then_noop(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        assert db.current_version(conn) is None
        applied = db.migrate(conn)
        assert [m.version for m in applied] == [m.version for m in db.shipped_migrations()]
        assert db.current_version(conn) == applied[-1].version
        assert db.migrate(conn) == []
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {
        "bank_profiles", "bank_connectors_registry", "bank_statements_raw", "bank_statement_lines",
        "bank_connector_logs", "bank_connector_secrets", "payout_slices", "treasury_accounts",
    } <= tables


def test_changed_or_unknown_migrations_are_refused(dsn: str) -> None:
    shipped = db.shipped_migrations()
    with psycopg.connect(dsn) as conn:
        db.migrate(conn)
        edited = [db.Migration(m.version, m.name, m.sql + "\n-- edited") for m in shipped]
        with pytest.raises(db.MigrationError, match="changed after it was applied"):
            db.migrate(conn, edited)
        extra = db.Migration(999, "future", "SELECT 1")
        db.migrate(conn, [*shipped, extra])
        with pytest.raises(db.MigrationError, match="does not know"):
            db.migrate(conn, shipped)


def test_cli_migrate(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    from molamd import cli

    assert cli.main(["migrate", "--dsn", dsn]) == 0
    assert "applied" in capsys.readouterr().out
    assert cli.main(["migrate", "--dsn", dsn]) == 0
    assert "up to date" in capsys.readouterr().out
    assert cli.main(["migrate", "--dsn", "host=127.0.0.1 port=1 dbname=x connect_timeout=1"]) == 1
    assert "OperationalError" in capsys.readouterr().err


def _slice(conn: Any) -> int:
    conn.execute("INSERT INTO bank_profiles (id, name, country) VALUES ('b1', 'Bank', 'SN')")
    conn.execute("INSERT INTO treasury_accounts (bank_profile_id, label, account_number, currency)"
                 " VALUES ('b1', 'main', '123', 'XOF')")
    row = conn.execute(
        "INSERT INTO payout_slices (payout_id, treasury_account_id, amount, currency, rail, beneficiary_name,"
        " beneficiary_account) VALUES ('p1', (SELECT id FROM treasury_accounts), 1500, 'XOF', 'ach', 'A', 'B')"
        " RETURNING id, idempotency_key"
    ).fetchone()
    assert row[1] == f"molam-slice-{row[0]}"
    return int(row[0])


def test_payout_status_machine_is_enforced(migrated_dsn: str) -> None:
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        sid = _slice(conn)
        with pytest.raises(psycopg.errors.CheckViolation, match="pending -> settled is not allowed"):
            conn.execute("UPDATE payout_slices SET status = 'settled', final_at = now() WHERE id = %s", (sid,))
        with pytest.raises(psycopg.errors.CheckViolation):  # claimed needs claimed_by and a lease
            conn.execute("UPDATE payout_slices SET status = 'claimed' WHERE id = %s", (sid,))
        conn.execute("UPDATE payout_slices SET status = 'claimed', claimed_by = 'h', lease_until = now()"
                     " + interval '30 s' WHERE id = %s", (sid,))
        conn.execute("UPDATE payout_slices SET status = 'sending' WHERE id = %s", (sid,))
        conn.execute("UPDATE payout_slices SET status = 'sent', provider_ref = 'x' WHERE id = %s", (sid,))
        conn.execute("UPDATE payout_slices SET status = 'settled', final_at = now() WHERE id = %s", (sid,))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE payout_slices SET status = 'pending' WHERE id = %s", (sid,))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO payout_slices (payout_id, treasury_account_id, amount, currency, rail,"
                         " beneficiary_name, beneficiary_account) VALUES ('p2', 1, -5, 'XOF', 'ach', 'A', 'B')")
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO payout_slices (payout_id, treasury_account_id, amount, currency, rail,"
                         " beneficiary_name, beneficiary_account) VALUES ('p3', 999, 5, 'XOF', 'ach', 'A', 'B')")
        before, after = conn.execute(
            "SELECT created_at, updated_at FROM payout_slices WHERE id = %s", (sid,)).fetchone()
        assert after >= before


def _transitions(source: str) -> set[tuple[str, str]]:
    return set(re.findall(r"\('([a-z_]+)', '([a-z_]+)'\)", source.split("IN (", 1)[1].split(") THEN", 1)[0]))


def test_each_migration_that_replaces_the_status_guard_keeps_every_transition_before_it(migrated_dsn: str) -> None:
    """A guard replaced by a later migration that forgot a transition stops the dispatcher dead in production."""
    previous: set[tuple[str, str]] = set()
    for migration in db.shipped_migrations():
        if "FUNCTION payout_slices_guard_status" not in migration.sql:
            continue
        body = migration.sql.split("FUNCTION payout_slices_guard_status", 1)[1].split("END $$", 1)[0]
        allowed = _transitions(body)
        assert previous <= allowed, f"{migration.version:04d}_{migration.name} drops {sorted(previous - allowed)}"
        previous = allowed
    with psycopg.connect(migrated_dsn) as conn:
        live = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'payout_slices_guard_status'").fetchone()[0]
    assert _transitions(live) == previous
    assert {("sending", "batched"), ("batched", "sent"), ("sending", "pending")} <= previous


def test_raw_statements_are_immutable(migrated_dsn: str) -> None:
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        raw = b":20:REF\r\n"
        sid = conn.execute(
            "INSERT INTO bank_statements_raw (source, remote_name, format, sha256, size_bytes, raw)"
            " VALUES ('s', 'a.sta', 'mt940', sha256(%s), %s, %s) RETURNING id", (raw, len(raw), raw)
        ).fetchone()[0]
        conn.execute("UPDATE bank_statements_raw SET status = 'parsed', processed_at = now() WHERE id = %s", (sid,))
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"):
            conn.execute("UPDATE bank_statements_raw SET raw = 'x', size_bytes = 1 WHERE id = %s", (sid,))
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="never deleted"):
            conn.execute("DELETE FROM bank_statements_raw WHERE id = %s", (sid,))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO bank_statements_raw (source, remote_name, format, sha256, size_bytes, raw)"
                         " VALUES ('s', 'b.sta', 'mt940', sha256(%s), %s, %s)", (raw, len(raw), raw))


def _section(dsn: str, **kw: Any) -> DatabaseSection:
    defaults = dict(
        dsn=dsn, connect_timeout=Duration("2s"), ping_interval=Duration("100ms"),
        retry_initial=Duration("50ms"), retry_max=Duration("200ms"), pool_max_size=4,
    )
    defaults.update(kw)
    return DatabaseSection(**defaults)  # type: ignore[arg-type]


async def _wait_for(predicate: Any, timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polls state another task owns
            await trio.sleep(0.02)


async def test_cancelled_query_is_cancelled_on_the_server(migrated_dsn: str) -> None:
    metrics = Metrics()
    database = db.Database(_section(migrated_dsn), metrics=metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(database.run)
        await _wait_for(lambda: database.up)
        assert await database.transaction(lambda c: c.execute("SELECT 41 + 1").fetchone()[0]) == 42
        start = trio.current_time()
        with pytest.raises(db.DatabaseUnavailable, match=r"no answer within 0\.3s"):
            await database.transaction(lambda c: c.execute("SELECT pg_sleep(30)"), timeout=0.3)
        # The contract: the caller gets its answer at its timeout, not when the 30 s query ends. 15 s (half of
        # it) tells the two apart with room for a loaded 2-core machine.
        assert trio.current_time() - start < 15
        with trio.move_on_after(0.3) as scope:
            await database.run_sync(lambda c: c.execute("SELECT pg_sleep(30)"))
        assert scope.cancelled_caught
        running = await database.transaction(lambda c: c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'"
        ).fetchone()[0])
        assert running == 0
        database.request_stop()


async def test_database_goes_away_and_comes_back() -> None:
    cluster = Cluster(tempfile.mkdtemp(prefix="molamd-pg-flap-"))
    cluster.start()
    try:
        metrics = Metrics()
        ups: list[int] = []

        async def on_up() -> None:
            ups.append(1)

        database = db.Database(_section(cluster.dsn()), metrics=metrics, on_up=on_up)
        async with trio.open_nursery() as nursery:
            await nursery.start(database.run)
            await _wait_for(lambda: database.up)
            assert metrics.database_up._value.get() == 1
            await trio.to_thread.run_sync(cluster.stop)
            await _wait_for(lambda: not database.up)
            assert metrics.database_up._value.get() == 0 and database.last_error
            with pytest.raises(db.DatabaseUnavailable):
                await database.transaction(lambda c: c.execute("SELECT 1"))
            await trio.to_thread.run_sync(cluster.start)
            database.poke()
            await _wait_for(lambda: database.up)
            assert ups == [1, 1]
            assert await database.transaction(lambda c: c.execute("SELECT 1").fetchone()[0]) == 1
            database.request_stop()
    finally:
        cluster.destroy()


async def test_never_reachable_database_keeps_retrying() -> None:
    database = db.Database(_section("host=127.0.0.1 port=1 dbname=x"), metrics=Metrics())
    async with trio.open_nursery() as nursery:
        await nursery.start(database.run)
        await _wait_for(lambda: "cannot connect" in (database.last_error or ""))
        assert not database.up and "cannot connect" in (database.last_error or "")
        with pytest.raises(db.DatabaseUnavailable):
            await database.transaction(lambda c: None)
        nursery.cancel_scope.cancel()


def test_registry_sync_and_report(migrated_dsn: str) -> None:
    a, b = NullConfig(name="a", bank_profile="p"), NullConfig(name="b", bank_profile="p", priority=5)
    with psycopg.connect(migrated_dsn) as conn:
        db.sync_configured(conn, "h1", [a, b])
        db.report_states(conn, "h1", [db.RegistryRow(name="a", state="running", incarnation="i1", health_ok=True,
                                                     health_detail="null")])
        db.sync_configured(conn, "h1", [b])
        rows = dict(conn.execute("SELECT name, state FROM bank_connectors_registry ORDER BY name").fetchall())
        assert rows == {"a": "removed", "b": "starting"}
        health = conn.execute("SELECT health_ok, incarnation, config_hash FROM bank_connectors_registry"
                              " WHERE name = 'a'").fetchone()
        assert health[:2] == (True, "i1") and health[2] == db.config_hash(a)
        db.sync_configured(conn, "h1", [a, b])
        assert conn.execute("SELECT state FROM bank_connectors_registry WHERE name = 'a'").fetchone()[0] == "starting"
        db.report_states(conn, "h1", [db.RegistryRow(name="b", state="running", breaker_state="open")])
        opened = conn.execute("SELECT breaker_state, breaker_changed_at FROM bank_connectors_registry"
                              " WHERE name = 'b'").fetchone()
        assert opened[0] == "open" and opened[1] is not None, "the breaker state per host is mirrored"
        conn.commit()  # a new transaction, a later now()
        time.sleep(0.01)
        # Shown, not assumed: a write of now() here would change the time (else the check below cannot fail).
        assert conn.execute("SELECT now()").fetchone()[0] > opened[1]
        db.report_states(conn, "h1", [db.RegistryRow(name="b", state="running", breaker_state="open")])
        assert conn.execute("SELECT breaker_changed_at FROM bank_connectors_registry WHERE name = 'b'"
                            ).fetchone()[0] == opened[1], "unchanged state keeps its time"
    assert db.config_hash(a) != db.config_hash(b)


def test_audit_rows_survive_what_a_garbled_bank_sends(migrated_dsn: str) -> None:
    from connectors import CallRecord
    from molamd.audit import bank_calls as write_audit

    record = CallRecord(connector="bank-a", trace_id="t1", operation="send_payment", duration_seconds=0.01,
                        outcome="error", error_code="bad_response", http_status=201,
                        request={"idempotency_key": "k"}, response={"status": 201, "body": '{"id": "pay_\x00'})
    with psycopg.connect(migrated_dsn) as conn:
        write_audit(conn, "h1", [record, record])
        rows = conn.execute("SELECT response->>'body' FROM bank_connector_logs").fetchall()
    assert rows == [('{"id": "pay_\\u0000',)] * 2


async def test_listener_turns_notifications_into_callbacks(migrated_dsn: str) -> None:
    calls: list[int] = []
    listener = db.Listener(_section(migrated_dsn), "molamd_payout_slices", lambda: calls.append(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        await _wait_for(lambda: listener.connected)
        await trio.to_thread.run_sync(_seed_one_slice, migrated_dsn)
        await _wait_for(lambda: calls, timeout=10)
        assert listener.received >= 1
        listener.request_stop()


def _seed_one_slice(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        _slice(conn)


async def test_a_deadlock_comes_back_as_a_retryable_conflict(migrated_dsn: str) -> None:
    """Two transactions lock two rows in opposite orders; PostgreSQL aborts ours (its deadlock check runs first)."""
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE race (id int PRIMARY KEY, n int)")
        conn.execute("INSERT INTO race VALUES (1, 0), (2, 0)")
    database = db.Database(_section(migrated_dsn), metrics=Metrics())
    holding = trio.Event()
    ours_holds = threading.Event()
    other_pid: list[int] = []

    # Ordered by what PostgreSQL shows, not by sleeps a loaded machine outlasts (then the other transaction took
    # row 1 first, committed, and there was no deadlock): the other one waits for row 1 only once ours holds it,
    # and ours asks for row 2 only once the other one is seen waiting.
    def other() -> None:
        with psycopg.connect(migrated_dsn) as conn:
            conn.execute("SET deadlock_timeout = '10s'")
            other_pid.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            conn.execute("UPDATE race SET n = n + 1 WHERE id = 2")
            trio.from_thread.run_sync(holding.set)
            assert ours_holds.wait(30), "ours never took row 1"
            conn.execute("UPDATE race SET n = n + 1 WHERE id = 1")

    def ours(conn: Any) -> None:
        conn.execute("SET LOCAL deadlock_timeout = '50ms'")
        conn.execute("UPDATE race SET n = n + 1 WHERE id = 1")
        ours_holds.set()
        _wait_blocked(migrated_dsn, other_pid[0])
        conn.execute("UPDATE race SET n = n + 1 WHERE id = 2")

    async with trio.open_nursery() as nursery:
        await nursery.start(database.run)
        with trio.fail_after(10):
            while not database.up:  # noqa: ASYNC110
                await trio.sleep(0.02)
        nursery.start_soon(trio.to_thread.run_sync, other)
        await holding.wait()
        with pytest.raises(db.DatabaseConflict, match="deadlock") as caught:
            await database.transaction(ours)
        assert caught.value.retryable and database.up, "a lost race is not a database that went away"
        database.request_stop()


def test_an_attempt_in_another_scope_than_the_binding_is_refused(migrated_dsn: str) -> None:
    """Whoever writes: the database itself keeps a bound slice's attempts in its idempotency scope."""
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO bank_profiles (id, name, country) VALUES ('b', 'B', 'SN')")
        account = conn.execute("INSERT INTO treasury_accounts (bank_profile_id, label, account_number, currency)"
                               " VALUES ('b', 'main', 'ACC', 'XOF') RETURNING id").fetchone()[0]  # type: ignore[index]
        slice_id = conn.execute(
            "INSERT INTO payout_slices (payout_id, treasury_account_id, amount, currency, rail, beneficiary_name,"
            " beneficiary_account, bound_scope, bound_at) VALUES ('p', %s, 10, 'XOF', 'ach', 'A', 'SN08',"
            " 'bank-api', now()) RETURNING id", (account,)).fetchone()[0]  # type: ignore[index]
        insert = ("INSERT INTO payout_slice_attempts (payout_slice_id, attempt_no, host_id, connector_name,"
                  " idempotency_scope) VALUES (%s, %s, 'h', 'c', %s)")
        conn.execute(insert, (slice_id, 1, "bank-api"))
        with pytest.raises(psycopg.errors.CheckViolation, match="bound to idempotency scope bank-api"):
            conn.execute(insert, (slice_id, 2, "bank-legacy"))
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="never changed or deleted"):
            conn.execute("INSERT INTO molamd_audit (action, actor) VALUES ('x', 'y')")
            conn.execute("DELETE FROM molamd_audit")


def test_a_released_session_lock_is_free_for_another_host_at_once(dsn: str) -> None:
    """Closing the connection frees the lock only once the server has ended that session; release() must not
    leave the next host a moment in which the lock still looks held."""
    from molamd.statements import SourceLock

    def lock() -> SourceLock:
        return SourceLock(lambda: psycopg.connect(dsn, autocommit=True), "bank-a-statements")

    here, there = lock(), lock()
    for _ in range(100):
        assert here.hold() and not there.hold()
        here.release()
        assert there.hold(), "the lock was still held just after release()"
        there.release()


def _wait_blocked(dsn: str, pid: int, timeout: float = 30.0) -> None:
    """Until backend ``pid`` waits for a lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not conn.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", (pid,)).fetchone()[0]:
            assert time.monotonic() < deadline, f"backend {pid} never waited for a lock"
            time.sleep(0.01)
