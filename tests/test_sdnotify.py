"""sd_notify over a real datagram socket, and the watchdog that stops when the trio loop is stuck."""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio

from molamd.sdnotify import Notifier
from tests.test_daemon import NotifyListener


def test_without_notify_socket_everything_is_a_noop() -> None:
    notifier = Notifier(environ={})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.notify("READY=1") is False


def test_watchdog_interval_is_half_the_period_and_only_for_us() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "10000000"}
    assert Notifier(environ=env).watchdog_interval == 5.0
    assert Notifier(environ={**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 5.0
    assert Notifier(environ={**env, "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier(environ={**env, "WATCHDOG_USEC": "junk"}).watchdog_interval is None


def test_messages(short_tmp: Path) -> None:
    listener = NotifyListener(short_tmp)
    try:
        notifier = Notifier(environ={"NOTIFY_SOCKET": listener.path})
        notifier.ready("up")
        notifier.reloading()
        notifier.status("busy")
        notifier.stopping("bye")
        listener.wait_for("STOPPING", "1")
        fields = [f for _, f in listener.messages]
        assert fields[0] == {"READY": "1", "STATUS": "up"}
        assert fields[1]["RELOADING"] == "1" and int(fields[1]["MONOTONIC_USEC"]) > 0
        assert fields[2] == {"STATUS": "busy"} and fields[3] == {"STOPPING": "1", "STATUS": "bye"}
        notifier.close()
        gone = Notifier(environ={"NOTIFY_SOCKET": str(short_tmp / "missing.sock")})
        assert gone.notify("READY=1") is False
    finally:
        listener.close()


async def test_watchdog_stops_while_the_loop_is_blocked(short_tmp: Path) -> None:
    listener = NotifyListener(short_tmp)
    try:
        notifier = Notifier(environ={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "100000"})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(notifier.watchdog)
            await trio.sleep(0.5)
            pings_before = len(listener.messages)
            blocked_from = time.monotonic()
            time.sleep(0.6)  # noqa: ASYNC251 - a stuck loop: nothing else runs, so nothing pings
            blocked_until = time.monotonic()
            await trio.sleep(0.4)
            nursery.cancel_scope.cancel()
        times = [t for t, f in listener.messages if f.get("WATCHDOG") == "1"]
        assert pings_before >= 4
        during = [t for t in times if blocked_from + 0.05 < t < blocked_until]
        assert during == [], "no ping may leave a blocked loop"
        assert any(t > blocked_until for t in times), "pings resume once the loop runs again"
    finally:
        listener.close()


async def test_watchdog_returns_when_not_requested() -> None:
    with trio.fail_after(1):
        await Notifier(environ={"NOTIFY_SOCKET": "/nonexistent"}).watchdog()


