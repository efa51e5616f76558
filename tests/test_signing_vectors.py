"""Known-answer vectors for the REST HMAC scheme, worked out by hand from its spec, not from our code.

The spec (``connectors/_signing.py``'s docstring): a request is signed with the hex HMAC-SHA256 of
``METHOD \\n PATH?QUERY \\n TIMESTAMP \\n hex(sha256(body))``, a response with the hex HMAC-SHA256 of
``STATUS \\n TIMESTAMP \\n hex(sha256(body))``. The expected values below were computed once in a shell with
OpenSSL (``printf 'POST\\n/payments\\n1764892800\\n%s' "$(printf %s "$BODY" | sha256sum | cut -d' ' -f1)"
| openssl dgst -sha256 -hmac kat-secret-2026``), so our signer and the sandbox bank's verifier, which shares no
code with it, are each checked against the spec rather than against each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sandbox_bank

from connectors._signing import sign_request, sign_response, verify_request, verify_response
from tests.payout_helpers import Bank

KEY = b"kat-secret-2026"
TIMESTAMP = 1764892800  # 2025-12-05T00:00:00Z
PAYMENT = b'{"amount":"15000","currency":"XOF","reference":"p-1/1"}'
PAYMENT_DIGEST = "999861ed918b99152d37f149eb16c5d372ebcd3bf622d52a05718d5f6cddb7f9"
EMPTY_DIGEST = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
REPLY = b'{"id":"pay_00000001","status":"accepted"}'

# (method, target, body, expected X-Signature)
REQUESTS = [
    ("POST", "/payments", PAYMENT, "c7b2bfda674c2c3c9c059c457f1de47926389e5fcf0afd9c4614e68a997cce58"),
    ("GET", "/payments?idempotency_key=molam-slice-42", b"",
     "8823ef68351daf2f4f9a092aa69adead6f22613b077f6577628dc4b51cb971b6"),
    ("GET", "/events", b"", "0ae23c62ac9f8e98f528744f80dc35468cc4278341e514bce8750e349517c820"),
]
# (status, timestamp, body, expected X-Signature)
RESPONSES = [(201, TIMESTAMP + 1, REPLY, "39272bb80226d6376c3ccb26cc7e217ad1c97211bb3c033320b53da03fd8cc50")]


def test_the_vectors_body_digests_are_sha256() -> None:
    import hashlib

    assert hashlib.sha256(PAYMENT).hexdigest() == PAYMENT_DIGEST
    assert hashlib.sha256(b"").hexdigest() == EMPTY_DIGEST


@pytest.mark.parametrize(("method", "target", "body", "expected"), REQUESTS)
def test_our_signer_gives_the_known_request_signature(method: str, target: str, body: bytes, expected: str) -> None:
    assert sign_request(KEY, method, target, TIMESTAMP, body) == expected
    assert sign_request(KEY, method.lower(), target, TIMESTAMP, body) == expected, "the method is upper-cased"
    assert verify_request(KEY, expected, method, target, str(TIMESTAMP), body, now=TIMESTAMP) is None


@pytest.mark.parametrize(("method", "target", "body", "expected"), REQUESTS)
def test_the_sandbox_bank_verifies_the_known_request_signature(
    method: str, target: str, body: bytes, expected: str
) -> None:
    def problem(signature: str = expected, *, key: bytes = KEY, m: str = method, t: str = target, b: bytes = body,
                ts: str = str(TIMESTAMP), now: float = TIMESTAMP) -> str | None:
        return sandbox_bank.request_problem(key, signature, m, t, ts, b, now=now, max_skew=300)

    assert problem() is None
    # Each part of the canonical string counts: any change is refused.
    flipped = expected[:-1] + ("0" if expected[-1] != "0" else "1")
    assert problem(flipped) == "signature mismatch"
    assert problem(key=KEY + b"x") == "signature mismatch"
    assert problem(t=target + "x") == "signature mismatch"
    assert problem(b=body + b" ") == "signature mismatch"
    assert problem(m="PUT") == "signature mismatch"
    assert problem(ts=str(TIMESTAMP + 1), now=TIMESTAMP + 1) == "signature mismatch"
    assert problem(now=TIMESTAMP + 301) == "timestamp skew 301s exceeds 300s"
    assert problem("é" * 64) == "signature mismatch", "a non-ASCII signature is refused, not an exception"
    assert problem(ts="1e9") == "timestamp is not Unix seconds"


@pytest.mark.parametrize(("status", "timestamp", "body", "expected"), RESPONSES)
def test_responses_are_signed_to_the_known_answer_by_both_sides(
    status: int, timestamp: int, body: bytes, expected: str
) -> None:
    assert sign_response(KEY, status, timestamp, body) == expected
    assert sandbox_bank.reply_signature(KEY, status, timestamp, body) == expected
    assert verify_response(KEY, expected, status, str(timestamp), body)
    assert not verify_response(KEY, expected, status + 1, str(timestamp), body)


def test_the_sandbox_bank_does_not_import_the_products_signing_code() -> None:
    """A peer that verifies our signatures with our signer would agree with any bug in it."""
    source = Path(sandbox_bank.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not {name for name in imported if name.split(".")[0] in ("connectors", "molamd", "actors")}, imported


@pytest.fixture
def kat_bank() -> Iterator[Bank]:
    """The sandbox bank in its own process with the vectors' key, taking their fixed timestamp as fresh."""
    bank = Bank("--secret", KEY.decode(), "--max-skew", "1e12")
    yield bank
    bank.close()


@pytest.mark.parametrize(("method", "target", "body", "expected"), REQUESTS[:2])
def test_the_sandbox_bank_takes_the_known_requests_over_a_socket(
    kat_bank: Bank, method: str, target: str, body: bytes, expected: str
) -> None:
    """The vectors as bytes on the wire: the bank authenticates them (then answers about the payment: the POST's
    body has no creditor, the GET's key no payment), and refuses them with one hex digit changed."""
    def send(signature: str) -> httpx.Response:
        return httpx.request(method, f"{kat_bank.url}{target}", content=body, timeout=5, headers={
            "X-Key-Id": "molamd-demo", "X-Timestamp": str(TIMESTAMP), "X-Signature": signature,
            "Idempotency-Key": "molam-slice-42", "Content-Type": "application/json"})

    answer = send(expected)
    assert answer.status_code == (400 if method == "POST" else 404), answer.text
    assert answer.json()["error"] in ("validation", "not_found")
    assert verify_response(KEY, answer.headers["X-Signature"], answer.status_code, answer.headers["X-Timestamp"],
                           answer.content), "the answer is signed by the spec too"
    refused = send(expected[:-1] + ("0" if expected[-1] != "0" else "1"))
    assert (refused.status_code, refused.json()["message"]) == (401, "signature mismatch")
    assert kat_bank.stats()["auth_failures"] == 1
