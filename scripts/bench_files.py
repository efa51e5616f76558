"""Benchmark: payment files. Prints figures; not a test.

1. Build + validate + sign a 10,000-transaction pain.001.001.09 (ours, signed in SoftHSM2) beside sepaxml building
   and validating the same 10,000 transactions, each in a process of its own: time and peak RSS (VmHWM).
   Target: ours (with signing) at least 2x faster than sepaxml's build + validate; peak RSS <= 200 MB.
2. HSM signatures per second through the Signer (RSA-2048 and P-256) beside python-pkcs11 called directly, in the
   same run. Target: >= 0.9 of direct.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=3.0, help="per signature rate measurement")
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
    print(json.dumps({"ours_s": round(ours["total_s"], 3), "sepaxml_s": round(theirs["total_s"], 3),
                      "speedup": round(speedup, 2), "ours_peak_mb": round(ours["peak_mb"], 1),
                      **{k: round(v, 1) for k, v in rates.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
