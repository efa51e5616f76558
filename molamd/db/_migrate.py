"""Versioned schema migrations: ``NNNN_name.sql`` files applied in order, all pending ones in one transaction.

Applied versions and their checksums live in ``molamd_schema_migrations``; re-running applies nothing; a
migration edited after it was applied is an error, not a silent drift. An advisory lock keeps two hosts
migrating at once from interleaving.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources

import msgspec
import psycopg

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x6D6F6C616D64  # "molamd"


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(Exception):
    """The database's applied migrations disagree with the ones shipped."""


def shipped_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("molamd.db").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return found


def migrate(conn: psycopg.Connection[object], migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply every pending migration in one transaction; returns those applied (empty when up to date)."""
    todo = shipped_migrations() if migrations is None else migrations
    applied: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS molamd_schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = conn.execute("SELECT version, name, checksum FROM molamd_schema_migrations").fetchall()
        done = {int(r[0]): (str(r[1]), str(r[2])) for r in rows}  # type: ignore[index]
        shipped = {m.version for m in todo}
        unknown = sorted(set(done) - shipped)
        if unknown:
            raise MigrationError(f"database has migrations this molamd does not know: {unknown}; upgrade molamd")
        for migration in todo:
            if migration.version in done:
                if done[migration.version][1] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it was applied"
                    )
                continue
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO molamd_schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            applied.append(migration)
    return applied


def current_version(conn: psycopg.Connection[object]) -> int | None:
    """The highest applied version, or None on an empty database."""
    exists = conn.execute("SELECT to_regclass('molamd_schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:  # type: ignore[index]
        return None
    row = conn.execute("SELECT max(version) FROM molamd_schema_migrations").fetchone()
    return None if row is None else row[0]  # type: ignore[index]
