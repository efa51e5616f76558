"""pain.001 (customer credit transfer initiation), versions 001.001.03 and 001.001.09: records in, bytes out.

Pure: no clock, no randomness, no I/O. Every id derives from the file's own id and its slices: MsgId is
``PREFIX-FILEID``, a PmtInfId is ``MSGID-N``, an InstrId is ``S<slice id>``, the EndToEndId is the slice's
idempotency key; each is checked to be 1-35 characters of the SEPA set. Amounts are rendered by the currency's
ISO 4217 exponent (XOF ``5000``, EUR ``12.50``) and never rounded; NbOfTxs and CtrlSum are computed from the
rendered amounts. Text is transliterated into the declared character set; what cannot be is an error naming
the slice and the field. IBANs and BICs are checked with schwifty. Every problem found is reported at once
(``PaymentFileError``), and the finished file is validated against the official XSD before it is returned.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

from lxml import etree
from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException

from .._money import AmountError, render_amount
from .._payments import mask_account
from ._charset import SEPA_LATIN, CharsetError, to_charset
from ._model import Account, Pain001Version, Party, PaymentBatch, PaymentFile, PostalAddress, Transfer
from ._schemas import validate

_ID: Final = re.compile(r"[A-Za-z0-9/\-?:().,'+]{1,35}")
NAME_MAX: Final = 70
REMITTANCE_MAX: Final = 140
CHARGE_BEARERS: Final = frozenset({"SLEV", "SHAR", "DEBT", "CRED"})


class PaymentFileError(ValueError):
    """The file cannot be built as asked; ``problems`` says each thing wrong and where (slice and field)."""

    def __init__(self, problems: list[str], slices: frozenset[int] = frozenset()) -> None:
        super().__init__("; ".join(problems[:20]) + (f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""))
        self.problems = problems
        self.slices = slices  # the slices at fault; the file's own problems (header, debtor) name none


def msg_id(file: PaymentFile) -> str:
    return f"{file.prefix}-{file.file_id}"


def build_pain001(file: PaymentFile, version: Pain001Version, *, charset: frozenset[str] = SEPA_LATIN) -> bytes:
    """The file's XML (UTF-8, with declaration), valid against ``version``'s XSD; raises PaymentFileError."""
    b = _Builder(file, version, charset)
    document = b.document()
    if b.problems:
        raise PaymentFileError(b.problems, frozenset(b.bad))
    data: bytes = etree.tostring(document, xml_declaration=True, encoding="UTF-8")
    errors = validate(data, version.value)
    if errors:
        raise PaymentFileError([f"{version.value} XSD: {e}" for e in errors])
    return data


class _Builder:
    def __init__(self, file: PaymentFile, version: Pain001Version, charset: frozenset[str]) -> None:
        self.file, self.version, self.charset = file, version, charset
        self.ns = f"urn:iso:std:iso:20022:tech:xsd:{version.value}"
        self.v09 = version is Pain001Version.V09
        self.problems: list[str] = []
        self.bad: set[int] = set()  # slices named by a problem

    # -- the document --------------------------------------------------------------------------------

    def document(self) -> etree._Element:
        f = self.file
        root = etree.Element(self._q("Document"), nsmap={None: self.ns})  # type: ignore[dict-item]
        body = self._sub(root, "CstmrCdtTrfInitn")
        mid = self._id(msg_id(f), "file", "MsgId")
        # Amounts first: both control sums come before the transfers they add up.
        amounts = [[self._amount(batch, t) for t in batch.transfers] for batch in f.batches]
        if not any(amounts):
            self.problems.append("file: no transfers")
        header = self._sub(body, "GrpHdr")
        self._text(header, "MsgId", mid)
        self._text(header, "CreDtTm", f.created_at.replace(microsecond=0, tzinfo=None).isoformat())
        self._text(header, "NbOfTxs", str(sum(map(len, amounts))))
        self._text(header, "CtrlSum", _total([a for block in amounts for a in block]))
        self._text(self._sub(header, "InitgPty"), "Nm", self._clean(f.initiating_party, "file", "InitgPty/Nm",
                                                                     NAME_MAX))
        for index, (batch, rendered) in enumerate(zip(f.batches, amounts, strict=True), 1):
            self._batch(body, batch, rendered, f"{mid}-{index}")
        return root

    def _amount(self, batch: PaymentBatch, t: Transfer) -> str:
        try:
            if t.amount <= 0:
                raise AmountError(f"{t.amount} {batch.currency}: not a positive amount")
            return render_amount(t.amount, batch.currency)
        except AmountError as exc:
            self.problems.append(f"slice {t.slice_id}: amount: {exc}")
            self.bad.add(t.slice_id)
            return "0"

    def _batch(self, body: etree._Element, batch: PaymentBatch, amounts: list[str], pmt_inf_id: str) -> None:
        where = f"payment block {pmt_inf_id}"
        info = self._sub(body, "PmtInf")
        self._text(info, "PmtInfId", self._id(pmt_inf_id, where, "PmtInfId"))
        self._text(info, "PmtMtd", "TRF")
        self._text(info, "BtchBookg", "true" if self.file.batch_booking else "false")
        self._text(info, "NbOfTxs", str(len(amounts)))
        self._text(info, "CtrlSum", _total(amounts))
        when = batch.execution_date.isoformat()
        if self.v09:
            self._text(self._sub(info, "ReqdExctnDt"), "Dt", when)
        else:
            self._text(info, "ReqdExctnDt", when)
        self._party(info, "Dbtr", batch.debtor, where, "debtor")
        self._account(info, "DbtrAcct", batch.debtor_account, where, "debtor account")
        self._agent(info, "DbtrAgt", batch.debtor_agent_bic, where, "debtor agent")
        if batch.charge_bearer not in CHARGE_BEARERS:
            self.problems.append(f"{where}: charge bearer {batch.charge_bearer!r} is not one of "
                                 f"{', '.join(sorted(CHARGE_BEARERS))}")
        self._text(info, "ChrgBr", batch.charge_bearer)
        for t, amount in zip(batch.transfers, amounts, strict=True):
            self._transfer(info, batch, t, amount)

    def _transfer(self, info: etree._Element, batch: PaymentBatch, t: Transfer, amount: str) -> None:
        where = f"slice {t.slice_id}"
        before = len(self.problems)
        tx = self._sub(info, "CdtTrfTxInf")
        ids = self._sub(tx, "PmtId")
        self._text(ids, "InstrId", self._id(f"S{t.slice_id}", where, "InstrId"))
        self._text(ids, "EndToEndId", self._id(t.end_to_end_id, where, "EndToEndId"))
        self._sub(self._sub(tx, "Amt"), "InstdAmt", Ccy=batch.currency).text = amount
        self._agent(tx, "CdtrAgt", t.creditor_agent_bic, where, "creditor agent", optional=True)
        self._party(tx, "Cdtr", t.creditor, where, "creditor")
        self._account(tx, "CdtrAcct", t.creditor_account, where, "creditor account")
        if t.remittance:
            self._text(self._sub(tx, "RmtInf"), "Ustrd", self._clean(t.remittance, where, "remittance",
                                                                      REMITTANCE_MAX))
        if len(self.problems) > before:
            self.bad.add(t.slice_id)

    # -- the pieces ----------------------------------------------------------------------------------

    def _party(self, parent: etree._Element, tag: str, party: Party, where: str, field: str) -> None:
        node = self._sub(parent, tag)
        self._text(node, "Nm", self._clean(party.name, where, f"{field} name", NAME_MAX))
        if party.address is not None:
            self._address(node, party.address, where, f"{field} address")

    def _address(self, parent: etree._Element, a: PostalAddress, where: str, field: str) -> None:
        node = self._sub(parent, "PstlAdr")
        if a.street:
            self._text(node, "StrtNm", self._clean(a.street, where, f"{field} street", 70))
        if a.building:
            self._text(node, "BldgNb", self._clean(a.building, where, f"{field} building", 16))
        if a.postcode:
            self._text(node, "PstCd", self._clean(a.postcode, where, f"{field} postcode", 16))
        if not a.town.strip():
            self.problems.append(f"{where}: {field}: town is mandatory")
        self._text(node, "TwnNm", self._clean(a.town, where, f"{field} town", 35))
        if not re.fullmatch(r"[A-Z]{2}", a.country):
            self.problems.append(f"{where}: {field}: country {a.country!r} is not an ISO 3166 alpha-2 code")
        self._text(node, "Ctry", a.country)
        if len(a.lines) > 2:
            self.problems.append(f"{where}: {field}: at most 2 address lines beside town and country (hybrid)")
        for line in a.lines[:2]:
            self._text(node, "AdrLine", self._clean(line, where, f"{field} line", 70))

    def _account(self, parent: etree._Element, tag: str, account: Account, where: str, field: str) -> None:
        ident = self._sub(self._sub(parent, tag), "Id")
        if account.iban:
            try:
                iban = IBAN(account.iban)
            except SchwiftyException as exc:
                shown = mask_account(account.iban.replace(" ", ""))
                self.problems.append(f"{where}: {field}: IBAN {shown} is not valid: {exc}")
                self._text(ident, "IBAN", "XX00")
                return
            self._text(ident, "IBAN", iban.compact)
        elif account.other:
            other = self._sub(ident, "Othr")
            self._text(other, "Id", self._clean(account.other, where, f"{field} id", 34))
            self._text(self._sub(other, "SchmeNm"), "Prtry", self._clean(account.scheme, where, f"{field} scheme", 35))
        else:
            self.problems.append(f"{where}: {field}: neither an IBAN nor another identifier")

    def _agent(self, parent: etree._Element, tag: str, bic: str | None, where: str, field: str, *,
               optional: bool = False) -> None:
        if bic is None and optional:
            return
        institution = self._sub(self._sub(parent, tag), "FinInstnId")
        if bic is None:
            self._text(self._sub(institution, "Othr"), "Id", "NOTPROVIDED")
            return
        try:
            checked = str(BIC(bic))
        except SchwiftyException as exc:
            self.problems.append(f"{where}: {field}: BIC {bic!r} is not valid: {exc}")
            checked = "XXXXXXXX"
        self._text(institution, "BICFI" if self.v09 else "BIC", checked)

    def _clean(self, text: str, where: str, field: str, limit: int) -> str:
        try:
            clean = to_charset(text, self.charset)
        except CharsetError as exc:
            self.problems.append(f"{where}: {field}: {exc}")
            return "x"
        if not clean:
            self.problems.append(f"{where}: {field}: empty")
            return "x"
        if len(clean) > limit:
            self.problems.append(f"{where}: {field}: {len(clean)} characters, more than {limit}")
        return clean[:limit]

    def _id(self, value: str, where: str, field: str) -> str:
        if not _ID.fullmatch(value) or value.startswith("/") or "//" in value:
            self.problems.append(f"{where}: {field} {value[:40]!r}: use 1-35 characters of the SEPA set, no spaces,"
                                 " not starting with '/' nor holding '//'")
        return value

    # -- XML -----------------------------------------------------------------------------------------

    def _q(self, tag: str) -> str:
        return f"{{{self.ns}}}{tag}"

    def _sub(self, parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
        return etree.SubElement(parent, self._q(tag), attrs)

    def _text(self, parent: etree._Element, tag: str, text: str) -> None:
        self._sub(parent, tag).text = text


def _total(amounts: list[str]) -> str:
    return f"{sum((Decimal(a) for a in amounts), Decimal(0)):f}"
