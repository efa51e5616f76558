"""Retries for idempotent reads (status, health): capped exponential backoff with full jitter, bounded by
attempts and by total time. Payment sends are never retried in memory: their retries are durable (design §6).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import trio

from connectors import ConnectorError, RateLimited

from ._backoff import Backoff

T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ConnectorError) and exc.retryable


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    attempts: int = 3
    total_seconds: float = 10.0
    backoff: Backoff = msgspec.field(default_factory=lambda: Backoff(initial=0.2, maximum=5.0, jitter=1.0))

    async def call(
        self, fn: Callable[[], Awaitable[T]], *, retryable: Callable[[BaseException], bool] = is_retryable,
        rng: random.Random | None = None,
    ) -> T:
        """Call ``fn`` until it succeeds, a non-retryable error, the attempts or the time run out.

        The last error is raised. A RateLimited error's retry_after is waited instead of the backoff.
        Cancellation stops at once.
        """
        deadline = trio.current_time() + self.total_seconds
        attempt = 1
        while True:
            try:
                return await fn()
            except Exception as exc:
                if not retryable(exc) or attempt >= self.attempts:
                    raise
                delay = self.backoff.delay(attempt, rng)
                if isinstance(exc, RateLimited) and exc.retry_after is not None:
                    delay = exc.retry_after
                if trio.current_time() + delay > deadline:
                    raise
            await trio.sleep(delay)
            attempt += 1
