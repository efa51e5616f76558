"""pain.001.001.03 and .09 from payout slices: amounts by currency exponent, computed control sums, derived
ids, transliteration that never drops a character silently, schwifty-checked IBANs and BICs, and every file
valid against the official XSD (copied into connectors/iso20022/schemas with its LICENSE)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from connectors.iso20022 import (
    Account,
    Pain001Version,
    Party,
    PaymentBatch,
    PaymentFile,
    PaymentFileError,
    PostalAddress,
    Transfer,
    build_pain001,
    validate,
)

DEBTOR = Party(name="Molam Sénégal SA", address=PostalAddress(town="Dakar", country="SN", street="Route de Ouakam"))
IBAN_SN = "SN08SN0100152000048500003035"
IBAN_DE = "DE89370400440532013000"


def transfer(slice_id: int, amount: str, **kw: object) -> Transfer:
    fields: dict[str, object] = {
        "slice_id": slice_id, "end_to_end_id": f"molam-slice-{slice_id}", "amount": Decimal(amount),
        "creditor": Party(name="Aïssatou Ndiaye", address=PostalAddress(town="Thiès", country="SN")),
        "creditor_account": Account(other="0012345678901"), **kw}
    return Transfer(**fields)  # type: ignore[arg-type]


def batch(currency: str, *transfers: Transfer, **kw: object) -> PaymentBatch:
    return PaymentBatch(debtor=DEBTOR, debtor_account=Account(iban=IBAN_SN if currency == "XOF" else IBAN_DE),
                        debtor_agent_bic="ECOCSNDA", currency=currency, execution_date=dt.date(2026, 12, 3),
                        transfers=transfers, **kw)  # type: ignore[arg-type]


def payment_file(*batches: PaymentBatch) -> PaymentFile:
    return PaymentFile(file_id=17, created_at=dt.datetime(2026, 12, 2, 10, 30), initiating_party="Molam",
                       batches=batches)


def texts(data: bytes, path: str) -> list[str]:
    root = etree.fromstring(data)
    return [str(x) for x in root.xpath(path, namespaces={"p": root.nsmap[None]})]


@pytest.mark.parametrize("version", list(Pain001Version))
def test_amounts_sums_and_ids(version: Pain001Version) -> None:
    f = payment_file(batch("XOF", transfer(1, "5000"), transfer(2, "150000")),
                     batch("EUR", transfer(3, "12.5"), transfer(4, "0.05"), charge_bearer="SHAR"))
    data = build_pain001(f, version)
    assert validate(data, version.value) == []
    assert texts(data, "//p:InstdAmt/text()") == ["5000", "150000", "12.50", "0.05"]
    assert texts(data, "//p:InstdAmt/@Ccy") == ["XOF", "XOF", "EUR", "EUR"]
    assert texts(data, "//p:GrpHdr/p:NbOfTxs/text()") == ["4"]
    assert texts(data, "//p:GrpHdr/p:CtrlSum/text()") == ["155012.55"]
    assert texts(data, "//p:PmtInf/p:CtrlSum/text()") == ["155000", "12.55"]
    assert texts(data, "//p:MsgId/text()") == ["MOLAM-17"]
    assert texts(data, "//p:PmtInfId/text()") == ["MOLAM-17-1", "MOLAM-17-2"]
    assert texts(data, "//p:InstrId/text()") == ["S1", "S2", "S3", "S4"]
    assert texts(data, "//p:EndToEndId/text()")[0] == "molam-slice-1"
    assert texts(data, "//p:Cdtr/p:Nm/text()")[0] == "Aissatou Ndiaye"  # transliterated, not dropped
    assert texts(data, "//p:Dbtr/p:PstlAdr/p:TwnNm/text()") == ["Dakar", "Dakar"]
    agent = "BICFI" if version is Pain001Version.V09 else "BIC"
    assert texts(data, f"//p:DbtrAgt/p:FinInstnId/p:{agent}/text()") == ["ECOCSNDA", "ECOCSNDA"]
    date = "//p:ReqdExctnDt/p:Dt/text()" if version is Pain001Version.V09 else "//p:ReqdExctnDt/text()"
    assert texts(data, date) == ["2026-12-03", "2026-12-03"]
    assert build_pain001(f, version) == data, "pure: the same records give the same bytes"


def test_every_problem_is_named_by_slice_and_field_and_nothing_is_built() -> None:
    f = payment_file(batch(
        "XOF",
        transfer(7, "10.5"),  # XOF has no minor unit
        transfer(8, "100", creditor=Party(name="Moussa 😀 Diop")),
        transfer(9, "100", creditor_account=Account(iban="SN08SN0100152000048500003036")),  # bad check digits
        transfer(10, "100", creditor_agent_bic="NOTABIC"),
        transfer(11, "100", end_to_end_id="has spaces in it"),
        transfer(12, "100", creditor=Party(name="A", address=PostalAddress(town="Dakar", country="SN",
                                                                           lines=("1", "2", "3")))),
        transfer(13, "-5"),
    ))
    with pytest.raises(PaymentFileError) as caught:
        build_pain001(f, Pain001Version.V09)
    problems = caught.value.problems
    assert any(p.startswith("slice 7: amount:") and "more decimals than XOF" in p for p in problems)
    assert any(p.startswith("slice 8: creditor name: U+1F600 GRINNING FACE has no reading") for p in problems)
    assert any(p.startswith("slice 9: creditor account: IBAN SN08********************3036 is not valid")
               for p in problems)
    assert any(p.startswith("slice 10: creditor agent: BIC 'NOTABIC' is not valid") for p in problems)
    assert any(p.startswith("slice 11: EndToEndId 'has spaces in it'") for p in problems)
    assert any(p.startswith("slice 12: creditor address: at most 2 address lines") for p in problems)
    assert any(p.startswith("slice 13: amount:") and "not a positive amount" in p for p in problems)
    assert caught.value.slices == {7, 8, 9, 10, 11, 12, 13}  # each named, so the rest of a file can still go
    assert len(problems) == 7, problems


def test_a_charset_a_bank_profile_widens() -> None:
    wider = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/-?:().,'+ &@éèçàâêîôûëïü")
    f = payment_file(batch("XOF", transfer(1, "100", creditor=Party(name="Zoë & Hélène @ Dakar"))))
    with pytest.raises(PaymentFileError, match="COMMERCIAL AT"):
        build_pain001(f, Pain001Version.V09)
    data = build_pain001(f, Pain001Version.V09, charset=wider)
    assert texts(data, "//p:Cdtr/p:Nm/text()") == ["Zoë & Hélène @ Dakar"]


LETTERS = st.characters(categories=["Lu", "Ll", "Lo"], max_codepoint=0x9FFF)
NAMES = st.text(LETTERS | st.just(" ") | st.just("-"), min_size=1, max_size=40).filter(lambda s: s.strip(" -"))
MINOR = {"XOF": 0, "EUR": 2, "USD": 2}
ADDRESSES = st.none() | st.builds(
    PostalAddress, town=NAMES, country=st.sampled_from(["SN", "CI", "ML", "BF", "FR", "US"]),
    street=st.none() | NAMES, building=st.none() | st.from_regex(r"[0-9]{1,4}[A-B]?", fullmatch=True),
    postcode=st.none() | st.from_regex(r"[0-9]{5}", fullmatch=True),
    lines=st.lists(NAMES, max_size=2).map(tuple))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(currency=st.sampled_from(sorted(MINOR)), version=st.sampled_from(list(Pain001Version)),
       rows=st.lists(st.tuples(NAMES, st.integers(1, 10**12), ADDRESSES), min_size=1, max_size=12))
def test_any_slices_give_a_schema_valid_file_or_errors_that_name_them(
    currency: str, version: Pain001Version, rows: list[tuple[str, int, PostalAddress | None]]
) -> None:
    transfers = [transfer(i, str(Decimal(minor).scaleb(-MINOR[currency])), creditor=Party(name=name, address=a))
                 for i, (name, minor, a) in enumerate(rows, 1)]
    f = payment_file(batch(currency, *transfers))
    try:
        data = build_pain001(f, version)
    except PaymentFileError as exc:
        assert all(p.split(":")[0].startswith("slice ") and ": creditor " in p for p in exc.problems), exc.problems
        assert exc.slices and exc.slices <= {t.slice_id for t in transfers}
        return
    assert validate(data, version.value) == []
    amounts = [Decimal(a) for a in texts(data, "//p:InstdAmt/text()")]
    assert amounts == [t.amount for t in transfers]
    assert Decimal(texts(data, "//p:GrpHdr/p:CtrlSum/text()")[0]) == sum(amounts)
    assert all(len(n) <= 70 and n.strip() == n for n in texts(data, "//p:Cdtr/p:Nm/text()"))
