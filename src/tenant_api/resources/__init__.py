"""The generic tenant resource and one module per area.

REGISTRY lists every generic resource; the app mounts each, and the catalog-driven tests
walk it (with the OpenAPI document) so a new resource is covered without new tests.
"""

from tenant_api.resources.agents import agents
from tenant_api.resources.jobs import job_schedules, jobs
from tenant_api.resources.org import projects, workspaces
from tenant_api.resources.tasks import computer_use_tasks, tasks

REGISTRY = [workspaces, projects, agents, tasks, job_schedules, jobs, computer_use_tasks]
