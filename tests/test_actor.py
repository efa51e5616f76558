"""The actor: mailbox, tell and ask, crashes and stops, on the mock clock."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from actors import (
    Actor,
    ActorCrashed,
    ActorState,
    ActorStopped,
    AskTimeout,
    ConnectorActor,
    DispatchState,
    HealthChecker,
    HealthResult,
    MailboxFull,
    Refused,
)
from connectors import NullConfig, NullConnector
from connectors.null import NullOptions


class Add(msgspec.Struct, frozen=True):
    n: int


class Slow(msgspec.Struct, frozen=True):
    seconds: float


class Boom(msgspec.Struct, frozen=True):
    pass


class No(msgspec.Struct, frozen=True):
    pass


Msg = Add | Slow | Boom | No


class Counter(Actor[Msg]):
    def __init__(self, mailbox_size: int = 4) -> None:
        super().__init__("counter", mailbox_size=mailbox_size)
        self.total = 0
        self.torn_down = False

    async def handle(self, msg: Msg) -> Any:
        match msg:
            case Add(n):
                self.total += n
                return self.total
            case Slow(seconds):
                await trio.sleep(seconds)
                return "slept"
            case Boom():
                raise RuntimeError("boom")
            case No():
                raise Refused(self.name, "not today", code="nope")

    async def teardown(self) -> None:
        self.torn_down = True


async def test_tell_and_ask_in_order(autojump_clock: trio.testing.MockClock) -> None:
    actor = Counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        assert actor.state is ActorState.RUNNING
        actor.tell(Add(2))
        actor.tell(Add(3))
        assert await actor.ask(Add(5)) == 10
        await trio.sleep(7)
        snap = actor.snapshot()
        assert snap.handled == 3 and snap.uptime_seconds == pytest.approx(7) and snap.mailbox_size == 4
        assert len(snap.incarnation) == 12
        nursery.cancel_scope.cancel()
    assert actor.torn_down and actor.state is ActorState.STOPPED


async def test_full_mailbox_is_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    actor = Counter(mailbox_size=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        actor.tell(Slow(100))  # taken by the handler
        await trio.testing.wait_all_tasks_blocked()
        actor.tell(Add(1))
        actor.tell(Add(1))
        assert actor.snapshot().mailbox_depth == 2
        with pytest.raises(MailboxFull):
            actor.tell(Add(1))
        start = trio.current_time()
        with pytest.raises(AskTimeout):
            await actor.ask(Add(1), timeout=3)
        assert trio.current_time() - start == pytest.approx(3)
        nursery.cancel_scope.cancel()


async def test_refused_answers_without_crashing(autojump_clock: trio.testing.MockClock) -> None:
    actor = Counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        with pytest.raises(Refused) as info:
            await actor.ask(No())
        assert info.value.code == "nope"
        assert await actor.ask(Add(1)) == 1
        nursery.cancel_scope.cancel()


async def test_crash_answers_the_asker_and_every_waiting_ask(autojump_clock: trio.testing.MockClock) -> None:
    actor = Counter()
    outcomes: list[str] = []

    async def asker(msg: Msg) -> None:
        try:
            await actor.ask(msg)
        except ActorCrashed:
            outcomes.append("crashed")
        except ActorStopped:
            outcomes.append("stopped")

    with pytest.RaisesGroup(RuntimeError, flatten_subgroups=True):
        async with trio.open_nursery() as outer:
            outer.start_soon(actor.run)
            await trio.testing.wait_all_tasks_blocked()
            actor.tell(Slow(1))
            outer.start_soon(asker, Boom())
            await trio.testing.wait_all_tasks_blocked()
            outer.start_soon(asker, Add(1))
            await trio.sleep(2)
    assert sorted(outcomes) == ["crashed", "stopped"]
    assert actor.torn_down
    with pytest.raises(ActorStopped):
        actor.tell(Add(1))


async def test_request_stop_handles_what_is_queued(autojump_clock: trio.testing.MockClock) -> None:
    actor = Counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        actor.tell(Add(1))
        actor.tell(Add(2))
        actor.request_stop()
        assert actor.state is ActorState.STOPPING
        with pytest.raises(ActorStopped):
            await actor.ask(Add(1))
    assert actor.total == 3 and actor.state is ActorState.STOPPED
    with pytest.raises(RuntimeError):
        _ = actor.nursery


async def test_connector_actor_dispatch_and_health(autojump_clock: trio.testing.MockClock) -> None:
    healthy = NullConfig(name="a", bank_profile="p")
    sick = NullConfig(name="b", bank_profile="p", enabled=False, null=NullOptions(healthy=False))
    a, b = ConnectorActor(healthy, NullConnector(healthy)), ConnectorActor(sick, NullConnector(sick))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        assert a.accepting and not b.accepting and b.dispatch is DispatchState.PAUSED
        assert await a.pause() is DispatchState.PAUSED
        assert await a.resume() is DispatchState.RUNNING
        assert await a.drain() is DispatchState.DRAINED
        assert (await a.check_health()).ok
        health = await b.check_health()
        assert not health.ok and "unhealthy" in health.detail
        snap = b.connector_snapshot()
        assert snap.kind == "null" and snap.last_health_error and snap.dispatch is DispatchState.PAUSED
        reports: list[tuple[HealthResult, ...]] = []

        async def report(results: Any) -> None:
            reports.append(tuple(results))

        checker = HealthChecker(
            targets=lambda: [("a", a), ("b", b), ("gone", None)], report=report, interval=10, timeout=1,
            concurrency=2,
        )
        await nursery.start(checker.run)
        await trio.sleep(25)
        assert len(reports) == 3
        by_name = {r.connector: r for r in reports[-1]}
        assert by_name["a"].health is not None and by_name["a"].health.ok
        assert by_name["b"].health is not None and not by_name["b"].health.ok
        assert by_name["gone"].error == "not running"
        nursery.cancel_scope.cancel()
    assert not a.connector.opened  # type: ignore[attr-defined]
