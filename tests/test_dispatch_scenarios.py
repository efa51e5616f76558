"""One dispatcher scenario suite, run against both payout stores: the in-memory one of tests/test_dispatcher.py and
the PostgreSQL one (molamd/payouts.py).

The in-memory store re-implements the binding rule of design §6 in Python (which attempt binds a slice to a scope,
which gives the binding back, when a bound slice may be claimed, how a scope release frees it) so the dispatcher
tests can run on trio's mock clock. These scenarios hold it to the SQL: each runs the real Dispatcher, real
connector actors and the same in-memory banks (each channel with its own ledger and idempotency store) over each
store and asserts the same things of both. The memory store runs on the mock clock, PostgreSQL on the real one
(its leases, backoffs and binding ages are ``now()``), so the timings are short and every wait is on a condition.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import msgspec
import psycopg
import pytest
import trio
import trio.testing

from actors import AttemptOutcome, Backoff, ConnectorActor, Dispatcher, DispatcherSettings, PayoutStore, Route
from connectors import Duration, NullConfig, PaymentState
from connectors._contract import BreakerConfig, LimitsConfig
from molamd import db, payouts
from molamd.payouts import ClaimOwner
from molamd.payouts import PayoutStore as PostgresStore
from tests.db_helpers import running_database
from tests.test_dispatcher import FakeBank, FakeConnector, MemoryStore, Routes, Row

SETTINGS = DispatcherSettings(lease=30.0, idle_poll=0.05, call_timeout=10.0, release_delay=0.1,
                              flush_interval=0.01, retry_backoff=Backoff(initial=0.1, maximum=0.3, jitter=0.0),
                              lookup_backoff=Backoff(initial=0.1, maximum=0.3, jitter=0.0), lookup_grace=1.0)
IN_DOUBT_AT_PRIMARY = "in doubt in idempotency scope 'primary-scope'"
GONE_OWNER = 1  # the advisory lock key of a crashed incarnation: nobody holds it


class View(msgspec.Struct, frozen=True, kw_only=True):
    """A slice as both stores can show it."""

    status: str
    bound_scope: str | None
    connector: str | None
    provider_ref: str | None
    attempts: int
    lookups: int  # status lookups once its attempts ran out (status_checks in PostgreSQL)
    last_error: str | None


class Attempt(msgspec.Struct, frozen=True):
    connector: str
    scope: str
    outcome: str | None


class Rig:
    """A payout store with what the scenarios need of it: add a slice, look at it, its attempts, its releases."""

    store: PayoutStore
    timeout = 20.0

    async def add(self, *, sending: tuple[str, str] | None = None, max_attempts: int = 8) -> int:
        """A pending slice, or (``sending`` = (connector, scope)) one a crashed daemon left mid-call: status
        sending, bound to the scope, its attempt open, its owner gone. Returns its id."""
        raise NotImplementedError

    def key(self, slice_id: int) -> str:
        return f"molam-slice-{slice_id}"

    async def view(self, slice_id: int) -> View:
        raise NotImplementedError

    async def attempts(self, slice_id: int) -> list[Attempt]:
        raise NotImplementedError

    async def released(self) -> list[tuple[int, str]]:
        raise NotImplementedError

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        with trio.move_on_after(self.timeout):
            while not await check():  # noqa: ASYNC110 - a store's rows have no event to wait on
                await trio.sleep(0.02)
            return
        raise AssertionError(f"timed out waiting for {what}")

    async def until_view(self, slice_id: int, what: str, check: Callable[[View], bool]) -> View:
        async def ok() -> bool:
            return check(await self.view(slice_id))

        await self.until(ok, what)
        return await self.view(slice_id)


class MemoryRig(Rig):
    def __init__(self) -> None:
        self.memory = MemoryStore()
        self.store = self.memory
        self._ids = iter(range(1, 1000))

    async def add(self, *, sending: tuple[str, str] | None = None, max_attempts: int = 8) -> int:
        slice_id = next(self._ids)
        if sending is None:
            self.memory.add(slice_id, max_attempts=max_attempts)
        else:
            connector, scope = sending
            self.memory.add(slice_id, status="sending", lease_until=-1.0, connector=connector, bound_scope=scope,
                            bound_at=trio.current_time(), attempts=1, max_attempts=max_attempts)
            self.memory.attempts.append({"slice": slice_id, "connector": connector, "scope": scope,
                                         "outcome": None, "before": (None, 0.0)})
        return slice_id

    async def view(self, slice_id: int) -> View:
        r = self.memory.rows[slice_id]
        return View(status=r.status, bound_scope=r.bound_scope, connector=r.connector, provider_ref=r.provider_ref,
                    attempts=r.attempts, lookups=r.lookups, last_error=r.last_error)

    async def attempts(self, slice_id: int) -> list[Attempt]:
        return [Attempt(a["connector"], a["scope"], None if a["outcome"] is None else str(a["outcome"]))
                for a in self.memory.attempts if a["slice"] == slice_id]

    async def released(self) -> list[tuple[int, str]]:
        return list(self.memory.released)


class PostgresRig(Rig):
    def __init__(self, dsn: str, database: db.Database) -> None:
        self.dsn = dsn
        self.store = PostgresStore(database, "test-host", ClaimOwner(lambda: psycopg.connect(dsn)))
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO bank_profiles (id, name, country) VALUES ('bank', 'Bank', 'SN')")
            self.account = conn.execute(
                "INSERT INTO treasury_accounts (bank_profile_id, label, account_number, currency)"
                " VALUES ('bank', 'main', 'SN01', 'XOF') RETURNING id").fetchone()[0]  # type: ignore[index]

    async def _query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                cur = conn.execute(sql, params)
                return cur.fetchall() if cur.description else []

        return await trio.to_thread.run_sync(run)

    async def add(self, *, sending: tuple[str, str] | None = None, max_attempts: int = 8) -> int:
        [(slice_id,)] = await self._query(
            "INSERT INTO payout_slices (payout_id, treasury_account_id, amount, currency, rail, beneficiary_name,"
            " beneficiary_account, max_attempts) VALUES ('p-' || clock_timestamp(), %s, %s, 'XOF', 'ach', 'Awa',"
            " 'SN08', %s) RETURNING id", self.account, Decimal(5000), max_attempts)
        if sending is not None:
            connector, scope = sending
            await self._query("UPDATE payout_slices SET status = 'claimed', claimed_by = 'gone#1', claim_owner = %s,"
                              " lease_until = now() + interval '1 minute' WHERE id = %s", GONE_OWNER, slice_id)
            await self._query("UPDATE payout_slices SET status = 'sending', attempts = 1, connector_name = %s,"
                              " bound_scope = %s, bound_at = now() WHERE id = %s", connector, scope, slice_id)
            await self._query("INSERT INTO payout_slice_attempts (payout_slice_id, attempt_no, host_id,"
                              " connector_name, idempotency_scope) VALUES (%s, 1, 'gone-host', %s, %s)",
                              slice_id, connector, scope)
        return int(slice_id)

    async def view(self, slice_id: int) -> View:
        [row] = await self._query("SELECT status, bound_scope, connector_name, provider_ref, attempts,"
                                  " status_checks, last_error FROM payout_slices WHERE id = %s", slice_id)
        return View(status=row[0], bound_scope=row[1], connector=row[2], provider_ref=row[3], attempts=row[4],
                    lookups=row[5], last_error=row[6])

    async def attempts(self, slice_id: int) -> list[Attempt]:
        rows = await self._query("SELECT connector_name, idempotency_scope, outcome FROM payout_slice_attempts"
                                 " WHERE payout_slice_id = %s ORDER BY attempt_no", slice_id)
        return [Attempt(*r) for r in rows]

    async def released(self) -> list[tuple[int, str]]:
        rows = await self._query("SELECT payout_slice_id, target FROM molamd_audit WHERE action = 'scope_release'"
                                 " ORDER BY id")
        return [(int(r[0]), str(r[1])) for r in rows]


@pytest.fixture(params=["memory", "postgresql"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Clock = trio.testing.MockClock | None


@pytest.fixture
def clock(store_kind: str) -> Clock:
    """The mock clock for the memory store; PostgreSQL's time is its own ``now()``, so the real clock there.
    pytest-trio takes a clock only from the test's own arguments: each scenario names this fixture."""
    return trio.testing.MockClock(autojump_threshold=0) if store_kind == "memory" else None


@pytest.fixture
async def rig(store_kind: str, clock: trio.testing.MockClock | None, migrated_dsn: str) -> AsyncIterator[Rig]:
    if store_kind == "memory":
        yield MemoryRig()
        return
    async with running_database(migrated_dsn) as database:
        yield PostgresRig(migrated_dsn, database)


@pytest.fixture
def banks() -> tuple[FakeBank, FakeBank]:
    return FakeBank("A"), FakeBank("B")


def actor(name: str, bank: FakeBank, priority: int, scope: str | None = None, *,
          breaker: BreakerConfig | None = None) -> ConnectorActor:
    config = NullConfig(name=name, bank_profile="bank", priority=priority,
                        idempotency_scope=scope or f"{name}-scope", limits=LimitsConfig(call_timeout=Duration("1s")),
                        breaker=breaker or BreakerConfig())
    return ConnectorActor(config, FakeConnector(name, bank))  # type: ignore[arg-type]


class RoutesAnywhere(Routes):
    """A router with the scope rule broken: a bound slice is offered every connector of its profile."""

    def route(self, bank_profile: str, rail: str, currency: str, scope: str | None = None) -> Route:
        return super().route(bank_profile, rail, currency, None)


@asynccontextmanager
async def dispatching(rig: Rig, actors: list[ConnectorActor], window: float = 600.0,
                      router: type[Routes] = Routes) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for a in actors:
            await nursery.start(a.run)
        await nursery.start(Dispatcher(rig.store, router(actors, window=window), SETTINGS, rng=random.Random(1)).run)
        yield
        nursery.cancel_scope.cancel()


def paid(*banks: FakeBank) -> dict[str, int]:
    """How many banks executed each key (the union of their ledgers)."""
    counts: dict[str, int] = {}
    for bank in banks:
        for key in bank.ledger:
            counts[key] = counts.get(key, 0) + 1
    return counts


def waiting_in(scope: str) -> Callable[[View], bool]:
    """Looked at again since it went in doubt, and left waiting for ``scope``."""
    return lambda v: v.status == "pending" and v.bound_scope == scope and f"in doubt in idempotency scope {scope!r}" \
        in (v.last_error or "")


# -- the scenarios ----------------------------------------------------------------------------------------------------


async def test_a_timeout_after_sending_binds_the_slice_and_it_waits_for_its_scope(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock
) -> None:
    a, b = banks
    a.mode = "hang_after_execute"  # executed, and the answer never comes
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    n = await rig.add()
    async with dispatching(rig, [primary, backup]):
        async def in_doubt() -> bool:
            return any(x.outcome == AttemptOutcome.IN_DOUBT for x in await rig.attempts(n))

        await rig.until(in_doubt, "the timed-out attempt closed in doubt")
        assert (await rig.view(n)).bound_scope == "primary-scope"
        assert a.cancelled >= 1, "the timed-out call was cancelled, not left running"
        await primary.pause()
        await rig.until_view(n, "the slice waiting for the primary's scope", waiting_in("primary-scope"))
        assert b.calls == 0, "never sent to another scope while in doubt"
        a.mode = "ok"
        await primary.resume()
        v = await rig.until_view(n, "sent", lambda v: v.status == "sent")
    assert (v.connector, v.provider_ref, v.bound_scope) == ("primary", "A-1", "primary-scope")
    assert {x.scope for x in await rig.attempts(n)} == {"primary-scope"}
    assert paid(a, b) == {rig.key(n): 1}


async def test_an_attempt_that_provably_did_not_reach_the_bank_gives_the_binding_back(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock
) -> None:
    a, b = banks
    a.mode = "refuse"  # connection refused: nothing left us
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    n = await rig.add()
    async with dispatching(rig, [primary, backup]):
        async def refused() -> bool:
            return any(x.outcome == AttemptOutcome.NOT_SENT for x in await rig.attempts(n))

        await rig.until(refused, "an attempt refused before sending")
        await primary.pause()
        v = await rig.until_view(n, "sent by the backup", lambda v: v.status == "sent")
    assert (v.connector, v.bound_scope, v.provider_ref) == ("backup", "backup-scope", "B-1")
    assert v.attempts == 1, "the refused attempts were given back: only the backup's counts"
    attempts = await rig.attempts(n)
    assert {x.outcome for x in attempts if x.connector == "primary"} == {AttemptOutcome.NOT_SENT}
    assert attempts[-1] == Attempt("backup", "backup-scope", AttemptOutcome.ANSWERED)
    assert paid(a, b) == {rig.key(n): 1}


async def test_a_5xx_is_in_doubt_and_retried_only_in_its_scope(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock
) -> None:
    a, b = banks
    a.mode = "error_after_execute"
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    n = await rig.add()
    async with dispatching(rig, [primary, backup]):
        async def in_doubt() -> bool:
            return any(x.outcome == AttemptOutcome.IN_DOUBT for x in await rig.attempts(n))

        await rig.until(in_doubt, "the 503 closed in doubt")
        primary.breaker.force_open()  # the backup is free, but not for this slice
        await rig.until_view(n, "the slice waiting for the primary's scope", waiting_in("primary-scope"))
        assert b.calls == 0
        a.mode = "ok"
        primary.breaker.reset()
        v = await rig.until_view(n, "sent", lambda v: v.status == "sent")
    assert (v.connector, v.provider_ref) == ("primary", "A-1")
    assert paid(a, b) == {rig.key(n): 1}, "the retry reused the key in the scope that had it"


async def test_recovery_finds_the_payment_in_its_scope_and_sends_nothing(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock
) -> None:
    a, b = banks
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    n = await rig.add(sending=("primary", "primary-scope"))
    a.execute(rig.key(n))  # the crashed daemon's call did reach bank A
    async with dispatching(rig, [primary, backup]):
        v = await rig.until_view(n, "found by its key", lambda v: v.status == "sent")
    assert (v.connector, v.provider_ref, v.bound_scope) == ("primary", "A-1", "primary-scope")
    assert await rig.attempts(n) == [Attempt("primary", "primary-scope", AttemptOutcome.IN_DOUBT)], (
        "the abandoned attempt is closed as in doubt, and no new one was started")
    assert a.calls == 0 and b.calls == 0


async def test_a_recovering_slice_whose_scope_is_unavailable_waits(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock
) -> None:
    a, b = banks
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    primary.breaker.force_open()
    n = await rig.add(sending=("primary", "primary-scope"))
    async with dispatching(rig, [primary, backup]):
        v = await rig.until_view(n, "waiting for the primary's scope", waiting_in("primary-scope"))
    assert b.calls == 0 and a.calls == 0 and v.connector == "primary"
    assert await rig.attempts(n) == [Attempt("primary", "primary-scope", AttemptOutcome.IN_DOUBT)]


async def test_a_scope_frees_a_slice_only_when_it_says_not_found_past_its_acceptance_window(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock
) -> None:
    a, b = banks
    a.mode = "hang"  # a resend inside the window hangs before executing: still the primary's, nothing to B
    # Its refused sends must not open its breaker: the scenario is about the window, not about waiting for it.
    primary = actor("primary", a, 10, breaker=BreakerConfig(minimum_calls=10**6))
    backup = actor("backup", b, 20)
    n = await rig.add(sending=("primary", "primary-scope"))
    async with dispatching(rig, [primary, backup], window=3.0):
        async def resent() -> bool:
            return a.calls >= 1

        await rig.until(resent, "NOT_FOUND inside the window: sent again in the same scope")
        # The fake bank reads its mode 10 ms into a call: let the resend get past that and hang (it times out
        # after 1 s), so the new mode below cannot make it execute.
        await trio.sleep(0.2)
        assert await rig.released() == [] and b.calls == 0
        a.mode = "refuse"  # from now the primary takes no send, but answers lookups: NOT_FOUND

        async def freed() -> bool:
            return await rig.released() == [(n, "primary-scope")]

        await rig.until(freed, "NOT_FOUND past the window: freed")
        await primary.pause()
        v = await rig.until_view(n, "sent by the backup", lambda v: v.status == "sent")
    assert (v.connector, v.bound_scope) == ("backup", "backup-scope")
    assert paid(a, b) == {rig.key(n): 1}


async def test_a_slice_in_doubt_may_go_to_another_connector_of_its_scope_and_to_no_other(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock
) -> None:
    """Two endpoints of one bank API share a scope (and an idempotency store): either may finish the slice."""
    a, b = banks
    a.mode = "error_after_execute"
    primary, secondary = actor("primary", a, 10, scope="bank-api"), actor("secondary", a, 15, scope="bank-api")
    backup = actor("backup", b, 20)
    n = await rig.add()
    async with dispatching(rig, [primary, secondary, backup]):
        async def in_doubt() -> bool:
            return any(x.outcome == AttemptOutcome.IN_DOUBT for x in await rig.attempts(n))

        await rig.until(in_doubt, "in doubt in bank-api")
        await primary.pause()

        async def tried_by_secondary() -> bool:
            return any(x.connector == "secondary" for x in await rig.attempts(n))

        await rig.until(tried_by_secondary, "the retry at the scope's other endpoint")
        a.mode = "ok"
        v = await rig.until_view(n, "sent", lambda v: v.status == "sent")
    assert (v.connector, v.bound_scope, v.provider_ref) == ("secondary", "bank-api", "A-1")
    assert {x.scope for x in await rig.attempts(n)} == {"bank-api"} and b.calls == 0
    assert paid(a, b) == {rig.key(n): 1}


async def test_an_open_connector_is_skipped_and_costs_no_attempt(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock
) -> None:
    a, b = banks
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    primary.breaker.force_open()
    n = await rig.add()
    async with dispatching(rig, [primary, backup]):
        v = await rig.until_view(n, "sent by the backup", lambda v: v.status == "sent")
    assert (v.connector, v.bound_scope, v.attempts) == ("backup", "backup-scope", 1)
    assert await rig.attempts(n) == [Attempt("backup", "backup-scope", AttemptOutcome.ANSWERED)]
    assert a.calls == 0



# -- never dead while in doubt: attempts used up, the scope is asked -------------------------------------------------


async def test_attempts_used_up_in_doubt_turn_into_lookups_and_the_banks_answer_settles_it(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock
) -> None:
    a, b = banks
    a.mode = "hang_after_execute"  # every send executes, then times out
    a.status_mode = "error"  # and for a while the bank cannot say either
    a.status_state = PaymentState.SETTLED
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    n = await rig.add(max_attempts=2)
    async with dispatching(rig, [primary, backup], window=60.0):
        v = await rig.until_view(n, "lookups once the attempts ran out", lambda v: v.lookups >= 2)
        assert (v.status, v.attempts, v.bound_scope) == ("retry_scheduled", 2, "primary-scope"), "not dead"
        assert a.calls == 2, "never a third send"
        a.status_mode = "ok"
        v = await rig.until_view(n, "settled by the bank's answer", lambda v: v.status == "settled")
    assert (v.provider_ref, v.connector) == ("A-1", "primary") and a.calls == 2 and b.calls == 0
    assert paid(a, b) == {rig.key(n): 1}


async def test_attempts_used_up_and_not_found_past_the_window_is_dead_and_free(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock
) -> None:
    a, b = banks
    a.mode = "hang"  # every send hangs before executing: the bank never has it
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    n = await rig.add(max_attempts=2)
    async with dispatching(rig, [primary, backup], window=2.0):
        v = await rig.until_view(n, "dead", lambda v: v.status == "dead")
    assert v.bound_scope is None and "provably not executed" in (v.last_error or ""), v
    assert a.calls == 2 and b.calls == 0 and paid(a, b) == {}
    assert await rig.released() == [(n, "primary-scope")]


async def test_attempts_used_up_and_a_scope_that_cannot_say_leaves_the_slice_unresolved(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock
) -> None:
    a, b = banks
    a.mode = "hang_after_execute"
    a.status_mode = "error"
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    n = await rig.add(max_attempts=2)
    # The window outlasts the two attempts (1 s each and a backoff), so they are used up inside it; then the
    # window and a grace of 1 s (SETTINGS) pass with every lookup failing.
    async with dispatching(rig, [primary, backup], window=4.0):
        v = await rig.until_view(n, "unresolved", lambda v: v.status == "unresolved")
    assert (v.bound_scope, v.attempts) == ("primary-scope", 2) and v.lookups >= 1
    assert "may have been paid" in (v.last_error or "")
    assert a.calls == 2 and b.calls == 0 and paid(a, b) == {rig.key(n): 1}


# -- a router that breaks the rule: the dispatcher still neither asks nor sends outside the bound scope ----------


async def test_recovery_offered_a_connector_of_another_scope_neither_asks_nor_sends_there(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock
) -> None:
    """The attempt it would start names the slice's scope, so the SQL guard and the trigger cannot catch it: the
    dispatcher itself must refuse a connector whose scope is not the slice's."""
    a, b = banks
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    primary.breaker.force_open()
    n = await rig.add(sending=("primary", "primary-scope"))
    a.execute(rig.key(n))  # the crashed call did reach bank A
    async with dispatching(rig, [primary, backup], router=RoutesAnywhere):
        v = await rig.until_view(n, "left waiting for its own scope", lambda v: v.status == "pending" and (
            "'backup-scope'" in (v.last_error or "")))
    assert v.bound_scope == "primary-scope" and b.calls == 0 and b.lookups == 0, v
    assert paid(a, b) == {rig.key(n): 1}


async def test_lookups_offered_a_connector_of_another_scope_are_not_made_there(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock
) -> None:
    a, b = banks
    a.mode = "hang_after_execute"
    a.status_mode = "error"  # the primary cannot say yet: the slice is to be asked again
    primary, backup = actor("primary", a, 10), actor("backup", b, 20)
    n = await rig.add(max_attempts=1)
    async with dispatching(rig, [primary, backup], router=RoutesAnywhere):
        await rig.until_view(n, "its one attempt in doubt", lambda v: v.attempts == 1 and v.status != "sending")
        await primary.pause()
        v = await rig.until_view(n, "left waiting for its own scope", lambda v: "'backup-scope'" in (
            v.last_error or ""))
    assert v.bound_scope == "primary-scope" and v.status in ("pending", "retry_scheduled"), v
    assert b.calls == 0 and b.lookups == 0, "the backup's NOT_FOUND says nothing of the primary's scope"


# -- the suite sees a store that breaks the rule ----------------------------------------------------------------------

GIVE_BACK = "e.outcome IN ('refused', 'not_sent')"  # in payouts._END_ATTEMPTS: which attempts give the binding back


class KeepsEveryBinding(MemoryStore):
    """The Python rule with one line wrong: an attempt that provably did not reach the bank keeps the binding."""

    async def record(self, outcomes: Any, audit: Any) -> int:
        before = {o.slice_id: (self.rows[o.slice_id].bound_scope, self.rows[o.slice_id].bound_at) for o in outcomes}
        changed = await super().record(outcomes, audit)
        for o in outcomes:
            row: Row = self.rows[o.slice_id]
            if o.attempt is not None and o.released_scope is None:
                row.bound_scope, row.bound_at = before[o.slice_id]
        return changed


async def test_negative_control_a_store_that_keeps_a_refused_binding_fails_the_scenario(
    rig: Rig, banks: tuple[FakeBank, FakeBank], clock: Clock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same rule broken in each store (the memory store's Python, the PostgreSQL store's SQL): the scenario
    that says a refused attempt gives the binding back fails for it, so the suite can tell the two apart."""
    if isinstance(rig, MemoryRig):
        rig.memory = KeepsEveryBinding()
        rig.store = rig.memory
    else:
        assert GIVE_BACK in payouts._END_ATTEMPTS, "the SQL no longer gives the binding back the way this breaks"
        monkeypatch.setattr(payouts, "_END_ATTEMPTS", payouts._END_ATTEMPTS.replace(GIVE_BACK, "false"))
    rig.timeout = 5.0
    with pytest.raises(ExceptionGroup) as failed:  # raised inside the dispatcher's nursery
        await test_an_attempt_that_provably_did_not_reach_the_bank_gives_the_binding_back(rig, banks, clock)
    assert failed.group_contains(AssertionError, match="timed out waiting for sent by the backup", depth=None)
