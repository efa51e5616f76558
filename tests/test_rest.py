"""The REST connector against httpx.MockTransport: signing, idempotency, and every error mapping."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from connectors import (
    Auth,
    BadResponse,
    CallContext,
    ConnectorError,
    IdempotencyConflict,
    Network,
    PaymentRef,
    PaymentState,
    PayoutSlice,
    RateLimited,
    Rejected,
    RestConfig,
    RestConnector,
    RestOptions,
    Secret,
    ServerError,
    Timeout,
    Validation,
    mask_account,
)
from connectors._signing import sign_response, verify_request

SECRET = b"test-hmac-secret"
SLICE = PayoutSlice(
    id=42, payout_id="po-1", idempotency_key="molam-slice-42", amount=Decimal("150000"), currency="XOF", rail="ach",
    debtor_account="SN0120100100123456789012", beneficiary_name="Awa Diop", beneficiary_account="SN08000123456789",
)
CTX = CallContext(trace_id="trace-1", timeout=5.0, payout_slice_id=42)


def signed(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    ts = int(time.time())
    return httpx.Response(status, content=raw, headers={
        "X-Timestamp": str(ts), "X-Signature": sign_response(SECRET, status, ts, raw), **(headers or {})})


def connector(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> RestConnector:
    config = RestConfig(name="bank-a", bank_profile="p", rest=RestOptions(
        base_url="https://bank.test", key_id="molam", hmac_secret=Secret("env:X", "test-hmac-secret"),
        bearer_token=Secret("env:Y", "bearer-token-value"), **options))
    return RestConnector(config, transport=httpx.MockTransport(handler))


async def test_send_signs_and_carries_the_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return signed(201, {"id": "pay_1", "status": "accepted"})

    c = connector(handler)
    await c.open()
    result, record = await c.send_payment(SLICE, CTX)
    await c.aclose()
    assert result.provider_ref == "pay_1" and result.state is PaymentState.ACCEPTED and not result.replayed
    request = seen[0]
    assert request.headers["Idempotency-Key"] == "molam-slice-42"
    assert request.headers["X-Trace-Id"] == "trace-1" and request.headers["X-Key-Id"] == "molam"
    assert request.headers["Authorization"] == "Bearer bearer-token-value"
    problem = verify_request(SECRET, request.headers["X-Signature"], "POST", "/payments",
                             request.headers["X-Timestamp"], request.content, now=time.time())
    assert problem is None
    body = json.loads(request.content)
    assert body["amount"] == "150000" and body["creditor"]["account"] == "SN08000123456789"
    assert record.outcome == "ok" and record.http_status == 201 and record.payout_slice_id == 42
    audit = json.dumps([record.request, record.response])
    assert "SN08000123456789" not in audit and "SN0120100100123456789012" not in audit
    assert "bearer-token-value" not in audit and "test-hmac-secret" not in audit
    assert record.request is not None and record.request["beneficiary_account"] == "SN08********6789"


async def test_replayed_answer_is_marked() -> None:
    c = connector(lambda r: signed(201, {"id": "pay_1", "status": "settled"}, {"Idempotent-Replayed": "true"}))
    await c.open()
    result, _ = await c.send_payment(SLICE, CTX)
    assert result.replayed and result.state is PaymentState.SETTLED


@pytest.mark.parametrize(("status", "body", "headers", "error", "retryable"), [
    (400, {"error": "validation", "message": "bad amount"}, {}, Validation, False),
    (401, {"error": "unauthorized"}, {}, Auth, False),
    (403, {"error": "forbidden"}, {}, Auth, False),
    (409, {"error": "idempotency_conflict"}, {}, IdempotencyConflict, False),
    (422, {"error": "rejected", "reason_code": "AM04"}, {}, Rejected, False),
    (429, {"error": "rate_limited"}, {"Retry-After": "3"}, RateLimited, True),
    (500, {"error": "boom"}, {}, ServerError, True),
    (503, b"<html>down</html>", {}, ServerError, True),
])
async def test_http_errors_map_to_the_tree(
    status: int, body: Any, headers: dict[str, str], error: type[ConnectorError], retryable: bool
) -> None:
    c = connector(lambda r: signed(status, body, headers))
    await c.open()
    with pytest.raises(error) as info:
        await c.send_payment(SLICE, CTX)
    exc = info.value
    assert exc.retryable is retryable
    assert exc.record is not None and exc.record.http_status == status and exc.record.outcome == "error"
    if isinstance(exc, RateLimited):
        assert exc.retry_after == 3.0
    if isinstance(exc, Rejected):
        assert exc.reason_code == "AM04"


@pytest.mark.parametrize(("raised", "error"), [
    (httpx.ConnectError("refused"), Network),
    (httpx.ReadError("connection reset by peer"), Network),
    (httpx.RemoteProtocolError("server disconnected"), Network),
    (httpx.ReadTimeout("slow"), Timeout),
    (httpx.ConnectTimeout("slow"), Timeout),
])
async def test_transport_errors(raised: Exception, error: type[ConnectorError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    c = connector(handler)
    await c.open()
    with pytest.raises(error) as info:
        await c.send_payment(SLICE, CTX)
    assert info.value.retryable and info.value.record is not None


async def test_garbage_and_bad_signatures_are_unknown_outcomes() -> None:
    garbage = connector(lambda r: signed(201, b'{"id": "pay_\x00'))
    await garbage.open()
    with pytest.raises(BadResponse) as info:
        await garbage.send_payment(SLICE, CTX)
    assert info.value.retryable
    forged = connector(lambda r: httpx.Response(201, json={"id": "pay_1", "status": "accepted"},
                                                headers={"X-Timestamp": "1", "X-Signature": "00"}))
    await forged.open()
    with pytest.raises(BadResponse, match="signature"):
        await forged.send_payment(SLICE, CTX)
    odd = connector(lambda r: signed(201, {"id": "pay_1", "status": "teleported"}))
    await odd.open()
    with pytest.raises(BadResponse, match="unknown payment status"):
        await odd.send_payment(SLICE, CTX)
    unsigned_ok = connector(lambda r: httpx.Response(201, json={"id": "pay_1", "status": "accepted"}),
                            verify_response_signatures=False)
    await unsigned_ok.open()
    assert (await unsigned_ok.send_payment(SLICE, CTX))[0].provider_ref == "pay_1"


async def test_status_by_key_by_reference_and_not_found() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/payments/pay_9":
            return signed(200, {"id": "pay_9", "status": "rejected", "reason_code": "AC04"})
        if request.url.params.get("idempotency_key") == "known":
            return signed(200, {"id": "pay_1", "status": "settled"})
        return signed(404, {"error": "not_found"})

    c = connector(handler)
    await c.open()
    status, record = await c.payment_status(PaymentRef(idempotency_key="known"), CTX)
    assert status.state is PaymentState.SETTLED and status.provider_ref == "pay_1" and record.outcome == "ok"
    status, _ = await c.payment_status(PaymentRef(idempotency_key="x", provider_ref="pay_9"), CTX)
    assert status.state is PaymentState.REJECTED and status.reason_code == "AC04"
    status, record = await c.payment_status(PaymentRef(idempotency_key="unknown"), CTX)
    assert status.state is PaymentState.NOT_FOUND and record.http_status == 404


async def test_health_and_closed_connector() -> None:
    c = connector(lambda r: signed(200, {"status": "ok"}))
    with pytest.raises(Network, match="not open"):
        await c.healthcheck()
    await c.open()
    health = await c.healthcheck()
    assert health.ok and "200" in health.detail
    await c.aclose()
    await c.aclose()


def test_mask_account() -> None:
    assert mask_account(None) is None
    assert mask_account("123") == "****"
    assert mask_account("12345678") == "****5678"
    assert mask_account("SN0120100100123456789012") == "SN01****************9012"


@pytest.mark.parametrize(("amount", "currency", "wire"), [
    ("1500.0000", "XOF", "1500"), ("12.5", "EUR", "12.50"), ("1E+3", "XOF", "1000"), ("0.125", "KWD", "0.125")])
async def test_amounts_go_out_with_the_currency_exponent(amount: str, currency: str, wire: str) -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return signed(201, {"id": "pay_1", "status": "accepted"})

    c = connector(handler)
    await c.open()
    try:
        slice_ = msgspec_replace(SLICE, amount=Decimal(amount), currency=currency)
        await c.send_payment(slice_, CTX)
    finally:
        await c.aclose()
    assert sent[0]["amount"] == wire


async def test_an_amount_finer_than_its_currency_is_refused_before_sending() -> None:
    calls: list[httpx.Request] = []
    c = connector(lambda r: calls.append(r) or signed(201, {}))  # type: ignore[func-returns-value]
    await c.open()
    try:
        with pytest.raises(Validation, match="more decimals than XOF has"):
            await c.send_payment(msgspec_replace(SLICE, amount=Decimal("10.5")), CTX)
    finally:
        await c.aclose()
    assert calls == []


async def send_failing(handler: Callable[[httpx.Request], httpx.Response]) -> ConnectorError:
    """The error one payment send raises against ``handler``."""
    c = connector(handler)
    await c.open()
    try:
        with pytest.raises(ConnectorError) as caught:
            await c.send_payment(SLICE, CTX)
    finally:
        await c.aclose()
    return caught.value


@pytest.mark.parametrize(("header", "seconds"), [("120", 120), ("1e9", 1e9), ("soon", None)])
async def test_retry_after_seconds_and_nonsense(header: str, seconds: float | None) -> None:
    error = await send_failing(lambda r: signed(429, {"error": "rate_limited"}, {"Retry-After": header}))
    assert isinstance(error, RateLimited) and error.retry_after == seconds and not error.reached


@pytest.mark.parametrize("header", ["inf", "nan", "-5"])
async def test_an_infinite_or_negative_retry_after_is_a_bad_response(header: str) -> None:
    error = await send_failing(lambda r: signed(429, {"error": "rate_limited"}, {"Retry-After": header}))
    assert isinstance(error, BadResponse) and not error.reached and "is not a delay" in str(error)


async def test_retry_after_as_an_http_date() -> None:
    import email.utils

    when = email.utils.formatdate(time.time() + 90, usegmt=True)
    error = await send_failing(lambda r: signed(429, {"error": "rate_limited"}, {"Retry-After": when}))
    assert isinstance(error, RateLimited) and error.retry_after is not None and 85 <= error.retry_after <= 91


async def test_a_refused_connection_provably_did_not_reach_the_bank() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    error = await send_failing(handler)
    assert isinstance(error, Network) and not error.reached


def msgspec_replace(value: PayoutSlice, **changes: Any) -> PayoutSlice:
    import msgspec

    return msgspec.structs.replace(value, **changes)
