"""pain.002 reports applied to the slices of recorded files (molamd/payment_files.py) in a real PostgreSQL, and
their signatures checked by the file channel (python-xmlsec, a bank key of the test's own): real banks' reports
from the corpora, duplicates, reports out of order, contradictions, strangers' files, unknown transactions, a
re-upload refused DU01, unsigned or wrongly signed reports where a signature is required."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from actors import ReportIn, Waiting
from connectors import FileChannelConfig, FileChannelConnector, PayoutSlice, Prepared
from connectors.iso20022 import parse_pain002
from molamd import payment_files
from tests.file_helpers import CONNECTOR, batched, key_files

CORPUS = Path(__file__).parent / "fixtures" / "svapnil-iso20022.js" / "pain002"
NS = "urn:iso:std:iso:20022:tech:xsd:pain.002.001.10"


def recorded_file(dsn: str, count: int, msg_id: str, version: str = "pain.001.001.09") -> tuple[int, list[int]]:
    """``count`` slices put through the dispatcher's states into one recorded file named ``msg_id``."""
    ids, account = batched(dsn, count, local_accounts=False)
    with psycopg.connect(dsn) as conn:

        def build(file_id: int, slices: Any, created: dt.datetime) -> Prepared:
            content = f"<Document>{msg_id}</Document>".encode()
            return Prepared(file_id=file_id, msg_id=msg_id, file_name=f"{msg_id}.xml", content=content,
                            sha256=hashlib.sha256(content).digest(), signature_name=None, signature=None,
                            transactions=len(slices), control_sum=str(sum(s.amount for s in slices)),
                            execution_date=dt.date(2026, 12, 3), instr_ids={s.id: f"S{s.id}" for s in slices},
                            pmt_inf_ids={s.id: f"{msg_id}-1" for s in slices})

        recorded = payment_files.record_file(conn, CONNECTOR, version, Waiting(
            debtor_account=account, currency="XOF", count=count, oldest_seconds=9), count, build)
    assert recorded.file is not None and recorded.file.transactions == count
    return recorded.file.file_id, ids


def report(msg_id: str, group: str | None = None, txs: list[tuple[str, str, str | None]] | None = None,
           group_reason: str | None = None, namespace: str | None = NS, message: str = "pain.001.001.09") -> bytes:
    q = f"{{{namespace}}}" if namespace else ""
    root = etree.Element(f"{q}Document", nsmap={None: namespace} if namespace else None)  # type: ignore[dict-item]
    body = etree.SubElement(root, f"{q}CstmrPmtStsRpt")
    header = etree.SubElement(body, f"{q}GrpHdr")
    digest = hashlib.sha1(repr((msg_id, group, txs, message)).encode()).hexdigest()[:12]
    etree.SubElement(header, f"{q}MsgId").text = f"R-{digest}"
    original = etree.SubElement(body, f"{q}OrgnlGrpInfAndSts")
    etree.SubElement(original, f"{q}OrgnlMsgId").text = msg_id
    etree.SubElement(original, f"{q}OrgnlMsgNmId").text = message
    if group:
        etree.SubElement(original, f"{q}GrpSts").text = group
    if group_reason:
        etree.SubElement(etree.SubElement(etree.SubElement(original, f"{q}StsRsnInf"), f"{q}Rsn"), f"{q}Cd").text = \
            group_reason
    if txs:
        block = etree.SubElement(body, f"{q}OrgnlPmtInfAndSts")
        etree.SubElement(block, f"{q}OrgnlPmtInfId").text = f"{msg_id}-1"
        for e2e, status, reason in txs:
            tx = etree.SubElement(block, f"{q}TxInfAndSts")
            etree.SubElement(tx, f"{q}OrgnlEndToEndId").text = e2e
            etree.SubElement(tx, f"{q}TxSts").text = status
            if reason:
                why = etree.SubElement(etree.SubElement(tx, f"{q}StsRsnInf"), f"{q}Rsn")
                etree.SubElement(why, f"{q}Cd").text = reason
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def apply(dsn: str, data: bytes, *, signature: str = "unsigned", problem: str | None = None) -> Any:
    parsed = None if problem == "malformed" else parse_pain002(data)
    with psycopg.connect(dsn) as conn:
        return payment_files.record_report(conn, ReportIn(
            connector=CONNECTOR, remote_name="r.xml", content=data, sha256=hashlib.sha256(data).digest(),
            report=parsed, signature=signature, problem=problem))


def states(dsn: str, ids: list[int]) -> dict[int, tuple[str, str | None]]:
    with psycopg.connect(dsn) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT id, status, last_error FROM payout_slices WHERE id = ANY(%s)", (ids,)).fetchall()}


def test_reports_settle_and_fail_slices_and_never_move_them_backwards(migrated_dsn: str) -> None:
    file_id, ids = recorded_file(migrated_dsn, 3, "MOLAM-T1")
    keys = [f"molam-slice-{i}" for i in ids]
    assert {s for s, _ in states(migrated_dsn, ids).values()} == {"sent"}
    first = apply(migrated_dsn, report("MOLAM-T1", "ACTC"))
    assert (first.flag, first.applied, first.file_id) == (None, 0, file_id)
    final = report("MOLAM-T1", txs=[(keys[0], "ACSC", None), (keys[1], "RJCT", "AC04"), (keys[2], "ACSP", None)])
    applied = apply(migrated_dsn, final)
    assert (applied.flag, applied.settled, applied.failed) == (None, 1, 1)
    assert apply(migrated_dsn, final).report_id is None, "the same bytes again: stored once, applied once"
    late = apply(migrated_dsn, report("MOLAM-T1", txs=[(keys[0], "ACTC", None)]))
    assert (late.flag, late.applied) == (None, 0), "an acceptance after the settlement changes nothing"
    contradiction = apply(migrated_dsn, report("MOLAM-T1", txs=[(keys[0], "RJCT", "AM04")]))
    assert contradiction.flag == "conflict" and contradiction.applied == 0
    now = states(migrated_dsn, ids)
    assert now[ids[0]][0] == "settled" and now[ids[2]][0] == "sent"
    assert now[ids[1]][0] == "failed" and "AC04" in (now[ids[1]][1] or "")
    with psycopg.connect(migrated_dsn) as conn:
        file = conn.execute("SELECT status, first_report_at IS NOT NULL FROM payment_files WHERE id = %s",
                            (file_id,)).fetchone()
        stored = conn.execute("SELECT count(*) FROM payment_status_reports WHERE payment_file_id = %s",
                              (file_id,)).fetchone()[0]
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation):
            conn.execute("UPDATE payment_status_reports SET flag = NULL")
    assert file == ("accepted", True) and stored == 4
    done = apply(migrated_dsn, report("MOLAM-T1", txs=[(keys[2], "ACSC", None)], namespace=None))
    assert done.settled == 1 and done.final_after is not None, "a namespace-less report applies too"


def test_what_a_report_names_that_we_never_sent_is_stored_and_flagged(migrated_dsn: str) -> None:
    _, ids = recorded_file(migrated_dsn, 2, "MOLAM-T2")
    stranger = apply(migrated_dsn, report("SOMEONE-ELSES-FILE", txs=[(f"molam-slice-{ids[0]}", "RJCT", "AC01")]))
    assert stranger.flag == "unknown_file" and stranger.file_id is None
    unknown = apply(migrated_dsn, report("MOLAM-T2", txs=[("molam-slice-999999", "ACSC", None),
                                                          (f"molam-slice-{ids[1]}", "ACSC", None)]))
    assert unknown.flag == "unknown_transaction" and unknown.settled == 1
    duplicate = apply(migrated_dsn, report("MOLAM-T2", "RJCT", group_reason="DU01"))
    assert duplicate.flag == "duplicate_submission" and duplicate.applied == 0
    assert states(migrated_dsn, ids)[ids[0]][0] == "sent", "a re-upload refused as a duplicate fails nothing"
    broken = apply(migrated_dsn, b"<not xml", signature="not_checked", problem="malformed")
    assert broken.flag == "malformed"
    forged = apply(migrated_dsn, report("MOLAM-T2", "RJCT"), signature="invalid", problem="does not verify")
    assert forged.flag == "signature_invalid" and forged.applied == 0
    assert states(migrated_dsn, ids)[ids[0]][0] == "sent", "a report that fails verification changes nothing"
    with psycopg.connect(migrated_dsn) as conn:
        flags = conn.execute("SELECT flag FROM payment_status_reports ORDER BY id").fetchall()
    assert [f for (f,) in flags] == ["unknown_file", "unknown_transaction", "duplicate_submission", "malformed",
                                     "signature_invalid"]


@pytest.mark.parametrize("name", ["nordea__pain_002_v3_txn_reject.xml",
                                  "cross_river__pain_002_transaction_rejected.xml",
                                  "goldman_sachs__pain_002_v3_accepted.xml"])
def test_real_banks_reports_apply_to_the_slices_they_name(migrated_dsn: str, name: str) -> None:
    data = (CORPUS / name).read_bytes()
    parsed = parse_pain002(data)
    named = [tx for p in parsed.payments for tx in p.transactions]
    file_id, ids = recorded_file(migrated_dsn, len(named), parsed.original_msg_id or "", "pain.001.001.03")
    with psycopg.connect(migrated_dsn) as conn:  # the bank's ids, as if our file had carried them
        for slice_id, tx, payment in zip(ids, named, [p for p in parsed.payments for _ in p.transactions],
                                         strict=True):
            conn.execute("UPDATE payment_file_slices SET end_to_end_id = %s, pmt_inf_id = %s"
                         " WHERE payout_slice_id = %s", (tx.original_end_to_end_id, payment.original_pmt_inf_id,
                                                         slice_id))
    applied = apply(migrated_dsn, data)
    assert applied.file_id == file_id and applied.flag in (None, "unknown_status")
    now = states(migrated_dsn, ids)
    for slice_id, tx in zip(ids, named, strict=True):
        expected = {"RJCT": "failed", "ACSC": "settled"}.get(tx.status or "", "sent")
        assert now[slice_id][0] == expected, (name, tx)


def _signed(data: bytes, key: Path) -> bytes:
    import xmlsec

    root = etree.fromstring(data)
    signature = xmlsec.template.create(root, xmlsec.constants.TransformExclC14N, xmlsec.constants.TransformRsaSha256,
                                       ns="ds")
    root[0].append(signature)
    ref = xmlsec.template.add_reference(signature, xmlsec.constants.TransformSha256, uri="")
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_file(str(key), xmlsec.constants.KeyDataFormatPem)
    ctx.sign(signature)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _channel(tmp_path: Path, bank_cert: Path | None, *, required: bool | None) -> FileChannelConnector:
    import msgspec

    from connectors import decode_hook

    config = msgspec.convert({
        "kind": "iso20022", "name": CONNECTOR, "bank_profile": "bank-c",
        "iso20022": {"key_label": "k", "certificate": str(tmp_path / "molam.pem"),
                     "bank_certificate": str(bank_cert or ""), **({} if required is None else {
                         "reports_signed": required}), "initiating_party": "Molam", "debtor_name": "Molam",
                     "debtor_town": "Dakar", "debtor_country": "SN"},
        "cutoffs": {"country": "SN", "timezone": "Africa/Dakar", "times": ["15:00"]},
        "sftp": {"host": "127.0.0.1", "username": "u", "password": "env:X", "known_hosts": str(tmp_path / "kh")},
    }, FileChannelConfig, dec_hook=decode_hook)
    return FileChannelConnector(config)


def test_a_signed_report_is_verified_against_the_banks_pinned_certificate(tmp_path: Path) -> None:
    key, cert = key_files(tmp_path, "bank")
    other_key, _ = key_files(tmp_path, "impostor")
    channel = _channel(tmp_path, cert, required=True)
    data = report("MOLAM-T3", "ACTC")
    assert channel.report_signature(_signed(data, key)) == ("verified", None)
    state, problem = channel.report_signature(_signed(data, other_key))
    assert state == "invalid" and problem and "pinned certificate" in problem
    tampered = _signed(data, key).replace(b"ACTC", b"RJCT")
    assert channel.report_signature(tampered)[0] == "invalid"
    state, problem = channel.report_signature(data)
    assert state == "unsigned" and problem is not None, "unsigned where a signature is required: not applied"
    state, problem = _channel(tmp_path, cert, required=None).report_signature(data)
    assert state == "unsigned" and problem and "pinned" in problem, "a pinned certificate requires signed reports"
    assert _channel(tmp_path, None, required=None).report_signature(data) == ("unsigned", None)


def _signed_part(data: bytes, key: Path) -> bytes:
    """``data`` with a signature whose Reference covers only the group header (``#hdr``, an xml:id): it verifies
    as XML-DSig, yet says nothing of the statuses beside it."""
    import xmlsec

    root = etree.fromstring(data)
    header = root[0][0]
    header.set("{http://www.w3.org/XML/1998/namespace}id", "hdr")
    signature = xmlsec.template.create(root, xmlsec.constants.TransformExclC14N, xmlsec.constants.TransformRsaSha256,
                                       ns="ds")
    root[0].append(signature)
    ref = xmlsec.template.add_reference(signature, xmlsec.constants.TransformSha256, uri="#hdr")
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_file(str(key), xmlsec.constants.KeyDataFormatPem)
    ctx.sign(signature)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def test_a_signature_over_part_of_the_report_is_not_a_signed_report(tmp_path: Path) -> None:
    key, cert = key_files(tmp_path, "bank")
    channel = _channel(tmp_path, cert, required=True)
    partial = _signed_part(report("MOLAM-T6", "ACTC"), key)
    tampered = partial.replace(b"ACTC", b"RJCT")
    state, problem = channel.report_signature(tampered)
    assert state == "invalid" and problem and "Reference" in problem, problem


def test_a_slice_no_file_can_carry_is_dead_with_the_reason_and_the_rest_go(migrated_dsn: str, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import padding

    key_path, cert = key_files(tmp_path, "molam")
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    ids, account = batched(migrated_dsn, 3)
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("UPDATE payout_slices SET beneficiary_name = 'Moussa \U0001F600' WHERE id = %s", (ids[1],))
        channel = _channel(tmp_path, cert, required=False)

        def build(file_id: int, slices: list[PayoutSlice], created: dt.datetime) -> Prepared:
            f = channel.payment_file(file_id, slices, dt.date(2026, 12, 3), created)
            return channel.prepare(f, lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
                                   channel.certificate_key())

        recorded = payment_files.record_file(conn, CONNECTOR, "pain.001.001.09", Waiting(
            debtor_account=account, currency="XOF", count=3, oldest_seconds=9), 3, build)
    assert recorded.file is not None and recorded.file.transactions == 2
    assert list(recorded.refused) == [ids[1]] and "GRINNING FACE" in recorded.refused[ids[1]]
    now = states(migrated_dsn, ids)
    assert now[ids[1]][0] == "dead" and "creditor name" in (now[ids[1]][1] or "")
    assert now[ids[0]][0] == now[ids[2]][0] == "sent"
    with psycopg.connect(migrated_dsn) as conn:
        attempt = conn.execute("SELECT outcome FROM payout_slice_attempts WHERE payout_slice_id = %s",
                               (ids[1],)).fetchall()
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation):
            conn.execute("UPDATE payment_files SET content = 'x'::bytea")
    assert attempt == [], "no attempt was recorded for these hand-moved slices"


async def test_a_statement_line_settles_a_slice_of_a_file_as_it_settles_a_rest_one(
    tmp_path: Path, migrated_dsn: str
) -> None:
    """No report yet: the bank's statement carries the payment under our end-to-end id (the slice's key)."""
    import msgspec

    from connectors.statements import MOLAMD_PROFILE
    from tests.statement_helpers import rig, source_config

    _, [slice_id, other] = recorded_file(migrated_dsn, 2, "MOLAM-T9")
    with psycopg.connect(migrated_dsn) as conn:
        amount = conn.execute("SELECT amount::int FROM payout_slices WHERE id = %s", (slice_id,)).fetchone()[0]
    csv = ("account,statement,booking_date,value_date,amount,currency,reference,bank_ref,end_to_end_id,"
           "counterparty_name,counterparty_iban,counterparty_bic,remittance,balance\n"
           f"ACC-123456,1,2026-12-03,2026-12-03,-{amount},XOF,,B77,molam-slice-{slice_id},Awa,,,payout,"
           f"{1000000 - amount}\n").encode()
    async with rig(tmp_path, migrated_dsn) as r:
        r.put("day.csv", csv)
        config = msgspec.structs.replace(source_config(r.server, r.known_hosts, kind="csv-sftp"),
                                         bank_profile="bank-c")
        [taken] = (await r.poller(config, csv_profile=MOLAMD_PROFILE).poll_once()).taken
    assert (taken["outcome"], taken["matched"], taken["settled"]) == ("parsed", 1, 1)
    assert states(migrated_dsn, [slice_id, other]) == {slice_id: ("settled", None), other: ("sent", None)}
    late = apply(migrated_dsn, report("MOLAM-T9", txs=[(f"molam-slice-{slice_id}", "ACSC", None)]))
    assert (late.flag, late.applied) == (None, 0), "the report that follows agrees and changes nothing"


@pytest.mark.parametrize("order", [("ACSC", "RJCT"), ("RJCT", "ACSC")])
def test_a_report_that_contradicts_itself_about_a_transaction_moves_it_not_and_the_rest_applies(
    migrated_dsn: str, order: tuple[str, str]
) -> None:
    _, ids = recorded_file(migrated_dsn, 3, "MOLAM-T4")
    keys = [f"molam-slice-{i}" for i in ids]
    applied = apply(migrated_dsn, report("MOLAM-T4", txs=[
        (keys[0], order[0], "AC04" if order[0] == "RJCT" else None), (keys[1], "ACSC", None),
        (keys[0], order[1], "AC04" if order[1] == "RJCT" else None), (keys[2], "ACSP", None)]))
    assert applied.flag == "contradiction" and f"slice {ids[0]}" in (applied.detail or "")
    assert (applied.applied, applied.settled, applied.failed) == (1, 1, 0)
    now = states(migrated_dsn, ids)
    assert [now[i][0] for i in ids] == ["sent", "settled", "sent"], "the contradicted one waits for a person"
    with psycopg.connect(migrated_dsn) as conn:
        told = conn.execute("SELECT tx_status FROM payment_file_slices WHERE payout_slice_id = %s",
                            (ids[0],)).fetchone()[0]
    assert told is None, "neither of the two statuses is taken as the transaction's"
    later = apply(migrated_dsn, report("MOLAM-T4", txs=[(keys[0], "ACSC", None)]))
    assert (later.flag, later.settled) == (None, 1), "a later report that says one thing applies"


def test_a_report_about_another_message_under_our_msg_id_applies_nothing(migrated_dsn: str) -> None:
    """OrgnlMsgNmId names the message the report answers: a direct debit's (pain.008) or another version's
    status under our MsgId is about something we did not send."""
    _, ids = recorded_file(migrated_dsn, 2, "MOLAM-T5")
    keys = [f"molam-slice-{i}" for i in ids]
    for message in ("pain.008.001.02", "pain.001.001.03", "camt.029.001.09"):
        wrong = apply(migrated_dsn, report("MOLAM-T5", txs=[(keys[0], "RJCT", "AC04")], message=message))
        assert wrong.flag == "wrong_message" and wrong.applied == 0 and message in (wrong.detail or ""), message
    assert {s for s, _ in states(migrated_dsn, ids).values()} == {"sent"}
    for message, key in (("pain.001", keys[0]), ("pain.001.001.09.ch.03", keys[1])):
        right = apply(migrated_dsn, report("MOLAM-T5", txs=[(key, "ACSC", None)], message=message))
        assert (right.flag, right.settled) == (None, 1), message
