"""``molamd``: run the daemon, check a config file, apply database migrations, manage HSM keys."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from . import __version__

DEFAULT_CONFIG = "/etc/molamd/molamd.toml"


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", default=os.environ.get("MOLAMD_CONFIG", DEFAULT_CONFIG),
        help=f"config file (default: $MOLAMD_CONFIG or {DEFAULT_CONFIG})",
    )


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand with its arguments (the runbook test parses its examples with it)."""
    parser = argparse.ArgumentParser(prog="molamd", description="The Molam bank-facing daemon.")
    parser.add_argument("--version", action="version", version=f"molamd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the daemon in the foreground (systemd runs this)")
    _config_arg(run_p)
    check_p = sub.add_parser("check-config", help="validate a config file and resolve its secrets; exit 0 or 1")
    check_p.add_argument("file")
    doctor_p = sub.add_parser("doctor", help="check, in order, everything this host needs to run molamd; exit 0 or 1",
                              description="Checks, one line each: config valid; database reachable and migrated;"
                              " each secret reference resolvable; Vault token and policy; HSM module, token, key"
                              " and a test signature; each bank endpoint's TLS and SFTP host key pinning; SFTP"
                              " directories present and writable; clock skew against the database. Never prints"
                              " a secret.")
    _config_arg(doctor_p)
    migrate_p = sub.add_parser("migrate", help="apply pending database migrations (idempotent)")
    _config_arg(migrate_p)
    migrate_p.add_argument("--dsn", help="connect here instead of [database] of the config")
    parse_p = sub.add_parser("parse-statement", help="show what molamd reads from a bank statement file (JSON)")
    parse_p.add_argument("file")
    parse_p.add_argument("--format", choices=("mt940", "mt942", "csv", "camt053"),
                         help="default: guessed from the file (mt942: an interim statement without a block 2 header)")
    parse_p.add_argument("--csv-profile", default="molamd",
                         help="a [csv_profiles.NAME] of the config, or the built-in 'molamd' (default)")
    _config_arg(parse_p)
    from .audit_cli import add_parser as add_audit
    from .hsm_cli import add_parser as add_hsm

    add_hsm(sub, _config_arg)
    add_audit(sub, _config_arg)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.command == "hsm":
        from .hsm_cli import run as run_hsm

        return run_hsm(args)
    if args.command == "audit":
        from .audit_cli import run as run_audit

        return run_audit(args)

    if args.command == "parse-statement":
        from .statement_cli import parse_statement

        return parse_statement(args.file, args.format, args.csv_profile, args.config)

    if args.command == "doctor":
        from .doctor import run as run_doctor

        return run_doctor(args.config)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "migrate":
        return migrate(args.config, args.dsn)
    return run(args.config)


def check_config(path: str) -> int:
    from .config import ConfigError, load_resolved

    try:
        config = load_resolved(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 1
    print(f"{path}: ok ({len(config.connectors)} connectors)")
    return 0


def migrate(config_path: str, dsn: str | None) -> int:
    import psycopg

    from .audit_chain import ensure_partitions as audit_partitions
    from .config import AuditSection, ConfigError, load_resolved
    from .db import MigrationError, conninfo, current_version
    from .db import migrate as apply

    try:
        kwargs: dict[str, Any]
        audit = AuditSection()
        if dsn is not None:
            target, kwargs = dsn, {"application_name": "molamd-migrate"}
        else:
            config = load_resolved(config_path)
            target, kwargs = config.database.dsn, conninfo(config.database, "molamd-migrate")
            audit = config.audit
        kwargs.pop("options", None)  # migrations may run longer than the daemon's statement timeout
        kwargs.pop("autocommit", None)  # migrate() opens its own transaction
        with psycopg.connect(target, **kwargs) as conn:
            applied = apply(conn)
            version = current_version(conn)
            with conn.transaction():
                made = audit_partitions(conn, audit.partitions_ahead).made
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 1
    except (psycopg.Error, MigrationError) as exc:
        print(f"molamd migrate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if applied:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
        print(f"applied {len(applied)} migration(s): {names}; schema version {version}")
    else:
        print(f"schema up to date (version {version})")
    if made:
        print(f"audit partitions made: {', '.join(made)}")
    return 0


def run(config_path: str) -> int:
    import trio

    from .config import ConfigError, connect_vault, load_config, resolve_config
    from .control import AlreadyRunning, check_socket_path
    from .daemon import run as run_daemon

    vault = None
    try:
        config = load_config(config_path)
        vault = connect_vault(config.vault, file=config_path)  # kept: the daemon's token actor renews its token
        config = resolve_config(config, file=config_path, vault=vault)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        if vault is not None:
            vault.close()
        return 1
    try:
        check_socket_path(config.control.socket)
    except AlreadyRunning as exc:
        print(f"molamd: {exc}", file=sys.stderr)
        return 1
    return trio.run(run_daemon, config_path, config, vault)


if __name__ == "__main__":
    sys.exit(main())
