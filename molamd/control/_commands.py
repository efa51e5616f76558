"""The control commands: what each does, its arguments, and whether it needs operator access."""

from __future__ import annotations

import platform
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import trio

from actors import (
    ActorError,
    ChildState,
    ConnectorActor,
    ForceOpen,
    ResetCircuit,
    SetRate,
    SupervisorError,
    UnknownChild,
)
from connectors import ConnectorError, encode_hook

from .. import payouts
from .. import reload as reloading
from .. import statements as stored
from ..config import ConfigError
from ..db import DatabaseUnavailable
from ..runtime import Runtime
from ..statement_poller import PollNow
from ._protocol import PROTOCOL_VERSION, ControlError, ErrorCode

ASK_TIMEOUT = 5.0


class NoArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class NameArg(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str


class OptionalName(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str | None = None


class SetRateArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    rate: float
    burst: int | None = None


class LogsArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    limit: int = 20


class DlqArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    action: str
    id: int | None = None
    all: bool = False
    reason: str = "dropped by an operator"


class StatementsArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    action: str = "list"
    id: int | str | None = None  # show/reprocess: a stored file id; poll: a source name
    limit: int = 50


Handler = Callable[[Runtime, Any], Awaitable[Any]]
Streamer = Callable[[Runtime, Any], AsyncIterator[dict[str, Any]]]


class Command(msgspec.Struct, frozen=True):
    name: str
    args: type[msgspec.Struct]
    write: bool
    handler: Handler | None = None
    stream: Streamer | None = None


def _to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value, enc_hook=encode_hook)


# -- read commands -----------------------------------------------------------------------------------


async def version(rt: Runtime, args: NoArgs) -> dict[str, Any]:
    return {"server": "molamd", "version": rt.version, "protocol": PROTOCOL_VERSION,
            "python": platform.python_version(), "trio": trio.__version__}


async def status(rt: Runtime, args: NoArgs) -> dict[str, Any]:
    actor_states: Counter[str] = Counter()
    for sup in (rt.connectors, rt.workers):
        for state, count in sup.state_counts().items():
            actor_states[state.value] += count
    dispatch: Counter[str] = Counter(
        actor.dispatch.value for actor in rt.connectors.running() if isinstance(actor, ConnectorActor)
    )
    return {
        "version": rt.version,
        "host_id": rt.host_id,
        "pid": rt.pid,
        "uptime_seconds": round(rt.uptime(), 3),
        "config_file": rt.config_path,
        "config_loaded_at": rt.config_loaded_at,
        "last_reload": rt.last_reload,
        "database": {"up": rt.db.up, "error": rt.db.last_error},
        "connectors": {"configured": len(rt.config.connectors), "dispatch": dict(dispatch)},
        "actors": dict(actor_states),
        "workers": rt.workers.names(),
    }


def _connector_row(rt: Runtime, name: str) -> dict[str, Any]:
    info = rt.connectors.info(name)
    spec_config = rt.config.connector(name)
    actor = rt.connector_actor(name)
    row: dict[str, Any] = {
        "name": name,
        "kind": spec_config.kind if spec_config else None,
        "bank_profile": spec_config.bank_profile if spec_config else None,
        "priority": spec_config.priority if spec_config else None,
        "state": info.state.value,
        "dispatch": None,
        "incarnation": info.incarnation,
        "uptime_seconds": info.uptime_seconds,
        "restarts": info.restarts,
        "mailbox_depth": None,
        "mailbox_size": spec_config.mailbox_size if spec_config else None,
        "in_flight": None,
        "breaker": None,
        "health": None,
        "last_error": info.last_error,
    }
    if actor is not None:
        snap = actor.connector_snapshot()
        row["dispatch"] = snap.dispatch.value
        row["mailbox_depth"] = snap.actor.mailbox_depth
        row["in_flight"] = snap.in_flight
        row["breaker"] = snap.breaker.state.value
        if snap.last_health is not None:
            row["health"] = "ok" if snap.last_health.ok else "failing"
    poller = rt.statement_source(name)
    if poller is not None and poller.last_poll_ok is not None:
        row["health"] = "ok" if poller.last_poll_ok else "failing"
        row["last_error"] = poller.last_error or info.last_error
    return row


async def connectors(rt: Runtime, args: NoArgs) -> list[dict[str, Any]]:
    return [_connector_row(rt, name) for name in rt.connectors.names()]


def _known(rt: Runtime, name: str) -> None:
    if name not in rt.connectors.names():
        raise ControlError(ErrorCode.NOT_FOUND, f"no connector named {name!r}")


async def connector(rt: Runtime, args: NameArg) -> dict[str, Any]:
    _known(rt, args.name)
    row = _connector_row(rt, args.name)
    row["config"] = _to_builtins(rt.config.connector(args.name))
    actor = rt.connector_actor(args.name)
    if actor is not None:
        row["snapshot"] = _to_builtins(actor.connector_snapshot())
    return row


async def stats(rt: Runtime, args: NoArgs) -> dict[str, Any]:
    def samples(name: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in rt.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == name:
                    key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) or "total"
                    out[key] = sample.value
        return out

    restarts = {f"{s.name}/{i.name}": i.restarts for s in (rt.connectors, rt.workers) for i in s.infos()}
    return {
        "control_requests": samples("molamd_control_requests_total"),
        "reloads": samples("molamd_config_reloads_total"),
        "actor_restarts_total": sum(restarts.values()),
        "actors_restarted": {k: v for k, v in restarts.items() if v},
        "events_published": rt.events.published,
        "watchers": rt.events.subscribers,
        "database_up": rt.db.up,
    }


async def watch(rt: Runtime, args: NoArgs) -> AsyncIterator[dict[str, Any]]:
    with rt.events.subscribe() as sub:
        async for event in sub.receive:
            yield event
        if sub.lagged:
            raise ControlError(ErrorCode.BUSY, "watch fell behind the event stream and was dropped; reconnect")


# -- operator commands -------------------------------------------------------------------------------


async def _for_connectors(
    rt: Runtime, name: str | None, call: Callable[[ConnectorActor], Awaitable[Any]]
) -> dict[str, Any]:
    if name is not None:
        _known(rt, name)
    names = [name] if name is not None else rt.connectors.names()
    results: dict[str, Any] = {}

    async def one(n: str) -> None:
        actor = rt.connector_actor(n)
        if actor is None:
            results[n] = {"error": f"not running ({rt.connectors.info(n).state.value})"}
            return
        try:
            results[n] = {"dispatch": (await call(actor)).value}
        except ActorError as exc:
            results[n] = {"error": str(exc)}

    async with trio.open_nursery() as nursery:
        for n in names:
            nursery.start_soon(one, n)
    if name is not None and "error" in results[name]:
        raise ControlError(ErrorCode.BUSY, f"{name}: {results[name]['error']}")
    return {"connectors": dict(sorted(results.items()))}


async def pause(rt: Runtime, args: OptionalName) -> dict[str, Any]:
    return await _for_connectors(rt, args.name, lambda a: a.pause(ASK_TIMEOUT))


async def resume(rt: Runtime, args: OptionalName) -> dict[str, Any]:
    return await _for_connectors(rt, args.name, lambda a: a.resume(ASK_TIMEOUT))


async def drain(rt: Runtime, args: OptionalName) -> dict[str, Any]:
    return await _for_connectors(rt, args.name, lambda a: a.drain(ASK_TIMEOUT))


async def restart(rt: Runtime, args: NameArg) -> dict[str, Any]:
    for sup in (rt.connectors, rt.workers):
        if args.name in sup.names():
            before = sup.info(args.name).incarnation
            try:
                await sup.restart_child(args.name)
            except (UnknownChild, SupervisorError) as exc:  # pragma: no cover - removed concurrently
                raise ControlError(ErrorCode.NOT_FOUND, str(exc)) from None
            info = sup.info(args.name)
            return {"name": args.name, "supervisor": sup.name, "state": info.state.value,
                    "previous_incarnation": before, "incarnation": info.incarnation,
                    "started": info.state is ChildState.RUNNING}
    raise ControlError(ErrorCode.NOT_FOUND, f"no connector or worker named {args.name!r}")


def _actor(rt: Runtime, name: str) -> ConnectorActor:
    _known(rt, name)
    actor = rt.connector_actor(name)
    if actor is None:
        raise ControlError(ErrorCode.BUSY, f"{name} is not running ({rt.connectors.info(name).state.value})")
    return actor


async def health(rt: Runtime, args: NameArg) -> dict[str, Any]:
    actor = _actor(rt, args.name)
    try:
        result = await actor.check_health(timeout=ASK_TIMEOUT)
    except ActorError as exc:
        raise ControlError(ErrorCode.BUSY, str(exc)) from None
    return {"name": args.name, **_to_builtins(result), "breaker": _to_builtins(actor.breaker.snapshot())}


async def reset_circuit(rt: Runtime, args: NameArg) -> dict[str, Any]:
    state = await _actor(rt, args.name).ask(ResetCircuit(), timeout=ASK_TIMEOUT)
    return {"name": args.name, "breaker": state.value}


async def force_open(rt: Runtime, args: NameArg) -> dict[str, Any]:
    state = await _actor(rt, args.name).ask(ForceOpen(), timeout=ASK_TIMEOUT)
    return {"name": args.name, "breaker": state.value}


async def set_rate(rt: Runtime, args: SetRateArgs) -> dict[str, Any]:
    actor = _actor(rt, args.name)
    burst = args.burst if args.burst is not None else actor.limiter.burst
    if args.rate <= 0 or burst < 1:
        raise ControlError(ErrorCode.BAD_ARGS, "set-rate: RATE must be positive and BURST at least 1")
    result = await actor.ask(SetRate(args.rate, burst), timeout=ASK_TIMEOUT)
    return {"name": args.name, **result}


def _database(exc: DatabaseUnavailable) -> ControlError:
    return ControlError(ErrorCode.UNAVAILABLE, f"database unavailable: {exc}")


async def logs(rt: Runtime, args: LogsArgs) -> list[dict[str, Any]]:
    if not 1 <= args.limit <= 1000:
        raise ControlError(ErrorCode.BAD_ARGS, "logs: --limit must be between 1 and 1000")

    def query(conn: Any) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT at::text, trace_id, operation, round(duration_seconds::numeric, 4)::float8, outcome, error_code,"
            " http_status, payout_slice_id, request, response FROM bank_connector_logs WHERE connector_name = %s"
            " ORDER BY at DESC, id DESC LIMIT %s", (args.name, args.limit)).fetchall()
        keys = ("at", "trace_id", "operation", "duration_seconds", "outcome", "error_code", "http_status",
                "payout_slice_id", "request", "response")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    try:
        return await rt.db.statement(query)
    except DatabaseUnavailable as exc:
        raise _database(exc) from None


async def dlq(rt: Runtime, args: DlqArgs) -> Any:
    who = f"molamctl pid {rt.pid}"
    try:
        if args.action == "list":
            rows = await rt.db.statement(lambda c: payouts.dlq_list(c, 100))
            return [_to_builtins(r) for r in rows]
        if args.action == "retry":
            if args.id is None and not args.all:
                raise ControlError(ErrorCode.BAD_ARGS, "dlq retry needs an ID or --all")
            ids = None if args.all else [args.id]
            retried = await rt.db.statement(lambda c: payouts.dlq_retry(c, ids, who))  # type: ignore[arg-type]
            if args.id is not None and not retried:
                raise ControlError(ErrorCode.NOT_FOUND, f"payout slice {args.id} is not in the dead-letter queue")
            return {"retried": retried}
        if args.action == "drop":
            if args.id is None:
                raise ControlError(ErrorCode.BAD_ARGS, "dlq drop needs an ID")
            slice_id = args.id
            dropped = await rt.db.statement(lambda c: payouts.dlq_drop(c, slice_id, who, args.reason))
            if not dropped:
                raise ControlError(ErrorCode.NOT_FOUND, f"payout slice {slice_id} is not in the dead-letter queue")
            return {"dropped": slice_id, "status": "failed", "audited": True}
    except DatabaseUnavailable as exc:
        raise _database(exc) from None
    raise ControlError(ErrorCode.BAD_ARGS, f"dlq: unknown action {args.action!r}; use list, retry or drop")


def _file_id(args: StatementsArgs) -> int:
    try:
        return int(args.id if args.id is not None else "")
    except ValueError:
        raise ControlError(ErrorCode.BAD_ARGS, f"statements {args.action} needs a file ID (a number)") from None


async def statements(rt: Runtime, args: StatementsArgs) -> Any:
    """``statements list``, ``statements show ID``, ``statements poll SOURCE`` (poll now, answer the summary)."""
    try:
        if args.action == "list":
            return await rt.db.statement(lambda c: stored.list_files(c, None, args.limit))
        if args.action == "show":
            raw_id = _file_id(args)
            found = await rt.db.statement(lambda c: stored.show_file(c, raw_id, args.limit))
            if found is None:
                raise ControlError(ErrorCode.NOT_FOUND, f"no stored statement file {raw_id}")
            return found
    except DatabaseUnavailable as exc:
        raise _database(exc) from None
    if args.action == "poll":
        poller = rt.statement_source(str(args.id or ""))
        if poller is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"no running statement source {args.id!r}")
        try:
            summary = await poller.ask(PollNow(), timeout=600)
        except (ConnectorError, DatabaseUnavailable) as exc:
            raise ControlError(ErrorCode.UNAVAILABLE, f"poll failed: {exc}") from None
        return _to_builtins(summary)
    raise ControlError(ErrorCode.BAD_ARGS, f"statements: unknown action {args.action!r}; use list, show or poll")


async def statements_reprocess(rt: Runtime, args: StatementsArgs) -> Any:
    """Parse a stored file again from its raw bytes (after a parser or profile fix)."""
    raw_id = _file_id(args)
    try:
        source = await rt.db.statement(lambda c: c.execute(
            "SELECT source FROM bank_statements_raw WHERE id = %s", [raw_id]).fetchone())
        if source is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"no stored statement file {raw_id}")
        config = rt.config.connector(source[0])
        profile = rt.config.source_profile(config) if config is not None else None
        result = await rt.db.transaction(lambda c: stored.reprocess(c, raw_id, profile))
    except ValueError as exc:
        raise ControlError(ErrorCode.BAD_ARGS, str(exc)) from None
    except DatabaseUnavailable as exc:
        raise _database(exc) from None
    return _to_builtins(result)


async def reload(rt: Runtime, args: NoArgs) -> dict[str, Any]:
    try:
        result = await reloading.reload(rt)
    except ConfigError as exc:
        raise ControlError(
            ErrorCode.CONFIG_INVALID, f"reload refused, nothing changed: {exc}", details=exc.lines()
        ) from None
    return dict(_to_builtins(result))


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("version", NoArgs, False, version),
        Command("status", NoArgs, False, status),
        Command("connectors", NoArgs, False, connectors),
        Command("connector", NameArg, False, connector),
        Command("stats", NoArgs, False, stats),
        Command("watch", NoArgs, False, stream=watch),
        Command("pause", OptionalName, True, pause),
        Command("resume", OptionalName, True, resume),
        Command("drain", OptionalName, True, drain),
        Command("restart", NameArg, True, restart),
        Command("reload", NoArgs, True, reload),
        Command("health", NameArg, False, health),
        Command("logs", LogsArgs, False, logs),
        Command("reset-circuit", NameArg, True, reset_circuit),
        Command("force-open", NameArg, True, force_open),
        Command("set-rate", SetRateArgs, True, set_rate),
        Command("dlq", DlqArgs, True, dlq),
        Command("statements", StatementsArgs, False, statements),
        Command("statements-reprocess", StatementsArgs, True, statements_reprocess),
    )
}


def parse_args(command: Command, raw: dict[str, Any]) -> Any:
    try:
        return msgspec.convert(raw, command.args)
    except msgspec.ValidationError as exc:
        text = str(exc).replace("`$", "`args")
        raise ControlError(ErrorCode.BAD_ARGS, f"{command.name}: {text}") from None
