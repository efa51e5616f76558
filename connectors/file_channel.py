"""The ISO 20022 file channel of a bank (kind ``iso20022``): pain.001 files out, pain.002 reports back, over SFTP.

A file channel does not pay slice by slice. The dispatcher hands it slices (they wait ``batched``); its
FileBatcher closes them into files by size, age and the bank's cutoffs, and this module turns the slices of
one file into signed bytes (``prepare``: build, XSD-validate, sign in the HSM through the ``sign`` callable,
verify the signature with python-xmlsec against our certificate) and moves bytes: ``upload`` into the bank's
inbox (temporary name, rename, read back), and the report drop read as a statement drop is (list, fetch,
acknowledge), or the same over the bank's REST API (``transport = "rest"``: POST /files with the MsgId as
idempotency key). No clock and no database here: the batcher decides when, the store what.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import ClassVar, Final

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ._calendar import BankCalendar, CutoffConfig
from ._contract import CallContext, Capability, ConnectorConfig, Health
from ._errors import ConnectorError
from ._payments import PayoutSlice
from ._values import Duration
from .iso20022 import (
    ECDSA_SHA256,
    RSA_SHA256,
    SEPA_LATIN,
    Account,
    Pain001Version,
    Party,
    PaymentBatch,
    PaymentFile,
    PostalAddress,
    SignatureInvalid,
    Transfer,
    build_pain001,
    msg_id,
    sign_detached,
    sign_enveloped,
    verify_detached,
    verify_enveloped,
)
from .iso20022._pain002 import MAX_BYTES as REPORT_MAX_BYTES
from .rest import RestConfig, RestConnector, RestOptions
from .sftp import Fetched, FileRefused, RemoteFile, SftpClient, SftpOptions, Uploaded

DS: Final = "http://www.w3.org/2000/09/xmldsig#"
_IBAN: Final = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{10,30}")


class SignatureProfile(enum.StrEnum):
    ENVELOPED = "enveloped"  # inside the Document (pain.001.001.09 SplmtryData/Envlp)
    DETACHED = "detached"  # an XML-DSig file beside the payment file (pain.001.001.03 has no slot)


class Transport(enum.StrEnum):
    SFTP = "sftp"  # files into upload_dir (temporary name, rename, read back); reports from sftp.inbox
    REST = "rest"  # POST /files with the MsgId as idempotency key; reports from GET /files/reports


class FileChannelOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[connectors.iso20022]``: what goes into the files, how they are signed, when they close."""

    version: Pain001Version = Pain001Version.V09
    signature: SignatureProfile | None = None  # default: enveloped for .09, detached for .03
    key_label: str  # the private key in the HSM ([hsm] token) that signs every file
    key_algorithm: str = "rsa-sha256"  # or "ecdsa-sha256" (a P-256 key)
    certificate: str  # PEM file of our signing certificate: every signature is verified against it
    bank_certificate: str = ""  # PEM file pinning the bank's report-signing certificate
    # Refuse (store, flag, apply nothing) an unsigned report. Unset: as bank_certificate is pinned or not; a
    # pinned certificate with reports_signed = false is a config error (check-config says why).
    reports_signed: bool | None = None
    initiating_party: str
    debtor_name: str
    debtor_town: str
    debtor_country: str
    debtor_agent_bic: str = ""  # the bank's BIC; empty: FinInstnId/Othr NOTPROVIDED
    charge_bearer: str = "SLEV"
    batch_booking: bool = True
    extra_characters: str = ""  # beyond the SEPA Latin set, if the bank's profile accepts them
    msg_id_prefix: str = "MOLAM"  # MsgId is PREFIX-FILEID: unique per database, so per prefix keep one database
    max_transactions: int = 1000  # a file closes at this many transactions
    max_age: Duration = msgspec.field(default_factory=lambda: Duration("5m"))  # ... or when its oldest waited this
    cutoff_lead: Duration = msgspec.field(default_factory=lambda: Duration("10m"))  # ... or this long before a cutoff
    upload_dir: str = "/inbox"  # where files go; [connectors.sftp] inbox is where the bank drops its reports
    tick: Duration = msgspec.field(default_factory=lambda: Duration("1s"))  # how often the batcher looks
    upload_retry_max: Duration = msgspec.field(default_factory=lambda: Duration("5m"))
    transport: Transport = Transport.SFTP  # how files go and reports come: [connectors.sftp] or [connectors.rest]
    report_poll_interval: Duration = msgspec.field(default_factory=lambda: Duration("30s"))
    report_backoff_max: Duration = msgspec.field(default_factory=lambda: Duration("5m"))

    @property
    def profile(self) -> SignatureProfile:
        if self.signature is not None:
            return self.signature
        return SignatureProfile.ENVELOPED if self.version is Pain001Version.V09 else SignatureProfile.DETACHED

    @property
    def signed_reports(self) -> bool:
        """Every report must carry a signature that verifies against the pinned certificate."""
        return self.reports_signed if self.reports_signed is not None else bool(self.bank_certificate)

    @property
    def charset(self) -> frozenset[str]:
        return SEPA_LATIN | frozenset(self.extra_characters)

    @property
    def algorithm(self) -> str:
        return ECDSA_SHA256 if self.key_algorithm == "ecdsa-sha256" else RSA_SHA256


class FileChannelConfig(ConnectorConfig, frozen=True, kw_only=True, tag="iso20022"):
    iso20022: FileChannelOptions
    cutoffs: CutoffConfig
    sftp: SftpOptions | None = None
    rest: RestOptions | None = None


class Prepared(msgspec.Struct, frozen=True, kw_only=True):
    """One payment file as it will be recorded and uploaded, byte for byte."""

    file_id: int
    msg_id: str
    file_name: str
    content: bytes
    sha256: bytes
    signature_name: str | None
    signature: bytes | None
    transactions: int
    control_sum: str
    execution_date: dt.date
    instr_ids: dict[int, str]  # slice id -> InstrId
    pmt_inf_ids: dict[int, str]  # slice id -> PmtInfId


def _public_key(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            pem = f.read(1024 * 1024)
        certificate = x509.load_pem_x509_certificate(pem)
    except (OSError, ValueError) as exc:
        raise CertificateError(f"[connectors.iso20022] {key} {path}: {exc}") from None
    return certificate.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


class CertificateError(ValueError):
    """A certificate file that cannot be read as PEM X.509."""


def _account(number: str) -> Account:
    compact = number.replace(" ", "").upper()
    if _IBAN.fullmatch(compact):
        return Account(iban=compact)
    return Account(other=number)


class FileChannelConnector:
    kind: ClassVar[str] = "iso20022"
    offers: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.SEND_PAYMENT, Capability.PAYMENT_FILES, Capability.HEALTH})
    capabilities: frozenset[Capability] = offers

    def __init__(self, config: FileChannelConfig) -> None:
        self.config = config
        self.name = config.name
        self.files = config.iso20022
        self.calendar = BankCalendar(config.cutoffs)
        self.sftp: SftpClient | None = None
        self.rest: RestConnector | None = None
        if self.files.transport is Transport.SFTP:
            if config.sftp is None:
                raise ValueError(f"{config.name}: transport sftp needs [connectors.sftp]")
            # A report is downloaded only as far as pain.002 is ever read: past it, it is refused unread.
            capped = min(config.sftp.max_file_size, REPORT_MAX_BYTES)
            self.sftp = SftpClient(config.name, msgspec.structs.replace(config.sftp, max_file_size=capped))
        else:
            if config.rest is None:
                raise ValueError(f"{config.name}: transport rest needs [connectors.rest]")
            self.rest = RestConnector(RestConfig(name=config.name, bank_profile=config.bank_profile,
                                                 limits=config.limits, rest=config.rest))
        self._offered: dict[str, bytes] = {}  # REST: reports listed, by name, until acknowledged

    async def open(self) -> None:
        if self.rest is not None:
            await self.rest.open()

    async def aclose(self) -> None:
        if self.sftp is not None:
            await self.sftp.aclose()
        if self.rest is not None:
            await self.rest.aclose()

    # -- building -----------------------------------------------------------------------------------

    def payment_file(self, file_id: int, slices: Sequence[PayoutSlice], execution_date: dt.date,
                     created_at: dt.datetime) -> PaymentFile:
        """The file's records: one block per debtor account and currency, one transfer per slice."""
        o = self.files
        blocks: dict[tuple[str, str], list[PayoutSlice]] = {}
        for s in slices:
            blocks.setdefault((s.debtor_account, s.currency), []).append(s)
        debtor = Party(name=o.debtor_name, address=PostalAddress(town=o.debtor_town, country=o.debtor_country))
        batches = tuple(
            PaymentBatch(
                debtor=debtor, debtor_account=_account(account), debtor_agent_bic=o.debtor_agent_bic or None,
                currency=currency, execution_date=execution_date, charge_bearer=o.charge_bearer,
                transfers=tuple(Transfer(
                    slice_id=s.id, end_to_end_id=s.idempotency_key, amount=s.amount,
                    creditor=Party(name=s.beneficiary_name), creditor_account=_account(s.beneficiary_account),
                    creditor_agent_bic=s.beneficiary_bic, remittance=s.remittance_info) for s in group))
            for (account, currency), group in sorted(blocks.items()))
        return PaymentFile(file_id=file_id, created_at=created_at, initiating_party=o.initiating_party,
                           batches=batches, batch_booking=o.batch_booking, prefix=o.msg_id_prefix)

    def prepare(self, file: PaymentFile, sign: Callable[[bytes], bytes], certificate_key: bytes) -> Prepared:
        """Build, validate, sign and verify one file. Raises PaymentFileError (naming slices and fields),
        SigningError, or SignatureInvalid (the HSM's signature does not verify with our certificate)."""
        o = self.files
        mid = msg_id(file)
        name = f"{mid}.xml"
        document = build_pain001(file, o.version, charset=o.charset)
        signature_name = signature = None
        if o.profile is SignatureProfile.ENVELOPED:
            content = sign_enveloped(document, o.algorithm, sign, key_name=o.key_label)
            verify_enveloped(content, certificate_key)
        else:
            content = document
            signature_name = f"{name}.sig"
            signature = sign_detached(content, name, o.algorithm, sign, key_name=o.key_label)
            verify_detached(signature, content, name, certificate_key)
        instr, blocks = {}, {}
        total = 0
        for index, batch in enumerate(file.batches, 1):
            for t in batch.transfers:
                instr[t.slice_id] = f"S{t.slice_id}"
                blocks[t.slice_id] = f"{mid}-{index}"
                total += 1
        control = sum((t.amount for b in file.batches for t in b.transfers), Decimal(0))
        return Prepared(
            file_id=file.file_id, msg_id=mid, file_name=name, content=content,
            sha256=hashlib.sha256(content).digest(), signature_name=signature_name, signature=signature,
            transactions=total, control_sum=f"{control:f}", execution_date=file.batches[0].execution_date,
            instr_ids=instr, pmt_inf_ids=blocks)

    # -- moving bytes -------------------------------------------------------------------------------

    async def submit(self, file_name: str, content: bytes, signature_name: str | None,
                     signature: bytes | None, msg_id: str = "") -> Uploaded:
        """The signature first (a bank must never find a payment file without it), then the file."""
        if self.rest is not None:
            return await self._post(file_name, content, signature_name, signature, msg_id or file_name)
        assert self.sftp is not None
        if signature_name is not None and signature is not None:
            await self.sftp.upload(self.files.upload_dir, signature_name, signature)
        return await self.sftp.upload(self.files.upload_dir, file_name, content)

    async def _post(self, file_name: str, content: bytes, signature_name: str | None, signature: bytes | None,
                    key: str) -> Uploaded:
        assert self.rest is not None
        ctx = CallContext(trace_id=uuid.uuid4().hex, timeout=self.config.limits.call_timeout.seconds)
        if signature_name is not None and signature is not None:
            await self.rest.upload_file(signature_name, signature, f"{key}.sig", ctx)
        replayed, _ = await self.rest.upload_file(file_name, content, key, ctx)
        return Uploaded(path=f"POST /files {file_name}",
                        detail="the bank had it already (idempotent replay)" if replayed else "")

    # -- status reports -----------------------------------------------------------------------------

    async def pending_reports(self) -> list[RemoteFile]:
        """Reports the bank has for us, ready to take (SFTP: settled for ``stable_for``), oldest first."""
        if self.rest is not None:
            ctx = CallContext(trace_id=uuid.uuid4().hex, timeout=self.config.limits.call_timeout.seconds)
            listed = await self.rest.list_reports(ctx)
            self._offered = dict(listed)
            return [RemoteFile(name=name, size=len(data), mtime=0) for name, data in listed]
        assert self.sftp is not None
        settle = self.sftp.options.stable_for.seconds
        return [f for f in (await self.sftp.listing()).files if time.time() - f.mtime >= settle]

    async def fetch_report(self, remote: RemoteFile, local_path: str) -> Fetched:
        """Download one report; raises FileRefused (over the pain.002 bound or max_file_size, a bad name) or
        FileChanged (still being written) for that file alone, or a network error."""
        if self.rest is not None:
            data = self._offered.get(remote.name, b"")
            if len(data) > REPORT_MAX_BYTES:
                raise FileRefused(self.name, f"{remote.name}: {len(data)} bytes is over the pain.002 bound"
                                             f" {REPORT_MAX_BYTES}")
            with open(local_path, "wb") as out:  # noqa: ASYNC230 - a report already in memory
                out.write(data)
            return Fetched(path=local_path, sha256=hashlib.sha256(data).digest(), size=len(data))
        assert self.sftp is not None
        return await self.sftp.fetch(remote, local_path)

    async def done_report(self, remote: RemoteFile) -> None:
        """Stored: the bank may stop offering it (SFTP: moved to archive/; raises MoveRefused if it may not)."""
        if self.rest is not None:
            ctx = CallContext(trace_id=uuid.uuid4().hex, timeout=self.config.limits.call_timeout.seconds)
            await self.rest.ack_report(remote.name, ctx)
            self._offered.pop(remote.name, None)
            return
        assert self.sftp is not None
        await self.sftp.acknowledge(remote, ok=True)

    async def refuse_report(self, remote: RemoteFile, reason: str) -> str | None:
        """A report never to be taken: SFTP moves it to error/ with a reason file (raises MoveRefused if the
        server will not); REST has no such place (None: the caller remembers it)."""
        if self.sftp is None:
            return None
        return await self.sftp.acknowledge(remote, ok=False, reason=reason)

    # -- certificates -------------------------------------------------------------------------------

    def certificate_key(self) -> bytes:
        """Our signing certificate's public key (PEM), which every signature is verified against."""
        return _public_key(self.files.certificate, "certificate")

    def report_signature(self, content: bytes) -> tuple[str, str | None]:
        """(verified | unsigned | invalid | not_checked, the problem if the report must not be applied)."""
        signed = DS.encode() in content
        if not signed:
            if self.files.signed_reports:
                why = "a pinned bank_certificate" if self.files.bank_certificate else "reports_signed"
                return "unsigned", f"the report is not signed, and this connector requires signed reports ({why})"
            return "unsigned", None
        if not self.files.bank_certificate:
            if self.files.signed_reports:
                return "not_checked", "no bank_certificate to check the report's signature against"
            return "not_checked", None
        try:
            verify_enveloped(content, _public_key(self.files.bank_certificate, "bank_certificate"))
        except SignatureInvalid as exc:
            return "invalid", f"the signature does not verify against the bank's pinned certificate: {exc}"
        return "verified", None

    async def healthcheck(self) -> Health:
        if self.rest is not None:
            return await self.rest.healthcheck()
        assert self.sftp is not None
        started = time.monotonic()
        try:
            await self.sftp.stat_dirs(self.files.upload_dir, self.sftp.options.inbox)
        except ConnectorError as exc:
            return Health(ok=False, latency_seconds=time.monotonic() - started, detail=str(exc))
        return Health(ok=True, latency_seconds=time.monotonic() - started)
