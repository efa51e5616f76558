"""LISTEN for PostgreSQL notifications on a dedicated connection and turn each into a trio callback.

psycopg's ``notifies()`` blocks, so it runs in a worker thread in short slices (``timeout``), which keeps
cancellation prompt: the thread is abandoned on cancel and returns by itself within one slice. Connection
failures are retried with backoff; while disconnected nothing is lost that matters, because the listeners'
owners also poll (notifications only make them faster).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import psycopg
import trio

from actors import Backoff

from ..config import DatabaseSection
from ..logs import log
from ._database import Login, conninfo

logger = logging.getLogger("molamd.db.listener")
_SLICE_SECONDS = 1.0


class Listener:
    def __init__(self, section: DatabaseSection, channel: str, on_notify: Callable[[], None], *,
                 login: Login | None = None) -> None:
        self.name = f"listen:{channel}"
        self._section = section
        self._login = login
        self._channel = channel
        self._on_notify = on_notify
        self._stop = trio.Event()
        self.connected = False
        self.received = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ready at once; listens until stopped. Cancellation abandons the waiting thread (it ends by itself)."""
        task_status.started()
        backoff = Backoff(initial=self._section.retry_initial.seconds, maximum=self._section.retry_max.seconds)
        failures = 0
        while not self._stop.is_set():
            try:
                conn = await trio.to_thread.run_sync(self._connect, abandon_on_cancel=True)
            except psycopg.Error as exc:
                failures += 1
                self.connected = False
                if failures == 1:
                    log(logger, logging.WARNING, "cannot LISTEN; retrying", channel=self._channel, reason=str(exc))
                with trio.move_on_after(backoff.delay(failures, random.Random())):
                    await self._stop.wait()
                continue
            failures = 0
            self.connected = True
            try:
                await self._listen(conn)
            except psycopg.Error as exc:
                log(logger, logging.WARNING, "LISTEN connection lost", channel=self._channel, reason=str(exc))
            finally:
                self.connected = False
                conn.close()

    def request_stop(self) -> None:
        self._stop.set()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            kwargs = conninfo(self._section, "molamd-listen", self._login)
        except Exception as exc:  # no leased credentials yet: as if the server were away
            raise psycopg.OperationalError(str(exc)) from exc  # autocommit, as LISTEN needs
        conn: psycopg.Connection[Any] = psycopg.connect(self._section.dsn, **kwargs)
        conn.execute(f"LISTEN {self._channel}")
        return conn

    async def _listen(self, conn: psycopg.Connection[Any]) -> None:
        def wait() -> int:
            return sum(1 for _ in conn.notifies(timeout=_SLICE_SECONDS, stop_after=1))

        while not self._stop.is_set():
            count = await trio.to_thread.run_sync(wait, abandon_on_cancel=True)
            if count:
                self.received += count
                self._on_notify()
