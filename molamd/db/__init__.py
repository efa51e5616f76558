"""PostgreSQL: the pool service, migrations and the connector registry."""

from ._database import Conn as Conn
from ._database import Database as Database
from ._database import DatabaseConflict as DatabaseConflict
from ._database import DatabaseError as DatabaseError
from ._database import DatabaseUnavailable as DatabaseUnavailable
from ._database import conninfo as conninfo
from ._database import dict_rows as dict_rows
from ._listener import Listener as Listener
from ._migrate import Migration as Migration
from ._migrate import MigrationError as MigrationError
from ._migrate import current_version as current_version
from ._migrate import migrate as migrate
from ._migrate import shipped_migrations as shipped_migrations
from ._registry import RegistryRow as RegistryRow
from ._registry import config_hash as config_hash
from ._registry import report_states as report_states
from ._registry import sync_configured as sync_configured
from ._session_lock import SessionLock as SessionLock
