"""Mirroring this host's connectors into ``bank_connectors_registry``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import msgspec

from connectors import ConnectorConfig, encode_hook

_encoder = msgspec.json.Encoder(enc_hook=encode_hook, order="sorted")


def config_hash(config: ConnectorConfig) -> str:
    """A stable digest of a connector's config (secret references, never values)."""
    return hashlib.sha256(_encoder.encode(config)).hexdigest()[:16]


class RegistryRow(msgspec.Struct, frozen=True, kw_only=True):
    """What one host reports about one connector."""

    name: str
    state: str
    incarnation: str | None = None
    restarts: int = 0
    last_error: str | None = None
    health_ok: bool | None = None
    health_detail: str | None = None
    breaker_state: str | None = None  # closed, open, half_open; None: no breaker (a statement source)


def sync_configured(conn: Any, host_id: str, configs: Sequence[ConnectorConfig]) -> None:
    """Upsert every configured connector for this host; mark this host's others as removed.

    One statement over arrays, not one per connector: a thousand connectors are one round trip.
    """
    names = [c.name for c in configs]
    conn.execute(
        "INSERT INTO bank_connectors_registry"
        " (host_id, name, kind, bank_profile_id, priority, enabled, config_hash, state)"
        " SELECT %s, u.name, u.kind, u.profile, u.priority, u.enabled, u.hash, 'starting'"
        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::bool[], %s::text[])"
        "  AS u(name, kind, profile, priority, enabled, hash)"
        " ON CONFLICT (host_id, name) DO UPDATE SET kind = EXCLUDED.kind,"
        "  bank_profile_id = EXCLUDED.bank_profile_id, priority = EXCLUDED.priority,"
        "  enabled = EXCLUDED.enabled, config_hash = EXCLUDED.config_hash,"
        "  state = CASE WHEN bank_connectors_registry.state = 'removed' THEN 'starting'"
        "               ELSE bank_connectors_registry.state END,"
        "  last_seen_at = now()",
        (host_id, names, [c.kind for c in configs], [c.bank_profile for c in configs],
         [c.priority for c in configs], [c.enabled for c in configs], [config_hash(c) for c in configs]),
    )
    conn.execute(
        "UPDATE bank_connectors_registry SET state = 'removed', last_seen_at = now()"
        " WHERE host_id = %s AND NOT (name = ANY(%s)) AND state <> 'removed'",
        (host_id, names),
    )


def report_states(conn: Any, host_id: str, rows: Sequence[RegistryRow]) -> None:
    """Write actor state and the latest health check for this host's connectors."""
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE bank_connectors_registry SET state = %s, incarnation = %s, restarts = %s,"
            " last_error = %s,"
            " health_ok = COALESCE(%s, health_ok),"
            " health_detail = COALESCE(%s, health_detail),"
            " health_checked_at = CASE WHEN %s::boolean IS NULL THEN health_checked_at ELSE now() END,"
            " breaker_changed_at = CASE WHEN %s::text IS DISTINCT FROM breaker_state AND %s::text IS NOT NULL"
            "  THEN now() ELSE breaker_changed_at END,"
            " breaker_state = COALESCE(%s, breaker_state),"
            " last_seen_at = now()"
            " WHERE host_id = %s AND name = %s",
            [
                (r.state, r.incarnation, r.restarts, r.last_error, r.health_ok, r.health_detail, r.health_ok,
                 r.breaker_state, r.breaker_state, r.breaker_state, host_id, r.name)
                for r in rows
            ],
        )
