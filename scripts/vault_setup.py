"""Configure an OpenBao (or HashiCorp Vault) server for molamd, idempotently.

Mounts KV v2 at ``secret/`` (if missing), transit with the key ``molamd``, PKI with a root CA and the role
``molamd-client`` (short-lived mTLS client certificates), AppRole with the role ``molamd``
(a periodic token: leases under it live as long as the daemon renews it), the least-privilege policy from
``config/openbao/molamd.hcl`` and, with ``--database-url``, the database engine with the role ``molamd``, whose
users are members of a NOLOGIN role that holds the privileges (``molamd_app``; see ``prepare_database``).

    scripts/vault-setup --address http://127.0.0.1:8200 --token-file /root/bao-root-token \\
        --database-url postgresql://127.0.0.1:5432/molam --database-admin postgres \\
        --out /etc/molamd/vault      # writes role_id and a response-wrapped secret_id there

The admin token comes from ``--token-file`` or ``$BAO_TOKEN``; it is never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "config" / "openbao" / "molamd.hcl"
ROLE = "molamd"
APP_ROLE = "molamd_app"
TRANSIT_KEY = "molamd"
PKI_ROLE = "molamd-client"


def prepare_database(conn: Any, app_role: str = APP_ROLE, owner: str = "postgres") -> None:
    """The NOLOGIN role leased users join: every privilege molamd uses, on today's tables and on tables the
    migrations (run by ``owner``) create later. Run as a superuser or the owner; idempotent."""
    conn.execute(f"DO $$ BEGIN CREATE ROLE {app_role} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    conn.execute(f"GRANT USAGE ON SCHEMA public TO {app_role}")
    conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app_role}")
    conn.execute(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {app_role}")
    conn.execute(f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public"
                 f" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app_role}")
    conn.execute(f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public"
                 f" GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {app_role}")


def configure(admin: Any, *, token_period: str = "1h", secret_id_ttl: str = "24h",
              database_url: str | None = None, database_admin: str = "postgres", database_password: str = "",
              lease_ttl: str = "1h", lease_max_ttl: str = "24h", policy: str | None = None,
              certificate_ttl: str = "24h") -> str:
    """Mounts, keys, policy and roles; returns the AppRole role_id."""
    mounts = admin.sys.list_mounted_secrets_engines()["data"]
    if "secret/" not in mounts:
        admin.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    if "transit/" not in mounts:
        admin.sys.enable_secrets_engine("transit")
    keys = admin.adapter.list("/v1/transit/keys") if "transit/" in mounts else None
    if keys is None or TRANSIT_KEY not in ((keys or {}).get("data") or {}).get("keys", []):
        admin.secrets.transit.create_key(TRANSIT_KEY)
    if "pki/" not in mounts:  # the CA of molamd's mTLS client certificates (a bank pins it, or its own CA signs)
        admin.sys.enable_secrets_engine("pki", options={}, config={"max_lease_ttl": "87600h"})
        admin.adapter.post("/v1/pki/root/generate/internal", json={"common_name": "molamd client CA",
                                                                    "ttl": "87600h"})
    admin.adapter.post(f"/v1/pki/roles/{PKI_ROLE}", json={
        "allow_any_name": True, "enforce_hostnames": False, "client_flag": True, "server_flag": False,
        "max_ttl": certificate_ttl, "ttl": certificate_ttl, "key_type": "ec", "key_bits": 256})
    if "approle/" not in admin.sys.list_auth_methods()["data"]:
        admin.sys.enable_auth_method("approle")
    admin.sys.create_or_update_policy(ROLE, policy if policy is not None else POLICY.read_text())
    admin.auth.approle.create_or_update_approle(ROLE, token_policies=[ROLE], token_period=token_period,
                                               token_type="service", secret_id_ttl=secret_id_ttl)
    if database_url is not None:
        if "database/" not in mounts:
            admin.sys.enable_secrets_engine("database")
        host = database_url.split("://", 1)[1]
        admin.secrets.database.configure(
            name="molamd-pg", plugin_name="postgresql-database-plugin", verify_connection=True,
            allowed_roles=[ROLE], connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@{host}"
            + ("&" if "?" in host else "?") + "sslmode=disable",
            username=database_admin, password=database_password or "unused", password_authentication="scram-sha-256")
        admin.secrets.database.create_role(
            name=ROLE, db_name="molamd-pg", default_ttl=lease_ttl, max_ttl=lease_max_ttl,
            creation_statements=[
                f"CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}'"
                f" VALID UNTIL '{{{{expiration}}}}' IN ROLE {APP_ROLE};"],
            revocation_statements=[f'REVOKE {APP_ROLE} FROM "{{{{name}}}}";', 'DROP ROLE IF EXISTS "{{name}}";'])
    return str(admin.auth.approle.read_role_id(ROLE)["data"]["role_id"])


def secret_id(admin: Any, *, wrapped: bool = False, uses: int = 0, wrap_ttl: str = "10m") -> str:
    """A new secret_id of the role (or a response-wrapping token holding one)."""
    body: dict[str, Any] = {"num_uses": uses} if uses else {}
    headers = {"X-Vault-Wrap-TTL": wrap_ttl} if wrapped else None
    answer = admin.adapter.post(f"/v1/auth/approle/role/{ROLE}/secret-id", json=body, headers=headers)
    return str(answer["wrap_info"]["token"] if wrapped else answer["data"]["secret_id"])


def main(argv: list[str] | None = None) -> int:
    import hvac

    parser = argparse.ArgumentParser(prog="vault-setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--token-file", help="the admin token (default: $BAO_TOKEN)")
    parser.add_argument("--token-period", default="1h")
    parser.add_argument("--database-url", help="postgresql://HOST:PORT/DB for the database engine")
    parser.add_argument("--database-admin", default="postgres", help="the user the engine creates roles as")
    parser.add_argument("--database-password-file", help="its password (default: none; trust on loopback)")
    parser.add_argument("--lease-ttl", default="1h")
    parser.add_argument("--lease-max-ttl", default="24h")
    parser.add_argument("--out", help="write role_id and a response-wrapped secret_id (0600) here")
    args = parser.parse_args(argv)
    token = Path(args.token_file).read_text().strip() if args.token_file else os.environ.get("BAO_TOKEN", "")
    if not token:
        parser.error("give --token-file or set BAO_TOKEN")
    admin = hvac.Client(url=args.address, token=token, timeout=10)
    password = Path(args.database_password_file).read_text().strip() if args.database_password_file else ""
    role_id = configure(admin, token_period=args.token_period, database_url=args.database_url,
                        database_admin=args.database_admin, database_password=password,
                        lease_ttl=args.lease_ttl, lease_max_ttl=args.lease_max_ttl)
    print(f"configured {args.address}: policy {ROLE}, AppRole {ROLE} (token_period {args.token_period}),"
          f" transit key {TRANSIT_KEY}" + (", database role molamd" if args.database_url else ""))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "role_id").write_text(role_id + "\n")
        wrapped = out / "secret_id.wrapped"
        wrapped.write_text(secret_id(admin, wrapped=True) + "\n")
        wrapped.chmod(0o600)
        print(f"wrote {out / 'role_id'} and {wrapped} (a wrapping token: unwrap it once, or molamd will)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
