"""Structured JSON logs with actor and trace id, and secrets that never reach the output."""

from __future__ import annotations

import io
import json
import logging

from connectors import Secret
from molamd import logs


def test_json_lines_with_context_and_redaction() -> None:
    stream = io.StringIO()
    logs.configure("debug", stream)
    logger = logging.getLogger("molamd.test")
    secret = Secret("env:X").with_value("hunter2-secret")
    logs.redactor.set_values(["hunter2-secret", "abc"])
    try:
        with logs.bound(actor="bank-a", trace_id="t-123"):
            logs.log(logger, logging.INFO, "sending", secret=secret, amount="1500")
            logger.warning("token hunter2-secret leaked into a message")
        logs.log(logger, logging.DEBUG, "outside", actor="explicit")
        try:
            raise ValueError("bad hunter2-secret")
        except ValueError:
            logger.exception("failed")
        logs.set_level("warning")
        logs.log(logger, logging.INFO, "filtered")
    finally:
        logs.redactor.set_values([])
        logs.configure("info")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == [
        "sending", "token *** leaked into a message", "outside", "failed"]
    first = lines[0]
    assert first["level"] == "info" and first["actor"] == "bank-a" and first["trace_id"] == "t-123"
    assert first["fields"] == {"secret": "env:X (***)", "amount": "1500"}
    assert first["ts"].endswith("+00:00")
    assert lines[2]["actor"] == "explicit" and lines[2]["trace_id"] is None
    assert "hunter2" not in stream.getvalue() and "ValueError" in lines[3]["error"]


def test_secrets_that_json_escapes_would_hide_are_redacted() -> None:
    """A secret with a quote, a backslash, a newline or an ESC reads differently once JSON-escaped."""
    secrets = ['pa"ss"word-1', "back\\slash\\key", "line\nbreak-key", "esc\x1bape-key", "tab\tand\x7fdel"]
    stream = io.StringIO()
    logs.configure("debug", stream)
    logger = logging.getLogger("molamd.test")
    logs.redactor.set_values(secrets)
    try:
        for value in secrets:
            logs.log(logger, logging.INFO, f"in the message {value}", field=f"in a field {value}",
                     nested={"list": [value], value: "as a key"}, obj=ValueError(value))
    finally:
        logs.redactor.set_values([])
        logs.configure("info")
    text = stream.getvalue()
    for value in secrets:
        assert json.dumps(value)[1:-1] not in text, value  # not even in its escaped form
    for line in text.splitlines():
        entry = json.loads(line)
        assert entry["message"] == "in the message ***" and entry["fields"]["field"] == "in a field ***"
        assert entry["fields"]["nested"] == {"list": ["***"], "***": "as a key"}
        assert entry["fields"]["obj"] == "ValueError('***')"
