"""What fuzzing the statement parsers found (issue 20), one test each: every file is read into balanced
Statements or refused with a StatementError whose message stays small; nothing else escapes."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from connectors.statements import (
    MOLAMD_PROFILE,
    BalanceMismatch,
    StatementError,
    StatementFormatError,
    iter_mt940,
    parse_camt,
    parse_csv,
    parse_mt940,
)
from tests.corpora import WOLPH

MAX_MESSAGE = 1024
ROOT = Path(__file__).resolve().parent.parent

MT940 = (
    ":20:REF1\n:25:SN08K01001\n:28C:1/1\n:60F:C261102XOF100000,\n"
    ":61:2611021102D15000,NTRFPAY1//B1\n:86:payout\n"
    ":61:2611021102C5000,NTRFIN1//B2\n:86:incoming\n"
    ":62F:C261102XOF90000,\n-\n"
)
CSV_HEADER = (
    "account,statement,booking_date,value_date,amount,currency,reference,bank_ref,end_to_end_id,"
    "counterparty_name,counterparty_iban,counterparty_bic,remittance,balance\n"
)


def _mt942(body: str) -> bytes:
    """An MT942 message as banks send it: block 2 names the message type."""
    return ("{1:F01BANKSNDAXXX0000000000}{2:O9421200261102BANKSNDAXXX00000000002611021200N}{4:\n" + body
            + "-}").encode()


def _csv_row(amount: str, balance: str, currency: str = "XOF", day: int = 2) -> str:
    return f"SN08,12,2026-11-0{day},2026-11-0{day},{amount},{currency},R,B,E,Awa,,,pay,{balance}\n"


def _camt(opening: str, closing: str, entries: list[tuple[str, str, str]], account_ccy: str = "XOF") -> bytes:
    ntry = "".join(
        f"<Ntry><Amt Ccy=\"{ccy}\">{amount}</Amt><CdtDbtInd>{side}</CdtDbtInd><Sts>BOOK</Sts>"
        f"<BookgDt><Dt>2026-11-02</Dt></BookgDt></Ntry>" for amount, side, ccy in entries)
    bal = "<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp><Amt Ccy=\"XOF\">{amount}</Amt>" \
          "<CdtDbtInd>CRDT</CdtDbtInd><Dt><Dt>2026-11-02</Dt></Dt></Bal>"
    return (
        "<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:camt.053.001.02\"><BkToCstmrStmt><Stmt><Id>S1</Id>"
        f"<Acct><Id><Othr><Id>SN08</Id></Othr></Id><Ccy>{account_ccy}</Ccy></Acct>"
        f"{bal.format(code='OPBD', amount=opening)}{bal.format(code='CLBD', amount=closing)}{ntry}"
        "</Stmt></BkToCstmrStmt></Document>"
    ).encode()


def _refused(parse, data: bytes, error: type[StatementError] = StatementError, match: str = "") -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match) as caught:
        parse(data)
    message = str(caught.value)
    assert len(message) <= MAX_MESSAGE, f"{len(message)} characters"
    return message


def test_the_mt940_sample_balances() -> None:  # the base the cases below break
    [statement] = parse_mt940(MT940.encode())
    assert statement.format == "mt940" and [line.amount for line in statement.lines] == [-15000, 5000]


# -- untyped exceptions (poison files) --------------------------------------------------------------------------

@pytest.mark.parametrize("blank", ["\t", "\x0c", "\x0b", " \t\x0c "])
def test_a_blank_continuation_line_inside_an_mt940_entry_is_no_crash(blank: str) -> None:
    # The continuation line is dropped as blank; the entry had counted on a second line (IndexError).
    data = MT940.replace("PAY1//B1\n", f"PAY1//B1\n{blank}\n").encode()
    [statement] = parse_mt940(data)
    assert statement.lines[0].amount == -15000 and "supplementary" not in statement.lines[0].details


@pytest.mark.parametrize("blanks", ["\t   ", "  \x0c ", "\t\t\t\t", "\x0b   "])
def test_a_tab_or_form_feed_for_the_entry_date_is_no_entry_date(blanks: str) -> None:
    # Found by the harness: the entry date may be four blanks; a tab among them reached int() (ValueError).
    data = MT940.replace(":61:2611021102D15000", f":61:261102{blanks}D15000").encode()
    [statement] = parse_mt940(data)
    assert statement.lines[0].booking_date is None and statement.lines[0].amount == -15000


def test_a_5000_digit_90d_count_is_refused_with_a_short_message() -> None:
    data = _mt942(f":20:R\n:25:A\n:34F:XOF0,\n:13D:2611021200+0000\n:90D:{'1' * 5000}XOF1,\n")
    _refused(parse_mt940, data, StatementFormatError, r"^line 6: :90D: ")


@pytest.mark.parametrize("amount", ["1E9999999", "1e+9999999", "-1E9999999"])
def test_a_csv_amount_with_a_huge_exponent_is_refused(amount: str) -> None:
    data = (CSV_HEADER + _csv_row("-15000", "985000") + _csv_row(amount, "985000", day=3)).encode()
    _refused(lambda d: parse_csv(d, MOLAMD_PROFILE), data, StatementFormatError, r"^line 3: column amount ")


def test_a_camt_amount_with_a_huge_exponent_is_refused() -> None:
    data = _camt("1000", "1000", [("1E9999999", "CRDT", "XOF")])
    _refused(parse_camt, data, StatementFormatError, r"/Ntry/Amt: '1E9999999' is not an amount")


# -- bounded error messages ----------------------------------------------------------------------------------------

def test_a_camt_balance_of_1e_minus_999999999_is_refused_with_a_short_message() -> None:
    _refused(parse_camt, _camt("1E-999999999", "0", []), StatementFormatError, "is not an amount")


def test_a_csv_balance_of_1e_minus_999999999_is_refused_with_a_short_message() -> None:
    data = (CSV_HEADER + _csv_row("1", "1") + _csv_row("1", "1E-999999999", day=3)).encode()
    _refused(lambda d: parse_csv(d, MOLAMD_PROFILE), data, StatementFormatError, "column balance")


def test_a_huge_cell_is_clipped_in_the_message() -> None:
    data = (CSV_HEADER + _csv_row("-15000", "985000", currency="X" * 100_000)).encode()
    _refused(lambda d: parse_csv(d, MOLAMD_PROFILE), data, StatementFormatError, "currency 'XXX")


# -- wrong accepts -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tag", [":13D:2611021200+0100", ":34F:XOF0,"])
def test_one_interim_tag_does_not_make_an_mt940_an_mt942(tag: str) -> None:
    unbalanced = MT940.replace(":62F:C261102XOF90000,", ":62F:C261102XOF1000000,").replace(
        ":60F:", f"{tag}\n:60F:")
    _refused(parse_mt940, unbalanced.encode(), BalanceMismatch, "closing balance is 1000000")
    # and an MT940 with no balances at all is refused, not read as interim
    bare = f":20:R\n:25:A\n{tag}\n:61:2611021102C10,NTRFX//Y\n-\n".encode()
    _refused(parse_mt940, bare, StatementFormatError, "opening balance")


def test_the_block_2_header_says_mt942() -> None:
    message = _mt942(":20:R\n:25:A\n:28C:1/1\n:34F:XOF0,\n:13D:2611021200+0000\n:61:2611021102C10,NTRFX//Y\n"
                     ":90C:1XOF10,\n")
    [interim] = parse_mt940(message)
    assert interim.format == "mt942" and interim.lines[0].amount == 10
    # the same message declared as an MT940 by its header is held to the MT940 rules
    _refused(parse_mt940, message.replace(b"{2:O942", b"{2:O940"), StatementFormatError, "opening balance")


def test_balances_are_added_exactly() -> None:
    # 10^17 + 10^-18 needs 36 digits: in the default 28-digit context it rounds back to 10^17 and "balances".
    data = (b":20:R\n:25:A\n:60F:C261102XOF100000000000000000,\n"
            b":61:2611021102C0,000000000000000001NTRFX//Y\n:62F:C261102XOF100000000000000000,\n-\n")
    _refused(parse_mt940, data, BalanceMismatch, "difference -0.000000000000000001")
    rows = CSV_HEADER + _csv_row("1", "100000000000000000") + _csv_row("0.000000000000000001", "100000000000000000",
                                                                       day=3)
    _refused(lambda d: parse_csv(d, MOLAMD_PROFILE), rows.encode(), BalanceMismatch, "line 3")
    _refused(parse_camt, _camt("100000000000000000", "100000000000000000", [("0.000000000000000001", "CRDT", "XOF")]),
             BalanceMismatch, "difference")


def test_an_opening_of_ten_to_the_thirty_is_no_amount() -> None:
    data = (":20:R\n:25:A\n:60F:C261102XOF1" + "0" * 30 + ",\n:61:2611021102C1,NTRFX//Y\n"
            ":62F:C261102XOF1" + "0" * 30 + ",\n-\n").encode()
    _refused(parse_mt940, data, StatementFormatError, r"^line 3: .* is not an amount")


def test_a_csv_row_with_an_empty_balance_is_refused() -> None:
    data = (CSV_HEADER + _csv_row("-15000", "985000") + _csv_row("-999999", "", day=3)
            + _csv_row("5000", "990000", day=4)).encode()
    _refused(lambda d: parse_csv(d, MOLAMD_PROFILE), data, StatementFormatError, r"^line 3: column balance is empty")


def test_an_entry_in_another_currency_is_refused() -> None:
    csv = (CSV_HEADER + _csv_row("-15000", "985000") + _csv_row("-15000", "970000", currency="EUR", day=3)).encode()
    _refused(lambda d: parse_csv(d, MOLAMD_PROFILE), csv, BalanceMismatch, r"^line 3: .*row in EUR")
    camt = _camt("1000", "1010", [("10", "CRDT", "EUR")])
    _refused(parse_camt, camt, BalanceMismatch, "this entry is in EUR")
    mt942 = _mt942(":20:R\n:25:A\n:34F:XOF0,\n:61:2611021102C10,NTRFX//Y\n:34F:EURC0,\n:61:2611021102C10,NTRFX//Y\n")
    _refused(parse_mt940, mt942, StatementError, "EUR")


@pytest.mark.parametrize("amount", ["1E+2", "1e2", "1_000", "\u0661\u0660\u0660", "\u00b9\u00b2", "NaN", "Infinity",
                                    "1.2.3", "--5", "0x10", "1" * 19])
def test_amounts_are_plain_ascii_digits(amount: str) -> None:
    csv = (CSV_HEADER + _csv_row(amount, "100")).encode()
    _refused(lambda d: parse_csv(d, MOLAMD_PROFILE), csv, StatementFormatError, "column amount")
    camt = _camt("0", "100", [(amount, "CRDT", "XOF")])
    _refused(parse_camt, camt, StatementFormatError, "not an amount")


def test_arabic_indic_digits_in_mt940_are_refused() -> None:
    data = MT940.replace("D15000,NTRF", "D\u0661\u0665\u0660\u0660\u0660,NTRF").replace("C90000,", "C90000,")
    _refused(parse_mt940, data.encode(), StatementFormatError, r"^line 5: :61: ")
    dated = MT940.replace(":60F:C261102", ":60F:C\u0662\u0666\u0661\u0661\u0660\u0662")
    _refused(parse_mt940, dated.encode(), StatementFormatError, r"^line 4: :60F: ")


def test_amounts_banks_do_write_still_read() -> None:
    [statement] = parse_csv((CSV_HEADER + _csv_row("-15000.50", "984999.50") + _csv_row("+0.50", "985000",
                                                                                          day=3)).encode(),
                            MOLAMD_PROFILE)
    assert [line.amount for line in statement.lines] == [Decimal("-15000.50"), Decimal("0.50")]
    [camt] = parse_camt(_camt("1000.", "1010.5", [(".5", "CRDT", "XOF"), ("10", "CRDT", "XOF")]))
    assert camt.closing is not None and camt.closing.amount == Decimal("1010.5")


def test_streaming_and_whole_file_read_a_mixed_encoding_file_alike() -> None:
    # Found by the harness: a cp1252 byte on line 1 made the whole file cp1252, while the streaming reader's later
    # pieces, valid UTF-8 alone, were read as UTF-8: the same file gave two different references.
    data = b"\xe9\r\n" + MT940.replace(":20:REF1", ":20:R\u00e9F1").replace("\n", "\r\n").encode()
    whole = parse_mt940(data)
    assert whole == list(iter_mt940(data[i:i + 7] for i in range(0, len(data), 7)))
    assert whole[0].reference == "RéF1"


def test_parse_statement_reads_an_mt942_declared_as_such() -> None:
    path = WOLPH / "mt940_tests" / "mBank" / "mt942.sta"  # no block 2 header: only the declared format says 942
    command = [sys.executable, "-m", "molamd.cli", "parse-statement", str(path)]
    declared = subprocess.run([*command, "--format", "mt942"], capture_output=True, text=True, check=False, cwd=ROOT)
    assert declared.returncode == 0 and '"format": "mt942"' in declared.stdout, declared.stderr
    guessed = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    assert guessed.returncode == 1 and "opening balance" in guessed.stderr + guessed.stdout
