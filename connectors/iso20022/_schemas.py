"""The official XSDs (copied from python-sepaxml, MIT, LICENSE beside them), loaded once each."""

from __future__ import annotations

import functools
from pathlib import Path

from lxml import etree

SCHEMAS = Path(__file__).resolve().parent / "schemas"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


@functools.lru_cache(maxsize=8)
def schema(name: str) -> etree.XMLSchema:
    """``name`` like "pain.001.001.09"; KeyError-free: a missing file is a FileNotFoundError naming it."""
    return etree.XMLSchema(etree.parse(str(SCHEMAS / f"{name}.xsd"), _PARSER))


def validate(data: bytes, name: str) -> list[str]:
    """The XSD's complaints about ``data`` (line and message), empty when it is valid."""
    xsd = schema(name)
    document = etree.fromstring(data, _PARSER)
    if xsd.validate(document):
        return []
    return [f"line {e.line}: {e.message}" for e in xsd.error_log]  # type: ignore[attr-defined]
