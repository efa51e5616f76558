"""Typed values that appear in configuration: durations and secret references.

Both are decoded from TOML strings by ``decode_hook`` (pass it to msgspec as ``dec_hook``), so a bad value
is reported by msgspec with its path, like any other type error.
"""

from __future__ import annotations

import functools
import re
import time
from typing import Any, Final

SECRET_SCHEMES: Final = ("vault", "file", "credential", "env")
REDACTED: Final = "***"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@functools.lru_cache(maxsize=4096)
def _parse_duration(text: str) -> tuple[str, float]:
    """(normalised text, seconds); cached, as a config repeats the same few durations thousands of times."""
    cleaned = text.strip()
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(cleaned):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not cleaned or pos != len(cleaned):
        raise ValueError(f"invalid duration {text!r}: use a number and a unit (ms, s, m, h, d), e.g. '30s'")
    return cleaned, total


class Duration:
    """A span of time given in config as "250ms", "30s", "5m", "1h30m", "1d"."""

    __slots__ = ("seconds", "text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"a duration is a string like '30s', not {type(text).__name__}")
        self.text, self.seconds = _parse_duration(text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Duration) and other.seconds == self.seconds

    def __hash__(self) -> int:
        return hash(self.seconds)

    def __repr__(self) -> str:
        return f"Duration({self.text!r})"

    def __str__(self) -> str:
        return self.text


class Secret:
    """A reference to a secret (``vault:kv/path#field``, ``file:/path``, ``credential:NAME``, ``env:NAME``).

    The value, once resolved, lives only here and prints as ``***`` everywhere: repr, str, JSON.
    """

    __slots__ = ("_value", "created_at", "reference", "resolved_at", "version")

    def __init__(self, reference: str, value: str | None = None, *, version: int | None = None,
                 created_at: float | None = None) -> None:
        if not isinstance(reference, str):
            raise TypeError(f"a secret is a reference string, not {type(reference).__name__}")
        scheme, sep, rest = reference.partition(":")
        if not sep or scheme not in SECRET_SCHEMES or not rest:
            # Never echo it: a value pasted here by mistake is the secret itself.
            raise ValueError(
                f"not a secret reference (a value of {len(reference)} characters, not shown): expected one of "
                f"{', '.join(s + ':' for s in SECRET_SCHEMES)} followed by a name or path; secrets are references,"
                f" never literal values"
            )
        self.reference = reference
        self._value = value
        self.version = version  # the source's version of it (a KV v2 version), when the source has versions
        self.created_at = created_at  # Unix time that version was written, when the source says (KV v2 does)
        self.resolved_at = time.time() if value is not None else None

    @property
    def scheme(self) -> str:
        return self.reference.partition(":")[0]

    @property
    def target(self) -> str:
        return self.reference.partition(":")[2]

    @property
    def resolved(self) -> bool:
        return self._value is not None

    def with_value(self, value: str, version: int | None = None, created_at: float | None = None) -> Secret:
        return Secret(self.reference, value, version=version, created_at=created_at)

    def reveal(self) -> str:
        """The secret value; only for the code that hands it to a bank, database or HSM."""
        if self._value is None:
            raise LookupError(f"secret {self.reference} has not been resolved")
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.reference == self.reference and other._value == self._value

    def __hash__(self) -> int:
        return hash(self.reference)

    def __repr__(self) -> str:
        return f"Secret({self.reference!r}, {REDACTED})"

    def __str__(self) -> str:
        return REDACTED


def decode_hook(type_: type, obj: Any) -> Any:
    """msgspec ``dec_hook`` for the custom config types."""
    if type_ is Duration:
        return Duration(obj)
    if type_ is Secret:
        return Secret(obj)
    raise NotImplementedError(f"cannot decode {type_!r}")


def encode_hook(obj: Any) -> Any:
    """msgspec ``enc_hook``: durations as their text, secrets as their reference and never their value."""
    if isinstance(obj, Duration):
        return obj.text
    if isinstance(obj, Secret):
        return f"{obj.reference} ({REDACTED})"
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")
