"""The reloader: owns the config swap, all or nothing: parse → validate → resolve secrets → diff → apply → adopt.

Every trigger (SIGHUP, ``molamctl reload``, ``systemctl reload`` which runs ``molamctl reload``) comes here,
serialised by one lock. Until apply, nothing running is touched. Apply stops removed actors, restarts changed
ones (each drains within its grace first), starts added ones and leaves the rest alone: same incarnation, same
state, same in-flight work. Each step leaves its undo; a step that fails undoes the ones before it (removed
actors start again, changed ones go back to their old spec, added ones stop), so the actors agree with the old
config again. Only once everything is applied is the new config adopted (routes, redaction, log level). Any
error is returned to the caller and logged, and ``molamd_config_last_reload_successful`` goes to 0.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

import msgspec
import trio

from actors import ChildSpec, ChildState, Supervisor
from connectors import FileChannelConfig, Secret

from .config import Config, ConfigError, ConfigProblem, load_resolved, secret_entries, secret_values
from .logs import log, redactor, set_level
from .runtime import Runtime, restart_policy

logger = logging.getLogger("molamd.reload")

# Sections a running daemon cannot change under itself: they need `systemctl restart molamd`. A new value of the
# same secret reference in them (a rotated database password or HSM PIN) is not a change of the section: it is
# taken without a restart (new connections log in with it; the HSM session opens again with it).
RESTART_ONLY = ("control", "metrics", "database", "hsm", "vault", "encryption", "audit", "tracing")


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


def plan(old: Config, new: Config, *, file: str, allow_removals: int = 0) -> tuple[Diff, Diff]:
    """The connector and worker diffs; raises ConfigError for changes that need a restart, and for a reload that
    removes more connectors than ``[daemon] reload_max_removals`` without ``allow_removals`` covering them (a
    truncated file is still valid TOML)."""
    problems = [
        ConfigProblem(f"$.{section}", f"[{section}] changed; this needs a restart (systemctl restart molamd)")
        for section in RESTART_ONLY
        if _by_reference(getattr(old, section)) != _by_reference(getattr(new, section))
    ]
    if old.daemon.host_id != new.daemon.host_id:
        problems.append(ConfigProblem("$.daemon.host_id", "changed; this needs a restart"))
    if problems:
        raise ConfigError(file, problems)
    connectors = _diff(_connectors(old), _connectors(new))
    workers = _diff(_workers(old), _workers(new))
    removed = len(connectors.removed)
    if removed > new.daemon.reload_max_removals and removed > allow_removals:
        names = ", ".join(connectors.removed[:20]) + (f" and {removed - 20} more" if removed > 20 else "")
        raise ConfigError(file, [ConfigProblem("$.connectors", (
            f"this reload would remove {removed} of {len(old.connectors)} connectors ({names}), more than"
            f" [daemon] reload_max_removals {new.daemon.reload_max_removals}; if that is meant, run"
            f" `molamctl reload --allow-removals {removed}`"))])
    return connectors, workers


def _by_reference(section: msgspec.Struct) -> object:
    """A section with its secrets as their references: equal when only secret values differ."""
    return msgspec.to_builtins(section, enc_hook=lambda s: s.reference if isinstance(s, Secret) else str(s))


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


async def reload(rt: Runtime, *, allow_removals: int = 0) -> ReloadResult:
    """Reload rt.config_path into the running daemon; raises ConfigError and changes nothing on failure."""
    async with rt.reload_lock:
        with _no_cyclic_gc():
            return await _reload(rt, allow_removals,
                                 lambda: load_resolved(rt.config_path, vault=rt.vault), "reload")


async def refresh_secrets(rt: Runtime, build: Callable[[], Config]) -> ReloadResult:
    """The running config with its secrets as ``build`` read them again (``secret_rotation``; in a worker thread
    under the reload lock, so it starts from the config running then), applied as a reload applies a file: only
    the actors whose secrets changed restart."""
    async with rt.reload_lock:
        return await _reload(rt, 0, build, "secrets")


async def _reload(rt: Runtime, allow_removals: int, load: Callable[[], Config], why: str) -> ReloadResult:
    """The steps of one reload, under the reload lock."""
    started = trio.current_time()
    rt.notifier.reloading()
    rt.events.publish("reload", phase="started", trigger=why)
    try:
        try:
            new = await trio.to_thread.run_sync(load)
            connectors, workers = plan(rt.config, new, file=rt.config_path, allow_removals=allow_removals)
        except ConfigError as exc:
            _failed(rt, exc)
            raise
        try:
            await _apply(rt, new, connectors, workers)
        except Exception as exc:
            refused = ConfigError(rt.config_path, [ConfigProblem(
                "$", f"applying the new config failed ({type(exc).__name__}: {exc}); rolled back, the old"
                     " config is still running")])
            _failed(rt, refused)
            raise refused from exc
        _adopt(rt, new)
    finally:
        rt.notifier.ready(status=f"serving {len(rt.config.connectors)} connectors")
    result = ReloadResult(
        connectors=connectors, workers=workers, duration_seconds=round(trio.current_time() - started, 6)
    )
    rt.metrics.reload_duration.observe(result.duration_seconds)
    rt.last_reload = {"ok": True, "at": time.time(), "error": None}
    rt.metrics.reload_successful.set(1)
    rt.metrics.reload_success_timestamp.set(time.time())
    rt.metrics.reloads.labels("success").inc()
    log(logger, logging.INFO, "config reloaded" if why == "reload" else "secrets refreshed",
        **msgspec.structs.asdict(result))
    rt.events.publish("reload", phase="done", ok=True, result=msgspec.to_builtins(result))
    if connectors.added or connectors.changed or connectors.removed:
        rt.spawn(rt.registry.sync)  # the reply does not wait for the database
    return result


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """No cyclic GC pass during a reload: with thousands of actors alive a full pass costs more than the reload.

    Only paused, never frozen: what the reload stopped is collected by the next pass after it.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _failed(rt: Runtime, exc: ConfigError) -> None:
    rt.last_reload = {"ok": False, "at": time.time(), "error": str(exc)}
    rt.metrics.reload_successful.set(0)
    rt.metrics.reloads.labels("failure").inc()
    log(logger, logging.ERROR, "config reload failed; nothing changed", problems=exc.lines())
    rt.events.publish("reload", phase="done", ok=False, error=str(exc))


Undo = Callable[[], Awaitable[None]]


async def _apply(rt: Runtime, new: Config, connectors: Diff, workers: Diff) -> None:
    """Change the running actors to match ``new``; on failure undo what was done and raise."""
    old = rt.config
    undo: list[Undo] = []
    try:
        await _apply_steps(rt, old, new, connectors, workers, undo)
    except BaseException:
        with trio.CancelScope(shield=True):
            for step in reversed(undo):
                try:
                    await step()
                except Exception as exc:  # keep undoing: every step back counts
                    log(logger, logging.ERROR, "reload rollback step failed", error=f"{type(exc).__name__}: {exc}")
        raise


async def _apply_steps(rt: Runtime, old: Config, new: Config, connectors: Diff, workers: Diff,
                       undo: list[Undo]) -> None:
    if new.supervision != old.supervision:
        old_policy, policy = rt.connectors.policy, restart_policy(new.supervision)
        rt.connectors.policy = rt.workers.policy = policy

        async def put_policy_back() -> None:
            rt.connectors.policy = rt.workers.policy = old_policy

        undo.append(put_policy_back)

    before = {c.name: c for c in old.connectors}
    after = {c.name: c for c in new.connectors}
    probed = {c.name for c in new.connectors if isinstance(c, FileChannelConfig)}
    await _apply_diff(rt.connectors, connectors, lambda n: rt.connector_spec(before[n], old),
                      lambda n: rt.connector_spec(after[n], new), undo, must_start=probed)
    old_workers = {s.name: s for s in rt.worker_specs(old)}
    new_workers = {s.name: s for s in rt.worker_specs(new)}
    await _apply_diff(rt.workers, workers, old_workers.__getitem__, new_workers.__getitem__, undo)


SpecOf = Callable[[str], ChildSpec]


class DidNotStart(Exception):
    """A changed or added child that must prove itself at start (a file channel's probe) did not start."""


async def _apply_diff(sup: Supervisor, diff: Diff, old_spec: SpecOf, new_spec: SpecOf, undo: list[Undo], *,
                      must_start: frozenset[str] | set[str] = frozenset()) -> None:
    """Stop the removed children, restart the changed ones, start the added ones; each step leaves its undo.

    A child in ``must_start`` (a file channel: its start builds, signs and verifies a probe file) is waited for:
    a (re)start returns once its setup finished, and if it is not running then, the reload fails and is undone
    rather than answering success while the child crash-loops. The old specs are built only if an undo runs.
    """
    for name in diff.removed:
        await sup.stop_child(name)
        undo.append(functools.partial(_start_with, sup, old_spec, name))
    for name in diff.changed:
        await sup.restart_child(name, new_spec(name))
        undo.append(functools.partial(_restart_with, sup, old_spec, name))
        _started(sup, name, must_start)
    for name in diff.added:
        await sup.start_child(new_spec(name))
        undo.append(functools.partial(sup.stop_child, name))
        _started(sup, name, must_start)


def _started(sup: Supervisor, name: str, must_start: frozenset[str] | set[str]) -> None:
    if name not in must_start:
        return
    info = sup.info(name)
    if info.state is not ChildState.RUNNING:
        raise DidNotStart(f"connector {name} did not start with the new config: {info.last_error or info.state}")


async def _start_with(sup: Supervisor, spec_of: SpecOf, name: str) -> None:
    await sup.start_child(spec_of(name))


async def _restart_with(sup: Supervisor, spec_of: SpecOf, name: str) -> None:
    await sup.restart_child(name, spec_of(name))


def _adopt(rt: Runtime, new: Config) -> None:
    """The new config becomes the running one: routes, secrets to redact, log level, and new values of the
    restart-only sections' secrets (the database password, the HSM PIN)."""
    old = rt.config
    if new.database != old.database:
        rt.db.section = new.database  # the next connection logs in with the new password
    if new.hsm != old.hsm:
        rt.reset_signer()
    if rt.certificates is not None:
        for name in {c.name for c in old.connectors} - {c.name for c in new.connectors}:
            rt.certificates.forget(name)  # a removed connector's client certificate is no longer renewed
    rt.config = new
    rt.directory.index(new)
    rt.config_loaded_at = time.time()
    redactor.set_values(secret_values(new))
    rt.metrics.set_secrets(secret_entries(new))
    set_level(new.logging.level.value)
