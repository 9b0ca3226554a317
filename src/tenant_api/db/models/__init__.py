"""ORM models, one module per domain. Tables, keys and constraints are created by the
migrations; these mappings only describe them to SQLAlchemy."""

from tenant_api.db.models.base import Base, TenantBase
from tenant_api.db.models.identity import (
    Organization,
    OrganizationMembership,
    PlatformToken,
    Project,
    TokenAuditLog,
    UserAccount,
    Workspace,
)
from tenant_api.db.models.agents import Agent
from tenant_api.db.models.tasks import ComputerUseTask, Job, JobLog, JobSchedule, Task

__all__ = [
    "Agent",
    "Base",
    "ComputerUseTask",
    "Job",
    "JobLog",
    "JobSchedule",
    "Organization",
    "OrganizationMembership",
    "PlatformToken",
    "Project",
    "Task",
    "TenantBase",
    "TokenAuditLog",
    "UserAccount",
    "Workspace",
]
