"""Operations benchmark: the /metrics scrape of a daemon with N connectors, and audit writes with the hash chain
beside the same writes without it.

Targets (issue "Operations"): a scrape with 1,000 connectors <= 100 ms (and its size said); audit writes with the
chain <= 5% slower at the payout benchmark's rate. For the second, the bank-call rows are written as the
dispatcher writes them (one INSERT of a batch per transaction), paced at ``--rate`` rows per second, and the
database time they take is compared with the chain's trigger on and off; the unpaced throughput of both is
printed too. ``scripts/bench payouts --audit-chain off`` gives the end-to-end comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_core import config_text, percentile  # noqa: E402
from pgcluster import Cluster, scratch_cluster  # noqa: E402

from connectors import CallRecord  # noqa: E402
from molamd import audit  # noqa: E402

BIN = ROOT / ".venv" / "bin"
TRIGGER = "bank_connector_logs_chain"


def measure_scrape(work: Path, cluster: Cluster, connectors: int, scrapes: int) -> dict[str, float]:
    port = 19500 + os.getpid() % 400
    cfg = work / "molamd.toml"
    text = config_text(work, cluster.dsn(), connectors).replace(
        "[metrics]\nenabled = false", f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"')
    # Health checks at their default 30 s: every connector has call series, and a round falls within the scrapes.
    text = text.replace('interval = "1h"', 'interval = "30s"')
    cfg.write_text(text)
    with (work / "daemon.log").open("wb") as log:
        proc = subprocess.Popen([str(BIN / "molamd"), "run", "--config", str(cfg)], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no /metrics: {(work / 'daemon.log').read_text()[-2000:]}")
            time.sleep(0.2)
        time.sleep(8)  # a round of health checks and telemetry: the series a running daemon has
        with httpx.Client(timeout=10) as client:
            times, sizes = [], []
            for _ in range(scrapes):
                t = time.perf_counter()
                body = client.get(url).content
                times.append((time.perf_counter() - t) * 1000)
                sizes.append(len(body))
            openmetrics = client.get(url, headers={"Accept": "application/openmetrics-text"}).content
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        return {"p50_ms": statistics.median(times), "p95_ms": percentile(times, 0.95), "max_ms": max(times),
                "bytes": sizes[-1], "openmetrics_bytes": len(openmetrics), "series": series}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _records(batch: int) -> list[CallRecord]:
    return [CallRecord(connector=f"bank-{n % 20}", operation="send_payment", trace_id=f"{n:032x}",
                       duration_seconds=0.0123 + n / 1e5, outcome="ok", http_status=201, payout_slice_id=n,
                       request={"amount": "125000", "currency": "XOF", "beneficiary_account": "SN08****1234"},
                       response={"status": "accepted", "id": f"bank-payment-{n}"}) for n in range(batch)]


def measure_audit(dsn: str, rows: int, batch: int, rate: float) -> dict[str, dict[str, float]]:
    """Per mode: unpaced rows/s, and the database seconds per second of writing ``rate`` rows/s."""
    records = _records(batch)
    found: dict[str, dict[str, float]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for mode in ("chain", "plain", "chain", "plain"):  # twice each, interleaved: the machine's speed drifts
            conn.execute(f"ALTER TABLE bank_connector_logs {'ENABLE' if mode == 'chain' else 'DISABLE'}"
                         f" TRIGGER {TRIGGER}")
            t = time.perf_counter()
            for _ in range(rows // batch):
                with conn.transaction():
                    audit.bank_calls(conn, "bench", records)
            unpaced = rows / (time.perf_counter() - t)
            busy, interval = [], batch / rate
            start = time.perf_counter()
            for i in range(max(1, int(rate * 5 / batch))):  # five seconds at the payout rate
                t = time.perf_counter()
                with conn.transaction():
                    audit.bank_calls(conn, "bench", records)
                busy.append(time.perf_counter() - t)
                time.sleep(max(0.0, start + (i + 1) * interval - time.perf_counter()))
            figures = found.setdefault(mode, {"unpaced_rows_s": 0.0, "busy_ms_per_s": 0.0, "batch_ms": 0.0})
            figures["unpaced_rows_s"] += unpaced / 2
            figures["busy_ms_per_s"] += sum(busy) / (len(busy) * interval) * 1000 / 2
            figures["batch_ms"] += statistics.median(busy) * 1000 / 2
        conn.execute(f"ALTER TABLE bank_connector_logs ENABLE TRIGGER {TRIGGER}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connectors", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--rows", type=int, default=20_000, help="audit rows per unpaced run")
    parser.add_argument("--batch", type=int, default=100, help="rows per INSERT, as the dispatcher batches them")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="audit rows per second for the paced run: the payout benchmark's slices/s")
    args = parser.parse_args()
    with scratch_cluster("mdo-") as (work, cluster):
        subprocess.run([str(BIN / "molamd"), "migrate", "--dsn", cluster.dsn()], check=True, capture_output=True)
        scrape = measure_scrape(work, cluster, args.connectors, args.scrapes)
        writes = measure_audit(cluster.dsn(), args.rows, args.batch, args.rate)
    print(f"molamd operations benchmark, {os.cpu_count()} cores")
    print(f"/metrics with {args.connectors} connectors, {args.scrapes} scrapes: p50 {scrape['p50_ms']:.1f} ms,"
          f" p95 {scrape['p95_ms']:.1f} ms, max {scrape['max_ms']:.1f} ms (target <= 100 ms);"
          f" {scrape['bytes'] / 1024:.0f} KiB text ({scrape['openmetrics_bytes'] / 1024:.0f} KiB OpenMetrics),"
          f" {scrape['series']:.0f} series")
    chain, plain = writes["chain"], writes["plain"]
    print(f"audit writes, {args.batch} bank-call rows per transaction:")
    print(f"  unpaced: with the chain {chain['unpaced_rows_s']:.0f} rows/s, without {plain['unpaced_rows_s']:.0f}"
          f" rows/s ({plain['unpaced_rows_s'] / chain['unpaced_rows_s']:.2f}x)")
    slower = chain["busy_ms_per_s"] / plain["busy_ms_per_s"] - 1
    print(f"  at {args.rate:.0f} rows/s: database time {chain['busy_ms_per_s']:.1f} ms/s with the chain,"
          f" {plain['busy_ms_per_s']:.1f} ms/s without ({slower * 100:+.0f}%); a batch {chain['batch_ms']:.2f} ms"
          f" vs {plain['batch_ms']:.2f} ms")
    print(json.dumps({"scrape_p95_ms": round(scrape["p95_ms"], 2), "scrape_bytes": scrape["bytes"],
                      "audit_chain_rows_s": round(chain["unpaced_rows_s"]),
                      "audit_plain_rows_s": round(plain["unpaced_rows_s"]),
                      "audit_busy_ratio": round(chain["busy_ms_per_s"] / plain["busy_ms_per_s"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
