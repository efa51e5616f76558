"""Traces: the dispatcher's claim → route → send → record spans under the trace id the bank sees and the audit
row carries (on trio's mock clock, with the SDK's in-memory exporter), and a real daemon exporting over OTLP/HTTP
to a collector of the test's: the spans of REST payouts and of a payment file's build → sign → upload → report,
each file's in one trace made from its MsgId."""

from __future__ import annotations

import http.server
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
import trio.testing
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from actors import tracing
from molamd import tracing as daemon_tracing
from molamd.config import Config
from tests.http_helpers import LoopbackServer
from tests.payout_helpers import FINAL, Bank, payout_toml, rest_connector, seed, statuses, wait_for
from tests.payout_helpers import env as rest_env
from tests.test_dispatcher import FakeBank, MemoryStore, Routes, actor, running
from tests.test_file_channel import file_bank, file_connector, files_env, hsm_key, hsm_toml, seed_files  # noqa: F401

PAYOUT_STEPS = ["payout.claim", "payout.route", "payout.send", "payout.record"]
PRIVATE = ("Awa", "SN08", "5000")  # the fake slice's beneficiary, account and amount


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = daemon_tracing.provider(Config(), SimpleSpanProcessor(memory))
    tracing.use(provider.get_tracer("test"))
    yield memory
    daemon_tracing.shutdown(provider)


def by_trace(memory: InMemorySpanExporter) -> dict[str, list[Any]]:
    traces: dict[str, list[Any]] = {}
    for span in memory.get_finished_spans():
        traces.setdefault(f"{span.context.trace_id:032x}", []).append(span)
    return traces


async def test_a_payout_attempt_is_one_trace_under_the_id_the_bank_saw(
    autojump_clock: trio.testing.MockClock, exported: InMemorySpanExporter
) -> None:
    bank = FakeBank("A")
    store = MemoryStore()
    store.add(1)
    async with running(store, Routes([actor("primary", bank, 10)])):
        await trio.sleep(1)
        assert store.rows[1].status == "sent"
    [call] = store.audit_rows
    traces = by_trace(exported)
    assert list(traces) == [call.trace_id], "the spans' trace is the one the bank call carried"
    spans = traces[call.trace_id]
    assert sorted(s.name for s in spans) == sorted(PAYOUT_STEPS)
    send = next(s for s in spans if s.name == "payout.send")
    assert send.attributes["slice_id"] == 1 and send.attributes["connector"] == "primary"
    assert send.attributes["payment.state"] == "accepted"
    assert next(s for s in spans if s.name == "payout.record").attributes["outcome"] == "sent"
    for span in spans:
        assert span.end_time >= span.start_time
        assert not any(p in str(v) for v in span.attributes.values() for p in PRIVATE), span.attributes


async def test_a_failed_send_is_traced_with_its_error_and_each_attempt_has_its_own_trace(
    autojump_clock: trio.testing.MockClock, exported: InMemorySpanExporter
) -> None:
    bank = FakeBank("A")
    bank.mode = "error_after_execute"  # a 503 after the bank executed: in doubt, retried in its scope
    store = MemoryStore()
    store.add(1)
    async with running(store, Routes([actor("primary", bank, 10)])):
        await trio.sleep(0.3)
        bank.mode = "ok"
        await trio.sleep(5)
        assert store.rows[1].status == "sent"
    traces = by_trace(exported)
    assert len(traces) == 2, "two attempts, two traces"
    assert {c.trace_id for c in store.audit_rows} <= set(traces)  # the fake's 503 leaves no audit row
    sends = [s for spans in traces.values() for s in spans if s.name == "payout.send"]
    failed = next(s for s in sends if "error.code" in s.attributes)
    assert failed.attributes["error.code"] == "server_error" and failed.attributes["reached"] is True
    assert failed.attributes["outcome"] == "retry"


async def test_without_a_tracer_nothing_is_traced(autojump_clock: trio.testing.MockClock) -> None:
    tracing.use(None)
    memory = InMemorySpanExporter()
    bank = FakeBank("A")
    store = MemoryStore()
    store.add(1)
    async with running(store, Routes([actor("primary", bank, 10)])):
        await trio.sleep(1)
    assert store.rows[1].status == "sent" and not memory.get_finished_spans()
    assert len(store.audit_rows[0].trace_id) == 32, "the bank still gets a trace id"


class Collector:
    """An OTLP/HTTP trace receiver on loopback: what a real collector is sent, decoded with the OTLP protobufs."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        owner.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = LoopbackServer(Handler)
        self.url = f"{self.server.url}/v1/traces"

    def traces(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for span in self.spans:
            found.setdefault(span.trace_id.hex(), {})[span.name] = span
        return found

    def close(self) -> None:
        self.server.close()


def test_a_daemon_exports_payout_and_file_traces_over_otlp(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, hsm_key: tuple[str, Path],  # noqa: F811
    file_bank: tuple[Bank, Any, Path],  # noqa: F811
) -> None:
    token, certificate = hsm_key
    bank, sftp, _ = file_bank
    collector = Collector()
    try:
        connectors = (rest_connector("bank-a-rest", bank.url)
                      + file_connector("bank-c-files", sftp, sftp.known_hosts(short_tmp / "known_hosts"), certificate))
        config = (payout_toml(short_tmp, migrated_dsn, connectors) + hsm_toml(token)
                  + f'\n[tracing]\notlp_endpoint = "{collector.url}"\n')
        rest_ids, file_ids = seed(migrated_dsn, 10), seed_files(migrated_dsn, 20)
        d = daemon_factory(config, env={**rest_env(), **files_env(token)})
        wait_for(lambda: sum(statuses(migrated_dsn, rest_ids + file_ids).get(s, 0) for s in FINAL)
                 == len(rest_ids) + len(file_ids), 60, "every slice final")
        assert d.stop() == 0  # a clean stop flushes what the batch processor holds
        with psycopg.connect(migrated_dsn) as conn:
            msg_ids = [r[0] for r in conn.execute("SELECT msg_id FROM payment_files").fetchall()]
            calls = conn.execute("SELECT payout_slice_id, trace_id FROM bank_connector_logs"
                                 " WHERE operation = 'send_payment' AND outcome = 'ok'").fetchall()
            uploads = {r[0] for r in conn.execute("SELECT trace_id FROM bank_connector_logs"
                                                  " WHERE operation = 'upload'").fetchall()}
        traces = collector.traces()
        assert len(calls) == len(rest_ids)
        for slice_id, trace_id in calls:
            assert set(traces.get(trace_id, {})) == set(PAYOUT_STEPS), (slice_id, traces.get(trace_id))
            send = traces[trace_id]["payout.send"]
            assert send.end_time_unix_nano > send.start_time_unix_nano
        assert msg_ids
        for msg_id in msg_ids:
            file_trace = tracing.file_trace_id(msg_id)
            assert {"file.build", "file.sign", "file.upload", "file.report"} <= set(traces.get(file_trace, {})), msg_id
            assert file_trace in uploads, "the upload's audit row carries the file's trace id"
    finally:
        collector.close()


def test_a_trace_id_that_is_not_128_bits_of_hex_gets_a_stable_one(exported: InMemorySpanExporter) -> None:
    for trace_id in ("health", "health", "z" * 32, tracing.file_trace_id("MOLAM-1")):
        with tracing.span(trace_id, "probe"):
            pass
    ids = [f"{s.context.trace_id:032x}" for s in exported.get_finished_spans()]
    assert ids[0] == ids[1] != ids[2] and ids[3] == tracing.file_trace_id("MOLAM-1")
    assert all(int(i, 16) for i in ids)
