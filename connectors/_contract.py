"""The bank connector contract: capabilities, the shared config of every connector, and the Protocol."""

from __future__ import annotations

import enum
from typing import ClassVar, Protocol

import msgspec

from ._values import Duration

DEFAULT_PRIORITY = 100
DEFAULT_MAILBOX_SIZE = 256
DEFAULT_SHUTDOWN_GRACE = "10s"


class Capability(enum.StrEnum):
    SEND_PAYMENT = "send_payment"
    PAYMENT_STATUS = "payment_status"
    STATEMENTS = "statements"
    HEALTH = "health"


class ConnectorConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"
):
    """Keys every ``[[connectors]]`` entry has; each kind adds a table named after itself."""

    name: str
    bank_profile: str
    priority: int = DEFAULT_PRIORITY
    enabled: bool = True
    mailbox_size: int = DEFAULT_MAILBOX_SIZE
    shutdown_grace: Duration = msgspec.field(default_factory=lambda: Duration(DEFAULT_SHUTDOWN_GRACE))

    @property
    def kind(self) -> str:
        tag = type(self).__struct_config__.tag
        return str(tag)


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """One health check's outcome."""

    ok: bool
    latency_seconds: float
    detail: str = ""


class BankConnector(Protocol):
    """What every connector kind implements; payout and statement operations are added by their kinds."""

    kind: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]]

    async def open(self) -> None:
        """Acquire clients and sessions; cancellation aborts the open."""

    async def aclose(self) -> None:
        """Release them; safe to call twice."""

    async def healthcheck(self) -> Health:
        """Ask the bank (or the transport) whether it is reachable."""
