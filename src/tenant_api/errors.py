"""One error format: RFC 9457 problem details, for every error the API returns.

Handlers and services raise the Litestar HTTP exceptions (or ProblemError); database
errors are classified by SQLSTATE; anything else is a 500 whose body says nothing about
the internals and whose log line carries the request id.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import asyncpg
from advanced_alchemy.exceptions import (
    DuplicateKeyError,
    ForeignKeyError,
    NotFoundError,
    RepositoryError,
)
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm.exc import StaleDataError

from tenant_api.request_id import ensure_request_id
from tenant_api.problems import kind_for

log = logging.getLogger("tenant_api")

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ProblemError(HTTPException):
    """An HTTP error with a specific problem type (tenant_api.problems; default: the
    status's) and extra members."""

    def __init__(self, status_code: int, detail: str, *, extra: dict[str, Any] | None = None,
                 kind: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=detail, extra=extra, headers=headers)
        self.kind = kind


def not_found(what: str) -> ProblemError:
    return ProblemError(404, f"{what} not found")


def conflict(detail: str, **extra: Any) -> ProblemError:
    return ProblemError(409, detail, extra=extra or None)


def invalid(field: str, message: str) -> ProblemError:
    return ProblemError(422, f"{field}: {message}", extra={"errors": [{"field": field, "message": message}]})


def problem(request: Request, status: int, detail: str, extra: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None, kind: str | None = None) -> Response:
    found = kind_for(status, extra, kind)
    body: dict[str, Any] = {
        "type": found.type,
        "title": found.title if found.status == status else HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    # Routing errors (404/405) never pass our middleware: the id is made here then.
    body["request_id"] = ensure_request_id(request.scope)
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _http_exception(request: Request, exc: HTTPException) -> Response:
    extra = exc.extra if isinstance(exc.extra, dict) else None
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="tenant-api"'}
    detail = exc.detail if exc.detail else HTTPStatus(exc.status_code).phrase
    return problem(request, exc.status_code, detail, extra, headers, getattr(exc, "kind", None))


# msgspec reports a missing or unknown field at the object that lacks or has it ("data",
# "steps[0]"): the field a client must fix is the one the message names.
_NAMED_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `([^`]+)`$")


def _validation(request: Request, exc: ValidationException) -> Response:
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            field = item.get("key") or item.get("source") or "body"
            message = str(item.get("message", "invalid value"))
            if (named := _NAMED_FIELD.match(message)) is not None:
                field = named.group(1) if field in ("data", "body") else f"{field}.{named.group(1)}"
            errors.append({"field": field, "message": message})
    if errors:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    else:
        detail = exc.detail or "invalid input"
        # msgspec messages name the JSON path, e.g. "Expected `str`, got `int` - at `$.name`"
    return problem(request, 422, detail, {"errors": errors} if errors else None)


UNIQUE_KEYS_SQL = """
    select i.relname as name,
           array_agg(pg_get_indexdef(x.indexrelid, k.ord::int, true) order by k.ord) as columns
      from pg_index x
      join pg_class i on i.oid = x.indexrelid
      join pg_namespace n on n.oid = i.relnamespace and n.nspname = 'public'
      cross join lateral generate_series(1, x.indnkeyatts) as k(ord)
     where x.indisunique and not x.indisprimary
     group by i.relname
"""


def _key_columns(request: Request, constraint: str | None) -> str | None:
    """Name the conflicting columns. PostgreSQL hides the "Key (...)=(...)" detail on
    RLS tables (it could reveal rows the caller cannot see), so we map the constraint
    name to its columns, loaded from the catalog at start-up; never the values."""
    columns = request.app.state.get("unique_keys", {}).get(constraint or "")
    if not columns:
        return None
    shown = [c for c in columns if c != "organization_id"]
    return ", ".join(shown) or None


# SQLSTATE -> (status, detail). Constraint names are ours and safe to show; values are not
# included (they can hold data the caller did not send).
def _database(request: Request, exc: Exception) -> Response:
    if (classified := classify(request, exc)) is not None:
        return classified
    # SQLAlchemy wraps the driver's error (exc.orig); the raw asyncpg read path raises
    # asyncpg's own, which carries sqlstate itself.
    orig = getattr(exc, "orig", exc)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    cause = getattr(orig, "__cause__", None)
    constraint = getattr(cause, "constraint_name", None) or getattr(orig, "constraint_name", None)
    if sqlstate == "23505":
        columns = _key_columns(request, constraint)
        what = f"the same {columns}" if columns else f"the same key ({constraint or 'unique constraint'})"
        return problem(request, 409, f"a row with {what} already exists")
    if sqlstate == "23001":
        return problem(request, 409, f"still referenced by other rows ({constraint or 'restrict'}); delete those first")
    if sqlstate == "23503":
        return problem(request, 409 if request.method == "DELETE" else 422,
                       f"a referenced or referencing row prevents this ({constraint or 'foreign key'})")
    # 22021/22P05: a NUL character in text or jsonb, which PostgreSQL cannot store
    if sqlstate in {"23514", "23502", "22P02", "22001", "22003", "22007", "22008", "22023", "22021", "22P05"}:
        return problem(request, 422, f"invalid value ({constraint or sqlstate})")
    if sqlstate == "42501":
        # RLS WITH CHECK or a missing grant: the credential may not make this change.
        return problem(request, 403, "this credential may not make that change")
    if sqlstate in {"40001", "40P01"}:
        return problem(request, 409, "concurrent update, retry the request")
    if sqlstate == "57014":
        return problem(request, 503, "the database took too long; retry later")
    return _unexpected(request, exc)


def _repository(request: Request, exc: Exception) -> Response:
    """advanced-alchemy wraps database errors; classify the original."""
    cause = exc.__cause__
    if isinstance(cause, DBAPIError):
        return _database(request, cause)
    if isinstance(exc, DuplicateKeyError):
        return problem(request, 409, "conflicts with an existing row")
    if isinstance(exc, ForeignKeyError):
        return problem(request, 422, "references a row that does not exist")
    return _unexpected(request, exc)


def _not_found(request: Request, exc: NotFoundError) -> Response:
    return problem(request, 404, "not found")


def _unexpected(request: Request, exc: Exception) -> Response:
    if (classified := classify(request, exc)) is not None:
        return classified
    log.error("unhandled error (request_id=%s)", ensure_request_id(request.scope), exc_info=exc)
    return problem(request, 500, "internal error; quote the request_id when reporting it")


# --- classifiers: faults and client-side refusals that are not bugs (docs/robustness.md) ---

RETRY_AFTER_SECONDS = 5
"""Sent with every 503: a restarting PostgreSQL is back within seconds."""

# SQLSTATE classes and codes meaning "the database is not there right now".
_UNAVAILABLE_CLASSES = ("08",)  # connection exceptions
_UNAVAILABLE_STATES = {
    "57P01",  # admin_shutdown: the server is stopping (fast shutdown, pg_ctl restart)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now: starting up or shutting down
    "53300",  # too_many_connections
    "57P05",  # idle_session_timeout: the server closed an idle connection
}
_NETWORK_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ENOENT,
                   errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOTCONN}
_CLOSED_MESSAGES = ("connection is closed", "connection was closed", "underlying connection is closed",
                    "cannot call Connection.", "connection has been released back to the pool")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what it wraps (SQLAlchemy's .orig, advanced-alchemy's cause) and
    what it was raised from, each once."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen or len(seen) > 16:
            continue
        seen.add(id(current))
        yield current
        pending += [getattr(current, "orig", None), current.__cause__, current.__context__]


def database_unavailable(exc: BaseException) -> bool:
    """The database cannot be reached, is restarting, or no connection was free in time:
    a fault to retry (503), never the client's mistake or a bug."""
    for e in _chain(exc):
        if isinstance(e, PoolTimeoutError):  # the pool had no free connection within pool_timeout
            return True
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return True
        sqlstate = getattr(e, "sqlstate", None)
        if isinstance(sqlstate, str) and (sqlstate.startswith(_UNAVAILABLE_CLASSES) or sqlstate in _UNAVAILABLE_STATES):
            return True
        if isinstance(e, asyncpg.InterfaceError) and any(m in str(e) for m in _CLOSED_MESSAGES):
            return True
        if isinstance(e, asyncpg.InternalClientError):
            # "cannot switch to state 12; another operation is in progress": the server
            # ended the session while a statement was on its way (57P01 during a restart).
            return True
        if isinstance(e, (ConnectionError, socket.gaierror, TimeoutError)):
            return True
        if isinstance(e, OSError) and e.errno in _NETWORK_ERRNOS:
            return True
    return False


def client_value_error(exc: BaseException) -> bool:
    """A value the driver refused before sending it (asyncpg's client-side DataError: an
    integer beyond its column, a naive datetime for timestamptz), or arithmetic on input
    beyond Python's range (OverflowError). The input's fault: 422."""
    for e in _chain(exc):
        if isinstance(e, asyncpg.InterfaceError) and isinstance(e, ValueError):  # asyncpg's client-side DataError
            return True
        if isinstance(e, OverflowError):
            return True
    return False


def log_failure(logger: logging.Logger, message: str, exc: BaseException, *args: Any) -> None:
    """For background work (mailer, usage writer, scheduler, reaper): a database outage is
    one warning line, anything else a traceback. An outage is expected and logs every
    second while it lasts; a bug must be seen."""
    if database_unavailable(exc):
        logger.warning(message + ": database unavailable (%s)", *args, type(exc).__name__)
    else:
        logger.error(message, *args, exc_info=exc)


def unavailable(request: Request) -> Response:
    return problem(request, 503, "the database is unavailable; retry later",
                   headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def classify(request: Request, exc: BaseException) -> Response | None:
    """A problem response for an exception that is a fault or the client's input, logged
    in one line without a traceback (refused garbage must not flood the log); None for
    everything else (a bug: 500 with a traceback)."""
    request_id = request.scope.get("state", {}).get("request_id")
    if database_unavailable(exc):
        log.warning("database unavailable (request_id=%s): %s", request_id, type(exc).__name__)
        return unavailable(request)
    if any(isinstance(e, StaleDataError) for e in _chain(exc)):
        # An ORM UPDATE/DELETE of a row this credential can see but RLS lets it change
        # nothing of (a project-restricted credential on an organization-wide row).
        return problem(request, 403, "this credential may not make that change")
    if client_value_error(exc):
        log.info("refused a value the database driver cannot encode (request_id=%s): %s", request_id,
                 type(exc).__name__)
        return problem(request, 422, "a value is out of range for its field",
                       {"errors": [{"field": "body", "message": "a value is out of range"}]})
    return None


def _classified(request: Request, exc: Exception) -> Response:
    return classify(request, exc) or _unexpected(request, exc)


EXCEPTION_HANDLERS = {
    StaleDataError: _classified,
    PoolTimeoutError: _classified,
    OverflowError: _classified,
    OSError: _classified,
    asyncpg.InterfaceError: _classified,
    ValidationException: _validation,
    HTTPException: _http_exception,
    NotFoundError: _not_found,
    RepositoryError: _repository,
    DBAPIError: _database,
    asyncpg.PostgresError: _database,
    Exception: _unexpected,
}
