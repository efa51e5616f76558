"""The control socket: protocol, server, commands and SO_PEERCRED access."""

from ._commands import COMMANDS as COMMANDS
from ._peercred import Access as Access
from ._peercred import Peer as Peer
from ._peercred import access_for as access_for
from ._protocol import MAX_LINE as MAX_LINE
from ._protocol import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._protocol import ControlError as ControlError
from ._protocol import ErrorCode as ErrorCode
from ._server import AlreadyRunning as AlreadyRunning
from ._server import ControlServer as ControlServer
from ._server import check_socket_path as check_socket_path
