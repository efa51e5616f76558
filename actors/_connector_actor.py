"""The connector actor: one per configured connector, owning the connector and its dispatch state.

Every call to the bank goes mailbox → rate limiter → bulkhead → circuit breaker → connector, under a per-call
timeout. Calls run as tasks of the actor, so many can be in flight; each message carries a one-shot reply
channel. Dispatch state is the operator's switch: ``running`` takes new work, ``paused`` takes none until
resumed, ``draining`` finishes what is in flight and then sits ``drained``.

A call cut short because the actor stopped is answered with Network ("outcome unknown"), never dropped: a
payment that may have reached the bank is retried with its idempotency key, which makes that safe.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import msgspec
import trio

from connectors import (
    BankConnector,
    Busy,
    CallContext,
    CallRecord,
    ConnectorConfig,
    ConnectorError,
    Health,
    Network,
    PaymentConnector,
    PaymentEvent,
    PaymentRef,
    PaymentStatus,
    PayoutSlice,
    RateLimited,
    SendResult,
    Timeout,
)

from ._actor import DEFAULT_ASK_TIMEOUT, Actor, ActorSnapshot
from ._backoff import Backoff
from ._breaker import BreakerEvent, BreakerSnapshot, CircuitBreaker
from ._bulkhead import Bulkhead
from ._errors import ActorStopped, MailboxFull
from ._limiter import RateLimiter
from ._retry import RetryPolicy

R = TypeVar("R")
logger = logging.getLogger("molamd.connector")
Reply = trio.MemorySendChannel[Any]


class DispatchState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    DRAINING = "draining"
    DRAINED = "drained"


class Pause(msgspec.Struct, frozen=True):
    pass


class Resume(msgspec.Struct, frozen=True):
    pass


class Drain(msgspec.Struct, frozen=True):
    pass


class CheckHealth(msgspec.Struct, frozen=True):
    pass


class ResetCircuit(msgspec.Struct, frozen=True):
    pass


class ForceOpen(msgspec.Struct, frozen=True):
    pass


class SetRate(msgspec.Struct, frozen=True):
    rate: float
    burst: int


class Send(msgspec.Struct, frozen=True):
    slice: PayoutSlice
    trace_id: str
    reply: Any  # trio.MemorySendChannel: (SendResult, CallRecord) or a ConnectorError


class QueryStatus(msgspec.Struct, frozen=True):
    ref: PaymentRef
    trace_id: str
    reply: Any


ConnectorMsg = Pause | Resume | Drain | CheckHealth | ResetCircuit | ForceOpen | SetRate | Send | QueryStatus


class CallObserver(Protocol):
    """Where the actor reports each call (metrics, audit); implemented by the daemon."""

    def call_finished(self, connector: str, operation: str, error: ConnectorError | None, seconds: float) -> None: ...

    def limiter_waited(self, connector: str, seconds: float) -> None: ...

    def breaker_changed(self, event: BreakerEvent) -> None: ...

    def audit(self, record: CallRecord) -> None: ...


class NullObserver:
    def call_finished(self, connector: str, operation: str, error: ConnectorError | None, seconds: float) -> None:
        pass

    def limiter_waited(self, connector: str, seconds: float) -> None:
        pass

    def breaker_changed(self, event: BreakerEvent) -> None:
        pass

    def audit(self, record: CallRecord) -> None:
        pass


class ConnectorSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    actor: ActorSnapshot
    kind: str
    bank_profile: str
    priority: int
    dispatch: DispatchState
    in_flight: int
    waiting: int
    breaker: BreakerSnapshot
    limiter_rate: float
    limiter_burst: int
    limiter_tokens: float
    last_health: Health | None
    last_health_error: str | None
    events_connected: bool
    events_seen: int
    events_since: int


def _counts_against_breaker(exc: ConnectorError) -> bool:
    """The bank or the path to it is failing; a clear answer (no, bad request, slow down) is not a failure."""
    return isinstance(exc, Timeout | Network)


class ConnectorActor(Actor[ConnectorMsg]):
    def __init__(
        self, config: ConnectorConfig, connector: BankConnector, observer: CallObserver | None = None,
        status_retry: RetryPolicy | None = None,
        on_event: Callable[[str, PaymentEvent], None] | None = None,
    ) -> None:
        super().__init__(config.name, mailbox_size=config.mailbox_size)
        self.config = config
        self.connector = connector
        self._observer: CallObserver = observer or NullObserver()
        self._dispatch = DispatchState.RUNNING if config.enabled else DispatchState.PAUSED
        self._last_health: Health | None = None
        self._last_health_error: str | None = None
        limits = config.limits
        self.limiter = RateLimiter(limits.rate, limits.burst)
        self.bulkhead = Bulkhead(config.name, limits.concurrency)
        self.breaker = CircuitBreaker(config.name, config.breaker, self._observer.breaker_changed)
        self._status_retry = status_retry or RetryPolicy()
        self._idle = trio.Event()
        self._idle.set()
        self._in_flight = 0
        self._on_event = on_event
        self.events_seen = 0
        self.events_since = 0  # last pushed sequence seen: a reconnect resumes after it
        self.events_connected = False

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def dispatch(self) -> DispatchState:
        return self._dispatch

    @property
    def accepting(self) -> bool:
        """Whether the dispatcher may hand this connector new work now."""
        return self._dispatch is DispatchState.RUNNING and self.breaker.allows()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def setup(self) -> None:
        await self.connector.open()
        if self._on_event is not None and getattr(self.connector, "pushes_events", False):
            self.nursery.start_soon(self._follow_events)

    async def _follow_events(self) -> None:
        """Keep the bank's event stream open, reconnecting with backoff and resuming from the last sequence."""
        stream = getattr(self.connector, "stream_events")  # noqa: B009 - optional capability
        failures = 0

        def deliver(event: PaymentEvent) -> None:
            nonlocal failures
            failures = 0
            self.events_connected = True
            self.events_since = max(self.events_since, event.seq)
            self.events_seen += 1
            assert self._on_event is not None
            self._on_event(self.name, event)

        while True:
            try:
                await stream(self.events_since, deliver)
            except ConnectorError as exc:
                self.events_connected = False
                failures += 1
                delay = self._event_backoff.delay(failures)
                logger.info("%s: event stream down (%s); reconnecting in %.1fs", self.name, exc, delay)
                await trio.sleep(delay)

    _event_backoff = Backoff(initial=0.2, maximum=30.0)

    async def teardown(self) -> None:
        await self.connector.aclose()

    async def drained(self) -> None:
        """Graceful stop: let calls in flight finish (the supervisor cancels them after the grace)."""
        await self._idle.wait()

    async def handle(self, msg: ConnectorMsg) -> Any:
        match msg:
            case Pause():
                self._dispatch = DispatchState.PAUSED
            case Resume():
                self._dispatch = DispatchState.RUNNING
            case Drain():
                self._dispatch = DispatchState.DRAINING if self._in_flight else DispatchState.DRAINED
            case ResetCircuit():
                self.breaker.reset()
                return self.breaker.state
            case ForceOpen():
                self.breaker.force_open()
                return self.breaker.state
            case SetRate(rate, burst):
                self.limiter.set_rate(rate, burst)
                return {"rate": rate, "burst": burst}
            case CheckHealth():
                return await self._check_health()
            case Send(slice_, trace_id, reply):
                self._spawn(reply, lambda: self._send(slice_, trace_id))
                return None
            case QueryStatus(ref, trace_id, reply):
                self._spawn(reply, lambda: self._status(ref, trace_id))
                return None
        return self._dispatch

    # -- calls --------------------------------------------------------------------------------------

    def _spawn(self, reply: Reply, call: Callable[[], Awaitable[Any]]) -> None:
        self._in_flight += 1
        self._idle = trio.Event()
        self.nursery.start_soon(self._run_call, reply, call)

    async def _run_call(self, reply: Reply, call: Callable[[], Awaitable[Any]]) -> None:
        outcome: Any = Network(self.name, "connector stopped during the call; outcome unknown")
        try:
            outcome = await call()
        except ConnectorError as exc:
            outcome = exc
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
                if self._dispatch is DispatchState.DRAINING:
                    self._dispatch = DispatchState.DRAINED
            # The caller may have stopped waiting (its own deadline): then the result is not needed.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
                reply.send_nowait(outcome)
            reply.close()

    async def _guarded(
        self, operation: str, call: Callable[[CallContext], Awaitable[tuple[R, CallRecord]]], ctx: CallContext
    ) -> tuple[R, CallRecord]:
        if not self.breaker.allows():
            self.breaker.acquire()  # raises CircuitOpen with the state
        start = trio.current_time()
        if not self.limiter.try_acquire(start):
            self._observer.limiter_waited(self.name, await self.limiter.acquire())
            start = trio.current_time()
        if not self.bulkhead.try_enter():
            await self.bulkhead.enter()
        try:
            self.breaker.acquire()
            try:
                result = await call(ctx)
            except ConnectorError as exc:
                seconds = trio.current_time() - start
                self.breaker.record(not _counts_against_breaker(exc), seconds)
                if isinstance(exc, RateLimited) and exc.retry_after:
                    self.limiter.pause_until(trio.current_time() + exc.retry_after)
                self._observer.call_finished(self.name, operation, exc, seconds)
                raise
            except BaseException:
                self.breaker.release()
                raise
            seconds = trio.current_time() - start
            self.breaker.record(True, seconds)
            self._observer.call_finished(self.name, operation, None, seconds)
            return result
        finally:
            self.bulkhead.leave()

    def _payments(self) -> PaymentConnector:
        connector = self.connector
        if not hasattr(connector, "send_payment"):
            raise Network(self.name, f"connector kind {self.config.kind} cannot send payments")
        return connector  # type: ignore[return-value]

    async def _send(self, slice_: PayoutSlice, trace_id: str) -> tuple[SendResult, CallRecord]:
        ctx = CallContext(
            trace_id=trace_id, timeout=self.config.limits.call_timeout.seconds, payout_slice_id=slice_.id
        )
        return await self._guarded("send_payment", lambda c: self._payments().send_payment(slice_, c), ctx)

    async def _status(self, ref: PaymentRef, trace_id: str) -> tuple[PaymentStatus, CallRecord]:
        ctx = CallContext(trace_id=trace_id, timeout=self.config.limits.call_timeout.seconds)

        async def once() -> tuple[PaymentStatus, CallRecord]:
            try:
                return await self._guarded(
                    "payment_status", lambda c: self._payments().payment_status(ref, c), ctx
                )
            except ConnectorError as exc:
                if exc.record is not None:
                    self._observer.audit(exc.record)
                raise

        status, record = await self._status_retry.call(once)
        self._observer.audit(record)
        return status, record

    async def _check_health(self) -> Health:
        start = trio.current_time()
        try:
            health = await self.connector.healthcheck()
        except ConnectorError as exc:
            health = Health(ok=False, latency_seconds=trio.current_time() - start, detail=str(exc))
            self._last_health_error = str(exc)
        else:
            self._last_health_error = None if health.ok else health.detail
        self._last_health = health
        return health

    # -- talking to it ------------------------------------------------------------------------------

    async def send(
        self, slice_: PayoutSlice, *, timeout: float, trace_id: str | None = None
    ) -> tuple[SendResult, CallRecord]:
        """Send one payment through the pipeline; raises a ConnectorError (Busy when the mailbox is full).

        Timeout and Network mean the outcome is unknown: retry later with the same idempotency key.
        """
        result: tuple[SendResult, CallRecord] = await self._request(
            lambda reply: Send(slice_, trace_id or uuid.uuid4().hex, reply), timeout
        )
        return result

    async def status(
        self, ref: PaymentRef, *, timeout: float, trace_id: str | None = None
    ) -> tuple[PaymentStatus, CallRecord]:
        """Ask the bank about a payment (retried on retryable errors, as reads are idempotent)."""
        result: tuple[PaymentStatus, CallRecord] = await self._request(
            lambda reply: QueryStatus(ref, trace_id or uuid.uuid4().hex, reply), timeout
        )
        return result

    async def _request(self, build: Callable[[Reply], ConnectorMsg], timeout: float) -> Any:
        reply_tx, reply_rx = trio.open_memory_channel[Any](1)
        try:
            self.tell(build(reply_tx))
        except MailboxFull:
            raise Busy(self.name, "mailbox full") from None
        except ActorStopped:
            raise Busy(self.name, "connector is stopping") from None
        with reply_rx:
            with trio.move_on_after(timeout):
                try:
                    outcome = await reply_rx.receive()
                except trio.EndOfChannel:
                    raise Network(self.name, "connector stopped during the call; outcome unknown") from None
                if isinstance(outcome, ConnectorError):
                    raise outcome
                return outcome
        raise Timeout(self.name, f"no answer from the connector actor within {timeout:g}s; outcome unknown")

    def connector_snapshot(self) -> ConnectorSnapshot:
        return ConnectorSnapshot(
            actor=self.snapshot(),
            kind=self.config.kind,
            bank_profile=self.config.bank_profile,
            priority=self.config.priority,
            dispatch=self._dispatch,
            in_flight=self._in_flight,
            waiting=self.bulkhead.waiting,
            breaker=self.breaker.snapshot(),
            limiter_rate=self.limiter.rate,
            limiter_burst=self.limiter.burst,
            limiter_tokens=round(self.limiter.tokens(), 2),
            last_health=self._last_health,
            last_health_error=self._last_health_error,
            events_connected=self.events_connected,
            events_seen=self.events_seen,
            events_since=self.events_since,
        )

    async def pause(self, timeout: float = DEFAULT_ASK_TIMEOUT) -> DispatchState:
        return await self._ask_state(Pause(), timeout)

    async def resume(self, timeout: float = DEFAULT_ASK_TIMEOUT) -> DispatchState:
        return await self._ask_state(Resume(), timeout)

    async def drain(self, timeout: float = DEFAULT_ASK_TIMEOUT) -> DispatchState:
        return await self._ask_state(Drain(), timeout)

    async def check_health(self, timeout: float = DEFAULT_ASK_TIMEOUT) -> Health:
        result = await self.ask(CheckHealth(), timeout=timeout)
        assert isinstance(result, Health)
        return result

    async def _ask_state(self, msg: ConnectorMsg, timeout: float) -> DispatchState:
        result = await self.ask(msg, timeout=timeout)
        assert isinstance(result, DispatchState)
        return result

