"""Where the shared bank-file corpora are (read in place, with their LICENSE files beside them)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from connectors.statements import BalanceMismatch, Statement, StatementFormatError


def _find() -> Path:
    """$MOLAMD_CORPORA, else ../shared/corpora beside the checkout, else the workspace's copy."""
    if "MOLAMD_CORPORA" in os.environ:
        return Path(os.environ["MOLAMD_CORPORA"])
    for candidate in (Path(__file__).resolve().parents[2] / "shared" / "corpora", Path("/work/shared/corpora")):
        if candidate.is_dir():
            return candidate
    raise RuntimeError("bank-file corpora not found: set MOLAMD_CORPORA to the shared/corpora directory")


CORPORA = _find()
WOLPH = CORPORA / "wolph-mt940"
MT940_JS = CORPORA / "mt940-js" / "__tests__" / "cases"
GENKGO = CORPORA / "genkgo-camt" / "test" / "data"


def mt940_files() -> list[Path]:
    files = [p for p in (WOLPH / "mt940_tests").rglob("*") if p.suffix.lower() in (".sta", ".txt")]
    files += [p for p in MT940_JS.iterdir() if p.suffix.lower() in (".sta", ".mta")]
    return sorted(files)


def camt_files() -> list[Path]:
    return sorted(p for p in CORPORA.rglob("*.xml") if b"camt.05" in p.read_bytes()[:4000])


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
