"""Statement benchmarks, side by side in one run on this machine.

1. MT940 parse throughput (MB/s): ours beside the ``mt-940`` PyPI library on the same concatenation of every
   corpus file both accept (ours with the balance check on), repeated to about 50 MB; and, file by file, whether
   both read the same amounts and balances. Target: ours >= 5x faster, equal numbers.
2. Ingestion: statement lines/s from a 1,000,000-line MT940 file on the sandbox SFTP server to committed rows in
   PostgreSQL (download, sha256, raw row, parse, balance check, COPY of the lines, reconciliation, commit), beside
   a bare psycopg COPY of the same lines already parsed into rows. Target >= 0.5 of the bare COPY rate.
3. Peak RSS of the process while it ingests that file. Target <= 300 MB.

Phases 2 and 3 run in child processes, so each peak RSS is that phase's own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from pgcluster import Cluster, scratch_cluster  # noqa: E402

from connectors.statements import StatementError, iter_mt940, parse_mt940  # noqa: E402

BIN = ROOT / ".venv" / "bin"
CORPORA = ROOT / "tests" / "fixtures"  # the public bank files the tests read, with their LICENSEs


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux keeps that across exec, so a
    child would report its parent's peak at fork time (here, the parse benchmark's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover - not Linux


# -- 1. parsing ---------------------------------------------------------------------------------------


def corpus_files() -> list[Path]:
    files = [p for p in (CORPORA / "wolph-mt940" / "mt940_tests").rglob("*") if p.suffix.lower() in (".sta", ".txt")]
    files += [p for p in (CORPORA / "mt940-js" / "cases").iterdir()
              if p.suffix.lower() in (".sta", ".mta")]
    return sorted(files)


def theirs(data: bytes) -> Any:
    import logging

    import mt940

    logging.getLogger("mt940").setLevel(logging.CRITICAL)  # it logs every field it cannot read, to stderr

    transactions = mt940.models.Transactions()
    transactions.parse(data.decode("latin-1"))
    return transactions


def compare(path: Path) -> tuple[bool, str]:
    """(both accept, how they compare)."""
    data = path.read_bytes()
    try:
        ours = parse_mt940(data)
    except StatementError:
        return False, "ours refuses"
    try:
        other = theirs(data)
    except Exception as exc:
        return False, f"mt-940 fails: {type(exc).__name__}"
    our_amounts = [line.amount for s in ours for line in s.lines]
    their_amounts = [t.data["amount"].amount for t in other.transactions]
    their_marks = [t.data.get("status") for t in other.transactions]
    if len(our_amounts) != len(their_amounts):
        return True, f"entry count differs: {len(our_amounts)} vs {len(their_amounts)}"
    diffs = [(a, b, m) for a, b, m in zip(our_amounts, their_amounts, their_marks, strict=True) if a != b]
    if diffs and all(m == "RC" and a == -b for a, b, m in diffs):
        return True, f"equal except {len(diffs)} RC entries mt-940 signs as credits (they are debits: ours balance)"
    if diffs:
        return True, f"amounts differ: {diffs[:3]}"
    balances = {(s.opening.amount, s.opening.date) for s in ours if s.opening}
    balances |= {(s.closing.amount, s.closing.date) for s in ours if s.closing}
    for key in ("final_opening_balance", "final_closing_balance"):
        balance = other.data.get(key)
        if balance is not None:
            pair = (balance.amount.amount, dt.date(balance.date.year, balance.date.month, balance.date.day))
            if pair not in balances:
                return True, f"{key} differs: {pair}"
    return True, "equal"


def bench_parse(target_mb: float) -> dict[str, Any]:
    accepted, notes = [], {}
    for path in corpus_files():
        both, note = compare(path)
        notes[str(path.relative_to(CORPORA))] = note
        if both:
            accepted.append(path.read_bytes())
    unit = b"\r\n".join(accepted) + b"\r\n"
    data = unit * max(1, round(target_mb * 1e6 / len(unit)))
    mb = len(data) / 1e6
    # CPU seconds of this process: the machine is shared, and wall time swings with the neighbours' load. Both
    # parsers keep every record of the 50 MB, as mt-940 can only do.
    started = time.process_time()
    ours = parse_mt940(data)
    ours_s = time.process_time() - started
    entries = sum(len(s.lines) for s in ours)
    del ours
    started = time.process_time()
    streamed = sum(len(s.lines) for s in iter_mt940([data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)]))
    stream_s = time.process_time() - started
    started = time.process_time()
    other = theirs(data)
    theirs_s = time.process_time() - started
    assert entries == streamed == len(other.transactions)
    both = sum(1 for n in notes.values() if not n.startswith(("ours refuses", "mt-940 fails")))
    equal = sum(1 for n in notes.values() if n == "equal")
    return {"corpus_mb": round(mb, 1), "files_both_accept": both, "files_equal": equal,
            "entries": entries, "ours_mb_s": round(mb / ours_s, 2), "ours_stream_mb_s": round(mb / stream_s, 2),
            "mt940_lib_mb_s": round(mb / theirs_s, 2), "speedup": round(theirs_s / ours_s, 1),
            "differences": {k: v for k, v in notes.items() if v not in ("equal",)
                            and not v.startswith(("ours refuses", "mt-940 fails"))}}


# -- 2. ingestion --------------------------------------------------------------------------------------


def write_big_mt940(path: Path, lines: int, per_statement: int = 1000) -> int:
    """A file of ``lines`` entries in statements of ``per_statement``, written as it is made."""
    day = dt.date(2026, 11, 2)
    balance = Decimal(10) ** 12
    with path.open("wb") as f:
        for number in range(lines // per_statement):
            out = [f"{{1:F01SANDBOXXXXXX0000000000}}{{2:O940SANDBOXXXXXXN}}{{4:\r\n:20:BENCH{number:08d}\r\n"
                   f":25:SN08SN0100152000048500003035\r\n:28C:{number + 1}/1\r\n"
                   f":60F:C{day:%y%m%d}XOF{balance:f},\r\n"]
            for i in range(per_statement):
                n = number * per_statement + i
                amount = 1000 + n % 9000
                balance -= amount
                out.append(f":61:{day:%y%m%d}{day:%m%d}D{amount},NTRFMOLAM{n:011d}//pay_{n:08d}\r\n"
                           f":86:/EREF/molam-bench-{n}/NAME/Beneficiary {n % 977}/REMI/payout {n}/\r\n")
            out.append(f":62F:C{day:%y%m%d}XOF{balance:f},\r\n-}}\r\n")
            f.write("".join(out).encode())
    return path.stat().st_size


def ingest_phase(args: argparse.Namespace) -> dict[str, Any]:
    """Child process: one poll of a source holding the big file; reports time and peak RSS."""
    import msgspec
    import psycopg
    import trio

    from connectors import Secret, SftpStatementConnector, decode_hook
    from connectors.sftp import Mt940SftpConfig
    from molamd import db
    from molamd.config import DatabaseSection
    from molamd.metrics import Metrics
    from molamd.statement_poller import StatementPoller
    from molamd.statements import StatementStore

    raw = {"kind": "mt940-sftp", "name": "bench", "bank_profile": "bench",
           "sftp": {"host": "127.0.0.1", "port": int(args.sftp_port), "username": "bank", "password": "env:X",
                    "known_hosts": args.known_hosts, "inbox": "/outgoing", "archive": "/outgoing/archive",
                    "error": "/outgoing/error", "stable_for": "0s", "max_file_size": 2 * 1024**3,
                    "chunk_size": 1024 * 1024, "spool_dir": args.work}}
    config = msgspec.convert(raw, Mt940SftpConfig, dec_hook=decode_hook)
    config = msgspec.structs.replace(config, sftp=msgspec.structs.replace(
        config.sftp, password=Secret("env:X", "sandbox")))
    section = msgspec.convert({"dsn": args.dsn, "statement_timeout": "10m"}, DatabaseSection, dec_hook=decode_hook)

    async def main() -> dict[str, Any]:
        metrics = Metrics()
        database = db.Database(section, metrics=metrics)
        async with trio.open_nursery() as nursery:
            await nursery.start(database.run)
            while not database.up:  # noqa: ASYNC110 - the flag belongs to the database service
                await trio.sleep(0.05)
            store = StatementStore(database, lambda: psycopg.connect(args.dsn, autocommit=True))
            poller = StatementPoller(config, SftpStatementConnector(config), store, metrics, csv_profile=None,
                                     profile_sources=["bench"])
            started = time.perf_counter()
            summary = await poller.poll_once()
            elapsed = time.perf_counter() - started
            await poller.teardown()
            database.request_stop()
        [taken] = summary.taken
        return {"seconds": elapsed, "lines": taken["lines"], "outcome": taken["outcome"], "peak_rss_mb": peak_rss_mb(),
                "download_seconds": taken["download_seconds"], "store_seconds": taken["store_seconds"]}

    return trio.run(main)


def copy_phase(args: argparse.Namespace) -> dict[str, Any]:
    """Child process: the same lines parsed into rows first (untimed), then a bare COPY of them (timed)."""
    import psycopg

    from molamd.statements import _COPY_LINES, _rows

    rows = []
    with open(args.file, "rb") as f:
        for number, statement in enumerate(iter_mt940(iter(lambda: f.read(1 << 20), b"")), start=1):
            rows.extend(_rows(0, number, statement))
    with psycopg.connect(args.dsn) as conn:
        raw_id = conn.execute(
            "INSERT INTO bank_statements_raw (source, remote_name, format, sha256, size_bytes, raw, status)"
            " VALUES ('bare', 'bare', 'mt940', %s, 0, '', 'parsed') RETURNING id", [os.urandom(32)]).fetchone()[0]
        rows = [(raw_id, *row[1:]) for row in rows]
        started = time.perf_counter()
        with conn.cursor().copy(_COPY_LINES) as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "lines": len(rows)}


def child(phase: str, **kwargs: Any) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--phase", phase]
    for key, value in kwargs.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"bench: {phase} phase failed:\n{result.stderr}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def bench_ingest(lines: int) -> dict[str, Any]:
    with scratch_cluster("molamd-bench-stmt-") as (work, cluster):
        size, ours, bare = ingest_side_by_side(lines, work, cluster)
    ours_rate = ours["lines"] / ours["seconds"]
    bare_rate = bare["lines"] / bare["seconds"]
    return {"file_mb": round(size / 1e6, 1), "lines": ours["lines"], "outcome": ours["outcome"],
            "ours_seconds": round(ours["seconds"], 2), "ours_lines_s": round(ours_rate),
            "bare_copy_seconds": round(bare["seconds"], 2), "bare_copy_lines_s": round(bare_rate),
            "ratio": round(ours_rate / bare_rate, 2), "peak_rss_mb": round(ours["peak_rss_mb"], 1),
            "download_seconds": ours["download_seconds"], "store_seconds": ours["store_seconds"]}


def ingest_side_by_side(lines: int, work: Path, cluster: Cluster) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """The file's size, then our poll and the bare COPY, each in a child process with a database of its own."""
    import psycopg

    from molamd.db import migrate

    for name in ("ours", "bare"):
        cluster.recreate_database(name)
        with psycopg.connect(cluster.dsn(name)) as conn:
            migrate(conn)
    size = write_big_mt940(work / "big.sta", lines)
    root, state = work / "sftp", work / "sftp-state"
    sftp = subprocess.Popen([str(BIN / "python"), str(ROOT / "scripts" / "sandbox_sftp.py"), "--root", str(root),
                             "--state", str(state), "--password", "sandbox"], stdout=subprocess.PIPE, text=True)
    try:
        assert sftp.stdout is not None
        port = int(sftp.stdout.readline().strip().rsplit(":", 1)[1])
        (root / "outgoing" / "big.sta").hardlink_to(work / "big.sta")
        ours = child("ingest", dsn=cluster.dsn("ours"), sftp_port=port, known_hosts=state / "known_hosts",
                     work=work)
        bare = child("copy", dsn=cluster.dsn("bare"), file=work / "big.sta")
    finally:
        sftp.terminate()
        sftp.wait(10)
    return size, ours, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-mb", type=float, default=50.0)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--only", choices=("parse", "ingest"))
    parser.add_argument("--phase", choices=("ingest", "copy"), help=argparse.SUPPRESS)
    for name in ("dsn", "sftp-port", "known-hosts", "work", "file"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "ingest":
        print(json.dumps(ingest_phase(args)))
        return
    if args.phase == "copy":
        print(json.dumps(copy_phase(args)))
        return
    if args.only in (None, "parse"):
        parse = bench_parse(args.corpus_mb)
        print(f"MT940 parse, {parse['corpus_mb']} MB ({parse['entries']} entries) from the "
              f"{parse['files_both_accept']} corpus files both parsers accept:")
        print(f"  ours {parse['ours_mb_s']} MB/s, mt-940 {parse['mt940_lib_mb_s']} MB/s: {parse['speedup']}x "
              f"(target >= 5x)")
        print(f"  ours streaming in 1 MB chunks, records let go (as ingestion reads): {parse['ours_stream_mb_s']} MB/s")
        print(f"  numbers equal on {parse['files_equal']} of {parse['files_both_accept']} files")
        for name, note in parse["differences"].items():
            print(f"    {name}: {note}")
    if args.only in (None, "ingest"):
        ing = bench_ingest(args.lines)
        print(f"Ingestion of a {ing['file_mb']} MB MT940 file of {ing['lines']} lines over SFTP ({ing['outcome']}):")
        print(f"  ours {ing['ours_lines_s']} lines/s ({ing['ours_seconds']} s, download to commit), bare COPY of the"
              f" parsed rows {ing['bare_copy_lines_s']} lines/s ({ing['bare_copy_seconds']} s): ratio {ing['ratio']}"
              f" (target >= 0.5)")
        print(f"  of which SFTP download and sha256 {ing['download_seconds']} s, one transaction (raw bytes, parse, "
              f"COPY of the lines, reconciliation, commit) {ing['store_seconds']} s")
        print(f"  peak RSS while ingesting: {ing['peak_rss_mb']} MB (target <= 300)")


if __name__ == "__main__":
    main()
