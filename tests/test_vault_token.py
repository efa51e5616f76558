"""The token actor's schedule on trio's mock clock, against a Vault double of our own client's seam: renew at the
fraction of the TTL, log in again when a renewal is capped or fails, back off while login fails, say what it
waits for, and tell the lease holders after each new token. (The real server: tests/test_vault_runtime.py.)"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors import Backoff
from molamd.metrics import Metrics
from molamd.vault import TokenState, VaultDenied, VaultLoginFailed, VaultUnavailable
from molamd.vault_token import TokenKeeper


class ScriptedVault:
    """Answers renew_token and login_again from scripts; records when each was called (trio time)."""

    address = "http://vault.test:8200"
    logged_in_at = 0.0

    def __init__(self, renewals: list[Any], logins: list[Any]) -> None:
        self.token_ttl: int | None = 10
        self._renewals, self._logins = renewals, logins
        self.calls: list[tuple[str, float]] = []

    def _next(self, what: str, script: list[Any]) -> Any:
        self.calls.append((what, trio.current_time()))
        answer = script.pop(0) if script else script_default(what)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def renew_token(self) -> TokenState:
        state: TokenState = self._next("renew", self._renewals)
        self.token_ttl = state.ttl
        return state

    def login_again(self) -> int:
        ttl: int = self._next("login", self._logins)
        self.token_ttl = ttl
        return ttl


def script_default(what: str) -> Any:
    return TokenState(ttl=10, renewable=True) if what == "renew" else 10


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def run_for(keeper: TokenKeeper, seconds: float) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await trio.sleep(seconds)
        keeper.request_stop()


async def inline(fn: Any) -> Any:
    """The calls run on the trio thread: with a worker thread the mock clock would jump while one runs."""
    await trio.lowlevel.checkpoint()
    return fn()


def keeper_for(vault: ScriptedVault, metrics: Metrics) -> TokenKeeper:
    return TokenKeeper(vault, metrics.vault, fraction=0.5,  # type: ignore[arg-type]
                       backoff=Backoff(initial=1.0, maximum=8.0, jitter=0.0), blocking=inline)


async def test_it_renews_at_half_the_ttl_and_logs_in_again_when_the_server_caps_a_renewal(
        autojump_clock: trio.testing.MockClock) -> None:
    vault = ScriptedVault([TokenState(ttl=10, renewable=True), TokenState(ttl=10, renewable=True),
                           TokenState(ttl=4, renewable=True, capped=True)], [10])
    metrics = Metrics()
    keeper = keeper_for(vault, metrics)
    told: list[float] = []

    async def new_token() -> None:
        told.append(trio.current_time())

    keeper.on_new_token(new_token)
    await run_for(keeper, 26)
    kinds = [kind for kind, _ in vault.calls]
    assert kinds[:5] == ["renew", "renew", "renew", "login", "renew"], kinds
    times = [round(t, 1) for _, t in vault.calls]
    assert times[:3] == [5.0, 10.0, 15.0], "every half TTL"
    assert times[3] == times[2], "the capped renewal is followed by a login at once"
    assert len(told) == 1 and keeper.logins == 1 and keeper.waiting_for is None
    assert metrics.vault.renewals.labels("capped")._value.get() == 1
    assert metrics.vault.token_ttl._value.get() == 10


async def test_a_failed_renewal_logs_in_and_a_failed_login_backs_off_and_says_what_it_waits_for(
        autojump_clock: trio.testing.MockClock) -> None:
    vault = ScriptedVault([VaultDenied("renew the token: permission denied")],
                          [VaultUnavailable("cannot connect"), VaultLoginFailed("secret_id refused"), 10])
    metrics = Metrics()
    keeper = keeper_for(vault, metrics)
    seen: list[str | None] = []

    async def watch() -> None:
        while True:
            await trio.sleep(0.5)
            seen.append(keeper.status()["waiting_for"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await run_for(keeper, 12)
        nursery.cancel_scope.cancel()
    kinds = [kind for kind, _ in vault.calls]
    assert kinds[:4] == ["renew", "login", "login", "login"], kinds
    gaps = [round(b[1] - a[1], 1) for a, b in zip(vault.calls[1:4], vault.calls[2:5], strict=False)][:2]
    assert gaps == [1.0, 2.0], f"backoff between failed logins: {gaps}"
    assert any(w and "secret_id refused" in w for w in seen), seen
    assert keeper.waiting_for is None and keeper.status()["state"] == "ok"
    assert metrics.vault.logins.labels("failure")._value.get() == 2
    assert metrics.vault.up._value.get() == 1
