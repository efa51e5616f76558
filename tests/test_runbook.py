"""RUNBOOK.md only names commands that exist: every ``molamctl``/``molamd`` line in it parses with the real
command line, and each command it names answers ``--help`` with its own usage; every alert has its playbook."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from prometheus_catalogue import alerts

from molamd.cli import build_parser
from molamd.ctl_parser import parse
from tests.conftest import BIN

RUNBOOK = Path(__file__).resolve().parent.parent / "RUNBOOK.md"
SECTIONS = ("Architecture at a glance", "Deployment and upgrade", "Monitoring and alerting", "Incident playbooks",
            "Circuit breaker management", "Onboarding a bank connector", "Secret and key rotation",
            "Disaster recovery", "Performance tuning", "Troubleshooting")
PLAYBOOKS = ("Bank down", "Breaker stuck open", "Payouts in doubt", "DLQ", "Statements missing or not balancing",
             "pain.002 not arriving", "Database failover", "Vault sealed or token lost", "HSM down",
             "Certificate expiry", "A reload refused")


def commands(text: str) -> list[str]:
    """Each molamctl or molamd invocation: lines of code blocks, and inline code spans."""
    found: list[str] = []
    in_block = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            command = line.split("  #")[0].strip()
            if re.match(r"(molamctl|molamd)\b", command):
                found.append(command)
    flat = re.sub(r"```.*?```", "", text, flags=re.S).replace("\n", " ")
    found += [span for span in re.findall(r"`([^`]+)`", flat) if re.match(r"(molamctl|molamd) ", span)]
    return found


def command_path(words: list[str]) -> list[str]:
    """The subcommand words of an invocation (before its first argument or option)."""
    path = [words[0]]
    for word in words[1:]:
        if word.startswith("-"):
            break
        path.append(word)
        if len(path) == 3 or (len(path) == 2 and word not in ("dlq", "payouts", "statements", "files", "secrets",
                                                               "hsm", "audit")):
            break
    return path


TEXT = RUNBOOK.read_text(encoding="utf-8")
FOUND = sorted(set(commands(TEXT)))


def test_the_runbook_names_commands() -> None:
    assert len(FOUND) > 40
    assert any(c.startswith("molamd doctor") for c in FOUND) and any(c.startswith("molamctl top") for c in FOUND)


@pytest.mark.parametrize("line", FOUND)
def test_each_runbook_command_parses_and_has_its_help(line: str) -> None:
    words = shlex.split(line)
    try:
        if words[0] == "molamctl":
            parse(words[1:])
        else:
            build_parser().parse_args(words[1:])
    except SystemExit as exc:
        pytest.fail(f"RUNBOOK.md: {line!r} is not a valid command line (exit {exc.code})")
    path = command_path(words)
    done = subprocess.run([str(BIN / path[0]), *path[1:], "--help"], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {' '.join(path)}"), done.stdout[:200]


def test_the_runbook_has_the_sections_and_playbooks_operators_need() -> None:
    headings = re.findall(r"^#{2,3} (.+)$", TEXT, flags=re.M)
    for section in SECTIONS + PLAYBOOKS:
        assert section in headings, section
    links = set(re.findall(r"\]\(#([^)]+)\)", TEXT))
    anchors = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
    assert links <= anchors, links - anchors


def test_every_alert_has_a_playbook_section() -> None:
    headings = set(re.findall(r"^### (Molamd\w+)$", TEXT, flags=re.M))
    assert headings == {a["alert"] for a in alerts()}
