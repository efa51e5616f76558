"""X.509 for keys that live in the HSM: a CSR to send the bank, or a self-signed certificate for development.

cryptography signs only with keys it holds, so the structures are built with asn1crypto (python-pkcs11's own
dependency), their to-be-signed part is signed in the token, and the pieces assembled. ECDSA signatures are
DER-encoded for X.509 (the token gives r||s).
"""

from __future__ import annotations

import datetime as dt
import secrets

from asn1crypto import algos, csr, keys, pem, x509

from .hsm import KeyKind, Signer

_ALGORITHMS = {KeyKind.RSA_2048: "sha256_rsa", KeyKind.EC_P256: "sha256_ecdsa"}


def subject(common_name: str, organization: str | None = None, country: str | None = None) -> x509.Name:
    fields = {"common_name": common_name}
    if organization:
        fields["organization_name"] = organization
    if country:
        fields["country_name"] = country
    return x509.Name.build(fields)


def _signed(signer: Signer, label: str, data: bytes) -> tuple[algos.SignedDigestAlgorithm, bytes]:
    kind = signer.kind(label)
    raw = signer.sign(label, data)
    if kind is KeyKind.EC_P256:
        raw = algos.DSASignature.from_p1363(raw).dump()
    return algos.SignedDigestAlgorithm({"algorithm": _ALGORITHMS[kind]}), raw


def certificate_request(signer: Signer, label: str, name: x509.Name) -> bytes:
    """A PEM CSR for key ``label``, signed by it in the token."""
    info = csr.CertificationRequestInfo({
        "version": "v1", "subject": name, "subject_pk_info": keys.PublicKeyInfo.load(signer.public_key(label)),
        "attributes": [],
    })
    algorithm, signature = _signed(signer, label, info.dump())
    request = csr.CertificationRequest({
        "certification_request_info": info, "signature_algorithm": algorithm, "signature": signature})
    return bytes(pem.armor("CERTIFICATE REQUEST", request.dump()))


def self_signed(signer: Signer, label: str, name: x509.Name, *, days: int = 365,
                now: dt.datetime | None = None) -> bytes:
    """A PEM self-signed certificate for key ``label`` (development: a bank issues the real one from the CSR)."""
    start = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    kind = signer.kind(label)
    tbs = x509.TbsCertificate({
        "version": "v3",
        "serial_number": secrets.randbits(63),
        "signature": {"algorithm": _ALGORITHMS[kind]},
        "issuer": name,
        "validity": {"not_before": x509.Time({"utc_time": start}),
                     "not_after": x509.Time({"utc_time": start + dt.timedelta(days=days)})},
        "subject": name,
        "subject_public_key_info": keys.PublicKeyInfo.load(signer.public_key(label)),
        "extensions": [
            {"extn_id": "basic_constraints", "critical": True, "extn_value": {"ca": False}},
            {"extn_id": "key_usage", "critical": True, "extn_value": {"digital_signature", "non_repudiation"}},
        ],
    })
    algorithm, signature = _signed(signer, label, tbs.dump())
    cert = x509.Certificate({"tbs_certificate": tbs, "signature_algorithm": algorithm, "signature_value": signature})
    return bytes(pem.armor("CERTIFICATE", cert.dump()))
