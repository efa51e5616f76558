"""Bank connectors: the contract every bank channel implements, and one module per connector kind."""

from ._contract import BankConnector as BankConnector
from ._contract import Capability as Capability
from ._contract import ConnectorConfig as ConnectorConfig
from ._contract import Health as Health
from ._errors import Auth as Auth
from ._errors import CircuitOpen as CircuitOpen
from ._errors import ConnectorError as ConnectorError
from ._errors import Network as Network
from ._errors import RateLimited as RateLimited
from ._errors import Rejected as Rejected
from ._errors import Timeout as Timeout
from ._errors import Validation as Validation
from ._registry import KINDS as KINDS
from ._registry import AnyConnectorConfig as AnyConnectorConfig
from ._registry import ConnectorKind as ConnectorKind
from ._registry import build_connector as build_connector
from ._values import REDACTED as REDACTED
from ._values import Duration as Duration
from ._values import Secret as Secret
from ._values import decode_hook as decode_hook
from ._values import encode_hook as encode_hook
from .null import NullConfig as NullConfig
from .null import NullConnector as NullConnector
