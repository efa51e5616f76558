"""mTLS client certificates from a real OpenBao's PKI engine: issued when the connector opens, renewed before they
expire and presented by the next TLS handshake to a bank that requires them, without restarting the connector."""

from __future__ import annotations

import http.server
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
import vault_setup
from openbao_dev import OpenBao

from connectors import RestConfig, RestConnector, Secret, decode_hook
from molamd.client_certificates import CertificateKeeper, Request
from molamd.metrics import Metrics
from molamd.vault import Vault, VaultDenied
from tests.http_helpers import LoopbackServer


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBao]:
    server = OpenBao()
    vault_setup.configure(server.admin, certificate_ttl="4s")
    server.admin.adapter.post("/v1/pki/roles/test-bank", json={"allow_any_name": True, "server_flag": True,
                                                               "client_flag": False, "ttl": "1h"})
    yield server
    server.stop()


class MutualTlsBank:
    """An HTTPS server that requires a client certificate from molamd's CA and notes each one's serial."""

    def __init__(self, directory: Path, bao: OpenBao) -> None:
        ca = httpx.get(f"{bao.address}/v1/pki/ca/pem", timeout=5).text
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_text(ca)
        issued = bao.admin.adapter.post("/v1/pki/issue/test-bank", json={"common_name": "bank.test",
                                                                        "ip_sans": "127.0.0.1"})["data"]
        (directory / "bank.pem").write_text(issued["certificate"] + "\n")
        (directory / "bank.key").write_text(issued["private_key"] + "\n")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "bank.pem", directory / "bank.key")
        context.load_verify_locations(self.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
        self.serials: list[str] = []
        bank = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                peer: Any = self.connection.getpeercert()  # type: ignore[attr-defined]
                bank.serials.append(str(peer["serialNumber"]).lower())
                body = json.dumps({"status": "ok"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")  # every call a new handshake
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = LoopbackServer(Handler, context)
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()


def rest_config(url: str, ca_file: Path) -> RestConfig:
    config = msgspec.convert({
        "name": "bank-a", "kind": "rest", "bank_profile": "bank-a",
        "rest": {"base_url": url, "key_id": "molamd", "hmac_secret": "env:UNUSED", "ca_file": str(ca_file),
                 "client_pki": "pki/issue/molamd-client", "client_common_name": "molamd.bank-a",
                 "verify_response_signatures": False}}, RestConfig, dec_hook=decode_hook)
    rest = msgspec.structs.replace(config.rest, hmac_secret=Secret("env:UNUSED", "not-used-by-health"))
    return msgspec.structs.replace(config, rest=rest)


def serial(value: str) -> str:
    return value.replace(":", "").lower().lstrip("0")


async def test_a_certificate_is_issued_renewed_before_expiry_and_presented_without_a_restart(
        tmp_path: Path, bao: OpenBao) -> None:
    bank = MutualTlsBank(tmp_path, bao)
    vault = Vault(bao.address, timeout=2)
    vault.login(bao.role_id, bao.secret_id())
    metrics = Metrics()
    keeper = CertificateKeeper(vault, metrics.vault)
    config = rest_config(bank.url, bank.ca_file)
    request = Request("pki/issue/molamd-client", "molamd.bank-a", str(bank.ca_file))
    connector = RestConnector(config, tls=lambda: keeper.context("bank-a", request))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(keeper.run)
            await connector.open()
            assert (await connector.healthcheck()).ok
            first = keeper.status()["bank-a"]
            assert [serial(s) for s in bank.serials] == [serial(first["serial"])]
            with trio.fail_after(10):
                while keeper.status()["bank-a"]["serial"] == first["serial"]:  # noqa: ASYNC110 (status is polled)
                    await trio.sleep(0.1)
            second = keeper.status()["bank-a"]
            assert second["expires_at"] > first["expires_at"]
            assert (await connector.healthcheck()).ok
            assert serial(bank.serials[-1]) == serial(second["serial"]), "the next handshake shows the new one"
            sample = metrics.registry.get_sample_value("molamd_client_certificate_expiry_timestamp_seconds",
                                                       {"connector": "bank-a"})
            assert sample == second["expires_at"]
            assert "PRIVATE KEY" not in repr(keeper.status())
            nursery.cancel_scope.cancel()
    finally:
        await connector.aclose()
        vault.close()
        bank.close()


async def test_a_role_the_policy_does_not_name_is_a_clear_refusal(bao: OpenBao) -> None:
    vault = Vault(bao.address, timeout=2)
    vault.login(bao.role_id, bao.secret_id())
    keeper = CertificateKeeper(vault, Metrics().vault)
    with pytest.raises(VaultDenied, match="pki/issue/test-bank"):
        await keeper.context("bank-b", Request("pki/issue/test-bank", "molamd.bank-b", None))
    vault.close()
