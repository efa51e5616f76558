"""Supervisor semantics on trio's mock clock."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from actors import (
    Backoff,
    ChildSpec,
    ChildState,
    Escalation,
    EventKind,
    RestartPolicy,
    RestartType,
    Strategy,
    Supervisor,
    SupervisorEvent,
    UnknownChild,
)


class Worker:
    """A child whose behaviour the test controls: crash on demand, exit, hang on stop."""

    def __init__(self, name: str, log: list[str], *, fail_start: bool = False, ignore_stop: bool = False):
        self.name = name
        self.incarnation = f"{name}-{len(log)}"
        self._log = log
        self._fail_start = fail_start
        self._ignore_stop = ignore_stop
        self._stop = trio.Event()
        self.crash = trio.Event()
        self.finish = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._fail_start:
            self._log.append(f"{self.name}:fail-start")
            raise RuntimeError("cannot start")
        self._log.append(f"{self.name}:start")
        task_status.started()
        async with trio.open_nursery() as nursery:

            async def crash() -> None:
                await self.crash.wait()
                raise RuntimeError(f"{self.name} crashed")

            async def finish() -> None:
                await self.finish.wait()
                nursery.cancel_scope.cancel()

            async def stop() -> None:
                await self._stop.wait()
                if not self._ignore_stop:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(crash)
            nursery.start_soon(finish)
            nursery.start_soon(stop)
        self._log.append(f"{self.name}:end")

    def request_stop(self) -> None:
        self._stop.set()


class Harness:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.events: list[SupervisorEvent] = []
        self.current: dict[str, Worker] = {}
        self.fail_start: set[str] = set()

    def spec(self, name: str, **kw: object) -> ChildSpec:
        ignore_stop = bool(kw.pop("ignore_stop", False))

        def factory() -> Worker:
            worker = Worker(name, self.log, fail_start=name in self.fail_start, ignore_stop=ignore_stop)
            self.current[name] = worker
            return worker

        return ChildSpec(name=name, factory=factory, **kw)  # type: ignore[arg-type]

    def kinds(self, child: str) -> list[EventKind]:
        return [e.kind for e in self.events if e.child == child]


POLICY = RestartPolicy(
    max_restarts=3, period=60.0, stable_after=30.0, backoff=Backoff(initial=1.0, maximum=8.0, jitter=0.0)
)


async def _settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def test_one_for_one_restarts_only_the_crashed_child(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    sup = Supervisor("s", [h.spec("a"), h.spec("b")], policy=POLICY, on_event=h.events.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        b_before = h.current["b"]
        a_before = h.current["a"]
        a_before.crash.set()
        await _settle()
        assert sup.info("a").state is ChildState.RESTARTING
        await trio.sleep(1.0)
        await _settle()
        assert sup.info("a").state is ChildState.RUNNING
        assert h.current["a"] is not a_before
        assert h.current["b"] is b_before, "sibling must keep its incarnation"
        assert sup.info("b").restarts == 0 and sup.info("a").restarts == 1
        assert h.kinds("b") == [EventKind.STARTED]
        sup.request_stop()
    assert h.log[-2:] == ["b:end", "a:end"], "stop runs in reverse order"


async def test_backoff_grows_and_intensity_fails_the_child(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    sup = Supervisor("s", [h.spec("a"), h.spec("b")], policy=POLICY, on_event=h.events.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        delays = []
        for _ in range(3):
            h.current["a"].crash.set()
            await _settle()
            delays.append(h.events[-1].delay_seconds)
            await trio.sleep(10)
        assert delays == [1.0, 2.0, 4.0]
        h.current["a"].crash.set()
        await _settle()
        info = sup.info("a")
        assert info.state is ChildState.FAILED
        assert "a crashed" in (info.last_error or "")
        assert sup.info("b").state is ChildState.RUNNING
        assert sup.child("a") is None
        # an operator restart clears the failure and the intensity window
        await sup.restart_child("a")
        assert sup.info("a").state is ChildState.RUNNING and sup.info("a").last_error is None
        nursery.cancel_scope.cancel()


async def test_backoff_resets_after_a_stable_period(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    policy = RestartPolicy(max_restarts=10, period=5.0, stable_after=30.0, backoff=Backoff(initial=1.0, jitter=0))
    sup = Supervisor("s", [h.spec("a")], policy=policy, on_event=h.events.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for expected in (1.0, 2.0):
            h.current["a"].crash.set()
            await _settle()
            assert h.events[-1].delay_seconds == expected
            await trio.sleep(expected)
            await _settle()
        await trio.sleep(31)
        h.current["a"].crash.set()
        await _settle()
        assert h.events[-1].delay_seconds == 1.0
        nursery.cancel_scope.cancel()


async def test_jitter_stays_within_its_band(autojump_clock: trio.testing.MockClock) -> None:
    backoff = Backoff(initial=2.0, maximum=100.0, jitter=0.5)
    rng = random.Random(7)
    for attempt in range(1, 10):
        ceiling = backoff.ceiling(attempt)
        for _ in range(50):
            assert ceiling / 2 <= backoff.delay(attempt, rng) <= ceiling
    assert backoff.ceiling(5000) == 100.0
    with pytest.raises(ValueError):
        Backoff(initial=5, maximum=1)


async def test_restart_types(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    specs = [
        h.spec("perm"),
        h.spec("trans", restart=RestartType.TRANSIENT),
        h.spec("temp", restart=RestartType.TEMPORARY),
        h.spec("trans2", restart=RestartType.TRANSIENT),
    ]
    sup = Supervisor("s", specs, policy=POLICY, on_event=h.events.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        h.current["perm"].finish.set()  # a normal exit of a permanent child is still restarted
        h.current["trans"].finish.set()  # a normal exit of a transient child is not
        h.current["temp"].crash.set()  # a temporary child is never restarted
        h.current["trans2"].crash.set()  # a transient child that crashed is restarted
        await _settle()
        await trio.sleep(1)
        await _settle()
        assert sup.info("perm").state is ChildState.RUNNING and sup.info("perm").restarts == 1
        assert sup.info("trans").state is ChildState.STOPPED
        assert sup.info("temp").state is ChildState.STOPPED
        assert sup.info("trans2").state is ChildState.RUNNING and sup.info("trans2").restarts == 1
        nursery.cancel_scope.cancel()


async def test_one_for_all_restarts_everyone(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    sup = Supervisor(
        "s", [h.spec(n) for n in "abc"], strategy=Strategy.ONE_FOR_ALL, policy=POLICY, on_event=h.events.append
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        first = dict(h.current)
        h.current["b"].crash.set()
        await _settle()
        assert h.log[-2:] == ["c:end", "a:end"], "the others stop in reverse order"
        await trio.sleep(1)
        await _settle()
        assert all(h.current[n] is not first[n] for n in "abc")
        assert h.log[-3:] == ["a:start", "b:start", "c:start"]
        nursery.cancel_scope.cancel()


async def test_rest_for_one_restarts_the_later_children(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    sup = Supervisor(
        "s", [h.spec(n) for n in "abc"], strategy=Strategy.REST_FOR_ONE, policy=POLICY, on_event=h.events.append
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        first = dict(h.current)
        h.current["b"].crash.set()
        await _settle()
        await trio.sleep(1)
        await _settle()
        assert h.current["a"] is first["a"]
        assert h.current["b"] is not first["b"] and h.current["c"] is not first["c"]
        assert h.log[-2:] == ["b:start", "c:start"]
        nursery.cancel_scope.cancel()


async def test_core_child_past_intensity_escalates(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    policy = RestartPolicy(max_restarts=1, period=60, backoff=Backoff(initial=0.1, jitter=0))
    sup = Supervisor("s", [h.spec("core", core=True), h.spec("other")], policy=policy, on_event=h.events.append)
    with pytest.RaisesGroup(Escalation, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            h.current["core"].crash.set()
            await _settle()
            await trio.sleep(0.1)
            await _settle()
            h.current["core"].crash.set()
            await trio.sleep_forever()
    assert EventKind.ESCALATED in h.kinds("core")


async def test_core_child_that_cannot_start_fails_the_start(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    h.fail_start.add("control")
    sup = Supervisor("s", [h.spec("db"), h.spec("control", core=True)], policy=POLICY)
    with pytest.RaisesGroup(pytest.RaisesExc(Escalation, match="control failed to start: RuntimeError: cannot start"),
                            flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
    assert h.log == ["db:start", "control:fail-start"]


async def test_a_child_failing_to_start_is_retried_then_failed(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    h.fail_start.add("bad")
    sup = Supervisor("s", [h.spec("bad"), h.spec("good")], policy=POLICY, on_event=h.events.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(100)
        await _settle()
        assert sup.info("bad").state is ChildState.FAILED
        assert "cannot start" in (sup.info("bad").last_error or "")
        assert h.log.count("bad:fail-start") == 4
        assert sup.info("good").state is ChildState.RUNNING and sup.info("good").restarts == 0
        nursery.cancel_scope.cancel()


async def test_stop_child_waits_for_grace_then_cancels(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    sup = Supervisor("s", [h.spec("stubborn", ignore_stop=True, shutdown_grace=3.0), h.spec("polite")])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        t0 = trio.current_time()
        await sup.stop_child("polite")
        assert trio.current_time() == t0
        await sup.stop_child("stubborn")
        assert trio.current_time() - t0 == pytest.approx(3.0)
        assert sup.names() == []
        with pytest.raises(UnknownChild):
            sup.info("stubborn")
        await sup.start_child(h.spec("late"))
        assert sup.info("late").state is ChildState.RUNNING
        nursery.cancel_scope.cancel()


async def test_crash_during_backoff_wait_then_operator_restart(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    sup = Supervisor("s", [h.spec("a")], policy=POLICY, on_event=h.events.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        h.current["a"].crash.set()
        await _settle()
        assert sup.info("a").state is ChildState.RESTARTING
        await sup.restart_child("a")  # cancels the pending timed restart
        assert sup.info("a").state is ChildState.RUNNING
        await trio.sleep(5)
        await _settle()
        assert h.log.count("a:start") == 2, "the cancelled timer must not start a second incarnation"
        nursery.cancel_scope.cancel()
