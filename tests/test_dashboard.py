"""The dashboard and the recording rules against a real Prometheus scraping a running daemon.

The daemon pays through the sandbox bank's REST API (some answers 5xx), through signed pain.001 files over SFTP
(reports back), takes an MT940 statement from an SFTP drop, and holds a Vault token from OpenBao. Prometheus (apt)
scrapes it every second with the project's rules loaded; every panel expression of config/grafana/molamd.json and
every recording rule is then evaluated through Prometheus's HTTP API: each must parse and return data. A live
scrape passes ``promtool check metrics``, and a panel naming a metric that does not exist fails here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from openbao_dev import OpenBao
from prometheus_catalogue import DASHBOARD, metric_names, panel_exprs, recorded, registered

from molamd import audit_chain
from tests.conftest import free_port
from tests.payout_helpers import FINAL, HMAC, ROOT, Bank, payout_toml, rest_connector, seed, statuses, wait_for
from tests.test_file_channel import file_bank, file_connector, files_env, hsm_key, hsm_toml, seed_files  # noqa: F401
from tests.test_statement_daemon import GOOD, source_toml

sys.path.insert(0, str(ROOT / "scripts"))
from prometheus_dev import Prometheus
from sandbox_sftp import SandboxSftp

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None,
                                reason="prometheus missing: run scripts/setup")


def concrete(expr: str) -> str:
    """A panel's expression as Grafana sends it with every host selected."""
    return expr.replace("$instance", ".*")


def test_the_dashboard_reads_only_metrics_that_exist() -> None:
    known = set(registered()) | {"up"}
    for title, expr in panel_exprs():
        unknown = metric_names(expr) - known
        assert not unknown, f"panel {title!r} reads {sorted(unknown)}"


def test_the_dashboard_covers_what_on_call_opens_first() -> None:
    """Slices, throughput, in doubt, DLQ, rates, latency, errors, breakers, statements, files, Vault."""
    read = {name for _, expr in panel_exprs() for name in metric_names(expr)}
    for name in ("molamd_payout_slices", "molamd_payout_dispatch_duration_seconds", "molamd_payout_slices_in_doubt",
                 "molamd_dlq_slices", "molamd_connector_requests_total", "molamd_connector_request_duration_seconds",
                 "molamd_connector_failures_total", "molamd_circuit_breaker_state", "molamd_statement_files_total",
                 "molamd_statement_lines_unmatched", "molamd_payment_files", "molamd_payment_status_reports_total",
                 "molamd_vault_token_expiry_timestamp_seconds"):
        assert name in read, f"no panel shows {name}"
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"


@pytest.fixture
def statements(short_tmp: Path) -> Iterator[SandboxSftp]:
    server = SandboxSftp(short_tmp / "statements", state=short_tmp / "statements-state").start()
    (server.inbox / "today.sta").write_bytes(GOOD)
    yield server
    server.stop()


def test_every_panel_and_recording_rule_returns_data_from_a_real_prometheus(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, hsm_key: tuple[str, Path],  # noqa: F811
    file_bank: tuple[Bank, Any, Path], statements: SandboxSftp,  # noqa: F811
) -> None:
    token, certificate = hsm_key
    _, files_sftp, _ = file_bank
    bao = OpenBao()
    bank = Bank()
    prometheus: Prometheus | None = None
    try:
        bank.faults(error_rate=0.2)
        bao.put("molamd/bank-a", hmac=HMAC)
        (short_tmp / "secret_id").write_text(bao.secret_id() + "\n")
        port = free_port()
        connectors = (rest_connector("bank-a-rest", bank.url, hmac_env="UNUSED").replace(
                          'hmac_secret = "env:UNUSED"', 'hmac_secret = "vault:secret/molamd/bank-a#hmac"')
                      + file_connector("bank-c-files", files_sftp, files_sftp.known_hosts(short_tmp / "kh-files"),
                                       certificate)
                      + source_toml(statements, statements.known_hosts(short_tmp / "kh-statements"),
                                    poll_interval="500ms"))
        config = (payout_toml(short_tmp, migrated_dsn, connectors, metrics_port=port) + hsm_toml(token)
                  + f'\n[vault]\naddress = "{bao.address}"\nrole_id = "{bao.role_id}"\n'
                  f'secret_id = "file:{short_tmp / "secret_id"}"\n')
        rest_ids = seed(migrated_dsn, 60)
        file_ids = seed_files(migrated_dsn, 30)
        seed(migrated_dsn, 5, profile="bank-z")  # no connector: they stay pending, as unroutable work does
        d = daemon_factory(config, env={**files_env(token), "HOME": str(short_tmp),
                                        "TEST_SFTP_PASSWORD": statements.password})
        prometheus = Prometheus(short_tmp / "prometheus", f"127.0.0.1:{port}", fast_rules=True)

        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        checked = subprocess.run(["promtool", "check", "metrics"], input=scrape, capture_output=True, text=True,
                                 timeout=60, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr

        wait_for(lambda: sum(statuses(migrated_dsn, rest_ids + file_ids).get(s, 0) for s in FINAL)
                 == len(rest_ids) + len(file_ids), 90, "every slice final",
                 lambda: statuses(migrated_dsn, rest_ids + file_ids))
        wait_for(lambda: len(d.ctl_json("statements", "list")) >= 1, 30, "the statement stored")
        pending: list[str] = []  # waited for below until every panel and rule has data, not a fixed sleep

        def empty() -> list[str]:
            pending.clear()
            for title, expr in panel_exprs():
                if not prometheus.query(concrete(expr)):  # type: ignore[union-attr]
                    pending.append(f"panel {title!r}: {expr}")
            for name, expr in recorded().items():
                if not prometheus.query(expr) or not prometheus.query(name):  # type: ignore[union-attr]
                    pending.append(f"rule {name}: {expr}")
            return pending

        wait_for(lambda: not empty(), 30, "every panel and recording rule with data", lambda: pending)
        health = {rule["name"]: (rule["health"], rule.get("lastError")) for rule in prometheus.rules()}
        assert set(health) >= set(recorded()), "Prometheus loaded every recording rule"
        assert all(state == "ok" for state, _ in health.values()), health
        breakers = prometheus.query('molamd_circuit_breaker_state{connector="bank-a-rest"} == 1')
        assert [b["metric"]["state"] for b in breakers] in (["closed"], ["open"], ["half_open"])
        ttl = prometheus.query(concrete(dict(panel_exprs())["Vault token TTL left"]))
        assert float(ttl[0]["value"][1]) > 0, "the daemon holds a live Vault token"

        restart_under_prometheus(d, prometheus, migrated_dsn)
        assert d.stop() == 0  # a clean stop revokes the daemon's token before the dev server goes
        with psycopg.connect(migrated_dsn, autocommit=True) as conn:  # what the daemon wrote chains whole
            reports = audit_chain.verify(conn)
        assert sum(r.rows for r in reports) > 100 and not [f for r in reports for f in r.findings], reports
    finally:
        if prometheus is not None:
            prometheus.close()
        bank.close()
        bao.stop()


def restart_under_prometheus(d: Any, prometheus: Prometheus, dsn: str) -> None:
    """The daemon restarts under Prometheus: `up` drops and comes back, the counters start again from 0 and the
    rates over the restart stay sane (a reset is not a negative rate), and nothing else breaks."""
    calls = 'sum(increase(molamd_connector_requests_total{connector="bank-a-rest"}[5m]))'
    before = float(prometheus.query(calls)[0]["value"][1])
    assert d.stop() == 0
    wait_for(lambda: prometheus.query('up{job="molamd"} == 0'), 20, "Prometheus sees the daemon down")
    assert prometheus.query("ALERTS{alertname=\"MolamdDown\",alertstate=\"firing\"}") == [], "not after 1s"
    d.start()
    wait_for(lambda: prometheus.query('up{job="molamd"} == 1'), 30, "Prometheus sees the daemon back")
    bank_rows = seed(dsn, 10)
    wait_for(lambda: statuses(dsn, bank_rows).get("pending", 0) == 0, 30, "the new slices sent")
    wait_for(lambda: float(prometheus.query(calls)[0]["value"][1]) > before, 30, "calls after the restart count on")
    assert all(float(r["value"][1]) >= 0 for r in prometheus.query(
        "rate(molamd_connector_requests_total[5m])")), "a counter reset is no negative rate"


def test_a_panel_that_names_a_missing_metric_is_caught(tmp_path: Path) -> None:
    """Made to fail on purpose: the static check sees a misspelt metric."""
    known = set(registered()) | {"up"}
    assert metric_names("sum(rate(molamd_connector_request_total[5m]))") - known == {"molamd_connector_request_total"}
