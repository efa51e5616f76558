"""The dispatcher on trio's mock clock, against an in-memory payout store and in-memory banks (seams we own).

Each fake bank has its own ledger and idempotency store, as two channels of one bank do: a payment that reaches
both is paid twice, and these tests can see it.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from decimal import Decimal
from typing import Any, ClassVar

import msgspec
import pytest
import trio
import trio.testing

from actors import (
    NOT_REACHED,
    AttemptOutcome,
    AttemptStart,
    Backoff,
    Claimed,
    ConnectorActor,
    Dispatcher,
    DispatcherSettings,
    Outcome,
    OutcomeKind,
    Route,
)
from connectors import (
    Auth,
    CallContext,
    CallRecord,
    Capability,
    Duration,
    Health,
    IdempotencyConflict,
    Network,
    NullConfig,
    PaymentRef,
    PaymentState,
    PaymentStatus,
    PayoutSlice,
    RateLimited,
    SendResult,
    ServerError,
    Validation,
)
from connectors._contract import LimitsConfig


class FakeBank:
    """One channel's bank: its own ledger and idempotency store. ``mode`` says how the next calls go."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ledger: dict[str, str] = {}  # idempotency key -> payment id
        self.mode = "ok"  # ok, hang_after_execute, refuse, error_after_execute, hang, conflict
        self.status_mode = "ok"  # ok, or error: every status lookup fails (the bank cannot say)
        self.status_state = PaymentState.ACCEPTED  # what a lookup says of a payment the bank has
        self.calls = 0
        self.lookups = 0
        self.cancelled = 0

    def execute(self, key: str) -> str:
        return self.ledger.setdefault(key, f"{self.name}-{len(self.ledger) + 1}")


class FakeConnector:
    """A PaymentConnector over a FakeBank; the seam the connector actor drives."""

    kind: ClassVar[str] = "fake"
    offers: ClassVar[frozenset[Capability]] = frozenset({Capability.SEND_PAYMENT, Capability.PAYMENT_STATUS})
    capabilities = offers

    def __init__(self, name: str, bank: FakeBank) -> None:
        self.name, self.bank = name, bank

    async def open(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def healthcheck(self) -> Health:
        return Health(ok=True, latency_seconds=0.0)

    def _record(self, op: str, ctx: CallContext) -> CallRecord:
        return CallRecord(connector=self.name, trace_id=ctx.trace_id, operation=op, duration_seconds=0.0, outcome="ok")

    async def send_payment(self, slice: PayoutSlice, ctx: CallContext) -> tuple[SendResult, CallRecord]:
        bank = self.bank
        bank.calls += 1
        if bank.mode == "refuse":
            raise Network(self.name, "connection refused", reached=False)
        if bank.mode == "wrong_key":
            raise Auth(self.name, "HTTP 401: signature does not verify")
        if bank.mode == "slow_down":
            raise RateLimited(self.name, "HTTP 429", retry_after=1e9)
        if bank.mode == "conflict":
            raise IdempotencyConflict(self.name, "HTTP 409: this key was used with a different request")
        if bank.mode == "invalid":
            raise Validation(self.name, "HTTP 400: creditor account is not an IBAN")
        try:
            await trio.sleep(0.01)
            if bank.mode == "hang":
                await trio.sleep_forever()
            ref = bank.execute(slice.idempotency_key)
            if bank.mode == "hang_after_execute":
                await trio.sleep_forever()
        except trio.Cancelled:
            bank.cancelled += 1
            raise
        if bank.mode == "error_after_execute":
            raise ServerError(self.name, "HTTP 503", http_status=503)
        return SendResult(provider_ref=ref, state=PaymentState.ACCEPTED), self._record("send_payment", ctx)

    async def payment_status(self, ref: PaymentRef, ctx: CallContext) -> tuple[PaymentStatus, CallRecord]:
        self.bank.lookups += 1
        if self.bank.status_mode == "error":
            raise ServerError(self.name, "HTTP 503 on GET /payments", http_status=503)
        found = self.bank.ledger.get(ref.idempotency_key)
        state = self.bank.status_state if found else PaymentState.NOT_FOUND
        return PaymentStatus(state=state, provider_ref=found), self._record("payment_status", ctx)


class Row(msgspec.Struct, kw_only=True):
    slice: PayoutSlice
    status: str = "pending"
    attempts: int = 0
    max_attempts: int = 8
    lookups: int = 0  # status lookups made once its attempts ran out (status_checks in PostgreSQL)
    due: float = 0.0
    lease_until: float = 0.0
    connector: str | None = None
    provider_ref: str | None = None
    bound_scope: str | None = None
    bound_at: float = 0.0
    last_error: str | None = None


class MemoryStore:
    """The PayoutStore protocol in memory, on trio time; ``fail_records`` makes the next writes fail."""

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}
        self.attempts: list[dict[str, Any]] = []
        self.audit_rows: list[CallRecord] = []
        self.released: list[tuple[int, str]] = []
        self.fail_records = 0

    def add(self, slice_id: int, **kw: Any) -> Row:
        s = PayoutSlice(id=slice_id, payout_id=f"p{slice_id}", idempotency_key=f"molam-slice-{slice_id}",
                        amount=Decimal(5000), currency="XOF", rail="ach", debtor_account="SN01",
                        beneficiary_name="Awa", beneficiary_account="SN08")
        self.rows[slice_id] = Row(slice=s, **kw)
        return self.rows[slice_id]

    async def claim(self, limit: int, lease: float) -> list[Claimed]:
        now = trio.current_time()
        out = []
        for row in self.rows.values():
            ready = (row.status in ("pending", "retry_scheduled") and row.due <= now) or (
                row.status in ("claimed", "sending") and row.lease_until < now)
            if ready and len(out) < limit:
                out.append(Claimed(slice=row.slice, bank_profile="bank", account_currency="XOF",
                                   attempts=row.attempts, max_attempts=row.max_attempts,
                                   recovering=row.status == "sending", lookups=row.lookups,
                                   connector_name=row.connector, bound_scope=row.bound_scope,
                                   bound_age=now - row.bound_at))
                if row.status == "sending":
                    for a in self.attempts:
                        if a["slice"] == row.slice.id and a["outcome"] is None:
                            a["outcome"] = AttemptOutcome.IN_DOUBT
                row.status, row.lease_until = "claimed", now + lease
        return out

    async def start_attempts(self, attempts: Sequence[AttemptStart], lease: float) -> set[int]:
        held = set()
        for a in attempts:
            row = self.rows[a.slice_id]
            if row.status != "claimed" or (row.bound_scope is not None and row.bound_scope != a.scope):
                continue
            self.attempts.append({"slice": a.slice_id, "connector": a.connector, "scope": a.scope, "outcome": None,
                                  "before": (row.bound_scope, row.bound_at)})
            row.status, row.connector, row.attempts = "sending", a.connector, row.attempts + 1
            row.bound_scope, row.bound_at = a.scope, trio.current_time()
            row.lease_until = trio.current_time() + lease
            held.add(a.slice_id)
        return held

    async def record(self, outcomes: Sequence[Outcome], audit: Sequence[CallRecord]) -> int:
        if self.fail_records:
            self.fail_records -= 1
            raise _Away("database away")
        now = trio.current_time()
        for o in outcomes:
            row = self.rows[o.slice_id]
            if o.attempt is not None:
                attempt = next(a for a in reversed(self.attempts) if a["slice"] == o.slice_id and a["outcome"] is None)
                attempt["outcome"] = o.attempt
                if o.attempt in NOT_REACHED:
                    row.bound_scope, row.bound_at = attempt["before"]
            if o.released_scope is not None and row.bound_scope == o.released_scope:
                row.bound_scope = None
                self.released.append((o.slice_id, o.released_scope))
            was_sending = row.status == "sending"
            row.last_error = o.error or row.last_error
            row.connector = o.connector or row.connector
            row.provider_ref = o.provider_ref or row.provider_ref
            match o.kind:
                case OutcomeKind.SENT | OutcomeKind.SETTLED | OutcomeKind.FAILED | OutcomeKind.DEAD:
                    row.status = o.kind.value
                case OutcomeKind.RETRY:
                    row.status, row.due = "retry_scheduled", now + o.delay
                case OutcomeKind.RELEASE:
                    row.status, row.due = "pending", now + o.delay
                    if was_sending:
                        row.attempts -= 1
                case OutcomeKind.LOOKUP:  # not an attempt: the scope is asked again later
                    row.status, row.due, row.lookups = "retry_scheduled", now + o.delay, row.lookups + 1
                case OutcomeKind.UNRESOLVED:
                    assert row.bound_scope is not None, "unresolved is always bound (the SQL CHECK)"
                    row.status = "unresolved"
        self.audit_rows.extend(audit)
        return len(outcomes)

    async def audit(self, audit: Sequence[CallRecord]) -> None:
        self.audit_rows.extend(audit)

    def paid(self, *banks: FakeBank) -> dict[str, int]:
        """How many banks executed each slice's key (the union of ledgers)."""
        counts: dict[str, int] = {}
        for bank in banks:
            for key in bank.ledger:
                counts[key] = counts.get(key, 0) + 1
        return counts


class _Away(Exception):
    retryable = True


class Routes:
    """The Router seam: one bank profile, its payment connectors by priority, filtered by scope."""

    def __init__(self, actors: list[ConnectorActor], window: float = 600.0) -> None:
        self.actors = actors
        self.window = window

    def route(self, bank_profile: str, rail: str, currency: str, scope: str | None = None) -> Route:
        mine = [a for a in self.actors if scope is None or a.scope == scope]
        return Route(configured=len(mine), available=[a for a in mine if a.accepting])

    def acceptance_window(self, scope: str) -> float:
        return self.window

    def any_accepting(self) -> bool:
        return any(a.accepting for a in self.actors)


def actor(name: str, bank: FakeBank, priority: int, **limits: Any) -> ConnectorActor:
    config = NullConfig(name=name, bank_profile="bank", priority=priority, idempotency_scope=f"{name}-scope",
                        limits=LimitsConfig(call_timeout=Duration("2s"), **limits))
    return ConnectorActor(config, FakeConnector(name, bank))  # type: ignore[arg-type]


SETTINGS = DispatcherSettings(lease=60.0, idle_poll=0.05, call_timeout=10.0, release_delay=0.5,
                              flush_interval=0.01, retry_backoff=Backoff(initial=0.5, maximum=2.0, jitter=0.0))


@asynccontextmanager
async def running(store: MemoryStore, routes: Routes, settings: DispatcherSettings = SETTINGS
                  ) -> AsyncIterator[Dispatcher]:
    async with trio.open_nursery() as nursery:
        for a in routes.actors:
            await nursery.start(a.run)
        dispatcher = Dispatcher(store, routes, settings, rng=random.Random(1))
        await nursery.start(dispatcher.run)
        yield dispatcher
        nursery.cancel_scope.cancel()


def one_slice_two_channels(a: FakeBank, b: FakeBank) -> tuple[MemoryStore, ConnectorActor, ConnectorActor]:
    """One pending slice, and a primary (bank A) and a backup (bank B) connector in scopes of their own."""
    store = MemoryStore()
    store.add(1)
    return store, actor("primary", a, 10), actor("backup", b, 20)


@pytest.fixture
def banks() -> tuple[FakeBank, FakeBank]:
    return FakeBank("A"), FakeBank("B")


async def test_a_timeout_after_send_keeps_the_slice_in_its_scope(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    a.mode = "hang_after_execute"  # the bank executes, the answer never comes
    store, primary, backup = one_slice_two_channels(a, b)
    async with running(store, Routes([primary, backup])):
        await trio.sleep(2.5)  # the call times out (2s and a margin): in doubt
        row = store.rows[1]
        assert row.status == "retry_scheduled" and row.bound_scope == "primary-scope"
        assert store.attempts[0]["outcome"] is AttemptOutcome.IN_DOUBT
        assert a.cancelled == 1, "the timed-out call was cancelled, not left running"
        await primary.pause()  # the primary is unavailable: the slice waits, it is not sent elsewhere
        await trio.sleep(30)
        assert b.calls == 0 and row.status == "pending" and row.bound_scope == "primary-scope"
        assert "in doubt in idempotency scope 'primary-scope'" in (row.last_error or "")
        a.mode = "ok"
        await primary.resume()
        await trio.sleep(5)
        assert row.status == "sent" and row.provider_ref == "A-1"
    assert store.paid(a, b) == {"molam-slice-1": 1}


async def test_fallback_only_for_attempts_that_provably_did_not_reach_the_bank(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    a.mode = "refuse"  # connection refused: nothing left us
    store, primary, backup = one_slice_two_channels(a, b)
    async with running(store, Routes([primary, backup])):
        await trio.sleep(0.2)
        row = store.rows[1]
        assert store.attempts[0]["outcome"] is AttemptOutcome.NOT_SENT
        assert row.bound_scope is None and row.attempts == 0, "not an attempt; the binding given back"
        await primary.pause()
        await trio.sleep(2)
        assert row.status == "sent" and row.connector == "backup" and row.bound_scope == "backup-scope"
    assert store.paid(a, b) == {"molam-slice-1": 1}


async def test_a_5xx_is_in_doubt_and_retried_in_the_same_scope(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    a.mode = "error_after_execute"
    store, primary, backup = one_slice_two_channels(a, b)
    async with running(store, Routes([primary, backup])):
        await trio.sleep(0.2)
        assert store.rows[1].status == "retry_scheduled" and store.rows[1].bound_scope == "primary-scope"
        primary.breaker.force_open()  # the primary's breaker opens: the backup is free, but not for this slice
        await trio.sleep(10)
        assert b.calls == 0 and store.rows[1].status == "pending"
        primary.breaker.reset()
        a.mode = "ok"
        await trio.sleep(3)
        assert store.rows[1].status == "sent" and store.rows[1].connector == "primary"
    assert store.paid(a, b) == {"molam-slice-1": 1}, "the retry reused the key in the scope that had it"


async def test_recovery_asks_the_bound_scope_and_does_not_send_again(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    a.execute("molam-slice-1")  # the crashed daemon's call did reach bank A
    store = MemoryStore()
    store.add(1, status="sending", lease_until=-1.0, connector="primary", bound_scope="primary-scope")
    store.attempts.append({"slice": 1, "connector": "primary", "scope": "primary-scope", "outcome": None,
                           "before": (None, 0.0)})
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    async with running(store, Routes([primary, backup])):
        await trio.sleep(1)
    row = store.rows[1]
    assert row.status == "sent" and row.provider_ref == "A-1"
    assert store.attempts[0]["outcome"] is AttemptOutcome.IN_DOUBT, "the abandoned attempt is closed as in doubt"
    assert a.calls == 0 and b.calls == 0, "found by its key: no new send anywhere"


async def test_scope_unavailable_the_recovering_slice_waits(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    store = MemoryStore()
    store.add(1, status="sending", lease_until=-1.0, connector="primary", bound_scope="primary-scope")
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    primary.breaker.force_open()
    async with running(store, Routes([primary, backup])):
        await trio.sleep(60)
    assert b.calls == 0 and store.rows[1].bound_scope == "primary-scope" and store.rows[1].status == "pending"


async def test_release_to_another_scope_only_after_the_acceptance_window(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    store = MemoryStore()
    # In doubt at the primary, which (we will learn) never got it; the primary is paused for new sends.
    store.add(1, status="sending", lease_until=-1.0, connector="primary", bound_scope="primary-scope")
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    a.mode = "hang"  # a resend inside the window hangs: still the primary's scope, nothing goes to B
    async with running(store, Routes([primary, backup], window=20.0)):
        await trio.sleep(5)
        assert a.calls >= 1 and b.calls == 0 and store.released == [], "NOT_FOUND inside the window: resent in A"
        a.mode = "refuse"  # from now the primary cannot be reached to send, but answers status queries
        await trio.sleep(30)
        assert store.released == [(1, "primary-scope")], "NOT_FOUND past the window: freed"
        await primary.pause()
        await trio.sleep(5)
    assert store.rows[1].status == "sent" and store.rows[1].connector == "backup"
    assert store.paid(a, b) == {"molam-slice-1": 1}


async def test_abandoned_calls_are_cancelled_when_the_dispatcher_stops(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, _ = banks
    a.mode = "hang"
    store = MemoryStore()
    store.add(1)
    primary = actor("primary", a, 10)
    async with trio.open_nursery() as nursery:
        await nursery.start(primary.run)
        dispatcher = Dispatcher(store, Routes([primary]), SETTINGS, rng=random.Random(1))
        async with trio.open_nursery() as inner:
            await inner.start(dispatcher.run)
            await trio.sleep(1)
            assert primary.in_flight == 1
            inner.cancel_scope.cancel()  # the dispatcher goes away mid-call
        await trio.sleep(0.1)
        assert a.cancelled == 1 and primary.in_flight == 0, "the call was cancelled with its asker"
        nursery.cancel_scope.cancel()
    assert store.rows[1].status == "sending" and store.rows[1].bound_scope is not None, "in doubt under its lease"


async def test_limiter_wait_is_busy_not_an_attempt(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, _ = banks
    store = MemoryStore()
    for i in range(1, 4):
        store.add(i)
    primary = actor("primary", a, 10, rate=0.1, burst=1, max_wait=Duration("1s"))
    async with running(store, Routes([primary])):
        await trio.sleep(0.5)
        assert a.calls == 1, "one turn; the others would wait 10s, past max_wait"
        not_sent = [x for x in store.attempts if x["outcome"] is AttemptOutcome.NOT_SENT]
        assert len(not_sent) >= 2 and all(store.rows[x["slice"]].attempts == 0 for x in not_sent)
        await trio.sleep(40)
    assert {r.status for r in store.rows.values()} == {"sent"} and a.calls == 3


async def test_a_failed_flush_keeps_the_outcomes_and_writes_them_later(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, _ = banks
    store = MemoryStore()
    store.fail_records = 3
    store.add(1)
    async with running(store, Routes([actor("primary", a, 10)])):
        await trio.sleep(0.1)
        assert store.rows[1].status == "sending", "not written yet: the database is away"
        await trio.sleep(5)
    assert store.rows[1].status == "sent" and a.calls == 1 and store.audit_rows


async def test_a_huge_retry_after_is_capped_and_pauses_new_work_meanwhile(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, _ = banks
    a.mode = "slow_down"  # Retry-After: 1e9 seconds
    store = MemoryStore()
    store.add(1)
    store.add(2, due=5.0)
    primary = actor("primary", a, 10, max_retry_after=Duration("30s"))
    async with running(store, Routes([primary])):
        await trio.sleep(1)
        row = store.rows[1]
        assert row.status == "retry_scheduled" and row.due == pytest.approx(30.0, abs=1.5), "capped at 30s"
        assert not primary.accepting and primary.connector_snapshot().limiter_paused_seconds > 25
        await trio.sleep(10)
        assert a.calls == 1 and store.rows[2].status == "pending", "no new work while the bank said slow down"
        a.mode = "ok"
        await trio.sleep(30)
        assert primary.accepting and {r.status for r in store.rows.values()} == {"sent"}


async def test_an_auth_error_makes_the_connector_unhealthy_and_costs_the_slice_nothing(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    a.mode = "wrong_key"  # our credentials are wrong: the bank refuses every request
    store, primary, backup = one_slice_two_channels(a, b)
    store.add(2)
    async with running(store, Routes([primary, backup])):
        await trio.sleep(2)
        assert primary.unhealthy is not None and "HTTP 401" in primary.unhealthy and not primary.accepting
        for row in store.rows.values():  # refused before the bank acted: free for the backup, no attempt used
            assert row.status == "sent" and row.connector == "backup" and row.attempts == 1
        # Both were in the same batch, sent at once before the first 401 came back.
        assert [x["outcome"] for x in store.attempts if x["connector"] == "primary"] == [AttemptOutcome.REFUSED] * 2
        breaker = primary.breaker.snapshot()
        assert (breaker.calls_in_window, breaker.failure_rate) == (2, 1.0), "auth failures count toward the breaker"
        store.add(3)
        await trio.sleep(2)
        assert a.calls == 2, "an unhealthy connector is routed nothing"
        a.mode = "ok"
        assert (await primary.check_health()).ok and primary.accepting  # a passing check puts it back
    assert store.paid(a, b) == {f"molam-slice-{i}": 1 for i in (1, 2, 3)}


# -- never dead while in doubt (design §6) ------------------------------------------------------------------

LOOKING = msgspec.structs.replace(SETTINGS, lookup_backoff=Backoff(initial=1.0, maximum=10.0, jitter=0.0),
                                  lookup_grace=30.0)


def looking(store: MemoryStore, routes: Routes) -> AbstractAsyncContextManager[Dispatcher]:
    return running(store, routes, LOOKING)


async def test_attempts_exhausted_in_doubt_turn_into_lookups_and_the_bank_settles_it(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    a.mode = "hang_after_execute"  # every send executes and then times out
    a.status_mode = "error"  # and for a while the bank cannot say either
    a.status_state = PaymentState.SETTLED
    store, primary, backup = one_slice_two_channels(a, b)
    store.rows[1].max_attempts = 3
    async with looking(store, Routes([primary, backup], window=60.0)):
        await trio.sleep(20)  # three timed-out attempts (2s each, backoff between), then lookups
        row = store.rows[1]
        assert a.calls == 3 and row.attempts == 3, "never a fourth send"
        assert row.status == "retry_scheduled" and row.bound_scope == "primary-scope", "not dead: looked up"
        assert row.lookups >= 1 and a.lookups > 3
        a.status_mode = "ok"
        await trio.sleep(15)
        assert row.status == "settled" and row.provider_ref == "A-1", "the bank's answer settles it"
    assert a.calls == 3 and b.calls == 0
    assert store.paid(a, b) == {"molam-slice-1": 1}


async def test_not_found_past_the_acceptance_window_is_dead_and_freed(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    a.mode = "hang"  # every send times out and the bank never executed any
    store, primary, backup = one_slice_two_channels(a, b)
    store.rows[1].max_attempts = 3
    async with looking(store, Routes([primary, backup], window=60.0)):
        await trio.sleep(30)
        row = store.rows[1]
        assert row.status == "retry_scheduled", "NOT_FOUND inside the window proves nothing: still looked up"
        assert row.bound_scope == "primary-scope" and a.calls == 3
        await trio.sleep(60)
        assert row.status == "dead", "NOT_FOUND past the window: provably not executed"
        assert row.bound_scope is None and store.released == [(1, "primary-scope")]
        assert "NOT_FOUND" in (row.last_error or "") and "3 attempts" in (row.last_error or "")
    assert a.calls == 3 and b.calls == 0 and store.paid(a, b) == {}


async def test_lookups_that_keep_failing_end_unresolved_never_dead(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    a.mode = "hang_after_execute"
    a.status_mode = "error"  # the bank executed it and never says so
    store, primary, backup = one_slice_two_channels(a, b)
    store.rows[1].max_attempts = 3
    async with looking(store, Routes([primary, backup], window=60.0)):
        await trio.sleep(60)
        row = store.rows[1]
        assert row.status == "retry_scheduled" and row.lookups >= 3, "looked up with backoff up to the window"
        await trio.sleep(120)
        assert row.status == "unresolved" and row.bound_scope == "primary-scope"
        assert "may have been paid" in (row.last_error or "")
        lookups = a.lookups
        await trio.sleep(60)
        assert a.lookups == lookups and row.status == "unresolved", "a person decides now: nothing more is tried"
    assert a.calls == 3 and b.calls == 0 and store.paid(a, b) == {"molam-slice-1": 1}


async def test_a_crash_recovered_slice_with_attempts_exhausted_is_looked_up_not_sent(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    store = MemoryStore()
    # The crashed daemon's third and last attempt may have reached bank A; A does not know it (yet).
    store.add(1, status="sending", lease_until=-1.0, connector="primary", attempts=3, max_attempts=3,
              bound_scope="primary-scope", bound_at=0.0)
    store.attempts.append({"slice": 1, "connector": "primary", "scope": "primary-scope", "outcome": None,
                           "before": ("primary-scope", 0.0)})
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    async with looking(store, Routes([primary, backup], window=60.0)):
        await trio.sleep(30)
        row = store.rows[1]
        assert a.calls == 0 and b.calls == 0, "exhausted: looked up, never sent again"
        assert row.status == "retry_scheduled" and row.lookups >= 1
        assert store.attempts[0]["outcome"] is AttemptOutcome.IN_DOUBT
        await trio.sleep(60)
        assert row.status == "dead" and row.bound_scope is None, "NOT_FOUND past the window"
    assert a.calls == 0 and b.calls == 0


async def test_a_conflict_on_a_key_the_bank_holds_is_looked_up_not_dead(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    a.execute("molam-slice-1")  # an earlier attempt's request executed; this one answers 409
    a.mode = "conflict"
    store, primary, backup = one_slice_two_channels(a, b)
    store.rows[1].bound_scope, store.rows[1].attempts = "primary-scope", 1
    async with looking(store, Routes([primary, backup], window=60.0)):
        await trio.sleep(5)
    row = store.rows[1]
    assert row.status == "sent" and row.provider_ref == "A-1", "the bank's lookup says it has it"
    assert b.calls == 0 and store.paid(a, b) == {"molam-slice-1": 1}


async def test_a_recovered_slice_whose_scope_cannot_say_past_the_window_is_unresolved(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    a.status_mode = "error"
    store = MemoryStore()
    # A crash left its first attempt open 100s ago: past the 60s window and the 30s grace, and A cannot say.
    store.add(1, status="sending", lease_until=-1.0, connector="primary", attempts=1,
              bound_scope="primary-scope", bound_at=-100.0)
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    async with looking(store, Routes([primary, backup], window=60.0)):
        await trio.sleep(20)
    row = store.rows[1]
    assert row.status == "unresolved" and row.bound_scope == "primary-scope", "not left waiting for ever"
    assert "recovery lookup" in (row.last_error or "") and a.calls == 0 and b.calls == 0


async def test_attempts_exhausted_and_the_scope_unavailable_end_unresolved_not_waiting_for_ever(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    store = MemoryStore()
    store.add(1, status="retry_scheduled", connector="primary", attempts=3, max_attempts=3,
              bound_scope="primary-scope", bound_at=0.0)
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    primary.breaker.force_open()  # nobody can ask the scope
    async with looking(store, Routes([primary, backup], window=60.0)):
        await trio.sleep(60)
        row = store.rows[1]
        assert row.status == "retry_scheduled" and row.lookups >= 1, "waits for its scope, up to the window"
        await trio.sleep(60)
    assert row.status == "unresolved" and "no connector of idempotency scope" in (row.last_error or "")
    assert a.calls == 0 and b.calls == 0 and a.lookups == 0


async def test_a_refusal_now_does_not_make_dead_a_slice_an_earlier_attempt_may_have_put_in_the_bank(
    autojump_clock: trio.testing.MockClock, banks: tuple[FakeBank, FakeBank]
) -> None:
    a, b = banks
    a.execute("molam-slice-1")  # the first attempt timed out, executed; the bank now answers 400 to the retry
    a.mode = "invalid"
    store, primary, backup = one_slice_two_channels(a, b)
    store.rows[1].bound_scope, store.rows[1].attempts = "primary-scope", 1
    async with looking(store, Routes([primary, backup], window=60.0)):
        await trio.sleep(5)
    row = store.rows[1]
    assert row.status == "sent" and row.provider_ref == "A-1", "looked up: the bank has it"
    assert b.calls == 0 and store.paid(a, b) == {"molam-slice-1": 1}
