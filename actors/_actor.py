"""The actor: a trio task that owns its state and a bounded, typed mailbox.

Callers never touch an actor's state: they ``tell`` it a message (fire and forget; a full mailbox raises
MailboxFull at once) or ``ask`` it (the message travels with a one-shot reply channel; the caller waits up to
its deadline for room in the mailbox and for the reply). Handlers run one message at a time, in order.

A handler that raises ``Refused`` answers the asker with that error and the actor carries on; any other
exception crashes the actor, the asker gets ``ActorCrashed`` and the supervisor decides what happens next.

A handler that must answer later (a bank call that takes seconds) returns ``Deferred(call)``: the actor runs
``call`` as a task of its own and its result, or one of the actor's ``reply_errors``, is the reply, through the
same ask. The task runs inside a cancel scope that belongs to the ask: an asker that stops waiting (its deadline,
its own cancellation) cancels the work it asked for; nothing is left running for nobody.
Whatever is left in the mailbox when the actor stops is answered with ``ActorStopped``, so no asker waits for
a reply that will never come and every dropped ``tell`` is counted.
"""

from __future__ import annotations

import contextlib
import enum
import math
import secrets
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import msgspec
import trio

from ._errors import ActorCrashed, ActorStopped, AskTimeout, MailboxFull, Refused

M = TypeVar("M")

DEFAULT_MAILBOX_SIZE = 64
DEFAULT_ASK_TIMEOUT = 5.0


class ActorState(enum.StrEnum):
    """Where an actor incarnation is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ActorSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What anyone may read about an actor without asking it."""

    name: str
    incarnation: str
    state: ActorState
    uptime_seconds: float
    mailbox_depth: int
    mailbox_size: int
    handled: int
    dropped: int


class _Envelope(Generic[M]):
    """A message in the mailbox, with the reply channel of an ask (None for a tell) and the ask's cancel scope."""

    __slots__ = ("msg", "reply", "scope")

    def __init__(self, msg: M, reply: trio.MemorySendChannel[tuple[bool, Any]] | None,
                 scope: trio.CancelScope | None = None) -> None:
        self.msg = msg
        self.reply = reply
        self.scope = scope


class Deferred:
    """What a handler returns to answer later: ``call()`` runs as the actor's task and its result is the reply."""

    __slots__ = ("call",)

    def __init__(self, call: Callable[[], Awaitable[Any]]) -> None:
        self.call = call


def new_incarnation() -> str:
    """A short random id naming one run of an actor."""
    return secrets.token_hex(6)


class Actor(ABC, Generic[M]):
    """Base class: subclasses implement ``handle`` and optionally ``setup`` and ``teardown``.

    One instance is one incarnation: a supervisor builds a new instance for every (re)start.
    """

    def __init__(self, name: str, *, mailbox_size: int = DEFAULT_MAILBOX_SIZE) -> None:
        if mailbox_size < 1:
            raise ValueError("mailbox_size must be at least 1")
        self.name = name
        self.incarnation = new_incarnation()
        self.mailbox_size = mailbox_size
        self._tx, self._rx = trio.open_memory_channel[_Envelope[M]](mailbox_size)
        self._state = ActorState.STARTING
        self._started_at: float | None = None
        self._handled = 0
        self._dropped = 0
        self._nursery: trio.Nursery | None = None
        self._deferred = 0
        self._no_deferred = trio.Event()
        self._no_deferred.set()

    # -- what subclasses implement -------------------------------------------------------------------

    async def setup(self) -> None:
        """Acquire what the actor needs before it reports ready. Cancellation aborts the start."""

    async def teardown(self) -> None:
        """Release what setup acquired. Runs shielded, bounded by ``teardown_timeout``."""

    teardown_timeout = 5.0

    # Errors a deferred call answers its asker with (the actor carries on); anything else crashes the actor.
    reply_errors: tuple[type[BaseException], ...] = (Refused,)

    async def drained(self) -> None:
        """After a graceful stop's last message: wait for the actor's own background work to finish.

        The default waits for deferred replies still running; the supervisor cancels them after its grace.
        """
        await self._no_deferred.wait()

    def cut_short(self, msg: M) -> BaseException:
        """The answer to an asker whose deferred call was cut short by the actor stopping."""
        return ActorStopped(self.name, f"stopped before finishing {type(msg).__name__}")

    @property
    def deferred_in_flight(self) -> int:
        """Deferred replies still running."""
        return self._deferred

    @abstractmethod
    async def handle(self, msg: M) -> Any:
        """Handle one message; the return value is the reply to an ask."""

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def state(self) -> ActorState:
        return self._state

    @property
    def nursery(self) -> trio.Nursery:
        """A nursery living as long as this incarnation, for work the actor runs beside its mailbox."""
        if self._nursery is None:
            raise RuntimeError(f"{self.name}: not running")
        return self._nursery

    def uptime(self) -> float:
        if self._started_at is None:
            return 0.0
        return trio.current_time() - self._started_at

    def snapshot(self) -> ActorSnapshot:
        stats = self._tx.statistics() if self._state is not ActorState.STOPPED else None
        return ActorSnapshot(
            name=self.name,
            incarnation=self.incarnation,
            state=self._state,
            uptime_seconds=round(self.uptime(), 3),
            mailbox_depth=stats.current_buffer_used if stats else 0,
            mailbox_size=self.mailbox_size,
            handled=self._handled,
            dropped=self._dropped,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Set up, report ready, then handle messages until stopped.

        On cancellation the current handler is cancelled, teardown runs shielded and every message still in
        the mailbox is answered with ActorStopped.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.setup()
                self._started_at = trio.current_time()
                self._state = ActorState.RUNNING
                task_status.started()
                await self._loop()
                await self.drained()
                nursery.cancel_scope.cancel()
        finally:
            self._state = ActorState.STOPPED
            self._nursery = None
            self._tx.close()
            self._fail_pending()
            with trio.CancelScope(shield=True), trio.move_on_after(self.teardown_timeout):
                await self.teardown()

    def request_stop(self) -> None:
        """Stop taking messages; the actor handles what is queued and then returns from ``run``."""
        if self._state in (ActorState.STARTING, ActorState.RUNNING):
            self._state = ActorState.STOPPING
        self._tx.close()

    async def _loop(self) -> None:
        async for env in self._rx:
            try:
                result = await self.handle(env.msg)
            except Refused as exc:
                self._answer(env, False, exc)
            except BaseException as exc:
                crash = ActorCrashed(self.name, f"crashed handling {type(env.msg).__name__}: {exc!r}")
                self._answer(env, False, crash)
                raise
            else:
                if isinstance(result, Deferred):
                    self._start_deferred(env, result)
                else:
                    self._answer(env, True, result)
            finally:
                self._handled += 1

    def _start_deferred(self, env: _Envelope[M], deferred: Deferred) -> None:
        self._deferred += 1
        self._no_deferred = trio.Event()
        self.nursery.start_soon(self._run_deferred, env, deferred)

    async def _run_deferred(self, env: _Envelope[M], deferred: Deferred) -> None:
        """One deferred reply, inside the ask's cancel scope (cancelled when the asker gives up)."""
        answered = False
        try:
            with env.scope if env.scope is not None else trio.CancelScope():
                try:
                    value = await deferred.call()
                except self.reply_errors as exc:
                    self._answer(env, False, exc)
                else:
                    self._answer(env, True, value)
                answered = True
        finally:
            if not answered:
                self._answer(env, False, self.cut_short(env.msg))
            self._deferred -= 1
            if self._deferred == 0:
                self._no_deferred.set()
            self.deferred_done()

    def deferred_done(self) -> None:
        """Called on the trio thread each time a deferred reply finished (``deferred_in_flight`` is updated)."""

    @staticmethod
    def _answer(env: _Envelope[M], ok: bool, value: Any) -> None:
        if env.reply is None:
            return
        # The asker may have given up (deadline): then nothing waits for this reply any more.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            env.reply.send_nowait((ok, value))

    def _fail_pending(self) -> None:
        while True:
            try:
                env = self._rx.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            if env.reply is None:
                self._dropped += 1
            else:
                self._answer(env, False, ActorStopped(self.name, "stopped before handling the message"))

    # -- talking to it ------------------------------------------------------------------------------

    def tell(self, msg: M) -> None:
        """Queue a message without waiting; raises MailboxFull or ActorStopped at once."""
        try:
            self._tx.send_nowait(_Envelope(msg, None))
        except trio.WouldBlock:
            raise MailboxFull(self.name, f"mailbox full ({self.mailbox_size})") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped(self.name, "not accepting messages") from None

    async def ask(self, msg: M, *, timeout: float = DEFAULT_ASK_TIMEOUT, wait_for_room: bool = True) -> Any:
        """Send a message and wait for the reply, at most ``timeout`` seconds in all.

        Raises AskTimeout (no room or no reply in time), MailboxFull (no room and ``wait_for_room`` is False),
        ActorStopped, ActorCrashed, the handler's Refused or a deferred call's ``reply_errors``.
        Cancelling the caller, or its deadline, abandons the reply and cancels the deferred work it asked for;
        a message already handled synchronously stays handled.
        """
        reply_tx, reply_rx = trio.open_memory_channel[tuple[bool, Any]](1)
        deadline = trio.current_time() + timeout if math.isfinite(timeout) else math.inf
        work = trio.CancelScope()
        envelope = _Envelope(msg, reply_tx, work)
        try:
            with reply_rx, trio.move_on_at(deadline):
                try:
                    if wait_for_room:
                        await self._tx.send(envelope)
                    else:
                        self._tx.send_nowait(envelope)
                except trio.WouldBlock:
                    raise MailboxFull(self.name, f"mailbox full ({self.mailbox_size})") from None
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    raise ActorStopped(self.name, "not accepting messages") from None
                try:
                    ok, value = await reply_rx.receive()
                except trio.EndOfChannel:  # pragma: no cover - the reply channel is never closed by the actor
                    raise ActorStopped(self.name, "stopped without replying") from None
                if ok:
                    return value
                raise value
        finally:
            work.cancel()  # answered: a no-op; abandoned: the deferred call stops too
        raise AskTimeout(self.name, f"no reply to {type(msg).__name__} within {timeout:g}s")
