"""The FileBatcher's pain.002 intake over SFTP (the sandbox's server, the real store in PostgreSQL), file by file:
a report over max_file_size or over the pain.002 bound at the head of the drop, or one still being written, no
longer stops the reports behind it; a refused one goes to error/ with the reason and is never stored. Downloads
are spooled in the daemon's state directory, and what a killed run left there is cleared at start."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import psycopg
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sandbox_sftp import SandboxSftp

from actors import FileBatcher
from connectors import FileChannelConnector
from molamd import db
from molamd.metrics import Metrics
from molamd.payment_files import FileStore
from molamd.payouts import ClaimOwner
from molamd.spool import spool_directory
from tests.db_helpers import running_database
from tests.file_helpers import CONNECTOR
from tests.test_file_submission import channel
from tests.test_payment_reports import recorded_file, report, states


@pytest.fixture
async def database(migrated_dsn: str) -> AsyncIterator[db.Database]:
    async with running_database(migrated_dsn) as database:
        yield database


@pytest.fixture
def bank(tmp_path: Path) -> Iterator[SandboxSftp]:
    root = tmp_path / "bank"
    for folder in ("inbox", "outbox/archive", "outbox/error"):
        (root / folder).mkdir(parents=True)
    server = SandboxSftp(root, state=tmp_path / "state", password="pw").start()
    yield server
    server.stop()


def intake(tmp_path: Path, server: SandboxSftp, database: db.Database, *,
           max_file_size: int = 256 * 1024 * 1024) -> tuple[FileBatcher, Metrics]:
    connector, key = channel(tmp_path, server)
    config = connector.config
    assert config.sftp is not None
    config = msgspec.structs.replace(config, sftp=msgspec.structs.replace(
        config.sftp, archive="/outbox/archive", error="/outbox/error", max_file_size=max_file_size))
    metrics = Metrics()

    def sign(label: str, data: bytes) -> bytes:
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    owner = ClaimOwner(lambda: psycopg.connect(database.section.dsn))
    spool = tmp_path / "state-dir" / "spool"
    files = FileBatcher(config, FileChannelConnector(config), FileStore(database, "test-host", owner), sign,
                        files=metrics.files, spool_dir=str(spool))
    files._clear_spool()  # as it starts
    return files, metrics


def drop(server: SandboxSftp, name: str, data: bytes | None = None, *, size: int = 0, age: float = 3600) -> Path:
    """A file in the bank's report drop, ``age`` seconds old (older ones are listed first)."""
    path = server.root / "outbox" / name
    if data is None:
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: its size is listed, nothing is read
    else:
        path.write_bytes(data)
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def stored(dsn: str) -> list[tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT remote_name, octet_length(content) FROM payment_status_reports"
                            " ORDER BY id").fetchall()


def folder(server: SandboxSftp, name: str) -> list[str]:
    return sorted(p.name for p in (server.root / "outbox" / name).iterdir())


async def test_a_report_over_max_file_size_at_the_head_of_the_drop_stops_nothing(
    tmp_path: Path, migrated_dsn: str, database: db.Database, bank: SandboxSftp
) -> None:
    _, ids = recorded_file(migrated_dsn, 2, "MOLAM-I1")
    drop(bank, "a-huge.xml", b"<" * 5000, age=7200)
    drop(bank, "b-report.xml", report("MOLAM-I1", txs=[(f"molam-slice-{i}", "ACSC", None) for i in ids]))
    files, metrics = intake(tmp_path, bank, database, max_file_size=4096)
    await files._take_reports()
    assert {s for s, _ in states(migrated_dsn, ids).values()} == {"settled"}, "the report behind it applied"
    assert folder(bank, "error") == ["a-huge.xml", "a-huge.xml.reason.txt"]
    assert "over max_file_size 4096" in (bank.root / "outbox/error/a-huge.xml.reason.txt").read_text()
    assert folder(bank, "archive") == ["b-report.xml"]
    assert [name for name, _ in stored(migrated_dsn)] == ["b-report.xml"], "a refused file is never stored"
    assert metrics.files.reports.labels(CONNECTOR, "refused")._value.get() == 1
    await files._take_reports()  # and the next pass finds nothing left to trip on
    assert os.listdir(files._spool) == []
    await files.channel.aclose()


async def test_a_report_over_the_pain002_bound_is_refused_unread(
    tmp_path: Path, migrated_dsn: str, database: db.Database, bank: SandboxSftp
) -> None:
    """Under max_file_size (256 MiB) but past what pain.002 parsing reads (64 MiB): before, 65 MiB of junk were
    downloaded and stored whole in the append-only report table."""
    from connectors.iso20022._pain002 import MAX_BYTES

    drop(bank, "junk.xml", size=MAX_BYTES + 1024 * 1024)
    files, _ = intake(tmp_path, bank, database)
    await files._take_reports()
    assert stored(migrated_dsn) == []
    assert folder(bank, "error") == ["junk.xml", "junk.xml.reason.txt"]
    assert "pain.002" in (bank.root / "outbox/error/junk.xml.reason.txt").read_text() or \
        str(MAX_BYTES) in (bank.root / "outbox/error/junk.xml.reason.txt").read_text()
    await files.channel.aclose()


async def test_a_report_still_being_written_waits_and_the_ones_behind_it_are_taken(
    tmp_path: Path, migrated_dsn: str, database: db.Database, bank: SandboxSftp
) -> None:
    _, ids = recorded_file(migrated_dsn, 1, "MOLAM-I2")
    growing = drop(bank, "a-growing.xml", b"<Document>", age=7200)
    drop(bank, "b-report.xml", report("MOLAM-I2", txs=[(f"molam-slice-{ids[0]}", "RJCT", "AC04")]))
    files, _ = intake(tmp_path, bank, database)
    listed = await files.channel.pending_reports()
    assert [r.name for r in listed] == ["a-growing.xml", "b-report.xml"]
    growing.write_bytes(growing.read_bytes() + b"<CstmrPmtStsRpt>")  # the bank is still writing it
    for remote in listed:
        await files._take_report(remote)
    assert states(migrated_dsn, ids)[ids[0]][0] == "failed"
    assert folder(bank, "archive") == ["b-report.xml"] and folder(bank, "error") == []
    assert growing.exists() and not files._stuck, "left in the drop, and taken once it is whole"
    await files.channel.aclose()


def test_a_download_a_killed_run_left_in_the_spool_is_cleared_at_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()  # its pid is free now: the daemon that spooled under it is gone
    spool = tmp_path / "state" / "spool"
    spool.mkdir(parents=True)
    left = {f"molamd-report-{CONNECTOR}-{killed.pid}-k1ll3d": False,  # a killed daemon's: removed
            f"molamd-report-{CONNECTOR}-{os.getpid()}-earlier": False,  # this process's earlier incarnation
            f"molamd-report-other-files-{os.getpid()}-running": True,  # another connector of this daemon
            f"molamd-report-{CONNECTOR}-{os.getppid()}-alive": True,  # a live daemon's, in progress
            "notes.txt": True}
    for name in left:
        (spool / name).write_bytes(b"<Document>bank data</Document>")
    files = FileBatcher.__new__(FileBatcher)
    files._spool, files.name = str(spool), CONNECTOR
    files._spool_prefix = f"molamd-report-{CONNECTOR}-{os.getpid()}-"
    files._clear_spool()
    assert sorted(os.listdir(spool)) == sorted(name for name, kept in left.items() if kept)
    fresh = tmp_path / "new" / "spool"
    files._spool = str(fresh)
    files._clear_spool()
    assert fresh.is_dir() and fresh.stat().st_mode & 0o777 == 0o700


def test_the_spool_is_in_the_daemons_state_directory() -> None:
    assert spool_directory("/srv/spool", {"STATE_DIRECTORY": "/var/lib/molamd"}) == "/srv/spool"
    assert spool_directory("", {"STATE_DIRECTORY": "/var/lib/molamd:/var/lib/other"}) == "/var/lib/molamd/spool"
    assert spool_directory("", {"XDG_STATE_HOME": "/home/ops/.state"}) == "/home/ops/.state/molamd/spool"
    assert spool_directory("", {"HOME": "/home/ops"}) == "/home/ops/.local/state/molamd/spool"
