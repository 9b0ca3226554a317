"""The OpenAPI document as a contract: every operation says what it can answer.

Litestar generates the document from the handlers; ``ContractOpenAPIConfig`` then
finishes it, for every operation alike (so a route added tomorrow gets the same):

* errors: exactly the problem responses the operation can give, derived from what it
  is (public or not, its scope, whether it writes, takes a body, path or query
  parameters) plus what its handler declares in ``opt["problems"]`` (e.g. ``(410,)``);
  all with ``application/problem+json`` and the one ``Problem`` schema, whose ``type``
  is an enum of the kinds in tenant_api.problems (docs/errors.md). Litestar's default
  ``400 {status_code, detail, extra}``, which the API never sends, is gone.
* security: ``security: []`` on public operations, the bearer scheme on the others;
  the required scope in the description and in ``x-required-scope`` (a scope, ``any``
  for any valid credential, ``none`` for public operations).
* headers: ``X-Request-ID`` and the rate-limit headers on every response,
  ``Retry-After`` on 429 and 503; every authenticated POST takes an optional
  ``Idempotency-Key`` header (tenant_api.idempotency: a malformed one is a 422) and its
  successful responses may carry ``Idempotent-Replayed``.
* media types a handler streams besides JSON (``opt["media_types"]``: CSV and NDJSON
  exports, Server-Sent Events).
* WebSockets, which OpenAPI cannot describe as operations, under ``x-websockets``
  (path, scope, query parameters, the handler's description, message schemas from
  ``opt["messages"]``).
* the ``Scope`` enum as a component, used wherever a scope appears.

tests/api/test_contract.py asserts these invariants over every operation.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import OpenAPI
from litestar.routes import HTTPRoute, WebSocketRoute

from tenant_api import idempotency
from tenant_api.auth.request import is_public
from tenant_api.scopes import Scope
from tenant_api.problems import PROBLEM_KINDS, FieldError, Problem, kinds_of

PROBLEM_MEDIA_TYPE = "application/problem+json"
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_REF = "#/components/schemas/{name}"

# Response headers present on every response (components/headers).
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id (the client's own X-Request-ID when it was valid); also in problem bodies.",
        "schema": {"type": "string", "maxLength": 64},
    },
    "RateLimit-Policy": {
        "description": 'The quota that applies, e.g. `"credential";q=600;w=60` (requests q per w seconds). '
                       "Absent on routes without a limit.",
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What remains of it, e.g. `"credential";r=599;t=42` (r requests left, reset in t seconds).',
        "schema": {"type": "string"},
    },
}
RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}}
REPLAYED = {"description": "`true` when this is the kept response of an earlier request with the same "
                           "Idempotency-Key (the request was not run again).",
            "schema": {"type": "string", "enum": ["true"]}}
# Inline, not a $ref: clients and the suites read each parameter's `in` and `name`.
IDEMPOTENCY_KEY_PARAMETER: dict[str, Any] = {
    "name": idempotency.HEADER,
    "in": "header",
    "required": False,
    "description": "Makes a retry safe: the same key with the same request within 24 hours replays the first "
                   "successful response (`Idempotent-Replayed: true`) instead of running it again; with another "
                   "request it is a 422; while the first is still running, a 409. A UUID is a good key.",
    "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH, "pattern": "^[ -~]+$"},
}


@dataclass(frozen=True)
class HandlerFacts:
    """What the contract needs to know about one operation's handler."""

    public: bool
    scope: str | None
    problems: tuple[int, ...] = ()
    media_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    rate_limited: bool = True


def handler_facts(handler: Any) -> HandlerFacts:
    opt = handler.opt or {}
    return HandlerFacts(public=is_public(handler), scope=opt.get("scope"),
                        problems=tuple(opt.get("problems", ())), media_types=dict(opt.get("media_types", {})),
                        rate_limited=opt.get("rate_limit", True) is not False)


def required_scope(facts: HandlerFacts) -> str:
    return "none" if facts.public else (facts.scope or "any")


def error_statuses(method: str, operation: dict[str, Any], facts: HandlerFacts) -> list[int]:
    """The problem statuses an operation can answer with (see the module docstring)."""
    parameters = operation.get("parameters") or []
    has_body = "requestBody" in operation
    has_path = any(p.get("in") == "path" for p in parameters)
    has_input = has_body or any(p.get("in") in ("query", "header") for p in parameters)
    write = method in WRITE_METHODS
    found = {500, 503, *facts.problems}
    if facts.rate_limited:
        found.add(429)
    if has_body:
        found |= {400, 413}
    if has_input:
        found.add(422)
    if not facts.public:
        found.add(401)
        if facts.scope or write:
            found.add(403)
        if write:
            found.add(409)
    if has_path:
        found.add(404)
    return sorted(found)


def _header_refs(*extra: str) -> dict[str, Any]:
    refs = {name: {"$ref": f"#/components/headers/{name}"} for name in HEADERS}
    refs.update({name: {"$ref": f"#/components/headers/{name}"} for name in extra})
    return refs


def _problem_response(status: int) -> dict[str, Any]:
    kinds = kinds_of(status)
    lines = [f"`{k.slug}`: {k.description}" for k in kinds] or ["An error; see `type`."]
    extra = ("Retry-After",) if status in (429, 503) else ()
    return {
        "description": " ".join(lines),
        "headers": _header_refs(*extra),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _REF.format(name="Problem")}}},
    }


def _scope_note(facts: HandlerFacts) -> str:
    if facts.public:
        return "**Public:** no credential needed."
    if facts.scope:
        return f"**Required scope:** `{facts.scope}`."
    return "**Required scope:** none (any valid credential)."


def finish_operation(method: str, operation: dict[str, Any], facts: HandlerFacts) -> None:
    keyed = method == "POST" and not facts.public  # the idempotency middleware's (it needs a credential)
    if keyed:
        operation["parameters"] = [*(operation.get("parameters") or []), dict(IDEMPOTENCY_KEY_PARAMETER)]
    responses = operation.get("responses") or {}
    kept = {code: resp for code, resp in responses.items() if not code.startswith(("4", "5"))}
    for code, response in kept.items():
        extra = (idempotency.REPLAYED_HEADER,) if keyed and code.startswith("2") else ()
        response["headers"] = {**(response.get("headers") or {}), **_header_refs(*extra)}
        content = response.get("content")
        if content:
            for media_type, schema in facts.media_types.items():
                content[media_type] = {"schema": schema}
            for media in content.values():  # Litestar leaves streamed bodies without a schema
                if not media.get("schema"):
                    media["schema"] = {"type": "string"}
    for status in error_statuses(method, operation, facts):
        kept[str(status)] = _problem_response(status)
    operation["responses"] = dict(sorted(kept.items()))
    operation["security"] = [] if facts.public else [{"bearer": []}]
    operation["x-required-scope"] = required_scope(facts)
    description = operation.get("description") or ""
    operation["description"] = f"{_scope_note(facts)}\n\n{description}".strip()


def _components(*types: Any) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    return components


def _websockets(app: Litestar, schemas: dict[str, Any]) -> dict[str, Any]:
    """WebSocket routes, their message types' schemas added to ``schemas``."""
    sockets: dict[str, Any] = {}
    for route in app.routes:
        if not isinstance(route, WebSocketRoute):
            continue
        handler = route.route_handler
        opt = handler.opt or {}
        messages: dict[str, Any] = {}
        for direction, types in (opt.get("messages") or {}).items():
            refs, components = msgspec.json.schema_components(types, ref_template=_REF)
            schemas.update(components)
            messages[direction] = {"oneOf": list(refs)}
        sockets[route.path_format] = {
            "x-required-scope": required_scope(handler_facts(handler)),
            "description": inspect.cleandoc(handler.fn.__doc__ or ""),
            "query": opt.get("query", {}),
            "messages": messages,
        }
    return sockets


def finish_document(doc: dict[str, Any], app: Litestar) -> dict[str, Any]:
    """Apply the contract to a generated document (a dict, changed in place)."""
    facts: dict[tuple[str, str], HandlerFacts] = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for method, (handler, _) in route.route_handler_map.items():
                facts[(route.path_format or "/", method.upper())] = handler_facts(handler)
    for path, item in (doc.get("paths") or {}).items():
        for method, operation in item.items():
            if method.upper() in ("GET", "PUT", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS"):
                finish_operation(method.upper(), operation, facts[(path, method.upper())])
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(_components(Problem, FieldError, Scope))
    schemas["Scope"]["type"] = "string"
    schemas["Problem"]["properties"]["type"]["enum"] = sorted(k.type for k in PROBLEM_KINDS.values())
    schemas["Problem"]["additionalProperties"] = True
    components["headers"] = {**HEADERS, "Retry-After": RETRY_AFTER, idempotency.REPLAYED_HEADER: REPLAYED}
    if sockets := _websockets(app, schemas):
        doc["x-websockets"] = sockets
    return doc


@dataclass
class ContractOpenAPI(OpenAPI):
    """The generated document; ``to_schema`` applies the contract."""

    app: Any = None

    @property
    def _exclude_fields(self) -> set[str]:
        return {"app"}

    def to_schema(self) -> dict[str, Any]:
        return finish_document(super().to_schema(), self.app)


@dataclass
class ContractOpenAPIConfig(OpenAPIConfig):
    """OpenAPIConfig whose document is finished by the contract (``bind`` the app)."""

    app: Any = None

    def bind(self, app: Litestar) -> None:
        self.app = app

    def to_openapi_schema(self) -> OpenAPI:
        base = super().to_openapi_schema()
        return ContractOpenAPI(**{f.name: getattr(base, f.name) for f in fields(base)}, app=self.app)
