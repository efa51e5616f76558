"""The database service: a psycopg pool used from worker threads, with reconnect and an up/down state.

psycopg has no trio support, so every unit of work (one transaction) runs in one worker thread under a
CapacityLimiter no larger than the pool. A trio timeout cannot stop a query running in a thread: when the
caller is cancelled, a watcher sends the server a cancel request with ``cancel_safe()``, the query fails,
and the caller then sees trio's Cancelled.

The daemon runs without a database: this service reports ready at once, connects in the background with
backoff, pings while up, and reports down (``molamd_database_up 0``) while PostgreSQL is away.

Errors::

    DatabaseError
    ├── DatabaseUnavailable     not connected, or the connection broke (retryable)
    └── DatabaseConflict        serialization failure, deadlock, lock not available: run it again (retryable)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome
import psycopg
import trio
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from actors import Backoff

from ..config import DatabaseSection
from ..logs import log
from ..metrics import Metrics

T = TypeVar("T")
logger = logging.getLogger("molamd.db")
Conn = psycopg.Connection[Any]


class DatabaseError(Exception):
    """Base of database errors molamd raises itself."""


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL cannot be reached now; retry later."""

    retryable = True


class DatabaseConflict(DatabaseError):
    """The transaction lost a race with another one (serialization failure, deadlock); run it again."""

    retryable = True


def dict_rows(conn: Conn, sql: str, params: Any = None) -> list[dict[str, Any]]:
    """Run one query and return its rows as dicts keyed by column name (for replies that show rows)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        rows: list[dict[str, Any]] = cursor.execute(sql, params).fetchall()
    return rows


Login = Callable[[], dict[str, str]]  # user and password of leased credentials, read at each new connection


def conninfo(section: DatabaseSection, application_name: str = "molamd", login: Login | None = None) -> dict[str, Any]:
    """Keyword arguments for psycopg.connect / the pool, from the [database] section (and ``login``, when the
    credentials are leased)."""
    kwargs: dict[str, Any] = {
        "application_name": application_name,
        # Autocommit: a single statement is its own transaction (one round trip, not BEGIN/stmt/COMMIT);
        # work of several statements opens one explicitly (Database.transaction).
        "autocommit": True,
        "connect_timeout": max(1, round(section.connect_timeout.seconds)),
        "options": f"-c statement_timeout={int(section.statement_timeout.seconds * 1000)}",
    }
    if section.password is not None:
        kwargs["password"] = section.password.reveal()
    if login is not None:
        kwargs.update(login())
    return kwargs


class _Running:
    """The connection a worker thread is using, so a watcher can cancel its query."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: Conn | None = None
        self.cancelled = False


class Database:
    name = "database"

    def __init__(
        self,
        section: DatabaseSection,
        *,
        metrics: Metrics,
        on_up: Callable[[], Awaitable[None]] | None = None,
        login: Login | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.section = section
        self._metrics = metrics
        self._on_up = on_up
        self.login = login
        self._on_refused = on_refused
        self._pool: ConnectionPool[Conn] | None = None
        self._limiter = trio.CapacityLimiter(section.pool_max_size)
        self._stop = trio.Event()
        self._wake = trio.Event()
        self.up = False
        self.last_error: str | None = "connecting"
        self._backoff = Backoff(initial=section.retry_initial.seconds, maximum=section.retry_max.seconds)
        metrics.database_up.set(0)

    # -- service ------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ready at once; then connect, ping and reconnect until stopped. Cancellation closes the pool."""
        task_status.started()
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    if self._pool is None:
                        await self._open_pool()
                    await self.run_sync(_ping, timeout=self.section.connect_timeout.seconds)
                except DatabaseUnavailable as exc:
                    failures += 1
                    self._set_down(str(exc))
                    delay = self._backoff.delay(failures)
                else:
                    failures = 0
                    if not self.up:
                        self._set_up()
                        if self._on_up is not None:
                            await self._on_up()
                    delay = self.section.ping_interval.seconds
                with trio.move_on_after(delay):
                    await self._wake.wait()
                self._wake = trio.Event()
        finally:
            self._set_down("stopped", quiet=True)
            pool, self._pool = self._pool, None
            if pool is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(lambda: pool.close(timeout=2.0))

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        """Check the connection now instead of at the next ping."""
        self._wake.set()

    async def drain(self) -> None:
        """Retire every connection as it comes back to the pool (new credentials): none is cut mid-work."""
        pool = self._pool
        if pool is not None:
            await trio.to_thread.run_sync(pool.drain)

    def connect_kwargs(self, application_name: str) -> dict[str, Any]:
        """What a connection of its own (a lock, LISTEN) connects with now."""
        return conninfo(self.section, application_name, self.login_now)

    def login_now(self) -> dict[str, str]:
        """The leased user and password now (empty for a static login); DatabaseUnavailable before a lease."""
        if self.login is None:
            return {}
        try:
            return self.login()
        except Exception as exc:  # NoCredentials: the keeper has none yet
            raise DatabaseUnavailable(str(exc)) from None

    def _refused(self) -> None:
        if self._on_refused is not None:
            self._on_refused()

    async def _open_pool(self) -> None:
        section = self.section
        self.login_now()  # no lease yet: unavailable, with what it waits for
        pool: ConnectionPool[Conn] = ConnectionPool(
            section.dsn,
            kwargs=lambda: conninfo(self.section, "molamd", self.login_now),
            min_size=section.pool_min_size,
            max_size=section.pool_max_size,
            open=False,
            timeout=section.connect_timeout.seconds,
            # No check on every checkout (a round trip per transaction): a broken connection fails its
            # statement, is mapped to DatabaseUnavailable, and the pool discards it on return.
            name="molamd",
        )

        def open_pool() -> None:
            try:
                pool.open(wait=True, timeout=section.connect_timeout.seconds)
            except PoolTimeout as exc:
                pool.close(timeout=0)
                # The pool only says it timed out; libpq's own words say why (refused, no such host, password
                # authentication failed): one direct attempt to hear them.
                raise DatabaseUnavailable(
                    f"cannot connect: {_libpq_reason(section, self.login_now) or _reason(exc)}") from exc

        await trio.to_thread.run_sync(open_pool, limiter=self._limiter)
        self._pool = pool

    def _set_up(self) -> None:
        self.up = True
        self.last_error = None
        self._metrics.database_up.set(1)
        log(logger, logging.INFO, "database up")

    def _set_down(self, reason: str, *, quiet: bool = False) -> None:
        changed = self.up or self.last_error != reason
        self.up = False
        self.last_error = reason
        self._metrics.database_up.set(0)
        if changed and not quiet:
            log(logger, logging.WARNING, "database unavailable", reason=reason)

    # -- work ---------------------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def transaction(self, fn: Callable[[Conn], T], *, timeout: float | None = None) -> T:
        """Run ``fn(conn)`` in one transaction in a worker thread.

        Raises DatabaseUnavailable if PostgreSQL cannot be reached. On cancellation the running query is
        cancelled on the server, the transaction rolls back and Cancelled propagates.
        """

        def in_transaction(conn: Conn) -> T:
            with conn.transaction():
                return fn(conn)

        return await self.run_sync(in_transaction, timeout=timeout)

    async def statement(self, fn: Callable[[Conn], T], *, timeout: float | None = None) -> T:
        """Run ``fn(conn)`` that executes exactly one statement: atomic by itself, one round trip.

        Cancellation and errors behave as in ``transaction``.
        """
        return await self.run_sync(fn, timeout=timeout)

    async def run_sync(self, fn: Callable[[Conn], T], *, timeout: float | None = None) -> T:
        """Run ``fn(conn)`` on an autocommit connection; ``fn`` opens transactions itself if it needs one."""
        pool = self._pool
        if pool is None:
            raise DatabaseUnavailable(self.last_error or "not connected")
        running = _Running()

        def work() -> T:
            try:
                return _work_in_thread(pool, running, fn)
            except _Refused as exc:
                trio.from_thread.run_sync(self._refused)
                raise DatabaseUnavailable(str(exc)) from exc

        finished = False

        async def watch() -> None:
            # Cancelled together with the caller: tell the server to abort the query the thread is running.
            try:
                await trio.sleep_forever()
            finally:
                if not finished:
                    with running.lock:
                        running.cancelled = True
                        conn = running.conn
                    if conn is not None:
                        with trio.CancelScope(shield=True):
                            await trio.to_thread.run_sync(conn.cancel_safe)

        deadline = trio.current_time() + timeout if timeout is not None else float("inf")
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                try:
                    # Captured, not raised here: an error raised in a nursery body would arrive wrapped in a group.
                    result: outcome.Outcome[T] = await outcome.acapture(self._in_thread, work)
                finally:
                    finished = True
                    nursery.cancel_scope.cancel()
            if isinstance(result, outcome.Error) and isinstance(result.error, _Abandoned):
                await trio.lowlevel.checkpoint()  # raises the Cancelled that made us abandon the query
            return result.unwrap()
        raise DatabaseUnavailable(f"no answer within {timeout:g}s")


def _work_in_thread(pool: ConnectionPool[Conn], running: _Running, fn: Callable[[Conn], T]) -> T:
    """In a worker thread: borrow a connection, run ``fn``, map psycopg's errors to ours."""
    try:
        with pool.connection() as conn:
            with running.lock:
                if running.cancelled:
                    raise _Abandoned
                running.conn = conn
            try:
                return fn(conn)
            finally:
                with running.lock:
                    running.conn = None
    except PoolTimeout as exc:
        raise DatabaseUnavailable(f"no connection: {_reason(exc)}") from exc
    except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
            psycopg.errors.LockNotAvailable) as exc:
        raise DatabaseConflict(_reason(exc)) from exc
    except psycopg.errors.QueryCanceled as exc:
        if running.cancelled:
            raise _Abandoned from exc
        raise DatabaseUnavailable(_reason(exc)) from exc
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.InvalidAuthorizationSpecification) as exc:
        # Leased credentials revoked under us: the same work succeeds once the pool has new ones.
        raise _Refused(f"the database refused the user: {_reason(exc)}") from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(_reason(exc)) from exc


class _Refused(Exception):
    """The server refused the current user (privileges gone); never escapes run_sync."""


class _Abandoned(Exception):
    """The caller was cancelled and the query aborted; never escapes run_sync."""


def _ping(conn: Conn) -> None:
    conn.execute("SELECT 1")


def _libpq_reason(section: DatabaseSection, login: Login | None = None) -> str | None:
    """libpq's message for one connection attempt, never the password; None if it connects after all."""
    kwargs = conninfo(section, "molamd-probe", login)
    try:
        psycopg.connect(section.dsn, **kwargs).close()
    except psycopg.Error as exc:
        text = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
        password = kwargs.get("password")
        if password:
            text = text.replace(password, "***")
        return text or type(exc).__name__
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
