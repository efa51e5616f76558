"""Daemon core benchmark: N null connectors; start to READY, RSS, a one-connector reload, status round trips.

Targets (issue "Daemon core", N = 1000): READY <= 3 s, RSS <= 150 MB, reload <= 100 ms with 0 other actors
restarted, `status` round trip p99 <= 10 ms idle.
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
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from molamd.ctl import Client  # noqa: E402
from pgcluster import Cluster  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connectors", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mdb-", dir="/tmp"))
    work.chmod(0o755)
    cluster = Cluster(work / "pg")
    cluster.start()
    subprocess.run([str(BIN / "molamd"), "migrate", "--dsn", cluster.dsn()], check=True, capture_output=True)
    cfg = work / "molamd.toml"
    cfg.write_text(config_text(work, cluster.dsn(), args.connectors))
    notify_path = str(work / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    log = (work / "daemon.log").open("wb")
    t0 = time.monotonic()
    proc = subprocess.Popen([str(BIN / "molamd"), "run", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
        ready_s = time.monotonic() - t0
        time.sleep(2.0)  # settle: the database connects and the registry is synced in the background
        rss = rss_mb(proc.pid)

        client = Client(str(work / "control.sock"), 30)
        before = {r["name"]: r["incarnation"] for r in client.request("connectors", {})["result"]}
        changed = "conn-00007"
        cfg.write_text(config_text(work, cluster.dsn(), args.connectors, changed=changed))
        t1 = time.perf_counter()
        reply = client.request("reload", {})
        reload_wall_ms = (time.perf_counter() - t1) * 1000
        assert reply["ok"], reply
        after = {r["name"]: r["incarnation"] for r in client.request("connectors", {})["result"]}
        restarted = sorted(n for n in before if before[n] != after.get(n))
        others_restarted = [n for n in restarted if n != changed]

        for _ in range(50):
            client.request("status", {})
        samples = []
        for _ in range(args.requests):
            t = time.perf_counter()
            client.request("status", {})
            samples.append((time.perf_counter() - t) * 1000)
        client.close()
        t = time.perf_counter()
        subprocess.run([str(BIN / "molamctl"), "--socket", str(work / "control.sock"), "status"], check=True,
                       capture_output=True)
        cli_ms = (time.perf_counter() - t) * 1000

        print(f"molamd core benchmark: {args.connectors} null connectors, {os.cpu_count()} cores")
        print(f"start to READY=1:            {ready_s:.2f} s        (target <= 3 s)")
        print(f"RSS after start:             {rss:.1f} MB      (target <= 150 MB)")
        print(f"reload changing 1 connector: {reload_wall_ms:.1f} ms round trip, "
              f"{reply['result']['duration_seconds'] * 1000:.1f} ms in the daemon (target <= 100 ms)")
        print(f"  actors restarted: {restarted}; others restarted: {len(others_restarted)} (target 0)")
        print(f"status round trip over the socket, {len(samples)} requests: p50 {statistics.median(samples):.2f} ms, "
              f"p99 {percentile(samples, 0.99):.2f} ms, max {max(samples):.2f} ms (target p99 <= 10 ms)")
        print(f"one `molamctl status` process, start to exit: {cli_ms:.1f} ms (includes Python start-up)")
        print(json.dumps({"ready_s": round(ready_s, 3), "rss_mb": round(rss, 1),
                          "reload_ms": round(reload_wall_ms, 2), "others_restarted": len(others_restarted),
                          "status_p99_ms": round(percentile(samples, 0.99), 3)}))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        notify.close()
        cluster.destroy()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
