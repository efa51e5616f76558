"""Errors a bank connector raises; third-party errors are mapped to these at the adapter.

::

    ConnectorError
    ├── Timeout                  the bank did not answer in time (retryable; may have reached the bank)
    ├── Network                  connection refused, reset, TLS failure (retryable)
    │   ├── ServerError          the bank answered 5xx (retryable; may have reached the bank)
    │   └── BadResponse          garbage, or a signature that does not verify (retryable; outcome unknown)
    ├── Auth                     the bank refused our credentials (the connector's fault: it is unhealthy)
    ├── Validation               we sent something the bank cannot accept (not retryable)
    │   └── IdempotencyConflict  the bank has this key with a different request (our bug; keeps the scope)
    ├── Rejected                 the bank said no: final, with the bank's reason code
    ├── RateLimited              slow down (retryable, with retry_after seconds)
    ├── CircuitOpen              not sent at all: the breaker is open (not an attempt)
    └── Busy                     not sent at all: mailbox, limiter or bulkhead full (not an attempt)

``reached`` says whether the call may have reached the bank (design §6): False only when it provably did not,
because nothing left us (breaker, limiter, bulkhead, connection refused, TLS or DNS failure before sending) or
the bank answered with a definite refusal (4xx, 401/403, 429). A 409 is the exception: the bank holds the key.
A payment send whose error has ``reached`` True leaves the slice in doubt, bound to the connector's idempotency
scope; the retry reuses the key there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._payments import CallRecord


class ConnectorError(Exception):
    """Base of every error a connector raises."""

    retryable = False
    code = "connector_error"
    reached = False  # may this call have reached the bank? (class default; an instance may say otherwise)

    def __init__(self, connector: str, message: str, *, reached: bool | None = None) -> None:
        super().__init__(f"{connector}: {message}")
        self.connector = connector
        if reached is not None:
            self.reached = reached
        self.record: CallRecord | None = None  # the audit record of the failed call, when there was one


class Timeout(ConnectorError):
    retryable = True
    reached = True
    code = "timeout"


class Network(ConnectorError):
    retryable = True
    reached = True  # a reset after sending; the adapter says reached=False for a refused connection
    code = "network"


class ServerError(Network):
    code = "server_error"

    def __init__(self, connector: str, message: str, *, http_status: int) -> None:
        super().__init__(connector, message, reached=True)
        self.http_status = http_status


class BadResponse(Network):
    code = "bad_response"

    def __init__(self, connector: str, message: str, *, reached: bool = True) -> None:
        super().__init__(connector, message, reached=reached)


class Auth(ConnectorError):
    code = "auth"


class Validation(ConnectorError):
    code = "validation"


class IdempotencyConflict(Validation):
    code = "idempotency_conflict"
    reached = True  # the bank holds this key already: whatever it did with it, the slice stays in its scope


class Rejected(ConnectorError):
    code = "rejected"
    reached = True  # the bank had it, and said no

    def __init__(self, connector: str, message: str, *, reason_code: str) -> None:
        super().__init__(connector, f"{message} (bank reason {reason_code})")
        self.reason_code = reason_code


class RateLimited(ConnectorError):
    retryable = True
    code = "rate_limited"

    def __init__(self, connector: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(connector, message)
        self.retry_after = retry_after


class CircuitOpen(ConnectorError):
    retryable = True
    code = "circuit_open"


class Busy(ConnectorError):
    retryable = True
    code = "busy"
