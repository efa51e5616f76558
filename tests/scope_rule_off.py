"""Breaks the idempotency-scope rule on purpose, for the negative controls of the cross-bank checks (design §6).

Never imported by the daemon itself: a test puts a ``sitecustomize`` that calls ``break_routing_and_guard()`` on
the ``PYTHONPATH`` of one daemon process, and turns the attempts table's scope trigger off in its database
(``disable_trigger``), so that process routes, recovers and records attempts as if slices were bound to no scope.
``break_routing()`` alone leaves the last lines of defence (the SQL guard, the trigger) to hold.
Each patch checks that the code it replaces is still there, so a change to the rule cannot turn a negative control
into a test of nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
SCOPE_GUARD = " AND (p.bound_scope IS NULL OR p.bound_scope = u.scope)"  # in payouts._START_ATTEMPTS
TRIGGER = "payout_slice_attempts_guard_scope"


def break_routing_and_guard() -> None:
    """Routing (and so recovery, which asks the route for its connectors) ignores a slice's bound scope, and the
    SQL that starts an attempt no longer refuses one in another scope."""
    from molamd import payouts

    if SCOPE_GUARD not in payouts._START_ATTEMPTS:
        raise RuntimeError("payouts._START_ATTEMPTS no longer has the scope guard this negative control removes")
    payouts._START_ATTEMPTS = payouts._START_ATTEMPTS.replace(SCOPE_GUARD, "")
    print("negative control: the scope guard of a new attempt removed", file=sys.stderr, flush=True)
    break_routing()


def break_routing() -> None:
    """Routing (and so recovery) ignores a slice's bound scope; the SQL guard and the trigger stay."""
    from molamd import directory

    original = directory.Directory.route

    def route_anywhere(self: Any, bank_profile: str, rail: str, currency: str, scope: str | None = None) -> Any:
        return original(self, bank_profile, rail, currency, None)

    directory.Directory.route = route_anywhere  # type: ignore[method-assign]
    print("negative control: routing ignores the bound scope", file=sys.stderr, flush=True)


def disable_trigger(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        found = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = %s", (TRIGGER,)).fetchone()
        if found != (1,):
            raise RuntimeError(f"no trigger {TRIGGER} to turn off")
        conn.execute(f"ALTER TABLE payout_slice_attempts DISABLE TRIGGER {TRIGGER}")


def daemon_env(directory: Path, breaker: str = "break_routing_and_guard") -> dict[str, str]:
    """The environment of a daemon process with the rule broken: a ``sitecustomize`` that calls ``breaker`` (one
    of the functions above) at start."""
    site = directory / "scope-rule-off"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"from tests.scope_rule_off import {breaker}\n{breaker}()\n")
    return {"PYTHONPATH": f"{site}:{ROOT}"}
