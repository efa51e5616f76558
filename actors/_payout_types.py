"""Values the dispatcher and the status follower exchange with the payout store (implemented by molamd)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

import msgspec

from connectors import CallRecord, PayoutSlice

from ._backoff import Backoff

# How the dispatcher and the status follower wait between attempts to reach a store that is away.
STORE_RETRY = Backoff(initial=0.2, maximum=5.0)


class Claimed(msgspec.Struct, frozen=True, kw_only=True):
    slice: PayoutSlice
    bank_profile: str
    account_currency: str
    attempts: int
    max_attempts: int
    recovering: bool  # it was 'sending' when its lease ran out: ask the bank before sending again
    connector_name: str | None = None
    provider_ref: str | None = None
    # The idempotency scope of the latest attempt that may have reached a bank (None: no bank can have it),
    # and how many seconds ago that attempt started.
    bound_scope: str | None = None
    bound_age: float = 0.0
    lookups: int = 0  # status lookups made since its attempts ran out (the status_checks column)


class AttemptStart(msgspec.Struct, frozen=True, kw_only=True):
    """An attempt about to start: recorded (and the slice bound to the scope) before the bank is called."""

    slice_id: int
    connector: str
    scope: str
    trace_id: str


class AttemptOutcome(enum.StrEnum):
    ANSWERED = "answered"  # the bank answered about the payment (accepted, settled, rejected)
    REFUSED = "refused"  # a definite refusal: provably not executed
    NOT_SENT = "not_sent"  # nothing left us (breaker, limiter, bulkhead, busy, connection refused)
    IN_DOUBT = "in_doubt"  # may have reached the bank: timeout, reset, 5xx, garbage, abandoned


NOT_REACHED = (AttemptOutcome.REFUSED, AttemptOutcome.NOT_SENT)


class OutcomeKind(enum.StrEnum):
    SENT = "sent"
    SETTLED = "settled"
    FAILED = "failed"
    RETRY = "retry"
    DEAD = "dead"
    RELEASE = "release"  # not an attempt: back to pending
    BATCHED = "batched"  # handed to a file channel: waits for its file (the attempt stays open until then)
    LOOKUP = "lookup"  # attempts exhausted, in doubt: its scope is asked again after ``delay`` (not an attempt)
    UNRESOLVED = "unresolved"  # its scope could not say by the end of the acceptance window: a person decides


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    slice_id: int
    kind: OutcomeKind
    connector: str | None = None
    provider_ref: str | None = None
    error: str | None = None
    delay: float = 0.0  # RETRY: seconds until the next attempt; SENT: until the first status check
    claimed_at: float | None = None  # trio time of the claim, for the claim-to-recorded latency
    attempt: AttemptOutcome | None = None  # how the attempt this dispatch started ended (None: none started)
    released_scope: str | None = None  # the scope the slice was freed from (NOT_FOUND past its acceptance window)
    trace_id: str | None = None  # the trace of the attempt this outcome ends (the X-Trace-Id the bank saw)


class SentSlice(msgspec.Struct, frozen=True, kw_only=True):
    slice_id: int
    idempotency_key: str
    provider_ref: str | None
    connector_name: str | None
    age_seconds: float
    checks: int
    flagged: bool
    scope: str | None = None


class StatusOutcome(msgspec.Struct, frozen=True, kw_only=True):
    slice_id: int
    final_status: str | None = None  # "settled" or "failed"; None: still pending
    error: str | None = None
    next_check: float = 0.0
    flag: bool = False


class PushedOutcome(msgspec.Struct, frozen=True, kw_only=True):
    connector: str
    provider_ref: str
    final_status: str  # "settled" or "failed"
    error: str | None = None
    received_at: float = 0.0  # trio time; an event for a slice not yet recorded 'sent' is retried a while


class PayoutStore(Protocol):
    async def claim(self, limit: int, lease: float) -> list[Claimed]: ...

    async def start_attempts(self, attempts: Sequence[AttemptStart], lease: float) -> set[int]:
        """Claimed → sending, one attempt row each, the slice bound to the attempt's scope; the ids still held.

        A slice bound to another scope than its attempt's is refused (not in the returned set).
        """
        ...

    async def record(self, outcomes: Sequence[Outcome], audit: Sequence[CallRecord]) -> int: ...

    async def audit(self, audit: Sequence[CallRecord]) -> None: ...

    async def claim_sent(self, limit: int, lease: float) -> list[SentSlice]: ...

    async def record_status(self, outcomes: Sequence[StatusOutcome], audit: Sequence[CallRecord]) -> None: ...

    async def apply_pushed(self, outcomes: Sequence[PushedOutcome]) -> set[tuple[str, str]]: ...
