"""Errors of the actor runtime.

::

    ActorError                  something about talking to an actor
    ├── MailboxFull             it is busy: the bounded mailbox has no room (backpressure)
    ├── AskTimeout              it is busy or stuck: no reply before the deadline
    ├── ActorStopped            you (or its supervisor) closed it; the message was not handled
    ├── ActorCrashed            it broke while handling your message
    └── Refused                 it handled the message and said no (raised by handlers, sent to the asker)
    SupervisorError
    ├── UnknownChild            no child of that name
    └── Escalation              a core child went past its restart intensity: the supervisor gives up
"""

from __future__ import annotations


class ActorError(Exception):
    """Base of the errors a caller of an actor sees."""

    def __init__(self, actor: str, message: str) -> None:
        super().__init__(f"{actor}: {message}")
        self.actor = actor


class MailboxFull(ActorError):
    """The actor's bounded mailbox is full; try later (retryable)."""

    retryable = True


class AskTimeout(ActorError):
    """No reply within the ask deadline (retryable)."""

    retryable = True


class ActorStopped(ActorError):
    """The actor is stopping or stopped; the message was not handled."""

    retryable = True


class ActorCrashed(ActorError):
    """The actor crashed while handling the message; its supervisor decides what happens next."""

    retryable = False


class Refused(ActorError):
    """Raised by a handler to answer an ask with a typed 'no' without crashing the actor."""

    retryable = False

    def __init__(self, actor: str, message: str, *, code: str = "refused") -> None:
        super().__init__(actor, message)
        self.code = code


class SupervisorError(Exception):
    """Base of the errors a supervisor raises."""


class UnknownChild(SupervisorError, KeyError):
    """No child of that name under this supervisor."""

    def __str__(self) -> str:
        return f"no child named {self.args[0]!r}"


class Escalation(SupervisorError):
    """A core child went past its restart intensity; the supervisor (and the daemon) must exit."""
