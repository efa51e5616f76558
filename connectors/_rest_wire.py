"""What the REST connector reads from a bank, decoded strictly: JSON bodies and pushed events.

A bank's bytes are untrusted. Whatever they hold, decoding ends in a value or a ``WireError`` (a ValueError)
with a short message naming what was wrong: JSON nested past the interpreter's recursion limit, a field of the
wrong type or out of range (``seq`` 1e400, 1.5 or true), an unknown status. The adapter turns that into
BadResponse, or for a pushed event drops the event and carries on.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Final

import msgspec

from ._payments import PaymentEvent, PaymentState

MAX_TEXT: Final = 300  # characters of a bank's text kept in an error message
_INT64_MAX: Final = 2**63 - 1


class WireError(ValueError):
    """What a bank sent cannot be read; the message says what and where, in at most MAX_TEXT characters."""

    def __init__(self, message: str) -> None:
        super().__init__(printable(message[:MAX_TEXT]))


def printable(text: str) -> str:
    """A bank's text made safe for logs and the audit table: control characters (and lone surrogates) escaped."""
    return "".join(
        c if (c.isprintable() or c in "\n\t") and not 0xD800 <= ord(c) <= 0xDFFF else f"\\x{ord(c):02x}"
        for c in text)


def loads(raw: bytes | str) -> Any:
    """JSON, or WireError: not JSON, nested too deep for the decoder (which raised RecursionError), or a string
    (key or value) holding a lone surrogate escape such as "\\ud800", which is no text: it would fail later, in
    whatever encodes it (msgspec, the database)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise WireError("JSON nested too deep") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int over the digit limit
        raise WireError(f"not JSON: {exc}") from None
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _text(item)
        elif isinstance(item, dict):
            for key in item:
                _text(key)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


def _text(value: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise WireError(f"a JSON string holds a lone surrogate (U+{ord(value[exc.start]):04X}), which is not text"
                        ) from None


def state(text: object) -> PaymentState:
    if not isinstance(text, str):
        raise WireError(f"payment status is a {type(text).__name__}, not a string")
    try:
        return PaymentState(text)
    except ValueError:
        raise WireError(f"unknown payment status {text[:64]!r}") from None


MAX_REF: Final = 256  # characters of a bank's payment id
MAX_CODE: Final = 35  # an ISO 20022 reason code is 4, a proprietary one at most 35


def optional_text(data: dict[str, Any], key: str, limit: int = MAX_TEXT) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise WireError(f"{key} is a {type(value).__name__}, not a string")
    if value is not None and len(value) > limit:
        raise WireError(f"{key} is {len(value):,} characters long (at most {limit})")
    return value


def provider_ref(data: dict[str, Any]) -> str:
    """The bank's payment id: a string of 1 to MAX_REF characters (or an integer, as some banks write it)."""
    value = data["id"]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise WireError(f"id is a {type(value).__name__}, not a string")
    if not 1 <= len(value) <= MAX_REF:
        raise WireError(f"id is {len(value):,} characters long (1 to {MAX_REF})")
    return value


class _Event(msgspec.Struct, frozen=True):
    """A pushed event as the bank writes it; other fields are the bank's business."""

    seq: Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REF)]
    status: str
    idempotency_key: Annotated[str, msgspec.Meta(max_length=MAX_REF)] | None = None
    reason_code: Annotated[str, msgspec.Meta(max_length=MAX_CODE)] | None = None


def decode_event(message: bytes | str) -> PaymentEvent:
    """One websocket message as a PaymentEvent, or WireError naming the field that is wrong."""
    data = loads(message)
    if not isinstance(data, dict):
        raise WireError(f"pushed event is a JSON {type(data).__name__}, not an object")
    try:
        wire = msgspec.convert(data, _Event)
    except msgspec.ValidationError as exc:
        raise WireError(f"pushed event: {exc}") from None
    return PaymentEvent(seq=wire.seq, provider_ref=wire.id, idempotency_key=wire.idempotency_key,
                        state=state(wire.status), reason_code=wire.reason_code)


MAX_NAME: Final = 255  # characters of a report's file name, as a file system allows


def report_entry(entry: object) -> tuple[str, bytes]:
    """One entry of ``GET /files/reports``: (name, bytes), or WireError. A name is 1 to MAX_NAME printable
    characters with no '/' (it is a file name, shown and stored); the content is strict base64."""
    if not isinstance(entry, dict):
        raise WireError(f"a report entry is a JSON {type(entry).__name__}, not an object")
    name, content = entry.get("name"), entry.get("content")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
        shown = f"{len(name):,} characters" if isinstance(name, str) else f"a {type(name).__name__}"
        raise WireError(f"report name is {shown} (a string of 1 to {MAX_NAME} characters)")
    if not name.isprintable() or "/" in name or name in (".", ".."):
        raise WireError(f"report name {printable(name)!r} is not a file name")
    if not isinstance(content, str):
        raise WireError(f"report {name}: content is a {type(content).__name__}, not base64 text")
    try:
        return name, base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireError(f"report {name}: content is not base64: {exc}") from None
