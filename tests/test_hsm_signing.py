"""pain.001.001.09 signed in a SoftHSM2 token (keys made inside it, never extractable), RSA-SHA256 and
ECDSA-P256-SHA256, verified by python-xmlsec and by the xmlsec1 command line; a tampered file refused by both."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from connectors.iso20022 import (
    ECDSA_SHA256,
    RSA_SHA256,
    Account,
    Pain001Version,
    Party,
    PaymentBatch,
    PaymentFile,
    PostalAddress,
    SignatureInvalid,
    SigningError,
    Transfer,
    build_pain001,
    sign_detached,
    sign_enveloped,
    validate,
    verify_detached,
    verify_enveloped,
)
from molamd.hsm import HsmError, KeyKind, KeyNotFound, Signer

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "4921"
pytestmark = pytest.mark.skipif(not os.path.exists(MODULE), reason="needs softhsm2 (scripts/setup installs it)")
needs_xmlsec1 = pytest.mark.skipif(shutil.which("xmlsec1") is None, reason="needs xmlsec1 (scripts/setup installs it)")


@pytest.fixture(scope="session")
def signer(token: str) -> Iterator[Signer]:
    s = Signer(MODULE, token, PIN)
    s.open()
    s.keygen("rsa-key", KeyKind.RSA_2048)
    s.keygen("ec-key", KeyKind.EC_P256)
    yield s
    s.close()


def pem(signer: Signer, label: str) -> bytes:
    return load_der_public_key(signer.public_key(label)).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def pain001(version: Pain001Version = Pain001Version.V09) -> bytes:
    f = PaymentFile(file_id=9, created_at=dt.datetime(2026, 12, 2, 9, 0), initiating_party="Molam", batches=(
        PaymentBatch(debtor=Party(name="Molam SN", address=PostalAddress(town="Dakar", country="SN")),
                     debtor_account=Account(iban="SN08SN0100152000048500003035"), debtor_agent_bic="ECOCSNDA",
                     currency="XOF", execution_date=dt.date(2026, 12, 3), transfers=(
                         Transfer(slice_id=5, end_to_end_id="molam-slice-5", amount=Decimal("25000"),
                                  creditor=Party(name="Fatou Sow"), creditor_account=Account(other="123456")),)),))
    return build_pain001(f, version)


def xmlsec1(tmp_path: Path, key_pem: bytes, document: bytes) -> subprocess.CompletedProcess[str]:
    (tmp_path / "key.pem").write_bytes(key_pem)
    (tmp_path / "doc.xml").write_bytes(document)
    return subprocess.run(["xmlsec1", "--verify", "--pubkey-pem", str(tmp_path / "key.pem"), str(tmp_path / "doc.xml")],
                          capture_output=True, text=True, check=False)


@needs_xmlsec1
@pytest.mark.parametrize(("label", "algorithm"), [("rsa-key", RSA_SHA256), ("ec-key", ECDSA_SHA256)])
def test_signed_in_the_token_and_verified_by_two_others(
    signer: Signer, tmp_path: Path, label: str, algorithm: str
) -> None:
    signed = sign_enveloped(pain001(), algorithm, lambda data: signer.sign(label, data), key_name=label)
    assert validate(signed, "pain.001.001.09") == [], "the signature sits where the schema allows it"
    assert b"<SplmtryData><Envlp><ds:Signature" in signed
    key = pem(signer, label)
    verify_enveloped(signed, key)
    checked = xmlsec1(tmp_path, key, signed)
    assert checked.returncode == 0 and "OK" in checked.stdout + checked.stderr, checked.stderr
    tampered = signed.replace(b">25000<", b">95000<")
    with pytest.raises(SignatureInvalid):
        verify_enveloped(tampered, key)
    assert xmlsec1(tmp_path, key, tampered).returncode != 0
    other = pem(signer, "ec-key" if label == "rsa-key" else "rsa-key")
    with pytest.raises(SignatureInvalid):
        verify_enveloped(signed, other)


def test_keys_live_in_the_token(signer: Signer) -> None:
    mine = [k for k in signer.list_keys() if k[0] in ("ec-key", "rsa-key")]  # the session's token is shared
    assert mine == [("ec-key", KeyKind.EC_P256), ("rsa-key", KeyKind.RSA_2048)]
    with pytest.raises(HsmError, match="already has a key 'rsa-key'"):
        signer.keygen("rsa-key", KeyKind.RSA_2048)
    with pytest.raises(KeyNotFound, match="no private key 'absent'"):
        signer.sign("absent", b"x")


def test_a_v03_file_has_no_place_for_an_enveloped_signature(signer: Signer) -> None:
    with pytest.raises(SigningError, match=r"needs a pain\.001\.001\.09"):
        sign_enveloped(pain001(Pain001Version.V03), RSA_SHA256, lambda data: signer.sign("rsa-key", data))


@needs_xmlsec1
@pytest.mark.parametrize(("label", "algorithm"), [("rsa-key", RSA_SHA256), ("ec-key", ECDSA_SHA256)])
def test_a_v03_file_is_signed_detached_beside_it(signer: Signer, tmp_path: Path, label: str, algorithm: str) -> None:
    payment = pain001(Pain001Version.V03)
    signature = sign_detached(payment, "MOLAM-9.xml", algorithm, lambda data: signer.sign(label, data))
    key = pem(signer, label)
    verify_detached(signature, payment, "MOLAM-9.xml", key)
    (tmp_path / "MOLAM-9.xml").write_bytes(payment)
    (tmp_path / "MOLAM-9.xml.sig").write_bytes(signature)
    (tmp_path / "key.pem").write_bytes(key)
    checked = subprocess.run(["xmlsec1", "--verify", "--pubkey-pem", "key.pem", "MOLAM-9.xml.sig"], cwd=tmp_path,
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_detached(signature, payment.replace(b">25000<", b">95000<"), "MOLAM-9.xml", key)
    with pytest.raises(SignatureInvalid, match=r"does not name 'other\.xml'"):
        verify_detached(signature, payment, "other.xml", key)


def test_a_detached_reference_can_never_read_a_file_of_this_host(signer: Signer, tmp_path: Path) -> None:
    """A signature from outside naming a local path: verification finds nothing there, and reads nothing."""
    secret = tmp_path / "secret.xml"
    secret.write_bytes(b"<secret/>")
    forged = sign_detached(b"<secret/>", "secret.xml", RSA_SHA256, lambda d: signer.sign("rsa-key", d))
    forged = forged.replace(b'URI="secret.xml"', f'URI="{secret}"'.encode())
    with pytest.raises(SignatureInvalid):
        verify_detached(forged, b"<other/>", str(secret), pem(signer, "rsa-key"))
    # and the enveloped profile still verifies after the detached one has set its callbacks
    signed = sign_enveloped(pain001(), RSA_SHA256, lambda data: signer.sign("rsa-key", data))
    verify_enveloped(signed, pem(signer, "rsa-key"))


PROBE = """
import sys
from molamd.hsm import Signer
try:
    Signer(sys.argv[1], sys.argv[2], sys.argv[3]).open()
except Exception as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.parametrize(("module", "label", "pin", "says"), [
    (MODULE, "molam-test", "0000", "HsmLoginFailed token 'molam-test': login refused"),
    (MODULE, "no-such-token", PIN, "HsmUnavailable token 'no-such-token'"),
    ("/nonexistent/libpkcs11.so", "molam-test", PIN, "HsmUnavailable PKCS#11 module /nonexistent/libpkcs11.so"),
])
def test_a_missing_module_token_or_wrong_pin_is_a_clear_error_without_the_pin(
    token: str, module: str, label: str, pin: str, says: str
) -> None:
    """In a process of its own: a PKCS#11 login is per process, and this one is logged in."""
    out = subprocess.run([sys.executable, "-c", PROBE, module, label, pin], capture_output=True, text=True,
                         env=os.environ.copy(), check=False, timeout=60)
    assert out.stdout.startswith(says), out.stdout + out.stderr
    assert pin not in out.stdout.replace(says, "")



def test_hsm_commands_keygen_list_csr_and_cert(token: str, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, padding

    config = tmp_path / "molamd.toml"
    config.write_text(f'[hsm]\nmodule = "{MODULE}"\ntoken = "{token}"\npin = "env:MOLAMD_TEST_HSM_PIN"\n')
    env = {**os.environ, "MOLAMD_TEST_HSM_PIN": PIN}

    def hsm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "molamd.cli", "hsm", *args, "--config", str(config)],
                              capture_output=True, text=True, env=env, check=False, timeout=60)

    assert hsm("keygen", "--label", "cli-rsa").returncode == 0
    assert hsm("keygen", "--label", "cli-ec", "--kind", "ec-p256").returncode == 0
    again = hsm("keygen", "--label", "cli-rsa")
    assert again.returncode == 1 and "already has a key 'cli-rsa'" in again.stderr
    listed = hsm("list").stdout.splitlines()
    assert "cli-rsa\trsa-2048" in listed and "cli-ec\tec-p256" in listed
    for label in ("cli-rsa", "cli-ec"):
        made = hsm("cert", "--label", label, "--cn", "Molam payouts", "--org", "Molam", "--country", "SN",
                   "--out", str(tmp_path / f"{label}.pem"))
        assert made.returncode == 0, made.stderr
        cert = x509.load_pem_x509_certificate((tmp_path / f"{label}.pem").read_bytes())
        assert cert.subject.rfc4514_string() == "CN=Molam payouts,O=Molam,C=SN" and cert.issuer == cert.subject
        key = cert.public_key()
        assert cert.signature_hash_algorithm is not None
        if label == "cli-rsa":
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),  # type: ignore[call-arg, union-attr]
                       cert.signature_hash_algorithm)
        else:
            key.verify(cert.signature, cert.tbs_certificate_bytes,  # type: ignore[call-arg, union-attr]
                       ec.ECDSA(cert.signature_hash_algorithm))
        request = hsm("csr", "--label", label, "--cn", "Molam payouts")
        assert request.returncode == 0 and x509.load_pem_x509_csr(request.stdout.encode()).is_signature_valid
    wrong = subprocess.run([sys.executable, "-m", "molamd.cli", "hsm", "list", "--config", str(config)],
                           capture_output=True, text=True, env={**env, "MOLAMD_TEST_HSM_PIN": "0000"}, check=False)
    assert wrong.returncode == 1 and "login refused" in wrong.stderr and "0000" not in wrong.stderr


@needs_xmlsec1
def test_a_signature_verifies_against_the_connectors_certificate(signer: Signer, tmp_path: Path) -> None:
    import xmlsec

    from molamd.certificates import self_signed, subject

    cert = self_signed(signer, "rsa-key", subject("Molam"))
    signed = sign_enveloped(pain001(), RSA_SHA256, lambda data: signer.sign("rsa-key", data))
    from lxml import etree

    root = etree.fromstring(signed)
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory(cert, xmlsec.constants.KeyDataFormatCertPem)
    ctx.verify(xmlsec.tree.find_node(root, xmlsec.constants.NodeSignature))
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "doc.xml").write_bytes(signed)
    checked = subprocess.run(["xmlsec1", "--verify", "--pubkey-cert-pem", "cert.pem", "doc.xml"], cwd=tmp_path,
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
