"""The sandbox bank: the bank side of the ``rest`` connector, over real sockets, for the demo, tests and benches.

It verifies HMAC signatures and timestamps, keeps idempotency records (same key and body: the same answer,
marked ``Idempotent-Replayed``; same key, other body: 409), keeps a ledger of every payment it executed, settles
accepted payments after a delay (or rejects some), signs its responses, and injects faults chosen at run time
over ``POST /admin/faults``: latency, 5xx, 429 with Retry-After, connection resets, hangs, garbage bodies and
wrong signatures. Resets, hangs, garbage and bad signatures happen after the payment executed half the time (the
fault `after_execute` sets that share; 1.0: it executes, then never answers), and status lookups can fail too:
the client cannot know, which is exactly what idempotency keys are for.

Run: ``python scripts/sandbox_bank.py --port 0`` prints ``sandbox bank listening on http://127.0.0.1:PORT``.
Admin (no auth, loopback only): ``GET /admin/ledger``, ``GET /admin/requests`` (what the bank did with each
payment request: executed, replayed, conflict, invalid), ``GET/POST /admin/faults``, ``GET /admin/stats``,
``POST /admin/secret`` (switch the shared HMAC key, keeping the old one accepted for a while).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import itertools
import json
import random
import socket
import struct
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio
import trio_websocket

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sandbox_files import FileDesk
from sandbox_statements import StatementWriter

MAX_BODY = 1 << 20


# -- the bank's side of the HMAC scheme, written from its spec (connectors/_signing.py's docstring), not from molamd's
# code: a peer that checks our signatures with our own signer would agree with any bug in it.
#   request:  hex HMAC-SHA256(key, METHOD "\n" PATH?QUERY "\n" TIMESTAMP "\n" hex SHA-256(body)) in X-Signature,
#             Unix seconds in X-Timestamp, refused when more than max_skew seconds from the bank's clock
#   response: hex HMAC-SHA256(key, STATUS "\n" TIMESTAMP "\n" hex SHA-256(body))


def _mac(key: bytes, *fields: str) -> str:
    return hmac.new(key, "\n".join(fields).encode(), hashlib.sha256).hexdigest()


def request_problem(key: bytes, signature: str, method: str, target: str, timestamp: str, body: bytes, *,
                    now: float, max_skew: float) -> str | None:
    """None if the request's signature verifies under ``key`` and its timestamp is fresh; else what is wrong."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return "timestamp is not Unix seconds"
    if abs(now - int(timestamp)) > max_skew:
        return f"timestamp skew {now - int(timestamp):.0f}s exceeds {max_skew:.0f}s"
    expected = _mac(key, method.upper(), target, timestamp, hashlib.sha256(body).hexdigest())
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        return "signature mismatch"
    return None


def reply_signature(key: bytes, status: int, timestamp: int, body: bytes) -> str:
    return _mac(key, str(status), str(timestamp), hashlib.sha256(body).hexdigest())

FAULT_KEYS = ("latency_ms", "error_rate", "rate_limit_rate", "retry_after", "reset_rate", "hang_rate",
              "garbage_rate", "bad_signature_rate", "execute_replays", "after_execute", "lookup_error_rate")


class Faults:
    def __init__(self) -> None:
        self.latency_ms = 0.0
        self.error_rate = 0.0
        self.rate_limit_rate = 0.0
        self.retry_after = 1.0
        self.reset_rate = 0.0
        self.hang_rate = 0.0
        self.garbage_rate = 0.0
        self.bad_signature_rate = 0.0
        # Not a fault of the network but of the bank: the share of replays (same key, same body) it executes again
        # instead of answering from its idempotency store. For the negative controls of the "paid twice" checks.
        self.execute_replays = 0.0
        # The share of resets, hangs, garbage and bad signatures that come after the payment executed (the rest
        # fail before it, as a gateway answering for a bank that is away would); 1.0: executes, then never answers.
        self.after_execute = 0.5
        # Status lookups (GET /payments?idempotency_key=, GET /payments/ID) answered 503: the bank cannot say.
        self.lookup_error_rate = 0.0

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key not in FAULT_KEYS:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(FAULT_KEYS)}")
            setattr(self, key, float(value))

    def as_dict(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in FAULT_KEYS}


class Reply:
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None, *,
                 fault: str | None = None) -> None:
        self.status = status
        self.body = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.headers = headers or {}
        self.fault = fault  # "reset", "hang", "garbage", "bad_signature"
        self.secret: bytes | None = None  # the key the request was signed with: the reply is signed with it too


class Bank:
    def __init__(self, *, key_id: str, secret: bytes, settle_delay: float, reject_rate: float,
                 rng: random.Random, max_skew: float = 300.0) -> None:
        self.key_id = key_id
        self.secret = secret
        # Keys still accepted after a switch (POST /admin/secret): a bank rotating its shared key accepts the old
        # one for a while, so clients can move over without a failed call.
        self.previous_secrets: list[bytes] = []
        self.settle_delay = settle_delay
        self.reject_rate = reject_rate
        self.rng = rng
        self.max_skew = max_skew
        self.faults = Faults()
        self.ledger: list[dict[str, Any]] = []
        self.by_id: dict[str, dict[str, Any]] = {}
        self.by_key: dict[str, tuple[str, dict[str, Any]]] = {}  # key -> (body digest, payment)
        self.ids = itertools.count(1)
        # Every payment request that got past authentication and validation of its key, in order: what the bank did
        # with it (executed, replayed from the idempotency store, conflict, invalid). Tests count executions and
        # replays per key from here; the ledger alone dedups by key and cannot show a payment sent twice.
        self.requests: list[dict[str, Any]] = []
        self.stats: dict[str, int] = {"requests": 0, "payments": 0, "replays": 0, "conflicts": 0,
                                      "auth_failures": 0, "faults": 0, "previous_key": 0}
        self._due: list[tuple[float, str]] = []
        self.events: list[dict[str, Any]] = []  # pushed status changes, numbered from 1
        self._event_added = trio.Event()
        self._streams: set[Any] = set()
        self.events_url = ""
        self.desk: Any = None  # the file desk (pain.001 in, pain.002 out), when --files-root is given

    # -- the API ------------------------------------------------------------------------------------

    async def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        self.stats["requests"] += 1
        path = urlsplit(target).path
        if path.startswith("/admin/"):
            return self.admin(method, path, body)
        if path == "/health" and method == "GET":
            return Reply(200, {"status": "ok"})
        problem, secret = self.authenticate(method, target, headers, body)
        if problem is not None:
            self.stats["auth_failures"] += 1
            return Reply(401, {"error": "unauthorized", "message": problem})
        reply = await self.route(method, target, path, headers, body)
        reply.secret = secret
        return reply

    async def route(self, method: str, target: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if path == "/payments" and method == "POST":
            return await self.create_payment(headers, body)
        if path.startswith("/payments") and method == "GET" and self.rng.random() < self.faults.lookup_error_rate:
            self.stats["faults"] += 1
            return Reply(503, {"error": "unavailable", "message": "injected 503 on a status lookup"})
        if path == "/payments" and method == "GET":
            key = parse_qs(urlsplit(target).query).get("idempotency_key", [""])[0]
            found = self.by_key.get(key)
            return Reply(200, self.view(found[1])) if found else Reply(404, {"error": "not_found"})
        if path.startswith("/files") and self.desk is not None:
            status, answer, extra = self.desk.http(method, path, headers, body)
            return Reply(status, answer, extra)
        if path.startswith("/payments/") and method == "GET":
            payment = self.by_id.get(path.removeprefix("/payments/"))
            return Reply(200, self.view(payment)) if payment else Reply(404, {"error": "not_found"})
        return Reply(404, {"error": "not_found", "message": f"no route {method} {path}"})

    def authenticate(self, method: str, target: str, headers: dict[str, str],
                     body: bytes) -> tuple[str | None, bytes]:
        """(the problem, or None; the key that verified the request)."""
        if headers.get("x-key-id") != self.key_id:
            return "unknown key id", self.secret
        problem = None
        for secret in (self.secret, *self.previous_secrets):
            problem = request_problem(secret, headers.get("x-signature", ""), method, target,
                                      headers.get("x-timestamp", ""), body, now=time.time(), max_skew=self.max_skew)
            if problem is None:
                if secret != self.secret:
                    self.stats["previous_key"] += 1
                return None, secret
        return problem, self.secret

    async def create_payment(self, headers: dict[str, str], body: bytes) -> Reply:
        key = headers.get("idempotency-key", "")
        if not key:
            return Reply(400, {"error": "validation", "message": "Idempotency-Key header is required"})
        f = self.faults
        if f.latency_ms:
            await trio.sleep(f.latency_ms / 1000 * (0.5 + self.rng.random()))
        roll = self.rng.random()
        if roll < f.error_rate:
            self.stats["faults"] += 1
            return Reply(503, {"error": "unavailable", "message": "injected 503"})
        roll -= f.error_rate
        if roll < f.rate_limit_rate:
            self.stats["faults"] += 1
            return Reply(429, {"error": "rate_limited"}, {"Retry-After": f"{f.retry_after:g}"})
        roll -= f.rate_limit_rate
        ambiguous = None
        for name, rate in (("reset", f.reset_rate), ("hang", f.hang_rate), ("garbage", f.garbage_rate),
                           ("bad_signature", f.bad_signature_rate)):
            if roll < rate:
                ambiguous = name
                break
            roll -= rate
        if ambiguous is not None:
            self.stats["faults"] += 1
            if self.rng.random() >= f.after_execute:  # fails before executing (a gateway for a bank that is away)
                return Reply(502, {"error": "bad_gateway"}, fault=ambiguous)
        reply = self.execute(key, body)
        if ambiguous is not None:
            reply.fault = ambiguous
        return reply

    def execute(self, key: str, body: bytes) -> Reply:
        digest = hashlib.sha256(body).hexdigest()
        known = self.by_key.get(key)
        forgets = self.faults.execute_replays > 0 and self.rng.random() < self.faults.execute_replays
        if known is not None and not (known[0] == digest and forgets):
            if known[0] != digest:
                self.stats["conflicts"] += 1
                self._log(key, "conflict", None)
                return Reply(409, {"error": "idempotency_conflict",
                                   "message": "this Idempotency-Key was used with a different request"})
            self.stats["replays"] += 1
            self._log(key, "replayed", known[1]["id"])
            return Reply(201, self.view(known[1]), {"Idempotent-Replayed": "true"})
        try:
            request = json.loads(body)
            amount = Decimal(str(request["amount"]))
            currency = str(request["currency"])
            account = str(request["creditor"]["account"])
            if amount <= 0 or len(currency) != 3 or not account:
                raise ValueError("amount must be positive, currency 3 letters, creditor.account set")
        except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
            self._log(key, "invalid", None)
            return Reply(400, {"error": "validation", "message": f"bad payment request: {exc}"})
        payment = {
            "id": f"pay_{next(self.ids):08d}", "idempotency_key": key, "reference": request.get("reference"),
            "amount": str(amount), "currency": currency, "creditor_account": account, "status": "accepted",
            "debtor_account": request.get("debtor_account"),
            "reason_code": None, "executed_at": time.time(),
        }
        self.by_key[key] = (digest, payment)
        self.by_id[payment["id"]] = payment
        self.ledger.append(payment)
        self.stats["payments"] += 1
        self._log(key, "executed", payment["id"])
        self._due.append((time.monotonic() + self.settle_delay, payment["id"]))
        return Reply(201, self.view(payment))

    def _log(self, key: str, outcome: str, payment_id: str | None) -> None:
        self.requests.append({"idempotency_key": key, "outcome": outcome, "payment_id": payment_id,
                              "at": time.time()})

    @staticmethod
    def view(payment: dict[str, Any]) -> dict[str, Any]:
        return {"id": payment["id"], "status": payment["status"], "reason_code": payment["reason_code"],
                "amount": payment["amount"], "currency": payment["currency"]}

    def admin(self, method: str, path: str, body: bytes) -> Reply:
        if path == "/admin/faults":
            if method == "POST":
                try:
                    self.faults.update(json.loads(body or b"{}"))
                except (ValueError, TypeError) as exc:
                    return Reply(400, {"error": "validation", "message": str(exc)})
            return Reply(200, self.faults.as_dict())
        if path == "/admin/ledger":
            return Reply(200, {"payments": self.ledger})
        if path == "/admin/requests":
            return Reply(200, {"requests": self.requests})
        if path == "/admin/stats":
            return Reply(200, {**self.stats, "ledger": len(self.ledger), "events": len(self.events),
                               "streams": len(self._streams)})
        if path == "/admin/files" and self.desk is not None:
            if method == "POST":
                self.desk.faults.update({k: float(v) for k, v in json.loads(body or b"{}").items()
                                         if k in self.desk.faults})
            return Reply(200, self.desk.summary())
        if path == "/admin/secret" and method == "POST":
            # {"secret": NEW, "keep_previous": true}: switch keys; the old one stays accepted unless told not to.
            change = json.loads(body or b"{}")
            old, self.secret = self.secret, str(change["secret"]).encode()
            self.previous_secrets = [old, *self.previous_secrets][:2] if change.get("keep_previous", True) else []
            return Reply(200, {"switched": True, "previous_accepted": len(self.previous_secrets)})
        if path == "/admin/info":
            return Reply(200, {"events_url": self.events_url})
        if path == "/admin/drop_streams" and method == "POST":
            dropped = len(self._streams)
            for ws in list(self._streams):
                ws.dropped = True
            return Reply(200, {"dropped": dropped})
        return Reply(404, {"error": "not_found"})

    # -- settlement ---------------------------------------------------------------------------------

    async def settle_forever(self) -> None:
        while True:
            await trio.sleep(0.02)
            now = time.monotonic()
            due = [d for d in self._due if d[0] <= now]
            if not due:
                continue
            self._due = [d for d in self._due if d[0] > now]
            for _, pid in due:
                payment = self.by_id[pid]
                if self.rng.random() < self.reject_rate:
                    payment["status"], payment["reason_code"] = "rejected", "AC04"  # closed account
                else:
                    payment["status"] = "settled"
                self.events.append({"seq": len(self.events) + 1, "id": pid, "status": payment["status"],
                                    "reason_code": payment["reason_code"],
                                    "idempotency_key": payment["idempotency_key"]})
            self._event_added.set()
            self._event_added = trio.Event()

    # -- HTTP/1.1 over trio, with h11 ----------------------------------------------------------------

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(conn, stream)
                if request is None:
                    return
                method, target, headers, body = request
                reply = await self.handle(method, target, headers, body)
                if reply.fault == "reset":
                    sock = stream.socket
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    await stream.aclose()
                    return
                if reply.fault == "hang":
                    await trio.sleep_forever()
                await self._write(conn, stream, reply)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        except Exception as exc:  # one broken exchange must not take the bank down
            print(f"sandbox bank: connection error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return
        finally:
            await stream.aclose()

    @staticmethod
    async def _read_request(conn: h11.Connection, stream: trio.SocketStream
                            ) -> tuple[str, str, dict[str, str], bytes] | None:
        method = target = ""
        headers: dict[str, str] = {}
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.SEND_BODY:
                    return None
                continue
            if isinstance(event, h11.Request):
                method, target = event.method.decode(), event.target.decode()
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return method, target, headers, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _write(self, conn: h11.Connection, stream: trio.SocketStream, reply: Reply) -> None:
        body = b'{"id": "pay_\x00garbage' if reply.fault == "garbage" else reply.body
        timestamp = int(time.time())
        signature = reply_signature(reply.secret or self.secret, reply.status, timestamp, body)
        if reply.fault == "bad_signature":
            signature = hmac.new(b"wrong", signature.encode(), hashlib.sha256).hexdigest()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("X-Timestamp", str(timestamp)), ("X-Signature", signature), *reply.headers.items()]
        data = conn.send(h11.Response(status_code=reply.status, headers=headers))
        data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        await stream.send_all(data)

    # -- pushed events over a websocket ----------------------------------------------------------------

    async def serve_events_stream(self, request: Any) -> None:
        """``/events?since=N&key_id=..&ts=..&sig=..``: every event after N, then new ones as they happen."""
        target = urlsplit(request.path)
        params = {k: v[0] for k, v in parse_qs(target.query).items()}
        problem = None if params.get("key_id") == self.key_id else "unknown key id"
        if problem is None:
            problem = request_problem(self.secret, params.get("sig", ""), "GET", target.path, params.get("ts", ""),
                                      b"", now=time.time(), max_skew=self.max_skew)
        if target.path != "/events" or problem is not None:
            await request.reject(401 if problem else 404, body=(problem or "no such stream").encode())
            return
        ws = await request.accept()
        ws.dropped = False
        self._streams.add(ws)
        try:
            sent = int(params.get("since", "0") or 0)
            while not ws.dropped:
                for event in self.events[sent:]:
                    await ws.send_message(json.dumps(event))
                    sent = event["seq"]
                with trio.move_on_after(0.2):
                    await self._event_added.wait()
            await ws.aclose(code=1012, reason="dropped by the sandbox")
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            self._streams.discard(ws)

    async def serve(self, host: str, port: int, events_port: int = 0, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=1024)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.settle_forever)
            await nursery.start(trio.serve_listeners, self.serve_connection, listeners)
            server = await nursery.start(trio_websocket.serve_websocket, self.serve_events_stream, host,
                                         events_port, None)
            self.events_url = f"ws://{host}:{server.port}/events"
            task_status.started(listeners[0].socket.getsockname()[1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The molamd sandbox bank.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--events-port", type=int, default=0, help="websocket port for pushed payment events")
    parser.add_argument("--key-id", default="molamd-demo")
    parser.add_argument("--secret", default="sandbox-hmac-secret", help="HMAC secret shared with molamd")
    parser.add_argument("--settle-delay", type=float, default=0.2, help="seconds from accepted to settled")
    parser.add_argument("--reject-rate", type=float, default=0.0, help="share of payments the bank rejects")
    parser.add_argument("--faults", default="{}", help='JSON, e.g. {"error_rate": 0.2, "hang_rate": 0.05}')
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-skew", type=float, default=300.0,
                        help="seconds a signed request's timestamp may be off: older ones are refused, never executed")
    parser.add_argument("--statements-dir", help="write MT940 statements of settled payments here (an SFTP inbox)")
    parser.add_argument("--statement-interval", type=float, default=2.0, help="seconds between statement files")
    parser.add_argument("--statement-account", default="SN08SN0100152000048500003035")
    parser.add_argument("--statement-prefix", default="", help="file name prefix (two banks writing one drop)")
    parser.add_argument("--files-root", help="the file desk: pain.001 from ROOT/inbox, pain.002 to ROOT/outbox")
    parser.add_argument("--files-certificate", help="PEM certificate the customer's file signatures must verify with")
    parser.add_argument("--report-key", help="PEM private key the bank signs its pain.002 reports with")
    parser.add_argument("--report-delay", type=float, default=1.0, help="seconds from ACTC to the final report")
    return parser.parse_args(argv)


async def main_async(args: argparse.Namespace) -> None:
    bank = Bank(key_id=args.key_id, secret=args.secret.encode(), settle_delay=args.settle_delay,
                reject_rate=args.reject_rate, rng=random.Random(args.seed), max_skew=args.max_skew)
    bank.faults.update(json.loads(args.faults))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(bank.serve, args.host, args.port, args.events_port)
        if args.files_root:
            bank.desk = FileDesk(bank, Path(args.files_root), report_delay=args.report_delay, rng=bank.rng,
                                 certificate=Path(args.files_certificate) if args.files_certificate else None,
                                 report_key=Path(args.report_key) if args.report_key else None)
            nursery.start_soon(bank.desk.run)
        if args.statements_dir:
            writer = StatementWriter(Path(args.statements_dir), account=args.statement_account,
                                     prefix=args.statement_prefix)
            nursery.start_soon(write_statements, bank, writer, args.statement_interval)
        print(f"sandbox bank listening on http://{args.host}:{port}", flush=True)


async def write_statements(bank: Bank, writer: StatementWriter, interval: float) -> None:
    """Every interval, the payments settled since the last statement go out as one MT940 file."""
    while True:
        await trio.sleep(interval)
        writer.write(bank.ledger)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the sandbox is stopped by hand
        trio.run(main_async, parse_args())
