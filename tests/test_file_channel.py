"""The ISO 20022 file channel end to end: a real daemon batching slices into pain.001 files signed in SoftHSM2,
uploaded over SFTP to the sandbox bank's file desk (XSD, xmlsec1, DU01, a ledger), which answers with pain.002
reports that settle or fail the slices. Faults: a connection dropped after the rename, files taken from the
inbox at once, reports that come twice, and the daemon SIGKILLed mid-run."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import HSM_MODULE, HSM_PIN, free_port
from tests.file_helpers import key_files, self_signed
from tests.payout_helpers import ROOT, Bank, payout_toml, rest_connector, seed, statuses, wait_for
from tests.payout_helpers import env as rest_env

sys.path.insert(0, str(ROOT / "scripts"))
from sandbox_sftp import SandboxSftp

FINAL = ("settled", "failed", "dead")
KEY = "files-key"


def hsm_toml(token: str) -> str:
    return f'\n[hsm]\nmodule = "{HSM_MODULE}"\ntoken = "{token}"\npin = "env:MOLAMD_TEST_PIN"\n'


def file_connector(name: str, sftp: SandboxSftp | None, known_hosts: Path, certificate: Path, *,
                   profile: str = "bank-c", max_transactions: int = 25, scope: str = "", priority: int = 10,
                   version: str = "pain.001.001.09", options: tuple[str, ...] = (), rest_url: str | None = None
                   ) -> str:
    """An iso20022 connector over the sandbox's SFTP server, or (``rest_url``) over its REST API; ``options``
    are more lines of its [connectors.iso20022]."""
    if rest_url is not None:
        transport = (f'[connectors.rest]\nbase_url = "{rest_url}"\nkey_id = "molamd-demo"\n'
                     'hmac_secret = "env:MOLAMD_TEST_HMAC"\n')
        options = (*options, 'transport = "rest"')
    else:
        assert sftp is not None
        transport = (f'[connectors.sftp]\nhost = "127.0.0.1"\nport = {sftp.port}\nusername = "bank"\n'
                     f'password = "env:MOLAMD_TEST_SFTP"\nknown_hosts = "{known_hosts}"\ninbox = "/outbox"\n'
                     'archive = "/outbox/archive"\nerror = "/outbox/error"\npatterns = ["*.xml"]\nstable_for = "0s"\n')
    return textwrap.dedent(f"""
        [[connectors]]
        name = "{name}"
        kind = "iso20022"
        bank_profile = "{profile}"
        priority = {priority}
        idempotency_scope = "{scope}"
        shutdown_grace = "2s"
        [connectors.limits]
        call_timeout = "3s"
        [connectors.cutoffs]
        country = "SN"
        timezone = "Africa/Dakar"
        times = ["10:00", "15:00"]
        [connectors.iso20022]
        version = "{version}"
        key_label = "{KEY}"
        certificate = "{certificate}"
        initiating_party = "Molam SAS"
        debtor_name = "Molam Senegal"
        debtor_town = "Dakar"
        debtor_country = "SN"
        debtor_agent_bic = "CBAOSNDA"
        max_transactions = {max_transactions}
        max_age = "1s"
        cutoff_lead = "1m"
        tick = "200ms"
        upload_retry_max = "1s"
        report_poll_interval = "200ms"
        """) + "".join(f"{line}\n" for line in options) + transport


@pytest.fixture
def hsm_key(token: str, short_tmp: Path) -> Iterator[tuple[str, Path]]:
    """A key made in the session's token by `molamd hsm keygen`, and its self-signed certificate (`hsm cert`)."""
    config = short_tmp / "hsm.toml"
    config.write_text(hsm_toml(token))
    env = {"MOLAMD_TEST_PIN": HSM_PIN, "PATH": "/usr/bin:/bin", "SOFTHSM2_CONF": _softhsm_conf()}

    def hsm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "molamd.cli", "hsm", *args, "--config", str(config)],
                              capture_output=True, text=True, env=env, cwd=ROOT, check=False)

    listed = hsm("list")
    if KEY not in listed.stdout:
        made = hsm("keygen", "--label", KEY, "--kind", "rsa-2048")
        assert made.returncode == 0, made.stderr
    certificate = short_tmp / "molam-files.pem"
    out = hsm("cert", "--label", KEY, "--cn", "Molam SAS files", "--country", "SN", "--out", str(certificate))
    assert out.returncode == 0, out.stderr
    assert KEY in hsm("list").stdout
    yield token, certificate


def _softhsm_conf() -> str:
    import os

    return os.environ["SOFTHSM2_CONF"]


@pytest.fixture
def file_bank(short_tmp: Path, hsm_key: tuple[str, Path]) -> Iterator[tuple[Bank, SandboxSftp, Path]]:
    root = short_tmp / "bank-c"
    (root / "inbox").mkdir(parents=True)
    bank = Bank("--files-root", str(root), "--files-certificate", str(hsm_key[1]), "--report-delay", "0.5",
                "--reject-rate", "0.1")
    sftp = SandboxSftp(root, state=short_tmp / "sftp-state", password="sftp-secret").start()
    sftp.taken = root / "taken"
    yield bank, sftp, root
    sftp.stop()
    bank.close()


def files_env(token: str) -> dict[str, str]:
    return {"MOLAMD_TEST_PIN": HSM_PIN, "MOLAMD_TEST_SFTP": "sftp-secret", "SOFTHSM2_CONF": _softhsm_conf()}


def test_slices_go_out_in_signed_files_and_reports_bring_them_back(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, hsm_key: tuple[str, Path],
    file_bank: tuple[Bank, SandboxSftp, Path],
) -> None:
    token, certificate = hsm_key
    bank, sftp, _ = file_bank
    known_hosts = sftp.known_hosts(short_tmp / "known_hosts")
    port = free_port()
    config = (payout_toml(short_tmp, migrated_dsn, file_connector("bank-c-files", sftp, known_hosts, certificate),
                          metrics_port=port) + hsm_toml(token))
    sftp.drop_after_rename = 1  # the first upload's rename is done, and its answer never comes
    bank.files_faults(duplicate_report_rate=0.3)
    ids = seed_files(migrated_dsn, 120)
    spool = short_tmp / "state" / "spool"  # systemd's StateDirectory=, as the unit hands it over
    d = daemon_factory(config, env={**files_env(token), "STATE_DIRECTORY": str(short_tmp / "state")})
    wait_for(lambda: _files(migrated_dsn) >= 2, 30, "two files recorded", lambda: _errors(migrated_dsn))
    d.signal(signal.SIGKILL)  # mid-run: files recorded, some uploaded, some reported
    d.proc.wait()
    # what a report download cut short by the kill leaves: bank data, in the state directory's spool
    left = spool / f"molamd-report-bank-c-files-{d.proc.pid}-k1ll3d"
    left.write_bytes(b"<Document>half a report</Document>")
    sftp.take_at_once = True  # from now on the bank takes each file the moment it is renamed into place
    d.start()
    wait_for(lambda: sum(statuses(migrated_dsn, ids).get(s, 0) for s in FINAL) == len(ids), 60,
             "every slice final", lambda: (statuses(migrated_dsn, ids), bank.files()))
    done = statuses(migrated_dsn, ids)
    assert done.get("dead", 0) == 0 and done.get("failed", 0) > 0 and done.get("settled", 0) > 0, done
    assert not left.exists() and spool.stat().st_mode & 0o777 == 0o700, "the killed run's spool cleared at start"

    ledger = [p for p in bank.ledger() if p.get("channel") == "file"]
    keys = [p["idempotency_key"] for p in ledger]
    assert len(keys) == len(set(keys)) == len(ids), "every slice paid exactly once by the bank"
    with psycopg.connect(migrated_dsn) as conn:
        files = conn.execute("SELECT id, msg_id, file_name, content, status, transactions FROM payment_files"
                             " ORDER BY id").fetchall()
        in_files = conn.execute("SELECT count(*), count(DISTINCT payout_slice_id) FROM payment_file_slices"
                                ).fetchone()
        slices = conn.execute("SELECT p.id, p.status, p.last_error, f.tx_status FROM payout_slices p"
                              " JOIN payment_file_slices f ON f.payout_slice_id = p.id WHERE p.id = ANY(%s)",
                              (ids,)).fetchall()
        flagged = conn.execute("SELECT flag, count(*) FROM payment_status_reports GROUP BY flag").fetchall()
        uploads = conn.execute("SELECT count(*) FROM bank_connector_logs WHERE operation = 'upload'").fetchone()
    assert in_files == (len(ids), len(ids)), "each slice in exactly one file"
    assert all(f[5] <= 25 for f in files) and {f[4] for f in files} == {"completed"}, [f[4] for f in files]
    assert set(bank.files()["verified_ids"]) >= {f[1] for f in files}, "the bank verified every file's signature"
    for slice_id, status, error, tx_status in slices:
        assert (status, tx_status) in (("settled", "ACSC"), ("failed", "RJCT")), slice_id
        if status == "failed":
            assert error is not None and "AC04" in error
    assert uploads[0] >= len(files)
    flags = dict(flagged)
    assert set(flags) <= {None, "duplicate_submission"}, flags
    verify_with_xmlsec1(files, certificate, short_tmp)
    check_file_metrics(port, len(files))
    listed = d.ctl_json("files", "list")
    assert {f["msg_id"] for f in listed["files"]} == {f[1] for f in files}
    shown = d.ctl_json("files", "show", str(files[0][0]))
    assert len(shown["slices"]) == files[0][5] and shown["reports"]
    resubmitted = d.ctl("files", "resubmit", str(files[0][0]))
    assert resubmitted.returncode != 0 and "completed" in resubmitted.stderr + resubmitted.stdout


def seed_files(dsn: str, count: int) -> list[int]:
    """Slices for bank-c; their beneficiaries hold local account numbers (not IBAN-registered), one in ten an
    IBAN, and a name in another script."""
    ids = seed(dsn, count, profile="bank-c")
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE payout_slices SET beneficiary_account = CASE WHEN id %% 10 = 0"
                     " THEN 'SN08SN0100152000048500003035' ELSE '0412' || lpad(id::text, 8, '0') END,"
                     " beneficiary_name = CASE WHEN id %% 7 = 0 THEN 'Aïssatou Ndiàye' ELSE beneficiary_name END"
                     " WHERE id = ANY(%s)", (ids,))
    return ids


def verify_with_xmlsec1(files: list[Any], certificate: Path, directory: Path) -> None:
    """xmlsec1 itself, against the certificate, for every recorded file; a tampered copy refused."""
    for _, msg_id, name, content, _, _ in files:  # xmlsec1 itself, against the certificate, for every file
        path = directory / name
        path.write_bytes(bytes(content))
        checked = subprocess.run(["xmlsec1", "--verify", "--pubkey-cert-pem", str(certificate), str(path)],
                                 capture_output=True, text=True, check=False)
        assert checked.returncode == 0, (msg_id, checked.stderr)
        tampered = bytes(content).replace(b"<InstdAmt Ccy=\"XOF\">1", b"<InstdAmt Ccy=\"XOF\">9", 1)
        path.write_bytes(tampered)
        assert subprocess.run(["xmlsec1", "--verify", "--pubkey-cert-pem", str(certificate), str(path)],
                              capture_output=True, check=False).returncode != 0


def check_file_metrics(port: int, files: int, slices: int | None = None) -> None:
    """The file metrics on a live scrape. With ``slices``, the counters of a daemon that ran the whole time."""
    label = '{connector="bank-c-files"}'
    wait_for(lambda: _metrics(port).get('molamd_payment_files{connector="bank-c-files",status="completed"}')
             == files, 10, "the files gauge")
    samples = _metrics(port)
    assert samples[f"molamd_payment_file_slices_waiting{label}"] == 0
    if slices is None:
        return
    assert samples[f"molamd_payment_files_built_total{label}"] == files
    assert samples[f"molamd_payment_file_transactions_total{label}"] == slices
    assert samples[f"molamd_payment_file_build_seconds_count{label}"] == files
    assert samples['molamd_payment_file_uploads_total{connector="bank-c-files",outcome="ok"}'] == files
    assert samples[f"molamd_payment_file_first_report_seconds_count{label}"] == files
    assert samples[f"molamd_payment_file_final_report_seconds_count{label}"] == files
    final = sum(v for k, v in samples.items() if k.startswith("molamd_payment_file_slices_final_total"))
    assert final == slices
    by_status = sum(v for k, v in samples.items() if k.startswith("molamd_payment_file_transactions_by_status{"))
    assert by_status == slices


def _metrics(port: int) -> dict[str, float]:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def _errors(dsn: str) -> list[tuple[str, str | None]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT status, min(last_error) FROM payout_slices GROUP BY 1").fetchall()


def _given_back(dsn: str, ids: list[int]) -> int:
    """How many of ``ids`` the dispatcher has claimed and let go unrouted, or routed: seeding leaves
    next_attempt_at NULL, a claim keeps it, and any outcome but a final one sets it."""
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM payout_slices WHERE id = ANY(%s)"
                                " AND next_attempt_at IS NOT NULL", (ids,)).fetchone()[0])


def _files(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM payment_files").fetchone()[0])


@pytest.mark.parametrize(("broken", "says"), [
    ("key", "no-such-key"),
    ("pin", "login refused"),
    ("module", "cannot load it"),
    ("certificate", "molam-other.pem"),
])
def test_a_file_channel_whose_hsm_or_key_is_broken_does_not_start_and_sends_nothing(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, hsm_key: tuple[str, Path],
    file_bank: tuple[Bank, SandboxSftp, Path], broken: str, says: str,
) -> None:
    token, certificate = hsm_key
    bank, sftp, root = file_bank
    known_hosts = sftp.known_hosts(short_tmp / "known_hosts")
    # A REST connector of another bank profile keeps the dispatcher claiming, so that it is seen to pass over
    # bank-c's slices rather than given a second in which it might not have looked.
    connectors = (file_connector("bank-c-files", sftp, known_hosts, certificate)
                  + rest_connector("other", bank.url, profile="bank-o"))
    config = payout_toml(short_tmp, migrated_dsn, connectors) + hsm_toml(token)
    env = {**files_env(token), **rest_env()}
    if broken == "key":
        config = config.replace(f'key_label = "{KEY}"', 'key_label = "no-such-key"')
    elif broken == "pin":
        env["MOLAMD_TEST_PIN"] = "0000"
    elif broken == "module":
        config = config.replace(HSM_MODULE, "/usr/lib/no-such-pkcs11.so")
    else:  # a certificate of another key: the HSM's signatures do not verify with it
        other = short_tmp / "molam-other.pem"
        other.write_bytes(self_signed("not our key")[1])
        config = config.replace(f'certificate = "{certificate}"', f'certificate = "{other}"')
    ids = seed_files(migrated_dsn, 5)
    d = daemon_factory(config, env=env)
    wait_for(lambda: says in d.logs(), 20, f"the reason ({says}) in the log", lambda: d.logs()[-3000:])
    wait_for(lambda: _given_back(migrated_dsn, ids) == len(ids), 15, "the dispatcher passing over each slice",
             lambda: statuses(migrated_dsn, ids))
    # 'claimed' too: it claims them again each release_delay (1 s) and gives them back at once
    assert set(statuses(migrated_dsn, ids)) <= {"pending", "claimed"}, "nothing routed to a connector not running"
    assert _files(migrated_dsn) == 0 and not list((root / "inbox").iterdir())
    state = {c["name"]: c for c in d.ctl_json("connectors")}["bank-c-files"]
    assert state["state"] != "running", state
    assert HSM_PIN not in d.logs()


def test_a_payout_in_doubt_on_the_rest_channel_never_goes_into_a_file(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, hsm_key: tuple[str, Path],
    file_bank: tuple[Bank, SandboxSftp, Path],
) -> None:
    """One bank, two channels with their own idempotency stores: its REST API (primary) and its file desk
    (backup). The API hangs: what it may have received stays with it; only what it provably never got goes
    into files. The bank's one ledger would show a payment made by both channels."""
    token, certificate = hsm_key
    bank, sftp, _ = file_bank
    known_hosts = sftp.known_hosts(short_tmp / "known_hosts")
    connectors = (rest_connector("bank-c-api", bank.url, profile="bank-c", priority=10, call_timeout="300ms",
                                 scope="bank-c-api")
                  + file_connector("bank-c-files", sftp, known_hosts, certificate, priority=20))
    config = payout_toml(short_tmp, migrated_dsn, connectors, lease="8s") + hsm_toml(token)
    bank.faults(hang_rate=0.6, error_rate=0.2)
    ids = seed_files(migrated_dsn, 150)
    env = {**files_env(token), **rest_env()}
    d = daemon_factory(config, env=env)
    wait_for(lambda: statuses(migrated_dsn, ids).get("pending", 0) < 100, 30, "the API tried", lambda: statuses(
        migrated_dsn, ids))
    assert d.ctl_json("force-open", "bank-c-api")["breaker"] == "forced_open"  # the bank's API is down
    during = seed_files(migrated_dsn, 60)
    ids += during
    wait_for(lambda: _files(migrated_dsn) >= 1, 30, "the backup's first file", lambda: _errors(migrated_dsn))
    d.ctl_json("reset-circuit", "bank-c-api")
    bank.faults(hang_rate=0.0, error_rate=0.0)
    wait_for(lambda: sum(statuses(migrated_dsn, ids).get(s, 0) for s in FINAL) == len(ids), 90,
             "every slice final", lambda: statuses(migrated_dsn, ids))
    by_key: dict[str, list[str]] = {}
    for payment in bank.ledger():
        by_key.setdefault(payment["idempotency_key"], []).append(payment.get("channel", "rest"))
    twice = {k: v for k, v in by_key.items() if len(v) > 1}
    assert twice == {}, f"paid through both channels: {list(twice.items())[:5]}"
    with psycopg.connect(migrated_dsn) as conn:
        crossed = conn.execute(
            "SELECT f.payout_slice_id FROM payment_file_slices f JOIN payout_slice_attempts a"
            " ON a.payout_slice_id = f.payout_slice_id WHERE a.idempotency_scope = 'bank-c-api'"
            " AND a.outcome NOT IN ('not_sent', 'refused')").fetchall()
        channels = conn.execute("SELECT count(*) FILTER (WHERE payment_file_id IS NOT NULL), count(*)"
                                " FROM payout_slices WHERE id = ANY(%s)", (ids,)).fetchone()
        doubted = conn.execute("SELECT count(DISTINCT payout_slice_id) FROM payout_slice_attempts"
                               " WHERE idempotency_scope = 'bank-c-api' AND outcome = 'in_doubt'").fetchone()[0]
    assert doubted > 0, "the API left some slices in doubt: the rule was put to the test"
    assert crossed == [], "a slice the API may have received went into a file"
    assert 0 < channels[0] < channels[1], channels
    assert {"rest", "file"} <= {c for v in by_key.values() for c in v}
    assert d.ctl("status").returncode == 0


@pytest.mark.parametrize("version", ["pain.001.001.09", "pain.001.001.03"])
def test_files_over_the_banks_rest_api_with_signed_reports(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, hsm_key: tuple[str, Path], version: str,
) -> None:
    """transport = "rest": the same signed bytes POSTed with the MsgId as idempotency key (.09 enveloped, .03
    with its detached signature first), reports read back from GET /files/reports, each signed by the bank and
    verified against its pinned certificate, and acknowledged."""
    token, certificate = hsm_key
    root = short_tmp / "bank-c"
    (root / "inbox").mkdir(parents=True)
    report_key, report_cert = key_files(short_tmp, "bank-c-reports")
    bank = Bank("--files-root", str(root), "--files-certificate", str(certificate), "--report-delay", "0.3",
                "--reject-rate", "0.1", "--report-key", str(report_key))
    try:
        section = file_connector("bank-c-files", None, short_tmp / "unused", certificate, version=version,
                                 rest_url=bank.url, options=(f'bank_certificate = "{report_cert}"',
                                                             "reports_signed = true"))
        port = free_port()
        config = payout_toml(short_tmp, migrated_dsn, section, metrics_port=port) + hsm_toml(token)
        ids = seed_files(migrated_dsn, 60)
        daemon_factory(config, env={**files_env(token), **rest_env()})
        wait_for(lambda: sum(statuses(migrated_dsn, ids).get(s, 0) for s in FINAL) == len(ids), 60,
                 "every slice final", lambda: (statuses(migrated_dsn, ids), bank.files()))
        keys = [p["idempotency_key"] for p in bank.ledger() if p.get("channel") == "file"]
        assert sorted(keys) == sorted(f"molam-slice-{i}" for i in ids)
        assert not list((root / "outbox").glob("*.xml")), "every report acknowledged (moved to archive by the bank)"
        with psycopg.connect(migrated_dsn) as conn:
            files = conn.execute("SELECT msg_id, status, signature_name FROM payment_files").fetchall()
            calls = conn.execute("SELECT operation, count(*) FROM bank_connector_logs GROUP BY 1").fetchall()
            signatures = conn.execute("SELECT signature, flag, count(*) FROM payment_status_reports GROUP BY 1, 2"
                                      ).fetchall()
        assert {status for _, status, _ in files} == {"completed"} and len(files) >= 2
        assert {name is not None for _, _, name in files} == {version.endswith("03")}
        assert dict(calls).get("upload") == len(files)
        assert set(bank.files()["verified_ids"]) == {m for m, _, _ in files}
        assert [(sig, flag) for sig, flag, _ in signatures] == [("verified", None)], signatures
        check_file_metrics(port, len(files), len(ids))
    finally:
        bank.close()


def test_a_report_that_never_comes_leaves_slices_sent_and_a_resubmit_pays_nothing_twice(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, hsm_key: tuple[str, Path],
    file_bank: tuple[Bank, SandboxSftp, Path],
) -> None:
    token, certificate = hsm_key
    bank, sftp, root = file_bank
    known_hosts = sftp.known_hosts(short_tmp / "known_hosts")
    config = (payout_toml(short_tmp, migrated_dsn, file_connector("bank-c-files", sftp, known_hosts, certificate))
              + hsm_toml(token))
    bank.files_faults(report_loss_rate=1.0)  # the bank acknowledges (ACTC) and never reports the outcome
    ids = seed_files(migrated_dsn, 20)
    d = daemon_factory(config, env=files_env(token))

    def accepted() -> list[tuple[int, str]]:
        with psycopg.connect(migrated_dsn) as conn:
            return conn.execute("SELECT id, status FROM payment_files ORDER BY id").fetchall()

    wait_for(lambda: [s for _, s in accepted()] == ["accepted"], 30, "the file acknowledged", accepted)
    _report_passes(root, 2)
    assert statuses(migrated_dsn, ids) == {"sent": 20}, "no outcome: the slices stay in doubt, sent"
    [(file_id, _)] = accepted()
    shown = d.ctl_json("files", "show", str(file_id))
    assert shown["status"] == "accepted" and {s["tx_status"] for s in shown["slices"]} == {"ACTC"}
    resubmitted = d.ctl_json("files", "resubmit", str(file_id))
    assert resubmitted == {"id": file_id, "msg_id": shown["msg_id"], "was": "accepted", "status": "recorded",
                           "reopened": []}
    wait_for(lambda: bank.files()["duplicates"] == 1, 30, "the bank refusing the duplicate", bank.files)

    def flags() -> list[str | None]:
        with psycopg.connect(migrated_dsn) as conn:
            return [r[0] for r in conn.execute("SELECT flag FROM payment_status_reports ORDER BY id")]

    wait_for(lambda: "duplicate_submission" in flags(), 30, "the DU01 report stored and flagged", flags)
    assert statuses(migrated_dsn, ids) == {"sent": 20}, "a DU01 refusal of a re-upload fails nothing"
    keys = [p["idempotency_key"] for p in bank.ledger() if p.get("channel") == "file"]
    assert len(keys) == len(set(keys)) == 20, "executed once: the bank refused the second upload"
    with psycopg.connect(migrated_dsn) as conn:
        [du01] = conn.execute("SELECT id FROM payment_status_reports WHERE flag = 'duplicate_submission'").fetchone()
    reapplied = d.ctl_json("files", "reapply", str(du01))  # over the control socket, as an operator
    assert (reapplied["reapplied_from"], reapplied["flag"], reapplied["applied"]) == (
        du01, "duplicate_submission", 0), reapplied
    missing = d.ctl("files", "reapply", "999999")
    assert missing.returncode == 1 and "not_found" in missing.stderr + missing.stdout
    with psycopg.connect(migrated_dsn) as conn:
        audited = conn.execute("SELECT action, target, ok FROM molamd_audit WHERE action LIKE 'command:files%'"
                               " ORDER BY id").fetchall()
        again = conn.execute("SELECT upload_attempts, msg_id FROM payment_files WHERE id = %s", (file_id,)).fetchone()
    assert audited == [("command:files-resubmit", str(file_id), True), ("command:files-reapply", str(du01), True),
                       ("command:files-reapply", "999999", False)]
    assert again == (2, shown["msg_id"]), "uploaded twice, the same MsgId"


def _report_passes(root: Path, passes: int) -> None:
    """Wait until the daemon has looked at the report drop ``passes`` more times: each time, a copy of a report
    it already took (the ACTC) is put back under a new name and waited for until it is gone. A known report is
    not stored again, only moved to archive/, so nothing else changes."""
    archive = root / "outbox" / "archive"
    wait_for(lambda: any(archive.glob("*.xml")), 10, "the acknowledgement's report archived")
    taken = sorted(archive.glob("*.xml"))[0]
    for n in range(passes):
        again = root / "outbox" / f"again-{n}-{taken.name}"
        staged = root / f".again-{n}"  # outside the drop, then renamed in: never half a file in it
        staged.write_bytes(taken.read_bytes())
        staged.rename(again)
        wait_for(lambda path=again: not path.exists(), 15, f"report pass {n + 1} of {passes} taking {again.name}")
        assert (archive / again.name).exists(), "moved to archive/, as a known report is"
