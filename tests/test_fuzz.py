"""The fuzz harness (tests/fuzz), short: every target for a few seconds, and the harness seen to catch each kind
of finding on a decoder broken on purpose. The long run is ``scripts/fuzz TARGET|all --minutes N``."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import TARGETS, BlowUp, Finding, Hang, Target, fuzz
from tests.fuzz._mutate import mutated

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 2.0
# Findings in code other engineers own, open at the time of writing (issue 20): the short run may meet them.
OPEN_FINDINGS: dict[str, str] = {}  # target -> a finding not fixed yet (its test is then an xfail naming it)


def _params() -> list[object]:
    return [pytest.param(name, marks=pytest.mark.xfail(reason=OPEN_FINDINGS[name], strict=False))
            if name in OPEN_FINDINGS else name for name in TARGETS]


@pytest.mark.parametrize("name", _params())
def test_target_runs_clean_for_a_few_seconds(name: str) -> None:
    stats = fuzz(TARGETS[name], seconds=SECONDS, max_examples=2000, batch=50)
    assert not stats.findings, "\n".join(f"{key}: {exc!r}" for key, exc in stats.findings.items())
    assert stats.inputs > len(TARGETS[name].seeds())  # the seeds went through, and mutated inputs after them


def test_every_target_has_real_seeds() -> None:
    for target in TARGETS.values():
        assert len(target.seeds()) >= 1, target.name
    assert len(TARGETS["mt940"].seeds()) > 50 and len(TARGETS["camt053"].seeds()) > 30
    assert len(TARGETS["pain002"].seeds()) >= 15 and len(TARGETS["config"].seeds()) == 2


MT940_SEEDS = TARGETS["mt940"].seeds()
DRAWN: list[bytes] = []


@settings(max_examples=200, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated(MT940_SEEDS, (b":61:",)))
def _draw(data: bytes) -> None:
    DRAWN.append(data)


def test_the_mutator_changes_real_files_and_keeps_their_shape_often() -> None:
    DRAWN.clear()
    _draw()
    assert len(DRAWN) >= 150
    assert sum(d not in MT940_SEEDS for d in DRAWN) > len(DRAWN) / 2  # mostly changed
    assert sum(b":20:" in d for d in DRAWN) > len(DRAWN) / 4  # many still look like statements (about half)


# -- the harness seen to fail --------------------------------------------------------------------------------------

def _broken(run: Callable[[bytes], None]) -> Target:
    seeds = [b"hello world 12345", b"abc"]
    return Target("broken", "a decoder broken on purpose", lambda: mutated(seeds, (b"BOOM",)), run, (ValueError,),
                  lambda: seeds)


def _untyped(data: bytes) -> None:
    if b"BOOM" in data:
        raise KeyError("untyped")


def _long_message(data: bytes) -> None:
    if b"BOOM" in data:
        from tests.fuzz._targets import _bounded

        _bounded(ValueError("x" * 2000))


def _hangs(data: bytes) -> None:
    if b"BOOM" in data:
        time.sleep(30)


def _allocates(data: bytes) -> None:
    if b"BOOM" in data:
        hog = bytearray(96 << 20)
        hog[-1] = 1


@pytest.mark.parametrize(("run", "kind", "options"), [
    (_untyped, KeyError, {}),
    (_long_message, Finding, {}),
    (_hangs, Hang, {"per_input": 0.2}),
    (_allocates, BlowUp, {"max_rss_growth": 32 << 20}),
])
def test_the_harness_reports_a_broken_decoder(run: Callable[[bytes], None], kind: type[BaseException],
                                              options: dict[str, float]) -> None:
    stats = fuzz(_broken(run), seconds=30, max_examples=3000, batch=100, **options)  # type: ignore[arg-type]
    assert stats.failure is not None, f"nothing found in {stats.inputs} inputs"
    assert isinstance(stats.failure, kind), repr(stats.failure)
    assert "BOOM" in "".join(getattr(stats.failure, "__notes__", [])) or isinstance(stats.failure, BlowUp)


def test_keep_going_reports_each_finding_once() -> None:
    def two_bugs(data: bytes) -> None:
        if b"BOOM" in data:
            raise KeyError("one")
        if b"\x00" in data:
            raise IndexError("two")

    stats = fuzz(_broken(two_bugs), seconds=4, max_examples=4000, batch=200, keep_going=True)
    kinds = sorted(type(f).__name__ for f in stats.findings.values())
    assert "KeyError" in kinds and len(kinds) == len(set(kinds)), stats.findings


def test_scripts_fuzz_lists_runs_and_refuses() -> None:
    listed = subprocess.run([ROOT / "scripts" / "fuzz", "--list"], capture_output=True, text=True, check=True)
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(TARGETS)
    run = subprocess.run([ROOT / "scripts" / "fuzz", "csv", "--minutes", "0.05"], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0 and "fuzz csv:" in run.stdout and ": clean" in run.stdout, run.stdout + run.stderr
    unknown = subprocess.run([ROOT / "scripts" / "fuzz", "nope"], capture_output=True, text=True, check=False)
    assert unknown.returncode == 2 and "unknown target 'nope'" in unknown.stderr


def test_strategy_draws_are_reproducible_by_hypothesis() -> None:
    # a finding is reported with hypothesis's falsifying example: the strategy is a hypothesis strategy
    assert isinstance(TARGETS["csv"].inputs(), st.SearchStrategy) and sys.version_info >= (3, 11)
