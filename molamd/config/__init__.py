"""molamd.toml: the model, loading with path-naming errors, and secret resolution."""

from ._errors import ConfigError as ConfigError
from ._errors import ConfigProblem as ConfigProblem
from ._load import load_config as load_config
from ._load import parse_config as parse_config
from ._load import split_listen as split_listen
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


def load_resolved(path: str) -> Config:
    """Load, validate and resolve secrets (from Vault too, when [vault] has an address): what the daemon and
    check-config both do. Blocking: run it in a worker thread."""
    from ._vault import resolvers_for

    config = load_config(path)
    return resolve_secrets(config, file=path, resolvers=resolvers_for(config.vault, file=path))
