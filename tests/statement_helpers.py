"""A statement source wired to real peers: the sandbox SFTP server and a migrated PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from sandbox_sftp import SandboxSftp

from connectors import RemoteFile, SftpStatementConnector, decode_hook
from connectors.sftp import Camt053SftpConfig, CsvSftpConfig, Mt940SftpConfig, SftpSourceConfig
from connectors.statements import CsvProfile
from molamd import db
from molamd.metrics import Metrics
from molamd.statement_poller import StatementPoller
from molamd.statements import Ingested, StatementStore
from tests.db_helpers import running_database

KINDS: dict[str, type[SftpSourceConfig]] = {
    "mt940-sftp": Mt940SftpConfig, "csv-sftp": CsvSftpConfig, "camt053-sftp": Camt053SftpConfig}


def source_config(server: Any, known_hosts: Path, *, name: str = "bank-a-statements",
                  kind: str = "mt940-sftp", **sftp: Any) -> SftpSourceConfig:
    raw = {
        "kind": kind, "name": name, "bank_profile": "bank-a",
        "sftp": {"host": server.host, "port": server.port, "username": server.user, "password": "env:UNUSED",
                 "known_hosts": str(known_hosts), "inbox": "/outgoing", "archive": "/outgoing/archive",
                 "error": "/outgoing/error", "stable_for": "0s", **sftp},
    }
    config = msgspec.convert(raw, KINDS[kind], dec_hook=decode_hook)
    password = config.sftp.password.with_value(server.password)  # type: ignore[union-attr]
    return msgspec.structs.replace(config, sftp=msgspec.structs.replace(config.sftp, password=password))


class Rig:
    """What a test drives: the SFTP server's inbox, the poller, and a way to read the database."""

    def __init__(self, server: Any, dsn: str, database: db.Database, metrics: Metrics,
                 known_hosts: Path) -> None:
        self.server, self.dsn, self.database, self.metrics = server, dsn, database, metrics
        self.known_hosts = known_hosts
        self.store = StatementStore(database, lambda: psycopg.connect(dsn, autocommit=True))
        self.pollers: list[StatementPoller] = []

    def poller(self, config: SftpSourceConfig | None = None, *, csv_profile: CsvProfile | None = None,
               after_commit: Callable[[RemoteFile, Ingested], Awaitable[None]] | None = None) -> StatementPoller:
        config = config or source_config(self.server, self.known_hosts)
        poller = StatementPoller(config, SftpStatementConnector(config), self.store, self.metrics,
                                 csv_profile=csv_profile, profile_sources=[config.name], after_commit=after_commit)
        self.pollers.append(poller)
        return poller

    async def close(self) -> None:
        for poller in self.pollers:
            await poller.teardown()

    def put(self, name: str, data: bytes) -> Path:
        path = self.server.inbox / name
        path.write_bytes(data)
        return path

    def names(self, folder: str = "") -> list[str]:
        return sorted(p.name for p in (self.server.inbox / folder).iterdir() if p.is_file())

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(sql, params).fetchall()

    def counted(self, outcome: str, source: str = "bank-a-statements") -> float:
        value: float = self.metrics.statement_files.labels(source, outcome)._value.get()
        return value


@asynccontextmanager
async def rig(tmp: Path, dsn: str, server: Any = None) -> AsyncIterator[Rig]:
    """A rig over the sandbox SFTP server, or over ``server`` (an OpenSSH one, which the caller stops)."""
    own = server is None
    if own:
        server = SandboxSftp(tmp / "sftp", state=tmp / "sftp-state").start()
    known_hosts = server.known_hosts(tmp / "known_hosts")
    metrics = Metrics()
    try:
        async with running_database(dsn, metrics) as database:
            r = Rig(server, dsn, database, metrics, known_hosts)
            try:
                yield r
            finally:
                await r.close()
    finally:
        if own:
            server.stop()
