"""Amounts as a bank reads them: rendered by the currency's ISO 4217 exponent, never float, never rounded.

XOF has no minor unit (``5000``), EUR has two (``12.50``), KWD three. The exponents come from the ``iso4217``
package (ISO's own table), so a currency the standard knows needs no code here.
"""

from __future__ import annotations

import decimal
import functools
from collections.abc import Iterable
from decimal import Decimal
from typing import Final

from iso4217 import Currency


class AmountError(ValueError):
    """An amount that cannot be written in its currency (unknown code, too many decimals, not positive)."""


class AmountSyntaxError(AmountError):
    """Text that is not an amount as parse_amount reads one; ``reason`` says what is wrong with it."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"{clip(text)!r} is not an amount ({reason})")
        self.reason = reason


@functools.lru_cache(maxsize=256)
def exponent(currency: str) -> int:
    """Minor-unit digits of an ISO 4217 currency; AmountError for a code with none (XAU) or unknown."""
    try:
        digits = Currency(currency).exponent
    except ValueError:
        raise AmountError(f"{currency!r} is not an ISO 4217 currency code") from None
    if digits is None:
        raise AmountError(f"{currency} has no minor unit defined by ISO 4217 (not a payable currency)")
    return int(digits)


def render_amount(amount: Decimal, currency: str) -> str:
    """``Decimal("1500.0000")`` in XOF is ``"1500"``; in EUR ``"1500.00"``. Plain digits, no exponent notation.

    Raises AmountError when the amount carries more precision than the currency has (it is never rounded).
    """
    digits = exponent(currency)
    quantum = Decimal(1).scaleb(-digits)
    rendered = amount.quantize(quantum)
    if rendered != amount:
        raise AmountError(f"{amount} {currency}: more decimals than {currency} has ({digits})")
    return f"{rendered:f}"


# How banks may write an amount: ISO 20022 allows 18 digits (MT940's 15d fits in that), so anything longer is not
# an amount but a poison value (``1E9999999``, a 5,000-digit run) that would cost memory and time to carry.
MAX_AMOUNT_DIGITS: Final = 18
MAX_AMOUNT_CHARS: Final = 40  # with leading zeros, sign and separator

# Amounts are added in this context: with at most 18 digits each side of the point, 80 digits hold any sum of a
# statement exactly, and a result that would need rounding raises instead of comparing equal by accident.
EXACT: Final = decimal.Context(
    prec=80, rounding=decimal.ROUND_HALF_EVEN, Emax=100, Emin=-100,
    traps=[decimal.Inexact, decimal.Rounded, decimal.Overflow, decimal.InvalidOperation, decimal.DivisionByZero],
)


def clip(text: str, limit: int = 64) -> str:
    """A bank's text shortened for an error message: error messages stay small whatever the file holds."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_amount(text: str, *, decimal_separator: str = ".", signed: bool = False) -> Decimal:
    """The one way an amount is read from a bank's file: ASCII digits with at most one ``decimal_separator``
    (``100``, ``100,``, ``0,50``), a leading ``-`` or ``+`` only when ``signed``, at most MAX_AMOUNT_DIGITS
    significant digits; never an exponent, underscores, other scripts' digits, spaces, NaN or Infinity.

    Raises AmountSyntaxError saying what is wrong (the text shown clipped).
    """
    if len(text) > MAX_AMOUNT_CHARS:
        raise AmountSyntaxError(text, f"longer than {MAX_AMOUNT_CHARS} characters")
    sign = ""
    body = text
    if signed and body[:1] in ("-", "+"):
        sign, body = body[0], body[1:]
    whole, separator, fraction = body.partition(decimal_separator)
    if not (_digits(whole) and _digits(fraction)) or not (whole or fraction):
        raise AmountSyntaxError(text, f"expected ASCII digits with at most one {decimal_separator!r}"
                                      f"{' and an optional sign' if signed else ''}")
    significant = len(whole.lstrip("0")) + len(fraction)
    if significant > MAX_AMOUNT_DIGITS:
        raise AmountSyntaxError(text, f"more than {MAX_AMOUNT_DIGITS} digits")
    return Decimal(f"{'-' if sign == '-' else ''}{whole or '0'}.{fraction}" if separator or fraction
                   else f"{'-' if sign == '-' else ''}{whole}")


def _digits(text: str) -> bool:
    """Only ASCII 0-9 (``str.isdigit`` takes Arabic-Indic and superscript digits too); the empty string passes."""
    return text.isascii() and (not text or text.isdigit())


def exact_sum(amounts: Iterable[Decimal], start: Decimal = Decimal(0)) -> Decimal:
    """``start`` plus every amount, exactly (DecimalException rather than a rounded total)."""
    total = start
    for amount in amounts:
        total = EXACT.add(total, amount)
    return total


def show_amount(amount: Decimal, *, sign: bool = False) -> str:
    """An amount in plain digits for a message, or in exponent form when plain digits would be huge."""
    exp = amount.as_tuple().exponent
    if isinstance(exp, int) and -MAX_AMOUNT_CHARS <= exp <= MAX_AMOUNT_CHARS and amount.adjusted() <= MAX_AMOUNT_CHARS:
        return f"{amount:+f}" if sign else f"{amount:f}"
    return clip(str(amount), MAX_AMOUNT_CHARS)
