"""``molamd audit verify|export|retire|partitions``: the auditor's view of the audit trail (``audit_chain``)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXAMPLES = {
    "verify": "molamd audit verify --config /etc/molamd/molamd.toml --month 2026-11",
    "export": "molamd audit export --month 2026-11 --out /var/backups/molamd --config /etc/molamd/molamd.toml",
    "retire": "molamd audit retire --config /etc/molamd/molamd.toml",
    "partitions": "molamd audit partitions --config /etc/molamd/molamd.toml",
}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    audit = sub.add_parser("audit", help="the audit trail: verify its hash chain, export a month, retire old months")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    for name, help_text in (
        ("verify", "recompute every month's hash chain; name each altered, missing or extra row; exit 1 if any"),
        ("export", "write one month (audit rows, bank calls, raw statement files) to a .jsonl.gz with its SHA-256"),
        ("retire", "detach the month partitions past [audit] retention_months that were exported (never dropped)"),
        ("partitions", "make the month partitions missing up to [audit] partitions_ahead months ahead"),
    ):
        p = actions.add_parser(name, help=help_text, description=help_text,
                               epilog=f"example: {EXAMPLES[name]}")
        config_arg(p)
        if name in ("verify", "export"):
            p.add_argument("--month", required=name == "export", help="YYYY-MM (UTC)")
        if name == "export":
            p.add_argument("--out", required=True, help="directory for the file and its .sha256")


def run(args: argparse.Namespace) -> int:
    import psycopg

    from . import audit_chain
    from .config import ConfigError, load_resolved
    from .db import conninfo

    try:
        config = load_resolved(args.config)
        kwargs: dict[str, Any] = conninfo(config.database, "molamd-audit")
        kwargs.pop("options", None)  # an export may run longer than the daemon's statement timeout
        kwargs["autocommit"] = True
        with psycopg.connect(config.database.dsn, **kwargs) as conn:
            command = args.audit_command
            if command == "verify":
                month = audit_chain.parse_month(args.month) if args.month else None
                return _verify(audit_chain.verify(conn, month))
            if command == "export":
                who = f"{getpass.getuser()} (uid {os.getuid()})"
                done = audit_chain.export(conn, audit_chain.parse_month(args.month), Path(args.out), who)
                counts = ", ".join(f"{n} {k}" for k, n in done.rows.items())
                print(f"{done.path}: {counts}; sha256 {done.sha256} (also in {done.path.name}.sha256)")
                return 0
            if command == "retire":
                with conn.transaction():
                    detached = audit_chain.retire(conn, config.audit.retention_months)
                print("detached (kept as tables): " + ", ".join(detached) if detached
                      else f"nothing to retire: no exported month older than {config.audit.retention_months} months")
                return 0
            found = audit_chain.ensure_partitions(conn, config.audit.partitions_ahead)
            if found.missing:
                print("missing, and this role does not own the audit tables: " + ", ".join(found.missing),
                      file=sys.stderr)
                return 1
            print("made: " + ", ".join(found.made) if found.made else "every partition is there")
            return 0
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
    except audit_chain.AuditError as exc:
        print(f"molamd audit: {exc}", file=sys.stderr)
    except (psycopg.Error, OSError) as exc:
        print(f"molamd audit: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


def _verify(reports: list[Any]) -> int:
    broken = 0
    for report in reports:
        state = "ok" if not report.findings else f"BROKEN ({len(report.findings)})"
        print(f"{report.table} {report.month:%Y-%m}: {report.rows} rows, {state}")
        for finding in report.findings:
            print(f"  {finding.what}")
        broken += len(report.findings)
    print(f"audit verify: {broken} problem(s)" if broken else "audit verify: every chain is whole")
    return 1 if broken else 0
