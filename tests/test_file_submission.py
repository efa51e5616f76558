"""Submitting a recorded file over SFTP, broken at each step: before the upload, after the write, at the rename
(refused, or the connection dropped before or after it), and after the upload but before it is marked. Every
resumption sends the recorded bytes under the recorded name: never a second file with other ids, never a
file of ours overwritten, and a stranger's file under our name never replaced."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sandbox_sftp import SandboxSftp

from actors import Waiting
from connectors import (
    FileChannelConfig,
    FileChannelConnector,
    Network,
    PayoutSlice,
    Prepared,
    UploadRefused,
    decode_hook,
)
from molamd import payment_files
from molamd.payouts import OWNER_NAMESPACE
from tests.file_helpers import CONNECTOR, batched, self_signed
from tests.openssh import SSHD, OpenSshServer


@pytest.fixture
def bank(tmp_path: Path) -> Iterator[SandboxSftp]:
    root = tmp_path / "bank"
    (root / "inbox").mkdir(parents=True)
    (root / "outbox").mkdir()
    server = SandboxSftp(root, state=tmp_path / "state", password="pw").start()
    yield server
    server.stop()


def channel(tmp_path: Path, server: SandboxSftp) -> tuple[FileChannelConnector, rsa.RSAPrivateKey]:
    key, cert = self_signed("molam")
    (tmp_path / "molam.pem").write_bytes(cert)
    config = msgspec.convert({
        "kind": "iso20022", "name": CONNECTOR, "bank_profile": "bank-c",
        "iso20022": {"key_label": "k", "certificate": str(tmp_path / "molam.pem"), "initiating_party": "Molam",
                     "debtor_name": "Molam", "debtor_town": "Dakar", "debtor_country": "SN"},
        "cutoffs": {"country": "SN", "timezone": "Africa/Dakar", "times": ["15:00"]},
        "sftp": {"host": "127.0.0.1", "port": server.port, "username": "bank", "password": "env:X",
                 "known_hosts": str(server.known_hosts(tmp_path / "known_hosts")), "inbox": "/outbox",
                 "connect_timeout": "5s"},
    }, FileChannelConfig, dec_hook=decode_hook)
    options = msgspec.structs.replace(config.sftp, password=config.sftp.password.with_value("pw"))  # type: ignore[union-attr]
    return FileChannelConnector(msgspec.structs.replace(config, sftp=options)), key


def record(dsn: str, connector: FileChannelConnector, key: rsa.RSAPrivateKey, count: int = 4) -> Any:
    _, account = batched(dsn, count)
    with psycopg.connect(dsn) as conn:

        def build(file_id: int, slices: list[PayoutSlice], created: dt.datetime) -> Prepared:
            f = connector.payment_file(file_id, slices, dt.date(2026, 12, 3), created)
            return connector.prepare(f, lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
                                     connector.certificate_key())

        recorded = payment_files.record_file(conn, CONNECTOR, "pain.001.001.09", Waiting(
            debtor_account=account, currency="XOF", count=count, oldest_seconds=9), count, build)
    assert recorded.file is not None
    return recorded.file


def resumed(dsn: str) -> list[Any]:
    """What a new incarnation (lock key 2, held) finds to upload; the previous one's lease is over."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_lock(%s, 2)", (OWNER_NAMESPACE,))
        conn.execute("UPDATE payment_files SET upload_lease = NULL")
        return payment_files.to_upload(conn, CONNECTOR, "host#2", 2, 60)


def at_the_bank(server: SandboxSftp) -> dict[str, bytes]:
    inbox = server.root / "inbox"
    return {p.name: p.read_bytes() for p in sorted(inbox.iterdir())}


async def submit(connector: FileChannelConnector, s: Any) -> Any:
    return await connector.submit(s.file_name, s.content, s.signature_name, s.signature)


async def test_a_crash_before_the_upload_resumes_from_the_record(tmp_path: Path, migrated_dsn: str,
                                                                 bank: SandboxSftp) -> None:
    connector, key = channel(tmp_path, bank)
    recorded = record(migrated_dsn, connector, key)
    [again] = resumed(migrated_dsn)  # the recording process died before it uploaded anything
    assert (again.file_id, again.msg_id, again.content) == (recorded.file_id, recorded.msg_id, recorded.content)
    await submit(connector, again)
    assert at_the_bank(bank) == {recorded.file_name: recorded.content}
    await connector.aclose()


@pytest.mark.parametrize("fault", ["drop_before_rename", "drop_after_rename", "refuse_rename"])
async def test_a_broken_rename_resumes_with_the_same_bytes_under_the_same_name(
    tmp_path: Path, migrated_dsn: str, bank: SandboxSftp, fault: str
) -> None:
    connector, key = channel(tmp_path, bank)
    recorded = record(migrated_dsn, connector, key)
    setattr(bank, fault, 1)
    with pytest.raises(UploadRefused if fault == "refuse_rename" else Network):
        await submit(connector, recorded)
    seen = at_the_bank(bank)
    if fault == "drop_after_rename":
        assert seen == {recorded.file_name: recorded.content}, "renamed into place before the line dropped"
    elif fault == "drop_before_rename":
        assert seen == {f".{recorded.file_name}.part": recorded.content}, "written, not yet in place"
    else:
        assert seen == {}, "a refused rename leaves nothing behind"
    [again] = resumed(migrated_dsn)
    done = await submit(connector, again)
    assert at_the_bank(bank) == {recorded.file_name: recorded.content}, "the one file, and no leftover"
    if fault == "drop_after_rename":
        assert "already in place" in done.detail
    await connector.aclose()


async def test_a_crash_after_the_upload_before_it_is_marked_sends_nothing_new(
    tmp_path: Path, migrated_dsn: str, bank: SandboxSftp
) -> None:
    connector, key = channel(tmp_path, bank)
    recorded = record(migrated_dsn, connector, key)
    await submit(connector, recorded)  # and the process dies before payment_files says 'uploaded'
    [again] = resumed(migrated_dsn)
    done = await submit(connector, again)
    assert "already in place" in done.detail
    assert at_the_bank(bank) == {recorded.file_name: recorded.content}
    bank.take_at_once, bank.taken = True, bank.root / "taken"  # a bank that takes its files at once
    bank.taken.mkdir()
    (bank.root / "inbox" / recorded.file_name).rename(bank.taken / recorded.file_name)
    [third] = resumed(migrated_dsn)
    done = await submit(connector, third)  # gone from the inbox: sent again, byte for byte (the bank says DU01)
    assert (bank.taken / recorded.file_name).read_bytes() == recorded.content
    assert "taken from the inbox" in done.detail
    with psycopg.connect(migrated_dsn) as conn:
        files = conn.execute("SELECT count(*), count(DISTINCT msg_id) FROM payment_files").fetchone()
    assert files == (1, 1), "one file, one MsgId, however many times it went"
    await connector.aclose()


async def test_a_strangers_file_under_our_name_is_never_overwritten(
    tmp_path: Path, migrated_dsn: str, bank: SandboxSftp
) -> None:
    connector, key = channel(tmp_path, bank)
    recorded = record(migrated_dsn, connector, key)
    (bank.root / "inbox" / recorded.file_name).write_bytes(b"someone else's file")
    with pytest.raises(UploadRefused, match="not overwritten"):
        await submit(connector, recorded)
    assert (bank.root / "inbox" / recorded.file_name).read_bytes() == b"someone else's file"
    assert hashlib.sha256(recorded.content).digest() != hashlib.sha256(b"someone else's file").digest()
    await connector.aclose()


def test_a_killed_uploaders_file_is_taken_at_once_and_a_live_ones_never(
    tmp_path: Path, migrated_dsn: str, bank: SandboxSftp
) -> None:
    connector, key = channel(tmp_path, bank)
    recorded = record(migrated_dsn, connector, key)
    first = psycopg.connect(migrated_dsn, autocommit=True)
    first.execute("SELECT pg_advisory_lock(%s, 1)", (OWNER_NAMESPACE,))
    [taken] = payment_files.to_upload(first, CONNECTOR, "host#1", 1, 600)
    assert taken.file_id == recorded.file_id
    with psycopg.connect(migrated_dsn) as other:
        other.execute("SELECT pg_advisory_lock(%s, 2)", (OWNER_NAMESPACE,))
        assert payment_files.to_upload(other, CONNECTOR, "host#2", 2, 600) == [], "its uploader is alive"
    first.close()  # killed mid-upload: its session, and its lock, are gone
    with psycopg.connect(migrated_dsn) as other:
        other.execute("SELECT pg_advisory_lock(%s, 2)", (OWNER_NAMESPACE,))
        [again] = payment_files.to_upload(other, CONNECTOR, "host#2", 2, 600)
    assert (again.file_id, again.content, again.upload_attempts) == (recorded.file_id, recorded.content, 3)


@pytest.mark.skipif(not os.path.exists(SSHD), reason="needs OpenSSH's sshd (scripts/setup installs it)")
@pytest.mark.parametrize("subsystem", ["internal-sftp", "/usr/lib/openssh/sftp-server"])
async def test_uploads_and_reports_against_openssh(tmp_path: Path, migrated_dsn: str, subsystem: str) -> None:
    """The same submission against OpenSSH's own server, chrooted internal-sftp and sftp-server: in place with
    our bytes and nothing else left behind, a second upload finding it in place, a stranger's file under our
    name refused; a report listed, fetched and archived."""
    with OpenSshServer(subsystem=subsystem) as server:
        known_hosts = server.known_hosts(tmp_path / "known_hosts")
        key, cert = self_signed("molam")
        (tmp_path / "molam.pem").write_bytes(cert)
        config = msgspec.convert({
            "kind": "iso20022", "name": CONNECTOR, "bank_profile": "bank-c",
            "iso20022": {"key_label": "k", "certificate": str(tmp_path / "molam.pem"), "initiating_party": "Molam",
                         "debtor_name": "Molam", "debtor_town": "Dakar", "debtor_country": "SN",
                         "upload_dir": server.remote_uploads},
            "cutoffs": {"country": "SN", "timezone": "Africa/Dakar", "times": ["15:00"]},
            "sftp": {"host": server.host, "port": server.port, "username": server.user, "password": "env:X",
                     "known_hosts": str(known_hosts), **server.remote(), "stable_for": "0s"},
        }, FileChannelConfig, dec_hook=decode_hook)
        assert config.sftp is not None and config.sftp.password is not None
        options = msgspec.structs.replace(config.sftp, password=config.sftp.password.with_value(server.password))
        connector = FileChannelConnector(msgspec.structs.replace(config, sftp=options))
        recorded = record(migrated_dsn, connector, key)
        done = await submit(connector, recorded)
        assert done.detail == "" and done.path.endswith(recorded.file_name)
        assert {p.name: p.read_bytes() for p in server.uploads.iterdir()} == {recorded.file_name: recorded.content}
        assert (await submit(connector, recorded)).detail.startswith("already in place")
        (server.uploads / recorded.file_name).write_bytes(b"a stranger's file")
        with pytest.raises(UploadRefused, match="not overwritten"):
            await submit(connector, recorded)
        report = b'<?xml version="1.0"?><Document><CstmrPmtStsRpt/></Document>'
        (server.inbox / "pain002-1.xml").write_bytes(report)
        [listed] = await connector.pending_reports()
        fetched = await connector.fetch_report(listed, str(tmp_path / "report"))
        assert fetched.sha256 == hashlib.sha256(report).digest()
        await connector.done_report(listed)
        assert [p.name for p in (server.inbox / "archive").iterdir()] == ["pain002-1.xml"]
        assert (await connector.healthcheck()).ok
        await connector.aclose()
