"""The generic tenant resource and one module per area.

REGISTRY lists every generic resource; the app mounts each, and the catalog-driven tests
walk it (with the OpenAPI document) so a new resource is covered without new tests.
"""

from tenant_api.resources.agents import agents
from tenant_api.resources.desktop_connections import desktop_connections
from tenant_api.resources.desktops import desktop_configs, desktop_vms, robot_macro_executions, robot_macros
from tenant_api.resources.org import projects, workspaces

REGISTRY = [
    workspaces, projects, agents,
    desktop_configs, desktop_vms, desktop_connections, robot_macros, robot_macro_executions,
]
