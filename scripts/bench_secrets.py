"""Benchmark: secrets in OpenBao. Prints figures; not a test.

1. Resolving 1,000 ``vault:`` references (one KV v2 secret each) cold (every one read from the server) and with
   the cache warm; then start to READY=1 of a daemon with 1,000 REST connectors whose HMAC secrets all come from
   Vault. Target: READY <= 5 s.
2. Envelope encryption of a 100 MB statement file with a transit data key beside the same AES-256-GCM (1 MiB
   chunks) done locally with ``cryptography``, in the same run. Target: >= 0.8 of local.
3. Pool credential rotation under load: workers claim rows (SELECT … FOR UPDATE SKIP LOCKED, UPDATE) in a loop
   through the daemon's Database on leased credentials while the keeper rotates them; the longest pause between
   two claims during a rotation beside the longest without one. Target: <= 100 ms.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_core import Figures, start_daemon  # noqa: E402
from openbao_dev import OpenBao  # noqa: E402
from pgcluster import Cluster, scratch_cluster  # noqa: E402

BIN = ROOT / ".venv" / "bin"


def resolve_figures(bao: OpenBao, count: int) -> tuple[float, float]:
    from molamd.vault import Reference, Vault

    refs = [Reference.parse(f"secret/molamd/bench-{i}#hmac") for i in range(count)]
    vault = Vault(bao.address, timeout=5)
    vault.login(bao.role_id, bao.secret_id())
    t = time.perf_counter()
    for ref in refs:
        vault.read(ref)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    for ref in refs:
        vault.read(ref)
    warm = time.perf_counter() - t
    vault.close()
    return cold, warm


def daemon_config(work: Path, dsn: str, bao: OpenBao, count: int) -> str:
    (work / "secret_id").write_text(bao.secret_id() + "\n")
    text = textwrap.dedent(f"""
        [daemon]
        host_id = "bench"
        [control]
        socket = "{work}/control.sock"
        [metrics]
        enabled = false
        [logging]
        level = "warning"
        [database]
        dsn = "{dsn}"
        [vault]
        address = "{bao.address}"
        role_id = "{bao.role_id}"
        secret_id = "file:{work / 'secret_id'}"
        [workers.health_checker]
        enabled = false
        """)
    for i in range(count):
        text += textwrap.dedent(f"""
            [[connectors]]
            name = "rest-{i:04d}"
            kind = "rest"
            bank_profile = "bank-{i:04d}"
            [connectors.rest]
            base_url = "http://127.0.0.1:9/"
            key_id = "molamd"
            hmac_secret = "vault:secret/molamd/bench-{i}#hmac"
            """)
    return text


def ready_figure(bao: OpenBao, work: Path, cluster: Cluster, count: int) -> float:
    subprocess.run([str(BIN / "molamd"), "migrate", "--dsn", cluster.dsn()], check=True, capture_output=True)
    cfg = work / "molamd.toml"
    cfg.write_text(daemon_config(work, cluster.dsn(), bao, count))
    figures = Figures()
    proc = start_daemon(work, cfg, figures)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return figures.ready_s


def transit_figures(bao: OpenBao, megabytes: int) -> tuple[float, float]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from molamd.encryption import CHUNK, TransitKeys, seal, seal_chunks
    from molamd.vault import Vault

    data = os.urandom(megabytes * 1024 * 1024)
    vault = Vault(bao.address, timeout=5)
    vault.login(bao.role_id, bao.secret_id())
    keys = TransitKeys(vault, "molamd")
    seal(keys, b"warm up")
    t = time.perf_counter()
    sealed = list(seal_chunks(keys, [data]))  # as ingestion streams it into COPY
    transit = time.perf_counter() - t
    t = time.perf_counter()
    aead, nonce = AESGCM(AESGCM.generate_key(256)), os.urandom(8)
    local = [aead.encrypt(nonce + i.to_bytes(4, "big"), data[o:o + CHUNK], None)
             for i, o in enumerate(range(0, len(data), CHUNK))]
    local_s = time.perf_counter() - t
    assert sum(map(len, sealed)) > len(data) and local
    vault.close()
    return megabytes / transit, megabytes / local_s


def rotation_figures(bao: OpenBao, rotations: int) -> tuple[float, float, int]:
    import psycopg
    import trio
    import vault_setup

    from molamd.config import DatabaseSection
    from molamd.db import Database
    from molamd.db_credentials import CredentialKeeper
    from molamd.metrics import Metrics
    from molamd.vault import Vault

    directory = tempfile.mkdtemp(prefix="mdb-rot-")
    cluster = Cluster(directory)
    cluster.init()
    (cluster.data / "pg_hba.conf").write_text("host all postgres 127.0.0.1/32 trust\n"
                                              "host all all 127.0.0.1/32 scram-sha-256\n")
    cluster.start()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE work (id serial PRIMARY KEY, claimed int NOT NULL DEFAULT 0)")
            conn.execute("INSERT INTO work (claimed) SELECT 0 FROM generate_series(1, 200)")
            vault_setup.prepare_database(conn)
        bao.database(f"127.0.0.1:{cluster.port}", "molam", ttl="1h", max_ttl="24h")
        vault = Vault(bao.address, timeout=5)
        vault.login(bao.role_id, bao.secret_id())
        section = DatabaseSection(dsn=f"host=127.0.0.1 port={cluster.port} dbname=molam", pool_min_size=4,
                                  pool_max_size=8)
        return trio.run(_rotate_under_load, vault, section, rotations, Metrics(), CredentialKeeper, Database)
    finally:
        bao.revoke_all()
        cluster.destroy()


async def _rotate_under_load(vault: Any, section: Any, rotations: int, metrics: Any, keeper_type: Any,
                             database_type: Any) -> tuple[float, float, int]:
    import trio

    database: Any = None

    async def drain() -> None:
        await database.drain()

    keeper = keeper_type(vault, "database", "molamd", metrics.vault, fraction=0.5, drain=drain)
    database = database_type(section, metrics=metrics, login=keeper.login,
                             on_refused=lambda: keeper.rotate_soon("refused"))
    done: list[float] = []
    windows: list[tuple[float, float]] = []

    def claim(conn: Any) -> None:
        conn.execute("UPDATE work SET claimed = claimed + 1 WHERE id = (SELECT id FROM work ORDER BY random()"
                     " LIMIT 1 FOR UPDATE SKIP LOCKED)")

    async def worker() -> None:
        while True:
            try:
                await database.transaction(claim)
                done.append(time.perf_counter())
            except Exception:
                await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await nursery.start(database.run)
        while not database.up:  # noqa: ASYNC110 (the Database has no event for it)
            await trio.sleep(0.05)
        for _ in range(4):
            nursery.start_soon(worker)
        await trio.sleep(1.0)
        for _ in range(rotations):
            start = time.perf_counter()
            keeper.rotate_soon("bench")
            while keeper.rotations < len(windows) + 1:  # noqa: ASYNC110 (polled as a client would)
                await trio.sleep(0.001)
            await trio.sleep(0.3)  # connections made with the old lease come back and are retired
            windows.append((start, time.perf_counter()))
            await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    gaps = [(b - a, b) for a, b in itertools.pairwise(done)]
    during = [g for g, at in gaps if any(s <= at <= e for s, e in windows)]
    outside = [g for g, at in gaps if not any(s - 0.05 <= at <= e + 0.05 for s, e in windows)]
    return max(during) * 1000, max(outside) * 1000, len(done)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--references", type=int, default=1000)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--rotations", type=int, default=5)
    args = parser.parse_args()
    bao = OpenBao()
    try:
        for i in range(args.references):
            bao.put(f"molamd/bench-{i}", hmac=f"bench-secret-{i:06d}-{os.urandom(4).hex()}")
        cold, warm = resolve_figures(bao, args.references)
        print(f"resolve {args.references} vault: references: cold {cold:.3f} s, warm (cache) {warm * 1000:.1f} ms")
        with scratch_cluster("mdb-sec-") as (work, cluster):
            ready = ready_figure(bao, work, cluster, args.references)
        print(f"start to READY=1, {args.references} REST connectors, secrets from Vault: {ready:.2f} s"
              " (target <= 5 s)")
        transit, local = transit_figures(bao, args.megabytes)
        print(f"envelope encryption of {args.megabytes} MB: transit data key {transit:.0f} MB/s, local AES-GCM"
              f" {local:.0f} MB/s, ratio {transit / local:.2f} (target >= 0.8)")
        during, outside, claims = rotation_figures(bao, args.rotations)
        print(f"pool rotation under load: longest pause in claims during {args.rotations} rotations {during:.1f} ms,"
              f" without a rotation {outside:.1f} ms ({claims} claims; target <= 100 ms)")
    finally:
        bao.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
