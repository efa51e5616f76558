"""docs/metrics.md is the catalogue: it lists exactly the metrics the daemon registers, with their types and
labels, named by Prometheus's conventions, and says which alerts read each."""

from __future__ import annotations

import re

from prometheus_catalogue import alerts, catalogue_rows, listed, metric_names, registered

UNIT_SUFFIXES = ("_seconds", "_total", "_info", "_bytes", "_ratio")
COUNTS = {"molamd_database_up", "molamd_connector_up", "molamd_hsm_up", "molamd_vault_token_valid",
          "molamd_config_last_reload_successful"}  # 0/1 gauges


def test_the_catalogue_lists_every_registered_metric_and_nothing_else() -> None:
    rows, found = catalogue_rows(), registered()
    assert sorted(rows) == sorted(found)
    for name, (kind, labels) in found.items():
        assert rows[name]["type"] == kind, name
        assert listed(rows[name]["labels"]) == tuple(sorted(labels)), name
        assert rows[name]["meaning"], name


def test_names_follow_prometheus_conventions() -> None:
    for name, (kind, labels) in registered().items():
        assert re.fullmatch(r"molamd_[a-z0-9_]+", name), name
        assert (kind == "counter") == name.endswith("_total"), name
        if "timestamp" in name or "age" in name or "duration" in name or "ttl" in name:
            assert name.endswith("_seconds"), f"{name}: a time without its unit"
        for label in labels:
            assert label not in {"slice_id", "payout_id", "file", "file_name", "trace_id", "amount", "msg_id"}, name


def test_the_alerts_column_is_what_the_rules_read() -> None:
    uses: dict[str, set[str]] = {}
    for alert in alerts():
        for name in metric_names(alert["expr"]):
            uses.setdefault(name, set()).add(alert["alert"])
    for name, row in catalogue_rows().items():
        assert listed(row["alerts"]) == tuple(sorted(uses.get(name, ()))), name
