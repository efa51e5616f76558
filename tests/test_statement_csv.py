"""CSV statements read through per-bank profiles, and the parse-statement command."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from connectors.statements import (
    MOLAMD_PROFILE,
    BalanceMismatch,
    CsvColumns,
    CsvProfile,
    StatementFormatError,
    parse_csv,
)
from tests.corpora import WOLPH

ACCOUNT = "SN08SN0100152000048500003035"
MOLAMD_CSV = (
    "account,statement,booking_date,value_date,amount,currency,reference,bank_ref,end_to_end_id,"
    "counterparty_name,counterparty_iban,counterparty_bic,remittance,balance\n"
    f"{ACCOUNT},12,2026-11-02,2026-11-02,-15000,XOF,R1,B1,MOLAM-1,Awa Diop,,,\"payout, first\",985000\n"
    f"{ACCOUNT},12,2026-11-02,2026-11-03,5000,XOF,R2,B2,,Moussa,,,,990000\n"
).encode()

# A French-style export: semicolons, comma decimals, day-first dates, debit and credit in two columns, latin-1.
FRENCH = CsvProfile(
    delimiter=";", decimal_separator=",", thousands_separator=".", date_format="%d/%m/%Y", encoding="latin-1",
    amount_style="debit_credit", account=ACCOUNT, currency="XOF", skip_rows=1,
    columns=CsvColumns(booking_date="Date opération", value_date="Date valeur", debit="Débit", credit="Crédit",
                       remittance="Libellé", reference="Référence"),
)
FRENCH_CSV = (
    "Relevé de compte\n"
    "Date opération;Date valeur;Libellé;Référence;Débit;Crédit\n"
    "02/11/2026;02/11/2026;Virement Awa;MOLAM-7;1.500,00;\n"
    "03/11/2026;03/11/2026;Remise chèque;CHQ-1;;250,50\n"
).encode("latin-1")

# No header, an indicator column, positions instead of names.
INDICATOR = CsvProfile(
    header="no", amount_style="indicator", currency="XOF", date_format="%Y%m%d",
    columns=CsvColumns(account=0, value_date=1, amount=2, indicator=3, reference=4),
)


def test_molamd_layout_with_running_balance() -> None:
    [statement] = parse_csv(MOLAMD_CSV, MOLAMD_PROFILE)
    assert (statement.account, statement.number, statement.currency) == (ACCOUNT, "12", "XOF")
    assert statement.opening is not None and statement.opening.amount == Decimal(1_000_000)
    assert statement.closing is not None and statement.closing.amount == Decimal(990_000)
    first, second = statement.lines
    assert first.amount == Decimal(-15000) and first.end_to_end_id == "MOLAM-1" and first.remittance == "payout, first"
    assert second.value_date.isoformat() == "2026-11-03" and second.reference == "R2"


def test_debit_credit_columns_latin1_and_banner() -> None:
    [statement] = parse_csv(FRENCH_CSV, FRENCH)
    assert [line.amount for line in statement.lines] == [Decimal("-1500.00"), Decimal("250.50")]
    assert statement.lines[0].remittance == "Virement Awa" and statement.lines[0].customer_ref == "MOLAM-7"
    assert statement.lines[0].raw == "02/11/2026;02/11/2026;Virement Awa;MOLAM-7;1.500,00;"  # every column kept
    assert statement.opening is None  # no balance column: nothing to check against


def test_indicator_column_without_header() -> None:
    data = f"{ACCOUNT},20261102,100,D,A\n{ACCOUNT},20261102,40,C,B\nOTHER,20261102,1,CR,C\n".encode()
    first, second = parse_csv(data, INDICATOR)
    assert [line.amount for line in first.lines] == [Decimal(-100), Decimal(40)]
    assert second.account == "OTHER" and second.lines[0].amount == Decimal(1)


def test_running_balance_that_does_not_follow_names_the_line() -> None:
    broken = MOLAMD_CSV.replace(b",990000", b",990001")
    with pytest.raises(BalanceMismatch, match=r"^line 3: statement 12: running balance 990001 .*difference \+1"):
        parse_csv(broken, MOLAMD_PROFILE)


def test_shifted_column_is_named() -> None:
    shifted = MOLAMD_CSV.replace(b"2026-11-03,5000,XOF", b"2026-11-03,XOF,5000")
    with pytest.raises(StatementFormatError, match=r"^line 3: column amount is 'XOF' \(expected a number"):
        parse_csv(shifted, MOLAMD_PROFILE)
    extra = MOLAMD_CSV.replace(b"Moussa,,", b"Moussa,,,")
    with pytest.raises(StatementFormatError, match=r"^line 3: 15 fields, expected 14"):
        parse_csv(extra, MOLAMD_PROFILE)


@pytest.mark.parametrize(("data", "message"), [
    (b"", r"^line 1: no rows"),
    (MOLAMD_CSV.replace(b"value_date", b"valuta"), r"^line 1: no header column 'value_date'"),
    (MOLAMD_CSV.replace(b"2026-11-03", b"03/11/2026"), r"^line 3: column value_date is '03/11/2026'"),
    (MOLAMD_CSV.replace(b",XOF,R2", b",xof,R2"), r"^line 3: currency 'xof'"),
    (b"\xff\xfe" + MOLAMD_CSV, r"^line 1: not utf-8 text"),
    (MOLAMD_CSV[:-40] + b'"unterminated\n', r"^line \d+: "),
])
def test_bad_input_gets_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(StatementFormatError, match=message):
        parse_csv(data, MOLAMD_PROFILE)


def test_profile_problems_are_reported() -> None:
    profile = CsvProfile(amount_style="debit_credit", columns=CsvColumns(amount="x"))
    assert set(profile.problems()) == {
        "columns: map value_date or booking_date", "columns.debit is required for amount_style 'debit_credit'",
        "columns.credit is required for amount_style 'debit_credit'", "map columns.account or set account",
        "map columns.currency or set currency"}
    with pytest.raises(StatementFormatError, match=r"^profile: "):
        parse_csv(MOLAMD_CSV, profile)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "molamd.cli", "parse-statement", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_parse_statement_command_mt940(tmp_path: Path) -> None:
    result = _cli(str(WOLPH / "mt940_tests/jejik/sns.sta"))
    assert result.returncode == 0, result.stderr
    statements = json.loads(result.stdout)
    first = statements[0]
    assert first["account"] and first["number"] and first["currency"] == "EUR"
    assert set(first["opening_balance"]) >= {"amount", "date"}
    line = first["lines"][0]
    assert {"amount", "value_date", "booking_date", "reference", "remittance"} <= set(line)
    Decimal(line["amount"])


def test_parse_statement_command_csv_profile_from_config(tmp_path: Path) -> None:
    (tmp_path / "bank.csv").write_bytes(FRENCH_CSV)
    (tmp_path / "molamd.toml").write_text(
        '[csv_profiles.bicis]\ndelimiter = ";"\ndecimal_separator = ","\nthousands_separator = "."\n'
        'date_format = "%d/%m/%Y"\nencoding = "latin-1"\namount_style = "debit_credit"\n'
        f'account = "{ACCOUNT}"\ncurrency = "XOF"\nskip_rows = 1\n'
        '[csv_profiles.bicis.columns]\nvalue_date = "Date valeur"\ndebit = "Débit"\ncredit = "Crédit"\n')
    result = _cli(str(tmp_path / "bank.csv"), "--csv-profile", "bicis", "--config", str(tmp_path / "molamd.toml"))
    assert result.returncode == 0, result.stderr
    [statement] = json.loads(result.stdout)
    assert [line["amount"] for line in statement["lines"]] == ["-1500.00", "250.50"]
    missing = _cli(str(tmp_path / "bank.csv"), "--csv-profile", "nope", "--config", str(tmp_path / "molamd.toml"))
    assert missing.returncode == 1 and "no [csv_profiles.nope] (known: molamd, bicis)" in missing.stderr


def test_parse_statement_command_errors(tmp_path: Path) -> None:
    result = _cli(str(WOLPH / "mt940_tests/jejik/abnamro.sta"))
    assert result.returncode == 1 and result.stdout == ""
    assert "abnamro.sta: mt940: line 4: statement 19321: " in result.stderr and "difference -2038.00" in result.stderr
    assert _cli(str(tmp_path / "absent.sta")).returncode == 1
