"""``molamctl``: talk to a running molamd over its control socket.

Exit codes: 0 ok, 1 the daemon answered with an error, 2 usage, 3 the daemon cannot be reached. The command
line is in ``ctl_parser``; ``molamctl top`` in ``ctl_top``.
Plain standard library on purpose: it starts fast and works while the daemon's dependencies are broken.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
from typing import Any, TextIO

from .ctl_parser import STREAMS, completion_script, parse

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Unreachable(Exception):
    pass


class Client:
    """One connection: reads the hello, then request/reply lines."""

    def __init__(self, path: str, timeout: float | None) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            raise Unreachable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        self._file = self._sock.makefile("rb")
        first = self.read()
        if "hello" not in first:
            # refused before the hello (forbidden, busy): report the server's error
            self.early_error: dict[str, Any] | None = first
        else:
            self.early_error = None
            self.hello = first["hello"]
        self._next_id = 1

    def read(self) -> dict[str, Any]:
        try:
            line = self._file.readline()
        except TimeoutError:
            raise Unreachable("timed out waiting for the daemon") from None
        except OSError as exc:
            raise Unreachable(f"connection failed: {exc}") from None
        if not line:
            raise Unreachable("the daemon closed the connection")
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:
            raise Unreachable(f"not a molamd control socket (got {line[:60]!r})") from None
        return message

    def request(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        rid = self._next_id
        self._next_id += 1
        payload = json.dumps({"id": rid, "cmd": cmd, "args": args}).encode() + b"\n"
        try:
            self._sock.sendall(payload)
        except OSError as exc:
            raise Unreachable(f"connection failed: {exc}") from None
        return self.read()

    def close(self) -> None:
        self._file.close()
        self._sock.close()


# -- printing ---------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], out: TextIO) -> None:
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max([len(title)] + [len(r[i]) for r in cells]) for i, (_, title) in enumerate(columns)]
    print("  ".join(title.ljust(w) for (_, title), w in zip(columns, widths, strict=True)).rstrip(), file=out)
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)


def print_mapping(value: Any, out: TextIO, prefix: str = "") -> None:
    if isinstance(value, dict):
        if not value and prefix:
            print(f"{prefix}: -", file=out)
        for key, item in value.items():
            print_mapping(item, out, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for index, item in enumerate(value):
            print_mapping(item, out, f"{prefix}[{index}]")
    else:
        shown = ", ".join(map(_cell, value)) if isinstance(value, list) else _cell(value)
        print(f"{prefix}: {shown}" if prefix else shown, file=out)


CONNECTOR_COLUMNS = [
    ("name", "NAME"), ("kind", "KIND"), ("bank_profile", "PROFILE"), ("priority", "PRIO"), ("state", "STATE"),
    ("dispatch", "DISPATCH"), ("breaker", "BREAKER"), ("paused_s", "PAUSED_S"), ("restarts", "RESTARTS"),
    ("mailbox_depth", "MAILBOX"),
    ("health", "HEALTH"),
    ("uptime_seconds", "UPTIME_S"), ("last_error", "LAST_ERROR"),
]


def print_result(cmd: str, result: Any, out: TextIO) -> None:
    if cmd == "connectors":
        print_table(result, CONNECTOR_COLUMNS, out)
    elif cmd == "logs":
        print_table(result, [("at", "AT"), ("operation", "OPERATION"), ("outcome", "OUTCOME"),
                             ("error_code", "ERROR"), ("http_status", "HTTP"), ("duration_seconds", "SECONDS"),
                             ("payout_slice_id", "SLICE"), ("trace_id", "TRACE")], out)
    elif cmd == "dlq-list":
        print_table(result, [("id", "ID"), ("payout_id", "PAYOUT"), ("amount", "AMOUNT"), ("currency", "CUR"),
                             ("attempts", "ATTEMPTS"), ("connector", "CONNECTOR"), ("last_error", "LAST_ERROR")], out)
    elif cmd == "statements" and isinstance(result, list):
        print_table(result, [("id", "ID"), ("source", "SOURCE"), ("remote_name", "FILE"), ("format", "FORMAT"),
                             ("status", "STATUS"), ("statements", "STMTS"), ("lines", "LINES"),
                             ("matched", "MATCHED"), ("received_at", "RECEIVED"), ("error", "ERROR")], out)
    elif cmd == "payouts-show":
        show_payout(result, out)
    elif cmd == "payouts-in-doubt":
        print_table(result, [("id", "ID"), ("payout_id", "PAYOUT"), ("status", "STATUS"), ("bound_scope", "SCOPE"),
                             ("age_seconds", "AGE_S"), ("attempts", "ATTEMPTS"), ("last_error", "LAST_ERROR")], out)
    elif cmd == "audit":
        print_table(result, [("at", "AT"), ("action", "ACTION"), ("actor", "WHO"), ("target", "TARGET"),
                             ("ok", "OK"), ("detail", "DETAIL")], out)
    elif cmd in ("pause", "resume", "drain"):
        rows = [{"name": n, **r} for n, r in result["connectors"].items()]
        print_table(rows, [("name", "NAME"), ("dispatch", "DISPATCH"), ("error", "ERROR")], out)
    else:
        print_mapping(result, out)


def show_payout(result: dict[str, Any], out: TextIO) -> None:
    """A slice, then its attempts, bank calls and audit rows as tables."""
    sections = {key: result.pop(key, []) for key in ("attempt_rows", "bank_calls", "audit")}
    print_mapping(result, out)
    print("\nattempts:", file=out)
    print_table(sections["attempt_rows"], [("attempt_no", "NO"), ("connector", "CONNECTOR"), ("scope", "SCOPE"),
                                           ("started_at", "STARTED"), ("ended_at", "ENDED"), ("outcome", "OUTCOME"),
                                           ("error", "ERROR")], out)
    print("\nbank calls:", file=out)
    print_table(sections["bank_calls"], [("at", "AT"), ("connector", "CONNECTOR"), ("operation", "OPERATION"),
                                         ("outcome", "OUTCOME"), ("error_code", "ERROR"), ("http_status", "HTTP")],
                out)
    print("\naudit:", file=out)
    print_table(sections["audit"], [("at", "AT"), ("action", "ACTION"), ("actor", "WHO"), ("from_status", "FROM"),
                                    ("to_status", "TO"), ("detail", "DETAIL")], out)


def print_event(event: dict[str, Any], out: TextIO) -> None:
    stamp = dt.datetime.fromtimestamp(event.get("ts", 0), dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    rest = " ".join(f"{k}={_cell(v)}" for k, v in event.items() if k not in ("ts", "type") and v is not None)
    print(f"{stamp} {event.get('type', '?')} {rest}", file=out, flush=True)


# -- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run one molamctl command line; ``stdout``/``stderr`` default to the process's (tests pass their own)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    token = STREAMS.set((out, err))
    try:
        ns, cmd, args = parse(argv)
    finally:
        STREAMS.reset(token)
    if cmd.name == "completion":
        if args.get("shell", "bash") != "bash":
            print(f"molamctl: completion: unknown shell {args['shell']!r}; bash is the one supported",
                  file=err)
            return EXIT_USAGE
        out.write(completion_script())
        return EXIT_OK
    try:
        if cmd.name == "top":
            from .ctl_top import top

            return top(lambda: Client(ns.socket, ns.timeout), out, interval=args.get("interval") or 2.0)
        client = Client(ns.socket, None if cmd.wire == "watch" else ns.timeout)
        try:
            if client.early_error is not None:
                return _fail(client.early_error, out, err, ns.json)
            reply = client.request(cmd.wire, args)
            if not reply.get("ok"):
                return _fail(reply, out, err, ns.json)
            if cmd.wire == "watch":
                return _watch(client, out, err, ns.json)
            if ns.json:
                print(json.dumps(reply["result"], indent=2, sort_keys=False), file=out)
            else:
                print_result(cmd.wire, reply["result"], out)
            return EXIT_OK
        finally:
            client.close()
    except Unreachable as exc:
        print(f"molamctl: {exc}", file=err)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `molamctl ... | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _watch(client: Client, out: TextIO, err: TextIO, as_json: bool) -> int:
    while True:
        try:
            message = client.read()
        except Unreachable:
            return EXIT_OK  # the daemon went away: the watch is over
        if "event" in message:
            if as_json:
                print(json.dumps(message["event"]), file=out, flush=True)
            else:
                print_event(message["event"], out)
        elif not message.get("ok", True):
            return _fail(message, out, err, as_json)


def _fail(reply: dict[str, Any], out: TextIO, err: TextIO, as_json: bool) -> int:
    error = reply.get("error") or {}
    if as_json:
        print(json.dumps(error, indent=2), file=out)
    print(f"molamctl: {error.get('code', 'error')}: {error.get('message', reply)}", file=err)
    for line in error.get("details") or []:
        print(f"  {line}", file=err)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
