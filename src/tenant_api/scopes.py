"""The scope catalog and the fixed scope set of each organization role.

Scopes are "<area>:read" and "<area>:write"; write implies read. ROLE_SCOPES mirrors
auth.role_scopes() in policies/auth.sql, which is what the database enforces; a test
asserts the two agree.
"""

from __future__ import annotations

import enum

AREAS = (
    "org", "members", "agents", "tasks", "conversations", "desktops",
    "calls", "services", "notifications", "billing", "tokens",
)  # fmt: skip

# The order is each scope's bit in a scope mask (app.scope_catalog() in
# policies/context.sql, which a test keeps equal): append only.
SCOPE_BITS: tuple[str, ...] = (
    *[f"{area}:{level}" for area in AREAS for level in ("read", "write")],
    "audit:read",
)
SCOPES: frozenset[str] = frozenset(SCOPE_BITS)

_ALL_WRITE = [f"{area}:write" for area in AREAS]
_WORK = ["agents", "tasks", "conversations", "desktops", "calls", "services", "notifications"]

ROLE_SCOPES: dict[str, frozenset[str]] = {
    "owner": frozenset([*_ALL_WRITE, "audit:read"]),
    "admin": frozenset([s for s in _ALL_WRITE if s != "billing:write"] + ["billing:read", "audit:read"]),
    "member": frozenset(
        ["org:read", "members:read", "billing:read", "tokens:write"] + [f"{a}:write" for a in _WORK]
    ),
    # tokens:write lets an auditor mint (and revoke, rotate) tokens of their own, within
    # their own read scopes (no_escalation); other users' tokens need members:write.
    "auditor": frozenset([f"{area}:read" for area in AREAS] + ["audit:read", "tokens:write"]),
}
ROLES = tuple(ROLE_SCOPES)

# Project roles (project_membership.role): what a member of some projects (not of the
# organization) gets there. Mirrors auth.project_role_scopes(); nested, lowest first.
_EDITOR = ["org:read", "members:read", "tokens:write"] + [f"{a}:write" for a in _WORK]
PROJECT_ROLE_SCOPES: dict[str, frozenset[str]] = {
    "viewer": frozenset(["org:read", "members:read"] + [f"{a}:read" for a in _WORK]),
    "editor": frozenset(_EDITOR),
    "admin": frozenset([s for s in _EDITOR if s != "members:read"] + ["members:write"]),
}
PROJECT_ROLES = tuple(PROJECT_ROLE_SCOPES)


def expand(scopes: frozenset[str] | set[str] | list[str]) -> frozenset[str]:
    """Add the read scope implied by each write scope."""
    out = set(scopes)
    out.update(s.replace(":write", ":read") for s in scopes if s.endswith(":write"))
    return frozenset(out)


def unknown(scopes: list[str]) -> list[str]:
    return [s for s in scopes if s not in SCOPES]



_NAMES_BY_MASK: dict[int, frozenset[str]] = {}


def scopes_of_mask(mask: int | None) -> frozenset[str]:
    """The scope names of a mask from auth.begin_request (a handful of distinct masks per
    process: remembered)."""
    if mask is None:
        return frozenset()
    names = _NAMES_BY_MASK.get(mask)
    if names is None:
        names = frozenset(s for i, s in enumerate(SCOPE_BITS) if mask >> i & 1)
        if len(_NAMES_BY_MASK) < 4096:
            _NAMES_BY_MASK[mask] = names
    return names

# The scopes as a named enumeration, for the API's schemas (the OpenAPI component
# "Scope"). Compare and store scope strings: Scope members are str subclasses, convert
# with str() before hashing them together with plain strings.
Scope = enum.StrEnum("Scope", {s.replace(":", "_").upper(): s for s in sorted(SCOPES)})  # type: ignore[misc]
