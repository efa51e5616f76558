"""Benchmark: payment files. Prints figures; not a test.

1. Build + validate + sign a 10,000-transaction pain.001.001.09 (ours, signed in SoftHSM2) beside sepaxml building
   and validating the same 10,000 transactions, each in a process of its own: time and peak RSS (VmHWM).
   Target: ours (with signing) at least 2x faster than sepaxml's build + validate; peak RSS <= 200 MB.
2. HSM signatures per second through the Signer (RSA-2048 and P-256) beside python-pkcs11 called directly, in the
   same run. Target: >= 0.9 of direct.
3. End to end through a real daemon (PostgreSQL, SoftHSM2, the sandbox SFTP server): 1,000 slices written, claimed,
   batched into one pain.001.001.09 file, signed, recorded and uploaded; from the first claim to the upload's
   record, per file, p50 and p95 over ``--files`` files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "8642"
IBAN = "DE89370400440532013000"
CREDITOR_IBAN = "NL91ABNA0417164300"  # a valid one: schwifty checks the digits


def peak_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def rows(count: int) -> list[tuple[int, str, int]]:
    return [(i, f"Beneficiary {i} Ndiaye", 1000 + i) for i in range(1, count + 1)]  # amounts in cents


def child_ours(count: int) -> dict[str, float]:
    from connectors.iso20022 import (
        RSA_SHA256,
        Account,
        Pain001Version,
        Party,
        PaymentBatch,
        PaymentFile,
        PostalAddress,
        Transfer,
        build_pain001,
        sign_enveloped,
        verify_enveloped,
    )
    from molamd.hsm import Signer

    signer = Signer(MODULE, "bench", PIN)
    signer.open()
    started = time.perf_counter()
    transfers = tuple(
        Transfer(slice_id=i, end_to_end_id=f"molam-slice-{i}", amount=Decimal(cents).scaleb(-2),
                 creditor=Party(name=name), creditor_account=Account(iban=CREDITOR_IBAN), creditor_agent_bic="ABNANL2A")
        for i, name, cents in rows(count))
    f = PaymentFile(file_id=1, created_at=dt.datetime(2026, 12, 2, 9, 0), initiating_party="Molam", batches=(
        PaymentBatch(debtor=Party(name="Molam", address=PostalAddress(town="Dakar", country="SN")),
                     debtor_account=Account(iban=IBAN), debtor_agent_bic="COBADEFF", currency="EUR",
                     execution_date=dt.date(2026, 12, 3), transfers=transfers),))
    data = build_pain001(f, Pain001Version.V09)
    built = time.perf_counter()
    signed = sign_enveloped(data, RSA_SHA256, lambda d: signer.sign("rsa", d))
    done = time.perf_counter()
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

    pem = load_der_public_key(signer.public_key("rsa")).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    verify_enveloped(signed, pem)
    return {"build_validate_s": built - started, "sign_s": done - built, "total_s": done - started,
            "bytes": len(signed), "peak_mb": peak_mb()}


def child_sepaxml(count: int) -> dict[str, float]:
    from sepaxml import SepaTransfer

    started = time.perf_counter()
    transfer = SepaTransfer({"name": "Molam", "IBAN": IBAN, "BIC": "COBADEFF", "batch": True, "currency": "EUR"},
                            schema="pain.001.001.09", clean=True)
    for i, name, cents in rows(count):
        transfer.add_payment({"name": name, "IBAN": CREDITOR_IBAN, "BIC": "ABNANL2A", "amount": cents,
                              "execution_date": dt.date(2026, 12, 3), "description": f"payout {i}",
                              "endtoend_id": f"molam-slice-{i}"})
    data = transfer.export(validate=True)
    done = time.perf_counter()
    return {"total_s": done - started, "bytes": len(data), "peak_mb": peak_mb()}


def child_signatures(seconds: float) -> dict[str, float]:
    import pkcs11
    from pkcs11 import Attribute, Mechanism, ObjectClass

    from molamd.hsm import Signer

    signer = Signer(MODULE, "bench", PIN)
    signer.open()
    session = signer._session  # the same logged-in session, to call python-pkcs11 directly beside it
    out: dict[str, float] = {}
    message = b"<SignedInfo>" + b"x" * 700 + b"</SignedInfo>"
    for label in ("rsa", "ec"):
        [key] = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}))

        def direct(key: pkcs11.PrivateKey = key, label: str = label) -> None:
            if label == "rsa":
                key.sign(message, mechanism=Mechanism.SHA256_RSA_PKCS)
            else:
                key.sign(hashlib.sha256(message).digest(), mechanism=Mechanism.ECDSA)

        for name, fn in (("direct", direct), ("signer", lambda label=label: signer.sign(label, message))):
            fn()
            n, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                fn()
                n += 1
            out[f"{label}_{name}_per_s"] = n / (time.perf_counter() - started)
    return out


def token(base: Path) -> dict[str, str]:
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", PIN, "--so-pin", "1357"],
                   check=True, capture_output=True, env=env)
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from molamd.hsm import Signer, KeyKind;"
            f" s = Signer({MODULE!r}, 'bench', {PIN!r}); s.open(); s.keygen('rsa', KeyKind.RSA_2048);"
            " s.keygen('ec', KeyKind.EC_P256)")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return env


def run_child(env: dict[str, str], *args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True,
                         env=env)
    result: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return result


def end_to_end(env: dict[str, str], base: Path, files: int, per_file: int) -> dict[str, float]:
    """Slices claimed -> signed file uploaded, through `molamd run`, one file of ``per_file`` at a time."""
    import psycopg

    sys.path.insert(0, str(ROOT / "scripts"))
    from pgcluster import scratch_cluster
    from sandbox_sftp import SandboxSftp

    bin_dir = Path(sys.executable).parent
    hsm_config = base / "hsm.toml"
    hsm_config.write_text(f'[hsm]\nmodule = "{MODULE}"\ntoken = "bench"\npin = "env:MOLAMD_BENCH_PIN"\n')
    env = {**env, "MOLAMD_BENCH_PIN": PIN, "MOLAMD_BENCH_SFTP": "bench-sftp"}
    certificate = base / "rsa.pem"
    subprocess.run([str(bin_dir / "molamd"), "hsm", "cert", "--label", "rsa", "--cn", "bench", "--out",
                    str(certificate), "--config", str(hsm_config)], check=True, env=env, capture_output=True)
    root = base / "bank"
    for d in ("inbox", "outbox"):
        (root / d).mkdir(parents=True)
    sftp = SandboxSftp(root, state=base / "sftp-state", password="bench-sftp").start()
    known_hosts = sftp.known_hosts(base / "known_hosts")
    latencies: list[float] = []
    parts: list[tuple[float, float, float]] = []
    with scratch_cluster("mdf-") as (work, cluster):
        subprocess.run([str(bin_dir / "molamd"), "migrate", "--dsn", cluster.dsn()], check=True, capture_output=True)
        config = work / "molamd.toml"
        config.write_text(hsm_config.read_text() + f"""
[daemon]
host_id = "bench"
[control]
socket = "{work}/control.sock"
[metrics]
enabled = false
[logging]
level = "warning"
[database]
dsn = "{cluster.dsn()}"
[workers.status_follower]
enabled = false
[workers.dispatcher]
idle_poll = "50ms"
[[connectors]]
name = "bench-files"
kind = "iso20022"
bank_profile = "bench"
[connectors.limits]
call_timeout = "30s"
[connectors.iso20022]
key_label = "rsa"
certificate = "{certificate}"
initiating_party = "Molam"
debtor_name = "Molam"
debtor_town = "Dakar"
debtor_country = "SN"
max_transactions = {per_file}
max_age = "1h"
cutoff_lead = "1ms"
tick = "100ms"
[connectors.cutoffs]
country = "SN"
timezone = "Africa/Dakar"
times = ["00:00"]
[connectors.sftp]
host = "127.0.0.1"
port = {sftp.port}
username = "bank"
password = "env:MOLAMD_BENCH_SFTP"
known_hosts = "{known_hosts}"
inbox = "/outbox"
""")
        with (work / "daemon.log").open("wb") as log:
            daemon = subprocess.Popen([str(bin_dir / "molamd"), "run", "--config", str(config)], stdout=log,
                                      stderr=subprocess.STDOUT, env=env)
        try:
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                conn.execute("INSERT INTO bank_profiles (id, name, country) VALUES ('bench', 'Bench', 'SN')")
                account = conn.execute("INSERT INTO treasury_accounts (bank_profile_id, label, account_number,"
                                       " currency) VALUES ('bench', 'main', '0411-1', 'XOF') RETURNING id"
                                       ).fetchone()[0]
                deadline = time.monotonic() + 60
                while not (work / "control.sock").exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(2.0)  # the file channel's probe signature
                for n in range(files):
                    conn.execute(
                        "INSERT INTO payout_slices (payout_id, treasury_account_id, amount, currency, rail,"
                        " beneficiary_name, beneficiary_account) SELECT %s || '-' || i, %s, 1000 + i, 'XOF', 'ach',"
                        " 'Beneficiaire ' || i, '0412' || lpad(i::text, 10, '0') FROM generate_series(1, %s) i",
                        (f"f{n}", account, per_file))
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline:
                        row = conn.execute("SELECT count(*) FROM payment_files WHERE status = 'uploaded'").fetchone()
                        if row[0] > n:
                            break
                        time.sleep(0.02)
                    else:
                        raise SystemExit(f"bench: file {n + 1} not uploaded within 120 s; see {work}/daemon.log")
                    first, batched, recorded, up = conn.execute(
                        "SELECT min(a.started_at), max(p.batched_at), f.created_at, f.uploaded_at"
                        " FROM payment_files f JOIN payment_file_slices s ON s.payment_file_id = f.id"
                        " JOIN payout_slice_attempts a ON a.payout_slice_id = s.payout_slice_id"
                        " JOIN payout_slices p ON p.id = s.payout_slice_id"
                        " WHERE f.id = (SELECT max(id) FROM payment_files) GROUP BY f.id").fetchone()
                    latencies.append((up - first).total_seconds())
                    parts.append(((batched - first).total_seconds(), (recorded - batched).total_seconds(),
                                  (up - recorded).total_seconds()))
        finally:
            daemon.send_signal(15)
            daemon.wait(30)
            sftp.stop()
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"files": files, "p50_s": ordered[len(ordered) // 2], "p95_s": p95, "max_s": ordered[-1],
            "claim_to_batched_s": sum(p[0] for p in parts) / len(parts),
            "batched_to_recorded_s": sum(p[1] for p in parts) / len(parts),
            "recorded_to_uploaded_s": sum(p[2] for p in parts) / len(parts)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=3.0, help="per signature rate measurement")
    parser.add_argument("--files", type=int, default=10, help="end to end: files of --per-file slices")
    parser.add_argument("--per-file", type=int, default=1000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what = args.child[0]
        value = float(args.child[1])
        result = {"ours": child_ours, "sepaxml": child_sepaxml}[what](int(value)) if what != "signatures" \
            else child_signatures(value)
        print(json.dumps(result))
        return 0
    base = Path(tempfile.mkdtemp(prefix="md-bench-files-"))
    try:
        env = token(base)
        ours = run_child(env, "ours", str(args.transactions))
        theirs = run_child(env, "sepaxml", str(args.transactions))
        rates = run_child(env, "signatures", str(args.seconds))
        e2e = end_to_end(env, base, args.files, args.per_file)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    n = args.transactions
    print(f"molamd file benchmark: {n} transactions, {os.cpu_count()} cores")
    print(f"ours, pain.001.001.09 build + XSD validate + sign in SoftHSM (RSA-2048): {ours['total_s']:.2f} s"
          f" (build+validate {ours['build_validate_s']:.2f} s, sign {ours['sign_s']:.2f} s),"
          f" {ours['bytes'] / 1e6:.1f} MB, peak RSS {ours['peak_mb']:.0f} MB (target <= 200 MB)")
    print(f"sepaxml, build + validate (xmlschema): {theirs['total_s']:.2f} s, {theirs['bytes'] / 1e6:.1f} MB,"
          f" peak RSS {theirs['peak_mb']:.0f} MB")
    speedup = theirs["total_s"] / ours["total_s"]
    print(f"ours with signing vs sepaxml without: {speedup:.1f}x faster (target >= 2x)")
    for kind in ("rsa", "ec"):
        direct, through = rates[f"{kind}_direct_per_s"], rates[f"{kind}_signer_per_s"]
        print(f"HSM signatures/s, {'RSA-2048' if kind == 'rsa' else 'P-256'}: Signer {through:.0f}, python-pkcs11"
              f" direct {direct:.0f}: {through / direct:.2f} of direct (target >= 0.9)")
    print(f"end to end through molamd, {e2e['files']:.0f} files of {args.per_file} transactions: first claim to"
          f" uploaded p50 {e2e['p50_s']:.2f} s, p95 {e2e['p95_s']:.2f} s, max {e2e['max_s']:.2f} s (claim to batched"
          f" {e2e['claim_to_batched_s']:.2f} s, batched to the file's transaction {e2e['batched_to_recorded_s']:.2f} s,"
          f" build, sign, record and upload {e2e['recorded_to_uploaded_s']:.2f} s, on average)")
    print(json.dumps({"e2e_p95_s": round(e2e["p95_s"], 3), "ours_s": round(ours["total_s"], 3),
                      "sepaxml_s": round(theirs["total_s"], 3),
                      "speedup": round(speedup, 2), "ours_peak_mb": round(ours["peak_mb"], 1),
                      **{k: round(v, 1) for k, v in rates.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
