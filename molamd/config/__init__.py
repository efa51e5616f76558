"""molamd.toml: the model, loading with path-naming errors, and secret resolution."""

import typing as _typing

from ._errors import ConfigError as ConfigError
from ._errors import ConfigProblem as ConfigProblem
from ._load import load_config as load_config
from ._load import parse_config as parse_config
from ._load import split_listen as split_listen
from ._model import AuditSection as AuditSection
from ._model import Config as Config
from ._model import ControlSection as ControlSection
from ._model import DatabaseSection as DatabaseSection
from ._model import HealthCheckerSection as HealthCheckerSection
from ._model import LogLevel as LogLevel
from ._model import SupervisionSection as SupervisionSection
from ._secrets import Resolver as Resolver
from ._secrets import SecretUnavailable as SecretUnavailable
from ._secrets import default_resolvers as default_resolvers
from ._secrets import resolve_secrets as resolve_secrets
from ._secrets import secret_entries as secret_entries
from ._secrets import secret_values as secret_values
from ._vault import connect_vault as connect_vault
from ._vault import resolve_config as resolve_config

if _typing.TYPE_CHECKING:
    from ..vault import Vault


def load_resolved(path: str, *, vault: "Vault | None" = None) -> Config:
    """Load, validate and resolve secrets (from Vault too, when [vault] has an address): what the daemon and
    check-config both do. ``vault``: a client already logged in (the running daemon's); without one, this logs in
    for itself and closes the client after. Blocking: run it in a worker thread."""
    config = load_config(path)
    own = vault is None
    client = connect_vault(config.vault, file=path) if own else vault
    try:
        return resolve_config(config, file=path, vault=client)
    finally:
        if own and client is not None:
            client.close()
