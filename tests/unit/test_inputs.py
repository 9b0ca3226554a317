"""Bounded input without a server: the JSON depth scanner, and which errors are the client's."""

import asyncpg
import pytest
import sqlalchemy

from tenant_api.errors import client_value_error, database_unavailable
from tenant_api.inputs import MAX_JSON_DEPTH, too_deep


def nested(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


def _wrapped(driver_error: Exception) -> Exception:
    """As SQLAlchemy raises a driver error: DBAPIError, .orig the adapter's, cause the driver's."""
    from sqlalchemy.exc import DBAPIError

    try:
        try:
            raise driver_error
        except Exception as inner:
            raise DBAPIError("select 1", None, inner) from inner
    except DBAPIError as outer:
        return outer


@pytest.mark.parametrize("text,deep", [
    ("[]", False), ('{"a": [1, {"b": "[[[[[["}]}', False),
    (nested(MAX_JSON_DEPTH), False), (nested(MAX_JSON_DEPTH + 1), True),
    ('{"a":' * 40 + "1" + "}" * 40, True), ('"' + "[" * 100 + '"', False), ('["\\"[[[[", 1]', False),
    ("[" * 40, True),  # unbalanced: will not decode either
])
def test_depth_scanner(text, deep):
    assert too_deep(text) is deep


@pytest.mark.parametrize("error,unavailable,client_value", [
    (asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"), True, False),
    (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), True, False),
    (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"), True, False),
    (asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"), True, False),
    (asyncpg.InterfaceError("connection is closed"), True, False),
    (ConnectionRefusedError(111, "Connection refused"), True, False),
    (FileNotFoundError(2, "No such file or directory"), True, False),
    (sqlalchemy.exc.TimeoutError("QueuePool limit of size 5 overflow 0 reached"), True, False),
    (asyncpg.exceptions._base.DataError("invalid input for query argument $1: 2147483648 (value out of int32 range)"),
     False, True),
    (OverflowError("date value out of range"), False, True),
    (asyncpg.exceptions.UniqueViolationError("duplicate key"), False, False),
    (RuntimeError("a bug"), False, False),
])
def test_fault_and_driver_refusal_classes(error, unavailable, client_value):
    for exc in (error, _wrapped(error)):
        assert database_unavailable(exc) is unavailable, exc
        assert client_value_error(exc) is client_value, exc
