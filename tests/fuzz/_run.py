"""Running a target: hypothesis draws the inputs, each one is fed under a time and a memory bound.

A hang is an input that takes over ``per_input`` seconds (SIGALRM interrupts Python code; for C code that never
returns, faulthandler dumps every thread's stack and exits after ``4 * per_input``). A blow-up is an input after
which the process's peak RSS grew by more than ``max_rss_growth`` bytes (the CLI also caps the address space, so a
runaway allocation is a MemoryError there rather than the machine's trouble).
"""

from __future__ import annotations

import contextlib
import faulthandler
import resource
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings

from ._targets import Finding, Target

DEFAULT_PER_INPUT = 5.0
DEFAULT_RSS_GROWTH = 512 << 20


class Hang(Finding):
    pass


class BlowUp(Finding):
    pass


@dataclass
class Stats:
    target: str
    inputs: int = 0
    batches: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    findings: dict[str, BaseException] = field(default_factory=dict, repr=False)  # by where they were raised

    @property
    def failure(self) -> BaseException | None:
        return next(iter(self.findings.values()), None)


def finding_key(exc: BaseException) -> str:
    """Where a finding comes from: its type and the innermost frame outside the harness and hypothesis (or, for
    the harness's own Findings, the start of its message without its numbers and quoted values)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/tests/fuzz/" not in f.filename and "/hypothesis/" not in f.filename]
    if frames and not isinstance(exc, Finding):
        return f"{type(exc).__name__} at {frames[-1].filename.rsplit('/', 2)[-1]}:{frames[-1].lineno}"
    head = "".join(c for c in str(exc)[:60] if not c.isdigit())
    return f"{type(exc).__name__}: {head.split(chr(39))[0].split(chr(34))[0].strip()}"  # up to a quoted value


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


@contextlib.contextmanager
def _time_bound(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"no answer within {seconds:g}s")

    faulthandler.dump_traceback_later(seconds * 4, exit=True)
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


def feed(target: Target, item: Any, stats: Stats, *, per_input: float = DEFAULT_PER_INPUT,
         max_rss_growth: int = DEFAULT_RSS_GROWTH) -> None:
    """One input through ``target.run`` under the bounds; raises Finding or whatever the decoder let escape."""
    before = _peak_rss()
    start = time.perf_counter()
    with _time_bound(per_input):
        target.run(item)
    took = time.perf_counter() - start
    stats.inputs += 1
    stats.slowest = max(stats.slowest, took)
    grown = _peak_rss() - before
    if grown > max_rss_growth:
        raise BlowUp(f"peak RSS grew by {grown >> 20} MiB on one input of {_size(item)}")


def _size(item: Any) -> str:
    if isinstance(item, bytes):
        return f"{len(item)} bytes"
    return type(item).__name__


def fuzz(target: Target, *, seconds: float | None = None, max_examples: int | None = None, batch: int = 500,
         per_input: float = DEFAULT_PER_INPUT, max_rss_growth: int = DEFAULT_RSS_GROWTH, seeds_first: bool = True,
         keep_going: bool = False) -> Stats:
    """Run ``target`` for ``seconds`` (in hypothesis batches of ``batch`` inputs) or for ``max_examples`` inputs.

    The seeds go through first, unmutated. Returns the statistics; ``stats.findings`` holds what was found, each
    shrunk by hypothesis (the falsifying input is in the exception's notes). With ``keep_going`` the run goes on
    after a finding, passing over inputs that fail the same way, to find the others in the time it has.
    """
    stats = Stats(target.name)
    started = time.monotonic()
    while True:
        try:
            _batches(target, stats, started, seconds, max_examples, batch, per_input, max_rss_growth,
                     seeds_first and not stats.inputs)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a finding, reported by the caller with hypothesis's falsifying example
            for leaf in _leaves(exc):
                stats.findings.setdefault(finding_key(leaf), leaf)
            if keep_going and (seconds is None or time.monotonic() - started < seconds):
                continue
        break
    stats.seconds = time.monotonic() - started
    return stats


def _batches(target: Target, stats: Stats, started: float, seconds: float | None, max_examples: int | None,
             batch: int, per_input: float, max_rss_growth: int, seeds_first: bool) -> None:
    known = stats.findings

    def checked(item: Any) -> None:
        try:
            feed(target, item, stats, per_input=per_input, max_rss_growth=max_rss_growth)
        except Exception as exc:
            if finding_key(exc) not in known:
                raise

    if seeds_first:
        for seed in target.seeds():
            checked(seed)
    strategy = target.inputs()
    while True:
        count = batch if max_examples is None else min(batch, max_examples - stats.inputs)
        if count <= 0 or (seconds is not None and time.monotonic() - started >= seconds):
            break

        @settings(max_examples=count, deadline=None, database=None, derandomize=False, print_blob=True,
                  phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
        @given(strategy)
        def one(item: Any) -> None:
            checked(item)

        one()
        stats.batches += 1
        if max_examples is not None and stats.inputs >= max_examples:
            break


def cap_address_space(extra: int = 3 << 30) -> None:
    """Let this process map at most ``extra`` bytes more than it has now (the CLI's memory bound)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    limit = pages * resource.getpagesize() + extra
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
