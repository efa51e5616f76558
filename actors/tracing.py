"""Spans for OpenTelemetry under the trace ids molamd already has.

A payout attempt's trace id is the one the bank sees (``X-Trace-Id``) and the logs and audit rows carry; a
payment file's is derived from its MsgId, so its build, signature, upload and the status report that comes back
hours later (to another host, maybe) land in one trace with nothing stored. Spans are children of a parent made
from that id (a remote parent: the trace's root is the id itself), so components that only pass the id along
(the dispatcher, a connector actor, a file batcher) add to the same trace without handing context around.

Nothing is traced until the daemon installs a tracer (:func:`use`, from ``[tracing]``); until then every call
here returns at once. Spans carry wall-clock times (``time.time_ns``), whatever clock the caller runs on.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

_tracer: trace.Tracer | None = None

Attributes = dict[str, Any]


def use(tracer: trace.Tracer | None) -> None:
    """Trace from now on with ``tracer`` (None: stop tracing)."""
    global _tracer  # noqa: PLW0603 - the process's one tracer, set once at start
    _tracer = tracer


def enabled() -> bool:
    return _tracer is not None


def file_trace_id(msg_id: str) -> str:
    """The trace id of a payment file: 128 bits of SHA-256 of its MsgId (the same on every host)."""
    return hashlib.sha256(b"molamd payment file " + msg_id.encode()).hexdigest()[:32]


def _parent(trace_id: str) -> Any:
    try:
        tid = int(trace_id, 16) if len(trace_id) == 32 else -1
    except ValueError:
        tid = -1
    if tid < 0:  # not 128 bits of hex (a fixed id like "health"): a stable id made from it
        tid = int(hashlib.sha256(trace_id.encode()).hexdigest()[:32], 16)
    root = SpanContext(trace_id=tid or 1, span_id=(tid >> 64) or 1, is_remote=True,
                       trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(root))


def _clean(attributes: Attributes) -> Attributes:
    return {k: v for k, v in attributes.items() if v is not None}


@contextlib.contextmanager
def span(trace_id: str | None, name: str, **attributes: Any) -> Iterator[trace.Span | None]:
    """A span around the block, in trace ``trace_id``; an exception leaving the block marks it as an error."""
    tracer = _tracer
    if tracer is None or not trace_id:
        yield None
        return
    with tracer.start_as_current_span(name, context=_parent(trace_id), kind=SpanKind.INTERNAL,
                                      attributes=_clean(attributes), record_exception=True,
                                      set_status_on_exception=True) as current:
        yield current


def record(trace_id: str | None, name: str, start_ns: int, end_ns: int | None = None, **attributes: Any) -> None:
    """A span that already happened (a batch's claim, a file's build measured inside a database transaction)."""
    tracer = _tracer
    if tracer is None or not trace_id:
        return
    done = tracer.start_span(name, context=_parent(trace_id), start_time=start_ns, attributes=_clean(attributes))
    done.end(end_time=end_ns if end_ns is not None else time.time_ns())


def now_ns() -> int:
    return time.time_ns()
