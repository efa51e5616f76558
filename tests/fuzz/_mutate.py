"""A byte-level mutator over real files, as a hypothesis strategy.

Random text almost never gets past a parser's first check; a real bank file with a few bytes changed reaches
every branch behind it. So each input is a seed file (from ``tests/fixtures``) with up to a dozen mutations:
bytes flipped, inserted, deleted, duplicated or repeated, a run of digits replaced by a hostile number, a token of
the format inserted, a piece of another seed spliced in. Hypothesis draws every choice, so a failure shrinks to
the seed and the few mutations that matter.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

# What breaks parsers of numbers, text and structure, whatever the format: huge and tiny exponents, long digit
# runs, digits of other scripts, separators, control characters, lone surrogates (as UTF-8 would carry them
# if it could, and as JSON escapes), byte order marks.
HOSTILE: tuple[bytes, ...] = (
    b"1E9999999", b"1E-999999999", b"1e+2", b"-0", b"+1", b"1_000", b"0x10", b"NaN", b"Infinity", b"-Infinity",
    b"9" * 40, b"9" * 5000, b"0." + b"0" * 60 + b"1", b"1" + b"0" * 30, b"1e400", b"-1e400", b"1.5", b"1,5",
    "\u0661\u0662\u0663".encode(), "\u00b9\u00b2".encode(), "\uff11".encode(), b"\t", b"\x0c", b"\x0b", b"\x00",
    b"\r", b"\r\n", b"\n\n", b"\x1a", b"\x85", b"\xc2\x85", "\u2028".encode(), b"\xef\xbb\xbf", b"\xff\xfe",
    b"\xed\xa0\x80", b"\\ud800", b"\\udfff\\ud800", b'"', b"'", b"\\", b"[" * 200, b"{" * 200, b"]", b"}",
    b"&amp;", b"&#0;", b"<!DOCTYPE x>", b"<!ENTITY e 'x'>", b"<![CDATA[", b"]]>", b"<?xml version='1.0'?>",
    b"\xc3", b"\x80", b"%s", b"{0}", b"../", b"null", b"true", b"[]", b"{}", b" " * 100,
)
INTERESTING_BYTES = b"\x00\t\n\x0b\x0c\r \"'+,-./0123456789:;<=>?[\\]_{}\x7f\x80\xc0\xff"


def _digit_run(data: bytearray, at: int) -> tuple[int, int] | None:
    """The run of ASCII digits at or after ``at`` (start, end), if any within 64 bytes."""
    limit = min(len(data), at + 64)
    start = at
    while start < limit and not 0x30 <= data[start] <= 0x39:
        start += 1
    if start >= limit:
        return None
    end = start
    while end < len(data) and 0x30 <= data[end] <= 0x39:
        end += 1
    return start, end


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], tokens: Sequence[bytes] = (), *, max_size: int = 1 << 16,
            max_mutations: int = 12) -> bytes:
    """A seed with 0 to ``max_mutations`` mutations, at most ``max_size`` bytes."""
    data = bytearray(draw(st.sampled_from(seeds)))
    dictionary = (*tokens, *HOSTILE)
    for _ in range(draw(st.integers(0, max_mutations))):
        size = len(data)
        at = draw(st.integers(0, size))
        op = draw(st.integers(0, 10))
        if op == 0 and size:  # one byte, any value
            data[min(at, size - 1)] = draw(st.integers(0, 255))
        elif op == 1 and size:  # one byte, a structural one
            data[min(at, size - 1)] = draw(st.sampled_from(INTERESTING_BYTES))
        elif op == 2:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op in (3, 4):  # tokens of the format and hostile values: the likeliest way past a check
            data[at:at] = draw(st.sampled_from(dictionary))
        elif op == 5 and size:
            end = min(size, at + draw(st.integers(1, 256)))
            del data[at:end]
        elif op == 6 and size:  # a piece of the file again, elsewhere
            end = min(size, at + draw(st.integers(1, 512)))
            where = draw(st.integers(0, size))
            data[where:where] = data[at:end]
        elif op == 7 and size:  # a piece many times over (deep nesting, long lines, many entries)
            end = min(size, at + draw(st.integers(1, 64)))
            data[at:at] = data[at:end] * draw(st.integers(2, 1000))
        elif op == 8:  # a piece of another seed (a tag of one bank's file in another's)
            other = draw(st.sampled_from(seeds))
            if other:
                start = draw(st.integers(0, len(other) - 1))
                data[at:at] = other[start:start + draw(st.integers(1, 512))]
        elif op == 9:
            run = _digit_run(data, at)
            if run is not None:
                data[run[0]:run[1]] = draw(st.sampled_from(HOSTILE[:22]))
        elif op == 10:
            del data[at:]
        if len(data) > max_size:
            del data[max_size:]
    return bytes(data)
