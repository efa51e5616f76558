"""Statement ingestion end to end: the sandbox SFTP server (asyncssh), the poller, real PostgreSQL."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from connectors import BadResponse, Network, RemoteFile, SftpStatementConnector
from connectors.sftp import safe_name
from connectors.statements import MOLAMD_PROFILE, CsvColumns, CsvProfile, parse_mt940
from molamd.statements import Ingested, reprocess
from tests.corpora import GENKGO, WOLPH
from tests.statement_helpers import rig, source_config

SEPA = (WOLPH / "mt940_tests/betterplace/sepa_mt9401.sta").read_bytes()  # 26 statements, 97 lines, balanced
BROKEN = (WOLPH / "mt940_tests/betterplace/sepa_snippet_broken.sta").read_bytes()
UNBALANCED = (WOLPH / "mt940_tests/jejik/abnamro.sta").read_bytes()


def _lines(r, raw_id: int | None = None) -> int:  # type: ignore[no-untyped-def]
    sql = "SELECT count(*) FROM bank_statement_lines" + (" WHERE statement_raw_id = %s" if raw_id else "")
    return int(r.query(sql, *([raw_id] if raw_id else []))[0][0])


async def test_file_is_stored_parsed_and_archived(tmp_path: Path, migrated_dsn: str) -> None:
    async with rig(tmp_path, migrated_dsn) as r:
        r.put("sepa.sta", SEPA)
        summary = await r.poller().poll_once()
        [taken] = summary.taken
        assert (taken["outcome"], taken["lines"], taken["moved_to"]) == ("parsed", 97, "/outgoing/archive/sepa.sta")
        assert r.names() == [] and r.names("archive") == ["sepa.sta"]
        [(status, size, raw, statements, lines)] = r.query(
            "SELECT status, size_bytes, raw, statement_count, line_count FROM bank_statements_raw")
        assert (status, size, bytes(raw), statements, lines) == ("parsed", len(SEPA), SEPA, 26, 97)
        total = r.query("SELECT sum(CASE WHEN credit_debit = 'C' AND NOT reversal OR credit_debit = 'D' AND reversal"
                        " THEN amount ELSE -amount END) FROM bank_statement_lines")[0][0]
        assert total == sum(line.amount for s in parse_mt940(SEPA) for line in s.lines)
        assert r.counted("parsed") == 1 and r.metrics.statement_lines.labels("bank-a-statements")._value.get() == 97


async def test_same_file_twice_under_two_names_is_stored_once(tmp_path: Path, migrated_dsn: str) -> None:
    async with rig(tmp_path, migrated_dsn) as r:
        r.put("monday.sta", SEPA)
        r.put("monday-again.sta", SEPA)
        summary = await r.poller().poll_once()
        assert sorted(t["outcome"] for t in summary.taken) == ["duplicate", "parsed"]
        assert r.names("archive") == ["monday-again.sta", "monday.sta"] and r.names() == []
        assert _lines(r) == 97 and r.query("SELECT count(*) FROM bank_statements_raw")[0][0] == 1


@pytest.mark.parametrize(("data", "outcome", "error"), [
    (BROKEN, "parse_failed", "line 6: :25: after the entries of statement T089414086000001"),
    (UNBALANCED, "balance_failed", "statement 19321"),
    (b"1\n2\n3\n", "parse_failed", "no MT940 tag found"),
    (SEPA[: len(SEPA) // 2], "parse_failed", "ends without a closing balance"),  # truncated
])
async def test_bad_file_is_kept_raw_and_moved_to_error_with_a_reason(
    tmp_path: Path, migrated_dsn: str, data: bytes, outcome: str, error: str
) -> None:
    async with rig(tmp_path, migrated_dsn) as r:
        r.put("bad.sta", data)
        [taken] = (await r.poller().poll_once()).taken
        assert taken["outcome"] == outcome and error in taken["error"]
        assert r.names("error") == ["bad.sta", "bad.sta.reason.txt"]
        assert error in (r.server.inbox / "error/bad.sta.reason.txt").read_text()
        [(status, stored_error, raw)] = r.query("SELECT status, error, raw FROM bank_statements_raw")
        assert status == outcome and error in stored_error and bytes(raw) == data
        assert _lines(r) == 0  # nothing half-inserted
        assert r.counted(outcome) == 1


class _Crash(BaseException):
    """The process dies here."""


async def test_crash_between_commit_and_move_writes_no_line_twice(tmp_path: Path, migrated_dsn: str) -> None:
    async def die(remote: RemoteFile, result: Ingested) -> None:
        raise _Crash

    async with rig(tmp_path, migrated_dsn) as r:
        r.put("sepa.sta", SEPA)
        with pytest.raises(_Crash):
            await r.poller(after_commit=die).poll_once()
        assert r.names() == ["sepa.sta"] and _lines(r) == 97  # committed, not moved
        await r.store.release_lock("bank-a-statements")  # the dead process's session is gone
        [taken] = (await r.poller().poll_once()).taken  # the restarted daemon
        assert taken["outcome"] == "duplicate" and taken["moved_to"] == "/outgoing/archive/sepa.sta"
        assert _lines(r) == 97 and r.names() == []


async def test_database_down_at_commit_leaves_the_file_in_the_inbox(tmp_path: Path, migrated_dsn: str) -> None:
    # A deferred constraint trigger runs at COMMIT and kills its own backend: the connection is lost exactly there.
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION die_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$"
                     " BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$")
        conn.execute("CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT ON bank_statements_raw"
                     " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION die_at_commit()")
    async with rig(tmp_path, migrated_dsn) as r:
        r.put("sepa.sta", SEPA)
        poller = r.poller()
        from molamd.db import DatabaseUnavailable

        with pytest.raises(DatabaseUnavailable):
            await poller.poll_once()
        assert r.names() == ["sepa.sta"] and r.query("SELECT count(*) FROM bank_statements_raw")[0][0] == 0
        with psycopg.connect(migrated_dsn, autocommit=True) as conn:
            conn.execute("DROP TRIGGER die_at_commit ON bank_statements_raw")
        with trio.fail_after(20):
            while not r.database.up:
                r.database.poke()
                await trio.sleep(0.05)
        [taken] = (await poller.poll_once()).taken
        assert taken["outcome"] == "parsed" and _lines(r) == 97 and r.names() == []


async def test_connection_dropped_mid_transfer_is_retried(tmp_path: Path, migrated_dsn: str) -> None:
    async with rig(tmp_path, migrated_dsn) as r:
        r.put("sepa.sta", SEPA)
        poller = r.poller(source_config(r.server, r.known_hosts, chunk_size=4096))
        r.server.drop_after = 8192
        with pytest.raises(Network):
            await poller.poll_once()
        assert r.server.drops == 1 and r.names() == ["sepa.sta"] and _lines(r) == 0
        [taken] = (await poller.poll_once()).taken
        assert taken["outcome"] == "parsed" and _lines(r) == 97


async def test_file_changing_during_download_waits(tmp_path: Path, migrated_dsn: str) -> None:
    async with rig(tmp_path, migrated_dsn) as r:
        path = r.put("growing.sta", SEPA)

        def grow(offset: int) -> None:
            if offset > 0:
                with open(path, "ab") as f:
                    f.write(b"\n")
                r.server.on_read = None

        r.server.on_read = grow
        poller = r.poller(source_config(r.server, r.known_hosts, chunk_size=4096))
        [taken] = (await poller.poll_once()).taken
        assert taken["outcome"] == "changed" and r.names() == ["growing.sta"] and _lines(r) == 0
        [taken] = (await poller.poll_once()).taken
        assert taken["outcome"] == "parsed"


async def test_too_big_and_links_out_of_the_inbox_are_refused(tmp_path: Path, migrated_dsn: str) -> None:
    async with rig(tmp_path, migrated_dsn) as r:
        r.put("huge.sta", SEPA)
        outside = tmp_path / "sftp" / "secret.txt"
        outside.write_text("not a statement")
        os.symlink("../secret.txt", r.server.inbox / "link.sta")
        os.symlink("/etc/passwd", r.server.inbox / "passwd.sta")
        poller = r.poller(source_config(r.server, r.known_hosts, max_file_size=1000))
        summary = await poller.poll_once()
        [taken] = summary.taken  # the links are never offered
        assert taken["outcome"] == "refused" and "over max_file_size 1000" in taken["error"]
        assert r.names("error") == ["huge.sta", "huge.sta.reason.txt"]
        assert r.query("SELECT count(*) FROM bank_statements_raw")[0][0] == 0
        assert sorted(p.name for p in r.server.inbox.iterdir() if p.is_symlink()) == ["link.sta", "passwd.sta"]


def test_unsafe_names() -> None:
    for name in ("../etc/passwd", "a/b.sta", "..", "x\n.sta", "a\\b", "evil..sta", ""):
        assert not safe_name(name), name
    assert safe_name("MT940_20261102.sta")


async def test_one_host_at_a_time_polls_a_source(tmp_path: Path, migrated_dsn: str) -> None:
    async with rig(tmp_path, migrated_dsn) as r:
        r.put("sepa.sta", SEPA)
        from molamd.statements import StatementStore

        other_host = StatementStore(r.database, lambda: psycopg.connect(migrated_dsn, autocommit=True))
        assert await other_host.hold_lock("bank-a-statements")
        summary = await r.poller().poll_once()
        assert summary.locked_elsewhere and r.names() == ["sepa.sta"]
        await other_host.release_lock("bank-a-statements")
        assert (await r.poller().poll_once()).taken[0]["outcome"] == "parsed"


def _sent_slice(dsn: str, amount: int, *, status: str = "sent") -> tuple[int, str]:
    """A slice of ``amount`` XOF that has reached ``status``: sent, sending (in flight), dead or failed."""
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO bank_profiles (id, name, country) VALUES ('bank-a', 'Bank A', 'SN')")
        account = conn.execute("INSERT INTO treasury_accounts (bank_profile_id, label, account_number, currency)"
                               " VALUES ('bank-a', 'main', 'ACC-1', 'XOF') RETURNING id").fetchone()[0]
        slice_id, key = conn.execute(
            "INSERT INTO payout_slices (payout_id, treasury_account_id, amount, currency, rail, beneficiary_name,"
            " beneficiary_account) VALUES ('p1', %s, %s, 'XOF', 'ach', 'Awa', 'SN08') RETURNING id, idempotency_key",
            (account, amount)).fetchone()
        for step in ("claimed", "sending"):
            conn.execute("UPDATE payout_slices SET status = %s, claimed_by = 'h', lease_until = now() + '1m'"
                         " WHERE id = %s", (step, slice_id))
        if status != "sending":
            conn.execute(_TO[status], (slice_id,))
    return slice_id, key


_TO = {
    "sent": "UPDATE payout_slices SET status = 'sent', provider_ref = 'pay_1', claimed_by = NULL,"
            " lease_until = NULL, sent_at = now() WHERE id = %s",
    "dead": "UPDATE payout_slices SET status = 'dead', last_error = 'timeout', claimed_by = NULL,"
            " lease_until = NULL WHERE id = %s",  # the bank never answered clearly: given up on
    "failed": "UPDATE payout_slices SET status = 'failed', final_at = now(), claimed_by = NULL,"
              " lease_until = NULL WHERE id = %s",
}


def _csv(key: str, amount: int) -> bytes:
    head = ("account,statement,booking_date,value_date,amount,currency,reference,bank_ref,end_to_end_id,"
            "counterparty_name,counterparty_iban,counterparty_bic,remittance,balance\n")
    return (head + f"ACC-1,1,2026-11-02,2026-11-02,-{amount},XOF,,pay_1,{key},Awa,,,payout,{100000 - amount}\n"
            + "ACC-1,1,2026-11-02,2026-11-02,5000,XOF,,dep_9,,Client,,,deposit,"
            + f"{100000 - amount + 5000}\n").encode()


async def _take_csv(r: Any, name: str, data: bytes) -> dict[str, Any]:
    r.put(name, data)
    config = source_config(r.server, r.known_hosts, kind="csv-sftp")
    [taken] = (await r.poller(config, csv_profile=MOLAMD_PROFILE).poll_once()).taken
    return taken


async def test_lines_settle_the_payouts_they_carry(tmp_path: Path, migrated_dsn: str) -> None:
    slice_id, key = _sent_slice(migrated_dsn, 15000)
    async with rig(tmp_path, migrated_dsn) as r:
        taken = await _take_csv(r, "day.csv", _csv(key, 15000))
        assert (taken["outcome"], taken["lines"], taken["matched"], taken["settled"]) == ("parsed", 2, 1, 1)
        assert r.query("SELECT status FROM payout_slices WHERE id = %s", slice_id) == [("settled",)]
        linked = r.query("SELECT payout_slice_id FROM bank_statement_lines ORDER BY line_no")
        assert linked == [(slice_id,), (None,)]
        assert r.metrics.statement_lines_unmatched.labels("bank-a")._value.get() == 1
        # A second statement carrying the same payout does not link it twice.
        again = await _take_csv(r, "again.csv", _csv(key, 15000).replace(b"2026-11-02", b"2026-11-03"))
        assert (again["outcome"], again["matched"]) == ("parsed", 0)


async def test_a_statement_settles_a_dead_slice_it_proves_paid(tmp_path: Path, migrated_dsn: str) -> None:
    slice_id, key = _sent_slice(migrated_dsn, 15000, status="dead")
    async with rig(tmp_path, migrated_dsn) as r:
        taken = await _take_csv(r, "day.csv", _csv(key, 15000))
        assert (taken["matched"], taken["settled"]) == (1, 1)
        assert r.query("SELECT status, provider_ref FROM payout_slices WHERE id = %s", slice_id) == [
            ("settled", "pay_1")]  # the bank's answer was lost: the statement's reference is kept
        [(action, actor, was)] = r.query(
            "SELECT action, actor, from_status FROM molamd_audit WHERE payout_slice_id = %s", slice_id)
        assert (action, actor, was) == ("statement_settle", "statement reconciliation", "dead")


async def test_a_slice_that_goes_dead_after_its_line_arrived_is_settled_at_the_next_poll(
    tmp_path: Path, migrated_dsn: str
) -> None:
    slice_id, key = _sent_slice(migrated_dsn, 15000, status="sending")
    async with rig(tmp_path, migrated_dsn) as r:
        taken = await _take_csv(r, "day.csv", _csv(key, 15000))
        assert (taken["matched"], taken["settled"]) == (1, 0)  # linked; in flight, so not settled yet
        with psycopg.connect(migrated_dsn) as conn:  # the dispatcher gives up on it
            conn.execute(_TO["dead"], (slice_id,))
        config = source_config(r.server, r.known_hosts, kind="csv-sftp")
        assert (await r.poller(config, csv_profile=MOLAMD_PROFILE).poll_once()).taken == []
        assert r.query("SELECT status, provider_ref FROM payout_slices WHERE id = %s", slice_id) == [
            ("settled", "pay_1")]


async def test_a_rejected_slice_is_linked_but_not_settled(tmp_path: Path, migrated_dsn: str) -> None:
    slice_id, key = _sent_slice(migrated_dsn, 15000, status="failed")
    async with rig(tmp_path, migrated_dsn) as r:
        taken = await _take_csv(r, "day.csv", _csv(key, 15000))
        assert (taken["matched"], taken["settled"]) == (1, 0)
        assert r.query("SELECT status FROM payout_slices WHERE id = %s", slice_id) == [("failed",)]


async def test_amount_that_disagrees_is_not_linked(tmp_path: Path, migrated_dsn: str) -> None:
    slice_id, key = _sent_slice(migrated_dsn, 15000)
    async with rig(tmp_path, migrated_dsn) as r:
        taken = await _take_csv(r, "day.csv", _csv(key, 14000))
        assert taken["matched"] == 0
        assert r.query("SELECT status FROM payout_slices WHERE id = %s", slice_id) == [("sent",)]


async def test_reprocess_after_a_profile_fix(tmp_path: Path, migrated_dsn: str) -> None:
    wrong = CsvProfile(delimiter=";", columns=CsvColumns(value_date="value_date", amount="amount"),
                       account="ACC-1", currency="XOF")
    async with rig(tmp_path, migrated_dsn) as r:
        r.put("day.csv", _csv("molam-slice-0", 100))
        config = source_config(r.server, r.known_hosts, kind="csv-sftp")
        [taken] = (await r.poller(config, csv_profile=wrong).poll_once()).taken
        assert taken["outcome"] == "parse_failed"
        raw_id = taken["raw_id"]
        with psycopg.connect(migrated_dsn) as conn:
            result = reprocess(conn, raw_id, MOLAMD_PROFILE)
        assert (result.outcome, result.lines) == ("parsed", 2)
        assert r.query("SELECT status, error FROM bank_statements_raw WHERE id = %s", raw_id) == [("parsed", None)]
        with psycopg.connect(migrated_dsn) as conn, pytest.raises(ValueError, match="already parsed"):
            reprocess(conn, raw_id, MOLAMD_PROFILE)


async def test_camt_source(tmp_path: Path, migrated_dsn: str) -> None:
    async with rig(tmp_path, migrated_dsn) as r:
        r.put("stmt.xml", (GENKGO / "camt053.v2.multi.statement.xml").read_bytes())
        config = source_config(r.server, r.known_hosts, kind="camt053-sftp", patterns=["*.xml"])
        [taken] = (await r.poller(config).poll_once()).taken
        assert (taken["outcome"], taken["lines"]) == ("parsed", 2)


async def test_key_auth_and_a_host_key_that_is_not_pinned(tmp_path: Path, migrated_dsn: str) -> None:
    import asyncssh
    import msgspec

    from connectors import Auth, Secret

    async with rig(tmp_path, migrated_dsn) as r:
        key = asyncssh.generate_private_key("ssh-ed25519")
        r.server.client_key = key
        config = source_config(r.server, r.known_hosts)
        with_key = msgspec.structs.replace(config, sftp=msgspec.structs.replace(
            config.sftp, password=None, private_key=Secret("file:/unused", key.export_private_key().decode())))
        r.put("sepa.sta", SEPA)
        [taken] = (await r.poller(with_key).poll_once()).taken
        assert taken["outcome"] == "parsed"

        other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
        wrong = tmp_path / "wrong_known_hosts"
        wrong.write_text(f"[{r.server.host}]:{r.server.port} {other}\n")
        r.put("next.sta", SEPA.replace(b"T089413956000001", b"T089413956000009"))
        with pytest.raises(Auth, match="host key not pinned"):
            await r.poller(source_config(r.server, wrong)).poll_once()
        assert r.names() == ["next.sta"]


async def test_same_bytes_from_two_sources_at_once_are_stored_once(tmp_path: Path, migrated_dsn: str) -> None:
    from connectors import Fetched

    path = tmp_path / "same.sta"
    path.write_bytes(SEPA)
    spooled = Fetched(path=str(path), sha256=hashlib.sha256(SEPA).digest(), size=len(SEPA))
    async with rig(tmp_path, migrated_dsn) as r:
        results = []

        async def take(source: str) -> None:
            results.append(await r.store.ingest(source=source, remote_name="same.sta", fmt="mt940", spooled=spooled,
                                                csv_profile=None))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, "source-a")
            nursery.start_soon(take, "source-b")
        assert sorted(x.outcome for x in results) == ["duplicate", "parsed"]
        assert _lines(r) == 97 and r.query("SELECT count(*) FROM bank_statements_raw")[0][0] == 1


async def test_a_download_is_cancelled_between_chunks(tmp_path: Path, migrated_dsn: str) -> None:
    import time as clock

    async with rig(tmp_path, migrated_dsn) as r:
        r.put("slow.sta", SEPA)
        r.server.on_read = lambda offset: clock.sleep(0.1)  # a slow bank: 100 ms a 1 KiB chunk, 2.5 s in all
        config = source_config(r.server, r.known_hosts, chunk_size=1024)
        poller = r.poller(config)
        [remote] = await poller.connector.list_statements()
        started = trio.current_time()
        with trio.move_on_after(0.3) as scope:
            await poller.connector.fetch(remote, str(tmp_path / "spool"))
        assert scope.cancelled_caught and trio.current_time() - started < 1.5  # not after the whole file
        r.server.on_read = None
        assert [f.name for f in await poller.connector.list_statements()] == ["slow.sta"]  # still usable
        [taken] = (await poller.poll_once()).taken
        assert taken["outcome"] == "parsed"


def _slice_of(dsn: str, profile: str, account_number: str, provider_ref: str) -> int:
    """A sent 15,000 XOF slice of ``profile``'s account, whose bank gave it ``provider_ref``."""
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO bank_profiles (id, name, country) VALUES (%s, %s, 'SN') ON CONFLICT DO NOTHING",
                     (profile, profile))
        account = conn.execute("INSERT INTO treasury_accounts (bank_profile_id, label, account_number, currency)"
                               " VALUES (%s, %s, %s, 'XOF') RETURNING id",
                               (profile, account_number, account_number)).fetchone()[0]
        slice_id = conn.execute(
            "INSERT INTO payout_slices (payout_id, treasury_account_id, amount, currency, rail, beneficiary_name,"
            " beneficiary_account) VALUES (%s, %s, 15000, 'XOF', 'ach', 'Awa', 'SN08') RETURNING id",
            (f"{profile}-{account_number}", account)).fetchone()[0]
        for step in ("claimed", "sending"):
            conn.execute("UPDATE payout_slices SET status = %s, claimed_by = 'h', lease_until = now() + '1m'"
                         " WHERE id = %s", (step, slice_id))
        conn.execute("UPDATE payout_slices SET status = 'sent', provider_ref = %s, claimed_by = NULL,"
                     " lease_until = NULL, sent_at = now() WHERE id = %s", (provider_ref, slice_id))
    return int(slice_id)


async def test_a_line_of_one_bank_never_settles_another_banks_slice(tmp_path: Path, migrated_dsn: str) -> None:
    # Two banks number their payments alike: bank B's pay_1 and bank A's pay_1 are different payments.
    other_bank = _slice_of(migrated_dsn, "bank-b", "ACC-1", "pay_1")
    other_account = _slice_of(migrated_dsn, "bank-a", "ACC-2", "pay_1")
    async with rig(tmp_path, migrated_dsn) as r:  # the source belongs to bank-a; its statement is of ACC-1
        taken = await _take_csv(r, "day.csv", _csv("no-such-key", 15000))
        assert (taken["outcome"], taken["matched"], taken["settled"]) == ("parsed", 0, 0)
        assert r.query("SELECT status FROM payout_slices WHERE id = ANY(%s) ORDER BY id",
                       [other_bank, other_account]) == [("sent",), ("sent",)]
    mine = _slice_of(migrated_dsn, "bank-a", "ACC-1", "pay_1")
    async with rig(tmp_path / "again", migrated_dsn) as r:
        taken = await _take_csv(r, "day2.csv", _csv("no-such-key", 15000).replace(b"2026-11-02", b"2026-11-04"))
        assert (taken["matched"], taken["settled"]) == (1, 1), "bank A's own slice on ACC-1 is the one it proves"
        assert r.query("SELECT status FROM payout_slices WHERE id = %s", mine) == [("settled",)]


async def test_an_endless_inbox_listing_stops_at_the_cap(tmp_path: Path, migrated_dsn: str) -> None:
    async with rig(tmp_path, migrated_dsn) as r:
        for i in range(30):
            r.put(f"s{i:02}.sta", SEPA)
        connector = SftpStatementConnector(source_config(r.server, r.known_hosts, max_listing=20))
        try:
            with pytest.raises(BadResponse, match="more than max_listing 20 entries"):
                await connector.list_statements()
        finally:
            await connector.aclose()
