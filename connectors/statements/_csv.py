"""CSV statements: every bank lays its columns out differently, so a profile per bank says how to read them.

A profile names the columns (by header name, or by 0-based position for files without a header), the
delimiter, the decimal and thousands separators, the date format, the encoding, and how debit and credit
are told apart: a signed amount, two columns (debit, credit), or an amount with an indicator column. Rows
are grouped into one statement per account (and statement number, when a column carries it). When a running
balance column is mapped, every row must carry the balance of the row before plus its amount: that is the
CSV form of opening + credits - debits = closing (a row with an empty balance cell is refused, never taken
unchecked). One currency per statement. Amounts are read by ``connectors._money.parse_amount``: ASCII digits and
one decimal separator, no exponent, bounded length; sums are exact.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from decimal import Decimal
from typing import Literal

import msgspec

from .._money import EXACT, AmountSyntaxError, clip, parse_amount, show_amount
from ._errors import BalanceMismatch, StatementFormatError
from ._model import Balance, Statement, StatementLine

Column = str | int | None


class CsvColumns(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which column holds what: a header name, or a 0-based position."""

    account: Column = None
    statement_number: Column = None
    booking_date: Column = None
    value_date: Column = None
    amount: Column = None
    debit: Column = None
    credit: Column = None
    indicator: Column = None
    currency: Column = None
    reference: Column = None
    bank_ref: Column = None
    end_to_end_id: Column = None
    counterparty_name: Column = None
    counterparty_iban: Column = None
    counterparty_bic: Column = None
    remittance: Column = None
    balance: Column = None


class CsvProfile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[statements.csv_profiles.NAME]``: how one bank writes its CSV statements."""

    columns: CsvColumns
    delimiter: str = ","
    quote: str = '"'
    encoding: str = "utf-8"
    decimal_separator: str = "."
    thousands_separator: str = ""
    date_format: str = "%Y-%m-%d"
    header: Literal["auto", "yes", "no"] = "auto"
    skip_rows: int = 0  # lines before the header (bank banners)
    amount_style: Literal["signed", "debit_credit", "indicator"] = "signed"
    credit_marks: list[str] = msgspec.field(default_factory=lambda: ["C", "CR", "CRDT", "+"])
    debit_marks: list[str] = msgspec.field(default_factory=lambda: ["D", "DR", "DBIT", "-"])
    account: str | None = None  # when no column carries it
    currency: str | None = None  # when no column carries it

    def problems(self) -> list[str]:
        """What is wrong with this profile, for config validation."""
        out = []
        cols = self.columns
        if len(self.delimiter) != 1:
            out.append("delimiter must be one character")
        if cols.value_date is None and cols.booking_date is None:
            out.append("columns: map value_date or booking_date")
        needed = {"signed": ("amount",), "debit_credit": ("debit", "credit"), "indicator": ("amount", "indicator")}
        out.extend(f"columns.{name} is required for amount_style {self.amount_style!r}"
                   for name in needed[self.amount_style] if getattr(cols, name) is None)
        if cols.account is None and self.account is None:
            out.append("map columns.account or set account")
        if cols.currency is None and self.currency is None:
            out.append("map columns.currency or set currency")
        return out


# The layout molamd's own sandbox bank writes, and a sensible default for a bank without a profile yet.
MOLAMD_PROFILE = CsvProfile(
    columns=CsvColumns(
        account="account", statement_number="statement", booking_date="booking_date", value_date="value_date",
        amount="amount", currency="currency", reference="reference", bank_ref="bank_ref",
        end_to_end_id="end_to_end_id", counterparty_name="counterparty_name", counterparty_iban="counterparty_iban",
        counterparty_bic="counterparty_bic", remittance="remittance", balance="balance",
    ),
)

_FIELDS = tuple(CsvColumns.__struct_fields__)


def parse_csv(data: bytes, profile: CsvProfile, *, check: bool = True) -> list[Statement]:
    """Every statement in a CSV file read with ``profile``; raises StatementFormatError or BalanceMismatch."""
    problems = profile.problems()
    if problems:
        raise StatementFormatError("profile", "; ".join(problems))
    try:
        text = data.decode(profile.encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise StatementFormatError("line 1", f"not {profile.encoding} text: {exc}") from None
    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=profile.delimiter, quotechar=profile.quote,
                        strict=True)
    rows = _rows(reader, profile)
    return list(_statements(rows, profile, check))


_Row = tuple[int, dict[str, str], str]  # line number, {field: cell}, the row as the bank wrote it (unquoted)


def _rows(reader: Iterator[list[str]], profile: CsvProfile) -> Iterator[_Row]:
    """(line number, {field: cell}) per data row; the header is found, checked and skipped."""
    index: dict[str, int] | None = None
    width: int | None = None
    try:
        for row in reader:
            line = reader.line_num  # type: ignore[attr-defined]
            if line <= profile.skip_rows or not any(cell.strip() for cell in row):
                continue
            if index is None:
                index, is_header = _index(row, profile, line)
                width = len(row)
                if is_header:
                    continue
            if len(row) != width:
                raise StatementFormatError(
                    f"line {line}", f"{len(row)} fields, expected {width} (as in the first row)")
            yield line, {name: row[i].strip() for name, i in index.items()}, profile.delimiter.join(row)
    except csv.Error as exc:
        raise StatementFormatError(f"line {reader.line_num}", f"not valid CSV: {exc}") from None  # type: ignore[attr-defined]
    if index is None:
        raise StatementFormatError("line 1", "no rows (expected a header or statement rows)")


def _index(row: list[str], profile: CsvProfile, line: int) -> tuple[dict[str, int], bool]:
    cols = profile.columns
    mapped = {name: getattr(cols, name) for name in _FIELDS if getattr(cols, name) is not None}
    names = [c.strip().lower() for c in row]
    named = [str(v).lower() for v in mapped.values() if isinstance(v, str)]
    is_header = profile.header == "yes" or (profile.header == "auto" and any(n in names for n in named))
    index: dict[str, int] = {}
    for name, col in mapped.items():
        if isinstance(col, int):
            if col >= len(row):
                raise StatementFormatError(f"line {line}", f"column {col} for {name} but the row has {len(row)}")
            index[name] = col
        elif is_header and str(col).lower() in names:
            index[name] = names.index(str(col).lower())
        else:
            raise StatementFormatError(
                f"line {line}", f"no header column {col!r} for {name} (header has: {clip(', '.join(row), 300)})")
    return index, is_header


class _Open:
    def __init__(self, key: tuple[str, str | None], line: int) -> None:
        self.key = key
        self.line = line
        self.lines: list[StatementLine] = []
        self.opening: Balance | None = None
        self.closing: Balance | None = None


def _statements(rows: Iterator[_Row], profile: CsvProfile, check: bool) -> Iterator[Statement]:
    current: _Open | None = None
    for line, cells, raw in rows:
        entry, balance = _line(line, cells, raw, profile)
        key = (entry.account, cells.get("statement_number") or None)
        if current is None or current.key != key:
            if current is not None:
                yield _done(current, profile)
            current = _Open(key, line)
        elif check and entry.currency != current.lines[0].currency:
            raise BalanceMismatch(key[1] or key[0], f"line {line}", Decimal(0),
                                  f"a row in {entry.currency} in a statement in {current.lines[0].currency} "
                                  f"(one currency per statement)")
        if balance is not None:
            date = entry.booking_date or entry.value_date
            before = Balance(amount=EXACT.subtract(balance, entry.amount), currency=entry.currency, date=date)
            if current.closing is None:
                current.opening = before
            elif check and current.closing.amount != before.amount:
                raise BalanceMismatch(
                    key[1] or key[0], f"line {line}",
                    EXACT.subtract(balance, EXACT.add(current.closing.amount, entry.amount)),
                    f"running balance {show_amount(balance)} is not the previous {show_amount(current.closing.amount)} "
                    f"plus this row's {show_amount(entry.amount, sign=True)}")
            current.closing = Balance(amount=balance, currency=entry.currency, date=date)
        current.lines.append(entry)
    if current is not None:
        yield _done(current, profile)


def _done(current: _Open, profile: CsvProfile) -> Statement:
    first = current.lines[0]
    return Statement(
        format="csv", account=current.key[0], currency=first.currency, number=current.key[1],
        opening=current.opening, closing=current.closing, lines=tuple(current.lines), source_line=current.line,
    )


def _line(line: int, cells: dict[str, str], raw: str, profile: CsvProfile) -> tuple[StatementLine, Decimal | None]:
    where = f"line {line}"
    booking = _date(cells, "booking_date", profile, where)
    value = _date(cells, "value_date", profile, where) or booking
    if value is None:
        raise StatementFormatError(where, "no value or booking date")
    style = profile.amount_style
    if style == "signed":
        amount = _required(cells, "amount", profile, where)
    elif style == "debit_credit":
        debit = _number(cells, "debit", profile, where, required=False)
        credit = _number(cells, "credit", profile, where, required=False)
        if (debit is None) == (credit is None) and not (debit == 0 or credit == 0):
            raise StatementFormatError(where, "expected an amount in exactly one of the debit and credit columns")
        amount = EXACT.subtract(credit or Decimal(0), abs(debit or Decimal(0)))
    else:
        amount = abs(_required(cells, "amount", profile, where))
        mark = cells["indicator"].upper()
        if mark in profile.debit_marks:
            amount = -amount
        elif mark not in profile.credit_marks:
            raise StatementFormatError(
                where, f"indicator {clip(cells['indicator'])!r} (expected one of "
                f"{', '.join(profile.credit_marks + profile.debit_marks)})")
    currency = cells.get("currency") or profile.currency or ""
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise StatementFormatError(where, f"currency {clip(currency)!r} (expected an ISO 4217 code like XOF)")
    account = cells.get("account") or profile.account or ""
    if not account:
        raise StatementFormatError(where, "empty account")
    # A mapped balance column is checked on every row: an empty cell would let that row through unchecked.
    balance = _required(cells, "balance", profile, where) if "balance" in cells else None
    return StatementLine(
        account=account, currency=currency, amount=amount, value_date=value, booking_date=booking,
        customer_ref=cells.get("reference") or None, bank_ref=cells.get("bank_ref") or None,
        end_to_end_id=cells.get("end_to_end_id") or None, counterparty_name=cells.get("counterparty_name") or None,
        counterparty_iban=cells.get("counterparty_iban") or None,
        counterparty_bic=cells.get("counterparty_bic") or None, remittance=cells.get("remittance") or None,
        raw=raw, source_line=line,
    ), balance


def _required(cells: dict[str, str], name: str, profile: CsvProfile, where: str) -> Decimal:
    value = _number(cells, name, profile, where, required=True)
    assert value is not None  # required=True raises instead
    return value


def _number(cells: dict[str, str], name: str, profile: CsvProfile, where: str, *, required: bool) -> Decimal | None:
    text = cells.get(name, "")
    if not text:
        if required:
            raise StatementFormatError(where, f"column {name} is empty (expected a number)")
        return None
    cleaned = text.replace(" ", "").replace("\u00a0", "")  # "1 000,00": spaces group digits
    if profile.thousands_separator:
        cleaned = cleaned.replace(profile.thousands_separator, "")
    try:
        return parse_amount(cleaned, decimal_separator=profile.decimal_separator, signed=True)
    except AmountSyntaxError as exc:
        raise StatementFormatError(
            where, f"column {name} is {clip(text)!r} (expected a number like -1234{profile.decimal_separator}56: "
                   f"{exc.reason})") from None


def _date(cells: dict[str, str], name: str, profile: CsvProfile, where: str) -> dt.date | None:
    text = cells.get(name)
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, profile.date_format).date()
    except ValueError:
        raise StatementFormatError(
            where, f"column {name} is {clip(text)!r} (expected a date as {profile.date_format})") from None
