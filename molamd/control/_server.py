"""The control socket server: a Unix socket speaking the control protocol, with SO_PEERCRED checks.

Each connection is its own task: a bad, slow or oversized client gets an error reply or a closed connection
and never stalls anything else. A stale socket file left by a dead daemon is replaced; a live daemon's
socket makes the second daemon refuse to start.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

import trio

from .. import audit
from ..db import DatabaseError
from ..logs import log
from ..runtime import Runtime
from ._commands import COMMANDS, Context, parse_args
from ._peercred import Access, access_for, peer_of
from ._protocol import MAX_LINE, ControlError, ErrorCode, decode_request, encode, hello, request_id

logger = logging.getLogger("molamd.control")
_LISTEN_BACKLOG = 128
_SEND_TIMEOUT = 10.0


class AlreadyRunning(Exception):
    """Another live daemon owns the control socket."""


def check_socket_path(path: str) -> None:
    """Raise AlreadyRunning if a live daemon answers on ``path``; remove the file if it is a stale socket."""
    p = Path(path)
    try:
        st = p.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AlreadyRunning(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        p.unlink(missing_ok=True)  # nobody listens: a daemon died without cleaning up
        return
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            p.unlink(missing_ok=True)
            return
        raise AlreadyRunning(f"cannot tell whether {path} is in use: {exc}") from exc
    finally:
        probe.close()
    raise AlreadyRunning(f"another molamd is serving on {path}")


def bind_socket(path: str, mode: int) -> socket.socket:
    check_socket_path(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        sock.listen(_LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class ControlServer:
    name = "control"

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        section = rt.config.control
        self.path = section.socket
        self._mode = int(section.socket_mode, 8)
        self._slots = trio.CapacityLimiter(section.max_clients)
        self._stop = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report ready, serve until stopped; the socket file is removed on the way out."""
        sock = bind_socket(self.path, self._mode)
        inode = os.stat(self.path).st_ino
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        log(logger, logging.INFO, "control socket listening", path=self.path)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._serve, [listener])
                task_status.started()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            try:
                if os.stat(self.path).st_ino == inode:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass

    def request_stop(self) -> None:
        self._stop.set()

    async def _serve(self, stream: trio.abc.Stream) -> None:
        assert isinstance(stream, trio.SocketStream)
        async with stream:
            try:
                peer = peer_of(stream.socket)  # type: ignore[arg-type]
            except OSError:  # pragma: no cover - peer gone before we looked
                return
            access = access_for(peer, self._rt.config.control)
            if access is Access.NONE:
                log(logger, logging.WARNING, "control peer refused", uid=peer.uid, gid=peer.gid, pid=peer.pid)
                await _send(stream, encode({"id": None, "ok": False, "error": {
                    "code": ErrorCode.FORBIDDEN.value,
                    "message": f"uid {peer.uid} is not allowed on this socket (operator or read-only group needed)",
                }}))
                return
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                await _send(stream, encode({"id": None, "ok": False, "error": {
                    "code": ErrorCode.BUSY.value, "message": "too many control clients; try again"}}))
                return
            try:
                await _send(stream, hello(self._rt.version))
                await self._session(stream, access, audit.identity(peer.uid, peer.pid))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._slots.release()

    async def _session(self, stream: trio.SocketStream, access: Access, who: audit.Identity) -> None:
        buffer = bytearray()
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                if len(buffer) > MAX_LINE:
                    await _error(stream, None, ControlError(
                        ErrorCode.TOO_LONG, f"request line over {MAX_LINE} bytes; closing"))
                    return
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer += chunk
                continue
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            if len(line) > MAX_LINE:
                await _error(stream, None, ControlError(
                    ErrorCode.TOO_LONG, f"request line over {MAX_LINE} bytes; closing"))
                return
            if not line.strip():
                continue
            if not await self._one(stream, line, access, who):
                return

    async def _one(self, stream: trio.SocketStream, line: bytes, access: Access, who: audit.Identity) -> bool:
        """Handle one request line; False when the connection should end (after a stream).

        Every operator command that got past its argument check leaves one audit row with the caller's identity,
        whether it succeeded or not.
        """
        rid: Any = None
        ctx = Context(rt=self._rt, who=who)
        audited: tuple[str, dict[str, Any]] | None = None
        metrics = self._rt.metrics.control_requests
        cmd_label = "invalid"
        try:
            request = decode_request(line)
            rid = request.id
            command = COMMANDS.get(request.cmd)
            if command is None:
                raise ControlError(
                    ErrorCode.UNKNOWN_COMMAND,
                    f"unknown command {request.cmd[:64]!r}; known: {', '.join(sorted(COMMANDS))}",
                )
            cmd_label = command.name
            if command.write and access is not Access.OPERATE:
                raise ControlError(ErrorCode.FORBIDDEN, f"{command.name} needs operator access; you may only read")
            args = parse_args(command, request.args)
            if command.write:
                audited = (command.name, dict(request.args))
            if command.stream is not None:
                await _send(stream, encode({"id": rid, "ok": True, "result": {"streaming": True}}))
                await self._stream(stream, rid, command.stream(ctx, args))
                metrics.labels(cmd_label, "ok").inc()
                return False
            assert command.handler is not None
            started = trio.current_time()
            result = await command.handler(ctx, args)
            self._rt.metrics.control_duration.labels(cmd_label).observe(trio.current_time() - started)
        except ControlError as exc:
            metrics.labels(cmd_label, exc.code.value).inc()
            if audited is not None:
                await self._audit(who, *audited, ok=False, detail=f"{exc.code.value}: {exc}")
            if rid is None:
                rid = request_id(line)
            await _error(stream, rid, exc)
            return exc.code is not ErrorCode.TOO_LONG
        except Exception as exc:
            logger.exception("control command failed")
            metrics.labels(cmd_label, ErrorCode.INTERNAL.value).inc()
            if audited is not None:
                await self._audit(who, *audited, ok=False, detail=f"internal: {type(exc).__name__}: {exc}")
            await _error(stream, rid, ControlError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
            return True
        metrics.labels(cmd_label, "ok").inc()
        if audited is not None:
            await self._audit(who, *audited, ok=True)
        await _send(stream, encode({"id": rid, "ok": True, "result": result}))
        return True

    async def _audit(self, who: audit.Identity, command: str, arguments: dict[str, Any], *, ok: bool,
                     detail: str | None = None) -> None:
        """The operator action's audit row; with the database away it goes to the log instead, in full."""
        rt = self._rt
        target = arguments.get("name") or arguments.get("id")
        try:
            await rt.db.statement(lambda c: audit.operator_action(
                c, rt.host_id, who, command, arguments, ok=ok, detail=detail,
                target=None if target is None else str(target)))
        except DatabaseError as exc:
            log(logger, logging.ERROR, "operator action not audited in the database (it is away)",
                command=command, who=who.label, arguments=audit.masked(arguments), ok=ok, detail=detail,
                reason=str(exc))

    async def _stream(self, stream: trio.SocketStream, rid: Any, events: Any) -> None:
        async with trio.open_nursery() as nursery:

            async def until_client_closes() -> None:
                while await stream.receive_some(4096):
                    pass  # a watching client has nothing more to say; anything it sends is ignored
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_client_closes)
            try:
                async for event in events:
                    await _send(stream, encode({"id": rid, "event": event}))
            except ControlError as exc:
                await _error(stream, rid, exc)
            nursery.cancel_scope.cancel()


async def _send(stream: trio.SocketStream, data: bytes) -> None:
    with trio.move_on_after(_SEND_TIMEOUT) as scope:
        await stream.send_all(data)
    if scope.cancelled_caught:
        raise trio.BrokenResourceError("control client is not reading")


async def _error(stream: trio.SocketStream, rid: Any, exc: ControlError) -> None:
    await _send(stream, encode({"id": rid, "ok": False, "error": exc.to_wire()}))
