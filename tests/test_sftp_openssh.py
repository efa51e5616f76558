"""Statement sources against OpenSSH's own server (9.x, chrooted internal-sftp and sftp-server), as banks run
it: keyboard-interactive logins, read-only drops, renames it denies, unreadable links, hostile names, and
known_hosts read the way OpenSSH's client reads it."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors import Auth, SftpSourceConfig, SftpStatementConnector, SourceMisconfigured
from molamd.statement_poller import PollNow
from tests.corpora import WOLPH
from tests.openssh import SSHD, OpenSshServer
from tests.statement_helpers import Rig, rig, source_config

pytestmark = pytest.mark.skipif(not os.path.exists(SSHD) or os.geteuid() != 0,
                                reason="needs OpenSSH's sshd (apt openssh-server) and root")

SEPA = (WOLPH / "mt940_tests/jejik/sns.sta").read_bytes()
SOURCE = "bank-a-statements"


def statement(n: int) -> bytes:
    """Distinct statement files (distinct bytes, so none is a duplicate of another)."""
    return SEPA.replace(b"0000000000", b"%010d" % n)


@pytest.fixture
def sshd() -> Iterator[OpenSshServer]:
    with OpenSshServer() as server:
        yield server


def config(r: Rig, server: OpenSshServer, known_hosts: Path | None = None, **sftp: object) -> SftpSourceConfig:
    return source_config(server, known_hosts or r.known_hosts, **{**server.remote(), "patterns": ["*.sta"], **sftp})


def put(server: OpenSshServer, name: str, data: bytes, owner: str | None = None) -> Path:
    path = server.inbox / name
    path.write_bytes(data)
    shutil.chown(path, owner or server.user, owner or server.user)
    return path


def skipped(r: Rig, reason: str) -> float:
    value: float = r.metrics.statement_entries_skipped.labels(SOURCE, reason)._value.get()
    return value


@pytest.mark.parametrize("subsystem", ["internal-sftp", "/usr/lib/openssh/sftp-server"])
async def test_files_are_taken_and_archived(tmp_path: Path, migrated_dsn: str, subsystem: str) -> None:
    with OpenSshServer(subsystem=subsystem) as server:
        async with rig(tmp_path, migrated_dsn, server) as r:
            put(server, "a.sta", statement(1))
            summary = await r.poller(config(r, server)).poll_once()
            assert [t["outcome"] for t in summary.taken] == ["parsed"]
            assert os.listdir(server.inbox / "archive") == ["a.sta"]


async def test_a_server_that_offers_only_keyboard_interactive_takes_the_password(
    tmp_path: Path, migrated_dsn: str
) -> None:
    with OpenSshServer(login="keyboard-interactive") as server:
        async with rig(tmp_path, migrated_dsn, server) as r:
            put(server, "a.sta", statement(1))
            summary = await r.poller(config(r, server)).poll_once()
            assert [t["outcome"] for t in summary.taken] == ["parsed"]


async def test_a_read_only_drop_is_ingested_once_and_left_alone_until_a_file_changes(
    tmp_path: Path, migrated_dsn: str, sshd: OpenSshServer
) -> None:
    async with rig(tmp_path, migrated_dsn, sshd) as r:
        for n in range(3):
            put(sshd, f"s{n}.sta", statement(n), owner="root")
        shutil.chown(sshd.inbox, "root", "root")  # the user may read the drop, never rename in it
        sshd.inbox.chmod(0o755)
        poller = r.poller(config(r, sshd))
        first = await poller.poll_once()
        assert [t["outcome"] for t in first.taken] == ["stuck"] * 3, first.taken
        assert all("cannot move it" in t["error"] for t in first.taken)
        assert r.query("SELECT count(*) FROM bank_statements_raw")[0][0] == 3
        second = await poller.poll_once()
        assert second.taken == [] and second.stuck == ["s0.sta", "s1.sta", "s2.sta"], "nothing downloaded again"
        (sshd.inbox / "s1.sta").write_bytes(statement(11))  # the bank replaces one file, a minute later
        os.utime(sshd.inbox / "s1.sta", (os.stat(sshd.inbox / "s1.sta").st_mtime + 60,) * 2)
        third = await poller.poll_once()
        assert [t["file"] for t in third.taken] == ["s1.sta"]
        assert r.query("SELECT count(*) FROM bank_statements_raw")[0][0] == 4
        retried = await (await poller.handle(PollNow(retry_stuck=True))).call()  # molamctl ... --retry-stuck
        assert sorted(t["file"] for t in retried.taken) == ["s0.sta", "s1.sta", "s2.sta"]
        assert {t["stored_as"] for t in retried.taken} == {"duplicate"}, "no line written twice"
        assert r.query("SELECT count(*) FROM bank_statements_raw")[0][0] == 4
        assert skipped(r, "stuck") == 7
        assert r.counted("stuck") == 7


async def test_one_file_that_cannot_be_moved_does_not_block_the_rest(
    tmp_path: Path, migrated_dsn: str, sshd: OpenSshServer
) -> None:
    async with rig(tmp_path, migrated_dsn, sshd) as r:
        shutil.chown(sshd.inbox, "root", "root")
        sshd.inbox.chmod(0o1777)  # sticky: only a file's owner may rename it
        old = put(sshd, "a-oldest.sta", statement(1), owner="root")
        os.utime(old, (1_000_000_000, 1_000_000_000))
        put(sshd, "b.sta", statement(2))
        put(sshd, "c.sta", statement(3))
        summary = await r.poller(config(r, sshd)).poll_once()
        assert {t["file"]: t["outcome"] for t in summary.taken} == {
            "a-oldest.sta": "stuck", "b.sta": "parsed", "c.sta": "parsed"}
        assert sorted(os.listdir(sshd.inbox / "archive")) == ["b.sta", "c.sta"]


async def test_unreadable_links_and_hostile_names_are_skipped_logged_once_and_counted(
    tmp_path: Path, migrated_dsn: str, sshd: OpenSshServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with rig(tmp_path, migrated_dsn, sshd) as r:
        private = sshd.chroot / "private"
        private.mkdir(mode=0o700)
        (private / "x.sta").write_bytes(statement(9))
        (sshd.chroot / "outside.sta").write_bytes(statement(8))
        os.symlink("../private/x.sta", sshd.inbox / "locked.sta")  # into a directory the user cannot enter
        os.symlink("loop.sta", sshd.inbox / "loop.sta")  # a loop
        os.symlink("../outside.sta", sshd.inbox / "out.sta")  # out of the inbox
        os.symlink("nowhere.sta", sshd.inbox / "gone.sta")  # dangling
        (sshd.inbox / "folder.sta").mkdir()  # a directory named like a statement
        for name in ("new\nline.sta", "esc\x1b[31m.sta", "dots..sta"):
            put(sshd, name, statement(7))
        put(sshd, "good.sta", statement(1))
        poller = r.poller(config(r, sshd))
        with caplog.at_level(logging.WARNING, logger="molamd.statements"):
            first = await poller.poll_once()
            second = await poller.poll_once()
        assert [t["file"] for t in first.taken] == ["good.sta"] and second.taken == []
        reasons = {s.name: s.reason for s in first.skipped}
        assert reasons["locked.sta"] == "unreadable"
        assert reasons["loop.sta"] == "dangling_link", "OpenSSH answers a loop with 'no such file'"
        assert reasons["out.sta"] == "link_outside" and reasons["gone.sta"] == "dangling_link"
        assert reasons["folder.sta"] == "not_a_file"
        assert reasons["new\\x0aline.sta"] == reasons["esc\\x1b[31m.sta"] == reasons["dots..sta"] == "unsafe_name"
        logged = [rec for rec in caplog.records if rec.getMessage() == "statement inbox entry skipped"]
        assert len(logged) == len(first.skipped) == 8, "each logged once, not at every poll"
        assert skipped(r, "unsafe_name") == 3 and skipped(r, "unreadable") == 1 and skipped(r, "dangling_link") == 2
        assert not any("\x1b" in rec.getMessage() + str(getattr(rec, "fields", "")) for rec in caplog.records)


async def test_known_hosts_is_read_the_way_openssh_reads_it(
    tmp_path: Path, migrated_dsn: str, sshd: OpenSshServer
) -> None:
    async with rig(tmp_path, migrated_dsn, sshd) as r:
        plain = sshd.known_hosts(tmp_path / "plain", bracketed=False)  # "127.0.0.1 KEY": port 22 only
        connector = SftpStatementConnector(config(r, sshd, known_hosts=plain))
        with pytest.raises(SourceMisconfigured, match=rf"pins no key for port {sshd.port}"):
            await connector.list_statements()
        missing = SftpStatementConnector(config(r, sshd, known_hosts=tmp_path / "none"))
        with pytest.raises(SourceMisconfigured, match="cannot read it"):
            await missing.list_statements()
        other = tmp_path / "other"
        other.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 "
                         "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
        wrong = SftpStatementConnector(config(r, sshd, known_hosts=other))
        with pytest.raises(Auth, match="host key"):
            await wrong.list_statements()
        good = SftpStatementConnector(config(r, sshd))
        assert await good.list_statements() == []
        for c in (connector, missing, wrong, good):
            await c.aclose()
