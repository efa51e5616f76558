"""``molamd parse-statement``: what molamd makes of a bank's file, as JSON, for onboarding a bank."""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from connectors.statements import (
    MOLAMD_PROFILE,
    Balance,
    CsvProfile,
    Statement,
    StatementError,
    guess_format,
    parse_statements,
)

from .config import ConfigError, load_config
from .config._model import MOLAMD_PROFILE_NAME


def parse_statement(path: str, fmt: str | None, profile_name: str, config_path: str) -> int:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        print(f"molamd parse-statement: {path}: {exc.strerror}", file=sys.stderr)
        return 1
    fmt = fmt or guess_format(path, data)
    profile: CsvProfile | None = None
    if fmt == "csv":
        found = csv_profile(profile_name, config_path)
        if isinstance(found, str):
            print(f"molamd parse-statement: {found}", file=sys.stderr)
            return 1
        profile = found
    try:
        statements = parse_statements(fmt, data, csv_profile=profile)
    except StatementError as exc:
        print(f"{path}: {fmt}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode([to_json(s) for s in statements]), indent=2))
    sys.stdout.buffer.write(b"\n")
    return 0


def csv_profile(name: str, config_path: str) -> CsvProfile | str:
    """The named profile from the config (or the built-in one); a message when there is none."""
    if name == MOLAMD_PROFILE_NAME:
        return MOLAMD_PROFILE  # the built-in layout needs no config file
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return "; ".join(exc.lines())
    profile = config.csv_profile(name)
    if profile is None:
        known = ", ".join([MOLAMD_PROFILE_NAME, *sorted(config.csv_profiles)])
        return f"{config_path}: no [csv_profiles.{name}] (known: {known})"
    return profile


def _balance(balance: Balance | None) -> dict[str, str] | None:
    if balance is None:
        return None
    return {"amount": f"{balance.amount:f}", "currency": balance.currency, "date": balance.date.isoformat()}


def to_json(statement: Statement) -> dict[str, Any]:
    return {
        "format": statement.format,
        "account": statement.account,
        "number": statement.number,
        "reference": statement.reference,
        "sequence": statement.sequence,
        "currency": statement.currency,
        "opening_balance": _balance(statement.opening),
        "closing_balance": _balance(statement.closing),
        "closing_available_balance": _balance(statement.closing_available),
        "forward_available_balances": [_balance(b) for b in statement.forward_available],
        "declared": statement.declared,
        "info": statement.info,
        "lines": [
            {
                "amount": f"{line.amount:f}",
                "currency": line.currency,
                "value_date": line.value_date.isoformat(),
                "booking_date": line.booking_date.isoformat() if line.booking_date else None,
                "credit_debit": line.credit_debit,
                "reversal": line.reversal,
                "reference": line.reference,
                "customer_ref": line.customer_ref,
                "bank_ref": line.bank_ref,
                "end_to_end_id": line.end_to_end_id,
                "transaction_code": line.transaction_code,
                "counterparty": {"name": line.counterparty_name, "iban": line.counterparty_iban,
                                 "bic": line.counterparty_bic},
                "remittance": line.remittance,
                "details": line.details,
                "source_line": line.source_line,
            }
            for line in statement.lines
        ],
    }
