"""molamctl's command line: each command's own help, usage errors that name what was wrong, what each sends,
and the bash completion."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from molamd import ctl
from molamd.ctl_parser import COMMANDS, GROUPS, completion_script, parse

EVERY = [(c.name,) for c in COMMANDS] + [(g,) for g in GROUPS] + [
    (g, a.name) for g, (_, actions, _) in GROUPS.items() for a in actions
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = ctl.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("words", EVERY, ids=" ".join)
def test_every_command_has_its_own_help(capsys: pytest.CaptureFixture[str], words: tuple[str, ...]) -> None:
    code, out, _ = run(capsys, *words, "--help")
    assert code == 0
    assert out.startswith(f"usage: molamctl {' '.join(words)} ")
    assert "Control a running molamd" not in out, "not the general usage"
    if len(words) == 2 or words[0] not in GROUPS:
        cmd = next(c for c in COMMANDS if c.name == words[0]) if len(words) == 1 else next(
            a for a in GROUPS[words[0]][1] if a.name == words[1])
        assert cmd.help.split(";")[0][:40] in " ".join(out.split())
        for example in cmd.examples:
            assert example in out
    else:
        assert "actions:" in out


def test_the_general_usage_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and out.startswith("usage: molamctl ")
    for name in [c.name for c in COMMANDS] + list(GROUPS):
        assert f"    {name} " in out or f"    {name}\n" in out, name


@pytest.mark.parametrize(("argv", "named"), [
    (["launch-rockets"], "invalid choice: 'launch-rockets'"),
    (["status", "--verbose"], "unrecognized arguments: --verbose"),
    (["dlq", "purge"], "invalid choice: 'purge'"),
    (["restart", "a", "b"], "unrecognized arguments: b"),
    (["connector"], "the following arguments are required: NAME"),
    (["set-rate", "alpha", "fast"], "invalid float value: 'fast'"),
    (["payouts", "show", "one"], "invalid int value: 'one'"),
    (["dlq", "retry"], "give an ID or --all"),
    (["payouts", "retry"], "give an ID or --all-scheduled"),
    ([], "the following arguments are required: COMMAND"),
])
def test_a_usage_error_exits_2_and_names_what_was_wrong(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                        named: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert named in err and "usage: molamctl" in err


@pytest.mark.parametrize(("argv", "wire", "args"), [
    (["status"], "status", {}),
    (["--json", "connector", "alpha"], "connector", {"name": "alpha"}),
    (["connector", "alpha", "--json"], "connector", {"name": "alpha"}),
    (["pause"], "pause", {}),
    (["set-rate", "alpha", "2.5", "5"], "set-rate", {"name": "alpha", "rate": 2.5, "burst": 5}),
    (["reload", "--allow-removals", "4"], "reload", {"allow_removals": 4}),
    (["logs", "alpha", "--limit", "3"], "logs", {"name": "alpha", "limit": 3}),
    (["dlq", "retry", "--all"], "dlq-retry", {"all": True}),
    (["dlq", "drop", "7", "account closed"], "dlq-drop", {"id": 7, "reason": "account closed"}),
    (["dlq", "drop", "7", "--reason", "closed"], "dlq-drop", {"id": 7, "reason": "closed"}),
    (["payouts", "release", "9", "--reason", "phoned"], "payouts-release", {"id": 9, "reason": "phoned"}),
    (["payouts", "retry", "--all-scheduled"], "payouts-retry", {"all_scheduled": True}),
    (["statements"], "statements", {}),
    (["statements", "show", "3"], "statements", {"action": "show", "id": 3}),
    (["statements", "poll", "src", "--retry-stuck"], "statements-poll",
     {"action": "poll", "id": "src", "retry_stuck": True}),
    (["files", "resubmit", "2"], "files-resubmit", {"id": 2}),
    (["secrets"], "secrets", {}),
    (["secrets", "refresh"], "secrets-refresh", {}),
])
def test_what_each_command_sends(argv: list[str], wire: str, args: dict[str, Any]) -> None:
    _, cmd, sent = parse(argv)
    assert (cmd.wire, sent) == (wire, args)


def test_options_before_the_command_are_kept_after_it() -> None:
    ns, _, _ = parse(["--socket", "/tmp/x.sock", "--timeout", "4", "status"])
    assert (ns.socket, ns.timeout, ns.json) == ("/tmp/x.sock", 4.0, False)
    ns, _, _ = parse(["status", "--socket", "/tmp/y.sock", "--json"])
    assert (ns.socket, ns.json) == ("/tmp/y.sock", True)


def test_bash_completion_offers_commands_actions_and_options(tmp_path: Any, capsys: pytest.CaptureFixture[str]) \
        -> None:
    code, out, _ = run(capsys, "completion", "bash")
    assert code == 0 and out == completion_script()
    assert run(capsys, "completion", "fish")[0] == 2
    script = tmp_path / "molamctl.bash"
    script.write_text(out)

    def complete(*words: str) -> set[str]:
        line = " ".join(("molamctl", *words))
        probe = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; _molamctl; "
                 'printf "%s\\n" "${COMPREPLY[@]}"')
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
        return set(done.stdout.split())

    assert complete("dl") == {"dlq"}
    assert {"status", "top", "watch", "statements"} <= complete("")
    assert complete("statements", "") == {"list", "show", "poll", "reprocess", "rewrap"}
    assert complete("--socket", "/tmp/s", "payouts", "re") == {"release", "retry", "resolve"}
    assert "--retry-stuck" in complete("statements", "poll", "--re")
