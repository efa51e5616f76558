"""Shared fixtures: a real PostgreSQL cluster, config files, and a real daemon process driven by molamctl."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from pgcluster import Cluster  # noqa: E402

BIN = Path(sys.executable).parent
MOLAMD = str(BIN / "molamd")
MOLAMCTL = str(BIN / "molamctl")


def _world_runnable(path: str) -> bool:
    real = Path(os.path.realpath(path))
    return all(p.stat().st_mode & 0o001 for p in (real, *real.parents))


def as_any_user(entry: str) -> list[str]:
    """The command line of ``molamd`` or ``molamctl`` that a user other than root can run: this venv's packages
    under an interpreter every user may execute (this one, or the system's of the same version)."""
    python = sys.executable
    if not _world_runnable(python):
        python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        if not (os.path.exists(python) and _world_runnable(python)):
            pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that other users may run")
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    module = {"molamd": "molamd.cli", "molamctl": "molamd.ctl"}[entry]
    code = (f"import site, sys; site.addsitedir({site_packages!r}); from {module} import main;"
            f" sys.argv[0] = {entry!r}; sys.exit(main())")
    return [python, "-S", "-c", code]  # -S: not the system's site-packages, only this venv's


def env_for_any_user() -> dict[str, str]:
    """This environment without coverage's subprocess hooks (another user cannot write our coverage files)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS")}
_db_counter = itertools.count()


HSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
HSM_PIN = "4921"


@pytest.fixture(scope="session")
def token() -> Iterator[str]:
    """A SoftHSM2 token of this test session, in a temp dir (SOFTHSM2_CONF is read when the module loads)."""
    base = Path(tempfile.mkdtemp(prefix="md-hsm-"))
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "molam-test", "--pin", HSM_PIN,
                    "--so-pin", "90210"], check=True, capture_output=True)
    yield "molam-test"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> Iterator[Cluster]:
    directory = tempfile.mkdtemp(prefix="molamd-pg-")
    cluster = Cluster(directory)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def _admin(cluster: Cluster) -> psycopg.Connection[Any]:
    return psycopg.connect(cluster.dsn("postgres"), autocommit=True)


@pytest.fixture
def dsn(pg: Cluster) -> Iterator[str]:
    """A new empty database for one test."""
    name = f"t{os.getpid()}_{next(_db_counter)}"
    with _admin(pg) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield pg.dsn(name)
    finally:
        with _admin(pg) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def migrated_dsn(dsn: str) -> str:
    from molamd.db import migrate

    with psycopg.connect(dsn) as conn:
        migrate(conn)
    return dsn


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory (Unix socket paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="md-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connector_toml(name: str, *, profile: str = "bank-a", priority: int = 10, latency: str = "0s",
                   extra: str = "") -> str:
    return textwrap.dedent(f"""
        [[connectors]]
        name = "{name}"
        kind = "null"
        bank_profile = "{profile}"
        priority = {priority}
        shutdown_grace = "2s"
        {extra}
        [connectors.null]
        latency = "{latency}"
        """)


def daemon_toml(
    directory: Path,
    *,
    dsn: str = "host=127.0.0.1 port=1 dbname=nothing connect_timeout=1",
    connectors: str = "",
    metrics_port: int | None = None,
    control_extra: str = "",
    health_interval: str = "1s",
    grace: str = "5s",
) -> str:
    metrics = f'enabled = true\nlisten = "127.0.0.1:{metrics_port}"' if metrics_port else "enabled = false"
    return textwrap.dedent(f"""
        [daemon]
        host_id = "test-host"
        shutdown_grace = "{grace}"

        [control]
        socket = "{directory}/control.sock"
        {control_extra}

        [metrics]
        {metrics}

        [logging]
        level = "debug"

        [database]
        dsn = "{dsn}"
        connect_timeout = "1s"
        ping_interval = "200ms"
        retry_initial = "100ms"
        retry_max = "500ms"

        [supervision]
        max_restarts = 3
        period = "60s"
        backoff_initial = "100ms"
        backoff_max = "1s"

        [workers.health_checker]
        interval = "{health_interval}"
        timeout = "1s"
        """) + connectors


class DaemonProcess:
    """A real `molamd run` process, and the real `molamctl` to talk to it."""

    def __init__(self, directory: Path, config_text: str, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.config = directory / "molamd.toml"
        self.config.write_text(config_text)
        self.socket = str(directory / "control.sock")
        self.log_path = directory / "daemon.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.wrapper: list[str] = []  # e.g. setpriv ... to run the daemon as another user

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> DaemonProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*(self.wrapper + as_any_user("molamd") if self.wrapper else [MOLAMD]), "run", "--config",
             str(self.config)], stdout=self._log, stderr=subprocess.STDOUT,
            env=env_for_any_user() | {k: v for k, v in self.env.items() if not k.startswith("COVERAGE_PROCESS")}
            if self.wrapper else self.env,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.logs()}")
            if self.ctl("version").returncode == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready in {timeout}s:\n{self.logs()}")

    def ctl(self, *args: str, timeout: float = 30.0, user: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [MOLAMCTL, "--socket", self.socket, *args]
        env = self.env
        if user is not None:
            cmd = ["runuser", "-u", user, "--", *as_any_user("molamctl"), *cmd[1:]]
            env = {k: v for k, v in env.items() if not k.startswith("COVERAGE_PROCESS")}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)

    def ctl_json(self, *args: str) -> Any:
        result = self.ctl("--json", *args)
        assert result.returncode == 0, result.stderr + result.stdout
        return json.loads(result.stdout)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_entries(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.logs().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries


@pytest.fixture
def daemon_factory(short_tmp: Path) -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def make(config_text: str | None = None, *, env: dict[str, str] | None = None, start: bool = True,
             **kw: Any) -> DaemonProcess:
        text = config_text if config_text is not None else daemon_toml(short_tmp, **kw)
        d = DaemonProcess(short_tmp, text, env)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        d.kill()
