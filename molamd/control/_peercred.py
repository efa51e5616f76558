"""Who is on the other end of the control socket, and what they may do (SO_PEERCRED)."""

from __future__ import annotations

import enum
import grp
import os
import socket
import struct

import msgspec

from ..config import ControlSection


class Access(enum.StrEnum):
    NONE = "none"
    READ = "read"
    OPERATE = "operate"


class Peer(msgspec.Struct, frozen=True):
    pid: int
    uid: int
    gid: int
    groups: frozenset[int]


# Linux >= 4.13; the socket module does not name it on every Python.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_MAX_GROUPS = 1024


def peer_of(sock: socket.socket) -> Peer:
    """The peer's pid/uid/gid (SO_PEERCRED) and supplementary groups (SO_PEERGROUPS, else /proc)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid, frozenset({gid, *_supplementary_groups(sock, pid)}))


def _supplementary_groups(sock: socket.socket, pid: int) -> list[int]:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * _MAX_GROUPS)
        return list(struct.unpack(f"{len(raw) // 4}I", raw))
    except OSError:
        pass  # an older kernel: read them from /proc, which ProtectProc=invisible may hide
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return [int(g) for g in line.split()[1:]]
    except (OSError, ValueError):
        pass  # the peer already exited, or /proc is hidden: judge by its primary gid alone
    return []


def _gid(name: str) -> int | None:
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def access_for(peer: Peer, section: ControlSection, *, own_uid: int | None = None) -> Access:
    """root, the daemon's own user and the operator group operate; the read-only group reads; others nothing."""
    me = os.getuid() if own_uid is None else own_uid
    if peer.uid in (0, me):
        return Access.OPERATE
    operator = _gid(section.operator_group)
    if operator is not None and operator in peer.groups:
        return Access.OPERATE
    reader = _gid(section.readonly_group)
    if reader is not None and reader in peer.groups:
        return Access.READ
    return Access.NONE
