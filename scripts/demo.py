"""Drives the demo: PostgreSQL under var/, migrations, seed data, then molamd in the foreground."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from pgcluster import Cluster  # noqa: E402

CONFIG = ROOT / "config" / "molamd.dev.toml"
BIN = ROOT / ".venv" / "bin"
DEMO_PORT = 55432  # the ports config/molamd.dev.toml names
BANK_PORT = 58080
SFTP_PORT = 58022
SFTP_ROOT = Path("/tmp/molamd-demo/sftp")  # config/molamd.dev.toml pins the host key kept beside it
SFTP_STATE = Path("/tmp/molamd-demo/sftp-state")
SFTP_PASSWORD = "sandbox-sftp-password"
SANDBOX_SECRET = "sandbox-hmac-secret"
IDLE_TIMEOUT = 300.0
LOG_PATH = ROOT / "var" / "molamd.log"
FINAL = ("settled", "failed", "dead")
FAULT_MIX = {"error_rate": 0.2, "reset_rate": 0.05, "hang_rate": 0.05, "rate_limit_rate": 0.03, "retry_after": 1.0}


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def cluster_dir() -> Path:
    """var/pg, unless the postgres user cannot reach it (a checkout under /root): then /tmp."""
    wanted = ROOT / "var" / "pg"
    if os.getuid() != 0:
        return wanted
    probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(ROOT)], check=False)
    if probe.returncode == 0:
        return wanted
    fallback = Path("/tmp/molamd-demo-pg")
    say(f"the postgres user cannot reach {ROOT}; keeping the cluster in {fallback}")
    return fallback


def control_socket() -> str:
    import tomllib

    return str(tomllib.loads(CONFIG.read_text())["control"]["socket"])


def ctl(*args: str) -> Any:
    result = subprocess.run([str(BIN / "molamctl"), "--socket", control_socket(), "--json", *args],
                            capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)


def healthy(status: Any, connectors: Any) -> bool:
    return bool(
        status and connectors and status["database"]["up"]
        and all(c["state"] == "running" and c["health"] == "ok" for c in connectors)
    )


def start_sftp() -> subprocess.Popen[str]:
    """The bank's SFTP server; its inbox starts empty, like the demo database."""
    shutil.rmtree(SFTP_ROOT, ignore_errors=True)
    sftp = subprocess.Popen(
        [str(BIN / "python"), str(ROOT / "scripts" / "sandbox_sftp.py"), "--root", str(SFTP_ROOT),
         "--state", str(SFTP_STATE), "--port", str(SFTP_PORT), "--password", SFTP_PASSWORD],
        stdout=subprocess.PIPE, text=True)
    assert sftp.stdout is not None
    line = sftp.stdout.readline().strip()
    if "listening" not in line:
        raise SystemExit(f"demo: the sandbox SFTP server did not start: {line!r}")
    return sftp


def start_bank(faults: bool) -> tuple[subprocess.Popen[str], str]:
    mix = FAULT_MIX if faults else {}
    bank = subprocess.Popen(
        [str(BIN / "python"), str(ROOT / "scripts" / "sandbox_bank.py"), "--port", str(BANK_PORT),
         "--events-port", str(BANK_PORT + 1), "--statements-dir", str(SFTP_ROOT / "outgoing"),
         "--statement-interval", "1",
         "--secret", SANDBOX_SECRET, "--settle-delay", "0.2", "--reject-rate", "0.01", "--faults", json.dumps(mix)],
        stdout=subprocess.PIPE, text=True)
    assert bank.stdout is not None
    line = bank.stdout.readline().strip()
    if "listening" not in line:
        raise SystemExit(f"demo: the sandbox bank did not start: {line!r}")
    return bank, line.split()[-1]


def slice_counts(cluster: Cluster) -> dict[str, int]:
    with psycopg.connect(cluster.dsn()) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM payout_slices GROUP BY status").fetchall())


def progress(cluster: Cluster, connectors: Any, previous: tuple[float, int]) -> tuple[float, int, dict[str, int]]:
    counts = slice_counts(cluster)
    final = sum(counts.get(s, 0) for s in FINAL)
    now = time.monotonic()
    rate = (final - previous[1]) / max(now - previous[0], 1e-6)
    breakers = " ".join(f"{c['name']}={c['breaker'] or '-'}" for c in connectors or [])
    shown = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    say(f"slices: {shown} | {rate:.0f} final/s | breakers: {breakers}")
    return now, final, counts


def reconcile(cluster: Cluster, bank_url: str) -> tuple[int, int, list[str]]:
    """(paid twice, lost, notes) from the bank's ledger against the database."""
    ledger = httpx.get(f"{bank_url}/admin/ledger", timeout=30).json()["payments"]
    by_ref: dict[str, list[dict[str, Any]]] = {}
    for payment in ledger:
        by_ref.setdefault(str(payment["reference"]), []).append(payment)
    paid_twice = sum(1 for payments in by_ref.values() if len(payments) > 1)
    with psycopg.connect(cluster.dsn()) as conn:
        rows = conn.execute("SELECT payout_id || '/' || id, status, provider_ref FROM payout_slices").fetchall()
    lost, notes = 0, []
    for reference, status, provider_ref in rows:
        paid = by_ref.get(reference, [])
        if status in ("settled", "sent") and not paid:
            lost += 1
            notes.append(f"{reference}: {status} in the database, unknown to the bank")
        elif paid and status not in ("settled", "sent", "failed"):
            lost += 1
            notes.append(f"{reference}: executed by the bank ({paid[0]['id']}) but {status} in the database")
        elif paid and provider_ref not in {p["id"] for p in paid}:
            lost += 1
            notes.append(f"{reference}: the database names {provider_ref}, the bank {paid[0]['id']}")
        elif status not in FINAL:
            lost += 1
            notes.append(f"{reference}: still {status}")
    return paid_twice, lost, notes


def statement_counts(cluster: Cluster) -> dict[str, int]:
    """Statement files and lines in the database, and how many lines are linked to the payouts they carry."""
    with psycopg.connect(cluster.dsn()) as conn:
        files, failed = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status <> 'parsed') FROM bank_statements_raw").fetchone()
        lines, linked, settled_linked = conn.execute(
            "SELECT count(*), count(l.payout_slice_id), count(*) FILTER (WHERE s.status = 'settled')"
            " FROM bank_statement_lines l LEFT JOIN payout_slices s ON s.id = l.payout_slice_id").fetchone()
        settled = conn.execute("SELECT count(*) FROM payout_slices WHERE status = 'settled'").fetchone()[0]
        proven = conn.execute(
            "SELECT count(*) FROM molamd_audit WHERE action = 'statement_settle'").fetchone()[0]
    return {"files": files, "failed": failed, "lines": lines, "linked": linked, "settled_linked": settled_linked,
            "settled": settled, "proven": proven}


def summary(cluster: Cluster, bank_url: str, elapsed: float) -> int:
    status, connectors = ctl("status"), ctl("connectors") or []
    counts = slice_counts(cluster)
    paid_twice, lost, notes = reconcile(cluster, bank_url)
    with psycopg.connect(cluster.dsn()) as conn:
        dead = conn.execute("SELECT attempts, max_attempts, last_error FROM payout_slices WHERE status = 'dead'"
                            " ORDER BY id LIMIT 5").fetchall()
        calls = conn.execute("SELECT count(*) FROM bank_connector_logs").fetchone()[0]
    metrics = httpx.get("http://127.0.0.1:9464/metrics", timeout=10).text
    opened = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("molamd_circuit_breaker_transitions_total") and 'to_state="open"' in line)
    closed = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("molamd_circuit_breaker_transitions_total") and 'to_state="closed"' in line)
    stats = httpx.get(f"{bank_url}/admin/stats", timeout=10).json()
    total = sum(counts.values())
    print("\n== molamd demo summary", flush=True)
    print(f"daemon: molamd {status['version']} host {status['host_id']}, database up: {status['database']['up']}")
    print(f"slices: {total} seeded, " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f"; all final in {elapsed:.1f}s ({total / max(elapsed, 1e-6):.0f}/s)")
    print(f"bank: {stats['payments']} payments executed, {stats['replays']} idempotent replays, "
          f"{stats['faults']} faults injected, {stats['requests']} requests")
    print(f"audit: {calls} bank calls in bank_connector_logs")
    print(f"breakers: opened {opened:.0f} times, closed {closed:.0f} times; now "
          + ", ".join(f"{c['name']}={c['breaker']}" for c in connectors if c["breaker"]))
    for attempts, max_attempts, error in dead:
        print(f"dead: after {attempts}/{max_attempts} attempts: {error}")
    st = statement_counts(cluster)
    print(f"statements: {st['files']} MT940 files ingested over SFTP ({st['failed']} failed), {st['lines']} lines, "
          f"{st['linked']} linked to the payouts they carry; {st['settled_linked']} of {st['settled']} settled "
          f"payouts confirmed by a statement line ({st['proven']} of them settled by it from dead or retrying); "
          f"{st['lines'] - st['linked']} lines unmatched")
    print(f"paid twice: {paid_twice}")
    print(f"lost: {lost}")
    for note in notes[:10]:
        print(f"  {note}")
    return 0 if paid_twice == 0 and lost == 0 else 1


def prepare(cluster: Cluster, slices: int) -> None:
    cluster.recreate_database("molam")
    say("applying migrations to a fresh demo database")
    subprocess.run([str(BIN / "molamd"), "migrate", "--config", str(CONFIG)], check=True)
    seed = (ROOT / "scripts" / "seed_demo.sql").read_text().replace("__SLICES__", str(int(slices)))
    with psycopg.connect(cluster.dsn()) as conn:
        conn.execute(seed.encode())
    say(f"seeded 2 bank profiles, their XOF accounts and {slices} payout slices")


def watch(daemon: subprocess.Popen[bytes], cluster: Cluster, bank_url: str, until_idle: bool) -> int:
    started = time.monotonic()
    mark: tuple[float, int] = (started, 0)
    announced = False
    while True:
        if daemon.poll() is not None:
            say(f"molamd exited with {daemon.returncode}; see {LOG_PATH}")
            return 1
        status, connectors = ctl("status"), ctl("connectors")
        if status:
            now, final, counts = progress(cluster, connectors, mark)
            mark = (now, final)
            done = final == sum(counts.values())
            st = statement_counts(cluster)
            say(f"statements: {st['files']} files, {st['lines']} lines, {st['linked']} linked")
            reported = st["settled_linked"] == st["settled"]
            if until_idle and done and reported and healthy(status, connectors):
                return summary(cluster, bank_url, time.monotonic() - started)
            if done and not announced:
                say("every slice is final; Ctrl-C stops the daemon, the bank and PostgreSQL")
                announced = True
        if until_idle and time.monotonic() - started > IDLE_TIMEOUT:
            say(f"not idle within {IDLE_TIMEOUT:.0f}s")
            summary(cluster, bank_url, time.monotonic() - started)
            return 1
        time.sleep(1.0 if until_idle else 2.0)


def stop(daemon: subprocess.Popen[bytes] | None, bank: subprocess.Popen[str] | None, cluster: Cluster,
         sftp: subprocess.Popen[str] | None = None) -> None:
    if daemon is not None and daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = daemon.wait()
        say(f"molamd stopped (exit {code})")
    for peer in (bank, sftp):
        if peer is not None:
            peer.terminate()
            peer.wait(10)
    cluster.stop()
    say("sandbox bank and PostgreSQL stopped")


def run(until_idle: bool, faults: bool, slices: int) -> int:
    pg_dir = cluster_dir()
    cluster = Cluster(pg_dir, port=DEMO_PORT)
    say(f"starting PostgreSQL in {pg_dir} on 127.0.0.1:{DEMO_PORT}")
    cluster.start()
    daemon: subprocess.Popen[bytes] | None = None
    bank: subprocess.Popen[str] | None = None
    sftp: subprocess.Popen[str] | None = None
    try:
        prepare(cluster, slices)
        sftp = start_sftp()
        say(f"sandbox SFTP statement drop at 127.0.0.1:{SFTP_PORT} (inbox {SFTP_ROOT / 'outgoing'})")
        bank, bank_url = start_bank(faults)
        say(f"sandbox bank at {bank_url}" + (f" with faults {json.dumps(FAULT_MIX)}" if faults else ""))
        LOG_PATH.parent.mkdir(parents=True, exist_ok=True)
        say(f"starting molamd (JSON logs in {LOG_PATH.relative_to(ROOT)})")
        with LOG_PATH.open("ab") as log:
            daemon = subprocess.Popen([str(BIN / "molamd"), "run", "--config", str(CONFIG)],
                                      stdout=log, stderr=subprocess.STDOUT)
        say(f"from another shell: .venv/bin/molamctl --socket {control_socket()} status")
        return watch(daemon, cluster, bank_url, until_idle)
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        stop(daemon, bank, cluster, sftp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--until-idle", action="store_true",
                        help="exit once every seeded slice is final, with a summary (exit 1 if any paid twice or lost)")
    parser.add_argument("--faults", action="store_true",
                        help="the sandbox bank injects 20%% 5xx, 5%% resets, 5%% hangs and some 429s")
    parser.add_argument("--slices", type=int, default=3000, help="payout slices to seed (default 3000)")
    args = parser.parse_args()
    if os.getuid() == 0:
        pwd.getpwnam("postgres")  # the cluster runs as postgres; scripts/setup installs it
    # Ctrl-C and SIGTERM both stop the demo, even when started from a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    os.environ["MOLAMD_SANDBOX_HMAC"] = SANDBOX_SECRET  # config/molamd.dev.toml reads it as env:
    os.environ["MOLAMD_SANDBOX_SFTP"] = SFTP_PASSWORD
    return run(args.until_idle, args.faults, args.slices)


if __name__ == "__main__":
    sys.exit(main())
