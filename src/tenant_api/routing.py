"""What an area module mounts, declared once at its end as ``ROUTES``.

``resources`` are its generic resources (``resources.base.Resource``): each becomes one
router under its path, with the resource's own ``actions`` (handlers under that path:
an action, a singleton, a socket) mounted in it. ``handlers`` are its other routes:
routers or handlers at paths no resource of the area owns. ``tenant_api.routes`` lists
every area's ROUTES; the app mounts exactly that, and the catalog-driven tests walk it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Routes:
    resources: Sequence[Any] = ()  # Resource (typed loosely: this module sits below the generic resource)
    handlers: Sequence[Any] = ()  # Litestar routers and route handlers
