"""Who reaches the control socket, and how many: real Unix users and groups created here (and removed), the
daemon run as the shipped unit's user would be, with its runtime directory mode and umask."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProcess, as_any_user, daemon_toml, env_for_any_user

ROOT = Path(__file__).resolve().parent.parent
UNIT = (ROOT / "systemd" / "molamd.service").read_text()
CONNECTORS = textwrap.dedent("""
    [[connectors]]
    name = "alpha"
    kind = "null"
    bank_profile = "p"
    """)

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                                reason="needs root and useradd to create users")


class Users:
    """Throwaway groups and users: an operator, a reader, a second reader, a stranger and the daemon's user."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ops, self.read = f"mdt{tag}ops", f"mdt{tag}read"
        self.operator, self.reader, self.reader2 = f"mdt{tag}op", f"mdt{tag}ro", f"mdt{tag}ro2"
        self.stranger, self.daemon = f"mdt{tag}none", f"mdt{tag}d"
        self.groups = [self.ops, self.read]
        self.users = [self.operator, self.reader, self.reader2, self.stranger, self.daemon]
        for group in self.groups:
            _run("groupadd", group)
        for user, groups in ((self.operator, self.ops), (self.reader, self.read), (self.reader2, self.read),
                             (self.stranger, ""), (self.daemon, "")):
            _run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group",
                 *(["--groups", groups] if groups else []), user)

    def remove(self) -> None:
        for user in self.users:
            # userdel refuses a user that still runs a process (a probe a failed test left): end those first,
            # or the name stays and a later run with the same pid tag cannot create it
            subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True, check=False)
        for user in self.users:
            for _ in range(50):
                if subprocess.run(["userdel", user], capture_output=True, check=False).returncode != 8:
                    break  # 8: the user's processes are still on their way out
                time.sleep(0.05)
        for group in self.groups:
            subprocess.run(["groupdel", group], capture_output=True, check=False)


def _run(*cmd: str) -> None:
    subprocess.run(cmd, capture_output=True, check=True)


@pytest.fixture
def users() -> Iterator[Users]:
    made = Users()
    try:
        yield made
    finally:
        made.remove()


def unit_setting(key: str) -> str:
    match = re.search(rf"^{key}=(\S+)$", UNIT, re.MULTILINE)
    assert match, key
    return match.group(1)


def ctl_as(user: str, socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *as_any_user("molamctl"), "--socket", socket, "--json", *args],
                          capture_output=True, text=True, timeout=30, check=False, env=env_for_any_user())


def test_operator_and_reader_groups_reach_the_socket_under_the_shipped_unit(users: Users) -> None:
    """As shipped: RuntimeDirectory=molamd with the unit's mode, the unit's UMask, the daemon as its own user."""
    base = Path(tempfile.mkdtemp(prefix="mdu-", dir="/tmp"))
    try:
        base.chmod(0o755)
        rundir = base / "molamd"  # /run/molamd as systemd makes it
        rundir.mkdir(mode=int(unit_setting("RuntimeDirectoryMode"), 8))
        rundir.chmod(int(unit_setting("RuntimeDirectoryMode"), 8))
        shutil.chown(rundir, users.daemon, users.daemon)
        socket = str(rundir / "control.sock")
        config = daemon_toml(base, connectors=CONNECTORS, control_extra=(
            f'operator_group = "{users.ops}"\nreadonly_group = "{users.read}"')).replace(
            f'socket = "{base}/control.sock"', f'socket = "{socket}"')
        d = DaemonProcess(base, config)
        d.config.chmod(0o644)
        d.socket = socket
        umask = unit_setting("UMask")
        d.wrapper = ["setpriv", f"--reuid={users.daemon}", f"--regid={users.daemon}", "--init-groups",
                     "sh", "-c", f'umask {umask}; exec "$@"', "sh"]
        d.start()
        try:
            assert oct(Path(socket).stat().st_mode & 0o777) == "0o660"
            assert Path(socket).stat().st_uid != 0, "the daemon runs as its own user"
            ok = ctl_as(users.operator, socket, "status")
            assert ok.returncode == 0, ok.stderr
            assert ctl_as(users.operator, socket, "pause", "alpha").returncode == 0
            assert ctl_as(users.reader, socket, "connectors").returncode == 0
            refused = ctl_as(users.reader, socket, "resume", "alpha")
            assert refused.returncode != 0 and "needs operator access" in refused.stderr
            stranger = ctl_as(users.stranger, socket, "status")
            assert stranger.returncode == 3 and "ermission denied" in stranger.stderr, stranger.stderr
        finally:
            d.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


HOLDER = """
import json, socket, sys, time
path, count = sys.argv[1], int(sys.argv[2])
held, refused = [], []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(120)  # longer than any idle_timeout here: the server closes first
    s.connect(path)
    r = s.makefile("rb")
    first = json.loads(r.readline())
    if "hello" in first:
        s.sendall(b'{"cmd": "sta')  # half a request, never finished
        held.append((s, r))
    else:
        refused.append(first["error"]["code"])
print(json.dumps({"held": len(held), "refused": refused}), flush=True)
closed, at = [], None
for s, r in held:
    line = r.readline()
    at = at or time.monotonic()  # when the first held connection ended (one clock for every process)
    closed.append(json.loads(line)["error"]["code"] if line else "eof")
print(json.dumps({"closed": closed, "at": at}), flush=True)
"""

# Started before the socket fills up, so that its Python start-up is not what is timed: one status request per
# line read from stdin, answered with the moment (time.monotonic) the reply came.
PROBER = """
import json, socket, sys, time
for _ in sys.stdin:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(sys.argv[1])
        r = s.makefile("rb")
        first = json.loads(r.readline())
        if "hello" in first:
            s.sendall(b'{"id": 1, "cmd": "status"}\\n')
            first = json.loads(r.readline())
    print(json.dumps({"reply": first, "at": time.monotonic()}), flush=True)
"""


def hold(user: str, socket: str, count: int) -> subprocess.Popen[bytes]:
    return _python_as(user, HOLDER, socket, str(count))


def prober(user: str, socket: str) -> subprocess.Popen[bytes]:
    return _python_as(user, PROBER, socket)


def probe(proc: subprocess.Popen[bytes]) -> Any:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    return first_line(proc)


def _python_as(user: str, script: str, *args: str) -> subprocess.Popen[bytes]:
    """``script`` as ``user``, its pipes unbuffered: a line read is never more than that line (still_holding
    looks at the pipe itself)."""
    python = as_any_user("molamctl")[0]
    return subprocess.Popen(["runuser", "-u", user, "--", python, "-c", script, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=env_for_any_user())


def still_holding(proc: subprocess.Popen[bytes]) -> bool:
    """Whether a holder keeps every connection it got: alive, and no line yet about their end."""
    import select

    assert proc.stdout is not None
    return proc.poll() is None and not select.select([proc.stdout], [], [], 0)[0]


def first_line(proc: subprocess.Popen[bytes]) -> Any:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    return json.loads(line)


def test_half_open_readers_cannot_lock_root_out(daemon_factory: Any, users: Users) -> None:
    d = daemon_factory(connectors=CONNECTORS, control_extra=textwrap.dedent(f"""
        operator_group = "{users.ops}"
        readonly_group = "{users.read}"
        max_clients = 12
        reserved_clients = 4
        max_clients_per_uid = 6
        idle_timeout = "3s"
        """))
    operator = prober(users.operator, d.socket)
    first = hold(users.reader, d.socket, 64)
    second = hold(users.reader2, d.socket, 64)
    try:
        one, two = first_line(first), first_line(second)
        assert one["held"] + two["held"] == 8, (one, two)  # 12 clients, 4 kept for operators
        assert max(one["held"], two["held"]) <= 6  # per uid
        assert set(one["refused"] + two["refused"]) == {"busy"}
        # Root and the operator group still get in, at once: while the readers hold every connection they could
        # get, not once their idle_timeout has freed them (told by the order of the two, not by a bound).
        status = d.ctl("status")
        assert status.returncode == 0, status.stderr
        answered = [time.monotonic()]
        probed = probe(operator)
        assert probed["reply"]["ok"] is True, probed
        answered.append(probed["at"])
        assert d.ctl("reload").returncode == 0
        # Past idle_timeout every half-open connection is closed with a reason.
        closed_one, closed_two = first_line(first), first_line(second)
        assert closed_one["closed"] == ["timeout"] * one["held"]
        assert closed_two["closed"] == ["timeout"] * two["held"]
        assert max(answered) < min(closed_one["at"], closed_two["at"]), "answered while the readers held on"
    finally:
        for proc in (operator, first, second):
            proc.kill()
    refusals = [e for e in d.log_entries() if e["message"] == "control peer refused"]
    assert 1 <= len(refusals) <= 2, "refused peers are logged at a bounded rate, not one line each"
    assert d.stop() == 0


def test_status_answers_while_readers_hold_connections(daemon_factory: Any, users: Users) -> None:
    """Half-open connections stall nobody: status is answered while they are all still held. A server they
    stalled would answer only once their 60 s idle_timeout closed them; the 30 s client timeout tells the two
    apart on any machine. (How fast it answers is a figure of scripts/bench core, not a test.)"""
    d = daemon_factory(connectors=CONNECTORS, control_extra=f'readonly_group = "{users.read}"\nidle_timeout = "60s"')
    holder = hold(users.reader, d.socket, 8)
    try:
        assert first_line(holder)["held"] == 8
        for _ in range(5):
            _status(d.socket)
        assert still_holding(holder), "the eight half-open connections were held throughout"
    finally:
        holder.kill()
    assert d.stop() == 0


def _status(path: str) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        r = s.makefile("rb")
        r.readline()
        s.sendall(b'{"id": 1, "cmd": "status"}\n')
        assert json.loads(r.readline())["ok"] is True

