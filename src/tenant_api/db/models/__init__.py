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
from tenant_api.db.models.desktops import (
    DesktopConfig,
    DesktopConnection,
    DesktopVirtualMachine,
    RobotMacro,
    RobotMacroExecution,
)

__all__ = [
    "Agent",
    "Base",
    "DesktopConfig",
    "DesktopConnection",
    "DesktopVirtualMachine",
    "Organization",
    "OrganizationMembership",
    "PlatformToken",
    "Project",
    "RobotMacro",
    "RobotMacroExecution",
    "TenantBase",
    "TokenAuditLog",
    "UserAccount",
    "Workspace",
]
