"""The dispatcher: claims payout slices, routes each to a connector actor, records what the bank said.

Design §6. Claims come in batches (``FOR UPDATE SKIP LOCKED`` with a lease, in the store). Routing (the Router):
slice → treasury account → bank profile → its connectors with SEND_PAYMENT for the rail and currency, by
priority, skipping those paused, draining, failed or open. A slice no configured connector can ever take goes
to ``dead`` with the reason; one whose connectors are all unavailable right now goes back to ``pending`` and that
is not an attempt.

Exactly once across channels: every attempt is recorded, and the slice bound to the connector's idempotency
scope, before the bank is called. An attempt that provably did not reach the bank (Busy, CircuitOpen, a refused
connection, a definite refusal) gives the binding back; anything else leaves the slice **in doubt**, bound to that
scope. An Auth error is the connector's fault, not the payout's: the slice goes back unbound and with no attempt
used, and the connector actor is unhealthy until a health check passes. A bound slice only ever goes back to its
scope: a slice recovered from ``sending`` after a crash is first
looked up there by its key; retries go to a connector of that scope (the same key makes that safe); if the scope
is unavailable the slice waits. It is freed for another scope only when the scope answers NOT_FOUND after its
acceptance window (the bank can no longer execute a request that old), or by an operator.

Never dead while in doubt: a bound slice is not given up by counting attempts. Once its attempts are used up
(or its last one was a 409 on a key the bank holds) it is never sent again, only looked up in its scope, with
backoff: the bank's answer settles it, fails it, or (NOT_FOUND once the acceptance window has passed) proves it
was never executed, and only then is it ``dead``. A scope that still cannot say ``lookup_grace`` after its window
leaves the slice ``unresolved``: it may have been paid, and a person decides (``molamctl payouts resolve``).

Results and their audit records are written together, in batches, by one flusher. Stopping (drain) stops
claiming, lets calls in flight finish within the grace and flushes; a call the dispatcher stops waiting for is
cancelled, and its slice stays ``sending`` under its lease, in doubt, recovered as above.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import msgspec
import trio

from connectors import (
    Auth,
    CallRecord,
    ConnectorError,
    PaymentRef,
    PaymentState,
    RateLimited,
    Rejected,
    SendResult,
)

from . import tracing
from ._actor import Actor
from ._backoff import Backoff
from ._connector_actor import ConnectorActor
from ._payout_types import (
    STORE_RETRY,
    AttemptOutcome,
    AttemptStart,
    Claimed,
    Outcome,
    OutcomeKind,
    PayoutStore,
)

logger = logging.getLogger("molamd.dispatcher")


class Route(msgspec.Struct, frozen=True, kw_only=True):
    configured: int  # connectors configured with SEND_PAYMENT for this profile, rail and currency (and scope)
    available: list[ConnectorActor]  # those accepting work now, by priority


class Router(Protocol):
    def route(self, bank_profile: str, rail: str, currency: str, scope: str | None = None) -> Route:
        """The payment connectors for this route, within ``scope`` when the slice is bound to one."""
        ...

    def acceptance_window(self, scope: str) -> float:
        """Seconds after a request's start during which a bank of this scope may still execute it."""
        ...

    def any_accepting(self) -> bool:
        """Whether any connector takes work now (if none does, claiming would only churn)."""
        ...


class DispatcherSettings(msgspec.Struct, frozen=True, kw_only=True):
    batch_size: int = 200
    lease: float = 60.0
    idle_poll: float = 0.2
    max_in_flight: int = 256
    flush_interval: float = 0.02
    call_timeout: float = 30.0  # the longest a dispatcher waits for a connector's answer (then it cancels the call)
    first_status_check: float = 0.5
    release_delay: float = 1.0  # a slice no connector can take right now waits this long (still pending)
    retry_backoff: Backoff = msgspec.field(default_factory=lambda: Backoff(initial=1.0, maximum=300.0, jitter=1.0))
    # Lookups of a slice in doubt whose attempts are used up, and how long past the scope's acceptance window
    # lookups that fail go on before the slice is left unresolved for a person.
    lookup_backoff: Backoff = msgspec.field(default_factory=lambda: Backoff(initial=2.0, maximum=120.0, jitter=0.5))
    lookup_grace: float = 300.0


SliceTask = Callable[[Claimed, list[ConnectorActor]], Awaitable[None]]


class Wake(msgspec.Struct, frozen=True):
    pass


def _slice_attributes(c: Claimed) -> dict[str, Any]:
    """What a span says of a slice: ids and routing facts, never an amount's owner or an account."""
    return {"slice_id": c.slice.id, "payout_id": c.slice.payout_id, "bank_profile": c.bank_profile,
            "rail": c.slice.rail, "currency": c.slice.currency}


def _describe(exc: ConnectorError) -> str:
    return f"{exc.code}: {exc}"


class Dispatcher(Actor[Wake]):
    def __init__(self, store: PayoutStore, router: Router, settings: DispatcherSettings,
                 rng: random.Random | None = None,
                 on_recorded: Callable[[Sequence[Outcome], float], None] | None = None) -> None:
        super().__init__("dispatcher", mailbox_size=16)
        self._store = store
        self._router = router
        self.settings = settings
        self._rng = rng or random.Random()
        self._on_recorded = on_recorded
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._room = trio.Event()
        self._wake = trio.Event()
        self._outcomes: list[Outcome] = []
        self._pending = trio.Event()
        self._claimed_at: dict[int, float] = {}
        self._traces: dict[int, str] = {}  # slice -> trace id of its attempt under way (sent to the bank)
        self._audit: list[CallRecord] = []
        self._stopping = False

    async def setup(self) -> None:
        self.nursery.start_soon(self._claim_loop)
        self.nursery.start_soon(self._flush_loop)

    async def handle(self, msg: Wake) -> None:
        self._wake.set()

    def wake(self) -> None:
        """Claim now instead of at the next idle poll (safe to call from any task on the trio thread)."""
        self._wake.set()

    def request_stop(self) -> None:
        self._stopping = True
        self._wake.set()
        super().request_stop()

    async def drained(self) -> None:
        await self._idle.wait()
        await self._flush()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- claiming and routing ------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        failures = 0
        while not self._stopping:
            if not self._router.any_accepting():
                with trio.move_on_after(self.settings.idle_poll):
                    await self._wake.wait()
                self._wake = trio.Event()
                continue
            room = self.settings.max_in_flight - self._in_flight
            if room < max(1, min(self.settings.batch_size, self.settings.max_in_flight) // 4):
                self._room = trio.Event()
                await self._room.wait()
                continue
            try:
                claim_started = tracing.now_ns()
                claimed = await self._store.claim(min(room, self.settings.batch_size), self.settings.lease)
                sent = await self._dispatch(claimed, claim_started) if claimed else 0
            except Exception as exc:
                if not getattr(exc, "retryable", False):
                    raise
                failures += 1
                logger.warning("dispatcher: store unavailable (%s); retrying", exc)
                await trio.sleep(STORE_RETRY.delay(failures, self._rng))
                continue
            failures = 0
            if not sent:
                with trio.move_on_after(self.settings.idle_poll):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _dispatch(self, claimed: Sequence[Claimed], claim_started: int | None = None) -> int:
        """Route a claimed batch; returns how many sends (or recovery lookups) started."""
        claim_ended = tracing.now_ns()
        starts: list[AttemptStart] = []
        routes: dict[int, tuple[Claimed, list[ConnectorActor]]] = {}
        started = 0
        now = trio.current_time()
        for c in claimed:
            self._claimed_at[c.slice.id] = now
        for c in claimed:
            s = c.slice
            if c.account_currency != s.currency:
                mismatch = f"currency {s.currency} does not match treasury account currency {c.account_currency}"
                self._emit(Outcome(slice_id=s.id, kind=OutcomeKind.DEAD, error=mismatch) if c.bound_scope is None
                           else self._unresolved(c, c.bound_scope, mismatch))
                continue
            route = self._router.route(c.bank_profile, s.rail, s.currency, c.bound_scope)
            if not route.configured and c.bound_scope is None:
                self._emit(Outcome(slice_id=s.id, kind=OutcomeKind.DEAD, error=(
                    f"no connector serves bank profile {c.bank_profile!r}, rail {s.rail!r}, currency {s.currency}")))
            elif c.bound_scope is not None and c.attempts >= c.max_attempts:
                # In doubt with its attempts used up (or recovered after a crash on its last one): never sent
                # again, only asked about in its scope.
                if route.available:
                    started += 1
                    self._start(self._look_up, c, route.available)
                else:
                    self._emit(self._unanswered(c, c.bound_scope, c.bound_age, (
                        f"no connector of idempotency scope {c.bound_scope!r} is available to ask")))
            elif not route.available:
                # Bound and its scope unavailable (or unconfigured): it waits, in doubt, and is not sent elsewhere.
                why = None if c.bound_scope is None else (
                    f"in doubt in idempotency scope {c.bound_scope!r}: waiting for a connector of that scope")
                self._emit(Outcome(slice_id=s.id, kind=OutcomeKind.RELEASE, delay=self.settings.release_delay,
                                   error=why))
            elif c.recovering or (c.bound_scope is not None
                                  and c.bound_age >= self._router.acceptance_window(c.bound_scope)):
                # After a crash, or in doubt for longer than the bank could still act on it: ask before sending.
                started += 1
                self._start(self._recover, c, route.available)
            else:
                actor = route.available[0]
                start = AttemptStart(slice_id=s.id, connector=actor.name, scope=actor.scope, trace_id=uuid.uuid4().hex)
                starts.append(start)
                routes[s.id] = (c, route.available)
                if tracing.enabled():
                    tracing.record(start.trace_id, "payout.claim", claim_started or claim_ended, claim_ended,
                                   batch=len(claimed), **_slice_attributes(c))
                    tracing.record(start.trace_id, "payout.route", claim_ended, connector=actor.name,
                                   scope=actor.scope, bound_scope=c.bound_scope, candidates=len(route.available))
        if not starts:
            return started
        held = await self._start_attempts(starts)
        for slice_id in held:
            claimed_slice, available = routes[slice_id]
            self._start(self._send, claimed_slice, available[:1])
        return started + len(held)

    async def _start_attempts(self, starts: Sequence[AttemptStart]) -> set[int]:
        try:
            held = await self._store.start_attempts(starts, self.settings.lease)
        except Exception as exc:
            if getattr(exc, "retryable", False):
                # Still 'claimed' by us: hand them back as soon as the database is, not when the lease ends.
                for start in starts:
                    self._emit(Outcome(slice_id=start.slice_id, kind=OutcomeKind.RELEASE))
            raise
        for start in starts:
            if start.slice_id in held:
                self._traces[start.slice_id] = start.trace_id  # the id the send carries to the bank
            else:
                self._claimed_at.pop(start.slice_id, None)  # another host took it over meanwhile
        return held

    def _start(self, fn: SliceTask, claimed: Claimed, available: list[ConnectorActor]) -> None:
        self._in_flight += 1
        self._idle = trio.Event()
        self.nursery.start_soon(self._run, fn, claimed, available)

    async def _run(self, fn: SliceTask, claimed: Claimed, available: list[ConnectorActor]) -> None:
        try:
            await fn(claimed, available)
        finally:
            self._in_flight -= 1
            self._room.set()
            if self._in_flight == 0:
                self._idle.set()

    # -- one slice -----------------------------------------------------------------------------------

    async def _send(self, c: Claimed, available: list[ConnectorActor]) -> None:
        """One attempt at ``available[0]`` (already recorded as started); cancelled with the dispatcher."""
        actor = available[0]
        attempt = c.attempts + 1
        if actor.batches:
            # A file channel: the slice waits for its file, bound to the channel's scope; the attempt ends when
            # the file is recorded (the FileBatcher owns it from here).
            self._emit(Outcome(slice_id=c.slice.id, kind=OutcomeKind.BATCHED, connector=actor.name))
            return
        trace_id = self._traces.get(c.slice.id)
        with tracing.span(trace_id, "payout.send", connector=actor.name, attempt=attempt,
                          **_slice_attributes(c)) as span:
            try:
                result, record = await actor.send(c.slice, timeout=self.settings.call_timeout, trace_id=trace_id)
            except ConnectorError as exc:
                outcome = await self._failed(c, actor, exc, attempt)
                if span is not None:
                    span.set_attributes({"error.code": exc.code, "reached": exc.reached, "outcome": outcome.kind.value})
                self._emit(outcome, exc.record)
                return
            if span is not None:
                span.set_attributes({"payment.state": result.state.value, "outcome": "answered"})
        self._emit(self._succeeded(c.slice.id, actor.name, result, AttemptOutcome.ANSWERED), record)

    def _succeeded(self, slice_id: int, connector: str, result: SendResult,
                   attempt: AttemptOutcome | None) -> Outcome:
        if result.state is PaymentState.SETTLED:
            return Outcome(slice_id=slice_id, kind=OutcomeKind.SETTLED, connector=connector,
                           provider_ref=result.provider_ref, attempt=attempt)
        if result.state is PaymentState.REJECTED:
            return Outcome(slice_id=slice_id, kind=OutcomeKind.FAILED, connector=connector,
                           provider_ref=result.provider_ref, error=f"rejected by the bank: {result.reason_code}",
                           attempt=attempt)
        return Outcome(slice_id=slice_id, kind=OutcomeKind.SENT, connector=connector, provider_ref=result.provider_ref,
                       delay=self.settings.first_status_check, attempt=attempt)

    async def _failed(self, c: Claimed, actor: ConnectorActor, exc: ConnectorError, attempt: int) -> Outcome:
        sid = c.slice.id
        if isinstance(exc, Rejected):
            return Outcome(slice_id=sid, kind=OutcomeKind.FAILED, connector=actor.name, error=_describe(exc),
                           attempt=AttemptOutcome.ANSWERED)
        if isinstance(exc, Auth):
            # Our credentials, not this payout: refused before the bank acted on it, so not an attempt, and the
            # slice is free for another connector (the actor is now unhealthy and takes no work).
            return Outcome(slice_id=sid, kind=OutcomeKind.RELEASE, connector=actor.name,
                           delay=self.settings.release_delay, error=f"not sent: {_describe(exc)}",
                           attempt=AttemptOutcome.REFUSED)
        if not exc.reached and exc.retryable and not isinstance(exc, RateLimited):
            # Nothing left us (busy, breaker open, connection refused): not an attempt; routed afresh later.
            return Outcome(slice_id=sid, kind=OutcomeKind.RELEASE, connector=actor.name,
                           delay=self.settings.release_delay, error=f"not sent: {_describe(exc)}",
                           attempt=AttemptOutcome.NOT_SENT)
        outcome = AttemptOutcome.IN_DOUBT if exc.reached else AttemptOutcome.REFUSED
        # May a bank have it after this attempt? This one may have reached it, or an earlier one did.
        bound = exc.reached or c.bound_scope is not None
        if not exc.retryable or attempt >= c.max_attempts:
            if bound:  # never dead while in doubt: its scope is asked (a 409: the bank holds the key)
                return msgspec.structs.replace(
                    await self._exhausted(c, actor, f"attempt {attempt}: {_describe(exc)}"), attempt=outcome)
            if not exc.retryable:
                return Outcome(slice_id=sid, kind=OutcomeKind.DEAD, connector=actor.name,
                               error=f"attempt {attempt}: {_describe(exc)}", attempt=outcome)
            return Outcome(slice_id=sid, kind=OutcomeKind.DEAD, connector=actor.name, attempt=outcome,
                           error=f"gave up after {attempt} attempts (max_attempts), none of which reached the bank;"
                                 f" last: {_describe(exc)}")
        delay = self.settings.retry_backoff.delay(attempt, self._rng)
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            delay = max(exc.retry_after, 0.0)
        return Outcome(slice_id=sid, kind=OutcomeKind.RETRY, connector=actor.name, delay=delay,
                       error=f"attempt {attempt}: {_describe(exc)}", attempt=outcome)

    # -- in doubt with no attempts left: only asked about ----------------------------------------------

    async def _exhausted(self, c: Claimed, actor: ConnectorActor, why: str) -> Outcome:
        """Right after the attempt that used the last one up (it started a moment ago: a NOT_FOUND now proves
        nothing, so the age counted is 0)."""
        return await self._ask(c, actor, c.bound_scope or actor.scope, 0.0, why)

    async def _look_up(self, c: Claimed, available: list[ConnectorActor]) -> None:
        """A claimed slice in doubt whose attempts are used up: one lookup in its bound scope."""
        actor = next((a for a in available if a.name == c.connector_name), available[0])
        scope = c.bound_scope or actor.scope
        if self._outside_scope(c, actor, scope):
            return
        self._emit(await self._ask(c, actor, scope, c.bound_age,
                                   f"{c.attempts} attempts used (max_attempts {c.max_attempts})"))

    async def _ask(self, c: Claimed, actor: ConnectorActor, scope: str, age: float, why: str) -> Outcome:
        """What the scope says of the key, ``age`` seconds after the latest attempt that may have reached it."""
        try:
            status, _ = await actor.status(PaymentRef(idempotency_key=c.slice.idempotency_key),
                                           timeout=self.settings.call_timeout)
        except ConnectorError as exc:
            return self._unanswered(c, scope, age, f"{why}; lookup in scope {scope!r} failed: {_describe(exc)}",
                                    actor.name)
        if status.state is not PaymentState.NOT_FOUND and status.provider_ref is not None:
            return self._succeeded(c.slice.id, actor.name, SendResult(
                provider_ref=status.provider_ref, state=status.state, reason_code=status.reason_code), None)
        if status.state is not PaymentState.NOT_FOUND:
            return self._unanswered(c, scope, age,
                                    f"{why}; scope {scope!r} answered {status.state} with no payment id",
                                    actor.name)
        window = self._router.acceptance_window(scope)
        if age >= window:
            # That scope will never execute it: provably not executed, and free of the scope.
            return Outcome(slice_id=c.slice.id, kind=OutcomeKind.DEAD, connector=actor.name, released_scope=scope,
                           error=f"gave up after {max(c.attempts, 1)} attempts (max_attempts): scope {scope!r}"
                                 f" answered NOT_FOUND {age:.0f}s after the latest attempt that may have reached it,"
                                 f" past its acceptance window ({window:g}s): provably not executed")
        return Outcome(slice_id=c.slice.id, kind=OutcomeKind.LOOKUP, connector=actor.name,
                       delay=self._next_lookup(c, age, window),
                       error=f"{why}; in doubt in scope {scope!r}: NOT_FOUND {age:.0f}s after the latest attempt,"
                             f" inside its acceptance window ({window:g}s); asked again")

    def _outside_scope(self, c: Claimed, actor: ConnectorActor, scope: str) -> bool:
        """Whether routing offered a connector of another scope than the slice's (a broken router). Such a
        connector is neither asked about the key nor sent it: its NOT_FOUND says nothing of the scope that may
        have the payment, and would free the slice (or make it dead) while that scope may have paid it."""
        if actor.scope == scope:
            return False
        logger.error("payout slice %s is bound to idempotency scope %r but was routed to %s of scope %r",
                     c.slice.id, scope, actor.name, actor.scope)
        self._emit(Outcome(slice_id=c.slice.id, kind=OutcomeKind.RELEASE, delay=self.settings.release_delay, error=(
            f"in doubt in idempotency scope {scope!r}: offered connector {actor.name!r} of scope"
            f" {actor.scope!r}, which is neither asked nor sent it")))
        return True

    def _unanswered(self, c: Claimed, scope: str, age: float, why: str, connector: str | None = None) -> Outcome:
        """The scope could not say: asked again, or past its window and the grace, left for a person."""
        window = self._router.acceptance_window(scope)
        if age >= window + self.settings.lookup_grace:
            return self._unresolved(c, scope, f"scope {scope!r} could not say within its acceptance window"
                                              f" ({window:g}s) and {self.settings.lookup_grace:g}s after; {why}",
                                    connector)
        return Outcome(slice_id=c.slice.id, kind=OutcomeKind.LOOKUP, connector=connector,
                       delay=self._next_lookup(c, age, window + self.settings.lookup_grace),
                       error=f"{why}; in doubt in scope {scope!r}: asked again")

    def _unresolved(self, c: Claimed, scope: str, why: str, connector: str | None = None) -> Outcome:
        logger.error("payout slice %s is unresolved in scope %r: %s", c.slice.id, scope, why)
        return Outcome(slice_id=c.slice.id, kind=OutcomeKind.UNRESOLVED, connector=connector, error=(
            f"unresolved: may have been paid; never pay again without a person (molamctl payouts resolve): {why}"))

    def _next_lookup(self, c: Claimed, age: float, deadline: float) -> float:
        """Backoff by lookups made, but never past ``deadline`` (the age at which the answer decides more)."""
        delay = self.settings.lookup_backoff.delay(c.lookups + 1, self._rng)
        if age < deadline:
            delay = min(delay, deadline - age + 1.0)
        return delay

    async def _recover(self, c: Claimed, available: list[ConnectorActor]) -> None:
        """A slice in doubt (found 'sending' after a crash, or bound past its scope's acceptance window): its
        scope decides whether it still needs sending.

        ``available`` are the accepting connectors of the slice's bound scope.
        """
        actor = next((a for a in available if a.name == c.connector_name), available[0])
        scope = c.bound_scope or actor.scope
        if self._outside_scope(c, actor, scope):
            return
        if actor.batches:
            # A slice of a file channel is in a file only once it is 'sent': one found before that was never in
            # a file, so it goes (back) to the batcher, in the same scope.
            start = AttemptStart(slice_id=c.slice.id, connector=actor.name, scope=actor.scope,
                                 trace_id=uuid.uuid4().hex)
            if c.slice.id in await self._start_attempts([start]):
                await self._send(c, [actor])
            return
        try:
            status, _ = await actor.status(PaymentRef(idempotency_key=c.slice.idempotency_key),
                                           timeout=self.settings.call_timeout)
        except ConnectorError as exc:
            why = f"recovery lookup in scope {scope!r} failed: {_describe(exc)}"
            if c.bound_scope is not None and c.bound_age >= (
                    self._router.acceptance_window(scope) + self.settings.lookup_grace):
                # In doubt past its window and the grace, and its scope still cannot say: for a person.
                self._emit(self._unanswered(c, scope, c.bound_age, why, actor.name))
                return
            # Unknown: it waits, bound to its scope; the next claim sends again there (the same key).
            self._emit(Outcome(slice_id=c.slice.id, kind=OutcomeKind.RELEASE, connector=actor.name,
                               delay=self.settings.retry_backoff.delay(1, self._rng),
                               error=f"recovery lookup in scope {scope!r} failed: {_describe(exc)}"))
            return
        if status.state is not PaymentState.NOT_FOUND and status.provider_ref is not None:
            self._emit(self._succeeded(c.slice.id, actor.name, SendResult(
                provider_ref=status.provider_ref, state=status.state, reason_code=status.reason_code), None))
            return
        window = self._router.acceptance_window(scope)
        if c.bound_age < window:
            # The bank does not have it yet, but an old request may still arrive: send again in the same scope.
            start = AttemptStart(slice_id=c.slice.id, connector=actor.name, scope=actor.scope,
                                 trace_id=uuid.uuid4().hex)
            if c.slice.id in await self._start_attempts([start]):
                await self._send(c, [actor])
            return
        # NOT_FOUND past the acceptance window: that scope will never execute it. Free it for any scope.
        self._emit(Outcome(slice_id=c.slice.id, kind=OutcomeKind.RELEASE, released_scope=scope, error=(
            f"released from idempotency scope {scope!r}: NOT_FOUND {c.bound_age:.0f}s after the last attempt"
            f" (acceptance window {window:g}s)")))

    # -- writing results -----------------------------------------------------------------------------

    def _emit(self, outcome: Outcome, record: CallRecord | None = None) -> None:
        self._pending.set()
        claimed_at = self._claimed_at.pop(outcome.slice_id, None)
        trace_id = self._traces.pop(outcome.slice_id, None)
        if claimed_at is not None or trace_id is not None:
            outcome = msgspec.structs.replace(outcome, claimed_at=claimed_at, trace_id=trace_id)
        self._outcomes.append(outcome)
        if record is not None:
            self._audit.append(record)

    async def _flush_loop(self) -> None:
        """Write as soon as there is something to write, gathering for at most flush_interval first."""
        while True:
            await self._pending.wait()
            await trio.sleep(self.settings.flush_interval)
            self._pending = trio.Event()
            await self._flush()

    async def _flush(self) -> None:
        if not self._outcomes and not self._audit:
            return
        outcomes, audit = self._outcomes, self._audit
        self._outcomes, self._audit = [], []
        try:
            started = tracing.now_ns()
            await self._store.record(outcomes, audit)
            if tracing.enabled():
                for o in outcomes:
                    tracing.record(o.trace_id, "payout.record", started, slice_id=o.slice_id, outcome=o.kind.value,
                                   connector=o.connector, batch=len(outcomes))
            if self._on_recorded is not None:
                self._on_recorded(outcomes, trio.current_time())
        except Exception as exc:
            # Keep them: the slices stay claimed/sending under our lease until this write succeeds.
            self._outcomes[:0] = outcomes
            self._audit[:0] = audit
            self._pending.set()
            if not getattr(exc, "retryable", False):
                raise
            logger.warning("dispatcher: could not record %d outcomes (%s); will retry", len(outcomes), exc)
            await trio.sleep(0.5)
