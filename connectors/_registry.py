"""Connector kinds by name: config ``kind = "..."`` picks the config type and the class that serves it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ._contract import BankConnector, Capability, ConnectorConfig
from .file_channel import FileChannelConfig, FileChannelConnector
from .null import NullConfig, NullConnector
from .rest import RestConfig, RestConnector
from .sftp import Camt053SftpConfig, CsvSftpConfig, Mt940SftpConfig, SftpStatementConnector


class ConnectorKind(msgspec.Struct, frozen=True):
    name: str
    config_type: type[ConnectorConfig]
    build: Callable[[Any], BankConnector]
    offers: frozenset[Capability]


KINDS: dict[str, ConnectorKind] = {
    "null": ConnectorKind("null", NullConfig, NullConnector, NullConnector.offers),
    "rest": ConnectorKind("rest", RestConfig, RestConnector, RestConnector.offers),
    "mt940-sftp": ConnectorKind("mt940-sftp", Mt940SftpConfig, SftpStatementConnector, SftpStatementConnector.offers),
    "csv-sftp": ConnectorKind("csv-sftp", CsvSftpConfig, SftpStatementConnector, SftpStatementConnector.offers),
    "camt053-sftp": ConnectorKind("camt053-sftp", Camt053SftpConfig, SftpStatementConnector,
                                  SftpStatementConnector.offers),
    "iso20022": ConnectorKind("iso20022", FileChannelConfig, FileChannelConnector, FileChannelConnector.offers),
}

# The union msgspec decodes ``[[connectors]]`` into; extend it with every kind added to KINDS.
AnyConnectorConfig = (NullConfig | RestConfig | Mt940SftpConfig | CsvSftpConfig | Camt053SftpConfig
                      | FileChannelConfig)


def build_connector(config: ConnectorConfig) -> BankConnector:
    """A new connector instance for a decoded config entry."""
    return KINDS[config.kind].build(config)


def offers(config: ConnectorConfig) -> frozenset[Capability]:
    """What a configured connector's kind can do (routing reads this; no instance needed)."""
    return KINDS[config.kind].offers
