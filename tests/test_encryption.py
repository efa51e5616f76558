"""Envelope encryption: chunked AES-GCM under a data key per value, wrapped by a local key or by a real OpenBao's
transit engine (under the daemon's own policy), with rotation, rewrap, a retired key version and tampering."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from openbao_dev import OpenBao

from molamd.encryption import (
    CHUNK,
    KeyUnavailable,
    LocalKeys,
    SealError,
    TransitKeys,
    lookup_hash,
    rewrap,
    seal,
    seal_chunks,
    unseal,
    wrapped_key,
)
from molamd.vault import Vault
from tests.corpora import WOLPH

LOCAL = LocalKeys(os.urandom(32))
SEPA = (WOLPH / "mt940_tests/betterplace/sepa_mt9401.sta").read_bytes()  # 26 statements, 97 lines


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_a_value_of_any_size_round_trips_and_is_not_readable(size: int) -> None:
    data = os.urandom(size)
    sealed = seal(LOCAL, data)
    assert unseal(LOCAL, sealed) == data
    assert size < 64 or data[:64] not in sealed
    assert b"".join(seal_chunks(LOCAL, [data[:5], data[5:]])) != sealed, "a new data key and nonce every time"


def test_a_stream_cut_anywhere_seals_the_same_plaintext() -> None:
    import random

    rng = random.Random(11)
    for _ in range(25):
        data = os.urandom(rng.choice([0, 1, CHUNK, CHUNK + 1, 2 * CHUNK, rng.randrange(4 * CHUNK)]))
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randrange(6))))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert unseal(LOCAL, b"".join(seal_chunks(LOCAL, pieces))) == data, (len(data), cuts)


def test_a_changed_dropped_or_cut_chunk_is_refused() -> None:
    data = os.urandom(2 * CHUNK + 100)
    sealed = seal(LOCAL, data)
    header = len(sealed) - (2 * (CHUNK + 16) + 100 + 16)
    flipped = bytearray(sealed)
    flipped[header + 10] ^= 1
    body = CHUNK + 16
    cases = {
        "a flipped bit": bytes(flipped),
        "the last chunk cut": sealed[:-(100 + 16)],
        "a middle chunk dropped": sealed[:header + body] + sealed[header + 2 * body:],
        "chunks swapped": sealed[:header] + sealed[header + body:header + 2 * body] + sealed[header:header + body]
        + sealed[header + 2 * body:],
        "truncated header": sealed[:7],
        "not ours": b"%PDF-1.4 ...",
    }
    for what, bad in cases.items():
        with pytest.raises(SealError):
            unseal(LOCAL, bad)
        assert what


def test_another_files_data_key_or_another_local_key_cannot_open_it() -> None:
    one, two = seal(LOCAL, b"statement one" * 100), seal(LOCAL, b"statement two" * 100)
    swapped = one.replace(wrapped_key(one).encode(), wrapped_key(two).encode())
    with pytest.raises(SealError):
        unseal(LOCAL, swapped)
    with pytest.raises(KeyUnavailable):
        unseal(LocalKeys(os.urandom(32)), one)
    with pytest.raises(ValueError, match="32 bytes"):
        LocalKeys.from_text(base64.b64encode(b"short").decode())


def test_lookup_hashes_are_equal_for_equal_accounts_and_keyed() -> None:
    key = os.urandom(32)
    assert lookup_hash(key, "SN08 0001 2345") == lookup_hash(key, "sn0800012345")
    assert lookup_hash(key, "SN0800012345") != lookup_hash(key, "SN0800012346")
    assert lookup_hash(key, "SN0800012345") != lookup_hash(os.urandom(32), "SN0800012345")


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBao]:
    server = OpenBao()
    yield server
    server.stop()


@pytest.fixture
def daemon_vault(bao: OpenBao) -> Iterator[Vault]:
    vault = Vault(bao.address, timeout=2)
    vault.login(bao.role_id, bao.secret_id())
    yield vault
    vault.close()


def test_transit_wraps_each_data_key_and_a_rotation_is_rewrapped_until_the_old_version_retires(
        bao: OpenBao, daemon_vault: Vault) -> None:
    keys = TransitKeys(daemon_vault, "molamd")
    data = os.urandom(2 * CHUNK + 5)
    first = seal(keys, data)
    assert wrapped_key(first).startswith("vault:v1:")
    assert unseal(keys, first) == data
    bao.admin.secrets.transit.rotate_key("molamd")
    moved = rewrap(keys, first)
    assert wrapped_key(moved).startswith("vault:v2:") and unseal(keys, moved) == data
    assert moved.endswith(first[-100:]), "rewrap leaves the ciphertext as it was"
    bao.admin.secrets.transit.update_key_configuration("molamd", min_decryption_version=2)
    try:
        with pytest.raises(KeyUnavailable, match="retired"):
            unseal(keys, first)
        assert unseal(keys, moved) == data
    finally:
        bao.admin.secrets.transit.update_key_configuration("molamd", min_decryption_version=1)
    corrupted = first.replace(wrapped_key(first).encode(), wrapped_key(first)[:-6].encode() + b"AAAAAA")
    with pytest.raises(KeyUnavailable, match=r"corrupted|transit"):
        unseal(keys, corrupted)


def test_a_key_the_policy_does_not_name_and_a_vault_that_is_down_are_clear_errors(
        bao: OpenBao, daemon_vault: Vault) -> None:
    with pytest.raises(KeyUnavailable, match="permission denied") as denied:
        TransitKeys(daemon_vault, "molamd-typo").new_key()
    assert not denied.value.retryable
    down = Vault("http://127.0.0.1:1", timeout=1)
    with pytest.raises(KeyUnavailable, match="cannot connect") as away:
        TransitKeys(down, "molamd").new_key()
    assert away.value.retryable


def test_raw_statement_files_are_stored_sealed_with_transit_parsed_as_usual_and_reprocessed(
        tmp_path: Path, migrated_dsn: str, daemon_vault: Vault) -> None:
    from connectors import Fetched
    from molamd.statements import ingest, reprocess, show_file

    keys, lookup = TransitKeys(daemon_vault, "molamd"), os.urandom(32)
    data = SEPA
    path = tmp_path / "sepa.sta"
    path.write_bytes(data)
    spooled = Fetched(path=str(path), sha256=hashlib.sha256(data).digest(), size=len(data))
    with psycopg.connect(migrated_dsn) as conn:
        done = ingest(conn, source="s", remote_name="sepa.sta", fmt="mt940", spooled=spooled, keys=keys,
                      lookup_key=lookup)
        assert done.outcome == "parsed" and done.lines == 97
        clear = conn.execute("SELECT count(*) FROM bank_statement_lines WHERE counterparty_name IS NOT NULL OR"
                             " raw_line IS NOT NULL OR remittance_info IS NOT NULL OR sealed_fields IS NULL").fetchone()
        assert clear == (0,), "every line's private fields sealed"
        hashed = conn.execute("SELECT count(*) FROM bank_statement_lines WHERE counterparty_account_hash = %s",
                              [lookup_hash(lookup, "DE42 1001 0010 0043 9211 05")]).fetchone()[0]
        assert hashed >= 2, "equal accounts found by their lookup hash"
        shown = show_file(conn, done.raw_id, 1000, keys)
        assert shown is not None
        names = {x["counterparty_name"] for x in shown["lines"]}
        assert "Richter Renate 70 Zeichen Beginn Fuellzeichen xxxxxxxx" in names
        hidden = show_file(conn, done.raw_id, 1000, None)
        assert hidden is not None and {x["counterparty_name"] for x in hidden["lines"]} == {None}
        # A sealed value moved to another line is refused: the line's place is authenticated with it.
        conn.execute("UPDATE bank_statement_lines SET sealed_fields = (SELECT sealed_fields FROM bank_statement_lines"
                     " WHERE line_no = 2 AND statement_no = 1) WHERE line_no = 1 AND statement_no = 1")
        with pytest.raises(SealError, match="line"):
            show_file(conn, done.raw_id, 1000, keys)
        conn.rollback()  # the whole transaction: the file is stored again below
        done = ingest(conn, source="s", remote_name="sepa.sta", fmt="mt940", spooled=spooled, keys=keys)
        raw, sealed, size = conn.execute("SELECT raw, sealed, size_bytes FROM bank_statements_raw").fetchone()
        assert sealed and size == len(data) and bytes(raw).startswith(b"MDE1")
        assert b"T089413956000001" not in bytes(raw) and unseal(keys, bytes(raw)) == data
        # A file that failed to parse is parsed again from its sealed bytes.
        conn.execute("DELETE FROM bank_statement_lines")
        conn.execute("UPDATE bank_statements_raw SET status = 'parse_failed', error = 'test'")
        assert reprocess(conn, done.raw_id, None, keys).lines == 97
        with pytest.raises(ValueError, match="sealed"):
            conn.execute("UPDATE bank_statements_raw SET status = 'parse_failed', error = 'test'")
            conn.execute("DELETE FROM bank_statement_lines")
            reprocess(conn, done.raw_id, None, None)
        conn.rollback()
    dump = subprocess.run(["pg_dump", "--data-only", migrated_dsn], capture_output=True, check=True).stdout
    assert b"T089413956000001" not in dump and b"Richter Renate" not in dump, "no bank data in clear in the database"


def test_after_a_transit_rotation_stored_files_are_rewrapped_in_place_and_the_old_version_can_retire(
        tmp_path: Path, migrated_dsn: str, bao: OpenBao, daemon_vault: Vault) -> None:
    from connectors import Fetched
    from molamd.statements import ingest, reprocess, rewrap_stored, show_file

    keys = TransitKeys(daemon_vault, "molamd")
    path = tmp_path / "sepa.sta"
    path.write_bytes(SEPA)
    spooled = Fetched(path=str(path), sha256=hashlib.sha256(SEPA).digest(), size=len(SEPA))
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        done = ingest(conn, source="s", remote_name="sepa.sta", fmt="mt940", spooled=spooled, keys=keys)
        before = conn.execute("SELECT raw FROM bank_statements_raw").fetchone()[0]
        bao.admin.secrets.transit.rotate_key("molamd")
        latest = int(bao.admin.secrets.transit.read_key("molamd")["data"]["latest_version"])
        assert rewrap_stored(conn, keys) == {"sealed": 1, "rewrapped": 1}
        raw, data_key = conn.execute("SELECT raw, data_key FROM bank_statements_raw").fetchone()
        assert raw == before and data_key.startswith(f"vault:v{latest}:"), "the bytes untouched, the key moved"
        assert rewrap_stored(conn, keys) == {"sealed": 1, "rewrapped": 0}
        bao.admin.secrets.transit.update_key_configuration("molamd", min_decryption_version=latest)
        try:
            shown = show_file(conn, done.raw_id, 1000, keys)
            assert shown is not None and any(line["counterparty_name"] for line in shown["lines"])
            conn.execute("DELETE FROM bank_statement_lines")
            conn.execute("UPDATE bank_statements_raw SET status = 'parse_failed', error = 'test'")
            assert reprocess(conn, done.raw_id, None, keys).lines == 97
        finally:
            bao.admin.secrets.transit.update_key_configuration("molamd", min_decryption_version=1)
        for change in ("raw = raw || '\\x00'::bytea", "sealed = false"):
            with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"):
                conn.execute(f"UPDATE bank_statements_raw SET {change}")
