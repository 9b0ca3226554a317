"""The kinds of error the API returns, each with a stable problem ``type`` URI.

Every error body is an RFC 9457 problem (``application/problem+json``) whose ``type`` is
one of ``PROBLEM_KINDS`` (never ``about:blank``): clients branch on ``type``, not on the
wording of ``detail``. docs/errors.md documents each kind; a test keeps the two equal.
The URIs are identifiers (RFC 9457 section 3.1.1), not addresses to fetch.

The OpenAPI document's one ``Problem`` schema (tenant_api.contract) is ``Problem`` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from tenant_api.scopes import Scope

TYPE_PREFIX = "urn:tenant-api:problem:"


@dataclass(frozen=True)
class ProblemKind:
    slug: str
    status: int
    title: str
    description: str  # for the OpenAPI response descriptions

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.slug


_KINDS = (
    ProblemKind("bad-request", 400, "Bad Request", "The request could not be read (e.g. malformed JSON)."),
    ProblemKind("unauthenticated", 401, "Unauthorized",
                "No credential, or a malformed, unknown, expired or revoked one; `WWW-Authenticate` is set."),
    ProblemKind("missing-scope", 403, "Forbidden", "The credential lacks the scope named in `missing_scope`."),
    ProblemKind("forbidden", 403, "Forbidden",
                "The credential may not do this (e.g. a project-restricted credential on an organization-wide row)."),
    ProblemKind("not-found", 404, "Not Found",
                "No such route, or no such row visible to this credential (another organization's rows included)."),
    ProblemKind("method-not-allowed", 405, "Method Not Allowed", "The route exists; the method does not."),
    ProblemKind("not-acceptable", 406, "Not Acceptable", "None of the media types in `Accept` can be produced."),
    ProblemKind("conflict", 409, "Conflict",
                "Conflicts with the current state: a duplicate, a row still referenced, a lifecycle transition "
                "that is not allowed, a concurrent update."),
    ProblemKind("gone", 410, "Gone", "The thing existed and can no longer be used (an expired or used invite)."),
    ProblemKind("payload-too-large", 413, "Payload Too Large", "The request body is larger than the API accepts."),
    ProblemKind("unsupported-media-type", 415, "Unsupported Media Type", "The request body's media type is not JSON."),
    ProblemKind("validation", 422, "Unprocessable Content",
                "Invalid input; `errors` names each field and what is wrong with it."),
    ProblemKind("rate-limited", 429, "Too Many Requests",
                "The credential (or, without one, the client address) used up its quota; retry after `Retry-After` "
                "seconds. `RateLimit-Policy` and `RateLimit` say the quota and what remains."),
    ProblemKind("internal", 500, "Internal Server Error",
                "An unexpected error; nothing about it is disclosed. Quote `request_id` when reporting it."),
    ProblemKind("unavailable", 503, "Service Unavailable",
                "A dependency (the database) is unavailable or too slow; retry later (`Retry-After` when known)."),
)

PROBLEM_KINDS: dict[str, ProblemKind] = {k.slug: k for k in _KINDS}
_BY_STATUS: dict[int, ProblemKind] = {}
for _kind in _KINDS:
    _BY_STATUS.setdefault(_kind.status, _kind)  # the first of a status is its default


def kind_for(status: int, extra: dict[str, Any] | None = None, slug: str | None = None) -> ProblemKind:
    """The kind of an error response: named explicitly, implied by its members (a
    ``missing_scope``), or the default of its status (4xx/5xx without one of their own
    fall back to the generic client or server error)."""
    if slug is not None:
        return PROBLEM_KINDS[slug]
    if status == 403 and extra and "missing_scope" in extra:
        return PROBLEM_KINDS["missing-scope"]
    found = _BY_STATUS.get(status)
    if found is not None:
        return found
    return PROBLEM_KINDS["internal"] if status >= 500 else PROBLEM_KINDS["bad-request"]


def statuses() -> list[int]:
    return sorted(_BY_STATUS)


def kinds_of(status: int) -> list[ProblemKind]:
    return [k for k in _KINDS if k.status == status]


class FieldError(msgspec.Struct):
    field: str
    """The invalid input: a body field (``name``, ``env[0].value``), query or path parameter."""
    message: str


class Problem(msgspec.Struct, kw_only=True):
    """RFC 9457 problem details, plus ``request_id`` and members of particular kinds.
    Other members may appear (e.g. ``invite_status`` on a 410, ``from``/``to`` on a
    refused lifecycle transition)."""

    type: str
    """One of the kinds in docs/errors.md (``urn:tenant-api:problem:<kind>``); the
    OpenAPI document lists them as an enum."""
    title: str
    status: int
    detail: str
    instance: str | msgspec.UnsetType = msgspec.UNSET
    """The request's path."""
    request_id: str | msgspec.UnsetType = msgspec.UNSET
    """Also in the ``X-Request-ID`` response header; quote it when reporting a problem."""
    errors: list[FieldError] | msgspec.UnsetType = msgspec.UNSET
    """``validation``: each invalid field."""
    missing_scope: Scope | msgspec.UnsetType = msgspec.UNSET
    """``missing-scope``: the scope the credential lacks."""
