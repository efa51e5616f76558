"""The status follower: drives ``sent`` slices to ``settled`` or ``failed`` by asking the bank, with backoff.

It asks only within the slice's idempotency scope: the connector that got the answer, or another connector of
the same scope when that one is not running; a bank of another scope knows nothing of this key.

A slice whose outcome is still unknown after ``unknown_after`` seconds is flagged (once) for people to look at.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import msgspec
import trio

from connectors import ConnectorError, PaymentEvent, PaymentRef, PaymentState

from ._actor import Actor
from ._backoff import Backoff
from ._connector_actor import ConnectorActor
from ._errors import ActorError
from ._payout_types import STORE_RETRY, PayoutStore, PushedOutcome, SentSlice, StatusOutcome

logger = logging.getLogger("molamd.status_follower")


class FollowerSettings(msgspec.Struct, frozen=True, kw_only=True):
    batch_size: int = 200
    interval: float = 0.5
    lease: float = 30.0
    concurrency: int = 64
    call_timeout: float = 30.0
    unknown_after: float = 3600.0
    backoff: Backoff = msgspec.field(default_factory=lambda: Backoff(initial=0.5, maximum=60.0, jitter=0.5))


PUSHED_MAILBOX = 4096
PUSHED_RETENTION = 30.0  # seconds an unmatched pushed event is retried


class Pushed(msgspec.Struct, frozen=True):
    """A status change a connector received on its bank's event stream."""

    connector: str
    event: PaymentEvent


class StatusFollower(Actor[Pushed]):
    def __init__(self, store: PayoutStore, connector: Callable[[str | None, str | None], ConnectorActor | None],
                 settings: FollowerSettings, rng: random.Random | None = None) -> None:
        super().__init__("status_follower", mailbox_size=PUSHED_MAILBOX)
        self._store = store
        self._lookup = connector
        self.settings = settings
        self._rng = rng or random.Random()
        self._limiter = trio.CapacityLimiter(settings.concurrency)
        self.flagged = 0
        self.pushes_dropped = 0
        self._unwritten: list[StatusOutcome] = []  # what the bank said while the database was away
        self._pushed: list[PushedOutcome] = []
        self._wake = trio.Event()

    async def setup(self) -> None:
        self.nursery.start_soon(self._loop_forever)

    async def handle(self, msg: Pushed) -> None:
        event = msg.event
        if event.state is PaymentState.SETTLED:
            self._pushed.append(PushedOutcome(connector=msg.connector, provider_ref=event.provider_ref,
                                              final_status="settled", received_at=trio.current_time()))
        elif event.state is PaymentState.REJECTED:
            self._pushed.append(PushedOutcome(
                connector=msg.connector, provider_ref=event.provider_ref, final_status="failed",
                error=f"rejected by the bank: {event.reason_code}", received_at=trio.current_time()))
        self._wake.set()

    def push(self, connector: str, event: PaymentEvent) -> None:
        """Hand over a pushed event. When the mailbox is full it is counted, logged and left to polling,
        which settles that slice all the same."""
        try:
            self.tell(Pushed(connector, event))
        except ActorError:
            self.pushes_dropped += 1
            if self.pushes_dropped % 1000 == 1:
                logger.warning("status follower busy: %d pushed events left to polling", self.pushes_dropped)

    async def _loop_forever(self) -> None:
        failures = 0
        while True:
            try:
                if self._pushed:
                    await self._apply_pushed()
                if self._unwritten:
                    await self._store.record_status(self._unwritten, [])
                    self._unwritten = []
                batch = await self._store.claim_sent(self.settings.batch_size, self.settings.lease)
                if batch:
                    await self._follow(batch)
            except Exception as exc:
                if not getattr(exc, "retryable", False):
                    raise
                failures += 1
                await trio.sleep(STORE_RETRY.delay(failures, self._rng))
                continue
            failures = 0
            if len(batch) < self.settings.batch_size:
                with trio.move_on_after(self.settings.interval):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _apply_pushed(self) -> None:
        pushed, self._pushed = self._pushed, []
        try:
            matched = await self._store.apply_pushed(pushed)
        except Exception:
            self._pushed[:0] = pushed
            raise
        # An event can overtake the dispatcher's write of 'sent'; keep those a while, then leave them to polling.
        horizon = trio.current_time() - PUSHED_RETENTION
        self._pushed[:0] = [p for p in pushed
                            if (p.connector, p.provider_ref) not in matched and p.received_at > horizon]

    async def _follow(self, batch: list[SentSlice]) -> None:
        outcomes: list[StatusOutcome] = []

        async def one(item: SentSlice) -> None:
            async with self._limiter:
                outcomes.append(await self._check(item))

        async with trio.open_nursery() as nursery:
            for item in batch:
                nursery.start_soon(one, item)
        try:
            await self._store.record_status(outcomes, [])
        except Exception:
            self._unwritten.extend(outcomes)  # written first thing once the database answers again
            raise

    async def _check(self, item: SentSlice) -> StatusOutcome:
        actor = self._lookup(item.scope, item.connector_name)
        next_check = self.settings.backoff.delay(item.checks + 1, self._rng)
        flag = item.age_seconds > self.settings.unknown_after and not item.flagged
        if actor is None:
            return self._pending(item, next_check, flag,
                                 f"no connector of idempotency scope {item.scope!r} is running")
        try:
            status, _ = await actor.status(
                PaymentRef(idempotency_key=item.idempotency_key, provider_ref=item.provider_ref),
                timeout=self.settings.call_timeout)
        except ConnectorError as exc:
            return self._pending(item, next_check, flag, f"status lookup failed: {exc.code}: {exc}")
        if status.state is PaymentState.SETTLED:
            return StatusOutcome(slice_id=item.slice_id, final_status="settled")
        if status.state is PaymentState.REJECTED:
            return StatusOutcome(slice_id=item.slice_id, final_status="failed",
                                 error=f"rejected by the bank: {status.reason_code}")
        if status.state is PaymentState.NOT_FOUND:
            return self._pending(item, next_check, flag, "the bank does not know this payment")
        return self._pending(item, next_check, flag, None)

    def _pending(self, item: SentSlice, next_check: float, flag: bool, error: str | None) -> StatusOutcome:
        if flag:
            self.flagged += 1
            logger.warning("payout slice %s: outcome still unknown after %.0fs", item.slice_id, item.age_seconds)
            error = f"outcome unknown after {item.age_seconds:.0f}s" + (f"; {error}" if error else "")
        return StatusOutcome(slice_id=item.slice_id, next_check=next_check, flag=flag, error=error)
