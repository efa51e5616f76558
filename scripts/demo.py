"""Drives the demo: PostgreSQL under var/, migrations, seed data, then molamd in the foreground."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from openbao_dev import OpenBao  # noqa: E402
from pgcluster import Cluster  # noqa: E402
from prometheus_dev import Prometheus  # noqa: E402

CONFIG = ROOT / "config" / "molamd.dev.toml"
BIN = ROOT / ".venv" / "bin"
DEMO_PORT = 55432  # the ports config/molamd.dev.toml names
BANK_PORT = 58080  # bank A: ecobank-sn's primary channel (and sgbci-ci's bank)
BACKUP_PORT = 58090  # bank B: ecobank-sn's backup channel, its own ledger and idempotency store
TREASURY_ACCOUNT = "SN0120100100123456789012"  # ecobank-sn's XOF account in seed_demo.sql: its statements
PRIMARY = "ecobank-sn-primary"
SFTP_PORT = 58022
SFTP_ROOT = Path("/tmp/molamd-demo/sftp")  # config/molamd.dev.toml pins the host key kept beside it
SFTP_STATE = Path("/tmp/molamd-demo/sftp-state")
SFTP_PASSWORD = "sandbox-sftp-password"
BANK_SECRETS = {"A_": "sandbox-bank-a-hmac-v1", "B_": "sandbox-bank-b-hmac", "C_": "sandbox-bank-c-hmac"}
ROTATED_SECRET = "sandbox-bank-a-hmac-v2"  # bank A's new key, switched to during the run
VAULT_PORT = 58200  # the demo's OpenBao dev server: every secret molamd uses is in it
VAULT_ROLE_ID = "molamd-demo"  # config/molamd.dev.toml names it
VAULT_SECRET_ID = Path("/tmp/molamd-demo/vault-secret-id")  # the only secret on disk: the AppRole secret_id
FILES_PORT = 58100  # bank C: cbao-sn's bank, which takes payment files only
FILES_SFTP_PORT = 58023
FILES_ROOT = Path("/tmp/molamd-demo/bank-c")  # its SFTP root: /inbox, /outbox (pain.002), /outgoing (MT940)
FILES_STATE = Path("/tmp/molamd-demo/bank-c-state")
FILES_ACCOUNT = "0411-0042-000123456"  # cbao-sn's XOF account in seed_demo.sql
HSM_DIR = Path("/tmp/molamd-demo/hsm")  # the demo's SoftHSM2 token, key and certificate
HSM_PIN = "demo-hsm-pin"
FILES_KEY = "molam-files"
PROMETHEUS_PORT = 59090  # --prometheus: a real Prometheus scraping the daemon, with the project's rules
PROMETHEUS_DIR = Path("/tmp/molamd-demo/prometheus")
IDLE_TIMEOUT = 600.0
# The sandbox banks refuse a signed request older than this, so config/molamd.dev.toml's acceptance_window of 90s
# is the truth about them: a slice whose attempts ran out in doubt is freed (or dead) within minutes, not 10.
BANK_MAX_SKEW = 60
LOG_PATH = ROOT / "var" / "molamd.log"
# Where the daemon's work on a slice ends: final, or unresolved (its bank could not say; a person decides).
FINAL = ("settled", "failed", "dead", "unresolved")
FAULT_MIX = {"error_rate": 0.2, "reset_rate": 0.05, "hang_rate": 0.05, "rate_limit_rate": 0.03, "retry_after": 1.0}


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def cluster_dir() -> Path:
    """var/pg, unless the postgres user cannot reach it (a checkout under /root): then /tmp."""
    wanted = ROOT / "var" / "pg"
    if os.getuid() != 0:
        return wanted
    probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(ROOT)], check=False)
    if probe.returncode == 0:
        return wanted
    fallback = Path("/tmp/molamd-demo-pg")
    say(f"the postgres user cannot reach {ROOT}; keeping the cluster in {fallback}")
    return fallback


def control_socket() -> str:
    import tomllib

    return str(tomllib.loads(CONFIG.read_text())["control"]["socket"])


def ctl(*args: str) -> Any:
    """A read for the progress lines: None when it did not answer (the next poll asks again)."""
    ok, result = ctl_reply(*args)
    return result if ok else None


def ctl_reply(*args: str) -> tuple[bool, Any]:
    """(answered ok, the result or the error the daemon gave, or molamctl's own message)."""
    try:
        result = subprocess.run([str(BIN / "molamctl"), "--socket", control_socket(), "--json", *args],
                                capture_output=True, text=True, check=False, timeout=30)
    except subprocess.TimeoutExpired:
        return False, {"code": "timeout", "message": f"molamctl {' '.join(args)}: no answer in 30s"}
    try:
        parsed = json.loads(result.stdout) if result.stdout.strip() else None
    except json.JSONDecodeError:
        parsed = None
    if result.returncode != 0:
        return False, parsed or {"code": f"exit {result.returncode}", "message": result.stderr.strip()}
    return True, parsed


RETRYABLE = ("busy", "unavailable", "timeout", "exit 3")  # the daemon or the target is not ready yet


class DemoFailed(Exception):
    """A step of the demo did not happen: its summary must not claim it."""


def ctl_must(*args: str, deadline: float = 30.0) -> Any:
    """An operator command the demo's claims depend on: retried while the target is busy (a connector restarting
    after a key rotation, say), else a loud failure naming the command and the daemon's answer."""
    stop_at = time.monotonic() + deadline
    while True:
        ok, result = ctl_reply(*args)
        if ok:
            return result
        code = (result or {}).get("code", "")
        if code not in RETRYABLE or time.monotonic() > stop_at:
            raise DemoFailed(f"molamctl {' '.join(args)} failed: {code}: {(result or {}).get('message')}")
        say(f"molamctl {' '.join(args)}: {code} ({(result or {}).get('message')}); asking again")
        time.sleep(0.5)


def breaker_of(name: str) -> str | None:
    """The breaker state the daemon reports for a connector (`molamctl connector NAME`)."""
    row = ctl("connector", name)
    return None if row is None else row.get("breaker")


def healthy(status: Any, connectors: Any) -> bool:
    return bool(
        status and connectors and status["database"]["up"]
        and all(c["state"] == "running" and c["health"] == "ok" for c in connectors)
    )


def start_sftp(root: Path = SFTP_ROOT, state: Path = SFTP_STATE, port: int = SFTP_PORT, *, clean: bool = True,
               extra: list[str] | None = None) -> subprocess.Popen[str]:
    """A bank's SFTP server; its inbox starts empty, like the demo database."""
    if clean:
        shutil.rmtree(root, ignore_errors=True)
    sftp = subprocess.Popen(
        [str(BIN / "python"), str(ROOT / "scripts" / "sandbox_sftp.py"), "--root", str(root),
         "--state", str(state), "--port", str(port), "--password", SFTP_PASSWORD, *(extra or [])],
        stdout=subprocess.PIPE, text=True)
    assert sftp.stdout is not None
    line = sftp.stdout.readline().strip()
    if "listening" not in line:
        raise SystemExit(f"demo: the sandbox SFTP server did not start: {line!r}")
    return sftp


def start_vault() -> OpenBao:
    """OpenBao's dev server, configured as scripts/vault-setup configures one, holding every demo secret."""
    bao = OpenBao(port=VAULT_PORT, role_id=VAULT_ROLE_ID, token_period="1m")
    bao.put("molamd/bank-a", hmac=BANK_SECRETS["A_"])
    bao.put("molamd/bank-b", hmac=BANK_SECRETS["B_"])
    bao.put("molamd/sftp", password=SFTP_PASSWORD)
    bao.put("molamd/hsm", pin=HSM_PIN)
    VAULT_SECRET_ID.parent.mkdir(parents=True, exist_ok=True)
    VAULT_SECRET_ID.write_text(bao.secret_id() + "\n")
    VAULT_SECRET_ID.chmod(0o600)
    return bao


def rotate_bank_a(bao: OpenBao, bank_url: str) -> int:
    """Bank A switches its HMAC key (the old one stays accepted for a while), then the new one goes into Vault;
    the daemon's rotation check restarts only the two connectors that use it."""
    httpx.post(f"{bank_url}/admin/secret", json={"secret": ROTATED_SECRET}, timeout=10).raise_for_status()
    version = bao.put("molamd/bank-a", hmac=ROTATED_SECRET)
    say(f"rotation: bank A switched its HMAC key; secret/molamd/bank-a is now version {version} in OpenBao")
    return version


def start_hsm() -> Path:
    """A fresh SoftHSM2 token with a key made inside it (`molamd hsm keygen`) and its self-signed certificate
    (`molamd hsm cert`): what a bank would be given, here the sandbox bank C."""
    shutil.rmtree(HSM_DIR, ignore_errors=True)
    (HSM_DIR / "tokens").mkdir(parents=True)
    conf = HSM_DIR / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {HSM_DIR / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "molam-demo", "--pin", HSM_PIN,
                    "--so-pin", "demo-so-pin"], check=True, capture_output=True)
    certificate = HSM_DIR / f"{FILES_KEY}.pem"
    for args in (["keygen", "--label", FILES_KEY, "--kind", "rsa-2048"],
                 ["cert", "--label", FILES_KEY, "--cn", "Molam Senegal SA payment files", "--org", "Molam SAS",
                  "--country", "SN", "--out", str(certificate)]):
        subprocess.run([str(BIN / "molamd"), "hsm", *args, "--config", str(CONFIG)], check=True,
                       stdout=subprocess.DEVNULL)
    return certificate


def start_files_bank(faults: bool, certificate: Path) -> tuple[subprocess.Popen[str], str, subprocess.Popen[str]]:
    """Bank C: its file desk (XSD, xmlsec1, DU01, ledger, pain.002) and its SFTP server over the same root."""
    shutil.rmtree(FILES_ROOT, ignore_errors=True)
    bank, url = start_bank(FILES_PORT, False, "C_", statements=FILES_ROOT / "outgoing", account=FILES_ACCOUNT,
                           extra=["--files-root", str(FILES_ROOT), "--files-certificate", str(certificate),
                                  "--report-delay", "1.0"])
    if faults:  # reports that come twice, and some that come late (a statement may settle those first)
        httpx.post(f"{url}/admin/files", json={"duplicate_report_rate": 0.2, "late_report_rate": 0.2},
                   timeout=10).raise_for_status()
    sftp = start_sftp(FILES_ROOT, FILES_STATE, FILES_SFTP_PORT, clean=False,
                      extra=["--drop-after-rename", "2", "--take-at-once"] if faults else [])
    return bank, url, sftp


def start_bank(port: int, faults: bool, prefix: str, *, statements: Path = SFTP_ROOT / "outgoing",
               account: str = TREASURY_ACCOUNT, extra: list[str] | None = None) -> tuple[subprocess.Popen[str], str]:
    mix = FAULT_MIX if faults else {}
    bank = subprocess.Popen(
        [str(BIN / "python"), str(ROOT / "scripts" / "sandbox_bank.py"), "--port", str(port),
         "--events-port", str(port + 1), "--statements-dir", str(statements),
         "--statement-interval", "1", "--statement-account", account, "--statement-prefix", prefix,
         "--secret", BANK_SECRETS[prefix], "--settle-delay", "0.2", "--reject-rate", "0.01",
         "--max-skew", str(BANK_MAX_SKEW),
         "--faults", json.dumps(mix),
         *(extra or [])],
        stdout=subprocess.PIPE, text=True)
    assert bank.stdout is not None
    line = bank.stdout.readline().strip()
    if "listening" not in line:
        raise SystemExit(f"demo: the sandbox bank did not start: {line!r}")
    return bank, line.split()[-1]


def primary_progress(cluster: Cluster) -> float:
    """The share of ecobank-sn's slices that are final: its primary's breaker opens a quarter of the way in."""
    with psycopg.connect(cluster.dsn()) as conn:
        final, total = conn.execute(
            "SELECT count(*) FILTER (WHERE s.status = ANY(%s)), count(*) FROM payout_slices s"
            " JOIN treasury_accounts t ON t.id = s.treasury_account_id WHERE t.bank_profile_id = 'ecobank-sn'",
            (list(FINAL),)).fetchone()
    return final / max(total, 1)


def slice_counts(cluster: Cluster) -> dict[str, int]:
    with psycopg.connect(cluster.dsn()) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM payout_slices GROUP BY status").fetchall())


def progress(cluster: Cluster, connectors: Any, previous: tuple[float, int]) -> tuple[float, int, dict[str, int]]:
    counts = slice_counts(cluster)
    final = sum(counts.get(s, 0) for s in FINAL)
    now = time.monotonic()
    rate = (final - previous[1]) / max(now - previous[0], 1e-6)
    breakers = " ".join(f"{c['name']}={c['breaker'] or '-'}" for c in connectors or [])
    shown = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    say(f"slices: {shown} | {rate:.0f} final/s | breakers: {breakers}")
    return now, final, counts


def reconcile(cluster: Cluster, bank_urls: list[str]) -> tuple[int, int, int, int, list[str]]:
    """(paid twice, lost, dead yet executed, unresolved yet executed, notes) from the union of every bank's
    ledger against the database.

    A payment executed by two banks (two channels with their own idempotency stores) counts as paid twice. A dead
    slice a bank executed is the worst kind of lost: dead tells the platform "not paid", so it pays again. An
    unresolved slice is not lost: the platform knows it may have been paid, and a person resolves it.
    """
    by_ref: dict[str, list[dict[str, Any]]] = {}
    for url in bank_urls:
        for payment in httpx.get(f"{url}/admin/ledger", timeout=30).json()["payments"]:
            by_ref.setdefault(str(payment["idempotency_key"]), []).append({**payment, "bank": url})
    paid_twice = sum(1 for payments in by_ref.values() if len(payments) > 1)
    with psycopg.connect(cluster.dsn()) as conn:
        rows = conn.execute("SELECT idempotency_key, status, provider_ref FROM payout_slices").fetchall()
    lost, dead_paid, unresolved_paid, notes = 0, 0, 0, []
    for reference, payments in by_ref.items():
        if len(payments) > 1:
            notes.append(f"{reference}: paid by " + ", ".join(f"{p['bank']} ({p['id']})" for p in payments))
    for reference, status, provider_ref in rows:
        paid = by_ref.get(reference, [])
        if status in ("settled", "sent") and not paid:
            lost += 1
            notes.append(f"{reference}: {status} in the database, unknown to every bank")
        elif status == "unresolved":
            unresolved_paid += bool(paid)
            notes.append(f"{reference}: unresolved (" + (f"the bank executed it: {paid[0]['id']}" if paid
                                                        else "no bank executed it") + "): for a person to resolve")
        elif paid and status == "dead":
            dead_paid += 1
            lost += 1
            notes.append(f"{reference}: executed by a bank ({paid[0]['id']}) but dead: would be paid twice")
        elif paid and status not in ("settled", "sent", "failed"):
            lost += 1
            notes.append(f"{reference}: executed by a bank ({paid[0]['id']}) but {status} in the database")
        elif paid and provider_ref not in {p["id"] for p in paid} and not any(
                p.get("channel") == "file" and str(provider_ref).endswith("/" + p["reference"]) for p in paid):
            lost += 1
            notes.append(f"{reference}: the database names {provider_ref}, the bank {paid[0]['id']}")
        elif status not in FINAL:
            lost += 1
            notes.append(f"{reference}: still {status}")
    return paid_twice, lost, dead_paid, unresolved_paid, notes


def statement_counts(cluster: Cluster) -> dict[str, int]:
    """Statement files and lines in the database, and how many lines are linked to the payouts they carry."""
    with psycopg.connect(cluster.dsn()) as conn:
        files, failed = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status <> 'parsed') FROM bank_statements_raw").fetchone()
        lines, linked, settled_linked = conn.execute(
            "SELECT count(*), count(l.payout_slice_id), count(*) FILTER (WHERE s.status = 'settled')"
            " FROM bank_statement_lines l LEFT JOIN payout_slices s ON s.id = l.payout_slice_id").fetchone()
        # ecobank-sn and cbao-sn send statements in the demo: those are the settled payouts a statement can confirm.
        settled = conn.execute(
            "SELECT count(*) FROM payout_slices s JOIN treasury_accounts t ON t.id = s.treasury_account_id"
            " WHERE s.status = 'settled' AND t.bank_profile_id IN ('ecobank-sn', 'cbao-sn')").fetchone()[0]
        proven = dict(conn.execute(
            "SELECT from_status, count(*) FROM molamd_audit WHERE action = 'statement_settle'"
            " GROUP BY from_status").fetchall())
    return {"files": files, "failed": failed, "lines": lines, "linked": linked, "settled_linked": settled_linked,
            "settled": settled, "proven": proven}


def outage_lines(outage: dict[str, Any], backup: dict[str, Any]) -> list[str]:
    """The backup bank's line: the outage's payments only if the breaker was seen open throughout."""
    failures: list[str] = []
    if outage.get("seen_open") and outage.get("held"):
        print(f"bank B (backup, its own ledger): {backup['payments']} payments executed, {backup['replays']} replays;"
              f" {outage['backup_during']} of them while the primary's breaker was seen open"
              f" ({outage['samples']} checks over {outage['seconds']:.1f}s, each {PRIMARY}={outage['state']})")
        if outage["backup_during"] <= 0:
            failures.append("the backup bank made no payment while the primary's breaker was open")
    else:
        print(f"bank B (backup, its own ledger): {backup['payments']} payments executed, {backup['replays']} replays;"
              f" no outage measured: {outage.get('error') or 'the breaker was never seen open'}")
        failures.append(f"breaker outage: {outage.get('error') or 'the breaker was never seen open'}")
    return failures


def secret_lines(stats: dict[str, Any], rotated: int | None) -> list[str]:
    """The secrets line: the rotation claimed only if the daemon is seen signing with the new version."""
    failures: list[str] = []
    secrets = ctl("secrets") or []
    schemes = sorted({row["scheme"] for row in secrets if row["path"] != "$.vault.secret_id"})
    rotated_row = next((row for row in secrets if row["reference"] == "vault:secret/molamd/bank-a#hmac"), None)
    running = rotated_row and rotated_row["version"]
    if rotated is not None and running == rotated:
        print(f"secrets: {len(secrets) - 1} references, all from {', '.join(schemes)} (OpenBao), besides the AppRole"
              f" secret_id; bank A's HMAC key rotated mid-run, the daemon now signs with version {running};"
              f" {stats.get('previous_key', 0)} calls signed with the old key while bank A still accepted it,"
              f" {stats.get('auth_failures', 0)} refused")
    else:
        print(f"secrets: {len(secrets) - 1} references; bank A's HMAC key rotation NOT seen applied (Vault version"
              f" {rotated}, the daemon uses {running})")
        failures.append("the HMAC key rotation was not seen applied")
    return failures


def statement_summary(cluster: Cluster) -> list[str]:
    """The statements line of the summary; a failure if a statement settled a slice that was dead (given up as
    not paid while a bank had paid it)."""
    st = statement_counts(cluster)
    print(f"statements: {st['files']} MT940 files ingested over SFTP ({st['failed']} failed), {st['lines']} lines, "
          f"{st['linked']} linked to the payouts they carry; {st['settled_linked']} of {st['settled']} settled "
          f"payouts confirmed by a statement line ({sum(st['proven'].values())} of them settled by it: "
          f"{', '.join(f'{n} from {k}' for k, n in sorted(st['proven'].items())) or 'none'}); "
          f"{st['lines'] - st['linked']} lines unmatched")
    dead = st["proven"].get("dead", 0)
    return [f"{dead} slices a bank executed were dead until its statement came"] if dead else []


def summary(cluster: Cluster, bank_urls: list[str], elapsed: float, outage: dict[str, Any],
            rotated: int | None) -> int:
    """What the run did, each claim from what was observed; exit 1 if any claim does not hold."""
    status, connectors = ctl("status") or {}, ctl("connectors") or []
    counts = slice_counts(cluster)
    paid_twice, lost, dead_paid, unresolved_paid, notes = reconcile(cluster, bank_urls)
    failures: list[str] = []
    bank_url, backup_url, files_url = bank_urls
    with psycopg.connect(cluster.dsn()) as conn:
        dead = conn.execute("SELECT attempts, max_attempts, last_error FROM payout_slices WHERE status = 'dead'"
                            " ORDER BY id LIMIT 5").fetchall()
        calls = conn.execute("SELECT count(*) FROM bank_connector_logs").fetchone()[0]
    metrics = httpx.get("http://127.0.0.1:9464/metrics", timeout=10).text
    opened = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("molamd_circuit_breaker_transitions_total") and 'to_state="open"' in line)
    closed = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("molamd_circuit_breaker_transitions_total") and 'to_state="closed"' in line)
    stats = httpx.get(f"{bank_url}/admin/stats", timeout=10).json()
    backup = httpx.get(f"{backup_url}/admin/stats", timeout=10).json()
    with psycopg.connect(cluster.dsn()) as conn:
        in_doubt = conn.execute("SELECT count(*) FROM payout_slices_in_doubt").fetchone()[0]
        attempts = dict(conn.execute("SELECT coalesce(outcome, 'open'), count(*) FROM payout_slice_attempts"
                                     " GROUP BY 1").fetchall())
        operator = conn.execute("SELECT count(*), count(DISTINCT uid) FROM molamd_audit"
                                " WHERE action LIKE 'command:%'").fetchone()
    total = sum(counts.values())
    print("\n== molamd demo summary", flush=True)
    if not status:
        failures.append("the daemon did not answer `molamctl status`")
    else:
        print(f"daemon: molamd {status['version']} host {status['host_id']}, database up:"
              f" {status['database']['up']}")
    print(f"slices: {total} seeded, " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f"; all final or unresolved in {elapsed:.1f}s ({total / max(elapsed, 1e-6):.0f}/s)")
    print(f"bank A (primary): {stats['payments']} payments executed, {stats['replays']} idempotent replays, "
          f"{stats['faults']} faults injected, {stats['requests']} requests")
    failures += outage_lines(outage, backup)
    print("attempts: " + ", ".join(f"{k} {v}" for k, v in sorted(attempts.items()))
          + f"; in doubt now: {in_doubt}")
    print(f"operator actions audited: {operator[0]} (uids: {operator[1]})")
    print(f"audit: {calls} bank calls in bank_connector_logs")
    print(f"breakers: opened {opened:.0f} times, closed {closed:.0f} times; now "
          + ", ".join(f"{c['name']}={c['breaker']}" for c in connectors if c["breaker"]))
    for attempts, max_attempts, error in dead:
        print(f"dead: after {attempts}/{max_attempts} attempts: {error}")
    print(f"unresolved: {counts.get('unresolved', 0)} (their bank could not say whether it executed them: a person"
          f" resolves each with molamctl payouts resolve; {unresolved_paid} of them the bank did execute)")
    print(f"dead yet executed by a bank: {dead_paid}")
    if dead_paid:
        failures.append(f"{dead_paid} dead slices were executed by a bank (the platform would pay them again)")
    failures += statement_summary(cluster)
    files = file_counts(cluster, files_url)
    print(f"files: {files['files']} pain.001 files signed in the HSM ({files['statuses']}), {files['transactions']}"
          f" transactions; {files['verified']} of {files['files']} verified by xmlsec1 against the certificate;"
          f" bank C took {files['desk']['files']} uploads ({files['desk']['duplicates']} refused as duplicates,"
          f" DU01); {files['reports']} pain.002 reports ({files['flags']})")
    failures += secret_lines(stats, rotated)
    print(f"paid twice: {paid_twice} (over the three banks' ledgers)")
    print(f"lost: {lost}")
    for note in notes[:10]:
        print(f"  {note}")
    if files["files"] == 0 or files["verified"] != files["files"]:
        failures.append(f"payment files: {files['verified']} of {files['files']} verified by xmlsec1")
    if paid_twice or lost:
        failures.append(f"paid twice {paid_twice}, lost {lost}")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def file_counts(cluster: Cluster, files_url: str) -> dict[str, Any]:
    """The payment files in the database, each checked by the xmlsec1 command line, and what bank C saw."""
    certificate = HSM_DIR / f"{FILES_KEY}.pem"
    with psycopg.connect(cluster.dsn()) as conn:
        files = conn.execute("SELECT file_name, content, status, transactions FROM payment_files").fetchall()
        reports = conn.execute("SELECT coalesce(flag, 'applied'), count(*) FROM payment_status_reports"
                               " GROUP BY 1").fetchall()
    verified = 0
    with tempfile.TemporaryDirectory(prefix="molamd-demo-verify-") as tmp:
        for name, content, _, _ in files:
            path = Path(tmp) / name
            path.write_bytes(bytes(content))
            checked = subprocess.run(["xmlsec1", "--verify", "--pubkey-cert-pem", str(certificate), str(path)],
                                     capture_output=True, check=False)
            verified += checked.returncode == 0
    statuses: dict[str, int] = {}
    for _, _, status, _ in files:
        statuses[status] = statuses.get(status, 0) + 1
    return {"files": len(files), "transactions": sum(f[3] for f in files), "verified": verified,
            "statuses": ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) or "none",
            "reports": sum(n for _, n in reports), "flags": ", ".join(f"{k} {v}" for k, v in sorted(reports)),
            "desk": httpx.get(f"{files_url}/admin/files", timeout=10).json()}


OUTAGE_SLICES = 200  # ecobank-sn payouts the platform writes while the primary's breaker is open


def breaker_outage(bank_urls: list[str], cluster: Cluster) -> dict[str, Any]:
    """An operator opens the primary's breaker for a while, as for a bank incident: new work goes to the backup
    bank, slices in doubt at the primary wait for it. Meanwhile the platform writes more ecobank-sn payouts
    (however fast the first ones went, there is new work during the outage). Returns what was observed: whether
    the breaker was seen open and held open throughout, and how many payments the backup made meanwhile."""
    backup = bank_urls[1]
    say(f"operator: molamctl force-open {PRIMARY}")
    try:
        answer = ctl_must("force-open", PRIMARY)
    except DemoFailed as exc:
        say(str(exc))
        return {"backup_during": 0, "seen_open": False, "held": False, "error": str(exc)}
    state = breaker_of(PRIMARY)
    if state != "forced_open":
        error = f"force-open answered {answer}, but molamctl connector {PRIMARY} shows the breaker {state}"
        say(error)
        return {"backup_during": 0, "seen_open": False, "held": False, "error": error}
    say(f"{PRIMARY}'s breaker seen {state}: the backup bank takes new work")
    before = httpx.get(f"{backup}/admin/stats", timeout=10).json()["payments"]
    started = time.monotonic()
    with psycopg.connect(cluster.dsn()) as conn:
        conn.execute(
            "INSERT INTO payout_slices (payout_id, treasury_account_id, amount, currency, rail, beneficiary_name,"
            " beneficiary_account, remittance_info)"
            " SELECT 'outage-' || lpad(n::text, 5, '0'), t.id, (7000 + n * 11)::numeric, 'XOF', 'ach',"
            " 'Beneficiary outage ' || n, 'SN08' || lpad((200000000 + n)::text, 20, '0'), 'Molam payout demo'"
            " FROM generate_series(1, %s) AS n, treasury_accounts t"
            " WHERE t.bank_profile_id = 'ecobank-sn' AND t.label = 'payouts-xof'", (OUTAGE_SLICES,))
    say(f"platform: {OUTAGE_SLICES} more ecobank-sn payouts written during the outage")
    samples, held = 0, True
    while time.monotonic() - started < 3.0:
        time.sleep(0.25)
        state = breaker_of(PRIMARY)
        samples += 1
        if state != "forced_open":  # a restart gives the connector a new breaker: the outage is over early
            held = False
            break
    during = httpx.get(f"{backup}/admin/stats", timeout=10).json()["payments"] - before
    seconds = time.monotonic() - started
    try:
        ctl_must("reset-circuit", PRIMARY)
    except DemoFailed as exc:
        say(str(exc))
        return {"backup_during": during, "seen_open": True, "held": held, "samples": samples, "seconds": seconds,
                "state": state, "error": str(exc)}
    after = breaker_of(PRIMARY)
    say(f"operator: molamctl reset-circuit {PRIMARY} (breaker now {after}); the backup made {during} payments"
        f" while it was seen open")
    error = None if held else f"the breaker did not stay open: seen {state} after {seconds:.1f}s"
    if after in ("open", "forced_open"):
        error = f"reset-circuit answered, but the breaker is still {after}"
    return {"backup_during": during, "seen_open": True, "held": held and error is None, "samples": samples,
            "seconds": seconds, "state": "forced_open", "error": error}


def primary_running(connectors: Any) -> bool:
    return any(c["name"] == PRIMARY and c["state"] == "running" for c in connectors or [])


def secret_version(reference: str) -> int | None:
    """The version of a reference the running daemon uses (`molamctl secrets`)."""
    for row in ctl("secrets") or []:
        if row["reference"] == reference:
            return int(row["version"]) if row["version"] is not None else None
    return None


def prepare(cluster: Cluster, slices: int) -> None:
    cluster.recreate_database("molam")
    say("applying migrations to a fresh demo database")
    subprocess.run([str(BIN / "molamd"), "migrate", "--config", str(CONFIG)], check=True)
    seed = (ROOT / "scripts" / "seed_demo.sql").read_text().replace("__SLICES__", str(int(slices)))
    with psycopg.connect(cluster.dsn()) as conn:
        conn.execute(seed.encode())
    say(f"seeded 3 bank profiles, their XOF accounts and {slices} payout slices")


def watch(daemon: subprocess.Popen[bytes], cluster: Cluster, bank_urls: list[str], until_idle: bool,
          bao: OpenBao) -> int:
    started = time.monotonic()
    mark: tuple[float, int] = (started, 0)
    announced = False
    outage: dict[str, int] | None = None
    rotated: int | None = None
    while True:
        if daemon.poll() is not None:
            say(f"molamd exited with {daemon.returncode}; see {LOG_PATH}")
            return 1
        status, connectors = ctl("status"), ctl("connectors")
        if status:
            now, final, counts = progress(cluster, connectors, mark)
            mark = (now, final)
            done = final == sum(counts.values())
            if rotated is None and primary_progress(cluster) >= 0.1:
                rotated = rotate_bank_a(bao, bank_urls[0])  # while bank A's payouts are in full flow
            rotation_taken = rotated is not None and secret_version("vault:secret/molamd/bank-a#hmac") == rotated
            # The outage once the rotation's connector restarts are over (a restart gives a connector a new
            # breaker, closed, and refuses operator commands while it stops: both would void the outage).
            if outage is None and rotation_taken and primary_progress(cluster) >= 0.25 and primary_running(connectors):
                outage = breaker_outage(bank_urls, cluster)
            st = statement_counts(cluster)
            say(f"statements: {st['files']} files, {st['lines']} lines, {st['linked']} linked")
            reported = st["settled_linked"] == st["settled"]
            if until_idle and done and reported and healthy(status, connectors) and outage is not None \
                    and rotation_taken:
                return summary(cluster, bank_urls, time.monotonic() - started, outage, rotated)
            if done and not announced:
                say("every slice is final; Ctrl-C stops the daemon, the bank and PostgreSQL")
                announced = True
        if until_idle and time.monotonic() - started > IDLE_TIMEOUT:
            say(f"not idle within {IDLE_TIMEOUT:.0f}s")
            summary(cluster, bank_urls, time.monotonic() - started,
                    outage or {"backup_during": 0, "error": "the outage never ran"}, rotated)
            return 1
        time.sleep(1.0 if until_idle else 2.0)


def stop(daemon: subprocess.Popen[bytes] | None, banks: list[subprocess.Popen[str]], cluster: Cluster,
         *sftp: subprocess.Popen[str] | None) -> None:
    if daemon is not None and daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = daemon.wait()
        say(f"molamd stopped (exit {code})")
    for peer in (*banks, *sftp):
        if peer is not None:
            peer.terminate()
            peer.wait(10)
    cluster.stop()
    say("sandbox banks and PostgreSQL stopped")


def run(until_idle: bool, faults: bool, slices: int, prometheus: bool) -> int:
    pg_dir = cluster_dir()
    cluster = Cluster(pg_dir, port=DEMO_PORT)
    say(f"starting PostgreSQL in {pg_dir} on 127.0.0.1:{DEMO_PORT}")
    cluster.start()
    daemon: subprocess.Popen[bytes] | None = None
    banks: list[subprocess.Popen[str]] = []
    sftp: subprocess.Popen[str] | None = None
    files_sftp: subprocess.Popen[str] | None = None
    bao: OpenBao | None = None
    scraper: Prometheus | None = None
    try:
        bao = start_vault()
        say(f"OpenBao dev server at {bao.address}: KV, transit, AppRole {VAULT_ROLE_ID!r} and the molamd policy;"
            f" the AppRole secret_id in {VAULT_SECRET_ID} is the only secret on disk")
        certificate = start_hsm()
        say(f"SoftHSM2 token in {HSM_DIR}: key {FILES_KEY!r} made inside it, self-signed certificate {certificate}")
        prepare(cluster, slices)
        sftp = start_sftp()
        say(f"sandbox SFTP statement drop at 127.0.0.1:{SFTP_PORT} (inbox {SFTP_ROOT / 'outgoing'})")
        bank, bank_url = start_bank(BANK_PORT, faults, "A_")
        banks.append(bank)
        say(f"sandbox bank A (primary) at {bank_url}" + (f" with faults {json.dumps(FAULT_MIX)}" if faults else ""))
        backup, backup_url = start_bank(BACKUP_PORT, False, "B_")
        banks.append(backup)
        say(f"sandbox bank B (backup channel, its own ledger and idempotency store) at {backup_url}")
        files_bank, files_url, files_sftp = start_files_bank(faults, certificate)
        banks.append(files_bank)
        say(f"sandbox bank C (cbao-sn, payment files over SFTP at 127.0.0.1:{FILES_SFTP_PORT}) at {files_url}"
            + (": uploads dropped after the rename, files taken at once, reports late or doubled" if faults else ""))
        say("molamd doctor: is everything the daemon needs here?")
        if subprocess.run([str(BIN / "molamd"), "doctor", "--config", str(CONFIG)], check=False).returncode != 0:
            say("molamd doctor found a problem (above): not starting the daemon")
            return 1
        LOG_PATH.parent.mkdir(parents=True, exist_ok=True)
        say(f"starting molamd (JSON logs in {LOG_PATH.relative_to(ROOT)})")
        with LOG_PATH.open("ab") as log:
            daemon = subprocess.Popen([str(BIN / "molamd"), "run", "--config", str(CONFIG)],
                                      stdout=log, stderr=subprocess.STDOUT)
        say(f"from another shell: .venv/bin/molamctl --socket {control_socket()} status")
        if prometheus:
            shutil.rmtree(PROMETHEUS_DIR, ignore_errors=True)
            scraper = Prometheus(PROMETHEUS_DIR, "127.0.0.1:9464", port=PROMETHEUS_PORT, interval="5s")
            say(f"Prometheus at {scraper.url} scrapes molamd with config/prometheus/molamd.rules.yml: alerts at"
                f" {scraper.url}/alerts; Grafana: import config/grafana/molamd.json with a Prometheus data source"
                f" at {scraper.url}")
        return watch(daemon, cluster, [bank_url, backup_url, files_url], until_idle, bao)
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        if scraper is not None:
            scraper.close()
            say("Prometheus stopped")
        stop(daemon, banks, cluster, sftp, files_sftp)
        if bao is not None:
            bao.stop()  # leases revoked first
            say("OpenBao stopped")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--until-idle", action="store_true",
                        help="exit once every seeded slice is final, with a summary (exit 1 if any paid twice or lost)")
    parser.add_argument("--faults", action="store_true",
                        help="the primary bank injects 20%% 5xx, 5%% resets, 5%% hangs and some 429s")
    parser.add_argument("--slices", type=int, default=3000, help="payout slices to seed (default 3000)")
    parser.add_argument("--prometheus", action="store_true",
                        help=f"also run a real Prometheus on 127.0.0.1:{PROMETHEUS_PORT} scraping molamd with the"
                        " project's alert and recording rules")
    args = parser.parse_args()
    if os.getuid() == 0:
        pwd.getpwnam("postgres")  # the cluster runs as postgres; scripts/setup installs it
    # Ctrl-C and SIGTERM both stop the demo, even when started from a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return run(args.until_idle, args.faults, args.slices, args.prometheus)


if __name__ == "__main__":
    sys.exit(main())
