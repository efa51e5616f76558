"""Reload in-process: the diff, what keeps its incarnation, and that a bad config changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from molamd import reload as reloading
from molamd.config import ConfigError, load_resolved, parse_config
from molamd.daemon import Daemon
from tests.conftest import connector_toml, daemon_toml


def test_plan_diffs_connectors_and_workers(short_tmp: Path) -> None:
    base = daemon_toml(short_tmp)
    old = parse_config(base + connector_toml("a") + connector_toml("b") + connector_toml("c"), file="f")
    new_text = (base.replace('interval = "1s"', 'interval = "2s"') + connector_toml("a")
                + connector_toml("b", priority=99) + connector_toml("d"))
    new = parse_config(new_text, file="f")
    connectors, workers = reloading.plan(old, new, file="f")
    assert (connectors.added, connectors.changed, connectors.removed, connectors.unchanged) == (
        ["d"], ["b"], ["c"], 1)
    assert workers.changed == ["health_checker"]
    disabled = parse_config(base.replace("[workers.health_checker]", "[workers.health_checker]\nenabled = false")
                            + connector_toml("a"), file="f")
    _, workers = reloading.plan(old, disabled, file="f")
    assert workers.removed == ["health_checker"]
    moved = parse_config(base.replace("control.sock", "other.sock"), file="f")
    with pytest.raises(ConfigError, match=r"\$\.control: \[control\] changed; this needs a restart"):
        reloading.plan(old, moved, file="f")


def test_a_csv_source_restarts_when_its_profile_changes(short_tmp: Path) -> None:
    source = (
        '[[connectors]]\nname = "csv-in"\nkind = "csv-sftp"\nbank_profile = "bank-a"\n[connectors.sftp]\n'
        'host = "h"\nusername = "u"\npassword = "env:X"\nknown_hosts = "/k"\ncsv_profile = "{profile}"\n')
    profile = ('[csv_profiles.p]\ndelimiter = "{delimiter}"\naccount = "A"\ncurrency = "XOF"\n'
               '[csv_profiles.p.columns]\nvalue_date = "d"\namount = "a"\n')
    base = daemon_toml(short_tmp)
    old = parse_config(base + source.format(profile="p") + profile.format(delimiter=";"), file="f")
    same = parse_config(base + source.format(profile="p") + profile.format(delimiter=";"), file="f")
    new = parse_config(base + source.format(profile="p") + profile.format(delimiter=","), file="f")
    assert reloading.plan(old, same, file="f")[0].changed == []
    assert reloading.plan(old, new, file="f")[0].changed == ["csv-in"]


async def test_reload_applies_only_the_difference(short_tmp: Path) -> None:
    path = short_tmp / "molamd.toml"
    base = daemon_toml(short_tmp, health_interval="1h")
    path.write_text(base + connector_toml("a") + connector_toml("b") + connector_toml("c"))
    daemon = Daemon(str(path), load_resolved(str(path)))
    rt = daemon.rt
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        with trio.fail_after(10):
            while rt.connector_actor("c") is None or rt.workers.child("health_checker") is None:  # noqa: ASYNC110
                await trio.sleep(0.01)
        before = {i.name: i.incarnation for i in rt.connectors.infos()}
        a_actor = rt.connector_actor("a")
        assert a_actor is not None
        await a_actor.pause()  # runtime state that must survive a reload
        worker_before = rt.workers.info("health_checker").incarnation

        path.write_text(base.replace("max_restarts = 3", "max_restarts = 7") + connector_toml("a")
                        + connector_toml("b", latency="1ms") + connector_toml("d"))
        result = await reloading.reload(rt)
        assert result.connectors.added == ["d"] and result.connectors.changed == ["b"]
        assert result.connectors.removed == ["c"]
        after = {i.name: i.incarnation for i in rt.connectors.infos()}
        assert after["a"] == before["a"] and rt.connector_actor("a") is a_actor
        assert a_actor.dispatch.value == "paused"
        assert after["b"] != before["b"] and "c" not in after and after["d"]
        assert rt.workers.info("health_checker").incarnation == worker_before
        assert rt.connectors.policy.max_restarts == 7
        assert rt.metrics.reload_successful._value.get() == 1

        good = path.read_text()
        path.write_text(good + "\n[[connectors]]\nname = 'e'\nkind = 'null'\nbank_profile = ''\n")
        with pytest.raises(ConfigError, match=r"\$\.connectors\[3\]\.bank_profile"):
            await reloading.reload(rt)
        assert {i.name: i.incarnation for i in rt.connectors.infos()} == after
        assert rt.metrics.reload_successful._value.get() == 0
        assert rt.last_reload["ok"] is False
        daemon.request_stop("test over")


async def test_a_failure_mid_apply_rolls_back_and_keeps_the_old_config(short_tmp: Path) -> None:
    path = short_tmp / "molamd.toml"
    base = daemon_toml(short_tmp, health_interval="1h")
    old_text = base + connector_toml("a") + connector_toml("b") + connector_toml("c")
    path.write_text(old_text)
    daemon = Daemon(str(path), load_resolved(str(path)))
    rt = daemon.rt
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        with trio.fail_after(10):
            while rt.connector_actor("c") is None:  # noqa: ASYNC110
                await trio.sleep(0.01)
        old_config = rt.config
        a_actor = rt.connector_actor("a")
        start_child = rt.connectors.start_child

        async def broken(spec: Any) -> None:
            if spec.name == "d":
                raise RuntimeError("injected: d cannot start")
            await start_child(spec)

        rt.connectors.start_child = broken  # type: ignore[method-assign]
        # c removed and b changed before d's start fails.
        path.write_text(base + connector_toml("a") + connector_toml("b", latency="1ms") + connector_toml("d"))
        with pytest.raises(ConfigError, match=r"injected: d cannot start.*rolled back"):
            await reloading.reload(rt)
        assert rt.config is old_config, "the old config is still the running one"
        assert sorted(rt.connectors.names()) == ["a", "b", "c"], "c is back, d is not there"
        b_actor, c_actor = rt.connector_actor("b"), rt.connector_actor("c")
        assert b_actor is not None and c_actor is not None
        assert b_actor.config == old_config.connector("b"), "b runs its old spec again"
        assert rt.connector_actor("a") is a_actor, "untouched actors were never touched"
        assert rt.metrics.reload_successful._value.get() == 0 and rt.last_reload["ok"] is False
        assert "rolled back" in str(rt.last_reload["error"])
        daemon.request_stop("test over")


async def test_a_new_hsm_pin_under_the_same_reference_is_taken_without_a_restart(tmp_path: Path, token: str) -> None:
    """[hsm] is restart-only, but a rotated PIN (a new value of the same reference, as a Vault rotation brings) is
    not a change of it: the next signature opens a new session with the new PIN."""
    import msgspec
    import pkcs11

    from connectors import Secret
    from molamd.hsm import KeyKind, Signer
    from molamd.runtime import Runtime
    from tests.conftest import HSM_MODULE, HSM_PIN

    def with_pin(config: Any, pin: str) -> Any:
        return msgspec.structs.replace(config, hsm=msgspec.structs.replace(config.hsm, pin=Secret("env:PIN", pin)))

    text = daemon_toml(tmp_path) + f'[hsm]\nmodule = "{HSM_MODULE}"\ntoken = "{token}"\npin = "env:PIN"\n'
    old_pin, new_pin = HSM_PIN, "7305"
    old = with_pin(parse_config(text, file="x.toml"), old_pin)
    new = with_pin(old, new_pin)
    reloading.plan(old, new, file="x.toml")  # not refused as a change of [hsm]
    maker = Signer(HSM_MODULE, token, old_pin)
    maker.open()
    maker.keygen("pin-rotation", KeyKind.EC_P256)
    maker.close()
    rt = Runtime(str(tmp_path / "x.toml"), old)
    assert rt.sign("pin-rotation", b"before")
    hsm = pkcs11.lib(HSM_MODULE).get_token(token_label=token)
    with hsm.open(rw=True) as session:  # shares the signer's login
        session.set_pin(old_pin, new_pin)  # the PIN changes in the HSM, and then in Vault
    assert rt.signer is not None
    rt.signer.close()  # the old PIN's session is gone (an HSM restart, a timeout): logged out
    try:
        reloading._adopt(rt, new)
        assert rt.sign("pin-rotation", b"after"), "signed in a session opened with the new PIN"
    finally:
        if rt.signer is None:  # the new PIN never logged in: log in with it to put the old one back
            Signer(HSM_MODULE, token, new_pin).open()
        with hsm.open(rw=True) as session:
            session.set_pin(new_pin, old_pin)  # the token is this test session's: put it back
        if rt.signer is not None:
            rt.signer.close()
