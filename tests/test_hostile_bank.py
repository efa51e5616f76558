"""The REST connector against a hostile bank on a real loopback socket: huge bodies, endless streams,
oversized websocket messages and nonsense Retry-After. Each is a bounded BadResponse; nothing is read whole."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal

import pytest
import trio
import trio_websocket

from connectors import (
    BadResponse,
    CallContext,
    PayoutSlice,
    RestConfig,
    RestConnector,
    RestOptions,
    Secret,
)

SLICE = PayoutSlice(
    id=7, payout_id="po-7", idempotency_key="molam-slice-7", amount=Decimal("5000"), currency="XOF", rail="ach",
    debtor_account="SN0120100100123456789012", beneficiary_name="Awa Diop", beneficiary_account="SN08000123456789",
)
CTX = CallContext(trace_id="t", timeout=10.0, payout_slice_id=7)
CAP = 64 * 1024

Reply = Callable[[trio.SocketStream], Awaitable[None]]


class HostilePeer:
    """An HTTP server that reads a request head, then lets ``reply`` write whatever it likes; counts bytes sent."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.sent = 0
        self.port = 0

    async def serve(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self._connection, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]

    async def _connection(self, stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(65536)
            if not data:
                return
            head += data
        counted = _Counting(stream, self)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):  # the client hung up
            await self.reply(counted)  # type: ignore[arg-type]


class _Counting:
    def __init__(self, stream: trio.SocketStream, peer: HostilePeer) -> None:
        self._stream, self._peer = stream, peer

    async def send_all(self, data: bytes) -> None:
        await self._stream.send_all(data)
        self._peer.sent += len(data)


def connector(port: int, **options: object) -> RestConnector:
    config = RestConfig(name="hostile", bank_profile="p", rest=RestOptions(
        base_url=f"http://127.0.0.1:{port}", key_id="k", hmac_secret=Secret("env:X", "s"),
        max_response_size=CAP, **options))  # type: ignore[arg-type]
    return RestConnector(config)


async def call(peer: HostilePeer, operation: str = "health") -> BaseException:
    async with trio.open_nursery() as nursery:
        await peer.serve(nursery)
        c = connector(peer.port)
        await c.open()
        try:
            with pytest.raises(BadResponse) as caught:
                if operation == "health":
                    await c.healthcheck()
                else:
                    await c.send_payment(SLICE, CTX)
        finally:
            await c.aclose()
        nursery.cancel_scope.cancel()
    return caught.value


async def test_a_declared_four_gigabyte_body_is_refused_unread() -> None:
    async def reply(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4000000000\r\n\r\n")
        while True:
            await stream.send_all(b"x" * 65536)

    peer = HostilePeer(reply)
    error = await call(peer)
    assert "Content-Length 4000000000 is over max_response_size" in str(error)
    assert error.reached  # type: ignore[attr-defined]  # the bank answered: it saw the request
    assert peer.sent < 16 * 1024 * 1024  # socket buffers, not the body


async def test_an_endless_chunked_body_stops_at_the_cap() -> None:
    async def reply(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"y" * 8192
        while True:
            await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    peer = HostilePeer(reply)
    error = await call(peer, "send")
    assert "body is over max_response_size 65536" in str(error)
    assert peer.sent < 16 * 1024 * 1024


async def test_a_body_under_the_cap_is_read() -> None:
    body = json.dumps({"id": "p-1", "status": "accepted"}).encode()

    async def reply(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    peer = HostilePeer(reply)
    async with trio.open_nursery() as nursery:
        await peer.serve(nursery)
        c = connector(peer.port, verify_response_signatures=False)
        await c.open()
        try:
            result, _ = await c.send_payment(SLICE, CTX)
        finally:
            await c.aclose()
        nursery.cancel_scope.cancel()
    assert result.provider_ref == "p-1"


@pytest.mark.parametrize("value", [b"inf", b"nan", b"-1"])
async def test_a_nonsense_retry_after_over_the_wire_is_a_bad_response(value: bytes) -> None:
    async def reply(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 429 Too Many\r\nRetry-After: %s\r\nContent-Length: 2\r\n\r\n{}" % value)

    error = await call(HostilePeer(reply), "send")
    assert "is not a delay" in str(error) and not error.reached  # type: ignore[attr-defined]


async def test_an_oversized_pushed_event_is_a_bad_response() -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("z" * (CAP * 4))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        port = server.port
        c = connector(1, events_url=f"ws://127.0.0.1:{port}/events")
        with pytest.raises(BadResponse, match="over max_response_size"):
            await c.stream_events(0, lambda event: None)
        nursery.cancel_scope.cancel()
