"""Drives the demo: PostgreSQL under var/, migrations, seed data, then molamd in the foreground."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from pgcluster import Cluster  # noqa: E402

CONFIG = ROOT / "config" / "molamd.dev.toml"
BIN = ROOT / ".venv" / "bin"
DEMO_PORT = 55432  # the port config/molamd.dev.toml names
HEALTHY_TIMEOUT = 60.0


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


def summary(cluster: Cluster) -> None:
    status, connectors = ctl("status"), ctl("connectors") or []
    with psycopg.connect(cluster.dsn()) as conn:
        registry = conn.execute("SELECT name, state, health_ok FROM bank_connectors_registry"
                                " WHERE host_id = %s ORDER BY name", (status["host_id"],)).fetchall()
        slices = dict(conn.execute("SELECT status, count(*) FROM payout_slices GROUP BY status").fetchall())
        profiles = conn.execute("SELECT count(*) FROM bank_profiles").fetchone()[0]
    print("\n== molamd demo summary", flush=True)
    print(f"daemon: molamd {status['version']} pid {status['pid']} host {status['host_id']}, "
          f"up {status['uptime_seconds']:.1f}s, database up: {status['database']['up']}")
    print(f"connectors: {len(connectors)} configured, "
          f"{sum(c['health'] == 'ok' for c in connectors)} healthy, "
          f"{sum(c['state'] == 'running' for c in connectors)} running")
    for name, state, ok in registry:
        print(f"  registry: {name:<22} state={state:<8} health_ok={ok}")
    print(f"seed data: {profiles} bank profiles; payout slices by status: {slices} "
          "(payout dispatch arrives with the REST connector)")


def run(until_idle: bool) -> int:
    pg_dir = cluster_dir()
    cluster = Cluster(pg_dir, port=DEMO_PORT)
    say(f"starting PostgreSQL in {pg_dir} on 127.0.0.1:{DEMO_PORT}")
    cluster.start()
    daemon: subprocess.Popen[bytes] | None = None
    log_path = ROOT / "var" / "molamd.log"
    try:
        say("applying migrations")
        subprocess.run([str(BIN / "molamd"), "migrate", "--config", str(CONFIG)], check=True)
        with psycopg.connect(cluster.dsn()) as conn:
            conn.execute((ROOT / "scripts" / "seed_demo.sql").read_text().encode())
        say("seeded bank profiles, treasury accounts and payout slices")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        say(f"starting molamd (JSON logs in {log_path.relative_to(ROOT)})")
        with log_path.open("ab") as log:
            daemon = subprocess.Popen([str(BIN / "molamd"), "run", "--config", str(CONFIG)],
                                      stdout=log, stderr=subprocess.STDOUT)
        say(f"from another shell: .venv/bin/molamctl --socket {control_socket()} status")
        started = time.monotonic()
        announced = False
        while True:
            if daemon.poll() is not None:
                say(f"molamd exited with {daemon.returncode}; last log lines:")
                print("\n".join(log_path.read_text().splitlines()[-10:]))
                return 1
            status, connectors = ctl("status"), ctl("connectors")
            if status:
                states = " ".join(f"{c['name']}={c['state']}/{c['health'] or '?'}" for c in connectors or [])
                say(f"up {status['uptime_seconds']:.0f}s db={'up' if status['database']['up'] else 'down'} {states}")
            if healthy(status, connectors):
                if until_idle:
                    summary(cluster)
                    return 0
                if not announced:
                    say("healthy; Ctrl-C stops the daemon and PostgreSQL")
                    announced = True
            elif until_idle and time.monotonic() - started > HEALTHY_TIMEOUT:
                say(f"not healthy within {HEALTHY_TIMEOUT:.0f}s")
                return 1
            time.sleep(1.0 if until_idle else 5.0)
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                code = daemon.wait()
            say(f"molamd stopped (exit {code})")
        cluster.stop()
        say("PostgreSQL stopped")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--until-idle", action="store_true", help="exit once the daemon is up and healthy")
    args = parser.parse_args()
    if os.getuid() == 0:
        pwd.getpwnam("postgres")  # the cluster runs as postgres; scripts/setup installs it
    # Ctrl-C and SIGTERM both stop the demo, even when started from a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return run(args.until_idle)


if __name__ == "__main__":
    sys.exit(main())
