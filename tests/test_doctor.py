"""``molamd doctor`` against a real stack (PostgreSQL, OpenBao, SoftHSM2, an SFTP drop, a TLS bank endpoint), then
with each dependency broken in turn: each is named on its own line, none crashes it, no secret is printed."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from openbao_dev import OpenBao
from pgcluster import Cluster

from molamd.db import migrate, shipped_migrations
from tests.conftest import HSM_PIN, free_port
from tests.http_helpers import LoopbackServer
from tests.payout_helpers import ROOT, payout_toml, rest_connector
from tests.test_file_channel import KEY, _softhsm_conf, file_connector, hsm_key, hsm_toml  # noqa: F401

sys.path.insert(0, str(ROOT / "scripts"))
from sandbox_sftp import SandboxSftp

CANARY = "canary-d0c7-"
CHECKS = ["config", "database", "secrets", "vault", "hsm", "tls", "host key", "sftp dirs", "clock"]


class TlsBank:
    """An HTTPS endpoint on loopback with a certificate of its own (a CA file the connector pins)."""

    def __init__(self, directory: Path) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank.test")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
                .not_valid_after(now + dt.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        self.ca_file = directory / "bank-ca.pem"
        self.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file = directory / "bank.key"
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key_file)
        self.server = LoopbackServer(http.server.BaseHTTPRequestHandler, context)
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def signing(hsm_key: tuple[str, Path]) -> tuple[str, Path]:  # noqa: F811 - test_file_channel's fixture
    """The session token and a key made in it by `molamd hsm keygen`, with its certificate."""
    return hsm_key


@pytest.fixture
def unmigrated(pg: Cluster) -> Iterator[str]:
    """A database whose schema stops one migration short of the latest (as before an upgrade's migrate)."""
    name = f"doctor_{free_port()}"
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(pg.dsn(name)) as conn:
        migrate(conn, shipped_migrations()[:-1])
    yield pg.dsn(name)
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def stack(short_tmp: Path, migrated_dsn: str, signing: tuple[str, Path]) -> Iterator[dict[str, object]]:
    bao = OpenBao()
    bank = TlsBank(short_tmp)
    root = short_tmp / "drop"
    for folder in ("inbox", "outbox", "outbox/archive", "outbox/error"):
        (root / folder).mkdir(parents=True)
    sftp = SandboxSftp(root, state=short_tmp / "sftp-state", password=CANARY + "sftp").start()
    bao.put("molamd/bank-a", hmac=CANARY + "hmac")
    bao.put("molamd/drop", password=CANARY + "sftp")
    (short_tmp / "secret_id").write_text(bao.secret_id() + "\n")
    yield {"bao": bao, "bank": bank, "sftp": sftp, "root": root}
    sftp.stop()
    bank.close()
    bao.stop()


def config_text(short_tmp: Path, dsn: str, stack: dict[str, object], signing: tuple[str, Path], *,
                hmac: str = "vault:secret/molamd/bank-a#hmac", ca_file: Path | None = None,
                known_hosts: Path | None = None, upload_dir: str = "/inbox", address: str | None = None,
                pin_env: str = "MOLAMD_TEST_PIN", key: str = KEY) -> str:
    bao, bank, sftp = stack["bao"], stack["bank"], stack["sftp"]
    assert isinstance(bao, OpenBao) and isinstance(bank, TlsBank) and isinstance(sftp, SandboxSftp)
    token, certificate = signing
    pinned = known_hosts or sftp.known_hosts(short_tmp / "known_hosts")
    rest = rest_connector("bank-a-rest", bank.url, hmac_env="UNUSED").replace(
        'hmac_secret = "env:UNUSED"', f'hmac_secret = "{hmac}"\nca_file = "{ca_file or bank.ca_file}"')
    files = file_connector("bank-c-files", sftp, pinned, certificate, options=(f'upload_dir = "{upload_dir}"',))
    files = files.replace('password = "env:MOLAMD_TEST_SFTP"', 'password = "vault:secret/molamd/drop#password"')
    files = files.replace(f'key_label = "{KEY}"', f'key_label = "{key}"')
    vault = (f'\n[vault]\naddress = "{address or bao.address}"\nrole_id = "{bao.role_id}"\n'
             f'secret_id = "file:{short_tmp / "secret_id"}"\ntimeout = "2s"\n')
    return (payout_toml(short_tmp, dsn, rest + files) + hsm_toml(token).replace("MOLAMD_TEST_PIN", pin_env)
            + vault)


def doctor(path: Path, text: str) -> tuple[int, dict[str, list[str]], str]:
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "molamd.cli", "doctor", "--config", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, check=False,
                          env={"PATH": "/usr/bin:/bin", "MOLAMD_TEST_PIN": HSM_PIN, "MOLAMD_WRONG_PIN": "1111",
                               "SOFTHSM2_CONF": _softhsm_conf(), "HOME": str(path.parent)})
    assert "Traceback" not in done.stderr + done.stdout, done.stderr + done.stdout
    assert CANARY not in done.stdout + done.stderr, "a secret was printed"
    lines: dict[str, list[str]] = {}
    for line in done.stdout.splitlines()[:-1]:
        verdict, rest = line.split(None, 1)
        check = rest.split(":")[0]
        lines.setdefault(check, []).append(f"{verdict} {rest}")
    return done.returncode, lines, done.stdout


def verdicts(lines: dict[str, list[str]]) -> dict[str, set[str]]:
    return {check: {line.split()[0] for line in found} for check, found in lines.items()}


def test_doctor_passes_on_a_working_stack_in_order(short_tmp: Path, migrated_dsn: str,
                                                   stack: dict[str, object], signing: tuple[str, Path]) -> None:
    code, lines, out = doctor(short_tmp / "ok.toml", config_text(short_tmp, migrated_dsn, stack, signing))
    assert code == 0, out
    assert list(lines) == CHECKS, out
    assert all(v == {"ok"} for v in verdicts(lines).values()), out
    assert "schema at version" in lines["database"][0] and "(latest)" in lines["database"][0]
    assert "4 reference(s) resolved" in lines["secrets"][0]
    assert "policies" in lines["vault"][0] and "may read the 2 KV path(s)" in lines["vault"][0]
    assert f"key '{KEY}'" in lines["hsm"][0] and "verified against" in lines["hsm"][0]
    assert "bank-a-rest: 127.0.0.1" in lines["tls"][0] and "TLSv1.3" in lines["tls"][0]
    assert "/inbox writable" in lines["sftp dirs"][0]
    assert out.splitlines()[-1] == "doctor: every check passed"


@pytest.mark.parametrize("broken", ["config", "database down", "not migrated", "secret missing", "vault down",
                                    "policy denies", "hsm key", "hsm pin", "tls", "host key", "sftp dir"])
def test_doctor_names_each_broken_dependency(short_tmp: Path, migrated_dsn: str, unmigrated: str,
                                             stack: dict[str, object], signing: tuple[str, Path],
                                             broken: str) -> None:
    good = config_text(short_tmp, migrated_dsn, stack, signing)
    if broken == "tls":
        (short_tmp / "other").mkdir()
    other = TlsBank(short_tmp / "other") if broken == "tls" else None
    wrong_hosts = short_tmp / "wrong_known_hosts"
    if broken == "host key":
        import asyncssh

        sftp = stack["sftp"]
        assert isinstance(sftp, SandboxSftp)
        stranger = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
        wrong_hosts.write_text(f"[127.0.0.1]:{sftp.port} {stranger}\n")
    text = {
        "config": good.replace("[daemon]", "[daemon]\nno_such_key = 1"),
        "database down": good.replace(migrated_dsn, f"host=127.0.0.1 port={free_port()} dbname=x"),
        "not migrated": good.replace(migrated_dsn, unmigrated),
        "secret missing": good.replace("molamd/bank-a#hmac", "molamd/bank-a#nope"),
        "vault down": config_text(short_tmp, migrated_dsn, stack, signing, address=f"http://127.0.0.1:{free_port()}"),
        "policy denies": config_text(short_tmp, migrated_dsn, stack, signing, hmac="vault:secret/other/x#hmac"),
        "hsm key": config_text(short_tmp, migrated_dsn, stack, signing, key="no-such-key"),
        "hsm pin": config_text(short_tmp, migrated_dsn, stack, signing, pin_env="MOLAMD_WRONG_PIN"),
        "tls": config_text(short_tmp, migrated_dsn, stack, signing,
                           ca_file=other.ca_file if other else None),
        "host key": config_text(short_tmp, migrated_dsn, stack, signing, known_hosts=wrong_hosts),
        "sftp dir": config_text(short_tmp, migrated_dsn, stack, signing, upload_dir="/missing"),
    }[broken]
    code, lines, out = doctor(short_tmp / "broken.toml", text)
    if other is not None:
        other.close()
    assert code == 1, out
    failed = {check for check, v in verdicts(lines).items() if "FAIL" in v}
    expected, words = {
        "config": ({"config"}, "no_such_key"),
        "database down": ({"database"}, "connection"),
        "not migrated": ({"database"}, "molamd migrate --config"),
        "secret missing": ({"secrets"}, "$.connectors[0].rest.hmac_secret vault:secret/molamd/bank-a#nope"),
        "vault down": ({"secrets", "vault"}, "127.0.0.1"),
        "policy denies": ({"secrets", "vault"}, "secret/data/other/x"),
        "hsm key": ({"hsm"}, "no key 'no-such-key'"),
        "hsm pin": ({"hsm"}, "login refused"),
        "tls": ({"tls"}, "CERTIFICATE_VERIFY_FAILED"),
        "host key": ({"host key"}, "bank-c-files"),
        "sftp dir": ({"sftp dirs"}, "bank-c-files"),
    }[broken]
    assert failed == expected, out
    assert any(words in line for check in expected for line in lines[check]), out
    if broken == "config":
        assert all(v == {"skip"} for check, v in verdicts(lines).items() if check != "config"), out
    else:
        assert list(lines)[:4] == CHECKS[:4], "every check still runs, in order"
