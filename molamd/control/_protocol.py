"""The control protocol: newline-delimited JSON over a Unix socket.

On connect the server sends ``{"hello": {"server": "molamd", "version": ..., "protocol": 1}}``. A request is
``{"id": 1, "cmd": "status", "args": {}}``; the reply is ``{"id": 1, "ok": true, "result": ...}`` or
``{"id": 1, "ok": false, "error": {"code": ..., "message": ...}}``. Streaming commands send
``{"id": n, "event": {...}}`` lines until the client closes. A line is at most 64 KiB.
"""

from __future__ import annotations

import enum
from typing import Any, Final

import msgspec

from connectors import encode_hook

PROTOCOL_VERSION: Final = 1
MAX_LINE: Final = 64 * 1024


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"  # not JSON, or not a request object
    TOO_LONG = "too_long"  # a line over MAX_LINE bytes; the connection is closed
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


_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder(enc_hook=encode_hook)


def decode_request(line: bytes) -> Request:
    try:
        raw = _decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise ControlError(ErrorCode.BAD_REQUEST, f"not JSON: {exc}") from None
    try:
        return msgspec.convert(raw, Request)
    except msgspec.ValidationError as exc:
        raise ControlError(ErrorCode.BAD_REQUEST, f"not a request: {exc}") from None


def request_id(line: bytes) -> Any:
    """Best effort: the id of a request we could not fully parse, so the error reply carries it."""
    try:
        raw = _decoder.decode(line)
    except msgspec.DecodeError:
        return None
    return raw.get("id") if isinstance(raw, dict) else None


def encode(message: dict[str, Any]) -> bytes:
    return _encoder.encode(message) + b"\n"


def hello(version: str) -> bytes:
    return encode({"hello": {"server": "molamd", "version": version, "protocol": PROTOCOL_VERSION}})
