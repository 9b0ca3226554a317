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
from typing import Any

from tenant_api.request_id import REQUEST_ID
from tenant_api.settings import ObservabilitySettings

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            out["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if v is not None})
        for key, value in vars(record).items():  # extra={...} given by other libraries
            if key not in _STANDARD and key not in out and key != "fields" and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


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
