"""The daemon as systemd runs it: sd_notify, signals, reloads, the database coming and going, metrics."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import connector_toml, daemon_toml, free_port

CONNECTORS = connector_toml("alpha") + connector_toml("beta")


class NotifyListener:
    """A NOTIFY_SOCKET like systemd's, recording every datagram with its arrival time."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, value: str | None = None, *, after: int = 0, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, (_, fields) in enumerate(self.messages[after:], start=after):
                if key in fields and (value is None or fields[key] == value):
                    return index
            time.sleep(0.02)
        raise AssertionError(f"no {key}={value} in {self.messages[after:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _wait_until(predicate: Callable[[], bool], what: str, detail: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout:g}s: {detail()}"
        time.sleep(0.05)


@pytest.fixture
def notify(short_tmp: Path) -> Any:
    listener = NotifyListener(short_tmp)
    yield listener
    listener.close()


def test_sd_notify_lifecycle(daemon_factory: Any, notify: NotifyListener) -> None:
    d = daemon_factory(connectors=CONNECTORS, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"})
    ready = notify.wait_for("READY", "1")
    assert "serving 2 connectors" in notify.messages[ready][1]["STATUS"]
    first_ping = notify.wait_for("WATCHDOG", "1", after=ready)
    notify.wait_for("WATCHDOG", "1", after=first_ping + 1)
    d.signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING", "1", after=ready + 1)
    usec = int(notify.messages[reloading][1]["MONOTONIC_USEC"])
    # CLOCK_MONOTONIC's time, as systemd reads it (not trio's clock, not the wall clock): the 30 s only allow
    # for the time since it was sent; another clock would be off by the machine's uptime or 56 years.
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 30
    notify.wait_for("READY", "1", after=reloading + 1)
    assert d.stop() == 0
    stopping = notify.wait_for("STOPPING", "1")
    assert "draining" in notify.messages[stopping][1]["STATUS"]


def test_sigterm_drains_and_exits_zero_within_grace(daemon_factory: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS, grace="5s")
    # Within the grace is the daemon's own measure (trio's clock around the drain): past it, it cancels what is
    # left and says so. The wall-clock bound only catches a process that does not exit once drained: the 5 s
    # grace, plus 15 s for tracing's flush and the interpreter's exit on a loaded 2-core machine.
    assert d.stop(timeout=20) == 0
    messages = [e["message"] for e in d.log_entries()]
    assert "draining" in messages and messages[-1] == "stopped"
    assert "shutdown grace elapsed; cancelling what is left" not in messages, "drained within the grace"
    stopped = [e["fields"]["supervisor"] + "/" + e["actor"] for e in d.log_entries() if e["message"] == "actor stopped"]
    assert stopped.index("connectors/beta") < stopped.index("connectors/alpha"), "reverse start order"
    assert stopped[-1] == "molamd/database", "the database goes last"
    assert not Path(d.socket).exists()


def test_sigterm_during_startup(daemon_factory: Any) -> None:
    slow = connector_toml("slow", latency="60s")  # its open() takes 60 s: the start-up cannot finish first
    d = daemon_factory(connectors=CONNECTORS + slow, start=False)
    d.start(wait=False)
    deadline = time.monotonic() + 15
    while not any(e.get("actor") == "beta" for e in d.log_entries()):
        assert time.monotonic() < deadline, d.logs()
        time.sleep(0.05)
    # The contract: the start is abandoned, not finished and then drained. Finishing it takes the slow
    # connector's 60 s; any exit well before that is an abandoned start. 30 s (stop's timeout) leaves half of it
    # for a loaded 2-core machine and still tells the two apart.
    assert d.stop(timeout=30) == 0
    messages = [e["message"] for e in d.log_entries()]
    assert "stop requested during start-up" in messages and "molamd ready" not in messages


def test_sighup_during_a_reload(daemon_factory: Any, notify: NotifyListener) -> None:
    d = daemon_factory(connectors=CONNECTORS, env={"NOTIFY_SOCKET": notify.path})
    before = d.ctl_json("connector", "alpha")["incarnation"]
    for _ in range(5):
        d.signal(signal.SIGHUP)
    assert d.ctl("reload").returncode == 0
    # One more SIGHUP, with a connector added to the file: its reload is seen by what it applies (a sleep is
    # outlasted by a reload on a loaded machine), and then every RELOADING=1 by its READY=1.
    d.config.write_text(d.config.read_text() + connector_toml("gamma"))
    d.signal(signal.SIGHUP)
    _wait_until(lambda: d.ctl("connector", "gamma").returncode == 0, "the last SIGHUP's reload", d.logs)

    def count(key: str) -> int:
        return sum(1 for _, f in list(notify.messages) if f.get(key) == "1")

    _wait_until(lambda: count("READY") == count("RELOADING") + 1, "a READY=1 after every RELOADING=1",
                lambda: notify.messages)
    assert d.ctl_json("status")["last_reload"]["ok"] is True
    assert d.ctl_json("connector", "alpha")["incarnation"] == before
    assert count("RELOADING") >= 2
    assert d.stop() == 0


def test_database_down_then_up(daemon_factory: Any, pg: Any, short_tmp: Path) -> None:
    """The daemon runs without its database, says so, and syncs the registry once it appears."""
    name = f"late_{int(time.time() * 1000)}"
    port = free_port()
    d = daemon_factory(connectors=CONNECTORS, dsn=pg.dsn(name), metrics_port=port)
    status = d.ctl_json("status")
    assert status["database"]["up"] is False and status["database"]["error"]
    # libpq's own cause, not the pool's "timed out"
    deadline = time.monotonic() + 15
    while "does not exist" not in (d.ctl_json("status")["database"]["error"] or "") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f'database "{name}" does not exist' in d.ctl_json("status")["database"]["error"]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "molamd_database_up 0.0" in metrics
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        with psycopg.connect(pg.dsn(name)) as conn:
            from molamd.db import migrate

            migrate(conn)
        deadline = time.monotonic() + 15
        while not d.ctl_json("status")["database"]["up"]:
            assert time.monotonic() < deadline, d.logs()
            time.sleep(0.1)
        assert "molamd_database_up 1.0" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        deadline = time.monotonic() + 15
        while True:
            with psycopg.connect(pg.dsn(name)) as conn:
                rows = conn.execute("SELECT name, host_id, state, health_ok FROM bank_connectors_registry"
                                    " ORDER BY name").fetchall()
            if len(rows) == 2 and all(r[3] for r in rows):
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.2)
        assert [(r[0], r[1], r[2]) for r in rows] == [("alpha", "test-host", "running"),
                                                      ("beta", "test-host", "running")]
        assert d.stop() == 0
    finally:
        with psycopg.connect(pg.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_metrics_endpoint(daemon_factory: Any) -> None:
    port = free_port()
    d = daemon_factory(connectors=CONNECTORS, metrics_port=port)
    assert d.ctl("restart", "alpha").returncode == 0
    base = f"http://127.0.0.1:{port}"
    text = httpx.get(f"{base}/metrics", timeout=5).text
    assert 'molamd_build_info{python="' in text and 'version="0.1.0"' in text
    assert 'molamd_actor_state{actor="alpha",state="running",supervisor="connectors"} 1.0' in text
    assert 'molamd_actor_restarts_total{actor="alpha",supervisor="connectors"} 0.0' in text
    assert 'molamd_actor_mailbox_depth{actor="beta",supervisor="connectors"} 0.0' in text
    assert "molamd_config_last_reload_successful 1.0" in text
    assert "molamd_config_last_reload_success_timestamp_seconds " in text
    assert 'molamd_control_requests_total{command="restart",outcome="ok"} 1.0' in text
    assert 'molamd_control_request_duration_seconds_count{command="restart"} 1.0' in text
    openmetrics = httpx.get(f"{base}/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=5)
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
    assert httpx.get(f"{base}/other", timeout=5).status_code == 404
    assert httpx.post(f"{base}/metrics", timeout=5).status_code == 405
    d.config.write_text(d.config.read_text().replace('priority = 10', 'priority = "x"', 1))
    assert d.ctl("reload").returncode == 1
    text = httpx.get(f"{base}/metrics", timeout=5).text
    assert "molamd_config_last_reload_successful 0.0" in text
    assert 'molamd_config_reloads_total{outcome="failure"} 1.0' in text
    assert d.stop() == 0


def test_broken_config_at_start(short_tmp: Path) -> None:
    import subprocess

    from tests.conftest import MOLAMD

    config = short_tmp / "molamd.toml"
    config.write_text(daemon_toml(short_tmp) + '\n[daemon2]\n')
    result = subprocess.run([MOLAMD, "run", "--config", str(config)], capture_output=True, text=True,
                            timeout=20, check=False)
    assert result.returncode == 1 and f"{config}: $: Object contains unknown field `daemon2`" in result.stderr


def test_database_refusing_shows_libpq_cause_without_the_password(daemon_factory: Any, short_tmp: Path) -> None:
    config = daemon_toml(short_tmp, connectors=CONNECTORS).replace(
        'connect_timeout = "1s"', 'connect_timeout = "1s"\npassword = "env:MOLAMD_TEST_DB_PASSWORD"')
    d = daemon_factory(config, env={"MOLAMD_TEST_DB_PASSWORD": "Db-Pa55word-here"})
    deadline = time.monotonic() + 15
    while "refused" not in (d.ctl_json("status")["database"]["error"] or "") and time.monotonic() < deadline:
        time.sleep(0.1)
    error = d.ctl_json("status")["database"]["error"]
    assert "Connection refused" in error and "port 1" in error, error
    assert "Db-Pa55word-here" not in d.ctl("--json", "status").stdout + d.logs()
    assert d.stop() == 0
