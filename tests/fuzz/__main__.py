"""``scripts/fuzz TARGET|all --minutes N`` and ``scripts/fuzz --list``: the long run of the fuzz targets.

Exit 0 when every target ran its time without a finding, 1 when one found something (the input and traceback
are printed, and the input saved under var/fuzz/), 2 on usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path

from ._run import DEFAULT_PER_INPUT, cap_address_space, fuzz
from ._targets import ROOT, TARGETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help=f"one of {', '.join(TARGETS)}, or all (one after the other)")
    parser.add_argument("--minutes", type=float, default=1.0, help="per target (default 1)")
    parser.add_argument("--per-input", type=float, default=DEFAULT_PER_INPUT,
                        help=f"seconds one input may take before it counts as a hang (default {DEFAULT_PER_INPUT:g})")
    parser.add_argument("--memory-gib", type=float, default=3.0,
                        help="address space the run may add before an allocation fails (default 3)")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    args = parser.parse_args(argv)
    if args.list:
        for target in TARGETS.values():
            errors = ", ".join(e.__name__ for e in target.errors) or "none: it must always answer"
            print(f"{target.name:<13} {target.about} (documented errors: {errors})")
        return 0
    if args.target is None:
        parser.print_usage(sys.stderr)
        print("scripts/fuzz: name a target, or all, or --list", file=sys.stderr)
        return 2
    names = list(TARGETS) if args.target == "all" else [args.target]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        print(f"scripts/fuzz: unknown target {unknown[0]!r} (known: {', '.join(TARGETS)}, all)", file=sys.stderr)
        return 2
    cap_address_space(int(args.memory_gib * (1 << 30)))
    logging.getLogger().addHandler(logging.NullHandler())  # what the decoders log about bad input is expected
    failed = 0
    for name in names:
        print(f"fuzz {name}: {args.minutes:g} min ...", flush=True)
        stats = fuzz(TARGETS[name], seconds=args.minutes * 60, per_input=args.per_input, keep_going=True)
        rate = stats.inputs / stats.seconds if stats.seconds else 0
        summary = (f"fuzz {name}: {stats.inputs:,} inputs in {stats.seconds:.0f}s ({rate:,.0f}/s), "
                   f"slowest {stats.slowest * 1000:.1f} ms")
        if not stats.findings:
            print(f"{summary}: clean", flush=True)
            continue
        failed += 1
        print(f"{summary}: FOUND {len(stats.findings)}: {'; '.join(stats.findings)}", flush=True)
        for number, (key, failure) in enumerate(stats.findings.items(), start=1):
            print(f"--- {name} finding {number}: {key}", flush=True)
            traceback.print_exception(failure, file=sys.stdout)
            _save(name, number, failure)
    return 1 if failed else 0


def _save(name: str, number: int, failure: BaseException) -> None:
    """The report as text (hypothesis puts the falsifying input in the exception's notes) under var/fuzz/."""
    out = ROOT / "var" / "fuzz"
    out.mkdir(parents=True, exist_ok=True)
    path = Path(out / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{number}.txt")
    path.write_text("".join(traceback.format_exception(failure)))
    print(f"fuzz {name}: report saved in {path.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
