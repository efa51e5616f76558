"""Spool files: downloads hold a bank's data, so they live in the daemon's state directory and what a killed run
left there is cleared before new ones are made."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from statement_helpers import rig

from actors import clear_spool, spool_prefix
from connectors import RemoteFile
from molamd.statements import Ingested
from tests.corpora import FIXTURES


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_clear_spool_removes_what_a_gone_run_left_and_keeps_a_live_ones(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    gone, live = _dead_pid(), os.getppid()
    names = {
        f"molamd-statement-bank-a-2-{gone}-k3x_9q.part": False,  # a killed daemon's download: removed
        f"{spool_prefix('statement', 'bank-a-2')}ab12cd.part": False,  # this process's earlier incarnation
        f"molamd-statement-bank-a-2-{live}-ab12cd.part": True,  # a live process's: its own
        f"molamd-report-bank-a-2-{gone}-zz99": True,  # another kind: its owner clears it
        "notes.txt": True,
    }
    spool.mkdir(mode=0o755)
    for name in names:
        (spool / name).write_bytes(b":20:bank data")
    removed = clear_spool(str(spool), "statement", spool_prefix("statement", "bank-a-2"))
    assert sorted(Path(p).name for p in removed) == sorted(n for n, kept in names.items() if not kept)
    assert sorted(p.name for p in spool.iterdir()) == sorted(n for n, kept in names.items() if kept)
    fresh = tmp_path / "fresh"
    clear_spool(str(fresh), "statement", "x")
    assert fresh.stat().st_mode & 0o777 == 0o700, "made for the daemon's user only"


async def test_a_statement_download_is_spooled_in_the_state_directory_not_tmp(
    tmp_path: Path, migrated_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    seen: dict[str, list[str]] = {}

    async def during(remote: RemoteFile, result: Ingested) -> Any:  # the download is still on disk here
        seen["spool"] = sorted(p.name for p in (state / "spool").iterdir())
        seen["tmp"] = [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("molamd-bank-a-statements-")]

    async with rig(tmp_path, migrated_dsn) as r:
        r.put("sepa.sta", (FIXTURES / "wolph-mt940" / "mt940_tests/betterplace/sepa_mt9401.sta").read_bytes())
        [taken] = (await r.poller(after_commit=during).poll_once()).taken
    assert taken["outcome"] == "parsed"
    [spooled] = seen["spool"]
    assert spooled.startswith(spool_prefix("statement", "bank-a-statements")) and seen["tmp"] == []
    assert list((state / "spool").iterdir()) == [], "removed once stored"
