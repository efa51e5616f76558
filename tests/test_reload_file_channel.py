"""A reload that changes a file channel is all or nothing like any other: check-config and reload refuse a
``msg_id_prefix`` that cannot start the channel's MsgIds (naming its TOML path), and a reload waits for the
changed channel's probe (a file built, signed in SoftHSM2 and verified) before it answers; a probe that fails
rolls the reload back and the old channel runs again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from molamd.config import ConfigError, parse_config
from tests.payout_helpers import payout_toml
from tests.test_file_channel import KEY, file_bank, file_connector, files_env, hsm_key, hsm_toml
from tests.test_file_channel_config import HSM, channel

__all__ = ["file_bank", "hsm_key"]  # fixtures, used by name


def prefix_problems(prefix: str, max_transactions: int = 1000) -> list[str]:
    options = f'msg_id_prefix = "{prefix}"\nmax_transactions = {max_transactions}\n'
    try:
        parse_config(channel("a", options=options) + HSM, file="x.toml")
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


@pytest.mark.parametrize(("prefix", "says"), [
    ("MOLAM/SN", "letters A-Z a-z, digits and '-'"),
    ("MOLAM SN", "letters A-Z a-z, digits and '-'"),
    ("-MOLAM", "starting with a letter or digit"),
    ("", "letters A-Z a-z"),
    ("MOLAMSENEGAL", "at most 10"),  # 12 + '-' + 19 digits + '-' + 4 digits of max_transactions 1000 > 35
])
def test_check_config_refuses_a_msg_id_prefix_that_cannot_start_a_msg_id(prefix: str, says: str) -> None:
    found = prefix_problems(prefix)
    assert len(found) == 1 and "$.connectors[0].iso20022.msg_id_prefix" in found[0] and says in found[0], found


def test_the_longest_prefix_leaves_room_for_the_largest_ids() -> None:
    assert prefix_problems("MOLAM") == [] and prefix_problems("MOLAM-SN01") == []
    assert prefix_problems("A" * 10) == [] and prefix_problems("A" * 11) != []
    assert prefix_problems("A" * 13, max_transactions=9) == [], "one-digit block numbers leave three more"
    longest = "A" * 13 + "-" + "9" * 19 + "-" + "9"
    assert len(longest) == 35


def test_a_reload_waits_for_a_changed_file_channels_probe_and_rolls_back_if_it_fails(
    daemon_factory: Any, short_tmp: Path, migrated_dsn: str, hsm_key: tuple[str, Path], file_bank: Any,
) -> None:
    token, certificate = hsm_key
    _, sftp, _ = file_bank
    known_hosts = sftp.known_hosts(short_tmp / "known_hosts")
    config = (payout_toml(short_tmp, migrated_dsn, file_connector("bank-c-files", sftp, known_hosts, certificate))
              + hsm_toml(token))
    d = daemon_factory(config, env=files_env(token))
    [row] = d.ctl_json("connectors")
    assert row["state"] == "running", row

    # A prefix no MsgId may start with: refused before anything changes, naming the key.
    d.config.write_text(config.replace('max_transactions = 25', 'max_transactions = 25\nmsg_id_prefix = "MOLAM/SN"'))
    refused = d.ctl("reload")
    assert refused.returncode == 1 and "$.connectors[0].iso20022.msg_id_prefix" in refused.stderr, refused.stderr
    assert d.ctl_json("connectors")[0]["incarnation"] == row["incarnation"]

    # A key the HSM does not hold: valid config, but the channel's probe fails. The reload answers that, and
    # the channel runs again with the old config.
    d.config.write_text(config.replace(f'key_label = "{KEY}"', 'key_label = "no-such-key"'))
    refused = d.ctl("reload")
    assert refused.returncode == 1, refused.stdout
    assert "config_invalid" in refused.stderr and "bank-c-files did not start" in refused.stderr, refused.stderr
    assert "rolled back" in refused.stderr
    [after] = d.ctl_json("connectors")
    assert after["state"] == "running" and after["incarnation"] != row["incarnation"], after
    assert d.ctl_json("connector", "bank-c-files")["config"]["iso20022"]["key_label"] == KEY
    assert d.ctl_json("status")["last_reload"]["ok"] is False

    # A change whose probe passes answers once the new channel runs.
    d.config.write_text(config.replace('max_transactions = 25', 'max_transactions = 20'))
    done = d.ctl_json("reload")
    assert done["connectors"]["changed"] == ["bank-c-files"]
    assert d.ctl_json("connectors")[0]["state"] == "running"
    assert d.stop() == 0
