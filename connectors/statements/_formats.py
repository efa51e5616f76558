"""Reading a file in any of the formats: the format name picks the parser."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ._camt import DEFAULT_MAX_BYTES, parse_camt
from ._csv import MOLAMD_PROFILE, CsvProfile, parse_csv
from ._model import Statement
from ._mt940 import iter_mt940, parse_mt940

FORMATS = ("mt940", "mt942", "csv", "camt053")  # mt942: SWIFT files without a block 2 header are interim


def iter_statements(
    fmt: str, chunks: Iterable[bytes], *, csv_profile: CsvProfile | None = None, check: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[Statement]:
    """Statements of a file given in byte pieces; MT940 streams, the others read the whole file first."""
    if fmt in ("mt940", "mt942"):
        return iter_mt940(chunks, check=check, kind=fmt)
    data = b"".join(chunks)
    return iter(parse_statements(fmt, data, csv_profile=csv_profile, check=check, max_bytes=max_bytes))


def parse_statements(
    fmt: str, data: bytes, *, csv_profile: CsvProfile | None = None, check: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Statement]:
    """Every statement of a file in ``fmt`` (mt940, mt942, csv or camt053)."""
    if fmt in ("mt940", "mt942"):
        return parse_mt940(data, check=check, kind=fmt)
    if fmt == "csv":
        return parse_csv(data, csv_profile or MOLAMD_PROFILE, check=check)
    if fmt == "camt053":
        return parse_camt(data, check=check, max_bytes=max_bytes)
    raise ValueError(f"unknown statement format {fmt!r} (expected one of {', '.join(FORMATS)})")


def guess_format(name: str, data: bytes) -> str:
    """mt940, camt053 or csv, from the content first and the file name second."""
    head = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        return "camt053"
    if b":20:" in head or head.startswith(b"{1:"):
        return "mt940"
    if name.lower().endswith((".xml", ".camt")):
        return "camt053"
    if name.lower().endswith((".sta", ".mt940", ".940", ".mta")):
        return "mt940"
    return "csv"
