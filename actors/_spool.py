"""Spool files: a download in progress, named after its kind, its owner and the pid of the process making it.

A spooled file holds a bank's data until it is stored. A process killed mid-download leaves it behind, so each
owner clears its spool directory before it makes a new one: files of its own earlier incarnation in this
process, and files of a process that is gone. A live process's downloads are its own.
"""

from __future__ import annotations

import logging
import os
import re

logger = logging.getLogger("molamd.spool")

# kind, owner, pid, then mkstemp's random part (letters, digits, underscores) and any suffix
_SPOOLED = re.compile(r"molamd-(?P<kind>[a-z]+)-.+-(?P<pid>[0-9]+)-[a-z0-9_]+(?:\.part)?")


def spool_prefix(kind: str, owner: str) -> str:
    """The mkstemp prefix of this process's downloads of ``kind`` (``report``, ``statement``) for ``owner``."""
    return f"molamd-{kind}-{owner}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def clear_spool(directory: str, kind: str, own_prefix: str) -> list[str]:
    """Make ``directory`` (owner only) if missing and remove the ``kind`` downloads a run that is gone left there
    (blocking: call it from a worker thread). Returns the paths removed."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    removed = []
    for entry in os.scandir(directory):
        found = _SPOOLED.fullmatch(entry.name)
        if found is None or found["kind"] != kind or not entry.is_file(follow_symlinks=False):
            continue
        if entry.name.startswith(own_prefix) or not _alive(int(found["pid"])):
            os.unlink(entry.path)
            logger.warning("removed %s, a %s download a run that is gone left unfinished", entry.path, kind)
            removed.append(entry.path)
    return removed
