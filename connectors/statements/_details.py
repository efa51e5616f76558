"""The information field (MT940 ``:86:``) in the dialects banks send, read into named subfields.

Three dialects exist in the wild, told apart by their first characters:

* German ``?NN`` subfields (``166?00GUTSCHRIFT?20EREF+...?30BIC?31IBAN?32NAME``), with the SEPA markers
  ``EREF+``, ``SVWZ+``, ``MREF+``, ``CRED+`` ... inside the purpose lines ``?20``-``?29`` and ``?60``-``?63``;
* ``/CODE/value/`` pairs (Dutch banks and the SWIFT usage guideline: ``/EREF/``, ``/IBAN/``, ``/BIC/``,
  ``/NAME/``, ``/REMI/``, ``/TRTP/``, ``/CNTP/iban/bic/name/city/``, ...);
* free text, kept as it is.

Lines of a structured field are wrapped wherever the 65-character limit fell, so they are joined without a
separator; free text keeps its line breaks.
"""

from __future__ import annotations

import re

import msgspec

_SEPA_MARKER = re.compile(r"(EREF|KREF|MREF|CRED|DEBT|SVWZ|ABWA|ABWE|COAM|OAMT|BREF|RREF)\+")
_CODES = frozenset({
    "TRTP", "EREF", "IBAN", "BIC", "NAME", "REMI", "MARF", "CSID", "PREF", "RTRN", "ORDP", "BENM", "CNTP",
    "ADDR", "ID", "PURP", "ULTC", "ULTD", "ULTB", "EXCH", "CHGS", "OCMT", "SVCL", "RETR", "BUSP", "ISDT",
    "CDTRREF", "CDTRREFTP", "CD", "SCOR", "ISSR", "ACCW", "CPRP", "SUM", "COUNT", "TRCD", "ORIG", "ORDR",
})
_NONE: dict[str, str] = {}
_NOT_PROVIDED = frozenset({"", "NOTPROVIDED", "NONREF", "NONE"})


class Details(msgspec.Struct, frozen=True, kw_only=True):
    """What an information field says, by meaning; ``fields`` keeps every subfield as the bank named it."""

    text: str
    transaction_code: str | None = None
    end_to_end_id: str | None = None
    counterparty_name: str | None = None
    counterparty_iban: str | None = None
    counterparty_bic: str | None = None
    remittance: str | None = None
    fields: dict[str, str] = msgspec.field(default_factory=dict)  # a new dict per field read: the caller owns it


def parse_details(text: str) -> Details:
    """Read an information field (without its ``:86:`` tag), its physical lines joined by newlines."""
    head = text[:4]
    if (head[:1] == "?" and head[1:3].isdigit()) or (head[3:4] == "?" and head[:3].isdigit()):  # ?00 or 166?00
        return _german(text.replace("\n", ""))
    if text.startswith("/") and text[1:text.find("/", 1)] in _CODES:
        return _slashed(text.replace("\n", ""))
    if "\n" in text:
        text = "\n".join(line for line in text.split("\n") if line.strip())
    return Details(text=text, remittance=text.strip() or None)


def _german(text: str) -> Details:
    pieces = text.split("?")
    code = pieces[0].strip() or None
    keys: list[str] = []
    values: list[str] = []
    for piece in pieces[1:]:
        key = piece[:2]
        if len(key) == 2 and key.isdigit():
            keys.append(key)
            values.append(piece[2:])
        elif values:  # a "?" not before two digits is text of the subfield
            values[-1] += "?" + piece
        else:
            code = ((code or "") + "?" + piece).strip() or None
    fields = dict(zip(keys, values, strict=True))
    if len(fields) != len(keys):  # a subfield repeated: its pieces join in order
        fields = {}
        for key, value in zip(keys, values, strict=True):
            fields[key] = fields[key] + value if key in fields else value
    # The purpose lines ?20-?29 carry the SEPA markers; ?60-?63 add free text after them, with no markers.
    purpose = "".join([value for key, value in zip(keys, values, strict=True) if key[0] == "2"])
    sepa = _sepa_markers(purpose) if "+" in purpose else _NONE
    if sepa:
        fields.update(sepa)
    name = ((fields.get("32") or "") + (fields.get("33") or "")).strip() or None
    remittance = sepa["SVWZ"] if "SVWZ" in sepa else (purpose.strip() or fields.get("00") or None)
    eref = sepa.get("EREF")
    return Details(
        text=text, transaction_code=code, end_to_end_id=_ref(eref) if eref is not None else None,
        counterparty_name=name, counterparty_iban=fields.get("31") or None,
        counterparty_bic=fields.get("30") or None, remittance=remittance, fields=fields,
    )


def _sepa_markers(purpose: str) -> dict[str, str]:
    parts = _SEPA_MARKER.split(purpose)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def _slashed(text: str) -> Details:
    fields: dict[str, str] = {}
    key: str | None = None
    value: list[str] = []
    for token in text.split("/")[1:]:
        if token in _CODES and (key is None or key != "CNTP" or len(value) >= 4):
            if key is not None:
                fields[key] = "/".join(value).strip("/").strip()
            key, value = token, []
        else:
            value.append(token)
    if key is not None:
        fields[key] = "/".join(value).strip("/").strip()
    name, iban, bic = fields.get("NAME"), fields.get("IBAN"), fields.get("BIC")
    if "CNTP" in fields:
        cntp = [*fields["CNTP"].split("/"), "", "", ""]
        iban, bic, name = iban or cntp[0] or None, bic or cntp[1] or None, name or cntp[2] or None
    remittance = fields.get("REMI")
    if remittance is not None:
        remittance = re.sub(r"^(USTD/+|STRD/+(CUR/+)?)", "", remittance)
    return Details(
        text=text, transaction_code=fields.get("TRTP"), end_to_end_id=_ref(fields.get("EREF")),
        counterparty_name=name or None, counterparty_iban=iban or None, counterparty_bic=bic or None,
        remittance=remittance or None, fields=fields,
    )


def _ref(value: str | None) -> str | None:
    if value is None or value.strip().upper() in _NOT_PROVIDED:
        return None
    return value.strip()
