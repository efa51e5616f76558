"""What every statement format normalises to: a Statement of StatementLines, money as Decimal."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from decimal import Decimal

import msgspec

from .._money import EXACT, clip, exact_sum, show_amount
from ._errors import BalanceMismatch, StatementFormatError


class Balance(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A booked or available balance: signed amount (debit balances negative), its currency and date."""

    amount: Decimal
    currency: str
    date: dt.date


class StatementLine(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One booked entry; ``amount`` is signed: money in is positive, money out (and credit reversals) negative."""

    account: str
    currency: str
    amount: Decimal
    value_date: dt.date
    booking_date: dt.date | None = None
    reversal: bool = False
    transaction_code: str | None = None  # MT940 N-code or GV code, camt bank transaction code
    customer_ref: str | None = None  # our reference as the bank echoes it (MT940 :61: reference for the owner)
    bank_ref: str | None = None  # the bank's own reference (AcctSvcrRef)
    end_to_end_id: str | None = None
    counterparty_name: str | None = None
    counterparty_iban: str | None = None
    counterparty_bic: str | None = None
    remittance: str | None = None
    details: dict[str, str] = msgspec.field(default_factory=dict)  # structured fields the format carried
    raw: str = ""  # the line as the bank wrote it
    source_line: int = 0  # where in the file it starts (line number, or entry index for XML)

    @property
    def credit_debit(self) -> str:
        """C or D as booked (a reversal keeps the mark of the entry it reverses)."""
        credit = self.amount >= 0
        return ("D" if credit else "C") if self.reversal else ("C" if credit else "D")

    @property
    def reference(self) -> str | None:
        """The reference to show first: end-to-end, else the customer reference, else the bank's."""
        return self.end_to_end_id or self.customer_ref or self.bank_ref


class Statement(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One statement of one account; ``lines`` in the order the bank listed them."""

    format: str  # mt940, mt942, csv, camt053
    account: str
    currency: str
    number: str | None
    reference: str | None = None  # MT940 :20:, camt Stmt/Id
    sequence: str | None = None
    opening: Balance | None = None
    closing: Balance | None = None
    closing_available: Balance | None = None
    forward_available: tuple[Balance, ...] = ()
    lines: tuple[StatementLine, ...] = ()
    info: str | None = None  # statement-level free text
    declared: dict[str, str] = msgspec.field(default_factory=dict)  # what else the file states: totals, references
    source_line: int = 0

    @property
    def label(self) -> str:
        return self.number or self.reference or "?"


def check_balance(statement: Statement, where: str) -> None:
    """Opening + credits - debits must equal closing, in the statement's currency, added exactly; raise
    BalanceMismatch. Every balance and line must be in the statement's currency first (check_currency)."""
    check_currency(statement, where)
    opening, closing = statement.opening, statement.closing
    if opening is None or closing is None:
        return
    if opening.currency != closing.currency:
        raise BalanceMismatch(statement.label, where, Decimal(0),
                              f"opening balance in {clip(opening.currency)} but closing balance in "
                              f"{clip(closing.currency)}")
    total = sum_amounts(statement.lines, opening.amount)
    if total != closing.amount:
        lines = show_amount(EXACT.subtract(total, opening.amount), sign=True)
        raise BalanceMismatch(
            statement.label, where, EXACT.subtract(closing.amount, total),
            f"opening {show_amount(opening.amount)} + lines {lines} = {show_amount(total)}, "
            f"but the closing balance is {show_amount(closing.amount)} {clip(closing.currency)}",
        )


def check_currency(statement: Statement, where: str) -> None:
    """One currency per statement: every balance and every line in the statement's own; raise BalanceMismatch
    naming the first that is not (amounts in two currencies do not add up)."""
    currency = statement.currency
    balances = [("opening", statement.opening), ("closing", statement.closing),
                 ("closing available", statement.closing_available),
                 *(("forward available", b) for b in statement.forward_available)]
    for name, balance in balances:
        if balance is not None and balance.currency != currency:
            raise BalanceMismatch(statement.label, where, Decimal(0),
                                  f"the statement is in {clip(currency)} but its {name} balance is in "
                                  f"{clip(balance.currency)}")
    for line in statement.lines:
        if line.currency != currency:
            raise BalanceMismatch(statement.label, f"{where} (entry at {line.source_line})", Decimal(0),
                                  f"the statement is in {clip(currency)} but this entry is in {clip(line.currency)}")


def sum_amounts(lines: Iterable[StatementLine], start: Decimal = Decimal(0)) -> Decimal:
    """``start`` plus the lines' amounts, exactly (never rounded to the default 28 digits)."""
    try:
        return exact_sum((line.amount for line in lines), start)
    except ArithmeticError:  # amounts are bounded when read; this is the guard, not the rule
        raise StatementFormatError("statement", "amounts too large to add exactly") from None
