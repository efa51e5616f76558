"""The alert and recording rules: promtool checks and unit-tests them, every alert is tested, documented in the
runbook and reads only metrics that exist; and the unit tests catch a rule that was changed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_catalogue import ROOT, RULE_TESTS, RULES, alerts, metric_names, registered, rules

SEVERITIES = {"critical", "warning"}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:  # the static checks below run without it
        pytest.skip("promtool missing: run scripts/setup")
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = promtool("test", "rules", *(p.name for p in RULE_TESTS), cwd=RULES.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(RULE_TESTS)


def _groups() -> list[dict[str, object]]:
    return [group for path in RULE_TESTS for group in yaml.safe_load(path.read_text())["tests"]]


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = [case for group in _groups() for case in group.get("alert_rule_test", [])]  # type: ignore[attr-defined]
    for alert in alerts():
        name = alert["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"{name}: no test case in which it fires"
        firing = [a for c in mine for a in c.get("exp_alerts") or []]
        # Each firing case names what fired, and its summary was rendered for that connector or source.
        assert all(a.get("exp_annotations", {}).get("summary") for a in firing), name


def test_each_group_has_series_that_must_not_fire() -> None:
    """A group that fed only firing series could not tell an alert that fires on everything."""
    for group in _groups():
        fired = {tuple(sorted(a["exp_labels"].items())) for c in group.get("alert_rule_test", [])
                 for a in c.get("exp_alerts") or []}
        silent = [c for c in group.get("alert_rule_test", []) if not c.get("exp_alerts")]
        assert len(group["input_series"]) > len(fired) or silent, f"{group['name']}: nothing that stays silent"


def test_every_alert_has_severity_summary_and_a_playbook() -> None:
    runbook = (ROOT / "RUNBOOK.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        notes = alert["annotations"]
        assert notes.get("summary"), name
        url = notes.get("runbook_url", "")
        assert url == f"RUNBOOK.md#{name.lower()}", f"{name}: runbook_url {url!r}"
        assert name.lower() in anchors, f"{name}: RUNBOOK.md has no section {name}"


def test_rules_read_only_metrics_that_exist() -> None:
    known = set(registered()) | {"up"}
    for rule in rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')} reads {sorted(unknown)}"


def test_a_changed_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    """Made to fail on purpose: the tests must notice a rule that no longer does what they say."""
    for old, new in (("< 0.99", "< 0.5"), ("> 3600", "> 36000"), ("== 0\n        for: 1m", "== 2\n        for: 1m")):
        text = RULES.read_text()
        assert old in text
        (tmp_path / RULES.name).write_text(text.replace(old, new, 1))
        shutil.copy(RULE_TESTS[0], tmp_path / RULE_TESTS[0].name)
        done = promtool("test", "rules", RULE_TESTS[0].name, cwd=tmp_path)
        assert done.returncode != 0, f"the unit tests pass with {old!r} changed to {new!r}"
