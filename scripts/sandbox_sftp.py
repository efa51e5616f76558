"""A bank's SFTP server for the demo and the tests: asyncssh, chrooted to a directory, pinned host key.

Run it as a program (the demo does) or start it in-process with ``SandboxSftp(root).start()``, which runs its
asyncio loop in a thread. Faults for tests: ``drop_after`` (bytes served before the connection is aborted,
once), ``drop_after_rename`` (renames answered by a dropped connection), ``take_at_once`` (a file renamed into
``inbox/`` is gone to ``taken/`` before the client can look), and whatever a test does to the files themselves.

    python scripts/sandbox_sftp.py --root DIR --port 2222 --user bank --password secret --state DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():  # asyncssh names DSA, which cryptography deprecates at import: noise, no use
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import asyncssh

INBOX = "outgoing"


class _Auth(asyncssh.SSHServer):
    def __init__(self, server: SandboxSftp) -> None:
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._server.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self._conn)  # type: ignore[arg-type]

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == self._server.user and password == self._server.password

    def public_key_auth_supported(self) -> bool:
        return self._server.client_key is not None

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        allowed = self._server.client_key
        return username == self._server.user and allowed is not None and \
            key.export_public_key() == allowed.export_public_key()


class _Sftp(asyncssh.SFTPServer):
    def __init__(self, chan: asyncssh.SSHServerChannel[Any], server: SandboxSftp) -> None:
        super().__init__(chan, chroot=str(server.root).encode())
        self._server = server
        self._chan = chan

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        if self._server.on_read is not None:
            self._server.on_read(offset)
        data: bytes = super().read(file_obj, offset, size)  # type: ignore[arg-type]
        limit = self._server.drop_after
        if limit is not None and offset + len(data) >= limit:
            self._server.drop_after = None  # once
            self._server.drops += 1
            self._chan.get_extra_info("connection").abort()
            raise asyncssh.SFTPConnectionLost("sandbox: connection dropped mid-transfer")
        return data

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        server = self._server
        if server.refuse_rename:
            server.refuse_rename -= 1
            raise asyncssh.SFTPPermissionDenied("sandbox: rename refused")
        if server.drop_before_rename:
            server.drop_before_rename -= 1
            server.drops += 1
            self._chan.get_extra_info("connection").abort()
            raise asyncssh.SFTPConnectionLost("sandbox: connection dropped before the rename")
        super().rename(oldpath, newpath)
        if server.take_at_once and server.taken is not None:
            # Banks take a file from their inbox the moment it lands under its final name.
            local = Path(self.map_path(newpath).decode())
            if local.parent.name == "inbox":
                os.rename(local, server.taken / local.name)
        if server.drop_after_rename:
            server.drop_after_rename -= 1
            server.drops += 1
            self._chan.get_extra_info("connection").abort()
            raise asyncssh.SFTPConnectionLost("sandbox: connection dropped after the rename")


class SandboxSftp:
    def __init__(self, root: Path, *, state: Path, user: str = "bank", password: str = "sandbox",
                 host: str = "127.0.0.1", port: int = 0, client_key: asyncssh.SSHKey | None = None) -> None:
        self.root = Path(root)
        self.state = Path(state)
        self.user, self.password, self.host, self.port = user, password, host, port
        self.client_key = client_key
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self.drop_after: int | None = None
        self.drops = 0
        self.on_read: Callable[[int], None] | None = None  # called with each read's offset (a test's fault)
        self.drop_after_rename = 0  # renames after which the connection is aborted (the reply never comes)
        self.drop_before_rename = 0  # renames not done: the connection is aborted instead (after the write)
        self.refuse_rename = 0  # renames answered "permission denied"
        self.take_at_once = False  # a file renamed into inbox/ is moved to taken/ at once
        self.taken: Path | None = None
        for sub in (INBOX, f"{INBOX}/archive", f"{INBOX}/error", "incoming"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        key_path = self.state / "ssh_host_ed25519_key"
        if not key_path.exists():
            asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key_path))
            os.chmod(key_path, 0o600)
        self.host_key = asyncssh.read_private_key(str(key_path))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncssh.SSHAcceptor | None = None
        self._thread: threading.Thread | None = None

    @property
    def inbox(self) -> Path:
        return self.root / INBOX

    def known_hosts(self, path: Path) -> Path:
        """Write a known_hosts file pinning this server's key; returns its path."""
        key = self.host_key.export_public_key().decode().strip()
        path.write_text(f"[{self.host}]:{self.port} {key}\n")
        return path

    async def listen(self) -> None:
        self._server = await asyncssh.create_server(
            lambda: _Auth(self), self.host, self.port, server_host_keys=[self.host_key],
            sftp_factory=lambda chan: _Sftp(chan, self), allow_scp=False)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> SandboxSftp:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.listen())
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name="sandbox-sftp", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop serving; a second call does nothing."""
        loop, self._loop = self._loop, None
        if loop is None or loop.is_closed():
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            for conn in list(self.connections):
                conn.close()
                await conn.wait_closed()
            await asyncio.sleep(0)  # let the session tasks see their channels close
            loop.stop()

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(close(), loop)
        if self._thread is not None:
            self._thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description="The sandbox bank's SFTP server.")
    parser.add_argument("--root", required=True)
    parser.add_argument("--state", required=True, help="where the host key and known_hosts live")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", default="bank")
    parser.add_argument("--password", default="sandbox")
    parser.add_argument("--drop-after-rename", type=int, default=0,
                        help="abort the connection after this many renames (the client never hears back)")
    parser.add_argument("--take-at-once", action="store_true",
                        help="a file renamed into inbox/ moves to taken/ at once, as banks take their files")
    args = parser.parse_args()
    server = SandboxSftp(Path(args.root), state=Path(args.state), user=args.user, password=args.password,
                         port=args.port)
    server.drop_after_rename = args.drop_after_rename
    if args.take_at_once:
        server.take_at_once, server.taken = True, Path(args.root) / "taken"
        server.taken.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        await server.listen()
        server.known_hosts(Path(args.state) / "known_hosts")
        print(f"sandbox sftp listening on {server.host}:{server.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
