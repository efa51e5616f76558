"""pain.002 status reports from real banks (Goldman Sachs, Nordea, Cross River, SIX/PostFinance), read by local
names whatever their namespace; hostile files refused before they cost anything."""

from __future__ import annotations

import pytest

from connectors.iso20022 import StatusReportError, parse_pain002
from tests.corpora import FIXTURES

SVAPNIL = FIXTURES / "svapnil-iso20022.js" / "pain002"
SIX = FIXTURES / "moov-io-iso20022" / "pain002"


def read(path: str) -> bytes:
    base = SIX if path.startswith("pain002-") else SVAPNIL
    return (base / path).read_bytes()


def test_every_corpus_report_parses() -> None:
    files = sorted(SVAPNIL.glob("*.xml")) + sorted(SIX.glob("*.xml"))
    assert len(files) == 15
    for path in files:
        report = parse_pain002(path.read_bytes())
        assert report.msg_id, path.name
        assert report.unknown_statuses == (), path.name
        assert report.group_status or report.payments, path.name


def test_transaction_rejections_with_reasons() -> None:
    report = parse_pain002(read("nordea__pain_002_v3_txn_reject.xml"))
    assert report.namespace == "urn:iso:std:iso:20022:tech:xsd:pain.002.001.03"
    assert report.original_msg_id == "MSGID-950-TEST2-2807-01" and report.original_msg_name == "pain.001.001.03"
    [payment] = report.payments
    assert payment.original_pmt_inf_id == "PMTINFID-950-TEST2-2807-01" and payment.status == "RJCT"
    assert [t.original_end_to_end_id for t in payment.transactions] == [
        "ENDTOENDID-950-TEST2-2807-02", "ENDTOENDID-950-TEST2-2807-01"]
    reason = payment.transactions[0].reasons[0]
    assert reason.code == "NARR" and reason.info == ("CAP Invalid code or combinations in CategoryPurpose or"
                                                     " ServiceLevel",)
    assert [(tx.original_end_to_end_id, status) for _, tx, status, _ in report.effective() if tx] == [
        ("ENDTOENDID-950-TEST2-2807-02", "RJCT"), ("ENDTOENDID-950-TEST2-2807-01", "RJCT")]


def test_namespace_less_and_bank_namespaces() -> None:
    cross_river = parse_pain002(read("cross_river__pain_002_batch_rejected.xml"))  # "Xmlns": no namespace
    assert cross_river.namespace is None and cross_river.group_status == "RJCT"
    assert cross_river.original_msg_id is None, "it could not parse our file: the report names none (stored, flagged)"
    assert cross_river.group_reasons[0].code == "NARR" and "Error parsing file" in cross_river.group_reasons[0].info[0]
    six = parse_pain002(read("pain002-epo_p_ch5109000000250092291_1110097605_0_2018031511252307.xml"))
    assert six.namespace == "http://www.six-interbank-clearing.com/de/pain.002.001.03.ch.02.xsd"
    [payment] = six.payments
    assert payment.status == "PART" and [t.status for t in payment.transactions] == ["RJCT"]


def test_a_block_status_stands_for_its_transactions_and_the_group_for_the_rest() -> None:
    block = parse_pain002(read("goldman_sachs__pain_002_v3_payment_accepted.xml"))
    [(payment, tx, status, _)] = list(block.effective())
    assert tx is None and status == "ACCP" and payment.original_pmt_inf_id


LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Document><CstmrPmtStsRpt><GrpHdr><MsgId>&lol3;</MsgId></GrpHdr></CstmrPmtStsRpt></Document>"""
EXTERNAL = b"""<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Document><CstmrPmtStsRpt><GrpHdr><MsgId>&x;</MsgId></GrpHdr></CstmrPmtStsRpt></Document>"""
V10 = b"""<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.002.001.10"><CstmrPmtStsRpt>
<GrpHdr><MsgId>R-1</MsgId><CreDtTm>2026-12-02T10:00:00</CreDtTm></GrpHdr>
<OrgnlGrpInfAndSts><OrgnlMsgId>MOLAM-17</OrgnlMsgId><OrgnlMsgNmId>pain.001.001.09</OrgnlMsgNmId></OrgnlGrpInfAndSts>
<OrgnlPmtInfAndSts><OrgnlPmtInfId>MOLAM-17-1</OrgnlPmtInfId>
<TxInfAndSts><OrgnlInstrId>S42</OrgnlInstrId><OrgnlEndToEndId>molam-slice-42</OrgnlEndToEndId><TxSts>ACSC</TxSts>
</TxInfAndSts><TxInfAndSts><OrgnlEndToEndId>molam-slice-43</OrgnlEndToEndId><TxSts>RJCT</TxSts>
<StsRsnInf><Rsn><Cd>AC04</Cd></Rsn><AddtlInf>Closed account</AddtlInf></StsRsnInf></TxInfAndSts>
<TxInfAndSts><OrgnlEndToEndId>molam-slice-44</OrgnlEndToEndId><TxSts>XXXX</TxSts></TxInfAndSts>
</OrgnlPmtInfAndSts></CstmrPmtStsRpt></Document>"""


def test_version_10_with_an_unknown_status_flagged() -> None:
    report = parse_pain002(V10)
    assert report.original_msg_id == "MOLAM-17" and report.group_status is None
    statuses = [(tx.original_end_to_end_id, s, [r.code for r in why]) for _, tx, s, why in report.effective() if tx]
    assert statuses == [("molam-slice-42", "ACSC", []), ("molam-slice-43", "RJCT", ["AC04"]),
                        ("molam-slice-44", "XXXX", [])]
    assert report.unknown_statuses == ("XXXX",)


@pytest.mark.parametrize(("data", "says"), [
    (LAUGHS, "DOCTYPE or ENTITY"),
    (EXTERNAL, "DOCTYPE or ENTITY"),
    (b"<Document><CstmrPmtStsRpt><GrpHdr>", "not well-formed"),
    (b"<Document><CstmrCdtTrfInitn/></Document>", "not a pain.002"),
    (b"<Document><CstmrPmtStsRpt><GrpHdr><MsgId>x</MsgId></GrpHdr></CstmrPmtStsRpt></Document>",
     "no OrgnlGrpInfAndSts"),
    (V10.replace(b"<MsgId>R-1</MsgId>", b""), "GrpHdr/MsgId: missing"),
])
def test_hostile_and_broken_reports_are_clear_errors(data: bytes, says: str) -> None:
    with pytest.raises(StatusReportError, match=says):
        parse_pain002(data)


_AMPLIFIED = b"".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">'.encode() for i in range(1, 10))


@pytest.mark.parametrize("data", [
    # UTF-16: the bytes of "<!DOCTYPE" are never in the file as ASCII
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
     + V10.decode()).encode("utf-16"),
    # a DOCTYPE after 4 KB of prolog (a comment), with no ENTITY at all: a DTD by its system id
    b"<?xml version='1.0'?><!--" + b" " * 5000 + b'--><!DOCTYPE Document SYSTEM "http://127.0.0.1:9/x.dtd">' + V10,
    # UTF-16 again, an exponential expansion the parser's own limit stops
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE d [<!ENTITY l0 "lol">' + _AMPLIFIED.decode() + "]>"
     + V10.decode().replace("R-1", "&l9;")).encode("utf-16"),
    # UTF-32, big-endian
    ('<?xml version="1.0" encoding="UTF-32BE"?><!DOCTYPE Document>' + V10.decode()).encode("utf-32-be"),
])
def test_a_doctype_is_refused_in_any_encoding_and_anywhere_in_the_prolog(data: bytes) -> None:
    with pytest.raises(StatusReportError, match="DOCTYPE or ENTITY"):
        parse_pain002(data)


def test_the_same_report_without_a_doctype_parses_in_utf16() -> None:
    report = parse_pain002(('<?xml version="1.0" encoding="UTF-16"?>' + V10.decode()).encode("utf-16"))
    assert report.original_msg_id == "MOLAM-17"


@pytest.mark.parametrize("data", [
    b'<?xml version="1.0"?>\n<Document xmlns="\t' + b"[" * 2000 + b'"/>',  # lxml quotes the namespace it refuses
    b'<?xml version="1.0" encoding="' + b"x" * 5000 + b'"?><Document/>',
    b"<Document><" + b"a" * 5000 + b"></Document>",  # a mismatched tag, quoted
])
def test_an_error_message_stays_small_whatever_the_report_holds(data: bytes) -> None:
    """Found by scripts/fuzz pain002: the message echoed lxml's, which quotes the input (2,090 characters here)."""
    with pytest.raises(StatusReportError) as caught:
        parse_pain002(data)
    assert len(str(caught.value)) <= 1024 and str(caught.value)
