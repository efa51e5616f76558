"""Errors a bank connector raises; third-party errors are mapped to these at the adapter.

::

    ConnectorError
    ├── Timeout          the bank did not answer in time (retryable)
    ├── Network          connection refused, reset, TLS failure (retryable)
    ├── Auth             the bank refused our credentials (not retryable; fix config or secrets)
    ├── Validation       we sent something the bank cannot accept (not retryable)
    ├── Rejected         the bank said no: final, with the bank's reason code
    │   ├── ServerError      the bank answered 5xx
    │   └── BadResponse      garbage, or a signature that does not verify: outcome unknown
    ├── RateLimited      slow down (retryable, with retry_after seconds)
    ├── CircuitOpen      not sent at all: the breaker is open (not an attempt)
    └── Busy             not sent at all: the connector's mailbox or bulkhead is full (not an attempt)

Validation has one subclass, IdempotencyConflict: the bank has this key with a different request (our bug).
Every retryable error on a payment send leaves the outcome unknown; the retry reuses the idempotency key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._payments import CallRecord


class ConnectorError(Exception):
    """Base of every error a connector raises."""

    retryable = False
    code = "connector_error"

    def __init__(self, connector: str, message: str) -> None:
        super().__init__(f"{connector}: {message}")
        self.connector = connector
        self.record: CallRecord | None = None  # the audit record of the failed call, when there was one


class Timeout(ConnectorError):
    retryable = True
    code = "timeout"


class Network(ConnectorError):
    retryable = True
    code = "network"


class ServerError(Network):
    code = "server_error"

    def __init__(self, connector: str, message: str, *, http_status: int) -> None:
        super().__init__(connector, message)
        self.http_status = http_status


class BadResponse(Network):
    code = "bad_response"


class Auth(ConnectorError):
    code = "auth"


class Validation(ConnectorError):
    code = "validation"


class IdempotencyConflict(Validation):
    code = "idempotency_conflict"


class Rejected(ConnectorError):
    code = "rejected"

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
