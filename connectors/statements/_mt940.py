"""SWIFT MT940 (end of day) and MT942 (interim) statements: bytes in, Statements out, one at a time.

The reader walks physical lines (CRLF, LF or CR), so a file of any size is parsed in bounded memory:
``iter_mt940`` yields each statement as soon as its closing balance is read and checked. Real files come
with SWIFT block wrappers (``{1:...}{2:...}{4:`` ... ``-}``), bank header lines before ``:20:``, separator
lines (``-``) and trailing junk; anything outside a statement's tags is skipped, anything inside one that
is not what the format allows is a StatementFormatError naming the line.

Tags: ``:20:`` reference, ``:21:`` related reference, ``:25:`` account, ``:28:``/``:28C:`` statement and
sequence number, ``:60F:``/``:60M:`` opening, ``:61:`` entry, ``:86:`` information (of the entry before it,
or of the statement), ``:62F:``/``:62M:`` closing, ``:64:`` closing available, ``:65:`` forward available,
``:13:``/``:13D:`` date-time indication, ``:34F:`` floor limit, ``:90D:``/``:90C:`` number and sum of debit
and credit entries, ``:NS:`` bank-specific (kept in ``declared``).
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Iterable, Iterator
from decimal import Decimal

from .._money import EXACT, AmountSyntaxError, clip, exact_sum, parse_amount
from ._details import Details, parse_details
from ._errors import BalanceMismatch, StatementFormatError
from ._model import Balance, Statement, StatementLine, check_balance

# ASCII only: ``\d`` alone also matches Arabic-Indic and other digits, which int() and Decimal() then read.
_TAG = re.compile(r":(\d\d[A-Z]?|NS):", re.ASCII)
# A tag and its continuation lines: every following line that does not start with ":", "{" or "-" (those may
# begin a tag, a SWIFT block or the end of a statement, and go through the line-by-line path).
_VALUE = r"[^\n]*(?:\n(?![:{\-\x1a]|[ \t]*:[ \t]*\n)[^\n]*)*"
_FIELD = re.compile(rf"^:(\d\d[A-Z]?|NS):({_VALUE})\n", re.MULTILINE | re.ASCII)
_KNOWN = frozenset({
    "20", "21", "25", "28", "28C", "60F", "60M", "61", "86", "62F", "62M", "64", "65", "13", "13D", "34F",
    "90D", "90C", "NS",
})
_AMOUNT = r"\d+(?:,\d*)?"  # shape only: parse_amount bounds its length
_BALANCE = re.compile(rf"([CD])(\d{{6}})([A-Z]{{3}})({_AMOUNT})\s*$", re.ASCII)
_ENTRY = re.compile(
    rf"(\d{{6}})(\d{{4}}|\s{{4}})?(R?[CD])([A-Z])?({_AMOUNT})([A-Z][A-Z0-9 ]{{3}})(.*)",  # then ref[//bank ref]
    re.ASCII,
)
_BLANK_LINE = re.compile(r"\n[ \t]*(?:\n|$)")
_NUMBER = re.compile(r"(\d+)(?:/(\d+))?\s*$", re.ASCII)
_FLOOR = re.compile(rf"([A-Z]{{3}})([CD])?({_AMOUNT})\s*$", re.ASCII)
_SUMS = re.compile(rf"(\d{{1,5}})([A-Z]{{3}})({_AMOUNT})\s*$", re.ASCII)  # 5n count
_DATETIME = re.compile(r"(\d{6})(\d{4})([+-]\d{4})?\s*$", re.ASCII)
# Block 2 (application header) names the message type: {2:I940...} as sent, {2:O940...} as received.
_MESSAGE_TYPE = re.compile(r"\{2:[IO](\d{3})", re.ASCII)
KINDS = ("mt940", "mt942")


def parse_mt940(data: bytes, *, check: bool = True, kind: str = "mt940") -> list[Statement]:
    """Every statement of an MT940/MT942 file; raises StatementFormatError or BalanceMismatch.

    ``check=False`` skips the balance check (to show an operator what a file that does not balance says).
    ``kind`` is what the source declares its files to be: a message's block 2 header, where it has one, says
    940 or 942 instead. A tag never does: an MT940 with a :34F: or :13D: line is still an MT940 and balances.
    """
    return list(iter_mt940((data,), check=check, kind=kind))


def iter_mt940(chunks: Iterable[bytes], *, check: bool = True, kind: str = "mt940") -> Iterator[Statement]:
    """Statements from the file's bytes in pieces of any size (``iter(lambda: f.read(1 << 20), b"")``), each
    statement checked before it is yielded; memory holds one piece and one statement."""
    if kind not in KINDS:
        raise ValueError(f"unknown SWIFT statement kind {kind!r} (expected one of {', '.join(KINDS)})")
    reader = _Reader(check, kind)
    ready = reader.ready
    line_no = 1
    rest = b""
    for chunk in chunks:
        data = rest + chunk if rest else chunk
        # Whole lines only; the rest waits for more. A CR at the very end may be the first half of a CRLF, so
        # the line it ends waits too.
        end = len(data) - 1 if data.endswith(b"\r") else len(data)
        cut = max(data.rfind(b"\n", 0, end), data.rfind(b"\r", 0, end)) + 1
        if cut <= 0:
            rest = data
            continue
        rest = data[cut:]
        line_no = reader.feed_block(_text(data[:cut]), line_no)
        if ready:
            yield from ready
            ready.clear()
    if rest:
        line_no = reader.feed_block(_text(rest) + "\n", line_no)
    reader.end(max(1, line_no - 1))
    yield from ready


def _no_blanks(value: str) -> str:
    if "\n" in value and _BLANK_LINE.search(value):
        return "\n".join(_value_lines(value))  # as the line-by-line path keeps it: no blank lines
    return value


def _value_lines(value: str) -> tuple[str, ...]:
    """A field's lines: the first as it is, the following ones without blank lines."""
    first, *rest = value.split("\n")
    return (first, *(line for line in rest if line.strip()))


def _text(block: bytes) -> str:
    """Bytes as text with LF line ends (CRLF, LF and a bare CR all end a line)."""
    text = _decode(block)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


class _Reader:
    """Physical lines to tags (with their continuation lines), tags to statements (into ``ready``)."""

    __slots__ = ("builder", "check", "colon_line", "declared_kind", "kind", "ready", "seen_tag", "tag", "tag_line",
                 "value")

    def __init__(self, check: bool, kind: str) -> None:
        self.check = check
        self.declared_kind = kind  # what the source says its files are
        self.kind = kind  # what the current message is: its block 2 header, else the declared kind
        self.ready: list[Statement] = []
        self.builder: _Builder | None = None
        self.tag: str | None = None
        self.value = ""  # the tag's text, continuation lines joined by newlines
        self.tag_line = 0
        self.colon_line = False  # a lone ":" line: some banks wrap right after the tag's first colon
        self.seen_tag = False

    def feed_block(self, text: str, line_no: int) -> int:
        """Whole lines (each ending in a newline) from line ``line_no`` on; returns the number of the next line.

        One regex match takes a tag with all its continuation lines; what lies between matches (block markers,
        junk, a tag wrapped after its colon) goes line by line through ``feed``.
        """
        pos = 0
        for match in _FIELD.finditer(text):
            start = match.start()
            if start != pos:
                line_no = self._lines(text[pos:start], line_no)
            tag, value = match.group(1, 2)
            if tag in _KNOWN and not self.colon_line:
                self._close_tag()
                self.tag, self.tag_line, self.seen_tag = tag, line_no, True
                line_no += value.count("\n") + 1
                self.value = _no_blanks(value)
            else:  # ":26:" and the like inside a field are text, not tags
                line_no = self._lines(match.group(0), line_no)
            pos = match.end()
        if pos < len(text):
            line_no = self._lines(text[pos:], line_no)
        return line_no

    def _lines(self, text: str, line_no: int) -> int:
        for line in text.split("\n")[:-1]:
            self.feed(line, line_no)
            line_no += 1
        return line_no

    def feed(self, text: str, line_no: int) -> None:
        if text[:1] == "\x1a":  # a DOS end-of-file mark (SUB) between messages: not text of either
            text = text.lstrip("\x1a")
        first = text[:1]
        if first == "{":  # SWIFT block headers; the text block {4: holds the statement
            header = _MESSAGE_TYPE.search(text)
            if header is not None:
                self._close_tag()
                self._finish(line_no)
                self.kind = _message_kind(header.group(1), line_no)
            start = text.find("{4:")
            text = text[start + 3:] if start >= 0 else ""
            first = text[:1]
        if self.colon_line and first != ":":
            text, first = ":" + text, ":"
        match = _TAG.match(text) if first == ":" else None
        self.colon_line = False
        if match is not None and match.group(1) in _KNOWN:
            self._close_tag()
            self.tag, self.value, self.tag_line, self.seen_tag = match.group(1), text[match.end():], line_no, True
            return
        stripped = text.strip()
        if stripped == ":":
            self.colon_line = True
        elif stripped == "-" and self._inside_text():
            self.value += "\n" + text  # a lone "-" inside an entry's text, before the closing balance
        elif stripped and stripped[0] == "-" and stripped.rstrip("-}\x03") == "":  # end of a statement block
            self._close_tag()
            self._finish(line_no)
            if "}" in stripped:  # the end of the message's text block: the next message has its own header
                self.kind = self.declared_kind
        elif self.tag is not None and stripped:
            self.value += "\n" + text

    def _inside_text(self) -> bool:
        """A statement is open, its closing balance not yet read, and the open tag is free text (:61:, :86:).

        Only then can a lone "-" be text: anywhere else (after :62F:, in an MT942) it ends the message.
        """
        builder = self.builder
        return (builder is not None and builder.closing is None and not builder.interim
                and self.tag in ("61", "86"))

    def end(self, line_no: int) -> None:
        self._close_tag()
        self._finish(line_no)
        if not self.seen_tag:
            raise StatementFormatError("line 1", "no MT940 tag found (expected a statement starting with :20:)")

    def _finish(self, line_no: int) -> None:
        if self.builder is not None:
            builder, self.builder = self.builder, None
            self.ready.append(builder.finish(line_no, check=self.check))

    def _close_tag(self) -> None:
        """Hand the tag read so far to its statement; a :20: finishes the previous statement."""
        tag = self.tag
        if tag is None:
            return
        value, line, builder = self.value, self.tag_line, self.builder
        self.tag = None
        if builder is not None and tag == "86" and builder.pending is not None:  # the common pair, first
            builder.take_info(value, line)
        elif tag == "20":
            self._finish(line)
            self.builder = _Builder(value.partition("\n")[0].strip(), line, interim=self.kind == "mt942")
        elif self.builder is None:
            raise StatementFormatError(f"line {line}", f":{tag}: before the :20: that starts a statement")
        else:
            self.builder.take(tag, value, line)


def _message_kind(number: str, line: int) -> str:
    if number == "940":
        return "mt940"
    if number == "942":
        return "mt942"
    raise StatementFormatError(f"line {line}", f"block 2 says MT{number} (expected an MT940 or MT942 statement)")


_LINE_END = re.compile(rb"([\r\n]+)")


def _decode(raw: bytes) -> str:
    """UTF-8, else cp1252 line by line: a line's text never depends on where the reader's pieces were cut."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(_line_text(part) for part in _LINE_END.split(raw))


def _line_text(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("cp1252", errors="replace")


_DATES: dict[str, dt.date] = {}
_NO_DETAILS = Details(text="")


def _date(text: str, line: int) -> dt.date:
    """YYMMDD; a day past the month's end (some banks book on "February 30") becomes its last day."""
    cached = _DATES.get(text)
    if cached is not None:
        return cached
    try:
        year, month, day = 2000 + int(text[0:2]), int(text[2:4]), int(text[4:6])
        last = calendar.monthrange(year, month)[1]
        if not 1 <= day <= 31:
            raise ValueError(day)
        date = dt.date(year, month, min(day, last))
    except (ValueError, calendar.IllegalMonthError):
        raise StatementFormatError(f"line {line}", f"{clip(text)!r} is not a date (expected YYMMDD)") from None
    if len(_DATES) < 100_000:
        _DATES[text] = date
    return date


def _amount(text: str, line: int) -> Decimal:
    try:
        return parse_amount(text, decimal_separator=",")
    except AmountSyntaxError as exc:
        raise StatementFormatError(f"line {line}", str(exc)) from None


_ENTRY_DATES: dict[tuple[str, dt.date], dt.date] = {}


def _entry_date(mmdd: str, value_date: dt.date, line: int) -> dt.date:
    """The booking date has no year: take the one that puts it nearest the value date."""
    key = (mmdd, value_date)
    cached = _ENTRY_DATES.get(key)
    if cached is not None:
        return cached
    found = _nearest(mmdd, value_date, line)
    if len(_ENTRY_DATES) < 100_000:
        _ENTRY_DATES[key] = found
    return found


def _nearest(mmdd: str, value_date: dt.date, line: int) -> dt.date:
    month, day = int(mmdd[:2]), int(mmdd[2:])
    best: dt.date | None = None
    for year in (value_date.year, value_date.year + 1, value_date.year - 1):
        try:
            last = calendar.monthrange(year, month)[1]
            candidate = dt.date(year, month, min(day, last)) if 1 <= day <= 31 else None
        except (ValueError, calendar.IllegalMonthError):
            candidate = None
        if candidate is not None and (best is None or abs(candidate - value_date) < abs(best - value_date)):
            best = candidate
    if best is None:
        raise StatementFormatError(f"line {line}", f"entry date {clip(mmdd)!r} is not a date (expected MMDD)")
    return best


class _Builder:
    """One statement being read, tag by tag."""

    __slots__ = ("account", "available", "closing", "declared", "floor_currency", "forward", "info", "interim",
                 "line", "lines", "number", "opening", "pending", "reference", "sequence", "sums")

    def __init__(self, reference: str, line: int, *, interim: bool) -> None:
        self.reference = reference
        self.line = line
        self.account: str | None = None
        self.number: str | None = None
        self.sequence: str | None = None
        self.opening: Balance | None = None
        self.closing: Balance | None = None
        self.available: Balance | None = None
        self.forward: list[Balance] = []
        self.floor_currency: str | None = None
        self.interim = interim  # an MT942 by its header or its source, never by one of its tags
        self.declared: dict[str, str] = {}
        self.lines: list[StatementLine] = []
        self.pending: tuple[str, int] | None = None  # the last :61: waiting for its :86:
        self.info: list[str] = []
        self.sums: dict[str, tuple[int, str, Decimal, int]] = {}

    @property
    def where(self) -> str:
        return f"line {self.line}"

    def take_info(self, value: str, line: int) -> None:
        """The :86: of the entry before it."""
        entry, entry_line = self.pending  # type: ignore[misc]
        self.pending = None
        self.lines.append(self._entry(entry, value, entry_line))

    def take(self, tag: str, value: str, line: int) -> None:
        if tag == "61":
            self._flush_entry()
            if self.opening is None and not self.interim:
                raise StatementFormatError(f"line {line}", ":61: before the opening balance (expected :60F: or :60M:)")
            if self.closing is not None:
                raise StatementFormatError(f"line {line}", ":61: after the closing balance (expected :20:)")
            self.pending = (value, line)
        elif tag == "86":
            if self.pending is not None:
                self.take_info(value, line)
            else:
                self.info.append(value)
        else:
            self._flush_entry()
            self._header(tag, (value.partition("\n")[0] if "\n" in value else value).strip(), line)

    def _header(self, tag: str, first: str, line: int) -> None:
        if tag in ("21", "25", "28", "28C", "60F", "60M") and (self.lines or self.closing is not None):
            raise StatementFormatError(
                f"line {line}",
                f":{tag}: after the entries of statement {self.reference} (expected :61:, :86: or :62F:)")
        if tag == "21":
            self.declared["related_reference"] = first
        elif tag == "25":
            if self.account is not None:
                raise StatementFormatError(
                    f"line {line}", f"second :25: in statement {self.reference} (expected :20: first)")
            self.account = first
        elif tag in ("28", "28C"):
            match = _NUMBER.match(first)
            if match is None:
                raise StatementFormatError(f"line {line}", f":{tag}: {clip(first)!r} (expected number[/sequence])")
            self.number, self.sequence = match.group(1), match.group(2)
        elif tag in ("60F", "60M"):
            if self.opening is not None:
                raise StatementFormatError(f"line {line}", f"second opening balance in statement {self.reference}")
            self.opening = _balance(tag, first, line)
        elif tag in ("62F", "62M"):
            if self.opening is None:
                raise StatementFormatError(
                    f"line {line}", f":{tag}: without an opening balance (expected :60F: before it)")
            if self.closing is not None:
                raise StatementFormatError(f"line {line}", f"second closing balance in statement {self.reference}")
            self.closing = _balance(tag, first, line)
        elif tag == "64":
            self.available = _balance(tag, first, line)
        elif tag == "65":
            self.forward.append(_balance(tag, first, line))
        elif tag == "34F":
            match = _FLOOR.match(first)
            if match is None:
                raise StatementFormatError(
                    f"line {line}", f":34F: {clip(first)!r} (expected currency, optional D/C, amount)")
            if self.floor_currency is not None and self.floor_currency != match.group(1):
                raise StatementFormatError(f"line {line}", f":34F: in {match.group(1)} but the floor limit before it "
                                                           f"is in {self.floor_currency} (one currency per statement)")
            self.floor_currency = match.group(1)
            self.declared[f"floor_limit_{match.group(2) or 'DC'}"] = f"{_amount(match.group(3), line):f}"
        elif tag in ("13", "13D"):
            match = _DATETIME.match(first)
            if match is None:
                raise StatementFormatError(
                    f"line {line}", f":{tag}: {clip(first)!r} (expected YYMMDDhhmm and a UTC offset)")
            self.declared["date_time"] = _datetime(match, line).isoformat()
        elif tag in ("90D", "90C"):
            match = _SUMS.match(first)
            if match is None:
                raise StatementFormatError(
                    f"line {line}", f":{tag}: {clip(first)!r} (expected count, currency, amount)")
            total = _amount(match.group(3), line)
            self.sums[tag] = (int(match.group(1)), match.group(2), total, line)
            self.declared[f"sum_{tag[-1]}"] = f"{match.group(1)} {match.group(2)} {total:f}"
        elif tag == "NS":
            self.declared["NS"] = (self.declared.get("NS", "") + "\n" + first).strip("\n")

    def _flush_entry(self) -> None:
        if self.pending is not None:
            entry, entry_line = self.pending
            self.pending = None
            self.lines.append(self._entry(entry, "", entry_line))

    def _entry(self, text: str, info: str, line: int) -> StatementLine:
        """One :61: (``text``) with its :86: (``info``, empty when there is none), starting at ``line``."""
        if "\n" in text:
            value = _value_lines(text)
            main = value[0].strip()
            # a continuation line of only a form feed or such is dropped as blank: there may be none left
            supplementary: str | None = value[1].strip() if len(value) > 1 else None
        else:
            value, main, supplementary = (text,), text.strip(), None
        match = _ENTRY.match(main)
        if match is None and supplementary is not None:
            match = _ENTRY.match(main + supplementary)  # wrapped inside the first subfield
            supplementary = value[2].strip() if len(value) > 2 else None
        if match is None:
            raise StatementFormatError(
                f"line {line}",
                f":61: {clip(main)!r} (expected YYMMDD[MMDD]D|C|RD|RC[funds code]amount type reference)")
        value_text, entry, mark, funds, amount_text, kind, rest = match.groups()
        value_date = _DATES.get(value_text) or _date(value_text, line)
        # four blanks (spaces, or a tab or form feed among them) mean no entry date, as four spaces do
        booking = _entry_date(entry, value_date, line) if entry and not entry.isspace() else None
        amount = _amount(amount_text, line)
        if mark in ("D", "RC"):  # money out: a debit, or the reversal of a credit
            amount = -amount
        reference, slashes, bank = rest.partition("//")
        if info:
            details = parse_details(info)
            fields = details.fields
            raw = text + "\n:86:" + info
        else:
            details, fields, raw = _NO_DETAILS, {}, text
        fields["type"] = kind
        if funds:
            fields["funds_code"] = funds
        if len(reference) > 16:  # 16x; some banks write the counterparty after it
            extra = reference[16:].strip()
            if extra:
                fields["reference_extra"] = extra
            reference = reference[:16]
        if supplementary:
            fields["supplementary"] = supplementary
        return StatementLine(
            account=self.account or "", currency=self._currency(line), amount=amount,
            value_date=value_date, booking_date=booking, reversal=mark[0] == "R",
            transaction_code=details.transaction_code or kind, customer_ref=reference.strip() or None,
            bank_ref=(bank.strip() or None) if slashes else None, end_to_end_id=details.end_to_end_id,
            counterparty_name=details.counterparty_name, counterparty_iban=details.counterparty_iban,
            counterparty_bic=details.counterparty_bic, remittance=details.remittance, details=fields, raw=raw,
            source_line=line,
        )

    def _currency(self, line: int) -> str:
        if self.opening is not None:
            return self.opening.currency
        if self.floor_currency is not None:
            return self.floor_currency
        raise StatementFormatError(f"line {line}", "entry before any balance or floor limit gives the currency")

    def finish(self, line: int, *, check: bool) -> Statement:
        """Close this statement at ``line`` (where the next begins or the file ends) and check it."""
        self._flush_entry()
        if self.account is None:
            raise StatementFormatError(self.where, f"statement {self.reference} has no :25: account")
        if self.interim:
            statement = self._statement("mt942")
            if check:
                for tag, (_, currency, _, at) in self.sums.items():
                    if currency != statement.currency:
                        raise BalanceMismatch(statement.label, f"line {at}", Decimal(0),
                                              f":{tag}: in {currency} but the statement is in {statement.currency}")
                self._check_sums(statement)
                check_balance(statement, self.where)  # when an MT942 carries balances, they add up too
            return statement
        if self.opening is None:
            raise StatementFormatError(
                self.where, f"statement {self.reference} has no opening balance (expected :60F: or :60M:)")
        if self.closing is None:
            raise StatementFormatError(
                f"line {line}", f"statement {self.reference} ends without a closing balance (expected :62F: or :62M:)")
        statement = self._statement("mt940")
        if check:
            check_balance(statement, self.where)
        return statement

    def _statement(self, kind: str) -> Statement:
        currency = self.opening.currency if self.opening else (self.floor_currency or "")
        account = self.account or ""
        return Statement(
            format=kind, account=account, currency=currency, number=self.number, reference=self.reference,
            sequence=self.sequence, opening=self.opening, closing=self.closing, closing_available=self.available,
            forward_available=tuple(self.forward), lines=tuple(self.lines),
            info="\n".join(self.info) or None, declared=self.declared, source_line=self.line,
        )

    def _check_sums(self, statement: Statement) -> None:
        for tag, sign in (("90D", -1), ("90C", 1)):
            if tag not in self.sums:
                continue
            count, _, total, line = self.sums[tag]
            booked = [e.amount for e in statement.lines if (e.amount < 0) == (sign < 0)]
            actual = abs(exact_sum(booked))
            if count != len(booked) or total != actual:
                raise BalanceMismatch(
                    statement.label, f"line {line}", EXACT.subtract(total, actual),
                    f":{tag}: declares {count} entries totalling {total:f}, "
                    f"the statement has {len(booked)} totalling {actual:f}",
                )


def _balance(tag: str, text: str, line: int) -> Balance:
    match = _BALANCE.match(text)
    if match is None:
        raise StatementFormatError(f"line {line}", f":{tag}: {clip(text)!r} (expected C|D, YYMMDD, currency, amount)")
    mark, date, currency, amount_text = match.groups()
    amount = _amount(amount_text, line)
    return Balance(amount=-amount if mark == "D" else amount, currency=currency,
                   date=_DATES.get(date) or _date(date, line))


def _datetime(match: re.Match[str], line: int) -> dt.datetime:
    date = _date(match.group(1), line)
    hhmm, offset = match.group(2), match.group(3) or "+0000"
    try:
        sign = -1 if offset[0] == "-" else 1
        tz = dt.timezone(sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:])))
        return dt.datetime(date.year, date.month, date.day, int(hhmm[:2]), int(hhmm[2:]), tzinfo=tz)
    except ValueError:
        raise StatementFormatError(f"line {line}", f"{clip(match.group(0))!r} is not a date and time") from None
