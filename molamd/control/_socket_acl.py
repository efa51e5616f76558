"""Who may open the control socket file: the daemon's user, and the operator and read-only groups by ACL.

Connecting to a Unix socket needs write permission on its file. The socket stays owned by the daemon's user and
group with ``socket_mode``; each configured group gets a POSIX ACL entry (``group:NAME:rw``), which needs only
ownership of the file, not membership of the group. Where the filesystem has no ACLs, the socket is given to the
one group if it is the only one configured (that needs membership, or root); otherwise the daemon says which
group cannot reach it. SO_PEERCRED decides what a connected peer may do; the file mode only decides who may try.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import struct

_XATTR = "system.posix_acl_access"
_VERSION = 2
_USER_OBJ, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x04, 0x08, 0x10, 0x20
_UNDEFINED = 0xFFFFFFFF


def acl_entries(mode: int, gids: list[int]) -> bytes:
    """The xattr value of an access ACL: the mode's owner, group and other bits, plus ``rw`` for each gid."""
    entries = [(_USER_OBJ, (mode >> 6) & 7, _UNDEFINED), (_GROUP_OBJ, (mode >> 3) & 7, _UNDEFINED)]
    entries += [(_GROUP, 6, gid) for gid in sorted(set(gids))]
    entries += [(_MASK, ((mode >> 3) & 7) | 6, _UNDEFINED), (_OTHER, mode & 7, _UNDEFINED)]
    return struct.pack("<I", _VERSION) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def grant_groups(path: str, mode: int, groups: list[str]) -> list[str]:
    """Let members of ``groups`` connect to the socket at ``path``; returns the problems (empty when all can)."""
    gids = {}
    for name in groups:
        # A group that does not exist: check-config says so, and access_for refuses its members anyway.
        if name:
            with contextlib.suppress(KeyError):
                gids[name] = grp.getgrnam(name).gr_gid
    if not gids:
        return []
    try:
        os.setxattr(path, _XATTR, acl_entries(mode, list(gids.values())))
        return []
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            raise
        reason = f"no POSIX ACLs here ({os.strerror(exc.errno)})"
    if len(gids) == 1:
        [(name, gid)] = gids.items()
        try:
            os.chown(path, -1, gid)
            return []
        except PermissionError:
            return [f"{reason}, and the daemon may not give the socket to group {name!r} (it is not a member):"
                    f" members of {name!r} cannot connect"]
    return [f"{reason}: only the daemon's own group can reach the socket; members of "
            f"{', '.join(repr(n) for n in gids)} cannot connect"]
