"""``vault:`` references: the [vault] section's own secrets first (never from Vault), an AppRole login, then a
resolver that reads KV v2 (through the client's cache) for every other reference."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ._errors import ConfigError, ConfigProblem
from ._model import Config, VaultSection
from ._secrets import Resolver, SecretUnavailable, Versioned, default_resolvers, resolve_secrets, secret_entries

if TYPE_CHECKING:
    from ..vault import Vault


def connect_vault(section: VaultSection, *, file: str) -> Vault | None:
    """A logged-in Vault client for this [vault] section (None without an address); raises ConfigError."""
    from ..vault import Vault, VaultError

    if not section.address:
        return None
    problems = []
    if not section.role_id:
        problems.append(ConfigProblem("$.vault.role_id", "needed with an address"))
    if section.secret_id is None:
        problems.append(ConfigProblem("$.vault.secret_id", "needed with an address (credential:, file: or env:)"))
    elif section.secret_id.scheme == "vault":
        problems.append(ConfigProblem("$.vault.secret_id", "the secret_id that logs in to Vault cannot come from it"))
    if problems:
        raise ConfigError(file, problems)
    own = resolve_secrets(section, file=file, resolvers={k: v for k, v in default_resolvers().items() if k != "vault"},
                          root="$.vault")
    assert own.secret_id is not None
    vault = Vault(section.address, timeout=section.timeout.seconds, ca_file=section.ca_file or None,
                  namespace=section.namespace or None, cache_ttl=section.cache_ttl.seconds)
    try:
        secret_id = own.secret_id.reveal()
        if section.secret_id_wrapped:
            secret_id = vault.unwrap(secret_id)
        vault.login(section.role_id, secret_id, section.approle_mount)
    except VaultError as exc:
        vault.close()
        raise ConfigError(file, [ConfigProblem("$.vault", f"{section.address}: {exc}")]) from None
    return vault


def resolvers_for(vault: Vault | None, *, fresh: frozenset[str] = frozenset()) -> dict[str, Resolver]:
    """The resolver table with ``vault:`` served by this client (its cache, except the references in ``fresh``)."""
    from ..vault import Reference, VaultError

    table = default_resolvers()
    if vault is None:
        return table

    def resolve(target: str) -> Versioned:
        try:
            found = vault.read(Reference.parse(target), fresh=f"vault:{target}" in fresh)
        except VaultError as exc:
            raise SecretUnavailable(str(exc)) from None
        return Versioned(found.value, found.version, found.created_at)

    table["vault"] = resolve
    return table


def resolve_config(config: Config, *, file: str, vault: Vault | None,
                   fresh: frozenset[str] = frozenset()) -> Config:
    """``config`` with every secret resolved (vault: ones through ``vault``); raises ConfigError."""
    if vault is not None and _prefetch(vault, config, fresh):
        fresh = frozenset()  # read past the cache already, just now
    resolved = resolve_secrets(config, file=file, resolvers=resolvers_for(vault, fresh=fresh))
    from ..encryption import LocalKeys

    for name in ("local_key", "lookup_key"):
        key = getattr(resolved.encryption, name)
        if key is not None and key.resolved:
            try:
                LocalKeys.from_text(key.reveal())  # the same shape: base64 of 32 bytes
            except ValueError as exc:
                raise ConfigError(file, [ConfigProblem(f"$.encryption.{name}", f"{key.reference}: {exc}")]) from None
    return resolved


_PREFETCH_THREADS = 8  # under requests' default pool of 10 connections


def _prefetch(vault: Vault, config: Config, fresh: frozenset[str]) -> bool:
    """Read the vault: references into the client's cache in parallel (a thousand one by one take seconds); the
    walk that follows finds them there, and reports the ones that failed itself."""
    from concurrent.futures import ThreadPoolExecutor

    from ..vault import Reference, VaultError

    targets = {s.target for _, s in secret_entries(config) if s.scheme == "vault"}
    if len(targets) < 2:
        return False

    def read(target: str) -> None:
        with contextlib.suppress(VaultError):  # the walk reads it again and names the reference with the reason
            vault.read(Reference.parse(target), fresh=f"vault:{target}" in fresh)

    with ThreadPoolExecutor(_PREFETCH_THREADS, thread_name_prefix="vault-prefetch") as pool:
        list(pool.map(read, sorted(targets)))
    return True
