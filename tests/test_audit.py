"""Every operator command leaves one audit row naming the caller (SO_PEERCRED); pure reads leave none."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.conftest import connector_toml
from tests.payout_helpers import wait_for
from tests.test_control import as_nobody

OPERATOR_COMMANDS = [
    ("pause", {"name": "alpha"}), ("resume", {"name": "alpha"}), ("drain", {"name": "alpha"}),
    ("restart", {"name": "beta"}), ("force-open", {"name": "alpha"}), ("reset-circuit", {"name": "alpha"}),
    ("set-rate", {"name": "alpha", "rate": 5.0}), ("reload", {}), ("dlq-retry", {"id": 999}),
    ("dlq-drop", {"id": 999, "reason": "test"}), ("payouts-release", {"id": 999, "reason": "checked with the bank"}),
    ("payouts-retry", {"all_scheduled": True}),
]
READS = [("status", {}), ("connectors", {}), ("dlq-list", {}), ("payouts-in-doubt", {}), ("audit", {})]


def test_each_operator_command_leaves_one_row_with_the_callers_uid(daemon_factory: Any, migrated_dsn: str) -> None:
    d = daemon_factory(dsn=migrated_dsn, connectors=connector_toml("alpha") + connector_toml("beta"),
                       control_extra='socket_mode = "0666"\noperator_group = "nogroup"')
    requests = [{"id": i, "cmd": cmd, "args": args} for i, (cmd, args) in enumerate(OPERATOR_COMMANDS + READS)]
    replies = as_nobody(d.socket, requests)[1:]
    assert all(r is not None for r in replies)
    by_cmd = {cmd: reply for (cmd, _), reply in zip(OPERATOR_COMMANDS + READS, replies, strict=True)}
    assert by_cmd["pause"]["ok"] and by_cmd["dlq-list"]["ok"] and not by_cmd["dlq-drop"]["ok"]
    with psycopg.connect(migrated_dsn) as conn:
        rows = conn.execute("SELECT action, uid, pid IS NOT NULL, ok, arguments FROM molamd_audit"
                            " WHERE action LIKE 'command:%' ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [f"command:{cmd}" for cmd, _ in OPERATOR_COMMANDS], "one row each, no reads"
    assert {(r[1], r[2]) for r in rows} == {(65534, True)}, "the caller's uid and pid"
    assert dict((r[0], r[3]) for r in rows)["command:dlq-drop"] is False, "a refused command is audited too"
    assert dict((r[0], r[4]) for r in rows)["command:set-rate"] == {"name": "alpha", "rate": 5.0}
    listed = d.ctl_json("audit")
    assert len(listed) == len(OPERATOR_COMMANDS) and "uid 65534" in listed[0]["actor"]
    assert d.stop() == 0


def test_reads_for_the_read_only_group_writes_for_operators(daemon_factory: Any, migrated_dsn: str) -> None:
    d = daemon_factory(dsn=migrated_dsn, connectors=connector_toml("alpha"),
                       control_extra='socket_mode = "0666"\nreadonly_group = "nogroup"')
    _, dlq_list, poll, show = as_nobody(d.socket, [
        {"id": 1, "cmd": "dlq-list"}, {"id": 2, "cmd": "statements-poll", "args": {"id": "alpha"}},
        {"id": 3, "cmd": "payouts-show", "args": {"id": 1}}])
    assert dlq_list["ok"] is True, "listing the DLQ changes nothing: a read"
    assert poll["error"]["code"] == "forbidden", "polling moves files on the bank's server: an operator command"
    assert show["error"]["code"] == "not_found", "payouts show is a read (no such slice here)"
    assert d.stop() == 0


def test_bank_calls_and_beneficiary_data_are_for_operators(daemon_factory: Any, migrated_dsn: str) -> None:
    """``health NAME`` reaches the bank: operators only. ``logs NAME`` and ``payouts show`` are reads, but a
    reader sees them without request and response bodies (masked accounts, amounts, bank answers)."""
    d = daemon_factory(dsn=migrated_dsn, connectors=connector_toml("alpha"),
                       control_extra='socket_mode = "0666"\nreadonly_group = "nogroup"')
    wait_for(lambda: d.ctl_json("logs", "alpha"), 20, "a health check logged")
    full = d.ctl_json("logs", "alpha")
    assert "response" in full[0], "an operator sees the whole row"
    _, health, logs = as_nobody(d.socket, [
        {"id": 1, "cmd": "health", "args": {"name": "alpha"}}, {"id": 2, "cmd": "logs", "args": {"name": "alpha"}}])
    assert health["error"]["code"] == "forbidden" and "operator access" in health["error"]["message"]
    assert logs["ok"] is True and logs["result"], "a reader may list the calls"
    assert all("request" not in row and "response" not in row for row in logs["result"])
    assert logs["result"][0]["masked"] == "request and response need operator access"
    assert d.stop() == 0
