"""The Prometheus text format, rendered faster than prometheus_client's ``generate_latest`` for large scrapes.

A host with a thousand connectors has some 20,000 series; ``generate_latest`` formats and re-validates every
label of every sample on every scrape (about 4 us a series here). This encoder formats a sample's name and
labels once and keeps the result, keyed by the sample's name and label values, so a scrape formats only the
values. The samples themselves still come from the registry's collectors, and the bytes are the same as
``generate_latest``'s (a test compares them); anything this encoder was not written for (a name that needs
escaping, OpenMetrics-only samples) is handed to ``generate_latest`` whole. OpenMetrics scrapes use the library.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from prometheus_client import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_go_float: Callable[[float], str] = floatToGoString  # the library's number format (untyped there)

_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_SUFFIX = {"counter": "_total", "info": "_info"}
_LEGACY_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")
_CACHE_LIMIT = 500_000  # label strings kept; past it the cache starts again (series churn, reloads)


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


class TextEncoder:
    """``encoder(registry) -> bytes`` in the text format 0.0.4, with the sample heads cached between scrapes."""

    def __init__(self) -> None:
        self._heads: dict[tuple[str, ...], str] = {}

    def __call__(self, registry: Collector) -> bytes:
        heads = self._heads
        if len(heads) > _CACHE_LIMIT:
            heads.clear()
        out: list[str] = []
        append = out.append
        for metric in registry.collect():
            name = metric.name
            if not _LEGACY_NAME.match(name):
                return generate_latest(registry)
            exposed = name + _SUFFIX.get(metric.type, "")
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            append(f"# HELP {exposed} {doc}\n# TYPE {exposed} {_TYPES.get(metric.type, metric.type)}\n")
            for sample in metric.samples:
                if sample.name[len(name):] in _OPENMETRICS_ONLY:
                    return generate_latest(registry)
                labels = sample.labels
                if labels:
                    key = (sample.name, *labels.keys(), *labels.values())
                    head = heads.get(key)
                    if head is None:
                        head = sample.name + "{" + ",".join(
                            f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"
                        heads[key] = head
                else:
                    head = sample.name
                if sample.timestamp is None:
                    append(f"{head} {_go_float(sample.value)}\n")
                else:
                    append(f"{head} {_go_float(sample.value)} {int(float(sample.timestamp) * 1000):d}\n")
        return "".join(out).encode("utf-8")

