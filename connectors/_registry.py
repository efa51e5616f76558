"""Connector kinds by name: config ``kind = "..."`` picks the config type and the class that serves it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ._contract import BankConnector, ConnectorConfig
from .null import NullConfig, NullConnector
from .rest import RestConfig, RestConnector


class ConnectorKind(msgspec.Struct, frozen=True):
    name: str
    config_type: type[ConnectorConfig]
    build: Callable[[Any], BankConnector]


KINDS: dict[str, ConnectorKind] = {
    "null": ConnectorKind("null", NullConfig, NullConnector),
    "rest": ConnectorKind("rest", RestConfig, RestConnector),
}

# The union msgspec decodes ``[[connectors]]`` into; extend it with every kind added to KINDS.
AnyConnectorConfig = NullConfig | RestConfig


def build_connector(config: ConnectorConfig) -> BankConnector:
    """A new connector instance for a decoded config entry."""
    return KINDS[config.kind].build(config)
