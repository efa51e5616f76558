"""The unit file: systemd-analyze verify accepts it and rates its exposure at 2.5 or better."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "molamd.service"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing: scripts/setup installs systemd")


def _installed_copy(tmp_path: Path) -> Path:
    """The unit with /opt/molamd/.venv pointing at this checkout's venv, so ExecStart= paths exist."""
    venv = str(Path(sys.executable).parent.parent)
    unit = tmp_path / "molamd.service"
    unit.write_text(UNIT.read_text().replace("/opt/molamd/.venv", venv))
    return unit


@needs_analyze
def test_verify(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(_installed_copy(tmp_path))],
                            capture_output=True, text=True, check=False)
    problems = [line for line in result.stderr.splitlines() if "molamd.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


@needs_analyze
def test_security_exposure(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(_installed_copy(tmp_path))],
                            capture_output=True, text=True, check=False)
    match = re.search(r"Overall exposure level for molamd.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.5


def test_unit_keeps_the_contract() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "RuntimeDirectory=molamd",
                 "StateDirectory=molamd", "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                 "CapabilityBoundingSet=\n", "RestrictAddressFamilies=", "SystemCallFilter=",
                 "molamctl --socket /run/molamd/control.sock --timeout 120 reload"):
        assert line in text, line
