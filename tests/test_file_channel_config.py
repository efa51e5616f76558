"""check-config's rules for ISO 20022 file channels that no single key can express: a report drop is read by one
file channel only, and a pinned bank certificate means signed reports."""

from __future__ import annotations

import textwrap

import pytest

from molamd.config import ConfigError, parse_config

HSM = '\n[hsm]\nmodule = "/usr/lib/softhsm/libsofthsm2.so"\ntoken = "t"\npin = "env:PIN"\n'


def channel(name: str, *, host: str = "bank.example", port: int = 22, inbox: str = "/outbox",
            user: str = "molam", options: str = "") -> str:
    return textwrap.dedent(f"""
        [[connectors]]
        name = "{name}"
        kind = "iso20022"
        bank_profile = "bank-c"
        [connectors.cutoffs]
        country = "SN"
        timezone = "Africa/Dakar"
        times = ["15:00"]
        [connectors.iso20022]
        key_label = "k"
        certificate = "/etc/molamd/molam.pem"
        initiating_party = "Molam"
        debtor_name = "Molam"
        debtor_town = "Dakar"
        debtor_country = "SN"
        """) + options + textwrap.dedent(f"""
        [connectors.sftp]
        host = "{host}"
        port = {port}
        username = "{user}"
        password = "env:SFTP"
        known_hosts = "/etc/molamd/known_hosts"
        inbox = "{inbox}"
        archive = "/archive"
        error = "/error"
        """)


def problems(text: str) -> list[str]:
    try:
        parse_config(text + HSM, file="x.toml")
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_two_file_channels_on_one_report_drop_are_refused() -> None:
    """The one that lists first takes the other's reports (flagged unknown_file, archived): its slices stay sent."""
    found = problems(channel("a") + channel("b", inbox="/outbox/"))
    assert len(found) == 1 and "$.connectors[1].sftp.inbox" in found[0] and "$.connectors[0]" in found[0], found
    assert "BANK.example" not in found[0]
    assert problems(channel("a") + channel("b", host="BANK.example", inbox="//outbox")) != []


@pytest.mark.parametrize("other", [{"inbox": "/outbox/b"}, {"port": 2222}, {"host": "other.example"},
                                   {"user": "molam-2"}])
def test_file_channels_on_different_drops_are_fine(other: dict[str, object]) -> None:
    assert problems(channel("a") + channel("b", **other)) == []  # type: ignore[arg-type]


def test_a_pinned_bank_certificate_with_unsigned_reports_allowed_is_refused() -> None:
    pinned = 'bank_certificate = "/etc/molamd/bank.pem"\n'
    [found] = problems(channel("a", options=pinned + "reports_signed = false\n"))
    assert "$.connectors[0].iso20022.reports_signed" in found and "pinned bank_certificate" in found
    assert problems(channel("a", options=pinned)) == []
    assert problems(channel("a", options=pinned + "reports_signed = true\n")) == []


def rest_channel(name: str, *, url: str = "https://api.bank.example/v1", key_id: str = "molam") -> str:
    text = channel(name, options='transport = "rest"\n')
    head = text[:text.index("[connectors.sftp]")]
    return head + textwrap.dedent(f"""
        [connectors.rest]
        base_url = "{url}"
        key_id = "{key_id}"
        hmac_secret = "env:HMAC"
        """)


def test_two_rest_file_channels_reading_one_reports_endpoint_are_refused() -> None:
    [found] = problems(rest_channel("a") + rest_channel("b", url="https://API.bank.example/v1/"))
    assert "$.connectors[1].rest.key_id" in found and "$.connectors[0]" in found, found
    assert problems(rest_channel("a") + rest_channel("b", key_id="molam-2")) == []
    assert problems(rest_channel("a") + channel("b")) == []
