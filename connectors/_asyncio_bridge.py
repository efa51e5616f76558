"""asyncio libraries (asyncssh) from trio: one asyncio loop in its own thread, one whole coroutine per call.

The loop is created inside its thread and every call into it goes through ``call_soon_threadsafe``. The trio
side waits for the asyncio Task itself (its done-callback wakes trio through the trio token), not for a
concurrent future, so a cancelled trio caller cancels the Task and then waits, shielded and bounded, until the
Task has really finished: nothing keeps running in the loop on behalf of a caller that has gone.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")
CANCEL_GRACE = 5.0


class AsyncioThread:
    """The asyncio loop thread. ``run`` is the only way in."""

    def __init__(self, name: str = "molamd-asyncio") -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._ready.set()
        loop.run_forever()

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``fn(*args)`` as a Task in the asyncio loop; returns its result or raises its exception."""
        loop = self._loop
        assert loop is not None
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        result: list[outcome.Outcome[T]] = []
        tasks: list[asyncio.Task[T]] = []

        def finished(task: asyncio.Task[T]) -> None:
            error = None if task.cancelled() else task.exception()
            if task.cancelled():  # only after our own cancel, whose trio Cancelled is what the caller sees
                result.append(outcome.Error(RuntimeError("the asyncio task was cancelled")))
            elif error is not None:
                result.append(outcome.Error(error))
            else:
                result.append(outcome.Value(task.result()))
            token.run_sync_soon(done.set)

        def start() -> None:
            task = loop.create_task(fn(*args))
            tasks.append(task)
            task.add_done_callback(finished)

        loop.call_soon_threadsafe(start)
        try:
            await done.wait()
        except trio.Cancelled:
            loop.call_soon_threadsafe(lambda: [t.cancel() for t in tasks])
            with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_GRACE):
                await done.wait()
            raise
        return result[0].unwrap()


@functools.cache
def shared_loop() -> AsyncioThread:
    """The process's one asyncio thread, started on first use."""
    return AsyncioThread()
