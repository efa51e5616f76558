"""The sandbox bank's statements: its settled payments written as MT940 files, as a bank's SFTP drop has them.

Each file is one statement of the bank's settlement account: opening balance, one ``:61:`` debit per payment
with the payment's end-to-end reference (the idempotency key molamd sent) in a ``/EREF/`` ``:86:``, closing
balance. Files are written under a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any


def _amount(value: Decimal) -> str:
    text = f"{value:.2f}" if value != value.to_integral_value() else f"{value:.0f}"
    return text.replace(".", ",") if "." in text else text + ","


def mt940(payments: Iterable[dict[str, Any]], *, account: str, currency: str, number: int, opening: Decimal,
          day: dt.date, fee: Decimal = Decimal(0)) -> tuple[bytes, Decimal]:
    """One statement (bytes) and its closing balance."""
    lines = [
        "{1:F01SANDBOXXXXXX0000000000}{2:O940SANDBOXXXXXXN}{4:",
        f":20:SBX{number:010d}",
        f":25:{account}",
        f":28C:{number}/1",
        f":60F:{'C' if opening >= 0 else 'D'}{day:%y%m%d}{currency}{_amount(abs(opening))}",
    ]
    balance = opening
    for payment in payments:
        amount = Decimal(payment["amount"])
        balance -= amount
        key = str(payment["idempotency_key"])
        lines.append(f":61:{day:%y%m%d}{day:%m%d}D{_amount(amount)}NTRF{key[:16]}//{payment['id']}")
        lines.append(f":86:/EREF/{key}/NAME/{str(payment['creditor_account'])[:35]}"
                     f"/REMI/{str(payment.get('reference') or '')[:60]}/")
    if fee:  # the bank's own charge: a line no payout carries, so it stays unmatched
        balance -= fee
        lines.append(f":61:{day:%y%m%d}{day:%m%d}D{_amount(fee)}NCHGNONREF//FEE{number:08d}")
        lines.append(":86:/REMI/Frais de tenue de compte/")
    lines.append(f":62F:{'C' if balance >= 0 else 'D'}{day:%y%m%d}{currency}{_amount(abs(balance))}")
    lines.append("-}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii", errors="replace"), balance


class StatementWriter:
    """Writes the settled payments not yet reported, one file per call that has any."""

    def __init__(self, directory: Path, *, account: str, currency: str = "XOF",
                 opening: Decimal = Decimal("1000000000"), prefix: str = "") -> None:
        self.directory = directory
        self.prefix = prefix
        self.account = account
        self.currency = currency
        self.balance = opening
        self.number = 0
        self.reported: set[str] = set()
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, ledger: Iterable[dict[str, Any]]) -> Path | None:
        due = [p for p in ledger if p["status"] == "settled" and p["id"] not in self.reported
               and p["currency"] == self.currency and p.get("debtor_account") in (None, self.account)]
        if not due:
            return None
        self.number += 1
        data, closing = mt940(due, account=self.account, currency=self.currency, number=self.number,
                              opening=self.balance, day=dt.date.today(), fee=Decimal(500))
        path = self.directory / f"{self.prefix}STMT_{self.number:06d}.sta"
        partial = self.directory / f".{path.name}.part"
        partial.write_bytes(data)
        os.replace(partial, path)
        self.balance = closing
        self.reported.update(p["id"] for p in due)
        return path
