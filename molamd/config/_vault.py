"""``vault:`` references: the [vault] section's own secrets first (never from Vault), an AppRole login, then a
resolver that reads KV v2 for every other reference."""

from __future__ import annotations

from ._errors import ConfigError, ConfigProblem
from ._model import VaultSection
from ._secrets import Resolver, SecretUnavailable, Versioned, default_resolvers, resolve_secrets


def resolvers_for(section: VaultSection, *, file: str) -> dict[str, Resolver]:
    """The resolvers for a config with this [vault] section; raises ConfigError when Vault cannot be used."""
    from ..vault import Reference, Vault, VaultError

    table = default_resolvers()
    if not section.address:
        return table
    problems = []
    if not section.role_id:
        problems.append(ConfigProblem("$.vault.role_id", "needed with an address"))
    if section.secret_id is None:
        problems.append(ConfigProblem("$.vault.secret_id", "needed with an address (credential:, file: or env:)"))
    elif section.secret_id.scheme == "vault":
        problems.append(ConfigProblem("$.vault.secret_id", "the secret_id that logs in to Vault cannot come from it"))
    if problems:
        raise ConfigError(file, problems)
    own = resolve_secrets(section, file=file, resolvers={k: v for k, v in table.items() if k != "vault"},
                          root="$.vault")
    assert own.secret_id is not None
    vault = Vault(section.address, timeout=section.timeout.seconds, ca_file=section.ca_file or None,
                  namespace=section.namespace or None)
    try:
        secret_id = own.secret_id.reveal()
        if section.secret_id_wrapped:
            secret_id = vault.unwrap(secret_id)
        vault.login(section.role_id, secret_id, section.approle_mount)
    except VaultError as exc:
        vault.close()
        raise ConfigError(file, [ConfigProblem("$.vault", f"{section.address}: {exc}")]) from None

    def resolve(target: str) -> Versioned:
        try:
            found = vault.read(Reference.parse(target))
        except VaultError as exc:
            raise SecretUnavailable(str(exc)) from None
        return Versioned(found.value, found.version)

    table["vault"] = resolve
    return table
