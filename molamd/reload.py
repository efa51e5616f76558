"""Config reload, all or nothing: parse → validate → resolve secrets → diff → apply.

Every trigger (SIGHUP, ``molamctl reload``, ``systemctl reload`` which runs ``molamctl reload``) comes here,
serialised by one lock. Until apply, nothing running is touched; any error is returned to the caller and
logged, and ``molamd_config_last_reload_successful`` goes to 0. Apply stops removed actors, restarts changed
ones (each drains within its grace first), starts added ones and leaves the rest alone: same incarnation,
same state, same in-flight work.
"""

from __future__ import annotations

import gc
import logging
import time

import msgspec
import trio

from .config import Config, ConfigError, ConfigProblem, load_resolved, secret_values
from .logs import log, redactor, set_level
from .runtime import Runtime, restart_policy

logger = logging.getLogger("molamd.reload")

# Sections a running daemon cannot change under itself: they need `systemctl restart molamd`.
RESTART_ONLY = ("control", "metrics", "database")


class Diff(msgspec.Struct, frozen=True, kw_only=True):
    added: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: int


class ReloadResult(msgspec.Struct, frozen=True, kw_only=True):
    connectors: Diff
    workers: Diff
    duration_seconds: float


def _diff(old: dict[str, object], new: dict[str, object]) -> Diff:
    return Diff(
        added=[n for n in new if n not in old],
        changed=[n for n in new if n in old and new[n] != old[n]],
        removed=[n for n in old if n not in new],
        unchanged=sum(1 for n in new if n in old and new[n] == old[n]),
    )


def plan(old: Config, new: Config, *, file: str) -> tuple[Diff, Diff]:
    """The connector and worker diffs; raises ConfigError for changes that need a restart."""
    problems = [
        ConfigProblem(f"$.{section}", f"[{section}] changed; this needs a restart (systemctl restart molamd)")
        for section in RESTART_ONLY
        if getattr(old, section) != getattr(new, section)
    ]
    if old.daemon.host_id != new.daemon.host_id:
        problems.append(ConfigProblem("$.daemon.host_id", "changed; this needs a restart"))
    if problems:
        raise ConfigError(file, problems)
    connectors = _diff(_connectors(old), _connectors(new))
    workers = _diff(_workers(old), _workers(new))
    return connectors, workers


def _connectors(config: Config) -> dict[str, object]:
    """Each connector with what it depends on outside its own entry: a CSV source's profile."""
    return {entry.name: (entry, config.source_profile(entry)) for entry in config.connectors}


def _workers(config: Config) -> dict[str, object]:
    found: dict[str, object] = {}
    for name in config.workers.__struct_fields__:
        section = getattr(config.workers, name)
        if getattr(section, "enabled", True):
            found[name] = section
    return found


async def reload(rt: Runtime) -> ReloadResult:
    """Reload rt.config_path into the running daemon; raises ConfigError and changes nothing on failure."""
    async with rt.reload_lock:
        started = trio.current_time()
        rt.notifier.reloading()
        rt.events.publish("reload", phase="started")
        try:
            try:
                new = await trio.to_thread.run_sync(load_resolved, rt.config_path)
                connectors, workers = plan(rt.config, new, file=rt.config_path)
            except ConfigError as exc:
                _failed(rt, exc)
                raise
            await _apply(rt, new, connectors, workers)
        finally:
            rt.notifier.ready(status=f"serving {len(rt.config.connectors)} connectors")
        result = ReloadResult(
            connectors=connectors, workers=workers, duration_seconds=round(trio.current_time() - started, 6)
        )
        rt.metrics.reload_duration.observe(result.duration_seconds)
        gc.freeze()  # the new config and actors are long-lived too (see daemon.py)
        rt.last_reload = {"ok": True, "at": time.time(), "error": None}
        rt.metrics.reload_successful.set(1)
        rt.metrics.reload_success_timestamp.set(time.time())
        rt.metrics.reloads.labels("success").inc()
        log(logger, logging.INFO, "config reloaded", **msgspec.structs.asdict(result))
        rt.events.publish("reload", phase="done", ok=True, result=msgspec.to_builtins(result))
    if connectors.added or connectors.changed or connectors.removed:
        rt.spawn(rt.sync_registry)  # the reply does not wait for the database
    return result


def _failed(rt: Runtime, exc: ConfigError) -> None:
    rt.last_reload = {"ok": False, "at": time.time(), "error": str(exc)}
    rt.metrics.reload_successful.set(0)
    rt.metrics.reloads.labels("failure").inc()
    log(logger, logging.ERROR, "config reload failed; nothing changed", problems=exc.lines())
    rt.events.publish("reload", phase="done", ok=False, error=str(exc))


async def _apply(rt: Runtime, new: Config, connectors: Diff, workers: Diff) -> None:
    old = rt.config
    rt.config = new
    rt.directory.index(new)
    rt.config_loaded_at = time.time()
    redactor.set_values(secret_values(new))
    set_level(new.logging.level.value)
    if new.supervision != old.supervision:
        policy = restart_policy(new.supervision)
        rt.connectors.policy = policy
        rt.workers.policy = policy

    by_name = {c.name: c for c in new.connectors}
    for name in connectors.removed:
        await rt.connectors.stop_child(name)
    for name in connectors.changed:
        await rt.connectors.restart_child(name, rt.connector_spec(by_name[name]))
    for name in connectors.added:
        await rt.connectors.start_child(rt.connector_spec(by_name[name]))

    specs = {s.name: s for s in rt.worker_specs(new)}
    for name in workers.removed:
        await rt.workers.stop_child(name)
    for name in workers.changed:
        await rt.workers.restart_child(name, specs[name])
    for name in workers.added:
        await rt.workers.start_child(specs[name])
