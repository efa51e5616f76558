"""The REST connector's decoding of what a bank sends (issue 20, found by fuzzing): bodies nested past any sense,
signature headers that are not ASCII, pushed events whose fields are of the wrong type or size. Each is the
connector's typed error naming what was wrong, and a bad pushed event is dropped (and logged), not the stream."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from connectors import (
    BadResponse,
    ConnectorError,
    PaymentEvent,
    PaymentRef,
    RateLimited,
    RestConfig,
    RestConnector,
    RestOptions,
    Secret,
    ServerError,
    Validation,
)
from tests.test_rest import CTX, SLICE, connector, signed

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000


async def test_an_answer_with_a_lone_surrogate_is_a_bad_response() -> None:
    c = connector(lambda r: signed(201, b'{"id": "p\\ud800", "status": "accepted"}'))
    await c.open()
    with pytest.raises(BadResponse, match="lone surrogate"):
        await c.send_payment(SLICE, CTX)


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT, b'{"id": "p", "status": ' + DEEP + b"}"])
async def test_a_deeply_nested_answer_is_a_bad_response(body: bytes) -> None:
    c = connector(lambda r: signed(201, body))
    await c.open()
    with pytest.raises(BadResponse, match="nested too deep") as info:
        await c.send_payment(SLICE, CTX)
    assert info.value.record is not None and info.value.record.outcome == "error"


@pytest.mark.parametrize(("status", "error"), [(500, ServerError), (400, Validation), (429, RateLimited)])
async def test_a_deeply_nested_error_body_keeps_the_status_mapping(status: int, error: type[Exception]) -> None:
    c = connector(lambda r: signed(status, DEEP, {"Retry-After": "1"}))
    await c.open()
    with pytest.raises(error):
        await c.send_payment(SLICE, CTX)


async def test_a_deeply_nested_reports_answer_is_a_bad_response() -> None:
    c = connector(lambda r: signed(200, b'{"reports": ' + DEEP + b"}"))
    await c.open()
    with pytest.raises(BadResponse, match="nested too deep"):
        await c.list_reports(CTX)


@pytest.mark.parametrize("value", ["é" * 64, "\u0663" * 64, "ab\u00ffcd"])
async def test_a_signature_header_that_is_not_ascii_is_a_bad_response(value: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        good = signed(201, {"id": "p", "status": "accepted"})
        headers = [(k, v) for k, v in good.headers.raw if k.lower() != b"x-signature"]
        return httpx.Response(201, content=good.content, headers=[*headers, (b"X-Signature", value.encode())])

    c = connector(handler)
    await c.open()
    with pytest.raises(BadResponse, match="X-Signature is not ASCII"):
        await c.payment_status(PaymentRef(idempotency_key="k"), CTX)


async def test_a_timestamp_header_that_is_not_ascii_digits_is_a_bad_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        good = signed(201, {"id": "p", "status": "accepted"})
        headers = [(k, v) for k, v in good.headers.raw if k.lower() != b"x-timestamp"]
        return httpx.Response(201, content=good.content, headers=[*headers, (b"X-Timestamp", "\u0661\u0667".encode())])

    c = connector(handler)
    await c.open()
    with pytest.raises(BadResponse, match="X-Timestamp"):
        await c.send_payment(SLICE, CTX)


BAD_EVENTS: list[str | bytes] = [
    '{"seq": 1e400, "id": "p1", "status": "settled"}',  # OverflowError once, outside what the loop catches
    '{"seq": 1.5, "id": "p1", "status": "settled"}',  # was read as 1
    '{"seq": true, "id": "p1", "status": "settled"}',
    '{"seq": -3, "id": "p1", "status": "settled"}',
    '{"seq": 99999999999999999999999, "id": "p1", "status": "settled"}',
    '{"seq": "12", "id": "p1", "status": "settled"}',
    '{"seq": 1, "id": {"x": 1}, "status": "settled"}',  # was str()-ed into a provider ref
    '{"seq": 1, "id": "p1", "status": "settled", "reason_code": [1]}',
    '{"seq": 1, "id": "p1", "status": "paid-ish"}',
    '{"seq": 1, "id": "p1", "status": "settled", "idempotency_key": 5}',
    DEEP.decode(),
    '{"seq": 1, "id": "p1", "status": "settled", "x": ' + DEEP.decode() + "}",
    "[1, 2]",
    '{"seq": 1, "id": "p\\ud800", "status": "settled"}',  # a lone surrogate: no text, no database takes it
    '{"s\\udfffq": 1, "seq": 1, "id": "p1", "status": "settled"}',  # msgspec raised UnicodeEncodeError on the key
    "not json",
    b"\xff\xfe binary",
]


async def test_bad_pushed_events_are_dropped_and_logged_and_the_stream_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        for message in BAD_EVENTS:
            await ws.send_message(message)
        await ws.send_message(json.dumps({"seq": 7, "id": "p7", "status": "settled", "idempotency_key": "k7"}))
        await ws.aclose()

    delivered: list[PaymentEvent] = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        c = events_connector(server.port)
        with caplog.at_level(logging.WARNING, logger="molamd.connector.rest"), pytest.raises(Exception) as ended:
            await c.stream_events(0, delivered.append)
        nursery.cancel_scope.cancel()
    assert [(e.seq, e.provider_ref, e.idempotency_key) for e in delivered] == [(7, "p7", "k7")]
    assert type(ended.value).__name__ == "Network", ended.value  # the stream ended because the bank closed it
    dropped = [r for r in caplog.records if "pushed event dropped" in r.getMessage()]
    assert len(dropped) == len(BAD_EVENTS), [r.getMessage() for r in caplog.records]
    assert "seq" in dropped[0].getMessage() and "nested too deep" in dropped[10].getMessage()
    assert all(len(r.getMessage()) < 1000 for r in dropped)
    assert c.events_dropped == len(BAD_EVENTS)


def events_connector(port: int, **options: Any) -> RestConnector:
    config = RestConfig(name="pushy", bank_profile="p", rest=RestOptions(
        base_url=f"http://127.0.0.1:{port}", key_id="k", hmac_secret=Secret("env:X", "s"),
        events_url=f"ws://127.0.0.1:{port}/events", **options))
    return RestConnector(config)


async def test_a_retry_after_in_other_digits_is_no_delay() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        good = signed(429, {"error": "rate_limited"})
        return httpx.Response(429, content=good.content,
                              headers=[*good.headers.raw, (b"Retry-After", "\u0669\u0669\u0669\u0669".encode())])

    c = connector(handler)
    await c.open()
    with pytest.raises(RateLimited) as info:
        await c.send_payment(SLICE, CTX)
    assert info.value.retry_after is None


@pytest.mark.parametrize(("body", "says"), [
    ({"id": "p" * 5000, "status": "accepted"}, "id is 5,000 characters"),
    ({"id": ["p"], "status": "accepted"}, "id is a list"),
    ({"id": True, "status": "accepted"}, "id is a bool"),
    ({"id": "", "status": "accepted"}, "id is 0 characters"),
    ({"id": "p", "status": "accepted", "reason_code": "R" * 36}, "reason_code is 36 characters"),
    ({"id": "p", "status": 5}, "payment status is a int"),
])
async def test_an_answer_with_an_odd_id_or_reason_is_a_bad_response(body: dict[str, Any], says: str) -> None:
    c = connector(lambda r: signed(201, body))
    await c.open()
    with pytest.raises(BadResponse, match=says):
        await c.send_payment(SLICE, CTX)


async def test_a_numeric_payment_id_is_read_as_text() -> None:
    c = connector(lambda r: signed(201, {"id": 12345, "status": "accepted"}))
    await c.open()
    result, _ = await c.send_payment(SLICE, CTX)
    assert result.provider_ref == "12345"


async def test_a_rejection_keeps_its_reason_code_short() -> None:
    c = connector(lambda r: signed(422, {"error": "rejected", "reason_code": "AM04" * 10_000}))
    await c.open()
    with pytest.raises(Exception) as info:
        await c.send_payment(SLICE, CTX)
    assert getattr(info.value, "reason_code", None) == ("AM04" * 9)[:35]


@pytest.mark.parametrize(("reply", "error", "says"), [
    (b"garbage\r\n\r\n", "BadResponse", "not a websocket handshake"),  # h11's LocalProtocolError escaped
    (b"\x00" * 10_000, "BadResponse", "not a websocket handshake"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n"
     b"\r\n", "BadResponse", "not a websocket handshake"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "BadResponse", "HTTP 200"),  # was Auth
    (b"HTTP/1.1 401 No\r\nContent-Length: 0\r\n\r\n", "Auth", "HTTP 401"),
    (b"HTTP/1.1 503 Down\r\nContent-Length: 0\r\n\r\n", "ServerError", "HTTP 503"),
])
async def test_a_broken_event_stream_handshake_is_a_connector_error(reply: bytes, error: str, says: str) -> None:
    from tests.test_hostile_bank import HostilePeer

    async def answer(stream: trio.SocketStream) -> None:
        await stream.send_all(reply)
        await trio.sleep(1)

    peer = HostilePeer(answer)
    async with trio.open_nursery() as nursery:
        await peer.serve(nursery)
        with trio.fail_after(5), pytest.raises(ConnectorError) as info:
            await events_connector(peer.port).stream_events(0, lambda event: None)
        nursery.cancel_scope.cancel()
    assert type(info.value).__name__ == error and says in str(info.value), info.value


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_decompress_is_a_bad_response(encoding: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        good = signed(201, b"0123456789")
        return httpx.Response(201, content=b"0123456789", headers=[*good.headers.raw, (b"Content-Encoding",
                                                                                       encoding.encode())])

    c = connector(handler)
    await c.open()
    with pytest.raises(BadResponse, match="DecodingError") as info:  # httpx.DecodingError escaped untyped
        await c.send_payment(SLICE, CTX)
    assert info.value.reached and info.value.record is not None


@pytest.mark.parametrize("ref", ["a b/../\n?x#y", "../../admin", "p?idempotency_key=other", "p%2F", "..", "."])
async def test_a_provider_ref_is_one_path_segment(ref: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return signed(200, {"id": "p", "status": "settled"})

    c = connector(handler)
    await c.open()
    await c.payment_status(PaymentRef(idempotency_key="k", provider_ref=ref), CTX)  # InvalidURL escaped for \n
    [request] = seen
    path = request.url.raw_path.decode()
    assert path.count("/") == 2 and "?" not in path and path.startswith("/payments/"), path


async def test_a_bad_offered_report_is_dropped_and_the_others_are_taken(caplog: pytest.LogCaptureFixture) -> None:
    good = {"name": "pain002-1.xml", "content": "PERvY3VtZW50Lz4="}
    bad: list[Any] = [
        {"name": "x\x00y", "content": "AA=="},  # a NUL no database column takes
        {"name": "../../etc/passwd", "content": "AA=="},
        {"name": "n" * 300, "content": "AA=="},
        {"name": ["a"], "content": "AA=="},
        {"name": "ok.xml", "content": "not base64!"},
        {"name": "ok2.xml", "content": 5},
        "a string",
        {"content": "AA=="},
    ]
    c = connector(lambda r: signed(200, {"reports": [*bad[:4], good, *bad[4:]]}))
    await c.open()
    with caplog.at_level(logging.WARNING, logger="molamd.connector.rest"):
        listed = await c.list_reports(CTX)
    assert listed == [("pain002-1.xml", b"<Document/>")]
    assert c.reports_dropped == len(bad)
    assert len([r for r in caplog.records if "offered report dropped" in r.getMessage()]) == len(bad)
    assert all("\x00" not in r.getMessage() and len(r.getMessage()) < 600 for r in caplog.records)


async def test_a_reports_answer_without_a_list_is_a_bad_response() -> None:
    c = connector(lambda r: signed(200, {"reports": {"a": 1}}))
    await c.open()
    with pytest.raises(BadResponse, match="no list under 'reports'"):
        await c.list_reports(CTX)
