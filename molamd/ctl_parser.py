"""``molamctl``'s command line: every command with its own usage, arguments and examples, and what it sends.

Each command is a sub-parser (``molamctl CMD --help``); the grouped ones (``dlq``, ``payouts``, ``statements``,
``files``, ``secrets``) have one per action. An unknown command, action or argument is a usage error (exit 2)
that names it. ``parse`` answers the wire command and its arguments, as the control server names them.
Standard library only, like the rest of molamctl.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

DEFAULT_SOCKET = "/run/molamd/control.sock"


@dataclass(frozen=True)
class Arg:
    """A positional argument or an option of one command."""

    name: str  # "name" (positional) or "--limit" (option)
    help: str
    kind: Callable[[str], Any] = str  # int, float or text (options with flag=True take no value)
    optional: bool = False  # positional: may be left out
    flag: bool = False  # option: a switch
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Cmd:
    """One command (or one action of a grouped command) and the control request it becomes."""

    name: str
    help: str
    wire: str  # the control server's command
    args: tuple[Arg, ...] = ()
    examples: tuple[str, ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)  # arguments the wire command always gets
    local: bool = False  # runs in molamctl (top, completion): no single request


NAME = Arg("name", "the connector's name, as in the config")
SOME = Arg("name", "one connector (default: every connector)", optional=True)
LIMIT = Arg("--limit", "how many rows at most", kind=int, metavar="N")
ID = Arg("id", "the id shown by the list", kind=int)

COMMANDS: tuple[Cmd, ...] = (
    Cmd("status", "the daemon's state: uptime, config, database, Vault, connectors by state", "status",
        examples=("molamctl status", "molamctl --json status")),
    Cmd("version", "molamd's version and the control protocol's", "version"),
    Cmd("connectors", "every connector: kind, state, dispatch, breaker, restarts, mailbox, health", "connectors",
        examples=("molamctl connectors", "molamctl --json connectors")),
    Cmd("connector", "one connector in full: its config (secrets as ***), snapshot and counters", "connector",
        (NAME,), ("molamctl connector ecobank-sn-primary",)),
    Cmd("stats", "counters of the control socket, reloads and actor restarts", "stats"),
    Cmd("watch", "stream events as they happen (state changes, breakers, reloads, operator actions) until Ctrl-C",
        "watch", examples=("molamctl watch", "molamctl watch --json | jq .")),
    Cmd("top", "a live view of connectors, slices and recent errors; q or Ctrl-C quits (one snapshot when stdout is"
        " not a terminal)", "top",
        (Arg("--interval", "seconds between refreshes (default 2)", kind=float, metavar="SECONDS"),),
        ("molamctl top", "molamctl top --interval 5", "molamctl top | cat    # one snapshot"), local=True),
    Cmd("pause", "stop taking new work (calls in flight finish); audited", "pause", (SOME,),
        ("molamctl pause ecobank-sn-primary", "molamctl pause    # every connector")),
    Cmd("resume", "take new work again after pause or drain; audited", "resume", (SOME,),
        ("molamctl resume ecobank-sn-primary",)),
    Cmd("drain", "finish what is queued, then take no more; audited", "drain", (SOME,),
        ("molamctl drain ecobank-sn-primary",)),
    Cmd("restart", "restart one connector's actor (its breaker and limiter start afresh); audited", "restart",
        (NAME,), ("molamctl restart ecobank-sn-primary",)),
    Cmd("reload", "read the config file again and apply it; refused as a whole if anything in it is wrong",
        "reload", (Arg("--allow-removals", "allow removing up to N connectors (more than [daemon]"
                       " reload_max_removals)", kind=int, metavar="N"),),
        ("molamctl reload", "molamctl reload --allow-removals 5")),
    Cmd("health", "run one health check against the bank now (a real call); audited", "health", (NAME,),
        ("molamctl health ecobank-sn-primary",)),
    Cmd("logs", "the connector's last bank calls from the audit table", "logs", (NAME, LIMIT),
        ("molamctl logs ecobank-sn-primary --limit 50",)),
    Cmd("reset-circuit", "close the connector's breaker now; audited", "reset-circuit", (NAME,),
        ("molamctl reset-circuit ecobank-sn-primary",)),
    Cmd("force-open", "open the connector's breaker until reset-circuit (work goes to the bank's other channels);"
        " audited", "force-open", (NAME,), ("molamctl force-open ecobank-sn-primary",)),
    Cmd("set-rate", "change the connector's rate limit until the next reload or restart; audited", "set-rate",
        (NAME, Arg("rate", "calls per second", kind=float), Arg("burst", "bucket size", kind=int, optional=True)),
        ("molamctl set-rate ecobank-sn-primary 20", "molamctl set-rate ecobank-sn-primary 20 40")),
    Cmd("audit", "the last operator actions and the daemon's own decisions, with who did them", "audit", (LIMIT,),
        ("molamctl audit", "molamctl audit --limit 200")),
    Cmd("completion", "print a shell completion script: bash", "completion",
        (Arg("shell", "the shell (bash)", optional=True),), ("source <(molamctl completion bash)",), local=True),
)

GROUPS: dict[str, tuple[str, tuple[Cmd, ...], str | None]] = {
    # group -> (help, actions, the action taken when none is given)
    "dlq": ("the dead-letter queue: slices given up on", (
        Cmd("list", "the slices in the dead-letter queue", "dlq-list", examples=("molamctl dlq list",)),
        Cmd("retry", "send dead slices back to pending; audited", "dlq-retry",
            (Arg("id", "one slice", kind=int, optional=True), Arg("--all", "every dead slice", flag=True)),
            ("molamctl dlq retry 42", "molamctl dlq retry --all")),
        Cmd("drop", "fail a dead slice for good, with the reason; audited", "dlq-drop",
            (ID, Arg("reason_text", "why (goes into the audit trail)", optional=True, metavar="REASON"),
             Arg("--reason", "why, as an option", metavar="TEXT")),
            ("molamctl dlq drop 42 'beneficiary account closed'",)),
    ), None),
    "payouts": ("payout slices: one in full, the ones in doubt, releases, retries and resolves", (
        Cmd("show", "one slice with its attempts, idempotency scope, bank calls and audit rows", "payouts-show",
            (ID,), ("molamctl payouts show 1",)),
        Cmd("in-doubt", "slices bound to a channel that may have them", "payouts-in-doubt", (LIMIT,),
            ("molamctl payouts in-doubt",)),
        Cmd("release", "release a slice from its channel once that bank says it never got it; audited",
            "payouts-release", (ID, Arg("--reason", "why (goes into the audit trail)", metavar="TEXT")),
            ("molamctl payouts release 42 --reason 'bank confirmed by phone: not received'",)),
        Cmd("retry", "make a scheduled retry due now; audited", "payouts-retry",
            (Arg("id", "one slice", kind=int, optional=True),
             Arg("--all-scheduled", "every slice waiting for a later attempt", flag=True)),
            ("molamctl payouts retry 42", "molamctl payouts retry --all-scheduled")),
        Cmd("resolve", "settle (--paid) or fail (--not-paid) an unresolved slice, checked against its bank's"
            " lookup when the bank answers; audited", "payouts-resolve",
            (ID, Arg("--paid", "the bank executed it: settled", flag=True),
             Arg("--not-paid", "the bank did not execute it: failed", flag=True),
             Arg("--reason", "why, and how you know (goes into the audit trail)", metavar="TEXT")),
            ("molamctl payouts resolve 42 --paid --reason 'on the bank portal: executed 2026-12-08, ref 77'",
             "molamctl payouts resolve 42 --not-paid --reason 'bank ops by phone: never received'")),
    ), None),
    "statements": ("stored bank statement files: list, show, poll a source, reprocess, rewrap", (
        Cmd("list", "the last statement files stored", "statements", (LIMIT,), ("molamctl statements list",),
            fixed={"action": "list"}),
        Cmd("show", "one stored file: its statements and lines (unsealed for operators)", "statements",
            (ID,), ("molamctl statements show 3",), fixed={"action": "show"}),
        Cmd("poll", "poll a statement source now; audited", "statements-poll",
            (Arg("id", "the source's connector name", metavar="SOURCE"),
             Arg("--retry-stuck", "also try again the files that could not be moved out of the inbox", flag=True)),
            ("molamctl statements poll ecobank-sn-statements",), fixed={"action": "poll"}),
        Cmd("reprocess", "parse a stored file again (after a parser fix); audited", "statements-reprocess", (ID,),
            ("molamctl statements reprocess 3",), fixed={"action": "reprocess"}),
        Cmd("rewrap", "rewrap the sealed files' data keys with the transit key's latest version; audited",
            "statements-rewrap", (), ("molamctl statements rewrap",), fixed={"action": "rewrap"}),
    ), "list"),
    "files": ("ISO 20022 payment files: list, show, resubmit, reapply a report", (
        Cmd("list", "the last payment files with their status", "files-list", (LIMIT,), ("molamctl files list",)),
        Cmd("show", "one file: its slices, uploads and reports", "files-show", (ID,), ("molamctl files show 1",)),
        Cmd("resubmit", "upload a recorded file again (the same bytes, never a new file); refused while a slice"
            " in it is failed, unless --reopen-failed puts those back in doubt in it; audited", "files-resubmit",
            (ID, Arg("--reopen-failed", "the file's failed slices go back into it (the bank may pay them)",
                     flag=True),
             Arg("--reason", "why (goes into the audit trail; needed with --reopen-failed)", metavar="TEXT")),
            ("molamctl files resubmit 1",
             "molamctl files resubmit 1 --reopen-failed --reason 'bank ops: FF01 was their fault, send again'")),
        Cmd("reapply", "apply a stored status report again, to the file it names among its bank's (another file"
            " channel took it, or its file was reopened); audited", "files-reapply",
            (Arg("id", "the report's id (molamctl files show FILE lists them)", kind=int, metavar="REPORT"),),
            ("molamctl files reapply 12",)),
    ), None),
    "secrets": ("secret references in use: where each resolved from, its version and age (never a value)", (
        Cmd("list", "every secret reference of the running config", "secrets", examples=("molamctl secrets",)),
        Cmd("refresh", "read every secret again now; only actors whose secrets changed restart; audited",
            "secrets-refresh", examples=("molamctl secrets refresh",)),
    ), "list"),
}

TOP_LEVEL = [c.name for c in COMMANDS] + list(GROUPS)


# Where help and usage errors go when main() was given streams of its own (tests run molamctl in their process).
STREAMS: contextvars.ContextVar[tuple[TextIO, TextIO] | None] = contextvars.ContextVar("molamctl_streams",
                                                                                      default=None)


class Parser(argparse.ArgumentParser):
    """Usage errors name what was wrong and exit 2, as argparse does; ``fail`` lets the caller add its own."""

    def fail(self, message: str) -> None:
        self.error(message)

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        streams = STREAMS.get()
        if streams is not None:
            file = streams[1] if file is sys.stderr else streams[0]
        super()._print_message(message, file)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--socket, --json and --timeout, before or after the command (after it they must not reset the value)."""
    default: Any = argparse.SUPPRESS
    parser.add_argument("--socket", "-s", default=os.environ.get("MOLAMD_SOCKET", DEFAULT_SOCKET) if top else default,
                        help=f"control socket (default: $MOLAMD_SOCKET or {DEFAULT_SOCKET})" if top
                        else argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", default=False if top else default,
                        help="print the raw JSON result" if top else argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=30.0 if top else default,
                        help="seconds to wait for a reply (default 30)" if top else argparse.SUPPRESS)


def _add(sub: argparse._SubParsersAction[Parser], cmd: Cmd, prog_name: str) -> None:
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in cmd.examples) if cmd.examples else None
    p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, epilog=epilog, formatter_class=_formatter)
    _global_options(p, top=False)
    for arg in cmd.args:
        if arg.name.startswith("--"):
            if arg.flag:
                p.add_argument(arg.name, action="store_true", help=arg.help, dest=arg.dest)
            else:
                p.add_argument(arg.name, type=arg.kind, help=arg.help, metavar=arg.metavar, dest=arg.dest)
        else:
            p.add_argument(arg.dest, type=arg.kind, help=arg.help, nargs="?" if arg.optional else None,
                           metavar=arg.metavar or arg.name.upper())
    p.set_defaults(_cmd=cmd, _prog=prog_name, _parser=p)


def build() -> Parser:
    parser = Parser(prog="molamctl", description="Control a running molamd over its control socket.",
                    epilog="exit codes: 0 ok, 1 the daemon answered with an error, 2 usage, 3 the daemon cannot be"
                    " reached.\n`molamctl COMMAND --help` shows each command's arguments and examples.",
                    formatter_class=_formatter)
    _global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)
    for cmd in COMMANDS:
        _add(sub, cmd, cmd.name)
    for group, (help_text, actions, default) in GROUPS.items():
        lines = [f"  molamctl {group} {a.name}: {a.help}" for a in actions]
        g = sub.add_parser(group, help=help_text, description=help_text, formatter_class=_formatter,
                           epilog="actions:\n" + "\n".join(lines)
                           + (f"\nwith no action: {default}" if default else ""))
        _global_options(g, top=False)
        inner = g.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser, required=default is None)
        for action in actions:
            _add(inner, action, f"{group} {action.name}")
        if default is not None:
            g.set_defaults(_cmd=next(a for a in actions if a.name == default), _prog=f"{group} {default}", _parser=g)
    return parser


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Cmd, dict[str, Any]]:
    """The options, the command, and the arguments of its control request."""
    parser = build()
    ns = parser.parse_args(argv)
    cmd: Cmd = ns._cmd
    args: dict[str, Any] = dict(cmd.fixed)
    for arg in cmd.args:
        value = getattr(ns, arg.dest, None)
        if value is None or value is False:
            continue
        args[arg.dest] = value
    if "reason_text" in args:  # `dlq drop ID REASON`: the reason as the last word, as --reason would give it
        args["reason"] = args.pop("reason_text")
    if cmd.wire in ("dlq-retry", "payouts-retry") and "id" not in args and not (args.get("all")
                                                                                  or args.get("all_scheduled")):
        ns._parser.error(f"give an ID or {'--all' if cmd.wire == 'dlq-retry' else '--all-scheduled'}")
    if cmd.wire == "payouts-resolve" and bool(args.get("paid")) == bool(args.get("not_paid")):
        ns._parser.error("give --paid or --not-paid (one of them)")
    if cmd.wire == "statements" and cmd.fixed.get("action") == "list" and ns.command == "statements" \
            and getattr(ns, "action", None) is None:
        args = {}  # `molamctl statements` alone: the list, as the server's default
    return ns, cmd, args


def completion_script() -> str:
    """A bash completion for molamctl: commands, then actions of the grouped ones, then their options."""
    groups = " ".join(f'[{g}]="{" ".join(a.name for a in actions)}"' for g, (_, actions, _) in GROUPS.items())
    return f"""# bash completion for molamctl: source <(molamctl completion bash)
_molamctl() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} i word command="" action=""
    local -A actions=({groups})
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        case $word in
            --socket|-s|--timeout|--limit|--interval|--allow-removals|--reason) ((i++)); continue ;;
            -*) continue ;;
        esac
        if [[ -z $command ]]; then command=$word; elif [[ -z $action ]]; then action=$word; fi
    done
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "--help --json --socket --timeout --limit --all --all-scheduled --reason
            --retry-stuck --allow-removals --interval --paid --not-paid" -- "$cur"))
    elif [[ -z $command ]]; then
        COMPREPLY=($(compgen -W "{' '.join(TOP_LEVEL)}" -- "$cur"))
    elif [[ -n ${{actions[$command]}} && -z $action ]]; then
        COMPREPLY=($(compgen -W "${{actions[$command]}}" -- "$cur"))
    fi
}}
complete -F _molamctl molamctl
"""
