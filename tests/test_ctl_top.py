"""``molamctl top`` in a real terminal: tmux runs it, sends keys and resizes, and the pane is what a person sees."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import MOLAMCTL, connector_toml

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux missing: run scripts/setup")

CONNECTORS = connector_toml("alpha") + connector_toml("beta", priority=20)


class Terminal:
    """One tmux server of our own (its own socket, no user config) with one window running a command."""

    def __init__(self, env: dict[str, str]) -> None:
        self.name = f"molamd-top-{uuid.uuid4().hex[:8]}"
        # LINES and COLUMNS (pytest-xdist's workers set 80x24) would make curses ignore the pane's real size
        self.env = {k: v for k, v in env.items() if k not in ("LINES", "COLUMNS")} | {"TERM": "xterm-256color"}

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.name, "-f", "/dev/null", *args], capture_output=True, text=True,
                              env=self.env, timeout=10, check=False)
        return done.stdout

    def start(self, command: list[str], width: int = 110, height: int = 30) -> None:
        """Run ``command``; once it ends the pane says ``exited N`` (N its exit status) and stays."""
        line = " ".join(shlex.quote(word) for word in command) + '; echo "exited $?"; sleep 60'
        self.tmux("new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height), line)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top")

    def wait_for(self, seen: Callable[[str], bool], what: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if seen(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"the pane never showed {what}:\n{text}")
            time.sleep(0.1)

    def exit_status(self) -> str:
        """The command's exit status, once it has ended."""
        text = self.wait_for(lambda s: "exited " in s, "the command ending")
        return text.split("exited ", 1)[1].split()[0]

    def close(self) -> None:
        self.tmux("kill-server")


@pytest.fixture
def terminal() -> Iterator[Callable[[dict[str, str]], Terminal]]:
    made: list[Terminal] = []

    def make(env: dict[str, str]) -> Terminal:
        made.append(Terminal(env))
        return made[-1]

    yield make
    for t in made:
        t.close()


def test_top_refreshes_in_place_survives_resizes_and_quits_on_q(daemon_factory: Any,
                                                               terminal: Callable[[dict[str, str]], Terminal]) -> None:
    d = daemon_factory(connectors=CONNECTORS)
    term = terminal(d.env)
    term.start([MOLAMCTL, "--socket", d.socket, "top", "--interval", "0.3"])
    first = term.wait_for(lambda s: "alpha" in s and "beta" in s, "both connectors")
    assert "CONNECTOR" in first and "BREAKER" in first and "SLICES" in first and "RECENT ERRORS" in first
    alpha = next(line for line in first.splitlines() if line.startswith("alpha"))
    assert alpha.split()[1:3] == ["running", "closed"]
    # the view follows the daemon: an operator opens alpha's breaker elsewhere
    assert d.ctl("force-open", "alpha").returncode == 0
    term.wait_for(lambda s: any(line.startswith("alpha") and " forced_open " in line for line in s.splitlines()),
                  "alpha's breaker open")
    # too small, then big again
    term.tmux("resize-window", "-t", "top", "-x", "40", "-y", "6")
    term.wait_for(lambda s: "terminal too small" in s.replace("\n", ""), "the too-small message")
    term.tmux("resize-window", "-t", "top", "-x", "110", "-y", "30")
    term.wait_for(lambda s: "CONNECTOR" in s and "alpha" in s, "the view again after the resize")
    term.tmux("send-keys", "-t", "top", "q")
    assert term.exit_status() == "0"
    assert d.stop() == 0


def test_top_quits_on_ctrl_c_and_shows_a_daemon_that_went_away(daemon_factory: Any,
                                                                terminal: Callable[[dict[str, str]], Terminal]) \
        -> None:
    d = daemon_factory(connectors=CONNECTORS)
    term = terminal(d.env)
    term.start([MOLAMCTL, "--socket", d.socket, "top", "--interval", "0.3"])
    term.wait_for(lambda s: "alpha" in s, "the connectors")
    assert d.stop() == 0
    term.wait_for(lambda s: "daemon unreachable" in s, "that the daemon went away")
    term.tmux("send-keys", "-t", "top", "C-c")
    assert term.exit_status() == "0"


def test_top_without_a_terminal_prints_one_snapshot(daemon_factory: Any, short_tmp: Any) -> None:
    d = daemon_factory(connectors=CONNECTORS)
    done = subprocess.run([MOLAMCTL, "--socket", d.socket, "top"], capture_output=True, text=True, env=d.env,
                          timeout=10, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("molamd 0.1.0 on test-host")
    assert [line.split()[0] for line in lines if line.startswith(("alpha", "beta"))] == ["alpha", "beta"]
    assert "\x1b" not in done.stdout, "no terminal escapes in a snapshot"
    assert d.stop() == 0
    gone = subprocess.run([MOLAMCTL, "--socket", os.fspath(short_tmp / "none.sock"), "top"], capture_output=True,
                          text=True, env=d.env, timeout=10, check=False)
    assert gone.returncode == 3 and "daemon unreachable: " in gone.stdout
