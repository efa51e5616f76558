"""The daemon with its secrets in a real OpenBao dev server: a rotated HMAC secret taken during a payout run with
the sandbox bank switching keys, the token actor renewing and logging in again, Vault going away mid-run, and a
canary for every secret that must never show in logs, the database, metrics or control replies."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openbao_dev import OpenBao

from tests.conftest import free_port
from tests.payout_helpers import (
    Bank,
    assert_paid_once,
    paid_per_reference,
    payout_toml,
    rest_connector,
    seed,
    wait_final,
    wait_for,
)

CANARY = "canary-5be1-"


@pytest.fixture
def bao() -> Iterator[OpenBao]:
    server = OpenBao(token_period="3s")
    yield server
    server.stop()


def vault_toml(bao: OpenBao, directory: Path, *, rotation_check: str = "200ms", cache_ttl: str = "15m") -> str:
    (directory / "secret_id").write_text(bao.secret_id() + "\n")
    return textwrap.dedent(f"""
        [vault]
        address = "{bao.address}"
        role_id = "{bao.role_id}"
        secret_id = "file:{directory / 'secret_id'}"
        timeout = "2s"
        rotation_check = "{rotation_check}"
        cache_ttl = "{cache_ttl}"
        """)


def vault_connector(name: str, url: str, path: str, **kw: Any) -> str:
    return rest_connector(name, url, hmac_env="UNUSED", **kw).replace(
        'hmac_secret = "env:UNUSED"', f'hmac_secret = "vault:secret/molamd/{path}#hmac"')


def incarnations(d: Any) -> dict[str, int]:
    return {row["name"]: row["incarnation"] for row in d.ctl_json("connectors")}



def null_reading_vault(bao: OpenBao, profile: str = "bank-a") -> str:
    """A null connector "n1" whose token is the KV secret molamd/null (a canary value, put there now)."""
    bao.put("molamd/null", token=CANARY + "null")
    return textwrap.dedent(f"""
        [[connectors]]
        name = "n1"
        kind = "null"
        bank_profile = "{profile}"
        [connectors.null]
        token = "vault:secret/molamd/null#token"
        """)

def test_a_rotated_hmac_secret_is_taken_mid_run_by_its_connector_alone_and_no_payout_fails(
        short_tmp: Path, migrated_dsn: str, daemon_factory: Any, bao: OpenBao) -> None:
    bank_a, bank_b = Bank(), Bank()
    try:
        httpx.post(f"{bank_a.url}/admin/secret", json={"secret": CANARY + "a-1", "keep_previous": False},
                   timeout=5).raise_for_status()
        httpx.post(f"{bank_b.url}/admin/secret", json={"secret": CANARY + "b-1", "keep_previous": False},
                   timeout=5).raise_for_status()
        bao.put("molamd/bank-a", hmac=CANARY + "a-1")
        bao.put("molamd/bank-b", hmac=CANARY + "b-1")
        metrics_port = free_port()
        connectors = (vault_connector("bank-a", bank_a.url, "bank-a")
                      + vault_connector("bank-b", bank_b.url, "bank-b", profile="bank-b"))
        text = payout_toml(short_tmp, migrated_dsn, connectors, metrics_port=metrics_port) \
            + vault_toml(bao, short_tmp)
        d = daemon_factory(text, env={"HOME": str(short_tmp)})
        before = incarnations(d)
        ids = seed(migrated_dsn, 300) + seed(migrated_dsn, 50, profile="bank-b")
        wait_for(lambda: len(bank_a.ledger()) >= 60, 30, "payouts under way")
        # The bank switches first and accepts the old key for a while; then the new one goes into Vault.
        httpx.post(f"{bank_a.url}/admin/secret", json={"secret": CANARY + "a-2"}, timeout=5).raise_for_status()
        version = bao.put("molamd/bank-a", hmac=CANARY + "a-2")
        wait_for(lambda: {r["reference"]: r for r in d.ctl_json("secrets")}[
            "vault:secret/molamd/bank-a#hmac"]["version"] == version, 15, "the new version in use")
        final = wait_final(migrated_dsn, ids, 90)
        assert final == {"settled": 350}, final
        paid = paid_per_reference(bank_a, bank_b)
        assert len(paid) == 350 and all(len(v) == 1 for v in paid.values()), "each payout paid exactly once"
        after = incarnations(d)
        assert after["bank-a"] != before["bank-a"], "the connector whose secret rotated restarted"
        assert after["bank-b"] == before["bank-b"], "the other connector was not touched"
        assert bank_a.stats()["auth_failures"] == 0
        # Later calls are signed with the new key: the bank stops accepting the old one and calls still work.
        httpx.post(f"{bank_a.url}/admin/secret", json={"secret": CANARY + "a-2", "keep_previous": False},
                   timeout=5).raise_for_status()
        more = seed(migrated_dsn, 20)
        assert wait_final(migrated_dsn, more, 30) == {"settled": 20}
        status = d.ctl_json("status")
        assert status["vault"]["state"] == "ok" and status["vault"]["renewals"] >= 1, status["vault"]
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert 'molamd_vault_secret_checks_total{outcome="rotated"}' in scrape
        assert "molamd_vault_token_ttl_seconds" in scrape
        replies = [d.ctl("--json", *c).stdout for c in (("status",), ("secrets",), ("connectors",),
                                                        ("connector", "bank-a"), ("stats",))]
        dump = subprocess.run(["pg_dump", "--data-only", migrated_dsn], capture_output=True, text=True,
                              check=True).stdout
        assert d.stop() == 0
        assert "vault token revoked" in d.logs()
        for where, text_seen in (("logs", d.logs()), ("metrics", scrape), ("database", dump),
                                 ("control replies", "\n".join(replies))):
            assert CANARY not in text_seen, f"a secret value in the {where}"
        assert CANARY not in bao.audit_log.read_text(), "the audit log holds HMACs, never values"
    finally:
        bank_a.close()
        bank_b.close()


def test_the_token_actor_renews_logs_in_again_when_revoked_and_the_daemon_outlives_vault(
        short_tmp: Path, daemon_factory: Any, bao: OpenBao) -> None:
    text = null_reading_vault(bao)
    from tests.conftest import daemon_toml

    (short_tmp / "secret_id").write_text(bao.secret_id() + "\n")
    metrics_port = free_port()
    d = daemon_factory(daemon_toml(short_tmp, connectors=text, metrics_port=metrics_port)
                       + vault_toml(bao, short_tmp, rotation_check="0s"), env={"HOME": str(short_tmp)})
    wait_for(lambda: d.ctl_json("status")["vault"]["renewals"] >= 2, 10, "two renewals of a 3 s token")
    # Revoked from outside (an operator, or a security response): the next renewal fails, and it logs in again.
    accessors = bao.admin.adapter.list("/v1/auth/token/accessors")["data"]["keys"]
    for accessor in accessors:
        info = bao.admin.adapter.post("/v1/auth/token/lookup-accessor", json={"accessor": accessor})["data"]
        if info.get("display_name") == "approle":
            bao.admin.adapter.post("/v1/auth/token/revoke-accessor", json={"accessor": accessor})
    wait_for(lambda: d.ctl_json("status")["vault"]["logins_again"] >= 1, 10, "a login after the revocation")
    assert "vault: logged in again" in d.logs()
    refreshed = d.ctl_json("secrets", "refresh")
    assert refreshed["changed"] == [], refreshed
    # Sealed: the daemon waits and says so; unsealed, the token actor is good again (the token survived).
    bao.seal()
    wait_for(lambda: d.ctl_json("status")["vault"]["state"] == "waiting", 15, "the token actor waiting")
    assert "sealed" in d.ctl_json("status")["vault"]["waiting_for"]
    sealed = d.ctl("secrets", "refresh")
    assert sealed.returncode == 1 and "unavailable" in sealed.stderr, "sealed: said so, not a plain success"
    assert "vault:secret/molamd/null#token: kept the value in use" in sealed.stderr, sealed.stderr
    bao.unseal()
    wait_for(lambda: d.ctl_json("status")["vault"]["state"] == "ok", 20, "the token actor good again")
    # Vault goes away: the daemon keeps running on what it read, says what it waits for, and refreshes from cache.
    bao.kill()
    wait_for(lambda: d.ctl_json("status")["vault"]["state"] == "waiting", 15, "the token actor waiting")
    status = d.ctl_json("status")
    assert "login failed" in status["vault"]["waiting_for"], status["vault"]
    away = d.ctl("secrets", "refresh")
    assert away.returncode == 1 and "kept the value in use" in away.stderr, "the value in use stays, said so"
    assert [r["state"] for r in d.ctl_json("connectors")] == ["running"]
    # Outlived, not just survived half a second: the token actor tries again with Vault gone (its backoff starts
    # at 1 s) and the daemon is still running and serving after that.
    failed_before = vault_logins_failed(metrics_port)
    wait_for(lambda: vault_logins_failed(metrics_port) > failed_before, 15, "another login tried with Vault gone")
    assert d.proc is not None and d.proc.poll() is None
    assert [r["state"] for r in d.ctl_json("connectors")] == ["running"]
    assert d.stop() == 0
    assert CANARY not in d.logs()


def vault_logins_failed(metrics_port: int) -> float:
    scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    for line in scrape.splitlines():
        if line.startswith('molamd_vault_logins_total{outcome="failure"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def scram_cluster() -> Iterator[Any]:
    """A PostgreSQL cluster of this test where every user but postgres logs in with scram-sha-256: the leased
    passwords are really checked."""
    import tempfile

    from pgcluster import Cluster

    cluster = Cluster(tempfile.mkdtemp(prefix="md-pgv-"))
    cluster.init()
    (cluster.data / "pg_hba.conf").write_text("local all postgres trust\nhost all postgres 127.0.0.1/32 trust\n"
                                              "host all all 127.0.0.1/32 scram-sha-256\n")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_leased_database_credentials_rotate_several_times_and_survive_a_revocation_mid_run(
        short_tmp: Path, daemon_factory: Any, bao: OpenBao, scram_cluster: Any) -> None:
    import psycopg
    import vault_setup

    from molamd.db import migrate

    dsn = scram_cluster.dsn("molam")
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        vault_setup.prepare_database(conn)
    bao.database(f"127.0.0.1:{scram_cluster.port}", "molam", ttl="2s", max_ttl="4s")
    bank = Bank()
    try:
        bao.put("molamd/bank-a", hmac=CANARY + "a")
        httpx.post(f"{bank.url}/admin/secret", json={"secret": CANARY + "a", "keep_previous": False},
                   timeout=5).raise_for_status()
        daemon_dsn = f"host=127.0.0.1 port={scram_cluster.port} dbname=molam"
        text = payout_toml(short_tmp, daemon_dsn, vault_connector("bank-a", bank.url, "bank-a", rate=40.0)) \
            + vault_toml(bao, short_tmp)
        text = text.replace('retry_max = "500ms"\n', 'retry_max = "500ms"\ncredentials = "vault-db:molamd"\n', 1)
        d = daemon_factory(text, env={"HOME": str(short_tmp)})
        wait_for(lambda: d.ctl_json("status")["database"]["up"], 15, "the pool up on leased credentials")
        ids = seed(dsn, 400)
        wait_for(lambda: d.ctl_json("status")["database"]["rotations"] >= 1, 20, "a first rotation")
        lease = d.ctl_json("status")["database"]["lease_id"]
        assert lease.startswith("database/creds/molamd/")
        bao.admin.sys.revoke_lease(lease)  # from outside: the role is dropped under the pool
        final = wait_final(dsn, ids, 90)
        assert final == {"settled": 400}, final
        assert_paid_once(dsn, bank)
        database = d.ctl_json("status")["database"]
        assert database["rotations"] >= 3, database
        assert database["lease_id"] != lease and "password" not in database
        with psycopg.connect(dsn) as conn:
            leased = [r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'")]
        assert leased, "the pool logs in as a leased user"
        assert d.stop() == 0
        reasons = [e["fields"]["reason"] for e in d.log_entries() if e.get("message") == "database credentials rotated"]
        assert len(reasons) >= 3 and "max TTL" in reasons, reasons
        assert {"revoked", "refused"} & set(reasons), f"the revocation noticed: {reasons}"
        with psycopg.connect(dsn) as conn:
            left = [r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'")]
        assert left == [], "the token revoked at stop took its leased roles with it"
    finally:
        bank.close()


def test_a_database_engine_that_cannot_create_roles_leaves_the_daemon_up_and_saying_why(
        short_tmp: Path, daemon_factory: Any, bao: OpenBao, pg: Any, migrated_dsn: str) -> None:
    import psycopg

    dbname = psycopg.conninfo.conninfo_to_dict(migrated_dsn)["dbname"]
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS molamd_app")  # the leased users' role is missing: CREATE ROLE fails
    bao.database(f"127.0.0.1:{pg.port}", str(dbname))
    text = payout_toml(short_tmp, f"host=127.0.0.1 port={pg.port} dbname={dbname}", "") + vault_toml(bao, short_tmp)
    text = text.replace('retry_max = "500ms"\n', 'retry_max = "500ms"\ncredentials = "vault-db:molamd"\n', 1)
    d = daemon_factory(text, env={"HOME": str(short_tmp)})
    wait_for(lambda: "vault-db:database/molamd" in str(d.ctl_json("status")["database"]["error"]), 15,
             "the database waiting for its credentials", lambda: d.ctl_json("status")["database"])
    database = d.ctl_json("status")["database"]
    assert not database["up"] and database["lease_id"] is None
    assert "new credentials" in database["waiting_for"], database
    assert d.stop() == 0


def test_a_deleted_secret_stops_being_used_and_refresh_names_each_reference_it_could_not_read(
        short_tmp: Path, migrated_dsn: str, daemon_factory: Any, bao: OpenBao) -> None:
    """The latest version of a KV secret deleted: `secrets refresh` is an error naming that reference, and the
    connector that signed with it stops (a reload does not bring the value back from the cache); restored, it
    is read and used again. Sealed: an error naming each reference whose value in use was kept."""
    import json

    import psycopg

    from tests.payout_helpers import statuses

    bank = Bank()
    try:
        d = _two_vault_secrets_in_use(short_tmp, migrated_dsn, daemon_factory, bao, bank)
        assert wait_final(migrated_dsn, seed(migrated_dsn, 5), 30) == {"settled": 5}
        hmac, token = "vault:secret/molamd/bank-a#hmac", "vault:secret/molamd/null#token"

        bao.admin.secrets.kv.v2.delete_latest_version_of_secret(path="molamd/bank-a", mount_point="secret")
        done = d.ctl("--json", "secrets", "refresh")
        assert done.returncode == 1, (done.stdout, done.stderr)
        error = json.loads(done.stdout)
        assert error["code"] == "secrets_missing", error
        said = [line for line in error["details"] if hmac in line]
        assert len(said) == 1 and "deleted" in said[0] and "bank-a" in said[0], error
        assert not any(token in line for line in error["details"]), "the other reference was read"
        rows = {r["name"]: r for r in d.ctl_json("connectors")}
        assert rows["bank-a"]["state"] != "running" and hmac in (rows["bank-a"]["last_error"] or ""), rows["bank-a"]
        assert rows["n1"]["state"] == "running"
        assert {r["reference"]: r for r in d.ctl_json("secrets")}[hmac]["resolved"] is False
        waiting = seed(migrated_dsn, 3)
        reloaded = d.ctl("reload")
        assert reloaded.returncode == 1 and hmac in reloaded.stderr, "the deleted value is not taken from the cache"
        with psycopg.connect(migrated_dsn) as conn:
            attempts = conn.execute("SELECT count(*) FROM payout_slice_attempts WHERE payout_slice_id = ANY(%s)",
                                    (waiting,)).fetchone()
        assert attempts == (0,) and len(bank.ledger()) == 5, "nothing sent, nothing signed with the deleted key"
        assert set(statuses(migrated_dsn, waiting)) <= {"pending", "claimed"}

        bao.put("molamd/bank-a", hmac=CANARY + "a-1")  # restored
        refreshed = d.ctl_json("secrets", "refresh")
        assert hmac in refreshed["changed"] and "bank-a" in refreshed["connectors"]["changed"], refreshed
        assert wait_final(migrated_dsn, waiting, 30) == {"settled": 3}

        bao.seal()
        done = d.ctl("--json", "secrets", "refresh")
        assert done.returncode == 1, (done.stdout, done.stderr)
        error = json.loads(done.stdout)
        assert error["code"] == "unavailable", error
        for reference in (hmac, token):
            [line] = [line for line in error["details"] if reference in line]
            assert "kept the value in use" in line and "sealed" in line, line
        assert {r["state"] for r in d.ctl_json("connectors")} == {"running"}
        bao.unseal()
        assert d.stop() == 0
        assert CANARY not in d.logs()
    finally:
        bank.close()


def _two_vault_secrets_in_use(short_tmp: Path, dsn: str, daemon_factory: Any, bao: OpenBao, bank: Bank) -> Any:
    """A daemon whose REST connector bank-a signs with one KV secret and whose null connector n1 holds another,
    both read once at start (the periodic check is an hour away, so only `secrets refresh` reads them again)."""
    httpx.post(f"{bank.url}/admin/secret", json={"secret": CANARY + "a-1", "keep_previous": False},
               timeout=5).raise_for_status()
    bao.put("molamd/bank-a", hmac=CANARY + "a-1")
    null = null_reading_vault(bao, "bank-z")
    text = payout_toml(short_tmp, dsn, vault_connector("bank-a", bank.url, "bank-a") + null) \
        + vault_toml(bao, short_tmp, rotation_check="1h")
    return daemon_factory(text, env={"HOME": str(short_tmp)})


def test_the_periodic_check_withdraws_a_deleted_secret_and_takes_it_back_when_restored(
        short_tmp: Path, daemon_factory: Any, bao: OpenBao) -> None:
    from tests.conftest import daemon_toml

    text = null_reading_vault(bao)
    d = daemon_factory(daemon_toml(short_tmp, connectors=text) + vault_toml(bao, short_tmp, rotation_check="200ms"),
                       env={"HOME": str(short_tmp)})
    bao.admin.secrets.kv.v2.delete_latest_version_of_secret(path="molamd/null", mount_point="secret")
    wait_for(lambda: d.ctl_json("connectors")[0]["state"] != "running", 15, "n1 stopped")
    row = d.ctl_json("connectors")[0]
    assert "vault:secret/molamd/null#token" in (row["last_error"] or "") and "gone" in row["last_error"], row
    assert "secret refresh: a reference could not be read" in d.logs()
    bao.put("molamd/null", token=CANARY + "null-2")
    wait_for(lambda: d.ctl_json("connectors")[0]["state"] == "running", 15, "n1 running again")
    assert d.stop() == 0
    assert CANARY not in d.logs()
