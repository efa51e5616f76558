"""Every number in the config has finite bounds: NaN, infinity and absurd sizes are refused with their path.

One walk over the decoded config checks each int, float and duration against the bounds of its key (by the
key's name, the same wherever it appears), or the defaults: ints and floats from 0 to a large ceiling, durations
above zero and at most a year. A rule that spans keys (open_duration_max >= open_duration) lives in ``_load``.
"""

from __future__ import annotations

import math
from typing import Any, Final, NamedTuple

import msgspec

from connectors import Duration, encode_hook

from ._errors import ConfigProblem


class Bounds(NamedTuple):
    low: float
    high: float
    low_open: bool = False  # the low end itself is not allowed


_INT: Final = Bounds(0, 10**12)
_FLOAT: Final = Bounds(0, 1e9)
_MAX_SECONDS: Final = 366 * 86400.0

BOUNDS: Final[dict[str, Bounds]] = {
    "rate": Bounds(0, 1_000_000, low_open=True),
    "burst": Bounds(1, 1_000_000),
    "concurrency": Bounds(1, 100_000),
    "priority": Bounds(-1_000_000, 1_000_000),
    "mailbox_size": Bounds(1, 1_000_000),
    "port": Bounds(1, 65535),
    "failure_rate": Bounds(0, 1, low_open=True),
    "slow_call_rate": Bounds(0, 1, low_open=True),
    "open_duration_multiplier": Bounds(1, 100),
    "window": Bounds(1, 100_000),
    "minimum_calls": Bounds(1, 100_000),
    "half_open_calls": Bounds(1, 10_000),
    "max_connections": Bounds(1, 10_000),
    "max_response_size": Bounds(1024, 1024**3),
    "max_file_size": Bounds(1, 64 * 1024**3),
    "chunk_size": Bounds(1024, 64 * 1024**2),
    "max_listing": Bounds(1, 1_000_000),
    "max_attempts": Bounds(1, 1000),
    "batch_size": Bounds(1, 100_000),
    "max_in_flight": Bounds(1, 100_000),
    "pool_min_size": Bounds(1, 1000),
    "pool_max_size": Bounds(1, 1000),
    "max_restarts": Bounds(0, 10_000),
    "max_clients": Bounds(1, 10_000),
    "max_clients_per_uid": Bounds(1, 10_000),
    "reserved_clients": Bounds(0, 10_000),
    "token_renew_fraction": Bounds(0, 0.95, low_open=True),
    "retention_months": Bounds(12, 1200),  # less than a year of audit trail is never what a regulator asks
    "partitions_ahead": Bounds(1, 24),
    "sample_ratio": Bounds(0, 1),
}

# Durations that may be zero: waiting not at all is a choice (no settle time, no grace, no pause).
ZERO_DURATION_OK: Final = frozenset({
    "stable_for", "max_wait", "shutdown_grace", "release_delay", "first_status_check", "stable_after", "latency",
    "rotation_check",
})


def check_numbers(config: msgspec.Struct) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    _walk(config, "$", "", problems, {})
    return problems


# Equal frozen tables (the default [connectors.limits] of a thousand connectors) are checked once: their
# problems, relative to the table, by value.
_Memo = dict[Any, list[tuple[str, str]]]
_UNHASHABLE: set[type] = set()  # Struct types with a list field: never hashed again
# Connector entries by their encoded form, across loads: a reload re-checks only the entries that changed.
_ENTRIES: _Memo = {}


def _memo_key(value: msgspec.Struct) -> Any:
    """The struct itself when it hashes (equal tables share one entry), else None."""
    if type(value) in _UNHASHABLE:
        return None
    try:
        hash(value)
    except TypeError:
        _UNHASHABLE.add(type(value))
        return None
    return value


_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {}


def _fields(struct_type: Any) -> tuple[tuple[str, str], ...]:
    """(attribute, TOML key) of a Struct type; cached, as a config holds thousands of the same few types."""
    found = _FIELDS.get(struct_type)
    if found is None:
        found = tuple(zip(struct_type.__struct_fields__, struct_type.__struct_encode_fields__, strict=True))
        _FIELDS[struct_type] = found
    return found


def _walk(value: Any, path: str, key: str, problems: list[ConfigProblem], memo: _Memo) -> None:
    """Check ``value`` (at ``path``, under TOML key ``key``); path strings are built only for containers and
    problems, as a 1,000-connector config has some 60,000 leaves."""
    if isinstance(value, msgspec.Struct):
        table, memo_key = memo, _memo_key(value)
        if memo_key is None:  # a table with lists (a connector entry): remembered across loads by its encoding
            table, memo_key = _ENTRIES, (type(value), msgspec.json.encode(value, enc_hook=encode_hook))
        known = table.get(memo_key)
        if known is not None:
            problems.extend(ConfigProblem(path + suffix, problem) for suffix, problem in known)
            return
        mine: list[ConfigProblem] = []
        _walk_struct(value, path, mine, memo)
        if len(_ENTRIES) > 100_000:
            _ENTRIES.clear()
        table[memo_key] = [(p.path[len(path):], p.message) for p in mine]
        problems.extend(mine)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]", key, problems, memo)
    elif isinstance(value, dict):
        for name, item in value.items():
            _walk(item, f"{path}.{name}", key, problems, memo)
    elif isinstance(value, Duration | int | float) and not isinstance(value, bool):
        problem = _leaf(value, key)
        if problem:
            problems.append(ConfigProblem(path, problem))


def _walk_struct(value: msgspec.Struct, path: str, problems: list[ConfigProblem], memo: _Memo) -> None:
    for name, encoded in _fields(type(value)):
        item = getattr(value, name)
        if isinstance(item, str | bool) or item is None:
            continue
        if isinstance(item, Duration | int | float):
            problem = _leaf(item, encoded)
            if problem:
                problems.append(ConfigProblem(f"{path}.{encoded}", problem))
        elif isinstance(item, msgspec.Struct | list | tuple | dict):
            _walk(item, f"{path}.{encoded}", encoded, problems, memo)


def _leaf(value: Duration | float, key: str) -> str | None:
    if isinstance(value, Duration):
        return _duration(value, key)
    return _number(value, BOUNDS.get(key, _INT if isinstance(value, int) else _FLOAT))


def _number(value: float, bounds: Bounds) -> str | None:
    low, high, low_open = bounds
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number; give one {_range(bounds)}"
    if value > high or value < low or (low_open and value == low):
        return f"{_plain(value)} is out of bounds; give a number {_range(bounds)}"
    return None


def _range(bounds: Bounds) -> str:
    low, high, low_open = bounds
    return f"{'above' if low_open else 'from'} {_plain(low)} {'up ' if low_open else ''}to {_plain(high)}"


def _plain(x: float) -> str:
    if isinstance(x, int):
        if abs(x) >= 10**24:  # no bound is that big; float(x) would overflow past 1e308, and who reads 400 digits
            return f"{'-' if x < 0 else ''}an integer of {len(str(abs(x))):,} digits"
        return f"{x:,}".replace(",", "_")
    return f"{int(x):,}".replace(",", "_") if x.is_integer() else f"{x:g}"


def _duration(value: Duration, key: str) -> str | None:
    seconds = value.seconds
    if not math.isfinite(seconds) or seconds > _MAX_SECONDS:
        return f"{_short(value.text)} is longer than a year"
    if seconds <= 0 and key not in ZERO_DURATION_OK:
        return f"{_short(value.text)} must be longer than zero"
    return None


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text):,} characters)"
