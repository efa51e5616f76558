"""The control socket server: a Unix socket speaking the control protocol, with SO_PEERCRED checks.

Each connection is its own task: a bad, slow or oversized client gets an error reply or a closed connection
and never stalls anything else. A request line must be complete within ``idle_timeout`` of the connection or
of the previous reply (streams excepted, once started). Connections are counted per uid
(``max_clients_per_uid``, root unlimited), and the last ``reserved_clients`` of ``max_clients`` are kept for
peers with operator access, so readers can never lock root out. Refused peers are logged at a bounded rate.
A stale socket file left by a dead daemon is replaced; a live daemon's socket makes the second daemon refuse
to start.
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
from ._peercred import Access, Peer, access_for, peer_of
from ._protocol import MAX_LINE, ControlError, ErrorCode, decode_request, encode, error_line, hello, request_id
from ._socket_acl import grant_groups

logger = logging.getLogger("molamd.control")
_LISTEN_BACKLOG = 128
_SEND_TIMEOUT = 10.0
_REFUSAL_LOG_INTERVAL = 10.0  # at most one "refused" log line per this many seconds; the rest are counted


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
        self._section = section
        self._open = 0
        self._per_uid: dict[int, int] = {}
        self._stop = trio.Event()
        self._refusals_logged_at = -_REFUSAL_LOG_INTERVAL
        self._refusals_unlogged = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report ready, serve until stopped; the socket file is removed on the way out."""
        sock = bind_socket(self.path, self._mode)
        for problem in grant_groups(self.path, self._mode, [self._section.operator_group,
                                                            self._section.readonly_group]):
            log(logger, logging.ERROR, "control socket not reachable by a configured group", problem=problem)
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
        """One connection, whatever happens in it: a client gone (even before its refusal is written) or a fault
        of ours closes this connection and nothing else."""
        assert isinstance(stream, trio.SocketStream)
        async with stream:
            try:
                await self._connection(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away
            except Exception:  # the last guard: one connection's fault never reaches the server
                logger.exception("control connection failed; closed")

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            peer = peer_of(stream.socket)  # type: ignore[arg-type]
        except OSError:  # pragma: no cover - peer gone before we looked
            return
        access = access_for(peer, self._rt.config.control)
        if access is Access.NONE:
            self._refused(peer, "not allowed")
            await _refuse(stream, ErrorCode.FORBIDDEN,
                          f"uid {peer.uid} is not allowed on this socket (operator or read-only group needed)")
            return
        full = self._full(peer, access)
        if full is not None:
            self._refused(peer, full)
            await _refuse(stream, ErrorCode.BUSY, f"{full}; try again")
            return
        self._open += 1
        self._per_uid[peer.uid] = self._per_uid.get(peer.uid, 0) + 1
        try:
            await _send(stream, hello(self._rt.version))
            await self._session(stream, access, audit.identity(peer.uid, peer.pid))
        finally:
            self._open -= 1
            self._per_uid[peer.uid] -= 1
            if not self._per_uid[peer.uid]:
                del self._per_uid[peer.uid]

    def _full(self, peer: Peer, access: Access) -> str | None:
        """Why this peer gets no connection now, or None."""
        section = self._section
        if self._open >= section.max_clients:
            return f"too many control clients ({section.max_clients})"
        if access is not Access.OPERATE and self._open >= section.max_clients - section.reserved:
            return f"too many control clients; the last {section.reserved} connections are kept for operators"
        mine = self._per_uid.get(peer.uid, 0)
        if peer.uid != 0 and mine >= section.per_uid:
            return f"uid {peer.uid} has {mine} control connections open (max_clients_per_uid)"
        return None

    def _refused(self, peer: Peer, why: str) -> None:
        """Log a refused peer, at most once per _REFUSAL_LOG_INTERVAL; the others are counted into the next line."""
        self._rt.metrics.control_requests.labels("connect", "refused").inc()
        now = trio.current_time()
        if now - self._refusals_logged_at < _REFUSAL_LOG_INTERVAL:
            self._refusals_unlogged += 1
            return
        log(logger, logging.WARNING, "control peer refused", uid=peer.uid, gid=peer.gid, pid=peer.pid, reason=why,
            refused_since_last_line=self._refusals_unlogged)
        self._refusals_logged_at, self._refusals_unlogged = now, 0

    async def _session(self, stream: trio.SocketStream, access: Access, who: audit.Identity) -> None:
        buffer = bytearray()
        idle = self._section.idle_timeout.seconds
        deadline = trio.current_time() + idle
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                if len(buffer) > MAX_LINE:
                    await _error(stream, None, ControlError(
                        ErrorCode.TOO_LONG, f"request line over {MAX_LINE} bytes; closing"))
                    return
                with trio.move_on_at(deadline):
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buffer += chunk
                    continue
                await _error(stream, None, ControlError(
                    ErrorCode.TIMEOUT, f"no complete request line within idle_timeout {idle:g}s; closing"))
                return
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
            deadline = trio.current_time() + idle

    async def _one(self, stream: trio.SocketStream, line: bytes, access: Access, who: audit.Identity) -> bool:
        """Handle one request line; False when the connection should end (after a stream).

        Every operator command that got past its argument check leaves one audit row with the caller's identity,
        whether it succeeded or not.
        """
        rid: Any = None
        ctx = Context(rt=self._rt, who=who, operator=access is Access.OPERATE)
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
        try:
            reply = encode({"id": rid, "ok": True, "result": result})
        except Exception as exc:  # a result the encoder cannot write is our bug, not the client's
            logger.exception("control reply could not be encoded", extra={"fields": {"command": cmd_label}})
            reply = error_line(rid, ControlError(
                ErrorCode.INTERNAL, f"{cmd_label}: the reply could not be encoded ({type(exc).__name__})"))
        await _send(stream, reply)
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
        except Exception:  # a row the database refuses must not take the reply down with it
            logger.exception("operator action not audited in the database (the row was refused)",
                             extra={"fields": {"command": command, "who": who.label}})

    async def _stream(self, stream: trio.SocketStream, rid: Any, events: Any) -> None:
        """Send events until the client closes or goes away (a reset included: that ends the stream, no more)."""
        async with trio.open_nursery() as nursery:

            async def until_client_closes() -> None:
                try:
                    while await stream.receive_some(4096):
                        pass  # a watching client has nothing more to say; anything it sends is ignored
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_client_closes)
            try:
                async for event in events:
                    await _send(stream, encode({"id": rid, "event": event}))
            except ControlError as exc:
                await _error(stream, rid, exc)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            nursery.cancel_scope.cancel()


async def _send(stream: trio.SocketStream, data: bytes) -> None:
    with trio.move_on_after(_SEND_TIMEOUT) as scope:
        await stream.send_all(data)
    if scope.cancelled_caught:
        raise trio.BrokenResourceError("control client is not reading")


async def _refuse(stream: trio.SocketStream, code: ErrorCode, message: str) -> None:
    await _send(stream, error_line(None, ControlError(code, message)))


async def _error(stream: trio.SocketStream, rid: Any, exc: ControlError) -> None:
    await _send(stream, error_line(rid, exc))
