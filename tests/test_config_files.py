"""A careless operator's config files, as real files: non-finite and absurd numbers, a secret pasted as a
literal, a FIFO at the config path, a password inside the DSN, a truncated file that removes most connectors,
and multi-line ``file:`` secrets. Each is refused with its path, never echoes a secret, and disturbs nothing."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from molamd.config import load_resolved
from tests.conftest import MOLAMD, connector_toml, daemon_toml

LIMITS = "[connectors.limits]\n"


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MOLAMD, "check-config", str(path)], capture_output=True, text=True, timeout=30,
                          check=False)


@pytest.mark.parametrize(("table", "where", "says"), [
    (LIMITS + "rate = nan", "$.connectors[0].limits.rate", "not a finite number"),
    (LIMITS + "rate = inf", "$.connectors[0].limits.rate", "not a finite number"),
    (LIMITS + "rate = -5.0", "$.connectors[0].limits.rate", "out of bounds"),
    (LIMITS + "burst = 1e20", "$.connectors[0].limits.burst", ""),
    (LIMITS + "burst = 100000000000", "$.connectors[0].limits.burst", "out of bounds"),
    (LIMITS + 'call_timeout = "0s"', "$.connectors[0].limits.call_timeout", "must be longer than zero"),
    (LIMITS + 'call_timeout = "400d"', "$.connectors[0].limits.call_timeout", "longer than a year"),
    ("[connectors.breaker]\nfailure_rate = nan", "$.connectors[0].breaker.failure_rate", "not a finite number"),
])
def test_non_finite_and_absurd_numbers_are_refused_with_their_path(
    short_tmp: Path, table: str, where: str, says: str
) -> None:
    path = short_tmp / "molamd.toml"
    path.write_text(daemon_toml(short_tmp, connectors=connector_toml("alpha") + table))
    result = check(path)
    assert result.returncode == 1
    assert where in result.stderr and says in result.stderr, result.stderr


def test_reload_refuses_nan_and_the_daemon_keeps_answering(daemon_factory: Any, short_tmp: Path) -> None:
    good = daemon_toml(short_tmp, connectors=connector_toml("alpha") + connector_toml("beta"))
    d = daemon_factory(good)
    before = {r["name"]: r["incarnation"] for r in d.ctl_json("connectors")}
    for table in (LIMITS + "rate = nan", LIMITS + "rate = inf", LIMITS + "burst = 1e20"):
        d.config.write_text(good + table)
        refused = d.ctl("reload")
        assert refused.returncode == 1 and "$.connectors[1].limits" in refused.stderr, refused.stderr
    assert {r["name"]: r["incarnation"] for r in d.ctl_json("connectors")} == before
    infinite = d.ctl("set-rate", "alpha", "1e400")  # Python reads it as infinity, and sends "Infinity"
    assert infinite.returncode == 1 and "Infinity is not a JSON number" in infinite.stderr
    huge = d.ctl("set-rate", "alpha", "1e300")
    assert huge.returncode == 1 and "RATE must be" in huge.stderr
    assert d.ctl_json("connector", "alpha")["snapshot"]["limiter_rate"] == 50.0, "unchanged"
    assert d.stop() == 0


LONG_LITERAL = "sk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0ffeeddccbbaa"
SHORT_LITERAL = "hunter2"


@pytest.mark.parametrize("literal", [LONG_LITERAL, SHORT_LITERAL])
def test_a_secret_pasted_as_a_literal_is_never_echoed(daemon_factory: Any, short_tmp: Path, literal: str) -> None:
    good = daemon_toml(short_tmp, connectors=connector_toml("alpha"))
    bad = good + f'token = "{literal}"\n'  # [connectors.null] token, a secret
    path = short_tmp / "bad.toml"
    path.write_text(bad)
    checked = check(path)
    assert checked.returncode == 1 and "$.connectors[0].null.token" in checked.stderr
    assert f"a value of {len(literal)} characters" in checked.stderr and "env:" in checked.stderr
    assert literal not in checked.stdout + checked.stderr and literal[:4] not in checked.stderr
    d = daemon_factory(good)
    d.config.write_text(bad)
    reply = d.ctl("reload")
    assert reply.returncode == 1 and "not a secret reference" in reply.stderr
    status = d.ctl("--json", "status").stdout
    assert d.stop() == 0
    for text in (reply.stdout + reply.stderr, status, d.logs()):
        assert literal not in text


def test_a_fifo_at_the_config_path_is_refused_and_does_not_wedge_later_reloads(
    daemon_factory: Any, short_tmp: Path
) -> None:
    good = daemon_toml(short_tmp, connectors=connector_toml("alpha"))
    fifo = short_tmp / "fifo.toml"
    os.mkfifo(fifo)
    # Never opened: opening a FIFO without a writer blocks for ever, so any finite bound tells the two apart.
    # check()'s own 30 s timeout is that bound, one a loaded machine does not reach for one CLI run.
    result = check(fifo)
    assert result.returncode == 1 and "not a regular file (a FIFO)" in result.stderr
    d = daemon_factory(good)
    d.config.unlink()
    os.mkfifo(d.config)
    refused = d.ctl("reload", timeout=10)
    assert refused.returncode == 1 and "not a regular file (a FIFO)" in refused.stderr
    d.config.unlink()
    d.config.write_text(good + connector_toml("beta"))
    assert d.ctl("reload", timeout=10).returncode == 0, "the next reload is not wedged"
    assert {r["name"] for r in d.ctl_json("connectors")} == {"alpha", "beta"}
    assert d.stop() == 0


def test_a_huge_config_file_is_refused_unread(short_tmp: Path) -> None:
    path = short_tmp / "huge.toml"
    with path.open("wb") as f:
        f.truncate(17 * 1024 * 1024)  # sparse: 17 MiB of nothing
    result = check(path)
    assert result.returncode == 1 and "larger than" in result.stderr


@pytest.mark.parametrize("dsn", ["host=db.bank password=Pa55-in-dsn user=molamd",
                                 "postgresql://molamd:Pa55-in-dsn@db.bank/molam"])
def test_a_password_inside_the_dsn_is_refused_and_not_shown(short_tmp: Path, dsn: str) -> None:
    path = short_tmp / "molamd.toml"
    path.write_text(daemon_toml(short_tmp, dsn=dsn))
    result = check(path)
    assert result.returncode == 1 and "$.database.dsn: holds a password" in result.stderr
    assert "Pa55" not in result.stdout + result.stderr


def test_a_truncated_file_that_removes_most_connectors_needs_allow_removals(
    daemon_factory: Any, short_tmp: Path
) -> None:
    names = [f"c{i}" for i in range(6)]
    full = daemon_toml(short_tmp, connectors="".join(connector_toml(n) for n in names))
    d = daemon_factory(full)
    truncated = daemon_toml(short_tmp, connectors=connector_toml("c0"))
    d.config.write_text(truncated)
    refused = d.ctl("reload")
    assert refused.returncode == 1
    assert "would remove 5 of 6 connectors (c1, c2, c3, c4, c5)" in refused.stderr
    assert "--allow-removals 5" in refused.stderr
    assert len(d.ctl_json("connectors")) == 6, "nothing was removed"
    assert d.ctl("reload", "--allow-removals", "4").returncode == 1, "fewer allowed than would go"
    assert d.ctl("reload", "--allow-removals", "5").returncode == 0
    assert [r["name"] for r in d.ctl_json("connectors")] == ["c0"]
    # A few at a time need no flag.
    d.config.write_text(full)
    assert d.ctl("reload").returncode == 0
    d.config.write_text(daemon_toml(short_tmp, connectors="".join(connector_toml(n) for n in names[:3])))
    assert d.ctl("reload").returncode == 0
    assert d.stop() == 0


def test_file_secrets_are_the_whole_file_less_trailing_newlines(short_tmp: Path) -> None:
    secret = short_tmp / "key.pem"
    secret.write_text("-----BEGIN KEY-----\nAAAA\nBBBB\n-----END KEY-----\n\n")
    path = short_tmp / "molamd.toml"
    path.write_text(daemon_toml(short_tmp, connectors=connector_toml("alpha") + f'token = "file:{secret}"\n'))
    config = load_resolved(path)
    token = config.connectors[0].null.token  # type: ignore[attr-defined]
    assert token.reveal() == "-----BEGIN KEY-----\nAAAA\nBBBB\n-----END KEY-----"


def test_a_fifo_as_a_file_secret_is_refused(short_tmp: Path) -> None:
    fifo = short_tmp / "secret.fifo"
    os.mkfifo(fifo)
    path = short_tmp / "molamd.toml"
    path.write_text(daemon_toml(short_tmp, connectors=connector_toml("alpha") + f'token = "file:{fifo}"\n'))
    done = threading.Event()
    result: list[subprocess.CompletedProcess[str]] = []

    def run() -> None:
        result.append(check(path))
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(15), "check-config is stuck on the FIFO"
    assert result[0].returncode == 1 and "not a regular file (a FIFO)" in result[0].stderr


def test_equal_bad_tables_are_each_reported_at_their_own_path(short_tmp: Path) -> None:
    """The bounds check remembers equal tables; each occurrence still gets its own path."""
    path = short_tmp / "molamd.toml"
    path.write_text(daemon_toml(short_tmp, connectors="".join(
        connector_toml(n) + LIMITS + "rate = inf\n" for n in ("a", "b", "c"))))
    result = check(path)
    assert [line.split(": ")[1] for line in result.stderr.splitlines()] == [
        f"$.connectors[{i}].limits.rate" for i in range(3)]
