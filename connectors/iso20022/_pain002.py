"""pain.002 (customer payment status report): bytes in, the statuses it reports out. Pure.

Read by local element names, so .03, .10, a bank's own namespace (SIX's ``pain.002.001.03.ch.02``) and
namespace-less files all parse. Statuses at group, payment-information and transaction level, each with its
reason codes (``Cd`` or ``Prtry``) and additional information. A transaction's effective status is its own,
else its block's, else the group's. Hostile input is refused before it costs anything: files over a size
bound, and a DOCTYPE of any kind (entity expansion, "billion laughs", external entities), seen on the parsed
tree, so in any encoding and anywhere in the prolog, by a parser that never loads a DTD, resolves an entity or
uses the network. A file that is not a status report is an error naming the element at fault.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import msgspec
from lxml import etree

from .._money import clip

MAX_BYTES: Final = 64 * 1024 * 1024
_PARSER: Final = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                                 remove_comments=True)
# What libxml2 says when an entity's expansion runs into its limits (before any DTD check can see the tree).
_EXPANSION: Final = frozenset({etree.ErrorTypes.ERR_RESOURCE_LIMIT, etree.ErrorTypes.ERR_ENTITY_LOOP})
# Group and transaction statuses of pain.002 .03-.07 (closed lists), and the external codes of .08 onwards.
KNOWN_STATUSES: Final = frozenset({
    "ACTC", "ACCP", "ACSP", "ACSC", "ACWC", "ACWP", "ACCC", "ACFC", "PART", "PDNG", "RCVD", "RJCT", "BLCK",
    "CANC", "PATC", "RCVC", "RVCM", "RVMC", "RVNA", "RVNC", "RVNM",
})


MAX_MESSAGE: Final = 500  # characters of an error message: lxml quotes the input, and a bank's file is any size


class StatusReportError(ValueError):
    """Not a usable pain.002; the message says what and where, in at most MAX_MESSAGE characters."""

    def __init__(self, message: str) -> None:
        super().__init__(clip(message, MAX_MESSAGE))


class Reason(msgspec.Struct, frozen=True, kw_only=True):
    code: str | None  # ISO external status reason code (AC01, AM04, NARR...) or the bank's proprietary one
    info: tuple[str, ...] = ()


class TransactionStatus(msgspec.Struct, frozen=True, kw_only=True):
    original_instr_id: str | None
    original_end_to_end_id: str | None
    status: str | None
    reasons: tuple[Reason, ...] = ()


class PaymentStatus(msgspec.Struct, frozen=True, kw_only=True):
    original_pmt_inf_id: str | None
    status: str | None
    reasons: tuple[Reason, ...] = ()
    transactions: tuple[TransactionStatus, ...] = ()


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    namespace: str | None  # None for a namespace-less file
    msg_id: str
    created_at: str | None
    original_msg_id: str | None  # None: the report names no file (a bank rejecting what it could not parse)
    original_msg_name: str | None
    group_status: str | None
    group_reasons: tuple[Reason, ...] = ()
    payments: tuple[PaymentStatus, ...] = ()
    unknown_statuses: tuple[str, ...] = ()  # codes outside KNOWN_STATUSES: kept, and flagged

    def effective(self) -> Iterator[tuple[PaymentStatus, TransactionStatus | None, str | None, tuple[Reason, ...]]]:
        """Every status that applies, most specific first: each transaction with its own status, else its
        block's, else the group's; a block with no transactions listed stands for all of its transactions."""
        for payment in self.payments:
            if not payment.transactions:
                status = payment.status or self.group_status
                yield payment, None, status, payment.reasons or self.group_reasons
            for tx in payment.transactions:
                status = tx.status or payment.status or self.group_status
                yield payment, tx, status, tx.reasons or payment.reasons or self.group_reasons


def parse_pain002(data: bytes) -> StatusReport:
    if len(data) > MAX_BYTES:
        raise StatusReportError(f"larger than {MAX_BYTES} bytes")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        if exc.code in _EXPANSION:  # type: ignore[attr-defined]  # lxml-stubs lack it
            raise StatusReportError(f"a DOCTYPE or ENTITY declaration: refused (entity expansion: {exc})") from None
        raise StatusReportError(f"not well-formed XML: {exc}") from None
    _no_doctype(root)
    namespace = etree.QName(root).namespace
    report = _child(root, "CstmrPmtStsRpt") if _local(root) == "Document" else root
    if report is None or _local(report) != "CstmrPmtStsRpt":
        raise StatusReportError(f"/{_local(root)}: not a pain.002 (no CstmrPmtStsRpt)")
    header = _required(report, "GrpHdr", "/Document/CstmrPmtStsRpt")
    group = _required(report, "OrgnlGrpInfAndSts", "/Document/CstmrPmtStsRpt")
    payments = tuple(_payment(p) for p in _children(report, "OrgnlPmtInfAndSts"))
    group_status = _text(group, "GrpSts")
    statuses = [group_status] + [p.status for p in payments] + [t.status for p in payments for t in p.transactions]
    return StatusReport(
        namespace=namespace,
        msg_id=_required_text(header, "MsgId", "GrpHdr"),
        created_at=_text(header, "CreDtTm"),
        original_msg_id=_text(group, "OrgnlMsgId"),
        original_msg_name=_text(group, "OrgnlMsgNmId"),
        group_status=group_status,
        group_reasons=_reasons(group),
        payments=payments,
        unknown_statuses=tuple(sorted({s for s in statuses if s is not None and s not in KNOWN_STATUSES})),
    )


def _no_doctype(root: etree._Element) -> None:
    """Refuse a document type of any kind, as the parser saw it (so in any encoding, wherever it sits in the
    prolog): the parser neither loads nor expands one, and a status report never needs one."""
    info = root.getroottree().docinfo
    system: str | None = info.system_url  # type: ignore[attr-defined]  # lxml-stubs lack it
    if info.internalDTD is not None or info.externalDTD is not None or system or info.public_id:
        named = f" (it names {system!r})" if system else ""
        raise StatusReportError(f"a DOCTYPE or ENTITY declaration: refused{named}")
    if any(isinstance(node, etree._Entity) for node in root.iter()):
        raise StatusReportError("an entity reference: refused (no DOCTYPE may declare one)")


def _payment(node: etree._Element) -> PaymentStatus:
    return PaymentStatus(
        original_pmt_inf_id=_text(node, "OrgnlPmtInfId"), status=_text(node, "PmtInfSts"), reasons=_reasons(node),
        transactions=tuple(TransactionStatus(
            original_instr_id=_text(tx, "OrgnlInstrId"), original_end_to_end_id=_text(tx, "OrgnlEndToEndId"),
            status=_text(tx, "TxSts"), reasons=_reasons(tx)) for tx in _children(node, "TxInfAndSts")),
    )


def _reasons(node: etree._Element) -> tuple[Reason, ...]:
    found = []
    for info in _children(node, "StsRsnInf"):
        rsn = _child(info, "Rsn")
        code = None if rsn is None else (_text(rsn, "Cd") or _text(rsn, "Prtry"))
        extra = tuple(t for t in (_plain(a.text) for a in _children(info, "AddtlInf")) if t)
        found.append(Reason(code=code, info=extra))
    return tuple(found)


def _local(node: etree._Element) -> str:
    return etree.QName(node).localname if isinstance(node.tag, str) else ""


def _children(node: etree._Element, name: str) -> list[etree._Element]:
    return [c for c in node if _local(c) == name]


def _child(node: etree._Element, name: str) -> etree._Element | None:
    return next((c for c in node if _local(c) == name), None)


def _text(node: etree._Element, name: str) -> str | None:
    child = _child(node, name)
    return _plain(child.text) if child is not None else None


def _plain(text: str | None) -> str | None:
    return " ".join(text.split()) or None if text else None


def _required(node: etree._Element, name: str, where: str) -> etree._Element:
    child = _child(node, name)
    if child is None:
        raise StatusReportError(f"{where}: no {name}")
    return child


def _required_text(node: etree._Element, name: str, where: str) -> str:
    value = _text(node, name)
    if value is None:
        raise StatusReportError(f"{where}/{name}: missing or empty")
    return value
