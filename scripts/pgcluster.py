"""A throwaway PostgreSQL cluster for the demo and the tests: initdb, start, stop, on loopback.

initdb refuses to run as root, so when we are root the cluster belongs to the ``postgres`` user.
Usage: ``python scripts/pgcluster.py start DIR`` prints the DSN; ``stop DIR`` stops it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"{name} not found: install PostgreSQL (scripts/setup does)")
    return candidates[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as_owner(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    if os.getuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


class Cluster:
    """One cluster under ``directory``; its DSN stays valid across stop and start."""

    def __init__(self, directory: str | Path, port: int | None = None) -> None:
        self.directory = Path(directory).resolve()
        self._wanted_port = port
        self.data = self.directory / "data"
        self.port_file = self.directory / "port"

    @property
    def port(self) -> int:
        return int(self.port_file.read_text())

    def dsn(self, dbname: str = "molam") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def init(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.directory, pw.pw_uid, pw.pw_gid)
            self.directory.chmod(0o755)
        _run_as_owner(
            [pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync", "--locale=C.UTF-8"]
        )
        self.port_file.write_text(str(self._wanted_port or _free_port()))
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.directory}'\nfsync = off\nsynchronous_commit = off\n"
                "full_page_writes = off\nmax_connections = 200\nshared_buffers = 128MB\n"
            )

    def running(self) -> bool:
        result = subprocess.run(
            [pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False
        )
        return result.returncode == 0

    def start(self) -> None:
        self.init()
        if self.running():
            return
        _run_as_owner(
            [pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "postgres.log"), "-w", "-t", "60",
             "start"]
        )
        self.ensure_database("molam")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            _run_as_owner([pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])

    def ensure_database(self, name: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                out = subprocess.run(
                    [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                     "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
                    check=True, capture_output=True, text=True,
                )
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if out.stdout.strip() != "1":
            subprocess.run(
                [pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
                check=True, capture_output=True,
            )

    def recreate_database(self, name: str) -> None:
        """Drop and create a database (the demo starts from a fresh one every run)."""
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def scratch_cluster(prefix: str) -> Iterator[tuple[Path, Cluster]]:
    """A work directory the postgres user can reach, with a running cluster in it; both removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    work.chmod(0o755)
    cluster = Cluster(work / "pg")
    try:
        cluster.start()
        yield work, cluster
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop", "dsn"):
        print("usage: pgcluster.py start|stop|dsn DIR", file=sys.stderr)
        return 2
    cluster = Cluster(argv[2])
    if argv[1] == "start":
        cluster.start()
    elif argv[1] == "stop":
        cluster.stop()
        return 0
    print(cluster.dsn())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
