"""Config: every error names the file and the TOML path; secrets resolve and never print."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors import Duration, Secret
from molamd import cli
from molamd.config import ConfigError, load_config, load_resolved, parse_config, resolve_secrets

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "molamd.example.toml"
DEV = ROOT / "config" / "molamd.dev.toml"

MINIMAL = """
[[connectors]]
name = "a"
kind = "null"
bank_profile = "p"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="x.toml")
    assert str(info.value).startswith("x.toml: ")
    return [str(p) for p in info.value.problems]


def test_shipped_configs_are_valid() -> None:
    from molamd.config import load_config, secret_entries

    example = load_resolved(str(EXAMPLE))
    assert example.connectors[0].name == "ecobank-sn-null"
    dev = load_config(str(DEV))  # its secrets are in the OpenBao scripts/demo starts
    assert dev.daemon.host_id == "demo-host"
    schemes = {path: secret.scheme for path, secret in secret_entries(dev)}
    assert schemes.pop("$.vault.secret_id") == "file" and set(schemes.values()) == {"vault"}, schemes
    assert cli.main(["check-config", str(EXAMPLE)]) == 0


def test_example_documents_every_key() -> None:
    from molamd.config import Config

    text = EXAMPLE.read_text()

    for section in Config.__struct_fields__:
        if section in ("connectors", "csv_profiles"):
            continue
        assert f"[{section}" in text, section
        value = getattr(Config(), section)
        for key in value.__struct_fields__:
            if section == "workers":
                for sub in getattr(value, key).__struct_fields__:
                    assert f"\n{sub} =" in text, f"{section}.{key}.{sub}"
            else:
                assert f"\n{key} =" in text or f"# {key} =" in text, f"{section}.{key}"
    from connectors import BreakerConfig, LimitsConfig, NullConfig, RestOptions

    for key in NullConfig.__struct_fields__:
        assert f"\n{key} =" in text or f"\n[connectors.{key}]" in text, key
    from connectors import SftpOptions
    from connectors.statements import CsvColumns, CsvProfile

    assert "\n[csv_profiles." in text
    from connectors import CutoffConfig, FileChannelOptions

    for struct in (LimitsConfig, BreakerConfig, RestOptions, SftpOptions, CsvProfile, CsvColumns, FileChannelOptions,
                   CutoffConfig):
        for key in struct.__struct_fields__:
            assert f"\n{key} =" in text or f"\n# {key} =" in text or f".{key}]" in text, f"{struct.__name__}.{key}"


def test_broken_toml() -> None:
    [problem] = problems("[daemon\nx = 1")
    assert problem.startswith("$: not valid TOML") and "line 1" in problem


def test_wrong_type_names_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert problems("[database]\npool_max_size = 'eight'") == ["$.database.pool_max_size: Expected `int`, got `str`"]
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("pool_max_size = 8", 'pool_max_size = "8"'))
    assert cli.main(["check-config", str(bad)]) == 1
    assert f"{bad}: $.database.pool_max_size" in capsys.readouterr().err


def test_unknown_keys_are_rejected() -> None:
    assert problems("[daemon]\nhostid = 'x'") == ["$.daemon: Object contains unknown field `hostid`"]
    assert problems("[nosuch]\n") == ["$: Object contains unknown field `nosuch`"]
    [p] = problems(MINIMAL + "[connectors.null]\nlatncy = '1s'\n")
    assert p == "$.connectors[0].null: Object contains unknown field `latncy`"


def test_connector_kind_errors() -> None:
    [p] = problems(MINIMAL.replace('kind = "null"', 'kind = "carrier-pigeon"'))
    assert p.startswith("$.connectors[0].kind: unknown connector kind 'carrier-pigeon'") and "null" in p
    [p] = problems(MINIMAL.replace('kind = "null"\n', ""))
    assert p.startswith("$.connectors[0].kind: missing")


def test_rules_across_keys_report_everything() -> None:
    text = MINIMAL + MINIMAL.replace('bank_profile = "p"', 'bank_profile = ""') + """
[database]
pool_min_size = 9
[control]
socket = "relative.sock"
socket_mode = "999"
operator_group = "no-such-group-here"
[metrics]
listen = "example.com:80"
"""
    found = problems(text)
    assert "$.connectors[1].name: duplicate of $.connectors[0].name ('a')" in found
    assert "$.connectors[1].bank_profile: must not be empty" in found
    assert any(p.startswith("$.database.pool_min_size") for p in found)
    assert "$.control.socket: must be an absolute path" in found
    assert any(p.startswith("$.control.socket_mode") for p in found)
    assert "$.control.operator_group: no such group 'no-such-group-here' on this host" in found
    assert any(p.startswith("$.metrics.listen") for p in found)


def test_durations() -> None:
    assert Duration("1m30s").seconds == 90
    assert Duration("250ms").seconds == 0.25
    assert Duration("1d").seconds == 86400
    assert Duration("30s") == Duration("0.5m") and str(Duration(" 5m ")) == "5m"
    for bad in ("", "5", "5 s", "s", "1x", "-1s"):
        with pytest.raises(ValueError):
            Duration(bad)
    [p] = problems("[daemon]\nshutdown_grace = 30")
    assert p == "$.daemon.shutdown_grace: a duration is a string like '30s', not int"
    [p] = problems("[daemon]\nshutdown_grace = '30 seconds'")
    assert p.startswith("$.daemon.shutdown_grace: invalid duration '30 seconds'")


def test_secrets_resolve_and_never_print(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cr3t-from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "db").write_text("s3cr3t-credential")
    monkeypatch.setenv("MOLAMD_TEST_TOKEN", "s3cr3t-env")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    text = f"""
[database]
password = "file:{secret_file}"
{MINIMAL}
[connectors.null]
token = "env:MOLAMD_TEST_TOKEN"
{MINIMAL.replace('"a"', '"b"')}
[connectors.null]
token = "credential:db"
"""
    config = resolve_secrets(parse_config(text, file="x.toml"), file="x.toml")
    assert config.database.password is not None
    assert config.database.password.reveal() == "s3cr3t-from-file"
    tokens = [c.null.token for c in config.connectors]
    assert [t.reveal() for t in tokens if t] == ["s3cr3t-env", "s3cr3t-credential"]
    for shown in (repr(config), str(config), repr(config.database.password), str(tokens[0])):
        assert "s3cr3t" not in shown
    assert str(tokens[0]) == "***"
    with pytest.raises(LookupError):
        Secret("env:X").reveal()


def test_secret_errors_name_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("MOLAMD_UNSET", raising=False)
    text = f"""
[database]
password = "vault:kv/molamd/db#password"
{MINIMAL}
[connectors.null]
token = "env:MOLAMD_UNSET"
{MINIMAL.replace('"a"', '"b"')}
[connectors.null]
token = "credential:db"
{MINIMAL.replace('"a"', '"c"')}
[connectors.null]
token = "file:{tmp_path}/missing"
"""
    with pytest.raises(ConfigError) as info:
        resolve_secrets(parse_config(text, file="x.toml"), file="x.toml")
    found = {p.path: p.message for p in info.value.problems}
    assert "Vault resolver" in found["$.database.password"]
    assert "MOLAMD_UNSET is not set" in found["$.connectors[0].null.token"]
    assert "CREDENTIALS_DIRECTORY" in found["$.connectors[1].null.token"]
    assert "cannot read" in found["$.connectors[2].null.token"]
    [p] = problems("[database]\npassword = 'hunter2'")
    assert p.startswith("$.database.password: not a secret reference") and "never literal" in p


def test_unreadable_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/nonexistent/molamd.toml")
    assert "cannot read the file" in str(info.value)


def test_statement_source_rules_name_every_problem() -> None:
    text = """
[[connectors]]
name = "s1"
kind = "csv-sftp"
bank_profile = "bank-a"
[connectors.sftp]
host = "h"
username = "u"
known_hosts = "/k"
inbox = "outgoing"
archive = "/outgoing"
patterns = []
chunk_size = 0
poll_interval = "0s"
csv_profile = "nope"
"""
    assert problems(text) == [
        "$.connectors[0].sftp.chunk_size: 0 is out of bounds; give a number from 1_024 to 67_108_864",
        "$.connectors[0].sftp.poll_interval: '0s' must be longer than zero",
        "$.connectors[0].sftp.inbox: must be an absolute remote path",
        "$.connectors[0].sftp.patterns: must name at least one pattern",
        "$.connectors[0].sftp: set password or private_key",
        "$.connectors[0].sftp.csv_profile: no [csv_profiles.nope] (known: molamd)",
    ]
    bad_profile = '[csv_profiles.x]\namount_style = "indicator"\n[csv_profiles.x.columns]\namount = "a"\n'
    assert problems(bad_profile) == [
        "$.csv_profiles.x: columns: map value_date or booking_date",
        "$.csv_profiles.x: columns.indicator is required for amount_style 'indicator'",
        "$.csv_profiles.x: map columns.account or set account",
        "$.csv_profiles.x: map columns.currency or set currency",
    ]


def test_a_scope_is_never_shared_by_two_bank_profiles(short_tmp: Path) -> None:
    from tests.conftest import connector_toml, daemon_toml

    shared = 'idempotency_scope = "one-store"'
    same_bank = connector_toml("a", extra=shared) + connector_toml("b", extra=shared)
    parse_config(daemon_toml(short_tmp) + same_bank, file="f")  # two endpoints of one bank API: fine
    two_banks = connector_toml("a", extra=shared) + connector_toml("c", profile="bank-c", extra=shared)
    with pytest.raises(ConfigError, match=r"\$\.connectors\[1\]\.idempotency_scope: scope 'one-store' is also used"):
        parse_config(daemon_toml(short_tmp) + two_banks, file="f")


def test_the_dispatchers_lookup_backoff_is_checked_by_check_config(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """lookup_initial above lookup_max is a ValueError where the dispatcher builds its settings, each time it
    starts (a crash loop): check-config names the key instead, and an equal pair is fine."""
    import msgspec

    from molamd.config import Config
    from molamd.runtime import dispatcher_settings

    section = msgspec.structs.replace(Config().workers.dispatcher, lookup_initial=Duration("5m"),
                                      lookup_max=Duration("1m"))
    with pytest.raises(ValueError, match="initial <= maximum"):  # what the check spares the dispatcher
        dispatcher_settings(section)
    bad = "[workers.dispatcher]\nlookup_initial = '5m'\nlookup_max = '1m'\n"
    assert problems(MINIMAL + bad) == ["$.workers.dispatcher.lookup_initial: need lookup_initial <= lookup_max"]
    path = tmp_path / "bad.toml"
    path.write_text(EXAMPLE.read_text().replace('lookup_initial = "2s"', 'lookup_initial = "3m"'))
    assert cli.main(["check-config", str(path)]) == 1
    assert f"{path}: $.workers.dispatcher.lookup_initial" in capsys.readouterr().err
    same = parse_config(MINIMAL + "[workers.dispatcher]\nlookup_initial = '1m'\nlookup_max = '1m'\n", file="x.toml")
    assert dispatcher_settings(same.workers.dispatcher).lookup_backoff.initial == 60.0


@pytest.mark.parametrize(("section", "name"), [("workers.dispatcher", "retry"), ("workers.status_follower", "backoff")])
def test_every_backoff_pair_is_checked_by_check_config(section: str, name: str) -> None:
    """The same crash loop as lookup_initial above lookup_max, for each section whose pair makes a Backoff."""
    bad = f"[{section}]\n{name}_initial = '5m'\n{name}_max = '1m'\n"
    assert problems(MINIMAL + bad) == [f"$.{section}.{name}_initial: need {name}_initial <= {name}_max"]
