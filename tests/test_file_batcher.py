"""When the FileBatcher closes a file, and the execution date it asks for, on the bank's calendar: a clock of the
test's choosing, the real store in PostgreSQL, the real SFTP sandbox. A slice that misses the day's last
cutoff asks for the next business day; a Friday evening asks for Monday; Christmas Eve evening asks for the
next business day after the holiday and the weekend."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import psycopg
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sandbox_sftp import SandboxSftp

from actors import FileBatcher
from connectors import Duration, FileChannelConnector
from molamd import db
from molamd.metrics import Metrics
from molamd.payment_files import FileStore
from molamd.payouts import ClaimOwner
from tests.db_helpers import running_database
from tests.file_helpers import CONNECTOR, batched
from tests.test_file_submission import channel

DAKAR = ZoneInfo("Africa/Dakar")


@pytest.fixture
async def database(migrated_dsn: str) -> AsyncIterator[db.Database]:
    async with running_database(migrated_dsn) as database:
        yield database


def batcher(tmp_path: Path, server: SandboxSftp, database: db.Database, now: dt.datetime,
            **options: object) -> tuple[FileBatcher, Metrics]:
    connector, key = channel(tmp_path, server)
    config = connector.config
    config = msgspec.structs.replace(config, iso20022=msgspec.structs.replace(config.iso20022, **options),
                                     cutoffs=msgspec.structs.replace(config.cutoffs, times=["10:00", "15:30"]))
    connector = FileChannelConnector(config)
    metrics = Metrics()

    def sign(label: str, data: bytes) -> bytes:
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    owner = ClaimOwner(lambda: psycopg.connect(database.section.dsn))
    return FileBatcher(config, connector, FileStore(database, "test-host", owner), sign, files=metrics.files,
                       clock=lambda: now), metrics


def dates(dsn: str) -> list[dt.date]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT execution_date FROM payment_files ORDER BY id").fetchall()]


@pytest.fixture
def bank(tmp_path: Path) -> SandboxSftp:
    root = tmp_path / "bank"
    (root / "inbox").mkdir(parents=True)
    (root / "outbox").mkdir()
    server = SandboxSftp(root, state=tmp_path / "state", password="pw").start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.mark.parametrize(("now", "expected"), [
    (dt.datetime(2026, 12, 2, 9, 0, tzinfo=DAKAR), dt.date(2026, 12, 2)),  # before the 10:00 cutoff
    (dt.datetime(2026, 12, 2, 15, 0, tzinfo=DAKAR), dt.date(2026, 12, 2)),  # before the last one, 15:30
    (dt.datetime(2026, 12, 2, 16, 0, tzinfo=DAKAR), dt.date(2026, 12, 3)),  # missed it: the next business day
    (dt.datetime(2026, 12, 4, 16, 0, tzinfo=DAKAR), dt.date(2026, 12, 7)),  # Friday evening: Monday
    (dt.datetime(2026, 12, 24, 16, 0, tzinfo=DAKAR), dt.date(2026, 12, 28)),  # Christmas, then the weekend
    (dt.datetime(2026, 12, 5, 11, 0, tzinfo=DAKAR), dt.date(2026, 12, 7)),  # a Saturday: never a weekend date
])
async def test_the_execution_date_is_a_business_day_the_bank_can_still_make(
    tmp_path: Path, migrated_dsn: str, database: db.Database, bank: SandboxSftp, now: dt.datetime,
    expected: dt.date,
) -> None:
    batched(migrated_dsn, 3)
    files, _ = batcher(tmp_path, bank, database, now, max_transactions=3)
    files._certificate = files.channel.certificate_key()
    await files._close_due()
    assert dates(migrated_dsn) == [expected]
    assert files.channel.calendar.is_business_day(expected)
    assert [p.name for p in (bank.root / "inbox").iterdir()] == ["MOLAM-1.xml"]
    await files.channel.aclose()


async def test_a_file_closes_by_size_by_age_or_before_a_cutoff_and_not_otherwise(
    tmp_path: Path, migrated_dsn: str, database: db.Database, bank: SandboxSftp,
) -> None:
    quiet = dt.datetime(2026, 12, 2, 12, 0, tzinfo=DAKAR)  # 3.5 hours before the next cutoff
    ids, _ = batched(migrated_dsn, 5)
    files, metrics = batcher(tmp_path, bank, database, quiet, max_transactions=10, max_age=Duration("1h"),
                             cutoff_lead=Duration("10m"))
    files._certificate = files.channel.certificate_key()
    await files._close_due()
    assert dates(migrated_dsn) == [], "5 of 10, minutes old, hours before the cutoff: it waits"
    assert metrics.files.waiting.labels(CONNECTOR)._value.get() == 5
    batched(migrated_dsn, 7)
    await files._close_due()
    assert len(dates(migrated_dsn)) == 1, "ten waiting: a file of ten closes, two wait"
    files._clock = lambda: dt.datetime(2026, 12, 2, 15, 25, tzinfo=DAKAR)  # five minutes to the 15:30 cutoff
    await files._close_due()
    assert len(dates(migrated_dsn)) == 2, "the rest goes before the cutoff"
    with psycopg.connect(migrated_dsn) as conn:
        sizes = conn.execute("SELECT transactions FROM payment_files ORDER BY id").fetchall()
        left = conn.execute("SELECT count(*) FROM payout_slices WHERE status = 'batched'").fetchone()[0]
    assert sizes == [(10,), (2,)] and left == 0 and ids
    await files.channel.aclose()
