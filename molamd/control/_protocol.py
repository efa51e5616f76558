"""The control protocol: newline-delimited JSON over a Unix socket.

On connect the server sends ``{"hello": {"server": "molamd", "version": ..., "protocol": 1}}``. A request is
``{"id": 1, "cmd": "status", "args": {}}``; the reply is ``{"id": 1, "ok": true, "result": ...}`` or
``{"id": 1, "ok": false, "error": {"code": ..., "message": ...}}``. Streaming commands send
``{"id": n, "event": {...}}`` lines until the client closes. A line is at most 64 KiB of strict JSON in UTF-8: a
duplicate key, NaN or Infinity, nesting deeper than 16 levels, or a string that is not text (a lone surrogate
escape such as ``"\\ud800"``, which no reply could carry back) is a bad request. An id is an int64 or a string of
at most 256 characters. ``error_line`` never fails, so the server's error path cannot.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, Final

import msgspec

from connectors import encode_hook

PROTOCOL_VERSION: Final = 1
MAX_LINE: Final = 64 * 1024


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"  # not JSON, or not a request object
    TOO_LONG = "too_long"  # a line over MAX_LINE bytes; the connection is closed
    TIMEOUT = "timeout"  # no complete request line within idle_timeout; the connection is closed
    UNKNOWN_COMMAND = "unknown_command"
    BAD_ARGS = "bad_args"
    FORBIDDEN = "forbidden"  # SO_PEERCRED says this peer may not run this command
    NOT_FOUND = "not_found"  # no connector or actor of that name
    BUSY = "busy"  # too many clients, or an actor did not answer in time: a retry may work
    UNSUPPORTED = "unsupported"  # the target does not take this command (a statement source is no payment connector)
    FINAL = "final"  # the payout slice is already final: nothing to do, now or later
    NOT_IN_DOUBT = "not_in_doubt"  # the payout slice is bound to no idempotency scope: nothing to release
    BANK_DISAGREES = "bank_disagrees"  # the bank's own lookup contradicts what the operator said: nothing changed
    SECRETS_MISSING = "secrets_missing"  # a secrets refresh found references gone; what uses them stopped
    CONFIG_INVALID = "config_invalid"  # reload refused; nothing changed
    UNAVAILABLE = "unavailable"  # a dependency (the database) is down
    INTERNAL = "internal"


class ControlError(Exception):
    """An error reply: typed code, a message that says what and where."""

    def __init__(self, code: ErrorCode, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


MAX_ID_LENGTH: Final = 256
MAX_MESSAGE: Final = 4096  # characters of an error message on the wire; the rest is cut
_INT64: Final = 2**63
RequestId = (Annotated[int, msgspec.Meta(ge=-_INT64, le=_INT64 - 1)]
             | Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)] | None)


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cmd: str
    id: RequestId = None
    args: dict[str, Any] = msgspec.field(default_factory=dict)


MAX_DEPTH: Final = 16  # nesting of objects and arrays in one request; no command needs more than 3

_encoder = msgspec.json.Encoder(enc_hook=encode_hook)


class _Refused(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:  # {"cmd": "status", "cmd": "reload"}: which one was meant is anybody's guess
            raise _Refused(f"duplicate key {key[:64]!r}")
        obj[key] = value
    return obj


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _text(value: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        # json decodes "\\ud800" to a str that UTF-8 cannot carry: echoed back, it broke the error reply
        raise _Refused(f"a string holds a lone surrogate (U+{ord(value[exc.start]):04X}), which is not text") from None


def _parse(line: bytes) -> Any:
    """Strict JSON in UTF-8: no duplicate keys, no NaN or Infinity, at most MAX_DEPTH levels of nesting, every
    string (keys included) encodable as UTF-8."""
    try:
        # decoded here: json.loads(bytes) would guess UTF-16 or UTF-32 from the first bytes
        raw = json.loads(line.decode(), object_pairs_hook=_object, parse_constant=_constant)
    except RecursionError:
        raise _Refused(f"nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError as exc:
        raise _Refused(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    stack = [(raw, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _text(value)
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key in value:
                    _text(key)
                stack.extend((item, depth + 1) for item in value.values())
            else:
                stack.extend((item, depth + 1) for item in value)
    return raw


def decode_request(line: bytes) -> Request:
    try:
        raw = _parse(line)
    except _Refused as exc:
        raise ControlError(ErrorCode.BAD_REQUEST, f"not a request: {exc}") from None
    except ValueError as exc:
        raise ControlError(ErrorCode.BAD_REQUEST, f"not JSON: {exc}") from None
    try:
        return msgspec.convert(raw, Request)
    except msgspec.ValidationError as exc:
        raise ControlError(ErrorCode.BAD_REQUEST, f"not a request: {exc}") from None


def request_id(line: bytes) -> int | str | None:
    """Best effort: the id of a request we could not fully parse, so the error reply carries it."""
    try:
        raw = _parse(line)
    except ValueError:
        return None
    return allowed_id(raw.get("id") if isinstance(raw, dict) else None)


def allowed_id(rid: Any) -> int | str | None:
    """``rid`` if a reply may carry it back, else None: an odd type, out of int64, too long, or not text."""
    if isinstance(rid, int) and not isinstance(rid, bool):
        return rid if -_INT64 <= rid < _INT64 else None
    if isinstance(rid, str) and len(rid) <= MAX_ID_LENGTH:
        try:
            rid.encode()
        except UnicodeEncodeError:
            return None
        return rid
    return None


def encode(message: dict[str, Any]) -> bytes:
    return _encoder.encode(message) + b"\n"


def _bounded(text: str) -> str:
    text = text if len(text) <= MAX_MESSAGE else f"{text[:MAX_MESSAGE]}... ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode()


def error_line(rid: Any, exc: ControlError) -> bytes:
    """The error reply for ``exc``: never raises, whatever the id, message or details hold.

    What cannot be encoded is dropped rather than echoed: an id that is not an allowed one becomes null, details
    that do not encode are left out, a message is cut to MAX_MESSAGE characters and anything not text escaped.
    """
    body = exc.to_wire()
    body["message"] = _bounded(str(body["message"]))
    rid = allowed_id(rid)
    try:
        return encode({"id": rid, "ok": False, "error": body})
    except Exception:  # details come from handlers; the reply must still go out
        body.pop("details", None)
        return encode({"id": rid, "ok": False, "error": body})


def hello(version: str) -> bytes:
    return encode({"hello": {"server": "molamd", "version": version, "protocol": PROTOCOL_VERSION}})
