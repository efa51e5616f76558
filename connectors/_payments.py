"""Payment values crossing the connector boundary. Money is Decimal with an ISO 4217 code, never float."""

from __future__ import annotations

import enum
from decimal import Decimal

import msgspec


class PayoutSlice(msgspec.Struct, frozen=True, kw_only=True):
    """One payment instruction, as the bank is asked to execute it."""

    id: int
    payout_id: str
    idempotency_key: str
    amount: Decimal
    currency: str
    rail: str
    debtor_account: str
    beneficiary_name: str
    beneficiary_account: str
    beneficiary_bic: str | None = None
    remittance_info: str | None = None


class PaymentState(enum.StrEnum):
    ACCEPTED = "accepted"  # the bank took it; the outcome comes later
    SETTLED = "settled"  # money moved: final
    REJECTED = "rejected"  # the bank refused it: final
    NOT_FOUND = "not_found"  # the bank has no payment under this key or reference


class SendResult(msgspec.Struct, frozen=True, kw_only=True):
    provider_ref: str
    state: PaymentState
    reason_code: str | None = None
    replayed: bool = False  # the bank answered from its idempotency record: no new payment was made


class PaymentRef(msgspec.Struct, frozen=True, kw_only=True):
    idempotency_key: str
    provider_ref: str | None = None


class PaymentStatus(msgspec.Struct, frozen=True, kw_only=True):
    state: PaymentState
    provider_ref: str | None = None
    reason_code: str | None = None
    reason: str | None = None


class PaymentEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A status change the bank pushed (websocket), numbered so a reconnecting client can resume."""

    seq: int
    provider_ref: str
    idempotency_key: str | None
    state: PaymentState
    reason_code: str | None = None


class CallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What one bank call leaves for the audit trail: sanitized, secrets and account numbers masked."""

    connector: str
    trace_id: str
    operation: str
    duration_seconds: float
    outcome: str  # "ok" or "error"
    error_code: str | None = None
    http_status: int | None = None
    payout_slice_id: int | None = None
    request: dict[str, object] | None = None
    response: dict[str, object] | None = None


def mask_account(account: str | None) -> str | None:
    """Keep the last four characters of an account number: ``SN08****6789``-style, safe for logs."""
    if account is None:
        return None
    if len(account) <= 4:
        return "****"
    if len(account) <= 8:
        return "****" + account[-4:]
    return account[:4] + "*" * (len(account) - 8) + account[-4:]
