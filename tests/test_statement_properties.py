"""Whatever bytes arrive, the parsers answer with Statements or a StatementError, never anything else."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.statements import (
    MOLAMD_PROFILE,
    StatementError,
    iter_mt940,
    parse_camt,
    parse_csv,
    parse_mt940,
)
from tests.corpora import GENKGO, WOLPH

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MT940_SAMPLE = (WOLPH / "mt940_tests/jejik/sns.sta").read_bytes()
CAMT_SAMPLE = (GENKGO / "camt053.v2.multi.statement.xml").read_bytes()
CSV_SAMPLE = (
    b"account,statement,booking_date,value_date,amount,currency,reference,bank_ref,end_to_end_id,"
    b"counterparty_name,counterparty_iban,counterparty_bic,remittance,balance\n"
    b"SN08,1,2026-11-02,2026-11-02,-15000,XOF,R1,B1,E1,Awa,,,pay,985000\n"
)
MT940_TOKENS = st.sampled_from([
    b":20:", b":21:", b":25:", b":28C:", b":60F:", b":60M:", b":61:", b":86:", b":62F:", b":62M:", b":64:",
    b":65:", b":13D:", b":34F:", b":90D:", b":90C:", b":NS:", b"C", b"D", b"RC", b"EUR", b"XOF", b"261102",
    b"1102", b"100,", b"0,5", b"NTRF", b"NONREF", b"//", b"?20", b"EREF+", b"/EREF/", b"\r\n", b"\n", b"-",
    b"{1:F01}", b"{4:", b"-}", b":", b" ", b"\x00", b"\xff",
])


def _parse(fn, data: bytes) -> None:  # type: ignore[no-untyped-def]
    try:
        statements = fn(data)
    except StatementError:
        return
    for statement in statements:
        if statement.opening is not None and statement.closing is not None:
            total = statement.opening.amount + sum((line.amount for line in statement.lines), Decimal(0))
            assert total == statement.closing.amount  # what is returned always balances


@SETTINGS
@given(st.binary(max_size=2000))
def test_mt940_random_bytes(data: bytes) -> None:
    _parse(parse_mt940, data)


@SETTINGS
@given(st.lists(MT940_TOKENS, max_size=80).map(b"".join))
def test_mt940_random_tags(data: bytes) -> None:
    _parse(parse_mt940, data)


@SETTINGS
@given(st.integers(0, len(MT940_SAMPLE)), st.integers(0, len(MT940_SAMPLE)), st.binary(max_size=8))
def test_mt940_mutated_real_file(cut: int, at: int, junk: bytes) -> None:
    _parse(parse_mt940, MT940_SAMPLE[:cut])
    _parse(parse_mt940, MT940_SAMPLE[:at] + junk + MT940_SAMPLE[at + len(junk):])


@SETTINGS
@given(st.binary(max_size=2000))
def test_csv_random_bytes(data: bytes) -> None:
    _parse(lambda d: parse_csv(d, MOLAMD_PROFILE), data)


@SETTINGS
@given(st.integers(0, len(CSV_SAMPLE)), st.binary(max_size=6))
def test_csv_mutated(at: int, junk: bytes) -> None:
    _parse(lambda d: parse_csv(d, MOLAMD_PROFILE), CSV_SAMPLE[:at] + junk + CSV_SAMPLE[at:])


@SETTINGS
@given(st.binary(max_size=2000))
def test_camt_random_bytes(data: bytes) -> None:
    _parse(parse_camt, data)


@SETTINGS
@given(st.integers(0, len(CAMT_SAMPLE)), st.integers(0, len(CAMT_SAMPLE)), st.binary(max_size=6))
def test_camt_mutated_real_file(cut: int, at: int, junk: bytes) -> None:
    _parse(parse_camt, CAMT_SAMPLE[:cut])
    _parse(parse_camt, CAMT_SAMPLE[:at] + junk + CAMT_SAMPLE[at + len(junk):])


def _reads(data: bytes) -> bool:
    try:
        list(iter_mt940([data], check=False))
    except StatementError:
        return False
    return True


# Every corpus file that reads (balanced or not). Each file is one encoding; a concatenation of UTF-8 and
# Latin-1 files is not, so the files are checked one by one.
CORPUS_MT940 = [data for data in (p.read_bytes() for p in sorted((WOLPH / "mt940_tests").rglob("*.sta")))
                if _reads(data)]


@SETTINGS
@given(st.lists(st.integers(1, 4096), min_size=1, max_size=50), st.sampled_from([b"\r\n", b"\n", b"\r"]))
def test_mt940_reads_the_same_in_any_chunking(sizes: list[int], newline: bytes) -> None:
    data = MT940_SAMPLE.replace(b"\r\n", b"\n").replace(b"\n", newline) * 3
    chunks, pos = [], 0
    for size in sizes * (len(data) // sum(sizes) + 1):
        chunks.append(data[pos:pos + size])
        pos += size
    assert list(iter_mt940(chunks)) == parse_mt940(data)


def test_corpus_reads_the_same_in_small_chunks() -> None:
    assert len(CORPUS_MT940) > 20
    for data in CORPUS_MT940:
        whole = list(iter_mt940([data], check=False))
        for size in (1, 7, 64, 4096):
            chunks = [data[i:i + size] for i in range(0, len(data), size)]
            assert list(iter_mt940(chunks, check=False)) == whole, size
