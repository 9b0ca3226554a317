"""What the API accepts, written once: the types and limits every route's input goes through.

Bad input is a 4xx naming the field, never a 500, and it is refused before it reaches
the database or any recursive code (docs/robustness.md):

* ``Timestamp``: a date-time with a time zone whose UTC instant lies between year 1 and
  year 9999 (what Python and the driver can represent; PostgreSQL's range is wider).
  Every request field or query parameter holding a time uses it: a time without a zone,
  or ``0001-01-01T00:00:00+14:00``, is a 422 naming the field.
* ``Int32`` / ``Int64``: integers bounded to their column (so OpenAPI shows the bounds
  and the driver never sees a value it cannot encode).
* ``Input``: the base of every request body; an unknown field is a 422, not dropped.
* JSON bodies and WebSocket frames nested deeper than ``MAX_JSON_DEPTH`` are a 400 before
  they are decoded (``decode_json``, ``BoundedRequest``): no recursion ever meets them.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

import msgspec
from litestar import Request
from litestar.exceptions import ClientException
from litestar.openapi.spec import Schema
from litestar.plugins import OpenAPISchemaPlugin
from litestar.types import Empty
from litestar.typing import FieldDefinition
from msgspec import Meta

# --- integers ----------------------------------------------------------------------------

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
Int32 = Annotated[int, Meta(ge=-(2**31), le=INT32_MAX)]
Int64 = Annotated[int, Meta(ge=-(2**63), le=INT64_MAX)]
Seq = Annotated[int, Meta(ge=0, le=INT64_MAX)]
"""A position in a bigint sequence (messages, log chunks): 0 = before the first."""

# --- date-times --------------------------------------------------------------------------

TIMESTAMP_DESCRIPTION = (
    "RFC 3339 date-time with a timezone (Z or ±hh:mm), after 0001-01-01T00:00:00Z and before"
    " 9999-12-31T23:59:59.999999Z"
)

TIMESTAMP_EXAMPLE = "2030-01-31T12:00:00Z"
"""Also what marks a Timestamp in the OpenAPI document (tests/security/test_bad_input.py)."""


class Timestamp(dt.datetime):
    """A request's date-time: time zone required, UTC instant within years 1..9999.

    A subclass only so that Litestar and msgspec hand every such value to
    ``decode_timestamp`` (registered in ``TYPE_DECODERS``). msgspec accepts exact types
    only, so a Timestamp never travels further than the parsed input: request bodies
    (``resources.base.Input``) turn theirs into plain datetimes as they are built, query
    parameters go through ``plain``."""


def plain(value: dt.datetime | None) -> dt.datetime | None:
    """The same instant as a plain datetime (what responses and msgspec.convert accept)."""
    if value is None or type(value) is dt.datetime:
        return value
    return dt.datetime(value.year, value.month, value.day, value.hour, value.minute, value.second,
                       value.microsecond, tzinfo=value.tzinfo, fold=value.fold)


def decode_timestamp(_: type, value: Any) -> Timestamp:
    """msgspec dec_hook for Timestamp: ValueError/TypeError become a 422 naming the field."""
    if isinstance(value, str):
        try:
            parsed = msgspec.convert(value, dt.datetime)
        except msgspec.ValidationError:
            raise ValueError("not an RFC 3339 date-time, e.g. 2030-01-31T12:00:00Z") from None
    elif isinstance(value, dt.datetime):
        parsed = value
    else:
        raise TypeError("expected an RFC 3339 date-time string")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("must include a timezone (Z or ±hh:mm)")
    try:
        utc = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    except OverflowError:
        utc = dt.datetime.min
    # The driver stores datetime.min/max as -infinity/infinity and reads those back as
    # naive datetimes: the range's two ends are excluded.
    if not dt.datetime.min < utc < dt.datetime.max:
        raise ValueError("outside the supported range (0001-01-01 to 9999-12-31 in UTC)")
    return Timestamp(parsed.year, parsed.month, parsed.day, parsed.hour, parsed.minute, parsed.second,
                     parsed.microsecond, tzinfo=parsed.tzinfo, fold=parsed.fold)


TYPE_DECODERS = [(lambda t: t is Timestamp, decode_timestamp)]


# --- request bodies ----------------------------------------------------------------------


class Input(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies: unknown fields are an error, not silently dropped."""

    def __post_init__(self) -> None:
        # Timestamp fields were validated by decode_timestamp; from here on they are
        # plain datetimes (msgspec accepts exact types only).
        for name in self.__struct_fields__:
            if isinstance(value := getattr(self, name), Timestamp):
                setattr(self, name, plain(value))


class InputSchemaPlugin(OpenAPISchemaPlugin):
    """OpenAPI for the input types above (Litestar knows nothing about Timestamp)."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return field_definition.annotation is Timestamp

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        return Schema(type="string", format="date-time", description=TIMESTAMP_DESCRIPTION,  # type: ignore[arg-type]
                      examples=[TIMESTAMP_EXAMPLE])


# --- JSON nesting ------------------------------------------------------------------------

MAX_JSON_DEPTH = 32
"""No body of ours nests half as deep; free-form JSON fields (job args, macro output)
get the rest. msgspec would refuse around 1,000 levels with a RecursionError (a 500),
and Python code walking a decoded value (json.dumps for jsonb) fails earlier still."""

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def too_deep(raw: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON text nests arrays/objects deeper than ``limit`` (or its brackets do
    not balance: it will not decode either). No recursion, no Python loop per byte: the
    strings are cut out, the brackets kept, and innermost pairs removed one level per pass."""
    data = raw.encode() if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    skeleton = _STRINGS.sub(b"", data).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not skeleton:
            return False
        skeleton = _INNERMOST.sub(b"", skeleton)
    return bool(skeleton)


class JsonTooDeep(ClientException):
    """A 400: the body (or frame) nests deeper than MAX_JSON_DEPTH."""

    def __init__(self) -> None:
        super().__init__(detail=f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels (or malformed)",
                         extra={"errors": [{"field": "body", "message": f"nested deeper than {MAX_JSON_DEPTH}"}]})


def decode_json(raw: bytes | str) -> Any:
    """msgspec's JSON decoding, refusing deep nesting first (JsonTooDeep) ."""
    if too_deep(raw):
        raise JsonTooDeep
    return msgspec.json.decode(raw)


class BoundedRequest(Request):
    """Litestar's Request, checking a JSON body's nesting before decoding it (every body
    route reads it through ``json()``, credential or not)."""

    async def json(self) -> Any:
        if self._json is Empty and self._connection_state.json is Empty:
            body = await self.body()
            if body and too_deep(body):
                raise JsonTooDeep
        return await super().json()
