"""The fast text encoder writes exactly what prometheus_client's generate_latest writes, scrape after scrape, with
labels that need escaping, values that change between scrapes, and series that come and go."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from molamd.exposition import TextEncoder
from molamd.metrics import Metrics


def populated() -> Metrics:
    m = Metrics()
    for i in range(50):
        name = f"conn-{i:03d}"
        m.connector_duration.labels(name, "send_payment").observe(i / 10)
        m.connector_requests.labels(name, "send_payment", "ok").inc(i)
        m.breaker_state.labels(name, "closed").set(1)
        m.limiter_wait.labels(name).observe(0.0)
    m.statement_files.labels('a "quoted"\\source\nwith a newline', "parsed").inc()
    m.secret_created.labels("vault:secret/é#x").set(1.5e9)
    m.payout_slices.labels("pending", "XOF").set(float("inf"))
    return m


def test_the_same_bytes_as_generate_latest_scrape_after_scrape() -> None:
    m = populated()
    encoder = TextEncoder()
    assert encoder(m.registry) == generate_latest(m.registry)
    m.connector_requests.labels("conn-001", "send_payment", "ok").inc(5)  # values change: the cache keeps heads only
    m.breaker_state.remove("conn-002", "closed")  # a series goes away
    m.breaker_state.labels("conn-002", "open").set(1)  # and another comes
    m.payout_slices.labels("pending", "XOF").set(float("nan"))
    assert encoder(m.registry) == generate_latest(m.registry)


def test_a_registry_of_other_metrics_too() -> None:
    registry = CollectorRegistry()
    Gauge("plain", "a gauge\nover two lines", registry=registry).set(1)
    Counter("requests", "a counter", ["path"], registry=registry).labels("/x").inc()
    Gauge("my.dotted", "a name the text format escapes", registry=registry).set(2)
    assert TextEncoder()(registry) == generate_latest(registry)
