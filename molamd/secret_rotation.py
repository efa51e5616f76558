"""Rotated secrets, taken without a restart.

The periodic check reads the KV v2 metadata (never a value) of every ``vault:`` reference in use that does not
pin a version; a newer version than the one resolved is a rotation, and the running config is resolved again
with those references read past the cache, then applied as a reload applies a file (``reload.refresh_secrets``):
only the actors whose secrets changed restart, and a new database password or HSM PIN is taken by the next
connection or session. ``molamctl secrets refresh`` re-reads every reference (file: and credential: too).
"""

from __future__ import annotations

import logging

import trio

from .config import secret_entries
from .logs import log
from .reload import ReloadResult, refresh_secrets
from .runtime import Runtime
from .vault import Reference, VaultError

logger = logging.getLogger("molamd.vault")


async def rotated(rt: Runtime) -> list[str]:
    """The vault: references in use whose latest KV version is newer than the one resolved."""
    vault = rt.vault
    if vault is None:
        return []
    in_use = {s.reference: s for _, s in secret_entries(rt.config) if s.scheme == "vault"}
    found: list[str] = []
    failures: list[str] = []

    async def check(reference: str, version: int | None) -> None:
        target = Reference.parse(reference.removeprefix("vault:"))
        if target.version is not None:
            return  # pinned: only a config change moves it
        try:
            current = await vault.run(lambda: vault.current_version(target))
        except VaultError as exc:
            failures.append(str(exc))
            return
        if current != version:
            found.append(reference)

    async with trio.open_nursery() as nursery:
        for reference, secret in in_use.items():
            nursery.start_soon(check, reference, secret.version)
    metrics = rt.metrics.vault.secret_checks
    if failures:
        metrics.labels("failure").inc()
        log(logger, logging.WARNING, "secret rotation check: some references could not be checked",
            failed=len(failures), first=failures[0])
    else:
        metrics.labels("rotated" if found else "unchanged").inc()
    return sorted(found)


async def check_and_apply(rt: Runtime) -> ReloadResult | None:
    """One periodic check: apply the rotated references, if any."""
    found = await rotated(rt)
    if not found:
        return None
    log(logger, logging.INFO, "rotated secrets found", references=found)
    return await refresh_secrets(rt, frozenset(found))


async def refresh_all(rt: Runtime) -> tuple[list[str], ReloadResult]:
    """`molamctl secrets refresh`: every reference read again now; the references whose value changed."""
    before = {s.reference: s for _, s in secret_entries(rt.config)}
    every = frozenset(r for r in before if r.startswith("vault:"))
    result = await refresh_secrets(rt, every)
    after = {s.reference: s for _, s in secret_entries(rt.config)}
    changed = sorted(r for r, s in after.items() if r in before and before[r] != s)
    return changed, result

