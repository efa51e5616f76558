"""What a pain.002 status does to a payout slice, and the rule that reports never move a slice backwards.

RJCT (and CANC, BLCK) fail the slice with the bank's reason; ACSC and ACCC settle it; the acceptances (ACTC,
ACCP, ACSP, ACWC, ACWP, ACFC, RCVD, PDNG) leave it sent: still in doubt in its scope, resolved by a later report or
a statement line. PART is a group or block status: what counts is each transaction's own. Reports arrive twice
and out of order: an acceptance after the final state changes nothing, and a final state that contradicts
another final state changes nothing either and is flagged for a person.
"""

from __future__ import annotations

import enum
from typing import Final


class Effect(enum.StrEnum):
    SENT = "sent"  # accepted somewhere along the way; not final
    SETTLED = "settled"
    FAILED = "failed"
    NONE = "none"  # says nothing about the transaction itself (PART) or a code we do not know


_EFFECTS: Final = {
    **dict.fromkeys(("RJCT", "CANC", "BLCK"), Effect.FAILED),
    **dict.fromkeys(("ACSC", "ACCC"), Effect.SETTLED),
    **dict.fromkeys(("ACTC", "ACCP", "ACSP", "ACWC", "ACWP", "ACFC", "RCVD", "PDNG", "PATC"), Effect.SENT),
}
FINAL: Final = frozenset({"settled", "failed"})


def effect(status: str | None) -> Effect:
    return _EFFECTS.get(status or "", Effect.NONE)


class Move(enum.StrEnum):
    APPLY = "apply"  # the slice takes the new state
    KEEP = "keep"  # nothing to do: the same state, or an earlier one arriving late
    CONFLICT = "conflict"  # a final state against another final state: nothing changes, a person looks


def move(current: str, new: Effect) -> Move:
    """Whether a slice in ``current`` (its status) takes the report's effect ``new``."""
    if new is Effect.NONE:
        return Move.KEEP
    if current in FINAL:
        if new is Effect.SENT or new.value == current:
            return Move.KEEP
        return Move.CONFLICT
    if new is Effect.SENT and current == "sent":
        return Move.KEEP
    return Move.APPLY
