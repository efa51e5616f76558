"""What the metrics catalogue (docs/metrics.md) is checked against: the metrics the daemon registers, the rules
that read them and the dashboard's panels."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from molamd.metrics import ACTOR_FAMILIES, Metrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "prometheus" / "molamd.rules.yml"
RULE_TESTS = [ROOT / "config" / "prometheus" / f"molamd.rules.{name}.yml" for name in ("test", "test-months")]
DASHBOARD = ROOT / "config" / "grafana" / "molamd.json"
CATALOGUE = ROOT / "docs" / "metrics.md"
SUFFIX = {"counter": "_total", "info": "_info"}


def registered() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each metric as exposed (counters with _total): its type and label names."""
    m = Metrics()
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for holder in (m, m.files, m.vault):
        for value in vars(holder).values():
            if isinstance(value, MetricWrapperBase):
                kind = value._type
                labels = tuple(value._labelnames)
                if kind == "info":  # an info's labels are its keys
                    [sample] = next(iter(value.collect())).samples
                    labels = tuple(sample.labels)
                found[value._name + SUFFIX.get(kind, "")] = (kind, labels)
    for name, (kind, labels, _) in ACTOR_FAMILIES.items():
        found[name + SUFFIX.get(kind, "")] = (kind, labels)
    return found


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def recorded() -> dict[str, str]:
    return {r["record"]: r["expr"] for r in rules() if "record" in r}


def panel_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


_NAME = re.compile(r"\b(molamd_[a-z0-9_]+|[a-z_]+:molamd_[a-z0-9_:]+)\b")


def metric_names(expr: str) -> set[str]:
    """The molamd metrics an expression reads, recording rules expanded to what they read; a histogram's
    _bucket, _sum and _count are the histogram."""
    names: set[str] = set()
    records = recorded()
    for name in _NAME.findall(expr):
        if name in records:
            names |= metric_names(records[name])
        else:
            names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def catalogue_rows() -> dict[str, dict[str, str]]:
    """docs/metrics.md's table, by metric name."""
    rows: dict[str, dict[str, str]] = {}
    for line in CATALOGUE.read_text().splitlines():
        if not line.startswith("| `molamd_"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name, kind, labels, meaning, used_by = (cells + [""] * 5)[:5]
        rows[name.strip("`")] = {"type": kind, "labels": labels, "meaning": meaning, "alerts": used_by}
    return rows


def listed(cell: str) -> tuple[str, ...]:
    return tuple(sorted(x.strip().strip("`") for x in cell.split(",") if x.strip() and x.strip() != "-"))
