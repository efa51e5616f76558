"""``[tracing]``: OpenTelemetry for the daemon. With ``otlp_endpoint`` set, spans of every payout attempt (claim,
route, send, record) and of every payment file (build, sign, upload, report) go over OTLP/HTTP to a collector,
under the trace id the banks and the audit rows already carry; unset (the default), nothing is traced and the
span calls in ``actors.tracing`` return at once.

Sampling is by trace id (``sample_ratio``), so a trace that several hosts or restarts add to is kept or dropped
whole. Spans name slices, files, connectors and outcomes, never a beneficiary, an account or an amount.
"""

from __future__ import annotations

import logging

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from actors import tracing

from . import __version__
from .config import Config
from .logs import log

logger = logging.getLogger("molamd.tracing")
EXPORT_TIMEOUT = 10.0  # seconds for one OTLP request; the batch processor drops what it cannot send


def provider(config: Config, processor: SpanProcessor) -> TracerProvider:
    """A tracer provider for this host, sending each finished span to ``processor``."""
    section = config.tracing
    made = TracerProvider(
        resource=Resource.create({"service.name": section.service_name, "service.version": __version__,
                                  "host.name": config.daemon.host_id}),
        sampler=TraceIdRatioBased(section.sample_ratio))
    made.add_span_processor(processor)
    return made


def configure(config: Config) -> TracerProvider | None:
    """Start tracing as ``[tracing]`` says; the provider to shut down at exit, or None when not traced."""
    endpoint = config.tracing.otlp_endpoint
    if not endpoint:
        tracing.use(None)
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    made = provider(config, BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT)))
    tracing.use(made.get_tracer("molamd", __version__))
    log(logger, logging.INFO, "tracing to an OTLP collector", endpoint=endpoint,
        sample_ratio=config.tracing.sample_ratio)
    return made


def shutdown(made: TracerProvider | None) -> None:
    """Flush what is buffered (bounded by the exporter's timeout) and stop tracing."""
    tracing.use(None)
    if made is not None:
        made.shutdown()
