"""``molamd doctor --config FILE``: is this host ready to run molamd? One line per check, in order, and an exit code.

The checks: the config is valid; the database is reachable and migrated; each secret reference resolves; the
Vault token and what its policy allows (one AppRole login serves them all, revoked at the end with its leases);
the HSM module, token, each signing key and a test signature verified
against the connector's certificate; each bank endpoint's TLS (REST) and pinned host key (SFTP); the SFTP
directories present and writable; the clock against the database's. A check that cannot run because an earlier
one failed says so (``skip``). Nothing a check meets ever ends the run with a traceback, and no secret is
printed: every line passes through the same replacement as the daemon's logs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

import msgspec
import trio

from connectors import RestConfig, SftpSourceConfig
from connectors.file_channel import FileChannelConfig, Transport
from connectors.sftp import SftpClient, SftpOptions

from .config import Config, ConfigError, connect_vault, load_config, resolve_config, secret_entries
from .config._vault import resolvers_for

if TYPE_CHECKING:
    from .vault import Vault

CLOCK_SKEW_LIMIT = 2.0  # seconds: leases, claims and bank signatures (X-Timestamp) all lean on the clock


class Verdict(enum.StrEnum):
    OK = "ok"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class Line:
    check: str
    verdict: Verdict
    detail: str

    def __str__(self) -> str:
        return f"{self.verdict.value:<4}  {self.check}: {self.detail}"


class Doctor:
    """Runs the checks in order; each appends lines and may leave what later checks need."""

    def __init__(self, path: str, out: TextIO) -> None:
        self.path, self.out = path, out
        self.lines: list[Line] = []
        self.secrets: list[str] = []  # every value seen: replaced in what is printed
        self.config: Config | None = None  # as written (unresolved)
        self.resolved: Config | None = None
        self.vault: Vault | None = None
        self.vault_error: str | None = None
        self.database_now: Callable[[], float] | None = None

    def say(self, check: str, verdict: Verdict, detail: str) -> None:
        for value in sorted(self.secrets, key=len, reverse=True):
            if value:
                detail = detail.replace(value, "***")
        line = Line(check, verdict, " ".join(detail.split()))
        self.lines.append(line)
        print(line, file=self.out, flush=True)

    def failed(self) -> bool:
        return any(line.verdict is Verdict.FAIL for line in self.lines)

    # -- the checks, in order ----------------------------------------------------------------------

    def check_config(self) -> None:
        try:
            self.config = load_config(self.path)
        except ConfigError as exc:
            problems = exc.lines()
            self.say("config", Verdict.FAIL, f"{len(problems)} problem(s): " + "; ".join(problems))
            return
        self.say("config", Verdict.OK, f"{self.path}: valid, {len(self.config.connectors)} connector(s)")

    def _login(self) -> Vault | None:
        """The doctor's own Vault client, logged in once (None without an address, or if the login failed)."""
        config = self.config
        if config is None or not config.vault.address or self.vault_error is not None:
            return self.vault
        if self.vault is None:
            try:
                self.vault = connect_vault(config.vault, file=self.path)
            except ConfigError as exc:
                self.vault_error = "; ".join(exc.lines())
        return self.vault

    def check_vault(self) -> None:
        config = self.config
        if config is None:
            return self.say("vault", Verdict.SKIP, "the config is not valid")
        if not config.vault.address:
            return self.say("vault", Verdict.OK, "no [vault] address: secrets come from files, env and credentials")
        vault = self._login()
        if vault is None:
            return self.say("vault", Verdict.FAIL, self.vault_error or "no login")
        from .vault import Reference, VaultError

        try:
            ttl, policies = vault.token_info()
            paths = sorted({_kv_path(Reference.parse(s.target)) for _, s in secret_entries(config)
                            if s.scheme == "vault"})
            allowed = vault.capabilities(paths) if paths else {}
        except VaultError as exc:
            return self.say("vault", Verdict.FAIL, f"{config.vault.address}: logged in, then {exc}")
        denied = [path for path, caps in allowed.items() if not {"read", "root"} & set(caps)]
        summary = f"{config.vault.address}: AppRole login ok, token TTL {ttl}s, policies {', '.join(policies)}"
        if denied:
            return self.say("vault", Verdict.FAIL, f"{summary}; the policy denies reading {', '.join(denied)}")
        self.say("vault", Verdict.OK, f"{summary}; may read the {len(paths)} KV path(s) the config names")

    def check_secrets(self) -> None:
        config = self.config
        if config is None:
            return self.say("secrets", Verdict.SKIP, "the config is not valid")
        vault = self._login()
        if config.vault.address and vault is None:
            return self.say("secrets", Verdict.FAIL, f"[vault] login failed, so no vault: reference resolves:"
                            f" {self.vault_error}")
        table = resolvers_for(vault)
        entries = secret_entries(config)
        failures: list[str] = []
        for where, secret in entries:
            if where.startswith("$.vault."):
                continue  # the AppRole secret_id: the Vault check used it already
            try:
                value = table[secret.scheme](secret.target)
            except Exception as exc:  # each resolver's own error, named by its reference
                failures.append(f"{where} {secret.reference}: {exc}")
                continue
            self.secrets.append(value if isinstance(value, str) else value.value)
        if failures:
            return self.say("secrets", Verdict.FAIL, f"{len(failures)} of {len(entries)} unresolved: "
                            + "; ".join(failures))
        try:
            self.resolved = resolve_config(config, file=self.path, vault=vault)
        except ConfigError as exc:
            return self.say("secrets", Verdict.FAIL, "; ".join(exc.lines()))
        schemes = sorted({s.scheme for _, s in entries})
        self.say("secrets", Verdict.OK, f"{len(entries)} reference(s) resolved ({', '.join(schemes) or 'none'})")

    def check_database(self) -> None:
        config = self.config
        if config is None:
            return self.say("database", Verdict.SKIP, "the config is not valid")
        import psycopg

        from .db import conninfo, current_version, shipped_migrations

        section = config.database
        kwargs: dict[str, Any]
        try:
            if section.credentials_role is not None:
                vault = self._login()
                if vault is None:
                    return self.say("database", Verdict.FAIL, f"{section.credentials}: no Vault login:"
                                    f" {self.vault_error}")
                creds = vault.database_credentials(*section.credentials_role)
                self.secrets.append(creds.password)
                kwargs = conninfo(section, "molamd-doctor", lambda: {"user": creds.username,
                                                                     "password": creds.password})
            else:
                if section.password is not None:  # resolved here: the secrets check comes after this one
                    value = resolvers_for(self._login())[section.password.scheme](section.password.target)
                    password = value if isinstance(value, str) else value.value
                    self.secrets.append(password)
                    section = msgspec.structs.replace(section, password=section.password.with_value(password))
                kwargs = conninfo(section, "molamd-doctor")
            with psycopg.connect(section.dsn, **kwargs) as conn:
                version = current_version(conn)
                row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
                assert row is not None
                skew = float(row[0]) - time.time()
        except Exception as exc:  # libpq's or Vault's reason, printed without secrets
            return self.say("database", Verdict.FAIL, f"{_where(section.dsn)}: {type(exc).__name__}: {exc}")
        latest = max(m.version for m in shipped_migrations())
        self.database_now = lambda: time.time() + skew
        if version != latest:
            return self.say("database", Verdict.FAIL, f"{_where(section.dsn)}: reachable, schema at version "
                            f"{version} of {latest}: run molamd migrate --config {self.path}")
        self.say("database", Verdict.OK, f"{_where(section.dsn)}: reachable, schema at version {latest} (latest)")

    def check_hsm(self) -> None:
        config = self.resolved
        if config is None:
            return self.say("hsm", Verdict.SKIP, "the config or its secrets are not usable (above)")
        channels = [c for c in config.connectors if isinstance(c, FileChannelConfig)]
        section = config.hsm
        if not section.token:
            verdict = Verdict.FAIL if channels else Verdict.OK
            return self.say("hsm", verdict, "no [hsm] token" + (f", but {len(channels)} file channel(s) sign"
                                                                 " with it" if channels else ": nothing signs"))
        from .hsm import HsmError, Signer

        assert section.pin is not None
        signer = Signer(section.module, section.token, section.pin.reveal())
        try:
            signer.open()
            keys = dict(signer.list_keys())
            for channel in channels:
                label = channel.iso20022.key_label
                if label not in keys:
                    self.say("hsm", Verdict.FAIL, f"{channel.name}: no key {label!r} in token {section.token!r}")
                    continue
                signature = signer.sign(label, b"molamd doctor test signature")
                _verify(channel.iso20022.certificate, b"molamd doctor test signature", signature)
                self.say("hsm", Verdict.OK, f"{channel.name}: key {label!r} ({keys[label]}) signed a test message,"
                         f" verified against {channel.iso20022.certificate}")
            if not channels:
                self.say("hsm", Verdict.OK, f"token {section.token!r} opened, {len(keys)} key(s); no file channel")
        except (HsmError, ValueError, OSError) as exc:
            self.say("hsm", Verdict.FAIL, f"{section.module}, token {section.token!r}: {exc}")
        finally:
            signer.close()

    async def check_banks(self) -> None:
        config = self.resolved
        if config is None:
            return self.say("banks", Verdict.SKIP, "the config or its secrets are not usable (above)")
        for connector in config.connectors:
            if isinstance(connector, RestConfig):
                await trio.to_thread.run_sync(self._tls, connector.name, connector.rest.base_url,
                                              connector.rest.ca_file, connector.rest.client_cert,
                                              connector.rest.client_key)
            elif isinstance(connector, FileChannelConfig) and connector.iso20022.transport is Transport.REST:
                assert connector.rest is not None
                await trio.to_thread.run_sync(self._tls, connector.name, connector.rest.base_url,
                                              connector.rest.ca_file, connector.rest.client_cert,
                                              connector.rest.client_key)
            for options, writable, readable in _sftp_dirs(connector):
                await self._sftp(connector.name, options, writable, readable)

    def _tls(self, name: str, url: str, ca_file: str | None, cert: str | None, key: str | None) -> None:
        parts = urlsplit(url)
        if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost"):
            return self.say("tls", Verdict.SKIP, f"{name}: {url} is plain http on loopback (a local sandbox)")
        if parts.scheme != "https":
            return self.say("tls", Verdict.FAIL, f"{name}: {url} is not https: payouts would go in clear")
        host, port = parts.hostname or "", parts.port or 443
        try:
            context = ssl.create_default_context(cafile=ca_file)
            if cert:
                context.load_cert_chain(cert, key)
            with socket.create_connection((host, port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=host) as tls:
                peer = tls.getpeercert() or {}
                version = tls.version()
        except (OSError, ssl.SSLError, ValueError) as exc:
            return self.say("tls", Verdict.FAIL, f"{name}: {host}:{port}: {type(exc).__name__}: {exc}")
        ends = ssl.cert_time_to_seconds(str(peer.get("notAfter"))) if peer.get("notAfter") else None
        days = f", its certificate ends in {int((ends - time.time()) // 86400)} days" if ends else ""
        client = ", our client certificate presented" if cert else ""
        self.say("tls", Verdict.OK, f"{name}: {host}:{port} {version}, verified against "
                 f"{ca_file or 'the system CAs'}{days}{client}")

    async def _sftp(self, name: str, options: SftpOptions, writable: tuple[str, ...], readable: tuple[str, ...]) \
            -> None:
        from connectors import ConnectorError

        client = SftpClient(name, options)
        probe = f".molamd-doctor-{os.getpid()}-{int(time.time())}"
        try:
            await client.stat_dirs(*readable, *writable)
            self.say("host key", Verdict.OK, f"{name}: {options.host}:{options.port} matches {options.known_hosts},"
                     f" login as {options.username} ok")
            for directory in writable:
                await client.probe_writable(directory, probe)
            self.say("sftp dirs", Verdict.OK, f"{name}: {', '.join(readable + writable)} present; "
                     f"{', '.join(writable)} writable")
        except ConnectorError as exc:
            check = "host key" if "host key" in str(exc) or "known_hosts" in str(exc) else "sftp dirs"
            self.say(check, Verdict.FAIL, f"{name}: {options.host}:{options.port}: {exc}")
        finally:
            await client.aclose()

    def check_clock(self) -> None:
        if self.database_now is None:
            return self.say("clock", Verdict.SKIP, "the database did not answer (above)")
        skew = self.database_now() - time.time()
        verdict = Verdict.OK if abs(skew) <= CLOCK_SKEW_LIMIT else Verdict.FAIL
        self.say("clock", verdict, f"{skew * 1000:+.0f} ms against the database (limit ±{CLOCK_SKEW_LIMIT:.0f} s);"
                 f" local time {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}")

    def close(self) -> None:
        if self.vault is not None:
            with contextlib.suppress(Exception):  # else the token ends on its own TTL
                self.vault.revoke_token()  # and with it the doctor's own database lease
            self.vault.close()


def _kv_path(reference: Any) -> str:
    return f"{reference.mount}/data/{reference.path}"


def _where(dsn: str) -> str:
    """host:port/dbname of a DSN, nothing else of it."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "the database"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _sftp_dirs(connector: Any) -> Iterator[tuple[SftpOptions, tuple[str, ...], tuple[str, ...]]]:
    """(options, directories we write, directories we only read) of each SFTP endpoint of a connector."""
    if isinstance(connector, SftpSourceConfig):
        o = connector.sftp
        yield o, tuple(d for d in (o.archive, o.error) if d), (o.inbox,)
    elif isinstance(connector, FileChannelConfig) and connector.iso20022.transport is Transport.SFTP:
        assert connector.sftp is not None
        yield connector.sftp, (connector.iso20022.upload_dir,), (connector.sftp.inbox,)


def _verify(certificate_file: str, data: bytes, signature: bytes) -> None:
    """The HSM's signature checks out against the certificate the bank has (ValueError if not)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    with open(certificate_file, "rb") as f:
        public = x509.load_pem_x509_certificate(f.read()).public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            half = len(signature) // 2
            der = utils.encode_dss_signature(int.from_bytes(signature[:half]), int.from_bytes(signature[half:]))
            public.verify(der, data, ec.ECDSA(hashes.SHA256()))
        else:
            raise ValueError(f"{certificate_file}: a key type molamd does not sign with")
    except InvalidSignature:
        raise ValueError(f"the test signature does not verify against {certificate_file}: the key in the token"
                         " is not the certificate's") from None


def run(path: str, out: TextIO = sys.stdout) -> int:
    """Every check in order; 0 when none failed, 1 otherwise."""
    doctor = Doctor(path, out)
    try:
        doctor.check_config()
        doctor.check_database()
        doctor.check_secrets()
        doctor.check_vault()
        doctor.check_hsm()
        trio.run(doctor.check_banks)
        doctor.check_clock()
    finally:
        doctor.close()
    failed = sum(line.verdict is Verdict.FAIL for line in doctor.lines)
    print(f"doctor: {failed} check(s) failed" if failed else "doctor: every check passed", file=out)
    return 1 if failed else 0
