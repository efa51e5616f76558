"""The daemon's event bus: actor lifecycle and reload events, for `molamctl watch` and the logs.

Subscribers get bounded channels. A subscriber that falls behind is not allowed to slow the daemon down:
its channel is closed and it is told it lagged, so nothing is dropped without the watcher knowing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

DEFAULT_SUBSCRIBER_BUFFER = 1024


class Subscription:
    def __init__(self, buffer: int) -> None:
        self.send, self.receive = trio.open_memory_channel[dict[str, Any]](buffer)
        self.lagged = False


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self.published = 0

    def publish(self, kind: str, **fields: Any) -> None:
        event = {"type": kind, "ts": round(time.time(), 3), **fields}
        self.published += 1
        for sub in list(self._subscribers):
            try:
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                sub.lagged = True
                sub.send.close()
                self._subscribers.discard(sub)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(sub)

    @contextmanager
    def subscribe(self, buffer: int = DEFAULT_SUBSCRIBER_BUFFER) -> Iterator[Subscription]:
        sub = Subscription(buffer)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)
            sub.send.close()
            sub.receive.close()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
