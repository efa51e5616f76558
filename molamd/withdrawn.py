"""A connector whose secret was withdrawn: its source said at a refresh that the secret is gone (deleted or
destroyed in Vault, a file removed, a variable unset). The connector is not run with the value it had: in its
place the supervisor runs a child that refuses to start and names the references and why, so the connector shows
restarting, then ``failed``, with that reason, and takes no work. A refresh that reads the secret again restarts
the real connector (its entry changed)."""

from __future__ import annotations

import trio


class SecretWithdrawn(Exception):
    """A connector cannot run: a secret it needs is gone from its source."""


class Withdrawn:
    """The stand-in child of a connector with a withdrawn secret: fails at start with the reason."""

    def __init__(self, name: str, reasons: list[str]) -> None:
        self._name = name
        self.reasons = reasons

    @property
    def name(self) -> str:
        return self._name

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise SecretWithdrawn(f"{self._name}: not started, its secret is gone: {'; '.join(self.reasons)}; restore"
                              " it, then `molamctl secrets refresh`")

    def request_stop(self) -> None:
        """Nothing runs to stop."""
