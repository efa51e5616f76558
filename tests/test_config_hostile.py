"""Config inputs found by fuzzing (issue 20): each is a ConfigError naming its TOML path (design §3), never a
RecursionError, TypeError, OverflowError or ValueError out of the loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from molamd.config import ConfigError, load_config, parse_config
from tests.conftest import connector_toml, daemon_toml

BASE = daemon_toml(Path("/run/molamd-test")) + connector_toml("alpha")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="x.toml")
    lines = [str(p) for p in info.value.problems]
    assert all(len(line) < 600 for line in lines), lines
    return lines


@pytest.mark.parametrize("text", [
    BASE + "\n[extra]\nx = " + "[" * 5000 + "]" * 5000,  # arrays
    "x = " + "{a=" * 3000 + "1" + "}" * 3000,  # inline tables
    "x" + ".a" * 5000 + " = 1",  # dotted keys
    "[" + ".".join(["a"] * 5000) + "]",  # a table header
])
def test_deep_nesting_is_a_config_error(text: str) -> None:
    [problem] = problems(text)
    assert problem.startswith("$: not valid TOML: nested too deep")


def test_an_integer_past_the_digit_limit_names_its_line() -> None:
    text = BASE.replace("[control]\n", "[control]\nmax_clients = " + "9" * 5000 + "\n")
    line = text.splitlines().index("max_clients = " + "9" * 5000) + 1
    [problem] = problems(text)
    assert problem.startswith("$: not valid TOML:") and f"line {line}" in problem


@pytest.mark.parametrize(("key", "value", "path"), [
    ("max_clients", "9" * 400, "$.control.max_clients"),  # OverflowError once: int too large to convert to float
    ("max_clients", "0x" + "f" * 3000, "$.control.max_clients"),
    ("max_clients", "-" + "9" * 400, "$.control.max_clients"),
])
def test_a_huge_integer_is_out_of_bounds_at_its_path(key: str, value: str, path: str) -> None:
    found = problems(BASE.replace("[control]\n", f"[control]\n{key} = {value}\n"))
    [problem] = [p for p in found if p.startswith(f"{path}: ")]  # a negative one breaks other rules too
    assert "out of bounds" in problem and "digits" in problem


def test_a_huge_integer_where_a_priority_is_expected() -> None:
    [problem] = problems(BASE.replace("priority = 10", "priority = 1" + "0" * 400))
    assert problem.startswith("$.connectors[0].priority: ") and "out of bounds" in problem


def test_a_huge_duration_is_named_briefly() -> None:
    [problem] = problems(BASE.replace('shutdown_grace = "5s"', 'shutdown_grace = "' + "9" * 400 + 's"'))
    assert problem.startswith("$.daemon.shutdown_grace: ") and "longer than a year" in problem


@pytest.mark.parametrize("kind", ['["null"]', "{a = 1}", "5", "true"])
def test_a_connector_kind_of_the_wrong_type_names_its_path(kind: str) -> None:
    [problem] = problems(BASE.replace('kind = "null"', f"kind = {kind}"))
    assert problem.startswith("$.connectors[0].kind: ") and "one of:" in problem


@pytest.mark.parametrize(("text", "path"), [
    (BASE.replace("[control]\n", '[control]\noperator_group = "a\\u0000b"\n'), "$.control.operator_group"),
    (BASE.replace('/control.sock"', '/con\\u0000trol.sock"'), "$.control.socket"),
    (BASE.replace("dbname=nothing", "dbname=no\\u0000thing"), "$.database.dsn"),
    (BASE.replace('bank_profile = "bank-a"', 'bank_profile = "bank\\u0000a"'), "$.connectors[0].bank_profile"),
    (BASE.replace("[control]\n", '[control]\n"socket\\u0000" = 1\n'), "$.control"),
    (BASE.replace('bank_profile = "bank-a"', 'bank_profile = "b"\ncurrencies = ["XOF", "\\u0000"]'),
     "$.connectors[0].currencies[1]"),
])
def test_a_nul_in_a_string_or_key_names_its_path(text: str, path: str) -> None:
    found = problems(text)
    assert any(p.startswith(f"{path}: ") and "NUL" in p for p in found), found
    assert "\x00" not in "".join(found)


def test_a_config_path_with_a_nul_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/etc/molamd/mola\x00md.toml")
    assert "NUL" in str(info.value) and "\x00" not in str(info.value)


def test_a_file_secret_path_with_a_nul_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "molamd.toml"
    path.write_text(BASE.replace("[control]\n", '[control]\n', 1)
                    + '\n[vault]\naddress = "http://127.0.0.1:1"\nsecret_id = "file:/run/a\\u0000b"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any("NUL" in line for line in info.value.lines()), info.value.lines()


@pytest.mark.parametrize(("text", "path"), [
    (BASE.replace("[control]\n", '[control]\nsocket_mode = "' + "7" * 100_000 + '"\n'), "$.control.socket_mode"),
    (BASE.replace('enabled = false', 'enabled = true\nlisten = "' + "x" * 100_000 + '"'), "$.metrics.listen"),
    (BASE.replace("[control]\n", "[control]\n" + "k" * 100_000 + " = 1\n"), "$.control"),
    (BASE + "\n[" + "t" * 100_000 + "]\nx = 1\n", "$"),
])
def test_a_huge_value_or_key_is_quoted_briefly(text: str, path: str) -> None:
    [problem] = problems(text)
    assert problem.startswith(f"{path}: ") and "characters)" in problem
