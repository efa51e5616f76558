"""An operator resolves an ``unresolved`` payout slice (design §6): ``molamctl payouts resolve ID --paid|--not-paid``.

A slice is unresolved when its idempotency scope could not say, by the end of its acceptance window, whether it
executed the payment: it may have been paid. A person finds out (the bank's portal, a phone call, a statement)
and says so. The word is checked against the bank's own lookup when the bank answers: if it says it executed the
payment, ``--not-paid`` is refused, and if it says it refused it or has no such payment, ``--paid`` is. When the
bank cannot be asked, the operator's word stands and the audit row says the bank could not be asked.

``--paid`` makes the slice ``settled``. ``--not-paid`` makes it ``failed``, not ``dead``: failed is final, the
platform reads it as "not paid, this payout is over" and decides itself whether to pay anew; a dead slice sits
in the dead-letter queue, where a `dlq retry --all` would send it again without the person who judged it.
One transaction: the slice's change and its audit row (with the caller) are written together or not at all.
"""

from __future__ import annotations

from typing import Any

import msgspec

from connectors import PaymentState, PaymentStatus

from . import audit as audit_trail
from .audit import Identity
from .payouts import SliceFinal, SliceNotFound

FINAL = ("settled", "failed", "returned")


class NotUnresolved(ValueError):
    """The slice is not unresolved: the daemon is still working it (or a release, not a resolve, is what fits)."""


class BankDisagrees(ValueError):
    """The bank's lookup contradicts the operator: nothing changed."""


class Unresolved(msgspec.Struct, frozen=True, kw_only=True):
    """An unresolved slice, as the bank lookup needs it."""

    id: int
    scope: str
    connector: str | None
    idempotency_key: str
    provider_ref: str | None


class BankCheck(msgspec.Struct, frozen=True, kw_only=True):
    """What the slice's scope said when asked for the resolve."""

    executed: bool | None  # True: it has the payment (accepted or settled); False: refused or no such payment;
    # None: the bank could not be asked, or could not say
    detail: str
    provider_ref: str | None = None
    asked: bool = True  # False: no connector of the scope could be asked, or the lookup failed

    @classmethod
    def from_status(cls, connector: str, status: PaymentStatus) -> BankCheck:
        said = f"{connector} answered {status.state}" + (f" ({status.provider_ref})" if status.provider_ref else "")
        if status.state in (PaymentState.ACCEPTED, PaymentState.SETTLED) and status.provider_ref is not None:
            return cls(executed=True, detail=said, provider_ref=status.provider_ref)
        if status.state is PaymentState.REJECTED:
            return cls(executed=False, detail=f"{said}, reason {status.reason_code}")
        if status.state is PaymentState.NOT_FOUND:
            return cls(executed=False, detail=said)
        return cls(executed=None, detail=f"{said}: no payment id, so it could not say")

    @classmethod
    def not_asked(cls, why: str) -> BankCheck:
        return cls(executed=None, detail=f"the bank could not be asked: {why}", asked=False)


def unresolved(conn: Any, slice_id: int) -> Unresolved:
    """The slice if it is unresolved; typed errors otherwise."""
    row = conn.execute("SELECT status, bound_scope, connector_name, idempotency_key, provider_ref"
                       " FROM payout_slices WHERE id = %s", (slice_id,)).fetchone()
    if row is None:
        raise SliceNotFound(f"no payout slice {slice_id}")
    status, scope, connector, key, ref = row
    if status in FINAL:
        raise SliceFinal(f"payout slice {slice_id} is {status}: final, nothing to resolve")
    if status != "unresolved":
        raise NotUnresolved(f"payout slice {slice_id} is {status}, not unresolved: the daemon is still working it"
                            " (`molamctl payouts show ID`)")
    return Unresolved(id=slice_id, scope=scope, connector=connector, idempotency_key=key, provider_ref=ref)


def resolve(conn: Any, host: str, slice_id: int, who: Identity, paid: bool, reason: str,
            check: BankCheck) -> dict[str, Any]:
    """Unresolved → settled (``paid``) or failed, with the audit row; refused when the bank said otherwise."""
    word = "paid" if paid else "not paid"
    if check.executed is not None and check.executed != paid:
        raise BankDisagrees(f"payout slice {slice_id}: the operator says {word} but {check.detail}; nothing changed")
    row = conn.execute("SELECT status, bound_scope FROM payout_slices WHERE id = %s FOR UPDATE",
                       (slice_id,)).fetchone()
    if row is None:
        raise SliceNotFound(f"no payout slice {slice_id}")
    if row[0] != "unresolved":  # changed since it was read (a statement line settled it, another operator)
        raise NotUnresolved(f"payout slice {slice_id} is {row[0]} now, no longer unresolved; nothing changed")
    to = "settled" if paid else "failed"
    note = f"resolved {word} by {who.label}: {reason} ({check.detail})"
    conn.execute("UPDATE payout_slices SET status = %s, final_at = now(), last_error = %s, next_attempt_at = NULL,"
                 " provider_ref = coalesce(%s, provider_ref) WHERE id = %s",
                 (to, note[:2000], check.provider_ref, slice_id))
    audit_trail.slice_changes(conn, host, who, [audit_trail.SliceChange(
        slice_id=slice_id, action="payout_resolve", from_status="unresolved", to_status=to, target=row[1],
        detail=f"{word}: {reason}; {check.detail}")])
    return {"id": slice_id, "status": to, "scope": row[1], "bank": check.detail,
            "bank_asked": check.asked}
