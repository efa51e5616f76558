"""ISO 20022 camt.053 bank-to-customer statements (also the camt.052 reports and camt.054 notifications that
share its shape), versions .02 to .08: bytes in, Statements out.

Real files are often namespace-less or slightly off-schema, so elements are matched by local name and only
what the numbers need is required: each entry's amount, credit/debit indicator and a date. The parser never
resolves entities, loads a DTD or touches the network; a document with a DOCTYPE is refused outright (that is
how billion-laughs and external-entity payloads arrive), and so is one over ``max_bytes``.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from lxml import etree

from .._money import EXACT, AmountSyntaxError, clip, exact_sum, parse_amount
from ._errors import StatementFormatError
from ._model import Balance, Statement, StatementLine, check_balance

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_OPENING = ("OPBD", "PRCD", "ITBD")  # booked opening, previous closing, interim booked
_CLOSING = ("CLBD", "ITBD")
_ACCOUNT_PATHS = ("Acct/Id/IBAN", "Acct/Id/Othr/Id", "Acct/Id/PrtryAcct/Id", "Acct/Id/BBAN")  # v02+, v01
_NOT_PROVIDED = frozenset({"", "NOTPROVIDED", "NONREF"})
_CONTAINERS = {"Stmt": "camt053", "Rpt": "camt052", "Ntfctn": "camt054"}

_Element = etree._Element


def parse_camt(data: bytes, *, check: bool = True, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Statement]:
    """Every statement (report, notification) in the document; raises StatementFormatError or BalanceMismatch."""
    if len(data) > max_bytes:
        raise StatementFormatError("/", f"document of {len(data)} bytes is over the limit of {max_bytes}")
    head = data[:4096].upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in data.upper():
        raise StatementFormatError("/", "a DOCTYPE or entity declaration is not allowed in a bank statement")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                             remove_comments=True, remove_pis=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise StatementFormatError(f"line {exc.lineno or 0}", f"not well-formed XML: {exc.msg}") from None
    for element in root.iter():
        if isinstance(element.tag, str):
            element.tag = etree.QName(element).localname
    tree = root.getroottree()
    statements = []
    for container in root.iter(*_CONTAINERS):
        statement = _statement(tree, container, _CONTAINERS[str(container.tag)])
        if check:
            check_balance(statement, tree.getpath(container))
        statements.append(statement)
    if not statements:
        raise StatementFormatError(
            tree.getpath(root), f"<{root.tag}> holds no <Stmt>, <Rpt> or <Ntfctn> (expected a camt.053 document)")
    return statements


def _text(element: _Element | None, path: str) -> str | None:
    if element is None:
        return None
    found = element.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip() or None


def _need(tree: etree._ElementTree, element: _Element, path: str, what: str) -> str:
    value = _text(element, path)
    if value is None:
        raise StatementFormatError(f"{tree.getpath(element)}/{path}", f"missing (expected {what})")
    return value


def _amount(tree: etree._ElementTree, element: _Element) -> tuple[Decimal, str | None]:
    amt = element.find("Amt")
    if amt is None or not (amt.text or "").strip():
        raise StatementFormatError(f"{tree.getpath(element)}/Amt", "missing (expected an amount)")
    value = _decimal(tree, amt, amt.text.strip())  # type: ignore[union-attr]
    indicator = _need(tree, element, "CdtDbtInd", "CRDT or DBIT")
    if indicator not in ("CRDT", "DBIT"):
        raise StatementFormatError(f"{tree.getpath(element)}/CdtDbtInd", f"{clip(indicator)!r} (expected CRDT or DBIT)")
    return (value if indicator == "CRDT" else -value), amt.get("Ccy")


def _decimal(tree: etree._ElementTree, element: _Element, text: str) -> Decimal:
    """An ``Amt`` as ISO 20022 writes it (unsigned, ``.`` as separator), read by the one strict amount reader."""
    try:
        return parse_amount(text, decimal_separator=".")
    except AmountSyntaxError as exc:
        raise StatementFormatError(tree.getpath(element), f"{clip(text)!r} is not an amount (expected a positive "
                                                          f"decimal: {exc.reason})") from None


def _date(tree: etree._ElementTree, element: _Element | None, path: str) -> dt.date | None:
    if element is None:
        return None
    holder = element.find(path)
    if holder is None:
        return None
    text = _text(holder, "Dt") or _text(holder, "DtTm")
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text[:10])
    except ValueError:
        raise StatementFormatError(
            tree.getpath(holder), f"{clip(text)!r} is not a date (expected YYYY-MM-DD)") from None


def _statement(tree: etree._ElementTree, container: _Element, kind: str) -> Statement:
    account = next((a for a in map(lambda p: _text(container, p), _ACCOUNT_PATHS) if a), None)
    if account is None:
        raise StatementFormatError(f"{tree.getpath(container)}/Acct/Id", "missing (expected IBAN or Othr/Id)")
    account_currency = _text(container, "Acct/Ccy")
    balances: dict[str, Balance] = {}
    forward = []
    for bal in container.findall("Bal"):
        code = _text(bal, "Tp/CdOrPrtry/Cd") or _text(bal, "Tp/CdOrPrtry/Prtry") or ""
        amount, currency = _amount(tree, bal)
        date = _date(tree, bal, "Dt")
        if date is None:
            raise StatementFormatError(f"{tree.getpath(bal)}/Dt", "missing (expected Dt or DtTm)")
        balance = Balance(amount=amount, currency=currency or account_currency or "", date=date)
        if code == "FWAV":
            forward.append(balance)
        else:
            balances.setdefault(code, balance)
    opening = next((balances[c] for c in _OPENING if c in balances), None)
    closing = next((balances[c] for c in _CLOSING if c in balances and balances[c] is not opening), None)
    currency = account_currency or (opening.currency if opening else None)
    lines: list[StatementLine] = []
    skipped = 0
    for index, entry in enumerate(container.findall("Ntry"), start=1):
        status = _text(entry, "Sts") or _text(entry, "Sts/Cd") or "BOOK"
        if status != "BOOK":
            skipped += 1  # pending or information-only entries are not in the booked balance
            continue
        lines.extend(_lines(tree, entry, index, account, currency))
    currency = currency or (lines[0].currency if lines else "")
    declared = {"not_booked": str(skipped)} if skipped else {}
    return Statement(
        format=kind, account=account, currency=currency,
        number=_text(container, "LglSeqNb") or _text(container, "ElctrncSeqNb"),
        reference=_text(container, "Id"), opening=opening, closing=closing,
        closing_available=balances.get("CLAV"), forward_available=tuple(forward), lines=tuple(lines),
        info=_text(container, "AddtlStmtInf") or _text(container, "AddtlRptInf") or _text(container, "AddtlNtfctnInf"),
        declared=declared, source_line=_line_of(container),
    )


def _line_of(element: _Element) -> int:
    line = element.sourceline
    return line if isinstance(line, int) else 0


def _lines(
    tree: etree._ElementTree, entry: _Element, index: int, account: str, currency: str | None
) -> list[StatementLine]:
    amount, entry_currency = _amount(tree, entry)
    booking = _date(tree, entry, "BookgDt")
    value_date = _date(tree, entry, "ValDt") or booking
    if value_date is None:
        raise StatementFormatError(f"{tree.getpath(entry)}/ValDt", "missing (expected ValDt or BookgDt)")
    details = entry.findall("NtryDtls/TxDtls")
    parts: list[tuple[Decimal, _Element | None]] = [(amount, details[0] if details else None)]
    if len(details) > 1:  # a batch booking: one line per transaction when their amounts add up to the entry
        split: list[tuple[Decimal, _Element | None]] = []
        for detail in details:
            tx_amt = detail.find("AmtDtls/TxAmt/Amt")
            if tx_amt is None:
                tx_amt = detail.find("Amt")
            tx_text = (tx_amt.text or "").strip() if tx_amt is not None else ""
            if tx_amt is None or not tx_text:
                break
            tx_currency = tx_amt.get("Ccy")
            if tx_currency is not None and tx_currency != (entry_currency or currency):
                break  # the instructed amount, in another currency: the entry stays one line, in its own
            tx_value = _decimal(tree, tx_amt, tx_text)
            split.append((tx_value if amount >= 0 else EXACT.minus(tx_value), detail))
        if len(split) == len(details) and exact_sum(a for a, _ in split) == amount:
            parts = split
    raw = etree.tostring(entry, encoding="unicode")
    code = _bank_code(entry)
    lines = []
    for amount_part, tx in parts:
        side = "Dbtr" if amount_part >= 0 else "Cdtr"
        ustrd = tx.findall("RmtInf/Ustrd") if tx is not None else []
        remittance = " ".join((t.text or "").strip() for t in ustrd).strip()
        if not remittance and tx is not None:
            remittance = _text(tx, "RmtInf/Strd/CdtrRefInf/Ref") or ""
        e2e = _text(tx, "Refs/EndToEndId")
        lines.append(StatementLine(
            account=account, currency=entry_currency or currency or "", amount=amount_part, value_date=value_date,
            booking_date=booking, reversal=(_text(entry, "RvslInd") or "").lower() == "true",
            transaction_code=code,
            customer_ref=_text(tx, "Refs/InstrId") or _text(tx, "Refs/PmtInfId"),
            bank_ref=_text(entry, "AcctSvcrRef") or _text(tx, "Refs/AcctSvcrRef"),
            end_to_end_id=None if e2e is None or e2e.upper() in _NOT_PROVIDED else e2e,
            counterparty_name=_text(tx, f"RltdPties/{side}/Nm") or _text(tx, f"RltdPties/{side}/Pty/Nm"),
            counterparty_iban=_text(tx, f"RltdPties/{side}Acct/Id/IBAN"),
            counterparty_bic=_text(tx, f"RltdAgts/{side}Agt/FinInstnId/BIC")
            or _text(tx, f"RltdAgts/{side}Agt/FinInstnId/BICFI"),
            remittance=remittance or _text(entry, "AddtlNtryInf"),
            raw=raw, source_line=index,
        ))
    return lines


def _bank_code(entry: _Element) -> str | None:
    domain = _text(entry, "BkTxCd/Domn/Cd")
    if domain:
        family = _text(entry, "BkTxCd/Domn/Fmly/Cd") or ""
        sub = _text(entry, "BkTxCd/Domn/Fmly/SubFmlyCd") or ""
        return "-".join(p for p in (domain, family, sub) if p)
    return _text(entry, "BkTxCd/Prtry/Cd")
