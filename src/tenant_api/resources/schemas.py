"""Request bodies of the generic resource: an Update schema is derived from its Create.

``update_of(Create)`` is the PATCH body: every field of the Create schema optional (left
out = unchanged, ``UNSET``), with the same type and constraints, minus the fields a row
never changes after creation (``exclude``: its project, its parent) and plus the few a
PATCH alone may set (``extra``: e.g. a status). A cancel-only PATCH keeps none of the
Create's fields (``keep=()``) and adds the status. ``set_fields`` gives what a PATCH sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, get_type_hints

import msgspec
from msgspec import UNSET, UnsetType

from tenant_api.inputs import Input


def update_of(create: type[Input], name: str | None = None, *, exclude: Iterable[str] = (),
              keep: Iterable[str] | None = None, extra: dict[str, Any] | None = None,
              doc: str | None = None) -> type[Input]:
    """The PATCH body of ``create`` (named like it, Create -> Update): its fields less
    ``exclude`` (or only ``keep``) and the ``extra`` ones, all optional."""
    hints = get_type_hints(create, include_extras=True)
    named = set(exclude) | set(keep or ())
    unknown = named - set(create.__struct_fields__)
    if unknown:
        raise ValueError(f"{create.__name__} has no field {sorted(unknown)}")
    kept = [f for f in create.__struct_fields__ if f not in set(exclude) and (keep is None or f in set(keep))]
    fields: list[tuple[str, Any, Any]] = [(f, hints[f] | UnsetType, UNSET) for f in kept]
    fields += [(f, typ | UnsetType, UNSET) for f, typ in (extra or {}).items()]
    derived = msgspec.defstruct(name or create.__name__.replace("Create", "Update"), fields, bases=(Input,),
                                module=create.__module__, kw_only=True, forbid_unknown_fields=True)
    derived.__doc__ = doc
    return derived  # type: ignore[return-value]  # defstruct is typed as returning a plain Struct


def set_fields(data: msgspec.Struct) -> dict[str, Any]:
    """The fields a PATCH body actually sent (UNSET ones are left alone)."""
    return {f: v for f in data.__struct_fields__ if (v := getattr(data, f)) is not msgspec.UNSET}
