"""A real molamd database service (psycopg pool in worker threads) for tests that drive actors in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import trio

from connectors import decode_hook
from molamd import db
from molamd.config import DatabaseSection
from molamd.metrics import Metrics


@asynccontextmanager
async def running_database(dsn: str, metrics: Metrics | None = None) -> AsyncIterator[db.Database]:
    """The database service on ``dsn``, started and connected (at most 20 s), stopped on exit."""
    section = msgspec.convert({"dsn": dsn}, DatabaseSection, dec_hook=decode_hook)
    database = db.Database(section, metrics=metrics or Metrics())
    async with trio.open_nursery() as nursery:
        await nursery.start(database.run)
        with trio.fail_after(20):
            while not database.up:  # noqa: ASYNC110 - the flag belongs to the database service
                await trio.sleep(0.02)
        yield database
        database.request_stop()
