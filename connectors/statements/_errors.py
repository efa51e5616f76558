"""Errors of the statement parsers: the file is at fault, never the daemon.

::

    StatementError          a bank file molamd cannot take as it is (kept raw, moved to error/)
    ├── StatementFormatError    the bytes do not follow the format: where (line number or element path) and
    │                           what was expected there
    └── BalanceMismatch         well formed, but opening + credits - debits != closing for one statement
"""

from __future__ import annotations

from decimal import Decimal

from .._money import clip, show_amount

# An error message is read by people and stored with the raw file: whatever the file holds, it stays this small.
MAX_MESSAGE = 1024


class StatementError(Exception):
    """Base of every parse or validation error; ``code`` is stored with the raw file."""

    code = "statement_error"


class StatementFormatError(StatementError):
    code = "parse_failed"

    def __init__(self, where: str, message: str) -> None:
        where, message = clip(where, 200), clip(message, MAX_MESSAGE - 220)
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class BalanceMismatch(StatementError):
    code = "balance_failed"

    def __init__(self, statement: str, where: str, difference: Decimal, detail: str) -> None:
        statement, where = clip(statement, 100), clip(where, 200)
        super().__init__(f"{where}: statement {statement}: {clip(detail, MAX_MESSAGE - 420)} "
                         f"(difference {show_amount(difference, sign=True)})")
        self.statement = statement
        self.where = where
        self.difference = difference
