"""A statement source in the running daemon: polled on its own, driven and inspected with molamctl."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
from sandbox_sftp import SandboxSftp

from tests.conftest import daemon_toml, free_port
from tests.corpora import WOLPH

GOOD = (WOLPH / "mt940_tests/jejik/sns.sta").read_bytes()
BROKEN = (WOLPH / "mt940_tests/betterplace/sepa_snippet_broken.sta").read_bytes()
SOURCE = "bank-a-statements"


def source_toml(server: SandboxSftp, known_hosts: Path, *, poll_interval: str = "1h") -> str:
    """A statement source on the sandbox SFTP server; its password from $TEST_SFTP_PASSWORD."""
    return textwrap.dedent(f"""
        [[connectors]]
        name = "{SOURCE}"
        kind = "mt940-sftp"
        bank_profile = "bank-a"
        [connectors.sftp]
        host = "{server.host}"
        port = {server.port}
        username = "{server.user}"
        password = "env:TEST_SFTP_PASSWORD"
        known_hosts = "{known_hosts}"
        inbox = "/outgoing"
        archive = "/outgoing/archive"
        error = "/outgoing/error"
        patterns = ["*.sta"]
        stable_for = "100ms"
        poll_interval = "{poll_interval}"
        """)


def _files(d: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = d.ctl_json("statements", "list")
    return result


def test_daemon_polls_a_source_and_molamctl_shows_it(
    tmp_path: Path, short_tmp: Path, migrated_dsn: str, daemon_factory: Any
) -> None:
    server = SandboxSftp(tmp_path / "sftp", state=tmp_path / "sftp-state").start()
    try:
        known_hosts = server.known_hosts(tmp_path / "known_hosts")
        (server.inbox / "good.sta").write_bytes(GOOD)
        (server.inbox / "broken.sta").write_bytes(BROKEN)
        metrics_port = free_port()
        d = daemon_factory(daemon_toml(short_tmp, dsn=migrated_dsn, metrics_port=metrics_port)
                           + source_toml(server, known_hosts), env={"TEST_SFTP_PASSWORD": server.password})
        deadline = time.monotonic() + 30
        while len(_files(d)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        by_name = {f["remote_name"]: f for f in _files(d)}
        assert by_name["good.sta"]["status"] == "parsed" and by_name["good.sta"]["lines"] == 2
        assert by_name["broken.sta"]["status"] == "parse_failed"
        assert ":25: after the entries" in by_name["broken.sta"]["error"]
        assert sorted(p.name for p in (server.inbox / "archive").iterdir()) == ["good.sta"]
        assert "broken.sta.reason.txt" in {p.name for p in (server.inbox / "error").iterdir()}

        table = d.ctl("statements")
        assert table.returncode == 0 and "good.sta" in table.stdout and "STATUS" in table.stdout
        shown = d.ctl_json("statements", "show", str(by_name["good.sta"]["id"]))
        assert [line["amount"] for line in shown["lines"]] == ["-20.00", "-5.00"]

        again = d.ctl("statements", "reprocess", str(by_name["good.sta"]["id"]))
        assert again.returncode == 1 and "already parsed" in again.stderr
        retried = d.ctl_json("statements", "reprocess", str(by_name["broken.sta"]["id"]))
        assert retried["outcome"] == "parse_failed"  # the parser has not changed: same verdict, nothing lost
        assert d.ctl("statements", "show", "999999").returncode == 1

        (server.inbox / "next.sta").write_bytes(GOOD.replace(b"0000000000", b"0000000001"))
        summary = d.ctl_json("statements", "poll", SOURCE)
        [taken] = summary["taken"]
        assert taken["outcome"] == "parsed" and taken["moved_to"] == "/outgoing/archive/next.sta"
        assert d.ctl("statements", "poll", "no-such-source").returncode == 1

        [row] = [c for c in d.ctl_json("connectors") if c["name"] == SOURCE]
        assert row["kind"] == "mt940-sftp" and row["state"] == "running" and row["health"] == "ok"
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert f'molamd_statement_files_total{{outcome="parsed",source="{SOURCE}"}} 2.0' in text
        assert f'molamd_statement_lines_total{{source="{SOURCE}"}} 4.0' in text
        assert 'molamd_statement_lines_unmatched{bank_profile="bank-a"} 4.0' in text
        assert d.stop() == 0
        logs = [e for e in d.log_entries() if e.get("message") == "statement file taken"]
        assert {e["fields"]["file"] for e in logs} == {"good.sta", "broken.sta", "next.sta"}
        assert json.dumps(logs).count(server.password) == 0
    finally:
        server.stop()


def test_a_failing_operator_poll_is_a_reply_not_a_crash(
    tmp_path: Path, short_tmp: Path, migrated_dsn: str, daemon_factory: Any
) -> None:
    """A wrong password, then the server down: each `statements poll` answers the error; the source keeps its
    incarnation and state, and polls again once the cause is gone."""
    server = SandboxSftp(tmp_path / "sftp", state=tmp_path / "sftp-state").start()
    try:
        known_hosts = server.known_hosts(tmp_path / "known_hosts")
        d = daemon_factory(daemon_toml(short_tmp, dsn=migrated_dsn) + source_toml(server, known_hosts),
                           env={"TEST_SFTP_PASSWORD": "not-the-password"})
        before = d.ctl_json("connector", SOURCE)
        for _ in range(6):
            reply = d.ctl("statements", "poll", SOURCE)
            assert reply.returncode == 1 and "poll failed" in reply.stderr and "login refused" in reply.stderr
        after = d.ctl_json("connector", SOURCE)
        assert (after["state"], after["incarnation"], after["restarts"]) == (
            "running", before["incarnation"], before["restarts"])
        assert after["health"] == "failing" and "login refused" in after["last_error"]
        server.stop()
        for _ in range(3):
            reply = d.ctl("statements", "poll", SOURCE)
            assert reply.returncode == 1 and "poll failed" in reply.stderr
        assert d.ctl_json("connector", SOURCE)["incarnation"] == before["incarnation"]
        assert d.ctl("status").returncode == 0
        assert d.stop() == 0
    finally:
        server.stop()


def test_with_a_local_key_the_daemon_stores_files_and_private_line_fields_sealed(
    tmp_path: Path, short_tmp: Path, migrated_dsn: str, daemon_factory: Any
) -> None:
    import base64
    import os
    import subprocess

    server = SandboxSftp(tmp_path / "sftp", state=tmp_path / "sftp-state").start()
    try:
        known_hosts = server.known_hosts(tmp_path / "known_hosts")
        (server.inbox / "good.sta").write_bytes(GOOD)
        (server.inbox / "broken.sta").write_bytes(BROKEN)
        sealing = '\n[encryption]\nstatements = true\nlocal_key = "env:TEST_LOCAL_KEY"\n'
        d = daemon_factory(daemon_toml(short_tmp, dsn=migrated_dsn) + source_toml(server, known_hosts) + sealing,
                           env={"TEST_SFTP_PASSWORD": server.password,
                                "TEST_LOCAL_KEY": base64.b64encode(os.urandom(32)).decode()})
        deadline = time.monotonic() + 30
        while len(_files(d)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        by_name = {f["remote_name"]: f for f in _files(d)}
        assert by_name["good.sta"]["status"] == "parsed" and by_name["good.sta"]["lines"] == 2
        shown = d.ctl_json("statements", "show", str(by_name["good.sta"]["id"]))
        assert shown["sealed"] and [line["amount"] for line in shown["lines"]] == ["-20.00", "-5.00"]
        retried = d.ctl_json("statements", "reprocess", str(by_name["broken.sta"]["id"]))
        assert retried["outcome"] == "parse_failed", "a sealed file is parsed again from its unsealed bytes"
        assert d.ctl_json("statements", "rewrap") == {"sealed": 2, "rewrapped": 0}, "one local key, no versions"
        dump = subprocess.run(["pg_dump", "--data-only", "--table=bank_statement*", migrated_dsn],
                              capture_output=True, check=True).stdout
        assert GOOD[:200] not in dump and GOOD[:200].hex().encode() not in dump, "the file is not in clear"
        for line in GOOD.decode("latin-1").splitlines():
            if line.startswith(":86:") and len(line) > 12:
                assert line[4:].encode("latin-1") not in dump, "a line's details are not in clear"
        assert d.stop() == 0
    finally:
        server.stop()
