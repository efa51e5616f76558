"""The control server's own error path, against a real daemon: whatever a client sends, it gets an error reply
or a closed connection, and the server and the daemon carry on (issue 20, found by fuzzing)."""

from __future__ import annotations

import json
import socket
from typing import Any

from molamd.control._protocol import ControlError, ErrorCode, error_line
from tests.conftest import connector_toml
from tests.test_control import raw_session

CONNECTORS = connector_toml("alpha")

# Each line once broke, or could break, the server inside its own error handler.
HOSTILE = [
    rb'{"id":"\ud800"}',  # 16 bytes: a lone surrogate as the id of a request that is not one
    rb'{"id":"\udfff","cmd":"version"}',  # a valid command whose id cannot be written back
    rb'{"id":"\ud800","cmd":"launch\ud800"}',
    rb'{"id":5,"cmd":"connector","args":{"name":"\ud800"}}',  # not found, naming a name that is not text
    rb'{"id":6,"cmd":"pause","args":{"name":"\ud83d"}}',  # an audited command with such a name
    rb'{"id":"\ud800\udc00"}',  # a surrogate pair written as escapes is one real character: fine
    b'{"id":' + b"9" * 4000 + b"}",  # a huge int id
    b'{"id":' + b"9" * 5000 + b',"cmd":"version"}',  # past Python's int digit limit
    b'{"id":1e400,"cmd":"version"}',  # a float id that is infinite
    b'{"id":[[[[1]]]],"cmd":"version"}',  # an id of an odd type
    b'{"id":{"a":"\\ud800"},"cmd":"version"}',
    b'{"id":"' + b"x" * 60000 + b'"}',  # a long id
    b'{"\xff":1}',  # invalid UTF-8
    b"\xfe\xff\x00{",  # a byte-order mark that makes json guess UTF-16
    b"\x00\x00\x00{",
    b'{"id":"\xed\xa0\x80","cmd":"version"}',  # a surrogate encoded as (invalid) UTF-8 bytes
    b'{"id":7,"cmd":"audit","args":{"limit":' + b"9" * 40 + b"}}",
    b'"\\ud800"',
    b'{"id":8,"cmd":"set-rate","args":{"name":"alpha","rate":1e400}}',
]


def _reply(reader: Any) -> Any:
    line = reader.readline()
    return json.loads(line) if line else None


def test_a_lone_surrogate_id_gets_an_error_reply_and_the_daemon_lives(daemon_factory: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS)
    for _ in range(6):  # four of these once made the daemon exit ("actor escalated")
        sock, reader = raw_session(d.socket)
        sock.sendall(b'{"id":"\\ud800"}\n')
        reply = _reply(reader)
        assert reply is not None and reply["ok"] is False and reply["error"]["code"] == "bad_request"
        assert reply["id"] is None, "an id that cannot be written back is not echoed"
        assert "surrogate" in reply["error"]["message"]
        sock.close()
    assert d.proc.poll() is None
    assert d.ctl_json("version")["protocol"] == 1
    assert not any("escalated" in e["message"] for e in d.log_entries())
    assert d.stop() == 0


def test_hostile_lines_on_one_connection_each_get_a_reply(daemon_factory: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS)
    sock, reader = raw_session(d.socket)
    for line in HOSTILE:
        sock.sendall(line + b"\n")
        reply = _reply(reader)
        assert reply is not None, f"connection closed after {line[:60]!r}"
        assert set(reply) >= {"id", "ok"}, reply
        if reply["ok"] is False:
            assert reply["error"]["code"] in {"bad_request", "bad_args", "unknown_command", "not_found"}, (
                line[:60], reply)
            assert len(reply["error"]["message"]) < 2000
        assert reply["id"] is None or isinstance(reply["id"], int | str)
    sock.sendall(b'{"id": 1, "cmd": "version"}\n')
    assert _reply(reader)["result"]["protocol"] == 1, "the connection still serves"
    sock.close()
    assert d.proc.poll() is None
    assert not any(e.get("levelname") == "ERROR" or "Traceback" in json.dumps(e) for e in d.log_entries())
    assert d.stop() == 0


def test_bounds_of_limit_are_bad_args_naming_the_field(daemon_factory: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS)
    sock, reader = raw_session(d.socket)
    for cmd in ("payouts-in-doubt", "audit", "files-list", "statements"):
        for bad in (0, -1, 10_001, 10**30):
            sock.sendall(json.dumps({"id": 1, "cmd": cmd, "args": {"limit": bad}}).encode() + b"\n")
            reply = _reply(reader)
            assert reply["error"]["code"] == "bad_args", (cmd, bad, reply)
            assert "args.limit" in reply["error"]["message"] and cmd in reply["error"]["message"]
    sock.close()
    assert d.stop() == 0


def test_a_client_that_closes_mid_reply_or_resets_harms_nobody(daemon_factory: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS)
    for _ in range(20):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(d.socket)
        sock.sendall(b'{"id":1,"cmd":"connectors"}\n{"id":"\\ud800"}\n' * 50)
        sock.close()  # before reading a byte: the replies go to a closed socket
    watch = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    watch.connect(d.socket)
    watch.sendall(b'{"id":2,"cmd":"watch"}\n')
    watch.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    watch.close()  # a reset under a stream
    assert d.ctl_json("version")["protocol"] == 1
    assert d.proc.poll() is None
    assert not any("escalated" in e["message"] or e.get("levelname") == "ERROR" for e in d.log_entries())
    assert d.stop() == 0


def test_error_line_never_fails() -> None:
    hostile = ControlError(ErrorCode.INTERNAL, "broke on \ud800 " + "x" * 10_000, details={"bad": object()})
    for rid in ("\udfff", 10**40, True, 1.5, ["x"], "x" * 300, 7, "ok"):
        reply = json.loads(error_line(rid, hostile))
        assert reply["ok"] is False and reply["error"]["code"] == "internal" and "details" not in reply["error"]
        assert reply["id"] == (rid if rid in (7, "ok") else None)
        assert "\\ud800" in reply["error"]["message"] and len(reply["error"]["message"]) < 4200


def test_a_refused_client_that_is_already_gone_harms_nobody(daemon_factory: Any) -> None:
    """The refusal of a client over its limit went to a closed socket outside the connection's guard: the
    BrokenResourceError took the control server (and so the daemon) down."""
    d = daemon_factory(connectors=CONNECTORS, control_extra="max_clients = 2\nreserved_clients = 0")
    held = [raw_session(d.socket)[0] for _ in range(2)]
    for _ in range(200):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(d.socket)
        sock.close()  # before the server has written its refusal
    for sock in held:
        sock.close()
    assert d.ctl_json("version")["protocol"] == 1
    assert d.proc.poll() is None
    assert not any("escalated" in e["message"] or e.get("levelname") == "ERROR" for e in d.log_entries())
    assert d.stop() == 0
