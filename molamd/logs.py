"""Structured logs: one JSON object per line on stdout, for journald and log shippers.

Each line has ``ts`` (UTC, RFC 3339), ``level``, ``logger``, ``actor``, ``trace_id``, ``message`` and
``fields``. The actor and trace id come from context variables, which trio copies into every task it spawns.
Resolved secrets never reach the output: Secret objects encode as ``***`` and every known secret value is
replaced in each string of the entry *before* it is encoded (a secret holding ``"``, ``\\`` or a control
character looks different once JSON-escaped, and would slip past a search of the finished line).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import msgspec

from connectors import REDACTED, encode_hook

actor_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("molamd_actor", default=None)
trace_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("molamd_trace", default=None)

_MIN_SECRET_LENGTH = 4
_LEASED_KEPT = 16


class Redactor:
    """Replaces known secret values in text. Values shorter than 4 characters are not tracked."""

    def __init__(self) -> None:
        self._values: tuple[str, ...] = ()
        self._config: list[str] = []
        self._leased: list[str] = []  # secrets that are not in the config (leased database passwords): the last few

    def set_values(self, values: Iterable[str]) -> None:
        """The config's secret values (replacing the previous config's)."""
        self._config = list(values)
        self._update()

    def add_values(self, values: Iterable[str]) -> None:
        """Secrets obtained at run time; the last ``_LEASED_KEPT`` are kept whatever the config says."""
        self._leased = (self._leased + list(values))[-_LEASED_KEPT:]
        self._update()

    def _update(self) -> None:
        # Each value as written, and as repr() and JSON escape it (an exception's repr, a nested dump).
        unique = {form for v in (*self._config, *self._leased) if len(v) >= _MIN_SECRET_LENGTH
                  for form in (v, repr(v)[1:-1], json.dumps(v)[1:-1])}
        self._values = tuple(sorted(unique, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text


redactor = Redactor()


def _encode_fallback(obj: Any) -> Any:
    try:
        return encode_hook(obj)
    except NotImplementedError:
        return redactor(repr(obj))


def _scrub(value: Any, depth: int = 0) -> Any:
    """``value`` with every known secret replaced in its strings (keys included), before JSON escaping."""
    if isinstance(value, str):
        return redactor(value)
    if depth > 32:
        return redactor(repr(value))
    if isinstance(value, dict):
        return {_scrub(k, depth + 1) if isinstance(k, str) else k: _scrub(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v, depth + 1) for v in value]
    return value


_encoder = msgspec.json.Encoder(enc_hook=_encode_fallback)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "actor": getattr(record, "actor", None) or actor_var.get(),
            "trace_id": getattr(record, "trace_id", None) or trace_var.get(),
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry["fields"] = fields
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return _encoder.encode(_scrub(entry)).decode()


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every molamd log line as JSON to ``stream`` (stdout by default)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)


# Libraries that narrate every request at INFO/DEBUG: our own audit trail and metrics already cover it.
QUIET_LOGGERS = ("httpx", "httpcore", "hpack")


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def log(logger: logging.Logger, level: int, message: str, *, actor: str | None = None, **fields: Any) -> None:
    """Log with structured fields: ``log(logger, logging.INFO, "started", connector=name)``."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields, "actor": actor})


@contextmanager
def bound(*, actor: str | None = None, trace_id: str | None = None) -> Iterator[None]:
    """Set the actor and/or trace id for the code inside (and the tasks it spawns)."""
    tokens: list[tuple[contextvars.ContextVar[str | None], contextvars.Token[str | None]]] = []
    if actor is not None:
        tokens.append((actor_var, actor_var.set(actor)))
    if trace_id is not None:
        tokens.append((trace_var, trace_var.set(trace_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
