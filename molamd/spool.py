"""Where downloads in progress are spooled: the daemon's state directory, never a temp directory others share.

A spooled file holds a bank's data (a status report, a statement) until it is stored; a daemon killed mid-download
leaves it behind, and whoever reads that directory reads it. So: the connector's own ``spool_dir`` when set,
else ``spool/`` under the daemon's state directory (systemd's ``StateDirectory=``, handed over in
``$STATE_DIRECTORY``), else under the user's state directory (``$XDG_STATE_HOME``, ``~/.local/state``) for a
daemon run by hand. What a connector leaves there is cleared when it starts again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def spool_directory(explicit: str = "", environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if explicit:
        return explicit
    state = env.get("STATE_DIRECTORY", "").split(":")[0]  # several StateDirectory= entries: the first
    if not state:
        base = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local",
                                                         "state")
        state = os.path.join(base, "molamd")
    return os.path.join(state, "spool")
