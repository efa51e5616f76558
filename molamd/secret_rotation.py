"""Rotated, deleted and unreadable secrets, taken without a restart.

The periodic check reads the KV v2 metadata (never a value) of every ``vault:`` reference in use that does not
pin a version: a newer version than the one resolved is a rotation, a latest version deleted or destroyed a
withdrawal, and those references are refreshed. ``molamctl secrets refresh`` refreshes every reference
(file:, env: and credential: too).

A refresh reads each reference again, past the cache, and sorts what it finds:

- read: the value (new, or the same) goes into the running config;
- kept: the source could not be asked (Vault sealed, down, or refusing the token): the value in use stays, and
  the refresh says so for that reference;
- gone: the source says it is not there any more (deleted or destroyed in Vault, no such field, a file removed,
  a variable unset). A connector that uses it stops using it: it is restarted as a stand-in that refuses to start
  and names the reference (``withdrawn``), until a refresh reads the secret again. A section that needs a restart
  (the database, the HSM) keeps the value it holds until then, and the refresh says so.

The new config is then applied as a reload applies a file (``reload.refresh_secrets``): only the actors whose
secrets changed restart, and a new database password or HSM PIN is taken by the next connection or session.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import trio

from connectors import Secret

from .config import Config, secret_entries
from .config._secrets import SecretUnavailable, Versioned, default_resolvers
from .logs import log
from .reload import ReloadResult, refresh_secrets
from .runtime import Runtime
from .vault import Reference, Vault, VaultError, VaultNotFound

logger = logging.getLogger("molamd.vault")

_THREADS = 8  # reads in flight at once (under requests' pool of 16 per client)
_CONNECTOR = re.compile(r"^\$\.connectors\[(\d+)\]")


class Problem(msgspec.Struct, frozen=True):
    """A reference a refresh could not read: ``kept`` (the value in use stays) or ``gone`` (not used any more,
    or until a restart for a section that needs one); ``what`` says why and what became of it."""

    path: str
    reference: str
    state: str
    what: str

    def __str__(self) -> str:
        return f"{self.path} {self.reference}: {self.what}"


class Refreshed(msgspec.Struct, frozen=True, kw_only=True):
    changed: list[str]  # references whose value changed
    problems: list[Problem]
    result: ReloadResult


class _Kept(msgspec.Struct, frozen=True):
    reason: str


class _Gone(msgspec.Struct, frozen=True):
    reason: str


Found = Versioned | str | _Kept | _Gone


def _read_one(vault: Vault | None, reference: str) -> Found:
    secret = Secret(reference)
    if secret.scheme == "vault":
        if vault is None:
            return _Gone("no [vault] address to read it from")
        try:
            found = vault.read(Reference.parse(secret.target), fresh=True, stale_ok=False)
        except VaultNotFound as exc:
            return _Gone(str(exc))
        except VaultError as exc:
            return _Kept(str(exc))
        return Versioned(found.value, found.version, found.created_at)
    try:
        return default_resolvers()[secret.scheme](secret.target)
    except SecretUnavailable as exc:
        return _Gone(str(exc))


def _read_all(vault: Vault | None, references: list[str]) -> dict[str, Found]:
    """Each reference read again, past the cache (blocking: in a worker thread)."""
    if len(references) < 2:
        return {r: _read_one(vault, r) for r in references}
    with ThreadPoolExecutor(_THREADS, thread_name_prefix="secrets-refresh") as pool:
        return dict(zip(references, pool.map(lambda r: _read_one(vault, r), references), strict=True))


def _replace(value: Any, path: str, fn: Callable[[str, Secret], Secret]) -> Any:
    """``value`` with each Secret below it replaced by ``fn(path, secret)`` (the same objects where none
    changed)."""
    if isinstance(value, Secret):
        return fn(path, value)
    if isinstance(value, msgspec.Struct):
        changes = {}
        for name in value.__struct_fields__:
            old = getattr(value, name)
            new = _replace(old, f"{path}.{name}", fn)
            if new is not old:
                changes[name] = new
        return msgspec.structs.replace(value, **changes) if changes else value
    if isinstance(value, list):
        items = [_replace(item, f"{path}[{i}]", fn) for i, item in enumerate(value)]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


def _age(secret: Secret) -> str:
    return "" if secret.resolved_at is None else f", read {time.time() - secret.resolved_at:.0f} s ago"


def _rebuilt(rt: Runtime, config: Config, found: dict[str, Found], problems: list[Problem]) -> Config:
    """``config`` with what the refresh read; each reference it could not read named in ``problems``, and the
    gone ones of connectors withdrawn (``rt.withdrawn``)."""

    def take(path: str, secret: Secret) -> Secret:
        outcome = found.get(secret.reference)
        if outcome is None:
            return secret  # not asked this time
        if isinstance(outcome, Versioned):
            rt.withdrawn.pop(secret.reference, None)
            return secret.with_value(outcome.value, outcome.version, outcome.created_at)
        if isinstance(outcome, str):
            rt.withdrawn.pop(secret.reference, None)
            return secret.with_value(outcome)
        if isinstance(outcome, _Kept):
            what = (f"kept the value in use{_age(secret)}: {outcome.reason}" if secret.resolved
                    else f"still withdrawn, and could not be read again: {outcome.reason}")
            problems.append(Problem(path, secret.reference, "kept", what))
            return secret
        connector = _CONNECTOR.match(path)
        if connector is None:
            section = path.split(".")[1].split("[", maxsplit=1)[0]
            problems.append(Problem(path, secret.reference, "gone", (
                f"gone ({outcome.reason}); [{section}] keeps the value it holds until the daemon restarts, and a"
                " restart fails while it is gone")))
            return secret
        name = config.connectors[int(connector[1])].name
        rt.withdrawn[secret.reference] = f"({outcome.reason})"
        problems.append(Problem(path, secret.reference, "gone", (
            f"gone ({outcome.reason}): no longer used, connector {name} stopped until a refresh reads it again")))
        return Secret(secret.reference)

    rebuilt: Config = _replace(config, "$", take)
    return rebuilt


async def refresh(rt: Runtime, only: frozenset[str] | None = None) -> Refreshed:
    """Read every secret reference in use again (or those in ``only``) and apply what was read; raises
    ConfigError if the result cannot be applied (nothing changed then)."""
    problems: list[Problem] = []
    before = {s.reference: s for _, s in secret_entries(rt.config)}

    def build() -> Config:
        config = rt.config  # under the reload lock: the config running now
        wanted = sorted({s.reference for _, s in secret_entries(config) if only is None or s.reference in only})
        return _rebuilt(rt, config, _read_all(rt.vault, wanted), problems)

    result = await refresh_secrets(rt, build)
    after = {s.reference: s for _, s in secret_entries(rt.config)}
    changed = sorted(r for r, s in after.items() if r in before and before[r] != s)
    for problem in problems:
        log(logger, logging.WARNING if problem.state == "kept" else logging.ERROR,
            "secret refresh: a reference could not be read", path=problem.path, reference=problem.reference,
            state=problem.state, what=problem.what)
    return Refreshed(changed=changed, problems=problems, result=result)


async def rotated(rt: Runtime) -> list[str]:
    """The vault: references in use whose latest KV version is newer than the one resolved, deleted or destroyed
    (a withdrawal), or there again after a withdrawal."""
    vault = rt.vault
    if vault is None:
        return []
    in_use = {s.reference: s for _, s in secret_entries(rt.config) if s.scheme == "vault"}
    found: list[str] = []
    failures: list[str] = []

    async def check(reference: str, secret: Secret) -> None:
        target = Reference.parse(reference.removeprefix("vault:"))
        if target.version is not None:
            return  # pinned: only a config change moves it
        try:
            current, deleted = await vault.run(lambda: vault.latest(target))
        except VaultError as exc:
            failures.append(str(exc))
            return
        if not secret.resolved:
            if not deleted:
                found.append(reference)  # there again
        elif deleted or current != secret.version:
            found.append(reference)

    async with trio.open_nursery() as nursery:
        for reference, secret in in_use.items():
            nursery.start_soon(check, reference, secret)
    metrics = rt.metrics.vault.secret_checks
    if failures:
        metrics.labels("failure").inc()
        log(logger, logging.WARNING, "secret rotation check: some references could not be checked",
            failed=len(failures), first=failures[0])
    else:
        metrics.labels("rotated" if found else "unchanged").inc()
    return sorted(found)


async def check_and_apply(rt: Runtime) -> ReloadResult | None:
    """One periodic check: refresh the rotated and withdrawn references, if any."""
    found = await rotated(rt)
    if not found:
        return None
    log(logger, logging.INFO, "rotated or deleted secrets found", references=found)
    return (await refresh(rt, frozenset(found))).result


async def refresh_all(rt: Runtime) -> Refreshed:
    """`molamctl secrets refresh`: every reference read again now."""
    return await refresh(rt)
