"""The audit trail an auditor can trust, against a real PostgreSQL: month partitions, the hash chain and its
verification (a row altered, removed in the middle or at the end, each named), rows kept from before the
migration, concurrent writers, export with its checksum, retention that detaches only exported months, and raw
statement files that cannot be changed or deleted."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from connectors import CallRecord
from molamd import audit, audit_chain
from molamd.db import migrate, shipped_migrations
from tests.payout_helpers import ROOT

WHO = audit.Identity(uid=0, pid=1, user="root")


def write(dsn: str, actions: int = 3, calls: int = 3) -> None:
    with psycopg.connect(dsn) as conn:
        for n in range(actions):
            audit.operator_action(conn, "host-a", WHO, "pause", {"name": f"bank-{n}", "token": "s3cret"}, ok=True)
        audit.bank_calls(conn, "host-a", [
            CallRecord(connector="bank-a", operation="send", trace_id=f"t{n}", duration_seconds=0.1 + n / 7,
                       outcome="ok", request={"amount": "1000", "note": "é\u0000x"}) for n in range(calls)])


def this_month() -> dt.date:
    return dt.datetime.now(dt.UTC).date().replace(day=1)


def findings(dsn: str, month: dt.date | None = None) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [str(f) for r in audit_chain.verify(conn, month) for f in r.findings]


def tamper(dsn: str, sql: str) -> None:
    """What someone with the database's superuser can do: triggers off, then change the table by hand."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(sql)


def test_rows_are_chained_and_a_whole_chain_verifies(migrated_dsn: str) -> None:
    write(migrated_dsn)
    assert findings(migrated_dsn) == []
    with psycopg.connect(migrated_dsn) as conn:
        rows = conn.execute("SELECT chain_seq, prev_hash, row_hash FROM molamd_audit ORDER BY chain_seq").fetchall()
        parts = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'molamd_audit'::regclass").fetchone()
    assert [r[0] for r in rows] == [1, 2, 3]
    assert rows[1][1] == rows[0][2] and rows[2][1] == rows[1][2], "each row carries the previous one's hash"
    assert parts is not None and parts[0] >= 5, "a default partition and months ahead"


@pytest.mark.parametrize(("sql", "says"), [
    ("UPDATE molamd_audit SET actor = 'someone else' WHERE chain_seq = 2", "(chain_seq 2): altered"),
    ("UPDATE bank_connector_logs SET duration_seconds = 9 WHERE chain_seq = 1", "(chain_seq 1): altered"),
    ("DELETE FROM molamd_audit WHERE chain_seq = 2", "chain_seq rows 2..2 missing"),
    ("DELETE FROM bank_connector_logs WHERE chain_seq = 3", "rows removed from the end"),
    ("UPDATE molamd_audit SET at = at + interval '1 second' WHERE chain_seq = 1", "(chain_seq 1): altered"),
])
def test_a_row_changed_or_removed_by_hand_is_named(migrated_dsn: str, sql: str, says: str) -> None:
    write(migrated_dsn)
    tamper(migrated_dsn, sql)
    found = findings(migrated_dsn)
    assert found and any(says in f for f in found), found
    table = "molamd_audit" if "molamd_audit" in sql else "bank_connector_logs"
    assert all(f.startswith(f"{table} {this_month():%Y-%m}") for f in found), found


def test_the_trail_refuses_changes_and_deletes(migrated_dsn: str) -> None:
    write(migrated_dsn, 1, 1)
    for sql in ("UPDATE molamd_audit SET actor = 'x'", "DELETE FROM molamd_audit",
                "UPDATE bank_connector_logs SET outcome = 'ok'", "DELETE FROM bank_connector_logs"):
        with psycopg.connect(migrated_dsn) as conn, pytest.raises(psycopg.errors.IntegrityConstraintViolation):
            conn.execute(sql)


def test_raw_statement_files_cannot_be_changed_or_deleted(migrated_dsn: str) -> None:
    with psycopg.connect(migrated_dsn) as conn:
        raw_id = conn.execute(
            "INSERT INTO bank_statements_raw (source, remote_name, format, sha256, size_bytes, raw)"
            " VALUES ('s', 'a.sta', 'mt940', %s, 3, 'abc') RETURNING id", (hashlib.sha256(b"abc").digest(),)
        ).fetchone()[0]  # type: ignore[index]
    for sql in ("UPDATE bank_statements_raw SET raw = 'abd' WHERE id = %s",
                "DELETE FROM bank_statements_raw WHERE id = %s"):
        with psycopg.connect(migrated_dsn) as conn, pytest.raises(psycopg.errors.IntegrityConstraintViolation,
                                                                  match=r"immutable|never deleted"):
            conn.execute(sql, (raw_id,))


def test_rows_from_before_the_migration_are_kept_and_chained(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        migrate(conn, [m for m in shipped_migrations() if m.version < 9])
        conn.execute("INSERT INTO molamd_audit (action, actor, at) VALUES ('command:pause', 'root',"
                     " now() - interval '40 days'), ('command:resume', 'root', now())")
        conn.execute("INSERT INTO bank_connector_logs (host_id, connector_name, trace_id, operation,"
                     " duration_seconds, outcome) VALUES ('h', 'c', 't', 'send', 0.123456789123, 'ok')")
        migrate(conn)
        kept = conn.execute("SELECT count(*) FROM molamd_audit").fetchone()
    assert kept == (2,)
    assert findings(dsn) == []
    write(dsn, 1, 1)  # new rows get ids after the old ones and chain on
    assert findings(dsn) == []


def test_concurrent_writers_chain_one_after_the_other(migrated_dsn: str) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(10):
                write(migrated_dsn, 2, 5)
        except BaseException as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert findings(migrated_dsn) == []
    with psycopg.connect(migrated_dsn) as conn:
        seqs = conn.execute("SELECT max(chain_seq), count(*) FROM bank_connector_logs").fetchone()
    assert seqs == (200, 200)


def config_file(directory: Path, dsn: str) -> Path:
    path = directory / "molamd.toml"
    path.write_text(f'[database]\ndsn = "{dsn}"\n\n[audit]\nretention_months = 12\n')
    return path


def molamd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "molamd.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, check=False)


def test_verify_and_export_from_the_command_line(migrated_dsn: str, tmp_path: Path) -> None:
    write(migrated_dsn)
    config = config_file(tmp_path, migrated_dsn)
    month = f"{this_month():%Y-%m}"
    ok = molamd("audit", "verify", "--config", str(config))
    assert ok.returncode == 0 and "every chain is whole" in ok.stdout, ok.stdout + ok.stderr

    out = tmp_path / "export"
    done = molamd("audit", "export", "--month", month, "--out", str(out), "--config", str(config))
    assert done.returncode == 0, done.stderr
    exported = out / f"molamd-audit-{month}.jsonl.gz"
    checksum = (out / f"{exported.name}.sha256").read_text().split()[0]
    assert checksum == hashlib.sha256(exported.read_bytes()).hexdigest()
    lines = [json.loads(line) for line in gzip.decompress(exported.read_bytes()).splitlines()]
    audit_rows = [x for x in lines if x["kind"] == "molamd_audit"]
    heads = {x["table_name"]: x["head"] for x in lines if x["kind"] == "chain_head"}
    assert len(audit_rows) == 3 and heads["molamd_audit"] == audit_rows[-1]["row_hash"]
    assert all(x["arguments"]["token"] == "***" for x in audit_rows), "secrets stay masked in the export"

    tamper(migrated_dsn, "UPDATE molamd_audit SET detail = 'nothing happened' WHERE chain_seq = 3")
    broken = molamd("audit", "verify", "--config", str(config), "--month", month)
    assert broken.returncode == 1 and "(chain_seq 3): altered" in broken.stdout, broken.stdout
    refused = molamd("audit", "export", "--month", month, "--out", str(out / "again"), "--config", str(config))
    assert refused.returncode == 1 and "the chain is broken, not exported" in refused.stderr
    bad = molamd("audit", "export", "--month", "2026-13", "--out", str(out), "--config", str(config))
    assert bad.returncode == 1 and "'2026-13' is not a month" in bad.stderr


def test_retire_detaches_only_exported_months_past_retention(migrated_dsn: str, tmp_path: Path) -> None:
    old = (this_month() - dt.timedelta(days=15 * 31)).replace(day=1)
    older = (old - dt.timedelta(days=1)).replace(day=1)
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("SELECT molamd_audit_partitions(%s, 3)", (older,))
        for month in (older, old):
            conn.execute("INSERT INTO molamd_audit (action, actor, at) VALUES ('command:pause', 'root', %s)",
                         (dt.datetime.combine(month, dt.time(12), dt.UTC),))
    config = config_file(tmp_path, migrated_dsn)
    done = molamd("audit", "export", "--month", f"{old:%Y-%m}", "--out", str(tmp_path), "--config", str(config))
    assert done.returncode == 0, done.stderr
    retired = molamd("audit", "retire", "--config", str(config))
    assert retired.returncode == 0, retired.stderr
    assert f"molamd_audit_{old:%Y_%m}" in retired.stdout and f"{older:%Y_%m}" not in retired.stdout
    with psycopg.connect(migrated_dsn) as conn:
        kept = conn.execute("SELECT count(*) FROM molamd_audit").fetchone()
        detached = conn.execute(f"SELECT count(*) FROM molamd_audit_{old:%Y_%m}").fetchone()
    assert kept == (1,) and detached == (1,), "detached, not dropped; the unexported month stays"
    assert findings(migrated_dsn) == [], "a retired month is not reported as rows removed"


def test_statements_savepoints_and_months_in_one_transaction_chain_whole(migrated_dsn: str) -> None:
    """The running head lives in the transaction: several INSERTs, a savepoint rolled back, two months."""
    last_month = (this_month() - dt.timedelta(days=1)).replace(day=1)
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("SELECT molamd_audit_partitions(%s, 1)", (last_month,))
        audit.operator_action(conn, "h", WHO, "pause", {}, ok=True)
        conn.execute("INSERT INTO molamd_audit (action, actor, at) VALUES ('command:old', 'root', %s)",
                     (dt.datetime.combine(last_month, dt.time(9), dt.UTC),))
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            audit.operator_action(conn, "h", WHO, "resume", {}, ok=True)
            conn.execute("INSERT INTO bank_connector_logs (host_id, connector_name, trace_id, operation,"
                         " duration_seconds, outcome) VALUES ('h', 'c', 't', 'send', -1, 'ok')")  # refused
        audit.operator_action(conn, "h", WHO, "drain", {}, ok=True)
    write(migrated_dsn, 2, 2)  # the next transaction reads the head its predecessor left
    assert findings(migrated_dsn) == []
    with psycopg.connect(migrated_dsn) as conn:
        rows = conn.execute("SELECT action, chain_seq FROM molamd_audit WHERE at >= %s ORDER BY chain_seq",
                            (this_month(),)).fetchall()
    assert [r[1] for r in rows] == [1, 2, 3, 4] and rows[1][0] == "command:drain", rows


async def test_telemetry_makes_next_months_partitions_and_outlives_a_role_that_may_not(
    migrated_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    import trio

    from molamd import db
    from molamd.metrics import Metrics
    from molamd.telemetry import Telemetry
    from tests.test_db import _section, _wait_for

    ahead = (this_month() + dt.timedelta(days=32 * 3)).replace(day=1)
    name = f"molamd_audit_{ahead:%Y_%m}"
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute(f"DROP TABLE {name}")
        conn.execute("DROP ROLE IF EXISTS molamd_app")
        conn.execute("CREATE ROLE molamd_app LOGIN")  # a leased role: it may write, it owns nothing
        conn.execute("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO molamd_app")
    app_dsn = f"{migrated_dsn} user=molamd_app"
    for dsn, made in ((app_dsn, False), (migrated_dsn, True)):
        database = db.Database(_section(dsn), metrics=Metrics())
        async with trio.open_nursery() as nursery:
            await nursery.start(database.run)
            await _wait_for(lambda d=database: d.up)
            await Telemetry(Metrics(), database, "h", partitions_ahead=3).tick()  # raises nothing
            database.request_stop()
        with psycopg.connect(migrated_dsn) as conn:
            found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        assert found == (made,), dsn
    said = [(r.getMessage(), vars(r).get("fields")) for r in caplog.records]
    assert any("missing and this role may not make them" in m and name in str(f) for m, f in said), said
    assert not any("database unavailable" in m for m, _ in said), "a role that owns nothing is no database down"
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM molamd_app")
        conn.execute("DROP ROLE molamd_app")


def partitions_of(conn: psycopg.Connection[tuple[object, ...]], table: str) -> list[str]:
    rows = conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                        " WHERE i.inhparent = %s::regclass ORDER BY 1", (table,)).fetchall()
    return [str(r[0]) for r in rows]


def test_truncate_is_refused_on_every_audit_table_and_partition_even_ones_made_later(migrated_dsn: str) -> None:
    """TRUNCATE skips the row triggers that refuse deletes; a statement trigger refuses it, on the partitioned
    tables, each partition (the default one too), one made later, and the chain heads."""
    write(migrated_dsn, 1, 1)
    later = (this_month() + dt.timedelta(days=32 * 8)).replace(day=1)
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute("SELECT molamd_audit_partitions(now()::date, 8)")
        names = [*audit_chain.TABLES, "molamd_audit_chain",
                 *partitions_of(conn, "molamd_audit"), *partitions_of(conn, "bank_connector_logs")]
    assert f"molamd_audit_{later:%Y_%m}" in names and "bank_connector_logs_default" in names
    for name in names:
        with psycopg.connect(migrated_dsn) as conn, pytest.raises(
                psycopg.errors.IntegrityConstraintViolation, match="never truncated"):
            conn.execute(f'TRUNCATE "{name}"')
    with psycopg.connect(migrated_dsn) as conn:
        rows = conn.execute("SELECT (SELECT count(*) FROM molamd_audit), (SELECT count(*) FROM bank_connector_logs)"
                            ).fetchone()
    assert rows == (1, 1)


def test_chain_heads_are_never_deleted_or_moved_back(migrated_dsn: str) -> None:
    write(migrated_dsn, 2, 2)
    for sql in ("DELETE FROM molamd_audit_chain",
                "UPDATE molamd_audit_chain SET seq = seq - 1 WHERE seq > 0",
                "UPDATE molamd_audit_chain SET head = sha256('x') WHERE seq > 0",
                "UPDATE molamd_audit_chain SET month = month - 31",
                "UPDATE molamd_audit_chain SET retired_at = now()"):  # retired only once exported with its head
        with psycopg.connect(migrated_dsn) as conn, pytest.raises(psycopg.errors.IntegrityConstraintViolation):
            conn.execute(sql)
    assert findings(migrated_dsn) == []


def test_every_month_from_the_first_partition_has_a_head_even_with_no_rows(migrated_dsn: str) -> None:
    """Heads are written with the partitions (for empty months too), so verify can require one for every month
    from the first partition to now; a month whose partition was emptied and whose head was deleted is named."""
    with psycopg.connect(migrated_dsn) as conn:
        heads = {(str(t), m) for t, m in conn.execute("SELECT table_name, month FROM molamd_audit_chain")}
    assert {(t, this_month()) for t in audit_chain.TABLES} <= heads, "this month has its heads before any row"
    assert findings(migrated_dsn) == []

    last_month = (this_month() - dt.timedelta(days=1)).replace(day=1)
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("SELECT molamd_audit_partitions(%s, 1)", (last_month,))
        conn.execute("INSERT INTO molamd_audit (action, actor, at) VALUES ('command:pause', 'root', %s)",
                     (dt.datetime.combine(last_month, dt.time(9), dt.UTC),))
    write(migrated_dsn, 1, 1)
    assert findings(migrated_dsn) == []
    # The owner, triggers off: last month's rows truncated and its head deleted; this month's bank calls too.
    tamper(migrated_dsn, f"TRUNCATE molamd_audit_{last_month:%Y_%m}; TRUNCATE bank_connector_logs_{this_month():%Y_%m};"
                         " DELETE FROM molamd_audit_chain WHERE"
                         f" (table_name = 'molamd_audit' AND month = '{last_month}')"
                         f" OR (table_name = 'bank_connector_logs' AND month = '{this_month()}')")
    found = findings(migrated_dsn)
    assert f"molamd_audit {last_month:%Y-%m}: no chain head" in " ".join(found), found
    assert f"bank_connector_logs {this_month():%Y-%m}: no chain head" in " ".join(found), found
    assert len(found) == 2, found
    one = findings(migrated_dsn, last_month)
    assert len(one) == 1 and "no chain head" in one[0], one
