"""HMAC-SHA256 request and response signatures for REST bank APIs (pure functions).

Request: ``HMAC(secret, METHOD \\n PATH?QUERY \\n TIMESTAMP \\n sha256(body))`` in ``X-Signature``, with the
timestamp (Unix seconds) in ``X-Timestamp`` and the key id in ``X-Key-Id``. The bank refuses timestamps more
than ``max_skew`` seconds away from its clock. Response: ``HMAC(secret, STATUS \\n TIMESTAMP \\n sha256(body))``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

DEFAULT_MAX_SKEW: Final = 300.0


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def sign_request(secret: bytes, method: str, target: str, timestamp: int, body: bytes) -> str:
    message = f"{method.upper()}\n{target}\n{timestamp}\n{body_digest(body)}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify_request(
    secret: bytes, signature: str, method: str, target: str, timestamp: str, body: bytes, *, now: float,
    max_skew: float = DEFAULT_MAX_SKEW,
) -> str | None:
    """None if the signature holds and the timestamp is fresh; else the reason it does not."""
    try:
        ts = int(timestamp)
    except ValueError:
        return "timestamp is not an integer"
    if abs(now - ts) > max_skew:
        return f"timestamp skew {now - ts:.0f}s exceeds {max_skew:.0f}s"
    expected = sign_request(secret, method, target, ts, body)
    if not hmac.compare_digest(expected, signature):
        return "signature mismatch"
    return None


def sign_response(secret: bytes, status: int, timestamp: int, body: bytes) -> str:
    message = f"{status}\n{timestamp}\n{body_digest(body)}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify_response(secret: bytes, signature: str, status: int, timestamp: str, body: bytes) -> bool:
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    return hmac.compare_digest(sign_response(secret, status, ts, body), signature)
