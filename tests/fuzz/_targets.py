"""What is fuzzed: each decoder molamd runs on bytes it does not control, from its real entry point.

A target is a strategy of inputs (real files from ``tests/fixtures`` through the byte mutator, or the few
structured values a decoder takes), a ``run`` that feeds one input to the decoder the way the daemon does, and the
errors the decoder documents. Anything else escaping ``run`` is a finding; so is a documented error whose message
is over MAX_MESSAGE characters (it is logged and stored), or an answer that breaks the decoder's own promise
(statements that do not balance, a reply line that does not encode).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import trio
import trio_websocket
from hypothesis import strategies as st

from connectors import (
    CallContext,
    ConnectorError,
    PaymentEvent,
    PaymentRef,
    PayoutSlice,
    RestConfig,
    RestConnector,
    RestOptions,
    Secret,
)
from connectors._signing import sign_response
from connectors.iso20022 import StatusReportError, parse_pain002
from connectors.statements import (
    MOLAMD_PROFILE,
    CsvColumns,
    CsvProfile,
    Statement,
    StatementError,
    iter_mt940,
    parse_camt,
    parse_csv,
    parse_mt940,
)
from molamd.config import ConfigError, load_config
from molamd.control import _protocol as control

from ._mutate import mutated

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
MAX_MESSAGE = 1024  # characters of an error message: it goes to logs, replies and database rows
MAX_INPUT = 1 << 16


class Finding(AssertionError):
    """A decoder broke its promise on one input (the message says which); hypothesis shrinks the input."""


@dataclass(frozen=True)
class Target:
    name: str
    about: str
    inputs: Callable[[], st.SearchStrategy[Any]]  # built when first used: seeds are read from disk then
    run: Callable[[Any], None]
    errors: tuple[type[BaseException], ...]  # what the decoder documents; anything else is a finding
    seeds: Callable[[], Sequence[Any]]  # inputs that must go through as they are (the real files)


def _files(*patterns: str, under: Path = FIXTURES, contains: bytes = b"") -> list[bytes]:
    found = sorted({p for pattern in patterns for p in under.glob(pattern) if p.is_file()})
    data = [p.read_bytes() for p in found]
    return [d[:MAX_INPUT] for d in data if contains in d[:4096]]


def _bounded(exc: BaseException) -> None:
    message = str(exc)
    if len(message) > MAX_MESSAGE:
        raise Finding(f"{type(exc).__name__} message of {len(message)} characters: {message[:200]!r}...")


def _balanced(statements: Sequence[Statement]) -> None:
    for s in statements:
        if s.opening is not None and s.closing is not None:
            total = s.opening.amount + sum((line.amount for line in s.lines), Decimal(0))
            if total != s.closing.amount:
                raise Finding(f"statement {s.label} accepted although {total} != {s.closing.amount}")
        if any(line.currency != s.currency for line in s.lines):
            raise Finding(f"statement {s.label} in {s.currency} accepted with a line in another currency")


# -- statements ------------------------------------------------------------------------------------------------

MT940_TOKENS = (
    b":20:", b":21:", b":25:", b":28C:", b":60F:", b":60M:", b":61:", b":86:", b":62F:", b":62M:", b":64:", b":65:",
    b":13D:", b":34F:", b":90D:", b":90C:", b":NS:", b"{1:F01BANKXXXX0000000000}", b"{2:O940", b"{2:I942", b"{4:\r\n",
    b"-}", b"\r\n-\r\n", b"C261102EUR", b"D261102XOF", b"RC", b"RD", b"NTRF", b"NONREF", b"//", b"?20", b"?00",
    b"EREF+", b"/EREF/", b"/CNTP/", b"\r\n:", b":\r\n",
)


def _mt940_seeds() -> list[bytes]:
    return _files("wolph-mt940/mt940_tests/**/*.sta", "wolph-mt940/mt940_tests/**/*.txt", "mt940-js/cases/*.sta",
                  "mt940-js/cases/*.mta")


def _run_mt940(data: bytes) -> None:
    for kind in ("mt940", "mt942"):
        try:
            whole = parse_mt940(data, kind=kind)
        except StatementError as exc:
            _bounded(exc)
            whole = None
        if whole is not None:
            _balanced(whole)
        # the streaming reader, in pieces that cut lines, CRLFs and UTF-8 sequences anywhere, says the same
        try:
            pieces = list(iter_mt940((data[i:i + 7] for i in range(0, len(data), 7)), kind=kind))
        except StatementError as exc:
            _bounded(exc)
            pieces = None
        if (whole is None) != (pieces is None) or (whole is not None and whole != pieces):
            raise Finding(f"{kind}: parse_mt940 and iter_mt940 in 7-byte pieces disagree: "
                          f"{'error' if whole is None else len(whole)} vs {'error' if pieces is None else len(pieces)}")


FRENCH = CsvProfile(
    delimiter=";", decimal_separator=",", thousands_separator=".", date_format="%d/%m/%Y", encoding="latin-1",
    amount_style="debit_credit", account="SN08", currency="XOF", skip_rows=1,
    columns=CsvColumns(booking_date="Date opération", value_date="Date valeur", debit="Débit", credit="Crédit",
                       remittance="Libellé", reference="Référence"),
)
INDICATOR = CsvProfile(
    header="no", amount_style="indicator", currency="XOF", date_format="%Y%m%d",
    columns=CsvColumns(account=0, value_date=1, amount=2, indicator=3, reference=4),
)
CSV_PROFILES = {"molamd.csv": MOLAMD_PROFILE, "french.csv": FRENCH, "indicator.csv": INDICATOR}
CSV_TOKENS = (b",", b";", b'"', b'""', b"\n", b"\r\n", b"-", b"+", b".", b"2026-11-02", b"02/11/2026", b"XOF", b"EUR",
              b"D", b"C", b"CR", b"DBIT", b"1.500,00", b"1 000", b"\xc2\xa01")


def _csv_seeds() -> list[tuple[bytes, CsvProfile]]:
    return [((FIXTURES / "molamd-csv" / name).read_bytes(), profile) for name, profile in CSV_PROFILES.items()]


def _csv_inputs() -> st.SearchStrategy[Any]:
    seeds = [data for data, _ in _csv_seeds()]
    return st.tuples(mutated(seeds, CSV_TOKENS), st.sampled_from(list(CSV_PROFILES.values())))


def _run_csv(item: tuple[bytes, CsvProfile]) -> None:
    data, profile = item
    try:
        _balanced(parse_csv(data, profile))
    except StatementError as exc:
        _bounded(exc)


CAMT_TOKENS = (b"<Ntry>", b"</Ntry>", b"<Amt Ccy=\"EUR\">", b"</Amt>", b"<CdtDbtInd>DBIT</CdtDbtInd>", b"<Bal>",
               b"<Cd>OPBD</Cd>", b"<Cd>CLBD</Cd>", b"<Sts>BOOK</Sts>", b"<TxDtls>", b"<Stmt>", b"<Ccy>XOF</Ccy>",
               b"<Dt>2026-11-02</Dt>", b"xmlns=\"urn:iso:std:iso:20022:tech:xsd:camt.053.001.02\"")


def _camt_seeds() -> list[bytes]:
    return _files("**/*.xml", contains=b"camt.05")


def _run_camt(data: bytes) -> None:
    try:
        _balanced(parse_camt(data))
    except StatementError as exc:
        _bounded(exc)


PAIN002_TOKENS = (b"<TxInfAndSts>", b"</TxInfAndSts>", b"<TxSts>ACSC</TxSts>", b"<TxSts>RJCT</TxSts>", b"<GrpSts>",
                  b"<OrgnlMsgId>", b"<OrgnlEndToEndId>", b"<StsRsnInf><Rsn><Cd>AC01</Cd></Rsn></StsRsnInf>",
                  b"<OrgnlPmtInfAndSts>", b"<Amt Ccy=\"EUR\">1E9999999</Amt>")


def _pain002_seeds() -> list[bytes]:
    return _files("*/pain002/*.xml")


def _run_pain002(data: bytes) -> None:
    try:
        report = parse_pain002(data)
    except StatusReportError as exc:
        _bounded(exc)
        return
    list(report.effective())


# -- the REST connector ----------------------------------------------------------------------------------------

SECRET = b"fuzz-hmac-secret"
SLICE = PayoutSlice(
    id=42, payout_id="po-1", idempotency_key="molam-slice-42", amount=Decimal("150000"), currency="XOF", rail="ach",
    debtor_account="SN0120100100123456789012", beneficiary_name="Awa Diop", beneficiary_account="SN08000123456789",
)
CTX = CallContext(trace_id="fuzz", timeout=5.0, payout_slice_id=42)
REST_BODIES = (
    b'{"id": "pay_1", "status": "accepted"}', b'{"id": "pay_1", "status": "settled", "reason_code": null}',
    b'{"id": "pay_1", "status": "failed", "reason_code": "AC04"}', b'{"error": "rejected", "reason_code": "AM04", '
    b'"message": "insufficient funds"}', b'{"message": "slow down"}', b'{"reports": [{"name": "r1.xml", '
    b'"content": "PERvY3VtZW50Lz4="}]}', b"{}", b"",
)
STATUSES = (200, 201, 202, 204, 400, 401, 403, 404, 409, 422, 429, 500, 502, 503)


def _rest(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> RestConnector:
    config = RestConfig(name="fuzz", bank_profile="p", rest=RestOptions(
        base_url="https://bank.test", key_id="molam", hmac_secret=Secret("env:X", SECRET.decode()), **options))
    return RestConnector(config, transport=httpx.MockTransport(handler))


async def _rest_calls(connector: RestConnector, operation: str) -> None:
    await connector.open()
    try:
        if operation == "send":
            await connector.send_payment(SLICE, CTX)
        elif operation == "status":
            await connector.payment_status(PaymentRef(idempotency_key="molam-slice-42", provider_ref="pay_1"), CTX)
        elif operation == "reports":
            await connector.list_reports(CTX)
        else:
            await connector.healthcheck()
    finally:
        await connector.aclose()


def _in_trio(fn: Callable[[], Any], bound: float) -> None:
    async def main() -> None:
        with trio.fail_after(bound):
            await fn()
    trio.run(main)


def _rest_body_inputs() -> st.SearchStrategy[Any]:
    return st.tuples(mutated(REST_BODIES + tuple(_files("wolph-mt940/expected_json/*/*.json")[:8])),
                     st.sampled_from(STATUSES), st.sampled_from(("send", "status", "reports", "health")))


def _run_rest_body(item: tuple[bytes, int, str]) -> None:
    body, status, operation = item

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body)

    try:
        _in_trio(lambda: _rest_calls(_rest(handler), operation), 10)
    except ConnectorError as exc:
        _bounded(exc)


_HEADER_SEEDS = (b"", b"0", b"120", b"-1", b"1e400", b"inf", b"nan", b"Wed, 21 Oct 2015 07:28:00 GMT",
                 b"a" * 64, "é".encode(), b"\xff", "\u0661\u0662".encode())


def _rest_header_inputs() -> st.SearchStrategy[Any]:
    value = mutated((*_HEADER_SEEDS, b"%d" % int(time.time())), max_size=512)
    return st.tuples(st.sampled_from(STATUSES), value, value, value, st.booleans())


def _run_rest_headers(item: tuple[int, bytes, bytes, bytes, bool]) -> None:
    status, signature, timestamp, retry_after, sign = item
    body = b'{"id": "pay_1", "status": "accepted"}'
    clean = [v.translate(None, b"\r\n\x00") for v in (signature, timestamp, retry_after)]  # what an HTTP parser lets by

    def handler(request: httpx.Request) -> httpx.Response:
        signature_value, timestamp_value, retry = clean
        if sign:
            ts = int(time.time())
            signature_value, timestamp_value = sign_response(SECRET, status, ts, body).encode(), b"%d" % ts
        return httpx.Response(status, content=body, headers=[
            (b"X-Signature", signature_value), (b"X-Timestamp", timestamp_value), (b"Retry-After", retry)])

    try:
        _in_trio(lambda: _rest_calls(_rest(handler, verify_response_signatures=True), "send"), 10)
    except ConnectorError as exc:
        _bounded(exc)


EVENT_SEEDS = (
    b'{"seq": 1, "id": "p1", "status": "settled", "idempotency_key": "k1"}',
    b'{"seq": 2, "id": "p2", "status": "failed", "reason_code": "AC04"}',
    b'{"seq": 3, "id": "p3", "status": "accepted"}',
)


def _push_inputs() -> st.SearchStrategy[Any]:
    return st.lists(st.tuples(mutated(EVENT_SEEDS, max_size=4096), st.booleans()), min_size=1, max_size=4)


def _run_push(messages: list[tuple[bytes, bool]]) -> None:
    delivered: list[object] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        for data, as_text in messages:
            text = data.decode("utf-8", "replace") if as_text else None
            await ws.send_message(text if text is not None else data)
        await ws.aclose()

    async def main() -> None:
        ended: list[Exception] = []
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
            config = RestConfig(name="pushy", bank_profile="p", rest=RestOptions(
                base_url=f"http://127.0.0.1:{server.port}", key_id="k", hmac_secret=Secret("env:X", "s"),
                events_url=f"ws://127.0.0.1:{server.port}/events"))
            try:
                await RestConnector(config).stream_events(0, delivered.append)
            except Exception as exc:  # raised below, outside the nursery (which would wrap it in a group)
                ended.append(exc)
            nursery.cancel_scope.cancel()
        if ended:
            raise ended[0]

    try:
        _in_trio(main, 10)
    except ConnectorError as exc:
        _bounded(exc)
    else:
        raise Finding("stream_events returned although the bank closed the stream (expected Network)")
    for event in delivered:
        if not isinstance(event, PaymentEvent) or not isinstance(event.seq, int):
            raise Finding(f"delivered {event!r}")


# -- the control socket and the config -------------------------------------------------------------------------

CONTROL_SEEDS = (
    b'{"id": 1, "cmd": "status", "args": {}}', b'{"id": "a", "cmd": "connector", "args": {"name": "bank-a"}}',
    b'{"id": 2, "cmd": "logs", "args": {"name": "bank-a", "limit": 10}}', b'{"id": 3, "cmd": "dlq list"}',
    b'{"id": "\\ud800"}', b'{"cmd": "set-rate", "args": {"name": "x", "rate": 1.5, "burst": 10}}', b"[]", b"",
)


def _run_control(line: bytes) -> None:
    try:
        request = control.decode_request(line)
    except control.ControlError as exc:
        rid = control.request_id(line)
        reply = control.error_line(rid, exc)
    else:
        control.encode({"id": request.id, "ok": True, "result": {}})  # the success path echoes the id too
        reply = control.error_line(request.id, control.ControlError(control.ErrorCode.UNKNOWN_COMMAND, "x"))
    if not reply.endswith(b"\n") or b"\n" in reply[:-1]:
        raise Finding(f"reply is not one line: {reply[:200]!r}")
    # The protocol's own bound is on the wire (MAX_MESSAGE characters, then a cut): the error is not stored.
    message = json.loads(reply).get("error", {}).get("message", "")
    if len(message) > control.MAX_MESSAGE + 64:
        raise Finding(f"error reply message of {len(message)} characters: {message[:200]!r}")


def _config_seeds() -> list[bytes]:
    return _files("*.toml", under=ROOT / "config")


_CONFIG_DIR = tempfile.mkdtemp(prefix="molamd-fuzz-config-")


def _run_config(data: bytes) -> None:
    path = Path(_CONFIG_DIR) / "molamd.toml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            if len(str(problem)) > MAX_MESSAGE:
                raise Finding(f"config problem of {len(str(problem))} characters: {str(problem)[:200]!r}") from None


CONFIG_TOKENS = (b"[[connectors]]", b"[control]", b"kind = \"rest\"", b"= \"30s\"", b"= 1e400", b"= inf", b"= nan",
                 b"\"\\u0000\"", b"= [" * 50, b"= {a = " * 50, b"= 99999999999999999999", b"= -1", b"vault:kv/x#y",
                 b"file:/etc/passwd", b"env:\x00", b"= 1979-05-27T07:32:00Z", b"\"\"\"", b"'''")


def _mutated(seeds: Callable[[], Sequence[bytes]], tokens: Sequence[bytes] = (), **kw: Any) -> Callable[[], Any]:
    return lambda: mutated(seeds(), tokens, **kw)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("mt940", "MT940/MT942 statements (parse_mt940, iter_mt940 streaming)",
           _mutated(_mt940_seeds, MT940_TOKENS), _run_mt940, (StatementError,), _mt940_seeds),
    Target("csv", "CSV statements under three bank profiles (parse_csv)", _csv_inputs, _run_csv, (StatementError,),
           _csv_seeds),
    Target("camt053", "camt.052/053/054 statements (parse_camt)", _mutated(_camt_seeds, CAMT_TOKENS), _run_camt,
           (StatementError,), _camt_seeds),
    Target("pain002", "pain.002 payment status reports (parse_pain002)", _mutated(_pain002_seeds, PAIN002_TOKENS),
           _run_pain002, (StatusReportError,), _pain002_seeds),
    Target("rest-body", "REST connector: a bank's answer bodies to send, status, reports and health",
           _rest_body_inputs, _run_rest_body, (ConnectorError,), lambda: [(b, 200, "send") for b in REST_BODIES[:3]]),
    Target("rest-headers", "REST connector: X-Signature, X-Timestamp and Retry-After of a bank's answer",
           _rest_header_inputs, _run_rest_headers, (ConnectorError,),
           lambda: [(201, b"", b"", b"", True), (429, b"", b"", b"120", True)]),
    Target("push-events", "REST connector: pushed status events over the websocket (stream_events)",
           _push_inputs, _run_push, (ConnectorError,), lambda: [[(e, True) for e in EVENT_SEEDS]]),
    Target("control-line", "control socket: one request line through decode_request and the error reply "
           "(its message bounded on the wire by the protocol's MAX_MESSAGE)",
           _mutated(lambda: CONTROL_SEEDS, (b'"\\ud800"', b'"\\udfff"', b"1e400", b"NaN"), max_size=4096),
           _run_control, (), lambda: CONTROL_SEEDS),
    Target("config", "TOML config through load_config (config/*.toml as seeds)",
           _mutated(_config_seeds, CONFIG_TOKENS), _run_config, (), _config_seeds),
)}
