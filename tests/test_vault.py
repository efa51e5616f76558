"""``vault:`` references resolved from a real OpenBao dev server: AppRole login (plain and response-wrapped
secret_id), KV v2 fields and versions, and every refusal named by its reference, never by a value."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openbao_dev import OpenBao

from molamd.config import ConfigError, load_resolved
from tests.conftest import daemon_toml

ROOT = Path(__file__).resolve().parent.parent
CANARY = "canary-7f3e9a-hmac-value"


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBao]:
    server = OpenBao()
    yield server
    server.stop()


def config(tmp_path: Path, bao: OpenBao, secret_id: str, reference: str, *, wrapped: bool = False,
           address: str | None = None) -> Path:
    (tmp_path / "secret_id").write_text(secret_id + "\n")
    path = tmp_path / "molamd.toml"
    path.write_text(textwrap.dedent(f"""
        [vault]
        address = "{address or bao.address}"
        role_id = "{bao.role_id}"
        secret_id = "file:{tmp_path / 'secret_id'}"
        secret_id_wrapped = {str(wrapped).lower()}
        timeout = "2s"

        [[connectors]]
        name = "bank-a"
        kind = "null"
        bank_profile = "bank-a"
        [connectors.null]
        token = "{reference}"
        """))
    return path


def token_of(path: Path) -> str:
    connector = load_resolved(str(path)).connectors[0]
    token = connector.null.token  # type: ignore[union-attr]
    assert token is not None
    return token.reveal()


def problems(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_resolved(str(path))
    text = "\n".join(caught.value.lines())
    assert CANARY not in text
    return text


def test_a_reference_resolves_from_kv_v2_at_its_latest_or_its_named_version(tmp_path: Path, bao: OpenBao) -> None:
    first = bao.put("molamd/bank-a", hmac=CANARY + "-1")
    second = bao.put("molamd/bank-a", hmac=CANARY)
    assert token_of(config(tmp_path, bao, bao.secret_id(), "vault:secret/molamd/bank-a#hmac")) == CANARY
    assert token_of(config(tmp_path, bao, bao.secret_id(), f"vault:secret/molamd/bank-a#hmac@{first}")) \
        == CANARY + "-1"
    assert second == first + 1
    audit = bao.audit_log.read_text()
    assert "molamd/bank-a" in audit and CANARY not in audit, "the audit log shows the read, and only an HMAC"
    out = subprocess.run([sys.executable, "-m", "molamd.cli", "check-config",
                          str(config(tmp_path, bao, bao.secret_id(), "vault:secret/molamd/bank-a#hmac"))],
                         capture_output=True, text=True, cwd=ROOT, check=False, env={"PATH": "/usr/bin:/bin",
                                                                                     "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert CANARY not in out.stdout + out.stderr


def test_a_wrapped_secret_id_is_unwrapped_once_and_a_used_one_is_an_alarm(tmp_path: Path, bao: OpenBao) -> None:
    bao.put("molamd/bank-a", hmac=CANARY)
    wrapped = bao.secret_id(wrapped=True)
    path = config(tmp_path, bao, wrapped, "vault:secret/molamd/bank-a#hmac", wrapped=True)
    assert token_of(path) == CANARY
    text = problems(path)  # the same wrapping token again: someone (here, us) already unwrapped it
    assert "$.vault" in text and "already unwrapped" in text and "someone else" in text


@pytest.mark.parametrize(("reference", "says"), [
    ("vault:secret/molamd/nowhere#hmac", "no such path"),
    ("vault:secret/molamd/bank-a#nofield", "has no field 'nofield'"),
    ("vault:secret/molamd/bank-a#hmac@99", "no such path"),
    ("vault:secret/ops/root#token", "permission denied"),
    ("vault:nomount/x#y", "permission denied"),
    ("vault:secret-without-field", "not a reference of the form"),
])
def test_each_refusal_names_the_reference_and_never_a_value(
    tmp_path: Path, bao: OpenBao, reference: str, says: str
) -> None:
    bao.put("molamd/bank-a", hmac=CANARY)
    bao.admin.secrets.kv.v2.create_or_update_secret(path="ops/root", secret={"token": CANARY}, mount_point="secret")
    text = problems(config(tmp_path, bao, bao.secret_id(), reference))
    assert "$.connectors[0].null.token" in text and reference.split("#", maxsplit=1)[0] in text and says in text, text


def test_a_destroyed_version_is_not_found(tmp_path: Path, bao: OpenBao) -> None:
    version = bao.put("molamd/destroyed", hmac=CANARY)
    bao.put("molamd/destroyed", hmac=CANARY + "-2")
    bao.admin.secrets.kv.v2.destroy_secret_versions(path="molamd/destroyed", versions=[version],
                                                    mount_point="secret")
    text = problems(config(tmp_path, bao, bao.secret_id(), f"vault:secret/molamd/destroyed#hmac@{version}"))
    assert "no such path" in text or "deleted or destroyed" in text


def test_a_refused_login_and_a_vault_that_is_down_are_clear_errors(tmp_path: Path, bao: OpenBao) -> None:
    used = bao.secret_id(uses=1)
    path = config(tmp_path, bao, used, "vault:secret/molamd/bank-a#hmac")
    bao.put("molamd/bank-a", hmac=CANARY)
    token_of(path)
    assert "role_id or secret_id refused" in problems(path), "a secret_id with one use, used"
    down = config(tmp_path, bao, bao.secret_id(), "vault:secret/molamd/bank-a#hmac", address="http://127.0.0.1:9")
    assert "cannot connect" in problems(down)


def test_molamctl_secrets_lists_each_reference_with_its_version_and_never_a_value(
    daemon_factory: Any, short_tmp: Path, bao: OpenBao
) -> None:
    version = bao.put("molamd/bank-a", hmac=CANARY)
    (short_tmp / "secret_id").write_text(bao.secret_id())
    text = daemon_toml(short_tmp, connectors=textwrap.dedent("""
        [[connectors]]
        name = "bank-a"
        kind = "null"
        bank_profile = "bank-a"
        [connectors.null]
        token = "vault:secret/molamd/bank-a#hmac"
        """)) + textwrap.dedent(f"""
        [vault]
        address = "{bao.address}"
        role_id = "{bao.role_id}"
        secret_id = "file:{short_tmp / 'secret_id'}"
        """)
    d = daemon_factory(text, env={"HOME": str(short_tmp)})
    rows = {r["path"]: r for r in d.ctl_json("secrets")}
    token = rows["$.connectors[0].null.token"]
    assert (token["scheme"], token["source"], token["version"], token["resolved"]) == (
        "vault", f"{bao.address} (KV v2)", version, True)
    assert rows["$.vault.secret_id"]["source"] == str(short_tmp / "secret_id")
    assert rows["$.vault.secret_id"]["version"] is None
    shown = d.ctl("--json", "secrets").stdout + d.logs()
    assert CANARY not in shown and (short_tmp / "secret_id").read_text() not in shown
