"""Payout pipeline benchmark, side by side in one run with the sandbox bank and PostgreSQL on this machine.

1. Pipeline efficiency: slices/s the daemon completes end to end (claim → bank → result recorded) divided by
   requests/s a bare httpx loop with the same concurrency gets posting the same signed payment to the same
   sandbox bank. Target >= 0.8.
2. Latency at half that throughput: p50/p95/p99 from claim to recorded answer
   (molamd_payout_dispatch_duration_seconds). Target p99 <= 50 ms.
3. Resilience overhead per call: our limiter + bulkhead + breaker, beside pybreaker's ``call``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from pgcluster import Cluster, scratch_cluster  # noqa: E402

from connectors import BreakerConfig, CallContext, PayoutSlice, RestConfig, RestConnector, RestOptions, Secret  # noqa: E402

BIN = ROOT / ".venv" / "bin"
SECRET = "bench-hmac-secret"


def bench_config(work: Path, dsn: str, bank: str, concurrency: int, metrics_port: int) -> str:
    return f"""
[daemon]
host_id = "bench"
[control]
socket = "{work}/control.sock"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[logging]
level = "warning"
[database]
dsn = "{dsn}"
pool_max_size = 8
[workers.health_checker]
interval = "1h"
[workers.status_follower]
enabled = false
[workers.dispatcher]
batch_size = {concurrency * 2}
max_in_flight = {concurrency}
idle_poll = "200ms"
flush_interval = "2ms"
call_timeout = "10s"
[[connectors]]
name = "bench-bank"
kind = "rest"
bank_profile = "bench"
[connectors.rest]
base_url = "{bank}"
key_id = "molamd-demo"
hmac_secret = "env:MOLAMD_BENCH_HMAC"
max_connections = {concurrency}
[connectors.limits]
rate = 100000.0
burst = 10000
concurrency = {concurrency}
call_timeout = "10s"
"""


def seed(conn: Any, count: int, tag: str) -> None:
    with conn.transaction():
        conn.execute("INSERT INTO bank_profiles (id, name, country) VALUES ('bench', 'Bench', 'SN')"
                     " ON CONFLICT DO NOTHING")
        account = conn.execute(
            "INSERT INTO treasury_accounts (bank_profile_id, label, account_number, currency)"
            " VALUES ('bench', 'main', 'ACC-1', 'XOF') ON CONFLICT (bank_profile_id, label)"
            " DO UPDATE SET active = true RETURNING id").fetchone()[0]
        conn.execute(
            "INSERT INTO payout_slices (payout_id, treasury_account_id, amount, currency, rail, beneficiary_name,"
            " beneficiary_account) SELECT %s || n, %s, 1000, 'XOF', 'ach', 'B', 'SN08000000000001'"
            " FROM generate_series(1, %s) n", (tag, account, count))


def done_count(conn: Any) -> int:
    return int(conn.execute("SELECT count(*) FROM payout_slices WHERE status IN ('sent', 'settled', 'failed',"
                            " 'dead', 'unresolved')").fetchone()[0])


def wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("bench: timed out")
        time.sleep(0.1)


async def bare_httpx(bank: str, concurrency: int, total: int) -> float:
    """requests/s of C tasks posting signed payments through the same connector code path's HTTP client."""
    config = RestConfig(name="bare", bank_profile="bench", rest=RestOptions(
        base_url=bank, key_id="molamd-demo", hmac_secret=Secret("env:X", SECRET), max_connections=concurrency))
    connector = RestConnector(config)
    await connector.open()
    counter = iter(range(total))
    ctx = CallContext(trace_id="bare", timeout=10)

    async def worker() -> None:
        for n in counter:
            s = PayoutSlice(id=n, payout_id=f"bare{n}", idempotency_key=f"bare-{time.monotonic_ns()}-{n}",
                            amount=Decimal(1000), currency="XOF", rail="ach", debtor_account="ACC-1",
                            beneficiary_name="B", beneficiary_account="SN08000000000001")
            await connector.send_payment(s, ctx)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = trio.current_time() - start
    await connector.aclose()
    return total / elapsed


def histogram_quantiles(text: str, quantiles: tuple[float, ...],
                        prefix: str = "molamd_payout_dispatch_duration_seconds_bucket",
                        match: str = 'outcome="sent"') -> dict[float, float]:
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(prefix) and match in line:
            bound = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1]
    result: dict[float, float] = {}
    for q in quantiles:
        target = q * total
        previous_le, previous_count = 0.0, 0.0
        for le, count in buckets:
            if count >= target:
                span = count - previous_count
                fraction = (target - previous_count) / span if span else 1.0
                result[q] = previous_le + (le - previous_le) * fraction if le != float("inf") else previous_le
                break
            previous_le, previous_count = le, count
    return result


async def resilience_overhead(calls: int, rounds: int = 5) -> tuple[float, float, float]:
    """µs per call, best of ``rounds``: ours (limiter + bulkhead + breaker, timing the call as the connector
    actor does), pybreaker.call, and a bare await for reference."""
    import pybreaker

    from actors import Bulkhead, CircuitBreaker, RateLimiter

    breaker = CircuitBreaker("bench", BreakerConfig())
    limiter = RateLimiter(1e9, 1_000_000)
    bulkhead = Bulkhead("bench", 64)
    py = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)

    async def bank_call() -> None:
        return None

    def sync_call() -> None:
        return None

    async def bare() -> None:
        for _ in range(calls):
            await bank_call()

    async def ours() -> None:
        for _ in range(calls):  # what ConnectorActor._guarded does around the connector call
            t = trio.current_time()
            if not limiter.try_acquire(t):
                await limiter.acquire()
                t = trio.current_time()
            if not bulkhead.try_enter():
                await bulkhead.enter()
            try:
                breaker.acquire()
                await bank_call()
                breaker.record(True, trio.current_time() - t)
            finally:
                bulkhead.leave()

    async def theirs() -> None:
        for _ in range(calls):
            py.call(sync_call)

    async def best(fn: Any) -> float:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            await fn()
            times.append((time.perf_counter() - start) / calls * 1e6)
        return min(times)

    bare_us = await best(bare)
    return await best(ours) - bare_us, await best(theirs), bare_us


def measure_throughput(conn: Any, slices: int) -> float:
    seed(conn, slices, "full")
    start = time.monotonic()
    wait_until(lambda: done_count(conn) >= slices, 300)
    return slices / (time.monotonic() - start)


def measure_latency(conn: Any, rate: float, metrics_url: str) -> tuple[int, dict[float, float], dict[float, float]]:
    """Seed at ``rate`` slices/s for 10 s in 10 ms steps; quantiles of claim→recorded and of the bank call."""
    before = done_count(conn)
    paced = int(rate * 10)
    baseline = httpx.get(metrics_url, timeout=10).text
    step = 0.01
    per_step = max(1, round(rate * step))
    start = time.monotonic()
    sent = 0
    while sent < paced:
        seed(conn, per_step, f"paced{sent}-")
        sent += per_step
        time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    wait_until(lambda: done_count(conn) >= before + sent, 120)
    paced_histograms = diff_histogram(baseline, httpx.get(metrics_url, timeout=10).text)
    ours = histogram_quantiles(paced_histograms, (0.5, 0.95, 0.99))
    bank = histogram_quantiles(paced_histograms, (0.5, 0.99), "molamd_connector_request_duration_seconds_bucket",
                               'operation="send_payment"')
    return sent, ours, bank


def report(args: argparse.Namespace, bare: tuple[float, float], daemon_rps: float, half: float,
           latency: tuple[int, dict[float, float], dict[float, float]], overhead: tuple[float, float, float]) -> None:
    bare_rps = sum(bare) / 2
    sent, q, bank_q = latency
    ours, theirs, bare_await = overhead
    print(f"molamd payout benchmark: {args.slices} slices, concurrency {args.concurrency}, {os.cpu_count()} cores,"
          f" audit chain {args.audit_chain}")
    print(f"bare httpx loop (signed POST /payments): {bare_rps:.0f} req/s (before {bare[0]:.0f}, after {bare[1]:.0f})")
    print(f"daemon end to end (claim -> bank -> recorded): {daemon_rps:.0f} slices/s")
    print(f"pipeline efficiency: {daemon_rps / bare_rps:.2f} (target >= 0.8)")
    print(f"latency at {half:.0f} slices/s ({sent} slices), claim -> recorded: p50 {q[0.5] * 1000:.1f} ms,"
          f" p95 {q[0.95] * 1000:.1f} ms, p99 {q[0.99] * 1000:.1f} ms (target p99 <= 50 ms);"
          f" of which the bank call: p50 {bank_q[0.5] * 1000:.1f} ms, p99 {bank_q[0.99] * 1000:.1f} ms")
    print(f"resilience per call: ours {ours:.2f} us (limiter + bulkhead + breaker), pybreaker.call "
          f"{theirs:.2f} us (bare await {bare_await:.2f} us)")
    print(json.dumps({"bare_rps": round(bare_rps), "daemon_rps": round(daemon_rps),
                      "efficiency": round(daemon_rps / bare_rps, 3), "p50_ms": round(q[0.5] * 1000, 2),
                      "p95_ms": round(q[0.95] * 1000, 2), "p99_ms": round(q[0.99] * 1000, 2),
                      "ours_us": round(ours, 2), "pybreaker_us": round(theirs, 2)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--audit-chain", choices=("on", "off"), default="on",
                        help="off: the audit tables' hash-chain triggers disabled, to measure what the chain costs")
    args = parser.parse_args()
    with scratch_cluster("mdp-") as (work, cluster):
        run_bench(args, work, cluster)
    return 0


def run_bench(args: argparse.Namespace, work: Path, cluster: Cluster) -> None:
    bank = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sandbox_bank.py"), "--port", "0", "--secret",
                             SECRET, "--settle-delay", "0.1"], stdout=subprocess.PIPE, text=True)
    assert bank.stdout is not None
    bank_url = bank.stdout.readline().split()[-1]
    daemon: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([str(BIN / "molamd"), "migrate", "--dsn", cluster.dsn()], check=True, capture_output=True)
        if args.audit_chain == "off":
            with psycopg.connect(cluster.dsn(), autocommit=True) as off:
                for table in ("bank_connector_logs", "molamd_audit"):
                    off.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_chain")
        metrics_port = 19000 + os.getpid() % 1000
        cfg = work / "molamd.toml"
        cfg.write_text(bench_config(work, cluster.dsn(), bank_url, args.concurrency, metrics_port))
        # The bare loop runs before and after the daemon's run and the two are averaged: this machine's speed
        # drifts by tens of percent between minutes, and the ratio should compare like with like.
        bare_before = trio.run(bare_httpx, bank_url, args.concurrency, args.slices)
        env = {**os.environ, "MOLAMD_BENCH_HMAC": SECRET}
        with (work / "daemon.log").open("wb") as log:
            daemon = subprocess.Popen([str(BIN / "molamd"), "run", "--config", str(cfg)], stdout=log,
                                      stderr=subprocess.STDOUT, env=env)
        wait_until((work / "control.sock").exists, 30)
        time.sleep(1.0)
        conn = psycopg.connect(cluster.dsn(), autocommit=True)
        daemon_rps = measure_throughput(conn, args.slices)
        bare_after = trio.run(bare_httpx, bank_url, args.concurrency, args.slices)
        half = daemon_rps / 2
        latency = measure_latency(conn, half, f"http://127.0.0.1:{metrics_port}/metrics")
        overhead = trio.run(resilience_overhead, 200_000)
        report(args, (bare_before, bare_after), daemon_rps, half, latency, overhead)
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        bank.terminate()
        bank.wait(10)


def diff_histogram(before: str, after: str) -> str:
    """The histogram bucket lines of ``after`` minus ``before`` (so the paced run is measured alone)."""
    def lines(text: str) -> dict[str, float]:
        out = {}
        for line in text.splitlines():
            if "_bucket{" in line:
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    old, new = lines(before), lines(after)
    return "\n".join(f"{key} {value - old.get(key, 0.0)}" for key, value in new.items())


if __name__ == "__main__":
    sys.exit(main())
