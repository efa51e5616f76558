"""Helpers for payout integration tests: the sandbox bank as a process, config, seeding, waiting."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.conftest import daemon_toml

ROOT = Path(__file__).resolve().parent.parent
HMAC = "integration-hmac-secret"
FINAL = ("settled", "failed", "dead")


class Bank:
    """scripts/sandbox_bank.py in its own process, on a free port."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "sandbox_bank.py"), "--port", "0", "--secret", HMAC,
             "--settle-delay", "0.05", "--seed", "7", *args], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().split()[-1]
        assert self.url.startswith("http://"), self.url

    def faults(self, **values: float) -> None:
        httpx.post(f"{self.url}/admin/faults", json=values, timeout=5).raise_for_status()

    def ledger(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.url}/admin/ledger", timeout=10).json()["payments"])

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.url}/admin/stats", timeout=10).json())

    def files(self) -> dict[str, Any]:
        """The file desk's counters (files, duplicates, verified MsgIds...)."""
        return dict(httpx.get(f"{self.url}/admin/files", timeout=10).json())

    def files_faults(self, **values: float) -> None:
        httpx.post(f"{self.url}/admin/files", json=values, timeout=5).raise_for_status()

    def events_url(self) -> str:
        return str(httpx.get(f"{self.url}/admin/info", timeout=5).json()["events_url"])

    def drop_streams(self) -> int:
        return int(httpx.post(f"{self.url}/admin/drop_streams", timeout=5).json()["dropped"])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def rest_connector(name: str, bank_url: str, *, profile: str = "bank-a", priority: int = 10,
                   currencies: str = '["XOF"]', rate: float = 1000.0, call_timeout: str = "2s",
                   events_url: str | None = None, scope: str = "", hmac_env: str = "MOLAMD_TEST_HMAC") -> str:
    return textwrap.dedent(f"""
        [[connectors]]
        name = "{name}"
        kind = "rest"
        bank_profile = "{profile}"
        priority = {priority}
        currencies = {currencies}
        shutdown_grace = "3s"
        idempotency_scope = "{scope}"
        [connectors.rest]
        base_url = "{bank_url}"
        key_id = "molamd-demo"
        hmac_secret = "env:{hmac_env}"
        {f'events_url = "{events_url}"' if events_url else ""}
        [connectors.limits]
        rate = {rate}
        burst = 100
        concurrency = 64
        call_timeout = "{call_timeout}"
        [connectors.breaker]
        window = 20
        minimum_calls = 10
        failure_rate = 0.9
        open_duration = "200ms"
        open_duration_max = "1s"
        """)


def payout_toml(directory: Path, dsn: str, connectors: str, *, lease: str = "20s", host: str = "test-host",
                first_status_check: str = "100ms", **kw: Any) -> str:
    base = daemon_toml(directory, dsn=dsn, connectors="", **kw).replace('host_id = "test-host"', f'host_id = "{host}"')
    return base + textwrap.dedent(f"""
        [workers.dispatcher]
        idle_poll = "50ms"
        lease = "{lease}"
        call_timeout = "5s"
        first_status_check = "{first_status_check}"
        retry_initial = "50ms"
        retry_max = "200ms"
        flush_interval = "10ms"

        [workers.status_follower]
        interval = "50ms"
        backoff_initial = "100ms"
        backoff_max = "300ms"

        [workers.telemetry]
        interval = "200ms"
        """) + connectors


def seed(dsn: str, count: int, *, profile: str = "bank-a", currency: str = "XOF", account_currency: str = "XOF",
         rail: str = "ach", max_attempts: int = 8, prefix: str = "p") -> list[int]:
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO bank_profiles (id, name, country) VALUES (%s, %s, 'SN') ON CONFLICT DO NOTHING",
                     (profile, profile))
        account = conn.execute(
            "INSERT INTO treasury_accounts (bank_profile_id, label, account_number, currency)"
            " VALUES (%s, %s, 'ACC-123456', %s) ON CONFLICT (bank_profile_id, label)"
            " DO UPDATE SET currency = EXCLUDED.currency RETURNING id",
            (profile, f"main-{account_currency}", account_currency)).fetchone()[0]
        rows = conn.execute(
            "INSERT INTO payout_slices (payout_id, treasury_account_id, amount, currency, rail, beneficiary_name,"
            " beneficiary_account, max_attempts)"
            " SELECT %s || '-' || n, %s, 1000 + n, %s, %s, 'Beneficiary ' || n, 'SN08' || lpad(n::text, 12, '0'), %s"
            " FROM generate_series(1, %s) AS n RETURNING id",
            (f"{prefix}{time.monotonic_ns()}", account, currency, rail, max_attempts, count)).fetchall()
    return [r[0] for r in rows]


def statuses(dsn: str, ids: list[int] | None = None) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        if ids is None:
            rows = conn.execute("SELECT status, count(*) FROM payout_slices GROUP BY status").fetchall()
        else:
            rows = conn.execute("SELECT status, count(*) FROM payout_slices WHERE id = ANY(%s) GROUP BY status",
                                (ids,)).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition", detail: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {detail() if detail else ''}")
        time.sleep(0.1)


def wait_final(dsn: str, ids: list[int], timeout: float = 60.0) -> dict[str, int]:
    wait_for(lambda: sum(statuses(dsn, ids).get(s, 0) for s in FINAL) == len(ids), timeout,
             "every slice final", lambda: statuses(dsn, ids))
    return statuses(dsn, ids)


def paid_per_reference(*banks: Bank) -> dict[str, list[tuple[str, str]]]:
    """Every payment reference over the union of the banks' ledgers, with (bank url, payment id) per execution."""
    found: dict[str, list[tuple[str, str]]] = {}
    for bank in banks:
        for payment in bank.ledger():
            found.setdefault(payment["reference"], []).append((bank.url, payment["id"]))
    return found


def assert_no_payment_in_two_ledgers(*banks: Bank) -> dict[str, list[tuple[str, str]]]:
    """The cross-bank check: no payment reference in more than one bank's ledger (two channels of one bank
    profile keep separate idempotency stores, so the same key sent to both is paid twice). Returns
    ``paid_per_reference``. tests/test_negative_controls.py shows it failing when the scope rule is broken."""
    paid = paid_per_reference(*banks)
    twice = {ref: where for ref, where in paid.items() if len(where) > 1}
    assert twice == {}, f"paid by both banks: {len(twice)}, e.g. {list(twice.items())[:5]}"
    return paid


def sends_per_key(bank: Bank) -> dict[str, Counter[str]]:
    """From the bank's request log: per idempotency key, how many requests it executed, replayed, or refused
    (``conflict``: the key with another body; ``invalid``)."""
    log = httpx.get(f"{bank.url}/admin/requests", timeout=10).json()["requests"]
    found: dict[str, Counter[str]] = {}
    for request in log:
        found.setdefault(request["idempotency_key"], Counter())[request["outcome"]] += 1
    return found


def assert_paid_once(dsn: str, bank: Bank, *, replays: int | None = None) -> int:
    """Nothing paid twice, counted from the bank's request log (every request it executed or answered from its
    idempotency store), not from its ledger alone (which dedups by key, so a payment sent twice never shows there).

    Each key is executed at most once; each settled or sent slice's key exactly once, under the provider
    reference the slice holds; no dead or waiting slice's key at all. A key is sent no more often than the slice
    has attempts recorded (every send is an attempt written before the call, so a send the daemon did not account
    for fails here), and when ``replays`` is given, the bank answered exactly that many replays in all.
    Returns the replay count.
    """
    sends = sends_per_key(bank)
    executed_twice = {key: n["executed"] for key, n in sends.items() if n["executed"] > 1}
    assert executed_twice == {}, f"paid twice: keys the bank executed more than once: {executed_twice}"
    ledger = {p["idempotency_key"]: p for p in bank.ledger()}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT s.payout_id || '/' || s.id, s.idempotency_key, s.status, s.provider_ref,"
            " (SELECT count(*) FROM payout_slice_attempts a WHERE a.payout_slice_id = s.id)"
            " FROM payout_slices s").fetchall()
    for reference, key, status, provider_ref, attempts in rows:
        sent = sends.get(key, Counter())
        if status in ("settled", "sent"):
            paid_as = ledger.get(key, {}).get("id")
            assert sent["executed"] == 1 and paid_as == provider_ref, (reference, status, dict(sent), paid_as)
        elif status in ("dead", "pending", "retry_scheduled"):
            assert sent["executed"] == 0, f"{reference} executed by the bank but {status}"
        got = sum(sent.values())
        assert got <= attempts, f"{reference}: the bank got it {got} times, {attempts} attempts recorded"
    replayed = sum(n["replayed"] for n in sends.values())
    if replays is not None:
        assert replayed == replays, f"the bank answered {replayed} replays, expected {replays}"
    return replayed


def env() -> dict[str, str]:
    return {"MOLAMD_TEST_HMAC": HMAC}


def dumps(value: Any) -> str:
    return json.dumps(value, default=str)
