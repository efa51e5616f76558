"""The connector directory: which connector actors serve which route, and the lookups everyone else needs.

It answers the dispatcher's routing questions (design §6): slice → bank profile → its connectors that declare
SEND_PAYMENT for the rail and currency, by priority, within the slice's bound idempotency scope if it has one,
skipping those not accepting work. Capabilities are read from what each kind and instance declares, never probed.
The directory holds an index of the config it was built from; the reloader swaps it whole.
"""

from __future__ import annotations

from collections.abc import Callable

from actors import ConnectorActor, Route
from connectors import Capability, ConnectorConfig, offers

from .config import Config

ActorLookup = Callable[[str], ConnectorActor | None]


class Directory:
    """Routes and lookups over one config's connectors and the actors running them."""

    def __init__(self, config: Config, actor: ActorLookup, running: Callable[[], list[ConnectorActor]]) -> None:
        self._actor = actor
        self._running = running
        self._routes: dict[str, list[ConnectorConfig]] = {}
        self._scopes: dict[str, list[ConnectorConfig]] = {}
        self.index(config)

    def index(self, config: Config) -> None:
        """Rebuild the route index from ``config`` (the reloader calls this once the new config is applied)."""
        routes: dict[str, list[ConnectorConfig]] = {}
        scopes: dict[str, list[ConnectorConfig]] = {}
        for entry in config.connectors:
            kind_offers = offers(entry)
            if Capability.SEND_PAYMENT in kind_offers:
                routes.setdefault(entry.bank_profile, []).append(entry)
            if Capability.PAYMENT_STATUS in kind_offers:
                scopes.setdefault(entry.scope, []).append(entry)
        for entries in (*routes.values(), *scopes.values()):
            entries.sort(key=lambda c: (c.priority, c.name))
        self._routes, self._scopes = routes, scopes

    # -- the dispatcher's Router --------------------------------------------------------------------

    def route(self, bank_profile: str, rail: str, currency: str, scope: str | None = None) -> Route:
        configured = [c for c in self._routes.get(bank_profile, ())
                      if c.serves(rail, currency) and (scope is None or c.scope == scope)]
        available = []
        for entry in configured:
            actor = self._actor(entry.name)
            if actor is not None and actor.accepting and Capability.SEND_PAYMENT in actor.capabilities:
                available.append(actor)
        return Route(configured=len(configured), available=available)

    def acceptance_window(self, scope: str) -> float:
        """The longest acceptance window of the scope's connectors (the safe side when they differ)."""
        windows = [c.acceptance_window.seconds for c in self._scopes.get(scope, ())]
        return max(windows) if windows else float("inf")

    def any_accepting(self) -> bool:
        return any(a.accepting for a in self._running())

    # -- lookups --------------------------------------------------------------------------------------

    def status_actor(self, scope: str | None, prefer: str | None) -> ConnectorActor | None:
        """A running connector that can answer status queries in ``scope``: ``prefer`` if it is one of them."""
        if prefer is not None:
            actor = self._actor(prefer)
            if actor is not None and (scope is None or actor.scope == scope):
                return actor
        for entry in self._scopes.get(scope or "", ()):
            actor = self._actor(entry.name)
            if actor is not None and Capability.PAYMENT_STATUS in actor.capabilities:
                return actor
        return None
