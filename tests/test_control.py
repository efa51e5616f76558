"""The control protocol end to end: the real molamctl against a real daemon process."""

from __future__ import annotations

import errno
import json
import os
import queue
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MOLAMCTL, MOLAMD, connector_toml, daemon_toml

CONNECTORS = connector_toml("alpha") + connector_toml("beta", priority=20) + connector_toml("gamma", profile="bank-b")


def raw_session(path: str) -> tuple[socket.socket, Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    reader = sock.makefile("rb")
    hello = json.loads(reader.readline())
    assert hello == {"hello": {"server": "molamd", "version": "0.1.0", "protocol": 1}}
    return sock, reader


def test_read_commands(daemon_factory: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS)
    status = d.ctl("status")
    assert status.returncode == 0, status.stderr
    assert "host_id: test-host" in status.stdout and "database.up: False" in status.stdout
    rows = d.ctl_json("connectors")
    assert [r["name"] for r in rows] == ["alpha", "beta", "gamma"]
    assert {r["state"] for r in rows} == {"running"} and {r["dispatch"] for r in rows} == {"running"}
    table = d.ctl("connectors").stdout.splitlines()
    assert table[0].split()[:5] == ["NAME", "KIND", "PROFILE", "PRIO", "STATE"]
    assert table[2].split()[:4] == ["beta", "null", "bank-a", "20"]
    one = d.ctl_json("connector", "gamma")
    assert one["config"]["bank_profile"] == "bank-b" and one["snapshot"]["actor"]["state"] == "running"
    assert d.ctl_json("version")["protocol"] == 1
    stats = d.ctl_json("stats")
    assert stats["control_requests"]["command=connectors,outcome=ok"] >= 2
    # errors: unknown connector (1, from the daemon); unknown command or argument (2, usage, naming it)
    missing = d.ctl("connector", "nope")
    assert missing.returncode == 1 and "not_found" in missing.stderr
    unknown = d.ctl("launch-rockets")
    assert unknown.returncode == 2 and "invalid choice: 'launch-rockets'" in unknown.stderr
    extra = d.ctl("status", "--verbose")
    assert extra.returncode == 2 and "unrecognized arguments: --verbose" in extra.stderr
    assert d.ctl("connector").returncode == 2
    assert d.ctl("restart", "a", "b").returncode == 2
    assert d.stop() == 0


def test_operator_commands(daemon_factory: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS)
    paused = d.ctl_json("pause", "alpha")
    assert paused == {"connectors": {"alpha": {"dispatch": "paused"}}}
    assert d.ctl_json("connector", "alpha")["dispatch"] == "paused"
    assert d.ctl_json("connector", "beta")["dispatch"] == "running"
    everyone = d.ctl_json("drain")["connectors"]
    assert {v["dispatch"] for v in everyone.values()} == {"drained"}
    assert {v["dispatch"] for v in d.ctl_json("resume")["connectors"].values()} == {"running"}
    before = d.ctl_json("connector", "beta")["incarnation"]
    restarted = d.ctl_json("restart", "beta")
    assert restarted["previous_incarnation"] == before and restarted["incarnation"] != before
    assert restarted["started"] is True
    assert d.ctl_json("restart", "health_checker")["supervisor"] == "workers"
    assert d.ctl("pause", "nope").returncode == 1
    assert d.stop() == 0


def test_bad_requests_never_break_the_daemon(daemon_factory: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS)
    sock, reader = raw_session(d.socket)
    sock.sendall(b"this is not json\n")
    reply = json.loads(reader.readline())
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    sock.sendall(b'{"id": 7, "cmd": "status", "args": {}, "extra": 1}\n')
    reply = json.loads(reader.readline())
    assert reply["id"] == 7 and reply["error"]["code"] == "bad_request"
    sock.sendall(b'{"id": 8, "cmd": "connector", "args": {"nmae": "alpha"}}\n')
    reply = json.loads(reader.readline())
    assert reply["id"] == 8 and reply["error"]["code"] == "bad_args" and "nmae" in reply["error"]["message"]
    sock.sendall(b'{"id": 15, "cmd": "launch-rockets", "args": {}}\n')
    reply = json.loads(reader.readline())
    assert reply["id"] == 15 and reply["error"]["code"] == "unknown_command"
    sock.sendall(b'{"id": 9, "cmd": "connector", "args": {"name": 5}}\n')
    reply = json.loads(reader.readline())
    assert reply["error"]["code"] == "bad_args" and "args.name" in reply["error"]["message"]
    # Duplicate keys: {"cmd":"status","cmd":"reload"} once ran reload. Now neither runs.
    sock.sendall(b'{"id": 12, "cmd": "status", "cmd": "reload"}\n')
    reply = json.loads(reader.readline())
    assert reply["error"]["code"] == "bad_request" and "duplicate key 'cmd'" in reply["error"]["message"]
    assert reply["id"] is None  # not even the id of a request this ambiguous is trusted
    # 1,000 levels in 2 KB: a bad request, not an internal error with a traceback
    sock.sendall(b'{"id": 13, "cmd": "status", "args": {"x": ' + b"[" * 1000 + b"]" * 1000 + b"}}\n")
    reply = json.loads(reader.readline())
    assert reply["error"]["code"] == "bad_request" and "nested deeper than 16" in reply["error"]["message"]
    sock.sendall(b'{"id": 14, "cmd": "status", "args": {"x": NaN}}\n')
    assert "NaN is not a JSON number" in json.loads(reader.readline())["error"]["message"]
    sock.sendall(b'[1, 2]\n{"id": 10, "cmd": "version"}\n')
    assert json.loads(reader.readline())["error"]["code"] == "bad_request"
    assert json.loads(reader.readline())["result"]["server"] == "molamd"
    # oversized line: error, then closed
    sock.sendall(b'{"id": 11, "cmd": "status", "pad": "' + b"x" * (70 * 1024))
    reply = json.loads(reader.readline())
    assert reply["error"]["code"] == "too_long"
    assert reader.readline() == b""
    sock.close()
    # a client that connects and says nothing does not stall others
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(d.socket)
    assert d.ctl("status").returncode == 0
    idle.close()
    assert not any(e.get("levelname") == "ERROR" or "Traceback" in json.dumps(e) for e in d.log_entries())
    assert not any(e["message"] == "config reloaded" for e in d.log_entries()), "the duplicate key ran no reload"
    assert d.stop() == 0


def test_watch_streams_lifecycle_and_reload_events(daemon_factory: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS)
    watcher = subprocess.Popen(
        [MOLAMCTL, "--socket", d.socket, "--json", "watch"], stdout=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    stdout = watcher.stdout
    assert stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        # The events below are published once the watch is subscribed (the daemon counts its watchers), not after
        # a sleep that a loaded machine outlasts and the events then go unseen.
        deadline = time.monotonic() + 15
        while d.ctl_json("stats")["watchers"] < 1:
            assert watcher.poll() is None and time.monotonic() < deadline, "the watch never subscribed"
            time.sleep(0.05)
        assert d.ctl("restart", "gamma").returncode == 0
        assert d.ctl("reload").returncode == 0
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while not any(e.get("phase") == "done" for e in events):
            try:
                events.append(json.loads(lines.get(timeout=max(deadline - time.monotonic(), 0.01))))
            except queue.Empty:
                raise AssertionError(f"no reload done within 10 s; events: {events}") from None
        kinds = [(e["type"], e.get("actor"), e.get("event") or e.get("phase")) for e in events]
        assert ("actor", "gamma", "stopped") not in kinds  # a restart is not a removal
        assert ("actor", "gamma", "started") in kinds
        assert ("reload", None, "started") in kinds and ("reload", None, "done") in kinds
    finally:
        watcher.terminate()
        watcher.wait(5)
    assert d.stop() == 0


def test_reload_ok_and_refused(daemon_factory: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS)
    before = {r["name"]: r["incarnation"] for r in d.ctl_json("connectors")}
    good = d.config.read_text().replace('name = "gamma"', 'name = "delta"').replace(
        'name = "beta"\nkind = "null"\nbank_profile = "bank-a"\npriority = 20',
        'name = "beta"\nkind = "null"\nbank_profile = "bank-a"\npriority = 30',
    )
    assert "priority = 30" in good
    d.config.write_text(good)
    result = d.ctl_json("reload")
    assert result["connectors"] == {"added": ["delta"], "changed": ["beta"], "removed": ["gamma"], "unchanged": 1}
    after = {r["name"]: r["incarnation"] for r in d.ctl_json("connectors")}
    assert after["alpha"] == before["alpha"], "an unchanged connector keeps its incarnation"
    assert after["beta"] != before["beta"] and "gamma" not in after and "delta" in after

    d.config.write_text(good.replace("priority = 30", 'priority = "high"'))
    refused = d.ctl("reload")
    assert refused.returncode == 1
    assert "config_invalid" in refused.stderr and "$.connectors[1].priority" in refused.stderr
    assert {r["name"]: r["incarnation"] for r in d.ctl_json("connectors")} == after
    assert d.ctl_json("status")["last_reload"]["ok"] is False

    d.config.write_text(good.replace("[control]", '[control]\nmax_clients = 30'))
    needs_restart = d.ctl("reload")
    assert needs_restart.returncode == 1 and "needs a restart" in needs_restart.stderr
    assert d.stop() == 0


def as_nobody(path: str, requests: list[dict[str, Any]]) -> list[Any]:
    """Talk to the socket from a forked child running as nobody:nogroup; returns the lines it read."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out: list[Any] = []
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(5)
                sock.connect(path)
                reader = sock.makefile("rb")
                out.append(json.loads(reader.readline()))
                for request in requests:
                    sock.sendall(json.dumps(request).encode() + b"\n")
                    line = reader.readline()
                    out.append(json.loads(line) if line else None)
            except OSError as exc:
                out.append({"oserror": exc.errno})
            os.write(write_fd, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return list(json.loads(data))


def test_peer_not_allowed(daemon_factory: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS, control_extra='socket_mode = "0666"')
    [refusal] = as_nobody(d.socket, [])
    assert refusal["ok"] is False and refusal["error"]["code"] == "forbidden"
    assert "uid 65534" in refusal["error"]["message"]
    assert any(e["message"] == "control peer refused" for e in d.log_entries())
    assert d.ctl("status").returncode == 0
    assert d.stop() == 0


def test_read_only_group(daemon_factory: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS, control_extra='socket_mode = "0666"\nreadonly_group = "nogroup"')
    hello, status, pause = as_nobody(
        d.socket, [{"id": 1, "cmd": "status"}, {"id": 2, "cmd": "pause", "args": {"name": "alpha"}}]
    )
    assert hello["hello"]["server"] == "molamd"
    assert status["ok"] is True and status["result"]["host_id"] == "test-host"
    assert pause["ok"] is False and pause["error"]["code"] == "forbidden"
    assert d.ctl_json("connector", "alpha")["dispatch"] == "running"
    assert d.stop() == 0


def test_filesystem_permissions_also_guard_the_socket(daemon_factory: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS)
    assert oct(Path(d.socket).stat().st_mode & 0o777) == "0o660"
    assert as_nobody(d.socket, []) == [{"oserror": errno.EACCES}]
    assert d.stop() == 0


def test_unreachable_daemon(short_tmp: Path) -> None:
    result = subprocess.run([MOLAMCTL, "--socket", str(short_tmp / "none.sock"), "status"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 3 and "cannot connect" in result.stderr


def test_second_daemon_and_stale_socket(daemon_factory: Any, short_tmp: Path) -> None:
    d = daemon_factory(connectors=CONNECTORS)
    second = subprocess.run([MOLAMD, "run", "--config", str(d.config)], capture_output=True, text=True,
                            timeout=20, check=False)
    assert second.returncode == 1 and "another molamd is serving on" in second.stderr
    assert d.ctl("status").returncode == 0, "the first daemon is untouched"
    d.kill()  # SIGKILL leaves the socket file behind
    assert Path(d.socket).exists()
    again = daemon_factory(d.config.read_text())
    assert again.ctl("status").returncode == 0
    assert again.stop() == 0


@pytest.mark.parametrize("text", ["not a socket"])
def test_refuses_to_replace_a_regular_file(short_tmp: Path, text: str) -> None:
    (short_tmp / "control.sock").write_text(text)
    (short_tmp / "molamd.toml").write_text(daemon_toml(short_tmp))
    result = subprocess.run([MOLAMD, "run", "--config", str(short_tmp / "molamd.toml")],
                            capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 1 and "is not a socket" in result.stderr
