"""Query strings never reach a log line.

Credentials belong in headers, but a client may still put one in a URL (an old robot
sending ``?access_token=``, an invite secret pasted into a link), and servers log URLs:
uvicorn's WebSocket handshake line, access logs, httpx's request lines. A log record
factory, installed once per process by create_app, replaces the query string of every
path or URL in every record's message and arguments with ``?[redacted]``, whichever
logger wrote it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"
# A path ("/v1/...") or URL followed by a query string, up to whitespace or a quote.
_QUERY = re.compile(r"(/[^\s?#\"']*)\?[^\s\"'#]+")


def redact(text: str) -> str:
    return _QUERY.sub(rf"\1?{REDACTED}", text) if "?" in text else text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (int, float, bytes)):
        return value
    text = str(value)  # a URL object (httpx.URL, yarl.URL): redacted as its text
    redacted = redact(text)
    return value if redacted == text else redacted


class _Redacting:
    """Wraps the previous record factory; marked so a second install is a no-op."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.previous(*args, **kwargs)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_value(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_value(v) for k, v in record.args.items()}
        return record


def install() -> None:
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _Redacting):
        logging.setLogRecordFactory(_Redacting(factory))
