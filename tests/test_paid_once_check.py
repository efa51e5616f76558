"""The single-bank "paid twice" check (``payout_helpers.assert_paid_once``) seen to fail, and to pass.

The check counts what the sandbox bank's request log says it did with each request (executed, or answered from
its idempotency store), against the slices and their recorded attempts. Its negative controls: a bank that
executes replays instead of deduplicating them, and a send of a slice's key that no attempt accounts for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from connectors._signing import sign_request
from tests.payout_helpers import (
    HMAC,
    Bank,
    assert_paid_once,
    env,
    payout_toml,
    rest_connector,
    seed,
    sends_per_key,
    wait_for,
)


@pytest.fixture
def bank() -> Iterator[Bank]:
    b = Bank()
    yield b
    b.close()


def settle_through_resets(daemon_factory: Any, short_tmp: Path, dsn: str, bank: Bank, count: int) -> list[int]:
    """``count`` slices paid through a bank that resets a third of the calls (half of those after executing), so
    some keys are sent again: replays. Returns the slice ids, once each is settled."""
    d = daemon_factory(payout_toml(short_tmp, dsn, rest_connector("primary", bank.url)), env=env())
    bank.faults(reset_rate=0.35)
    ids = seed(dsn, count, max_attempts=50)

    def settled() -> bool:
        with psycopg.connect(dsn) as conn:
            return conn.execute("SELECT count(*) FROM payout_slices WHERE id = ANY(%s) AND status = 'settled'",
                                (ids,)).fetchone() == (count,)

    wait_for(settled, 60, "every slice settled")
    assert d.stop() == 0
    return ids


def test_a_bank_that_deduplicates_pays_once_and_the_retries_show_as_replays(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, bank: Bank
) -> None:
    settle_through_resets(daemon_factory, short_tmp, migrated_dsn, bank, 40)
    replays = assert_paid_once(migrated_dsn, bank)
    assert replays > 0, "a reset after executing was retried with the same key and answered from the store"
    assert replays == bank.stats()["replays"]


def test_negative_control_a_bank_that_executes_replays_is_seen_paying_twice(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, bank: Bank
) -> None:
    """The same run against a bank whose idempotency store forgets: each retry of an executed call is paid again."""
    bank.faults(execute_replays=1.0)
    settle_through_resets(daemon_factory, short_tmp, migrated_dsn, bank, 40)
    twice = {key for key, n in sends_per_key(bank).items() if n["executed"] > 1}
    assert twice, "some executed call was retried (else this control proves nothing)"
    with pytest.raises(AssertionError, match="paid twice: keys the bank executed more than once"):
        assert_paid_once(migrated_dsn, bank)


def test_negative_control_a_send_no_attempt_accounts_for_is_seen(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, bank: Bank
) -> None:
    """A clean run: no replay at all (``replays=0``). Then the key of a settled slice reaches the bank once more
    without an attempt (a second sender, a send outside the dispatcher): the bank deduplicates it, so its ledger
    still shows one payment, and the check still sees it."""
    d = daemon_factory(payout_toml(short_tmp, migrated_dsn, rest_connector("primary", bank.url)), env=env())
    ids = seed(migrated_dsn, 10)
    wait_for(lambda: len(bank.ledger()) == 10, 30, "ten payments")
    assert d.stop() == 0
    assert assert_paid_once(migrated_dsn, bank, replays=0) == 0
    payment = bank.ledger()[0]
    body = b'{"amount": "1", "currency": "XOF", "creditor": {"account": "SN08"}}'
    timestamp = int(time.time())
    answer = httpx.post(f"{bank.url}/payments", content=body, timeout=5, headers={
        "Idempotency-Key": payment["idempotency_key"], "X-Key-Id": "molamd-demo", "X-Timestamp": str(timestamp),
        "X-Signature": sign_request(HMAC.encode(), "POST", "/payments", timestamp, body)})
    assert answer.status_code == 409, answer.text  # the same key with another body: refused, nothing executed
    assert len(bank.ledger()) == 10 and len(ids) == 10
    with pytest.raises(AssertionError, match="the bank got it 2 times, 1 attempts recorded"):
        assert_paid_once(migrated_dsn, bank)
