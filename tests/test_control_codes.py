"""Error replies say what is true, with a code a script can act on: ``unsupported`` for a command the target does
not take (a statement source is no payment connector), ``final`` for a slice already final, ``not_in_doubt`` for
a slice bound to no scope; ``busy`` stays for what a retry may fix (a slice in flight)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from sandbox_sftp import SandboxSftp

from tests.conftest import connector_toml, daemon_toml
from tests.payout_helpers import seed
from tests.test_statement_daemon import SOURCE, source_toml


def _error(d: Any, *args: str) -> dict[str, Any]:
    done = d.ctl("--json", *args)
    assert done.returncode == 1, (args, done.stdout, done.stderr)
    error: dict[str, Any] = json.loads(done.stdout)
    return error


def test_operator_commands_on_a_statement_source_are_unsupported_and_slices_say_final(
    tmp_path: Path, short_tmp: Path, migrated_dsn: str, daemon_factory: Any
) -> None:
    server = SandboxSftp(tmp_path / "sftp", state=tmp_path / "sftp-state").start()
    try:
        known_hosts = server.known_hosts(tmp_path / "known_hosts")
        d = daemon_factory(daemon_toml(short_tmp, dsn=migrated_dsn, connectors=connector_toml("alpha"))
                           + source_toml(server, known_hosts), env={"TEST_SFTP_PASSWORD": server.password})
        for command in (("pause", SOURCE), ("resume", SOURCE), ("drain", SOURCE), ("health", SOURCE),
                        ("force-open", SOURCE), ("reset-circuit", SOURCE), ("set-rate", SOURCE, "5")):
            error = _error(d, *command)
            assert error["code"] == "unsupported", (command, error)
            assert "statement source" in error["message"] and "not running" not in error["message"], error
        everyone = d.ctl_json("pause")["connectors"]
        assert everyone == {"alpha": {"dispatch": "paused"}}, "pausing every connector leaves the sources out"

        settled, failed, unbound, in_flight = seed(migrated_dsn, 4, prefix="final")
        with psycopg.connect(migrated_dsn) as conn:
            for slice_id, final in ((settled, "settled"), (failed, "failed"), (in_flight, "sending")):
                conn.execute("UPDATE payout_slices SET status = 'claimed', claimed_by = 'x',"
                             " lease_until = now() + interval '1h', bound_scope = 'alpha', bound_at = now()"
                             " WHERE id = %s", (slice_id,))
                conn.execute("UPDATE payout_slices SET status = 'sending' WHERE id = %s", (slice_id,))
                if final != "sending":
                    conn.execute("UPDATE payout_slices SET status = %s, final_at = now(), claimed_by = NULL,"
                                 " lease_until = NULL WHERE id = %s", (final, slice_id))
        for slice_id, code, says in ((settled, "final", "settled"), (failed, "final", "failed"),
                                     (unbound, "not_in_doubt", "not bound"), (in_flight, "busy", "sending")):
            error = _error(d, "payouts", "release", str(slice_id), "--reason", "checked with the bank")
            assert error["code"] == code and says in error["message"], (slice_id, error)
        assert d.stop() == 0
    finally:
        server.stop()
