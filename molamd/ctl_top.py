"""``molamctl top``: a live view of one daemon, refreshed in place.

Connectors with their state, breaker, call rate, mean latency, error share and work in flight; slices by status
and currency; the last errors seen. Rates are deltas between two samples of the daemon's call totals, so the first
frame has none. Drawn with curses (the standard library's ncurses binding): ``q`` or Ctrl-C quits, a resize
redraws, a terminal too small says so. When stdout is not a terminal it prints one snapshot and exits.
A daemon that goes away (restarting) is shown as such, and the view carries on once it is back.
"""

from __future__ import annotations

import contextlib
import curses
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

MIN_COLUMNS, MIN_ROWS = 60, 10
RECENT_ERRORS = 8


class _Client(Protocol):
    early_error: dict[str, Any] | None

    def request(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Sample:
    """What one refresh read: the status, the connector rows, and when (monotonic seconds)."""

    at: float
    status: dict[str, Any]
    connectors: tuple[dict[str, Any], ...]


@dataclass
class View:
    """What the screen shows: the last two samples, the recent errors, or why there is no sample."""

    previous: Sample | None = None
    current: Sample | None = None
    problem: str | None = None
    errors: list[str] = field(default_factory=list)

    def take(self, sample: Sample) -> None:
        seen = {row["name"]: row.get("last_error") for row in self.current.connectors} if self.current else {}
        stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
        for row in sample.connectors:
            error = row.get("last_error")
            if error and error != seen.get(row["name"]):
                self.errors.insert(0, f"{stamp} {row['name']}: {error}")
        del self.errors[RECENT_ERRORS:]
        self.previous, self.current, self.problem = self.current, sample, None


def fetch(connect: Callable[[], _Client]) -> Sample:
    """One sample over one connection; any failure is the caller's to show (the daemon may be restarting)."""
    client = connect()
    try:
        if client.early_error is not None:
            raise RuntimeError(_message(client.early_error))
        status = client.request("status", {})
        rows = client.request("connectors", {})
    finally:
        client.close()
    for reply in (status, rows):
        if not reply.get("ok"):
            raise RuntimeError(_message(reply))
    return Sample(time.monotonic(), status["result"], tuple(rows["result"]))


def _message(reply: dict[str, Any]) -> str:
    error = reply.get("error") or {}
    return f"{error.get('code', 'error')}: {error.get('message', reply)}"


def _rates(previous: Sample | None, current: Sample, row: dict[str, Any]) -> tuple[str, str, str]:
    """Calls per second, mean latency in ms and failed share over the last interval ("-" with one sample)."""
    if previous is None or row.get("calls") is None:
        return "-", "-", "-"
    before = next((r for r in previous.connectors if r["name"] == row["name"]), None)
    if before is None or before.get("calls") is None or current.at <= previous.at:
        return "-", "-", "-"
    calls = row["calls"] - before["calls"]
    if calls < 0:  # the daemon restarted: its totals began again
        return "-", "-", "-"
    rate = f"{calls / (current.at - previous.at):.1f}"
    if calls == 0:
        return rate, "-", "-"
    latency = (row["call_seconds"] - before["call_seconds"]) / calls * 1000
    failed = (row["failed_calls"] - before["failed_calls"]) / calls * 100
    return rate, f"{latency:.0f}", f"{failed:.0f}%"


def render(view: View, width: int) -> list[str]:
    """The lines of one frame, none wider than ``width``."""
    lines: list[str] = []
    current = view.current
    head = "molamctl top   q quits"
    if current is not None:
        status = current.status
        head = (f"molamd {status.get('version', '?')} on {status.get('host_id', '?')}  up "
                f"{_duration(status.get('uptime_seconds'))}  database "
                f"{'up' if (status.get('database') or {}).get('up') else 'DOWN'}   q quits")
    lines.append(head)
    if view.problem is not None:
        lines.append(f"daemon unreachable: {view.problem} (retrying)")
    if current is not None:
        lines.append("")
        lines.append(f"{'CONNECTOR':<26} {'STATE':<10} {'BREAKER':<11} {'CALLS/S':>7} {'MS':>6} {'FAIL':>5} "
                     f"{'INFL':>4} {'QUEUE':>5}")
        for row in current.connectors:
            rate, latency, failed = _rates(view.previous, current, row)
            state = row.get("dispatch") or row.get("state") or "-"
            breaker = (row.get("breaker") or "-")[:11]
            lines.append(f"{row['name'][:26]:<26} {state[:10]:<10} {breaker:<11} {rate:>7} {latency:>6} {failed:>5} "
                         f"{_num(row.get('in_flight')):>4} {_num(row.get('mailbox_depth')):>5}")
        lines.append("")
        lines.append("SLICES")
        slices: dict[str, dict[str, int]] = current.status.get("slices") or {}
        if not slices:
            lines.append("  none waiting")
        for slice_status, by_currency in sorted(slices.items()):
            counts = "  ".join(f"{currency} {count}" for currency, count in sorted(by_currency.items()))
            lines.append(f"  {slice_status:<12} {counts}")
    lines.append("")
    lines.append("RECENT ERRORS")
    lines.extend(f"  {e}" for e in view.errors or ["none"])
    return [line[:width] for line in lines]


def _num(value: Any) -> str:
    return "-" if value is None else str(value)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s"


def _refresh(view: View, connect: Callable[[], _Client]) -> None:
    try:
        view.take(fetch(connect))
    except Exception as exc:
        view.problem = str(exc) or type(exc).__name__


def top(connect: Callable[[], _Client], out: TextIO, *, interval: float = 2.0) -> int:
    """Run the live view until ``q`` or Ctrl-C; one snapshot (exit 3 if unreachable) when ``out`` is no terminal."""
    view = View()
    if not out.isatty():
        _refresh(view, connect)
        for line in render(view, 200):
            print(line, file=out)
        return 3 if view.current is None else 0
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C quits as q does
        curses.wrapper(_loop, view, connect, max(interval, 0.2))
    return 0


def _loop(screen: curses.window, view: View, connect: Callable[[], _Client], interval: float) -> None:
    curses.curs_set(0)
    screen.timeout(100)  # getch waits at most 100 ms: keys and resizes are answered at once
    due = 0.0
    while True:
        now = time.monotonic()
        if now >= due:
            _refresh(view, connect)
            due = now + interval
            _draw(screen, view)
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return
        if key == curses.KEY_RESIZE:
            curses.update_lines_cols()
            _draw(screen, view)


def _draw(screen: curses.window, view: View) -> None:
    rows, columns = screen.getmaxyx()
    screen.erase()
    if rows < MIN_ROWS or columns < MIN_COLUMNS:
        message = f"terminal too small ({columns}x{rows}): molamctl top needs {MIN_COLUMNS}x{MIN_ROWS}; q quits"
        for i in range(0, min(len(message), columns * rows), max(columns - 1, 1)):
            if i // max(columns - 1, 1) < rows:
                screen.addnstr(i // max(columns - 1, 1), 0, message[i:], max(columns - 1, 1))
    else:
        for y, line in enumerate(render(view, columns - 1)[:rows]):
            screen.addnstr(y, 0, line, columns - 1, curses.A_BOLD if y == 0 else curses.A_NORMAL)
    screen.refresh()
