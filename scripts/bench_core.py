"""Daemon core benchmark: N null connectors; start to READY, RSS, a one-connector reload, status round trips.

Targets (issue "Daemon core", N = 1000): READY <= 3 s, RSS <= 150 MB, reload <= 100 ms with 0 other actors
restarted, `status` round trip p99 <= 10 ms idle, and while half-open connections are held (tests check only
that they stall nothing, not how fast: this is the figure).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from pgcluster import Cluster, scratch_cluster  # noqa: E402

from molamd.ctl import Client  # noqa: E402

BIN = ROOT / ".venv" / "bin"


def config_text(directory: Path, dsn: str, count: int, changed: str | None = None) -> str:
    parts = [f"""
[daemon]
host_id = "bench"
[control]
socket = "{directory}/control.sock"
max_clients = 8
[metrics]
enabled = false
[database]
dsn = "{dsn}"
[workers.health_checker]
interval = "1h"
"""]
    for i in range(count):
        name = f"conn-{i:05d}"
        priority = 99 if name == changed else 10
        parts.append(f'[[connectors]]\nname = "{name}"\nkind = "null"\nbank_profile = "bank-{i % 50}"\n'
                     f"priority = {priority}\n")
    return "".join(parts)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Figures:
    ready_s = 0.0
    rss_mb = 0.0
    reload_ms = 0.0
    reload_daemon_ms = 0.0
    restarted: list[str]
    others_restarted = 0
    status_ms: list[float]
    status_held_ms: list[float]
    cli_ms = 0.0


def start_daemon(work: Path, cfg: Path, figures: Figures) -> subprocess.Popen[bytes]:
    notify_path = str(work / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": notify_path}
        with (work / "daemon.log").open("wb") as log:
            t0 = time.monotonic()
            proc = subprocess.Popen([str(BIN / "molamd"), "run", "--config", str(cfg)], stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
        while b"READY=1" not in notify.recv(4096):
            pass
        figures.ready_s = time.monotonic() - t0
    return proc


def measure_reload(client: Client, cfg: Path, text: str, changed: str, figures: Figures) -> None:
    before = {r["name"]: r["incarnation"] for r in client.request("connectors", {})["result"]}
    cfg.write_text(text)
    t1 = time.perf_counter()
    reply = client.request("reload", {})
    figures.reload_ms = (time.perf_counter() - t1) * 1000
    assert reply["ok"], reply
    figures.reload_daemon_ms = reply["result"]["duration_seconds"] * 1000
    after = {r["name"]: r["incarnation"] for r in client.request("connectors", {})["result"]}
    figures.restarted = sorted(n for n in before if before[n] != after.get(n))
    figures.others_restarted = len([n for n in figures.restarted if n != changed])


def measure_status(client: Client, requests: int, socket_path: str, figures: Figures) -> None:
    for _ in range(50):
        client.request("status", {})
    figures.status_ms = []
    for _ in range(requests):
        t = time.perf_counter()
        client.request("status", {})
        figures.status_ms.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    subprocess.run([str(BIN / "molamctl"), "--socket", socket_path, "status"], check=True, capture_output=True)
    figures.cli_ms = (time.perf_counter() - t) * 1000


def measure_status_held(client: Client, requests: int, socket_path: str, figures: Figures, held: int = 4) -> None:
    """The same round trips while ``held`` connections sit half-open (a request begun, never finished)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(held):
            s = socket.socket(socket.AF_UNIX)
            sockets.append(s)
            s.settimeout(30)
            s.connect(socket_path)
            s.makefile("rb").readline()  # the hello
            s.sendall(b'{"cmd": "sta')
        figures.status_held_ms = []
        for _ in range(requests):
            t = time.perf_counter()
            client.request("status", {})
            figures.status_held_ms.append((time.perf_counter() - t) * 1000)
    finally:
        for s in sockets:
            s.close()


def report(connectors: int, f: Figures) -> None:
    p99 = percentile(f.status_ms, 0.99)
    print(f"molamd core benchmark: {connectors} null connectors, {os.cpu_count()} cores")
    print(f"start to READY=1:            {f.ready_s:.2f} s        (target <= 3 s)")
    print(f"RSS after start:             {f.rss_mb:.1f} MB      (target <= 150 MB)")
    print(f"reload changing 1 connector: {f.reload_ms:.1f} ms round trip, {f.reload_daemon_ms:.1f} ms in the daemon"
          " (target <= 100 ms)")
    print(f"  actors restarted: {f.restarted}; others restarted: {f.others_restarted} (target 0)")
    p50 = statistics.median(f.status_ms)
    print(f"status round trip over the socket, {len(f.status_ms)} requests: p50 {p50:.2f} ms,"
          f" p99 {p99:.2f} ms, max {max(f.status_ms):.2f} ms (target p99 <= 10 ms)")
    held = f.status_held_ms
    print(f"  the same with 4 half-open connections held: p50 {statistics.median(held):.2f} ms,"
          f" p99 {percentile(held, 0.99):.2f} ms, max {max(held):.2f} ms")
    print(f"one `molamctl status` process, start to exit: {f.cli_ms:.1f} ms (includes Python start-up)")
    print(json.dumps({"ready_s": round(f.ready_s, 3), "rss_mb": round(f.rss_mb, 1), "reload_ms": round(f.reload_ms, 2),
                      "others_restarted": f.others_restarted, "status_p99_ms": round(p99, 3)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connectors", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    with scratch_cluster("mdb-") as (work, cluster):
        run_bench(args, work, cluster)
    return 0


def run_bench(args: argparse.Namespace, work: Path, cluster: Cluster) -> None:
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([str(BIN / "molamd"), "migrate", "--dsn", cluster.dsn()], check=True, capture_output=True)
        cfg = work / "molamd.toml"
        cfg.write_text(config_text(work, cluster.dsn(), args.connectors))
        figures = Figures()
        proc = start_daemon(work, cfg, figures)
        time.sleep(2.0)  # settle: the database connects and the registry is synced in the background
        figures.rss_mb = rss_mb(proc.pid)
        client = Client(str(work / "control.sock"), 30)
        changed = "conn-00007"
        measure_reload(client, cfg, config_text(work, cluster.dsn(), args.connectors, changed=changed), changed,
                       figures)
        measure_status(client, args.requests, str(work / "control.sock"), figures)
        measure_status_held(client, args.requests, str(work / "control.sock"), figures)
        client.close()
        report(args.connectors, figures)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
