"""What a pain.001 file is made of, as frozen values: the file, its payment blocks and their transfers."""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal

import msgspec


class Pain001Version(enum.StrEnum):
    V03 = "pain.001.001.03"
    V09 = "pain.001.001.09"


class PostalAddress(msgspec.Struct, frozen=True, kw_only=True):
    """Structured (or, with ``lines``, hybrid) address: town and country are always there (the Nov 2026 rule
    ends address-lines-only addresses)."""

    town: str
    country: str  # ISO 3166 alpha-2
    street: str | None = None
    building: str | None = None
    postcode: str | None = None
    lines: tuple[str, ...] = ()  # at most 2 of 70 characters, beside the structured fields


class Account(msgspec.Struct, frozen=True, kw_only=True):
    """An IBAN, or another identifier with its scheme (West African accounts are often not IBAN-registered)."""

    iban: str | None = None
    other: str | None = None
    scheme: str = "BBAN"  # what ``other`` is, as the bank names it


class Party(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    address: PostalAddress | None = None


class Transfer(msgspec.Struct, frozen=True, kw_only=True):
    """One credit transfer: one payout slice."""

    slice_id: int
    end_to_end_id: str  # the slice's idempotency key: it comes back in pain.002 and on the statement
    amount: Decimal
    creditor: Party
    creditor_account: Account
    creditor_agent_bic: str | None = None
    remittance: str | None = None


class PaymentBatch(msgspec.Struct, frozen=True, kw_only=True):
    """One payment information block: one debtor account, one currency, one execution date."""

    debtor: Party
    debtor_account: Account
    debtor_agent_bic: str | None
    currency: str
    execution_date: dt.date
    transfers: tuple[Transfer, ...]
    charge_bearer: str = "SLEV"  # SLEV (service level), SHAR, DEBT or CRED


class PaymentFile(msgspec.Struct, frozen=True, kw_only=True):
    """One pain.001 message. ``file_id`` is the file's row in PostgreSQL: every id in the file derives from it."""

    file_id: int
    created_at: dt.datetime
    initiating_party: str
    batches: tuple[PaymentBatch, ...]
    batch_booking: bool = True
    prefix: str = "MOLAM"  # MsgId is PREFIX-FILEID
