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

import contextlib
import fnmatch
import hashlib
import posixpath
import stat
import time
import warnings
from typing import Any, ClassVar

import msgspec
from cryptography.utils import CryptographyDeprecationWarning

# asyncssh still names DSA keys, which recent cryptography releases deprecate at import: a warning on every molamd
# command's stderr that no operator can act on (we never accept DSA host keys or user keys).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import asyncssh

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
    # statement sources: a file is expected at least this often; longer without one alerts (molamd_statement_*)
    expected_every: Duration = msgspec.field(default_factory=lambda: Duration("26h"))


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


class Skipped(msgspec.Struct, frozen=True, kw_only=True):
    """An inbox entry that is never offered, and why: ``unsafe_name``, ``link_outside``, ``dangling_link``,
    ``not_a_file`` or ``unreadable`` (a link into a directory we may not enter, a loop)."""

    name: str  # shown escaped: it may hold control characters
    reason: str
    detail: str = ""


class Listing(msgspec.Struct, frozen=True, kw_only=True):
    files: list[RemoteFile]  # safe to take, oldest first
    skipped: list[Skipped]


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


class MoveRefused(Validation):
    """The server answered no to moving a file out of the inbox (a read-only drop, a rename it denies)."""

    code = "move_refused"


class UploadRefused(Validation):
    """The server refused the upload (a rename it denies, our name taken by another file): nothing of ours is
    in place under the final name."""

    code = "upload_refused"


class Uploaded(msgspec.Struct, frozen=True, kw_only=True):
    """A file in place at the bank, checked after its rename; ``detail`` says how if not by reading it back."""

    path: str
    detail: str = ""


class SourceMisconfigured(Validation):
    """The source's own settings are wrong here (a known_hosts file that is missing or pins nothing for the
    host and port): fix the config, not the network."""

    code = "source_config"


def _shown(text: str) -> str:
    """A remote name or message made safe for logs: control characters as escapes, at most 200 characters."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:200])


def _for_port(line: str, port: int) -> str | None:
    """A known_hosts line cut down to its host patterns that apply to ``port`` as OpenSSH reads them (a plain
    pattern means port 22 only, ``[host]:port`` that port), or None when none does."""
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return None
    at = 1 if fields[0].startswith("@") else 0
    if len(fields) <= at:
        return None
    if fields[at].startswith("|1|"):
        return line  # hashed: OpenSSH hashes [host]:port for other ports, so the hash itself is port-specific
    kept = []
    for pattern in fields[at].split(","):
        bare = pattern.lstrip("!")
        if bare.startswith("[") and "]:" in bare:
            if bare.endswith(f"]:{port}"):
                kept.append(pattern)
        elif port == 22:
            kept.append(pattern)
    if not kept or all(p.startswith("!") for p in kept):
        return None
    return " ".join([*fields[:at], ",".join(kept), *fields[at + 1:]])


def safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and ".." not in name \
        and not any(ord(c) < 32 or ord(c) == 127 for c in name)


class SftpClient:
    """One pinned, lazily opened SFTP session to a bank, its errors mapped to the connector error tree."""

    def __init__(self, name: str, options: SftpOptions) -> None:
        self.name = name
        self.options = options
        self._loop = shared_loop()
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None

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
        # The password answers keyboard-interactive too: many banks' servers offer only that (PAM).
        self._conn = await asyncssh.connect(
            o.host, o.port, username=o.username, password=o.password.reveal() if o.password else None,
            client_keys=keys or None, known_hosts=self._known_hosts(),
            connect_timeout=o.connect_timeout.seconds, agent_path=None, config=None,
            preferred_auth="publickey,keyboard-interactive,password",
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

    def _known_hosts(self) -> asyncssh.SSHKnownHosts:
        """The pinned keys for this host and port, as OpenSSH's client reads them: a plain ``host`` line pins
        port 22 only; any other port needs ``[host]:port`` (hashed lines are port-specific already)."""
        o = self.options
        try:
            with open(o.known_hosts, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceMisconfigured(self.name, f"known_hosts {o.known_hosts}: cannot read it: {exc}") from None
        kept = [cut for cut in (_for_port(line, o.port) for line in lines) if cut is not None]
        if not kept:
            raise SourceMisconfigured(self.name, f"known_hosts {o.known_hosts} pins no key for port {o.port}"
                                                 f" (a port other than 22 needs a [{o.host}]:{o.port} entry)")
        return asyncssh.import_known_hosts("\n".join(kept) + "\n")

    # -- the inbox ----------------------------------------------------------------------------------

    async def list_statements(self) -> list[RemoteFile]:
        """Files in the inbox that match the patterns and are safe to take, oldest first."""
        return (await self.listing()).files

    async def listing(self) -> Listing:
        """The files to take, and the entries skipped with the reason for each."""
        result: Listing = await self._call(self._list)
        return result

    async def _list(self) -> Listing:
        sftp = await self._session()
        o = self.options
        entries = []
        async for entry in sftp.scandir(o.inbox):  # read in batches: an endless listing stops at the cap
            entries.append(entry)
            if len(entries) > o.max_listing:
                raise BadResponse(self.name, f"{o.inbox}: more than max_listing {o.max_listing} entries")
        names = {e.filename for e in entries if isinstance(e.filename, str)}
        inbox = await sftp.realpath(o.inbox)
        files, skipped = [], []
        for entry in entries:
            name = entry.filename
            if not isinstance(name, str):
                name = bytes(name).decode("utf-8", "backslashreplace")
            if name in (".", "..") or (name.startswith(".") and safe_name(name)):
                continue  # ours to ignore quietly: dot files, and the directory itself
            if not safe_name(name):
                skipped.append(Skipped(name=_shown(name), reason="unsafe_name"))
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
                        skipped.append(Skipped(name=name, reason="link_outside", detail=_shown(target)))
                        continue  # a link out of the inbox: never followed
                    attrs = await sftp.stat(target)
                except asyncssh.SFTPNoSuchFile:
                    skipped.append(Skipped(name=name, reason="dangling_link"))
                    continue
                except asyncssh.SFTPError as exc:  # a directory we may not enter, a loop: this entry only
                    skipped.append(Skipped(name=name, reason="unreadable", detail=_shown(exc.reason)))
                    continue
                mode = attrs.permissions or 0
            if not stat.S_ISREG(mode):
                skipped.append(Skipped(name=name, reason="not_a_file"))
                continue
            files.append(RemoteFile(name=name, size=attrs.size or 0, mtime=int(attrs.mtime or 0)))
        files.sort(key=lambda f: (f.mtime, f.name))
        return Listing(files=files, skipped=skipped)

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
        try:
            await sftp.rename(posixpath.join(o.inbox, remote.name), target)
        except asyncssh.SFTPError as exc:  # the server said no (not a lost connection): this file only
            raise MoveRefused(self.name, f"{remote.name}: cannot move it to {folder}: {exc.reason}") from None
        if o.done_marker:
            marker = posixpath.join(o.inbox, remote.name + o.done_marker)
            if await sftp.exists(marker):
                await sftp.remove(marker)
        if not ok and reason:
            async with sftp.open(target + ".reason.txt", "wb") as f:
                await f.write(reason.encode() + b"\n")
        return target

    # -- uploads ------------------------------------------------------------------------------------

    async def upload(self, directory: str, name: str, content: bytes) -> Uploaded:
        """Put ``content`` at ``directory/name``: written under a temporary name, renamed into place, then
        checked (size and SHA-256 read back). A file already there with these bytes is a finished upload (a
        crash after the rename); one with other bytes is never overwritten (UploadRefused)."""
        if not safe_name(name):
            raise UploadRefused(self.name, f"{name!r}: not a plain file name", reached=False)
        uploaded: Uploaded = await self._call(self._upload, directory, name, content)
        return uploaded

    async def _upload(self, directory: str, name: str, content: bytes) -> Uploaded:
        sftp = await self._session()
        final = posixpath.join(directory, name)
        partial = posixpath.join(directory, f".{name}.part")
        digest = hashlib.sha256(content).digest()
        if await sftp.exists(final):
            if await self._holds(sftp, final, content, digest):
                return Uploaded(path=final, detail="already in place (an earlier upload)")
            raise UploadRefused(self.name, f"{final}: another file already has this name; not overwritten",
                                reached=False)
        async with sftp.open(partial, "wb") as out:
            for start in range(0, len(content), self.options.chunk_size):
                await out.write(content[start:start + self.options.chunk_size], start)
        try:
            await sftp.rename(partial, final)
        except asyncssh.SFTPError as exc:  # the server said no: nothing is in place under the final name
            with contextlib.suppress(asyncssh.SFTPError):
                await sftp.remove(partial)
            raise UploadRefused(self.name, f"{final}: rename refused: {_shown(exc.reason)}", reached=False) from None
        try:
            if await self._holds(sftp, final, content, digest):
                return Uploaded(path=final)
        except asyncssh.SFTPNoSuchFile:
            # Banks take files from their inbox at once: renamed into place, and gone by the time we looked.
            return Uploaded(path=final, detail="taken from the inbox before it could be read back")
        raise BadResponse(self.name, f"{final}: read back differs from what was written")

    async def _holds(self, sftp: asyncssh.SFTPClient, path: str, content: bytes, digest: bytes) -> bool:
        attrs = await sftp.stat(path)
        if attrs.size != len(content):
            return False
        found = hashlib.sha256()
        async with sftp.open(path, "rb") as src:
            offset = 0
            while True:
                chunk: bytes = await src.read(self.options.chunk_size, offset)
                if not chunk:
                    break
                found.update(chunk)
                offset += len(chunk)
        return found.digest() == digest

    async def stat_dirs(self, *paths: str) -> None:
        """Each directory there (a health check of a drop with more than one)."""
        await self._call(self._stat_dirs, paths)

    async def _stat_dirs(self, paths: tuple[str, ...]) -> None:
        sftp = await self._session()
        for path in paths:
            await sftp.stat(path)

    async def probe_writable(self, directory: str, name: str) -> None:
        """Write ``name`` into ``directory`` and remove it again (``molamd doctor``: may we write there?)."""
        await self._call(self._probe_writable, directory, name)

    async def _probe_writable(self, directory: str, name: str) -> None:
        sftp = await self._session()
        path = f"{directory.rstrip('/')}/{name}"
        async with sftp.open(path, "wb") as f:
            await f.write(b"molamd doctor: this file is removed at once\n")
        await sftp.remove(path)

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


class SftpStatementConnector(SftpClient):
    kind: ClassVar[str] = "sftp"
    offers: ClassVar[frozenset[Capability]] = frozenset({Capability.STATEMENTS, Capability.HEALTH})
    capabilities: frozenset[Capability] = offers

    def __init__(self, config: SftpSourceConfig) -> None:
        super().__init__(config.name, config.sftp)
        self.config = config
