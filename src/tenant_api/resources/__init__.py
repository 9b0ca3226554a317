"""The generic tenant resource and one module per area.

REGISTRY lists every generic resource; the app mounts each, and the catalog-driven tests
walk it (with the OpenAPI document) so a new resource is covered without new tests.
"""

from tenant_api.resources.agents import agent_conversations, agent_email_rules, agent_templates, agents
from tenant_api.resources.calls import video_calls
from tenant_api.resources.notifications import device_tokens
from tenant_api.resources.conversations import conversation_members, conversations
from tenant_api.resources.desktop_connections import desktop_connections
from tenant_api.resources.desktops import desktop_configs, desktop_vms, robot_macro_executions, robot_macros
from tenant_api.invites.controller import invites
from tenant_api.resources.org import projects, workspaces
from tenant_api.resources.jobs import job_schedules, jobs
from tenant_api.resources.services import services
from tenant_api.resources.tasks import computer_use_tasks, tasks

REGISTRY = [
    workspaces, projects,
    agents, agent_templates, agent_email_rules, agent_conversations,
    video_calls, services, device_tokens,
    conversations, conversation_members,
    desktop_configs, desktop_vms, desktop_connections, robot_macros, robot_macro_executions,
    tasks, job_schedules, jobs, computer_use_tasks,
    invites,
]
