"""``molamd hsm keygen|csr|cert|list``: key management in the configured PKCS#11 token ([hsm] of the config)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .certificates import certificate_request, self_signed, subject
from .config import ConfigError, load_resolved
from .hsm import HsmError, KeyKind, Signer


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], config_arg: object) -> None:
    hsm = sub.add_parser("hsm", help="key management in the HSM: keygen, csr, cert, list")
    actions = hsm.add_subparsers(dest="hsm_command", required=True)
    for name, help_text in (("keygen", "make a key pair inside the token (never extractable)"),
                            ("csr", "a certificate signing request for the bank (PEM)"),
                            ("cert", "a self-signed certificate, for development (PEM)"),
                            ("list", "the keys in the token")):
        p = actions.add_parser(name, help=help_text)
        config_arg(p)  # type: ignore[operator]
        if name != "list":
            p.add_argument("--label", required=True, help="the key's label in the token")
        if name == "keygen":
            p.add_argument("--kind", choices=[k.value for k in KeyKind], default=KeyKind.RSA_2048.value)
        if name in ("csr", "cert"):
            p.add_argument("--cn", required=True, help="subject common name")
            p.add_argument("--org", help="subject organisation")
            p.add_argument("--country", help="subject country (ISO 3166 alpha-2)")
            p.add_argument("--out", help="write the PEM here instead of standard output")
        if name == "cert":
            p.add_argument("--days", type=int, default=365)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_resolved(args.config)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 1
    section = config.hsm
    if not section.token or section.pin is None:
        print(f"{args.config}: [hsm] needs token and pin", file=sys.stderr)
        return 1
    signer = Signer(section.module, section.token, section.pin.reveal())
    try:
        signer.open()
        return _action(signer, args)
    except HsmError as exc:
        print(f"molamd hsm {args.hsm_command}: {exc}", file=sys.stderr)
        return 1
    finally:
        signer.close()


def _action(signer: Signer, args: argparse.Namespace) -> int:
    if args.hsm_command == "list":
        for label, kind in signer.list_keys():
            print(f"{label}\t{kind.value}")
        return 0
    if args.hsm_command == "keygen":
        signer.keygen(args.label, KeyKind(args.kind))
        print(f"{args.label}: {args.kind} key pair made in token {signer.token_label!r}")
        return 0
    name = subject(args.cn, args.org, args.country)
    if args.hsm_command == "csr":
        data = certificate_request(signer, args.label, name)
    else:
        if not 1 <= args.days <= 3650:
            print("molamd hsm cert: --days must be between 1 and 3650", file=sys.stderr)
            return 2
        data = self_signed(signer, args.label, name, days=args.days)
    if args.out:
        Path(args.out).write_bytes(data)
    else:
        sys.stdout.write(data.decode())
    return 0
