"""The control protocol: newline-delimited JSON over a Unix socket.

On connect the server sends ``{"hello": {"server": "molamd", "version": ..., "protocol": 1}}``. A request is
``{"id": 1, "cmd": "status", "args": {}}``; the reply is ``{"id": 1, "ok": true, "result": ...}`` or
``{"id": 1, "ok": false, "error": {"code": ..., "message": ...}}``. Streaming commands send
``{"id": n, "event": {...}}`` lines until the client closes. A line is at most 64 KiB of strict JSON: a
duplicate key, NaN or Infinity, or nesting deeper than 16 levels is a bad request.
"""

from __future__ import annotations

import enum
import json
from typing import Any, Final

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
    BUSY = "busy"  # too many clients, or an actor did not answer in time
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


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cmd: str
    id: int | str | None = None
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


def _parse(line: bytes) -> Any:
    """Strict JSON: no duplicate keys, no NaN or Infinity, at most MAX_DEPTH levels of nesting."""
    try:
        raw = json.loads(line, object_pairs_hook=_object, parse_constant=_constant)
    except RecursionError:
        raise _Refused(f"nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError as exc:
        raise _Refused(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    stack = [(raw, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
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


def request_id(line: bytes) -> Any:
    """Best effort: the id of a request we could not fully parse, so the error reply carries it."""
    try:
        raw = _parse(line)
    except ValueError:
        return None
    rid = raw.get("id") if isinstance(raw, dict) else None
    return rid if isinstance(rid, int | str) else None


def encode(message: dict[str, Any]) -> bytes:
    return _encoder.encode(message) + b"\n"


def hello(version: str) -> bytes:
    return encode({"hello": {"server": "molamd", "version": version, "protocol": PROTOCOL_VERSION}})
