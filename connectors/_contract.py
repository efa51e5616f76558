"""The bank connector contract: capabilities, the shared config of every connector, and the Protocol."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import ClassVar, Protocol

import msgspec

from ._payments import CallRecord, PaymentEvent, PaymentRef, PaymentStatus, PayoutSlice, SendResult
from ._values import Duration

DEFAULT_PRIORITY = 100
DEFAULT_MAILBOX_SIZE = 256
DEFAULT_SHUTDOWN_GRACE = "10s"
# How long after a request's start a bank may still act on it: past its signed timestamp's skew limit, a request
# still travelling is refused, so NOT_FOUND after this window means it will never be executed (design §6).
DEFAULT_ACCEPTANCE_WINDOW = "10m"


class Capability(enum.StrEnum):
    SEND_PAYMENT = "send_payment"
    PAYMENT_STATUS = "payment_status"
    STATEMENTS = "statements"
    HEALTH = "health"
    PUSH_EVENTS = "push_events"  # the bank streams status changes
    PAYMENT_FILES = "payment_files"  # payments go out in files (batched, then submitted by a FileBatcher)


class _Table(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class LimitsConfig(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[connectors.limits]``: how hard this connector may push its bank."""

    rate: float = 50.0  # calls per second, sustained
    burst: int = 20  # calls allowed at once above the rate
    concurrency: int = 32  # calls in flight at once (the bulkhead)
    call_timeout: Duration = msgspec.field(default_factory=lambda: Duration("10s"))
    # Longest a call waits for its turn (rate limiter) and for a free slot (bulkhead) before it is answered Busy:
    # waiting is never an attempt, and never eats the call's own timeout.
    max_wait: Duration = msgspec.field(default_factory=lambda: Duration("1s"))
    # The longest a bank's Retry-After is honoured; a longer one is cut to this (a proxy's "1e9" or a typo must
    # not park a connector, or a slice, for decades).
    max_retry_after: Duration = msgspec.field(default_factory=lambda: Duration("5m"))


class BreakerConfig(_Table, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[connectors.breaker]``: when to stop calling a failing bank, and how to try again."""

    window: int = 50  # outcomes remembered (count window)
    window_time: Duration | None = None  # or: outcomes within this time (time window)
    minimum_calls: int = 10  # no decision on fewer outcomes than this
    failure_rate: float = 0.5  # open at this share of failures
    slow_call_rate: float = 1.0  # open at this share of slow calls (1.0: never for slowness alone)
    slow_call_duration: Duration = msgspec.field(default_factory=lambda: Duration("5s"))
    open_duration: Duration = msgspec.field(default_factory=lambda: Duration("5s"))
    open_duration_max: Duration = msgspec.field(default_factory=lambda: Duration("60s"))
    open_duration_multiplier: float = 2.0  # each reopening from half-open waits longer, up to the max
    half_open_calls: int = 3  # probe calls let through when half-open
    half_open_max_duration: Duration = msgspec.field(default_factory=lambda: Duration("30s"))


class ConnectorConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"
):
    """Keys every ``[[connectors]]`` entry has; each kind adds a table named after itself."""

    name: str
    bank_profile: str
    priority: int = DEFAULT_PRIORITY
    enabled: bool = True
    mailbox_size: int = DEFAULT_MAILBOX_SIZE
    shutdown_grace: Duration = msgspec.field(default_factory=lambda: Duration(DEFAULT_SHUTDOWN_GRACE))
    rails: list[str] = msgspec.field(default_factory=list)  # empty: every rail
    currencies: list[str] = msgspec.field(default_factory=list)  # empty: every currency
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    # Connectors that share a scope share the bank's idempotency store (two endpoints of one API) and may take
    # over each other's slices; empty means the connector's own name: a channel of its own.
    idempotency_scope: str = ""
    acceptance_window: Duration = msgspec.field(default_factory=lambda: Duration(DEFAULT_ACCEPTANCE_WINDOW))

    @property
    def scope(self) -> str:
        """The idempotency scope this connector sends in."""
        return self.idempotency_scope or self.name

    def serves(self, rail: str, currency: str) -> bool:
        return (not self.rails or rail in self.rails) and (not self.currencies or currency in self.currencies)

    @property
    def kind(self) -> str:
        tag = type(self).__struct_config__.tag
        return str(tag)


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """One health check's outcome."""

    ok: bool
    latency_seconds: float
    detail: str = ""


class CallContext(msgspec.Struct, frozen=True, kw_only=True):
    """Carried into every connector call."""

    trace_id: str
    timeout: float
    payout_slice_id: int | None = None


class BankConnector(Protocol):
    """What every connector kind implements; payout and statement operations are added by their kinds."""

    kind: ClassVar[str]
    offers: ClassVar[frozenset[Capability]]  # what the kind can do, known before any instance exists
    capabilities: frozenset[Capability]  # what this configured instance does (a subset of offers); read, never probed

    async def open(self) -> None:
        """Acquire clients and sessions; cancellation aborts the open."""

    async def aclose(self) -> None:
        """Release them; safe to call twice."""

    async def healthcheck(self) -> Health:
        """Ask the bank (or the transport) whether it is reachable."""


class PaymentConnector(BankConnector, Protocol):
    """A connector with SEND_PAYMENT and PAYMENT_STATUS."""

    async def send_payment(self, slice: PayoutSlice, ctx: CallContext) -> tuple[SendResult, CallRecord]:
        """Ask the bank to pay; the same idempotency key always means the same payment.

        Raises a ConnectorError (mapped from the transport); the CallRecord of a failed call travels on
        the error as ``exc.record``.
        """
        ...

    async def payment_status(self, ref: PaymentRef, ctx: CallContext) -> tuple[PaymentStatus, CallRecord]:
        """Ask the bank what became of a payment, by idempotency key (and provider reference if known)."""
        ...


class EventConnector(BankConnector, Protocol):
    """A connector with PUSH_EVENTS: the bank streams status changes."""

    async def stream_events(self, since: int, deliver: Callable[[PaymentEvent], None]) -> None:
        """Deliver events after sequence ``since`` until the stream breaks (then raise a ConnectorError)."""
        ...
