"""A supervisor with Erlang/OTP semantics, for trio.

Children are described by ``ChildSpec`` (restart type, shutdown grace, whether it is a core service) and
started in order with ``nursery.start``: a child counts as running only once it has called
``task_status.started()``. When a child exits the supervisor applies its strategy:

- one_for_one: restart only that child;
- one_for_all: stop the others (in reverse order, each gracefully within its grace), restart all in order;
- rest_for_one: stop and restart that child and the children started after it.

Restart types: permanent children are always restarted, transient ones only after a crash, temporary ones
never. Each child has a restart intensity (at most ``max_restarts`` in ``period`` seconds). Restarts wait a
jittered exponential backoff, which resets once a child has run for ``stable_after`` seconds. A child past its
intensity goes to ``failed`` and stays there, visible, until someone restarts it; its siblings are not touched.
A core child past its intensity escalates instead: the supervisor raises ``Escalation`` and exits.

Stopping a child asks it to stop (``request_stop``), waits up to its shutdown grace, then cancels it.
Every lifecycle change is reported as a ``SupervisorEvent`` to the ``on_event`` callback.
"""

from __future__ import annotations

import enum
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import msgspec
import trio

from ._backoff import Backoff
from ._errors import Escalation, SupervisorError, UnknownChild

DEFAULT_SHUTDOWN_GRACE = 5.0
DEFAULT_MAX_RESTARTS = 5
DEFAULT_PERIOD = 60.0
DEFAULT_STABLE_AFTER = 60.0


class Child(Protocol):
    """What a supervisor can run: something with a name that starts with nursery.start and can be asked to stop."""

    @property
    def name(self) -> str: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    def request_stop(self) -> None: ...


class RestartType(enum.StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(enum.StrEnum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class ChildState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How to build and treat one child. ``factory`` builds a fresh incarnation on every (re)start."""

    name: str
    factory: Callable[[], Child]
    restart: RestartType = RestartType.PERMANENT
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    core: bool = False


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Restart intensity and the backoff between restarts."""

    max_restarts: int = DEFAULT_MAX_RESTARTS
    period: float = DEFAULT_PERIOD
    stable_after: float = DEFAULT_STABLE_AFTER
    backoff: Backoff = msgspec.field(default_factory=Backoff)


class EventKind(enum.StrEnum):
    STARTED = "started"
    EXITED = "exited"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"
    ESCALATED = "escalated"


class SupervisorEvent(msgspec.Struct, frozen=True, kw_only=True):
    supervisor: str
    child: str
    kind: EventKind
    incarnation: str | None = None
    reason: str | None = None
    delay_seconds: float | None = None
    restarts: int = 0
    timestamp: float = msgspec.field(default_factory=time.time)


class ChildInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    state: ChildState
    restart: RestartType
    core: bool
    restarts: int
    incarnation: str | None
    uptime_seconds: float
    last_error: str | None


def describe_error(exc: BaseException) -> str:
    """One line for an exception, looking inside single-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


class _Record:
    """The supervisor's private bookkeeping for one child."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.instance: Child | None = None
        self.state = ChildState.STOPPED
        self.scope: trio.CancelScope | None = None
        self.done = trio.Event()
        self.done.set()
        self.started_at: float | None = None
        self.restarts = 0
        self.consecutive = 0
        self.recent: deque[float] = deque()
        self.last_error: str | None = None
        self.retired: Child | None = None
        self.pending: trio.CancelScope | None = None

    def incarnation(self) -> str | None:
        return getattr(self.instance, "incarnation", None)


class _Exit(msgspec.Struct, frozen=True):
    record: _Record
    instance: Child
    error: BaseException | None


class _Shutdown(msgspec.Struct, frozen=True):
    pass


class Supervisor:
    """Runs children under a strategy; itself a Child, so supervisors nest."""

    def __init__(
        self,
        name: str,
        specs: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        policy: RestartPolicy | None = None,
        on_event: Callable[[SupervisorEvent], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.strategy = strategy
        self.policy = policy or RestartPolicy()
        self._on_event = on_event
        self._rng = rng or random.Random()
        self._records: dict[str, _Record] = {}
        for spec in specs:
            self._add_record(spec)
        self._events_tx, self._events_rx = trio.open_memory_channel[_Exit | _Shutdown](float("inf"))
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()

    # -- as a child ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every child in order, report ready, then supervise until asked to stop.

        On request_stop the children are stopped gracefully in reverse order; on cancellation they are
        cancelled with the supervisor. Raises Escalation when a core child goes past its intensity.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for record in list(self._records.values()):
                await self._start(record)
                if record.spec.core and record.state is not ChildState.RUNNING:
                    # A core service that cannot even start is not worth retrying before we are ready.
                    raise Escalation(f"{self.name}/{record.spec.name} failed to start: {record.last_error}")
            task_status.started()
            async for item in self._events_rx:
                if isinstance(item, _Shutdown):
                    await self._stop_all()
                    break
                async with self._lock:
                    await self._on_exit(item)
            nursery.cancel_scope.cancel()
        self._nursery = None

    def request_stop(self) -> None:
        self._events_tx.send_nowait(_Shutdown())

    # -- inspection ---------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self._records)

    def child(self, name: str) -> Child | None:
        """The running instance of a child, or None while it is not running."""
        record = self._record(name)
        return record.instance if record.state is ChildState.RUNNING else None

    def info(self, name: str) -> ChildInfo:
        record = self._record(name)
        uptime = 0.0
        if record.state is ChildState.RUNNING and record.started_at is not None:
            uptime = trio.current_time() - record.started_at
        return ChildInfo(
            name=name,
            state=record.state,
            restart=record.spec.restart,
            core=record.spec.core,
            restarts=record.restarts,
            incarnation=record.incarnation(),
            uptime_seconds=round(uptime, 3),
            last_error=record.last_error,
        )

    def infos(self) -> list[ChildInfo]:
        return [self.info(name) for name in self._records]

    def state_counts(self) -> dict[ChildState, int]:
        """How many children are in each state; cheap enough for every status call."""
        counts: dict[ChildState, int] = {}
        for record in self._records.values():
            counts[record.state] = counts.get(record.state, 0) + 1
        return counts

    def running(self) -> Iterator[Child]:
        """The running instances, in start order."""
        for record in self._records.values():
            if record.state is ChildState.RUNNING and record.instance is not None:
                yield record.instance

    # -- control ------------------------------------------------------------------------------------

    async def start_child(self, spec: ChildSpec) -> None:
        """Add a child and start it; returns once it is running (or has failed to start)."""
        async with self._lock:
            if spec.name in self._records:
                raise SupervisorError(f"{self.name}: a child named {spec.name!r} exists")
            await self._start(self._add_record(spec))

    async def stop_child(self, name: str) -> None:
        """Stop a child gracefully (then cancel it after its grace) and remove it."""
        async with self._lock:
            record = self._record(name)
            await self._stop(record)
            del self._records[name]
            self._emit(record, EventKind.STOPPED)

    async def restart_child(self, name: str, spec: ChildSpec | None = None) -> None:
        """Stop a child and start it again (with a new spec if given), clearing failed state and intensity."""
        async with self._lock:
            record = self._record(name)
            await self._stop(record)
            if spec is not None:
                if spec.name != name:
                    raise SupervisorError(f"{self.name}: cannot rename {name!r} to {spec.name!r}")
                record.spec = spec
            record.recent.clear()
            record.consecutive = 0
            record.last_error = None
            await self._start(record)

    # -- internals ----------------------------------------------------------------------------------

    def _add_record(self, spec: ChildSpec) -> _Record:
        record = _Record(spec)
        self._records[spec.name] = record
        return record

    def _record(self, name: str) -> _Record:
        try:
            return self._records[name]
        except KeyError:
            raise UnknownChild(name) from None

    def _emit(self, record: _Record, kind: EventKind, **fields: object) -> None:
        if self._on_event is None:
            return
        event = SupervisorEvent(
            supervisor=self.name,
            child=record.spec.name,
            kind=kind,
            incarnation=record.incarnation(),
            restarts=record.restarts,
            **fields,  # type: ignore[arg-type]
        )
        self._on_event(event)

    async def _start(self, record: _Record) -> None:
        assert self._nursery is not None
        record.pending = None
        record.state = ChildState.STARTING
        await self._nursery.start(self._child_task, record)

    async def _child_task(self, record: _Record, *, task_status: trio.TaskStatus[None]) -> None:
        instance = record.spec.factory()
        record.instance = instance
        record.done = done = trio.Event()
        record.scope = scope = trio.CancelScope()
        started = False
        error: BaseException | None = None
        try:
            with scope:
                async with trio.open_nursery() as inner:
                    await inner.start(instance.run)
                    started = True
                    record.started_at = trio.current_time()
                    record.state = ChildState.RUNNING
                    self._emit(record, EventKind.STARTED)
                    task_status.started()
        except Exception as exc:
            error = exc
        finally:
            done.set()
        if not started:
            record.last_error = describe_error(error) if error is not None else "exited before it was ready"
            task_status.started()
        self._events_tx.send_nowait(_Exit(record, instance, error))

    async def _stop(self, record: _Record) -> None:
        record.retired = record.instance
        if record.pending is not None:
            record.pending.cancel()
            record.pending = None
        if not record.done.is_set() and record.instance is not None:
            record.state = ChildState.STOPPING
            record.instance.request_stop()
            with trio.move_on_after(record.spec.shutdown_grace):
                await record.done.wait()
            if not record.done.is_set():
                assert record.scope is not None
                record.scope.cancel()
                await record.done.wait()
        record.state = ChildState.STOPPED

    async def _stop_all(self) -> None:
        async with self._lock:
            for record in reversed(list(self._records.values())):
                await self._stop(record)
                self._emit(record, EventKind.STOPPED)

    async def _on_exit(self, item: _Exit) -> None:
        record = item.record
        if record.instance is not item.instance or item.instance is record.retired:
            return  # a deliberate stop, or an incarnation that was already replaced
        record.state = ChildState.STOPPED
        reason = describe_error(item.error) if item.error is not None else "normal exit"
        if item.error is not None:
            record.last_error = reason
        self._emit(record, EventKind.EXITED, reason=reason)
        restart = record.spec.restart
        if restart is RestartType.TEMPORARY or (restart is RestartType.TRANSIENT and item.error is None):
            return

        now = trio.current_time()
        if record.started_at is not None and now - record.started_at >= self.policy.stable_after:
            record.consecutive = 0
        while record.recent and now - record.recent[0] > self.policy.period:
            record.recent.popleft()
        if len(record.recent) >= self.policy.max_restarts:
            if record.spec.core:
                self._emit(record, EventKind.ESCALATED, reason=reason)
                raise Escalation(
                    f"{self.name}/{record.spec.name}: more than {self.policy.max_restarts} restarts in "
                    f"{self.policy.period:g}s; last: {reason}"
                )
            record.state = ChildState.FAILED
            self._emit(record, EventKind.FAILED, reason=reason)
            return
        record.recent.append(now)
        record.consecutive += 1
        record.restarts += 1
        delay = self.policy.backoff.delay(record.consecutive, self._rng)

        group = self._group(record)
        for other in reversed(group):
            if other is not record:
                await self._stop(other)
        for member in group:
            member.state = ChildState.RESTARTING
        self._emit(record, EventKind.RESTARTING, reason=reason, delay_seconds=round(delay, 3))
        assert self._nursery is not None
        scope = trio.CancelScope()
        for member in group:
            member.pending = scope
        self._nursery.start_soon(self._restart_after, group, delay, scope)

    def _group(self, record: _Record) -> list[_Record]:
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [record]
        ordered = list(self._records.values())
        members = ordered if self.strategy is Strategy.ONE_FOR_ALL else ordered[ordered.index(record) :]
        return [m for m in members if m is record or m.state in (ChildState.RUNNING, ChildState.STARTING)]

    async def _restart_after(self, group: list[_Record], delay: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(delay)
            async with self._lock:
                for member in group:
                    if member.pending is scope and self._records.get(member.spec.name) is member:
                        await self._start(member)
