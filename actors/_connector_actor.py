"""The connector actor: one per configured connector, owning the connector and its dispatch state.

Every call to the bank goes mailbox → rate limiter → bulkhead → circuit breaker → connector. Waiting for the
limiter and the bulkhead is bounded by ``limits.max_wait`` and answered Busy (nothing left us: not an attempt);
the bank call itself runs under ``limits.call_timeout``. Calls are deferred replies of the actor protocol: each
runs as a task of the actor, many can be in flight, and an asker that stops waiting cancels its call. Health
checks are calls like the others: spawned, timed, counted and audited.

Dispatch state is the operator's switch: ``running`` takes new work, ``paused`` takes none until resumed,
``draining`` finishes what is in flight and then sits ``drained``; every change is reported to the observer.
Health is the connector's own: a failed health check or an Auth error from any call (our credentials are wrong:
the connector's fault, not a payout's) makes it **unhealthy**, and an unhealthy connector takes no new work
until a health check passes or an operator resumes it.

A call cut short because the actor stopped is answered with Network (outcome unknown, may have reached the
bank), never dropped: the slice stays in doubt in this connector's idempotency scope.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

import msgspec
import trio

from connectors import (
    Auth,
    BankConnector,
    Busy,
    CallContext,
    CallRecord,
    Capability,
    ConnectorConfig,
    ConnectorError,
    EventConnector,
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

from ._actor import DEFAULT_ASK_TIMEOUT, Actor, ActorSnapshot, Deferred
from ._backoff import Backoff
from ._breaker import BreakerEvent, BreakerSnapshot, CircuitBreaker
from ._bulkhead import Bulkhead
from ._errors import ActorStopped, AskTimeout, MailboxFull, Refused
from ._limiter import RateLimiter
from ._retry import RetryPolicy

R = TypeVar("R")
logger = logging.getLogger("molamd.connector")
# Beyond the call's own timeout, how long an asker waits for the actor's answer before it gives up (and cancels).
ANSWER_MARGIN = 5.0


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
    """Pay one slice; the reply is (SendResult, CallRecord) or a ConnectorError."""

    slice: PayoutSlice
    trace_id: str


class QueryStatus(msgspec.Struct, frozen=True):
    """Ask the bank about a payment; the reply is (PaymentStatus, CallRecord) or a ConnectorError."""

    ref: PaymentRef
    trace_id: str


ConnectorMsg = Pause | Resume | Drain | CheckHealth | ResetCircuit | ForceOpen | SetRate | Send | QueryStatus


class CallObserver(Protocol):
    """Where the actor reports each call (metrics, audit); implemented by the daemon."""

    def call_finished(self, connector: str, operation: str, error: ConnectorError | None, seconds: float) -> None: ...

    def limiter_waited(self, connector: str, seconds: float) -> None: ...

    def breaker_changed(self, event: BreakerEvent) -> None: ...

    def audit(self, record: CallRecord) -> None: ...

    def dispatch_changed(self, connector: str, old: DispatchState, new: DispatchState) -> None: ...


class NullObserver:
    def call_finished(self, connector: str, operation: str, error: ConnectorError | None, seconds: float) -> None:
        pass

    def limiter_waited(self, connector: str, seconds: float) -> None:
        pass

    def breaker_changed(self, event: BreakerEvent) -> None:
        pass

    def audit(self, record: CallRecord) -> None:
        pass

    def dispatch_changed(self, connector: str, old: DispatchState, new: DispatchState) -> None:
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
    limiter_paused_seconds: float
    last_health: Health | None
    last_health_error: str | None
    events_connected: bool
    events_seen: int
    events_since: int
    capabilities: list[str]
    scope: str
    unhealthy: str | None  # why no work is routed here until a health check passes (or an operator resumes)


def _counts_against_breaker(exc: ConnectorError) -> bool:
    """The bank or the path to it is failing, or it refuses our credentials; a clear answer about one request
    (no, bad request, slow down) is not a failure."""
    return isinstance(exc, Timeout | Network | Auth)


class ConnectorActor(Actor[ConnectorMsg]):
    reply_errors = (Refused, ConnectorError)

    def __init__(
        self, config: ConnectorConfig, connector: BankConnector, observer: CallObserver | None = None,
        status_retry: RetryPolicy | None = None,
        on_event: Callable[[str, PaymentEvent], None] | None = None,
    ) -> None:
        super().__init__(config.name, mailbox_size=config.mailbox_size)
        self.config = config
        self.connector = connector
        self.capabilities = connector.capabilities
        self._observer: CallObserver = observer or NullObserver()
        self._dispatch = DispatchState.RUNNING if config.enabled else DispatchState.PAUSED
        self._last_health: Health | None = None
        self._last_health_error: str | None = None
        self._unhealthy: str | None = None
        limits = config.limits
        self.limiter = RateLimiter(limits.rate, limits.burst)
        self.bulkhead = Bulkhead(config.name, limits.concurrency)
        self.breaker = CircuitBreaker(config.name, config.breaker, self._observer.breaker_changed)
        self._status_retry = status_retry or RetryPolicy()
        self._on_event = on_event
        self.events_seen = 0
        self.events_since = 0  # last pushed sequence seen: a reconnect resumes after it
        self.events_connected = False

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def dispatch(self) -> DispatchState:
        return self._dispatch

    @property
    def scope(self) -> str:
        return self.config.scope

    @property
    def accepting(self) -> bool:
        """Whether the dispatcher may hand this connector new work now: running, healthy, breaker closed (or
        probing), and no Retry-After pause."""
        return (self._dispatch is DispatchState.RUNNING and self._unhealthy is None and self.breaker.allows()
                and self.limiter.paused_for() <= 0.0)

    @property
    def batches(self) -> bool:
        """A file channel: slices handed to it wait for a file instead of being sent one by one."""
        return Capability.PAYMENT_FILES in self.capabilities

    @property
    def unhealthy(self) -> str | None:
        return self._unhealthy

    def _set_health(self, problem: str | None) -> None:
        if problem is not None and self._unhealthy is None:
            logger.warning("%s: unhealthy, no new work routed here: %s", self.name, problem)
        elif problem is None and self._unhealthy is not None:
            logger.info("%s: healthy again, taking work", self.name)
        self._unhealthy = problem

    @property
    def in_flight(self) -> int:
        return self.deferred_in_flight

    async def setup(self) -> None:
        await self.connector.open()
        if self._on_event is not None and Capability.PUSH_EVENTS in self.capabilities:
            self.nursery.start_soon(self._follow_events, cast(EventConnector, self.connector))

    async def _follow_events(self, connector: EventConnector) -> None:
        """Keep the bank's event stream open, reconnecting with backoff and resuming from the last sequence."""
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
                await connector.stream_events(self.events_since, deliver)
            except ConnectorError as exc:
                self.events_connected = False
                failures += 1
                delay = self._event_backoff.delay(failures)
                logger.info("%s: event stream down (%s); reconnecting in %.1fs", self.name, exc, delay)
                await trio.sleep(delay)

    _event_backoff = Backoff(initial=0.2, maximum=30.0)

    async def teardown(self) -> None:
        await self.connector.aclose()

    def cut_short(self, msg: ConnectorMsg) -> BaseException:
        if isinstance(msg, Send | QueryStatus):
            return Network(self.name, "connector stopped during the call; outcome unknown", reached=True)
        return ActorStopped(self.name, f"stopped before finishing {type(msg).__name__}")

    def deferred_done(self) -> None:
        if self.deferred_in_flight == 0 and self._dispatch is DispatchState.DRAINING:
            self._set_dispatch(DispatchState.DRAINED)

    def _set_dispatch(self, new: DispatchState) -> None:
        old, self._dispatch = self._dispatch, new
        if old is not new:
            self._observer.dispatch_changed(self.name, old, new)

    async def handle(self, msg: ConnectorMsg) -> Any:
        match msg:
            case Pause():
                self._set_dispatch(DispatchState.PAUSED)
            case Resume():
                self._set_health(None)  # the operator vouches for it; the next failure says otherwise
                self._set_dispatch(DispatchState.RUNNING)
            case Drain():
                self._set_dispatch(DispatchState.DRAINING if self.in_flight else DispatchState.DRAINED)
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
                return Deferred(self._check_health)
            case Send(slice_, trace_id):
                return Deferred(lambda: self._send(slice_, trace_id))
            case QueryStatus(ref, trace_id):
                return Deferred(lambda: self._status(ref, trace_id))
        return self._dispatch

    # -- calls --------------------------------------------------------------------------------------

    async def _wait_turn(self) -> None:
        """Take a rate-limiter turn and a bulkhead slot within ``limits.max_wait``, or raise Busy.

        Busy means nothing left us: not an attempt. Cancelled while waiting: no slot is held.
        """
        max_wait = self.config.limits.max_wait.seconds
        start = trio.current_time()
        if self.limiter.try_acquire(start):
            self._observer.limiter_waited(self.name, 0.0)  # every call counts, so its quantiles are the calls'
        else:
            if self.limiter.delay() > max_wait:
                raise Busy(self.name, f"rate limiter: next turn in {self.limiter.delay():.2f}s"
                                      f" (over limits.max_wait {max_wait:g}s)")
            self._observer.limiter_waited(self.name, await self.limiter.acquire())
        if not self.bulkhead.try_enter():
            remaining = max(0.0, max_wait - (trio.current_time() - start))
            with trio.move_on_after(remaining):
                await self.bulkhead.enter()
                return
            raise Busy(self.name, f"bulkhead: {self.bulkhead.limit} calls in flight for {max_wait:g}s")

    async def _guarded(
        self, operation: str, call: Callable[[CallContext], Awaitable[tuple[R, CallRecord]]], ctx: CallContext
    ) -> tuple[R, CallRecord]:
        if not self.breaker.allows():
            self.breaker.acquire()  # raises CircuitOpen with the state
        await self._wait_turn()
        try:
            self.breaker.acquire()
            start = trio.current_time()
            try:
                result = await self._timed(call, ctx)
            except ConnectorError as exc:
                seconds = trio.current_time() - start
                self.breaker.record(not _counts_against_breaker(exc), seconds)
                if isinstance(exc, Auth):
                    self._set_health(f"{operation}: {exc}")
                if isinstance(exc, RateLimited) and exc.retry_after:
                    exc.retry_after = min(exc.retry_after, self.config.limits.max_retry_after.seconds)
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

    async def _timed(
        self, call: Callable[[CallContext], Awaitable[tuple[R, CallRecord]]], ctx: CallContext
    ) -> tuple[R, CallRecord]:
        """The call under its timeout, enforced here too: a connector that ignores ``ctx.timeout`` still ends."""
        limit = ctx.timeout * 1.1 + 0.1  # the connector's own timeout, if it keeps one, answers first
        try:
            with trio.fail_after(limit):
                return await call(ctx)
        except trio.TooSlowError:
            raise Timeout(self.name, f"no answer within {limit:g}s; outcome unknown") from None

    def _payments(self) -> PaymentConnector:
        if Capability.SEND_PAYMENT not in self.capabilities:
            raise Busy(self.name, f"connector kind {self.config.kind} does not send payments")
        return cast(PaymentConnector, self.connector)

    async def _send(self, slice_: PayoutSlice, trace_id: str) -> tuple[SendResult, CallRecord]:
        ctx = CallContext(
            trace_id=trace_id, timeout=self.config.limits.call_timeout.seconds, payout_slice_id=slice_.id
        )
        payments = self._payments()
        return await self._guarded("send_payment", lambda c: payments.send_payment(slice_, c), ctx)

    async def _status(self, ref: PaymentRef, trace_id: str) -> tuple[PaymentStatus, CallRecord]:
        ctx = CallContext(trace_id=trace_id, timeout=self.config.limits.call_timeout.seconds)
        if Capability.PAYMENT_STATUS not in self.capabilities:
            raise Busy(self.name, f"connector kind {self.config.kind} answers no status queries")
        payments = cast(PaymentConnector, self.connector)

        async def once() -> tuple[PaymentStatus, CallRecord]:
            try:
                return await self._guarded("payment_status", lambda c: payments.payment_status(ref, c), ctx)
            except ConnectorError as exc:
                if exc.record is not None:
                    self._observer.audit(exc.record)
                raise

        status, record = await self._status_retry.call(once)
        self._observer.audit(record)
        return status, record

    async def _check_health(self) -> Health:
        """One health check under the call timeout, counted and audited like any bank call."""
        start = trio.current_time()
        timeout = self.config.limits.call_timeout.seconds
        error: ConnectorError | None = None
        try:
            with trio.fail_after(timeout):
                health = await self.connector.healthcheck()
        except trio.TooSlowError:
            error = Timeout(self.name, f"health check: no answer within {timeout:g}s")
        except ConnectorError as exc:
            error = exc
        seconds = trio.current_time() - start
        if error is not None:
            health = Health(ok=False, latency_seconds=seconds, detail=str(error))
        self._last_health_error = None if health.ok else health.detail
        self._set_health(None if health.ok else f"health check failed: {health.detail}")
        self._last_health = health
        self._observer.call_finished(self.name, "health", error, seconds)
        self._observer.audit(CallRecord(
            connector=self.name, trace_id=uuid.uuid4().hex, operation="health", duration_seconds=seconds,
            outcome="ok" if health.ok else "error",
            error_code=None if health.ok else (error.code if error is not None else "unhealthy"),
            response={"ok": health.ok, "detail": health.detail[:300]}))
        return health

    # -- talking to it ------------------------------------------------------------------------------

    async def send(
        self, slice_: PayoutSlice, *, timeout: float | None = None, trace_id: str | None = None
    ) -> tuple[SendResult, CallRecord]:
        """Send one payment through the pipeline; raises a ConnectorError (Busy when nothing left us).

        ``exc.reached`` says whether the bank may have it. Cancelling the caller cancels the call (the slice is
        then in doubt, as a crash would leave it).
        """
        result: tuple[SendResult, CallRecord] = await self._call(Send(slice_, trace_id or uuid.uuid4().hex), timeout)
        return result

    async def status(
        self, ref: PaymentRef, *, timeout: float | None = None, trace_id: str | None = None
    ) -> tuple[PaymentStatus, CallRecord]:
        """Ask the bank about a payment (retried on retryable errors, as reads are idempotent)."""
        result: tuple[PaymentStatus, CallRecord] = await self._call(
            QueryStatus(ref, trace_id or uuid.uuid4().hex), timeout)
        return result

    async def _call(self, msg: Send | QueryStatus, timeout: float | None) -> Any:
        limit = self.config.limits
        if timeout is None:
            timeout = limit.max_wait.seconds + limit.call_timeout.seconds + ANSWER_MARGIN
        try:
            return await self.ask(msg, timeout=timeout, wait_for_room=False)
        except MailboxFull:
            raise Busy(self.name, "mailbox full") from None
        except ActorStopped:
            raise Busy(self.name, "connector is stopping") from None
        except AskTimeout:
            # The call was cancelled with the ask; it may have been on the wire.
            raise Timeout(self.name, f"no answer from the connector actor within {timeout:g}s; outcome unknown",
                          reached=isinstance(msg, Send)) from None

    def connector_snapshot(self) -> ConnectorSnapshot:
        return ConnectorSnapshot(
            actor=self.snapshot(),
            kind=self.config.kind,
            bank_profile=self.config.bank_profile,
            priority=self.config.priority,
            dispatch=self._dispatch,
            in_flight=self.in_flight,
            waiting=self.bulkhead.waiting,
            breaker=self.breaker.snapshot(),
            limiter_rate=self.limiter.rate,
            limiter_burst=self.limiter.burst,
            limiter_tokens=round(self.limiter.tokens(), 2),
            limiter_paused_seconds=round(self.limiter.paused_for(), 3),
            last_health=self._last_health,
            last_health_error=self._last_health_error,
            events_connected=self.events_connected,
            events_seen=self.events_seen,
            events_since=self.events_since,
            capabilities=sorted(c.value for c in self.capabilities),
            scope=self.scope,
            unhealthy=self._unhealthy,
        )

    async def pause(self, timeout: float = DEFAULT_ASK_TIMEOUT) -> DispatchState:
        return await self._ask_state(Pause(), timeout)

    async def resume(self, timeout: float = DEFAULT_ASK_TIMEOUT) -> DispatchState:
        return await self._ask_state(Resume(), timeout)

    async def drain(self, timeout: float = DEFAULT_ASK_TIMEOUT) -> DispatchState:
        return await self._ask_state(Drain(), timeout)

    async def check_health(self, timeout: float | None = None) -> Health:
        """One health check; answers at the latest after the call timeout (plus a margin for the mailbox)."""
        if timeout is None:
            timeout = self.config.limits.call_timeout.seconds + ANSWER_MARGIN
        result = await self.ask(CheckHealth(), timeout=timeout)
        assert isinstance(result, Health)
        return result

    async def _ask_state(self, msg: ConnectorMsg, timeout: float) -> DispatchState:
        result = await self.ask(msg, timeout=timeout)
        assert isinstance(result, DispatchState)
        return result
