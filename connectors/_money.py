"""Amounts as a bank reads them: rendered by the currency's ISO 4217 exponent, never float, never rounded.

XOF has no minor unit (``5000``), EUR has two (``12.50``), KWD three. The exponents come from the ``iso4217``
package (ISO's own table), so a currency the standard knows needs no code here.
"""

from __future__ import annotations

import functools
from decimal import Decimal

from iso4217 import Currency


class AmountError(ValueError):
    """An amount that cannot be written in its currency (unknown code, too many decimals, not positive)."""


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
