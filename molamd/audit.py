"""The audit trail: one API every writer uses, so an auditor reads one story.

Three kinds of entry (design §4, §6):

- **bank calls** (``bank_connector_logs``): every payment, status, health call, sanitized (no secrets, accounts
  masked), written with the result they produced;
- **payout state changes** the daemon decides outside a bank's answer (``molamd_audit``): a slice settled by a
  statement line, freed from an idempotency scope, retried or dropped from the DLQ;
- **operator actions** (``molamd_audit``): every command that changes anything, with the caller's identity read
  from SO_PEERCRED (uid, user name, pid), its arguments (secrets masked), and whether it succeeded.

``molamd_audit`` is append-only in the database (a trigger refuses updates and deletes).
"""

from __future__ import annotations

import pwd
import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from psycopg.types.json import Jsonb

from connectors import REDACTED, CallRecord

from .db import dict_rows


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """Who did it: the peer of the control socket (SO_PEERCRED), or the daemon itself."""

    uid: int | None = None
    pid: int | None = None
    user: str | None = None
    via: str = "molamctl"

    @property
    def label(self) -> str:
        if self.uid is None:
            return self.via
        return f"{self.user or 'uid ' + str(self.uid)} (uid {self.uid}, pid {self.pid}) via {self.via}"


def identity(uid: int, pid: int, via: str = "molamctl") -> Identity:
    """The identity of a local peer; the user name from the password database when it has one."""
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None
    return Identity(uid=uid, pid=pid, user=user, via=via)


_SECRETISH = re.compile(r"secret|password|token|pin|key", re.IGNORECASE)


def masked(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Command arguments as they go into the audit row: anything that names a secret is shown as ``***``."""
    return {k: (REDACTED if _SECRETISH.search(k) and v is not None else v) for k, v in arguments.items()}


# -- writing ------------------------------------------------------------------------------------------


def _jsonb_text(value: dict[str, object] | None) -> str | None:
    """JSON text PostgreSQL's jsonb accepts: it refuses \\u0000, which a garbled bank answer can carry."""
    if value is None:
        return None
    return _json.encode(value).decode().replace("\\u0000", "\\\\u0000")


_json = msgspec.json.Encoder()


def bank_calls(conn: Any, host: str, records: Sequence[CallRecord]) -> None:
    """Bank calls, one INSERT for the whole batch (arrays unnested server-side)."""
    if not records:
        return
    conn.execute(
        "INSERT INTO bank_connector_logs (host_id, connector_name, trace_id, operation, duration_seconds, outcome,"
        " error_code, http_status, payout_slice_id, request, response)"
        " SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::text[],"
        " %s::int[], %s::bigint[], %s::jsonb[], %s::jsonb[])",
        (
            host,
            [r.connector for r in records], [r.trace_id for r in records], [r.operation for r in records],
            [r.duration_seconds for r in records], [r.outcome for r in records], [r.error_code for r in records],
            [r.http_status for r in records], [r.payout_slice_id for r in records],
            [_jsonb_text(r.request) for r in records],
            [_jsonb_text(r.response) for r in records],
        ),
    )


class SliceChange(msgspec.Struct, frozen=True, kw_only=True):
    slice_id: int
    action: str  # statement_settle, scope_release, payout_release, payout_retry, dlq_retry, dlq_drop
    from_status: str | None
    to_status: str | None
    detail: str | None = None
    target: str | None = None  # e.g. the idempotency scope released


def slice_changes(conn: Any, host: str | None, who: Identity, changes: Sequence[SliceChange]) -> None:
    """Payout state changes decided by the daemon or an operator, one row each."""
    if not changes:
        return
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO molamd_audit (payout_slice_id, action, actor, host_id, uid, user_name, pid,"
            " from_status, to_status, target, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(c.slice_id, c.action, who.label, host, who.uid, who.user, who.pid, c.from_status, c.to_status,
              c.target, c.detail) for c in changes])


def operator_action(conn: Any, host: str, who: Identity, command: str, arguments: Mapping[str, Any], *,
                    ok: bool, detail: str | None = None, target: str | None = None) -> None:
    """One operator command, whether it succeeded or not."""
    conn.execute(
        "INSERT INTO molamd_audit (action, actor, host_id, uid, user_name, pid, target, arguments, ok, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (f"command:{command}", who.label, host, who.uid, who.user, who.pid, target, Jsonb(masked(arguments)), ok,
         detail))


# -- reading ------------------------------------------------------------------------------------------


def slice_history(conn: Any, slice_id: int) -> list[dict[str, Any]]:
    """Every audit row about one slice, oldest first."""
    return dict_rows(
        conn, "SELECT at, action, actor, uid, from_status, to_status, target, detail FROM molamd_audit"
        " WHERE payout_slice_id = %s ORDER BY at, id", [slice_id])


def slice_calls(conn: Any, slice_id: int, limit: int = 100) -> list[dict[str, Any]]:
    """The bank calls made for one slice, oldest first."""
    return dict_rows(
        conn, "SELECT at, connector_name AS connector, operation, outcome, error_code, http_status,"
        " round(duration_seconds::numeric, 4)::float8 AS duration_seconds FROM bank_connector_logs"
        " WHERE payout_slice_id = %s ORDER BY at, id LIMIT %s", [slice_id, limit])


def connector_calls(conn: Any, connector: str, limit: int) -> list[dict[str, Any]]:
    """The newest bank calls of one connector (``molamctl logs``)."""
    return dict_rows(
        conn, "SELECT at::text, trace_id, operation, round(duration_seconds::numeric, 4)::float8 AS duration_seconds,"
        " outcome, error_code, http_status, payout_slice_id, request, response FROM bank_connector_logs"
        " WHERE connector_name = %s ORDER BY at DESC, id DESC LIMIT %s", (connector, limit))


def operator_actions(conn: Any, limit: int) -> list[dict[str, Any]]:
    """The newest operator actions (``molamctl audit``)."""
    return dict_rows(
        conn, "SELECT at, action, actor, uid, target, arguments, ok, detail FROM molamd_audit"
        " WHERE action LIKE 'command:%%' ORDER BY at DESC, id DESC LIMIT %s", [limit])
