"""The control commands: what each does, its arguments, and whether it needs operator access."""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Final

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
from connectors import ConnectorError, PaymentRef, SftpSourceConfig, encode_hook

from .. import audit, payment_files, payment_reports, payout_resolve, payouts
from .. import reload as reloading
from .. import statements as stored
from ..audit import Identity
from ..config import ConfigError, secret_entries
from ..config._bounds import BOUNDS
from ..db import DatabaseError
from ..encryption import KeyUnavailable, SealError
from ..runtime import Runtime
from ..statement_poller import PollNow
from ._protocol import PROTOCOL_VERSION, ControlError, ErrorCode

ASK_TIMEOUT = 5.0
RESOLVE_LOOKUP_TIMEOUT = 15.0  # a resolve asks the bank once (its retries included) before the operator's word stands
MAX_ROWS: Final = 10_000  # the most rows a read command's limit may ask for
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_ROWS)]  # a bad limit is bad_args naming args.limit, not SQL's


class NoArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class NameArg(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str


class ReloadArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    allow_removals: int = 0  # removals above [daemon] reload_max_removals need this many allowed


class OptionalName(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str | None = None


class SetRateArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    rate: float
    burst: int | None = None


class LogsArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    limit: int = 20


class DlqRetryArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: int | None = None
    all: bool = False


class DlqDropArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: int
    reason: str = "dropped by an operator"


class IdArg(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: int


class ResubmitArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: int
    reopen_failed: bool = False  # the file's failed slices go back into it (in doubt again) before it goes
    reason: str = ""


class LimitArg(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    limit: Limit = 100


class RetryArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: int | None = None
    all_scheduled: bool = False


class ReleaseArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: int
    reason: str = ""


class ResolveArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: int
    paid: bool = False
    not_paid: bool = False
    reason: str = ""


class StatementsArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    action: str = "list"
    id: int | str | None = None  # show/reprocess: a stored file id; poll: a source name
    limit: Limit = 50
    retry_stuck: bool = False  # poll: download again the files that could not be moved


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """What a control handler may use: the runtime, and who asked (from SO_PEERCRED)."""

    rt: Runtime
    who: Identity
    operator: bool = False  # may run operator commands (and see what only they may see)


Handler = Callable[[Context, Any], Awaitable[Any]]
Streamer = Callable[[Context, Any], AsyncIterator[dict[str, Any]]]


class Command(msgspec.Struct, frozen=True):
    name: str
    args: type[msgspec.Struct]
    write: bool
    handler: Handler | None = None
    stream: Streamer | None = None


def _to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value, enc_hook=encode_hook)


# -- read commands -----------------------------------------------------------------------------------


async def version(ctx: Context, args: NoArgs) -> dict[str, Any]:
    rt = ctx.rt
    return {"server": "molamd", "version": rt.version, "protocol": PROTOCOL_VERSION,
            "python": platform.python_version(), "trio": trio.__version__}


async def status(ctx: Context, args: NoArgs) -> dict[str, Any]:
    rt = ctx.rt
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
        "database": {"up": rt.db.up, "error": rt.db.last_error,
                     **(rt.credentials.status() if rt.credentials is not None else {})},
        "vault": rt.token_keeper.status() if rt.token_keeper is not None else None,
        "client_certificates": rt.certificates.status() if rt.certificates is not None else None,
        "connectors": {"configured": len(rt.config.connectors), "dispatch": dict(dispatch)},
        "slices": rt.telemetry.slices,  # the statuses that drain, by currency, as of the last telemetry tick
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
        "paused_s": None,
        "health": None,
        "last_error": info.last_error,
        "calls": None,
        "failed_calls": None,
        "call_seconds": None,  # totals since start: `molamctl top` shows their rates
    }
    totals = rt.telemetry.calls.get(name)
    if totals is not None:
        row["calls"], row["failed_calls"], row["call_seconds"] = int(totals[0]), int(totals[1]), round(totals[2], 6)
    if actor is not None:
        snap = actor.connector_snapshot()
        row["dispatch"] = snap.dispatch.value
        row["mailbox_depth"] = snap.actor.mailbox_depth
        row["in_flight"] = snap.in_flight
        row["breaker"] = snap.breaker.state.value
        row["paused_s"] = snap.limiter_paused_seconds or None  # a bank's Retry-After: no new work meanwhile
        if snap.last_health is not None:
            row["health"] = "ok" if snap.last_health.ok else "failing"
        if snap.unhealthy is not None:  # no work routed here until a health check passes or `resume`
            row["health"] = "unhealthy"
            row["last_error"] = snap.unhealthy
    poller = rt.statement_source(name)
    if poller is not None and poller.last_poll_ok is not None:
        row["health"] = "ok" if poller.last_poll_ok else "failing"
        row["last_error"] = poller.last_error or info.last_error
    return row


async def connectors(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
    rt = ctx.rt
    return [_connector_row(rt, name) for name in rt.connectors.names()]


def _known(rt: Runtime, name: str) -> None:
    if name not in rt.connectors.names():
        raise ControlError(ErrorCode.NOT_FOUND, f"no connector named {name!r}")


async def connector(ctx: Context, args: NameArg) -> dict[str, Any]:
    rt = ctx.rt
    _known(rt, args.name)
    row = _connector_row(rt, args.name)
    row["config"] = _to_builtins(rt.config.connector(args.name))
    actor = rt.connector_actor(args.name)
    if actor is not None:
        row["snapshot"] = _to_builtins(actor.connector_snapshot())
    return row


async def stats(ctx: Context, args: NoArgs) -> dict[str, Any]:
    rt = ctx.rt
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


async def watch(ctx: Context, args: NoArgs) -> AsyncIterator[dict[str, Any]]:
    rt = ctx.rt
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
        _payment_connector(rt, name)
    names = [name] if name is not None else [n for n, _ in rt.connector_actors()]
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


async def pause(ctx: Context, args: OptionalName) -> dict[str, Any]:
    rt = ctx.rt
    return await _for_connectors(rt, args.name, lambda a: a.pause(ASK_TIMEOUT))


async def resume(ctx: Context, args: OptionalName) -> dict[str, Any]:
    rt = ctx.rt
    return await _for_connectors(rt, args.name, lambda a: a.resume(ASK_TIMEOUT))


async def drain(ctx: Context, args: OptionalName) -> dict[str, Any]:
    rt = ctx.rt
    return await _for_connectors(rt, args.name, lambda a: a.drain(ASK_TIMEOUT))


async def restart(ctx: Context, args: NameArg) -> dict[str, Any]:
    rt = ctx.rt
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


def _payment_connector(rt: Runtime, name: str) -> None:
    """UNSUPPORTED for a statement source: it has no dispatch state, breaker or limiter to act on."""
    if any(c.name == name and isinstance(c, SftpSourceConfig) for c in rt.config.connectors):
        raise ControlError(ErrorCode.UNSUPPORTED, f"{name} is a statement source: pause, resume, drain, health,"
                                                  " the breaker and the rate apply to payment connectors and file"
                                                  " channels (poll it with `molamctl statements poll NAME`)")


def _actor(rt: Runtime, name: str) -> ConnectorActor:
    _known(rt, name)
    _payment_connector(rt, name)
    actor = rt.connector_actor(name)
    if actor is None:
        raise ControlError(ErrorCode.BUSY, f"{name} is not running ({rt.connectors.info(name).state.value})")
    return actor


async def health(ctx: Context, args: NameArg) -> dict[str, Any]:
    rt = ctx.rt
    actor = _actor(rt, args.name)
    try:
        result = await actor.check_health(timeout=ASK_TIMEOUT)
    except ActorError as exc:
        raise ControlError(ErrorCode.BUSY, str(exc)) from None
    return {"name": args.name, **_to_builtins(result), "breaker": _to_builtins(actor.breaker.snapshot())}


async def reset_circuit(ctx: Context, args: NameArg) -> dict[str, Any]:
    rt = ctx.rt
    state = await _actor(rt, args.name).ask(ResetCircuit(), timeout=ASK_TIMEOUT)
    return {"name": args.name, "breaker": state.value}


async def force_open(ctx: Context, args: NameArg) -> dict[str, Any]:
    rt = ctx.rt
    state = await _actor(rt, args.name).ask(ForceOpen(), timeout=ASK_TIMEOUT)
    return {"name": args.name, "breaker": state.value}


async def set_rate(ctx: Context, args: SetRateArgs) -> dict[str, Any]:
    rt = ctx.rt
    actor = _actor(rt, args.name)
    burst = args.burst if args.burst is not None else actor.limiter.burst
    rate, most = BOUNDS["rate"], BOUNDS["burst"]
    if not (rate.low < args.rate <= rate.high and most.low <= burst <= most.high):
        raise ControlError(ErrorCode.BAD_ARGS, f"set-rate: RATE must be above 0 and at most {rate.high:g}, BURST"
                                               f" from 1 to {most.high:g}")
    result = await actor.ask(SetRate(args.rate, burst), timeout=ASK_TIMEOUT)
    return {"name": args.name, **result}


def _database(exc: DatabaseError) -> ControlError:
    return ControlError(ErrorCode.UNAVAILABLE, f"database unavailable: {exc}")


async def logs(ctx: Context, args: LogsArgs) -> list[dict[str, Any]]:
    rt = ctx.rt
    if not 1 <= args.limit <= 1000:
        raise ControlError(ErrorCode.BAD_ARGS, "logs: --limit must be between 1 and 1000")

    try:
        rows = await rt.db.statement(lambda c: audit.connector_calls(c, args.name, args.limit))
    except DatabaseError as exc:
        raise _database(exc) from None
    if not ctx.operator:  # bodies carry (masked) accounts, amounts and the bank's words: not for readers
        for row in rows:
            del row["request"], row["response"]
            row["masked"] = "request and response need operator access"
    return rows


async def dlq_list(ctx: Context, args: NoArgs) -> list[Any]:
    try:
        rows = await ctx.rt.db.statement(lambda c: payouts.dlq_list(c, 100))
    except DatabaseError as exc:
        raise _database(exc) from None
    return [_to_builtins(r) for r in rows]


async def dlq_retry(ctx: Context, args: DlqRetryArgs) -> dict[str, Any]:
    rt = ctx.rt
    if args.id is None and not args.all:
        raise ControlError(ErrorCode.BAD_ARGS, "dlq retry needs an ID or --all")
    ids = None if args.all else [args.id]
    try:
        retried = await rt.db.transaction(
            lambda c: payouts.dlq_retry(c, rt.host_id, ids, ctx.who))  # type: ignore[arg-type]
    except DatabaseError as exc:
        raise _database(exc) from None
    if args.id is not None and not retried:
        raise ControlError(ErrorCode.NOT_FOUND, f"payout slice {args.id} is not in the dead-letter queue")
    return {"retried": retried}


async def dlq_drop(ctx: Context, args: DlqDropArgs) -> dict[str, Any]:
    rt = ctx.rt
    try:
        dropped = await rt.db.transaction(lambda c: payouts.dlq_drop(c, rt.host_id, args.id, ctx.who, args.reason))
    except DatabaseError as exc:
        raise _database(exc) from None
    if not dropped:
        raise ControlError(ErrorCode.NOT_FOUND, f"payout slice {args.id} is not in the dead-letter queue")
    return {"dropped": args.id, "status": "failed", "audited": True}


async def payouts_show(ctx: Context, args: IdArg) -> dict[str, Any]:
    try:
        found = await ctx.rt.db.transaction(lambda c: payouts.show(c, args.id))
    except payouts.SliceNotFound as exc:
        raise ControlError(ErrorCode.NOT_FOUND, str(exc)) from None
    except DatabaseError as exc:
        raise _database(exc) from None
    return found


async def payouts_in_doubt(ctx: Context, args: LimitArg) -> list[dict[str, Any]]:
    try:
        return await ctx.rt.db.statement(lambda c: payouts.in_doubt(c, args.limit))
    except DatabaseError as exc:
        raise _database(exc) from None


async def payouts_release(ctx: Context, args: ReleaseArgs) -> dict[str, Any]:
    """Free an in-doubt slice from its idempotency scope: the operator has checked with the bank."""
    rt = ctx.rt
    if not args.reason.strip():
        raise ControlError(ErrorCode.BAD_ARGS, "payouts release needs --reason TEXT (it goes into the audit trail)")
    try:
        return await rt.db.transaction(lambda c: payouts.release(c, rt.host_id, args.id, ctx.who, args.reason))
    except payouts.SliceNotFound as exc:
        raise ControlError(ErrorCode.NOT_FOUND, str(exc)) from None
    except payouts.SliceFinal as exc:
        raise ControlError(ErrorCode.FINAL, str(exc)) from None
    except payouts.SliceNotBound as exc:
        raise ControlError(ErrorCode.NOT_IN_DOUBT, str(exc)) from None
    except payouts.SliceUnresolved as exc:  # a person resolves it: `payouts resolve`
        raise ControlError(ErrorCode.UNSUPPORTED, str(exc)) from None
    except payouts.ReleaseRefused as exc:  # in flight: its lease runs out, then a release may work
        raise ControlError(ErrorCode.BUSY, str(exc)) from None
    except DatabaseError as exc:
        raise _database(exc) from None


async def payouts_resolve(ctx: Context, args: ResolveArgs) -> dict[str, Any]:
    """A person's word on an unresolved slice, checked against its bank's lookup when the bank answers."""
    rt = ctx.rt
    if args.paid == args.not_paid:
        raise ControlError(ErrorCode.BAD_ARGS, "payouts resolve needs --paid or --not-paid (one of them)")
    if not args.reason.strip():
        raise ControlError(ErrorCode.BAD_ARGS, "payouts resolve needs --reason TEXT (it goes into the audit trail)")
    try:
        target = await rt.db.statement(lambda c: payout_resolve.unresolved(c, args.id))
        check = await _bank_check(rt, target)
        return await rt.db.transaction(lambda c: payout_resolve.resolve(
            c, rt.host_id, args.id, ctx.who, args.paid, args.reason, check))
    except payouts.SliceNotFound as exc:
        raise ControlError(ErrorCode.NOT_FOUND, str(exc)) from None
    except payouts.SliceFinal as exc:
        raise ControlError(ErrorCode.FINAL, str(exc)) from None
    except payout_resolve.NotUnresolved as exc:
        raise ControlError(ErrorCode.UNSUPPORTED, str(exc)) from None
    except payout_resolve.BankDisagrees as exc:
        raise ControlError(ErrorCode.BANK_DISAGREES, str(exc)) from None
    except DatabaseError as exc:
        raise _database(exc) from None


async def _bank_check(rt: Runtime, target: payout_resolve.Unresolved) -> payout_resolve.BankCheck:
    """Ask the slice's scope about its key; the bank not being reachable is an answer too."""
    actor = rt.directory.status_actor(target.scope, target.connector)
    if actor is None:
        return payout_resolve.BankCheck.not_asked(f"no connector of idempotency scope {target.scope!r} is running")
    try:
        status, _ = await actor.status(PaymentRef(idempotency_key=target.idempotency_key,
                                                  provider_ref=target.provider_ref), timeout=RESOLVE_LOOKUP_TIMEOUT)
    except ConnectorError as exc:
        return payout_resolve.BankCheck.not_asked(f"{actor.name}: {exc.code}: {exc}")
    return payout_resolve.BankCheck.from_status(actor.name, status)


async def payouts_retry(ctx: Context, args: RetryArgs) -> dict[str, Any]:
    """Make a slice (or every slice scheduled for later) due now, in its own scope."""
    rt = ctx.rt
    if (args.id is None) == (not args.all_scheduled):
        raise ControlError(ErrorCode.BAD_ARGS, "payouts retry needs an ID or --all-scheduled (not both)")
    ids = None if args.all_scheduled else [args.id]
    try:
        due = await rt.db.transaction(
            lambda c: payouts.retry_now(c, rt.host_id, ids, ctx.who))  # type: ignore[arg-type]
    except DatabaseError as exc:
        raise _database(exc) from None
    if args.id is not None and not due:
        raise ControlError(ErrorCode.NOT_FOUND, f"payout slice {args.id} is not waiting for a later attempt")
    rt.wake_dispatcher()
    return {"due_now": due}


async def audit_list(ctx: Context, args: LimitArg) -> list[dict[str, Any]]:
    try:
        return await ctx.rt.db.statement(lambda c: audit.operator_actions(c, args.limit))
    except DatabaseError as exc:
        raise _database(exc) from None


def _file_id(args: StatementsArgs) -> int:
    try:
        return int(args.id if args.id is not None else "")
    except ValueError:
        raise ControlError(ErrorCode.BAD_ARGS, f"statements {args.action} needs a file ID (a number)") from None


async def statements(ctx: Context, args: StatementsArgs) -> Any:
    """``statements list``, ``statements show ID``, ``statements poll SOURCE`` (poll now, answer the summary)."""
    rt = ctx.rt
    try:
        if args.action == "list":
            return await rt.db.statement(lambda c: stored.list_files(c, None, args.limit))
        if args.action == "show":
            raw_id = _file_id(args)
            # Sealed counterparty fields are opened for operators only (an unwrap, audited by Vault).
            keys = rt.statements.keys if ctx.operator else None
            found = await rt.db.statement(lambda c: stored.show_file(c, raw_id, args.limit, keys))
            if found is None:
                raise ControlError(ErrorCode.NOT_FOUND, f"no stored statement file {raw_id}")
            return found
    except (KeyUnavailable, SealError) as exc:
        raise ControlError(ErrorCode.UNAVAILABLE, f"the file's sealed fields cannot be opened: {exc}") from None
    except DatabaseError as exc:
        raise _database(exc) from None
    raise ControlError(ErrorCode.BAD_ARGS,
                       f"statements: unknown action {args.action!r}; use list, show, poll or reprocess")


async def statements_poll(ctx: Context, args: StatementsArgs) -> Any:
    """Poll a source now (it moves files on the bank's server: an operator command); answers the summary."""
    rt = ctx.rt
    poller = rt.statement_source(str(args.id or ""))
    if poller is None:
        raise ControlError(ErrorCode.NOT_FOUND, f"no running statement source {args.id!r}")
    try:
        summary = await poller.ask(PollNow(retry_stuck=args.retry_stuck), timeout=600)
    except (ConnectorError, DatabaseError) as exc:
        raise ControlError(ErrorCode.UNAVAILABLE, f"poll failed: {exc}") from None
    return _to_builtins(summary)


async def statements_reprocess(ctx: Context, args: StatementsArgs) -> Any:
    """Parse a stored file again from its raw bytes (after a parser or profile fix)."""
    rt = ctx.rt
    raw_id = _file_id(args)
    try:
        source = await rt.db.statement(lambda c: stored.source_of(c, raw_id))
        if source is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"no stored statement file {raw_id}")
        config = rt.config.connector(source)
        profile = rt.config.source_profile(config) if config is not None else None
        result = await rt.db.transaction(lambda c: stored.reprocess(c, raw_id, profile, rt.statements.keys,
                                                                    rt.statements.lookup_key))
    except (KeyUnavailable, SealError) as exc:
        raise ControlError(ErrorCode.UNAVAILABLE, f"statement file {raw_id} cannot be unsealed: {exc}") from None
    except ValueError as exc:
        raise ControlError(ErrorCode.BAD_ARGS, str(exc)) from None
    except DatabaseError as exc:
        raise _database(exc) from None
    return _to_builtins(result)


async def statements_rewrap(ctx: Context, args: StatementsArgs) -> Any:
    """After a rotation of the transit key: every sealed file's data key rewrapped under its latest version."""
    rt = ctx.rt
    keys = rt.statements.keys
    if keys is None:
        raise ControlError(ErrorCode.BAD_ARGS, "no [encryption] keys: nothing is sealed by this daemon")
    try:
        result = await rt.db.transaction(lambda c: stored.rewrap_stored(c, keys))
    except (KeyUnavailable, SealError) as exc:
        raise ControlError(ErrorCode.UNAVAILABLE, f"rewrap refused, nothing changed: {exc}") from None
    except DatabaseError as exc:
        raise _database(exc) from None
    return result


async def files_list(ctx: Context, args: LimitArg) -> dict[str, Any]:
    try:
        found = await ctx.rt.db.statement(lambda c: payment_files.list_files(c, None, args.limit))
    except DatabaseError as exc:
        raise _database(exc) from None
    return {"files": found}


async def files_show(ctx: Context, args: IdArg) -> dict[str, Any]:
    try:
        found = await ctx.rt.db.statement(lambda c: payment_files.show_file(c, args.id))
    except DatabaseError as exc:
        raise _database(exc) from None
    if found is None:
        raise ControlError(ErrorCode.NOT_FOUND, f"no payment file {args.id}")
    return found


async def files_resubmit(ctx: Context, args: ResubmitArgs) -> dict[str, Any]:
    """Upload a recorded file again: the same bytes, the same MsgId (a bank that has it refuses it, DU01). With
    --reopen-failed its failed slices go back into it first, in doubt again (audited, in the same transaction)."""
    rt = ctx.rt
    if args.reopen_failed and not args.reason.strip():
        raise ControlError(ErrorCode.BAD_ARGS, "files resubmit --reopen-failed needs --reason TEXT (it goes into"
                                               " the audit trail)")
    try:
        result = await rt.db.transaction(lambda c: payment_files.resubmit(
            c, rt.host_id, ctx.who, args.id, reopen_failed=args.reopen_failed, reason=args.reason))
    except payment_files.FileNotFound as exc:
        raise ControlError(ErrorCode.NOT_FOUND, str(exc)) from None
    except payment_files.ResubmitRefused as exc:
        raise ControlError(ErrorCode.FINAL, str(exc)) from None
    except DatabaseError as exc:
        raise _database(exc) from None
    return result


async def files_reapply(ctx: Context, args: IdArg) -> dict[str, Any]:
    """Apply a stored status report again, to the file it names among its bank profile's (another file channel
    took it, or its file's slices were reopened); stored as a new row naming the one it repeats."""
    rt = ctx.rt

    def profile_of(name: str) -> str | None:
        entry = rt.config.connector(name)
        return entry.bank_profile if entry is not None else None

    def signed_only(name: str) -> bool:
        from connectors import FileChannelConfig

        entry = rt.config.connector(name)
        return isinstance(entry, FileChannelConfig) and entry.iso20022.signed_reports

    try:
        return await rt.db.transaction(lambda c: payment_reports.reapply(c, ctx.who, args.id, profile_of,
                                                                         signed_only))
    except payment_reports.ReportNotFound as exc:
        raise ControlError(ErrorCode.NOT_FOUND, str(exc)) from None
    except payment_reports.ReapplyRefused as exc:
        raise ControlError(ErrorCode.BAD_ARGS, str(exc)) from None
    except DatabaseError as exc:
        raise _database(exc) from None


async def secrets(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
    """Each secret reference of the running config: where it resolved from, its version there, its age. Never
    the value."""
    rt = ctx.rt
    now = time.time()
    rows = []
    for path, secret in secret_entries(rt.config):
        if secret.scheme == "vault":
            source = f"{rt.config.vault.address} (KV v2)"
        elif secret.scheme == "env":
            source = f"environment variable {secret.target}"
        elif secret.scheme == "credential":
            source = f"systemd credential {secret.target}"
        else:
            source = secret.target
        rows.append({"path": path, "reference": secret.reference, "scheme": secret.scheme, "source": source,
                     "version": secret.version, "resolved": secret.resolved,
                     "age_seconds": None if secret.resolved_at is None else round(now - secret.resolved_at, 1)})
    return rows


async def secrets_refresh(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """Every secret reference read again now (vault: ones past the cache); only actors whose secrets changed
    restart."""
    from ..secret_rotation import refresh_all

    try:
        refreshed = await refresh_all(ctx.rt)
    except ConfigError as exc:
        raise ControlError(ErrorCode.CONFIG_INVALID, f"refresh refused, nothing changed: {exc}",
                           details=exc.lines()) from None
    reply = {"changed": refreshed.changed, **_to_builtins(refreshed.result)}
    if not refreshed.problems:
        return reply
    gone = sum(1 for p in refreshed.problems if p.state == "gone")
    kept = len(refreshed.problems) - gone
    restarted = refreshed.result.connectors.changed
    message = (f"secrets refresh: {gone} reference(s) gone, {kept} kept at the value in use; the rest was applied"
               f" (values changed: {', '.join(refreshed.changed) or 'none'}; connectors restarted:"
               f" {', '.join(restarted) or 'none'})")
    raise ControlError(ErrorCode.SECRETS_MISSING if gone else ErrorCode.UNAVAILABLE, message,
                       details=[str(p) for p in refreshed.problems])


async def reload(ctx: Context, args: ReloadArgs) -> dict[str, Any]:
    rt = ctx.rt
    try:
        result = await reloading.reload(rt, allow_removals=args.allow_removals)
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
        Command("reload", ReloadArgs, True, reload),
        Command("health", NameArg, True, health),  # a real bank call: operators only
        Command("logs", LogsArgs, False, logs),
        Command("reset-circuit", NameArg, True, reset_circuit),
        Command("force-open", NameArg, True, force_open),
        Command("set-rate", SetRateArgs, True, set_rate),
        Command("dlq-list", NoArgs, False, dlq_list),
        Command("dlq-retry", DlqRetryArgs, True, dlq_retry),
        Command("dlq-drop", DlqDropArgs, True, dlq_drop),
        Command("payouts-show", IdArg, False, payouts_show),
        Command("payouts-in-doubt", LimitArg, False, payouts_in_doubt),
        Command("payouts-release", ReleaseArgs, True, payouts_release),
        Command("payouts-retry", RetryArgs, True, payouts_retry),
        Command("payouts-resolve", ResolveArgs, True, payouts_resolve),
        Command("audit", LimitArg, False, audit_list),
        Command("secrets", NoArgs, False, secrets),
        Command("secrets-refresh", NoArgs, True, secrets_refresh),
        Command("files-list", LimitArg, False, files_list),
        Command("files-show", IdArg, False, files_show),
        Command("files-resubmit", ResubmitArgs, True, files_resubmit),
        Command("files-reapply", IdArg, True, files_reapply),
        Command("statements", StatementsArgs, False, statements),
        Command("statements-poll", StatementsArgs, True, statements_poll),
        Command("statements-rewrap", StatementsArgs, True, statements_rewrap),
        Command("statements-reprocess", StatementsArgs, True, statements_reprocess),
    )
}


def parse_args(command: Command, raw: dict[str, Any]) -> Any:
    try:
        return msgspec.convert(raw, command.args)
    except msgspec.ValidationError as exc:
        text = str(exc).replace("`$", "`args")
        raise ControlError(ErrorCode.BAD_ARGS, f"{command.name}: {text}") from None
