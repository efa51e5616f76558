"""A PostgreSQL session advisory lock on a connection of its own, held as long as that session lives.

``hold()`` answers whether this process holds the lock now: a ping while it does, else an attempt to take it
(on a new connection if the old one was lost, which lost the lock with it). Closing the connection, or the
process dying, ends the session and frees the lock, a moment after the client has let go; ``release()`` unlocks
first, so that another host can take the lock as soon as it returns. Blocking: call it in a worker thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import psycopg


class SessionLock:
    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False
        self._mutex = threading.Lock()  # worker threads may ask at once

    def take(self, conn: psycopg.Connection[Any]) -> bool:
        """Try to take the lock on ``conn``; the kinds of lock say how."""
        raise NotImplementedError

    def hold(self) -> bool:
        with self._mutex:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn, self._held = self._connect(), False
                if self._held:
                    self._conn.execute("SELECT 1")
                    return True
                self._held = self.take(self._conn)
                return self._held
            except psycopg.Error:
                self._drop()
                raise

    def release(self) -> None:
        with self._mutex:
            if self._conn is not None and not self._conn.closed and self._held:
                # Closing alone frees the lock only once the server has ended the session, a moment later. If
                # this fails, the session is gone or going, and so is the lock.
                with contextlib.suppress(psycopg.Error):
                    self._conn.execute("SELECT pg_advisory_unlock_all()")
            self._drop()

    def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            conn.close()  # the session ends and PostgreSQL drops its advisory locks
