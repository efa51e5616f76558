"""Values a FileBatcher exchanges with the payment file store (implemented by molamd)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from connectors import CallRecord, PayoutSlice, Prepared
from connectors.iso20022 import StatusReport


class Waiting(msgspec.Struct, frozen=True, kw_only=True):
    """Batched slices of one connector that would go into one file: one debtor account, one currency."""

    debtor_account: str
    currency: str
    count: int
    oldest_seconds: float  # how long the oldest of them has waited


class Submission(msgspec.Struct, frozen=True, kw_only=True):
    """A recorded file to upload: exactly the bytes in the database."""

    file_id: int
    msg_id: str
    file_name: str
    content: bytes
    signature_name: str | None
    signature: bytes | None
    transactions: int
    upload_attempts: int


class Recorded(msgspec.Struct, frozen=True, kw_only=True):
    """What closing a file did: the file recorded (None when no slice was left) and the slices refused."""

    file: Submission | None
    refused: dict[int, str]  # slice id -> why it cannot go in any file (it is now dead)


# Builds the file's bytes for a file id and its slices; runs inside the recording transaction. Raises
# PaymentFileError naming the slices at fault (they are refused and the file built without them).
Build = Callable[[int, Sequence[PayoutSlice], dt.datetime], Prepared]


class ReportApplied(msgspec.Struct, frozen=True, kw_only=True):
    report_id: int | None  # None: the same bytes were stored before (a re-delivered report)
    file_id: int | None
    flag: str | None  # why a person should look, or None
    detail: str | None = None
    applied: int = 0  # slices whose state changed
    settled: int = 0
    failed: int = 0
    first_after: float | None = None  # seconds from upload, when this is the file's first report
    final_after: float | None = None  # ... when this report left every slice of the file final


class ReportIn(msgspec.Struct, frozen=True, kw_only=True):
    """A status report as received, with what could be made of it."""

    connector: str
    remote_name: str
    content: bytes
    sha256: bytes
    report: StatusReport | None  # None: it could not be parsed (``problem`` says why)
    signature: str  # verified, unsigned, invalid, not_checked
    problem: str | None = None  # malformed, or the signature failing: stored, flagged, nothing applied


class FileStore(Protocol):
    async def waiting(self, connector: str) -> list[Waiting]: ...

    async def record_file(self, connector: str, version: str, group: Waiting, limit: int, build: Build,
                          lease: float) -> Recorded:
        """In one transaction: the group's batched slices (up to ``limit``), the file built from them and
        recorded (taken for its upload by this incarnation for ``lease`` seconds), and the slices moved to
        'sent' in it."""
        ...

    async def to_upload(self, connector: str, lease: float) -> list[Submission]:
        """Recorded files of this connector not yet known to be at the bank, taken for ``lease`` seconds (at
        once when the incarnation that held one is gone)."""
        ...

    async def uploaded(self, file_id: int, detail: str, record: CallRecord) -> None: ...

    async def upload_failed(self, file_id: int, error: str, retry_in: float, record: CallRecord | None) -> None: ...

    async def known_report(self, connector: str, sha256: bytes) -> bool: ...

    async def record_report(self, report: ReportIn) -> ReportApplied: ...
