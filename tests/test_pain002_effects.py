"""pain.002 statuses applied to slice states: forwards only, and contradictions flagged, never applied."""

from __future__ import annotations

import pytest

from connectors.iso20022 import Effect, Move, effect, move


@pytest.mark.parametrize(("status", "expected"), [
    ("RJCT", Effect.FAILED), ("CANC", Effect.FAILED), ("ACSC", Effect.SETTLED), ("ACCC", Effect.SETTLED),
    ("ACTC", Effect.SENT), ("ACCP", Effect.SENT), ("ACSP", Effect.SENT), ("PDNG", Effect.SENT),
    ("ACWC", Effect.SENT), ("PART", Effect.NONE), ("XXXX", Effect.NONE), (None, Effect.NONE),
])
def test_effects(status: str | None, expected: Effect) -> None:
    assert effect(status) is expected


def test_reports_never_move_a_slice_backwards() -> None:
    # in order: accepted, then settled
    assert move("sent", effect("ACTC")) is Move.KEEP
    assert move("sent", effect("ACSC")) is Move.APPLY
    # out of order and twice: an acceptance after settlement, the settlement again
    assert move("settled", effect("ACSP")) is Move.KEEP
    assert move("settled", effect("ACSC")) is Move.KEEP
    # a rejection after a settlement (or the reverse) is for a person, not applied
    assert move("settled", effect("RJCT")) is Move.CONFLICT
    assert move("failed", effect("ACSC")) is Move.CONFLICT
    # a slice still in doubt from a crash takes any answer
    assert move("sending", effect("ACTC")) is Move.APPLY
    assert move("dead", effect("RJCT")) is Move.APPLY
    assert move("sent", effect("PART")) is Move.KEEP
