"""Structured logs: one JSON object per line on stderr (the standard library's logging).

Every line has ``ts``, ``level``, ``logger``, ``msg``, and ``request_id`` when it was
written while serving a request; access lines (logger ``tenant_api.access``) add
``method``, ``route`` (the template, never the raw path or its query string),
``status``, ``duration_ms``, ``credential`` (a token's display prefix or ``session``,
never a secret), ``client`` and ``organization_id``. Exceptions come as one ``exc``
string. ``LOG_FORMAT=text`` gives classic lines instead (``make run``'s default).

uvicorn's own loggers go through the same handler (``logging_config`` is handed to
uvicorn as its log_config); its access log is off, ours replaces it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config
import math
from typing import Any

import msgspec

from tenant_api.request_id import REQUEST_ID
from tenant_api.settings import ObservabilitySettings

ACCESS_LOGGER = "tenant_api.access"
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _text(value: Any) -> str:
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record. Every request writes one (its access line): built
    with msgspec, the record's own attributes told from extras by one set difference."""

    _second = -1
    _second_text = ""

    def _timestamp(self, created: float) -> str:
        """ISO 8601 in UTC to the millisecond (2026-12-01T18:00:00.123+00:00), the
        seconds' part formatted once per second: every request writes a line."""
        fraction, whole = math.modf(created)
        micros = round(fraction * 1e6)  # as datetime.fromtimestamp rounds it
        second = int(whole)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            self._second_text = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{micros // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            out["request_id"] = request_id
        attributes = vars(record)
        fields = attributes.get("fields")
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if v is not None})
        if record.name != ACCESS_LOGGER:  # access lines carry their fields, never extras
            for key in attributes.keys() - _STANDARD:  # extra={...} given by other libraries
                if key not in out and key != "fields" and not key.startswith("_"):
                    out[key] = attributes[key]
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        try:
            return _ENCODER.encode(out).decode()
        except (TypeError, ValueError, OverflowError):  # something msgspec will not take as it is
            return json.dumps(out, default=str, ensure_ascii=False)


_ENCODER = msgspec.json.Encoder(enc_hook=_text)


class TextFormatter(logging.Formatter):
    """LOG_FORMAT=text: the access fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k not in ("method",))
        return line


def logging_config(settings: ObservabilitySettings) -> dict[str, Any]:
    """A dictConfig for the process (and for uvicorn's log_config)."""
    formatter: dict[str, Any]
    if settings.log_format == "text":
        formatter = {"()": "tenant_api.ops.logs.TextFormatter",
                     "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    else:
        formatter = {"()": "tenant_api.ops.logs.JsonFormatter"}
    level = settings.log_level
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "tenant_api": {"level": level},
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "httpx": {"level": "WARNING"},
        },
    }


def configure(settings: ObservabilitySettings) -> dict[str, Any]:
    config = logging_config(settings)
    logging.config.dictConfig(config)
    return config
