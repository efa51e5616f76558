"""Who may do what on the control socket."""

from __future__ import annotations

import grp

from molamd.config import ControlSection
from molamd.control import Access, Peer, access_for


def peer(uid: int, *groups: int) -> Peer:
    return Peer(pid=1, uid=uid, gid=groups[0] if groups else uid, groups=frozenset(groups))


def test_access_rules() -> None:
    nogroup = grp.getgrnam("nogroup").gr_gid
    users = grp.getgrnam("users").gr_gid
    section = ControlSection(operator_group="users", readonly_group="nogroup")
    assert access_for(peer(0), section, own_uid=999) is Access.OPERATE
    assert access_for(peer(999, 5), section, own_uid=999) is Access.OPERATE
    assert access_for(peer(1234, 77, users), section, own_uid=999) is Access.OPERATE
    assert access_for(peer(1234, nogroup), section, own_uid=999) is Access.READ
    assert access_for(peer(1234, 77), section, own_uid=999) is Access.NONE
    assert access_for(peer(1234, users), ControlSection(), own_uid=999) is Access.NONE
    assert access_for(peer(1234, users), ControlSection(operator_group="vanished"), own_uid=999) is Access.NONE
