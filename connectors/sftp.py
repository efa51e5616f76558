"""Statement files over SFTP (kinds ``mt940-sftp``, ``csv-sftp``, ``camt053-sftp``): list, fetch, acknowledge.

asyncssh runs in the process's asyncio thread (``_asyncio_bridge``); each trio-facing method here runs one
whole coroutine there. Host keys are pinned (``known_hosts``): an unknown or changed key is refused. Only
regular files (or symlinks that resolve inside the inbox) whose names match the patterns are offered; a name
with a path separator, ``..`` or a control character is refused. Downloads go to a local spool file in chunks,
so cancellation takes effect between chunks, and the size is capped (so is a listing's length). A file whose
size or mtime changes during the download is reported as changed and tried again later. Moving a file to
``archive/`` or ``error/`` is the caller's last step, after its database commit.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
import stat
import time
from typing import Any, ClassVar

import asyncssh
import msgspec

from ._asyncio_bridge import shared_loop
from ._contract import Capability, ConnectorConfig, Health
from ._errors import Auth, BadResponse, ConnectorError, Network, Timeout, Validation
from ._values import Duration, Secret

FORMATS = {"mt940-sftp": "mt940", "csv-sftp": "csv", "camt053-sftp": "camt053"}


class SftpOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[connectors.sftp]``: where the bank drops its statement files and how to reach it."""

    host: str
    port: int = 22
    username: str
    password: Secret | None = None
    private_key: Secret | None = None  # OpenSSH or PEM private key text
    known_hosts: str  # path to a known_hosts file pinning the server's key
    inbox: str = "/outgoing"
    archive: str = "/outgoing/archive"
    error: str = "/outgoing/error"
    patterns: list[str] = msgspec.field(default_factory=lambda: ["*"])
    done_marker: str = ""  # e.g. ".done": a file is ready once NAME.done exists (else: size and mtime settle)
    stable_for: Duration = msgspec.field(default_factory=lambda: Duration("2s"))
    max_file_size: int = 256 * 1024 * 1024
    max_listing: int = 10_000  # inbox entries read before the listing is a bad response
    chunk_size: int = 256 * 1024
    connect_timeout: Duration = msgspec.field(default_factory=lambda: Duration("15s"))
    poll_interval: Duration = msgspec.field(default_factory=lambda: Duration("30s"))
    idle_backoff_max: Duration = msgspec.field(default_factory=lambda: Duration("5m"))
    error_backoff_max: Duration = msgspec.field(default_factory=lambda: Duration("5m"))
    spool_dir: str = ""  # local directory for downloads in progress (default: the system temp dir)
    csv_profile: str = "molamd"  # csv-sftp: a [csv_profiles.NAME], or the built-in "molamd"


class SftpSourceConfig(ConnectorConfig, frozen=True, kw_only=True):
    sftp: SftpOptions

    @property
    def statement_format(self) -> str:
        return FORMATS[self.kind]


class Mt940SftpConfig(SftpSourceConfig, frozen=True, kw_only=True, tag="mt940-sftp"):
    pass


class CsvSftpConfig(SftpSourceConfig, frozen=True, kw_only=True, tag="csv-sftp"):
    pass


class Camt053SftpConfig(SftpSourceConfig, frozen=True, kw_only=True, tag="camt053-sftp"):
    pass


SftpConfig = Mt940SftpConfig | CsvSftpConfig | Camt053SftpConfig


class RemoteFile(msgspec.Struct, frozen=True, kw_only=True):
    """A statement file waiting in the inbox."""

    name: str
    size: int
    mtime: int


class Fetched(msgspec.Struct, frozen=True, kw_only=True):
    """A downloaded file on local disk, with what was measured while it arrived."""

    path: str
    sha256: bytes
    size: int


class FileChanged(Validation):
    """The file changed while it was read: not ready yet, try again at a later poll."""

    code = "file_changed"


class FileRefused(Validation):
    """Never to be downloaded: too big, a bad name, a link out of the inbox."""

    code = "file_refused"


def safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and ".." not in name \
        and not any(ord(c) < 32 or ord(c) == 127 for c in name)


class SftpStatementConnector:
    kind: ClassVar[str] = "sftp"
    offers: ClassVar[frozenset[Capability]] = frozenset({Capability.STATEMENTS, Capability.HEALTH})
    capabilities: frozenset[Capability] = offers

    def __init__(self, config: SftpSourceConfig) -> None:
        self.config = config
        self.options = config.sftp
        self.name = config.name
        self._loop = shared_loop()
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None

    # -- connection ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Nothing to open up front: each operation connects when it needs to (and keeps the session)."""

    async def aclose(self) -> None:
        await self._loop.run(self._close)

    async def _close(self) -> None:
        conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()

    async def _session(self) -> asyncssh.SFTPClient:
        if self._sftp is not None and self._conn is not None and not self._conn.is_closed():
            return self._sftp
        await self._close()
        o = self.options
        keys = [asyncssh.import_private_key(o.private_key.reveal())] if o.private_key else ()
        self._conn = await asyncssh.connect(
            o.host, o.port, username=o.username, password=o.password.reveal() if o.password else None,
            client_keys=keys or None, known_hosts=o.known_hosts, connect_timeout=o.connect_timeout.seconds,
            agent_path=None, config=None, preferred_auth="publickey,password",
        )
        self._sftp = await self._conn.start_sftp_client()
        return self._sftp

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await self._loop.run(fn, *args)
        except ConnectorError:
            raise
        except asyncssh.PermissionDenied as exc:
            raise Auth(self.name, f"SFTP login refused: {exc.reason}") from exc
        except asyncssh.HostKeyNotVerifiable as exc:
            raise Auth(self.name, f"SFTP host key not pinned in known_hosts: {exc.reason}") from exc
        except asyncssh.SFTPError as exc:
            await self._loop.run(self._close)
            raise Network(self.name, f"SFTP error: {exc.reason}") from exc
        except (asyncssh.Error, OSError, EOFError) as exc:
            await self._loop.run(self._close)
            if isinstance(exc, TimeoutError):
                raise Timeout(self.name, "SFTP server did not answer in time") from exc
            raise Network(self.name, f"SFTP connection failed: {exc}") from exc

    # -- the statement operations -------------------------------------------------------------------

    async def list_statements(self) -> list[RemoteFile]:
        """Files in the inbox that match the patterns and are safe to take, oldest first."""
        result: list[RemoteFile] = await self._call(self._list)
        return result

    async def _list(self) -> list[RemoteFile]:
        sftp = await self._session()
        o = self.options
        entries = []
        async for entry in sftp.scandir(o.inbox):  # read in batches: an endless listing stops at the cap
            entries.append(entry)
            if len(entries) > o.max_listing:
                raise BadResponse(self.name, f"{o.inbox}: more than max_listing {o.max_listing} entries")
        names = {e.filename for e in entries if isinstance(e.filename, str)}
        inbox = await sftp.realpath(o.inbox)
        files = []
        for entry in entries:
            name = entry.filename
            if not isinstance(name, str) or name.startswith(".") or not safe_name(name):
                continue
            if o.done_marker and name.endswith(o.done_marker):
                continue
            if not any(fnmatch.fnmatchcase(name, p) for p in o.patterns):
                continue
            if o.done_marker and name + o.done_marker not in names:
                continue
            attrs = entry.attrs
            mode = attrs.permissions or 0
            if stat.S_ISLNK(mode):
                try:
                    target = await sftp.realpath(posixpath.join(o.inbox, name))
                    if posixpath.dirname(target) != inbox:
                        continue  # a link out of the inbox: never followed
                    attrs = await sftp.stat(target)
                except asyncssh.SFTPNoSuchFile:
                    continue  # a dangling link, or one the server will not resolve
                mode = attrs.permissions or 0
            if not stat.S_ISREG(mode):
                continue
            files.append(RemoteFile(name=name, size=attrs.size or 0, mtime=int(attrs.mtime or 0)))
        files.sort(key=lambda f: (f.mtime, f.name))
        return files

    async def fetch(self, remote: RemoteFile, local_path: str) -> Fetched:
        """Download into ``local_path`` in chunks; raises FileRefused (too big), FileChanged, or a network error."""
        if not safe_name(remote.name):
            raise FileRefused(self.name, f"{remote.name!r}: not a plain file name")
        if remote.size > self.options.max_file_size:
            raise FileRefused(self.name, f"{remote.name}: {remote.size} bytes is over max_file_size "
                                         f"{self.options.max_file_size}")
        fetched: Fetched = await self._call(self._fetch, remote, local_path)
        return fetched

    async def _fetch(self, remote: RemoteFile, local_path: str) -> Fetched:
        sftp = await self._session()
        o = self.options
        path = posixpath.join(o.inbox, remote.name)
        digest = hashlib.sha256()
        size = 0
        async with sftp.open(path, "rb") as src:
            # The asyncio thread is ours alone: a local write between network reads blocks nobody else.
            with open(local_path, "wb") as out:  # noqa: ASYNC230
                while True:
                    chunk: bytes = await src.read(o.chunk_size, size)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > o.max_file_size:
                        raise FileRefused(self.name, f"{remote.name}: more than max_file_size {o.max_file_size}")
                    digest.update(chunk)
                    out.write(chunk)
        after = await sftp.stat(path)
        if size != remote.size or after.size != remote.size or int(after.mtime or 0) != remote.mtime:
            raise FileChanged(self.name, f"{remote.name}: changed while it was read ({remote.size} bytes listed, "
                                         f"{size} read, {after.size} now)")
        return Fetched(path=local_path, sha256=digest.digest(), size=size)

    async def acknowledge(self, remote: RemoteFile, *, ok: bool, reason: str | None = None) -> str:
        """Move the file to archive/ (ok) or error/ with a reason file; returns where it went."""
        moved: str = await self._call(self._acknowledge, remote, ok, reason)
        return moved

    async def _acknowledge(self, remote: RemoteFile, ok: bool, reason: str | None) -> str:
        sftp = await self._session()
        o = self.options
        folder = o.archive if ok else o.error
        target = posixpath.join(folder, remote.name)
        if await sftp.exists(target):  # the same name again (a bank re-sent it): keep both
            target = posixpath.join(folder, f"{remote.name}.{time.strftime('%Y%m%dT%H%M%S')}.{remote.mtime}")
        await sftp.rename(posixpath.join(o.inbox, remote.name), target)
        if o.done_marker:
            marker = posixpath.join(o.inbox, remote.name + o.done_marker)
            if await sftp.exists(marker):
                await sftp.remove(marker)
        if not ok and reason:
            async with sftp.open(target + ".reason.txt", "wb") as f:
                await f.write(reason.encode() + b"\n")
        return target

    async def healthcheck(self) -> Health:
        started = time.monotonic()
        try:
            await self._call(self._stat_inbox)
        except ConnectorError as exc:
            return Health(ok=False, latency_seconds=time.monotonic() - started, detail=str(exc))
        return Health(ok=True, latency_seconds=time.monotonic() - started)

    async def _stat_inbox(self) -> None:
        sftp = await self._session()
        await sftp.stat(self.options.inbox)
