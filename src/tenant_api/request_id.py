"""Request ids: one per request, in the ``X-Request-ID`` response header of every
response, problem bodies, log lines, usage records and audit rows.

A client's own ``X-Request-ID`` is used when it is well formed (1 to 64 characters of
letters, digits and ``.-_:``), so a caller can follow its id through our logs; anything
else is ignored and the API makes one. Ids from clients are not unique: an auditor
matching audit rows by request id also compares their token.

The id is fixed the first time anything asks: the edge middleware (edge.py) at the
start of every routed request, or (``ensure_request_id``), for answers given before any
middleware runs (routing 404/405), the problem response itself. ``add_request_id_header``
(an app ``before_send`` hook, so it sees every response, the credential middleware's 401
included) puts it in the header.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from typing import Any

from litestar.types import Message, Scope

HEADER = "X-Request-ID"
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The id of the request being served, for log lines (tenant_api.ops.logs)."""
_HEADER_KEY = b"x-request-id"
_VALID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


def new_request_id() -> str:
    """32 random hexadecimal digits (as many random bits as a UUID4 and then some)."""
    return os.urandom(16).hex()


def valid_client_id(value: bytes) -> str | None:
    """A client's X-Request-ID, if well formed."""
    return value.decode("ascii") if _VALID.fullmatch(value) else None


def _from_client(scope: Scope | dict[str, Any]) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == _HEADER_KEY:
            return valid_client_id(value)
    return None


def ensure_request_id(scope: Scope | dict[str, Any]) -> str:
    """The request's id, made (or taken from a valid client header) on first use."""
    state = scope.setdefault("state", {})
    request_id: str | None = state.get("request_id")
    if request_id is None:
        request_id = _from_client(scope) or new_request_id()
        state["request_id"] = request_id
    return request_id


ID_SENT = "request_id_sent"
"""Set in the request's state by the edge middleware once its response carries the id."""


async def add_request_id_header(message: Message, scope: Scope) -> None:
    """before_send hook: every HTTP response (and WebSocket accept) carries the id. A
    routed request's response got it from the edge middleware already; answers made
    outside it (routing's 404/405, a 401 or 429 raised by the edge) get it here."""
    if message["type"] not in ("http.response.start", "websocket.accept") or scope.get("state", {}).get(ID_SENT):
        return
    headers = list(message.get("headers") or [])
    if not any(name.lower() == _HEADER_KEY for name, _ in headers):
        headers.append((_HEADER_KEY, ensure_request_id(scope).encode()))
        message["headers"] = headers
