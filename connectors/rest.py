"""The ``rest`` connector kind: a bank's JSON payment API over HTTPS, via httpx under trio.

Calls: ``POST /payments`` (``Idempotency-Key`` header: the same key always means the same payment),
``GET /payments?idempotency_key=K`` or ``GET /payments/{id}`` for status, ``GET /health``. Every request is
signed (HMAC-SHA256, see ``_signing``) and carries a bearer token if configured and ``X-Trace-Id``; mTLS with a
client certificate and a pinned CA when configured; response signatures are verified when the bank signs.

Every failure is mapped to the connector error tree at this adapter: 400/422 Validation, 401/403 Auth,
409 IdempotencyConflict, 429 RateLimited (with Retry-After), 5xx ServerError, garbage or a bad signature
BadResponse, timeouts Timeout, refused/reset connections Network. A response body (or a pushed event) longer
than ``max_response_size`` is BadResponse: it is streamed and the reading stops at the cap, whatever the bank's
Content-Length says. The transport is a seam: tests pass an ``httpx.MockTransport``.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar
from urllib.parse import quote, urlencode, urlsplit

import h11
import httpx
import msgspec
import trio
import trio_websocket
import wsproto.utilities

from ._contract import CallContext, Capability, ConnectorConfig, Health
from ._errors import (
    Auth,
    BadResponse,
    ConnectorError,
    IdempotencyConflict,
    Network,
    RateLimited,
    Rejected,
    ServerError,
    Timeout,
    Validation,
)
from ._money import AmountError, render_amount
from ._payments import (
    CallRecord,
    PaymentEvent,
    PaymentRef,
    PaymentState,
    PaymentStatus,
    PayoutSlice,
    SendResult,
    mask_account,
)
from ._rest_wire import (
    MAX_CODE,
    WireError,
    decode_event,
    loads,
    optional_text,
    printable,
    provider_ref,
    report_entry,
    state,
)
from ._signing import sign_request, verify_response
from ._values import Duration, Secret

_MAX_ERROR_TEXT = 300
logger = logging.getLogger("molamd.connector.rest")
# httpcore's pool matches requests to connections in a pass that grows with the square of the pool size
# (encode/httpcore#1035, still open): with 64 connections in one pool, a loaded client spends most of its
# CPU there. Several small pools, used in turn, keep each pass short.
_CONNECTIONS_PER_POOL = 8


class RestOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[connectors.rest]``."""

    base_url: str
    key_id: str
    hmac_secret: Secret
    bearer_token: Secret | None = None
    connect_timeout: Duration = msgspec.field(default_factory=lambda: Duration("3s"))
    verify_response_signatures: bool = True
    max_connections: int = 64
    max_response_size: int = 1024 * 1024  # bytes of a response body (or a pushed event) read before BadResponse
    client_cert: str | None = None
    client_key: str | None = None
    # Or a short-lived client certificate from Vault's PKI engine ("MOUNT/issue/ROLE"), for client_common_name,
    # renewed before it expires and taken by the next TLS handshake.
    client_pki: str | None = None
    client_common_name: str | None = None
    ca_file: str | None = None
    events_url: str | None = None  # ws(s)://.../events: the bank pushes status changes; resumes by sequence


class RestConfig(ConnectorConfig, frozen=True, kw_only=True, tag="rest"):
    rest: RestOptions


# Where a connector's TLS context comes from when it is not built from files (it may change its certificate later).
TlsSource = Callable[[], Awaitable[ssl.SSLContext]]

# An event stream that says nothing for this long is dead, whatever TCP thinks: reconnect and resume.
EVENTS_IDLE_TIMEOUT = 60.0
EVENTS_PING_INTERVAL = 20.0


class RestConnector:
    kind: ClassVar[str] = "rest"
    offers: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.SEND_PAYMENT, Capability.PAYMENT_STATUS, Capability.HEALTH, Capability.PUSH_EVENTS}
    )

    def __init__(self, config: RestConfig, transport: httpx.AsyncBaseTransport | None = None, *,
                 tls: TlsSource | None = None) -> None:
        self.config = config
        self._tls = tls  # the TLS context comes from outside (a client certificate from Vault's PKI)
        # PUSH_EVENTS only where the bank has an event stream configured.
        self.capabilities = self.offers - (set() if config.rest.events_url else {Capability.PUSH_EVENTS})
        self.name = config.name
        self._options = config.rest
        self._transport = transport
        self._clients: list[httpx.AsyncClient] = []
        self._turn = 0
        self._secret = config.rest.hmac_secret.reveal().encode()
        self.events_dropped = 0  # pushed events that could not be read, each logged
        self.reports_dropped = 0  # offered reports whose name or content could not be read, each logged

    # -- lifecycle ----------------------------------------------------------------------------------

    async def open(self) -> None:
        opts = self._options
        verify = await self._tls() if self._tls is not None else _tls_context(opts.ca_file, opts.client_cert,
                                                                                 opts.client_key)
        timeout = httpx.Timeout(self.config.limits.call_timeout.seconds, connect=opts.connect_timeout.seconds)
        pools = max(1, -(-opts.max_connections // _CONNECTIONS_PER_POOL))
        per_pool = -(-opts.max_connections // pools)
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        self._clients = [
            httpx.AsyncClient(
                base_url=opts.base_url, timeout=timeout, limits=limits, verify=verify, transport=self._transport,
                headers={"User-Agent": "molamd"},
            )
            for _ in range(pools)
        ]

    async def aclose(self) -> None:
        clients, self._clients = self._clients, []
        with trio.CancelScope(shield=True):
            for client in clients:
                await client.aclose()

    # -- calls ---------------------------------------------------------------------------------------

    async def send_payment(self, slice: PayoutSlice, ctx: CallContext) -> tuple[SendResult, CallRecord]:
        try:
            amount = render_amount(slice.amount, slice.currency)
        except AmountError as exc:
            raise Validation(self.name, f"payout slice {slice.id}: {exc}") from exc
        body = json.dumps({
            "reference": f"{slice.payout_id}/{slice.id}",
            "amount": amount,
            "currency": slice.currency,
            "rail": slice.rail,
            "debtor_account": slice.debtor_account,
            "creditor": {"name": slice.beneficiary_name, "account": slice.beneficiary_account,
                         "bic": slice.beneficiary_bic},
            "remittance_info": slice.remittance_info,
        }, separators=(",", ":")).encode()
        audit_request: dict[str, object] = {
            "method": "POST", "path": "/payments", "idempotency_key": slice.idempotency_key,
            "amount": amount, "currency": slice.currency, "rail": slice.rail,
            "debtor_account": mask_account(slice.debtor_account),
            "beneficiary_account": mask_account(slice.beneficiary_account),
        }
        response, data, record = await self._call(
            "send_payment", "POST", "/payments", body, ctx, audit_request,
            extra_headers={"Idempotency-Key": slice.idempotency_key},
        )
        try:
            result = SendResult(
                provider_ref=provider_ref(data),
                state=state(data["status"]),
                reason_code=optional_text(data, "reason_code", MAX_CODE),
                replayed=response.headers.get("Idempotent-Replayed") == "true",
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise self._fail(BadResponse(self.name, f"unexpected payment answer: {exc}"), record) from exc
        return result, record

    async def payment_status(self, ref: PaymentRef, ctx: CallContext) -> tuple[PaymentStatus, CallRecord]:
        if ref.provider_ref:
            target = f"/payments/{_segment(ref.provider_ref)}"
        else:
            target = "/payments?" + urlencode({"idempotency_key": ref.idempotency_key})
        audit_request: dict[str, object] = {
            "method": "GET", "path": target.split("?")[0], "idempotency_key": ref.idempotency_key}
        try:
            _, data, record = await self._call("payment_status", "GET", target, b"", ctx, audit_request)
        except Validation as exc:
            if exc.record is not None and exc.record.http_status == 404:
                return PaymentStatus(state=PaymentState.NOT_FOUND), exc.record
            raise
        try:
            status = PaymentStatus(
                state=state(data["status"]), provider_ref=provider_ref(data),
                reason_code=optional_text(data, "reason_code", MAX_CODE), reason=optional_text(data, "reason"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise self._fail(BadResponse(self.name, f"unexpected status answer: {exc}"), record) from exc
        return status, record

    async def stream_events(self, since: int, deliver: Callable[[PaymentEvent], None]) -> None:
        """Receive pushed status changes after sequence ``since`` until the stream breaks.

        Raises Network (or Auth) when it ends; the caller reconnects from the last sequence it saw.
        Cancellation closes the websocket.
        """
        url = self._options.events_url
        if url is None:
            raise Validation(self.name, "this bank pushes no events (rest.events_url is not set)")
        timestamp = int(time.time())
        path = urlsplit(url).path or "/"
        signature = sign_request(self._secret, "GET", path, timestamp, b"")
        query = urlencode({"since": since, "key_id": self._options.key_id, "ts": timestamp, "sig": signature})
        try:
            async with trio_websocket.open_websocket_url(
                    f"{url}?{query}", connect_timeout=10, max_message_size=self._options.max_response_size) as ws:
                while True:
                    message = await _next_message(ws, self.name)
                    try:
                        event = decode_event(message)
                    except WireError as exc:
                        # one bad event is not a broken stream: resuming would only fetch it again. Dropped, it
                        # is left to the status follower's polls
                        self.events_dropped += 1
                        logger.warning("%s: pushed event dropped: %s", self.name, exc)
                        continue
                    deliver(event)
        except trio_websocket.ConnectionRejected as exc:
            raise _rejected(self.name, exc.status_code) from exc
        except trio_websocket.HandshakeError as exc:  # the handshake or closing handshake timed out
            raise Network(self.name, f"event stream: {type(exc).__name__}") from exc
        except (h11.ProtocolError, wsproto.utilities.ProtocolError) as exc:
            raise BadResponse(self.name, f"event stream: the bank's answer is not a websocket handshake: "
                                         f"{printable(str(exc)[:_MAX_ERROR_TEXT])}") from exc
        except trio_websocket.ConnectionClosed as exc:
            # 1009 MESSAGE_TOO_BIG: we closed it, at max_response_size
            if exc.reason is not None and exc.reason.code == 1009:
                raise BadResponse(self.name, f"pushed event over max_response_size "
                                             f"{self._options.max_response_size}") from exc
            raise Network(self.name, f"event stream ended: {exc.reason}") from exc
        except (OSError, trio.TooSlowError) as exc:
            raise Network(self.name, f"event stream ended: {type(exc).__name__}: {exc}") from exc

    # -- payment files (the REST transport of a file channel) ---------------------------------------

    async def upload_file(self, name: str, content: bytes, key: str, ctx: CallContext) -> tuple[bool, CallRecord]:
        """POST /files: a payment file's bytes under its MsgId as idempotency key; True when the bank answered
        from its idempotency record (it had the file already)."""
        audit_request: dict[str, object] = {"method": "POST", "path": "/files", "file": name, "bytes": len(content),
                                            "idempotency_key": key}
        response, _, record = await self._call("upload", "POST", "/files", content, ctx, audit_request,
                                               extra_headers={"Idempotency-Key": key, "X-File-Name": name},
                                               content_type="application/xml")
        return response.headers.get("Idempotent-Replayed") == "true", record

    async def list_reports(self, ctx: CallContext) -> list[tuple[str, bytes]]:
        """GET /files/reports: the status reports waiting for us, as (name, bytes)."""
        _, data, _ = await self._call("reports", "GET", "/files/reports", b"", ctx,
                                      {"method": "GET", "path": "/files/reports"})
        entries = data.get("reports")
        if not isinstance(entries, list):
            raise BadResponse(self.name, "unexpected reports answer: no list under 'reports'")
        listed = []
        for entry in entries:
            try:
                listed.append(report_entry(entry))
            except WireError as exc:  # that one entry, not the others: a bad first entry stopped every pass
                self.reports_dropped += 1
                logger.warning("%s: offered report dropped: %s", self.name, exc)
        return listed

    async def ack_report(self, name: str, ctx: CallContext) -> None:
        """POST /files/reports/NAME/ack: stored on our side, the bank may stop offering it."""
        target = f"/files/reports/{quote(name, safe='')}/ack"
        await self._call("report_ack", "POST", target, b"", ctx, {"method": "POST", "path": target})

    async def healthcheck(self) -> Health:
        start = trio.current_time()
        ctx = CallContext(trace_id="health", timeout=self.config.limits.call_timeout.seconds)
        await self._call("health", "GET", "/health", b"", ctx, {"method": "GET", "path": "/health"})
        return Health(ok=True, latency_seconds=trio.current_time() - start, detail="GET /health 200")

    # -- the one place that talks HTTP --------------------------------------------------------------

    async def _call(
        self, operation: str, method: str, target: str, body: bytes, ctx: CallContext,
        audit_request: dict[str, object], extra_headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[httpx.Response, dict[str, Any], CallRecord]:
        if not self._clients:
            raise Network(self.name, "connector is not open")
        self._turn = (self._turn + 1) % len(self._clients)
        client = self._clients[self._turn]
        timestamp = int(time.time())
        headers = {
            "Content-Type": content_type,
            "X-Key-Id": self._options.key_id,
            "X-Timestamp": str(timestamp),
            "X-Signature": sign_request(self._secret, method, target, timestamp, body),
            "X-Trace-Id": ctx.trace_id,
            **(extra_headers or {}),
        }
        if self._options.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self._options.bearer_token.reveal()}"
        start = trio.current_time()

        def record(outcome: str, *, code: str | None = None, status: int | None = None,
                   response: dict[str, object] | None = None) -> CallRecord:
            return CallRecord(
                connector=self.name, trace_id=ctx.trace_id, operation=operation,
                duration_seconds=max(0.0, trio.current_time() - start), outcome=outcome, error_code=code,
                http_status=status, payout_slice_id=ctx.payout_slice_id, request=audit_request, response=response,
            )

        try:
            with trio.fail_after(ctx.timeout):
                response, raw = await self._exchange(client, method, target, body, headers)
        except _TooLarge as exc:
            raise self._fail(BadResponse(self.name, f"{method} {target}: {exc}"),
                             record("error", code="bad_response", status=exc.status)) from exc
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # No connection in time: no byte of the request left us.
            raise self._fail(Timeout(self.name, f"{method} {target}: not sent: {type(exc).__name__}: {exc}",
                                     reached=False), record("error", code="timeout")) from exc
        except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
            # Refused, unreachable, TLS or DNS failure: no byte of the request left us.
            raise self._fail(Network(self.name, f"{method} {target}: not sent: {type(exc).__name__}: {exc}",
                                     reached=False), record("error", code="network")) from exc
        except (trio.TooSlowError, httpx.TimeoutException) as exc:
            raise self._fail(Timeout(self.name, f"{method} {target}: no answer within {ctx.timeout:g}s"),
                             record("error", code="timeout")) from exc
        except httpx.TransportError as exc:
            raise self._fail(Network(self.name, f"{method} {target}: {type(exc).__name__}: {exc}"),
                             record("error", code="network")) from exc
        except httpx.DecodingError as exc:  # a Content-Encoding the body does not match: answered, unreadable
            raise self._fail(BadResponse(self.name, f"{method} {target}: body does not decode: DecodingError: "
                                                    f"{printable(str(exc)[:_MAX_ERROR_TEXT])}"),
                             record("error", code="bad_response")) from exc
        except httpx.InvalidURL as exc:  # built, never sent
            raise self._fail(Validation(self.name, f"{method} {target[:_MAX_ERROR_TEXT]!r}: not sent: {exc}"),
                             record("error", code="validation")) from exc
        error = self._status_error(response, raw, method, target)
        unsigned = self._unsigned(response, raw) if self._options.verify_response_signatures else None
        if error is None and unsigned is not None:
            error = BadResponse(self.name, f"{method} {target}: response signature {unsigned}")
        data: dict[str, Any] = {}
        if error is None and raw:
            try:
                parsed = loads(raw)
            except WireError as exc:
                error = BadResponse(self.name, f"{method} {target}: answer is not a JSON object: {exc}")
            else:
                if isinstance(parsed, dict):
                    data = parsed
                else:
                    error = BadResponse(self.name, f"{method} {target}: answer is not a JSON object")
        if error is not None:
            text = printable(raw[:_MAX_ERROR_TEXT * 4].decode("utf-8", "replace")[:_MAX_ERROR_TEXT])
            raise self._fail(error, record("error", code=error.code, status=response.status_code,
                                           response={"status": response.status_code, "body": text}))
        summary: dict[str, object] = {k: data[k] for k in ("id", "status", "reason_code") if k in data}
        return response, data, record("ok", status=response.status_code,
                                      response={"status": response.status_code, **summary})

    async def _exchange(self, client: httpx.AsyncClient, method: str, target: str, body: bytes,
                        headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
        """Send, then read the body up to ``max_response_size``; raises _TooLarge past it."""
        cap = self._options.max_response_size
        request = client.build_request(method, target, content=body, headers=headers)
        response = await client.send(request, stream=True)
        try:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > cap:
                raise _TooLarge(f"HTTP {response.status_code}: Content-Length {declared} is over "
                                f"max_response_size {cap}", response.status_code)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise _TooLarge(f"HTTP {response.status_code}: body is over max_response_size {cap}",
                                    response.status_code)
                chunks.append(chunk)
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()
        return response, b"".join(chunks)

    def _status_error(self, response: httpx.Response, raw: bytes, method: str, target: str) -> ConnectorError | None:
        status = response.status_code
        if status < 400:
            return None
        where = f"{method} {target}: HTTP {status}"
        body = _json(raw)  # parsed once; a bank's text is shown escaped (it ends up in logs and rows)
        message = body.get("message")
        detail = f": {printable(str(message)[:_MAX_ERROR_TEXT])}" if message else ""
        if status == 429:
            try:
                retry_after = _retry_after(response)
            except ValueError as exc:
                return BadResponse(self.name, f"{where}: {exc}", reached=False)
            return RateLimited(self.name, f"{where}{detail}", retry_after=retry_after)
        if status in (401, 403):
            return Auth(self.name, f"{where}{detail}")
        if status == 409:
            return IdempotencyConflict(self.name, f"{where}{detail}")
        if status == 422 and body.get("error") == "rejected":
            reason_code = printable(str(body.get("reason_code") or "UNKNOWN")[:MAX_CODE])
            return Rejected(self.name, f"{where}{detail}", reason_code=reason_code)
        if status >= 500:
            return ServerError(self.name, f"{where}{detail}", http_status=status)
        return Validation(self.name, f"{where}{detail}")

    def _unsigned(self, response: httpx.Response, raw: bytes) -> str | None:
        """Why the response's signature does not verify, or None when it does."""
        signature = response.headers.get("X-Signature")
        timestamp = response.headers.get("X-Timestamp")
        if not signature or not timestamp:
            return "does not verify: no X-Signature or X-Timestamp header"
        if not signature.isascii():  # hmac.compare_digest raises TypeError on such a str
            return "does not verify: X-Signature is not ASCII"
        if not (timestamp.isascii() and timestamp.isdigit()):  # int() reads Arabic-Indic digits too
            return "does not verify: X-Timestamp is not a number of seconds"
        if not verify_response(self._secret, signature, response.status_code, timestamp, raw):
            return "does not verify"
        return None

    @staticmethod
    def _fail(error: ConnectorError, record: CallRecord) -> ConnectorError:
        error.record = record
        return error


def _segment(text: str) -> str:
    """``text`` as one URL path segment: the bank's id is its data, never a path ("../admin") or a query."""
    quoted = quote(text, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _rejected(name: str, status: int) -> ConnectorError:
    """The event stream's handshake answered with an HTTP status instead of switching protocols."""
    where = f"event stream refused: HTTP {status}"
    if status in (401, 403):
        return Auth(name, where)
    if status >= 500:
        return ServerError(name, where, http_status=status)
    return BadResponse(name, where)


class _TooLarge(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _json(raw: bytes) -> dict[str, Any]:
    try:
        data = loads(raw)
    except WireError:
        return {}
    return data if isinstance(data, dict) else {}


async def _next_message(ws: trio_websocket.WebSocketConnection, name: str) -> str | bytes:
    """The next event; a quiet stream is pinged every EVENTS_PING_INTERVAL, and one whose peer does not answer
    within EVENTS_IDLE_TIMEOUT is dead (Network), whatever TCP thinks. Waiting for a message is cancel-safe."""
    while True:
        with trio.move_on_after(EVENTS_PING_INTERVAL):
            return await ws.get_message()
        with trio.move_on_after(EVENTS_IDLE_TIMEOUT) as pong:
            await ws.ping()
        if pong.cancelled_caught:
            raise Network(name, f"event stream: no answer to a ping within {EVENTS_IDLE_TIMEOUT:g}s")


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds, from delay-seconds or an HTTP-date (RFC 9110 §10.2.3); None when absent or not a
    number or date. Raises ValueError for a number that is infinite, NaN or negative: no bank means that."""
    value = response.headers.get("Retry-After")
    if value is None or not value.isascii():  # float() reads Arabic-Indic digits; no date has such characters
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())  # a date in the past: now
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"Retry-After {value[:40]!r} is not a delay (infinite, NaN or negative)")
    return seconds


_TLS_CONTEXTS: dict[tuple[object, ...], ssl.SSLContext] = {}


def _tls_context(ca_file: str | None, client_cert: str | None, client_key: str | None) -> ssl.SSLContext:
    """One TLS context per CA bundle and client certificate, shared by every connector that uses them: building
    one costs 10-30 ms of CPU (loading the CA bundle), a thousand of them most of a start. A certificate file
    replaced on disk (a renewed client certificate) makes a new one."""

    def stamp(path: str | None) -> object:
        try:
            return os.stat(path).st_mtime_ns if path else None
        except OSError:
            return None  # let load_cert_chain say what is wrong

    key = (ca_file, client_cert, client_key, stamp(ca_file), stamp(client_cert), stamp(client_key))
    context = _TLS_CONTEXTS.get(key)
    if context is None:
        context = ssl.create_default_context(cafile=ca_file)
        if client_cert:
            context.load_cert_chain(client_cert, client_key)
        _TLS_CONTEXTS[key] = context
    return context
