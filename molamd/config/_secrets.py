"""Resolving secret references in a decoded config.

Schemes: ``env:NAME``, ``file:/path``, ``credential:NAME`` (systemd LoadCredential=, read from
``$CREDENTIALS_DIRECTORY``) are resolved here. ``vault:`` needs a resolver registered by the Vault client;
without one, a ``vault:`` reference is a config error, never a literal. Resolution is blocking (files, and
later the network): run it in a worker thread.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from connectors import Secret

from ._errors import ConfigError, ConfigProblem
from ._files import SECRET_MAX_BYTES, UnreadableFile, read_regular

T = TypeVar("T")


class Versioned(msgspec.Struct, frozen=True):
    """What a resolver of a versioned source (Vault's KV v2) answers: the value, its version there and when
    that version was written (Unix time; None when the source does not say)."""

    value: str
    version: int
    created_at: float | None = None


Resolver = Callable[[str], "str | Versioned"]


class SecretUnavailable(Exception):
    """A resolver could not produce a secret; the message says why (never the value)."""


def _env(target: str, environ: Mapping[str, str]) -> str:
    try:
        value = environ[target]
    except KeyError:
        raise SecretUnavailable(f"environment variable {target} is not set") from None
    if not value:
        raise SecretUnavailable(f"environment variable {target} is empty")
    return value


def _file(target: str) -> str:
    """The whole file, less its trailing newlines (a PEM key keeps its inner lines)."""
    path = Path(target)
    if not path.is_absolute():
        raise SecretUnavailable(f"file: needs an absolute path, got {target!r}")
    try:
        value = read_regular(target, SECRET_MAX_BYTES).decode("utf-8").rstrip("\r\n")
    except UnreadableFile as exc:
        raise SecretUnavailable(f"cannot read {target}: {exc}") from None
    except UnicodeDecodeError:
        raise SecretUnavailable(f"{target} is not UTF-8 text") from None
    if not value:
        raise SecretUnavailable(f"{target} is empty")
    return value


def _credential(target: str, environ: Mapping[str, str]) -> str:
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise SecretUnavailable(
            "$CREDENTIALS_DIRECTORY is not set (credential: references need systemd's LoadCredential=)"
        )
    if "/" in target or target in (".", ".."):
        raise SecretUnavailable(f"credential name {target!r} must be a plain name")
    return _file(str(Path(directory) / target))


def _vault_missing(target: str) -> str:
    raise SecretUnavailable("vault: references need the Vault resolver, which this build does not configure")


def default_resolvers(environ: Mapping[str, str] | None = None) -> dict[str, Resolver]:
    env = os.environ if environ is None else environ
    return {
        "env": lambda target: _env(target, env),
        "file": _file,
        "credential": lambda target: _credential(target, env),
        "vault": _vault_missing,
    }


def resolve_secrets(config: T, *, file: str, resolvers: Mapping[str, Resolver] | None = None, root: str = "$") -> T:
    """A copy of ``config`` with every Secret resolved; raises ConfigError listing each one that is not."""
    table = dict(default_resolvers()) if resolvers is None else dict(resolvers)
    problems: list[ConfigProblem] = []

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, msgspec.Struct) and not _may_hold_secret(type(value)):
            return value
        if isinstance(value, Secret):
            resolver = table.get(value.scheme)
            if resolver is None:
                problems.append(ConfigProblem(path, f"no resolver for {value.scheme}: references"))
                return value
            try:
                found = resolver(value.target)
            except SecretUnavailable as exc:
                problems.append(ConfigProblem(path, f"secret {value.reference}: {exc}"))
                return value
            if isinstance(found, Versioned):
                return value.with_value(found.value, found.version, found.created_at)
            return value.with_value(found)
        if isinstance(value, msgspec.Struct):
            changes = {}
            for name in value.__struct_fields__:
                old = getattr(value, name)
                new = walk(old, f"{path}.{name}")
                if new is not old:
                    changes[name] = new
            return msgspec.structs.replace(value, **changes) if changes else value
        if isinstance(value, list):
            items = [walk(item, f"{path}[{i}]") for i, item in enumerate(value)]
            return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
        return value

    resolved = walk(config, root)
    if problems:
        raise ConfigError(file, problems)
    return resolved  # type: ignore[no-any-return]


_SECRET_BEARING: dict[type, bool] = {}


def _may_hold_secret(struct_type: type) -> bool:
    """Whether a Struct type can contain a Secret anywhere below it (from its annotations; cached)."""
    known = _SECRET_BEARING.get(struct_type)
    if known is not None:
        return known
    _SECRET_BEARING[struct_type] = False  # cycles cannot hold one through themselves
    found = any(_type_may_hold_secret(hint) for hint in typing.get_type_hints(struct_type).values())
    _SECRET_BEARING[struct_type] = found
    return found


def _type_may_hold_secret(hint: Any) -> bool:
    if hint is Secret:
        return True
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return _may_hold_secret(hint)
    return any(_type_may_hold_secret(arg) for arg in typing.get_args(hint))


def secret_entries(config: object) -> list[tuple[str, Secret]]:
    """Every secret reference in a config, with its TOML path (``$.connectors[2].rest.hmac_secret``)."""
    found: list[tuple[str, Secret]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Secret):
            found.append((path, value))
        elif isinstance(value, msgspec.Struct) and _may_hold_secret(type(value)):
            for name in value.__struct_fields__:
                walk(getattr(value, name), f"{path}.{name}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(config, "$")
    return found


def secret_values(config: object) -> list[str]:
    """Every resolved secret value in a config, for the log redactor."""
    return [s.reveal() for _, s in secret_entries(config) if s.resolved]
