"""Helpers for the payment file tests: slices waiting 'batched' for a file channel, and a key with its certificate."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.payout_helpers import seed

CONNECTOR = "bank-c-files"


def batched(dsn: str, count: int, *, local_accounts: bool = True) -> tuple[list[int], str]:
    """``count`` slices of bank-c put through the dispatcher's states to 'batched' for CONNECTOR, and their
    debtor account. With ``local_accounts`` the beneficiaries hold local account numbers (Othr/Id)."""
    ids = seed(dsn, count, profile="bank-c")
    with psycopg.connect(dsn) as conn:
        for status in ("claimed", "sending", "batched"):
            conn.execute("UPDATE payout_slices SET status = %s, claimed_by = 'h#1', lease_until = now() + interval"
                         " '1 minute', connector_name = %s, batched_at = now() WHERE id = ANY(%s)",
                         (status, CONNECTOR, ids))
        if local_accounts:
            conn.execute("UPDATE payout_slices SET beneficiary_account = '0412' || lpad(id::text, 10, '0')"
                         " WHERE id = ANY(%s)", (ids,))
        account = conn.execute("SELECT coalesce(t.iban, t.account_number) FROM payout_slices p JOIN"
                               " treasury_accounts t ON t.id = p.treasury_account_id WHERE p.id = %s",
                               (ids[0],)).fetchone()[0]
    return ids, str(account)


def self_signed(name: str) -> tuple[rsa.RSAPrivateKey, bytes]:
    """An RSA-2048 key and a one-day self-signed certificate for it (PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM)


def key_files(directory: Path, name: str) -> tuple[Path, Path]:
    """``self_signed`` written as NAME.key (PKCS#8) and NAME.pem."""
    key, cert = self_signed(name)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert)
    return key_path, cert_path
