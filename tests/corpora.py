"""The public bank-file corpora the tests read: copies under tests/fixtures/, each set with its upstream LICENSE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from connectors.statements import BalanceMismatch, Statement, StatementFormatError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WOLPH = FIXTURES / "wolph-mt940"
MT940_JS = FIXTURES / "mt940-js" / "cases"
GENKGO = FIXTURES / "genkgo-camt" / "data"


def mt940_files() -> list[Path]:
    files = [p for p in (WOLPH / "mt940_tests").rglob("*") if p.suffix.lower() in (".sta", ".txt")]
    files += [p for p in MT940_JS.iterdir() if p.suffix.lower() in (".sta", ".mta")]
    return sorted(files)


def camt_files() -> list[Path]:
    return sorted(p for p in FIXTURES.rglob("*.xml") if b"camt.05" in p.read_bytes()[:4000])


def balances_or_fails_clearly(parse: Callable[[bytes], list[Statement]], data: bytes, where: str) -> None:
    """Every statement returned balances; otherwise the error says where (``where`` prefix) and what."""
    try:
        statements = parse(data)
    except StatementFormatError as exc:
        assert exc.where.startswith(where) and exc.message
    except BalanceMismatch as exc:
        assert exc.where.startswith(where) and exc.statement
    else:
        assert statements
        for s in statements:
            if s.opening is not None and s.closing is not None:
                assert s.opening.amount + sum(line.amount for line in s.lines) == s.closing.amount
